//! [`Sleep`] (a task's sleep, an `IORING_OP_TIMEOUT` its shard arms: see `shard/timers.rs`) and
//! [`yield_now`].

use crate::completion::current_shard;
use crate::shard::task_queues::{self, TimerState};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// The future of [`LocalShard::sleep`](super::LocalShard::sleep).
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct Sleep {
    /// `None`: too far to be a point in time (never completes).
    deadline: Option<Instant>,
    state: Option<Arc<TimerState>>,
}

impl Sleep {
    /// A sleep until `deadline` (`None`: never), not started until first polled.
    pub(super) fn new(deadline: Option<Instant>) -> Sleep {
        Sleep {
            deadline,
            state: None,
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(state) = &self.state {
            if state.is_fired() {
                return Poll::Ready(());
            }
            state.register(cx.waker());
            return if state.is_fired() {
                Poll::Ready(())
            } else {
                Poll::Pending
            };
        }
        let Some(deadline) = self.deadline else {
            return Poll::Pending;
        };
        let now = Instant::now();
        if now >= deadline {
            return Poll::Ready(());
        }
        let state = Arc::new(TimerState::new(deadline));
        state.register(cx.waker());
        if current_shard().is_some() && !task_queues::exited() {
            task_queues::arm_later(Arc::clone(&state));
        } else {
            // Not on a running shard (the future moved): a helper thread keeps the promise.
            let t = Arc::clone(&state);
            let spawned = std::thread::Builder::new()
                .name("ringshard-sleep".into())
                .spawn(move || {
                    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                    t.fire();
                });
            if spawned.is_err() {
                // No thread: wait on this one rather than wake early.
                std::thread::sleep(deadline.saturating_duration_since(now));
                return Poll::Ready(());
            }
        }
        self.state = Some(state);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        let Some(state) = self.state.take() else {
            return;
        };
        if state.is_fired() {
            return;
        }
        state.mark_dropped();
        // On its shard's thread (where a sleep is armed and polled), the shard takes it out of
        // the ring on its next turn; elsewhere it just expires.
        if current_shard().is_some() && !task_queues::exited() {
            task_queues::remove_later(state);
        }
    }
}

/// Gives the shard a turn: on a shard's thread the task runs again when the shard's next batch of
/// polls starts, after the shard has taken what the task queued (its reads pushed, its requests
/// admitted), submitted, reaped and read its inbox, and after the other runnable tasks. Polled
/// anywhere else, the task is woken at once (it goes to the back of its runtime's queue).
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

/// The future of [`yield_now`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        if !task_queues::wake_next_batch(cx.waker()) {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}
