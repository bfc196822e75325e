//! `GET /metrics` on the real binary's control socket: the text parses as the Prometheus
//! exposition format and carries the queue's figures.

mod common;

use std::collections::HashMap;

use common::*;
use refund_agent::sandbox::FinalPosSandbox;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Parses the samples: every line that is not a comment is `name{labels} value`.
fn samples(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line:?}"
        );
        if name_end < series.len() {
            let labels = &series[name_end..];
            assert!(labels.starts_with('{') && labels.ends_with('}'), "bad labels: {line:?}");
            for pair in labels[1..labels.len() - 1].split(',') {
                let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("bad label: {line:?}"));
                assert!(!k.is_empty() && v.starts_with('"') && v.ends_with('"'), "bad label: {line:?}");
            }
        }
        assert!(out.insert(series.to_string(), value).is_none(), "duplicate series: {line:?}");
    }
    out
}

/// The raw response head, to see the `Content-Type` (the control client returns bodies only).
async fn response_head(socket: &std::path::Path) -> String {
    let mut stream = tokio::net::UnixStream::connect(socket).await.expect("connect to the control socket");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("send request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read response");
    let text = String::from_utf8_lossy(&raw).to_string();
    text.split("\r\n\r\n").next().unwrap_or_default().to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_a_delivered_refund() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    agent.wait_state(&id, "delivered").await;

    let a = agent.client().request("GET", "/metrics", None, &[]).await.unwrap();
    assert_eq!(a.status, 200);
    let text = String::from_utf8(a.body).unwrap();
    let m = samples(&text);
    assert_eq!(m.get("refund_agent_refunds{state=\"delivered\"}"), Some(&1.0), "{text}");
    assert_eq!(m.get("refund_agent_refunds{state=\"queued\"}"), Some(&0.0), "{text}");
    assert_eq!(m.get("refund_agent_quarantined"), Some(&0.0), "{text}");
    assert_eq!(m.get("refund_agent_deliveries{destination=\"finalpos\",state=\"delivered\"}"), Some(&1.0));
    assert_eq!(m.get("refund_agent_delivery_retries"), Some(&0.0), "{text}");
    assert_eq!(m.get("refund_agent_destination_up{destination=\"finalpos\"}"), Some(&1.0), "{text}");
    assert!(!m.contains_key("refund_agent_oldest_pending_age_seconds"), "nothing pending: {text}");
    assert!(!text.contains("terminal_connected"), "no terminal configured: {text}");

    let head = response_head(&agent.socket).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
    assert_eq!(agent.terminate().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_pending_money_while_the_destination_is_down() {
    // A loopback port with nothing listening: every delivery attempt fails to connect.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut agent = Agent::new(&format!("http://127.0.0.1:{port}"), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    created_id(&cli_refund(&agent, "5.00", &[]).await);

    let client = agent.client();
    eventually("the failed delivery attempt to mark finalpos unreachable", DEADLINE, || {
        let client = client.clone();
        async move {
            let a = client.request("GET", "/v1/status", None, &[]).await.ok()?;
            let v: serde_json::Value = serde_json::from_slice(&a.body).ok()?;
            (v["destinations"]["finalpos"]["connectivity"] == "unreachable").then_some(())
        }
    })
    .await;
    let a = client.request("GET", "/metrics", None, &[]).await.unwrap();
    let text = String::from_utf8(a.body).unwrap();
    let m = samples(&text);
    assert_eq!(m.get("refund_agent_destination_up{destination=\"finalpos\"}"), Some(&0.0), "{text}");
    assert_eq!(m.get("refund_agent_refunds{state=\"queued\"}"), Some(&1.0), "{text}");
    assert_eq!(m.get("refund_agent_pending_amount{currency=\"USD\"}"), Some(&5.0), "{text}");
    assert!(m.contains_key("refund_agent_oldest_pending_age_seconds"), "{text}");
    assert_eq!(agent.terminate().await.code(), Some(0));
}
