//! The task-local read path (src/shard/task_io.rs): reads made by tasks on their own shard's
//! files keep per-file order with writes of the same task and of other threads, are cancelled by
//! dropping (or cancelling) their handle while in the kernel and by deadlines, and are counted in
//! the statistics like every read. Real rings (or the threads backend with
//! RINGSHARD_BACKEND=threads), real files and FIFOs.

mod executor_util;

use executor_util::*;
use ringshard::{Error, Executor, OpKind};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

const BLOCK: usize = 4096;

/// One shard, inline reads off: a cached read made by a task would otherwise be done on the
/// task's thread with `preadv2` and never reach the path under test.
fn one_shard() -> Arc<Executor> {
    Arc::new(
        Executor::builder()
            .shards(1)
            .inline_read_limit(0)
            .build()
            .expect("executor"),
    )
}

/// Lets the shard end its turn before the task runs again: what the task queued is taken (its
/// SQE pushed and submitted, a write admitted). `yield_now` promises that on a shard.
async fn next_turn() {
    ringshard::yield_now().await
}

/// Polls `fut` once; gives it back if it is still pending.
fn poll_once<F: Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    // why: `Waker::noop` needs Rust 1.85; the crate's rust-version is older.
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = std::task::Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    match Pin::new(fut).poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Waits (bounded by a watchdog, not by a guess of how long it takes) until `cond` holds.
fn wait_until(what: &'static str, mut cond: impl FnMut() -> bool) {
    let _w = Watchdog::new(what, Duration::from_secs(30));
    while !cond() {
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn reads_before_a_write_of_the_same_task_see_the_old_data_and_reads_after_it_the_new() {
    let exec = one_shard();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, vec![0u8; 8 * BLOCK]).unwrap();
    let f = open_rwc(&exec, &path);
    let h = exec.spawn_on_owner(&f.clone(), async move {
        let l = ringshard::local().expect("on a shard");
        for i in 1..=200u32 {
            let block = (i as usize % 8) as u64 * BLOCK as u64;
            let old = ((i as usize).saturating_sub(8)) as u8;
            // Issued in one poll, nothing awaited: the reads go to the ring at once, the write
            // must wait for them (it overlaps), the last read for the write.
            let before: Vec<_> = (0..8).map(|_| l.read(&f, block, BLOCK)).collect();
            let w = l.write(&f, block, vec![i as u8; BLOCK]);
            let after = l.read(&f, block, BLOCK);
            for r in before {
                assert_eq!(r.await.unwrap(), vec![old; BLOCK], "read before write {i}");
            }
            assert_eq!(w.await.unwrap(), BLOCK);
            assert_eq!(
                after.await.unwrap(),
                vec![i as u8; BLOCK],
                "read after write {i}"
            );
        }
    });
    h.wait().unwrap();
    exec.shutdown().unwrap();
}

#[test]
fn a_write_of_another_thread_is_seen_by_every_read_issued_after_it_completed() {
    let exec = one_shard();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, vec![0u8; 4 * BLOCK]).unwrap();
    let f = open_rwc(&exec, &path);
    // The version whose write has completed (each block holds the version in every byte).
    let published = Arc::new(AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (p, d, tf) = (Arc::clone(&published), Arc::clone(&done), f.clone());
    let reader = exec.spawn_on_owner(&f.clone(), async move {
        let l = ringshard::local().expect("on a shard");
        let mut reads = 0u64;
        while !d.load(Ordering::Acquire) || reads < 1000 {
            let seen = p.load(Ordering::Acquire);
            let pending: Vec<_> = (0..4u64)
                .map(|b| l.read(&tf, b * BLOCK as u64, BLOCK))
                .collect();
            for r in pending {
                let data = r.await.unwrap();
                assert!(
                    data.iter().all(|&x| x == data[0]),
                    "a read saw a torn block"
                );
                assert!(
                    u64::from(data[0]) >= seen,
                    "read {} after version {seen} completed",
                    data[0]
                );
                reads += 1;
            }
        }
        reads
    });
    for v in 1..=250u64 {
        let pending: Vec<_> = (0..4u64)
            .map(|b| exec.write(&f, b * BLOCK as u64, vec![v as u8; BLOCK]))
            .collect();
        for w in pending {
            assert_eq!(w.wait().unwrap(), BLOCK);
        }
        published.store(v, Ordering::Release);
    }
    done.store(true, Ordering::Release);
    assert!(reader.wait().unwrap() >= 1000);
    exec.shutdown().unwrap();
}

#[test]
fn dropping_or_cancelling_a_read_in_the_kernel_cancels_it() {
    let exec = one_shard();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fifo");
    mkfifo(&path);
    let fifo = ok(exec.open(&path, &rw()), "open fifo");
    let before = exec.stats().total;
    let f = fifo.clone();
    // A read of a FIFO nobody writes stays in the kernel: dropped there, it must be cancelled.
    let dropped = exec.spawn_on_owner(&fifo.clone(), async move {
        let l = ringshard::local().expect("on a shard");
        let mut r = l.read(&f, 0, 64);
        assert!(poll_once(&mut r).is_none());
        next_turn().await; // the SQE is in the kernel
        drop(r);
    });
    dropped.wait().unwrap();
    let e = Arc::clone(&exec);
    wait_until("the dropped read's cancellation", move || {
        e.stats().total.cancelled > before.cancelled
    });
    // Cancelled while awaited: the handle gets the error at once.
    let f = fifo.clone();
    let cancelled = exec.spawn_on_owner(&fifo.clone(), async move {
        let l = ringshard::local().expect("on a shard");
        let mut r = l.read(&f, 0, 64);
        assert!(poll_once(&mut r).is_none());
        next_turn().await;
        r.cancel();
        r.await
    });
    match cancelled.wait().unwrap() {
        Err(Error::Cancelled { .. }) => {}
        other => panic!("expected Cancelled, got {other:?}"),
    }
    // Both reads are out of the kernel (no reads left in flight), and the FIFO still works: what
    // is written now is read by the next read, not by a cancelled one.
    let e = Arc::clone(&exec);
    wait_until("both cancellations counted", move || {
        e.stats().total.cancelled >= before.cancelled + 2
    });
    // why: a cancellation is counted (and its caller answered) when the shard pushes the
    // ASYNC_CANCEL; the SQE reaches the kernel at the shard's next submit. A task that sleeps
    // twice spans two loop turns, each ending in a submit, so after it the cancels are in the
    // kernel, which removes a read that waits on a FIFO at once.
    exec.spawn_on_owner(&fifo.clone(), async move {
        next_turn().await;
        next_turn().await;
    })
    .wait()
    .unwrap();
    let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::io::Write::write_all(&mut w, b"hello").unwrap();
    let f = fifo.clone();
    let got = exec
        .spawn_on_owner(&fifo.clone(), async move {
            // why: a read returns short only at end of file, so ask for exactly what was written.
            ringshard::local().expect("on a shard").read(&f, 0, 5).await
        })
        .wait()
        .unwrap()
        .unwrap();
    assert_eq!(got, b"hello");
    let after = exec.stats().total;
    assert!(!after.failed);
    assert_eq!(after.errors, before.errors, "{after:?}");
    exec.shutdown().unwrap();
    // After shutdown every CQE is in, the cancelled reads' too (whenever the kernel answered
    // their ASYNC_CANCEL): its ECANCELED is the cancellation, counted once, never as an error.
    let last = exec.stats().total;
    assert_eq!(last.errors, before.errors, "{last:?}");
    assert_eq!(last.cancelled, before.cancelled + 2, "{last:?}");
    // All three reads took the task-local path: the two were cancelled in the kernel.
    assert_eq!(
        last.task_local_reads - before.task_local_reads,
        3,
        "{last:?}"
    );
}

#[test]
fn a_read_past_its_deadline_fails_and_is_counted() {
    let exec = one_shard();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fifo");
    mkfifo(&path);
    let fifo = ok(exec.open(&path, &rw()), "open fifo");
    let e = Arc::clone(&exec);
    let f = fifo.clone();
    let r = exec
        .spawn_on_owner(&fifo.clone(), async move {
            e.timeout(Duration::from_millis(20)).read(&f, 0, 64).await
        })
        .wait()
        .unwrap();
    assert!(
        matches!(r, Err(Error::DeadlineExceeded { .. })),
        "expected DeadlineExceeded, got {r:?}"
    );
    // The same through the task's own face, `LocalShard::timeout`.
    let f = fifo.clone();
    let r = exec
        .spawn_on_owner(&fifo.clone(), async move {
            let l = ringshard::local().expect("on a shard");
            l.timeout(Duration::from_millis(20)).read(&f, 0, 64).await
        })
        .wait()
        .unwrap();
    assert!(
        matches!(r, Err(Error::DeadlineExceeded { .. })),
        "expected DeadlineExceeded, got {r:?}"
    );
    let e = Arc::clone(&exec);
    wait_until("both deadlines counted", move || {
        e.stats().total.deadline_exceeded >= 2
    });
    exec.shutdown().unwrap();
}

#[test]
fn reads_of_a_task_are_counted_like_every_read() {
    let exec = one_shard();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, vec![7u8; 64 * BLOCK + 100]).unwrap();
    let f = open_rwc(&exec, &path);
    let before = exec.stats().total;
    let h = exec.spawn_on_owner(&f.clone(), async move {
        let l = ringshard::local().expect("on a shard");
        let mut bytes = 0;
        // 64 whole blocks, 32 at a time, then one short read at the end and one past it.
        for half in 0..2u64 {
            let pending: Vec<_> = (0..32u64)
                .map(|b| l.read(&f, (half * 32 + b) * BLOCK as u64, BLOCK))
                .collect();
            for r in pending {
                let d = r.await.unwrap();
                assert_eq!(d, vec![7u8; BLOCK]);
                bytes += d.len();
            }
        }
        let tail = l.read(&f, 64 * BLOCK as u64, BLOCK).await.unwrap();
        assert_eq!(tail.len(), 100);
        let past = l.read(&f, 65 * BLOCK as u64, BLOCK).await.unwrap();
        assert!(past.is_empty());
        bytes + tail.len()
    });
    assert_eq!(h.wait().unwrap(), 64 * BLOCK + 100);
    let st = exec.stats().total;
    assert_eq!(
        st.ops(OpKind::Read) - before.ops(OpKind::Read),
        66,
        "{st:?}"
    );
    assert_eq!(st.bytes_read - before.bytes_read, (64 * BLOCK + 100) as u64);
    assert_eq!(st.errors, before.errors);
    // Every one of them took the task-local path: the file has nothing else unfinished.
    assert_eq!(st.task_local_reads - before.task_local_reads, 66, "{st:?}");
    exec.shutdown().unwrap();
}

