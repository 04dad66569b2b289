//! Async tasks on the shards: spawning from threads, tokio and other shards' tasks; join, cancel
//! and panic; I/O from tasks (local and routed) in per-file order; timers; fairness. Per-shard
//! state: tests/sharded.rs.

mod executor_util;

use executor_util::*;
use ringshard::{Error, Executor};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn shards(n: usize) -> Executor {
    Executor::builder().shards(n).build().expect("executor")
}

#[test]
fn spawned_from_a_thread_runs_on_its_shard() {
    let exec = shards(2);
    for s in 0..2 {
        let h = exec.spawn_on(s, async move {
            let l = ringshard::local().expect("on a shard");
            (l.index(), std::thread::current().name().map(str::to_string))
        });
        let (index, name) = h.wait().unwrap();
        assert_eq!(index, s);
        assert_eq!(name.as_deref(), Some(format!("ringshard-{s}").as_str()));
    }
    assert!(ringshard::local().is_none(), "not on a shard here");
    exec.shutdown().unwrap();
}

#[test]
fn spawned_and_awaited_from_tokio() {
    let exec = Arc::new(shards(2));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let e = Arc::clone(&exec);
    let sum = rt.block_on(async move {
        let hs: Vec<_> = (0..8u64)
            .map(|i| e.spawn_on((i % 2) as usize, async move { i * 2 }))
            .collect();
        let mut sum = 0;
        for h in hs {
            sum += h.await.unwrap();
        }
        sum
    });
    assert_eq!(sum, 56);
    exec.shutdown().unwrap();
}

#[test]
fn spawned_from_another_shards_task_and_awaited_there() {
    let exec = shards(2);
    let h = exec.spawn_on(0, async move {
        let l = ringshard::local().expect("on shard 0");
        let inner = l.spawn_on(1, async { ringshard::local().map(|l| l.index()) });
        let got = inner.await.unwrap();
        (l.index(), got)
    });
    assert_eq!(h.wait().unwrap(), (0, Some(1)));
    exec.shutdown().unwrap();
}

#[test]
fn a_panic_fails_only_its_task() {
    let _quiet = QuietShardPanics::install();
    let exec = shards(1);
    let h = exec.spawn_on(0, async { panic!("boom in a task") });
    match h.wait() {
        Err(Error::TaskPanicked { shard: 0, message }) => {
            assert!(message.contains("boom in a task"), "{message}")
        }
        other => panic!("expected TaskPanicked, got {other:?}"),
    }
    // The shard goes on.
    assert_eq!(exec.spawn_on(0, async { 7 }).wait().unwrap(), 7);
    exec.shutdown().unwrap();
}

/// Sets its flag when dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn cancel_and_drop_stop_the_task_and_detach_does_not() {
    let exec = shards(1);
    let polls = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let (p, d) = (Arc::clone(&polls), Arc::clone(&dropped));
    let h = exec.spawn_on(0, async move {
        let _flag = DropFlag(d);
        loop {
            p.fetch_add(1, Ordering::SeqCst);
            ringshard::yield_now().await;
        }
    });
    eventually("the task runs", HANG, || polls.load(Ordering::SeqCst) > 10);
    h.cancel();
    eventually("the future is dropped", HANG, || {
        dropped.load(Ordering::SeqCst)
    });
    let at = polls.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(polls.load(Ordering::SeqCst), at, "no poll after cancel");

    // Dropping the handle cancels too.
    let dropped = Arc::new(AtomicBool::new(false));
    // The flag is made here: the task may be cancelled before its first poll.
    let flag = DropFlag(Arc::clone(&dropped));
    drop(exec.spawn_on(0, async move {
        let _flag = flag;
        std::future::pending::<()>().await
    }));
    eventually("dropped handle cancels", HANG, || {
        dropped.load(Ordering::SeqCst)
    });

    // A detached task runs to its end.
    let done = Arc::new(AtomicBool::new(false));
    let d = Arc::clone(&done);
    exec.spawn_on(0, async move {
        ringshard::yield_now().await;
        d.store(true, Ordering::SeqCst);
    })
    .detach();
    eventually("the detached task ends", HANG, || {
        done.load(Ordering::SeqCst)
    });
    exec.shutdown().unwrap();
}

