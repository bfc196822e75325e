//! `ndjson` framing: one UTF-8 JSON object per line, terminated by `\n` or `\r\n`.
//!
//! The codec does not look inside the JSON (that is the event layer's job); it only cuts lines.
//! Blank lines are skipped without a report because terminals commonly send them as keep-alives.

use std::collections::VecDeque;

use super::{DropReason, FrameBuf, Item, MAX_FRAME};

/// Line-splitting state: the bytes of the current, unterminated line.
#[derive(Debug)]
pub(super) struct NdjsonDecoder {
    line: FrameBuf,
}

impl NdjsonDecoder {
    pub(super) fn new() -> Self {
        // One extra byte leaves room for the `\r` of a CRLF terminator, which is only recognised
        // once the `\n` arrives, so that a payload of exactly MAX_FRAME bytes is still accepted.
        NdjsonDecoder { line: FrameBuf::new(MAX_FRAME + 1) }
    }

    pub(super) fn buffered_len(&self) -> usize {
        self.line.len()
    }

    /// Splits `bytes` at newlines; each byte is scanned once, whatever the chunking.
    pub(super) fn push(&mut self, mut bytes: &[u8], out: &mut VecDeque<Item>) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.line.extend(&bytes[..end]);
            if let Some(item) = self.finish_line() {
                out.push_back(item);
            }
            bytes = &bytes[end + 1..];
        }
        self.line.extend(bytes);
    }

    /// Turns the buffered line into an item (`None` for a blank line) and starts the next one.
    fn finish_line(&mut self) -> Option<Item> {
        let item = if self.line.overflowed() {
            Some(Item::Dropped(DropReason::FrameTooLong))
        } else {
            let raw = self.line.bytes();
            let payload = raw.strip_suffix(b"\r").unwrap_or(raw);
            if payload.len() > MAX_FRAME {
                Some(Item::Dropped(DropReason::FrameTooLong))
            } else {
                match std::str::from_utf8(payload) {
                    Err(_) => Some(Item::Dropped(DropReason::InvalidUtf8)),
                    Ok(text) if text.trim().is_empty() => None,
                    Ok(text) => Some(Item::Frame(text.to_owned())),
                }
            }
        };
        self.line.clear();
        item
    }
}

/// Frames one reply line; raw CR/LF (never present in serde_json output) become spaces.
pub(super) fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = payload.iter().map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }).collect();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::super::{decode_chunked, encode_reply, Framing};
    use super::*;
    use proptest::prelude::*;

    fn decode(bytes: &[u8]) -> Vec<Item> {
        decode_chunked(Framing::Ndjson, bytes, &[])
    }

    fn frame(text: &str) -> Item {
        Item::Frame(text.to_owned())
    }

    #[test]
    fn single_frame() {
        assert_eq!(decode(b"{\"type\":\"cancel\"}\n"), [frame("{\"type\":\"cancel\"}")]);
    }

    #[test]
    fn frame_split_byte_by_byte() {
        let items = decode_chunked(Framing::Ndjson, b"{\"a\":1}\r\n{\"b\":2}\n", &[1]);
        assert_eq!(items, [frame("{\"a\":1}"), frame("{\"b\":2}")]);
    }

    #[test]
    fn several_frames_in_one_push_with_crlf_and_blank_lines() {
        let items = decode(b"{\"a\":1}\r\n\r\n  \n{\"b\":2}\n\n{\"c\":3}\r\n");
        assert_eq!(items, [frame("{\"a\":1}"), frame("{\"b\":2}"), frame("{\"c\":3}")]);
    }

    #[test]
    fn unterminated_line_waits() {
        let mut decoder = super::super::Decoder::new(Framing::Ndjson);
        decoder.push(b"{\"a\":1}");
        assert_eq!(decoder.next_item(), None);
        decoder.push(b"\n");
        assert_eq!(decoder.next_item(), Some(frame("{\"a\":1}")));
    }

    #[test]
    fn oversize_frame_dropped_then_next_decoded() {
        let mut input = vec![b'x'; MAX_FRAME * 3];
        input.extend_from_slice(b"\n{\"ok\":true}\n");
        for sizes in [&[][..], &[1000], &[MAX_FRAME + 1], &[7, 4093]] {
            let items = decode_chunked(Framing::Ndjson, &input, sizes);
            assert_eq!(items, [Item::Dropped(DropReason::FrameTooLong), frame("{\"ok\":true}")]);
        }
    }

    #[test]
    fn exactly_max_frame_is_accepted_with_crlf() {
        let payload = "y".repeat(MAX_FRAME);
        let items = decode(format!("{payload}\r\n").as_bytes());
        assert_eq!(items, [frame(&payload)]);
        let too_long = "y".repeat(MAX_FRAME + 1);
        let items = decode(format!("{too_long}\r\n{too_long}\n").as_bytes());
        assert_eq!(items, vec![Item::Dropped(DropReason::FrameTooLong); 2]);
    }

    #[test]
    fn invalid_utf8_dropped_then_next_decoded() {
        let items = decode(b"{\"a\":\"\xff\xfe\"}\n{\"b\":2}\n");
        assert_eq!(items, [Item::Dropped(DropReason::InvalidUtf8), frame("{\"b\":2}")]);
    }

    #[test]
    fn garbage_line_between_frames_is_passed_on() {
        // The codec only frames; deciding that a line is not JSON belongs to the event layer.
        let items = decode(b"{\"a\":1}\n\x00\x07junk\n{\"b\":2}\n");
        assert_eq!(items, [frame("{\"a\":1}"), frame("\x00\x07junk"), frame("{\"b\":2}")]);
    }

    #[test]
    fn encode_replaces_embedded_newlines() {
        assert_eq!(encode_reply(Framing::Ndjson, "{\n}\r"), b"{ } \n");
    }

    fn payload() -> impl Strategy<Value = String> {
        "\\PC{1,64}".prop_filter("blank lines are skipped", |s| !s.trim().is_empty())
    }

    proptest! {
        #[test]
        fn round_trip(
            payloads in prop::collection::vec(payload(), 0..16),
            sizes in prop::collection::vec(1usize..48, 0..16),
        ) {
            let bytes: Vec<u8> = payloads
                .iter()
                .flat_map(|p| encode_reply(Framing::Ndjson, p))
                .collect();
            let expected: Vec<Item> = payloads.iter().map(|p| frame(p)).collect();
            prop_assert_eq!(decode_chunked(Framing::Ndjson, &bytes, &sizes), expected);
        }

        #[test]
        fn random_bytes_bounded(
            bytes in prop::collection::vec(any::<u8>(), 0..(3 * MAX_FRAME)),
            sizes in prop::collection::vec(1usize..4096, 0..8),
        ) {
            let items = decode_chunked(Framing::Ndjson, &bytes, &sizes);
            prop_assert!(items.len() <= bytes.len());
            for item in &items {
                if let Item::Frame(text) = item {
                    prop_assert!(text.len() <= MAX_FRAME);
                }
            }
        }

        #[test]
        fn frame_after_garbage(
            garbage in prop::collection::vec(any::<u8>(), 0..(2 * MAX_FRAME)),
            sizes in prop::collection::vec(1usize..4096, 0..8),
        ) {
            let mut bytes = garbage;
            bytes.extend_from_slice(b"\n{\"type\":\"cancel\"}\n");
            let items = decode_chunked(Framing::Ndjson, &bytes, &sizes);
            prop_assert_eq!(items.last(), Some(&frame("{\"type\":\"cancel\"}")));
        }
    }
}
