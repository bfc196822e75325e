//! WAL checkpoints off the commit path. SQLite's automatic checkpoint runs inside the COMMIT
//! that pushes the WAL past its threshold: that refund's caller waits while a thousand pages
//! are copied into the database file and synced. The owner's connection has automatic
//! checkpoints off instead, and a WAL hook on it nudges this thread after a COMMIT that leaves
//! [`THRESHOLD_FRAMES`] frames or more in the WAL that no checkpoint has copied yet; the thread
//! copies the WAL into the database file on a connection of its own (`PASSIVE`: it never blocks
//! the owner, and stops at a frame a reader still needs).
//!
//! The next write after a checkpoint that copied every frame starts the WAL over from its first
//! frame. While refunds keep coming, a checkpoint seldom copies every frame: the owner commits
//! beside it. So the count that asks is of the frames not yet copied, not of the frames in the
//! WAL (counting those asked again after every COMMIT, each time for a checkpoint with three
//! fsyncs that copied a few pages), nor the WAL file's size (it keeps its size when the WAL
//! starts over). A WAL that started over is counted from nothing copied: the hook sees fewer
//! frames than after the COMMIT before (counted against the last checkpoint of the WAL before
//! it, a new WAL that passed the frames that checkpoint copied between two COMMITs looked
//! almost all copied, and no checkpoint was asked for until the owner's restart at
//! [`RESTART_FRAMES`]). A checkpoint that left frames behind runs again once the queue has been quiet
//! for [`SETTLE`], so the WAL starts over at the next write. Should writes never pause, the
//! owner itself runs a `RESTART` checkpoint between two batches once the WAL holds
//! [`RESTART_FRAMES`] ([`Checkpointer::restart_if_due`]): it is the only writer, so nothing
//! commits beside that one, and the WAL file stays bounded.
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

/// The frames not yet copied from which a checkpoint runs: SQLite's default threshold.
pub(super) const THRESHOLD_FRAMES: i32 = 1000;
/// A WAL this long (about 40 MB) is checkpointed by the owner, between two batches.
pub(super) const RESTART_FRAMES: i32 = 10 * THRESHOLD_FRAMES;
/// How long the queue is quiet before a checkpoint that left frames behind runs again.
const SETTLE: Duration = Duration::from_millis(500);
/// How long a checkpoint waits for the owner's write lock (a restart of the WAL needs it).
const BUSY: Duration = Duration::from_secs(1);
/// The owner connection's own busy timeout (`schema.rs`), put back after a restart.
const OWNER_BUSY: Duration = Duration::from_secs(5);

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
    /// `RESTART` checkpoints run by the owner.
    restarts: AtomicU64,
    /// The frames in the WAL after the last COMMIT.
    frames: AtomicI32,
    /// The frames of the WAL the last checkpoint had copied into the database file.
    copied: AtomicI32,
    /// How often the hook saw the WAL start over (fewer frames after a COMMIT than before).
    started_over: AtomicU64,
}

impl Counts {
    /// The frames in a WAL of `frames` that no checkpoint has copied. A count below the last
    /// checkpoint's is a WAL that started over: all of it is new.
    fn uncopied(&self, frames: i32) -> i32 {
        let copied = self.copied.load(Ordering::Relaxed);
        if frames >= copied {
            frames - copied
        } else {
            frames
        }
    }

