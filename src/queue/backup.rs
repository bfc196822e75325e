//! `refund-agent backup` and `refund-agent restore`: the queue's files copied out and back.
//!
//! A backup is one self-contained SQLite file, made through SQLite's online backup API on a
//! read-only connection of its own, so the running agent keeps writing while it is taken: all
//! pages are copied in one step under one read transaction, which sees one committed state of
//! the queue (WAL readers never block the writer). The copy is written to a temporary file
//! beside its destination, switched to a rollback journal (no `-wal` to carry along), checked
//! with `PRAGMA integrity_check`, fsynced, made `0600` and renamed into place. The queue's id is
//! inside it (`meta.queue_id`), so nothing else needs to travel with it.
//!
//! A restore (agent stopped; it takes the state directory's lock, which the agent holds while
//! it runs) copies the backup into a working file in the state directory, checks and prepares
//! it there (`restore.rs`), and only then puts it in place of `queue.db` with one rename. The
//! queue it replaces is kept beside it as `queue.db.pre-restore` (with its `-wal` as
//! `queue.db.pre-restore-wal`), so nothing a restore replaces is lost.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::carry::{self, Base};
use super::error::QueueError;
use super::files;
use super::generation;
use super::restore::{self, Replaced, Restored};
use super::schema::{self, DB_FILE};
use super::seal::Sealer;

/// Where the queue a restore replaced is kept.
pub const PREVIOUS_FILE: &str = "queue.db.pre-restore";

/// Why a backup or a restore did not happen, in a technician's words.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0} already exists; choose another path, or pass --force to replace it")]
    Exists(PathBuf),
    #[error("there is no queue at {0}: nothing to back up")]
    NoQueue(PathBuf),
    #[error(
        "the agent is running on the state directory {0} (its lock is held): stop it first \
         (systemctl stop refund-agent), then restore"
    )]
    AgentRunning(PathBuf),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("cannot copy {path}: {message}")]
    Copy { path: PathBuf, message: String },
    #[error("the copy {path} cannot be restored: {reason}; nothing was changed")]
    Refused { path: PathBuf, reason: String },
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl BackupError {
    /// Whether the refusal is about the copy or the agent's state (not a fault of this machine).
    pub fn is_refusal(&self) -> bool {
        matches!(self, BackupError::AgentRunning(_) | BackupError::Refused { .. })
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |e| BackupError::Io { path: path.to_path_buf(), message: e.to_string() }
}

fn copy_error(path: &Path) -> impl Fn(rusqlite::Error) -> BackupError + '_ {
    move |e| BackupError::Copy { path: path.to_path_buf(), message: e.to_string() }
}

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    pub path: PathBuf,
    pub queue_id: String,
    /// The queue's generation in the copy (`generation.rs`).
    pub generation: i64,
    pub schema_version: i64,
    pub refunds: i64,
    pub bytes: u64,
}

/// Copies the queue in `state_dir` to `dest`, while the agent runs or not. An existing `dest`
/// is replaced only with `force`.
pub fn backup(state_dir: &Path, dest: &Path, force: bool) -> Result<BackupReport, BackupError> {
    let source = state_dir.join(DB_FILE);
    if !source.is_file() {
        return Err(BackupError::NoQueue(source));
    }
    if dest.exists() && !force {
        return Err(BackupError::Exists(dest.to_path_buf()));
    }
    let dir = parent(dest);
    let tmp = tempfile::Builder::new().prefix(".refund-agent-backup-").tempfile_in(dir).map_err(io(dir))?;
    let src = Connection::open_with_flags(
        &source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(copy_error(&source))?;
    src.busy_timeout(Duration::from_secs(10)).map_err(copy_error(&source))?;
    let mut report = {
        let mut dst = Connection::open(tmp.path()).map_err(copy_error(dest))?;
        copy_all(&src, &mut dst).map_err(copy_error(&source))?;
        make_self_contained(&dst).map_err(copy_error(dest))?;
        if let Err(reason) = integrity(&dst) {
            return Err(BackupError::Copy {
                path: dest.to_path_buf(),
                message: format!("the copy is damaged: {reason}"),
            });
        }
        describe(&dst).map_err(copy_error(dest))?
    };
    drop(src);
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(files::FILE_MODE)).map_err(io(dest))?;
    tmp.as_file().sync_all().map_err(io(dest))?;
    report.bytes = tmp.as_file().metadata().map_err(io(dest))?.len();
    if force {
        tmp.persist(dest).map_err(|e| io(dest)(e.error))?;
    } else {
        // A link, not a rename: it fails rather than replace a file made meanwhile.
        tmp.persist_noclobber(dest).map_err(|e| match e.error.kind() {
            std::io::ErrorKind::AlreadyExists => BackupError::Exists(dest.to_path_buf()),
            _ => io(dest)(e.error),
        })?;
    }
    files::sync_dir(dest)?;
    report.path = dest.to_path_buf();
    Ok(report)
}

