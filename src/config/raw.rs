//! The configuration file as written: serde structs that refuse unknown keys by name, with the
//! defaults of every optional key. Nothing here is checked beyond its TOML type; that is
//! [`super::validate`]'s job.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::destination::RawDestination;
use crate::routing::Route;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub agent: RawAgent,
    #[serde(default)]
    pub control: RawControl,
    #[serde(default)]
    pub terminal: Option<RawTerminal>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub sync: RawSync,
    #[serde(default)]
    pub destinations: BTreeMap<String, RawDestination>,
    #[serde(default)]
    pub routes: Vec<Route>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub terminal_id: String,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_currency")]
    pub default_currency: String,
    pub seal_key_file: String,
    #[serde(default = "default_retention")]
    pub retention: String,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/refund-agent")
}
fn default_currency() -> String {
    "USD".into()
}
fn default_retention() -> String {
    "30d".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControl {
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    #[serde(default)]
    pub socket_group: Option<String>,
    #[serde(default)]
    pub tcp: Option<String>,
    #[serde(default)]
    pub tcp_token_file: Option<String>,
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

impl Default for RawControl {
    fn default() -> Self {
        RawControl {
            socket: default_socket(),
            socket_group: None,
            tcp: None,
            tcp_token_file: None,
            allowed_origins: Vec::new(),
        }
    }
}

fn default_socket() -> PathBuf {
    PathBuf::from("/run/refund-agent/control.sock")
}

/// `[terminal]`: the serial device or the ZVT terminal's address, with its settings still as
/// the names written in the file. Defaults that depend on the framing (the baud rate) are
/// applied by [`super::terminal`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTerminal {
    #[serde(default)]
    pub device: Option<PathBuf>,
    #[serde(default)]
    pub baud: Option<u32>,
    #[serde(default)]
    pub framing: Option<String>,
    #[serde(default)]
    pub parity: Option<String>,
    #[serde(default)]
    pub session_timeout: Option<String>,
    /// ZVT over TCP: the terminal's `host:port` (usually port 20007).
    #[serde(default)]
    pub zvt_address: Option<String>,
    #[serde(default)]
    pub zvt_password: Option<String>,
    #[serde(default)]
    pub zvt_currency: Option<String>,
    #[serde(default)]
    pub zvt_service_byte: Option<u8>,
    #[serde(default)]
    pub zvt_keepalive: Option<String>,
}

/// `[limits]`. Its amount limits are the default currency's; `[limits.EUR]` and the like hold
/// another currency's. Any other key is an error naming it (the map catches what the named
/// fields do not, since `deny_unknown_fields` does not combine with `flatten`).
#[derive(Debug, Default, Deserialize)]
pub(super) struct RawLimits {
    pub max_refund: Option<String>,
    pub max_pending_total: Option<String>,
    pub max_queue_len: Option<u64>,
    pub max_pending_age: Option<String>,
    #[serde(default)]
    pub allow_unlinked: bool,
    /// Manager ids and argon2id PIN hashes (a secret file).
    #[serde(default)]
    pub managers_file: Option<String>,
    pub max_refunds_per_operator_per_day: Option<u64>,
    pub max_amount_per_operator_per_day: Option<String>,
    pub max_amount_per_till_per_day: Option<String>,
    #[serde(flatten)]
    pub other: std::collections::BTreeMap<String, toml::Value>,
}

/// `[limits.XXX]`: the amount limits of one more currency.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCurrencyLimits {
    pub max_refund: Option<String>,
    pub max_pending_total: Option<String>,
    pub max_refunds_per_operator_per_day: Option<u64>,
    pub max_amount_per_operator_per_day: Option<String>,
    pub max_amount_per_till_per_day: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSync {
    #[serde(default = "d10s")]
    pub request_timeout: String,
    #[serde(default = "d5s")]
    pub connect_timeout: String,
    #[serde(default = "d1s")]
    pub backoff_initial: String,
    #[serde(default = "d5m")]
    pub backoff_max: String,
    #[serde(default = "d5s")]
    pub return_jitter: String,
}

impl Default for RawSync {
    fn default() -> Self {
        RawSync {
            request_timeout: d10s(),
            connect_timeout: d5s(),
            backoff_initial: d1s(),
            backoff_max: d5m(),
            return_jitter: d5s(),
        }
    }
}

fn d10s() -> String {
    "10s".into()
}
fn d5s() -> String {
    "5s".into()
}
fn d1s() -> String {
    "1s".into()
}
fn d5m() -> String {
    "5m".into()
}
