//! Fast resume: however far a refund's backoff has grown while the network was down, the agent
//! notices the destination's return through its connectivity probe and delivers at once.

mod common;

use std::time::Instant;

use common::*;
use refund_agent::sandbox::FinalPosSandbox;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_return_of_the_network_is_noticed_without_waiting_out_the_backoff() {
    let fp = FinalPosSandbox::start(API_KEY).await.expect("sandbox");
    fp.go_offline().await;
    let mut agent = Agent::new(&fp.url(), "");
    // A backoff so long that only the probe can explain a delivery within the test's deadline.
    agent.start_parked().await;
    agent.add_receipt(RECEIPT).await;
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let waiting = agent.wait_first_failure(&id).await;
    let next = waiting.deliveries[0].next_attempt_at.clone().expect("a pending delivery has a next attempt");
    let next = OffsetDateTime::parse(&next, &Rfc3339).expect("RFC 3339");
    assert!(
        next > OffsetDateTime::now_utc() + time::Duration::minutes(1),
        "the backoff put the next attempt at {next}"
    );

    fp.go_online().await.expect("online");
    let back = Instant::now();
    agent.wait_state(&id, "delivered").await;
    println!("reconnect to delivered: {:?}", back.elapsed());
    assert!(OffsetDateTime::now_utc() < next, "delivered by the probe, long before the backoff");
    assert_eq!(fp.refunds().len(), 1);
    assert!(agent.logs().contains("destination reachable again"), "the return is logged");
}
