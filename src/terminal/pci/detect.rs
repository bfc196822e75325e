//! Recognising and masking card numbers and track data in text.
//!
//! These functions work on plain strings so that they can also scrub text that never went through
//! JSON, such as a scanned barcode or a raw frame about to be logged.

use std::borrow::Cow;
use std::ops::Range;

use crate::sale::CardRef;

/// Masking characters accepted in an already masked PAN.
const MASK_CHARS: [char; 5] = ['*', 'x', 'X', '#', '•'];

/// Masks a card number: keeps at most the first 6 and last 4 digits (PCI DSS 3.3) and replaces
/// the others with `*`. Non-digits are ignored, so `4111 1111 1111 1111` gives `411111******1111`.
///
/// Numbers shorter than a PAN keep only their last 4 digits, and only when they have at least 8,
/// so that the result never reveals more than half of its input.
pub fn mask_pan(digits: &str) -> String {
    let digits: Vec<char> = digits.chars().filter(char::is_ascii_digit).collect();
    let len = digits.len();
    let keep_first = if len >= 13 { 6 } else { 0 };
    let keep_last = if len >= 8 { 4 } else { 0 };
    digits
        .iter()
        .enumerate()
        .map(|(i, &d)| if i < keep_first || i >= len - keep_last { d } else { '*' })
        .collect()
}

/// The last four digits of a masked PAN such as `530957******2257` or `**** **** **** 2257`.
///
/// Returns `None` unless the text consists only of digits, masking characters (`* x X # •`),
/// spaces and dashes, and ends in four digits; that doubles as a format check on `masked_pan`.
/// The digits themselves come from the one card reducer, [`CardRef::from_pan_text`], once the
/// spaces and dashes that group them are taken out.
pub fn last4(masked_pan: &str) -> Option<String> {
    let text = masked_pan.trim();
    let allowed = |c: char| c.is_ascii_digit() || MASK_CHARS.contains(&c) || c == ' ' || c == '-';
    if text.is_empty() || !text.chars().all(allowed) {
        return None;
    }
    let ungrouped: String = text.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    CardRef::from_pan_text(&ungrouped).map(|card| card.last4)
}

/// Whether `digits` (ASCII digits only) passes the Luhn checksum used by card numbers.
pub fn luhn_valid(digits: &str) -> bool {
    digits.bytes().all(|b| b.is_ascii_digit()) && !digits.is_empty() && luhn(digits.bytes())
}

/// Luhn over ASCII digit bytes, rightmost digit first undoubled.
fn luhn(digits: impl DoubleEndedIterator<Item = u8>) -> bool {
    let sum: u32 = digits
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

/// Whether `text` contains something that [`mask_text`] would mask.
pub fn contains_pan(text: &str) -> bool {
    !pan_spans(text).is_empty()
}

/// Replaces every PAN in free text by its masked form; borrowed when nothing needed masking.
///
/// Masking is repeated until nothing changes, because digits left visible around one masked PAN
/// could otherwise combine with a neighbouring digit group into a new Luhn-valid run.
pub fn mask_text(text: &str) -> Cow<'_, str> {
    let mut current = Cow::Borrowed(text);
    loop {
        let spans = pan_spans(&current);
        if spans.is_empty() {
            return current;
        }
        let mut masked = String::with_capacity(current.len());
        let mut last = 0;
        for span in spans {
            masked.push_str(&current[last..span.start]);
            masked.push_str(&mask_pan(&current[span.clone()]));
            last = span.end;
        }
        masked.push_str(&current[last..]);
        // Each round replaces at least 13 digits by at most 10, so the loop terminates.
        current = Cow::Owned(masked);
    }
}

/// Byte ranges of PANs in `text`: 13–19 digits, optionally split into groups by single spaces or
/// dashes (`4111 1111 1111 1111`, `4111-1111-1111-1111`), that pass the Luhn check.
fn pan_spans(text: &str) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    let is_digit = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_digit);
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !is_digit(i) {
            i += 1;
            continue;
        }
        // Collect the digit groups of one run; a group continues after one separator + digit.
        let mut groups = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while is_digit(j) {
                j += 1;
            }
            groups.push(start..j);
            let separator = matches!(bytes.get(j), Some(b' ' | b'-'));
            if separator && is_digit(j + 1) {
                j += 1;
            } else {
                break;
            }
        }
        find_pans(bytes, &groups, &mut spans);
        i = j;
    }
    spans
}

/// Finds PANs made of consecutive digit groups, preferring the longest match from each start.
/// A single group longer than 19 digits is one number (an order id, say), never a PAN.
fn find_pans(bytes: &[u8], groups: &[Range<usize>], spans: &mut Vec<Range<usize>>) {
    fn digits_of<'a>(
        bytes: &'a [u8],
        groups: &'a [Range<usize>],
    ) -> impl DoubleEndedIterator<Item = u8> + 'a {
        groups.iter().flat_map(move |g| bytes.get(g.clone()).unwrap_or_default().iter().copied())
    }
    let mut a = 0;
    while a < groups.len() {
        let mut best = None;
        let mut count = 0;
        for b in a..groups.len() {
            count += groups[b].len();
            if count > 19 {
                break;
            }
            if count >= 13 && luhn(digits_of(bytes, &groups[a..=b])) {
                best = Some(b);
            }
        }
        match best {
            Some(b) => {
                spans.push(groups[a].start..groups[b].end);
                a = b + 1;
            }
            None => a += 1,
        }
    }
}

