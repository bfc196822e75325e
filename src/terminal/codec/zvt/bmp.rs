//! BMP fields: the tagged values inside an APDU's data (`04` amount, `0B` trace number, …).
//!
//! Each BMP starts with its one-byte tag; the tag alone decides the field's length: a fixed size,
//! an LLVAR (two length bytes `F x F y` for a length of `xy` bytes), an LLLVAR (three such bytes),
//! or a BER-TLV container (`06`). A tag this table does not know cannot be skipped, because its
//! length is unknowable, so parsing stops there and the rest is kept as unread bytes.
//!
//! [`parse_raw`] only cuts the data into fields; [`interpret`] gives a field its meaning and, for
//! the card-number and track fields, reduces it to BIN + last 4 at once (see [`super::card`]).

use super::card;
use super::tlv;
use crate::sale::CardRef;

/// How a BMP's length is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Fixed(usize),
    LlVar,
    LllVar,
    Tlv,
}

/// What a BMP's bytes mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One or more binary bytes (result codes, status bytes, card types).
    Binary,
    /// Packed decimal digits (trace numbers, dates, the terminal id, the currency).
    Bcd,
    /// A 12-digit BCD amount in minor units.
    Amount,
    /// Text in the terminal's character set.
    Text,
    /// A card number (packed BCD, `E` for masked digits, `F` for padding).
    Pan,
    /// Magnetic-stripe track data: never kept, reduced to the card it names.
    Track,
    /// A card security code, PIN block or expiry date: dropped whole.
    Secret,
    /// A BER-TLV container.
    Container,
}

/// One entry of the BMP table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub tag: u8,
    pub name: &'static str,
    pub format: Format,
    pub kind: Kind,
}

const fn spec(tag: u8, name: &'static str, format: Format, kind: Kind) -> Spec {
    Spec { tag, name, format, kind }
}

use Format::{Fixed, LlVar, LllVar};
use Kind::{Amount, Bcd, Binary, Container, Pan, Secret, Text, Track};

/// The BMPs of the ZVT specification's BMP list that terminals send in the commands the agent
/// speaks (registration, read card, refund, status information, completion, abort, receipts).
pub const TABLE: &[Spec] = &[
    spec(0x01, "timeout", Fixed(1), Binary),
    spec(0x02, "max_status_infos", Fixed(1), Binary),
    spec(0x03, "service_byte", Fixed(1), Binary),
    spec(0x04, "amount", Fixed(6), Amount),
    spec(0x05, "pump_number", Fixed(1), Binary),
    spec(0x06, "tlv", Format::Tlv, Container),
    spec(0x0B, "trace_number", Fixed(3), Bcd),
    spec(0x0C, "time", Fixed(3), Bcd),
    spec(0x0D, "date", Fixed(2), Bcd),
    spec(0x0E, "expiry_date", Fixed(2), Secret),
    spec(0x17, "card_sequence_number", Fixed(2), Bcd),
    spec(0x19, "payment_type", Fixed(1), Binary),
    spec(0x22, "pan", LlVar, Pan),
    spec(0x23, "track_2", LlVar, Track),
    spec(0x24, "track_3", LllVar, Track),
    spec(0x27, "result_code", Fixed(1), Binary),
    spec(0x29, "terminal_id", Fixed(4), Bcd),
    spec(0x2A, "vu_number", Fixed(15), Text),
    spec(0x2D, "track_1", LlVar, Track),
    spec(0x2E, "sync_chip_data", LllVar, Binary),
    spec(0x37, "original_trace_number", Fixed(3), Bcd),
    spec(0x3A, "cvv", Fixed(2), Secret),
    spec(0x3B, "aid", Fixed(8), Text),
    spec(0x3C, "additional_text", LllVar, Text),
    spec(0x3D, "password", Fixed(3), Bcd),
    spec(0x49, "currency_code", Fixed(2), Bcd),
    spec(0x60, "individual_totals", LllVar, Binary),
    spec(0x87, "receipt_number", Fixed(2), Bcd),
    spec(0x88, "turnover_record_number", Fixed(3), Bcd),
    spec(0x8A, "card_type", Fixed(1), Binary),
    spec(0x8B, "card_name", LlVar, Text),
    spec(0x8C, "card_type_id", Fixed(1), Binary),
    spec(0x9A, "geldkarte_data", LllVar, Binary),
    spec(0xA0, "result_code_as", Fixed(1), Binary),
    spec(0xA7, "chip_data", LlVar, Binary),
    spec(0xAF, "ef_info", LllVar, Binary),
    spec(0xBA, "aid_parameter", Fixed(5), Binary),
    spec(0xD0, "algorithm_key", Fixed(1), Binary),
    spec(0xD1, "card_offset", LlVar, Binary),
    spec(0xD2, "dukpt_key", Fixed(1), Binary),
    spec(0xD3, "dukpt_pin_block", Fixed(8), Secret),
    spec(0xE0, "min_length", Fixed(1), Binary),
    spec(0xE1, "text_line_1", LlVar, Text),
    spec(0xE2, "text_line_2", LlVar, Text),
    spec(0xE3, "text_line_3", LlVar, Text),
    spec(0xE4, "text_line_4", LlVar, Text),
    spec(0xE9, "max_length", Fixed(1), Binary),
    spec(0xEA, "echo_input", Fixed(1), Binary),
    spec(0xF0, "display_duration", Fixed(1), Binary),
    spec(0xF1, "display_line_1", LlVar, Text),
    spec(0xF2, "display_line_2", LlVar, Text),
    spec(0xF3, "display_line_3", LlVar, Text),
    spec(0xF4, "display_line_4", LlVar, Text),
    spec(0xF9, "beep_tones", Fixed(1), Binary),
];

