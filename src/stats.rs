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
//! [`ExecutorStats::to_json`] writes them as JSON; without it the library builds no serde.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
#[cfg(feature = "serde")]
use serde::ser::{SerializeMap, SerializeStruct};
#[cfg(feature = "serde")]
use serde::{Serialize, Serializer};

use crate::driver::Backend;
use crate::error::errno_text;
use crate::pool::BufferPoolStats;
use crate::ring::RingMode;

mod prometheus;
pub use crate::op::kind::OpKind;
pub use prometheus::{LATENCY_BUCKETS_NS, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE};

/// Lowest latency the histograms discern, in nanoseconds.
pub const LATENCY_MIN_NS: u64 = 1;
/// Highest latency the histograms track, in nanoseconds (60 s); larger values are clamped to it.
pub const LATENCY_MAX_NS: u64 = 60_000_000_000;
/// Significant decimal digits kept by the latency histograms.
pub const LATENCY_SIGFIGS: u8 = 3;
/// The `shard` value of a merged (total) [`ShardStats`], as built by [`ExecutorStats::from_shards`].
pub const TOTAL_SHARD: usize = usize::MAX;

/// What became of a shard thread's NUMA memory policy (`set_mempolicy(MPOL_PREFERRED)` for the
/// node of its core), which puts its ring, stacks and heap pages on that node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MemPolicy {
    /// The thread prefers memory from its node.
    Preferred,
    /// The kernel refused the policy (no NUMA support, or a seccomp filter): memory comes from
    /// wherever the kernel's default policy puts it.
    Failed {
        /// The errno of `set_mempolicy`.
        errno: i32,
    },
}

