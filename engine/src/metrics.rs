//! Latency histograms shared by every benchmark and status report.
//!
//! Values are recorded in nanoseconds into an `hdrhistogram` with 3
//! significant digits over 1 ns .. [`LATENCY_NS_MAX`], and reported in
//! microseconds. The histogram is sized when created, so recording never
//! allocates; a value above the maximum is clamped to it and counted in
//! [`LatencyHistogram::clamped`] rather than lost.

use hdrhistogram::Histogram;

/// Largest latency a histogram holds: one hour.
pub const LATENCY_NS_MAX: u64 = 3_600_000_000_000;

/// A latency histogram with nanosecond resolution.
#[derive(Clone)]
pub struct LatencyHistogram {
    h: Histogram<u64>,
    clamped: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// Allocates the whole histogram (about 300 KiB): setup path.
    pub fn new() -> LatencyHistogram {
        let mut h = Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("static bounds are valid");
        h.auto(false);
        LatencyHistogram { h, clamped: 0 }
    }

    /// Records one latency. Never allocates.
    #[inline]
    pub fn record_ns(&mut self, ns: u64) {
        self.record_n_ns(ns, 1);
    }

    /// Records `n` samples of the same latency (one batch of completions
    /// reaped together).
    #[inline]
    pub fn record_n_ns(&mut self, ns: u64, n: u64) {
        let v = ns.clamp(1, LATENCY_NS_MAX);
        if v != ns.max(1) {
            self.clamped += n;
        }
        // Cannot fail: v is within the bounds the histogram was built with.
        let _ = self.h.record_n(v, n);
    }

    pub fn count(&self) -> u64 {
        self.h.len()
    }

    pub fn clamped(&self) -> u64 {
        self.clamped
    }

    /// The latency at percentile `p` (0..=100), in µs.
    pub fn percentile_us(&self, p: f64) -> f64 {
        self.h.value_at_percentile(p) as f64 / 1_000.0
    }

    pub fn min_us(&self) -> f64 {
        if self.count() == 0 {
            0.0
        } else {
            self.h.min() as f64 / 1_000.0
        }
    }

    pub fn max_us(&self) -> f64 {
        self.h.max() as f64 / 1_000.0
    }

    pub fn mean_us(&self) -> f64 {
        self.h.mean() / 1_000.0
    }

    /// Adds another histogram's samples (per-core histograms into a total).
    pub fn merge(&mut self, other: &LatencyHistogram) {
        // Cannot fail: both have identical bounds.
        let _ = self.h.add(&other.h);
        self.clamped += other.clamped;
    }

    pub fn reset(&mut self) {
        self.h.reset();
        self.clamped = 0;
    }

    /// Buckets with samples, as (upper bound µs, count, cumulative fraction),
    /// at the histogram's own resolution: what `-LL` prints and plots draw.
    pub fn buckets_us(&self) -> Vec<(f64, u64, f64)> {
        let total = self.count().max(1) as f64;
        let mut cum = 0u64;
        self.h
            .iter_recorded()
            .map(|v| {
                cum += v.count_at_value();
                (
                    self.h.highest_equivalent(v.value_iterated_to()) as f64 / 1_000.0,
                    v.count_at_value(),
                    cum as f64 / total,
                )
            })
            .collect()
    }

    /// The underlying histogram, for serialisers.
    pub fn inner(&self) -> &Histogram<u64> {
        &self.h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_microseconds() {
        let mut h = LatencyHistogram::new();
        for i in 1..=1000u64 {
            h.record_ns(i * 1_000); // 1..1000 µs
        }
        assert_eq!(h.count(), 1000);
        let p50 = h.percentile_us(50.0);
        assert!((499.0..=501.0).contains(&p50), "p50 {p50}");
        let p99 = h.percentile_us(99.0);
        assert!((989.0..=991.0).contains(&p99), "p99 {p99}");
        assert!((h.min_us() - 1.0).abs() < 0.01);
        assert!((h.max_us() - 1000.0).abs() < 1.0);
    }

    #[test]
    fn merge_and_clamp() {
        let mut a = LatencyHistogram::new();
        let mut b = LatencyHistogram::new();
        a.record_ns(5_000);
        b.record_n_ns(10_000, 3);
        b.record_ns(u64::MAX);
        a.merge(&b);
        assert_eq!(a.count(), 5);
        assert_eq!(a.clamped(), 1);
        let buckets = a.buckets_us();
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 5);
        assert!((buckets.last().unwrap().2 - 1.0).abs() < 1e-9);
    }
}
