//! Sleep and wake-up. With nothing to do the shard watches its inbox for a while, then sleeps: on
//! a futex with nothing of its own in the kernel (cheap for a caller to wake), in the ring
//! otherwise, where a completion or the poll on the wake-up eventfd ends the wait. Callers wake it
//! through `ShardLink` (`mod.rs`).

use super::cancel::SCAN_EVERY;
use super::context::WAKE_USER_DATA;
use super::runner::Shard;
use super::task_queues;
use super::{ShardShared, AWAKE, IN_RING, ON_FUTEX};
use crate::error::Result;
use io_uring::{opcode, types};
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering as AtomicOrdering};
use std::time::Instant;

impl Shard {
    /// Arms the poll on the wake-up eventfd: a poll holds no memory of ours, so nothing is at
    /// stake if it is still armed when the ring goes.
    pub(super) fn arm_wake(&mut self) -> Result<()> {
        if self.wake_armed {
            return Ok(());
        }
        let entry = opcode::PollAdd::new(
            types::Fd(self.shared.eventfd.as_raw_fd()),
            libc::POLLIN as u32,
        )
        .build()
        .user_data(WAKE_USER_DATA);
        self.push_entry(&entry)?;
        self.wake_armed = true;
        Ok(())
    }

    /// The wake-up poll completed with `res`: reset the eventfd so the next poll waits again.
    pub(super) fn on_wake(&mut self, res: i32) {
        self.wake_armed = false;
        if res < 0 {
            // The kernel refused the poll: sleep in short timed waits (rather than spin) until
            // a poll works again.
            self.wake_broken = true;
            return;
        }
        self.wake_broken = false;
        self.stats.note_wakeup();
        reset_eventfd(&self.shared);
    }

    /// Watches the inbox for up to the configured spin time; true when a message arrived.
    /// Between looks it yields the core: where callers share the shard's core, they run (and
    /// send) instead of waiting for the spin to end; on a core of its own the yield returns at once.
    pub(super) fn spin_for_inbox(&self) -> bool {
        if self.cfg.spin.is_zero() {
            return false;
        }
        let start = Instant::now();
        loop {
            if self.has_incoming() {
                return true;
            }
            std::thread::yield_now();
            if start.elapsed() >= self.cfg.spin {
                return false;
            }
        }
    }

    /// Blocks until a request (or, with I/O in the kernel, a completion) arrives. With nothing of
    /// its own in the kernel, the shard sleeps on a futex (cheap to wake); otherwise in the ring,
    /// where a completion or the eventfd poll ends the wait. While ops are live the wait is
    /// bounded by [`SCAN_EVERY`], so cancellations and deadlines are seen.
    pub(super) fn sleep(&mut self) {
        let in_ring = self.ops_in_flight() > 0;
        let mode = if in_ring { IN_RING } else { ON_FUTEX };
        self.shared.sleep.store(mode, AtomicOrdering::Relaxed);
        fence(AtomicOrdering::SeqCst);
        // A message we cannot admit yet (too many ops) is no reason to stay up: the completions
        // that make room come only from waiting in the ring.
        // Completions moved out of the CQ (`make_sq_room`) are not in the ring to wake us.
        if (self.can_admit() && self.has_incoming())
            || task_queues::has_work()
            || !self.cqes.is_empty()
        {
            self.shared.sleep.store(AWAKE, AtomicOrdering::Relaxed);
            return;
        }
        self.stats.note_sleep();
        let bounded = self.ops.live > 0 || self.closing || self.fast.live > 0;
        if !in_ring {
            let timeout = bounded.then_some(SCAN_EVERY);
            crate::park::wait(&self.shared.sleep, ON_FUTEX, timeout);
            // A caller flipped the word back (a timeout leaves it ON_FUTEX): a wake-up.
            if self.shared.sleep.load(AtomicOrdering::Acquire) == AWAKE {
                self.stats.note_wakeup();
            }
        } else {
            if self.arm_wake().is_err() {
                self.wake_broken = true;
            }
            if bounded || self.wake_broken {
                match self.ring.submit_and_wait_for(1, SCAN_EVERY) {
                    Ok(_) => {}
                    // ETIME: the timeout passed; EINTR: a signal. Both just end the wait.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
                    // Dropped completions: counted; the loop goes on (the next turn reaps).
                    Err(e) if e.raw_os_error() == Some(libc::EBADR) => {
                        self.note_enter_error(libc::EBADR);
                    }
                    // No EXT_ARG (before 5.11): an unbounded wait; scans happen on the next wake.
                    Err(_) => {
                        let _ = self.submit(1);
                    }
                }
            } else {
                let _ = self.submit(1);
            }
        }
        self.shared.sleep.store(AWAKE, AtomicOrdering::Relaxed);
    }
}

/// Resets the wake-up eventfd's counter (non-blocking: EAGAIN means it was already 0).
fn reset_eventfd(shared: &ShardShared) {
    let mut value: u64 = 0;
    // SAFETY: reads 8 bytes into a local u64 from our own non-blocking eventfd.
    unsafe {
        libc::read(
            shared.eventfd.as_raw_fd(),
            (&mut value as *mut u64).cast(),
            std::mem::size_of::<u64>(),
        )
    };
}
