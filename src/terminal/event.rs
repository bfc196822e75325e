//! Terminal events: turning a decoded payload into a typed [`TerminalEvent`].
//!
//! Parsing goes through a `serde_json::Value` rather than straight into the types, for two
//! reasons. First, [`pci::sanitize`] must run on the untyped tree so that card secrets are removed
//! before any typed value (or error message quoting one) exists. Second, reading the fields by hand
//! lets every error name the offending field with a stable code, which the terminal shows to the
//! cashier and the daemon logs; serde's own messages name neither reliably.
//!
//! The types still derive `Serialize`/`Deserialize` with the wire names, so the daemon can store
//! or replay events, and tests check that both paths agree on the documented examples.
//!
//! Unknown extra fields are ignored on purpose: terminal vendors add their own fields, and
//! rejecting them would break the refund flow on a firmware update.

mod fields;
mod reply;
mod scan;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::pci;

pub use self::reply::Reply;
pub use self::scan::{scan_event, MAX_SCAN_LEN};

/// One message from the terminal, tagged by its `type` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TerminalEvent {
    /// A receipt the terminal printed or looked up, with its payment details.
    Receipt(ReceiptEvent),
    /// The cashier scanned a receipt barcode.
    ReceiptScan { receipt_id: String },
    /// A card was presented; only its masked PAN ever reaches this type.
    Card {
        masked_pan: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expiry: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entry_mode: Option<String>,
    },
    /// The cashier asked for a refund.
    Refund {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        receipt_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        original_transaction_id: Option<String>,
        /// A decimal string; the domain layer parses it with a decimal type, never a float.
        amount: String,
        reason: String,
        operator: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        currency: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        manager_approval: Option<String>,
        /// The terminal's idempotency key, so a resent refund is not executed twice.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// The cashier cancelled the current operation.
    Cancel,
}

/// A receipt as reported by the terminal. Amounts are decimal strings, parsed by the domain layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptEvent {
    pub receipt_id: String,
    pub transaction_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    pub currency: String,
    pub total: String,
    pub subtotal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discount: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor_payment_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked_pan: Option<String>,
    /// RFC 3339 timestamp as sent; kept as text because the domain layer owns time parsing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured_at: Option<String>,
    #[serde(default)]
    pub items: Vec<ReceiptItem>,
}

/// One line of a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptItem {
    pub name: String,
    pub quantity: u32,
    pub price: String,
    pub total: String,
    pub product_id: String,
    pub variant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
}

/// A parsed event with the terminal's optional sequence number, echoed back in the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub seq: Option<i64>,
    pub event: TerminalEvent,
}

/// Everything [`parse_event_detailed`] learned, including on failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseOutcome {
    /// The sequence number, when it could be read, so that even a `nak` can be correlated.
    pub seq: Option<i64>,
    /// What [`pci::sanitize`] removed or masked; non-empty means the terminal leaked card data.
    pub redactions: Vec<&'static str>,
    pub result: Result<TerminalEvent, EventError>,
}

/// Why a payload is not a valid event. Messages never contain card data: they are built after
/// sanitizing and quote at most the (sanitized, truncated) event type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("payload is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("payload is not a JSON object")]
    NotAnObject,
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("missing required field `{field}`")]
    MissingField { field: String },
    #[error("invalid field `{field}`: {reason}")]
    InvalidField { field: String, reason: &'static str },
}

