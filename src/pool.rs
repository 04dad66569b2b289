//! `RegisteredBufferPool`: buffers registered with a ring once, acquired and released by index,
//! and used with `READ_FIXED` / `WRITE_FIXED`.
//!
//! The pool is one page-aligned slab; buffer `i` starts at `i * stride`, where the stride is the
//! buffer size rounded up to a whole page, so every buffer is aligned for O_DIRECT.
//!
//! A buffer is free (in the free list), acquired (held by the caller, possibly with I/O in flight),
//! lent (taken by the executor's shard for a task's pooled read, `PoolBuf`: refused to everyone
//! until the task drops it) or quarantined (released by its holder after `complete_in_flight` said
//! its operations were done, while the pool has not seen their CQEs). Two records say whether the
//! kernel may use a buffer:
//!
//! - the caller's: [`mark_in_flight`](RegisteredBufferPool::mark_in_flight) and
//!   [`complete_in_flight`](RegisteredBufferPool::complete_in_flight). The pool believes them for
//!   the caller's own buffer: once they say every operation on it is complete, `get`, `get_mut` and
//!   `release` work, as the seed API documents;
//! - the pool's own: set when the pool pushes an SQE for the buffer, cleared when the CQE with that
//!   exact `user_data` is matched ([`complete_cqe`](RegisteredBufferPool::complete_cqe),
//!   [`complete_user_data`](RegisteredBufferPool::complete_user_data)), or forgotten on the
//!   caller's word when the buffer has to be used again after `complete_in_flight` (counted in
//!   [`unmatched_completions`](BufferPoolStats::unmatched_completions)).
//!
//! What holds whatever the caller says (the invariants the `SAFETY` comments rely on):
//!
//! 1. **The slab is never unmapped while an SQE the pool pushed may be outstanding**: Drop unmaps
//!    it only when neither record holds anything and no record was ever forgotten; otherwise it
//!    leaks the slab. A caller who says "complete" too early can at worst see the kernel's bytes
//!    change in its own buffer (or the pool's next holder can, in a buffer `acquire` handed out
//!    on that word), never touch freed memory.
//! 2. A buffer either record says is in flight never goes back to the free list. A quarantined
//!    buffer is handed out again before its CQEs are matched only when no other buffer is free
//!    (the caller's word is all the pool has then).
//! 3. A lent buffer is refused by `get`, `get_mut`, `release`, `mark_in_flight`,
//!    `complete_in_flight` and `submit_*`, and never handed out, until it is taken back.
//!
//! The executor never depends on a caller's word: its own operations cannot be declared complete
//! (`submit_to` closures run only when none is in flight, and lent buffers refuse it), and after
//! each closure the shard waits at the ring for the CQE of every SQE the closure pushed through
//! the pool before it uses the pool again.

use crate::error::{memlock_limit, Error, Result};
use crate::numa::{page_size, Slab};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::fmt;
use std::os::fd::{AsRawFd, RawFd};

/// Where the pool pushes its SQEs: a kernel ring, or a shard's driver (either backend).
pub(crate) trait SqPush {
    /// Queues `entry`; false when the submission queue is full.
    ///
    /// # Safety
    /// As `io_uring::SubmissionQueue::push`: what `entry` points to stays valid until its CQE.
    unsafe fn push_sqe(&mut self, entry: &squeue::Entry) -> bool;
}

impl SqPush for IoUring {
    unsafe fn push_sqe(&mut self, entry: &squeue::Entry) -> bool {
        // SAFETY: the caller's contract is the kernel's.
        unsafe { self.submission().push(entry) }.is_ok()
    }
}

impl SqPush for crate::driver::Driver {
    unsafe fn push_sqe(&mut self, entry: &squeue::Entry) -> bool {
        // SAFETY: the caller's contract is the driver's.
        unsafe { self.push(entry) }
    }
}

/// Fewest registered buffers worth registering: below this a shard's pool goes unregistered.
pub(crate) const MIN_REGISTERED: usize = 4;

/// How a shard's pool came out (see [`RegisteredBufferPool::for_shard`]).
#[derive(Debug)]
pub(crate) enum PoolFit {
    /// All buffers registered.
    Registered,
    /// Fewer buffers than asked, to fit RLIMIT_MEMLOCK; the error the full size got.
    Fitted { asked: usize, error: Option<Error> },
    /// Unregistered buffers: the threads backend (`bytes` 0), or not even
    /// [`MIN_REGISTERED`] buffers fit the limit (`bytes` is what the full pool would pin).
    Unregistered { bytes: usize },
}

/// The kernel's limit on registered buffers per ring.
pub const MAX_BUFFERS: usize = 16_384;
/// The kernel's limit on the size of one registered buffer (1 GiB).
pub const MAX_BUFFER_SIZE: usize = 1 << 30;

/// `user_data` values made by the pool carry this tag bit, so they never collide with `user_data`
/// the caller chooses for other operations on the same ring (as long as it keeps that bit clear).
pub const POOL_USER_DATA_TAG: u64 = 1 << 63;
const SEQ_SHIFT: u32 = 16;
const SEQ_MASK: u64 = (1 << 47) - 1;

/// Who holds a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// In the free list.
    Free,
    /// Held by a caller.
    Acquired,
    /// Lent by the executor's shard to a task (a pooled read's `PoolBuf`, which reads it through a
    /// raw pointer): refused by every public call until [`take_back`](RegisteredBufferPool::take_back).
    Lent,
    /// Released by its holder after `complete_in_flight` said its operations were done, while the
    /// pool's own record still holds SQEs whose CQE it has not matched: out of the free list until
    /// they are matched, or until no other buffer is free (then `acquire` takes the caller's word).
    Quarantined,
}

/// One buffer's state. Invariants: `retired + claimed <= kernel`, and `kernel` equals the number
/// of `user_data` in the buffer's [`Pending`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    hold: Hold,
    /// Operations the caller marked (`mark_in_flight`) for SQEs it pushed itself, not yet
    /// completed (`complete_in_flight`).
    own: u32,
    /// The pool's own record: SQEs the pool pushed for this buffer whose CQE it has neither matched
    /// nor forgotten. Raised only by `push_prepared`; lowered by a matched `user_data`, or to 0 by
    /// `forget_retired` when every one of them was declared complete and the buffer is used again.
    kernel: u32,
    /// Of `kernel`, those `complete_in_flight` declared complete (the caller says it reaped their
    /// CQE): the pool believes it for `get`, `get_mut` and `release`, not for the free list.
    retired: u32,
    /// Of `kernel - retired`, those a `mark_in_flight` claimed: the seed API says to mark a buffer
    /// after submitting, and for a `submit_*` that names the operation the pool already recorded.
    claimed: u32,
}

impl Slot {
    const FREE: Slot = Slot {
        hold: Hold::Free,
        own: 0,
        kernel: 0,
        retired: 0,
        claimed: 0,
    };
    /// Acquired with nothing in flight by either record.
    const ACQUIRED_IDLE: Slot = Slot {
        hold: Hold::Acquired,
        ..Slot::FREE
    };

    /// Operations in flight as the caller's calls say: its own marked ones, and the pool's it has
    /// not declared complete. What `is_in_flight` reports and what `get`, `get_mut` and `release`
    /// check.
    fn in_flight(&self) -> u32 {
        self.own + (self.kernel - self.retired)
    }
}

/// Most operations the pool keeps a record of at once (whose CQE it has not matched), over all
/// buffers: a bound on the memory of a caller who never gives CQEs to the pool while keeping a
/// buffer busy. Far above what a ring has in flight in practice (the executor: one per buffer).
const MAX_RECORDS: usize = 1 << 16;

/// What the public calls say about a lent buffer.
const LENT: &str = "lent to a task (the PoolBuf of a pooled read): it comes back to the pool when \
                    the task drops that PoolBuf";
/// What the public calls say about a quarantined buffer.
const QUARANTINED: &str =
    "released (kept out of the free list until the pool is given the CQEs of \
                           its operations: pass them to complete_cqe)";

/// The direction of a fixed-buffer operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Read,
    Write,
}

/// Statistics of one buffer pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct BufferPoolStats {
    /// Buffers in the pool.
    pub total_count: usize,
    /// Buffers `acquire` can hand out: the free list, and the quarantined buffers (which it takes
    /// only when the free list is empty).
    pub available_count: usize,
    /// Buffers held by callers (including those in flight; not the lent ones).
    pub acquired_count: usize,
    /// Buffers lent to tasks by the executor's shard (a pooled read's `PoolBuf`), refused to
    /// everyone else until the task drops it.
    pub lent_count: usize,
    /// Buffers with at least one operation in flight, as the callers' calls say
    /// ([`RegisteredBufferPool::in_flight_count`]).
    pub in_flight_count: usize,
    /// Buffers with an SQE the pool pushed and whose CQE it has not matched
    /// ([`RegisteredBufferPool::kernel_owned_count`]).
    pub kernel_owned_count: usize,
    /// Of `available_count`, buffers released after `complete_in_flight` while kernel-owned by
    /// the pool's record: out of the free list until their CQE is given to the pool, handed out
    /// before that only when no free buffer is left.
    pub quarantined_count: usize,
    /// Usable bytes per buffer.
    pub buffer_size: usize,
    /// `total_count * buffer_size`.
    pub total_bytes: usize,
    /// Successful acquisitions since creation.
    pub acquisitions: u64,
    /// Acquisitions that found the pool empty.
    pub exhaustions: u64,
    /// `release` calls refused because the buffer was in flight.
    pub misuse_release_in_flight: u64,
    /// Operations the pool pushed whose CQE it never saw: `complete_in_flight` said they were
    /// complete, and the pool took that word when their buffer was used again (submitted again, or
    /// handed out again from quarantine). Not misuse (the seed API's flow does it), but while it is
    /// not 0 dropping the pool leaks its slab: give CQEs to `complete_cqe` to avoid that.
    pub unmatched_completions: u64,
    /// `release`/`mark_in_flight`/`complete_in_flight` calls with an index outside the pool.
    pub misuse_invalid_index: u64,
    /// Other calls refused for the buffer's state (double release, completing what is not in flight).
    pub misuse_bad_state: u64,
    /// The NUMA node the slab is bound to, if one was asked for.
    pub numa_node: Option<u32>,
}

impl BufferPoolStats {
    /// All misuse events counted.
    pub fn misuse_total(&self) -> u64 {
        self.misuse_release_in_flight + self.misuse_invalid_index + self.misuse_bad_state
    }
}

impl fmt::Display for BufferPoolStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "BufferPool({} available/{} total, {} in flight, {} KiB each, {} KiB total, {} acquisitions, {} exhaustions, {} misuse",
            self.available_count,
            self.total_count,
            self.in_flight_count,
            self.buffer_size / 1024,
            self.total_bytes / 1024,
            self.acquisitions,
            self.exhaustions,
            self.misuse_total()
        )?;
        if self.lent_count > 0 {
            write!(f, ", {} lent", self.lent_count)?;
        }
        if self.quarantined_count > 0 {
            write!(f, ", {} quarantined", self.quarantined_count)?;
        }
        if self.unmatched_completions > 0 {
            write!(f, ", {} unmatched completions", self.unmatched_completions)?;
        }
        if let Some(n) = self.numa_node {
            write!(f, ", node {n}")?;
        }
        write!(f, ")")
    }
}

