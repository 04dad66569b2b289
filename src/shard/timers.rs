//! Task sleeps as `IORING_OP_TIMEOUT`s in the ring: armed, fired at their CQE, removed when their
//! `Sleep` is dropped, and parked (taken out, armed again after) while `submit_to` closures wait
//! for a quiet ring.

use super::context::CANCEL_USER_DATA;
use super::runner::Shard;
use super::task_queues::{self, TimerState};
use io_uring::{opcode, types};
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::Instant;

/// The `user_data` tag of a task's sleep (`IORING_OP_TIMEOUT`): bit 62, with the timer's index in
/// the low bits. Outside the ops' space (below 2^47), the pool's (bit 63) and the range that
/// `submit_to` closures may use (2^47 .. 2^62); WAKE and CANCEL are matched before it.
pub(super) const TIMER_TAG: u64 = 1 << 62;

impl Shard {
    /// Takes the sleeps whose `Sleep` was dropped out of the ring (TIMEOUT_REMOVE): left there,
    /// each would hold a CQ slot until it expired, and enough of them stop the shard's I/O.
    pub(super) fn remove_dropped_timers(&mut self) {
        let mut dropped = Vec::new();
        task_queues::take_dropped_timers(&mut dropped);
        for t in dropped {
            let index = t.slot.load(AtomicOrdering::Relaxed);
            let armed = matches!(self.timers.get(index), Some(Some((a, _))) if Arc::ptr_eq(a, &t));
            if !armed {
                continue; // not armed yet (arm_timer skips it), or already fired
            }
            let entry = opcode::TimeoutRemove::new(TIMER_TAG | index as u64)
                .build()
                .user_data(CANCEL_USER_DATA);
            // A failed push leaves that sleep to expire on its own.
            let _ = self.push_entry(&entry);
        }
    }

    /// Pushes an `IORING_OP_TIMEOUT` for a task's sleep.
    pub(super) fn arm_timer(&mut self, t: Arc<TimerState>) {
        if t.is_dropped() {
            return; // its Sleep is gone: nobody to wake
        }
        let left = t.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            t.fire();
            return;
        }
        let ts = Box::new(types::Timespec::from(left));
        let entry = opcode::Timeout::new(&*ts as *const types::Timespec).build();
        let index = match self.timer_free.pop() {
            Some(i) => i,
            None => {
                self.timers.push(None);
                self.timers.len() - 1
            }
        };
        let entry = entry.user_data(TIMER_TAG | index as u64);
        t.slot.store(index, AtomicOrdering::Relaxed);
        self.timers[index] = Some((t, ts));
        if self.push_entry(&entry).is_ok() {
            self.timers_armed += 1;
        } else {
            // The ring refused it: wake the sleeper now rather than never.
            if let Some((t, _)) = self.timers[index].take() {
                t.fire();
            }
            self.timer_free.push(index);
        }
    }

    pub(super) fn timer_fired(&mut self, index: usize, res: i32) {
        if let Some((t, _ts)) = self.timers.get_mut(index).and_then(Option::take) {
            self.timers_armed = self.timers_armed.saturating_sub(1);
            self.timer_free.push(index);
            if self.parking && res == -libc::ECANCELED && !t.is_dropped() {
                // Removed for the closures, not expired: armed again after them.
                self.parked_timers.push(t);
            } else {
                t.fire();
            }
            if self.timers_armed == 0 {
                self.parking = false;
            }
        }
    }

    /// Asks the kernel to remove every armed sleep (their CQEs come back with ECANCELED).
    pub(super) fn park_timers(&mut self) {
        self.parking = true;
        let armed: Vec<u64> = self
            .timers
            .iter()
            .enumerate()
            .filter(|(_, t)| t.is_some())
            .map(|(i, _)| TIMER_TAG | i as u64)
            .collect();
        for ud in armed {
            let entry = opcode::TimeoutRemove::new(ud)
                .build()
                .user_data(CANCEL_USER_DATA);
            // A failed push leaves that sleep to expire on its own.
            let _ = self.push_entry(&entry);
        }
    }
}
