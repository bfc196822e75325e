//! The disk model: per file, what is durable and what is only in the cache, and what a power
//! cut leaves of the latter. Plain data; the callbacks in `ffi.rs` feed it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::CrashVfsError;

/// Sector size for torn writes: a write cut by the power keeps a whole number of sectors.
const SECTOR: usize = 512;

/// What a power cut does to the writes made since a file's last sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Every unsynced write is lost.
    All,
    /// Each unsynced write (or truncation) independently reached the disk or not, as a disk
    /// cache that writes back in any order between syncs may leave things.
    Some,
    /// The unsynced writes reached the disk in order up to a random point, and the write at that
    /// point was torn: only its first sectors arrived.
    TornPrefix,
}

/// What [`crate::Disk::restore`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// Files rewritten.
    pub files: usize,
    /// Unsynced writes and truncations that did not survive.
    pub dropped: usize,
    /// Unsynced writes that survived whole.
    pub kept: usize,
    /// Writes that survived in part.
    pub torn: usize,
    /// Unsynced writes to a database file (not its WAL) that did not survive whole: the cut
    /// fell inside a checkpoint.
    pub database_writes_lost: usize,
}

#[derive(Debug, Clone)]
enum Op {
    Write { offset: usize, data: Vec<u8> },
    Truncate(usize),
}

impl Op {
    fn apply(&self, image: &mut Vec<u8>) {
        match self {
            Op::Write { offset, data } => {
                let end = offset + data.len();
                if image.len() < end {
                    image.resize(end, 0);
                }
                image[*offset..end].copy_from_slice(data);
            }
            Op::Truncate(size) => image.truncate(*size),
        }
    }
}

#[derive(Debug, Default)]
struct FileState {
    durable: Vec<u8>,
    pending: Vec<Op>,
    main_db: bool,
}

/// Everything the shim knows, behind one mutex.
#[derive(Debug, Default)]
pub(crate) struct State {
    files: HashMap<PathBuf, FileState>,
    pub cut: bool,
    pub countdown: Option<u64>,
    /// Like `countdown`, counting only writes to database files (in WAL mode: checkpoints).
    pub database_countdown: Option<u64>,
    pub failing_syncs: u32,
    pub ignore_syncs: bool,
    pub syncs: u64,
    /// Files open through the shim (tracked or not).
    pub open: usize,
}

/// What a sync should answer.
pub(crate) enum SyncOutcome {
    Done,
    Failed,
    PowerOff,
}

impl State {
    /// Counts one write, truncate or sync against an armed cut; false when the power is off.
    pub fn tick(&mut self) -> bool {
        if let Some(n) = self.countdown.as_mut() {
            if *n == 0 {
                self.countdown = None;
                self.cut = true;
            } else {
                *n -= 1;
            }
        }
        !self.cut
    }

    /// Counts a write to `path` against a cut armed on database writes; false when the power
    /// is off.
    pub fn tick_write(&mut self, path: Option<&Path>) -> bool {
        if !self.tick() {
            return false;
        }
        let database = path.and_then(|p| self.files.get(p)).is_some_and(|f| f.main_db);
        if let (true, Some(n)) = (database, self.database_countdown.as_mut()) {
            if *n == 0 {
                self.database_countdown = None;
                self.cut = true;
            } else {
                *n -= 1;
            }
        }
        !self.cut
    }

    /// Starts tracking `path` (if not already): what is in it now is durable.
    pub fn track(&mut self, path: &Path, main_db: bool) -> Result<(), std::io::Error> {
        if self.files.contains_key(path) {
            return Ok(());
        }
        let durable = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        self.files.insert(path.to_path_buf(), FileState { durable, pending: Vec::new(), main_db });
        Ok(())
    }

    pub fn wrote(&mut self, path: &Path, offset: usize, data: &[u8]) {
        if let Some(f) = self.files.get_mut(path) {
            f.pending.push(Op::Write { offset, data: data.to_vec() });
        }
    }

    pub fn truncated(&mut self, path: &Path, size: usize) {
        if let Some(f) = self.files.get_mut(path) {
            f.pending.push(Op::Truncate(size));
        }
    }

    pub fn deleted(&mut self, path: &Path) {
        self.files.remove(path);
    }

    pub fn sync(&mut self, path: &Path) -> SyncOutcome {
        if !self.tick() {
            return SyncOutcome::PowerOff;
        }
        let Some(f) = self.files.get_mut(path) else { return SyncOutcome::Done };
        if self.failing_syncs > 0 {
            self.failing_syncs -= 1;
            // Like Linux after a failed fsync: the dirty pages are dropped from the writeback
            // list; they are still read from the cache but will never reach the disk.
            f.pending.clear();
            return SyncOutcome::Failed;
        }
        if self.ignore_syncs {
            return SyncOutcome::Done;
        }
        for op in f.pending.drain(..) {
            op.apply(&mut f.durable);
        }
        self.syncs += 1;
        SyncOutcome::Done
    }

    /// Rewrites every tracked file as the disk holds it after the cut, and powers on again.
    pub fn restore(&mut self, loss: Loss, seed: u64) -> Result<Restored, CrashVfsError> {
        let mut rng = SplitMix(seed);
        let mut report = Restored::default();
        for (path, file) in self.files.drain() {
            let mut image = file.durable;
            let keep_upto = match loss {
                Loss::TornPrefix => rng.below(file.pending.len() + 1),
                _ => 0,
            };
            for (i, op) in file.pending.iter().enumerate() {
                let kept = match loss {
                    Loss::All => false,
                    Loss::Some => rng.below(2) == 1,
                    Loss::TornPrefix => i < keep_upto,
                };
                if kept {
                    op.apply(&mut image);
                    report.kept += 1;
                    continue;
                }
                report.dropped += 1;
                if file.main_db && matches!(op, Op::Write { .. }) {
                    report.database_writes_lost += 1;
                }
                if loss == Loss::TornPrefix && i == keep_upto {
                    if let Op::Write { offset, data } = op {
                        let sectors = data.len().div_ceil(SECTOR);
                        let arrived = rng.below(sectors) * SECTOR;
                        if arrived > 0 {
                            Op::Write { offset: *offset, data: data[..arrived].to_vec() }.apply(&mut image);
                            report.torn += 1;
                        }
                    }
                }
            }
            let io = |source| CrashVfsError::Io { path: path.clone(), source };
            std::fs::write(&path, &image).map_err(io)?;
            if file.main_db {
                let mut shm = path.clone().into_os_string();
                shm.push("-shm");
                match std::fs::remove_file(&shm) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
                    _ => {}
                }
            }
            report.files += 1;
        }
        self.cut = false;
        self.countdown = None;
        self.database_countdown = None;
        self.failing_syncs = 0;
        Ok(report)
    }
}

/// A small seeded generator, so that a run is replayed exactly from its seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_makes_pending_writes_durable_and_a_cut_drops_the_rest() {
        let dir = std::env::temp_dir().join(format!("crash-vfs-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("f");
        std::fs::write(&path, b"").expect("file");
        let mut s = State::default();
        s.track(&path, false).expect("track");
        s.wrote(&path, 0, b"abc");
        assert!(matches!(s.sync(&path), SyncOutcome::Done));
        s.wrote(&path, 3, b"def");
        let r = s.restore(Loss::All, 1).expect("restore");
        assert_eq!((r.kept, r.dropped), (0, 1));
        assert_eq!(std::fs::read(&path).expect("read"), b"abc");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
