//! The rules of SPEC section 5, applied to a draft and the facts the queue read inside the same
//! write transaction that will store the refund (so no two refunds can both pass a limit that
//! only one of them fits under).

use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;

use super::checks::{check_breakdown, check_breakdown_parts, check_card};
use super::draft::RefundDraft;
use super::itemized::{itemize, Itemized};
use super::lines::Taken;
use super::rejection::{RejectCode, Rejection};
use super::velocity::{check_velocity, DayTotal};
use super::{RefundId, ValidRefund};
use crate::manager::Approval;
use crate::money::{parse_amount, parse_non_negative, Currency};
use crate::sale::Sale;

/// Limits from config (`[limits]`), applied to every new refund.
#[derive(Debug, Clone)]
pub struct Policy {
    pub terminal_id: String,
    pub default_currency: Currency,
    /// The amount limits of each currency refunds may be made in (`[limits]` for the default
    /// currency, `[limits.EUR]` for others). A currency missing here is refused, never compared
    /// against another currency's numbers.
    pub limits: HashMap<Currency, CurrencyLimits>,
    pub max_queue_len: Option<u64>,
    pub allow_unlinked: bool,
}

/// The amount limits of one currency.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CurrencyLimits {
    /// Above this a manager approval is required.
    pub max_refund: Option<Decimal>,
    /// The most that may be undelivered at once (the exposure cap).
    pub max_pending_total: Option<Decimal>,
    /// Velocity limits over a rolling day (`velocity.rs`); above them a manager approval is
    /// required. The count is of the operator's refunds in this currency.
    pub max_refunds_per_operator_per_day: Option<u64>,
    pub max_amount_per_operator_per_day: Option<Decimal>,
    pub max_amount_per_till_per_day: Option<Decimal>,
}

/// What the queue knows at the moment of the refund.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The original sale, if the ledger has it.
    pub sale: Option<Sale>,
    /// The sum of the sale's earlier refunds that still count (not cancelled or declined).
    pub refunded_before: Decimal,
    /// The parts of those refunds given as tax and as discount.
    pub tax_refunded_before: Decimal,
    pub discount_refunded_before: Decimal,
    /// What those refunds took of each of the sale's lines (1-based), for itemized refunds.
    pub lines_before: BTreeMap<u32, Taken>,
    /// The undelivered total in the refund's currency (for the exposure cap).
    pub pending_in_currency: Decimal,
    /// Refunds not yet finished (for the queue length cap).
    pub queue_len: u64,
    /// The manager approval verified for this request before the transaction began
    /// (`manager::Approver`); a draft's unverified `manager_approval` never counts.
    pub approval: Option<Approval>,
    /// The operator's and the whole till's refunds in the refund's currency over the last day
    /// (for the velocity limits).
    pub operator_day: DayTotal,
    pub till_day: DayTotal,
}

