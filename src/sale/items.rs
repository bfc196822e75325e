//! A sale's lines: as they arrive, as they are kept, and the rules that make them add up with
//! the receipt (SPEC sections 5 and 5a). Lines are numbered by their position in `items`,
//! 1-based; the number is not stored, so receipts kept before lines had numbers read the same.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::SaleError;
use crate::money::{parse_non_negative, Currency};

/// One line of a sale as it arrives from outside.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LineItemInput {
    /// The line's 1-based number. Optional; when given it must be the item's position, so a
    /// terminal and the agent can never disagree about which line a refund names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    pub name: String,
    pub quantity: u32,
    pub price: String,
    pub total: String,
    pub product_id: String,
    pub variant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    /// The tax in the line's total; without it the line shares the sale's tax by its total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax: Option<String>,
    /// What was taken off the line; without it the line shares the sale's discount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discount: Option<String>,
    /// The line's taxes by name; their amounts add up to the line's `tax`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taxes: Vec<ItemTaxInput>,
}

/// One named tax of a line as it arrives.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ItemTaxInput {
    pub name: String,
    pub amount: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<String>,
}

/// A sale line, with the product and variant ids Final POS requires on refund lines. The
/// optional figures are omitted when absent, so a receipt stored before they existed reads
/// back, and compares, exactly as it was.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LineItem {
    pub name: String,
    pub quantity: u32,
    #[serde(with = "rust_decimal::serde::str")]
    pub price: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    pub product_id: String,
    pub variant_id: String,
    pub sku: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rust_decimal::serde::str_option")]
    pub tax: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rust_decimal::serde::str_option")]
    pub discount: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taxes: Vec<ItemTax>,
}

/// One named tax of a line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ItemTax {
    pub name: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rust_decimal::serde::str_option")]
    pub percentage: Option<Decimal>,
}

/// Reads the lines of a receipt: amounts parsed in the sale's currency, names masked, the
/// line numbers checked, each line's taxes adding up to its tax (a line with taxes and no tax
/// takes their sum as its tax), and neither tax nor discount above the line's total.
pub(super) fn read_items(currency: Currency, inputs: Vec<LineItemInput>) -> Result<Vec<LineItem>, SaleError> {
    let amount = |field: &'static str, text: &str| {
        parse_non_negative(text, currency).map_err(|source| SaleError::Amount { field, source })
    };
    let f = |d: Decimal| currency.format(d);
    let mut items = Vec::with_capacity(inputs.len());
    for (index, item) in inputs.into_iter().enumerate() {
        let number = index as u32 + 1;
        super::require("items.product_id", &item.product_id)?;
        super::require("items.variant_id", &item.variant_id)?;
        if let Some(line) = item.line.filter(|l| *l != number) {
            return Err(SaleError::Inconsistent(format!("item {number} says it is line {line}")));
        }
        let mut taxes = Vec::with_capacity(item.taxes.len());
        for t in item.taxes {
            super::require("items.taxes.name", &t.name)?;
            let percentage = match t.percentage.as_deref() {
                None => None,
                Some(p) => Some(
                    p.trim().parse::<Decimal>().ok().filter(|p| *p >= Decimal::ZERO).ok_or_else(|| {
                        SaleError::Inconsistent(format!(
                            "item {number}: a tax percentage must be a decimal number of at least 0"
                        ))
                    })?,
                ),
            };
            taxes.push(ItemTax {
                name: crate::pan::mask_text(&t.name).into_owned(),
                amount: amount("items.taxes.amount", &t.amount)?,
                percentage,
            });
        }
        let total = amount("items.total", &item.total)?;
        let listed: Option<Decimal> = (!taxes.is_empty()).then(|| taxes.iter().map(|t| t.amount).sum());
        let tax = match (item.tax.as_deref().map(|t| amount("items.tax", t)).transpose()?, listed) {
            (Some(tax), Some(listed)) if tax != listed => {
                return Err(SaleError::Inconsistent(format!(
                    "item {number}: its taxes add up to {}, not its tax {}",
                    f(listed),
                    f(tax)
                )));
            }
            (tax, listed) => tax.or(listed),
        };
        let discount = item.discount.as_deref().map(|d| amount("items.discount", d)).transpose()?;
        if let Some(tax) = tax.filter(|t| *t > total) {
            return Err(SaleError::Inconsistent(format!(
                "item {number}: its tax {} is more than its total {}",
                f(tax),
                f(total)
            )));
        }
        items.push(LineItem {
            price: amount("items.price", &item.price)?,
            total,
            // A PAN typed into an item name is masked, keeping the rest of the name.
            name: crate::pan::mask_text(&item.name).into_owned(),
            quantity: item.quantity,
            product_id: item.product_id,
            variant_id: item.variant_id,
            sku: item.sku,
            tax,
            discount,
            taxes,
        });
    }
    Ok(items)
}

