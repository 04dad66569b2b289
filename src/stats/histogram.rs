//! The HDR latency histograms and their summary.

use std::fmt;

use hdrhistogram::Histogram;
#[cfg(feature = "serde")]
use serde::Serialize;

use super::*;

/// Percentiles of a latency distribution, in microseconds.
///
/// All fields are zero when no sample was recorded. Percentiles and the maximum are accurate to the
/// histogram's resolution (3 significant digits); the mean is computed from the histogram too.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[non_exhaustive]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    /// Mean latency.
    pub mean_us: f64,
    /// Median latency.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest latency (clamped to 60 s).
    pub max_us: f64,
}

impl LatencySummary {
    pub(crate) fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1_000.0;
        LatencySummary {
            count: h.len(),
            mean_us: h.mean() / 1_000.0,
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// A latency histogram with the crate's fixed bounds.
///
/// `None` only if hdrhistogram refused the (constant, valid) bounds, which it does not; then samples
/// are dropped instead of panicking.
#[derive(Clone)]
pub(crate) struct LatencyHistogram(pub(crate) Option<Histogram<u64>>);

impl LatencyHistogram {
    pub(crate) fn new() -> Self {
        LatencyHistogram(
            Histogram::new_with_bounds(LATENCY_MIN_NS, LATENCY_MAX_NS, LATENCY_SIGFIGS).ok(),
        )
    }

    /// Records one sample, clamped into range. No allocation.
    #[inline]
    pub(crate) fn record(&mut self, ns: u64) {
        if let Some(h) = &mut self.0 {
            h.saturating_record(ns);
        }
    }

    /// Records `n` samples of `ns`, clamped into range. No allocation.
    pub(crate) fn record_n(&mut self, ns: u64, n: u64) {
        if let Some(h) = &mut self.0 {
            h.saturating_record_n(ns, n);
        }
    }

    /// Adds every sample of `other` (exact: bucket counts are summed).
    pub(crate) fn merge(&mut self, other: &LatencyHistogram) {
        let Some(src) = &other.0 else { return };
        match &mut self.0 {
            None => self.0 = Some(src.clone()),
            Some(dst) => {
                if dst.add(src).is_err() {
                    // Unreachable with identical bounds; fall back to re-recording by bucket.
                    for v in src.iter_recorded() {
                        dst.saturating_record_n(v.value_iterated_to(), v.count_at_value());
                    }
                }
            }
        }
    }

    /// The samples of `self` that are not in `earlier`, bucket by bucket (saturating at zero: a
    /// bucket `earlier` has more of, as after a reset, counts as none).
    pub(crate) fn since(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
        let (Some(now), Some(then)) = (&self.0, &earlier.0) else {
            return self.clone();
        };
        let mut out = LatencyHistogram::new();
        if let Some(h) = &mut out.0 {
            for v in now.iter_recorded() {
                let value = v.value_iterated_to();
                let n = v.count_at_value().saturating_sub(then.count_at(value));
                if n > 0 {
                    h.saturating_record_n(value, n);
                }
            }
        }
        out
    }

    pub(crate) fn summary(&self) -> LatencySummary {
        self.0
            .as_ref()
            .map(LatencySummary::from_histogram)
            .unwrap_or_default()
    }
}

impl fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The bucket array is tens of thousands of entries: show the summary instead.
        fmt::Debug::fmt(&self.summary(), f)
    }
}
