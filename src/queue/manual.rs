//! Decisions made by a person (through the CLI or the control API): retry, cancel, resolve.
//! Each is checked against the refund's state, recorded in the sealed audit chain with the
//! manager whose approval was verified for it (the `operator` argument: who decided) and the
//! caller it came through, and never lets money move twice: an `unknown` delivery is resent
//! only after a person has
//! checked at the destination that it is not there.

use super::audit::{self, AuditCaller};
use super::db::Db;
use super::delivery::{aggregate, DeliveryState, RefundState};
use super::error::QueueError;
use super::rows::{self, DeliveryRow};
use super::view::RefundView;

/// A person's answer for a delivery whose outcome was unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The destination has the refund: record it as delivered.
    Delivered,
    /// The destination does not have it: send it again.
    NotDelivered,
}

fn invalid(message: String) -> QueueError {
    QueueError::InvalidTransition(message)
}

/// Loads and verifies a refund and its deliveries; a failed seal quarantines and refuses.
pub(super) fn load(
    db: &Db<'_>,
    id: &str,
    now: i64,
) -> Result<(rows::RefundRow, RefundState, Vec<DeliveryRow>), QueueError> {
    let row = rows::load_refund(db.conn, id)?.ok_or_else(|| QueueError::NotFound(format!("refund {id}")))?;
    let deliveries = rows::load_deliveries(db.conn, id)?;
    let checked = row.open(db.sealer).and_then(|(_, state)| {
        row.check_deliveries(&deliveries)?;
        deliveries.iter().try_for_each(|d| d.open(db.sealer).map(|_| ())).map(|_| state)
    });
    match checked {
        Ok(state) if rows::quarantine_reason(db.conn, id)?.is_none() => Ok((row, state, deliveries)),
        Ok(_) => {
            Err(invalid(format!("refund {id} is quarantined; it can only be investigated, not changed")))
        }
        Err(reason) => {
            rows::quarantine(db.conn, id, &reason, now)?;
            Err(invalid(format!("refund {id} is quarantined: {reason}")))
        }
    }
}

fn save_state(
    db: &Db<'_>,
    mut row: rows::RefundRow,
    deliveries: &[DeliveryRow],
    forced: Option<RefundState>,
    now: i64,
) -> Result<(), QueueError> {
    // Every delivery was opened by `load`, so each state is known.
    let states = deliveries
        .iter()
        .map(DeliveryRow::state)
        .collect::<Result<Vec<_>, _>>()
        .map_err(QueueError::Storage)?;
    let next = forced.unwrap_or_else(|| aggregate(&states));
    rows::set_refund_state(db.conn, db.sealer, &mut row, next, now)
}

/// Sends a refund again after a person fixed what made it fail (credentials, configuration), or
/// takes an expired refund back into the queue. `unknown` deliveries must be resolved first and
/// declined refunds are final (make a new refund).
pub fn retry(
    db: &Db<'_>,
    id: &str,
    operator: &str,
    caller: &AuditCaller,
    now: i64,
) -> Result<RefundView, QueueError> {
    let (row, state, mut deliveries) = load(db, id, now)?;
    match state {
        RefundState::Failed | RefundState::Expired | RefundState::Queued => {}
        RefundState::Unknown => {
            return Err(invalid(format!(
                "refund {id} has a delivery whose outcome is unknown; check at the destination and use resolve first"
            )))
        }
        other => return Err(invalid(format!("refund {id} is {other}; only failed, expired or queued refunds can be retried"))),
    }
    if deliveries.iter().any(|d| d.state() == Ok(DeliveryState::Unknown)) {
        return Err(invalid(format!(
            "refund {id} has a delivery whose outcome is unknown; resolve it first"
        )));
    }
    let mut changed = 0;
    for d in deliveries
        .iter_mut()
        .filter(|d| matches!(d.state(), Ok(DeliveryState::Failed | DeliveryState::Pending)))
    {
        d.state = DeliveryState::Pending.into();
        d.next_attempt_at = now;
        d.updated_at = now;
        rows::save_delivery(db.conn, db.sealer, d, false)?;
        changed += 1;
    }
    save_state(db, row, &deliveries, None, now)?;
    audit::by(db, Some(id), operator, caller, "retry", &format!("{changed} deliveries due now"), now)?;
    super::reads::view(db, id, now)?.ok_or_else(|| QueueError::NotFound(format!("refund {id}")))
}

