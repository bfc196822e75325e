//! `stx-etx` framing: `STX payload ETX LRC`, where LRC is the XOR of every payload byte and ETX.
//!
//! The payload may not contain STX or ETX, but the LRC byte may take any value, including 0x02 or
//! 0x03, so it is always taken as the single byte after ETX without interpreting it. A new STX
//! inside a frame means the terminal gave up on that frame and started again, so the decoder
//! follows it rather than waiting for an ETX that will never belong to the abandoned frame.

use std::collections::VecDeque;

use super::{DropReason, FrameBuf, Item, MAX_FRAME};

/// Start of text: opens a frame.
pub const STX: u8 = 0x02;

/// End of text: closes a frame's payload; the LRC byte follows.
pub const ETX: u8 = 0x03;

/// Computes the longitudinal redundancy check of a frame: XOR of the payload bytes and ETX.
pub fn lrc(payload: &[u8]) -> u8 {
    payload.iter().fold(ETX, |acc, &b| acc ^ b)
}

/// Where the decoder is in the `STX payload ETX LRC` sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames; `in_garbage` records that the current run of stray bytes was already
    /// reported, so noise yields one report per run rather than one per byte.
    Idle { in_garbage: bool },
    /// After STX, collecting payload bytes until ETX.
    Payload,
    /// After ETX, waiting for the checksum byte.
    Lrc,
}

#[derive(Debug)]
pub(super) struct StxEtxDecoder {
    state: State,
    frame: FrameBuf,
    /// Running XOR of the payload, kept even in discard mode because it costs nothing.
    lrc: u8,
}

impl StxEtxDecoder {
    pub(super) fn new() -> Self {
        StxEtxDecoder { state: State::Idle { in_garbage: false }, frame: FrameBuf::new(MAX_FRAME), lrc: 0 }
    }

    pub(super) fn buffered_len(&self) -> usize {
        self.frame.len()
    }

    /// Runs the state machine over `bytes`. Runs of payload or garbage are handled a slice at a
    /// time, so each byte is looked at once and nothing is rescanned on the next push.
    pub(super) fn push(&mut self, mut bytes: &[u8], out: &mut VecDeque<Item>) {
        while let Some((&first, after_first)) = bytes.split_first() {
            match self.state {
                State::Idle { in_garbage } => {
                    let stx = bytes.iter().position(|&b| b == STX);
                    if stx != Some(0) && !in_garbage {
                        out.push_back(Item::Dropped(DropReason::Garbage));
                    }
                    match stx {
                        Some(at) => {
                            self.start_frame();
                            bytes = &bytes[at + 1..];
                        }
                        None => {
                            self.state = State::Idle { in_garbage: true };
                            bytes = &[];
                        }
                    }
                }
                State::Payload => {
                    let end = bytes.iter().position(|&b| b == STX || b == ETX).unwrap_or(bytes.len());
                    let (run, rest) = bytes.split_at(end);
                    self.lrc = run.iter().fold(self.lrc, |acc, &b| acc ^ b);
                    self.frame.extend(run);
                    match rest.split_first() {
                        None => bytes = rest,
                        Some((&STX, after)) => {
                            let reason = if self.frame.overflowed() {
                                DropReason::FrameTooLong
                            } else {
                                DropReason::Interrupted
                            };
                            out.push_back(Item::Dropped(reason));
                            self.start_frame();
                            bytes = after;
                        }
                        Some((_, after)) => {
                            self.lrc ^= ETX;
                            self.state = State::Lrc;
                            bytes = after;
                        }
                    }
                }
                State::Lrc => {
                    out.push_back(self.finish_frame(first));
                    bytes = after_first;
                }
            }
        }
    }

    fn start_frame(&mut self) {
        self.frame.clear();
        self.lrc = 0;
        self.state = State::Payload;
    }

