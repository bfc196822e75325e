//! A restore over a queue that is intact and current (`restore::Replaced::Current`): that
//! queue knows everything up to the restore, the copy at most a part of it. So the restored
//! queue is the current one, and from the prepared copy only what the current queue never
//! knew is carried into it: refunds (with their deliveries as the copy's preparation marked
//! them, `unknown` where they may have been sent), their creation keys, and sales. Nothing the
//! current queue holds is changed, so a restore over it forgets no refund, no idempotency key
//! and no terminal request id, and a kiosk repeating a request after it still gets the refund
//! it made, not a second one.
//!
//! The same carry runs the other way when the replaced queue is intact but older than the one
//! the agent last ran on (itself put back by hand, or its marker gone): it is prepared as a copy
//! is, and what only it knew is carried into the restored copy, marked the same way.
//!
//! "Never knew" is decided by id (a refund row, or a creation key that names it) and, for
//! refunds the current queue purged, by sequence number: the copy's rows come from the same
//! queue (same id, same seal key), so a number the current queue records as purged was that
//! refund.

use rusqlite::Connection;

use super::audit::{self, AuditCaller};
use super::delivery::DeliveryState;
use super::error::QueueError;
use super::keys::{self, KeyRow};
use super::ledger::{self, SaleKey};
use super::restore::{self, Replaced, Restored, FROM_RESTORE};
use super::rows;
use super::seal::Sealer;
use super::{counts, generation, sequence};

/// Which file the restored queue is built on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// The current queue (`work`), with what only the prepared copy (`from`) knew.
    Current,
    /// The prepared copy (`work`), with what only the older replaced queue (`from`, prepared
    /// the same way) knew.
    Copy,
}

/// Carries what only `from` knows into `work` (both verified and prepared as `restore.rs`
/// does) and gives `work` the restored generation. `restored` comes from preparing the copy;
/// on the current queue its counts become those of the carried refunds, on the copy the
/// carried refunds' counts are added to them.
pub fn carry(
    work: &Connection,
    from: &Connection,
    sealer: &Sealer,
    restored: &mut Restored,
    base: Base,
    origin: &str,
    now: i64,
) -> Result<(), String> {
    let text = |e: QueueError| e.to_string();
    let (work_id, from_id) =
        (sequence::queue_id(work).map_err(text)?, sequence::queue_id(from).map_err(text)?);
    if work_id != from_id {
        return Err(format!(
            "it is a backup of queue {}, but the queue it would replace is queue {}",
            restored.queue_id,
            if base == Base::Current { &work_id } else { &from_id }
        ));
    }
    work.execute_batch("BEGIN IMMEDIATE").map_err(|e| e.to_string())?;
    match carry_in(work, from, sealer, restored, base, origin, now) {
        Ok(()) => work.execute_batch("COMMIT").map_err(|e| e.to_string()),
        Err(e) => {
            let _ = work.execute_batch("ROLLBACK");
            Err(e.to_string())
        }
    }
}