/// Cancels a refund before any money moved: refused once any delivery was made, is in flight,
/// or has an unknown outcome.
pub fn cancel(
    db: &Db<'_>,
    id: &str,
    operator: &str,
    caller: &AuditCaller,
    reason: &str,
    now: i64,
) -> Result<RefundView, QueueError> {
    let (row, state, mut deliveries) = load(db, id, now)?;
    if matches!(state, RefundState::Cancelled | RefundState::Declined | RefundState::Delivered) {
        return Err(invalid(format!("refund {id} is already {state}")));
    }
    if let Some(d) = deliveries.iter().find(|d| {
        matches!(d.state(), Ok(DeliveryState::Delivered | DeliveryState::InFlight | DeliveryState::Unknown))
    }) {
        return Err(invalid(format!(
            "refund {id} cannot be cancelled: its delivery to {} is {} (money may have moved)",
            d.destination,
            d.state.as_str()
        )));
    }
    for d in
        deliveries.iter_mut().filter(|d| d.state().is_ok_and(|s| !s.is_final() || s == DeliveryState::Failed))
    {
        d.state = DeliveryState::Cancelled.into();
        d.last_error = Some(format!("cancelled by {operator}"));
        d.updated_at = now;
        rows::save_delivery(db.conn, db.sealer, d, false)?;
    }
    save_state(db, row, &deliveries, Some(RefundState::Cancelled), now)?;
    audit::by(db, Some(id), operator, caller, "cancel", reason, now)?;
    super::reads::view(db, id, now)?.ok_or_else(|| QueueError::NotFound(format!("refund {id}")))
}

/// Resolves an `unknown` delivery after a person checked at the destination. With several
/// unknown deliveries, `destination` says which.
pub fn resolve(
    db: &Db<'_>,
    id: &str,
    destination: Option<&str>,
    resolution: Resolution,
    operator: &str,
    caller: &AuditCaller,
    now: i64,
) -> Result<RefundView, QueueError> {
    let (row, _, mut deliveries) = load(db, id, now)?;
    let unknown: Vec<usize> = deliveries
        .iter()
        .enumerate()
        .filter(|(_, d)| {
            d.state() == Ok(DeliveryState::Unknown) && destination.is_none_or(|n| n == d.destination)
        })
        .map(|(i, _)| i)
        .collect();
    let i = match unknown.as_slice() {
        [i] => *i,
        [] => {
            return Err(invalid(format!(
                "refund {id} has no delivery with an unknown outcome{}",
                for_dest(destination)
            )))
        }
        _ => {
            return Err(invalid(format!(
                "refund {id} has several unknown deliveries; name one with --destination"
            )))
        }
    };
    let (state, what) = match resolution {
        Resolution::Delivered => (DeliveryState::Delivered, "delivered"),
        Resolution::NotDelivered => (DeliveryState::Pending, "not delivered; sending again"),
    };
    let change = Settle {
        state,
        remote_id: None,
        error: format!("resolved by {operator}: {what}"),
        action: "resolve",
        detail: what.to_string(),
    };
    settle(db, row, &mut deliveries, i, change, operator, caller, now)?;
    super::reads::view(db, id, now)?.ok_or_else(|| QueueError::NotFound(format!("refund {id}")))
}

/// How an `unknown` delivery is settled, by a person or by a lookup at the destination.
#[derive(Debug, Clone)]
pub(super) struct Settle {
    /// Its next state: delivered, pending (sent again), declined, or still unknown.
    pub state: DeliveryState,
    /// A new `remote_id` (the destination's record, found by a lookup); `None` keeps it.
    pub remote_id: Option<String>,
    /// Kept as the delivery's `last_error`: who settled it and how.
    pub error: String,
    /// The audit row's action and detail (the destination's name is put before the detail).
    pub action: &'static str,
    pub detail: String,
}

/// Settles the `unknown` delivery `deliveries[i]` of the refund `row` (both verified by
/// [`load`]), with its refund's state and the audit row, in the caller's transaction. A decline
/// cancels the route's later destinations, as a decline by the destination itself does.
#[allow(clippy::too_many_arguments)]
pub(super) fn settle(
    db: &Db<'_>,
    row: rows::RefundRow,
    deliveries: &mut [DeliveryRow],
    i: usize,
    change: Settle,
    actor: &str,
    caller: &AuditCaller,
    now: i64,
) -> Result<(), QueueError> {
    let d = &mut deliveries[i];
    if d.state() != Ok(DeliveryState::Unknown) {
        return Err(invalid(format!(
            "the delivery of refund {} to {} is {}, not unknown",
            d.refund_id,
            d.destination,
            d.state.as_str()
        )));
    }
    d.state = change.state.into();
    d.next_attempt_at = now;
    d.updated_at = now;
    d.last_error = Some(change.error);
    if let Some(remote_id) = change.remote_id {
        d.remote_id = Some(remote_id);
    }
    let (dest, position, id) = (d.destination.clone(), d.position, d.refund_id.clone());
    rows::save_delivery(db.conn, db.sealer, d, false)?;
    if change.state == DeliveryState::Declined {
        super::lifecycle::cancel_after_decline(db, deliveries, position, now)?;
    }
    save_state(db, row, deliveries, None, now)?;
    audit::by(db, Some(&id), actor, caller, change.action, &format!("{dest}: {}", change.detail), now)
}

fn for_dest(destination: Option<&str>) -> String {
    destination.map(|d| format!(" at {d}")).unwrap_or_default()
}
