//! The delivery lifecycle: claiming due deliveries, recording their outcomes, start-up
//! recovery of those left in flight, and when the next one is due. Each runs inside the
//! owner's write transaction (see `owner/`).

use rusqlite::OptionalExtension;

use super::db::Db;
use super::delivery::{aggregate, sql_literal, DeliveryState, RefundState};
use super::error::QueueError;
use super::rows::{self, DeliveryRow};
use crate::refund::ValidRefund;

/// A delivery handed to the sync worker, already marked `in_flight` and committed.
#[derive(Debug, Clone)]
pub struct Claim {
    pub refund: ValidRefund,
    pub destination: String,
    pub position: i64,
    pub attempts: i64,
    pub step: i64,
    pub remote_id: Option<String>,
    /// Every destination of the refund's route, in order (from its sealed delivery list): the
    /// worker needs it to know whether any of them moves money.
    pub route: Vec<String>,
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
        let route = all.iter().map(|r| r.destination.clone()).collect();
        d.state = DeliveryState::InFlight.into();
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
            route,
        });
    }
    Ok(claims)
}

/// Makes due now every pending delivery scheduled further ahead than `max_delay_ms`, the
/// longest delay the agent sets: it was scheduled before the wall clock went back, and waiting
/// for it would park the refund for as long as the jump (`clock::is_due`). The query is a range
/// of `deliveries_due`, so it costs one index probe when nothing is that far ahead.
pub fn clamp_far_future(db: &Db<'_>, now: i64, max_delay_ms: i64) -> Result<u64, QueueError> {
    let limit = now.saturating_add(max_delay_ms);
    let far: Vec<(String, i64)> = db
        .conn
        .prepare_cached(&format!(
            "SELECT refund_id, position FROM deliveries WHERE state = {} AND next_attempt_at > ?1",
            sql_literal(DeliveryState::Pending)
        ))?
        .query_map([limit], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut n = 0;
    for (refund_id, position) in far {
        let Some(mut d) =
            rows::load_deliveries(db.conn, &refund_id)?.into_iter().find(|d| d.position == position)
        else {
            continue;
        };
        // A row whose seal fails is left alone here; claiming quarantines it.
        if d.open(db.sealer).is_err() || !crate::clock::is_due(d.next_attempt_at, now, max_delay_ms) {
            continue;
        }
        d.next_attempt_at = now;
        rows::save_delivery(db.conn, db.sealer, &mut d, false)?;
        n += 1;
    }
    if n > 0 {
        tracing::warn!(
            deliveries = n,
            "deliveries scheduled further ahead than the longest retry delay (the clock went back): due now"
        );
    }
    Ok(n)
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
    d.state = next.into();
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
        cancel_after_decline(db, &mut all, position, now)?;
    }
    update_refund_state(db, refund_id, &all, now)
}

/// Cancels the pending deliveries after the one at `position`, which declined the refund: a
/// later destination is never called once one that moves money refused.
pub(super) fn cancel_after_decline(
    db: &Db<'_>,
    all: &mut [DeliveryRow],
    position: i64,
    now: i64,
) -> Result<(), QueueError> {
    let who = all.iter().find(|d| d.position == position).map(|d| d.destination.clone()).unwrap_or_default();
    for later in all.iter_mut().filter(|l| l.position > position && l.state() == Ok(DeliveryState::Pending)) {
        later.state = DeliveryState::Cancelled.into();
        later.last_error = Some(format!("not sent: {who} declined the refund"));
        later.updated_at = now;
        rows::save_delivery(db.conn, db.sealer, later, false)?;
    }
    Ok(())
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
    let states = match deliveries.iter().map(DeliveryRow::state).collect::<Result<Vec<_>, _>>() {
        Ok(states) => states,
        Err(reason) => return rows::quarantine(db.conn, refund_id, &reason, now),
    };
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

/// The earliest time a delivery that a claim would take becomes due (`rows::claimable`,
/// destinations in `skip` aside), to know how long the worker may sleep. Written as ORDER BY …
/// LIMIT 1 so that SQLite walks `deliveries_due` in order and stops at the first match instead
/// of scanning the queue.
pub fn next_due(db: &Db<'_>, skip: &[String]) -> Result<Option<i64>, QueueError> {
    let skip = serde_json::to_string(skip).map_err(|e| QueueError::Storage(e.to_string()))?;
    Ok(db.conn.prepare_cached(&next_due_sql())?.query_row([skip], |r| r.get(0)).optional()?)
}

/// The statement of [`next_due`]: `?1` the destinations skipped.
pub(super) fn next_due_sql() -> String {
    format!(
        "SELECT d.next_attempt_at FROM deliveries d JOIN refunds r ON r.id = d.refund_id
         WHERE {} ORDER BY d.next_attempt_at LIMIT 1",
        rows::claimable("?1")
    )
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
