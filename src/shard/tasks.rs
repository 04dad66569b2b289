//! Async tasks on a shard: the task machinery the shard loop only schedules.
//!
//! Task allocation, the waker vtable, join, cancellation and the "run or drop on the spawning
//! thread" rule of `!Send` futures come from the `async-task` crate; this module adds where a
//! woken task goes and what a task can do on its shard:
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
//! - [`LocalShard::sleep`] is an `IORING_OP_TIMEOUT` on the shard's ring ([`take_timers`]).

use super::{IoOp, IoRequest, Message, Reply};
use crate::completion::{current_shard, pair, Completion};
use crate::error::{Error, Result};
use crate::file::File;
use crate::routes::ExecShared;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
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
    /// Messages sent on this shard thread to this shard (requests on its files, batches, session
    /// flushes, closes), in the order sent; handled after each batch of tasks.
    static LOCAL: RefCell<Vec<Message>> = const { RefCell::new(Vec::new()) };
    /// Sleeps started on this thread, to be armed in the ring.
    static TIMERS: RefCell<Vec<Arc<TimerState>>> = const { RefCell::new(Vec::new()) };
    /// Sleeps dropped before they fired, to be taken out of the ring (TIMEOUT_REMOVE).
    static DROPPED_TIMERS: RefCell<Vec<Arc<TimerState>>> = const { RefCell::new(Vec::new()) };
    /// The executor of the shard this thread runs (set by the shard at start).
    static EXEC: RefCell<Weak<ExecShared>> = const { RefCell::new(Weak::new()) };
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

/// Called by the shard thread at start: tasks and [`local`] find the executor through this.
pub(crate) fn set_executor(exec: Weak<ExecShared>) {
    EXEC.with(|e| *e.borrow_mut() = exec);
}

/// Whether this thread is shard `shard` of executor `exec` and still runs its loop.
pub(crate) fn on_shard(exec: u64, shard: usize) -> bool {
    current_shard() == Some((exec, shard)) && !EXITED.with(Cell::get)
}

/// Where a woken task goes. `local`: the future is `!Send` and must be dropped on its shard.
fn schedule(exec: &Arc<ExecShared>, shard: usize, local: bool, r: async_task::Runnable) {
    if current_shard() == Some((exec.id, shard)) {
        if EXITED.with(Cell::get) {
            // The shard has stopped: dropping the runnable cancels the task (its JoinHandle
            // reports it). This is the shard thread, so a `!Send` future may be dropped here.
            drop(r);
        } else if let Err(r) = push_local_runnable(r) {
            drop(r);
        }
        return;
    }
    let Some(link) = exec.shards.get(shard) else {
        return forget_or_drop(r, local);
    };
    // why: not `exec.send`: a task already running must still be woken after shutdown began
    // (it ends when the shard stops, not when the door closes).
    if let Err((Message::Run(r), _)) = link.send(Message::Run(r)) {
        forget_or_drop(r, local);
    }
}

/// Puts `r` in this thread's run queue; gives it back if the queue is gone (thread teardown).
fn push_local_runnable(r: async_task::Runnable) -> std::result::Result<(), async_task::Runnable> {
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

/// A task that can no longer reach its shard: a `Send` one is dropped (cancelled: its handle
/// reports it); a `!Send` one may only be dropped on its shard's thread, so it is leaked.
fn forget_or_drop(r: async_task::Runnable, local: bool) {
    if local {
        std::mem::forget(r);
    } else {
        drop(r);
    }
}

/// Wraps a task's future: a panic in a poll ends the task with [`Error::TaskPanicked`].
struct Guarded<F> {
    fut: F,
    shard: usize,
}

impl<T, F: Future<Output = Result<T>>> Future for Guarded<F> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `fut` is structurally pinned: it is never moved out of `self` (no method hands
        // out `&mut F` or moves it) and `Guarded` has no Drop impl that could move it.
        let this = unsafe { self.get_unchecked_mut() };
        let shard = this.shard;
        // SAFETY: see above; `this` itself stays pinned.
        let fut = unsafe { Pin::new_unchecked(&mut this.fut) };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(v),
            Ok(Poll::Pending) => Poll::Pending,
            // async-task never polls a finished task again, so the broken future is only dropped.
            Err(p) => Poll::Ready(Err(Error::TaskPanicked {
                shard,
                message: crate::error::panic_text(p.as_ref()),
            })),
        }
    }
}

