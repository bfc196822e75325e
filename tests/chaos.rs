//! Chaos: refunds created through the control API and the serial terminal while the agent is
//! `kill -9`-ed at random moments and restarted, against three loopback servers (Final POS, the
//! card gateway, Olive) that randomly answer 500/503, 429 with `Retry-After`, hang past the
//! request timeout, reset the connection, commit and then drop or hang the answer, commit and
//! then answer 500/502/504, redirect to another host, send a 400 MiB body, drip the body, or
//! stamp a `Date` 30 days off. Meanwhile the till's wall clock jumps (through the agent's
//! `fault-injection` clock hook): while the agent runs, anywhere from 30 days back to 60 days
//! ahead; at a restart, back by up to 30 days (never later than at an earlier start: a clock set
//! ahead while the agent is stopped cannot be told from time passing). Refunds are kept 24 h and
//! flagged expired after 12 h, so a jump that aged anything would lose or park refunds.
//!
//! At a few kills (a tenth of `CHAOS_KILLS`, at least one) a backup is taken first, with
//! `refund-agent backup` while the agent runs and the clients keep creating refunds; one or two
//! kills later, with the agent stopped, `refund-agent restore` puts that backup back before the
//! restart. Every other time the queue is first moved aside, as after a lost disk: the restore
//! then rolls the queue back: refunds committed after the backup are gone (a client told of one
//! does not ask again; one still waiting for its answer asks again and gets a new refund; a sale
//! gone with them is sent again by its kiosk), and deliveries not final in the copy are
//! `unknown` at the gateway and Olive and `pending` again at Final POS. The other times it
//! restores over the intact queue, which it must keep whole (nothing rolled back). Both
//! commands run with the agent's configuration, environment and (skewed) clock, as on the till.
//!
//! Clients behave as a careful kiosk does: the API client retries with the same idempotency key
//! until it gets an answer, the terminal resends the same frame (same `request_id`) after the
//! agent comes back. At the end, with the faults turned off, the test checks:
//! * nothing acknowledged is missing, and there is exactly one refund per acknowledged request,
//!   except a refund a restore rolled back that was acknowledged after its backup began (the
//!   queue the restore replaced, kept as `queue.db.pre-restore` or moved aside, says which refunds it rolled
//!   back; the acknowledgement order says which of them the backup could not hold);
//! * no destination processed a refund twice (the gateway and Olive do not deduplicate), rolled
//!   back or not;
//! * a delivery that is `delivered` was processed exactly once at its destination;
//! * a refund that sits in `unknown` had no request sent after the one whose outcome was lost;
//! * nothing that was never acknowledged reached a destination, unless a restore rolled it back
//!   (it was committed, and may have gone out once, before the kill that preceded the restore);
//! * a Final POS delivery waits `pending` behind an unknown first delivery with no record at
//!   Final POS, or with one if a restore set it pending again after it was delivered;
//! * nothing reached the host a redirect pointed at, and a delivery is `failed` only where its
//!   last request was answered with a redirect.
//!
//! Sizes: `CHAOS_REFUNDS` (default 1000), `CHAOS_KILLS` (default 30), `CHAOS_SEED` (default: from
//! the clock, printed so a failure can be replayed). `CHAOS_TERMINAL=0` creates every refund
//! through the API (scripts/aarch64-test sets it: qemu-user cannot open the pty as a serial port). The long form is
//! `CHAOS_REFUNDS=10000 CHAOS_KILLS=300 cargo test --release --all-features --test chaos -- --nocapture`.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pty::Pty;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use refund_agent::control::client::ControlClient;
use refund_agent::queue::RefundView;
use refund_agent::sandbox::{Fault, FaultMix, FinalPosSandbox, GatewaySandbox, OliveSandbox, RedirectTarget};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tokio::sync::{watch, Mutex as AsyncMutex};

const GATEWAY_TOKEN: &str = "gw-chaos-token";
const OLIVE_KEY_ID: &str = "pos_key_chaos";
const OLIVE_SECRET: &str = "olive-chaos-secret";
/// Every request times out after this; a hung server costs no more.
const REQUEST_TIMEOUT: &str = "1s";
/// How long everything may take to settle once the faults stop: four minutes, and 50 ms more
/// per refund beyond the first 4,800 (the long form's 10,000 refunds are 20,000 deliveries).
fn settle_limit(refunds: usize) -> Duration {
    Duration::from_secs(240).max(Duration::from_millis(50 * refunds as u64))
}

/// Roughly one request in five meets a fault.
const MIX: FaultMix = FaultMix {
    error_500: 50,
    error_503: 40,
    too_many_requests: 20,
    hang: 10,
    reset: 30,
    commit_then_drop: 30,
    commit_then_hang: 10,
    commit_then_5xx: 20,
    redirect: 5,
    // Set at run time to the listener that plays the other host.
    redirect_to: None,
    huge_body: 5,
    drip: 5,
    far_date: 10,
};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One sale and the refund of it: how it is created and where it goes.
#[derive(Debug, Clone)]
struct Case {
    receipt_id: String,
    transaction_id: String,
    payment_id: String,
    olive: bool,
    terminal: bool,
}

