//! Turning an [`ApprovalRequest`] into an [`Approval`]: lock-out first, then the PIN (argon2 on
//! a blocking thread, never on the runtime or the queue owner thread), then the count recorded
//! in the queue. One approval is checked at a time, so two wrong PINs sent at once cannot both
//! slip under the lock-out.

use std::sync::Arc;

use super::file::check_id;
use super::{Approval, ApprovalRequest, Managers};
use crate::clock::{now_ms, rfc3339};
use crate::queue::{QueueError, QueueHandle};

/// Why an approval was refused. Nothing but the failure count is stored on any of them.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no managers file is configured (limits.managers_file), so no manager approval can be checked")]
    NoManagersFile,
    #[error("manager {manager} is locked after too many wrong PINs until {}", rfc3339(*.until_ms))]
    Locked { manager: String, until_ms: i64 },
    /// An unknown manager and a wrong PIN get the same answer.
    #[error("the manager approval is not valid (unknown manager or wrong PIN)")]
    Invalid,
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl Refusal {
    /// The stable code for the control API and the terminal's `nak`.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NoManagersFile => "no_managers_file",
            Refusal::Locked { .. } => "manager_locked",
            Refusal::Invalid => "manager_approval_invalid",
            Refusal::Queue(e) => e.code(),
        }
    }
}

/// Checks approvals against the managers file (if one is configured) and the queue's
/// lock-out records.
#[derive(Debug, Clone)]
pub struct Approver {
    managers: Option<Arc<Managers>>,
    queue: QueueHandle,
    one_at_a_time: Arc<tokio::sync::Mutex<()>>,
}

impl Approver {
    pub fn new(managers: Option<Managers>, queue: QueueHandle) -> Approver {
        Approver { managers: managers.map(Arc::new), queue, one_at_a_time: Arc::default() }
    }

    /// Verifies `request`; on success the manager's failure count is reset.
    pub async fn approve(&self, request: &ApprovalRequest) -> Result<Approval, Refusal> {
        let managers = self.managers.clone().ok_or(Refusal::NoManagersFile)?;
        let manager = request.manager.clone();
        // An id no managers file can hold is refused before it gets a lock-out row of its own.
        if check_id(&manager).is_err() {
            return Err(Refusal::Invalid);
        }
        let _turn = self.one_at_a_time.lock().await;
        if let Some(until_ms) = self.queue.manager_locked_until(manager.clone()).await? {
            tracing::warn!(manager = %manager, until = %rfc3339(until_ms), "manager approval refused: locked");
            return Err(Refusal::Locked { manager, until_ms });
        }
        let pin = request.pin.clone();
        let who = manager.clone();
        let right = tokio::task::spawn_blocking(move || managers.verify(&who, &pin))
            .await
            .map_err(|e| QueueError::Storage(format!("the PIN check did not finish: {e}")))?;
        if right {
            self.queue.manager_succeeded(manager.clone()).await?;
            return Ok(Approval { manager, approved_at_ms: now_ms() });
        }
        let locked = self.queue.manager_failed(manager.clone()).await?;
        match locked {
            Some(until) => {
                tracing::warn!(manager = %manager, until = %rfc3339(until), "wrong manager PIN; manager locked")
            }
            None => tracing::warn!(manager = %manager, "wrong manager PIN or unknown manager"),
        }
        Err(Refusal::Invalid)
    }
}
