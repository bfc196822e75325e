//! The queue's operations. Each runs inside the owner's write transaction (see `owner.rs`), so
//! reading the facts, validating and storing a refund happen atomically.

use std::collections::BTreeMap;
use std::str::FromStr;

use rusqlite::{params, OptionalExtension};
use rust_decimal::Decimal;

use super::delivery::{aggregate, DeliveryState, RefundState};
use super::error::QueueError;
use super::owner::Db;
use super::rows::{self, DeliveryRow, RefundRow, SaleKey};
use super::view::{DeliveryView, QueueStatus, RefundView};
use crate::clock::rfc3339;
use crate::refund::{validate, Facts, RefundDraft, RefundId, RejectCode, Rejection, SaleRef, ValidRefund};
use crate::sale::{Sale, SaleInput};

/// A refund made (or found again by its idempotency key).
#[derive(Debug, Clone)]
pub struct Created {
    pub refund: RefundView,
    /// True when the idempotency key named an existing refund and nothing new was stored.
    pub replayed: bool,
}

/// Validates and stores a refund with one pending delivery per routed destination. With an
/// idempotency key, a repeat of the same request returns the first refund.
pub fn create_refund(
    db: &Db<'_>,
    draft: RefundDraft,
    key: Option<&str>,
    now: i64,
) -> Result<Result<Created, Rejection>, QueueError> {
    let draft = match draft.normalized() {
        Ok(d) => d,
        Err(r) => return Ok(Err(r)),
    };
    let fingerprint = draft.fingerprint();
    if key.is_some_and(crate::pan::holds_card_data) {
        return Ok(Err(crate::refund::draft::card_data_in("idempotency key")));
    }
    if let Some(key) = key {
        let known: Option<(Vec<u8>, String)> = db
            .conn
            .prepare_cached("SELECT fingerprint, refund_id FROM idempotency_keys WHERE key = ?1")?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((stored, refund_id)) = known {
            if stored != fingerprint {
                return Ok(Err(Rejection::new(
                    RejectCode::IdempotencyKeyReused,
                    format!("this idempotency key was already used for refund {refund_id} with different details; use a new key for a new refund"),
                )));
            }
            let refund = view(db, &refund_id, now)?
                .ok_or_else(|| QueueError::NotFound(format!("refund {refund_id}")))?;
            return Ok(Ok(Created { refund, replayed: true }));
        }
    }

    let sale = match draft.sale_ref() {
        Ok(SaleRef::Receipt(r)) => rows::find_sale(db.conn, db.sealer, SaleKey::Receipt, &r)?,
        Ok(SaleRef::Transaction(t)) => rows::find_sale(db.conn, db.sealer, SaleKey::Transaction, &t)?,
        Err(r) => return Ok(Err(r)),
    };
    let facts = gather_facts(db, sale, &draft)?;
    let refund = match validate(&draft, &facts, &db.settings.policy, RefundId::new(), now) {
        Ok(r) => r,
        Err(r) => return Ok(Err(r)),
    };
    let Some(destinations) = db.settings.router.destinations_for(refund.processor()) else {
        return Ok(Err(Rejection::new(
            RejectCode::NoRoute,
            format!(
                "no route in the configuration sends refunds of processor {:?} anywhere",
                refund.processor().unwrap_or("(none)")
            ),
        )));
    };

    let id = refund.id.to_string();
    let mut row = RefundRow {
        seq: 0,
        id: id.clone(),
        receipt_id: refund.receipt_id.clone(),
        currency: refund.currency.code().to_string(),
        amount: refund.currency.format(refund.amount),
        amount_minor: rows::minor_units(&refund)
            .ok_or_else(|| QueueError::Storage("amount out of range".into()))?,
        state: RefundState::Queued.as_str().to_string(),
        created_at: now,
        updated_at: now,
        body: serde_json::to_string(&refund).map_err(|e| QueueError::Storage(e.to_string()))?,
        destinations: serde_json::to_string(destinations).map_err(|e| QueueError::Storage(e.to_string()))?,
        seal: Vec::new(),
    };
    rows::insert_refund(db.conn, db.sealer, &mut row)?;
    let mut written = Vec::with_capacity(destinations.len());
    for (position, destination) in destinations.iter().enumerate() {
        let mut d = DeliveryRow {
            refund_id: id.clone(),
            position: position as i64,
            destination: destination.clone(),
            state: DeliveryState::Pending.as_str().to_string(),
            attempts: 0,
            next_attempt_at: now,
            step: 0,
            remote_id: None,
            last_error: None,
            updated_at: now,
            seal: Vec::new(),
        };
        rows::save_delivery(db.conn, db.sealer, &mut d, true)?;
        written.push(d);
    }
    if let Some(key) = key {
        db.conn.prepare_cached(
            "INSERT INTO idempotency_keys (key, fingerprint, refund_id, created_at) VALUES (?1, ?2, ?3, ?4)",
        )?.execute(
            params![key, fingerprint.to_vec(), id, now],
        )?;
    }
    // Built from what was just written: reading it back would only cost time.
    Ok(Ok(Created { refund: build_view(row, Some(&refund), &written, None), replayed: false }))
}

