//! `lines` framing: a barcode scanner in keyboard-wedge style, one receipt id per line.
//!
//! Scanners disagree on the terminator (CR, LF or CRLF are all common factory defaults), so each
//! of CR and LF ends a line on its own. A CRLF therefore ends a line and then an empty one, and
//! since blank lines are skipped the LF never yields an extra item. Surrounding whitespace is
//! trimmed because some scanners pad codes or prefix them with a space.

use std::collections::VecDeque;

use super::{DropReason, FrameBuf, Item, MAX_FRAME};

/// Line-splitting state: the bytes of the current, unterminated line.
#[derive(Debug)]
pub(super) struct LinesDecoder {
    line: FrameBuf,
}

impl LinesDecoder {
    pub(super) fn new() -> Self {
        LinesDecoder { line: FrameBuf::new(MAX_FRAME) }
    }

    pub(super) fn buffered_len(&self) -> usize {
        self.line.len()
    }

    /// Splits `bytes` at CR or LF; each byte is scanned once, whatever the chunking.
    pub(super) fn push(&mut self, mut bytes: &[u8], out: &mut VecDeque<Item>) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\r' || b == b'\n') {
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
            match std::str::from_utf8(self.line.bytes()) {
                Err(_) => Some(Item::Dropped(DropReason::InvalidUtf8)),
                Ok(text) => {
                    let text = text.trim();
                    (!text.is_empty()).then(|| Item::Frame(text.to_owned()))
                }
            }
        };
        self.line.clear();
        item
    }
}

#[cfg(test)]
mod tests {
    use super::super::{decode_chunked, encode_reply, link_reply, Framing};
    use super::*;
    use proptest::prelude::*;

    fn decode(bytes: &[u8]) -> Vec<Item> {
        decode_chunked(Framing::Lines, bytes, &[])
    }

    fn frame(text: &str) -> Item {
        Item::Frame(text.to_owned())
    }

    #[test]
    fn single_line() {
        assert_eq!(decode(b"RCP-2025-001\n"), [frame("RCP-2025-001")]);
    }

    #[test]
    fn every_terminator_and_no_extra_line_for_crlf() {
        let bytes = b"A1\rB2\nC3\r\nD4\r\n\r\n  E5  \n\n";
        let expected = ["A1", "B2", "C3", "D4", "E5"].map(frame);
        assert_eq!(decode(bytes), expected);
        assert_eq!(decode_chunked(Framing::Lines, bytes, &[1]), expected);
        // A CRLF split across two reads must not produce an empty scan either.
        assert_eq!(decode_chunked(Framing::Lines, b"A1\r\nB2\r\n", &[3, 1]), ["A1", "B2"].map(frame));
    }

    #[test]
    fn oversize_line_dropped_then_next_decoded() {
        let mut bytes = vec![b'9'; MAX_FRAME + 1];
        bytes.extend_from_slice(b"\r\nRCP-1\r\n");
        for sizes in [&[][..], &[1], &[MAX_FRAME]] {
            let items = decode_chunked(Framing::Lines, &bytes, sizes);
            assert_eq!(items, [Item::Dropped(DropReason::FrameTooLong), frame("RCP-1")]);
        }
    }

    #[test]
    fn invalid_utf8_dropped_then_next_decoded() {
        let items = decode(b"RCP\xc3(\nRCP-2\n");
        assert_eq!(items, [Item::Dropped(DropReason::InvalidUtf8), frame("RCP-2")]);
    }

    #[test]
    fn scanner_gets_no_replies() {
        assert!(encode_reply(Framing::Lines, "{}").is_empty());
        assert_eq!(link_reply(Framing::Lines, &frame("RCP-1")), None);
    }

    fn payload() -> impl Strategy<Value = String> {
        "\\PC{1,64}".prop_filter_map("blank lines are skipped", |s| {
            let trimmed = s.trim();
            (!trimmed.is_empty()).then(|| trimmed.to_owned())
        })
    }

    proptest! {
        #[test]
        fn round_trip(
            lines in prop::collection::vec((payload(), 0usize..3), 0..16),
            sizes in prop::collection::vec(1usize..48, 0..16),
        ) {
            let terminators: [&[u8]; 3] = [b"\r", b"\n", b"\r\n"];
            let mut bytes = Vec::new();
            for (line, terminator) in &lines {
                bytes.extend_from_slice(line.as_bytes());
                bytes.extend_from_slice(terminators[*terminator]);
            }
            let expected: Vec<Item> = lines.iter().map(|(line, _)| frame(line)).collect();
            prop_assert_eq!(decode_chunked(Framing::Lines, &bytes, &sizes), expected);
        }

        #[test]
        fn random_bytes_bounded(
            bytes in prop::collection::vec(any::<u8>(), 0..(3 * MAX_FRAME)),
            sizes in prop::collection::vec(1usize..4096, 0..8),
        ) {
            let items = decode_chunked(Framing::Lines, &bytes, &sizes);
            prop_assert!(items.len() <= bytes.len());
            for item in &items {
                if let Item::Frame(text) = item {
                    prop_assert!(!text.is_empty() && text.len() <= MAX_FRAME);
                }
            }
        }

        #[test]
        fn frame_after_garbage(
            garbage in prop::collection::vec(any::<u8>(), 0..(2 * MAX_FRAME)),
            sizes in prop::collection::vec(1usize..4096, 0..8),
        ) {
            let mut bytes = garbage;
            bytes.extend_from_slice(b"\rRCP-2025-001\r\n");
            let items = decode_chunked(Framing::Lines, &bytes, &sizes);
            prop_assert_eq!(items.last(), Some(&frame("RCP-2025-001")));
        }
    }
}