impl MemPolicy {
    /// `"preferred"` or `"failed"`.
    pub fn name(self) -> &'static str {
        match self {
            MemPolicy::Preferred => "preferred",
            MemPolicy::Failed { .. } => "failed",
        }
    }
}

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
    fn from_histogram(h: &Histogram<u64>) -> Self {
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
struct LatencyHistogram(Option<Histogram<u64>>);

impl LatencyHistogram {
    fn new() -> Self {
        LatencyHistogram(
            Histogram::new_with_bounds(LATENCY_MIN_NS, LATENCY_MAX_NS, LATENCY_SIGFIGS).ok(),
        )
    }

    /// Records one sample, clamped into range. No allocation.
    #[inline]
    fn record(&mut self, ns: u64) {
        if let Some(h) = &mut self.0 {
            h.saturating_record(ns);
        }
    }

    /// Records `n` samples of `ns`, clamped into range. No allocation.
    fn record_n(&mut self, ns: u64, n: u64) {
        if let Some(h) = &mut self.0 {
            h.saturating_record_n(ns, n);
        }
    }

    /// Adds every sample of `other` (exact: bucket counts are summed).
    fn merge(&mut self, other: &LatencyHistogram) {
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
    fn since(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
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

    fn summary(&self) -> LatencySummary {
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

/// Statistics of one shard, owned and updated by the shard thread (no atomics).
///
/// The coordinator gets a clone from each shard and merges them with [`merge`](Self::merge) (or
/// [`ExecutorStats::from_shards`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ShardStats {
    /// Shard index ([`TOTAL_SHARD`] for a merged total).
    pub shard: usize,
    /// Core the shard is pinned to, if pinned.
    pub cpu: Option<usize>,
    /// NUMA node of the shard's core, if known.
    pub numa_node: Option<u32>,
    /// Whether the shard thread failed (died or could not start).
    pub failed: bool,
    /// How the shard's ring was set up (`None` where no ring was made, or in a merged total whose
    /// shards differ).
    pub ring_mode: Option<RingMode>,
    /// The backend that runs the shard's operations.
    pub backend: Backend,
    /// Why that backend was chosen (`None` for io_uring chosen by default).
    pub backend_reason: Option<String>,
    /// What the shard did about its buffer pool when it could not register all of it (fewer
    /// buffers to fit RLIMIT_MEMLOCK, or unregistered buffers), with the fix; `None` otherwise.
    pub pool_note: Option<String>,
    /// Set when the shard's ring was made with fewer entries than asked (io_uring_setup refused
    /// the full size with ENOMEM: RLIMIT_MEMLOCK), saying how many and why; `None` otherwise.
    pub ring_note: Option<String>,
    /// The shard thread's NUMA memory policy (`None` where no node was asked for). In a merged
    /// total: the first failure if any shard failed, else the shards' common value, else `None`.
    pub mem_policy: Option<MemPolicy>,
    /// Operation kinds this shard runs with plain system calls on its own thread instead of
    /// through the ring: the kernel lacks their opcode (read once at setup with
    /// `IORING_REGISTER_PROBE`), or they were forced there. In a merged total: every kind some
    /// shard runs that way.
    pub blocking_ops: Vec<OpKind>,
    /// Completed operations (successful or not) by kind, indexed by [`OpKind::index`].
    pub ops: [u64; OpKind::COUNT],
    /// Bytes transferred by successful reads.
    pub bytes_read: u64,
    /// Bytes transferred by successful writes.
    pub bytes_written: u64,
    /// Failed operations by (positive) errno.
    pub errors: BTreeMap<i32, u64>,
    /// Largest number of operations in flight in the ring at once. In a merged total: the largest
    /// single-shard high-water mark (not a sum: shards peak at different times).
    pub in_flight_hwm: u64,
    /// Largest number of requests waiting in the shard's local queue at once. In a merged total:
    /// the largest single-shard high-water mark.
    pub queued_hwm: u64,
    /// Times a request had to wait because the submission queue was full.
    pub sq_full_events: u64,
    /// Times a request had to wait because the buffer pool was empty.
    pub pool_exhausted_events: u64,
    /// Times the shard went to sleep waiting for work.
    pub sleeps: u64,
    /// Times the shard was woken up by a sender.
    pub wakeups: u64,
    /// `io_uring_enter` submit calls.
    pub submit_calls: u64,
    /// Polls of async tasks on the shard.
    pub task_polls: u64,
    /// Task polls that kept the shard's thread longer than [`SLOW_POLL`](crate::SLOW_POLL) (10
    /// ms): a task that computes or blocks without yielding delays the shard's I/O and its other
    /// tasks. Should stay 0.
    pub slow_task_polls: u64,
    /// Operations that did not run, or were stopped, because their handle was dropped or
    /// cancelled, their session dropped, or shutdown cancelled them. Not counted in
    /// [`ops`](Self::ops) or [`errors`](Self::errors) unless the kernel had already started them.
    pub cancelled: u64,
    /// Operations cancelled because their deadline passed (also failed with
    /// [`DeadlineExceeded`](crate::Error::DeadlineExceeded)).
    pub deadline_exceeded: u64,
    /// SQEs submitted to the kernel.
    pub sqes_submitted: u64,
    /// Reads of this shard's files done on the caller's thread from the page cache
    /// ([`inline_reads`](crate::ExecutorBuilder::inline_reads)): also counted in
    /// [`ops`](Self::ops), [`bytes_read`](Self::bytes_read) and the read latency, and on their
    /// own in [`inline_latency`](Self::inline_latency). Counted by the callers (merged into
    /// the shard's snapshot by [`Executor::stats`](crate::Executor::stats)).
    pub inline_reads: u64,
    /// Inline attempts that went to the shard after all: the data was not cached (EAGAIN, or
    /// only part of it), the filesystem refused RWF_NOWAIT, or the call failed (the shard
    /// reports the error). Reads not tried inline (too long, O_DIRECT, a write of the file
    /// unfinished, inline reads off) are not counted.
    pub inline_fallbacks: u64,
    /// The shard's buffer pool at snapshot time (merged: see [`merge_pool_stats`]).
    pub pool: BufferPoolStats,
    /// Latency of operations other than reads, writes and tasks. The all-operations histogram is
    /// the exact sum of this and the read and write ones, made on demand: each operation is
    /// recorded once, on the hot path.
    other_latency: LatencyHistogram,
    read_latency: LatencyHistogram,
    write_latency: LatencyHistogram,
    /// Latency of inline reads (a subset of `read_latency`): measured on the caller's thread
    /// from before the first `preadv2` to the data, kept to about 6% (16 buckets per power of
    /// two) before it reaches this histogram.
    inline_latency: LatencyHistogram,
}

impl ShardStats {
    /// Empty statistics for shard `shard`, pinned to `cpu` on `numa_node`.
    ///
    /// Allocates the three latency histograms (a few hundred KiB); recording never allocates.
    pub fn new(shard: usize, cpu: Option<usize>, numa_node: Option<u32>) -> Self {
        ShardStats {
            shard,
            cpu,
            numa_node,
            failed: false,
            ring_mode: None,
            backend: Backend::IoUring,
            backend_reason: None,
            pool_note: None,
            ring_note: None,
            mem_policy: None,
            blocking_ops: Vec::new(),
            ops: [0; OpKind::COUNT],
            bytes_read: 0,
            bytes_written: 0,
            errors: BTreeMap::new(),
            in_flight_hwm: 0,
            queued_hwm: 0,
            sq_full_events: 0,
            pool_exhausted_events: 0,
            sleeps: 0,
            wakeups: 0,
            submit_calls: 0,
            task_polls: 0,
            slow_task_polls: 0,
            cancelled: 0,
            deadline_exceeded: 0,
            sqes_submitted: 0,
            pool: BufferPoolStats::default(),
            other_latency: LatencyHistogram::new(),
            read_latency: LatencyHistogram::new(),
            write_latency: LatencyHistogram::new(),
            inline_reads: 0,
            inline_fallbacks: 0,
            inline_latency: LatencyHistogram::new(),
        }
    }

    /// Whether this is a merged total (`shard == TOTAL_SHARD`).
    pub fn is_total(&self) -> bool {
        self.shard == TOTAL_SHARD
    }

    #[inline]
    fn count_op(&mut self, kind: OpKind, latency_ns: u64) {
        let n = &mut self.ops[kind.index()];
        *n = n.saturating_add(1);
        // A task's run time is not an I/O latency (a benchmark loop runs for seconds): it is
        // counted, but kept out of the latency histograms.
        if kind == OpKind::Task {
            return;
        }
        match kind {
            OpKind::Read => self.read_latency.record(latency_ns),
            OpKind::Write => self.write_latency.record(latency_ns),
            _ => self.other_latency.record(latency_ns),
        }
    }

    /// Records a successful operation: counts it, adds `bytes` to
    /// [`bytes_read`](Self::bytes_read) / [`bytes_written`](Self::bytes_written) for reads and writes
    /// (ignored for other kinds), and records `latency_ns` once, in its kind's histogram (reads,
    /// writes, or the rest; [`OpKind::Task`] is counted but has no latency). The all-operations
    /// latency is their exact sum. Latencies above 60 s are clamped. No allocation.
    #[inline]
    pub fn record(&mut self, kind: OpKind, bytes: u64, latency_ns: u64) {
        self.count_op(kind, latency_ns);
        match kind {
            OpKind::Read => self.bytes_read = self.bytes_read.saturating_add(bytes),
            OpKind::Write => self.bytes_written = self.bytes_written.saturating_add(bytes),
            _ => {}
        }
    }

    /// Records a failed operation: counts the operation (in [`ops`](Self::ops)), the error (in
    /// [`errors`](Self::errors), under `|errno|`, so a raw negative CQE result works too) and its
    /// latency, like [`record`](Self::record) but with no bytes. Allocates only the first time an
    /// errno is seen.
    #[inline]
    pub fn record_error(&mut self, kind: OpKind, errno: i32, latency_ns: u64) {
        self.count_op(kind, latency_ns);
        let n = self.errors.entry(errno.saturating_abs()).or_insert(0);
        *n = n.saturating_add(1);
    }

    /// Notes that `n` operations are in flight; keeps the high-water mark.
    #[inline]
    pub fn note_in_flight(&mut self, n: u64) {
        self.in_flight_hwm = self.in_flight_hwm.max(n);
    }

    /// Notes that `n` requests wait in the local queue; keeps the high-water mark.
    #[inline]
    pub fn note_queued(&mut self, n: u64) {
        self.queued_hwm = self.queued_hwm.max(n);
    }

    /// Counts one wait on a full submission queue.
    #[inline]
    pub fn note_sq_full(&mut self) {
        self.sq_full_events = self.sq_full_events.saturating_add(1);
    }

    /// Counts one wait on an exhausted buffer pool.
    #[inline]
    pub fn note_pool_exhausted(&mut self) {
        self.pool_exhausted_events = self.pool_exhausted_events.saturating_add(1);
    }

    /// Counts one sleep of the shard thread.
    #[inline]
    pub fn note_sleep(&mut self) {
        self.sleeps = self.sleeps.saturating_add(1);
    }

    /// Counts `polls` async task polls, `slow` of them over [`SLOW_POLL`](crate::SLOW_POLL).
    #[inline]
    pub fn note_task_polls(&mut self, polls: u64, slow: u64) {
        self.task_polls = self.task_polls.saturating_add(polls);
        self.slow_task_polls = self.slow_task_polls.saturating_add(slow);
    }

    /// Counts one wake-up of the shard thread.
    #[inline]
    pub fn note_wakeup(&mut self) {
        self.wakeups = self.wakeups.saturating_add(1);
    }

    /// Counts one submit call that passed `sqes` SQEs to the kernel.
    #[inline]
    pub fn note_submit(&mut self, sqes: u64) {
        self.submit_calls = self.submit_calls.saturating_add(1);
        self.sqes_submitted = self.sqes_submitted.saturating_add(sqes);
    }

    /// Counts one cancelled operation.
    #[inline]
    pub fn note_cancelled(&mut self) {
        self.cancelled = self.cancelled.saturating_add(1);
    }

    /// Counts one operation whose deadline passed.
    #[inline]
    pub fn note_deadline_exceeded(&mut self) {
        self.deadline_exceeded = self.deadline_exceeded.saturating_add(1);
    }

    /// Completed operations of one kind (successful or not).
    #[inline]
    pub fn ops(&self, kind: OpKind) -> u64 {
        self.ops[kind.index()]
    }

    /// Completed operations of all kinds (successful or not).
    pub fn total_ops(&self) -> u64 {
        self.ops.iter().fold(0u64, |a, &b| a.saturating_add(b))
    }

    /// Failed operations of all kinds.
    pub fn error_count(&self) -> u64 {
        self.errors.values().fold(0u64, |a, &b| a.saturating_add(b))
    }

    /// Failures with one errno (0 if none).
    pub fn errors_with(&self, errno: i32) -> u64 {
        self.errors
            .get(&errno.saturating_abs())
            .copied()
            .unwrap_or(0)
    }

    /// The histogram of all operations: reads, writes and the rest, added exactly.
    fn all_latency(&self) -> LatencyHistogram {
        let mut all = self.other_latency.clone();
        all.merge(&self.read_latency);
        all.merge(&self.write_latency);
        all
    }

    /// Latency of all operations.
    pub fn latency(&self) -> LatencySummary {
        self.all_latency().summary()
    }

    /// Latency of reads.
    pub fn read_latency(&self) -> LatencySummary {
        self.read_latency.summary()
    }

    /// Latency of writes.
    pub fn write_latency(&self) -> LatencySummary {
        self.write_latency.summary()
    }

    /// Latency of inline reads (see [`inline_reads`](Self::inline_reads)).
    pub fn inline_latency(&self) -> LatencySummary {
        self.inline_latency.summary()
    }

    /// Adds the reads callers did inline for this shard's files (a snapshot of their counters):
    /// to the read counts, bytes and latency, and to the inline ones.
    pub(crate) fn add_inline(&mut self, s: &crate::inline::Snapshot) {
        let reads = &mut self.ops[OpKind::Read.index()];
        *reads = reads.saturating_add(s.reads);
        self.bytes_read = self.bytes_read.saturating_add(s.bytes);
        self.inline_reads = self.inline_reads.saturating_add(s.reads);
        self.inline_fallbacks = self.inline_fallbacks.saturating_add(s.fallbacks);
        for &(ns, n) in &s.latency {
            self.read_latency.record_n(ns, n);
            self.inline_latency.record_n(ns, n);
        }
    }

    /// Latency at quantile `q` (0.0..=1.0) over all operations, in nanoseconds, for percentiles
    /// [`LatencySummary`] does not carry (0 with no samples).
    pub fn latency_quantile_ns(&self, q: f64) -> u64 {
        match &self.all_latency().0 {
            Some(h) if !h.is_empty() => h.value_at_quantile(q),
            _ => 0,
        }
    }

    /// Adds `other` into `self`, exactly.
    ///
    /// - counters, bytes, per-kind ops and errors by errno: summed;
    /// - latency histograms: added bucket by bucket, so merged percentiles equal those of one
    ///   histogram fed every sample;
    /// - `in_flight_hwm`, `queued_hwm`: the largest single-shard high-water mark (max);
    /// - `cpu`, `numa_node`, `ring_mode`: kept if equal, else `None`; `failed`: true if either
    ///   failed; `mem_policy`: a failure if either failed, else kept if equal, else `None`;
    /// - `pool`: [`merge_pool_stats`];
    /// - `shard`: unchanged (set it to [`TOTAL_SHARD`] for a total, as `from_shards` does).
    pub fn merge(&mut self, other: &ShardStats) {
        if self.cpu != other.cpu {
            self.cpu = None;
        }
        if self.numa_node != other.numa_node {
            self.numa_node = None;
        }
        if self.ring_mode != other.ring_mode {
            self.ring_mode = None;
        }
        if self.backend_reason != other.backend_reason {
            self.backend_reason = None;
        }
        if self.pool_note.is_none() {
            self.pool_note.clone_from(&other.pool_note);
        }
        if self.ring_note.is_none() {
            self.ring_note.clone_from(&other.ring_note);
        }
        self.mem_policy = match (self.mem_policy, other.mem_policy) {
            (Some(f @ MemPolicy::Failed { .. }), _) | (_, Some(f @ MemPolicy::Failed { .. })) => {
                Some(f)
            }
            (a, b) if a == b => a,
            _ => None,
        };
        self.failed |= other.failed;
        for k in &other.blocking_ops {
            if !self.blocking_ops.contains(k) {
                self.blocking_ops.push(*k);
            }
        }
        self.blocking_ops.sort();
        for (a, b) in self.ops.iter_mut().zip(other.ops.iter()) {
            *a = a.saturating_add(*b);
        }
        self.bytes_read = self.bytes_read.saturating_add(other.bytes_read);
        self.bytes_written = self.bytes_written.saturating_add(other.bytes_written);
        for (&errno, &n) in &other.errors {
            let c = self.errors.entry(errno).or_insert(0);
            *c = c.saturating_add(n);
        }
        self.in_flight_hwm = self.in_flight_hwm.max(other.in_flight_hwm);
        self.queued_hwm = self.queued_hwm.max(other.queued_hwm);
        self.sq_full_events = self.sq_full_events.saturating_add(other.sq_full_events);
        self.pool_exhausted_events = self
            .pool_exhausted_events
            .saturating_add(other.pool_exhausted_events);
        self.sleeps = self.sleeps.saturating_add(other.sleeps);
        self.wakeups = self.wakeups.saturating_add(other.wakeups);
        self.task_polls = self.task_polls.saturating_add(other.task_polls);
        self.slow_task_polls = self.slow_task_polls.saturating_add(other.slow_task_polls);
        self.submit_calls = self.submit_calls.saturating_add(other.submit_calls);
        self.sqes_submitted = self.sqes_submitted.saturating_add(other.sqes_submitted);
        self.cancelled = self.cancelled.saturating_add(other.cancelled);
        self.deadline_exceeded = self
            .deadline_exceeded
            .saturating_add(other.deadline_exceeded);
        self.pool = merge_pool_stats(&self.pool, &other.pool);
        self.other_latency.merge(&other.other_latency);
        self.read_latency.merge(&other.read_latency);
        self.write_latency.merge(&other.write_latency);
        self.inline_reads = self.inline_reads.saturating_add(other.inline_reads);
        self.inline_fallbacks = self.inline_fallbacks.saturating_add(other.inline_fallbacks);
        self.inline_latency.merge(&other.inline_latency);
    }
}

impl ShardStats {
    /// What happened between `earlier` and `self`, two snapshots of the same shard: counters,
    /// bytes, per-kind ops, errors by errno and the pool's counters (acquisitions, exhaustions,
    /// misuse) are subtracted, saturating at zero; latency histograms are subtracted bucket by
    /// bucket (exact: the interval's percentiles are those of its own samples). Gauges and
    /// descriptions (`cpu`, `numa_node`, `ring_mode`, `mem_policy`, `failed`, the pool's buffer
    /// counts) are `self`'s. The high-water marks are `self`'s too: they cover the whole run, not
    /// the interval.
    pub fn since(&self, earlier: &ShardStats) -> ShardStats {
        let sub = |a: u64, b: u64| a.saturating_sub(b);
        let mut out = self.clone();
        for (a, b) in out.ops.iter_mut().zip(earlier.ops.iter()) {
            *a = sub(*a, *b);
        }
        out.bytes_read = sub(self.bytes_read, earlier.bytes_read);
        out.bytes_written = sub(self.bytes_written, earlier.bytes_written);
        for (errno, n) in out.errors.iter_mut() {
            *n = sub(*n, earlier.errors.get(errno).copied().unwrap_or(0));
        }
        out.errors.retain(|_, n| *n > 0);
        out.sq_full_events = sub(self.sq_full_events, earlier.sq_full_events);
        out.pool_exhausted_events = sub(self.pool_exhausted_events, earlier.pool_exhausted_events);
        out.sleeps = sub(self.sleeps, earlier.sleeps);
        out.wakeups = sub(self.wakeups, earlier.wakeups);
        out.submit_calls = sub(self.submit_calls, earlier.submit_calls);
        out.sqes_submitted = sub(self.sqes_submitted, earlier.sqes_submitted);
        out.cancelled = sub(self.cancelled, earlier.cancelled);
        out.deadline_exceeded = sub(self.deadline_exceeded, earlier.deadline_exceeded);
        out.task_polls = sub(self.task_polls, earlier.task_polls);
        out.slow_task_polls = sub(self.slow_task_polls, earlier.slow_task_polls);
        let (p, q) = (&mut out.pool, &earlier.pool);
        p.acquisitions = sub(p.acquisitions, q.acquisitions);
        p.exhaustions = sub(p.exhaustions, q.exhaustions);
        p.misuse_release_in_flight = sub(p.misuse_release_in_flight, q.misuse_release_in_flight);
        p.unmatched_completions = sub(p.unmatched_completions, q.unmatched_completions);
        p.misuse_invalid_index = sub(p.misuse_invalid_index, q.misuse_invalid_index);
        p.misuse_bad_state = sub(p.misuse_bad_state, q.misuse_bad_state);
        out.other_latency = self.other_latency.since(&earlier.other_latency);
        out.read_latency = self.read_latency.since(&earlier.read_latency);
        out.write_latency = self.write_latency.since(&earlier.write_latency);
        out.inline_reads = sub(self.inline_reads, earlier.inline_reads);
        out.inline_fallbacks = sub(self.inline_fallbacks, earlier.inline_fallbacks);
        out.inline_latency = self.inline_latency.since(&earlier.inline_latency);
        out
    }
}

/// Merges two pools' statistics: counts and byte totals summed; `buffer_size` kept if equal, else 0;
/// `numa_node` kept if equal, else `None`.
pub fn merge_pool_stats(a: &BufferPoolStats, b: &BufferPoolStats) -> BufferPoolStats {
    BufferPoolStats {
        total_count: a.total_count.saturating_add(b.total_count),
        available_count: a.available_count.saturating_add(b.available_count),
        acquired_count: a.acquired_count.saturating_add(b.acquired_count),
        lent_count: a.lent_count.saturating_add(b.lent_count),
        in_flight_count: a.in_flight_count.saturating_add(b.in_flight_count),
        kernel_owned_count: a.kernel_owned_count.saturating_add(b.kernel_owned_count),
        quarantined_count: a.quarantined_count.saturating_add(b.quarantined_count),
        buffer_size: if a.buffer_size == b.buffer_size {
            a.buffer_size
        } else {
            0
        },
        total_bytes: a.total_bytes.saturating_add(b.total_bytes),
        acquisitions: a.acquisitions.saturating_add(b.acquisitions),
        exhaustions: a.exhaustions.saturating_add(b.exhaustions),
        misuse_release_in_flight: a
            .misuse_release_in_flight
            .saturating_add(b.misuse_release_in_flight),
        unmatched_completions: a
            .unmatched_completions
            .saturating_add(b.unmatched_completions),
        misuse_invalid_index: a
            .misuse_invalid_index
            .saturating_add(b.misuse_invalid_index),
        misuse_bad_state: a.misuse_bad_state.saturating_add(b.misuse_bad_state),
        numa_node: if a.numa_node == b.numa_node {
            a.numa_node
        } else {
            None
        },
    }
}

/// The symbolic name of an errno (`"ENOSPC"`), or `"errno N"` for one without a known name.
pub fn errno_name(errno: i32) -> String {
    let text = errno_text(errno);
    match text.split_once(" (") {
        Some((name, _)) => name.to_string(),
        None => text,
    }
}

#[cfg(feature = "serde")]
/// Serializes `ops` as `{"open": n, "read": n, ...}` in [`OpKind::ALL`] order.
struct OpsView<'a>(&'a [u64; OpKind::COUNT]);

#[cfg(feature = "serde")]
impl Serialize for OpsView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(OpKind::COUNT))?;
        for kind in OpKind::ALL {
            map.serialize_entry(kind.name(), &self.0[kind.index()])?;
        }
        map.end()
    }
}