#[test]
fn waiting_on_the_tasks_own_shard_would_deadlock() {
    let exec = Arc::new(shards(1));
    let e = Arc::clone(&exec);
    let got = ok(
        exec.submit_to(0, move |_| {
            let h = e.spawn_on(0, async { 1 });
            h.wait()
        }),
        "submit_to",
    );
    assert!(
        matches!(got, Err(Error::WouldDeadlock { shard: 0, .. })),
        "{got:?}"
    );
    exec.shutdown().unwrap();
}

#[test]
fn not_send_futures_run_on_their_shard() {
    let exec = shards(2);
    let h = exec.spawn_on_with(1, |l| async move {
        let counter = std::rc::Rc::new(std::cell::Cell::new(0));
        let c = std::rc::Rc::clone(&counter);
        let inner = l.spawn_local(async move {
            c.set(c.get() + 1);
            ringshard::yield_now().await;
            c.set(c.get() + 1);
        });
        inner.await.unwrap();
        (l.index(), counter.get())
    });
    assert_eq!(h.wait().unwrap(), (1, 2));
    exec.shutdown().unwrap();
}

#[test]
fn shutdown_ends_pending_tasks_with_an_error() {
    let exec = shards(1);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let h = exec.spawn_on(0, async move {
        let l = ringshard::local().unwrap();
        started_tx.send(()).unwrap();
        l.sleep(Duration::from_secs(3600)).await;
    });
    started_rx.recv_timeout(HANG).expect("the task started");
    exec.shutdown().unwrap();
    let got = h.wait();
    assert!(matches!(got, Err(Error::Shutdown)), "{got:?}");
    // Spawning after shutdown fails at once.
    assert!(matches!(
        exec.spawn_on(0, async {}).wait(),
        Err(Error::Shutdown)
    ));
}

#[test]
fn a_bad_shard_index_is_an_error() {
    let exec = shards(1);
    assert!(matches!(
        exec.spawn_on(5, async {}).wait(),
        Err(Error::InvalidArgument { .. })
    ));
    exec.shutdown().unwrap();
}

// ---------------------------------------------------------------------------------------------
// I/O from tasks

#[test]
fn local_io_keeps_per_file_order_and_counts_in_stats() {
    let exec = shards(2);
    let dir = tempfile::tempdir().unwrap();
    let files = files_on_every_shard(&exec, dir.path(), "f", 1, 64);
    let mut handles = Vec::new();
    for (_, f) in &files {
        let f = f.clone();
        let owner = f.shard();
        handles.push(exec.spawn_on_owner(&f.clone(), async move {
            let l = ringshard::local().unwrap();
            assert!(l.owns(&f));
            // Issued without awaiting: per-file order makes each read see the write before it.
            let mut pending = Vec::new();
            for i in 0..32u8 {
                let w = l.write(&f, 0, vec![i; 512]);
                let r = l.read(&f, 0, 512);
                pending.push((i, w, r));
            }
            for (i, w, r) in pending {
                assert_eq!(w.await.unwrap(), 512);
                assert_eq!(r.await.unwrap(), vec![i; 512], "read after write {i}");
            }
            l.fsync(&f).await.unwrap();
            assert_eq!(l.size(&f).await.unwrap(), 512);
            owner
        }));
    }
    for h in handles {
        h.wait().unwrap();
    }
    let st = exec.stats();
    assert!(st.total.ops(ringshard::OpKind::Read) >= 64, "{st}");
    assert!(st.total.task_polls > 0);
    exec.shutdown().unwrap();
}

#[test]
fn cross_shard_io_from_a_task_is_routed_and_ordered() {
    let exec = shards(2);
    let dir = tempfile::tempdir().unwrap();
    let files = files_on_every_shard(&exec, dir.path(), "g", 1, 64);
    let remote = files
        .iter()
        .find(|(_, f)| f.shard() == 1)
        .unwrap()
        .1
        .clone();
    let h = exec.spawn_on(0, async move {
        let l = ringshard::local().unwrap();
        assert!(!l.owns(&remote));
        let mut pending = Vec::new();
        for i in 0..16u8 {
            let w = l.write(&remote, 4096, vec![i; 100]);
            let r = l.read(&remote, 4096, 100);
            pending.push((i, w, r));
        }
        for (i, w, r) in pending {
            w.await.unwrap();
            assert_eq!(r.await.unwrap(), vec![i; 100]);
        }
        true
    });
    assert!(h.wait().unwrap());
    exec.shutdown().unwrap();
}

