//! The loader end to end: text and overrides in, a `Config` or a named error out.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::refund::CurrencyLimits;
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
    let text = include_str!("../../examples/config.toml");
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
        DestinationKind::FinalPos(settings) => {
            let api_key_file = settings.api_key_file.path();
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
        CurrencyLimits { max_pending_total: Some(Decimal::new(99999, 3)), ..CurrencyLimits::default() }
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
fn the_managers_file_is_a_secret_next_to_the_config() {
    assert_eq!(load(MINIMAL).unwrap().managers_file, None);
    let c = load(&format!("{MINIMAL}\n[limits]\nmanagers_file = \"managers\"")).unwrap();
    assert_eq!(c.managers_file.as_deref(), Some(Path::new("/etc/refund-agent/managers")));
}

#[test]
fn velocity_limits_are_per_currency_and_need_a_days_retention() {
    let c = load(&format!(
        "{MINIMAL}\n[limits]\nmax_refunds_per_operator_per_day = 20\nmax_amount_per_operator_per_day = \"1000\"\n\
         [limits.EUR]\nmax_amount_per_till_per_day = \"2700.00\""
    ))
    .unwrap();
    let usd: Currency = "USD".parse().unwrap();
    let eur: Currency = "EUR".parse().unwrap();
    assert_eq!(c.limits[&usd].max_refunds_per_operator_per_day, Some(20));
    assert_eq!(c.limits[&usd].max_amount_per_operator_per_day, Some(Decimal::new(100000, 2)));
    assert_eq!(c.limits[&usd].max_amount_per_till_per_day, None);
    assert_eq!(c.limits[&eur].max_amount_per_till_per_day, Some(Decimal::new(270000, 2)));
    assert_eq!(
        limits::summary(&c.limits),
        [
            "EUR: max_amount_per_till_per_day 2700.00 EUR",
            "USD: max_refunds_per_operator_per_day 20, max_amount_per_operator_per_day 1000.00 USD",
        ]
    );
    let err = load(&format!("{MINIMAL}\n[limits.JPY]\nmax_amount_per_operator_per_day = \"1.5\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("limits.JPY.max_amount_per_operator_per_day"), "{err}");
    let err =
        load(&format!("{MINIMAL}\n[limits]\nmax_refunds_per_operator_per_day = 0")).unwrap_err().to_string();
    assert!(err.contains("limits.max_refunds_per_operator_per_day"), "{err}");
    // Purged refunds would stop counting within the day.
    let short = MINIMAL.replace("[agent]", "[agent]\nretention = \"12h\"");
    let err =
        load(&format!("{short}\n[limits]\nmax_amount_per_till_per_day = \"10\"")).unwrap_err().to_string();
    assert!(err.contains("agent.retention"), "{err}");
    assert!(load(&short).is_ok());
}
