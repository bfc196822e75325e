//! Errors of the queue, with messages a technician can act on.

use std::path::PathBuf;

/// Cloneable so that one failed COMMIT can be reported to every caller of its batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("cannot open the queue database {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error(
        "the queue database {path} is damaged ({message}); the agent will not start on it. \
         Stop the service, move the file (and its -wal/-shm files) aside for analysis, and restore \
         the last backup; see README \"Recovering a damaged queue\""
    )]
    Damaged { path: PathBuf, message: String },
    #[error(
        "the queue database {path} was altered outside the agent: {detail}. The agent will not start \
         on it, because refunds it accepted may be gone without a trace. Stop the service, keep the \
         file (and its -wal/-shm files) for analysis, and restore the last backup; see README \
         \"Refunds missing from the queue\""
    )]
    Tampered { path: PathBuf, detail: String },
    #[error(
        "the queue database {path} is older than the one this agent last ran on (generation \
         {found}, but {marker} says {expected}): it was put back from an older copy, or a disk \
         that does not keep what it syncs lost its last writes at a power cut; either way it cannot \
         know what was sent after, and starting on it could pay a refund twice. The \
         agent will not start on it. Put the newer queue.db back, or bring the copy in with \
         `refund-agent restore PATH` (agent stopped), which marks what may have been sent as \
         unknown; see README \"Backup and restore\""
    )]
    OlderCopy { path: PathBuf, found: i64, expected: i64, marker: PathBuf },
    #[error(
        "the queue database {path} has run before (generation {found}) but its generation marker \
         {marker} is gone, so nothing says it is not an older copy put back by hand; the agent will \
         not start on it. Put the marker back, or bring the file in with `refund-agent restore PATH` \
         (agent stopped), which marks what may have been sent as unknown; see README \"Backup and restore\""
    )]
    MarkerMissing { path: PathBuf, found: i64, marker: PathBuf },
    #[error("the state directory {path} is in use by another agent or a restore (its lock is held)")]
    InUse { path: PathBuf },
    #[error("the queue database has schema version {found}, newer than this agent knows ({known}); install the newer agent")]
    TooNew { found: i64, known: i64 },
    #[error(
        "the queue database was sealed with a different seal key; refusing to start rather than \
         quarantine every refund. Restore the original seal key file"
    )]
    KeyMismatch,
    #[error("storage is full: the request was not stored; free disk space on the state directory")]
    StorageFull,
    #[error("storage error: {0}")]
    Storage(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    InvalidTransition(String),
    #[error("the queue is shut down")]
    Closed,
}

impl QueueError {
    /// A stable code for the control API.
    pub fn code(&self) -> &'static str {
        match self {
            QueueError::StorageFull => "storage_full",
            QueueError::Conflict(_) => "conflict",
            QueueError::NotFound(_) => "not_found",
            QueueError::InvalidTransition(_) => "invalid_state",
            QueueError::Closed => "shutting_down",
            _ => "storage_error",
        }
    }
}

impl From<rusqlite::Error> for QueueError {
    fn from(e: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(f, _) = &e {
            if f.code == rusqlite::ErrorCode::DiskFull {
                return QueueError::StorageFull;
            }
        }
        QueueError::Storage(e.to_string())
    }
}
