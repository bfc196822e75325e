//! Fuzzes how each destination's answers are read: status, `Retry-After` and `Date` headers and
//! body bytes → `http::retry_after` / `http::date` → the connector's `classify` → `Attempt`, as
//! `http::send` and the connectors' `attempt` do it (a 3xx never reaches a `classify`:
//! `http::exchange` refuses it first).
//!
//! Input: byte 0 picks the connector (and Final POS's request step), bytes 1..3 the status
//! (100..=999, as an HTTP client can see it); then the `Retry-After` value up to the first `\n`,
//! the `Date` value up to the next `\n`, and the rest is the body.

#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use refund_agent::destinations::clock::{self, ClockOffset, Observed};
use refund_agent::destinations::http::{self, MAX_RETRY_AFTER};
use refund_agent::destinations::olive::sign;
use refund_agent::destinations::{finalpos, gateway, olive, Attempt};
use reqwest::header::{HeaderMap, HeaderValue, DATE, RETRY_AFTER};
use serde_json::Value;

/// The till's clock during the run: 2026-03-10T12:00:00Z.
const LOCAL_NOW_MS: i64 = 1_773_144_000_000;

fuzz_target!(|data: &[u8]| {
    let [pick, hi, lo, rest @ ..] = data else {
        return;
    };
    let status = 100 + u16::from_be_bytes([*hi, *lo]) % 900;
    let mut parts = rest.splitn(3, |&b| b == b'\n');
    let retry_value = parts.next().unwrap_or_default();
    let date_value = parts.next().unwrap_or_default();
    let body = String::from_utf8_lossy(parts.next().unwrap_or_default());

    let mut headers = HeaderMap::new();
    for (name, value) in [(RETRY_AFTER, retry_value), (DATE, date_value)] {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            if !value.is_empty() {
                headers.insert(name, v);
            }
        }
    }
    let now = SystemTime::UNIX_EPOCH + Duration::from_millis(LOCAL_NOW_MS as u64);
    let retry_after = http::retry_after(&headers, now);
    assert!(retry_after.is_none_or(|d| d <= MAX_RETRY_AFTER), "Retry-After above the cap");
    let date = http::date(&headers);

    let attempt = match pick % 4 {
        0 | 1 => {
            let request = if pick % 4 == 0 {
                finalpos::classify::Request::Refund
            } else {
                finalpos::classify::Request::Transaction
            };
            let known = Some("fp_known".to_string());
            let a = finalpos::classify::classify(request, status, &body, retry_after, known);
            check_finalpos(request, status, &body, &a);
            a
        }
        2 => {
            // As `Olive::attempt` and `http::exchange`: the request was signed with the server's
            // time as known before, the skew decides a 401, and only a success or a stale
            // signature's 401 hands its `Date` to the clock offset.
            let clock = ClockOffset::new();
            let signed_ms = clock.server_now_ms(LOCAL_NOW_MS);
            let skew_ms = date.map(|d| clock::measure_ms(d, signed_ms));
            let trusted =
                (200..=299).contains(&status) || (status == 401 && skew_ms.is_some_and(clock::is_skewed));
            let observed = match date {
                None => Observed::NoDate,
                Some(d) if trusted => clock.observe(d, LOCAL_NOW_MS),
                Some(_) => Observed::Untrusted,
            };
            assert!(
                clock.offset_ms().is_none_or(|o| o.unsigned_abs() <= clock::SKEW_TOLERANCE.as_millis() as u64),
                "one answer moved the clock by more than a minute"
            );
            let next = sign::timestamp(clock.server_now_ms(LOCAL_NOW_MS).div_euclid(1000));
            assert_eq!(next.len(), 20, "X-Timestamp {next:?} is not RFC 3339 to the second");
            let a = olive::classify::classify(status, &body, retry_after, skew_ms, observed);
            check_olive(status, &body, skew_ms, &a);
            a
        }
        _ => {
            let a = gateway::classify::classify(status, &body, retry_after);
            check_gateway(status, &body, &a);
            a
        }
    };
    // Final POS deduplicates; Olive and the gateway do not.
    check_common(status, retry_after, pick % 4 < 2, &attempt);
});