impl Case {
    fn new(i: usize, with_terminal: bool) -> Case {
        Case {
            receipt_id: format!("CHAOS-{i:05}"),
            transaction_id: format!("txn-chaos-{i:05}"),
            payment_id: format!("{}", 500_000 + i),
            olive: i % 3 == 0,
            terminal: with_terminal && i % 5 == 1,
        }
    }

    fn receipt(&self) -> Value {
        let mut r: Value = serde_json::from_str(RECEIPT).expect("receipt JSON");
        r["receipt_id"] = self.receipt_id.clone().into();
        r["transaction_id"] = self.transaction_id.clone().into();
        r["processor"] = if self.olive { "olive" } else { "gateway" }.into();
        r["processor_payment_id"] = self.payment_id.clone().into();
        r
    }

    fn first_destination(&self) -> &'static str {
        if self.olive {
            "olive"
        } else {
            "gateway"
        }
    }
}

/// What the clients were told: case index → refund id.
#[derive(Debug, Default)]
struct Acks {
    ids: Mutex<HashMap<usize, String>>,
    /// When each case was acknowledged: 1 for the first acknowledgement, and so on. A backup
    /// notes `count` as it starts; a refund acknowledged before that was committed before it.
    order: Mutex<HashMap<usize, usize>>,
    count: AtomicUsize,
}