/// Spawns a `Send` future on shard `shard` of `exec`.
pub(crate) fn spawn<F>(exec: &Arc<ExecShared>, shard: usize, fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    if let Err(e) = check_shard(exec, shard) {
        return JoinHandle::failed(exec, shard, e);
    }
    spawn_result(exec, shard, async move { Ok(fut.await) })
}

/// Spawns a `Send` future whose output is already a `Result` (its error is the task's).
pub(crate) fn spawn_result<T, F>(exec: &Arc<ExecShared>, shard: usize, fut: F) -> JoinHandle<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    if let Err(e) = check_shard(exec, shard) {
        return JoinHandle::failed(exec, shard, e);
    }
    let e = Arc::clone(exec);
    let (runnable, task) = async_task::spawn(Guarded { fut, shard }, move |r| {
        schedule(&e, shard, false, r)
    });
    runnable.schedule();
    JoinHandle::new(exec, shard, task)
}

fn check_shard(exec: &ExecShared, shard: usize) -> Result<()> {
    if exec.closed.load(std::sync::atomic::Ordering::Acquire) {
        return Err(Error::Shutdown);
    }
    if shard >= exec.shards.len() {
        return Err(Error::invalid(
            "spawn_on",
            format!(
                "no shard {shard}: this executor has {} shards (0..{})",
                exec.shards.len(),
                exec.shards.len()
            ),
        ));
    }
    Ok(())
}

/// Spawns a `!Send` future on the current shard (the caller is on that shard's thread).
fn spawn_here<F>(exec: &Arc<ExecShared>, shard: usize, fut: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    if let Err(e) = check_shard(exec, shard) {
        return JoinHandle::failed(exec, shard, e);
    }
    if !on_shard(exec.id, shard) {
        let e = Error::invalid(
            "spawn_local",
            format!(
                "called off shard {shard}'s thread: use spawn_on_with to build the future there"
            ),
        );
        return JoinHandle::failed(exec, shard, e);
    }
    let e = Arc::clone(exec);
    let fut = async move { Ok(fut.await) };
    let (runnable, task) = async_task::spawn_local(Guarded { fut, shard }, move |r| {
        schedule(&e, shard, true, r)
    });
    runnable.schedule();
    JoinHandle::new(exec, shard, task)
}

/// Builds a `!Send` future with `f` on shard `shard` and runs it there.
pub(crate) fn spawn_with<F, Fut>(
    exec: &Arc<ExecShared>,
    shard: usize,
    f: F,
) -> JoinHandle<Fut::Output>
where
    F: FnOnce(LocalShard) -> Fut + Send + 'static,
    Fut: Future + 'static,
    Fut::Output: Send + 'static,
{
    // The outer task is Send: it holds `f` until its first poll, then only the inner handle.
    spawn_result(exec, shard, async move {
        let inner = match local() {
            Some(l) => {
                let fut = f(l.clone());
                l.spawn_local(fut)
            }
            None => return Err(Error::invalid("spawn_on_with", "not on a shard")),
        };
        inner.await
    })
}

// ---------------------------------------------------------------------------------------------
// The shard's side

