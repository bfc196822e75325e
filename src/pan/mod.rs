//! The one card-number detector: finds full PANs (and magnetic-stripe track data) in any text.
//!
//! Every text field from every source runs through it: the terminal sanitizer
//! ([`crate::terminal::pci::sanitize`]) masks what it finds in raw terminal JSON, a refund
//! draft's `reason` and a receipt item's `name` are masked ([`mask_text`]), and ids are refused
//! when they hold card data ([`holds_card_data`]). Because the terminal and the control API ask
//! the same functions, they cannot disagree about what a card number is.
//!
//! What counts as a PAN: 13–19 digits that pass the Luhn check, in any position of the text,
//! with any separators between digits (up to [`MAX_SEPARATOR_RUN`] of space, `-`, `.`, `/`,
//! `_`, their full-width forms, the no-break and ideographic spaces and Unicode dashes), written
//! in ASCII or full-width digits (U+FF10–U+FF19), and also when glued to an expiry date
//! (`41111111111111112512`: the PAN is followed by digits whose second pair is a month). A run
//! of digits that fails Luhn is not a PAN, and a UUID is never one. The bias is towards masking:
//! a masked false positive costs a garbled note, a stored PAN is a PCI DSS breach.
//!
//! These functions are pure and work on plain strings, so they also scrub text that never went
//! through JSON, such as a scanned barcode or a message about to be logged.

mod track;

use std::borrow::Cow;
use std::ops::Range;

use crate::sale::CardRef;

pub use track::looks_like_track_data;

/// The most separator characters accepted between two digit groups of one PAN
/// (`4111  1111  1111  1111` has two).
pub const MAX_SEPARATOR_RUN: usize = 3;

/// Masking characters accepted in an already masked PAN.
const MASK_CHARS: [char; 5] = ['*', 'x', 'X', '#', '•'];

/// Folds the full-width forms of ASCII (U+FF01–U+FF5E) to ASCII, so that `４１１１` reads as `4111`
/// and `＝` as `=`.
pub(crate) fn fold(c: char) -> char {
    match c {
        '\u{ff01}'..='\u{ff5e}' => char::from_u32(u32::from(c) - 0xfee0).unwrap_or(c),
        _ => c,
    }
}

/// The value of an ASCII or full-width decimal digit.
fn digit_value(c: char) -> Option<u8> {
    let c = fold(c);
    c.is_ascii_digit().then(|| c as u8 - b'0')
}

/// The decimal digits of `text` in ASCII, full-width ones included: what a card number in it
/// reads as once its separators are taken out.
pub fn digits(text: &str) -> String {
    text.chars().filter_map(digit_value).map(|d| char::from(b'0' + d)).collect()
}

/// Characters people put between the digit groups of a card number.
fn is_separator(c: char) -> bool {
    matches!(
        fold(c),
        ' ' | '-' | '.' | '/' | '_' | '\u{a0}' | '\u{3000}' | '\u{2010}'..='\u{2015}' | '\u{2212}'
    )
}

/// Masks a card number: keeps at most the first 6 and last 4 digits (PCI DSS 3.3) and replaces
/// the others with `*`. Non-digits are ignored and full-width digits become ASCII, so
/// `4111 1111 1111 1111` gives `411111******1111`.
///
/// Numbers shorter than a PAN keep only their last 4 digits, and only when they have at least 8,
/// so that the result never reveals more than half of its input.
pub fn mask_pan(text: &str) -> String {
    let digits: Vec<char> = digits(text).chars().collect();
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
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && luhn(digits.bytes().map(|b| b - b'0'))
}

/// Luhn over digit values, rightmost digit first undoubled.
fn luhn(digits: impl DoubleEndedIterator<Item = u8>) -> bool {
    let sum: u32 = digits
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d);
            match (i % 2 == 1, d * 2) {
                (true, doubled) if doubled > 9 => doubled - 9,
                (true, doubled) => doubled,
                (false, _) => d,
            }
        })
        .sum();
    sum % 10 == 0
}

/// Whether `text` contains something that [`mask_text`] would mask.
pub fn contains_pan(text: &str) -> bool {
    !pan_spans(text).is_empty()
}

/// Whether an id holds card data and must be refused: a full PAN, track data, or a PAN that
/// was already masked (the terminal sanitizer masks before typed parsing, so an id that held a
/// PAN arrives as `411111******1111`; no real id looks like that).
pub fn holds_card_data(text: &str) -> bool {
    contains_pan(text) || looks_like_track_data(text) || looks_masked(text)
}

