//! `[limits]` amounts and velocity limits per currency: the top-level values are the default
//! currency's, and one `[limits.XXX]` table holds each other currency's. A refund in a currency
//! with neither is refused, never compared against another currency's numbers.

use std::collections::HashMap;
use std::time::Duration;

use super::raw::{RawCurrencyLimits, RawLimits};
use super::{invalid, ConfigError};
use crate::money::{parse_amount, Currency};
use crate::refund::velocity::DAY_MS;
use crate::refund::CurrencyLimits;

/// The limits of every currency refunds may be made in.
pub(super) fn currency_limits(
    raw: &RawLimits,
    default: Currency,
) -> Result<HashMap<Currency, CurrencyLimits>, ConfigError> {
    let top = RawCurrencyLimits {
        max_refund: raw.max_refund.clone(),
        max_pending_total: raw.max_pending_total.clone(),
        max_refunds_per_operator_per_day: raw.max_refunds_per_operator_per_day,
        max_amount_per_operator_per_day: raw.max_amount_per_operator_per_day.clone(),
        max_amount_per_till_per_day: raw.max_amount_per_till_per_day.clone(),
    };
    let mut limits = HashMap::from([(default, one_currency("limits", &top, default)?)]);
    for (key, value) in &raw.other {
        let unknown = || {
            invalid(
                format!("limits.{key}"),
                "unknown key (expected max_refund, max_pending_total, max_queue_len, max_pending_age, \
                 allow_unlinked, managers_file, max_refunds_per_operator_per_day, \
                 max_amount_per_operator_per_day, max_amount_per_till_per_day, or a [limits.XXX] \
                 table for another currency)",
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
        limits.insert(currency, one_currency(&format!("limits.{key}"), &table, currency)?);
    }
    Ok(limits)
}

/// One currency's table; `prefix` names it in errors (`limits` or `limits.EUR`).
fn one_currency(
    prefix: &str,
    raw: &RawCurrencyLimits,
    currency: Currency,
) -> Result<CurrencyLimits, ConfigError> {
    let amount = |name: &str, text: &Option<String>| {
        text.as_deref()
            .map(|t| {
                parse_amount(t, currency).map_err(|e| invalid(format!("{prefix}.{name}"), e.to_string()))
            })
            .transpose()
    };
    if raw.max_refunds_per_operator_per_day == Some(0) {
        return Err(invalid(
            format!("{prefix}.max_refunds_per_operator_per_day"),
            "must be at least 1 (leave it out for no limit)",
        ));
    }
    Ok(CurrencyLimits {
        max_refund: amount("max_refund", &raw.max_refund)?,
        max_pending_total: amount("max_pending_total", &raw.max_pending_total)?,
        max_refunds_per_operator_per_day: raw.max_refunds_per_operator_per_day,
        max_amount_per_operator_per_day: amount(
            "max_amount_per_operator_per_day",
            &raw.max_amount_per_operator_per_day,
        )?,
        max_amount_per_till_per_day: amount("max_amount_per_till_per_day", &raw.max_amount_per_till_per_day)?,
    })
}

/// The velocity limits count the refunds still in the queue: a retention shorter than their
/// day would purge refunds that should still count, so it is refused (no retention keeps
/// everything and is fine).
pub(super) fn check_retention(
    limits: &HashMap<Currency, CurrencyLimits>,
    retention: Option<Duration>,
) -> Result<(), ConfigError> {
    let day = Duration::from_millis(DAY_MS as u64);
    let velocity = limits.values().any(CurrencyLimits::has_velocity);
    match retention {
        Some(r) if velocity && r < day => Err(invalid(
            "agent.retention",
            "must be at least 24h while velocity limits (max_..._per_day) are configured, or they \
             would stop counting purged refunds",
        )),
        _ => Ok(()),
    }
}

/// One line per currency for `check-config`: every limit that is set, or `none`.
pub fn summary(limits: &HashMap<Currency, CurrencyLimits>) -> Vec<String> {
    let mut lines: Vec<(String, String)> = limits
        .iter()
        .map(|(currency, l)| {
            let money = |name: &str, v: Option<rust_decimal::Decimal>| {
                v.map(|v| format!("{name} {} {currency}", currency.format(v)))
            };
            let parts: Vec<String> = [
                money("max_refund", l.max_refund),
                money("max_pending_total", l.max_pending_total),
                l.max_refunds_per_operator_per_day.map(|n| format!("max_refunds_per_operator_per_day {n}")),
                money("max_amount_per_operator_per_day", l.max_amount_per_operator_per_day),
                money("max_amount_per_till_per_day", l.max_amount_per_till_per_day),
            ]
            .into_iter()
            .flatten()
            .collect();
            let text = if parts.is_empty() { "none".to_string() } else { parts.join(", ") };
            (currency.code().to_string(), format!("{currency}: {text}"))
        })
        .collect();
    // A HashMap's order changes from run to run; the output should not.
    lines.sort();
    lines.into_iter().map(|(_, line)| line).collect()
}
