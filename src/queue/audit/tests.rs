//! The audit chain on a real SQLite file: every kind of change made outside the agent is
//! found by the walk (and the ones the cheap check can see, by it too), the agent keeps
//! recording on a broken chain without hiding the break, and the upgrade chains old rows.

use proptest::prelude::*;
use rusqlite::Connection;
use tempfile::TempDir;

use super::*;
use crate::queue::schema;

struct Log {
    dir: TempDir,
    conn: Connection,
    sealer: Sealer,
}

impl Log {
    /// A fresh queue holding `n` audit rows.
    fn new(n: usize) -> Log {
        let dir = tempfile::tempdir().expect("temp dir");
        let sealer = Sealer::new(vec![9; 32]).expect("a key");
        let conn = schema::open(dir.path(), &sealer).expect("queue opens");
        let log = Log { dir, conn, sealer };
        for i in 0..n {
            log.add(i as i64);
        }
        log
    }

    fn add(&self, i: i64) -> i64 {
        let caller = AuditCaller::unix(1000, Some(4242));
        let id = format!("refund-{}", i % 3);
        let entry = Entry {
            refund_id: Some(&id),
            actor: "emp_42",
            action: "cancel",
            detail: "customer changed their mind",
            caller: Some(&caller),
            at: 1_000 + i,
        };
        record(&self.conn, &self.sealer, &entry).expect("recorded")
    }

    fn check(&self) -> ChainState {
        check(&self.conn, &self.sealer).expect("check")
    }

    fn walk(&self) -> ChainState {
        walk(&self.conn, &self.sealer).expect("walk")
    }

    fn sql(&self, sql: &str) {
        self.conn.execute_batch(sql).expect("sql");
    }

    /// Closes and opens the queue again, as a restart does.
    fn reopen(&mut self) {
        self.conn = schema::open(self.dir.path(), &self.sealer)
            .expect("a broken audit chain never refuses the start");
    }
}

fn broken_at(state: &ChainState) -> Option<i64> {
    match state {
        ChainState::Broken { seq, .. } => *seq,
        ChainState::Intact { .. } => None,
    }
}

#[test]
fn a_whole_chain_verifies_cheaply_and_row_by_row() {
    let log = Log::new(0);
    assert_eq!(log.check(), ChainState::Intact { rows: 0 });
    assert_eq!(log.walk(), ChainState::Intact { rows: 0 });
    for i in 0..5 {
        assert_eq!(log.add(i), i + 1);
    }
    assert_eq!(log.check(), ChainState::Intact { rows: 5 });
    assert_eq!(log.walk(), ChainState::Intact { rows: 5 });
    let rows = for_refund(&log.conn, "refund-1").expect("rows");
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 5]);
    assert_eq!(rows[0].caller.as_deref(), Some("unix uid=1000 pid=4242"));
    assert_eq!(rows[0].actor, "emp_42");
}

#[test]
fn a_row_deleted_from_the_middle_is_found_and_named() {
    let log = Log::new(6);
    log.sql("DELETE FROM audit WHERE seq = 3");
    assert!(matches!(log.check(), ChainState::Broken { .. }), "the count no longer matches the head");
    assert_eq!(broken_at(&log.walk()), Some(3));
}

#[test]
fn an_edited_row_is_found_by_the_walk_and_the_newest_by_the_cheap_check() {
    let log = Log::new(6);
    log.sql("UPDATE audit SET detail = 'nothing happened' WHERE seq = 2");
    assert_eq!(log.check(), ChainState::Intact { rows: 6 }, "the cheap check reads only the newest row");
    assert_eq!(broken_at(&log.walk()), Some(2));

    let log = Log::new(4);
    log.sql("UPDATE audit SET caller = 'terminal' WHERE seq = 4");
    assert_eq!(broken_at(&log.check()), Some(4));
    assert_eq!(broken_at(&log.walk()), Some(4));

    let log = Log::new(4);
    log.sql("UPDATE audit SET caller = NULL WHERE seq = 1");
    assert_eq!(broken_at(&log.walk()), Some(1), "an absent caller seals differently from a present one");
}

