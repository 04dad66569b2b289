//! The shard thread: setup on its own core, then the loop.
//!
//! ```text
//! loop {
//!     admit: the backlog, then up to 256 inbox messages,   -> op table + per-file order
//!            while fewer than channel_capacity ops live
//!     run async tasks (a budget of polls and time)         -> then what this thread sent to
//!                                                           this shard, like the inbox
//!     issue ready ops, at most 32 SQEs                     (no buffer: the op waits here;
//!                                                           SQ full: submit, then go on)
//!     submit (GETEVENTS when the kernel flags task work), reap CQEs: finish chunks, resubmit
//!            short ones                                    -> complete handles, count stats
//!     every 5 ms with ops live: cancellations, deadlines, shutdown's grace period
//!     deliver each session's results of the turn (one batch per session)
//!     no progress: look at the inbox for a while (yielding), then sleep: on a futex with
//!            nothing in the kernel, in the ring (eventfd poll armed) otherwise
//! }
//! ```
//!
//! `submit_to` closures run between turns, once none of the shard's own operations is in the
//! kernel (see [`ShardContext`]).
//!
//! `user_data`: operations that use a pool buffer carry the pool's tag and buffer index (the buffer
//! maps to its chunk, the chunk to its op); other operations carry `slot | generation << 24` of the
//! op table; the wake-up poll carries [`WAKE_USER_DATA`], cancel requests [`CANCEL_USER_DATA`].
//!
//! Cancellation: an op whose handle was dropped (or cancelled), whose session was dropped, or
//! whose deadline passed is skipped if the kernel has not seen it, checked when it is admitted
//! and when it is issued. Ops already in the kernel are looked at every [`SCAN_EVERY`] (the shard
//! sleeps no longer than that while ops are in flight): reads get an ASYNC_CANCEL, writes and
//! syncs finish (a write is never torn out of order), except after shutdown's grace period, when
//! everything left is cancelled. Buffers are released only at each SQE's own completion.

use super::context::{ShardContext, CANCEL_USER_DATA, WAKE_USER_DATA};
use super::files::{FileEntry, FileTable};
use super::ops::{
    CancelWhy, Chunk, DataPath, Op, OpTable, GEN_MASK, MAX_SQE_BYTES, SLOT_BITS, SLOT_MASK,
};
use super::order::Ordering;
use super::session_table::SessionTable;
use super::tasks::{self, TimerState, TASK_BUDGET};
use super::{
    IoOp, IoRequest, Message, Reply, ShardLink, ShardShared, Task, AWAKE, IN_RING, ON_FUTEX,
};
use crate::completion::{set_abandon_reason, set_current_shard, AbandonReason, Completer};
use crate::driver::{Backend, Driver, ThreadDriver};
use crate::error::{Error, Result};
use crate::file::{File, FileFlags, FileInner, FileRef};
use crate::inline::InlineFile;
use crate::numa;
use crate::op::Footprint;
use crate::pool::PoolFit;
use crate::pool::{Direction, RegisteredBufferPool, Target};
use crate::ring::{pin_workers, RingConfig};
use crate::router::FileKey;
use crate::stats::{OpKind, ShardStats};
use crossbeam_channel::{Receiver, TryRecvError};
use io_uring::{opcode, squeue, types};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{fence, AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a shard is set up.
#[derive(Debug, Clone)]
pub(crate) struct ShardConfig {
    pub index: usize,
    pub exec_id: u64,
    pub cpu: Option<usize>,
    pub node: Option<u32>,
    /// Bind the pool to `node` with mbind (only worth it on multi-node machines).
    pub bind_memory: bool,
    pub ring: RingConfig,
    pub buffer_size: usize,
    pub buffer_count: usize,
    pub max_files: u32,
    pub spin: Duration,
    /// Buffered writes with `pwrite` on the shard thread instead of through the ring.
    pub inline_buffered_writes: bool,
    pub channel_capacity: usize,
    /// The backend the executor chose (see `driver::choose`).
    pub backend: Backend,
    /// Worker threads per shard at most, on the threads backend.
    pub threads_per_shard: usize,
    /// Why that backend (for stats).
    pub backend_reason: Option<String>,
    /// Operations slower than this (ns) are logged; u64::MAX: never.
    pub slow_op_ns: u64,
    /// An inline write's system call blocked longer than this: the file's buffered writes go
    /// through the ring for `INLINE_PAUSE` (`None`: never).
    pub inline_write_stall: Option<Duration>,
    /// Op kinds to run with plain system calls even where the kernel has their opcode (tests).
    pub force_blocking: Vec<OpKind>,
}

/// What a shard's stats say about its pool when it is not the registered pool asked for.
fn pool_note(fit: &PoolFit, pool: &RegisteredBufferPool) -> Option<String> {
    let size = pool.stats().buffer_size;
    match fit {
        PoolFit::Registered => None,
        PoolFit::Fitted { asked, error } => Some(format!(
            "{} of {asked} buffers of {size} bytes registered, to fit RLIMIT_MEMLOCK{}",
            pool.stats().total_count,
            error.as_ref().map_or(String::new(), |e| format!(" ({e})")),
        )),
        PoolFit::Unregistered { bytes: 0 } => None,
        PoolFit::Unregistered { bytes } => Some(format!(
            "buffers unregistered (plain READ/WRITE): fewer than {} buffers of {size} bytes fit \
             RLIMIT_MEMLOCK (limit {}; the full pool pins {bytes} bytes). Raise the limit \
             (`ulimit -l unlimited`, memlock in /etc/security/limits.conf, LimitMEMLOCK= for \
             systemd, --ulimit memlock=-1 for docker) to register them",
            crate::pool::MIN_REGISTERED,
            crate::error::memlock_limit().map_or("unlimited".to_string(), |l| format!("{l} bytes")),
        )),
    }
}

/// Messages taken from the inbox per loop turn, so completions are reaped between bursts.
const INBOX_BATCH: usize = 256;

/// How often ops in the kernel are checked for cancellation and deadlines, and the longest the
/// shard sleeps while ops are in flight.
const SCAN_EVERY: Duration = Duration::from_millis(5);

/// SQEs issued per turn at most. A turn ends with a submit, a reap and the delivery of results,
/// so a smaller batch hands results back sooner and callers refill while the shard works on the
/// rest. Measured (routed 4 KiB reads, 1 shard x 1 client, QD32, interleaved): unbounded, the
/// shard and its caller took turns (1.0-1.4 cores busy); 8 to 32 kept both cores busy.
const ISSUE_BATCH: usize = 32;

/// The `user_data` tag of a task's sleep (`IORING_OP_TIMEOUT`): bit 62, with the timer's index in
/// the low bits. Outside the ops' space (below 2^47), the pool's (bit 63) and the range that
/// `submit_to` closures may use (2^47 .. 2^62); WAKE and CANCEL are matched before it.
const TIMER_TAG: u64 = 1 << 62;

/// The `file_slot` of an op on a path: it names no open file.
const PATH_SLOT: u32 = u32::MAX;

/// How long a file's buffered writes go through the ring after a slow inline one.
const INLINE_PAUSE: Duration = Duration::from_secs(5);

/// O_DIRECT chunks are multiples of this (the logical block size the executor assumes).
const DIRECT_ALIGN: u64 = 4096;

// ---------------------------------------------------------------------------------------------
// The shard

struct Shard {
    // Field order is drop order: the ring goes before the pool, so the kernel lets go of the
    // buffers before the pool decides whether to unmap them.
    ring: Driver,
    pool: RegisteredBufferPool,
    cfg: ShardConfig,
    files: FileTable,
    fixed_capacity: u32,
    ops: OpTable,
    /// By [`OpKind::index`]: the kind runs with plain system calls on this thread (its opcode is
    /// missing from the kernel's probe, or it was forced there).
    blocking: [bool; OpKind::COUNT],
    chunks: Vec<Chunk>,
    ready: VecDeque<u32>,
    order: Ordering,
    /// Requests received and not yet admitted (the rest of a batch or session flush that did not
    /// fit, and requests read while the op table was full): admitted in order, before anything
    /// newer from the inbox.
    backlog: VecDeque<IoRequest>,
    /// Sessions with requests here; their results go out once per turn.
    sessions: SessionTable,
    tasks: VecDeque<Task>,
    /// Messages sent on this thread to this shard (tasks' and closures' requests, batches,
    /// session flushes, closes), taken once per batch of tasks (kept to reuse its allocation).
    local: Vec<Message>,
    /// Sleeps in the ring: index = `user_data & !TIMER_TAG`. The timespec stays here until the
    /// timeout's completion.
    timers: Vec<Option<(Arc<TimerState>, Box<types::Timespec>)>>,
    timer_free: Vec<usize>,
    new_timers: Vec<Arc<TimerState>>,
    /// Sleeps in the ring (timeouts pushed, CQE not reaped yet).
    timers_armed: u32,
    /// Sleeps are being taken out of the ring so that queued closures can run.
    parking: bool,
    /// Sleeps taken out, armed again once the closures have run.
    parked_timers: Vec<Arc<TimerState>>,
    /// Pool buffers handed back by tasks this turn (the pool knows which are lent).
    released: Vec<u16>,
    stats: ShardStats,
    shared: Arc<ShardShared>,
    rx: Receiver<Message>,
    wake_armed: bool,
    /// The wake-up poll failed (an old or odd kernel): sleep in short timed waits instead.
    wake_broken: bool,
    /// SQEs pushed and not yet reaped (the wake-up poll and cancel requests included).
    in_flight: u32,
    cq_capacity: u32,
    closing: bool,
    /// When shutdown's grace period ends: then everything still in flight is cancelled.
    closing_deadline: Option<Instant>,
    /// Shutdown's grace period is over.
    cancel_all: bool,
    /// Completed when the shard has stopped.
    shutdown_waiters: Vec<Completer<()>>,
    /// The last cancellation/deadline scan.
    last_scan: Instant,
    cqes: Vec<(u64, i32)>,
    /// The time, read at most once per loop turn: completions finished in one turn share it.
    clock: Option<Instant>,
    /// The thread is unwinding from a panic: pending results report ShardFailed.
    panicked: bool,
}

/// Starts shard `cfg.index` on its own thread. Returns once the shard is set up (pinned, memory
/// policy set, ring and pool created on that thread) or with the setup error.
pub(crate) fn spawn(cfg: ShardConfig) -> Result<(ShardLink, std::thread::JoinHandle<()>)> {
    let shared = Arc::new(ShardShared::new()?);
    // Unbounded: a send never blocks a caller (or an async runtime thread). What the shard has
    // admitted is bounded by `channel_capacity`; the rest waits here in order, and its memory is
    // the callers' own requests.
    let (tx, rx) = crossbeam_channel::unbounded();
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<()>>(1);
    let thread_shared = Arc::clone(&shared);
    let thread_cfg = cfg.clone();
    let handle = std::thread::Builder::new()
        .name(format!("ringshard-{}", cfg.index))
        .spawn(move || shard_main(thread_cfg, rx, thread_shared, ready_tx))
        .map_err(|e| {
            Error::io(
                "spawn shard thread",
                None,
                None,
                e.raw_os_error().unwrap_or(libc::EAGAIN),
            )
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((
            ShardLink {
                index: cfg.index,
                cpu: cfg.cpu,
                node: cfg.node,
                tx,
                shared,
            },
            handle,
        )),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => {
            let _ = handle.join();
            Err(Error::ShardFailed {
                shard: cfg.index,
                reason: "the shard thread died during setup".into(),
            })
        }
    }
}

fn shard_main(
    cfg: ShardConfig,
    rx: Receiver<Message>,
    shared: Arc<ShardShared>,
    ready: crossbeam_channel::Sender<Result<()>>,
) {
    set_current_shard(cfg.exec_id, cfg.index);
    let index = cfg.index;
    let mut shard = match Shard::new(cfg, rx, Arc::clone(&shared)) {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s
        }
        Err(e) => {
            crate::logging::shard_setup_failed(index, &e);
            let _ = ready.send(Err(e));
            return;
        }
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shard.run()));
    if let Err(payload) = &outcome {
        crate::logging::shard_panicked(index, payload.as_ref());
    }
    let panicked = outcome.is_err();
    if panicked {
        // First of all: from now on the shard is dead, and its files are read by nobody (not even
        // inline on callers' threads) before any handle is told so.
        shard.files.retire_all();
        shared.dead.store(true, AtomicOrdering::Release);
        set_abandon_reason(AbandonReason::ShardPanicked);
        DEATH_NOTICES.with(|n| n.borrow_mut().clear());
    }
    // Tasks still runnable are dropped here, on their thread (their handles report it); from now
    // on a task woken on this thread is dropped at once.
    let unhandled = tasks::shutdown_here();
    if !panicked {
        // Kept for `Executor::stats` after shutdown.
        shard.stats.pool = shard.pool.stats();
        if let Ok(mut last) = shared.final_stats.lock() {
            *last = Some(shard.stats.clone());
        }
    }
    let error = if panicked {
        // Everything still pending on this shard fails with ShardFailed; new work is refused at
        // the door. The ring is dropped before the pool, and the pool keeps its memory mapped
        // if the kernel may still write into it.
        shared.dead.store(true, AtomicOrdering::Release);
        set_abandon_reason(AbandonReason::ShardPanicked);
        shard.panicked = true;
        Error::ShardFailed {
            shard: index,
            reason: "the shard thread panicked; this operation did not complete".into(),
        }
    } else {
        set_abandon_reason(AbandonReason::Shutdown);
        Error::Shutdown
    };
    // Whatever is still queued for this shard is failed, including what callers put in between
    // their checks and their send: see `ShardLink::send`. (Messages sent on this thread that
    // the loop did not handle are left only by a panic: a clean stop waits for them.)
    shared.exited.store(true, AtomicOrdering::SeqCst);
    // Per-shard state (`Sharded`) is dropped here, on its own thread, after the tasks that
    // used it; what its drops send to this shard is refused or failed below like the rest.
    crate::sharded::drop_here();
    for msg in unhandled {
        shard.shutdown_waiters.extend(msg.fail(&error));
    }
    loop {
        while let Ok(msg) = shard.rx.try_recv() {
            shard.shutdown_waiters.extend(msg.fail(&error));
        }
        if shared.sending.load(AtomicOrdering::SeqCst) == 0 && shard.rx.is_empty() {
            break;
        }
        std::thread::yield_now();
    }
    let waiters = std::mem::take(&mut shard.shutdown_waiters);
    drop(shard);
    for w in waiters {
        w.complete(Ok(()));
    }
}