#[test]
fn executor_calls_from_a_task_on_its_own_shard_work_too() {
    let exec = Arc::new(shards(1));
    let dir = tempfile::tempdir().unwrap();
    let f = open_rwc(&exec, &dir.path().join("x"));
    let e = Arc::clone(&exec);
    let h = exec.spawn_on(0, async move {
        e.write(&f, 0, b"abc".to_vec()).await.unwrap();
        e.read(&f, 0, 3).await.unwrap()
    });
    assert_eq!(h.wait().unwrap(), b"abc");
    exec.shutdown().unwrap();
}

// ---------------------------------------------------------------------------------------------
// One order for every path from a shard's own thread
//
// On a shard's thread, single requests, batches, session flushes and the close of a dropped
// handle all reach the shard's admission in the order they were made (before, single requests
// went through a thread-local queue and the rest through the inbox, admitted in no common order).

/// What the file at `path` holds.
fn contents(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).expect("read the file")
}

#[test]
fn a_batch_then_a_write_from_a_task_land_in_that_order() {
    let exec = Arc::new(shards(1));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let f = open_rwc(&exec, &path);
    let e = Arc::clone(&exec);
    let h = exec.spawn_on(0, async move {
        let mut b = e.batch();
        let wb = b.write(&f, 0, b"B".to_vec());
        b.submit();
        let wa = e.write(&f, 0, b"A".to_vec());
        (wb.await, wa.await)
    });
    let (wb, wa) = h.wait().unwrap();
    assert_eq!((wb, wa), (Ok(1), Ok(1)));
    assert_eq!(contents(&path), b"A", "the later write landed first");
    exec.shutdown().unwrap();
}

#[test]
fn a_session_flush_then_a_write_from_a_task_land_in_that_order() {
    let exec = Arc::new(shards(1));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let f = open_rwc(&exec, &path);
    let e = Arc::clone(&exec);
    let h = exec.spawn_on(0, async move {
        let mut s = e.session();
        s.write(&f, 0, b"S".to_vec(), 7).unwrap();
        s.flush();
        let w = e.write(&f, 0, b"P".to_vec()).await;
        let mut done = Vec::new();
        while s.in_flight() > 0 {
            s.next(&mut done).await;
        }
        (done.pop().map(|d| (d.token, d.result)), w)
    });
    let (session, w) = h.wait().unwrap();
    assert_eq!(session, Some((7, Ok(1))));
    assert_eq!(w, Ok(1));
    assert_eq!(contents(&path), b"P", "the later write landed first");
    exec.shutdown().unwrap();
}

/// Whether a descriptor of this process names `path`.
fn is_open(path: &std::path::Path) -> bool {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == path))
}

#[test]
fn a_write_then_dropping_the_last_handle_in_submit_to_closes_after_the_write() {
    let exec = Arc::new(shards(1));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let f = open_rwc(&exec, &path);
    assert!(is_open(&path));
    let e = Arc::clone(&exec);
    let write = ok(
        exec.submit_to(0, move |_| {
            let w = e.write(&f, 0, b"W".to_vec());
            drop(f); // the last handle: its close goes after the write
            w
        }),
        "submit_to",
    );
    assert_eq!(wait(write), Ok(1), "the write before the close");
    assert_eq!(contents(&path), b"W");
    eventually("the file is closed", HANG, || !is_open(&path));
    exec.shutdown().unwrap();
}

