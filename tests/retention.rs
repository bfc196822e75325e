//! Retention forgets refunds, never what they refunded (SPEC section 6), with the real binary:
//! after a fully refunded sale's refunds are purged and the agent restarts, another refund on
//! it is refused, and the old Idempotency-Key still names the old refund and creates nothing;
//! a sale or key row deleted from the file refuses the start.

mod common;

use common::*;
use refund_agent::sandbox::FinalPosSandbox;

const FULL: &str = r#"{"receipt_id":"RCP-2025-001","amount":"100.00","tax":"10.00","reason":"Customer returned item","operator":"emp_42"}"#;
const MORE: &str = r#"{"receipt_id":"RCP-2025-001","amount":"1.00","tax":"0.00","reason":"Customer returned item","operator":"emp_42"}"#;

async fn post(agent: &Agent, body: &str, key: &str) -> (u16, serde_json::Value) {
    agent.post_json("/v1/refunds", body.as_bytes(), &[("idempotency-key", key)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_full_refund_still_refuses_more_and_its_key_creates_nothing() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let (status, first) = post(&agent, FULL, "till-7-tap-1").await;
    assert_eq!(status, 201, "{first}");
    let id = first["id"].as_str().expect("an id").to_string();
    agent.wait_state(&id, "delivered").await;
    assert_eq!(agent.terminate().await.code(), Some(0));

    // Retention of 1 ms: the sweep at start purges the delivered refund.
    agent.start_with_env(&[("REFUND_AGENT__AGENT__RETENTION", "1ms")]).await;
    eventually("the sweep to purge the delivered refund", DEADLINE, || async {
        agent.list().await.is_empty().then_some(())
    })
    .await;
    assert_eq!(agent.terminate().await.code(), Some(0));

    agent.start().await;
    let (status, more) = post(&agent, MORE, "till-7-tap-2").await;
    assert_eq!(more["code"], "over_refund", "{status} {more}");
    let (status, again) = post(&agent, FULL, "till-7-tap-1").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], id.as_str(), "the old key names the old refund");
    assert_eq!(again["state"], "purged");
    assert!(agent.list().await.is_empty(), "nothing new was made");
    assert_eq!(agent.terminate().await.code(), Some(0));
    assert_eq!(fp.refunds().len(), 1, "sent once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_or_key_deleted_from_the_file_refuses_the_start() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    for (sql, named) in [
        ("DELETE FROM sales WHERE receipt_id = ?1", "1 sale(s) missing from table sales"),
        (
            "DELETE FROM idempotency_keys WHERE ?1 = ?1",
            "1 idempotency key(s) missing from table idempotency_keys",
        ),
    ] {
        let mut agent = Agent::new(&fp.url(), "");
        agent.start().await;
        agent.add_receipt(RECEIPT).await;
        let (status, _) = post(&agent, MORE, "till-7-tap-3").await;
        assert_eq!(status, 201);
        assert_eq!(agent.terminate().await.code(), Some(0));
        let db = rusqlite::Connection::open(agent.db_path()).expect("open the queue file");
        assert_eq!(db.execute(sql, ["RCP-2025-001"]).expect("delete"), 1);
        drop(db);
        let run = tokio::process::Command::new(BIN).arg("--config").arg(&agent.config).arg("run").output();
        let out = tokio::time::timeout(DEADLINE, run).await.expect("a refused start ends").expect("run");
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains(named), "{}", stderr(&out));
        let doctor = agent.cli(&["doctor"]).await;
        let text = String::from_utf8_lossy(&doctor.stdout).to_string();
        let line = text.lines().find(|l| l.contains("  queue rows: ")).unwrap_or_default().to_string();
        assert!(line.starts_with("FAIL") && line.contains(named), "doctor reports it: {text}");
    }
}
