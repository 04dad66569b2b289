//! The executor: builds the shards, routes requests to them, merges their statistics, shuts down.

use crate::completion::{pair, Completer, Completion};
use crate::driver::{Backend, BackendChoice};
use crate::error::{Error, Result};
use crate::fd_transit::{InTransit, PendingFds};
use crate::file::{File, FileFlags, FileRef, OpenOptions};
use crate::op::{self, FileOp};
use crate::request::{self, Limits, DEFAULT_MAX_REQUEST_SIZE, MAX_REQUEST_SIZE_LIMIT};
use crate::ring::RingConfig;
use crate::router::{shard_for, FileKey};
use crate::session::{Session, DEFAULT_SESSION_CAPACITY};
use crate::shard::{spawn, IoOp, IoRequest, Message, Reply, ShardConfig, ShardContext, ShardLink};
use crate::stats::{ExecutorStats, OpKind, ShardStats};
use crate::topology::{allowed_cpus, Placement, Topology};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
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
    max_pending_fds: usize,
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
            .field("max_pending_fds", &self.max_pending_fds)
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
            max_pending_fds: crate::fd_transit::DEFAULT_MAX_PENDING_FDS,
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
    /// 10 s; any `Duration` works.
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
    /// shard (a ready [`Completion`], or a result in the [`Session`]'s own queue); if it is not
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
            },
            inline: crate::inline::InlineReads::new(
                self.inline_reads,
                self.inline_read_limit,
                cpus.len(),
                self.inline_read_hook.clone(),
            ),
        });
        // Tasks find their executor (for `ringshard::local()`) through this; a weak reference,
        // so the shards never keep the executor's routes alive.
        for link in &shared.shards {
            let _ = link.send(Message::SetExec(Arc::downgrade(&shared)));
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

/// What files, sessions and the executor share: the routes to the shards.
pub(crate) struct ExecShared {
    pub(crate) id: u64,
    pub(crate) shards: Vec<ShardLink>,
    /// Shutdown has begun: new work is refused.
    pub(crate) closed: AtomicBool,
    /// The bound on descriptors in transit (see `fd_transit`).
    pub(crate) fds: Arc<crate::fd_transit::FdTransit>,
    /// Opens sent so far: the next one's shard (in turn) and its own order key.
    opens: AtomicU64,
    pub(crate) limits: Limits,
    /// Inline reads: settings and the per-shard counters of reads done on callers' threads.
    pub(crate) inline: crate::inline::InlineReads,
}

impl std::fmt::Debug for ExecShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecShared")
            .field("id", &self.id)
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl ExecShared {
    /// Sends `msg` to `shard`; gives it back with the error when it cannot go.
    ///
    /// On `shard`'s own thread (a task, a `submit_to` closure, a handle dropped there) the
    /// message skips the channel: it goes into the shard's thread-local queue, behind everything
    /// sent there before it, so that every request one thread makes to one file, single or in a
    /// batch, a session flush or a close, is admitted in the order it was made.
    #[allow(clippy::result_large_err)] // cold path: shut down or the shard is gone
    pub(crate) fn send(
        &self,
        shard: usize,
        msg: Message,
    ) -> std::result::Result<(), (Message, Error)> {
        if self.closed.load(Ordering::Acquire) {
            return Err((msg, Error::Shutdown));
        }
        let msg = match crate::shard::tasks::try_local(self.id, shard, msg) {
            Ok(()) => return Ok(()),
            Err(msg) => msg,
        };
        match self.shards.get(shard) {
            Some(link) => link.send(msg),
            None => Err((msg, Error::invalid("route", format!("no shard {shard}")))),
        }
    }

    /// Sends `msg`; on failure completes the completers inside it with the error.
    pub(crate) fn send_or_fail(&self, shard: usize, msg: Message) {
        if let Err((msg, e)) = self.send(shard, msg) {
            // Nothing to wait for: the shard is not running this shutdown.
            if let Some(done) = msg.fail(&e) {
                done.complete(Ok(()));
            }
        }
    }

    /// `file` must have been opened by this executor.
    pub(crate) fn check_owner(&self, file: &File) -> Result<()> {
        if file.handle().exec == self.id {
            Ok(())
        } else {
            Err(Error::BadHandle(format!(
                "{} was opened by another executor",
                file.path().display()
            )))
        }
    }

    /// Closes a file whose last handle was dropped: nobody waits for the result.
    pub(crate) fn close_detached(&self, file: FileRef) {
        let req = IoRequest {
            file,
            op: IoOp::Close(self.fds.enter()),
            reply: Reply::Detached,
            at: Instant::now(),
            deadline: None,
            pending: None,
        };
        // Refused after shutdown: the shard closes every file as it stops.
        let _ = self.send(file.shard, Message::Io(req));
    }

    /// Routes one checked request. On the thread of the file's own shard (a task, a `submit_to`
    /// closure) it skips the channel (see [`send`](Self::send)).
    pub(crate) fn request<T>(
        &self,
        file: &File,
        op: Result<IoOp>,
        reply: impl FnOnce(Completer<T>) -> Reply,
        deadline: Option<Instant>,
    ) -> Completion<T> {
        let op = match op.and_then(|op| self.check_owner(file).map(|()| op)) {
            Ok(op) => op,
            Err(e) => return Completion::ready(Err(e)),
        };
        let (c, req) = crate::shard::tasks::make(self, file, op, reply, deadline);
        self.send_or_fail(file.shard(), Message::Io(req));
        c
    }

    /// A read of `len` bytes at `offset` into `buf` (checked here): done on this thread if its
    /// data is cached (see `crate::inline`), else routed like any request (with the part that
    /// arrived here, if any).
    pub(crate) fn read(
        &self,
        file: &File,
        offset: u64,
        len: usize,
        buf: Vec<u8>,
        deadline: Option<Instant>,
    ) -> Completion<Vec<u8>> {
        if let Err(e) = request::read(file, offset, len, self.limits) {
            return Completion::ready(Err(e));
        }
        // The op is built only for the shard: a hit needs none.
        let (buf, kept) = match self.try_inline_read(file, offset, len, buf) {
            crate::inline::Attempt::Done(data) => return Completion::ready(Ok(data)),
            crate::inline::Attempt::Route { buf, kept } => (buf, kept),
        };
        let op = IoOp::Read {
            offset,
            len,
            buf,
            kept,
            flags: 0,
        };
        self.request(file, Ok(op), Reply::Data, deadline)
    }

    /// Tries a checked read op on this thread: `Ok` with its data when done, else the op to
    /// route (a plain read with flags, or after a partial attempt, with the part kept).
    pub(crate) fn inline_op(
        &self,
        file: &File,
        op: Result<IoOp>,
    ) -> std::result::Result<Vec<u8>, Result<IoOp>> {
        match op {
            Ok(IoOp::Read {
                offset,
                len,
                buf,
                kept: 0,
                flags: 0,
            }) => match self.try_inline_read(file, offset, len, buf) {
                crate::inline::Attempt::Done(data) => Ok(data),
                crate::inline::Attempt::Route { buf, kept } => Err(Ok(IoOp::Read {
                    offset,
                    len,
                    buf,
                    kept,
                    flags: 0,
                })),
            },
            other => Err(other),
        }
    }

    /// [`InlineReads::try_read`](crate::inline::InlineReads::try_read) of a checked read, for a
    /// file of this executor while it runs (otherwise routed, and refused there).
    pub(crate) fn try_inline_read(
        &self,
        file: &File,
        offset: u64,
        len: usize,
        buf: Vec<u8>,
    ) -> crate::inline::Attempt {
        if !self.inline.enabled
            || file.handle().exec != self.id
            || self.closed.load(Ordering::Acquire)
        {
            return crate::inline::Attempt::Route { buf, kept: 0 };
        }
        self.inline.try_read(file, offset, len, buf)
    }

    /// Routes a checked [`FileOp`] that holds its own completer, built by `make`, on `file`.
    pub(crate) fn request_op<T>(
        &self,
        file: &File,
        make: Result<impl FnOnce(Completer<T>) -> Box<dyn FileOp>>,
        deadline: Option<Instant>,
    ) -> Completion<T> {
        let make = match make.and_then(|m| self.check_owner(file).map(|()| m)) {
            Ok(m) => m,
            Err(e) => return Completion::ready(Err(e)),
        };
        let (c, done) = pair(self.id, file.shard());
        let op = make(done);
        let pending = crate::inline::pending_for(file, op.kind());
        let req = IoRequest {
            file: file.handle(),
            op: IoOp::File(op),
            reply: Reply::InOp,
            at: Instant::now(),
            deadline,
            pending,
        };
        self.send_or_fail(file.shard(), Message::Io(req));
        c
    }

    /// A copy (or clone) of `len` bytes at `src_off` of `src` to `dst_off` of `dst`: the one
    /// route of `Executor::copy_file_range`/`clone_range` and `File::copy_range_to`/
    /// `clone_range_to`. Two steps, source's shard then destination's: see `op::copy_range`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn copy_range(
        &self,
        how: op::copy_range::How,
        src: &File,
        src_off: u64,
        dst: &File,
        dst_off: u64,
        len: u64,
        deadline: Option<Instant>,
    ) -> Completion<u64> {
        let name = match how {
            op::copy_range::How::Copy => "copy_file_range",
            op::copy_range::How::Clone => "clone_range",
        };
        let checked = self
            .check_owner(src)
            .and_then(|()| self.check_owner(dst))
            .and_then(|()| request::copy_range(name, src, src_off, dst, dst_off, len));
        if let Err(e) = checked {
            return Completion::ready(Err(e));
        }
        if len == 0 {
            return Completion::ready(Ok(0));
        }
        let handoff = match op::copy_range::Handoff::new(name) {
            Ok(h) => h,
            Err(e) => return Completion::ready(Err(e)),
        };
        // The source's step first: it hands the copy the source's descriptor.
        let sfd = op::copy_range::SourceFd::new(how, Arc::clone(&handoff));
        let req = IoRequest {
            file: src.handle(),
            op: IoOp::File(Box::new(sfd)),
            reply: Reply::InOp,
            at: Instant::now(),
            deadline: None,
            // The source is not changed.
            pending: None,
        };
        self.send_or_fail(src.shard(), Message::Io(req));
        // Then the copy, which holds its place among the destination's operations from now on
        // and waits for the descriptor (on the same inode: after the source's step).
        let make = |done| {
            Box::new(op::copy_range::CopyRange::new(
                how,
                handoff,
                src.path(),
                src_off,
                dst_off,
                len,
                done,
            )) as Box<dyn FileOp>
        };
        self.request_op(dst, Ok(make), deadline)
    }

    /// Routes an operation on a path to the shard of its parent directory (`dir_of`: another
    /// path's, or the path's own directory itself). `make` builds the op from the path, its
    /// order target and the completer.
    pub(crate) fn request_path<T>(
        &self,
        op: &'static str,
        path: &Path,
        dir_of: Option<DirOf<'_>>,
        make: impl FnOnce(std::ffi::CString, op::PathTarget, Completer<T>) -> Box<dyn FileOp>,
        deadline: Option<Instant>,
    ) -> Completion<T> {
        if self.closed.load(Ordering::Acquire) {
            return Completion::ready(Err(Error::Shutdown));
        }
        let routed = match dir_of {
            Some(DirOf::Path(d)) => request::path_op(op, path, Some(d), self.shards.len()),
            Some(DirOf::Itself) => request::dir_op(op, path, self.shards.len()),
            None => request::path_op(op, path, None, self.shards.len()),
        };
        let (cpath, target, shard) = match routed {
            Ok(t) => t,
            Err(e) => return Completion::ready(Err(e)),
        };
        let (c, done) = pair(self.id, shard);
        let req = IoRequest {
            file: FileRef {
                exec: self.id,
                shard,
                slot: u32::MAX,
                gen: 0,
            },
            op: IoOp::File(make(cpath, target, done)),
            reply: Reply::InOp,
            at: Instant::now(),
            deadline,
            pending: None,
        };
        self.send_or_fail(shard, Message::Io(req));
        c
    }

    /// Counts requests a caller dropped before they were sent to `shard`.
    pub(crate) fn note_cancelled_unsent(&self, shard: usize, n: u64) {
        if let Some(link) = self.shards.get(shard) {
            link.shared.cancelled_unsent.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A place among the descriptors in transit for `adopt`: waits for one (blocking) unless
    /// called on one of this executor's shard threads, which must not wait for closes their own
    /// shard runs.
    fn fd_place(&self) -> Result<InTransit> {
        if crate::completion::current_shard().is_some_and(|(exec, _)| exec == self.id) {
            return Ok(self.fds.enter());
        }
        self.fds.enter_bounded(&self.closed)
    }

    /// Opens `path` through a shard's ring (see `op/open.rs`); never blocks. The options are
    /// checked here; then, once there is room among the descriptors in transit (at once, or
    /// when a token drop makes room: see `fd_transit`), the open goes to the next shard in turn
    /// that is alive, which opens and identifies the file and installs it on the shard its
    /// inode hashes to.
    /// `on`: install it on that shard instead (`Executor::open_on`).
    pub(crate) fn open(
        self: &Arc<Self>,
        path: &Path,
        options: &OpenOptions,
        on: Option<usize>,
    ) -> Completion<File> {
        if self.closed.load(Ordering::Acquire) {
            return Completion::ready(Err(Error::Shutdown));
        }
        if let Some(shard) = on.filter(|&s| s >= self.shards.len()) {
            return Completion::ready(Err(Error::invalid(
                "open_on",
                format!(
                    "no shard {shard}: this executor has {} shards (0..{})",
                    self.shards.len(),
                    self.shards.len()
                ),
            )));
        }
        match options.plan(path) {
            Ok(plan) => self.open_planned(plan, path, on),
            Err(e) => Completion::ready(Err(e)),
        }
    }

    /// The blocking open, on a thread that may block: a hot open (lookup cached, no create or
    /// truncate) on this thread (`op::open::open_cached`) when a place among the descriptors in
    /// transit is free now, returning the install's completion; else [`open`](Self::open) and a
    /// wait. Either way the open itself is done when this returns.
    pub(crate) fn open_blocking(
        self: &Arc<Self>,
        path: &Path,
        options: &OpenOptions,
    ) -> Completion<File> {
        if self.closed.load(Ordering::Acquire) {
            return Completion::ready(Err(Error::Shutdown));
        }
        let plan = match options.plan(path) {
            Ok(p) => p,
            Err(e) => return Completion::ready(Err(e)),
        };
        if let Some(transit) = self.fds.try_enter_now() {
            if let Some((fd, key)) = crate::op::open::open_cached(&plan) {
                // why: the completion names the file's shard, so that a wait for it on that
                // shard's own thread fails with WouldDeadlock instead of hanging.
                let (c, done) = pair(self.id, shard_for(key, self.shards.len()));
                self.install(self, fd, key, plan.file, path, done, transit, true);
                return c;
            }
        }
        Completion::ready(self.open_planned(plan, path, None).wait())
    }

    /// [`open`](Self::open) of a checked plan.
    fn open_planned(
        self: &Arc<Self>,
        plan: crate::file::OpenPlan,
        path: &Path,
        on: Option<usize>,
    ) -> Completion<File> {
        let seq = self.opens.fetch_add(1, Ordering::Relaxed);
        let n = self.shards.len().max(1);
        let first = (seq % n as u64) as usize;
        // why: a completion named after the shard it installs on makes a wait for it on that
        // shard's thread fail with WouldDeadlock (it could only finish there).
        let (c, done) = pair(self.id, on.unwrap_or(first));
        let path: Arc<Path> = Arc::from(path);
        let exec = Arc::clone(self);
        self.fds.enter_then(
            &self.closed,
            Box::new(move |place| {
                let transit = match place {
                    Ok(t) => t,
                    Err(e) => return done.complete(Err(e)),
                };
                if done.is_cancelled() {
                    // The place goes back unused; a handle kept after `cancel` learns why.
                    return done.complete(Err(Error::Cancelled {
                        op: "open",
                        path: Some(path.to_path_buf()),
                    }));
                }
                // why: a dead shard would fail every open sent to it, whichever shard the file
                // lives on; another one opens it.
                let alive = |s: usize| {
                    exec.shards
                        .get(s)
                        .is_some_and(|l| !l.shared.dead.load(Ordering::Acquire))
                };
                let shard = (0..n)
                    .map(|i| (first + i) % n)
                    .find(|&s| alive(s))
                    .unwrap_or(first);
                let installer: Arc<ExecShared> = Arc::clone(&exec);
                let op =
                    crate::op::open::OpenAt::new(plan, path, seq, installer, done, transit, on);
                let req = IoRequest {
                    file: FileRef {
                        exec: exec.id,
                        shard,
                        slot: u32::MAX,
                        gen: 0,
                    },
                    op: IoOp::File(Box::new(op)),
                    reply: Reply::InOp,
                    at: Instant::now(),
                    deadline: None,
                    // An open changes no file's data or size: inline reads need not wait for it.
                    pending: None,
                };
                exec.send_or_fail(shard, Message::Io(req));
            }),
        );
        c
    }

    /// Sends an open descriptor to the shard its inode hashes to, to be installed there.
    /// `count_open`: count it as an open there (an adopted descriptor).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn install(
        &self,
        self_arc: &Arc<ExecShared>,
        fd: OwnedFd,
        key: FileKey,
        flags: FileFlags,
        path: &Path,
        done: Completer<File>,
        transit: InTransit,
        count_open: bool,
    ) {
        let shard = shard_for(key, self.shards.len());
        self.install_on(
            shard, self_arc, fd, key, flags, path, done, transit, count_open,
        );
    }

    /// [`install`](Self::install) on shard `shard`, whatever the inode (`open_on`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn install_on(
        &self,
        shard: usize,
        self_arc: &Arc<ExecShared>,
        fd: OwnedFd,
        key: FileKey,
        flags: FileFlags,
        path: &Path,
        done: Completer<File>,
        transit: InTransit,
        count_open: bool,
    ) {
        self.send_or_fail(
            shard,
            Message::Install {
                fd,
                key,
                flags,
                path: Arc::from(path),
                exec: Arc::clone(self_arc),
                done,
                transit,
                count_open,
            },
        );
    }
}

