//! The sales ledger's record: an original sale, as the terminal's `receipt` event or
//! `POST /v1/receipts` describes it. Refunds are validated offline against these records.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::{parse_non_negative, AmountError, Currency};
use crate::text::{self, TextError};

mod items;

pub use items::{ItemTax, ItemTaxInput, LineItem, LineItemInput};

/// A receipt as given, by the terminal's `receipt` event or `POST /v1/receipts`: amounts still
/// strings. Absent options are omitted when it is written back out.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SaleInput {
    pub receipt_id: String,
    pub transaction_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    pub currency: String,
    pub total: String,
    pub subtotal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discount: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor_payment_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked_pan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured_at: Option<String>,
    #[serde(default)]
    pub items: Vec<LineItemInput>,
}

/// A validated original sale. Card data is reduced to BIN and last 4 digits on the way in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sale {
    pub receipt_id: String,
    pub transaction_id: String,
    pub order_id: Option<String>,
    pub session_id: Option<String>,
    pub currency: Currency,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub tax: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub discount: Option<Decimal>,
    pub payment_method: Option<String>,
    pub processor: Option<String>,
    pub processor_payment_id: Option<String>,
    pub card: Option<CardRef>,
    pub captured_at: Option<String>,
    pub items: Vec<LineItem>,
}

/// What the agent keeps of a card: at most the BIN (first 6) and the last 4 digits
/// (PCI DSS 3.3/3.4). Built only from digits, so a full PAN can never pass through it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CardRef {
    pub bin: Option<String>,
    pub last4: String,
}

impl CardRef {
    /// The one card reducer: a masked (or, by mistake, a full) card number becomes BIN + last 4,
    /// for the terminal's `masked_pan` check, the ledger's sales and refund validation alike.
    /// Returns `None` when fewer than 4 digits end the text, since then nothing identifies the
    /// card.
    pub fn from_pan_text(text: &str) -> Option<CardRef> {
        let chars: Vec<char> = text.trim().chars().collect();
        let tail: String = chars.iter().rev().take(4).rev().collect();
        if tail.len() != 4 || !tail.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let head: String = chars.iter().take(6).collect();
        let bin = (chars.len() >= 10 && head.chars().all(|c| c.is_ascii_digit())).then_some(head);
        Some(CardRef { bin, last4: tail })
    }

    /// The masked form shown and sent: `530957******2257` or `************2257`.
    pub fn masked(&self) -> String {
        match &self.bin {
            Some(bin) => format!("{bin}******{}", self.last4),
            None => format!("************{}", self.last4),
        }
    }
}

/// Why a sale was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaleError {
    #[error("field `{0}` must not be empty")]
    Empty(&'static str),
    #[error("field `{field}`: {source}")]
    Amount { field: &'static str, source: AmountError },
    #[error("field `masked_pan` must end with the card's last 4 digits")]
    BadCard,
    /// The receipt's numbers do not add up (SPEC section 5): refused as `inconsistent_receipt`,
    /// since refunds validated against it would be wrong in every later step.
    #[error("the receipt does not add up: {0}")]
    Inconsistent(String),
    #[error(transparent)]
    Text(#[from] TextError),
    /// An id or amount of the receipt holds a card number or track data; refused as
    /// `card_data_in_field`. Only the field is named, never the value.
    #[error(
        "field `{0}` holds a card number or track data; ids may not carry card data, so nothing was stored"
    )]
    CardData(&'static str),
}

impl Sale {
    /// Validates a sale from outside and reduces its card data. Its amounts are after
    /// discounts: each item's `total` is what the customer paid for that line, tax included;
    /// the items' totals add up to the `total`, and `subtotal` (net) + `tax` = `total`.
    pub fn from_input(input: SaleInput) -> Result<Sale, SaleError> {
        require("receipt_id", &input.receipt_id)?;
        require("transaction_id", &input.transaction_id)?;
        check_texts(&input)?;
        check_card_data(&input)?;
        let currency: Currency =
            input.currency.parse().map_err(|source| SaleError::Amount { field: "currency", source })?;
        let amount = |field: &'static str, text: &str| {
            parse_non_negative(text, currency).map_err(|source| SaleError::Amount { field, source })
        };
        let total = amount("total", &input.total)?;
        let subtotal = amount("subtotal", &input.subtotal)?;
        let tax = input.tax.as_deref().map(|t| amount("tax", t)).transpose()?;
        let discount = input.discount.as_deref().map(|d| amount("discount", d)).transpose()?;
        let card = match input.masked_pan.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(CardRef::from_pan_text(text).ok_or(SaleError::BadCard)?),
        };
        let items = items::read_items(currency, input.items)?;
        let captured_at = non_empty(input.captured_at);
        check_sums(currency, total, subtotal, tax, &items)?;
        items::check_item_parts(currency, tax, discount, &items)?;
        if let Some(at) = &captured_at {
            time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).map_err(
                |_| {
                    SaleError::Inconsistent(format!(
                        "`captured_at` {at:?} is not an RFC 3339 time such as 2026-11-20T10:15:00Z"
                    ))
                },
            )?;
        }
        Ok(Sale {
            receipt_id: input.receipt_id,
            transaction_id: input.transaction_id,
            order_id: non_empty(input.order_id),
            session_id: non_empty(input.session_id),
            currency,
            total,
            subtotal,
            tax,
            discount,
            payment_method: non_empty(input.payment_method),
            processor: non_empty(input.processor),
            processor_payment_id: non_empty(input.processor_payment_id),
            card,
            captured_at,
            items,
        })
    }
}

