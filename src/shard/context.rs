//! `ShardContext`: direct access to a shard's ring, buffer pool and files for a closure run on the
//! shard thread (`Executor::submit_to`). No channel is crossed per I/O: benchmarks and advanced
//! users drive the ring themselves.

use super::files::FileTable;
use super::submit::submit_counted;
use crate::error::{Error, Result};
use crate::file::File;
use crate::op::rw::pwrite_all;
use crate::pool::{Direction, RegisteredBufferPool, Target};
use crate::stats::{OpKind, ShardStats};
use io_uring::squeue;
use std::os::fd::RawFd;

/// The `user_data` the shard uses for its wake-up poll. Never use it for your own SQEs.
pub const WAKE_USER_DATA: u64 = (1 << 63) - 1;

/// The `user_data` of the shard's cancel requests (ASYNC_CANCEL). Never use it for your own
/// SQEs.
pub const CANCEL_USER_DATA: u64 = (1 << 63) - 2;

/// One completion reaped through [`ShardContext::reap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardCqe {
    /// The `user_data` of the SQE.
    pub user_data: u64,
    /// Bytes transferred, or a negative errno.
    pub result: i32,
    /// The CQE's flags (`IORING_CQE_F_MORE`, `IORING_CQE_F_BUFFER` with a buffer id in the upper
    /// 16 bits, ...; see `io_uring::cqueue`). Always 0 on the threads backend, which runs no
    /// multishot or provided-buffer request.
    pub flags: u32,
    /// For operations pushed through the pool: the buffer, already marked complete (still
    /// acquired: release it when done with the data).
    pub buf_index: Option<u16>,
}

/// What a closure running on a shard may use.
///
/// When the closure starts, the shard has no operation of its own in flight, so every completion
/// the closure reaps is its own. Rules: reap completions only through [`reap`](Self::reap) (it keeps
/// the shard's wake-up working), let every operation you submit complete before returning (the
/// shard waits until every SQE pushed through the pool has had its completion, counted at the
/// ring, whatever the pool was told), and release the buffers you acquire. Buffers the shard has
/// lent to tasks (pooled reads) are refused by the pool until the tasks give them back.
///
/// ```
/// # fn main() -> ringshard::Result<()> {
/// use ringshard::{Executor, OpenOptions};
/// let exec = Executor::builder().shards(1).build()?;
/// let dir = tempfile::tempdir().unwrap();
/// let file = exec.open(dir.path().join("f"), OpenOptions::new().read(true).write(true).create(true)).wait()?;
/// exec.write(&file, 0, vec![7u8; 4096]).wait()?;
/// let f = file.clone();
/// let sum = exec.submit_to(file.shard(), move |ctx| -> ringshard::Result<u64> {
///     let (idx, _) = ctx.pool().acquire()?;
///     ctx.push_read_fixed(&f, idx, 0, 4096)?;
///     ctx.submit_and_wait(1)?;
///     let mut got = 0;
///     ctx.reap(|cqe| got = cqe.result);
///     assert_eq!(got, 4096);
///     let s = ctx.pool().get(idx)?.iter().map(|&b| b as u64).sum();
///     ctx.pool().release(idx);
///     Ok(s)
/// }).wait()??;
/// assert_eq!(sum, 7 * 4096);
/// # Ok(()) }
/// ```
pub struct ShardContext<'a> {
    pub(super) ring: &'a mut crate::driver::Driver,
    pub(super) pool: &'a mut RegisteredBufferPool,
    pub(super) files: &'a FileTable,
    pub(super) stats: &'a mut ShardStats,
    pub(super) wake_seen: &'a mut bool,
    /// Completions of SQEs pushed through the pool that [`reap`](Self::reap) took from the ring.
    pub(super) pool_cqes: &'a mut u64,
    pub(super) index: usize,
    pub(super) inline_buffered_writes: bool,
}

