//! Fuzzes the `ndjson` decoder with arbitrary bytes in arbitrary read sizes.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use refund_agent::terminal::codec::Framing;

fuzz_target!(|data: &[u8]| {
    common::check_codec(Framing::Ndjson, data);
});
