//! Storage faults on a real, small filesystem: a tmpfs mounted over the agent's state directory
//! and filled up with a filler file. A full disk refuses new refunds with `storage_full`, stores
//! nothing half-written, keeps the outcomes of requests already made until it can record them
//! (sending nothing again meanwhile), and recovers by itself when space returns.
//!
//! A damaged or truncated queue file is refused at start: see `refund_flow.rs`.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use common::*;
use refund_agent::control::api::StatusBody;
use refund_agent::queue::RefundView;
use refund_agent::sandbox::{Fault, FinalPosSandbox};

/// Big enough for the WAL to reach its checkpoint size (1000 pages) before the disk fills by
/// itself, small enough to fill in an instant.
const TMPFS_KIB: u64 = 8 * 1024;

/// A tmpfs mounted for the life of the value. Unmounted lazily on drop, so that cleanup happens
/// even when the test fails while the agent still has files open there.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `kib` KiB at `path`; fails the test, saying why, when it cannot.
    fn mount(path: &Path, kib: u64) -> Tmpfs {
        fs::create_dir_all(path).expect("mount point");
        let out = StdCommand::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k,mode=0700"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs a small filesystem to fill: it mounts a tmpfs, which takes root (or \
             CAP_SYS_ADMIN, e.g. in a container started with it). `mount` said: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { path: path.to_path_buf() }
    }

    fn filler(&self) -> PathBuf {
        self.path.join("filler")
    }

    /// Appends to the filler file until not one more byte fits.
    fn fill(&self) {
        let mut f = fs::OpenOptions::new().create(true).append(true).open(self.filler()).expect("filler");
        for chunk in [64 * 1024, 4096, 1] {
            let zeros = vec![0u8; chunk];
            while f.write_all(&zeros).is_ok() {}
        }
        let free = nix::sys::statvfs::statvfs(&self.path).expect("statvfs").blocks_available();
        assert_eq!(free, 0, "the tmpfs should be full");
    }

    fn make_room(&self) {
        fs::remove_file(self.filler()).expect("remove the filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = StdCommand::new("umount").arg("-l").arg(&self.path).status();
    }
}

const DRAFT: &str =
    r#"{"receipt_id":"RCP-2025-001","amount":"1.00","reason":"Customer returned item","operator":"emp_42"}"#;

/// `POST /v1/refunds` with an idempotency key: status and JSON body.
async fn post_refund(agent: &Agent, key: &str) -> (u16, serde_json::Value) {
    let a = agent
        .client()
        .request("POST", "/v1/refunds", Some(DRAFT.as_bytes().to_vec()), &[("idempotency-key", key)])
        .await
        .expect("an answer");
    (a.status, serde_json::from_slice(&a.body).expect("JSON"))
}

async fn get_json(agent: &Agent, path: &str) -> (u16, String) {
    let a = agent.client().request("GET", path, None, &[]).await.expect("an answer");
    (a.status, String::from_utf8_lossy(&a.body).to_string())
}

/// A `GET` during a full disk. Reads work, but one that shares a group-commit batch with a
/// write that fails is refused too (it may have seen that write), so it is asked again.
async fn read(agent: &Agent, path: &str) -> String {
    eventually(&format!("GET {path} to answer 200"), DEADLINE, || async {
        let (status, body) = get_json(agent, path).await;
        (status == 200).then_some(body)
    })
    .await
}

async fn read_refund(agent: &Agent, id: &str) -> RefundView {
    serde_json::from_str(&read(agent, &format!("/v1/refunds/{id}")).await).expect("refund JSON")
}

