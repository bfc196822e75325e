//! Sealed row counts for tables whose rows are never purged (or only by rules of their own),
//! so that a deleted row is noticed: `sales` (never purged), `idempotency_keys` (kept past
//! their refund's purge) and `manager_lockouts` (a deleted row would forget wrong PINs). Each count is raised in the transaction that inserts a row and is
//! sealed with the device key and the queue's id. At start the counts are compared with
//! `COUNT(*)` (no seal scan); before a new sale is registered its table is checked again, so a
//! receipt deleted and registered anew with other numbers is refused.
//!
//! That check before every insert would count the whole table each time, so the cost of a
//! refund would grow with the keys kept. The owner's connection remembers instead, per table,
//! the count it last saw agree with the rows and the `PRAGMA data_version` it saw it at
//! ([`Counted`]). The data version changes whenever another connection, in this process or
//! another, commits to the file; while it has not, only the owner wrote, and every write of
//! the owner moves a count and its rows together in one transaction. So when both the version
//! and the sealed count are the ones remembered, the rows are not counted again; anything else
//! (a write from outside, a rolled-back job, a reopened connection) counts them.

use std::cell::{Cell, RefCell};

use rusqlite::{params, Connection, OptionalExtension};

use super::db::Db;
use super::error::QueueError;
use super::seal::Sealer;
use super::sequence;

/// The tables counted, with what a missing row means to a person.
pub const COUNTED: [(&str, &str); 3] = [
    ("sales", "sale(s)"),
    ("idempotency_keys", "idempotency key(s)"),
    ("manager_lockouts", "manager lock-out record(s)"),
];

fn seal_of(sealer: &Sealer, queue_id: &str, table: &str, count: i64) -> [u8; 32] {
    sealer.seal("row_count", &[queue_id.as_bytes(), table.as_bytes(), count.to_string().as_bytes()])
}

fn present(conn: &Connection, table: &str) -> Result<i64, QueueError> {
    Ok(conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?)
}

/// The counts one connection saw agree with their rows, each with the data version it saw it
/// at (see the module's text). Kept by the owner for as long as its connection is open.
#[derive(Debug, Default)]
pub(super) struct Counted {
    seen: RefCell<Vec<(String, i64, i64)>>,
    /// Whether `open_totals` agreed with a recount of the refunds on this connection
    /// (`totals.rs`).
    totals: Cell<bool>,
}

impl Counted {
    fn agrees(&self, table: &str, version: i64, count: i64) -> bool {
        self.seen.borrow().iter().any(|(t, v, c)| t == table && *v == version && *c == count)
    }

    fn note(&self, table: &str, version: i64, count: i64) {
        let mut seen = self.seen.borrow_mut();
        seen.retain(|(t, _, _)| t != table);
        seen.push((table.to_string(), version, count));
    }

    pub(super) fn totals_agreed(&self) -> bool {
        self.totals.get()
    }

    pub(super) fn note_totals_agreed(&self) {
        self.totals.set(true);
    }
}

fn data_version(conn: &Connection) -> Result<i64, QueueError> {
    Ok(conn.prepare_cached("PRAGMA data_version")?.query_row([], |r| r.get(0))?)
}

/// Writes a table's count (the upgrade sets it from the rows present).
pub(super) fn save(conn: &Connection, sealer: &Sealer, table: &str, count: i64) -> Result<(), QueueError> {
    let seal = seal_of(sealer, &sequence::queue_id(conn)?, table, count);
    conn.prepare_cached(
        "INSERT INTO row_counts (name, count, seal) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET count = excluded.count, seal = excluded.seal",
    )?
    .execute(params![table, count, seal.to_vec()])?;
    Ok(())
}

/// Checks one table: `Ok(Err(detail))` when rows were deleted or added outside the agent, or
/// the count record itself was altered.
pub fn check(conn: &Connection, sealer: &Sealer, table: &str) -> Result<Result<i64, String>, QueueError> {
    check_seen(conn, sealer, &Counted::default(), table)
}

/// [`check`], counting the rows only when `seen` cannot vouch for them.
fn check_seen(
    conn: &Connection,
    sealer: &Sealer,
    seen: &Counted,
    table: &str,
) -> Result<Result<i64, String>, QueueError> {
    let label = COUNTED.iter().find(|(t, _)| *t == table).map_or(table, |(_, l)| *l);
    let stored: Option<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT count, seal FROM row_counts WHERE name = ?1")?
        .query_row([table], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((count, seal)) = stored else {
        return Ok(Err(format!("the sealed count of {label} in table {table} is missing")));
    };
    let queue_id = sequence::queue_id(conn)?;
    if !sealer.verify(
        "row_count",
        &[queue_id.as_bytes(), table.as_bytes(), count.to_string().as_bytes()],
        &seal,
    ) {
        return Ok(Err(format!("the sealed count of {label} in table {table} does not verify")));
    }
    let version = data_version(conn)?;
    if seen.agrees(table, version, count) {
        return Ok(Ok(count));
    }
    let found = present(conn, table)?;
    if found == count {
        seen.note(table, version, count);
    }
    if found != count {
        let what = if found < count { "missing from" } else { "added to" };
        return Ok(Err(format!(
            "{} {label} {what} table {table} outside the agent ({count} written by the agent, {found} present)",
            (count - found).abs()
        )));
    }
    Ok(Ok(count))
}

/// Checks every counted table, joining what is wrong.
pub fn check_all(conn: &Connection, sealer: &Sealer) -> Result<Result<(), String>, QueueError> {
    let mut wrong = Vec::new();
    for (table, _) in COUNTED {
        if let Err(detail) = check(conn, sealer, table)? {
            wrong.push(detail);
        }
    }
    Ok(if wrong.is_empty() { Ok(()) } else { Err(wrong.join("; ")) })
}

/// Verifies a table's count and raises it by one, in the transaction that inserts the row.
pub fn bump(conn: &Connection, sealer: &Sealer, table: &str) -> Result<(), QueueError> {
    bump_seen(conn, sealer, &Counted::default(), table)
}

/// [`bump`] on the owner's connection, which remembers the counts it saw (see [`Counted`]).
pub(super) fn bump_in(db: &Db<'_>, table: &str) -> Result<(), QueueError> {
    bump_seen(db.conn, db.sealer, db.counted, table)
}

fn bump_seen(conn: &Connection, sealer: &Sealer, seen: &Counted, table: &str) -> Result<(), QueueError> {
    match check_seen(conn, sealer, seen, table)? {
        Ok(count) => {
            save(conn, sealer, table, count + 1)?;
            // The caller inserts the row in this job; should the job be rolled back, the sealed
            // count goes back with it and no longer agrees with this note, so it is counted.
            seen.note(table, data_version(conn)?, count + 1);
            Ok(())
        }
        Err(detail) => Err(QueueError::Conflict(format!(
            "{detail}: rows were removed outside the agent; refusing to add to it (restore the state directory from a backup)"
        ))),
    }
}

/// The migration that starts counting `tables` (version 5: sales and keys; version 6: manager
/// lock-outs) counts the rows present, trusting them.
pub(super) fn adopt(conn: &Connection, sealer: &Sealer, tables: &[&str]) -> Result<(), QueueError> {
    for table in tables {
        let n = present(conn, table)?;
        save(conn, sealer, table, n)?;
    }
    Ok(())
}
