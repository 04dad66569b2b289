//! Per-shard state (`Sharded<T>`): built on each shard's thread and node, used by that shard's
//! tasks without `Send` or `Sync` (`Rc<RefCell<..>>`), refused off the shards, and dropped on
//! the shard threads (when the last handle drops, or at shutdown).

mod executor_util;

use executor_util::*;
use ringshard::{Error, Executor};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

fn shards(n: usize) -> Executor {
    Executor::builder().shards(n).build().expect("executor")
}

struct PerShard {
    shard: usize,
    thread: Option<String>,
    /// Allocated (and touched) while the shard built this value.
    block: Vec<u8>,
    /// A plain `Cell`: only this shard's thread ever touches it.
    hits: Cell<usize>,
}

#[test]
fn sharded_state_is_built_on_each_shard_and_on_its_node() {
    let exec = shards(2);
    let per = exec
        .sharded(|l| PerShard {
            shard: l.index(),
            thread: std::thread::current().name().map(str::to_string),
            block: vec![1u8; 1 << 20],
            hits: Cell::new(0),
        })
        .unwrap();
    assert_eq!(per.len(), 2);
    assert!(per.local().is_none(), "not on a shard here");
    let nodes: Vec<Option<u32>> = exec.stats().shards.iter().map(|s| s.numa_node).collect();
    let p = per.clone();
    let seen: Vec<(usize, Option<String>, u32)> = per
        .run_on_each(move |t| {
            t.hits.set(t.hits.get() + 1);
            let mine = p.local().expect("on a shard");
            assert!(std::ptr::eq(&*mine, t), "local() is this shard's value");
            let node = ringshard::numa::node_of_address(t.block.as_ptr()).expect("get_mempolicy");
            (t.shard, t.thread.clone(), node)
        })
        .into_iter()
        .map(|h| h.wait().unwrap())
        .collect();
    for (s, (shard, thread, node)) in seen.into_iter().enumerate() {
        assert_eq!(shard, s);
        assert_eq!(thread.as_deref(), Some(format!("ringshard-{s}").as_str()));
        println!("shard {s}: block on node {node}, shard node {:?}", nodes[s]);
        if let Some(want) = nodes[s] {
            assert_eq!(node, want, "shard {s}'s memory is on its node");
        }
    }
    let total = ringshard::block_on(per.map_reduce(
        |t| async move { t.hits.get() + t.block.len() },
        0usize,
        |a, b| a + b,
    ))
    .unwrap();
    assert_eq!(total, 2 + 2 * (1 << 20));
    exec.shutdown().unwrap();
}

/// `Rc<RefCell<..>>` state (neither `Send` nor `Sync`): tasks on each shard update their own
/// shard's value, `Send` tasks through `with` and `!Send` ones holding the `Rc` across I/O.
#[test]
fn rc_refcell_state_is_used_from_tasks_on_each_shard() {
    let exec = shards(2);
    let dir = tempfile::tempdir().unwrap();
    let placed = files_on_every_shard(&exec, dir.path(), "log", 1, 1000);
    let files: Arc<Vec<ringshard::File>> = Arc::new(
        (0..2)
            .map(|s| {
                placed
                    .iter()
                    .find(|(_, f)| f.shard() == s)
                    .unwrap()
                    .1
                    .clone()
            })
            .collect(),
    );
    let log = exec
        .sharded(|l| Rc::new(RefCell::new(vec![format!("built on {}", l.index())])))
        .unwrap();

    // Send tasks: `with` gives the shard's own value, whichever task asks.
    let mut handles = Vec::new();
    for i in 0..20usize {
        let log = log.clone();
        handles.push(exec.spawn_on(i % 2, async move {
            let shard = ringshard::local().expect("a shard task").index();
            log.with(|v| v.borrow_mut().push(format!("task {i} on {shard}")))
        }));
    }
    for h in handles {
        h.wait().unwrap().unwrap();
    }
    // !Send futures: the `Rc` is held across a write and a read of the shard's own file.
    let files2 = Arc::clone(&files);
    let lens = ringshard::block_on(log.map_reduce(
        move |v| {
            let files = Arc::clone(&files2);
            async move {
                let local = ringshard::local().expect("a shard task");
                let f = &files[local.index()];
                let line = format!("io on {}", local.index()).into_bytes();
                local.write(f, 0, line.clone()).await.unwrap();
                let back = local.read(f, 0, line.len()).await.unwrap();
                v.borrow_mut().push(String::from_utf8(back).unwrap());
                v.borrow().clone()
            }
        },
        Vec::new(),
        |mut acc, v| {
            acc.push(v);
            acc
        },
    ))
    .unwrap();
    for (shard, entries) in lens.iter().enumerate() {
        assert_eq!(entries[0], format!("built on {shard}"));
        let tasks: Vec<&String> = entries.iter().filter(|e| e.starts_with("task")).collect();
        assert_eq!(tasks.len(), 10, "shard {shard}: {entries:?}");
        for t in tasks {
            assert!(
                t.ends_with(&format!(" on {shard}")),
                "shard {shard} saw {t}"
            );
        }
        assert_eq!(entries.last().unwrap(), &format!("io on {shard}"));
    }
    drop(files);
    exec.shutdown().unwrap();
}

