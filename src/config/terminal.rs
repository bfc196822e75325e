//! `[terminal]`: either a serial line speaking JSON or barcodes (`ndjson`, `stx-etx`, `lines`),
//! or a ZVT payment terminal the agent drives as the ECR (`framing = "zvt"` on a serial
//! `device`, or `zvt_address` over TCP). The names in the file become typed settings here; no
//! other module reads them again.

use std::time::Duration;

use super::raw::RawTerminal;
use super::validate::duration;
use super::{invalid, ConfigError, Destination, DestinationKind, TerminalSettings};
use crate::destinations::zvt::{is_password, numeric_currency, ZvtEndpoint, ZvtSettings};
use crate::terminal::codec::Framing;
use crate::terminal::{device, session};

/// The baud rate of a JSON or barcode line unless the file says otherwise.
const SERIAL_BAUD: u32 = 115_200;
/// The baud rate of a ZVT terminal on RS-232 unless it was set up otherwise.
const ZVT_BAUD: u32 = 9600;
/// How often an idle ZVT link is checked with a Status Enquiry (`05 01`) unless the file says.
pub const ZVT_KEEPALIVE: Duration = Duration::from_secs(60);

/// `[terminal]` with `framing = "zvt"` or `zvt_address`: the payment terminal the agent
/// registers at, keeps the link to, and reads cards with.
#[derive(Debug, Clone)]
pub struct ZvtTerminalSettings {
    /// Where the terminal is, its password, currency and service byte: the same settings a
    /// `kind = "zvt"` destination has.
    pub link: ZvtSettings,
    /// How long an idle link waits before the agent asks the terminal's status (`05 01`).
    pub keepalive: Duration,
}

/// What `[terminal]` turned out to be.
#[derive(Debug)]
pub(super) enum TerminalKind {
    Serial(TerminalSettings),
    Zvt(ZvtTerminalSettings),
}

/// Checks `[terminal]`; a ZVT terminal is also checked against the ZVT destinations.
pub(super) fn terminal(t: RawTerminal, destinations: &[Destination]) -> Result<TerminalKind, ConfigError> {
    let zvt = match (t.framing.as_deref(), &t.zvt_address) {
        (Some("zvt"), _) => true,
        (None, Some(_)) => true,
        (Some(other), Some(_)) => {
            return Err(invalid(
                "terminal.zvt_address",
                format!("is only for framing = \"zvt\" (or no framing), not {other:?}"),
            ));
        }
        _ => false,
    };
    if zvt {
        let settings = zvt_terminal(t)?;
        check_shared_terminal(&settings.link.endpoint, destinations)?;
        Ok(TerminalKind::Zvt(settings))
    } else {
        serial(t).map(TerminalKind::Serial)
    }
}

fn serial(t: RawTerminal) -> Result<TerminalSettings, ConfigError> {
    let zvt_keys = [
        ("terminal.zvt_password", t.zvt_password.is_some()),
        ("terminal.zvt_currency", t.zvt_currency.is_some()),
        ("terminal.zvt_service_byte", t.zvt_service_byte.is_some()),
        ("terminal.zvt_keepalive", t.zvt_keepalive.is_some()),
    ];
    if let Some((key, _)) = zvt_keys.iter().find(|(_, set)| *set) {
        return Err(invalid(*key, "is only for framing = \"zvt\""));
    }
    let name = t.framing.as_deref().unwrap_or("ndjson");
    let framing: Framing = name.parse().map_err(|_| {
        invalid("terminal.framing", format!("{name:?} is not one of ndjson, stx-etx, lines, zvt"))
    })?;
    let device = t.device.ok_or_else(|| invalid("terminal.device", "is required"))?;
    let parity_name = t.parity.as_deref().unwrap_or("none");
    let parity = device::parity(parity_name).ok_or_else(|| {
        invalid("terminal.parity", format!("{parity_name:?} is not one of none, even, odd"))
    })?;
    let session_timeout = match &t.session_timeout {
        Some(d) => duration("terminal.session_timeout", d)?,
        None => session::DEFAULT_TIMEOUT,
    };
    Ok(TerminalSettings { device, baud: t.baud.unwrap_or(SERIAL_BAUD), framing, parity, session_timeout })
}

