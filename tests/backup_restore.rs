//! End-to-end: `backup` and `restore` with the real binary, a real SQLite file and the card
//! gateway sandbox (a destination that moves money and does not deduplicate). An older copy of
//! the queue put back by hand must not start (it would pay again what was delivered after the
//! copy was taken); through `restore` it starts, with what it could not know marked `unknown`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use refund_agent::sandbox::{FinalPosSandbox, GatewaySandbox};
use tokio::process::Command;

const TOKEN: &str = "gw-test-token";
const OTHER_KEY: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

/// `refund-agent run` that is expected to refuse: its output once it has exited. An agent that
/// starts instead never exits, and the deadline fails the test.
async fn run_refused(agent: &Agent) -> Output {
    let run = Command::new(BIN).arg("--config").arg(&agent.config).arg("run").kill_on_drop(true).output();
    tokio::time::timeout(DEADLINE, run).await.expect("the agent refuses and exits").expect("run the agent")
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// Puts `copy` in place of the agent's queue by hand, as a technician copying files would.
fn put_back_by_hand(agent: &Agent, copy: &Path) {
    let db = agent.db_path();
    fs::copy(copy, &db).expect("copy over queue.db");
    for suffix in ["-wal", "-shm"] {
        let side = db.with_file_name(format!("queue.db{suffix}"));
        if side.exists() {
            fs::remove_file(side).expect("remove the WAL files");
        }
    }
}

/// The card gateway sandbox, offline, holding the example sale's payment, and an agent started
/// on it with the example receipt registered.
async fn offline_gateway_agent() -> (GatewaySandbox, Agent) {
    let gw = GatewaySandbox::start(TOKEN).await.expect("gateway sandbox");
    gw.add_payment("882", "100.00".parse().expect("an amount"), "90.00".parse().expect("an amount"));
    gw.go_offline().await;
    let mut agent = gateway_agent(&gw.url(), TOKEN, "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    (gw, agent)
}

async fn backup(agent: &Agent, path: &Path) -> Output {
    agent.cli(&["backup", path_str(path)]).await
}

/// A Final POS sandbox and an agent on it with the example receipt, backed up to `backup.db` in
/// its state directory; the agent still runs.
async fn backed_up_final_pos_agent() -> (FinalPosSandbox, Agent, PathBuf) {
    let fp = FinalPosSandbox::start(API_KEY).await.expect("sandbox");
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let copy = agent.dir.path().join("backup.db");
    assert!(backup(&agent, &copy).await.status.success());
    (fp, agent, copy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_copy_is_refused_by_hand_and_restored_as_unknown_without_paying_twice() {
    let (gw, mut agent) = offline_gateway_agent().await;
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    eventually("the gateway to have been tried", DEADLINE, || async {
        agent
            .refund(&id)
            .await
            .filter(|r| r.deliveries[0].attempts >= 1 && r.deliveries[0].state == "pending")
    })
    .await;

    // The copy is taken while the refund waits for the gateway.
    let copy = agent.dir.path().join("backup.db");
    let out = backup(&agent, &copy).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode(&copy), 0o600, "the backup holds refunds and card references");
    let again = backup(&agent, &copy).await;
    assert_eq!(again.status.code(), Some(2), "an existing backup is not replaced without --force");
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));

    gw.go_online().await.expect("gateway back");
    agent.wait_state(&id, "delivered").await;
    assert_eq!(gw.seen().len(), 1);
    assert_eq!(agent.terminate().await.code(), Some(0));

    put_back_by_hand(&agent, &copy);
    let refused = run_refused(&agent).await;
    assert_eq!(refused.status.code(), Some(7), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("refund-agent restore"), "{}", stderr(&refused));

    let restored = agent.cli(&["restore", path_str(&copy)]).await;
    assert!(restored.status.success(), "{}", stderr(&restored));
    let said = String::from_utf8_lossy(&restored.stdout).to_string();
    assert!(said.contains("1 deliveries are now unknown") && said.contains(&id), "{said}");
    let previous = agent.db_path().with_file_name("queue.db.pre-restore");
    assert!(previous.exists(), "the replaced queue is kept");

    agent.start().await;
    let shown = agent.wait_state(&id, "unknown").await;
    let error = shown.deliveries[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("restored from a backup") && error.contains("resolve by hand"), "{error}");
    let status = agent.cli(&["status", "--json"]).await;
    assert!(status.status.success(), "the restored queue answers: {}", stderr(&status));
    assert_eq!(gw.seen().len(), 1, "the card was refunded once: {:?}", gw.seen());
    assert_eq!(gw.refunds().len(), 1);
    assert_eq!(agent.terminate().await.code(), Some(0));

    // Neither the queue the restore replaced nor the copy itself can be put back by hand now.
    for older in [&previous, &copy] {
        put_back_by_hand(&agent, older);
        let refused = run_refused(&agent).await;
        assert_eq!(refused.status.code(), Some(7), "{}: {}", older.display(), stderr(&refused));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_is_refused_while_the_agent_runs() {
    let (_fp, mut agent, copy) = backed_up_final_pos_agent().await;
    let out = agent.cli(&["restore", path_str(&copy)]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("the agent is running"), "{}", stderr(&out));
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    agent.wait_state(&id, "delivered").await;
    assert_eq!(agent.terminate().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_sealed_under_another_key_is_refused_and_nothing_changes() {
    let (fp, mut first, copy) = backed_up_final_pos_agent().await;
    assert_eq!(first.terminate().await.code(), Some(0));

    let mut other = Agent::new(&fp.url(), "");
    other.write_secret("seal.key", OTHER_KEY);
    other.start().await;
    assert_eq!(other.terminate().await.code(), Some(0));
    let before = fs::read(other.db_path()).expect("queue");
    let out = other.cli(&["restore", path_str(&copy)]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("different seal key"), "{}", stderr(&out));
    assert_eq!(fs::read(other.db_path()).expect("queue"), before, "the queue was left alone");
    other.start().await;
    assert_eq!(other.terminate().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_refunds_arrive_is_consistent_and_restores() {
    let fp = FinalPosSandbox::start(API_KEY).await.expect("sandbox");
    fp.go_offline().await;
    let mut agent = Agent::new(&fp.url(), "");
    agent.start().await;
    agent.add_receipt(RECEIPT).await;
    let client = agent.client();
    let writer = tokio::spawn(async move {
        for i in 0..40 {
            let body = format!(
                r#"{{"receipt_id":"RCP-2025-001","amount":"0.{:02}","reason":"r","operator":"emp_42"}}"#,
                i + 1
            );
            let a = client
                .request(
                    "POST",
                    "/v1/refunds",
                    Some(body.into_bytes()),
                    &[("idempotency-key", &format!("k-{i}"))],
                )
                .await
                .expect("agent answers");
            assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
        }
    });
    let mut copies = Vec::new();
    for n in 0..3 {
        let copy = agent.dir.path().join(format!("backup-{n}.db"));
        let out = backup(&agent, &copy).await;
        assert!(out.status.success(), "{}", stderr(&out));
        copies.push(copy);
    }
    writer.await.expect("every refund was taken");

    for copy in &copies {
        let conn = rusqlite::Connection::open_with_flags(copy, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the copy");
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("check");
        assert_eq!(check, "ok");
        let refunds: i64 = conn.query_row("SELECT COUNT(*) FROM refunds", [], |r| r.get(0)).expect("count");
        drop(conn);
        // A fresh installation with the same key restores it: every seal and count verifies.
        let mut elsewhere = Agent::new(&fp.url(), "");
        let out = elsewhere.cli(&["restore", path_str(copy)]).await;
        assert!(out.status.success(), "{}: {}", copy.display(), stderr(&out));
        assert_eq!(
            fs::read_dir(copy.parent().expect("dir"))
                .expect("dir")
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(".refund-agent-backup-"))
                .count(),
            0,
            "no temporary file is left behind"
        );
        elsewhere.start().await;
        assert_eq!(elsewhere.list().await.len() as i64, refunds, "{}", copy.display());
        assert!(
            elsewhere.list().await.iter().all(|r| r.state == "queued"),
            "Final POS deduplicates: pending again"
        );
        assert_eq!(elsewhere.terminate().await.code(), Some(0));
    }
    assert_eq!(agent.terminate().await.code(), Some(0));
}

/// A restore over a queue that is intact and current keeps it: a refund delivered after the
/// copy was taken stays delivered (not `unknown`), and a refund made after it keeps its
/// idempotency key, so the kiosk repeating that request gets the same refund and the card is
/// refunded once. (Built on the copy alone, the key was forgotten and the repeat paid again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_over_the_current_queue_forgets_no_refund_and_no_key() {
    let (gw, mut agent) = offline_gateway_agent().await;
    let early = created_id(&cli_refund(&agent, "5.00", &[]).await);
    let copy = agent.dir.path().join("backup.db");
    assert!(backup(&agent, &copy).await.status.success());

    gw.go_online().await.expect("gateway back");
    agent.wait_state(&early, "delivered").await;
    let key = ["--idempotency-key", "kiosk-req-7"];
    let late = created_id(&cli_refund(&agent, "7.00", &key).await);
    agent.wait_state(&late, "delivered").await;
    assert_eq!(gw.seen().len(), 2);
    assert_eq!(agent.terminate().await.code(), Some(0));

    let restored = agent.cli(&["restore", path_str(&copy)]).await;
    assert!(restored.status.success(), "{}", stderr(&restored));
    let said = String::from_utf8_lossy(&restored.stdout).to_string();
    assert!(said.contains("intact and current") && said.contains("0 refund(s) only the copy knew"), "{said}");
    assert!(said.contains("0 deliveries are now unknown"), "{said}");

    agent.start().await;
    assert_eq!(agent.refund(&early).await.expect("kept").state, "delivered");
    assert_eq!(agent.refund(&late).await.expect("kept").state, "delivered");
    let repeat = cli_refund(&agent, "7.00", &key).await;
    assert_eq!(created_id(&repeat), late, "the repeated request names the refund it made");
    assert_eq!(agent.list().await.len(), 2);
    // The sale's balance still counts both refunds: 100.00 - 12.00 is all that is left.
    let over = cli_refund(&agent, "88.01", &[]).await;
    assert!(!over.status.success(), "more than the balance is refused");
    assert_eq!(gw.seen().len(), 2, "each refund reached the gateway once: {:?}", gw.seen());
    assert_eq!(agent.terminate().await.code(), Some(0));
    let previous = agent.db_path().with_file_name("queue.db.pre-restore");
    put_back_by_hand(&agent, &previous);
    assert_eq!(run_refused(&agent).await.status.code(), Some(7), "the replaced file is older now");
}

/// The wrong, older backup restored first (the queue lost with the disk), then the right one:
/// the refund only the right copy holds is carried into the queue the first restore made, as
/// `unknown` at the gateway (the copy cannot know whether it went out), with its key and its
/// share of the sale's balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_only_the_copy_knew_is_carried_over_with_its_key() {
    let (gw, mut agent) = offline_gateway_agent().await;
    let older = agent.dir.path().join("older.db");
    assert!(backup(&agent, &older).await.status.success());
    let key = ["--idempotency-key", "kiosk-req-9"];
    let id = created_id(&cli_refund(&agent, "60.00", &key).await);
    let right = agent.dir.path().join("right.db");
    assert!(backup(&agent, &right).await.status.success());
    assert_eq!(agent.terminate().await.code(), Some(0));

    for side in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(agent.db_path().with_file_name(format!("queue.db{side}")));
    }
    let first = agent.cli(&["restore", path_str(&older)]).await;
    assert!(first.status.success(), "{}", stderr(&first));
    agent.start().await;
    assert!(agent.refund(&id).await.is_none(), "the older copy never had it");
    assert_eq!(agent.terminate().await.code(), Some(0));

    let second = agent.cli(&["restore", path_str(&right)]).await;
    assert!(second.status.success(), "{}", stderr(&second));
    let said = String::from_utf8_lossy(&second.stdout).to_string();
    assert!(said.contains("1 refund(s) only the copy knew") && said.contains(&id), "{said}");
    gw.go_online().await.expect("gateway back");
    agent.start().await;
    let shown = agent.wait_state(&id, "unknown").await;
    assert!(shown.deliveries[0].last_error.as_deref().unwrap_or_default().contains("resolve by hand"));
    assert_eq!(created_id(&cli_refund(&agent, "60.00", &key).await), id, "the key came with it");
    let over = cli_refund(&agent, "40.01", &[]).await;
    assert!(!over.status.success(), "the carried refund counts against the sale");
    assert!(gw.seen().is_empty(), "an unknown refund is never sent: {:?}", gw.seen());
    assert_eq!(agent.terminate().await.code(), Some(0));
}

/// A damaged queue is not silently replaced: what only it knew would be forgotten. With
/// `--discard-current` the copy goes in, and the output says what the restored queue lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_current_queue_is_replaced_only_when_asked() {
    let (_fp, mut agent, copy) = backed_up_final_pos_agent().await;
    assert_eq!(agent.terminate().await.code(), Some(0));
    let db = agent.db_path();
    let mut bytes = fs::read(&db).expect("queue");
    // Past the header: the pages the tables live on.
    bytes.truncate(4096);
    bytes.resize(12288, 0x5a);
    fs::write(&db, &bytes).expect("damage the queue");

    let refused = agent.cli(&["restore", path_str(&copy)]).await;
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("--discard-current"), "{}", stderr(&refused));
    assert_eq!(fs::read(&db).expect("queue"), bytes, "nothing was changed");

    let done = agent.cli(&["restore", "--discard-current", path_str(&copy)]).await;
    assert!(done.status.success(), "{}", stderr(&done));
    let said = String::from_utf8_lossy(&done.stdout).to_string();
    assert!(said.contains("was not used") && said.contains("damaged"), "{said}");
    agent.start().await;
    let id = created_id(&cli_refund(&agent, "5.00", &[]).await);
    agent.wait_state(&id, "delivered").await;
    assert_eq!(agent.terminate().await.code(), Some(0));
}

/// A newer copy put back by hand (refused at start), then the wrong, older backup restored over
/// it: the replaced file is older than the last run, so the copy goes in, but what only that
/// file knew (a refund and its key) is carried into it, marked `unknown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_only_an_older_replaced_queue_knew_is_carried_into_the_copy() {
    let (gw, mut agent) = offline_gateway_agent().await;
    let oldest = agent.dir.path().join("oldest.db");
    assert!(backup(&agent, &oldest).await.status.success());
    let key = ["--idempotency-key", "kiosk-req-11"];
    let id = created_id(&cli_refund(&agent, "30.00", &key).await);
    let newer = agent.dir.path().join("newer.db");
    assert!(backup(&agent, &newer).await.status.success());
    created_id(&cli_refund(&agent, "1.00", &[]).await);
    assert_eq!(agent.terminate().await.code(), Some(0));

    put_back_by_hand(&agent, &newer);
    assert_eq!(run_refused(&agent).await.status.code(), Some(7));
    let out = agent.cli(&["restore", path_str(&oldest)]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains("knew no more than a copy") && said.contains("1 refund(s) only it knew"), "{said}");
    assert!(said.contains(&id), "the carried refund is one to check: {said}");

    gw.go_online().await.expect("gateway back");
    agent.start().await;
    agent.wait_state(&id, "unknown").await;
    assert_eq!(created_id(&cli_refund(&agent, "30.00", &key).await), id, "its key answers");
    assert!(!cli_refund(&agent, "70.01", &[]).await.status.success(), "it counts against the sale");
    assert!(gw.seen().is_empty(), "nothing was sent: {:?}", gw.seen());
    assert_eq!(agent.terminate().await.code(), Some(0));
}
