//! `kind = "finalpos"`: the `[destinations.NAME]` table as written, and the settings the
//! connector is built from.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::{ConfigError, DestinationContext, Secret, SecretFile};

/// A Final POS table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinalPosConfig {
    base_url: String,
    api_key_file: String,
    /// Final POS user ids by till operator id (`users = { emp_42 = "507f…" }`), for the fields
    /// that hold a Final POS user (`refundedBy`, a transaction's `employee`).
    #[serde(default)]
    users: BTreeMap<String, String>,
}

/// A checked Final POS destination.
#[derive(Debug, Clone)]
pub struct FinalPosSettings {
    pub base_url: reqwest::Url,
    /// The key sent as `x-api-key` on every request.
    pub api_key_file: SecretFile,
    /// Final POS user ids by till operator id. An operator not listed is sent only as
    /// `refundedByExternalId`: Final POS refuses a `refundedBy` that is not one of its users.
    pub users: BTreeMap<String, String>,
}

impl FinalPosConfig {
    pub fn validate(self, at: &DestinationContext<'_>) -> Result<FinalPosSettings, ConfigError> {
        for (operator, user) in &self.users {
            if user.trim().is_empty() || crate::text::check("users", user).is_err() {
                return Err(at.invalid(
                    "users",
                    format!("the Final POS user id of operator {operator:?} must be a plain, non-empty id"),
                ));
            }
        }
        Ok(FinalPosSettings {
            base_url: at.base_url(&self.base_url)?,
            api_key_file: at.secret_file(&self.api_key_file),
            users: self.users,
        })
    }
}

impl FinalPosSettings {
    /// Reads the API key; it is text, since it travels in a header.
    pub fn api_key(&self) -> Result<Secret<String>, ConfigError> {
        self.api_key_file.read_text()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{parse_for_test, DestinationKind};

    const TABLE: &str =
        "kind = \"finalpos\"\nbase_url = \"https://api.finalpos.com\"\napi_key_file = \"fp.key\"";

    #[test]
    fn plain_http_to_a_remote_host_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = parse_for_test(&TABLE.replace("https:", "http:"), dir.path()).unwrap_err().to_string();
        assert!(err.contains("destinations.finalpos.base_url"), "{err}");
        assert!(err.contains("only allowed for loopback hosts"), "{err}");
    }

    #[test]
    fn operators_map_to_final_pos_users_and_an_empty_id_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let table = format!("{TABLE}\nusers = {{ emp_42 = \"507f1f77bcf86cd799439099\" }}");
        let Ok(DestinationKind::FinalPos(settings)) = parse_for_test(&table, dir.path()) else {
            panic!("the table does not parse as finalpos");
        };
        assert_eq!(settings.users.get("emp_42").map(String::as_str), Some("507f1f77bcf86cd799439099"));
        let empty = format!("{TABLE}\nusers = {{ emp_42 = \" \" }}");
        let err = parse_for_test(&empty, dir.path()).unwrap_err().to_string();
        assert!(err.contains("destinations.finalpos.users") && err.contains("emp_42"), "{err}");
    }

    #[test]
    fn a_missing_key_file_is_named_when_the_key_is_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let Ok(DestinationKind::FinalPos(settings)) = parse_for_test(TABLE, dir.path()) else {
            panic!("the table does not parse as finalpos");
        };
        assert_eq!(settings.api_key_file.path(), dir.path().join("fp.key"));
        let err = settings.api_key().unwrap_err().to_string();
        assert!(err.starts_with(&format!("secret file {}", dir.path().join("fp.key").display())), "{err}");
    }
}
