//! The caller's handle on one operation: wait for it (blocking, with or without a timeout),
//! `.await` it in any async runtime, or cancel it.
//!
//! A [`Completion`] and its shard-side `Completer` share one small allocation (`Inner`): a state
//! word, the result cell and a waker slot. No lock is taken on either side. The completer is
//! completed exactly once; if it is dropped without completing (its shard panicked or stopped), the
//! drop completes it with an error, so no handle is ever left hanging.
//!
//! # The state word
//!
//! Bits of `Inner::state` (an `AtomicU32`, also the futex word a blocked thread sleeps on):
//!
//! | bit              | set by                         | means                                      |
//! | ---------------- | ------------------------------ | ------------------------------------------ |
//! | `READY`          | the completer, once            | the result is in the cell                  |
//! | `TAKEN`          | the consumer, once             | the result was moved out of the cell       |
//! | `CANCELLED`      | the consumer (`cancel`, drop)  | nobody wants the result any more           |
//! | `THREAD_WAITING` | a blocking waiter              | a thread may sleep on the word: futex-wake |
//! | `TASK_WAITING`   | `poll`, after registering      | a waker is in the slot: wake it            |
//!
//! - Producer (`Completer::complete`, one per allocation since it takes `self`): writes the result
//!   into the cell, then `fetch_or(READY, AcqRel)`. It never touches the cell again. If the old
//!   value had `THREAD_WAITING` it calls `park::wake_all` on the word; if it had `TASK_WAITING` it
//!   takes the waker from the slot and wakes it (inside `catch_unwind`).
//! - Consumer (the one `Completion`; taking needs `self` or `&mut self`, so there is one at a
//!   time): reads the cell only after it has seen `READY` with an `Acquire` load or RMW, which pairs
//!   with the producer's `Release`; then it sets `TAKEN`, so the cell is read at most once.
//! - A blocking waiter announces itself with an RMW (`THREAD_WAITING`) and futex-sleeps only while
//!   the word still equals the value that RMW produced. Both announcements and `READY` are RMWs on
//!   one word, so one of them comes first: either the producer sees the announcement and wakes, or
//!   the waiter sees `READY` and does not sleep (the kernel re-checks the word under its futex
//!   lock). `poll` does the same with `TASK_WAITING` after registering its waker. No wake-up is
//!   lost, and a completion nobody sleeps on costs no system call.
//! - The result lives and dies with the `Arc`: a result never taken is dropped with `Inner`.

