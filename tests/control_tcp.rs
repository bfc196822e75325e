//! Who may call the loopback TCP listener (SPEC section 4): the token, a loopback `Host`, a
//! listed `Origin` and a JSON body, checked against the real binary; and a real headless
//! browser on a page of another loopback origin that tries to create a refund.

mod common;

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use refund_agent::sandbox::FinalPosSandbox;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "tcp-test-token-0123456789";
const ALLOWED: &str = "http://kiosk.local";
const DRAFT: &str =
    r#"{"receipt_id":"RCP-2025-001","amount":"1.00","reason":"Customer returned item","operator":"emp_42"}"#;

/// A free loopback port: the agent binds it right after (its config names a fixed address).
async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    l.local_addr().expect("local address").port()
}

/// An agent with `control.tcp` on a free port, its token file and one allowed origin.
async fn tcp_agent(url: &str) -> (Agent, u16) {
    let port = free_port().await;
    let agent = Agent::new(url, "");
    agent.write_secret("tcp.token", &format!("{TOKEN}\n"));
    let text = fs::read_to_string(&agent.config).expect("read config");
    let control = format!(
        "[control]\ntcp = \"127.0.0.1:{port}\"\ntcp_token_file = \"tcp.token\"\nallowed_origins = [\"{ALLOWED}\"]\n"
    );
    fs::write(&agent.config, text.replacen("[control]\n", &control, 1)).expect("write config");
    (agent, port)
}