    /// Checks a complete frame against the received checksum and returns to idle.
    fn finish_frame(&mut self, received: u8) -> Item {
        // An oversized frame is reported as such even if its LRC is wrong: the content was
        // discarded, and "too long" is what tells the operator to fix the terminal config.
        let item = if self.frame.overflowed() {
            Item::Dropped(DropReason::FrameTooLong)
        } else if received != self.lrc {
            Item::Dropped(DropReason::BadLrc)
        } else if self.frame.bytes().is_empty() {
            Item::Dropped(DropReason::Empty)
        } else {
            match std::str::from_utf8(self.frame.bytes()) {
                Ok(text) => Item::Frame(text.to_owned()),
                Err(_) => Item::Dropped(DropReason::InvalidUtf8),
            }
        };
        self.frame.clear();
        self.state = State::Idle { in_garbage: false };
        item
    }
}

/// Frames one reply; STX/ETX bytes (impossible in valid JSON) become spaces so they cannot
/// terminate the frame early.
pub(super) fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 3);
    out.push(STX);
    out.extend(payload.iter().map(|&b| if b == STX || b == ETX { b' ' } else { b }));
    let checksum = lrc(&out[1..]);
    out.push(ETX);
    out.push(checksum);
    out
}

#[cfg(test)]
mod tests {
    use super::super::{decode_chunked, encode_reply, link_reply, Framing, NAK};
    use super::*;
    use proptest::prelude::*;

    fn decode(bytes: &[u8]) -> Vec<Item> {
        decode_chunked(Framing::StxEtx, bytes, &[])
    }

    fn framed(payload: &str) -> Vec<u8> {
        encode_reply(Framing::StxEtx, payload)
    }

    fn frame(text: &str) -> Item {
        Item::Frame(text.to_owned())
    }

    const CANCEL: &str = "{\"type\":\"cancel\"}";

    #[test]
    fn single_frame() {
        assert_eq!(decode(&framed(CANCEL)), [frame(CANCEL)]);
    }

    #[test]
    fn frame_split_byte_by_byte_and_several_in_one_push() {
        let mut bytes = framed(CANCEL);
        bytes.extend(framed("{\"a\":1}"));
        bytes.extend(framed("{\"b\":2}"));
        let expected = [frame(CANCEL), frame("{\"a\":1}"), frame("{\"b\":2}")];
        assert_eq!(decode_chunked(Framing::StxEtx, &bytes, &[1]), expected);
        assert_eq!(decode(&bytes), expected);
    }

    #[test]
    fn bad_lrc_is_dropped_and_naked() {
        let mut bytes = framed(CANCEL);
        if let Some(last) = bytes.last_mut() {
            *last ^= 0x55;
        }
        bytes.extend(framed("{\"a\":1}"));
        let items = decode(&bytes);
        assert_eq!(items, [Item::Dropped(DropReason::BadLrc), frame("{\"a\":1}")]);
        assert_eq!(link_reply(Framing::StxEtx, &items[0]), Some(NAK));
    }

    #[test]
    fn lrc_byte_may_be_stx_or_etx() {
        // "A" ^ ETX = 0x42; the payload bytes below are chosen so the checksum lands on STX/ETX.
        for wanted in [STX, ETX] {
            let payload = [b'A', b'A' ^ ETX ^ wanted];
            let text = std::str::from_utf8(&payload).expect("ASCII payload");
            let bytes = framed(text);
            assert_eq!(bytes.last(), Some(&wanted));
            let mut stream = bytes.clone();
            stream.extend(framed(CANCEL));
            for sizes in [&[][..], &[1], &[bytes.len() - 1]] {
                let items = decode_chunked(Framing::StxEtx, &stream, sizes);
                assert_eq!(items, [frame(text), frame(CANCEL)]);
            }
        }
    }

