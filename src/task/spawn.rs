//! Spawning a task on a shard, and where a woken task goes: a task woken on its own shard's
//! thread goes to that thread's run queue (`shard/task_queues.rs`); woken anywhere else, it
//! travels to its shard as a `Message::Run` through the inbox.

use super::join::JoinHandle;
use super::local::{local, LocalShard};
use crate::completion::current_shard;
use crate::error::{Error, Result};
use crate::routes::ExecShared;
use crate::shard::task_queues;
use crate::shard::Message;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Where a woken task goes. `local`: the future is `!Send` and must be dropped on its shard.
fn schedule(exec: &Arc<ExecShared>, shard: usize, local: bool, r: async_task::Runnable) {
    if current_shard() == Some((exec.id, shard)) {
        if task_queues::exited() {
            // The shard has stopped: dropping the runnable cancels the task (its JoinHandle
            // reports it). This is the shard thread, so a `!Send` future may be dropped here.
            drop(r);
        } else if let Err(r) = task_queues::push_local_runnable(r) {
            drop(r);
        }
        return;
    }
    let Some(link) = exec.shards.get(shard) else {
        return forget_or_drop(r, local);
    };
    // why: not `exec.send`: a task already running must still be woken after shutdown began
    // (it ends when the shard stops, not when the door closes).
    if let Err((Message::Run(r), _)) = link.send(Message::Run(r)) {
        forget_or_drop(r, local);
    }
}

/// A task that can no longer reach its shard: a `Send` one is dropped (cancelled: its handle
/// reports it); a `!Send` one may only be dropped on its shard's thread, so it is leaked.
fn forget_or_drop(r: async_task::Runnable, local: bool) {
    if local {
        std::mem::forget(r);
    } else {
        drop(r);
    }
}

/// Wraps a task's future: a panic in a poll ends the task with [`Error::TaskPanicked`].
struct Guarded<F> {
    fut: F,
    shard: usize,
}

impl<T, F: Future<Output = Result<T>>> Future for Guarded<F> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `fut` is structurally pinned: it is never moved out of `self` (no method hands
        // out `&mut F` or moves it) and `Guarded` has no Drop impl that could move it.
        let this = unsafe { self.get_unchecked_mut() };
        let shard = this.shard;
        // SAFETY: see above; `this` itself stays pinned.
        let fut = unsafe { Pin::new_unchecked(&mut this.fut) };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(v),
            Ok(Poll::Pending) => Poll::Pending,
            // async-task never polls a finished task again, so the broken future is only dropped.
            Err(p) => Poll::Ready(Err(Error::TaskPanicked {
                shard,
                message: crate::error::panic_text(p.as_ref()),
            })),
        }
    }
}

/// Spawns a `Send` future on shard `shard` of `exec`.
pub(crate) fn spawn<F>(exec: &Arc<ExecShared>, shard: usize, fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    if let Err(e) = check_shard(exec, shard) {
        return JoinHandle::failed(exec, shard, e);
    }
    spawn_result(exec, shard, async move { Ok(fut.await) })
}

/// Spawns a `Send` future whose output is already a `Result` (its error is the task's).
pub(crate) fn spawn_result<T, F>(exec: &Arc<ExecShared>, shard: usize, fut: F) -> JoinHandle<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    if let Err(e) = check_shard(exec, shard) {
        return JoinHandle::failed(exec, shard, e);
    }
    let e = Arc::clone(exec);
    let (runnable, task) = async_task::spawn(Guarded { fut, shard }, move |r| {
        schedule(&e, shard, false, r)
    });
    runnable.schedule();
    JoinHandle::new(exec, shard, task)
}

fn check_shard(exec: &ExecShared, shard: usize) -> Result<()> {
    if exec.closed.load(std::sync::atomic::Ordering::Acquire) {
        return Err(Error::Shutdown);
    }
    if shard >= exec.shards.len() {
        return Err(Error::invalid(
            "spawn_on",
            format!(
                "no shard {shard}: this executor has {} shards (0..{})",
                exec.shards.len(),
                exec.shards.len()
            ),
        ));
    }
    Ok(())
}

/// Spawns a `!Send` future on the current shard (the caller is on that shard's thread).
pub(super) fn spawn_here<F>(exec: &Arc<ExecShared>, shard: usize, fut: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    if let Err(e) = check_shard(exec, shard) {
        return JoinHandle::failed(exec, shard, e);
    }
    if !task_queues::on_shard(exec.id, shard) {
        let e = Error::invalid(
            "spawn_local",
            format!(
                "called off shard {shard}'s thread: use spawn_on_with to build the future there"
            ),
        );
        return JoinHandle::failed(exec, shard, e);
    }
    let e = Arc::clone(exec);
    let fut = async move { Ok(fut.await) };
    let (runnable, task) = async_task::spawn_local(Guarded { fut, shard }, move |r| {
        schedule(&e, shard, true, r)
    });
    runnable.schedule();
    JoinHandle::new(exec, shard, task)
}

/// Builds a `!Send` future with `f` on shard `shard` and runs it there.
pub(crate) fn spawn_with<F, Fut>(
    exec: &Arc<ExecShared>,
    shard: usize,
    f: F,
) -> JoinHandle<Fut::Output>
where
    F: FnOnce(LocalShard) -> Fut + Send + 'static,
    Fut: Future + 'static,
    Fut::Output: Send + 'static,
{
    // The outer task is Send: it holds `f` until its first poll, then only the inner handle.
    spawn_result(exec, shard, async move {
        let inner = match local() {
            Some(l) => {
                let fut = f(l.clone());
                l.spawn_local(fut)
            }
            None => return Err(Error::invalid("spawn_on_with", "not on a shard")),
        };
        inner.await
    })
}
