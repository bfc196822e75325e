use std::time::{Duration, Instant};

use super::*;
use crate::queue::{AuditCaller, Recorded};
use crate::refund::Policy;
use crate::routing::{Route, Router};

fn settings() -> QueueSettings {
    let names = vec!["finalpos".to_string()];
    QueueSettings {
        policy: Policy {
            terminal_id: "t".into(),
            default_currency: "USD".parse().expect("a currency"),
            limits: crate::refund::CurrencyLimits::only("USD".parse().expect("a currency")),
            max_queue_len: None,
            allow_unlinked: false,
        },
        router: Router::new(vec![Route { processor: "*".into(), destinations: names.clone() }], names),
        max_pending_age_ms: None,
        retention_ms: None,
    }
}

fn rows(db: &Db<'_>) -> Result<Vec<String>, QueueError> {
    let mut stmt = db.conn.prepare("SELECT tag FROM scratch ORDER BY rowid")?;
    let tags = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    Ok(tags)
}

/// A queue started in a new temporary directory with the tests' key; the key is given back
/// for tests that open the queue again.
fn started() -> (tempfile::TempDir, Sealer, QueueHandle, QueueOwner) {
    let dir = tempfile::tempdir().expect("temp dir");
    let sealer = Sealer::new(vec![7; 32]).expect("a key");
    let (queue, owner) = start(dir.path(), sealer.clone(), settings()).expect("queue opens");
    (dir, sealer, queue, owner)
}

/// Stores the example sale and one refund of `amount` against it, as a till would.
async fn sale_and_refund(queue: &QueueHandle, amount: &str) {
    queue.add_sale(crate::sale::tests::example_input()).await.expect("stored").expect("a valid sale");
    another_refund(queue, amount).await;
}

/// One more refund of `amount` against the example sale.
async fn another_refund(queue: &QueueHandle, amount: &str) {
    let caller = AuditCaller::unix(1000, Some(1));
    queue
        .create_refund(crate::queue::tests::example_draft(amount), None, caller)
        .await
        .expect("stored")
        .expect("a valid refund");
}

