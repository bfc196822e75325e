//! The sales ledger's sealed rows and the only code that reads and writes them. Each sale row
//! also carries what was refunded against it (schema version 3): the amount, tax and discount
//! of every refund that still counts (not cancelled or declined), and per line (1-based) the
//! units, amount, tax and discount those refunds took (`{"2":{"quantity":1,"amount":"5.00",…}}`;
//! `{}` for a sale refunded by amount only, as every row written before itemized refunds). These are updated in the transaction that stores a
//! refund and reversed in the one that releases it, and retention never touches them, so a
//! purge cannot make a sale refundable again.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};
use rust_decimal::Decimal;

use super::delivery::{sql_list, RefundState};
use super::error::QueueError;
use super::seal::Sealer;
use crate::refund::lines::Taken;
use crate::refund::ValidRefund;
use crate::sale::{LineItem, Sale};
use serde::Serialize;

/// What a sale's counting refunds add up to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refunded {
    pub amount: Decimal,
    pub tax: Decimal,
    pub discount: Decimal,
    /// What those refunds took of each line, by 1-based line; only lines they named.
    pub lines: BTreeMap<u32, Taken>,
}

impl Refunded {
    /// Adds (`sign` = 1) or takes away (`sign` = -1) one refund.
    pub fn apply(&mut self, refund: &ValidRefund, sign: i64) {
        let by = Decimal::from(sign);
        self.amount += by * refund.amount;
        self.tax += by * refund.tax.unwrap_or(Decimal::ZERO);
        self.discount += by * refund.discount.unwrap_or(Decimal::ZERO);
        for l in &refund.lines {
            let taken = self.lines.entry(l.priced.line).or_default();
            taken.apply(&l.priced, sign);
            if taken.is_empty() {
                self.lines.remove(&l.priced.line);
            }
        }
    }

    fn lines_json(&self) -> Result<String, QueueError> {
        serde_json::to_string(&self.lines).map_err(|e| QueueError::Storage(e.to_string()))
    }
}

/// A sale with its refunded totals, as stored.
#[derive(Debug, Clone)]
pub struct SaleRecord {
    pub sale: Sale,
    pub refunded: Refunded,
}

const COLUMNS: &str =
    "receipt_id, transaction_id, body, refunded, tax_refunded, discount_refunded, lines, seal";

#[derive(Clone)]
struct RawRow {
    receipt: String,
    txn: String,
    body: String,
    refunded: String,
    tax: String,
    discount: String,
    lines: String,
    seal: Vec<u8>,
}

impl RawRow {
    fn fields(&self) -> [&[u8]; 7] {
        [
            self.receipt.as_bytes(),
            self.txn.as_bytes(),
            self.body.as_bytes(),
            self.refunded.as_bytes(),
            self.tax.as_bytes(),
            self.discount.as_bytes(),
            self.lines.as_bytes(),
        ]
    }

    fn open(self, sealer: &Sealer) -> Result<SaleRecord, QueueError> {
        if !sealer.verify(SALE_KIND, &self.fields(), &self.seal) {
            return Err(QueueError::Conflict(format!(
                "the ledger record of receipt {} has a seal that does not verify; it was altered outside the agent",
                self.receipt
            )));
        }
        let bad = |e: String| QueueError::Storage(format!("ledger record of receipt {}: {e}", self.receipt));
        let dec = |t: &str| t.parse::<Decimal>().map_err(|e| bad(e.to_string()));
        let refunded = Refunded {
            amount: dec(&self.refunded)?,
            tax: dec(&self.tax)?,
            discount: dec(&self.discount)?,
            lines: serde_json::from_str(&self.lines).map_err(|e| bad(e.to_string()))?,
        };
        let sale = serde_json::from_str(&self.body).map_err(|e| bad(e.to_string()))?;
        Ok(SaleRecord { sale, refunded })
    }
}

/// The seal domain of a sale row since schema version 3 (body plus refunded totals).
const SALE_KIND: &str = "sale3";

