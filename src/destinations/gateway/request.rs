//! The card gateway's refund request (seed 002), built only from the sealed refund. Pure.
//!
//! The gateway refuses a refund without the original payment's id, above the captured amount,
//! or — when the request carries no `order.tax` / `order.discounts` — above the order subtotal.
//! The agent checked the same rules offline; the breakdown is sent whenever the cashier gave
//! one, so that the gateway applies the same rule the agent did.

use serde_json::{json, Map, Value};

use crate::refund::ValidRefund;

/// The original payment's id at the gateway (the sale's `processor_payment_id`).
pub fn payment_id(refund: &ValidRefund) -> Result<&str, String> {
    refund
        .sale
        .as_ref()
        .and_then(|s| s.processor_payment_id.as_deref())
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| {
            "the original sale has no processor_payment_id, and the card gateway refuses a refund \
             without the original transaction id; refund it on the gateway's dashboard instead"
                .to_string()
        })
}

/// `{base}/payment/{payment_id}/refund`, the id escaped as one path segment.
pub fn refund_url(base_url: &reqwest::Url, payment_id: &str) -> Result<reqwest::Url, String> {
    let mut url = base_url.clone();
    url.path_segments_mut()
        .map_err(|()| format!("base_url {base_url} cannot take a path"))?
        .pop_if_empty()
        .extend(["payment", payment_id, "refund"]);
    Ok(url)
}

/// The body: `amount`, `terminal.id`, `externalId` = our refund id, and `order.tax` /
/// `order.discounts` when the refund has that breakdown.
pub fn refund_body(refund: &ValidRefund, terminal_id: i64) -> Value {
    let c = refund.currency;
    let mut body = json!({
        "amount": c.format(refund.amount),
        "terminal": { "id": terminal_id },
        "externalId": refund.id.to_string(),
    });
    let mut order = Map::new();
    if let Some(tax) = refund.tax {
        order.insert("tax".into(), json!(c.format(tax)));
    }
    if let Some(discount) = refund.discount {
        order.insert("discounts".into(), json!(c.format(discount)));
    }
    if !order.is_empty() {
        body["order"] = Value::Object(order);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refund::validate::tests::{example_draft, valid_against_example_sale};

    fn refund(amount: &str, tax: Option<&str>, discount: Option<&str>) -> ValidRefund {
        let mut draft = example_draft(amount);
        draft.tax = tax.map(str::to_string);
        draft.discount = discount.map(str::to_string);
        valid_against_example_sale(draft)
    }

    #[test]
    fn body_has_amount_terminal_and_external_id() {
        let r = refund("5", None, None);
        let b = refund_body(&r, 24);
        assert_eq!(b, json!({"amount": "5.00", "terminal": {"id": 24}, "externalId": r.id.to_string()}));
    }

    #[test]
    fn a_breakdown_is_sent_as_order_tax_and_discounts() {
        let r = refund("95", Some("9.5"), Some("0"));
        let b = refund_body(&r, 24);
        assert_eq!(b["order"], json!({"tax": "9.50", "discounts": "0.00"}));
        let only_tax = refund_body(&refund("95", Some("9.50"), None), 24);
        assert_eq!(only_tax["order"], json!({"tax": "9.50"}));
    }

    #[test]
    fn the_payment_id_comes_from_the_sale() {
        let mut r = refund("5", None, None);
        assert_eq!(payment_id(&r), Ok("882"));
        if let Some(s) = r.sale.as_mut() {
            s.processor_payment_id = None;
        }
        assert!(payment_id(&r).unwrap_err().contains("processor_payment_id"));
        r.sale = None;
        assert!(payment_id(&r).is_err());
    }

    #[test]
    fn urls_escape_the_id_and_keep_a_base_prefix() {
        let base: reqwest::Url = "http://127.0.0.1:9000".parse().unwrap();
        assert_eq!(refund_url(&base, "882").unwrap().as_str(), "http://127.0.0.1:9000/payment/882/refund");
        assert_eq!(refund_url(&base, "8/2?x").unwrap().path(), "/payment/8%2F2%3Fx/refund");
        let prefixed: reqwest::Url = "https://gw.example.com/v2/".parse().unwrap();
        assert_eq!(
            refund_url(&prefixed, "882").unwrap().as_str(),
            "https://gw.example.com/v2/payment/882/refund"
        );
    }
}
