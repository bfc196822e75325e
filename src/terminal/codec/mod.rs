//! Link-level framing: turning the serial byte stream into payloads, and replies into bytes.
//!
//! Terminals in the field speak one of three framings, chosen in the daemon's configuration:
//!
//! * `ndjson` — one JSON object per `\n` (or `\r\n`) terminated line;
//! * `stx-etx` — `STX payload ETX LRC`, the classic POS serial framing with a checksum and
//!   ACK/NAK link replies;
//! * `lines` — a plain barcode scanner that types one receipt id per line and never reads.
//!
//! ZVT payment terminals speak a binary protocol of their own; its codecs are in [`zvt`].
//!
//! All decoders share the same guarantees, because the serial line is untrusted and noisy: they
//! never panic, they look at every pushed byte exactly once, and they never buffer more than
//! [`MAX_FRAME`] bytes of a partial frame. An oversized frame switches the decoder into a discard
//! mode that drops bytes up to the next delimiter and then reports [`DropReason::FrameTooLong`]
//! once, so a misbehaving terminal costs neither memory nor the frames that follow it.

mod lines;
mod ndjson;
mod stx_etx;
pub mod zvt;

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

pub use stx_etx::{lrc, ETX, STX};

/// The largest payload (delimiters excluded) that a decoder accepts. Real terminal messages are
/// well under 2 KiB, so 8 KiB leaves room for large receipts while bounding memory per port.
pub const MAX_FRAME: usize = 8 * 1024;

/// Link-level positive acknowledgement sent after a good `stx-etx` frame.
pub const ACK: u8 = 0x06;

/// Link-level negative acknowledgement that asks an `stx-etx` terminal to resend its frame.
pub const NAK: u8 = 0x15;

/// How payloads are delimited on the serial line, as named in the daemon's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Framing {
    /// One JSON object per line (`ndjson`).
    Ndjson,
    /// `STX payload ETX LRC` (`stx-etx`).
    StxEtx,
    /// One barcode per CR, LF or CRLF terminated line (`lines`).
    Lines,
}

impl Framing {
    /// Every framing, in the order they are documented, for help texts and exhaustive tests.
    pub const ALL: [Framing; 3] = [Framing::Ndjson, Framing::StxEtx, Framing::Lines];

    /// The configuration name of this framing.
    pub fn as_str(self) -> &'static str {
        match self {
            Framing::Ndjson => "ndjson",
            Framing::StxEtx => "stx-etx",
            Framing::Lines => "lines",
        }
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A configuration value that names no known framing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown framing {0:?}: expected one of ndjson, stx-etx, lines")]
pub struct UnknownFraming(pub String);

impl FromStr for Framing {
    type Err = UnknownFraming;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Framing::ALL
            .into_iter()
            .find(|framing| framing.as_str() == s)
            .ok_or_else(|| UnknownFraming(s.to_owned()))
    }
}

/// Why a decoder threw bytes away instead of producing a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DropReason {
    /// The payload exceeded [`MAX_FRAME`]; everything up to its delimiter was discarded.
    #[error("frame longer than {} bytes", MAX_FRAME)]
    FrameTooLong,
    /// The payload was complete but not valid UTF-8.
    #[error("frame is not valid UTF-8")]
    InvalidUtf8,
    /// The `stx-etx` checksum byte did not match the payload.
    #[error("frame failed its LRC check")]
    BadLrc,
    /// A run of `stx-etx` bytes arrived outside any frame (reported once per run).
    #[error("bytes outside a frame were ignored")]
    Garbage,
    /// An `stx-etx` frame carried no payload at all.
    #[error("frame has an empty payload")]
    Empty,
    /// An `stx-etx` frame was abandoned because a new STX arrived before its ETX.
    #[error("frame abandoned by a new STX before its ETX")]
    Interrupted,
}

impl DropReason {
    /// A stable identifier for metrics and structured logs; never change an existing value.
    pub fn code(self) -> &'static str {
        match self {
            DropReason::FrameTooLong => "frame_too_long",
            DropReason::InvalidUtf8 => "invalid_utf8",
            DropReason::BadLrc => "bad_lrc",
            DropReason::Garbage => "garbage",
            DropReason::Empty => "empty",
            DropReason::Interrupted => "interrupted",
        }
    }
}

