//! Card data in ZVT fields, reduced before anything else sees it (PCI DSS 3.2–3.4).
//!
//! A Status-Information answer to Read Card carries the full card number (BMP `22`) and track 2
//! (BMP `23`); EMV containers may carry them again (tags `5A`, `57`). The decoder keeps none of
//! these bytes: a card number or a track becomes the one card reference the agent stores, BIN +
//! last 4 ([`CardRef::from_pan_text`]); expiry dates, security codes and PIN blocks are dropped.
//! Every other value is also checked with the one card-number detector ([`crate::pan`]) before it
//! is shown, because a binary field written as hex reads exactly like the digits of a BCD PAN.

use super::bmp::{bcd_digits, hex, latin1, Value};
use super::tlv::{Tlv, TlvValue};
use crate::pan::{contains_pan, looks_like_track_data, mask_pan, mask_text};
use crate::sale::CardRef;

/// The card number in a PAN or track field, as BIN + last 4; `None` when none can be read.
///
/// `packed` fields are read as BCD nibbles (ZVT's BMP `22`, `23` and `24`, EMV's `5A` and `57`:
/// `E` for digits the terminal masked, `D` as the track separator, `F` as padding); the others
/// as text (track 1), as are packed fields whose bytes are all printable text, which some
/// terminals send for track 2 — except where the nibbles read as digits already, because the BCD
/// of a PAN such as `5555…` is printable too. The card number is what comes before the first
/// field separator (`=`, `D`, `^`), without sentinels.
pub fn reduce(bytes: &[u8], packed: bool) -> Option<CardRef> {
    let printable = !bytes.is_empty() && bytes.iter().all(|b| (0x20..0x7F).contains(b));
    let nibbles_are_digits = bytes.first().is_some_and(|b| b >> 4 <= 9 && b & 0x0F <= 9);
    let as_text = !packed || (printable && !nibbles_are_digits);
    let text: String = if as_text {
        latin1(bytes)
    } else {
        bytes
            .iter()
            .flat_map(|b| [b >> 4, b & 0x0F])
            .map(|n| match n {
                0..=9 => char::from(b'0' + n),
                0x0D => '=',
                0x0E => '*',
                _ => ' ',
            })
            .collect()
    };
    let body = text.trim_start_matches([';', '%', 'B', 'b', ' ']);
    let number: String = body
        .chars()
        .take_while(|c| !matches!(c, '=' | 'D' | '^'))
        .filter(|c| c.is_ascii_digit() || *c == '*')
        .collect();
    CardRef::from_pan_text(&number)
}

/// Binary bytes in hex, masked or dropped where they read as card data.
///
/// A hostile or broken terminal can put a card number where no parser expects one (a TLV
/// container with a wrong length, text after a malformed field), so the hex is also dropped when
/// the bytes read as text holding a card number, and every run of 13 or more digits in the hex is
/// masked like a PAN even when it is longer than one or fails Luhn as a whole: the BCD of a card
/// number inside a longer run of digits must not show.
pub fn safe_hex(bytes: &[u8]) -> Value {
    let text = hex(bytes);
    let as_text = latin1(bytes);
    if looks_like_track_data(&text) || looks_like_track_data(&as_text) || contains_pan(&as_text) {
        return Value::Removed;
    }
    Value::Hex(mask_digit_runs(&mask_text(&text)))
}

/// Masks every run of 13 or more ASCII digits as [`mask_pan`] does (first 6 and last 4 kept).
fn mask_digit_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 13 {
            out.push_str(&mask_pan(run));
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// BCD digits, masked where they form a card number.
pub fn safe_digits(digits: String) -> Value {
    if contains_pan(&digits) {
        return Value::Digits(mask_text(&digits).into_owned());
    }
    Value::Digits(digits)
}

/// Text, masked where it holds a card number and dropped where it holds a track.
pub fn safe_text(text: &str) -> Value {
    if looks_like_track_data(text) {
        return Value::Removed;
    }
    Value::Text(mask_text(text).into_owned())
}

/// A TLV entry with its value reduced like a BMP's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafeTlv {
    pub tag: u32,
    pub value: SafeTlvValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SafeTlvValue {
    Value(Value),
    Nested(Vec<SafeTlv>),
}

/// EMV tags that hold the card number or track 2 equivalent data (packed): reduced to the card.
const CARD_TAGS: [u32; 3] = [0x5A, 0x57, 0x9F6B];
/// EMV track 1 equivalent data (text): reduced to the card.
const TRACK_1_TAG: u32 = 0x56;
/// EMV tags that hold the expiry date or the cardholder name: dropped.
const SECRET_TAGS: [u32; 4] = [0x5F24, 0x5F20, 0x9F1F, 0x9F20];
/// ZVT tag for one line of text (display and print texts).
const TEXT_LINE: u32 = 0x07;

/// Reduces a whole TLV list.
pub fn safe_tlv(items: Vec<Tlv>) -> Vec<SafeTlv> {
    items
        .into_iter()
        .map(|item| {
            let value = match item.value {
                TlvValue::Constructed(inner) => SafeTlvValue::Nested(safe_tlv(inner)),
                TlvValue::Primitive(bytes) => SafeTlvValue::Value(safe_primitive(item.tag, &bytes)),
            };
            SafeTlv { tag: item.tag, value }
        })
        .collect()
}

fn safe_primitive(tag: u32, bytes: &[u8]) -> Value {
    if CARD_TAGS.contains(&tag) || tag == TRACK_1_TAG {
        return reduce(bytes, tag != TRACK_1_TAG).map_or(Value::Removed, Value::Card);
    }
    if SECRET_TAGS.contains(&tag) {
        return Value::Removed;
    }
    if tag == TEXT_LINE {
        return safe_text(&latin1(bytes));
    }
    // A value that is all BCD digits may be a card number the tag list above does not name.
    if let Some(digits) = bcd_digits(bytes) {
        if contains_pan(&digits) {
            return Value::Digits(mask_text(&digits).into_owned());
        }
    }
    safe_hex(bytes)
}
