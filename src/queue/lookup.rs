//! What a destination that can look its own record up needs from the queue (a ZVT terminal's
//! Repeat Receipt): a durable note on the in-flight delivery before the request that moves money
//! leaves, the `unknown` deliveries whose note a lookup may read, and their settling.
//!
//! The queue does not read the notes: the connector that writes them says which stored
//! `remote_id`s are live notes (`lookupable`) and how a newer note at the same destination
//! retires an older one (`supersede`). Settling goes through the same code as a person's
//! resolution (`manual::settle`): the delivery, its refund's state, a decline's cancelled later
//! destinations and the audit row, in one transaction.
//!
//! Every note is audit-logged (`note`) in its transaction. A note older than the newest
//! `restore` audit row is never offered to a lookup: it came from a copy, and what the
//! destination did after the copy was taken (a payout the replaced queue knew of) is not known.

use rusqlite::OptionalExtension;

use super::audit::{self, AuditCaller};
use super::db::Db;
use super::delivery::DeliveryState;
use super::error::QueueError;
use super::handle::QueueHandle;
use super::manual::{self, Settle};
use super::rows;
use crate::clock::trusted_now_ms;
use crate::refund::{RefundId, ValidRefund};

/// Who settles a delivery by a lookup, in the audit log.
const ACTOR: &str = "agent";
/// The audit action of a note, and the one a restore records.
const NOTE: &str = "note";
const RESTORE: &str = "restore";

/// An `unknown` delivery with a live note, verified (refund, delivery list and seals).
#[derive(Debug, Clone)]
pub struct LookupCandidate {
    pub refund: ValidRefund,
    pub position: i64,
    /// The note as stored: settling checks that it is still the same.
    pub remote_id: String,
}

/// What a lookup found for a candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupSettlement {
    /// The destination has it: delivered, with its record as the `remote_id`.
    Delivered { remote_id: String, detail: String },
    /// The destination did not act on it: declined (the route's later destinations are
    /// cancelled), never sent again.
    Declined { detail: String },
    /// The lookup read the destination but proves nothing: still unknown for a person, with the
    /// note retired (`remote_id`) so it is not read again.
    Unclear { remote_id: String, detail: String },
}

type Rewrite = dyn Fn(&str) -> Option<String> + Send;
type Check = dyn Fn(&str) -> bool + Send;

/// Stores `note` as the `remote_id` of the in-flight delivery, and retires (`supersede`) every
/// other note on an in-flight or unknown delivery to the same destination: once this request
/// leaves, no older one can be read at the destination any more.
pub(super) fn note(
    db: &Db<'_>,
    refund_id: &str,
    position: i64,
    note: &str,
    supersede: &Rewrite,
    now: i64,
) -> Result<(), QueueError> {
    let mut own = rows::load_deliveries(db.conn, refund_id)?
        .into_iter()
        .find(|d| d.position == position)
        .ok_or_else(|| QueueError::NotFound(format!("delivery {refund_id}#{position}")))?;
    let state = own.open(db.sealer).map_err(QueueError::InvalidTransition)?;
    if state != DeliveryState::InFlight {
        return Err(QueueError::InvalidTransition(format!(
            "delivery {refund_id}#{position} is {state}, not in flight: nothing may be sent for it"
        )));
    }
    for state in [DeliveryState::InFlight, DeliveryState::Unknown] {
        for mut other in rows::deliveries_in_state(db.conn, state)? {
            let same = other.refund_id == refund_id && other.position == position;
            if same || other.destination != own.destination || other.open(db.sealer).is_err() {
                continue;
            }
            if let Some(retired) = other.remote_id.as_deref().and_then(supersede) {
                tracing::info!(refund_id = %other.refund_id, destination = %other.destination, "a newer payout at the destination: this unknown outcome can no longer be looked up");
                other.remote_id = Some(retired);
                other.updated_at = now;
                rows::save_delivery(db.conn, db.sealer, &mut other, false)?;
            }
        }
    }
    own.remote_id = Some(note.to_string());
    own.updated_at = now;
    rows::save_delivery(db.conn, db.sealer, &mut own, false)?;
    let detail = format!("{}: noted what the destination held before the request", own.destination);
    audit::by(db, Some(refund_id), ACTOR, &AuditCaller::agent(), NOTE, &detail, now)
}

/// The newest audit row of `action` (for one refund, or any): its sequence number.
fn newest(db: &Db<'_>, refund_id: Option<&str>, action: &str) -> Result<Option<i64>, QueueError> {
    let seq: Option<i64> = match refund_id {
        Some(id) => db
            .conn
            .prepare_cached("SELECT max(seq) FROM audit WHERE refund_id = ?1 AND action = ?2")?
            .query_row(rusqlite::params![id, action], |r| r.get(0))?,
        None => db
            .conn
            .prepare_cached("SELECT seq FROM audit WHERE action = ?1 ORDER BY seq DESC LIMIT 1")?
            .query_row([action], |r| r.get(0))
            .optional()?,
    };
    Ok(seq)
}

