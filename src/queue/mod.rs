//! The durable refund queue: one SQLite file, owned by one thread.
//!
//! # On-disk format
//!
//! `queue.db` in the state directory, WAL journal, `synchronous=FULL`, schema version in
//! `PRAGMA user_version` (migrations in `migrate.rs`, applied in order, one transaction each).
//! The state directory is `0700` and the queue's files `0600`, at creation and corrected at
//! every open (`files.rs`).
//!
//! | table | one row per | notes |
//! |---|---|---|
//! | `meta` | setting | `seal_key_check`: HMAC of a constant under the seal key; `queue_id` |
//! | `sales` | original sale (the ledger) | `body` = JSON of `sale::Sale`; `refunded`, `tax_refunded`, `discount_refunded` = totals of its refunds that still count, `lines` = JSON map line → quantity refunded (empty for now); all sealed together (`ledger.rs`, schema version 3) |
//! | `refunds` | refund | `seq` = sequence number 1, 2, 3…; `id` = UUIDv7; `body` = JSON of `refund::ValidRefund`; `state`; `destinations` = JSON list of its delivery rows' destinations; sealed |
//! | `refund_head` | (one row) | highest `seq` given out, delivery rows expected, `purged` ranges of `seq`; sealed with the queue id (`sequence.rs`) |
//! | `deliveries` | refund × destination | `state`, `attempts`, `next_attempt_at`, `step`, `remote_id` (the destination's record; on an in-flight or unknown ZVT payout the note of the terminal's last transaction before it, `queue::lookup`), `last_error`; sealed |
//! | `idempotency_keys` | creation key (API `Idempotency-Key`, `terminal:{request_id}`) | fingerprint of the request, refund id, amount, currency; sealed; kept when its refund is purged (`keys.rs`, schema version 4) |
//! | `row_counts` | counted table | sealed count of `sales`, `idempotency_keys` and `manager_lockouts` rows the agent wrote, with the queue id (`counts.rs`, schema version 5) |
//! | `manager_lockouts` | manager who typed a wrong PIN | wrong PINs in a row, end of the lock-out; updated in place; sealed with the queue id; counted in `row_counts` (`lockouts.rs`, schema version 6) |
//! | `generation` | (one row) | the queue's generation, raised by every write batch; sealed with the queue id (`generation.rs`, schema version 8) |
//! | `quarantine` | refund whose seal failed | never sent again; shown in status |
//! | `audit` | decision by the agent or a person | `seq` 1, 2, 3…; creation, retry, cancel, resolve, expiry; `actor`, `caller` (`unix uid=… pid=…`, `tcp ADDR`, `terminal`, `agent`); `seal` chained over the previous row's (`audit/`, schema version 7); never purged |
//! | `audit_head` | (one row) | newest audit `seq` and its seal; sealed with the queue id |
//!
//! Times are milliseconds since the Unix epoch (UTC); amounts are decimal strings formatted
//! with the currency's minor units, summed in Rust (never as SQL floats).
//!
//! Every row of `sales`, `refunds` and `deliveries` carries `seal` = HMAC-SHA256 under the
//! device key over its columns (`rows.rs` and `ledger.rs` list which). Everything a connector puts on the
//! wire is derived from the sealed refund `body`. A seal that does not verify quarantines the
//! refund: it is reported and never sent. The key itself is never in the database; a database
//! sealed under another key is refused at start.
//!
//! A deleted row is caught by numbering (schema version 2, `sequence.rs`): each refund takes
//! the next `seq` from the sealed `refund_head` in the transaction that stores it, and its seal
//! covers `seq` and its destination list. At start, refunds present plus those the agent purged
//! must be exactly `1..=head` (indexed counts, no seal read): otherwise the start is refused,
//! naming the missing numbers. A refund whose delivery rows differ from its sealed list is
//! quarantined (at start when the delivery-row total disagrees with the head, and on every
//! read). The upgrade from version 1 numbers the rows present, trusting them. Not detectable
//! from inside the file: the whole file (or the head with the newest rows) put back to an older
//! copy of itself: for that, the generation (below).
//!
//! An older copy put back by hand is caught by the generation (schema version 8,
//! `generation.rs`): a sealed counter raised in every write batch, mirrored after each COMMIT to
//! `queue.generation` beside the database. At start a database older than the marker is
//! refused; only `refund-agent restore` (`backup.rs`, `restore.rs`) brings an older copy back,
//! marking what it could not know as `unknown`. `queue.lock` is held (`flock`) by the owner
//! while the database is open, and by a restore.
//!
//! Sales and creation keys, never purged with refunds, are counted instead (schema version 5,
//! `counts.rs`): a sealed count per table, raised in the transaction that inserts a row and
//! compared with `COUNT(*)` at start; registering a sale checks it first, so a receipt deleted
//! and registered again with other numbers is refused rather than accepted.
//!
//! # Crash-recovery rules
//!
//! 1. A refund and its deliveries (and its idempotency key) are written in one transaction; the
//!    caller is answered only after COMMIT. A crash before COMMIT leaves no trace; after it,
//!    the refund is there.
//! 2. A delivery is marked `in_flight` (committed) before its request is sent.
//! 3. At start, every `in_flight` delivery is resolved before any new send: back to `pending`
//!    where the destination deduplicates on the refund id (sending again is harmless), or to
//!    `unknown` where it does not (a person decides; no blind second payment).
//! 4. A multi-request delivery records each finished request (`step`) before the next, so a
//!    retry resumes after the last finished request.
//! 5. Start-up refuses a file SQLite cannot open as a database, a newer schema, another seal
//!    key or a refund deleted behind its back, with a message naming the recovery path; it
//!    never starts empty in their place. No check made at start reads the rows of a queue-sized
//!    table (single sealed records, ranges, and bare `COUNT(*)`s answered from an index's
//!    cell counts); the whole-file `PRAGMA integrity_check` and the audit chain's checks run
//!    after READY in the background (`background.rs`), and a damaged file stops sending and
//!    raises status, metrics and `doctor` alarms.
//!    `queue.id` next to the database holds the database's random id (also in `meta`): a queue
//!    that vanished, was truncated to nothing or was swapped for another is refused rather than
//!    mistaken for a fresh install.
//! 6. After an I/O error (a failed fsync above all) the owner writes nothing more through that
//!    connection: it closes it and opens the database again (`opener.rs`), refusing writes
//!    while it cannot. Every open ends with `wal_checkpoint(TRUNCATE)`, so frames of a COMMIT
//!    whose fsync failed (readable from the cache, never on disk) are written into the database
//!    file anew and synced before anything else is stored after them (`tests/power_loss.rs`).
//!
//! # When rows may be deleted
//!
//! Only refunds that are `delivered`, `cancelled` or `declined` and unchanged for longer than
//! the configured retention are purged, with their deliveries, and only when their seals verify
//! and they are not quarantined; their `seq` goes into `refund_head.purged` in the same
//! transaction. Their idempotency keys stay (a repeat is answered with the purged refund's id,
//! state `purged`), and their sale's sealed refunded totals are untouched, so a purge never
//! makes a sale refundable again. Sales are never purged. Nothing undelivered is ever deleted
//! by the agent.