impl Acks {
    fn record(&self, case: usize, id: String) {
        let mut ids = self.ids.lock().expect("lock");
        let previous = ids.insert(case, id.clone());
        assert!(previous.is_none_or(|p| p == id), "case {case} acknowledged as two refunds");
        self.order.lock().expect("lock").entry(case).or_insert(ids.len());
        self.count.store(ids.len(), Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_and_faulty_servers_lose_nothing_and_pay_nothing_twice() {
    let refunds = env_or("CHAOS_REFUNDS", 1000) as usize;
    let kills = env_or("CHAOS_KILLS", 30) as usize;
    let seed = env_or("CHAOS_SEED", refund_agent::clock::now_ms() as u64);
    println!("chaos: {refunds} refunds, {kills} kills, CHAOS_SEED={seed}");
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);

    // The three servers, each knowing every original sale.
    let fp = FinalPosSandbox::start(API_KEY).await.expect("Final POS sandbox");
    let gw = GatewaySandbox::start(GATEWAY_TOKEN).await.expect("gateway sandbox");
    let olive = OliveSandbox::start(OLIVE_KEY_ID, OLIVE_SECRET.as_bytes()).await.expect("Olive sandbox");
    let with_terminal = env_or("CHAOS_TERMINAL", 1) != 0;
    let cases: Vec<Case> = (0..refunds).map(|i| Case::new(i, with_terminal)).collect();
    for c in &cases {
        if c.olive {
            olive.add_transaction(&c.transaction_id, Decimal::new(10_000, 2));
        } else {
            gw.add_payment(&c.payment_id, Decimal::new(10_000, 2), Decimal::new(9_000, 2));
        }
    }

    let mut agent = Agent::new(&fp.url(), "");
    let link = agent.dir.path().join("terminal");
    let extra = format!(
        r#"
[destinations.gateway]
kind = "gateway"
base_url = "{gw}"
token_file = "gateway.token"
terminal_id = 24

[destinations.olive]
kind = "olive"
base_url = "{olive}"
api_key_id = "{OLIVE_KEY_ID}"
hmac_secret_file = "olive.secret"

[[routes]]
processor = "olive"
destinations = ["olive", "finalpos"]

[[routes]]
processor = "*"
destinations = ["gateway", "finalpos"]

[limits]
max_pending_total = "1000000.00"
max_queue_len = 1000000

[terminal]
device = "{link}"
baud = 115200
framing = "ndjson"
"#,
        gw = gw.url(),
        olive = olive.url(),
        link = link.display(),
    );
    let config = std::fs::read_to_string(&agent.config).expect("config");
    std::fs::write(&agent.config, config + &extra).expect("config");
    agent.write_secret("gateway.token", GATEWAY_TOKEN);
    agent.write_secret("olive.secret", OLIVE_SECRET);
    let pty = Arc::new(Pty::plug(&link));
    let till_clock = Arc::new(TillClock::new(agent.dir.path().join("clock-skew")));
    // The environment goes to the killer task with the agent, so it lives as long as the test.
    let skew_file: &'static str = Box::leak(till_clock.path.display().to_string().into_boxed_str());
    let env = [
        ("REFUND_AGENT__SYNC__REQUEST_TIMEOUT", REQUEST_TIMEOUT),
        // Olive refuses every signature while the clock is off by more than a day: keep the
        // backoff those refusals build short, so the queue drains soon after the clock is right.
        ("REFUND_AGENT__SYNC__BACKOFF_MAX", "10s"),
        ("REFUND_AGENT__AGENT__RETENTION", "24h"),
        ("REFUND_AGENT__LIMITS__MAX_PENDING_AGE", "12h"),
        ("REFUND_AGENT_TEST_CLOCK_SKEW_FILE", skew_file),
    ];
    agent.start_with_env(&env).await;
    let jumper = {
        let (clock, mut rng) = (till_clock.clone(), StdRng::seed_from_u64(rng.random()));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(rng.random_range(100..1500))).await;
                if !clock.jump_while_running(&mut rng).await {
                    break;
                }
            }
        })
    };

    let elsewhere = RedirectTarget::start().await.expect("redirect target");
    let mix = FaultMix { redirect_to: Some(elsewhere.addr()), ..MIX };
    fp.inject_randomly(rng.random(), Some(mix));
    gw.inject_randomly(rng.random(), Some(mix));
    olive.inject_randomly(rng.random(), Some(mix));

    // Every restart bumps the generation: the terminal resends what got no answer.
    let (generation_tx, generation) = watch::channel(0u64);
    let acks = Arc::new(Acks::default());
    // Raised as a restore begins (the agent stopped): a sale acknowledged before may be gone.
    let restores_begun = Arc::new(AtomicUsize::new(0));
    let receipts_again = Arc::new(AtomicUsize::new(0));
    let socket = agent.socket.clone();

    // API clients: four kiosk screens, each with its share of the cases.
    let api_cases: Vec<usize> = (0..refunds).filter(|i| !cases[*i].terminal).collect();
    let terminal_cases: Vec<usize> = (0..refunds).filter(|i| cases[*i].terminal).collect();
    let mut producers = Vec::new();
    for lane in 0..4 {
        let mine: Vec<Case> = api_cases.iter().skip(lane).step_by(4).map(|i| cases[*i].clone()).collect();
        let index: Vec<usize> = api_cases.iter().skip(lane).step_by(4).copied().collect();
        let client = ControlClient::new(&socket);
        let (acks, restores, again) = (acks.clone(), restores_begun.clone(), receipts_again.clone());
        producers.push(tokio::spawn(async move {
            for (i, case) in index.into_iter().zip(mine) {
                let receipt = case.receipt().to_string();
                let body = json!({"receipt_id": case.receipt_id, "amount": "1.00",
                    "reason": "Customer returned item", "operator": "emp_42"})
                .to_string();
                let key = format!("chaos-{i}");
                let created = loop {
                    let restores_before = restores.load(Ordering::SeqCst);
                    until_answered(&client, "/v1/receipts", &receipt, None).await;
                    match until_decided(&client, "/v1/refunds", &body, Some(&key)).await {
                        Ok(created) => break created,
                        // A restore since the receipt was sent may have rolled the sale back:
                        // the kiosk sends the receipt again.
                        Err((422, answer))
                            if answer["code"] == "unknown_sale"
                                && restores.load(Ordering::SeqCst) > restores_before =>
                        {
                            again.fetch_add(1, Ordering::SeqCst);
                        }
                        Err((status, answer)) => panic!("POST /v1/refunds answered {status}: {answer}"),
                    }
                };
                acks.record(i, created["id"].as_str().expect("refund id").to_string());
            }
        }));
    }
    // The terminal: one till, one refund at a time, resending after every restart.
    let terminal_resends = Arc::new(AtomicUsize::new(0));
    {
        let (pty, acks, resends) = (pty.clone(), acks.clone(), terminal_resends.clone());
        let (generation, cases, restores) = (generation.clone(), cases.clone(), restores_begun.clone());
        let again = receipts_again.clone();
        producers.push(tokio::spawn(async move {
            let mut terminal = Terminal { pty, generation, next_seq: 1, parsed: 0, replies: HashMap::new() };
            for i in terminal_cases {
                let case = &cases[i];
                let mut receipt = case.receipt();
                receipt["type"] = "receipt".into();
                let refund = json!({"type": "refund", "receipt_id": case.receipt_id, "amount": "1.00",
                    "reason": "Customer returned item", "operator": "emp_42", "request_id": format!("term-{i}")});
                let reply = loop {
                    let restores_before = restores.load(Ordering::SeqCst);
                    if let Err(nak) = terminal.ask(receipt.clone(), &resends).await {
                        panic!("the terminal's receipt was refused: {nak}");
                    }
                    match terminal.ask(refund.clone(), &resends).await {
                        Ok(ack) => break ack,
                        // As the kiosk does: the sale may have been rolled back by a restore.
                        Err(nak)
                            if nak["code"] == "unknown_sale"
                                && restores.load(Ordering::SeqCst) > restores_before =>
                        {
                            again.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(nak) => panic!("the terminal's refund was refused: {nak}"),
                    }
                };
                acks.record(i, reply["refund_id"].as_str().expect("refund_id in the ack").to_string());
            }
        }));
    }

    // The killer: kills spread over the creation of the refunds (at random acknowledged counts),
    // a few more while the queue drains; at some of them a backup first, or a restore after.
    let mut thresholds: Vec<usize> = (0..kills).map(|_| rng.random_range(1..refunds.max(2))).collect();
    thresholds.sort_unstable();
    let drain_kills = (kills / 6).max(3);
    let (backup_at, restore_at) = backup_plan(kills + drain_kills, (kills / 10).max(1), &mut rng);
    let mut restarter = Restarter {
        agent,
        env,
        clock: till_clock.clone(),
        rng: StdRng::seed_from_u64(rng.random()),
        generation_tx,
        acks: acks.clone(),
        restores_begun: restores_begun.clone(),
        backup_at,
        restore_at,
        killed: 0,
        backups: Vec::new(),
        restores: Vec::new(),
    };
    let killer = {
        let acks = acks.clone();
        tokio::spawn(async move {
            for threshold in thresholds {
                eventually("the refunds to progress", DEADLINE * 4, || {
                    let n = acks.count.load(Ordering::SeqCst);
                    async move { (n >= threshold).then_some(()) }
                })
                .await;
                // A random moment within the next few milliseconds of work.
                restarter.kill_and_restart(0..30).await;
            }
            restarter
        })
    };
    for p in producers {
        p.await.expect("producer");
    }
    let mut restarter = killer.await.expect("killer");
    let created_in = started.elapsed();
    // While the queue drains: more kills at random moments, the servers still misbehaving.
    for _ in 0..drain_kills {
        restarter.kill_and_restart(50..400).await;
    }
    let Restarter { agent, killed, backups, restores, .. } = restarter;

    // Calm: no more faults, and the clock is put right (a jump ahead while the agent runs).
    let jumps = till_clock.stop().await;
    jumper.await.expect("clock jumper");
    fp.inject_randomly(0, None);
    gw.inject_randomly(0, None);
    olive.inject_randomly(0, None);
    let acked: HashMap<usize, String> = acks.ids.lock().expect("lock").clone();
    let ack_order: HashMap<usize, usize> = acks.order.lock().expect("lock").clone();
    assert_eq!(acked.len(), refunds, "every request was acknowledged in the end");
    // Each refund a restore rolled back, with how many refunds were acknowledged when the
    // backup it restored began.
    let rolled_back: HashMap<&String, usize> =
        restores.iter().flat_map(|r| r.rolled_back.iter().map(move |id| (id, r.acked_before))).collect();
    let remaining = acked.values().filter(|id| !rolled_back.contains_key(id)).count();
    eventually("every refund to settle", settle_limit(refunds), || async {
        let answer = agent.client().request("GET", "/v1/status", None, &[]).await.ok()?;
        let status: Value = serde_json::from_slice(&answer.body).ok()?;
        let count = |state: &str| status["queue"]["refunds"][state].as_u64().unwrap_or(0) as usize;
        (count("delivered") + count("unknown") + count("failed") >= remaining).then_some(())
    })
    .await;
    let views: HashMap<String, RefundView> =
        list_all(&agent.client()).await.expect("list").into_iter().map(|r| (r.id.clone(), r)).collect();

    // The verdict.
    let mut lost = Vec::new();
    let mut duplicated = Vec::new();
    let mut resent_after_unknown = Vec::new();
    let mut undelivered = Vec::new();
    let (mut delivered, mut unknown, mut failed) = (0, 0, 0);
    // Acknowledged refunds a restore rolled back, and how many of those had been paid.
    let (mut rolled_back_acked, mut rolled_back_paid) = (0, 0);
    // A delivery a restore marked `unknown` or `pending` again, and not tried since.
    let by_restore = |d: &refund_agent::queue::DeliveryView| {
        d.last_error.as_deref().is_some_and(|e| e.starts_with("restored from a backup"))
    };
    let redirected = |f: &Option<Fault>| matches!(f, Some(Fault::Redirect(_)));
    // An answer that says nothing was processed: a fault that refuses before processing, or the
    // server's own refusal (Olive's 401 for a signature made while the clock was off). A fault
    // meant for after the commit never strikes a request the server refused: the refusal is
    // what the agent got.
    let definite = |f: &Option<Fault>, status: u16| match f {
        None
        | Some(Fault::CommitThenHang | Fault::CommitThenDrop | Fault::CommitThenStatus(_) | Fault::Drip) => {
            status >= 400
        }
        Some(f) => !f.is_ambiguous(),
    };
    let fp_seen = fp.seen();
    let gw_seen = gw.seen();
    let olive_seen = olive.seen();
    let fp_refunds = fp.refunds();
    let gw_refunds = gw.refunds();
    let olive_refunds = olive.refunds();
    let acked_ids: HashSet<&String> = acked.values().collect();
    let acked_txns: HashSet<&str> =
        acked.keys().filter(|i| cases[**i].olive).map(|i| cases[*i].transaction_id.as_str()).collect();

    for (i, id) in &acked {
        let case = &cases[*i];
        let (processed, requests, last_redirected, trail): (usize, Vec<bool>, bool, Vec<String>) = if case
            .olive
        {
            let mine: Vec<_> = olive_seen
                .iter()
                .filter(|s| s.original_transaction_id.as_deref() == Some(&case.transaction_id))
                .collect();
            let processed = olive_refunds
                .iter()
                .filter(|r| r["original_transaction_id"].as_str() == Some(&case.transaction_id))
                .count();
            let last = mine.last().is_some_and(|s| redirected(&s.fault));
            let trail = mine.iter().map(|s| format!("{} {:?} {:?}", s.status, s.code, s.fault)).collect();
            (processed, mine.iter().map(|s| definite(&s.fault, s.status)).collect(), last, trail)
        } else {
            let mine: Vec<_> = gw_seen.iter().filter(|s| s.payment_id == case.payment_id).collect();
            let processed = gw_refunds
                .iter()
                .filter(|r| r["parent"]["id"].as_u64() == case.payment_id.parse().ok())
                .count();
            let last = mine.last().is_some_and(|s| redirected(&s.fault));
            let trail = mine.iter().map(|s| format!("{} {:?} {:?}", s.status, s.outcome, s.fault)).collect();
            (processed, mine.iter().map(|s| definite(&s.fault, s.status)).collect(), last, trail)
        };
        if processed > 1 {
            duplicated.push(format!("{id} processed {processed} times at {}", case.first_destination()));
        }
        let Some(view) = views.get(id) else {
            // Rolled back by a restore is expected only when acknowledged after the restored
            // backup began; anything else is lost.
            match rolled_back.get(id) {
                Some(before) if ack_order[i] > *before => {
                    rolled_back_acked += 1;
                    rolled_back_paid += usize::from(processed == 1);
                }
                _ => lost.push(id.clone()),
            }
            continue;
        };
        assert_eq!(view.receipt_id.as_deref(), Some(case.receipt_id.as_str()), "{view:?}");
        match view.state.as_str() {
            "delivered" => delivered += 1,
            "failed" => failed += 1,
            _ => unknown += 1,
        }
        // The first destination moves money and does not deduplicate.
        let first = &view.deliveries[0];
        assert_eq!(first.destination, case.first_destination(), "{view:?}");
        match first.state.as_str() {
            "delivered" if processed == 0 => {
                lost.push(format!("{id} delivered but never processed at {}", first.destination))
            }
            "delivered" => {}
            // A redirect is refused and never followed: a person looks, nothing moved.
            "failed" if last_redirected && processed == 0 => {}
            "unknown" => {
                // Every request but the last was answered with a definite refusal: after the
                // one whose outcome was lost, nothing more was sent. (None at all is possible:
                // killed after claiming the delivery, before sending.)
                let before_last = &requests[..requests.len().saturating_sub(1)];
                if before_last.iter().any(|definite| !definite) {
                    resent_after_unknown.push(format!("{id} at {}: {trail:?}", first.destination));
                }
            }
            other => undelivered.push(format!("{id}: first delivery {other}")),
        }
        // Final POS deduplicates by externalId: it always ends delivered, unless it waits behind
        // an unknown first delivery. A restore sets it pending again even where Final POS
        // already holds the refund (it was delivered after the backup was taken).
        let fp_records = fp_refunds.iter().filter(|r| r["externalId"].as_str() == Some(id)).count();
        let fp_last_redirected = fp_seen
            .iter()
            .rfind(|s| s.external_id.as_deref() == Some(id.as_str()))
            .is_some_and(|s| redirected(&s.fault));
        let second = &view.deliveries[1];
        match (first.state.as_str(), second.state.as_str()) {
            (_, "delivered") if fp_records == 1 => {}
            ("unknown" | "failed", "pending") if fp_records == 0 || by_restore(second) && fp_records == 1 => {
            }
            ("delivered", "failed") if fp_last_redirected && fp_records <= 1 => {}
            (a, b) => undelivered.push(format!("{id}: {a}/{b} with {fp_records} Final POS records")),
        }
    }
    // Nothing unacknowledged went out, and no refund exists that nobody asked for.
    let stray: Vec<String> = fp_seen
        .iter()
        .filter_map(|s| s.external_id.clone())
        .chain(gw_seen.iter().filter_map(|s| s.external_id.clone()))
        // A refund a restore rolled back before it was acknowledged may have gone out once.
        .filter(|e| !acked_ids.contains(e) && !rolled_back.contains_key(e))
        .chain(
            olive_seen
                .iter()
                .filter_map(|s| s.original_transaction_id.clone())
                .filter(|t| !acked_txns.contains(t.as_str())),
        )
        .collect();
    let extra_refunds: Vec<&String> = views.keys().filter(|id| !acked_ids.contains(id)).collect();

    let faults = |seen: Vec<Option<String>>| {
        let mut by_kind: HashMap<String, usize> = HashMap::new();
        for kind in seen.into_iter().flatten() {
            *by_kind.entry(kind).or_default() += 1;
        }
        let mut kinds: Vec<_> = by_kind.into_iter().collect();
        kinds.sort();
        kinds.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
    };
    let kind = |f: &refund_agent::sandbox::Fault| format!("{f:?}");
    println!("chaos report (seed {seed}):");
    println!(
        "  refunds acknowledged: {} ({} by API, {} by terminal, {} terminal resends)",
        acked.len(),
        api_cases.len(),
        refunds - api_cases.len(),
        terminal_resends.load(Ordering::SeqCst)
    );
    println!("  kill -9: {killed} ({} while creating, {drain_kills} while draining); created in {:.1?}, settled after {:.1?}",
        killed - drain_kills, created_in, started.elapsed());
    println!(
        "  requests seen: Final POS {}, gateway {}, Olive {}",
        fp_seen.len(),
        gw_seen.len(),
        olive_seen.len()
    );
    println!(
        "  faults: Final POS [{}]",
        faults(fp_seen.iter().map(|s| s.fault.as_ref().map(kind)).collect())
    );
    println!("          gateway [{}]", faults(gw_seen.iter().map(|s| s.fault.as_ref().map(kind)).collect()));
    println!("          Olive [{}]", faults(olive_seen.iter().map(|s| s.fault.as_ref().map(kind)).collect()));
    println!(
        "  clock jumps: {} while running (30 days back to 60 days ahead), {} at restarts (back, {} days behind at the end)",
        jumps.live,
        jumps.at_restart,
        -jumps.restart_skew_ms / DAY_MS
    );
    let sent_elsewhere = elsewhere.arrived();
    println!("  delivered everywhere: {delivered}; unknown (outcome lost at a destination that does not deduplicate, not resent): {unknown}; failed (a redirect refused): {failed}");
    let restored_unknown: u64 = restores.iter().map(|r| r.unknown).sum();
    let restored_pending: u64 = restores.iter().map(|r| r.pending).sum();
    println!("  backups: {} (agent running); restores: {} (agent stopped): {restored_unknown} deliveries made unknown, {restored_pending} pending again; {} receipts sent again",
        backups.len(), restores.len(), receipts_again.load(Ordering::SeqCst));
    println!("  rolled back by a restore: {rolled_back_acked} (acknowledged after the backup began; {rolled_back_paid} of them paid once), {} never acknowledged",
        rolled_back.keys().filter(|id| !acked_ids.contains(*id)).count());
    println!("  paid twice: {}", duplicated.len());
    println!("  sent to another host: {}", sent_elsewhere.len());
    println!("  lost: {}; duplicated: {}; resent after unknown: {}; sent but never acknowledged: {}; unexpected states: {}",
        lost.len(), duplicated.len(), resent_after_unknown.len(), stray.len() + extra_refunds.len(), undelivered.len());

    assert!(killed >= kills, "only {killed} kills");
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(duplicated.is_empty(), "paid twice: {duplicated:?}");
    assert!(sent_elsewhere.is_empty(), "sent to another host: {sent_elsewhere:?}");
    assert!(resent_after_unknown.is_empty(), "resent after an unknown outcome: {resent_after_unknown:?}");
    assert!(stray.is_empty() && extra_refunds.is_empty(), "never acknowledged: {stray:?} {extra_refunds:?}");
    assert!(undelivered.is_empty(), "unexpected states: {undelivered:?}");
    assert_eq!(views.len(), refunds - rolled_back_acked, "exactly one refund per request");
}

