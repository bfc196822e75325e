//! The queue's files are private to the agent: the state directory `0700`; `queue.db`, its
//! `-wal` and `-shm` and `queue.id` `0600`. Refunds, sales and card references are in them, and a
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
const FILES: [&str; 4] = ["queue.db", "queue.db-wal", "queue.db-shm", "queue.id"];

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
