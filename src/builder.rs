//! `ExecutorBuilder`: every setting of an executor, checked, and the start of its shards.

use crate::driver::{Backend, BackendChoice};
use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::ring::RingConfig;
use crate::routes::ExecShared;
use crate::shard::{spawn, Message, ShardConfig};
use crate::stats::OpKind;
use crate::topology::{allowed_cpus, Placement, Topology};
use crate::validate::{Limits, DEFAULT_MAX_REQUEST_SIZE, MAX_REQUEST_SIZE_LIMIT};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static NEXT_EXECUTOR_ID: AtomicU64 = AtomicU64::new(1);

/// Builds an [`Executor`]. Every setting has a default that suits a server.
///
/// ```
/// # fn main() -> ringshard::Result<()> {
/// let exec = ringshard::Executor::builder()
///     .shards(2)                       // two shards, spread over NUMA nodes
///     .buffer_size(64 * 1024)          // per-shard pool: 64 KiB buffers ...
///     .buffer_count(32)                // ... 32 of them
///     .spin(std::time::Duration::from_micros(50))
///     .build()?;
/// assert_eq!(exec.shard_count(), 2);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ExecutorBuilder {
    placement: Placement,
    ring: RingConfig,
    buffer_size: usize,
    buffer_count: Option<usize>,
    max_files: u32,
    channel_capacity: usize,
    spin: Duration,
    pin: bool,
    inline_buffered_writes: bool,
    sysfs_root: Option<std::path::PathBuf>,
    max_request_size: usize,
    shutdown_timeout: Duration,
    backend: BackendChoice,
    threads_per_shard: usize,
    slow_op: Option<Duration>,
    inline_write_stall: Option<Duration>,
    force_blocking: Vec<OpKind>,
    max_live_ops: usize,
    max_pending_fds: usize,
    recv_buffers: (u16, usize),
    send_zc_min: u64,
    send_file_buffers: usize,
    /// Set when a first `build` found io_uring unusable for a shard's ring (ENOMEM at the
    /// fewest entries): the threads backend, for this reason.
    threads_because: Option<String>,
    inline_reads: bool,
    inline_read_limit: usize,
    inline_read_hook: Option<crate::inline::TestHook>,
}

impl std::fmt::Debug for ExecutorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorBuilder")
            .field("placement", &self.placement)
            .field("ring", &self.ring)
            .field("buffer_size", &self.buffer_size)
            .field("buffer_count", &self.buffer_count)
            .field("max_files", &self.max_files)
            .field("channel_capacity", &self.channel_capacity)
            .field("spin", &self.spin)
            .field("pin", &self.pin)
            .field("inline_buffered_writes", &self.inline_buffered_writes)
            .field("sysfs_root", &self.sysfs_root)
            .field("max_request_size", &self.max_request_size)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("backend", &self.backend)
            .field("threads_per_shard", &self.threads_per_shard)
            .field("slow_op", &self.slow_op)
            .field("inline_write_stall", &self.inline_write_stall)
            .field("force_blocking", &self.force_blocking)
            .field("max_live_ops", &self.max_live_ops)
            .field("max_pending_fds", &self.max_pending_fds)
            .field("recv_buffers", &self.recv_buffers)
            .field("send_zc_min", &self.send_zc_min)
            .field("send_file_buffers", &self.send_file_buffers)
            .field("threads_because", &self.threads_because)
            .field("inline_reads", &self.inline_reads)
            .field("inline_read_limit", &self.inline_read_limit)
            .finish_non_exhaustive()
    }
}

impl Default for ExecutorBuilder {
    fn default() -> Self {
        ExecutorBuilder {
            placement: Placement::AllCores,
            ring: RingConfig::default(),
            buffer_size: 64 * 1024,
            buffer_count: None,
            max_files: 1024,
            channel_capacity: 4096,
            spin: Duration::from_micros(20),
            pin: true,
            inline_buffered_writes: true,
            sysfs_root: None,
            max_request_size: DEFAULT_MAX_REQUEST_SIZE,
            shutdown_timeout: Duration::from_secs(10),
            backend: BackendChoice::Auto,
            threads_per_shard: DEFAULT_THREADS_PER_SHARD,
            slow_op: Some(Duration::from_secs(1)),
            inline_write_stall: Some(Duration::from_millis(50)),
            force_blocking: Vec::new(),
            max_live_ops: crate::shard::MAX_LIVE_OPS,
            max_pending_fds: crate::fd_transit::DEFAULT_MAX_PENDING_FDS,
            send_zc_min: crate::op::send_file_direct::DEFAULT_ZC_MIN,
            send_file_buffers: 2,
            recv_buffers: (
                crate::recv_ring::DEFAULT_COUNT,
                crate::recv_ring::DEFAULT_SIZE,
            ),
            threads_because: None,
            inline_reads: true,
            inline_read_limit: crate::inline::DEFAULT_INLINE_READ_LIMIT,
            inline_read_hook: None,
        }
    }
}