#[cfg(feature = "serde")]
/// Serializes errors as `{"ENOSPC": n, ...}` (errno order).
struct ErrorsView<'a>(&'a BTreeMap<i32, u64>);

#[cfg(feature = "serde")]
impl Serialize for ErrorsView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (&errno, n) in self.0 {
            map.serialize_entry(&errno_name(errno), n)?;
        }
        map.end()
    }
}

/// JSON shape: every counter; `shard` is `null` for a merged total; `ring_mode` as
/// [`RingMode::name`] or `null`; `mem_policy` as `"preferred"`, `"failed"` or `null`, with
/// `mem_policy_errno` (`"EPERM"`, ...) when it failed; `blocking_ops` as `["statx", ...]`; `ops` as
/// `{"read": n, ...}`; `errors` as `{"ENOSPC": n, ...}`; `total_ops`, `error_count`;
/// `latency`, `read_latency`, `write_latency` as [`LatencySummary`]; `pool` as [`BufferPoolStats`].
#[cfg(feature = "serde")]
impl Serialize for ShardStats {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("ShardStats", 34)?;
        let shard = if self.is_total() {
            None
        } else {
            Some(self.shard)
        };
        s.serialize_field("shard", &shard)?;
        s.serialize_field("cpu", &self.cpu)?;
        s.serialize_field("numa_node", &self.numa_node)?;
        s.serialize_field("failed", &self.failed)?;
        s.serialize_field("ring_mode", &self.ring_mode)?;
        s.serialize_field("backend", &self.backend)?;
        s.serialize_field("backend_reason", &self.backend_reason)?;
        s.serialize_field("pool_note", &self.pool_note)?;
        s.serialize_field("ring_note", &self.ring_note)?;
        s.serialize_field("mem_policy", &self.mem_policy.map(MemPolicy::name))?;
        let policy_errno = match self.mem_policy {
            Some(MemPolicy::Failed { errno }) => Some(errno_name(errno)),
            _ => None,
        };
        s.serialize_field("mem_policy_errno", &policy_errno)?;
        s.serialize_field("blocking_ops", &self.blocking_ops)?;
        s.serialize_field("total_ops", &self.total_ops())?;
        s.serialize_field("ops", &OpsView(&self.ops))?;
        s.serialize_field("bytes_read", &self.bytes_read)?;
        s.serialize_field("bytes_written", &self.bytes_written)?;
        s.serialize_field("error_count", &self.error_count())?;
        s.serialize_field("errors", &ErrorsView(&self.errors))?;
        s.serialize_field("in_flight_hwm", &self.in_flight_hwm)?;
        s.serialize_field("queued_hwm", &self.queued_hwm)?;
        s.serialize_field("sq_full_events", &self.sq_full_events)?;
        s.serialize_field("pool_exhausted_events", &self.pool_exhausted_events)?;
        s.serialize_field("sleeps", &self.sleeps)?;
        s.serialize_field("wakeups", &self.wakeups)?;
        s.serialize_field("submit_calls", &self.submit_calls)?;
        s.serialize_field("task_polls", &self.task_polls)?;
        s.serialize_field("slow_task_polls", &self.slow_task_polls)?;
        s.serialize_field("sqes_submitted", &self.sqes_submitted)?;
        s.serialize_field("cancelled", &self.cancelled)?;
        s.serialize_field("deadline_exceeded", &self.deadline_exceeded)?;
        s.serialize_field("latency", &self.latency())?;
        s.serialize_field("read_latency", &self.read_latency())?;
        s.serialize_field("write_latency", &self.write_latency())?;
        s.serialize_field("inline_reads", &self.inline_reads)?;
        s.serialize_field("inline_fallbacks", &self.inline_fallbacks)?;
        s.serialize_field("inline_latency", &self.inline_latency())?;
        s.serialize_field("pool", &self.pool)?;
        s.end()
    }
}

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
    /// ([`RingMode::name`], `"none"` without a ring); per-kind series add `op`, errors add `errno`
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

