//! Idempotent creation (SPEC section 4): a retried or double-tapped refund is never made twice,
//! including when the agent dies between COMMIT and its answer. Needs the `fault-injection`
//! feature for the crash hook: `cargo test --all-features`.

mod common;

use common::*;
use refund_agent::sandbox::FinalPosSandbox;

const BODY: &str =
    r#"{"receipt_id":"RCP-2025-001","amount":"5.00","reason":"Customer returned item","operator":"emp_42"}"#;

async fn post(agent: &Agent, body: &str, key: &str) -> (u16, serde_json::Value) {
    agent.post_json("/v1/refunds", body.as_bytes(), &[("idempotency-key", key)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_sequentially_gives_the_same_refund() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    fp.go_offline().await;
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let (s1, r1) = post(&agent, BODY, "tap-1").await;
    let (s2, r2) = post(&agent, BODY, "tap-1").await;
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(r1["id"], r2["id"]);
    assert_eq!(agent.list().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_concurrently_gives_one_refund_to_every_caller() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    fp.go_offline().await;
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let client = agent.client();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .request(
                    "POST",
                    "/v1/refunds",
                    Some(BODY.as_bytes().to_vec()),
                    &[("idempotency-key", "double-tap")],
                )
                .await
                .expect("answer")
        }));
    }
    let mut ids = Vec::new();
    let mut created = 0;
    for t in tasks {
        let a = t.await.unwrap();
        assert!(a.status == 201 || a.status == 200, "{}", a.status);
        created += usize::from(a.status == 201);
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every caller sees the one refund");
    assert_eq!(created, 1, "exactly one 201");
    assert_eq!(agent.list().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_with_another_body_is_refused_and_stores_nothing() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    fp.go_offline().await;
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let (s1, first) = post(&agent, BODY, "k-1").await;
    assert_eq!(s1, 201);
    let (s2, err) = post(&agent, &BODY.replace("5.00", "6.00"), "k-1").await;
    assert_eq!(s2, 422);
    assert_eq!(err["code"], "idempotency_key_reused");
    assert!(err["message"].as_str().unwrap().contains(first["id"].as_str().unwrap()));
    assert_eq!(agent.list().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_commit_and_reply_the_cli_retry_finds_the_one_refund() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    agent.terminate().await;
    agent.start_with_env(&[("REFUND_AGENT_FAULT_KILL_AFTER_COMMIT", "1")]).await;

    // The CLI sends, the agent commits and dies before answering; the CLI keeps retrying with
    // its key while the agent is restarted (as systemd would).
    let config = agent.config.clone();
    let cli = tokio::spawn(async move {
        tokio::process::Command::new(BIN)
            .arg("--config")
            .arg(config)
            .args(["refund", "create", "--receipt", "RCP-2025-001", "--amount", "5.00"])
            .args(["--reason", "Customer returned item", "--operator", "emp_42", "--retries", "20", "--json"])
            .output()
            .await
            .expect("CLI runs")
    });
    let status = agent.wait_exit().await;
    assert!(!status.success(), "the hook killed the agent after COMMIT");
    agent.start().await;
    let out = cli.await.unwrap();
    let id = created_id(&out);
    assert!(stderr(&out).contains("retrying with the same idempotency key"), "{}", stderr(&out));

    let all = agent.list().await;
    assert_eq!(all.len(), 1, "exactly one refund exists: {all:?}");
    assert_eq!(all[0].id, id);
    agent.wait_state(&id, "delivered").await;
    assert_eq!(fp.refunds().len(), 1, "delivered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_commit_and_reply_an_explicit_key_finds_the_refund_later() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    fp.go_offline().await;
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    agent.terminate().await;
    agent.start_with_env(&[("REFUND_AGENT_FAULT_KILL_AFTER_COMMIT", "1")]).await;
    let lost = cli_refund(&agent, "5.00", &["--idempotency-key", "kiosk-42", "--retries", "0"]).await;
    assert_eq!(lost.status.code(), Some(4), "{}", stderr(&lost));
    assert!(
        stderr(&lost).contains("--idempotency-key kiosk-42"),
        "tells how to retry safely: {}",
        stderr(&lost)
    );
    agent.wait_exit().await;
    agent.start().await;
    let again = cli_refund(&agent, "5.00", &["--idempotency-key", "kiosk-42"]).await;
    let id = created_id(&again);
    assert_eq!(agent.list().await.len(), 1);
    assert_eq!(agent.list().await[0].id, id);
}
