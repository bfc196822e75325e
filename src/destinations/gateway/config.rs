//! `kind = "gateway"`: the `[destinations.NAME]` table as written, and the settings the
//! connector is built from.

use serde::Deserialize;

use crate::config::{ConfigError, DestinationContext, Secret, SecretFile};

/// A card gateway table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    base_url: String,
    token_file: String,
    terminal_id: i64,
}

/// A checked card gateway destination.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub base_url: reqwest::Url,
    /// The Bearer token.
    pub token_file: SecretFile,
    /// The dashboard terminal id sent as `terminal.id`.
    pub terminal_id: i64,
}

impl GatewayConfig {
    pub fn validate(self, at: &DestinationContext<'_>) -> Result<GatewaySettings, ConfigError> {
        let base_url = at.base_url(&self.base_url)?;
        Ok(GatewaySettings {
            base_url,
            token_file: at.secret_file(&self.token_file),
            terminal_id: self.terminal_id,
        })
    }
}

impl GatewaySettings {
    /// Reads the Bearer token; it is text, since it travels in a header.
    pub fn token(&self) -> Result<Secret<String>, ConfigError> {
        self.token_file.read_text()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{parse_for_test, DestinationKind};

    #[test]
    fn a_remote_http_base_url_is_refused_and_the_token_is_read_late() {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = |url: &str| {
            format!("kind = \"gateway\"\nbase_url = \"{url}\"\ntoken_file = \"gw.token\"\nterminal_id = 24")
        };
        let err = parse_for_test(&text("http://gateway.example.com"), dir.path()).unwrap_err().to_string();
        assert!(err.contains("destinations.gateway.base_url"), "{err}");
        // The missing token file does not stop the table from parsing; only reading it fails.
        let parsed = parse_for_test(&text("https://gateway.example.com"), dir.path());
        let Ok(DestinationKind::Gateway(settings)) = parsed else { panic!("not a gateway: {parsed:?}") };
        assert_eq!(settings.terminal_id, 24);
        let err = settings.token().unwrap_err().to_string();
        assert!(err.contains("gw.token"), "{err}");
    }
}
