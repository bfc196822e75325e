//! How Final POS answers are read (seed 003: errors are `{statusCode, message, error}`). Pure.

use std::time::Duration;

use crate::destinations::{http, Attempt};

/// Which request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Refund,
    Transaction,
}

/// Classifies an answer. A `409 Conflict` on our `externalId` means Final POS already has the
/// record: the request is done, not failed.
pub fn classify(
    request: Request,
    status: u16,
    body: &str,
    retry_after: Option<Duration>,
    known_remote: Option<String>,
) -> Attempt {
    let remote_id = || {
        serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("id").and_then(|id| id.as_str().map(str::to_string)))
            // A blank id names nothing; sending it on as `refundId` would link to no record.
            .filter(|id| !id.trim().is_empty())
    };
    match (status, request) {
        (200..=299, Request::Refund) => Attempt::Progress { step: 1, remote_id: remote_id() },
        (409, Request::Refund) => Attempt::Progress { step: 1, remote_id: None },
        (200..=299, Request::Transaction) | (409, Request::Transaction) => {
            Attempt::Delivered { remote_id: known_remote }
        }
        (400 | 422, _) => Attempt::Declined(describe(status, body)),
        // Final POS deduplicates, so even a 5xx that may follow a commit is safe to send again.
        _ => http::retry_status(status, super::CAPABILITY, retry_after, || describe(status, body))
            .unwrap_or_else(|| Attempt::Failed(describe(status, body))),
    }
}

/// `HTTP 400 Bad Request: Validation failed …`, from the error body when it has one.
pub fn describe(status: u16, body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let field = |name: &str| -> Option<String> {
        let v = parsed.as_ref()?.get(name)?;
        match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(items) => {
                Some(items.iter().filter_map(|i| i.as_str()).collect::<Vec<_>>().join("; "))
            }
            _ => None,
        }
    };
    let mut text = format!("HTTP {status}");
    if let Some(error) = field("error") {
        text.push(' ');
        text.push_str(&error);
    }
    match field("message") {
        Some(m) => {
            text.push_str(": ");
            text.push_str(&m);
        }
        None if !body.trim().is_empty() && parsed.is_none() => {
            text.push_str(": ");
            text.extend(body.trim().chars().take(200));
        }
        None => {}
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_refund_moves_to_the_transaction_step() {
        let a = classify(Request::Refund, 201, r#"{"id":"o1p2"}"#, None, None);
        assert_eq!(a, Attempt::Progress { step: 1, remote_id: Some("o1p2".into()) });
    }

    #[test]
    fn a_blank_refund_id_is_no_id() {
        for body in [r#"{"id":""}"#, r#"{"id":"  "}"#] {
            let a = classify(Request::Refund, 201, body, None, None);
            assert_eq!(a, Attempt::Progress { step: 1, remote_id: None }, "{body}");
        }
    }

    #[test]
    fn conflict_means_already_there() {
        assert_eq!(
            classify(Request::Refund, 409, "{}", None, None),
            Attempt::Progress { step: 1, remote_id: None }
        );
        assert_eq!(
            classify(Request::Transaction, 409, "{}", None, Some("r".into())),
            Attempt::Delivered { remote_id: Some("r".into()) }
        );
    }

    #[test]
    fn errors_keep_the_servers_message() {
        let body = r#"{"statusCode":400,"message":"Validation failed: Field `orderId` is required.","error":"Bad Request"}"#;
        assert_eq!(
            classify(Request::Refund, 400, body, None, None),
            Attempt::Declined("HTTP 400 Bad Request: Validation failed: Field `orderId` is required.".into())
        );
        assert!(matches!(classify(Request::Refund, 401, "{}", None, None), Attempt::Failed(_)));
        assert!(matches!(classify(Request::Refund, 404, "{}", None, None), Attempt::Failed(_)));
    }

    #[test]
    fn transient_statuses_retry_with_retry_after() {
        for s in [408, 429, 500, 502, 503, 504] {
            let a = classify(Request::Transaction, s, "", Some(Duration::from_secs(3)), None);
            assert!(
                matches!(a, Attempt::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(3)),
                "{s}"
            );
        }
    }
}
