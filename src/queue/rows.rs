//! The sealed refund and delivery rows and the only code that reads and writes them (sales:
//! `ledger.rs`). Every write computes the
//! row's seal; every read used for a decision verifies it.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::delivery::{sql_literal, DeliveryState, RefundState, Stored};
use super::error::QueueError;
use super::seal::Sealer;
use crate::refund::ValidRefund;

/// A stored refund. `body` is the JSON of [`ValidRefund`]; the other columns repeat what the
/// queries need and are covered by the same seal.
#[derive(Debug, Clone)]
pub struct RefundRow {
    /// The refund's sequence number, given out by `sequence::advance`; sealed, so that a row
    /// cannot be moved into the place of a deleted one.
    pub seq: i64,
    pub id: String,
    pub receipt_id: Option<String>,
    pub currency: String,
    pub amount: String,
    /// The amount in minor units (cents), so that SQLite can sum amounts exactly.
    pub amount_minor: i64,
    pub state: Stored<RefundState>,
    pub created_at: i64,
    pub updated_at: i64,
    pub body: String,
    /// JSON array of the destinations it has delivery rows for, in position order; sealed, so
    /// that a deleted delivery row is noticed.
    pub destinations: String,
    pub seal: Vec<u8>,
}

/// A stored delivery: one refund at one destination.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub refund_id: String,
    pub position: i64,
    pub destination: String,
    pub state: Stored<DeliveryState>,
    pub attempts: i64,
    pub next_attempt_at: i64,
    /// For multi-request destinations (Final POS: refund, then transaction record): how many
    /// requests have already succeeded, so that a retry never repeats a finished one.
    pub step: i64,
    pub remote_id: Option<String>,
    pub last_error: Option<String>,
    pub updated_at: i64,
    pub seal: Vec<u8>,
}

const REFUND_COLUMNS: &str =
    "seq, id, receipt_id, currency, amount, amount_minor, state, created_at, updated_at, body, destinations, seal";
/// The seal kind of a refund row since schema version 2 (`refund` before it, without the
/// sequence number and destination list): a seal of one version never verifies as the other.
const REFUND_SEAL: &str = "refund/2";
const DELIVERY_COLUMNS: &str = "refund_id, position, destination, state, attempts, next_attempt_at, step, remote_id, last_error, updated_at, seal";

impl RefundRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<RefundRow> {
        Ok(RefundRow {
            seq: r.get(0)?,
            id: r.get(1)?,
            receipt_id: r.get(2)?,
            currency: r.get(3)?,
            amount: r.get(4)?,
            amount_minor: r.get(5)?,
            state: Stored::read(r.get(6)?),
            created_at: r.get(7)?,
            updated_at: r.get(8)?,
            body: r.get(9)?,
            destinations: r.get(10)?,
            seal: r.get(11)?,
        })
    }

    /// The sealed fields, in a fixed order (schema version 2 on).
    fn seal_fields(&self) -> Vec<Vec<u8>> {
        let mut fields = vec![self.seq.to_be_bytes().to_vec()];
        fields.extend(self.seal_fields_v1());
        fields.push(self.destinations.as_bytes().to_vec());
        fields
    }

    /// The fields schema version 1 sealed: read once, at the upgrade to version 2.
    fn seal_fields_v1(&self) -> Vec<Vec<u8>> {
        vec![
            self.id.as_bytes().to_vec(),
            self.receipt_id.as_deref().unwrap_or("").as_bytes().to_vec(),
            self.currency.as_bytes().to_vec(),
            self.amount.as_bytes().to_vec(),
            self.amount_minor.to_be_bytes().to_vec(),
            self.state.as_str().as_bytes().to_vec(),
            self.created_at.to_be_bytes().to_vec(),
            self.updated_at.to_be_bytes().to_vec(),
            self.body.as_bytes().to_vec(),
        ]
    }

    fn compute_seal(&self, sealer: &Sealer) -> [u8; 32] {
        let fields = self.seal_fields();
        let refs: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
        sealer.seal(REFUND_SEAL, &refs)
    }

    /// A schema-version-1 seal, to build an old queue in tests of the upgrade.
    #[cfg(test)]
    pub(super) fn seal_v1(&self, sealer: &Sealer) -> Vec<u8> {
        let fields = self.seal_fields_v1();
        let refs: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
        sealer.seal("refund", &refs).to_vec()
    }

    /// Whether the seal is a valid schema-version-1 seal (before sequence numbers).
    pub(super) fn verifies_v1(&self, sealer: &Sealer) -> bool {
        let fields = self.seal_fields_v1();
        let refs: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
        sealer.verify("refund", &refs, &self.seal)
    }

    /// Checks that `deliveries` (in position order) are exactly the delivery rows the sealed
    /// destination list names: a deleted (or added) delivery row makes the refund untrusted.
    /// Call after [`RefundRow::open`], which vouches for the list.
    pub fn check_deliveries(&self, deliveries: &[DeliveryRow]) -> Result<(), String> {
        let expected: Vec<String> = serde_json::from_str(&self.destinations)
            .map_err(|e| format!("refund {} has an unreadable destination list: {e}", self.id))?;
        let present: Vec<(i64, &str)> =
            deliveries.iter().map(|d| (d.position, d.destination.as_str())).collect();
        let wanted: Vec<(i64, &str)> =
            expected.iter().enumerate().map(|(i, d)| (i as i64, d.as_str())).collect();
        if present == wanted {
            return Ok(());
        }
        let names = |list: &[(i64, &str)]| list.iter().map(|(_, d)| *d).collect::<Vec<_>>().join(", ");
        Err(format!(
            "refund {} should have delivery rows for [{}] but has [{}]: a delivery row was deleted or added outside the agent",
            self.id,
            names(&wanted),
            names(&present)
        ))
    }

    /// Checks the seal and that the indexed columns agree with the sealed body; returns the
    /// refund and its state, or why the row cannot be trusted.
    pub fn open(&self, sealer: &Sealer) -> Result<(ValidRefund, RefundState), String> {
        let fields = self.seal_fields();
        let fields: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
        if !sealer.verify(REFUND_SEAL, &fields, &self.seal) {
            return Err(format!("refund {} has a seal that does not verify", self.id));
        }
        let refund: ValidRefund = serde_json::from_str(&self.body)
            .map_err(|e| format!("refund {} has an unreadable body: {e}", self.id))?;
        let state = self.state.get()?;
        if refund.id.to_string() != self.id
            || refund.currency.format(refund.amount) != self.amount
            || minor_units(&refund) != Some(self.amount_minor)
        {
            return Err(format!("refund {} has columns that disagree with its body", self.id));
        }
        Ok((refund, state))
    }
}