/// One result of decoding: a complete payload or the reason bytes were dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A complete UTF-8 payload without its delimiters.
    Frame(String),
    /// Bytes that could not form a payload.
    Dropped(DropReason),
}

/// A streaming decoder for one serial port.
///
/// Bytes are decoded as soon as they are pushed, so the queue of finished items never holds more
/// than the pushed chunk produced; callers should drain [`Decoder::next_item`] after each push.
#[derive(Debug)]
pub struct Decoder {
    framing: Framing,
    state: State,
    out: VecDeque<Item>,
}

/// The per-framing state; an enum rather than a trait object keeps dispatch static and `Debug`.
#[derive(Debug)]
enum State {
    Ndjson(ndjson::NdjsonDecoder),
    StxEtx(stx_etx::StxEtxDecoder),
    Lines(lines::LinesDecoder),
}

impl Decoder {
    /// Creates a decoder in its initial state (outside any frame).
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Ndjson => State::Ndjson(ndjson::NdjsonDecoder::new()),
            Framing::StxEtx => State::StxEtx(stx_etx::StxEtxDecoder::new()),
            Framing::Lines => State::Lines(lines::LinesDecoder::new()),
        };
        Decoder { framing, state, out: VecDeque::new() }
    }

    /// The framing this decoder was built for.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Decodes a chunk of bytes read from the port; results are collected with [`Self::next_item`].
    pub fn push(&mut self, bytes: &[u8]) {
        match &mut self.state {
            State::Ndjson(decoder) => decoder.push(bytes, &mut self.out),
            State::StxEtx(decoder) => decoder.push(bytes, &mut self.out),
            State::Lines(decoder) => decoder.push(bytes, &mut self.out),
        }
    }

    /// Returns the next decoded item, oldest first, or `None` once everything pushed is consumed.
    pub fn next_item(&mut self) -> Option<Item> {
        self.out.pop_front()
    }

    /// Forgets any partial frame and queued items, e.g. after the port was reopened, because bytes
    /// from before a reconnect must never be glued to bytes from after it.
    pub fn reset(&mut self) {
        *self = Decoder::new(self.framing);
    }

    /// How many bytes of an unfinished frame are currently held; always at most `MAX_FRAME + 1`.
    pub fn buffered_len(&self) -> usize {
        match &self.state {
            State::Ndjson(decoder) => decoder.buffered_len(),
            State::StxEtx(decoder) => decoder.buffered_len(),
            State::Lines(decoder) => decoder.buffered_len(),
        }
    }
}

impl From<Framing> for Decoder {
    fn from(framing: Framing) -> Self {
        Decoder::new(framing)
    }
}

/// Frames a JSON reply for the terminal.
///
/// `json` is expected to be single-line JSON as produced by `serde_json::to_string`, which never
/// contains raw control characters. Should a stray delimiter byte slip in anyway it is replaced by
/// a space (insignificant whitespace in JSON) so that a bad reply can never desynchronise the link.
/// Barcode scanners (`lines`) cannot receive anything, so their replies are empty.
pub fn encode_reply(framing: Framing, json: &str) -> Vec<u8> {
    match framing {
        Framing::Ndjson => ndjson::encode(json.as_bytes()),
        Framing::StxEtx => stx_etx::encode(json.as_bytes()),
        Framing::Lines => Vec::new(),
    }
}

/// The link-level byte to send after decoding `item`, if the framing has one.
///
/// Only `stx-etx` terminals expect an ACK/NAK. Good frames are acknowledged even before their JSON
/// is parsed, because the link layer only vouches for the bytes; application errors travel in a
/// JSON `nak` reply. Garbage and abandoned frames get no reply: the terminal is not waiting for
/// one, and answering line noise could confirm a frame the terminal never finished sending.
pub fn link_reply(framing: Framing, item: &Item) -> Option<u8> {
    if framing != Framing::StxEtx {
        return None;
    }
    match item {
        Item::Frame(_) => Some(ACK),
        Item::Dropped(
            DropReason::BadLrc | DropReason::FrameTooLong | DropReason::InvalidUtf8 | DropReason::Empty,
        ) => Some(NAK),
        Item::Dropped(DropReason::Garbage | DropReason::Interrupted) => None,
    }
}

