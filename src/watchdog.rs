//! systemd integration: `READY=1`, `STOPPING=1` and the watchdog (`Type=notify`,
//! `WatchdogSec=` in `systemd/refund-agent.service`).
//!
//! Everything here is a no-op when the daemon does not run under systemd: `sd_notify` sends
//! nothing without `$NOTIFY_SOCKET`, and the watchdog task is not started without
//! `$WATCHDOG_USEC`.

use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;

use crate::queue::{QueueError, QueueHandle};
use crate::shutdown::Shutdown;

/// Tells systemd the daemon is ready: the queue is open and the control socket listens, so a
/// unit ordered `After=refund-agent.service` can use the socket at once.
pub fn ready() {
    send(Note::Ready);
}

/// Tells systemd a stop has begun, so `systemctl status` shows "deactivating" while in-flight
/// deliveries finish instead of a service that looks hung.
pub fn stopping() {
    send(Note::Stopping);
}

/// Waits, at most `limit`, until the notes handed over so far were sent: the last thing the
/// daemon does before it exits, so `STOPPING=1` is not lost with the process.
pub fn flush(limit: Duration) {
    let Some(inbox) = notifier() else { return };
    let (done, sent) = mpsc::sync_channel(1);
    if inbox.try_send(Note::Flushed(done)).is_ok() {
        let _ = sent.recv_timeout(limit);
    }
}

/// What the daemon tells systemd, or (`Flushed`) asks the notifier thread to confirm once
/// everything before it was sent.
#[derive(Debug)]
enum Note {
    Ready,
    Stopping,
    Watchdog,
    Flushed(SyncSender<()>),
}

impl Note {
    fn name(&self) -> &'static str {
        match self {
            Note::Ready => "READY",
            Note::Stopping => "STOPPING",
            Note::Watchdog => "WATCHDOG",
            Note::Flushed(_) => "flush",
        }
    }
}

/// Notes waiting for the notifier thread; a few at most, as pings come every few seconds.
const PENDING_NOTES: usize = 4;

/// The notifier thread's inbox. The notification socket is a datagram socket, and a send blocks
/// while systemd's receive queue is full (a manager busy at boot, or a test that reads it late):
/// sent from a runtime worker, that wait froze the whole control API, timers and accepts
/// included. So a thread of its own sends, and the daemon only hands it notes, never waiting.
fn notifier() -> Option<&'static SyncSender<Note>> {
    static INBOX: OnceLock<Option<SyncSender<Note>>> = OnceLock::new();
    INBOX
        .get_or_init(|| {
            let (tx, rx) = mpsc::sync_channel::<Note>(PENDING_NOTES);
            let spawned = thread::Builder::new().name("systemd-notify".into()).spawn(move || {
                for note in rx {
                    let state = match &note {
                        Note::Ready => NotifyState::Ready,
                        Note::Stopping => NotifyState::Stopping,
                        Note::Watchdog => NotifyState::Watchdog,
                        Note::Flushed(done) => {
                            let _ = done.send(());
                            continue;
                        }
                    };
                    // A failed notification must not stop the daemon: systemd then acts on its
                    // own timeouts, which is the right outcome for a manager we cannot reach.
                    if let Err(e) = sd_notify::notify(&[state]) {
                        tracing::warn!(error = %e, state = note.name(), "cannot notify systemd");
                    }
                }
            });
            match spawned {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the systemd notifier thread; systemd will not be notified");
                    None
                }
            }
        })
        .as_ref()
}

/// Hands a note to the notifier thread without waiting. While systemd reads nothing, pings are
/// dropped rather than queued: the watchdog then fires, which is the right outcome for a manager
/// that does not listen.
fn send(note: Note) {
    let Some(inbox) = notifier() else { return };
    match inbox.try_send(note) {
        Ok(()) => {}
        Err(TrySendError::Full(note)) => {
            tracing::warn!(state = note.name(), "systemd is not reading notifications; this one is dropped")
        }
        Err(TrySendError::Disconnected(_)) => {}
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
            Ok(()) => send(Note::Watchdog),
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
                send(Note::Watchdog);
            }
        }
    }
}
