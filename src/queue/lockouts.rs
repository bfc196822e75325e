//! Manager lock-outs (schema version 6): one sealed row per manager who typed a wrong PIN,
//! updated in place, so five wrong PINs lock the manager across restarts. The arithmetic is
//! `manager::lockout` (pure); this is the only SQL on the table. A deleted row is caught by the
//! sealed row count (`counts.rs`); an edited one fails its seal and approvals by that manager
//! are refused until a person looks.

use rusqlite::{params, Connection, OptionalExtension};

use super::counts;
use super::db::Db;
use super::error::QueueError;
use super::seal::Sealer;
use super::sequence;
use crate::manager::lockout::Lockout;

const KIND: &str = "manager_lockout";

/// The sealed fields: the queue's id (a row copied from another queue fails), the manager and
/// the record.
fn fields(queue_id: &str, manager: &str, l: &Lockout) -> [Vec<u8>; 4] {
    [
        queue_id.as_bytes().to_vec(),
        manager.as_bytes().to_vec(),
        l.failures.to_be_bytes().to_vec(),
        l.locked_until_ms.to_be_bytes().to_vec(),
    ]
}

fn seal_of(sealer: &Sealer, queue_id: &str, manager: &str, l: &Lockout) -> [u8; 32] {
    let f = fields(queue_id, manager, l);
    sealer.seal(KIND, &[&f[0], &f[1], &f[2], &f[3]])
}

/// The manager's record (a fresh one when there is none); `Err` when its seal fails.
fn load(conn: &Connection, sealer: &Sealer, manager: &str) -> Result<Option<Lockout>, QueueError> {
    let row: Option<(i64, i64, Vec<u8>)> = conn
        .prepare_cached("SELECT failures, locked_until, seal FROM manager_lockouts WHERE manager = ?1")?
        .query_row([manager], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((failures, locked_until_ms, seal)) = row else {
        return Ok(None);
    };
    let l = Lockout { failures: u32::try_from(failures).unwrap_or(u32::MAX), locked_until_ms };
    let queue_id = sequence::queue_id(conn)?;
    let f = fields(&queue_id, manager, &l);
    if !sealer.verify(KIND, &[&f[0], &f[1], &f[2], &f[3]], &seal) || i64::from(l.failures) != failures {
        tracing::error!(manager, "the lock-out record of a manager does not verify");
        return Err(QueueError::Conflict(format!(
            "the lock-out record of manager {manager} was altered outside the agent; approvals by \
             {manager} are refused (restore the state directory from a backup)"
        )));
    }
    Ok(Some(l))
}

fn save(db: &Db<'_>, manager: &str, l: &Lockout, is_new: bool, now: i64) -> Result<(), QueueError> {
    if is_new {
        counts::bump_in(db, "manager_lockouts")?;
    }
    let seal = seal_of(db.sealer, &sequence::queue_id(db.conn)?, manager, l);
    db.conn
        .prepare_cached(
            "INSERT INTO manager_lockouts (manager, failures, locked_until, updated_at, seal)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (manager) DO UPDATE SET failures = excluded.failures,
                locked_until = excluded.locked_until, updated_at = excluded.updated_at, seal = excluded.seal",
        )?
        .execute(params![manager, i64::from(l.failures), l.locked_until_ms, now, seal.to_vec()])?;
    Ok(())
}

/// When the manager's lock-out ends, if one is in force at `now`. A lock-out that ends further
/// ahead than it can (the clock went back) is cut and stored cut.
pub(super) fn locked_until(db: &Db<'_>, manager: &str, now: i64) -> Result<Option<i64>, QueueError> {
    let Some(l) = load(db.conn, db.sealer, manager)? else {
        return Ok(None);
    };
    let until = l.locked_until(now);
    if let Some(cut) = until.filter(|u| *u < l.locked_until_ms) {
        save(db, manager, &Lockout { locked_until_ms: cut, ..l }, false, now)?;
    }
    Ok(until)
}

/// Counts a wrong PIN; returns the end of the lock-out it started, if it started one.
pub(super) fn failed(db: &Db<'_>, manager: &str, now: i64) -> Result<Option<i64>, QueueError> {
    let before = load(db.conn, db.sealer, manager)?;
    let after = before.unwrap_or_default().failed(now);
    save(db, manager, &after, before.is_none(), now)?;
    Ok(after.locked_until(now))
}

/// A right PIN: the count starts again (nothing is written when it is already zero).
pub(super) fn succeeded(db: &Db<'_>, manager: &str, now: i64) -> Result<(), QueueError> {
    match load(db.conn, db.sealer, manager)? {
        Some(l) if l.failures > 0 => save(db, manager, &l.succeeded(), false, now),
        _ => Ok(()),
    }
}