/// Sends a job that holds the owner thread until `go` (the sender returned) is used, or 30 s
/// pass, and returns once the owner runs it; the job answers whether it was released.
async fn hold_owner(
    queue: &QueueHandle,
) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<Result<bool, QueueError>>) {
    let (started, is_started) = std::sync::mpsc::channel::<()>();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let gate = tokio::spawn({
        let queue = queue.clone();
        async move {
            queue
                .call(move |_| {
                    let _ = started.send(());
                    Ok(wait.recv_timeout(Duration::from_secs(30)).is_ok())
                })
                .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while is_started.try_recv().is_err() {
        assert!(Instant::now() < deadline, "the owner never ran the holding job");
        tokio::task::yield_now().await;
    }
    (go, gate)
}

/// SQLITE_FULL on a statement that has no statement journal makes SQLite roll back the whole
/// transaction, savepoints and all. The jobs before it must hear that they were not stored,
/// and the jobs after it must not run outside a transaction (each statement would then
/// commit on its own, and a failing job would leave half its writes behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_sqlite_rolls_back_is_reported_to_each_job_and_the_rest_run_anew() {
    let (_dir, _, queue, owner) = started();
    queue
        .call(|db| Ok(db.conn.execute_batch("CREATE TABLE scratch (tag TEXT, pad BLOB)")?))
        .await
        .expect("scratch table");

    // A first job holds the owner thread until the four others wait in the channel, so
    // that those four run as one batch.
    let (go, gate) = hold_owner(&queue).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let queued = |n: usize| {
        while queue.jobs.max_capacity() - queue.jobs.capacity() < n {
            assert!(Instant::now() < deadline, "a job was never queued");
            std::thread::yield_now();
        }
    };
    let insert = |tag: &'static str| {
        let queue = queue.clone();
        async move {
            queue
                .call(move |db| {
                    db.conn.execute("INSERT INTO scratch (tag) VALUES (?1)", [tag])?;
                    Ok(())
                })
                .await
        }
    };
    let read = tokio::spawn({
        let queue = queue.clone();
        async move { queue.call(rows).await }
    });
    queued(1);
    let before = tokio::spawn(insert("before"));
    queued(2);
    let full = tokio::spawn({
        let queue = queue.clone();
        async move {
            queue
                .call(|db| {
                    db.conn.execute("INSERT INTO scratch (tag) VALUES ('half')", [])?;
                    let pages: i64 = db.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
                    db.conn.execute_batch(&format!("PRAGMA max_page_count = {pages}"))?;
                    db.conn
                        .execute("INSERT INTO scratch (tag, pad) VALUES ('big', zeroblob(1000000))", [])?;
                    Ok(())
                })
                .await
        }
    });
    queued(3);
    let after = tokio::spawn(insert("after"));
    queued(4);
    go.send(()).expect("the first job waits");

    assert!(gate.await.expect("join").expect("the first job ran alone"), "it was released");
    let read = read.await.expect("join").expect("a read of committed data keeps its answer");
    assert!(read.is_empty());
    assert!(before.await.expect("join").is_err(), "a job whose writes were rolled back heard `stored`");
    let full = full.await.expect("join");
    assert!(matches!(full, Err(QueueError::StorageFull)), "{full:?}");
    after.await.expect("join").expect("the job after the failure runs in a new transaction");
    let stored = queue.call(rows).await.expect("rows");
    assert_eq!(stored, ["after"], "only the job of the new transaction is stored, and nothing half");
    let storage = queue.storage();
    assert_eq!(storage.write_failures, 1);
    assert!(!storage.failing, "a later successful write clears the failure: {storage:?}");
    assert!(storage.last_error.as_deref().is_some_and(|e| e.contains("storage is full")));
    drop(queue);
    owner.join();
}

/// Waits, with a deadline, until the background integrity check has finished.
async fn file_checked(queue: &QueueHandle) -> crate::queue::FileStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let file = queue.status().await.expect("status").file;
        if file.checked {
            return file;
        }
        assert!(Instant::now() < deadline, "the integrity check never finished: {file:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Start-up no longer reads every page, so a damaged page no start-up check touches is found
/// by the integrity check after start: status and metrics raise the alarm, and nothing more is
/// claimed for sending although a delivery is due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_damaged_where_start_does_not_look_stops_sending_once_checked() {
    let (dir, sealer, queue, owner) = started();
    assert!(!file_checked(&queue).await.damaged, "a fresh queue is intact");
    // One delivery was sent before the damage; its outcome comes after the check.
    let sent = two_refunds_first_claimed(&queue).await;
    drop(queue);
    owner.join();

    // A page that no b-tree and no free list holds, as a lost free-list update leaves: the
    // header's page count is raised by one and the page appended.
    let path = dir.path().join(schema::DB_FILE);
    let mut bytes = std::fs::read(&path).expect("read the file");
    let page_size = match u16::from_be_bytes([bytes[16], bytes[17]]) {
        1 => 65536,
        n => usize::from(n),
    };
    let pages = u32::from_be_bytes([bytes[28], bytes[29], bytes[30], bytes[31]]);
    bytes[28..32].copy_from_slice(&(pages + 1).to_be_bytes());
    bytes.resize(bytes.len() + page_size, 0);
    std::fs::write(&path, bytes).expect("write the file");

    let (queue, owner) = start(dir.path(), sealer, settings()).expect("the start does not read every page");
    let file = file_checked(&queue).await;
    assert!(file.damaged, "{file:?}");
    assert!(file.problem.as_deref().is_some_and(|p| p.contains("never used")), "{file:?}");
    let status = queue.status().await.expect("status");
    assert_eq!(status.deliveries["finalpos"].get("pending"), Some(&1), "{status:?}");
    let claims = queue.claim_due(8, Vec::new(), Duration::from_secs(3600)).await.expect("claim");
    assert!(claims.is_empty(), "a due delivery was claimed from a damaged file");
    let delivered = Recorded::Delivered { remote_id: None };
    let next = queue
        .record_then_claim(sent.refund.id, sent.position, delivered, Vec::new(), MAX_DELAY)
        .await
        .expect("the outcome is stored");
    assert!(next.is_none(), "a due delivery was claimed with an outcome from a damaged file");
    let status = queue.status().await.expect("status");
    assert_eq!(status.deliveries["finalpos"].get("delivered"), Some(&1), "{status:?}");
    assert_eq!(queue.next_due(Vec::new()).await.expect("next due"), None);
    drop(queue);
    owner.join();
}

/// The refund head is staged per batch: a refund rolled back in the middle of a batch gives
/// its sequence number back, the batch's head is written once, and a restart's sequence check
/// finds exactly `1..=head`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_rolled_back_inside_a_batch_gives_its_sequence_number_back() {
    let (dir, sealer, queue, owner) = started();
    queue.add_sale(crate::sale::tests::example_input()).await.expect("stored").expect("a valid sale");
    let create = |fail: bool| {
        let queue = queue.clone();
        async move {
            queue
                .call(move |db| {
                    let draft = crate::queue::tests::example_draft("1.00");
                    let caller = AuditCaller::unix(1000, Some(1));
                    let created = super::super::intake::create_refund(db, draft, None, &caller, 1)?
                        .map_err(|r| QueueError::Storage(format!("rejected: {r:?}")))?;
                    if fail {
                        return Err(QueueError::Storage("this job fails after storing".into()));
                    }
                    Ok(created.refund.id)
                })
                .await
        }
    };
    let (go, gate) = hold_owner(&queue).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    // Waits by yielding to the runtime, never by blocking its thread: a task just spawned may
    // only be able to run on this very worker.
    let queued = |n: usize| {
        let queue = queue.clone();
        async move {
            while queue.jobs.max_capacity() - queue.jobs.capacity() < n {
                assert!(Instant::now() < deadline, "a job was never queued");
                tokio::task::yield_now().await;
            }
        }
    };
    let first = tokio::spawn(create(false));
    queued(1).await;
    let failed = tokio::spawn(create(true));
    queued(2).await;
    let last = tokio::spawn(create(false));
    queued(3).await;
    go.send(()).expect("the first job waits");
    assert!(gate.await.expect("join").expect("the gate ran"));
    let first = first.await.expect("join").expect("stored");
    assert!(failed.await.expect("join").is_err(), "the failing job was answered with its error");
    let last = last.await.expect("join").expect("stored");
    let (seqs, head): (Vec<(String, i64)>, i64) = queue
        .call(|db| {
            let mut stmt = db.conn.prepare("SELECT id, seq FROM refunds ORDER BY seq")?;
            let seqs = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
            let head = db.conn.query_row("SELECT seq FROM refund_head", [], |r| r.get(0))?;
            Ok((seqs, head))
        })
        .await
        .expect("read");
    assert_eq!(seqs, [(first, 1), (last, 2)], "the rolled-back refund's number went to the next one");
    assert_eq!(head, 2);
    drop(queue);
    owner.join();
    let (queue, owner) = start(dir.path(), sealer, settings()).expect("the sequence check passes");
    drop(queue);
    owner.join();
}

