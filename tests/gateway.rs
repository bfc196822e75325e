//! End-to-end against the card gateway (seed 002): the real binary, a real SQLite file, and a
//! gateway sandbox on a loopback port that enforces the seed's refund rules.

mod common;

use std::time::Duration;

use common::*;
use refund_agent::sandbox::{Fault, GatewaySandbox};

const TOKEN: &str = "gw-test-token";

/// Starts a gateway sandbox that knows payment 882 (the example sale's) when `payment` gives
/// its captured amount and subtotal, and an agent for it that has the example receipt.
async fn setup(payment: Option<(&str, &str)>) -> (GatewaySandbox, Agent) {
    let gw = GatewaySandbox::start(TOKEN).await.expect("start the gateway sandbox");
    if let Some((captured, subtotal)) = payment {
        gw.add_payment("882", dec(captured), dec(subtotal));
    }
    let mut agent = gateway_agent(&gw.url(), TOKEN, "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    (gw, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_refund_is_delivered_once_with_the_seed_fields() {
    let (gw, agent) = setup(Some(("100.00", "90.00"))).await;
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let done = agent.wait_state(&id, "delivered").await;
    assert_eq!(done.deliveries[0].destination, "gateway");
    assert_eq!(done.deliveries[0].remote_id.as_deref(), Some("883"));

    let refunds = gw.refunds();
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0]["amount"], "5.00");
    assert_eq!(refunds[0]["parent"]["id"], 882);
    assert_eq!(refunds[0]["terminal"]["id"], 24);
    assert_eq!(refunds[0]["externalId"], id.as_str());
    assert!(refunds[0]["order"].is_null(), "no breakdown was given");
    let seen = gw.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/payment/882/refund");
    assert_eq!(seen[0].outcome.as_deref(), Some("Approved"));
    assert_eq!(gw.refunded("882"), Some(dec("5.00")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tax_breakdown_is_sent_so_the_subtotal_rule_does_not_apply() {
    let (gw, agent) = setup(Some(("100.00", "90.00"))).await;
    let id = created_id(&cli_refund(&agent, "95.00", &["--tax", "9.50"]).await);
    agent.wait_state(&id, "delivered").await;
    let refunds = gw.refunds();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0]["order"]["tax"], "9.50");
    assert_eq!(refunds[0]["amount"], "95.00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_the_captured_amount_is_declined_with_the_gateways_reason() {
    // The gateway captured less than the receipt says (a partial capture).
    let (gw, agent) = setup(Some(("3.00", "3.00"))).await;
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let error = agent.ends(&id, "declined").await;
    assert!(
        error.contains("declined by the card gateway") && error.contains("exceeds the captured amount"),
        "{error}"
    );
    assert!(gw.refunds().is_empty());
    assert_eq!(gw.seen().len(), 1, "a decline is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_the_gateways_subtotal_without_a_breakdown_is_declined() {
    let (gw, agent) = setup(Some(("100.00", "4.00"))).await;
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let error = agent.ends(&id, "declined").await;
    assert!(error.contains("exceeds the order subtotal"), "{error}");
    assert!(gw.refunds().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_payment_is_declined_as_not_found() {
    let (gw, agent) = setup(None).await;
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let error = agent.ends(&id, "declined").await;
    assert!(error.contains("HTTP 404: Payment 882 not found"), "{error}");
    assert_eq!(gw.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_fails_without_retrying() {
    let gw = GatewaySandbox::start(TOKEN).await.unwrap();
    gw.add_payment("882", dec("100.00"), dec("90.00"));
    let mut agent = gateway_agent(&gw.url(), "expired-token", "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let error = agent.ends(&id, "failed").await;
    assert!(error.contains("HTTP 401: Invalid or missing bearer token"), "{error}");
    assert_eq!(gw.seen().len(), 1);
    assert!(gw.refunds().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_documented_errors_end_in_the_right_state() {
    let (gw, agent) = setup(Some(("100.00", "90.00"))).await;
    for (status, state) in [(400, "declined"), (422, "declined"), (403, "failed")] {
        gw.inject(Fault::Status(status, None), 1);
        let id = created_id(&cli_refund(&agent, "1.00", &[]).await);
        let error = agent.ends(&id, state).await;
        assert!(error.contains(&format!("HTTP {status}: Injected failure")), "{status}: {error}");
    }
    assert_eq!(gw.seen().len(), 3, "none of them is retried: {:?}", gw.seen());
    assert!(gw.refunds().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_then_delivered_after_retry_after() {
    let (gw, agent) = setup(Some(("100.00", "90.00"))).await;
    gw.inject(Fault::Status(429, Some(1)), 1);
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let done = agent.wait_state(&id, "delivered").await;
    assert_eq!(done.deliveries[0].attempts, 2, "{done:?}");
    let seen = gw.seen();
    let statuses: Vec<u16> = seen.iter().map(|s| s.status).collect();
    assert_eq!(statuses, [429, 200]);
    assert!(
        seen[1].at.duration_since(seen[0].at) >= Duration::from_millis(950),
        "Retry-After: 1 was honoured: {:?}",
        seen[1].at.duration_since(seen[0].at)
    );
    assert_eq!(gw.refunds().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_then_delivered_exactly_once() {
    let (gw, agent) = setup(Some(("100.00", "90.00"))).await;
    gw.inject(Fault::Status(503, None), 4);
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let done = agent.wait_state(&id, "delivered").await;
    assert_eq!(done.deliveries[0].attempts, 5, "{done:?}");
    let statuses: Vec<u16> = gw.seen().iter().map(|s| s.status).collect();
    assert_eq!(statuses, [503, 503, 503, 503, 200]);
    assert_eq!(gw.refunds().len(), 1);
    assert_eq!(gw.refunded("882"), Some(dec("5.00")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_after_commit_ends_unknown_and_is_never_resent() {
    let (gw, agent) = setup(Some(("100.00", "90.00"))).await;
    gw.inject(Fault::CommitThenDrop, 1);
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let error = agent.ends(&id, "unknown").await;
    assert!(error.contains("resolve by hand"), "{error}");
    assert_eq!(
        gw.seen().len(),
        1,
        "the gateway does not promise deduplication, so the request is never sent twice: {:?}",
        gw.seen()
    );
    assert_eq!(gw.refunds().len(), 1, "the card was refunded once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_without_the_original_payment_id_fails_without_a_request() {
    let gw = GatewaySandbox::start(TOKEN).await.unwrap();
    let mut agent = gateway_agent(&gw.url(), TOKEN, "allow_unlinked = true");
    agent.start().await;
    let out = cli_unlinked_refund(&agent).await;
    let id = created_id(&out);
    let error = agent.ends(&id, "failed").await;
    assert!(error.contains("processor_payment_id"), "{error}");
    assert!(gw.seen().is_empty(), "nothing was sent: {:?}", gw.seen());
}