/// Worker threads per shard at most on the threads backend, by default.
const DEFAULT_THREADS_PER_SHARD: usize = 16;

/// Buffers per shard when not set: 64 (4 MiB of 64 KiB buffers), fewer when RLIMIT_MEMLOCK would
/// refuse that and the process lacks CAP_IPC_LOCK.
fn default_buffer_count(buffer_size: usize, shards: usize) -> usize {
    const WANT: usize = 64;
    let limit = match crate::error::memlock_limit() {
        Some(l) if !has_cap_ipc_lock() => l as usize,
        _ => return WANT,
    };
    // Leave a quarter of the limit for everything else that locks memory.
    let budget = limit / 4 * 3 / shards.max(1);
    let stride = buffer_size.div_ceil(4096) * 4096;
    (budget / stride.max(1)).clamp(4, WANT)
}

fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

impl ExecutorBuilder {
    /// Where the shards go (default: one per CPU this process may run on).
    pub fn placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// `n` shards spread across NUMA nodes (physical cores before SMT siblings).
    pub fn shards(self, n: usize) -> Self {
        self.placement(Placement::Spread(n))
    }

    /// One shard on each of these CPUs.
    pub fn cores(self, cpus: Vec<usize>) -> Self {
        self.placement(Placement::Cores(cpus))
    }

    /// One shard on each CPU of these NUMA nodes.
    pub fn numa_nodes(self, nodes: Vec<u32>) -> Self {
        self.placement(Placement::NumaNodes(nodes))
    }

    /// One shard per physical core (SMT siblings skipped).
    pub fn physical_cores(self) -> Self {
        self.placement(Placement::PhysicalCores)
    }

    /// Ring setup (entries, DEFER_TASKRUN, SQPOLL, worker limits).
    pub fn ring(mut self, ring: RingConfig) -> Self {
        self.ring = ring;
        self
    }

    /// Submission queue entries per shard ring (default 256).
    pub fn ring_entries(mut self, entries: u32) -> Self {
        self.ring.entries = entries;
        self
    }

    /// Kernel submission polling with its thread on `cpu` (opt-in: it burns that core).
    pub fn sqpoll(mut self, cpu: u32) -> Self {
        self.ring.sqpoll_cpu = Some(cpu);
        self
    }

    /// Bytes per pool buffer (default 64 KiB). Larger reads and writes are split into buffers.
    pub fn buffer_size(mut self, bytes: usize) -> Self {
        self.buffer_size = bytes;
        self
    }

    /// Buffers per shard pool: the most read/write chunks one shard has in flight (default 64, or
    /// fewer to fit RLIMIT_MEMLOCK).
    pub fn buffer_count(mut self, count: usize) -> Self {
        self.buffer_count = Some(count);
        self
    }

    /// Slots in each shard's registered file table (default 1024; 0 disables registered files).
    pub fn max_files(mut self, n: u32) -> Self {
        self.max_files = n;
        self
    }

    /// Operations each shard admits at once (default 4096, at most 65,536): the bound on its
    /// op table and per-file order lists. Requests beyond it wait in the shard's inbox, in order;
    /// sending never blocks (see "Embedding in a server" in the README for backpressure).
    pub fn channel_capacity(mut self, n: usize) -> Self {
        self.channel_capacity = n;
        self
    }

    /// The most descriptors in transit between callers and shards (default
    /// [`DEFAULT_MAX_PENDING_FDS`](crate::DEFAULT_MAX_PENDING_FDS) = 128; 1 to 2^20): opened and not
    /// yet in their shard's file table, or dropped (or closed) and not yet closed by their shard.
    /// While that many are, opens wait before they go to a shard ([`Executor::open_async`]
    /// without blocking anything: its completion comes later; [`Executor::open`] waits for that
    /// completion) and [`Executor::adopt`] blocks, so the descriptors an executor holds stay below
    /// the files you hold open at once plus this bound, however fast you open and drop files and
    /// however slowly a shard gets to its closes (EMFILE otherwise, with `ulimit -n 1024`).
    /// Dropping a file never waits. See [`Executor::pending_fds`].
    pub fn max_pending_fds(mut self, n: usize) -> Self {
        self.max_pending_fds = n.clamp(1, crate::fd_transit::MAX_PENDING_FDS_LIMIT);
        self
    }

