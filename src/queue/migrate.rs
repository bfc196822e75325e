//! The schema's migrations, applied in order at start, one transaction each; the version is
//! `PRAGMA user_version`. Beside them the Rust work that completes one: the upgrade to version
//! 2 numbers the refunds a version-1 queue holds (`adopt`).

use rusqlite::{Connection, OptionalExtension};

use super::delivery::{sql_list, RefundState};
use super::error::QueueError;
use super::rows::{self, RefundRow};
use super::schema;
use super::seal::Sealer;
use super::sequence::{self, Head, Ranges};

/// Schema versions, applied in order inside one transaction each. Never edit a released entry:
/// add a new one. `{open}` stands for the SQL list of [`RefundState::OPEN`] (see [`sql`]).
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
     CREATE TABLE sales (
        receipt_id TEXT PRIMARY KEY,
        transaction_id TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        body TEXT NOT NULL,
        seal BLOB NOT NULL) STRICT;
     CREATE TABLE refunds (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        receipt_id TEXT,
        currency TEXT NOT NULL,
        amount TEXT NOT NULL,
        amount_minor INTEGER NOT NULL,
        state TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        body TEXT NOT NULL,
        seal BLOB NOT NULL) STRICT;
     CREATE INDEX refunds_by_receipt ON refunds(receipt_id, state, amount_minor);
     CREATE INDEX refunds_by_state ON refunds(state, seq);
     CREATE INDEX refunds_open_totals ON refunds(state, currency, amount_minor);
     CREATE TABLE open_totals (
        currency TEXT PRIMARY KEY,
        amount_minor INTEGER NOT NULL,
        count INTEGER NOT NULL) STRICT;
     CREATE TRIGGER open_totals_insert AFTER INSERT ON refunds
        WHEN NEW.state IN {open} BEGIN
        INSERT INTO open_totals (currency, amount_minor, count) VALUES (NEW.currency, NEW.amount_minor, 1)
            ON CONFLICT (currency) DO UPDATE SET amount_minor = amount_minor + excluded.amount_minor, count = count + 1;
     END;
     CREATE TRIGGER open_totals_delete AFTER DELETE ON refunds
        WHEN OLD.state IN {open} BEGIN
        UPDATE open_totals SET amount_minor = amount_minor - OLD.amount_minor, count = count - 1
            WHERE currency = OLD.currency;
     END;
     CREATE TRIGGER open_totals_update AFTER UPDATE OF state, currency, amount_minor ON refunds BEGIN
        UPDATE open_totals SET amount_minor = amount_minor - OLD.amount_minor, count = count - 1
            WHERE currency = OLD.currency AND OLD.state IN {open};
        INSERT INTO open_totals (currency, amount_minor, count)
            SELECT NEW.currency, NEW.amount_minor, 1 WHERE NEW.state IN {open}
            ON CONFLICT (currency) DO UPDATE SET amount_minor = amount_minor + excluded.amount_minor, count = count + 1;
     END;
     CREATE TABLE deliveries (
        refund_id TEXT NOT NULL REFERENCES refunds(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        destination TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_at INTEGER NOT NULL,
        step INTEGER NOT NULL,
        remote_id TEXT,
        last_error TEXT,
        updated_at INTEGER NOT NULL,
        seal BLOB NOT NULL,
        PRIMARY KEY (refund_id, position)) STRICT;
     CREATE INDEX deliveries_due ON deliveries(state, next_attempt_at);
     CREATE INDEX deliveries_oldest_first ON deliveries(state, refund_id, position);
     CREATE TABLE idempotency_keys (
        key TEXT PRIMARY KEY,
        fingerprint BLOB NOT NULL,
        refund_id TEXT NOT NULL REFERENCES refunds(id) ON DELETE CASCADE,
        created_at INTEGER NOT NULL) STRICT;
     CREATE INDEX idempotency_by_refund ON idempotency_keys(refund_id);
     CREATE TABLE quarantine (
        refund_id TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        at INTEGER NOT NULL) STRICT;
     CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        refund_id TEXT,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL) STRICT;",
    // 2: sequence numbers that make a deleted row detectable (`sequence.rs`); followed by
    // `adopt`, in the same transaction, which numbers and reseals existing rows.
    "ALTER TABLE refunds ADD COLUMN destinations TEXT NOT NULL DEFAULT '[]';
     CREATE TABLE refund_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL,
        deliveries INTEGER NOT NULL,
        purged TEXT NOT NULL,
        seal BLOB NOT NULL) STRICT;",
    // 3: each sale row carries what its counting refunds add up to (`ledger.rs`), so a purge
    // never makes a sale refundable again; followed by `ledger::adopt`, which totals and reseals
    // the sales present.
    "ALTER TABLE sales ADD COLUMN refunded TEXT NOT NULL DEFAULT '0';
     ALTER TABLE sales ADD COLUMN tax_refunded TEXT NOT NULL DEFAULT '0';
     ALTER TABLE sales ADD COLUMN discount_refunded TEXT NOT NULL DEFAULT '0';
     ALTER TABLE sales ADD COLUMN lines TEXT NOT NULL DEFAULT '{}';",
    // 4: creation keys sealed and kept when their refund is purged (`keys.rs`): the table is
    // rebuilt without the cascade from `refunds`; followed by `keys::adopt`, which seals the
    // keys present.
    "CREATE TABLE idempotency_keys_v4 (
        key TEXT PRIMARY KEY,
        fingerprint BLOB NOT NULL,
        refund_id TEXT NOT NULL,
        amount TEXT NOT NULL,
        currency TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        seal BLOB NOT NULL) STRICT;
     INSERT INTO idempotency_keys_v4 (key, fingerprint, refund_id, amount, currency, created_at, seal)
        SELECT k.key, k.fingerprint, k.refund_id, COALESCE(r.amount, ''), COALESCE(r.currency, ''), k.created_at, x''
        FROM idempotency_keys k LEFT JOIN refunds r ON r.id = k.refund_id;
     DROP TABLE idempotency_keys;
     ALTER TABLE idempotency_keys_v4 RENAME TO idempotency_keys;
     CREATE INDEX idempotency_by_refund ON idempotency_keys(refund_id);",
    // 5: sealed counts of the sales and creation keys (`counts.rs`), so a deleted row is
    // noticed; followed by `counts::adopt`, which counts the rows present.
    "CREATE TABLE row_counts (
        name TEXT PRIMARY KEY,
        count INTEGER NOT NULL,
        seal BLOB NOT NULL) STRICT;",
    // 6: manager lock-outs (`lockouts.rs`), one sealed row per manager, counted in `row_counts`;
    // followed by `adopt_lockouts`, which writes the table's count (zero).
    "CREATE TABLE manager_lockouts (
        manager TEXT PRIMARY KEY,
        failures INTEGER NOT NULL,
        locked_until INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        seal BLOB NOT NULL) STRICT;",
    // 7: the audit log chained and sealed, with the caller of each decision (`audit/`);
    // followed by `audit::adopt`, which numbers, chains and seals the rows present.
    "ALTER TABLE audit ADD COLUMN caller TEXT;
     ALTER TABLE audit ADD COLUMN seal BLOB NOT NULL DEFAULT x'';
     CREATE INDEX audit_by_refund ON audit(refund_id, seq);
     CREATE TABLE audit_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL,
        last_seal BLOB NOT NULL,
        seal BLOB NOT NULL) STRICT;",
    // 8: the queue's generation (`generation.rs`), raised by every write batch, so an older
    // copy of the file put back by hand is refused; followed by `generation::adopt`.
    "CREATE TABLE generation (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        value INTEGER NOT NULL,
        seal BLOB NOT NULL) STRICT;",
    // 9: the velocity limits count a currency's refunds of the last day inside the storing
    // transaction (`intake::day_totals`); this keeps that a range read. `IF NOT EXISTS`, as
    // tests set a newer file back to an older version number to test the upgrades.
    "CREATE INDEX IF NOT EXISTS refunds_by_day ON refunds(currency, created_at);",
];