/// The directory a path is in (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Copies every page of `src` into `dst` in one step: one read transaction, one consistent state.
fn copy_all(src: &Connection, dst: &mut Connection) -> rusqlite::Result<()> {
    let backup = Backup::new(src, dst)?;
    // Busy only while another connection recovers the WAL; bounded, then reported.
    for _ in 0..200 {
        match backup.step(-1)? {
            StepResult::Done => return Ok(()),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    Err(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
        Some("the queue stayed locked; try again".into()),
    ))
}

/// A temporary file in the state directory, removed unless it is put in place.
fn working_file(state_dir: &Path, prefix: &str) -> Result<tempfile::NamedTempFile, BackupError> {
    tempfile::Builder::new().prefix(prefix).tempfile_in(state_dir).map_err(io(state_dir))
}

/// Copies the queue file at `from` (read-only, its WAL included) into `to`, open on `to`.
fn open_copy_of(from: &Path, to: &Path) -> rusqlite::Result<Connection> {
    let src = Connection::open_with_flags(
        from,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let mut conn = Connection::open(to)?;
    copy_all(&src, &mut conn)?;
    Ok(conn)
}

/// A rollback journal instead of WAL, so that the copy is one file with nothing beside it.
fn make_self_contained(conn: &Connection) -> rusqlite::Result<()> {
    let _: String = conn.query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))?;
    Ok(())
}

/// `PRAGMA integrity_check`: `Err` with what SQLite reported.
pub(super) fn integrity(conn: &Connection) -> Result<(), String> {
    let lines = conn.prepare("PRAGMA integrity_check").and_then(|mut stmt| {
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<Result<Vec<_>, _>>()
    });
    match lines {
        Ok(lines) if lines.len() == 1 && lines[0] == "ok" => Ok(()),
        Ok(lines) => Err(lines.join("; ")),
        Err(e) => Err(e.to_string()),
    }
}

/// The copy's id, generation, schema version and number of refunds (read without the key).
fn describe(conn: &Connection) -> rusqlite::Result<BackupReport> {
    let meta = |key: &str| {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get::<_, String>(0)).optional()
    };
    let schema_version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let generation: Option<i64> = conn
        .query_row("SELECT value FROM generation WHERE id = 1", [], |r| r.get(0))
        .optional()
        .unwrap_or(None);
    Ok(BackupReport {
        path: PathBuf::new(),
        queue_id: meta("queue_id")?.unwrap_or_default(),
        generation: generation.unwrap_or(0),
        schema_version,
        refunds: conn.query_row("SELECT COUNT(*) FROM refunds", [], |r| r.get(0))?,
        bytes: 0,
    })
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    pub restored: Restored,
    /// Where the queue it replaced was kept, if there was one.
    pub previous: Option<PathBuf>,
}

