//! Reconnect to first delivery: a refund waits while its destination is unreachable, long enough
//! for its backoff to grow (production settings: 1 s doubling to 5 min); then the destination
//! comes back and the time until the refund is delivered is measured. The agent notices the
//! return through its TCP probe (every 0.5–1.5 × `PROBE_INTERVAL`, at random), not the refund's
//! backoff, with `sync.return_jitter` at 0 s (the benchmarks' config) so the probe alone is measured, so the
//! **limit** it is compared against is that interval; the floor is what one plain HTTP request to
//! the same server takes.
//!
//! Run: `cargo bench --bench reconnect` (env `BENCH_TRIALS`, default 8). About 10 s a trial.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::{Json, Router};
use common::{start_agent, write_config};
use refund_agent::control::client::ControlClient;
use refund_agent::sandbox::server::Switchable;
use refund_agent::sync::worker::PROBE_INTERVAL;
use serde_json::{json, Value};

fn main() {
    let trials: usize = std::env::var("BENCH_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(run(trials));
}

async fn approve(Json(body): Json<Value>) -> Json<Value> {
    Json(json!({"id": 1, "amount": body["amount"], "status": {"status": "Approved", "reason": null}}))
}

async fn status(client: &ControlClient) -> Value {
    let a = client.request("GET", "/v1/status", None, &[]).await.expect("status");
    serde_json::from_slice(&a.body).expect("status JSON")
}

async fn run(trials: usize) {
    let app = Router::new().route("/payment/{id}/refund", post(approve));
    let server = Switchable::start(app, Arc::default()).await.expect("server");
    let floor = one_request(&server.url()).await;
    server.go_offline().await;

    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), &server.url(), ("1s", "5m"));
    let (mut agent, client) = start_agent(dir.path(), &config).await;
    let receipt = json!({"receipt_id": "R", "transaction_id": "T", "currency": "USD", "total": "1000.00",
        "subtotal": "1000.00", "processor": "gateway", "processor_payment_id": "882"});
    client
        .request("POST", "/v1/receipts", Some(receipt.to_string().into_bytes()), &[])
        .await
        .expect("receipt");

    let mut times = Vec::new();
    for trial in 0..trials {
        let body = json!({"receipt_id": "R", "amount": "0.01", "reason": "bench", "operator": "b"});
        let key = format!("reconnect-{trial}");
        let a = client
            .request("POST", "/v1/refunds", Some(body.to_string().into_bytes()), &[("idempotency-key", &key)])
            .await
            .expect("create");
        assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
        // Offline until the refund has failed three times (1 s + 2 s of backoff, so its next
        // attempt is 4 s away), plus a varying part of a probe interval.
        let created: Value = serde_json::from_slice(&a.body).expect("refund JSON");
        let path = format!("/v1/refunds/{}", created["id"].as_str().expect("id"));
        loop {
            let a = client.request("GET", &path, None, &[]).await.expect("refund");
            let r: Value = serde_json::from_slice(&a.body).expect("refund JSON");
            if r["deliveries"][0]["attempts"].as_i64().unwrap_or(0) >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(PROBE_INTERVAL * (trial as u32 % 4) / 4).await;
        server.go_online().await.expect("online");
        let back = Instant::now();
        loop {
            let s = status(&client).await;
            if s["queue"]["refunds"]["delivered"].as_u64() == Some(trial as u64 + 1) {
                break;
            }
            assert!(back.elapsed() < Duration::from_secs(60), "not delivered: {s}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        times.push(back.elapsed());
        server.go_offline().await;
    }
    let _ = agent.start_kill();
    let _ = agent.wait().await;

    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mean = times.iter().map(|d| ms(*d)).sum::<f64>() / times.len() as f64;
    let worst = times.last().copied().unwrap_or_default();
    // The longest wait between two probes: they are spread over 0.5–1.5 × the interval.
    let limit = PROBE_INTERVAL.mul_f64(1.5);
    println!("| trials | min (ms) | mean (ms) | max (ms) | limit: longest probe wait (ms) | max vs limit | one plain request (ms) |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {trials} | {:.0} | {mean:.0} | {:.0} | {:.0} | {:.0}% | {:.2} |",
        ms(times[0]),
        ms(worst),
        ms(limit),
        100.0 * ms(worst) / ms(limit),
        ms(floor)
    );
}

/// One request from a fresh plain client (connect included).
async fn one_request(url: &str) -> Duration {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let start = Instant::now();
    let r = client
        .post(format!("{url}/payment/882/refund"))
        .header("content-type", "application/json")
        .body(json!({"amount": "0.01", "terminal": {"id": 24}}).to_string())
        .send()
        .await
        .expect("send");
    let _ = r.bytes().await;
    start.elapsed()
}