/// What a closure sent to its own shard and the shard never handled (it died right after)
/// fails, whatever its kind: nothing hangs.
#[test]
fn what_a_closure_left_queued_fails_when_its_shard_dies() {
    let exec = Arc::new(shards(1));
    let dir = tempfile::tempdir().unwrap();
    let f = open_rwc(&exec, &dir.path().join("f"));
    // A closure that holds the shard until the gate opens, so the next two reach its inbox
    // meanwhile and run in one turn: the one that sends, then the one that kills the shard
    // (before the shard's next turn could handle what the first sent).
    let (open_gate, gate) = std::sync::mpsc::channel::<()>();
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    let blocker = exec.submit_to(0, move |_| {
        let _ = started_tx.send(());
        let _ = gate.recv();
    });
    started
        .recv_timeout(HANG)
        .expect("the blocking closure runs");
    let e = Arc::clone(&exec);
    let sender = exec.submit_to(0, move |_| {
        let w = e.write(&f, 0, b"w".to_vec());
        let mut b = e.batch();
        let bw = b.write(&f, 1, b"b".to_vec());
        b.submit();
        let md = e.metadata(&f);
        let mut s = e.session();
        s.write(&f, 2, b"s".to_vec(), 9).unwrap();
        s.flush();
        (w, bw, md, s)
    });
    let kill = exec.kill_shard_for_tests(0, Duration::ZERO);
    open_gate.send(()).unwrap();
    ok(blocker, "the blocking closure");
    let (w, bw, md, mut s) = ok(sender, "the sending closure");
    assert!(wait(kill).is_err());
    for (what, e) in [
        ("write", wait(w).err()),
        ("batched write", wait(bw).err()),
        ("metadata", wait(md).err()),
    ] {
        let e = e.unwrap_or_else(|| panic!("{what} succeeded on a shard that died first"));
        assert!(is_shard_failed(&e, 0), "{what}: {e:?}");
    }
    let mut done = Vec::new();
    s.wait_timeout(1, HANG, &mut done).unwrap();
    assert_eq!(done.len(), 1, "the session's write");
    let e = done[0].result.clone().unwrap_err();
    assert!(is_shard_failed(&e, 0), "session write: {e:?}");
    assert!(exec.shutdown().is_err(), "shutdown reports the dead shard");
}

// ---------------------------------------------------------------------------------------------
// Timers

/// Sleeps fire in the order of their deadlines, and never early. A sleep's deadline is taken when
/// it is made; the shard arms the sleeps in the order they were first polled, each for the time
/// it has left then. Here they are made and polled longest first (each in a task of its own,
/// polled in spawn order), so each later one, with an earlier deadline, also has less time left
/// when armed: it fires first, however slow the machine. A thread preempted for long between two
/// `sleep` calls can push the later deadline past the earlier one: only pairs whose deadlines are
/// certainly in that order (bounds read around each call) have their order checked; normally
/// that is every pair.
#[test]
fn sleeps_fire_in_order_and_not_early() {
    const MS: [u64; 4] = [160, 120, 80, 40];
    let exec = shards(1);
    let h = exec.spawn_on_with(0, |l| async move {
        let order = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut hs = Vec::new();
        for ms in MS {
            let o = std::rc::Rc::clone(&order);
            let l2 = l.clone();
            hs.push(l.spawn_local(async move {
                let d = Duration::from_millis(ms);
                let before = Instant::now();
                let nap = l2.sleep(d);
                let after = Instant::now();
                nap.await;
                let fired = Instant::now();
                o.borrow_mut().push(ms);
                // The deadline lies between these two; the sleep fired at `fired`.
                (before + d, after + d, fired)
            }));
        }
        let mut out = Vec::new();
        for h in hs {
            out.push(h.await.unwrap());
        }
        let order = order.borrow().clone();
        (order, out)
    });
    let (order, out) = h.wait().unwrap();
    let pos = |ms: u64| order.iter().position(|&m| m == ms).unwrap();
    let mut checked = 0;
    for (i, &(earliest, _, fired)) in out.iter().enumerate() {
        assert!(
            fired >= earliest,
            "the {} ms sleep fired {:?} before its deadline",
            MS[i],
            earliest - fired
        );
        for (j, &(_, latest_j, _)) in out.iter().enumerate().skip(i + 1) {
            if latest_j < earliest {
                assert!(
                    pos(MS[j]) < pos(MS[i]),
                    "the {} ms sleep, made after the {} ms one, fired after it: {order:?}",
                    MS[j],
                    MS[i]
                );
                checked += 1;
            }
        }
    }
    println!("sleeps fired in the order {order:?}; {checked} of 6 pairs certainly ordered");
    exec.shutdown().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Fairness

/// Tasks that never wait saturate the shard (they only yield); routed reads still complete with
/// a bounded p99, and a task that hogs the thread shows in `slow_task_polls`.
#[test]
fn routed_reads_stay_fast_while_tasks_saturate_the_shard() {
    let _g = serial();
    let exec = shards(1);
    let dir = tempfile::tempdir().unwrap();
    let f = open_rwc(&exec, &dir.path().join("r"));
    ok(exec.write(&f, 0, vec![1u8; 4096]), "write");
    let stop = Arc::new(AtomicBool::new(false));
    let mut hogs = Vec::new();
    for _ in 0..8 {
        let s = Arc::clone(&stop);
        hogs.push(exec.spawn_on(0, async move {
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                // ~50 µs of work per poll.
                let t = Instant::now();
                while t.elapsed() < Duration::from_micros(50) {
                    n = n.wrapping_add(1);
                }
                ringshard::yield_now().await;
            }
            n
        }));
    }
    let mut lat = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        ok(exec.read(&f, 0, 4096), "read");
        lat.push(t.elapsed());
    }
    lat.sort();
    let p99 = lat[lat.len() * 99 / 100];
    println!(
        "routed read latency under 8 saturating tasks: p50 {:?}, p99 {:?}",
        lat[lat.len() / 2],
        p99
    );
    // A turn polls tasks for ~0.5 ms at most (a read needs two or three turns): a few ms on an
    // idle machine. The bound only catches starvation (reads waiting for the tasks to end): a
    // timing on a loaded, shared machine proves nothing finer.
    assert!(p99 < Duration::from_secs(5), "p99 {p99:?}");

    // A task that does not yield for 30 ms is counted.
    exec.spawn_on(0, async {
        std::thread::sleep(Duration::from_millis(30));
    })
    .wait()
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for h in hogs {
        h.wait().unwrap();
    }
    assert!(exec.stats().total.slow_task_polls >= 1);
    exec.shutdown().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Per-shard state

