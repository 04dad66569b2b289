//! Per-shard statistics and their exact merge.
//!
//! Each shard thread owns one [`ShardStats`] and updates it with plain (non-atomic) writes on its hot
//! path: [`record`](ShardStats::record) and [`record_error`](ShardStats::record_error) bump a few
//! counters and record the latency in fixed-size HDR histograms, without allocating (the errno map
//! allocates only the first time it sees an errno). When the coordinator wants a view, each shard
//! sends back a clone of its `ShardStats`, and [`ExecutorStats::from_shards`] merges them: counters
//! are summed and histograms are added bucket by bucket, so the merged percentiles are exactly those
//! of one histogram fed every sample, not an average of per-shard percentiles.
//!
//! Latencies are recorded in nanoseconds with 3 significant digits over `1 ns ..= 60 s`; larger
//! values are clamped to 60 s (never a panic). Summaries ([`LatencySummary`]) are in microseconds.
//!
//! ```
//! use ringshard::{ExecutorStats, OpKind, ShardStats};
//! use std::time::Duration;
//!
//! let mut a = ShardStats::new(0, Some(0), Some(0));
//! let mut b = ShardStats::new(1, Some(1), Some(0));
//! a.record(OpKind::Read, 4096, 12_000);
//! b.record(OpKind::Write, 4096, 30_000);
//! b.record_error(OpKind::Write, libc::ENOSPC, 5_000);
//!
//! let stats = ExecutorStats::from_shards(vec![a, b], Duration::from_secs(1));
//! assert_eq!(stats.total.total_ops(), 3);
//! assert_eq!(stats.total.error_count(), 1);
//! println!("{stats}");
//! # #[cfg(feature = "serde")] {
//! let json = stats.to_json(); // feature `serde`
//! assert!(json.contains("\"ENOSPC\": 1"));
//! # }
//! ```
//!
//! With the `serde` feature, the stats types implement `serde::Serialize` and
//! `ExecutorStats::to_json` writes them as JSON; without it the library builds no serde.

use crate::error::errno_text;

mod executor;
mod histogram;
#[cfg(feature = "serde")]
mod json;
mod prometheus;
mod shard;
mod table;

pub use crate::numa::MemPolicy;
pub use crate::op::kind::OpKind;
pub use executor::ExecutorStats;
pub(crate) use histogram::LatencyHistogram;
pub use histogram::LatencySummary;
pub use prometheus::{LATENCY_BUCKETS_NS, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE};
pub use shard::{merge_pool_stats, ShardStats};

/// Lowest latency the histograms discern, in nanoseconds.
pub const LATENCY_MIN_NS: u64 = 1;
/// Highest latency the histograms track, in nanoseconds (60 s); larger values are clamped to it.
pub const LATENCY_MAX_NS: u64 = 60_000_000_000;
/// Significant decimal digits kept by the latency histograms.
pub const LATENCY_SIGFIGS: u8 = 3;
/// The `shard` value of a merged (total) [`ShardStats`], as built by [`ExecutorStats::from_shards`].
pub const TOTAL_SHARD: usize = usize::MAX;