/// Checkpoints run off the commit path: the owner's connection never checkpoints by itself,
/// and the WAL is still copied into the database file once it passes the threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_checkpointed_by_its_own_thread_not_by_the_commits() {
    let (dir, _, queue, owner) = started();
    let auto: i64 = queue
        .call(|db| Ok(db.conn.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))?))
        .await
        .expect("read");
    assert_eq!(auto, 0, "the commits do not checkpoint");
    queue
        .call(|db| Ok(db.conn.execute_batch("CREATE TABLE scratch (tag TEXT, pad BLOB)")?))
        .await
        .expect("scratch table");
    let db_file = dir.path().join(schema::DB_FILE);
    let before = std::fs::metadata(&db_file).expect("the file").len();
    // About 1,200 pages of new rows, one batch each: past the threshold of 1,000.
    for _ in 0..300 {
        queue
            .call(|db| {
                Ok(db.conn.execute("INSERT INTO scratch (tag, pad) VALUES ('x', zeroblob(16000))", [])?)
            })
            .await
            .expect("stored");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&db_file).expect("the file").len() < before + 1000 * 4096 {
        assert!(Instant::now() < deadline, "the WAL was never copied into the database file");
        // A PASSIVE checkpoint stops at the snapshot of a reader (the integrity check after
        // start, on its own connection); every COMMIT while the WAL is past the threshold asks
        // again, so one more small write asks for the rest.
        queue
            .call(|db| Ok(db.conn.execute("INSERT INTO scratch (tag, pad) VALUES ('y', NULL)", [])?))
            .await
            .expect("stored");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(queue);
    owner.join();
}

/// The owner counts a counted table's rows only when its connection cannot vouch for them
/// (`counts.rs`): a sale deleted by another connection while the agent runs changes the data
/// version, so the next sale counts the table, finds one missing and is refused, as at a start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_deleted_by_another_connection_while_the_queue_runs_refuses_the_next_sale() {
    let (dir, _, queue, owner) = started();
    let add = |n: u32| {
        let queue = queue.clone();
        async move {
            queue
                .call(move |db| {
                    let mut input = crate::sale::tests::example_input();
                    input.receipt_id = format!("R-{n}");
                    input.transaction_id = format!("T-{n}");
                    super::super::intake::add_sale(db, input, 0)
                })
                .await
        }
    };
    // Sales added back to back: the owner remembers the count it saw agree with the rows.
    for n in 0..3 {
        add(n).await.expect("stored").expect("accepted");
    }
    let other = Connection::open(dir.path().join(schema::DB_FILE)).expect("another connection");
    other.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
    assert_eq!(other.execute("DELETE FROM sales WHERE receipt_id = 'R-1'", []).expect("deleted"), 1);
    drop(other);
    let refused = add(3).await;
    assert!(
        matches!(&refused, Err(QueueError::Conflict(m)) if m.contains("1 sale(s) missing from table sales")),
        "{refused:?}"
    );
    drop(queue);
    owner.join();
}

