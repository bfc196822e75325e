//! The detector applied where it matters: every text field of a refund draft and of a receipt.
//! Whatever form a PAN takes, the normalized or validated result never holds its digits: the
//! field is masked (free text), reduced (`masked_pan`) or the whole input is refused.

use proptest::prelude::*;
use serde_json::Value;

use super::digits;
use super::tests::{render, with_check_digit};
use crate::manager::{ApprovalRequest, Pin};
use crate::refund::{RefundDraft, RejectCode};
use crate::sale::tests::example_input;
use crate::sale::{Sale, SaleError, SaleInput};

/// Whether any string in `value` holds the digits of `pan` once separators are taken out and
/// full-width digits read as ASCII.
fn leaks(value: &Value, pan: &str) -> bool {
    match value {
        Value::String(text) => digits(text).contains(pan),
        Value::Array(items) => items.iter().any(|v| leaks(v, pan)),
        Value::Object(map) => map.values().any(|v| leaks(v, pan)),
        Value::Number(n) => n.to_string().contains(pan),
        Value::Null | Value::Bool(_) => false,
    }
}

fn draft() -> RefundDraft {
    RefundDraft {
        receipt_id: Some("RCP-1".into()),
        amount: Some("5.00".into()),
        reason: "returned".into(),
        operator: "emp_42".into(),
        ..RefundDraft::default()
    }
}

