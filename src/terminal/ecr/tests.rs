//! The ECR state machine driven by plain APDUs and a hand-moved clock.

use std::time::{Duration, Instant};

use super::*;
use crate::terminal::codec::zvt::Apdu;

const PASSWORD: &str = "000000";

fn apdu(class: u8, instr: u8, data: &[u8]) -> Apdu {
    Apdu::new(class, instr, data.to_vec())
}

fn ack_apdu() -> Apdu {
    apdu(0x80, 0x00, &[])
}

fn refund(amount_minor: u64) -> Request {
    Request::Refund { password: PASSWORD.into(), amount_minor, currency: 978 }
}

#[test]
fn commands_encode_as_the_specification_lays_them_out() {
    let reg = Request::Registration { password: "123456".into(), currency: 978, service_byte: 0x00 };
    assert_eq!(
        reg.apdu().expect("valid").encode().expect("short"),
        [0x06, 0x00, 0x08, 0x12, 0x34, 0x56, CONFIG_BYTE, 0x09, 0x78, 0x03, 0x00]
    );
    let wire = refund(1250).apdu().expect("valid").encode().expect("short");
    assert_eq!(
        wire,
        [0x06, 0x31, 0x0D, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x12, 0x50, 0x49, 0x09, 0x78]
    );
    assert_eq!(Request::ReadCard { timeout_s: 30 }.apdu().expect("valid"), apdu(0x06, 0xC0, &[30]));
    assert_eq!(
        Request::RepeatReceipt { password: PASSWORD.into() }.apdu().expect("valid"),
        apdu(0x06, 0x20, &[0, 0, 0])
    );
    assert_eq!(
        Request::StatusEnquiry { password: PASSWORD.into() }.apdu().expect("valid"),
        apdu(0x05, 0x01, &[0, 0, 0])
    );
    assert_eq!(Request::Abort.apdu().expect("valid"), apdu(0x06, 0xB0, &[]));
    assert_eq!(Request::RepeatReceipt { password: "12345".into() }.apdu(), Err(RequestError::Password));
    assert_eq!(refund(1_000_000_000_000).apdu(), Err(RequestError::Amount(1_000_000_000_000)));
}

#[test]
fn a_refund_with_status_receipt_and_completion() {
    let t0 = Instant::now();
    let (mut ex, _) = Exchange::start(&refund(500), t0, DEFAULT_COMPLETION_TIMEOUT).expect("valid");
    assert_eq!(ex.on_apdu(&ack_apdu(), t0), (None, None));
    assert!(ex.acknowledged());
    // "Insert card" and "PIN entry": acknowledged, no outcome yet.
    let (reply, outcome) = ex.on_apdu(&apdu(0x04, 0xFF, &[0x0A, 0x01]), t0);
    assert_eq!((reply, outcome), (Some(ack_apdu()), None));
    let status = [
        0x27, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x0B, 0x00, 0x00, 0x42, 0x87, 0x00, 0x07, 0x29,
        0x52, 0x00, 0x12, 0x33, 0x22, 0xF0, 0xF8, 0x41, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11,
    ];
    assert_eq!(ex.on_apdu(&apdu(0x04, 0x0F, &status), t0), (Some(ack_apdu()), None));
    assert_eq!(ex.on_apdu(&apdu(0x06, 0xD1, b"\x00GUTSCHRIFT"), t0), (Some(ack_apdu()), None));
    let (reply, outcome) = ex.on_apdu(&apdu(0x06, 0x0F, &[]), t0);
    assert_eq!(reply, Some(ack_apdu()));
    let Some(Outcome::Completed(result)) = outcome else { panic!("not completed: {outcome:?}") };
    assert_eq!(result.result_code, Some(0));
    assert_eq!(result.trace_number.as_deref(), Some("000042"));
    assert_eq!(result.receipt_number.as_deref(), Some("0007"));
    assert_eq!(result.amount_minor, Some(500));
    assert_eq!(result.terminal_id.as_deref(), Some("52001233"));
    assert_eq!(result.card.as_ref().map(crate::sale::CardRef::masked).as_deref(), Some("411111******1111"));
    assert_eq!(result.receipt, ["GUTSCHRIFT"]);
    assert_eq!(result.last_intermediate, Some(0x0A));
    assert_eq!(Outcome::Completed(result).money_moved(), Some(true));
    // Input after the end is ignored.
    assert_eq!(ex.on_apdu(&apdu(0x06, 0x0F, &[]), t0), (None, None));
}