    /// How long an idle shard spins before it sleeps (default 20 µs; zero sleeps at once; longer
    /// than a second is clamped to a second).
    pub fn spin(mut self, d: Duration) -> Self {
        self.spin = d.min(MAX_SPIN);
        self
    }

    /// The largest read or write one request may ask for (default 256 MiB, at most 1 TiB).
    /// Larger requests fail with [`Error::InvalidArgument`] before they leave the caller.
    /// A read allocates only as its data arrives, so a read past the end of a small file costs
    /// little whatever its length.
    pub fn max_request_size(mut self, bytes: usize) -> Self {
        self.max_request_size = bytes;
        self
    }

    /// How long [`Executor::shutdown`] lets in-flight operations run before it cancels those
    /// that have not finished (a read from a FIFO with no writer, a stalled device). Default
    /// 10 s; any `Duration` works. What a cancellation does not end within a second more (a
    /// zero-copy send whose pages a peer that stopped reading still holds, a write stuck in a
    /// device that takes no cancellation) is abandoned: its handle fails with
    /// [`Error::Shutdown`](crate::Error::Shutdown), and the memory the kernel may still use
    /// (its buffers; a registered pool buffer keeps the pool's memory mapped) and its
    /// descriptors are leaked, never freed or reused, so shutdown returns.
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// Whether buffered (not O_DIRECT) writes are done with `pwrite` on the shard thread (default
    /// true). On ext4 a buffered write cannot be done without blocking, so io_uring hands each one
    /// to a kernel worker thread, which costs more than the write; done inline, the write is a
    /// memory copy into the page cache, but a shard stalls while the kernel throttles writers
    /// (dirty page limits). An inline write whose system call blocks (see
    /// [`inline_write_stall`](Self::inline_write_stall)) sends that file's buffered writes through
    /// the ring for 5 s, so one slow file holds its shard once rather than on every write. Turn
    /// it off to keep shards responsive under heavy write-back.
    pub fn inline_buffered_writes(mut self, on: bool) -> Self {
        self.inline_buffered_writes = on;
        self
    }

    /// How long one inline `pwrite` may block (plus 1 ns per byte it copies) before that file's
    /// buffered writes go through the ring for 5 s (default 50 ms; `None`: never, every buffered
    /// write stays inline). Keep inline writes on filesystems where ring writes misbehave (FUSE
    /// `direct_io` with `FUSE_ASYNC_DIO` turns a short ring write into EIO).
    pub fn inline_write_stall(mut self, threshold: Option<Duration>) -> Self {
        self.inline_write_stall = threshold;
        self
    }

    /// Whether buffered reads are first tried on the caller's thread (default true): a read of
    /// a regular file opened without O_DIRECT, of at most
    /// [`inline_read_limit`](Self::inline_read_limit) bytes, calls `preadv2(.., RWF_NOWAIT)`
    /// right there. If the data is in the page cache the read is done, with no hand-off to the
    /// shard (a ready [`Completion`](crate::Completion), or a result in the [`Session`](crate::Session)'s own queue); if it is not
    /// (EAGAIN), the read goes to the shard as it would without this, with whatever part
    /// arrived. Reads never overtake a write, `set_len`, `fallocate`, append or `writev` of the
    /// same file sent before them through this executor: while one is unfinished, the file's
    /// reads go to the shard. Counted per shard in `ShardStats::inline_reads` and
    /// `inline_fallbacks`.
    ///
    /// The trade-off: a hit costs the calling thread the copy (at most the limit) instead of a
    /// hand-off, and a miss costs it one failed system call (about a microsecond) before the
    /// read is routed. Turn it off to keep callers' threads out of the kernel entirely, or when
    /// nearly every read misses the page cache. Filesystems that refuse RWF_NOWAIT (tmpfs,
    /// procfs) are detected on the first read of each file and routed from then on.
    pub fn inline_reads(mut self, on: bool) -> Self {
        self.inline_reads = on;
        self
    }

