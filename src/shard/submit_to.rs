//! The `submit_to` host: closures run between turns, once none of the shard's own operations is
//! in the kernel, with the ring, the pool and the files in hand ([`ShardContext`]). After each,
//! the shard waits for whatever of the closure's the kernel still holds.

use super::context::{ShardContext, WAKE_USER_DATA};
use super::runner::elapsed_ns;
use super::runner::Shard;
use crate::stats::OpKind;
use std::time::Instant;

impl Shard {
    pub(super) fn run_tasks(&mut self) {
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
            for (ud, res, _flags) in cqes {
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
