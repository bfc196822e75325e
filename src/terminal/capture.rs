//! Captured terminal traffic read back for technicians: `refund-agent terminal decode`.
//!
//! A capture is the raw byte stream of one direction (or both, interleaved) of a serial line or a
//! ZVT TCP connection. [`decode`] runs it through the same decoders the agent uses and returns one
//! JSON object per frame, APDU, link byte or dropped run, in stream order. Card data is reduced
//! or masked exactly as it is for the agent itself (ZVT fields by [`zvt::card`], JSON by
//! [`pci::sanitize`]), so the output can be pasted into a ticket.

use std::fmt;
use std::str::FromStr;

use serde_json::{json, Value};

use super::codec::zvt::{self, transport, Apdu, ApduDecoder, FrameDecoder, Unit};
use super::codec::{Decoder, Framing, Item};
use super::pci;

/// What a capture holds: one of the three JSON-era framings, or ZVT over RS-232 or TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureFraming {
    /// ZVT serial frames (`DLE STX … DLE ETX CRC`) and link bytes.
    Zvt,
    /// ZVT APDUs back to back, as over TCP.
    ZvtApdu,
    /// One of the agent's own framings.
    Plain(Framing),
}

impl CaptureFraming {
    /// Every name `--framing` accepts.
    pub const NAMES: [&'static str; 5] = ["zvt", "zvt-apdu", "ndjson", "stx-etx", "lines"];
}

impl fmt::Display for CaptureFraming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaptureFraming::Zvt => f.write_str("zvt"),
            CaptureFraming::ZvtApdu => f.write_str("zvt-apdu"),
            CaptureFraming::Plain(framing) => framing.fmt(f),
        }
    }
}

/// A `--framing` value that names no capture format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown framing {0:?}: expected one of zvt, zvt-apdu, ndjson, stx-etx, lines")]
pub struct UnknownCaptureFraming(pub String);

impl FromStr for CaptureFraming {
    type Err = UnknownCaptureFraming;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "zvt" => Ok(CaptureFraming::Zvt),
            "zvt-apdu" => Ok(CaptureFraming::ZvtApdu),
            other => {
                other.parse().map(CaptureFraming::Plain).map_err(|_| UnknownCaptureFraming(s.to_owned()))
            }
        }
    }
}

/// Decodes a whole capture into one JSON object per unit, in stream order.
pub fn decode(framing: CaptureFraming, bytes: &[u8]) -> Vec<Value> {
    match framing {
        CaptureFraming::Zvt => decode_zvt(bytes),
        CaptureFraming::ZvtApdu => decode_zvt_apdu(bytes),
        CaptureFraming::Plain(framing) => decode_plain(framing, bytes),
    }
}

fn apdu_json(apdu: &Apdu) -> Value {
    zvt::decode(apdu).to_json()
}

fn decode_zvt(bytes: &[u8]) -> Vec<Value> {
    let mut decoder = FrameDecoder::new();
    decoder.push(bytes);
    let mut out: Vec<Value> = std::iter::from_fn(|| decoder.next_unit())
        .map(|unit| match unit {
            Unit::Frame(apdu) => match Apdu::parse(&apdu) {
                Ok(apdu) => apdu_json(&apdu),
                Err(e) => json!({"link": "frame", "error": e.to_string()}),
            },
            Unit::Ack => json!({"link": "ack"}),
            Unit::Nak => json!({"link": "nak"}),
            Unit::Dropped(reason) => json!({"dropped": reason.code()}),
        })
        .collect();
    if decoder.buffered_len() > 0 {
        out.push(json!({"incomplete_bytes": decoder.buffered_len()}));
    }
    out
}

