//! Sealed row counts for tables whose rows are never purged (or only by rules of their own),
//! so that a deleted row is noticed: `sales` (never purged), `idempotency_keys` (kept past
//! their refund's purge) and `manager_lockouts` (a deleted row would forget wrong PINs). Each count is raised in the transaction that inserts a row and is
//! sealed with the device key and the queue's id. At start the counts are compared with
//! `COUNT(*)` (no seal scan); before a new sale is registered its table is checked again, so a
//! receipt deleted and registered anew with other numbers is refused.

use rusqlite::{params, Connection, OptionalExtension};

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
    let found = present(conn, table)?;
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
    match check(conn, sealer, table)? {
        Ok(count) => save(conn, sealer, table, count + 1),
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