    /// The longest read tried on the caller's thread (see [`inline_reads`](Self::inline_reads);
    /// default [`DEFAULT_INLINE_READ_LIMIT`](crate::DEFAULT_INLINE_READ_LIMIT), 64 KiB; at most
    /// [`MAX_INLINE_READ_LIMIT`](crate::MAX_INLINE_READ_LIMIT)). Longer reads go to the shard,
    /// so a runtime thread is never held for a long copy.
    pub fn inline_read_limit(mut self, bytes: usize) -> Self {
        self.inline_read_limit = bytes;
        self
    }

    /// Runs `hook` inside every inline read, after its checks and before its system call: a test
    /// can hold a reader exactly where a concurrent close must wait for it. For tests.
    #[doc(hidden)]
    pub fn inline_read_hook_for_tests(
        mut self,
        hook: std::sync::Arc<dyn Fn() + Send + Sync>,
    ) -> Self {
        self.inline_read_hook = Some(hook);
        self
    }

    /// Which backend runs the shards' operations (default [`BackendChoice::Auto`]: io_uring where
    /// it works, the threads backend where it is blocked; `RINGSHARD_BACKEND=threads|io_uring`
    /// decides when this is `Auto`). The choice and its reason are in
    /// [`ShardStats::backend`](crate::ShardStats::backend) and logged once (feature `tracing`).
    pub fn backend(mut self, choice: BackendChoice) -> Self {
        self.backend = choice;
        self
    }

    /// Worker threads per shard at most on the threads backend (default 16, at least 1): they
    /// run the system calls that may block (writes, O_DIRECT reads, syncs, page-cache misses),
    /// started on demand and pinned to the shard's CPU. More keep more O_DIRECT reads in flight.
    pub fn threads_per_shard(mut self, n: usize) -> Self {
        self.threads_per_shard = n.clamp(1, 1024);
        self
    }

    /// Operations that take longer than this, from request to result, are logged as warnings
    /// through `tracing` (feature `tracing`; target `ringshard::slow`, with the shard, the kind,
    /// the path, the latency and the errno if it failed). Default 1 s; `None` turns it off. Costs
    /// one comparison per operation.
    pub fn slow_op_threshold(mut self, threshold: Option<Duration>) -> Self {
        self.slow_op = threshold;
        self
    }

    /// Runs these operation kinds with plain system calls on the shard thread even where the
    /// kernel has their io_uring opcode: the path taken where it lacks them, so that it can be
    /// tested on any kernel. Shown in `ShardStats::blocking_ops`. The environment variable
    /// `RINGSHARD_FORCE_BLOCKING` (kind names separated by commas, as in [`OpKind::name`], or
    /// `all`) adds to this list. For tests.
    #[doc(hidden)]
    pub fn force_blocking(mut self, kinds: &[OpKind]) -> Self {
        self.force_blocking.extend_from_slice(kinds);
        self
    }

    /// Lowers the hard cap on a shard's live operations (socket operations waiting for peers
    /// included; normally half the op table's slot space), past which a request fails at
    /// admission, so that a test can reach it. Clamped to 1 ..= the normal cap. For tests.
    #[doc(hidden)]
    pub fn max_live_ops_for_tests(mut self, n: usize) -> Self {
        self.max_live_ops = n.clamp(1, crate::shard::MAX_LIVE_OPS);
        self
    }

    /// The receive buffers of each shard, for
    /// [`TcpStream::recv_pooled`](crate::net::TcpStream::recv_pooled): `count` buffers of `size`
    /// bytes (default 256 x 16 KiB: 4 MiB of address space per shard, touched as the kernel
    /// fills buffers) in a provided-buffer ring (Linux 5.19+), from which the kernel takes one only
    /// when bytes have arrived, so a connection that waits holds none. `count` is a power of two
    /// up to 32,768, or 0 for no ring; `size` 1 byte to 1 MiB. When every buffer is leased a
    /// receive takes a plain buffer of `size` bytes for itself (`ShardStats::recv_buffers_exhausted`);
    /// without a ring (the threads backend, an older kernel, `count` 0) every receive does, once
    /// its socket is readable.
    pub fn recv_buffers(mut self, count: u16, size: usize) -> Self {
        self.recv_buffers = (count, size);
        self
    }

