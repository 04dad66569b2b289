//! # ringshard
//!
//! A thread-per-core, sharded file I/O executor on Linux io_uring.
//!
//! An [`Executor`] runs one shard per core: a thread pinned to its CPU with its own io_uring ring
//! and its own registered buffer pool on that CPU's NUMA node. Each file belongs to one shard
//! (picked by its inode) and every operation on it runs there, in order where it matters: a read
//! sees every earlier write, an fsync covers them, writes to overlapping ranges keep their order.
//! Cached reads are done on the caller's own thread when they can be. Where io_uring is blocked
//! (seccomp, `kernel.io_uring_disabled`, gVisor, no RLIMIT_MEMLOCK room) the same API runs on a
//! threads backend ([`Backend`]).
//!
//! There are two ways in: call the executor from any thread or async runtime, or run your code
//! as a task on a shard.
//!
//! ## From any thread or runtime
//!
//! Every operation returns a [`Completion`]: `.wait()` blocks the calling thread until the result
//! is there, and it is a `Future` that any runtime can `.await` without blocking its threads.
//! Sending a request never blocks; [`Executor::open`] waits for the open, and
//! [`open_async`](Executor::open_async) is its awaitable form.
//!
//! ```
//! use ringshard::{Executor, OpenOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let exec = Executor::builder().shards(2).build()?; // 2 pinned shards
//! let dir = tempfile::tempdir()?;
//! let rw = OpenOptions::new().read(true).write(true).create(true).clone();
//! let file = exec.open(dir.path().join("data"), &rw).wait()?; // on the shard of its inode
//! file.write_all_at(0, b"hello, shard").wait()?; // blocks this thread until written
//! file.sync_data().wait()?; // ordered after the write
//! assert_eq!(file.read_at(7, 5).wait()?, b"shard");
//!
//! // The same calls, awaited on an async runtime (tokio here; any runtime works):
//! let rt = tokio::runtime::Runtime::new()?;
//! let len = rt.block_on(async {
//!     file.write_all_at(12, b"!").await?;
//!     Ok::<_, ringshard::Error>(file.read_at(0, 64).await?.len()) // fewer bytes only at the end
//! })?;
//! assert_eq!(len, 13);
//! exec.shutdown()?; // drains, closes, joins (dropping the executor does it without waiting)
//! # Ok(()) }
//! ```
//!
//! ## As a task on a shard
//!
//! [`Executor::spawn_on`] (or [`spawn_on_owner`](Executor::spawn_on_owner), the shard of a
//! file) runs a future on a shard's thread, interleaved with the shard's I/O. Inside it,
//! [`local()`] gives the shard's [`LocalShard`]: I/O on the shard's own files goes straight into
//! its op table (no channel, no wake-up), plus timers on its ring and `!Send` tasks. The
//! [`JoinHandle`] is awaited from anywhere or waited on.
//!
//! ```
//! use ringshard::{Executor, OpenOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let exec = Executor::builder().shards(2).build()?;
//! let dir = tempfile::tempdir()?;
//! let rw = OpenOptions::new().read(true).write(true).create(true).clone();
//! let file = exec.open(dir.path().join("log"), &rw).wait()?;
//! let f = file.clone(); // a File is a cheap handle: Send + Sync + Clone
//! let n = exec
//!     .spawn_on_owner(&file, async move {
//!         let local = ringshard::local().expect("on a shard");
//!         local.write(&f, 0, b"hello".to_vec()).await?;
//!         Ok::<_, ringshard::Error>(local.read(&f, 0, 5).await?.len())
//!     })
//!     .wait()??; // the task's result, or an error if it panicked or was cancelled
//! assert_eq!(n, 5);
//! exec.shutdown()?;
//! # Ok(()) }
//! ```
//!
//! [`Executor::submit_to`] runs a synchronous closure on a shard with its raw ring and pool
//! ([`ShardContext`]), once the shard has no I/O in flight; [`Executor::sharded`] builds one value
//! per shard on its own thread ([`Sharded`], like Seastar's `sharded<T>`).
//!
//! ## Map
//!
//! - [`Executor`], built by [`ExecutorBuilder`] (shards, placement, ring and pool sizes,
//!   backend, inline reads): opens ([`open`](Executor::open), [`open_async`](Executor::open_async),
//!   [`adopt`](Executor::adopt)), path operations (`stat`, `mkdir`, `rename`, `unlink`, ...),
//!   [`stats`](Executor::stats), [`shutdown`](Executor::shutdown).
//! - [`File`], opened with [`OpenOptions`]: a handle to a file on its shard, with the operations
//!   (`read_at`, `write_all_at`, `sync_all`, `set_len`, `metadata`, `append`, vectored and
//!   owned-buffer forms); it closes itself when its last clone is dropped.
//! - [`Completion`]: one operation's result, `.wait()` or `.await`; dropping it cancels the
//!   request. [`BufCompletion`] gives an owned buffer ([`IoBuf`], [`IoBufMut`], module [`buf`])
//!   back with the result.
//! - [`Session`]: a completion queue its owner drains ([`Done`]), for many requests in flight with
//!   no allocation per request. [`Batch`] sends many requests as one message per shard;
//!   [`Executor::timeout`] ([`Deadlined`]) gives requests a deadline.
//! - [`FileCursor`] (`file.cursor()`): `std::io::{Read, Write, Seek}`, and with the features
//!   `tokio` and `futures-io` those crates' async traits.
//! - Tasks on shards: [`JoinHandle`], [`LocalShard`], [`local`], [`yield_now`], [`Sharded`],
//!   [`ShardContext`], [`PoolBuf`]; [`block_on`] for a future on a plain thread.
//! - [`stats`]: [`ExecutorStats`] and [`ShardStats`] (a table, JSON, Prometheus and OpenMetrics).
//! - [`Error`] (module [`error`]): every error names the operation, the errno and the file, and
//!   converts into `std::io::Error` keeping the errno.
//! - Where and how it runs: [`Backend`], [`BackendChoice`], [`RingConfig`], [`RingMode`],
//!   [`Placement`], [`Topology`] (modules [`topology`], [`numa`]).
//! - [`RegisteredBufferPool`] (module [`pool`]): the low-level piece, below.
//!
//! Features: `tokio` and `futures-io` (async traits on [`FileCursor`]), `bytes` (`Bytes` and
//! `BytesMut` as buffers), `tracing` (setup and failures logged), `hwloc` (topology through hwloc).
//!
//! ## The registered buffer pool on its own
//!
//! Under each shard is a [`RegisteredBufferPool`]: buffers registered with a ring once, acquired
//! and released by index, and submitted with `READ_FIXED` / `WRITE_FIXED`. It works on any
//! `io_uring::IoUring`, without the executor:
//!
//! ```
//! use io_uring::IoUring;
//! use ringshard::RegisteredBufferPool;
//! use std::os::fd::AsRawFd;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut ring = IoUring::new(32)?;
//! let mut pool = RegisteredBufferPool::new(&mut ring, 64 * 1024, 16)?;
//! let file = tempfile::tempfile()?;
//!
//! let (idx, buf) = pool.acquire()?;
//! buf[..5].copy_from_slice(b"hello");
//! pool.submit_write_fixed(&mut ring, file.as_raw_fd(), idx, 0, 5)?;
//! ring.submit_and_wait(1)?;
//! let cqe = ring.completion().next().expect("a completion");
//! assert_eq!(pool.complete_cqe(&cqe), Some((idx, 5)));
//! pool.release(idx);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod batch;
pub mod buf;
mod builder;
pub mod completion;
mod deadlined;
mod driver;
pub mod error;
pub mod executor;
mod fd_transit;
pub mod file;
mod file_ops;
mod inline;
mod io_adapters;
mod logging;
pub mod net;
pub mod numa;
mod op;
mod park;
mod pipes;
pub mod pool;
mod recv_ring;
mod routes;
mod validate;
/// The request size limits (the checks themselves are in the crate's `validate` module).
pub mod request {
    pub use crate::validate::{DEFAULT_MAX_REQUEST_SIZE, MAX_REQUEST_SIZE_LIMIT};
}
pub mod ring;
pub mod router;
pub mod session;
pub mod shard;
pub mod sharded;
pub mod stats;
mod stop_at_exit;
mod task;
pub mod topology;