/// Opens `path` with O_DIRECT, or says why the test is skipped (tmpfs and some filesystems
/// refuse it).
fn open_direct(exec: &Executor, path: &std::path::Path) -> Option<ringshard::File> {
    let mut o = rwc();
    o.direct(true);
    match exec.open(path, &o).wait() {
        Ok(f) => Some(f),
        Err(e) => {
            println!("SKIPPED: O_DIRECT not available here: {e}");
            None
        }
    }
}

/// O_DIRECT from a task goes through the shard's registered pool (READ_FIXED / WRITE_FIXED), in
/// per-file order, and every buffer is back in the pool afterwards.
#[test]
fn o_direct_from_a_task_uses_the_shards_pool() {
    let exec = Executor::builder()
        .shards(1)
        .buffer_size(8192)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let Some(f) = open_direct(&exec, &dir.path().join("d")) else {
        return;
    };
    let before = exec.stats().total.pool.acquisitions;
    let h = exec.spawn_on_owner(&f.clone(), async move {
        let l = ringshard::local().unwrap();
        let mut pending = Vec::new();
        for i in 0..8u8 {
            // 12 KiB: two chunks of the 8 KiB buffers (4 KiB-aligned).
            let w = l.write(&f, 0, vec![i; 12288]);
            let r = l.read(&f, 0, 12288);
            pending.push((i, w, r));
        }
        for (i, w, r) in pending {
            assert_eq!(w.await.unwrap(), 12288);
            assert_eq!(r.await.unwrap(), vec![i; 12288], "read after write {i}");
        }
    });
    h.wait().unwrap();
    let pool = exec.stats().total.pool;
    assert!(pool.acquisitions >= before + 32, "{pool:?}");
    assert_eq!(pool.available_count, pool.total_count, "{pool:?}");
    exec.shutdown().unwrap();
}