use crate::error::{Error, Result};
use crate::park;
use atomic_waker::AtomicWaker;
use std::cell::{Cell, UnsafeCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The result is in the cell (set once, by the completer, with `Release`).
const READY: u32 = 1;
/// The result was moved out of the cell (set once, by the consumer).
const TAKEN: u32 = 1 << 1;
/// The handle was dropped or `cancel` was called before the result arrived.
const CANCELLED: u32 = 1 << 2;
/// A thread announced that it may sleep on the word: completing must futex-wake it.
const THREAD_WAITING: u32 = 1 << 3;
/// A task registered its waker in the slot: completing must wake it.
const TASK_WAITING: u32 = 1 << 4;

/// The allocation shared by a [`Completion`] and its `Completer`.
struct Inner<T> {
    state: AtomicU32,
    /// Written once by the completer before `READY`; read once by the consumer after `READY`.
    /// The error is boxed (as in [`Repr::Ready`]): an `Error` is 80 bytes, and with it inline the
    /// allocation of a `Completion<Vec<u8>>` is 144 bytes, past glibc's fastbins (128), so that a
    /// task with 32 reads in flight paid malloc's slow path (`_int_malloc`/`_int_free`: ~375
    /// instructions per read); boxed, it is 88.
    result: UnsafeCell<Option<std::result::Result<T, Box<Error>>>>,
    waker: AtomicWaker,
    /// The executor and shard the operation was routed to, for the shard-thread deadlock check.
    exec: u64,
    shard: usize,
}

// SAFETY: the only non-Sync part is the result cell, and it is never accessed by two threads at
// once: the single producer (the `Completer`, consumed by `complete`) writes it before setting
// READY with Release and never touches it again; the single consumer (the `Completion`, whose
// taking methods need `self` or `&mut self`) reads it only after observing READY with Acquire and
// sets TAKEN so it reads it once; the final drop runs after the `Arc`'s own synchronization. `T`
// values are moved between threads, never shared by reference, so `T: Send` is all that is needed.
unsafe impl<T: Send> Send for Inner<T> {}
// SAFETY: see the `Send` impl: shared access (`&Inner`) touches the cell only under the
// READY/TAKEN protocol above; everything else is atomics or the (Sync) `AtomicWaker`.
unsafe impl<T: Send> Sync for Inner<T> {}

/// The result of one operation, delivered later.
///
/// Dropping a `Completion` whose result has not arrived asks the shard to cancel the operation
/// (see [`cancel`](Self::cancel)); it never blocks.
///
/// ```
/// # fn main() -> ringshard::Result<()> {
/// let exec = ringshard::Executor::builder().shards(1).build()?;
/// let dir = tempfile::tempdir().unwrap();
/// let file = exec.open(dir.path().join("f"), ringshard::OpenOptions::new().read(true).write(true).create(true)).wait()?;
/// let n = exec.write(&file, 0, b"abc".to_vec()).wait()?;
/// assert_eq!(n, 3);
/// // Or, in async code: `exec.read(&file, 0, 3).await?`
/// let mut pending = exec.read(&file, 0, 3);
/// let data = pending.wait_timeout(std::time::Duration::from_secs(5))?;
/// assert_eq!(data, b"abc");
/// # Ok(()) }
/// ```
#[must_use = "an operation's result (and its errors) is only seen through its Completion"]
pub struct Completion<T> {
    repr: Repr<T>,
}

/// Where a [`Completion`]'s result comes from.
enum Repr<T> {
    /// Shared with the shard's `Completer`.
    Shared(Arc<Inner<T>>),
    /// Known when the handle was made (an inline read, a refused request): no allocation for a
    /// value, no atomics. `None` once taken. The error is boxed (refusals are rare, and an
    /// `Error` is 80 bytes): the handle stays small to move around futures.
    Ready(Option<std::result::Result<T, Box<Error>>>),
}

// A `Completion` never pins its result: `poll` moves it out whole. So it is `Unpin` whatever `T`
// is, as it was when it held only an `Arc`.
impl<T> Unpin for Completion<T> {}

impl<T> std::fmt::Debug for Completion<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completion")
            .field("done", &self.is_done())
            .finish()
    }
}

/// The shard's end of a [`Completion`].
pub(crate) struct Completer<T> {
    /// `None` once completed (so `Drop` knows there is nothing left to do).
    inner: Option<Arc<Inner<T>>>,
}

/// Makes a linked (completion, completer) pair for an operation of executor `exec` routed to
/// `shard`.
pub(crate) fn pair<T>(exec: u64, shard: usize) -> (Completion<T>, Completer<T>) {
    let inner = Arc::new(Inner {
        state: AtomicU32::new(0),
        result: UnsafeCell::new(None),
        waker: AtomicWaker::new(),
        exec,
        shard,
    });
    (
        Completion {
            repr: Repr::Shared(Arc::clone(&inner)),
        },
        Completer { inner: Some(inner) },
    )
}

thread_local! {
    /// `(executor id, shard index)` when this thread is a shard thread.
    static CURRENT_SHARD: Cell<Option<(u64, usize)>> = const { Cell::new(None) };
}

/// Marks this thread as shard `shard` of executor `exec`: a blocking wait here for that shard's
/// own work then fails with [`Error::WouldDeadlock`] instead of hanging.
pub(crate) fn set_current_shard(exec: u64, shard: usize) {
    CURRENT_SHARD.with(|c| c.set(Some((exec, shard))));
}

/// The `(executor id, shard index)` this thread runs, if it is a shard thread.
pub(crate) fn current_shard() -> Option<(u64, usize)> {
    CURRENT_SHARD.with(Cell::get)
}

/// Wakes `w`, containing a panic of the waker's `wake` so it cannot unwind into the caller (a
/// shard thread, which must keep running whatever a caller's runtime does).
pub(crate) fn wake_guarded(w: Waker) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || w.wake()));
}

