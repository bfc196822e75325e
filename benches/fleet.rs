//! A store's network comes back: many tills, each with refunds queued during the outage, reach
//! one cloud endpoint. Without jitter they send in step, in the seconds after their probes
//! notice the return; with `sync.return_jitter` each till waits a random part of it first.
//! Reports, per setting, the peak requests per second the cloud sees (the busiest 1 s and the
//! busiest 100 ms, scaled to a second) and the time from the return until every refund is
//! delivered. The probes are spread (0.5–1.5 × `PROBE_INTERVAL`) in both settings.
//!
//! Run: `cargo bench --bench fleet` (env `BENCH_AGENTS`, default 50; `BENCH_REFUNDS` per agent,
//! default 20). Each agent is the real release binary with its own state directory.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use common::{write_config, BIN};
use refund_agent::control::client::ControlClient;
use refund_agent::sandbox::server::Switchable;
use serde_json::{json, Value};

type Arrivals = Arc<Mutex<Vec<Instant>>>;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let agents = env("BENCH_AGENTS", 50);
    let refunds = env("BENCH_REFUNDS", 20);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    println!("| return_jitter | tills × refunds | peak req/s (busiest 1 s) | peak req/s (busiest 100 ms × 10) | return → all delivered |");
    println!("|---|---|---|---|---|");
    for jitter in ["0s", "5s"] {
        let r = rt.block_on(run(agents, refunds, jitter));
        println!(
            "| {jitter} | {agents} × {refunds} | {} | {} | {:.1} s |",
            r.peak_1s,
            r.peak_100ms * 10,
            r.drained.as_secs_f64()
        );
    }
}

struct Outcome {
    peak_1s: usize,
    peak_100ms: usize,
    drained: Duration,
}

async fn approve(State(arrivals): State<Arrivals>, Json(body): Json<Value>) -> Json<Value> {
    arrivals.lock().expect("arrivals").push(Instant::now());
    Json(json!({"id": 1, "amount": body["amount"], "status": {"status": "Approved", "reason": null}}))
}

/// The most arrivals within any window of `width`.
fn peak(times: &[Instant], width: Duration) -> usize {
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= width {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

async fn status(client: &ControlClient) -> Option<Value> {
    let a = client.request("GET", "/v1/status", None, &[]).await.ok()?;
    serde_json::from_slice(&a.body).ok()
}

async fn run(agents: usize, refunds: usize, jitter: &str) -> Outcome {
    let arrivals: Arrivals = Arc::default();
    let app = Router::new().route("/payment/{id}/refund", post(approve)).with_state(arrivals.clone());
    let server = Switchable::start(app, Arc::default()).await.expect("server");
    server.go_offline().await;

    let mut tills = Vec::new();
    for i in 0..agents {
        let dir = tempfile::tempdir().expect("temp dir");
        let config: PathBuf = write_config(dir.path(), &server.url(), ("1s", "5m"));
        let child = tokio::process::Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env("RUST_LOG", "error")
            .env("REFUND_AGENT__SYNC__RETURN_JITTER", jitter)
            .env("REFUND_AGENT__AGENT__TERMINAL_ID", format!("till-{i:03}"))
            .kill_on_drop(true)
            .spawn()
            .expect("agent");
        let client = ControlClient::new(&dir.path().join("control.sock"));
        tills.push((dir, child, client));
    }
    for (_, _, client) in &tills {
        while client.request("GET", "/healthz", None, &[]).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let receipt = json!({"receipt_id": "R", "transaction_id": "T", "currency": "USD", "total": "1000.00",
            "subtotal": "1000.00", "processor": "gateway", "processor_payment_id": "882"});
        client
            .request("POST", "/v1/receipts", Some(receipt.to_string().into_bytes()), &[])
            .await
            .expect("receipt");
        for n in 0..refunds {
            let body = json!({"receipt_id": "R", "amount": "0.01", "reason": "bench", "operator": "b"});
            let key = format!("fleet-{n}");
            client
                .request(
                    "POST",
                    "/v1/refunds",
                    Some(body.to_string().into_bytes()),
                    &[("idempotency-key", &key)],
                )
                .await
                .expect("refund");
        }
    }
    // Every till has found the cloud down (and holds its queue, probing) before it returns.
    for (_, _, client) in &tills {
        loop {
            let down = status(client)
                .await
                .is_some_and(|s| s["destinations"]["gateway"]["connectivity"] == "unreachable");
            if down {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    arrivals.lock().expect("arrivals").clear();
    server.go_online().await.expect("back online");
    let back = Instant::now();
    for (_, _, client) in &tills {
        loop {
            let done = status(client)
                .await
                .is_some_and(|s| s["queue"]["refunds"]["delivered"].as_u64() == Some(refunds as u64));
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut times = arrivals.lock().expect("arrivals").clone();
    times.sort();
    let drained = times.last().map_or(Duration::ZERO, |t| t.duration_since(back));
    assert_eq!(times.len(), agents * refunds, "each refund reached the cloud once");
    for (_, mut child, _) in tills {
        let _ = child.kill().await;
    }
    Outcome {
        peak_1s: peak(&times, Duration::from_secs(1)),
        peak_100ms: peak(&times, Duration::from_millis(100)),
        drained,
    }
}
