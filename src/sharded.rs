//! Per-shard state, like Seastar's `sharded<T>`: one `T` per shard, built on that shard's thread
//! (so its memory is first touched there, on the shard's NUMA node), used by that shard's tasks.
//!
//! The values live in their shard thread's own storage (a thread-local table keyed by the
//! `Sharded`'s id), not in the handle: only code running on a shard reaches a value, and only
//! that shard's. So `T` need be neither `Send` nor `Sync` (an `Rc<RefCell<..>>` index is fine),
//! and is dropped on its shard's thread: when the last handle drops (a task on each shard takes
//! it out of the table), or when the shard stops, whichever comes first.

use crate::error::{Error, Result};
use crate::routes::ExecShared;
use crate::shard::local_values;
use crate::task::{local, spawn, spawn_result, JoinHandle, LocalShard};
use std::any::Any;
use std::future::Future;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Ids of `Sharded` values, unique in the process (the key of each shard thread's table).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One `T` per shard of an executor ([`Executor::sharded`](crate::Executor::sharded)).
///
/// Each `T` is built on its shard's thread and stays there: code running on a shard (a task,
/// a [`submit_to`](crate::Executor::submit_to) closure) reaches that shard's `T` with
/// [`with`](Self::with) or [`local`](Self::local); anywhere else they refuse
/// ([`Error::NotOnShard`], `None`). So `T` need not be `Send` or `Sync`: per-core state needs
/// no lock and no atomics (`Rc<RefCell<..>>`, `Cell` counters), as in Seastar or glommio.
/// [`run_on_each`](Self::run_on_each), [`map`](Self::map) and [`map_reduce`](Self::map_reduce)
/// run code on every shard with its `T`.
///
/// The handle itself is `Send + Sync` and cheap to clone (move clones into tasks). Each `T` is
/// dropped on its own shard's thread: when the last handle drops (a task on each shard drops
/// it), or when the executor shuts down (each shard drops what it holds as it stops).
///
/// ```
/// # fn main() -> ringshard::Result<()> {
/// use std::cell::RefCell;
/// use std::collections::HashMap;
/// use std::rc::Rc;
///
/// let exec = ringshard::Executor::builder().shards(2).build()?;
/// // Per-shard, lock-free state: an index that only its shard's thread ever touches.
/// let index = exec.sharded(|_| Rc::new(RefCell::new(HashMap::<String, u64>::new())))?;
/// let i = index.clone();
/// exec.spawn_on(1, async move {
///     i.with(|m| m.borrow_mut().insert("key".to_string(), 7))
/// })
/// .wait()??;
/// let sizes: Vec<usize> = index
///     .run_on_each(|m| m.borrow().len())
///     .into_iter()
///     .map(|h| h.wait())
///     .collect::<ringshard::Result<_>>()?;
/// assert_eq!(sizes, [0, 1]);
/// assert!(index.with(|_| ()).is_err(), "not on a shard here");
/// # exec.shutdown() }
/// ```
pub struct Sharded<T> {
    inner: Arc<Inner>,
    /// `fn() -> T`: the handle holds no `T` (so it is `Send + Sync` whatever `T` is).
    _values: PhantomData<fn() -> T>,
}

/// What the handles share; its drop takes the values out of their shards.
struct Inner {
    exec: Arc<ExecShared>,
    id: u64,
    shards: usize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let id = self.id;
        for shard in 0..self.shards {
            // Refused once the executor is shut down: each shard then drops its values as it
            // stops (`local_values::drop_here`).
            spawn(&self.exec, shard, async move { local_values::remove(id) }).detach();
        }
    }
}

