//! The bound on descriptors in transit between callers and shards.
//!
//! A descriptor is in transit from the open(2) on a caller's (or the opener's) thread until its
//! shard has put it in its file table, and from the drop of its last [`File`](crate::File) (or an
//! explicit close) until the shard has closed it. Drops never wait, and a shard reads its inbox
//! at its own pace, so a caller that opens and drops faster than a shard closes (a fast caller, a
//! slow or stalled shard) would pile up descriptors without bound and meet EMFILE. So each
//! descriptor in transit holds an [`InTransit`] token; `open`, `open_async` (on the opener
//! thread) and `adopt` wait while the executor has `max` of them, and the token is dropped where
//! the descriptor's trip ends, whatever way it ends: installed, closed, refused after shutdown,
//! or dropped with a dead shard's messages. Descriptors the executor holds are therefore at most
//! the files the application holds open at once plus `max`.

use crate::error::{IoUringError, Result};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Descriptors in transit in one executor, and the openers waiting for room.
#[derive(Debug)]
pub(crate) struct FdTransit {
    /// Descriptors in transit: the futex word waiting openers sleep on.
    count: AtomicU32,
    /// Openers waiting for `count` to fall below `max`.
    waiting: AtomicU32,
    max: u32,
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
    /// Descriptors opened (or adopted) and not yet installed on their shard, or dropped (or
    /// closed) and not yet closed by their shard.
    pub in_transit: usize,
    /// Calls of `open`, `adopt` or the opener thread of `open_async` waiting for `in_transit`
    /// to fall below `max`.
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
        })
    }

    /// One more descriptor in transit, at once: a close (a drop must not block), or an open on
    /// one of the executor's shard threads (which must not wait for closes its own shard runs).
    pub(crate) fn enter(self: &Arc<Self>) -> InTransit {
        self.count.fetch_add(1, Ordering::SeqCst);
        InTransit(Arc::clone(self))
    }

    /// One more descriptor in transit, once fewer than `max` are: blocks the calling thread
    /// until then. Fails with [`IoUringError::Shutdown`] once `closed` is set.
    pub(crate) fn enter_bounded(self: &Arc<Self>, closed: &AtomicBool) -> Result<InTransit> {
        loop {
            if closed.load(Ordering::Acquire) {
                return Err(IoUringError::Shutdown);
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
            waiting: self.waiting.load(Ordering::SeqCst) as usize,
            max: self.max as usize,
        }
    }
}

impl Drop for InTransit {
    fn drop(&mut self) {
        let t = &self.0;
        let before = t.count.fetch_sub(1, Ordering::SeqCst);
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
        assert_eq!(opener.join().unwrap(), Err(IoUringError::Shutdown));
        assert_eq!(t.snapshot().in_transit, 1);
    }
}
