//! End-to-end: the till's wall clock jumps (moved through the `fault-injection` clock hook,
//! `REFUND_AGENT_TEST_CLOCK_SKEW_FILE`). Set back, it must not park a queued refund for the
//! length of the jump; set forward, it must not purge finished refunds or expire pending ones.

mod common;

use common::*;
use refund_agent::sandbox::{Fault, FinalPosSandbox};

const DAY_MS: i64 = 86_400_000;

fn skew_env(agent: &Agent) -> (String, std::path::PathBuf) {
    let path = agent.dir.path().join("clock-skew");
    (path.display().to_string(), path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_set_back_30_days_does_not_park_a_queued_refund() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    // The first attempt is told to come back in 50 minutes, within the longest delay (1 h).
    fp.inject(Fault::Status(503, Some(3000)), 1);
    let mut agent = Agent::new(&fp.url(), "");
    let (skew, skew_file) = skew_env(&agent);
    let env = [
        ("REFUND_AGENT__SYNC__BACKOFF_INITIAL", "1h"),
        ("REFUND_AGENT__SYNC__BACKOFF_MAX", "1h"),
        ("REFUND_AGENT_TEST_CLOCK_SKEW_FILE", skew.as_str()),
    ];
    agent.start_with_env(&env).await;
    agent.add_receipt(RECEIPT).await;
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    agent.wait_first_failure(&id).await;
    assert_eq!(agent.terminate().await.code(), Some(0));

    // The clock is corrected 30 days back; its next attempt now looks 30 days and 50 minutes
    // away, further than any delay the agent sets, so it is due at once.
    std::fs::write(&skew_file, (-30 * DAY_MS).to_string()).unwrap();
    agent.start_with_env(&env).await;
    let done = agent.wait_state(&id, "delivered").await;
    assert_eq!(done.deliveries[0].attempts, 2);
    assert_eq!(fp.refunds().len(), 1, "delivered exactly once");
    assert_eq!(agent.terminate().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_set_forward_60_days_purges_and_expires_nothing_early() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let mut agent = Agent::new(&fp.url(), "");
    let (skew, skew_file) = skew_env(&agent);
    agent
        .start_with_env(&[
            ("REFUND_AGENT__AGENT__RETENTION", "30d"),
            ("REFUND_AGENT__LIMITS__MAX_PENDING_AGE", "7d"),
            // Parked: after its first failure the pending refund waits for the probe.
            ("REFUND_AGENT__SYNC__BACKOFF_INITIAL", "1000h"),
            ("REFUND_AGENT__SYNC__BACKOFF_MAX", "1000h"),
            ("REFUND_AGENT_TEST_CLOCK_SKEW_FILE", skew.as_str()),
        ])
        .await;
    agent.add_receipt(RECEIPT).await;
    let finished = created_id(&cli_refund(&agent, "5.00", &[]).await);
    agent.wait_state(&finished, "delivered").await;
    fp.go_offline().await;
    let pending = created_id(&cli_refund(&agent, "6.00", &[]).await);
    agent.wait_first_failure(&pending).await;

    let sweeps = || agent.logs().matches("queue sweep").count();
    let before = sweeps();
    std::fs::write(&skew_file, (60 * DAY_MS).to_string()).unwrap();
    // The worker sweeps as soon as it sees the wall clock moved by more than its interval.
    eventually("a sweep after the jump", DEADLINE, || async { (sweeps() > before).then_some(()) }).await;

    let kept = agent.refund(&finished).await.expect("the delivered refund is not purged");
    assert_eq!(kept.state, "delivered");
    let still = agent.refund(&pending).await.expect("the pending refund is there");
    assert_eq!(still.state, "queued", "not flagged expired by a clock jump");
    assert_eq!(agent.terminate().await.code(), Some(0));
}
