//! A pool buffer lent by the shard to one of its tasks after a pooled read, until the task's
//! guard (`PoolBuf`, in the task face) is dropped: then it goes back through the thread's
//! released list (`task_queues::take_released`).

use super::task_queues;
use crate::completion::current_shard;

/// A pool buffer lent by the shard after a pooled read: where it is, and how much was read.
/// Dropped on its shard's thread, it gives the buffer back (at the shard's next batch); dropped
/// anywhere else (it never should be) the buffer stays lent (leaked, never reused early).
#[derive(Debug)]
pub(crate) struct Lease {
    exec: u64,
    shard: usize,
    idx: u16,
    /// The buffer's address, as a number (the lease travels in a `Send` completion).
    addr: usize,
    len: usize,
}

impl Lease {
    pub(crate) fn new(exec: u64, shard: usize, idx: u16, ptr: *const u8, len: usize) -> Lease {
        Lease {
            exec,
            shard,
            idx,
            addr: ptr as usize,
            len,
        }
    }

    /// The pool buffer's index.
    pub(crate) fn index(&self) -> u16 {
        self.idx
    }

    /// How many bytes were read into it.
    pub(crate) fn read_len(&self) -> usize {
        self.len
    }

    /// The buffer's address (read only where [`readable_here`](Self::readable_here)).
    pub(crate) fn addr(&self) -> *const u8 {
        self.addr as *const u8
    }

    /// Whether this thread is the lender's and its pool is still mapped.
    pub(crate) fn readable_here(&self) -> bool {
        current_shard() == Some((self.exec, self.shard)) && task_queues::pool_alive()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if current_shard() == Some((self.exec, self.shard)) {
            task_queues::release(self.idx);
        }
    }
}