#[test]
fn refusal_abort_and_error_result_move_no_money() {
    let t0 = Instant::now();
    let (mut ex, _) = Exchange::start(&refund(500), t0, DEFAULT_COMPLETION_TIMEOUT).expect("valid");
    let (_, outcome) = ex.on_apdu(&apdu(0x84, 0x83, &[]), t0);
    assert_eq!(outcome, Some(Outcome::Refused { code: 0x83 }));
    assert_eq!(outcome.and_then(|o| o.money_moved()), Some(false));

    let (mut ex, _) = Exchange::start(&refund(500), t0, DEFAULT_COMPLETION_TIMEOUT).expect("valid");
    ex.on_apdu(&ack_apdu(), t0);
    let (reply, outcome) = ex.on_apdu(&apdu(0x06, 0x1E, &[0x6C]), t0);
    assert_eq!(reply, Some(ack_apdu()));
    assert!(matches!(outcome, Some(Outcome::Aborted { code: Some(0x6C), .. })));

    let (mut ex, _) = Exchange::start(&refund(500), t0, DEFAULT_COMPLETION_TIMEOUT).expect("valid");
    ex.on_apdu(&ack_apdu(), t0);
    ex.on_apdu(&apdu(0x04, 0x0F, &[0x27, 0x05]), t0);
    let (_, outcome) = ex.on_apdu(&apdu(0x06, 0x0F, &[]), t0);
    assert_eq!(outcome.and_then(|o| o.money_moved()), Some(false));
}

#[test]
fn timeouts_and_a_dropped_link_leave_the_outcome_unknown() {
    let t0 = Instant::now();
    let (mut ex, _) = Exchange::start(&refund(500), t0, Duration::from_secs(60)).expect("valid");
    assert_eq!(ex.deadline(), t0 + ACK_TIMEOUT);
    assert_eq!(ex.on_deadline(t0 + ACK_TIMEOUT - Duration::from_millis(1)), None);
    let outcome = ex.on_deadline(t0 + ACK_TIMEOUT).expect("no ack in time");
    assert!(matches!(outcome, Outcome::Lost { why: Lost::NoAck, acknowledged: false, .. }));
    assert_eq!(outcome.money_moved(), None);

    // Every message from the terminal restarts the completion timer.
    let (mut ex, _) = Exchange::start(&refund(500), t0, Duration::from_secs(60)).expect("valid");
    ex.on_apdu(&ack_apdu(), t0);
    let t1 = t0 + Duration::from_secs(50);
    ex.on_apdu(&apdu(0x04, 0xFF, &[0x0A]), t1);
    assert_eq!(ex.on_deadline(t0 + Duration::from_secs(61)), None);
    let outcome = ex.on_deadline(t1 + Duration::from_secs(60)).expect("silent terminal");
    assert!(matches!(outcome, Outcome::Lost { why: Lost::Silent, acknowledged: true, .. }));

    let (mut ex, _) = Exchange::start(&refund(500), t0, Duration::from_secs(60)).expect("valid");
    ex.on_apdu(&ack_apdu(), t0);
    let outcome = ex.on_link_lost().expect("lost");
    assert!(matches!(outcome, Outcome::Lost { why: Lost::LinkDropped, acknowledged: true, .. }));
    assert_eq!(ex.on_link_lost(), None);
}

#[test]
fn unknown_commands_are_refused_and_a_missing_ack_is_tolerated() {
    let t0 = Instant::now();
    let (mut ex, _) =
        Exchange::start(&Request::ReadCard { timeout_s: 30 }, t0, DEFAULT_COMPLETION_TIMEOUT).expect("valid");
    // The terminal answers with status information straight away, without 80 00 00.
    let (reply, _) = ex.on_apdu(&apdu(0x04, 0x0F, &[0x27, 0x00]), t0);
    assert_eq!(reply, Some(ack_apdu()));
    assert!(ex.acknowledged());
    let (reply, outcome) = ex.on_apdu(&apdu(0x06, 0x85, &[]), t0);
    assert_eq!((reply, outcome), (Some(apdu(0x84, 0x83, &[])), None));
}

#[test]
fn an_abandoned_exchange_is_lost_once() {
    let t0 = Instant::now();
    let (mut ex, _) =
        Exchange::start(&Request::ReadCard { timeout_s: 30 }, t0, DEFAULT_COMPLETION_TIMEOUT).expect("valid");
    ex.on_apdu(&ack_apdu(), t0);
    let outcome = ex.abandon().expect("lost");
    assert!(matches!(outcome, Outcome::Lost { why: Lost::Abandoned, acknowledged: true, .. }));
    assert_eq!((ex.abandon(), ex.on_link_lost()), (None, None), "one outcome only");
    // An exchange that already ended is not abandoned after the fact.
    let (mut ex, _) = Exchange::start(&Request::Abort, t0, DEFAULT_COMPLETION_TIMEOUT).expect("valid");
    ex.on_apdu(&ack_apdu(), t0);
    let (_, done) = ex.on_apdu(&apdu(0x06, 0x0F, &[]), t0);
    assert!(matches!(done, Some(Outcome::Completed(_))));
    assert_eq!(ex.abandon(), None);
}
