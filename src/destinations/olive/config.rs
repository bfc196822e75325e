//! `kind = "olive"`: the `[destinations.NAME]` table as written, and the settings the connector
//! is built from.

use serde::Deserialize;

use crate::config::{ConfigError, DestinationContext, Secret, SecretFile};

/// An Olive table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OliveConfig {
    base_url: String,
    api_key_id: String,
    hmac_secret_file: String,
}

/// A checked Olive destination.
#[derive(Debug, Clone)]
pub struct OliveSettings {
    pub base_url: reqwest::Url,
    /// Olive's name for the integration, sent as `X-API-Key-ID`; not a secret.
    pub api_key_id: String,
    /// The HMAC key every request is signed with.
    pub hmac_secret_file: SecretFile,
}

impl OliveConfig {
    pub fn validate(self, at: &DestinationContext<'_>) -> Result<OliveSettings, ConfigError> {
        Ok(OliveSettings {
            base_url: at.base_url(&self.base_url)?,
            api_key_id: self.api_key_id,
            hmac_secret_file: at.secret_file(&self.hmac_secret_file),
        })
    }
}

impl OliveSettings {
    /// Reads the HMAC key as bytes: the signature is computed over them as they are.
    pub fn hmac_secret(&self) -> Result<Secret, ConfigError> {
        self.hmac_secret_file.read()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use crate::config::{parse_for_test, DestinationKind};

    fn table(base_url: &str) -> String {
        format!("kind = \"olive\"\nbase_url = \"{base_url}\"\napi_key_id = \"pos_1\"\nhmac_secret_file = \"olive.secret\"")
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(parse_for_test(&table("http://[::1]:8080/olive"), dir.path()).is_ok());
        let err =
            parse_for_test(&table("http://demo.api.vultlocal.com"), dir.path()).unwrap_err().to_string();
        assert!(err.contains("destinations.olive.base_url"), "{err}");
    }

    #[test]
    fn the_secret_must_exist_and_be_private() {
        let dir = tempfile::tempdir().expect("temp dir");
        let Ok(DestinationKind::Olive(settings)) = parse_for_test(&table("https://o.example"), dir.path())
        else {
            panic!("the table does not parse as olive");
        };
        let path = dir.path().join("olive.secret");
        let missing = settings.hmac_secret().unwrap_err().to_string();
        assert!(missing.contains(&path.display().to_string()), "{missing}");
        fs::write(&path, b"k\xffey\n").expect("write secret");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        let shared = settings.hmac_secret().unwrap_err().to_string();
        assert!(shared.contains("chmod 600"), "{shared}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(settings.hmac_secret().expect("private secret").expose(), b"k\xffey");
    }
}
