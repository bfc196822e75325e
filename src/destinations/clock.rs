//! How far the till's clock is from each destination's. Kiosks often boot with a wrong clock (no
//! RTC battery, NTP not reached yet), and a signed API such as Olive refuses a timestamp more
//! than a few minutes from its own. Every response's `Date` header tells us the server's time;
//! the difference is kept per destination, and a connector that signs adds it to local time.
//!
//! The measurement is only as fine as the `Date` header (whole seconds), which is plenty for a
//! five-minute signature window.
//!
//! A `Date` is believed only from answers that authenticate it (a 2xx, or the 401 of a stale
//! signature: the connector decides), only within ±24 h, and a jump of more than a minute only
//! when two consecutive trusted answers agree ([`next`]): one broken or hostile answer cannot
//! move the clock the agent signs with.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A clock difference smaller than this is never the reason a server refused a signature. It is
/// also the largest change of offset a single answer may make.
pub const SKEW_TOLERANCE: Duration = Duration::from_secs(60);

/// The largest offset believed: a `Date` further off is a broken or hostile server, not a till
/// clock that booted wrong.
pub const MAX_OFFSET: Duration = Duration::from_secs(24 * 3600);

/// What became of one answer's `Date` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The answer had no usable `Date`.
    NoDate,
    /// The answer does not authenticate its `Date` (not a 2xx, nor a stale signature's 401),
    /// so it was not looked at.
    Untrusted,
    /// More than [`MAX_OFFSET`] off: ignored.
    OutOfRange,
    /// Within [`SKEW_TOLERANCE`] of the offset in use, which it now refines.
    Kept,
    /// A second answer agreed with the first one that jumped: the new offset is in use.
    Adopted,
    /// A jump seen once; it is used only when the next trusted answer agrees.
    Awaiting,
    /// A jump that disagrees with the jump seen before: the two wait for a third.
    Disagreed,
}

/// The offset in use and a jump waiting to be confirmed (milliseconds, server minus local).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffsetState {
    pub in_use: Option<i64>,
    pub candidate: Option<i64>,
}

/// How a trusted measurement moves the offset. Pure. A jump of more than a minute from the offset
/// in use (zero before any) must be seen in two consecutive trusted answers that agree within a
/// minute: one bad `Date` never moves the signing clock.
pub fn next(state: OffsetState, measured_ms: i64) -> (OffsetState, Observed) {
    let close = |a: i64, b: i64| a.abs_diff(b) <= SKEW_TOLERANCE.as_millis() as u64;
    if measured_ms.unsigned_abs() > MAX_OFFSET.as_millis() as u64 {
        return (OffsetState { candidate: None, ..state }, Observed::OutOfRange);
    }
    if close(measured_ms, state.in_use.unwrap_or(0)) {
        return (OffsetState { in_use: Some(measured_ms), candidate: None }, Observed::Kept);
    }
    match state.candidate {
        Some(c) if close(measured_ms, c) => {
            (OffsetState { in_use: Some(measured_ms), candidate: None }, Observed::Adopted)
        }
        Some(_) => (OffsetState { candidate: Some(measured_ms), ..state }, Observed::Disagreed),
        None => (OffsetState { candidate: Some(measured_ms), ..state }, Observed::Awaiting),
    }
}

/// One destination's clock offset, shared between the connector that updates it and whoever
/// reports it (status).
#[derive(Debug, Clone, Default)]
pub struct ClockOffset(Arc<Mutex<OffsetState>>);

impl ClockOffset {
    /// An offset not measured yet: local time is used as is.
    pub fn new() -> ClockOffset {
        ClockOffset::default()
    }

    fn state(&self) -> OffsetState {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Server time minus local time in milliseconds, once trusted answers established it.
    pub fn offset_ms(&self) -> Option<i64> {
        self.state().in_use
    }

    /// Takes in the `Date` of an answer that authenticates it, read at `local_now_ms`
    /// (milliseconds since the Unix epoch), by the rule of [`next`].
    pub fn observe(&self, server_date: SystemTime, local_now_ms: i64) -> Observed {
        let measured = measure_ms(server_date, local_now_ms);
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (updated, observed) = next(*state, measured);
        *state = updated;
        observed
    }

    /// The server's idea of "now", in milliseconds since the Unix epoch, for a local time.
    pub fn server_now_ms(&self, local_now_ms: i64) -> i64 {
        local_now_ms.saturating_add(self.offset_ms().unwrap_or(0))
    }
}

/// Server time minus a local time (milliseconds since the Unix epoch), in milliseconds. A `Date`
/// header is truncated to the second, so the server's clock was somewhere in the following
/// second: its middle is the best guess.
pub fn measure_ms(server_date: SystemTime, local_ms: i64) -> i64 {
    unix_ms(server_date).saturating_add(500).saturating_sub(local_ms)
}

/// Milliseconds since the Unix epoch (negative before it).
pub fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN + 1, |ms| -ms),
    }
}