#[test]
fn shutdown_cancels_a_read_left_in_the_kernel() {
    let exec = one_shard();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fifo");
    mkfifo(&path);
    let fifo = ok(exec.open(&path, &rw()), "open fifo");
    let f = fifo.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = exec.spawn_on_owner(&fifo.clone(), async move {
        let l = ringshard::local().expect("on a shard");
        let mut r = l.read(&f, 0, 64);
        assert!(poll_once(&mut r).is_none());
        next_turn().await;
        tx.send(()).unwrap();
        r.await
    });
    rx.recv().unwrap();
    let _w = Watchdog::new(
        "shutdown with a read in the kernel",
        Duration::from_secs(60),
    );
    exec.shutdown().unwrap();
    // The task ends with the read's error, or is dropped with its shard.
    if let Ok(r) = h.wait() {
        assert!(r.is_err(), "{r:?}");
    }
}

/// One shard with inline buffered writes `on` (the default) or off, inline reads off.
fn one_shard_writes(on: bool) -> Arc<Executor> {
    Arc::new(
        Executor::builder()
            .shards(1)
            .inline_read_limit(0)
            .inline_buffered_writes(on)
            .build()
            .expect("executor"),
    )
}

#[test]
fn writes_to_a_file_with_nothing_unfinished_are_written_at_admission_and_counted() {
    for inline in [true, false] {
        let exec = one_shard_writes(inline);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = open_rwc(&exec, &path);
        let before = exec.stats().total;
        // Routed from this thread, then from a task on the file's shard, one at a time: each
        // finds its file with nothing unfinished.
        for i in 0..20u64 {
            let n = exec
                .write(&f, i * BLOCK as u64, vec![i as u8; BLOCK])
                .wait();
            assert_eq!(n.unwrap(), BLOCK);
        }
        let tf = f.clone();
        exec.spawn_on_owner(&f.clone(), async move {
            let l = ringshard::local().expect("on a shard");
            for i in 20..40u64 {
                let n = l.write(&tf, i * BLOCK as u64, vec![i as u8; BLOCK]).await;
                assert_eq!(n.unwrap(), BLOCK);
            }
        })
        .wait()
        .unwrap();
        let st = exec.stats().total;
        assert_eq!(st.ops(OpKind::Write) - before.ops(OpKind::Write), 40);
        assert_eq!(st.bytes_written - before.bytes_written, 40 * BLOCK as u64);
        assert_eq!(st.errors, before.errors, "{st:?}");
        // With inline writes off every write goes through the ring, in order.
        let expected = if inline { 40 } else { 0 };
        assert_eq!(
            st.writes_at_admission - before.writes_at_admission,
            expected,
            "inline_buffered_writes={inline}: {st:?}"
        );
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len(), 40 * BLOCK);
        for (i, block) in data.chunks(BLOCK).enumerate() {
            assert!(block.iter().all(|&b| b == i as u8), "block {i}");
        }
        exec.shutdown().unwrap();
    }
}

