//! Async tasks on shards, as the code that spawns and runs them sees them: spawning and where a
//! woken task goes (`spawn.rs`), the [`JoinHandle`] and [`block_on`] (`join.rs`), the shard a task
//! runs on ([`LocalShard`], [`local`], [`PoolBuf`]: `local.rs`), and [`Sleep`]/[`yield_now`]
//! (`sleep.rs`).
//!
//! Task allocation, the waker vtable, join, cancellation and the "run or drop on the spawning
//! thread" rule of `!Send` futures come from the `async-task` crate. The queues the shard loop
//! drains (run queue, messages sent on its thread, sleeps to arm, lent buffers) are the shard's:
//! `shard/task_queues.rs`.

mod join;
mod local;
mod sleep;
mod spawn;

pub use join::{block_on, JoinHandle};
pub use local::{local, LocalShard, PoolBuf};
pub use sleep::{yield_now, Sleep, YieldNow};

/// A [`Sleep`] until `deadline` (`None`: never), for the crate's own timeouts.
pub(crate) fn sleep_until(deadline: Option<std::time::Instant>) -> Sleep {
    Sleep::new(deadline)
}
pub(crate) use spawn::{spawn, spawn_result, spawn_with};
