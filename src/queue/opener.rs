//! Opening the database from the owner thread, at start and again after an I/O error: a
//! failed fsync leaves pages in SQLite's cache (and the kernel's) that may never reach the
//! disk, so the owner stops writing through that connection, closes it and reads the database
//! again from the disk, with the full start-up checks, before it stores anything more.

use std::path::PathBuf;

use rusqlite::Connection;

use super::error::QueueError;
use super::owner::{note_failure, Storage};
use super::schema;
use super::seal::Sealer;

/// Where the database is and how to open it: at start, and again after a failed write left
/// the connection's cache suspect.
#[derive(Debug)]
pub(super) struct Opener {
    pub state_dir: PathBuf,
    pub vfs: Option<String>,
}

impl Opener {
    pub fn open(&self, sealer: &Sealer) -> Result<Connection, QueueError> {
        schema::open_on(&self.state_dir, sealer, self.vfs.as_deref())
    }
}

/// Opens the database again with the full start-up checks; `None` (reported) when it cannot,
/// and the next batch tries again: the agent refuses writes rather than exit and restart in a
/// loop.
pub(super) fn reopen(opener: &Opener, sealer: &Sealer, storage: &Storage) -> Option<Connection> {
    match opener.open(sealer) {
        Ok(conn) => {
            tracing::info!("the queue database was reopened from the disk");
            Some(conn)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot reopen the queue database");
            note_failure(storage, &e);
            None
        }
    }
}

/// Whether a batch left the connection trustworthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Health {
    Sound,
    /// An I/O error: what the connection caches may not be what the disk holds.
    Suspect,
}

/// An I/O error (not a full disk: that one SQLite rolls back cleanly).
pub(super) fn is_io_error(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::SystemIoFailure)
}
