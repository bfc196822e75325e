//! Retry decisions as data: what the queue records for a connector's [`Attempt`]. Pure.

use std::time::Duration;

use crate::destinations::http::MAX_RETRY_AFTER;
use crate::destinations::{Attempt, Capability};
use crate::queue::Recorded;

/// Exponential backoff with full jitter, capped: a random delay in `[0, min(max, initial·2ⁿ⁻¹)]`
/// for the n-th attempt, but never less than what the server asked for in `Retry-After` (capped
/// at `http::MAX_RETRY_AFTER` when read). No delay is thus longer than [`longest_delay`].
/// `unit` is a random number in `[0, 1)`.
pub fn backoff(
    attempts: i64,
    initial: Duration,
    max: Duration,
    retry_after: Option<Duration>,
    unit: f64,
) -> Duration {
    let exp = attempts.clamp(1, 32) - 1;
    let ceiling = initial.saturating_mul(1u32 << exp.min(31)).min(max);
    let jittered = ceiling.mul_f64(unit.clamp(0.0, 1.0));
    match retry_after {
        Some(asked) => jittered.max(asked),
        None => jittered,
    }
}

/// `base` scaled by a factor from 0.5 to 1.5 (`unit` in `[0, 1)`): a wait that keeps its mean
/// but differs from one till to the next (the worker's probes of an unreachable destination). Pure.
pub fn spread(base: Duration, unit: f64) -> Duration {
    base.mul_f64(0.5 + unit.clamp(0.0, 1.0))
}

/// The longest delay the agent sets before a retry: `backoff_max`, or the cap on a server's
/// `Retry-After`, whichever is longer. A due time further ahead than this was set before the
/// wall clock went back (`clock::is_due`).
pub fn longest_delay(backoff_max: Duration) -> Duration {
    backoff_max.max(MAX_RETRY_AFTER)
}

/// Whether the money of a refund routed to `route` moves at a destination. Where none moves
/// money (a cash sale), the cashier paid out at the till when the refund was acknowledged. A
/// destination no longer configured counts as not moving money: that way a refusal is `failed`
/// for a person, never a `declined` that would free the sale's balance.
pub fn route_moves_money(route: &[String], capability_of: impl Fn(&str) -> Option<Capability>) -> bool {
    route.iter().any(|d| capability_of(d).is_some_and(|c| c.moves_money))
}

/// Maps an attempt to what is recorded. An ambiguous request (no answer, or a 5xx that may follow
/// a commit: `http::retry_status`) is retried only where the destination deduplicates; elsewhere
/// it becomes `unknown` for a person, never a second payment. On a route where no destination
/// moves money (`route_moves_money` false) a refusal is `failed`, never `declined`: the money
/// was paid out at the till, so the sale's balance stays used until a person records it.
pub fn decide(
    attempt: Attempt,
    capability: Capability,
    route_moves_money: bool,
    now_ms: i64,
    delay: impl Fn(Option<Duration>) -> Duration,
) -> Recorded {
    let retry_at = |after: Option<Duration>| now_ms + delay(after).as_millis() as i64;
    match attempt {
        Attempt::Delivered { remote_id } => Recorded::Delivered { remote_id },
        Attempt::Progress { step, remote_id } => Recorded::Progress { step, remote_id },
        Attempt::Declined(error) if !route_moves_money => Recorded::Failed {
            error: format!("refused ({error}); the money was paid out at the till: record it by hand"),
        },
        Attempt::Declined(error) => Recorded::Declined { error },
        Attempt::Failed(error) => Recorded::Failed { error },
        Attempt::Transient { retry_after, error } => Recorded::Retry { at_ms: retry_at(retry_after), error },
        Attempt::Unreachable(error) => Recorded::Retry { at_ms: retry_at(None), error },
        Attempt::Ambiguous(error) if capability.dedup => Recorded::Retry {
            at_ms: retry_at(None),
            error: format!("outcome unknown ({error}); sending again, the destination deduplicates"),
        },
        Attempt::Ambiguous(error) => Recorded::Unknown {
            error: format!("outcome unknown ({error}); the destination may have processed it and does not deduplicate: resolve by hand"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn probe_waits_are_spread_around_their_mean() {
        let base = Duration::from_secs(2);
        assert_eq!(spread(base, 0.0), Duration::from_secs(1));
        assert_eq!(spread(base, 0.5), base);
        assert_eq!(spread(base, 0.999_999).as_millis(), 2_999);
        assert_eq!(spread(base, 7.0), Duration::from_secs(3), "a unit out of range is clamped");
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn ambiguous_is_retried_only_with_dedup() {
        let dedup = Capability { dedup: true, moves_money: false };
        let no_dedup = Capability { dedup: false, moves_money: true };
        let a = || Attempt::Ambiguous("timeout".into());
        assert!(matches!(decide(a(), dedup, true, 0, |_| S), Recorded::Retry { at_ms: 1000, .. }));
        assert!(matches!(decide(a(), no_dedup, true, 0, |_| S), Recorded::Unknown { .. }));
    }

    #[test]
    fn a_refusal_on_a_cash_route_is_failed_not_declined() {
        let finalpos = Capability { dedup: true, moves_money: false };
        let gateway = Capability { dedup: false, moves_money: true };
        let caps = |d: &str| match d {
            "finalpos" => Some(finalpos),
            "gateway" => Some(gateway),
            _ => None,
        };
        let route = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert!(!route_moves_money(&route(&["finalpos"]), caps));
        assert!(!route_moves_money(&route(&["finalpos", "gone"]), caps));
        assert!(route_moves_money(&route(&["gateway", "finalpos"]), caps));
        let declined = || Attempt::Declined("400 bad request".into());
        match decide(declined(), finalpos, false, 0, |_| S) {
            Recorded::Failed { error } => assert!(error.contains("paid out at the till"), "{error}"),
            other => panic!("expected failed, got {other:?}"),
        }
        assert!(matches!(decide(declined(), finalpos, true, 0, |_| S), Recorded::Declined { .. }));
        // The refund's state follows: a failed delivery keeps the sale's balance used.
        use crate::queue::RefundState;
        assert!(RefundState::Failed.counts_against_sale());
        assert!(!RefundState::Declined.counts_against_sale());
    }

    #[test]
    fn retry_after_is_a_floor() {
        let d = backoff(1, S, Duration::from_secs(300), Some(Duration::from_secs(30)), 0.0);
        assert_eq!(d, Duration::from_secs(30));
    }

    #[test]
    fn no_delay_exceeds_the_longest_delay() {
        let max = Duration::from_secs(300);
        assert_eq!(longest_delay(max), MAX_RETRY_AFTER);
        assert_eq!(longest_delay(Duration::from_secs(7200)), Duration::from_secs(7200));
        let asked = Some(MAX_RETRY_AFTER);
        assert!(backoff(40, S, max, asked, 0.99) <= longest_delay(max));
    }

    proptest! {
        #[test]
        fn backoff_stays_within_its_ceiling(attempts in 0i64..10_000, unit in 0.0f64..1.0) {
            let max = Duration::from_secs(300);
            let d = backoff(attempts, S, max, None, unit);
            prop_assert!(d <= max);
            let ceiling = S.saturating_mul(1u32 << (attempts.clamp(1, 32) - 1).min(31) as u32).min(max);
            prop_assert!(d <= ceiling);
        }
    }
}
