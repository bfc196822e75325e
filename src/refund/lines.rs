//! The arithmetic of itemized refunds (SPEC section 5a), pure.
//!
//! A sale's lines are first given their exact share of the sale's tax and discount
//! ([`attribute`]); then `q` units of a line cost the line's figures × q / quantity, rounded
//! down to the currency's minor unit, the unit that completes the line taking the remainder
//! ([`unit_share`]). Units are counted, not named: whichever refund takes a line's last unit gets
//! what the refunds that still count left of the line ([`Taken`]), so the units of a line
//! refunded one by one in any order add up to exactly the line, and all lines refunded add up to
//! exactly the sale's total, tax and discount. The remainder is what is left, not a fixed
//! rounding difference, so a refund cancelled or declined in between (its units come back)
//! cannot make the line pay out a remainder twice.
//!
//! (A line of 3 units with a total of 10.00 refunds 3.33, 3.33 and 3.34.)

use std::collections::BTreeMap;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

/// One receipt line as sold: its figures are what the customer paid for it, tax included, after
/// its discount. `tax` / `discount` are the item's own when the receipt gave them.
#[derive(Debug, Clone, PartialEq)]
pub struct SoldLine {
    pub quantity: u32,
    pub total: Decimal,
    pub tax: Option<Decimal>,
    pub discount: Option<Decimal>,
}

/// A line with its share of the sale's tax and discount settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineFigures {
    pub quantity: u32,
    pub total: Decimal,
    pub tax: Decimal,
    pub discount: Decimal,
}

/// What `quantity` units of one line refund. Sealed in the refund body as it was priced, so a
/// destination sends these figures and never prices again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedLine {
    /// 1-based position in the receipt's items.
    pub line: u32,
    pub quantity: u32,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub tax: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub discount: Decimal,
}

/// An itemized refund priced: its lines and their sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    pub lines: Vec<PricedLine>,
    pub amount: Decimal,
    pub tax: Decimal,
    pub discount: Decimal,
}

/// What the refunds of a sale that still count (not cancelled or declined) took of one line:
/// the ledger keeps this per line, sealed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taken {
    pub quantity: u32,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub tax: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub discount: Decimal,
}

impl Taken {
    /// Adds (`sign` = 1) or takes away (`sign` = -1) one refund's part of the line.
    pub fn apply(&mut self, line: &PricedLine, sign: i64) {
        if sign >= 0 {
            self.quantity = self.quantity.saturating_add(line.quantity);
        } else {
            self.quantity = self.quantity.saturating_sub(line.quantity);
        }
        let sign = Decimal::from(sign);
        self.amount += sign * line.amount;
        self.tax += sign * line.tax;
        self.discount += sign * line.discount;
    }

    /// Nothing taken: the ledger drops such an entry.
    pub fn is_empty(&self) -> bool {
        self.quantity == 0 && self.amount.is_zero() && self.tax.is_zero() && self.discount.is_zero()
    }
}

/// Why a list of lines cannot be refunded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line {0} is not on the receipt (it has {1} lines)")]
    NoSuchLine(u32, usize),
    #[error("line {0} is named twice")]
    Repeated(u32),
    #[error("line {0}: a quantity must be at least 1")]
    ZeroQuantity(u32),
    #[error("line {line}: {asked} asked, but only {left} of {sold} are left to refund")]
    OverQuantity { line: u32, asked: u32, left: u32, sold: u32 },
    #[error("a refund with lines must name at least one")]
    Empty,
}

/// `x` written with exactly `minor` decimals (a computed zero has none): figures go on the wire
/// as the currency writes them. Exact for the multiples of a minor unit the arithmetic makes.
fn at_scale(mut x: Decimal, minor: u32) -> Decimal {
    x.rescale(minor);
    x
}

/// Rounds toward zero to `minor` decimals.
fn down(x: Decimal, minor: u32) -> Decimal {
    x.round_dp_with_strategy(minor, RoundingStrategy::ToZero)
}

/// Splits `whole` over `weights` in proportion, rounded down to `minor` decimals, the remainder
/// going to the last line with a weight: the shares add up to exactly `whole`. With no weight
/// at all, the remainder goes to the last line.
fn split(whole: Decimal, weights: &[Decimal], minor: u32) -> Vec<Decimal> {
    let sum: Decimal = weights.iter().copied().sum();
    let mut shares: Vec<Decimal> = if sum.is_zero() {
        vec![Decimal::ZERO; weights.len()]
    } else {
        weights.iter().map(|w| down(whole * *w / sum, minor)).collect()
    };
    let last = weights.iter().rposition(|w| !w.is_zero()).or(weights.len().checked_sub(1));
    if let Some(last) = last {
        let given: Decimal = shares.iter().copied().sum();
        shares[last] += whole - given;
    }
    shares
}

