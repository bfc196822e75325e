//! How Olive answers are read (seed 004). Success is `{"success": true,
//! "refund_transaction_id": …}`; the seed documents 400 `INVALID_AMOUNT` / `ALREADY_REFUNDED`,
//! 401 (HMAC auth), 403, 404 `TXN_NOT_FOUND` and 500 but not the error body, so every plausible
//! shape is read and the server's own code and message are kept. Pure.

use std::time::Duration;

use serde_json::Value;

use crate::destinations::clock::{is_skewed, Observed};
use crate::destinations::{http, Attempt};

/// Classifies an answer. `skew_ms` is the server's clock (its `Date` header) minus the time the
/// request was signed with, when the answer had a `Date`: it tells a 401 caused by a wrong till
/// clock from one caused by wrong credentials. `observed` is what the clock offset made of that
/// `Date`: only a skew it accepts (or waits to confirm) is worth signing again at once.
pub fn classify(
    status: u16,
    body: &str,
    retry_after: Option<Duration>,
    skew_ms: Option<i64>,
    observed: Observed,
) -> Attempt {
    match status {
        200..=299 => classify_success(status, body),
        401 => match skew_ms {
            Some(skew) if is_skewed(skew) => stale_signature(describe(status, body), skew, observed),
            _ => Attempt::Failed(format!(
                "credentials refused (check api_key_id and hmac_secret_file): {}",
                describe(status, body)
            )),
        },
        403 => Attempt::Failed(format!(
            "this API key may not make refunds: {}",
            describe(status, body)
        )),
        404 if error_of(body).code.as_deref() == Some("TXN_NOT_FOUND") => {
            Attempt::Declined(describe(status, body))
        }
        400 | 422 => match error_of(body).code.as_deref() {
            Some("ALREADY_REFUNDED") => Attempt::Declined(format!(
                "already refunded: Olive says the original transaction was refunded before, no money moved this time ({})",
                describe(status, body)
            )),
            _ => Attempt::Declined(describe(status, body)),
        },
        // Olive does not deduplicate: a 500, 502 or 504 may follow the refund. Anything else (a
        // 404 without Olive's code is a wrong base_url) is not about the refund.
        _ => http::retry_status(status, super::CAPABILITY, retry_after, || describe(status, body))
            .unwrap_or_else(|| Attempt::Failed(describe(status, body))),
    }
}

/// A 401 that the clocks explain: nothing was processed, so it is sent again, at once when the
/// next signature will use (or confirm) Olive's time, after backoff when the clock refuses it.
fn stale_signature(described: String, skew_ms: i64, observed: Observed) -> Attempt {
    let secs = skew_ms / 1000;
    let (retry_after, then) = match observed {
        Observed::Adopted | Observed::Kept => (Some(Duration::ZERO), "signing again with the corrected time"),
        Observed::Awaiting => (Some(Duration::ZERO), "signing again to confirm Olive's time"),
        Observed::Disagreed => (None, "Olive's Date headers disagree, so the clock is not corrected yet"),
        Observed::OutOfRange | Observed::NoDate | Observed::Untrusted => {
            (None, "more than the 24 h the agent corrects: check the till's clock (NTP)")
        }
    };
    Attempt::Transient {
        retry_after,
        error: format!("{described}; the till's clock is {secs} s off Olive's, {then}"),
    }
}