mod audit;
mod background;
mod backup;
mod carry;
mod checkpoint;
mod counts;
mod db;
mod delivery;
mod error;
mod files;
mod generation;
mod handle;
mod intake;
mod keys;
mod ledger;
mod lifecycle;
mod lockouts;
mod lookup;
mod inspect;
mod manual;
mod migrate;
mod opener;
mod owner;
mod reader;
mod reads;
mod restore;
mod retention;
mod rows;
mod schema;
mod seal;
mod sequence;
mod staged;
mod totals;
mod view;

#[cfg(test)]
mod tests;

pub use audit::{AuditCaller, AuditCheck, ChainState};
pub use backup::{backup, restore, BackupError, BackupReport, RestoreReport, PREVIOUS_FILE};
pub use db::QueueSettings;
pub use delivery::{DeliveryState, RefundState};
pub use error::QueueError;
pub use handle::QueueHandle;
pub use inspect::{check_readonly, FileCheck, Report, RowsCheck};
pub use intake::{Created, SaleAdded};
pub use lifecycle::{Claim, Recorded, Recovery};
pub use lookup::{LookupCandidate, LookupSettlement};
pub use manual::Resolution;
#[cfg(feature = "fault-injection")]
pub use owner::start_on_vfs;
pub use owner::{start, QueueOwner};
pub use restore::{Replaced, Restored};
pub use seal::Sealer;
pub use view::{
    ApprovalView, AuditStatus, AuditView, DeliveryView, FileStatus, QueueStatus, RefundView, StorageStatus,
    ViewState,
};
