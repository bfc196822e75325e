//! The worker's side of the group commit (`queue::settle`): a delivery task does not record its
//! outcome itself but hands it to the worker loop, which records every outcome waiting and
//! claims the next due deliveries into the slots they free, in one queue job and so in one
//! COMMIT. The task hears "stored" only after that COMMIT and only then goes on (a next step,
//! or nothing), so an outcome is still on disk before anything more is sent for its delivery,
//! and a claim's request still leaves only after its `in_flight` is on disk.
//!
//! The loop also keeps the slots: which delivery tasks are live and for which destination, for
//! the per-destination cap ([`MAX_IN_FLIGHT_PER_DESTINATION`]) and the overall one
//! ([`MAX_IN_FLIGHT`]). A task gives its slot back when its last outcome is stored (it only
//! has to end then), or when it ends, whichever comes first.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::{self, JoinSet};

use super::worker::{Worker, MAX_IN_FLIGHT, MAX_IN_FLIGHT_PER_DESTINATION};
use crate::queue::{Ask, Outcome, QueueError};

/// A finished request's outcome on its way to the worker loop; `stored` answers after the
/// COMMIT that holds it, or with why it was not stored.
#[derive(Debug)]
pub(super) struct Finished {
    /// The delivery task it comes from, whose slot a stored last outcome frees.
    pub task: Option<task::Id>,
    pub outcome: Outcome,
    pub stored: oneshot::Sender<Result<(), QueueError>>,
}

/// The longest an outcome waits for the outcomes of the other requests in flight before it is
/// recorded without them. Against a destination that answers at once, the requests claimed
/// together come back within a fraction of a COMMIT; recording them together takes one COMMIT
/// instead of one for each, and keeps the slots in step (without it they split into groups
/// that take turns, each COMMIT carrying only part of them). Small beside a request over a
/// network, so a slow destination loses little to it.
const LINGER: Duration = Duration::from_millis(2);

/// Where delivery tasks send their outcomes.
pub(super) type Outbox = mpsc::UnboundedSender<Finished>;

/// The outcomes waiting for the next settle job, and the slots in use.
#[derive(Debug, Default)]
pub(super) struct Batch {
    waiting: Vec<Finished>,
    /// When the oldest outcome waiting arrived.
    since: Option<Instant>,
    /// The live delivery tasks whose delivery is not finished, with their destination.
    slots: HashMap<task::Id, String>,
}

/// What one settle job did, for the worker loop.
#[derive(Debug, Default)]
pub(super) struct Step {
    /// How many deliveries were claimed (and their tasks started).
    pub claimed: usize,
    /// Claiming failed for some destination (the queue could not store the claim).
    pub claim_failed: bool,
}

impl Batch {
    /// An outcome to record with the next settle job.
    pub fn push(&mut self, f: Finished) {
        self.since.get_or_insert_with(Instant::now);
        self.waiting.push(f);
    }

    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// How much longer the outcomes waiting should wait for the other requests in flight
    /// ([`LINGER`]); `None` when they are to be recorded now: every live task has reported, or
    /// the oldest has waited long enough.
    pub fn linger(&self) -> Option<Duration> {
        let since = self.since?;
        let reported: HashSet<task::Id> = self.waiting.iter().filter_map(|f| f.task).collect();
        if self.slots.keys().all(|id| reported.contains(id)) {
            return None;
        }
        LINGER.checked_sub(since.elapsed()).filter(|left| !left.is_zero())
    }

    fn in_flight(&self, destination: &str) -> usize {
        self.slots.values().filter(|d| *d == destination).count()
    }

    /// Whether a slot is free, or one is about to be by an outcome waiting to be recorded.
    pub fn has_room(&self) -> bool {
        self.slots.len() < MAX_IN_FLIGHT || self.waiting.iter().any(|f| f.outcome.ends_delivery())
    }

