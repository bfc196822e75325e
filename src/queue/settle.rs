//! The sync worker's group commit: the outcomes of every request that finished since the last
//! one are recorded, and the next due deliveries claimed into the slots they free, in one job
//! of the owner (`owner/`), so one COMMIT covers what used to be a COMMIT per outcome and one
//! per claim. The durability of each part stays as it was: the job is answered only after its
//! COMMIT, so an outcome is acknowledged only once it is on disk, and a claim reaches the
//! worker (and its request leaves) only once its `in_flight` is on disk. A failed COMMIT fails
//! the whole job: every outcome is reported as not stored and no claim is handed out (they were
//! rolled back with it and stay `pending`).
//!
//! Each outcome is recorded in a SAVEPOINT of its own inside the job's, so one that cannot be
//! recorded (a delivery that changed, a row that fails its seal) is undone alone and the others
//! stand, as they would in separate jobs. The claims follow the outcomes in the same
//! transaction, so a delivery whose outcome was just recorded as due again may be claimed in it;
//! one whose outcome could not be recorded is still `in_flight` and cannot.

use std::time::Duration;

use super::db::Db;
use super::error::QueueError;
use super::lifecycle::{self, Claim, Recorded};
use super::owner::{note_failure, Storage};
use crate::refund::RefundId;

/// One finished request's outcome, to record.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub refund_id: RefundId,
    pub position: i64,
    pub destination: String,
    pub recorded: Recorded,
}

impl Outcome {
    /// Whether storing this outcome ends its delivery's work for now (anything but a finished
    /// step of a multi-request delivery), which frees its slot for a new claim.
    pub fn ends_delivery(&self) -> bool {
        !matches!(self.recorded, Recorded::Progress { .. })
    }
}

/// What may be claimed along with the outcomes.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    /// Each destination that may be claimed for (not on hold), with its free slots before the
    /// outcomes of this job; each outcome stored that ends a delivery adds one to its own.
    pub rooms: Vec<(String, usize)>,
    /// Free slots over all destinations before the outcomes of this job, raised the same way.
    pub total: usize,
    /// The destinations on hold: nothing of theirs is claimed.
    pub held: Vec<String>,
    /// The longest delay the agent sets (`clock::is_due`).
    pub max_delay: Duration,
}

/// What a settle job did.
#[derive(Debug)]
pub struct Settled {
    /// The result of each outcome, in the order given.
    pub recorded: Vec<Result<(), QueueError>>,
    /// The deliveries claimed, already `in_flight` and committed.
    pub claims: Vec<Claim>,
    /// Why claiming stopped early for some destination, if it did.
    pub claim_error: Option<QueueError>,
}

/// Records `outcomes` and then claims into the slots of `ask` (none when `None`). An `Err`
/// only when the transaction itself was lost; the owner then reports it to the whole job.
pub(super) fn settle(
    db: &Db<'_>,
    storage: &Storage,
    outcomes: &[Outcome],
    ask: Option<&Ask>,
    now: i64,
) -> Result<Settled, QueueError> {
    let mut recorded = Vec::with_capacity(outcomes.len());
    for o in outcomes {
        let result = in_savepoint(db, storage, "outcome", || {
            lifecycle::record(db, &o.refund_id.to_string(), o.position, o.recorded.clone(), now)
        })?;
        recorded.push(result);
    }
    let mut settled = Settled { recorded, claims: Vec::new(), claim_error: None };
    let Some(ask) = ask else { return Ok(settled) };
    let freed = |destination: Option<&str>| {
        outcomes
            .iter()
            .zip(&settled.recorded)
            .filter(|(o, r)| r.is_ok() && o.ends_delivery())
            .filter(|(o, _)| destination.is_none_or(|d| d == o.destination))
            .count()
    };
    let mut total = ask.total + freed(None);
    let mut plan = Vec::new();
    for (destination, free) in &ask.rooms {
        let room = (free + freed(Some(destination))).min(total);
        if room > 0 {
            total -= room;
            plan.push((destination.clone(), room));
        }
    }
    if plan.is_empty() {
        return Ok(settled);
    }
    let max_delay_ms = i64::try_from(ask.max_delay.as_millis()).unwrap_or(i64::MAX);
    if let Err(e) = in_savepoint(db, storage, "clamp", || lifecycle::clamp_far_future(db, now, max_delay_ms))?
    {
        settled.claim_error = Some(e);
        return Ok(settled);
    }
    // Each claim skips every other destination, those on hold included.
    let names: Vec<&String> = ask.rooms.iter().map(|(d, _)| d).chain(&ask.held).collect();
    for (destination, room) in plan {
        let others: Vec<String> =
            names.iter().filter(|n| ***n != destination).map(|n| n.to_string()).collect();
        match in_savepoint(db, storage, "claim", || lifecycle::claim_due(db, now, room as i64, &others))? {
            Ok(claims) => settled.claims.extend(claims),
            Err(e) => {
                tracing::error!(error = %e, destination = %destination, "cannot claim deliveries");
                settled.claim_error = Some(e);
            }
        }
    }
    Ok(settled)
}

/// Runs `f` in a SAVEPOINT named `name`: its writes are undone alone when it fails. The outer
/// `Err` is a transaction SQLite rolled back as a whole (a full disk or an I/O error can), which
/// loses every part of the job: the owner reports it to the job.
fn in_savepoint<T>(
    db: &Db<'_>,
    storage: &Storage,
    name: &str,
    f: impl FnOnce() -> Result<T, QueueError>,
) -> Result<Result<T, QueueError>, QueueError> {
    exec(db, &format!("SAVEPOINT {name}"))?;
    let out = f();
    if db.conn.is_autocommit() {
        return Err(out
            .err()
            .unwrap_or_else(|| QueueError::Storage("the database rolled the transaction back".into())));
    }
    match &out {
        Ok(_) => exec(db, &format!("RELEASE {name}"))?,
        Err(e) => {
            if matches!(e, QueueError::StorageFull) {
                note_failure(storage, e);
            }
            exec(db, &format!("ROLLBACK TO {name}"))?;
            exec(db, &format!("RELEASE {name}"))?;
        }
    }
    Ok(out)
}

/// Through the statement cache: these run several times in every settle job.
fn exec(db: &Db<'_>, sql: &str) -> rusqlite::Result<()> {
    db.conn.prepare_cached(sql)?.execute([]).map(|_| ())
}
