//! The bound on descriptors in transit between callers and shards.
//!
//! A descriptor is in transit from the moment an open may create it (an open sent to a shard's
//! ring, or a descriptor given to `adopt`) until its shard has put it in its file table, and from
//! the drop of its last [`File`](crate::File) (or an explicit close) until the shard has closed
//! it. Drops never wait, and a shard reads its inbox at its own pace, so a caller that opens and
//! drops faster than a shard closes (a fast caller, a slow or stalled shard) would pile up
//! descriptors without bound and meet EMFILE. So each descriptor in transit holds an
//! [`InTransit`] token, and the executor lets at most `max` exist:
//! - an open (`open`, `open_async`) takes its token before it is sent to a shard, with
//!   [`FdTransit::enter_then`]: at once if there is room, else its hand-off waits in a queue, in
//!   order, and runs on the thread whose token drop makes room (a shard's, usually): nothing
//!   blocks, so `open_async` never blocks a runtime thread;
//! - `adopt` waits for room on its own thread ([`FdTransit::enter_bounded`]);
//! - a close takes one at once ([`FdTransit::enter`]: a drop never waits).
//!
//! The token is dropped where the descriptor's trip ends, whatever way it ends: installed,
//! closed, refused after shutdown, or dropped with a dead shard's messages. Descriptors the
//! executor holds are therefore at most the files the application holds open at once plus `max`.

use crate::error::{Error, Result};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// What an open does once it has its place among the descriptors in transit (or with the error
/// that means it never will): quick and never blocking, as it may run on a shard's thread.
pub(crate) type Handoff = Box<dyn FnOnce(Result<InTransit>) + Send>;

/// Descriptors in transit in one executor, and the openers waiting for room.
pub(crate) struct FdTransit {
    /// Descriptors in transit: the futex word waiting openers sleep on.
    count: AtomicU32,
    /// Threads waiting in `enter_bounded` for `count` to fall below `max`.
    waiting: AtomicU32,
    max: u32,
    /// Opens waiting for room, in arrival order (`enter_then`).
    queue: Mutex<VecDeque<Handoff>>,
    /// `queue`'s length, read without the lock by every token drop.
    queued: AtomicU32,
    /// A thread is handing places to the queue (`hand_off`): one at a time, so a token dropped
    /// by a hand-off (an open refused on its way) does not recurse into another.
    draining: AtomicBool,
}

impl std::fmt::Debug for FdTransit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FdTransit")
            .field("pending", &self.snapshot())
            .finish()
    }
}

/// How often a waiting opener looks whether the executor was shut down meanwhile (the wake-ups
/// it needs otherwise come from the tokens' drops).
const RECHECK: Duration = Duration::from_millis(100);

/// The bound on descriptors in transit, by default.
pub const DEFAULT_MAX_PENDING_FDS: usize = 128;

/// The largest bound [`ExecutorBuilder::max_pending_fds`](crate::ExecutorBuilder::max_pending_fds)
/// accepts.
pub const MAX_PENDING_FDS_LIMIT: usize = 1 << 20;

/// What [`Executor::pending_fds`](crate::Executor::pending_fds) reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingFds {
    /// Opens sent to a shard (and adopted descriptors) not yet installed on their file's shard,
    /// and files dropped (or closed) and not yet closed by their shard.
    pub in_transit: usize,
    /// Opens (`open`, `open_async`) and calls of `adopt` waiting for `in_transit` to fall below
    /// `max`.
    pub waiting: usize,
    /// The bound ([`ExecutorBuilder::max_pending_fds`](crate::ExecutorBuilder::max_pending_fds)).
    pub max: usize,
}

/// One descriptor in transit; dropping it ends the transit and wakes a waiting opener.
#[derive(Debug)]
pub(crate) struct InTransit(Arc<FdTransit>);