    /// What the next settle job may claim: the free slots of every destination in `names`
    /// (those not on hold), and `None` when no slot is free or about to be.
    pub fn ask(&self, names: &[&String], held: &[String], max_delay: Duration) -> Option<Ask> {
        let ending = |d: Option<&str>| {
            let ends = self.waiting.iter().filter(|f| f.outcome.ends_delivery());
            ends.filter(|f| d.is_none_or(|d| d == f.outcome.destination)).count()
        };
        let total = MAX_IN_FLIGHT.saturating_sub(self.slots.len());
        let rooms: Vec<(String, usize)> = names
            .iter()
            .map(|d| (d.to_string(), MAX_IN_FLIGHT_PER_DESTINATION.saturating_sub(self.in_flight(d))))
            .collect();
        let possible = total + ending(None) > 0 && rooms.iter().any(|(d, free)| free + ending(Some(d)) > 0);
        possible.then(|| Ask { rooms, total, held: held.to_vec(), max_delay })
    }

    /// A delivery task ended (or was aborted, or panicked): its slot is free in any case.
    pub fn ended(&mut self, task: task::Id) {
        self.slots.remove(&task);
    }
}

impl Worker {
    /// Records every outcome waiting and claims into `ask` in one queue job, starts a task for
    /// each claim, then tells each outcome's task whether it was stored.
    pub(super) async fn settle(
        &self,
        batch: &mut Batch,
        ask: Option<Ask>,
        tasks: &mut JoinSet<()>,
        outbox: &Outbox,
    ) -> Step {
        let waiting = std::mem::take(&mut batch.waiting);
        batch.since = None;
        let outcomes = waiting.iter().map(|f| f.outcome.clone()).collect();
        let asked = ask.is_some();
        let started = Instant::now();
        let settled = match self.queue.settle(outcomes, ask).await {
            Ok(settled) => settled,
            Err(e) => {
                if asked {
                    tracing::error!(error = %e, "cannot record outcomes or claim deliveries");
                }
                for f in waiting {
                    let _ = f.stored.send(Err(e.clone()));
                }
                return Step { claimed: 0, claim_failed: asked };
            }
        };
        for (f, result) in waiting.iter().zip(&settled.recorded) {
            // The task ends after this answer unless it goes on to a next step, or will try
            // to store the outcome again (the queue could not store it).
            let goes_on = match result {
                Ok(()) => !f.outcome.ends_delivery(),
                Err(e) => retried(e),
            };
            if let (false, Some(id)) = (goes_on, f.task) {
                batch.ended(id);
            }
        }
        let step = Step { claimed: settled.claims.len(), claim_failed: settled.claim_error.is_some() };
        tracing::debug!(
            recorded = waiting.len(),
            claimed = step.claimed,
            took_us = started.elapsed().as_micros() as u64,
            "outcomes and claims committed"
        );
        for claim in settled.claims {
            let destination = claim.destination.clone();
            let this = self.clone();
            let outbox = outbox.clone();
            let handle = tasks.spawn(async move { this.deliver(claim, &outbox).await });
            batch.slots.insert(handle.id(), destination);
        }
        for (f, result) in waiting.into_iter().zip(settled.recorded) {
            let _ = f.stored.send(result);
        }
        step
    }
}

/// Whether a delivery task keeps an outcome the queue could not store and tries again (a full
/// disk, a failed write); anything else it gives up, for start-up recovery.
pub(super) fn retried(e: &QueueError) -> bool {
    matches!(e, QueueError::StorageFull | QueueError::Storage(_))
}

/// Hands an outcome to the worker loop and waits until it is stored or refused.
pub(super) async fn store(outbox: &Outbox, outcome: Outcome) -> Result<(), QueueError> {
    let (stored, answer) = oneshot::channel();
    outbox.send(Finished { task: task::try_id(), outcome, stored }).map_err(|_| QueueError::Closed)?;
    answer.await.map_err(|_| QueueError::Closed)?
}
