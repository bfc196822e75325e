//! The audit log: every decision about a refund (created, retried, cancelled, resolved,
//! expired…), who made it (`actor`: the operator, or `agent`) and through what (`caller`: the
//! Unix socket peer's uid and pid, the TCP peer, the serial terminal, or the agent itself).
//!
//! # Chain
//!
//! Audit rows are numbered `1, 2, 3…` (`audit.seq`) and each is sealed over its columns and the
//! seal of the row before it: `seal = HMAC(key, "audit", prev_seal || seq || at || refund_id ||
//! actor || action || detail || caller)` (the first row's `prev_seal` is empty). The sealed
//! `audit_head` row holds the highest number written and the newest row's seal, bound to the
//! queue's id, and is advanced in the transaction that appends the row. So a row deleted
//! anywhere (the count no longer matches the head), edited or moved (its seal, or the next
//! one's, fails), added behind the agent's back (beyond the head, or a seal it did not make) or
//! a truncated tail (the head is ahead) is detected.
//!
//! Audit rows are never purged: they outlive their refunds as evidence.
//!
//! # Checks, and what a broken chain does
//!
//! - Right after start, by the background checks ([`chain::check`], `background.rs`): the
//!   head's seal, `COUNT(*)` of the rows (the cell counts of an index's pages, no row decoded),
//!   `MIN` and `MAX` of `seq` (one seek each) and the newest row's seal; logged when it fails.
//!   Not before READY: the count still reads every page of an index.
//! - After start, in the background, and by `doctor` ([`chain::walk`]): every row in order,
//!   naming the first broken number.
//! - In `GET /v1/status` and `/metrics`: the cheap check again, and the walk's result.
//!
//! A broken chain raises an alarm (status, metrics, doctor, the start log) but does not stop
//! the agent: the audit log is evidence, not money. Refunds go on being validated, stored and
//! sent, and new audit rows are still written. While the newest row does not agree with the
//! head (a truncated tail, a row added or edited at the end, an untrusted head), new rows are
//! chained onto what is there and the head is left as it is: it is never rewritten to match
//! the rows, so the break stays visible at every start instead of being laundered.
//!
mod chain;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::error::QueueError;
use super::seal::Sealer;
use super::view::{AuditStatus, AuditView};
use crate::clock::rfc3339;

pub(super) use chain::{adopt, check, walk};
pub use chain::{AuditCheck, ChainState};

/// The seal kind of an audit row.
const ROW_KIND: &str = "audit";
/// The seal kind of the audit head.
const HEAD_KIND: &str = "audit-head";

/// Through what a decision reached the agent, as recorded in the audit log's `caller` column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCaller(String);

impl AuditCaller {
    /// The agent's own decisions: expiry, recovery, the upgrade.
    pub fn agent() -> AuditCaller {
        AuditCaller("agent".into())
    }

    /// The serial payment terminal.
    pub fn terminal() -> AuditCaller {
        AuditCaller("terminal".into())
    }

    /// A Unix socket peer, from `SO_PEERCRED`.
    pub fn unix(uid: u32, pid: Option<i32>) -> AuditCaller {
        match pid {
            Some(pid) => AuditCaller(format!("unix uid={uid} pid={pid}")),
            None => AuditCaller(format!("unix uid={uid}")),
        }
    }

