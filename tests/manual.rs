//! A person's decisions: resolve an unknown outcome, cancel before money moved, retry after a
//! permanent failure. Each is a manager's decision (`--manager`, the PIN on stdin), audit-logged
//! with the manager.

mod common;

use common::*;
use refund_agent::sandbox::{Fault, FinalPosSandbox, GatewaySandbox};

const TOKEN: &str = "gw-token";

async fn gateway_setup() -> (GatewaySandbox, FinalPosSandbox, Agent) {
    let gw = GatewaySandbox::start(TOKEN).await.expect("gateway sandbox");
    gw.add_payment("882", "100.00".parse().expect("amount"), "90.00".parse().expect("amount"));
    let fp = FinalPosSandbox::start(API_KEY).await.expect("Final POS sandbox");
    let mut agent = gateway_then_finalpos(&gw.url(), &fp.url(), TOKEN);
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    (gw, fp, agent)
}

fn audit_rows(agent: &Agent) -> Vec<(String, String, String)> {
    let db = rusqlite::Connection::open(agent.db_path()).expect("open db");
    let mut stmt = db.prepare("SELECT actor, action, detail FROM audit ORDER BY seq").expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_outcome_waits_for_a_person_then_continues() {
    let (gw, fp, agent) = gateway_setup().await;
    gw.inject(Fault::CommitThenDrop, 1);
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let r = agent.wait_state(&id, "unknown").await;
    assert_eq!(r.deliveries[0].state, "unknown");
    assert_eq!(r.deliveries[1].state, "pending", "the record is not sent before the money is settled");
    assert_eq!(gw.seen().len(), 1, "never a second request by itself");

    let retry = agent.cli_manager(&["refunds", "retry", &id, "--operator", "emp_42"]).await;
    assert_eq!(retry.status.code(), Some(3), "retry refuses an unknown outcome");
    assert!(stderr(&retry).contains("resolve"), "{}", stderr(&retry));

    // The manager checked the gateway's dashboard: the refund is there.
    let out = agent.cli_manager(&["refunds", "resolve", &id, "--delivered", "--operator", "emp_42"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    agent.wait_state(&id, "delivered").await;
    assert_eq!(gw.seen().len(), 1, "resolving as delivered sends nothing to the gateway");
    assert_eq!(fp.refunds().len(), 1, "the back office gets its record");
    let audit = audit_rows(&agent);
    assert!(audit.iter().any(|(actor, action, _)| actor == "mgr_1" && action == "resolve"), "{audit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolving_as_not_delivered_sends_again() {
    let (gw, _fp, agent) = gateway_setup().await;
    gw.inject(Fault::CommitThenDrop, 1);
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    agent.wait_state(&id, "unknown").await;
    let out = agent
        .cli_manager(&["refunds", "resolve", &id, "--not-delivered", "--operator", "emp_42", "--json"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    agent.wait_state(&id, "delivered").await;
    assert_eq!(gw.seen().len(), 2, "the person's decision is what allowed the second request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_before_money_moved_frees_the_balance_and_sends_nothing() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    fp.go_offline().await;
    let mut agent = Agent::new(&fp.url(), "");
    // A long backoff keeps the refund pending after its first failed attempt, so the cancel
    // below does not meet it in flight (which it would rightly refuse).
    agent.start_parked().await;
    agent.add_receipt(RECEIPT).await;
    let id = created_id(&cli_refund(&agent, "90.00", &[]).await);
    agent.wait_first_failure(&id).await;
    let over = cli_refund(&agent, "10.01", &[]).await;
    assert!(stderr(&over).contains("over_refund"), "{}", stderr(&over));

    let out = agent
        .cli_manager(&["refunds", "cancel", &id, "--operator", "emp_42", "--reason", "wrong amount"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(agent.refund(&id).await.unwrap().state, "cancelled");
    let again = created_id(&cli_refund(&agent, "90.00", &[]).await);

    fp.go_online().await.unwrap();
    agent.wait_state(&again, "delivered").await;
    let sent: Vec<_> = fp.refunds().iter().map(|r| r["externalId"].as_str().unwrap().to_string()).collect();
    assert_eq!(sent, std::slice::from_ref(&again), "the cancelled refund was never sent");
    let late = agent.cli_manager(&["refunds", "cancel", &again, "--operator", "emp_42"]).await;
    assert_eq!(late.status.code(), Some(3), "a delivered refund cannot be cancelled");
    let audit = audit_rows(&agent);
    assert!(
        audit.iter().any(|(a, act, d)| a == "mgr_1" && act == "cancel" && d == "wrong amount"),
        "{audit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_is_sent_again_on_retry() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    fp.inject(Fault::Status(401, None), 1);
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let failed = agent.wait_state(&id, "failed").await;
    assert!(failed.deliveries[0].last_error.as_deref().unwrap().contains("401"));
    let out = agent.cli_manager(&["refunds", "retry", &id, "--operator", "tech_7"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    agent.wait_state(&id, "delivered").await;
    assert_eq!(fp.refunds().len(), 1);
}