/// An open run on a shard hands its descriptor to the executor (see `op/open.rs`).
impl crate::op::open::Installer for ExecShared {
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn install(
        self: Arc<Self>,
        on: Option<usize>,
        fd: OwnedFd,
        key: FileKey,
        flags: FileFlags,
        path: &Path,
        done: Completer<File>,
        transit: InTransit,
    ) {
        match on {
            Some(shard) => {
                self.install_on(shard, &self, fd, key, flags, path, done, transit, false)
            }
            None => ExecShared::install(&self, &self, fd, key, flags, path, done, transit, false),
        }
    }
}

/// A sharded io_uring executor: one pinned thread per shard, each with its own ring, registered
/// buffer pool and files. Share it between threads by reference or in an `Arc`.
///
/// ```
/// # fn main() -> ringshard::Result<()> {
/// use ringshard::{Executor, OpenOptions};
/// let exec = Executor::builder().shards(2).build()?;
/// let dir = tempfile::tempdir().unwrap();
/// let file = exec.open(dir.path().join("data"), OpenOptions::new().read(true).write(true).create(true)).wait()?;
/// exec.write(&file, 0, b"hello, shard".to_vec()).wait()?;
/// exec.fsync(&file).wait()?;
/// assert_eq!(exec.read(&file, 0, 5).wait()?, b"hello");
/// exec.close(&file).wait()?;
/// println!("{}", exec.stats());
/// exec.shutdown()?;
/// # Ok(()) }
/// ```
///
/// What blocks: [`open`](Self::open) (it waits for the open; use
/// [`open_async`](Self::open_async) in async code), [`adopt`](Self::adopt),
/// [`stats`](Self::stats) and [`shutdown`](Self::shutdown) (they have async forms), and the
/// `wait` methods of [`Completion`] and [`Session`]. Sending a request never blocks, and neither
/// does dropping the executor (it begins the shutdown and returns: see `Drop for Executor`).
#[derive(Debug)]
pub struct Executor {
    shared: Arc<ExecShared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    started: Instant,
    shutdown_timeout: Duration,
}

