//! The audit log with the real binary: a refund made over the Unix socket records the caller's
//! uid and pid, and an audit row deleted from the file behind the agent's back is reported by
//! `doctor`, by status and by metrics after a restart, while refunds keep being sent.

mod common;

use common::*;
use refund_agent::sandbox::FinalPosSandbox;

const DOCTOR_FAILED: i32 = 6;

fn refund_body(amount: &str) -> String {
    format!(
        r#"{{"receipt_id":"RCP-2025-001","amount":"{amount}","reason":"Customer returned item","operator":"emp_42"}}"#
    )
}

async fn get_json(agent: &Agent, path: &str) -> serde_json::Value {
    let a = agent.client().request("GET", path, None, &[]).await.expect("agent answers");
    assert_eq!(a.status, 200, "{path}: {}", String::from_utf8_lossy(&a.body));
    serde_json::from_slice(&a.body).expect("JSON")
}

async fn metrics(agent: &Agent) -> String {
    let a = agent.client().request("GET", "/metrics", None, &[]).await.expect("agent answers");
    String::from_utf8(a.body).expect("UTF-8 metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_is_recorded_and_a_deleted_audit_row_is_reported_after_a_restart() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;

    // This test process is the socket's peer: its uid and pid are what SO_PEERCRED reports.
    let mut ids = Vec::new();
    for amount in ["1.00", "2.00", "3.00"] {
        let (status, body) = agent.post_json("/v1/refunds", refund_body(amount).as_bytes(), &[]).await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_str().expect("an id").to_string());
    }
    let shown = get_json(&agent, &format!("/v1/refunds/{}", ids[0])).await;
    let audit = shown["audit"].as_array().expect("the audit rows of the refund");
    assert_eq!(audit.len(), 1, "{shown}");
    let expected = format!("unix uid={} pid={}", nix::unistd::getuid(), std::process::id());
    assert_eq!(audit[0]["action"], "created");
    assert_eq!(audit[0]["actor"], "emp_42");
    assert_eq!(audit[0]["caller"], expected.as_str());
    assert_eq!(audit[0]["seq"], 1);

    let human = agent.cli(&["refunds", "show", &ids[1]]).await;
    let text = String::from_utf8_lossy(&human.stdout).to_string();
    assert!(text.contains("Audit:") && text.contains("created"), "{text}");
    assert!(
        text.contains(&format!("via unix uid={} pid={}", nix::unistd::getuid(), std::process::id())),
        "{text}"
    );

    let status = get_json(&agent, "/v1/status").await;
    assert_eq!(status["queue"]["audit"]["broken"], false, "{status}");
    assert!(metrics(&agent).await.contains("refund_agent_audit_chain_broken 0"));
    for id in &ids {
        agent.wait_state(id, "delivered").await;
    }
    assert_eq!(agent.terminate().await.code(), Some(0));

    // Someone with the file removes the record of the second refund's creation.
    let db = rusqlite::Connection::open(agent.db_path()).expect("open the queue file");
    assert_eq!(db.execute("DELETE FROM audit WHERE refund_id = ?1", [&ids[1]]).expect("delete"), 1);
    drop(db);

    let doctor = agent.cli(&["doctor"]).await;
    assert_eq!(doctor.status.code(), Some(DOCTOR_FAILED), "{}", String::from_utf8_lossy(&doctor.stdout));
    let report = String::from_utf8_lossy(&doctor.stdout).to_string();
    let line = report.lines().find(|l| l.contains("  audit log: ")).unwrap_or_else(|| panic!("{report}"));
    assert!(line.starts_with("FAIL") && line.contains("first broken row: 2"), "{line}");

    // The agent still starts and sends refunds; status, metrics and the log raise the alarm.
    agent.start().await;
    let walked = eventually("the audit walk to name the broken row", DEADLINE, || async {
        let status = get_json(&agent, "/v1/status").await;
        (status["queue"]["audit"]["walked"] == true).then_some(status)
    })
    .await;
    let audit = &walked["queue"]["audit"];
    assert_eq!(audit["broken"], true, "{walked}");
    assert_eq!(audit["first_broken_seq"], 2, "{walked}");
    assert!(metrics(&agent).await.contains("refund_agent_audit_chain_broken 1"));
    assert!(agent.logs().contains("the audit log was altered outside the agent"), "{}", agent.logs());
    let status = agent.cli(&["status"]).await;
    assert!(String::from_utf8_lossy(&status.stdout).contains("AUDIT LOG:"), "{}", stderr(&status));

    let (code, body) = agent.post_json("/v1/refunds", refund_body("4.00").as_bytes(), &[]).await;
    assert_eq!(code, 201, "refunds are still taken on a broken audit chain: {body}");
    let id = body["id"].as_str().expect("an id").to_string();
    agent.wait_state(&id, "delivered").await;
    let shown = get_json(&agent, &format!("/v1/refunds/{id}")).await;
    assert_eq!(shown["audit"][0]["seq"], 4, "recorded after the break, which stays visible: {shown}");
    assert_eq!(agent.terminate().await.code(), Some(0));
}