fn gather_facts(db: &Db<'_>, sale: Option<Sale>, draft: &RefundDraft) -> Result<Facts, QueueError> {
    let currency = match &sale {
        Some(s) => s.currency,
        None => draft
            .currency
            .as_deref()
            .and_then(|c| c.parse().ok())
            .unwrap_or(db.settings.policy.default_currency),
    };
    let minor = |sum: i64| Decimal::new(sum, currency.minor_units());
    // Sums are integer minor units: exact. The sale's refunds come from a covering index and
    // the open totals from `open_totals` (kept by triggers), so the cost of a new refund does
    // not grow with the queue.
    let refunded_before = match &sale {
        Some(sale) => minor(db.conn.prepare_cached(
            "SELECT COALESCE(SUM(amount_minor), 0) FROM refunds WHERE receipt_id = ?1 AND state NOT IN ('cancelled', 'declined')",
        )?
        .query_row([&sale.receipt_id], |r| r.get(0))?),
        None => Decimal::ZERO,
    };
    let (pending, queue_len): (i64, i64) = db
        .conn
        .prepare_cached(
            "SELECT COALESCE(SUM(CASE WHEN currency = ?1 THEN amount_minor END), 0), COALESCE(SUM(count), 0)
             FROM open_totals",
        )?
        .query_row([currency.code()], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let (tax_refunded_before, discount_refunded_before) = match &sale {
        Some(sale) => breakdown_refunded(db, &sale.receipt_id)?,
        None => (Decimal::ZERO, Decimal::ZERO),
    };
    Ok(Facts {
        sale,
        refunded_before,
        tax_refunded_before,
        discount_refunded_before,
        pending_in_currency: minor(pending),
        queue_len: queue_len as u64,
    })
}

/// The tax and discount parts of a sale's refunds that still count, summed as decimals.
fn breakdown_refunded(db: &Db<'_>, receipt_id: &str) -> Result<(Decimal, Decimal), QueueError> {
    let mut stmt = db.conn.prepare_cached(
        "SELECT json_extract(body, '$.tax'), json_extract(body, '$.discount') FROM refunds
         WHERE receipt_id = ?1 AND state NOT IN ('cancelled', 'declined')",
    )?;
    let mut rows = stmt.query([receipt_id])?;
    let (mut tax, mut discount) = (Decimal::ZERO, Decimal::ZERO);
    let parse = |v: Option<String>| v.and_then(|t| t.parse::<Decimal>().ok()).unwrap_or(Decimal::ZERO);
    while let Some(row) = rows.next()? {
        tax += parse(row.get(0)?);
        discount += parse(row.get(1)?);
    }
    Ok((tax, discount))
}

/// A sale registered (or found identical).
#[derive(Debug, Clone)]
pub struct SaleAdded {
    pub sale: Sale,
    pub replayed: bool,
}

/// Adds a sale to the ledger. The same receipt sent twice is accepted once; a receipt id or
/// transaction id reused with other details is refused.
pub fn add_sale(db: &Db<'_>, input: SaleInput, now: i64) -> Result<Result<SaleAdded, Rejection>, QueueError> {
    let sale = match Sale::from_input(input) {
        Ok(s) => s,
        Err(e) => {
            let code = match e {
                crate::sale::SaleError::Amount { .. } => RejectCode::InvalidAmount,
                crate::sale::SaleError::Inconsistent(_) => RejectCode::InconsistentReceipt,
                crate::sale::SaleError::CardData(_) => RejectCode::CardDataInField,
                _ => RejectCode::InvalidRequest,
            };
            return Ok(Err(Rejection::new(code, e.to_string())));
        }
    };
    let keys =
        [(SaleKey::Receipt, sale.receipt_id.clone()), (SaleKey::Transaction, sale.transaction_id.clone())];
    for (key, value) in keys {
        if let Some(existing) = rows::find_sale(db.conn, db.sealer, key, &value)? {
            if existing == sale {
                return Ok(Ok(SaleAdded { sale, replayed: true }));
            }
            return Err(QueueError::Conflict(format!(
                "receipt {} / transaction {} is already in the ledger with different details",
                existing.receipt_id, existing.transaction_id
            )));
        }
    }
    rows::insert_sale(db.conn, db.sealer, &sale, now)?;
    Ok(Ok(SaleAdded { sale, replayed: false }))
}

/// A refund as shown to people. A row whose seal fails is quarantined here too.
pub fn view(db: &Db<'_>, id: &str, now: i64) -> Result<Option<RefundView>, QueueError> {
    let Some(row) = rows::load_refund(db.conn, id)? else {
        return Ok(None);
    };
    Ok(Some(view_row(db, row, now)?))
}

fn view_row(db: &Db<'_>, row: RefundRow, now: i64) -> Result<RefundView, QueueError> {
    let deliveries = rows::load_deliveries(db.conn, &row.id)?;
    let mut problem = row.open(db.sealer).and_then(|_| row.check_deliveries(&deliveries)).err();
    for d in &deliveries {
        if problem.is_none() {
            problem = d.open(db.sealer).err();
        }
    }
    if let Some(reason) = &problem {
        tracing::error!(refund_id = %row.id, %reason, "quarantining a refund whose seal does not verify");
        rows::quarantine(db.conn, &row.id, reason, now)?;
    }
    let quarantine_reason = rows::quarantine_reason(db.conn, &row.id)?;
    let body: Option<ValidRefund> = serde_json::from_str(&row.body).ok();
    Ok(build_view(row, body.as_ref(), &deliveries, quarantine_reason))
}

/// The view of a refund from its rows (already verified, or just written).
fn build_view(
    row: RefundRow,
    body: Option<&ValidRefund>,
    deliveries: &[DeliveryRow],
    quarantine_reason: Option<String>,
) -> RefundView {
    let text = |f: fn(&ValidRefund) -> Option<String>| body.and_then(f);
    RefundView {
        state: if quarantine_reason.is_some() { "quarantined".into() } else { row.state.clone() },
        quarantine_reason,
        amount: row.amount.clone(),
        currency: row.currency.clone(),
        receipt_id: row.receipt_id.clone(),
        transaction_id: text(|b| b.transaction_id.clone()),
        reason: text(|b| Some(b.reason.clone())).unwrap_or_default(),
        operator: text(|b| Some(b.operator.clone())).unwrap_or_default(),
        manager_approval: text(|b| b.manager_approval.clone()),
        unlinked: body.is_some_and(|b| b.unlinked),
        created_at: rfc3339(row.created_at),
        balance_after: body.and_then(|b| b.balance_after.map(|v| b.currency.format(v))),
        deliveries: deliveries
            .iter()
            .map(|d| DeliveryView {
                destination: d.destination.clone(),
                state: d.state.clone(),
                attempts: d.attempts,
                remote_id: d.remote_id.clone(),
                last_error: d.last_error.clone(),
                next_attempt_at: (d.state() == DeliveryState::Pending).then(|| rfc3339(d.next_attempt_at)),
                updated_at: rfc3339(d.updated_at),
            })
            .collect(),
        id: row.id,
    }
}

/// Refunds, newest first, optionally only those in one state (`quarantined` included).
pub fn list(db: &Db<'_>, state: Option<&str>, limit: i64, now: i64) -> Result<Vec<RefundView>, QueueError> {
    if state == Some("quarantined") {
        let ids: Vec<String> = db
            .conn
            .prepare("SELECT refund_id FROM quarantine ORDER BY at DESC LIMIT ?1")?
            .query_map([limit], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        return ids.iter().filter_map(|id| view(db, id, now).transpose()).collect();
    }
    rows::list_refunds(db.conn, state, limit)?.into_iter().map(|row| view_row(db, row, now)).collect()
}

/// A delivery handed to the sync worker, already marked `in_flight` and committed.
#[derive(Debug, Clone)]
pub struct Claim {
    pub refund: ValidRefund,
    pub destination: String,
    pub position: i64,
    pub attempts: i64,
    pub step: i64,
    pub remote_id: Option<String>,
}

/// Claims up to `limit` due deliveries for sending, except to the destinations in `skip`.
/// Rows whose seals fail are quarantined and never returned: nothing altered is ever sent.
pub fn claim_due(db: &Db<'_>, now: i64, limit: i64, skip: &[String]) -> Result<Vec<Claim>, QueueError> {
    let skip = serde_json::to_string(skip).map_err(|e| QueueError::Storage(e.to_string()))?;
    let mut claims = Vec::new();
    for mut d in rows::due_deliveries(db.conn, now, limit, &skip)? {
        // The refund's whole delivery list is checked, not only this row: with an earlier
        // delivery row deleted, this one would look due although that destination never got it.
        let all = rows::load_deliveries(db.conn, &d.refund_id)?;
        let opened = rows::load_refund(db.conn, &d.refund_id)?
            .ok_or_else(|| format!("refund {} is missing", d.refund_id))
            .and_then(|row| {
                row.open(db.sealer).and_then(|(refund, _)| row.check_deliveries(&all).map(|_| refund))
            })
            .and_then(|refund| d.open(db.sealer).map(|_| refund));
        let refund = match opened {
            Ok(refund) => refund,
            Err(reason) => {
                tracing::error!(refund_id = %d.refund_id, %reason, "quarantining a refund whose seal does not verify; it will not be sent");
                rows::quarantine(db.conn, &d.refund_id, &reason, now)?;
                continue;
            }
        };
        d.state = DeliveryState::InFlight.as_str().to_string();
        d.attempts += 1;
        d.updated_at = now;
        rows::save_delivery(db.conn, db.sealer, &mut d, false)?;
        claims.push(Claim {
            refund,
            destination: d.destination,
            position: d.position,
            attempts: d.attempts,
            step: d.step,
            remote_id: d.remote_id,
        });
    }
    Ok(claims)
}

/// What happened to a claimed delivery, as the sync worker decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// One request of a multi-request delivery succeeded; the delivery stays in flight.
    Progress {
        step: i64,
        remote_id: Option<String>,
    },
    Delivered {
        remote_id: Option<String>,
    },
    Retry {
        at_ms: i64,
        error: String,
    },
    Declined {
        error: String,
    },
    Failed {
        error: String,
    },
    Unknown {
        error: String,
    },
}

/// Records the outcome of a claimed delivery and updates its refund's state.
pub fn record(
    db: &Db<'_>,
    refund_id: &str,
    position: i64,
    outcome: Recorded,
    now: i64,
) -> Result<(), QueueError> {
    let mut all = rows::load_deliveries(db.conn, refund_id)?;
    let idx = all
        .iter()
        .position(|d| d.position == position)
        .ok_or_else(|| QueueError::NotFound(format!("delivery {refund_id}#{position}")))?;
    let current = match all[idx].open(db.sealer) {
        Ok(s) => s,
        Err(reason) => {
            rows::quarantine(db.conn, refund_id, &reason, now)?;
            return Ok(());
        }
    };
    let (next, error) = match &outcome {
        Recorded::Progress { .. } => (DeliveryState::InFlight, None),
        Recorded::Delivered { .. } => (DeliveryState::Delivered, None),
        Recorded::Retry { error, .. } => (DeliveryState::Pending, Some(error.clone())),
        Recorded::Declined { error } => (DeliveryState::Declined, Some(error.clone())),
        Recorded::Failed { error } => (DeliveryState::Failed, Some(error.clone())),
        Recorded::Unknown { error } => (DeliveryState::Unknown, Some(error.clone())),
    };
    if !current.can_become(next) {
        return Err(QueueError::InvalidTransition(format!(
            "delivery {refund_id}#{position} cannot go from {current} to {next}"
        )));
    }
    let d = &mut all[idx];
    d.state = next.as_str().to_string();
    d.last_error = error.map(|e| truncate(&e, 500));
    d.updated_at = now;
    match outcome {
        Recorded::Progress { step, remote_id } => {
            d.step = step;
            d.remote_id = remote_id.or(d.remote_id.take());
        }
        Recorded::Delivered { remote_id } => d.remote_id = remote_id.or(d.remote_id.take()),
        Recorded::Retry { at_ms, .. } => d.next_attempt_at = at_ms,
        _ => {}
    }
    rows::save_delivery(db.conn, db.sealer, d, false)?;
    if next == DeliveryState::Declined {
        let who = d.destination.clone();
        for later in all.iter_mut().filter(|l| l.position > position && l.state() == DeliveryState::Pending) {
            later.state = DeliveryState::Cancelled.as_str().to_string();
            later.last_error = Some(format!("not sent: {who} declined the refund"));
            later.updated_at = now;
            rows::save_delivery(db.conn, db.sealer, later, false)?;
        }
    }
    update_refund_state(db, refund_id, &all, now)
}

fn update_refund_state(
    db: &Db<'_>,
    refund_id: &str,
    deliveries: &[DeliveryRow],
    now: i64,
) -> Result<(), QueueError> {
    let Some(mut row) = rows::load_refund(db.conn, refund_id)? else {
        return Ok(());
    };
    let current =
        match row.open(db.sealer).and_then(|(_, state)| row.check_deliveries(deliveries).map(|_| state)) {
            Ok(state) => state,
            Err(reason) => return rows::quarantine(db.conn, refund_id, &reason, now),
        };
    if matches!(current, RefundState::Cancelled | RefundState::Expired) {
        return Ok(());
    }
    let states: Vec<DeliveryState> = deliveries.iter().map(DeliveryRow::state).collect();
    let next = aggregate(&states);
    if next != current {
        rows::set_refund_state(db.conn, db.sealer, &mut row, next, now)?;
    }
    Ok(())
}

/// What start-up recovery did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovery {
    /// In-flight deliveries to deduplicating destinations, set back to pending.
    pub resent: u64,
    /// In-flight deliveries to destinations that do not deduplicate: now `unknown`.
    pub unknown: u64,
}

