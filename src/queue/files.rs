//! The queue's files are private to the agent: the state directory `0700`; `queue.db`, its
//! `-wal` and `-shm`, `queue.id`, `queue.generation` and `queue.lock` `0600`. Refunds, sales and card references are in them, and a
//! till has other local users (the kiosk UI, maintenance accounts). Modes are set when a file
//! is created and corrected at every open, so an installation made by an older version, or a
//! file copied in with a loose mode, is made private too.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::error::QueueError;

/// The mode of every file the queue writes.
pub const FILE_MODE: u32 = 0o600;
/// The mode of the state directory.
pub const DIR_MODE: u32 = 0o700;

/// The queue's files in the state directory whose modes are kept private.
const FILES: [&str; 6] =
    ["queue.db", "queue.db-wal", "queue.db-shm", "queue.id", "queue.generation", "queue.lock"];

/// The lock file in the state directory: whoever holds it (the running agent's queue owner, or
/// a restore) is the only one writing the queue.
pub const LOCK_FILE: &str = "queue.lock";

fn open_error(path: &Path, e: std::io::Error) -> QueueError {
    QueueError::Open { path: path.to_path_buf(), message: e.to_string() }
}

/// Creates the state directory `0700`, or makes an existing one `0700`. An existing directory
/// the agent cannot change (owned by another user) is only warned about: the files in it are
/// private either way.
pub fn private_dir(dir: &Path) -> Result<(), QueueError> {
    if !dir.is_dir() {
        fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir).map_err(|e| open_error(dir, e))?;
    }
    let mode = fs::metadata(dir).map_err(|e| open_error(dir, e))?.permissions().mode() & 0o777;
    if mode != DIR_MODE {
        match fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)) {
            Ok(()) => {
                tracing::info!(path = %dir.display(), from = format!("{mode:o}"), "state directory made private (0700)")
            }
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "cannot make the state directory private (0700)")
            }
        }
    }
    Ok(())
}

/// Creates `path` empty with mode `0600` unless it exists, so that SQLite (which gives its
/// `-wal` and `-shm` the database's mode) never creates the database with the umask's mode.
pub fn precreate(path: &Path) -> Result<(), QueueError> {
    match fs::OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(open_error(path, e)),
    }
}

/// An exclusive `flock` on the state directory's lock file, released when dropped (or when the
/// process ends, however it ends: the kernel drops it, so a crash never leaves a stale lock).
#[derive(Debug)]
pub struct StateLock {
    _lock: nix::fcntl::Flock<fs::File>,
}

/// Takes the state directory's lock without waiting. `Ok(None)`: another process holds it.
pub fn try_lock(dir: &Path) -> Result<Option<StateLock>, QueueError> {
    private_dir(dir)?;
    let path = dir.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(&path)
        .map_err(|e| open_error(&path, e))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(StateLock { _lock: lock })),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(open_error(&path, std::io::Error::from(e))),
    }
}

/// Writes `text` to `path` durably and atomically, mode `0600`: a temporary file beside it,
/// fsynced, renamed over it, then the directory fsynced.
pub fn write_durably(path: &Path, text: &str) -> Result<(), QueueError> {
    let err = |e: std::io::Error| open_error(path, e);
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&tmp)
            .map_err(err)?;
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    fs::rename(&tmp, path).map_err(err)?;
    sync_dir(path)
}

/// Fsyncs the directory holding `path`, so a rename or a new file in it survives a power cut.
pub fn sync_dir(path: &Path) -> Result<(), QueueError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| open_error(dir, e))
}

/// Makes every existing queue file in `dir` `0600`.
pub fn fix_modes(dir: &Path) -> Result<(), QueueError> {
    for name in FILES {
        make_private(&dir.join(name))?;
    }
    Ok(())
}

/// Makes one file `0600` if it exists with a looser mode.
pub fn make_private(path: &Path) -> Result<(), QueueError> {
    let mode = match fs::metadata(path) {
        Ok(m) => m.permissions().mode() & 0o777,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(open_error(path, e)),
    };
    if mode != FILE_MODE {
        fs::set_permissions(path, fs::Permissions::from_mode(FILE_MODE)).map_err(|e| open_error(path, e))?;
        tracing::info!(path = %path.display(), from = format!("{mode:o}"), "queue file made private (0600)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn loose_modes_are_made_private_and_new_files_start_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        for name in ["queue.db-wal", "queue.id"] {
            fs::write(dir.join(name), "x").unwrap();
            fs::set_permissions(dir.join(name), fs::Permissions::from_mode(0o644)).unwrap();
        }
        private_dir(&dir).unwrap();
        precreate(&dir.join("queue.db")).unwrap();
        fix_modes(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        for name in ["queue.db", "queue.db-wal", "queue.id"] {
            assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        }
        assert!(!dir.join("queue.db-shm").exists(), "absent files are not created");
        let fresh = tmp.path().join("a").join("b");
        private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
    }
}
