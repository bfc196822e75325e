//! Velocity limits (SPEC section 5): how many refunds, and how much, one operator and the whole
//! till may refund in a rolling day before a manager approval is needed. Pure: the queue counts
//! the day's refunds inside the transaction that stores the new one.

use rust_decimal::Decimal;

use super::rejection::{RejectCode, Rejection};
use super::validate::{CurrencyLimits, Facts};
use crate::money::Currency;

/// The span the `..._per_day` limits look back over, ending now: a rolling 24 hours rather
/// than a calendar day, so a burst around midnight cannot use two days' allowance.
pub const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// What refunds made in the last [`DAY_MS`] that still count (not cancelled or declined) add up
/// to, in one currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayTotal {
    pub count: u64,
    pub amount: Decimal,
}

/// Refuses a refund that would take its operator or the till above a velocity limit of its
/// currency. Only called for a refund without a manager approval.
pub(super) fn check_velocity(
    currency: Currency,
    amount: Decimal,
    operator: &str,
    limits: &CurrencyLimits,
    facts: &Facts,
) -> Result<(), Rejection> {
    let over = |message: String| {
        Err(Rejection::new(
            RejectCode::ManagerApprovalRequired,
            format!("{message}; a manager approval is needed"),
        ))
    };
    let money = |a: Decimal| format!("{} {currency}", currency.format(a));
    if let Some(max) = limits.max_refunds_per_operator_per_day {
        if facts.operator_day.count >= max {
            return over(format!(
                "operator {operator} has already made {} {currency} refunds in the last 24 hours \
                 (max_refunds_per_operator_per_day = {max})",
                facts.operator_day.count
            ));
        }
    }
    let amount_limits = [
        (
            "operator",
            format!("operator {operator}"),
            limits.max_amount_per_operator_per_day,
            facts.operator_day,
        ),
        ("till", "this till".to_string(), limits.max_amount_per_till_per_day, facts.till_day),
    ];
    for (key, who, max, used) in amount_limits {
        if let Some(max) = max.filter(|max| used.amount + amount > *max) {
            return over(format!(
                "{who} has refunded {} in the last 24 hours; {} more would exceed \
                 max_amount_per_{key}_per_day = {}",
                money(used.amount),
                money(amount),
                money(max)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refund::validate::tests::example_draft;
    use crate::refund::validate::{validate, Policy};
    use crate::refund::RefundId;
    use crate::sale::tests::example_sale;
    use std::collections::HashMap;

    fn usd() -> Currency {
        "USD".parse().unwrap()
    }

    fn policy(limits: CurrencyLimits) -> Policy {
        Policy {
            terminal_id: "till-01".into(),
            default_currency: usd(),
            limits: HashMap::from([(usd(), limits)]),
            max_queue_len: None,
            allow_unlinked: false,
        }
    }

    fn day(count: u64, amount: i64) -> DayTotal {
        DayTotal { count, amount: Decimal::from(amount) }
    }

    fn facts(operator_day: DayTotal, till_day: DayTotal) -> Facts {
        Facts { sale: Some(example_sale()), operator_day, till_day, ..Facts::default() }
    }

    fn outcome(amount: &str, facts: &Facts, policy: &Policy) -> Result<(), Rejection> {
        validate(&example_draft(amount), facts, policy, RefundId::new(), 0).map(|_| ())
    }

    #[test]
    fn the_operators_count_is_capped() {
        let p =
            policy(CurrencyLimits { max_refunds_per_operator_per_day: Some(2), ..CurrencyLimits::default() });
        assert!(outcome("5.00", &facts(day(1, 10), day(1, 10)), &p).is_ok());
        let err = outcome("5.00", &facts(day(2, 10), day(2, 10)), &p).unwrap_err();
        assert_eq!(err.code, RejectCode::ManagerApprovalRequired);
        assert_eq!(
            err.message,
            "operator emp_42 has already made 2 USD refunds in the last 24 hours \
             (max_refunds_per_operator_per_day = 2); a manager approval is needed"
        );
        // Only a verified approval lifts the limit.
        let approval = crate::manager::Approval { manager: "mgr_1".into(), approved_at_ms: 42 };
        let approved = Facts { approval: Some(approval), ..facts(day(2, 10), day(2, 10)) };
        assert!(validate(&example_draft("5.00"), &approved, &p, RefundId::new(), 0).is_ok());
    }

    #[test]
    fn the_operators_and_the_tills_amounts_are_capped() {
        let p = policy(CurrencyLimits {
            max_amount_per_operator_per_day: Some(Decimal::from(50)),
            max_amount_per_till_per_day: Some(Decimal::from(80)),
            ..CurrencyLimits::default()
        });
        // Exactly at a limit is still under it.
        assert!(outcome("10.00", &facts(day(3, 40), day(3, 40)), &p).is_ok());
        let err = outcome("10.01", &facts(day(3, 40), day(3, 40)), &p).unwrap_err();
        assert_eq!(err.code, RejectCode::ManagerApprovalRequired);
        assert_eq!(
            err.message,
            "operator emp_42 has refunded 40.00 USD in the last 24 hours; 10.01 USD more would \
             exceed max_amount_per_operator_per_day = 50.00 USD; a manager approval is needed"
        );
        // Other operators' refunds count against the till.
        let err = outcome("10.00", &facts(day(0, 0), day(9, 75)), &p).unwrap_err();
        assert_eq!(err.code, RejectCode::ManagerApprovalRequired);
        assert!(err.message.starts_with("this till has refunded 75.00 USD"), "{}", err.message);
        assert!(err.message.contains("max_amount_per_till_per_day = 80.00 USD"), "{}", err.message);
    }

    #[test]
    fn no_velocity_limit_unless_configured() {
        let p = policy(CurrencyLimits::default());
        assert!(outcome("50.00", &facts(day(1_000, 90_000), day(1_000, 90_000)), &p).is_ok());
    }
}
