//! Helpers shared by the fuzz targets: turning fuzzer bytes into a chunked stream, and the
//! invariants every decoder and the event parser must keep on any input.

// Each target uses only some of these helpers.
#![allow(dead_code)]

use refund_agent::terminal::codec::{Decoder, Framing, Item, MAX_FRAME};
use refund_agent::terminal::pci;
use serde_json::Value;

/// Splits fuzzer input into chunk sizes and the byte stream: the first byte says how many of
/// the following bytes (at most 15) are chunk sizes, so the fuzzer explores read boundaries too.
pub fn split_input(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&count, rest)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let count = usize::from(count % 16).min(rest.len());
    let (sizes, stream) = rest.split_at(count);
    (sizes.iter().map(|&s| usize::from(s) + 1).collect(), stream)
}

/// Decodes `stream` pushed in chunks of `sizes` (cycled), checking the memory bound after each
/// push, and returns every item.
pub fn decode_chunked(framing: Framing, stream: &[u8], sizes: &[usize]) -> Vec<Item> {
    let mut decoder = Decoder::new(framing);
    let mut items = Vec::new();
    let mut rest = stream;
    let mut sizes = sizes.iter().copied().cycle();
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(size);
        decoder.push(chunk);
        assert!(decoder.buffered_len() <= MAX_FRAME + 1, "decoder buffered too much");
        items.extend(std::iter::from_fn(|| decoder.next_item()));
        rest = tail;
    }
    items
}

/// The codec invariants: bounded output, bounded frames, and results that do not depend on how
/// the stream was split into reads.
pub fn check_codec(framing: Framing, data: &[u8]) {
    let (sizes, stream) = split_input(data);
    let items = decode_chunked(framing, stream, &sizes);
    assert!(items.len() <= stream.len(), "more items than input bytes");
    for item in &items {
        if let Item::Frame(text) = item {
            assert!(!text.is_empty() && text.len() <= MAX_FRAME, "frame size out of bounds");
        }
    }
    assert_eq!(items, decode_chunked(framing, stream, &[]), "chunking changed the result");
}

/// Asserts that no string or number anywhere in `value` still holds card data.
pub fn assert_no_card_data(value: &Value) {
    match value {
        Value::String(text) => {
            assert!(!pci::contains_pan(text), "PAN survived sanitizing");
            assert!(!pci::looks_like_track_data(text), "track data survived sanitizing");
        }
        Value::Number(number) => assert!(!pci::contains_pan(&number.to_string())),
        Value::Array(items) => items.iter().for_each(assert_no_card_data),
        Value::Object(map) => map.values().for_each(assert_no_card_data),
        Value::Null | Value::Bool(_) => {}
    }
}
