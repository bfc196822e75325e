//! Fuzzes the ZVT codecs: the serial transport and the TCP APDU stream with arbitrary bytes in
//! arbitrary read sizes, and every decoded APDU through the message decoder, whose JSON must never
//! hold card data.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use refund_agent::terminal::codec::zvt::{self, transport, Apdu, ApduDecoder, FrameDecoder, Unit};

fn chunks<'a>(stream: &'a [u8], sizes: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = stream;
    let mut sizes = sizes.iter().copied().cycle();
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        Some(chunk)
    })
}

fn check_message(apdu: &Apdu) {
    common::assert_no_card_data(&zvt::decode(apdu).to_json());
}

fuzz_target!(|data: &[u8]| {
    let (sizes, stream) = common::split_input(data);

    let mut frames = FrameDecoder::new();
    let mut units = 0;
    for chunk in chunks(stream, &sizes) {
        frames.push(chunk);
        assert!(frames.buffered_len() <= transport::MAX_APDU, "transport buffered too much");
        while let Some(unit) = frames.next_unit() {
            units += 1;
            if let Unit::Frame(bytes) = unit {
                if let Ok(apdu) = Apdu::parse(&bytes) {
                    check_message(&apdu);
                }
            }
        }
    }
    assert!(units <= stream.len(), "more units than input bytes");

    let mut apdus = ApduDecoder::new();
    for chunk in chunks(stream, &sizes) {
        apdus.push(chunk);
        assert!(apdus.buffered_len() <= transport::MAX_APDU, "APDU decoder buffered too much");
        while let Some(apdu) = apdus.next_apdu() {
            if let Ok(apdu) = apdu {
                check_message(&apdu);
            }
        }
    }
});