/// Stores a sale in the ledger with what was already refunded against its receipt, sealed.
pub fn insert_sale(
    conn: &Connection,
    sealer: &Sealer,
    sale: &Sale,
    refunded: &Refunded,
    now: i64,
) -> Result<(), QueueError> {
    let mut row = RawRow {
        receipt: sale.receipt_id.clone(),
        txn: sale.transaction_id.clone(),
        body: serde_json::to_string(sale).map_err(|e| QueueError::Storage(e.to_string()))?,
        refunded: String::new(),
        tax: String::new(),
        discount: String::new(),
        lines: String::new(),
        seal: Vec::new(),
    };
    fill(&mut row, sealer, refunded)?;
    conn.prepare_cached(&format!(
        "INSERT INTO sales (created_at, {COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
    ))?
    .execute(params![
        now,
        row.receipt,
        row.txn,
        row.body,
        row.refunded,
        row.tax,
        row.discount,
        row.lines,
        row.seal
    ])?;
    Ok(())
}

fn fill(row: &mut RawRow, sealer: &Sealer, refunded: &Refunded) -> Result<(), QueueError> {
    row.refunded = refunded.amount.normalize().to_string();
    row.tax = refunded.tax.normalize().to_string();
    row.discount = refunded.discount.normalize().to_string();
    row.lines = refunded.lines_json()?;
    row.seal = sealer.seal(SALE_KIND, &row.fields()).to_vec();
    Ok(())
}

fn save_refunded(
    conn: &Connection,
    sealer: &Sealer,
    mut row: RawRow,
    refunded: &Refunded,
) -> Result<(), QueueError> {
    fill(&mut row, sealer, refunded)?;
    conn.prepare_cached(
        "UPDATE sales SET refunded = ?2, tax_refunded = ?3, discount_refunded = ?4, lines = ?5, seal = ?6
         WHERE receipt_id = ?1",
    )?
    .execute(params![row.receipt, row.refunded, row.tax, row.discount, row.lines, row.seal])?;
    Ok(())
}

fn load_raw(conn: &Connection, column: SaleKey, value: &str) -> Result<Option<RawRow>, QueueError> {
    let column = match column {
        SaleKey::Receipt => "receipt_id",
        SaleKey::Transaction => "transaction_id",
    };
    let sql = format!("SELECT {COLUMNS} FROM sales WHERE {column} = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([value], |r| {
            Ok(RawRow {
                receipt: r.get(0)?,
                txn: r.get(1)?,
                body: r.get(2)?,
                refunded: r.get(3)?,
                tax: r.get(4)?,
                discount: r.get(5)?,
                lines: r.get(6)?,
                seal: r.get(7)?,
            })
        })
        .optional()?)
}

/// Every receipt id in the ledger (a restore carries the sales the current queue lacks).
pub(super) fn receipts(conn: &Connection) -> Result<Vec<String>, QueueError> {
    let mut stmt = conn.prepare("SELECT receipt_id FROM sales ORDER BY receipt_id")?;
    let ids = stmt.query_map([], |r| r.get(0))?;
    Ok(ids.collect::<Result<_, _>>()?)
}

/// Finds a sale by receipt id or transaction id, verifying its seal.
pub fn find_sale(
    conn: &Connection,
    sealer: &Sealer,
    column: SaleKey,
    value: &str,
) -> Result<Option<Sale>, QueueError> {
    Ok(find_record(conn, sealer, column, value)?.map(|r| r.sale))
}

/// Finds a sale with its refunded totals, verifying its seal.
pub fn find_record(
    conn: &Connection,
    sealer: &Sealer,
    column: SaleKey,
    value: &str,
) -> Result<Option<SaleRecord>, QueueError> {
    load_raw(conn, column, value)?.map(|raw| raw.open(sealer)).transpose()
}

