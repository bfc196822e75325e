//! End-to-end: a SIGTERM that comes the moment the agent starts answering (systemd stopping a
//! unit right after READY=1, a technician's quick `systemctl restart`) is a clean stop, never the
//! default action that kills the process mid-start.

mod common;

use common::*;
use refund_agent::sandbox::FinalPosSandbox;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_right_after_the_socket_answers_is_clean() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let mut agent = Agent::new(&fp.url(), "");
    // The harness returns as soon as /healthz answers: the earliest moment a client can act.
    // Before the signal handlers were installed ahead of the start, some of these rounds
    // ended by signal (no exit code) instead of exit code 0.
    for round in 0..20 {
        agent.start().await;
        let status = agent.terminate().await;
        assert_eq!(status.code(), Some(0), "round {round}: {status}; logs:\n{}", agent.logs());
    }
}
