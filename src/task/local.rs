//! The shard a task runs on, as the task sees it: [`local`], [`LocalShard`] (its index, I/O on
//! its files without the channel, `!Send` tasks, sleeps on its ring) and [`PoolBuf`], the data of
//! a pooled O_DIRECT read in the shard's own buffer.

use super::join::JoinHandle;
use super::sleep::Sleep;
use super::spawn::{spawn, spawn_here};
use crate::completion::{current_shard, Completion};
use crate::deadlined::Deadlined;
use crate::error::{Error, Result};
use crate::file::File;
use crate::routes::ExecShared;
use crate::shard::lease::Lease;
use crate::shard::task_queues;
use crate::shard::Reply;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The shard this code runs on, inside a shard task (or a `submit_to` closure): its index, its
/// files' I/O without the channel, timers on its ring, and `!Send` tasks. `None` elsewhere.
pub fn local() -> Option<LocalShard> {
    let (exec_id, index) = current_shard()?;
    if task_queues::exited() {
        return None;
    }
    // The shard keeps its executor type-erased (it is below the routes); it is always this type.
    let exec = task_queues::executor()?.downcast::<ExecShared>().ok()?;
    (exec.id == exec_id).then_some(LocalShard { exec, index })
}

/// The shard a task runs on (see [`local`]).
///
/// It may be moved to and used on other threads (then its I/O is simply routed, and its sleeps
/// use a helper thread), but its point is to be used on its shard. I/O on files owned by this
/// shard goes straight into the shard's op table at its next
/// admission (same checks, per-file order, data paths and statistics as routed requests; no
/// channel and no wake-up), and its completion wakes the task on this thread. Files of other
/// shards are routed to their shard as usual. The methods return [`Completion`]s: await them.
#[derive(Clone)]
pub struct LocalShard {
    exec: Arc<ExecShared>,
    index: usize,
}

impl std::fmt::Debug for LocalShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalShard")
            .field("index", &self.index)
            .finish()
    }
}

impl LocalShard {
    /// This shard's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The executor's routes (for the socket faces, `net/`).
    pub(crate) fn routes(&self) -> &Arc<ExecShared> {
        &self.exec
    }

    /// Whether `file` is owned by this shard (its I/O skips the channel).
    pub fn owns(&self, file: &File) -> bool {
        file.handle().exec == self.exec.id && file.shard() == self.index
    }

