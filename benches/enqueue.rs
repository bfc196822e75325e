//! Durable enqueue through the control API, against the raw rate of SQLite with the same
//! durability settings (WAL, `synchronous=FULL`, one COMMIT per row) on the same disk.
//!
//! Run: `cargo bench --bench enqueue` (env `BENCH_N` = refunds per run, default 2000;
//! `BENCH_DIR` = where the databases go, default the system temp dir; `BENCH_CLIENTS` = only the
//! keep-alive row with this many clients, for profiling one row). Prints a Markdown table.

use std::path::Path;
use std::time::{Duration, Instant};

use refund_agent::config::Config;
use refund_agent::control::client::ControlClient;
use refund_agent::daemon;

/// Sales the refunds are spread over.
const RECEIPTS: usize = 200;

fn main() {
    let n: usize = std::env::var("BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let base = std::env::var("BENCH_DIR").map(Into::into).unwrap_or_else(|_| std::env::temp_dir());
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");

    println!("| what | clients | refunds | rate (/s) | p50 (ms) | p99 (ms) | vs raw |");
    println!("|---|---|---|---|---|---|---|");
    let raw_dir = tempfile::tempdir_in(&base).expect("temp dir");
    let (raw_rate, raw_lat) = raw_sqlite(raw_dir.path(), n);
    row("raw SQLite, 1 INSERT per COMMIT", 1, n, raw_rate, &raw_lat, raw_rate);
    let only: Option<usize> = std::env::var("BENCH_CLIENTS").ok().and_then(|v| v.parse().ok());
    let rows = [(1usize, false), (1, true), (8, true), (32, true), (64, true)];
    let rows = rows.into_iter().filter(|&(c, keep_alive)| only.is_none_or(|o| keep_alive && c == o));
    for (clients, keep_alive) in rows {
        let dir = tempfile::tempdir_in(&base).expect("temp dir");
        let (rate, lat) = rt.block_on(through_api(dir.path(), n, clients, keep_alive));
        let what = if keep_alive {
            "`POST /v1/refunds`, keep-alive (kiosk UI)"
        } else {
            "`POST /v1/refunds`, a connection per request (CLI)"
        };
        row(what, clients, n, rate, &lat, raw_rate);
    }
}

fn row(what: &str, clients: usize, n: usize, rate: f64, lat: &[Duration], raw: f64) {
    println!(
        "| {what} | {clients} | {n} | {rate:.0} | {:.2} | {:.2} | {:.0}% |",
        pct(lat, 0.50),
        pct(lat, 0.99),
        100.0 * rate / raw
    );
}

fn pct(lat: &[Duration], p: f64) -> f64 {
    let mut v: Vec<Duration> = lat.to_vec();
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1000.0
}

/// The physical limit: one row of about the same size per durable COMMIT.
fn raw_sqlite(dir: &Path, n: usize) -> (f64, Vec<Duration>) {
    let conn = rusqlite::Connection::open(dir.join("raw.db")).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE t (id INTEGER PRIMARY KEY, key TEXT UNIQUE, body TEXT NOT NULL, seal BLOB NOT NULL);",
    )
    .expect("schema");
    let body = "x".repeat(1500);
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
        conn.execute(
            "INSERT INTO t (key, body, seal) VALUES (?1, ?2, ?3)",
            rusqlite::params![i.to_string(), body, [0u8; 32].to_vec()],
        )
        .expect("insert");
        conn.execute_batch("COMMIT").expect("commit");
        lat.push(t.elapsed());
    }
    (n as f64 / start.elapsed().as_secs_f64(), lat)
}

async fn through_api(dir: &Path, n: usize, clients: usize, keep_alive: bool) -> (f64, Vec<Duration>) {
    let secret = |name: &str, value: &str| {
        let p = dir.join(name);
        std::fs::write(&p, value).expect("secret");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    };
    secret("seal.key", &"ab".repeat(32));
    secret("fp.key", "k");
    // The destination is a closed loopback port with a long backoff: the queue only fills, as
    // it does offline, and the worker stays out of the measurement.
    let text = format!(
        "[agent]\nterminal_id = \"bench\"\nstate_dir = \"{}\"\nseal_key_file = \"seal.key\"\n\
         [control]\nsocket = \"{}\"\n[sync]\nbackoff_initial = \"1h\"\nbackoff_max = \"1h\"\n\
         [destinations.finalpos]\nkind = \"finalpos\"\nbase_url = \"http://127.0.0.1:9\"\napi_key_file = \"fp.key\"\n",
        dir.join("state").display(),
        dir.join("control.sock").display()
    );
    let config = Config::from_toml(&text, &dir.join("config.toml"), std::iter::empty()).expect("config");
    let running = daemon::start(&config).await.expect("start");
    let client = ControlClient::new(&running.socket);
    // A few refunds per sale, as at a real till (a sale's earlier refunds are read for each new one).
    for r in 0..RECEIPTS {
        let receipt = format!(
            r#"{{"receipt_id":"R{r}","transaction_id":"T{r}","currency":"USD","total":"1000.00","subtotal":"1000.00",
            "items":[{{"name":"Tea","quantity":200,"price":"5.00","total":"1000.00","product_id":"p1","variant_id":"v1"}}]}}"#
        );
        let a =
            client.request("POST", "/v1/receipts", Some(receipt.into_bytes()), &[]).await.expect("receipt");
        assert_eq!(a.status, 201);
    }

    let per_client = n / clients;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            let mut conn = if keep_alive { Some(client.connect().await.expect("connect")) } else { None };
            for i in 0..per_client {
                let key = format!("bench-{c}-{i}");
                let r = (c * per_client + i) % RECEIPTS;
                let body = format!(
                    r#"{{"receipt_id":"R{r}","amount":"0.01","reason":"benchmark","operator":"bench"}}"#
                );
                let t = Instant::now();
                let headers = [("idempotency-key", key.as_str())];
                let a = match conn.as_mut() {
                    Some(c) => c.request("POST", "/v1/refunds", Some(body.into_bytes()), &headers).await,
                    None => client.request("POST", "/v1/refunds", Some(body.into_bytes()), &headers).await,
                }
                .expect("answer");
                assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("client task"));
    }
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    running.stop().await;
    (rate, lat)
}
