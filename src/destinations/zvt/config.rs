//! `kind = "zvt"`: the `[destinations.NAME]` table as written, and the settings the connector is
//! built from. A ZVT destination has no URL and no secret file: it is a payment terminal at the
//! till, reached over TCP (`zvt_address`) or a serial `device`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::config::{ConfigError, DestinationContext};

/// ISO 4217 numeric codes for the currencies a ZVT terminal is set up with; the terminal takes
/// the number, the refund carries the letters.
const NUMERIC_CURRENCIES: &[(&str, u16)] = &[
    ("EUR", 978),
    ("CHF", 756),
    ("GBP", 826),
    ("USD", 840),
    ("DKK", 208),
    ("SEK", 752),
    ("NOK", 578),
    ("PLN", 985),
    ("CZK", 203),
    ("HUF", 348),
];

/// Whether `text` is a ZVT terminal password: exactly 6 digits. `[terminal]` checks its
/// `zvt_password` with it too.
pub fn is_password(text: &str) -> bool {
    text.len() == 6 && text.bytes().all(|b| b.is_ascii_digit())
}

/// A currency's three letters as the agent writes them and its ISO 4217 number, for the
/// currencies a ZVT terminal is known to take (any letter case in the file).
pub fn numeric_currency(text: &str) -> Option<(&'static str, u16)> {
    NUMERIC_CURRENCIES.iter().find(|(code, _)| code.eq_ignore_ascii_case(text)).copied()
}

/// A ZVT destination table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZvtConfig {
    zvt_address: Option<String>,
    device: Option<PathBuf>,
    baud: Option<u32>,
    password: String,
    currency: String,
    service_byte: Option<u8>,
}

/// Where the terminal is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZvtEndpoint {
    Tcp(SocketAddr),
    Serial { device: PathBuf, baud: u32 },
}

/// A checked ZVT destination.
#[derive(Debug, Clone)]
pub struct ZvtSettings {
    pub endpoint: ZvtEndpoint,
    /// The terminal's 6-digit password, sent with registration and every command.
    pub password: String,
    /// The three-letter code of the refunds this terminal pays; others are refused.
    pub currency: &'static str,
    /// Its ISO 4217 number, as the terminal takes it.
    pub currency_number: u16,
    pub service_byte: u8,
}

impl ZvtConfig {
    pub fn validate(self, at: &DestinationContext<'_>) -> Result<ZvtSettings, ConfigError> {
        let endpoint = match (self.zvt_address, self.device) {
            (Some(addr), None) => ZvtEndpoint::Tcp(
                addr.parse()
                    .map_err(|e| at.invalid("zvt_address", format!("{addr:?} is not host:port ({e})")))?,
            ),
            (None, Some(device)) => ZvtEndpoint::Serial { device, baud: self.baud.unwrap_or(9600) },
            _ => {
                return Err(at.invalid("zvt_address", "give exactly one of zvt_address or device".into()));
            }
        };
        if !is_password(&self.password) {
            return Err(at.invalid("password", "the terminal password is 6 digits".into()));
        }
        let (currency, currency_number) = numeric_currency(&self.currency).ok_or_else(|| {
            at.invalid(
                "currency",
                format!("{:?} is not a currency a ZVT terminal is known to take", self.currency),
            )
        })?;
        Ok(ZvtSettings {
            endpoint,
            password: self.password,
            currency,
            currency_number,
            service_byte: self.service_byte.unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_for_test, DestinationKind};

    #[test]
    fn tcp_or_serial_with_a_password_and_a_currency() {
        let dir = tempfile::tempdir().expect("temp dir");
        let tcp =
            "kind = \"zvt\"\nzvt_address = \"127.0.0.1:20007\"\npassword = \"000000\"\ncurrency = \"EUR\"";
        let Ok(DestinationKind::Zvt(s)) = parse_for_test(tcp, dir.path()) else { panic!("not zvt") };
        assert_eq!(s.endpoint, ZvtEndpoint::Tcp("127.0.0.1:20007".parse().expect("addr")));
        assert_eq!((s.currency, s.currency_number), ("EUR", 978));
        let serial = "kind = \"zvt\"\ndevice = \"/dev/ttyS0\"\npassword = \"123456\"\ncurrency = \"chf\"";
        let Ok(DestinationKind::Zvt(s)) = parse_for_test(serial, dir.path()) else { panic!("not zvt") };
        assert_eq!(s.endpoint, ZvtEndpoint::Serial { device: "/dev/ttyS0".into(), baud: 9600 });
        let both = format!("{tcp}\ndevice = \"/dev/ttyS0\"");
        assert!(parse_for_test(&both, dir.path()).unwrap_err().to_string().contains("exactly one"));
        let short = tcp.replace("000000", "123");
        assert!(parse_for_test(&short, dir.path()).unwrap_err().to_string().contains("password"));
        let xyz = tcp.replace("EUR", "XYZ");
        assert!(parse_for_test(&xyz, dir.path()).unwrap_err().to_string().contains("currency"));
        let http = format!("{tcp}\nbase_url = \"https://x.example\"");
        assert!(parse_for_test(&http, dir.path()).is_err(), "HTTP keys are unknown to a zvt table");
    }
}