impl FdTransit {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(FdTransit {
            count: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            max: max.clamp(1, MAX_PENDING_FDS_LIMIT) as u32,
            queue: Mutex::new(VecDeque::new()),
            queued: AtomicU32::new(0),
            draining: AtomicBool::new(false),
        })
    }

    fn lock_queue(&self) -> MutexGuard<'_, VecDeque<Handoff>> {
        // A hand-off runs outside the lock: nothing can poison it half-way.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A token if fewer than `max` are out.
    fn try_enter(self: &Arc<Self>) -> Option<InTransit> {
        let mut n = self.count.load(Ordering::SeqCst);
        while n < self.max {
            match self
                .count
                .compare_exchange_weak(n, n + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Some(InTransit(Arc::clone(self))),
                Err(now) => n = now,
            }
        }
        None
    }

    /// A token now, if there is room and no open waits for one (it must not overtake them).
    pub(crate) fn try_enter_now(self: &Arc<Self>) -> Option<InTransit> {
        if self.queued.load(Ordering::SeqCst) > 0 {
            return None;
        }
        self.try_enter()
    }

    /// Runs `then` with a token once fewer than `max` are out: now, on this thread, if there is
    /// room and no open waits before it; otherwise later, in arrival order, on the thread whose
    /// token drop makes room. Never blocks. `then` gets [`Error::Shutdown`] instead once
    /// `closed` is set (here, or from [`fail_queued`](Self::fail_queued) at shutdown).
    pub(crate) fn enter_then(self: &Arc<Self>, closed: &AtomicBool, then: Handoff) {
        {
            let mut q = self.lock_queue();
            // Under the lock: `fail_queued` takes the queue after `closed` is set, so an open
            // either sees `closed` here or is in the queue it takes.
            if closed.load(Ordering::Acquire) {
                drop(q);
                return then(Err(Error::Shutdown));
            }
            if q.is_empty() {
                if let Some(token) = self.try_enter() {
                    drop(q);
                    return then(Ok(token));
                }
            }
            q.push_back(then);
            self.queued.fetch_add(1, Ordering::SeqCst);
        }
        // A token dropped after the look above saw nothing queued: look again.
        self.hand_off();
    }

    /// Hands free places to the queued opens, first come first served.
    ///
    /// No hand-off is lost: a token drop lowers `count`, then looks at `queued`; an open raises
    /// `queued`, then looks at `count` (both SeqCst), so one of them sees the other and hands
    /// off. Only one thread hands off at a time; one that finds another at it leaves, and the
    /// other looks again after it stops (`draining` is cleared before that look).
    fn hand_off(self: &Arc<Self>) {
        loop {
            if self.queued.load(Ordering::SeqCst) == 0 {
                return;
            }
            if self.draining.swap(true, Ordering::SeqCst) {
                return;
            }
            loop {
                let next = {
                    let mut q = self.lock_queue();
                    if q.is_empty() {
                        None
                    } else {
                        self.try_enter().and_then(|token| {
                            let then = q.pop_front()?;
                            self.queued.fetch_sub(1, Ordering::SeqCst);
                            Some((then, token))
                        })
                    }
                };
                match next {
                    Some((then, token)) => then(Ok(token)),
                    None => break,
                }
            }
            self.draining.store(false, Ordering::SeqCst);
            if self.count.load(Ordering::SeqCst) >= self.max {
                return;
            }
        }
    }

    /// Fails every queued open with [`Error::Shutdown`] (the executor set `closed`).
    pub(crate) fn fail_queued(&self) {
        let queued: Vec<Handoff> = {
            let mut q = self.lock_queue();
            self.queued.fetch_sub(q.len() as u32, Ordering::SeqCst);
            q.drain(..).collect()
        };
        for then in queued {
            then(Err(Error::Shutdown));
        }
    }

    /// One more descriptor in transit, at once: a close (a drop must not block), or an open on
    /// one of the executor's shard threads (which must not wait for closes its own shard runs).
    pub(crate) fn enter(self: &Arc<Self>) -> InTransit {
        self.count.fetch_add(1, Ordering::SeqCst);
        InTransit(Arc::clone(self))
    }

    /// One more descriptor in transit, once fewer than `max` are: blocks the calling thread
    /// until then. Fails with [`Error::Shutdown`] once `closed` is set.
    pub(crate) fn enter_bounded(self: &Arc<Self>, closed: &AtomicBool) -> Result<InTransit> {
        loop {
            if closed.load(Ordering::Acquire) {
                return Err(Error::Shutdown);
            }
            let n = self.count.load(Ordering::SeqCst);
            if n < self.max {
                if self
                    .count
                    .compare_exchange_weak(n, n + 1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    return Ok(InTransit(Arc::clone(self)));
                }
                continue;
            }
            // Announced before the futex compares the word: a drop that lowers it after our
            // load sees the announcement and wakes us (both SeqCst), or the futex sees the new
            // value and returns at once.
            self.waiting.fetch_add(1, Ordering::SeqCst);
            crate::park::wait(&self.count, n, Some(RECHECK));
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    pub(crate) fn snapshot(&self) -> PendingFds {
        PendingFds {
            in_transit: self.count.load(Ordering::SeqCst) as usize,
            waiting: (self.waiting.load(Ordering::SeqCst) + self.queued.load(Ordering::SeqCst))
                as usize,
            max: self.max as usize,
        }
    }
}

impl Drop for InTransit {
    fn drop(&mut self) {
        let t = &self.0;
        let before = t.count.fetch_sub(1, Ordering::SeqCst);
        // Queued opens first (they never block anyone), then threads waiting in `adopt`.
        t.hand_off();
        if before <= t.max && t.waiting.load(Ordering::SeqCst) > 0 {
            crate::park::wake_all(&t.count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn an_opener_waits_at_the_bound_until_a_token_drops() {
        let t = FdTransit::new(2);
        let closed = AtomicBool::new(false);
        let a = t.enter_bounded(&closed).unwrap();
        let b = t.enter(); // a close: never waits
        let _c = t.enter(); // above the bound: still counted
        assert_eq!(t.snapshot().in_transit, 3);
        let (tx, rx) = mpsc::channel();
        let t2 = Arc::clone(&t);
        let opener = std::thread::spawn(move || {
            let closed = AtomicBool::new(false);
            let tok = t2.enter_bounded(&closed).unwrap();
            tx.send(()).unwrap();
            drop(tok);
        });
        while t.snapshot().waiting == 0 {
            std::thread::yield_now();
        }
        drop(a); // 2 in transit: still at the bound, the opener keeps waiting
        assert!(rx.try_recv().is_err());
        assert_eq!(t.snapshot().waiting, 1);
        drop(b); // 1: room
        rx.recv().unwrap();
        opener.join().unwrap();
        assert_eq!(t.snapshot().in_transit, 1);
    }

    /// A hand-off that records its number and keeps its token in `kept`.
    fn recorder(
        i: usize,
        log: &Arc<std::sync::Mutex<Vec<Result<usize>>>>,
        kept: &Arc<std::sync::Mutex<Vec<InTransit>>>,
    ) -> Handoff {
        let (log, kept) = (Arc::clone(log), Arc::clone(kept));
        Box::new(move |place| match place {
            Ok(t) => {
                kept.lock().unwrap().push(t);
                log.lock().unwrap().push(Ok(i));
            }
            Err(e) => log.lock().unwrap().push(Err(e)),
        })
    }

    #[test]
    fn queued_opens_get_their_places_in_order_as_tokens_drop() {
        let t = FdTransit::new(2);
        let closed = AtomicBool::new(false);
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
        let a = t.enter();
        t.enter_then(&closed, recorder(0, &log, &kept)); // room: at once, on this thread
        assert_eq!(*log.lock().unwrap(), [Ok(0)]);
        for i in 1..4 {
            t.enter_then(&closed, recorder(i, &log, &kept)); // at the bound: queued
        }
        let p = t.snapshot();
        assert_eq!((p.in_transit, p.waiting), (2, 3), "{p:?}");
        // A token dropped on another thread hands its place to the first queued open, there.
        std::thread::spawn(move || drop(a)).join().unwrap();
        assert_eq!(*log.lock().unwrap(), [Ok(0), Ok(1)]);
        assert_eq!(t.snapshot().waiting, 2);
        // A drop hands its place to the next queued open; a new open queues behind the rest.
        let first = kept.lock().unwrap().remove(0);
        drop(first);
        t.enter_then(&closed, recorder(4, &log, &kept));
        assert_eq!(*log.lock().unwrap(), [Ok(0), Ok(1), Ok(2)]);
        // Shutdown fails the rest, in order, and later opens at once.
        closed.store(true, Ordering::Release);
        t.fail_queued();
        t.enter_then(&closed, recorder(5, &log, &kept));
        assert_eq!(
            *log.lock().unwrap(),
            [
                Ok(0),
                Ok(1),
                Ok(2),
                Err(Error::Shutdown),
                Err(Error::Shutdown),
                Err(Error::Shutdown)
            ]
        );
        assert_eq!(t.snapshot().waiting, 0);
        kept.lock().unwrap().clear();
        assert_eq!(t.snapshot().in_transit, 0);
    }

    /// Hand-offs that give their token straight back (an open refused on its way: a dead shard)
    /// pass it down the queue in a loop, not by recursion: 100,000 of them run on one drop.
    #[test]
    fn refused_hand_offs_pass_the_place_on_without_recursion() {
        const N: usize = 100_000;
        let t = FdTransit::new(1);
        let closed = AtomicBool::new(false);
        let ran = Arc::new(AtomicU32::new(0));
        let full = t.enter();
        for _ in 0..N {
            let ran = Arc::clone(&ran);
            t.enter_then(
                &closed,
                Box::new(move |place| {
                    assert!(place.is_ok());
                    ran.fetch_add(1, Ordering::SeqCst);
                    // `place` drops here, inside the hand-off.
                }),
            );
        }
        assert_eq!(t.snapshot().waiting, N);
        drop(full);
        assert_eq!(ran.load(Ordering::SeqCst) as usize, N);
        let p = t.snapshot();
        assert_eq!((p.in_transit, p.waiting), (0, 0), "{p:?}");
    }

    /// Threads open (queued hand-offs that keep their token a moment) and drop at once: every
    /// hand-off runs, none twice, and no more than `max` tokens are ever out.
    #[test]
    fn concurrent_opens_and_drops_lose_no_hand_off() {
        const THREADS: usize = 4;
        const PER: usize = 5_000;
        const MAX: u32 = 3;
        let t = FdTransit::new(MAX as usize);
        let ran = Arc::new(AtomicU32::new(0));
        let peak = Arc::new(AtomicU32::new(0));
        let out = Arc::new(std::sync::Mutex::new(Vec::<InTransit>::new()));
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                let (t, ran, peak, out) = (&t, &ran, &peak, &out);
                s.spawn(move || {
                    let closed = AtomicBool::new(false);
                    for i in 0..PER {
                        let (ran2, peak2, out2, t2) = (
                            Arc::clone(ran),
                            Arc::clone(peak),
                            Arc::clone(out),
                            Arc::clone(t),
                        );
                        t.enter_then(
                            &closed,
                            Box::new(move |place| {
                                let tok = place.expect("a place");
                                peak2.fetch_max(t2.snapshot().in_transit as u32, Ordering::SeqCst);
                                ran2.fetch_add(1, Ordering::SeqCst);
                                out2.lock().unwrap().push(tok);
                            }),
                        );
                        if i % 2 == 0 {
                            let tok = out.lock().unwrap().pop();
                            drop(tok);
                        }
                    }
                });
            }
            // Drain what the openers left, until every hand-off has run.
            let all = (THREADS * PER) as u32;
            while ran.load(Ordering::SeqCst) < all {
                let tok = out.lock().unwrap().pop();
                drop(tok);
                std::thread::yield_now();
            }
        });
        out.lock().unwrap().clear();
        assert_eq!(ran.load(Ordering::SeqCst) as usize, THREADS * PER);
        assert!(peak.load(Ordering::SeqCst) <= MAX);
        let p = t.snapshot();
        assert_eq!((p.in_transit, p.waiting), (0, 0), "{p:?}");
    }

    #[test]
    fn a_waiting_opener_gives_up_at_shutdown() {
        let t = FdTransit::new(1);
        let _full = t.enter();
        let closed = Arc::new(AtomicBool::new(false));
        let (t2, c2) = (Arc::clone(&t), Arc::clone(&closed));
        let opener = std::thread::spawn(move || t2.enter_bounded(&c2).map(drop));
        while t.snapshot().waiting == 0 {
            std::thread::yield_now();
        }
        closed.store(true, Ordering::Release);
        assert_eq!(opener.join().unwrap(), Err(Error::Shutdown));
        assert_eq!(t.snapshot().in_transit, 1);
    }
}