    /// [`send_file`](crate::Executor::send_file) of a file open with O_DIRECT reads into a
    /// buffer (a registered pool buffer when one of at least the round's size is free: set
    /// [`buffer_size`](Self::buffer_size) to 256 KiB or more for sends of whole rounds) and
    /// sends rounds of at least this many bytes (at most 256 KiB each) with IORING_OP_SEND_ZC
    /// (Linux 6.0; elsewhere, and on the threads backend, a plain send), and smaller ones with a
    /// plain send (a copy). 0: always zero-copy; `u64::MAX` (the default): never. Zero-copy
    /// saves a copy only towards a network device (to a local peer, loopback or veth, the
    /// kernel copies anyway: measured, it cost as much CPU as a copy or more), and a round's
    /// buffer is the kernel's until the peer acknowledges the round, so sends follow one
    /// another at the round trip's pace (the next round's READ runs meanwhile, into a second
    /// pool buffer): try `256 << 10` (whole rounds) on a NIC with short
    /// round trips, and measure. See BENCHMARKS.md ("send_file from O_DIRECT files").
    pub fn send_zc_min(mut self, bytes: u64) -> Self {
        self.send_zc_min = bytes;
        self
    }

    /// Registered pool buffers per [`send_file`](crate::Executor::send_file) of an O_DIRECT
    /// file: 2 (the default) reads each round while the round before it is sent; 1 reads and
    /// sends in turn. Clamped to 1..=2. (Without pool buffers a send has one of its own.) For
    /// measuring (BENCHMARKS.md).
    #[doc(hidden)]
    pub fn send_file_buffers(mut self, n: usize) -> Self {
        self.send_file_buffers = n.clamp(1, 2);
        self
    }

    /// Whether shard threads pin themselves to their CPU (default true).
    pub fn pin(mut self, on: bool) -> Self {
        self.pin = on;
        self
    }

    /// Reads the topology from this directory instead of `/sys` (for tests with fixture trees).
    pub fn sysfs_root(mut self, root: impl Into<std::path::PathBuf>) -> Self {
        self.sysfs_root = Some(root.into());
        self
    }

