//! Intake: refunds and sales coming in. Each runs inside the owner's write transaction (see
//! `owner/`), so reading the facts, validating and storing a refund happen atomically.

use rust_decimal::Decimal;

use super::audit::AuditCaller;
use super::db::Db;
use super::delivery::{sql_list, DeliveryState, RefundState};
use super::error::QueueError;
use super::keys::{self, KeyRow};
use super::ledger::{self, Refunded, SaleKey, SaleRecord};
use super::reads::{build_view, view};
use super::rows::{self, DeliveryRow, RefundRow};
use super::sequence;
use super::view::RefundView;
use crate::manager::Approval;
use crate::money::Currency;
use crate::refund::velocity::DAY_MS;
use crate::refund::{validate, DayTotal, Facts, RefundDraft, RefundId, RejectCode, Rejection, SaleRef};
use crate::sale::{Sale, SaleInput};

/// A refund made (or found again by its idempotency key).
#[derive(Debug, Clone)]
pub struct Created {
    pub refund: RefundView,
    /// True when the idempotency key named an existing refund and nothing new was stored.
    pub replayed: bool,
}

/// Validates and stores a refund with one pending delivery per routed destination, and its
/// `created` audit row naming the operator and `caller`. With an idempotency key, a repeat of
/// the same request returns the first refund (and records nothing). (Without an approval: the
/// queue's own tests.)
#[cfg(test)]
pub fn create_refund(
    db: &Db<'_>,
    draft: RefundDraft,
    key: Option<&str>,
    caller: &AuditCaller,
    now: i64,
) -> Result<Result<Created, Rejection>, QueueError> {
    create_approved(db, draft, key, None, caller, now)
}

/// [`create_refund`] with the manager approval verified for the request, if any: it counts for
/// validation, is sealed in the refund body, and an audit row names the manager.
pub fn create_approved(
    db: &Db<'_>,
    draft: RefundDraft,
    key: Option<&str>,
    approval: Option<Approval>,
    caller: &AuditCaller,
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
        if let Some(known) = keys::find(db.conn, db.sealer, key)? {
            let refund_id = known.refund_id.clone();
            if known.fingerprint != fingerprint {
                return Ok(Err(Rejection::new(
                    RejectCode::IdempotencyKeyReused,
                    format!("this idempotency key was already used for refund {refund_id} with different details; use a new key for a new refund"),
                )));
            }
            // A refund purged by retention keeps its key: the repeat is answered with the old
            // refund's id, shown as `purged`, and nothing new is made.
            let refund = match view(db, &refund_id, now)? {
                Some(v) => v,
                None => RefundView::purged(refund_id, known.amount, known.currency),
            };
            return Ok(Ok(Created { refund, replayed: true }));
        }
    }

    let sale = match draft.sale_ref() {
        Ok(SaleRef::Receipt(r)) => ledger::find_record(db.conn, db.sealer, SaleKey::Receipt, &r)?,
        Ok(SaleRef::Transaction(t)) => ledger::find_record(db.conn, db.sealer, SaleKey::Transaction, &t)?,
        Err(r) => return Ok(Err(r)),
    };
    let facts = Facts { approval, ..gather_facts(db, sale, &draft, now)? };
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
        seq: sequence::advance(db, destinations.len() as i64)?,
        id: id.clone(),
        receipt_id: refund.receipt_id.clone(),
        currency: refund.currency.code().to_string(),
        amount: refund.currency.format(refund.amount),
        amount_minor: rows::minor_units(&refund)
            .ok_or_else(|| QueueError::Storage("amount out of range".into()))?,
        state: RefundState::Queued.into(),
        created_at: now,
        updated_at: now,
        body: serde_json::to_string(&refund).map_err(|e| QueueError::Storage(e.to_string()))?,
        destinations: serde_json::to_string(destinations).map_err(|e| QueueError::Storage(e.to_string()))?,
        seal: Vec::new(),
    };
    rows::insert_refund(db.conn, db.sealer, &mut row)?;
    if let Some(a) = &refund.approval {
        let detail = format!("refund of {} {} by {} approved", row.amount, row.currency, refund.operator);
        super::audit::by(db, Some(&id), &a.manager, caller, "approve", &detail, now)?;
    }
    ledger::apply_refund(db.conn, db.sealer, &refund, 1)?;
    let mut written = Vec::with_capacity(destinations.len());
    for (position, destination) in destinations.iter().enumerate() {
        let mut d = DeliveryRow {
            refund_id: id.clone(),
            position: position as i64,
            destination: destination.clone(),
            state: DeliveryState::Pending.into(),
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
        let mut k = KeyRow {
            key: key.to_string(),
            fingerprint: fingerprint.to_vec(),
            refund_id: id.clone(),
            amount: row.amount.clone(),
            currency: row.currency.clone(),
            seal: Vec::new(),
        };
        super::counts::bump_in(db, "idempotency_keys")?;
        keys::insert(db.conn, db.sealer, &mut k, now)?;
    }
    let detail = format!("{} {} to {}", row.amount, row.currency, destinations.join(", "));
    super::audit::by(db, Some(&id), &refund.operator, caller, "created", &detail, now)?;
    // Built from what was just written: reading it back would only cost time.
    Ok(Ok(Created { refund: build_view(row, Some(&refund), &written, None), replayed: false }))
}

