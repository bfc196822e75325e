//! Retention: refunds undelivered for too long are flagged for a person, and finished ones
//! older than the retention are purged (see "When rows may be deleted" in `mod.rs`).

use super::db::Db;
use super::delivery::{sql_list, sql_literal, DeliveryState, RefundState};
use super::error::QueueError;
use super::rows;

/// Flags refunds undelivered for longer than `max_pending_age` as expired (for a person to
/// decide; never dropped) and purges finished refunds older than the retention.
pub fn sweep(db: &Db<'_>, now: i64) -> Result<(u64, u64), QueueError> {
    let mut expired = 0;
    if let Some(max_age) = db.settings.max_pending_age_ms {
        let old: Vec<String> = db
            .conn
            .prepare(&format!(
                "SELECT id FROM refunds WHERE state = {} AND created_at < ?1",
                sql_literal(RefundState::Queued)
            ))?
            .query_map([now - max_age], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for id in old {
            let Some(mut row) = rows::load_refund(db.conn, &id)? else {
                continue;
            };
            if row.open(db.sealer).is_err() {
                continue;
            }
            let busy =
                rows::load_deliveries(db.conn, &id)?.iter().any(|d| d.state() == Ok(DeliveryState::InFlight));
            if busy {
                continue;
            }
            rows::set_refund_state(db.conn, db.sealer, &mut row, RefundState::Expired, now)?;
            super::audit::by(
                db,
                Some(&id),
                "agent",
                &super::audit::AuditCaller::agent(),
                "expire",
                "undelivered for longer than max_pending_age",
                now,
            )?;
            tracing::warn!(refund_id = %id, "refund flagged expired: undelivered for longer than max_pending_age");
            expired += 1;
        }
    }
    let purged = match db.settings.retention_ms {
        Some(retention) => purge(db, now - retention, now)?,
        None => 0,
    };
    Ok((expired, purged))
}

/// Deletes finished refunds last changed before `before`, with their deliveries and keys, and
/// records their sequence numbers as purged (so that their absence is not taken for a
/// deletion). Only rows whose seals verify are purged: a state edited to `delivered` must not
/// get an undelivered refund deleted. Quarantined refunds are kept as evidence.
fn purge(db: &Db<'_>, before: i64, now: i64) -> Result<u64, QueueError> {
    let ids: Vec<String> = db
        .conn
        .prepare_cached(&format!(
            "SELECT id FROM refunds WHERE state IN {} AND updated_at < ?1
             AND id NOT IN (SELECT refund_id FROM quarantine)",
            sql_list(&RefundState::FINAL)
        ))?
        .query_map([before], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let (mut seqs, mut deliveries) = (Vec::with_capacity(ids.len()), 0i64);
    for id in ids {
        let Some(row) = rows::load_refund(db.conn, &id)? else {
            continue;
        };
        let rows_of = rows::load_deliveries(db.conn, &id)?;
        let checked = row
            .open(db.sealer)
            .and_then(|_| row.check_deliveries(&rows_of))
            .and_then(|_| rows_of.iter().try_for_each(|d| d.open(db.sealer).map(|_| ())));
        if let Err(reason) = checked {
            tracing::error!(refund_id = %id, %reason, "quarantining a refund whose seal does not verify; it is not purged");
            rows::quarantine(db.conn, &id, &reason, now)?;
            continue;
        }
        db.conn.prepare_cached("DELETE FROM refunds WHERE seq = ?1")?.execute([row.seq])?;
        seqs.push(row.seq);
        deliveries += rows_of.len() as i64;
    }
    super::sequence::record_purge(db, &seqs, deliveries)?;
    Ok(seqs.len() as u64)
}