fn rate(amount: f64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        amount / secs
    } else {
        0.0
    }
}

#[cfg(feature = "serde")]
impl Serialize for ExecutorStats {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("ExecutorStats", 3)?;
        s.serialize_field("elapsed_s", &self.elapsed.as_secs_f64())?;
        s.serialize_field("total", &self.total)?;
        s.serialize_field("shards", &self.shards)?;
        s.end()
    }
}

const MB: f64 = 1_000_000.0;

const HEADERS: [&str; 21] = [
    "shard",
    "cpu",
    "node",
    "ring",
    "ops",
    "reads",
    "inline",
    "writes",
    "MB read",
    "MB written",
    "errors",
    "cancelled",
    "p50 µs",
    "p99 µs",
    "p99.9 µs",
    "max µs",
    "in-flight hwm",
    "queued hwm",
    "sleeps",
    "wakeups",
    "slow polls",
];

fn table_row(s: &ShardStats) -> [String; HEADERS.len()] {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    let lat = s.latency();
    let shard = if s.is_total() {
        "total".to_string()
    } else if s.failed {
        format!("{}*", s.shard)
    } else {
        s.shard.to_string()
    };
    [
        shard,
        opt(s.cpu.map(|c| c.to_string())),
        match (s.numa_node, s.mem_policy) {
            (Some(n), Some(MemPolicy::Failed { .. })) => format!("{n}!"),
            (None, Some(MemPolicy::Failed { .. })) => "-!".to_string(),
            (n, _) => opt(n.map(|n| n.to_string())),
        },
        match s.backend {
            Backend::Threads => "threads".to_string(),
            Backend::IoUring => opt(s.ring_mode.map(|m| m.short_name().to_string())),
        },
        s.total_ops().to_string(),
        s.ops(OpKind::Read).to_string(),
        s.inline_reads.to_string(),
        s.ops(OpKind::Write).to_string(),
        format!("{:.1}", s.bytes_read as f64 / MB),
        format!("{:.1}", s.bytes_written as f64 / MB),
        s.error_count().to_string(),
        s.cancelled.to_string(),
        format!("{:.1}", lat.p50_us),
        format!("{:.1}", lat.p99_us),
        format!("{:.1}", lat.p999_us),
        format!("{:.1}", lat.max_us),
        s.in_flight_hwm.to_string(),
        s.queued_hwm.to_string(),
        s.sleeps.to_string(),
        s.wakeups.to_string(),
        s.slow_task_polls.to_string(),
    ]
}

