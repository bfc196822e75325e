//! The per-field checks `validate` applies to a refund against its sale: the card-present
//! check and the bounds of a tax / discount breakdown. Pure.

use rust_decimal::Decimal;

use super::draft::RefundDraft;
use super::rejection::{RejectCode, Rejection};
use super::validate::Facts;
use crate::money::Currency;
use crate::sale::{CardRef, Sale};

/// Tax and discount given with a refund are each at most the refund amount (SPEC section 5).
pub(super) fn check_breakdown_parts(
    currency: Currency,
    amount: Decimal,
    tax: Option<Decimal>,
    discount: Option<Decimal>,
) -> Result<(), Rejection> {
    for (field, part) in [("tax", tax), ("discount", discount)] {
        if let Some(part) = part.filter(|p| *p > amount) {
            return Err(Rejection::new(
                RejectCode::InvalidAmount,
                format!(
                    "field `{field}`: {} {currency} is more than the refund amount of {} {currency}",
                    currency.format(part),
                    currency.format(amount)
                ),
            ));
        }
    }
    Ok(())
}

/// A refund's tax and discount may not exceed the refund, nor what of the sale's own tax and
/// discount earlier refunds left: a back office would refuse such a record forever, after the
/// money had already moved.
pub(super) fn check_breakdown(
    currency: Currency,
    amount: Decimal,
    tax: Option<Decimal>,
    discount: Option<Decimal>,
    sale: &Sale,
    facts: &Facts,
) -> Result<(), Rejection> {
    check_breakdown_parts(currency, amount, tax, discount)?;
    let parts = [
        ("tax", tax, sale.tax, facts.tax_refunded_before),
        ("discount", discount, sale.discount, facts.discount_refunded_before),
    ];
    for (field, part, of_sale, before) in parts {
        let Some(part) = part else { continue };
        let left = (of_sale.unwrap_or(Decimal::ZERO) - before).max(Decimal::ZERO);
        if part > left {
            return Err(Rejection::new(
                RejectCode::InvalidAmount,
                format!(
                    "field `{field}`: {} {currency} is more than the {} {currency} of the sale's {field} not yet refunded",
                    currency.format(part),
                    currency.format(left)
                ),
            ));
        }
    }
    Ok(())
}

/// The card-present check: where the sale names a card and a card was presented, their last 4
/// digits must match.
pub(super) fn check_card(draft: &RefundDraft, sale: &Sale) -> Result<(), Rejection> {
    let presented = draft.masked_pan.as_deref().and_then(CardRef::from_pan_text);
    if let (Some(presented), Some(original)) = (presented, &sale.card) {
        if presented.last4 != original.last4 {
            return Err(Rejection::new(
                RejectCode::CardMismatch,
                format!(
                    "the card presented ends in {}, the sale was paid with a card ending in {}",
                    presented.last4, original.last4
                ),
            ));
        }
    }
    Ok(())
}
