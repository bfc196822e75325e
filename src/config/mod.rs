//! Configuration (SPEC section 9): TOML, unknown keys refused by name, durations as `"10s"`,
//! amounts as decimal strings, secrets in files that only the agent's user may read, plain
//! `http://` only towards loopback hosts.
//!
//! Environment overrides: `REFUND_AGENT__SECTION__KEY=value` sets `[section] key`, e.g.
//! `REFUND_AGENT__AGENT__STATE_DIR=/tmp/state`. The value is read as TOML when it parses as
//! one (numbers, booleans, quoted strings), otherwise as a plain string.
//!
//! Loading runs in this order, one module per step:
//!
//! 1. [`env`]: the overrides are written into the parsed TOML table;
//! 2. [`raw`]: the table becomes the serde structs, which refuse unknown keys;
//! 3. [`validate`]: the raw structs become the typed [`Config`], every rule naming its key;
//!    each `[destinations.NAME]` table is dispatched on its `kind` by [`destination`] to the
//!    connector's own `config.rs` in `src/destinations/`.
//!
//! Secret files ([`secret`]) are only located while loading; they are read when the daemon
//! builds what needs them, so checking a config's text never touches them.

mod destination;
mod env;
pub mod limits;
mod raw;
mod secret;
mod terminal;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::money::Currency;
use crate::refund::CurrencyLimits;
use crate::routing::Route;
use crate::terminal::codec::Framing;

pub use destination::{Destination, DestinationContext, DestinationKind};
pub use secret::{read_secret, Secret, SecretFile};
pub use terminal::{ZvtTerminalSettings, ZVT_KEEPALIVE};
pub use validate::{base_url_checked, duration};

#[cfg(test)]
pub(crate) use destination::parse_for_test;

/// The default config path.
pub const DEFAULT_PATH: &str = "/etc/refund-agent/config.toml";

/// Why the configuration cannot be used. Every message names the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error("secret file {path}: {message}")]
    Secret { path: PathBuf, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub terminal_id: String,
    pub state_dir: PathBuf,
    pub default_currency: Currency,
    pub seal_key_file: PathBuf,
    pub retention: Option<Duration>,
    pub socket: PathBuf,
    pub socket_group: Option<String>,
    pub tcp: Option<SocketAddr>,
    /// The bearer token every TCP request must carry; set whenever `tcp` is.
    pub tcp_token_file: Option<PathBuf>,
    /// The `Origin`s a browser page may call the TCP listener from.
    pub allowed_origins: Vec<String>,
    /// `[terminal]` as a serial line speaking JSON or barcodes.
    pub terminal: Option<TerminalSettings>,
    /// `[terminal]` as a ZVT payment terminal (`framing = "zvt"` or `zvt_address`); never set
    /// together with `terminal`.
    pub zvt_terminal: Option<ZvtTerminalSettings>,
    /// Amount limits per currency; refunds in a currency missing here are refused.
    pub limits: HashMap<Currency, CurrencyLimits>,
    pub max_queue_len: Option<u64>,
    pub max_pending_age: Option<Duration>,
    pub allow_unlinked: bool,
    /// `limits.managers_file`: manager ids and argon2id PIN hashes (`manager::Managers`).
    /// Without it no manager approval can be given.
    pub managers_file: Option<PathBuf>,
    pub sync: SyncSettings,
    pub destinations: Vec<Destination>,
    pub routes: Vec<Route>,
}

/// `[sync]`: timeouts and retry backoff.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncSettings {
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// When a destination is reachable again, the worker waits a random time up to this before
    /// sending its queue, so the tills of a store whose network returns do not all hit the
    /// cloud at the same moment. Probes are spread the same way (`sync::worker`).
    pub return_jitter: Duration,
}

/// `[terminal]`, checked once at load: the serial device and how to speak to it. The terminal
/// uses these values as they are, so a name in the file is interpreted in one place only.
#[derive(Debug, Clone, PartialEq)]
pub struct TerminalSettings {
    pub device: PathBuf,
    pub baud: u32,
    pub framing: Framing,
    pub parity: serialport::Parity,
    /// How long a half-finished scan → card → refund session waits before it is abandoned.
    pub session_timeout: Duration,
}

impl Config {
    /// Reads, overrides from the environment and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::from_toml(&text, path, std::env::vars())
    }

    /// Parses config text; `env` supplies the `REFUND_AGENT__…` overrides.
    pub fn from_toml(
        text: &str,
        path: &Path,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let parse_err = |message: String| ConfigError::Parse { path: path.to_path_buf(), message };
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
        env::apply(&mut table, env)?;
        let raw: raw::RawConfig =
            table.try_into().map_err(|e: toml::de::Error| parse_err(e.message().to_string()))?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        validate::validate(raw, path, &base_dir)
    }

    /// The seal key, read with the same permission rules as every secret.
    pub fn seal_key(&self) -> Result<Secret, ConfigError> {
        read_secret(&self.seal_key_file)
    }
}
