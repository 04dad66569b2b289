//! Inline cached reads: a buffered read first tries `preadv2(.., RWF_NOWAIT)` on the caller's
//! thread, and goes to the file's shard only when that would block.
//!
//! On page-cached data the hand-off to a shard (a send, a wake-up, a poll, a wake back) costs
//! more than the read itself (see ARCHITECTURE.md). io_uring does the same inside the kernel: a
//! non-blocking attempt first, a worker only when it would block. Here:
//!
//! - **When.** A read of a regular file opened without O_DIRECT, of at most
//!   [`inline_read_limit`](crate::ExecutorBuilder::inline_read_limit) bytes, without RWF flags,
//!   from `Executor::read`/`read_into`/`timeout(..).read*`, `Batch::read*`, `Session::read` and
//!   `LocalShard::read*`, while no mutation of the file (any handle on its inode) sent through
//!   this executor is unfinished, and while the filesystem has not refused RWF_NOWAIT for it.
//! - **Result.** The whole range read (or a short count that the next call confirms is the end
//!   of the file): the request is done there, a ready `Completion` (or a `Done` in the session's
//!   own queue), counted in the owning shard's statistics (`ShardStats::inline_reads`). EAGAIN,
//!   or part of the data then EAGAIN: the request goes to the shard with the part already read
//!   (the shard reads the rest). EOPNOTSUPP (tmpfs, procfs, sysfs on Linux 6.18): the file's
//!   reads go to the shard from then on. Any other error: the shard runs the read and reports
//!   it, as without inline reads.
//! - **Order.** A read must never miss a write, `set_len`, `fallocate`, append or writev that the
//!   same caller sent before it (or that happened before it through any synchronization). Each
//!   inode has one count of such mutations ([`PendingCount`], shared by every handle open on it in
//!   this executor: all of them live on one shard). A mutation holds a [`Pending`] from the
//!   moment its request is made (before it is sent, or queued in a `Batch` or `Session`) until
//!   the shard has finished it (dropped before its handle is completed). While the count is not
//!   zero, reads of the inode go to the shard, where per-file order applies; when it is zero,
//!   every mutation made before the read has finished, and the page cache already holds it.
//! - **Descriptor lifetime.** The caller reads the shard's own descriptor number, so it must not
//!   be closed (and the number reused for another file) under a read. Every path that closes it
//!   (an explicit close from another clone, the close of the last handle, shutdown, a dying
//!   shard) drops the shard's file entry, whose `Drop` calls [`InlineFile::retire`] first. See
//!   the SAFETY comment on [`InlineReads::try_read`] for the protocol (a per-thread hazard slot).

use crate::file::File;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// The default [`inline_read_limit`](crate::ExecutorBuilder::inline_read_limit): reads up to
/// this many bytes are tried on the caller's thread. Chosen by measurement (BENCHMARKS.md,
/// "Inline cached reads"): a 64 KiB copy from the page cache takes a few microseconds, so a
/// runtime thread is never held for long.
pub const DEFAULT_INLINE_READ_LIMIT: usize = 64 * 1024;

/// The largest inline read limit accepted (larger reads should not hold a caller's thread).
pub const MAX_INLINE_READ_LIMIT: usize = 16 << 20;
const _: () = assert!(MAX_INLINE_READ_LIMIT <= u32::MAX as usize);

// ---------------------------------------------------------------------------------------------
// Per inode: the count of unfinished mutations

/// Mutations of one inode made and not yet finished by its shard (see the module docs). Shared
/// by every open handle on the inode in one executor; the shard hands out the same one to each
/// open while any is open (`FileTable`).
#[derive(Debug, Default)]
pub(crate) struct PendingCount(AtomicUsize);

impl PendingCount {
    fn is_zero(&self) -> bool {
        // Acquire: pairs with the Release of the decrement, so that what the shard did before it
        // finished the mutation (reaped its completion) happens before the read.
        self.0.load(Ordering::Acquire) == 0
    }
}

/// One unfinished mutation: made with its request, dropped by the shard once the mutation has
/// finished (or when the request is refused, failed or dropped without running). An operation
/// the shard has to leak (its memory may still be in the kernel) leaks its `Pending` too: the
/// inode's reads then keep going to the shard, which is always correct.
#[derive(Debug)]
pub(crate) struct Pending(Arc<PendingCount>);

