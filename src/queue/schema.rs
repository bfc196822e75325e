//! Opening the queue database: pragmas, the seal-key check and the start-up checks, which read
//! single sealed records, ranges and bare `COUNT(*)`s and never a row of a queue-sized table
//! (what has to read rows runs after start, `background.rs`, or before its first use,
//! `totals.rs`); the migrations are in `migrate.rs`.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use super::error::QueueError;
use super::files;
use super::migrate;
use super::seal::Sealer;
use super::sequence;

/// The database file's name inside the state directory.
pub const DB_FILE: &str = "queue.db";

/// Opens (creating if needed) the queue in `state_dir`, refusing to start on a file that is no
/// database or on a database sealed with another key.
#[cfg(test)]
pub fn open(state_dir: &Path, sealer: &Sealer) -> Result<Connection, QueueError> {
    open_on(state_dir, sealer, None)
}

/// [`open`] through the SQLite VFS named `vfs` (the platform's default when `None`): the
/// power-loss test opens the queue on a VFS that simulates a power cut.
pub fn open_on(state_dir: &Path, sealer: &Sealer, vfs: Option<&str>) -> Result<Connection, QueueError> {
    files::private_dir(state_dir)?;
    let path = state_dir.join(DB_FILE);
    files::precreate(&path)?;
    files::fix_modes(state_dir)?;
    let flags =
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match vfs {
        None => Connection::open_with_flags(&path, flags),
        Some(vfs) => Connection::open_with_flags_and_vfs(&path, flags, vfs),
    }
    .map_err(|e| QueueError::Open { path: path.clone(), message: e.to_string() })?;
    configure(&conn, &path)?;
    // SQLite gives its `-wal` and `-shm` the database's mode; this catches any it made before.
    files::fix_modes(state_dir)?;
    // No `PRAGMA integrity_check` here: it reads every page, so the start would grow with the
    // queue. It runs after start in the background (`background.rs`), and what decides a send
    // is verified row by row before it is sent.
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let marker = state_dir.join(MARKER_FILE);
    if version == 0 && marker.exists() {
        return Err(QueueError::Damaged {
            path,
            message: format!(
                "it is empty or missing, but {} says this state directory held a queue; refusing to \
                 start empty (if starting over is really intended, move {} aside too)",
                marker.display(),
                MARKER_FILE
            ),
        });
    }
    migrate::migrate(&conn, sealer)?;
    check_key(&conn, sealer)?;
    check_identity(&conn, &marker, &path)?;
    check_sequence(&conn, sealer, &path)?;
    super::counts::check_all(&conn, sealer)?
        .map_err(|detail| QueueError::Tampered { path: path.clone(), detail })?;
    // A broken audit chain is logged, not refused (see `audit/` for why); its start-up check
    // counts every audit row, so it is made right after start, off the start-up path, by the
    // background checks (`background.rs`).
    // `open_totals` is derived data, compared with the refunds before its first use on this
    // connection rather than here, where it would read every open refund (`totals.rs`).
    Ok(conn)
}

/// Refuses a queue with refunds deleted behind the agent's back (or a head that cannot be
/// trusted); quarantines refunds that lost a delivery row, which are then never sent.
fn check_sequence(conn: &Connection, sealer: &Sealer, path: &Path) -> Result<(), QueueError> {
    let tampered = |detail: String| QueueError::Tampered { path: path.to_path_buf(), detail };
    let findings = sequence::check(conn, sealer)?.map_err(tampered)?;
    if findings.refuses() {
        return Err(tampered(findings.describe()));
    }
    if findings.short.is_empty() {
        return Ok(());
    }
    let now = crate::clock::now_ms();
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let quarantined = findings.short.iter().try_for_each(|s| {
        let reason = format!(
            "refund {} should have {} delivery row(s) but has {}: a delivery row was deleted or added outside the agent",
            s.refund_id, s.expected, s.present
        );
        tracing::error!(refund_id = %s.refund_id, %reason, "quarantining a refund whose delivery rows were changed; it will not be sent");
        super::rows::quarantine(conn, &s.refund_id, &reason, now)
    });
    match quarantined {
        Ok(()) => conn.execute_batch("COMMIT")?,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    Ok(())
}

/// Next to the database, a file holding the database's random id. A queue that vanished
/// (deleted, truncated to nothing) or was swapped for another would otherwise be indistinguishable
/// from a fresh install, and the agent would start empty: acknowledged refunds silently lost.
pub const MARKER_FILE: &str = "queue.id";

fn check_identity(conn: &Connection, marker: &Path, path: &Path) -> Result<(), QueueError> {
    let id = sequence::queue_id(conn)?;
    match fs::read_to_string(marker) {
        Ok(text) if text.trim() == id => Ok(()),
        Ok(text) => Err(QueueError::Damaged {
            path: path.to_path_buf(),
            message: format!(
                "it is not the queue this state directory held ({} names queue {}, the file is queue {id}); \
                 put the right queue.db back",
                marker.display(),
                text.trim()
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_marker(marker, &id),
        Err(e) => Err(QueueError::Open { path: marker.to_path_buf(), message: e.to_string() }),
    }
}

/// Writes the marker durably: file, then directory entry.
fn write_marker(marker: &Path, id: &str) -> Result<(), QueueError> {
    let err = |e: std::io::Error| QueueError::Open { path: marker.to_path_buf(), message: e.to_string() };
    let tmp = marker.with_extension("id.tmp");
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(files::FILE_MODE)
            .open(&tmp)
            .map_err(err)?;
        std::io::Write::write_all(&mut f, format!("{id}\n").as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    fs::rename(&tmp, marker).map_err(err)?;
    if let Some(dir) = marker.parent() {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    }
    Ok(())
}

/// WAL + `synchronous=FULL`: every COMMIT is on disk before it returns, so an acknowledged
/// refund survives a power cut. Foreign keys keep deliveries tied to their refund.
fn configure(conn: &Connection, path: &Path) -> Result<(), QueueError> {
    let damaged =
        |e: rusqlite::Error| QueueError::Damaged { path: path.to_path_buf(), message: e.to_string() };
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(damaged)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(QueueError::Open {
            path: path.to_path_buf(),
            message: format!("journal mode is {mode}, not WAL"),
        });
    }
    conn.execute_batch(
        "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000; PRAGMA trusted_schema=OFF;",
    )
    .map_err(damaged)?;
    // One plan per statement, whatever its bound values. Without this, SQLite marks a
    // statement with `LIMIT ?` or `key = ?` to be compiled again when that value changes, and
    // the statement cache clears every binding when a statement is given back, so each reuse
    // of such a statement was parsed and planned anew (the claim of due deliveries: about a
    // fifth of the owner's time while a queue drained). No plan here needs a bound value: no
    // statistics are kept (no `ANALYZE`), no `LIKE`, no partial index.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map_err(damaged)?;
    Ok(())
}

pub(super) fn check_key(conn: &Connection, sealer: &Sealer) -> Result<(), QueueError> {
    let check = sealer.key_check();
    let stored: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'seal_key_check'", [], |r| r.get(0))
        .map(Some)
        .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })?;
    match stored {
        None => {
            conn.execute("INSERT INTO meta (key, value) VALUES ('seal_key_check', ?1)", [&check])?;
            Ok(())
        }
        Some(stored) if stored == check => Ok(()),
        Some(_) => Err(QueueError::KeyMismatch),
    }
}
