//! Deleted rows made detectable. Row seals catch a row that was edited; they cannot catch a row
//! that is simply gone. So every refund gets a sequence number (`refunds.seq`, covered by its
//! seal), given out from a sealed head record in the same transaction that stores the refund:
//!
//! - `refund_head.seq`: the highest sequence number ever given out;
//! - `refund_head.deliveries`: how many delivery rows the refunds in the table should have
//!   (each refund's seal also lists its destinations, so a refund knows its own);
//! - `refund_head.purged`: the sequence numbers the agent itself deleted (retention), as ranges.
//!
//! The head is sealed with the device key and the queue's id, so it can be neither edited nor
//! copied from another queue. At start, [`check`] proves that the refunds present plus the
//! purged ones are exactly `1..=head` with a few indexed counts (no seal is read), and that
//! the delivery rows add up; only when they do not does it look row by row to name what is
//! missing.
//!
//! What this cannot see: the whole file (or the head together with the newest rows) put back
//! to an older copy of itself is a consistent older queue. Only something outside the file
//! could tell, and the agent keeps nothing per refund outside it.

use rusqlite::{params, Connection, OptionalExtension};

use super::db::Db;
use super::error::QueueError;
use super::seal::Sealer;

/// Inclusive ranges of sequence numbers, sorted, disjoint and not adjacent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges(Vec<(i64, i64)>);

impl Ranges {
    /// The ranges covering `seqs` (in any order, duplicates allowed).
    pub fn from_seqs(seqs: impl IntoIterator<Item = i64>) -> Ranges {
        let mut r = Ranges::default();
        r.extend(seqs);
        r
    }

    /// Adds sequence numbers, merging ranges that touch.
    pub fn extend(&mut self, seqs: impl IntoIterator<Item = i64>) {
        let mut all: Vec<(i64, i64)> = std::mem::take(&mut self.0);
        all.extend(seqs.into_iter().map(|s| (s, s)));
        all.sort_unstable();
        for (first, last) in all {
            match self.0.last_mut() {
                Some(prev) if first <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
                _ => self.0.push((first, last)),
            }
        }
    }

    /// How many sequence numbers the ranges hold.
    pub fn count(&self) -> i64 {
        self.0.iter().map(|(a, b)| b - a + 1).sum()
    }

    pub fn contains(&self, seq: i64) -> bool {
        let i = self.0.partition_point(|(_, last)| *last < seq);
        self.0.get(i).is_some_and(|(first, _)| *first <= seq)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.0.iter().copied()
    }

    fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| "[]".into())
    }

    fn from_json(text: &str) -> Result<Ranges, String> {
        let list: Vec<(i64, i64)> =
            serde_json::from_str(text).map_err(|e| format!("its purged list is unreadable: {e}"))?;
        let mut r = Ranges::default();
        for (a, b) in list {
            if a < 1 || b < a {
                return Err(format!("its purged list holds an impossible range {a}-{b}"));
            }
            r.0.push((a, b));
        }
        if r.0.windows(2).any(|w| w[1].0 <= w[0].1 + 1) {
            return Err("its purged list is out of order".into());
        }
        Ok(r)
    }
}

impl std::fmt::Display for Ranges {
    /// `3, 7-9, 12`, at most 20 ranges, then how many more numbers.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 20;
        for (i, (a, b)) in self.0.iter().take(SHOWN).enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            if a == b {
                write!(f, "{sep}{a}")?;
            } else {
                write!(f, "{sep}{a}-{b}")?;
            }
        }
        if self.0.len() > SHOWN {
            let more: i64 = self.0[SHOWN..].iter().map(|(a, b)| b - a + 1).sum();
            write!(f, " and {more} more")?;
        }
        Ok(())
    }
}

/// The sealed head record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The highest sequence number given out; 0 before the first refund.
    pub seq: i64,
    /// Delivery rows the refunds in the table should have between them.
    pub deliveries: i64,
    /// Sequence numbers the agent deleted itself (retention purge).
    pub purged: Ranges,
}

fn seal_of(sealer: &Sealer, queue_id: &str, seq: i64, deliveries: i64, purged: &str) -> [u8; 32] {
    sealer.seal(
        "refund-head",
        &[queue_id.as_bytes(), &seq.to_be_bytes(), &deliveries.to_be_bytes(), purged.as_bytes()],
    )
}

/// The queue's random id (`meta.queue_id`), created when absent.
pub fn queue_id(conn: &Connection) -> Result<String, QueueError> {
    let stored: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'queue_id'")?
        .query_row([], |r| r.get(0))
        .optional()?;
    if let Some(id) = stored {
        return Ok(id);
    }
    let id = uuid::Uuid::now_v7().to_string();
    conn.execute("INSERT INTO meta (key, value) VALUES ('queue_id', ?1)", [&id])?;
    Ok(id)
}