impl Executor {
    /// A builder with the defaults.
    pub fn builder() -> ExecutorBuilder {
        ExecutorBuilder::default()
    }

    /// An executor with the defaults (one shard per CPU).
    pub fn new() -> Result<Self> {
        Self::builder().build()
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shared.shards.len()
    }

    /// The shard that owns the file at `path` (following symlinks), without opening it: the
    /// same routing [`open`](Self::open) uses. Fails if the file does not exist. Blocks on
    /// stat(2).
    pub fn shard_of_path(&self, path: impl AsRef<Path>) -> Result<usize> {
        use std::os::unix::fs::MetadataExt;
        let path = path.as_ref();
        let md = std::fs::metadata(path).map_err(|e| {
            Error::io(
                "stat",
                Some(path.to_path_buf()),
                None,
                e.raw_os_error().unwrap_or(libc::EIO),
            )
        })?;
        let key = FileKey {
            dev: md.dev(),
            ino: md.ino(),
        };
        Ok(shard_for(key, self.shared.shards.len()))
    }

    /// Descriptors in transit between callers and shards (opened and not yet installed, or
    /// dropped and not yet closed by their shard), the opens waiting for room, and the bound
    /// ([`ExecutorBuilder::max_pending_fds`]).
    pub fn pending_fds(&self) -> PendingFds {
        self.shared.fds.snapshot()
    }

    /// The CPU each shard is pinned to (`None` when pinning is off), by shard index.
    pub fn shard_cpus(&self) -> Vec<Option<usize>> {
        self.shared.shards.iter().map(|s| s.cpu).collect()
    }

    /// Opens `path`, blocking until the file is open: when it returns, the open (and any create
    /// or truncate) is done, and the completion finishes once the file is installed on its
    /// shard. The file's inode picks its shard: every path to the same file (symlinks, hard
    /// links) lands on the same shard, and so does every reopen.
    ///
    /// As this thread waits anyway, a hot open is done right here: `openat2` with
    /// `RESOLVE_CACHED`, which the kernel does only when the whole lookup is in its caches (never
    /// with `create`, `create_new` or `truncate`; a FUSE or network filesystem's own open call
    /// may still take long), when a place among the descriptors in transit is free now; then
    /// only the install goes to a shard. Anything else (a cold lookup, a create) goes through a
    /// shard's ring, as with [`open_async`](Self::open_async), and this waits for it.
    ///
    /// Blocks the calling thread until the open is done (on a slow or network filesystem that
    /// can be long), including the wait while
    /// [`max_pending_fds`](ExecutorBuilder::max_pending_fds) descriptors are in transit (a shard
    /// that falls behind on closes slows its openers down instead of letting descriptors pile
    /// up): in async code use [`open_async`](Self::open_async). On one of this executor's shard
    /// threads it does not block: it returns `open_async`'s completion (await it in a shard task;
    /// waiting on it there fails with [`Error::WouldDeadlock`]).
    pub fn open(&self, path: impl AsRef<Path>, options: &OpenOptions) -> Completion<File> {
        if crate::completion::current_shard().is_some_and(|(exec, _)| exec == self.shared.id) {
            return self.shared.open(path.as_ref(), options, None);
        }
        self.shared.open_blocking(path.as_ref(), options)
    }

    /// Sends a descriptor adopted on this thread to its shard.
    fn install_routed(
        &self,
        fd: OwnedFd,
        key: FileKey,
        flags: FileFlags,
        path: &Path,
        transit: InTransit,
    ) -> Completion<File> {
        // why: the completion names the shard the file goes to, so that waiting for it on that
        // shard's own thread fails with WouldDeadlock; named "no shard", it hung there forever.
        let shard = shard_for(key, self.shared.shards.len());
        let (c, done) = pair(self.shared.id, shard);
        self.shared
            .install(&self.shared, fd, key, flags, path, done, transit, true);
        c
    }

    /// Opens `path` without blocking: the completion finishes once the file is open and
    /// installed on its shard. Await it (or wait on it).
    ///
    /// The open runs on a shard's ring (IORING_OP_OPENAT; the shards take opens in turn), so
    /// opens run side by side: the kernel hands a lookup that must read the disk (or wait for a
    /// network or FUSE filesystem) to a worker, and other opens go on meanwhile. The shard then
    /// reads the file's identity (device and inode, without asking the filesystem) and hands the
    /// descriptor to the shard its inode picks. While
    /// [`max_pending_fds`](ExecutorBuilder::max_pending_fds) descriptors are in transit, the
    /// open waits in a queue, in order, and goes out when a shard has installed or closed one:
    /// nothing blocks, the completion just comes later. Dropping the completion before the
    /// open is sent (or issued) means it never runs; dropped later, the descriptor is closed.
    /// Once [`shutdown`](Self::shutdown) has begun, an open that has not reached the kernel
    /// fails with [`Error::Shutdown`] and creates or truncates nothing.
    pub fn open_async(&self, path: impl AsRef<Path>, options: &OpenOptions) -> Completion<File> {
        self.shared.open(path.as_ref(), options, None)
    }

    /// Opens `path` like [`open_async`](Self::open_async) (without blocking), but installs the
    /// file on shard `shard` instead of the shard its inode hashes to: for state placed by key
    /// (a per-shard log, a partition of an index) whose files must live on the shard that owns
    /// the key, so that its tasks do their I/O straight into their own ring.
    ///
    /// Per-file ordering (overlapping writes in order, reads near the end of the file ordered
    /// against writes above them, fsync after writes) and the size a shard knows a file to have
    /// are kept per shard: they hold among the handles on one shard. Opening an inode that is
    /// also open on another shard (through `open_on`, or `open` picking its shard by inode) is
    /// allowed, and then requests through handles on different shards are as independent as
    /// two processes' I/O on one file: order them yourself (await one before making the other).
    /// A shard index out of range fails with [`Error::InvalidArgument`].
    pub fn open_on(
        &self,
        shard: usize,
        path: impl AsRef<Path>,
        options: &OpenOptions,
    ) -> Completion<File> {
        self.shared.open(path.as_ref(), options, Some(shard))
    }

    /// Takes over an open descriptor: its shard is picked by its inode like [`open`](Self::open),
    /// its access mode, O_APPEND and O_DIRECT are read from the descriptor, and it is closed when
    /// the last handle drops. `path` names it in errors. Blocks for fcntl(2) and fstat(2), and
    /// first, like [`open`](Self::open), while
    /// [`max_pending_fds`](ExecutorBuilder::max_pending_fds) descriptors are in transit.
    pub fn adopt(&self, fd: OwnedFd, path: impl AsRef<Path>) -> Completion<File> {
        let path = path.as_ref();
        let transit = match self.shared.fd_place() {
            Ok(t) => t,
            Err(e) => return Completion::ready(Err(e)),
        };
        if self.shared.closed.load(Ordering::Acquire) {
            return Completion::ready(Err(Error::Shutdown));
        }
        match crate::file::describe_fd(&fd, path) {
            Ok((key, flags)) => self.install_routed(fd, key, flags, path, transit),
            Err(e) => Completion::ready(Err(e)),
        }
    }

    /// Reads up to `len` bytes at `offset`. Fewer come back only at end of file. Lengths up to
    /// [`max_request_size`](ExecutorBuilder::max_request_size) work: long reads are split, and
    /// memory grows only as data arrives. Data already in the page cache is read on this thread
    /// (see [`inline_reads`](ExecutorBuilder::inline_reads)): the completion is then ready when
    /// this returns.
    pub fn read(&self, file: &File, offset: u64, len: usize) -> Completion<Vec<u8>> {
        self.read_into(file, offset, len, Vec::new())
    }