/// The kills at which a backup is taken just before (the agent running), and those after which
/// the latest backup is restored (the agent stopped): `pairs` pairs spread over `total` kills,
/// each restore one or two kills after its backup and before the next backup.
fn backup_plan(total: usize, pairs: usize, rng: &mut StdRng) -> (HashSet<usize>, HashSet<usize>) {
    let pairs = pairs.min(total / 2);
    let (mut backups, mut restores) = (HashSet::new(), HashSet::new());
    if pairs == 0 {
        return (backups, restores);
    }
    let span = total / pairs;
    for start in (0..pairs).map(|p| p * span) {
        let backup = rng.random_range(start..start + span - 1);
        backups.insert(backup);
        restores.insert(rng.random_range(backup + 1..=(backup + 2).min(start + span - 1)));
    }
    (backups, restores)
}

/// A backup taken while the agent ran.
struct Backup {
    path: std::path::PathBuf,
    /// How many refunds had been acknowledged when the backup began: all of them are in it.
    acked_before: usize,
}

/// What a restore rolled back and marked.
struct Restore {
    /// The restored backup's `acked_before`: a refund acknowledged later may be rolled back.
    acked_before: usize,
    /// Refunds in the queue the restore replaced and not in the queue it put in place.
    rolled_back: HashSet<String>,
    unknown: u64,
    pending: u64,
}

