//! Draining a queue keeps each delivery's durability: the server below looks at the queue file
//! (a read-only connection of its own, so it sees only what was committed) at every request
//! that arrives. Every request's delivery must already be `in_flight` on disk, and no more
//! deliveries may be `in_flight` on disk than the worker lets be in flight: a claim that took
//! the slot of a finished delivery must have reached the disk with that delivery's outcome (the
//! two are one transaction) or after it, never before it. A stop, and a destination that
//! fails, end that taking up of slots.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use common::*;
use refund_agent::sandbox::server::Switchable;
use refund_agent::sync::worker::MAX_IN_FLIGHT_PER_DESTINATION;
use serde_json::{json, Value};

/// What the server saw at one request: the refund it was for and every delivery row on disk.
struct Arrival {
    refund_id: String,
    on_disk: HashMap<String, (String, i64)>,
}

#[derive(Clone)]
struct Seen {
    db: PathBuf,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
}

async fn approve(State(seen): State<Seen>, Json(body): Json<Value>) -> Json<Value> {
    let refund_id = body["externalId"].as_str().unwrap_or_default().to_string();
    let conn = rusqlite::Connection::open_with_flags(&seen.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open the queue file");
    let on_disk = conn
        .prepare("SELECT refund_id, state, attempts FROM deliveries")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?.collect::<Result<_, _>>()
        })
        .expect("read the deliveries");
    seen.arrivals.lock().expect("lock").push(Arrival { refund_id, on_disk });
    Json(json!({"id": 1, "amount": body["amount"], "status": {"status": "Approved", "reason": null}}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_leaves_after_its_claim_and_the_outcomes_before_it_are_on_disk() {
    let n = 3 * MAX_IN_FLIGHT_PER_DESTINATION + 3;
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    // The server needs the file's path, and the agent the server's address: a placeholder
    // path is replaced once the agent exists.
    let seen = Arc::new(Mutex::new(None::<Seen>));
    let app = Router::new().route(
        "/payment/{id}/refund",
        post({
            let seen = seen.clone();
            move |body: Json<Value>| {
                let state = seen.lock().expect("lock").clone().expect("set before going online");
                approve(State(state), body)
            }
        }),
    );
    let server = Switchable::start(app, Arc::default()).await.expect("server");
    server.go_offline().await;
    let mut agent = gateway_agent(&server.url(), "t", "");
    *seen.lock().expect("lock") = Some(Seen { db: agent.db_path(), arrivals: arrivals.clone() });
    let ids = queue_while_offline(&mut agent, n, &[]).await;

    server.go_online().await.expect("online");
    for id in &ids {
        agent.wait_state(id, "delivered").await;
    }

    let arrivals = arrivals.lock().expect("lock");
    assert_eq!(arrivals.len(), n, "one request per refund");
    let mut last_attempt: HashMap<&str, i64> = HashMap::new();
    for (k, a) in arrivals.iter().enumerate() {
        let Some((state, attempts)) = a.on_disk.get(&a.refund_id) else {
            panic!("request {k} for {} whose delivery is not on disk", a.refund_id)
        };
        assert_eq!(state, "in_flight", "request {k} left before its claim was committed");
        assert!(last_attempt.insert(&a.refund_id, *attempts).is_none(), "{} sent twice", a.refund_id);
        let in_flight = a.on_disk.values().filter(|(s, _)| s == "in_flight").count();
        assert!(
            in_flight <= MAX_IN_FLIGHT_PER_DESTINATION,
            "request {k}: {in_flight} deliveries in flight on disk; a claim took a slot whose outcome was not stored"
        );
    }
    let first = arrivals[0].on_disk.values().filter(|(s, _)| s == "in_flight").count();
    assert_eq!(first, MAX_IN_FLIGHT_PER_DESTINATION, "the first claims were committed together");
}

/// Starts `agent` parked (after the first failure only the probe sends again, so every refund
/// is due at once when the server returns), with `env` too, and queues `n` refunds of 1.00
/// while its server is offline; returns their ids once every delivery waits, none in flight.
async fn queue_while_offline(agent: &mut Agent, n: usize, env: &[(&str, &str)]) -> Vec<String> {
    let mut all = vec![
        ("REFUND_AGENT__SYNC__BACKOFF_INITIAL", "1000h"),
        ("REFUND_AGENT__SYNC__BACKOFF_MAX", "1000h"),
        ("REFUND_AGENT__SYNC__RETURN_JITTER", "0s"),
    ];
    all.extend_from_slice(env);
    agent.start_with_env(&all).await;
    let receipt = json!({"receipt_id": "R", "transaction_id": "T", "currency": "USD", "total": "1000.00",
        "subtotal": "1000.00", "processor": "gateway", "processor_payment_id": "882"});
    let (status, _) = agent.post_json("/v1/receipts", receipt.to_string().as_bytes(), &[]).await;
    assert!(status < 300, "receipt stored: {status}");
    let mut ids = Vec::new();
    for i in 0..n {
        let body = json!({"receipt_id": "R", "amount": "1.00", "reason": "r", "operator": "o"});
        let key = format!("drain-{i}");
        let (status, created) =
            agent.post_json("/v1/refunds", body.to_string().as_bytes(), &[("idempotency-key", &key)]).await;
        assert_eq!(status, 201, "{created}");
        ids.push(created["id"].as_str().expect("refund id").to_string());
    }
    eventually("every delivery to wait, none in flight", DEADLINE, || async {
        let list = agent.list().await;
        list.iter().all(|r| r.deliveries.iter().all(|d| d.state == "pending")).then_some(())
    })
    .await;
    ids
}

/// A server that holds every request until the test lets it answer.
#[derive(Clone)]
struct Gate {
    arrived: Arc<Mutex<Vec<String>>>,
    answers: Arc<tokio::sync::Semaphore>,
}

/// A gateway stand-in behind a [`Gate`] that lets no answer through yet, offline.
async fn gated_server() -> (Gate, Switchable) {
    let gate = Gate { arrived: Arc::default(), answers: Arc::new(tokio::sync::Semaphore::new(0)) };
    let app = Router::new().route("/payment/{id}/refund", post(approve_when_let)).with_state(gate.clone());
    let server = Switchable::start(app, Arc::default()).await.expect("server");
    server.go_offline().await;
    (gate, server)
}

async fn approve_when_let(State(gate): State<Gate>, Json(body): Json<Value>) -> Json<Value> {
    let refund_id = body["externalId"].as_str().unwrap_or_default().to_string();
    gate.arrived.lock().expect("lock").push(refund_id);
    gate.answers.acquire().await.expect("the gate stays open").forget();
    Json(json!({"id": 1, "amount": body["amount"], "status": {"status": "Approved", "reason": null}}))
}

/// A stop while the queue drains ends claiming at once: the requests in flight finish and
/// their outcomes are stored, but a delivery that ends does not take up the next one, although
/// its outcome and a claim are otherwise stored in one transaction. The rest is sent, each
/// refund once, after the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_draining_sends_nothing_more_than_what_was_in_flight() {
    let n = 2 * MAX_IN_FLIGHT_PER_DESTINATION;
    let (gate, server) = gated_server().await;
    let mut agent = gateway_agent(&server.url(), "t", "");
    let ids = queue_while_offline(&mut agent, n, &[]).await;

    server.go_online().await.expect("online");
    let arrived = |gate: &Gate| gate.arrived.lock().expect("lock").len();
    eventually("a full slot of requests in flight", DEADLINE, || async {
        (arrived(&gate) == MAX_IN_FLIGHT_PER_DESTINATION).then_some(())
    })
    .await;
    let pid = agent.pid().expect("running");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    eventually("the worker to stop claiming", DEADLINE, || async {
        agent.logs().contains("waiting for requests in flight before stopping").then_some(())
    })
    .await;
    gate.answers.add_permits(n);
    let status = agent.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{status}; logs:\n{}", agent.logs());
    assert_eq!(
        arrived(&gate),
        MAX_IN_FLIGHT_PER_DESTINATION,
        "a delivery was sent after the stop; logs:\n{}",
        agent.logs()
    );

    agent.start().await;
    for id in &ids {
        agent.wait_state(id, "delivered").await;
    }
    let mut sent = gate.arrived.lock().expect("lock").clone();
    sent.sort();
    sent.dedup();
    assert_eq!(sent.len(), n, "every refund sent once");
    assert_eq!(arrived(&gate), n, "no refund sent twice");
}

/// A destination that fails is on hold: a delivery whose request failed does not take up the
/// next one, so refunds queued behind it do not each pay for finding the destination down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_does_not_take_up_the_next() {
    let n = 2 * MAX_IN_FLIGHT_PER_DESTINATION;
    let arrived = Arc::new(Mutex::new(0usize));
    let app = Router::new().route(
        "/payment/{id}/refund",
        post({
            let arrived = arrived.clone();
            move || async move {
                *arrived.lock().expect("lock") += 1;
                axum::http::StatusCode::SERVICE_UNAVAILABLE
            }
        }),
    );
    let server = Switchable::start(app, Arc::default()).await.expect("server");
    server.go_offline().await;
    let mut agent = gateway_agent(&server.url(), "t", "");
    queue_while_offline(&mut agent, n, &[]).await;

    server.go_online().await.expect("online");
    eventually("the first requests to arrive", DEADLINE, || async {
        (*arrived.lock().expect("lock") >= MAX_IN_FLIGHT_PER_DESTINATION).then_some(())
    })
    .await;
    // An outcome and a claim that takes its slot are stored together, so once nothing is in
    // flight on disk, no delivery took up another.
    eventually("every failure to be recorded", DEADLINE, || async {
        let list = agent.list().await;
        list.iter().all(|r| r.deliveries.iter().all(|d| d.state != "in_flight")).then_some(())
    })
    .await;
    assert_eq!(*arrived.lock().expect("lock"), MAX_IN_FLIGHT_PER_DESTINATION, "logs:\n{}", agent.logs());
}

