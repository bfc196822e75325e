//! Configuration (SPEC section 9): TOML, unknown keys refused by name, durations as `"10s"`,
//! amounts as decimal strings, secrets in files that only the agent's user may read, plain
//! `http://` only towards loopback hosts.
//!
//! Environment overrides: `REFUND_AGENT__SECTION__KEY=value` sets `[section] key`, e.g.
//! `REFUND_AGENT__AGENT__STATE_DIR=/tmp/state`. The value is read as TOML when it parses as
//! one (numbers, booleans, quoted strings), otherwise as a plain string.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::money::{parse_amount, Currency};
use crate::refund::CurrencyLimits;
use crate::routing::Route;

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    agent: RawAgent,
    #[serde(default)]
    control: RawControl,
    #[serde(default)]
    terminal: Option<RawTerminal>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    sync: RawSync,
    #[serde(default)]
    destinations: BTreeMap<String, RawDestination>,
    #[serde(default)]
    routes: Vec<Route>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    terminal_id: String,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default = "default_currency")]
    default_currency: String,
    seal_key_file: String,
    #[serde(default = "default_retention")]
    retention: String,
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
struct RawControl {
    #[serde(default = "default_socket")]
    socket: PathBuf,
    #[serde(default)]
    socket_group: Option<String>,
    #[serde(default)]
    tcp: Option<String>,
    #[serde(default)]
    tcp_token_file: Option<String>,
    #[serde(default)]
    allowed_origins: Vec<String>,
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

/// `[terminal]`: the serial device. Parsed and checked here; see README for its status.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawTerminal {
    pub device: PathBuf,
    #[serde(default = "default_baud")]
    pub baud: u32,
    #[serde(default = "default_framing")]
    pub framing: String,
    #[serde(default = "default_parity")]
    pub parity: String,
    #[serde(default)]
    pub session_timeout: Option<String>,
}

fn default_baud() -> u32 {
    115_200
}
fn default_framing() -> String {
    "ndjson".into()
}
fn default_parity() -> String {
    "none".into()
}

/// `[limits]`. Its amount limits are the default currency's; `[limits.EUR]` and the like hold
/// another currency's. Any other key is an error naming it (the map catches what the named
/// fields do not, since `deny_unknown_fields` does not combine with `flatten`).
#[derive(Debug, Default, Deserialize)]
struct RawLimits {
    max_refund: Option<String>,
    max_pending_total: Option<String>,
    max_queue_len: Option<u64>,
    max_pending_age: Option<String>,
    #[serde(default)]
    allow_unlinked: bool,
    #[serde(flatten)]
    other: BTreeMap<String, toml::Value>,
}

/// `[limits.XXX]`: the amount limits of one more currency.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCurrencyLimits {
    max_refund: Option<String>,
    max_pending_total: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    #[serde(default = "d10s")]
    request_timeout: String,
    #[serde(default = "d5s")]
    connect_timeout: String,
    #[serde(default = "d1s")]
    backoff_initial: String,
    #[serde(default = "d5m")]
    backoff_max: String,
}