/// Kills and restarts the agent, taking and restoring backups as planned.
struct Restarter {
    agent: Agent,
    env: [(&'static str, &'static str); 5],
    clock: Arc<TillClock>,
    rng: StdRng,
    /// Every restart bumps it: the terminal resends what got no answer.
    generation_tx: watch::Sender<u64>,
    acks: Arc<Acks>,
    restores_begun: Arc<AtomicUsize>,
    backup_at: HashSet<usize>,
    restore_at: HashSet<usize>,
    killed: usize,
    backups: Vec<Backup>,
    restores: Vec<Restore>,
}

impl Restarter {
    /// A backup first if one is planned for this kill, then `kill -9` after a random number of
    /// milliseconds in `delay_ms`, a restore if one is planned, and a restart.
    async fn kill_and_restart(&mut self, delay_ms: std::ops::Range<u64>) {
        if self.backup_at.contains(&self.killed) {
            self.backup().await;
        }
        tokio::time::sleep(Duration::from_millis(self.rng.random_range(delay_ms))).await;
        self.agent.kill9().await;
        if self.restore_at.contains(&self.killed) {
            self.restore().await;
        }
        self.clock.restart(&mut self.agent, &self.env, &mut self.rng).await;
        self.killed += 1;
        self.generation_tx.send_modify(|g| *g += 1);
    }

