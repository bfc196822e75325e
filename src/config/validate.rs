//! The raw structs become the typed [`Config`]. Every rule names the key at fault, and the
//! rules run in a fixed order, so a file with several faults always reports the same one first.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::raw::RawConfig;
use super::secret::secret_path;
use super::terminal::TerminalKind;
use super::{destination, invalid, Config, ConfigError, SyncSettings};
use crate::money::Currency;

pub(super) fn validate(raw: RawConfig, path: &Path, base_dir: &Path) -> Result<Config, ConfigError> {
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
        return_jitter: duration("sync.return_jitter", &s.return_jitter)?,
    };
    if sync.backoff_initial.is_zero() || sync.backoff_max < sync.backoff_initial {
        return Err(invalid(
            "sync.backoff_max",
            "must be at least sync.backoff_initial, which must be above zero",
        ));
    }
    let destinations = raw
        .destinations
        .into_iter()
        .map(|(name, d)| destination::validate(name, d, base_dir))
        .collect::<Result<Vec<_>, _>>()?;
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
    let (terminal, zvt_terminal) = match raw.terminal.map(|t| super::terminal::terminal(t, &destinations)) {
        None => (None, None),
        Some(Ok(TerminalKind::Serial(t))) => (Some(t), None),
        Some(Ok(TerminalKind::Zvt(t))) => (None, Some(t)),
        Some(Err(e)) => return Err(e),
    };
    let limits = super::limits::currency_limits(&raw.limits, default_currency)?;
    let retention = Some(duration("agent.retention", &a.retention)?).filter(|d| !d.is_zero());
    super::limits::check_retention(&limits, retention)?;
    Ok(Config {
        path: path.to_path_buf(),
        terminal_id: a.terminal_id,
        state_dir: a.state_dir,
        default_currency,
        seal_key_file: secret_path(&a.seal_key_file, base_dir),
        retention,
        socket: raw.control.socket,
        socket_group: raw.control.socket_group,
        tcp,
        tcp_token_file,
        allowed_origins: raw.control.allowed_origins,
        terminal,
        zvt_terminal,
        limits,
        max_queue_len: raw.limits.max_queue_len,
        max_pending_age: raw
            .limits
            .max_pending_age
            .as_deref()
            .map(|d| duration("limits.max_pending_age", d))
            .transpose()?,
        allow_unlinked: raw.limits.allow_unlinked,
        managers_file: raw.limits.managers_file.as_deref().map(|f| secret_path(f, base_dir)),
        sync,
        destinations,
        routes: raw.routes,
    })
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