/// Adds a refund to (`sign` = 1) or takes it off (`sign` = -1) the ledger of the sale it was
/// made against, in the caller's transaction. A refund with no sale changes nothing; a sale
/// row whose seal fails refuses the change (and with it the caller's transaction).
pub fn apply_refund(
    conn: &Connection,
    sealer: &Sealer,
    refund: &ValidRefund,
    sign: i64,
) -> Result<(), QueueError> {
    let Some(sale) = &refund.sale else {
        return Ok(());
    };
    let Some(raw) = load_raw(conn, SaleKey::Receipt, &sale.receipt_id)? else {
        return Ok(());
    };
    let mut record = raw.clone().open(sealer)?;
    record.refunded.apply(refund, sign);
    save_refunded(conn, sealer, raw, &record.refunded)
}

/// What the refunds present with `receipt_id` that still count add up to (at registration of a
/// sale refunded before it was known, and at the upgrade to schema version 3).
pub fn sum_present(conn: &Connection, receipt_id: &str) -> Result<Refunded, QueueError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT body FROM refunds WHERE receipt_id = ?1 AND state NOT IN {}",
        sql_list(&RefundState::RELEASED)
    ))?;
    let bodies = stmt.query_map([receipt_id], |r| r.get::<_, String>(0))?;
    let mut total = Refunded::default();
    for body in bodies {
        let refund: ValidRefund =
            serde_json::from_str(&body?).map_err(|e| QueueError::Storage(e.to_string()))?;
        total.apply(&refund, 1);
    }
    Ok(total)
}

/// A sale as `GET /v1/receipts/{id}` shows it: its fields, and per line what was sold,
/// refunded (delivered), waiting (in refunds that count but are not delivered yet) and still
/// refundable, with the sale's refundable balance. Amounts are formatted in the currency.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiptView {
    pub receipt_id: String,
    pub transaction_id: String,
    pub order_id: Option<String>,
    pub session_id: Option<String>,
    pub currency: String,
    pub total: String,
    pub subtotal: String,
    pub tax: Option<String>,
    pub discount: Option<String>,
    pub payment_method: Option<String>,
    pub processor: Option<String>,
    pub processor_payment_id: Option<String>,
    pub masked_pan: Option<String>,
    pub captured_at: Option<String>,
    pub items: Vec<ReceiptLine>,
    /// What the refunds that count took, delivered or not.
    pub refunded_amount: String,
    /// The part of that in refunds not delivered yet.
    pub waiting_amount: String,
    pub refundable_balance: String,
}

/// One line of a [`ReceiptView`].
#[derive(Debug, Clone, Serialize)]
pub struct ReceiptLine {
    /// 1-based, the number an itemized refund names.
    pub line: u32,
    #[serde(flatten)]
    pub item: LineItem,
    pub refunded_quantity: u32,
    pub waiting_quantity: u32,
    pub refundable_quantity: u32,
    /// What the line's remaining units refund together.
    pub refundable_amount: String,
}

