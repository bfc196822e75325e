//! The resolver of `unknown` payouts at ZVT terminals: a payout whose outcome was lost (the
//! terminal went away after `06 31`, or the agent stopped or lost power after it left) carries
//! the note of the terminal's last transaction before it (`destinations::zvt::lookup`). When
//! the terminal can be reached again, the resolver connects, registers, reads the last
//! transaction with Repeat Receipt and settles the payout by it: paid (delivered, and the
//! route's next destination follows), not paid (declined, never sent again) or still unknown
//! for a person. Every decision is audit-logged by the queue.
//!
//! When: at start (after recovery made interrupted payouts `unknown`), then every
//! [`CHECK_INTERVAL`] (spread at random) a cheap indexed look at the queue for such payouts; a
//! terminal that cannot be reached is tried again after a backoff that doubles from
//! [`RETRY_INITIAL`] up to [`RETRY_MAX`]. A terminal that answers without reporting a last
//! transaction is asked at most [`UNREPORTED_TRIES`] times, since each Repeat Receipt may print
//! a receipt. The next payout at the terminal settles it too, from its own Repeat Receipt,
//! before its `06 31` leaves. Nothing here sends `06 31`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::Notify;

use super::decide::spread;
use crate::destinations::zvt::{lookup, settle_unknown, Zvt};
use crate::destinations::Connector;
use crate::queue::QueueHandle;
use crate::shutdown::Shutdown;
use crate::terminal::ecr::Outcome;

/// How often the queue is looked at for unknown payouts with a note.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(3);
/// The first wait after a terminal could not be reached for a lookup; doubled on every failure.
pub const RETRY_INITIAL: Duration = Duration::from_secs(2);
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// How many answers without a last transaction (an abort, a refusal) are taken before the
/// payouts waiting on that terminal are left to a person.
pub const UNREPORTED_TRIES: u32 = 3;

/// Per terminal: when to look next, and how the last tries went.
#[derive(Debug, Default)]
struct Pace {
    next: Option<Instant>,
    failures: u32,
    unreported: u32,
}

/// The resolver's inputs.
#[derive(Debug, Clone)]
pub struct Lookups {
    pub queue: QueueHandle,
    pub connectors: Arc<HashMap<String, Connector>>,
    /// The sync worker's wake-up: a payout settled as paid lets the route's next destination go.
    pub wake: Arc<Notify>,
}

impl Lookups {
    /// Whether any destination is a ZVT terminal (otherwise the resolver has nothing to do).
    pub fn any(&self) -> bool {
        self.connectors.values().any(|c| matches!(c, Connector::Zvt(_)))
    }

    /// Runs until `shutdown`; a lookup under way is dropped then (it reads, it never pays).
    pub async fn run(self, mut shutdown: Shutdown) {
        let mut paces: HashMap<String, Pace> = HashMap::new();
        while !shutdown.is_shutdown() {
            let mut wake_at = Instant::now() + spread(CHECK_INTERVAL, rand::rng().random());
            for (name, connector) in self.connectors.iter() {
                let Connector::Zvt(zvt) = connector else { continue };
                let pace = paces.entry(name.clone()).or_default();
                if pace.next.is_some_and(|n| n > Instant::now()) {
                    wake_at = wake_at.min(pace.next.unwrap_or(wake_at));
                    continue;
                }
                tokio::select! {
                    () = self.look_up(name, zvt, pace) => {}
                    () = shutdown.recv() => return,
                }
                if let Some(next) = pace.next {
                    wake_at = wake_at.min(next);
                }
            }
            tokio::select! {
                () = tokio::time::sleep_until(wake_at.into()) => {}
                () = shutdown.recv() => {}
            }
        }
    }

    /// One look at one terminal, with its conversation held from the query to the settling.
    async fn look_up(&self, name: &str, zvt: &Zvt, pace: &mut Pace) {
        let held = zvt.exclusive().await;
        let waiting = match self.queue.lookup_candidates(name.to_string(), Box::new(lookup::lookupable)).await
        {
            Ok(c) => c.len(),
            Err(e) => {
                tracing::error!(destination = %name, error = %e, "cannot list unknown payouts to look up");
                return;
            }
        };
        if waiting == 0 {
            pace.next = None;
            pace.failures = 0;
            pace.unreported = 0;
            return;
        }
        let read = zvt.read_last(&held).await;
        let last = match read {
            Ok(last @ Outcome::Completed(_)) => last,
            Ok(other) if pace.unreported + 1 >= UNREPORTED_TRIES => {
                tracing::warn!(destination = %name, answer = ?other, "the terminal does not report its last transaction; its unknown payouts are left to a person");
                other
            }
            Ok(other) => {
                pace.unreported += 1;
                self.back_off(name, pace, &format!("no last transaction reported: {other:?}"));
                return;
            }
            Err(reason) => {
                self.back_off(name, pace, &reason);
                return;
            }
        };
        pace.failures = 0;
        pace.unreported = 0;
        pace.next = None;
        match settle_unknown(&self.queue, name, &last).await {
            Ok(0) => {}
            Ok(settled) => {
                tracing::info!(destination = %name, settled, "unknown payouts settled by a lookup at the terminal");
                self.wake.notify_one();
            }
            Err(e) => tracing::error!(destination = %name, error = %e, "cannot record what the lookup found"),
        }
    }

    fn back_off(&self, name: &str, pace: &mut Pace, reason: &str) {
        let wait = RETRY_INITIAL.saturating_mul(1 << pace.failures.min(8)).min(RETRY_MAX);
        pace.failures += 1;
        pace.next = Some(Instant::now() + spread(wait, rand::rng().random()));
        tracing::info!(destination = %name, %reason, retry_in_ms = wait.as_millis() as u64, "an unknown payout waits for the terminal to be looked up");
    }
}
