//! The audit chain's head and its checks: the cheap one made at start and by status, the full
//! walk made after start and by `doctor`, and the upgrade that chains the rows of an older
//! queue. Every check here only reads.

use rusqlite::{params, Connection, OptionalExtension};

use super::{row_at, rows_after, seal_of, HEAD_KIND, ROW_KIND};
use crate::queue::error::QueueError;
use crate::queue::seal::Sealer;

/// The `audit_head` row as stored (not yet verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StoredHead {
    /// The highest audit number the agent wrote while the chain was whole; 0 before the first.
    pub seq: i64,
    /// That row's seal (empty before the first).
    pub last_seal: Vec<u8>,
    pub seal: Vec<u8>,
}

impl StoredHead {
    /// The sealed fields: bound to the queue's id, so a head copied from another queue fails.
    pub(super) fn fields(&self, queue_id: &str) -> Vec<Vec<u8>> {
        vec![queue_id.as_bytes().to_vec(), self.seq.to_be_bytes().to_vec(), self.last_seal.clone()]
    }

    pub(super) fn verifies(&self, sealer: &Sealer, queue_id: &str) -> bool {
        let fields = self.fields(queue_id);
        let refs: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
        sealer.verify(HEAD_KIND, &refs, &self.seal)
    }
}

pub(super) fn stored_head(conn: &Connection) -> Result<Option<StoredHead>, QueueError> {
    Ok(conn
        .prepare_cached("SELECT seq, last_seal, seal FROM audit_head WHERE id = 1")?
        .query_row([], |r| Ok(StoredHead { seq: r.get(0)?, last_seal: r.get(1)?, seal: r.get(2)? }))
        .optional()?)
}

pub(super) fn save_head(conn: &Connection, head: &StoredHead) -> Result<(), QueueError> {
    conn.prepare_cached(
        "INSERT INTO audit_head (id, seq, last_seal, seal) VALUES (1, ?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, last_seal = excluded.last_seal, seal = excluded.seal",
    )?
    .execute(params![head.seq, head.last_seal, head.seal])?;
    Ok(())
}

