//! Preparing a backup to be restored, on a working copy in the state directory (`backup.rs`
//! puts it in place afterwards). A copy cannot know what happened after it was taken: a
//! delivery it holds as `pending` or `in_flight` may have been delivered since. So:
//!
//! - the copy must pass what the agent checks at start (integrity, schema version not newer,
//!   the same seal key, no refund, sale or key deleted) and every refund and delivery seal must
//!   verify (a refund the copy already quarantined stays quarantined and untouched);
//! - every delivery not final in the copy, at a destination that does not deduplicate on the
//!   refund id, becomes `unknown` with an error saying it came from a restore (a person checks
//!   at the destination and resolves it); at a destination that deduplicates it becomes
//!   `pending`, due now, as start-up recovery does for `in_flight` (sending again is harmless);
//!   `unknown` stays `unknown`. Each changed refund is audit-logged, rows are resealed;
//! - the restored queue gets a generation above both the copy's and the one the agent last ran
//!   on, so neither the replaced file nor the copy itself can be put back by hand afterwards.

use rusqlite::Connection;

use super::audit::{self, AuditCaller};
use super::delivery::{aggregate, DeliveryState, RefundState};
use super::error::QueueError;
use super::rows::{self, DeliveryRow, RefundRow};
use super::seal::Sealer;
use super::{counts, generation, migrate, sequence};

/// What the restore changed in the copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub queue_id: String,
    /// The copy's generation when it was taken.
    pub copied_generation: i64,
    /// The generation the restored queue starts at.
    pub generation: i64,
    /// Deliveries pending or in flight in the copy at destinations that do not deduplicate:
    /// now `unknown`.
    pub unknown: u64,
    /// Deliveries pending or in flight in the copy at destinations that deduplicate: `pending`.
    pub pending: u64,
    /// The refunds a person must check at their destination, oldest first.
    pub to_check: Vec<String>,
    /// What the replaced queue could tell; when `Current`, the restored queue is that queue
    /// with the refunds only the copy knew carried over (`carry.rs`), and the counts above are
    /// about those.
    pub replaced: Replaced,
    /// Refunds only the copy knew, carried over into the current queue.
    pub carried: u64,
}

/// The refunds a restore changes: verified, not quarantined, with a delivery not final.
type Open = Vec<(RefundRow, RefundState, Vec<DeliveryRow>)>;

/// Checks the copy open on `conn` and prepares it; `Err` says why it cannot be restored.
/// `last_run`: the generation of the queue the agent last ran on (its marker), if known.
pub fn prepare(
    conn: &Connection,
    sealer: &Sealer,
    dedup: &dyn Fn(&str) -> bool,
    last_run: Option<i64>,
    origin: &str,
    now: i64,
) -> Result<Restored, String> {
    let (copied_generation, open) = verify(conn, sealer)?;
    let queue_id = sequence::queue_id(conn).map_err(|e| e.to_string())?;
    let mut restored = Restored {
        queue_id,
        copied_generation,
        generation: copied_generation.max(last_run.unwrap_or(0)) + 1,
        unknown: 0,
        pending: 0,
        to_check: Vec::new(),
        replaced: Replaced::Absent,
        carried: 0,
    };
    conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| e.to_string())?;
    let marked = mark(conn, sealer, dedup, open, &mut restored, origin, now);
    match marked {
        Ok(()) => conn.execute_batch("COMMIT").map_err(|e| e.to_string())?,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.to_string());
        }
    }
    Ok(restored)
}