/// The table entry for `tag`.
pub fn lookup(tag: u8) -> Option<&'static Spec> {
    TABLE.iter().find(|spec| spec.tag == tag)
}

/// One BMP cut out of the data, its meaning not yet applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawField {
    pub tag: u8,
    pub bytes: Vec<u8>,
}

/// Why BMP parsing stopped before the end of the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BmpError {
    #[error("BMP {0:02X} is not in the table; its length is unknown")]
    UnknownTag(u8),
    #[error("BMP {0:02X} cut short")]
    Truncated(u8),
    #[error("BMP {0:02X} has a malformed length field")]
    BadLength(u8),
}

/// Reads a ZVT `F x` length field of `digits` bytes at `bytes[0..]`.
pub fn parse_var_len(bytes: &[u8], digits: usize) -> Option<usize> {
    let field = bytes.get(..digits)?;
    field.iter().try_fold(0usize, |acc, &b| {
        (b & 0xF0 == 0xF0 && b & 0x0F <= 9).then(|| acc * 10 + usize::from(b & 0x0F))
    })
}

/// Writes a ZVT `F x` length field.
pub fn encode_var_len(len: usize, digits: usize, out: &mut Vec<u8>) {
    let text = format!("{len:0digits$}");
    out.extend(
        text.bytes().rev().take(digits).collect::<Vec<_>>().into_iter().rev().map(|d| 0xF0 | (d - b'0')),
    );
}

/// Cuts `data` into BMPs. Returns the fields read and, when parsing stopped early, why and at
/// which offset the unread rest begins.
pub fn parse_raw(data: &[u8]) -> (Vec<RawField>, Option<(BmpError, usize)>) {
    let mut fields = Vec::new();
    let mut at = 0;
    while let Some(&tag) = data.get(at) {
        let Some(spec) = lookup(tag) else {
            return (fields, Some((BmpError::UnknownTag(tag), at)));
        };
        let body = &data[at + 1..];
        let (skip, len) = match spec.format {
            Fixed(n) => (0, Some(n)),
            LlVar => (2, parse_var_len(body, 2)),
            LllVar => (3, parse_var_len(body, 3)),
            Format::Tlv => match tlv::parse_length(body, 0) {
                Ok((len, used)) => (used, Some(len)),
                Err(_) => (0, None),
            },
        };
        let Some(len) = len else {
            let error =
                if body.len() < skip.max(1) { BmpError::Truncated(tag) } else { BmpError::BadLength(tag) };
            return (fields, Some((error, at)));
        };
        let Some(bytes) = body.get(skip..skip + len) else {
            return (fields, Some((BmpError::Truncated(tag), at)));
        };
        fields.push(RawField { tag, bytes: bytes.to_vec() });
        at += 1 + skip + len;
    }
    (fields, None)
}

