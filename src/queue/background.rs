//! The checks that read the whole file, or a whole table, made after start in a thread of their
//! own so that the time to READY does not grow with the queue: the audit chain's cheap check
//! (its head against the count of its rows, and the newest row; logged at once), `PRAGMA
//! integrity_check` over every page, then the walk of every audit row. Each reads through a
//! read-only connection of its own, so the owner keeps writing meanwhile.
//!
//! A broken audit chain is an alarm, never a stop (`audit/`): the cheap check only says so in
//! the start log, as it did when it ran before READY; status and metrics make it again on
//! every request, and the walk names the first broken row.
//!
//! What decides a send is verified before it is sent whatever this finds (every claimed row's
//! seal, its refund's delivery list), and the start-up checks that stay are flat in the size of
//! the queue (the sealed head against indexed counts, `sequence.rs`). A file that fails the
//! integrity check stops sending: damaged pages may hold rows that would read back wrong, and
//! a person must look (the file is restored from a backup). Refunds are still taken, as they
//! were while the agent ran before the check finished; status, metrics and `doctor` raise the
//! alarm.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::audit::ChainState;
use super::seal::Sealer;
use super::view::FileStatus;

/// How long a background check waits for a lock the owner holds (a checkpoint).
const CHECK_BUSY: Duration = Duration::from_secs(5);

/// What the walk of the audit chain made after start found; `None` until it has finished.
pub(super) type AuditWalk = Arc<Mutex<Option<ChainState>>>;

/// What the integrity check made after start found; read by every claim.
pub(super) type FileIntegrity = Arc<Mutex<FileStatus>>;

/// Whether the integrity check found the file damaged: then nothing is sent.
pub(super) fn damaged(file: &FileIntegrity) -> bool {
    file.lock().unwrap_or_else(|p| p.into_inner()).damaged
}

/// Starts the checks; each records what it found where the handles read it.
pub(super) fn spawn(path: PathBuf, sealer: Sealer, file: FileIntegrity, walk: AuditWalk) {
    let spawned = thread::Builder::new().name("queue-checks".into()).spawn(move || {
        log_audit_check(&path, &sealer);
        check_file(&path, &file);
        walk_audit(&path, &sealer, &walk);
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the queue's background checks; status shows them not made");
    }
}

/// `PRAGMA integrity_check` over the whole file, in one read transaction.
pub(super) fn integrity_lines(path: &Path, busy: Duration) -> rusqlite::Result<Vec<String>> {
    let conn = super::inspect::open_readonly(path, busy)?;
    // Every page is read once: a large cache would only leave the agent's heap bigger after.
    conn.execute_batch("PRAGMA cache_size = -256")?;
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let lines = stmt.query_map([], |r| r.get::<_, String>(0))?.collect();
    lines
}

fn check_file(path: &Path, file: &FileIntegrity) {
    let found = match integrity_lines(path, CHECK_BUSY) {
        Ok(lines) if lines.len() == 1 && lines[0] == "ok" => {
            tracing::info!("queue file verified page by page");
            FileStatus { checked: true, damaged: false, problem: None }
        }
        Ok(lines) => {
            let problem = lines.join("; ");
            tracing::error!(
                %problem,
                "the queue file is damaged; nothing more is sent until it is restored from a backup"
            );
            FileStatus { checked: true, damaged: true, problem: Some(problem) }
        }
        Err(e) => {
            tracing::warn!(error = %e, "the queue file could not be checked; status shows it unverified");
            FileStatus { checked: false, damaged: false, problem: Some(e.to_string()) }
        }
    };
    *file.lock().unwrap_or_else(|p| p.into_inner()) = found;
}

/// The audit chain's cheap check (`audit::log_start_check`), for the start log.
fn log_audit_check(path: &Path, sealer: &Sealer) {
    if let Err(e) = super::inspect::audit_start_check(path, sealer, CHECK_BUSY) {
        tracing::warn!(error = %e, "the audit log's head could not be checked after start; status checks it again");
    }
}

fn walk_audit(path: &Path, sealer: &Sealer, walk: &AuditWalk) {
    let found = super::inspect::walk_audit(path, sealer, CHECK_BUSY);
    match &found {
        Ok(ChainState::Broken { seq, problem }) => tracing::error!(
            first_broken_seq = seq,
            %problem,
            "the audit log was altered outside the agent; refunds are still validated and sent"
        ),
        Ok(ChainState::Intact { rows }) => tracing::info!(rows, "audit log verified row by row"),
        Err(e) => {
            tracing::warn!(error = %e, "the audit log could not be walked; status shows it unverified")
        }
    }
    *walk.lock().unwrap_or_else(|p| p.into_inner()) = found.ok();
}