fn classify_success(status: u16, body: &str) -> Attempt {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let remote_id = parsed.as_ref().and_then(|v| v.get("refund_transaction_id")).and_then(|id| match id {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    let success = parsed.as_ref().and_then(|v| v.get("success")).and_then(Value::as_bool);
    match (success, remote_id) {
        (Some(true), remote_id) | (None, remote_id @ Some(_)) => Attempt::Delivered { remote_id },
        (Some(false), _) => Attempt::Declined(describe(status, body)),
        // The request was processed but the answer does not say whether money moved: a person
        // must look, exactly as when no answer came back.
        (None, None) => {
            Attempt::Ambiguous(format!("HTTP {status} without a readable outcome: {}", snippet(body)))
        }
    }
}

/// The code and message of an error body, whichever plausible shape it has:
/// `{"success":false,"error":{"code","message"}}`, `{"code","message"}` or
/// `{"error":"…","message":"…"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorBody {
    pub code: Option<String>,
    pub message: Option<String>,
}

pub fn error_of(body: &str) -> ErrorBody {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return ErrorBody::default();
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let nested = v.get("error").filter(|e| e.is_object());
    let flat_error = text(v.get("error"));
    let code = text(nested.and_then(|e| e.get("code")))
        .or_else(|| text(v.get("code")))
        .or_else(|| text(v.get("error_code")))
        .or_else(|| flat_error.clone().filter(|e| looks_like_code(e)));
    let message = text(nested.and_then(|e| e.get("message")))
        .or_else(|| text(v.get("message")))
        .or_else(|| text(v.get("detail")))
        .or_else(|| flat_error.filter(|e| !looks_like_code(e)));
    ErrorBody { code, message }
}

/// `ALREADY_REFUNDED`, not `Bad Request`.
fn looks_like_code(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// `HTTP 400 ALREADY_REFUNDED: Transaction txn_1 was already refunded`, from the error body when
/// it has one.
pub fn describe(status: u16, body: &str) -> String {
    let e = error_of(body);
    let mut text = format!("HTTP {status}");
    if let Some(code) = &e.code {
        text.push(' ');
        text.push_str(code);
    }
    match (&e.message, e.code.is_none() && e.message.is_none()) {
        (Some(m), _) => {
            text.push_str(": ");
            text.push_str(m);
        }
        (None, true) if !body.trim().is_empty() => {
            text.push_str(": ");
            text.push_str(&snippet(body));
        }
        _ => {}
    }
    text
}

fn snippet(body: &str) -> String {
    body.trim().chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: Observed = Observed::Kept;

    fn nested(code: &str, msg: &str) -> String {
        format!(r#"{{"success":false,"error":{{"code":"{code}","message":"{msg}"}}}}"#)
    }

    #[test]
    fn success_is_delivered_with_the_refund_transaction_id() {
        let body = r#"{"success":true,"message":"Refund processed successfully","refund_transaction_id":"rfnd_abc789","amount":"1,500.00 SLE"}"#;
        assert_eq!(
            classify(200, body, None, Some(0), K),
            Attempt::Delivered { remote_id: Some("rfnd_abc789".into()) }
        );
    }

    #[test]
    fn a_blank_refund_transaction_id_is_no_id() {
        let body = r#"{"success":true,"refund_transaction_id":" "}"#;
        assert_eq!(classify(200, body, None, None, K), Attempt::Delivered { remote_id: None });
        // Without `success`, a blank id says nothing about the outcome.
        assert!(matches!(
            classify(200, r#"{"refund_transaction_id":""}"#, None, None, K),
            Attempt::Ambiguous(_)
        ));
    }

    #[test]
    fn success_false_is_declined_with_the_message() {
        let body = r#"{"success":false,"message":"Refund window has closed"}"#;
        assert_eq!(
            classify(200, body, None, None, K),
            Attempt::Declined("HTTP 200: Refund window has closed".into())
        );
    }

    #[test]
    fn an_unreadable_success_is_ambiguous_not_delivered() {
        assert!(matches!(
            classify(200, "<html>ok</html>", None, None, K),
            Attempt::Ambiguous(m) if m.contains("<html>")
        ));
    }

    #[test]
    fn invalid_amount_and_already_refunded_are_declined_with_code_and_message() {
        let a = classify(400, &nested("INVALID_AMOUNT", "Amount exceeds refundable balance"), None, None, K);
        assert_eq!(a, Attempt::Declined("HTTP 400 INVALID_AMOUNT: Amount exceeds refundable balance".into()));
        let Attempt::Declined(m) = classify(
            400,
            &nested("ALREADY_REFUNDED", "Transaction txn_1 was already refunded"),
            None,
            None,
            K,
        ) else {
            panic!("declined expected");
        };
        assert!(m.starts_with("already refunded"), "{m}");
        assert!(m.contains("ALREADY_REFUNDED: Transaction txn_1 was already refunded"), "{m}");
    }

    #[test]
    fn every_error_body_shape_keeps_the_server_message() {
        for body in [
            nested("TXN_NOT_FOUND", "No such transaction"),
            r#"{"code":"TXN_NOT_FOUND","message":"No such transaction"}"#.to_string(),
            r#"{"error":"TXN_NOT_FOUND","message":"No such transaction"}"#.to_string(),
        ] {
            assert_eq!(
                classify(404, &body, None, None, K),
                Attempt::Declined("HTTP 404 TXN_NOT_FOUND: No such transaction".into()),
                "{body}"
            );
        }
        assert_eq!(
            describe(400, r#"{"error":"Bad Request","message":"amount is required"}"#),
            "HTTP 400: amount is required"
        );
        assert_eq!(describe(400, r#"{"error":"amount is required"}"#), "HTTP 400: amount is required");
        assert_eq!(describe(502, "Bad gateway\n"), "HTTP 502: Bad gateway");
        assert_eq!(describe(500, ""), "HTTP 500");
    }

    #[test]
    fn a_404_without_olives_code_is_a_configuration_failure() {
        assert!(matches!(classify(404, "Not Found", None, None, K), Attempt::Failed(_)));
    }

    #[test]
    fn a_401_with_a_skewed_clock_is_retried_at_once() {
        let body = nested("INVALID_TIMESTAMP", "Timestamp outside the allowed window");
        let a = classify(401, &body, None, Some(3_600_400), K);
        match a {
            Attempt::Transient { retry_after, error } => {
                assert_eq!(retry_after, Some(Duration::ZERO));
                assert!(error.contains("3600 s off"), "{error}");
                assert!(error.contains("Timestamp outside"), "{error}");
            }
            other => panic!("expected transient, got {other:?}"),
        }
        assert!(matches!(classify(401, &body, None, Some(-61_000), K), Attempt::Transient { .. }));
    }

    #[test]
    fn a_401_with_a_right_clock_is_refused_credentials() {
        let body = nested("INVALID_SIGNATURE", "Signature mismatch");
        for skew in [Some(0), Some(59_000), None] {
            let Attempt::Failed(m) = classify(401, &body, None, skew, K) else {
                panic!("failed expected for {skew:?}");
            };
            assert!(m.starts_with("credentials refused"), "{m}");
            assert!(m.contains("Signature mismatch"), "{m}");
        }
    }

    #[test]
    fn forbidden_is_failed() {
        let Attempt::Failed(m) = classify(403, &nested("FORBIDDEN", "Key lacks refund scope"), None, None, K)
        else {
            panic!("failed expected");
        };
        assert!(m.contains("HTTP 403 FORBIDDEN: Key lacks refund scope"), "{m}");
    }

    #[test]
    fn only_unprocessed_statuses_retry_with_retry_after() {
        for s in [408, 429, 503] {
            let a = classify(s, "", Some(Duration::from_secs(3)), None, K);
            assert!(
                matches!(a, Attempt::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(3)),
                "{s}"
            );
        }
        // The money may have moved before the error: like a lost answer.
        for s in [500, 502, 504, 520] {
            let a = classify(s, &nested("INTERNAL", "boom"), Some(Duration::from_secs(3)), None, K);
            assert!(matches!(&a, Attempt::Ambiguous(m) if m.contains("boom")), "{s}: {a:?}");
        }
    }

    #[test]
    fn a_stale_signature_is_signed_again_at_once_only_when_the_clock_takes_the_date() {
        let body = nested("INVALID_TIMESTAMP", "Timestamp outside the allowed window");
        for observed in [Observed::Adopted, Observed::Awaiting, Observed::Kept] {
            let a = classify(401, &body, None, Some(3_600_400), observed);
            assert!(
                matches!(a, Attempt::Transient { retry_after: Some(Duration::ZERO), .. }),
                "{observed:?}"
            );
        }
        for observed in [Observed::OutOfRange, Observed::Disagreed] {
            let a = classify(401, &body, None, Some(30 * 86_400_000), observed);
            assert!(matches!(&a, Attempt::Transient { retry_after: None, .. }), "{observed:?}: {a:?}");
        }
    }
}