/// The error a second take of one result gets.
fn already_taken() -> Error {
    Error::invalid("wait", "the result of this completion was already taken")
}

/// Results known at once that a thread may take, as futures, before it yields to its runtime
/// (see [`coop_yield`]): as many as tokio lets a task take from its own resources per poll. A
/// yield costs the runtime a reschedule; measured with 64 tasks of cached reads on 2 tokio
/// workers, 64 cost about 5% more CPU per read than 128.
const READY_BUDGET: u32 = 128;

thread_local! {
    /// Ready-at-once futures taken on this thread since it last yielded.
    static READY_STREAK: Cell<u32> = const { Cell::new(0) };
}

/// Whether a future that is ready at once should yield first (it then wakes itself): every
/// [`READY_BUDGET`]-th time on a thread. A task whose reads are all served inline (page-cache
/// hits) would otherwise never return to its runtime, and the other tasks of its worker thread
/// would starve (tokio's own budget only counts tokio's resources).
pub(crate) fn coop_yield(cx: &mut Context<'_>) -> bool {
    let n = READY_STREAK.with(|c| {
        let n = c.get() + 1;
        c.set(if n >= READY_BUDGET { 0 } else { n });
        n
    });
    if n >= READY_BUDGET {
        cx.waker().wake_by_ref();
        true
    } else {
        false
    }
}

/// The result of a [`Repr::Ready`] completion (an error once taken).
fn take_known<T>(r: &mut Option<std::result::Result<T, Box<Error>>>) -> Result<T> {
    match r.take() {
        Some(r) => r.map_err(|e| *e),
        None => Err(already_taken()),
    }
}

impl<T> Completion<T> {
    /// A completion that is already done, with `result`. Allocates nothing. Awaited, it is ready
    /// at once, except that one in 128 such completions awaited on a thread first yields to the
    /// runtime (waking itself), so a task that only ever finds its results ready still lets the
    /// other tasks of its thread run.
    pub fn ready(result: Result<T>) -> Self {
        Completion {
            repr: Repr::Ready(Some(result.map_err(Box::new))),
        }
    }

    /// The shared state, unless the result was known at once.
    fn shared(&self) -> Option<&Arc<Inner<T>>> {
        match &self.repr {
            Repr::Shared(inner) => Some(inner),
            Repr::Ready(_) => None,
        }
    }

    /// Whether the result has arrived (and not been taken yet). Never blocks.
    pub fn is_done(&self) -> bool {
        match &self.repr {
            Repr::Shared(inner) => inner.state.load(Ordering::Acquire) & (READY | TAKEN) == READY,
            Repr::Ready(r) => r.is_some(),
        }
    }

    /// Moves the result out of the cell. Call only with `state` just loaded (or returned by an RMW)
    /// with `Acquire` ordering and holding `READY`, from the one consumer (a `&mut Completion`).
    fn take_ready(inner: &Inner<T>, state: u32) -> Result<T> {
        debug_assert!(state & READY != 0);
        if state & TAKEN != 0 {
            return Err(already_taken());
        }
        // SAFETY: `state` was observed with Acquire and has READY, so the completer's write of the
        // cell happened before this read and it will never write again. Callers hold the one
        // `Completion` mutably, so this is the only consumer, and TAKEN was not set, so nobody
        // read the cell before; we set TAKEN below, so nobody reads it after.
        let r = unsafe { (*inner.result.get()).take() };
        inner.state.fetch_or(TAKEN, Ordering::Relaxed);
        r.map_or_else(|| Err(already_taken()), |r| r.map_err(|e| *e))
    }

    /// The result if it is there (`Some`), or `None`; also `Some` (an error) if it was taken.
    fn check(&mut self) -> Option<Result<T>> {
        match &mut self.repr {
            Repr::Ready(r) => Some(take_known(r)),
            Repr::Shared(inner) => {
                let s = inner.state.load(Ordering::Acquire);
                if s & TAKEN != 0 {
                    Some(Err(already_taken()))
                } else if s & READY != 0 {
                    Some(Self::take_ready(inner, s))
                } else {
                    None
                }
            }
        }
    }