    /// The CLI as the till runs it: the agent's config, environment and clock.
    async fn cli(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(BIN)
            .arg("--config")
            .arg(&self.agent.config)
            .args(args)
            .env("REFUND_AGENT__LIMITS__MANAGERS_FILE", "managers")
            .envs(self.env)
            .output()
            .await
            .expect("run the CLI")
    }

    async fn backup(&mut self) {
        let path = self.agent.dir.path().join(format!("backup-{}.db", self.backups.len()));
        let acked_before = self.acks.count.load(Ordering::SeqCst);
        let out = self.cli(&["backup", path_str(&path)]).await;
        assert!(out.status.success(), "backup while running: {}", stderr(&out));
        self.backups.push(Backup { path, acked_before });
    }

    async fn restore(&mut self) {
        let backup = self.backups.last().expect("every restore is planned after a backup");
        self.restores_begun.fetch_add(1, Ordering::SeqCst);
        // Every other restore follows a lost disk: the queue is gone and the copy is all there
        // is. The others restore over the intact queue, which must then be kept.
        let db = self.agent.db_path();
        let lost = self.restores.len() % 2 == 1;
        let replaced_at = if lost {
            let aside = db.with_file_name(format!("lost-{}.db", self.restores.len()));
            for side in ["", "-wal", "-shm"] {
                let from = db.with_file_name(format!("queue.db{side}"));
                if from.exists() {
                    let to = aside.with_file_name(format!("lost-{}.db{side}", self.restores.len()));
                    std::fs::rename(&from, to).expect("move the queue aside");
                }
            }
            aside
        } else {
            db.with_file_name("queue.db.pre-restore")
        };
        let out = self.cli(&["restore", path_str(&backup.path)]).await;
        assert!(out.status.success(), "restore: {}", stderr(&out));
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        let count = |tail: &str| -> u64 {
            let line =
                said.lines().find(|l| l.contains(tail)).unwrap_or_else(|| panic!("{tail:?} in {said}"));
            line.split_whitespace().find_map(|n| n.parse().ok()).expect("a count")
        };
        let replaced = refund_ids(&replaced_at);
        let copied = refund_ids(&backup.path);
        let restored = refund_ids(&db);
        // Refund rows are never deleted (nothing is old enough to purge): the queue the restore
        // replaced grew from this backup.
        let gone: Vec<&String> = copied.difference(&replaced).collect();
        assert!(gone.is_empty(), "refunds in the backup missing from the queue it replaced: {gone:?}");
        if lost {
            assert_eq!(restored, copied, "with the queue lost, the copy is what there is");
        } else {
            assert!(said.contains("intact and current"), "{said}");
            assert_eq!(count("refund(s) only the copy knew"), 0, "the copy grew into the queue: {said}");
            assert_eq!(restored, replaced, "a restore over the current queue keeps every refund");
        }
        self.restores.push(Restore {
            acked_before: backup.acked_before,
            rolled_back: replaced.difference(&restored).cloned().collect(),
            unknown: count("deliveries are now unknown"),
            pending: count("deliveries set back to pending"),
        });
    }
}