    /// [`read`](Self::read) into `buf`, whose allocation is reused (its contents are replaced):
    /// a server that recycles its buffers spares an allocation per read.
    pub fn read_into(
        &self,
        file: &File,
        offset: u64,
        len: usize,
        buf: Vec<u8>,
    ) -> Completion<Vec<u8>> {
        self.with_deadline(None).read_into(file, offset, len, buf)
    }

    /// Writes all of `data` at `offset` (short writes are completed); returns the bytes written.
    pub fn write(&self, file: &File, offset: u64, data: impl Into<Vec<u8>>) -> Completion<usize> {
        self.with_deadline(None).write(file, offset, data)
    }

    /// [`read`](Self::read) with per-operation flags ([`RwFlags`](crate::RwFlags): `NOWAIT`,
    /// `HIPRI`, `DONTCACHE`), passed as the SQE's `rw_flags` on every data path. With `NOWAIT`, data not in
    /// the page cache fails the read with errno EAGAIN (never retried); a read that got part of
    /// its data before that returns the error too.
    pub fn read_with(
        &self,
        file: &File,
        offset: u64,
        len: usize,
        flags: crate::RwFlags,
    ) -> Completion<Vec<u8>> {
        self.with_deadline(None).read_with(file, offset, len, flags)
    }

    /// [`write`](Self::write) with per-operation flags ([`RwFlags`](crate::RwFlags): `DSYNC`,
    /// `SYNC`, `NOWAIT`, `HIPRI`, `APPEND`, `DONTCACHE`): the SQE's `rw_flags`, or `pwritev2`'s flags on the
    /// inline path. With `NOWAIT`, a write that would block fails with errno EAGAIN (never
    /// retried).
    pub fn write_with(
        &self,
        file: &File,
        offset: u64,
        data: impl Into<Vec<u8>>,
        flags: crate::RwFlags,
    ) -> Completion<usize> {
        self.with_deadline(None)
            .write_with(file, offset, data, flags)
    }

    /// fsync: completes after every earlier write to the file (through this executor) is durable.
    pub fn fsync(&self, file: &File) -> Completion<()> {
        self.with_deadline(None).fsync(file)
    }

    /// fdatasync: like [`fsync`](Self::fsync) without flushing metadata that reads do not need.
    pub fn fdatasync(&self, file: &File) -> Completion<()> {
        self.with_deadline(None).fdatasync(file)
    }

    /// fallocate(2) of `len` bytes at `offset` with `mode` ([`FallocateMode`](crate::FallocateMode):
    /// allocate, punch a hole, zero, collapse or insert a range), ordered against every
    /// operation on the file; reads sent after it see its effect. A mode the filesystem lacks
    /// fails with errno EOPNOTSUPP.
    pub fn fallocate(
        &self,
        file: &File,
        mode: crate::FallocateMode,
        offset: u64,
        len: u64,
    ) -> Completion<()> {
        let op = request::fallocate_op(mode, offset, len);
        self.shared.request(file, op, Reply::Unit, None)
    }

    /// Copies `len` bytes at `src_off` of `src` to `dst_off` of `dst` in the kernel
    /// (`copy_file_range(2)`: no data through user space; filesystems that can share extents,
    /// btrfs, xfs, NFS 4.2, may do so), and returns the bytes copied: fewer than `len` only
    /// where `src` ends. Both files are of this executor; they may be the same file (ranges
    /// must not overlap: EINVAL) or on different shards. `src` must be open for reading, `dst`
    /// for writing (not append).
    ///
    /// Order: the copy runs after every operation on `dst` and every write, set_len or
    /// fallocate of `src` sent before it, and reads of `dst` sent after it see it. Writes to
    /// `src` sent after it are not held back: they may land before or during the copy. It runs
    /// on `dst`'s shard thread (io_uring has no copy opcode), at most 1 MiB per system call, so
    /// a large copy holds that shard for one call at a time. Different filesystems: errno
    /// EXDEV.
    pub fn copy_file_range(
        &self,
        src: &File,
        src_off: u64,
        dst: &File,
        dst_off: u64,
        len: u64,
    ) -> Completion<u64> {
        use crate::op::copy_range::How;
        self.shared
            .copy_range(How::Copy, src, src_off, dst, dst_off, len, None)
    }

    /// Shares the extents of `len` bytes at `src_off` of `src` with `dst_off` of `dst`
    /// (`FICLONERANGE`, a reflink: no data is copied, and later writes to either file
    /// unshare what they touch), with the order of [`copy_file_range`](Self::copy_file_range);
    /// returns `len`. All or nothing. Needs a filesystem with reflink (btrfs, xfs formatted with
    /// reflink, bcachefs): elsewhere (ext4, tmpfs) errno EOPNOTSUPP, between filesystems EXDEV;
    /// offsets and `len` must be multiples of the filesystem's block size (else EINVAL), except a
    /// `len` that reaches the end of `src`.
    pub fn clone_range(
        &self,
        src: &File,
        src_off: u64,
        dst: &File,
        dst_off: u64,
        len: u64,
    ) -> Completion<u64> {
        use crate::op::copy_range::How;
        self.shared
            .copy_range(How::Clone, src, src_off, dst, dst_off, len, None)
    }

    /// The file's size, after every earlier operation on it.
    pub fn size(&self, file: &File) -> Completion<u64> {
        self.shared
            .request(file, Ok(crate::request::size_op()), Reply::Size, None)
    }

    /// Opens the directory at `path` read-only (O_RDONLY | O_DIRECTORY): a handle to
    /// [`fsync`](Self::fsync) after creating, renaming or unlinking entries in it, or to get its
    /// [`metadata`](Self::metadata). Reads and writes on it fail with
    /// [`Error::BadHandle`]. Blocks like [`open`](Self::open).
    pub fn open_dir(&self, path: impl AsRef<Path>) -> Completion<File> {
        self.open(path, OpenOptions::new().read(true).directory(true))
    }

    /// The file's metadata (`statx` on its descriptor), after every earlier operation on it.
    pub fn metadata(&self, file: &File) -> Completion<crate::Metadata> {
        self.with_deadline(None).metadata(file)
    }

    /// The metadata of the file at `path` (`statx`, following a final symlink). Routed and
    /// ordered like the other path operations (see [`unlink`](Self::unlink)).
    pub fn stat(&self, path: impl AsRef<Path>) -> Completion<crate::Metadata> {
        self.with_deadline(None).stat(path)
    }

    /// [`stat`](Self::stat) without following a final symlink (so
    /// [`Metadata::is_symlink`](crate::Metadata::is_symlink) can be true).
    pub fn symlink_metadata(&self, path: impl AsRef<Path>) -> Completion<crate::Metadata> {
        self.with_deadline(None).stat_with(path.as_ref(), true)
    }

    /// Sets the file's length (`ftruncate`: IORING_OP_FTRUNCATE where the kernel has it, Linux
    /// 6.9, else the system call on the shard thread). Ordered against every operation on the
    /// file; reads sent after it see the new end of file. Needs write access.
    pub fn set_len(&self, file: &File, len: u64) -> Completion<()> {
        self.with_deadline(None).set_len(file, len)
    }

    /// `sync_file_range(2)` of `len` bytes at `offset` (0: to the end of the file) with `flags`
    /// ([`SyncRangeFlags`](crate::SyncRangeFlags)), after every earlier write to the file. Not a durability
    /// guarantee (no metadata, no disk cache flush): see the man page.
    pub fn sync_file_range(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        flags: crate::SyncRangeFlags,
    ) -> Completion<()> {
        self.with_deadline(None)
            .sync_file_range(file, offset, len, flags)
    }

    /// `posix_fadvise(2)` of `len` bytes at `offset` (0: to the end of the file; at most
    /// 4 GiB - 1) with `advice` (IORING_OP_FADVISE; the system call on the threads backend),
    /// after every earlier write to the file: [`Advice::DontNeed`](crate::Advice::DontNeed)
    /// drops the clean cached pages of the range, [`Advice::WillNeed`](crate::Advice::WillNeed)
    /// starts reading it in. Advice only: the kernel may ignore it (as tmpfs does for
    /// `DontNeed`). Same as [`File::fadvise`].
    pub fn fadvise(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        advice: crate::Advice,
    ) -> Completion<()> {
        self.with_deadline(None).fadvise(file, offset, len, advice)
    }

    /// Reads into buffers of `lens` bytes at `offset` with one `readv` (at most
    /// [`MAX_IOVECS`](crate::MAX_IOVECS) buffers, and
    /// [`max_request_size`](ExecutorBuilder::max_request_size) bytes in all). A short read is
    /// continued; at end of file the vectors come back truncated there (later ones empty). Not
    /// for O_DIRECT files.
    pub fn read_vectored(
        &self,
        file: &File,
        offset: u64,
        lens: &[usize],
    ) -> Completion<Vec<Vec<u8>>> {
        self.with_deadline(None).read_vectored(file, offset, lens)
    }

    /// Writes `bufs` one after another at `offset` with `writev` (same bounds as
    /// [`read_vectored`](Self::read_vectored)); short writes are continued. Returns the bytes
    /// written.
    pub fn write_vectored(
        &self,
        file: &File,
        offset: u64,
        bufs: Vec<Vec<u8>>,
    ) -> Completion<usize> {
        self.with_deadline(None).write_vectored(file, offset, bufs)
    }