/// Reads and verifies the head. `Err` says why it cannot be trusted (a technician's words).
pub fn load(conn: &Connection, sealer: &Sealer) -> Result<Result<Head, String>, QueueError> {
    let row: Option<(i64, i64, String, Vec<u8>)> = conn
        .prepare_cached("SELECT seq, deliveries, purged, seal FROM refund_head WHERE id = 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    let Some((seq, deliveries, purged, seal)) = row else {
        return Ok(Err("its sequence record (table refund_head) is missing".into()));
    };
    let queue_id: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'queue_id'")?
        .query_row([], |r| r.get(0))
        .optional()?;
    let fields: [&[u8]; 4] = [
        queue_id.as_deref().unwrap_or("").as_bytes(),
        &seq.to_be_bytes(),
        &deliveries.to_be_bytes(),
        purged.as_bytes(),
    ];
    if !sealer.verify("refund-head", &fields, &seal) {
        return Ok(Err("its sequence record has a seal that does not verify (it was edited, or copied \
                       from another queue)"
            .into()));
    }
    Ok(Ranges::from_json(&purged)
        .map(|purged| Head { seq, deliveries, purged })
        .map_err(|e| format!("its sequence record is unreadable: {e}")))
}

/// Writes the head, sealed.
pub fn save(conn: &Connection, sealer: &Sealer, head: &Head) -> Result<(), QueueError> {
    let queue_id = queue_id(conn)?;
    let purged = head.purged.to_json();
    let seal = seal_of(sealer, &queue_id, head.seq, head.deliveries, &purged);
    conn.prepare_cached(
        "INSERT INTO refund_head (id, seq, deliveries, purged, seal) VALUES (1, ?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, deliveries = excluded.deliveries,
             purged = excluded.purged, seal = excluded.seal",
    )?
    .execute(params![head.seq, head.deliveries, purged, seal.to_vec()])?;
    Ok(())
}

/// The head, verified, for a write: a head that fails is never rewritten (that would launder
/// what was done to it); the write is refused until a restart has checked the queue.
pub(super) fn load_for_write(conn: &Connection, sealer: &Sealer) -> Result<Head, QueueError> {
    load(conn, sealer)?.map_err(|reason| {
        tracing::error!(%reason, "the queue's sequence record cannot be trusted; refusing to write");
        QueueError::Storage(format!(
            "the queue was altered outside the agent: {reason}; nothing was stored. Restart the agent to have the queue checked"
        ))
    })
}

/// Changes the head in the open transaction, through its stage (`staged.rs`).
fn update<T>(db: &Db<'_>, f: impl FnOnce(&mut Head) -> T) -> Result<T, QueueError> {
    db.head.update(db.conn, db.sealer, f)
}

/// Gives out the next sequence number for a refund with `deliveries` delivery rows. Runs in
/// the transaction that stores the refund.
pub fn advance(db: &Db<'_>, deliveries: i64) -> Result<i64, QueueError> {
    update(db, |head| {
        head.seq += 1;
        head.deliveries += deliveries;
        head.seq
    })
}

/// [`advance`] outside the owner's batches (a restore working on a file of its own): the head
/// read, verified and written at once.
pub(super) fn advance_unstaged(
    conn: &Connection,
    sealer: &Sealer,
    deliveries: i64,
) -> Result<i64, QueueError> {
    let mut head = load_for_write(conn, sealer)?;
    head.seq += 1;
    head.deliveries += deliveries;
    save(conn, sealer, &head)?;
    Ok(head.seq)
}

/// Records refunds the agent purged, with how many delivery rows went with them. Runs in the
/// transaction that deletes them.
pub fn record_purge(db: &Db<'_>, seqs: &[i64], deliveries: i64) -> Result<(), QueueError> {
    if seqs.is_empty() {
        return Ok(());
    }
    update(db, |head| {
        head.purged.extend(seqs.iter().copied());
        head.deliveries -= deliveries;
    })
}

/// A refund whose delivery rows do not match the destinations its seal lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortRefund {
    pub refund_id: String,
    pub expected: i64,
    pub present: i64,
}

/// What [`check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    pub head: i64,
    /// Sequence numbers given out, not purged by the agent, and not in the table: deleted.
    pub missing: Ranges,
    /// Rows in the table the agent did not write there (beyond the head, or purged and back).
    pub unexpected: Ranges,
    /// Refunds with delivery rows missing (or added).
    pub short: Vec<ShortRefund>,
}

impl Findings {
    /// Whether refunds are missing or foreign: the queue cannot be trusted to start.
    pub fn refuses(&self) -> bool {
        !self.missing.is_empty() || !self.unexpected.is_empty()
    }

    /// The refusal in a technician's words.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!(
                "{} refund(s) are missing: sequence number(s) {} (of 1-{}) were deleted outside the agent",
                self.missing.count(),
                self.missing,
                self.head
            ));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!(
                "refund rows with sequence number(s) {} were not written there by the agent",
                self.unexpected
            ));
        }
        parts.join("; ")
    }
}

