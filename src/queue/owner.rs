//! The one owner of the SQLite connection: a dedicated thread that runs jobs sent through a
//! channel, so blocking disk work never runs on the async runtime and no two writers race.
//!
//! Group commit: the owner takes every job waiting in the channel (up to [`MAX_BATCH`]), runs
//! each in its own SAVEPOINT inside one transaction, COMMITs once, and only then answers every
//! caller. A job that fails is rolled back to its savepoint alone; a failed COMMIT is reported
//! to every job of the batch. Nobody hears "stored" before the COMMIT returned.

use std::path::Path;
use std::thread;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::error::QueueError;
use super::manual::{self, Resolution};
use super::ops::{self, Claim, Created, Recorded, Recovery, SaleAdded};
use super::schema;
use super::seal::Sealer;
use super::view::{QueueStatus, RefundView};
use crate::clock::now_ms;
use crate::refund::{Policy, RefundDraft, Rejection};
use crate::routing::Router;
use crate::sale::SaleInput;

/// The most jobs committed together; bounds the latency one batch adds to its last job.
pub const MAX_BATCH: usize = 256;

/// What the queue's operations need besides the connection.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub policy: Policy,
    pub router: Router,
    pub max_pending_age_ms: Option<i64>,
    pub retention_ms: Option<i64>,
}

/// The context every operation runs in: the connection inside an open transaction.
#[derive(Debug)]
pub struct Db<'a> {
    pub conn: &'a Connection,
    pub sealer: &'a Sealer,
    pub settings: &'a QueueSettings,
}

type Reply = Box<dyn FnOnce(Option<&QueueError>) + Send>;
type Job = Box<dyn FnOnce(&Db<'_>) -> (bool, Reply) + Send>;

/// A cloneable handle to the queue. When every handle is dropped the owner thread finishes the
/// jobs it has, closes the database and ends.
#[derive(Debug, Clone)]
pub struct QueueHandle {
    jobs: mpsc::Sender<Job>,
}

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
    let conn = schema::open(state_dir, &sealer)?;
    let (tx, rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
    let thread = thread::Builder::new()
        .name("queue-owner".into())
        .spawn(move || run(conn, sealer, settings, rx))
        .map_err(|e| QueueError::Storage(format!("cannot start the queue thread: {e}")))?;
    Ok((QueueHandle { jobs: tx }, QueueOwner { thread }))
}

fn run(conn: Connection, sealer: Sealer, settings: QueueSettings, mut rx: mpsc::Receiver<Job>) {
    let db = Db { conn: &conn, sealer: &sealer, settings: &settings };
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
        run_batch(&db, batch);
    }
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::warn!(error = %e, "WAL checkpoint at shutdown failed; the next start replays it");
    }
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

fn run_batch(db: &Db<'_>, batch: Vec<Job>) {
    if let Err(e) = exec_cached(db.conn, "BEGIN IMMEDIATE") {
        let err = QueueError::from(e);
        for job in batch {
            // Run nothing; tell each caller the transaction could not start.
            let (_, reply) = job_refused();
            reply(Some(&err));
            drop(job);
        }
        return;
    }
    let mut replies = Vec::with_capacity(batch.len());
    for job in batch {
        if let Err(e) = exec_cached(db.conn, "SAVEPOINT job") {
            let err = QueueError::from(e);
            let (_, reply) = job_refused();
            reply(Some(&err));
            continue;
        }
        let (ok, reply) = job(db);
        let end = if ok {
            exec_cached(db.conn, "RELEASE job")
        } else {
            db.conn.execute_batch("ROLLBACK TO job; RELEASE job")
        };
        if let Err(e) = end {
            tracing::error!(error = %e, "savepoint could not be closed");
        }
        replies.push(reply);
    }
    let commit_error = exec_cached(db.conn, "COMMIT").err().map(QueueError::from);
    if let Some(e) = &commit_error {
        tracing::error!(error = %e, "COMMIT failed; nothing of this batch was stored");
        let _ = db.conn.execute_batch("ROLLBACK");
    }
    for reply in replies {
        reply(commit_error.as_ref());
    }
}