    /// Appends `data` at the end of a file opened with [`append(true)`](OpenOptions::append) and
    /// says where it landed. Appends to one file run one at a time, in the order sent; the
    /// offset is exact even when other processes append to the file too (the shard reads its
    /// descriptor's position after the write). If a short write had to be continued after
    /// another process appended, the data is not contiguous and the call fails with EIO.
    pub fn append(&self, file: &File, data: impl Into<Vec<u8>>) -> Completion<crate::Appended> {
        self.with_deadline(None).append(file, data)
    }

    /// Removes the file at `path` (`unlinkat`).
    ///
    /// Path operations (`unlink`, `remove_dir`, `mkdir`, `rename`, `stat`) go through the ring
    /// (UNLINKAT, MKDIRAT, RENAMEAT, STATX) of the shard that owns the path's **parent
    /// directory** (its inode, hashed as files are: the shard an [`open_dir`](Self::open_dir) of
    /// that directory gets). There they are barriers in the directory's order list: path
    /// operations in one directory run one at a time, in the order they were sent, and an
    /// `fsync` of the directory's handle runs after those sent before it (a `stat` orders like a
    /// read: side by side with other stats). Finding the parent's identity blocks the caller on
    /// one stat(2) the first time a directory is seen; it is remembered by path after that.
    /// Relative paths are resolved against the process's working directory.
    pub fn unlink(&self, path: impl AsRef<Path>) -> Completion<()> {
        self.with_deadline(None).unlink(path)
    }

    /// Removes the empty directory at `path` (`unlinkat(AT_REMOVEDIR)`). See
    /// [`unlink`](Self::unlink) for routing and order.
    pub fn remove_dir(&self, path: impl AsRef<Path>) -> Completion<()> {
        self.with_deadline(None).remove_dir(path)
    }

    /// Creates the directory `path` with permission bits `mode` (less the umask). See
    /// [`unlink`](Self::unlink) for routing and order.
    pub fn mkdir(&self, path: impl AsRef<Path>, mode: u32) -> Completion<()> {
        self.with_deadline(None).mkdir(path, mode)
    }

    /// Renames `from` to `to` (`renameat2` with `flags`). Routed and ordered by the
    /// **destination's** parent directory: that is the directory whose contents the caller
    /// then usually makes durable (`fsync` of its handle, ordered after the rename on the
    /// same shard), and the name that appears is the one later operations look up. Operations
    /// in the source's directory on another shard are not ordered against it. Errors name both
    /// paths ([`Error::PathPair`]).
    pub fn rename(
        &self,
        from: impl AsRef<Path>,
        to: impl AsRef<Path>,
        flags: crate::RenameFlags,
    ) -> Completion<()> {
        self.with_deadline(None).rename(from, to, flags)
    }

    /// Makes `new` a hard link to the file at `original` (`linkat`, IORING_OP_LINKAT; a final
    /// symlink at `original` is linked itself, not followed). Routed and ordered like
    /// [`rename`](Self::rename), by the **new** name's parent directory. Fails with EEXIST if
    /// `new` exists, EXDEV across filesystems, EPERM for a directory. Errors name both paths
    /// ([`Error::PathPair`], op `"hard_link"`).
    pub fn hard_link(&self, original: impl AsRef<Path>, new: impl AsRef<Path>) -> Completion<()> {
        self.with_deadline(None).hard_link(original, new)
    }

    /// Creates a symbolic link at `link` whose contents are `target` (`symlinkat`,
    /// IORING_OP_SYMLINKAT). `target` is stored as given, not looked up: it may be relative (to
    /// the link's directory) or name nothing yet. Routed and ordered by `link`'s parent
    /// directory (see [`unlink`](Self::unlink)). Fails with EEXIST if `link` exists. Errors name
    /// both ([`Error::PathPair`], op `"symlink"`, `from` the target, `to` the link).
    pub fn symlink(&self, target: impl AsRef<Path>, link: impl AsRef<Path>) -> Completion<()> {
        self.with_deadline(None).symlink(target, link)
    }

    /// The entries of the directory at `path` (`getdents64`), but `.` and `..`, in the order the
    /// directory gives them: each [`DirEntry`](crate::DirEntry) has the name (any bytes), the
    /// inode number and the [`EntryType`](crate::EntryType) the directory records.
    ///
    /// Runs on the shard of the directory itself (the one an [`open_dir`](Self::open_dir) of
    /// it gets), never on the caller's thread: the directory is opened in the ring (OPENAT),
    /// then read with one `getdents64` of 32 KiB per round on the shard thread (io_uring has no
    /// opcode for it; a directory block not cached is read from the device within that call).
    /// Ordered after the path operations in that directory sent before it (`unlink`, `mkdir`,
    /// `rename`, `hard_link`, `symlink`: see [`unlink`](Self::unlink)), so it sees them.
    /// Memory grows with the entries as they arrive (a list of a million entries is tens of
    /// MB). Routing it blocks the caller on one stat(2) of the directory the first time it is
    /// seen. Errors (ENOENT, ENOTDIR, EACCES) name `read_dir` and the path. On an open
    /// directory handle: [`File::read_dir`].
    pub fn read_dir(&self, path: impl AsRef<Path>) -> Completion<Vec<crate::DirEntry>> {
        self.with_deadline(None).read_dir(path)
    }

    /// Opens an unnamed temporary file in directory `dir` for reading and writing, with
    /// permission bits `mode` (O_TMPFILE: see [`OpenOptions::tmpfile`]); give it a name with
    /// [`link_file`](Self::link_file) once it is written. Blocks like [`open`](Self::open).
    pub fn open_tmpfile(&self, dir: impl AsRef<Path>, mode: u32) -> Completion<File> {
        self.open(
            dir,
            OpenOptions::new()
                .read(true)
                .write(true)
                .tmpfile(true)
                .mode(mode),
        )
    }

    /// Gives `file` the name `path` (`linkat` of its descriptor on the file's shard), after
    /// every earlier operation on it: an [`open_tmpfile`](Self::open_tmpfile) file, written in
    /// full, appears at `path` at once. Same as [`File::link_into`], which says more.
    pub fn link_file(&self, file: &File, path: impl AsRef<Path>) -> Completion<()> {
        self.with_deadline(None).link_file(file, path)
    }

    /// Closes the file after every earlier operation on it and reports errors; later operations
    /// on any clone of the handle fail with [`Error::BadHandle`]. (Dropping the last
    /// clone closes it too, without a report.) A read of the file that another clone is doing
    /// on its own thread at that moment (an inline read, see
    /// [`inline_reads`](ExecutorBuilder::inline_reads)) finishes first: the descriptor is never
    /// closed under it.
    pub fn close(&self, file: &File) -> Completion<()> {
        if let Err(e) = self.shared.check_owner(file) {
            return Completion::ready(Err(e));
        }
        crate::file_ops::close(file)
    }

