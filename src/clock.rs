//! Wall-clock helpers: the queue stores times as milliseconds since the Unix epoch (UTC).
//!
//! A till's clock can be corrected by hours, days or years while the agent runs. Two rules keep
//! refunds safe against such jumps:
//!
//! - **Due times** ([`is_due`]): the agent never sets a next attempt further ahead than its
//!   longest delay (`backoff_max`, or the 1 h cap on `Retry-After` if longer:
//!   `sync::decide::longest_delay`), so a delivery due further ahead than that was scheduled
//!   before the clock went back, and is due now.
//! - **Ages and stamps** ([`trusted_now_ms`]): every time the queue stores (created, updated,
//!   next attempt) and every age it measures (expiry, purge, oldest pending) is on one "trusted"
//!   time line: the wall time when the agent started plus the monotonic time elapsed since. A
//!   jump of the wall clock while the agent runs, either way, moves nothing on that line: no
//!   refund is purged or flagged `expired` early, none waits longer, and the stamps written
//!   before and after the jump stay comparable. (Following the wall clock back and then forward
//!   again would stamp rows in the earlier frame and age them by the whole jump.) A jump while
//!   the agent is stopped cannot be told from time passing: the wall time at the next start is
//!   believed, and [`is_due`] makes a delivery scheduled before a clock went back due at once.
//!   The wire never carries these stamps: signatures use the wall clock corrected by each
//!   destination's `Date` (`destinations::clock`).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64 + test_skew_ms()
}

/// The wall time and the monotonic instant the "trusted now" counts from.
static ANCHOR: OnceLock<(i64, Instant)> = OnceLock::new();

/// Fixes the start of the trusted time line; called once at start (later calls do nothing).
pub fn anchor() {
    trusted_now_ms();
}

/// The wall time (milliseconds since the epoch) the trusted time line starts from: when the
/// agent started, as its clock read then.
pub fn started_at_ms() -> i64 {
    ANCHOR.get_or_init(|| (now_ms(), Instant::now())).0
}

/// Now for everything the queue stamps and every age it measures: see the module doc.
pub fn trusted_now_ms() -> i64 {
    let (wall, mono) = *ANCHOR.get_or_init(|| (now_ms(), Instant::now()));
    trusted(wall, mono.elapsed())
}

/// The trusted now: the anchor's wall time plus the monotonic time since, whatever the wall
/// clock says meanwhile. Pure.
pub fn trusted(anchor_wall_ms: i64, elapsed: Duration) -> i64 {
    let elapsed = i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX);
    anchor_wall_ms.saturating_add(elapsed)
}

/// Whether a delivery whose next attempt is at `next_at_ms` is due at `now_ms`: when that time
/// has come, or when it is further ahead than `max_delay_ms`, the longest delay the agent sets
/// (the clock went back since it was scheduled). Pure.
pub fn is_due(next_at_ms: i64, now_ms: i64, max_delay_ms: i64) -> bool {
    next_at_ms <= now_ms || next_at_ms > now_ms.saturating_add(max_delay_ms)
}

/// Test hook: with the `fault-injection` feature, the file named by
/// `REFUND_AGENT_TEST_CLOCK_SKEW_FILE` holds a millisecond offset added to the wall clock, read
/// on every call, so a test can move the running agent's clock (tests/clock_jump.rs).
#[cfg(feature = "fault-injection")]
fn test_skew_ms() -> i64 {
    std::env::var_os("REFUND_AGENT_TEST_CLOCK_SKEW_FILE")
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(not(feature = "fault-injection"))]
fn test_skew_ms() -> i64 {
    0
}

/// RFC 3339 text for a stored time (`2026-11-23T10:15:00.123Z`).
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn a_delivery_scheduled_before_the_clock_went_back_is_due() {
        let max = 300_000;
        assert!(is_due(1_000, 1_000, max), "its time has come");
        assert!(!is_due(1_000 + max, 1_000, max), "within the longest delay: wait");
        assert!(is_due(1_000 + max + 1, 1_000, max), "further ahead than any delay the agent sets");
        let scheduled = 1_000 * DAY;
        assert!(is_due(scheduled + 60_000, scheduled - 30 * DAY, max), "clock set back 30 days");
    }

    #[test]
    fn a_jump_either_way_while_running_moves_nothing() {
        let start = 1_000 * DAY;
        let hour = Duration::from_secs(3600);
        // Whatever the wall clock reads an hour after start (60 days ahead, 30 days back), the
        // trusted line is an hour on.
        assert_eq!(trusted(start, hour), start + 3_600_000);
        // A stamp taken while the clock was set back and an age measured after it was put
        // right again are on the same line: the age is the time that passed.
        let stamped = trusted(start, hour);
        let later = trusted(start, hour * 2);
        assert_eq!(later - stamped, 3_600_000);
    }

    proptest! {
        #[test]
        fn trusted_time_moves_exactly_with_elapsed_time(
            start in 0i64..4_000_000_000_000, a in 0u64..1_000_000_000, b in 0u64..1_000_000_000,
        ) {
            let (early, late) = (a.min(b), a.max(b));
            let t1 = trusted(start, Duration::from_millis(early));
            let t2 = trusted(start, Duration::from_millis(late));
            prop_assert_eq!(t2 - t1, (late - early) as i64);
            prop_assert_eq!(t1, start + early as i64);
        }

        #[test]
        fn nothing_waits_longer_than_the_longest_delay(next in any::<i64>(), now in -1i64 << 50..1i64 << 50, max in 0i64..1 << 40) {
            if !is_due(next, now, max) {
                prop_assert!(next > now && next - now <= max);
            }
        }
    }
}
