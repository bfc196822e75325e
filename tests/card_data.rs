//! End-to-end: card numbers typed into refund and receipt fields, through the real binary, a
//! real SQLite file and a Final POS sandbox on a loopback port. A PAN in free text reaches
//! nothing unmasked (not Final POS, not `refunds show`, not the log file); a PAN in an id is
//! refused with `card_data_in_field` and nothing is stored.

mod common;

use common::*;
use refund_agent::pan::digits;
use refund_agent::sandbox::FinalPosSandbox;

/// A Luhn-valid test PAN and the forms in which it is typed below.
const PAN: &str = "4111111111111111";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pan_in_the_reason_is_delivered_masked_and_never_logged() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;

    let reason = "card 4111.1111.1111.1111 charged twice";
    let out = agent
        .cli(&[
            "refund",
            "create",
            "--receipt",
            "RCP-2025-001",
            "--amount",
            "5.00",
            "--reason",
            reason,
            "--operator",
            "emp_42",
            "--json",
        ])
        .await;
    let id = created_id(&out);
    agent.wait_state(&id, "delivered").await;

    let refunds = fp.refunds();
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0]["reason"], "card 411111******1111 charged twice");
    for seen in fp.seen() {
        assert!(!digits(&format!("{seen:?}")).contains(PAN), "Final POS received the PAN: {seen:?}");
    }

    let show = agent.cli(&["refunds", "show", &id, "--json"]).await;
    assert!(show.status.success(), "{}", stderr(&show));
    let view: serde_json::Value = serde_json::from_slice(&show.stdout).expect("refund JSON");
    assert_eq!(view["reason"], "card 411111******1111 charged twice");
    assert!(!digits(&String::from_utf8_lossy(&show.stdout)).contains(PAN));

    // An idempotency key holding a PAN is refused before anything is looked up or stored.
    let body = r#"{"receipt_id":"RCP-2025-001","amount":"1.00","reason":"r","operator":"emp_42"}"#;
    let answer = agent
        .client()
        .request(
            "POST",
            "/v1/refunds",
            Some(body.as_bytes().to_vec()),
            &[("idempotency-key", "4111-1111-1111-1111")],
        )
        .await
        .expect("refund request");
    assert_eq!(answer.status, 422, "{}", String::from_utf8_lossy(&answer.body));
    let refused: serde_json::Value = serde_json::from_slice(&answer.body).expect("error JSON");
    assert_eq!(refused["code"], "card_data_in_field");
    assert_eq!(agent.list().await.len(), 1, "nothing was stored");

    assert_eq!(agent.terminate().await.code(), Some(0));
    let logs = agent.logs();
    assert!(logs.contains(&id), "the log file records the refund: {logs}");
    assert!(!digits(&logs).contains(PAN), "the log file holds the PAN: {logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_with_a_pan_in_its_order_id_is_refused() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;

    let receipt = RECEIPT.replace("507f1f77bcf86cd799439013", "4111 1111 1111 1111");
    let path = agent.dir.path().join("receipt.json");
    std::fs::write(&path, &receipt).unwrap();
    let out = agent.cli(&["receipt", "add", path_str(&path)]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let said = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(said.contains("card_data_in_field") && said.contains("`order_id`"), "{said}");
    assert!(!digits(&said).contains(PAN), "{said}");

    let answer = agent
        .client()
        .request("POST", "/v1/receipts", Some(receipt.into_bytes()), &[])
        .await
        .expect("receipt request");
    assert_eq!(answer.status, 422, "{}", String::from_utf8_lossy(&answer.body));
    let body: serde_json::Value = serde_json::from_slice(&answer.body).expect("error JSON");
    assert_eq!(body["code"], "card_data_in_field");

    let show = agent.cli(&["receipt", "show", "RCP-2025-001"]).await;
    assert!(!show.status.success(), "nothing was stored: {}", String::from_utf8_lossy(&show.stdout));
    assert_eq!(agent.terminate().await.code(), Some(0));
    assert!(!digits(&agent.logs()).contains(PAN));
    assert!(fp.seen().is_empty());
}
