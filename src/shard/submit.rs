//! Both ends of the ring: pushing SQEs (submitting first when the SQ is full), submitting, and
//! reaping CQEs, each routed by its `user_data`.
//!
//! `user_data`: operations that use a pool buffer carry the pool's tag and buffer index (the buffer
//! maps to its chunk, the chunk to its op); other operations carry `slot | generation << 24` of the
//! op table; the wake-up poll carries [`WAKE_USER_DATA`], cancel requests [`CANCEL_USER_DATA`].

use super::context::{CANCEL_USER_DATA, WAKE_USER_DATA};
use super::runner::Shard;
use super::timers::TIMER_TAG;
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::pool::RegisteredBufferPool;
use crate::stats::ShardStats;
use io_uring::squeue;

impl Shard {
    /// Pushes an SQE, submitting first when the queue is full.
    pub(super) fn push_entry(&mut self, entry: &squeue::Entry) -> Result<()> {
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
            if !self.make_sq_room()? {
                return Err(would_block());
            }
        }
    }

    /// Submits to make room in a full SQ. Where the kernel took nothing (EBUSY/EAGAIN: it wants
    /// room in the CQ first), the CQ's completions are moved aside into `cqes` for the next
    /// `reap` (not handled here: the caller may be midway through an op). False when neither
    /// freed anything: entering again would spin, so the caller stops and retries later (issue()
    /// the next turn, a cancellation the next scan).
    pub(super) fn make_sq_room(&mut self) -> Result<bool> {
        self.stats.note_sq_full();
        let before = self.ring.sq_len();
        // Taken: the enter says so (n > 0; with SQPOLL, the kernel thread takes them in its own
        // time, as before), or the SQ shrank. EBUSY/EAGAIN come back as 0 with the SQ as it was.
        let n = self.submit(0)?;
        let took = n > 0 || self.ring.sq_len() < before;
        let kept = self.cqes.len();
        if !took {
            self.ring.completions(&mut self.cqes);
        }
        Ok(after_full_submit(took, self.cqes.len() > kept) == SqFull::Push)
    }

    pub(super) fn has_cq_room(&mut self) -> bool {
        // Keep the CQ from overflowing: never more in flight than it holds. Socket ops waiting
        // for peers are not counted where the kernel keeps overflowing completions aside
        // (IORING_FEAT_NODROP, 5.5; `cq_nodrop`, read at setup): a server's idle connections
        // each keep a receive in flight, and counted, a few hundred of them would stop the
        // shard issuing anything. Should more complete at once than the CQ holds, the kernel
        // keeps the rest aside until the next enter with GETEVENTS, which the loop makes while
        // the SQ flags it (`Driver::cq_overflow`). Without NODROP an overflowing completion is
        // lost (its op would never finish), so every SQE counts.
        counted_against_cq(self.in_flight, self.peer_in_flight, self.cq_nodrop) < self.cq_capacity
    }

    pub(super) fn submit(&mut self, want: usize) -> Result<usize> {
        submit_counted(&mut self.ring, &mut self.stats, want)
    }

    /// Runs deferred completions without blocking.
    pub(super) fn poll_completions(&mut self) {
        if let Err(e) = self.ring.get_events() {
            self.note_enter_error(e.raw_os_error().unwrap_or(libc::EIO));
        }
    }

    /// An error of an enter made outside `submit` (a wait, a poll for deferred completions):
    /// dropped completions (EBADR) are counted and logged; the rest are what `submit` retries
    /// or reports on its own.
    pub(super) fn note_enter_error(&mut self, errno: i32) {
        if enter_error(errno) == EnterError::Dropped {
            note_dropped(&mut self.stats);
        }
    }

    pub(super) fn reap(&mut self) -> usize {
        // `cqes` may hold completions `push_entry` moved aside; they come first.
        let mut cqes = std::mem::take(&mut self.cqes);
        self.ring.completions(&mut cqes);
        let n = cqes.len();
        for &(ud, res, flags) in &cqes {
            // A multishot SQE's CQEs but its last (F_MORE) leave it in flight.
            self.in_flight = self
                .in_flight
                .saturating_sub(u32::from(!io_uring::cqueue::more(flags)));
            if ud == WAKE_USER_DATA {
                // Re-armed before the next sleep.
                self.on_wake(res);
                continue;
            }
            if ud == CANCEL_USER_DATA {
                // The cancelled op reports through its own completion.
                continue;
            }
            let tags = TIMER_TAG | crate::pool::POOL_USER_DATA_TAG | super::task_io::TASK_READ_TAG;
            if ud & tags == super::task_io::TASK_READ_TAG {
                self.complete_task_read(ud, res);
                continue;
            }
            if ud & (TIMER_TAG | crate::pool::POOL_USER_DATA_TAG) == TIMER_TAG {
                self.timer_fired((ud & !TIMER_TAG) as usize, res);
                continue;
            }
            match RegisteredBufferPool::buffer_index_of(ud) {
                Some(idx) => self.complete_chunk(idx, ud, res),
                None => self.complete_plain(ud, res, flags),
            }
        }
        cqes.clear();
        // Completions moved aside while these were handled (a short chunk pushed again into a
        // full SQ): reaped next turn.
        cqes.append(&mut self.cqes);
        self.cqes = cqes;
        n
    }
}