/// Four or more `*` followed by four digits: the shape [`mask_pan`] and the sanitizer produce.
fn looks_masked(text: &str) -> bool {
    let chars: Vec<char> = text.chars().map(fold).collect();
    chars.windows(8).any(|w| w[..4].iter().all(|&c| c == '*') && w[4..].iter().all(char::is_ascii_digit))
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

/// One digit of a run, with its byte range in the text.
struct Digit {
    value: u8,
    bytes: Range<usize>,
}

/// Digits joined by separators; `groups` holds the index of each group's first digit.
#[derive(Default)]
struct Run {
    digits: Vec<Digit>,
    groups: Vec<usize>,
}

/// Byte ranges of PANs in `text`.
fn pan_spans(text: &str) -> Vec<Range<usize>> {
    let uuids = uuid_spans(text);
    let mut spans = Vec::new();
    let mut run = Run::default();
    let mut separators = 0;
    for (at, c) in text.char_indices() {
        let in_uuid = uuids.iter().any(|u| u.contains(&at));
        match digit_value(c).filter(|_| !in_uuid) {
            Some(value) => {
                if run.digits.is_empty() || separators > 0 {
                    run.groups.push(run.digits.len());
                }
                separators = 0;
                run.digits.push(Digit { value, bytes: at..at + c.len_utf8() });
            }
            None if !in_uuid
                && is_separator(c)
                && !run.digits.is_empty()
                && separators < MAX_SEPARATOR_RUN =>
            {
                separators += 1;
            }
            None => {
                find_pans(&std::mem::take(&mut run), &mut spans);
                separators = 0;
            }
        }
    }
    find_pans(&run, &mut spans);
    spans
}

/// Finds PANs in one run, each starting at a group, preferring the longest match from each
/// start. A PAN ends at the end of a group; only where no such PAN overlaps may one end inside
/// a group, when it is glued to an expiry date (otherwise a long group, an order number say, is
/// one number, never a PAN). Boundary matches come first so that a glued reading of the digits
/// before a real PAN cannot swallow its first digits and leave the rest visible.
fn find_pans(run: &Run, spans: &mut Vec<Range<usize>>) {
    let strict = matches(run, false, &[]);
    let glued = matches(run, true, &strict);
    let mut found: Vec<Range<usize>> = strict.into_iter().chain(glued).collect();
    found.sort_by_key(|r| r.start);
    let digits = &run.digits;
    spans.extend(found.into_iter().map(|r| digits[r.start].bytes.start..digits[r.end - 1].bytes.end));
}

/// Digit-index ranges of PANs in `run`; with `glued`, only those ending inside a group and not
/// overlapping any of `taken`.
fn matches(run: &Run, glued: bool, taken: &[Range<usize>]) -> Vec<Range<usize>> {
    let digits = &run.digits;
    let ends_group = |end: usize| end == digits.len() || run.groups.contains(&end);
    let free = |r: &Range<usize>| taken.iter().all(|t| r.end <= t.start || t.end <= r.start);
    let mut found = Vec::new();
    let mut g = 0;
    while let Some(&start) = run.groups.get(g) {
        let best = (13..=19).rev().map(|len| start..start + len).find(|r| {
            r.end <= digits.len()
                && luhn(digits[r.clone()].iter().map(|d| d.value))
                && if glued {
                    !ends_group(r.end) && glued_expiry(&digits[r.end..]) && free(r)
                } else {
                    ends_group(r.end)
                }
        });
        match best {
            Some(r) => {
                g = run.groups.iter().position(|&s| s >= r.end).unwrap_or(run.groups.len());
                found.push(r);
            }
            None => g += 1,
        }
    }
    found
}

/// Whether the digits right after a candidate PAN read as an expiry date (`YYMM`, a month from
/// 01 to 12), as in track 2 data written without its `=` separator.
fn glued_expiry(rest: &[Digit]) -> bool {
    match rest {
        [_, _, m1, m2, ..] => (1..=12).contains(&(m1.value * 10 + m2.value)),
        _ => false,
    }
}

/// Byte ranges of UUIDs (`8-4-4-4-12` hex digits), which are ids and never card numbers.
fn uuid_spans(text: &str) -> Vec<Range<usize>> {
    const SHAPE: [usize; 5] = [8, 4, 4, 4, 12];
    let bytes = text.as_bytes();
    let hex = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_hexdigit);
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let fits = i == 0 || !hex(i - 1);
        let mut j = i;
        let shaped =
            fits && SHAPE.iter().enumerate().all(|(n, &len)| {
                let group = (j..j + len).all(hex);
                j += len;
                let dash = n == SHAPE.len() - 1 || bytes.get(j) == Some(&b'-');
                j += usize::from(n < SHAPE.len() - 1);
                group && dash
            }) && !hex(j);
        if shaped {
            spans.push(i..j);
            i = j;
        } else {
            i += 1;
        }
    }
    spans
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod field_tests;
