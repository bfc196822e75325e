//! Final POS request bodies (seeds 000, 001), built only from the sealed refund. Pure.

use serde_json::{json, Map, Value};

use crate::refund::ValidRefund;

/// `POST /v1/api/refunds`: the refund record, with `externalId` = our refund id so that Final
/// POS recognises a repeat (409).
pub fn refund_body(refund: &ValidRefund) -> Value {
    let c = refund.currency;
    let sale = refund.sale.as_ref();
    let line_items: Vec<Value> = sale
        .map(|s| {
            s.items
                .iter()
                .map(|i| {
                    let mut item = json!({
                        "name": i.name,
                        "quantity": i.quantity,
                        "price": c.format(i.price),
                        "total": c.format(i.total),
                        "productId": i.product_id,
                        "variantId": i.variant_id,
                    });
                    if let Some(sku) = &i.sku {
                        item["sku"] = json!(sku);
                    }
                    item
                })
                .collect()
        })
        .unwrap_or_default();
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
        "refundedBy": refund.operator,
        "summary": summary,
        "payment": [payment],
    });
    put(&mut body, "orderId", sale.and_then(|s| s.order_id.as_deref()));
    put(&mut body, "sessionId", sale.and_then(|s| s.session_id.as_deref()));
    if let Some(balance) = refund.balance_after {
        body["balance"] = json!(c.format(balance));
    }
    body
}

/// `POST /v1/api/transactions`: the refund's transaction record, sent after the refund record.
pub fn transaction_body(refund: &ValidRefund, remote_refund_id: Option<&str>) -> Value {
    let c = refund.currency;
    let sale = refund.sale.as_ref();
    let mut body = json!({
        "externalId": refund.id.to_string(),
        "type": "refund",
        "amount": c.format(refund.amount),
        "currency": c.code(),
        "notes": refund.reason,
        "employee": refund.operator,
    });
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

    fn refund() -> ValidRefund {
        valid_against_example_sale(example_draft("5"))
    }

    #[test]
    fn refund_body_has_the_seed_fields() {
        let r = refund();
        let b = refund_body(&r);
        assert_eq!(b["externalId"], r.id.to_string());
        assert_eq!(b["orderId"], "507f1f77bcf86cd799439013");
        assert_eq!(b["sessionId"], "507f1f77bcf86cd799439012");
        assert_eq!(b["currency"], "USD");
        assert_eq!(b["lineItems"][0]["productId"], "p1");
        assert_eq!(b["lineItems"][0]["variantId"], "v1");
        assert_eq!(b["summary"]["total"], "5.00");
        assert_eq!(b["payment"][0]["transactionId"], "txn_123");
        assert_eq!(b["payment"][0]["paymentType"], "credit_card");
        assert_eq!(b["balance"], "95.00");
        assert_eq!(b["refundedBy"], "emp_42");
    }

    #[test]
    fn transaction_body_links_the_refund() {
        let r = refund();
        let b = transaction_body(&r, Some("fp_1"));
        assert_eq!(b["type"], "refund");
        assert_eq!(b["refundId"], "fp_1");
        assert_eq!(b["receiptId"], "RCP-2025-001");
        assert_eq!(b["externalId"], r.id.to_string());
        assert_eq!(b["paymentData"]["processorTransactionId"], "882");
    }
}