    #[test]
    fn garbage_runs_reported_once_each() {
        let mut bytes = b"noise\r\n\x03\x06".to_vec();
        bytes.extend(framed(CANCEL));
        bytes.extend_from_slice(b"\r\n");
        bytes.extend(framed("{\"a\":1}"));
        bytes.extend_from_slice(b"trailing");
        let garbage = Item::Dropped(DropReason::Garbage);
        let expected = [garbage.clone(), frame(CANCEL), garbage.clone(), frame("{\"a\":1}"), garbage];
        assert_eq!(decode_chunked(Framing::StxEtx, &bytes, &[1]), expected);
        assert_eq!(decode(&bytes), expected);
    }

    #[test]
    fn new_stx_restarts_frame() {
        let mut bytes = vec![STX];
        bytes.extend_from_slice(b"{\"half\":");
        bytes.extend(framed(CANCEL));
        let items = decode(&bytes);
        assert_eq!(items, [Item::Dropped(DropReason::Interrupted), frame(CANCEL)]);
    }

    #[test]
    fn empty_and_invalid_utf8_frames() {
        let mut bytes = vec![STX, ETX, ETX];
        let invalid = [0xff, 0xfe];
        bytes.push(STX);
        bytes.extend_from_slice(&invalid);
        bytes.push(ETX);
        bytes.push(lrc(&invalid));
        bytes.extend(framed(CANCEL));
        let items = decode(&bytes);
        assert_eq!(
            items,
            [Item::Dropped(DropReason::Empty), Item::Dropped(DropReason::InvalidUtf8), frame(CANCEL)]
        );
    }

    #[test]
    fn oversize_frame_dropped_then_next_decoded() {
        let big = "z".repeat(MAX_FRAME + 1);
        let mut bytes = framed(&big);
        // An oversized frame cut short by a new STX is also reported as too long.
        bytes.push(STX);
        bytes.extend(big.as_bytes());
        bytes.extend(framed(CANCEL));
        let exact = "e".repeat(MAX_FRAME);
        bytes.extend(framed(&exact));
        for sizes in [&[][..], &[999], &[1, MAX_FRAME]] {
            let items = decode_chunked(Framing::StxEtx, &bytes, sizes);
            let too_long = Item::Dropped(DropReason::FrameTooLong);
            assert_eq!(items, [too_long.clone(), too_long, frame(CANCEL), frame(&exact)]);
        }
    }

    fn payload() -> impl Strategy<Value = String> {
        "[^\\x02\\x03]{1,64}"
    }

    proptest! {
        #[test]
        fn round_trip(
            payloads in prop::collection::vec(payload(), 0..16),
            sizes in prop::collection::vec(1usize..48, 0..16),
        ) {
            let bytes: Vec<u8> = payloads.iter().flat_map(|p| framed(p)).collect();
            let expected: Vec<Item> = payloads.iter().map(|p| frame(p)).collect();
            prop_assert_eq!(decode_chunked(Framing::StxEtx, &bytes, &sizes), expected);
        }

        #[test]
        fn random_bytes_bounded(
            bytes in prop::collection::vec(any::<u8>(), 0..(3 * MAX_FRAME)),
            sizes in prop::collection::vec(1usize..4096, 0..8),
        ) {
            let items = decode_chunked(Framing::StxEtx, &bytes, &sizes);
            prop_assert!(items.len() <= bytes.len());
            for item in &items {
                if let Item::Frame(text) = item {
                    prop_assert!(text.len() <= MAX_FRAME);
                }
            }
        }

        #[test]
        fn frame_after_garbage_without_stx(
            garbage in prop::collection::vec(any::<u8>().prop_filter("no STX", |b| *b != STX), 0..2048),
            sizes in prop::collection::vec(1usize..512, 0..8),
        ) {
            let mut bytes = garbage.clone();
            bytes.extend(framed(CANCEL));
            let items = decode_chunked(Framing::StxEtx, &bytes, &sizes);
            let mut expected = Vec::new();
            if !garbage.is_empty() {
                expected.push(Item::Dropped(DropReason::Garbage));
            }
            expected.push(frame(CANCEL));
            prop_assert_eq!(items, expected);
        }
    }
}