    /// Starts the shards. Each is set up on its own thread (pinned, memory policy, ring, pool);
    /// the first failure stops the ones already started and is returned.
    pub fn build(self) -> Result<Executor> {
        self.ring.validate()?;
        if self.channel_capacity == 0 || self.channel_capacity > MAX_CHANNEL_CAPACITY {
            return Err(Error::InvalidConfig(format!(
                "channel_capacity {} out of range: use 1 to {MAX_CHANNEL_CAPACITY}",
                self.channel_capacity
            )));
        }
        if self.max_request_size == 0 || self.max_request_size > MAX_REQUEST_SIZE_LIMIT {
            return Err(Error::InvalidConfig(format!(
                "max_request_size {} out of range: use 1 to {MAX_REQUEST_SIZE_LIMIT} bytes",
                self.max_request_size
            )));
        }
        let (count, size) = self.recv_buffers;
        if (count != 0 && !count.is_power_of_two())
            || count > crate::recv_ring::MAX_COUNT
            || size == 0
            || size > crate::recv_ring::MAX_SIZE
        {
            return Err(Error::InvalidConfig(format!(
                "recv_buffers({count}, {size}) out of range: use a power of two up to {} \
                 buffers (or 0 for none) of 1 to {} bytes",
                crate::recv_ring::MAX_COUNT,
                crate::recv_ring::MAX_SIZE
            )));
        }
        if self.inline_read_limit > crate::inline::MAX_INLINE_READ_LIMIT {
            return Err(Error::InvalidConfig(format!(
                "inline_read_limit {} out of range: use 0 to {} bytes (longer reads should go \
                 to the shards), or inline_reads(false)",
                self.inline_read_limit,
                crate::inline::MAX_INLINE_READ_LIMIT
            )));
        }
        let topo = match &self.sysfs_root {
            Some(root) => Topology::from_sysfs(root)?,
            None => Topology::detect()?,
        };
        let allowed = if self.sysfs_root.is_some() {
            topo.cpus().iter().map(|c| c.id).collect()
        } else {
            allowed_cpus()?
        };
        let cpus = self.placement.resolve(&topo, &allowed)?;
        let multi_node = topo.nodes().len() > 1;
        let buffer_count = self
            .buffer_count
            .unwrap_or_else(|| default_buffer_count(self.buffer_size, cpus.len()));
        let chosen = match &self.threads_because {
            Some(why) => crate::driver::Chosen {
                backend: Backend::Threads,
                reason: why.clone(),
                forced: false,
            },
            None => crate::driver::choose(self.backend, &self.ring)?,
        };
        crate::logging::backend_chosen(chosen.backend, &chosen.reason);
        let backend_reason = (chosen.backend == Backend::Threads
            || self.backend != BackendChoice::Auto)
            .then(|| chosen.reason.clone());
        let id = NEXT_EXECUTOR_ID.fetch_add(1, Ordering::Relaxed);
        let mut force_blocking = self.force_blocking.clone();
        if let Ok(v) = std::env::var("RINGSHARD_FORCE_BLOCKING") {
            for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                force_blocking.extend(
                    OpKind::ALL
                        .into_iter()
                        .filter(|k| name == "all" || k.name() == name),
                );
            }
        }
        let mut links = Vec::with_capacity(cpus.len());
        let mut threads = Vec::with_capacity(cpus.len());
        for (index, &cpu) in cpus.iter().enumerate() {
            let cfg = ShardConfig {
                index,
                exec_id: id,
                cpu: self.pin.then_some(cpu),
                node: topo.node_of_cpu(cpu),
                bind_memory: multi_node,
                ring: self.ring.clone(),
                buffer_size: self.buffer_size,
                buffer_count,
                max_files: self.max_files,
                spin: self.spin,
                inline_buffered_writes: self.inline_buffered_writes,
                channel_capacity: self.channel_capacity,
                backend: chosen.backend,
                threads_per_shard: self.threads_per_shard,
                backend_reason: backend_reason.clone(),
                inline_write_stall: self.inline_write_stall,
                slow_op_ns: self
                    .slow_op
                    .map_or(u64::MAX, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64),
                force_blocking: force_blocking.clone(),
                max_live_ops: self.max_live_ops,
                recv_buffer_count: self.recv_buffers.0,
                recv_buffer_size: self.recv_buffers.1,
            };
            match spawn(cfg) {
                Ok((link, handle)) => {
                    links.push(link);
                    threads.push(handle);
                }
                Err(e) => {
                    for link in &links {
                        let _ = link.send(Message::Shutdown {
                            grace: Duration::ZERO,
                            done: None,
                        });
                    }
                    for t in threads {
                        let _ = t.join();
                    }
                    // A shard's ring did not fit RLIMIT_MEMLOCK even with the fewest entries
                    // (the probe's small ring did; the other shards' rings and buffers took the
                    // rest): every shard starts again on the threads backend, which pins nothing.
                    if chosen.backend == Backend::IoUring && !chosen.forced {
                        if let Some(why) = crate::driver::fallback_reason(&e) {
                            let why = format!("shard {index}: {why}");
                            return ExecutorBuilder {
                                threads_because: Some(why),
                                ..self.clone()
                            }
                            .build();
                        }
                    }
                    return Err(e);
                }
            }
        }
        let shared = Arc::new(ExecShared {
            id,
            shards: links,
            closed: AtomicBool::new(false),
            fds: crate::fd_transit::FdTransit::new(self.max_pending_fds),
            opens: AtomicU64::new(0),
            limits: Limits {
                max_request: self.max_request_size,
                send_zc_min: self.send_zc_min,
                send_file_buffers: self.send_file_buffers,
            },
            inline: crate::inline::InlineReads::new(
                self.inline_reads,
                self.inline_read_limit,
                cpus.len(),
                self.inline_read_hook.clone(),
            ),
        });
        // Tasks find their executor (for `ringshard::local()`) through this; a weak reference,
        // so the shards never keep the executor's routes alive; type-erased, as the shard is
        // below the routes (`local()` knows the type).
        for link in &shared.shards {
            let exec: std::sync::Weak<ExecShared> = Arc::downgrade(&shared);
            let _ = link.send(Message::SetExec(exec));
        }
        Ok(Executor {
            shared,
            threads: Mutex::new(threads),
            started: Instant::now(),
            shutdown_timeout: self.shutdown_timeout,
        })
    }
}

/// The longest idle spin a shard accepts.
const MAX_SPIN: Duration = Duration::from_secs(1);
/// The largest `channel_capacity`: keeps every shard's op table far inside the 24 bits of slot
/// that `user_data` has room for.
pub const MAX_CHANNEL_CAPACITY: usize = 65_536;