thread_local! {
    /// Completers to fail once this shard thread has died (`kill_shard_for_tests`).
    static DEATH_NOTICES: std::cell::RefCell<Vec<Completer<()>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Keeps `done` until this shard thread is marked dead, then drops it (failing its handle with
/// ShardFailed). Called on a shard thread about to panic.
pub(crate) fn notify_death(done: Completer<()>) {
    let _ = DEATH_NOTICES.try_with(|n| n.borrow_mut().push(done));
}

/// Why an op should not run (or go on) any more: nobody waits for it, or its deadline passed.
/// A close is never skipped: whoever dropped its handle still wants the file closed (the handle's
/// own drop sends no second close once an explicit one was sent).
fn skip_reason(
    kind: OpKind,
    io: &IoOp,
    reply: &Reply,
    deadline: Option<Instant>,
    now: Instant,
    sessions: &SessionTable,
) -> Option<CancelWhy> {
    if kind == OpKind::Close {
        return None;
    }
    if deadline.is_some_and(|d| now >= d) {
        return Some(CancelWhy::Deadline);
    }
    (reply.is_cancelled(sessions) || io.is_cancelled()).then_some(CancelWhy::Dropped)
}

impl Shard {
    fn new(cfg: ShardConfig, rx: Receiver<Message>, shared: Arc<ShardShared>) -> Result<Self> {
        if let Some(cpu) = cfg.cpu {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                return Err(Error::InvalidConfig(format!(
                    "shard {}: cannot pin to CPU {cpu} (sched_setaffinity refused): the CPU may \
                     be offline or outside this process's cpuset",
                    cfg.index
                )));
            }
        }
        // Best effort: a kernel without NUMA support refuses, and then there is one node.
        let mem_policy = numa::prefer_node_for_shard(cfg.index, cfg.node);
        // The ring, the pool and the file table are created here, on the pinned thread: with
        // SINGLE_ISSUER only this thread may use the ring, and first-touch puts memory locally.
        let mut ring_note = None;
        let (mut ring, mode) = match cfg.backend {
            Backend::IoUring => {
                // ENOMEM even at the fewest entries fails the setup: the executor then starts
                // every shard on the threads backend.
                let (ring, mode, note) = cfg.ring.build_fitted()?;
                if let Some(cpu) = cfg.cpu {
                    pin_workers(&ring, cpu);
                }
                ring_note = note;
                (Driver::Uring(ring), Some(mode))
            }
            Backend::Threads => {
                let driver = ThreadDriver::new(
                    cfg.ring.entries,
                    cfg.cpu,
                    cfg.threads_per_shard,
                    format!("ringshard-{}-io", cfg.index),
                )
                .map_err(|e| {
                    Error::io("eventfd", None, None, e.raw_os_error().unwrap_or(libc::EIO))
                })?;
                (Driver::Threads(driver), None)
            }
        };
        let node = if cfg.bind_memory { cfg.node } else { None };
        let (pool, fit) =
            RegisteredBufferPool::for_shard(&mut ring, cfg.buffer_size, cfg.buffer_count, node)?;
        let fixed_capacity = if cfg.max_files > 0 {
            match ring.register_files_sparse(cfg.max_files) {
                Ok(()) => cfg.max_files,
                // EMFILE (RLIMIT_NOFILE below max_files) or an old kernel: plain descriptors.
                Err(_) => 0,
            }
        } else {
            0
        };
        let cq_capacity = ring.cq_entries();
        let blocking = probe_blocking(&ring, &cfg.force_blocking);
        let mut stats = ShardStats::new(cfg.index, cfg.cpu, cfg.node);
        stats.blocking_ops = OpKind::ALL
            .into_iter()
            .filter(|k| blocking[k.index()])
            .collect();
        stats.pool = pool.stats();
        (stats.ring_mode, stats.mem_policy) = (mode, mem_policy);
        stats.backend = ring.backend();
        stats.backend_reason = cfg.backend_reason.clone();
        stats.pool_note = pool_note(&fit, &pool);
        stats.ring_note = ring_note;
        crate::logging::shard_setup(&stats, fixed_capacity);
        let mut shard = Shard {
            chunks: vec![Chunk::default(); cfg.buffer_count],
            files: FileTable {
                exec_id: cfg.exec_id,
                shard: cfg.index,
                ..FileTable::default()
            },
            ring,
            pool,
            cfg,
            fixed_capacity,
            ops: OpTable::default(),
            blocking,
            ready: VecDeque::new(),
            order: Ordering::default(),
            backlog: VecDeque::new(),
            sessions: SessionTable::default(),
            tasks: VecDeque::new(),
            local: Vec::new(),
            timers: Vec::new(),
            timer_free: Vec::new(),
            new_timers: Vec::new(),
            timers_armed: 0,
            parking: false,
            parked_timers: Vec::new(),
            released: Vec::new(),
            stats,
            shared,
            rx,
            wake_armed: false,
            wake_broken: false,
            in_flight: 0,
            cq_capacity,
            closing: false,
            closing_deadline: None,
            cancel_all: false,
            shutdown_waiters: Vec::new(),
            last_scan: Instant::now(),
            cqes: Vec::with_capacity(256),
            clock: None,
            panicked: false,
        };
        shard.arm_wake()?;
        tasks::set_pool_alive(true);
        Ok(shard)
    }

    /// Arms the poll on the wake-up eventfd: a poll holds no memory of ours, so nothing is at
    /// stake if it is still armed when the ring goes.
    fn arm_wake(&mut self) -> Result<()> {
        if self.wake_armed {
            return Ok(());
        }
        let entry = opcode::PollAdd::new(
            types::Fd(self.shared.eventfd.as_raw_fd()),
            libc::POLLIN as u32,
        )
        .build()
        .user_data(WAKE_USER_DATA);
        self.push_entry(&entry)?;
        self.wake_armed = true;
        Ok(())
    }

    /// The wake-up poll completed with `res`: reset the eventfd so the next poll waits again.
    fn on_wake(&mut self, res: i32) {
        self.wake_armed = false;
        if res < 0 {
            // The kernel refused the poll: sleep in short timed waits (rather than spin) until
            // a poll works again.
            self.wake_broken = true;
            return;
        }
        self.wake_broken = false;
        self.stats.note_wakeup();
        reset_eventfd(&self.shared);
    }

    /// Pushes an SQE, submitting first when the queue is full.
    fn push_entry(&mut self, entry: &squeue::Entry) -> Result<()> {
        loop {
            // SAFETY: the entries pushed here (the wake-up poll, cancel, task timers, page-cache
            // reads and writes, and `FileOp` SQEs) point at no memory, at a timer's boxed
            // timespec (kept in `timers` until its CQE), into memory a boxed `FileOp` owns (path
            // strings, a statx buffer, iovec arrays and their buffers: heap memory that stays put
            // when the box moves, left alone by the op until its round's result, and leaked by
            // Drop for Shard while in the kernel), or into the heap buffer of an op's
            // `out`/`data` vector. That buffer is not reallocated, shrunk or freed while the op
            // has an SQE outstanding: the memory path is serial (one SQE at a time), `out` is
            // grown only before an SQE is issued, an op leaves the table (and frees its vectors)
            // only with nothing outstanding, and Drop for Shard leaks the buffers of ops still in
            // the kernel. (The `Op` itself may move when the table grows; its heap buffer does
            // not.)
            if unsafe { self.ring.push(entry) } {
                self.in_flight += 1;
                return Ok(());
            }
            self.stats.note_sq_full();
            self.submit(0)?;
        }
    }

    fn has_cq_room(&mut self) -> bool {
        // Keep the CQ from overflowing: never more in flight than it holds.
        self.in_flight < self.cq_capacity
    }

    fn submit(&mut self, want: usize) -> Result<usize> {
        submit_counted(&mut self.ring, &mut self.stats, want)
    }

    fn run(&mut self) {
        loop {
            self.clock = None;
            let mut progress = self.admit_inbox();
            progress |= self.run_async_tasks();
            if self.tasks.is_empty() {
                progress |= self.issue();
            } else if self.ops_in_flight() == 0 {
                self.run_tasks();
                // Sleeps taken out of the ring for the closures go back in (the time left).
                self.new_timers.append(&mut self.parked_timers);
                progress = true;
            } else if self.ops_in_flight() == self.timers_armed && !self.parking {
                // Only task sleeps keep the ring busy: take them out (TIMEOUT_REMOVE) rather than
                // make the closures wait for them; they are armed again after the closures.
                self.park_timers();
            }
            // With DEFER_TASKRUN, completions that need task work (O_DIRECT, page-cache misses,
            // anything punted) are posted only by an enter with GETEVENTS. The kernel flags such
            // work in the SQ (TASKRUN_FLAG), and `submit` then asks for it: so a loop kept busy
            // by its inbox still runs them every turn.
            let pending = self.ring.sq_len();
            if pending > 0 || (self.ops_in_flight() > 0 && self.ring.taskrun()) {
                // A failed submit is retried next turn; a persistent failure shows in stats.
                let _ = self.submit(0);
            }
            progress |= self.reap() > 0;
            if self.ops.live > 0 || self.closing {
                self.housekeeping();
            }
            self.sessions.deliver();
            if self.closing
                && self.ops.live == 0
                && self.tasks.is_empty()
                && self.backlog.is_empty()
                && self.rx.is_empty()
                && !tasks::has_local()
            {
                return;
            }
            if progress || tasks::has_work() {
                continue;
            }
            // Idle. With I/O in flight, wait in the ring: the next completion or request wakes
            // us. With nothing in flight, spin briefly on the inbox (no system calls: on a busy
            // machine they would take the core from the callers), then sleep.
            if self.ops_in_flight() == 0 && self.can_admit() && self.spin_for_inbox() {
                continue;
            }
            self.sleep();
        }
    }

    /// Admitted ops are bounded: past the bound, requests stay in the inbox (or backlog), and per-
    /// file order lists stay short.
    fn can_admit(&self) -> bool {
        self.ops.live < self.cfg.channel_capacity
    }

    /// Whether requests wait to be admitted.
    fn has_incoming(&self) -> bool {
        !self.backlog.is_empty() || !self.rx.is_empty()
    }

    /// Watches the inbox for up to the configured spin time; true when a message arrived.
    /// Between looks it yields the core: where callers share the shard's core, they run (and
    /// send) instead of waiting for the spin to end; on a core of its own the yield returns at once.
    fn spin_for_inbox(&self) -> bool {
        if self.cfg.spin.is_zero() {
            return false;
        }
        let start = Instant::now();
        loop {
            if self.has_incoming() {
                return true;
            }
            std::thread::yield_now();
            if start.elapsed() >= self.cfg.spin {
                return false;
            }
        }
    }

    /// The time, read at most once per loop turn.
    fn now(&mut self) -> Instant {
        *self.clock.get_or_insert_with(Instant::now)
    }

    /// Nanoseconds since `at`, by this turn's clock.
    fn elapsed_since(&mut self, at: Instant) -> u64 {
        let now = self.now();
        now.saturating_duration_since(at)
            .as_nanos()
            .min(u128::from(u64::MAX)) as u64
    }

    fn ops_in_flight(&self) -> u32 {
        // why: saturating: a completion of a task's own operation reaped by the main loop (a task
        // that returned with it still in flight) makes `in_flight` undercount by one; that must
        // not panic (debug) or wrap to u32::MAX (release: no task would ever run again).
        self.in_flight.saturating_sub(u32::from(self.wake_armed))
    }

    /// Runs deferred completions without blocking.
    fn poll_completions(&mut self) {
        self.ring.get_events();
    }

    /// Blocks until a request (or, with I/O in the kernel, a completion) arrives. With nothing of
    /// its own in the kernel, the shard sleeps on a futex (cheap to wake); otherwise in the ring,
    /// where a completion or the eventfd poll ends the wait. While ops are live the wait is
    /// bounded by [`SCAN_EVERY`], so cancellations and deadlines are seen.
    fn sleep(&mut self) {
        let in_ring = self.ops_in_flight() > 0;
        let mode = if in_ring { IN_RING } else { ON_FUTEX };
        self.shared.sleep.store(mode, AtomicOrdering::Relaxed);
        fence(AtomicOrdering::SeqCst);
        // A message we cannot admit yet (too many ops) is no reason to stay up: the completions
        // that make room come only from waiting in the ring.
        if (self.can_admit() && self.has_incoming()) || tasks::has_work() {
            self.shared.sleep.store(AWAKE, AtomicOrdering::Relaxed);
            return;
        }
        self.stats.note_sleep();
        let bounded = self.ops.live > 0 || self.closing;
        if !in_ring {
            let timeout = bounded.then_some(SCAN_EVERY);
            crate::park::wait(&self.shared.sleep, ON_FUTEX, timeout);
            // A caller flipped the word back (a timeout leaves it ON_FUTEX): a wake-up.
            if self.shared.sleep.load(AtomicOrdering::Acquire) == AWAKE {
                self.stats.note_wakeup();
            }
        } else {
            if self.arm_wake().is_err() {
                self.wake_broken = true;
            }
            if bounded || self.wake_broken {
                match self.ring.submit_and_wait_for(1, SCAN_EVERY) {
                    Ok(_) => {}
                    // ETIME: the timeout passed; EINTR: a signal. Both just end the wait.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
                    // No EXT_ARG (before 5.11): an unbounded wait; scans happen on the next wake.
                    Err(_) => {
                        let _ = self.submit(1);
                    }
                }
            } else {
                let _ = self.submit(1);
            }
        }
        self.shared.sleep.store(AWAKE, AtomicOrdering::Relaxed);
    }

    // -- cancellation and deadlines ---------------------------------------------------------

    /// Every [`SCAN_EVERY`]: cancels what nobody waits for or what is past its deadline, and
    /// ends shutdown's grace period.
    fn housekeeping(&mut self) {
        let now = self.now();
        if now.saturating_duration_since(self.last_scan) < SCAN_EVERY {
            return;
        }
        self.last_scan = now;
        if self.closing && !self.cancel_all && self.closing_deadline.is_some_and(|d| now >= d) {
            self.cancel_all = true;
        }
        for slot in 0..self.ops.slots.len() as u32 {
            let Some(op) = self.ops.get(slot) else {
                continue;
            };
            if op.cancel.is_some() {
                continue;
            }
            let why = if self.cancel_all {
                Some(CancelWhy::Shutdown)
            } else {
                skip_reason(op.kind, &op.io, &op.reply, op.deadline, now, &self.sessions)
            };
            if let Some(why) = why {
                self.cancel(slot, why);
            }
        }
    }

    /// Cancels op `slot`: one the kernel has not seen is finished now; of one in the kernel,
    /// reads (everything, after shutdown's grace) get an ASYNC_CANCEL per SQE, and it finishes
    /// at its completions. Issued writes and syncs finish normally.
    fn cancel(&mut self, slot: u32, why: CancelWhy) {
        let gen = self.ops.gen(slot);
        let Some(op) = self.ops.get(slot) else { return };
        if !op.started() {
            op.cancel = Some(why);
            self.finish(slot);
            return;
        }
        let is_read = matches!(op.io, IoOp::Read { .. });
        if !is_read && why != CancelWhy::Shutdown {
            return;
        }
        op.cancel = Some(why);
        let targets: Vec<u64> = match op.data_path {
            DataPath::Fixed => self
                .chunks
                .iter()
                .enumerate()
                .filter(|(i, c)| c.op == slot && self.pool.is_kernel_owned(*i as u16))
                .map(|(_, c)| c.user_data)
                .collect(),
            _ if op.outstanding > 0 => vec![u64::from(slot) | (u64::from(gen) << SLOT_BITS)],
            _ => Vec::new(),
        };
        if targets.is_empty() {
            // Nothing in the kernel right now (between two SQEs of a long read): done.
            if let Some(op) = self.ops.get(slot) {
                if op.outstanding == 0 {
                    self.finish(slot);
                }
            }
            return;
        }
        let mut sent = false;
        for ud in targets {
            let entry = opcode::AsyncCancel::new(ud)
                .build()
                .user_data(CANCEL_USER_DATA);
            sent |= self.push_entry(&entry).is_ok();
        }
        let Some(op) = self.ops.get(slot) else { return };
        if !sent {
            // Not one cancel went in (the SQ could not be flushed): the next scan tries again.
            op.cancel = None;
            return;
        }
        if why != CancelWhy::Shutdown
            && matches!(
                op.reply,
                Reply::Data(_) | Reply::Count(_) | Reply::Unit(_) | Reply::Size(_)
            )
        {
            // why: a read the kernel cannot stop at once (a stalled device, FUSE) would keep a
            // caller that cancelled it, or whose deadline passed, waiting for the device. The
            // handle gets its error now; the op, its buffer included, stays in the table until
            // its own completion (and is counted then).
            let reply = std::mem::replace(&mut op.reply, Reply::Detached);
            op.answered = true;
            let (kind, path) = (op.kind, Arc::clone(&op.path));
            let e = self.cancel_error(why, kind, Some(&path));
            reply.deliver(Err(e), Vec::new(), &mut self.sessions);
        }
    }

    // -- inbox ---------------------------------------------------------------------------------

    fn admit_inbox(&mut self) -> bool {
        let mut any = false;
        for _ in 0..INBOX_BATCH {
            // The backlog first: it holds requests that arrived before anything in the inbox.
            while self.can_admit() {
                let Some(req) = self.backlog.pop_front() else {
                    break;
                };
                any = true;
                self.admit(req);
            }
            // why: the inbox is read even when the op table is full. Its ops may never finish on
            // their own (reads of a FIFO with no writer), and a shard that stopped reading would
            // never see the shutdown that cancels them, nor answer stats or run tasks: requests
            // read now wait in the backlog, in order, and control messages are handled.
            match self.rx.try_recv() {
                Ok(msg) => {
                    any = true;
                    self.handle(msg);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.closing = true;
                    break;
                }
            }
        }
        if any {
            self.stats
                .note_queued((self.ready.len() + self.order.waiting() + self.backlog.len()) as u64);
        }
        any
    }

    /// Handles one message, from the inbox or from this thread's local queue (see
    /// `tasks::try_local`): the one entry for every source, so requests are admitted in the
    /// order each source sent them.
    fn handle(&mut self, msg: Message) {
        match msg {
            Message::Io(req) => self.admit_in_order(std::iter::once(req)),
            Message::Batch(reqs) => self.admit_in_order(reqs.into_iter()),
            Message::Session { session, reqs, at } => {
                let index = self.sessions.register(session, reqs.len());
                let reqs = reqs.into_iter().map(|r| IoRequest {
                    file: r.file,
                    op: r.op,
                    reply: Reply::Session {
                        session: index,
                        token: r.token,
                    },
                    at,
                    deadline: r.deadline,
                    pending: r.pending,
                });
                self.admit_in_order(reqs);
            }
            Message::Install {
                fd,
                key,
                flags,
                path,
                exec,
                done,
                transit: _transit, // dropped after the install
                count_open,
            } => self.install(fd, key, flags, path, exec, done, count_open),
            Message::Task(t) => self.tasks.push_back(t),
            Message::Run(r) => tasks::push_runnable(r),
            Message::SetExec(exec) => tasks::set_executor(exec),
            Message::Stats(done) => {
                self.stats.pool = self.pool.stats();
                done.complete(Ok(self.stats.clone()));
            }
            Message::Shutdown { grace, done } => {
                if !self.closing {
                    self.closing = true;
                    self.closing_deadline = self.now().checked_add(grace);
                }
                self.shutdown_waiters.extend(done);
            }
        }
    }

    /// Admits `reqs` in order: straight into the op table while there is room and nothing older
    /// waits; the rest waits in the backlog (first in, first admitted), behind what was there.
    fn admit_in_order(&mut self, mut reqs: impl Iterator<Item = IoRequest>) {
        if self.backlog.is_empty() {
            while self.can_admit() {
                let Some(req) = reqs.next() else { return };
                self.admit(req);
            }
        }
        self.backlog.extend(reqs);
    }

    #[allow(clippy::too_many_arguments)]
    fn install(
        &mut self,
        fd: OwnedFd,
        key: FileKey,
        flags: FileFlags,
        path: Arc<Path>,
        exec: Arc<crate::routes::ExecShared>,
        done: Completer<File>,
        count_open: bool,
    ) {
        let at = Instant::now();
        let slot = self.files.next_slot();
        let fixed = (slot < self.fixed_capacity
            && self.ring.register_files_update(slot, &[fd.as_raw_fd()]))
        .then_some(slot);
        self.ring.file_opened(fd.as_raw_fd());
        // SAFETY: fstat writes into the local struct only; fd is the descriptor just received.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above: a valid descriptor and a struct that lives for the call.
        let stat_ok = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0;
        let size_hint = if stat_ok {
            st.st_size.max(0) as u64
        } else {
            0 // unknown: every read is ordered as if it could reach the end of the file
        };
        // Inline reads (on callers' threads) only of regular files read through the page cache:
        // a FIFO or a device has no offsets to read at, and O_DIRECT waits for the device.
        let regular = stat_ok && st.st_mode & libc::S_IFMT == libc::S_IFREG;
        let inline = Arc::new(InlineFile::new(
            fd.as_raw_fd(),
            regular && flags.readable && !flags.direct && !flags.directory,
            self.files.open_inode(key, size_hint),
        ));
        let direct_align = flags
            .direct
            .then(|| crate::file::DirectIoAlign::of(fd.as_raw_fd()));
        let (slot, gen) = self.files.insert(FileEntry {
            fd,
            fixed,
            key,
            flags,
            path: Arc::clone(&path),
            closing: false,
            inline_paused_until: None,
            inline: Arc::clone(&inline),
        });
        if count_open {
            self.stats.record(OpKind::Open, 0, elapsed_ns(at));
        }
        // Made here, so that a handle dropped by a caller who no longer waits still closes the
        // file (its drop sends the close).
        done.complete(Ok(File {
            inner: Arc::new(FileInner {
                handle: FileRef {
                    exec: self.cfg.exec_id,
                    shard: self.cfg.index,
                    slot,
                    gen,
                },
                key,
                flags,
                path,
                exec,
                closed: AtomicBool::new(false),
                inline,
                direct_align,
            }),
        }));
    }

    /// Checks a request and queues it as an op.
    fn admit(&mut self, req: IoRequest) {
        let IoRequest {
            file,
            mut op,
            reply,
            at,
            deadline,
            pending,
        } = req;
        let now = self.now();
        if let Some(why) = skip_reason(op.kind(), &op, &reply, deadline, now, &self.sessions) {
            let err = self.cancel_error(why, op.kind(), None);
            op.fail(reply, err, &mut self.sessions);
            return;
        }
        if let IoOp::File(f) = &op {
            if let Some(target) = f.path_target() {
                self.admit_path(target, op, reply, at, deadline);
                return;
            }
        }
        let (entry, inode) = match self.files.lookup_with_inode(file) {
            Ok(e) => e,
            Err(e) => {
                self.stats.record_error(
                    op.kind(),
                    e.errno().unwrap_or(libc::EBADF),
                    elapsed_ns(at),
                );
                op.fail(reply, e, &mut self.sessions);
                return;
            }
        };
        let kind = op.kind();
        let (offset, len) = op.range();
        let data_path = match (&op, entry.flags.direct) {
            (IoOp::Read { .. } | IoOp::Write { .. }, true) => DataPath::Fixed,
            (IoOp::Write { .. }, false) if self.cfg.inline_buffered_writes => DataPath::Inline,
            _ => DataPath::Memory,
        };
        if matches!(reply, Reply::Lease(_)) {
            // A pooled read fills exactly one pool buffer, in place.
            let chunk = self.pool.buffer_size() as u64 / DIRECT_ALIGN * DIRECT_ALIGN;
            if data_path != DataPath::Fixed || len > chunk || !matches!(op, IoOp::Read { .. }) {
                let e = Error::invalid(
                    "read_pooled",
                    format!(
                        "a pooled read is an O_DIRECT read of at most one pool buffer \
                         ({chunk} bytes); got {len} bytes{}",
                        if data_path == DataPath::Fixed {
                            ""
                        } else {
                            " on a file without O_DIRECT"
                        }
                    ),
                );
                op.fail(reply, e, &mut self.sessions);
                return;
            }
        }
        let fp = match &op {
            IoOp::Read { .. } => crate::op::read::footprint(offset, len, inode.size_hint),
            IoOp::Write { .. } => crate::op::write::footprint(offset, len, entry.flags.append),
            IoOp::File(f) => {
                let fp = f.footprint(inode.size_hint);
                f.size_at_admit(&mut inode.size_hint);
                if f.sets_size() {
                    inode.size_setters += 1;
                }
                fp
            }
            IoOp::Close(_) => {
                entry.closing = true;
                Footprint::Barrier
            }
        };
        // An inline attempt's part of a page-cache read stays in the result: the shard reads
        // the rest (the memory path continues from `transferred`).
        let kept = match &op {
            IoOp::Read { kept, buf, .. } if data_path == DataPath::Memory => {
                (*kept as usize).min(buf.len()).min(len as usize)
            }
            _ => 0,
        };
        let op = Op {
            kind,
            key: entry.key,
            file_slot: file.slot,
            target: entry.target(),
            path: Arc::clone(&entry.path),
            offset,
            len,
            issued: kept as u64,
            outstanding: 0,
            eof: None,
            errno: None,
            serial: entry.flags.append || data_path != DataPath::Fixed,
            data_path,
            transferred: kept as u64,
            written_to: u64::MAX,
            answered: false,
            queued: false,
            at,
            deadline,
            cancel: None,
            out: match &mut op {
                IoOp::Read { buf, .. } => {
                    let mut b = std::mem::take(buf);
                    b.truncate(kept);
                    b
                }
                _ => Vec::new(),
            },
            io: op,
            reply,
            lent: None,
            pending,
        };
        let key = op.key;
        let slot = self.ops.insert(op);
        if self.order.admit(key, slot, fp) {
            self.enqueue(slot);
        }
    }

    /// Admits an operation on a path: ordered in its directory's order list by its footprint
    /// (unlink, mkdir, rename: barriers; stat: a read, side by side with other stats, after
    /// earlier mutations); it names no open file.
    fn admit_path(
        &mut self,
        target: crate::op::PathTarget,
        io: IoOp,
        reply: Reply,
        at: Instant,
        deadline: Option<Instant>,
    ) {
        let op = Op {
            kind: io.kind(),
            key: target.key,
            file_slot: PATH_SLOT,
            target: Target::Fd(libc::AT_FDCWD),
            path: target.path,
            offset: 0,
            len: 0,
            issued: 0,
            outstanding: 0,
            eof: None,
            errno: None,
            serial: true,
            data_path: DataPath::Memory,
            transferred: 0,
            written_to: u64::MAX,
            answered: false,
            queued: false,
            at,
            deadline,
            cancel: None,
            out: Vec::new(),
            io,
            reply,
            lent: None,
            pending: None,
        };
        let fp = match &op.io {
            IoOp::File(f) => f.footprint(0),
            _ => Footprint::Barrier,
        };
        let key = op.key;
        let slot = self.ops.insert(op);
        if self.order.admit(key, slot, fp) {
            self.enqueue(slot);
        }
    }

    /// The error a cancelled op completes with.
    /// The error of an op cancelled for `why`, counted in the stats.
    fn cancel_error(&mut self, why: CancelWhy, kind: OpKind, path: Option<&Path>) -> Error {
        match why {
            CancelWhy::Deadline => self.stats.note_deadline_exceeded(),
            CancelWhy::Dropped | CancelWhy::Shutdown => self.stats.note_cancelled(),
        }
        cancel_error_of(why, kind, path)
    }

    fn enqueue(&mut self, slot: u32) {
        if let Some(op) = self.ops.get(slot) {
            if !op.queued {
                op.queued = true;
                self.ready.push_back(slot);
            }
        }
    }

    // -- issuing -------------------------------------------------------------------------------

    /// Issues SQEs for ready ops, in order, until buffers or CQ room run out.
    fn issue(&mut self) -> bool {
        let mut any = false;
        let mut issued = 0usize;
        while let Some(&slot) = self.ready.front() {
            if issued >= ISSUE_BATCH {
                break;
            }
            let Some(op) = self.ops.get(slot) else {
                self.ready.pop_front();
                continue;
            };
            if !op.more_to_issue() {
                op.queued = false;
                self.ready.pop_front();
                if op.finished() {
                    self.finish(slot);
                }
                continue;
            }
            let fresh = !op.started();
            if !self.has_cq_room() {
                break;
            }
            if fresh {
                // Dropped or past its deadline while it waited: it never runs.
                let now = self.now();
                let why = self.ops.get(slot).and_then(|op| {
                    skip_reason(op.kind, &op.io, &op.reply, op.deadline, now, &self.sessions)
                });
                if let Some(why) = why {
                    if let Some(op) = self.ops.get(slot) {
                        op.cancel = Some(why);
                    }
                    self.finish(slot);
                    any = true;
                    continue;
                }
            }
            match self.issue_one(slot) {
                Ok(true) => {
                    any = true;
                    issued += 1;
                }
                Ok(false) => break, // no free buffer: wait for completions
                Err(e) => {
                    // Pushing failed for a reason that will not pass: fail the op.
                    if let Some(op) = self.ops.get(slot) {
                        op.errno.get_or_insert(e.errno().unwrap_or(libc::EIO));
                    }
                    any = true;
                }
            }
        }
        if any {
            self.stats.note_in_flight(u64::from(self.ops_in_flight()));
        }
        any
    }

    /// Issues the next SQE of op `slot`. `Ok(false)`: it needs a buffer and none is free.
    fn issue_one(&mut self, slot: u32) -> Result<bool> {
        let gen = self.ops.gen(slot);
        let now = self.now();
        let Some(op) = self.ops.get(slot) else {
            return Ok(true);
        };
        if op.data_path == DataPath::Inline {
            let paused = self
                .files
                .get(op.file_slot)
                .and_then(|e| e.inline_paused_until)
                .is_some_and(|until| now < until);
            if paused {
                // A recent write of this file stalled the shard: this one waits in the kernel.
                op.data_path = DataPath::Memory;
            }
        }
        let user_data = u64::from(slot) | (u64::from(gen) << SLOT_BITS);
        let entry = match (&op.io, op.data_path) {
            (IoOp::Read { .. } | IoOp::Write { .. }, DataPath::Fixed) => {
                return self.issue_chunk(slot)
            }
            (IoOp::Write { .. }, DataPath::Inline) => {
                self.write_inline(slot);
                return Ok(true);
            }
            (IoOp::Read { .. }, DataPath::Memory) => {
                let at = op.transferred;
                // Grow as data arrives (READ_STEP, then doubling): memory stays within about
                // twice what the read returns, whatever length it asked for.
                let n = crate::op::read::next_sqe_len(op.len, at, MAX_SQE_BYTES);
                // `out.len()` is `at` (set after each completion): room for `n` more.
                op.out.reserve_exact(n as usize);
                // SAFETY (pointer arithmetic): `out` has capacity >= len + n = at + n, so the
                // pointer is inside (or one past) its allocation.
                let ptr = unsafe { op.out.as_mut_ptr().add(at as usize) };
                let off = op.offset + at;
                op.issued = at + n;
                let flags = op.io.rw_flags();
                match op.target {
                    Target::Fixed(s) => opcode::Read::new(types::Fixed(s), ptr, n as u32)
                        .offset(off)
                        .rw_flags(flags)
                        .build(),
                    Target::Fd(fd) => opcode::Read::new(types::Fd(fd), ptr, n as u32)
                        .offset(off)
                        .rw_flags(flags)
                        .build(),
                }
            }
            (IoOp::Write { data, flags, .. }, _) => {
                let (at, n) = (op.transferred, (op.len - op.transferred).min(MAX_SQE_BYTES));
                // SAFETY (pointer arithmetic): at + n <= data.len().
                let ptr = unsafe { data.as_ptr().add(at as usize) };
                let off = op.offset + at;
                op.issued = at + n;
                match op.target {
                    Target::Fixed(s) => opcode::Write::new(types::Fixed(s), ptr, n as u32)
                        .offset(off)
                        .rw_flags(*flags)
                        .build(),
                    Target::Fd(fd) => opcode::Write::new(types::Fd(fd), ptr, n as u32)
                        .offset(off)
                        .rw_flags(*flags)
                        .build(),
                }
            }
            (IoOp::Read { .. }, _) => return self.issue_chunk(slot),
            (IoOp::File(_), _) => return self.issue_file_op(slot),
            (IoOp::Close(_), _) => {
                // Synchronous and cheap: run it here, in order.
                op.issued = 1;
                self.run_close(slot);
                return Ok(true);
            }
        };
        self.push_entry(&entry.user_data(user_data))?;
        if let Some(op) = self.ops.get(slot) {
            op.outstanding = 1;
        }
        Ok(true)
    }

    fn issue_chunk(&mut self, slot: u32) -> Result<bool> {
        // O_DIRECT needs every chunk (offset and length) aligned: use whole 4 KiB blocks of the
        // buffer, whatever its size.
        let buffer_size = self.pool.buffer_size() as u64;
        let chunk_size = buffer_size - buffer_size % DIRECT_ALIGN;
        if chunk_size == 0 {
            if let Some(op) = self.ops.get(slot) {
                op.errno.get_or_insert(libc::EINVAL);
            }
            return Ok(true);
        }
        let Some((idx, _)) = self.pool.try_acquire() else {
            self.stats.note_pool_exhausted();
            return Ok(false);
        };
        let Some(op) = self.ops.get(slot) else {
            self.pool.release(idx);
            return Ok(true);
        };
        let rel = op.issued;
        let len = (op.len - rel).min(chunk_size) as u32;
        let dir = match &op.io {
            IoOp::Write { data, .. } => {
                let src = &data[rel as usize..rel as usize + len as usize];
                // The buffer was just acquired, so it is not in flight; if the pool refused it
                // anyway, writing whatever it held would put other bytes on disk: fail instead.
                match self.pool.get_mut(idx) {
                    Ok(buf) => buf[..len as usize].copy_from_slice(src),
                    Err(_) => {
                        debug_assert!(false, "a just-acquired pool buffer was refused");
                        op.errno.get_or_insert(libc::EIO);
                        self.pool.release(idx);
                        return Ok(true);
                    }
                }
                Direction::Write
            }
            _ => Direction::Read,
        };
        op.issued += u64::from(len);
        op.outstanding += 1;
        self.chunks[idx as usize] = Chunk {
            op: slot,
            rel,
            len,
            done: 0,
            rewound: 0,
            user_data: 0,
        };
        if let Err(e) = self.push_chunk(dir, idx) {
            if let Some(op) = self.ops.get(slot) {
                op.outstanding -= 1;
                // Never issued: a failed write's known-written prefix ends before this chunk.
                op.written_to = op.written_to.min(rel);
            }
            self.pool.release(idx);
            return Err(e);
        }
        Ok(true)
    }

    /// Pushes (or re-pushes, after a short transfer) the SQE of the chunk in buffer `idx`.
    fn push_chunk(&mut self, dir: Direction, idx: u16) -> Result<()> {
        let ch = self.chunks[idx as usize];
        let Some(op) = self.ops.get(ch.op) else {
            return Err(Error::invalid("issue", "chunk without op"));
        };
        let (target, file_off) = (op.target, op.offset + ch.rel + u64::from(ch.done));
        let rw_flags = op.io.rw_flags();
        let entry = self.pool.prepare_at(
            dir,
            target,
            idx,
            ch.done as usize,
            file_off,
            ch.len - ch.done,
            rw_flags,
        )?;
        loop {
            match self.pool.push_prepared(&mut self.ring, entry.clone(), idx) {
                Ok(user_data) => {
                    self.in_flight += 1;
                    self.chunks[idx as usize].user_data = user_data;
                    return Ok(());
                }
                Err(Error::SubmissionQueueFull) => {
                    self.stats.note_sq_full();
                    self.submit(0)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Issues the next round of a [`FileOp`](crate::op::FileOp): its SQE, or, where the kernel
    /// lacks its opcode (or the kind is forced there, or the op has no SQE), its blocking call on
    /// this thread, finished at once.
    fn issue_file_op(&mut self, slot: u32) -> Result<bool> {
        let gen = self.ops.gen(slot);
        let raw = self.fd_of(slot);
        let Some(op) = self.ops.get(slot) else {
            return Ok(true);
        };
        let blocking = self.blocking[op.kind.index()];
        let target = op.target;
        let IoOp::File(f) = &mut op.io else {
            return Ok(true);
        };
        op.issued = 1;
        let entry = if blocking {
            None
        } else {
            f.sqe(crate::op::OpFd { target, raw })
        };
        let entry = match entry {
            Some(entry) => entry,
            None => {
                let res = f.run_blocking(raw);
                self.file_op_result(slot, res, raw);
                return Ok(true);
            }
        };
        let user_data = u64::from(slot) | (u64::from(gen) << SLOT_BITS);
        self.push_entry(&entry.user_data(user_data))?;
        if let Some(op) = self.ops.get(slot) {
            op.outstanding = 1;
        }
        Ok(true)
    }

    /// A round of a [`FileOp`](crate::op::FileOp) ended with `res` (a CQE's or its blocking
    /// call's): another round, or finish.
    fn file_op_result(&mut self, slot: u32, res: i32, raw: RawFd) {
        let Some(op) = self.ops.get(slot) else { return };
        op.outstanding = 0;
        let IoOp::File(f) = &mut op.io else { return };
        let again = match res {
            r if r == -libc::EINTR => true,
            r if r < 0 => {
                op.errno = Some(-r);
                false
            }
            r => f.on_result(r, raw) == crate::op::Step::Again,
        };
        if again && op.cancel.is_none() {
            op.issued = 0;
            // Counts finished rounds: the op has started, so it is not skipped between rounds
            // (a half-done vectored write is not cut short by a dropped handle).
            op.transferred += 1;
            self.enqueue(slot);
        } else {
            self.finish(slot);
        }
    }

    /// Closes op `slot`'s file (removes it from the file table and the ring's registered
    /// files), then finishes the close.
    fn run_close(&mut self, slot: u32) {
        let Some(op) = self.ops.get(slot) else { return };
        let file_slot = op.file_slot;
        if let Some(entry) = self.files.remove(file_slot) {
            if let Some(fixed) = entry.fixed {
                // Drops the ring's reference; refused, it stays until the ring closes.
                let _ = self.ring.register_files_update(fixed, &[-1]);
            }
            self.ring.file_closing(entry.fd());
            drop(entry); // closes the descriptor
        }
        self.finish(slot);
    }

    // -- completions ---------------------------------------------------------------------------

    fn reap(&mut self) -> usize {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        self.ring.completions(&mut cqes);
        let n = cqes.len();
        for &(ud, res) in &cqes {
            self.in_flight = self.in_flight.saturating_sub(1);
            if ud == WAKE_USER_DATA {
                // Re-armed before the next sleep.
                self.on_wake(res);
                continue;
            }
            if ud == CANCEL_USER_DATA {
                // The cancelled op reports through its own completion.
                continue;
            }
            if ud & (TIMER_TAG | crate::pool::POOL_USER_DATA_TAG) == TIMER_TAG {
                self.timer_fired((ud & !TIMER_TAG) as usize, res);
                continue;
            }
            match RegisteredBufferPool::buffer_index_of(ud) {
                Some(idx) => self.complete_chunk(idx, ud, res),
                None => self.complete_plain(ud, res),
            }
        }
        self.cqes = cqes;
        n
    }

    fn complete_plain(&mut self, ud: u64, res: i32) {
        let slot = (ud & SLOT_MASK) as u32;
        if u64::from(self.ops.gen(slot)) != (ud >> SLOT_BITS) & GEN_MASK {
            return; // stale: cannot happen while slots outlive their SQEs, but never misroute
        }
        let Some(op) = self.ops.get(slot) else { return };
        if matches!(op.io, IoOp::File(_)) {
            let raw = self.fd_of(slot);
            self.file_op_result(slot, res, raw);
            return;
        }
        op.outstanding = op.outstanding.saturating_sub(1);
        if op.data_path == DataPath::Memory
            && matches!(op.io, IoOp::Read { .. } | IoOp::Write { .. })
        {
            let is_read = matches!(op.io, IoOp::Read { .. });
            match res {
                r if r < 0 && crate::op::rw::retried(-r, op.io.rw_flags()) => {}
                r if r < 0 => op.errno = Some(-r),
                // A read of 0 bytes is the end of the file; a write of 0 would loop forever.
                0 if is_read => op.eof = Some(op.transferred),
                0 => op.errno = Some(libc::EIO),
                r => {
                    op.transferred += r as u64;
                    if is_read {
                        debug_assert!(op.out.len() + r as usize == op.transferred as usize);
                        // SAFETY: the kernel initialized bytes up to `transferred`, which is
                        // within the capacity reserved before the read was issued.
                        unsafe { op.out.set_len(op.transferred as usize) };
                    }
                }
            }
            // The rest of a short transfer (or a retry) goes out next turn.
            op.issued = op.transferred;
            if !op.finished() {
                self.enqueue(slot);
                return;
            }
        } else if res < 0 {
            op.errno = Some(-res);
        }
        self.finish(slot);
    }

    /// Writes a buffered write with `pwrite` on this thread, then finishes it.
    fn write_inline(&mut self, slot: u32) {
        let fd = self.fd_of(slot);
        let inline_stall = self.cfg.inline_write_stall;
        let Some(op) = self.ops.get(slot) else { return };
        // why: one system call that blocked, not a long write: a big write copies for a while
        // (allowed at 1 GB/s), and a write made of many short ones (FUSE) takes many calls.
        let mut stalled = false;
        let mut each_call = |took: Duration, bytes: usize| {
            // The threshold, plus 1 ns per byte asked: a page-cache write copies at GB/s.
            let slow = inline_stall.unwrap_or(Duration::MAX);
            stalled |= took > slow.saturating_add(Duration::from_nanos(bytes as u64));
        };
        // With detection off, no clock is read around the writes.
        let timing = inline_stall
            .is_some()
            .then_some(&mut each_call as &mut dyn FnMut(_, _));
        if let IoOp::Write { data, .. } = &op.io {
            // fd is the op's file, open until its close op, which cannot run before this one
            // finishes (close is a barrier).
            match crate::op::rw::pwrite_all_timed(fd, data, op.offset, op.io.rw_flags(), timing) {
                Ok(n) => op.transferred = n as u64,
                Err((done, errno)) => {
                    op.transferred = done as u64;
                    op.errno = Some(errno);
                }
            }
        }
        op.issued = op.len;
        let file_slot = op.file_slot;
        if stalled {
            let now = Instant::now();
            if let Some(entry) = self.files.get_mut(file_slot) {
                entry.inline_paused_until = now.checked_add(INLINE_PAUSE);
            }
            // The turn's clock is far behind now: later reads of it take the time after this.
            self.clock = Some(now);
        }
        self.finish(slot);
    }

    /// The raw descriptor of op `slot`'s file.
    fn fd_of(&mut self, slot: u32) -> RawFd {
        let Some(op) = self.ops.get(slot) else {
            return -1;
        };
        match op.target {
            Target::Fd(fd) => fd,
            Target::Fixed(_) => {
                let file_slot = op.file_slot;
                self.files.get(file_slot).map_or(-1, FileEntry::fd)
            }
        }
    }

    fn complete_chunk(&mut self, idx: u16, ud: u64, res: i32) {
        // Only a completion of an operation the pool has in flight counts: never a stale one.
        if (idx as usize) >= self.chunks.len() || self.pool.complete_user_data(ud).is_none() {
            return;
        }
        let mut ch = self.chunks[idx as usize];
        let Some(op) = self.ops.get(ch.op) else {
            self.pool.release(idx);
            return;
        };
        let is_read = matches!(op.io, IoOp::Read { .. });
        let lease = matches!(op.reply, Reply::Lease(_));
        let dir = if is_read {
            Direction::Read
        } else {
            Direction::Write
        };
        let mut retry = false;
        if res < 0 {
            if crate::op::rw::retried(-res, op.io.rw_flags()) {
                retry = true;
            } else {
                op.errno.get_or_insert(-res);
            }
        } else if res == 0 {
            if is_read {
                let end = ch.rel + u64::from(ch.done);
                op.eof = Some(op.eof.map_or(end, |e| e.min(end)));
            } else {
                // A write that makes no progress would loop forever.
                op.errno.get_or_insert(libc::EIO);
            }
        } else {
            ch.done += res as u32;
            if ch.done < ch.len && u64::from(ch.done) % DIRECT_ALIGN != 0 {
                if is_read {
                    // A short O_DIRECT read that ends inside a block is the end of the file.
                    let end = ch.rel + u64::from(ch.done);
                    op.eof = Some(op.eof.map_or(end, |e| e.min(end)));
                } else if ch.done <= ch.rewound {
                    // why: the kernel may cut the rewritten block short at the same point again
                    // (it had room for the partial block and no more, or RLIMIT_FSIZE ends
                    // there); rewriting it again would never end, with the shard spinning.
                    let end = op.offset + ch.rel + u64::from(ch.done);
                    op.errno.get_or_insert(short_direct_write_errno(end));
                } else {
                    // The rest must start on a block: write the partial block again (same bytes),
                    // so the retry is aligned and reports the real error (ENOSPC), not EINVAL.
                    ch.rewound = ch.done;
                    ch.done -= (u64::from(ch.done) % DIRECT_ALIGN) as u32;
                    retry = true;
                }
            } else {
                retry = ch.done < ch.len;
            }
            self.chunks[idx as usize].done = ch.done;
            self.chunks[idx as usize].rewound = ch.rewound;
        }
        if retry && op.errno.is_none() && op.cancel.is_none() {
            if self.push_chunk(dir, idx).is_ok() {
                return;
            }
            if let Some(op) = self.ops.get(ch.op) {
                op.errno.get_or_insert(libc::EIO);
            }
        }
        let Some(op) = self.ops.get(ch.op) else {
            return;
        };
        if !is_read && ch.done < ch.len {
            // This chunk ends the prefix of the write known to be on disk.
            op.written_to = op.written_to.min(ch.rel + u64::from(ch.done));
        }
        if is_read && ch.done > 0 && !lease {
            // Grows only as far as data has arrived (chunks may land out of order; the gaps are
            // filled by their own chunks or cut at end of file).
            let (start, end) = (ch.rel as usize, ch.rel as usize + ch.done as usize);
            if op.out.len() < end {
                op.out.resize(end, 0);
            }
            match self.pool.get(idx) {
                Ok(buf) => op.out[start..end].copy_from_slice(&buf[..ch.done as usize]),
                Err(_) => {
                    // Matched above, so the pool holds it for us; never return zeros as data.
                    debug_assert!(false, "a completed pool buffer was refused");
                    op.errno.get_or_insert(libc::EIO);
                }
            }
        }
        op.outstanding -= 1;
        if lease {
            // The data stays in the buffer: it is the task's until its guard is dropped.
            op.lent = Some(idx);
        } else {
            self.pool.release(idx);
        }
        let slot = ch.op;
        if op.finished() {
            self.finish(slot);
        } else if op.more_to_issue() {
            self.enqueue(slot);
        }
    }

    /// Completes op `slot`'s handle, counts it, and lets the next ops of its file go.
    fn finish(&mut self, slot: u32) {
        let Some(mut op) = self.ops.remove(slot) else {
            return;
        };
        // The op is over (nothing of it in the kernel): a mutation no longer holds back inline
        // reads of its inode. Before its handle completes, so a caller that waited for it reads
        // inline at once.
        drop(op.pending.take());
        // why: an op can finish while still queued (a read that met end of file, or failed, while
        // waiting at the head of `ready` for a buffer). Its slot is freed and the next admitted op
        // reuses it; a stale entry left here would issue that op ahead of the ops it must wait for.
        if op.queued {
            if let Some(pos) = self.ready.iter().position(|&s| s == slot) {
                self.ready.remove(pos);
            }
        }
        let before = self.ready.len();
        self.order.finish(op.key, slot, &mut self.ready);
        // Ops made ready by `order.finish` are queued now.
        for i in before..self.ready.len() {
            let s = self.ready[i];
            if let Some(o) = self.ops.get(s) {
                o.queued = true;
            }
        }
        let lat = self.elapsed_since(op.at);
        if lat >= self.cfg.slow_op_ns {
            crate::logging::slow_op(self.cfg.index, op.kind, &op.path, lat, op.errno);
        }
        if let IoOp::File(f) = op.io {
            self.finish_file_op(
                f,
                op.reply,
                op.cancel,
                op.errno,
                &op.path,
                op.file_slot,
                lat,
            );
            return;
        }
        let Op {
            kind,
            mut io,
            reply,
            out,
            cancel,
            errno,
            path,
            offset,
            len,
            eof,
            lent,
            file_slot,
            data_path,
            issued,
            transferred,
            written_to,
            answered,
            ..
        } = op;
        let buf = if kind == OpKind::Read {
            out
        } else {
            io.take_buf()
        };
        let result = if let Some(why) = cancel {
            // A cancelled op that the kernel had started is counted as the error it got too.
            if let Some(errno) = errno {
                self.stats.record_error(kind, errno, lat);
            }
            if answered {
                // Its handle got (and the stats counted) this error when it was cancelled.
                Err(cancel_error_of(why, kind, Some(&path)))
            } else {
                Err(self.cancel_error(why, kind, Some(&path)))
            }
        } else if let Some(errno) = errno {
            self.stats.record_error(kind, errno, lat);
            let offset = matches!(io, IoOp::Read { .. } | IoOp::Write { .. }).then_some(offset);
            let e = Error::io(kind.name(), Some(path.to_path_buf()), offset, errno);
            Err(match io {
                // How much of a failed write is known to be written, from its offset on: the
                // chunks of an O_DIRECT write run in parallel, so its prefix ends at the first
                // chunk that stopped short (or the first never issued); the other paths are
                // serial and count what moved.
                IoOp::Write { .. } => e.with_written(match data_path {
                    DataPath::Fixed => written_to.min(issued).min(len),
                    _ => transferred.min(len),
                }),
                _ => e,
            })
        } else {
            match io {
                IoOp::Read { .. } => {
                    let n = eof.unwrap_or(len).min(len);
                    self.stats.record(kind, n, lat);
                    Ok(n)
                }
                IoOp::Write { .. } => {
                    self.stats.record(kind, len, lat);
                    Ok(len)
                }
                IoOp::File(_) | IoOp::Close(_) => {
                    self.stats.record(kind, 0, lat);
                    Ok(0)
                }
            }
        };
        if let Reply::Lease(c) = reply {
            self.lend(c, result, lent);
            return;
        }
        if let Ok(n) = &result {
            self.note_size(file_slot, &io, offset, *n);
        }
        let buf = match (&result, kind) {
            (Ok(n), OpKind::Read) => {
                let mut b = buf;
                b.truncate(*n as usize);
                b
            }
            _ => buf,
        };
        reply.deliver(result, buf, &mut self.sessions);
    }

    /// Completes a [`FileOp`](crate::op::FileOp): its outcome to its handle, its known-size
    /// change to the file (on success), the stats.
    #[allow(clippy::too_many_arguments)]
    fn finish_file_op(
        &mut self,
        mut f: Box<dyn crate::op::FileOp>,
        reply: Reply,
        cancel: Option<CancelWhy>,
        errno: Option<i32>,
        path: &Path,
        file_slot: u32,
        lat: u64,
    ) {
        let kind = f.kind();
        let result = if let Some(why) = cancel {
            if let Some(errno) = errno {
                self.stats.record_error(kind, errno, lat);
            }
            Err(self.cancel_error(why, kind, Some(path)))
        } else if let Some(errno) = errno {
            self.stats.record_error(kind, errno, lat);
            Err(f.error(errno, path))
        } else {
            if let Some(inode) = self.files.inode_of(file_slot) {
                if inode.size_setters == 0 || f.sets_size() {
                    f.size_after(&mut inode.size_hint);
                }
            }
            Ok(())
        };
        if f.sets_size() {
            if let Some(inode) = self.files.inode_of(file_slot) {
                inode.size_setters = inode.size_setters.saturating_sub(1);
            }
        }
        let ok = result.is_ok();
        let bytes = reply.deliver_outcome(f.complete(result), &mut self.sessions);
        if ok {
            self.stats.record(kind, bytes, lat);
        }
    }

    /// Raises the file's known size after a successful read or write (`n`: bytes moved).
    fn note_size(&mut self, file_slot: u32, io: &IoOp, offset: u64, n: u64) {
        let Some(append) = self.files.get(file_slot).map(|e| e.flags.append) else {
            return;
        };
        let Some(inode) = self.files.inode_of(file_slot) else {
            return;
        };
        let at_least = match io {
            // A set_len admitted after this op will set the size: what this op saw is stale.
            _ if inode.size_setters > 0 => return,
            IoOp::Read { .. } => match crate::op::read::size_at_least(offset, n) {
                Some(s) => s,
                None => return,
            },
            IoOp::Write { .. } => match crate::op::write::size_at_least(offset, n, append) {
                Some(s) => s,
                None => return,
            },
            _ => return,
        };
        inode.size_hint = inode.size_hint.max(at_least);
    }

    // -- async tasks ---------------------------------------------------------------------------

    /// One batch of async tasks (at most [`TASK_BUDGET`] polls), then what was sent on this
    /// thread to this shard (by the tasks, by `submit_to` closures, by handles dropped here) is
    /// handled like the inbox's messages, in the order sent, and the tasks' sleeps are armed in
    /// the ring.
    fn run_async_tasks(&mut self) -> bool {
        let (ran, slow) = tasks::run_batch(TASK_BUDGET);
        self.take_back_lent();
        if ran > 0 {
            self.stats.note_task_polls(ran as u64, slow);
        }
        let mut any = ran > 0;
        let mut msgs = std::mem::take(&mut self.local);
        tasks::take_local(&mut msgs);
        if !msgs.is_empty() {
            any = true;
            for msg in msgs.drain(..) {
                self.handle(msg);
            }
        }
        self.local = msgs;
        tasks::take_timers(&mut self.new_timers);
        self.remove_dropped_timers();
        // While submit_to closures wait for a quiet ring, new sleeps wait with them.
        if !self.new_timers.is_empty() && self.tasks.is_empty() {
            any = true;
            let mut new = std::mem::take(&mut self.new_timers);
            for t in new.drain(..) {
                self.arm_timer(t);
            }
            self.new_timers = new;
        }
        any
    }

    /// Takes the sleeps whose `Sleep` was dropped out of the ring (TIMEOUT_REMOVE): left there,
    /// each would hold a CQ slot until it expired, and enough of them stop the shard's I/O.
    fn remove_dropped_timers(&mut self) {
        let mut dropped = Vec::new();
        tasks::take_dropped_timers(&mut dropped);
        for t in dropped {
            let index = t.slot.load(AtomicOrdering::Relaxed);
            let armed = matches!(self.timers.get(index), Some(Some((a, _))) if Arc::ptr_eq(a, &t));
            if !armed {
                continue; // not armed yet (arm_timer skips it), or already fired
            }
            let entry = opcode::TimeoutRemove::new(TIMER_TAG | index as u64)
                .build()
                .user_data(CANCEL_USER_DATA);
            // A failed push leaves that sleep to expire on its own.
            let _ = self.push_entry(&entry);
        }
    }

    /// Pushes an `IORING_OP_TIMEOUT` for a task's sleep.
    fn arm_timer(&mut self, t: Arc<TimerState>) {
        if t.is_dropped() {
            return; // its Sleep is gone: nobody to wake
        }
        let left = t.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            t.fire();
            return;
        }
        let ts = Box::new(types::Timespec::from(left));
        let entry = opcode::Timeout::new(&*ts as *const types::Timespec).build();
        let index = match self.timer_free.pop() {
            Some(i) => i,
            None => {
                self.timers.push(None);
                self.timers.len() - 1
            }
        };
        let entry = entry.user_data(TIMER_TAG | index as u64);
        t.slot.store(index, AtomicOrdering::Relaxed);
        self.timers[index] = Some((t, ts));
        if self.push_entry(&entry).is_ok() {
            self.timers_armed += 1;
        } else {
            // The ring refused it: wake the sleeper now rather than never.
            if let Some((t, _)) = self.timers[index].take() {
                t.fire();
            }
            self.timer_free.push(index);
        }
    }

    fn timer_fired(&mut self, index: usize, res: i32) {
        if let Some((t, _ts)) = self.timers.get_mut(index).and_then(Option::take) {
            self.timers_armed = self.timers_armed.saturating_sub(1);
            self.timer_free.push(index);
            if self.parking && res == -libc::ECANCELED && !t.is_dropped() {
                // Removed for the closures, not expired: armed again after them.
                self.parked_timers.push(t);
            } else {
                t.fire();
            }
            if self.timers_armed == 0 {
                self.parking = false;
            }
        }
    }

    /// Asks the kernel to remove every armed sleep (their CQEs come back with ECANCELED).
    fn park_timers(&mut self) {
        self.parking = true;
        let armed: Vec<u64> = self
            .timers
            .iter()
            .enumerate()
            .filter(|(_, t)| t.is_some())
            .map(|(i, _)| TIMER_TAG | i as u64)
            .collect();
        for ud in armed {
            let entry = opcode::TimeoutRemove::new(ud)
                .build()
                .user_data(CANCEL_USER_DATA);
            // A failed push leaves that sleep to expire on its own.
            let _ = self.push_entry(&entry);
        }
    }

    /// Finishes a pooled read: on success the buffer is lent to the task (released when its
    /// guard is dropped, see [`tasks::take_released`]); otherwise it goes back now.
    fn lend(&mut self, c: Completer<tasks::Lease>, result: Result<u64>, lent: Option<u16>) {
        match (result, lent) {
            // Lent in the pool: refused to `submit_to` closures and never handed out until the
            // task's guard is dropped and `take_back_lent` gives it back.
            (Ok(n), Some(idx)) => match self.pool.lend(idx) {
                Ok(buf) => {
                    let ptr = buf.as_ptr();
                    let n = (n as usize).min(buf.len());
                    c.complete(Ok(tasks::Lease::new(
                        self.cfg.exec_id,
                        self.cfg.index,
                        idx,
                        ptr,
                        n,
                    )));
                }
                Err(e) => {
                    self.pool.release(idx);
                    c.complete(Err(e));
                }
            },
            (Ok(_), None) => c.complete(Err(Error::invalid(
                "read_pooled",
                "the read completed without a buffer",
            ))),
            (Err(e), lent) => {
                if let Some(idx) = lent {
                    self.pool.release(idx);
                }
                c.complete(Err(e));
            }
        }
    }

    /// Takes back the buffers whose guards were dropped on this thread.
    fn take_back_lent(&mut self) {
        let mut back = std::mem::take(&mut self.released);
        tasks::take_released(&mut back);
        for idx in back.drain(..) {
            // Only a dropped `Lease` fills `released`, and only `lend` makes one.
            if let Err(e) = self.pool.take_back(idx) {
                debug_assert!(false, "a lease handed back buffer {idx}: {e}");
            }
        }
        self.released = back;
    }

    // -- tasks ---------------------------------------------------------------------------------

    fn run_tasks(&mut self) {
        while let Some(task) = self.tasks.pop_front() {
            let at = Instant::now();
            let mut wake_seen = false;
            let pushed = self.pool.sqes_pushed();
            let mut pool_cqes = 0;
            {
                let mut ctx = ShardContext {
                    inline_buffered_writes: self.cfg.inline_buffered_writes,
                    ring: &mut self.ring,
                    pool: &mut self.pool,
                    files: &self.files,
                    stats: &mut self.stats,
                    wake_seen: &mut wake_seen,
                    pool_cqes: &mut pool_cqes,
                    index: self.cfg.index,
                };
                // A panicking task (submit_to catches its own; this is the backstop) must not
                // take the shard down: its buffers are drained below all the same.
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task(&mut ctx)));
                if let Err(p) = run {
                    if p.is::<super::KillShard>() {
                        std::panic::resume_unwind(p);
                    }
                }
            }
            if wake_seen {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.on_wake(0);
            }
            let left = self.pool.sqes_pushed().wrapping_sub(pushed);
            self.drain_task_buffers(left.saturating_sub(pool_cqes));
            self.stats.record(OpKind::Task, 0, elapsed_ns(at));
        }
    }

    /// Waits for the CQEs of the `outstanding` SQEs a task pushed through the pool and did not
    /// reap (the task broke the contract if any is left), so the shard never reuses a buffer the
    /// kernel may still write into. They are counted here, at the ring, not by the pool's records:
    /// the pool takes a caller's `complete_in_flight` for its word when a buffer is used again,
    /// and a task's word is not enough for the shard's own reads.
    fn drain_task_buffers(&mut self, mut outstanding: u64) {
        // why: a task may wait for its own operations without reaping their completions. No op of
        // the shard was in flight while it ran, so every completion in the ring now (but the
        // wake-up's) is the task's: take them all here. Left in the ring, the main loop would
        // count them against `in_flight` and could take a `user_data` for one of its own ops.
        self.poll_completions();
        loop {
            let mut cqes = Vec::new();
            self.ring.completions(&mut cqes);
            for (ud, res) in cqes {
                if ud == WAKE_USER_DATA {
                    self.in_flight = self.in_flight.saturating_sub(1);
                    self.on_wake(res);
                } else {
                    if ud & crate::pool::POOL_USER_DATA_TAG != 0 {
                        outstanding = outstanding.saturating_sub(1);
                    }
                    self.pool.complete_user_data(ud);
                }
            }
            if outstanding == 0 {
                break;
            }
            let _ = self.submit(1);
        }
        // Every SQE the task pushed through the pool has had its CQE matched (or its record was
        // dropped on the task's word): nothing of the task's is left in the pool's record.
        debug_assert_eq!(self.pool.kernel_owned_count(), 0, "{:?}", self.pool.stats());
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        // Fail what never ran or never finished (handles and sessions are told why), and close
        // every file. Memory the kernel may still read or write (the memory path of an op in
        // flight) is leaked, not freed: the ring is closed only after this.
        let error = if self.panicked {
            Error::ShardFailed {
                shard: self.cfg.index,
                reason: "the shard thread panicked; this operation did not complete".into(),
            }
        } else {
            Error::Shutdown
        };
        for op in self.ops.drain() {
            let Op {
                mut io,
                reply,
                mut out,
                outstanding,
                data_path,
                mut pending,
                ..
            } = op;
            if outstanding > 0 {
                // It may still change the file: the inode's reads keep going to the shard (a
                // dead one fails them), never inline past a write that is still landing.
                std::mem::forget(pending.take());
            }
            let in_kernel = outstanding > 0 && data_path == DataPath::Memory;
            if in_kernel {
                // The kernel may still write into a read's vector or read a write's data: leak
                // them (the handle gets no buffer back).
                std::mem::forget(out);
                if let IoOp::Write { data, .. } = &mut io {
                    std::mem::forget(std::mem::take(data));
                }
            } else if let IoOp::Read { buf, .. } = &mut io {
                // What was read so far goes back as the caller's buffer.
                *buf = std::mem::take(&mut out);
            }
            io.fail(reply, error.clone(), &mut self.sessions);
            if in_kernel {
                if let IoOp::File(f) = io {
                    // The kernel may still read or write the memory its SQE names (paths, a
                    // statx buffer, iovecs and buffers), all owned by the op: leak it.
                    std::mem::forget(f);
                }
            }
        }
        for req in std::mem::take(&mut self.backlog) {
            req.fail(error.clone(), &mut self.sessions);
        }
        self.sessions.deliver();
        self.tasks.clear();
        // Sleepers wake (their tasks are dropped: the shard has stopped). The timeouts' memory is
        // copied by the kernel when it takes the SQE; the timespecs go with the ring anyway.
        for (t, _) in self.timers.drain(..).flatten() {
            t.fire();
        }
        for t in self
            .parked_timers
            .drain(..)
            .chain(self.new_timers.drain(..))
        {
            t.fire();
        }
        // The pool is unmapped after this body: guards of lent buffers read nothing from now on.
        tasks::set_pool_alive(false);
    }
}

/// Why an O_DIRECT write stops for good at `end`, inside a block: RLIMIT_FSIZE ends there
/// (EFBIG), or the filesystem has no room for the rest of the block (ENOSPC; a full quota cuts
/// the write short the same way and is reported as ENOSPC too). The kernel gives no errno for a
/// short write, and asking it with a write from `end` would fail O_DIRECT's alignment (EINVAL).
fn short_direct_write_errno(end: u64) -> i32 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the local struct only.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim) } == 0;
    if got && lim.rlim_cur != libc::RLIM_INFINITY && end >= lim.rlim_cur {
        libc::EFBIG
    } else {
        libc::ENOSPC
    }
}

