//! The shard thread's loop.
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
//! kernel (see [`ShardContext`](super::ShardContext) and `submit_to.rs`).
//!
//! Each step lives in a file of its own in `src/shard/` (see the list in `mod.rs`); this one
//! holds the [`Shard`] itself and its loop.

use super::files::FileTable;
use super::ops::{Chunk, OpTable};
use super::order::Ordering;
use super::session_table::SessionTable;
use super::setup::ShardConfig;
use super::task_queues::{self, TimerState};
use super::{IoRequest, Message, ShardShared, Task};
use crate::completion::Completer;
use crate::driver::Driver;
use crate::pool::RegisteredBufferPool;
use crate::stats::{OpKind, ShardStats};
use crossbeam_channel::Receiver;
use io_uring::types;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// How long shutdown waits, after its grace period cancelled everything still in flight, for
/// ops the kernel does not end when cancelled: a SEND_ZC whose notification waits for a peer that
/// stopped reading (the kernel holds its pages until the peer takes them or the connection
/// closes), a write stuck in a device that takes no cancellation. Then the shard stops anyway:
/// their handles fail with `Shutdown`, and what the kernel may still read or write (their
/// buffers, a lent pool buffer and so the pool's slab, their descriptors) is leaked, never freed
/// (`Shard`'s `Drop`). A cancellation the kernel honours takes well under this.
pub(super) const ABANDON_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// One shard's state, owned by its thread: the loop below and the `impl Shard` blocks of the
/// other files in `src/shard/` work on it.
pub(super) struct Shard {
    // Field order is drop order: the ring goes before the pool, so the kernel lets go of the
    // buffers before the pool decides whether to unmap them.
    pub(super) ring: Driver,
    pub(super) pool: RegisteredBufferPool,
    pub(super) cfg: ShardConfig,
    pub(super) files: FileTable,
    pub(super) fixed_capacity: u32,
    pub(super) ops: OpTable,
    /// By [`OpKind::index`]: the kind runs with plain system calls on this thread (its opcode is
    /// missing from the kernel's probe, or it was forced there).
    pub(super) blocking: [bool; OpKind::COUNT],
    pub(super) chunks: Vec<Chunk>,
    pub(super) ready: VecDeque<u32>,
    pub(super) order: Ordering,
    /// Requests received and not yet admitted (the rest of a batch or session flush that did not
    /// fit, and requests read while the op table was full): admitted in order, before anything
    /// newer from the inbox.
    pub(super) backlog: VecDeque<IoRequest>,
    /// Sessions with requests here; their results go out once per turn.
    pub(super) sessions: SessionTable,
    pub(super) tasks: VecDeque<Task>,
    /// Messages sent on this thread to this shard (tasks' and closures' requests, batches,
    /// session flushes, closes), taken once per batch of tasks (kept to reuse its allocation).
    pub(super) local: Vec<Message>,
    /// Sleeps in the ring: index = `user_data & !TIMER_TAG`. The timespec stays here until the
    /// timeout's completion.
    pub(super) timers: Vec<Option<(Arc<TimerState>, Box<types::Timespec>)>>,
    pub(super) timer_free: Vec<usize>,
    pub(super) new_timers: Vec<Arc<TimerState>>,
    /// Sleeps in the ring (timeouts pushed, CQE not reaped yet).
    pub(super) timers_armed: u32,
    /// Sleeps are being taken out of the ring so that queued closures can run.
    pub(super) parking: bool,
    /// Socket ops waiting for peers are being taken out of the ring for queued closures
    /// (`cancel::park_peer_ops`).
    pub(super) parking_peers: bool,
    /// Sleeps taken out, armed again once the closures have run.
    pub(super) parked_timers: Vec<Arc<TimerState>>,
    /// Pool buffers handed back by tasks this turn (the pool knows which are lent).
    pub(super) released: Vec<u16>,
    pub(super) stats: ShardStats,
    pub(super) shared: Arc<ShardShared>,
    pub(super) rx: Receiver<Message>,
    pub(super) wake_armed: bool,
    /// The wake-up poll failed (an old or odd kernel): sleep in short timed waits instead.
    pub(super) wake_broken: bool,
    /// SQEs pushed and not yet reaped (the wake-up poll and cancel requests included).
    pub(super) in_flight: u32,
    /// Of `in_flight`, SQEs of socket ops waiting for a peer: not bounded by the CQ's size (see
    /// `has_cq_room`).
    pub(super) peer_in_flight: u32,
    pub(super) cq_capacity: u32,
    /// The kernel keeps completions that find the CQ full aside (IORING_FEAT_NODROP, read at
    /// setup): only then are socket ops waiting for peers left out of the CQ bound
    /// (`has_cq_room`).
    pub(super) cq_nodrop: bool,
    pub(super) closing: bool,
    /// When shutdown's grace period ends: then everything still in flight is cancelled.
    pub(super) closing_deadline: Option<Instant>,
    /// Shutdown's grace period is over.
    pub(super) cancel_all: bool,
    /// When the shard stops even with ops still in the kernel: [`ABANDON_AFTER`] after the grace
    /// period ended and everything was cancelled.
    pub(super) abandon_at: Option<Instant>,
    /// Completed when the shard has stopped.
    pub(super) shutdown_waiters: Vec<Completer<()>>,
    /// The last cancellation/deadline scan.
    pub(super) last_scan: Instant,
    pub(super) cqes: Vec<crate::driver::Cqe>,
    /// The time, read at most once per loop turn: completions finished in one turn share it.
    pub(super) clock: Option<Instant>,
    /// The thread is unwinding from a panic: pending results report ShardFailed.
    pub(super) panicked: bool,
    /// Tasks' reads of this shard's files that skip the op table (task_io.rs).
    pub(super) fast: super::task_io::TaskReads,
}