/// Puts the backup at `source` in place of the queue in `state_dir` (agent stopped). `dedup`
/// says whether a destination deduplicates on the refund id (its connector's capability).
///
/// When the queue it replaces is intact and current, the result is that queue with what only
/// the copy knew carried into it (`carry.rs`): nothing it knew is forgotten. When it is older
/// than the one the agent last ran on, or absent, the result is the prepared copy. When it is
/// damaged, the restore is refused unless `discard_current`: its refunds unknown to the copy
/// (and their idempotency keys) would be forgotten.
pub fn restore(
    state_dir: &Path,
    source: &Path,
    sealer: &Sealer,
    dedup: &dyn Fn(&str) -> bool,
    discard_current: bool,
) -> Result<RestoreReport, BackupError> {
    let _lock =
        files::try_lock(state_dir)?.ok_or_else(|| BackupError::AgentRunning(state_dir.to_path_buf()))?;
    if !source.is_file() {
        return Err(BackupError::Io { path: source.to_path_buf(), message: "no such file".into() });
    }
    let refused = |reason: String| BackupError::Refused { path: source.to_path_buf(), reason };
    let marker = state_dir.join(generation::MARKER_FILE);
    let db = state_dir.join(DB_FILE);
    // The generation to beat: the marker's or the replaced file's, whichever is higher, so that
    // the replaced file cannot be put back by hand afterwards. Either may be unreadable (that
    // may be why this restore happens); the copy then still gets one above its own.
    let marker_value = generation::read_marker(&marker).unwrap_or(None);
    let last_run = marker_value.max(current_generation(&db));
    let origin = source.display().to_string();
    let now = crate::clock::now_ms();
    let work = working_file(state_dir, ".queue.db.restore-")?;
    let copy_conn = {
        let conn = open_copy_of(source, work.path())
            .map_err(|e| refused(format!("it cannot be read as a queue: {e}")))?;
        make_self_contained(&conn).map_err(copy_error(work.path()))?;
        conn
    };
    let mut restored =
        restore::prepare(&copy_conn, sealer, dedup, last_run, &origin, now).map_err(refused)?;

    // The queue being replaced, judged on a working copy of its own.
    let mut current = None;
    if db.is_file() {
        let base = working_file(state_dir, ".queue.db.current-")?;
        let opened = open_copy_of(&db, base.path()).map_err(|e| e.to_string());
        let judged = match &opened {
            Ok(conn) => restore::judge_replaced(conn, sealer, marker_value),
            Err(e) => Replaced::Damaged(format!("it cannot be read: {e}")),
        };
        match judged {
            Replaced::Current => {
                let conn = opened.map_err(|e| io(&db)(std::io::Error::other(e)))?;
                make_self_contained(&conn).map_err(copy_error(base.path()))?;
                carry::carry(&conn, &copy_conn, sealer, &mut restored, Base::Current, &origin, now)
                    .map_err(refused)?;
                current = Some(base);
            }
            Replaced::Stale(reason) => {
                // It knows no more than a copy, but what it knows is sealed and true: prepared as
                // a copy is, what only it holds is carried into the copy.
                let conn = opened.map_err(|e| io(&db)(std::io::Error::other(e)))?;
                let from = db.display().to_string();
                restore::prepare(&conn, sealer, dedup, last_run, &from, now).map_err(refused)?;
                carry::carry(&copy_conn, &conn, sealer, &mut restored, Base::Copy, &origin, now)
                    .map_err(refused)?;
                restored.replaced = Replaced::Stale(reason);
            }
            Replaced::Damaged(reason) if !discard_current => {
                return Err(refused(format!(
                "the queue it would replace, {}, is damaged ({reason}): the refunds it holds and the copy \
                     does not, with their idempotency keys, would be forgotten, and a kiosk repeating one of \
                     those requests would get a second refund. Look at it with `refund-agent doctor`; to \
                     restore anyway, pass --discard-current (it is still kept as {PREVIOUS_FILE})",
                db.display()
            )))
            }
            judged => restored.replaced = judged,
        }
    }
    drop(copy_conn);
    let work = current.unwrap_or(work);
    fs::set_permissions(work.path(), fs::Permissions::from_mode(files::FILE_MODE))
        .map_err(io(work.path()))?;
    work.as_file().sync_all().map_err(io(work.path()))?;

    let id_file = state_dir.join(schema::MARKER_FILE);
    match fs::read_to_string(&id_file) {
        Ok(text) if text.trim() != restored.queue_id => {
            return Err(refused(format!(
                "it is a backup of queue {}, but this state directory holds queue {} ({}); to bring \
                 another queue's backup here, move {} aside first",
                restored.queue_id,
                text.trim(),
                id_file.display(),
                id_file.display()
            )))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&id_file)(e)),
    }

    let previous = keep_previous(state_dir, &db)?;
    work.persist(&db).map_err(|e| io(&db)(e.error))?;
    files::sync_dir(&db)?;
    // After the rename, so that a stop in between leaves a marker the new file is not older
    // than (it was given a generation above it) or the old marker with the old file.
    files::write_durably(&id_file, &format!("{}\n", restored.queue_id))?;
    generation::write_marker(&marker, restored.generation)?;
    tracing::warn!(
        from = %source.display(),
        queue_id = %restored.queue_id,
        generation = restored.generation,
        unknown = restored.unknown,
        pending = restored.pending,
        "queue restored from a backup"
    );
    Ok(RestoreReport { restored, previous })
}