impl Default for RawSync {
    fn default() -> Self {
        RawSync {
            request_timeout: d10s(),
            connect_timeout: d5s(),
            backoff_initial: d1s(),
            backoff_max: d5m(),
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

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
enum RawDestination {
    #[serde(rename = "finalpos")]
    FinalPos { base_url: String, api_key_file: String },
    #[serde(rename = "olive")]
    Olive { base_url: String, api_key_id: String, hmac_secret_file: String },
    #[serde(rename = "gateway")]
    Gateway { base_url: String, token_file: String, terminal_id: i64 },
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
    pub terminal: Option<RawTerminal>,
    /// Amount limits per currency; refunds in a currency missing here are refused.
    pub limits: HashMap<Currency, CurrencyLimits>,
    pub max_queue_len: Option<u64>,
    pub max_pending_age: Option<Duration>,
    pub allow_unlinked: bool,
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
}

/// One `[destinations.NAME]` table.
#[derive(Debug, Clone)]
pub struct Destination {
    pub name: String,
    pub base_url: reqwest::Url,
    pub kind: DestinationKind,
}

/// The API a destination speaks, with where its secrets live.
#[derive(Debug, Clone)]
pub enum DestinationKind {
    FinalPos { api_key_file: PathBuf },
    Olive { api_key_id: String, hmac_secret_file: PathBuf },
    Gateway { token_file: PathBuf, terminal_id: i64 },
}

impl DestinationKind {
    pub fn name(&self) -> &'static str {
        match self {
            DestinationKind::FinalPos { .. } => "finalpos",
            DestinationKind::Olive { .. } => "olive",
            DestinationKind::Gateway { .. } => "gateway",
        }
    }
}

/// A secret read from a file. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    /// The secret as text (API keys, tokens), without surrounding whitespace.
    pub fn text(&self) -> Result<&str, ConfigError> {
        std::str::from_utf8(&self.0).map(str::trim).map_err(|_| invalid("secret", "is not UTF-8 text"))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
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
        apply_env(&mut table, env)?;
        let raw: RawConfig =
            table.try_into().map_err(|e: toml::de::Error| parse_err(e.message().to_string()))?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        validate(raw, path, &base_dir)
    }

    /// The seal key, read with the same permission rules as every secret.
    pub fn seal_key(&self) -> Result<Secret, ConfigError> {
        read_secret(&self.seal_key_file)
    }
}

fn apply_env(
    table: &mut toml::Table,
    env: impl Iterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, value) in env {
        let Some(path) = name.strip_prefix("REFUND_AGENT__") else {
            continue;
        };
        let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if parts.iter().any(String::is_empty) || parts.len() < 2 {
            return Err(invalid(
                name.clone(),
                "environment override must look like REFUND_AGENT__SECTION__KEY",
            ));
        }
        let parsed: toml::Value = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        let mut cursor = &mut *table;
        for part in &parts[..parts.len() - 1] {
            let entry = cursor.entry(part.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cursor = entry
                .as_table_mut()
                .ok_or_else(|| invalid(name.clone(), format!("`{part}` is not a table")))?;
        }
        cursor.insert(parts[parts.len() - 1].clone(), parsed);
    }
    Ok(())
}

fn validate(raw: RawConfig, path: &Path, base_dir: &Path) -> Result<Config, ConfigError> {
    let a = raw.agent;
    if a.terminal_id.trim().is_empty() {
        return Err(invalid("agent.terminal_id", "must not be empty"));
    }
    let default_currency: Currency = a
        .default_currency
        .parse()
        .map_err(|e: crate::money::AmountError| invalid("agent.default_currency", e.to_string()))?;
    let tcp = raw
        .control
        .tcp
        .as_deref()
        .map(|t| {
            let addr: SocketAddr = t.parse().map_err(|_| {
                invalid("control.tcp", format!("{t:?} is not an address like 127.0.0.1:7878"))
            })?;
            if !addr.ip().is_loopback() {
                return Err(invalid("control.tcp", "the control API may only listen on a loopback address"));
            }
            Ok(addr)
        })
        .transpose()?;
    // Any local program and any web page can reach a loopback port, so TCP is never open
    // without a token.
    let tcp_token_file = raw.control.tcp_token_file.as_deref().map(|f| secret_path(f, base_dir));
    if tcp.is_some() && tcp_token_file.is_none() {
        return Err(invalid("control.tcp_token_file", "is required when control.tcp is set"));
    }
    let s = raw.sync;
    let sync = SyncSettings {
        request_timeout: duration("sync.request_timeout", &s.request_timeout)?,
        connect_timeout: duration("sync.connect_timeout", &s.connect_timeout)?,
        backoff_initial: duration("sync.backoff_initial", &s.backoff_initial)?,
        backoff_max: duration("sync.backoff_max", &s.backoff_max)?,
    };
    if sync.backoff_initial.is_zero() || sync.backoff_max < sync.backoff_initial {
        return Err(invalid(
            "sync.backoff_max",
            "must be at least sync.backoff_initial, which must be above zero",
        ));
    }
    let mut destinations = Vec::new();
    for (name, d) in raw.destinations {
        let key = |k: &str| format!("destinations.{name}.{k}");
        let (url, kind) = match d {
            RawDestination::FinalPos { base_url, api_key_file } => {
                (base_url, DestinationKind::FinalPos { api_key_file: secret_path(&api_key_file, base_dir) })
            }
            RawDestination::Olive { base_url, api_key_id, hmac_secret_file } => (
                base_url,
                DestinationKind::Olive {
                    api_key_id,
                    hmac_secret_file: secret_path(&hmac_secret_file, base_dir),
                },
            ),
            RawDestination::Gateway { base_url, token_file, terminal_id } => (
                base_url,
                DestinationKind::Gateway { token_file: secret_path(&token_file, base_dir), terminal_id },
            ),
        };
        let base_url = base_url_checked(&key("base_url"), &url)?;
        destinations.push(Destination { name, base_url, kind });
    }
    for (i, route) in raw.routes.iter().enumerate() {
        if route.destinations.is_empty() {
            return Err(invalid(format!("routes[{i}].destinations"), "must name at least one destination"));
        }
        for d in &route.destinations {
            if !destinations.iter().any(|x| &x.name == d) {
                return Err(invalid(
                    format!("routes[{i}].destinations"),
                    format!("names {d:?}, which is not a [destinations.{d}] table"),
                ));
            }
        }
    }
    if let Some(t) = &raw.terminal {
        if !["ndjson", "stx-etx", "lines"].contains(&t.framing.as_str()) {
            return Err(invalid(
                "terminal.framing",
                format!("{:?} is not one of ndjson, stx-etx, lines", t.framing),
            ));
        }
        if !["none", "even", "odd"].contains(&t.parity.as_str()) {
            return Err(invalid("terminal.parity", format!("{:?} is not one of none, even, odd", t.parity)));
        }
        if let Some(d) = &t.session_timeout {
            duration("terminal.session_timeout", d)?;
        }
    }
    Ok(Config {
        path: path.to_path_buf(),
        terminal_id: a.terminal_id,
        state_dir: a.state_dir,
        default_currency,
        seal_key_file: secret_path(&a.seal_key_file, base_dir),
        retention: Some(duration("agent.retention", &a.retention)?).filter(|d| !d.is_zero()),
        socket: raw.control.socket,
        socket_group: raw.control.socket_group,
        tcp,
        tcp_token_file,
        allowed_origins: raw.control.allowed_origins,
        terminal: raw.terminal,
        limits: currency_limits(&raw.limits, default_currency)?,
        max_queue_len: raw.limits.max_queue_len,
        max_pending_age: raw
            .limits
            .max_pending_age
            .as_deref()
            .map(|d| duration("limits.max_pending_age", d))
            .transpose()?,
        allow_unlinked: raw.limits.allow_unlinked,
        sync,
        destinations,
        routes: raw.routes,
    })
}

/// The amount limits of every currency refunds may be made in: the top-level values for the
/// default currency, and one `[limits.XXX]` table per other currency.
fn currency_limits(
    raw: &RawLimits,
    default: Currency,
) -> Result<HashMap<Currency, CurrencyLimits>, ConfigError> {
    let parse = |key: String, text: &Option<String>, currency: Currency| {
        text.as_deref()
            .map(|t| parse_amount(t, currency).map_err(|e| invalid(key, e.to_string())))
            .transpose()
    };
    let mut limits = HashMap::from([(
        default,
        CurrencyLimits {
            max_refund: parse("limits.max_refund".into(), &raw.max_refund, default)?,
            max_pending_total: parse("limits.max_pending_total".into(), &raw.max_pending_total, default)?,
        },
    )]);
    for (key, value) in &raw.other {
        let unknown = || {
            invalid(
                format!("limits.{key}"),
                "unknown key (expected max_refund, max_pending_total, max_queue_len, max_pending_age, \
                 allow_unlinked, or a [limits.XXX] table for another currency)",
            )
        };
        let currency: Currency = key.parse().map_err(|_| unknown())?;
        if !value.is_table() {
            return Err(unknown());
        }
        if currency == default {
            return Err(invalid(
                format!("limits.{key}"),
                "is the default currency: its limits are the top-level [limits] values",
            ));
        }
        let table: RawCurrencyLimits = value
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| invalid(format!("limits.{key}"), e.message().to_string()))?;
        let entry = CurrencyLimits {
            max_refund: parse(format!("limits.{key}.max_refund"), &table.max_refund, currency)?,
            max_pending_total: parse(
                format!("limits.{key}.max_pending_total"),
                &table.max_pending_total,
                currency,
            )?,
        };
        limits.insert(currency, entry);
    }
    Ok(limits)
}