impl Shard {
    pub(super) fn run(&mut self) {
        loop {
            self.clock = None;
            let mut progress = self.admit_inbox();
            progress |= self.run_async_tasks();
            if self.tasks.is_empty() {
                progress |= self.issue();
            } else if self.ops_in_flight() == 0 {
                self.run_tasks();
                // Sleeps taken out of the ring for the closures go back in (the time left); socket
                // ops taken out wait in the ready queue, issued again from the next turn.
                self.new_timers.append(&mut self.parked_timers);
                self.parking_peers = false;
                progress = true;
            } else if self.ops_in_flight() == self.timers_armed + self.peer_in_flight {
                // Only task sleeps and socket ops waiting for peers keep the ring busy: take
                // them out (TIMEOUT_REMOVE, ASYNC_CANCEL) rather than make the closures wait for
                // them (a silent peer would make them wait forever); they go back in after.
                if self.timers_armed > 0 && !self.parking {
                    self.park_timers();
                }
                if self.peer_in_flight > 0 && !self.parking_peers {
                    self.park_peer_ops();
                }
            }
            // With DEFER_TASKRUN, completions that need task work (O_DIRECT, page-cache misses,
            // anything punted) are posted only by an enter with GETEVENTS. The kernel flags such
            // work in the SQ (TASKRUN_FLAG), and `submit` then asks for it: so a loop kept busy
            // by its inbox still runs them every turn. Likewise completions kept aside when the CQ
            // was full (possible with many socket ops in flight: `has_cq_room`).
            let pending = self.ring.sq_len();
            if pending > 0
                || (self.ops_in_flight() > 0 && (self.ring.taskrun() || self.ring.cq_overflow()))
            {
                // A failed submit is retried next turn; a persistent failure shows in stats.
                let _ = self.submit(0);
            }
            progress |= self.reap() > 0;
            if self.ops.live > 0 || self.closing || self.fast.live > 0 {
                self.housekeeping();
            }
            self.sessions.deliver();
            if self.closing
                && self.ops.live == 0
                && self.fast.live == 0
                && self.tasks.is_empty()
                && self.backlog.is_empty()
                && self.rx.is_empty()
                && !task_queues::has_local()
            {
                return;
            }
            if self.abandon_due() {
                // What the kernel did not end when cancelled: `Drop` fails its handles and leaks
                // the memory it may still use (see `ABANDON_AFTER`).
                return;
            }
            if progress || task_queues::has_work() {
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

    /// Whether shutdown stops waiting for ops still in the kernel ([`ABANDON_AFTER`] after its
    /// grace period cancelled them all).
    fn abandon_due(&mut self) -> bool {
        let Some(at) = self.abandon_at else {
            return false;
        };
        self.now() >= at
    }

    /// Admitted ops are bounded: past the bound, requests stay in the inbox (or backlog), and per-
    /// file order lists stay short.
    pub(super) fn can_admit(&self) -> bool {
        self.ops.bounded() < self.cfg.channel_capacity
    }

    /// Whether requests wait to be admitted.
    pub(super) fn has_incoming(&self) -> bool {
        !self.backlog.is_empty() || !self.rx.is_empty()
    }

    /// The time, read at most once per loop turn.
    pub(super) fn now(&mut self) -> Instant {
        *self.clock.get_or_insert_with(Instant::now)
    }

    /// Nanoseconds since `at`, by this turn's clock.
    pub(super) fn elapsed_since(&mut self, at: Instant) -> u64 {
        let now = self.now();
        now.saturating_duration_since(at)
            .as_nanos()
            .min(u128::from(u64::MAX)) as u64
    }

    pub(super) fn ops_in_flight(&self) -> u32 {
        // why: saturating: a completion of a task's own operation reaped by the main loop (a task
        // that returned with it still in flight) makes `in_flight` undercount by one; that must
        // not panic (debug) or wrap to u32::MAX (release: no task would ever run again).
        self.in_flight.saturating_sub(u32::from(self.wake_armed))
    }
}

/// Nanoseconds since `at`, by the clock now.
pub(super) fn elapsed_ns(at: Instant) -> u64 {
    at.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64
}