/// A pool of equal-size buffers registered with one io_uring ring.
///
/// ```
/// use io_uring::IoUring;
/// use ringshard::RegisteredBufferPool;
/// use std::os::fd::AsRawFd;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut ring = IoUring::new(32)?;
/// let mut pool = RegisteredBufferPool::new(&mut ring, 64 * 1024, 16)?;
/// let file = tempfile::tempfile()?;
/// let fd = file.as_raw_fd();
///
/// // Write "hello" through a registered buffer.
/// let (idx, buf) = pool.acquire()?;
/// buf[..5].copy_from_slice(b"hello");
/// let user_data = pool.submit_write_fixed(&mut ring, fd, idx, 0, 5)?;
/// ring.submit_and_wait(1)?;
/// let cqe = ring.completion().next().expect("one completion");
/// assert_eq!(cqe.user_data(), user_data);
/// assert_eq!(RegisteredBufferPool::buffer_index_of(cqe.user_data()), Some(idx));
/// // Hand the CQE to the pool: that completes the operation and ends the kernel's ownership.
/// assert_eq!(pool.complete_cqe(&cqe), Some((idx, 5)));
/// pool.release(idx);
///
/// // Read it back into a cleared buffer.
/// let (idx, buf) = pool.acquire()?;
/// buf.fill(0);
/// pool.submit_read_fixed(&mut ring, fd, idx, 0, 5)?;
/// ring.submit_and_wait(1)?;
/// let cqe = ring.completion().next().expect("one completion");
/// let (done, res) = pool.complete_cqe(&cqe).expect("a pool operation");
/// assert_eq!((done, res), (idx, 5));
/// assert_eq!(&pool.get(idx)?[..5], b"hello");
/// pool.release(idx);
/// # Ok(()) }
/// ```
///
/// # Two ways to finish an operation
///
/// - **Give its CQE to the pool** ([`complete_cqe`](Self::complete_cqe), or
///   [`complete_user_data`](Self::complete_user_data)), as above: the better way. The pool matches
///   the exact `user_data`, so the buffer is known to be the caller's again, a stale or repeated
///   CQE changes nothing, and the pool keeps an exact record of what the kernel may still touch.
/// - **The seed API's flow**: reap the CQE yourself and call
///   [`complete_in_flight(idx)`](Self::complete_in_flight) ("CQE received"); then
///   [`get`](Self::get), [`get_mut`](Self::get_mut) and [`release`](Self::release) the buffer. You
///   may also call [`mark_in_flight(idx)`](Self::mark_in_flight) after a `submit_*`, as that API
///   says: it names the operation the pool recorded, not a second one.
///
/// ```
/// # use io_uring::IoUring;
/// # use ringshard::RegisteredBufferPool;
/// # use std::os::fd::AsRawFd;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let mut ring = IoUring::new(32)?;
/// # let mut pool = RegisteredBufferPool::new(&mut ring, 4096, 4)?;
/// # let file = tempfile::tempfile()?;
/// let (idx, buf) = pool.acquire()?;
/// buf[..5].copy_from_slice(b"hello");
/// pool.submit_write_fixed(&mut ring, file.as_raw_fd(), idx, 0, 5)?;
/// ring.submit_and_wait(1)?;
/// let cqe = ring.completion().next().expect("one completion");
/// assert_eq!(cqe.result(), 5);
/// pool.complete_in_flight(idx); // the CQE arrived
/// assert_eq!(&pool.get(idx)?[..5], b"hello");
/// pool.release(idx);
/// # Ok(()) }
/// ```
///
/// # What the caller promises, and what the pool guarantees anyway
///
/// [`mark_in_flight`](Self::mark_in_flight) and [`complete_in_flight`](Self::complete_in_flight)
/// are safe functions, so the pool cannot rely on them being called truthfully. The promise they
/// ask for: `mark_in_flight(i)` for an operation on buffer `i` that is in the kernel (one you
/// pushed yourself, or just after a `submit_*`), and `complete_in_flight(i)` once per operation,
/// **only after its CQE has been reaped**.
///
/// The pool believes `complete_in_flight` **for the caller's own buffer**: once every operation on
/// it is declared complete, `get`, `get_mut` and `release` work. It keeps its own record of the
/// SQEs it pushed (set at the push, cleared when the CQE with that `user_data` is given to it), and
/// that record, not the caller's word, decides what happens to the memory:
///
/// - a buffer released while the record holds SQEs is **quarantined**: out of the free list until
///   their CQEs are given to the pool. [`acquire`](Self::acquire) hands a quarantined buffer out
///   again only when no other buffer is free, and then takes the caller's word (the oldest first;
///   counted in [`BufferPoolStats::unmatched_completions`]), so a caller who never gives CQEs to
///   the pool never runs it dry;
/// - submitting again on a buffer whose every operation was declared complete takes the word the
///   same way (the old records are dropped, counted alike), so the record never grows without
///   bound;
/// - **dropping the pool leaks the slab** while the record holds anything or any record was taken
///   on the caller's word: the memory is never unmapped while the kernel may still write into it.
///
/// So a false `complete_in_flight` can at worst let its caller see the kernel's bytes change in
/// its own buffer (or, once the pool has nothing else to give, in a buffer it handed out again on
/// that word); it can never make the kernel write into freed memory. Give the CQEs to the pool
/// (`complete_cqe`) for exact tracking and a slab that is unmapped on drop.
///
/// For operations you submitted yourself the pool has only your word: a false
/// `complete_in_flight` there lets the kernel write into a buffer the pool may hand out again.
/// Pushing such an SQE already took `unsafe` code, whose contract (everything the entry points to
/// stays valid until its completion is reaped) is where that obligation lives.
///
/// # Lifetime and drop
///
/// The registration belongs to the ring: it ends when the ring is dropped. Dropping the pool while
/// no operation is in flight unmaps the slab (the kernel keeps the registered pages pinned, not
/// mapped, until the ring goes, so nothing can write into memory that is reused). Dropping the pool
/// while operations are in flight (by the callers' calls, or by the pool's own record of SQEs
/// whose CQE it has not matched, or after it took a caller's word for one) **leaks the slab** on
/// purpose: the mapping stays until the process exits, so a late completion writes into memory
/// nobody else owns. Give every completion to the pool before dropping it to avoid the leak.
#[derive(Debug)]
pub struct RegisteredBufferPool {
    slab: Option<Slab>,
    ring_fd: RawFd,
    /// Whether the buffers are registered with the ring (READ_FIXED/WRITE_FIXED); if not, the
    /// same buffers go out with plain READ/WRITE (a low RLIMIT_MEMLOCK, the threads backend).
    registered: bool,
    buffer_size: usize,
    stride: usize,
    total_count: usize,
    slots: Vec<Slot>,
    /// For each buffer, the `user_data` of its operations pushed by the pool whose CQE has not been
    /// matched: a completion whose `user_data` is not here is stale and changes nothing.
    pending: Vec<Pending>,
    free: Vec<u16>,
    /// Quarantined buffers, oldest first: what `acquire` takes when the free list is empty.
    quarantine: std::collections::VecDeque<u16>,
    acquired_count: usize,
    lent_count: usize,
    in_flight_count: usize,
    kernel_owned_count: usize,
    quarantined_count: usize,
    /// Sum of `Slot::kernel`: the records kept, bounded by [`MAX_RECORDS`].
    records: usize,
    /// Pushes so far (the next operation's sequence number).
    next_seq: u64,
    /// Records dropped on the caller's word (`forget_retired`). Never lowered: the slab is not
    /// unmapped once it is not 0.
    unmatched_completions: u64,
    acquisitions: u64,
    exhaustions: u64,
    misuse_release_in_flight: u64,
    misuse_invalid_index: u64,
    misuse_bad_state: u64,
}

impl RegisteredBufferPool {
    /// Allocates `buffer_count` buffers of `buffer_size` bytes in one page-aligned slab and
    /// registers them with `ring`.
    ///
    /// Errors: `InvalidConfig` for a size or count of 0, a count over 16,384 or a size over 1 GiB;
    /// `Registration` when the kernel refuses (ENOMEM: RLIMIT_MEMLOCK, with the fix in the message;
    /// EBUSY: the ring already has buffers).
    pub fn new(ring: &mut IoUring, buffer_size: usize, buffer_count: usize) -> Result<Self> {
        Self::build(ring, buffer_size, buffer_count, None)
    }

    /// Like [`new`](Self::new), with the slab bound to NUMA node `node` and every page touched
    /// before registration, so the buffers live on that node. Call it from a thread running on that
    /// node for the best placement of everything else.
    pub fn new_on_node(
        ring: &mut IoUring,
        buffer_size: usize,
        buffer_count: usize,
        node: u32,
    ) -> Result<Self> {
        Self::build(ring, buffer_size, buffer_count, Some(node))
    }

    fn build(
        ring: &mut IoUring,
        buffer_size: usize,
        buffer_count: usize,
        node: Option<u32>,
    ) -> Result<Self> {
        let mut pool = Self::unregistered(buffer_size, buffer_count, node, ring.as_raw_fd())?;
        pool.register(ring)?;
        Ok(pool)
    }

    /// The slab and the books, with nothing registered: buffers go out with plain READ/WRITE.
    fn unregistered(
        buffer_size: usize,
        buffer_count: usize,
        node: Option<u32>,
        ring_fd: RawFd,
    ) -> Result<Self> {
        let (stride, slab_len) = Self::layout(buffer_size, buffer_count)?;
        let slab = match node {
            Some(n) => Slab::new_on_node(slab_len, n)?,
            None => Slab::new(slab_len)?,
        };
        Ok(RegisteredBufferPool {
            slab: Some(slab),
            ring_fd,
            registered: false,
            buffer_size,
            stride,
            total_count: buffer_count,
            slots: vec![Slot::FREE; buffer_count],
            pending: vec![Pending::default(); buffer_count],
            // Reversed so that acquire (pop) hands out 0, 1, 2, ... first.
            free: (0..buffer_count as u16).rev().collect(),
            quarantine: std::collections::VecDeque::new(),
            acquired_count: 0,
            lent_count: 0,
            in_flight_count: 0,
            kernel_owned_count: 0,
            quarantined_count: 0,
            records: 0,
            next_seq: 0,
            unmatched_completions: 0,
            acquisitions: 0,
            exhaustions: 0,
            misuse_release_in_flight: 0,
            misuse_invalid_index: 0,
            misuse_bad_state: 0,
        })
    }

    /// Registers every buffer with `ring` (before any is used).
    fn register(&mut self, ring: &mut IoUring) -> Result<()> {
        let Some(slab) = self.slab.as_ref() else {
            return Err(Error::invalid("register", "the pool has no slab"));
        };
        let (stride, size) = (self.stride, self.buffer_size);
        let iovecs: Vec<libc::iovec> = (0..self.total_count)
            .map(|i| libc::iovec {
                // SAFETY (pointer arithmetic): i * stride + buffer_size <= slab_len (layout).
                iov_base: unsafe { slab.as_ptr().add(i * stride) }.cast(),
                iov_len: size,
            })
            .collect();
        // SAFETY: every iovec points into `slab`, which the pool owns and keeps mapped for as long
        // as any operation may use it (see Drop); the registration pins the pages.
        let reg = unsafe { ring.submitter().register_buffers(&iovecs) };
        if let Err(e) = reg {
            return Err(Error::Registration {
                what: "buffers",
                bytes: stride.saturating_mul(self.total_count),
                errno: e.raw_os_error().unwrap_or(libc::EIO),
                memlock_limit: memlock_limit(),
            });
        }
        self.registered = true;
        Ok(())
    }