impl EventError {
    /// A stable identifier sent to the terminal in `nak` replies; never change an existing value.
    pub fn code(&self) -> &'static str {
        match self {
            EventError::InvalidJson(_) => "invalid_json",
            EventError::NotAnObject => "not_an_object",
            EventError::UnknownType(_) => "unknown_type",
            EventError::MissingField { .. } => "missing_field",
            EventError::InvalidField { .. } => "invalid_field",
        }
    }

    /// The field the error is about, if any (nested fields look like `items[2].quantity`).
    pub fn field(&self) -> Option<&str> {
        match self {
            EventError::MissingField { field } | EventError::InvalidField { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Parses one JSON payload (from `ndjson` or `stx-etx` framing) into an event.
pub fn parse_event(payload: &str) -> Result<Inbound, EventError> {
    let outcome = parse_event_detailed(payload);
    outcome.result.map(|event| Inbound { seq: outcome.seq, event })
}

/// Like [`parse_event`], but also reports the sequence number on failure (for the `nak`) and what
/// the PCI sanitizer removed (for an alert that contains no card data).
pub fn parse_event_detailed(payload: &str) -> ParseOutcome {
    let failed = |seq, redactions, error| ParseOutcome { seq, redactions, result: Err(error) };
    let mut value: Value = match serde_json::from_str(payload) {
        Ok(value) => value,
        // serde_json's syntax errors give only a position, never input text, so they are safe.
        Err(error) => return failed(None, Vec::new(), EventError::InvalidJson(error.to_string())),
    };
    let redactions = pci::sanitize(&mut value);
    let Value::Object(map) = &value else {
        return failed(None, redactions, EventError::NotAnObject);
    };
    let seq = match fields::seq(map) {
        Ok(seq) => seq,
        Err(error) => return failed(None, redactions, error),
    };
    ParseOutcome { seq, redactions, result: fields::event_from_object(map) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLES: [&str; 5] = [
        r#"{"type":"receipt","receipt_id":"RCP-2025-001","transaction_id":"txn_123","order_id":"507f1f77bcf86cd799439013","session_id":"507f1f77bcf86cd799439012","currency":"USD","total":"100.00","subtotal":"90.00","tax":"10.00","discount":"0.00","payment_method":"credit_card","processor":"gateway","processor_payment_id":"882","masked_pan":"530957******2257","captured_at":"2026-11-20T10:15:00Z","items":[{"name":"Sweet Tea","quantity":2,"price":"5.00","total":"10.00","product_id":"p1","variant_id":"v1","sku":"SKU-001"},{"name":"Coffee Grinder","quantity":1,"price":"90.00","total":"90.00","product_id":"p2","variant_id":"v2","sku":"SKU-002"}]}"#,
        r#"{"type":"receipt_scan","receipt_id":"RCP-2025-001"}"#,
        r#"{"type":"card","masked_pan":"530957******2257","expiry":"2030-12","entry_mode":"contactless"}"#,
        r#"{"type":"refund","receipt_id":"RCP-2025-001","amount":"5.00","reason":"Customer returned item","operator":"emp_42"}"#,
        r#"{"type":"cancel"}"#,
    ];

    fn parse(payload: &str) -> Inbound {
        parse_event(payload).expect("payload is a valid event")
    }

    fn error(payload: &str) -> EventError {
        parse_event(payload).expect_err("payload must be rejected")
    }

    #[test]
    fn spec_examples_parse_like_serde() {
        for line in EXAMPLES {
            let inbound = parse(line);
            assert_eq!(inbound.seq, None);
            // The hand-written reader and the serde derive must agree on the wire format.
            let via_serde: TerminalEvent = serde_json::from_str(line).expect("serde parses");
            assert_eq!(inbound.event, via_serde, "{line}");
            let reparsed = parse(&serde_json::to_string(&inbound.event).expect("serializes"));
            assert_eq!(reparsed.event, inbound.event);
        }
    }

    #[test]
    fn receipt_fields() {
        let TerminalEvent::Receipt(receipt) = parse(EXAMPLES[0]).event else {
            panic!("expected a receipt");
        };
        assert_eq!(receipt.receipt_id, "RCP-2025-001");
        assert_eq!(receipt.total, "100.00");
        assert_eq!(receipt.tax.as_deref(), Some("10.00"));
        assert_eq!(receipt.masked_pan.as_deref(), Some("530957******2257"));
        assert_eq!(receipt.items.len(), 2);
        assert_eq!(receipt.items[0].quantity, 2);
        assert_eq!(receipt.items[0].sku.as_deref(), Some("SKU-001"));
    }

    #[test]
    fn each_event_type_with_seq_and_vendor_fields() {
        let inbound = parse(r#"{"type":"cancel","seq":7,"vendor_x":{"a":1}}"#);
        assert_eq!(inbound, Inbound { seq: Some(7), event: TerminalEvent::Cancel });
        let scan = parse(r#"{"type":"receipt_scan","receipt_id":"R1","seq":null}"#);
        assert_eq!(scan.event, TerminalEvent::ReceiptScan { receipt_id: "R1".into() });
        let card = parse(r#"{"type":"card","masked_pan":"**** 2257"}"#);
        let expected = TerminalEvent::Card { masked_pan: "**** 2257".into(), expiry: None, entry_mode: None };
        assert_eq!(card.event, expected);
        let refund = parse(
            r#"{"type":"refund","seq":9,"original_transaction_id":"txn_1","amount":"1.50","reason":"r","operator":"op","currency":"EUR","manager_approval":"mgr_1","request_id":"req-1","receipt_id":""}"#,
        );
        let expected = TerminalEvent::Refund {
            receipt_id: None,
            original_transaction_id: Some("txn_1".into()),
            amount: "1.50".into(),
            reason: "r".into(),
            operator: "op".into(),
            currency: Some("EUR".into()),
            manager_approval: Some("mgr_1".into()),
            request_id: Some("req-1".into()),
        };
        assert_eq!(refund, Inbound { seq: Some(9), event: expected });
        let receipt = parse(
            r#"{"type":"receipt","receipt_id":"R","transaction_id":"t","currency":"USD","total":"1","subtotal":"1"}"#,
        );
        assert!(matches!(receipt.event, TerminalEvent::Receipt(r) if r.items.is_empty()));
    }

    #[test]
    fn error_codes() {
        let cases = [
            ("{", "invalid_json", None),
            ("[1,2]", "not_an_object", None),
            ("\"cancel\"", "not_an_object", None),
            (r#"{"seq":1}"#, "missing_field", Some("type")),
            (r#"{"type":5}"#, "invalid_field", Some("type")),
            (r#"{"type":"cancel","seq":"7"}"#, "invalid_field", Some("seq")),
            (r#"{"type":"cancel","seq":1.5}"#, "invalid_field", Some("seq")),
            (r#"{"type":"refund","amount":"1","reason":"r"}"#, "missing_field", Some("operator")),
            (
                r#"{"type":"refund","amount":5.0,"reason":"r","operator":"o"}"#,
                "invalid_field",
                Some("amount"),
            ),
            (
                r#"{"type":"refund","amount":" ","reason":"r","operator":"o"}"#,
                "invalid_field",
                Some("amount"),
            ),
            (r#"{"type":"card"}"#, "missing_field", Some("masked_pan")),
            (r#"{"type":"card","masked_pan":"visa"}"#, "invalid_field", Some("masked_pan")),
            (r#"{"type":"receipt_scan","receipt_id":7}"#, "invalid_field", Some("receipt_id")),
        ];
        for (payload, code, field) in cases {
            let err = error(payload);
            assert_eq!((err.code(), err.field()), (code, field), "{payload}: {err}");
        }
    }

    #[test]
    fn unknown_type_is_named_and_truncated() {
        let err = error(r#"{"type":"teleport"}"#);
        assert_eq!(err, EventError::UnknownType("teleport".into()));
        assert_eq!(err.to_string(), "unknown event type \"teleport\"");
        let long = format!(r#"{{"type":"{}"}}"#, "x".repeat(500));
        let EventError::UnknownType(kind) = error(&long) else {
            panic!("expected unknown_type");
        };
        assert_eq!(kind.len(), 64);
    }

    #[test]
    fn item_errors_name_the_nested_field() {
        let payload = r#"{"type":"receipt","receipt_id":"R","transaction_id":"t","currency":"USD","total":"1","subtotal":"1","items":[{"name":"a","quantity":1,"price":"1","total":"1","product_id":"p","variant_id":"v"},{"name":"b","quantity":-1,"price":"1","total":"1","product_id":"p","variant_id":"v"}]}"#;
        assert_eq!(error(payload).field(), Some("items[1].quantity"));
        let payload = payload.replace(r#""quantity":-1,"#, "");
        assert_eq!(error(&payload).field(), Some("items[1].quantity"));
        assert_eq!(error(&payload).code(), "missing_field");
    }

    #[test]
    fn seq_survives_errors_for_the_nak() {
        let outcome = parse_event_detailed(r#"{"type":"refund","seq":42}"#);
        assert_eq!(outcome.seq, Some(42));
        assert_eq!(outcome.result.map_err(|e| e.code()), Err("missing_field"));
    }

    #[test]
    fn card_data_is_sanitized_before_parsing() {
        let payload = r#"{"type":"refund","seq":1,"pan":"4111111111111111","cvv":"123","track2":";4111111111111111=2512101?","amount":"5.00","reason":"card 4111 1111 1111 1111 double charged","operator":"emp_42"}"#;
        let outcome = parse_event_detailed(payload);
        for label in ["cvv", "track2", "pan_renamed", "pan_masked"] {
            assert!(outcome.redactions.contains(&label), "{label}");
        }
        let event = outcome.result.expect("still a valid refund");
        let json = serde_json::to_string(&event).expect("serializes");
        assert!(!pci::contains_pan(&json), "{json}");
        assert!(json.contains("card 411111******1111 double charged"));
        let card = parse(r#"{"type":"card","pan":"5309570000052257","cvc":"999"}"#);
        assert_eq!(
            card.event,
            TerminalEvent::Card { masked_pan: "530957******2257".into(), expiry: None, entry_mode: None }
        );
        // Even an unknown type quoting a PAN is masked before it reaches the error message.
        let err = error(r#"{"type":"4111111111111111"}"#);
        assert_eq!(err, EventError::UnknownType("411111******1111".into()));
    }
}
