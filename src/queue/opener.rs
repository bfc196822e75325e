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

/// Compiled statements kept by the owner's connection: more than the queue has.
pub(super) const STATEMENT_CACHE: usize = 256;

/// Where the database is and how to open it: at start, and again after a failed write left
/// the connection's cache suspect.
#[derive(Debug)]
pub(super) struct Opener {
    pub state_dir: PathBuf,
    pub vfs: Option<String>,
}

impl Opener {
    /// Opens the database, then checkpoints the whole WAL into the database file and empties
    /// it before anything is stored. After a failed fsync the WAL can hold frames of a COMMIT
    /// that failed: readable from the kernel's cache, so SQLite takes them as committed, but
    /// never on disk. Frames appended after them would be lost with them at the next power cut
    /// (a WAL is replayed only up to its first bad frame), acknowledged refunds included. The
    /// checkpoint writes those pages into the database file anew and syncs it, so what follows
    /// starts a fresh WAL on top of a durable file.
    pub fn open(&self, sealer: &Sealer) -> Result<Connection, QueueError> {
        let conn = schema::open_on(&self.state_dir, sealer, self.vfs.as_deref())?;
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy != 0 {
            return Err(QueueError::Storage("the WAL could not be checkpointed after opening".into()));
        }
        // Later checkpoints run off the commit path, on a thread of their own (`checkpoint.rs`).
        // A job's savepoint journal stays in memory: on disk, SQLite would create, write and
        // delete a temporary file for every job that touches more than 64 KiB of pages.
        conn.execute_batch("PRAGMA wal_autocheckpoint=0; PRAGMA temp_store=MEMORY")?;
        // Every statement of the enqueue and delivery paths stays compiled; with fewer slots
        // than statements, the cache evicts and compiles again on every job.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }
}

/// Opens the database again with the full start-up checks; `None` (reported) when it cannot,
/// and the next batch tries again: the agent refuses writes rather than exit and restart in a
/// loop.
pub(super) fn reopen(opener: &Opener, sealer: &Sealer, storage: &Storage) -> Option<Connection> {
    match opener.open(sealer) {
        Ok(conn) => {
            tracing::info!("the queue database was reopened from the disk");
            storage.lock().unwrap_or_else(|p| p.into_inner()).reopened += 1;
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
