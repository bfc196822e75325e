//! How the card gateway's answers are read (seed 002). A refund answer is the new transaction
//! record: its `id`, and `status.status` `Approved` or `Declined` with `status.reason`. The seed
//! does not show an error body, so the usual fields are read and the server's message is kept.
//! Pure.

use std::time::Duration;

use serde_json::Value;

use crate::destinations::{http, Attempt};

/// Classifies an answer to `POST /payment/{id}/refund`.
pub fn classify(status: u16, body: &str, retry_after: Option<Duration>) -> Attempt {
    match status {
        200..=299 => classify_record(status, body),
        401 | 403 => Attempt::Failed(format!(
            "the gateway refused the token (check token_file): {}",
            describe(status, body)
        )),
        400 | 404 | 422 => Attempt::Declined(describe(status, body)),
        // The gateway does not deduplicate: a 500, 502 or 504 may follow a refund to the card.
        _ => http::retry_status(status, super::CAPABILITY, retry_after, || describe(status, body))
            .unwrap_or_else(|| Attempt::Failed(describe(status, body))),
    }
}

fn classify_record(status: u16, body: &str) -> Attempt {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let record = parsed.as_ref();
    let outcome = record.and_then(|v| v.pointer("/status/status")).and_then(Value::as_str);
    let remote_id = record.and_then(|v| v.get("id")).and_then(|id| match id {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        _ => None,
    });
    match outcome {
        Some(s) if s.eq_ignore_ascii_case("approved") => Attempt::Delivered { remote_id },
        Some(s) if s.eq_ignore_ascii_case("declined") => {
            let reason = record
                .and_then(|v| v.pointer("/status/reason"))
                .and_then(Value::as_str)
                .filter(|r| !r.trim().is_empty())
                .unwrap_or("no reason given");
            let id = remote_id.map(|i| format!(" (gateway record {i})")).unwrap_or_default();
            Attempt::Declined(format!("declined by the card gateway{id}: {reason}"))
        }
        // Processed, but the answer does not say whether money moved: a person must look.
        Some(other) => Attempt::Ambiguous(format!(
            "HTTP {status} with refund status {other:?}, neither Approved nor Declined"
        )),
        None => Attempt::Ambiguous(format!("HTTP {status} without a refund status: {}", snippet(body))),
    }
}

/// `HTTP 404: Payment 882 not found`, from the error body when it has one.
pub fn describe(status: u16, body: &str) -> String {
    let mut text = format!("HTTP {status}");
    match message_of(body) {
        Some(m) => {
            text.push_str(": ");
            text.push_str(&m);
        }
        None if !body.trim().is_empty() => {
            text.push_str(": ");
            text.push_str(&snippet(body));
        }
        None => {}
    }
    text
}

/// The message of an error body: `message`, `error` (text or `{message}`), `errors[]`,
/// `status.reason` or `detail`.
fn message_of(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    let text =
        |v: Option<&Value>| v.and_then(Value::as_str).filter(|s| !s.trim().is_empty()).map(str::to_string);
    let errors = v.get("errors").map(|e| match e {
        Value::Array(items) => items
            .iter()
            .filter_map(|i| text(Some(i)).or_else(|| text(i.get("message"))))
            .collect::<Vec<_>>()
            .join("; "),
        Value::Object(fields) => fields
            .iter()
            .map(|(k, m)| format!("{k}: {}", text(Some(m)).unwrap_or_else(|| m.to_string())))
            .collect::<Vec<_>>()
            .join("; "),
        other => text(Some(other)).unwrap_or_default(),
    });
    text(v.get("message"))
        .or_else(|| text(v.pointer("/error/message")))
        .or_else(|| text(v.get("error")))
        .or_else(|| errors.filter(|e| !e.is_empty()))
        .or_else(|| text(v.pointer("/status/reason")))
        .or_else(|| text(v.get("detail")))
}

