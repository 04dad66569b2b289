//! `Executor` lifecycle on real files and rings: shutdown (and drop) with work in flight, and a
//! shard that panics. Every handle must complete (none may hang), with the documented outcome.

mod executor_util;

use executor_util::*;
use ringshard::{Completion, Error, Executor, File, OpKind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const PREFILL: usize = 128 * 1024;

fn pattern(file: usize, i: usize) -> u8 {
    (file * 31 + i * 7 + i / 251) as u8
}

/// At least `per_shard` files on each shard, each prefilled (through std) with a known pattern.
fn prefilled_files(
    exec: &Executor,
    dir: &std::path::Path,
    per_shard: usize,
) -> Vec<(PathBuf, File)> {
    let files = files_on_every_shard(exec, dir, "pf", per_shard, 200);
    for (k, (path, _)) in files.iter().enumerate() {
        let data: Vec<u8> = (0..PREFILL).map(|i| pattern(k, i)).collect();
        std::fs::write(path, data).unwrap();
    }
    files
}

enum Op {
    /// A write of `len` bytes of `byte` at `off` of file `file`.
    Write {
        c: Completion<usize>,
        file: usize,
        off: u64,
        len: usize,
        byte: u8,
    },
    /// A read of the prefilled area.
    Read {
        c: Completion<Vec<u8>>,
        file: usize,
        off: usize,
        len: usize,
    },
}

/// Submits op number `i` (a write to a range of its own past the prefilled area, or a read of the
/// prefilled area) on one of `files`.
fn submit(exec: &Executor, files: &[(PathBuf, File)], i: usize) -> Op {
    let file = i % files.len();
    let f = &files[file].1;
    if i % 3 == 0 {
        let off = (i * 977) % (PREFILL - 40_000);
        let len = 1 + (i * 131) % 40_000;
        Op::Read {
            c: exec.read(f, off as u64, len),
            file,
            off,
            len,
        }
    } else {
        // Each i has its own 20_000-byte slot after the prefilled area.
        let len = 1 + (i * 53) % 20_000;
        let off = (PREFILL + (i / files.len()) * 20_000) as u64;
        let byte = (i % 250) as u8 + 1;
        Op::Write {
            c: exec.write(f, off, vec![byte; len]),
            file,
            off,
            len,
            byte,
        }
    }
}

/// Waits for every op: each must complete (a timeout fails the test); returns (ok, refused)
/// counts, and checks that successful reads saw the prefilled bytes and that successful writes
/// are in the files (read back with std after the executor is gone).
fn settle_all(ops: Vec<Op>, files: &[(PathBuf, File)], must_succeed: usize) -> (usize, usize) {
    let (mut good, mut refused) = (0, 0);
    let mut landed = Vec::new();
    for (i, op) in ops.into_iter().enumerate() {
        let res = match op {
            Op::Write {
                c,
                file,
                off,
                len,
                byte,
            } => wait(c).map(|n| {
                assert_eq!(n, len);
                landed.push((file, off, len, byte));
            }),
            Op::Read { c, file, off, len } => wait(c).map(|got| {
                let want: Vec<u8> = (off..off + len).map(|j| pattern(file, j)).collect();
                assert_bytes_eq(&got, &want, &format!("op {i}: read"));
            }),
        };
        match res {
            Ok(()) => good += 1,
            Err(Error::Shutdown) if i >= must_succeed => refused += 1,
            Err(e) => panic!("op {i} (must succeed: {}): {e:?}", i < must_succeed),
        }
    }
    for (file, off, len, byte) in landed {
        let disk = std::fs::read(&files[file].0).unwrap();
        let end = off as usize + len;
        assert!(
            disk.len() >= end,
            "file {file} too short for a successful write"
        );
        assert!(
            disk[off as usize..end].iter().all(|&b| b == byte),
            "a successful write to file {file} at {off} is not in the file"
        );
    }
    (good, refused)
}

fn small_exec() -> Executor {
    Executor::builder()
        .shards(2)
        .buffer_size(16 * 1024)
        .buffer_count(4)
        .build()
        .expect("executor")
}

#[test]
fn shutdown_from_another_thread_completes_everything_in_flight() {
    let exec = Arc::new(small_exec());
    let dir = tempfile::tempdir().unwrap();
    let files = prefilled_files(&exec, dir.path(), 3);

    // Queued before shutdown starts: all of these must succeed.
    let before: Vec<Op> = (0..400).map(|i| submit(&exec, &files, i)).collect();
    let n_before = before.len();
    // A thread that keeps submitting while shutdown runs: its ops succeed or are refused.
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let (exec, files, stop) = (Arc::clone(&exec), files.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut ops = Vec::new();
            let mut i = 400;
            while !stop.load(Ordering::Relaxed) && ops.len() < 5000 {
                ops.push(submit(&exec, &files, i));
                i += 1;
            }
            ops
        })
    };
    std::thread::sleep(Duration::from_millis(2));
    let closer = {
        let exec = Arc::clone(&exec);
        std::thread::spawn(move || exec.shutdown())
    };
    closer.join().unwrap().expect("shutdown returns Ok");
    stop.store(true, Ordering::Relaxed);
    let raced = racer.join().unwrap();
    println!(
        "{} ops queued before shutdown, {} raced with it",
        n_before,
        raced.len()
    );

    let (good, refused) = settle_all(before, &files, n_before);
    assert_eq!((good, refused), (n_before, 0));
    let (good, refused) = settle_all(raced, &files, 0);
    println!("raced ops: {good} succeeded, {refused} refused with Shutdown");

    // After shutdown everything is refused; shutdown again is fine.
    assert_eq!(
        wait(exec.read(&files[0].1, 0, 1)).unwrap_err(),
        Error::Shutdown
    );
    exec.shutdown().expect("second shutdown");
}

