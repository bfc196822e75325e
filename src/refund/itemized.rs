//! Itemized refunds against a known sale (SPEC section 5a), pure: the lines a refund names are
//! priced by [`lines`](super::lines) against what the sale's counting refunds already took, and
//! an amount-only refund of the sale's whole remaining balance becomes a refund of every
//! remaining unit. The figures found here are sealed into the refund; no destination prices
//! again.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::draft::RefundDraft;
use super::lines::{self, LineError, PricedLine, SoldLine, Taken};
use super::rejection::{RejectCode, Rejection};
use crate::money::{parse_amount, parse_non_negative, Currency};
use crate::sale::Sale;

/// One refunded line as sealed in the refund: its priced figures and its tax split over the
/// item's named taxes (empty when the item named none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefundLine {
    #[serde(flatten)]
    pub priced: PricedLine,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taxes: Vec<TaxShare>,
}

/// A refunded line's part of one of its item's named taxes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaxShare {
    pub name: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rust_decimal::serde::str_option")]
    pub percentage: Option<Decimal>,
}

/// An itemized refund priced: its lines and their sums, which become the refund's amount, tax
/// and discount.
#[derive(Debug, Clone, PartialEq)]
pub struct Itemized {
    pub lines: Vec<RefundLine>,
    pub amount: Decimal,
    pub tax: Decimal,
    pub discount: Decimal,
}

/// Prices the draft's lines on `sale`, given what each line's counting refunds took
/// (`taken`). Without lines, a refund of exactly the sale's remaining balance (`refundable`)
/// with no other breakdown refunds every remaining unit, when those units are worth exactly
/// that; any other amount-only refund stays amount-only (`None`).
pub fn itemize(
    draft: &RefundDraft,
    sale: &Sale,
    taken: &BTreeMap<u32, Taken>,
    refundable: Decimal,
) -> Result<Option<Itemized>, Rejection> {
    let currency = sale.currency;
    let minor = currency.minor_units();
    let sold: Vec<SoldLine> = sale
        .items
        .iter()
        .map(|i| SoldLine { quantity: i.quantity, total: i.total, tax: i.tax, discount: i.discount })
        .collect();
    let figures = lines::attribute(&sold, sale.tax, sale.discount, minor);
    if draft.lines.is_empty() {
        let Some(text) = draft.amount.as_deref() else { return Ok(None) };
        let amount = parse_amount(text, currency).map_err(|e| invalid_amount(e.to_string()))?;
        if amount != refundable || draft.tax.is_some() || draft.discount.is_some() || sale.items.is_empty() {
            return Ok(None);
        }
        let rest: Vec<(u32, u32)> = figures
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let line = i as u32 + 1;
                (line, f.quantity.saturating_sub(taken.get(&line).map_or(0, |t| t.quantity)))
            })
            .filter(|(_, left)| *left > 0)
            .collect();
        return Ok(lines::price(&figures, taken, &rest, minor)
            .ok()
            .filter(|p| p.amount == amount)
            .map(|p| with_taxes(sale, p, minor)));
    }
    if sale.items.is_empty() {
        return Err(Rejection::new(
            RejectCode::InvalidRequest,
            format!("receipt {} lists no items, so a refund cannot name lines", sale.receipt_id),
        ));
    }
    let asked: Vec<(u32, u32)> = draft.lines.iter().map(|l| (l.line, l.quantity)).collect();
    let priced = lines::price(&figures, taken, &asked, minor).map_err(|e| match e {
        LineError::OverQuantity { .. } => Rejection::new(RejectCode::OverRefund, e.to_string()),
        _ => Rejection::new(RejectCode::InvalidRequest, e.to_string()),
    })?;
    let given = [("amount", &draft.amount, priced.amount), ("tax", &draft.tax, priced.tax)];
    for (field, text, priced) in given.into_iter().chain([("discount", &draft.discount, priced.discount)]) {
        let Some(text) = text else { continue };
        let value = parse_non_negative(text, currency)
            .map_err(|e| invalid_amount(format!("field `{field}`: {e}")))?;
        if value != priced {
            return Err(mismatch(currency, field, value, priced));
        }
    }
    Ok(Some(with_taxes(sale, priced, minor)))
}

/// The refund's lines with each one's tax split over its item's named taxes.
fn with_taxes(sale: &Sale, priced: lines::Priced, minor: u32) -> Itemized {
    let lines = priced
        .lines
        .iter()
        .map(|p| {
            let item = (p.line as usize).checked_sub(1).and_then(|i| sale.items.get(i));
            let named = item.map(|i| i.taxes.as_slice()).unwrap_or_default();
            let weights: Vec<Decimal> = named.iter().map(|t| t.amount).collect();
            let parts =
                if named.is_empty() { Vec::new() } else { lines::split_named(p.tax, &weights, minor) };
            let taxes = named
                .iter()
                .zip(parts)
                .map(|(t, amount)| TaxShare { name: t.name.clone(), amount, percentage: t.percentage })
                .collect();
            RefundLine { priced: *p, taxes }
        })
        .collect();
    Itemized { lines, amount: priced.amount, tax: priced.tax, discount: priced.discount }
}

