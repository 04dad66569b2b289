//! `ShardStats`: one shard's counters and histograms, updated on its thread, and their merge.

use std::collections::BTreeMap;

use super::*;
use crate::driver::Backend;
use crate::pool::BufferPoolStats;
use crate::ring::RingMode;

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
    /// the full size with ENOMEM: RLIMIT_MEMLOCK), saying how many and why, or when the kernel
    /// lacks IORING_FEAT_NODROP (socket operations then count against the CQ's size); `None`
    /// otherwise.
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
    /// Completions the kernel dropped (io_uring_enter failed with EBADR: it could not keep an
    /// overflowing completion aside, being short of memory). Each is an operation that never
    /// completes; any is a sign the machine ran critically low on memory.
    pub cqes_dropped: u64,
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
    /// Reads made by tasks on this shard of its own files that took the task-local path: their
    /// SQE pushed as the shard took them, with no message, op table slot or order list entry
    /// (also counted in [`ops`](Self::ops), [`bytes_read`](Self::bytes_read) and the read
    /// latency).
    pub task_local_reads: u64,
    /// Buffered writes written with `pwrite` on the shard thread as they were admitted, their
    /// file having nothing unfinished here: no op table slot, order list entry or ready queue
    /// turn (also counted in [`ops`](Self::ops), [`bytes_written`](Self::bytes_written) and the
    /// write latency).
    pub writes_at_admission: u64,
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
    /// Pipes made for [`send_file`](crate::Executor::send_file) (the shard keeps up to 4 idle
    /// ones for the next sends).
    pub pipes_made: u64,
    /// Of those, pipes smaller than the 256 KiB asked for: `/proc/sys/fs/pipe-max-size`, half of
    /// `pipe-user-pages-soft` for all of the process's pipes, or a refused `F_SETPIPE_SZ`
    /// (sends still work, in more and smaller rounds; raise the limits to avoid it).
    pub pipes_shrunk: u64,
    /// Pipes closed, not reused, because a send ended with bytes in them (an error, a
    /// cancellation, a deadline).
    pub pipes_dirty: u64,
    /// Buffers in the shard's provided-buffer ring for
    /// [`TcpStream::recv_pooled`](crate::net::TcpStream::recv_pooled) (0: none; receives take
    /// plain buffers). See [`ExecutorBuilder::recv_buffers`](crate::ExecutorBuilder::recv_buffers).
    pub recv_buffers: u64,
    /// Receive buffers held at snapshot time: leases alive ([`RecvBuf`](crate::net::RecvBuf)) and
    /// plain buffers of receives whose bytes are arriving. A receive that waits for its peer
    /// holds none.
    pub recv_buffers_held: u64,
    /// Receives that found every ring buffer leased (ENOBUFS) and took a plain buffer.
    pub recv_buffers_exhausted: u64,
    /// [`send_file`](crate::Executor::send_file) rounds sent inline: sendfile(2) on the shard
    /// thread to a socket with room, the range being in the page cache (no pipe, no io-wq).
    pub send_file_inline: u64,
    /// send_file rounds to a socket that went through a pipe because their range was not all
    /// in the page cache (or the kernel has no `cachestat`, Linux 6.5).
    pub send_file_uncached: u64,
    /// The shard's buffer pool at snapshot time (merged: see [`merge_pool_stats`]).
    pub pool: BufferPoolStats,
    /// Latency of operations other than reads, writes and tasks. The all-operations histogram is
    /// the exact sum of this and the read and write ones, made on demand: each operation is
    /// recorded once, on the hot path.
    pub(crate) other_latency: LatencyHistogram,
    pub(crate) read_latency: LatencyHistogram,
    pub(crate) write_latency: LatencyHistogram,
    /// Latency of inline reads (a subset of `read_latency`): measured on the caller's thread
    /// from before the first `preadv2` to the data, kept to about 6% (16 buckets per power of
    /// two) before it reaches this histogram.
    pub(crate) inline_latency: LatencyHistogram,
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
            cqes_dropped: 0,
            pool_exhausted_events: 0,
            sleeps: 0,
            wakeups: 0,
            submit_calls: 0,
            task_polls: 0,
            slow_task_polls: 0,
            cancelled: 0,
            deadline_exceeded: 0,
            sqes_submitted: 0,
            task_local_reads: 0,
            writes_at_admission: 0,
            pool: BufferPoolStats::default(),
            other_latency: LatencyHistogram::new(),
            read_latency: LatencyHistogram::new(),
            write_latency: LatencyHistogram::new(),
            inline_reads: 0,
            inline_fallbacks: 0,
            pipes_made: 0,
            pipes_shrunk: 0,
            pipes_dirty: 0,
            recv_buffers: 0,
            recv_buffers_held: 0,
            recv_buffers_exhausted: 0,
            send_file_inline: 0,
            send_file_uncached: 0,
            inline_latency: LatencyHistogram::new(),
        }
    }

    /// Whether this is a merged total (`shard == TOTAL_SHARD`).
    pub fn is_total(&self) -> bool {
        self.shard == TOTAL_SHARD
    }

    #[inline]
    pub(crate) fn count_op(&mut self, kind: OpKind, latency_ns: u64) {
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

    /// Counts one report of dropped completions (EBADR from io_uring_enter).
    #[inline]
    pub fn note_cqes_dropped(&mut self) {
        self.cqes_dropped = self.cqes_dropped.saturating_add(1);
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

    /// Counts one buffered write written at its admission.
    #[inline]
    pub fn note_write_at_admission(&mut self) {
        self.writes_at_admission = self.writes_at_admission.saturating_add(1);
    }

    /// Counts one read that took the task-local path.
    #[inline]
    pub fn note_task_local_read(&mut self) {
        self.task_local_reads = self.task_local_reads.saturating_add(1);
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
    pub(crate) fn all_latency(&self) -> LatencyHistogram {
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

    /// Takes the counters of the calling shard thread's pipe pool (`crate::pipes`) and receive
    /// buffers (`crate::recv_ring`).
    pub(crate) fn note_pipes(&mut self) {
        let p = crate::pipes::stats();
        self.pipes_made = p.made;
        self.pipes_shrunk = p.shrunk;
        self.pipes_dirty = p.dirty;
        let r = crate::recv_ring::RecvBuffers::stats();
        self.recv_buffers = r.ring_buffers;
        self.recv_buffers_held = r.held;
        self.recv_buffers_exhausted = r.exhausted;
        self.send_file_inline = p.inline_rounds;
        self.send_file_uncached = p.uncached_rounds;
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
        self.cqes_dropped = self.cqes_dropped.saturating_add(other.cqes_dropped);
        self.pool_exhausted_events = self
            .pool_exhausted_events
            .saturating_add(other.pool_exhausted_events);
        self.sleeps = self.sleeps.saturating_add(other.sleeps);
        self.wakeups = self.wakeups.saturating_add(other.wakeups);
        self.task_polls = self.task_polls.saturating_add(other.task_polls);
        self.slow_task_polls = self.slow_task_polls.saturating_add(other.slow_task_polls);
        self.submit_calls = self.submit_calls.saturating_add(other.submit_calls);
        self.sqes_submitted = self.sqes_submitted.saturating_add(other.sqes_submitted);
        self.task_local_reads = self.task_local_reads.saturating_add(other.task_local_reads);
        self.writes_at_admission = self
            .writes_at_admission
            .saturating_add(other.writes_at_admission);
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
        self.pipes_made = self.pipes_made.saturating_add(other.pipes_made);
        self.pipes_shrunk = self.pipes_shrunk.saturating_add(other.pipes_shrunk);
        self.pipes_dirty = self.pipes_dirty.saturating_add(other.pipes_dirty);
        self.recv_buffers = self.recv_buffers.saturating_add(other.recv_buffers);
        self.recv_buffers_held = self
            .recv_buffers_held
            .saturating_add(other.recv_buffers_held);
        self.recv_buffers_exhausted = self
            .recv_buffers_exhausted
            .saturating_add(other.recv_buffers_exhausted);
        self.send_file_inline = self.send_file_inline.saturating_add(other.send_file_inline);
        self.send_file_uncached = self
            .send_file_uncached
            .saturating_add(other.send_file_uncached);
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
        out.cqes_dropped = sub(self.cqes_dropped, earlier.cqes_dropped);
        out.pool_exhausted_events = sub(self.pool_exhausted_events, earlier.pool_exhausted_events);
        out.sleeps = sub(self.sleeps, earlier.sleeps);
        out.wakeups = sub(self.wakeups, earlier.wakeups);
        out.submit_calls = sub(self.submit_calls, earlier.submit_calls);
        out.sqes_submitted = sub(self.sqes_submitted, earlier.sqes_submitted);
        out.task_local_reads = sub(self.task_local_reads, earlier.task_local_reads);
        out.writes_at_admission = sub(self.writes_at_admission, earlier.writes_at_admission);
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
        out.pipes_made = sub(self.pipes_made, earlier.pipes_made);
        out.pipes_shrunk = sub(self.pipes_shrunk, earlier.pipes_shrunk);
        out.pipes_dirty = sub(self.pipes_dirty, earlier.pipes_dirty);
        // recv_buffers and recv_buffers_held are levels: the later snapshot's.
        out.recv_buffers_exhausted =
            sub(self.recv_buffers_exhausted, earlier.recv_buffers_exhausted);
        out.send_file_inline = sub(self.send_file_inline, earlier.send_file_inline);
        out.send_file_uncached = sub(self.send_file_uncached, earlier.send_file_uncached);
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
