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
        r#"{"type":"refund","seq":9,"original_transaction_id":"txn_1","amount":"1.50","reason":"r","operator":"op","currency":"EUR","manager_approval":{"manager":"mgr_1","pin":"1234"},"request_id":"req-1","receipt_id":""}"#,
    );
    let expected = TerminalEvent::Refund {
        receipt_id: None,
        original_transaction_id: Some("txn_1".into()),
        amount: Some("1.50".into()),
        lines: Vec::new(),
        reason: "r".into(),
        operator: "op".into(),
        currency: Some("EUR".into()),
        manager_approval: Some(crate::manager::ApprovalRequest {
            manager: "mgr_1".into(),
            pin: crate::manager::Pin::new("1234"),
        }),
        request_id: Some("req-1".into()),
    };
    assert_eq!(refund, Inbound { seq: Some(9), event: expected });
    let receipt = parse(
        r#"{"type":"receipt","receipt_id":"R","transaction_id":"t","currency":"USD","total":"1","subtotal":"1"}"#,
    );
    assert!(matches!(receipt.event, TerminalEvent::Receipt(r) if r.items.is_empty()));
}

#[test]
fn an_itemized_refund_names_its_lines() {
    let payload = r#"{"type":"refund","receipt_id":"RCP-2025-001","lines":[{"line":1,"quantity":1}],"reason":"chipped","operator":"emp_42"}"#;
    let TerminalEvent::Refund { amount, lines, .. } = parse(payload).event else {
        panic!("expected a refund");
    };
    assert_eq!(amount, None);
    assert_eq!(lines, vec![crate::refund::LineRequest { line: 1, quantity: 1 }]);
    let via_serde: TerminalEvent = serde_json::from_str(payload).expect("serde parses");
    assert_eq!(parse(payload).event, via_serde);
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
        (r#"{"type":"refund","amount":5.0,"reason":"r","operator":"o"}"#, "invalid_field", Some("amount")),
        (r#"{"type":"refund","amount":" ","reason":"r","operator":"o"}"#, "invalid_field", Some("amount")),
        (
            r#"{"type":"refund","lines":{"line":1},"reason":"r","operator":"o"}"#,
            "invalid_field",
            Some("lines"),
        ),
        (
            r#"{"type":"refund","lines":[{"line":"2","quantity":1}],"reason":"r","operator":"o"}"#,
            "invalid_field",
            Some("lines[0].line"),
        ),
        (
            r#"{"type":"refund","lines":[{"line":2}],"reason":"r","operator":"o"}"#,
            "missing_field",
            Some("lines[0].quantity"),
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