/// The ids of the refunds in a queue file, read as SQLite holds them.
fn refund_ids(path: &std::path::Path) -> HashSet<String> {
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut stmt = conn.prepare("SELECT id FROM refunds").expect("refunds table");
    let ids = stmt.query_map([], |r| r.get(0)).expect("refund ids");
    ids.collect::<Result<_, _>>().expect("refund ids")
}

const DAY_MS: i64 = 86_400_000;
/// Where a running agent's clock may jump: back 30 days to ahead 60 days.
const LIVE_JUMPS_MS: [i64; 9] =
    [-30 * DAY_MS, -6 * 3_600_000, -3_600_000, -300_000, 0, 300_000, 3_600_000, 6 * 3_600_000, 60 * DAY_MS];
/// How far back the clock may go between a kill and the next start.
const RESTART_STEPS_MS: [i64; 6] = [0, 0, 0, 60_000, 6 * 3_600_000, 30 * DAY_MS];

/// The till's wall clock: the offset file the agent's clock hook reads on every call.
struct TillClock {
    path: std::path::PathBuf,
    jumps: AsyncMutex<Jumps>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Jumps {
    live: usize,
    at_restart: usize,
    /// The offset of the latest start; a start never reads later than an earlier one.
    restart_skew_ms: i64,
    stopped: bool,
}

impl TillClock {
    fn new(path: std::path::PathBuf) -> TillClock {
        std::fs::write(&path, "0").expect("clock skew file");
        TillClock { path, jumps: AsyncMutex::new(Jumps::default()) }
    }

