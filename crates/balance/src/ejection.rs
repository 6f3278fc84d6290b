//! Passive ejection: a replica that refuses, resets or times out is taken out at once, for a
//! period that doubles while it keeps failing (Envoy's outlier detection, without waiting
//! for the next active check).

use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

/// How long passive ejections last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EjectionBackoff {
    /// The first ejection's length.
    pub base: Duration,
    /// The longest ejection, however many times it failed in a row.
    pub max: Duration,
}

impl Default for EjectionBackoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

impl EjectionBackoff {
    /// The ejection after `streak` failures in a row (the first is `base`).
    pub(crate) fn period(&self, streak: u32) -> Duration {
        let factor = 1u32
            .checked_shl(streak.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// A replica's passive-ejection state, nanoseconds on the balancer's clock.
#[derive(Debug, Default)]
pub(crate) struct Ejection {
    until: AtomicU64,
    streak: AtomicU32,
    last_failure: AtomicU64,
}

impl Ejection {
    #[inline]
    pub(crate) fn is_ejected(&self, now: u64) -> bool {
        now < self.until.load(Ordering::Relaxed)
    }

    /// Records a failure and ejects. Failures while already ejected (the other requests in
    /// flight when it died) do not lengthen the backoff. Returns the ejection when new.
    pub(crate) fn fail(&self, now: u64, backoff: &EjectionBackoff) -> Option<Duration> {
        self.last_failure.store(now, Ordering::Relaxed);
        if self.is_ejected(now) {
            return None;
        }
        let streak = self
            .streak
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let period = backoff.period(streak);
        let nanos = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX);
        self.until
            .store(now.saturating_add(nanos), Ordering::Relaxed);
        Some(period)
    }

    /// A successful answer ends the streak (one load, and a store only when it was set).
    #[inline]
    pub(crate) fn succeed(&self) {
        if self.streak.load(Ordering::Relaxed) != 0 {
            self.streak.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn last_failure(&self) -> u64 {
        self.last_failure.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejections_double_while_failing_and_reset_after_a_success() {
        let backoff = EjectionBackoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(350),
        };
        let e = Ejection::default();
        let ms = 1_000_000u64;
        assert_eq!(e.fail(0, &backoff), Some(Duration::from_millis(100)));
        // Concurrent failures while ejected do not count.
        assert_eq!(e.fail(50 * ms, &backoff), None);
        assert!(e.is_ejected(99 * ms));
        assert!(!e.is_ejected(100 * ms));
        assert_eq!(e.fail(100 * ms, &backoff), Some(Duration::from_millis(200)));
        assert_eq!(e.fail(300 * ms, &backoff), Some(Duration::from_millis(350)));
        assert_eq!(e.fail(700 * ms, &backoff), Some(Duration::from_millis(350)));
        assert_eq!(e.last_failure(), 700 * ms);
        e.succeed();
        assert_eq!(
            e.fail(2000 * ms, &backoff),
            Some(Duration::from_millis(100))
        );
        assert_eq!(backoff.period(200), Duration::from_millis(350));
    }
}
