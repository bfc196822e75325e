//! The card gateway (seed 002): the processor that moves the money back to the card. One
//! request per delivery, `POST /payment/{original_payment_id}/refund` with a Bearer token.
//!
//! The seed does not promise that `externalId` is deduplicated, so a request whose outcome is
//! unknown is never sent again (it becomes `unknown` for a person): a second request could
//! refund the card twice.

pub mod classify;
mod config;
pub mod request;

use std::fmt;

use crate::config::{ConfigError, Secret};
use crate::destinations::clock::ClockOffset;
use crate::destinations::http;
use crate::destinations::{Attempt, Capability};
use crate::queue::Claim;
pub use config::{GatewayConfig, GatewaySettings};

/// The gateway moves money and does not promise deduplication.
pub const CAPABILITY: Capability = Capability { dedup: false, moves_money: true };

/// The card gateway connector.
pub struct Gateway {
    base_url: reqwest::Url,
    token: Secret<String>,
    /// The dashboard terminal id sent as `terminal.id`.
    terminal_id: i64,
    client: reqwest::Client,
    /// Measured from every answer's `Date` header; nothing is signed here, status reports it.
    clock: ClockOffset,
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field("base_url", &self.base_url.as_str())
            .field("terminal_id", &self.terminal_id)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Builds the connector, reading its token.
    pub fn new(settings: &GatewaySettings, client: reqwest::Client) -> Result<Gateway, ConfigError> {
        let token = settings.token()?;
        Ok(Gateway {
            base_url: settings.base_url.clone(),
            token,
            terminal_id: settings.terminal_id,
            client,
            clock: ClockOffset::new(),
        })
    }

    /// The measured offset of the gateway's clock, shared (status reports it).
    pub fn clock(&self) -> &ClockOffset {
        &self.clock
    }

    /// Sends the claimed refund.
    pub async fn attempt(&self, claim: &Claim) -> Attempt {
        let url =
            match request::payment_id(&claim.refund).and_then(|id| request::refund_url(&self.base_url, id)) {
                Ok(u) => u,
                Err(m) => return Attempt::Failed(m),
            };
        let body = match serde_json::to_vec(&request::refund_body(&claim.refund, self.terminal_id)) {
            Ok(b) => b,
            Err(e) => return Attempt::Failed(format!("cannot encode the request: {e}")),
        };
        let builder = self
            .client
            .post(url)
            .bearer_auth(self.token.expose())
            .header("content-type", "application/json")
            .body(body);
        http::exchange(builder, &self.clock, http::is_success, |r, _| {
            classify::classify(r.status, &r.body, r.retry_after)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_never_resends_money() {
        assert_eq!(CAPABILITY, Capability { dedup: false, moves_money: true });
    }

    fn test_client() -> reqwest::Client {
        let d = std::time::Duration::from_secs(1);
        http::client(&crate::config::SyncSettings {
            request_timeout: d,
            connect_timeout: d,
            backoff_initial: d,
            backoff_max: d,
            return_jitter: d,
        })
        .unwrap()
    }

    #[test]
    fn debug_never_shows_the_token() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("gw.token");
        std::fs::write(&token, "sekrit-token").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let table = "kind = \"gateway\"\nbase_url = \"https://gw.example.com\"\ntoken_file = \"gw.token\"\nterminal_id = 24";
        let Ok(crate::config::DestinationKind::Gateway(settings)) =
            crate::config::parse_for_test(table, dir.path())
        else {
            panic!("the table does not parse as gateway");
        };
        let g = Gateway::new(&settings, test_client()).unwrap();
        let text = format!("{g:?}");
        assert!(!text.contains("sekrit"), "{text}");
        assert!(text.contains("gw.example.com"), "{text}");
    }
}
