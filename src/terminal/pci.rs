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
//! Detection is deliberately biased towards over-masking: a Luhn-valid run of 13–19 digits in any
//! string is treated as a PAN, even inside free text, because a false positive costs a garbled
//! note while a false negative is a compliance incident.

mod detect;

use std::borrow::Cow;

use serde_json::{Map, Value};

pub use detect::{contains_pan, last4, looks_like_track_data, luhn_valid, mask_pan, mask_text};

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
    if text.chars().filter(char::is_ascii_digit).count() > 10 {
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
mod tests {
    use super::*;
    use serde_json::json;

    const FULL_PANS: [&str; 3] = ["5309570000052257", "4111111111111111", "378282246310005"];

    /// Asserts that no full test PAN survives anywhere in the serialized value.
    fn assert_no_pan(value: &Value) {
        let text = value.to_string();
        for pan in FULL_PANS {
            assert!(!text.contains(pan), "{pan} leaked in {text}");
        }
        for grouped in ["4111 1111 1111 1111", "4111-1111-1111-1111"] {
            assert!(!text.contains(grouped), "{grouped} leaked in {text}");
        }
    }

    #[test]
    fn masks_pans_everywhere() {
        let mut value = json!({
            "type": "refund",
            "masked_pan": "5309570000052257",
            "reason": "customer card 4111 1111 1111 1111 was charged twice",
            "note": "4111-1111-1111-1111",
            "vendor": {"emv": {"card": {"Card_Number": "378282246310005"}}},
            "history": ["ok", "4111111111111111", 4111111111111111_u64],
        });
        let mut report = sanitize(&mut value);
        assert_no_pan(&value);
        assert_eq!(value["masked_pan"], "530957******2257");
        assert_eq!(value["reason"], "customer card 411111******1111 was charged twice");
        assert_eq!(value["note"], "411111******1111");
        assert_eq!(value["vendor"]["emv"]["card"], json!({"masked_pan": "378282*****0005"}));
        assert_eq!(value["history"], json!(["ok", "411111******1111", "411111******1111"]));
        // Key order depends on serde_json's `preserve_order` feature, so compare as a set.
        report.sort_unstable();
        assert_eq!(report, ["pan_masked", "pan_renamed"]);
    }

    #[test]
    fn pan_key_becomes_masked_pan() {
        let mut value = json!({"type": "card", "pan": "4111 1111 1111 1111"});
        sanitize(&mut value);
        assert_eq!(value, json!({"type": "card", "masked_pan": "411111******1111"}));
        // When both are present the existing masked_pan wins and the full PAN is simply dropped.
        let mut both = json!({"masked_pan": "411111******1111", "PAN": "5309570000052257"});
        sanitize(&mut both);
        assert_eq!(both, json!({"masked_pan": "411111******1111"}));
    }

    #[test]
    fn pan_fields_are_masked_even_without_luhn() {
        let mut value = json!({"masked_pan": "5309570000002257", "card_number": 1234567812345678_u64});
        sanitize(&mut value);
        assert_eq!(value, json!({"masked_pan": "530957******2257"}));
    }

    #[test]
    fn drops_secrets_case_insensitively_at_any_depth() {
        let mut value = json!({
            "type": "card",
            "masked_pan": "411111******1111",
            "CVV": "123",
            "cvv2": 123,
            "Track2": ";4111111111111111=25121011234?",
            "emv": {"pin_block": "ABCD", "PinBlock": "EF", "cid": "1234", "tags": [{"track-1": "x"}]},
            "raw": "%B4111111111111111^DOE/JOHN^2512101?",
            "swipes": [";4111111111111111=2512101?", "ok"],
        });
        let report = sanitize(&mut value);
        assert_eq!(
            value,
            json!({
                "type": "card",
                "masked_pan": "411111******1111",
                "emv": {"tags": [{}]},
                "swipes": ["ok"],
            })
        );
        for label in ["cvv", "cvv2", "track2", "pin_block", "cid", "track1", "track_data_value"] {
            assert!(report.contains(&label), "{label} missing from {report:?}");
        }
        assert_no_pan(&value);
    }

    #[test]
    fn leaves_ordinary_data_alone() {
        let original = json!({
            "type": "receipt",
            "order_id": "1234567812345678",
            "order_number": 1234567812345678_u64,
            "masked_pan": "530957******2257",
            "total": "100.00",
            "captured_at": "2026-11-20T10:15:00Z",
            "items": [{"quantity": 1, "sku": "SKU-001"}],
            "flag": true,
            "nothing": null,
        });
        let mut value = original.clone();
        assert!(sanitize(&mut value).is_empty());
        assert_eq!(value, original);
    }

    #[test]
    fn keys_that_carry_card_data_are_dropped() {
        let mut value = json!({"4111111111111111": "x", "ok": 1});
        assert_eq!(sanitize(&mut value), ["pan_in_key"]);
        assert_eq!(value, json!({"ok": 1}));
    }

    #[test]
    fn top_level_track_string_is_blanked() {
        let mut value = json!(";4111111111111111=2512101?");
        sanitize(&mut value);
        assert_eq!(value, Value::Null);
    }
}