fn carry_in(
    work: &Connection,
    copy: &Connection,
    sealer: &Sealer,
    restored: &mut Restored,
    base: Base,
    origin: &str,
    now: i64,
) -> Result<(), QueueError> {
    let purged = sequence::load(work, sealer)?.map_err(QueueError::Storage)?.purged;
    let actor = restore::actor();
    let agent = AuditCaller::agent();
    let (mut unknown, mut pending, mut to_check, mut carried) = (0, 0, Vec::new(), 0);
    let mut last = 0;
    loop {
        let batch = rows::refunds_after(copy, last, 500)?;
        let Some(end) = batch.last().map(|r| r.seq) else { break };
        for mut row in batch {
            let known = rows::load_refund(work, &row.id)?.is_some()
                || keys::names_refund(work, &row.id)?
                || purged.contains(row.seq);
            // A refund the copy quarantined was never sent from it; it stays in the copy.
            if known || rows::quarantine_reason(copy, &row.id)?.is_some() {
                continue;
            }
            let (refund, state) = row.open(sealer).map_err(QueueError::Storage)?;
            let deliveries = rows::load_deliveries(copy, &row.id)?;
            row.seq = sequence::advance_unstaged(work, sealer, deliveries.len() as i64)?;
            rows::insert_refund(work, sealer, &mut row)?;
            let mut any_unknown = false;
            for mut d in deliveries {
                let marked = d.last_error.as_deref().is_some_and(|e| e.starts_with(FROM_RESTORE));
                match d.state() {
                    Ok(DeliveryState::Unknown) if marked => {
                        unknown += 1;
                        any_unknown = true;
                    }
                    Ok(DeliveryState::Pending) if marked => pending += 1,
                    _ => {}
                }
                rows::save_delivery(work, sealer, &mut d, true)?;
            }
            if state.counts_against_sale() {
                ledger::apply_refund(work, sealer, &refund, 1)?;
            }
            if any_unknown {
                to_check.push(row.id.clone());
            }
            let entry = audit::Entry {
                refund_id: Some(&row.id),
                actor: &actor,
                action: "restore",
                detail: match base {
                    Base::Current => "carried over from the restored copy: the queue it replaced never knew this refund",
                    Base::Copy => "carried over from the older queue the restore replaced: the copy never knew this refund",
                },
                caller: Some(&agent),
                at: now,
            };
            audit::record(work, sealer, &entry)?;
            carried += 1;
        }
        last = end;
    }
    let keys_added = carry_keys(work, copy, sealer, now)?;
    // After the refunds: a sale only the copy knew arrives with the copy's refunded totals,
    // which already hold the refunds just carried (applying them above found no sale here).
    let sales_added = carry_sales(work, copy, sealer, now)?;
    generation::save(work, sealer, restored.generation)?;
    let (onto, only) = match base {
        Base::Current => ("onto the current queue", "the copy"),
        Base::Copy => ("with the older queue it replaced", "that queue"),
    };
    let summary = format!(
        "restored from {origin} {onto} (generation {} from now on): {carried} refund(s), \
         {keys_added} creation key(s) and {sales_added} sale(s) only {only} knew carried over, \
         {unknown} of their deliveries unknown, {pending} pending again",
        restored.generation
    );
    restore::record_restore(work, sealer, &actor, &summary, origin, restored.generation, now)?;
    restored.carried = carried;
    match base {
        Base::Current => {
            restored.unknown = unknown;
            restored.pending = pending;
            restored.to_check = to_check;
            restored.replaced = Replaced::Current;
        }
        Base::Copy => {
            restored.unknown += unknown;
            restored.pending += pending;
            restored.to_check.extend(to_check);
        }
    }
    Ok(())
}

/// Creation keys the copy holds and the current queue does not (a key names one refund
/// forever, so carrying it only makes a repeat answer with that refund).
fn carry_keys(work: &Connection, copy: &Connection, sealer: &Sealer, now: i64) -> Result<u64, QueueError> {
    let mut added = 0;
    for key in keys::all(copy)? {
        if keys::find(work, sealer, &key)?.is_some() {
            continue;
        }
        let Some(found) = keys::find(copy, sealer, &key)? else { continue };
        let mut row = KeyRow { seal: Vec::new(), ..found };
        counts::bump(work, sealer, "idempotency_keys")?;
        keys::insert(work, sealer, &mut row, now)?;
        added += 1;
    }
    Ok(added)
}

/// Sales the copy holds and the current queue does not, with their refunded totals.
fn carry_sales(work: &Connection, copy: &Connection, sealer: &Sealer, now: i64) -> Result<u64, QueueError> {
    let mut added = 0;
    for receipt in ledger::receipts(copy)? {
        if ledger::find_record(work, sealer, SaleKey::Receipt, &receipt)?.is_some() {
            continue;
        }
        let Some(record) = ledger::find_record(copy, sealer, SaleKey::Receipt, &receipt)? else { continue };
        if ledger::find_record(work, sealer, SaleKey::Transaction, &record.sale.transaction_id)?.is_some() {
            tracing::warn!(
                receipt = %receipt,
                "a sale only the restored copy knew has a transaction id the current queue gives another receipt; not carried"
            );
            continue;
        }
        counts::bump(work, sealer, "sales")?;
        ledger::insert_sale(work, sealer, &record.sale, &record.refunded, now)?;
        added += 1;
    }
    Ok(added)
}