/// A pooled read hands the task the pool buffer itself: the data is right, a held buffer is never
/// reused by later reads, it goes back to the pool when the guard is dropped, and misuse (a file
/// without O_DIRECT, more than one buffer) is an error.
#[test]
fn pooled_reads_lend_the_buffer_until_the_guard_drops() {
    let exec = Executor::builder()
        .shards(1)
        .buffer_size(8192)
        .buffer_count(4)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let Some(f) = open_direct(&exec, &dir.path().join("p")) else {
        return;
    };
    let plain = open_rwc(&exec, &dir.path().join("plain"));
    let h = exec.spawn_on_with(0, move |l| async move {
        l.write(&f, 0, vec![1u8; 4096]).await.unwrap();
        l.write(&f, 4096, vec![2u8; 4096]).await.unwrap();
        let a = l.read_pooled(&f, 0, 4096).await.unwrap();
        assert_eq!(&a[..], &[1u8; 4096][..]);
        // Three more reads while `a` is held: none may land in a's buffer.
        for _ in 0..3 {
            let b = l.read_pooled(&f, 4096, 4096).await.unwrap();
            assert_ne!(b.buffer_index(), a.buffer_index());
            assert_eq!(&b[..], &[2u8; 4096][..]);
            assert_eq!(&a[..], &[1u8; 4096][..], "a held buffer is never reused");
        }
        // A short read at end of file.
        let c = l.read_pooled(&f, 8192, 4096).await.unwrap();
        assert!(c.is_empty());
        drop((a, c));
        let too_big = l.read_pooled(&f, 0, 16384).await;
        assert!(
            matches!(too_big, Err(Error::InvalidArgument { .. })),
            "{too_big:?}"
        );
        let not_direct = l.read_pooled(&plain, 0, 4096).await;
        assert!(
            matches!(not_direct, Err(Error::InvalidArgument { .. })),
            "{not_direct:?}"
        );
        // Let the shard take the buffers back.
        ringshard::yield_now().await;
        true
    });
    assert!(h.wait().unwrap());
    eventually("every buffer back in the pool", HANG, || {
        let p = exec.stats().total.pool;
        p.available_count == p.total_count
    });
    exec.shutdown().unwrap();
}

/// Every buffer a pool hands out now (released again).
fn all_acquirable(pool: &mut ringshard::RegisteredBufferPool) -> Vec<u16> {
    let mut got = Vec::new();
    while let Some((j, _)) = pool.try_acquire() {
        got.push(j);
    }
    for &j in &got {
        pool.release(j);
    }
    got
}

/// A pooled read's buffer is lent to the task: while the task holds its `PoolBuf` (and a slice of
/// it) across an await, a `submit_to` closure on that shard (closures run while tasks wait) can
/// neither write into it (`get_mut`), read it (`get`), nor release it (`try_release`): each is a
/// `BufferState` error, `acquire` never hands it out, and the task's bytes stay as read. (Before,
/// all three succeeded: a release put it back in the free list, and the next O_DIRECT read landed
/// in the bytes the task was reading.) Once the guard drops, the buffer is the pool's again.
#[test]
fn a_lent_buffer_is_out_of_reach_of_submit_to_until_the_guard_drops() {
    let exec = Executor::builder()
        .shards(1)
        .buffer_size(4096)
        .buffer_count(3)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let Some(f) = open_direct(&exec, &dir.path().join("lent")) else {
        return;
    };
    let want: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    assert_eq!(ok(exec.write(&f, 0, want.clone()), "write"), 4096);

    let (idx_tx, idx_rx) = std::sync::mpsc::channel();
    let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
    let (g, w) = (f.clone(), want.clone());
    let task = exec.spawn_on_with(0, move |l| async move {
        let buf = l.read_pooled(&g, 0, 4096).await.unwrap();
        let held: &[u8] = &buf;
        assert_eq!(held, &w[..], "the pooled read");
        idx_tx.send(buf.buffer_index()).unwrap();
        // Parked here (nothing in flight) while the test's closure runs on the shard.
        gate_rx.await.unwrap();
        let intact = held == &w[..];
        drop(buf);
        intact
    });
    let idx = idx_rx.recv_timeout(HANG).expect("the task's pooled read");

    let (write, read, release, handed_out, stats) = exec
        .submit_to(0, move |ctx| {
            let pool = ctx.pool();
            let write = pool.get_mut(idx).map(|b| b.fill(0xEE));
            let read = pool.get(idx).map(|b| b[0]);
            let release = pool.try_release(idx);
            (write, read, release, all_acquirable(pool), pool.stats())
        })
        .wait()
        .unwrap();
    for (what, r) in [("get_mut", write.map(|_| ())), ("get", read.map(|_| ()))] {
        match r {
            Err(Error::BufferState { index, state, .. }) => {
                assert_eq!(index, idx);
                assert!(state.contains("lent"), "{what}: {state}");
            }
            other => panic!("{what} of a lent buffer: {other:?}"),
        }
    }
    assert!(
        matches!(release, Err(Error::BufferState { index, .. }) if index == idx),
        "release of a lent buffer: {release:?}"
    );
    assert!(
        !handed_out.contains(&idx),
        "{handed_out:?} includes the lent buffer {idx}"
    );
    assert_eq!(handed_out.len(), 2);
    assert_eq!(
        (stats.lent_count, stats.available_count),
        (1, 2),
        "{stats:?}"
    );

    gate_tx.send(()).unwrap();
    assert!(task.wait().unwrap(), "the task's bytes changed under it");

    // The guard is dropped: the buffer is back (taken back in the batch the task ended in, before
    // any later closure runs).
    let (handed_out, stats) = exec
        .submit_to(0, |ctx| (all_acquirable(ctx.pool()), ctx.pool().stats()))
        .wait()
        .unwrap();
    assert!(handed_out.contains(&idx), "{handed_out:?} lacks {idx}");
    assert_eq!(
        (stats.lent_count, stats.available_count),
        (0, 3),
        "{stats:?}"
    );
    assert_eq!(
        (stats.misuse_bad_state, stats.misuse_total()),
        (1, 1),
        "only the refused release counts as misuse: {stats:?}"
    );
    exec.shutdown().unwrap();
}

