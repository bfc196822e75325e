//! The delivery state machine and how a refund's state follows from its deliveries, and the
//! sets of states the queue's SQL selects on (one definition each; the SQL lists are generated
//! from them by [`sql_list`]). Pure.
//!
//! ```text
//!             claim              2xx / 409 on a known id
//!  pending ─────────▶ in_flight ───────────────────────────▶ delivered
//!     ▲                  │ ├── 400/422 (refused)  ─────────▶ declined
//!     │ transient error  │ ├── other 4xx ─────────────────▶ failed
//!     └──────────────────┘ └── outcome unknown, no dedup ──▶ unknown ──(a person)──▶ delivered | failed
//!                                                        unknown ──(a ZVT lookup, `lookup.rs`)──▶ delivered | declined
//!  pending ──(cancel before money moved / an earlier money-moving destination declined)──▶ cancelled
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The state of one delivery (one refund at one destination).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    InFlight,
    Delivered,
    Declined,
    Failed,
    Unknown,
    Cancelled,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 7] = [
        DeliveryState::Pending,
        DeliveryState::InFlight,
        DeliveryState::Delivered,
        DeliveryState::Declined,
        DeliveryState::Failed,
        DeliveryState::Unknown,
        DeliveryState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::InFlight => "in_flight",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Declined => "declined",
            DeliveryState::Failed => "failed",
            DeliveryState::Unknown => "unknown",
            DeliveryState::Cancelled => "cancelled",
        }
    }

    /// A final state never changes again without a person.
    pub fn is_final(self) -> bool {
        !matches!(self, DeliveryState::Pending | DeliveryState::InFlight)
    }

    /// The transitions the sync worker may make. Anything else is a bug, refused loudly.
    pub fn can_become(self, next: DeliveryState) -> bool {
        use DeliveryState::*;
        matches!(
            (self, next),
            (Pending, InFlight)
                | (Pending, Cancelled)
                | (InFlight, Pending)
                | (InFlight, InFlight)
                | (InFlight, Delivered)
                | (InFlight, Declined)
                | (InFlight, Failed)
                | (InFlight, Unknown)
        )
    }
}

impl StoredState for DeliveryState {
    fn as_str(self) -> &'static str {
        DeliveryState::as_str(self)
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeliveryState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown delivery state {s:?}"))
    }
}

/// The state of a refund as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundState {
    /// Some delivery still has work to do.
    Queued,
    /// Every destination has it.
    Delivered,
    /// A destination refused it before anything was delivered: no money moved, and it no longer
    /// counts against the sale's refundable balance.
    Declined,
    /// A delivery ended without success after another had been made, or permanently failed
    /// (e.g. credentials refused): a person must look at it.
    Failed,
    /// A request may or may not have reached a destination that does not deduplicate: a person
    /// must resolve it.
    Unknown,
    /// Cancelled before any money moved.
    Cancelled,
    /// Undelivered for longer than `max_pending_age`: held for a person to decide.
    Expired,
}

impl RefundState {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundState::Queued => "queued",
            RefundState::Delivered => "delivered",
            RefundState::Declined => "declined",
            RefundState::Failed => "failed",
            RefundState::Unknown => "unknown",
            RefundState::Cancelled => "cancelled",
            RefundState::Expired => "expired",
        }
    }

    pub const ALL: [RefundState; 7] = [
        RefundState::Queued,
        RefundState::Delivered,
        RefundState::Declined,
        RefundState::Failed,
        RefundState::Unknown,
        RefundState::Cancelled,
        RefundState::Expired,
    ];

    /// Refunds whose money is still "out there" undelivered: they count towards the exposure
    /// cap and the queue length (`open_totals`), and towards the pending amount in status.
    pub const OPEN: [RefundState; 3] = [RefundState::Queued, RefundState::Expired, RefundState::Unknown];

    /// Refunds that no longer count against the sale's refundable balance: no money moved.
    pub const RELEASED: [RefundState; 2] = [RefundState::Cancelled, RefundState::Declined];

    /// Refunds finished for good: the only ones retention may purge.
    pub const FINAL: [RefundState; 3] =
        [RefundState::Delivered, RefundState::Cancelled, RefundState::Declined];

    /// Whether the refund still counts against the sale's refundable balance.
    pub fn counts_against_sale(self) -> bool {
        !RefundState::RELEASED.contains(&self)
    }

    /// Whether the refund's money is still "out there" undelivered (exposure cap, queue length).
    pub fn is_open(self) -> bool {
        RefundState::OPEN.contains(&self)
    }
}

impl StoredState for RefundState {
    fn as_str(self) -> &'static str {
        RefundState::as_str(self)
    }
}

impl fmt::Display for RefundState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RefundState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RefundState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown refund state {s:?}; one of queued, delivered, declined, failed, unknown, cancelled, expired"))
    }
}

/// A state stored as text in SQLite.
pub trait StoredState: Copy {
    /// The stored text: lower-case ASCII words, so an SQL literal needs no escaping.
    fn as_str(self) -> &'static str;
}