/// What the agent checks at start, and every refund and delivery seal: the queue's generation
/// and its refunds with a delivery not final. `Err` says why the file cannot be trusted.
fn verify(conn: &Connection, sealer: &Sealer) -> Result<(i64, Open), String> {
    let text = |e: QueueError| e.to_string();
    check_file(conn, sealer)?;
    migrate::migrate(conn, sealer).map_err(text)?;
    let findings = sequence::check(conn, sealer)
        .map_err(text)?
        .map_err(|reason| format!("its refund numbering cannot be trusted: {reason}"))?;
    if findings.refuses() {
        return Err(findings.describe());
    }
    counts::check_all(conn, sealer).map_err(text)??;
    let generation = generation::load(conn, sealer).map_err(text)??;
    let open = open_refunds(conn, sealer).map_err(text)??;
    Ok((generation, open))
}

/// What the queue a restore replaces can still tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replaced {
    /// There was none (a new disk, a new till).
    Absent,
    /// Intact, and not older than the queue the agent last ran on: it knows everything that
    /// happened up to the restore, so the restored queue is built on it.
    Current,
    /// Intact but older than the queue the agent last ran on (itself put back by hand), or
    /// its age cannot be told: it knows no more than a copy does.
    Stale(String),
    /// It cannot be read or does not verify.
    Damaged(String),
}

/// Judges the queue about to be replaced, from a working copy of it open on `conn`.
/// `marker`: the generation the agent last ran on, if its marker file could be read.
pub fn judge_replaced(conn: &Connection, sealer: &Sealer, marker: Option<i64>) -> Replaced {
    let generation = match verify(conn, sealer) {
        Ok((generation, _)) => generation,
        Err(reason) => return Replaced::Damaged(reason),
    };
    match marker {
        // The marker lags the database, never leads it: a current queue is at or above it.
        Some(last) if generation >= last => Replaced::Current,
        Some(last) => Replaced::Stale(format!(
            "its generation {generation} is below the {last} the agent last ran on: it was put back by hand"
        )),
        None => Replaced::Stale("the generation marker is missing, so its age cannot be told".into()),
    }
}

/// The file-level checks the agent makes at start: integrity, schema version, seal key.
fn check_file(conn: &Connection, sealer: &Sealer) -> Result<(), String> {
    super::backup::integrity(conn).map_err(|reason| format!("it is damaged ({reason})"))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| e.to_string())?;
    if version == 0 {
        return Err("it is not a refund-agent queue (it has no schema)".into());
    }
    if version > migrate::VERSION {
        return Err(QueueError::TooNew { found: version, known: migrate::VERSION }.to_string());
    }
    let stored: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'seal_key_check'", [], |r| r.get(0))
        .map(Some)
        .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })
        .map_err(|e| e.to_string())?;
    match stored {
        Some(check) if check == sealer.key_check() => Ok(()),
        Some(_) => Err("it was sealed with a different seal key than this agent's; restore it with the \
                        seal key file it was made under"
            .into()),
        None => Err("it has no seal key check, so it cannot be told to be this agent's".into()),
    }
}

/// Verifies every refund and delivery; returns those with a delivery that is not final.
fn open_refunds(conn: &Connection, sealer: &Sealer) -> Result<Result<Open, String>, QueueError> {
    let mut open = Vec::new();
    let mut bad = Vec::new();
    let mut last = 0;
    loop {
        let batch = rows::refunds_after(conn, last, 500)?;
        if batch.is_empty() {
            break;
        }
        for row in batch {
            last = row.seq;
            let deliveries = rows::load_deliveries(conn, &row.id)?;
            let verdict = row.open(sealer).and_then(|(_, state)| {
                row.check_deliveries(&deliveries)?;
                deliveries.iter().try_for_each(|d| d.open(sealer).map(|_| ()))?;
                Ok(state)
            });
            let quarantined = rows::quarantine_reason(conn, &row.id)?.is_some();
            match verdict {
                // Already reported and never sent; a restore leaves it for the person looking.
                _ if quarantined => {}
                Err(reason) => bad.push(reason),
                Ok(state) => {
                    if deliveries.iter().any(|d| d.state().is_ok_and(|s| !s.is_final())) {
                        open.push((row, state, deliveries));
                    }
                }
            }
        }
    }
    if !bad.is_empty() {
        let shown: Vec<&str> = bad.iter().take(5).map(String::as_str).collect();
        return Ok(Err(format!(
            "{} refund(s) in it do not verify (it was altered): {}",
            bad.len(),
            shown.join("; ")
        )));
    }
    Ok(Ok(open))
}

