//! The sync worker: claims due deliveries from the queue, makes their requests through the
//! connectors with a bounded number in flight, and records each outcome. It sleeps until the
//! next delivery is due or a new refund arrives; on shutdown it stops claiming, lets requests
//! in flight finish within a grace period, and abandons the rest (they stay `in_flight` in the
//! queue and start-up recovery resolves them).
//!
//! When the queue cannot store (a full disk), an outcome already received is kept in memory
//! and recorded again with backoff until it is stored, and claiming pauses with backoff: the
//! worker recovers by itself when space returns, without a busy loop and without sending
//! anything whose previous outcome is not yet on disk.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use super::connectivity::Connectivity;
use super::decide::{backoff, decide, longest_delay, route_moves_money, spread};
use super::log::log_outcome;
use crate::clock::{is_due, now_ms, rfc3339, trusted_now_ms};
use crate::config::SyncSettings;
use crate::destinations::{Attempt, Connector};
use crate::lock::lock;
use crate::queue::{Claim, QueueError, QueueHandle, Recorded};
use crate::shutdown::Shutdown;

/// The most requests in flight at once, over all destinations.
pub const MAX_IN_FLIGHT: usize = 16;
/// The most requests in flight to one destination: enough to drain a queue quickly, few enough
/// not to look like an attack to a cloud API's rate limiter.
pub const MAX_IN_FLIGHT_PER_DESTINATION: usize = 8;

/// Requests in flight per destination.
type Busy = Arc<Mutex<HashMap<String, usize>>>;

/// The longest the worker sleeps without looking at the queue (expiry sweeps run then too).
const IDLE_CHECK: Duration = Duration::from_secs(30);
/// How often, on average, an unreachable destination is probed with a TCP connect, so that the
/// return of the network is noticed within seconds however long the refunds' backoff has grown.
/// Each wait is drawn from half to one and a half times this ([`spread`]), so the tills of a
/// store that lost its network together do not probe, and then send, in step.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// After the queue could not store something (a full disk), how long the worker waits before
/// trying again: to record an outcome it holds, or to claim more work. Doubled on every failure
/// up to [`STORAGE_RETRY_MAX`], so a full disk costs a few attempts a minute, not a busy loop.
const STORAGE_RETRY_INITIAL: Duration = Duration::from_millis(100);
const STORAGE_RETRY_MAX: Duration = Duration::from_secs(5);

/// What the worker knows of each destination's reachability, for status and metrics.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DestinationHealth {
    /// `unknown` until the first request, then `reachable` or `unreachable`.
    pub connectivity: Connectivity,
    pub last_success_at: Option<String>,
    pub last_error: Option<String>,
    pub consecutive_failures: u64,
    /// While set, no delivery to this destination is claimed: one failure is enough to know
    /// it is down, and new refunds must not each pay for finding that out again.
    #[serde(skip)]
    pub hold_until: Option<Instant>,
    /// The hold came from a connection failure, so a cheap TCP probe may lift it early.
    #[serde(skip)]
    pub probe: bool,
    /// When the next probe may start.
    #[serde(skip)]
    pub next_probe: Option<Instant>,
}

/// Shared, cheap-to-read destination health.
pub type Health = Arc<Mutex<HashMap<String, DestinationHealth>>>;

/// The worker's inputs.
#[derive(Debug, Clone)]
pub struct Worker {
    pub queue: QueueHandle,
    pub connectors: Arc<HashMap<String, Connector>>,
    pub settings: SyncSettings,
    /// Notified when a new refund is queued.
    pub wake: Arc<Notify>,
    pub health: Health,
    /// `host:port` of each destination, for connectivity probes.
    pub probe_targets: Arc<HashMap<String, String>>,
}

