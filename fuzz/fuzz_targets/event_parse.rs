//! Fuzzes the event layer: arbitrary bytes are framed as ndjson (in arbitrary read sizes) and every
//! frame goes through `parse_event` and `scan_event`; the whole input is also parsed directly.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use refund_agent::terminal::codec::{Framing, Item};
use refund_agent::terminal::event::{parse_event_detailed, scan_event, Reply};
use refund_agent::terminal::pci;

/// Parses one payload and checks that neither the event nor the reply to it leaks card data.
fn check_payload(payload: &str) {
    let outcome = parse_event_detailed(payload);
    match &outcome.result {
        Ok(event) => {
            let value = serde_json::to_value(event).expect("events always serialize");
            common::assert_no_card_data(&value);
        }
        Err(error) => {
            assert!(!pci::contains_pan(&error.to_string()), "PAN in an error message");
            let reply = Reply::from_error(outcome.seq, error).to_json();
            assert!(!pci::contains_pan(&reply), "PAN in a nak reply");
        }
    }
    if let Ok(inbound) = scan_event(payload) {
        let value = serde_json::to_value(&inbound.event).expect("events always serialize");
        common::assert_no_card_data(&value);
    }
}

fuzz_target!(|data: &[u8]| {
    let (sizes, stream) = common::split_input(data);
    for item in common::decode_chunked(Framing::Ndjson, stream, &sizes) {
        if let Item::Frame(payload) = item {
            check_payload(&payload);
        }
    }
    check_payload(&String::from_utf8_lossy(stream));
});
