//! Footprint: binary size, idle RSS and CPU, and the start-to-ready time with 0, 1k, 10k and
//! 100k refunds queued (it must be flat).
//!
//! Run: `cargo bench --bench footprint` (env `BENCH_IDLE_SECS`, default 60; `BENCH_QUEUE`, the
//! largest queue the start is timed with, default 100000).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use refund_agent::control::client::ControlClient;
use serde_json::json;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_refund-agent");

/// Queue sizes at which the start is timed: flat means the same time at each.
const STEPS: [usize; 4] = [0, 1_000, 10_000, 100_000];
/// Starts timed at each size; the median is reported.
const STARTS: usize = 3;

fn main() {
    let idle_secs: u64 = std::env::var("BENCH_IDLE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let queue: usize = std::env::var("BENCH_QUEUE").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let size = std::fs::metadata(BIN).map(|m| m.len()).unwrap_or(0);
    println!("| what | value | goal |");
    println!("|---|---|---|");
    println!("| release binary, x86_64, stripped | {:.2} MiB ({size} bytes) | |", size as f64 / 1048576.0);
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = write_config(dir.path());
        let client = ControlClient::new(&dir.path().join("control.sock"));

        let mut agent = start(&config, &client).await;
        let pid = agent.id().expect("pid");
        let cpu = idle_cpu(pid, idle_secs).await;
        println!("| idle RSS after {idle_secs} s | {:.1} MiB | ≤ 8 MiB |", status_kb(pid, "VmRSS:") / 1024.0);
        // What the RSS is made of: memory the agent allocated (heap, stacks), and pages of its
        // binary and libraries mapped from files (shared and reclaimable, counted once used).
        println!(
            "| of which anonymous (heap, stacks) / mapped from files (code) | {:.1} / {:.1} MiB | |",
            status_kb(pid, "RssAnon:") / 1024.0,
            (status_kb(pid, "RssFile:") + status_kb(pid, "RssShmem:")) / 1024.0
        );
        println!("| idle CPU over {idle_secs} s | {:.3}% of one core | 0 |", 100.0 * cpu);
        stop(&mut agent).await;

        // A refund routed to a card gateway that is down, then Final POS: the worker waits for
        // the gateway's probe, not in a loop over the delivery that waits behind it.
        let routed = tempfile::tempdir().expect("temp dir");
        let routed_config = write_config_with(routed.path(), ROUTED);
        let routed_client = ControlClient::new(&routed.path().join("control.sock"));
        let mut agent = start(&routed_config, &routed_client).await;
        let sale = json!({"receipt_id": "R", "transaction_id": "T", "currency": "USD", "total": "100.00",
            "subtotal": "100.00", "processor": "gateway", "processor_payment_id": "882"});
        send_all(&routed_client, vec![0], |_| ("/v1/receipts", sale.to_string(), "receipt".into())).await;
        send_all(&routed_client, vec![0], |_| {
            let body = json!({"receipt_id": "R", "amount": "1.00", "reason": "bench", "operator": "b"});
            ("/v1/refunds", body.to_string(), "refund".into())
        })
        .await;
        let cpu = idle_cpu(agent.id().expect("pid"), idle_secs).await;
        println!(
            "| idle CPU over {idle_secs} s, one refund queued for a gateway that is down and Final POS after it | {:.3}% of one core | 0 |",
            100.0 * cpu
        );
        stop(&mut agent).await;

        // The start is timed at each size, the queue filled further between them.
        let mut rows = Vec::new();
        let mut filled = 0;
        let mut peak = 0.0f64;
        for step in STEPS.iter().copied().filter(|s| *s <= queue) {
            if step > filled {
                let mut agent = start(&config, &client).await;
                fill(&client, filled, step).await;
                peak = peak.max(status_kb(agent.id().expect("pid"), "VmHWM:") / 1024.0);
                stop(&mut agent).await;
                filled = step;
            }
            let db = std::fs::metadata(dir.path().join("state/queue.db")).map(|m| m.len()).unwrap_or(0);
            let mut times: Vec<f64> = Vec::new();
            for _ in 0..STARTS {
                let begin = Instant::now();
                let mut agent = start(&config, &client).await;
                times.push(begin.elapsed().as_secs_f64() * 1000.0);
                stop(&mut agent).await;
            }
            times.sort_by(f64::total_cmp);
            rows.push((step, db, times[STARTS / 2]));
        }
        println!("| peak RSS while {filled} refunds were queued | {peak:.1} MiB | |");
        println!();
        println!("| refunds queued | queue file (MB) | start → ready (ms, median of {STARTS}) | vs empty (ms) | goal |");
        println!("|---|---|---|---|---|");
        let empty = rows.first().map_or(0.0, |r| r.2);
        for (step, db, ms) in rows {
            let goal = match step {
                0 => "",
                100_000 => "≤ 50 ms, grows < 10 ms",
                _ => "grows < 10 ms",
            };
            println!("| {step} | {:.1} | {ms:.0} | {:+.0} | {goal} |", db as f64 / 1e6, ms - empty);
        }
    });
}