/// The symbolic name of an errno (`"ENOSPC"`), or `"errno N"` for one without a known name.
pub fn errno_name(errno: i32) -> String {
    let text = errno_text(errno);
    match text.split_once(" (") {
        Some((name, _)) => name.to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::table::HEADERS;
    use super::*;
    use crate::pool::BufferPoolStats;
    use crate::ring::RingMode;
    use hdrhistogram::Histogram;
    #[cfg(feature = "serde")]
    use serde_json::Value;
    use std::time::Duration;

    /// Deterministic pseudo-random latencies spanning ns to tens of ms.
    fn samples(n: usize, seed: u64) -> Vec<u64> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let r = x >> 33;
                // log-ish spread: 1 ns .. ~67 ms
                (r % 1000 + 1) << (r % 17)
            })
            .collect()
    }

    fn reference(all: &[u64]) -> Histogram<u64> {
        let mut h =
            Histogram::<u64>::new_with_bounds(LATENCY_MIN_NS, LATENCY_MAX_NS, LATENCY_SIGFIGS)
                .unwrap();
        for &v in all {
            h.saturating_record(v);
        }
        h
    }

    #[test]
    fn op_kind_indices_and_names() {
        for (i, k) in OpKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
            #[cfg(feature = "serde")]
            assert_eq!(serde_json::to_value(k).unwrap(), Value::from(k.name()));
        }
        assert_eq!(OpKind::Fdatasync.name(), "fdatasync");
    }

    #[test]
    fn record_counts_and_bytes() {
        let mut s = ShardStats::new(3, Some(5), Some(1));
        s.record(OpKind::Read, 4096, 10_000);
        s.record(OpKind::Read, 100, 20_000);
        s.record(OpKind::Write, 8192, 30_000);
        s.record(OpKind::Fsync, 999, 40_000);
        s.record(OpKind::Task, 0, 50);
        assert_eq!(s.ops(OpKind::Read), 2);
        assert_eq!(s.ops(OpKind::Write), 1);
        assert_eq!(s.ops(OpKind::Fsync), 1);
        assert_eq!(s.ops(OpKind::Task), 1);
        assert_eq!(s.total_ops(), 5);
        assert_eq!(s.bytes_read, 4196);
        assert_eq!(s.bytes_written, 8192);
        // Tasks are counted but their run time is not an I/O latency.
        assert_eq!(s.latency().count, 4);
        assert_eq!(s.read_latency().count, 2);
        assert_eq!(s.write_latency().count, 1);
        assert_eq!(s.error_count(), 0);
    }

    #[test]
    fn merge_is_exact() {
        let a_samples = samples(10_000, 1);
        let b_samples: Vec<u64> = samples(3_000, 2).into_iter().map(|v| v * 7).collect();
        let mut a = ShardStats::new(0, Some(0), Some(0));
        let mut b = ShardStats::new(1, Some(1), Some(0));
        for &v in &a_samples {
            a.record(OpKind::Read, 4096, v);
        }
        for &v in &b_samples {
            b.record(OpKind::Write, 512, v);
        }
        let all: Vec<u64> = a_samples.iter().chain(b_samples.iter()).copied().collect();
        let refh = reference(&all);

        let mut m = a.clone();
        m.merge(&b);
        let got = m.latency();
        assert_eq!(got.count, all.len() as u64);
        assert_eq!(got, LatencySummary::from_histogram(&refh));
        assert_eq!(got.p50_us, refh.value_at_quantile(0.5) as f64 / 1000.0);
        assert_eq!(got.p99_us, refh.value_at_quantile(0.99) as f64 / 1000.0);
        assert_eq!(got.max_us, refh.max() as f64 / 1000.0);
        // Not the average of per-shard percentiles.
        let avg_p99 = (a.latency().p99_us + b.latency().p99_us) / 2.0;
        assert_ne!(got.p99_us, avg_p99);
        // Per-kind histograms merge too.
        assert_eq!(m.read_latency(), a.read_latency());
        assert_eq!(m.write_latency(), b.write_latency());
        assert_eq!(m.bytes_read, 4096 * a_samples.len() as u64);
        assert_eq!(m.bytes_written, 512 * b_samples.len() as u64);
        assert_eq!(m.total_ops(), all.len() as u64);
        // cpu differs -> None; node equal -> kept.
        assert_eq!(m.cpu, None);
        assert_eq!(m.numa_node, Some(0));

        // from_shards gives the same total, order-independent.
        let stats = ExecutorStats::from_shards(vec![b.clone(), a.clone()], Duration::from_secs(1));
        assert_eq!(stats.total.latency(), got);
        assert!(stats.total.is_total());
        assert_eq!(
            stats.total.latency_quantile_ns(0.999),
            refh.value_at_quantile(0.999)
        );
    }

    #[test]
    fn errors_by_errno() {
        let mut s = ShardStats::new(0, None, None);
        s.record(OpKind::Write, 10, 100);
        s.record_error(OpKind::Write, libc::ENOSPC, 200);
        s.record_error(OpKind::Write, -libc::ENOSPC, 300); // raw CQE result
        s.record_error(OpKind::Fsync, libc::ENOSPC, 400);
        s.record_error(OpKind::Read, libc::EIO, 500);
        assert_eq!(s.error_count(), 4);
        assert_eq!(s.errors_with(libc::ENOSPC), 3);
        assert_eq!(s.errors_with(libc::EIO), 1);
        assert_eq!(s.errors_with(libc::EBADF), 0);
        assert_eq!(s.errors.len(), 2);
        assert_eq!(s.ops(OpKind::Write), 3);
        assert_eq!(s.total_ops(), 5);
        assert_eq!(s.bytes_written, 10);
        assert_eq!(s.latency().count, 5);

        let mut t = ShardStats::new(1, None, None);
        t.record_error(OpKind::Read, libc::EIO, 1);
        s.merge(&t);
        assert_eq!(s.errors_with(libc::EIO), 2);
        assert_eq!(s.error_count(), 5);
        assert_eq!(errno_name(libc::ENOSPC), "ENOSPC");
    }

    #[test]
    fn high_water_marks() {
        let mut a = ShardStats::new(0, None, None);
        a.note_in_flight(3);
        a.note_in_flight(10);
        a.note_in_flight(5);
        a.note_queued(7);
        a.note_queued(2);
        assert_eq!(a.in_flight_hwm, 10);
        assert_eq!(a.queued_hwm, 7);
        let mut b = ShardStats::new(1, None, None);
        b.note_in_flight(4);
        b.note_queued(20);
        a.merge(&b);
        assert_eq!(a.in_flight_hwm, 10);
        assert_eq!(a.queued_hwm, 20);
    }

    #[test]
    fn pool_merge() {
        let p = BufferPoolStats {
            total_count: 16,
            available_count: 10,
            acquired_count: 5,
            lent_count: 1,
            in_flight_count: 4,
            kernel_owned_count: 5,
            quarantined_count: 1,
            buffer_size: 65536,
            total_bytes: 16 * 65536,
            acquisitions: 100,
            exhaustions: 2,
            unmatched_completions: 2,
            misuse_release_in_flight: 1,
            misuse_invalid_index: 0,
            misuse_bad_state: 3,
            numa_node: Some(0),
        };
        let m = merge_pool_stats(&p, &p);
        assert_eq!(m.total_count, 32);
        assert_eq!(m.total_bytes, 32 * 65536);
        assert_eq!(m.acquisitions, 200);
        assert_eq!(m.misuse_bad_state, 6);
        assert_eq!((m.kernel_owned_count, m.quarantined_count), (10, 2));
        assert_eq!((m.acquired_count, m.lent_count), (10, 2));
        assert_eq!(m.unmatched_completions, 4);
        assert_eq!(m.misuse_total(), 8);
        assert_eq!(m.buffer_size, 65536);
        assert_eq!(m.numa_node, Some(0));
        let q = BufferPoolStats {
            buffer_size: 4096,
            numa_node: Some(1),
            ..p
        };
        let m = merge_pool_stats(&p, &q);
        assert_eq!(m.buffer_size, 0);
        assert_eq!(m.numa_node, None);
    }

    fn two_shards() -> ExecutorStats {
        let mut a = ShardStats::new(0, Some(0), Some(0));
        let mut b = ShardStats::new(1, Some(1), Some(0));
        for _ in 0..30 {
            a.record(OpKind::Read, 1_000_000, 50_000);
        }
        for _ in 0..12 {
            b.record(OpKind::Write, 500_000, 200_000);
        }
        b.record_error(OpKind::Write, libc::ENOSPC, 1_000);
        b.record_error(OpKind::Write, libc::ENOSPC, 1_000);
        b.record_error(OpKind::Write, libc::ENOSPC, 1_000);
        a.record_error(OpKind::Read, libc::EIO, 1_000);
        a.note_in_flight(8);
        b.note_in_flight(5);
        a.note_queued(3);
        b.note_queued(9);
        a.sleeps = 4;
        b.sleeps = 6;
        a.wakeups = 1;
        b.wakeups = 2;
        b.failed = true;
        a.ring_mode = Some(RingMode::DeferTaskrun);
        b.ring_mode = Some(RingMode::DeferTaskrun);
        a.mem_policy = Some(MemPolicy::Preferred);
        b.mem_policy = Some(MemPolicy::Failed { errno: libc::EPERM });
        ExecutorStats::from_shards(vec![a, b], Duration::from_secs(2))
    }

    fn cells<'a>(text: &'a str, first: &str) -> Vec<&'a str> {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(first))
            .unwrap_or_else(|| panic!("no row {first:?} in\n{text}"))
            .split_whitespace()
            .collect()
    }

    #[test]
    fn display_rows() {
        let stats = two_shards();
        let text = stats.to_string();
        println!("{text}");
        // shard cpu node ring ops reads inline writes MBr MBw errors cancelled p50 p99 p999 max
        // inflt queued sleeps wakeups
        let r0 = cells(&text, "0");
        assert_eq!(
            r0[1..11],
            ["0", "0", "defer", "31", "31", "0", "0", "30.0", "0.0", "1"]
        );
        assert_eq!(r0[11], "0");
        assert_eq!(r0[16..], ["8", "3", "4", "1", "0"]);
        let r1 = cells(&text, "1*");
        assert_eq!(
            r1[1..11],
            ["1", "0!", "defer", "15", "0", "0", "15", "0.0", "6.0", "3"]
        );
        let total = cells(&text, "total");
        assert_eq!(total.len(), HEADERS.len());
        assert_eq!(
            total[1..11],
            ["-", "0!", "defer", "46", "31", "0", "15", "30.0", "6.0", "4"]
        );
        assert_eq!(total[11], "0");
        assert_eq!(total[16..], ["8", "9", "10", "3", "0"]);
        assert!(
            text.contains("! NUMA memory policy refused (EPERM)"),
            "{text}"
        );
        let p50: f64 = total[12].parse().unwrap();
        assert!((p50 - 50.0).abs() < 0.1, "{p50}");
        let max: f64 = total[15].parse().unwrap();
        assert!((max - 200.0).abs() < 0.3, "{max}");
        assert!(text.contains("errors: ENOSPC x3, EIO x1"), "{text}");
        assert!(text.contains("* shard failed"));
        assert!(text.starts_with("2 shards, elapsed 2.000 s, 46 ops (23 ops/s)"));

        // Columns aligned: header and rows have the same width.
        let widths: Vec<usize> = text
            .lines()
            .skip(1)
            .take(4)
            .map(|l| l.chars().count())
            .collect();
        assert!(widths.iter().all(|&w| w == widths[0]), "{widths:?}");
    }

    #[cfg(feature = "serde")]
    #[test]
    fn json_fields() {
        let stats = two_shards();
        let v: Value = serde_json::from_str(&stats.to_json()).unwrap();
        assert_eq!(v, serde_json::to_value(&stats).unwrap());
        assert_eq!(v["elapsed_s"], 2.0);
        let shards = v["shards"].as_array().unwrap();
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[0]["shard"], 0);
        assert_eq!(shards[0]["cpu"], 0);
        assert_eq!(shards[0]["numa_node"], 0);
        assert_eq!(shards[0]["ops"]["read"], 31);
        assert_eq!(shards[0]["ops"]["write"], 0);
        assert_eq!(shards[0]["errors"]["EIO"], 1);
        assert_eq!(shards[1]["failed"], true);
        assert_eq!(shards[0]["ring_mode"], "defer_taskrun");
        assert_eq!(shards[0]["mem_policy"], "preferred");
        assert_eq!(shards[0]["mem_policy_errno"], Value::Null);
        assert_eq!(shards[1]["mem_policy"], "failed");
        assert_eq!(shards[1]["mem_policy_errno"], "EPERM");
        assert_eq!(v["total"]["ring_mode"], "defer_taskrun");
        assert_eq!(v["total"]["mem_policy"], "failed");
        let t = &v["total"];
        assert_eq!(t["shard"], Value::Null);
        assert_eq!(t["total_ops"], 46);
        assert_eq!(t["error_count"], 4);
        assert_eq!(t["errors"]["ENOSPC"], 3);
        assert_eq!(t["errors"]["EIO"], 1);
        assert_eq!(t["bytes_read"], 30_000_000u64);
        assert_eq!(t["bytes_written"], 6_000_000u64);
        assert_eq!(t["in_flight_hwm"], 8);
        assert_eq!(t["queued_hwm"], 9);
        assert_eq!(t["sleeps"], 10);
        assert_eq!(t["latency"]["count"], 46);
        assert_eq!(t["read_latency"]["count"], 31);
        assert_eq!(t["write_latency"]["count"], 15);
        let ops = t["ops"].as_object().unwrap();
        assert_eq!(ops.len(), OpKind::COUNT);
        for k in OpKind::ALL {
            assert!(ops.contains_key(k.name()));
        }
        for key in ["mean_us", "p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
            assert!(t["latency"][key].is_number(), "{key}");
        }
        for key in [
            "sq_full_events",
            "cqes_dropped",
            "task_local_reads",
            "writes_at_admission",
            "pool_exhausted_events",
            "wakeups",
            "submit_calls",
            "sqes_submitted",
            "cancelled",
            "deadline_exceeded",
        ] {
            assert!(t[key].is_u64(), "{key}");
        }
        assert!(t["pool"]["total_count"].is_u64());
        assert!(t["pool"]["numa_node"].is_null());
    }

    #[test]
    fn since_subtracts_counters_and_histograms() {
        let mut a = ShardStats::new(0, Some(0), Some(0));
        let mut b = ShardStats::new(1, Some(1), Some(0));
        for v in samples(500, 3) {
            a.record(OpKind::Read, 4096, v);
        }
        b.record_error(OpKind::Write, libc::EIO, 10);
        a.sleeps = 5;
        a.pool.acquisitions = 7;
        a.note_in_flight(4);
        let before = ExecutorStats::from_shards(vec![a.clone(), b.clone()], Duration::from_secs(1));

        let later_reads = samples(300, 4);
        for &v in &later_reads {
            a.record(OpKind::Read, 512, v * 3);
        }
        a.record(OpKind::Fsync, 0, 999);
        b.record_error(OpKind::Write, libc::ENOSPC, 20);
        a.sleeps = 8;
        a.pool.acquisitions = 9;
        a.pool.available_count = 3;
        let after = ExecutorStats::from_shards(vec![a, b], Duration::from_secs(3));

        let d = after.since(&before);
        assert_eq!(d.elapsed, Duration::from_secs(2));
        assert_eq!(d.shards[0].ops(OpKind::Read), 300);
        assert_eq!(d.shards[0].ops(OpKind::Fsync), 1);
        assert_eq!(d.shards[0].bytes_read, 512 * 300);
        assert_eq!(d.shards[0].sleeps, 3);
        assert_eq!(d.shards[0].pool.acquisitions, 2);
        assert_eq!(
            d.shards[0].pool.available_count, 3,
            "gauges are the later value"
        );
        assert_eq!(d.shards[0].in_flight_hwm, 4);
        // Only the interval's samples: the same summary as a histogram fed just them.
        let want = reference(&later_reads.iter().map(|v| v * 3).collect::<Vec<_>>());
        assert_eq!(
            d.shards[0].read_latency(),
            LatencySummary::from_histogram(&want)
        );
        assert_eq!(d.shards[0].latency().count, 301);
        // Errors: EIO is gone (no new ones), ENOSPC new.
        assert_eq!(d.shards[1].errors_with(libc::EIO), 0);
        assert!(!d.shards[1].errors.contains_key(&libc::EIO));
        assert_eq!(d.total.errors_with(libc::ENOSPC), 1);
        assert_eq!(d.total.total_ops(), 302);
        assert!((d.ops_per_sec() - 151.0).abs() < 1e-9);

        // Backwards (not an earlier snapshot): saturates at zero, never panics.
        let back = before.since(&after);
        assert_eq!(back.total.total_ops(), 0);
        assert_eq!(back.total.latency().count, 0);
        assert_eq!(back.elapsed, Duration::ZERO);
    }

    #[test]
    fn huge_latency_is_clamped() {
        let mut s = ShardStats::new(0, None, None);
        s.record(OpKind::Read, 1, u64::MAX);
        s.record_error(OpKind::Write, libc::EIO, LATENCY_MAX_NS * 10);
        s.record(OpKind::Task, 0, 0);
        let l = s.latency();
        assert_eq!(l.count, 2, "tasks stay out of the latency histogram");
        let max_s = l.max_us / 1e6;
        assert!((60.0..60.1).contains(&max_s), "{max_s}");
        let mut t = s.clone();
        t.merge(&s);
        assert_eq!(t.latency().count, 4);
        assert_eq!(t.latency().max_us, l.max_us);
    }

    #[test]
    fn empty_summary_is_zero() {
        let s = ShardStats::new(0, None, None);
        assert_eq!(s.latency(), LatencySummary::default());
        assert_eq!(s.read_latency(), LatencySummary::default());
        assert_eq!(s.write_latency(), LatencySummary::default());
        assert_eq!(s.latency_quantile_ns(0.99), 0);
        let e = ExecutorStats::from_shards(Vec::new(), Duration::ZERO);
        assert_eq!(e.total.total_ops(), 0);
        assert_eq!(e.ops_per_sec(), 0.0);
        assert!(e.to_string().contains("total"));
        let d = format!("{s:?}");
        assert!(d.len() < 2000, "Debug should not dump histogram buckets");
    }
}
