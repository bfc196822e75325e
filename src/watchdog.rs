//! systemd integration: `READY=1`, `STOPPING=1` and the watchdog (`Type=notify`,
//! `WatchdogSec=` in `systemd/refund-agent.service`).
//!
//! Everything here is a no-op when the daemon does not run under systemd: `sd_notify` sends
//! nothing without `$NOTIFY_SOCKET`, and the watchdog task is not started without
//! `$WATCHDOG_USEC`.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;

use crate::queue::{QueueError, QueueHandle};
use crate::shutdown::Shutdown;

/// Tells systemd the daemon is ready: the queue is open and the control socket listens, so a
/// unit ordered `After=refund-agent.service` can use the socket at once.
pub fn ready() {
    send(NotifyState::Ready, "READY");
}

/// Tells systemd a stop has begun, so `systemctl status` shows "deactivating" while in-flight
/// deliveries finish instead of a service that looks hung.
pub fn stopping() {
    send(NotifyState::Stopping, "STOPPING");
}

/// A failed notification must not stop the daemon: systemd then acts on its own timeouts,
/// which is the right outcome for a manager we cannot reach.
fn send(state: NotifyState<'_>, what: &str) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, state = what, "cannot notify systemd");
    }
}

/// Starts the watchdog task when systemd asked for one (`$WATCHDOG_USEC`), or returns `None`.
///
/// The task pings at half the interval, as `sd_watchdog_enabled(3)` advises, but only after a
/// round trip through the queue owner: the owner is the one thread whose wedging (a stuck
/// SQLite call, a dead thread) stops every refund, and a timer alone would keep pinging
/// through that. A wedged owner therefore stops the pings and systemd restarts the daemon.
pub fn spawn(queue: QueueHandle, shutdown: Shutdown) -> Option<JoinHandle<()>> {
    let interval = sd_notify::watchdog_enabled()? / 2;
    if interval.is_zero() {
        tracing::warn!("WATCHDOG_USEC is too small to use; watchdog disabled");
        return None;
    }
    tracing::info!(interval_ms = interval.as_millis() as u64, "systemd watchdog enabled");
    Some(tokio::spawn(run(queue, interval, shutdown)))
}

/// Pings until shutdown. It stops pinging at shutdown on purpose: `TimeoutStopSec=` bounds the
/// drain, and this task must drop its queue handle so the owner thread can exit.
async fn run(queue: QueueHandle, interval: Duration, mut shutdown: Shutdown) {
    loop {
        tokio::select! {
            () = shutdown.recv() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        // No timeout on purpose: if the owner never answers, the missing ping is the signal.
        let answer = tokio::select! {
            () = shutdown.recv() => return,
            answer = queue.ping() => answer,
        };
        match answer {
            Ok(()) => send(NotifyState::Watchdog, "WATCHDOG"),
            Err(QueueError::Closed) => {
                // The owner thread is gone: no refund can be stored any more, so let systemd
                // restart the daemon rather than keep a live-looking shell.
                tracing::error!("queue owner is gone; no longer pinging the systemd watchdog");
                return;
            }
            Err(e) => {
                // The owner answered, so it is alive; the error (e.g. a busy database) is
                // reported by the work that hits it, and restarting would not cure it.
                tracing::warn!(error = %e, "watchdog queue round trip failed; owner is alive");
                send(NotifyState::Watchdog, "WATCHDOG");
            }
        }
    }
}
