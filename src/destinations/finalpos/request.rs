//! Final POS request bodies (seeds 000, 001), built only from the sealed refund. Pure.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::refund::{RefundLine, ValidRefund};

/// Final POS user ids by till operator id (`destinations.finalpos.users`).
pub type Users = BTreeMap<String, String>;

/// `POST /v1/api/refunds`: the refund record, with `externalId` = our refund id so that Final
/// POS recognises a repeat (409). `lineItems` are exactly the lines the refund returns, with the
/// figures sealed when it was validated, so their totals add up to `summary.total`; an
/// amount-only refund sends none. The till's operator goes in `refundedByExternalId`;
/// `refundedBy` holds a Final POS user id, so it is sent only for an operator in `users`.
pub fn refund_body(refund: &ValidRefund, users: &Users) -> Value {
    let c = refund.currency;
    let sale = refund.sale.as_ref();
    let line_items: Vec<Value> = refund.lines.iter().filter_map(|l| line_item(refund, l)).collect();
    let tax = refund.tax.unwrap_or_default();
    let mut summary = json!({
        "total": c.format(refund.amount),
        "subTotal": c.format(refund.amount - tax),
        "totalTaxes": c.format(tax),
    });
    if let Some(discount) = refund.discount {
        summary["discountTotal"] = json!(c.format(discount));
    }
    let mut payment = json!({ "amount": c.format(refund.amount) });
    if let Some(s) = sale {
        put(&mut payment, "paymentType", s.payment_method.as_deref());
        put(&mut payment, "transactionId", Some(&s.transaction_id));
        put(&mut payment, "processor", s.processor.as_deref());
    }
    let mut body = json!({
        "externalId": refund.id.to_string(),
        "currency": c.code(),
        "lineItems": line_items,
        "reason": refund.reason,
        "refundedByExternalId": refund.operator,
        "summary": summary,
        "payment": [payment],
    });
    put(&mut body, "refundedBy", users.get(&refund.operator).map(String::as_str));
    put(&mut body, "orderId", sale.and_then(|s| s.order_id.as_deref()));
    put(&mut body, "sessionId", sale.and_then(|s| s.session_id.as_deref()));
    if let Some(balance) = refund.balance_after {
        body["balance"] = json!(c.format(balance));
    }
    body
}

/// One refunded line: the item's names and ids from the sale copy sealed with the refund, its
/// figures as priced then. `price` is the item's unit price on the receipt; `total` what this
/// refund returns of the line (tax included, after its discount), `subTotal` that without tax.
/// A line whose item named no taxes carries its tax share as one unnamed `Tax`.
fn line_item(refund: &ValidRefund, line: &RefundLine) -> Option<Value> {
    let c = refund.currency;
    let p = &line.priced;
    let item = refund.sale.as_ref()?.items.get((p.line as usize).checked_sub(1)?)?;
    let taxes: Vec<Value> = if line.taxes.is_empty() {
        if p.tax.is_zero() {
            Vec::new()
        } else {
            vec![json!({ "name": "Tax", "amount": c.format(p.tax) })]
        }
    } else {
        line.taxes
            .iter()
            .map(|t| {
                let mut tax = json!({ "name": t.name, "amount": c.format(t.amount) });
                if let Some(pct) = t.percentage {
                    tax["percentage"] = json!(pct.normalize().to_string());
                }
                tax
            })
            .collect()
    };
    let mut value = json!({
        "name": item.name,
        "quantity": p.quantity,
        "price": c.format(item.price),
        "total": c.format(p.amount),
        "subTotal": c.format(p.amount - p.tax),
        "taxes": taxes,
        "discount": c.format(p.discount),
        "productId": item.product_id,
        "variantId": item.variant_id,
    });
    if let Some(sku) = &item.sku {
        value["sku"] = json!(sku);
    }
    Some(value)
}

/// `POST /v1/api/transactions`: the refund's transaction record, sent after the refund record.
pub fn transaction_body(refund: &ValidRefund, remote_refund_id: Option<&str>, users: &Users) -> Value {
    let c = refund.currency;
    let sale = refund.sale.as_ref();
    let mut body = json!({
        "externalId": refund.id.to_string(),
        "type": "refund",
        "amount": c.format(refund.amount),
        "currency": c.code(),
        "notes": refund.reason,
    });
    // `employee` holds a Final POS user id, like a refund's `refundedBy`.
    put(&mut body, "employee", users.get(&refund.operator).map(String::as_str));
    put(&mut body, "paymentMethod", sale.and_then(|s| s.payment_method.as_deref()));
    put(&mut body, "sessionId", sale.and_then(|s| s.session_id.as_deref()));
    put(&mut body, "orderId", sale.and_then(|s| s.order_id.as_deref()));
    put(&mut body, "receiptId", refund.receipt_id.as_deref());
    put(&mut body, "refundId", remote_refund_id);
    if let Some(balance) = refund.balance_after {
        body["balance"] = json!(c.format(balance));
    }
    let mut data = Map::new();
    if let Some(p) = sale.and_then(|s| s.processor.as_deref()) {
        data.insert("processor".into(), json!(p));
    }
    if let Some(p) = sale.and_then(|s| s.processor_payment_id.as_deref()) {
        data.insert("processorTransactionId".into(), json!(p));
    }
    data.insert("device".into(), json!(refund.terminal_id));
    body["paymentData"] = Value::Object(data);
    body
}

