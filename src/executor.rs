//! The executor: builds the shards, routes requests to them, merges their statistics, shuts down.

use crate::completion::{pair, Completion};
use crate::error::{IoUringError, Result};
use crate::file::{File, OpenOptions};
use crate::ring::RingConfig;
use crate::router::shard_for;
use crate::shard::{spawn, IoOp, IoRequest, Message, ShardConfig, ShardContext, ShardLink};
use crate::stats::{ExecutorStats, ShardStats};
use crate::topology::{allowed_cpus, Placement, Topology};
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
#[derive(Debug, Clone)]
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
        }
    }
}

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

    /// Messages each shard's inbox holds before senders wait (default 4096).
    pub fn channel_capacity(mut self, n: usize) -> Self {
        self.channel_capacity = n;
        self
    }

    /// How long an idle shard spins before it sleeps (default 20 µs; zero sleeps at once).
    pub fn spin(mut self, d: Duration) -> Self {
        self.spin = d;
        self
    }

    /// Whether buffered (not O_DIRECT) writes are done with `pwrite` on the shard thread (default
    /// true). On ext4 a buffered write cannot be done without blocking, so io_uring hands each one
    /// to a kernel worker thread, which costs more than the write; done inline, the write is a
    /// memory copy into the page cache, but a shard stalls while the kernel throttles writers
    /// (dirty page limits). Turn it off to keep shards responsive under heavy write-back.
    pub fn inline_buffered_writes(mut self, on: bool) -> Self {
        self.inline_buffered_writes = on;
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
        if self.channel_capacity == 0 {
            return Err(IoUringError::InvalidConfig(
                "channel_capacity must be at least 1".into(),
            ));
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
        let id = NEXT_EXECUTOR_ID.fetch_add(1, Ordering::Relaxed);
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
            };
            match spawn(cfg) {
                Ok((link, handle)) => {
                    links.push(link);
                    threads.push(handle);
                }
                Err(e) => {
                    for link in &links {
                        let _ = link.send(Message::Shutdown);
                    }
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Executor {
            id,
            shards: links,
            threads: Mutex::new(threads),
            closed: AtomicBool::new(false),
            started: Instant::now(),
        })
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
#[derive(Debug)]
pub struct Executor {
    id: u64,
    shards: Vec<ShardLink>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
    started: Instant,
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
        self.shards.len()
    }

    /// The shard that owns the file at `path` (following symlinks), without opening it: the
    /// same routing [`open`](Self::open) uses. Fails if the file does not exist.
    pub fn shard_of_path(&self, path: impl AsRef<Path>) -> Result<usize> {
        use std::os::unix::fs::MetadataExt;
        let path = path.as_ref();
        let md = std::fs::metadata(path).map_err(|e| {
            IoUringError::io(
                "stat",
                Some(path.to_path_buf()),
                None,
                e.raw_os_error().unwrap_or(libc::EIO),
            )
        })?;
        let key = crate::router::FileKey {
            dev: md.dev(),
            ino: md.ino(),
        };
        Ok(shard_for(key, self.shards.len()))
    }

    /// The CPU each shard is pinned to (`None` when pinning is off), by shard index.
    pub fn shard_cpus(&self) -> Vec<Option<usize>> {
        self.shards.iter().map(|s| s.cpu).collect()
    }

    /// Sends `msg` to `shard`; on failure returns the error (the message's completers fail with it
    /// too, as they are dropped here with an explicit result).
    fn send(&self, shard: usize, msg: Message) -> std::result::Result<(), IoUringError> {
        if self.closed.load(Ordering::Acquire) {
            fail_message(msg, IoUringError::Shutdown);
            return Err(IoUringError::Shutdown);
        }
        let link = self
            .shards
            .get(shard)
            .ok_or_else(|| IoUringError::invalid("route", format!("no shard {shard}")))?;
        link.send(msg).map_err(|(msg, e)| {
            fail_message(msg, e.clone());
            e
        })
    }

    /// Opens `path`. The file's inode picks its shard: every path to the same file (symlinks,
    /// hard links) lands on the same shard, and so does every reopen.
    pub fn open(&self, path: impl AsRef<Path>, options: &OpenOptions) -> Completion<File> {
        let path = path.as_ref();
        // why: open(2) runs here, before the request reaches a shard; without this check an open
        // refused after shutdown would still create or truncate the file.
        if self.closed.load(Ordering::Acquire) {
            return Completion::ready(Err(IoUringError::Shutdown));
        }
        let (fd, key, flags) = match options.open_fd(path) {
            Ok(x) => x,
            Err(e) => return Completion::ready(Err(e)),
        };
        let shard = shard_for(key, self.shards.len());
        let (c, done) = pair(shard);
        let _ = self.send(
            shard,
            Message::Install {
                fd,
                key,
                flags,
                path: Arc::from(path),
                done,
            },
        );
        c
    }

    /// `file` must have been opened by this executor.
    fn check_owner(&self, file: &File) -> Result<()> {
        if file.exec == self.id {
            Ok(())
        } else {
            Err(IoUringError::BadHandle(format!(
                "{} was opened by another executor",
                file.path.display()
            )))
        }
    }

    /// Checks that `file` is ours and routes a request for it.
    fn request<T>(
        &self,
        file: &File,
        make: impl FnOnce(crate::completion::Completer<T>) -> IoOp,
    ) -> Completion<T> {
        if let Err(e) = self.check_owner(file) {
            return Completion::ready(Err(e));
        }
        let (c, done) = pair(file.shard);
        let req = IoRequest {
            file: file.handle(),
            op: make(done),
            at: Instant::now(),
        };
        let _ = self.send(file.shard, Message::Io(req));
        c
    }

    /// Reads up to `len` bytes at `offset`. Fewer come back only at end of file. Any length works:
    /// long reads are split across pool buffers.
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
        if let Err(e) = check_rw(file, "read", offset, len as u64, file.flags.readable) {
            return Completion::ready(Err(e));
        }
        self.request(file, |done| IoOp::Read {
            offset,
            len,
            buf,
            done,
        })
    }

    /// Writes all of `data` at `offset` (short writes are completed); returns the bytes written.
    pub fn write(&self, file: &File, offset: u64, data: impl Into<Vec<u8>>) -> Completion<usize> {
        let data = data.into();
        if let Err(e) = check_rw(
            file,
            "write",
            offset,
            data.len() as u64,
            file.flags.writable,
        ) {
            return Completion::ready(Err(e));
        }
        self.request(file, |done| IoOp::Write { offset, data, done })
    }

    /// fsync: completes after every earlier write to the file (through this executor) is durable.
    pub fn fsync(&self, file: &File) -> Completion<()> {
        self.request(file, |done| IoOp::Sync {
            datasync: false,
            done,
        })
    }

    /// fdatasync: like [`fsync`](Self::fsync) without flushing metadata that reads do not need.
    pub fn fdatasync(&self, file: &File) -> Completion<()> {
        self.request(file, |done| IoOp::Sync {
            datasync: true,
            done,
        })
    }

    /// fallocate(2) with `mode` (0 allocates and extends the file).
    pub fn fallocate(&self, file: &File, mode: i32, offset: u64, len: u64) -> Completion<()> {
        if offset
            .checked_add(len)
            .is_none_or(|end| end > i64::MAX as u64)
        {
            return Completion::ready(Err(IoUringError::invalid(
                "fallocate",
                format!("offset {offset} + length {len} overflows the largest file offset"),
            )));
        }
        self.request(file, |done| IoOp::Fallocate {
            mode,
            offset,
            len,
            done,
        })
    }

    /// The file's size, after every earlier operation on it.
    pub fn size(&self, file: &File) -> Completion<u64> {
        self.request(file, |done| IoOp::Size { done })
    }

    /// Closes the file after every earlier operation on it; later operations on any clone of the
    /// handle fail with [`IoUringError::BadHandle`].
    pub fn close(&self, file: &File) -> Completion<()> {
        self.request(file, |done| IoOp::Close { done })
    }

    /// Starts a batch: requests added to it go out with one message (and at most one wake-up) per
    /// shard when [`Batch::submit`] is called.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            exec: self,
            created: Instant::now(),
            per_shard: (0..self.shards.len()).map(|_| Vec::new()).collect(),
        }
    }

    /// Runs `f` on shard `shard`'s thread with direct access to its ring and pool (see
    /// [`ShardContext`]), after the shard's own in-flight operations have completed (operations
    /// queued but not yet issued may run after it). A panic in `f` kills that shard (its pending
    /// operations fail; other shards go on).
    pub fn submit_to<R, F>(&self, shard: usize, f: F) -> Completion<R>
    where
        F: FnOnce(&mut ShardContext<'_>) -> R + Send + 'static,
        R: Send + 'static,
    {
        if self.closed.load(Ordering::Acquire) {
            return Completion::ready(Err(IoUringError::Shutdown));
        }
        // why: `send` cannot fail a task's completer with its error (the completer is inside the
        // closure), so an unknown shard would surface as "ShardFailed { shard }" for a shard that
        // does not exist.
        if shard >= self.shards.len() {
            return Completion::ready(Err(IoUringError::invalid(
                "submit_to",
                format!(
                    "no shard {shard}: this executor has {} shards (0..{})",
                    self.shards.len(),
                    self.shards.len()
                ),
            )));
        }
        let (c, done) = pair(shard);
        let task = Box::new(move |ctx: &mut ShardContext<'_>| done.complete(Ok(f(ctx))));
        let _ = self.send(shard, Message::Task(task));
        c
    }

    /// Per-shard and merged statistics. After shutdown, the counts as the shards stopped; a shard
    /// that died shows as failed with no counts.
    pub fn stats(&self) -> ExecutorStats {
        let pending: Vec<_> = self
            .shards
            .iter()
            .map(|link| {
                let (c, done) = pair(link.index);
                let sent = link.send(Message::Stats(done)).is_ok();
                (link, c, sent)
            })
            .collect();
        let shards = pending
            .into_iter()
            .map(|(link, c, sent)| {
                let got = if sent { c.wait().ok() } else { None };
                let last = || link.shared.final_stats.lock().ok().and_then(|s| s.clone());
                got.or_else(last).unwrap_or_else(|| {
                    let mut s = ShardStats::new(link.index, link.cpu, link.node);
                    s.failed = true;
                    s
                })
            })
            .collect();
        ExecutorStats::from_shards(shards, self.started.elapsed())
    }

    /// Stops accepting work (new calls fail with [`IoUringError::Shutdown`]), lets every queued and
    /// in-flight operation finish and complete its handle, closes files, unregisters and unmaps,
    /// and joins the shard threads. Returns an error if a shard had died. Idempotent.
    pub fn shutdown(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        for link in &self.shards {
            // A full inbox makes this wait for room: the shard is draining it.
            let _ = link.send(Message::Shutdown);
        }
        // why: the lock is held while joining, so a concurrent shutdown() waits here for the
        // shards to stop instead of finding the list empty and returning while work is pending.
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        for t in threads.drain(..) {
            let _ = t.join();
        }
        drop(threads);
        match self
            .shards
            .iter()
            .find(|l| l.shared.dead.load(Ordering::Acquire))
        {
            Some(l) => Err(IoUringError::ShardFailed {
                shard: l.index,
                reason: "the shard thread panicked".into(),
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// A group of requests sent with one message per shard. Dropping a batch without submitting it
/// fails its completions with [`IoUringError::InvalidArgument`].
pub struct Batch<'a> {
    exec: &'a Executor,
    /// Placeholder timestamp for requests; `submit` stamps them.
    created: Instant,
    per_shard: Vec<Vec<IoRequest>>,
}

impl Batch<'_> {
    fn add<T>(
        &mut self,
        file: &File,
        check: Result<()>,
        make: impl FnOnce(crate::completion::Completer<T>) -> IoOp,
    ) -> Completion<T> {
        if let Err(e) = check {
            return Completion::ready(Err(e));
        }
        if let Err(e) = self.exec.check_owner(file) {
            return Completion::ready(Err(e));
        }
        let (c, done) = pair(file.shard);
        if let Some(list) = self.per_shard.get_mut(file.shard) {
            list.push(IoRequest {
                file: file.handle(),
                op: make(done),
                at: self.created,
            });
        }
        c
    }

    /// Adds a read (see [`Executor::read`]).
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
        let check = check_rw(file, "read", offset, len as u64, file.flags.readable);
        self.add(file, check, |done| IoOp::Read {
            offset,
            len,
            buf,
            done,
        })
    }

    /// Adds a write (see [`Executor::write`]).
    pub fn write(
        &mut self,
        file: &File,
        offset: u64,
        data: impl Into<Vec<u8>>,
    ) -> Completion<usize> {
        let data = data.into();
        let check = check_rw(
            file,
            "write",
            offset,
            data.len() as u64,
            file.flags.writable,
        );
        self.add(file, check, |done| IoOp::Write { offset, data, done })
    }

    /// Adds an fsync (see [`Executor::fsync`]).
    pub fn fsync(&mut self, file: &File) -> Completion<()> {
        self.add(file, Ok(()), |done| IoOp::Sync {
            datasync: false,
            done,
        })
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
    /// here.
    pub fn submit(mut self) {
        let exec = self.exec;
        let now = Instant::now();
        for (shard, mut reqs) in std::mem::take(&mut self.per_shard).into_iter().enumerate() {
            for r in &mut reqs {
                r.at = now;
            }
            if !reqs.is_empty() {
                let _ = exec.send(shard, Message::Batch(reqs));
            }
        }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        for reqs in self.per_shard.drain(..) {
            if !reqs.is_empty() {
                fail_message(
                    Message::Batch(reqs),
                    IoUringError::invalid("batch", "the batch was dropped without submit()"),
                );
            }
        }
    }
}

/// Checks a read or write before it leaves the caller: access mode, overflow, O_DIRECT alignment.
fn check_rw(file: &File, op: &'static str, offset: u64, len: u64, allowed: bool) -> Result<()> {
    if !allowed {
        let how = if op == "read" {
            "read(true)"
        } else {
            "write(true)"
        };
        return Err(IoUringError::BadHandle(format!(
            "{op} on {}: the file was not opened for {op}ing; open it with {how}",
            file.path.display()
        )));
    }
    if offset
        .checked_add(len)
        .is_none_or(|end| end > i64::MAX as u64)
    {
        return Err(IoUringError::invalid(
            op,
            format!("offset {offset} + length {len} overflows the largest file offset"),
        ));
    }
    if file.flags.direct && (offset % 4096 != 0 || len % 4096 != 0) {
        return Err(IoUringError::invalid(
            op,
            format!(
                "{} is open with O_DIRECT: offset {offset} and length {len} must be multiples of \
                 4096",
                file.path.display()
            ),
        ));
    }
    Ok(())
}

/// Completes the completers inside a message that could not be delivered.
fn fail_message(msg: Message, e: IoUringError) {
    let fail_req = |req: IoRequest| req.op.fail(e.clone());
    match msg {
        Message::Io(req) => fail_req(req),
        Message::Batch(reqs) => reqs.into_iter().for_each(fail_req),
        Message::Install { done, .. } => done.complete(Err(e)),
        Message::Stats(done) => done.complete(Err(e)),
        // A task's completer is inside its closure: dropping it fails the handle.
        Message::Task(_) | Message::Shutdown => {}
    }
}