fn decode_zvt_apdu(bytes: &[u8]) -> Vec<Value> {
    let mut decoder = ApduDecoder::new();
    decoder.push(bytes);
    let mut out: Vec<Value> = std::iter::from_fn(|| decoder.next_apdu())
        .map(|apdu| match apdu {
            Ok(apdu) => apdu_json(&apdu),
            Err(announced) => json!({"dropped": "apdu_too_long", "announced_bytes": announced, "limit": transport::MAX_APDU}),
        })
        .collect();
    if decoder.buffered_len() > 0 {
        out.push(json!({"incomplete_bytes": decoder.buffered_len()}));
    }
    out
}

fn decode_plain(framing: Framing, bytes: &[u8]) -> Vec<Value> {
    let mut decoder = Decoder::new(framing);
    decoder.push(bytes);
    let mut out: Vec<Value> = std::iter::from_fn(|| decoder.next_item())
        .map(|item| match item {
            Item::Dropped(reason) => json!({"dropped": reason.code()}),
            Item::Frame(text) if framing == Framing::Lines => {
                if crate::pan::looks_like_track_data(&text) {
                    json!({"scan": "removed", "removed": ["track_data_value"]})
                } else {
                    json!({"scan": pci::mask_text(&text)})
                }
            }
            Item::Frame(text) => match serde_json::from_str::<Value>(&text) {
                Ok(mut value) => {
                    let removed = pci::sanitize(&mut value);
                    json!({"frame": value, "removed": removed})
                }
                // The text is not shown: it may be a card number the sanitizer cannot find in it.
                Err(_) => json!({"dropped": "invalid_json", "bytes": text.len()}),
            },
        })
        .collect();
    if decoder.buffered_len() > 0 {
        out.push(json!({"incomplete_bytes": decoder.buffered_len()}));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        for name in CaptureFraming::NAMES {
            let framing: CaptureFraming = name.parse().expect("known name");
            assert_eq!(framing.to_string(), name);
        }
        assert!("zvt_apdu".parse::<CaptureFraming>().is_err());
    }

    #[test]
    fn zvt_capture_with_link_bytes_and_a_cut_frame() {
        let mut capture = zvt::encode_frame(&[0x06, 0x1E, 0x01, 0x64]);
        capture.push(transport::ACK);
        capture.extend_from_slice(&[0x10, 0x02, 0x06]);
        let out = decode(CaptureFraming::Zvt, &capture);
        assert_eq!(out[0]["command"], "abort");
        assert_eq!(out[0]["result_code"], json!({"hex": "64"}));
        assert_eq!(out[1], json!({"link": "ack"}));
        assert_eq!(out[2], json!({"incomplete_bytes": 1}));
    }

    #[test]
    fn plain_captures_are_sanitized() {
        let capture =
            b"{\"type\":\"card\",\"pan\":\"4111111111111111\",\"cvv\":\"123\"}\nnot json 4111111111111111\n";
        let out = decode(CaptureFraming::Plain(Framing::Ndjson), capture);
        assert_eq!(out[0]["frame"]["masked_pan"], "411111******1111");
        assert!(out[0]["frame"].get("cvv").is_none());
        assert_eq!(out[1], json!({"dropped": "invalid_json", "bytes": 25}));
        let scans = decode(CaptureFraming::Plain(Framing::Lines), b"RCP-1\r\n;4111111111111111=2512?\r\n");
        assert_eq!(scans[0], json!({"scan": "RCP-1"}));
        assert_eq!(scans[1]["scan"], "removed");
    }

    #[test]
    fn apdu_capture_with_an_oversized_announcement() {
        let mut capture = vec![0x80, 0x00, 0x00, 0x06, 0xD3, 0xFF, 0xFF, 0xFF];
        capture.extend(vec![0x20; 0xFFFF]);
        capture.extend_from_slice(&[0x06, 0x0F, 0x00]);
        let out = decode(CaptureFraming::ZvtApdu, &capture);
        assert_eq!(out[0]["command"], "ack");
        assert_eq!(out[1]["dropped"], "apdu_too_long");
        assert_eq!(out[2]["command"], "completion");
    }
}
