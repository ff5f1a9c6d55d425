//! A latency histogram that workers update with relaxed atomics only. prometheus-client's own
//! Histogram takes a lock per observation, which would be a lock shared between workers on
//! the per-flow path (plugin call latency is observed for every call).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Bucket bounds are 2^i * FIRST nanoseconds.
const FIRST_NS: u64 = 128;
/// 128 ns .. 4.2 ms in powers of two, plus +Inf.
const BUCKETS: usize = 16;

#[derive(Debug, Default)]
struct Inner {
    counts: [AtomicU64; BUCKETS + 1],
    sum_ns: AtomicU64,
}

/// Durations in seconds, recorded in nanoseconds. Clones share the same atomics.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram(Arc<Inner>);

impl LatencyHistogram {
    /// Records one duration.
    pub fn observe_ns(&self, ns: u64) {
        let mut i = 0;
        let mut bound = FIRST_NS;
        while i < BUCKETS && ns > bound {
            bound <<= 1;
            i += 1;
        }
        self.0.counts[i].fetch_add(1, Relaxed);
        self.0.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.counts.iter().map(|c| c.load(Relaxed)).sum()
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0f64, 0u64); BUCKETS + 1];
        let mut count = 0;
        for (i, b) in buckets.iter_mut().enumerate() {
            let n = self.0.counts[i].load(Relaxed);
            count += n;
            let upper = if i == BUCKETS {
                f64::MAX
            } else {
                (FIRST_NS << i) as f64 / 1e9
            };
            *b = (upper, n);
        }
        let sum = self.0.sum_ns.load(Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_by_power_of_two_and_encodes() {
        let h = LatencyHistogram::default();
        h.observe_ns(100); // <= 128 ns
        h.observe_ns(129); // <= 256 ns
        h.observe_ns(u64::MAX / 4); // +Inf
        assert_eq!(h.count(), 3);
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register("lat", "test", h.clone());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(out.contains("lat_bucket{le=\"1.28e-7\"} 1"), "{out}");
        assert!(out.contains("lat_bucket{le=\"2.56e-7\"} 2"), "{out}");
        assert!(out.contains("lat_bucket{le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("lat_count 3"), "{out}");
    }
}