#[test]
fn a_write_behind_an_unfinished_read_of_its_file_waits_for_it() {
    // The read is a FIFO's, which stays in the kernel until the test writes into the FIFO; the
    // write is a pwrite of the FIFO, which fails (ESPIPE) when it runs: what matters is when.
    for from_task in [false, true] {
        let exec = one_shard();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        mkfifo(&path);
        let fifo = ok(exec.open(&path, &rw()), "open fifo");
        let other = open_rwc(&exec, &dir.path().join("other"));
        let before = exec.stats().total;
        let (read, mut write) = if from_task {
            // A task's read (the task-local path, no order list entry), then its write.
            let f = fifo.clone();
            exec.spawn_on_owner(&fifo.clone(), async move {
                let l = ringshard::local().expect("on a shard");
                let read = l.read(&f, 0, 5);
                next_turn().await; // the read's SQE is pushed
                let write = l.write(&f, 0, b"x".to_vec());
                next_turn().await; // the write is admitted
                (read, write)
            })
            .wait()
            .unwrap()
        } else {
            (exec.read(&fifo, 0, 5), exec.write(&fifo, 0, b"x".to_vec()))
        };
        // Requests from one thread are admitted in order: once this write to another file is
        // done, the FIFO's write has been admitted.
        exec.write(&other, 0, b"y".to_vec()).wait().unwrap();
        assert!(
            poll_once(&mut write).is_none(),
            "the write ran before the read"
        );
        let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::io::Write::write_all(&mut w, b"hello").unwrap();
        assert_eq!(read.wait().unwrap(), b"hello");
        match write.wait() {
            Err(e) => assert_eq!(e.errno(), Some(libc::ESPIPE), "{e}"),
            Ok(n) => panic!("a pwrite of a FIFO wrote {n} bytes"),
        }
        let st = exec.stats().total;
        // Only the write to the other file found its file with nothing unfinished.
        assert_eq!(
            st.writes_at_admission - before.writes_at_admission,
            1,
            "from_task={from_task}: {st:?}"
        );
        exec.shutdown().unwrap();
    }
}