/// The newest row's number and seal.
pub(super) fn tail(conn: &Connection) -> Result<Option<(i64, Vec<u8>)>, QueueError> {
    Ok(conn
        .prepare_cached("SELECT seq, seal FROM audit ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// The queue's id as stored, without creating it (the checks run on read-only connections).
fn stored_queue_id(conn: &Connection) -> Result<String, QueueError> {
    let id: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'queue_id'")?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(id.unwrap_or_default())
}

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainState {
    /// Rows `1..=rows` are all there, in order, as the agent wrote them (as far as the check
    /// looked: the cheap check reads only the head and the newest row).
    Intact { rows: i64 },
    /// Altered outside the agent. `seq` is the first broken number when the check knows it.
    Broken { seq: Option<i64>, problem: String },
}

impl ChainState {
    fn broken(seq: impl Into<Option<i64>>, problem: String) -> ChainState {
        ChainState::Broken { seq: seq.into(), problem }
    }
}

/// The head, verified, or why it cannot be trusted.
fn trusted_head(conn: &Connection, sealer: &Sealer) -> Result<Result<StoredHead, ChainState>, QueueError> {
    let Some(head) = stored_head(conn)? else {
        return Ok(Err(ChainState::broken(
            None,
            "the audit log's head record (table audit_head) is missing".into(),
        )));
    };
    if !head.verifies(sealer, &stored_queue_id(conn)?) {
        return Ok(Err(ChainState::broken(
            None,
            "the audit log's head record has a seal that does not verify (it was edited, or copied from another queue)"
                .into(),
        )));
    }
    Ok(Ok(head))
}

/// The cheap check, made at start and for every status: the head's seal, the rows' count and
/// range (indexed: no row is read), and the newest row's seal. A row edited in the middle is
/// left to [`walk`].
pub fn check(conn: &Connection, sealer: &Sealer) -> Result<ChainState, QueueError> {
    let head = match trusted_head(conn, sealer)? {
        Ok(h) => h,
        Err(state) => return Ok(state),
    };
    // Three statements, not one: SQLite answers `MIN` and `MAX` of the key alone by one seek
    // each and a bare `COUNT(*)` by counting the cells of an index's pages, but the three in one
    // query decode every row of the log.
    let count: i64 = conn.prepare_cached("SELECT COUNT(*) FROM audit")?.query_row([], |r| r.get(0))?;
    let min: Option<i64> = conn.prepare_cached("SELECT MIN(seq) FROM audit")?.query_row([], |r| r.get(0))?;
    let max: Option<i64> = conn.prepare_cached("SELECT MAX(seq) FROM audit")?.query_row([], |r| r.get(0))?;
    let max = max.unwrap_or(0);
    if max > head.seq {
        return Ok(ChainState::broken(
            head.seq + 1,
            format!(
                "audit rows beyond number {} were not written there by the agent (the newest is {max})",
                head.seq
            ),
        ));
    }
    if max < head.seq {
        return Ok(ChainState::broken(
            max + 1,
            format!(
                "audit rows {}-{} are missing: the log was cut short outside the agent",
                max + 1,
                head.seq
            ),
        ));
    }
    if let Some(min) = min.filter(|m| *m < 1) {
        return Ok(ChainState::broken(
            None,
            format!("an audit row numbered {min} was not written there by the agent"),
        ));
    }
    if count != head.seq {
        return Ok(ChainState::broken(
            None,
            format!(
                "{} audit row(s) are missing: {count} of 1-{} are present (deleted outside the agent)",
                head.seq - count,
                head.seq
            ),
        ));
    }
    if head.seq == 0 {
        return Ok(ChainState::Intact { rows: 0 });
    }
    let newest = row_at(conn, head.seq)?;
    let prev = if head.seq > 1 { row_at(conn, head.seq - 1)?.map(|r| r.seal) } else { Some(Vec::new()) };
    match (newest, prev) {
        (Some(row), Some(prev)) if row.seal == head.last_seal && row.verifies(sealer, &prev) => {
            Ok(ChainState::Intact { rows: head.seq })
        }
        _ => Ok(ChainState::broken(
            head.seq,
            format!("audit row {} was edited outside the agent (its seal does not verify)", head.seq),
        )),
    }
}

/// The full walk: every row in order, each seal over its columns and the previous seal, and
/// the last one against the head. Names the first broken number. Run it inside one read
/// transaction, so that the rows and the head are of the same moment.
pub fn walk(conn: &Connection, sealer: &Sealer) -> Result<ChainState, QueueError> {
    const BATCH: i64 = 1000;
    let head = match trusted_head(conn, sealer)? {
        Ok(h) => h,
        Err(state) => return Ok(state),
    };
    let (mut last, mut prev) = (0i64, Vec::new());
    loop {
        let batch = rows_after(conn, last, BATCH)?;
        if batch.is_empty() {
            break;
        }
        for row in batch {
            let expected = last + 1;
            if row.seq != expected {
                return Ok(ChainState::broken(
                    expected,
                    if expected <= head.seq {
                        format!("audit row {expected} is missing (deleted outside the agent)")
                    } else {
                        format!("audit row {} was not written there by the agent", row.seq)
                    },
                ));
            }
            if row.seq > head.seq {
                return Ok(ChainState::broken(
                    row.seq,
                    format!(
                        "audit row {} is beyond the head: it was not written there by the agent",
                        row.seq
                    ),
                ));
            }
            if !row.verifies(sealer, &prev) {
                return Ok(ChainState::broken(
                    row.seq,
                    format!(
                        "audit row {} does not verify: it was edited, moved or put there outside the agent",
                        row.seq
                    ),
                ));
            }
            last = row.seq;
            prev = row.seal;
        }
    }
    if last < head.seq {
        return Ok(ChainState::broken(
            last + 1,
            format!(
                "audit rows {}-{} are missing: the log was cut short outside the agent",
                last + 1,
                head.seq
            ),
        ));
    }
    if prev != head.last_seal {
        return Ok(ChainState::broken(last, format!("audit row {last} is not the one the head records")));
    }
    Ok(ChainState::Intact { rows: last })
}

/// What `doctor` reports of the audit log (its full walk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditCheck {
    /// The walk could not read the rows.
    Unreadable(String),
    Walked(ChainState),
}

/// Schema version 7 on an older queue: numbers the audit rows present `1..=n` in their order,
/// chains and seals them and writes the head. This trusts the rows present at the upgrade:
/// what was deleted or edited before it cannot be told.
pub(in crate::queue) fn adopt(conn: &Connection, sealer: &Sealer) -> Result<(), QueueError> {
    let queue_id = crate::queue::sequence::queue_id(conn)?;
    let (mut old, mut seq, mut prev) = (0i64, 0i64, Vec::new());
    loop {
        let batch = rows_after(conn, old, 1000)?;
        if batch.is_empty() {
            break;
        }
        for mut row in batch {
            old = row.seq;
            seq += 1;
            // Moving rows down in ascending order never lands on a number still in use: every
            // row below this one already holds a number below `seq`.
            row.seq = seq;
            row.seal = seal_of(sealer, ROW_KIND, &row.seal_fields(&prev));
            conn.prepare_cached("UPDATE audit SET seq = ?2, seal = ?3 WHERE seq = ?1")?
                .execute(params![old, row.seq, row.seal])?;
            prev = row.seal;
        }
    }
    let head = StoredHead { seq, last_seal: prev, seal: Vec::new() };
    let seal = seal_of(sealer, HEAD_KIND, &head.fields(&queue_id));
    save_head(conn, &StoredHead { seal, ..head })
}