/// The schema version that chains the audit log (`audit/`).
pub(super) const AUDIT_CHAIN: i64 = 7;

/// Work in Rust that completes a migration, inside its transaction: `(version, step)`.
type Step = fn(&Connection, &Sealer) -> Result<(), QueueError>;
const STEPS: &[(i64, Step)] = &[
    (2, adopt_sequence),
    (3, adopt_ledger),
    (4, adopt_keys),
    (5, adopt_counts),
    (6, adopt_lockouts),
    (AUDIT_CHAIN, adopt_audit),
    (8, adopt_generation),
];

/// Before rows are resealed, make sure they are resealed under the key they were sealed with.
fn adopt_sequence(conn: &Connection, sealer: &Sealer) -> Result<(), QueueError> {
    schema::check_key(conn, sealer)?;
    adopt(conn, sealer)
}

/// The sales are resealed under the key they were sealed with, like the refunds at version 2.
fn adopt_ledger(conn: &Connection, sealer: &Sealer) -> Result<(), QueueError> {
    schema::check_key(conn, sealer)?;
    super::ledger::adopt(conn, sealer)
}

/// Keys are sealed under the key the queue was sealed with.
fn adopt_keys(conn: &Connection, sealer: &Sealer) -> Result<(), QueueError> {
    schema::check_key(conn, sealer)?;
    super::keys::adopt(conn, sealer)
}