/// Accumulates one frame's payload and switches to discard mode instead of growing past `limit`.
///
/// The buffer is allocated once at its full size, so a stream of frames never reallocates and the
/// decoder's memory is fixed from the start.
#[derive(Debug)]
struct FrameBuf {
    bytes: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl FrameBuf {
    fn new(limit: usize) -> Self {
        FrameBuf { bytes: Vec::with_capacity(limit), limit, overflowed: false }
    }

    /// Appends `chunk`, or enters discard mode (dropping what was kept) if it would not fit.
    fn extend(&mut self, chunk: &[u8]) {
        if self.overflowed {
            return;
        }
        // `bytes.len() <= limit` always holds, so the subtraction cannot underflow.
        if chunk.len() > self.limit - self.bytes.len() {
            self.overflowed = true;
            self.bytes.clear();
        } else {
            self.bytes.extend_from_slice(chunk);
        }
    }

    fn overflowed(&self) -> bool {
        self.overflowed
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Starts a new frame, leaving discard mode.
    fn clear(&mut self) {
        self.bytes.clear();
        self.overflowed = false;
    }
}

/// Decodes `bytes` pushed in chunks of the given sizes (cycled; 0 is treated as 1) and returns
/// every item, so the codec tests can check that chunk boundaries never change the result.
#[cfg(test)]
fn decode_chunked(framing: Framing, bytes: &[u8], sizes: &[usize]) -> Vec<Item> {
    let mut decoder = Decoder::new(framing);
    let mut items = Vec::new();
    let mut rest = bytes;
    let mut sizes = sizes.iter().copied().cycle();
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(size);
        decoder.push(chunk);
        assert!(decoder.buffered_len() <= MAX_FRAME + 1);
        items.extend(std::iter::from_fn(|| decoder.next_item()));
        rest = tail;
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_names_round_trip() {
        for framing in Framing::ALL {
            let parsed: Framing = framing.to_string().parse().expect("own name parses");
            assert_eq!(parsed, framing);
        }
        assert_eq!("stx-etx".parse::<Framing>(), Ok(Framing::StxEtx));
        assert_eq!("stx_etx".parse::<Framing>(), Err(UnknownFraming("stx_etx".into())));
    }

    #[test]
    fn drop_reason_codes_are_stable() {
        let codes = [
            (DropReason::FrameTooLong, "frame_too_long"),
            (DropReason::InvalidUtf8, "invalid_utf8"),
            (DropReason::BadLrc, "bad_lrc"),
            (DropReason::Garbage, "garbage"),
            (DropReason::Empty, "empty"),
            (DropReason::Interrupted, "interrupted"),
        ];
        for (reason, code) in codes {
            assert_eq!(reason.code(), code);
        }
    }

    #[test]
    fn link_reply_only_for_stx_etx() {
        let good = Item::Frame("{}".into());
        let bad = Item::Dropped(DropReason::BadLrc);
        assert_eq!(link_reply(Framing::StxEtx, &good), Some(ACK));
        assert_eq!(link_reply(Framing::StxEtx, &bad), Some(NAK));
        let oversized = Item::Dropped(DropReason::FrameTooLong);
        assert_eq!(link_reply(Framing::StxEtx, &oversized), Some(NAK));
        let garbage = Item::Dropped(DropReason::Garbage);
        assert_eq!(link_reply(Framing::StxEtx, &garbage), None);
        for framing in [Framing::Ndjson, Framing::Lines] {
            assert_eq!(link_reply(framing, &good), None);
            assert_eq!(link_reply(framing, &bad), None);
        }
    }

    #[test]
    fn encode_reply_per_framing() {
        let json = r#"{"type":"ack","seq":7}"#;
        assert_eq!(encode_reply(Framing::Ndjson, json), format!("{json}\n").into_bytes());
        let framed = encode_reply(Framing::StxEtx, json);
        assert_eq!(framed.first(), Some(&STX));
        assert_eq!(framed.get(framed.len() - 2), Some(&ETX));
        assert_eq!(framed.last(), Some(&lrc(json.as_bytes())));
        assert!(encode_reply(Framing::Lines, json).is_empty());
    }

    #[test]
    fn reset_forgets_partial_frame() {
        let mut decoder = Decoder::new(Framing::Ndjson);
        decoder.push(b"{\"type\":");
        assert_eq!(decoder.buffered_len(), 8);
        decoder.reset();
        decoder.push(b"{\"type\":\"cancel\"}\n");
        assert_eq!(decoder.next_item(), Some(Item::Frame("{\"type\":\"cancel\"}".into())));
    }
}