impl Worker {
    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: Shutdown) {
        {
            let mut h = lock(&self.health);
            for name in self.connectors.keys() {
                h.entry(name.clone()).or_insert_with(|| DestinationHealth {
                    connectivity: Connectivity::Unknown,
                    ..Default::default()
                });
            }
        }
        let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let busy: Busy = Arc::default();
        let mut tasks = JoinSet::new();
        let mut probes: JoinSet<()> = JoinSet::new();
        // When the last sweep ran, by the wall clock and the monotonic one: a sweep is due when
        // either says the interval passed, so a wall clock set back does not stop sweeps.
        let mut last_sweep: Option<(i64, Instant)> = None;
        // Set while claiming is paused after the queue could not store a claim: when, and how
        // long the last pause was.
        let mut claim_pause: Option<(Instant, Duration)> = None;
        while !shutdown.is_shutdown() {
            let idle_ms = IDLE_CHECK.as_millis() as i64;
            if last_sweep
                .is_none_or(|(wall, mono)| (now_ms() - wall).abs() > idle_ms || mono.elapsed() > IDLE_CHECK)
            {
                last_sweep = Some((now_ms(), Instant::now()));
                match self.queue.sweep().await {
                    Ok((expired, purged)) if expired + purged > 0 => {
                        tracing::info!(expired, purged, "queue sweep")
                    }
                    Ok(_) => tracing::debug!(expired = 0, purged = 0, "queue sweep"),
                    Err(e) => tracing::error!(error = %e, "queue sweep failed"),
                }
            }
            // Reaped at once: an ended task not joined keeps its future's memory (drains: MiBs).
            while tasks.try_join_next().is_some() {}
            let (held, wake_at) = self.holds(&mut probes);
            let free = permits.available_permits();
            // With every destination on hold there is nothing to claim: skip the queue entirely,
            // so that refunds queued while offline cost the worker no database work.
            let all_held = held.len() >= self.connectors.len();
            let paused_until = claim_pause.map(|(until, _)| until).filter(|u| *u > Instant::now());
            let claims = if free == 0 || all_held || paused_until.is_some() {
                Vec::new()
            } else {
                match self.claim(free, &held, &busy).await {
                    Ok(claims) => {
                        claim_pause = None;
                        claims
                    }
                    Err(claims) => {
                        let pause = claim_pause
                            .map_or(STORAGE_RETRY_INITIAL, |(_, last)| (last * 2).min(STORAGE_RETRY_MAX));
                        claim_pause = Some((Instant::now() + pause, pause));
                        claims
                    }
                }
            };
            let paused_until = claim_pause.map(|(until, _)| until).filter(|u| *u > Instant::now());
            let claimed = !claims.is_empty();
            for claim in claims {
                // Claims never exceed the free permits (only this loop takes them), so this
                // cannot fail; a claim is never dropped, since it is already `in_flight` on disk.
                let permit = permits.clone().try_acquire_owned().ok();
                let this = self.clone();
                let busy = busy.clone();
                *lock(&busy).entry(claim.destination.clone()).or_default() += 1;
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    let destination = claim.destination.clone();
                    this.deliver(claim, &shutdown).await;
                    if let Some(n) = lock(&busy).get_mut(&destination) {
                        *n = n.saturating_sub(1);
                    }
                    drop(permit);
                });
            }
            if claimed {
                continue;
            }
            // With every permit taken, only a finishing request can let more work start; while
            // claiming is paused, due work waits for the pause to end.
            let next_due = if all_held || free == 0 || paused_until.is_some() {
                Ok(None)
            } else {
                let skip = not_waited_for(held, &lock(&busy));
                self.queue.next_due(skip).await
            };
            let mut sleep_for = match next_due {
                Ok(Some(at)) => wait_until(at, trusted_now_ms(), longest_delay(self.settings.backoff_max)),
                _ => IDLE_CHECK,
            };
            if let Some(at) = wake_at.into_iter().chain(paused_until).min() {
                sleep_for = sleep_for.min(at.saturating_duration_since(Instant::now()));
            }
            tokio::select! {
                _ = tokio::time::sleep(sleep_for), if permits.available_permits() > 0 => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                Some(_) = probes.join_next(), if !probes.is_empty() => {}
                _ = self.wake.notified() => {}
                () = shutdown.recv() => {}
            }
        }
        probes.abort_all();
        let grace = self.settings.request_timeout + Duration::from_secs(1);
        if !tasks.is_empty() {
            tracing::info!(in_flight = tasks.len(), "waiting for requests in flight before stopping");
        }
        let drained = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!("abandoning requests still in flight; they will be resolved at the next start");
            tasks.abort_all();
        }
    }

    /// Claims due deliveries, oldest first, for every destination not on hold, each up to its
    /// free share of [`MAX_IN_FLIGHT_PER_DESTINATION`] and all within `free` permits. `Err`
    /// holds the claims made when claiming for some destination failed.
    async fn claim(&self, free: usize, held: &[String], busy: &Busy) -> Result<Vec<Claim>, Vec<Claim>> {
        let mut names: Vec<&String> = self.connectors.keys().filter(|n| !held.contains(n)).collect();
        names.sort();
        let mut claims = Vec::new();
        let mut failed = false;
        for name in names {
            let in_flight = lock(busy).get(name).copied().unwrap_or(0);
            let room = MAX_IN_FLIGHT_PER_DESTINATION.saturating_sub(in_flight).min(free - claims.len());
            if room == 0 {
                continue;
            }
            let others: Vec<String> = self.connectors.keys().filter(|n| *n != name).cloned().collect();
            match self.queue.claim_due(room as i64, others, longest_delay(self.settings.backoff_max)).await {
                Ok(c) => claims.extend(c),
                Err(e) => {
                    tracing::error!(error = %e, destination = %name, "cannot claim deliveries");
                    failed = true;
                }
            }
        }
        if failed {
            Err(claims)
        } else {
            Ok(claims)
        }
    }

    /// Makes every request of one claimed delivery, recording each step as it succeeds. When
    /// the delivery ends, the next due delivery to the same destination is claimed in the
    /// transaction that records its outcome ([`Self::finish`]) and delivered by this task, in
    /// the same slot.
    async fn deliver(&self, mut claim: Claim, shutdown: &Shutdown) {
        'claims: loop {
            let Some(connector) = self.connectors.get(&claim.destination) else {
                let error = format!("destination {:?} is no longer configured", claim.destination);
                self.record_until_stored(&claim, Recorded::Failed { error }).await;
                return;
            };
            let capability = connector.capability();
            let moves_money =
                route_moves_money(&claim.route, |d| self.connectors.get(d).map(Connector::capability));
            loop {
                let attempt = connector.attempt(&claim, &self.queue).await;
                let settings = &self.settings;
                let unit: f64 = rand::rng().random();
                let recorded = decide(attempt.clone(), capability, moves_money, trusted_now_ms(), |after| {
                    backoff(claim.attempts, settings.backoff_initial, settings.backoff_max, after, unit)
                });
                self.note_health(&claim.destination, &attempt, &recorded);
                log_outcome(&claim, &recorded);
                let Recorded::Progress { step, remote_id } = &recorded else {
                    match self.finish(&claim, recorded, shutdown).await {
                        Some(next) => {
                            claim = next;
                            continue 'claims;
                        }
                        None => return,
                    }
                };
                let (step, remote_id) = (*step, remote_id.clone());
                if !self.record_until_stored(&claim, recorded).await {
                    return;
                }
                claim.step = step;
                claim.remote_id = remote_id.or(claim.remote_id.take());
            }
        }
    }

    /// Records the outcome that ends a delivery. While the worker runs and the destination is
    /// not on hold, the same transaction claims the destination's next due delivery, which is
    /// returned: on disk it is `in_flight` before its request leaves, exactly as a claim of the
    /// main loop. If that transaction fails, nothing of it was stored: the outcome is recorded
    /// on its own ([`Self::record_until_stored`]) and nothing is claimed.
    ///
    /// A delivery that is not the last of its route lets the refund's next destination be
    /// claimed once it is delivered: the main loop is woken for it, since this task may go on
    /// with the next claim to its own destination instead of ending.
    async fn finish(&self, claim: &Claim, recorded: Recorded, shutdown: &Shutdown) -> Option<Claim> {
        let dest = &claim.destination;
        let unblocks = matches!(recorded, Recorded::Delivered { .. })
            && usize::try_from(claim.position).is_ok_and(|p| p + 1 < claim.route.len());
        let held =
            lock(&self.health).get(dest).and_then(|h| h.hold_until).is_some_and(|u| u > Instant::now());
        let mut with_next = None;
        if !shutdown.is_shutdown() && !held {
            let others: Vec<String> = self.connectors.keys().filter(|n| *n != dest).cloned().collect();
            let max_delay = longest_delay(self.settings.backoff_max);
            match self
                .queue
                .record_then_claim(claim.refund.id, claim.position, recorded.clone(), others, max_delay)
                .await
            {
                Ok(next) => with_next = Some(next),
                Err(e) => {
                    tracing::warn!(refund_id = %claim.refund.id, destination = %dest, error = %e, "cannot record a delivery outcome with the next claim; recording it alone")
                }
            }
        }
        let (stored, next) = match with_next {
            Some(next) => (true, next),
            None => (self.record_until_stored(claim, recorded).await, None),
        };
        if stored && unblocks {
            self.wake.notify_one();
        }
        next
    }

    /// Records an outcome, trying again with backoff for as long as the queue cannot store it
    /// (a full disk). Meanwhile the delivery stays `in_flight` on disk, so nothing claims it, and
    /// this task sends nothing: an outcome not yet recorded never leads to another request.
    /// Returns false when the outcome can never be recorded (the delivery changed, or the queue
    /// shut down); the delivery then stays `in_flight` for start-up recovery.
    async fn record_until_stored(&self, claim: &Claim, recorded: Recorded) -> bool {
        let id = claim.refund.id;
        let dest = &claim.destination;
        let mut wait = STORAGE_RETRY_INITIAL;
        let mut failures = 0u32;
        loop {
            match self.queue.record(id, claim.position, recorded.clone()).await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(refund_id = %id, destination = %dest, failures, "delivery outcome recorded after storage errors");
                    }
                    return true;
                }
                Err(e @ (QueueError::StorageFull | QueueError::Storage(_))) => {
                    failures += 1;
                    tracing::error!(refund_id = %id, destination = %dest, error = %e, failures, retry_in_ms = wait.as_millis() as u64, "cannot record a delivery outcome; keeping it and trying again, nothing is sent meanwhile");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(STORAGE_RETRY_MAX);
                }
                Err(e) => {
                    tracing::error!(refund_id = %id, destination = %dest, error = %e, "cannot record a delivery outcome; start-up recovery will resolve it");
                    return false;
                }
            }
        }
    }

    fn note_health(&self, destination: &str, attempt: &Attempt, recorded: &Recorded) {
        let mut all = lock(&self.health);
        let h = all.entry(destination.to_string()).or_default();
        let retry_at = match recorded {
            Recorded::Retry { at_ms, .. } => {
                Some(Instant::now() + Duration::from_millis((at_ms - trusted_now_ms()).max(0) as u64))
            }
            _ => None,
        };
        match attempt {
            Attempt::Unreachable(error) | Attempt::Transient { error, .. } | Attempt::Ambiguous(error) => {
                h.connectivity = if matches!(attempt, Attempt::Transient { .. }) {
                    Connectivity::Reachable
                } else {
                    Connectivity::Unreachable
                };
                h.consecutive_failures += 1;
                h.last_error = Some(error.clone());
                if let Some(until) = retry_at {
                    h.hold_until = Some(until);
                    h.probe = matches!(attempt, Attempt::Unreachable(_));
                }
            }
            Attempt::Declined(_)
            | Attempt::Failed(_)
            | Attempt::Delivered { .. }
            | Attempt::Progress { .. } => {
                h.connectivity = Connectivity::Reachable;
                h.consecutive_failures = 0;
                h.hold_until = None;
                h.probe = false;
                if let Attempt::Failed(e) = attempt {
                    h.last_error = Some(e.clone());
                } else {
                    h.last_success_at = Some(rfc3339(now_ms()));
                }
            }
        }
    }

    /// The destinations on hold now, and when the worker must look again (a hold ends or a
    /// probe is due). Starts the probes that are due.
    fn holds(&self, probes: &mut JoinSet<()>) -> (Vec<String>, Option<Instant>) {
        let now = Instant::now();
        let mut held = Vec::new();
        let mut wake_at: Option<Instant> = None;
        let mut earliest = |t: Instant| wake_at = Some(wake_at.map_or(t, |w| w.min(t)));
        let mut all = lock(&self.health);
        for (name, h) in all.iter_mut() {
            let Some(until) = h.hold_until.filter(|u| *u > now) else {
                h.hold_until = None;
                continue;
            };
            held.push(name.clone());
            earliest(until);
            if !h.probe {
                continue;
            }
            let due = *h.next_probe.get_or_insert_with(|| now + spread(PROBE_INTERVAL, rand::rng().random()));
            if due > now {
                earliest(due);
                continue;
            }
            let next = now + spread(PROBE_INTERVAL, rand::rng().random());
            h.next_probe = Some(next);
            earliest(next);
            if let Some(target) = self.probe_targets.get(name) {
                probes.spawn(probe(self.clone(), name.clone(), target.clone()));
            }
        }
        (held, wake_at)
    }
}