/// Start-up recovery: a delivery left `in_flight` by a crash may or may not have reached its
/// destination. It is sent again only where the destination deduplicates on the refund id;
/// elsewhere it becomes `unknown` for a person (never a blind second payment).
pub fn recover(db: &Db<'_>, dedup: &dyn Fn(&str) -> bool, now: i64) -> Result<Recovery, QueueError> {
    let mut report = Recovery::default();
    for d in rows::deliveries_in_state(db.conn, DeliveryState::InFlight)? {
        let outcome = if dedup(&d.destination) {
            report.resent += 1;
            Recorded::Retry {
                at_ms: now,
                error: "interrupted while in flight; sending again (the destination deduplicates on the refund id)".into(),
            }
        } else {
            report.unknown += 1;
            Recorded::Unknown {
                error: "interrupted while in flight; the destination may have processed it and does not deduplicate: resolve by hand".into(),
            }
        };
        record(db, &d.refund_id, d.position, outcome, now)?;
    }
    Ok(report)
}

/// The earliest time a pending delivery becomes due (destinations in `skip` aside), to know
/// how long the worker may sleep. Written as ORDER BY … LIMIT 1 so that SQLite walks
/// `deliveries_due` in order and stops at the first match instead of scanning the queue.
pub fn next_due(db: &Db<'_>, skip: &[String]) -> Result<Option<i64>, QueueError> {
    let skip = serde_json::to_string(skip).map_err(|e| QueueError::Storage(e.to_string()))?;
    Ok(db
        .conn
        .prepare_cached(
            "SELECT d.next_attempt_at FROM deliveries d JOIN refunds r ON r.id = d.refund_id
         WHERE d.state = 'pending' AND r.state = 'queued'
           AND d.destination NOT IN (SELECT value FROM json_each(?1))
         ORDER BY d.next_attempt_at LIMIT 1",
        )?
        .query_row([skip], |r| r.get(0))
        .optional()?)
}

