//! Final POS (seeds 000, 001, 003): the POS back office. A delivery is two requests: the refund
//! record (`POST /v1/api/refunds`, step 0), then its transaction record
//! (`POST /v1/api/transactions`, step 1). Final POS answers `409` to a refund whose `externalId`
//! it has seen, so it deduplicates: an ambiguous request is simply sent again.

pub mod classify;
mod config;
pub mod request;

use std::fmt;

use crate::config::{ConfigError, Secret};
use crate::destinations::clock::ClockOffset;
use crate::destinations::http;
use crate::destinations::{Attempt, Capability};
use crate::queue::Claim;
use classify::Request;
pub use config::{FinalPosConfig, FinalPosSettings};

/// Final POS deduplicates on `externalId` and records refunds (it moves no money).
pub const CAPABILITY: Capability = Capability { dedup: true, moves_money: false };

/// The Final POS connector.
pub struct FinalPos {
    base_url: reqwest::Url,
    api_key: Secret<String>,
    client: reqwest::Client,
    clock: ClockOffset,
    users: request::Users,
}

impl fmt::Debug for FinalPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FinalPos").field("base_url", &self.base_url.as_str()).finish_non_exhaustive()
    }
}

impl FinalPos {
    /// Builds the connector, reading its API key.
    pub fn new(settings: &FinalPosSettings, client: reqwest::Client) -> Result<FinalPos, ConfigError> {
        let api_key = settings.api_key()?;
        Ok(FinalPos {
            base_url: settings.base_url.clone(),
            api_key,
            client,
            clock: ClockOffset::new(),
            users: settings.users.clone(),
        })
    }

    /// The measured offset of Final POS's clock (from its `Date` headers), for status.
    pub fn clock(&self) -> &ClockOffset {
        &self.clock
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url.as_str().trim_end_matches('/'), path)
    }

    /// Makes the claimed delivery's next request.
    pub async fn attempt(&self, claim: &Claim) -> Attempt {
        let (request, path, body) = if claim.step == 0 {
            (Request::Refund, "/v1/api/refunds", request::refund_body(&claim.refund, &self.users))
        } else {
            (
                Request::Transaction,
                "/v1/api/transactions",
                request::transaction_body(&claim.refund, claim.remote_id.as_deref(), &self.users),
            )
        };
        let bytes = match serde_json::to_vec(&body) {
            Ok(b) => b,
            Err(e) => return Attempt::Failed(format!("cannot encode the request: {e}")),
        };
        let builder = self
            .client
            .post(self.url(path))
            .header("x-api-key", self.api_key.expose())
            .header("content-type", "application/json")
            .body(bytes);
        http::exchange(builder, &self.clock, http::is_success, |r, _| {
            classify::classify(request, r.status, &r.body, r.retry_after, claim.remote_id.clone())
        })
        .await
    }
}