/// Refuses control and bidirectional-override characters in every text field of a receipt.
fn check_texts(input: &SaleInput) -> Result<(), TextError> {
    let optional = [
        ("order_id", &input.order_id),
        ("session_id", &input.session_id),
        ("payment_method", &input.payment_method),
        ("processor", &input.processor),
        ("processor_payment_id", &input.processor_payment_id),
        ("masked_pan", &input.masked_pan),
        ("captured_at", &input.captured_at),
    ];
    text::check("receipt_id", &input.receipt_id)?;
    text::check("transaction_id", &input.transaction_id)?;
    for (field, value) in optional {
        if let Some(value) = value {
            text::check(field, value)?;
        }
    }
    for item in &input.items {
        text::check("items.name", &item.name)?;
        text::check("items.product_id", &item.product_id)?;
        text::check("items.variant_id", &item.variant_id)?;
        if let Some(sku) = &item.sku {
            text::check("items.sku", sku)?;
        }
        for tax in &item.taxes {
            text::check("items.taxes.name", &tax.name)?;
        }
    }
    Ok(())
}

/// Refuses a receipt whose ids or amounts hold card data (SPEC section 3): they are stored,
/// logged and sent to every destination, and unlike free text they cannot be masked without
/// becoming another id. `masked_pan` is reduced by [`CardRef::from_pan_text`] instead and item
/// names are masked.
fn check_card_data(input: &SaleInput) -> Result<(), SaleError> {
    let mut fields: Vec<(&'static str, Option<&str>)> = vec![
        ("receipt_id", Some(&input.receipt_id)),
        ("transaction_id", Some(&input.transaction_id)),
        ("order_id", input.order_id.as_deref()),
        ("session_id", input.session_id.as_deref()),
        ("currency", Some(&input.currency)),
        ("total", Some(&input.total)),
        ("subtotal", Some(&input.subtotal)),
        ("tax", input.tax.as_deref()),
        ("discount", input.discount.as_deref()),
        ("payment_method", input.payment_method.as_deref()),
        ("processor", input.processor.as_deref()),
        ("processor_payment_id", input.processor_payment_id.as_deref()),
        ("captured_at", input.captured_at.as_deref()),
    ];
    for item in &input.items {
        fields.extend([
            ("items.price", Some(item.price.as_str())),
            ("items.total", Some(item.total.as_str())),
            ("items.product_id", Some(item.product_id.as_str())),
            ("items.variant_id", Some(item.variant_id.as_str())),
            ("items.sku", item.sku.as_deref()),
            ("items.tax", item.tax.as_deref()),
            ("items.discount", item.discount.as_deref()),
        ]);
        for tax in &item.taxes {
            fields.extend([("items.taxes.amount", Some(tax.amount.as_str()))]);
        }
    }
    match fields.into_iter().find(|(_, value)| value.is_some_and(crate::pan::holds_card_data)) {
        Some((field, _)) => Err(SaleError::CardData(field)),
        None => Ok(()),
    }
}

/// The receipt's own arithmetic: a positive total, `subtotal + tax = total` (no tax given counts
/// as none), and, where items are listed, their totals summing to the total with no empty line.
fn check_sums(
    currency: Currency,
    total: Decimal,
    subtotal: Decimal,
    tax: Option<Decimal>,
    items: &[LineItem],
) -> Result<(), SaleError> {
    let f = |d: Decimal| currency.format(d);
    if total <= Decimal::ZERO {
        return Err(SaleError::Inconsistent(format!("the total {} must be greater than zero", f(total))));
    }
    let tax = tax.unwrap_or(Decimal::ZERO);
    if subtotal + tax != total {
        return Err(SaleError::Inconsistent(format!(
            "subtotal {} + tax {} is {}, not the total {}",
            f(subtotal),
            f(tax),
            f(subtotal + tax),
            f(total)
        )));
    }
    if let Some(position) = items.iter().position(|i| i.quantity == 0) {
        return Err(SaleError::Inconsistent(format!("item {} has a quantity of 0", position + 1)));
    }
    if !items.is_empty() {
        let sum: Decimal = items.iter().map(|i| i.total).sum();
        if sum != total {
            return Err(SaleError::Inconsistent(format!(
                "the items add up to {}, not the total {}",
                f(sum),
                f(total)
            )));
        }
    }
    Ok(())
}

