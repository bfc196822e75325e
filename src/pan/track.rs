//! Magnetic-stripe track data, which must never be kept in any form (PCI DSS 3.2).

use super::fold;

/// Whether `text` contains track data: track 2 (`;PAN=YYMM…?`, also without sentinels or with
/// `D` as separator) or track 1 (`%B PAN ^ NAME ^ YYMM…?`, also without the `%` sentinel).
/// Full-width characters are read as their ASCII forms, like everywhere in the detector.
pub fn looks_like_track_data(text: &str) -> bool {
    // One byte per character, so that positions line up; anything outside ASCII after folding
    // becomes a NUL, which matches none of the bytes looked at below.
    let bytes: Vec<u8> = text.chars().map(fold).map(|c| u8::try_from(c).unwrap_or(0)).collect();
    let digits_before = |end: usize| bytes[..end].iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let digits_after = |start: usize| {
        bytes.get(start..).unwrap_or_default().iter().take_while(|b| b.is_ascii_digit()).count()
    };
    bytes.iter().enumerate().any(|(i, &b)| match b {
        b'=' | b'D' => {
            let before = digits_before(i);
            let after = digits_after(i + 1);
            // With its sentinels (`;` … `?`) any length counts; without, it must look like a PAN
            // followed by at least the expiry date.
            let sentinels =
                i > before && bytes[i - before - 1] == b';' && bytes.get(i + 1 + after) == Some(&b'?');
            (before >= 1 && after >= 1 && sentinels) || ((12..=19).contains(&before) && after >= 4)
        }
        b'^' => {
            let before = digits_before(i);
            // Track 1 allows a space between the format code and the PAN (`%B 4111…^`).
            let spaced = i > before && bytes[i - before - 1] == b' ';
            let code_at = i.checked_sub(before + 1 + usize::from(spaced));
            let format_code = code_at.is_some_and(|at| bytes[at] == b'B');
            let sentinel = code_at.is_some_and(|at| at > 0 && bytes[at - 1] == b'%');
            let pan_like = before >= 12 || (sentinel && before >= 1);
            format_code && pan_like && bytes[i + 1..].contains(&b'^')
        }
        _ => false,
    })
}
