//! Fuzzes the config loader: arbitrary text through `Config::from_toml` (the function
//! `Config::load` calls after reading the file), optionally with `REFUND_AGENT__…` overrides.
//!
//! Input: the config text, then optionally a `0x00` byte followed by `NAME=value` lines that
//! become environment overrides.

#![no_main]

use std::path::Path;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use refund_agent::config::{Config, ConfigError, DestinationKind};
use refund_agent::money::Currency;

fuzz_target!(|data: &[u8]| {
    let (text, env) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let env: Vec<(String, String)> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let path = Path::new("/etc/refund-agent/config.toml");
    let result = Config::from_toml(text, path, env.clone().into_iter());
    match &result {
        Ok(config) => check_accepted(config),
        Err(ConfigError::Read { .. } | ConfigError::Secret { .. }) => {
            panic!("parsing text must not touch files: {result:?}")
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    // The same text and overrides always give the same verdict.
    let again = Config::from_toml(text, path, env.into_iter());
    assert_eq!(result.is_ok(), again.is_ok(), "the verdict changed between two parses");
});

/// What validation promises about every accepted config.
fn check_accepted(c: &Config) {
    assert!(!c.terminal_id.trim().is_empty(), "empty terminal_id accepted");
    let s = &c.sync;
    assert!(s.backoff_initial > Duration::ZERO && s.backoff_max >= s.backoff_initial);
    if let Some(addr) = c.tcp {
        assert!(addr.ip().is_loopback(), "control.tcp on a non-loopback address: {addr}");
    }
    // Limits are per currency: the default currency always has its (top-level) table, and each
    // currency's amounts are checked at that currency's own scale.
    assert!(c.limits.contains_key(&c.default_currency), "no limits entry for the default currency");
    for (&cur, l) in &c.limits {
        assert_ne!(l.max_refunds_per_operator_per_day, Some(0), "a daily count limit of 0 was accepted");
        let amounts = [
            l.max_refund,
            l.max_pending_total,
            l.max_amount_per_operator_per_day,
            l.max_amount_per_till_per_day,
        ];
        for amount in amounts.into_iter().flatten() {
            assert!(amount > rust_decimal::Decimal::ZERO, "a non-positive limit was accepted");
            assert_eq!(amount.scale(), cur.minor_units(), "a limit kept a scale other than the currency's");
            assert_eq!(cur.parse_amount(&cur.format(amount)), Ok(amount), "a limit does not round-trip");
        }
    }
    // Velocity limits count refunds still in the queue, so a shorter retention is refused.
    if c.limits.values().any(|l| l.has_velocity()) {
        if let Some(r) = c.retention {
            assert!(r >= Duration::from_secs(24 * 60 * 60), "retention under a day with velocity limits");
        }
    }
    for d in &c.destinations {
        // A ZVT terminal at the till has neither a base URL nor a secret file; every HTTP
        // destination has both.
        if let DestinationKind::Zvt(z) = &d.kind {
            assert!(
                d.base_url().is_none() && d.kind.secret_file().is_none(),
                "a terminal with HTTP settings"
            );
            let p = z.password.as_bytes();
            assert!(p.len() == 6 && p.iter().all(u8::is_ascii_digit), "a bad terminal password accepted");
            assert!(z.currency.parse::<Currency>().is_ok(), "a terminal currency the agent does not know");
            continue;
        }
        let url = d.base_url().expect("an HTTP destination has a base URL");
        assert!(url.host_str().is_some(), "destination without a host");
        match url.scheme() {
            "https" => {}
            "http" => {
                let host = url.host_str().unwrap_or_default();
                let loopback = host.eq_ignore_ascii_case("localhost")
                    || host
                        .trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                assert!(loopback, "plain http to a non-loopback host: {url}");
            }
            other => panic!("scheme {other} accepted"),
        }
        let secret = d.kind.secret_file().expect("an HTTP destination has a secret file").path();
        assert!(secret.is_absolute(), "secret path not resolved: {}", secret.display());
    }
    for route in &c.routes {
        assert!(!route.destinations.is_empty());
        for name in &route.destinations {
            assert!(c.destinations.iter().any(|d| &d.name == name), "route to unknown {name:?}");
        }
    }
    if let Some(t) = &c.terminal {
        assert!(["ndjson", "stx-etx", "lines"].contains(&t.framing.as_str()));
        // The parity is a `serialport::Parity` by now: validation refused every other name.
    }
    if let Some(z) = &c.zvt_terminal {
        assert!(c.terminal.is_none(), "[terminal] both a JSON line and a ZVT terminal");
        let p = z.link.password.as_bytes();
        assert!(p.len() == 6 && p.iter().all(u8::is_ascii_digit), "a bad ZVT terminal password accepted");
        assert!(!z.keepalive.is_zero(), "a zero keepalive accepted");
    }
}