impl ShardContext<'_> {
    /// This shard's index.
    pub fn shard(&self) -> usize {
        self.index
    }

    /// The CPU this shard is pinned to, if pinned.
    pub fn cpu(&self) -> Option<usize> {
        self.stats.cpu
    }

    /// The NUMA node of this shard's memory, if known.
    pub fn numa_node(&self) -> Option<u32> {
        self.stats.numa_node
    }

    /// The shard's registered buffer pool.
    pub fn pool(&mut self) -> &mut RegisteredBufferPool {
        self.pool
    }

    /// The raw descriptor of `file` (which must live on this shard).
    pub fn raw_fd(&self, file: &File) -> Result<RawFd> {
        Ok(self.files.lookup(file.handle())?.fd())
    }

    /// Whether this executor does buffered (not O_DIRECT) writes with `pwrite` on the shard
    /// thread rather than through the ring (see
    /// [`ExecutorBuilder::inline_buffered_writes`](crate::ExecutorBuilder::inline_buffered_writes)).
    /// Loops that want the executor's write path use [`write_fixed_inline`](Self::write_fixed_inline)
    /// when this is true and `file` is not O_DIRECT.
    pub fn buffered_writes_inline(&self) -> bool {
        self.inline_buffered_writes
    }

    /// Writes the first `len` bytes of pool buffer `buf_index` at `offset` of `file` now, with
    /// `pwrite` on this thread (short writes resumed): the executor's path for buffered writes.
    /// Returns the bytes written.
    pub fn write_fixed_inline(
        &mut self,
        file: &File,
        buf_index: u16,
        offset: u64,
        len: usize,
    ) -> Result<usize> {
        let fd = self.files.lookup(file.handle())?.fd();
        let buffer_size = self.pool.buffer_size();
        let data = self.pool.get(buf_index)?;
        let data = data.get(..len).ok_or(Error::BufferTooSmall {
            requested: len,
            buffer_size,
        })?;
        pwrite_all(fd, data, offset, 0).map_err(|(written, errno)| {
            Error::io("write", Some(file.path().into()), Some(offset), errno)
                .with_written(written as u64)
        })
    }

    /// Free submission queue entries right now.
    pub fn sq_space(&mut self) -> usize {
        self.ring.sq_space()
    }

    fn push_fixed(
        &mut self,
        dir: Direction,
        file: &File,
        buf_index: u16,
        offset: u64,
        len: u32,
    ) -> Result<u64> {
        let target: Target = self.files.lookup(file.handle())?.target();
        let entry = self.pool.prepare(dir, target, buf_index, offset, len)?;
        let user_data = self.pool.push_prepared(self.ring, entry, buf_index)?;
        self.stats
            .note_in_flight(self.pool.in_flight_count() as u64);
        Ok(user_data)
    }

    /// Pushes a `READ_FIXED` of `len` bytes at `offset` of `file` into pool buffer `buf_index`
    /// (acquired by you), using the ring's registered file slot. Returns the `user_data`.
    pub fn push_read_fixed(
        &mut self,
        file: &File,
        buf_index: u16,
        offset: u64,
        len: u32,
    ) -> Result<u64> {
        self.push_fixed(Direction::Read, file, buf_index, offset, len)
    }

    /// Pushes a `WRITE_FIXED` of the first `len` bytes of pool buffer `buf_index` at `offset`.
    pub fn push_write_fixed(
        &mut self,
        file: &File,
        buf_index: u16,
        offset: u64,
        len: u32,
    ) -> Result<u64> {
        self.push_fixed(Direction::Write, file, buf_index, offset, len)
    }

    /// Pushes any SQE.
    ///
    /// # Safety
    /// - Everything the entry points to (buffers, paths, structs the kernel writes) must stay
    ///   valid and must not be used by anything else until its completion is reaped.
    /// - The operation must complete, and its completion be reaped through
    ///   [`reap`](Self::reap), before the closure returns: the shard resumes its own operations
    ///   right after, and a completion left in the ring would be taken for one of them.
    /// - Its `user_data` must stay out of the shard's space: not [`WAKE_USER_DATA`] or
    ///   [`CANCEL_USER_DATA`], without the pool's tag bit (bit 63: a forged pool `user_data`
    ///   could end a buffer's kernel ownership early), and not a value below
    ///   2^47 that names a shard op (`slot | generation << 24`); use values in
    ///   `2^47 .. 2^62` for your own SQEs.
    pub unsafe fn push(&mut self, entry: &squeue::Entry) -> Result<()> {
        // SAFETY: the caller upholds the contract above: the memory outlives the operation, and
        // its completion is reaped (and so never confused with a shard op) before we return.
        if unsafe { self.ring.push(entry) } {
            Ok(())
        } else {
            Err(Error::SubmissionQueueFull)
        }
    }

    /// Submits what was pushed; returns how many SQEs the kernel took.
    pub fn submit(&mut self) -> Result<usize> {
        self.submit_and_wait(0)
    }

    /// Submits what was pushed and waits until at least `want` completions are ready. Returns 0
    /// without waiting when the kernel is momentarily out of room (reap, then call again).
    pub fn submit_and_wait(&mut self, want: usize) -> Result<usize> {
        submit_counted(self.ring, self.stats, want)
    }

    /// Calls `f` for every completion ready now; returns how many. Completions of pool operations
    /// are marked complete in the pool first (see [`ShardCqe::buf_index`]).
    pub fn reap(&mut self, mut f: impl FnMut(ShardCqe)) -> usize {
        let mut n = 0;
        let mut cqes = Vec::new();
        self.ring.completions(&mut cqes);
        for (user_data, result, flags) in cqes {
            if user_data == WAKE_USER_DATA {
                *self.wake_seen = true;
                continue;
            }
            if user_data & crate::pool::POOL_USER_DATA_TAG != 0 {
                *self.pool_cqes += 1;
            }
            let buf_index = self.pool.complete_user_data(user_data);
            f(ShardCqe {
                user_data,
                result,
                flags,
                buf_index,
            });
            n += 1;
        }
        n
    }

    /// How many timeouts the threads backend keeps for this shard (`None` on io_uring). For
    /// tests: it stays bounded by the sleeps armed, however many were removed.
    #[doc(hidden)]
    pub fn threads_timer_entries_for_tests(&self) -> Option<usize> {
        self.ring.threads_timer_entries()
    }

    /// Counts an operation done by the closure in the shard's statistics.
    pub fn record(&mut self, kind: OpKind, bytes: u64, latency_ns: u64) {
        self.stats.record(kind, bytes, latency_ns);
    }

    /// Counts a failed operation done by the closure in the shard's statistics.
    pub fn record_error(&mut self, kind: OpKind, errno: i32, latency_ns: u64) {
        self.stats.record_error(kind, errno, latency_ns);
    }
}