/// Polls at most `budget` runnable tasks, for about [`TASK_TIME_BUDGET`] at most. Returns how many ran and how many polls took longer
/// than [`SLOW_POLL`].
pub(crate) fn run_batch(budget: usize) -> (usize, u64) {
    let mut ran = 0;
    let mut slow = 0;
    let mut last = None;
    let mut first = None;
    while ran < budget {
        let Some(r) = RUN.with(|q| q.borrow_mut().pop_front()) else {
            break;
        };
        let at = *last.get_or_insert_with(Instant::now);
        let start = *first.get_or_insert(at);
        POLL_START.with(|c| c.set(Some(at)));
        // A task's own panic is caught inside (`Guarded`); this catches a panicking waker or
        // destructor, which must not take the shard down either.
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

/// Moves the messages sent on this thread to its shard into `out` (in the order they were sent).
pub(crate) fn take_local(out: &mut Vec<Message>) {
    LOCAL.with(|q| std::mem::swap(&mut *q.borrow_mut(), out));
}

/// Moves the sleeps started since the last call into `out`.
pub(crate) fn take_timers(out: &mut Vec<Arc<TimerState>>) {
    TIMERS.with(|q| out.append(&mut q.borrow_mut()));
}

/// Called once the shard has left its loop (on its thread): runnable tasks are dropped (their
/// handles report the shard gone), pending sleeps wake (and so are dropped too), and messages
/// not yet handled are handed back to be failed. From now on, tasks woken on this thread are
/// dropped, and messages sent here to this shard go to its inbox (which refuses them once the
/// shard has drained it).
pub(crate) fn shutdown_here() -> Vec<Message> {
    EXITED.with(|e| e.set(true));
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

/// Marks whether this shard thread's pool is mapped (see [`PoolBuf`]).
pub(crate) fn set_pool_alive(alive: bool) {
    POOL_ALIVE.with(|c| c.set(alive));
}

/// Moves the indexes of pool buffers handed back by dropped guards into `out`.
pub(crate) fn take_released(out: &mut Vec<u16>) {
    RELEASED.with(|q| out.append(&mut q.borrow_mut()));
}

/// A pool buffer lent by the shard after a pooled read: where it is, and how much was read.
/// Dropped on its shard's thread, it gives the buffer back (at the shard's next batch); dropped
/// anywhere else (it never should be) the buffer stays lent (leaked, never reused early).
#[derive(Debug)]
pub(crate) struct Lease {
    exec: u64,
    shard: usize,
    idx: u16,
    /// The buffer's address, as a number (the lease travels in a `Send` completion).
    addr: usize,
    len: usize,
}

impl Lease {
    pub(crate) fn new(exec: u64, shard: usize, idx: u16, ptr: *const u8, len: usize) -> Lease {
        Lease {
            exec,
            shard,
            idx,
            addr: ptr as usize,
            len,
        }
    }

    /// Whether this thread is the lender's and its pool is still mapped.
    fn readable_here(&self) -> bool {
        current_shard() == Some((self.exec, self.shard)) && POOL_ALIVE.with(Cell::get)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if current_shard() == Some((self.exec, self.shard)) {
            // `try_with`: during the thread's teardown the queue may be gone (and so the pool).
            let _ = RELEASED.try_with(|q| q.borrow_mut().push(self.idx));
        }
    }
}

/// The data of a pooled O_DIRECT read ([`LocalShard::read_pooled`]), in the shard's registered
/// buffer itself: no copy. Dropping it gives the buffer back to the pool. Not `Send`: it is read
/// on its shard's thread (elsewhere, or after the shard stopped, it reads as empty).
pub struct PoolBuf {
    lease: Lease,
    _not_send: std::marker::PhantomData<*const u8>,
}

impl std::fmt::Debug for PoolBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuf")
            .field("buffer", &self.lease.idx)
            .field("len", &self.lease.len)
            .finish()
    }
}

impl PoolBuf {
    /// The pool buffer's index.
    pub fn buffer_index(&self) -> u16 {
        self.lease.idx
    }
}

impl std::ops::Deref for PoolBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        if !self.lease.readable_here() {
            return &[];
        }
        // SAFETY: `addr` is buffer `idx` of this thread's shard's pool, lent by the pool after the
        // read's CQE was matched (so the kernel no longer owns it) and `len` is at most the
        // buffer's size. The pool holds it lent: `get`, `get_mut`, `release`, `submit_*` (from a
        // `submit_to` closure, which may run while this task waits) refuse it and `acquire` never
        // hands it out, until the shard takes it back, which it does only from `RELEASED`, which
        // only this guard's `Lease` fills, when dropped: nothing writes into it meanwhile.
        // The slab stays mapped while `POOL_ALIVE` is set on this thread, and it is cleared
        // before the pool is unmapped, on this same thread, where no borrow of this slice can
        // be alive across that point (the shard drops its pool only after its loop, outside any
        // task's poll). `PoolBuf` is not `Send`, and `readable_here` checked the thread.
        unsafe { std::slice::from_raw_parts(self.lease.addr as *const u8, self.lease.len) }
    }
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

/// One sleep: armed as an `IORING_OP_TIMEOUT` by the shard, fired at its completion.
#[derive(Debug)]
pub(crate) struct TimerState {
    pub(crate) deadline: Instant,
    fired: std::sync::atomic::AtomicBool,
    waker: atomic_waker::AtomicWaker,
    /// Its `Sleep` was dropped before it fired: nobody waits, take it out of the ring.
    dropped: std::sync::atomic::AtomicBool,
    /// Where the shard keeps it while armed (its index in the shard's timer table).
    pub(crate) slot: std::sync::atomic::AtomicUsize,
}