/// One raw HTTP/1.1 exchange on a fresh TCP connection: the status and the body.
async fn raw(port: u16, head: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.expect("connect to the TCP listener");
    let request = format!("{head}content-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
    s.write_all(request.as_bytes()).await.expect("send");
    let mut answer = String::new();
    tokio::time::timeout(DEADLINE, s.read_to_string(&mut answer)).await.expect("an answer").expect("read");
    let status = answer.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn code(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON error body ({e}): {body}"));
    v["code"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_requests_need_the_token_a_loopback_host_an_allowed_origin_and_json() {
    let fp = FinalPosSandbox::start(API_KEY).await.expect("start the Final POS sandbox");
    let (mut agent, port) = tcp_agent(&fp.url()).await;
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let host = format!("host: 127.0.0.1:{port}\r\n");
    let auth = format!("authorization: Bearer {TOKEN}\r\n");
    let json = "content-type: application/json\r\n";
    let post = "POST /v1/refunds HTTP/1.1\r\n";

    let refused = [
        (format!("{post}{host}{json}"), 401, "unauthorized"),
        (format!("{post}{host}authorization: Bearer wrong-token\r\n{json}"), 401, "unauthorized"),
        (format!("{post}host: evil.example:{port}\r\n{auth}{json}"), 403, "forbidden_host"),
        (format!("{post}{host}origin: http://evil.example\r\n{auth}{json}"), 403, "forbidden_origin"),
        (format!("{post}{host}{auth}content-type: text/plain\r\n"), 415, "unsupported_media_type"),
        (
            format!("{post}{host}{auth}content-type: application/x-www-form-urlencoded\r\n"),
            415,
            "unsupported_media_type",
        ),
        (format!("GET /healthz HTTP/1.1\r\n{host}"), 401, "unauthorized"),
    ];
    for (head, status, want) in &refused {
        let (got, body) = raw(port, head, DRAFT).await;
        assert_eq!((got, code(&body).as_str()), (*status, *want), "{head}");
    }
    assert!(agent.list().await.is_empty(), "a refused request created a refund");
    assert!(!agent.logs().contains(TOKEN), "the token must never be logged");

    let (status, _) = raw(port, &format!("GET /healthz HTTP/1.1\r\n{host}{auth}"), "").await;
    assert_eq!(status, 200);
    let head = format!("{post}host: localhost:{port}\r\norigin: {ALLOWED}\r\n{auth}content-type: application/json; charset=utf-8\r\n");
    let (status, body) = raw(port, &head, DRAFT).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(agent.list().await.len(), 1);
    // The audit row names the TCP peer it came from.
    let made: serde_json::Value = serde_json::from_str(&body).expect("the refund as JSON");
    let made = agent.refund(made["id"].as_str().expect("an id")).await.expect("the refund");
    let caller = made.audit.expect("its audit rows")[0].caller.clone().unwrap_or_default();
    assert!(caller.starts_with("tcp 127.0.0.1:"), "{caller}");
    // The Unix socket stays the trusted path without a token, but takes JSON bodies only.
    let a = agent
        .client()
        .request("POST", "/v1/refunds", Some(DRAFT.into()), &[("content-type", "text/plain")])
        .await
        .expect("an answer on the socket");
    assert_eq!(a.status, 415);
    assert_eq!(agent.list().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_without_a_token_file_is_a_config_error() {
    let agent = Agent::new("http://127.0.0.1:9", "");
    let text = fs::read_to_string(&agent.config).expect("read config");
    fs::write(&agent.config, text.replacen("[control]\n", "[control]\ntcp = \"127.0.0.1:7878\"\n", 1))
        .expect("write config");
    let out = agent.cli(&["check-config"]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("control.tcp_token_file"), "{}", stderr(&out));
}

/// The page a foreign origin serves: a form POST, a `text/plain` fetch and a JSON CORS fetch
/// against the agent, then the results to its own `/done`.
fn page(agent_port: u16) -> String {
    // A `text/plain` form whose single field spells a JSON refund: the classic way around
    // "the API only takes JSON".
    let name = r#"{"receipt_id":"RCP-2025-001","amount":"1.00","operator":"emp_42","reason":"x"#;
    let name = name.replace('"', "&quot;");
    format!(
        r#"<!doctype html><html><body>
<iframe name="sink"></iframe>
<form id="f" method="POST" enctype="text/plain" target="sink" action="http://127.0.0.1:{agent_port}/v1/refunds">
<input type="hidden" name="{name}" value='y"}}'></form>
<script>
const agent = "http://127.0.0.1:{agent_port}/v1/refunds";
const body = {DRAFT:?};
async function run() {{
  const results = {{}};
  await new Promise(done => {{
    document.querySelector("iframe").onload = () => done();
    setTimeout(done, 3000);
    document.getElementById("f").submit();
  }});
  results.form = "submitted";
  try {{
    const r = await fetch(agent, {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body}});
    results.text_plain = "sent " + r.type;
  }} catch (e) {{ results.text_plain = "error " + e; }}
  try {{
    const r = await fetch(agent, {{method: "POST", mode: "cors", headers: {{"Content-Type": "application/json"}}, body}});
    results.json = "status " + r.status;
  }} catch (e) {{ results.json = "error " + e; }}
  await fetch("/done", {{method: "POST", body: JSON.stringify(results)}});
}}
run();
</script></body></html>"#
    )
}

/// Serves the page on its own loopback port; sends the body of `POST /done` on `done`.
async fn page_server(html: String, done: tokio::sync::mpsc::Sender<String>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the page server");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let html = html.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Reads the head and, for `/done`, the body its content-length announces.
                let (head, body) = loop {
                    let Ok(n) = s.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_owned)
                            })
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if body.len() >= len {
                            break (head.to_string(), body.to_string());
                        }
                    }
                };
                let reply = if head.starts_with("POST /done") {
                    let _ = done.send(body).await;
                    "ok".to_string()
                } else {
                    html
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                    reply.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_of_another_origin_cannot_create_a_refund() {
    let chromium = "/usr/bin/chromium";
    assert!(
        std::path::Path::new(chromium).exists(),
        "this test needs Debian's chromium at {chromium}: install it with `apt-get install -y chromium` (.ci/run does)"
    );
    let fp = FinalPosSandbox::start(API_KEY).await.expect("start the Final POS sandbox");
    let (mut agent, port) = tcp_agent(&fp.url()).await;
    agent.start().await;
    agent.add_receipt(RECEIPT).await;

    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let page_port = page_server(page(port), tx).await;
    let profile = tempfile::tempdir().expect("browser profile dir");
    let mut browser = tokio::process::Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://127.0.0.1:{page_port}/"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    let results = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("the page reports done within a minute")
        .expect("the page server runs");
    let _ = browser.kill().await;

    let refunds = agent.list().await;
    assert!(refunds.is_empty(), "a foreign page created refunds: {refunds:?}; page saw {results}");
    // The requests did reach the agent and were refused by the guard, not lost on the way.
    let logs = agent.logs();
    assert!(logs.contains("forbidden_origin"), "page saw {results}; logs:\n{logs}");
}