/// The lines' own tax and discount against the sale's: where every line gives one they add up
/// to the sale's figure, where some do they may not exceed it (the rest is shared among the
/// others), so that refunding every line refunds exactly the sale's tax and discount.
pub(super) fn check_item_parts(
    currency: Currency,
    tax: Option<Decimal>,
    discount: Option<Decimal>,
    items: &[LineItem],
) -> Result<(), SaleError> {
    type Own = fn(&LineItem) -> Option<Decimal>;
    let parts: [(&str, Option<Decimal>, Own); 2] =
        [("tax", tax, |i| i.tax), ("discount", discount, |i| i.discount)];
    for (field, of_sale, own) in parts {
        let given: Vec<Decimal> = items.iter().filter_map(own).collect();
        if given.is_empty() {
            continue;
        }
        let sum: Decimal = given.iter().copied().sum();
        let of_sale = of_sale.unwrap_or(Decimal::ZERO);
        let all = given.len() == items.len();
        if (all && sum != of_sale) || sum > of_sale {
            let relation = if all { "not" } else { "more than" };
            return Err(SaleError::Inconsistent(format!(
                "the items' {field} adds up to {}, {relation} the receipt's {field} {}",
                currency.format(sum),
                currency.format(of_sale)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::example_input;
    use super::super::{Sale, SaleError};
    use super::ItemTaxInput;

    fn inconsistent(input: super::super::SaleInput) -> String {
        match Sale::from_input(input) {
            Err(SaleError::Inconsistent(why)) => why,
            other => panic!("expected an inconsistent receipt, got {other:?}"),
        }
    }

    fn tax(name: &str, amount: &str) -> ItemTaxInput {
        ItemTaxInput { name: name.into(), amount: amount.into(), percentage: Some("10".into()) }
    }

    #[test]
    fn item_taxes_that_add_up_are_kept() {
        let mut input = example_input();
        input.items[0].tax = Some("1.00".into());
        input.items[0].taxes = vec![tax("State", "0.60"), tax("City", "0.40")];
        input.items[1].taxes = vec![tax("State", "9.00")];
        input.items[0].line = Some(1);
        let sale = Sale::from_input(input).expect("valid");
        assert_eq!(sale.items[0].tax.map(|t| t.to_string()).as_deref(), Some("1.00"));
        // A line with taxes and no tax takes their sum.
        assert_eq!(sale.items[1].tax.map(|t| t.to_string()).as_deref(), Some("9.00"));
        assert_eq!(sale.items[0].taxes[1].name, "City");
    }

    #[test]
    fn item_figures_that_do_not_add_up_are_refused() {
        let mut input = example_input();
        input.items[0].tax = Some("1.00".into());
        input.items[0].taxes = vec![tax("State", "0.50")];
        assert_eq!(inconsistent(input), "item 1: its taxes add up to 0.50, not its tax 1.00");
        let mut input = example_input();
        input.items[0].tax = Some("2.00".into());
        input.items[1].tax = Some("9.00".into());
        assert_eq!(inconsistent(input), "the items' tax adds up to 11.00, not the receipt's tax 10.00");
        let mut input = example_input();
        input.items[1].tax = Some("10.01".into());
        assert_eq!(inconsistent(input), "the items' tax adds up to 10.01, more than the receipt's tax 10.00");
        let mut input = example_input();
        input.items[0].discount = Some("0.50".into());
        assert_eq!(
            inconsistent(input),
            "the items' discount adds up to 0.50, more than the receipt's discount 0.00"
        );
        let mut input = example_input();
        input.items[1].line = Some(1);
        assert_eq!(inconsistent(input), "item 2 says it is line 1");
    }

    #[test]
    fn a_receipt_stored_before_item_figures_reads_back_equal() {
        let sale = Sale::from_input(example_input()).expect("valid");
        let stored = serde_json::to_string(&sale).expect("json");
        assert!(!stored.contains("taxes") && !stored.contains("\"line\""), "{stored}");
        let back: Sale = serde_json::from_str(&stored).expect("reads back");
        assert_eq!(back, sale);
    }
}
