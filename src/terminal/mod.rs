//! Everything needed to understand the payment terminal / receipt scanner on the serial line,
//! without doing any I/O itself.
//!
//! The pipeline has three stages, each in its own module:
//!
//! 1. **bytes → frame** ([`codec`]): the serial port delivers arbitrary chunks of bytes. A
//!    [`codec::Decoder`] built for the configured [`codec::Framing`] (`ndjson`, `stx-etx` or
//!    `lines`) reassembles them into complete UTF-8 payloads ([`codec::Item::Frame`]) or reports
//!    why bytes were thrown away ([`codec::Item::Dropped`]). Memory stays bounded by
//!    [`codec::MAX_FRAME`] plus the chunk being decoded, whatever the terminal sends.
//! 2. **frame → sanitized JSON** ([`pci`]): before anything is typed, card secrets (track data,
//!    CVV, PIN blocks) are deleted and full card numbers are masked, so that no later stage, log
//!    line or database row can ever hold a full PAN.
//! 3. **JSON → event** ([`event`]): the sanitized JSON becomes a typed [`event::TerminalEvent`]
//!    wrapped in an [`event::Inbound`] that carries the terminal's sequence number; for the
//!    `lines` framing (a barcode scanner) each line becomes a receipt scan instead. Replies go the
//!    other way through [`event::Reply::to_json`] and [`codec::encode_reply`].
//!
//! The daemon owns the serial port and the domain logic; keeping this module pure means every
//! edge case of the wire protocol can be unit-, property- and fuzz-tested without hardware.

pub mod codec;
pub mod event;
pub mod pci;