impl TimerState {
    /// The timeout completed (or the shard stopped): wake the sleeper.
    pub(crate) fn fire(&self) {
        self.fired.store(true, std::sync::atomic::Ordering::Release);
        if let Some(w) = self.waker.take() {
            crate::completion::wake_guarded(w);
        }
    }

    fn is_fired(&self) -> bool {
        self.fired.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether its `Sleep` was dropped before it fired.
    pub(crate) fn is_dropped(&self) -> bool {
        self.dropped.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Moves the sleeps dropped on this thread since the last call into `out`.
pub(crate) fn take_dropped_timers(out: &mut Vec<Arc<TimerState>>) {
    DROPPED_TIMERS.with(|q| out.append(&mut q.borrow_mut()));
}

// ---------------------------------------------------------------------------------------------
// The public side

/// The handle of a task spawned on a shard ([`Executor::spawn_on`](crate::Executor::spawn_on) and
/// friends): await it from anywhere (a thread with [`wait`](Self::wait), tokio or any runtime,
/// another shard's task) for the task's output.
///
/// - **Dropping the handle cancels the task** (its future is dropped on its shard before its next
///   poll); [`detach`](Self::detach) lets it run to the end instead.
/// - A panic in the task comes back as [`Error::TaskPanicked`]; the shard goes on.
/// - A task cancelled, or dropped because its shard stopped, reports
///   [`Error::Cancelled`] (op `"task"`) or [`Error::Shutdown`].
#[must_use = "dropping a JoinHandle cancels its task; call detach() to let it run"]
pub struct JoinHandle<T> {
    task: Option<async_task::FallibleTask<Result<T>>>,
    early: Option<Error>,
    exec: Arc<ExecShared>,
    shard: usize,
}

impl<T> std::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHandle")
            .field("shard", &self.shard)
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T> JoinHandle<T> {
    fn new(
        exec: &Arc<ExecShared>,
        shard: usize,
        task: async_task::Task<Result<T>>,
    ) -> JoinHandle<T> {
        JoinHandle {
            task: Some(task.fallible()),
            early: None,
            exec: Arc::clone(exec),
            shard,
        }
    }

    fn failed(exec: &Arc<ExecShared>, shard: usize, e: Error) -> JoinHandle<T> {
        JoinHandle {
            task: None,
            early: Some(e),
            exec: Arc::clone(exec),
            shard,
        }
    }

    /// The shard the task runs on.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Whether the task has finished (its output, or its panic, is ready).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Cancels the task: it is not polled again, and its future is dropped on its shard. (The
    /// same as dropping the handle.)
    pub fn cancel(mut self) {
        drop(self.task.take());
    }

    /// Lets the task run to its end with nobody waiting for its output.
    pub fn detach(mut self) {
        if let Some(t) = self.task.take() {
            t.detach();
        }
    }

    /// Blocks the calling thread until the task ends.
    ///
    /// On a shard thread of the same executor it returns [`Error::WouldDeadlock`] unless
    /// the task has finished: the task's own shard cannot run it while its thread waits, and two
    /// shards waiting on each other never finish. Await the handle in a task instead.
    pub fn wait(self) -> Result<T> {
        if let Some((exec, shard)) = current_shard() {
            if exec == self.exec.id && !self.is_finished() {
                return Err(Error::WouldDeadlock {
                    op: "JoinHandle::wait",
                    shard,
                });
            }
        }
        block_on(self)
    }

    /// Why the task ended without output.
    fn gone(&self) -> Error {
        let dead = self
            .exec
            .shards
            .get(self.shard)
            .is_some_and(|l| l.shared.dead.load(std::sync::atomic::Ordering::Acquire));
        if dead {
            Error::ShardFailed {
                shard: self.shard,
                reason: "the shard thread panicked; the task was dropped".into(),
            }
        } else if self.exec.closed.load(std::sync::atomic::Ordering::Acquire)
            || self
                .exec
                .shards
                .get(self.shard)
                .is_some_and(|l| l.shared.exited.load(std::sync::atomic::Ordering::Acquire))
        {
            Error::Shutdown
        } else {
            Error::Cancelled {
                op: "task",
                path: None,
            }
        }
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        if let Some(e) = self.early.take() {
            return Poll::Ready(Err(e));
        }
        let Some(task) = self.task.as_mut() else {
            return Poll::Ready(Err(Error::invalid(
                "JoinHandle",
                "the task's output was already taken",
            )));
        };
        match Pin::new(task).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(r)) => {
                self.task = None;
                Poll::Ready(r)
            }
            Poll::Ready(None) => {
                self.task = None;
                Poll::Ready(Err(self.gone()))
            }
        }
    }
}

struct ThreadWaker(std::thread::Thread);

impl std::task::Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `fut` to completion on the calling thread, which sleeps while the future is pending.
///
/// Blocks: never call it on an async runtime's thread or in a shard task (on a shard's thread
/// it stops that shard until `fut` is done, and a future that waits for that shard never is).
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// The shard this code runs on, inside a shard task (or a `submit_to` closure): its index, its
/// files' I/O without the channel, timers on its ring, and `!Send` tasks. `None` elsewhere.
pub fn local() -> Option<LocalShard> {
    let (exec_id, index) = current_shard()?;
    if EXITED.with(Cell::get) {
        return None;
    }
    let exec = EXEC.with(|e| e.borrow().upgrade())?;
    (exec.id == exec_id).then_some(LocalShard { exec, index })
}

/// The shard a task runs on (see [`local`]).
///
/// It may be moved to and used on other threads (then its I/O is simply routed, and its sleeps
/// use a helper thread), but its point is to be used on its shard. I/O on files owned by this
/// shard goes straight into the shard's op table at its next
/// admission (same checks, per-file order, data paths and statistics as routed requests; no
/// channel and no wake-up), and its completion wakes the task on this thread. Files of other
/// shards are routed to their shard as usual. The methods return [`Completion`]s: await them.
#[derive(Clone)]
pub struct LocalShard {
    exec: Arc<ExecShared>,
    index: usize,
}

impl std::fmt::Debug for LocalShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalShard")
            .field("index", &self.index)
            .finish()
    }
}