impl Pending {
    /// Counts a mutation of `file`'s inode (for every request that changes data or size).
    pub(crate) fn of(file: &File) -> Pending {
        let count = Arc::clone(&file.inner.inline.pending);
        count.0.fetch_add(1, Ordering::Release);
        Pending(count)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Release);
    }
}

/// Whether `kind` changes a file's data or size: a read sent after it must see it.
pub(crate) fn mutates(kind: crate::op::kind::OpKind) -> bool {
    use crate::op::kind::OpKind as K;
    matches!(
        kind,
        K::Write
            | K::Writev
            | K::Append
            | K::Truncate
            | K::Fallocate
            | K::CopyFileRange
            | K::CloneRange
    )
}

/// The [`Pending`] of a request of `kind` on `file`, if it mutates.
pub(crate) fn pending_for(file: &File, kind: crate::op::kind::OpKind) -> Option<Pending> {
    mutates(kind).then(|| Pending::of(file))
}

// ---------------------------------------------------------------------------------------------
// Per open file

/// What the handles of one open file and its shard entry share for inline reads.
#[derive(Debug)]
pub(crate) struct InlineFile {
    /// The shard's descriptor (owned by its file entry, which retires this before closing it).
    fd: RawFd,
    /// A regular file, opened for reading, without O_DIRECT.
    eligible: bool,
    /// The descriptor is about to be closed: no new inline read may start.
    retired: AtomicBool,
    /// The filesystem refused RWF_NOWAIT (EOPNOTSUPP): stop trying.
    refused: AtomicBool,
    /// The inode's unfinished mutations.
    pending: Arc<PendingCount>,
}

impl InlineFile {
    /// The state of a newly installed file (on its shard thread).
    pub(crate) fn new(fd: RawFd, eligible: bool, pending: Arc<PendingCount>) -> InlineFile {
        InlineFile {
            fd,
            eligible,
            retired: AtomicBool::new(false),
            refused: AtomicBool::new(false),
            pending,
        }
    }

