//! The task side of the task-local read path (the shard side is `task_io.rs`).
//!
//! A read made by a task on its own shard's file, while the task is being polled, is queued here
//! as a [`QueuedRead`] (no `IoRequest`, no `Message`) in a thread-local list that the shard takes
//! right after the batch of task polls, before the other messages sent on its thread. The shard
//! then pushes its SQE at once when the file has nothing older unfinished, or admits it as an
//! ordinary request otherwise: the read keeps its place in the file's order either way.

use super::task_queues;
use crate::completion::{pair, Completer, Completion};
use crate::file::{File, FileRef};
use std::cell::RefCell;
use std::time::Instant;

/// A task's read, queued for its own shard.
pub(crate) struct QueuedRead {
    pub(crate) file: FileRef,
    pub(crate) offset: u64,
    pub(crate) len: usize,
    /// Storage to read into (its capacity is reused, its contents replaced).
    pub(crate) buf: Vec<u8>,
    pub(crate) done: Completer<Vec<u8>>,
    /// When the request was made (the start of the task's poll).
    pub(crate) at: Instant,
    pub(crate) deadline: Option<Instant>,
}

thread_local! {
    /// Reads queued by the tasks polled on this shard thread since the shard last took them.
    static QUEUED: RefCell<Vec<QueuedRead>> = const { RefCell::new(Vec::new()) };
}

/// Queues a checked read of `len` bytes at `offset` of `file` for this thread's shard when this
/// thread is polling a task of the file's own shard and nothing that task's shard was sent on
/// this thread waits before it; otherwise hands `buf` back (the caller routes the read).
pub(crate) fn try_read(
    exec: u64,
    file: &File,
    offset: u64,
    len: usize,
    buf: Vec<u8>,
    deadline: Option<Instant>,
) -> std::result::Result<Completion<Vec<u8>>, Vec<u8>> {
    let handle = file.handle();
    // why: only inside a task's poll: the shard takes the queue right after the batch of polls,
    // so nothing is left in it when the shard looks for work or goes to sleep.
    let Some(at) = task_queues::poll_start() else {
        return Err(buf);
    };
    // why: a message sent on this thread before (an fsync, a write) must be admitted first; the
    // queue is taken before those messages, so a read may only join it while there are none.
    if handle.exec != exec
        || !task_queues::on_shard(exec, handle.shard)
        || task_queues::has_local()
        || file.flags().direct
    {
        return Err(buf);
    }
    let (c, done) = pair(exec, handle.shard);
    let read = QueuedRead {
        file: handle,
        offset,
        len,
        buf,
        done,
        at,
        deadline,
    };
    match QUEUED.try_with(|q| q.borrow_mut().push(read)) {
        Ok(()) => Ok(c),
        // Thread teardown: the read was dropped with the closure's argument, which fails its
        // completer (the handle reports the shard gone). Never reached while a task is polled.
        Err(_) => Ok(c),
    }
}

/// Moves the reads queued on this thread into `out`, in the order made.
pub(crate) fn take_queued(out: &mut Vec<QueuedRead>) {
    let _ = QUEUED.try_with(|q| std::mem::swap(&mut *q.borrow_mut(), out));
}
