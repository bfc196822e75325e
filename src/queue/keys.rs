//! Creation keys (the control API's `Idempotency-Key`, the terminal's `terminal:{request_id}`)
//! and the only code that reads and writes them. Since schema version 4 each row is sealed
//! over the key, the request's fingerprint, the refund id and the refund's amount and
//! currency, and it outlives its refund: retention purges the refund but keeps the key, so a
//! repeat of an old request still names the old refund and never makes a new one.

use rusqlite::{params, Connection, OptionalExtension};

use super::error::QueueError;
use super::seal::Sealer;

/// A stored creation key.
#[derive(Debug, Clone)]
pub struct KeyRow {
    pub key: String,
    pub fingerprint: Vec<u8>,
    pub refund_id: String,
    pub amount: String,
    pub currency: String,
    pub seal: Vec<u8>,
}

impl KeyRow {
    fn fields(&self) -> [&[u8]; 5] {
        [
            self.key.as_bytes(),
            &self.fingerprint,
            self.refund_id.as_bytes(),
            self.amount.as_bytes(),
            self.currency.as_bytes(),
        ]
    }

    fn compute_seal(&self, sealer: &Sealer) -> [u8; 32] {
        sealer.seal(KIND, &self.fields())
    }
}

const KIND: &str = "idempotency_key";

/// Stores a key, sealed, in the transaction that stores its refund.
pub fn insert(conn: &Connection, sealer: &Sealer, row: &mut KeyRow, now: i64) -> Result<(), QueueError> {
    row.seal = row.compute_seal(sealer).to_vec();
    conn.prepare_cached(
        "INSERT INTO idempotency_keys (key, fingerprint, refund_id, amount, currency, created_at, seal)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        row.key,
        row.fingerprint,
        row.refund_id,
        row.amount,
        row.currency,
        now,
        row.seal
    ])?;
    Ok(())
}

/// Finds a key. A row whose seal fails refuses the request: an edited key must neither point
/// a repeat at another refund nor let it make a new one.
pub fn find(conn: &Connection, sealer: &Sealer, key: &str) -> Result<Option<KeyRow>, QueueError> {
    let Some(row) = load(conn, key)? else {
        return Ok(None);
    };
    if !sealer.verify(KIND, &row.fields(), &row.seal) {
        return Err(QueueError::Conflict(format!(
            "the stored idempotency key {key:?} has a seal that does not verify; it was altered outside the \
             agent, so the request is refused rather than risk a second refund"
        )));
    }
    Ok(Some(row))
}

fn load(conn: &Connection, key: &str) -> Result<Option<KeyRow>, QueueError> {
    Ok(conn
        .prepare_cached(
            "SELECT key, fingerprint, refund_id, amount, currency, seal FROM idempotency_keys WHERE key = ?1",
        )?
        .query_row([key], |r| {
            Ok(KeyRow {
                key: r.get(0)?,
                fingerprint: r.get(1)?,
                refund_id: r.get(2)?,
                amount: r.get(3)?,
                currency: r.get(4)?,
                seal: r.get(5)?,
            })
        })
        .optional()?)
}

/// Whether a key names the refund `refund_id` (it outlives a purged refund).
pub(super) fn names_refund(conn: &Connection, refund_id: &str) -> Result<bool, QueueError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM idempotency_keys WHERE refund_id = ?1 LIMIT 1")?
        .query_row([refund_id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Every key stored (a restore carries the ones the current queue lacks).
pub(super) fn all(conn: &Connection) -> Result<Vec<String>, QueueError> {
    let mut stmt = conn.prepare("SELECT key FROM idempotency_keys ORDER BY key")?;
    let keys = stmt.query_map([], |r| r.get(0))?;
    Ok(keys.collect::<Result<_, _>>()?)
}

/// Schema version 4 on an older queue: seals the keys present (trusting them, as the upgrade
/// to version 2 trusts the refunds present).
pub(super) fn adopt(conn: &Connection, sealer: &Sealer) -> Result<(), QueueError> {
    let keys: Vec<String> = conn
        .prepare("SELECT key FROM idempotency_keys")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for key in keys {
        let Some(mut row) = load(conn, &key)? else {
            continue;
        };
        row.seal = row.compute_seal(sealer).to_vec();
        conn.prepare_cached("UPDATE idempotency_keys SET seal = ?2 WHERE key = ?1")?
            .execute(params![row.key, row.seal])?;
    }
    Ok(())
}
