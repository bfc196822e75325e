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

#[test]
fn every_written_form_is_masked_by_the_shared_detector() {
    let mut value = json!({
        "type": "refund",
        "reason": "card 4111.1111.1111.1111 / ４１１１１１１１１１１１１１１１ / 4111_1111_1111_1111",
        "operator": "41111111111111112512",
        "items": [{"name": "4111  1111  1111  1111"}],
        "id": "01936a2b-0000-7000-8000-411111111111",
    });
    assert_eq!(sanitize(&mut value), ["pan_masked"]);
    assert_eq!(value["reason"], "card 411111******1111 / 411111******1111 / 411111******1111");
    assert_eq!(value["operator"], "411111******11112512");
    assert_eq!(value["items"][0]["name"], "411111******1111");
    // A UUID is an id, not a card number, even when its digits would pass Luhn.
    assert_eq!(value["id"], "01936a2b-0000-7000-8000-411111111111");
    // The full-width form is still card data under a card-number key.
    let mut card = json!({"pan": "４１１１１１１１１１１１１１１１"});
    sanitize(&mut card);
    assert_eq!(card, json!({"masked_pan": "411111******1111"}));
}
