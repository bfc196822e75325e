//! `[limits]` amounts per currency: the top-level values are the default currency's, and one
//! `[limits.XXX]` table holds each other currency's. A refund in a currency with neither is
//! refused, never compared against another currency's numbers.

use std::collections::HashMap;

use super::raw::{RawCurrencyLimits, RawLimits};
use super::{invalid, ConfigError};
use crate::money::{parse_amount, Currency};
use crate::refund::CurrencyLimits;

/// The amount limits of every currency refunds may be made in.
pub(super) fn currency_limits(
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
                 allow_unlinked, managers_file, or a [limits.XXX] table for another currency)",
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
