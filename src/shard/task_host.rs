//! Hosting async tasks: a budget of polls per turn, then what they sent on this thread handled
//! like the inbox's messages, and their sleeps armed. A task's pooled read is answered with a
//! lease: the pool buffer itself, lent until the task's guard is dropped.

use super::lease::Lease;
use super::runner::Shard;
use super::task_queues::{self, TASK_BUDGET};
use crate::completion::Completer;
use crate::error::{Error, Result};

impl Shard {
    /// One batch of async tasks (at most [`TASK_BUDGET`] polls), then what was sent on this
    /// thread to this shard (by the tasks, by `submit_to` closures, by handles dropped here) is
    /// handled like the inbox's messages, in the order sent, and the tasks' sleeps are armed in
    /// the ring.
    pub(super) fn run_async_tasks(&mut self) -> bool {
        let (ran, slow) = task_queues::run_batch(TASK_BUDGET);
        self.take_back_lent();
        if ran > 0 {
            self.stats.note_task_polls(ran as u64, slow);
        }
        let mut any = ran > 0;
        any |= self.admit_task_reads();
        let mut msgs = std::mem::take(&mut self.local);
        task_queues::take_local(&mut msgs);
        if !msgs.is_empty() {
            any = true;
            for msg in msgs.drain(..) {
                self.handle(msg);
            }
        }
        self.local = msgs;
        task_queues::take_timers(&mut self.new_timers);
        self.remove_dropped_timers();
        // While submit_to closures wait for a quiet ring, new sleeps wait with them.
        if !self.new_timers.is_empty() && self.tasks.is_empty() {
            any = true;
            let mut new = std::mem::take(&mut self.new_timers);
            for t in new.drain(..) {
                self.arm_timer(t);
            }
            self.new_timers = new;
        }
        any
    }

    /// Finishes a pooled read: on success the buffer is lent to the task (released when its
    /// guard is dropped, see [`task_queues::take_released`]); otherwise it goes back now.
    pub(super) fn lend(&mut self, c: Completer<Lease>, result: Result<u64>, lent: Option<u16>) {
        match (result, lent) {
            // Lent in the pool: refused to `submit_to` closures and never handed out until the
            // task's guard is dropped and `take_back_lent` gives it back.
            (Ok(n), Some(idx)) => match self.pool.lend(idx) {
                Ok(buf) => {
                    let ptr = buf.as_ptr();
                    let n = (n as usize).min(buf.len());
                    c.complete(Ok(Lease::new(
                        self.cfg.exec_id,
                        self.cfg.index,
                        idx,
                        ptr,
                        n,
                    )));
                }
                Err(e) => {
                    self.pool.release(idx);
                    c.complete(Err(e));
                }
            },
            (Ok(_), None) => c.complete(Err(Error::invalid(
                "read_pooled",
                "the read completed without a buffer",
            ))),
            (Err(e), lent) => {
                if let Some(idx) = lent {
                    self.pool.release(idx);
                }
                c.complete(Err(e));
            }
        }
    }

    /// Takes back the buffers whose guards were dropped on this thread.
    fn take_back_lent(&mut self) {
        let mut back = std::mem::take(&mut self.released);
        task_queues::take_released(&mut back);
        for idx in back.drain(..) {
            // Only a dropped `Lease` fills `released`, and only `lend` makes one.
            if let Err(e) = self.pool.take_back(idx) {
                debug_assert!(false, "a lease handed back buffer {idx}: {e}");
            }
        }
        self.released = back;
    }
}
