//! The per-thread queues between a shard and the tasks it runs (the task face, `crate::task`,
//! fills them; the shard loop drains them), so that the shard schedules tasks without knowing
//! what a task is beyond an `async_task::Runnable`:
//!
//! - a task woken on its own shard's thread goes to that thread's run queue (a thread-local
//!   `VecDeque`, no atomics); woken anywhere else, it travels to its shard as a
//!   [`Message::Run`](super::Message) (the inbox's send-and-wake protocol);
//! - the shard loop calls [`run_batch`] once per turn: at most [`TASK_BUDGET`] polls, then it goes
//!   back to its inbox, its ring and its completions;
//! - every message sent on a shard's thread to that shard (a task's or a `submit_to` closure's
//!   requests, batches, session flushes, the close of a dropped handle) goes into a thread-local
//!   queue, in the order made, that the shard handles right after the batch ([`take_local`]),
//!   through the same admission as its inbox: no channel, no wake-up, one order for all of them,
//!   and the completion wakes the task on the same thread;
//! - a task's sleep is a [`TimerState`] the shard arms as an `IORING_OP_TIMEOUT` on its ring
//!   ([`take_timers`]), and takes out again when its sleep is dropped first;
//! - pool buffers lent to tasks (`Lease`, `lease.rs`) come back through [`take_released`].

use super::Message;
use crate::completion::current_shard;
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

/// Task polls per shard turn at most: then the shard admits requests, issues and reaps.
pub(crate) const TASK_BUDGET: usize = 64;

/// Time spent polling tasks per shard turn at most (checked after each poll): with tasks that
/// each poll for long, the routed requests and completions still get a turn this often.
pub(crate) const TASK_TIME_BUDGET: Duration = Duration::from_micros(500);

/// A poll longer than this counts as a slow task poll (`ShardStats::slow_task_polls`).
pub const SLOW_POLL: Duration = Duration::from_millis(10);

thread_local! {
    /// Runnable tasks of the shard that runs on this thread.
    static RUN: RefCell<VecDeque<async_task::Runnable>> = const { RefCell::new(VecDeque::new()) };
    /// Tasks that yielded during this batch of polls, woken when the next batch starts: a yield
    /// lets the shard take what the task queued, issue, submit and reap first.
    static YIELDED: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
    /// Messages sent on this shard thread to this shard (requests on its files, batches, session
    /// flushes, closes), in the order sent; handled after each batch of tasks.
    static LOCAL: RefCell<Vec<Message>> = const { RefCell::new(Vec::new()) };
    /// Sleeps started on this thread, to be armed in the ring.
    static TIMERS: RefCell<Vec<Arc<TimerState>>> = const { RefCell::new(Vec::new()) };
    /// Sleeps dropped before they fired, to be taken out of the ring (TIMEOUT_REMOVE).
    static DROPPED_TIMERS: RefCell<Vec<Arc<TimerState>>> = const { RefCell::new(Vec::new()) };
    /// The executor of the shard this thread runs (set by the shard at start), for the task
    /// face (`ringshard::local()`), which knows its type.
    static EXEC: RefCell<Option<Weak<dyn Any + Send + Sync>>> = const { RefCell::new(None) };
    /// The shard has left its loop: tasks woken here now are dropped (cancelled), not queued.
    static EXITED: Cell<bool> = const { Cell::new(false) };
    /// When the task being polled on this thread started its poll: the time a request it makes
    /// is counted from (one clock read per poll, not one per request).
    static POLL_START: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Pool buffers whose guards were dropped on this thread, for the shard to take back.
    static RELEASED: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
    /// This thread's shard has its pool mapped (set after setup, cleared before it is unmapped).
    static POOL_ALIVE: Cell<bool> = const { Cell::new(false) };
}

/// Called by the shard thread at start (`Message::SetExec`): tasks and `ringshard::local()` find
/// the executor through [`executor`].
pub(crate) fn set_executor(exec: Weak<dyn Any + Send + Sync>) {
    EXEC.with(|e| *e.borrow_mut() = Some(exec));
}

/// The executor of the shard this thread runs, while it lives.
pub(crate) fn executor() -> Option<Arc<dyn Any + Send + Sync>> {
    EXEC.with(|e| e.borrow().as_ref().and_then(Weak::upgrade))
}

/// Whether the shard of this thread has left its loop (or this is no shard thread that did).
pub(crate) fn exited() -> bool {
    EXITED.with(Cell::get)
}