/// The destinations whose due deliveries the worker does not wake for: those on hold, and
/// those with every one of their slots taken. Those cannot start more now: their due deliveries
/// wait for a slot, which their own tasks take them up in as they end, or free by ending, which
/// wakes the worker. Counted as due, they had the worker ask the queue again at once, in a loop,
/// for as long as the slots stayed full (all along a drain).
fn not_waited_for(mut held: Vec<String>, busy: &HashMap<String, usize>) -> Vec<String> {
    for (name, n) in busy {
        if *n >= MAX_IN_FLIGHT_PER_DESTINATION && !held.contains(name) {
            held.push(name.clone());
        }
    }
    held
}

/// How long to sleep for a delivery due at `at_ms`: until then, at most [`IDLE_CHECK`], and not
/// at all when it is further ahead than the longest delay (`clock::is_due`: the clock went back).
fn wait_until(at_ms: i64, now_ms: i64, max_delay: Duration) -> Duration {
    let max_delay_ms = i64::try_from(max_delay.as_millis()).unwrap_or(i64::MAX);
    if is_due(at_ms, now_ms, max_delay_ms) {
        return Duration::ZERO;
    }
    Duration::from_millis((at_ms - now_ms).clamp(0, IDLE_CHECK.as_millis() as i64) as u64)
}

