//! `Type=notify` and the watchdog, as systemd sees them: the real binary sends its
//! notifications to a Unix datagram socket this test binds in place of systemd's.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;
use refund_agent::sandbox::FinalPosSandbox;

/// Reads notification lines (`KEY=VALUE`, one datagram may hold several) until `want` has been
/// seen `count` times, failing after `limit`. Everything read is appended to `seen`, so later
/// waits can count messages that arrived early.
fn wait_for(sock: &UnixDatagram, seen: &mut Vec<String>, want: &str, count: usize, limit: Duration) {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while seen.iter().filter(|l| *l == want).count() < count {
        let left = limit.checked_sub(start.elapsed());
        let Some(left) = left.filter(|l| !l.is_zero()) else {
            panic!("timed out after {limit:?} waiting for {count} x {want}; got {seen:?}");
        };
        // A short read timeout bounds each wait, so the deadline above is checked regularly.
        sock.set_read_timeout(Some(left.min(Duration::from_millis(200)))).expect("set read timeout");
        match sock.recv(&mut buf) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                seen.extend(text.lines().map(str::to_owned));
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading the notify socket: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_ready_pings_the_watchdog_and_notifies_stopping() {
    let fp = FinalPosSandbox::start(API_KEY).await.expect("start the Final POS sandbox");
    let mut agent = Agent::new(&fp.url(), "");
    let notify_path = agent.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).expect("bind the notify socket");

    // 200 ms: the agent must ping every 100 ms, so two pings arrive quickly.
    agent.start_with_env(&[("NOTIFY_SOCKET", path_str(&notify_path)), ("WATCHDOG_USEC", "200000")]).await;

    // The socket is read on a blocking thread: the agent's start already returned, and blocking
    // reads must not hold up the runtime's two workers.
    let (sock, mut seen) = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        wait_for(&sock, &mut seen, "READY=1", 1, DEADLINE);
        wait_for(&sock, &mut seen, "WATCHDOG=1", 2, DEADLINE);
        (sock, seen)
    })
    .await
    .expect("reader thread");
    let ready = seen.iter().position(|l| l == "READY=1").expect("READY=1 seen");
    let first_ping = seen.iter().position(|l| l == "WATCHDOG=1").expect("WATCHDOG=1 seen");
    assert!(ready < first_ping, "READY=1 comes before the first watchdog ping: {seen:?}");

    let status = agent.terminate().await;
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM; logs:\n{}", agent.logs());
    // The datagram was queued before the process exited, so it is already waiting.
    seen = tokio::task::spawn_blocking(move || {
        wait_for(&sock, &mut seen, "STOPPING=1", 1, DEADLINE);
        seen
    })
    .await
    .expect("reader thread");
    assert!(seen.iter().any(|l| l == "STOPPING=1"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_systemd_nothing_is_sent_and_the_agent_runs() {
    // No NOTIFY_SOCKET, no WATCHDOG_USEC: the notifications are no-ops and start/stop still work.
    let fp = FinalPosSandbox::start(API_KEY).await.expect("start the Final POS sandbox");
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    let status = agent.terminate().await;
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM; logs:\n{}", agent.logs());
}
