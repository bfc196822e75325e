//! Reads: refunds and the queue as shown to people. A row whose seal fails is quarantined on
//! the way.

use std::str::FromStr;

use rusqlite::{Connection, OptionalExtension};
use rust_decimal::Decimal;

use super::audit::ChainState;
use super::db::Db;
use super::delivery::{sql_literal, DeliveryState, RefundState};
use super::error::QueueError;
use super::rows::{self, DeliveryRow, RefundRow};
use super::seal::Sealer;
use super::view::{ApprovalView, AuditStatus, DeliveryView, QueueStatus, RefundView, ViewState};
use crate::clock::rfc3339;
use crate::money::Currency;
use crate::refund::ValidRefund;

/// A refund as shown to people. A row whose seal fails is quarantined here too.
pub(super) fn view(db: &Db<'_>, id: &str, now: i64) -> Result<Option<RefundView>, QueueError> {
    let Some(row) = rows::load_refund(db.conn, id)? else {
        return Ok(None);
    };
    let mut view = view_row(db, row, now)?;
    view.audit = Some(super::audit::for_refund(db.conn, id)?);
    Ok(Some(view))
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
pub(super) fn build_view(
    row: RefundRow,
    body: Option<&ValidRefund>,
    deliveries: &[DeliveryRow],
    quarantine_reason: Option<String>,
) -> RefundView {
    let text = |f: fn(&ValidRefund) -> Option<String>| body.and_then(f);
    RefundView {
        // A row whose state names none was quarantined by whoever read it: `open` refuses it.
        state: match (&quarantine_reason, row.state.get()) {
            (None, Ok(state)) => ViewState::Refund(state),
            _ => ViewState::Quarantined,
        },
        quarantine_reason,
        amount: row.amount.clone(),
        currency: row.currency.clone(),
        receipt_id: row.receipt_id.clone(),
        transaction_id: text(|b| b.transaction_id.clone()),
        reason: text(|b| Some(b.reason.clone())).unwrap_or_default(),
        operator: text(|b| Some(b.operator.clone())).unwrap_or_default(),
        manager_approval: body
            .and_then(|b| b.approval.as_ref())
            .map(|a| ApprovalView { manager: a.manager.clone(), approved_at: rfc3339(a.approved_at_ms) }),
        unlinked: body.is_some_and(|b| b.unlinked),
        created_at: rfc3339(row.created_at),
        balance_after: body.and_then(|b| b.balance_after.map(|v| b.currency.format(v))),
        deliveries: deliveries
            .iter()
            .map(|d| DeliveryView {
                destination: d.destination.clone(),
                state: d.state.as_str().to_string(),
                attempts: d.attempts,
                remote_id: d.remote_id.clone(),
                last_error: d.last_error.clone(),
                next_attempt_at: (d.state() == Ok(DeliveryState::Pending))
                    .then(|| rfc3339(d.next_attempt_at)),
                updated_at: rfc3339(d.updated_at),
            })
            .collect(),
        audit: None,
        id: row.id,
    }
}

/// Refunds, newest first, optionally only those in one state (`quarantined` included).
pub(super) fn list(
    db: &Db<'_>,
    state: Option<ViewState>,
    limit: i64,
    now: i64,
) -> Result<Vec<RefundView>, QueueError> {
    let state = match state {
        Some(ViewState::Quarantined) => {
            let ids: Vec<String> = db
                .conn
                .prepare("SELECT refund_id FROM quarantine ORDER BY at DESC LIMIT ?1")?
                .query_map([limit], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            return ids.iter().filter_map(|id| view(db, id, now).transpose()).collect();
        }
        Some(ViewState::Refund(state)) => Some(state),
        // Purged refunds are no longer listed: retention removed them.
        Some(ViewState::Purged) => return Ok(Vec::new()),
        None => None,
    };
    rows::list_refunds(db.conn, state, limit)?.into_iter().map(|row| view_row(db, row, now)).collect()
}

/// Queue-wide counts for the status endpoint. `now` is the jump-safe trusted now
/// (`crate::clock`), so a wall clock set forward does not make every pending refund look old.
/// The audit chain gets its cheap check (`audit::check`).
pub(super) fn status(db: &Db<'_>, now: i64) -> Result<QueueStatus, QueueError> {
    status_on(db.conn, db.sealer, now)
}

/// [`status`] on any connection: the handle runs it on a read-only connection of its own
/// (`reader.rs`), off the owner thread.
pub(super) fn status_on(conn: &Connection, sealer: &Sealer, now: i64) -> Result<QueueStatus, QueueError> {
    let mut s = QueueStatus::default();
    for state in RefundState::ALL {
        s.refunds.insert(state.as_str().to_string(), 0);
    }
    let mut stmt = conn.prepare_cached("SELECT state, COUNT(*) FROM refunds GROUP BY state")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (state, n) = row?;
        s.refunds.insert(state, n as u64);
    }
    s.quarantined = conn.query_row("SELECT COUNT(*) FROM quarantine", [], |r| r.get::<_, i64>(0))? as u64;
    // Status reads what an index gives without reading every open refund: the oldest open
    // refund of each state is the first of that state in queue order (a seek on
    // `refunds_by_state`), and the pending amounts are summed from `refunds_open_totals` alone
    // (`totals::recount`), not taken from the `open_totals` table, which is checked only when a
    // refund is validated.
    let mut oldest: Option<i64> = None;
    let mut stmt =
        conn.prepare_cached("SELECT created_at FROM refunds WHERE state = ?1 ORDER BY seq LIMIT 1")?;
    for state in RefundState::OPEN {
        let first: Option<i64> = stmt.query_row([state.as_str()], |r| r.get(0)).optional()?;
        if let Some(t) = first {
            oldest = Some(oldest.map_or(t, |o| o.min(t)));
        }
    }
    s.oldest_pending_age_s = oldest.map(|t| (now - t).max(0) / 1000);
    for (code, (minor, _)) in super::totals::recount(conn)? {
        let currency = Currency::from_str(&code)
            .map_err(|e| QueueError::Storage(format!("an open refund holds currency {code:?}: {e}")))?;
        s.pending_amount.insert(code, currency.format(Decimal::new(minor, currency.minor_units())));
    }
    let mut stmt = conn
        .prepare_cached("SELECT destination, state, COUNT(*) FROM deliveries GROUP BY destination, state")?;
    for row in
        stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))?
    {
        let (dest, state, n) = row?;
        s.deliveries.entry(dest).or_default().insert(state, n as u64);
    }
    let last: Option<i64> = conn.query_row(
        &format!(
            "SELECT MAX(updated_at) FROM deliveries WHERE state = {}",
            sql_literal(DeliveryState::Delivered)
        ),
        [],
        |r| r.get(0),
    )?;
    s.last_delivered_at = last.map(rfc3339);
    let retries: i64 = conn
        .prepare_cached("SELECT COALESCE(SUM(attempts - 1), 0) FROM deliveries WHERE attempts > 1")?
        .query_row([], |r| r.get(0))?;
    s.delivery_retries = retries.max(0) as u64;
    if let ChainState::Broken { seq, problem } = super::audit::check(conn, sealer)? {
        s.audit = AuditStatus { broken: true, first_broken_seq: seq, problem: Some(problem), walked: false };
    }
    Ok(s)
}