/// Off the shards (a plain thread, a tokio worker, another executor's shard) the state is
/// refused with `NotOnShard` (and `local()` is `None`), never handed out.
#[test]
fn access_off_the_shards_is_refused() {
    let exec = shards(2);
    let other = shards(1);
    let state = exec.sharded(|_| Rc::new(Cell::new(5u32))).unwrap();

    let err = state.with(|c| c.get()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotOnShard {
                op: "Sharded::with"
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("spawn_on"),
        "says what to do: {err}"
    );
    assert!(state.local().is_none());

    let s = state.clone();
    let from_thread = std::thread::spawn(move || s.with(|c| c.get()).is_err())
        .join()
        .unwrap();
    assert!(from_thread, "a plain thread is refused");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let s = state.clone();
    let from_tokio =
        rt.block_on(async move { tokio::spawn(async move { s.with(|c| c.get()).is_err() }).await });
    assert!(from_tokio.unwrap(), "a tokio worker is refused");

    let s = state.clone();
    let on_other = other
        .spawn_on(0, async move {
            (s.with(|c| c.get()).is_err(), s.local().is_none())
        })
        .wait()
        .unwrap();
    assert_eq!(
        on_other,
        (true, true),
        "another executor's shard is refused"
    );

    // On its own shards it works.
    let s = state.clone();
    assert_eq!(
        exec.spawn_on(1, async move { s.with(|c| c.get()) })
            .wait()
            .unwrap()
            .unwrap(),
        5
    );
    other.shutdown().unwrap();
    exec.shutdown().unwrap();
}

/// Each drop: the value's shard and the name of the thread it was dropped on.
type Drops = Arc<Mutex<Vec<(usize, Option<String>)>>>;

/// Records the thread each value is dropped on. The `Rc` makes it `!Send`.
struct DropWitness {
    shard: usize,
    drops: Drops,
    _not_send: Rc<()>,
}

impl Drop for DropWitness {
    fn drop(&mut self) {
        let name = std::thread::current().name().map(str::to_string);
        self.drops.lock().unwrap().push((self.shard, name));
    }
}

fn witnesses(exec: &Executor) -> (ringshard::Sharded<DropWitness>, Drops) {
    let drops = Arc::new(Mutex::new(Vec::new()));
    let d = Arc::clone(&drops);
    let s = exec
        .sharded(move |l| DropWitness {
            shard: l.index(),
            drops: Arc::clone(&d),
            _not_send: Rc::new(()),
        })
        .unwrap();
    (s, drops)
}

fn assert_dropped_on_own_shards(drops: &Mutex<Vec<(usize, Option<String>)>>, n: usize) {
    let mut drops = drops.lock().unwrap().clone();
    drops.sort();
    let want: Vec<(usize, Option<String>)> = (0..n)
        .map(|s| (s, Some(format!("ringshard-{s}"))))
        .collect();
    assert_eq!(
        drops, want,
        "each value dropped once, on its own shard's thread"
    );
}

#[test]
fn values_drop_on_their_shards_when_the_last_handle_drops() {
    let exec = shards(2);
    let (state, drops) = witnesses(&exec);
    let clone = state.clone();
    drop(state);
    assert!(drops.lock().unwrap().is_empty(), "a handle is still alive");
    drop(clone);
    // The removal is a task on each shard, sent before these: once they ran, it ran.
    for s in 0..2 {
        exec.spawn_on(s, async {}).wait().unwrap();
    }
    assert_dropped_on_own_shards(&drops, 2);
    exec.shutdown().unwrap();
    assert_eq!(drops.lock().unwrap().len(), 2, "nothing dropped twice");
}

#[test]
fn values_drop_on_their_shards_at_shutdown() {
    let exec = shards(2);
    let (state, drops) = witnesses(&exec);
    exec.shutdown().unwrap();
    assert_dropped_on_own_shards(&drops, 2);
    // The handle outlives the executor: refused, and dropping it drops nothing again.
    assert!(state.with(|_| ()).is_err());
    drop(state);
    assert_eq!(drops.lock().unwrap().len(), 2);
}