    /// Requests with a deadline `timeout` from now: one not done by then is cancelled (not
    /// issued; or, for reads, cancelled in the kernel) and fails with
    /// [`Error::DeadlineExceeded`]. Writes already issued are not torn: they finish.
    /// A timeout too large to be a point in time means no deadline.
    ///
    /// ```
    /// # fn main() -> ringshard::Result<()> {
    /// # let exec = ringshard::Executor::builder().shards(1).build()?;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let file = exec.open(dir.path().join("f"), ringshard::OpenOptions::new().read(true).write(true).create(true)).wait()?;
    /// let data = exec.timeout(std::time::Duration::from_secs(2)).read(&file, 0, 4096).wait()?;
    /// # assert!(data.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn timeout(&self, timeout: Duration) -> Deadlined<'_> {
        self.with_deadline(Instant::now().checked_add(timeout))
    }

    fn with_deadline(&self, deadline: Option<Instant>) -> Deadlined<'_> {
        Deadlined {
            exec: self,
            deadline,
        }
    }

    /// Starts a batch: requests added to it go out with one message (and at most one wake-up) per
    /// shard when [`Batch::submit`] is called.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            exec: self,
            created: Instant::now(),
            per_shard: (0..self.shared.shards.len()).map(|_| Vec::new()).collect(),
            held: Vec::new(),
        }
    }

    /// A [`Session`] with the default capacity (256 requests in flight).
    pub fn session(&self) -> Session {
        Session::new(Arc::clone(&self.shared), DEFAULT_SESSION_CAPACITY)
    }

    /// A [`Session`] that may have up to `capacity` requests in flight (1 to 65,536).
    pub fn session_with_capacity(&self, capacity: usize) -> Result<Session> {
        Session::with_capacity(Arc::clone(&self.shared), capacity)
    }

    /// Runs `f` on shard `shard`'s thread with direct access to its ring and pool (see
    /// [`ShardContext`]), after the shard's own in-flight operations have completed (operations
    /// queued but not yet issued may run after it). A panic in `f` fails this call with
    /// [`Error::ShardFailed`] (naming the panic); the shard goes on.
    pub fn submit_to<R, F>(&self, shard: usize, f: F) -> Completion<R>
    where
        F: FnOnce(&mut ShardContext<'_>) -> R + Send + 'static,
        R: Send + 'static,
    {
        if self.shared.closed.load(Ordering::Acquire) {
            return Completion::ready(Err(Error::Shutdown));
        }
        // why: `send` cannot fail a task's completer with its error (the completer is inside the
        // closure), so an unknown shard would surface as "ShardFailed { shard }" for a shard that
        // does not exist.
        if shard >= self.shared.shards.len() {
            return Completion::ready(Err(Error::invalid(
                "submit_to",
                format!(
                    "no shard {shard}: this executor has {} shards (0..{})",
                    self.shared.shards.len(),
                    self.shared.shards.len()
                ),
            )));
        }
        let (c, done) = pair(self.shared.id, shard);
        let task = Box::new(move |ctx: &mut ShardContext<'_>| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(ctx)));
            done.complete(r.map_err(|p| Error::ShardFailed {
                shard,
                reason: format!(
                    "the task panicked ({}); the shard goes on",
                    panic_text(p.as_ref())
                ),
            }));
        });
        self.shared.send_or_fail(shard, Message::Task(task));
        c
    }

    /// Spawns `fut` as an async task on shard `shard`. It runs on that shard's thread,
    /// interleaved with the shard's I/O; inside it, [`crate::local()`] gives the shard's
    /// [`LocalShard`](crate::LocalShard) (I/O on the shard's own files without the channel,
    /// timers on its ring, `!Send` tasks).
    ///
    /// The [`JoinHandle`](crate::JoinHandle) can be awaited anywhere or waited on; dropping it
    /// cancels the task ([`detach`](crate::JoinHandle::detach) to let it run). A panic in the task
    /// comes back as [`Error::TaskPanicked`]; the shard goes on. A task must not block its
    /// thread (no blocking waits, no long computations without [`crate::yield_now`]): the shard's
    /// I/O and its other tasks stop meanwhile (polls over
    /// [`SLOW_POLL`](crate::SLOW_POLL) are counted in `ShardStats::slow_task_polls`).
    ///
    /// ```
    /// # fn main() -> ringshard::Result<()> {
    /// # let exec = ringshard::Executor::builder().shards(2).build()?;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let file = exec.open(dir.path().join("t"), ringshard::OpenOptions::new().read(true).write(true).create(true)).wait()?;
    /// let f = file.clone();
    /// let n = exec
    ///     .spawn_on_owner(&file, async move {
    ///         let local = ringshard::local().expect("on a shard");
    ///         local.write(&f, 0, b"hello".to_vec()).await?;
    ///         Ok::<_, ringshard::Error>(local.read(&f, 0, 5).await?.len())
    ///     })
    ///     .wait()??; // or `.await` from any runtime, or from another shard's task
    /// assert_eq!(n, 5);
    /// # exec.shutdown() }
    /// ```
    ///
    /// Use `spawn_on` for application code that lives on a shard (it interleaves with the
    /// shard's work and awaits I/O); use [`submit_to`](Self::submit_to) for a synchronous closure
    /// that needs the raw ring and pool ([`ShardContext`]), which runs only once the shard has
    /// no I/O in flight (task sleeps are taken out of the ring for it and put back after).
    pub fn spawn_on<F>(&self, shard: usize, fut: F) -> crate::shard::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        crate::shard::tasks::spawn(&self.shared, shard, fut)
    }

    /// [`spawn_on`](Self::spawn_on) the shard that owns `file`.
    pub fn spawn_on_owner<F>(&self, file: &File, fut: F) -> crate::shard::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn_on(file.shard(), fut)
    }

    /// Runs a future that need not be `Send` on shard `shard`: `f` (which is `Send`) builds it on
    /// the shard's thread, from the shard's [`LocalShard`](crate::LocalShard). The output must be
    /// `Send`, as it travels back to the handle.
    pub fn spawn_on_with<F, Fut>(&self, shard: usize, f: F) -> crate::shard::JoinHandle<Fut::Output>
    where
        F: FnOnce(crate::shard::LocalShard) -> Fut + Send + 'static,
        Fut: std::future::Future + 'static,
        Fut::Output: Send + 'static,
    {
        crate::shard::tasks::spawn_with(&self.shared, shard, f)
    }

    /// Builds one `T` per shard, each by `make` on its own shard's thread (so its memory is
    /// allocated on the shard's NUMA node), like Seastar's `sharded<T>`: see
    /// [`Sharded`](crate::Sharded) for running code on each and `map_reduce`. Each `T` stays on
    /// its shard's thread (it need not be `Send` or `Sync`) and is dropped there.
    ///
    /// Blocks until every shard has built its `T` (a [`WouldDeadlock`](Error::WouldDeadlock)
    /// on a shard's own thread); [`sharded_async`](Self::sharded_async) awaits instead. A panic
    /// in `make` fails the call with [`Error::TaskPanicked`].
    pub fn sharded<T, F>(&self, make: F) -> Result<crate::Sharded<T>>
    where
        T: 'static,
        F: Fn(&crate::shard::LocalShard) -> T + Send + Sync + 'static,
    {
        if let Some((id, shard)) = crate::completion::current_shard() {
            if id == self.shared.id {
                return Err(Error::WouldDeadlock {
                    op: "sharded",
                    shard,
                });
            }
        }
        crate::shard::block_on(self.sharded_async(make))
    }

    /// [`sharded`](Self::sharded) without blocking.
    pub async fn sharded_async<T, F>(&self, make: F) -> Result<crate::Sharded<T>>
    where
        T: 'static,
        F: Fn(&crate::shard::LocalShard) -> T + Send + Sync + 'static,
    {
        crate::sharded::build(&self.shared, make).await
    }

    /// Fault injection for tests: shard `shard`'s thread panics after sleeping `after`, as if
    /// the shard itself had a bug (a task's own panic does not kill a shard). Its pending work
    /// fails with [`Error::ShardFailed`]; other shards go on. Not for production use.
    #[doc(hidden)]
    pub fn kill_shard_for_tests(&self, shard: usize, after: Duration) -> Completion<()> {
        let (c, done) = pair(self.shared.id, shard);
        let task = Box::new(move |_: &mut ShardContext<'_>| {
            std::thread::sleep(after);
            // Failed with ShardFailed once the shard is marked dead (not while unwinding, when
            // its files could still be read inline).
            crate::shard::notify_death(done);
            std::panic::panic_any(KillShard);
        });
        self.shared.send_or_fail(shard, Message::Task(task));
        c
    }

    /// Sends a stats request to every shard.
    fn request_stats(&self) -> Vec<(usize, Option<Completion<ShardStats>>)> {
        self.shared
            .shards
            .iter()
            .map(|link| {
                let (c, done) = pair(self.shared.id, link.index);
                let sent = link.send(Message::Stats(done)).is_ok();
                (link.index, sent.then_some(c))
            })
            .collect()
    }

    /// Fills in a shard's stats from its reply, its last snapshot, or as failed; adds the
    /// caller-side cancellations.
    fn shard_stats(&self, index: usize, got: Option<ShardStats>) -> ShardStats {
        let link = &self.shared.shards[index];
        let last = || link.shared.final_stats.lock().ok().and_then(|s| s.clone());
        let mut s = got.or_else(last).unwrap_or_else(|| {
            let mut s = ShardStats::new(link.index, link.cpu, link.node);
            s.failed = true;
            s
        });
        s.cancelled = s
            .cancelled
            .saturating_add(link.shared.cancelled_unsent.load(Ordering::Relaxed));
        // Reads done on callers' threads for this shard's files.
        s.add_inline(&self.shared.inline.snapshot(index));
        s
    }

    /// Per-shard and merged statistics. After shutdown, the counts as the shards stopped; a shard
    /// that died shows as failed with no counts.
    ///
    /// Blocks until every shard has answered (each answers between two turns of its loop). On a
    /// shard thread of this executor it waits for no shard (a shard thread never blocks on
    /// shards): use [`try_stats`](Self::try_stats) or [`stats_async`](Self::stats_async) there;
    /// this shows the shards it could not wait for as failed.
    pub fn stats(&self) -> ExecutorStats {
        let shards = self
            .request_stats()
            .into_iter()
            .map(|(i, c)| {
                let got = c.and_then(|c| c.wait().ok());
                self.shard_stats(i, got)
            })
            .collect();
        ExecutorStats::from_shards(shards, self.started.elapsed())
    }

    /// [`stats`](Self::stats), failing with [`Error::WouldDeadlock`] on a shard thread of
    /// this executor instead of showing shards as failed.
    pub fn try_stats(&self) -> Result<ExecutorStats> {
        if let Some((exec, shard)) = crate::completion::current_shard() {
            if exec == self.shared.id {
                return Err(Error::WouldDeadlock {
                    op: "Executor::stats",
                    shard,
                });
            }
        }
        Ok(self.stats())
    }

    /// [`stats`](Self::stats) without blocking: awaits each shard's answer.
    pub async fn stats_async(&self) -> ExecutorStats {
        let mut shards = Vec::with_capacity(self.shared.shards.len());
        for (i, c) in self.request_stats() {
            let got = match c {
                Some(c) => c.await.ok(),
                None => None,
            };
            shards.push(self.shard_stats(i, got));
        }
        ExecutorStats::from_shards(shards, self.started.elapsed())
    }

    /// Tells every shard to stop; the completions finish when each has stopped.
    fn begin_shutdown(&self) -> Vec<Completion<()>> {
        self.shared.closed.store(true, Ordering::Release);
        // Opens still waiting for room among the descriptors in transit never go out.
        self.shared.fds.fail_queued();
        self.shared
            .shards
            .iter()
            .map(|link| {
                let (c, done) = pair(self.shared.id, link.index);
                let msg = Message::Shutdown {
                    grace: self.shutdown_timeout,
                    done: Some(done),
                };
                match link.send(msg) {
                    Ok(()) => c,
                    // Already stopped (or stopping past its last drain): nothing to wait for.
                    Err(_) => Completion::ready(Ok(())),
                }
            })
            .collect()
    }

    /// Joins the stopped shard threads (never the calling thread itself) and reports a dead shard.
    fn finish_shutdown(&self) -> Result<()> {
        // why: the lock is held while joining, so a concurrent shutdown() waits here for the
        // shards to stop instead of finding the list empty and returning while work is pending.
        // why: on one of this executor's shard threads, joining is left to a caller elsewhere
        // (or to nobody: a dropped executor's threads end by themselves). Joining itself would
        // never end, and two shards shutting down at once would each wait to join the other.
        let on_a_shard =
            crate::completion::current_shard().is_some_and(|(exec, _)| exec == self.shared.id);
        if !on_a_shard {
            let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
            for t in threads.drain(..) {
                let _ = t.join();
            }
        }
        match self
            .shared
            .shards
            .iter()
            .find(|l| l.shared.dead.load(Ordering::Acquire))
        {
            Some(l) => Err(Error::ShardFailed {
                shard: l.index,
                reason: "the shard thread panicked".into(),
            }),
            None => Ok(()),
        }
    }

    /// Stops accepting work (new calls fail with [`Error::Shutdown`]), lets every queued and
    /// in-flight operation finish and complete its handle, cancels what is still in flight after
    /// [`shutdown_timeout`](ExecutorBuilder::shutdown_timeout), closes files, unregisters and
    /// unmaps, and joins the shard threads. Returns an error if a shard had died. Idempotent.
    ///
    /// Blocks until the shards have stopped: in async code use
    /// [`shutdown_async`](Self::shutdown_async). Called on one of this executor's shard threads,
    /// it tells every shard to stop but waits for none (each stops by itself; that one once the
    /// call returns to it): a shard thread never blocks on shards.
    pub fn shutdown(&self) -> Result<()> {
        for c in self.begin_shutdown() {
            // WouldDeadlock on a shard thread: the shards stop by themselves.
            let _ = c.wait();
        }
        self.finish_shutdown()
    }

    /// [`shutdown`](Self::shutdown) without blocking: awaits the shards' stop, then joins their
    /// threads, which have exited by then.
    pub async fn shutdown_async(&self) -> Result<()> {
        for c in self.begin_shutdown() {
            let _ = c.await;
        }
        self.finish_shutdown()
    }
}