    /// Notes the frames in the WAL after a COMMIT. Fewer than before is a WAL that started over
    /// (a write after a checkpoint copied every frame): nothing of it is copied yet, however
    /// many frames the last checkpoint copied of the one before.
    fn committed(&self, frames: i32) {
        if frames < self.frames.swap(frames, Ordering::Relaxed) {
            self.copied.store(0, Ordering::Relaxed);
            self.started_over.fetch_add(1, Ordering::Relaxed);
        }
    }
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
            // Whether the last checkpoint left frames behind: only then does a quiet queue
            // wake the thread (an idle agent has no timer running).
            let mut behind = false;
            loop {
                let uncopied = || ran.uncopied(ran.frames.load(Ordering::Relaxed));
                let nudge = if behind {
                    nudged.recv_timeout(SETTLE)
                } else {
                    nudged.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
                };
                match nudge {
                    // A nudge sent while the last checkpoint ran may be one it answered already;
                    // a WAL at its bound is the owner's to checkpoint (one checkpoint at a time).
                    Ok(()) if uncopied() < THRESHOLD_FRAMES => continue,
                    Ok(()) | Err(_) if ran.frames.load(Ordering::Relaxed) >= RESTART_FRAMES => {
                        behind = false;
                        continue;
                    }
                    Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
                checkpoint(&conn, &ran);
                behind = uncopied() > 0;
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
    /// [`THRESHOLD_FRAMES`] or more not yet copied in the WAL nudges the thread. The hook never
    /// blocks: a nudge already waiting covers this one.
    pub fn watch(&self, conn: &mut Connection) -> Result<(), QueueError> {
        let (nudge, counts) = (self.nudge.clone(), self.counts.clone());
        conn.wal_hook(Some(move |_: &mut Wal, frames: c_int| {
            counts.committed(frames);
            if counts.uncopied(frames) >= THRESHOLD_FRAMES {
                counts.asked.fetch_add(1, Ordering::Relaxed);
                if let Some(nudge) = lock(&nudge).as_ref() {
                    let _ = nudge.try_send(());
                }
            }
            Ok(())
        }))?;
        Ok(())
    }

    /// On the owner's connection, between two batches: once the WAL holds [`RESTART_FRAMES`],
    /// a `RESTART` checkpoint copies what is left and lets the next write start the WAL over.
    /// It does not wait for a reader (the check after start may hold an old snapshot for a
    /// while): then it copies what it can and is tried again after the next batch.
    pub fn restart_if_due(&self, conn: &Connection) {
        if self.counts.frames.load(Ordering::Relaxed) < RESTART_FRAMES {
            return;
        }
        let run = || -> rusqlite::Result<(i32, i32, i32)> {
            conn.busy_timeout(Duration::ZERO)?;
            let out = conn
                .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)));
            conn.busy_timeout(OWNER_BUSY)?;
            out
        };
        match run() {
            Ok((busy, _, copied)) => {
                self.counts.copied.store(copied.max(0), Ordering::Relaxed);
                if busy == 0 {
                    // The next write starts the WAL over, with nothing of it copied.
                    self.counts.frames.store(0, Ordering::Relaxed);
                    self.counts.copied.store(0, Ordering::Relaxed);
                }
                self.counts.restarts.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "WAL restart failed; it is tried again after the next batch")
            }
        }
    }

    /// Ends the thread and closes its connection.
    pub fn stop(mut self) {
        drop(lock(&self.nudge).take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One `PASSIVE` checkpoint. Notes how many frames of the WAL it had copied when it ended.
fn checkpoint(conn: &Connection, counts: &Counts) {
    let started_over = counts.started_over.load(Ordering::Relaxed);
    // (busy, frames in the WAL, frames copied); -1 for both counts when the WAL is not open.
    match conn
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get::<_, i32>(1)?, r.get::<_, i32>(2)?)))
    {
        // A WAL that started over meanwhile (only after this checkpoint copied all of the one
        // before) has nothing copied: the count of the old one must not be taken for it.
        Ok(_) if counts.started_over.load(Ordering::Relaxed) != started_over => {
            counts.copied.store(0, Ordering::Relaxed)
        }
        Ok((_, copied)) => counts.copied.store(copied.max(0), Ordering::Relaxed),
        Err(e) => {
            // Asked again once as many frames more have come: not in a loop while it fails.
            counts.copied.store(counts.frames.load(Ordering::Relaxed), Ordering::Relaxed);
            tracing::warn!(error = %e, "WAL checkpoint failed; it is tried again after more writes");
        }
    }
    counts.runs.fetch_add(1, Ordering::Relaxed);
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

    /// A WAL database with one table, watched by a checkpoint thread, as the owner's is.
    fn watched_table() -> (tempfile::TempDir, Connection, Checkpointer) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("q.db");
        let mut conn = Connection::open(&db).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t (id INTEGER PRIMARY KEY, pad BLOB);",
        )
        .expect("schema");
        conn.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
        let checkpointer = Checkpointer::spawn(db, None);
        checkpointer.watch(&mut conn).expect("watched");
        (dir, conn, checkpointer)
    }

    fn write(conn: &Connection, pad: usize) {
        conn.execute("INSERT INTO t (pad) VALUES (zeroblob(?1))", [pad as i64]).expect("insert");
    }

    /// The WAL file keeps its size when the WAL starts over, so the size cannot say whether a
    /// checkpoint is due: that once ran a checkpoint, with its two fsyncs, after every COMMIT.
    #[test]
    fn only_a_wal_past_the_threshold_asks_for_a_checkpoint_not_a_large_wal_file() {
        let (dir, conn, checkpointer) = watched_table();
        let counts = checkpointer.counts.clone();
        // About 1,200 frames of new rows, a COMMIT each: past the threshold.
        for _ in 0..300 {
            write(&conn, 16_000);
        }
        assert!(counts.asked.load(Ordering::Relaxed) > 0, "a COMMIT past the threshold asked");
        // The first checkpoint ran beside the writes; once they stop, one copies the rest.
        until("a checkpoint that copied the whole WAL", || {
            counts.runs.load(Ordering::Relaxed) > 0
                && counts.copied.load(Ordering::Relaxed) >= counts.frames.load(Ordering::Relaxed)
        });
        // A write after the checkpoint copied everything starts the WAL over.
        write(&conn, 10);
        assert!(counts.frames.load(Ordering::Relaxed) < THRESHOLD_FRAMES, "the WAL started over");
        let wal = std::fs::metadata(dir.path().join("q.db-wal")).expect("the WAL").len();
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

    /// While COMMITs keep coming, a checkpoint runs beside them and leaves the frames they add
    /// behind, so the WAL does not start over. Counting the frames in the WAL then asked for a
    /// checkpoint (three fsyncs) after every COMMIT; counting the frames not yet copied asks
    /// once per [`THRESHOLD_FRAMES`]. Once the writes pause, a checkpoint copies the rest.
    #[test]
    fn commits_that_keep_coming_ask_for_a_checkpoint_per_threshold_not_per_commit() {
        let (_dir, conn, checkpointer) = watched_table();
        let counts = checkpointer.counts.clone();
        // Commits of two pages or more, back to back: over 4,000 frames, under the restart mark.
        let mut commits = 0;
        let mut peak = 0;
        let started = Instant::now();
        while commits < 2000 {
            write(&conn, 5000);
            commits += 1;
            peak = peak.max(counts.frames.load(Ordering::Relaxed));
            if counts.frames.load(Ordering::Relaxed) < peak {
                break;
            }
        }
        let runs = counts.runs.load(Ordering::Relaxed);
        // Besides one per threshold, a checkpoint that left frames behind runs again after each
        // quiet SETTLE (a slow machine, or qemu, writes 1,000 frames in more than that).
        let settled = (started.elapsed().as_millis() / SETTLE.as_millis()) as u64;
        assert!(peak >= 4000 || commits < 2000, "the test wrote {peak} frames in {commits} COMMITs");
        assert!(counts.asked.load(Ordering::Relaxed) >= 1, "the WAL passed the threshold and asked");
        assert!(
            runs <= (peak / THRESHOLD_FRAMES + 1) as u64 + settled,
            "{runs} checkpoints ran over {peak} frames in {commits} COMMITs ({settled} quiet periods)"
        );
        until("a checkpoint that copied the whole WAL", || {
            counts.copied.load(Ordering::Relaxed) >= counts.frames.load(Ordering::Relaxed)
        });
        write(&conn, 10);
        assert!(counts.frames.load(Ordering::Relaxed) < THRESHOLD_FRAMES, "the WAL started over");
        checkpointer.stop();
    }

    /// A WAL that started over is counted from nothing copied. Its frames were once counted
    /// against the last checkpoint of the WAL before it, so that a new WAL that grew past the
    /// frames that checkpoint copied looked almost all copied: here, a WAL of 1,200 frames is
    /// checkpointed whole, and the next one is asked for at 1,200 frames, not at 2,200.
    #[test]
    fn a_wal_that_started_over_asks_for_a_checkpoint_from_its_own_frames() {
        let (_dir, conn, checkpointer) = watched_table();
        let counts = checkpointer.counts.clone();
        // COMMITs of about 400 frames each (a row of 1.6 MB spills into overflow pages), then of
        // about 420, so that the new WAL passes the old one's count between two COMMITs.
        let big = || write(&conn, 1_600_000);
        let bigger = || write(&conn, 1_700_000);
        let mut peak = 0;
        while counts.asked.load(Ordering::Relaxed) == 0 {
            big();
            peak = counts.frames.load(Ordering::Relaxed);
        }
        until("a checkpoint that copied the whole WAL", || {
            counts.copied.load(Ordering::Relaxed) >= counts.frames.load(Ordering::Relaxed)
        });
        let asked = counts.asked.load(Ordering::Relaxed);
        bigger();
        assert!(counts.frames.load(Ordering::Relaxed) < peak, "the WAL started over");
        while counts.frames.load(Ordering::Relaxed) < peak.max(THRESHOLD_FRAMES) {
            bigger();
        }
        assert!(
            counts.asked.load(Ordering::Relaxed) > asked,
            "a new WAL of {} frames did not ask for a checkpoint (the last one copied {peak})",
            counts.frames.load(Ordering::Relaxed)
        );
        checkpointer.stop();
    }

    /// Should the writes never pause, no PASSIVE checkpoint copies every frame and the WAL
    /// never starts over: past [`RESTART_FRAMES`], a checkpoint waits for the writer, copies
    /// everything and lets the next write start the WAL over, so the WAL file stays bounded.
    #[test]
    fn a_wal_that_never_starts_over_is_restarted_at_its_bound() {
        let (_dir, conn, checkpointer) = watched_table();
        let counts = checkpointer.counts.clone();
        let mut peak = 0;
        let started_over = loop {
            write(&conn, 16_000);
            // The owner, between two batches.
            checkpointer.restart_if_due(&conn);
            let frames = counts.frames.load(Ordering::Relaxed);
            if frames < peak {
                break true;
            }
            peak = frames;
            if peak > 3 * RESTART_FRAMES {
                break false;
            }
        };
        assert!(started_over, "the WAL grew to {peak} frames without starting over");
        assert!(peak >= THRESHOLD_FRAMES, "checkpoints ran: {peak} frames");
        assert!(peak < RESTART_FRAMES + 2 * THRESHOLD_FRAMES, "the WAL started over only at {peak} frames");
        checkpointer.stop();
    }
}