/// A refund goes on to its route's next destination as soon as the one before it has its
/// refund, although the task that delivered it does not end (it goes on with the next due
/// delivery to its own destination, in the same slot): the worker is woken for it, rather than
/// finding it at its next idle check (30 s), and it never waits for the first destination's
/// queue to drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_goes_on_to_its_next_destination_while_the_first_drains() {
    let n = 2 * MAX_IN_FLIGHT_PER_DESTINATION;
    let (gate, server) = gated_server().await;
    let fp = refund_agent::sandbox::FinalPosSandbox::start(API_KEY).await.expect("Final POS sandbox");
    let mut agent = gateway_then_finalpos(&server.url(), &fp.url(), "t");
    // Held requests must not time out while the test looks (a timeout ends a task, which
    // wakes the worker too).
    queue_while_offline(&mut agent, n, &[("REFUND_AGENT__SYNC__REQUEST_TIMEOUT", "20s")]).await;

    server.go_online().await.expect("online");
    let arrived = |gate: &Gate| gate.arrived.lock().expect("lock").len();
    eventually("a full slot of requests in flight", DEADLINE, || async {
        (arrived(&gate) == MAX_IN_FLIGHT_PER_DESTINATION).then_some(())
    })
    .await;
    gate.answers.add_permits(1);
    // Well within the request timeout and the worker's idle check.
    let soon = std::time::Duration::from_secs(10);
    let states = |r: &refund_agent::queue::RefundView| -> Vec<String> {
        r.deliveries.iter().map(|d| d.state.clone()).collect()
    };
    eventually("the refund the gateway answered to reach Final POS", soon, || async {
        agent.list().await.iter().any(|r| states(r) == ["delivered", "delivered"]).then_some(())
    })
    .await;
    assert_eq!(
        arrived(&gate),
        MAX_IN_FLIGHT_PER_DESTINATION + 1,
        "the gateway's slots stayed full: its task went on with the next refund"
    );

    gate.answers.add_permits(n);
    eventually("every refund at both destinations", DEADLINE, || async {
        agent.list().await.iter().all(|r| states(r) == ["delivered", "delivered"]).then_some(())
    })
    .await;
    assert_eq!(arrived(&gate), n, "each refund sent to the gateway once");
}