/// Writes one BMP, its length field included; the inverse of [`parse_raw`] for one field.
/// Returns `None` for a tag outside the table or a value that does not fit its format.
pub fn encode_raw(field: &RawField) -> Option<Vec<u8>> {
    let spec = lookup(field.tag)?;
    let mut out = vec![field.tag];
    match spec.format {
        Fixed(n) if n == field.bytes.len() => {}
        Fixed(_) => return None,
        LlVar if field.bytes.len() <= 99 => encode_var_len(field.bytes.len(), 2, &mut out),
        LllVar if field.bytes.len() <= 999 => encode_var_len(field.bytes.len(), 3, &mut out),
        LlVar | LllVar => return None,
        Format::Tlv => tlv::encode_length(field.bytes.len(), &mut out),
    }
    out.extend_from_slice(&field.bytes);
    Some(out)
}

/// A field with its meaning applied. Card data is already reduced: no variant can hold a PAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Binary bytes, in hex.
    Hex(String),
    /// Packed decimal digits.
    Digits(String),
    /// An amount in minor units.
    Amount(u64),
    /// Text, decoded as Latin-1 with trailing NULs removed.
    Text(String),
    /// A card number or track reduced to BIN + last 4.
    Card(CardRef),
    /// Sensitive data that was dropped, not even reduced (CVV, PIN block, expiry).
    Removed,
    /// A TLV container, its values reduced like the BMPs'.
    Tlv(Vec<card::SafeTlv>),
}

/// A field with its name and meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub tag: u8,
    pub name: &'static str,
    pub value: Value,
}

/// Gives a raw field its meaning, reducing card data on the way.
pub fn interpret(raw: RawField) -> Field {
    let Some(spec) = lookup(raw.tag) else {
        return Field { tag: raw.tag, name: "unknown", value: card::safe_hex(&raw.bytes) };
    };
    let value = match spec.kind {
        Binary => card::safe_hex(&raw.bytes),
        Bcd => bcd_digits(&raw.bytes).map_or_else(|| card::safe_hex(&raw.bytes), card::safe_digits),
        Amount => bcd_digits(&raw.bytes)
            .and_then(|digits| digits.parse().ok())
            .map_or_else(|| card::safe_hex(&raw.bytes), Value::Amount),
        Text => card::safe_text(&latin1(&raw.bytes)),
        // Track 1 (`2D`) is text; the card number and tracks 2 and 3 are packed BCD.
        Pan | Track => card::reduce(&raw.bytes, raw.tag != 0x2D).map_or(Value::Removed, Value::Card),
        Secret => Value::Removed,
        Container => match tlv::parse(&raw.bytes) {
            Ok(items) => Value::Tlv(card::safe_tlv(items)),
            Err(_) => card::safe_hex(&raw.bytes),
        },
    };
    Field { tag: raw.tag, name: spec.name, value }
}

/// Cuts and interprets in one go.
pub fn parse(data: &[u8]) -> (Vec<Field>, Option<(BmpError, usize)>) {
    let (raw, stop) = parse_raw(data);
    (raw.into_iter().map(interpret).collect(), stop)
}

/// Bytes in upper-case hex, the way captures and the specification write them.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Packed BCD to digits; `None` when a nibble is not a decimal digit.
pub fn bcd_digits(bytes: &[u8]) -> Option<String> {
    bytes.iter().flat_map(|b| [b >> 4, b & 0x0F]).map(|n| (n <= 9).then(|| char::from(b'0' + n))).collect()
}

/// Digits to packed BCD of `len` bytes, zero-padded on the left; `None` if they do not fit or
/// are not all digits.
pub fn bcd(digits: &str, len: usize) -> Option<Vec<u8>> {
    if digits.len() > len * 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let padded = format!("{digits:0>width$}", width = len * 2);
    Some(padded.as_bytes().chunks(2).map(|pair| ((pair[0] - b'0') << 4) | (pair[1] - b'0')).collect())
}

/// An amount in minor units as BMP `04` (12 BCD digits); `None` above 999,999,999,999.
pub fn amount_field(minor: u64) -> Option<Vec<u8>> {
    let mut out = vec![0x04];
    out.extend(bcd(&minor.to_string(), 6)?);
    Some(out)
}

/// Text as the terminal sends it: one byte per character (Latin-1), trailing NULs dropped.
pub fn latin1(bytes: &[u8]) -> String {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    bytes[..end].iter().map(|&b| char::from(b)).collect()
}
