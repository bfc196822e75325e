//! The ZVT serial transport: `DLE STX <APDU, DLE doubled> DLE ETX CRC-low CRC-high`.
//!
//! The checksum is the CRC-CCITT the ZVT specification prescribes for RS-232: polynomial
//! `x^16 + x^12 + x^5 + 1` processed least significant bit first, start value 0, no final XOR
//! (the parameters the CRC catalogues call CRC-16/KERMIT), computed over the APDU as it was
//! before DLE doubling plus the closing ETX, and sent low byte first. The two CRC bytes are
//! taken raw after `DLE ETX`, so they may hold any value, DLE included.
//!
//! Every frame is confirmed on the link by a single byte: ACK (`06`) when it arrived intact, NAK
//! (`15`) when its CRC failed, after which the sender repeats it (see [`Retransmit`]). Because
//! those single bytes travel in the same stream as frames, the decoder reports them too.

use std::collections::VecDeque;

/// Data link escape: starts the two-byte frame delimiters and is doubled inside an APDU.
pub const DLE: u8 = 0x10;
/// Start of text, after DLE: opens a frame.
pub const STX: u8 = 0x02;
/// End of text, after DLE: closes a frame; the two CRC bytes follow.
pub const ETX: u8 = 0x03;
/// The link-level positive acknowledgement of a frame.
pub const ACK: u8 = 0x06;
/// The link-level negative acknowledgement: the sender repeats its frame.
pub const NAK: u8 = 0x15;

/// The largest APDU (header included) a decoder keeps. The longest a ZVT length field can
/// announce is 3 + 2 + 65,535 bytes; real answers, receipts included, stay far below 16 KiB, so
/// this bounds memory per port without refusing anything a terminal really sends.
pub const MAX_APDU: usize = 16 * 1024;

/// How often a frame is sent in all when the receiver keeps answering NAK or nothing: the
/// first transmission and two repetitions, as the specification allows.
pub const MAX_TRANSMISSIONS: u8 = 3;

/// The CRC of one APDU as the serial transport defines it (see the module documentation).
pub fn crc(apdu: &[u8]) -> u16 {
    apdu.iter().chain(std::iter::once(&ETX)).fold(0u16, |crc, &byte| {
        (0..8).fold(crc ^ u16::from(byte), |c, _| if c & 1 == 1 { (c >> 1) ^ 0x8408 } else { c >> 1 })
    })
}

/// Frames one APDU for the serial line.
pub fn encode_frame(apdu: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(apdu.len() + 8);
    frame.extend_from_slice(&[DLE, STX]);
    for &byte in apdu {
        frame.push(byte);
        if byte == DLE {
            frame.push(DLE);
        }
    }
    let [low, high] = crc(apdu).to_le_bytes();
    frame.extend_from_slice(&[DLE, ETX, low, high]);
    frame
}

/// What the transport decoder found in the byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unit {
    /// A frame whose CRC matched: the APDU with DLE doubling undone. Answer it with [`ACK`].
    Frame(Vec<u8>),
    /// A single ACK byte between frames: the peer confirmed our last frame.
    Ack,
    /// A single NAK byte between frames: the peer asks for our last frame again.
    Nak,
    /// Bytes that formed no frame. [`Dropped::needs_nak`] says whether the peer is waiting.
    Dropped(Dropped),
}

/// Why bytes were thrown away instead of forming a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Dropped {
    /// The frame was complete but its CRC did not match.
    #[error("frame failed its CRC check")]
    BadCrc,
    /// The APDU grew past [`MAX_APDU`]; the rest of the frame was discarded.
    #[error("frame longer than {MAX_APDU} bytes")]
    TooLong,
    /// A DLE inside a frame was followed by neither DLE nor ETX; the frame was abandoned.
    #[error("DLE followed by an unexpected byte inside a frame")]
    BadEscape,
    /// A run of bytes outside any frame that were neither ACK nor NAK (reported once per run).
    #[error("bytes outside a frame were ignored")]
    Garbage,
}

impl Dropped {
    /// A stable identifier for logs and decode output; never change an existing value.
    pub fn code(self) -> &'static str {
        match self {
            Dropped::BadCrc => "bad_crc",
            Dropped::TooLong => "frame_too_long",
            Dropped::BadEscape => "bad_escape",
            Dropped::Garbage => "garbage",
        }
    }

    /// Whether the sender of these bytes waits for an answer: a complete but damaged frame gets a
    /// NAK so that it is repeated; noise gets nothing, since answering it could confirm a frame
    /// nobody sent.
    pub fn needs_nak(self) -> bool {
        matches!(self, Dropped::BadCrc | Dropped::TooLong)
    }
}

/// The link byte to send after decoding `unit`, if any.
pub fn link_reply(unit: &Unit) -> Option<u8> {
    match unit {
        Unit::Frame(_) => Some(ACK),
        Unit::Dropped(reason) if reason.needs_nak() => Some(NAK),
        Unit::Dropped(_) | Unit::Ack | Unit::Nak => None,
    }
}

/// Where the decoder is in `DLE STX … DLE ETX crc crc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames; `in_garbage` records that the current run of stray bytes was reported.
    Idle { in_garbage: bool },
    /// Between frames, after a DLE: an STX opens a frame.
    IdleDle { in_garbage: bool },
    /// Inside a frame, collecting APDU bytes.
    Data,
    /// Inside a frame, after a DLE: DLE is a data byte, ETX ends the APDU.
    DataDle,
    /// After `DLE ETX`, waiting for the CRC's low byte.
    CrcLow,
    /// Waiting for the CRC's high byte; the low one is kept.
    CrcHigh(u8),
}