impl LocalShard {
    /// This shard's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether `file` is owned by this shard (its I/O skips the channel).
    pub fn owns(&self, file: &File) -> bool {
        file.handle().exec == self.exec.id && file.shard() == self.index
    }

    /// Spawns a future that need not be `Send` on this shard. It runs, and is dropped, only on
    /// this shard's thread. Called on any other thread, the handle fails with
    /// [`Error::InvalidArgument`].
    pub fn spawn_local<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        spawn_here(&self.exec, self.index, fut)
    }

    /// Spawns a `Send` future on shard `shard` (this one or another).
    pub fn spawn_on<F>(&self, shard: usize, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        spawn(&self.exec, shard, fut)
    }

    /// Reads up to `len` bytes at `offset` (see [`Executor::read`](crate::Executor::read)).
    pub fn read(&self, file: &File, offset: u64, len: usize) -> Completion<Vec<u8>> {
        self.read_into(file, offset, len, Vec::new())
    }

    /// Reads into `buf`'s allocation (see [`Executor::read_into`](crate::Executor::read_into)).
    pub fn read_into(
        &self,
        file: &File,
        offset: u64,
        len: usize,
        buf: Vec<u8>,
    ) -> Completion<Vec<u8>> {
        self.exec.read(file, offset, len, buf, None)
    }

    /// Writes all of `data` at `offset` (see [`Executor::write`](crate::Executor::write)).
    pub fn write(&self, file: &File, offset: u64, data: impl Into<Vec<u8>>) -> Completion<usize> {
        let op = crate::validate::write_op(file, offset, data.into(), self.exec.limits);
        self.exec.request(file, op, Reply::Count, None)
    }

    /// Reads up to `len` bytes at `offset` of an O_DIRECT file owned by this shard straight into
    /// one of the shard's registered pool buffers (READ_FIXED), and hands that buffer to the task
    /// as a [`PoolBuf`]: no copy. `len` must fit one buffer (`buffer_size` rounded down to 4096)
    /// and be 4096-aligned, as `offset`. The buffer goes back to the pool when the guard is
    /// dropped (never before the read's completion); hold it briefly: the shard's O_DIRECT I/O
    /// waits while the pool is empty.
    pub async fn read_pooled(&self, file: &File, offset: u64, len: usize) -> Result<PoolBuf> {
        if !self.owns(file) || !on_shard(self.exec.id, self.index) {
            return Err(Error::invalid(
                "read_pooled",
                format!(
                    "{} is not owned by shard {} (or this is not its thread): pooled reads use \
                     the shard's own pool",
                    file.path().display(),
                    self.index
                ),
            ));
        }
        let op = crate::validate::read_op(file, offset, len, Vec::new(), self.exec.limits);
        let lease = self.exec.request(file, op, Reply::Lease, None).await?;
        Ok(PoolBuf {
            lease,
            _not_send: std::marker::PhantomData,
        })
    }

    /// fsync, after every earlier write to the file.
    pub fn fsync(&self, file: &File) -> Completion<()> {
        self.exec
            .request(file, Ok(crate::validate::sync_op(false)), Reply::Unit, None)
    }

    /// fdatasync, after every earlier write to the file.
    pub fn fdatasync(&self, file: &File) -> Completion<()> {
        self.exec
            .request(file, Ok(crate::validate::sync_op(true)), Reply::Unit, None)
    }

    /// The file's size, after every earlier operation on it.
    pub fn size(&self, file: &File) -> Completion<u64> {
        self.exec
            .request(file, Ok(crate::validate::size_op()), Reply::Size, None)
    }

    /// Completes after at least `d`, through an `IORING_OP_TIMEOUT` on this shard's ring (no
    /// timer thread). Sleeps started in one turn are armed in the order they were started.
    ///
    /// Dropping the future early takes its timeout out of the ring (`IORING_OP_TIMEOUT_REMOVE`,
    /// at the shard's next turn): it holds no completion-queue slot after that.
    pub fn sleep(&self, d: Duration) -> Sleep {
        Sleep {
            deadline: Instant::now().checked_add(d),
            state: None,
        }
    }
}

