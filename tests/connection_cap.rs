//! The control socket's connection cap (SPEC section 4: at most a bounded number of
//! connections): with every slot held by an idle connection, one more is closed at once,
//! unanswered, rather than left waiting; once the idle ones are gone the agent answers again.
//! The real binary on a real Unix socket.

mod common;

use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::path::Path;

use common::*;
use refund_agent::control::listen::MAX_CONNECTIONS;
use refund_agent::sandbox::FinalPosSandbox;

/// What became of a connection the agent may have refused.
#[derive(Debug, PartialEq)]
enum Fate {
    /// Closed without an answer, or answered 503.
    Refused,
    /// Still open (the agent is serving it, waiting for a request).
    Open,
}

/// Reads what the agent does with `stream`, waiting at most the test deadline for it to act.
fn wait_for_refusal(stream: &mut UnixStream) -> Fate {
    stream.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    let mut buf = [0u8; 512];
    match stream.read(&mut buf) {
        Ok(0) => Fate::Refused,
        Ok(n) if buf[..n].starts_with(b"HTTP/1.1 503") => Fate::Refused,
        Ok(n) => panic!("an unexpected answer: {}", String::from_utf8_lossy(&buf[..n])),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Fate::Refused,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Fate::Open,
        Err(e) => panic!("reading the connection: {e}"),
    }
}

/// Whether the agent has closed `stream`, without waiting.
fn fate_now(mut stream: &UnixStream) -> Fate {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 1];
    let fate = match stream.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => Fate::Open,
        _ => Fate::Refused,
    };
    stream.set_nonblocking(false).expect("blocking");
    fate
}

/// One round: every slot taken by an idle connection, then one more. It passes when the extra
/// one is refused while idle ones are still open, which only an immediate refusal can do: an
/// extra connection that waited for a slot, or was served and timed out, would be closed only
/// after the idle ones before it were closed by the request-head timeout. (A connection that
/// closed just before may still hold its slot for a moment, so a few idle ones may be refused
/// too.)
fn one_round(socket: &Path) -> Result<Vec<UnixStream>, String> {
    let idle: Vec<UnixStream> =
        (0..MAX_CONNECTIONS).map(|_| UnixStream::connect(socket).expect("connect")).collect();
    let mut extra = UnixStream::connect(socket).expect("connect the extra one");
    let fate = wait_for_refusal(&mut extra);
    let closed = idle.iter().filter(|s| fate_now(s) == Fate::Refused).count();
    match (fate, closed) {
        (Fate::Refused, closed) if closed < MAX_CONNECTIONS => Ok(idle),
        (fate, closed) => Err(format!("extra connection {fate:?}, {closed} of the idle ones closed")),
    }
}

/// The agent's open file descriptors.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("the agent's descriptors").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_cap_is_closed_at_once_and_the_agent_answers_after() {
    let fp = FinalPosSandbox::start(API_KEY).await.expect("start the Final POS sandbox");
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    let pid = agent.pid().expect("agent pid");

    // A round spoiled by slots of just-closed connections is tried again, once the agent holds
    // no more descriptors than before it (a few times: it cannot keep happening).
    let mut failures = Vec::new();
    let idle = loop {
        assert!(failures.len() < 3, "the extra connection was not refused at once: {failures:?}");
        let before = open_fds(pid);
        let socket = agent.socket.clone();
        match tokio::task::spawn_blocking(move || one_round(&socket)).await.expect("the round ran") {
            Ok(idle) => break idle,
            Err(e) => failures.push(e),
        }
        eventually("the agent to close the round's connections", DEADLINE, || async {
            (open_fds(pid) <= before).then_some(())
        })
        .await;
    };
    // The refusal is logged just after the connection is closed.
    eventually("the refusal to be logged", DEADLINE, || async {
        agent.logs().contains("too many connections").then_some(())
    })
    .await;

    drop(idle);
    eventually("the agent to answer /healthz again", DEADLINE, || async {
        let a = agent.client().request("GET", "/healthz", None, &[]).await.ok()?;
        (a.status == 200).then_some(())
    })
    .await;
    assert_eq!(agent.terminate().await.code(), Some(0), "clean exit; logs:\n{}", agent.logs());
}
