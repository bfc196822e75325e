//! Tests of the cashier session state machine.

use super::*;
use crate::terminal::event::parse_event;
use proptest::prelude::*;

const TIMEOUT: Duration = Duration::from_secs(120);

fn event(json: &str) -> Inbound {
    parse_event(json).expect("test event parses")
}

fn scan(id: &str) -> Inbound {
    event(&format!(r#"{{"type":"receipt_scan","receipt_id":"{id}"}}"#))
}

fn card(pan: &str) -> Inbound {
    event(&format!(r#"{{"type":"card","masked_pan":"{pan}"}}"#))
}

fn refund(extra: &str) -> Inbound {
    event(&format!(r#"{{"type":"refund","seq":7,"amount":"5.00","reason":"r","operator":"op"{extra}}}"#))
}

fn created(action: Action) -> RefundRequest {
    match action {
        Action::CreateRefund(request) => *request,
        other => panic!("expected a refund, got {other:?}"),
    }
}

fn nak_code(action: Action) -> String {
    match action {
        Action::Reply(Reply::Nak { code, seq, .. }) => {
            assert_eq!(seq, Some(7), "the nak echoes seq");
            code
        }
        other => panic!("expected a nak, got {other:?}"),
    }
}

#[test]
fn scan_card_refund_makes_a_card_present_draft() {
    let t0 = Instant::now();
    let mut s = Session::new(TIMEOUT);
    assert_eq!(s.handle(scan("RCP-1"), t0), Action::Reply(Reply::ack(None)));
    assert_eq!(s.scanned(), Some("RCP-1"));
    s.handle(card("530957******2257"), t0);
    let request = created(s.handle(refund(r#","request_id":"req-1""#), t0));
    assert_eq!(request.seq, Some(7));
    assert_eq!(request.key.as_deref(), Some("terminal:req-1"));
    assert_eq!(request.draft.receipt_id.as_deref(), Some("RCP-1"));
    assert_eq!(request.draft.masked_pan.as_deref(), Some("530957******2257"));
    assert_eq!((request.draft.amount.as_deref(), request.draft.operator.as_str()), (Some("5.00"), "op"));
    // A nak leaves the session open so the cashier can correct the amount and resend.
    assert!(s.deadline().is_some());
    s.committed(&request);
    assert_eq!(s.deadline(), None);
    assert_eq!(nak_code(s.handle(refund(""), t0)), "no_receipt_scanned");
}

#[test]
fn a_refund_that_names_its_sale_needs_no_session() {
    let mut s = Session::new(TIMEOUT);
    let request = created(s.handle(refund(r#","receipt_id":"RCP-9""#), Instant::now()));
    assert_eq!((request.draft.receipt_id.as_deref(), request.draft.masked_pan), (Some("RCP-9"), None));
    assert_eq!(request.key, None);
    let by_txn = created(s.handle(refund(r#","original_transaction_id":"txn_1""#), Instant::now()));
    assert_eq!(
        by_txn.draft.sale_ref().map_err(|r| r.code),
        Ok(crate::refund::SaleRef::Transaction("txn_1".into()))
    );
}

#[test]
fn a_card_presented_applies_to_a_refund_naming_its_receipt_but_not_another_scan() {
    let t0 = Instant::now();
    let mut s = Session::new(TIMEOUT);
    s.handle(card("**** 1111"), t0);
    let request = created(s.handle(refund(r#","receipt_id":"RCP-2""#), t0));
    assert_eq!(request.draft.masked_pan.as_deref(), Some("**** 1111"));
    s.handle(scan("RCP-1"), t0);
    assert_eq!(nak_code(s.handle(refund(r#","receipt_id":"RCP-2""#), t0)), "receipt_mismatch");
}

#[test]
fn card_before_scan_is_kept_and_a_new_receipt_starts_afresh() {
    let t0 = Instant::now();
    let mut s = Session::new(TIMEOUT);
    s.handle(card("**** 2257"), t0);
    s.handle(scan("RCP-1"), t0);
    s.handle(scan("RCP-1"), t0);
    assert_eq!(created(s.handle(refund(""), t0)).draft.masked_pan.as_deref(), Some("**** 2257"));
    s.handle(scan("RCP-2"), t0);
    let request = created(s.handle(refund(""), t0));
    assert_eq!((request.draft.receipt_id.as_deref(), request.draft.masked_pan), (Some("RCP-2"), None));
}

#[test]
fn cancel_ends_the_session() {
    let t0 = Instant::now();
    let mut s = Session::new(TIMEOUT);
    s.handle(scan("RCP-1"), t0);
    assert_eq!(s.handle(event(r#"{"type":"cancel","seq":3}"#), t0), Action::Reply(Reply::ack(Some(3))));
    assert_eq!(nak_code(s.handle(refund(""), t0)), "no_receipt_scanned");
}

#[test]
fn an_idle_session_is_abandoned() {
    let t0 = Instant::now();
    let mut s = Session::new(TIMEOUT);
    s.handle(scan("RCP-1"), t0);
    s.handle(card("**** 2257"), t0 + Duration::from_secs(100));
    assert_eq!(s.deadline(), Some(t0 + Duration::from_secs(220)));
    assert!(!s.expire(t0 + Duration::from_secs(220)));
    let late = t0 + Duration::from_secs(221);
    assert_eq!(nak_code(s.handle(refund(""), late)), "session_expired");
    assert_eq!(nak_code(s.handle(refund(""), late)), "session_expired");
    // A refund that names its receipt is still fine, and a new scan starts a new session.
    assert!(matches!(s.handle(refund(r#","receipt_id":"RCP-1""#), late), Action::CreateRefund(_)));
    s.handle(scan("RCP-1"), late);
    assert_eq!(created(s.handle(refund(""), late)).draft.masked_pan, None);
}

#[test]
fn a_resend_after_commit_gets_the_same_request() {
    let t0 = Instant::now();
    let mut s = Session::new(TIMEOUT);
    s.handle(scan("RCP-1"), t0);
    s.handle(card("**** 2257"), t0);
    let frame = refund(r#","request_id":"req-1""#);
    let first = created(s.handle(frame.clone(), t0));
    s.committed(&first);
    let late = t0 + 10 * TIMEOUT;
    s.handle(scan("RCP-NEXT"), late);
    let again = created(s.handle(frame, late));
    assert_eq!((&again.draft, &again.key), (&first.draft, &first.key));
    // Answering the resend does not end the next customer's session.
    s.committed(&again);
    assert_eq!(s.scanned(), Some("RCP-NEXT"));
    s.handle(event(r#"{"type":"cancel"}"#), late);
    // The same request id with other details is not a resend: it needs its own session.
    assert_eq!(
        nak_code(s.handle(refund(r#","request_id":"req-1","amount":"6.00""#), late)),
        "no_receipt_scanned"
    );
    let bad = refund(&format!(r#","request_id":"{}""#, "x".repeat(MAX_REQUEST_ID + 1)));
    assert_eq!(nak_code(s.handle(bad, t0)), "invalid_request");
    assert_eq!(nak_code(s.handle(refund(r#","request_id":"a b""#), t0)), "invalid_request");
}

#[test]
fn a_receipt_becomes_the_ledger_input() {
    let json = crate::sale::tests::example_input();
    let mut value = serde_json::to_value(&json).expect("serializes");
    value["type"] = "receipt".into();
    value["seq"] = 4.into();
    let mut s = Session::new(TIMEOUT);
    let action = s.handle(event(&value.to_string()), Instant::now());
    assert_eq!(action, Action::AddSale { seq: Some(4), sale: Box::new(json) });
}

/// One step of a random cashier: 0..3 picks the receipt, card or operation.
#[derive(Debug, Clone)]
enum Step {
    Scan(u8),
    Card(u8),
    Cancel,
    Refund { named: Option<u8>, request: Option<u8> },
    Wait(u64),
    Commit,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..3).prop_map(Step::Scan),
        (0u8..3).prop_map(Step::Card),
        Just(Step::Cancel),
        (proptest::option::of(0u8..3), proptest::option::of(0u8..3))
            .prop_map(|(named, request)| Step::Refund { named, request }),
        (0u64..200).prop_map(Step::Wait),
        Just(Step::Commit),
    ]
}

proptest! {
    /// Whatever the cashier does: every reply echoes `seq`, every refund names exactly one
    /// sale, a session refund uses the latest scan and card, and nothing is refunded from a
    /// session idle for longer than the timeout.
    #[test]
    fn session_invariants(steps in proptest::collection::vec(step(), 0..60)) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut s = Session::new(TIMEOUT);
        let mut last: Option<RefundRequest> = None;
        // The model: the scan and card of the live session and when it was last touched.
        let (mut receipt, mut pan, mut touched): (Option<String>, Option<String>, Option<Instant>) =
            (None, None, None);
        for step in steps {
            if touched.is_some_and(|t| now > t + TIMEOUT) {
                (receipt, pan, touched) = (None, None, None);
            }
            match step {
                Step::Wait(secs) => now += Duration::from_secs(secs),
                Step::Commit => {
                    if let Some(request) = last.take() {
                        s.committed(&request);
                        if !request.resend {
                            (receipt, pan, touched) = (None, None, None);
                        }
                    }
                }
                Step::Scan(n) => {
                    let id = format!("R{n}");
                    if receipt.as_ref().is_some_and(|r| *r != id) {
                        pan = None;
                    }
                    (receipt, touched) = (Some(id.clone()), Some(now));
                    prop_assert_eq!(s.handle(scan(&id), now), Action::Reply(Reply::ack(None)));
                }
                Step::Card(n) => {
                    let masked = format!("****{n}{n}{n}{n}");
                    (pan, touched) = (Some(masked.clone()), Some(now));
                    prop_assert_eq!(s.handle(card(&masked), now), Action::Reply(Reply::ack(None)));
                }
                Step::Cancel => {
                    (receipt, pan, touched) = (None, None, None);
                    s.handle(event(r#"{"type":"cancel"}"#), now);
                }
                Step::Refund { named, request } => {
                    let mut extra = String::new();
                    if let Some(n) = named {
                        extra.push_str(&format!(r#","receipt_id":"R{n}""#));
                    }
                    if let Some(n) = request {
                        extra.push_str(&format!(r#","request_id":"q{n}""#));
                    }
                    let frame = refund(&extra);
                    let replay = request.is_some_and(|n| {
                        s.remembered.iter().any(|(r, e, _)| *r == format!("q{n}") && *e == frame.event)
                    });
                    match s.handle(frame, now) {
                        Action::CreateRefund(r) => {
                            prop_assert_eq!(r.seq, Some(7));
                            prop_assert!(r.draft.sale_ref().is_ok());
                            if !replay {
                                let expected = named.map(|n| format!("R{n}")).or(receipt.clone());
                                prop_assert_eq!(&r.draft.receipt_id, &expected);
                                prop_assert_eq!(&r.draft.masked_pan, &pan);
                            }
                            last = Some(*r);
                        }
                        Action::Reply(Reply::Nak { seq, .. }) => prop_assert_eq!(seq, Some(7)),
                        other => prop_assert!(false, "unexpected {:?}", other),
                    }
                    if !replay && touched.is_some() {
                        touched = Some(now);
                    }
                }
            }
        }
    }
}

#[test]
fn a_request_id_holding_a_pan_is_refused() {
    let t0 = Instant::now();
    let mut s = Session::new(TIMEOUT);
    s.handle(scan("RCP-1"), t0);
    // The sanitizer has masked the PAN before the session sees it; the masked form is refused
    // as card data all the same, so it never becomes an idempotency key.
    for id in ["4111111111111111", "4111.1111.1111.1111", "41111111111111112512"] {
        let action = s.handle(refund(&format!(r#","request_id":"{id}""#)), t0);
        assert_eq!(nak_code(action), "card_data_in_field", "{id}");
    }
    let plain = created(s.handle(refund(r#","request_id":"till-7-0001""#), t0));
    assert_eq!(plain.key.as_deref(), Some("terminal:till-7-0001"));
}