pub(super) fn require(field: &'static str, value: &str) -> Result<(), SaleError> {
    if value.trim().is_empty() {
        return Err(SaleError::Empty(field));
    }
    Ok(())
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The receipt of SPEC section 3 with items that add up to its total, used across the
    /// crate's unit tests.
    pub(crate) fn example_input() -> SaleInput {
        serde_json::from_str(
            r#"{"receipt_id":"RCP-2025-001","transaction_id":"txn_123","order_id":"507f1f77bcf86cd799439013",
            "session_id":"507f1f77bcf86cd799439012","currency":"USD","total":"100.00","subtotal":"90.00","tax":"10.00",
            "discount":"0.00","payment_method":"credit_card","processor":"gateway","processor_payment_id":"882",
            "masked_pan":"530957******2257","captured_at":"2026-11-20T10:15:00Z",
            "items":[{"name":"Sweet Tea","quantity":2,"price":"5.00","total":"10.00","product_id":"p1","variant_id":"v1","sku":"SKU-001"},
            {"name":"Coffee Grinder","quantity":1,"price":"90.00","total":"90.00","product_id":"p2","variant_id":"v2","sku":"SKU-002"}]}"#,
        )
        .expect("the example receipt parses")
    }

    pub(crate) fn example_sale() -> Sale {
        Sale::from_input(example_input()).expect("the example receipt is valid")
    }

    #[test]
    fn example_receipt_is_accepted() {
        let sale = example_sale();
        assert_eq!(sale.total.to_string(), "100.00");
        assert_eq!(sale.card, Some(CardRef { bin: Some("530957".into()), last4: "2257".into() }));
        assert_eq!(sale.items[0].product_id, "p1");
    }

    #[test]
    fn a_full_pan_is_reduced_to_bin_and_last4() {
        let mut input = example_input();
        input.masked_pan = Some("5309570000002257".into());
        let sale = Sale::from_input(input).unwrap();
        let stored = serde_json::to_string(&sale).unwrap();
        assert!(!stored.contains("5309570000002257"));
        assert_eq!(sale.card.unwrap().masked(), "530957******2257");
    }

    #[test]
    fn bad_fields_are_named() {
        let mut input = example_input();
        input.total = "1e3".into();
        let err = Sale::from_input(input).unwrap_err();
        assert!(err.to_string().contains("`total`"), "{err}");
        let mut input = example_input();
        input.receipt_id = " ".into();
        assert_eq!(Sale::from_input(input).unwrap_err(), SaleError::Empty("receipt_id"));
    }

    fn inconsistent(input: SaleInput) -> String {
        match Sale::from_input(input) {
            Err(SaleError::Inconsistent(why)) => why,
            other => panic!("expected an inconsistent receipt, got {other:?}"),
        }
    }

    #[test]
    fn receipts_that_do_not_add_up_are_refused() {
        let mut input = example_input();
        input.items[1].total = "80.00".into();
        assert_eq!(inconsistent(input), "the items add up to 90.00, not the total 100.00");
        let mut input = example_input();
        input.tax = Some("9.00".into());
        assert_eq!(inconsistent(input), "subtotal 90.00 + tax 9.00 is 99.00, not the total 100.00");
        let mut input = example_input();
        input.tax = None;
        assert!(inconsistent(input).contains("not the total 100.00"));
        let mut input = example_input();
        input.items.clear();
        input.total = "0.00".into();
        input.subtotal = "0".into();
        input.tax = None;
        assert_eq!(inconsistent(input), "the total 0.00 must be greater than zero");
        let mut input = example_input();
        input.items[0].quantity = 0;
        assert_eq!(inconsistent(input), "item 1 has a quantity of 0");
        let mut input = example_input();
        input.captured_at = Some("yesterday".into());
        assert!(inconsistent(input).contains("RFC 3339"));
    }

    #[test]
    fn a_receipt_without_items_needs_only_its_totals_to_agree() {
        let mut input = example_input();
        input.items.clear();
        assert!(Sale::from_input(input).is_ok());
    }

    #[test]
    fn control_characters_in_any_text_field_are_refused() {
        let fields: [fn(&mut SaleInput, String); 6] = [
            |i, v| i.receipt_id = v,
            |i, v| i.transaction_id = v,
            |i, v| i.order_id = Some(v),
            |i, v| i.processor_payment_id = Some(v),
            |i, v| i.items[0].name = v,
            |i, v| i.items[1].product_id = v,
        ];
        for set in fields {
            let mut input = example_input();
            set(&mut input, "id\u{202e}x\nforged".into());
            assert!(matches!(Sale::from_input(input), Err(SaleError::Text(_))));
        }
    }
}