/// The generation the queue about to be replaced holds, unverified (it only raises the one
/// the restored queue gets); `None` when it cannot be read.
fn current_generation(db: &Path) -> Option<i64> {
    let conn =
        Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .ok()?;
    conn.query_row("SELECT value FROM generation WHERE id = 1", [], |r| r.get(0)).ok()
}

/// Keeps the queue about to be replaced as `queue.db.pre-restore` (a hard link, so the file
/// stays in place until the rename), its `-wal` beside it under the matching name (SQLite finds
/// it there when that file is opened), and removes the `-shm`. First a checkpoint, so the kept
/// file holds what its WAL held; a queue too damaged to open is kept as it is.
fn keep_previous(state_dir: &Path, db: &Path) -> Result<Option<PathBuf>, BackupError> {
    if !db.is_file() {
        return Ok(None);
    }
    match Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .and_then(|c| c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)"))
    {
        Ok(()) => {}
        Err(e) => tracing::warn!(error = %e, "cannot checkpoint the queue being replaced; kept with its WAL"),
    }
    let kept = state_dir.join(PREVIOUS_FILE);
    for old in [
        kept.clone(),
        state_dir.join(format!("{PREVIOUS_FILE}-wal")),
        state_dir.join(format!("{PREVIOUS_FILE}-shm")),
    ] {
        remove_if_present(&old)?;
    }
    fs::hard_link(db, &kept).map_err(io(&kept))?;
    let wal = state_dir.join(format!("{DB_FILE}-wal"));
    if wal.is_file() {
        let kept_wal = state_dir.join(format!("{PREVIOUS_FILE}-wal"));
        fs::rename(&wal, &kept_wal).map_err(io(&wal))?;
    }
    remove_if_present(&state_dir.join(format!("{DB_FILE}-shm")))?;
    files::sync_dir(db)?;
    Ok(Some(kept))
}

fn remove_if_present(path: &Path) -> Result<(), BackupError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the agent stopped the queue has no `-wal` or `-shm` (the last connection removed
    /// them): the read-only connection must still read it.
    #[test]
    fn a_stopped_queue_is_backed_up_and_an_existing_path_kept_without_force() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let sealer = Sealer::new(vec![5; 32]).expect("a key");
        let state = tmp.path().join("state");
        drop(schema::open(&state, &sealer).expect("queue opens"));
        assert!(!state.join("queue.db-wal").exists(), "closed cleanly");
        let dest = tmp.path().join("copy.db");
        let report = backup(&state, &dest, false).expect("backup of a stopped queue");
        assert_eq!(report.refunds, 0);
        assert!(!report.queue_id.is_empty());
        assert_eq!(fs::metadata(&dest).expect("copy").permissions().mode() & 0o777, 0o600);
        assert!(!tmp.path().join("copy.db-wal").exists(), "the copy is one file");
        assert!(matches!(backup(&state, &dest, false), Err(BackupError::Exists(_))));
        backup(&state, &dest, true).expect("--force replaces it");
        let leftovers = fs::read_dir(tmp.path())
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".refund-agent-backup-"))
            .count();
        assert_eq!(leftovers, 0);
        assert!(matches!(backup(&tmp.path().join("none"), &dest, true), Err(BackupError::NoQueue(_))));
    }
}