fn zvt_terminal(t: RawTerminal) -> Result<ZvtTerminalSettings, ConfigError> {
    // ZVT fixes the line (8 data bits, no parity, 2 stop bits) and has no JSON session, so
    // these keys would be silently ignored; refusing them says so.
    for (key, set) in
        [("terminal.parity", t.parity.is_some()), ("terminal.session_timeout", t.session_timeout.is_some())]
    {
        if set {
            return Err(invalid(key, "does not apply to a ZVT terminal"));
        }
    }
    let endpoint = match (t.zvt_address, t.device) {
        (Some(addr), None) => ZvtEndpoint::Tcp(addr.parse().map_err(|e| {
            invalid(
                "terminal.zvt_address",
                format!("{addr:?} is not an address like 192.168.1.50:20007 ({e})"),
            )
        })?),
        (None, Some(device)) => ZvtEndpoint::Serial { device, baud: t.baud.unwrap_or(ZVT_BAUD) },
        (Some(_), Some(_)) => {
            return Err(invalid(
                "terminal.zvt_address",
                "give either zvt_address (TCP) or device (RS-232), not both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                "terminal.device",
                "a ZVT terminal needs device (RS-232) or zvt_address (TCP)",
            ));
        }
    };
    if matches!(endpoint, ZvtEndpoint::Tcp(_)) && t.baud.is_some() {
        return Err(invalid("terminal.baud", "does not apply to a ZVT terminal over TCP"));
    }
    let password =
        t.zvt_password.ok_or_else(|| invalid("terminal.zvt_password", "is required for a ZVT terminal"))?;
    if !is_password(&password) {
        return Err(invalid("terminal.zvt_password", "the terminal password is 6 digits"));
    }
    let named =
        t.zvt_currency.ok_or_else(|| invalid("terminal.zvt_currency", "is required for a ZVT terminal"))?;
    let (currency, currency_number) = numeric_currency(&named).ok_or_else(|| {
        invalid(
            "terminal.zvt_currency",
            format!("{named:?} is not a currency a ZVT terminal is known to take"),
        )
    })?;
    let keepalive = match &t.zvt_keepalive {
        Some(d) => duration("terminal.zvt_keepalive", d)?,
        None => ZVT_KEEPALIVE,
    };
    if keepalive.is_zero() {
        return Err(invalid("terminal.zvt_keepalive", "must be above zero"));
    }
    let link = ZvtSettings {
        endpoint,
        password,
        currency,
        currency_number,
        service_byte: t.zvt_service_byte.unwrap_or(0),
    };
    Ok(ZvtTerminalSettings { link, keepalive })
}

