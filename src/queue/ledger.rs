//! The sales ledger's sealed rows and the only code that reads and writes them.

use rusqlite::{params, Connection, OptionalExtension};

use super::error::QueueError;
use super::seal::Sealer;
use crate::sale::Sale;

/// Stores a sale in the ledger, sealed.
pub fn insert_sale(conn: &Connection, sealer: &Sealer, sale: &Sale, now: i64) -> Result<(), QueueError> {
    let body = serde_json::to_string(sale).map_err(|e| QueueError::Storage(e.to_string()))?;
    let seal = sale_seal(sealer, &sale.receipt_id, &sale.transaction_id, &body);
    conn.prepare_cached(
        "INSERT INTO sales (receipt_id, transaction_id, created_at, body, seal) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![sale.receipt_id, sale.transaction_id, now, body, seal.to_vec()])?;
    Ok(())
}

fn sale_seal(sealer: &Sealer, receipt: &str, txn: &str, body: &str) -> [u8; 32] {
    sealer.seal("sale", &[receipt.as_bytes(), txn.as_bytes(), body.as_bytes()])
}

/// Finds a sale by receipt id or transaction id, verifying its seal.
pub fn find_sale(
    conn: &Connection,
    sealer: &Sealer,
    column: SaleKey,
    value: &str,
) -> Result<Option<Sale>, QueueError> {
    let sql = match column {
        SaleKey::Receipt => "SELECT receipt_id, transaction_id, body, seal FROM sales WHERE receipt_id = ?1",
        SaleKey::Transaction => {
            "SELECT receipt_id, transaction_id, body, seal FROM sales WHERE transaction_id = ?1"
        }
    };
    let found: Option<(String, String, String, Vec<u8>)> = conn
        .prepare_cached(sql)?
        .query_row([value], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    let Some((receipt, txn, body, seal)) = found else {
        return Ok(None);
    };
    if !sealer.verify("sale", &[receipt.as_bytes(), txn.as_bytes(), body.as_bytes()], &seal) {
        return Err(QueueError::Conflict(format!(
            "the ledger record of receipt {receipt} has a seal that does not verify; it was altered outside the agent"
        )));
    }
    serde_json::from_str(&body).map(Some).map_err(|e| QueueError::Storage(e.to_string()))
}

/// Which column names a sale.
#[derive(Debug, Clone, Copy)]
pub enum SaleKey {
    Receipt,
    Transaction,
}