/// Each line's tax and discount: the item's own where the receipt gave it; otherwise what of the
/// sale's figure the items do not claim, shared among the other lines in proportion to their
/// totals. (A receipt whose item figures exceed the sale's is refused before it gets here.)
pub fn attribute(
    lines: &[SoldLine],
    sale_tax: Option<Decimal>,
    sale_discount: Option<Decimal>,
    minor: u32,
) -> Vec<LineFigures> {
    let shares = |own: fn(&SoldLine) -> Option<Decimal>, sale: Option<Decimal>| -> Vec<Decimal> {
        let claimed: Decimal = lines.iter().filter_map(own).sum();
        let rest = (sale.unwrap_or(Decimal::ZERO) - claimed).max(Decimal::ZERO);
        let weights: Vec<Decimal> =
            lines.iter().map(|l| if own(l).is_some() { Decimal::ZERO } else { l.total }).collect();
        let spread = if weights.iter().all(|w| w.is_zero()) {
            vec![Decimal::ZERO; lines.len()]
        } else {
            split(rest, &weights, minor)
        };
        lines.iter().zip(spread).map(|(l, s)| own(l).unwrap_or(s)).collect()
    };
    let taxes = shares(|l| l.tax, sale_tax);
    let discounts = shares(|l| l.discount, sale_discount);
    lines
        .iter()
        .zip(taxes.into_iter().zip(discounts))
        .map(|(l, (tax, discount))| LineFigures { quantity: l.quantity, total: l.total, tax, discount })
        .collect()
}

/// What units `already + 1 ..= already + quantity` of a line whose units together make `whole`
/// cost: `quantity` units rounded down, plus the remainder when they include the last unit.
/// Callers keep `already + quantity <= sold`.
pub fn unit_share(whole: Decimal, sold: u32, already: u32, quantity: u32, minor: u32) -> Decimal {
    if sold == 0 {
        return Decimal::ZERO;
    }
    let unit = down(whole / Decimal::from(sold), minor);
    let mut share = unit * Decimal::from(quantity);
    if already + quantity == sold {
        share += whole - unit * Decimal::from(sold);
    }
    share
}

/// Splits one refunded line's tax over the line's named taxes in proportion to their amounts
/// (the remainder to the last), so the named parts add up to exactly the line's tax share.
pub fn split_named(tax: Decimal, named: &[Decimal], minor: u32) -> Vec<Decimal> {
    split(tax, named, minor)
}

