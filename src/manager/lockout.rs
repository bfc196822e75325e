//! The lock-out arithmetic, pure: five wrong PINs in a row for one manager lock that manager for
//! five minutes; a right PIN resets the count. The queue keeps one sealed row per manager
//! (`manager_lockouts`), so the count survives a restart.
//!
//! Times come from the jump-safe `clock::trusted_now_ms`: a wall clock set forward while the
//! agent runs does not end a lock-out early, and a lock-out whose end lies further ahead than
//! [`LOCK_MS`] (the clock went back since it began) is cut to [`LOCK_MS`] from now. A clock
//! set forward while the agent is stopped is believed at the next start, as for expiry.

/// Wrong PINs in a row that lock a manager.
pub const MAX_FAILURES: u32 = 5;
/// How long a lock-out lasts.
pub const LOCK_MS: i64 = 5 * 60 * 1000;

/// One manager's record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lockout {
    /// Wrong PINs in a row since the last right one (or the last lock-out).
    pub failures: u32,
    /// When the current lock-out ends; `0` when there is none.
    pub locked_until_ms: i64,
}

impl Lockout {
    /// When the lock-out in force at `now` ends, if there is one, cut to [`LOCK_MS`] from now
    /// when the clock went back since it began.
    pub fn locked_until(&self, now: i64) -> Option<i64> {
        (self.locked_until_ms > now).then(|| self.locked_until_ms.min(now.saturating_add(LOCK_MS)))
    }

    /// The record after a wrong PIN at `now`: the fifth in a row locks (and starts the count
    /// again, for after the lock-out).
    pub fn failed(self, now: i64) -> Lockout {
        let failures = self.failures.saturating_add(1);
        if failures >= MAX_FAILURES {
            Lockout { failures: 0, locked_until_ms: now.saturating_add(LOCK_MS) }
        } else {
            Lockout { failures, ..self }
        }
    }

    /// The record after a right PIN.
    pub fn succeeded(self) -> Lockout {
        Lockout { failures: 0, ..self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_800_000_000_000;

    #[test]
    fn five_wrong_pins_lock_for_five_minutes() {
        let mut l = Lockout::default();
        for i in 1..MAX_FAILURES {
            l = l.failed(T + i64::from(i));
            assert_eq!(l.locked_until(T + 10), None, "after {i} failures");
        }
        l = l.failed(T + 10);
        assert_eq!(l.locked_until(T + 10), Some(T + 10 + LOCK_MS));
        assert_eq!(l.locked_until(T + 10 + LOCK_MS - 1), Some(T + 10 + LOCK_MS));
        assert_eq!(l.locked_until(T + 10 + LOCK_MS), None, "over after five minutes");
        assert_eq!(l.failures, 0, "five more tries after the lock-out");
    }

    #[test]
    fn a_right_pin_resets_the_count() {
        let l = Lockout::default().failed(T).failed(T).failed(T).failed(T).succeeded();
        assert_eq!(l.failures, 0);
        assert_eq!(l.failed(T).locked_until(T), None);
    }

    #[test]
    fn a_clock_set_back_does_not_lengthen_a_lock_out() {
        let l = Lockout::default().failed(T).failed(T).failed(T).failed(T).failed(T);
        let back = T - 30 * 86_400_000;
        assert_eq!(l.locked_until(back), Some(back + LOCK_MS));
    }
}