#[test]
fn rows_put_in_another_order_are_found() {
    let log = Log::new(5);
    // Rows 1 and 3 change places, seals and all.
    log.sql(
        "UPDATE audit SET seq = -1 WHERE seq = 1; UPDATE audit SET seq = 1 WHERE seq = 3;
         UPDATE audit SET seq = 3 WHERE seq = -1;",
    );
    assert_eq!(log.check(), ChainState::Intact { rows: 5 }, "count, range and the newest two are unchanged");
    assert_eq!(broken_at(&log.walk()), Some(1));
}

#[test]
fn a_truncated_tail_and_a_row_added_behind_the_agent_are_found() {
    let log = Log::new(5);
    log.sql("DELETE FROM audit WHERE seq >= 4");
    assert_eq!(broken_at(&log.check()), Some(4));
    assert_eq!(broken_at(&log.walk()), Some(4));

    let log = Log::new(3);
    // A copy of the newest row, seal included, put after it.
    log.sql(
        "INSERT INTO audit (seq, at, refund_id, actor, action, detail, caller, seal)
         SELECT 4, at, refund_id, actor, action, detail, caller, seal FROM audit WHERE seq = 3",
    );
    assert_eq!(broken_at(&log.check()), Some(4));
    assert_eq!(broken_at(&log.walk()), Some(4));

    let log = Log::new(3);
    // The first row moved below the first number: count and the newest row still look right.
    log.sql("UPDATE audit SET seq = 0 WHERE seq = 1");
    assert!(matches!(log.check(), ChainState::Broken { .. }));
    assert!(matches!(log.walk(), ChainState::Broken { .. }));
}

#[test]
fn an_altered_or_missing_head_is_found() {
    let log = Log::new(3);
    log.sql("UPDATE audit_head SET seq = 2");
    assert!(matches!(log.check(), ChainState::Broken { seq: None, .. }));
    assert!(matches!(log.walk(), ChainState::Broken { seq: None, .. }));
    let log = Log::new(3);
    log.sql("DELETE FROM audit_head");
    assert!(matches!(log.check(), ChainState::Broken { seq: None, .. }));
}

#[test]
fn the_agent_keeps_recording_on_a_broken_chain_without_hiding_the_break() {
    // A truncated tail: new rows go on, the head stays behind, and the break survives restarts.
    let mut log = Log::new(5);
    log.sql("DELETE FROM audit WHERE seq >= 4");
    assert_eq!(log.add(10), 6, "numbers already given out are not given again");
    log.reopen();
    assert_eq!(log.add(11), 7);
    assert!(matches!(log.check(), ChainState::Broken { .. }));
    assert_eq!(broken_at(&log.walk()), Some(4));

    // A missing head is never written again from the rows.
    let mut log = Log::new(2);
    log.sql("DELETE FROM audit_head");
    assert_eq!(log.add(3), 3);
    log.reopen();
    assert!(matches!(log.check(), ChainState::Broken { seq: None, .. }));

    // A row deleted from the middle: the head goes on, the gap stays in the count.
    let mut log = Log::new(4);
    log.sql("DELETE FROM audit WHERE seq = 2");
    assert_eq!(log.add(5), 5);
    log.reopen();
    assert!(matches!(log.check(), ChainState::Broken { .. }));
    assert_eq!(broken_at(&log.walk()), Some(2));
}

#[test]
fn the_upgrade_numbers_and_chains_the_rows_present() {
    let mut log = Log::new(4);
    downgrade_for_tests(&log.conn);
    // A queue from before the chain, with a gap in its numbers (a row deleted before the chain existed).
    let before = crate::queue::migrate::AUDIT_CHAIN - 1;
    // The later versions' tables go too, as they would not exist yet.
    log.sql(&format!(
        "DELETE FROM audit WHERE seq = 2; DROP TABLE generation; PRAGMA user_version = {before};"
    ));
    log.reopen();
    assert_eq!(log.check(), ChainState::Intact { rows: 3 }, "the rows present are trusted");
    assert_eq!(log.walk(), ChainState::Intact { rows: 3 });
    let seqs: Vec<i64> = for_refund(&log.conn, "refund-0").expect("rows").iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 3], "renumbered in their order");
    assert_eq!(log.add(9), 4);
    assert_eq!(log.walk(), ChainState::Intact { rows: 4 });
}

