//! End-to-end: itemized refunds (SPEC section 5a) with the real binary, a real SQLite file and
//! the sandboxes. The Final POS sandbox refuses (400) a record whose line totals do not add up
//! to its summary total, and a `refundedBy` that is not one of its users, as the back office
//! does; the gateway sandbox applies the seed's subtotal rule.

mod common;

use common::*;
use refund_agent::sandbox::{FinalPosSandbox, GatewaySandbox};
use serde_json::{json, Value};

/// The Final POS user the till's operator `emp_42` is mapped to.
const FP_USER: &str = "507f1f77bcf86cd799439099";

/// `receipt show RCP-2025-001 --json`.
async fn receipt(agent: &Agent) -> Value {
    let out = agent.cli(&["receipt", "show", "RCP-2025-001", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("receipt JSON")
}

/// `refund create` naming `lines` (`["1:1"]`) and, when given, an amount.
async fn cli_lines(agent: &Agent, lines: &[&str], amount: Option<&str>) -> std::process::Output {
    let mut args = vec!["refund", "create", "--receipt", "RCP-2025-001", "--reason", "chipped"];
    args.extend(["--operator", "emp_42", "--json"]);
    for l in lines {
        args.extend(["--line", l]);
    }
    if let Some(a) = amount {
        args.extend(["--amount", a]);
    }
    agent.cli(&args).await
}

fn quantities(receipt: &Value, line: usize) -> (u64, u64, u64, u64) {
    let item = &receipt["items"][line];
    let n = |k: &str| item[k].as_u64().unwrap_or_else(|| panic!("{k} in {item}"));
    (n("quantity"), n("refunded_quantity"), n("waiting_quantity"), n("refundable_quantity"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_sweet_teas_reaches_final_pos_as_exactly_that_line() {
    let fp = FinalPosSandbox::start(API_KEY).await.expect("sandbox");
    fp.add_user(FP_USER);
    let mut agent = Agent::new(&fp.url(), &format!("users = {{ emp_42 = \"{FP_USER}\" }}"));
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let before = receipt(&agent).await;
    assert_eq!(before["items"][0]["line"], 1);
    assert_eq!(quantities(&before, 0), (2, 0, 0, 2));
    assert_eq!(before["refundable_balance"], "100.00");

    let id = created_id(&cli_lines(&agent, &["1:1"], None).await);
    agent.wait_state(&id, "delivered").await;
    let records = fp.refunds();
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r["lineItems"].as_array().map(Vec::len), Some(1), "{r}");
    let line = &r["lineItems"][0];
    assert_eq!(
        (&line["name"], &line["quantity"], &line["total"]),
        (&json!("Sweet Tea"), &json!(1), &json!("5.00"))
    );
    assert_eq!((&line["subTotal"], &line["discount"]), (&json!("4.50"), &json!("0.00")));
    assert_eq!(r["summary"]["total"], "5.00");
    assert_eq!(r["summary"]["totalTaxes"], "0.50");
    assert_eq!((&r["refundedBy"], &r["refundedByExternalId"]), (&json!(FP_USER), &json!("emp_42")));
    assert_eq!(fp.transactions()[0]["employee"], FP_USER);

    let after = receipt(&agent).await;
    assert_eq!(quantities(&after, 0), (2, 1, 0, 1));
    assert_eq!(after["items"][0]["refundable_amount"], "5.00");
    assert_eq!(after["refundable_balance"], "95.00");
    let table = agent.cli(&["receipt", "show", "RCP-2025-001"]).await;
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("Sweet Tea") && text.contains("95.00 USD"), "{text}");

    // Two more teas than are left, and an amount that is not the line's, are refused.
    let over = cli_lines(&agent, &["1:2"], None).await;
    assert!(stderr(&over).contains("over_refund"), "{}", stderr(&over));
    let mismatch = cli_lines(&agent, &["1:1"], Some("5.01")).await;
    assert!(stderr(&mismatch).contains("amount_mismatch"), "{}", stderr(&mismatch));
    assert_eq!(agent.list().await.len(), 1, "nothing of a refusal is stored");
    assert_eq!(agent.terminate().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_waiting_for_delivery_holds_its_units() {
    // Final POS is offline, so the refund stays queued.
    let fp = FinalPosSandbox::start(API_KEY).await.expect("sandbox");
    fp.go_offline().await;
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    created_id(&cli_lines(&agent, &["1:1", "2:1"], Some("95.00")).await);
    let shown = receipt(&agent).await;
    assert_eq!(quantities(&shown, 0), (2, 0, 1, 1));
    assert_eq!(quantities(&shown, 1), (1, 0, 1, 0));
    assert_eq!((&shown["waiting_amount"], &shown["refundable_balance"]), (&json!("95.00"), &json!("5.00")));
    let again = cli_lines(&agent, &["2:1"], None).await;
    assert!(stderr(&again).contains("over_refund"), "{}", stderr(&again));
    let missing = agent.cli(&["receipt", "show", "RCP-NOPE"]).await;
    assert!(!missing.status.success() && stderr(&missing).contains("not_found"), "{}", stderr(&missing));
    assert_eq!(agent.terminate().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_final_pos_sandbox_refuses_records_that_do_not_add_up_or_name_no_user() {
    let fp = FinalPosSandbox::start(API_KEY).await.expect("sandbox");
    fp.add_user(FP_USER);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let post = |body: Value| {
        http.post(format!("{}/v1/api/refunds", fp.url()))
            .header("x-api-key", API_KEY)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let record = |external: &str, refunded_by: &str, line_total: &str| {
        json!({
            "externalId": external, "currency": "USD", "refundedBy": refunded_by,
            "lineItems": [{"name": "Sweet Tea", "quantity": 1, "price": "5.00", "total": line_total,
                           "subTotal": line_total, "productId": "p1", "variantId": "v1"}],
            "summary": {"total": "5.00", "subTotal": "4.50", "totalTaxes": "0.50"},
        })
    };
    // What the agent sent before: every line of the sale at full price for a partial amount.
    let full_price = record("a", FP_USER, "10.00");
    assert_eq!(post(full_price).await.expect("answer").status(), 400);
    // The till's own operator id where a Final POS user id belongs.
    assert_eq!(post(record("b", "emp_42", "5.00")).await.expect("answer").status(), 400);
    assert_eq!(post(record("c", FP_USER, "5.00")).await.expect("answer").status(), 201);
    assert_eq!(fp.refunds().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_balance_reaches_the_gateway_with_its_tax() {
    const TOKEN: &str = "gw-test-token";
    let gw = GatewaySandbox::start(TOKEN).await.expect("gateway sandbox");
    gw.add_payment("882", "100.00".parse().expect("dec"), "90.00".parse().expect("dec"));
    let mut agent = gateway_agent(&gw.url(), TOKEN, "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    // 100.00 is above the 90.00 subtotal: allowed only because the lines give the tax.
    let id = created_id(&cli_refund(&agent, "100.00", &[]).await);
    agent.wait_state(&id, "delivered").await;
    let refunds = gw.refunds();
    assert_eq!(refunds[0]["order"], json!({"tax": "10.00", "discounts": "0.00"}), "{refunds:?}");
    assert_eq!(quantities(&receipt(&agent).await, 1), (1, 1, 0, 0));
    assert_eq!(agent.terminate().await.code(), Some(0));
}
