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

/// The unit must turn a missed watchdog into a restart: `WatchdogSec=` arms it, the default
/// `WatchdogSignal=` (SIGABRT, which the daemon does not catch) kills the process, and
/// `Restart=on-failure` counts a watchdog timeout and a death by signal as failures.
#[test]
fn the_unit_restarts_a_daemon_whose_watchdog_fires() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/refund-agent.service"))
        .expect("read the unit");
    let settings: Vec<(&str, &str)> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    let value = |key: &str| settings.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| *v);
    assert_eq!(value("Type"), Some("notify"), "READY=1 and the pings need Type=notify");
    assert!(matches!(value("NotifyAccess"), Some("main" | "all")), "the main process must be heard");
    let watchdog = value("WatchdogSec").expect("WatchdogSec= is set");
    assert!(!matches!(watchdog, "" | "0" | "infinity"), "WatchdogSec={watchdog} disables the watchdog");
    assert!(matches!(value("Restart"), Some("on-failure" | "on-watchdog" | "on-abnormal" | "always")));
    assert_eq!(value("WatchdogSignal"), None, "the default SIGABRT is what kills a wedged daemon");
}

/// A wedged queue owner (the hook of the `fault-injection` feature) stops the watchdog pings;
/// under systemd, SIGABRT then kills the daemon and it is started again.
#[cfg(feature = "fault-injection")]
mod wedge {
    use std::os::unix::process::ExitStatusExt;

    use nix::sys::signal::Signal;

    use super::*;

    /// What the socket holds right now, without waiting.
    fn drain(sock: &UnixDatagram) -> Vec<String> {
        sock.set_nonblocking(true).expect("non-blocking");
        let mut lines = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            lines.extend(String::from_utf8_lossy(&buf[..n]).lines().map(str::to_owned));
        }
        sock.set_nonblocking(false).expect("blocking");
        lines
    }

    /// Everything that arrives within `window`. This is the one place a test here reads for a
    /// fixed time: it checks for an absence, which no condition can signal.
    fn collect_for(sock: &UnixDatagram, window: Duration) -> Vec<String> {
        let start = Instant::now();
        let mut lines = Vec::new();
        let mut buf = [0u8; 4096];
        while let Some(left) = window.checked_sub(start.elapsed()).filter(|l| !l.is_zero()) {
            sock.set_read_timeout(Some(left)).expect("set read timeout");
            match sock.recv(&mut buf) {
                Ok(n) => lines.extend(String::from_utf8_lossy(&buf[..n]).lines().map(str::to_owned)),
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("reading the notify socket: {e}"),
            }
        }
        lines
    }

    fn pings(lines: &[String]) -> usize {
        lines.iter().filter(|l| *l == "WATCHDOG=1").count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wedged_queue_owner_stops_the_watchdog_pings() {
        let fp = FinalPosSandbox::start(API_KEY).await.expect("start the Final POS sandbox");
        let mut agent = Agent::new(&fp.url(), "");
        let notify_path = agent.dir.path().join("notify.sock");
        let trigger = agent.dir.path().join("wedge-the-queue");
        let sock = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
        // 200 ms: a ping every 100 ms while the owner answers.
        let interval = Duration::from_millis(100);
        let env = [
            ("NOTIFY_SOCKET", path_str(&notify_path)),
            ("WATCHDOG_USEC", "200000"),
            ("REFUND_AGENT_FAULT_WEDGE_QUEUE", path_str(&trigger)),
        ];
        agent.start_with_env(&env).await;
        let sock = tokio::task::spawn_blocking(move || {
            let mut seen = Vec::new();
            wait_for(&sock, &mut seen, "READY=1", 1, DEADLINE);
            wait_for(&sock, &mut seen, "WATCHDOG=1", 3, DEADLINE);
            sock
        })
        .await
        .expect("reader thread");

        std::fs::write(&trigger, "").expect("create the trigger file");
        eventually("the queue owner to wedge", DEADLINE, || async {
            agent.logs().contains("fault injection: queue owner wedged").then_some(())
        })
        .await;
        // Pings sent before the wedge are still queued in the socket: drop them. One ping whose
        // round trip the owner answered just before it wedged may still follow; a timer that
        // ignored the owner would send one every interval, 20 in this window.
        let quiet = 20 * interval;
        let (sock, after) = tokio::task::spawn_blocking(move || {
            drain(&sock);
            let after = collect_for(&sock, quiet);
            (sock, after)
        })
        .await
        .expect("reader thread");
        assert!(pings(&after) <= 1, "pings continued for {quiet:?} after the wedge: {after:?}");
        let answer =
            tokio::time::timeout(5 * interval, agent.client().request("GET", "/healthz", None, &[])).await;
        assert!(answer.is_err(), "a wedged owner cannot answer /healthz: {answer:?}");

        // What systemd does when WatchdogSec= passes without a ping: SIGABRT, which the daemon
        // does not catch; a death by signal is a failure, so Restart=on-failure starts it again.
        let pid = nix::unistd::Pid::from_raw(agent.pid().expect("agent running") as i32);
        nix::sys::signal::kill(pid, Signal::SIGABRT).expect("SIGABRT");
        let status = agent.wait_exit().await;
        assert_eq!(status.signal(), Some(Signal::SIGABRT as i32), "killed by SIGABRT: {status}");

        // The restart: the queue opens again, READY=1 and the pings come back. The dead
        // process's last pings are dropped first, so only the new one's lines are counted.
        let sock = tokio::task::spawn_blocking(move || {
            drain(&sock);
            sock
        })
        .await
        .expect("reader thread");
        std::fs::remove_file(&trigger).expect("remove the trigger file");
        agent.start_with_env(&env).await;
        let seen = tokio::task::spawn_blocking(move || {
            let mut seen = Vec::new();
            wait_for(&sock, &mut seen, "READY=1", 1, DEADLINE);
            wait_for(&sock, &mut seen, "WATCHDOG=1", 2, DEADLINE);
            seen
        })
        .await
        .expect("reader thread");
        assert!(pings(&seen) >= 2, "{seen:?}");
        let status = agent.terminate().await;
        assert_eq!(status.code(), Some(0), "clean exit on SIGTERM; logs:\n{}", agent.logs());
    }
}
