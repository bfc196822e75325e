//! PCI DSS hygiene for terminal messages.
//!
//! PCI DSS requirement 3.2 forbids keeping sensitive authentication data (full track data, CVV2,
//! PIN blocks) after authorisation at all, and requirements 3.3/3.4 allow a PAN to be displayed or
//! stored only masked or rendered unreadable, at most the BIN (first 6) and the last 4 digits. The
//! refund agent has no reason to ever hold a full PAN, so [`sanitize`] runs on the raw
//! `serde_json::Value` of every terminal message *before* typed parsing: nothing downstream (the
//! event types, error messages, logs, the database, cloud API calls) can then see card secrets.
//! This keeps the agent out of PCI scope for storage even when a terminal is misconfigured and
//! sends more than it should.
//!
//! Detection is the crate's one card-number detector, [`crate::pan`], so the terminal and the
//! control API cannot disagree about what a PAN is. It is deliberately biased towards
//! over-masking: a Luhn-valid run of 13–19 digits in any string (grouped by any separators, in
//! full-width digits, glued to an expiry) is treated as a PAN, even inside free text, because a
//! false positive costs a garbled note while a false negative is a compliance incident.

use std::borrow::Cow;

use serde_json::{Map, Value};

pub use crate::pan::{contains_pan, last4, looks_like_track_data, luhn_valid, mask_pan, mask_text};

/// Keys whose values are sensitive authentication data; compared ignoring case, `_` and `-`.
const SECRET_KEYS: [&str; 11] =
    ["track1", "track2", "track3", "track_data", "cvv", "cvv2", "cvc", "cvc2", "cid", "pin", "pin_block"];

/// Keys whose value is the card number itself; they are converted into `masked_pan`.
const PAN_KEYS: [&str; 4] = ["pan", "card_number", "card_no", "primary_account_number"];

/// The only key under which a (masked) card number may survive sanitizing.
const MASKED_PAN_KEY: &str = "masked_pan";

/// Removes card secrets from `value` and masks every full PAN in it, in place.
///
/// Returns labels of what was removed or masked (deduplicated, without any card data) so that the
/// caller can log that a terminal sent card data it should not have sent: the secret key names
/// (`cvv`, `track2`, `pin_block`, …), `track_data_value`, `pan_masked`, `pan_renamed`,
/// `pan_in_key` and `pan_unexpected_type`.
pub fn sanitize(value: &mut Value) -> Vec<&'static str> {
    let mut report = Vec::new();
    if !visit(value, &mut report) {
        // A top-level track string has no parent to be removed from, so it is blanked instead.
        *value = Value::Null;
    }
    report
}

fn note(report: &mut Vec<&'static str>, label: &'static str) {
    if !report.contains(&label) {
        report.push(label);
    }
}

/// Sanitizes one value; returns `false` when the value must be removed from its parent.
fn visit(value: &mut Value, report: &mut Vec<&'static str>) -> bool {
    match value {
        Value::String(text) => {
            if looks_like_track_data(text) {
                note(report, "track_data_value");
                return false;
            }
            if let Cow::Owned(masked) = mask_text(text) {
                *text = masked;
                note(report, "pan_masked");
            }
        }
        Value::Number(number) => {
            // A PAN sent as a JSON number is still a PAN; it becomes a masked string.
            if let Cow::Owned(masked) = mask_text(&number.to_string()) {
                *value = Value::String(masked);
                note(report, "pan_masked");
            }
        }
        Value::Array(items) => items.retain_mut(|item| visit(item, report)),
        Value::Object(map) => sanitize_object(map, report),
        Value::Null | Value::Bool(_) => {}
    }
    true
}

fn sanitize_object(map: &mut Map<String, Value>, report: &mut Vec<&'static str>) {
    // PAN-named keys are moved under `masked_pan` first, so the pass below masks them strictly.
    let pan_keys: Vec<String> =
        map.keys().filter(|key| PAN_KEYS.iter().any(|pan| same_key(key, pan))).cloned().collect();
    for key in pan_keys {
        if let Some(pan) = map.remove(&key) {
            note(report, "pan_renamed");
            if !map.contains_key(MASKED_PAN_KEY) {
                map.insert(MASKED_PAN_KEY.to_owned(), pan);
            }
        }
    }
    map.retain(|key, value| {
        if let Some(label) = SECRET_KEYS.iter().find(|secret| same_key(key, secret)) {
            note(report, label);
            return false;
        }
        if contains_pan(key) || looks_like_track_data(key) {
            note(report, "pan_in_key");
            return false;
        }
        if same_key(key, MASKED_PAN_KEY) {
            return mask_pan_field(value, report);
        }
        visit(value, report)
    });
}

/// Strict masking for a field that is supposed to hold a card number: any string with more digits
/// than a masked PAN may show (6 + 4) is masked whole, Luhn-valid or not, because a mistyped or
/// test PAN in this field is still card data as far as an auditor is concerned.
fn mask_pan_field(value: &mut Value, report: &mut Vec<&'static str>) -> bool {
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Null => return true,
        // Anything else under a card-number key is unexpected and cannot be masked reliably.
        Value::Bool(_) | Value::Array(_) | Value::Object(_) => {
            note(report, "pan_unexpected_type");
            return false;
        }
    };
    if looks_like_track_data(&text) {
        note(report, "track_data_value");
        return false;
    }
    if crate::pan::digits(&text).len() > 10 {
        *value = Value::String(mask_pan(&text));
        note(report, "pan_masked");
    } else if !value.is_string() {
        *value = Value::String(text);
    }
    true
}

/// Compares JSON keys ignoring ASCII case, `_`, `-` and spaces (`Track-2`, `CVV2`, `pinBlock`).
fn same_key(key: &str, canonical: &str) -> bool {
    fn normalized(s: &str) -> impl Iterator<Item = char> + '_ {
        s.chars().filter(|c| !matches!(c, '_' | '-' | ' ')).map(|c| c.to_ascii_lowercase())
    }
    normalized(key).eq(normalized(canonical))
}

#[cfg(test)]
mod tests;
