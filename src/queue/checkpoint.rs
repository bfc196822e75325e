//! WAL checkpoints off the commit path. SQLite's automatic checkpoint runs inside the COMMIT
//! that pushes the WAL past its threshold: that refund's caller waits while a thousand pages
//! are copied into the database file and synced. The owner's connection has automatic
//! checkpoints off instead, and after every write batch it nudges this thread, which copies
//! the WAL into the database file on a connection of its own (`PASSIVE`: it never blocks the
//! owner, and stops at a frame a reader still needs).
//!
//! Durability is SQLite's own: a checkpoint syncs the WAL before it writes the database file
//! and marks frames as copied only after the database file is synced, so a failed or
//! interrupted checkpoint leaves the frames in the WAL, to be copied again. The checkpoint at
//! every open (`opener.rs`) and at shutdown stays on the owner.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// The WAL size from which a checkpoint runs: SQLite's default threshold (1,000 pages).
const THRESHOLD_BYTES: u64 = 1000 * 4096;
/// How long a checkpoint waits for the owner's write lock (a restart of the WAL needs it).
const BUSY: Duration = Duration::from_secs(1);

/// The checkpoint thread; stopped and joined before the owner closes the database.
#[derive(Debug)]
pub(super) struct Checkpointer {
    nudge: Option<mpsc::SyncSender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread on a connection of its own to `db`, through the SQLite VFS `vfs`.
    pub fn spawn(db: PathBuf, vfs: Option<String>) -> Checkpointer {
        let (nudge, nudged) = mpsc::sync_channel::<()>(1);
        let spawned = thread::Builder::new().name("queue-checkpoint".into()).spawn(move || {
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = match &vfs {
                None => Connection::open_with_flags(&db, flags),
                Some(vfs) => Connection::open_with_flags_and_vfs(&db, flags, vfs.as_str()),
            };
            let conn = match conn.and_then(|c| c.busy_timeout(BUSY).map(|()| c)) {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the queue for checkpoints; the WAL grows until the next start");
                    return;
                }
            };
            let wal = PathBuf::from(format!("{}-wal", db.display()));
            while nudged.recv().is_ok() {
                let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
                if size < THRESHOLD_BYTES {
                    continue;
                }
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "WAL checkpoint failed; it is tried again after the next write");
                }
            }
        });
        match spawned {
            Ok(thread) => Checkpointer { nudge: Some(nudge), thread: Some(thread) },
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the checkpoint thread; the WAL grows until the next start");
                Checkpointer { nudge: None, thread: None }
            }
        }
    }

    /// After a write batch's COMMIT: never blocks (a nudge already waiting covers this one).
    pub fn nudge(&self) {
        if let Some(nudge) = &self.nudge {
            let _ = nudge.try_send(());
        }
    }

    /// Ends the thread and closes its connection.
    pub fn stop(mut self) {
        drop(self.nudge.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
