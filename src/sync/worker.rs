//! The sync worker: claims due deliveries from the queue, makes their requests through the
//! connectors with a bounded number in flight, and records each outcome. It sleeps until the
//! next delivery is due or a new refund arrives; on shutdown it stops claiming, lets requests
//! in flight finish within a grace period, and abandons the rest (they stay `in_flight` in the
//! queue and start-up recovery resolves them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

use super::decide::{backoff, decide};
use crate::clock::{now_ms, rfc3339};
use crate::config::SyncSettings;
use crate::destinations::{Attempt, Connector};
use crate::queue::{Claim, QueueHandle, Recorded};

/// The most requests in flight at once, over all destinations.
pub const MAX_IN_FLIGHT: usize = 8;
/// The longest the worker sleeps without looking at the queue (expiry sweeps run then too).
const IDLE_CHECK: Duration = Duration::from_secs(30);

/// What the worker knows of each destination's reachability, for status and metrics.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DestinationHealth {
    /// `unknown` until the first request, then `reachable` or `unreachable`.
    pub connectivity: String,
    pub last_success_at: Option<String>,
    pub last_error: Option<String>,
    pub consecutive_failures: u64,
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
}

impl Worker {
    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        {
            let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
            for name in self.connectors.keys() {
                h.entry(name.clone()).or_insert_with(|| DestinationHealth {
                    connectivity: "unknown".into(),
                    ..Default::default()
                });
            }
        }
        let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut tasks = JoinSet::new();
        let mut last_sweep = 0i64;
        while !*shutdown.borrow() {
            if now_ms() - last_sweep > IDLE_CHECK.as_millis() as i64 {
                last_sweep = now_ms();
                match self.queue.sweep().await {
                    Ok((expired, purged)) if expired + purged > 0 => {
                        tracing::info!(expired, purged, "queue sweep")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "queue sweep failed"),
                }
            }
            let free = permits.available_permits();
            let claims = if free == 0 {
                Vec::new()
            } else {
                match self.queue.claim_due(free as i64).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot claim deliveries");
                        Vec::new()
                    }
                }
            };
            let claimed = !claims.is_empty();
            for claim in claims {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    break;
                };
                let this = self.clone();
                tasks.spawn(async move {
                    this.deliver(claim).await;
                    drop(permit);
                });
            }
            if claimed {
                continue;
            }
            let sleep_for = match self.queue.next_due().await {
                Ok(Some(at)) => Duration::from_millis(
                    (at - now_ms()).clamp(0, IDLE_CHECK.as_millis() as i64) as u64,
                ),
                _ => IDLE_CHECK,
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep_for), if permits.available_permits() > 0 => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
        let grace = self.settings.request_timeout + Duration::from_secs(1);
        if !tasks.is_empty() {
            tracing::info!(
                in_flight = tasks.len(),
                "waiting for requests in flight before stopping"
            );
        }
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                "abandoning requests still in flight; they will be resolved at the next start"
            );
            tasks.abort_all();
        }
    }

    /// Makes every request of one claimed delivery, recording each step as it succeeds.
    async fn deliver(&self, mut claim: Claim) {
        let Some(connector) = self.connectors.get(&claim.destination) else {
            let error = format!(
                "destination {:?} is no longer configured",
                claim.destination
            );
            let _ = self
                .queue
                .record(
                    claim.refund.id.to_string(),
                    claim.position,
                    Recorded::Failed { error },
                )
                .await;
            return;
        };
        let capability = connector.capability();
        loop {
            let attempt = connector.attempt(&claim).await;
            self.note_health(&claim.destination, &attempt);
            let settings = &self.settings;
            let unit: f64 = rand::rng().random();
            let recorded = decide(attempt, capability, now_ms(), |after| {
                backoff(
                    claim.attempts,
                    settings.backoff_initial,
                    settings.backoff_max,
                    after,
                    unit,
                )
            });
            log_outcome(&claim, &recorded);
            let next = match &recorded {
                Recorded::Progress { step, remote_id } => Some((*step, remote_id.clone())),
                _ => None,
            };
            let id = claim.refund.id.to_string();
            if let Err(e) = self
                .queue
                .record(id.clone(), claim.position, recorded)
                .await
            {
                tracing::error!(refund_id = %id, error = %e, "cannot record a delivery outcome; start-up recovery will resolve it");
                return;
            }
            match next {
                Some((step, remote_id)) => {
                    claim.step = step;
                    claim.remote_id = remote_id.or(claim.remote_id.take());
                }
                None => return,
            }
        }
    }

    fn note_health(&self, destination: &str, attempt: &Attempt) {
        let mut all = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let h = all.entry(destination.to_string()).or_default();
        match attempt {
            Attempt::Transient { error, .. } | Attempt::Ambiguous(error) => {
                h.connectivity = "unreachable".into();
                h.consecutive_failures += 1;
                h.last_error = Some(error.clone());
            }
            Attempt::Declined(_)
            | Attempt::Failed(_)
            | Attempt::Delivered { .. }
            | Attempt::Progress { .. } => {
                h.connectivity = "reachable".into();
                h.consecutive_failures = 0;
                if let Attempt::Failed(e) = attempt {
                    h.last_error = Some(e.clone());
                } else {
                    h.last_success_at = Some(rfc3339(now_ms()));
                }
            }
        }
    }
}

fn log_outcome(claim: &Claim, recorded: &Recorded) {
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
            tracing::warn!(refund_id = %id, destination = %dest, attempt = claim.attempts, retry_in_ms = at_ms - now_ms(), %error, "will retry")
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