    /// Waiting here would wait for the shard that runs this very thread.
    /// Blocking on a thread of one of this executor's shards: waiting for that shard can never
    /// end, and waiting for another can deadlock (two shards waiting on each other), and either
    /// stalls every request of the blocked shard meanwhile.
    fn would_deadlock(&self) -> Option<Error> {
        let exec = self.shared()?.exec;
        match current_shard() {
            Some((e, shard)) if e == exec => Some(Error::WouldDeadlock { op: "wait", shard }),
            _ => None,
        }
    }

    /// Announces a sleeping thread, then sleeps while the word is unchanged (at most `timeout`).
    /// Returns the result if it arrived before the sleep; otherwise the caller re-checks.
    fn sleep(&mut self, timeout: Option<Duration>) -> Option<Result<T>> {
        let Some(inner) = self.shared() else {
            return self.check();
        };
        let old = inner.state.fetch_or(THREAD_WAITING, Ordering::AcqRel);
        if old & READY != 0 {
            return Some(Self::take_ready(inner, old));
        }
        park::wait(&inner.state, old | THREAD_WAITING, timeout);
        None
    }

    /// Blocks the calling thread until the operation completes. It first keeps looking for a
    /// short while, yielding the core between looks (the shard often finishes meanwhile, and a
    /// sleep plus a wake-up costs two context switches and a futex call on the shard's side),
    /// then sleeps until the result arrives.
    ///
    /// Called on the thread of the very shard this operation waits for, while the result has not
    /// arrived, it returns [`Error::WouldDeadlock`] at once: that shard cannot run while its
    /// thread waits.
    pub fn wait(mut self) -> Result<T> {
        if let Some(r) = self.check() {
            return r;
        }
        if let Some(e) = self.would_deadlock() {
            return Err(e);
        }
        // Look for a while before sleeping (see `park::look`).
        let mut got = None;
        if crate::park::look(|| {
            got = self.check();
            got.is_some()
        }) {
            if let Some(r) = got {
                return r;
            }
        }
        loop {
            if let Some(r) = self.sleep(None) {
                return r;
            }
            if let Some(r) = self.check() {
                return r;
            }
        }
    }

    /// Blocks up to `timeout` (any `Duration`; `Duration::MAX` waits as long as it takes). On
    /// [`Error::Timeout`] the operation is still running and this handle can be waited on
    /// again. Like [`wait`](Self::wait), it returns [`Error::WouldDeadlock`] on the thread
    /// of the shard it waits for.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<T> {
        if let Some(r) = self.check() {
            return r;
        }
        if let Some(e) = self.would_deadlock() {
            return Err(e);
        }
        // None: so far off that `Instant` cannot hold it, i.e. no deadline.
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let left = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => {
                        let Some(inner) = self.shared() else {
                            return self.check().unwrap_or_else(|| Err(already_taken()));
                        };
                        // Withdraw the announcement (only this consumer sets or clears it), so
                        // the completer does not pay for a futex wake nobody needs.
                        let old = inner.state.fetch_and(!THREAD_WAITING, Ordering::AcqRel);
                        if old & READY != 0 {
                            return Self::take_ready(inner, old);
                        }
                        return Err(Error::Timeout);
                    }
                },
            };
            if let Some(r) = self.sleep(left) {
                return r;
            }
            if let Some(r) = self.check() {
                return r;
            }
        }
    }

    /// The result if it has arrived, without blocking. After the result was taken (by this call,
    /// `wait_timeout` or `.await`), gives an [`Error::InvalidArgument`] error.
    pub fn try_take(&mut self) -> Option<Result<T>> {
        self.check()
    }

    /// Asks for the operation to be cancelled. The shard skips an operation it has not issued yet
    /// and asks the kernel to cancel an issued read; the handle then completes with
    /// [`Error::Cancelled`], or with the operation's real result if it finished first.
    /// Waiting (or awaiting) after `cancel` still works. Never blocks.
    pub fn cancel(&self) {
        if let Some(inner) = self.shared() {
            inner.state.fetch_or(CANCELLED, Ordering::Release);
        }
    }

    /// Lets go of the handle without cancelling the operation (dropping it cancels): the
    /// operation runs to its end and its result, errors included, is dropped. For writes whose
    /// outcome nobody will look at (a `FileCursor`'s write-behind, a log line). A detached
    /// operation still finishes before its executor's shutdown completes, and before the process
    /// exits when the executor was dropped (see [`Executor`](crate::Executor)'s `Drop`). Never
    /// blocks.
    pub fn detach(self) {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again (ManuallyDrop), so reading its one field
        // out moves the `Arc` (or the known result) rather than duplicating it; dropping that is
        // all that remains of the handle.
        let repr = unsafe { std::ptr::read(&this.repr) };
        if let Repr::Shared(inner) = repr {
            // A task's waker would only be woken for nothing.
            drop(inner.waker.take());
        }
    }
}