/// Dropping the executor begins its shutdown, as [`Executor::shutdown`] does (new work is
/// refused; queued and in-flight operations finish and complete their handles, what is still in
/// flight after `shutdown_timeout` is cancelled, files are closed), and returns at once: it never
/// blocks the thread that drops it (an async runtime's worker, a shard's own thread, any other).
/// The shard threads finish the shutdown by themselves and exit, and the process waits for them
/// when it exits (`main` returning, or `std::process::exit`; for at most `shutdown_timeout` and
/// a second), so that writes queued and never waited for are done before it ends. To wait for
/// them yourself (to have the files closed and the pinned memory released before building
/// another executor, say), call [`shutdown`](Executor::shutdown) or `shutdown_async().await`
/// before the drop.
impl Drop for Executor {
    fn drop(&mut self) {
        drop(self.begin_shutdown());
        // why: joining here would block the dropping thread until every shard has drained, up to
        // `shutdown_timeout` with a stalled operation: an async runtime's worker (the last
        // `Arc<Executor>` dropped in a task) or a shard thread (which can never join itself). The
        // handles are dropped, which detaches the threads; an explicit `shutdown` joined them
        // already.
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        crate::stop_at_exit::adopt(threads, self.shutdown_timeout);
    }
}

/// Requests with a deadline: see [`Executor::timeout`].
#[derive(Debug, Clone, Copy)]
pub struct Deadlined<'a> {
    exec: &'a Executor,
    deadline: Option<Instant>,
}

impl Deadlined<'_> {
    /// [`Executor::read`] with the deadline.
    pub fn read(&self, file: &File, offset: u64, len: usize) -> Completion<Vec<u8>> {
        self.read_into(file, offset, len, Vec::new())
    }

    /// [`Executor::read_into`] with the deadline.
    pub fn read_into(
        &self,
        file: &File,
        offset: u64,
        len: usize,
        buf: Vec<u8>,
    ) -> Completion<Vec<u8>> {
        self.exec.shared.read(file, offset, len, buf, self.deadline)
    }

    /// [`Executor::read_with`] with the deadline.
    pub fn read_with(
        &self,
        file: &File,
        offset: u64,
        len: usize,
        flags: crate::RwFlags,
    ) -> Completion<Vec<u8>> {
        let op = request::read_op_with(
            file,
            offset,
            len,
            Vec::new(),
            flags,
            self.exec.shared.limits,
        );
        self.exec
            .shared
            .request(file, op, Reply::Data, self.deadline)
    }

    /// [`Executor::write_with`] with the deadline.
    pub fn write_with(
        &self,
        file: &File,
        offset: u64,
        data: impl Into<Vec<u8>>,
        flags: crate::RwFlags,
    ) -> Completion<usize> {
        let op = request::write_op_with(file, offset, data.into(), flags, self.exec.shared.limits);
        self.exec
            .shared
            .request(file, op, Reply::Count, self.deadline)
    }

    /// [`Executor::write`] with the deadline.
    pub fn write(&self, file: &File, offset: u64, data: impl Into<Vec<u8>>) -> Completion<usize> {
        let op = request::write_op(file, offset, data.into(), self.exec.shared.limits);
        self.exec
            .shared
            .request(file, op, Reply::Count, self.deadline)
    }

    /// [`Executor::fsync`] with the deadline.
    pub fn fsync(&self, file: &File) -> Completion<()> {
        let op = Ok(crate::request::sync_op(false));
        self.exec
            .shared
            .request(file, op, Reply::Unit, self.deadline)
    }

    /// [`Executor::metadata`] with the deadline.
    pub fn metadata(&self, file: &File) -> Completion<crate::Metadata> {
        let make = |done| Box::new(op::statx::Statx::of_file(done)) as Box<dyn FileOp>;
        self.exec.shared.request_op(file, Ok(make), self.deadline)
    }

    /// [`Executor::stat`] with the deadline.
    pub fn stat(&self, path: impl AsRef<Path>) -> Completion<crate::Metadata> {
        self.stat_with(path.as_ref(), false)
    }

    fn stat_with(&self, path: &Path, nofollow: bool) -> Completion<crate::Metadata> {
        self.exec.shared.request_path(
            "stat",
            path,
            None,
            |c, target, done| Box::new(op::statx::Statx::of_path(c, target, nofollow, done)),
            self.deadline,
        )
    }

    /// [`Executor::set_len`] with the deadline.
    pub fn set_len(&self, file: &File, len: u64) -> Completion<()> {
        let op = request::set_len(file, len)
            .map(|()| IoOp::File(Box::new(op::truncate::Truncate { len })));
        self.exec
            .shared
            .request(file, op, Reply::Unit, self.deadline)
    }

    /// [`Executor::sync_file_range`] with the deadline.
    pub fn sync_file_range(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        flags: crate::SyncRangeFlags,
    ) -> Completion<()> {
        let op = request::sync_file_range(offset, len, flags);
        self.exec
            .shared
            .request(file, op, Reply::Unit, self.deadline)
    }

    /// [`Executor::fadvise`] with the deadline.
    pub fn fadvise(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        advice: crate::Advice,
    ) -> Completion<()> {
        if let Err(e) = self.exec.shared.check_owner(file) {
            return Completion::ready(Err(e));
        }
        crate::file_ops::fadvise(file, offset, len, advice, self.deadline)
    }

    /// [`Executor::read_vectored`] with the deadline.
    pub fn read_vectored(
        &self,
        file: &File,
        offset: u64,
        lens: &[usize],
    ) -> Completion<Vec<Vec<u8>>> {
        let limits = self.exec.shared.limits;
        let lens = lens.to_vec();
        let make = request::vectored(
            file,
            "readv",
            offset,
            lens.iter().copied(),
            lens.len(),
            false,
            limits,
        )
        .map(|()| {
            move |done| Box::new(op::vectored::ReadV::new(offset, lens, 0, done)) as Box<dyn FileOp>
        });
        self.exec.shared.request_op(file, make, self.deadline)
    }

    /// [`Executor::write_vectored`] with the deadline.
    pub fn write_vectored(
        &self,
        file: &File,
        offset: u64,
        bufs: Vec<Vec<u8>>,
    ) -> Completion<usize> {
        let limits = self.exec.shared.limits;
        let make = request::vectored(
            file,
            "writev",
            offset,
            bufs.iter().map(Vec::len),
            bufs.len(),
            true,
            limits,
        )
        .map(|()| {
            move |done| {
                Box::new(op::vectored::WriteV::new(offset, bufs, 0, done)) as Box<dyn FileOp>
            }
        });
        self.exec.shared.request_op(file, make, self.deadline)
    }

    /// [`Executor::append`] with the deadline.
    pub fn append(&self, file: &File, data: impl Into<Vec<u8>>) -> Completion<crate::Appended> {
        let data = data.into();
        let make = request::append(file, data.len(), self.exec.shared.limits)
            .map(|()| move |done| Box::new(op::append::Append::new(data, done)) as Box<dyn FileOp>);
        self.exec.shared.request_op(file, make, self.deadline)
    }

    /// [`Executor::unlink`] with the deadline.
    pub fn unlink(&self, path: impl AsRef<Path>) -> Completion<()> {
        self.path_call("unlink", path.as_ref(), op::path::PathCall::Unlink)
    }

    /// [`Executor::remove_dir`] with the deadline.
    pub fn remove_dir(&self, path: impl AsRef<Path>) -> Completion<()> {
        // A directory made at this path later is another one: route it anew.
        request::forget_dirs(path.as_ref());
        self.path_call("remove_dir", path.as_ref(), op::path::PathCall::RemoveDir)
    }

    /// [`Executor::mkdir`] with the deadline.
    pub fn mkdir(&self, path: impl AsRef<Path>, mode: u32) -> Completion<()> {
        self.path_call("mkdir", path.as_ref(), op::path::PathCall::Mkdir { mode })
    }

    /// [`Executor::rename`] with the deadline.
    pub fn rename(
        &self,
        from: impl AsRef<Path>,
        to: impl AsRef<Path>,
        flags: crate::RenameFlags,
    ) -> Completion<()> {
        let (from, to) = (from.as_ref(), to.as_ref());
        // Directories renamed away or replaced: route what is at these paths anew.
        request::forget_dirs(from);
        request::forget_dirs(to);
        let to_c = match op::c_path("rename", to) {
            Ok(c) => c,
            Err(e) => return Completion::ready(Err(e)),
        };
        let call = op::path::PathCall::Rename {
            to: to_c,
            to_path: std::sync::Arc::from(to),
            flags,
        };
        self.exec.shared.request_path(
            "rename",
            from,
            Some(DirOf::Path(to)),
            |c, target, done| Box::new(op::path::PathOp::new(call, c, target, done)),
            self.deadline,
        )
    }

    /// [`Executor::read_dir`] with the deadline.
    pub fn read_dir(&self, path: impl AsRef<Path>) -> Completion<Vec<crate::DirEntry>> {
        self.exec.shared.request_path(
            "read_dir",
            path.as_ref(),
            Some(DirOf::Itself),
            |c, target, done| Box::new(op::read_dir::ReadDir::of_path(c, target, done)),
            self.deadline,
        )
    }

    /// [`Executor::link_file`] with the deadline.
    pub fn link_file(&self, file: &File, path: impl AsRef<Path>) -> Completion<()> {
        if let Err(e) = self.exec.shared.check_owner(file) {
            return Completion::ready(Err(e));
        }
        crate::file_ops::link_into(file, path.as_ref(), self.deadline)
    }

    /// [`Executor::hard_link`] with the deadline.
    pub fn hard_link(&self, original: impl AsRef<Path>, new: impl AsRef<Path>) -> Completion<()> {
        let (original, new) = (original.as_ref(), new.as_ref());
        let to = match op::c_path("hard_link", new) {
            Ok(c) => c,
            Err(e) => return Completion::ready(Err(e)),
        };
        let call = op::path::PathCall::Link {
            to,
            to_path: std::sync::Arc::from(new),
        };
        self.exec.shared.request_path(
            "hard_link",
            original,
            Some(DirOf::Path(new)),
            |c, target, done| Box::new(op::path::PathOp::new(call, c, target, done)),
            self.deadline,
        )
    }

    /// [`Executor::symlink`] with the deadline.
    pub fn symlink(&self, target: impl AsRef<Path>, link: impl AsRef<Path>) -> Completion<()> {
        let target = target.as_ref();
        let c = match op::c_path("symlink", target) {
            Ok(c) => c,
            Err(e) => return Completion::ready(Err(e)),
        };
        let call = op::path::PathCall::Symlink {
            target: c,
            target_path: std::sync::Arc::from(target),
        };
        self.path_call("symlink", link.as_ref(), call)
    }

    fn path_call(
        &self,
        name: &'static str,
        path: &Path,
        call: op::path::PathCall,
    ) -> Completion<()> {
        self.exec.shared.request_path(
            name,
            path,
            None,
            |c, target, done| Box::new(op::path::PathOp::new(call, c, target, done)),
            self.deadline,
        )
    }

    /// [`Executor::fdatasync`] with the deadline.
    pub fn fdatasync(&self, file: &File) -> Completion<()> {
        let op = Ok(crate::request::sync_op(true));
        self.exec
            .shared
            .request(file, op, Reply::Unit, self.deadline)
    }
}