/// The `unknown` deliveries to `destination` whose `remote_id` is a live note. A refund whose
/// rows do not verify is quarantined by `manual::load` and left out.
pub(super) fn candidates(
    db: &Db<'_>,
    destination: &str,
    lookupable: &Check,
    now: i64,
) -> Result<Vec<LookupCandidate>, QueueError> {
    let mut out = Vec::new();
    let mut restored: Option<Option<i64>> = None;
    for d in rows::deliveries_in_state(db.conn, DeliveryState::Unknown)? {
        let Some(remote_id) = d.remote_id.clone().filter(|r| d.destination == destination && lookupable(r))
        else {
            continue;
        };
        // Read only when a live note is there: audit rows are not indexed by action.
        let restore = match restored {
            Some(seq) => seq,
            None => *restored.insert(newest(db, None, RESTORE)?),
        };
        let noted = newest(db, Some(&d.refund_id), NOTE)?;
        if noted.is_none_or(|n| restore.is_some_and(|r| n < r)) {
            tracing::info!(refund_id = %d.refund_id, destination, "an unknown outcome noted before a restore (or without the note's audit row) is left to a person");
            continue;
        }
        let Ok((row, _, _)) = manual::load(db, &d.refund_id, now) else { continue };
        let Ok((refund, _)) = row.open(db.sealer) else { continue };
        out.push(LookupCandidate { refund, position: d.position, remote_id });
    }
    Ok(out)
}

/// Settles a candidate, if it is still `unknown` with the same note (a person may have resolved
/// it meanwhile, or a newer payout retired it): whether it was settled.
pub(super) fn settle(
    db: &Db<'_>,
    refund_id: &str,
    position: i64,
    expected: &str,
    settlement: LookupSettlement,
    now: i64,
) -> Result<bool, QueueError> {
    let (row, _, mut deliveries) = manual::load(db, refund_id, now)?;
    let Some(i) = deliveries.iter().position(|d| {
        d.position == position
            && d.state() == Ok(DeliveryState::Unknown)
            && d.remote_id.as_deref() == Some(expected)
    }) else {
        return Ok(false);
    };
    let change = match settlement {
        LookupSettlement::Delivered { remote_id, detail } => Settle {
            state: DeliveryState::Delivered,
            remote_id: Some(remote_id),
            error: format!("looked up at the destination: paid ({detail})"),
            action: "lookup",
            detail: format!("paid: {detail}"),
        },
        LookupSettlement::Declined { detail } => Settle {
            state: DeliveryState::Declined,
            remote_id: None,
            error: format!("looked up at the destination: the terminal did not pay the refund ({detail})"),
            action: "lookup",
            detail: format!("not paid: {detail}"),
        },
        LookupSettlement::Unclear { remote_id, detail } => Settle {
            state: DeliveryState::Unknown,
            remote_id: Some(remote_id),
            error: format!("looked up at the destination, still unknown: {detail}; resolve by hand"),
            action: "lookup",
            detail: format!("still unknown: {detail}"),
        },
    };
    manual::settle(db, row, &mut deliveries, i, change, ACTOR, &AuditCaller::agent(), now)?;
    Ok(true)
}

impl QueueHandle {
    /// Stores the note of a claimed delivery before its request leaves; answered after the
    /// COMMIT. An error means the note is not on disk, and the request must not be sent.
    pub async fn note_before_send(
        &self,
        refund_id: RefundId,
        position: i64,
        text: String,
        supersede: Box<Rewrite>,
    ) -> Result<(), QueueError> {
        self.call(move |db| note(db, &refund_id.to_string(), position, &text, &*supersede, trusted_now_ms()))
            .await
    }

    /// The `unknown` deliveries to `destination` a lookup may settle.
    pub async fn lookup_candidates(
        &self,
        destination: String,
        lookupable: Box<Check>,
    ) -> Result<Vec<LookupCandidate>, QueueError> {
        self.call(move |db| candidates(db, &destination, &*lookupable, trusted_now_ms())).await
    }

    /// Settles an `unknown` delivery by what a lookup found; false when it was no longer
    /// unknown with the same note.
    pub async fn settle_by_lookup(
        &self,
        refund_id: RefundId,
        position: i64,
        expected: String,
        settlement: LookupSettlement,
    ) -> Result<bool, QueueError> {
        self.call(move |db| {
            settle(db, &refund_id.to_string(), position, &expected, settlement, trusted_now_ms())
        })
        .await
    }
}