/// How the error of every delivery a restore marks begins.
pub const FROM_RESTORE: &str = "restored from a backup";

/// Who a restore's audit rows name: the command, and the user that ran it.
pub(super) fn actor() -> String {
    format!("restore (uid {})", nix::unistd::getuid())
}

fn mark(
    conn: &Connection,
    sealer: &Sealer,
    dedup: &dyn Fn(&str) -> bool,
    open: Open,
    restored: &mut Restored,
    origin: &str,
    now: i64,
) -> Result<(), QueueError> {
    let actor = actor();
    let agent = AuditCaller::agent();
    for (mut row, state, mut deliveries) in open {
        let mut notes = Vec::new();
        let mut any_unknown = false;
        for d in &mut deliveries {
            let Ok(was) = d.state() else { continue };
            if was.is_final() {
                continue;
            }
            if dedup(&d.destination) {
                d.state = DeliveryState::Pending.into();
                d.next_attempt_at = now;
                d.last_error = Some(format!(
                    "{FROM_RESTORE} in which it was {was}: sending again (the destination deduplicates on the refund id)"
                ));
                restored.pending += 1;
            } else {
                d.state = DeliveryState::Unknown.into();
                d.last_error = Some(format!(
                    "{FROM_RESTORE} in which it was {was}: what happened after the copy was taken is not known \
                     (it may have been sent since) and the destination does not deduplicate: check there and resolve by hand"
                ));
                restored.unknown += 1;
                any_unknown = true;
            }
            d.updated_at = now;
            rows::save_delivery(conn, sealer, d, false)?;
            notes.push(format!("{}: {was} -> {}", d.destination, d.state.as_str()));
        }
        // An expired refund stays expired unless a delivery of it is now unknown: a person
        // must look at that one whatever else holds it.
        if any_unknown || state == RefundState::Queued {
            let states = deliveries.iter().map(DeliveryRow::state).collect::<Result<Vec<_>, _>>();
            let next = states.map(|s| aggregate(&s)).map_err(QueueError::Storage)?;
            if next != state {
                rows::set_refund_state(conn, sealer, &mut row, next, now)?;
            }
        }
        if any_unknown {
            restored.to_check.push(row.id.clone());
        }
        let detail = notes.join("; ");
        let entry = audit::Entry {
            refund_id: Some(&row.id),
            actor: &actor,
            action: "restore",
            detail: &detail,
            caller: Some(&agent),
            at: now,
        };
        audit::record(conn, sealer, &entry)?;
    }
    generation::save(conn, sealer, restored.generation)?;
    let summary = format!(
        "restored from {origin} (queue {}, generation {} in the copy, {} from now on): {} deliveries unknown, {} pending again",
        restored.queue_id, restored.copied_generation, restored.generation, restored.unknown, restored.pending
    );
    record_restore(conn, sealer, &actor, &summary, origin, restored.generation, now)
}

/// Notes the restore in `meta.last_restore` and in the audit log.
pub(super) fn record_restore(
    conn: &Connection,
    sealer: &Sealer,
    actor: &str,
    summary: &str,
    origin: &str,
    generation: i64,
    now: i64,
) -> Result<(), QueueError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('last_restore', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [serde_json::json!({ "at": now, "from": origin, "generation": generation }).to_string()],
    )?;
    let entry = audit::Entry {
        refund_id: None,
        actor,
        action: "restore",
        detail: summary,
        caller: Some(&AuditCaller::agent()),
        at: now,
    };
    audit::record(conn, sealer, &entry)?;
    Ok(())
}