/// The start-up check, read-only. The outer `Err` is a storage error; the inner one says why
/// the head cannot be trusted. Cheap when all is well: counts and min/max on indexes, one
/// indexed count per purged range, one seal.
pub fn check(conn: &Connection, sealer: &Sealer) -> Result<Result<Findings, String>, QueueError> {
    let head = match load(conn, sealer)? {
        Ok(h) => h,
        Err(reason) => return Ok(Err(reason)),
    };
    let mut findings = Findings { head: head.seq, ..Findings::default() };
    // Counted on `refunds_by_state`, whose entries (a state and the number) fill less than half
    // the pages of the index SQLite would pick by itself, the one on the 36-character ids.
    let live: i64 =
        conn.query_row("SELECT COUNT(*) FROM refunds INDEXED BY refunds_by_state", [], |r| r.get(0))?;
    let min: Option<i64> = conn.query_row("SELECT MIN(seq) FROM refunds", [], |r| r.get(0))?;
    let max: Option<i64> = conn.query_row("SELECT MAX(seq) FROM refunds", [], |r| r.get(0))?;
    let mut overlap = 0i64;
    let mut in_range = conn.prepare_cached("SELECT COUNT(*) FROM refunds WHERE seq BETWEEN ?1 AND ?2")?;
    for (a, b) in head.purged.iter() {
        overlap += in_range.query_row([a, b], |r| r.get::<_, i64>(0))?;
    }
    let consistent = live + head.purged.count() == head.seq
        && min.is_none_or(|m| m >= 1)
        && max.is_none_or(|m| m <= head.seq)
        && overlap == 0;
    if !consistent {
        // Something is wrong: now it is worth walking every sequence number to name it.
        let mut stmt = conn.prepare("SELECT seq FROM refunds ORDER BY seq")?;
        let present: Vec<i64> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        findings.unexpected = Ranges::from_seqs(
            present.iter().copied().filter(|s| *s < 1 || *s > head.seq || head.purged.contains(*s)),
        );
        let mut next = present.iter().copied().filter(|s| *s >= 1).peekable();
        let mut missing = Vec::new();
        for seq in 1..=head.seq {
            while next.peek().is_some_and(|s| *s < seq) {
                next.next();
            }
            if next.peek() != Some(&seq) && !head.purged.contains(seq) {
                missing.push(seq);
            }
        }
        findings.missing = Ranges::from_seqs(missing);
    }
    let deliveries: i64 = conn.query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0))?;
    if deliveries != head.deliveries {
        findings.short = short_refunds(conn)?;
    }
    Ok(Ok(findings))
}

/// Refunds whose delivery rows are not as many as the destinations they list. A full scan:
/// only run when the total disagrees with the head.
fn short_refunds(conn: &Connection) -> Result<Vec<ShortRefund>, QueueError> {
    let mut stmt = conn.prepare(
        "SELECT r.id, r.destinations, (SELECT COUNT(*) FROM deliveries d WHERE d.refund_id = r.id)
         FROM refunds r ORDER BY r.seq",
    )?;
    let rows =
        stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))?;
    let mut short = Vec::new();
    for row in rows {
        let (refund_id, destinations, present) = row?;
        let expected =
            serde_json::from_str::<Vec<String>>(&destinations).map(|d| d.len() as i64).unwrap_or(-1);
        if expected != present {
            short.push(ShortRefund { refund_id, expected, present });
        }
    }
    Ok(short)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges_merge_and_print() {
        let r = Ranges::from_seqs([9, 3, 4, 5, 12, 10, 3]);
        assert_eq!(r.iter().collect::<Vec<_>>(), [(3, 5), (9, 10), (12, 12)]);
        assert_eq!(r.count(), 6);
        assert_eq!(r.to_string(), "3-5, 9-10, 12");
        assert!(r.contains(4) && r.contains(12) && !r.contains(6) && !r.contains(13) && !r.contains(1));
        let many = Ranges::from_seqs((1..=100).map(|i| i * 2));
        assert!(many.to_string().ends_with("40 and 80 more"), "{many}");
    }

    #[test]
    fn a_tampered_purged_list_is_refused() {
        assert!(Ranges::from_json("[[1,3],[5,6]]").is_ok());
        assert!(Ranges::from_json("[[5,6],[1,3]]").is_err());
        assert!(Ranges::from_json("[[1,3],[4,6]]").is_err(), "adjacent ranges are never written");
        assert!(Ranges::from_json("[[0,3]]").is_err());
        assert!(Ranges::from_json("[[4,3]]").is_err());
        assert!(Ranges::from_json("x").is_err());
    }

    proptest! {
        #[test]
        fn ranges_hold_exactly_what_was_added(
            first in proptest::collection::vec(1i64..200, 0..50),
            then in proptest::collection::vec(1i64..200, 0..50),
        ) {
            let mut r = Ranges::from_seqs(first.clone());
            r.extend(then.clone());
            let set: std::collections::BTreeSet<i64> = first.iter().chain(&then).copied().collect();
            prop_assert_eq!(r.count(), set.len() as i64);
            for s in 0..201 {
                prop_assert_eq!(r.contains(s), set.contains(&s));
            }
            prop_assert_eq!(Ranges::from_json(&r.to_json()).unwrap(), r);
        }
    }
}