    /// The shard's descriptor.
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd
    }

    /// Called before the descriptor is closed (by the shard's file entry, on every path): no
    /// inline read starts on it after this, and this waits for those in progress, which are each
    /// one `preadv2` with RWF_NOWAIT of at most the inline limit (a copy from the page cache,
    /// microseconds). See [`InlineReads::try_read`].
    pub(crate) fn retire(&self) {
        if self.retired.swap(true, Ordering::SeqCst) || !self.eligible {
            return;
        }
        let me = self as *const InlineFile as usize;
        let slots = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        for slot in slots.iter() {
            let mut spins = 0u32;
            while slot.reading.load(Ordering::SeqCst) == me {
                spins = spins.saturating_add(1);
                if spins < 100 {
                    std::hint::spin_loop();
                } else {
                    // The reader may be preempted (and share our CPU): let it finish.
                    std::thread::yield_now();
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Per thread: the hazard slot and the statistics stripe

/// A thread's hazard slot: the address of the [`InlineFile`] whose descriptor it is reading, or 0.
#[repr(align(128))]
#[derive(Debug, Default)]
struct Slot {
    reading: AtomicUsize,
}

/// Every live thread's slot (registered on its first inline read, removed when it exits).
static REGISTRY: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());
/// Hands out statistics stripes round-robin.
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

struct ThreadSlot {
    slot: Arc<Slot>,
    stripe: usize,
}

impl ThreadSlot {
    fn register() -> ThreadSlot {
        let slot = Arc::new(Slot::default());
        REGISTRY
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::clone(&slot));
        ThreadSlot {
            slot,
            stripe: NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES,
        }
    }
}

impl Drop for ThreadSlot {
    fn drop(&mut self) {
        let mut slots = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|s| !Arc::ptr_eq(s, &self.slot));
    }
}

thread_local! {
    static THREAD: ThreadSlot = ThreadSlot::register();
}

// ---------------------------------------------------------------------------------------------
// Statistics: per shard, striped by thread

/// Stripes of counters per shard: threads are spread over them, so two threads reading the same
/// shard's files rarely write the same cache line.
const STRIPES: usize = 8;
/// Sub-buckets per power of two of the latency histogram (1/16: about 6% resolution).
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Buckets up to 2^36 ticks (68 s of nanoseconds, about 20 s of a 3 GHz TSC: longer samples are
/// clamped there; the shards' histograms clamp at 60 s).
const BUCKETS: usize = (36 - SUB_BITS as usize + 1) * SUB;

/// The histogram bucket of a latency in clock ticks (log-linear: exact below 16, then 16
/// buckets per power of two).
fn bucket(ns: u64) -> usize {
    let v = ns.clamp(1, (1 << 36) - 1);
    if v < SUB as u64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS
    (e - SUB_BITS + 1) as usize * SUB + ((v >> (e - SUB_BITS)) as usize & (SUB - 1))
}

/// The middle of bucket `i`, in ticks (what a sample in it is recorded as when merged).
fn bucket_value(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let e = (i / SUB) as u32 + SUB_BITS - 1;
    let sub = (i % SUB) as u64;
    let width = 1u64 << (e - SUB_BITS);
    ((SUB as u64 + sub) << (e - SUB_BITS)) + width / 2
}

#[repr(align(128))]
#[derive(Default)]
struct Stripe {
    bytes: AtomicU64,
    fallbacks: AtomicU64,
    /// Latency buckets (their sum is the number of inline reads), made on first use.
    hist: OnceLock<Box<[AtomicU64]>>,
}

/// The clock inline reads are timed with. `clock_gettime` costs about 55 ns on the 2-vCPU VM
/// this was measured on (two per read: 12% of a cached 4 KiB read); the TSC costs 15. So where
/// the kernel itself keeps time with the TSC (its clocksource is `tsc`: invariant and
/// synchronized across CPUs), reads are timed in TSC ticks, converted to nanoseconds when the
/// statistics are read, at the rate measured between the executor's start and the first time
/// they are read (then kept: every snapshot converts a bucket to the same value, so two
/// snapshots subtract exactly).
#[derive(Debug)]
struct Clock {
    tsc: bool,
    /// When the executor started, on both clocks.
    start: Instant,
    start_ticks: u64,
    /// Ticks per nanosecond, measured once.
    rate: OnceLock<f64>,
}

impl Clock {
    fn new() -> Clock {
        let tsc = cfg!(target_arch = "x86_64")
            && std::fs::read_to_string(
                "/sys/devices/system/clocksource/clocksource0/current_clocksource",
            )
            .is_ok_and(|s| s.trim() == "tsc");
        let mut c = Clock {
            tsc,
            start: Instant::now(),
            start_ticks: 0,
            rate: OnceLock::new(),
        };
        c.start_ticks = c.ticks();
        c
    }

    /// Now, in ticks (TSC ticks, or nanoseconds since `start`).
    #[inline]
    fn ticks(&self) -> u64 {
        #[cfg(target_arch = "x86_64")]
        if self.tsc {
            // SAFETY: RDTSC only reads the time-stamp counter (x86_64 always has it).
            return unsafe { core::arch::x86_64::_rdtsc() };
        }
        self.start.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64
    }

    /// Ticks per nanosecond: measured over the executor's life until the first call, at least
    /// 50 µs of it (spun for here if the statistics are read sooner: the two clock reads' jitter
    /// is then under 0.2% of the rate, far inside the histogram's 6%).
    fn ticks_per_ns(&self) -> f64 {
        if !self.tsc {
            return 1.0;
        }
        *self.rate.get_or_init(|| {
            let min = std::time::Duration::from_micros(50);
            loop {
                let (t, ns) = (self.ticks(), self.start.elapsed());
                if ns >= min {
                    let rate = t.saturating_sub(self.start_ticks) as f64 / ns.as_nanos() as f64;
                    return if rate > 0.0 { rate } else { 1.0 };
                }
                std::hint::spin_loop();
            }
        })
    }
}

/// One shard's inline-read counters, updated by callers' threads.
#[derive(Default)]
pub(crate) struct ShardCounters {
    stripes: [Stripe; STRIPES],
}

/// A snapshot of one shard's inline reads, merged into its `ShardStats` by the coordinator.
#[derive(Debug, Default, Clone)]
pub(crate) struct Snapshot {
    pub(crate) reads: u64,
    pub(crate) bytes: u64,
    pub(crate) fallbacks: u64,
    /// (latency in ns, samples), bucket by bucket.
    pub(crate) latency: Vec<(u64, u64)>,
}

impl ShardCounters {
    /// One inline read of `bytes` that took `ticks` of the executor's [`Clock`].
    fn hit(&self, stripe: usize, bytes: u64, ticks: u64) {
        let s = &self.stripes[stripe % STRIPES];
        s.bytes.fetch_add(bytes, Ordering::Relaxed);
        let h = s
            .hist
            .get_or_init(|| (0..BUCKETS).map(|_| AtomicU64::new(0)).collect());
        if let Some(b) = h.get(bucket(ticks)) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn fallback(&self, stripe: usize) {
        self.stripes[stripe % STRIPES]
            .fallbacks
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far, latencies converted at `ticks_per_ns`.
    fn snapshot(&self, ticks_per_ns: f64) -> Snapshot {
        let mut out = Snapshot::default();
        let mut counts = vec![0u64; BUCKETS];
        for s in &self.stripes {
            out.bytes = out.bytes.saturating_add(s.bytes.load(Ordering::Relaxed));
            out.fallbacks = out
                .fallbacks
                .saturating_add(s.fallbacks.load(Ordering::Relaxed));
            if let Some(h) = s.hist.get() {
                for (c, b) in counts.iter_mut().zip(h.iter()) {
                    *c = c.saturating_add(b.load(Ordering::Relaxed));
                }
            }
        }
        for (i, &n) in counts.iter().enumerate() {
            if n > 0 {
                out.reads = out.reads.saturating_add(n);
                let ns = bucket_value(i) as f64 / ticks_per_ns.max(1e-9);
                out.latency.push((ns as u64, n));
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The attempt

/// The executor's inline-read settings and counters.
pub(crate) struct InlineReads {
    pub(crate) enabled: bool,
    /// Reads longer than this go to the shard.
    pub(crate) limit: usize,
    /// Per shard, by index.
    counters: Box<[ShardCounters]>,
    clock: Clock,
    /// Called by a reader between its checks and its system call (tests: holds a reader inside
    /// the window the descriptor protocol guards).
    hook: Option<TestHook>,
}

/// A function tests run inside an inline read (see `ExecutorBuilder::inline_read_hook_for_tests`).
pub(crate) type TestHook = Arc<dyn Fn() + Send + Sync>;

impl std::fmt::Debug for InlineReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineReads")
            .field("enabled", &self.enabled)
            .field("limit", &self.limit)
            .finish()
    }
}

/// What became of an inline attempt.
pub(crate) enum Attempt {
    /// Done on this thread: the data (all of it, or up to the end of the file).
    Done(Vec<u8>),
    /// For the shard: `buf` holds the first `kept` bytes (0: nothing was read here).
    Route { buf: Vec<u8>, kept: u32 },
}

/// How a run of `preadv2` calls ended.
enum End {
    /// Everything asked for, or the end of the file.
    Complete,
    /// EAGAIN, or an error the shard reports itself.
    Route,
    /// The filesystem does not do RWF_NOWAIT.
    Refused,
}

impl InlineReads {
    pub(crate) fn new(
        enabled: bool,
        limit: usize,
        shards: usize,
        hook: Option<TestHook>,
    ) -> InlineReads {
        InlineReads {
            enabled,
            limit,
            counters: (0..shards).map(|_| ShardCounters::default()).collect(),
            clock: Clock::new(),
            hook,
        }
    }

    /// Shard `shard`'s counters so far.
    pub(crate) fn snapshot(&self, shard: usize) -> Snapshot {
        match self.counters.get(shard) {
            Some(c) => c.snapshot(self.clock.ticks_per_ns()),
            None => Snapshot::default(),
        }
    }

    /// Tries a checked read of `len` bytes at `offset` of `file` (owned by this executor, which
    /// is not shut down) on this thread.
    pub(crate) fn try_read(
        &self,
        file: &File,
        offset: u64,
        len: usize,
        mut buf: Vec<u8>,
    ) -> Attempt {
        let inner = &file.inner;
        let f = &*inner.inline;
        if !self.enabled
            || len > self.limit
            || !f.eligible
            || f.refused.load(Ordering::Relaxed)
            || inner.closed.load(Ordering::Acquire)
            || !f.pending.is_zero()
        {
            return Attempt::Route { buf, kept: 0 };
        }
        let Some(counters) = self.counters.get(inner.handle.shard) else {
            return Attempt::Route { buf, kept: 0 };
        };
        buf.clear();
        // Bounded by the inline limit.
        buf.reserve_exact(len);
        let start = self.clock.ticks();
        let me = f as *const InlineFile as usize;
        // SAFETY (the descriptor is this file's for the whole read): the reader publishes the
        // file it reads in its thread's slot, then checks `retired`; `retire` sets `retired`,
        // then waits until no slot names the file; every path that closes the descriptor calls
        // `retire` first (the shard's `FileEntry::drop`). Both sides use SeqCst (a store then a
        // load of the other's word), so at least one sees the other: either this reader sees
        // `retired` and does not read, or `retire` sees the slot and waits until the reads below
        // are over. So the descriptor stays open, naming this file, until the slot is cleared.
        // (`file` also keeps `f` alive, so the published address cannot be reused meanwhile.)
        let run = THREAD.try_with(|t| {
            t.slot.reading.store(me, Ordering::SeqCst);
            if f.retired.load(Ordering::SeqCst) {
                t.slot.reading.store(0, Ordering::Release);
                return None;
            }
            if let Some(hook) = &self.hook {
                hook();
            }
            let end = read_nowait(f.fd, offset, len, &mut buf);
            t.slot.reading.store(0, Ordering::Release);
            Some((end, t.stripe))
        });
        let Ok(Some((end, stripe))) = run else {
            // Retired (closing: the shard reports it), or this thread is exiting.
            return Attempt::Route { buf, kept: 0 };
        };
        match end {
            End::Complete => {
                let ticks = self.clock.ticks().saturating_sub(start);
                counters.hit(stripe, buf.len() as u64, ticks);
                Attempt::Done(buf)
            }
            End::Route | End::Refused => {
                if matches!(end, End::Refused) {
                    f.refused.store(true, Ordering::Relaxed);
                }
                counters.fallback(stripe);
                // At most the limit (16 MiB at most), so it fits.
                let kept = u32::try_from(buf.len()).unwrap_or(0);
                Attempt::Route { buf, kept }
            }
        }
    }
}

/// `preadv2(.., RWF_NOWAIT)` into `buf` (empty, with capacity for `len`) until `len` bytes, the
/// end of the file, or a call that would block or fails. `buf`'s length is what arrived.
fn read_nowait(fd: RawFd, offset: u64, len: usize, buf: &mut Vec<u8>) -> End {
    loop {
        let got = buf.len();
        if got == len && len > 0 {
            return End::Complete;
        }
        let iov = libc::iovec {
            // SAFETY (pointer arithmetic): `got <= len <= capacity`: inside or one past the end.
            iov_base: unsafe { buf.as_mut_ptr().add(got) }.cast(),
            iov_len: len - got,
        };
        // The request's checks keep offset + len within i64.
        let off = offset.saturating_add(got as u64).min(i64::MAX as u64) as i64;
        // The system call itself, not glibc's `preadv2`: that one is a thread cancellation point
        // and pays two calls around it (about 3% of a cached 4 KiB read). The offset goes as
        // (low, high) words; on 64-bit targets the low word holds all of it.
        let (lo, hi) = if cfg!(target_pointer_width = "64") {
            (off as libc::c_long, 0)
        } else {
            (
                (off & 0xffff_ffff) as libc::c_long,
                (off >> 32) as libc::c_long,
            )
        };
        // SAFETY: `iov` names the `len - got` spare bytes of `buf`'s allocation, which nothing
        // else touches during the call; the kernel writes at most that many.
        let n = unsafe {
            libc::syscall(
                libc::SYS_preadv2,
                fd,
                &iov as *const libc::iovec,
                1,
                lo,
                hi,
                libc::RWF_NOWAIT,
            )
        };
        if n > 0 {
            // SAFETY: the kernel initialized the `n <= len - got` bytes after `got`.
            unsafe { buf.set_len(got + n as usize) };
            continue;
        }
        if n == 0 {
            return End::Complete; // end of file (or a read of 0 bytes)
        }
        match crate::numa::last_errno() {
            libc::EINTR => continue,
            libc::EOPNOTSUPP => return End::Refused,
            _ => return End::Route,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_the_range() {
        let mut last = 0;
        for v in [
            1u64,
            2,
            15,
            16,
            17,
            31,
            32,
            33,
            1000,
            1 << 20,
            60_000_000_000,
        ] {
            let b = bucket(v);
            assert!(b >= last, "{v}");
            assert!(b < BUCKETS, "{v}");
            last = b;
            let mid = bucket_value(b);
            // The representative value lands in the same bucket and within 1/16 of the sample.
            assert_eq!(bucket(mid), b, "{v}");
            assert!(mid.abs_diff(v) * 16 <= v.max(16), "{v} -> {mid}");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        // Bucket 0 is never used (latencies are at least 1 tick).
        for i in 1..BUCKETS {
            assert_eq!(bucket(bucket_value(i)), i);
        }
    }
}