/// Whether this thread is shard `shard` of executor `exec` and still runs its loop.
pub(crate) fn on_shard(exec: u64, shard: usize) -> bool {
    current_shard() == Some((exec, shard)) && !exited()
}

/// Puts `r` in this thread's run queue; gives it back if the queue is gone (thread teardown).
pub(crate) fn push_local_runnable(
    r: async_task::Runnable,
) -> std::result::Result<(), async_task::Runnable> {
    let mut slot = Some(r);
    let _ = RUN.try_with(|q| {
        if let Ok(mut q) = q.try_borrow_mut() {
            if let Some(r) = slot.take() {
                q.push_back(r);
            }
        }
    });
    slot.map_or(Ok(()), Err)
}

/// Polls at most `budget` runnable tasks, for about [`TASK_TIME_BUDGET`] at most. Returns how
/// many ran and how many polls took longer than [`SLOW_POLL`].
pub(crate) fn run_batch(budget: usize) -> (usize, u64) {
    let mut ran = 0;
    let mut slow = 0;
    let mut last = None;
    let mut first = None;
    // Woken here, the tasks that yielded in the last batch go to the back of the run queue.
    let yielded = YIELDED.with(|y| std::mem::take(&mut *y.borrow_mut()));
    for w in yielded {
        w.wake();
    }
    while ran < budget {
        let Some(r) = RUN.with(|q| q.borrow_mut().pop_front()) else {
            break;
        };
        let at = *last.get_or_insert_with(Instant::now);
        let start = *first.get_or_insert(at);
        POLL_START.with(|c| c.set(Some(at)));
        // A task's own panic is caught inside (the task face's `Guarded`); this catches a
        // panicking waker or destructor, which must not take the shard down either.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.run()));
        ran += 1;
        let now = Instant::now();
        if now.saturating_duration_since(at) > SLOW_POLL {
            slow += 1;
        }
        last = Some(now);
        POLL_START.with(|c| c.set(None));
        if now.saturating_duration_since(start) > TASK_TIME_BUDGET {
            break;
        }
    }
    (ran, slow)
}

/// Whether a task is waiting to run, or tasks left messages, a timer or a lent buffer to be
/// taken.
pub(crate) fn has_work() -> bool {
    RUN.with(|q| !q.borrow().is_empty())
        || YIELDED.with(|y| !y.borrow().is_empty())
        || has_local()
        || TIMERS.with(|q| !q.borrow().is_empty())
        || RELEASED.with(|q| !q.borrow().is_empty())
}

/// Puts a runnable that came through the inbox in the run queue.
pub(crate) fn push_runnable(r: async_task::Runnable) {
    RUN.with(|q| q.borrow_mut().push_back(r));
}

/// Whether messages sent on this thread to its shard wait to be handled.
pub(crate) fn has_local() -> bool {
    LOCAL.with(|q| !q.borrow().is_empty())
}

/// When the task being polled on this thread started its poll; `None` outside a task's poll.
pub(crate) fn poll_start() -> Option<Instant> {
    POLL_START.with(Cell::get)
}

/// Keeps `waker` to be woken when the next batch of polls starts, when this thread is polling
/// one of its shard's tasks; false otherwise (the caller wakes it now).
pub(crate) fn wake_next_batch(waker: &Waker) -> bool {
    if poll_start().is_none() || EXITED.with(Cell::get) {
        return false;
    }
    YIELDED
        .try_with(|y| y.borrow_mut().push(waker.clone()))
        .is_ok()
}

/// Moves the messages sent on this thread to its shard into `out` (in the order they were sent).
pub(crate) fn take_local(out: &mut Vec<Message>) {
    LOCAL.with(|q| std::mem::swap(&mut *q.borrow_mut(), out));
}

/// A message for shard `shard` of executor `exec`: when this thread runs that shard, it is kept
/// for the shard's next turn (no channel), behind every message sent here before it, whatever
/// its kind; otherwise it is handed back to be sent through the inbox.
#[allow(clippy::result_large_err)] // the message handed back is to be sent, not an error
pub(crate) fn try_local(exec: u64, shard: usize, msg: Message) -> std::result::Result<(), Message> {
    if !on_shard(exec, shard) {
        return Err(msg);
    }
    let mut slot = Some(msg);
    // `try_with`: during the thread's teardown the queue may be gone (the message then goes to
    // the inbox, which refuses it once the shard has stopped).
    let _ = LOCAL.try_with(|q| {
        if let Ok(mut q) = q.try_borrow_mut() {
            q.extend(slot.take());
        }
    });
    slot.map_or(Ok(()), Err)
}