/// The future of [`LocalShard::sleep`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct Sleep {
    /// `None`: too far to be a point in time (never completes).
    deadline: Option<Instant>,
    state: Option<Arc<TimerState>>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(state) = &self.state {
            if state.is_fired() {
                return Poll::Ready(());
            }
            state.waker.register(cx.waker());
            return if state.is_fired() {
                Poll::Ready(())
            } else {
                Poll::Pending
            };
        }
        let Some(deadline) = self.deadline else {
            return Poll::Pending;
        };
        let now = Instant::now();
        if now >= deadline {
            return Poll::Ready(());
        }
        let state = Arc::new(TimerState {
            deadline,
            fired: std::sync::atomic::AtomicBool::new(false),
            waker: atomic_waker::AtomicWaker::new(),
            dropped: std::sync::atomic::AtomicBool::new(false),
            slot: std::sync::atomic::AtomicUsize::new(usize::MAX),
        });
        state.waker.register(cx.waker());
        if current_shard().is_some() && !EXITED.with(Cell::get) {
            TIMERS.with(|q| q.borrow_mut().push(Arc::clone(&state)));
        } else {
            // Not on a running shard (the future moved): a helper thread keeps the promise.
            let t = Arc::clone(&state);
            let spawned = std::thread::Builder::new()
                .name("ringshard-sleep".into())
                .spawn(move || {
                    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                    t.fire();
                });
            if spawned.is_err() {
                // No thread: wait on this one rather than wake early.
                std::thread::sleep(deadline.saturating_duration_since(now));
                return Poll::Ready(());
            }
        }
        self.state = Some(state);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        let Some(state) = self.state.take() else {
            return;
        };
        if state.is_fired() {
            return;
        }
        state
            .dropped
            .store(true, std::sync::atomic::Ordering::Release);
        // On its shard's thread (where a sleep is armed and polled), the shard takes it out of
        // the ring on its next turn; elsewhere it just expires.
        if current_shard().is_some() && !EXITED.with(Cell::get) {
            DROPPED_TIMERS.with(|q| q.borrow_mut().push(state));
        }
    }
}

/// Gives the other tasks of the shard (and its inbox and ring) a turn: the task goes to the back
/// of the run queue.
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

/// The future of [`yield_now`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Makes the (completion, request) pair of one checked operation.
pub(crate) fn make<T>(
    exec: &ExecShared,
    file: &File,
    op: IoOp,
    reply: impl FnOnce(crate::completion::Completer<T>) -> Reply,
    deadline: Option<Instant>,
) -> (Completion<T>, IoRequest) {
    let (c, done) = pair(exec.id, file.shard());
    (
        c,
        IoRequest {
            file: file.handle(),
            pending: crate::inline::pending_for(file, op.kind()),
            op,
            reply: reply(done),
            // In a shard task: the start of its poll, at most a poll earlier than now.
            at: POLL_START.with(Cell::get).unwrap_or_else(Instant::now),
            deadline,
        },
    )
}