/// Task sleeps do not hold back `submit_to` closures (which need a ring with nothing in flight):
/// the sleeps are taken out of the ring for the closure and put back with the time they had
/// left, so they still fire, and not early.
#[test]
fn sleeping_tasks_do_not_hold_back_submit_to() {
    let exec = shards(1);
    // Each task says when it is about to sleep: its sleep is armed at the end of that turn, before
    // the shard reads the submit_to sent after both messages.
    let (asleep_tx, asleep_rx) = std::sync::mpsc::channel();
    let tx = asleep_tx.clone();
    let long = exec.spawn_on(0, async move {
        let nap = ringshard::local().unwrap().sleep(Duration::from_secs(3600));
        tx.send(()).unwrap();
        nap.await
    });
    let start = Instant::now();
    let short = exec.spawn_on(0, async move {
        let nap = ringshard::local()
            .unwrap()
            .sleep(Duration::from_millis(150));
        asleep_tx.send(()).unwrap();
        nap.await;
        start.elapsed()
    });
    for _ in 0..2 {
        asleep_rx.recv_timeout(HANG).expect("a task about to sleep");
    }
    let t = Instant::now();
    let mut c = exec.submit_to(0, |_| 42);
    assert_eq!(c.wait_timeout(Duration::from_secs(10)), Ok(42));
    println!("submit_to behind two sleeps took {:?}", t.elapsed());
    let slept = short.wait().unwrap();
    assert!(slept >= Duration::from_millis(150), "woke after {slept:?}");
    assert!(!long.is_finished(), "the long sleep is still sleeping");
    drop(long);
    exec.shutdown().unwrap();
}

/// The usual timeout pattern, `select(sleep(60 s), read)`, thousands of times: each dropped sleep
/// is taken out of the ring (TIMEOUT_REMOVE), so the shard's completion queue does not fill with
/// sleeps nobody waits for and its I/O keeps flowing (before, after a few hundred the shard
/// stopped issuing until the sleeps expired).
#[test]
fn dropped_sleeps_leave_the_ring() {
    let exec = shards(1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    std::fs::write(&path, vec![7u8; 4096]).unwrap();
    let f = ok(
        exec.open(&path, ringshard::OpenOptions::new().read(true)),
        "open",
    );
    let start = Instant::now();
    let h = exec.spawn_on_with(0, move |l| async move {
        use futures::future::{select, Either};
        let mut reads = 0;
        for _ in 0..3000 {
            let nap = Box::pin(l.sleep(Duration::from_secs(60)));
            let read = Box::pin(l.read(&f, 0, 4096));
            match select(read, nap).await {
                Either::Left((r, _nap)) => {
                    assert_eq!(r.unwrap().len(), 4096);
                    reads += 1;
                }
                Either::Right(_) => panic!("a 60 s sleep fired"),
            }
        }
        reads
    });
    let reads = loop {
        if h.is_finished() {
            break h.wait().unwrap();
        }
        assert!(
            start.elapsed() < HANG,
            "3000 reads with a dropped sleep each did not finish in {HANG:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(reads, 3000);
    // Shutdown does not wait for 60 s sleeps either.
    let t = Instant::now();
    exec.shutdown().unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}
