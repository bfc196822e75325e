//! Money: a `Decimal` amount with an ISO 4217 currency, never a float.
//!
//! Amounts arrive as decimal strings from terminals, the control API and receipts. They are
//! parsed with a strict grammar (digits, an optional point and digits) so that forms a float
//! parser would accept (`"1e3"`, `" 5"`, `"+5"`, `"NaN"`) are refused before they can reach a
//! refund, and so that no amount ever carries more decimals than its currency can settle.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The largest amount accepted anywhere (15 integer digits), far above any till refund; it
/// keeps sums of many amounts well inside `Decimal`'s range.
const MAX_INTEGER_DIGITS: usize = 15;

/// ISO 4217 codes with their minor units. Only currencies listed here are accepted: a typo in a
/// currency code must be refused, not settled with a guessed number of decimals.
const CURRENCIES: &[(&str, u32)] = &[
    ("AED", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("BGN", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EGP", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("GHS", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("LYD", 3),
    ("MAD", 2),
    ("MXN", 2),
    ("MYR", 2),
    ("NGN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PEN", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("PYG", 0),
    ("QAR", 2),
    ("RON", 2),
    ("RSD", 2),
    ("RWF", 0),
    ("SAR", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("SLE", 2),
    ("THB", 2),
    ("TND", 3),
    ("TRY", 2),
    ("TWD", 2),
    ("TZS", 2),
    ("UAH", 2),
    ("UGX", 0),
    ("USD", 2),
    ("UYU", 2),
    ("VND", 0),
    ("XAF", 0),
    ("XOF", 0),
    ("ZAR", 2),
];

/// An ISO 4217 currency known to this build, with its number of minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: &'static str,
    minor_units: u32,
}

impl Currency {
    /// The three-letter code, e.g. `USD`.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// How many decimals an amount in this currency may have (2 for USD, 0 for JPY).
    pub fn minor_units(&self) -> u32 {
        self.minor_units
    }

    /// Formats an amount with exactly the currency's number of decimals, as the cloud APIs
    /// expect (`"5.00"`).
    pub fn format(&self, amount: Decimal) -> String {
        let mut a = amount;
        a.rescale(self.minor_units);
        a.to_string()
    }

    /// Parses an amount string for this currency under the strict grammar of this module.
    pub fn parse_amount(&self, text: &str) -> Result<Decimal, AmountError> {
        parse_amount(text, *self)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

impl FromStr for Currency {
    type Err = AmountError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.trim().to_ascii_uppercase();
        CURRENCIES
            .iter()
            .find(|(code, _)| *code == upper)
            .map(|(code, minor_units)| Currency { code, minor_units: *minor_units })
            .ok_or_else(|| AmountError::UnknownCurrency(s.to_string()))
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code)
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why an amount or currency was refused. The messages are shown to cashiers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount is empty")]
    Empty,
    #[error("amount {0:?} is not a plain decimal number like \"12.50\"")]
    NotDecimal(String),
    #[error("amount {0:?} must be greater than zero")]
    NotPositive(String),
    #[error("amount {amount:?} has more than {max} decimals, the most {currency} allows")]
    TooManyDecimals { amount: String, currency: &'static str, max: u32 },
    #[error("amount {0:?} is too large")]
    TooLarge(String),
    #[error("currency {0:?} is not a known ISO 4217 code")]
    UnknownCurrency(String),
}

/// Parses a strictly formatted, positive amount with no more decimals than `currency` allows.
/// `"150"` and `"150.00"` are the same amount.
pub fn parse_amount(text: &str, currency: Currency) -> Result<Decimal, AmountError> {
    let value = parse_non_negative(text, currency)?;
    if value.is_zero() {
        return Err(AmountError::NotPositive(text.to_string()));
    }
    Ok(value)
}

/// Parses an amount that may be zero (taxes, discounts, a sale's subtotal).
pub fn parse_non_negative(text: &str, currency: Currency) -> Result<Decimal, AmountError> {
    if text.is_empty() {
        return Err(AmountError::Empty);
    }
    if let Some(rest) = text.strip_prefix('-') {
        if is_plain_decimal(rest) {
            return Err(AmountError::NotPositive(text.to_string()));
        }
    }
    if !is_plain_decimal(text) {
        return Err(AmountError::NotDecimal(text.to_string()));
    }
    let (int_part, frac_part) = text.split_once('.').unwrap_or((text, ""));
    if int_part.trim_start_matches('0').len() > MAX_INTEGER_DIGITS {
        return Err(AmountError::TooLarge(text.to_string()));
    }
    // Trailing zeros beyond the minor unit do not change the value ("5.000" is 5.00 USD),
    // but any significant digit beyond it would be a fraction of a cent nobody can pay.
    let significant_frac = frac_part.trim_end_matches('0');
    if significant_frac.len() > currency.minor_units as usize {
        return Err(AmountError::TooManyDecimals {
            amount: text.to_string(),
            currency: currency.code,
            max: currency.minor_units,
        });
    }
    if frac_part.len() > 18 {
        return Err(AmountError::NotDecimal(text.to_string()));
    }
    let mut value = Decimal::from_str(text).map_err(|_| AmountError::NotDecimal(text.to_string()))?;
    value.rescale(currency.minor_units);
    Ok(value)
}

/// `digits [ "." digits ]`, nothing else: no sign, exponent, spaces or separators.
fn is_plain_decimal(text: &str) -> bool {
    let (int_part, frac_part) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    all_digits(int_part) && frac_part.is_none_or(all_digits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn usd() -> Currency {
        "USD".parse().expect("USD is in the table")
    }

    #[test]
    fn accepts_whole_and_cent_amounts() {
        assert_eq!(usd().format(parse_amount("150", usd()).unwrap()), "150.00");
        assert_eq!(usd().format(parse_amount("150.00", usd()).unwrap()), "150.00");
        assert_eq!(usd().format(parse_amount("0.01", usd()).unwrap()), "0.01");
        assert_eq!(usd().format(parse_amount("5.000", usd()).unwrap()), "5.00");
    }

    #[test]
    fn refuses_bad_forms_with_the_right_reason() {
        let u = usd();
        assert!(matches!(parse_amount("1e3", u), Err(AmountError::NotDecimal(_))));
        assert!(matches!(parse_amount("abc", u), Err(AmountError::NotDecimal(_))));
        assert!(matches!(parse_amount("-5", u), Err(AmountError::NotPositive(_))));
        assert!(matches!(parse_amount("0", u), Err(AmountError::NotPositive(_))));
        assert!(matches!(parse_amount("0.00", u), Err(AmountError::NotPositive(_))));
        assert!(matches!(parse_amount("0.001", u), Err(AmountError::TooManyDecimals { .. })));
        assert!(matches!(parse_amount("", u), Err(AmountError::Empty)));
        for bad in [" 5", "5 ", "+5", ".5", "5.", "1,000.00", "NaN", "inf", "0x10", "５"] {
            assert!(parse_amount(bad, u).is_err(), "{bad:?} must be refused");
        }
        assert!(matches!(parse_amount("9999999999999999", u), Err(AmountError::TooLarge(_))));
    }

    #[test]
    fn minor_units_follow_the_currency() {
        let jpy: Currency = "jpy".parse().unwrap();
        assert!(parse_amount("100", jpy).is_ok());
        assert!(parse_amount("100.5", jpy).is_err());
        let bhd: Currency = "BHD".parse().unwrap();
        assert_eq!(bhd.format(parse_amount("1.125", bhd).unwrap()), "1.125");
        assert!("XYZ".parse::<Currency>().is_err());
    }

    proptest! {
        #[test]
        fn any_cent_amount_round_trips(cents in 1u64..1_000_000_000_000u64) {
            let text = format!("{}.{:02}", cents / 100, cents % 100);
            let value = parse_amount(&text, usd()).unwrap();
            prop_assert_eq!(usd().format(value), text);
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,40}") {
            let _ = parse_amount(&text, usd());
        }
    }
}
