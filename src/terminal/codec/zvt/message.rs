//! One APDU read as a ZVT message: its name, the untagged values some commands start with, its
//! BMP fields and whatever could not be read. Card data is reduced already (see [`super::card`]).

use serde_json::{json, Map, Value as Json};

use super::apdu::Apdu;
use super::bmp::{self, bcd_digits, latin1, Field, Value};
use super::card::{safe_hex, safe_text, SafeTlv, SafeTlvValue};
use crate::sale::CardRef;

/// A decoded APDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub class: u8,
    pub instr: u8,
    /// The command's name in the specification, in snake case (`status_information`).
    pub name: &'static str,
    /// Values without a BMP tag at the start of the data (password, config byte, status byte).
    pub prefix: Vec<(&'static str, Value)>,
    pub fields: Vec<Field>,
    /// Where and why reading stopped before the end, with the rest (reduced like any value).
    pub unread: Option<(String, usize, Value)>,
}

/// The name of a control field.
pub fn command_name(class: u8, instr: u8) -> &'static str {
    match (class, instr) {
        (0x06, 0x00) => "registration",
        (0x06, 0x01) => "authorization",
        (0x06, 0x02) => "log_off",
        (0x06, 0x0F) => "completion",
        (0x06, 0x1E) => "abort",
        (0x06, 0x20) => "repeat_receipt",
        (0x06, 0x30) => "reversal",
        (0x06, 0x31) => "refund",
        (0x06, 0x50) => "end_of_day",
        (0x06, 0xB0) => "abort_command",
        (0x06, 0xC0) => "read_card",
        (0x06, 0xD1) => "print_line",
        (0x06, 0xD3) => "print_text_block",
        (0x04, 0x0F) => "status_information",
        (0x04, 0xFF) => "intermediate_status",
        (0x05, 0x01) => "status_enquiry",
        (0x80, 0x00) => "ack",
        (0x84, _) => "nak",
        _ => "unknown",
    }
}

/// Reads an APDU's data according to its command.
pub fn decode(apdu: &Apdu) -> Message {
    let data = apdu.data.as_slice();
    let mut prefix: Vec<(&'static str, Value)> = Vec::new();
    let mut at = 0;
    let byte = |name: &'static str, at: &mut usize, prefix: &mut Vec<(&'static str, Value)>| {
        if let Some(b) = data.get(*at) {
            prefix.push((name, safe_hex(&[*b])));
            *at += 1;
        }
    };
    match (apdu.class, apdu.instr) {
        (0x06, 0x00) => {
            if data.len() >= 3 {
                // The password unlocks the terminal's functions; it is never shown.
                prefix.push(("password", Value::Removed));
                at = 3;
            }
            byte("config_byte", &mut at, &mut prefix);
            // The currency follows without a tag; a tag the table knows means it was left out.
            if data.len() >= at + 2 && !matches!(data[at], 0x03 | 0x06) {
                let cc = &data[at..at + 2];
                prefix.push(("currency_code", bcd_digits(cc).map_or_else(|| safe_hex(cc), Value::Digits)));
                at += 2;
            }
        }
        (0x06, 0x20 | 0x30 | 0x31 | 0x50) | (0x05, 0x01) if data.len() >= 3 => {
            prefix.push(("password", Value::Removed));
            at = 3;
        }
        (0x06, 0x1E) => byte("result_code", &mut at, &mut prefix),
        (0x06, 0xC0) => byte("timeout", &mut at, &mut prefix),
        (0x04, 0xFF) => {
            byte("status", &mut at, &mut prefix);
            if data.len() > at && data[at] != 0x06 {
                byte("timeout", &mut at, &mut prefix);
            }
        }
        (0x06, 0x0F) if data.first().is_some_and(|b| (0xF0..=0xF9).contains(b)) => {
            if let Some(len) = bmp::parse_var_len(data, 3).filter(|len| data.len() >= 3 + len) {
                prefix.push(("software_version", safe_text(&latin1(&data[3..3 + len]))));
                at = 3 + len;
                byte("terminal_status", &mut at, &mut prefix);
            }
        }
        (0x06, 0xD1) => {
            byte("attribute", &mut at, &mut prefix);
            prefix.push(("text", safe_text(&latin1(&data[at.min(data.len())..]))));
            at = data.len();
        }
        _ => {}
    }
    let rest = &data[at.min(data.len())..];
    let (fields, stop) = bmp::parse(rest);
    let unread = stop.map(|(error, offset)| (error.to_string(), at + offset, safe_hex(&rest[offset..])));
    Message {
        class: apdu.class,
        instr: apdu.instr,
        name: command_name(apdu.class, apdu.instr),
        prefix,
        fields,
        unread,
    }
}

