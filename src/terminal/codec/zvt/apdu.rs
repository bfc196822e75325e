//! ZVT APDUs: `class instruction length data`, the unit both transports carry.
//!
//! The length byte counts the data only. A length of 255 or more is written as `FF` followed by
//! two bytes, low byte first (`04 0F FF 00 01 …` announces 256 data bytes). Over TCP APDUs follow
//! each other without any framing, so [`ApduDecoder`] cuts the stream by these lengths.

use std::collections::VecDeque;

use super::transport::MAX_APDU;

/// One application protocol data unit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Apdu {
    /// The class byte (`06` commands, `04` status, `80`/`84` answers, `05` enquiries).
    pub class: u8,
    /// The instruction byte within the class.
    pub instr: u8,
    /// The data after the length field.
    pub data: Vec<u8>,
}

/// Why bytes could not be read as an APDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApduError {
    /// Fewer bytes than the header or the announced length needs.
    #[error("APDU cut short: {needed} bytes announced, {got} present")]
    Truncated { needed: usize, got: usize },
    /// More bytes than the length field announced (only for a whole-APDU parse).
    #[error("{0} bytes after the announced end of the APDU")]
    TrailingBytes(usize),
    /// The data does not fit a length field (more than 65,535 bytes).
    #[error("APDU data of {0} bytes does not fit a length field")]
    TooLong(usize),
}

/// The positive answer to any command: `80 00 00`.
pub const ACK_APDU: [u8; 3] = [0x80, 0x00, 0x00];

impl Apdu {
    /// An APDU with the given control field and data.
    pub fn new(class: u8, instr: u8, data: Vec<u8>) -> Apdu {
        Apdu { class, instr, data }
    }

    /// The control field as one number, `0x060F` for a completion.
    pub fn command(&self) -> u16 {
        u16::from_be_bytes([self.class, self.instr])
    }

    /// The bytes on the wire, length field included.
    pub fn encode(&self) -> Result<Vec<u8>, ApduError> {
        let len = self.data.len();
        let mut out = Vec::with_capacity(len + 5);
        out.extend_from_slice(&[self.class, self.instr]);
        match u8::try_from(len) {
            Ok(short) if short < 0xFF => out.push(short),
            _ => {
                let long = u16::try_from(len).map_err(|_| ApduError::TooLong(len))?;
                out.push(0xFF);
                out.extend_from_slice(&long.to_le_bytes());
            }
        }
        out.extend_from_slice(&self.data);
        Ok(out)
    }

    /// Reads one APDU from the start of `bytes`; returns it and how many bytes it took.
    pub fn parse_prefix(bytes: &[u8]) -> Result<(Apdu, usize), ApduError> {
        let (header, len) = header_and_len(bytes)?;
        let end = header + len;
        let data = bytes.get(header..end).ok_or(ApduError::Truncated { needed: end, got: bytes.len() })?;
        let apdu = Apdu { class: bytes[0], instr: bytes[1], data: data.to_vec() };
        Ok((apdu, end))
    }

    /// Reads exactly one APDU; bytes beyond its announced length are an error.
    pub fn parse(bytes: &[u8]) -> Result<Apdu, ApduError> {
        let (apdu, used) = Apdu::parse_prefix(bytes)?;
        match bytes.len() - used {
            0 => Ok(apdu),
            extra => Err(ApduError::TrailingBytes(extra)),
        }
    }
}

/// The header size (3 or 5) and the announced data length.
fn header_and_len(bytes: &[u8]) -> Result<(usize, usize), ApduError> {
    match bytes {
        [_, _, 0xFF, low, high, ..] => Ok((5, usize::from(u16::from_le_bytes([*low, *high])))),
        [_, _, 0xFF, ..] => Err(ApduError::Truncated { needed: 5, got: bytes.len() }),
        [_, _, len, ..] => Ok((3, usize::from(*len))),
        _ => Err(ApduError::Truncated { needed: 3, got: bytes.len() }),
    }
}

/// A streaming decoder for APDUs over TCP. Holds at most one APDU's bytes; an APDU announcing
/// more than [`MAX_APDU`] is skipped (its bytes counted off, never stored) and reported.
#[derive(Debug, Default)]
pub struct ApduDecoder {
    buf: Vec<u8>,
    /// Bytes still to be thrown away of an oversized APDU.
    skipping: usize,
    out: VecDeque<Result<Apdu, usize>>,
}

impl ApduDecoder {
    /// A decoder at an APDU boundary.
    pub fn new() -> Self {
        ApduDecoder::default()
    }

    /// How many bytes of an unfinished APDU are held.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// The next APDU, or `Err(announced length)` for one that was too long to keep.
    pub fn next_apdu(&mut self) -> Option<Result<Apdu, usize>> {
        self.out.pop_front()
    }

    /// Decodes a chunk read from the socket.
    pub fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.skipping > 0 {
                let n = self.skipping.min(bytes.len());
                self.skipping -= n;
                bytes = &bytes[n..];
                continue;
            }
            // Complete the header first, one byte at a time (it is at most 5 bytes).
            let header = match header_and_len(&self.buf) {
                Ok((header, len)) => (header, len),
                Err(_) => {
                    self.buf.push(bytes[0]);
                    bytes = &bytes[1..];
                    if let Ok((header, len)) = header_and_len(&self.buf) {
                        if header + len > MAX_APDU {
                            self.out.push_back(Err(len));
                            self.skipping = len;
                            self.buf.clear();
                        }
                    }
                    self.finish_if_complete();
                    continue;
                }
            };
            let missing = header.0 + header.1 - self.buf.len();
            let n = missing.min(bytes.len());
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            self.finish_if_complete();
        }
    }

    fn finish_if_complete(&mut self) {
        if let Ok((header, len)) = header_and_len(&self.buf) {
            if self.buf.len() == header + len {
                let data = self.buf.split_off(header);
                self.out.push_back(Ok(Apdu { class: self.buf[0], instr: self.buf[1], data }));
                self.buf.clear();
            }
        }
    }
}
