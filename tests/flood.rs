//! A flood of half-open connections on the control socket, at systemd's default soft limit of
//! 1,024 file descriptors: the agent still answers, takes a refund and keeps pinging the
//! watchdog (SPEC section 4: bounded connections, a timeout for request heads).

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use refund_agent::sandbox::FinalPosSandbox;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

const HALF_OPEN: usize = 1_100;
const AGENT_NOFILE: u64 = 1_024;

/// Counts `WATCHDOG=1` notifications until `count` have arrived, failing after `limit`.
fn wait_for_pings(sock: &UnixDatagram, count: usize, limit: Duration) {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let mut seen = 0;
    while seen < count {
        let left = limit.checked_sub(start.elapsed()).filter(|l| !l.is_zero());
        let left =
            left.unwrap_or_else(|| panic!("timed out after {limit:?}: {seen} of {count} watchdog pings"));
        sock.set_read_timeout(Some(left.min(Duration::from_millis(200)))).expect("set read timeout");
        match sock.recv(&mut buf) {
            Ok(n) => {
                seen += String::from_utf8_lossy(&buf[..n]).lines().filter(|l| *l == "WATCHDOG=1").count()
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading the notify socket: {e}"),
        }
    }
}

/// Drains what is queued on the notify socket, so later counts start from now.
fn drain(sock: &UnixDatagram) {
    sock.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 4096];
    while sock.recv(&mut buf).is_ok() {}
    sock.set_nonblocking(false).expect("blocking");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_neither_exhaust_descriptors_nor_starve_the_watchdog() {
    let fp = FinalPosSandbox::start(API_KEY).await.expect("start the Final POS sandbox");
    let mut agent = Agent::new(&fp.url(), "");
    let notify_path = agent.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).expect("bind the notify socket");

    // The agent inherits this process's limits at spawn: systemd's default soft limit for it,
    // then this process takes its full hard limit back to hold the flood's descriptors. This
    // file holds one test, so no other test spawns meanwhile.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(hard >= 2 * HALF_OPEN as u64, "the hard file limit ({hard}) is too low for this test");
    setrlimit(Resource::RLIMIT_NOFILE, AGENT_NOFILE, hard).expect("lower the soft limit for the agent");
    agent.start_with_env(&[("NOTIFY_SOCKET", path_str(&notify_path)), ("WATCHDOG_USEC", "200000")]).await;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raise this process's soft limit");
    let pid = agent.pid().expect("agent pid");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("the agent's limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("a file limit line");
    assert_eq!(line.split_whitespace().nth(3), Some("1024"), "{line}");
    agent.add_receipt(RECEIPT).await;

    // Connect and send part of a request head, never the rest. A connect that finds the
    // backlog full is tried again (bounded); every one must get through.
    let mut flood = Vec::with_capacity(HALF_OPEN);
    for _ in 0..HALF_OPEN {
        let mut stream = None;
        for _ in 0..1_000 {
            match UnixStream::connect(&agent.socket).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(_) => tokio::task::yield_now().await,
            }
        }
        let mut s = stream.expect("a connection within 1,000 tries");
        // The agent may already have answered 503 and closed: that is a refusal, not a failure.
        let _ = s.write_all(b"POST /v1/refunds HTTP/1.1\r\nhost: refund-agent\r\n").await;
        flood.push(s);
    }

    // The agent still answers and still takes a refund (once the request-head timeout has
    // freed the slots the flood took).
    // Each try is bounded: a connection the agent closed unread while it was full may never
    // see its answer in the client, and the next try opens a new one.
    eventually("the agent to answer /healthz during the flood", DEADLINE, || async {
        let client = agent.client();
        let attempt = client.request("GET", "/healthz", None, &[]);
        let a = tokio::time::timeout(Duration::from_secs(2), attempt).await.ok()?.ok()?;
        (a.status == 200).then_some(())
    })
    .await;
    let id = eventually("a refund to be taken during the flood", DEADLINE, || async {
        let out = cli_refund(&agent, "1.00", &[]).await;
        out.status.success().then(|| created_id(&out))
    })
    .await;
    agent.wait_state(&id, "delivered").await;

    // The watchdog pings on: a few more after the flood (the agent pings every 100 ms).
    let sock = tokio::task::spawn_blocking(move || {
        drain(&sock);
        wait_for_pings(&sock, 3, DEADLINE);
        sock
    })
    .await
    .expect("reader thread");
    drop(sock);
    let status = agent.terminate().await;
    assert_eq!(status.code(), Some(0), "clean exit; logs:\n{}", agent.logs());
    drop(flood);
}
