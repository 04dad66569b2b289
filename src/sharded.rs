//! Per-shard state, like Seastar's `sharded<T>`: one `T` per shard, built on that shard's thread
//! (so its memory is first touched there, on the shard's NUMA node), used by that shard's tasks.

use crate::error::{Error, Result};
use crate::executor::ExecShared;
use crate::shard::tasks::{spawn, JoinHandle, LocalShard};
use std::future::Future;
use std::sync::Arc;

/// One `T` per shard of an executor ([`Executor::sharded`](crate::Executor::sharded)).
///
/// Each `T` is built on its shard's thread; tasks on shard `i` use `get(i)` (or
/// [`local`](Self::local)). `T` must be `Send + Sync` because the handle can be cloned and used
/// from anywhere; the point is that each shard touches only its own `T`, so no lock in it is ever
/// contended (a `RefCell`-like state needs `spawn_on_with` and a thread-local instead).
pub struct Sharded<T> {
    exec: Arc<ExecShared>,
    items: Arc<Vec<Arc<T>>>,
}

impl<T> Clone for Sharded<T> {
    fn clone(&self) -> Self {
        Sharded {
            exec: Arc::clone(&self.exec),
            items: Arc::clone(&self.items),
        }
    }
}

impl<T> std::fmt::Debug for Sharded<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sharded")
            .field("shards", &self.items.len())
            .finish()
    }
}

/// Builds one `T` per shard, each on its own shard (see [`Executor::sharded`]).
pub(crate) async fn build<T, F>(exec: &Arc<ExecShared>, make: F) -> Result<Sharded<T>>
where
    T: Send + Sync + 'static,
    F: Fn(&LocalShard) -> T + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let handles: Vec<JoinHandle<Result<Arc<T>>>> = (0..exec.shards.len())
        .map(|shard| {
            let make = Arc::clone(&make);
            spawn(exec, shard, async move {
                let local = crate::shard::tasks::local()
                    .ok_or_else(|| Error::invalid("sharded", "not on a shard"))?;
                // Built here: the allocation is first touched on the shard's thread (node).
                Ok(Arc::new(make(&local)))
            })
        })
        .collect();
    let mut items = Vec::with_capacity(handles.len());
    for h in handles {
        items.push(h.await??);
    }
    Ok(Sharded {
        exec: Arc::clone(exec),
        items: Arc::new(items),
    })
}

impl<T: Send + Sync + 'static> Sharded<T> {
    /// The number of shards (and of `T`s).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Always false: an executor has at least one shard.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Shard `shard`'s `T`.
    pub fn get(&self, shard: usize) -> Option<&Arc<T>> {
        self.items.get(shard)
    }

    /// The `T` of the shard this code runs on (in a shard task), or `None` off the shards.
    pub fn local(&self) -> Option<&Arc<T>> {
        let (exec, shard) = crate::completion::current_shard()?;
        (exec == self.exec.id).then(|| self.items.get(shard))?
    }

    /// Runs `f` on every shard with that shard's `T`, as a task; one handle per shard, in order.
    pub fn run_on_each<R, F>(&self, f: F) -> Vec<JoinHandle<R>>
    where
        R: Send + 'static,
        F: Fn(&T) -> R + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        self.map(move |t| {
            let f = Arc::clone(&f);
            async move { f(&t) }
        })
    }

    /// Runs the future `f(t)` on every shard with that shard's `T`; one handle per shard.
    pub fn map<R, F, Fut>(&self, f: F) -> Vec<JoinHandle<R>>
    where
        R: Send + 'static,
        F: Fn(Arc<T>) -> Fut,
        Fut: Future<Output = R> + Send + 'static,
    {
        self.items
            .iter()
            .enumerate()
            .map(|(shard, t)| spawn(&self.exec, shard, f(Arc::clone(t))))
            .collect()
    }

    /// [`map`](Self::map), then folds the results in shard order with `reduce`, starting from
    /// `init`. The first error (a panicked task, shutdown) is returned instead.
    pub async fn map_reduce<R, A, F, Fut, G>(&self, f: F, init: A, mut reduce: G) -> Result<A>
    where
        R: Send + 'static,
        F: Fn(Arc<T>) -> Fut,
        Fut: Future<Output = R> + Send + 'static,
        G: FnMut(A, R) -> A,
    {
        let mut acc = init;
        for h in self.map(f) {
            acc = reduce(acc, h.await?);
        }
        Ok(acc)
    }
}