type DraftField = (&'static str, fn(&mut RefundDraft, String));

const DRAFT_FIELDS: [DraftField; 10] = [
    ("reason", |d, v| d.reason = v),
    ("operator", |d, v| d.operator = v),
    ("receipt_id", |d, v| d.receipt_id = Some(v)),
    ("original_transaction_id", |d, v| {
        d.receipt_id = None;
        d.original_transaction_id = Some(v);
    }),
    ("manager_approval.manager", |d, v| {
        d.manager_approval = Some(ApprovalRequest { manager: v, pin: Pin::new("1234") })
    }),
    ("currency", |d, v| d.currency = Some(v)),
    ("amount", |d, v| d.amount = Some(v)),
    ("tax", |d, v| d.tax = Some(v)),
    ("discount", |d, v| d.discount = Some(v)),
    ("masked_pan", |d, v| d.masked_pan = Some(v)),
];

type SaleField = (&'static str, fn(&mut SaleInput, String));

const SALE_FIELDS: [SaleField; 18] = [
    ("receipt_id", |i, v| i.receipt_id = v),
    ("transaction_id", |i, v| i.transaction_id = v),
    ("order_id", |i, v| i.order_id = Some(v)),
    ("session_id", |i, v| i.session_id = Some(v)),
    ("currency", |i, v| i.currency = v),
    ("total", |i, v| i.total = v),
    ("subtotal", |i, v| i.subtotal = v),
    ("tax", |i, v| i.tax = Some(v)),
    ("discount", |i, v| i.discount = Some(v)),
    ("payment_method", |i, v| i.payment_method = Some(v)),
    ("processor", |i, v| i.processor = Some(v)),
    ("processor_payment_id", |i, v| i.processor_payment_id = Some(v)),
    ("masked_pan", |i, v| i.masked_pan = Some(v)),
    ("captured_at", |i, v| i.captured_at = Some(v)),
    ("items.name", |i, v| i.items[1].name = v),
    ("items.product_id", |i, v| i.items[0].product_id = v),
    ("items.variant_id", |i, v| i.items[1].variant_id = v),
    ("items.sku", |i, v| i.items[0].sku = Some(v)),
];

/// A PAN as it might reach a field: typed with separators and full-width digits, glued to an
/// expiry, or inside track 1 / track 2 data; with or without text around it.
fn written(pan: &str, choices: &[u8], form: u8, wrapped: bool) -> String {
    let plain: String = render(pan, &choices.iter().map(|c| c & 0x80).collect::<Vec<_>>());
    let card = match form % 4 {
        0 => render(pan, choices),
        1 => format!("{plain}2512"),
        2 => format!(";{plain}=25121011234567?"),
        _ => format!("%B{plain}^DOE/JANE^2512101?"),
    };
    if wrapped {
        format!("card {card} seen")
    } else {
        card
    }
}

#[test]
fn a_pan_in_reason_is_masked_and_in_an_id_refused() {
    let mut d = draft();
    d.reason = "customer card 4111.1111.1111.1111 charged twice".into();
    let n = d.normalized().expect("a PAN in free text is masked, not refused");
    assert_eq!(n.reason, "customer card 411111******1111 charged twice");
    let mut d = draft();
    d.operator = "4111111111111111".into();
    let err = d.normalized().unwrap_err();
    assert_eq!(err.code, RejectCode::CardDataInField);
    assert!(err.message.contains("`operator`"), "{}", err.message);
    assert!(!digits(&err.message).contains("4111111111111111"));
    // What the terminal sanitizer made of a PAN in an id is refused the same way.
    let mut d = draft();
    d.operator = "411111******1111".into();
    assert_eq!(d.normalized().unwrap_err().code, RejectCode::CardDataInField);
}

#[test]
fn a_pan_in_a_receipt_id_is_refused_and_in_an_item_name_masked() {
    let mut input = example_input();
    input.order_id = Some("４１１１１１１１１１１１１１１１".into());
    assert_eq!(Sale::from_input(input).unwrap_err(), SaleError::CardData("order_id"));
    let mut input = example_input();
    input.processor_payment_id = Some(";4111111111111111=2512101?".into());
    assert_eq!(Sale::from_input(input).unwrap_err(), SaleError::CardData("processor_payment_id"));
    let mut input = example_input();
    input.items[0].name = "Gift card 4111_1111_1111_1111".into();
    let sale = Sale::from_input(input).expect("a PAN in a name is masked, not refused");
    assert_eq!(sale.items[0].name, "Gift card 411111******1111");
}

proptest! {
    #[test]
    fn no_field_of_a_draft_keeps_a_pan(
        body in "[0-9]{12,18}",
        choices in proptest::collection::vec(any::<u8>(), 19),
        form in any::<u8>(),
        wrapped in any::<bool>(),
    ) {
        let pan = with_check_digit(&body);
        let value = written(&pan, &choices, form, wrapped);
        for (field, set) in DRAFT_FIELDS {
            let mut d = draft();
            set(&mut d, value.clone());
            match d.normalized() {
                Ok(n) => {
                    let json = serde_json::to_value(&n).expect("a draft serializes");
                    prop_assert!(!leaks(&json, &pan), "{field}: {json}");
                }
                Err(r) => {
                    prop_assert!(!digits(&r.message).contains(&pan), "{field}: {}", r.message);
                    if field != "masked_pan" {
                        prop_assert_eq!(r.code, RejectCode::CardDataInField, "{}", field);
                    }
                }
            }
        }
    }

    #[test]
    fn no_field_of_a_receipt_keeps_a_pan(
        body in "[0-9]{12,18}",
        choices in proptest::collection::vec(any::<u8>(), 19),
        form in any::<u8>(),
        wrapped in any::<bool>(),
    ) {
        let pan = with_check_digit(&body);
        let value = written(&pan, &choices, form, wrapped);
        for (field, set) in SALE_FIELDS {
            let mut input = example_input();
            set(&mut input, value.clone());
            match Sale::from_input(input) {
                Ok(sale) => {
                    prop_assert!(["items.name", "masked_pan"].contains(&field), "{field} accepted");
                    let json = serde_json::to_value(&sale).expect("a sale serializes");
                    prop_assert!(!leaks(&json, &pan), "{field}: {json}");
                }
                Err(e) => {
                    prop_assert!(!digits(&e.to_string()).contains(&pan), "{field}: {e}");
                    if field != "masked_pan" {
                        prop_assert_eq!(e, SaleError::CardData(field));
                    }
                }
            }
        }
    }
}