    /// A shard's pool on `driver`: registered when it can be; under a low RLIMIT_MEMLOCK, as many
    /// registered buffers as fit (at least [`MIN_REGISTERED`]); below that, or on the threads
    /// backend, unregistered buffers (plain READ/WRITE into the same aligned memory). Says which.
    pub(crate) fn for_shard(
        driver: &mut crate::driver::Driver,
        buffer_size: usize,
        buffer_count: usize,
        node: Option<u32>,
    ) -> Result<(Self, PoolFit)> {
        let ring = match driver {
            crate::driver::Driver::Uring(ring) => ring,
            crate::driver::Driver::Threads(_) => {
                let pool = Self::unregistered(buffer_size, buffer_count, node, -1)?;
                return Ok((pool, PoolFit::Unregistered { bytes: 0 }));
            }
        };
        let (stride, _) = Self::layout(buffer_size, buffer_count)?;
        let mut count = buffer_count;
        let mut first_error = None;
        loop {
            match Self::build(ring, buffer_size, count, node) {
                Ok(pool) if count == buffer_count => return Ok((pool, PoolFit::Registered)),
                Ok(pool) => {
                    return Ok((
                        pool,
                        PoolFit::Fitted {
                            asked: buffer_count,
                            error: first_error,
                        },
                    ))
                }
                Err(
                    e @ Error::Registration {
                        errno: libc::ENOMEM,
                        ..
                    },
                ) => {
                    // Pinned memory is counted per user against RLIMIT_MEMLOCK: start from what
                    // the limit allows, then halve (other rings of the user may hold some).
                    let fit = memlock_limit().map_or(count / 2, |l| (l / stride as u64) as usize);
                    count = fit.min(count / 2);
                    first_error.get_or_insert(e);
                    if count < MIN_REGISTERED {
                        let bytes = stride.saturating_mul(buffer_count);
                        let pool =
                            Self::unregistered(buffer_size, buffer_count, node, ring.as_raw_fd())?;
                        return Ok((pool, PoolFit::Unregistered { bytes }));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the buffers are registered with the ring.
    pub fn is_registered(&self) -> bool {
        self.registered
    }

    /// Validates the configuration and returns (stride, slab length).
    fn layout(buffer_size: usize, buffer_count: usize) -> Result<(usize, usize)> {
        if buffer_size == 0 {
            return Err(Error::InvalidConfig(
                "buffer_size is 0: buffers must hold at least one byte".into(),
            ));
        }
        if buffer_size > MAX_BUFFER_SIZE {
            return Err(Error::InvalidConfig(format!(
                "buffer_size {buffer_size} exceeds the kernel's 1 GiB per registered buffer"
            )));
        }
        if buffer_count == 0 || buffer_count > MAX_BUFFERS {
            return Err(Error::InvalidConfig(format!(
                "buffer_count {buffer_count} is out of range: the kernel accepts 1 to {MAX_BUFFERS} \
                 registered buffers per ring"
            )));
        }
        let page = page_size();
        let stride = buffer_size.div_ceil(page) * page;
        let slab_len = stride.checked_mul(buffer_count).ok_or_else(|| {
            Error::InvalidConfig(format!(
                "{buffer_count} buffers of {buffer_size} bytes overflow the address space"
            ))
        })?;
        Ok((stride, slab_len))
    }

    fn slab_ptr(&self) -> *mut u8 {
        self.slab
            .as_ref()
            .map_or(std::ptr::null_mut(), |s| s.as_ptr())
    }

    /// Pointer to the start of buffer `idx` (which must be valid).
    fn buf_ptr(&self, idx: u16) -> *mut u8 {
        // SAFETY (pointer arithmetic): callers check idx < total_count, so the offset is inside the
        // slab.
        unsafe { self.slab_ptr().add(idx as usize * self.stride) }
    }

    fn buf_mut(&mut self, idx: u16) -> &mut [u8] {
        // SAFETY: idx is valid (checked by callers); the range [ptr, ptr+buffer_size) lies inside
        // the slab, which stays mapped while `self` lives (invariant 1 of the module docs), and
        // does not overlap any other buffer; `&mut self` guarantees no other reference to it
        // exists in this process (a lent buffer, which a `PoolBuf` reads through a raw pointer, is
        // never passed here: `check_idle` and `check_acquired` refuse it, and `acquire` takes
        // only free or quarantined buffers). Callers hand it out only when the caller's record
        // says nothing is in flight. For the pool's own operations that is exact unless a caller
        // declared one complete before its CQE; then the kernel may still write into this buffer
        // while the slice lives, as it may for an SQE a caller pushed itself and lied about: the
        // pool cannot stop a lie, only keep it inside the slab, which stays mapped (invariant 1),
        // so the bytes of that buffer may change under its holder (the liar, or, if `acquire`
        // had no free buffer left, the pool's next holder), and no other memory is touched. The
        // executor never takes such a word for its own buffers (module docs).
        unsafe { std::slice::from_raw_parts_mut(self.buf_ptr(idx), self.buffer_size) }
    }

    /// Buffer `idx` (valid) for reading: by its caller (`get`, same conditions as
    /// [`buf_mut`](Self::buf_mut)), or by the shard as it lends it (`lend`: idle by both records).
    fn buf(&self, idx: u16) -> &[u8] {
        // SAFETY: valid index, inside the mapped slab, as in `buf_mut`; `&self` excludes writers in
        // this process (a lent buffer is written by nobody: `get_mut` and `submit_*` refuse it);
        // the kernel writes into it only if its caller declared an operation complete early.
        unsafe { std::slice::from_raw_parts(self.buf_ptr(idx), self.buffer_size) }
    }

    fn check_index(&self, idx: u16) -> Result<()> {
        if (idx as usize) < self.total_count {
            Ok(())
        } else {
            Err(Error::InvalidIndex {
                index: idx,
                total: self.total_count,
            })
        }
    }

    /// Applies `f` to buffer `idx`'s slot (valid) and keeps the per-state counts in step: every
    /// change of a slot but the two fast paths (`acquire` from the free list, `release` of an idle
    /// buffer) goes through here.
    fn update(&mut self, idx: u16, f: impl FnOnce(&mut Slot)) {
        let before = self.slots[idx as usize];
        f(&mut self.slots[idx as usize]);
        let after = self.slots[idx as usize];
        self.tally(before, false);
        self.tally(after, true);
        self.records = self.records + after.kernel as usize - before.kernel as usize;
    }

    /// Counts slot `s` in (`add`) or out of the per-state counts.
    fn tally(&mut self, s: Slot, add: bool) {
        let step = |n: &mut usize, counted: bool| match (counted, add) {
            (false, _) => {}
            (true, true) => *n += 1,
            (true, false) => *n -= 1,
        };
        step(&mut self.acquired_count, s.hold == Hold::Acquired);
        step(&mut self.lent_count, s.hold == Hold::Lent);
        step(&mut self.quarantined_count, s.hold == Hold::Quarantined);
        step(&mut self.in_flight_count, s.in_flight() > 0);
        step(&mut self.kernel_owned_count, s.kernel > 0);
    }

    /// Drops buffer `idx`'s records, all of them declared complete by `complete_in_flight`
    /// (`kernel == retired`), because the buffer is used again: the pool takes the caller's word
    /// for their CQEs. Counted in `unmatched_completions`, which keeps Drop from ever unmapping
    /// the slab (an SQE the caller lied about may still be in the kernel).
    fn forget_retired(&mut self, idx: u16) {
        let s = self.slots[idx as usize];
        debug_assert_eq!(s.kernel, s.retired, "buffer {idx}: {s:?}");
        self.pending[idx as usize] = Pending::default();
        self.unmatched_completions += u64::from(s.kernel);
        self.update(idx, |s| {
            s.kernel = 0;
            s.retired = 0;
        });
    }

    /// Takes a free buffer. Errors with `PoolExhausted` when none is free.
    ///
    /// When the free list is empty, takes the oldest quarantined buffer instead (released after
    /// [`complete_in_flight`](Self::complete_in_flight) said its operations were complete, whose
    /// CQEs the pool has not been given): the pool takes the caller's word for them (counted in
    /// [`BufferPoolStats::unmatched_completions`]). So the seed API's flow never runs the pool
    /// dry, and a buffer the pool's own record still holds is handed out only when there is no
    /// other. Never returns a buffer in flight by the callers' calls, or lent.
    pub fn acquire(&mut self) -> Result<(u16, &mut [u8])> {
        if let Some(idx) = self.free.pop() {
            let slot = &mut self.slots[idx as usize];
            // Only three places push onto the free list, and each checks both records first:
            // `try_release` (which quarantines a buffer the pool's record holds), `take_back` (a
            // lent buffer, idle when lent) and `complete_user_data` (which frees a quarantined
            // buffer when its last record is matched).
            debug_assert!(
                *slot == Slot::FREE,
                "free list holds buffer {idx} in state {slot:?}"
            );
            slot.hold = Hold::Acquired;
            self.acquired_count += 1;
            self.acquisitions += 1;
            return Ok((idx, self.buf_mut(idx)));
        }
        if let Some(idx) = self.quarantine.pop_front() {
            // Quarantined buffers have nothing in flight by the caller's record (release checked):
            // every record left was declared complete.
            self.forget_retired(idx);
            self.update(idx, |s| s.hold = Hold::Acquired);
            self.acquisitions += 1;
            return Ok((idx, self.buf_mut(idx)));
        }
        self.exhaustions += 1;
        Err(Error::PoolExhausted {
            total: self.total_count,
        })
    }

    /// [`acquire`](Self::acquire), or `None` when it has no buffer to hand out.
    pub fn try_acquire(&mut self) -> Option<(u16, &mut [u8])> {
        self.acquire().ok()
    }

    /// Returns buffer `buf_index` to the free list.
    ///
    /// A buffer with I/O in flight is **never** returned: the kernel may still write into it. In
    /// debug builds that misuse panics; in release builds the call is refused and counted in
    /// [`stats`](Self::stats) (`misuse_release_in_flight`). An invalid index, a buffer that is
    /// already free, and a lent buffer are likewise a debug panic, and a counted no-op in release
    /// builds.
    ///
    /// "In flight" is what the caller's calls say: after
    /// [`complete_in_flight`](Self::complete_in_flight) for each operation (the seed API's flow),
    /// the buffer is released. If the pool's own record still holds an SQE it pushed for it (its
    /// CQE was not given to [`complete_cqe`](Self::complete_cqe)), the buffer is **quarantined**
    /// rather than freed: no longer the caller's, and handed out again when that CQE is given to
    /// the pool, or when no other buffer is free (see [`acquire`](Self::acquire)).
    pub fn release(&mut self, buf_index: u16) {
        if let Err(e) = self.try_release(buf_index) {
            debug_assert!(false, "RegisteredBufferPool::release: {e}");
        }
    }

    /// [`release`](Self::release) that reports misuse as an error instead of a debug panic.
    /// Quarantining a buffer is `Ok`: the buffer is no longer the caller's.
    pub fn try_release(&mut self, buf_index: u16) -> Result<()> {
        if let Some(slot) = self.slots.get_mut(buf_index as usize) {
            // The common case in one comparison: acquired, idle by both records.
            if *slot == Slot::ACQUIRED_IDLE {
                slot.hold = Hold::Free;
                self.acquired_count -= 1;
                self.free.push(buf_index);
                return Ok(());
            }
        }
        self.release_other(buf_index)
    }

    /// [`try_release`](Self::try_release) of anything but an acquired, idle buffer.
    #[cold]
    fn release_other(&mut self, buf_index: u16) -> Result<()> {
        if let Err(e) = self.check_index(buf_index) {
            self.misuse_invalid_index += 1;
            return Err(e);
        }
        let slot = self.slots[buf_index as usize];
        let refused = |state| Error::BufferState {
            index: buf_index,
            op: "release",
            state,
        };
        match slot.hold {
            Hold::Acquired if slot.in_flight() > 0 => {
                self.misuse_release_in_flight += 1;
                Err(refused("in flight"))
            }
            Hold::Acquired => {
                // Idle by the caller's word, but the pool's own record holds SQEs whose CQE it has
                // not been given (else the fast path took it): not the free list (invariant 2).
                debug_assert!(slot.kernel > 0, "buffer {buf_index}: {slot:?}");
                self.update(buf_index, |s| s.hold = Hold::Quarantined);
                self.quarantine.push_back(buf_index);
                Ok(())
            }
            Hold::Free => {
                self.misuse_bad_state += 1;
                Err(refused("already free"))
            }
            Hold::Lent => {
                self.misuse_bad_state += 1;
                Err(refused(LENT))
            }
            Hold::Quarantined => {
                self.misuse_bad_state += 1;
                Err(refused(QUARANTINED))
            }
        }
    }

    /// The error for a call `op` on buffer `idx` (valid) that is not held by a caller.
    fn not_held(&self, idx: u16, op: &'static str) -> Error {
        Error::BufferState {
            index: idx,
            op,
            state: match self.slots[idx as usize].hold {
                Hold::Free => "free (never acquired: acquire it first)",
                Hold::Lent => LENT,
                Hold::Quarantined => QUARANTINED,
                Hold::Acquired => "acquired",
            },
        }
    }

    /// Records that an operation using `buf_index` is in the kernel: one **you** handed to the
    /// kernel by other means than the pool (an SQE you built and pushed yourself), or, as the seed
    /// API says ("call this after submitting"), one just pushed by `submit_*`. The pool already
    /// recorded each of its own operations, so a mark after a `submit_*` names that operation
    /// (while the buffer has a pool operation no mark has named yet) rather than adding one.
    /// Several operations may use one buffer at once (e.g. the same data written to two files);
    /// each needs its own [`complete_in_flight`](Self::complete_in_flight).
    ///
    /// While marked, [`release`](Self::release), [`get`](Self::get) and [`get_mut`](Self::get_mut)
    /// refuse the buffer. The pool cannot see an operation of yours end; it believes
    /// `complete_in_flight`: see
    /// [the caller's promise](Self#what-the-caller-promises-and-what-the-pool-guarantees-anyway).
    ///
    /// Misuse (invalid index, a buffer not acquired) is a debug panic and a counted no-op in
    /// release builds.
    pub fn mark_in_flight(&mut self, buf_index: u16) {
        let r = self
            .check_index(buf_index)
            .inspect_err(|_| self.misuse_invalid_index += 1);
        let r = r.and_then(|()| {
            let slot = self.slots[buf_index as usize];
            if slot.hold == Hold::Acquired && slot.own < u32::MAX {
                self.update(buf_index, |s| {
                    if s.kernel - s.retired > s.claimed {
                        s.claimed += 1;
                    } else {
                        s.own += 1;
                    }
                });
                Ok(())
            } else {
                self.misuse_bad_state += 1;
                Err(if slot.hold == Hold::Acquired {
                    Error::BufferState {
                        index: buf_index,
                        op: "mark in flight",
                        state: "marked in flight 2^32 - 1 times already",
                    }
                } else {
                    self.not_held(buf_index, "mark in flight")
                })
            }
        });
        if let Err(e) = r {
            debug_assert!(false, "RegisteredBufferPool::mark_in_flight: {e}");
        }
    }

    /// Records that one operation using `buf_index` has completed: its CQE has been received. The
    /// buffer stays acquired; [`get`](Self::get) / [`get_mut`](Self::get_mut) it, and
    /// [`release`](Self::release) it when done with the data.
    ///
    /// **The promise:** call it only after the CQE of that operation has been reaped, once per
    /// operation. Your own marked operations are completed first, then the pool's (`submit_*`).
    /// For the pool's operations, giving the CQE to [`complete_cqe`](Self::complete_cqe) instead
    /// is better: the pool then matches the exact operation.
    ///
    /// The pool believes it for your own buffer: once every operation on the buffer is declared
    /// complete, `get`, `get_mut` and `release` work. What the pool does with the memory still
    /// follows its own record of the SQEs it pushed: see
    /// [the caller's promise](Self#what-the-caller-promises-and-what-the-pool-guarantees-anyway).
    /// Calling it early (before the CQE) lets you see the kernel's bytes change in your own
    /// buffer; it never lets the kernel write into freed memory.
    ///
    /// Misuse (invalid index, nothing in flight, a buffer not acquired) is a debug panic and a
    /// counted no-op in release builds.
    pub fn complete_in_flight(&mut self, buf_index: u16) {
        let r = self
            .check_index(buf_index)
            .inspect_err(|_| self.misuse_invalid_index += 1);
        let r = r.and_then(|()| {
            let slot = self.slots[buf_index as usize];
            if slot.hold == Hold::Acquired && slot.in_flight() > 0 {
                self.update(buf_index, |s| {
                    if s.own > 0 {
                        s.own -= 1;
                    } else {
                        // One of the pool's operations still open: a claimed one first (the mark
                        // and this call are about the same operation).
                        s.retired += 1;
                        s.claimed = s.claimed.saturating_sub(1);
                    }
                });
                Ok(())
            } else {
                self.misuse_bad_state += 1;
                Err(if slot.hold == Hold::Acquired {
                    Error::BufferState {
                        index: buf_index,
                        op: "complete",
                        state: "not in flight",
                    }
                } else {
                    self.not_held(buf_index, "complete")
                })
            }
        });
        if let Err(e) = r {
            debug_assert!(false, "RegisteredBufferPool::complete_in_flight: {e}");
        }
    }

    /// Decodes a CQE made by `submit_*`, marks its operation complete, and returns the buffer index
    /// and the CQE result (bytes transferred, or a negative errno). `None` for a CQE whose
    /// `user_data` the pool did not make.
    ///
    /// A completion that does not belong to an operation the pool pushed and has not matched yet
    /// (a stale or repeated CQE) returns `None` and changes nothing, so it can never free a buffer
    /// that a newer operation is using. So does the CQE of an operation the pool already took the
    /// caller's word for (declared complete by
    /// [`complete_in_flight`](Self::complete_in_flight), and its buffer used again since).
    pub fn complete_cqe(&mut self, cqe: &cqueue::Entry) -> Option<(u16, i32)> {
        let idx = self.complete_user_data(cqe.user_data())?;
        Some((idx, cqe.result()))
    }

    /// [`complete_cqe`](Self::complete_cqe) for a CQE already taken apart: marks the operation
    /// with this `user_data` complete and returns its buffer, or `None` when the pool has no such
    /// operation whose completion it has not matched.
    ///
    /// If [`complete_in_flight`](Self::complete_in_flight) already declared the operation
    /// complete, this only ends the pool's own record of it (and frees the buffer if it was
    /// released in the meantime).
    pub fn complete_user_data(&mut self, user_data: u64) -> Option<u16> {
        let idx = Self::buffer_index_of(user_data)?;
        if !self.pending.get_mut(idx as usize)?.remove(user_data) {
            return None;
        }
        self.update(idx, |s| {
            // Which of the buffer's operations this is, the pool cannot tell: take one the caller
            // has not declared complete (and not claimed) first, so a CQE given to the pool ends
            // an operation in flight.
            let open = s.kernel - s.retired;
            if open > s.claimed {
            } else if open > 0 {
                s.claimed -= 1;
            } else {
                s.retired -= 1;
            }
            s.kernel -= 1;
        });
        let slot = self.slots[idx as usize];
        if slot.kernel == 0 && slot.hold == Hold::Quarantined {
            self.update(idx, |s| s.hold = Hold::Free);
            self.quarantine.retain(|&j| j != idx);
            self.free.push(idx);
        }
        Some(idx)
    }

    /// Whether `buf_index` has an operation in flight as the callers' calls say (false for invalid
    /// indexes). See also [`is_kernel_owned`](Self::is_kernel_owned).
    pub fn is_in_flight(&self, buf_index: u16) -> bool {
        self.slots
            .get(buf_index as usize)
            .is_some_and(|s| s.in_flight() > 0)
    }

    /// Whether the pool's own record holds an SQE it pushed for `buf_index` whose CQE it has not
    /// matched (false for invalid indexes). It stays true after
    /// [`complete_in_flight`](Self::complete_in_flight) declared the operation complete, until
    /// the CQE is given to the pool or the buffer is used again.
    pub fn is_kernel_owned(&self, buf_index: u16) -> bool {
        self.slots
            .get(buf_index as usize)
            .is_some_and(|s| s.kernel > 0)
    }

    /// Checks that buffer `buf_index` may be read or written by its caller now: a valid index,
    /// not lent or released, nothing in flight by the caller's calls.
    fn check_idle(&self, buf_index: u16, op: &'static str) -> Result<()> {
        self.check_index(buf_index)?;
        let slot = self.slots[buf_index as usize];
        if matches!(slot.hold, Hold::Lent | Hold::Quarantined) {
            return Err(self.not_held(buf_index, op));
        }
        if slot.in_flight() > 0 {
            return Err(Error::BufferState {
                index: buf_index,
                op,
                state: "in flight",
            });
        }
        Ok(())
    }

    /// The contents of buffer `buf_index` (all `buffer_size` bytes). Errors for an invalid index,
    /// a buffer in flight (the kernel may be writing into it), a lent one, or one released into
    /// quarantine.
    ///
    /// A buffer whose operations were all declared complete with
    /// [`complete_in_flight`](Self::complete_in_flight) is readable, even if the pool has not been
    /// given their CQEs: the pool believes the caller for its own buffer.
    pub fn get(&self, buf_index: u16) -> Result<&[u8]> {
        self.check_idle(buf_index, "read")?;
        Ok(self.buf(buf_index))
    }

    /// Mutable contents of buffer `buf_index`. Errors as [`get`](Self::get).
    pub fn get_mut(&mut self, buf_index: u16) -> Result<&mut [u8]> {
        self.check_idle(buf_index, "write")?;
        Ok(self.buf_mut(buf_index))
    }

    /// Lends acquired buffer `idx`, idle by both records, to a task (the executor's pooled
    /// reads): from now on every public call refuses it and `acquire` never hands it out, until
    /// [`take_back`](Self::take_back). Returns its contents, which the task reads through a raw
    /// pointer while it is lent.
    pub(crate) fn lend(&mut self, idx: u16) -> Result<&[u8]> {
        self.check_index(idx)?;
        if self.slots[idx as usize] != Slot::ACQUIRED_IDLE {
            return Err(Error::BufferState {
                index: idx,
                op: "lend",
                state: "not acquired and idle",
            });
        }
        self.update(idx, |s| s.hold = Hold::Lent);
        Ok(self.buf(idx))
    }

    /// Takes back a buffer [`lend`](Self::lend) lent (its borrower is done) into the free list.
    pub(crate) fn take_back(&mut self, idx: u16) -> Result<()> {
        self.check_index(idx)?;
        if self.slots[idx as usize].hold != Hold::Lent {
            return Err(Error::BufferState {
                index: idx,
                op: "take back",
                state: "not lent",
            });
        }
        self.update(idx, |s| s.hold = Hold::Free);
        self.free.push(idx);
        Ok(())
    }

    fn check_acquired(&self, buf_index: u16) -> Result<()> {
        self.check_index(buf_index)?;
        match self.slots[buf_index as usize].hold {
            Hold::Acquired => Ok(()),
            _ => Err(self.not_held(buf_index, "submit")),
        }
    }

    /// Checks a fixed-buffer operation and builds its SQE (without `user_data`, not yet in flight).
    pub(crate) fn prepare(
        &self,
        dir: Direction,
        target: impl Into<Target>,
        buf_index: u16,
        offset: u64,
        len: u32,
    ) -> Result<squeue::Entry> {
        self.prepare_at(dir, target.into(), buf_index, 0, offset, len, 0)
    }

    /// [`prepare`](Self::prepare) for bytes `buf_offset..buf_offset + len` of the buffer (the rest
    /// of a short transfer), with `RWF_*` flags `rw_flags`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn prepare_at(
        &self,
        dir: Direction,
        target: Target,
        buf_index: u16,
        buf_offset: usize,
        offset: u64,
        len: u32,
        rw_flags: i32,
    ) -> Result<squeue::Entry> {
        self.check_acquired(buf_index)?;
        if buf_offset.saturating_add(len as usize) > self.buffer_size {
            return Err(Error::BufferTooSmall {
                requested: buf_offset.saturating_add(len as usize),
                buffer_size: self.buffer_size,
            });
        }
        if offset > i64::MAX as u64 {
            return Err(Error::invalid(
                "submit",
                format!("offset {offset} exceeds the largest file offset"),
            ));
        }
        // SAFETY (pointer arithmetic): buf_offset + len <= buffer_size, checked above.
        let ptr = unsafe { self.buf_ptr(buf_index).add(buf_offset) };
        let fixed = self.registered;
        Ok(match (dir, target, fixed) {
            (Direction::Read, Target::Fd(fd), true) => {
                opcode::ReadFixed::new(types::Fd(fd), ptr, len, buf_index)
                    .offset(offset)
                    .rw_flags(rw_flags)
                    .build()
            }
            (Direction::Read, Target::Fixed(slot), true) => {
                opcode::ReadFixed::new(types::Fixed(slot), ptr, len, buf_index)
                    .offset(offset)
                    .rw_flags(rw_flags)
                    .build()
            }
            (Direction::Write, Target::Fd(fd), true) => {
                opcode::WriteFixed::new(types::Fd(fd), ptr, len, buf_index)
                    .offset(offset)
                    .rw_flags(rw_flags)
                    .build()
            }
            (Direction::Write, Target::Fixed(slot), true) => {
                opcode::WriteFixed::new(types::Fixed(slot), ptr, len, buf_index)
                    .offset(offset)
                    .rw_flags(rw_flags)
                    .build()
            }
            (Direction::Read, Target::Fd(fd), false) => opcode::Read::new(types::Fd(fd), ptr, len)
                .offset(offset)
                .rw_flags(rw_flags)
                .build(),
            (Direction::Read, Target::Fixed(slot), false) => {
                opcode::Read::new(types::Fixed(slot), ptr, len)
                    .offset(offset)
                    .rw_flags(rw_flags)
                    .build()
            }
            (Direction::Write, Target::Fd(fd), false) => {
                opcode::Write::new(types::Fd(fd), ptr, len)
                    .offset(offset)
                    .rw_flags(rw_flags)
                    .build()
            }
            (Direction::Write, Target::Fixed(slot), false) => {
                opcode::Write::new(types::Fixed(slot), ptr, len)
                    .offset(offset)
                    .rw_flags(rw_flags)
                    .build()
            }
        })
    }

    fn submit(
        &mut self,
        dir: Direction,
        ring: &mut IoUring,
        fd: RawFd,
        buf_index: u16,
        offset: u64,
        len: u32,
    ) -> Result<u64> {
        if ring.as_raw_fd() != self.ring_fd {
            return Err(Error::WrongRing);
        }
        if fd < 0 {
            return Err(Error::invalid("submit", format!("fd {fd} is negative")));
        }
        let entry = self.prepare(dir, Target::Fd(fd), buf_index, offset, len)?;
        self.push_prepared(ring, entry, buf_index)
    }

    /// Gives a prepared entry its `user_data`, pushes it and records its buffer in flight in both
    /// records: the one place where pool operations enter a ring, and the only place the pool's own
    /// record of kernel ownership is set. `ring` must be the pool's ring, and `entry` an entry
    /// [`prepare`](Self::prepare) built for `buf_index`.
    pub(crate) fn push_prepared(
        &mut self,
        ring: &mut impl SqPush,
        entry: squeue::Entry,
        buf_index: u16,
    ) -> Result<u64> {
        // The buffer may have been released since `prepare`: never push for a buffer nobody holds.
        self.check_acquired(buf_index)?;
        if self.records >= MAX_RECORDS {
            return Err(Error::invalid(
                "submit",
                format!(
                    "{MAX_RECORDS} operations of this pool have no completion given to it: give \
                     their CQEs to complete_cqe (or let the buffers' operations all complete)"
                ),
            ));
        }
        let slot = self.slots[buf_index as usize];
        let user_data =
            POOL_USER_DATA_TAG | ((self.next_seq & SEQ_MASK) << SEQ_SHIFT) | u64::from(buf_index);
        let entry = entry.user_data(user_data);
        // SAFETY: `entry` was built by `prepare` for `buf_index`, so it points into that buffer of
        // our slab. The buffer is acquired (checked above), so not lent. From the push below, the
        // pool's own record of it (`Slot::kernel` and `pending`, set right after the push, before
        // anything else can touch the pool) keeps the slab mapped: Drop leaks it while any record
        // is kept, or was ever dropped on the caller's word (`unmatched_completions`), so the
        // memory outlives the SQE whatever the caller says. It keeps the buffer out of the free
        // list until the CQE is matched, or until its caller declared the operation complete and
        // the pool has no other buffer to hand out. Callers pass the ring the pool is registered
        // with (or, unregistered, its shard's driver: the threads backend touches the buffer only
        // until it posts the CQE, like the kernel).
        if !unsafe { ring.push_sqe(&entry) } {
            return Err(Error::SubmissionQueueFull);
        }
        self.next_seq = self.next_seq.wrapping_add(1);
        if slot.kernel > 0 && slot.kernel == slot.retired {
            // The caller declared every earlier operation on this buffer complete and uses it
            // again: take its word, so the records of a caller who never gives CQEs to the pool
            // do not pile up.
            self.forget_retired(buf_index);
        }
        self.update(buf_index, |s| s.kernel += 1);
        self.pending[buf_index as usize].push(user_data);
        Ok(user_data)
    }

    /// Pushes a `READ_FIXED` SQE that reads `len` bytes at `offset` of `fd` into buffer
    /// `buf_index`, and marks the buffer in flight. Returns the operation's `user_data` (unique for
    /// the pool's life, decodable with [`buffer_index_of`](Self::buffer_index_of)). The SQE is
    /// pushed, not submitted: call `ring.submit()` or `ring.submit_and_wait(n)`. When its CQE
    /// arrives, give it to [`complete_cqe`](Self::complete_cqe) (best: until then the buffer stays
    /// kernel-owned by the pool's record), or call
    /// [`complete_in_flight`](Self::complete_in_flight) as the seed API documents.
    ///
    /// Errors: `SubmissionQueueFull` (nothing changed: submit and retry), `InvalidIndex`,
    /// `BufferState` (buffer not acquired), `BufferTooSmall`, `WrongRing`.
    pub fn submit_read_fixed(
        &mut self,
        ring: &mut IoUring,
        fd: RawFd,
        buf_index: u16,
        offset: u64,
        len: u32,
    ) -> Result<u64> {
        self.submit(Direction::Read, ring, fd, buf_index, offset, len)
    }

    /// Pushes a `WRITE_FIXED` SQE that writes the first `len` bytes of buffer `buf_index` at
    /// `offset` of `fd`; otherwise as [`submit_read_fixed`](Self::submit_read_fixed).
    pub fn submit_write_fixed(
        &mut self,
        ring: &mut IoUring,
        fd: RawFd,
        buf_index: u16,
        offset: u64,
        len: u32,
    ) -> Result<u64> {
        self.submit(Direction::Write, ring, fd, buf_index, offset, len)
    }

    /// The buffer index encoded in a `user_data` made by `submit_*`, or `None` when the value was
    /// not made by a pool.
    pub fn buffer_index_of(user_data: u64) -> Option<u16> {
        (user_data & POOL_USER_DATA_TAG != 0).then_some(user_data as u16)
    }

    /// Usable bytes per buffer.
    pub const fn buffer_size(&self) -> usize {
        self.buffer_size
    }

    /// Buffers in the pool.
    pub const fn total_count(&self) -> usize {
        self.total_count
    }

    /// Buffers [`acquire`](Self::acquire) can hand out: the free list, and the quarantined buffers
    /// (released after [`complete_in_flight`](Self::complete_in_flight), their CQEs not given to
    /// the pool), which it takes only when the free list is empty.
    pub fn available_count(&self) -> usize {
        self.free.len() + self.quarantine.len()
    }

    /// Buffers held by callers (acquired and not yet released), including those in flight.
    pub const fn acquired_count(&self) -> usize {
        self.acquired_count
    }

    /// Buffers lent to tasks by the executor's shard (pooled reads); see
    /// [`BufferPoolStats::lent_count`].
    pub const fn lent_count(&self) -> usize {
        self.lent_count
    }

    /// SQEs the pool has pushed so far (for the shard: how many a `submit_to` closure pushed).
    pub(crate) fn sqes_pushed(&self) -> u64 {
        self.next_seq
    }

    /// Buffers with at least one operation in flight, as the callers' calls say
    /// (`mark_in_flight`, `complete_in_flight`, and the pool's pushes and matched completions).
    pub fn in_flight_count(&self) -> usize {
        self.in_flight_count
    }

    /// Buffers for which the pool pushed an SQE whose CQE it has not matched: the buffers the
    /// kernel may still read or write, by the pool's own record. Only a push raises it;
    /// [`complete_cqe`](Self::complete_cqe) / [`complete_user_data`](Self::complete_user_data)
    /// lower it, and so does using a buffer again after
    /// [`complete_in_flight`](Self::complete_in_flight) declared all its operations complete (the
    /// pool then takes the caller's word). Waiting for it to reach 0 while giving every CQE to the
    /// pool is how a ring's owner knows none of the pool's operations is left.
    pub fn kernel_owned_count(&self) -> usize {
        self.kernel_owned_count
    }

    /// [`acquire`](Self::acquire) has no buffer to hand out.
    pub fn is_exhausted(&self) -> bool {
        self.free.is_empty() && self.quarantine.is_empty()
    }

    /// The NUMA node the slab was bound to, if one was asked for.
    pub fn numa_node(&self) -> Option<u32> {
        self.slab.as_ref().and_then(Slab::node)
    }

    /// A snapshot of the pool's counters.
    pub fn stats(&self) -> BufferPoolStats {
        BufferPoolStats {
            total_count: self.total_count,
            available_count: self.available_count(),
            acquired_count: self.acquired_count,
            lent_count: self.lent_count,
            in_flight_count: self.in_flight_count,
            kernel_owned_count: self.kernel_owned_count,
            quarantined_count: self.quarantined_count,
            buffer_size: self.buffer_size,
            total_bytes: self.total_count * self.buffer_size,
            acquisitions: self.acquisitions,
            exhaustions: self.exhaustions,
            unmatched_completions: self.unmatched_completions,
            misuse_release_in_flight: self.misuse_release_in_flight,
            misuse_invalid_index: self.misuse_invalid_index,
            misuse_bad_state: self.misuse_bad_state,
            numa_node: self.numa_node(),
        }
    }
}

/// The `user_data` of one buffer's operations pushed by the pool and not yet matched: almost always
/// one, so it lives inline.
#[derive(Debug, Clone, Default)]
struct Pending {
    first: Option<u64>,
    rest: Vec<u64>,
}

impl Pending {
    fn push(&mut self, user_data: u64) {
        match self.first {
            None => self.first = Some(user_data),
            Some(_) => self.rest.push(user_data),
        }
    }

    /// Forgets `user_data`; false when it is not pending.
    fn remove(&mut self, user_data: u64) -> bool {
        if self.first == Some(user_data) {
            self.first = self.rest.pop();
            return true;
        }
        match self.rest.iter().position(|&u| u == user_data) {
            Some(i) => {
                self.rest.swap_remove(i);
                true
            }
            None => false,
        }
    }
}

/// Where a fixed-buffer operation goes: a plain descriptor, or a slot in the ring's registered file
/// table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Fd(RawFd),
    Fixed(u32),
}

impl From<RawFd> for Target {
    fn from(fd: RawFd) -> Self {
        Target::Fd(fd)
    }
}

impl Drop for RegisteredBufferPool {
    fn drop(&mut self) {
        if let Some(slab) = self.slab.take() {
            if self.in_flight_count > 0
                || self.kernel_owned_count > 0
                || self.unmatched_completions > 0
            {
                // The kernel may still write into these buffers (by the callers' word, by the
                // pool's own record of SQEs whose CQE it has not matched, or because the pool took
                // a caller's word for a CQE it never saw): keep the memory mapped for the rest of
                // the process rather than let it be reused (invariant 1 of the module docs).
                slab.leak();
            }
            // Otherwise the slab unmaps here.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unregistered pool (low RLIMIT_MEMLOCK, threads backend) builds plain READ/WRITE, with
    /// the operation's RWF flags (RWF_DSYNC must not be lost on this path).
    #[test]
    fn unregistered_pools_build_plain_reads_and_writes_with_their_flags() {
        use crate::driver::sqe::Sqe;
        let mut pool = RegisteredBufferPool::unregistered(4096, 2, None, -1).unwrap();
        let (idx, _) = pool.acquire().unwrap();
        for (dir, code) in [
            (Direction::Read, opcode::Read::CODE),
            (Direction::Write, opcode::Write::CODE),
        ] {
            for target in [Target::Fd(5), Target::Fixed(3)] {
                let e = pool
                    .prepare_at(dir, target, idx, 0, 8192, 4096, libc::RWF_DSYNC)
                    .unwrap();
                let sqe = Sqe::of(&e);
                assert_eq!(sqe.opcode, code, "{dir:?} {target:?}");
                assert_eq!(sqe.op_flags, libc::RWF_DSYNC as u32, "{dir:?} {target:?}");
                assert_eq!((sqe.off, sqe.len), (8192, 4096));
            }
        }
    }

    fn ring() -> IoUring {
        IoUring::new(8).expect("io_uring must be available for these tests")
    }

    /// A one-buffer pool on a new ring, a temp file, and the buffer acquired with a 4-byte
    /// WRITE_FIXED at offset 0 of the file pushed (not submitted).
    fn one_write_pushed() -> (IoUring, RegisteredBufferPool, std::fs::File, u16) {
        let mut r = ring();
        let mut p = RegisteredBufferPool::new(&mut r, 16, 1).unwrap();
        let f = tempfile::tempfile().unwrap();
        let (i, _) = p.acquire().unwrap();
        p.submit_write_fixed(&mut r, f.as_raw_fd(), i, 0, 4)
            .unwrap();
        (r, p, f, i)
    }

    /// Submits what is pushed and returns the next completion.
    fn next_cqe(r: &mut IoUring) -> cqueue::Entry {
        r.submit_and_wait(1).unwrap();
        r.completion().next().expect("a completion")
    }

    #[test]
    fn config_errors() {
        let mut r = ring();
        let e = RegisteredBufferPool::new(&mut r, 0, 4).unwrap_err();
        assert!(matches!(e, Error::InvalidConfig(_)), "{e}");
        let e = RegisteredBufferPool::new(&mut r, 4096, 0).unwrap_err();
        assert!(e.to_string().contains("16384"), "{e}");
        let e = RegisteredBufferPool::new(&mut r, 4096, MAX_BUFFERS + 1).unwrap_err();
        assert!(matches!(e, Error::InvalidConfig(_)), "{e}");
        let e = RegisteredBufferPool::new(&mut r, MAX_BUFFER_SIZE + 1, 1).unwrap_err();
        assert!(matches!(e, Error::InvalidConfig(_)), "{e}");
        // After all these refusals the ring can still take a pool.
        assert!(RegisteredBufferPool::new(&mut r, 4096, 4).is_ok());
    }

    #[test]
    fn max_count_registers() {
        let mut r = ring();
        let p = RegisteredBufferPool::new(&mut r, 64, MAX_BUFFERS).unwrap();
        assert_eq!(p.total_count(), MAX_BUFFERS);
        assert_eq!(p.buffer_size(), 64);
    }

    #[test]
    fn second_pool_on_same_ring_is_ebusy_with_advice() {
        let mut r = ring();
        let _p = RegisteredBufferPool::new(&mut r, 4096, 2).unwrap();
        let e = RegisteredBufferPool::new(&mut r, 4096, 2).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EBUSY), "{e}");
        assert!(e.to_string().contains("one pool per ring"), "{e}");
    }

    #[test]
    fn buffers_are_page_aligned_and_sized() {
        let mut r = ring();
        let mut p = RegisteredBufferPool::new(&mut r, 5000, 3).unwrap();
        let mut ptrs = vec![];
        while let Some((_, b)) = p.try_acquire() {
            assert_eq!(b.len(), 5000);
            assert_eq!(b.as_ptr() as usize % 4096, 0);
            ptrs.push(b.as_ptr() as usize);
        }
        assert_eq!(ptrs.len(), 3);
        for w in ptrs.windows(2) {
            assert!(w[1].abs_diff(w[0]) >= 8192, "buffers must not overlap");
        }
    }

    #[test]
    fn acquire_release_accounting() {
        let mut r = ring();
        let mut p = RegisteredBufferPool::new(&mut r, 4096, 2).unwrap();
        let (a, _) = p.acquire().unwrap();
        let (b, _) = p.acquire().unwrap();
        assert_ne!(a, b);
        assert!(p.is_exhausted());
        assert_eq!(p.acquired_count(), 2);
        assert_eq!(p.available_count(), 0);
        assert!(matches!(
            p.acquire(),
            Err(Error::PoolExhausted { total: 2 })
        ));
        assert!(p.try_acquire().is_none());
        p.release(a);
        assert_eq!(p.available_count(), 1);
        assert_eq!(p.acquired_count(), 1);
        let s = p.stats();
        assert_eq!(s.acquisitions, 2);
        assert_eq!(s.exhaustions, 2);
        assert_eq!(s.total_bytes, 8192);
        assert!(s.to_string().contains("1 available/2 total"), "{s}");
    }

    #[test]
    fn get_and_get_mut() {
        let mut r = ring();
        let mut p = RegisteredBufferPool::new(&mut r, 16, 2).unwrap();
        let (i, b) = p.acquire().unwrap();
        b[..3].copy_from_slice(b"abc");
        assert_eq!(&p.get(i).unwrap()[..3], b"abc");
        p.get_mut(i).unwrap()[0] = b'x';
        assert_eq!(&p.get(i).unwrap()[..3], b"xbc");
        assert!(matches!(
            p.get(2),
            Err(Error::InvalidIndex { index: 2, total: 2 })
        ));
        assert!(p.get_mut(99).is_err());
    }

    #[test]
    fn try_release_reports_misuse_and_counts_it() {
        let mut r = ring();
        let mut p = RegisteredBufferPool::new(&mut r, 16, 2).unwrap();
        let (i, _) = p.acquire().unwrap();
        p.mark_in_flight(i);
        assert!(p.is_in_flight(i));
        let e = p.try_release(i).unwrap_err();
        assert!(e.to_string().contains("in flight"), "{e}");
        assert_eq!(p.available_count(), 1, "in-flight buffer must not be freed");
        assert!(p.get(i).is_err() && p.get_mut(i).is_err());
        p.complete_in_flight(i);
        p.try_release(i).unwrap();
        assert!(p.try_release(i).is_err(), "double release");
        assert!(p.try_release(7).is_err(), "invalid index");
        let s = p.stats();
        assert_eq!(s.misuse_release_in_flight, 1);
        assert_eq!(s.misuse_bad_state, 1);
        assert_eq!(s.misuse_invalid_index, 1);
        assert_eq!(s.misuse_total(), 3);
    }

    #[test]
    fn in_flight_counts_nest() {
        let mut r = ring();
        let mut p = RegisteredBufferPool::new(&mut r, 16, 1).unwrap();
        let (i, _) = p.acquire().unwrap();
        p.mark_in_flight(i);
        p.mark_in_flight(i);
        assert_eq!(p.in_flight_count(), 1);
        p.complete_in_flight(i);
        assert!(p.is_in_flight(i));
        p.complete_in_flight(i);
        assert!(!p.is_in_flight(i));
        assert_eq!(p.stats().in_flight_count, 0);
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "in flight")]
    fn release_in_flight_panics_in_debug() {
        let mut r = ring();
        let mut p = RegisteredBufferPool::new(&mut r, 16, 1).unwrap();
        let (i, _) = p.acquire().unwrap();
        p.mark_in_flight(i);
        p.release(i);
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "invalid buffer index")]
    fn release_invalid_index_panics_in_debug() {
        let mut r = ring();
        let mut p = RegisteredBufferPool::new(&mut r, 16, 1).unwrap();
        p.release(5);
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "never acquired")]
    fn mark_free_buffer_panics_in_debug() {
        let mut r = ring();
        let mut p = RegisteredBufferPool::new(&mut r, 16, 1).unwrap();
        p.mark_in_flight(0);
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "not in flight")]
    fn complete_without_flight_panics_in_debug() {
        let mut r = ring();
        let mut p = RegisteredBufferPool::new(&mut r, 16, 1).unwrap();
        let (i, _) = p.acquire().unwrap();
        p.complete_in_flight(i);
    }

    #[cfg(not(debug_assertions))]
    #[test]
    fn release_builds_refuse_and_count() {
        let mut r = ring();
        let mut p = RegisteredBufferPool::new(&mut r, 16, 1).unwrap();
        let (i, _) = p.acquire().unwrap();
        p.mark_in_flight(i);
        p.release(i);
        assert_eq!(p.available_count(), 0);
        p.release(9);
        p.mark_in_flight(9);
        p.complete_in_flight(9);
        let s = p.stats();
        assert_eq!(s.misuse_release_in_flight, 1);
        assert_eq!(s.misuse_invalid_index, 3);
    }

    #[test]
    fn submit_errors() {
        let mut r = ring();
        let mut p = RegisteredBufferPool::new(&mut r, 16, 2).unwrap();
        let f = tempfile::tempfile().unwrap();
        let fd = f.as_raw_fd();
        // Never acquired.
        assert!(matches!(
            p.submit_read_fixed(&mut r, fd, 0, 0, 4),
            Err(Error::BufferState { .. })
        ));
        let (i, _) = p.acquire().unwrap();
        assert!(matches!(
            p.submit_read_fixed(&mut r, fd, i, 0, 17),
            Err(Error::BufferTooSmall {
                requested: 17,
                buffer_size: 16
            })
        ));
        assert!(matches!(
            p.submit_write_fixed(&mut r, fd, 9, 0, 4),
            Err(Error::InvalidIndex { .. })
        ));
        assert!(p.submit_read_fixed(&mut r, fd, i, u64::MAX, 4).is_err());
        assert!(p.submit_read_fixed(&mut r, -1, i, 0, 4).is_err());
        let mut other = ring();
        assert!(matches!(
            p.submit_read_fixed(&mut other, fd, i, 0, 4),
            Err(Error::WrongRing)
        ));
        assert!(!p.is_in_flight(i), "failed submits leave the buffer idle");
    }

    #[test]
    fn sq_full_is_an_error_not_a_panic() {
        let mut r = IoUring::new(2).unwrap();
        let mut p = RegisteredBufferPool::new(&mut r, 16, 4).unwrap();
        let f = tempfile::tempfile().unwrap();
        let fd = f.as_raw_fd();
        let idx: Vec<u16> = (0..3).map(|_| p.acquire().unwrap().0).collect();
        p.submit_read_fixed(&mut r, fd, idx[0], 0, 4).unwrap();
        p.submit_read_fixed(&mut r, fd, idx[1], 0, 4).unwrap();
        assert_eq!(
            p.submit_read_fixed(&mut r, fd, idx[2], 0, 4),
            Err(Error::SubmissionQueueFull)
        );
        assert!(!p.is_in_flight(idx[2]));
        r.submit_and_wait(2).unwrap();
        let cqes: Vec<_> = r.completion().collect();
        for c in &cqes {
            p.complete_cqe(c).unwrap();
        }
        assert_eq!(p.in_flight_count(), 0);
    }

    #[test]
    fn stale_completion_changes_nothing() {
        let (mut r, mut p, f, i) = one_write_pushed();
        let fd = f.as_raw_fd();
        let old = next_cqe(&mut r);
        assert_eq!(p.complete_cqe(&old), Some((i, 4)));
        // A new operation on the same buffer, then the old CQE again (a late duplicate).
        p.submit_read_fixed(&mut r, fd, i, 0, 4).unwrap();
        assert_eq!(p.complete_cqe(&old), None);
        assert!(p.is_in_flight(i), "the new read must stay in flight");
        assert!(p.try_release(i).is_err());
        let new = next_cqe(&mut r);
        assert_eq!(p.complete_cqe(&new), Some((i, 4)));
        p.try_release(i).unwrap();
    }

    #[test]
    fn several_operations_on_one_buffer_complete_in_any_order() {
        let mut r = IoUring::new(8).unwrap();
        let mut p = RegisteredBufferPool::new(&mut r, 16, 1).unwrap();
        let f = tempfile::tempfile().unwrap();
        let (i, _) = p.acquire().unwrap();
        let uds: Vec<u64> = (0..3)
            .map(|k| {
                p.submit_write_fixed(&mut r, f.as_raw_fd(), i, k * 16, 4)
                    .unwrap()
            })
            .collect();
        r.submit_and_wait(3).unwrap();
        let mut cqes: Vec<_> = r.completion().collect();
        cqes.sort_by_key(|c| std::cmp::Reverse(c.user_data()));
        for (n, c) in cqes.iter().enumerate() {
            assert!(uds.contains(&c.user_data()));
            assert_eq!(p.complete_cqe(c), Some((i, 4)));
            assert_eq!(p.is_in_flight(i), n < 2);
            // Completing the same CQE twice is stale the second time.
            assert_eq!(p.complete_cqe(c), None);
        }
        p.try_release(i).unwrap();
    }

    #[test]
    fn complete_by_index_then_cqe_completes_once() {
        let (mut r, mut p, _f, i) = one_write_pushed();
        let cqe = next_cqe(&mut r);
        p.complete_in_flight(i);
        assert!(!p.is_in_flight(i));
        // Completing by index does not end the pool's own record: only the CQE does. The caller
        // is believed for its own buffer: it may read it.
        assert!(p.is_kernel_owned(i));
        assert!(p.get(i).is_ok(), "declared complete: the caller's again");
        // Matching the CQE ends the kernel's ownership without completing the operation twice.
        assert_eq!(p.complete_cqe(&cqe), Some((i, 4)));
        assert!(!p.is_kernel_owned(i) && !p.is_in_flight(i));
        assert_eq!(p.in_flight_count(), 0);
        assert_eq!(p.complete_cqe(&cqe), None, "a repeated CQE is stale");
        assert!(p.get(i).is_ok());
        p.try_release(i).unwrap();
        assert_eq!(p.available_count(), 1);
        assert_eq!(p.stats().misuse_total(), 0);
    }

    /// Every buffer in the free list, acquired (then released again).
    fn drain_free_list(p: &mut RegisteredBufferPool) -> Vec<u16> {
        let mut got = vec![];
        for _ in 0..p.free.len() {
            got.push(p.acquire().unwrap().0);
        }
        for &j in &got {
            p.release(j);
        }
        got
    }

    /// A READ_FIXED from a real file into buffer `i`; the caller lies with `complete_in_flight(i)`
    /// before the CQE is reaped, and releases it. Nothing the free list hands out is `i` until its
    /// CQE is matched; after that, `i` is handed out again.
    #[test]
    fn lying_complete_then_release_quarantines_until_cqe() {
        let mut r = IoUring::new(8).unwrap();
        let mut p = RegisteredBufferPool::new(&mut r, 4096, 4).unwrap();
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &[0xC3; 4096]).unwrap();
        let (i, _) = p.acquire().unwrap();
        let ud = p
            .submit_read_fixed(&mut r, f.as_raw_fd(), i, 0, 4096)
            .unwrap();
        assert_eq!(p.kernel_owned_count(), 1);
        // The lie: the CQE has not been reaped (the SQE is not even submitted).
        p.complete_in_flight(i);
        assert!(!p.is_in_flight(i) && p.is_kernel_owned(i));
        assert_eq!(p.in_flight_count(), 0);
        assert_eq!(p.kernel_owned_count(), 1);
        p.try_release(i).unwrap();
        let s = p.stats();
        assert_eq!(s.misuse_total(), 0, "the seed API's flow, not misuse");
        assert_eq!((s.available_count, s.acquired_count), (4, 0));
        assert_eq!(p.free.len(), 3);
        assert_eq!((s.quarantined_count, s.kernel_owned_count), (1, 1));
        assert!(s.to_string().contains("1 quarantined"), "{s}");
        // A quarantined buffer cannot be released again, submitted, marked or read.
        assert!(p.try_release(i).is_err());
        assert!(p
            .submit_read_fixed(&mut r, f.as_raw_fd(), i, 0, 16)
            .is_err());
        assert!(p.get(i).is_err() && p.get_mut(i).is_err());
        assert!(p.get(i).unwrap_err().to_string().contains("released"));
        assert_eq!(p.stats().misuse_bad_state, 1, "the second release");

        let got = drain_free_list(&mut p);
        assert_eq!(got.len(), 3);
        assert!(
            !got.contains(&i),
            "{got:?} includes the kernel-owned buffer {i}"
        );

        // Now the kernel does the read; still not handed out until the pool matches the CQE.
        let cqe = next_cqe(&mut r);
        assert_eq!(cqe.user_data(), ud);
        assert!(!drain_free_list(&mut p).contains(&i));
        assert_eq!(p.complete_cqe(&cqe), Some((i, 4096)));
        let s = p.stats();
        assert_eq!((s.available_count, s.quarantined_count), (4, 0));
        assert_eq!((s.kernel_owned_count, s.in_flight_count), (0, 0));
        assert!(drain_free_list(&mut p).contains(&i));
        // The read landed in the quarantined buffer, nowhere else.
        assert_eq!(p.get(i).unwrap(), &[0xC3; 4096][..]);
        let s = p.stats();
        assert_eq!((s.misuse_total(), s.unmatched_completions), (1, 0));
    }

    #[test]
    fn kernel_owned_count_tracks_pushes_and_matches_only() {
        let mut r = IoUring::new(16).unwrap();
        let mut p = RegisteredBufferPool::new(&mut r, 16, 3).unwrap();
        let f = tempfile::tempfile().unwrap();
        let fd = f.as_raw_fd();
        let (a, _) = p.acquire().unwrap();
        let (b, _) = p.acquire().unwrap();
        let (c, _) = p.acquire().unwrap();
        // Marking by hand is the caller's record, not the pool's.
        p.mark_in_flight(c);
        assert_eq!((p.in_flight_count(), p.kernel_owned_count()), (1, 0));
        p.complete_in_flight(c);
        // Two operations on `a`, one on `b`: two kernel-owned buffers.
        p.submit_write_fixed(&mut r, fd, a, 0, 4).unwrap();
        p.submit_write_fixed(&mut r, fd, a, 16, 4).unwrap();
        p.submit_write_fixed(&mut r, fd, b, 32, 4).unwrap();
        assert_eq!((p.in_flight_count(), p.kernel_owned_count()), (2, 2));
        // Public calls do not lower it.
        p.complete_in_flight(a);
        p.complete_in_flight(a);
        p.complete_in_flight(b);
        p.release(a);
        assert_eq!((p.in_flight_count(), p.kernel_owned_count()), (0, 2));
        r.submit_and_wait(3).unwrap();
        let cqes: Vec<_> = r.completion().collect();
        assert_eq!(cqes.len(), 3);
        let of_a: Vec<_> = cqes.iter().filter(|c| c.user_data() as u16 == a).collect();
        let of_b = cqes.iter().find(|c| c.user_data() as u16 == b).unwrap();
        assert_eq!(p.complete_cqe(of_b), Some((b, 4)));
        assert_eq!(p.kernel_owned_count(), 1);
        // Stale and duplicate CQEs change nothing.
        assert_eq!(p.complete_cqe(of_b), None);
        let forged = POOL_USER_DATA_TAG | (1000 << SEQ_SHIFT) | u64::from(a);
        assert_eq!(p.complete_user_data(forged), None);
        assert_eq!(p.complete_user_data(42), None);
        assert_eq!(p.kernel_owned_count(), 1);
        assert_eq!(p.complete_cqe(of_a[0]), Some((a, 4)));
        assert_eq!(p.kernel_owned_count(), 1, "`a` has a second operation");
        assert_eq!(p.stats().quarantined_count, 1, "`a` stays quarantined");
        assert_eq!(p.complete_user_data(of_a[1].user_data()), Some(a));
        assert_eq!(p.kernel_owned_count(), 0);
        assert_eq!(p.complete_cqe(of_a[1]), None);
        assert_eq!(p.available_count(), 1, "`a` is free again");
        p.release(b);
        p.release(c);
        let s = p.stats();
        assert_eq!(
            (s.available_count, s.in_flight_count, s.kernel_owned_count),
            (3, 0, 0)
        );
        assert_eq!((s.misuse_total(), s.unmatched_completions), (0, 0));
    }

    /// An operation marked by the caller (before the pool's push, so not a mark of the pool's
    /// operation) and one pushed by the pool on the same buffer: `complete_in_flight` retires the
    /// caller's first, and the pool's CQE ends its own.
    #[test]
    fn marked_and_pushed_operations_on_one_buffer() {
        let mut r = ring();
        let mut p = RegisteredBufferPool::new(&mut r, 16, 1).unwrap();
        let f = tempfile::tempfile().unwrap();
        let (i, _) = p.acquire().unwrap();
        p.mark_in_flight(i);
        p.submit_write_fixed(&mut r, f.as_raw_fd(), i, 0, 4)
            .unwrap();
        assert_eq!(p.in_flight_count(), 1);
        p.complete_in_flight(i); // the caller's own operation
        assert!(p.is_in_flight(i), "the pool's operation is still in flight");
        let cqe = next_cqe(&mut r);
        assert_eq!(p.complete_cqe(&cqe), Some((i, 4)));
        assert!(!p.is_in_flight(i) && !p.is_kernel_owned(i));
        p.try_release(i).unwrap();
        assert_eq!(p.stats().misuse_total(), 0);
    }

    /// The seed API's flow: `mark_in_flight` after a `submit_*` names the pool's operation (not a
    /// second one), and one `complete_in_flight` ends it: the buffer is readable, writable and
    /// released into quarantine (the pool did not see the CQE) without any misuse counted.
    #[test]
    fn mark_after_submit_names_the_pools_operation() {
        let (mut r, mut p, _f, i) = one_write_pushed();
        p.mark_in_flight(i);
        assert!(p.is_in_flight(i));
        assert_eq!(p.in_flight_count(), 1);
        assert!(p.get(i).is_err(), "in flight");
        // A second mark has no pool operation left to name: the caller's own.
        p.mark_in_flight(i);
        let _cqe = next_cqe(&mut r);
        p.complete_in_flight(i);
        assert!(p.is_in_flight(i), "one of two declared complete");
        p.complete_in_flight(i);
        assert!(!p.is_in_flight(i));
        assert_eq!(p.in_flight_count(), 0);
        p.get_mut(i).unwrap()[0] = 9;
        assert_eq!(p.get(i).unwrap()[0], 9);
        p.try_release(i).unwrap();
        let s = p.stats();
        assert_eq!((s.quarantined_count, s.kernel_owned_count), (1, 1));
        assert_eq!(s.misuse_total(), 0);
    }

    /// A quarantined buffer (released after `complete_in_flight`, its CQE never given to the pool)
    /// is handed out again only when nothing else is free, oldest first; its records are then
    /// dropped on the caller's word and counted, its late CQE is stale, and Drop would leak.
    #[test]
    fn acquire_takes_quarantined_buffers_only_when_nothing_else_is_free() {
        let mut r = IoUring::new(8).unwrap();
        let mut p = RegisteredBufferPool::new(&mut r, 16, 3).unwrap();
        let f = tempfile::tempfile().unwrap();
        let (a, _) = p.acquire().unwrap();
        let (b, _) = p.acquire().unwrap();
        let ua = p
            .submit_write_fixed(&mut r, f.as_raw_fd(), a, 0, 4)
            .unwrap();
        p.submit_write_fixed(&mut r, f.as_raw_fd(), b, 16, 4)
            .unwrap();
        p.complete_in_flight(a);
        p.complete_in_flight(b);
        p.release(a);
        p.release(b);
        // Available (`acquire` can hand them out), but not free.
        assert_eq!((p.stats().quarantined_count, p.available_count()), (2, 3));
        assert_eq!(p.free.len(), 1);
        let (c, _) = p.acquire().unwrap();
        assert!(c != a && c != b, "the free buffer first");
        assert_eq!(p.stats().unmatched_completions, 0);
        let (first, _) = p.acquire().unwrap();
        assert_eq!(first, a, "the oldest quarantined buffer");
        let s = p.stats();
        assert_eq!((s.quarantined_count, s.kernel_owned_count), (1, 1));
        assert_eq!((s.unmatched_completions, s.acquired_count), (1, 2));
        assert!(!p.is_kernel_owned(a) && !p.is_in_flight(a));
        r.submit_and_wait(2).unwrap();
        let cqes: Vec<_> = r.completion().collect();
        for c in &cqes {
            let got = p.complete_cqe(c);
            if c.user_data() == ua {
                assert_eq!(got, None, "its record was dropped on the caller's word");
            } else {
                assert_eq!(got, Some((b, 4)));
            }
        }
        // `b`'s CQE was given after all: it is free again, not taken on the word.
        let s = p.stats();
        assert_eq!((s.quarantined_count, s.kernel_owned_count), (0, 0));
        assert_eq!((s.available_count, s.unmatched_completions), (1, 1));
        assert_eq!(s.misuse_total(), 0);
        assert!(s.to_string().contains("1 unmatched completions"), "{s}");
    }

    /// Submitting again on a buffer whose operations were all declared complete drops their
    /// records (the caller's word), so a caller who never gives CQEs to the pool keeps one record
    /// per operation in flight, not one per operation ever.
    #[test]
    fn submitting_again_after_complete_in_flight_keeps_records_bounded() {
        let mut r = IoUring::new(8).unwrap();
        let mut p = RegisteredBufferPool::new(&mut r, 16, 1).unwrap();
        let f = tempfile::tempfile().unwrap();
        let (i, _) = p.acquire().unwrap();
        for round in 0..100u64 {
            p.submit_write_fixed(&mut r, f.as_raw_fd(), i, round * 16, 4)
                .unwrap();
            assert_eq!(next_cqe(&mut r).result(), 4);
            p.complete_in_flight(i);
            assert_eq!(p.records, 1, "round {round}");
        }
        assert_eq!(p.stats().unmatched_completions, 99);
        // The last one is dropped by the next push; with that one still open, nothing is.
        p.submit_write_fixed(&mut r, f.as_raw_fd(), i, 0, 4)
            .unwrap();
        p.submit_write_fixed(&mut r, f.as_raw_fd(), i, 16, 4)
            .unwrap();
        assert_eq!(p.records, 2);
        assert_eq!(p.stats().unmatched_completions, 100);
        r.submit_and_wait(2).unwrap();
        for c in r.completion().collect::<Vec<_>>() {
            assert_eq!(p.complete_cqe(&c), Some((i, 4)));
        }
        assert!(!p.is_kernel_owned(i) && !p.is_in_flight(i));
        p.try_release(i).unwrap();
        let s = p.stats();
        assert_eq!((s.available_count, s.quarantined_count), (1, 0));
        assert_eq!(s.misuse_total(), 0);
    }

    /// The pool refuses to keep more than `MAX_RECORDS` records: a submit past that is an error
    /// (nothing pushed), not unbounded memory.
    #[test]
    fn records_are_bounded() {
        let mut r = IoUring::new(8).unwrap();
        let mut p = RegisteredBufferPool::new(&mut r, 16, 2).unwrap();
        let f = tempfile::tempfile().unwrap();
        let (i, _) = p.acquire().unwrap();
        p.submit_write_fixed(&mut r, f.as_raw_fd(), i, 0, 4)
            .unwrap();
        // As if MAX_RECORDS - 1 more were kept (pushing them for real would need a huge ring).
        p.records = MAX_RECORDS;
        let e = p
            .submit_write_fixed(&mut r, f.as_raw_fd(), i, 0, 4)
            .unwrap_err();
        assert!(e.to_string().contains("complete_cqe"), "{e}");
        assert_eq!(r.submission().len(), 1, "nothing pushed");
        p.records = 1;
        assert_eq!(p.complete_cqe(&next_cqe(&mut r)), Some((i, 4)));
        assert_eq!(p.records, 0);
    }

    /// A lent buffer is refused by every public call, never handed out, and counted, until it is
    /// taken back into the free list.
    #[test]
    fn lent_buffers_are_refused_until_taken_back() {
        let mut r = ring();
        let mut p = RegisteredBufferPool::new(&mut r, 16, 2).unwrap();
        let f = tempfile::tempfile().unwrap();
        let (i, buf) = p.acquire().unwrap();
        buf[..3].copy_from_slice(b"abc");
        assert_eq!(&p.lend(i).unwrap()[..3], b"abc");
        let s = p.stats();
        assert_eq!(
            (s.lent_count, s.acquired_count, s.available_count),
            (1, 0, 1)
        );
        assert!(s.to_string().contains("1 lent"), "{s}");
        assert_eq!(p.lent_count(), 1);
        for e in [
            p.get(i).map(|_| ()).unwrap_err(),
            p.get_mut(i).map(|_| ()).unwrap_err(),
            p.try_release(i).unwrap_err(),
            p.submit_read_fixed(&mut r, f.as_raw_fd(), i, 0, 4)
                .map(|_| ())
                .unwrap_err(),
        ] {
            assert!(
                matches!(e, Error::BufferState { index, state, .. } if index == i && state == LENT),
                "{e:?}"
            );
        }
        assert!(p.lend(i).is_err(), "lent twice");
        assert!(!drain_free_list(&mut p).contains(&i));
        assert_eq!(p.acquire().unwrap().0, 1 - i);
        assert!(p.try_acquire().is_none(), "never handed out");
        p.release(1 - i);
        p.take_back(i).unwrap();
        assert!(p.take_back(i).is_err(), "taken back twice");
        let s = p.stats();
        assert_eq!((s.lent_count, s.available_count), (0, 2));
        assert_eq!(s.misuse_bad_state, 1, "the refused release");
        // Only an acquired, idle buffer can be lent.
        assert!(p.lend(i).is_err(), "a free buffer");
        let (j, _) = p.acquire().unwrap();
        p.submit_write_fixed(&mut r, f.as_raw_fd(), j, 0, 4)
            .unwrap();
        assert!(p.lend(j).is_err(), "a buffer in flight");
        assert_eq!(p.complete_cqe(&next_cqe(&mut r)), Some((j, 4)));
        p.lend(j).unwrap();
        p.take_back(j).unwrap();
    }

    /// In debug builds, the refused calls on a lent buffer that have no `Result` panic, naming it.
    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "lent to a task")]
    fn mark_lent_buffer_panics_in_debug() {
        let mut r = ring();
        let mut p = RegisteredBufferPool::new(&mut r, 16, 1).unwrap();
        let (i, _) = p.acquire().unwrap();
        p.lend(i).unwrap();
        p.mark_in_flight(i);
    }

    #[test]
    fn user_data_is_unique_and_decodes() {
        let mut r = IoUring::new(64).unwrap();
        let mut p = RegisteredBufferPool::new(&mut r, 16, 4).unwrap();
        let f = tempfile::tempfile().unwrap();
        let fd = f.as_raw_fd();
        let (i, _) = p.acquire().unwrap();
        let mut seen = std::collections::HashSet::new();
        for round in 0..10 {
            let ud = p.submit_read_fixed(&mut r, fd, i, 0, 4).unwrap();
            assert!(seen.insert(ud), "user_data repeated in round {round}");
            assert_eq!(RegisteredBufferPool::buffer_index_of(ud), Some(i));
            r.submit_and_wait(1).unwrap();
            let c = r.completion().next().unwrap();
            assert_eq!(c.user_data(), ud);
            assert_eq!(p.complete_cqe(&c), Some((i, 0)));
        }
        assert_eq!(RegisteredBufferPool::buffer_index_of(42), None);
    }
}