    /// A loopback TCP peer (authenticated by the listener's token).
    pub fn tcp(addr: SocketAddr) -> AuditCaller {
        AuditCaller(format!("tcp {addr}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One audit row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AuditRow {
    pub seq: i64,
    pub at: i64,
    pub refund_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub detail: String,
    /// `None` on rows written before schema version 7 and by [`super::rows::audit`].
    pub caller: Option<String>,
    pub seal: Vec<u8>,
}

const COLUMNS: &str = "seq, at, refund_id, actor, action, detail, caller, seal";

impl AuditRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<AuditRow> {
        Ok(AuditRow {
            seq: r.get(0)?,
            at: r.get(1)?,
            refund_id: r.get(2)?,
            actor: r.get(3)?,
            action: r.get(4)?,
            detail: r.get(5)?,
            caller: r.get(6)?,
            seal: r.get(7)?,
        })
    }

    /// The sealed fields after the previous row's seal. An absent refund id or caller is sealed
    /// as empty and a present one with a `+` prefix, so that `None` and `Some("")` differ.
    fn seal_fields(&self, prev: &[u8]) -> Vec<Vec<u8>> {
        let optional =
            |v: &Option<String>| v.as_deref().map(|s| format!("+{s}")).unwrap_or_default().into_bytes();
        vec![
            prev.to_vec(),
            self.seq.to_be_bytes().to_vec(),
            self.at.to_be_bytes().to_vec(),
            optional(&self.refund_id),
            self.actor.as_bytes().to_vec(),
            self.action.as_bytes().to_vec(),
            self.detail.as_bytes().to_vec(),
            optional(&self.caller),
        ]
    }

    /// Whether the row's seal is the one the agent made after `prev`.
    fn verifies(&self, sealer: &Sealer, prev: &[u8]) -> bool {
        let fields = self.seal_fields(prev);
        let refs: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
        sealer.verify(ROW_KIND, &refs, &self.seal)
    }
}

/// A decision to record.
#[derive(Debug, Clone)]
pub(super) struct Entry<'a> {
    pub refund_id: Option<&'a str>,
    pub actor: &'a str,
    pub action: &'a str,
    pub detail: &'a str,
    pub caller: Option<&'a AuditCaller>,
    pub at: i64,
}

/// Appends a decision with the caller it came through (see [`record`]).
pub(super) fn by(
    db: &super::db::Db<'_>,
    refund_id: Option<&str>,
    actor: &str,
    caller: &AuditCaller,
    action: &str,
    detail: &str,
    now: i64,
) -> Result<(), QueueError> {
    let entry = Entry { refund_id, actor, action, detail, caller: Some(caller), at: now };
    record(db.conn, db.sealer, &entry).map(|_| ())
}

/// A seal over `fields` (each a byte string) under the device key.
pub(super) fn seal_of(sealer: &Sealer, kind: &str, fields: &[Vec<u8>]) -> Vec<u8> {
    let refs: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
    sealer.seal(kind, &refs).to_vec()
}

/// Appends a decision to the chain, in the caller's transaction, and advances the head when
/// the newest row agrees with it (see "Checks, and what a broken chain does").
pub(super) fn record(conn: &Connection, sealer: &Sealer, entry: &Entry<'_>) -> Result<i64, QueueError> {
    let queue_id = super::sequence::queue_id(conn)?;
    let head = match chain::stored_head(conn)? {
        Some(stored) => stored.verifies(sealer, &queue_id).then_some(stored),
        None => None,
    };
    let tail = chain::tail(conn)?;
    let agrees = head.as_ref().is_some_and(|h| match &tail {
        Some((seq, seal)) => *seq == h.seq && *seal == h.last_seal,
        None => h.seq == 0,
    });
    let (seq, prev) = match (&head, &tail) {
        (Some(h), Some((tail_seq, _))) if h.seq >= *tail_seq => (h.seq + 1, h.last_seal.clone()),
        (Some(h), None) => (h.seq + 1, h.last_seal.clone()),
        (_, Some((tail_seq, tail_seal))) => (tail_seq + 1, tail_seal.clone()),
        (None, None) => (1, Vec::new()),
    };
    let mut row = AuditRow {
        seq,
        at: entry.at,
        refund_id: entry.refund_id.map(str::to_string),
        actor: entry.actor.to_string(),
        action: entry.action.to_string(),
        detail: entry.detail.to_string(),
        caller: entry.caller.map(|c| c.as_str().to_string()),
        seal: Vec::new(),
    };
    row.seal = seal_of(sealer, ROW_KIND, &row.seal_fields(&prev));
    conn.prepare_cached(&format!("INSERT INTO audit ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"))?
        .execute(params![
        row.seq,
        row.at,
        row.refund_id,
        row.actor,
        row.action,
        row.detail,
        row.caller,
        row.seal
    ])?;
    if agrees {
        let next = chain::StoredHead { seq, last_seal: row.seal.clone(), seal: Vec::new() };
        let seal = seal_of(sealer, HEAD_KIND, &next.fields(&queue_id));
        chain::save_head(conn, &chain::StoredHead { seal, ..next })?;
    } else {
        tracing::error!(
            seq,
            "the audit log was altered outside the agent; this decision is recorded, but the chain stays reported as broken"
        );
    }
    Ok(seq)
}

/// The status of the chain from the cheap check just made (`cheap`, from `reads::status`) and
/// the walk made after start (`None` while it runs): a break the walk found is reported even
/// when the cheap check no longer sees it.
pub(super) fn with_walk(cheap: AuditStatus, walk: Option<&ChainState>) -> AuditStatus {
    match walk {
        None => cheap,
        Some(ChainState::Broken { seq, problem }) => {
            AuditStatus { broken: true, first_broken_seq: *seq, problem: Some(problem.clone()), walked: true }
        }
        Some(ChainState::Intact { .. }) => AuditStatus { walked: true, ..cheap },
    }
}

/// Logs the cheap check at start: a broken chain is said once, plainly, in the start log.
pub(super) fn log_start_check(conn: &Connection, sealer: &Sealer) -> Result<(), QueueError> {
    match check(conn, sealer)? {
        ChainState::Broken { seq, problem } => tracing::error!(
            first_broken_seq = seq,
            %problem,
            "the audit log was altered outside the agent; refunds are still validated and sent, and status, metrics and doctor report it"
        ),
        ChainState::Intact { rows } => tracing::debug!(rows, "audit log head and newest row verified"),
    }
    Ok(())
}

/// A refund's audit rows, oldest first, as shown to people.
pub(super) fn for_refund(conn: &Connection, refund_id: &str) -> Result<Vec<AuditView>, QueueError> {
    let sql = format!("SELECT {COLUMNS} FROM audit WHERE refund_id = ?1 ORDER BY seq");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([refund_id], AuditRow::from_row)?;
    rows.map(|row| {
        let row = row?;
        Ok(AuditView {
            seq: row.seq,
            at: rfc3339(row.at),
            actor: row.actor,
            action: row.action,
            detail: row.detail,
            caller: row.caller,
        })
    })
    .collect()
}

/// Turns the audit table back into what schema version 5 wrote (no chain, no caller), to test
/// the upgrade.
#[cfg(test)]
pub(super) fn downgrade_for_tests(conn: &Connection) {
    conn.execute_batch(
        "DROP INDEX audit_by_refund; DROP TABLE audit_head;
         ALTER TABLE audit DROP COLUMN caller; ALTER TABLE audit DROP COLUMN seal;",
    )
    .expect("drop the version 7 audit chain");
}

/// Rows with numbers above `after`, in order, at most `limit` (the walk and the upgrade).
fn rows_after(conn: &Connection, after: i64, limit: i64) -> Result<Vec<AuditRow>, QueueError> {
    let sql = format!("SELECT {COLUMNS} FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![after, limit], AuditRow::from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The row numbered `seq`, if present.
fn row_at(conn: &Connection, seq: i64) -> Result<Option<AuditRow>, QueueError> {
    let sql = format!("SELECT {COLUMNS} FROM audit WHERE seq = ?1");
    Ok(conn.prepare_cached(&sql)?.query_row([seq], AuditRow::from_row).optional()?)
}