/// The device key never reaches SQL: the queue's connection has no function that seals, so
/// neither a statement nor a view planted in the file can make a seal.
#[test]
fn no_seal_can_be_made_through_sql() {
    let log = Log::new(0);
    let refused =
        log.conn.query_row("SELECT refund_agent_audit_seal('refund', x'00')", [], |r| r.get::<_, Vec<u8>>(0));
    assert!(refused.is_err(), "a refund seal cannot be made through SQL");
    // A view planted in the file cannot reach the key either.
    log.sql("CREATE VIEW forged AS SELECT refund_agent_audit_seal('audit', x'00') AS seal");
    let planted = log.conn.query_row("SELECT seal FROM forged", [], |r| r.get::<_, Vec<u8>>(0));
    assert!(planted.is_err(), "a view calling the seal function must fail");
}

#[test]
fn status_keeps_a_break_the_walk_found() {
    let whole = AuditStatus::default();
    assert_eq!(with_walk(whole.clone(), None), whole, "not walked yet");
    assert!(with_walk(whole.clone(), Some(&ChainState::Intact { rows: 3 })).walked);
    let found = with_walk(whole, Some(&ChainState::Broken { seq: Some(2), problem: "gone".into() }));
    assert!(found.broken && found.walked);
    assert_eq!((found.first_broken_seq, found.problem.as_deref()), (Some(2), Some("gone")));
}

/// One change someone with the file could make.
#[derive(Debug, Clone)]
enum Tamper {
    Delete(usize),
    Edit(usize),
    Swap(usize, usize),
    Truncate(usize),
    Append,
}

fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        any::<usize>().prop_map(Tamper::Delete),
        any::<usize>().prop_map(Tamper::Edit),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Tamper::Swap(a, b)),
        any::<usize>().prop_map(Tamper::Truncate),
        Just(Tamper::Append),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_change_outside_the_agent_is_found(n in 1usize..12, change in tamper(), extra in 0usize..3) {
        let log = Log::new(n);
        let pick = |i: usize| (i % n) as i64 + 1;
        match &change {
            Tamper::Delete(i) => log.sql(&format!("DELETE FROM audit WHERE seq = {}", pick(*i))),
            Tamper::Edit(i) => log.sql(&format!("UPDATE audit SET at = at + 1 WHERE seq = {}", pick(*i))),
            Tamper::Swap(a, b) => {
                let (a, b) = (pick(*a), pick(*b));
                prop_assume!(a != b);
                log.sql(&format!(
                    "UPDATE audit SET seq = -1 WHERE seq = {a}; UPDATE audit SET seq = {a} WHERE seq = {b};
                     UPDATE audit SET seq = {b} WHERE seq = -1;"
                ));
            }
            Tamper::Truncate(i) => log.sql(&format!("DELETE FROM audit WHERE seq >= {}", pick(*i))),
            Tamper::Append => log.sql(&format!(
                "INSERT INTO audit (seq, at, actor, action, detail, seal) VALUES ({}, 1, 'x', 'created', 'x', x'00')",
                n + 1
            )),
        }
        // The agent may go on recording after the change; the break must stay visible.
        for i in 0..extra {
            log.add(100 + i as i64);
        }
        let walked = log.walk();
        prop_assert!(matches!(walked, ChainState::Broken { .. }), "{change:?} then {extra} rows: {walked:?}");
        if matches!(change, Tamper::Delete(_) | Tamper::Truncate(_) | Tamper::Append) {
            let checked = log.check();
            prop_assert!(matches!(checked, ChainState::Broken { .. }), "{change:?}: {checked:?}");
        }
    }
}
