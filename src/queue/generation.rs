//! The queue's generation: a counter that tells an older copy of the queue from the queue the
//! agent last ran on. Row seals and sequence numbers cannot: a whole file put back to an older
//! copy of itself is a consistent, correctly sealed older queue (`sequence.rs`). Started on, it
//! would send again what was delivered after the copy was taken.
//!
//! - `generation.value` (schema version 8): one row, sealed with the device key and the queue's
//!   id, raised by one in every write transaction of the owner (the group commit,
//!   `owner/`), so it costs one small UPDATE per batch and no extra fsync.
//! - `queue.generation` next to the database: the generation of the last committed batch,
//!   rewritten in place after each COMMIT without an fsync. Lagging behind the database (a power
//!   cut before the page cache reached the disk) is the safe direction: a marker older than
//!   the database never refuses anything.
//!
//! At start, a database whose generation is below the marker's is refused
//! ([`QueueError::OlderCopy`]); so is one that has run before while the marker is missing
//! ([`QueueError::MarkerMissing`]: it may have been put back without the marker). Only `refund-agent restore` lowers the marker, after marking what the copy could
//! not know as `unknown` (`restore.rs`). Not detectable: the marker put back together with an
//! equally old database (the whole state directory restored by hand).

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension};

use super::error::QueueError;
use super::files;
use super::seal::Sealer;
use super::sequence;

/// The marker's name in the state directory.
pub const MARKER_FILE: &str = "queue.generation";

fn seal_of(sealer: &Sealer, queue_id: &str, value: i64) -> [u8; 32] {
    sealer.seal("generation", &[queue_id.as_bytes(), &value.to_be_bytes()])
}

/// The marker's text: fixed width, so rewriting it in place never changes the file's size and a
/// write the disk did not finish leaves the old number or the new one.
fn marker_text(value: i64) -> String {
    format!("{value:020}\n")
}

/// Reads and verifies the database's generation. `Ok(Err(reason))`: it cannot be trusted.
pub fn load(conn: &Connection, sealer: &Sealer) -> Result<Result<i64, String>, QueueError> {
    let row: Option<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT value, seal FROM generation WHERE id = 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((value, seal)) = row else {
        return Ok(Err("its generation record (table generation) is missing".into()));
    };
    let queue_id = sequence::queue_id(conn)?;
    if !sealer.verify("generation", &[queue_id.as_bytes(), &value.to_be_bytes()], &seal) {
        return Ok(Err("its generation record has a seal that does not verify (it was edited, or \
                       copied from another queue)"
            .into()));
    }
    Ok(Ok(value))
}

/// Writes the database's generation, sealed.
pub fn save(conn: &Connection, sealer: &Sealer, value: i64) -> Result<(), QueueError> {
    let seal = seal_of(sealer, &sequence::queue_id(conn)?, value);
    conn.prepare_cached(
        "INSERT INTO generation (id, value, seal) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET value = excluded.value, seal = excluded.seal",
    )?
    .execute(rusqlite::params![value, seal.to_vec()])?;
    Ok(())
}

/// Schema version 8: generation 0, so that the marker written at the next start agrees.
pub(super) fn adopt(conn: &Connection, sealer: &Sealer) -> Result<(), QueueError> {
    save(conn, sealer, 0)
}

