//! A read-only look at a queue file, for `refund-agent doctor` running next to a live agent:
//! the file is opened read-only (no write lock, no migration, nothing quarantined), and the
//! checks are the ones the agent makes at its start and in the background after it.

use std::path::Path;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use super::audit::{AuditCheck, ChainState};
use super::error::QueueError;
use super::migrate;
use super::seal::Sealer;
use super::sequence;

/// What [`check_readonly`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub file: FileCheck,
    /// The sequence check; `None` when the file itself did not pass.
    pub rows: Option<RowsCheck>,
    /// The full walk of the audit chain; `None` when the file did not pass, the seal key is
    /// missing or the schema is older than the chain.
    pub audit: Option<AuditCheck>,
}

/// `PRAGMA integrity_check` on the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileCheck {
    /// No file yet: the agent creates it at its first start.
    Missing,
    Intact,
    /// The lines SQLite reported.
    Damaged(Vec<String>),
    /// The file could not be opened or read.
    Unreadable(String),
}

/// The start-up sequence check (`sequence.rs`): no refund deleted behind the agent's back, the
/// head record's seal valid, every refund's delivery rows present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowsCheck {
    /// Without the seal key the head record cannot be verified.
    NoKey,
    Unreadable(String),
    /// An older schema: the agent numbers the refunds at its next start.
    OldSchema(i64),
    /// The head record cannot be trusted; why, in a technician's words.
    Untrusted(String),
    /// Refunds are missing or foreign; the agent will not start on it.
    Refused(String),
    /// Refunds whose delivery rows were deleted or added (the agent quarantines them).
    Short(Vec<String>),
    /// Refunds `1..=head` all present or purged by the agent.
    Sound {
        head: i64,
    },
}

/// Checks the queue file at `path` without writing to it. `busy` bounds the wait for a lock
/// held by a running agent.
pub fn check_readonly(path: &Path, sealer: Option<&Sealer>, busy: Duration) -> Report {
    let file = check_file(path, busy);
    let rows = (file == FileCheck::Intact).then(|| check_rows(path, sealer, busy));
    let chained = rows.as_ref().is_some_and(|r| !matches!(r, RowsCheck::NoKey | RowsCheck::OldSchema(_)));
    let audit = sealer.filter(|_| chained).map(|sealer| match walk_audit(path, sealer, busy) {
        Ok(state) => AuditCheck::Walked(state),
        Err(e) => AuditCheck::Unreadable(e.to_string()),
    });
    Report { file, rows, audit }
}

/// A read-only connection to the queue file, waiting up to `busy` for a lock a writer holds:
/// how `doctor`, the background checks and status read beside the owner. With one plan per
/// statement, as on the owner's connection (`schema::configure`).
pub(super) fn open_readonly(path: &Path, busy: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(conn)
}

/// The audit chain's cheap check, logged (`audit::log_start_check`), in one read transaction.
pub(super) fn audit_start_check(path: &Path, sealer: &Sealer, busy: Duration) -> Result<(), QueueError> {
    let conn = open_readonly(path, busy)?;
    conn.execute_batch("BEGIN")?;
    let logged = super::audit::log_start_check(&conn, sealer);
    let _ = conn.execute_batch("COMMIT");
    logged
}

/// Walks the whole audit chain (`audit::walk`) in one read transaction, so the rows and the
/// head are of the same moment. Used by the agent after its start and by `doctor`.
pub(super) fn walk_audit(path: &Path, sealer: &Sealer, busy: Duration) -> Result<ChainState, QueueError> {
    let conn = open_readonly(path, busy)?;
    conn.execute_batch("BEGIN")?;
    let found = super::audit::walk(&conn, sealer);
    let _ = conn.execute_batch("COMMIT");
    found
}

fn check_file(path: &Path, busy: Duration) -> FileCheck {
    if !path.exists() {
        return FileCheck::Missing;
    }
    match super::background::integrity_lines(path, busy) {
        Ok(lines) if lines.len() == 1 && lines[0] == "ok" => FileCheck::Intact,
        Ok(lines) => FileCheck::Damaged(lines),
        Err(e) => FileCheck::Unreadable(e.to_string()),
    }
}

fn check_rows(path: &Path, sealer: Option<&Sealer>, busy: Duration) -> RowsCheck {
    let Some(sealer) = sealer else {
        return RowsCheck::NoKey;
    };
    let conn = match open_readonly(path, busy) {
        Ok(c) => c,
        Err(e) => return RowsCheck::Unreadable(e.to_string()),
    };
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap_or(0);
    if version < migrate::VERSION {
        return RowsCheck::OldSchema(version);
    }
    // Sales and creation keys deleted behind the agent's back refuse the start like refunds do.
    match super::counts::check_all(&conn, sealer) {
        Err(e) => return RowsCheck::Unreadable(e.to_string()),
        Ok(Err(detail)) => return RowsCheck::Refused(detail),
        Ok(Ok(())) => {}
    }
    match sequence::check(&conn, sealer) {
        Err(e) => RowsCheck::Unreadable(e.to_string()),
        Ok(Err(reason)) => RowsCheck::Untrusted(reason),
        Ok(Ok(f)) if f.refuses() => RowsCheck::Refused(f.describe()),
        Ok(Ok(f)) if !f.short.is_empty() => {
            RowsCheck::Short(f.short.into_iter().map(|s| s.refund_id).collect())
        }
        Ok(Ok(f)) => RowsCheck::Sound { head: f.head },
    }
}
