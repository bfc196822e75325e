//! Wall-clock helpers: the queue stores times as milliseconds since the Unix epoch (UTC).
//!
//! A till's clock can be corrected by hours, days or years while the agent runs. Two rules keep
//! refunds safe against such jumps:
//!
//! - **Due times** ([`is_due`]): the agent never sets a next attempt further ahead than its
//!   longest delay (`backoff_max`, or the 1 h cap on `Retry-After` if longer:
//!   `sync::decide::longest_delay`), so a delivery due further ahead than that was scheduled
//!   before the clock went back, and is due now.
//! - **Ages** ([`trusted_now_ms`]): expiry and purge measure age against a "trusted now": the
//!   wall time when the agent started plus the monotonic time elapsed since, never ahead of the
//!   wall clock. A jump forward while the agent runs therefore neither purges finished refunds
//!   early nor flags pending ones `expired`; a jump back only delays both. A jump while the
//!   agent is stopped cannot be told from time passing: the wall time at the next start is
//!   believed (a clock set forward then purges and expires by it).

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

/// Now for measuring ages (expiry, purge): see the module doc.
pub fn trusted_now_ms() -> i64 {
    let (wall, mono) = *ANCHOR.get_or_init(|| (now_ms(), Instant::now()));
    trusted(wall, mono.elapsed(), now_ms())
}

/// The trusted now: the anchor's wall time plus the monotonic time since, capped at the wall
/// clock. Pure.
pub fn trusted(anchor_wall_ms: i64, elapsed: Duration, wall_now_ms: i64) -> i64 {
    let elapsed = i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX);
    anchor_wall_ms.saturating_add(elapsed).min(wall_now_ms)
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
    fn a_jump_forward_does_not_age_anything_and_a_jump_back_is_believed() {
        let start = 1_000 * DAY;
        let hour = Duration::from_secs(3600);
        assert_eq!(trusted(start, hour, start + 60 * DAY), start + 3_600_000, "forward: ignored");
        assert_eq!(trusted(start, hour, start - 30 * DAY), start - 30 * DAY, "back: believed");
        assert_eq!(trusted(start, hour, start + 3_600_000), start + 3_600_000, "no jump");
    }

    proptest! {
        #[test]
        fn trusted_now_is_never_ahead_of_the_wall_clock_or_of_elapsed_time(
            start in 0i64..4_000_000_000_000, elapsed in 0u64..1_000_000_000, wall in 0i64..8_000_000_000_000,
        ) {
            let t = trusted(start, Duration::from_millis(elapsed), wall);
            prop_assert!(t <= wall);
            prop_assert!(t <= start + elapsed as i64);
        }

        #[test]
        fn nothing_waits_longer_than_the_longest_delay(next in any::<i64>(), now in -1i64 << 50..1i64 << 50, max in 0i64..1 << 40) {
            if !is_due(next, now, max) {
                prop_assert!(next > now && next - now <= max);
            }
        }
    }
}
