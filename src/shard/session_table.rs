//! The shard's side of a `Session`: its shared queue (`SessionShared`), the requests it sends
//! (`SessionReq`), the results it gets (`Done`), and the shard's `SessionTable` (results
//! collected per turn, delivered in one batch).

use super::IoOp;
use crate::completion::wake_guarded;
use crate::error::Result;
use crate::file::FileRef;
use crate::park;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One finished request of a [`Session`](crate::Session).
#[derive(Debug)]
pub struct Done {
    /// The token given with the request.
    pub token: u64,
    /// Bytes read or written (0 for fsync), or the error.
    pub result: Result<usize>,
    /// The request's buffer, back with the caller: a read's data (`len()` = bytes read), a
    /// write's data as given (to reuse), empty for fsync. On an error, the buffer as it was.
    pub buf: Vec<u8>,
}

/// A request queued in a session, as it travels to its shard.
pub(crate) struct SessionReq {
    pub file: FileRef,
    pub op: IoOp,
    pub token: u64,
    pub deadline: Option<Instant>,
    /// A mutation's count in its inode's unfinished mutations, from the moment it is queued
    /// (a later read of the inode goes to the shard, behind it).
    pub pending: Option<crate::inline::Pending>,
}

/// The part of a session its shards see: where results are delivered.
pub(crate) struct SessionShared {
    /// Results delivered and not yet taken.
    pub(crate) done: Mutex<Vec<Done>>,
    /// Bumped after every delivery; the word a blocked caller sleeps on.
    pub(crate) epoch: AtomicU32,
    /// A thread sleeps (or is about to) on `epoch`: only then does a delivery pay for a wake.
    pub(crate) thread_waiting: AtomicBool,
    pub(crate) waker: atomic_waker::AtomicWaker,
    /// The session was dropped: its requests not yet issued are skipped, issued reads cancelled.
    pub(crate) dropped: AtomicBool,
}

impl SessionShared {
    pub(crate) fn new() -> Self {
        SessionShared {
            done: Mutex::new(Vec::new()),
            epoch: AtomicU32::new(0),
            thread_waiting: AtomicBool::new(false),
            waker: atomic_waker::AtomicWaker::new(),
            dropped: AtomicBool::new(false),
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Done>> {
        // A panic while holding this lock cannot leave the vector half-written (appends and swaps
        // only), so a poisoned lock is still consistent.
        self.done.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `batch` to the session (leaving `batch` empty, with some capacity) and wakes it.
    /// Runs on the shard thread; never panics, whatever the caller's waker does.
    pub(crate) fn deliver(&self, batch: &mut Vec<Done>) {
        {
            let mut q = self.lock();
            if q.is_empty() {
                // Swap: the caller's empty vector comes back to the shard, so neither side
                // allocates in the steady state.
                std::mem::swap(&mut *q, batch);
            } else {
                q.append(batch);
            }
        }
        self.epoch.fetch_add(1, Ordering::SeqCst);
        // Pairs with the waiter's SeqCst store of `thread_waiting` then load of `epoch`: either
        // the waiter sees the new epoch and does not sleep, or this load sees it waiting.
        if self.thread_waiting.load(Ordering::SeqCst) {
            park::wake_all(&self.epoch);
        }
        if let Some(w) = self.waker.take() {
            wake_guarded(w);
        }
    }
}

/// A shard's view of the sessions it has requests from: results are collected per session over
/// one turn and delivered together.
#[derive(Default)]
pub(crate) struct SessionTable {
    entries: Vec<Option<Entry>>,
    free: Vec<u32>,
    by_ptr: HashMap<usize, u32>,
    /// Sessions with results to deliver at the end of the turn.
    dirty: Vec<u32>,
    /// Turns with deliveries, for the periodic sweep of dropped sessions.
    deliveries: u64,
}

/// Every this many delivering turns, entries of sessions dropped while idle are forgotten.
const SWEEP_EVERY: u64 = 1024;

struct Entry {
    shared: Arc<SessionShared>,
    out: Vec<Done>,
    /// Requests of this session admitted here and not yet finished.
    ops: usize,
}

impl SessionTable {
    /// The index of `session` (registering it), counting `n` more requests for it.
    pub(crate) fn register(&mut self, session: Arc<SessionShared>, n: usize) -> u32 {
        let key = Arc::as_ptr(&session) as usize;
        if let Some(&i) = self.by_ptr.get(&key) {
            if let Some(Some(e)) = self.entries.get_mut(i as usize) {
                e.ops += n;
                return i;
            }
        }
        let entry = Entry {
            shared: session,
            out: Vec::new(),
            ops: n,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.entries[i as usize] = Some(entry);
                i
            }
            None => {
                self.entries.push(Some(entry));
                (self.entries.len() - 1) as u32
            }
        };
        self.by_ptr.insert(key, i);
        i
    }

    /// Adds a result for session `i`, delivered at the end of the turn.
    pub(crate) fn push(&mut self, i: u32, done: Done) {
        if let Some(Some(e)) = self.entries.get_mut(i as usize) {
            if e.out.is_empty() {
                self.dirty.push(i);
            }
            e.out.push(done);
            e.ops = e.ops.saturating_sub(1);
        }
    }

    /// Whether session `i` was dropped by its owner.
    pub(crate) fn is_dropped(&self, i: u32) -> bool {
        match self.entries.get(i as usize) {
            Some(Some(e)) => e.shared.dropped.load(Ordering::Relaxed),
            _ => true,
        }
    }

    /// Delivers every session's results of this turn; forgets sessions with nothing in flight.
    pub(crate) fn deliver(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &i in &dirty {
            let Some(Some(e)) = self.entries.get_mut(i as usize) else {
                continue;
            };
            e.shared.deliver(&mut e.out);
            // why: a live session's entry stays (with its batch vector) while it has nothing
            // here: a session that keeps requests flowing touches zero between round trips, and
            // re-registering costs a map insert and removal and regrowing the vector each time.
            if e.ops == 0 && e.shared.dropped.load(Ordering::Relaxed) {
                self.forget(i);
            }
        }
        // Kept for the next turn: no allocation per turn.
        dirty.clear();
        self.dirty = dirty;
        self.deliveries = self.deliveries.wrapping_add(1);
        if self.deliveries % SWEEP_EVERY == 0 {
            self.sweep();
        }
    }

    /// Forgets sessions that were dropped while they had nothing in flight here (no delivery
    /// would ever look at them again).
    fn sweep(&mut self) {
        for i in 0..self.entries.len() as u32 {
            let idle_and_dropped = matches!(
                &self.entries[i as usize],
                Some(e) if e.ops == 0 && e.shared.dropped.load(Ordering::Relaxed)
            );
            if idle_and_dropped {
                self.forget(i);
            }
        }
    }

    fn forget(&mut self, i: u32) {
        if let Some(e) = self.entries.get_mut(i as usize).and_then(Option::take) {
            self.by_ptr.remove(&(Arc::as_ptr(&e.shared) as usize));
            self.free.push(i);
        }
    }
}