/// Called once the shard has left its loop (on its thread): runnable tasks are dropped (their
/// handles report the shard gone), pending sleeps wake (and so are dropped too), and messages
/// not yet handled are handed back to be failed. From now on, tasks woken on this thread are
/// dropped, and messages sent here to this shard go to its inbox (which refuses them once the
/// shard has drained it).
pub(crate) fn shutdown_here() -> Vec<Message> {
    EXITED.with(|e| e.set(true));
    // Woken now that the shard has exited, the tasks that yielded are dropped like the others.
    let yielded = YIELDED.with(|y| std::mem::take(&mut *y.borrow_mut()));
    for w in yielded {
        w.wake();
    }
    loop {
        let r = RUN.with(|q| q.borrow_mut().pop_front());
        match r {
            Some(r) => drop(r),
            None => break,
        }
    }
    let timers: Vec<_> = TIMERS.with(|q| std::mem::take(&mut *q.borrow_mut()));
    for t in timers {
        t.fire();
    }
    LOCAL.with(|q| std::mem::take(&mut *q.borrow_mut()))
}

/// Marks whether this shard thread's pool is mapped (see [`pool_alive`]).
pub(crate) fn set_pool_alive(alive: bool) {
    POOL_ALIVE.with(|c| c.set(alive));
}

/// Whether this thread's shard has its pool mapped: a lent buffer may be read here.
pub(crate) fn pool_alive() -> bool {
    POOL_ALIVE.with(Cell::get)
}

/// Hands pool buffer `idx` back to this thread's shard (taken at its next batch of tasks).
pub(crate) fn release(idx: u16) {
    // `try_with`: during the thread's teardown the queue may be gone (and so the pool).
    let _ = RELEASED.try_with(|q| q.borrow_mut().push(idx));
}

/// Moves the indexes of pool buffers handed back by dropped guards into `out`.
pub(crate) fn take_released(out: &mut Vec<u16>) {
    RELEASED.with(|q| out.append(&mut q.borrow_mut()));
}

/// One sleep: armed as an `IORING_OP_TIMEOUT` by the shard, fired at its completion.
#[derive(Debug)]
pub(crate) struct TimerState {
    pub(crate) deadline: Instant,
    fired: AtomicBool,
    waker: atomic_waker::AtomicWaker,
    /// Its sleep was dropped before it fired: nobody waits, take it out of the ring.
    dropped: AtomicBool,
    /// Where the shard keeps it while armed (its index in the shard's timer table).
    pub(crate) slot: AtomicUsize,
}

impl TimerState {
    /// A sleep until `deadline`, not yet armed.
    pub(crate) fn new(deadline: Instant) -> TimerState {
        TimerState {
            deadline,
            fired: AtomicBool::new(false),
            waker: atomic_waker::AtomicWaker::new(),
            dropped: AtomicBool::new(false),
            slot: AtomicUsize::new(usize::MAX),
        }
    }

    /// The timeout completed (or the shard stopped): wake the sleeper.
    pub(crate) fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        if let Some(w) = self.waker.take() {
            crate::completion::wake_guarded(w);
        }
    }

    /// Whether it fired.
    pub(crate) fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Who to wake when it fires.
    pub(crate) fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// Its sleep was dropped before it fired.
    pub(crate) fn mark_dropped(&self) {
        self.dropped.store(true, Ordering::Release);
    }

    /// Whether its sleep was dropped before it fired.
    pub(crate) fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }
}

/// Queues a sleep started on this thread, for its shard to arm in the ring at its next batch.
/// Called only on a running shard's thread (see [`exited`]).
pub(crate) fn arm_later(t: Arc<TimerState>) {
    TIMERS.with(|q| q.borrow_mut().push(t));
}

/// Moves the sleeps started since the last call into `out`.
pub(crate) fn take_timers(out: &mut Vec<Arc<TimerState>>) {
    TIMERS.with(|q| out.append(&mut q.borrow_mut()));
}

/// Queues a sleep dropped on this thread before it fired, for its shard to take out of the ring.
pub(crate) fn remove_later(t: Arc<TimerState>) {
    DROPPED_TIMERS.with(|q| q.borrow_mut().push(t));
}

/// Moves the sleeps dropped on this thread since the last call into `out`.
pub(crate) fn take_dropped_timers(out: &mut Vec<Arc<TimerState>>) {
    DROPPED_TIMERS.with(|q| out.append(&mut q.borrow_mut()));
}