impl DeliveryRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<DeliveryRow> {
        Ok(DeliveryRow {
            refund_id: r.get(0)?,
            position: r.get(1)?,
            destination: r.get(2)?,
            state: Stored::read(r.get(3)?),
            attempts: r.get(4)?,
            next_attempt_at: r.get(5)?,
            step: r.get(6)?,
            remote_id: r.get(7)?,
            last_error: r.get(8)?,
            updated_at: r.get(9)?,
            seal: r.get(10)?,
        })
    }

    /// The sealed fields, in a fixed order. An absent remote id or error is sealed as empty and a
    /// present one with a `+` prefix, so that `None` and `Some("")` seal differently.
    fn seal_fields(&self) -> Vec<Vec<u8>> {
        let optional =
            |v: &Option<String>| v.as_deref().map(|s| format!("+{s}")).unwrap_or_default().into_bytes();
        vec![
            self.refund_id.as_bytes().to_vec(),
            self.position.to_be_bytes().to_vec(),
            self.destination.as_bytes().to_vec(),
            self.state.as_str().as_bytes().to_vec(),
            self.attempts.to_be_bytes().to_vec(),
            self.next_attempt_at.to_be_bytes().to_vec(),
            self.step.to_be_bytes().to_vec(),
            optional(&self.remote_id),
            optional(&self.last_error),
            self.updated_at.to_be_bytes().to_vec(),
        ]
    }

    fn compute_seal(&self, sealer: &Sealer) -> [u8; 32] {
        let fields = self.seal_fields();
        let refs: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
        sealer.seal("delivery", &refs)
    }

    /// Checks the seal and parses the state.
    pub fn open(&self, sealer: &Sealer) -> Result<DeliveryState, String> {
        let fields = self.seal_fields();
        let refs: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
        if !sealer.verify("delivery", &refs, &self.seal) {
            return Err(format!(
                "delivery of refund {} to {} has a seal that does not verify",
                self.refund_id, self.destination
            ));
        }
        self.state.get()
    }

    /// The state, or why the stored text names none (never a default in its place).
    pub fn state(&self) -> Result<DeliveryState, String> {
        self.state.get()
    }
}