#[test]
fn drop_completes_everything_in_flight() {
    let exec = small_exec();
    let dir = tempfile::tempdir().unwrap();
    let files = prefilled_files(&exec, dir.path(), 3);
    let ops: Vec<Op> = (0..500).map(|i| submit(&exec, &files, i)).collect();
    let n = ops.len();
    // Dropped on another thread, with everything still in flight.
    std::thread::spawn(move || drop(exec)).join().unwrap();
    let (good, refused) = settle_all(ops, &files, n);
    assert_eq!((good, refused), (n, 0));
}

/// Many short-lived executors shut down while other threads keep submitting: no handle may be
/// left without a result (a request that slips into a shard's inbox just as the shard exits must
/// still be failed, not stranded).
#[test]
fn shutdown_races_with_submitters_without_stranding_requests() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..30 {
        let exec = Arc::new(
            Executor::builder()
                .shards(1)
                .buffer_size(4096)
                .buffer_count(4)
                .spin(Duration::ZERO)
                .build()
                .expect("executor"),
        );
        let f = open_rwc(&exec, &dir.path().join(format!("race{round}")));
        let submitters: Vec<_> = (0..2)
            .map(|t| {
                let (exec, f) = (Arc::clone(&exec), f.clone());
                std::thread::spawn(move || {
                    let mut handles: Vec<Completion<usize>> = Vec::new();
                    loop {
                        let mut c = exec.write(&f, t * 100, vec![t as u8; 10]);
                        match c.try_take() {
                            // Refused: the executor is closed.
                            Some(Err(Error::Shutdown)) => break,
                            Some(Ok(10)) => continue,
                            Some(other) => panic!("submitter {t}: {other:?}"),
                            None => handles.push(c),
                        }
                        // Keep a bounded number in flight: wait for every 16th.
                        if handles.len() % 16 == 0 {
                            let mut last = handles.pop().unwrap();
                            match last.wait_timeout(Duration::from_secs(10)) {
                                Ok(10) => {}
                                Err(Error::Shutdown) => break,
                                other => panic!("submitter {t}: {other:?}"),
                            }
                        }
                        if handles.len() > 20_000 {
                            break;
                        }
                    }
                    handles
                })
            })
            .collect();
        std::thread::sleep(Duration::from_micros(300 + 100 * round as u64));
        exec.shutdown().expect("shutdown");
        for s in submitters {
            for (i, mut c) in s.join().unwrap().into_iter().enumerate() {
                match c.wait_timeout(Duration::from_secs(10)) {
                    Ok(10) | Err(Error::Shutdown) => {}
                    Err(Error::Timeout) => {
                        panic!("round {round}: request {i} never completed after shutdown")
                    }
                    other => panic!("round {round}: request {i}: {other:?}"),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A shard that panics
// ---------------------------------------------------------------------------------------------

#[test]
fn a_panicking_shard_fails_its_work_and_the_other_goes_on() {
    let _quiet = QuietShardPanics::install();
    // Reads must be pending on the dying shard: none is served on this thread.
    let exec = Executor::builder()
        .shards(2)
        .buffer_size(16 * 1024)
        .buffer_count(4)
        .inline_reads(false)
        .build()
        .expect("executor");
    let dir = tempfile::tempdir().unwrap();
    let files = files_on_every_shard(&exec, dir.path(), "p", 2, 200);
    let f0 = files
        .iter()
        .find(|(_, f)| f.shard() == 0)
        .unwrap()
        .1
        .clone();
    let (p1, f1) = files.iter().find(|(_, f)| f.shard() == 1).unwrap().clone();

    // Work done before the panic is fine.
    assert_eq!(ok(exec.write(&f0, 0, vec![5u8; 50_000]), "write"), 50_000);
    assert_eq!(ok(exec.write(&f1, 0, vec![6u8; 50_000]), "write"), 50_000);

    let task = exec.kill_shard_for_tests(0, Duration::from_millis(150));
    // Submitted while the task runs: pending on the shard that is about to die.
    let reads: Vec<_> = (0..30u64).map(|i| exec.read(&f0, i * 200, 100)).collect();
    let writes: Vec<_> = (0..30u64)
        .map(|i| exec.write(&f0, i * 200 + 100, vec![1u8; 100]))
        .collect();
    // Shard 1 keeps working meanwhile.
    assert_eq!(ok(exec.read(&f1, 0, 10), "read on shard 1"), vec![6u8; 10]);

    let e = wait(task).unwrap_err();
    assert!(is_shard_failed(&e, 0), "task: {e:?}");
    let failed = reads
        .into_iter()
        .map(|r| wait(r).map(|_| ()))
        .chain(writes.into_iter().map(|w| wait(w).map(|_| ())));
    for (i, r) in failed.enumerate() {
        let e = r.unwrap_err();
        assert!(is_shard_failed(&e, 0), "pending op {i}: {e:?}");
        assert!(e.is_fatal());
    }
    // New work for shard 0 fails at once.
    for e in [
        wait(exec.read(&f0, 0, 1)).map(|_| ()).unwrap_err(),
        wait(exec.write(&f0, 0, vec![1u8])).map(|_| ()).unwrap_err(),
        wait(exec.fsync(&f0)).unwrap_err(),
        wait(exec.submit_to(0, |_| ())).unwrap_err(),
    ] {
        assert!(is_shard_failed(&e, 0), "{e:?}");
    }
    // An open that routes to shard 0 fails too; one that routes to shard 1 works.
    for i in 0..40 {
        let path = dir.path().join(format!("after{i}"));
        match wait(exec.open(&path, &rwc())) {
            Ok(f) => {
                assert_eq!(f.shard(), 1);
                still_ok_on(&exec, &f);
            }
            Err(e) => assert!(is_shard_failed(&e, 0), "open {i}: {e:?}"),
        }
    }

    // Shard 1: reads, writes, fsync, tasks.
    still_ok_on(&exec, &f1);
    ok(exec.fsync(&f1), "fsync on shard 1");
    assert_eq!(
        ok(exec.submit_to(1, |ctx| ctx.shard()), "task on shard 1"),
        1
    );
    assert_eq!(std::fs::read(&p1).unwrap()[..10], [6u8; 10]);

    let stats = exec.stats();
    assert!(stats.shards[0].failed, "shard 0 shows as failed");
    assert!(!stats.shards[1].failed);
    assert!(stats.total.failed);
    assert!(stats.shards[1].ops(OpKind::Write) >= 1);

    match exec.shutdown() {
        Err(Error::ShardFailed { shard: 0, .. }) => {}
        other => panic!("shutdown: expected ShardFailed for shard 0, got {other:?}"),
    }
    // Shard 1's writes made it to the file.
    let disk = std::fs::read(&p1).unwrap();
    assert!(disk[..50_000].iter().all(|&b| b == 6));
}

fn still_ok_on(exec: &Executor, f: &File) {
    let data = b"alive".to_vec();
    assert_eq!(ok(exec.write(f, 60_000, data.clone()), "write"), 5);
    assert_eq!(ok(exec.read(f, 60_000, 5), "read"), data);
}

// ---------------------------------------------------------------------------------------------
// Tasks that leave completions behind
// ---------------------------------------------------------------------------------------------

/// A task on a shard may wait for its own operation without reaping its completion (it did let
/// it complete before returning, as `ShardContext` asks). That leftover completion must neither
/// kill the shard nor be taken for one of the shard's own operations (here: reads queued while
/// the task ran, one of which sits in a fresh op slot whose `user_data` encoding is 1).
#[test]
fn completions_a_task_leaves_unreaped_harm_nothing() {
    let exec = Executor::builder()
        .shards(1)
        .buffer_size(4096)
        .buffer_count(4)
        .build()
        .expect("executor");
    let dir = tempfile::tempdir().unwrap();
    let f = open_rwc(&exec, &dir.path().join("f"));
    ok(exec.write(&f, 0, b"abcdefghij".to_vec()), "write");
    for round in 0..3 {
        // The task waits on a gate until the reads below are in the shard's inbox.
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let task = exec.submit_to(0, move |ctx| {
            started_tx.send(()).unwrap();
            let _ = gate_rx.recv_timeout(HANG);
            for ud in [0u64, 1, 2] {
                let nop = io_uring::opcode::Nop::new().build().user_data(ud);
                // SAFETY: a NOP points to no memory.
                unsafe { ctx.push(&nop) }.expect("push");
            }
            ctx.submit_and_wait(3).expect("submit");
            // Returns without reaping the three completions.
        });
        started_rx.recv_timeout(HANG).expect("the task started");
        let reads: Vec<_> = (0..3).map(|_| exec.read(&f, 0, 10)).collect();
        gate_tx.send(()).unwrap();
        ok(task, "task");
        for (i, r) in reads.into_iter().enumerate() {
            assert_eq!(ok(r, "read"), b"abcdefghij", "round {round}, read {i}");
        }
        // The shard is alive and still runs tasks and I/O.
        assert_eq!(ok(exec.submit_to(0, |_| 7), "task"), 7);
        still_ok_on(&exec, &f);
    }
    let stats = exec.stats();
    assert!(!stats.shards[0].failed);
    exec.shutdown().expect("shutdown");
}

/// The same with the shard's own requests already admitted (queued behind the task, in fresh op
/// slots whose `user_data` encodings are 1 and 2) when the task leaves completions with those
/// `user_data`s: the requests must be done for real, not completed by the task's completions.
#[test]
fn a_tasks_leftover_completions_never_complete_queued_requests() {
    let exec = Executor::builder()
        .shards(1)
        .buffer_size(4096)
        .buffer_count(4)
        .build()
        .expect("executor");
    let dir = tempfile::tempdir().unwrap();
    let g_path = dir.path().join("g");
    std::fs::write(&g_path, b"abcdefghij").unwrap();
    let g = ok(exec.open(&g_path, &rw()), "open g");
    let f = open_rwc(&exec, &dir.path().join("f"));
    // The shard's first request: op slot 0, long enough that what follows queues behind it.
    let w = exec.write(&f, 0, vec![9u8; 8 << 20]);
    let task = exec.submit_to(0, |ctx| {
        for ud in [1u64, 2] {
            let nop = io_uring::opcode::Nop::new().build().user_data(ud);
            // SAFETY: a NOP points to no memory.
            unsafe { ctx.push(&nop) }.expect("push");
        }
        ctx.submit_and_wait(2).expect("submit");
        // Returns without reaping.
    });
    // Admitted while the task waits for the write: op slots 1 and 2, generation 0.
    let r1 = exec.read(&g, 0, 10);
    let r2 = exec.read(&g, 2, 5);
    ok(task, "task");
    assert_eq!(ok(w, "write"), 8 << 20);
    assert_eq!(ok(r1, "read 1"), b"abcdefghij");
    assert_eq!(ok(r2, "read 2"), b"cdefg");
    still_ok_on(&exec, &g);
    exec.shutdown().expect("shutdown");
}

/// Two threads shut down at once: when either call returns, the shards have stopped, so every
/// request queued before shutdown has completed (and succeeded).
#[test]
fn concurrent_shutdowns_both_wait_for_the_shards() {
    for round in 0..5 {
        let exec = Arc::new(small_exec());
        let dir = tempfile::tempdir().unwrap();
        let files = prefilled_files(&exec, dir.path(), 2);
        let ops: Vec<Op> = (0..300).map(|i| submit(&exec, &files, i)).collect();
        let done_when_returned = |exec: Arc<Executor>, ops: Arc<Vec<Op>>| {
            std::thread::spawn(move || {
                exec.shutdown().expect("shutdown");
                ops.iter()
                    .filter(|op| match op {
                        Op::Write { c, .. } => !c.is_done(),
                        Op::Read { c, .. } => !c.is_done(),
                    })
                    .count()
            })
        };
        let ops = Arc::new(ops);
        let a = done_when_returned(Arc::clone(&exec), Arc::clone(&ops));
        let b = done_when_returned(Arc::clone(&exec), Arc::clone(&ops));
        let (pending_a, pending_b) = (a.join().unwrap(), b.join().unwrap());
        assert_eq!(
            (pending_a, pending_b),
            (0, 0),
            "round {round}: requests still pending when shutdown() returned"
        );
        let ops = Arc::try_unwrap(ops).ok().expect("sole owner");
        let n = ops.len();
        assert_eq!(settle_all(ops, &files, n), (n, 0));
    }
}

// ---------------------------------------------------------------------------------------------
// Full inboxes when a shard stops
// ---------------------------------------------------------------------------------------------

/// A shard that dies with its inbox full and callers blocked on it: every caller's request must
/// still complete (with ShardFailed), none may be left in the dead shard's inbox.
#[test]
fn a_shard_that_dies_with_a_full_inbox_strands_nothing() {
    let _quiet = QuietShardPanics::install();
    for round in 0..5 {
        let exec = Arc::new(tiny_executor());
        let dir = tempfile::tempdir().unwrap();
        let f = open_rwc(&exec, &dir.path().join("f"));
        let task = exec.kill_shard_for_tests(0, Duration::from_millis(50));
        // Callers that fill the 2-slot inbox and then block on it while the task runs.
        let callers: Vec<_> = (0..4u64)
            .map(|t| {
                let (exec, f) = (Arc::clone(&exec), f.clone());
                std::thread::spawn(move || {
                    (0..50u64)
                        .map(|i| exec.write(&f, (t * 50 + i) * 10, vec![1u8; 10]))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        assert!(is_shard_failed(&wait(task).unwrap_err(), 0));
        for (t, c) in callers.into_iter().enumerate() {
            for (i, mut h) in c.join().unwrap().into_iter().enumerate() {
                match h.wait_timeout(Duration::from_secs(10)) {
                    Err(Error::Timeout) => panic!(
                        "round {round}: caller {t} request {i} was stranded in the dead shard's \
                         inbox"
                    ),
                    Err(e) => assert!(is_shard_failed(&e, 0), "{e:?}"),
                    Ok(n) => assert_eq!(n, 10),
                }
            }
        }
        assert!(exec.shutdown().is_err());
    }
}

/// Shutdown while callers are blocked on a full inbox: each of their requests completes, either
/// done (its bytes are in the file) or refused with Shutdown.
#[test]
fn shutdown_with_a_full_inbox_strands_nothing() {
    for round in 0..5u64 {
        let exec = Arc::new(tiny_executor());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = open_rwc(&exec, &path);
        let task = exec.submit_to(0, |_| std::thread::sleep(Duration::from_millis(40)));
        let callers: Vec<_> = (0..4u64)
            .map(|t| {
                let (exec, f) = (Arc::clone(&exec), f.clone());
                std::thread::spawn(move || {
                    (0..50u64)
                        .map(|i| {
                            let off = (t * 50 + i) * 10;
                            (off, exec.write(&f, off, vec![t as u8 + 1; 10]))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20 + round * 5));
        exec.shutdown().expect("shutdown");
        ok(task, "task");
        let disk = std::fs::read(&path).unwrap();
        for (t, c) in callers.into_iter().enumerate() {
            for (i, (off, mut h)) in c.join().unwrap().into_iter().enumerate() {
                match h.wait_timeout(Duration::from_secs(10)) {
                    Ok(n) => {
                        assert_eq!(n, 10);
                        let at = off as usize;
                        assert_eq!(disk[at..at + 10], [t as u8 + 1; 10]);
                    }
                    Err(Error::Shutdown) => {}
                    other => panic!("round {round}: caller {t} request {i}: {other:?}"),
                }
            }
        }
    }
}

/// One shard with an inbox of 2 and a pool of 2 small buffers: callers block on it quickly.
fn tiny_executor() -> Executor {
    Executor::builder()
        .shards(1)
        .buffer_size(4096)
        .buffer_count(2)
        .channel_capacity(2)
        .build()
        .expect("executor")
}
