//! ZVT, the ECR–terminal protocol of European card terminals (SPEC section 3a), as pure codecs.
//!
//! The layers, bottom up:
//!
//! * [`transport`] — the RS-232 framing `DLE STX <APDU> DLE ETX CRC` with DLE doubling, its CRC,
//!   the single-byte ACK/NAK and the sender's repetitions. Over TCP there is no such layer.
//! * [`apdu`] — `class instruction length data`, with the extended length `FF lo hi`; over TCP
//!   [`apdu::ApduDecoder`] cuts the stream into APDUs by their lengths.
//! * [`bmp`] and [`tlv`] — the tagged fields inside an APDU and the BER-TLV container (BMP `06`).
//! * [`card`] — card numbers and tracks reduced to BIN + last 4 as they are decoded.
//! * [`message`] — one APDU read as a named command with its fields, and its JSON form for
//!   `refund-agent terminal decode`.
//!
//! Everything here is pure and never panics on any input; the ECR conversation built on it is in
//! [`crate::terminal::ecr`].

pub mod apdu;
pub mod bmp;
pub mod card;
pub mod message;
pub mod tlv;
pub mod transport;

pub use apdu::{Apdu, ApduDecoder, ApduError};
pub use message::{decode, Message};
pub use transport::{encode_frame, FrameDecoder, Unit};

#[cfg(test)]
mod tests;