/// Rules every connector keeps.
fn check_common(status: u16, retry_after: Option<Duration>, dedup: bool, attempt: &Attempt) {
    if !dedup && (500..=599).contains(&status) && status != 503 {
        assert!(matches!(attempt, Attempt::Ambiguous(_)), "HTTP {status} without dedup became {attempt:?}");
    }
    match attempt {
        Attempt::Delivered { remote_id } | Attempt::Progress { remote_id, .. } => {
            assert!(matches!(status, 200..=299 | 409), "success from HTTP {status}");
            if let Some(id) = remote_id {
                assert!(!id.trim().is_empty(), "success with a blank remote id");
            }
        }
        Attempt::Transient { retry_after: wait, error } => {
            let unprocessed = matches!(status, 401 | 408 | 429 | 503);
            assert!(unprocessed || (dedup && (500..=599).contains(&status)), "HTTP {status} retried");
            if status != 401 {
                assert_eq!(*wait, retry_after, "Retry-After not passed on");
            }
            assert!(error.starts_with(&format!("HTTP {status}")), "{error}");
        }
        Attempt::Declined(m) | Attempt::Failed(m) | Attempt::Ambiguous(m) => {
            assert!(!m.is_empty());
            assert!(!(200..=299).contains(&status) || !matches!(attempt, Attempt::Failed(_)));
        }
        Attempt::Unreachable(_) => panic!("an answer is never `Unreachable`"),
    }
}

fn json(body: &str) -> Option<Value> {
    serde_json::from_str(body).ok()
}

fn check_finalpos(request: finalpos::classify::Request, status: u16, body: &str, a: &Attempt) {
    use finalpos::classify::Request;
    match (request, status) {
        (Request::Refund, 200..=299) => {
            let id = json(body).and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string));
            let id = id.filter(|i| !i.trim().is_empty());
            assert_eq!(*a, Attempt::Progress { step: 1, remote_id: id }, "the refund id was not kept");
        }
        (Request::Refund, 409) => assert_eq!(*a, Attempt::Progress { step: 1, remote_id: None }),
        (Request::Transaction, 200..=299 | 409) => {
            assert_eq!(*a, Attempt::Delivered { remote_id: Some("fp_known".into()) })
        }
        _ => assert!(!matches!(a, Attempt::Delivered { .. } | Attempt::Progress { .. })),
    }
}

fn check_olive(status: u16, body: &str, skew_ms: Option<i64>, a: &Attempt) {
    let v = json(body);
    if let Attempt::Delivered { remote_id } = a {
        assert!((200..=299).contains(&status));
        let v = v.as_ref().expect("Olive success without a JSON body");
        let success = v.get("success").and_then(Value::as_bool);
        assert!(success == Some(true) || (success.is_none() && remote_id.is_some()), "{body}");
        if let Some(id) = remote_id {
            let sent = v.get("refund_transaction_id").expect("an id from nowhere");
            assert!(sent.as_str() == Some(id.as_str()) || sent.to_string() == *id, "id {id} vs {sent}");
        }
    }
    if status == 401 {
        let skewed = skew_ms.is_some_and(clock::is_skewed);
        assert_eq!(matches!(a, Attempt::Transient { .. }), skewed, "401 with skew {skew_ms:?}");
    }
}

fn check_gateway(status: u16, body: &str, a: &Attempt) {
    let v = json(body);
    let outcome = v.as_ref().and_then(|v| v.pointer("/status/status")).and_then(Value::as_str);
    if (200..=299).contains(&status) {
        match outcome {
            Some(s) if s.eq_ignore_ascii_case("approved") => {
                assert!(matches!(a, Attempt::Delivered { .. }), "approved but {a:?}")
            }
            Some(s) if s.eq_ignore_ascii_case("declined") => {
                assert!(matches!(a, Attempt::Declined(_)), "declined but {a:?}")
            }
            // Money may or may not have moved: only a person can tell.
            _ => assert!(matches!(a, Attempt::Ambiguous(_)), "unclear answer became {a:?}"),
        }
    } else {
        assert!(!matches!(a, Attempt::Delivered { .. }));
    }
}