/// A TCP connect to the destination. When it succeeds the hold is lifted and the destination's
/// pending deliveries become due at once.
async fn probe(worker: Worker, name: String, target: String) {
    let ok = matches!(
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(&target)).await,
        Ok(Ok(_))
    );
    if !ok {
        return;
    }
    // Reachable again: the queue is sent after a random part of `return_jitter`, so a store's
    // tills whose network came back together reach the cloud one after another.
    let unit: f64 = rand::rng().random();
    let wait = worker.settings.return_jitter.mul_f64(unit);
    {
        let mut all = lock(&worker.health);
        if let Some(h) = all.get_mut(&name) {
            h.hold_until = (!wait.is_zero()).then(|| Instant::now() + wait);
            h.probe = false;
            h.next_probe = None;
        }
    }
    match worker.queue.reset_backoff(name.clone()).await {
        Ok(n) => {
            tracing::info!(destination = %name, due = n, after_ms = wait.as_millis() as u64, "destination reachable again; sending its queue")
        }
        Err(e) => tracing::error!(destination = %name, error = %e, "cannot reset the backoff"),
    }
    worker.wake.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_does_not_wake_for_deliveries_that_have_no_free_slot() {
        let busy = HashMap::from([
            ("full".to_string(), MAX_IN_FLIGHT_PER_DESTINATION),
            ("held_and_full".to_string(), MAX_IN_FLIGHT_PER_DESTINATION),
            ("room".to_string(), MAX_IN_FLIGHT_PER_DESTINATION - 1),
        ]);
        let mut skip = not_waited_for(vec!["held".into(), "held_and_full".into()], &busy);
        skip.sort();
        assert_eq!(skip, ["full", "held", "held_and_full"]);
    }

    #[test]
    fn the_worker_does_not_sleep_for_a_time_set_before_the_clock_went_back() {
        let max = Duration::from_secs(300);
        let day = 86_400_000;
        assert_eq!(wait_until(10_000, 0, max), Duration::from_secs(10));
        assert_eq!(wait_until(200_000, 0, max), IDLE_CHECK);
        assert_eq!(wait_until(30 * day, 0, max), Duration::ZERO);
        assert_eq!(wait_until(-5, 0, max), Duration::ZERO);
    }
}
