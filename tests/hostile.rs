//! End-to-end against hostile or broken servers (SPEC section 7): the real binary, a real SQLite
//! file, sandboxes on loopback ports that commit and then answer 5xx, redirect to another host,
//! send a 400 MiB body, or stamp a `Date` 30 days off.

mod common;

use common::*;
use refund_agent::sandbox::core::{FAR_DATE_SECS, HUGE_BODY};
use refund_agent::sandbox::{Fault, FaultMix, GatewaySandbox, OliveSandbox, RedirectTarget};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const OLIVE_KEY_ID: &str = "pos_key_hostile";
const OLIVE_SECRET: &str = "olive-hostile-secret";
const GATEWAY_TOKEN: &str = "gw-hostile-token";

/// Every request is processed, then answered 500, 502 or 504.
const EVERY_ANSWER_5XX_AFTER_COMMIT: FaultMix = FaultMix { commit_then_5xx: 1000, ..NO_FAULTS };
const NO_FAULTS: FaultMix = FaultMix {
    error_500: 0,
    error_503: 0,
    too_many_requests: 0,
    hang: 0,
    reset: 0,
    commit_then_drop: 0,
    commit_then_hang: 0,
    commit_then_5xx: 0,
    redirect: 0,
    redirect_to: None,
    huge_body: 0,
    drip: 0,
    far_date: 0,
};

/// An agent whose every refund goes to `destination` (a `[destinations.NAME]` table body).
async fn agent_for(name: &str, url: &str, table: &str, secret: (&str, &str)) -> Agent {
    let extra = format!(
        r#"
[destinations.{name}]
base_url = "{url}"
{table}

[[routes]]
processor = "*"
destinations = ["{name}"]
"#
    );
    let mut agent = Agent::new(url, &extra);
    agent.write_secret(secret.0, secret.1);
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    agent
}

async fn olive() -> (OliveSandbox, Agent) {
    let olive = OliveSandbox::start(OLIVE_KEY_ID, OLIVE_SECRET.as_bytes()).await.expect("Olive sandbox");
    olive.add_transaction("txn_123", dec("100.00"));
    let table =
        format!("kind = \"olive\"\napi_key_id = \"{OLIVE_KEY_ID}\"\nhmac_secret_file = \"olive.secret\"");
    let agent = agent_for("olive", &olive.url(), &table, ("olive.secret", OLIVE_SECRET)).await;
    (olive, agent)
}

async fn gateway() -> (GatewaySandbox, Agent) {
    let gw = GatewaySandbox::start(GATEWAY_TOKEN).await.expect("gateway sandbox");
    gw.add_payment("882", dec("100.00"), dec("90.00"));
    let table = "kind = \"gateway\"\ntoken_file = \"gateway.token\"\nterminal_id = 24";
    let agent = agent_for("gateway", &gw.url(), table, ("gateway.token", GATEWAY_TOKEN)).await;
    (gw, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_after_commit_at_olive_is_unknown_after_exactly_one_request() {
    let (olive, agent) = olive().await;
    // Every answer is a 500, 502 or 504 after the refund was processed.
    olive.inject_randomly(7, Some(EVERY_ANSWER_5XX_AFTER_COMMIT));
    for n in 0..3 {
        let id = created_id(&cli_refund(&agent, "1.00", &[]).await);
        let error = agent.ends(&id, "unknown").await;
        assert!(error.contains("HTTP 50") && error.contains("resolve by hand"), "{error}");
        assert_eq!(olive.seen().len(), n + 1, "one request per refund: {:?}", olive.seen());
        assert_eq!(olive.refunds().len(), n + 1, "the money moved once per refund");
    }
    assert_eq!(olive.refunded("txn_123"), Some(dec("3.00")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_after_commit_at_the_gateway_is_unknown_after_exactly_one_request() {
    let (gw, agent) = gateway().await;
    gw.inject_randomly(7, Some(EVERY_ANSWER_5XX_AFTER_COMMIT));
    for n in 0..3 {
        let id = created_id(&cli_refund(&agent, "1.00", &[]).await);
        let error = agent.ends(&id, "unknown").await;
        assert!(error.contains("HTTP 50") && error.contains("resolve by hand"), "{error}");
        assert_eq!(gw.seen().len(), n + 1, "one request per refund: {:?}", gw.seen());
        assert_eq!(gw.refunds().len(), n + 1, "the card was refunded once per refund");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_never_followed_and_fails_the_delivery() {
    let (olive, agent) = olive().await;
    let elsewhere = RedirectTarget::start().await.expect("redirect target");
    olive.inject(Fault::Redirect(elsewhere.addr()), 100);
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let error = agent.ends(&id, "failed").await;
    assert!(error.contains("HTTP 307") && error.contains("redirects are refused"), "{error}");
    assert!(elsewhere.arrived().is_empty(), "nothing reached the other host: {:?}", elsewhere.arrived());
    assert_eq!(olive.seen().len(), 1, "a redirect is not retried: {:?}", olive.seen());
    assert!(olive.refunds().is_empty());
}

/// The agent's peak resident memory (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM line");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmHWM in kB")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_mib_error_body_does_not_grow_the_agents_memory() {
    let fp = refund_agent::sandbox::FinalPosSandbox::start(API_KEY).await.expect("Final POS sandbox");
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    // Final POS deduplicates, so its 500 is retried and the refund is delivered after it.
    fp.inject(Fault::HugeBody(500, HUGE_BODY), 1);
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let done = agent.wait_state(&id, "delivered").await;
    assert!(done.deliveries[0].attempts >= 2, "{done:?}");
    assert_eq!(fp.seen()[0].fault, Some(Fault::HugeBody(500, HUGE_BODY)));
    let peak = peak_rss_kib(agent.pid().expect("agent running"));
    assert!(peak < 150 * 1024, "peak RSS {peak} KiB after a 400 MiB body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_with_a_date_30_days_ahead_does_not_move_the_signing_clock() {
    let (olive, agent) = olive().await;
    olive.inject(Fault::FarDate(503, FAR_DATE_SECS), 1);
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    agent.wait_state(&id, "delivered").await;
    let seen = olive.seen();
    let statuses: Vec<u16> = seen.iter().map(|s| s.status).collect();
    assert_eq!(statuses.last(), Some(&200), "{seen:?}");
    assert_eq!(seen[0].fault, Some(Fault::FarDate(503, FAR_DATE_SECS)));
    let signed = seen[1].timestamp.as_deref().expect("X-Timestamp");
    let signed = OffsetDateTime::parse(signed, &Rfc3339).expect("RFC 3339");
    let off = (OffsetDateTime::now_utc() - signed).unsigned_abs();
    assert!(off < std::time::Duration::from_secs(60), "the next request was signed {off:?} from now");
    assert_eq!(statuses, [503, 200], "{seen:?}");
}
