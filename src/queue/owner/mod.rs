//! The one owner of the SQLite connection: a dedicated thread that runs jobs sent through a
//! channel, so blocking disk work never runs on the async runtime and no two writers race.
//!
//! Group commit: the owner takes every job waiting in the channel (up to [`MAX_BATCH`]), runs
//! each in its own SAVEPOINT inside one transaction, COMMITs once, and only then answers every
//! caller. A job that fails is rolled back to its savepoint alone; a failed COMMIT is reported
//! to every job of the batch. Nobody hears "stored" before the COMMIT returned.
//!
//! A full disk (SQLITE_FULL) or an I/O error may make SQLite roll back the whole transaction
//! on its own, savepoints included, in the middle of a batch. The owner checks after every job
//! whether its transaction is still open; if not, every job of it so far is answered with the
//! error (their writes are gone) and the rest of the batch runs in a new transaction, so no
//! job ever writes outside a transaction and nothing is half-stored. A job that only read, with
//! nothing written before it in its transaction, keeps its answer whatever happens after it:
//! during a full disk, status and look-ups still work.
//!
//! Every transaction that wrote raises the queue's generation before its COMMIT, and the
//! marker file follows after it (`generation.rs`). The owner holds the state directory's lock
//! (`queue.lock`) for as long as the database is open, so a restore never replaces the file
//! under a running agent and two agents never share one queue.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;

use rusqlite::Connection;
use tokio::sync::mpsc;

use super::background::{self, AuditWalk, FileIntegrity};
use super::checkpoint::Checkpointer;
use super::counts::Counted;
use super::db::{Db, QueueSettings};
use super::error::QueueError;
use super::files::{self, StateLock};
use super::generation::Generation;
use super::handle::QueueHandle;
use super::opener::{is_io_error, reopen, Health, Opener};
use super::reader::Reader;
use super::schema;
use super::seal::Sealer;
use super::staged::HeadStage;
use super::view::StorageStatus;
use crate::clock::{now_ms, rfc3339};

/// The most jobs committed together; bounds the latency one batch adds to its last job.
pub const MAX_BATCH: usize = 256;

