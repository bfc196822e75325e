//! What the queue shows of refunds: the shapes returned by the control API and printed by the
//! CLI. Plain data, serialisable both ways.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::delivery::RefundState;

/// A refund with its deliveries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RefundView {
    pub id: String,
    pub state: ViewState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine_reason: Option<String>,
    pub amount: String,
    pub currency: String,
    pub receipt_id: Option<String>,
    pub transaction_id: Option<String>,
    pub reason: String,
    pub operator: String,
    /// Which manager approved the refund and when (verified; never the PIN).
    #[serde(default)]
    pub manager_approval: Option<ApprovalView>,
    pub unlinked: bool,
    pub created_at: String,
    pub balance_after: Option<String>,
    pub deliveries: Vec<DeliveryView>,
    /// The refund's audit rows, oldest first: only when one refund is shown (not in lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<Vec<AuditView>>,
}

impl RefundView {
    /// What is still known of a refund retention purged: its id, amount and currency.
    pub fn purged(id: String, amount: String, currency: String) -> RefundView {
        RefundView {
            id,
            state: ViewState::Purged,
            quarantine_reason: None,
            amount,
            currency,
            receipt_id: None,
            transaction_id: None,
            reason: String::new(),
            operator: String::new(),
            manager_approval: None,
            unlinked: false,
            created_at: String::new(),
            balance_after: None,
            deliveries: Vec::new(),
            audit: None,
        }
    }
}

/// A verified manager approval as shown: the manager and the time (RFC 3339).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApprovalView {
    pub manager: String,
    pub approved_at: String,
}

/// The state a refund is shown in: `queued`, `delivered`, `declined`, `failed`, `unknown`,
/// `cancelled`, `expired`, or `quarantined` when a seal did not verify. Serialised as that word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewState {
    Refund(RefundState),
    Quarantined,
    /// Finished and removed by retention; only its id, amount and currency are still known
    /// (from its creation key, to answer a repeated request).
    Purged,
}

impl ViewState {
    pub fn as_str(self) -> &'static str {
        match self {
            ViewState::Refund(state) => state.as_str(),
            ViewState::Quarantined => "quarantined",
            ViewState::Purged => "purged",
        }
    }
}

impl fmt::Display for ViewState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ViewState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == ViewState::Quarantined.as_str() {
            return Ok(ViewState::Quarantined);
        }
        if s == ViewState::Purged.as_str() {
            return Ok(ViewState::Purged);
        }
        s.parse().map(ViewState::Refund)
    }
}

impl PartialEq<str> for ViewState {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ViewState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for ViewState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ViewState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One delivery of a refund.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeliveryView {
    pub destination: String,
    pub state: String,
    pub attempts: i64,
    pub remote_id: Option<String>,
    pub last_error: Option<String>,
    /// When the next attempt is due (pending deliveries only).
    pub next_attempt_at: Option<String>,
    pub updated_at: String,
}

/// One decision about a refund, from the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditView {
    /// Its number in the audit chain.
    pub seq: i64,
    pub at: String,
    /// Who decided: the operator, or `agent`.
    pub actor: String,
    /// `created`, `retry`, `cancel`, `resolve`, `expire`…
    pub action: String,
    pub detail: String,
    /// Through what: `unix uid=… pid=…`, `tcp ADDR`, `terminal`, `agent`; absent on rows written
    /// before callers were recorded.
    pub caller: Option<String>,
}

/// Whether the audit log is as the agent wrote it (`audit/`). A broken chain is an alarm, not
/// a stop: refunds are still validated and sent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AuditStatus {
    /// A row was deleted, edited, moved or added outside the agent, or its head record was.
    pub broken: bool,
    /// The first broken audit number, when known (the full walk names it).
    pub first_broken_seq: Option<i64>,
    /// What is wrong, in a technician's words.
    pub problem: Option<String>,
    /// Whether every row has been verified since the agent started (the walk runs in the
    /// background after start); until then only the head and the newest row are checked.
    pub walked: bool,
}

/// Queue-wide figures for `GET /v1/status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct QueueStatus {
    /// Refunds per state (every state listed, zeros included).
    pub refunds: BTreeMap<String, u64>,
    pub quarantined: u64,
    /// Age in seconds of the oldest refund still waiting for delivery.
    pub oldest_pending_age_s: Option<i64>,
    /// Undelivered amount per currency.
    pub pending_amount: BTreeMap<String, String>,
    /// Deliveries per destination and state.
    pub deliveries: BTreeMap<String, BTreeMap<String, u64>>,
    pub last_delivered_at: Option<String>,
    /// Delivery attempts beyond the first, over the deliveries the queue still holds.
    #[serde(default)]
    pub delivery_retries: u64,
    /// How writes to the queue have fared (not read from the database: kept by its owner).
    #[serde(default)]
    pub storage: StorageStatus,
    /// Whether the audit log's chain is whole.
    #[serde(default)]
    pub audit: AuditStatus,
    /// Whether the file passed `PRAGMA integrity_check` (made in the background after start).
    #[serde(default)]
    pub file: FileStatus,
}

/// The integrity check of the whole queue file, made in the background after start so that
/// starting does not grow with the queue. A damaged file is an alarm and stops sending.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FileStatus {
    /// Whether the check has finished since the agent started.
    pub checked: bool,
    /// SQLite found damaged pages: nothing is sent until the file is restored from a backup.
    pub damaged: bool,
    /// What SQLite reported, or why the check could not run.
    pub problem: Option<String>,
}

/// How writes to the queue have fared since start. A full disk does not stop reads, so a
/// status that reads fine can still show here that nothing new can be stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StorageStatus {
    /// The last transaction that wrote (or tried to) could not be stored.
    pub failing: bool,
    /// Transactions that could not be stored since start: refunds refused with `storage_full`,
    /// delivery outcomes kept in memory and recorded again later.
    pub write_failures: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// Times the database was closed and opened again from the disk after an I/O error (a
    /// failed fsync): what the old connection cached may never have reached the disk.
    #[serde(default)]
    pub reopened: u64,
}
