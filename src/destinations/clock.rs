//! How far the till's clock is from each destination's. Kiosks often boot with a wrong clock (no
//! RTC battery, NTP not reached yet), and a signed API such as Olive refuses a timestamp more
//! than a few minutes from its own. Every response's `Date` header tells us the server's time;
//! the difference is kept per destination, and a connector that signs adds it to local time.
//!
//! The measurement is only as fine as the `Date` header (whole seconds), which is plenty for a
//! five-minute signature window.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A clock difference smaller than this is never the reason a server refused a signature.
pub const SKEW_TOLERANCE: Duration = Duration::from_secs(60);

/// Stored while nothing has been measured yet.
const UNMEASURED: i64 = i64::MIN;

/// One destination's measured clock offset (server minus local, in milliseconds), shared between
/// the connector that updates it and whoever reports it (status).
#[derive(Debug, Clone)]
pub struct ClockOffset(Arc<AtomicI64>);

impl Default for ClockOffset {
    fn default() -> Self {
        ClockOffset::new()
    }
}

impl ClockOffset {
    /// An offset not measured yet: local time is used as is.
    pub fn new() -> ClockOffset {
        ClockOffset(Arc::new(AtomicI64::new(UNMEASURED)))
    }

    /// Server time minus local time in milliseconds, once a response carried a `Date` header.
    pub fn offset_ms(&self) -> Option<i64> {
        match self.0.load(Ordering::Relaxed) {
            UNMEASURED => None,
            ms => Some(ms),
        }
    }

    /// Records the offset shown by a response's `Date` header, read at `local_now_ms`
    /// (milliseconds since the Unix epoch); returns it.
    pub fn observe(&self, server_date: SystemTime, local_now_ms: i64) -> i64 {
        let offset = measure_ms(server_date, local_now_ms);
        self.0.store(offset, Ordering::Relaxed);
        offset
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
    fn an_hour_fast_server_is_measured_and_applied() {
        let c = ClockOffset::new();
        let offset = c.observe(at(T + 3600), unix_ms(at(T)));
        assert_eq!(offset, 3_600_500);
        assert_eq!(c.offset_ms(), Some(3_600_500));
        assert_eq!(c.server_now_ms(0), 3_600_500);
        // Clones share the measurement, so status sees what the connector measured.
        let seen_by_status = c.clone();
        c.observe(at(T - 120), unix_ms(at(T)));
        assert_eq!(seen_by_status.offset_ms(), Some(-119_500));
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