pub use buf::{BufCompletion, BufResult, IoBuf, IoBufMut};
pub use completion::Completion;
pub use driver::{Backend, BackendChoice, BACKEND_ENV};
#[allow(deprecated)]
pub use error::{Error, IoUringError, Result};
pub use executor::{Batch, Deadlined, Executor, ExecutorBuilder};
pub use fd_transit::{PendingFds, DEFAULT_MAX_PENDING_FDS};
pub use file::{DirectIoAlign, File, OpenOptions, PageCacheState};
pub use inline::{DEFAULT_INLINE_READ_LIMIT, MAX_INLINE_READ_LIMIT};
pub use io_adapters::FileCursor;
pub use net::{TcpListener, TcpStream};
pub use op::append::Appended;
pub use op::fadvise::Advice;
pub use op::fallocate::FallocateMode;
pub use op::path::RenameFlags;
pub use op::read_dir::{DirEntry, EntryType};
pub use op::rw::RwFlags;
pub use op::statx::Metadata;
pub use op::sync_range::SyncRangeFlags;
pub use op::vectored::MAX_IOVECS;
pub use pool::{BufferPoolStats, RegisteredBufferPool};
pub use ring::{RingConfig, RingMode};
pub use session::{Done, Session};
pub use shard::{ShardContext, ShardCqe, SLOW_POLL};
pub use sharded::Sharded;
pub use stats::{ExecutorStats, LatencySummary, MemPolicy, OpKind, ShardStats};
pub use task::{block_on, local, yield_now, JoinHandle, LocalShard, PoolBuf, Sleep, YieldNow};
pub use topology::{Placement, Topology};