fn invalid_amount(message: String) -> Rejection {
    Rejection::new(RejectCode::InvalidAmount, message)
}

fn mismatch(currency: Currency, field: &str, given: Decimal, priced: Decimal) -> Rejection {
    Rejection::new(
        RejectCode::AmountMismatch,
        format!(
            "field `{field}`: {} {currency} was given, but the lines refund {} {currency}",
            currency.format(given),
            currency.format(priced)
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::draft::LineRequest;
    use super::super::lines::{PricedLine, Taken};
    use super::super::validate::tests::example_draft;
    use super::super::validate::{validate, CurrencyLimits, Facts, Policy};
    use super::super::{RefundId, RejectCode, Rejection, ValidRefund};
    use crate::sale::tests::example_sale;
    use rust_decimal::Decimal;

    fn d(text: &str) -> Decimal {
        text.parse().expect("decimal")
    }

    fn policy() -> Policy {
        let usd = "USD".parse().expect("USD");
        Policy {
            terminal_id: "till-01".into(),
            default_currency: usd,
            limits: CurrencyLimits::only(usd),
            max_queue_len: None,
            allow_unlinked: false,
        }
    }

    /// The example sale: line 1 is two Sweet Teas for 10.00, line 2 a grinder for 90.00, with a
    /// tax of 10.00 over the sale.
    fn run(amount: Option<&str>, lines: &[(u32, u32)], facts: Facts) -> Result<ValidRefund, Rejection> {
        let mut draft = example_draft(amount.unwrap_or("0"));
        draft.amount = amount.map(str::to_string);
        draft.lines = lines.iter().map(|&(line, quantity)| LineRequest { line, quantity }).collect();
        validate(&draft, &Facts { sale: Some(example_sale()), ..facts }, &policy(), RefundId::new(), 0)
    }

    #[test]
    fn one_of_two_sweet_teas() {
        let r = run(None, &[(1, 1)], Facts::default()).expect("valid");
        assert_eq!((r.amount, r.tax, r.discount), (d("5.00"), Some(d("0.50")), Some(d("0.00"))));
        assert_eq!(r.lines.len(), 1);
        assert_eq!((r.lines[0].priced.line, r.lines[0].priced.quantity), (1, 1));
        assert_eq!(r.balance_after, Some(d("95.00")));
        // The same with the amount the kiosk showed.
        assert_eq!(run(Some("5"), &[(1, 1)], Facts::default()).expect("valid").amount, d("5.00"));
    }

    #[test]
    fn an_amount_that_is_not_the_lines_is_amount_mismatch() {
        let err = run(Some("5.01"), &[(1, 1)], Facts::default()).unwrap_err();
        assert_eq!(err.code, RejectCode::AmountMismatch);
        assert_eq!(err.message, "field `amount`: 5.01 USD was given, but the lines refund 5.00 USD");
    }

    #[test]
    fn units_taken_by_counting_refunds_are_not_refundable_again() {
        let took = PricedLine { line: 1, quantity: 2, amount: d("10.00"), tax: d("1.00"), discount: d("0") };
        let mut taken = Taken::default();
        taken.apply(&took, 1);
        let facts = Facts {
            lines_before: BTreeMap::from([(1, taken)]),
            refunded_before: d("10.00"),
            tax_refunded_before: d("1.00"),
            ..Facts::default()
        };
        let err = run(None, &[(1, 1)], facts.clone()).unwrap_err();
        assert_eq!(
            (err.code, err.message.as_str()),
            (RejectCode::OverRefund, "line 1: 1 asked, but only 0 of 2 are left to refund")
        );
        assert_eq!(run(None, &[(3, 1)], facts.clone()).unwrap_err().code, RejectCode::InvalidRequest);
        // What is left, by amount: the grinder's line, with its tax.
        let rest = run(Some("90.00"), &[], facts).expect("valid");
        assert_eq!(rest.lines.iter().map(|l| l.priced.line).collect::<Vec<_>>(), [2]);
        assert_eq!(rest.tax, Some(d("9.00")));
    }

    #[test]
    fn the_whole_balance_by_amount_refunds_every_line_and_a_part_refunds_none() {
        let all = run(Some("100.00"), &[], Facts::default()).expect("valid");
        assert_eq!(all.lines.len(), 2);
        assert_eq!((all.tax, all.discount), (Some(d("10.00")), Some(d("0.00"))));
        let part = run(Some("20.00"), &[], Facts::default()).expect("valid");
        assert!(part.lines.is_empty() && part.tax.is_none());
        // After a goodwill refund the lines are worth more than the balance: amount-only, and
        // without a breakdown the gateway's subtotal rule applies.
        let after = Facts { refunded_before: d("5.00"), ..Facts::default() };
        assert_eq!(run(Some("95.00"), &[], after).unwrap_err().code, RejectCode::OverSubtotal);
    }
}
