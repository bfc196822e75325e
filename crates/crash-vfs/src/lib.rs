//! A test-only SQLite VFS that simulates power loss, in the spirit of SQLite's own crash tests.
//!
//! The shim wraps the platform's real VFS ("unix"). Every write reaches the real file at once,
//! so the running process reads back what it wrote, as it would from the kernel's page cache;
//! beside that, the shim keeps for each database, WAL and journal file the image that is
//! *durable*: its contents as of its last successful `xSync`, and the writes and truncations
//! made since. A sync folds that file's pending operations into its durable image.
//!
//! A power cut ([`Disk::arm`] after a number of operations, or [`Disk::cut`]) makes every later
//! operation fail with an I/O error, as a disk that lost power would. [`Disk::restore`], once
//! the connections are closed, rewrites each file as the disk would hold it after power came
//! back: its durable image plus, depending on [`Loss`], none, some or a torn prefix of its
//! pending writes; each database's `-shm` (shared memory, never synced) is deleted.
//!
//! [`Disk::fail_syncs`] makes the next syncs fail with `SQLITE_IOERR_FSYNC` and, like Linux
//! after a failed `fsync`, forgets the pending writes of that file: they stay readable in the
//! cache but will never reach the disk, even if a later sync succeeds.
//! [`Disk::ignore_syncs`] makes syncs succeed without making anything durable: a disk that lies,
//! for negative controls.
//!
//! Not modelled: directory entries (creating, deleting and renaming files are durable at once),
//! reordering across a sync, damage outside the bytes written (SQLite's powersafe-overwrite
//! assumption holds), and files written outside SQLite.

mod ffi;
mod model;

use std::ffi::CString;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use model::State;
pub use model::{Loss, Restored};

/// Why the shim could not be registered or restored.
#[derive(Debug, thiserror::Error)]
pub enum CrashVfsError {
    #[error("the VFS name {0:?} is already registered")]
    NameTaken(String),
    #[error("the VFS name {0:?} contains a NUL byte")]
    BadName(String),
    #[error("SQLite has no default VFS to wrap")]
    NoRealVfs,
    #[error("sqlite3_vfs_register failed with code {0}")]
    Register(i32),
    #[error("{0} file(s) are still open through the shim; close every connection before restoring")]
    FilesOpen(usize),
    #[error("cannot rewrite {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// What the callbacks share with the test: the wrapped VFS and the disk model. Leaked at
/// registration, because SQLite keeps a pointer to it for the life of the process.
struct Shared {
    real: *mut libsqlite3_sys::sqlite3_vfs,
    state: Mutex<State>,
}

// SAFETY: `real` points at SQLite's own VFS object, which is immutable after registration and
// used by SQLite from any thread; every mutable part is behind the mutex.
unsafe impl Sync for Shared {}
// SAFETY: as above; nothing in `Shared` is tied to the thread that made it.
unsafe impl Send for Shared {}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The simulated disk behind one registered VFS name.
#[derive(Clone, Copy)]
pub struct Disk {
    shared: &'static Shared,
    name: &'static str,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Disk {
    /// Registers a crash-simulating VFS called `name` (not the default) over the default VFS.
    pub fn register(name: &str) -> Result<Disk, CrashVfsError> {
        let c_name = CString::new(name).map_err(|_| CrashVfsError::BadName(name.to_string()))?;
        let real = ffi::default_vfs()?;
        let shared: &'static Shared =
            Box::leak(Box::new(Shared { real, state: Mutex::new(State::default()) }));
        ffi::register(c_name, shared, name)?;
        Ok(Disk { shared, name: Box::leak(name.to_string().into_boxed_str()) })
    }

    /// The VFS name to open connections with.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Cuts the power just before the `ops`-th next write, truncate or sync (0: the next one).
    pub fn arm(&self, ops: u64) {
        self.shared.state().countdown = Some(ops);
    }

    /// Cuts the power just before the `writes`-th next write to a database file (not its WAL):
    /// in WAL mode those happen only in checkpoints, so the cut falls inside one.
    pub fn arm_in_checkpoint(&self, writes: u64) {
        self.shared.state().database_countdown = Some(writes);
    }

    /// Cuts the power now: every later operation fails.
    pub fn cut(&self) {
        self.shared.state().cut = true;
    }

    /// Whether the power is off.
    pub fn is_cut(&self) -> bool {
        self.shared.state().cut
    }

    /// The next `n` syncs fail with `SQLITE_IOERR_FSYNC`, and the writes they were to make
    /// durable are forgotten.
    pub fn fail_syncs(&self, n: u32) {
        self.shared.state().failing_syncs = n;
    }

    /// Syncs succeed without making anything durable (a disk whose cache lies).
    pub fn ignore_syncs(&self, ignore: bool) {
        self.shared.state().ignore_syncs = ignore;
    }

    /// Syncs that succeeded since registration.
    pub fn syncs(&self) -> u64 {
        self.shared.state().syncs
    }

    /// Brings the power back: rewrites every file the shim saw as the disk holds it after the
    /// cut (per `loss`, with randomness from `seed`), deletes each database's `-shm`, and
    /// forgets everything, ready for the next power-on. Every connection must be closed.
    pub fn restore(&self, loss: Loss, seed: u64) -> Result<Restored, CrashVfsError> {
        let mut state = self.shared.state();
        if state.open > 0 {
            return Err(CrashVfsError::FilesOpen(state.open));
        }
        state.restore(loss, seed)
    }
}
