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
pub(crate) mod tests {
    use super::*;
    use crate::sale::tests::example_sale;
    use std::str::FromStr;

    /// A refund of `draft` against the example sale, validated without limits: the fixture the
    /// connectors' request-building tests start from.
    pub(crate) fn valid_against_example_sale(draft: RefundDraft) -> ValidRefund {
        let policy = Policy { limits: usd(None, None), max_queue_len: None, ..policy() };
        let facts = Facts { sale: Some(example_sale()), ..Facts::default() };
        validate(&draft, &facts, &policy, RefundId::new(), 0).expect("the fixture draft is valid")
    }

    /// A cashier's draft for the example sale's receipt.
    pub(crate) fn example_draft(amount: &str) -> RefundDraft {
        RefundDraft {
            receipt_id: Some("RCP-2025-001".into()),
            amount: Some(amount.into()),
            reason: "Customer returned item".into(),
            operator: "emp_42".into(),
            ..RefundDraft::default()
        }
    }

    fn usd(
        max_refund: Option<Decimal>,
        max_pending_total: Option<Decimal>,
    ) -> HashMap<Currency, CurrencyLimits> {
        HashMap::from([(
            "USD".parse().unwrap(),
            CurrencyLimits { max_refund, max_pending_total, ..CurrencyLimits::default() },
        )])
    }

    fn policy() -> Policy {
        Policy {
            terminal_id: "till-01".into(),
            default_currency: "USD".parse().unwrap(),
            limits: usd(Some(Decimal::from(50)), Some(Decimal::from(200))),
            max_queue_len: Some(10),
            allow_unlinked: false,
        }
    }

    fn draft(amount: &str) -> RefundDraft {
        RefundDraft {
            receipt_id: Some("RCP-2025-001".into()),
            amount: Some(amount.into()),
            reason: "returned".into(),
            operator: "emp_42".into(),
            ..RefundDraft::default()
        }
    }

    fn facts() -> Facts {
        Facts { sale: Some(example_sale()), ..Facts::default() }
    }

    fn code(d: &RefundDraft, f: &Facts, p: &Policy) -> RejectCode {
        validate(d, f, p, RefundId::new(), 0).unwrap_err().code
    }

    fn request(manager: &str) -> crate::manager::ApprovalRequest {
        crate::manager::ApprovalRequest { manager: manager.into(), pin: crate::manager::Pin::new("1234") }
    }

    fn approval(manager: &str) -> Approval {
        Approval { manager: manager.into(), approved_at_ms: 42 }
    }

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn a_good_refund_carries_the_sale_and_balance() {
        let r = validate(&draft("5"), &facts(), &policy(), RefundId::new(), 7).unwrap();
        assert_eq!(r.currency.format(r.amount), "5.00");
        assert_eq!(r.balance_after, Some(dec("95.00")));
        assert_eq!(r.transaction_id.as_deref(), Some("txn_123"));
        assert!(!r.unlinked);
    }

    #[test]
    fn bad_amounts_are_invalid_amount() {
        for bad in ["1e3", "-5", "0.001", "abc", "0"] {
            assert_eq!(code(&draft(bad), &facts(), &policy()), RejectCode::InvalidAmount, "{bad}");
        }
    }

    #[test]
    fn cumulative_refunds_stay_within_the_captured_total() {
        let f = Facts { refunded_before: dec("97.00"), ..facts() };
        let err = validate(&draft("5.00"), &f, &policy(), RefundId::new(), 0).unwrap_err();
        assert_eq!(err.code, RejectCode::OverRefund);
        assert_eq!(err.message, "refundable balance is 3.00 USD");
        assert!(validate(&draft("3.00"), &f, &policy(), RefundId::new(), 0).is_ok());
    }

    #[test]
    fn without_breakdown_the_subtotal_caps_the_amount() {
        let p = Policy { limits: usd(None, Some(Decimal::from(200))), ..policy() };
        assert_eq!(code(&draft("95.00"), &facts(), &p), RejectCode::OverSubtotal);
        let with_tax = RefundDraft { tax: Some("5.00".into()), ..draft("95.00") };
        assert!(validate(&with_tax, &facts(), &p, RefundId::new(), 0).is_ok());
    }

    #[test]
    fn large_refunds_need_a_manager() {
        assert_eq!(code(&draft("60.00"), &facts(), &policy()), RejectCode::ManagerApprovalRequired);
        // An approval request alone (not verified) does not count.
        let asked = RefundDraft { manager_approval: Some(request("mgr_1")), ..draft("60.00") };
        assert_eq!(code(&asked, &facts(), &policy()), RejectCode::ManagerApprovalRequired);
        let f = Facts { approval: Some(approval("mgr_1")), ..facts() };
        let r = validate(&asked, &f, &policy(), RefundId::new(), 0).unwrap();
        assert_eq!(r.approval, Some(approval("mgr_1")));
    }