impl<T> Future for Completion<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // `Completion` is `Unpin` (an `Arc` or the result).
        let this = self.get_mut();
        let inner = match &mut this.repr {
            Repr::Ready(r) => {
                if r.is_some() && coop_yield(cx) {
                    return Poll::Pending;
                }
                return Poll::Ready(take_known(r));
            }
            Repr::Shared(inner) => inner,
        };
        let s = inner.state.load(Ordering::Acquire);
        if s & TAKEN != 0 {
            return Poll::Ready(Err(already_taken()));
        }
        if s & READY != 0 {
            return Poll::Ready(Self::take_ready(inner, s));
        }
        inner.waker.register(cx.waker());
        // Announce the waker after registering it, and re-check in the same RMW: if the completer
        // got there first we see READY here; otherwise it sees TASK_WAITING and wakes the waker.
        let old = inner.state.fetch_or(TASK_WAITING, Ordering::AcqRel);
        if old & READY != 0 {
            return Poll::Ready(Self::take_ready(inner, old));
        }
        Poll::Pending
    }
}

impl<T> Drop for Completion<T> {
    fn drop(&mut self) {
        let Some(inner) = self.shared() else { return };
        let s = inner.state.load(Ordering::Acquire);
        if s & READY == 0 {
            // Racing with `complete` is harmless: a completed operation ignores the bit.
            let old = inner.state.fetch_or(CANCELLED, Ordering::Release);
            if old & (READY | TASK_WAITING) == TASK_WAITING {
                // Let the task's waker go now rather than when the shard finishes the operation.
                drop(inner.waker.take());
            }
        }
    }
}

impl<T> Completer<T> {
    /// Delivers the result and wakes whoever waits (thread or task). Never panics, and a waker
    /// that panics does not unwind into the caller.
    pub(crate) fn complete(mut self, result: Result<T>) {
        if let Some(inner) = self.inner.take() {
            Self::deliver(&inner, result);
        }
    }

    fn deliver(inner: &Inner<T>, result: Result<T>) {
        // SAFETY: this completer is the only producer (`complete` consumes it and `inner` was
        // taken out of it, so this runs once per allocation), and READY is not set yet, so the
        // consumer does not read the cell now; the Release in the `fetch_or` below publishes the
        // write before the consumer can see READY.
        unsafe { *inner.result.get() = Some(result.map_err(Box::new)) };
        let old = inner.state.fetch_or(READY, Ordering::AcqRel);
        // The completer keeps its `Arc` until it returns, so the word outlives the wake even if
        // the consumer takes the result and drops its handle in between.
        if old & THREAD_WAITING != 0 {
            park::wake_all(&inner.state);
        }
        if old & TASK_WAITING != 0 {
            if let Some(w) = inner.waker.take() {
                wake_guarded(w);
            }
        }
    }

    /// Whether the caller dropped its handle or called [`Completion::cancel`].
    pub(crate) fn is_cancelled(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|i| i.state.load(Ordering::Acquire) & CANCELLED != 0)
    }
}

/// Why completers dropped on this thread without a result are failed: set by a shard thread while
/// it unwinds from a panic or drains at shutdown.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AbandonReason {
    ShardPanicked,
    Shutdown,
}

