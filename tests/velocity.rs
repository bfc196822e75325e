//! End-to-end: the velocity limits of SPEC section 5 (per operator and per till over a rolling
//! day; above them a manager approval is needed), with the real binary, a real SQLite file and
//! a Final POS sandbox on a loopback port. A refusal stores nothing.

mod common;

use common::*;
use refund_agent::sandbox::FinalPosSandbox;
use serde_json::{json, Value};

fn refund(amount: &str, operator: &str) -> Vec<u8> {
    json!({"receipt_id": "RCP-2025-001", "amount": amount, "reason": "Customer returned item", "operator": operator})
        .to_string()
        .into_bytes()
}

async fn post(agent: &Agent, amount: &str, operator: &str) -> (u16, Value) {
    agent.post_json("/v1/refunds", &refund(amount, operator), &[]).await
}

/// Asserts a refusal for want of a manager approval whose message names `limit`.
fn assert_needs_manager(answer: &(u16, Value), limit: &str) {
    let (status, body) = answer;
    assert!(*status == 403 || *status == 422, "{status} {body}");
    assert_eq!(body["code"], "manager_approval_required", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(limit), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_third_refund_of_the_day_needs_a_manager_but_another_operator_does_not() {
    let fp = FinalPosSandbox::start(API_KEY).await.expect("start the Final POS sandbox");
    let mut agent = Agent::new(&fp.url(), "[limits]\nmax_refunds_per_operator_per_day = 2\n");
    let out = agent.cli(&["check-config"]).await;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("USD: max_refunds_per_operator_per_day 2"), "{shown}{}", stderr(&out));
    agent.start().await;
    agent.add_receipt(RECEIPT).await;

    assert_eq!(post(&agent, "1.00", "emp_42").await.0, 201);
    assert_eq!(post(&agent, "1.00", "emp_42").await.0, 201);
    let third = post(&agent, "1.00", "emp_42").await;
    assert_needs_manager(&third, "max_refunds_per_operator_per_day = 2");
    assert!(third.1["message"].as_str().unwrap_or_default().contains("already made 2"), "{}", third.1);
    assert_eq!(post(&agent, "1.00", "emp_7").await.0, 201, "another operator has their own count");
    assert_eq!(agent.list().await.len(), 3, "the refused refund stored nothing");

    // The count is kept in the queue, so a restart does not reset it.
    assert_eq!(agent.terminate().await.code(), Some(0), "clean exit; logs:\n{}", agent.logs());
    agent.start().await;
    assert_needs_manager(&post(&agent, "1.00", "emp_42").await, "max_refunds_per_operator_per_day");
    assert_eq!(agent.list().await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tills_amount_counts_every_operator() {
    let fp = FinalPosSandbox::start(API_KEY).await.expect("start the Final POS sandbox");
    let mut agent = Agent::new(&fp.url(), "[limits]\nmax_amount_per_till_per_day = \"30.00\"\n");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;

    assert_eq!(post(&agent, "20.00", "emp_42").await.0, 201);
    assert_eq!(post(&agent, "10.00", "emp_7").await.0, 201, "exactly at the limit is within it");
    let over = post(&agent, "0.01", "emp_9").await;
    assert_needs_manager(&over, "max_amount_per_till_per_day = 30.00 USD");
    assert!(over.1["message"].as_str().unwrap_or_default().contains("refunded 30.00 USD"), "{}", over.1);
    assert_eq!(agent.list().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refunds_cannot_both_slip_under_a_limit() {
    let fp = FinalPosSandbox::start(API_KEY).await.expect("start the Final POS sandbox");
    let mut agent = Agent::new(&fp.url(), "[limits]\nmax_amount_per_operator_per_day = \"3.00\"\n");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;

    // Six refunds of 1.00 at once: the facts are read inside the transaction that stores each
    // refund, so exactly three fit.
    let client = agent.client();
    let tries = (0..6).map(|_| {
        let client = client.clone();
        tokio::spawn(async move {
            let a = client
                .request("POST", "/v1/refunds", Some(refund("1.00", "emp_42")), &[])
                .await
                .expect("agent answers");
            let body: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
            (a.status, body)
        })
    });
    let mut answers = Vec::new();
    for t in tries.collect::<Vec<_>>() {
        answers.push(t.await.expect("request task"));
    }
    let created = answers.iter().filter(|(status, _)| *status == 201).count();
    assert_eq!(created, 3, "{answers:?}");
    for answer in answers.iter().filter(|(status, _)| *status != 201) {
        assert_needs_manager(answer, "max_amount_per_operator_per_day = 3.00 USD");
    }
    assert_eq!(agent.list().await.len(), 3);
}
