//! End-to-end: the real binary, a real SQLite file, and a Final POS sandbox on a loopback port.

mod common;

use common::*;
use refund_agent::sandbox::{Fault, FinalPosSandbox};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_refund_arrives_once_with_the_seed_fields() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    let receipt = agent.dir.path().join("receipt.json");
    std::fs::write(&receipt, RECEIPT).unwrap();
    let out = agent.cli(&["receipt", "add", path_str(&receipt)]).await;
    assert!(out.status.success(), "{}", stderr(&out));

    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let done = agent.wait_state(&id, "delivered").await;
    assert_eq!(done.deliveries[0].remote_id.as_deref(), Some("fp_rfd_1"));

    let refunds = fp.refunds();
    assert_eq!(refunds.len(), 1, "exactly one refund record: {refunds:?}");
    let r = &refunds[0];
    assert_eq!(r["externalId"], id.as_str());
    assert_eq!(r["orderId"], "507f1f77bcf86cd799439013");
    assert_eq!(r["sessionId"], "507f1f77bcf86cd799439012");
    assert_eq!(r["currency"], "USD");
    assert_eq!(r["reason"], "Customer returned item");
    // An amount-only refund: no lines, and the till's operator (no Final POS user mapped) only
    // as the external id.
    assert_eq!(r["refundedByExternalId"], "emp_42");
    assert!(r.get("refundedBy").is_none(), "{r}");
    assert_eq!(r["lineItems"], serde_json::json!([]));
    assert_eq!(r["summary"]["total"], "5.00");
    assert_eq!(r["payment"][0]["transactionId"], "txn_123");
    assert_eq!(r["balance"], "95.00");
    let txns = fp.transactions();
    assert_eq!(txns.len(), 1);
    assert_eq!(txns[0]["type"], "refund");
    assert_eq!(txns[0]["refundId"], "fp_rfd_1");
    assert_eq!(txns[0]["externalId"], id.as_str());
    assert_eq!(fp.seen().len(), 2, "one refund request and one transaction request: {:?}", fp.seen());

    let show = agent.cli(&["refunds", "show", &id]).await;
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("delivered") && text.contains("fp_rfd_1"), "{text}");
    assert_eq!(agent.terminate().await.code(), Some(0), "SIGTERM exits 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_refunds_are_refused_clearly_and_store_nothing() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;

    let cases: &[(&str, &[&str], &str)] = &[
        ("150.00", &[], "over_refund"),
        ("1e3", &[], "invalid_amount"),
        ("-5", &[], "invalid_amount"),
        ("0.001", &[], "invalid_amount"),
        ("abc", &[], "invalid_amount"),
    ];
    for (amount, extra, code) in cases {
        let out = cli_refund(&agent, amount, extra).await;
        assert_eq!(out.status.code(), Some(3), "{amount}: {}", stderr(&out));
        assert!(stderr(&out).contains(code), "{amount}: expected {code} in {:?}", stderr(&out));
    }
    let unknown = agent
        .cli(&[
            "refund",
            "create",
            "--receipt",
            "RCP-NOPE",
            "--amount",
            "5",
            "--reason",
            "r",
            "--operator",
            "o",
        ])
        .await;
    assert_eq!(unknown.status.code(), Some(3));
    assert!(
        stderr(&unknown).contains("unknown_sale") && stderr(&unknown).contains("RCP-NOPE"),
        "{}",
        stderr(&unknown)
    );

    // A missing field: the CLI refuses before sending, and the API names the field.
    let missing =
        agent.cli(&["refund", "create", "--receipt", "RCP-2025-001", "--amount", "5", "--reason", "r"]).await;
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("--operator"), "{}", stderr(&missing));
    let body = br#"{"receipt_id":"RCP-2025-001","reason":"r","operator":"o"}"#.to_vec();
    let a = agent.client().request("POST", "/v1/refunds", Some(body), &[]).await.unwrap();
    assert_eq!(a.status, 400);
    // Without `lines` an amount is needed; the refusal names both.
    let text = String::from_utf8_lossy(&a.body);
    assert!(text.contains("`amount`") && text.contains("`lines`"), "{text}");

    assert!(agent.list().await.is_empty(), "nothing stored");
    assert!(fp.seen().is_empty(), "nothing sent");
    let count: i64 = rusqlite::Connection::open(agent.db_path())
        .unwrap()
        .query_row("SELECT (SELECT COUNT(*) FROM refunds) + (SELECT COUNT(*) FROM deliveries)", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(count, 0, "no row in the database file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_failures_then_success_delivers_exactly_once() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    fp.inject(Fault::Status(503, None), 4);
    fp.inject(Fault::Status(429, Some(0)), 1);
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let done = agent.wait_state(&id, "delivered").await;
    assert_eq!(done.deliveries[0].attempts, 6, "{done:?}");
    assert_eq!(fp.refunds().len(), 1);
    assert_eq!(fp.transactions().len(), 1);
    let statuses: Vec<u16> = fp.seen().iter().map(|s| s.status).collect();
    assert_eq!(statuses, [503, 503, 503, 503, 429, 201, 201]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_commit_and_delivery_then_restart_delivers_once() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    fp.go_offline().await;
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    agent.kill9().await;

    fp.go_online().await.unwrap();
    agent.start().await;
    agent.wait_state(&id, "delivered").await;
    assert_eq!(fp.refunds().len(), 1);
    assert_eq!(fp.transactions().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_the_request_is_in_flight_is_resent_and_deduplicated() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    fp.inject(Fault::CommitThenHang, 1);
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    // Final POS has stored the refund but its answer never comes: the agent dies waiting.
    eventually("Final POS to store the refund", DEADLINE, || async {
        (fp.refunds().len() == 1).then_some(())
    })
    .await;
    agent.kill9().await;

    agent.start().await;
    let done = agent.wait_state(&id, "delivered").await;
    assert_eq!(fp.refunds().len(), 1, "the resend was recognised (409), not stored twice");
    assert_eq!(fp.transactions().len(), 1);
    assert!(fp.seen().iter().any(|s| s.status == 409), "{:?}", fp.seen());
    assert!(agent.logs().contains("recovered deliveries"), "recovery is logged");
    assert_eq!(done.deliveries[0].state, "delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_edited_behind_the_agents_back_is_quarantined_and_never_sent() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    fp.go_offline().await;
    let mut agent = Agent::new(&fp.url(), "");
    // After its first failed attempt the refund waits (a long backoff) until the probe sees the
    // sandbox again, so the edit below cannot race a request already verified and in flight.
    agent.start_parked().await;
    agent.add_receipt(RECEIPT).await;
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    agent.wait_first_failure(&id).await;

    // Someone with file access raises the amount while the agent runs.
    let db = rusqlite::Connection::open(agent.db_path()).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    let changed = db
        .execute("UPDATE refunds SET amount = '50.00', body = replace(body, '\"5.00\"', '\"50.00\"') WHERE id = ?1", [&id])
        .unwrap();
    assert_eq!(changed, 1);
    drop(db);

    fp.go_online().await.unwrap();
    eventually("the worker to quarantine the refund", DEADLINE, || async {
        let a = agent.client().request("GET", "/v1/status", None, &[]).await.ok()?;
        let v: serde_json::Value = serde_json::from_slice(&a.body).ok()?;
        (v["queue"]["quarantined"] == 1).then_some(())
    })
    .await;
    let shown = agent.refund(&id).await.unwrap();
    assert_eq!(shown.state, "quarantined");
    assert!(shown.quarantine_reason.unwrap().contains("seal"));
    assert!(fp.seen().is_empty(), "nothing altered is sent: {:?}", fp.seen());
    let status = agent.cli(&["status"]).await;
    assert!(String::from_utf8_lossy(&status.stdout).contains("QUARANTINED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_seal_key_or_damaged_file_refuses_to_start() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.terminate().await;

    let key = agent.dir.path().join("seal.key");
    std::fs::write(&key, "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff").unwrap();
    let out = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&agent.config)
        .arg("run")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("different seal key"), "{}", stderr(&out));

    std::fs::write(
        agent.db_path(),
        b"this is not a database, it was overwritten by accident ......................................",
    )
    .unwrap();
    let out = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&agent.config)
        .arg("run")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_names_the_problem() {
    let agent = Agent::new("http://127.0.0.1:9", "");
    let out = agent.cli(&["check-config"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::set_permissions(
        agent.dir.path().join("finalpos.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let out = agent.cli(&["check-config"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("finalpos.key") && stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    std::fs::write(
        &agent.config,
        std::fs::read_to_string(&agent.config).unwrap() + "\n[limits]\nmax_refnd = \"5\"\n",
    )
    .unwrap();
    let out = agent.cli(&["check-config"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("max_refnd"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_pos_commits_then_drops_the_connection_and_the_resend_is_recognised() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    fp.inject(Fault::CommitThenDrop, 1);
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    agent.wait_state(&id, "delivered").await;
    assert_eq!(fp.refunds().len(), 1, "stored once although it was sent twice");
    assert_eq!(fp.transactions().len(), 1);
    let statuses: Vec<u16> = fp.seen().iter().map(|s| s.status).collect();
    assert_eq!(statuses, [201, 409, 201], "the resend is answered 409 and counts as delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_or_truncated_queue_is_never_replaced_by_an_empty_one() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    fp.go_offline().await;
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    created_id(&cli_refund(&agent, "5.00", &[]).await);
    assert_eq!(agent.terminate().await.code(), Some(0));

    let db = agent.db_path();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::write(&db, b"").unwrap();
    let run = || tokio::process::Command::new(BIN).arg("--config").arg(&agent.config).arg("run").output();
    let out = run().await.unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("refusing to start empty"), "{}", stderr(&out));

    std::fs::remove_file(&db).unwrap();
    let out = run().await.unwrap();
    assert!(!out.status.success(), "a deleted queue is refused too");
    assert!(stderr(&out).contains("refusing to start empty"), "{}", stderr(&out));
}