fn adopt_counts(conn: &Connection, sealer: &Sealer) -> Result<(), QueueError> {
    super::counts::adopt(conn, sealer, &["sales", "idempotency_keys"])
}

fn adopt_lockouts(conn: &Connection, sealer: &Sealer) -> Result<(), QueueError> {
    super::counts::adopt(conn, sealer, &["manager_lockouts"])
}

/// The audit rows are chained under the key the queue was sealed with.
fn adopt_audit(conn: &Connection, sealer: &Sealer) -> Result<(), QueueError> {
    schema::check_key(conn, sealer)?;
    super::audit::adopt(conn, sealer)
}

fn adopt_generation(conn: &Connection, sealer: &Sealer) -> Result<(), QueueError> {
    super::generation::adopt(conn, sealer)
}

/// A migration's SQL with its sets of states filled in from the enums that define them.
fn sql(migration: &str) -> String {
    migration.replace("{open}", &sql_list(&RefundState::OPEN))
}

/// The schema version this agent writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

pub(super) fn migrate(conn: &Connection, sealer: &Sealer) -> Result<(), QueueError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(QueueError::TooNew { found: version, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let next = i as i64 + 1;
        let step = STEPS.iter().find(|(v, _)| *v == next).map(|(_, f)| *f);
        let sql = self::sql(sql);
        let applied = (|| {
            conn.execute_batch(&format!("BEGIN IMMEDIATE; {sql};"))?;
            if let Some(step) = step {
                step(conn, sealer)?;
            }
            conn.execute_batch(&format!("PRAGMA user_version = {next}; COMMIT;"))?;
            Ok::<(), QueueError>(())
        })();
        if let Err(e) = applied {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    Ok(())
}

/// Schema version 2 on a queue written by version 1: numbers the refunds present (they keep
/// their insertion-order `seq`), records each one's destinations from its delivery rows,
/// reseals them, and writes the head; the gaps below the highest number ever given out are
/// recorded as purged. This trusts the rows present at the upgrade: what was deleted before it
/// cannot be told apart from what retention purged. A row whose old seal does not verify keeps
/// it, so it still fails and is quarantined (resealing would launder it).
fn adopt(conn: &Connection, sealer: &Sealer) -> Result<(), QueueError> {
    sequence::queue_id(conn)?;
    let mut last = 0i64;
    let mut gaps = Vec::new();
    loop {
        let batch = rows::refunds_after(conn, last, 1000)?;
        if batch.is_empty() {
            break;
        }
        for mut row in batch {
            gaps.extend(last + 1..row.seq);
            last = row.seq;
            let names: Vec<String> =
                rows::load_deliveries(conn, &row.id)?.into_iter().map(|d| d.destination).collect();
            row.destinations =
                serde_json::to_string(&names).map_err(|e| QueueError::Storage(e.to_string()))?;
            adopt_row(conn, sealer, &mut row)?;
        }
    }
    let issued: Option<i64> = conn
        .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'refunds'", [], |r| r.get(0))
        .optional()?;
    let head_seq = issued.unwrap_or(0).max(last);
    gaps.extend(last + 1..=head_seq);
    let deliveries: i64 = conn.query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0))?;
    sequence::save(conn, sealer, &Head { seq: head_seq, deliveries, purged: Ranges::from_seqs(gaps) })
}

fn adopt_row(conn: &Connection, sealer: &Sealer, row: &mut RefundRow) -> Result<(), QueueError> {
    if !row.verifies_v1(sealer) {
        tracing::error!(refund_id = %row.id, "refund seal does not verify at the upgrade; it stays unverifiable and will be quarantined");
        return rows::set_destinations(conn, row, None);
    }
    rows::set_destinations(conn, row, Some(sealer))
}