pub(super) type Reply = Box<dyn FnOnce(Option<&QueueError>) + Send>;
/// A job runs against the open transaction and says whether it failed; when no transaction
/// could be started it is handed that error instead, and answers with it without running.
pub(super) type Job = Box<dyn FnOnce(Result<&Db<'_>, &QueueError>) -> (Option<QueueError>, Reply) + Send>;

/// How writes have fared, kept by the owner thread and read by the handles: with a full disk,
/// reads and health checks still succeed, so status and metrics show it from here.
pub(super) type Storage = Arc<Mutex<StorageStatus>>;

/// Joins the owner thread; [`QueueOwner::join`] waits until the database is closed.
#[derive(Debug)]
pub struct QueueOwner {
    thread: thread::JoinHandle<()>,
}

impl QueueOwner {
    /// Blocks until every handle is dropped and the database is closed cleanly.
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Opens the queue and starts its owner thread.
pub fn start(
    state_dir: &Path,
    sealer: Sealer,
    settings: QueueSettings,
) -> Result<(QueueHandle, QueueOwner), QueueError> {
    start_on(Opener { state_dir: state_dir.to_path_buf(), vfs: None }, sealer, settings)
}

/// Test hook: [`start`] with the database opened through the SQLite VFS named `vfs`, which
/// tests/power_loss.rs registers to simulate power cuts and failed syncs under the real queue.
#[cfg(feature = "fault-injection")]
pub fn start_on_vfs(
    state_dir: &Path,
    sealer: Sealer,
    settings: QueueSettings,
    vfs: &str,
) -> Result<(QueueHandle, QueueOwner), QueueError> {
    start_on(Opener { state_dir: state_dir.to_path_buf(), vfs: Some(vfs.to_string()) }, sealer, settings)
}

fn start_on(
    opener: Opener,
    sealer: Sealer,
    settings: QueueSettings,
) -> Result<(QueueHandle, QueueOwner), QueueError> {
    let state_dir = opener.state_dir.clone();
    let lock = files::try_lock(&state_dir)?.ok_or_else(|| QueueError::InUse { path: state_dir.clone() })?;
    let conn = opener.open(&sealer)?;
    let generation = Generation::start(&conn, &sealer, &state_dir, &state_dir.join(schema::DB_FILE))?;
    // The whole-file checks run after start: the time to READY does not grow with the queue.
    let (file, audit) = (FileIntegrity::default(), AuditWalk::default());
    background::spawn(state_dir.join(schema::DB_FILE), sealer.clone(), file.clone(), audit.clone());
    let reader = opener
        .vfs
        .is_none()
        .then(|| Reader { path: state_dir.join(schema::DB_FILE), sealer: sealer.clone() });
    let (tx, rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
    let storage = Storage::default();
    let owner_storage = storage.clone();
    let thread = thread::Builder::new()
        .name("queue-owner".into())
        .spawn(move || run(&opener, conn, sealer, settings, rx, owner_storage, Held { generation, lock }))
        .map_err(|e| QueueError::Storage(format!("cannot start the queue thread: {e}")))?;
    Ok((QueueHandle { jobs: tx, storage, audit, file, reader }, QueueOwner { thread }))
}

/// What the owner holds for as long as the queue is open: the generation it raises with every
/// batch, and the state directory's lock (released only once the database is closed).
struct Held {
    generation: Generation,
    lock: StateLock,
}

fn run(
    opener: &Opener,
    conn: Connection,
    sealer: Sealer,
    settings: QueueSettings,
    mut rx: mpsc::Receiver<Job>,
    storage: Storage,
    held: Held,
) {
    let Held { mut generation, lock } = held;
    let checkpointer = Checkpointer::spawn(opener.state_dir.join(schema::DB_FILE), opener.vfs.clone());
    let mut conn = watched(&checkpointer, Some(conn));
    // What the open connection has seen of the row counts; a reopened connection starts over.
    let mut counted = Counted::default();
    while let Some(first) = rx.blocking_recv() {
        #[cfg(feature = "fault-injection")]
        wedge_if_asked();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if conn.is_none() {
            conn = watched(&checkpointer, reopen(opener, &sealer, &storage));
            counted = Counted::default();
        }
        let Some(open) = conn.as_ref() else {
            let err = QueueError::Storage(
                "the queue database could not be reopened after a failed write; nothing is stored until it can".into(),
            );
            note_failure(&storage, &err);
            for job in batch {
                let (_, reply) = job(Err(&err));
                reply(Some(&err));
            }
            continue;
        };
        let head = HeadStage::per_batch();
        let db = Db { conn: open, sealer: &sealer, settings: &settings, head: &head, counted: &counted };
        if run_batch(&db, batch, &storage, &mut generation) == Health::Suspect {
            // An I/O error (a failed fsync above all) leaves this connection's cache holding pages
            // that may never have reached the disk. Nothing more is written through it: it is
            // closed, and the next batch first reads the database again from the disk.
            tracing::error!("an I/O error on the queue database: closing it and reopening it from the disk");
            drop(conn.take());
            conn = watched(&checkpointer, reopen(opener, &sealer, &storage));
            counted = Counted::default();
        } else {
            // Between two batches, where nothing else writes: a WAL that has grown to its bound
            // while writes never paused is checkpointed here (`checkpoint.rs`).
            checkpointer.restart_if_due(open);
        }
    }
    checkpointer.stop();
    if let Some(conn) = &conn {
        if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            tracing::warn!(error = %e, "WAL checkpoint at shutdown failed; the next start replays it");
        }
    }
    // The lock is released only once the database is closed.
    drop(conn);
    drop(lock);
}

/// The connection with the checkpoint thread's WAL hook on it. Without the hook (it could not be
/// set, which only running out of memory causes) nothing is lost: the WAL grows until the
/// checkpoint at the next open.
fn watched(checkpointer: &Checkpointer, conn: Option<Connection>) -> Option<Connection> {
    let mut conn = conn?;
    if let Err(e) = checkpointer.watch(&mut conn) {
        tracing::warn!(error = %e, "cannot watch the WAL for checkpoints; it grows until the next start");
    }
    Some(conn)
}

/// Test hook: once the file named by `REFUND_AGENT_FAULT_WEDGE_QUEUE` exists, the owner blocks
/// forever before its next batch, as a stuck SQLite call would, so a test can see the systemd
/// watchdog pings stop (tests/systemd.rs).
#[cfg(feature = "fault-injection")]
fn wedge_if_asked() {
    let Some(trigger) = std::env::var_os("REFUND_AGENT_FAULT_WEDGE_QUEUE") else { return };
    if Path::new(&trigger).exists() {
        tracing::error!("fault injection: queue owner wedged");
        loop {
            thread::park();
        }
    }
}

fn run_batch(db: &Db<'_>, batch: Vec<Job>, storage: &Storage, generation: &mut Generation) -> Health {
    let mut jobs = batch.into_iter();
    while jobs.len() > 0 {
        if run_transaction(db, &mut jobs, storage, generation) == Health::Suspect {
            // The jobs not yet run wait for the reopened connection: answered, not run.
            let err = QueueError::Storage("an I/O error on the queue database; not stored".into());
            for job in jobs {
                let (_, reply) = job(Err(&err));
                reply(Some(&err));
            }
            return Health::Suspect;
        }
    }
    Health::Sound
}

/// Runs jobs from `jobs` in one transaction and answers them. Stops early, leaving the rest of
/// `jobs` for a new transaction, when SQLite rolled this one back in the middle; says whether
/// an I/O error made the connection suspect (then nothing more may be written through it).
fn run_transaction(
    db: &Db<'_>,
    jobs: &mut std::vec::IntoIter<Job>,
    storage: &Storage,
    generation: &mut Generation,
) -> Health {
    if let Err(e) = exec_cached(db.conn, "BEGIN IMMEDIATE") {
        let health = if is_io_error(&e) { Health::Suspect } else { Health::Sound };
        let err = QueueError::from(e);
        note_failure(storage, &err);
        // Run nothing; tell each caller the transaction could not start.
        for job in jobs {
            let (_, reply) = job(Err(&err));
            reply(Some(&err));
        }
        return health;
    }
    // The refund head is verified from the file once per transaction (`staged.rs`).
    let stage = db.head;
    stage.clear();
    let changes_before = db.conn.total_changes();
    let mut replies = Vec::with_capacity(jobs.len());
    let mut lost = None;
    for job in jobs.by_ref() {
        if let Err(e) = exec_cached(db.conn, "SAVEPOINT job") {
            let err = QueueError::from(e);
            let (_, reply) = job(Err(&err));
            lost = Some((err, reply));
            break;
        }
        let mark = stage.mark();
        let (failed, reply) = job(Ok(db));
        if db.conn.is_autocommit() {
            // SQLite rolled the whole transaction back under the job (it may on SQLITE_FULL or
            // an I/O error): the writes of every job before it are gone too.
            let err = failed
                .unwrap_or_else(|| QueueError::Storage("the database rolled the transaction back".into()));
            lost = Some((err, reply));
            break;
        }
        if matches!(failed, Some(QueueError::StorageFull)) {
            // This job alone was undone; the others of the batch go on.
            note_failure(storage, &QueueError::StorageFull);
        }
        let end = if failed.is_none() {
            exec_cached(db.conn, "RELEASE job")
        } else {
            // The job's change to the staged head goes back with its rows.
            stage.restore(mark);
            db.conn.execute_batch("ROLLBACK TO job; RELEASE job")
        };
        if let Err(e) = end {
            // A failed job's writes might survive into the COMMIT: give the whole batch up.
            lost = Some((QueueError::from(e), reply));
            break;
        }
        // A job that only read, with nothing written before it in this transaction, saw only
        // committed data: its answer stands even if the COMMIT fails (a read during a full
        // disk still works).
        let read_committed = db.conn.total_changes() == changes_before;
        replies.push((reply, read_committed));
    }
    if let Some((err, reply)) = lost {
        stage.clear();
        tracing::error!(error = %err, jobs = replies.len() + 1, "transaction lost; nothing of it was stored");
        note_failure(storage, &err);
        if !db.conn.is_autocommit() {
            let _ = db.conn.execute_batch("ROLLBACK");
        }
        reply(Some(&err));
        for (reply, read_committed) in replies {
            reply((!read_committed).then_some(&err));
        }
        // SQLite rolls a transaction back by itself on a full disk (which it does cleanly) or
        // on an I/O error.
        return if matches!(err, QueueError::StorageFull) { Health::Sound } else { Health::Suspect };
    }
    // The head and the generation are written in the batch's own transaction: no extra COMMIT,
    // no extra fsync.
    let flushed = stage.flush(db.conn, db.sealer);
    let wrote = db.conn.total_changes() != changes_before;
    let staged = flushed.and_then(|()| if wrote { generation.stage(db.conn, db.sealer) } else { Ok(()) });
    stage.clear();
    let (health, commit_error) = match staged {
        Ok(()) => {
            let commit = exec_cached(db.conn, "COMMIT");
            let health = match &commit {
                Err(e) if is_io_error(e) => Health::Suspect,
                _ => Health::Sound,
            };
            (health, commit.err().map(QueueError::from))
        }
        Err(e) => (Health::Sound, Some(e)),
    };
    if wrote && commit_error.is_none() {
        generation.committed();
    }
    match &commit_error {
        Some(e) => {
            tracing::error!(error = %e, "COMMIT failed; nothing of this batch was stored");
            note_failure(storage, e);
            // SQLite has usually rolled back already; make sure no transaction stays open.
            if !db.conn.is_autocommit() {
                let _ = db.conn.execute_batch("ROLLBACK");
            }
        }
        None if db.conn.total_changes() != changes_before => {
            let mut s = storage.lock().unwrap_or_else(|p| p.into_inner());
            if s.failing {
                tracing::info!("the queue stores again");
                s.failing = false;
            }
        }
        None => {}
    }
    for (reply, read_committed) in replies {
        reply(commit_error.as_ref().filter(|_| !read_committed));
    }
    health
}

/// Counts a transaction that could not be stored.
pub(super) fn note_failure(storage: &Storage, err: &QueueError) {
    let mut s = storage.lock().unwrap_or_else(|p| p.into_inner());
    s.failing = true;
    s.write_failures += 1;
    s.last_error = Some(err.to_string());
    s.last_error_at = Some(rfc3339(now_ms()));
}

/// Runs a statement through the statement cache: these run for every job, and parsing them
/// again each time shows up in the enqueue rate.
fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

#[cfg(test)]
mod tests;