/// Applies every rule, in an order that reports the most useful reason first.
pub fn validate(
    draft: &RefundDraft,
    facts: &Facts,
    policy: &Policy,
    id: RefundId,
    now_ms: i64,
) -> Result<ValidRefund, Rejection> {
    let sale_ref = draft.sale_ref()?;
    let reject = |code: RejectCode, message: String| Rejection::new(code, message);

    let currency = currency_of(draft, facts.sale.as_ref(), policy.default_currency)?;
    let itemized = match &facts.sale {
        Some(sale) => itemize(draft, sale, &facts.lines_before, sale.total - facts.refunded_before)?,
        None if !draft.lines.is_empty() && policy.allow_unlinked => {
            return Err(reject(
                RejectCode::InvalidRequest,
                "a refund that names lines needs its original sale in the ledger".to_string(),
            ));
        }
        None => None,
    };
    let (amount, tax, discount, lines) = match itemized {
        Some(Itemized { lines, amount, tax, discount }) => (amount, Some(tax), Some(discount), lines),
        None => {
            let Some(text) = draft.amount.as_deref() else {
                // Only a draft with lines has no amount, and only an unknown sale prices none.
                let what = sale_name(&sale_ref);
                return Err(reject(RejectCode::UnknownSale, format!("{what} is not in the sales ledger")));
            };
            let amount =
                parse_amount(text, currency).map_err(|e| reject(RejectCode::InvalidAmount, e.to_string()))?;
            let breakdown = |field: &str, value: &Option<String>| {
                value
                    .as_deref()
                    .map(|v| parse_non_negative(v, currency))
                    .transpose()
                    .map_err(|e| reject(RejectCode::InvalidAmount, format!("field `{field}`: {e}")))
            };
            (amount, breakdown("tax", &draft.tax)?, breakdown("discount", &draft.discount)?, Vec::new())
        }
    };
    let limits = policy.limits.get(&currency).ok_or_else(|| {
        reject(
            RejectCode::NoLimitsForCurrency,
            format!("no refund limits are configured for {currency} (add a [limits.{currency}] section)"),
        )
    })?;

    if let (Some(max), Some(len)) = (policy.max_queue_len, Some(facts.queue_len)) {
        if len >= max {
            return Err(reject(
                RejectCode::QueueFull,
                format!("the queue already holds {len} undelivered refunds, the configured maximum"),
            ));
        }
    }

    let balance_after = match &facts.sale {
        None => {
            if !policy.allow_unlinked {
                let what = sale_name(&sale_ref);
                return Err(reject(RejectCode::UnknownSale, format!("{what} is not in the sales ledger")));
            }
            if facts.approval.is_none() {
                return Err(reject(
                    RejectCode::ManagerApprovalRequired,
                    "a refund without a known original sale needs a manager approval".to_string(),
                ));
            }
            None
        }
        Some(sale) => {
            check_card(draft, sale)?;
            let refundable = sale.total - facts.refunded_before;
            if amount > refundable {
                return Err(reject(
                    RejectCode::OverRefund,
                    format!(
                        "refundable balance is {} {currency}",
                        currency.format(refundable.max(Decimal::ZERO))
                    ),
                ));
            }
            if tax.is_none() && discount.is_none() && amount > sale.subtotal {
                return Err(reject(
                    RejectCode::OverSubtotal,
                    format!(
                        "without a tax/discount breakdown a refund may not exceed the order subtotal of {} {currency}",
                        currency.format(sale.subtotal)
                    ),
                ));
            }
            check_breakdown(currency, amount, tax, discount, sale, facts)?;
            Some(refundable - amount)
        }
    };
    if facts.sale.is_none() {
        check_breakdown_parts(currency, amount, tax, discount)?;
    }

    if let Some(max) = limits.max_refund {
        if amount > max && facts.approval.is_none() {
            return Err(reject(
                RejectCode::ManagerApprovalRequired,
                format!("refunds above {} {currency} need a manager approval", currency.format(max)),
            ));
        }
    }
    if facts.approval.is_none() {
        check_velocity(currency, amount, draft.operator.trim(), limits, facts)?;
    }
    if let Some(cap) = limits.max_pending_total {
        if facts.pending_in_currency + amount > cap {
            return Err(reject(
                RejectCode::ExposureCap,
                format!(
                    "{} {currency} is already waiting to be delivered; the limit while offline is {} {currency}",
                    currency.format(facts.pending_in_currency),
                    currency.format(cap)
                ),
            ));
        }
    }

    let (receipt_id, transaction_id) = match (&facts.sale, sale_ref) {
        (Some(sale), _) => (Some(sale.receipt_id.clone()), Some(sale.transaction_id.clone())),
        (None, super::SaleRef::Receipt(r)) => (Some(r), None),
        (None, super::SaleRef::Transaction(t)) => (None, Some(t)),
    };
    Ok(ValidRefund {
        id,
        created_at_ms: now_ms,
        terminal_id: policy.terminal_id.clone(),
        currency,
        amount,
        tax,
        discount,
        reason: draft.reason.trim().to_string(),
        operator: draft.operator.trim().to_string(),
        approval: facts.approval.clone(),
        unlinked: facts.sale.is_none(),
        receipt_id,
        transaction_id,
        sale: facts.sale.clone(),
        balance_after,
        lines,
    })
}

fn sale_name(sale_ref: &super::SaleRef) -> String {
    match sale_ref {
        super::SaleRef::Receipt(r) => format!("receipt {r}"),
        super::SaleRef::Transaction(t) => format!("transaction {t}"),
    }
}

fn currency_of(draft: &RefundDraft, sale: Option<&Sale>, default: Currency) -> Result<Currency, Rejection> {
    let asked = draft
        .currency
        .as_deref()
        .map(str::parse::<Currency>)
        .transpose()
        .map_err(|e| Rejection::new(RejectCode::InvalidAmount, e.to_string()))?;
    match (sale, asked) {
        (Some(sale), Some(asked)) if asked != sale.currency => Err(Rejection::new(
            RejectCode::CurrencyMismatch,
            format!("the original sale was paid in {}, not {asked}", sale.currency),
        )),
        (Some(sale), _) => Ok(sale.currency),
        (None, asked) => Ok(asked.unwrap_or(default)),
    }
}

impl CurrencyLimits {
    /// Whether any velocity limit is set, so the queue need only count the day's refunds then.
    pub fn has_velocity(&self) -> bool {
        self.max_refunds_per_operator_per_day.is_some()
            || self.max_amount_per_operator_per_day.is_some()
            || self.max_amount_per_till_per_day.is_some()
    }

    /// No amount limits, for `currency` alone.
    pub fn only(currency: Currency) -> HashMap<Currency, CurrencyLimits> {
        HashMap::from([(currency, CurrencyLimits::default())])
    }
}

#[cfg(test)]
pub(crate) mod tests;