/// Status is read on a connection of its own (`reader.rs`), not as a job: a status poll does
/// not wait for the owner, nor hold up the refunds behind it. It answers while a job holds the
/// owner thread, with what was committed before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_answers_while_the_owner_is_busy() {
    let (_dir, _, queue, owner) = started();
    sale_and_refund(&queue, "1.25").await;

    let (go, gate) = hold_owner(&queue).await;
    let status = tokio::time::timeout(Duration::from_secs(30), queue.status())
        .await
        .expect("status waited for the owner thread")
        .expect("status");
    assert_eq!(status.refunds.get("queued"), Some(&1), "{status:?}");
    assert_eq!(status.pending_amount.get("USD").map(String::as_str), Some("1.25"), "{status:?}");
    assert_eq!(status.deliveries["finalpos"].get("pending"), Some(&1), "{status:?}");
    go.send(()).expect("release the owner");
    assert!(gate.await.expect("job task").expect("job"), "the holding job was released");
    drop(queue);
    owner.join();
}

/// The longest retry delay the claims of these tests allow.
const MAX_DELAY: Duration = Duration::from_secs(3600);

/// The example sale with two refunds, the first of them claimed.
async fn two_refunds_first_claimed(queue: &QueueHandle) -> crate::queue::Claim {
    sale_and_refund(queue, "1.00").await;
    another_refund(queue, "2.00").await;
    queue.claim_due(1, Vec::new(), MAX_DELAY).await.expect("claim").pop().expect("a claim")
}

/// Transactions that wrote, as the generation marker beside the file counts them.
fn transactions(dir: &Path) -> i64 {
    super::super::generation::read_marker(&dir.join(super::super::generation::MARKER_FILE))
        .expect("a readable marker")
        .expect("a marker")
}

/// A delivery that ends and the one that takes its slot are one transaction: the outcome is on
/// disk exactly when the next claim is, and a drain pays one COMMIT per delivery, not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_and_the_next_claim_are_one_transaction() {
    let (dir, _, queue, owner) = started();
    let first = two_refunds_first_claimed(&queue).await;

    let before = transactions(dir.path());
    let delivered = Recorded::Delivered { remote_id: None };
    let next = queue
        .record_then_claim(first.refund.id, first.position, delivered.clone(), Vec::new(), MAX_DELAY)
        .await
        .expect("stored")
        .expect("the second refund claimed");
    assert_eq!(transactions(dir.path()), before + 1, "the outcome and the claim took one transaction");
    assert_ne!(next.refund.id, first.refund.id);
    assert_eq!(next.attempts, 1);
    let status = queue.status().await.expect("status");
    assert_eq!(status.deliveries["finalpos"].get("delivered"), Some(&1), "{status:?}");
    assert_eq!(status.deliveries["finalpos"].get("in_flight"), Some(&1), "{status:?}");

    // Nothing left to claim: the outcome is still recorded.
    let last = queue
        .record_then_claim(next.refund.id, next.position, delivered, Vec::new(), MAX_DELAY)
        .await
        .expect("stored");
    assert!(last.is_none(), "{last:?}");
    let status = queue.status().await.expect("status");
    assert_eq!(status.deliveries["finalpos"].get("delivered"), Some(&2), "{status:?}");
    drop(queue);
    owner.join();
}

/// An outcome that cannot be recorded takes the claim down with it: the next delivery stays
/// pending, for a claim whose slot is really free; and a destination skipped is not claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_refused_claims_nothing() {
    let (_dir, _, queue, owner) = started();
    let first = two_refunds_first_claimed(&queue).await;
    let delivered = Recorded::Delivered { remote_id: None };
    queue.record(first.refund.id, first.position, delivered.clone()).await.expect("recorded");

    let again = queue
        .record_then_claim(first.refund.id, first.position, delivered.clone(), Vec::new(), MAX_DELAY)
        .await;
    assert!(matches!(again, Err(QueueError::InvalidTransition(_))), "{again:?}");
    let status = queue.status().await.expect("status");
    assert_eq!(status.deliveries["finalpos"].get("pending"), Some(&1), "{status:?}");
    assert_eq!(status.deliveries["finalpos"].get("in_flight").copied().unwrap_or(0), 0, "{status:?}");

    // Skipping the only destination: recorded, nothing claimed.
    let second = queue.claim_due(1, Vec::new(), MAX_DELAY).await.expect("claim").pop().expect("a claim");
    let retry = Recorded::Retry { error: "503".into(), at_ms: 0 };
    let skipped = queue
        .record_then_claim(second.refund.id, second.position, retry, vec!["finalpos".into()], MAX_DELAY)
        .await
        .expect("stored");
    assert!(skipped.is_none(), "{skipped:?}");
    let status = queue.status().await.expect("status");
    assert_eq!(status.deliveries["finalpos"].get("pending"), Some(&1), "{status:?}");
    drop(queue);
    owner.join();
}
