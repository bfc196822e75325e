//! Settling the `unknown` payouts of one terminal from an answer to Repeat Receipt: the
//! candidates come from the queue, each is read against its note ([`lookup::verdict`]), and
//! the queue records the result with its audit row (`queue::lookup`). Called with the
//! terminal's conversation held, by the attempt before it notes its own trace number and by
//! the resolver in `sync::lookup`.

use super::lookup::{self, Note, Verdict};
use super::{amount_minor, record};
use crate::queue::{LookupSettlement, QueueError, QueueHandle};
use crate::terminal::ecr::Outcome;

/// Reads `last` (a completed Repeat Receipt) against every unknown payout to `destination`
/// that carries a live note, and settles them: how many became delivered or declined.
pub async fn settle_unknown(
    queue: &QueueHandle,
    destination: &str,
    last: &Outcome,
) -> Result<u32, QueueError> {
    let candidates = queue.lookup_candidates(destination.to_string(), Box::new(lookup::lookupable)).await?;
    let several = candidates.len() > 1;
    let mut settled = 0;
    for c in candidates {
        let Some(note) = Note::parse(&c.remote_id) else { continue };
        let verdict = match amount_minor(&c.refund) {
            // Every note is written with the others retired, so several live ones mean the
            // queue holds what this agent never wrote: at most one of them can be the
            // terminal's last transaction, and nothing says which.
            _ if several => Verdict::Unknown(
                "several unknown payouts at this terminal; only one can be its last transaction".into(),
            ),
            Some(amount) => {
                let card = c.refund.sale.as_ref().and_then(|s| s.card.as_ref()).map(|c| c.last4.as_str());
                lookup::verdict(&note, amount, card, last)
            }
            None => Verdict::Unknown("the refund's amount cannot be read in minor units".into()),
        };
        let retired = lookup::supersede(&c.remote_id).unwrap_or_else(|| c.remote_id.clone());
        let (settlement, outcome) = match verdict {
            Verdict::Paid(result) => {
                let detail = format!("trace {}", result.trace_number.as_deref().unwrap_or("?"));
                (LookupSettlement::Delivered { remote_id: record(&result, true), detail }, "paid")
            }
            Verdict::NotPaid => {
                let trace = note.zvt_before.as_ref().map(|b| b.trace.as_str()).unwrap_or("?");
                let detail =
                    format!("the terminal's last transaction is still trace {trace}, from before the refund");
                (LookupSettlement::Declined { detail }, "not paid")
            }
            Verdict::Unknown(detail) => {
                (LookupSettlement::Unclear { remote_id: retired, detail }, "still unknown")
            }
        };
        let id = c.refund.id;
        if queue.settle_by_lookup(id, c.position, c.remote_id.clone(), settlement).await? {
            tracing::warn!(refund_id = %id, destination = %destination, outcome, "an unknown payout looked up at the terminal");
            if outcome != "still unknown" {
                settled += 1;
            }
        }
    }
    Ok(settled)
}
