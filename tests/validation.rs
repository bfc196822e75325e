//! End-to-end: what the agent refuses before anything is stored (SPEC section 5) — receipts
//! that do not add up, control characters in ids and free text, tax and discount breakdowns
//! out of bounds, and limits of one currency applied to another. The real binary, a real
//! SQLite file and a Final POS sandbox on a loopback port; every refusal is checked to leave
//! nothing behind and send nothing.

mod common;

use common::*;
use refund_agent::sandbox::FinalPosSandbox;
use serde_json::{json, Value};

async fn post(agent: &Agent, path: &str, body: &Value) -> (u16, Value) {
    agent.post_json(path, body.to_string().as_bytes(), &[]).await
}

fn receipt() -> Value {
    serde_json::from_str(RECEIPT).expect("receipt JSON")
}

fn refund(amount: &str) -> Value {
    json!({"receipt_id": "RCP-2025-001", "amount": amount, "reason": "Customer returned item", "operator": "emp_42"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_that_do_not_add_up_or_carry_control_characters_are_refused() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;

    let mut cases: Vec<(&str, Value, &str)> = Vec::new();
    let mut r = receipt();
    r["items"][1]["total"] = json!("80.00");
    cases.push(("items below the total", r, "inconsistent_receipt"));
    let mut r = receipt();
    r["tax"] = json!("9.00");
    cases.push(("subtotal + tax != total", r, "inconsistent_receipt"));
    let mut r = receipt();
    r["total"] = json!("0.00");
    r["subtotal"] = json!("0.00");
    r["tax"] = json!("0.00");
    r["items"] = json!([]);
    cases.push(("zero total", r, "inconsistent_receipt"));
    let mut r = receipt();
    r["captured_at"] = json!("last tuesday");
    cases.push(("bad captured_at", r, "inconsistent_receipt"));
    let mut r = receipt();
    r["order_id"] = json!("507f\nINFO refund approved");
    cases.push(("newline in order_id", r, "invalid_request"));
    let mut r = receipt();
    r["items"][0]["name"] = json!("Tea\u{202e}");
    cases.push(("bidi override in an item name", r, "invalid_request"));

    for (what, body, code) in &cases {
        let (status, answer) = post(&agent, "/v1/receipts", body).await;
        assert!((400..500).contains(&status), "{what}: {status} {answer}");
        assert_eq!(answer["code"], *code, "{what}: {answer}");
    }
    // Nothing was registered: a refund against the receipt finds no sale.
    let (status, answer) = post(&agent, "/v1/refunds", &refund("5.00")).await;
    assert_eq!((status, answer["code"].as_str()), (422, Some("unknown_sale")), "{answer}");
    // The example receipt, which adds up, is accepted.
    agent.add_receipt(RECEIPT).await;
    assert_eq!(post(&agent, "/v1/refunds", &refund("5.00")).await.0, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_with_control_characters_or_bad_breakdowns_store_and_send_nothing() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;

    let mut forged = refund("5.00");
    forged["operator"] = json!("emp_42\nINFO manager mgr_1 approved refund");
    let mut tax_above_amount = refund("1.00");
    tax_above_amount["tax"] = json!("9.00");
    let mut tax_above_sale = refund("20.00");
    tax_above_sale["tax"] = json!("10.01");
    let mut discount_above_sale = refund("20.00");
    discount_above_sale["discount"] = json!("0.01");
    let cases = [
        ("operator with a newline", forged, "invalid_request"),
        ("tax above the amount", tax_above_amount, "invalid_amount"),
        ("tax above the sale's tax", tax_above_sale, "invalid_amount"),
        ("discount above the sale's discount", discount_above_sale, "invalid_amount"),
    ];
    for (what, body, code) in &cases {
        let (status, answer) = post(&agent, "/v1/refunds", body).await;
        assert!((400..500).contains(&status), "{what}: {status} {answer}");
        assert_eq!(answer["code"], *code, "{what}: {answer}");
    }
    assert!(agent.list().await.is_empty(), "nothing refused was stored");

    // Earlier refunds use up the sale's tax: 8.00 of its 10.00 go with the first refund, so a
    // second may carry at most 2.00.
    let mut first = refund("20.00");
    first["tax"] = json!("8.00");
    assert_eq!(post(&agent, "/v1/refunds", &first).await.0, 201);
    let mut second = refund("20.00");
    second["tax"] = json!("2.01");
    let (status, answer) = post(&agent, "/v1/refunds", &second).await;
    assert_eq!((status, answer["code"].as_str()), (422, Some("invalid_amount")), "{answer}");
    second["tax"] = json!("2.00");
    assert_eq!(post(&agent, "/v1/refunds", &second).await.0, 201);
    let refunds = agent.list().await;
    assert_eq!(refunds.len(), 2);
    for r in &refunds {
        agent.wait_state(&r.id, "delivered").await;
    }
    assert_eq!(fp.refunds().len(), 2, "only the two accepted refunds reached Final POS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_of_one_currency_never_apply_to_another() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let mut agent = Agent::new(&fp.url(), "[limits]\nmax_refund = \"500.00\"\n");
    agent.start().await;
    let mut kwd = receipt();
    kwd["receipt_id"] = json!("RCP-KWD");
    kwd["transaction_id"] = json!("txn_kwd");
    kwd["currency"] = json!("KWD");
    for (field, value) in
        [("total", "1000.000"), ("subtotal", "900.000"), ("tax", "100.000"), ("discount", "0.000")]
    {
        kwd[field] = json!(value);
    }
    kwd["items"] = json!([{"name": "Gold Watch", "quantity": 1, "price": "1000.000", "total": "1000.000",
                           "product_id": "p9", "variant_id": "v9"}]);
    agent.add_receipt(&kwd.to_string()).await;
    let mut body = refund("499.999");
    body["receipt_id"] = json!("RCP-KWD");
    body["tax"] = json!("0.000");
    let (status, answer) = post(&agent, "/v1/refunds", &body).await;
    assert_eq!((status, answer["code"].as_str()), (422, Some("no_limits_for_currency")), "{answer}");
    assert!(agent.list().await.is_empty());
    agent.terminate().await;

    // With KWD limits of its own, the KWD refund is held to them.
    let text = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(&agent.config, format!("{text}\n[limits.KWD]\nmax_refund = \"100.000\"\n")).unwrap();
    agent.start().await;
    let (status, answer) = post(&agent, "/v1/refunds", &body).await;
    assert_eq!((status, answer["code"].as_str()), (422, Some("manager_approval_required")), "{answer}");
    body["amount"] = json!("99.999");
    assert_eq!(post(&agent, "/v1/refunds", &body).await.0, 201);
}
