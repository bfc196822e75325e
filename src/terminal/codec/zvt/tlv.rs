//! The TLV container of BMP `06`: BER-TLV as in ISO 7816-4 / EMV.
//!
//! A tag is one byte, or more when its low five bits are all set (`1F 12`), continued while the
//! high bit of the next byte is set. Bit 6 of the first byte marks a constructed tag whose value is
//! itself a TLV list. A length below `80` is one byte; `81 xx` and `82 xx xx` carry longer ones,
//! most significant byte first.

/// How deep constructed tags may nest before the container is refused: real containers nest two
/// or three levels, and a bound keeps a hostile one from exhausting the stack.
pub const MAX_DEPTH: usize = 8;

/// One tag with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlv {
    /// The tag's bytes as one number, `0x1F12` for `1F 12`.
    pub tag: u32,
    pub value: TlvValue,
}

/// A primitive value (bytes) or a constructed one (more tags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlvValue {
    Primitive(Vec<u8>),
    Constructed(Vec<Tlv>),
}

/// Why a TLV container could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TlvError {
    #[error("TLV cut short at byte {0}")]
    Truncated(usize),
    #[error("TLV length form {0:#04x} is not supported")]
    BadLength(u8),
    #[error("TLV tag longer than 4 bytes at byte {0}")]
    TagTooLong(usize),
    #[error("TLV nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

impl Tlv {
    /// Whether the first tag byte marks a constructed value.
    pub fn is_constructed_tag(tag: u32) -> bool {
        let first = tag.to_be_bytes().into_iter().find(|&b| b != 0).unwrap_or(0);
        first & 0x20 != 0
    }

    /// The tag in hex as written in the specification (`1F12`).
    pub fn tag_hex(&self) -> String {
        tag_bytes(self.tag).iter().map(|b| format!("{b:02X}")).collect()
    }
}

fn tag_bytes(tag: u32) -> Vec<u8> {
    let bytes = tag.to_be_bytes();
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(3);
    bytes[start..].to_vec()
}

/// Reads a BER length at `bytes[at..]`; returns the length and the bytes it took.
pub fn parse_length(bytes: &[u8], at: usize) -> Result<(usize, usize), TlvError> {
    let first = *bytes.get(at).ok_or(TlvError::Truncated(at))?;
    let take = |n: usize| -> Result<usize, TlvError> {
        let slice = bytes.get(at + 1..at + 1 + n).ok_or(TlvError::Truncated(at))?;
        Ok(slice.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b)))
    };
    match first {
        0x00..=0x7F => Ok((usize::from(first), 1)),
        0x81 => Ok((take(1)?, 2)),
        0x82 => Ok((take(2)?, 3)),
        other => Err(TlvError::BadLength(other)),
    }
}

/// Writes a BER length.
pub fn encode_length(len: usize, out: &mut Vec<u8>) {
    match len {
        0..=0x7F => out.push(len as u8),
        0x80..=0xFF => out.extend_from_slice(&[0x81, len as u8]),
        _ => {
            // A container is itself inside an APDU of at most 65,535 data bytes.
            let len = u16::try_from(len).unwrap_or(u16::MAX);
            out.push(0x82);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
}

/// Reads a whole TLV list.
pub fn parse(bytes: &[u8]) -> Result<Vec<Tlv>, TlvError> {
    parse_at(bytes, 0, 0)
}

fn parse_at(bytes: &[u8], offset: usize, depth: usize) -> Result<Vec<Tlv>, TlvError> {
    if depth > MAX_DEPTH {
        return Err(TlvError::TooDeep);
    }
    let mut items = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let start = at;
        let first = bytes[at];
        let mut tag = u32::from(first);
        at += 1;
        if first & 0x1F == 0x1F {
            loop {
                let next = *bytes.get(at).ok_or(TlvError::Truncated(offset + at))?;
                if at - start >= 4 {
                    return Err(TlvError::TagTooLong(offset + start));
                }
                tag = (tag << 8) | u32::from(next);
                at += 1;
                if next & 0x80 == 0 {
                    break;
                }
            }
        }
        let (len, used) = parse_length(bytes, at).map_err(|e| shift(e, offset))?;
        at += used;
        let value = bytes.get(at..at + len).ok_or(TlvError::Truncated(offset + at))?;
        let value = if first & 0x20 != 0 {
            TlvValue::Constructed(parse_at(value, offset + at, depth + 1)?)
        } else {
            TlvValue::Primitive(value.to_vec())
        };
        at += len;
        items.push(Tlv { tag, value });
    }
    Ok(items)
}

fn shift(error: TlvError, offset: usize) -> TlvError {
    match error {
        TlvError::Truncated(at) => TlvError::Truncated(at + offset),
        other => other,
    }
}

/// Writes a TLV list.
pub fn encode(items: &[Tlv]) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        out.extend_from_slice(&tag_bytes(item.tag));
        let value = match &item.value {
            TlvValue::Primitive(bytes) => bytes.clone(),
            TlvValue::Constructed(inner) => encode(inner),
        };
        encode_length(value.len(), &mut out);
        out.extend_from_slice(&value);
    }
    out
}