/// Parses `"10s"`, `"5m"`, `"72h"`, `"30d"`.
pub fn duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text)
        .map_err(|e| invalid(key, format!("{text:?} is not a duration like \"10s\" or \"5m\" ({e})")))
}

/// `https://` anywhere; `http://` only for loopback hosts (tests, the demo).
pub fn base_url_checked(key: &str, text: &str) -> Result<reqwest::Url, ConfigError> {
    let url = reqwest::Url::parse(text).map_err(|e| invalid(key, format!("{text:?} is not a URL ({e})")))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => return Err(invalid(key, "plain http:// is only allowed for loopback hosts; use https://")),
        other => return Err(invalid(key, format!("scheme {other}:// is not supported; use https://"))),
    }
    if url.host_str().is_none() {
        return Err(invalid(key, "has no host"));
    }
    Ok(url)
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// A plain file name is looked up in systemd's `$CREDENTIALS_DIRECTORY` when set (secrets via
/// `LoadCredential=`), otherwise next to the config file; a path is used as given.
fn secret_path(name: &str, base_dir: &Path) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    if !name.contains('/') {
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            return PathBuf::from(dir).join(name);
        }
    }
    base_dir.join(p)
}

/// Reads a secret file, refusing one that group or others may read: a leaked seal key or API
/// key lets anyone forge queue rows or refunds.
pub fn read_secret(path: &Path) -> Result<Secret, ConfigError> {
    let err = |message: String| ConfigError::Secret { path: path.to_path_buf(), message };
    let meta = fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("is not a regular file".into()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(err(format!(
            "is readable by group or others (mode {mode:o}); run: chmod 600 {}",
            path.display()
        )));
    }
    let bytes = fs::read(path).map_err(|e| err(e.to_string()))?;
    let trimmed = bytes.trim_ascii().to_vec();
    if trimmed.is_empty() {
        return Err(err("is empty".into()));
    }
    Ok(Secret(trimmed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    const MINIMAL: &str = r#"
        [agent]
        terminal_id = "till-01"
        state_dir = "/tmp/x"
        seal_key_file = "/etc/refund-agent/seal.key"
        [destinations.finalpos]
        kind = "finalpos"
        base_url = "https://api.finalpos.com"
        api_key_file = "finalpos.key"
    "#;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/refund-agent/config.toml"), std::iter::empty())
    }

    #[test]
    fn the_spec_example_parses() {
        let text = include_str!("../examples/config.toml");
        let c = load(text).unwrap();
        assert_eq!(c.destinations.len(), 3);
        assert_eq!(c.sync.backoff_max, Duration::from_secs(300));
        assert_eq!(c.max_pending_age, Some(Duration::from_secs(72 * 3600)));
        assert_eq!(c.routes[0].destinations, ["olive", "finalpos"]);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = load(&MINIMAL.replace("[agent]", "[agent]\nterminal_idd = \"x\"")).unwrap_err().to_string();
        assert!(err.contains("terminal_idd"), "{err}");
        let err = load(&format!("{MINIMAL}\n[limits]\nmax_refnd = \"5\"")).unwrap_err().to_string();
        assert!(err.contains("max_refnd"), "{err}");
        let err = load(&MINIMAL.replace("api_key_file", "api_key_fil")).unwrap_err().to_string();
        assert!(err.contains("api_key_fil"), "{err}");
    }

    #[test]
    fn limits_are_per_currency() {
        let c = load(&format!(
            "{MINIMAL}\n[limits]\nmax_refund = \"500.00\"\n[limits.EUR]\nmax_refund = \"450.00\"\n[limits.KWD]\nmax_pending_total = \"99.999\""
        ))
        .unwrap();
        let usd: Currency = "USD".parse().unwrap();
        let eur: Currency = "EUR".parse().unwrap();
        let kwd: Currency = "KWD".parse().unwrap();
        assert_eq!(c.limits[&usd].max_refund, Some(Decimal::new(50000, 2)));
        assert_eq!(c.limits[&eur].max_refund, Some(Decimal::new(45000, 2)));
        assert_eq!(
            c.limits[&kwd],
            CurrencyLimits { max_refund: None, max_pending_total: Some(Decimal::new(99999, 3)) }
        );
        assert_eq!(c.limits.len(), 3);
        // Amounts are checked against their own currency's minor units.
        let err = load(&format!("{MINIMAL}\n[limits.JPY]\nmax_refund = \"1.50\"")).unwrap_err().to_string();
        assert!(err.contains("limits.JPY.max_refund"), "{err}");
        let err = load(&format!("{MINIMAL}\n[limits.EUR]\nmax_refnd = \"1\"")).unwrap_err().to_string();
        assert!(err.contains("max_refnd"), "{err}");
        let err = load(&format!("{MINIMAL}\n[limits.USD]\nmax_refund = \"1\"")).unwrap_err().to_string();
        assert!(err.contains("limits.USD") && err.contains("default currency"), "{err}");
        let err = load(&format!("{MINIMAL}\n[limits.XYZ]\nmax_refund = \"1\"")).unwrap_err().to_string();
        assert!(err.contains("limits.XYZ"), "{err}");
    }

    #[test]
    fn plain_http_only_for_loopback() {
        assert!(load(&MINIMAL.replace("https://api.finalpos.com", "http://127.0.0.1:9")).is_ok());
        assert!(load(&MINIMAL.replace("https://api.finalpos.com", "http://localhost:9")).is_ok());
        assert!(load(&MINIMAL.replace("https://api.finalpos.com", "http://[::1]:9")).is_ok());
        let err = load(&MINIMAL.replace("https://api.finalpos.com", "http://api.finalpos.com"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("destinations.finalpos.base_url"), "{err}");
    }

    #[test]
    fn relative_secrets_sit_next_to_the_config() {
        let c = load(MINIMAL).unwrap();
        match &c.destinations[0].kind {
            DestinationKind::FinalPos { api_key_file } => {
                assert_eq!(api_key_file, Path::new("/etc/refund-agent/finalpos.key"))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn env_overrides_apply_and_are_checked() {
        let env = vec![
            ("REFUND_AGENT__AGENT__STATE_DIR".to_string(), "/srv/state".to_string()),
            ("REFUND_AGENT__LIMITS__MAX_QUEUE_LEN".to_string(), "7".to_string()),
        ];
        let c = Config::from_toml(MINIMAL, Path::new("/c.toml"), env.into_iter()).unwrap();
        assert_eq!(c.state_dir, Path::new("/srv/state"));
        assert_eq!(c.max_queue_len, Some(7));
        let env = vec![("REFUND_AGENT__AGENT__BOGUS".to_string(), "1".to_string())];
        let err = Config::from_toml(MINIMAL, Path::new("/c.toml"), env.into_iter()).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = load(&format!("{MINIMAL}\n[sync]\nrequest_timeout = \"ten\"")).unwrap_err().to_string();
        assert!(err.contains("sync.request_timeout"), "{err}");
        let err = load(&format!("{MINIMAL}\n[limits]\nmax_refund = \"1e3\"")).unwrap_err().to_string();
        assert!(err.contains("limits.max_refund"), "{err}");
        let err = load(&format!("{MINIMAL}\n[[routes]]\nprocessor = \"*\"\ndestinations = [\"nope\"]"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn secrets_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        fs::write(&path, "secret\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let s = read_secret(&path).unwrap();
        assert_eq!(s.text().unwrap(), "secret");
        assert!(!format!("{s:?}").contains("secret\""));
    }
}
