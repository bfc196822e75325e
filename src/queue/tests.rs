//! Queue operations on a real SQLite file, and a property test of the delivery state machine
//! over random sequences of operations.

use proptest::prelude::*;
use rusqlite::Connection;
use tempfile::TempDir;

use super::ops::{self, Recorded};
use super::owner::{Db, QueueSettings};
use super::{schema, DeliveryState, Sealer};
use crate::refund::{Policy, RefundDraft};
use crate::routing::{Route, Router};
use crate::sale::tests::example_input;

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
                max_refund: None,
                max_pending_total: None,
                max_queue_len: None,
                allow_unlinked: false,
            },
            router: Router::new(vec![Route { processor: "*".into(), destinations: names.clone() }], names),
            max_pending_age_ms: None,
            retention_ms: None,
        };
        let f = Fixture { _dir: dir, conn, sealer, settings };
        f.db(|db| ops::add_sale(db, example_input(), 0).unwrap().unwrap());
        f
    }

    fn db<T>(&self, f: impl FnOnce(&Db<'_>) -> T) -> T {
        f(&Db { conn: &self.conn, sealer: &self.sealer, settings: &self.settings })
    }

    fn create(&self, amount: &str) -> String {
        let draft = RefundDraft {
            receipt_id: Some("RCP-2025-001".into()),
            amount: amount.into(),
            reason: "r".into(),
            operator: "o".into(),
            ..RefundDraft::default()
        };
        self.db(|db| ops::create_refund(db, draft, None, 1).unwrap().unwrap().refund.id)
    }

    fn state(&self, id: &str) -> String {
        self.db(|db| ops::view(db, id, 0).unwrap().unwrap().state)
    }

    fn deliveries(&self, id: &str) -> Vec<String> {
        self.db(|db| ops::view(db, id, 0).unwrap().unwrap().deliveries.into_iter().map(|d| d.state).collect())
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
            .prepare(
                "SELECT currency, SUM(amount_minor), COUNT(*) FROM refunds
                 WHERE state IN ('queued', 'expired', 'unknown') GROUP BY currency ORDER BY currency",
            )
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
    let claims = f.db(|db| ops::claim_due(db, 10, 10, &[]).unwrap());
    assert_eq!(claims.len(), 1, "only the first destination is due");
    assert_eq!(claims[0].destination, "a");
    assert!(f.db(|db| ops::claim_due(db, 10, 10, &[]).unwrap()).is_empty(), "in flight is not claimed twice");
    f.db(|db| ops::record(db, &id, 0, Recorded::Delivered { remote_id: Some("r1".into()) }, 11).unwrap());
    let claims = f.db(|db| ops::claim_due(db, 12, 10, &[]).unwrap());
    assert_eq!(claims[0].destination, "b");
    f.db(|db| ops::record(db, &id, 1, Recorded::Delivered { remote_id: None }, 13).unwrap());
    assert_eq!(f.state(&id), "delivered");
    f.assert_totals_consistent();
}

#[test]
fn a_decline_cancels_later_destinations_and_frees_the_balance() {
    let f = Fixture::new(&["a", "b"]);
    let id = f.create("90.00");
    f.db(|db| ops::claim_due(db, 10, 10, &[]).unwrap());
    f.db(|db| ops::record(db, &id, 0, Recorded::Declined { error: "no".into() }, 11).unwrap());
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
    f.db(|db| ops::claim_due(db, 10, 10, &[]).unwrap());
    let report = f.db(|db| ops::recover(db, &|d| d == "dedup", 20).unwrap());
    assert_eq!((report.resent, report.unknown), (1, 0));
    assert_eq!(f.deliveries(&id1), ["pending", "pending"]);

    f.db(|db| ops::claim_due(db, 30, 10, &[]).unwrap());
    f.db(|db| ops::record(db, &id1, 0, Recorded::Delivered { remote_id: None }, 31).unwrap());
    f.db(|db| ops::claim_due(db, 32, 10, &[]).unwrap());
    let report = f.db(|db| ops::recover(db, &|d| d == "dedup", 40).unwrap());
    assert_eq!((report.resent, report.unknown), (0, 1));
    assert_eq!(f.state(&id1), "unknown");
    f.assert_totals_consistent();
}

#[test]
fn progress_keeps_the_step_across_a_crash() {
    let f = Fixture::new(&["dedup"]);
    let id = f.create("1.00");
    f.db(|db| ops::claim_due(db, 10, 10, &[]).unwrap());
    f.db(|db| {
        ops::record(db, &id, 0, Recorded::Progress { step: 1, remote_id: Some("x".into()) }, 11).unwrap()
    });
    f.db(|db| ops::recover(db, &|_| true, 12).unwrap());
    let claim = f.db(|db| ops::claim_due(db, 13, 10, &[]).unwrap()).remove(0);
    assert_eq!((claim.step, claim.remote_id.as_deref()), (1, Some("x")));
}

#[test]
fn held_destinations_are_not_claimed() {
    let f = Fixture::new(&["a"]);
    f.create("1.00");
    assert!(f.db(|db| ops::claim_due(db, 10, 10, &["a".to_string()]).unwrap()).is_empty());
    assert_eq!(f.db(|db| ops::next_due(db, &["a".to_string()]).unwrap()), None);
    assert_eq!(f.db(|db| ops::claim_due(db, 10, 10, &[]).unwrap()).len(), 1);
}

#[derive(Debug, Clone)]
enum Op {
    Create(u32),
    Claim,
    Record(usize, u8),
    Recover(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u32..3000).prop_map(Op::Create),
        Just(Op::Claim),
        (any::<usize>(), 0u8..6).prop_map(|(i, o)| Op::Record(i, o)),
        any::<bool>().prop_map(Op::Recover),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever happens, in any order: totals match a recount, a final delivery never changes,
    /// a refund's state follows its deliveries, and no delivery runs before an earlier one
    /// was delivered.
    #[test]
    fn the_state_machine_keeps_its_invariants(ops_list in proptest::collection::vec(op(), 1..40)) {
        let f = Fixture::new(&["a", "b"]);
        let mut in_flight: Vec<(String, i64)> = Vec::new();
        let mut finals: std::collections::HashMap<(String, i64), String> = Default::default();
        for (now, op) in (101i64..).zip(ops_list) {
            match op {
                Op::Create(cents) => {
                    let amount = format!("{}.{:02}", cents / 100, cents % 100);
                    let draft = RefundDraft {
                        receipt_id: Some("RCP-2025-001".into()), amount, reason: "r".into(),
                        operator: "o".into(), tax: Some("0".into()), ..RefundDraft::default()
                    };
                    // Over-refunds are rejected; that is fine here.
                    let _ = f.db(|db| ops::create_refund(db, draft, None, now).unwrap());
                }
                Op::Claim => {
                    for c in f.db(|db| ops::claim_due(db, now, 5, &[]).unwrap()) {
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
                    f.db(|db| ops::record(db, &id, pos, outcome, now).unwrap());
                    if keeps_flying { in_flight.push((id, pos)); }
                }
                Op::Record(..) => {}
                Op::Recover(dedup) => {
                    f.db(|db| ops::recover(db, &|_| dedup, now).unwrap());
                    in_flight.clear();
                }
            }
            f.assert_totals_consistent();
            for r in f.db(|db| ops::list(db, None, 1000, now).unwrap()) {
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
    }
}
