//! The CLI against a control socket that accepts connections and never answers (a stuck agent):
//! every command gives up after `--timeout` with a clear error and exit code 4 (SPEC section
//! 4: clear exit codes), and `refund create` retries with the same idempotency key.

mod common;

use std::path::Path;

use common::*;
use refund_agent::control::client::{ClientError, ControlClient};
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::process::Command;
use tokio::sync::mpsc;

/// Accepts every connection, reads its request head and never answers; each head is sent on
/// the channel. The connections stay open until the test ends.
fn silent_agent(path: &Path) -> mpsc::UnboundedReceiver<String> {
    let listener = UnixListener::bind(path).expect("bind the socket");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held: Vec<UnixStream> = Vec::new();
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&head).to_string());
            held.push(stream);
        }
    });
    rx
}

async fn cli(socket: &Path, args: &[&str]) -> std::process::Output {
    let run = Command::new(BIN).arg("--socket").arg(socket).args(args).kill_on_drop(true).output();
    tokio::time::timeout(DEADLINE, run).await.expect("the CLI gives up by itself").expect("run the CLI")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_gives_up_on_an_agent_that_never_answers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("control.sock");
    let mut heads = silent_agent(&socket);

    let out = cli(&socket, &["--timeout", "1s", "status"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("did not answer within 1s"), "{err}");
    assert!(err.contains("may or may not have been acted on"), "{err}");
    let head = heads.recv().await.expect("the request reached the socket");
    assert!(head.starts_with("GET /v1/status HTTP/1.1"), "{head}");

    let out = cli(&socket, &["--timeout", "0s", "status"]).await;
    assert_eq!(out.status.code(), Some(2), "a zero timeout is a usage error: {}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_create_retries_with_the_same_key_then_says_how_to_find_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("control.sock");
    let mut heads = silent_agent(&socket);

    let args = [
        "--timeout",
        "1s",
        "refund",
        "create",
        "--receipt",
        "RCP-2025-001",
        "--amount",
        "1.00",
        "--reason",
        "r",
        "--operator",
        "emp_42",
        "--retries",
        "1",
    ];
    let out = cli(&socket, &args).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("run again with --idempotency-key"), "{}", stderr(&out));
    let key = |head: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix("idempotency-key: "))
            .map(str::to_string)
            .expect("an idempotency key")
    };
    let first = heads.recv().await.expect("the first try");
    let second = heads.recv().await.expect("the retry");
    assert_eq!(key(&first), key(&second), "a retry must not be able to make a second refund");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_client_reports_a_timeout_after_sending() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("control.sock");
    let mut heads = silent_agent(&socket);

    let client = ControlClient::new(&socket).with_timeout(std::time::Duration::from_millis(300));
    let err = client.request("GET", "/healthz", None, &[]).await.expect_err("no answer");
    assert!(matches!(err, ClientError::TimedOut { sent: true, .. }), "{err:?}");
    assert!(!err.not_sent());
    heads.recv().await.expect("the request reached the socket");
}
