//! `open_totals`: the undelivered amount and count per currency, kept by triggers on `refunds`
//! (`migrate.rs`) so that a new refund's exposure cap and queue length cost O(1). It is derived
//! data outside every seal, so a connection does not take it as it finds it in the file: the
//! first time it would decide with it, it counts the open refunds again and compares; when the
//! two disagree (someone edited the table, or dropped a trigger, while the agent was stopped)
//! the table is rebuilt from the refunds in that same transaction, before the refund is
//! validated against it.
//!
//! The recount reads every open refund, so it is made by the first refund validated on a
//! connection, not by the open: the time to READY does not grow with the queue. Once it agreed,
//! only the triggers change the table in the transactions of the connection that checked it,
//! as they did before it checked. A rebuild is not taken as checked: it might be rolled back
//! with its job, so the next refund compares again (and then agrees).

use std::collections::BTreeMap;

use rusqlite::Connection;

use super::db::Db;
use super::delivery::RefundState;
use super::error::QueueError;

/// Amount in minor units and number of refunds, per currency.
pub(super) type Totals = BTreeMap<String, (i64, i64)>;

/// Makes sure `open_totals` agrees with the refunds before the caller reads it (see the module
/// text); free once it did on this connection.
pub(super) fn ensure(db: &Db<'_>) -> Result<(), QueueError> {
    if db.counted.totals_agreed() {
        return Ok(());
    }
    let recount = recount(db.conn)?;
    if stored(db.conn)? == recount {
        db.counted.note_totals_agreed();
        return Ok(());
    }
    tracing::error!(
        "the open totals did not agree with the refunds (edited outside the agent); rebuilt from the refunds"
    );
    rebuild(db.conn, &recount)
}

/// The open refunds counted again. One statement per open state, so that SQLite reads
/// `refunds_open_totals` in its order and groups as it goes; an `IN` over the states would sort
/// every open refund first. Status reads its pending amounts this way too (`reads::status_on`):
/// from the refunds, whatever the table says, and from the index alone.
pub(super) fn recount(conn: &Connection) -> Result<Totals, QueueError> {
    let mut totals = Totals::new();
    let mut stmt = conn.prepare_cached(
        "SELECT currency, SUM(amount_minor), COUNT(*) FROM refunds WHERE state = ?1 GROUP BY currency",
    )?;
    for state in RefundState::OPEN {
        let rows = stmt.query_map([state.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        for row in rows {
            let (currency, amount, count): (String, i64, i64) = row?;
            let entry = totals.entry(currency).or_default();
            entry.0 += amount;
            entry.1 += count;
        }
    }
    Ok(totals)
}

/// What the table holds. The triggers leave a currency's row at zero when its last open refund
/// leaves; such a row says the same as no row.
fn stored(conn: &Connection) -> Result<Totals, QueueError> {
    let mut stmt = conn.prepare_cached(
        "SELECT currency, amount_minor, count FROM open_totals WHERE amount_minor <> 0 OR count <> 0",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn rebuild(conn: &Connection, totals: &Totals) -> Result<(), QueueError> {
    conn.prepare_cached("DELETE FROM open_totals")?.execute([])?;
    let mut insert =
        conn.prepare_cached("INSERT INTO open_totals (currency, amount_minor, count) VALUES (?1, ?2, ?3)")?;
    for (currency, (amount, count)) in totals {
        insert.execute(rusqlite::params![currency, amount, count])?;
    }
    Ok(())
}
