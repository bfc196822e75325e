//! Refunds from draft to validated, pure: a [`RefundDraft`] (what a cashier asked for) becomes a
//! [`ValidRefund`] (what the queue stores and the connectors send) only through
//! [`validate::validate`], which applies every rule of SPEC section 5 to facts the queue
//! gathered inside its write transaction.

mod checks;
pub mod draft;
pub mod itemized;
pub mod lines;
pub mod rejection;
pub mod validate;
pub mod velocity;

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::manager::Approval;
use crate::money::Currency;
use crate::sale::Sale;

pub use draft::{LineRequest, RefundDraft, SaleRef};
pub use itemized::{RefundLine, TaxShare};
pub use rejection::{RejectCode, Rejection};
pub use validate::{validate, CurrencyLimits, Facts, Policy};
pub use velocity::DayTotal;

/// A refund's id: a UUIDv7, so ids sort by creation time. It is also the refund's idempotency
/// key at every destination (`externalId`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RefundId(Uuid);

impl RefundId {
    /// A fresh, time-ordered id.
    pub fn new() -> RefundId {
        RefundId(Uuid::now_v7())
    }
}

impl Default for RefundId {
    fn default() -> Self {
        RefundId::new()
    }
}

impl fmt::Display for RefundId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for RefundId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(RefundId)
    }
}

/// A refund that passed validation. This is what the queue seals and stores, and everything a
/// connector puts on the wire is derived from it (and nothing else), so the seal covers it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ValidRefund {
    pub id: RefundId,
    /// Milliseconds since the Unix epoch, UTC.
    pub created_at_ms: i64,
    pub terminal_id: String,
    pub currency: Currency,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub tax: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub discount: Option<Decimal>,
    pub reason: String,
    pub operator: String,
    /// The verified manager approval (which manager, when), if the refund needed or carried
    /// one. Never the PIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// True when no original sale was found and config allowed the refund anyway.
    pub unlinked: bool,
    pub receipt_id: Option<String>,
    pub transaction_id: Option<String>,
    /// A copy of the original sale at the time of the refund, so that what is sent can never
    /// change after the refund was acknowledged.
    pub sale: Option<Sale>,
    /// What remains refundable on the sale after this refund (and all earlier live ones).
    #[serde(with = "rust_decimal::serde::str_option")]
    pub balance_after: Option<Decimal>,
    /// The lines this refund returns, priced when it was validated (SPEC section 5a); empty for
    /// an amount-only refund. Omitted when empty, so bodies sealed before lines existed read
    /// and verify as they were.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<RefundLine>,
}

impl ValidRefund {
    /// The original sale's processor, used to choose destinations (`*` routes catch the rest).
    pub fn processor(&self) -> Option<&str> {
        self.sale.as_ref().and_then(|s| s.processor.as_deref())
    }
}
