//! What the router knows of each target from the attempts reported to it:
//! requests in flight, recent latency (an EWMA), and outlier ejection — a
//! target failing `consecutive_failures` times in a row is skipped for
//! `base_time` × the times it has been ejected, at most `max_time`; a target
//! that stays well for a `base_time` after coming back is forgiven.
//!
//! Everything is a relaxed atomic: routing reads these as hints, and a race
//! costs at most one request routed on slightly stale numbers.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use llmgw_kit::config::Ejection;

/// Weight of the newest sample in the latency EWMA.
const EWMA_ALPHA: f64 = 0.3;

#[derive(Debug, Default)]
pub struct Stats {
    in_flight: AtomicI64,
    consecutive_failures: AtomicU32,
    times_ejected: AtomicU32,
    /// Milliseconds since the router's epoch; 0: never ejected.
    ejected_until_ms: AtomicU64,
    /// `f64` bits of the EWMA in milliseconds; `u64::MAX`: no sample yet.
    ewma_ms_bits: AtomicU64,
}

/// The router's clock: milliseconds since it started.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn new() -> Self {
        Self(Instant::now())
    }

    pub fn now_ms(self) -> u64 {
        // Starts at 1 so that 0 can mean "never".
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
    }
}

impl Stats {
    pub fn new() -> Self {
        Self {
            ewma_ms_bits: AtomicU64::new(u64::MAX),
            ..Self::default()
        }
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Relaxed).max(0)
    }

    pub fn started(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    pub fn ended(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    /// The latency EWMA in milliseconds; `None` before the first success.
    pub fn latency_ms(&self) -> Option<f64> {
        match self.ewma_ms_bits.load(Relaxed) {
            u64::MAX => None,
            bits => Some(f64::from_bits(bits)),
        }
    }

    pub fn ejected(&self, now_ms: u64) -> bool {
        now_ms < self.ejected_until_ms.load(Relaxed)
    }

    pub fn times_ejected(&self) -> u32 {
        self.times_ejected.load(Relaxed)
    }

    /// A success: latency sampled, the failure streak over, and a target
    /// that has stayed well for a `base_time` since it came back forgiven.
    pub fn succeeded(&self, latency_ms: f64, ejection: &Ejection, now_ms: u64) {
        if latency_ms.is_finite() && latency_ms >= 0.0 {
            let _ = self.ewma_ms_bits.fetch_update(Relaxed, Relaxed, |bits| {
                let next = match bits {
                    u64::MAX => latency_ms,
                    old => f64::from_bits(old) * (1.0 - EWMA_ALPHA) + latency_ms * EWMA_ALPHA,
                };
                Some(next.to_bits())
            });
        }
        self.consecutive_failures.store(0, Relaxed);
        let until = self.ejected_until_ms.load(Relaxed);
        let base = u64::try_from(ejection.base_time.as_millis()).unwrap_or(u64::MAX);
        if until != 0 && now_ms >= until.saturating_add(base) {
            self.times_ejected.store(0, Relaxed);
        }
    }

    /// A provider-side failure; ejects the target when the streak reaches
    /// the threshold. Returns whether this failure ejected it.
    pub fn failed(&self, ejection: &Ejection, now_ms: u64) -> bool {
        let streak = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if streak < ejection.consecutive_failures || self.ejected(now_ms) {
            return false;
        }
        self.consecutive_failures.store(0, Relaxed);
        let times = self.times_ejected.fetch_add(1, Relaxed) + 1;
        let time = ejection.base_time.saturating_mul(times).min(ejection.max_time);
        let ms = u64::try_from(time.as_millis()).unwrap_or(u64::MAX);
        self.ejected_until_ms.store(now_ms.saturating_add(ms), Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ejection() -> Ejection {
        Ejection {
            consecutive_failures: 3,
            base_time: Duration::from_millis(1000),
            max_time: Duration::from_millis(2500),
        }
    }

    #[test]
    fn ejects_after_the_streak_for_longer_each_time_and_forgives() {
        let e = ejection();
        let s = Stats::new();
        assert!(!s.failed(&e, 10));
        assert!(!s.failed(&e, 10));
        s.succeeded(5.0, &e, 10); // the streak is broken
        assert!(!s.failed(&e, 11));
        assert!(!s.failed(&e, 11));
        assert!(s.failed(&e, 12), "third in a row");
        assert!(s.ejected(12) && s.ejected(1011) && !s.ejected(1012));
        // Back, and failing again: twice as long.
        for _ in 0..3 {
            s.failed(&e, 1100);
        }
        assert!(s.ejected(3099) && !s.ejected(3100));
        // Third time: capped at max_time.
        for _ in 0..3 {
            s.failed(&e, 4000);
        }
        assert_eq!(s.times_ejected(), 3);
        assert!(s.ejected(6499) && !s.ejected(6500));
        // A success soon after coming back keeps the count; one after a
        // whole base_time of health forgives it.
        s.succeeded(5.0, &e, 6600);
        assert_eq!(s.times_ejected(), 3);
        s.succeeded(5.0, &e, 7500);
        assert_eq!(s.times_ejected(), 0);
    }

    #[test]
    fn latency_is_an_ewma_and_in_flight_never_shows_negative() {
        let e = ejection();
        let s = Stats::new();
        assert_eq!(s.latency_ms(), None);
        s.succeeded(100.0, &e, 1);
        s.succeeded(0.0, &e, 1);
        assert!((s.latency_ms().unwrap() - 70.0).abs() < 1e-9);
        s.started();
        s.ended();
        s.ended();
        assert_eq!(s.in_flight(), 0);
    }
}
