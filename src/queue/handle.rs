//! `QueueHandle`: how the rest of the agent reaches the queue. Every method is one job for the
//! owner thread (`owner/`), answered after the COMMIT of its batch. Refunds are named by
//! [`RefundId`]; the rows store its text, so the conversion happens here, once. Every time a job
//! stamps or compares is `clock::trusted_now_ms`, so wall-clock jumps while the agent runs
//! move nothing in the queue (`clock` module doc).

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::audit::{self, AuditCaller};
use super::background::{self, AuditWalk, FileIntegrity};
use super::db::Db;
use super::error::QueueError;
use super::intake::{self, Created, SaleAdded};
use super::ledger::ReceiptView;
use super::lifecycle::{self, Claim, Recorded, Recovery};
use super::lockouts;
use super::manual::{self, Resolution};
use super::owner::{Job, Reply, Storage};
use super::reader::Reader;
use super::reads;
use super::retention;
use super::view::{FileStatus, QueueStatus, RefundView, StorageStatus, ViewState};
use crate::clock::trusted_now_ms;
use crate::manager::Approval;
use crate::refund::{RefundDraft, RefundId, Rejection};
use crate::sale::SaleInput;

/// A cloneable handle to the queue. When every handle is dropped the owner thread finishes the
/// jobs it has, closes the database and ends.
#[derive(Debug, Clone)]
pub struct QueueHandle {
    pub(super) jobs: mpsc::Sender<Job>,
    pub(super) storage: Storage,
    pub(super) audit: AuditWalk,
    /// The integrity check made after start: a damaged file stops sending.
    pub(super) file: FileIntegrity,
    /// Reads status off the owner thread; `None` when the queue is opened through a test VFS,
    /// whose file only the owner's connection sees as the test means it.
    pub(super) reader: Option<Reader>,
}