/// Runs a statement through the statement cache: these run for every job, and parsing them
/// again each time shows up in the enqueue rate.
fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn job_refused() -> (bool, Reply) {
    (false, Box::new(|_| {}))
}

impl QueueHandle {
    /// Runs `f` in the owner's transaction and answers after the COMMIT. An `Err` from `f` rolls
    /// back everything `f` wrote.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db<'_>) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |db| {
            let result = f(db);
            let ok = result.is_ok();
            let reply: Reply = Box::new(move |commit_error| {
                let out = match (result, commit_error) {
                    (Ok(_), Some(e)) => Err(e.clone()),
                    (r, _) => r,
                };
                let _ = tx.send(out);
            });
            (ok, reply)
        });
        self.jobs.send(job).await.map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    pub async fn create_refund(
        &self,
        draft: RefundDraft,
        key: Option<String>,
    ) -> Result<Result<Created, Rejection>, QueueError> {
        self.call(move |db| {
            let out = ops::create_refund(db, draft, key.as_deref(), now_ms())?;
            // A rejection stored nothing, but make sure of it by rolling back the savepoint.
            Ok(out)
        })
        .await
    }

    pub async fn add_sale(&self, input: SaleInput) -> Result<Result<SaleAdded, Rejection>, QueueError> {
        self.call(move |db| ops::add_sale(db, input, now_ms())).await
    }

    pub async fn refund(&self, id: String) -> Result<Option<RefundView>, QueueError> {
        self.call(move |db| ops::view(db, &id, now_ms())).await
    }

    pub async fn list(&self, state: Option<String>, limit: i64) -> Result<Vec<RefundView>, QueueError> {
        self.call(move |db| ops::list(db, state.as_deref(), limit, now_ms())).await
    }

    pub async fn status(&self) -> Result<QueueStatus, QueueError> {
        self.call(|db| ops::status(db, now_ms())).await
    }

    pub async fn claim_due(&self, limit: i64, skip: Vec<String>) -> Result<Vec<Claim>, QueueError> {
        self.call(move |db| ops::claim_due(db, now_ms(), limit, &skip)).await
    }

    pub async fn record(
        &self,
        refund_id: String,
        position: i64,
        outcome: Recorded,
    ) -> Result<(), QueueError> {
        self.call(move |db| ops::record(db, &refund_id, position, outcome, now_ms())).await
    }

    pub async fn recover(
        &self,
        dedup: impl Fn(&str) -> bool + Send + 'static,
    ) -> Result<Recovery, QueueError> {
        self.call(move |db| ops::recover(db, &dedup, now_ms())).await
    }

    pub async fn next_due(&self, skip: Vec<String>) -> Result<Option<i64>, QueueError> {
        self.call(move |db| ops::next_due(db, &skip)).await
    }

    pub async fn retry(&self, id: String, operator: String) -> Result<RefundView, QueueError> {
        self.call(move |db| manual::retry(db, &id, &operator, now_ms())).await
    }

    pub async fn cancel(
        &self,
        id: String,
        operator: String,
        reason: String,
    ) -> Result<RefundView, QueueError> {
        self.call(move |db| manual::cancel(db, &id, &operator, &reason, now_ms())).await
    }

    pub async fn resolve(
        &self,
        id: String,
        destination: Option<String>,
        resolution: Resolution,
        operator: String,
    ) -> Result<RefundView, QueueError> {
        self.call(move |db| manual::resolve(db, &id, destination.as_deref(), resolution, &operator, now_ms()))
            .await
    }

    pub async fn reset_backoff(&self, destination: String) -> Result<u64, QueueError> {
        self.call(move |db| ops::reset_backoff(db, &destination, now_ms())).await
    }

    pub async fn sweep(&self) -> Result<(u64, u64), QueueError> {
        self.call(|db| ops::sweep(db, now_ms())).await
    }
}
