//! Draining a full offline queue: 10,000 queued refunds delivered to a local server that answers
//! in 0 ms and in 20 ms, against the rate a plain HTTP client reaches against the same server
//! with the same concurrency. Also the agent's peak RSS while draining.
//!
//! Run: `cargo bench --bench drain` (env `BENCH_N`, default 10000). The agent is the real release
//! binary in its own process; the server is a card-gateway stand-in in this process.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use refund_agent::control::client::ControlClient;
use refund_agent::sandbox::server::Switchable;
use refund_agent::sync::worker::MAX_IN_FLIGHT_PER_DESTINATION as IN_FLIGHT;
use serde_json::{json, Value};
use tokio::sync::Notify;

mod common;

use common::{start_agent, write_config};

fn main() {
    let n: usize = std::env::var("BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    println!(
        "| server latency | refunds | agent drain (/s) | plain client (/s) | ratio | agent peak RSS (MiB) |"
    );
    println!("|---|---|---|---|---|---|");
    for latency in [Duration::ZERO, Duration::from_millis(20)] {
        rt.block_on(run(n, latency));
    }
}

/// What the stand-in server shares with the bench: its answer delay, and how many refunds it
/// has answered (so the bench asks the agent's status only once all of them were answered: a
/// status poll runs on the queue owner's thread, and polling all along would slow the drain it
/// measures).
#[derive(Clone)]
struct Server {
    latency: Duration,
    answered: Arc<(AtomicUsize, Notify)>,
}

async fn approve(State(server): State<Server>, Json(body): Json<Value>) -> Json<Value> {
    if !server.latency.is_zero() {
        tokio::time::sleep(server.latency).await;
    }
    server.answered.0.fetch_add(1, Ordering::SeqCst);
    server.answered.1.notify_waiters();
    Json(json!({"id": 1, "amount": body["amount"], "status": {"status": "Approved", "reason": null}}))
}

async fn run(n: usize, latency: Duration) {
    let answered: Arc<(AtomicUsize, Notify)> = Arc::default();
    let app = Router::new()
        .route("/payment/{id}/refund", post(approve))
        .with_state(Server { latency, answered: answered.clone() });
    let server = Switchable::start(app, Arc::default()).await.expect("server");
    let raw = plain_client(&server.url(), n.min(5000)).await;
    server.go_offline().await;

    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), &server.url(), ("100ms", "1s"));
    let (mut agent, client) = start_agent(dir.path(), &config).await;
    let pid = agent.id().expect("pid");
    let receipt = json!({"receipt_id": "R", "transaction_id": "T", "currency": "USD", "total": "1000000.00",
        "subtotal": "1000000.00", "processor": "gateway", "processor_payment_id": "882"});
    client
        .request("POST", "/v1/receipts", Some(receipt.to_string().into_bytes()), &[])
        .await
        .expect("receipt");
    enqueue(&client, n).await;

    // The plain client's requests were answered by the same server: count from here.
    let before = answered.0.load(Ordering::SeqCst);
    server.go_online().await.expect("online");
    let start = Instant::now();
    // Every refund answered (a refund answered twice would end this wait early, and the status
    // below would then not show all of them delivered yet)...
    loop {
        let notified = answered.1.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if answered.0.load(Ordering::SeqCst) - before >= n {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(600), "drain stalled");
        let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
    }
    // ...and then every outcome recorded.
    loop {
        let a = client.request("GET", "/v1/status", None, &[]).await.expect("status");
        let s: Value = serde_json::from_slice(&a.body).expect("status JSON");
        if s["queue"]["refunds"]["delivered"].as_u64() == Some(n as u64) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(600), "drain stalled: {s}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let peak = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .unwrap_or(0.0)
        / 1024.0;
    let _ = agent.start_kill();
    let _ = agent.wait().await;
    println!(
        "| {} ms | {n} | {rate:.0} | {raw:.0} | {:.0}% | {peak:.1} |",
        latency.as_millis(),
        100.0 * rate / raw
    );
}

/// What a plain reqwest client reaches against the same server, with the agent's concurrency.
async fn plain_client(url: &str, n: usize) -> f64 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let per = n / IN_FLIGHT;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..IN_FLIGHT {
        let client = client.clone();
        let url = format!("{url}/payment/882/refund");
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let body =
                    json!({"amount": "0.01", "terminal": {"id": 24}, "externalId": format!("{w}-{i}")});
                let r = client
                    .post(&url)
                    .bearer_auth("t")
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .expect("send");
                let _ = r.bytes().await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    (per * IN_FLIGHT) as f64 / start.elapsed().as_secs_f64()
}

async fn enqueue(client: &ControlClient, n: usize) {
    let workers = 16;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(workers) {
                let body = json!({"receipt_id": "R", "amount": "0.01", "reason": "bench", "operator": "b"});
                let key = format!("drain-{i}");
                let a = client
                    .request(
                        "POST",
                        "/v1/refunds",
                        Some(body.to_string().into_bytes()),
                        &[("idempotency-key", &key)],
                    )
                    .await
                    .expect("create");
                assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
            }
        }));
    }
    for t in tasks {
        t.await.expect("enqueue task");
    }
}
