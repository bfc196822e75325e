//! Queue operations on a real SQLite file, and a property test of the delivery state machine
//! over random sequences of operations.

use proptest::prelude::*;
use rusqlite::Connection;
use tempfile::TempDir;

use super::audit::AuditCaller;
use super::counts::Counted;
use super::db::{Db, QueueSettings};
use super::lifecycle::{self, Recorded};
use super::staged::HeadStage;
use super::{intake, migrate, reads, retention, rows, schema, DeliveryState, QueueError, Sealer, ViewState};
use crate::refund::{Policy, RefundDraft};
use crate::routing::{Route, Router};
use crate::sale::tests::example_input;

/// The caller the tests' decisions are recorded as coming through.
fn ui() -> AuditCaller {
    AuditCaller::unix(1000, Some(4242))
}

struct Fixture {
    _dir: TempDir,
    conn: Connection,
    sealer: Sealer,
    settings: QueueSettings,
}

impl Fixture {
    fn new(destinations: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::new(vec![7; 32]).unwrap();
        let conn = schema::open(dir.path(), &sealer).unwrap();
        let names: Vec<String> = destinations.iter().map(|s| s.to_string()).collect();
        let settings = QueueSettings {
            policy: Policy {
                terminal_id: "t".into(),
                default_currency: "USD".parse().unwrap(),
                limits: crate::refund::CurrencyLimits::only("USD".parse().unwrap()),
                max_queue_len: None,
                allow_unlinked: false,
            },
            router: Router::new(vec![Route { processor: "*".into(), destinations: names.clone() }], names),
            max_pending_age_ms: None,
            retention_ms: None,
        };
        let f = Fixture { _dir: dir, conn, sealer, settings };
        f.db(|db| intake::add_sale(db, example_input(), 0).unwrap().unwrap());
        f
    }

