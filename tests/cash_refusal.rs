//! End-to-end: a cash route (only Final POS, which moves no money) whose back office refuses the
//! record. The cashier already paid out at the till, so the refund is `failed` for a person,
//! never `declined`, and the sale's balance stays used.

mod common;

use common::*;
use refund_agent::sandbox::{Fault, FinalPosSandbox};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_cash_refund_is_failed_and_keeps_the_balance_used() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    fp.inject(Fault::Status(400, None), 1);
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;

    let id = created_id(&cli_refund(&agent, "60.00", &[]).await);
    let failed = agent.wait_state(&id, "failed").await;
    let error = failed.deliveries[0].last_error.clone().unwrap_or_default();
    assert_eq!(failed.deliveries[0].state, "failed");
    assert!(error.contains("paid out at the till"), "{error}");
    assert!(fp.refunds().is_empty(), "the refused request was not processed");

    // 60.00 of the 100.00 sale is still used: another 60.00 would refund more than was paid.
    let again = cli_refund(&agent, "60.00", &[]).await;
    assert_eq!(again.status.code(), Some(3), "{}", stderr(&again));
    assert!(stderr(&again).contains("over_refund"), "{}", stderr(&again));
    assert_eq!(agent.terminate().await.code(), Some(0));
}