impl Message {
    /// The first field with this tag.
    pub fn field(&self, tag: u8) -> Option<&Value> {
        self.fields.iter().find(|f| f.tag == tag).map(|f| &f.value)
    }

    /// A one-byte binary field (a result code, a status byte).
    pub fn byte(&self, tag: u8) -> Option<u8> {
        match self.field(tag)? {
            Value::Hex(text) if text.len() == 2 => u8::from_str_radix(text, 16).ok(),
            _ => None,
        }
    }

    /// A one-byte value at the start of the data (`06 1E`'s result code, `04 FF`'s status).
    pub fn prefix_byte(&self, name: &str) -> Option<u8> {
        match self.prefix.iter().find(|(n, _)| *n == name).map(|(_, v)| v)? {
            Value::Hex(text) if text.len() == 2 => u8::from_str_radix(text, 16).ok(),
            _ => None,
        }
    }

    /// A BCD field's digits.
    pub fn digits(&self, tag: u8) -> Option<&str> {
        match self.field(tag)? {
            Value::Digits(digits) => Some(digits),
            _ => None,
        }
    }

    /// BMP `04`, in minor units.
    pub fn amount(&self) -> Option<u64> {
        match self.field(0x04)? {
            Value::Amount(minor) => Some(*minor),
            _ => None,
        }
    }

    /// The card this message names, already reduced.
    pub fn card(&self) -> Option<&CardRef> {
        self.fields.iter().find_map(|f| match &f.value {
            Value::Card(card) => Some(card),
            _ => None,
        })
    }

    /// Every line of text the message carries for printing: `06 D1`'s line, `06 D3`'s TLV lines.
    pub fn print_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (name, value) in &self.prefix {
            if let (&"text", Value::Text(text)) = (name, value) {
                lines.push(text.clone());
            }
        }
        for field in &self.fields {
            if let Value::Tlv(items) = &field.value {
                collect_lines(items, &mut lines);
            }
        }
        lines
    }

    /// The message as one JSON object, for `terminal decode` and logs.
    pub fn to_json(&self) -> Json {
        let mut out = Map::new();
        out.insert("class".into(), json!(format!("{:02X}", self.class)));
        out.insert("instr".into(), json!(format!("{:02X}", self.instr)));
        out.insert("command".into(), json!(self.name));
        for (name, value) in &self.prefix {
            out.insert((*name).into(), value_json(value));
        }
        let fields: Vec<Json> = self
            .fields
            .iter()
            .map(|f| json!({"bmp": format!("{:02X}", f.tag), "name": f.name, "value": value_json(&f.value)}))
            .collect();
        out.insert("fields".into(), Json::Array(fields));
        if let Some((reason, offset, rest)) = &self.unread {
            out.insert(
                "unread".into(),
                json!({"reason": reason, "offset": offset, "bytes": value_json(rest)}),
            );
        }
        Json::Object(out)
    }
}

fn collect_lines(items: &[SafeTlv], lines: &mut Vec<String>) {
    for item in items {
        match &item.value {
            SafeTlvValue::Nested(inner) => collect_lines(inner, lines),
            SafeTlvValue::Value(Value::Text(text)) if item.tag == 0x07 => lines.push(text.clone()),
            SafeTlvValue::Value(_) => {}
        }
    }
}

/// One value as JSON: numbers for amounts, strings for digits, hex and text, an object for a
/// card (never more than BIN + last 4), `"removed"` for dropped secrets.
pub fn value_json(value: &Value) -> Json {
    match value {
        Value::Hex(hex) => json!({"hex": hex}),
        Value::Digits(digits) => json!(digits),
        Value::Amount(minor) => json!({"minor_units": minor}),
        Value::Text(text) => json!({"text": text}),
        Value::Card(card) => json!({"bin": card.bin, "last4": card.last4, "masked": card.masked()}),
        Value::Removed => json!("removed"),
        Value::Tlv(items) => Json::Array(items.iter().map(tlv_json).collect()),
    }
}

fn tlv_json(item: &SafeTlv) -> Json {
    let tag = super::tlv::Tlv { tag: item.tag, value: super::tlv::TlvValue::Primitive(Vec::new()) }.tag_hex();
    match &item.value {
        SafeTlvValue::Nested(inner) => {
            json!({"tag": tag, "tlv": inner.iter().map(tlv_json).collect::<Vec<_>>()})
        }
        SafeTlvValue::Value(value) => json!({"tag": tag, "value": value_json(value)}),
    }
}