/// Which op kinds take the blocking path on this ring: those whose opcode the kernel does not
/// know (`IORING_REGISTER_PROBE`, read once; a kernel without probing (before 5.6) is taken to
/// have them all, as the ring setup already needs a recent kernel) and those in `forced`.
fn probe_blocking(ring: &Driver, forced: &[OpKind]) -> [bool; OpKind::COUNT] {
    let supported = ring.opcode_support();
    let mut out = [false; OpKind::COUNT];
    for kind in OpKind::ALL {
        let Some(code) = kind.opcode() else {
            continue;
        };
        out[kind.index()] = forced.contains(&kind) || !supported(code);
    }
    out
}

/// Resets the wake-up eventfd's counter (non-blocking: EAGAIN means it was already 0).
fn reset_eventfd(shared: &ShardShared) {
    let mut value: u64 = 0;
    // SAFETY: reads 8 bytes into a local u64 from our own non-blocking eventfd.
    unsafe {
        libc::read(
            shared.eventfd.as_raw_fd(),
            (&mut value as *mut u64).cast(),
            std::mem::size_of::<u64>(),
        )
    };
}

/// The error of an op cancelled for `why`.
fn cancel_error_of(why: CancelWhy, kind: OpKind, path: Option<&Path>) -> Error {
    let path = path.map(Path::to_path_buf);
    match why {
        CancelWhy::Deadline => Error::DeadlineExceeded {
            op: kind.name(),
            path,
        },
        CancelWhy::Dropped | CancelWhy::Shutdown => Error::Cancelled {
            op: kind.name(),
            path,
        },
    }
}

/// Submits what is queued and waits for `want` completions, counting the call in `stats`.
/// EINTR is retried; EBUSY/EAGAIN (CQ full, kernel short of memory) return 0: reaping frees room.
pub(super) fn submit_counted(
    ring: &mut Driver,
    stats: &mut ShardStats,
    want: usize,
) -> Result<usize> {
    let queued = ring.sq_len() as u64;
    loop {
        match ring.submit_and_wait(want) {
            Ok(n) => {
                stats.note_submit(queued);
                return Ok(n);
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR)) => continue,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => return Ok(0),
            Err(e) => {
                return Err(Error::io(
                    "io_uring_enter",
                    None,
                    None,
                    e.raw_os_error().unwrap_or(libc::EIO),
                ))
            }
        }
    }
}

fn elapsed_ns(at: Instant) -> u64 {
    at.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64
}