/// A summary line, a table with one row per shard and a `total` row (MB = 10^6 bytes; latencies over
/// all operations; a `*` after a shard index marks a failed shard; `ring` is the ring's mode (`defer`,
/// `coop`, `plain`, `sqpoll`; `-` in a total whose shards differ); a `!` after a node marks a shard
/// whose NUMA memory policy the kernel refused; `inline` counts the reads (of `reads`) done on
/// callers' threads; the total's high-water marks are the largest single-shard ones), then the
/// backend, ring and pool lines of [`setup`](ExecutorStats::setup), then the errors by errno
/// name, most frequent first.
impl fmt::Display for ExecutorStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.total;
        writeln!(
            f,
            "{} shards, elapsed {:.3} s, {} ops ({:.0} ops/s), read {:.1} MB/s, written {:.1} MB/s",
            self.shards.len(),
            self.elapsed.as_secs_f64(),
            t.total_ops(),
            self.ops_per_sec(),
            rate(t.bytes_read as f64 / MB, self.elapsed),
            rate(t.bytes_written as f64 / MB, self.elapsed),
        )?;

        let mut rows: Vec<[String; HEADERS.len()]> = self.shards.iter().map(table_row).collect();
        rows.push(table_row(t));
        let mut widths = HEADERS.map(|h| h.chars().count());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row.iter()) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let write_row = |f: &mut fmt::Formatter<'_>, cells: &[&str]| -> fmt::Result {
            for (i, (cell, &w)) in cells.iter().zip(widths.iter()).enumerate() {
                if i == 0 {
                    write!(f, "{cell:<w$}")?;
                } else {
                    write!(f, "  {cell:>w$}")?;
                }
            }
            writeln!(f)
        };
        write_row(f, &HEADERS)?;
        for row in &rows {
            let cells: [&str; HEADERS.len()] = std::array::from_fn(|i| row[i].as_str());
            write_row(f, &cells)?;
        }

        if self.shards.iter().any(|s| s.failed) {
            writeln!(f, "* shard failed")?;
        }
        f.write_str(&self.setup())?;
        if let Some(MemPolicy::Failed { errno }) = t.mem_policy {
            writeln!(
                f,
                "! NUMA memory policy refused ({}): memory may be on another node",
                errno_name(errno)
            )?;
        }
        if !t.blocking_ops.is_empty() {
            let names: Vec<&str> = t.blocking_ops.iter().map(|k| k.name()).collect();
            writeln!(
                f,
                "blocking path (no io_uring opcode, or forced): {}",
                names.join(", ")
            )?;
        }
        if !t.errors.is_empty() {
            let mut errs: Vec<(i32, u64)> = t.errors.iter().map(|(&e, &n)| (e, n)).collect();
            errs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            write!(f, "errors:")?;
            for (i, (errno, n)) in errs.iter().enumerate() {
                let sep = if i == 0 { " " } else { ", " };
                write!(f, "{sep}{} x{n}", errno_name(*errno))?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "serde")]
    use serde_json::Value;

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