/// True when two clocks differ by more than [`SKEW_TOLERANCE`].
pub fn is_skewed(difference_ms: i64) -> bool {
    difference_ms.unsigned_abs() > SKEW_TOLERANCE.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_773_144_000; // 2026-03-10T12:00:00Z

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn nothing_measured_means_local_time() {
        let c = ClockOffset::new();
        assert_eq!(c.offset_ms(), None);
        assert_eq!(c.server_now_ms(1_000), 1_000);
    }

    #[test]
    fn an_hour_fast_server_is_applied_once_two_answers_agree() {
        let c = ClockOffset::new();
        assert_eq!(c.observe(at(T + 3600), unix_ms(at(T))), Observed::Awaiting);
        assert_eq!(c.offset_ms(), None, "one answer does not move the clock");
        assert_eq!(c.observe(at(T + 3601), unix_ms(at(T))), Observed::Adopted);
        assert_eq!(c.offset_ms(), Some(3_601_500));
        assert_eq!(c.server_now_ms(0), 3_601_500);
        // Clones share the measurement, so status sees what the connector measured.
        let seen_by_status = c.clone();
        assert_eq!(c.observe(at(T + 3590), unix_ms(at(T))), Observed::Kept);
        assert_eq!(seen_by_status.offset_ms(), Some(3_590_500));
    }

    #[test]
    fn small_offsets_are_used_at_once() {
        let (s, o) = next(OffsetState::default(), 2_500);
        assert_eq!((s, o), (OffsetState { in_use: Some(2_500), candidate: None }, Observed::Kept));
        let (s, o) = next(s, -50_000);
        assert_eq!((s.in_use, o), (Some(-50_000), Observed::Kept));
    }

    #[test]
    fn more_than_a_day_off_is_never_used() {
        let day = MAX_OFFSET.as_millis() as i64;
        let start = OffsetState { in_use: Some(1_000), candidate: None };
        for far in [day + 1, -day - 1, 30 * day, i64::MIN + 1, i64::MAX] {
            let (s, o) = next(start, far);
            assert_eq!((s, o), (start, Observed::OutOfRange), "{far}");
            let (s, o) = next(s, far);
            assert_eq!((s, o), (start, Observed::OutOfRange), "twice is still out of range: {far}");
        }
        assert_eq!(next(OffsetState::default(), day - 1).1, Observed::Awaiting);
    }

    #[test]
    fn a_jump_is_used_only_when_the_next_answer_agrees() {
        let start = OffsetState { in_use: Some(0), candidate: None };
        let (s, o) = next(start, 7_200_000);
        assert_eq!((s.in_use, s.candidate, o), (Some(0), Some(7_200_000), Observed::Awaiting));
        // The next answer jumps elsewhere: neither is used, the newest waits.
        let (s, o) = next(s, -7_200_000);
        assert_eq!((s.in_use, s.candidate, o), (Some(0), Some(-7_200_000), Observed::Disagreed));
        // An answer near the offset in use ends the wait.
        let (s, o) = next(s, 30_000);
        assert_eq!((s.in_use, s.candidate, o), (Some(30_000), None, Observed::Kept));
        let (s, _) = next(s, 7_200_000);
        let (s, o) = next(s, 7_259_000);
        assert_eq!((s.in_use, s.candidate, o), (Some(7_259_000), None, Observed::Adopted));
    }

    #[test]
    fn an_out_of_range_answer_breaks_a_pair() {
        let (s, _) = next(OffsetState::default(), 3_600_000);
        let (s, _) = next(s, 40 * 24 * 3_600_000);
        assert_eq!(next(s, 3_600_000).1, Observed::Awaiting);
    }

    #[test]
    fn skew_threshold() {
        assert!(!is_skewed(0));
        assert!(!is_skewed(-60_000));
        assert!(is_skewed(60_001));
        assert!(is_skewed(-3_600_000));
    }

    #[test]
    fn times_before_the_epoch_are_negative() {
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(2)), -2_000);
    }
}
