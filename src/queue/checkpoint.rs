//! WAL checkpoints off the commit path. SQLite's automatic checkpoint runs inside the COMMIT
//! that pushes the WAL past its threshold: that refund's caller waits while a thousand pages
//! are copied into the database file and synced. The owner's connection has automatic
//! checkpoints off instead, and a WAL hook on it nudges this thread after a COMMIT that leaves
//! the WAL holding [`THRESHOLD_FRAMES`] frames or more; the thread copies the WAL into the
//! database file on a connection of its own (`PASSIVE`: it never blocks the owner, and stops at
//! a frame a reader still needs). The next write after a complete checkpoint starts the WAL
//! over from its first frame, so the count falls again and commits go on without checkpoints.
//! (The WAL file's size is no measure: it keeps its size when it starts over, and a checkpoint
//! per COMMIT costs two more fsyncs each.)
//!
//! Durability is SQLite's own: a checkpoint syncs the WAL before it writes the database file
//! and marks frames as copied only after the database file is synced, so a failed or
//! interrupted checkpoint leaves the frames in the WAL, to be copied again. The checkpoint at
//! every open (`opener.rs`) and at shutdown stays on the owner.

use std::ffi::c_int;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use rusqlite::hooks::Wal;
use rusqlite::{Connection, OpenFlags};

use super::error::QueueError;
use crate::lock::lock;

/// The frames in the WAL from which a checkpoint runs: SQLite's default threshold.
pub(super) const THRESHOLD_FRAMES: i32 = 1000;
/// How long a checkpoint waits for the owner's write lock (a restart of the WAL needs it).
const BUSY: Duration = Duration::from_secs(1);

/// The checkpoint thread; stopped and joined before the owner closes the database.
#[derive(Debug)]
pub(super) struct Checkpointer {
    /// Shared with the WAL hooks: taken at the stop, so the thread sees its channel closed even
    /// while a connection with a hook on it is still open.
    nudge: Arc<Mutex<Option<mpsc::SyncSender<()>>>>,
    thread: Option<thread::JoinHandle<()>>,
    counts: Arc<Counts>,
}

/// What the hook and the thread did, for the tests.
#[derive(Debug, Default)]
struct Counts {
    /// COMMITs that left the WAL at or past the threshold.
    asked: AtomicU64,
    /// Checkpoints run.
    runs: AtomicU64,
    /// The frames in the WAL after the last COMMIT.
    frames: AtomicI32,
}

impl Checkpointer {
    /// Starts the thread on a connection of its own to `db`, through the SQLite VFS `vfs`.
    pub fn spawn(db: PathBuf, vfs: Option<String>) -> Checkpointer {
        let (nudge, nudged) = mpsc::sync_channel::<()>(1);
        let counts = Arc::new(Counts::default());
        let ran = counts.clone();
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
            while nudged.recv().is_ok() {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "WAL checkpoint failed; it is tried again after the next write");
                }
                ran.runs.fetch_add(1, Ordering::Relaxed);
            }
        });
        match spawned {
            Ok(thread) => {
                Checkpointer { nudge: Arc::new(Mutex::new(Some(nudge))), thread: Some(thread), counts }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the checkpoint thread; the WAL grows until the next start");
                Checkpointer { nudge: Arc::default(), thread: None, counts }
            }
        }
    }

    /// Watches the owner's connection (again after every reopen): each COMMIT that leaves
    /// [`THRESHOLD_FRAMES`] or more in the WAL nudges the thread. The hook never blocks: a nudge
    /// already waiting covers this one.
    pub fn watch(&self, conn: &mut Connection) -> Result<(), QueueError> {
        let (nudge, counts) = (self.nudge.clone(), self.counts.clone());
        conn.wal_hook(Some(move |_: &mut Wal, frames: c_int| {
            counts.frames.store(frames, Ordering::Relaxed);
            if frames >= THRESHOLD_FRAMES {
                counts.asked.fetch_add(1, Ordering::Relaxed);
                if let Some(nudge) = lock(&nudge).as_ref() {
                    let _ = nudge.try_send(());
                }
            }
            Ok(())
        }))?;
        Ok(())
    }

    /// Ends the thread and closes its connection.
    pub fn stop(mut self) {
        drop(lock(&self.nudge).take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            thread::yield_now();
        }
    }

    fn write(conn: &Connection, pad: usize) {
        conn.execute("INSERT INTO t (pad) VALUES (zeroblob(?1))", [pad as i64]).expect("insert");
    }

    /// The WAL file keeps its size when the WAL starts over, so the size cannot say whether a
    /// checkpoint is due: that once ran a checkpoint, with its two fsyncs, after every COMMIT.
    #[test]
    fn only_a_wal_past_the_threshold_asks_for_a_checkpoint_not_a_large_wal_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("q.db");
        let mut conn = Connection::open(&db).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t (id INTEGER PRIMARY KEY, pad BLOB);",
        )
        .expect("schema");
        let checkpointer = Checkpointer::spawn(db.clone(), None);
        checkpointer.watch(&mut conn).expect("watched");
        let counts = checkpointer.counts.clone();
        // About 1,200 frames of new rows, a COMMIT each: past the threshold.
        for _ in 0..300 {
            write(&conn, 16_000);
        }
        assert!(counts.asked.load(Ordering::Relaxed) > 0, "a COMMIT past the threshold asked");
        until("a checkpoint", || counts.runs.load(Ordering::Relaxed) > 0);
        // A write after the checkpoint copied everything starts the WAL over.
        until("the WAL started over", || {
            write(&conn, 10);
            counts.frames.load(Ordering::Relaxed) < THRESHOLD_FRAMES
        });
        let wal = std::fs::metadata(format!("{}-wal", db.display())).expect("the WAL").len();
        assert!(wal >= 1000 * 4096, "the WAL file kept its size: {wal} bytes");
        let (asked, runs) = (counts.asked.load(Ordering::Relaxed), counts.runs.load(Ordering::Relaxed));
        for _ in 0..100 {
            write(&conn, 10);
        }
        assert_eq!(
            counts.asked.load(Ordering::Relaxed),
            asked,
            "small COMMITs on a large WAL file ask for nothing"
        );
        checkpointer.stop();
        let after = counts.runs.load(Ordering::Relaxed);
        assert!(after <= runs + 1, "at most a nudge already waiting ran: {runs} then {after}");
    }
}
