//! Olive POS (seed 004): HMAC-signed POS refunds. One request per delivery,
//! `POST /api/v1/pos/refund` with `{"original_transaction_id","amount","reason","initiated_by"}`,
//! signed over the exact bytes sent with a timestamp Olive accepts for five minutes only.
//!
//! Olive documents no deduplication, so a request whose outcome is unknown (no answer, or a 5xx
//! other than 503) is never sent again (it becomes `unknown` for a person). Because kiosk clocks
//! are often wrong, the `Date` of a success or of a stale signature's 401 updates this
//! destination's [`ClockOffset`] (by the rules in `destinations::clock`), requests are signed
//! with the server's time, and a 401 that a wrong clock explains is signed again at once.

pub mod classify;
mod config;
pub mod sign;

use std::fmt;

use serde::Serialize;

use crate::config::{ConfigError, Secret};
use crate::destinations::clock::{self, ClockOffset};
use crate::destinations::http;
use crate::destinations::{Attempt, Capability};
use crate::queue::Claim;
use crate::refund::ValidRefund;
pub use config::{OliveConfig, OliveSettings};

/// Olive moves money and does not deduplicate.
pub const CAPABILITY: Capability = Capability { dedup: false, moves_money: true };

/// The refund endpoint, below the configured base URL.
pub const REFUND_PATH: &str = "/api/v1/pos/refund";

/// The Olive connector.
pub struct Olive {
    base_url: reqwest::Url,
    api_key_id: String,
    secret: Secret,
    client: reqwest::Client,
    /// Olive's clock as measured from its `Date` headers; requests are signed with it.
    clock: ClockOffset,
}

impl fmt::Debug for Olive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Olive")
            .field("base_url", &self.base_url.as_str())
            .field("api_key_id", &self.api_key_id)
            .finish_non_exhaustive()
    }
}

/// The request body, in the seed's field order.
#[derive(Debug, Serialize)]
struct RefundBody<'a> {
    original_transaction_id: &'a str,
    amount: String,
    reason: &'a str,
    initiated_by: &'a str,
}

/// The exact bytes sent (and signed) for a refund. Pure.
pub fn refund_body(refund: &ValidRefund) -> Result<Vec<u8>, String> {
    let original_transaction_id = refund
        .transaction_id
        .as_deref()
        .or(refund.sale.as_ref().map(|s| s.transaction_id.as_str()))
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| {
            "the refund has no original transaction id, which Olive requires \
             (original_transaction_id); refund it in the Olive back office instead"
                .to_string()
        })?;
    let body = RefundBody {
        original_transaction_id,
        amount: refund.currency.format(refund.amount),
        reason: &refund.reason,
        initiated_by: &refund.operator,
    };
    serde_json::to_vec(&body).map_err(|e| format!("cannot encode the request: {e}"))
}

/// `{base}/api/v1/pos/refund`, keeping any path prefix of the base URL (it is part of what is
/// signed).
pub fn refund_url(base_url: &reqwest::Url) -> Result<reqwest::Url, String> {
    let text = format!("{}{}", base_url.as_str().trim_end_matches('/'), REFUND_PATH);
    reqwest::Url::parse(&text).map_err(|e| format!("base_url {base_url} is unusable: {e}"))
}

impl Olive {
    /// Builds the connector, reading its HMAC secret.
    pub fn new(settings: &OliveSettings, client: reqwest::Client) -> Result<Olive, ConfigError> {
        Ok(Olive {
            base_url: settings.base_url.clone(),
            api_key_id: settings.api_key_id.clone(),
            secret: settings.hmac_secret()?,
            client,
            clock: ClockOffset::new(),
        })
    }

    /// The measured offset of Olive's clock, shared (status reports it).
    pub fn clock(&self) -> &ClockOffset {
        &self.clock
    }

    /// Signs and sends the claimed refund. Each attempt is signed afresh with the current time.
    pub async fn attempt(&self, claim: &Claim) -> Attempt {
        let body = match refund_body(&claim.refund) {
            Ok(b) => b,
            Err(m) => return Attempt::Failed(m),
        };
        let url = match refund_url(&self.base_url) {
            Ok(u) => u,
            Err(m) => return Attempt::Failed(m),
        };
        let signed_ms = self.clock.server_now_ms(crate::clock::now_ms());
        let timestamp = sign::timestamp(signed_ms.div_euclid(1000));
        let signature = sign::signature(self.secret.expose(), "POST", url.path(), &timestamp, &body);
        let builder = self
            .client
            .post(url)
            .header("X-API-Key-ID", &self.api_key_id)
            .header("X-Timestamp", &timestamp)
            .header("X-Signature", signature)
            .header("content-type", "application/json")
            .body(body);
        // How far Olive's clock is from the time this request was signed with: it tells a stale
        // signature from wrong credentials, and only a stale signature's 401 (or a success)
        // vouches for Olive's `Date`.
        let skew = |r: &http::Response| r.date.map(|date| clock::measure_ms(date, signed_ms));
        let stale = |r: &http::Response| r.status == 401 && skew(r).is_some_and(clock::is_skewed);
        http::exchange(
            builder,
            &self.clock,
            |r| http::is_success(r) || stale(r),
            |r, observed| classify::classify(r.status, &r.body, r.retry_after, skew(r), observed),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refund::validate::tests::{example_draft, valid_against_example_sale};

    fn refund(reason: &str) -> ValidRefund {
        valid_against_example_sale(crate::refund::RefundDraft { reason: reason.into(), ..example_draft("5") })
    }

    #[test]
    fn body_is_exactly_the_seed_fields_in_order() {
        let bytes = refund_body(&refund("Customer returned item")).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"original_transaction_id":"txn_123","amount":"5.00","reason":"Customer returned item","initiated_by":"emp_42"}"#
        );
    }

    #[test]
    fn quotes_and_non_ascii_are_plain_json() {
        let bytes = refund_body(&refund(r#"said "kaputt" — zurück"#)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["reason"], r#"said "kaputt" — zurück"#);
        assert!(String::from_utf8(bytes).unwrap().contains("zurück"));
    }

    #[test]
    fn a_refund_without_a_transaction_id_is_not_sent() {
        let mut r = refund("x");
        r.transaction_id = None;
        r.sale = None;
        let err = refund_body(&r).unwrap_err();
        assert!(err.contains("original transaction id"), "{err}");
    }

    #[test]
    fn the_signed_path_keeps_the_base_path_prefix() {
        let plain = refund_url(&"http://127.0.0.1:8080".parse().unwrap()).unwrap();
        assert_eq!(plain.path(), "/api/v1/pos/refund");
        let prefixed = refund_url(&"https://api.example.com/olive/".parse().unwrap()).unwrap();
        assert_eq!(prefixed.path(), "/olive/api/v1/pos/refund");
    }

    #[test]
    fn capability_never_resends_money() {
        assert_eq!(CAPABILITY, Capability { dedup: false, moves_money: true });
    }
}