/// Prices a refund of `asked` (line → quantity) on `lines`, given what earlier refunds that
/// still count took of each line (1-based). Refuses a line not on the receipt, one named twice,
/// a zero quantity and more units than are left.
pub fn price(
    lines: &[LineFigures],
    refunded: &BTreeMap<u32, Taken>,
    asked: &[(u32, u32)],
    minor: u32,
) -> Result<Priced, LineError> {
    if asked.is_empty() {
        return Err(LineError::Empty);
    }
    let mut seen = BTreeMap::new();
    let mut priced = Vec::with_capacity(asked.len());
    for &(line, quantity) in asked {
        let figures = line
            .checked_sub(1)
            .and_then(|i| lines.get(i as usize))
            .ok_or(LineError::NoSuchLine(line, lines.len()))?;
        if seen.insert(line, ()).is_some() {
            return Err(LineError::Repeated(line));
        }
        if quantity == 0 {
            return Err(LineError::ZeroQuantity(line));
        }
        let taken = refunded.get(&line).copied().unwrap_or_default();
        let already = taken.quantity;
        let left = figures.quantity.saturating_sub(already);
        if quantity > left {
            return Err(LineError::OverQuantity { line, asked: quantity, left, sold: figures.quantity });
        }
        // The refund that completes the line takes what is left of it; any other takes whole
        // units, rounded down.
        let completes = already + quantity == figures.quantity;
        let share = |whole: Decimal, took: Decimal| {
            if completes {
                (whole - took).max(Decimal::ZERO)
            } else {
                unit_share(whole, figures.quantity, already, quantity, minor)
            }
        };
        priced.push(PricedLine {
            line,
            quantity,
            amount: at_scale(share(figures.total, taken.amount), minor),
            tax: at_scale(share(figures.tax, taken.tax), minor),
            discount: at_scale(share(figures.discount, taken.discount), minor),
        });
    }
    let sum = |f: fn(&PricedLine) -> Decimal| at_scale(priced.iter().map(f).sum(), minor);
    Ok(Priced {
        amount: sum(|p| p.amount),
        tax: sum(|p| p.tax),
        discount: sum(|p| p.discount),
        lines: priced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A line with no tax or discount of its own, on a sale with none: its shares are zeros
    /// written as the currency writes them ("0.00", not "0"), as they go on the wire.
    #[test]
    fn computed_zeros_keep_the_currency_scale() {
        let sold = [SoldLine { quantity: 2, total: "10.00".parse().unwrap(), tax: None, discount: None }];
        let lines = attribute(&sold, None, None, 2);
        let priced = price(&lines, &BTreeMap::new(), &[(1, 1)], 2).expect("priced");
        let shown = |d: Decimal| d.to_string();
        assert_eq!(shown(priced.tax), "0.00");
        assert_eq!(shown(priced.discount), "0.00");
        assert_eq!(shown(priced.lines[0].tax), "0.00");
        assert_eq!(shown(priced.amount), "5.00");
    }

    fn d(text: &str) -> Decimal {
        text.parse().expect("decimal")
    }

    /// What earlier refunds took, as the ledger would hold it: `units` per line at these prices.
    fn took(priced: &[Priced]) -> BTreeMap<u32, Taken> {
        let mut taken: BTreeMap<u32, Taken> = BTreeMap::new();
        for p in priced {
            for l in &p.lines {
                taken.entry(l.line).or_default().apply(l, 1);
            }
        }
        taken
    }

    fn sold(quantity: u32, total: &str) -> SoldLine {
        SoldLine { quantity, total: d(total), tax: None, discount: None }
    }

    #[test]
    fn three_units_of_ten_refund_333_333_334_in_any_order_of_refunds() {
        let lines = attribute(&[sold(3, "10.00")], None, None, 2);
        let mut done = Vec::new();
        for _ in 0..3 {
            let p = price(&lines, &took(&done), &[(1, 1)], 2).expect("priced");
            done.push(p);
        }
        assert_eq!(done.iter().map(|p| p.amount).collect::<Vec<_>>(), [d("3.33"), d("3.33"), d("3.34")]);
        // Two then one, or one then two: the same 10.00.
        let two_first = price(&lines, &BTreeMap::new(), &[(1, 2)], 2).expect("two");
        let then_one =
            price(&lines, &took(std::slice::from_ref(&two_first)), &[(1, 1)], 2).expect("one").amount;
        assert_eq!((two_first.amount, then_one), (d("6.66"), d("3.34")));
    }

    #[test]
    fn a_cancelled_refund_gives_its_units_back_without_a_second_remainder() {
        let lines = attribute(&[sold(3, "10.00")], None, None, 2);
        let first = price(&lines, &BTreeMap::new(), &[(1, 1)], 2).expect("first");
        let rest = price(&lines, &took(std::slice::from_ref(&first)), &[(1, 2)], 2).expect("rest");
        assert_eq!((first.amount, rest.amount), (d("3.33"), d("6.67")));
        // The first is cancelled: its unit comes back at what is left of the line, 3.33, not
        // at a fixed last-unit price of 3.34 (which would pay the line 10.01).
        let again = price(&lines, &took(std::slice::from_ref(&rest)), &[(1, 1)], 2).expect("again");
        assert_eq!(rest.amount + again.amount, d("10.00"));
    }

    #[test]
    fn the_sale_tax_is_shared_by_line_totals_and_adds_up() {
        // 100.00 = 10.00 (two teas) + 90.00 (a grinder); tax 10.00 over the sale.
        let lines = attribute(&[sold(2, "10.00"), sold(1, "90.00")], Some(d("10.00")), Some(d("0")), 2);
        assert_eq!((lines[0].tax, lines[1].tax), (d("1.00"), d("9.00")));
        let one_tea = price(&lines, &BTreeMap::new(), &[(1, 1)], 2).expect("priced");
        assert_eq!((one_tea.amount, one_tea.tax, one_tea.discount), (d("5.00"), d("0.50"), d("0")));
    }

    #[test]
    fn an_items_own_tax_wins_and_the_rest_goes_to_the_others() {
        let mut with_tax = sold(1, "50.00");
        with_tax.tax = Some(d("4.00"));
        let lines = attribute(&[with_tax, sold(1, "30.00"), sold(1, "20.00")], Some(d("9.00")), None, 2);
        assert_eq!(lines.iter().map(|l| l.tax).collect::<Vec<_>>(), [d("4.00"), d("3.00"), d("2.00")]);
    }

    #[test]
    fn refusals_name_the_line() {
        let lines = attribute(&[sold(2, "10.00")], None, None, 2);
        let none = BTreeMap::new();
        assert_eq!(price(&lines, &none, &[(2, 1)], 2), Err(LineError::NoSuchLine(2, 1)));
        assert_eq!(price(&lines, &none, &[(0, 1)], 2), Err(LineError::NoSuchLine(0, 1)));
        assert_eq!(price(&lines, &none, &[(1, 0)], 2), Err(LineError::ZeroQuantity(1)));
        assert_eq!(price(&lines, &none, &[(1, 1), (1, 1)], 2), Err(LineError::Repeated(1)));
        assert_eq!(price(&lines, &none, &[], 2), Err(LineError::Empty));
        let one_left = took(&[price(&lines, &none, &[(1, 1)], 2).expect("one")]);
        assert_eq!(
            price(&lines, &one_left, &[(1, 2)], 2),
            Err(LineError::OverQuantity { line: 1, asked: 2, left: 1, sold: 2 })
        );
    }

    /// A sale: lines with quantities and totals in minor units, and sale-level tax and discount
    /// no larger than its total.
    fn sale() -> impl Strategy<Value = (Vec<SoldLine>, Decimal, Decimal, u32)> {
        (0u32..=3).prop_flat_map(|minor| {
            (prop::collection::vec((1u32..=7, 1i64..=100_000), 1..=6), 0u32..=100, 0u32..=100).prop_map(
                move |(raw, tax_pct, disc_pct)| {
                    let lines: Vec<SoldLine> = raw
                        .into_iter()
                        .map(|(q, cents)| SoldLine {
                            quantity: q,
                            total: Decimal::new(cents, minor),
                            tax: None,
                            discount: None,
                        })
                        .collect();
                    let total: Decimal = lines.iter().map(|l| l.total).sum();
                    let tax = down(total * Decimal::from(tax_pct) / Decimal::from(100), minor);
                    let discount = down(total * Decimal::from(disc_pct) / Decimal::from(100), minor);
                    (lines, tax, discount, minor)
                },
            )
        })
    }

    proptest! {
        #[test]
        fn shares_of_the_sale_add_up_exactly((lines, tax, discount, minor) in sale()) {
            let figures = attribute(&lines, Some(tax), Some(discount), minor);
            prop_assert_eq!(figures.iter().map(|f| f.tax).sum::<Decimal>(), tax);
            prop_assert_eq!(figures.iter().map(|f| f.discount).sum::<Decimal>(), discount);
            for f in &figures {
                prop_assert!(f.tax >= Decimal::ZERO && f.discount >= Decimal::ZERO);
                prop_assert!(f.tax.scale() <= minor && f.discount.scale() <= minor);
            }
        }

        /// Any sequence of partial refunds, some of them cancelled again, never takes more than a
        /// line; each is at least zero and in whole minor units; and refunding everything yields
        /// exactly the sale's total, tax and discount.
        #[test]
        fn partial_refunds_never_exceed_and_everything_adds_up(
            (lines, tax, discount, minor) in sale(),
            steps in prop::collection::vec((0usize..6, 1u32..=3, prop::bool::weighted(0.2)), 0..40),
        ) {
            let figures = attribute(&lines, Some(tax), Some(discount), minor);
            // The refunds that still count; a cancelled one is removed, as the ledger does.
            let mut live: Vec<Priced> = Vec::new();
            let check = |live: &[Priced]| -> Result<(), TestCaseError> {
                for (line, t) in took(live) {
                    let f = figures[line as usize - 1];
                    prop_assert!(t.amount <= f.total && t.tax <= f.tax && t.discount <= f.discount, "line {} over: {:?} of {:?}", line, t, f);
                }
                Ok(())
            };
            for (i, q, cancel) in steps {
                if cancel && !live.is_empty() {
                    live.remove(i % live.len());
                    continue;
                }
                let line = (i % figures.len()) as u32 + 1;
                let taken = took(&live);
                let left = figures[line as usize - 1].quantity - taken.get(&line).map_or(0, |t| t.quantity);
                if left > 0 {
                    let p = price(&figures, &taken, &[(line, q.min(left))], minor).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert!(p.amount >= Decimal::ZERO && p.amount.scale() <= minor);
                    live.push(p);
                    check(&live)?;
                }
            }
            // Then whatever is left, in one refund.
            let taken = took(&live);
            let rest: Vec<(u32, u32)> = figures
                .iter()
                .enumerate()
                .map(|(i, f)| (i as u32 + 1, f.quantity - taken.get(&(i as u32 + 1)).map_or(0, |t| t.quantity)))
                .filter(|(_, left)| *left > 0)
                .collect();
            if !rest.is_empty() {
                live.push(price(&figures, &taken, &rest, minor).map_err(|e| TestCaseError::fail(e.to_string()))?);
            }
            check(&live)?;
            let sums = live.iter().fold((Decimal::ZERO, Decimal::ZERO, Decimal::ZERO), |a, p| (a.0 + p.amount, a.1 + p.tax, a.2 + p.discount));
            let total: Decimal = lines.iter().map(|l| l.total).sum();
            prop_assert_eq!(sums, (total, tax, discount));
        }
    }
}
