//! End-to-end: five wrong PINs lock a manager for five minutes (SPEC section 5b), the lock-out
//! survives a restart, a wall clock set forward while the agent runs does not end it, and the
//! next start believes the clock. The clock is moved with the `fault-injection` skew hook
//! (`REFUND_AGENT_TEST_CLOCK_SKEW_FILE`), as in tests/clock_jump.rs.

mod common;

use common::*;
use refund_agent::sandbox::FinalPosSandbox;
use serde_json::{json, Value};

const MINUTE_MS: i64 = 60_000;

async fn refund(agent: &Agent, pin: &str) -> (u16, Value) {
    let body = json!({"receipt_id": "RCP-2025-001", "amount": "60.00", "reason": "returned",
        "operator": "emp_42", "manager_approval": {"manager": MANAGER, "pin": pin}});
    agent.post_json("/v1/refunds", body.to_string().as_bytes(), &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_wrong_pins_lock_the_manager_across_a_restart_until_five_minutes_passed() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let mut agent = Agent::new(&fp.url(), "[limits]\nmax_refund = \"50.00\"\n");
    let skew_file = agent.dir.path().join("clock-skew");
    let skew = skew_file.display().to_string();
    let env = [("REFUND_AGENT_TEST_CLOCK_SKEW_FILE", skew.as_str())];
    std::fs::write(&skew_file, "0").unwrap();
    agent.start_with_env(&env).await;
    agent.add_receipt(RECEIPT).await;

    for i in 1..=5 {
        let (status, answer) = refund(&agent, "1111").await;
        assert_eq!((status, answer["code"].as_str()), (403, Some("manager_approval_invalid")), "try {i}");
    }
    let (status, answer) = refund(&agent, PIN).await;
    assert_eq!((status, answer["code"].as_str()), (429, Some("manager_locked")), "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("until 20"), "says until when: {answer}");

    // The count is in the queue: a restart does not unlock.
    agent.terminate().await;
    agent.start_with_env(&env).await;
    assert_eq!(refund(&agent, PIN).await.0, 429, "still locked after a restart");

    // A clock set six minutes forward while the agent runs does not end the lock-out early.
    std::fs::write(&skew_file, (6 * MINUTE_MS).to_string()).unwrap();
    assert_eq!(refund(&agent, PIN).await.0, 429, "a jump forward while running is not believed");

    // At the next start the clock is believed: five minutes have passed, the manager may approve.
    agent.terminate().await;
    agent.start_with_env(&env).await;
    let (status, made) = refund(&agent, PIN).await;
    assert_eq!(status, 201, "{made}");
    assert_eq!(agent.list().await.len(), 1, "only the approved refund was stored");

    // Deleting the lock-out row behind the agent's back is noticed at the next start.
    agent.terminate().await;
    let db = rusqlite::Connection::open(agent.db_path()).unwrap();
    assert_eq!(db.execute("DELETE FROM manager_lockouts", []).unwrap(), 1);
    drop(db);
    let out = agent.cli(&["doctor"]).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("manager lock-out record"), "{text}");
}
