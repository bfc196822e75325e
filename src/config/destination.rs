//! The registry of destination kinds: a `[destinations.NAME]` table is dispatched on its `kind`
//! to the connector's own `config.rs` (`src/destinations/KIND/config.rs`), which holds the
//! table's fields and checks them into the settings its connector is built from. Adding an API
//! adds its folder and one line to each enum and match below.

use std::path::Path;

use serde::Deserialize;

use super::{base_url_checked, ConfigError, SecretFile};
use crate::destinations::{finalpos, gateway, olive, zvt};

/// A `[destinations.NAME]` table as written, by `kind`. Each kind refuses unknown keys itself.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum RawDestination {
    FinalPos(finalpos::FinalPosConfig),
    Olive(olive::OliveConfig),
    Gateway(gateway::GatewayConfig),
    Zvt(zvt::ZvtConfig),
}

/// One checked `[destinations.NAME]` table.
#[derive(Debug, Clone)]
pub struct Destination {
    pub name: String,
    pub kind: DestinationKind,
}

/// The API a destination speaks, with its checked settings.
#[derive(Debug, Clone)]
pub enum DestinationKind {
    FinalPos(finalpos::FinalPosSettings),
    Olive(olive::OliveSettings),
    Gateway(gateway::GatewaySettings),
    Zvt(zvt::ZvtSettings),
}

impl DestinationKind {
    /// The `kind` as written in the file.
    pub fn name(&self) -> &'static str {
        match self {
            DestinationKind::FinalPos(_) => "finalpos",
            DestinationKind::Olive(_) => "olive",
            DestinationKind::Gateway(_) => "gateway",
            DestinationKind::Zvt(_) => "zvt",
        }
    }

    /// The base URL of an HTTP destination; `None` for a terminal at the till.
    pub fn base_url(&self) -> Option<&reqwest::Url> {
        match self {
            DestinationKind::FinalPos(s) => Some(&s.base_url),
            DestinationKind::Olive(s) => Some(&s.base_url),
            DestinationKind::Gateway(s) => Some(&s.base_url),
            DestinationKind::Zvt(_) => None,
        }
    }

    /// The file that holds the destination's credential (API key, HMAC secret or token); `None`
    /// for a terminal, whose password is a setting, not a secret.
    pub fn secret_file(&self) -> Option<&SecretFile> {
        match self {
            DestinationKind::FinalPos(s) => Some(&s.api_key_file),
            DestinationKind::Olive(s) => Some(&s.hmac_secret_file),
            DestinationKind::Gateway(s) => Some(&s.token_file),
            DestinationKind::Zvt(_) => None,
        }
    }

    /// Where the destination is, for people: its base URL, or the terminal's address or device.
    pub fn target(&self) -> String {
        match self {
            DestinationKind::Zvt(s) => match &s.endpoint {
                zvt::ZvtEndpoint::Tcp(addr) => format!("zvt://{addr}"),
                zvt::ZvtEndpoint::Serial { device, baud } => format!("{} at {baud} baud", device.display()),
            },
            other => other.base_url().map(|u| u.to_string()).unwrap_or_default(),
        }
    }

    /// The `host:port` a connect probe tries while the destination is unreachable; `None` for a
    /// serial terminal.
    pub fn probe_target(&self) -> Option<String> {
        match self {
            DestinationKind::Zvt(s) => match &s.endpoint {
                zvt::ZvtEndpoint::Tcp(addr) => Some(addr.to_string()),
                zvt::ZvtEndpoint::Serial { .. } => None,
            },
            // `host_str` keeps the brackets of an IPv6 literal, so this is a valid connect target.
            other => {
                let url = other.base_url()?;
                Some(format!("{}:{}", url.host_str()?, url.port_or_known_default()?))
            }
        }
    }
}

impl Destination {
    pub fn base_url(&self) -> Option<&reqwest::Url> {
        self.kind.base_url()
    }
}

/// Where one `[destinations.NAME]` table sits, for the checks every kind shares: errors name
/// `destinations.NAME.KEY`, and relative secret file names resolve next to the config file.
#[derive(Debug)]
pub struct DestinationContext<'a> {
    name: &'a str,
    base_dir: &'a Path,
}

impl DestinationContext<'_> {
    /// Checks the table's `base_url` with [`base_url_checked`].
    pub fn base_url(&self, text: &str) -> Result<reqwest::Url, ConfigError> {
        base_url_checked(&format!("destinations.{}.base_url", self.name), text)
    }

    /// A refusal of the table's `key`, named `destinations.NAME.KEY`.
    pub fn invalid(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid { key: format!("destinations.{}.{key}", self.name), message }
    }

    /// Locates a secret file named in the table; it is read when the connector is built.
    pub fn secret_file(&self, name: &str) -> SecretFile {
        SecretFile::resolve(name, self.base_dir)
    }
}

pub(super) fn validate(
    name: String,
    raw: RawDestination,
    base_dir: &Path,
) -> Result<Destination, ConfigError> {
    let at = DestinationContext { name: &name, base_dir };
    let kind = match raw {
        RawDestination::FinalPos(c) => DestinationKind::FinalPos(c.validate(&at)?),
        RawDestination::Olive(c) => DestinationKind::Olive(c.validate(&at)?),
        RawDestination::Gateway(c) => DestinationKind::Gateway(c.validate(&at)?),
        RawDestination::Zvt(c) => DestinationKind::Zvt(c.validate(&at)?),
    };
    Ok(Destination { name, kind })
}

/// Parses and checks one destination table, named after its `kind`, as loading a config does;
/// relative secret names resolve in `base_dir`. For the connectors' own config tests.
#[cfg(test)]
pub(crate) fn parse_for_test(text: &str, base_dir: &Path) -> Result<DestinationKind, ConfigError> {
    let table: toml::Table = text.parse().expect("test table is TOML");
    let name = table.get("kind").and_then(toml::Value::as_str).unwrap_or("unnamed").to_string();
    let raw: RawDestination = table.try_into().map_err(|e: toml::de::Error| ConfigError::Parse {
        path: base_dir.into(),
        message: e.message().into(),
    })?;
    validate(name, raw, base_dir).map(|d| d.kind)
}