/// Which directory a path operation is routed and ordered by, when not the path's parent.
#[derive(Clone, Copy)]
pub(crate) enum DirOf<'a> {
    /// The parent of this other path (rename, hard_link: the destination's).
    Path(&'a Path),
    /// The path itself, a directory (read_dir).
    Itself,
}

/// A group of requests sent with one message per shard. Dropping a batch without submitting it
/// fails its completions with [`Error::InvalidArgument`].
#[must_use = "a batch sends nothing until it is submitted; dropped, its completions fail"]
pub struct Batch<'a> {
    exec: &'a Executor,
    /// Placeholder timestamp for requests; `submit` stamps them.
    created: Instant,
    per_shard: Vec<Vec<IoRequest>>,
    /// The files of the batch's requests (each once in a row), kept open until it is sent: a
    /// file whose last handle the caller drops meanwhile closes after the batch.
    held: Vec<File>,
}

impl Batch<'_> {
    fn add<T>(
        &mut self,
        file: &File,
        op: Result<IoOp>,
        reply: impl FnOnce(Completer<T>) -> Reply,
    ) -> Completion<T> {
        let op = match op.and_then(|op| self.exec.shared.check_owner(file).map(|()| op)) {
            Ok(op) => op,
            Err(e) => return Completion::ready(Err(e)),
        };
        let (c, done) = pair(self.exec.shared.id, file.shard());
        crate::file::hold(&mut self.held, file);
        if let Some(list) = self.per_shard.get_mut(file.shard()) {
            list.push(IoRequest {
                file: file.handle(),
                pending: crate::inline::pending_for(file, op.kind()),
                op,
                reply: reply(done),
                at: self.created,
                deadline: None,
            });
        }
        c
    }

    /// Adds a read (see [`Executor::read`]). A read of cached data is done at once (see
    /// [`ExecutorBuilder::inline_reads`](crate::ExecutorBuilder::inline_reads)), unless a write
    /// of the file is unfinished or added to the batch before it.
    pub fn read(&mut self, file: &File, offset: u64, len: usize) -> Completion<Vec<u8>> {
        self.read_into(file, offset, len, Vec::new())
    }

    /// Adds a read into `buf` (see [`Executor::read_into`]).
    pub fn read_into(
        &mut self,
        file: &File,
        offset: u64,
        len: usize,
        buf: Vec<u8>,
    ) -> Completion<Vec<u8>> {
        let op = request::read_op(file, offset, len, buf, self.exec.shared.limits);
        // A read of cached data is done at once (see `crate::inline`); a write of the file
        // added earlier to this batch (or sent earlier) keeps it for the shard.
        match self.exec.shared.inline_op(file, op) {
            Ok(data) => Completion::ready(Ok(data)),
            Err(op) => self.add(file, op, Reply::Data),
        }
    }

    /// Adds a write (see [`Executor::write`]).
    pub fn write(
        &mut self,
        file: &File,
        offset: u64,
        data: impl Into<Vec<u8>>,
    ) -> Completion<usize> {
        let op = request::write_op(file, offset, data.into(), self.exec.shared.limits);
        self.add(file, op, Reply::Count)
    }

    /// Adds an fsync (see [`Executor::fsync`]).
    pub fn fsync(&mut self, file: &File) -> Completion<()> {
        self.add(file, Ok(crate::request::sync_op(false)), Reply::Unit)
    }

    /// Requests in the batch.
    pub fn len(&self) -> usize {
        self.per_shard.iter().map(Vec::len).sum()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends the batch: one message and at most one wake-up per shard. Latency is counted from
    /// here. Never blocks.
    pub fn submit(mut self) {
        let exec = self.exec;
        let now = Instant::now();
        for (shard, mut reqs) in std::mem::take(&mut self.per_shard).into_iter().enumerate() {
            for r in &mut reqs {
                r.at = now;
            }
            if !reqs.is_empty() {
                exec.shared.send_or_fail(shard, Message::Batch(reqs));
            }
        }
        // After the sends: a close these drops may send goes behind the batch.
        self.held.clear();
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        for reqs in self.per_shard.drain(..) {
            if !reqs.is_empty() {
                let e = Error::invalid("batch", "the batch was dropped without submit()");
                Message::Batch(reqs).fail(&e);
            }
        }
    }
}

/// The panic payload of [`Executor::kill_shard_for_tests`]: the shard lets it unwind.
pub(crate) struct KillShard;

/// The text of a panic payload.
pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-text panic payload".to_string()
    }
}