    fn set(&self, offset_ms: i64) {
        // Written in place: the agent reads the file on every clock call, and a missing file
        // reads as no offset, a jump of its own.
        std::fs::write(&self.path, offset_ms.to_string()).expect("clock skew file");
    }

    /// One jump while the agent runs; false once the clock has been put right for good.
    async fn jump_while_running(&self, rng: &mut StdRng) -> bool {
        let mut jumps = self.jumps.lock().await;
        if jumps.stopped {
            return false;
        }
        self.set(LIVE_JUMPS_MS[rng.random_range(0..LIVE_JUMPS_MS.len())]);
        jumps.live += 1;
        true
    }

    /// Starts the agent after a kill, the clock set back by a random step (often none). Holds
    /// the clock still until the agent is up, so its start reads the restart's offset.
    async fn restart(&self, agent: &mut Agent, env: &[(&str, &str)], rng: &mut StdRng) {
        let mut jumps = self.jumps.lock().await;
        let step = RESTART_STEPS_MS[rng.random_range(0..RESTART_STEPS_MS.len())];
        jumps.restart_skew_ms -= step;
        jumps.at_restart += usize::from(step != 0);
        self.set(jumps.restart_skew_ms);
        agent.start_with_env(env).await;
    }

    /// Puts the clock right and stops the jumps.
    async fn stop(&self) -> Jumps {
        let mut jumps = self.jumps.lock().await;
        jumps.stopped = true;
        self.set(0);
        *jumps
    }
}

/// POSTs `body` until the agent answers 200 or 201, through kills and restarts; the same
/// idempotency key every time. Any other answer fails the test.
async fn until_answered(client: &ControlClient, path: &str, body: &str, key: Option<&str>) -> Value {
    match until_decided(client, path, body, key).await {
        Ok(answer) => answer,
        Err((status, answer)) => panic!("POST {path} answered {status}: {answer}"),
    }
}

/// POSTs `body` until the agent answers at all, through kills and restarts; the same
/// idempotency key every time. `Err` holds a refusal's status and body.
async fn until_decided(
    client: &ControlClient,
    path: &str,
    body: &str,
    key: Option<&str>,
) -> Result<Value, (u16, Value)> {
    let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
    eventually(&format!("an answer to POST {path}"), DEADLINE * 4, || async {
        let answer = client.request("POST", path, Some(body.as_bytes().to_vec()), &headers).await.ok()?;
        let json: Value = serde_json::from_slice(&answer.body)
            .unwrap_or_else(|_| String::from_utf8_lossy(&answer.body).into_owned().into());
        Some(if answer.status == 200 || answer.status == 201 { Ok(json) } else { Err((answer.status, json)) })
    })
    .await
}

/// Every refund the agent holds, or `None` while it is restarting.
async fn list_all(client: &ControlClient) -> Option<Vec<RefundView>> {
    let answer = client.request("GET", "/v1/refunds?limit=100000", None, &[]).await.ok()?;
    (answer.status == 200).then(|| serde_json::from_slice(&answer.body).expect("list JSON"))
}

/// The till's side of the line: numbered frames, replies matched by `seq`.
struct Terminal {
    pty: Arc<Pty>,
    generation: watch::Receiver<u64>,
    next_seq: i64,
    parsed: usize,
    replies: HashMap<i64, Value>,
}

impl Terminal {
    /// Sends `event` and returns its `ack` (or, as `Err`, its `nak`), resending (with a new
    /// `seq`) whenever the agent was restarted before answering.
    async fn ask(&mut self, event: Value, resends: &AtomicUsize) -> Result<Value, Value> {
        let limit = Instant::now() + DEADLINE * 4;
        loop {
            let seq = self.next_seq;
            self.next_seq += 1;
            let mut frame = event.clone();
            frame["seq"] = seq.into();
            self.pty.write(format!("{frame}\n").as_bytes());
            let sent_in = *self.generation.borrow_and_update();
            loop {
                self.read_replies();
                if let Some(reply) = self.replies.remove(&seq) {
                    return match reply["type"].as_str() {
                        Some("ack") => Ok(reply),
                        Some("nak") => Err(reply),
                        _ => panic!("not a reply: {reply} for {frame}"),
                    };
                }
                assert!(Instant::now() < limit, "no answer to {frame}");
                if *self.generation.borrow() != sent_in {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(10), self.generation.changed()).await;
            }
            resends.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn read_replies(&mut self) {
        let bytes = self.pty.received();
        while let Some(end) = bytes[self.parsed..].iter().position(|b| *b == b'\n') {
            let line = &bytes[self.parsed..self.parsed + end];
            self.parsed += end + 1;
            if let Ok(v) = serde_json::from_slice::<Value>(line) {
                if let Some(seq) = v["seq"].as_i64() {
                    self.replies.insert(seq, v);
                }
            }
        }
    }
}