async fn start(config: &Path, client: &ControlClient) -> Child {
    let child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .spawn()
        .expect("agent");
    // Ready = the control socket answers, which the agent allows only after the queue is open.
    while !matches!(client.request("GET", "/healthz", None, &[]).await, Ok(a) if a.status == 200) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child
}

async fn stop(agent: &mut Child) {
    let pid = agent.id().expect("pid") as i32;
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    let _ = agent.wait().await;
}

/// Adds refunds `from..to` (a receipt for every five), through the API as a till would. A
/// request whose connection broke is sent again on a new one: receipts are idempotent and
/// every refund carries an idempotency key, so nothing is made twice.
async fn fill(client: &ControlClient, from: usize, to: usize) {
    let workers = 32;
    let receipts: Vec<usize> = ((from / 5)..to.div_ceil(5)).collect();
    let client2 = client.clone();
    send_all(&client2, receipts, |r| {
        let sale = json!({"receipt_id": format!("R{r}"), "transaction_id": format!("T{r}"), "currency": "USD",
            "total": "100.00", "subtotal": "100.00"});
        ("/v1/receipts", sale.to_string(), format!("receipt-{r}"))
    })
    .await;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            send_all(&client, (from + w..to).step_by(workers).collect(), |i| {
                let body = json!({"receipt_id": format!("R{}", i / 5), "amount": "0.01", "reason": "bench", "operator": "b"});
                ("/v1/refunds", body.to_string(), format!("bench-{i}"))
            })
            .await;
        }));
    }
    for t in tasks {
        t.await.expect("fill task");
    }
}

/// Sends one request per item on one keep-alive connection, again on a new connection when one
/// breaks (at most three tries each).
async fn send_all(
    client: &ControlClient,
    items: Vec<usize>,
    make: impl Fn(usize) -> (&'static str, String, String),
) {
    let mut conn = client.connect().await.expect("connect");
    for item in items {
        let (path, body, key) = make(item);
        let mut tries = 0;
        loop {
            let headers = [("idempotency-key", key.as_str())];
            match conn.request("POST", path, Some(body.clone().into_bytes()), &headers).await {
                Ok(a) => {
                    assert!(a.status == 200 || a.status == 201, "{}", String::from_utf8_lossy(&a.body));
                    break;
                }
                Err(e) => {
                    tries += 1;
                    assert!(tries < 3, "{path}: {e:?}");
                    conn = client.connect().await.expect("connect");
                }
            }
        }
    }
}

/// The share of one core the process `pid` used over the next `secs` seconds.
async fn idle_cpu(pid: u32, secs: u64) -> f64 {
    let (cpu0, t0) = (cpu_ticks(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    (cpu_ticks(pid) - cpu0) as f64 / ticks_per_second() / t0.elapsed().as_secs_f64()
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12) // utime + stime
}

fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64
}

fn status_kb(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(key)).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse().ok()))
        .unwrap_or(0.0)
}

/// A card gateway on a loopback port nothing listens on, before Final POS on every refund.
const ROUTED: &str = "[destinations.gateway]\nkind = \"gateway\"\nbase_url = \"http://127.0.0.1:9\"\n\
     token_file = \"fp.key\"\nterminal_id = 24\n[[routes]]\nprocessor = \"*\"\ndestinations = [\"gateway\", \"finalpos\"]\n";

fn write_config(dir: &Path) -> PathBuf {
    write_config_with(dir, "")
}

/// The benchmark's config with `extra` appended.
fn write_config_with(dir: &Path, extra: &str) -> PathBuf {
    for (name, value) in [("seal.key", "ef".repeat(32)), ("fp.key", "k".to_string())] {
        let p = dir.join(name);
        std::fs::write(&p, value).expect("secret");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let text = format!(
        "[agent]\nterminal_id = \"bench\"\nstate_dir = \"{}\"\nseal_key_file = \"seal.key\"\n\
         [control]\nsocket = \"{}\"\n\
         [destinations.finalpos]\nkind = \"finalpos\"\nbase_url = \"http://127.0.0.1:9\"\napi_key_file = \"fp.key\"\n{extra}",
        dir.join("state").display(),
        dir.join("control.sock").display()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("config");
    path
}
