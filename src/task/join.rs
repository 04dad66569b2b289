//! The handle of a task ([`JoinHandle`]: await, wait, cancel, detach; why a task ended without
//! output) and [`block_on`], for a future on a plain thread.

use crate::completion::current_shard;
use crate::error::{Error, Result};
use crate::routes::ExecShared;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// The handle of a task spawned on a shard ([`Executor::spawn_on`](crate::Executor::spawn_on) and
/// friends): await it from anywhere (a thread with [`wait`](Self::wait), tokio or any runtime,
/// another shard's task) for the task's output.
///
/// - **Dropping the handle cancels the task** (its future is dropped on its shard before its next
///   poll); [`detach`](Self::detach) lets it run to the end instead.
/// - A panic in the task comes back as [`Error::TaskPanicked`]; the shard goes on.
/// - A task cancelled, or dropped because its shard stopped, reports
///   [`Error::Cancelled`] (op `"task"`) or [`Error::Shutdown`].
#[must_use = "dropping a JoinHandle cancels its task; call detach() to let it run"]
pub struct JoinHandle<T> {
    task: Option<async_task::FallibleTask<Result<T>>>,
    early: Option<Error>,
    exec: Arc<ExecShared>,
    shard: usize,
}

impl<T> std::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHandle")
            .field("shard", &self.shard)
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T> JoinHandle<T> {
    pub(super) fn new(
        exec: &Arc<ExecShared>,
        shard: usize,
        task: async_task::Task<Result<T>>,
    ) -> JoinHandle<T> {
        JoinHandle {
            task: Some(task.fallible()),
            early: None,
            exec: Arc::clone(exec),
            shard,
        }
    }

    pub(super) fn failed(exec: &Arc<ExecShared>, shard: usize, e: Error) -> JoinHandle<T> {
        JoinHandle {
            task: None,
            early: Some(e),
            exec: Arc::clone(exec),
            shard,
        }
    }

    /// The shard the task runs on.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Whether the task has finished (its output, or its panic, is ready).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Cancels the task: it is not polled again, and its future is dropped on its shard. (The
    /// same as dropping the handle.)
    pub fn cancel(mut self) {
        drop(self.task.take());
    }

    /// Lets the task run to its end with nobody waiting for its output.
    pub fn detach(mut self) {
        if let Some(t) = self.task.take() {
            t.detach();
        }
    }

    /// Blocks the calling thread until the task ends.
    ///
    /// On a shard thread of the same executor it returns [`Error::WouldDeadlock`] unless
    /// the task has finished: the task's own shard cannot run it while its thread waits, and two
    /// shards waiting on each other never finish. Await the handle in a task instead.
    pub fn wait(self) -> Result<T> {
        if let Some((exec, shard)) = current_shard() {
            if exec == self.exec.id && !self.is_finished() {
                return Err(Error::WouldDeadlock {
                    op: "JoinHandle::wait",
                    shard,
                });
            }
        }
        block_on(self)
    }

    /// Why the task ended without output.
    fn gone(&self) -> Error {
        let dead = self
            .exec
            .shards
            .get(self.shard)
            .is_some_and(|l| l.shared.dead.load(std::sync::atomic::Ordering::Acquire));
        if dead {
            Error::ShardFailed {
                shard: self.shard,
                reason: "the shard thread panicked; the task was dropped".into(),
            }
        } else if self.exec.closed.load(std::sync::atomic::Ordering::Acquire)
            || self
                .exec
                .shards
                .get(self.shard)
                .is_some_and(|l| l.shared.exited.load(std::sync::atomic::Ordering::Acquire))
        {
            Error::Shutdown
        } else {
            Error::Cancelled {
                op: "task",
                path: None,
                written: None,
            }
        }
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        if let Some(e) = self.early.take() {
            return Poll::Ready(Err(e));
        }
        let Some(task) = self.task.as_mut() else {
            return Poll::Ready(Err(Error::invalid(
                "JoinHandle",
                "the task's output was already taken",
            )));
        };
        match Pin::new(task).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(r)) => {
                self.task = None;
                Poll::Ready(r)
            }
            Poll::Ready(None) => {
                self.task = None;
                Poll::Ready(Err(self.gone()))
            }
        }
    }
}

struct ThreadWaker(std::thread::Thread);

impl std::task::Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `fut` to completion on the calling thread, which sleeps while the future is pending.
///
/// Blocks: never call it on an async runtime's thread or in a shard task (on a shard's thread
/// it stops that shard until `fut` is done, and a future that waits for that shard never is).
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