/// The ledger's view of one receipt, or `None` when the ledger does not have it. The counting
/// totals come from the sealed sale row; which of them are still waiting comes from the refunds
/// present that count and are not delivered (a purged refund was delivered).
pub fn receipt_view(
    conn: &Connection,
    sealer: &Sealer,
    receipt_id: &str,
) -> Result<Option<ReceiptView>, QueueError> {
    let Some(SaleRecord { sale, refunded }) = find_record(conn, sealer, SaleKey::Receipt, receipt_id)? else {
        return Ok(None);
    };
    let waiting_states: Vec<RefundState> = RefundState::ALL
        .into_iter()
        .filter(|s| s.counts_against_sale() && *s != RefundState::Delivered)
        .collect();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT body FROM refunds WHERE receipt_id = ?1 AND state IN {}",
        sql_list(&waiting_states)
    ))?;
    let mut waiting = Refunded::default();
    for body in stmt.query_map([receipt_id], |r| r.get::<_, String>(0))? {
        let refund: ValidRefund =
            serde_json::from_str(&body?).map_err(|e| QueueError::Storage(e.to_string()))?;
        waiting.apply(&refund, 1);
    }
    let c = sale.currency;
    let items = sale
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let line = i as u32 + 1;
            let taken = refunded.lines.get(&line).copied().unwrap_or_default();
            let wait = waiting.lines.get(&line).map_or(0, |t| t.quantity).min(taken.quantity);
            ReceiptLine {
                line,
                item: item.clone(),
                refunded_quantity: taken.quantity - wait,
                waiting_quantity: wait,
                refundable_quantity: item.quantity.saturating_sub(taken.quantity),
                refundable_amount: c.format((item.total - taken.amount).max(Decimal::ZERO)),
            }
        })
        .collect();
    Ok(Some(ReceiptView {
        receipt_id: sale.receipt_id,
        transaction_id: sale.transaction_id,
        order_id: sale.order_id,
        session_id: sale.session_id,
        currency: c.code().to_string(),
        total: c.format(sale.total),
        subtotal: c.format(sale.subtotal),
        tax: sale.tax.map(|t| c.format(t)),
        discount: sale.discount.map(|d| c.format(d)),
        payment_method: sale.payment_method,
        processor: sale.processor,
        processor_payment_id: sale.processor_payment_id,
        masked_pan: sale.card.as_ref().map(|card| card.masked()),
        captured_at: sale.captured_at,
        items,
        refunded_amount: c.format(refunded.amount),
        waiting_amount: c.format(waiting.amount.min(refunded.amount)),
        refundable_balance: c.format((sale.total - refunded.amount).max(Decimal::ZERO)),
    }))
}

/// Schema version 3 on an older queue: each sale gets the totals of its refunds present and a
/// new seal. A row whose old seal does not verify keeps it, so it still fails (resealing would
/// launder an edit).
pub(super) fn adopt(conn: &Connection, sealer: &Sealer) -> Result<(), QueueError> {
    let receipts: Vec<(String, String, String, Vec<u8>)> = conn
        .prepare("SELECT receipt_id, transaction_id, body, seal FROM sales")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    for (receipt, txn, body, seal) in receipts {
        if !sealer.verify("sale", &[receipt.as_bytes(), txn.as_bytes(), body.as_bytes()], &seal) {
            tracing::error!(receipt_id = %receipt, "sale seal does not verify at the upgrade; it stays unverifiable");
            continue;
        }
        let refunded = sum_present(conn, &receipt)?;
        let raw = RawRow {
            receipt,
            txn,
            body,
            refunded: String::new(),
            tax: String::new(),
            discount: String::new(),
            lines: String::new(),
            seal,
        };
        save_refunded(conn, sealer, raw, &refunded)?;
    }
    Ok(())
}

/// Turns the sales table back into what schema version 2 wrote (no totals, old seals), to test
/// the upgrade.
#[cfg(test)]
pub(super) fn downgrade_for_tests(conn: &Connection, sealer: &Sealer) {
    let rows: Vec<(String, String, String)> = conn
        .prepare("SELECT receipt_id, transaction_id, body FROM sales")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect())
        .expect("sales rows");
    for (receipt, txn, body) in rows {
        let seal = sealer.seal("sale", &[receipt.as_bytes(), txn.as_bytes(), body.as_bytes()]);
        conn.execute("UPDATE sales SET seal = ?2 WHERE receipt_id = ?1", params![receipt, seal.to_vec()])
            .expect("old seal");
    }
    conn.execute_batch(
        "ALTER TABLE sales DROP COLUMN refunded; ALTER TABLE sales DROP COLUMN tax_refunded;
         ALTER TABLE sales DROP COLUMN discount_refunded; ALTER TABLE sales DROP COLUMN lines;
         DROP TABLE row_counts; DROP TABLE manager_lockouts; DROP TABLE generation;",
    )
    .expect("drop the version 3 columns");
    super::audit::downgrade_for_tests(conn);
}

/// Which column names a sale.
#[derive(Debug, Clone, Copy)]
pub enum SaleKey {
    Receipt,
    Transaction,
}