/// How many times the agent logged that it could not record an outcome for `id`.
fn unrecorded(agent: &Agent, id: &str) -> usize {
    agent.logs().lines().filter(|l| l.contains("keeping it and trying again") && l.contains(id)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_cleanly_keeps_outcomes_and_recovers_without_a_restart() {
    let fp = FinalPosSandbox::start(API_KEY).await.unwrap();
    let mut agent = Agent::new(&fp.url(), "");
    let tmpfs = Tmpfs::mount(&agent.dir.path().join("state"), TMPFS_KIB);
    agent.start().await;
    agent.add_receipt(RECEIPT).await;

    // Acknowledged refunds, by id; every one must end delivered exactly once.
    let mut acknowledged = Vec::new();
    let (status, body) = post_refund(&agent, "before").await;
    assert_eq!(status, 201, "{body}");
    acknowledged.push(body["id"].as_str().expect("id").to_string());
    agent.wait_state(&acknowledged[0], "delivered").await;

    // Three refunds whose first request reaches Final POS (which stores it) and then gets no
    // answer until the agent's request timeout (5 s): their outcome comes while the disk is
    // full. A fourth is answered 503 with `Retry-After: 3`: it is due again while the disk is
    // full, and claiming it cannot be stored.
    fp.inject(Fault::CommitThenHang, 3);
    fp.inject(Fault::Status(503, Some(3)), 1);
    let mut early = Vec::new();
    for key in ["early-1", "early-2", "early-3", "early-4"] {
        let (status, body) = post_refund(&agent, key).await;
        assert_eq!(status, 201, "{body}");
        early.push(body["id"].as_str().expect("id").to_string());
    }
    acknowledged.extend(early.iter().cloned());
    let sent = |id: &str| fp.seen().iter().filter(|s| s.external_id.as_deref() == Some(id)).count();
    eventually("the four requests to reach Final POS", DEADLINE, || async {
        early.iter().all(|id| sent(id) == 1).then_some(())
    })
    .await;
    let answered_503 =
        |id: &String| fp.seen().iter().any(|s| s.external_id.as_ref() == Some(id) && s.status == 503);
    let (waiting, hung): (Vec<String>, Vec<String>) = early.iter().cloned().partition(answered_503);
    assert_eq!((waiting.len(), hung.len()), (1, 3), "{:?}", fp.seen());
    let waiting = &waiting[0];
    agent.wait_first_failure(waiting).await;

    // Filled to the last page: no write the queue makes from now on can fit, so recording the
    // outcomes of the three requests must fail (the WAL has not been reset yet, so it has no
    // room of its own either).
    tmpfs.fill();
    let filled = std::time::Instant::now();

    eventually("an outcome to fail to be recorded twice", DEADLINE, || async {
        hung.iter().any(|id| unrecorded(&agent, id) >= 2).then_some(())
    })
    .await;
    for id in &hung {
        let r = read_refund(&agent, id).await;
        assert_eq!(r.deliveries[0].state, "in_flight", "{id}: not recorded, not claimed again");
    }
    for id in &hung {
        assert_eq!(sent(id), 1, "{id}: nothing is sent again while its outcome is not on disk");
    }
    let claim_failures = || agent.logs().matches("cannot claim deliveries").count();
    eventually("claiming the due refund to fail twice", DEADLINE, || async {
        (claim_failures() >= 2).then_some(())
    })
    .await;
    let r = read_refund(&agent, waiting).await;
    assert_eq!((r.deliveries[0].state.as_str(), r.deliveries[0].attempts), ("pending", 1), "not claimed");
    assert_eq!(sent(waiting), 1, "a delivery that could not be claimed is not sent");

    // New refunds are refused with a clear answer, through the API and the CLI.
    let (status, body) = post_refund(&agent, "refused").await;
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["code"], "storage_full", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("not stored") && message.contains("free disk space"), "{message}");
    let out = cli_refund(&agent, "1.00", &[]).await;
    assert_eq!(out.status.code(), Some(1), "storage errors exit 1 (README): {}", stderr(&out));
    assert!(stderr(&out).contains("storage_full"), "{}", stderr(&out));
    assert!(stderr(&out).contains("free disk space"), "{}", stderr(&out));

    // Nothing of the refused refunds is stored; health, status and metrics say what is wrong.
    let list: Vec<RefundView> = serde_json::from_str(&read(&agent, "/v1/refunds?limit=10000").await).unwrap();
    let ids: Vec<String> = list.into_iter().map(|r| r.id).collect();
    assert_eq!(sorted(&ids), sorted(&acknowledged), "only acknowledged refunds are in the queue");
    // Still 200: the agent is alive, and a restart would not help.
    let health = read(&agent, "/healthz").await;
    assert!(health.contains("degraded") && health.contains("storage is full"), "{health}");
    let status_json = read(&agent, "/v1/status").await;
    let s: StatusBody = serde_json::from_str(&status_json).expect("status JSON");
    assert!(s.queue.storage.failing, "{status_json}");
    assert!(s.queue.storage.write_failures >= 3, "{status_json}");
    let metrics = read(&agent, "/metrics").await;
    assert!(metrics.lines().any(|l| l == "refund_agent_storage_failing 1"), "{metrics}");
    let text = eventually("`refund-agent status` to answer", DEADLINE, || async {
        let out = agent.cli(&["status"]).await;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).to_string())
    })
    .await;
    assert!(text.contains("STORAGE:      FAILING"), "{text}");

    // Claiming backs off (100 ms doubling to 5 s): a busy loop would log thousands a second.
    let bound = 10 + 2 * filled.elapsed().as_secs() as usize;
    assert!(claim_failures() <= bound, "{} claim failures in {:?}", claim_failures(), filled.elapsed());

    // Space returns: without a restart, the kept outcomes are recorded, the hung refunds are
    // sent again (Final POS deduplicates on the refund id) and new refunds are accepted.
    tmpfs.make_room();
    for id in &early {
        agent.wait_state(id, "delivered").await;
    }
    let (status, body) = post_refund(&agent, "refused").await;
    assert_eq!(status, 201, "the refused request, sent again with its key, is stored now: {body}");
    acknowledged.push(body["id"].as_str().expect("id").to_string());
    acknowledged.push(created_id(&cli_refund(&agent, "1.00", &[]).await));
    for id in &acknowledged {
        agent.wait_state(id, "delivered").await;
    }

    // Exactly once at Final POS: one refund record and one transaction record per refund.
    let by_id = |records: Vec<serde_json::Value>| {
        let mut n: HashMap<String, usize> = HashMap::new();
        for r in records {
            *n.entry(r["externalId"].as_str().unwrap_or_default().to_string()).or_default() += 1;
        }
        n
    };
    let refunds = by_id(fp.refunds());
    let transactions = by_id(fp.transactions());
    for id in &acknowledged {
        assert_eq!(refunds.get(id), Some(&1), "{id}: one refund record");
        assert_eq!(transactions.get(id), Some(&1), "{id}: one transaction record");
    }
    assert_eq!(refunds.len(), acknowledged.len(), "no refund record for a refused refund");
    for id in &hung {
        let statuses: Vec<u16> = fp
            .seen()
            .iter()
            .filter(|s| s.external_id.as_deref() == Some(id) && s.path.ends_with("/refunds"))
            .map(|s| s.status)
            .collect();
        assert_eq!(statuses, [201, 409], "{id}: the resend after recovery is the only one");
    }
    let (_, health) = get_json(&agent, "/healthz").await;
    assert!(health.contains("\"ok\""), "{health}");

    // On disk: whole refunds only, each with its one delivery, and an intact file.
    assert_eq!(agent.terminate().await.code(), Some(0));
    let db =
        rusqlite::Connection::open_with_flags(agent.db_path(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the queue");
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let count = |sql: &str| db.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    assert_eq!(count("SELECT COUNT(*) FROM refunds") as usize, acknowledged.len());
    assert_eq!(
        count("SELECT COUNT(*) FROM deliveries WHERE state = 'delivered'") as usize,
        acknowledged.len()
    );
    assert_eq!(count("SELECT COUNT(*) FROM deliveries") as usize, acknowledged.len());
    drop(db);
    drop(tmpfs);
}

fn sorted(ids: &[String]) -> Vec<String> {
    let mut v = ids.to_vec();
    v.sort();
    v
}