fn snippet(body: &str) -> String {
    body.trim().chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's example answer, trimmed.
    const APPROVED: &str = r#"{"id": 883, "amount": "1.99", "origin": "API", "type": "Return", "parent": {"id": 882},
        "terminal": {"id": 24}, "externalId": null, "status": {"status": "Approved", "reason": null}}"#;

    #[test]
    fn approved_is_delivered_with_the_record_id() {
        assert_eq!(classify(200, APPROVED, None), Attempt::Delivered { remote_id: Some("883".into()) });
        assert_eq!(
            classify(201, r#"{"id":"r-9","status":{"status":"Approved"}}"#, None),
            Attempt::Delivered { remote_id: Some("r-9".into()) }
        );
    }

    #[test]
    fn a_blank_record_id_is_no_id() {
        let body = r#"{"id":"  ","status":{"status":"Approved"}}"#;
        assert_eq!(classify(200, body, None), Attempt::Delivered { remote_id: None });
    }

    #[test]
    fn declined_keeps_the_reason() {
        let body =
            r#"{"id": 884, "status": {"status": "Declined", "reason": "Amount exceeds captured amount"}}"#;
        assert_eq!(
            classify(200, body, None),
            Attempt::Declined(
                "declined by the card gateway (gateway record 884): Amount exceeds captured amount".into()
            )
        );
        assert_eq!(
            classify(200, r#"{"status":{"status":"Declined","reason":null}}"#, None),
            Attempt::Declined("declined by the card gateway: no reason given".into())
        );
    }

    #[test]
    fn an_unclear_success_is_ambiguous() {
        assert!(matches!(
            classify(200, r#"{"id":885,"status":{"status":"Pending"}}"#, None),
            Attempt::Ambiguous(m) if m.contains("Pending")
        ));
        assert!(matches!(classify(200, "OK", None), Attempt::Ambiguous(_)));
    }

    #[test]
    fn auth_errors_fail() {
        for s in [401, 403] {
            let Attempt::Failed(m) = classify(s, r#"{"message":"Invalid token"}"#, None) else {
                panic!("{s}: failed expected");
            };
            assert!(m.contains(&format!("HTTP {s}: Invalid token")), "{m}");
        }
    }

    #[test]
    fn request_errors_are_declined_with_the_servers_message() {
        let cases = [
            (
                400,
                r#"{"message":"amount must be a positive decimal"}"#,
                "HTTP 400: amount must be a positive decimal",
            ),
            (404, r#"{"error":"Payment 882 not found"}"#, "HTTP 404: Payment 882 not found"),
            (422, r#"{"errors":["terminal.id is required"]}"#, "HTTP 422: terminal.id is required"),
            (422, r#"{"errors":{"amount":"too large"}}"#, "HTTP 422: amount: too large"),
            (400, r#"{"error":{"message":"bad json"}}"#, "HTTP 400: bad json"),
            (404, "Not Found", "HTTP 404: Not Found"),
        ];
        for (status, body, expected) in cases {
            assert_eq!(classify(status, body, None), Attempt::Declined(expected.into()), "{body}");
        }
    }

    #[test]
    fn only_unprocessed_statuses_retry_with_retry_after() {
        for s in [408, 429, 503] {
            let a = classify(s, "", Some(Duration::from_secs(2)));
            assert!(
                matches!(a, Attempt::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(2)),
                "{s}"
            );
        }
        // The card may have been refunded before the error: like a lost answer.
        for s in [500, 502, 504, 599] {
            let a = classify(s, r#"{"message":"upstream timeout"}"#, Some(Duration::from_secs(2)));
            assert!(matches!(&a, Attempt::Ambiguous(m) if m.contains("upstream timeout")), "{s}: {a:?}");
        }
    }

    #[test]
    fn other_statuses_fail() {
        assert!(matches!(classify(409, "{}", None), Attempt::Failed(_)));
        assert!(matches!(classify(302, "", None), Attempt::Failed(_)));
    }
}