fn gather_facts(
    db: &Db<'_>,
    record: Option<SaleRecord>,
    draft: &RefundDraft,
    now: i64,
) -> Result<Facts, QueueError> {
    let currency = match &record {
        Some(r) => r.sale.currency,
        None => draft
            .currency
            .as_deref()
            .and_then(|c| c.parse().ok())
            .unwrap_or(db.settings.policy.default_currency),
    };
    let minor = |sum: i64| Decimal::new(sum, currency.minor_units());
    // What the sale refunded comes from its sealed ledger record (kept in the transactions that
    // store and release refunds, untouched by purges), and the open totals from `open_totals`
    // (kept by triggers, compared with the refunds once per connection, `totals.rs`), so the
    // cost of a new refund does not grow with the queue.
    super::totals::ensure(db)?;
    let (pending, queue_len): (i64, i64) = db
        .conn
        .prepare_cached(
            "SELECT COALESCE(SUM(CASE WHEN currency = ?1 THEN amount_minor END), 0), COALESCE(SUM(count), 0)
             FROM open_totals",
        )?
        .query_row([currency.code()], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let (sale, refunded) = match record {
        Some(r) => (Some(r.sale), r.refunded),
        None => (None, Refunded::default()),
    };
    let (operator_day, till_day) = match db.settings.policy.limits.get(&currency) {
        Some(limits) if limits.has_velocity() => day_totals(db, currency, draft.operator.trim(), now)?,
        _ => (DayTotal::default(), DayTotal::default()),
    };
    Ok(Facts {
        sale,
        refunded_before: refunded.amount,
        tax_refunded_before: refunded.tax,
        discount_refunded_before: refunded.discount,
        lines_before: refunded.lines,
        pending_in_currency: minor(pending),
        queue_len: queue_len as u64,
        approval: None,
        operator_day,
        till_day,
    })
}

/// The operator's and the till's refunds in `currency` over the day ending now that still
/// count (not cancelled or declined), for the velocity limits. The day ends at the trusted now
/// (`clock.rs`), so setting the clock forward cannot age today's refunds out; a clock set back
/// only makes refunds stamped "later" count too, since the window has no upper end. Refunds
/// already purged are not counted; config refuses a retention shorter than the day while a
/// velocity limit is set. The operator is read from the sealed body, which holds it trimmed.
fn day_totals(
    db: &Db<'_>,
    currency: Currency,
    operator: &str,
    now: i64,
) -> Result<(DayTotal, DayTotal), QueueError> {
    // The trusted now is never ahead of the wall clock `now`; the `min` also keeps tests that
    // pass a fixed `now` on their own time line.
    let since = crate::clock::trusted_now_ms().min(now) - DAY_MS;
    let minor = |sum: i64| Decimal::new(sum, currency.minor_units());
    let sql = format!(
        "SELECT COUNT(CASE WHEN json_extract(body, '$.operator') = ?3 THEN 1 END),
                COALESCE(SUM(CASE WHEN json_extract(body, '$.operator') = ?3 THEN amount_minor END), 0),
                COUNT(*), COALESCE(SUM(amount_minor), 0)
         FROM refunds WHERE currency = ?1 AND created_at > ?2 AND state NOT IN {}",
        sql_list(&RefundState::RELEASED)
    );
    let (op_count, op_sum, till_count, till_sum): (i64, i64, i64, i64) = db
        .conn
        .prepare_cached(&sql)?
        .query_row(rusqlite::params![currency.code(), since, operator], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
    Ok((
        DayTotal { count: op_count as u64, amount: minor(op_sum) },
        DayTotal { count: till_count as u64, amount: minor(till_sum) },
    ))
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
        if let Some(existing) = ledger::find_sale(db.conn, db.sealer, key, &value)? {
            if existing == sale {
                return Ok(Ok(SaleAdded { sale, replayed: true }));
            }
            return Err(QueueError::Conflict(format!(
                "receipt {} / transaction {} is already in the ledger with different details",
                existing.receipt_id, existing.transaction_id
            )));
        }
    }
    // A sale deleted outside the agent must not come back with other numbers: the ledger's
    // sealed count is checked (and raised) before the new sale goes in.
    super::counts::bump_in(db, "sales")?;
    // Refunds made against the receipt before the sale was known still count against it.
    let refunded = ledger::sum_present(db.conn, &sale.receipt_id)?;
    ledger::insert_sale(db.conn, db.sealer, &sale, &refunded, now)?;
    Ok(Ok(SaleAdded { sale, replayed: false }))
}