impl QueueHandle {
    /// Runs `f` in the owner's transaction and answers after the COMMIT. An `Err` from `f` rolls
    /// back everything `f` wrote.
    pub(super) async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db<'_>) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |db| {
            let result = match db {
                Ok(db) => f(db),
                Err(e) => Err(e.clone()),
            };
            let failed = result.as_ref().err().cloned();
            let reply: Reply = Box::new(move |commit_error| {
                let out = match (result, commit_error) {
                    (Ok(_), Some(e)) => Err(e.clone()),
                    (r, _) => r,
                };
                let _ = tx.send(out);
            });
            (failed, reply)
        });
        self.jobs.send(job).await.map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// A round trip through the owner thread: it answers, so it is not stuck (the systemd
    /// watchdog and the health check).
    pub async fn ping(&self) -> Result<(), QueueError> {
        self.call(|_| Ok(())).await
    }

    pub async fn create_refund(
        &self,
        draft: RefundDraft,
        key: Option<String>,
        caller: AuditCaller,
    ) -> Result<Result<Created, Rejection>, QueueError> {
        self.create_approved(draft, key, None, caller).await
    }

    /// Creates a refund with the manager approval verified for it (`manager::Approver`).
    pub async fn create_approved(
        &self,
        draft: RefundDraft,
        key: Option<String>,
        approval: Option<Approval>,
        caller: AuditCaller,
    ) -> Result<Result<Created, Rejection>, QueueError> {
        self.call(move |db| {
            let out =
                intake::create_approved(db, draft, key.as_deref(), approval, &caller, trusted_now_ms())?;
            // A rejection stored nothing, but make sure of it by rolling back the savepoint.
            Ok(out)
        })
        .await
    }

    pub async fn add_sale(&self, input: SaleInput) -> Result<Result<SaleAdded, Rejection>, QueueError> {
        self.call(move |db| intake::add_sale(db, input, trusted_now_ms())).await
    }

    /// A receipt as the ledger holds it, with what is refunded, waiting and refundable per line.
    pub async fn receipt(&self, receipt_id: String) -> Result<Option<ReceiptView>, QueueError> {
        self.call(move |db| super::ledger::receipt_view(db.conn, db.sealer, &receipt_id)).await
    }

    pub async fn refund(&self, id: RefundId) -> Result<Option<RefundView>, QueueError> {
        self.call(move |db| reads::view(db, &id.to_string(), trusted_now_ms())).await
    }

    pub async fn list(&self, state: Option<ViewState>, limit: i64) -> Result<Vec<RefundView>, QueueError> {
        self.call(move |db| reads::list(db, state, limit, trusted_now_ms())).await
    }

    pub async fn status(&self) -> Result<QueueStatus, QueueError> {
        let now = trusted_now_ms();
        let mut status = match self.reader.clone() {
            Some(reader) => tokio::task::spawn_blocking(move || reader.status(now))
                .await
                .map_err(|e| QueueError::Storage(format!("the status read stopped: {e}")))??,
            None => self.call(move |db| reads::status(db, now)).await?,
        };
        status.storage = self.storage();
        let walk = self.audit.lock().unwrap_or_else(|p| p.into_inner()).clone();
        status.audit = audit::with_walk(status.audit, walk.as_ref());
        status.file = self.file();
        Ok(status)
    }

    /// How writes to the queue have fared since start.
    pub fn storage(&self) -> StorageStatus {
        self.storage.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What the integrity check made after start found (`background.rs`).
    pub fn file(&self) -> FileStatus {
        self.file.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Claims due deliveries; nothing while the integrity check found the file damaged. First, those scheduled further ahead than `max_delay` (the
    /// longest delay the agent sets) become due now, as scheduled before the clock went back.
    pub async fn claim_due(
        &self,
        limit: i64,
        skip: Vec<String>,
        max_delay: Duration,
    ) -> Result<Vec<Claim>, QueueError> {
        if background::damaged(&self.file) {
            return Ok(Vec::new());
        }
        let max_delay_ms = i64::try_from(max_delay.as_millis()).unwrap_or(i64::MAX);
        self.call(move |db| {
            let now = trusted_now_ms();
            lifecycle::clamp_far_future(db, now, max_delay_ms)?;
            lifecycle::claim_due(db, now, limit, &skip)
        })
        .await
    }

    pub async fn record(
        &self,
        refund_id: RefundId,
        position: i64,
        outcome: Recorded,
    ) -> Result<(), QueueError> {
        self.call(move |db| {
            lifecycle::record(db, &refund_id.to_string(), position, outcome, trusted_now_ms())
        })
        .await
    }

    /// Records the outcome of a delivery's last request and, in the same transaction, claims
    /// the next due delivery that is not to a destination in `skip` (as [`claim_due`] with a
    /// limit of one): a delivery that ends and the one that takes its place cost one COMMIT,
    /// not two. Nothing is claimed while the file is damaged. Any error undoes both: the
    /// outcome is then not stored, and nothing was claimed.
    ///
    /// [`claim_due`]: Self::claim_due
    pub async fn record_then_claim(
        &self,
        refund_id: RefundId,
        position: i64,
        outcome: Recorded,
        skip: Vec<String>,
        max_delay: Duration,
    ) -> Result<Option<Claim>, QueueError> {
        let claim = !background::damaged(&self.file);
        let max_delay_ms = i64::try_from(max_delay.as_millis()).unwrap_or(i64::MAX);
        self.call(move |db| {
            let now = trusted_now_ms();
            lifecycle::record(db, &refund_id.to_string(), position, outcome, now)?;
            if !claim {
                return Ok(None);
            }
            lifecycle::clamp_far_future(db, now, max_delay_ms)?;
            Ok(lifecycle::claim_due(db, now, 1, &skip)?.pop())
        })
        .await
    }

    pub async fn recover(
        &self,
        dedup: impl Fn(&str) -> bool + Send + 'static,
    ) -> Result<Recovery, QueueError> {
        self.call(move |db| lifecycle::recover(db, &dedup, trusted_now_ms())).await
    }

    /// When the next delivery is due; never while the file is damaged (nothing is sent then, so
    /// the worker sleeps instead of waking for work it may not claim).
    pub async fn next_due(&self, skip: Vec<String>) -> Result<Option<i64>, QueueError> {
        if background::damaged(&self.file) {
            return Ok(None);
        }
        self.call(move |db| lifecycle::next_due(db, &skip)).await
    }

    /// A manual decision is a manager's: the verified approval's manager is the audit row's
    /// actor, with the caller it came through.
    pub async fn retry(
        &self,
        id: RefundId,
        approval: Approval,
        caller: AuditCaller,
    ) -> Result<RefundView, QueueError> {
        self.call(move |db| manual::retry(db, &id.to_string(), &approval.manager, &caller, trusted_now_ms()))
            .await
    }

    pub async fn cancel(
        &self,
        id: RefundId,
        approval: Approval,
        caller: AuditCaller,
        reason: String,
    ) -> Result<RefundView, QueueError> {
        self.call(move |db| {
            manual::cancel(db, &id.to_string(), &approval.manager, &caller, &reason, trusted_now_ms())
        })
        .await
    }

    pub async fn resolve(
        &self,
        id: RefundId,
        destination: Option<String>,
        resolution: Resolution,
        approval: Approval,
        caller: AuditCaller,
    ) -> Result<RefundView, QueueError> {
        self.call(move |db| {
            let id = id.to_string();
            manual::resolve(
                db,
                &id,
                destination.as_deref(),
                resolution,
                &approval.manager,
                &caller,
                trusted_now_ms(),
            )
        })
        .await
    }

    /// When the manager's lock-out ends, if one is in force (jump-safe time, `manager::lockout`).
    pub async fn manager_locked_until(&self, manager: String) -> Result<Option<i64>, QueueError> {
        self.call(move |db| lockouts::locked_until(db, &manager, trusted_now_ms())).await
    }

    /// Counts a wrong PIN; the end of the lock-out it started, if any.
    pub async fn manager_failed(&self, manager: String) -> Result<Option<i64>, QueueError> {
        self.call(move |db| lockouts::failed(db, &manager, trusted_now_ms())).await
    }

    /// A right PIN resets the manager's count.
    pub async fn manager_succeeded(&self, manager: String) -> Result<(), QueueError> {
        self.call(move |db| lockouts::succeeded(db, &manager, trusted_now_ms())).await
    }

    pub async fn reset_backoff(&self, destination: String) -> Result<u64, QueueError> {
        self.call(move |db| lifecycle::reset_backoff(db, &destination, trusted_now_ms())).await
    }

    pub async fn sweep(&self) -> Result<(u64, u64), QueueError> {
        self.call(|db| retention::sweep(db, trusted_now_ms())).await
    }
}