    /// Spawns a future that need not be `Send` on this shard. It runs, and is dropped, only on
    /// this shard's thread. Called on any other thread, the handle fails with
    /// [`Error::InvalidArgument`].
    pub fn spawn_local<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        spawn_here(&self.exec, self.index, fut)
    }

    /// Spawns a `Send` future on shard `shard` (this one or another).
    pub fn spawn_on<F>(&self, shard: usize, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        spawn(&self.exec, shard, fut)
    }

    /// Reads up to `len` bytes at `offset` (see [`Executor::read`](crate::Executor::read)).
    pub fn read(&self, file: &File, offset: u64, len: usize) -> Completion<Vec<u8>> {
        self.read_into(file, offset, len, Vec::new())
    }

    /// Reads into `buf`'s allocation (see [`Executor::read_into`](crate::Executor::read_into)).
    pub fn read_into(
        &self,
        file: &File,
        offset: u64,
        len: usize,
        buf: Vec<u8>,
    ) -> Completion<Vec<u8>> {
        self.with_deadline(None).read_into(file, offset, len, buf)
    }

    /// Writes all of `data` at `offset` (see [`Executor::write`](crate::Executor::write)).
    pub fn write(&self, file: &File, offset: u64, data: impl Into<Vec<u8>>) -> Completion<usize> {
        self.with_deadline(None).write(file, offset, data)
    }

    /// Sends `len` bytes at `offset` of `file` to `dest` (a socket, pipe or FIFO) without
    /// passing them through user space (see
    /// [`Executor::send_file`](crate::Executor::send_file)).
    pub fn send_file(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        dest: impl std::os::fd::AsFd,
    ) -> Completion<u64> {
        self.with_deadline(None).send_file(file, offset, len, dest)
    }

    /// This shard's requests with a deadline, as [`Executor::timeout`](crate::Executor::timeout):
    /// past it a request fails with [`DeadlineExceeded`](crate::Error::DeadlineExceeded) and is
    /// cancelled in the kernel. Every operation of [`Deadlined`] is there.
    pub fn timeout(&self, timeout: Duration) -> Deadlined<'_> {
        self.with_deadline(Instant::now().checked_add(timeout))
    }

    fn with_deadline(&self, deadline: Option<Instant>) -> Deadlined<'_> {
        Deadlined::new(&self.exec, deadline)
    }

    /// Reads up to `len` bytes at `offset` of an O_DIRECT file owned by this shard straight into
    /// one of the shard's registered pool buffers (READ_FIXED), and hands that buffer to the task
    /// as a [`PoolBuf`]: no copy. `len` must fit one buffer (`buffer_size` rounded down to 4096)
    /// and be 4096-aligned, as `offset`. The buffer goes back to the pool when the guard is
    /// dropped (never before the read's completion); hold it briefly: the shard's O_DIRECT I/O
    /// waits while the pool is empty.
    pub async fn read_pooled(&self, file: &File, offset: u64, len: usize) -> Result<PoolBuf> {
        if !self.owns(file) || !task_queues::on_shard(self.exec.id, self.index) {
            return Err(Error::invalid(
                "read_pooled",
                format!(
                    "{} is not owned by shard {} (or this is not its thread): pooled reads use \
                     the shard's own pool",
                    file.path().display(),
                    self.index
                ),
            ));
        }
        let op = crate::validate::read_op(file, offset, len, Vec::new(), self.exec.limits);
        let lease = self.exec.request(file, op, Reply::Lease, None).await?;
        Ok(PoolBuf {
            lease,
            _not_send: std::marker::PhantomData,
        })
    }

    /// fsync, after every earlier write to the file.
    pub fn fsync(&self, file: &File) -> Completion<()> {
        self.with_deadline(None).fsync(file)
    }

    /// fdatasync, after every earlier write to the file.
    pub fn fdatasync(&self, file: &File) -> Completion<()> {
        self.with_deadline(None).fdatasync(file)
    }

    /// The file's size, after every earlier operation on it.
    pub fn size(&self, file: &File) -> Completion<u64> {
        self.with_deadline(None).size(file)
    }

    /// Completes after at least `d`, through an `IORING_OP_TIMEOUT` on this shard's ring (no
    /// timer thread). Sleeps started in one turn are armed in the order they were started.
    ///
    /// Dropping the future early takes its timeout out of the ring (`IORING_OP_TIMEOUT_REMOVE`,
    /// at the shard's next turn): it holds no completion-queue slot after that.
    pub fn sleep(&self, d: Duration) -> Sleep {
        Sleep::new(Instant::now().checked_add(d))
    }
}

/// The data of a pooled O_DIRECT read ([`LocalShard::read_pooled`]), in the shard's registered
/// buffer itself: no copy. Dropping it gives the buffer back to the pool. Not `Send`: it is read
/// on its shard's thread (elsewhere, or after the shard stopped, it reads as empty).
pub struct PoolBuf {
    lease: Lease,
    _not_send: std::marker::PhantomData<*const u8>,
}

impl std::fmt::Debug for PoolBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuf")
            .field("buffer", &self.lease.index())
            .field("len", &self.lease.read_len())
            .finish()
    }
}

impl PoolBuf {
    /// The pool buffer's index.
    pub fn buffer_index(&self) -> u16 {
        self.lease.index()
    }
}

impl std::ops::Deref for PoolBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        if !self.lease.readable_here() {
            return &[];
        }
        // SAFETY: `addr()` is buffer `index()` of this thread's shard's pool, lent by the pool
        // after the read's CQE was matched (so the kernel no longer owns it) and `read_len()` is
        // at most the buffer's size. The pool holds it lent: `get`, `get_mut`, `release`,
        // `submit_*` (from a `submit_to` closure, which may run while this task waits) refuse it
        // and `acquire` never hands it out, until the shard takes it back, which it does only
        // from its released list (`task_queues::take_released`), which only this guard's
        // `Lease` fills, when dropped: nothing writes into it meanwhile. The slab stays mapped
        // while `task_queues::pool_alive()` holds on this thread, and that is cleared before the
        // pool is unmapped, on this same thread, where no borrow of this slice can be alive
        // across that point (the shard drops its pool only after its loop, outside any task's
        // poll). `PoolBuf` is not `Send`, and `readable_here` checked the thread.
        unsafe { std::slice::from_raw_parts(self.lease.addr(), self.lease.read_len()) }
    }
}
