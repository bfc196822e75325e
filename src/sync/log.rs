//! The log line of each recorded outcome: refund id, destination and what happened, at the level
//! a technician reading the journal needs (a retry warns, a failure or an unknown outcome is an
//! error). Never the refund's body: ids and the connector's error text only.

use crate::clock::trusted_now_ms;
use crate::queue::{Claim, Recorded};

pub(super) fn log_outcome(claim: &Claim, recorded: &Recorded) {
    let id = claim.refund.id;
    let dest = &claim.destination;
    match recorded {
        Recorded::Delivered { remote_id } => {
            tracing::info!(refund_id = %id, destination = %dest, remote_id = remote_id.as_deref().unwrap_or(""), "delivered")
        }
        Recorded::Progress { step, .. } => {
            tracing::debug!(refund_id = %id, destination = %dest, step, "step done")
        }
        Recorded::Retry { at_ms, error } => {
            tracing::warn!(refund_id = %id, destination = %dest, attempt = claim.attempts, retry_in_ms = at_ms - trusted_now_ms(), %error, "will retry")
        }
        Recorded::Declined { error } => {
            tracing::warn!(refund_id = %id, destination = %dest, %error, "declined")
        }
        Recorded::Failed { error } => {
            tracing::error!(refund_id = %id, destination = %dest, %error, "failed")
        }
        Recorded::Unknown { error } => {
            tracing::error!(refund_id = %id, destination = %dest, %error, "outcome unknown")
        }
    }
}
