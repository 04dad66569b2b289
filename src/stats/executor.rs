//! `ExecutorStats`: every shard's statistics and their total, intervals, rates.

use std::fmt;
use std::time::Duration;

use super::*;
use crate::driver::Backend;

/// The coordinator's view: every shard's statistics and their exact merge.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ExecutorStats {
    /// Per-shard statistics, in the order given (normally by shard index).
    pub shards: Vec<ShardStats>,
    /// All shards merged with [`ShardStats::merge`]; `shard` is [`TOTAL_SHARD`].
    pub total: ShardStats,
    /// Time since the executor started (as given by the caller).
    pub elapsed: Duration,
}

impl ExecutorStats {
    /// Merges `shards` into a total. With no shards the total is empty.
    pub fn from_shards(shards: Vec<ShardStats>, elapsed: Duration) -> Self {
        let mut iter = shards.iter();
        let mut total = match iter.next() {
            Some(first) => first.clone(),
            None => ShardStats::new(TOTAL_SHARD, None, None),
        };
        total.shard = TOTAL_SHARD;
        for s in iter {
            total.merge(s);
        }
        ExecutorStats {
            shards,
            total,
            elapsed,
        }
    }

    /// Operations per second over [`elapsed`](Self::elapsed) (0 if no time elapsed).
    pub fn ops_per_sec(&self) -> f64 {
        rate(self.total.total_ops() as f64, self.elapsed)
    }

    /// What the shards got at setup and why, one line each (the stats table ends with them):
    /// - `backend: io_uring` or `backend: threads`, with the reason when it was not the default
    ///   choice (always, for the threads backend: `io_uring_setup failed with ENOMEM ...`);
    /// - `ring: shard N: ...` for each shard whose ring has fewer entries than asked (ENOMEM);
    /// - `pool: ...`: buffers, their size and whether they are registered, or what was done to
    ///   fit RLIMIT_MEMLOCK and how to raise it ([`ShardStats::pool_note`]).
    pub fn setup(&self) -> String {
        let t = &self.total;
        let mut out = format!("backend: {}", t.backend);
        match (&t.backend_reason, t.backend) {
            (Some(why), _) => out.push_str(&format!(" ({why})")),
            (None, Backend::Threads) => out.push_str(" (see each shard)"),
            (None, Backend::IoUring) => out.push_str(" (the default where it works)"),
        }
        out.push('\n');
        for s in &self.shards {
            if let Some(note) = &s.ring_note {
                out.push_str(&format!("ring: shard {}: {note}\n", s.shard));
            }
        }
        let pool = |s: &ShardStats| match &s.pool_note {
            Some(note) => note.clone(),
            None => format!(
                "{} buffers of {} bytes, {}",
                s.pool.total_count,
                s.pool.buffer_size,
                match s.backend {
                    Backend::IoUring => "registered",
                    Backend::Threads =>
                        "unregistered (the threads backend reads and writes them \
                                         with plain system calls)",
                }
            ),
        };
        let lines: Vec<String> = self.shards.iter().map(pool).collect();
        match lines.first() {
            Some(first) if lines.len() == 1 => out.push_str(&format!("pool: {first}\n")),
            Some(first) if lines.iter().all(|l| l == first) => {
                out.push_str(&format!("pool: each of {} shards: {first}\n", lines.len()));
            }
            Some(_) => {
                for (s, line) in self.shards.iter().zip(&lines) {
                    out.push_str(&format!("pool: shard {}: {line}\n", s.shard));
                }
            }
            None => out.push_str(&format!("pool: {}\n", pool(t))),
        }
        out
    }

    /// Pretty-printed JSON: `{"elapsed_s": .., "total": {..}, "shards": [..]}` (feature
    /// `serde`; for a value, `serde_json::to_value(&stats)`: `ExecutorStats` is `Serialize`).
    #[cfg(feature = "serde")]
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| {
            // Not reachable: every map key is a string and serde_json writes NaN as null.
            serde_json::json!({ "error": e.to_string() }).to_string()
        })
    }

    /// What happened between `earlier` and `self`, two snapshots of the same executor, for rates:
    /// each shard minus the `earlier` shard with the same index ([`ShardStats::since`]; a shard
    /// `earlier` lacks is taken whole), merged again into the total, and `elapsed` is the
    /// interval (so [`ops_per_sec`](Self::ops_per_sec) and the table's rates are the interval's).
    ///
    /// ```no_run
    /// # fn main() -> ringshard::Result<()> {
    /// let exec = ringshard::Executor::new()?;
    /// let before = exec.stats();
    /// // ... work ...
    /// let interval = exec.stats().since(&before);
    /// println!("{:.0} ops/s, p99 {:.1} µs", interval.ops_per_sec(), interval.total.latency().p99_us);
    /// # Ok(()) }
    /// ```
    pub fn since(&self, earlier: &ExecutorStats) -> ExecutorStats {
        let shards = self
            .shards
            .iter()
            .map(
                |s| match earlier.shards.iter().find(|e| e.shard == s.shard) {
                    Some(e) => s.since(e),
                    None => s.clone(),
                },
            )
            .collect();
        ExecutorStats::from_shards(shards, self.elapsed.saturating_sub(earlier.elapsed))
    }

    /// The Prometheus text exposition format (version 0.0.4; `Content-Type`
    /// [`PROMETHEUS_CONTENT_TYPE`]), for a `/metrics` endpoint.
    ///
    /// Every series is per shard, labelled `shard`, `backend` (`"io_uring"`) and `ring_mode`
    /// ([`RingMode::name`](crate::ring::RingMode::name), `"none"` without a ring); per-kind series add `op`, errors add `errno`
    /// (`"ENOSPC"`). There are no totals: sum over `shard`. Counters (`_total`): operations by
    /// kind, bytes read and written, errors by errno, cancelled, deadline exceeded, sleeps,
    /// wake-ups, submit calls, SQEs, queue-full and pool-exhausted waits, pool acquisitions,
    /// exhaustions and misuse. Gauges: elapsed seconds, `ringshard_shard_info` (cpu, NUMA node,
    /// pool node, memory policy), failure, high-water marks, pool buffers by state.
    /// `ringshard_op_latency_seconds` is a histogram by `op` (`read`, `write`, `other`) with
    /// buckets at [`LATENCY_BUCKETS_NS`].
    pub fn to_prometheus(&self) -> String {
        self.render(prometheus::Flavor::Prometheus)
    }

    /// Writes [`to_prometheus`](Self::to_prometheus)'s text into `out`.
    pub fn write_prometheus(&self, out: &mut impl fmt::Write) -> fmt::Result {
        prometheus::write(self, out, prometheus::Flavor::Prometheus)
    }

    /// The same metrics in the OpenMetrics 1.0 text format (`Content-Type`
    /// [`OPENMETRICS_CONTENT_TYPE`]): counter families are named without `_total` (their samples
    /// keep it), and the text ends with `# EOF`.
    pub fn to_openmetrics(&self) -> String {
        self.render(prometheus::Flavor::OpenMetrics)
    }

    fn render(&self, flavor: prometheus::Flavor) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus::write(self, &mut out, flavor);
        out
    }

    /// Writes [`to_openmetrics`](Self::to_openmetrics)'s text into `out`.
    pub fn write_openmetrics(&self, out: &mut impl fmt::Write) -> fmt::Result {
        prometheus::write(self, out, prometheus::Flavor::OpenMetrics)
    }
}

pub(super) fn rate(amount: f64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        amount / secs
    } else {
        0.0
    }
}