impl<T> Clone for Sharded<T> {
    fn clone(&self) -> Self {
        Sharded {
            inner: Arc::clone(&self.inner),
            _values: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Sharded<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sharded")
            .field("shards", &self.inner.shards)
            .finish()
    }
}

/// Builds one `T` per shard, each on its own shard (see [`Executor::sharded`]).
pub(crate) async fn build<T, F>(exec: &Arc<ExecShared>, make: F) -> Result<Sharded<T>>
where
    T: 'static,
    F: Fn(&LocalShard) -> T + Send + Sync + 'static,
{
    // Made first: if a shard fails to build its value, dropping it takes the others' back out.
    let sharded = Sharded {
        inner: Arc::new(Inner {
            exec: Arc::clone(exec),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shards: exec.shards.len(),
        }),
        _values: PhantomData,
    };
    let id = sharded.inner.id;
    let make = Arc::new(make);
    let handles: Vec<JoinHandle<()>> = (0..exec.shards.len())
        .map(|shard| {
            let make = Arc::clone(&make);
            spawn_result(exec, shard, async move {
                let local = local().ok_or_else(|| Error::invalid("sharded", "not on a shard"))?;
                // Built here (its allocation first touched on the shard's thread and node) and
                // stored in this thread's table within the same poll: it never leaves the thread.
                let value: Rc<dyn Any> = Rc::new(make(&local));
                local_values::insert(id, value);
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.await?;
    }
    Ok(sharded)
}

impl<T: 'static> Sharded<T> {
    /// The number of shards (and of `T`s).
    pub fn len(&self) -> usize {
        self.inner.shards
    }

    /// Always false: an executor has at least one shard.
    pub fn is_empty(&self) -> bool {
        self.inner.shards == 0
    }

    /// The `T` of the shard this code runs on (in a shard task or `submit_to` closure), or
    /// `None` off this executor's shards. The `Rc` cannot leave the thread; a task may hold it
    /// across `.await` if it runs there as a `!Send` future
    /// ([`spawn_on_with`](crate::Executor::spawn_on_with), [`map`](Self::map)).
    pub fn local(&self) -> Option<Rc<T>> {
        let (exec, _) = crate::completion::current_shard()?;
        if exec != self.inner.exec.id {
            return None;
        }
        local_values::get(self.inner.id)
    }

    /// Calls `f` with the `T` of the shard this code runs on. Off this executor's shards (any
    /// other thread, or a shard of another executor) it fails with [`Error::NotOnShard`]: run the
    /// code on a shard instead ([`Executor::spawn_on`](crate::Executor::spawn_on),
    /// [`run_on_each`](Self::run_on_each)).
    pub fn with<R>(&self, f: impl FnOnce(&T) -> R) -> Result<R> {
        let t = self.local().ok_or(Error::NotOnShard {
            op: "Sharded::with",
        })?;
        Ok(f(&t))
    }

    /// Runs `f` on every shard with that shard's `T`, as a task; one handle per shard, in order.
    pub fn run_on_each<R, F>(&self, f: F) -> Vec<JoinHandle<R>>
    where
        R: Send + 'static,
        F: Fn(&T) -> R + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        (0..self.len())
            .map(|shard| {
                let (f, this) = (Arc::clone(&f), self.clone());
                spawn_result(&self.inner.exec, shard, async move { this.with(|t| f(t)) })
            })
            .collect()
    }

    /// Runs the future `f(t)` on every shard, `t` being that shard's `T`; one handle per shard,
    /// in order. `f` runs on the shard's thread and its future need not be `Send` (it may hold
    /// `t` across `.await`); only its output travels back.
    pub fn map<R, F, Fut>(&self, f: F) -> Vec<JoinHandle<R>>
    where
        R: Send + 'static,
        F: Fn(Rc<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + 'static,
    {
        let f = Arc::new(f);
        (0..self.len())
            .map(|shard| {
                let (f, this) = (Arc::clone(&f), self.clone());
                // The outer task is `Send`: it starts the `!Send` future on the shard and
                // holds only its handle across the await.
                spawn_result(&self.inner.exec, shard, async move {
                    let inner = {
                        let local = local().ok_or(Error::NotOnShard { op: "Sharded::map" })?;
                        let t = this
                            .local()
                            .ok_or(Error::NotOnShard { op: "Sharded::map" })?;
                        local.spawn_local(f(t))
                    };
                    inner.await
                })
            })
            .collect()
    }

    /// [`map`](Self::map), then folds the results in shard order with `reduce`, starting from
    /// `init`. The first error (a panicked task, shutdown) is returned instead.
    pub async fn map_reduce<R, A, F, Fut, G>(&self, f: F, init: A, mut reduce: G) -> Result<A>
    where
        R: Send + 'static,
        F: Fn(Rc<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + 'static,
        G: FnMut(A, R) -> A,
    {
        let mut acc = init;
        for h in self.map(f) {
            acc = reduce(acc, h.await?);
        }
        Ok(acc)
    }
}