/// A terminal serves one ECR connection at a time: the agent's own link to it as `[terminal]`
/// and a payout connection of a `kind = "zvt"` destination would take turns at best, and at a
/// real terminal the second one may be refused or break the first one's command. Until the
/// destination runs its payout over the terminal's link, the combination is refused.
fn check_shared_terminal(endpoint: &ZvtEndpoint, destinations: &[Destination]) -> Result<(), ConfigError> {
    for d in destinations {
        if let DestinationKind::Zvt(s) = &d.kind {
            let same = match (&s.endpoint, endpoint) {
                (ZvtEndpoint::Tcp(a), ZvtEndpoint::Tcp(b)) => a == b,
                (ZvtEndpoint::Serial { device: a, .. }, ZvtEndpoint::Serial { device: b, .. }) => a == b,
                _ => false,
            };
            if same {
                let key = match endpoint {
                    ZvtEndpoint::Tcp(_) => "terminal.zvt_address",
                    ZvtEndpoint::Serial { .. } => "terminal.device",
                };
                return Err(invalid(
                    key,
                    format!(
                        "names the same terminal as [destinations.{}]; the agent cannot yet share one \
                         terminal between the card reader and a zvt destination",
                        d.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};
    use crate::destinations::zvt::ZvtEndpoint;

    const BASE: &str = r#"
        [agent]
        terminal_id = "till-01"
        seal_key_file = "/etc/refund-agent/seal.key"
    "#;

    fn load(terminal: &str) -> Result<Config, ConfigError> {
        let text = format!("{BASE}\n[terminal]\n{terminal}");
        Config::from_toml(&text, Path::new("/etc/refund-agent/config.toml"), std::iter::empty())
    }

    fn error(terminal: &str) -> String {
        load(terminal).expect_err("refused").to_string()
    }

    const TCP: &str =
        "zvt_address = \"192.168.1.50:20007\"\nzvt_password = \"000000\"\nzvt_currency = \"eur\"";

    #[test]
    fn a_zvt_terminal_over_tcp_or_serial() {
        let c = load(TCP).expect("loads");
        assert!(c.terminal.is_none(), "a ZVT terminal is not a JSON line");
        let z = c.zvt_terminal.expect("a ZVT terminal");
        assert_eq!(z.link.endpoint, ZvtEndpoint::Tcp("192.168.1.50:20007".parse().expect("addr")));
        assert_eq!((z.link.currency, z.link.currency_number, z.link.service_byte), ("EUR", 978, 0));
        assert_eq!(z.keepalive, super::ZVT_KEEPALIVE);
        let with_framing =
            load(&format!("framing = \"zvt\"\n{TCP}\nzvt_service_byte = 2\nzvt_keepalive = \"5s\""));
        let z = with_framing.expect("loads").zvt_terminal.expect("zvt");
        assert_eq!((z.link.service_byte, z.keepalive.as_secs()), (2, 5));
        let serial =
            "framing = \"zvt\"\ndevice = \"/dev/ttyUSB0\"\nzvt_password = \"123456\"\nzvt_currency = \"CHF\"";
        let z = load(serial).expect("loads").zvt_terminal.expect("zvt");
        assert_eq!(z.link.endpoint, ZvtEndpoint::Serial { device: "/dev/ttyUSB0".into(), baud: 9600 });
        let serial_fast = load(&format!("{serial}\nbaud = 19200")).expect("loads").zvt_terminal.expect("zvt");
        assert_eq!(
            serial_fast.link.endpoint,
            ZvtEndpoint::Serial { device: "/dev/ttyUSB0".into(), baud: 19200 }
        );
    }

    #[test]
    fn a_json_line_keeps_its_defaults() {
        let c = load("device = \"/dev/ttyUSB0\"").expect("loads");
        let t = c.terminal.expect("a serial terminal");
        assert_eq!((t.baud, t.framing.to_string().as_str()), (115_200, "ndjson"));
        assert!(c.zvt_terminal.is_none());
        assert!(error("framing = \"ndjson\"").contains("terminal.device"));
    }

    #[test]
    fn zvt_settings_are_checked_with_the_key_named() {
        let cases = [
            (format!("framing = \"ndjson\"\n{TCP}"), "terminal.zvt_address"),
            (format!("{TCP}\ndevice = \"/dev/ttyS0\""), "not both"),
            (
                "framing = \"zvt\"\nzvt_password = \"000000\"\nzvt_currency = \"EUR\"".to_owned(),
                "terminal.device",
            ),
            (TCP.replace("000000", "12345"), "terminal.zvt_password"),
            (TCP.replace("000000", "12345a"), "terminal.zvt_password"),
            (TCP.replace("eur", "XYZ"), "terminal.zvt_currency"),
            (TCP.replace("zvt_password = \"000000\"\n", ""), "terminal.zvt_password"),
            (TCP.replace("\nzvt_currency = \"eur\"", ""), "terminal.zvt_currency"),
            (TCP.replace("192.168.1.50:20007", "terminal.local"), "terminal.zvt_address"),
            (format!("{TCP}\nparity = \"even\""), "terminal.parity"),
            (format!("{TCP}\nsession_timeout = \"1m\""), "terminal.session_timeout"),
            (format!("{TCP}\nbaud = 9600"), "terminal.baud"),
            (format!("{TCP}\nzvt_keepalive = \"0s\""), "terminal.zvt_keepalive"),
            ("device = \"/dev/ttyUSB0\"\nzvt_password = \"000000\"".to_owned(), "terminal.zvt_password"),
            ("device = \"/dev/ttyUSB0\"\nframing = \"zvtt\"".to_owned(), "terminal.framing"),
        ];
        for (text, named) in cases {
            let err = error(&text);
            assert!(err.contains(named), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_terminal_shared_with_a_zvt_destination_is_refused() {
        let destination = "[destinations.pay]\nkind = \"zvt\"\nzvt_address = \"192.168.1.50:20007\"\n\
                           password = \"000000\"\ncurrency = \"EUR\"\n";
        let text = format!("{BASE}\n{destination}\n[terminal]\n{TCP}");
        let path = Path::new("/etc/refund-agent/config.toml");
        let err = Config::from_toml(&text, path, std::iter::empty()).expect_err("refused").to_string();
        assert!(err.contains("terminal.zvt_address") && err.contains("destinations.pay"), "{err}");
        let other = text.replacen("192.168.1.50", "192.168.1.51", 1);
        assert!(Config::from_toml(&other, path, std::iter::empty()).is_ok(), "another terminal is fine");
    }
}