/// Makes every pending delivery to `destination` due now: its connectivity is back, and
/// waiting out a backoff that grew while it was away would only delay the refunds.
pub fn reset_backoff(db: &Db<'_>, destination: &str, now: i64) -> Result<u64, QueueError> {
    let mut n = 0;
    let rows: Vec<DeliveryRow> = rows::deliveries_in_state(db.conn, DeliveryState::Pending)?
        .into_iter()
        .filter(|d| d.destination == destination && d.next_attempt_at > now)
        .collect();
    for mut d in rows {
        if d.open(db.sealer).is_err() {
            continue;
        }
        d.next_attempt_at = now;
        rows::save_delivery(db.conn, db.sealer, &mut d, false)?;
        n += 1;
    }
    Ok(n)
}

/// Flags refunds undelivered for longer than `max_pending_age` as expired (for a person to
/// decide; never dropped) and purges finished refunds older than the retention.
pub fn sweep(db: &Db<'_>, now: i64) -> Result<(u64, u64), QueueError> {
    let mut expired = 0;
    if let Some(max_age) = db.settings.max_pending_age_ms {
        let old: Vec<String> = db
            .conn
            .prepare("SELECT id FROM refunds WHERE state = 'queued' AND created_at < ?1")?
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
                rows::load_deliveries(db.conn, &id)?.iter().any(|d| d.state() == DeliveryState::InFlight);
            if busy {
                continue;
            }
            rows::set_refund_state(db.conn, db.sealer, &mut row, RefundState::Expired, now)?;
            rows::audit(
                db.conn,
                Some(&id),
                "agent",
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
        .prepare_cached(
            "SELECT id FROM refunds WHERE state IN ('delivered', 'cancelled', 'declined') AND updated_at < ?1
             AND id NOT IN (SELECT refund_id FROM quarantine)",
        )?
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
    super::sequence::record_purge(db.conn, db.sealer, &seqs, deliveries)?;
    Ok(seqs.len() as u64)
}

/// Queue-wide counts for the status endpoint.
pub fn status(db: &Db<'_>, now: i64) -> Result<QueueStatus, QueueError> {
    let mut s = QueueStatus::default();
    for state in RefundState::ALL {
        s.refunds.insert(state.as_str().to_string(), 0);
    }
    let mut stmt = db.conn.prepare_cached("SELECT state, COUNT(*) FROM refunds GROUP BY state")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (state, n) = row?;
        s.refunds.insert(state, n as u64);
    }
    s.quarantined = db.conn.query_row("SELECT COUNT(*) FROM quarantine", [], |r| r.get::<_, i64>(0))? as u64;
    let oldest: Option<i64> = db.conn.query_row(
        "SELECT MIN(created_at) FROM refunds WHERE state IN ('queued', 'expired', 'unknown')",
        [],
        |r| r.get(0),
    )?;
    s.oldest_pending_age_s = oldest.map(|t| (now - t).max(0) / 1000);
    let mut pending: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut stmt = db.conn.prepare_cached(
        "SELECT currency, amount FROM refunds WHERE state IN ('queued', 'expired', 'unknown')",
    )?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (currency, amount) = row?;
        *pending.entry(currency).or_default() += Decimal::from_str(&amount).unwrap_or_default();
    }
    s.pending_amount = pending.into_iter().map(|(c, a)| (c, a.to_string())).collect();
    let mut stmt = db
        .conn
        .prepare_cached("SELECT destination, state, COUNT(*) FROM deliveries GROUP BY destination, state")?;
    for row in
        stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))?
    {
        let (dest, state, n) = row?;
        s.deliveries.entry(dest).or_default().insert(state, n as u64);
    }
    let last: Option<i64> =
        db.conn.query_row("SELECT MAX(updated_at) FROM deliveries WHERE state = 'delivered'", [], |r| {
            r.get(0)
        })?;
    s.last_delivered_at = last.map(rfc3339);
    let retries: i64 = db
        .conn
        .prepare_cached("SELECT COALESCE(SUM(attempts - 1), 0) FROM deliveries WHERE attempts > 1")?
        .query_row([], |r| r.get(0))?;
    s.delivery_retries = retries.max(0) as u64;
    Ok(s)
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