/// Stores a new refund under `row.seq`, which the caller took from `sequence::advance` in the
/// same transaction. `row.destinations` must already list the delivery rows the caller writes
/// in that transaction.
pub fn insert_refund(conn: &Connection, sealer: &Sealer, row: &mut RefundRow) -> Result<(), QueueError> {
    row.seal = row.compute_seal(sealer).to_vec();
    conn.prepare_cached(
        "INSERT INTO refunds (seq, id, receipt_id, currency, amount, amount_minor, state, created_at, updated_at, body, destinations, seal)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?.execute(
        params![row.seq, row.id, row.receipt_id, row.currency, row.amount, row.amount_minor, row.state.as_str(), row.created_at, row.updated_at, row.body, row.destinations, row.seal],
    )?;
    Ok(())
}

/// Writes a refund's destination list and, with a sealer, a fresh seal over it (the upgrade to
/// schema version 2; without a sealer the old seal stays and keeps failing).
pub(super) fn set_destinations(
    conn: &Connection,
    row: &mut RefundRow,
    sealer: Option<&Sealer>,
) -> Result<(), QueueError> {
    if let Some(sealer) = sealer {
        row.seal = row.compute_seal(sealer).to_vec();
    }
    conn.prepare_cached("UPDATE refunds SET destinations = ?2, seal = ?3 WHERE seq = ?1")?
        .execute(params![row.seq, row.destinations, row.seal])?;
    Ok(())
}

