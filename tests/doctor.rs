//! `refund-agent doctor` with the real binary: one FAIL line and exit code 6 for each kind of
//! broken installation, exit 0 on a good one.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use common::*;
use refund_agent::sandbox::FinalPosSandbox;

const DOCTOR_FAILED: i32 = 6;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The report's lines for `subject`, e.g. `secret finalpos`.
fn lines_for(out: &Output, subject: &str) -> Vec<String> {
    stdout(out).lines().filter(|l| l.contains(&format!("  {subject}: "))).map(str::to_string).collect()
}

fn assert_every_line_has_a_verdict(out: &Output) {
    let text = stdout(out);
    assert!(!text.is_empty(), "no report; stderr: {}", stderr(out));
    for line in text.lines() {
        assert!(
            line.starts_with("PASS  ") || line.starts_with("WARN  ") || line.starts_with("FAIL  "),
            "line without a verdict: {line:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_installation_passes() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let mut agent = Agent::new(&fp.url(), "");
    // A running agent has created the state dir and queue; doctor must work beside it.
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let out = agent.cli(&["doctor"]).await;
    assert_every_line_has_a_verdict(&out);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    for subject in
        ["config", "seal key", "secret finalpos", "state dir", "queue", "reach finalpos", "clock finalpos"]
    {
        let lines = lines_for(&out, subject);
        assert_eq!(lines.len(), 1, "{subject}: {text}");
        assert!(lines[0].starts_with("PASS"), "{}", lines[0]);
    }
    assert!(!text.contains("terminal"), "no terminal configured: {text}");
    // The agent still works: doctor took no lock it kept.
    let a = agent.client().request("GET", "/healthz", None, &[]).await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(agent.terminate().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_world_readable_secret_fails() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let agent = Agent::new(&fp.url(), "");
    fs::set_permissions(agent.dir.path().join("finalpos.key"), fs::Permissions::from_mode(0o644)).unwrap();
    let out = agent.cli(&["doctor"]).await;
    assert_every_line_has_a_verdict(&out);
    assert_eq!(out.status.code(), Some(DOCTOR_FAILED), "{}", stdout(&out));
    let lines = lines_for(&out, "secret finalpos");
    assert!(lines.len() == 1 && lines[0].starts_with("FAIL"), "{}", stdout(&out));
    assert!(lines[0].contains("readable by group or others"), "{}", lines[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_terminal_device_fails() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let missing = tempfile::tempdir().unwrap();
    let device = missing.path().join("nope");
    let agent = Agent::new(&fp.url(), &format!("[terminal]\ndevice = \"{}\"\n", device.display()));
    let out = agent.cli(&["doctor"]).await;
    assert_every_line_has_a_verdict(&out);
    assert_eq!(out.status.code(), Some(DOCTOR_FAILED), "{}", stdout(&out));
    let lines = lines_for(&out, "terminal");
    assert!(lines.len() == 1 && lines[0].starts_with("FAIL"), "{}", stdout(&out));
    assert!(lines[0].contains(path_str(&device)), "{}", lines[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_destination_fails() {
    // A loopback port with nothing listening: connections are refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let agent = Agent::new(&format!("http://127.0.0.1:{port}"), "");
    let out = agent.cli(&["doctor"]).await;
    assert_every_line_has_a_verdict(&out);
    assert_eq!(out.status.code(), Some(DOCTOR_FAILED), "{}", stdout(&out));
    let lines = lines_for(&out, "reach finalpos");
    assert!(lines.len() == 1 && lines[0].starts_with("FAIL"), "{}", stdout(&out));
    assert!(lines[0].contains(&format!("127.0.0.1:{port}")), "{}", lines[0]);
    assert!(lines_for(&out, "clock finalpos").is_empty(), "no clock without an answer: {}", stdout(&out));
}