    #[test]
    fn exposure_cap_and_queue_length() {
        let f = Facts { pending_in_currency: dec("199.00"), ..facts() };
        assert_eq!(code(&draft("5.00"), &f, &policy()), RejectCode::ExposureCap);
        let f = Facts { queue_len: 10, ..facts() };
        assert_eq!(code(&draft("5.00"), &f, &policy()), RejectCode::QueueFull);
    }

    #[test]
    fn unknown_sales_need_config_and_a_manager() {
        let none = Facts::default();
        assert_eq!(code(&draft("5.00"), &none, &policy()), RejectCode::UnknownSale);
        let p = Policy { allow_unlinked: true, ..policy() };
        assert_eq!(code(&draft("5.00"), &none, &p), RejectCode::ManagerApprovalRequired);
        let asked = RefundDraft { manager_approval: Some(request("mgr")), ..draft("5.00") };
        assert_eq!(code(&asked, &none, &p), RejectCode::ManagerApprovalRequired);
        let approved = Facts { approval: Some(approval("mgr")), ..Facts::default() };
        let r = validate(&asked, &approved, &p, RefundId::new(), 0).unwrap();
        assert!(r.unlinked);
        assert_eq!(r.currency.code(), "USD");
    }

    #[test]
    fn card_and_currency_must_match_the_sale() {
        let wrong_card = RefundDraft { masked_pan: Some("411111******1111".into()), ..draft("5") };
        assert_eq!(code(&wrong_card, &facts(), &policy()), RejectCode::CardMismatch);
        let right_card = RefundDraft { masked_pan: Some("************2257".into()), ..draft("5") };
        assert!(validate(&right_card, &facts(), &policy(), RefundId::new(), 0).is_ok());
        let eur = RefundDraft { currency: Some("EUR".into()), ..draft("5") };
        assert_eq!(code(&eur, &facts(), &policy()), RejectCode::CurrencyMismatch);
    }

    #[test]
    fn tax_and_discount_are_bounded_by_the_refund_and_the_sale() {
        let p = Policy { limits: usd(None, None), ..policy() };
        let with = |amount: &str, tax: Option<&str>, discount: Option<&str>| RefundDraft {
            tax: tax.map(Into::into),
            discount: discount.map(Into::into),
            ..draft(amount)
        };
        // More tax than the refund itself: the 1.00 refund with 9.00 tax.
        let err = validate(&with("1.00", Some("9.00"), None), &facts(), &p, RefundId::new(), 0).unwrap_err();
        assert_eq!(err.code, RejectCode::InvalidAmount);
        assert!(err.message.contains("more than the refund amount"), "{}", err.message);
        // The sale's tax is 10.00 and its discount 0.00.
        assert_eq!(code(&with("20.00", Some("10.01"), None), &facts(), &p), RejectCode::InvalidAmount);
        assert!(validate(&with("20.00", Some("10.00"), None), &facts(), &p, RefundId::new(), 0).is_ok());
        assert_eq!(code(&with("20.00", None, Some("0.01")), &facts(), &p), RejectCode::InvalidAmount);
        assert!(validate(&with("20.00", Some("0"), Some("0")), &facts(), &p, RefundId::new(), 0).is_ok());
        // What earlier refunds took of the tax is no longer there.
        let f = Facts { tax_refunded_before: dec("8.00"), refunded_before: dec("40.00"), ..facts() };
        let err = validate(&with("20.00", Some("2.01"), None), &f, &p, RefundId::new(), 0).unwrap_err();
        assert_eq!(
            err.message,
            "field `tax`: 2.01 USD is more than the 2.00 USD of the sale's tax not yet refunded"
        );
        assert!(validate(&with("20.00", Some("2.00"), None), &f, &p, RefundId::new(), 0).is_ok());
    }

    #[test]
    fn limits_are_per_currency() {
        // A KWD refund must not pass a limit written for USD (499.999 < 500.00).
        let mut kwd_sale = example_sale();
        kwd_sale.currency = "KWD".parse().unwrap();
        let f = Facts { sale: Some(kwd_sale), ..facts() };
        let p = Policy { limits: usd(Some(dec("500.00")), None), ..policy() };
        let err = validate(&draft("4.999"), &f, &p, RefundId::new(), 0).unwrap_err();
        assert_eq!(err.code, RejectCode::NoLimitsForCurrency);
        assert!(err.message.contains("[limits.KWD]"), "{}", err.message);
        let mut limits = usd(Some(dec("500.00")), None);
        limits.insert(
            "KWD".parse().unwrap(),
            CurrencyLimits { max_refund: Some(dec("2.000")), ..CurrencyLimits::default() },
        );
        let p = Policy { limits, ..policy() };
        assert_eq!(code(&draft("4.999"), &f, &p), RejectCode::ManagerApprovalRequired);
        assert!(validate(&draft("1.999"), &f, &p, RefundId::new(), 0).is_ok());
    }
}