/// What the marker file says: `Ok(None)` when there is none.
pub fn read_marker(path: &Path) -> Result<Option<i64>, QueueError> {
    match fs::read_to_string(path) {
        Ok(text) => text.trim().parse::<i64>().map(Some).map_err(|_| QueueError::Damaged {
            path: path.to_path_buf(),
            message: format!(
                "the generation marker holds {:?}, not a number; if the queue.db beside it is the \
                 newest, bring it in with `refund-agent restore`",
                text.trim()
            ),
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(QueueError::Open { path: path.to_path_buf(), message: e.to_string() }),
    }
}

/// Writes the marker durably (start and restore).
pub fn write_marker(path: &Path, value: i64) -> Result<(), QueueError> {
    files::write_durably(path, &marker_text(value))
}

/// The owner's view of the generation: the committed value and the open marker file.
#[derive(Debug)]
pub struct Generation {
    committed: i64,
    marker: fs::File,
    path: PathBuf,
}

impl Generation {
    /// The start-up check: refuses a database older than the marker (or run before, with its
    /// marker gone), then makes the marker agree with the database, durably.
    pub fn start(
        conn: &Connection,
        sealer: &Sealer,
        state_dir: &Path,
        db: &Path,
    ) -> Result<Generation, QueueError> {
        let path = state_dir.join(MARKER_FILE);
        let found =
            load(conn, sealer)?.map_err(|detail| QueueError::Tampered { path: db.to_path_buf(), detail })?;
        match read_marker(&path)? {
            Some(expected) if found < expected => {
                return Err(QueueError::OlderCopy { path: db.to_path_buf(), found, expected, marker: path });
            }
            None if found > 0 => {
                // A database that ran under this agent has a marker; without it nothing says how
                // old this copy is, so it is treated as the older copy it may be.
                return Err(QueueError::MarkerMissing { path: db.to_path_buf(), found, marker: path });
            }
            Some(expected) if expected == found => {}
            _ => write_marker(&path, found)?,
        }
        let marker = fs::OpenOptions::new()
            .write(true)
            .mode(files::FILE_MODE)
            .open(&path)
            .map_err(|e| QueueError::Open { path: path.clone(), message: e.to_string() })?;
        Ok(Generation { committed: found, marker, path })
    }

    /// Raises the database's generation inside the batch's transaction, before its COMMIT.
    pub fn stage(&self, conn: &Connection, sealer: &Sealer) -> Result<(), QueueError> {
        save(conn, sealer, self.committed + 1)
    }

    /// After the COMMIT of a staged batch: the marker follows the database. A failed write only
    /// leaves the marker behind, the safe direction, so it is logged and not reported to the
    /// batch's callers (their writes are committed).
    pub fn committed(&mut self) {
        self.committed += 1;
        if let Err(e) = self.marker.write_all_at(marker_text(self.committed).as_bytes(), 0) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot update the generation marker; it lags behind the queue");
        }
    }

    /// The generation of the last committed batch.
    #[cfg(test)]
    pub fn value(&self) -> i64 {
        self.committed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(dir: &Path, sealer: &Sealer) -> Connection {
        super::super::schema::open(dir, sealer).expect("queue opens")
    }

    #[test]
    fn an_older_copy_is_refused_and_a_newer_one_moves_the_marker() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let sealer = Sealer::new(vec![3; 32]).expect("a key");
        let db = tmp.path().join("queue.db");
        let conn = queue(tmp.path(), &sealer);
        let mut g = Generation::start(&conn, &sealer, tmp.path(), &db).expect("a fresh queue starts");
        assert_eq!(g.value(), 0);
        assert_eq!(read_marker(&tmp.path().join(MARKER_FILE)).expect("marker"), Some(0));
        for _ in 0..3 {
            g.stage(&conn, &sealer).expect("staged");
            g.committed();
        }
        assert_eq!(read_marker(&tmp.path().join(MARKER_FILE)).expect("marker"), Some(3));
        drop(g);
        assert!(Generation::start(&conn, &sealer, tmp.path(), &db).is_ok(), "the same queue starts");

        save(&conn, &sealer, 1).expect("an older copy's generation");
        let refused = Generation::start(&conn, &sealer, tmp.path(), &db);
        assert!(matches!(refused, Err(QueueError::OlderCopy { found: 1, expected: 3, .. })), "{refused:?}");
        assert!(refused.err().is_some_and(|e| e.to_string().contains("refund-agent restore")));

        fs::remove_file(tmp.path().join(MARKER_FILE)).expect("marker removed");
        assert!(
            matches!(
                Generation::start(&conn, &sealer, tmp.path(), &db),
                Err(QueueError::MarkerMissing { .. })
            ),
            "a queue that ran before, without its marker, is not trusted to be the newest"
        );

        write_marker(&tmp.path().join(MARKER_FILE), 0).expect("marker");
        save(&conn, &sealer, 5).expect("a newer generation");
        let g = Generation::start(&conn, &sealer, tmp.path(), &db).expect("newer than the marker starts");
        assert_eq!(g.value(), 5);
        assert_eq!(read_marker(&tmp.path().join(MARKER_FILE)).expect("marker"), Some(5));

        conn.execute("UPDATE generation SET value = 9", []).expect("edited by hand");
        assert!(matches!(
            Generation::start(&conn, &sealer, tmp.path(), &db),
            Err(QueueError::Tampered { .. })
        ));
    }
}