fn put(target: &mut Value, key: &str, value: Option<&str>) {
    if let Some(v) = value {
        target[key] = json!(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refund::validate::tests::{example_draft, valid_against_example_sale};
    use crate::refund::LineRequest;

    fn refund() -> ValidRefund {
        valid_against_example_sale(example_draft("5"))
    }

    fn users() -> Users {
        Users::from([("emp_42".to_string(), "507f1f77bcf86cd799439099".to_string())])
    }

    /// One of the two Sweet Teas of the example sale (line 1), which carries a share of the
    /// sale's tax.
    fn one_tea() -> ValidRefund {
        let mut draft = example_draft("5.00");
        draft.lines = vec![LineRequest { line: 1, quantity: 1 }];
        valid_against_example_sale(draft)
    }

    #[test]
    fn refund_body_has_the_seed_fields() {
        let r = refund();
        let b = refund_body(&r, &users());
        assert_eq!(b["externalId"], r.id.to_string());
        assert_eq!(b["orderId"], "507f1f77bcf86cd799439013");
        assert_eq!(b["sessionId"], "507f1f77bcf86cd799439012");
        assert_eq!(b["currency"], "USD");
        assert_eq!(b["summary"]["total"], "5.00");
        assert_eq!(b["payment"][0]["transactionId"], "txn_123");
        assert_eq!(b["payment"][0]["paymentType"], "credit_card");
        assert_eq!(b["balance"], "95.00");
        assert_eq!(b["refundedBy"], "507f1f77bcf86cd799439099");
        assert_eq!(b["refundedByExternalId"], "emp_42");
    }

    #[test]
    fn an_amount_only_refund_sends_no_lines_and_an_unmapped_operator_no_user() {
        let b = refund_body(&refund(), &Users::new());
        assert_eq!(b["lineItems"], json!([]));
        assert!(b.get("refundedBy").is_none(), "{b}");
        assert_eq!(b["refundedByExternalId"], "emp_42");
        assert!(transaction_body(&refund(), None, &Users::new()).get("employee").is_none());
    }

    #[test]
    fn an_itemized_refund_sends_exactly_its_lines_adding_up_to_the_summary() {
        let b = refund_body(&one_tea(), &users());
        assert_eq!(
            b["lineItems"],
            json!([{
                "name": "Sweet Tea", "quantity": 1, "price": "5.00", "total": "5.00", "subTotal": "4.50",
                "taxes": [{"name": "Tax", "amount": "0.50"}], "discount": "0.00",
                "productId": "p1", "variantId": "v1", "sku": "SKU-001",
            }])
        );
        assert_eq!(
            b["summary"],
            json!({"total": "5.00", "subTotal": "4.50", "totalTaxes": "0.50", "discountTotal": "0.00"})
        );
        // The whole balance by amount: every line, adding up to the 100.00 of the summary.
        let all = refund_body(&valid_against_example_sale(example_draft("100.00")), &users());
        let lines = all["lineItems"].as_array().expect("lines");
        let sum: rust_decimal::Decimal = lines
            .iter()
            .map(|l| l["total"].as_str().expect("total").parse::<rust_decimal::Decimal>().expect("decimal"))
            .sum();
        assert_eq!(
            (lines.len(), sum.to_string(), &all["summary"]["total"]),
            (2, "100.00".into(), &json!("100.00"))
        );
    }

    #[test]
    fn transaction_body_links_the_refund() {
        let r = refund();
        let b = transaction_body(&r, Some("fp_1"), &users());
        assert_eq!(b["type"], "refund");
        assert_eq!(b["refundId"], "fp_1");
        assert_eq!(b["receiptId"], "RCP-2025-001");
        assert_eq!(b["externalId"], r.id.to_string());
        assert_eq!(b["paymentData"]["processorTransactionId"], "882");
        assert_eq!(b["employee"], "507f1f77bcf86cd799439099");
    }
}
