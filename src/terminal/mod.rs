//! Everything needed to understand the payment terminal / receipt scanner on the serial line,
//! without doing any I/O itself.
//!
//! The pipeline has three stages, each in its own module:
//!
//! 1. **bytes → frame** ([`codec`]): the serial port delivers arbitrary chunks of bytes. A
//!    [`codec::Decoder`] built for the configured [`codec::Framing`] (`ndjson`, `stx-etx` or
//!    `lines`) reassembles them into complete UTF-8 payloads ([`codec::Item::Frame`]) or reports
//!    why bytes were thrown away ([`codec::Item::Dropped`]). Memory stays bounded by
//!    [`codec::MAX_FRAME`] plus the chunk being decoded, whatever the terminal sends.
//! 2. **frame → sanitized JSON** ([`pci`]): before anything is typed, card secrets (track data,
//!    CVV, PIN blocks) are deleted and full card numbers are masked, so that no later stage, log
//!    line or database row can ever hold a full PAN.
//! 3. **JSON → event** ([`event`]): the sanitized JSON becomes a typed [`event::TerminalEvent`]
//!    wrapped in an [`event::Inbound`] that carries the terminal's sequence number; for the
//!    `lines` framing (a barcode scanner) each line becomes a receipt scan instead. Replies go the
//!    other way through [`event::Reply::to_json`] and [`codec::encode_reply`].
//!
//! Around that pure core, three more stages run the refund conversation with a real device:
//!
//! 4. **event → action** ([`session`]): the cashier's scan → card → refund session as a pure state
//!    machine with a timeout, deciding what to answer and what to ask of the queue.
//! 5. **the port** ([`device`]): the serial port in dedicated threads, reopened with backoff when
//!    the device disappears, and the [`device::TerminalStatus`] shown in `/v1/status`.
//! 6. **the glue** ([`task`]): an async task that feeds device bytes through stages 1–4, makes the
//!    queue calls and writes the replies.
//!
//! Beside the pipeline, [`capture`] decodes recorded traffic for `refund-agent terminal decode`,
//! ZVT included (its codecs are in [`codec::zvt`]). [`ecr`] is the agent as ZVT master: the
//! conversation with a payment terminal as a pure state machine, its serial and TCP link, and
//! the owner of a ZVT terminal configured as `[terminal]` (registration, keepalive, Read Card).
//!
//! Keeping stages 1–4 pure means every edge case of the wire protocol can be unit-, property- and
//! fuzz-tested without hardware; only [`spawn`] touches a device.

pub mod codec;
pub mod event;
pub mod pci;
pub mod capture;
pub mod ecr;
pub mod session;
pub mod device;
pub mod task;

use std::sync::Arc;

use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::config::TerminalSettings;
use crate::lock::lock;
use crate::queue::QueueHandle;
use crate::shutdown::Shutdown;
use codec::Decoder;
use device::{PortSettings, SharedStatus, TerminalStatus};

/// Chunks read from the port that may wait for the link task; beyond this the reader blocks and
/// the terminal is slowed down by the serial line instead of the agent buffering without bound.
const EVENT_BACKLOG: usize = 64;
/// Encoded replies that may wait for the writer thread.
const REPLY_BACKLOG: usize = 256;

/// Why the terminal could not be started. Its settings were typed when the config was loaded,
/// so only the threads can fail here.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    #[error("cannot start the terminal threads: {0}")]
    Thread(#[from] std::io::Error),
}

/// The running terminal: the link task and the device threads.
#[derive(Debug)]
pub struct Terminal {
    task: JoinHandle<()>,
    device: device::Device,
    status: SharedStatus,
}

/// Starts reading the configured device. The device does not need to exist yet: the agent keeps
/// trying to open it with backoff, and serves the control API meanwhile.
pub fn spawn(
    config: &TerminalSettings,
    queue: QueueHandle,
    approver: crate::manager::Approver,
    wake: Arc<Notify>,
    shutdown: Shutdown,
) -> Result<Terminal, TerminalError> {
    let framing = config.framing;
    let timeout = config.session_timeout;
    let status = SharedStatus::default();
    {
        let mut s = lock(&status);
        s.device = config.device.display().to_string();
        s.framing = framing.to_string();
    }
    let (events_tx, events) = mpsc::channel(EVENT_BACKLOG);
    let (replies, replies_rx) = mpsc::channel(REPLY_BACKLOG);
    let settings = PortSettings { path: config.device.clone(), baud: config.baud, parity: config.parity };
    tracing::info!(device = %config.device.display(), %framing, baud = config.baud, session_timeout = ?timeout, "terminal input started");
    let device = device::start(settings, status.clone(), events_tx, replies_rx)?;
    let link = task::Link {
        framing,
        decoder: Decoder::new(framing),
        session: session::Session::new(timeout),
        queue,
        approver,
        wake,
        status: status.clone(),
        replies,
    };
    let task = tokio::spawn(task::run(link, events, shutdown));
    Ok(Terminal { task, device, status })
}

impl Terminal {
    /// The live status, for `/v1/status`.
    pub fn status(&self) -> SharedStatus {
        self.status.clone()
    }

    /// Waits for the link task to finish after shutdown was signalled, then for the threads.
    pub async fn stop(self) {
        let _ = self.task.await;
        let device = self.device;
        let _ = tokio::task::spawn_blocking(move || device.join()).await;
    }
}

/// A snapshot of the status.
pub fn snapshot(status: &SharedStatus) -> TerminalStatus {
    lock(status).clone()
}
