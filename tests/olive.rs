//! End-to-end against Olive (seed 004): the real binary, a real SQLite file, and an Olive
//! sandbox on a loopback port that checks every signature and timestamp.

mod common;

use std::time::Duration;

use common::*;
use refund_agent::sandbox::{Fault, OliveSandbox};

const KEY_ID: &str = "pos_key_test";
const SECRET: &str = "olive-test-secret";

/// An agent whose every refund goes to Olive at `url`, signing with `secret`. `limits` is an
/// optional `[limits]` body.
fn olive_agent(url: &str, secret: &str, limits: &str) -> Agent {
    let extra = format!(
        r#"
[destinations.olive]
kind = "olive"
base_url = "{url}"
api_key_id = "{KEY_ID}"
hmac_secret_file = "olive.secret"

[[routes]]
processor = "*"
destinations = ["olive"]

[limits]
{limits}
"#
    );
    let agent = Agent::new(url, &extra);
    agent.write_secret("olive.secret", secret);
    agent
}

/// Starts an Olive sandbox that knows the example sale's transaction (`txn_123`) with
/// `captured` captured, and an agent for it that has the example receipt.
async fn setup(captured: Option<&str>) -> (OliveSandbox, Agent) {
    let olive = OliveSandbox::start(KEY_ID, SECRET.as_bytes()).await.expect("start the Olive sandbox");
    if let Some(c) = captured {
        olive.add_transaction("txn_123", dec(c));
    }
    let mut agent = olive_agent(&olive.url(), SECRET, "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    (olive, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_is_signed_and_delivered_once() {
    let (olive, agent) = setup(Some("100.00")).await;
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let done = agent.wait_state(&id, "delivered").await;
    assert_eq!(done.deliveries[0].destination, "olive");
    assert_eq!(done.deliveries[0].remote_id.as_deref(), Some("rfnd_1"));

    let refunds = olive.refunds();
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0]["original_transaction_id"], "txn_123");
    assert_eq!(refunds[0]["amount"], "5.00");
    assert_eq!(refunds[0]["reason"], "Customer returned item");
    assert_eq!(refunds[0]["initiated_by"], "emp_42");
    assert_eq!(olive.refunded("txn_123"), Some(dec("5.00")));
    let seen = olive.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/api/v1/pos/refund");
    assert_eq!(seen[0].status, 200);
    let ts = seen[0].timestamp.as_deref().unwrap_or_default();
    assert!(ts.len() == 20 && ts.ends_with('Z'), "{ts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amount_olive_refuses_is_declined_with_its_message() {
    // Olive's record of the sale allows less than the agent's ledger does.
    let (olive, agent) = setup(Some("3.00")).await;
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let error = agent.ends(&id, "declined").await;
    assert!(error.contains("INVALID_AMOUNT") && error.contains("exceeds the refundable balance"), "{error}");
    assert!(olive.refunds().is_empty());
    assert_eq!(olive.seen().len(), 1, "a refusal is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_refund_of_a_fully_refunded_sale_is_declined_as_already_refunded() {
    let (olive, agent) = setup(Some("5.00")).await;
    let first = created_id(&cli_refund(&agent, "5.00", &[]).await);
    agent.wait_state(&first, "delivered").await;
    let second = created_id(&cli_refund(&agent, "1.00", &[]).await);
    let error = agent.ends(&second, "declined").await;
    assert!(error.starts_with("already refunded"), "{error}");
    assert!(error.contains("ALREADY_REFUNDED") && error.contains("txn_123"), "{error}");
    assert_eq!(olive.refunds().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_transaction_is_declined_as_not_found() {
    let (olive, agent) = setup(None).await;
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let error = agent.ends(&id, "declined").await;
    assert!(
        error.contains("HTTP 404 TXN_NOT_FOUND") && error.contains("Transaction txn_123 not found"),
        "{error}"
    );
    assert_eq!(olive.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_refund_permission_fails() {
    let (olive, agent) = setup(Some("100.00")).await;
    olive.forbid_refunds(true);
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let error = agent.ends(&id, "failed").await;
    assert!(
        error.contains("HTTP 403 FORBIDDEN") && error.contains("not permitted to issue refunds"),
        "{error}"
    );
    assert_eq!(olive.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_with_a_right_clock_fails_as_refused_credentials() {
    let olive = OliveSandbox::start(KEY_ID, SECRET.as_bytes()).await.unwrap();
    olive.add_transaction("txn_123", dec("100.00"));
    let mut agent = olive_agent(&olive.url(), "not-the-secret", "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let error = agent.ends(&id, "failed").await;
    assert!(error.starts_with("credentials refused") && error.contains("INVALID_SIGNATURE"), "{error}");
    assert_eq!(olive.seen().len(), 1, "refused credentials are not retried");
    assert!(olive.refunds().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_till_clock_an_hour_behind_is_corrected_and_the_refund_delivered() {
    let (olive, agent) = setup(Some("100.00")).await;
    // Olive's clock is an hour ahead of the till's: the first signature is outside its window.
    olive.set_clock_offset(3600);
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let done = agent.wait_state(&id, "delivered").await;
    assert_eq!(done.deliveries[0].remote_id.as_deref(), Some("rfnd_1"));
    let seen = olive.seen();
    let outcome: Vec<(u16, Option<&str>)> = seen.iter().map(|s| (s.status, s.code.as_deref())).collect();
    // The clock moves by more than a minute only when two answers agree.
    let stale = (401, Some("INVALID_TIMESTAMP"));
    assert_eq!(outcome, [stale, stale, (200, None)], "{seen:?}");
    assert_ne!(seen[1].timestamp, seen[2].timestamp, "the retry is signed afresh with Olive's time");
    assert_eq!(olive.refunds().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_till_clock_an_hour_fast_is_corrected_and_the_refund_delivered() {
    let (olive, agent) = setup(Some("100.00")).await;
    // Olive's clock is an hour behind the till's: the till's timestamps look an hour early.
    olive.set_clock_offset(-3600);
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    agent.wait_state(&id, "delivered").await;
    let outcome: Vec<u16> = olive.seen().iter().map(|s| s.status).collect();
    assert_eq!(outcome, [401, 401, 200], "confirmed by a second answer before it is used");
    assert_eq!(olive.refunds().len(), 1);
    let status = agent.client().request("GET", "/v1/status", None, &[]).await.expect("status");
    let status: serde_json::Value = serde_json::from_slice(&status.body).expect("JSON");
    let offset = status["destinations"]["olive"]["clock_offset_ms"].as_i64().expect("offset measured");
    assert!((-3_602_000..=-3_598_000).contains(&offset), "status reports the offset: {offset}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_then_delivered_after_retry_after() {
    let (olive, agent) = setup(Some("100.00")).await;
    olive.inject(Fault::Status(429, Some(1)), 1);
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let done = agent.wait_state(&id, "delivered").await;
    assert_eq!(done.deliveries[0].attempts, 2, "{done:?}");
    let seen = olive.seen();
    let statuses: Vec<u16> = seen.iter().map(|s| s.status).collect();
    assert_eq!(statuses, [429, 200]);
    assert!(
        seen[1].at.duration_since(seen[0].at) >= Duration::from_millis(950),
        "Retry-After: 1 was honoured: {:?}",
        seen[1].at.duration_since(seen[0].at)
    );
    assert_eq!(olive.refunds().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_then_delivered_exactly_once() {
    let (olive, agent) = setup(Some("100.00")).await;
    // Only answers that say the request was not processed are retried at Olive (a 500 may
    // follow a commit: tests/hostile.rs).
    olive.inject(Fault::Status(503, None), 3);
    olive.inject(Fault::Status(408, None), 1);
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let done = agent.wait_state(&id, "delivered").await;
    assert_eq!(done.deliveries[0].attempts, 5, "{done:?}");
    let statuses: Vec<u16> = olive.seen().iter().map(|s| s.status).collect();
    assert_eq!(statuses, [503, 503, 503, 408, 200]);
    assert_eq!(olive.refunds().len(), 1);
    assert_eq!(olive.refunded("txn_123"), Some(dec("5.00")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_after_commit_ends_unknown_and_is_never_resent() {
    let (olive, agent) = setup(Some("100.00")).await;
    olive.inject(Fault::CommitThenDrop, 1);
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let error = agent.ends(&id, "unknown").await;
    assert!(error.contains("resolve by hand"), "{error}");
    assert_eq!(
        olive.seen().len(),
        1,
        "Olive does not deduplicate, so the request is never sent twice: {:?}",
        olive.seen()
    );
    assert_eq!(olive.refunds().len(), 1, "the money did move once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_without_a_transaction_id_fails_without_a_request() {
    let olive = OliveSandbox::start(KEY_ID, SECRET.as_bytes()).await.unwrap();
    let mut agent = olive_agent(&olive.url(), SECRET, "allow_unlinked = true");
    agent.start().await;
    let out = cli_unlinked_refund(&agent).await;
    let id = created_id(&out);
    let error = agent.ends(&id, "failed").await;
    assert!(error.contains("no original transaction id"), "{error}");
    assert!(olive.seen().is_empty(), "nothing was sent: {:?}", olive.seen());
}