/// Whether `text` contains magnetic-stripe track data, which must never be kept in any form:
/// track 2 (`;PAN=YYMM…?`, also without sentinels or with `D` as separator) or track 1
/// (`%B PAN ^ NAME ^ YYMM…?`, also without the `%` sentinel).
pub fn looks_like_track_data(text: &str) -> bool {
    let bytes = text.as_bytes();
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
            let format_code = i > before && bytes[i - before - 1] == b'B';
            let sentinel = i > before + 1 && bytes[i - before - 2] == b'%';
            let pan_like = before >= 12 || (sentinel && before >= 1);
            format_code && pan_like && bytes[i + 1..].contains(&b'^')
        }
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn luhn_examples() {
        // The spec's 5309570000002257 fails Luhn; 5309570000052257 keeps the same masked form.
        assert!(!luhn_valid("5309570000002257"));
        for pan in ["5309570000052257", "4111111111111111", "378282246310005"] {
            assert!(luhn_valid(pan), "{pan}");
        }
        assert!(!luhn_valid("1234567812345678"));
        assert!(!luhn_valid(""));
        assert!(!luhn_valid("4111 1111 1111 1111"));
    }

    #[test]
    fn mask_pan_keeps_bin_and_last_four() {
        assert_eq!(mask_pan("5309570000052257"), "530957******2257");
        assert_eq!(mask_pan("4111 1111 1111 1111"), "411111******1111");
        assert_eq!(mask_pan("378282246310005"), "378282*****0005");
        assert_eq!(mask_pan("123456789012"), "********9012");
        assert_eq!(mask_pan("1234567"), "*******");
        assert_eq!(mask_pan("1234"), "****");
        assert_eq!(mask_pan(""), "");
    }

    #[test]
    fn last4_of_masked_forms() {
        assert_eq!(last4("530957******2257").as_deref(), Some("2257"));
        assert_eq!(last4("**** **** **** 2257").as_deref(), Some("2257"));
        assert_eq!(last4("XXXX-XXXX-XXXX-1111").as_deref(), Some("1111"));
        assert_eq!(last4("••••2257").as_deref(), Some("2257"));
        for bad in ["", "2257****", "visa 2257", "2257 ****", "**57"] {
            assert_eq!(last4(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn mask_text_finds_grouped_pans() {
        let cases = [
            ("4111111111111111", "411111******1111"),
            ("card 4111 1111 1111 1111 declined", "card 411111******1111 declined"),
            ("4111-1111-1111-1111.", "411111******1111."),
            ("x5309570000052257y", "x530957******2257y"),
            ("amex 3782 822463 10005 x2", "amex 378282*****0005 x2"),
            ("call 555 1234 about 4111111111111111", "call 555 1234 about 411111******1111"),
            // The visible BIN plus the neighbouring groups happen to pass Luhn again, so the
            // second round masks them too: over-masking is the safe side of this trade-off.
            ("call 555 1234 4111111111111111", "call 555123***1111******1111"),
        ];
        for (input, expected) in cases {
            assert_eq!(mask_text(input), expected, "{input:?}");
            assert!(!contains_pan(expected));
        }
    }

    #[test]
    fn mask_text_leaves_other_numbers_alone() {
        for text in [
            "order 1234567812345678",
            "RCP-2025-001",
            "2026-11-20T10:15:00Z",
            "530957******2257",
            "12345678901234567890123",
            "41111111111111110000",
        ] {
            assert!(matches!(mask_text(text), Cow::Borrowed(_)), "{text:?}");
        }
    }

    #[test]
    fn track_data_detected() {
        for track in [
            ";4111111111111111=25121011234567890?",
            "4111111111111111=2512101",
            "4111111111111111D2512101",
            ";123=456?",
            "%B4111111111111111^DOE/JOHN^2512101?",
            "B4111111111111111^DOE/JOHN^",
            "%B123^X^1?",
            "swiped: ;5309570000052257=3012?",
        ] {
            assert!(looks_like_track_data(track), "{track:?}");
        }
        for text in ["a=b", "x;1=2", "total=100.00", "B12^x^", "RCP-2025-001", "D4"] {
            assert!(!looks_like_track_data(text), "{text:?}");
        }
    }

    proptest! {
        #[test]
        fn mask_text_is_a_fixpoint(text in "[0-9 \\-a*]{0,80}") {
            let masked = mask_text(&text);
            prop_assert!(!contains_pan(&masked));
            prop_assert!(masked.len() <= text.len());
        }

        #[test]
        fn luhn_valid_pans_are_always_masked(body in "[0-9]{12,18}") {
            // Append the check digit that makes `body` Luhn-valid.
            let check = (0..=9u8)
                .map(|d| format!("{body}{d}"))
                .find(|pan| luhn_valid(pan))
                .expect("exactly one check digit makes any number Luhn-valid");
            let text = format!("pan {check} end");
            prop_assert!(!mask_text(&text).contains(&check));
        }
    }
}