    fn db<T>(&self, f: impl FnOnce(&Db<'_>) -> T) -> T {
        f(&Db {
            conn: &self.conn,
            sealer: &self.sealer,
            settings: &self.settings,
            head: &HeadStage::write_through(),
            counted: &Counted::default(),
        })
    }

    /// Closes and opens the queue again, as a restart does (with its start-up checks).
    fn reopen(&mut self) -> Result<(), QueueError> {
        self.conn = schema::open(self._dir.path(), &self.sealer)?;
        Ok(())
    }

    /// The retention sweep with a retention of zero: every finished refund is purged.
    fn purge_finished(&self, now: i64) -> u64 {
        let settings = QueueSettings { retention_ms: Some(0), ..self.settings.clone() };
        retention::sweep(
            &Db {
                conn: &self.conn,
                sealer: &self.sealer,
                settings: &settings,
                head: &HeadStage::write_through(),
                counted: &Counted::default(),
            },
            now,
        )
        .unwrap()
        .1
    }

    /// Deletes rows as someone with access to the file would.
    fn sql(&self, sql: &str, id: &str) -> usize {
        self.conn.execute(sql, [id]).unwrap()
    }

    fn refused(&mut self) -> String {
        match self.reopen() {
            Err(e @ QueueError::Tampered { .. }) => e.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn create(&self, amount: &str) -> String {
        self.db(|db| {
            intake::create_refund(db, example_draft(amount), None, &ui(), 1).unwrap().unwrap().refund.id
        })
    }

    /// The sealed refunded totals of the fixture's sale.
    fn ledger(&self) -> super::ledger::Refunded {
        super::ledger::find_record(&self.conn, &self.sealer, super::ledger::SaleKey::Receipt, "RCP-2025-001")
            .unwrap()
            .unwrap()
            .refunded
    }

    fn state(&self, id: &str) -> ViewState {
        self.db(|db| reads::view(db, id, 0).unwrap().unwrap().state)
    }

    fn deliveries(&self, id: &str) -> Vec<String> {
        self.db(|db| {
            reads::view(db, id, 0).unwrap().unwrap().deliveries.into_iter().map(|d| d.state).collect()
        })
    }

    /// `open_totals` must always equal a recount from the refunds themselves.
    fn assert_totals_consistent(&self) {
        let kept: Vec<(String, i64, i64)> = self
            .conn
            .prepare(
                "SELECT currency, amount_minor, count FROM open_totals WHERE count <> 0 ORDER BY currency",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let recount: Vec<(String, i64, i64)> = self
            .conn
            .prepare(&format!(
                "SELECT currency, SUM(amount_minor), COUNT(*) FROM refunds
                 WHERE state IN {} GROUP BY currency ORDER BY currency",
                super::delivery::sql_list(&super::RefundState::OPEN)
            ))
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(kept, recount);
    }
}

#[test]
fn deliveries_go_in_order_and_finish_the_refund() {
    let f = Fixture::new(&["a", "b"]);
    let id = f.create("5.00");
    let claims = f.db(|db| lifecycle::claim_due(db, 10, 10, &[]).unwrap());
    assert_eq!(claims.len(), 1, "only the first destination is due");
    assert_eq!(claims[0].destination, "a");
    assert!(
        f.db(|db| lifecycle::claim_due(db, 10, 10, &[]).unwrap()).is_empty(),
        "in flight is not claimed twice"
    );
    f.db(|db| {
        lifecycle::record(db, &id, 0, Recorded::Delivered { remote_id: Some("r1".into()) }, 11).unwrap()
    });
    let claims = f.db(|db| lifecycle::claim_due(db, 12, 10, &[]).unwrap());
    assert_eq!(claims[0].destination, "b");
    f.db(|db| lifecycle::record(db, &id, 1, Recorded::Delivered { remote_id: None }, 13).unwrap());
    assert_eq!(f.state(&id), "delivered");
    f.assert_totals_consistent();
}

/// A cached statement must be compiled once, not at every use: SQLite marks a statement with
/// `LIMIT ?` or `key = ?` to be compiled again when that value changes, and the statement
/// cache clears the bindings of every statement given back, so without the planner stability
/// setting (`schema::configure`) each claim was parsed and planned anew.
#[test]
fn the_claim_statements_are_compiled_once_however_often_they_run() {
    use rusqlite::StatementStatus;
    let f = Fixture::new(&["a"]);
    // As on the owner's connection, so that no statement is evicted between the rounds.
    f.conn.set_prepared_statement_cache_capacity(super::opener::STATEMENT_CACHE);
    for round in 0..4 {
        let id = f.create("1.00");
        let now = 10 + round;
        assert_eq!(f.db(|db| lifecycle::claim_due(db, now, 8, &[]).unwrap()).len(), 1);
        f.db(|db| lifecycle::record(db, &id, 0, Recorded::Delivered { remote_id: None }, now).unwrap());
    }
    for sql in [rows::due_deliveries_sql(), rows::load_deliveries_sql()] {
        let stmt = f.conn.prepare_cached(&sql).unwrap();
        assert!(stmt.get_status(StatementStatus::Run) >= 4, "the claims ran this statement: {sql}");
        assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0, "compiled again: {sql}");
    }
}

#[test]
fn a_decline_cancels_later_destinations_and_frees_the_balance() {
    let f = Fixture::new(&["a", "b"]);
    let id = f.create("90.00");
    f.db(|db| lifecycle::claim_due(db, 10, 10, &[]).unwrap());
    f.db(|db| lifecycle::record(db, &id, 0, Recorded::Declined { error: "no".into() }, 11).unwrap());
    assert_eq!(f.state(&id), "declined");
    assert_eq!(f.deliveries(&id), ["declined", "cancelled"]);
    // The declined refund no longer counts: the full subtotal can be refunded again.
    f.create("90.00");
    f.assert_totals_consistent();
}

#[test]
fn recovery_resends_only_to_deduplicating_destinations() {
    let f = Fixture::new(&["dedup", "plain"]);
    let id1 = f.create("1.00");
    f.db(|db| lifecycle::claim_due(db, 10, 10, &[]).unwrap());
    let report = f.db(|db| lifecycle::recover(db, &|d| d == "dedup", 20).unwrap());
    assert_eq!((report.resent, report.unknown), (1, 0));
    assert_eq!(f.deliveries(&id1), ["pending", "pending"]);

    f.db(|db| lifecycle::claim_due(db, 30, 10, &[]).unwrap());
    f.db(|db| lifecycle::record(db, &id1, 0, Recorded::Delivered { remote_id: None }, 31).unwrap());
    f.db(|db| lifecycle::claim_due(db, 32, 10, &[]).unwrap());
    let report = f.db(|db| lifecycle::recover(db, &|d| d == "dedup", 40).unwrap());
    assert_eq!((report.resent, report.unknown), (0, 1));
    assert_eq!(f.state(&id1), "unknown");
    f.assert_totals_consistent();
}

#[test]
fn progress_keeps_the_step_across_a_crash() {
    let f = Fixture::new(&["dedup"]);
    let id = f.create("1.00");
    f.db(|db| lifecycle::claim_due(db, 10, 10, &[]).unwrap());
    f.db(|db| {
        lifecycle::record(db, &id, 0, Recorded::Progress { step: 1, remote_id: Some("x".into()) }, 11)
            .unwrap()
    });
    f.db(|db| lifecycle::recover(db, &|_| true, 12).unwrap());
    let claim = f.db(|db| lifecycle::claim_due(db, 13, 10, &[]).unwrap()).remove(0);
    assert_eq!((claim.step, claim.remote_id.as_deref()), (1, Some("x")));
}

#[test]
fn held_destinations_are_not_claimed() {
    let f = Fixture::new(&["a"]);
    f.create("1.00");
    assert!(f.db(|db| lifecycle::claim_due(db, 10, 10, &["a".to_string()]).unwrap()).is_empty());
    assert_eq!(f.db(|db| lifecycle::next_due(db, &["a".to_string()]).unwrap()), None);
    assert_eq!(f.db(|db| lifecycle::claim_due(db, 10, 10, &[]).unwrap()).len(), 1);
}

/// The worker sleeps until the time `next_due` gives and then claims: a time for a delivery that
/// claiming would not take (its route's earlier destination not delivered yet, its refund
/// quarantined) had it wake at once, claim nothing and ask again, in a loop.
#[test]
fn next_due_gives_no_time_for_a_delivery_that_cannot_be_claimed() {
    let f = Fixture::new(&["a", "b"]);
    let id = f.create("1.00");
    let claims = f.db(|db| lifecycle::claim_due(db, 10, 10, &[]).unwrap());
    assert_eq!(claims.iter().map(|c| c.destination.as_str()).collect::<Vec<_>>(), ["a"]);
    // `a` in flight, `b` waiting for it.
    assert_eq!(f.db(|db| lifecycle::next_due(db, &[]).unwrap()), None);
    // `a` failed and waits out its backoff while on hold: `b` still waits for it.
    let failed = Recorded::Retry { error: "down".into(), at_ms: 5_000 };
    f.db(|db| lifecycle::record(db, &id, 0, failed, 11).unwrap());
    assert_eq!(f.db(|db| lifecycle::next_due(db, &["a".to_string()]).unwrap()), None);
    assert_eq!(f.db(|db| lifecycle::next_due(db, &[]).unwrap()), Some(5_000));
    // `a` delivered: `b` is due, at its own time.
    f.db(|db| lifecycle::claim_due(db, 5_000, 10, &[]).unwrap());
    f.db(|db| lifecycle::record(db, &id, 0, Recorded::Delivered { remote_id: None }, 5_001).unwrap());
    assert!(f.db(|db| lifecycle::next_due(db, &["a".to_string()]).unwrap()).is_some());

    // A refund whose seal fails is quarantined by the claim and never due again.
    let g = Fixture::new(&["a"]);
    let hit = g.create("1.00");
    assert_eq!(g.sql("UPDATE refunds SET amount = '9.00' WHERE id = ?1", &hit), 1);
    assert!(g.db(|db| lifecycle::claim_due(db, 10, 10, &[]).unwrap()).is_empty());
    assert!(rows::quarantine_reason(&g.conn, &hit).unwrap().is_some());
    assert_eq!(g.db(|db| lifecycle::next_due(db, &[]).unwrap()), None);
}

/// `next_due` runs on every pass of the worker that claims nothing: it walks `deliveries_due`
/// in due order and stops at the first claimable delivery, with no sort of its own.
#[test]
fn next_due_walks_the_due_index_in_order() {
    let f = Fixture::new(&["a", "b"]);
    let plan: Vec<String> = f
        .conn
        .prepare(&format!("EXPLAIN QUERY PLAN {}", lifecycle::next_due_sql()))
        .unwrap()
        .query_map(["[]"], |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("SEARCH d USING INDEX deliveries_due (state=?)"), "{plan}");
    assert!(!plan.contains("TEMP B-TREE"), "{plan}");
}

#[test]
fn a_refund_deleted_from_the_middle_refuses_the_next_open_and_is_named() {
    let mut f = Fixture::new(&["a"]);
    let ids: Vec<String> = (0..4).map(|_| f.create("1.00")).collect();
    f.reopen().expect("no false alarm before anything is deleted");
    assert_eq!(f.sql("DELETE FROM refunds WHERE id = ?1", &ids[1]), 1);
    let message = f.refused();
    assert!(message.contains("1 refund(s) are missing: sequence number(s) 2 (of 1-4)"), "{message}");
    assert!(message.contains("Refunds missing from the queue"), "names the recovery path: {message}");
}

#[test]
fn deleting_the_newest_refund_is_noticed_too() {
    let mut f = Fixture::new(&["a"]);
    let ids: Vec<String> = (0..3).map(|_| f.create("1.00")).collect();
    f.sql("DELETE FROM refunds WHERE id = ?1", &ids[2]);
    f.sql("DELETE FROM refunds WHERE id = ?1", &ids[1]);
    assert!(f.refused().contains("sequence number(s) 2-3 (of 1-3)"));
}

#[test]
fn a_head_record_edited_deleted_or_lowered_refuses() {
    let mut f = Fixture::new(&["a"]);
    let ids: Vec<String> = (0..2).map(|_| f.create("1.00")).collect();
    // Hiding the newest refund by lowering the head: the seal no longer verifies.
    f.sql("DELETE FROM refunds WHERE id = ?1", &ids[1]);
    f.conn.execute("UPDATE refund_head SET seq = seq - 1, deliveries = deliveries - 1", []).unwrap();
    assert!(f.refused().contains("seal that does not verify"));
    f.conn.execute("DELETE FROM refund_head", []).unwrap();
    assert!(f.refused().contains("sequence record (table refund_head) is missing"));
}

#[test]
fn a_row_moved_into_a_deleted_ones_place_fails_its_seal() {
    let mut f = Fixture::new(&["a"]);
    let ids: Vec<String> = (0..3).map(|_| f.create("1.00")).collect();
    // Refund 2 deleted and refund 3 renumbered into its place: the counts add up again, but
    // the sequence number is sealed, and so is the head (3, not 2).
    f.sql("DELETE FROM refunds WHERE id = ?1", &ids[1]);
    f.sql("UPDATE refunds SET seq = 2 WHERE id = ?1", &ids[2]);
    assert!(f.refused().contains("sequence number(s) 3 (of 1-3)"));
    f.conn.execute("UPDATE refund_head SET seq = 2", []).unwrap();
    assert!(f.refused().contains("seal that does not verify"));
}

#[test]
fn a_deleted_delivery_row_quarantines_its_refund_and_no_other() {
    let f = Fixture::new(&["a", "b"]);
    let (hit, other) = (f.create("1.00"), f.create("2.00"));
    // Without its first delivery row, the refund's second destination would look due.
    assert_eq!(f.sql("DELETE FROM deliveries WHERE refund_id = ?1 AND position = 0", &hit), 1);
    let claims = f.db(|db| lifecycle::claim_due(db, 10, 10, &[]).unwrap());
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert_eq!(claims[0].refund.id.to_string(), other);
    let shown = f.db(|db| reads::view(db, &hit, 11).unwrap().unwrap());
    assert_eq!(shown.state, "quarantined");
    assert!(shown.quarantine_reason.unwrap().contains("should have delivery rows for [a, b] but has [b]"));
}

#[test]
fn a_refund_that_lost_its_only_delivery_row_is_quarantined_at_open() {
    let mut f = Fixture::new(&["a"]);
    let (hit, other) = (f.create("1.00"), f.create("2.00"));
    // Nothing would ever claim it again: only the start-up count notices.
    f.sql("DELETE FROM deliveries WHERE refund_id = ?1", &hit);
    f.reopen().expect("a missing delivery row quarantines, it does not refuse");
    let reason = rows::quarantine_reason(&f.conn, &hit).unwrap().expect("quarantined at open");
    assert!(reason.contains("should have 1 delivery row(s) but has 0"), "{reason}");
    assert!(rows::quarantine_reason(&f.conn, &other).unwrap().is_none());
    let claims = f.db(|db| lifecycle::claim_due(db, 10, 10, &[]).unwrap());
    assert_eq!(claims.iter().map(|c| c.refund.id.to_string()).collect::<Vec<_>>(), [other]);
    f.reopen().expect("and it stays that way across restarts");
}

#[test]
fn purged_refunds_are_not_taken_for_deleted_ones() {
    let mut f = Fixture::new(&["a"]);
    let ids: Vec<String> = (0..5).map(|_| f.create("1.00")).collect();
    assert_eq!(f.db(|db| lifecycle::claim_due(db, 10, 10, &[]).unwrap()).len(), 5);
    for (i, id) in ids.iter().enumerate() {
        let outcome = if i % 2 == 0 {
            Recorded::Delivered { remote_id: None }
        } else {
            Recorded::Retry { at_ms: 50, error: "e".into() }
        };
        f.db(|db| lifecycle::record(db, id, 0, outcome, 11).unwrap());
    }
    assert_eq!(f.purge_finished(100), 3, "refunds 1, 3 and 5 are delivered and purged");
    f.reopen().expect("purged refunds are not missing ones");
    let newer = f.create("1.00");
    f.reopen().expect("numbering goes on after a purge");
    assert_eq!(rows::load_refund(&f.conn, &newer).unwrap().unwrap().seq, 6);
    f.sql("DELETE FROM refunds WHERE id = ?1", &ids[3]);
    let message = f.refused();
    assert!(message.contains("1 refund(s) are missing: sequence number(s) 4 (of 1-6)"), "{message}");
}

#[test]
fn a_purged_refund_put_back_is_not_the_agents() {
    let mut f = Fixture::new(&["a"]);
    let id = f.create("1.00");
    f.db(|db| lifecycle::claim_due(db, 10, 1, &[]).unwrap());
    f.db(|db| lifecycle::record(db, &id, 0, Recorded::Delivered { remote_id: None }, 11).unwrap());
    let copy = f.conn.query_row("SELECT * FROM refunds", [], |r| r.get::<_, i64>(0)).unwrap();
    f.conn.execute("CREATE TABLE saved AS SELECT * FROM refunds", []).unwrap();
    assert_eq!(f.purge_finished(100), 1);
    f.conn.execute("INSERT INTO refunds SELECT * FROM saved", []).unwrap();
    assert!(f.refused().contains(&format!("sequence number(s) {copy} were not written there by the agent")));
}

#[test]
fn a_state_edited_to_delivered_is_quarantined_not_purged() {
    let mut f = Fixture::new(&["a"]);
    let id = f.create("1.00");
    f.sql("UPDATE refunds SET state = 'delivered' WHERE id = ?1", &id);
    assert_eq!(f.purge_finished(100), 0);
    assert!(rows::load_refund(&f.conn, &id).unwrap().is_some(), "kept as evidence");
    assert!(rows::quarantine_reason(&f.conn, &id).unwrap().is_some());
    f.reopen().unwrap();
}

#[test]
fn an_upgrade_numbers_the_rows_present_and_keeps_altered_ones_failing() {
    let mut f = Fixture::new(&["a", "b"]);
    let ids: Vec<String> = (0..5).map(|_| f.create("1.00")).collect();
    // Turn the file into what schema version 1 wrote: no head, no destination lists, old seals.
    // Refunds 2 and 5 were purged by that version; refund 4 was then edited behind its back.
    f.sql("DELETE FROM refunds WHERE id = ?1", &ids[1]);
    f.sql("DELETE FROM refunds WHERE id = ?1", &ids[4]);
    f.conn.execute_batch("DROP TABLE refund_head; ALTER TABLE refunds DROP COLUMN destinations;").unwrap();
    for id in [&ids[0], &ids[2], &ids[3]] {
        let mut row = rows::load_refund_v1(&f.conn, id);
        let seal = row.seal_v1(&f.sealer);
        f.conn.execute("UPDATE refunds SET seal = ?2 WHERE id = ?1", rusqlite::params![id, seal]).unwrap();
        row.seal = seal;
    }
    f.sql("UPDATE refunds SET amount = '9.00' WHERE id = ?1", &ids[3]);
    super::ledger::downgrade_for_tests(&f.conn, &f.sealer);
    f.conn.execute_batch("PRAGMA user_version = 1").unwrap();

    f.reopen().expect("the upgrade trusts the rows present");
    let version: i64 = f.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, migrate::VERSION);
    for id in [&ids[0], &ids[2]] {
        assert_eq!(f.state(id), "queued", "resealed under the new format");
    }
    assert_eq!(f.state(&ids[3]), "quarantined", "an altered row is not laundered by the upgrade");
    let next = f.create("1.00");
    assert_eq!(rows::load_refund(&f.conn, &next).unwrap().unwrap().seq, 6, "numbering continues after 5");
    f.reopen().expect("no false alarm after the upgrade");
    f.sql("DELETE FROM refunds WHERE id = ?1", &ids[2]);
    assert!(f.refused().contains("sequence number(s) 3 (of 1-6)"));
}

/// Delivers every due delivery of the fixture.
fn deliver_all(f: &Fixture, now: i64) {
    for c in f.db(|db| lifecycle::claim_due(db, now, 100, &[]).unwrap()) {
        let id = c.refund.id.to_string();
        f.db(|db| {
            lifecycle::record(db, &id, c.position, Recorded::Delivered { remote_id: None }, now).unwrap()
        });
    }
}

/// A refund of `amount` against the example sale (`sale::tests::example_input`).
pub(super) fn example_draft(amount: &str) -> RefundDraft {
    RefundDraft {
        receipt_id: Some("RCP-2025-001".into()),
        amount: Some(amount.into()),
        reason: "r".into(),
        operator: "o".into(),
        ..RefundDraft::default()
    }
}

fn draft(amount: &str, tax: &str) -> RefundDraft {
    RefundDraft { tax: Some(tax.into()), ..example_draft(amount) }
}

#[test]
fn a_purge_never_makes_a_refunded_sale_refundable_again() {
    let mut f = Fixture::new(&["a"]);
    f.db(|db| intake::create_refund(db, draft("60.00", "6.00"), None, &ui(), 1).unwrap().unwrap());
    f.db(|db| intake::create_refund(db, draft("40.00", "4.00"), None, &ui(), 2).unwrap().unwrap());
    deliver_all(&f, 3);
    assert_eq!(f.purge_finished(100), 2);
    f.reopen().unwrap();
    let ledger = f.ledger();
    assert_eq!((ledger.amount.to_string(), ledger.tax.to_string()), ("100".into(), "10".into()));
    assert!(ledger.lines.is_empty());
    let again = f.db(|db| intake::create_refund(db, draft("1.00", "0"), None, &ui(), 200).unwrap());
    assert_eq!(again.unwrap_err().code.as_str(), "over_refund");
}

#[test]
fn a_cancelled_refund_leaves_the_ledger_and_an_edited_ledger_refuses() {
    let f = Fixture::new(&["a"]);
    let id = f
        .db(|db| intake::create_refund(db, draft("100.00", "10.00"), None, &ui(), 1).unwrap().unwrap())
        .refund
        .id;
    f.db(|db| super::manual::cancel(db, &id, "o", &ui(), "r", 2).unwrap());
    assert_eq!(f.ledger(), super::ledger::Refunded::default());
    f.db(|db| intake::create_refund(db, draft("100.00", "10.00"), None, &ui(), 3).unwrap().unwrap());
    f.conn.execute("UPDATE sales SET refunded = '0'", []).unwrap();
    let refused = f.db(|db| intake::create_refund(db, draft("1.00", "0"), None, &ui(), 4));
    assert!(
        matches!(refused, Err(QueueError::Conflict(ref m)) if m.contains("does not verify")),
        "{refused:?}"
    );
}

#[test]
fn the_upgrade_totals_each_sale_from_its_refunds() {
    let mut f = Fixture::new(&["a"]);
    f.db(|db| intake::create_refund(db, draft("30.00", "3.00"), None, &ui(), 1).unwrap().unwrap());
    let id = f
        .db(|db| intake::create_refund(db, draft("20.00", "2.00"), None, &ui(), 2).unwrap().unwrap())
        .refund
        .id;
    f.db(|db| super::manual::cancel(db, &id, "o", &ui(), "r", 3).unwrap());
    super::ledger::downgrade_for_tests(&f.conn, &f.sealer);
    f.conn.execute_batch("PRAGMA user_version = 2").unwrap();
    f.reopen().unwrap();
    let ledger = f.ledger();
    assert_eq!((ledger.amount.to_string(), ledger.tax.to_string()), ("30".into(), "3".into()));
}

#[test]
fn a_purged_refunds_key_still_names_it_and_an_edited_key_refuses() {
    let mut f = Fixture::new(&["a"]);
    let first = f
        .db(|db| intake::create_refund(db, draft("100.00", "10.00"), Some("k1"), &ui(), 1).unwrap().unwrap());
    deliver_all(&f, 2);
    assert_eq!(f.purge_finished(100), 1);
    f.reopen().unwrap();
    let again = f.db(|db| {
        intake::create_refund(db, draft("100.00", "10.00"), Some("k1"), &ui(), 200).unwrap().unwrap()
    });
    assert!(again.replayed);
    assert_eq!(again.refund.id, first.refund.id);
    assert_eq!(again.refund.state, ViewState::Purged);
    assert_eq!((again.refund.amount.as_str(), again.refund.currency.as_str()), ("100.00", "USD"));
    let count: i64 = f.conn.query_row("SELECT COUNT(*) FROM refunds", [], |r| r.get(0)).unwrap();
    assert_eq!(count, 0, "nothing new was made");
    f.conn.execute("UPDATE idempotency_keys SET refund_id = 'other'", []).unwrap();
    let refused = f.db(|db| intake::create_refund(db, draft("1.00", "0"), Some("k1"), &ui(), 201));
    assert!(
        matches!(refused, Err(QueueError::Conflict(ref m)) if m.contains("idempotency key")),
        "{refused:?}"
    );
}

#[test]
fn a_deleted_sale_cannot_be_registered_again_and_refuses_the_start() {
    let mut f = Fixture::new(&["a"]);
    f.sql("DELETE FROM sales WHERE receipt_id = ?1", "RCP-2025-001");
    // Even with the same numbers: the ledger cannot tell what the deleted row said.
    let again = f.db(|db| intake::add_sale(db, example_input(), 5));
    assert!(
        matches!(again, Err(QueueError::Conflict(ref m)) if m.contains("1 sale(s) missing from table sales")),
        "{again:?}"
    );
    assert!(f.refused().contains("1 sale(s) missing from table sales"));
}

#[test]
fn a_deleted_idempotency_key_refuses_the_start() {
    let mut f = Fixture::new(&["a"]);
    f.db(|db| intake::create_refund(db, draft("5.00", "0.50"), Some("k1"), &ui(), 1).unwrap().unwrap());
    f.reopen().expect("no false alarm");
    f.sql("DELETE FROM idempotency_keys WHERE key = ?1", "k1");
    assert!(f.refused().contains("1 idempotency key(s) missing"));
}

#[derive(Debug, Clone)]
enum Op {
    Create(u32),
    Claim,
    Record(usize, u8),
    Recover(bool),
    Purge,
    Reopen,
    Cancel(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u32..3000).prop_map(Op::Create),
        4 => Just(Op::Claim),
        4 => (any::<usize>(), 0u8..6).prop_map(|(i, o)| Op::Record(i, o)),
        1 => any::<bool>().prop_map(Op::Recover),
        1 => Just(Op::Purge),
        1 => Just(Op::Reopen),
        1 => any::<usize>().prop_map(Op::Cancel),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever happens, in any order: totals match a recount, a final delivery never changes,
    /// a refund's state follows its deliveries, and no delivery runs before an earlier one
    /// was delivered.
    #[test]
    fn the_state_machine_keeps_its_invariants(ops_list in proptest::collection::vec(op(), 1..40)) {
        let mut f = Fixture::new(&["a", "b"]);
        let mut in_flight: Vec<(String, i64)> = Vec::new();
        let mut finals: std::collections::HashMap<(String, i64), String> = Default::default();
        // Every refund ever made: its amount in cents and whether it still counts (a purged one
        // keeps what it was when purged).
        let mut made: std::collections::BTreeMap<String, (i64, bool)> = Default::default();
        for (now, op) in (101i64..).zip(ops_list) {
            match op {
                Op::Create(cents) => {
                    let amount = format!("{}.{:02}", cents / 100, cents % 100);
                    let draft = RefundDraft {
                        receipt_id: Some("RCP-2025-001".into()), amount: Some(amount), reason: "r".into(),
                        operator: "o".into(), tax: Some("0".into()), ..RefundDraft::default()
                    };
                    // Over-refunds are rejected; that is fine here.
                    if let Ok(c) = f.db(|db| intake::create_refund(db, draft, None, &ui(), now).unwrap()) {
                        made.insert(c.refund.id, (i64::from(cents), true));
                    }
                }
                Op::Claim => {
                    for c in f.db(|db| lifecycle::claim_due(db, now, 5, &[]).unwrap()) {
                        let id = c.refund.id.to_string();
                        let earlier = f.deliveries(&id);
                        prop_assert!(earlier[..c.position as usize].iter().all(|s| s == "delivered"));
                        in_flight.push((id, c.position));
                    }
                }
                Op::Record(i, o) if !in_flight.is_empty() => {
                    let (id, pos) = in_flight.remove(i % in_flight.len());
                    let outcome = match o {
                        0 => Recorded::Delivered { remote_id: None },
                        1 => Recorded::Retry { at_ms: now, error: "e".into() },
                        2 => Recorded::Declined { error: "e".into() },
                        3 => Recorded::Failed { error: "e".into() },
                        4 => Recorded::Unknown { error: "e".into() },
                        _ => Recorded::Progress { step: 1, remote_id: None },
                    };
                    let keeps_flying = matches!(outcome, Recorded::Progress { .. });
                    f.db(|db| lifecycle::record(db, &id, pos, outcome, now).unwrap());
                    if keeps_flying { in_flight.push((id, pos)); }
                }
                Op::Record(..) => {}
                Op::Recover(dedup) => {
                    f.db(|db| lifecycle::recover(db, &|_| dedup, now).unwrap());
                    in_flight.clear();
                }
                Op::Purge => {
                    f.purge_finished(now + 1);
                }
                // Whatever was enqueued, delivered or purged: a restart raises no alarm.
                Op::Cancel(i) if !made.is_empty() => {
                    let id = made.keys().nth(i % made.len()).cloned().unwrap();
                    // Refused once money may have moved or when already finished; fine here.
                    // A cancel turns failed deliveries into cancelled ones, by design.
                    if f.db(|db| super::manual::cancel(db, &id, "o", &ui(), "r", now)).is_ok() {
                        finals.retain(|(r, _), _| *r != id);
                    }
                }
                Op::Cancel(_) => {}
                Op::Reopen => {
                    let reopened = f.reopen();
                    prop_assert!(reopened.is_ok(), "false alarm: {:?}", reopened);
                    prop_assert_eq!(f.db(|db| reads::status(db, now).unwrap()).quarantined, 0);
                }
            }
            f.assert_totals_consistent();
            for r in f.db(|db| reads::list(db, None, 1000, now).unwrap()) {
                if let Some(m) = made.get_mut(&r.id) {
                    m.1 = !matches!(r.state.as_str(), "cancelled" | "declined");
                }
            }
            let expected: i64 = made.values().filter(|m| m.1).map(|m| m.0).sum();
            prop_assert_eq!(f.ledger().amount, rust_decimal::Decimal::new(expected, 2), "ledger != counting refunds");
            for r in f.db(|db| reads::list(db, None, 1000, now).unwrap()) {
                let states: Vec<DeliveryState> = r.deliveries.iter().map(|d| d.state.parse().unwrap()).collect();
                prop_assert_eq!(r.state.as_str(), super::delivery::aggregate(&states).as_str());
                for (position, d) in r.deliveries.iter().enumerate() {
                    let key = (r.id.clone(), position as i64);
                    if let Some(prev) = finals.get(&key) {
                        prop_assert_eq!(prev, &d.state, "a final delivery changed");
                    }
                    if d.state.parse::<DeliveryState>().unwrap().is_final() {
                        finals.insert(key, d.state.clone());
                    }
                }
            }
        }
        let reopened = f.reopen();
        prop_assert!(reopened.is_ok(), "false alarm at the end: {:?}", reopened);
    }
}

/// Status ages are measured against the trusted now (`crate::clock`), as the handle passes it:
/// however far the wall clock is set forward, an hour after start the oldest refund is an hour
/// old.
#[test]
fn status_ages_do_not_jump_with_the_wall_clock() {
    let f = Fixture::new(&["a"]);
    f.create("1.00");
    let hour = std::time::Duration::from_secs(3600);
    let now = crate::clock::trusted(1, hour);
    let status = f.db(|db| reads::status(db, now).unwrap());
    assert_eq!(status.oldest_pending_age_s, Some(3600));
    assert!(!status.audit.broken, "{:?}", status.audit);
    let wall = f.db(|db| reads::status(db, 1 + 30 * 86_400_000).unwrap());
    assert_eq!(wall.oldest_pending_age_s, Some(30 * 86_400), "the raw wall clock would have aged it");
}

/// Status reads the pending amounts from `open_totals` and the oldest open refund by an index
/// seek: the figures are those of the refunds themselves, and a currency whose refunds are all
/// delivered is no longer listed.
#[test]
fn status_pending_amounts_and_age_follow_the_open_refunds() {
    let f = Fixture::new(&["a"]);
    let status = |now| f.db(|db| reads::status(db, now).unwrap());
    assert!(status(5).pending_amount.is_empty());
    assert_eq!(status(5).oldest_pending_age_s, None);
    let first = f.create("1.00");
    f.create("2.50");
    let s = status(7_001);
    assert_eq!(s.pending_amount.get("USD").map(String::as_str), Some("3.50"));
    assert_eq!(s.oldest_pending_age_s, Some(7));
    assert_eq!(f.db(|db| lifecycle::claim_due(db, 10, 1, &[]).unwrap()).len(), 1);
    f.db(|db| lifecycle::record(db, &first, 0, Recorded::Delivered { remote_id: None }, 11).unwrap());
    assert_eq!(status(12).pending_amount.get("USD").map(String::as_str), Some("2.50"));
    for c in f.db(|db| lifecycle::claim_due(db, 20, 8, &[]).unwrap()) {
        let id = c.refund.id.to_string();
        f.db(|db| lifecycle::record(db, &id, 0, Recorded::Delivered { remote_id: None }, 21).unwrap());
    }
    let s = status(22);
    assert!(s.pending_amount.is_empty(), "{:?}", s.pending_amount);
    assert_eq!(s.oldest_pending_age_s, None);
    f.assert_totals_consistent();
}

/// The pending amounts in status are summed from the refunds, not read from `open_totals`,
/// which a connection checks only when it validates a refund (`totals.rs`): a table edited
/// while the agent was stopped does not show in status.
#[test]
fn status_pending_amounts_do_not_take_an_edited_open_totals() {
    let f = Fixture::new(&["a"]);
    f.create("4.00");
    f.conn.execute("UPDATE open_totals SET amount_minor = 1, count = 9", []).unwrap();
    let s = f.db(|db| reads::status(db, 2).unwrap());
    assert_eq!(s.pending_amount.get("USD").map(String::as_str), Some("4.00"), "{:?}", s.pending_amount);
}

#[test]
fn velocity_counts_the_operators_live_refunds_of_the_last_day() {
    use crate::refund::velocity::DAY_MS;
    use crate::refund::{CurrencyLimits, RejectCode};
    let mut f = Fixture::new(&["a"]);
    let limits = CurrencyLimits { max_refunds_per_operator_per_day: Some(2), ..CurrencyLimits::default() };
    f.settings.policy.limits.insert("USD".parse().unwrap(), limits);
    let create = |f: &Fixture, operator: &str, now: i64| {
        let d = RefundDraft { operator: operator.into(), ..draft("1.00", "0") };
        f.db(|db| intake::create_refund(db, d, None, &ui(), now).unwrap())
    };
    let first = create(&f, "emp_42", 1).unwrap().refund.id;
    create(&f, "emp_42", 2).unwrap();
    let refused = create(&f, "emp_42", 3).unwrap_err();
    assert_eq!(refused.code, RejectCode::ManagerApprovalRequired);
    assert!(create(&f, "emp_7", 3).is_ok(), "another operator has their own count");
    // A cancelled refund no longer counts.
    f.db(|db| super::manual::cancel(db, &first, "o", &ui(), "r", 4).unwrap());
    create(&f, "emp_42", 5).unwrap();
    assert_eq!(create(&f, "emp_42", 6).unwrap_err().code, RejectCode::ManagerApprovalRequired);
    // A day after the second refund (made at 2), only the third (at 5) is still in the window.
    assert!(create(&f, "emp_42", 2 + DAY_MS).is_ok());
    assert_eq!(create(&f, "emp_42", 2 + DAY_MS).unwrap_err().code, RejectCode::ManagerApprovalRequired);
}

/// Itemized refunds count in the sealed ledger from the moment they are queued, are refused
/// once a line is used up, and give their units back when cancelled, at the price that keeps
/// the line exact.
#[test]
fn itemized_refunds_count_per_line_in_the_ledger() {
    let f = Fixture::new(&["a"]);
    let one_tea = || RefundDraft {
        receipt_id: Some("RCP-2025-001".into()),
        lines: vec![crate::refund::LineRequest { line: 1, quantity: 1 }],
        reason: "chipped".into(),
        operator: "o".into(),
        ..RefundDraft::default()
    };
    let first = f.db(|db| intake::create_refund(db, one_tea(), None, &ui(), 1).unwrap().unwrap()).refund.id;
    f.db(|db| intake::create_refund(db, one_tea(), None, &ui(), 2).unwrap().unwrap());
    let taken = f.ledger().lines[&1];
    assert_eq!((taken.quantity, taken.amount.to_string()), (2, "10.00".into()));
    let third = f.db(|db| intake::create_refund(db, one_tea(), None, &ui(), 3).unwrap());
    assert_eq!(third.unwrap_err().code.as_str(), "over_refund");
    f.db(|db| super::manual::cancel(db, &first, "o", &ui(), "r", 4).unwrap());
    assert_eq!(f.ledger().lines[&1].quantity, 1);
    let again = f.db(|db| intake::create_refund(db, one_tea(), None, &ui(), 5).unwrap().unwrap());
    assert_eq!(again.refund.amount, "5.00");
    // The stored body holds the priced line, which is what the destinations send.
    let body: String =
        f.conn.query_row("SELECT body FROM refunds WHERE id = ?1", [&again.refund.id], |r| r.get(0)).unwrap();
    let stored: crate::refund::ValidRefund = serde_json::from_str(&body).unwrap();
    assert_eq!(stored.lines[0].priced.amount.to_string(), "5.00");
    assert_eq!(stored.tax.map(|t| t.to_string()).as_deref(), Some("0.50"));
}

#[test]
fn a_newer_note_retires_older_ones_and_a_lookup_settles_through_the_manual_path() {
    use super::lookup::{self, LookupSettlement};
    let f = Fixture::new(&["t", "b"]);
    let retire = |r: &str| (r == "live").then(|| "retired".to_string());
    let live = |r: &str| r == "live";
    let a = f.create("1.00");
    f.db(|db| lifecycle::claim_due(db, 10, 10, &[]).unwrap());
    f.db(|db| lookup::note(db, &a, 0, "live", &retire, 11).unwrap());
    f.db(|db| lifecycle::record(db, &a, 0, Recorded::Unknown { error: "lost".into() }, 12).unwrap());
    let waiting = f.db(|db| lookup::candidates(db, "t", &live, 13).unwrap());
    assert_eq!(waiting.len(), 1, "the unknown outcome keeps its note");
    assert!(f.db(|db| lookup::candidates(db, "b", &live, 13).unwrap()).is_empty());
    assert!(
        f.db(|db| lookup::note(db, &a, 0, "live", &retire, 13)).is_err(),
        "only an in-flight delivery takes a note"
    );

    // The next payout at the same terminal retires the older note as it writes its own.
    let b = f.create("2.00");
    f.db(|db| lifecycle::claim_due(db, 14, 10, &[]).unwrap());
    f.db(|db| lookup::note(db, &b, 0, "live", &retire, 15).unwrap());
    assert!(f.db(|db| lookup::candidates(db, "t", &live, 16).unwrap()).is_empty());
    let stale = LookupSettlement::Declined { detail: "same trace".into() };
    assert!(
        !f.db(|db| lookup::settle(db, &a, 0, "live", stale, 17).unwrap()),
        "a retired note is not settled"
    );
    assert_eq!(f.state(&a), "unknown");

    // Not paid: declined, the later destination cancelled, the decision audited as the agent's.
    f.db(|db| lifecycle::record(db, &b, 0, Recorded::Unknown { error: "lost".into() }, 18).unwrap());
    let declined = LookupSettlement::Declined { detail: "same trace".into() };
    assert!(f.db(|db| lookup::settle(db, &b, 0, "live", declined, 19).unwrap()));
    assert_eq!(f.deliveries(&b), ["declined", "cancelled"]);
    assert_eq!(f.state(&b), "declined");
    let audit = f.db(|db| reads::view(db, &b, 20).unwrap().unwrap().audit.unwrap_or_default());
    assert!(audit
        .iter()
        .any(|r| r.action == "lookup" && r.actor == "agent" && r.detail == "t: not paid: same trace"));

    // Paid: delivered with the terminal's record, and the next destination is due.
    let paid = LookupSettlement::Delivered { remote_id: "record".into(), detail: "trace 000005".into() };
    assert!(f.db(|db| lookup::settle(db, &a, 0, "retired", paid, 21).unwrap()));
    assert_eq!(f.deliveries(&a), ["delivered", "pending"]);
    let claims = f.db(|db| lifecycle::claim_due(db, 22, 10, &[]).unwrap());
    assert_eq!((claims.len(), claims[0].destination.as_str()), (1, "b"));
    f.assert_totals_consistent();
}

#[test]
fn a_note_from_before_a_restore_is_not_looked_up() {
    use super::lookup;
    let f = Fixture::new(&["t"]);
    let retire = |r: &str| (r == "live").then(|| "retired".to_string());
    let live = |r: &str| r == "live";
    let a = f.create("1.00");
    f.db(|db| lifecycle::claim_due(db, 10, 10, &[]).unwrap());
    f.db(|db| lookup::note(db, &a, 0, "live", &retire, 11).unwrap());
    f.db(|db| lifecycle::record(db, &a, 0, Recorded::Unknown { error: "lost".into() }, 12).unwrap());
    assert_eq!(f.db(|db| lookup::candidates(db, "t", &live, 13).unwrap()).len(), 1);
    // The copy put back may not know a payout made after it was taken.
    f.db(|db| super::audit::by(db, None, "agent", &AuditCaller::agent(), "restore", "restored", 14).unwrap());
    assert!(f.db(|db| lookup::candidates(db, "t", &live, 15).unwrap()).is_empty());
}

#[test]
fn open_totals_edited_while_stopped_are_put_right_before_a_refund_is_validated() {
    let mut f = Fixture::new(&["a"]);
    f.settings.policy.max_queue_len = Some(2);
    f.create("1.00");
    f.create("1.00");
    // Someone empties the derived totals so that the queue looks empty to the limits.
    f.conn.execute_batch("UPDATE open_totals SET amount_minor = 0, count = 0").unwrap();
    f.reopen().expect("derived data is put right, not refused");
    let third = f.db(|db| intake::create_refund(db, draft("1.00", "0"), None, &ui(), 3).unwrap());
    assert_eq!(third.unwrap_err().code.as_str(), "queue_full");
    f.assert_totals_consistent();
}

#[test]
fn open_totals_rebuilt_in_a_rolled_back_transaction_are_compared_again() {
    let f = Fixture::new(&["a"]);
    f.create("1.00");
    f.conn.execute_batch("DELETE FROM open_totals").unwrap();
    // One connection's memory, as the owner keeps it across its batches.
    let counted = Counted::default();
    let db = Db {
        conn: &f.conn,
        sealer: &f.sealer,
        settings: &f.settings,
        head: &HeadStage::write_through(),
        counted: &counted,
    };
    f.conn.execute_batch("BEGIN").unwrap();
    super::totals::ensure(&db).unwrap();
    f.assert_totals_consistent();
    f.conn.execute_batch("ROLLBACK").unwrap();
    // The rebuild went back with its transaction: the next use must not trust the table.
    super::totals::ensure(&db).unwrap();
    f.assert_totals_consistent();
    super::totals::ensure(&db).unwrap();
    assert!(counted.totals_agreed(), "a table that agreed is not counted again on this connection");
}