thread_local! {
    static ABANDON_REASON: Cell<Option<AbandonReason>> = const { Cell::new(None) };
}

/// Sets the reason used for completers dropped on this thread from now on.
pub(crate) fn set_abandon_reason(reason: AbandonReason) {
    ABANDON_REASON.with(|r| r.set(Some(reason)));
}

/// Drops `value`, whose completers (inside closures, out of reach) fail with what `err` says:
/// [`Error::Shutdown`], or a panicked shard's `ShardFailed` (any other error: the
/// thread's reason stands).
pub(crate) fn drop_failing<T>(value: T, err: &Error) {
    let reason = match err {
        Error::Shutdown => Some(AbandonReason::Shutdown),
        Error::ShardFailed { .. } => Some(AbandonReason::ShardPanicked),
        _ => None,
    };
    let Some(reason) = reason else {
        return drop(value);
    };
    let before = ABANDON_REASON.with(|r| r.replace(Some(reason)));
    drop(value);
    ABANDON_REASON.with(|r| r.set(before));
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let shard = inner.shard;
            let err = match ABANDON_REASON.with(Cell::get) {
                Some(AbandonReason::Shutdown) => Error::Shutdown,
                Some(AbandonReason::ShardPanicked) => Error::ShardFailed {
                    shard,
                    reason: "the shard thread panicked; this operation did not complete".into(),
                },
                None => Error::ShardFailed {
                    shard,
                    reason: "the operation was dropped before it completed".into(),
                },
            };
            Self::deliver(&inner, Err(err));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::task::Wake;

    #[test]
    fn a_read_completion_fits_a_fastbin() {
        // The `Arc`'s allocation: two counts and `Inner` (see `Inner::result`). glibc's fastbins
        // take requests up to 128 bytes on 64-bit targets.
        let size = 2 * std::mem::size_of::<usize>() + std::mem::size_of::<Inner<Vec<u8>>>();
        assert!(size <= 128, "{size} bytes");
    }

    #[test]
    fn wait_gets_result_from_other_thread() {
        let (c, done) = pair::<u32>(1, 0);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            done.complete(Ok(7));
        });
        assert_eq!(c.wait().unwrap(), 7);
        t.join().unwrap();
    }

    #[test]
    fn wait_timeout_then_wait_again() {
        let (mut c, done) = pair::<u32>(1, 0);
        assert_eq!(
            c.wait_timeout(Duration::from_millis(10)),
            Err(Error::Timeout)
        );
        assert!(!c.is_done());
        assert_eq!(
            c.shared().unwrap().state.load(Ordering::Relaxed) & THREAD_WAITING,
            0,
            "a timed-out wait withdraws its announcement"
        );
        done.complete(Ok(1));
        assert!(c.is_done());
        assert_eq!(c.wait_timeout(Duration::from_secs(1)), Ok(1));
        assert!(!c.is_done());
        assert!(c.try_take().unwrap().is_err(), "second take is an error");
    }

    #[test]
    fn dropped_completer_fails_the_handle() {
        let (c, done) = pair::<u32>(1, 3);
        drop(done);
        match c.wait() {
            Err(Error::ShardFailed { shard: 3, .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn abandon_reason_shutdown() {
        std::thread::spawn(|| {
            set_abandon_reason(AbandonReason::Shutdown);
            let (c, done) = pair::<u32>(1, 0);
            drop(done);
            assert_eq!(c.wait(), Err(Error::Shutdown));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn future_with_futures_executor() {
        let (c, done) = pair::<&'static str>(1, 0);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            done.complete(Ok("x"));
        });
        assert_eq!(futures::executor::block_on(c).unwrap(), "x");
        t.join().unwrap();
    }

    #[test]
    fn ready_is_done() {
        let c = Completion::ready(Ok(5u8));
        assert!(c.is_done());
        assert_eq!(c.wait(), Ok(5));
    }

    #[test]
    fn unread_result_is_dropped_once_with_the_allocation() {
        struct Counted(Arc<AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let drops = Arc::new(AtomicUsize::new(0));
        let (c, done) = pair::<Counted>(1, 0);
        done.complete(Ok(Counted(Arc::clone(&drops))));
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(c);
        assert_eq!(drops.load(Ordering::SeqCst), 1);

        let (c, done) = pair::<Counted>(1, 0);
        drop(c);
        done.complete(Ok(Counted(Arc::clone(&drops))));
        assert_eq!(drops.load(Ordering::SeqCst), 2);

        let (c, done) = pair::<Counted>(1, 0);
        done.complete(Ok(Counted(Arc::clone(&drops))));
        let v = c.wait();
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        drop(v);
        assert_eq!(drops.load(Ordering::SeqCst), 3);
    }

    /// Counts its wake-ups.
    struct CountingWaker(AtomicUsize);
    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Polls `c` with a counting waker until it is ready; between polls, waits for a wake-up.
    fn poll_with_counting_waker<T>(mut c: Completion<T>) -> Result<T> {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);
        loop {
            let seen = counter.0.load(Ordering::SeqCst);
            match Pin::new(&mut c).poll(&mut cx) {
                Poll::Ready(r) => return r,
                Poll::Pending => {
                    // Pending is only allowed if a wake-up will come: wait for it.
                    while counter.0.load(Ordering::SeqCst) == seen {
                        std::thread::yield_now();
                    }
                }
            }
        }
    }

    /// Aborts the process if the returned sender is not used (or dropped) within `limit`.
    fn watchdog(limit: Duration) -> crossbeam_channel::Sender<()> {
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        std::thread::spawn(move || {
            if let Err(crossbeam_channel::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("completion stress test hung for {limit:?}: aborting");
                std::process::abort();
            }
        });
        tx
    }

    #[test]
    fn stress_every_result_arrives_exactly_once() {
        const THREADS: usize = 8;
        const PAIRS: usize = 20_000;
        const BATCH: usize = 8;
        let dog = watchdog(Duration::from_secs(60));
        // Two completer threads take completers from all waiters.
        let (tx, rx) = crossbeam_channel::unbounded::<(Completer<u64>, u64)>();
        let completers: Vec<_> = (0..2)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    for (done, v) in rx {
                        // Some late results, so waiters get past their yields and sleep.
                        if v % 512 == 0 {
                            std::thread::sleep(Duration::from_micros(200));
                        } else if v % 3 == 0 {
                            std::thread::yield_now();
                        }
                        done.complete(Ok(v));
                    }
                })
            })
            .collect();
        drop(rx);
        let waiters: Vec<_> = (0..THREADS)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut sum = 0u64;
                    let mut got = 0usize;
                    let mut i = 0;
                    while i < PAIRS {
                        let mut batch = Vec::with_capacity(BATCH);
                        for _ in 0..BATCH.min(PAIRS - i) {
                            let v = (t * PAIRS + i) as u64;
                            let (c, done) = pair::<u64>(1, t);
                            tx.send((done, v)).unwrap();
                            batch.push((c, v));
                            i += 1;
                        }
                        for (mut c, v) in batch {
                            let r = match v % 4 {
                                0 => c.wait(),
                                1 => match c.wait_timeout(Duration::from_micros(5)) {
                                    Err(Error::Timeout) => c.wait(),
                                    other => {
                                        assert!(c.try_take().unwrap().is_err());
                                        other
                                    }
                                },
                                2 => futures::executor::block_on(c),
                                _ => poll_with_counting_waker(c),
                            };
                            assert_eq!(r, Ok(v));
                            sum += v;
                            got += 1;
                        }
                    }
                    (sum, got)
                })
            })
            .collect();
        drop(tx);
        let mut sum = 0u64;
        let mut got = 0usize;
        for w in waiters {
            let (s, g) = w.join().unwrap();
            sum += s;
            got += g;
        }
        for c in completers {
            c.join().unwrap();
        }
        let n = (THREADS * PAIRS) as u64;
        assert_eq!(got as u64, n);
        assert_eq!(sum, n * (n - 1) / 2);
        let _ = dog.send(());
    }

    #[test]
    fn panicking_waker_does_not_unwind_into_complete() {
        struct PanicWaker;
        impl Wake for PanicWaker {
            fn wake(self: Arc<Self>) {
                panic!("this waker panics on purpose");
            }
        }
        let (mut c, done) = pair::<u32>(1, 0);
        let waker = Waker::from(Arc::new(PanicWaker));
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut c).poll(&mut cx).is_pending());
        let t = std::thread::spawn(move || done.complete(Ok(9)));
        t.join().expect("complete() must return normally");
        assert_eq!(c.try_take(), Some(Ok(9)));
    }

    #[test]
    fn wait_timeout_duration_max() {
        let (mut c, done) = pair::<u32>(1, 0);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            done.complete(Ok(4));
        });
        assert_eq!(c.wait_timeout(Duration::MAX), Ok(4));
        t.join().unwrap();

        let mut ready = Completion::ready(Ok(6u32));
        let start = Instant::now();
        assert_eq!(ready.wait_timeout(Duration::MAX), Ok(6));
        assert!(start.elapsed() < Duration::from_secs(5));
        // Zero is "do not wait": a pending handle times out at once.
        let (mut c, _done) = pair::<u32>(1, 0);
        assert_eq!(c.wait_timeout(Duration::ZERO), Err(Error::Timeout));
    }

    #[test]
    fn drop_and_cancel_mark_the_completer_cancelled() {
        let (c, done) = pair::<u32>(1, 0);
        assert!(!done.is_cancelled());
        drop(c);
        assert!(done.is_cancelled());
        done.complete(Ok(1)); // nobody listens: no error, no panic

        let (c, done) = pair::<u32>(1, 0);
        c.cancel();
        assert!(done.is_cancelled());
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            done.complete(Err(Error::Cancelled {
                op: "read",
                path: None,
            }));
        });
        assert!(matches!(c.wait(), Err(Error::Cancelled { .. })));
        t.join().unwrap();

        // Finished, then dropped: not cancelled, nothing fails.
        let (c, done) = pair::<u32>(1, 0);
        let state = Arc::clone(c.shared().unwrap());
        done.complete(Ok(2));
        drop(c);
        assert_eq!(state.state.load(Ordering::Acquire) & CANCELLED, 0);
    }

    #[test]
    fn drop_releases_a_registered_waker() {
        let (mut c, done) = pair::<u32>(1, 0);
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        assert!(Pin::new(&mut c)
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        drop(waker);
        assert_eq!(Arc::strong_count(&counter), 2);
        drop(c);
        assert_eq!(Arc::strong_count(&counter), 1);
        done.complete(Ok(0));
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn waiting_on_a_shard_of_the_same_executor_would_deadlock() {
        std::thread::spawn(|| {
            set_current_shard(1, 0);
            assert_eq!(current_shard(), Some((1, 0)));
            let (c, _done) = pair::<u32>(1, 0);
            assert_eq!(
                c.wait(),
                Err(Error::WouldDeadlock {
                    op: "wait",
                    shard: 0
                })
            );
            let (mut c, done) = pair::<u32>(1, 0);
            assert!(matches!(
                c.wait_timeout(Duration::from_secs(30)),
                Err(Error::WouldDeadlock { .. })
            ));
            // Already there: no deadlock, just the result.
            done.complete(Ok(3));
            assert_eq!(c.wait_timeout(Duration::from_secs(30)), Ok(3));

            // This executor's other shard: refused too (two shards waiting on each other would
            // never finish).
            let (c, _done) = pair::<u32>(1, 1);
            assert!(matches!(
                c.wait(),
                Err(Error::WouldDeadlock { shard: 0, .. })
            ));
            // Another executor's shards: a normal wait.
            for (exec, shard) in [(2, 0), (2, 1)] {
                let (c, done) = pair::<u32>(exec, shard);
                let flag = Arc::new(AtomicBool::new(false));
                let f2 = Arc::clone(&flag);
                let t = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(10));
                    f2.store(true, Ordering::SeqCst);
                    done.complete(Ok(8));
                });
                assert_eq!(c.wait(), Ok(8));
                assert!(flag.load(Ordering::SeqCst));
                t.join().unwrap();
            }
        })
        .join()
        .unwrap();
        assert_eq!(current_shard(), None);
    }
}