/// A streaming decoder for the serial transport. It never panics, looks at each byte once and
/// holds at most [`MAX_APDU`] bytes, whatever arrives.
#[derive(Debug)]
pub struct FrameDecoder {
    state: State,
    apdu: Vec<u8>,
    overflowed: bool,
    out: VecDeque<Unit>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new()
    }
}

impl FrameDecoder {
    /// A decoder outside any frame.
    pub fn new() -> Self {
        FrameDecoder {
            state: State::Idle { in_garbage: false },
            apdu: Vec::new(),
            overflowed: false,
            out: VecDeque::new(),
        }
    }

    /// How many APDU bytes of an unfinished frame are held; at most [`MAX_APDU`].
    pub fn buffered_len(&self) -> usize {
        self.apdu.len()
    }

    /// The next decoded unit, oldest first.
    pub fn next_unit(&mut self) -> Option<Unit> {
        self.out.pop_front()
    }

    /// Decodes a chunk read from the port; collect the results with [`Self::next_unit`].
    pub fn push(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.state = self.step(byte);
        }
    }

    fn garbage(&mut self, in_garbage: bool) {
        if !in_garbage {
            self.out.push_back(Unit::Dropped(Dropped::Garbage));
        }
    }

    fn step(&mut self, byte: u8) -> State {
        match self.state {
            State::Idle { in_garbage } => match byte {
                DLE => State::IdleDle { in_garbage },
                ACK => {
                    self.out.push_back(Unit::Ack);
                    State::Idle { in_garbage: false }
                }
                NAK => {
                    self.out.push_back(Unit::Nak);
                    State::Idle { in_garbage: false }
                }
                _ => {
                    self.garbage(in_garbage);
                    State::Idle { in_garbage: true }
                }
            },
            State::IdleDle { in_garbage } => match byte {
                STX => {
                    self.apdu.clear();
                    self.overflowed = false;
                    State::Data
                }
                DLE => State::IdleDle { in_garbage },
                _ => {
                    self.garbage(in_garbage);
                    State::Idle { in_garbage: true }
                }
            },
            State::Data => match byte {
                DLE => State::DataDle,
                _ => {
                    self.keep(byte);
                    State::Data
                }
            },
            State::DataDle => match byte {
                DLE => {
                    self.keep(DLE);
                    State::Data
                }
                ETX => State::CrcLow,
                // A new frame start means the sender gave up on this one and began again.
                STX => {
                    self.out.push_back(Unit::Dropped(Dropped::BadEscape));
                    self.apdu.clear();
                    self.overflowed = false;
                    State::Data
                }
                _ => {
                    self.out.push_back(Unit::Dropped(Dropped::BadEscape));
                    self.apdu.clear();
                    State::Idle { in_garbage: true }
                }
            },
            State::CrcLow => State::CrcHigh(byte),
            State::CrcHigh(low) => {
                let unit = if self.overflowed {
                    Unit::Dropped(Dropped::TooLong)
                } else if crc(&self.apdu) == u16::from_le_bytes([low, byte]) {
                    Unit::Frame(std::mem::take(&mut self.apdu))
                } else {
                    Unit::Dropped(Dropped::BadCrc)
                };
                self.out.push_back(unit);
                self.apdu.clear();
                self.overflowed = false;
                State::Idle { in_garbage: false }
            }
        }
    }

    fn keep(&mut self, byte: u8) {
        if self.overflowed {
            return;
        }
        if self.apdu.len() >= MAX_APDU {
            self.overflowed = true;
            self.apdu = Vec::new();
        } else {
            self.apdu.push(byte);
        }
    }
}

/// The sender's side of one frame: repeat it on NAK or silence, give up after
/// [`MAX_TRANSMISSIONS`]. Pure bookkeeping; the caller owns the timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retransmit {
    frame: Vec<u8>,
    sent: u8,
}

/// What to do after the peer's link answer (or its absence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkStep {
    /// The frame arrived; nothing more to send.
    Delivered,
    /// Send these bytes again and wait once more.
    Resend(Vec<u8>),
    /// Sent [`MAX_TRANSMISSIONS`] times without an ACK: the link is broken.
    GiveUp,
}

impl Retransmit {
    /// Starts tracking `apdu`; returns the tracker and the bytes to send first.
    pub fn start(apdu: &[u8]) -> (Retransmit, Vec<u8>) {
        let frame = encode_frame(apdu);
        (Retransmit { frame: frame.clone(), sent: 1 }, frame)
    }

    /// How many times the frame went out so far.
    pub fn transmissions(&self) -> u8 {
        self.sent
    }

    /// The peer answered ACK.
    pub fn on_ack(&mut self) -> LinkStep {
        LinkStep::Delivered
    }

    /// The peer answered NAK, or nothing within the acknowledgement timeout: both mean the frame
    /// did not arrive intact, so it goes out again while transmissions are left.
    pub fn on_nak_or_timeout(&mut self) -> LinkStep {
        if self.sent >= MAX_TRANSMISSIONS {
            return LinkStep::GiveUp;
        }
        self.sent += 1;
        LinkStep::Resend(self.frame.clone())
    }
}
