//! # ringshard
//!
//! A thread-per-core, sharded file I/O executor on Linux io_uring.
//!
//! The foundation is [`RegisteredBufferPool`]: buffers registered with a ring once, acquired and
//! released by index, and submitted with `READ_FIXED` / `WRITE_FIXED`.
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

pub mod buf;
pub mod completion;
mod driver;
pub mod error;
pub mod executor;
mod fd_transit;
pub mod file;
mod file_ops;
mod inline;
mod io_adapters;
mod logging;
pub mod numa;
mod op;
mod park;
pub mod pool;
pub mod request;
pub mod ring;
pub mod router;
pub mod session;
pub mod shard;
pub mod sharded;
pub mod stats;
mod stop_at_exit;
pub mod topology;

pub use buf::{BufCompletion, BufResult, IoBuf, IoBufMut};
pub use completion::Completion;
pub use driver::{Backend, BackendChoice, BACKEND_ENV};
#[allow(deprecated)]
pub use error::{Error, IoUringError, Result};
pub use executor::{Batch, Deadlined, Executor, ExecutorBuilder};
pub use fd_transit::{PendingFds, DEFAULT_MAX_PENDING_FDS};
pub use file::{DirectIoAlign, File, OpenOptions};
pub use inline::{DEFAULT_INLINE_READ_LIMIT, MAX_INLINE_READ_LIMIT};
pub use io_adapters::FileCursor;
pub use op::append::Appended;
pub use op::fallocate::FallocateMode;
pub use op::path::RenameFlags;
pub use op::rw::RwFlags;
pub use op::statx::Metadata;
pub use op::sync_range::SyncRangeFlags;
pub use op::vectored::MAX_IOVECS;
pub use pool::{BufferPoolStats, RegisteredBufferPool};
pub use ring::{RingConfig, RingMode};
pub use session::{Done, Session};
pub use shard::{
    block_on, local, yield_now, JoinHandle, LocalShard, PoolBuf, ShardContext, ShardCqe, Sleep,
    YieldNow, SLOW_POLL,
};
pub use sharded::Sharded;
pub use stats::{ExecutorStats, LatencySummary, MemPolicy, OpKind, ShardStats};
pub use topology::{Placement, Topology};