/// A state column as read back from SQLite: a state this agent knows, or the text of one it
/// does not. An unknown state never reads as some default: [`Stored::get`] is an error, so the
/// row fails its `open` and is quarantined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored<S> {
    Known(S),
    Unknown(String),
}

impl<S: StoredState + FromStr<Err = String>> Stored<S> {
    pub fn read(text: String) -> Stored<S> {
        match text.parse() {
            Ok(state) => Stored::Known(state),
            Err(_) => Stored::Unknown(text),
        }
    }

    /// The state, or why the stored text names none.
    pub fn get(&self) -> Result<S, String> {
        match self {
            Stored::Known(state) => Ok(*state),
            Stored::Unknown(text) => text.parse(),
        }
    }

    /// The text as stored (and sealed).
    pub fn as_str(&self) -> &str {
        match self {
            Stored::Known(state) => state.as_str(),
            Stored::Unknown(text) => text,
        }
    }
}

impl<S> From<S> for Stored<S> {
    fn from(state: S) -> Stored<S> {
        Stored::Known(state)
    }
}

/// One state as an SQL literal: `'pending'`.
pub fn sql_literal(state: impl StoredState) -> String {
    format!("'{}'", state.as_str())
}

/// A set of states as an SQL list, for `state IN …`: `('queued', 'expired', 'unknown')`.
pub fn sql_list<S: StoredState>(states: &[S]) -> String {
    let literals: Vec<String> = states.iter().map(|s| sql_literal(*s)).collect();
    format!("({})", literals.join(", "))
}

/// A refund's state from its deliveries (in destination order). `Cancelled` and `Expired` are
/// set by decisions, not derived, and are kept by the caller.
pub fn aggregate(deliveries: &[DeliveryState]) -> RefundState {
    use DeliveryState as D;
    if deliveries.contains(&D::Unknown) {
        return RefundState::Unknown;
    }
    let any_delivered = deliveries.contains(&D::Delivered);
    if deliveries.contains(&D::Declined) {
        return if any_delivered { RefundState::Failed } else { RefundState::Declined };
    }
    if deliveries.contains(&D::Failed) {
        return RefundState::Failed;
    }
    if !deliveries.is_empty() && deliveries.iter().all(|d| *d == D::Delivered) {
        return RefundState::Delivered;
    }
    if !deliveries.is_empty() && deliveries.iter().all(|d| *d == D::Cancelled) {
        return RefundState::Cancelled;
    }
    RefundState::Queued
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use DeliveryState as D;

    #[test]
    fn aggregate_examples() {
        assert_eq!(aggregate(&[D::Pending, D::Pending]), RefundState::Queued);
        assert_eq!(aggregate(&[D::Delivered, D::InFlight]), RefundState::Queued);
        assert_eq!(aggregate(&[D::Delivered, D::Delivered]), RefundState::Delivered);
        assert_eq!(aggregate(&[D::Declined, D::Cancelled]), RefundState::Declined);
        assert_eq!(aggregate(&[D::Delivered, D::Declined]), RefundState::Failed);
        assert_eq!(aggregate(&[D::Unknown, D::Pending]), RefundState::Unknown);
    }

    #[test]
    fn sql_lists_name_the_states() {
        assert_eq!(sql_list(&RefundState::OPEN), "('queued', 'expired', 'unknown')");
        assert_eq!(sql_literal(DeliveryState::InFlight), "'in_flight'");
    }

    #[test]
    fn final_states_do_not_move_without_a_person() {
        for s in [D::Delivered, D::Declined, D::Failed, D::Unknown, D::Cancelled] {
            for n in [D::Pending, D::InFlight, D::Delivered, D::Declined, D::Failed, D::Unknown] {
                assert!(!s.can_become(n), "{s} -> {n}");
            }
        }
    }

    fn any_state() -> impl Strategy<Value = DeliveryState> {
        prop_oneof![
            Just(D::Pending),
            Just(D::InFlight),
            Just(D::Delivered),
            Just(D::Declined),
            Just(D::Failed),
            Just(D::Unknown),
            Just(D::Cancelled)
        ]
    }

    proptest! {
        #[test]
        fn delivered_only_when_every_delivery_is(states in proptest::collection::vec(any_state(), 1..5)) {
            let agg = aggregate(&states);
            prop_assert_eq!(agg == RefundState::Delivered, states.iter().all(|s| *s == D::Delivered));
            if states.contains(&D::Unknown) { prop_assert_eq!(agg, RefundState::Unknown); }
            // Money that moved somewhere is never reported as a declined (not counted) refund.
            if states.contains(&D::Delivered) { prop_assert!(agg.counts_against_sale()); }
        }

        #[test]
        fn state_names_round_trip(s in any_state()) {
            prop_assert_eq!(s.as_str().parse::<DeliveryState>().unwrap(), s);
        }
    }
}
