//! End-to-end: manager approvals (SPEC section 5b) with the real binary, a real SQLite file and
//! a Final POS sandbox on a loopback port. A wrong PIN stores nothing, a right one is sealed
//! with the refund (manager and time, never the PIN) and audit-logged, a plain string is no
//! approval, and retry / cancel / resolve take the same approval through the API and the CLI.

mod common;

use common::*;
use refund_agent::sandbox::{Fault, FinalPosSandbox};
use serde_json::{json, Value};

async fn post(agent: &Agent, path: &str, body: &Value) -> (u16, Value) {
    agent.post_json(path, body.to_string().as_bytes(), &[]).await
}

/// A refund above the harness's per-refund limit of 50.00.
fn large(approval: Option<Value>) -> Value {
    let mut body = json!({"receipt_id": "RCP-2025-001", "amount": "60.00", "reason": "Customer returned item", "operator": "emp_42"});
    if let Some(a) = approval {
        body["manager_approval"] = a;
    }
    body
}

/// A wrong PIN no log line or file could hold by chance.
const WRONG_PIN: &str = "wrong-Zq9x";

const LIMITS: &str = "[limits]\nmax_refund = \"50.00\"\n";

fn audit_rows(agent: &Agent) -> Vec<(String, String, String)> {
    let db = rusqlite::Connection::open(agent.db_path()).expect("open queue");
    let mut stmt = db.prepare("SELECT actor, action, detail FROM audit ORDER BY seq").expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_stores_nothing_and_a_right_one_is_sealed_with_the_refund() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let mut agent = Agent::new(&fp.url(), LIMITS);
    agent.start().await;
    agent.add_receipt(RECEIPT).await;

    let (status, answer) = post(&agent, "/v1/refunds", &large(None)).await;
    assert_eq!((status, answer["code"].as_str()), (422, Some("manager_approval_required")), "{answer}");

    let wrong = json!({"manager": MANAGER, "pin": WRONG_PIN});
    let (status, answer) = post(&agent, "/v1/refunds", &large(Some(wrong))).await;
    assert_eq!((status, answer["code"].as_str()), (403, Some("manager_approval_invalid")), "{answer}");
    let unknown = json!({"manager": "mgr_404", "pin": PIN});
    let (status, same) = post(&agent, "/v1/refunds", &large(Some(unknown))).await;
    assert_eq!((status, &same), (403, &answer), "an unknown manager is answered like a wrong PIN");
    for plain in [json!("mgr_1"), json!({"manager": MANAGER}), json!({"manager": MANAGER, "pin": 4321})] {
        let (status, answer) = post(&agent, "/v1/refunds", &large(Some(plain))).await;
        assert_eq!((status, answer["code"].as_str()), (400, Some("malformed_manager_approval")), "{answer}");
    }
    assert!(agent.list().await.is_empty(), "nothing stored");
    assert!(audit_rows(&agent).is_empty(), "nothing audit-logged for a refusal");

    let (status, made) = post(&agent, "/v1/refunds", &large(Some(approval()))).await;
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["manager_approval"]["manager"], MANAGER);
    let id = made["id"].as_str().unwrap().to_string();
    let shown = agent.refund(&id).await.expect("stored");
    let approved = shown.manager_approval.expect("the approval is shown");
    assert_eq!(approved.manager, MANAGER);
    assert!(approved.approved_at.starts_with("20"), "{}", approved.approved_at);
    agent.wait_state(&id, "delivered").await;
    let audit = audit_rows(&agent);
    assert!(
        audit.iter().any(|(actor, action, detail)| actor == MANAGER
            && action == "approve"
            && detail.contains("60.00")),
        "{audit:?}"
    );

    let db = rusqlite::Connection::open(agent.db_path()).expect("open queue");
    let body: String = db.query_row("SELECT body FROM refunds", [], |r| r.get(0)).unwrap();
    assert!(
        body.contains("\"approved_at_ms\"") && !body.contains("\"pin\""),
        "sealed without the PIN: {body}"
    );
    agent.terminate().await;
    for file in ["queue.db", "queue.db-wal"] {
        let bytes = std::fs::read(agent.dir.path().join("state").join(file)).unwrap_or_default();
        assert!(!bytes.windows(4).any(|w| w == b"\"pin"), "no PIN field in {file}");
        assert!(!bytes.windows(WRONG_PIN.len()).any(|w| w == WRONG_PIN.as_bytes()), "{file}");
    }
    let logs = agent.logs();
    assert!(logs.contains("wrong manager PIN"), "a failure is logged");
    assert!(!logs.contains(WRONG_PIN) && !logs.contains("\"pin\""), "no PIN in any log line: {logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_needs_a_managers_approval_through_the_api_and_the_cli() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    fp.inject(Fault::Status(401, None), 1);
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    agent.wait_state(&id, "failed").await;

    let path = format!("/v1/refunds/{id}/retry");
    let (status, answer) = post(&agent, &path, &json!({"operator": "emp_42"})).await;
    assert_eq!((status, answer["code"].as_str()), (400, Some("manager_approval_required")), "{answer}");
    let wrong = json!({"operator": "emp_42", "manager_approval": {"manager": MANAGER, "pin": WRONG_PIN}});
    let (status, answer) = post(&agent, &path, &wrong).await;
    assert_eq!((status, answer["code"].as_str()), (403, Some("manager_approval_invalid")), "{answer}");
    let plain = json!({"operator": "emp_42", "manager_approval": MANAGER});
    assert_eq!(post(&agent, &path, &plain).await.0, 400);
    assert_eq!(agent.refund(&id).await.unwrap().state, "failed", "nothing changed");

    // The CLI reads the PIN from stdin; a wrong one is refused like the API's.
    let out = agent
        .cli_stdin(&["refunds", "retry", &id, "--operator", "emp_42", "--manager", MANAGER], "1111\n")
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("manager_approval_invalid"), "{}", stderr(&out));
    let out =
        agent.cli_stdin(&["refunds", "retry", &id, "--operator", "emp_42", "--manager", MANAGER], "").await;
    assert_eq!(out.status.code(), Some(2), "no PIN on stdin: {}", stderr(&out));

    let ok = json!({"operator": "emp_42", "manager_approval": approval()});
    let (status, answer) = post(&agent, &path, &ok).await;
    assert_eq!(status, 200, "{answer}");
    agent.wait_state(&id, "delivered").await;

    let audit = audit_rows(&agent);
    assert!(audit.iter().any(|(a, act, _)| a == MANAGER && act == "retry"), "{audit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_through_the_api_names_the_approving_manager() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    fp.go_offline().await;
    let mut agent = Agent::new(&fp.url(), "");
    // Parked after its first failed attempt, so the cancel does not meet it in flight.
    agent.start_parked().await;
    agent.add_receipt(RECEIPT).await;
    let id = created_id(&cli_refund(&agent, "1.00", &[]).await);
    agent.wait_first_failure(&id).await;
    let cancel = json!({"operator": "emp_42", "reason": "typo", "manager_approval": {"manager": "mgr_7", "pin": "9999"}});
    let (status, answer) = post(&agent, &format!("/v1/refunds/{id}/cancel"), &cancel).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["state"], "cancelled");
    let audit = audit_rows(&agent);
    assert!(audit.iter().any(|(a, act, d)| a == "mgr_7" && act == "cancel" && d == "typo"), "{audit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_managers_file_no_approval_can_be_given() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let mut agent = Agent::new(&fp.url(), LIMITS);
    agent.managers = false;
    let check = agent.cli(&["check-config"]).await;
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(stderr(&check).contains("manual decisions"), "{}", stderr(&check));
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let (status, answer) = post(&agent, "/v1/refunds", &large(Some(approval()))).await;
    assert_eq!((status, answer["code"].as_str()), (403, Some("no_managers_file")), "{answer}");
    assert!(agent.list().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_pin_makes_a_line_the_agent_accepts() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let mut agent = Agent::new(&fp.url(), LIMITS);
    let short = agent.cli_stdin(&["manager", "hash-pin", "--manager", "boss"], "12\n").await;
    assert_eq!(short.status.code(), Some(2), "{}", stderr(&short));
    let out = agent.cli_stdin(&["manager", "hash-pin", "--manager", "boss"], "8642\n").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.starts_with("boss $argon2id$v=19$"), "{line}");
    assert!(!line.contains("8642"), "{line}");
    agent.write_secret("managers", &line);
    let check = agent.cli(&["check-config"]).await;
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(String::from_utf8_lossy(&check.stdout).contains("managers:     1"), "{}", stderr(&check));

    // A bad line is a config error naming its number, never the hash.
    agent.write_secret("managers", &format!("# ok\n{line}boss2 $argon2id$v=19$broken\n"));
    let bad = agent.cli(&["check-config"]).await;
    assert_ne!(bad.status.code(), Some(0));
    let text = stderr(&bad);
    assert!(text.contains("line 3"), "{text}");
    assert!(!text.contains("broken"), "{text}");

    agent.write_secret("managers", &line);
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let boss = json!({"manager": "boss", "pin": "8642"});
    let (status, answer) = post(&agent, "/v1/refunds", &large(Some(boss))).await;
    assert_eq!(status, 201, "{answer}");
}