/// Submits what is queued and waits for `want` completions, counting the call in `stats`.
/// What each error of io_uring_enter means is [`enter_error`]'s: EINTR is retried; EBUSY and
/// EAGAIN return 0 (the caller reaps, which makes the room the kernel asks for); EBADR is counted
/// and logged and returns 0.
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
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                match enter_error(errno) {
                    EnterError::Retry => continue,
                    EnterError::Reap => return Ok(0),
                    EnterError::Dropped => {
                        note_dropped(stats);
                        return Ok(0);
                    }
                    EnterError::Fail => {
                        return Err(Error::io("io_uring_enter", None, None, errno));
                    }
                }
            }
        }
    }
}

/// Of `in_flight` SQEs (`peer` of them socket ops waiting for peers), those bounded by the CQ's
/// size: all but the peers' where the kernel has IORING_FEAT_NODROP, all of them without.
fn counted_against_cq(in_flight: u32, peer: u32, nodrop: bool) -> u32 {
    if nodrop {
        in_flight.saturating_sub(peer)
    } else {
        in_flight
    }
}

/// Counts and logs a report of dropped completions (EBADR).
fn note_dropped(stats: &mut ShardStats) {
    stats.note_cqes_dropped();
    crate::logging::cqes_dropped(stats.shard);
}

/// What to do about an error of io_uring_enter (see io_uring_enter(2), ERRORS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EnterError {
    /// EINTR: a signal came before anything was done; enter again.
    Retry,
    /// Nothing was submitted until completions are reaped:
    /// - EBUSY: completions are kept aside (the CQ overflowed; IORING_FEAT_NODROP) and could
    ///   not all be moved into the CQ. Kernel commit 1d7bb1d50fb4 ("io_uring: add support for
    ///   backlogged CQ ring", 5.5) made any submission fail so while the backlog is not empty,
    ///   "a signal to the application that it has backlogged CQ events, and that it must reap
    ///   those before being allowed to submit more IO"; kernels up to 5.10 do it. io_uring_enter(2)
    ///   documents the same for GETEVENTS waits.
    /// - EAGAIN: the kernel could not allocate a request; "the application should wait for
    ///   some completions and try again".
    ///
    /// Entering again without reaping would get the same answer: the caller reaps (or moves the
    /// CQ's completions aside) first.
    Reap,
    /// EBADR: at least one completion was dropped even with NODROP (the CQ was full and the
    /// kernel had no memory to keep it aside). Kernel commit 155bc9505dbd ("io_uring: return an
    /// error when cqe is dropped", 5.19) reports it once, lazily, then clears it; older kernels
    /// say nothing. Counted (`ShardStats::cqes_dropped`) and logged; the loop goes on (the
    /// operation whose completion was lost never ends).
    Dropped,
    /// Anything else (EBADF, EFAULT, ...): a broken ring, returned as an error.
    Fail,
}

/// [`EnterError`] for `errno`.
pub(super) fn enter_error(errno: i32) -> EnterError {
    match errno {
        libc::EINTR => EnterError::Retry,
        libc::EBUSY | libc::EAGAIN => EnterError::Reap,
        libc::EBADR => EnterError::Dropped,
        _ => EnterError::Fail,
    }
}

/// What `push_entry` does after submitting to make room in a full SQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SqFull {
    /// Try the push again: the kernel took SQEs, or completions were moved out of the CQ (so
    /// the kernel can move the ones it kept aside in, and take SQEs at the next enter).
    Push,
    /// Nothing changed: entering again would spin. The caller stops and retries later.
    WouldBlock,
}

/// [`SqFull`] after a submit that took SQEs (`took`) or not, and moved completions out of the
/// CQ (`reaped`) or not. Each `Push` either follows SQEs the kernel took or empties the CQ of at
/// least one completion (bounded by what is in flight), so a refusing kernel (EBUSY) never
/// makes the loop spin.
fn after_full_submit(took: bool, reaped: bool) -> SqFull {
    if took || reaped {
        SqFull::Push
    } else {
        SqFull::WouldBlock
    }
}

/// The error of a push that could not be made without spinning: EAGAIN, retried later by the
/// caller (the next turn, the next scan).
pub(super) fn would_block() -> Error {
    Error::io(
        "io_uring_enter (SQ full, kernel refused)",
        None,
        None,
        libc::EAGAIN,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enter_errors_are_retried_reaped_counted_or_failed() {
        assert_eq!(enter_error(libc::EINTR), EnterError::Retry);
        assert_eq!(enter_error(libc::EBUSY), EnterError::Reap);
        assert_eq!(enter_error(libc::EAGAIN), EnterError::Reap);
        assert_eq!(enter_error(libc::EBADR), EnterError::Dropped);
        assert_eq!(enter_error(libc::EBADF), EnterError::Fail);
        assert_eq!(enter_error(libc::EFAULT), EnterError::Fail);
    }

    #[test]
    fn peer_sqes_skip_the_cq_bound_only_with_nodrop() {
        assert_eq!(counted_against_cq(10, 7, true), 3);
        assert_eq!(counted_against_cq(10, 7, false), 10);
    }

    #[test]
    fn a_full_sq_never_spins() {
        // EBUSY with nothing in the CQ to move aside: stop, not enter again.
        assert_eq!(after_full_submit(false, false), SqFull::WouldBlock);
        assert_eq!(after_full_submit(false, true), SqFull::Push);
        assert_eq!(after_full_submit(true, false), SqFull::Push);
    }
}
