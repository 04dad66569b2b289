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
            self.stats.note_sq_full();
            self.submit(0)?;
        }
    }

    pub(super) fn has_cq_room(&mut self) -> bool {
        // Keep the CQ from overflowing: never more in flight than it holds. Socket ops waiting
        // for peers are not counted: a server's idle connections each keep a receive in flight,
        // and counted, a few hundred of them would stop the shard issuing anything. Should
        // more complete at once than the CQ holds, the kernel keeps the rest aside
        // (IORING_FEAT_NODROP: every kernel with the socket opcodes has it) until the next enter
        // with GETEVENTS, which the loop makes while the SQ flags it (`Driver::cq_overflow`).
        self.in_flight.saturating_sub(self.peer_in_flight) < self.cq_capacity
    }

    pub(super) fn submit(&mut self, want: usize) -> Result<usize> {
        submit_counted(&mut self.ring, &mut self.stats, want)
    }

    /// Runs deferred completions without blocking.
    pub(super) fn poll_completions(&mut self) {
        self.ring.get_events();
    }

    pub(super) fn reap(&mut self) -> usize {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
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
        self.cqes = cqes;
        n
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