/// Refunds with a sequence number above `after`, in order, at most `limit`.
pub(super) fn refunds_after(conn: &Connection, after: i64, limit: i64) -> Result<Vec<RefundRow>, QueueError> {
    let sql = format!("SELECT {REFUND_COLUMNS} FROM refunds WHERE seq > ?1 ORDER BY seq LIMIT ?2");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![after, limit], RefundRow::from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Rewrites a refund's state (and seal). The caller has verified the old row.
pub fn set_refund_state(
    conn: &Connection,
    sealer: &Sealer,
    row: &mut RefundRow,
    state: RefundState,
    now: i64,
) -> Result<(), QueueError> {
    // A refund that stops (or starts again) counting leaves (or rejoins) its sale's ledger in
    // this same transaction.
    let was = row.state.get().map(|s| s.counts_against_sale()).unwrap_or(true);
    if was != state.counts_against_sale() {
        let refund: ValidRefund =
            serde_json::from_str(&row.body).map_err(|e| QueueError::Storage(e.to_string()))?;
        super::ledger::apply_refund(conn, sealer, &refund, if state.counts_against_sale() { 1 } else { -1 })?;
    }
    row.state = state.into();
    row.updated_at = now;
    row.seal = row.compute_seal(sealer).to_vec();
    conn.prepare_cached("UPDATE refunds SET state = ?2, updated_at = ?3, seal = ?4 WHERE id = ?1")?
        .execute(params![row.id, row.state.as_str(), row.updated_at, row.seal])?;
    Ok(())
}

pub fn load_refund(conn: &Connection, id: &str) -> Result<Option<RefundRow>, QueueError> {
    let sql = format!("SELECT {REFUND_COLUMNS} FROM refunds WHERE id = ?1");
    Ok(conn.prepare_cached(&sql)?.query_row([id], RefundRow::from_row).optional()?)
}

/// A refund as schema version 1 stored it (no destination list), to build an old queue in
/// tests of the upgrade.
#[cfg(test)]
pub(super) fn load_refund_v1(conn: &Connection, id: &str) -> RefundRow {
    let columns = REFUND_COLUMNS.replace("destinations, ", "'' AS destinations, ");
    let sql = format!("SELECT {columns} FROM refunds WHERE id = ?1");
    conn.query_row(&sql, [id], RefundRow::from_row).expect("refund row")
}

/// Refunds by state (all states when `None`), newest first.
pub fn list_refunds(
    conn: &Connection,
    state: Option<RefundState>,
    limit: i64,
) -> Result<Vec<RefundRow>, QueueError> {
    let sql = format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE (?1 IS NULL OR state = ?1) ORDER BY seq DESC LIMIT ?2"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![state.map(RefundState::as_str), limit], RefundRow::from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn save_delivery(
    conn: &Connection,
    sealer: &Sealer,
    row: &mut DeliveryRow,
    insert: bool,
) -> Result<(), QueueError> {
    row.seal = row.compute_seal(sealer).to_vec();
    let sql = if insert {
        "INSERT INTO deliveries (refund_id, position, destination, state, attempts, next_attempt_at, step, remote_id, last_error, updated_at, seal)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
    } else {
        "UPDATE deliveries SET destination = ?3, state = ?4, attempts = ?5, next_attempt_at = ?6, step = ?7,
         remote_id = ?8, last_error = ?9, updated_at = ?10, seal = ?11 WHERE refund_id = ?1 AND position = ?2"
    };
    let changed = conn.prepare_cached(sql)?.execute(params![
        row.refund_id,
        row.position,
        row.destination,
        row.state.as_str(),
        row.attempts,
        row.next_attempt_at,
        row.step,
        row.remote_id,
        row.last_error,
        row.updated_at,
        row.seal
    ])?;
    if changed != 1 {
        return Err(QueueError::NotFound(format!("delivery {}#{}", row.refund_id, row.position)));
    }
    Ok(())
}

pub fn load_deliveries(conn: &Connection, refund_id: &str) -> Result<Vec<DeliveryRow>, QueueError> {
    let mut stmt = conn.prepare_cached(&load_deliveries_sql())?;
    let rows = stmt.query_map([refund_id], DeliveryRow::from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn load_deliveries_sql() -> String {
    format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE refund_id = ?1 ORDER BY position")
}

/// Deliveries in a given state, oldest refund first.
pub fn deliveries_in_state(conn: &Connection, state: DeliveryState) -> Result<Vec<DeliveryRow>, QueueError> {
    let sql =
        format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE state = ?1 ORDER BY refund_id, position");
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([state.as_str()], DeliveryRow::from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Deliveries that may be sent now: pending, due, their refund queued and not quarantined,
/// every earlier destination of the refund already delivered, and their destination not in
/// `skip` (a JSON array of names the worker holds back). Oldest refunds first: refund ids are
/// UUIDv7, so their order is creation order, and `deliveries_oldest_first` serves it without
/// sorting the whole queue (the unary `+` keeps SQLite from choosing the time index instead,
/// which would sort every due delivery for each claim).
pub fn due_deliveries(
    conn: &Connection,
    now: i64,
    limit: i64,
    skip: &str,
) -> Result<Vec<DeliveryRow>, QueueError> {
    let mut stmt = conn.prepare_cached(&due_deliveries_sql())?;
    let rows = stmt.query_map(params![now, limit, skip], DeliveryRow::from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The statement of [`due_deliveries`]: `?1` now, `?2` the limit, `?3` the destinations skipped.
pub(super) fn due_deliveries_sql() -> String {
    format!(
        "SELECT {} FROM deliveries d JOIN refunds r ON r.id = d.refund_id
         WHERE +d.next_attempt_at <= ?1 AND {}
         ORDER BY d.refund_id, d.position LIMIT ?2",
        DELIVERY_COLUMNS.split(", ").map(|c| format!("d.{c}")).collect::<Vec<_>>().join(", "),
        claimable("?3"),
    )
}

/// What makes a delivery `d` of refund `r` one a claim takes once it is due: pending, its
/// refund queued and not quarantined, every earlier destination of its route delivered, its
/// destination not among `skip` (a JSON array). The claim and the worker's next wake-up
/// (`lifecycle::next_due`) share it: a wake-up for a delivery no claim takes is a busy loop.
pub(super) fn claimable(skip: &str) -> String {
    format!(
        "d.state = {pending} AND r.state = {queued}
           AND d.destination NOT IN (SELECT value FROM json_each({skip}))
           AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.refund_id = d.refund_id)
           AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.refund_id = d.refund_id
                           AND e.position < d.position AND e.state <> {delivered})",
        pending = sql_literal(DeliveryState::Pending),
        queued = sql_literal(RefundState::Queued),
        delivered = sql_literal(DeliveryState::Delivered),
    )
}

pub fn quarantine(conn: &Connection, refund_id: &str, reason: &str, now: i64) -> Result<(), QueueError> {
    conn.prepare_cached("INSERT OR IGNORE INTO quarantine (refund_id, reason, at) VALUES (?1, ?2, ?3)")?
        .execute(params![refund_id, reason, now])?;
    Ok(())
}

pub fn quarantine_reason(conn: &Connection, refund_id: &str) -> Result<Option<String>, QueueError> {
    Ok(conn
        .query_row("SELECT reason FROM quarantine WHERE refund_id = ?1", [refund_id], |r| r.get(0))
        .optional()?)
}

/// A refund's amount in minor units (5.00 USD → 500), or `None` if it does not fit.
pub fn minor_units(refund: &ValidRefund) -> Option<i64> {
    let mut scaled = refund.amount * rust_decimal::Decimal::from(10i64.pow(refund.currency.minor_units()));
    scaled.rescale(0);
    i64::try_from(scaled).ok()
}
