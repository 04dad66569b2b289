//! Opens through the shards' rings: cold opens run side by side (a lookup held in a FUSE
//! filesystem holds only its own open), `open_async` waits for room among the descriptors in
//! transit without blocking its runtime, no descriptor leaks on any path (a dropped handle,
//! shutdown, a dead shard), and dropping the last `Executor` never blocks the thread that drops it.
//!
//! `cold_open_throughput` (ignored: a measurement, not a check) prints cold opens per second with
//! every FUSE lookup delayed: `cargo test --release --test opens -- --ignored --nocapture`.

mod executor_util;
mod faultfs;

use executor_util::*;
use faultfs::{Fault, FaultFs, Op};
use ringshard::{Error, Executor, File, OpKind, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

macro_rules! report {
    ($($arg:tt)*) => {
        report_line(format_args!($($arg)*))
    };
}

/// Read-only.
fn ro() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true);
    o
}

/// This process's descriptors and what they name, as /proc/self/fd lists them (less the
/// listing's own).
fn fds() -> Vec<(String, Option<PathBuf>)> {
    let dir = std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd");
    let mut v: Vec<_> = dir
        .filter_map(|e| e.ok())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_link(e.path()).ok(),
            )
        })
        .filter(|(_, target)| !target.as_ref().is_some_and(|t| t.starts_with("/proc")))
        .collect();
    v.sort();
    v
}

/// Mounts, or prints why the test is skipped and returns.
macro_rules! mount_or_return {
    ($what:expr) => {
        match faultfs::mount_or_skip($what) {
            Some(fs) => fs,
            None => return,
        }
    };
}

/// `dir/{prefix}{i}` for the first `i` whose file (created if missing) lives on `shard`.
fn file_on(exec: &Executor, dir: &Path, prefix: &str, shard: usize) -> PathBuf {
    (0..1000)
        .map(|i| dir.join(format!("{prefix}{i}")))
        .find(|p| {
            if !p.exists() {
                std::fs::write(p, b"x").unwrap();
            }
            exec.shard_of_path(p).unwrap() == shard
        })
        .unwrap_or_else(|| panic!("no file on shard {shard} among 1000"))
}

/// Cold opens run side by side: with the lookup of one file held in the filesystem (its open
/// cannot finish), opens of eight other files all complete, on both shards' rings (the shards take
/// opens in turn, so the shard running the held open ran four of them) and installed on both
/// shards; the held one completes once released. Before, `open_async` ran every open(2) on one
/// opener thread, and the eight queued behind the held one until it was released.
#[test]
fn cold_opens_run_side_by_side() {
    let _g = serial();
    let _dog = Watchdog::new("cold_opens_run_side_by_side", Duration::from_secs(300));
    let fs = mount_or_return!("cold_opens_run_side_by_side");
    let exec = Executor::builder().shards(2).build().expect("executor");
    std::fs::write(fs.backing("held"), b"held").unwrap();
    const OTHERS: usize = 8;
    for i in 0..OTHERS {
        std::fs::write(fs.backing(&format!("o{i}")), b"x").unwrap();
    }
    fs.rules().add("held", &[Op::Lookup], 0..1, Fault::Hold);
    let held = exec.open_async(fs.join("held"), &ro());
    eventually(
        "the held open's lookup reaches the filesystem",
        HANG,
        || fs.held() == 1,
    );
    let others: Vec<File> = (0..OTHERS)
        .map(|i| exec.open_async(fs.join(&format!("o{i}")), &ro()))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|c| ok(c, "an open beside a held one"))
        .collect();
    assert_eq!(fs.held(), 1, "the held lookup was answered");
    assert!(!held.is_done(), "the held open finished while held");
    let stats = exec.stats();
    let opened: Vec<u64> = stats.shards.iter().map(|s| s.ops(OpKind::Open)).collect();
    assert_eq!(opened.iter().sum::<u64>(), OTHERS as u64, "{opened:?}");
    assert!(
        opened.iter().all(|&n| n >= 1),
        "opens ran on one shard only: {opened:?}"
    );
    let mut installed = [0usize; 2];
    for f in &others {
        installed[f.shard()] += 1;
    }
    fs.rules().clear();
    fs.release_held();
    let f = ok(held, "the held open, released");
    assert_eq!(ok(exec.read(&f, 0, 4), "read"), b"held");
    report!(
        "OPENS side by side: with one lookup held, {OTHERS} opens completed (run by shards \
         {opened:?}, installed on shards {installed:?}); {:?} backend",
        stats.shards[0].backend
    );
    drop((f, others));
    exec.shutdown().unwrap();
}

/// The blocking `open` of a file whose lookup is cached runs on its caller's thread: with the
/// other shard held busy by a gate, two opens in a row of a file of shard 0 complete (through a
/// ring, the shards take opens in turn, so one of the two would wait for the held shard).
#[test]
fn a_hot_blocking_open_runs_on_its_caller() {
    let _g = serial();
    let _dog = Watchdog::new(
        "a_hot_blocking_open_runs_on_its_caller",
        Duration::from_secs(120),
    );
    let exec = Executor::builder().shards(2).build().expect("executor");
    let dir = tempfile::tempdir().unwrap();
    let path = file_on(&exec, dir.path(), "h", 0);
    std::fs::write(&path, b"hot").unwrap();
    drop(std::fs::File::open(&path).unwrap()); // its lookup is cached now
    let (gate, held) = hold_shard(&exec, 1);
    for _ in 0..2 {
        let f = ok(exec.open(&path, &ro()), "a hot open with shard 1 held");
        assert_eq!(f.shard(), 0);
        assert_eq!(ok(exec.read(&f, 0, 3), "read"), b"hot");
    }
    gate.send(()).unwrap();
    ok(held, "the hold");
}

/// `open_async` on a current-thread tokio runtime, with the bound on descriptors in transit
/// reached (the two held files' closes wait on a shard held by a gate): the call returns at once,
/// a timer task on the same runtime ticks meanwhile (the runtime's only thread is free), the open
/// waits in the queue, and it completes once the gate opens.
#[test]
fn open_async_at_the_bound_leaves_its_runtime_free() {
    const TICKS: usize = 5;
    let _g = serial();
    let _dog = Watchdog::new(
        "open_async_at_the_bound_leaves_its_runtime_free",
        Duration::from_secs(120),
    );
    let exec = Executor::builder()
        .shards(1)
        .max_pending_fds(2)
        .build()
        .expect("executor");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"data").unwrap();
    let held: Vec<File> = (0..2)
        .map(|_| ok(exec.open(&path, &ro()), "open"))
        .collect();
    let (gate, stall) = hold_shard(&exec, 0);
    drop(held);
    assert_eq!(exec.pending_fds().in_transit, 2, "the bound is reached");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let f = rt.block_on(async {
        let pending = exec.open_async(&path, &ro());
        assert_eq!(exec.pending_fds().waiting, 1, "the open waits in the queue");
        let ticker = tokio::spawn(async {
            let mut iv = tokio::time::interval(Duration::from_millis(2));
            for _ in 0..TICKS {
                iv.tick().await;
            }
        });
        ticker.await.unwrap();
        assert!(!pending.is_done(), "the open went through at the bound");
        assert_eq!(exec.pending_fds().waiting, 1);
        gate.send(()).unwrap();
        pending.await.expect("open_async once the gate opened")
    });
    ok(stall, "the hold");
    assert_eq!(ok(exec.read(&f, 0, 4), "read"), b"data");
    drop(f);
    exec.shutdown().unwrap();
}

/// No descriptor leaks, whatever happens to an open: its handle dropped while its OPENAT is in
/// the kernel (a held FUSE lookup), while it waits for room, while it waits on a busy shard, or
/// cancelled; an open refused at shutdown (it creates nothing), one in the kernel when shutdown
/// begins; opens while a shard is dead (a file of the dead shard: opened by the other, refused at
/// install, closed) and opens queued on a shard that dies. /proc/self/fd comes back to where it
/// started each time.
#[test]
fn no_descriptor_leaks_on_any_path() {
    let _g = serial();
    let _dog = Watchdog::new("no_descriptor_leaks_on_any_path", Duration::from_secs(300));
    let _quiet = QuietShardPanics::install();
    let dir = tempfile::tempdir().unwrap();
    let fs = faultfs::mount_or_skip("no_descriptor_leaks_on_any_path (the FUSE parts)");
    let before = fds();
    let back_to_base = |what: &str| {
        let start = Instant::now();
        while fd_count() > before.len() {
            if start.elapsed() > HANG {
                let now = fds();
                let extra: Vec<_> = now.iter().filter(|d| !before.contains(d)).collect();
                panic!("{what}: descriptors left open: {extra:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    };

    // Dropped (or cancelled) while the OPENAT waits in the kernel for a held lookup: the
    // descriptor the kernel opens once released is closed.
    if let Some(fs) = &fs {
        let exec = Executor::builder().shards(2).build().expect("executor");
        for (i, cancel) in [(0, false), (1, true)] {
            let name = format!("k{i}");
            std::fs::write(fs.backing(&name), b"x").unwrap();
            fs.rules().add(&name, &[Op::Lookup], 0..1, Fault::Hold);
            let c = exec.open_async(fs.join(&name), &ro());
            eventually("the lookup is held", HANG, || fs.held() == 1);
            let kept = if cancel {
                c.cancel();
                Some(c)
            } else {
                drop(c);
                None
            };
            fs.rules().clear();
            fs.release_held();
            if let Some(c) = kept {
                assert!(
                    matches!(wait(c), Err(Error::Cancelled { op: "open", .. })),
                    "a cancelled open"
                );
            }
            eventually("the released open is done with", HANG, || {
                exec.stats().total.ops(OpKind::Open) == i + 1
            });
        }
        exec.shutdown().unwrap();
        drop(exec);
        back_to_base("descriptors after opens dropped in the kernel");
    }

    // Dropped (or cancelled) while waiting for room, and dropped while queued on a busy shard:
    // never opened.
    {
        let exec = Executor::builder()
            .shards(1)
            .max_pending_fds(1)
            .build()
            .expect("executor");
        let path = dir.path().join("q");
        std::fs::write(&path, b"x").unwrap();
        let (gate, stall) = hold_shard(&exec, 0);
        let queued_on_shard = exec.open_async(&path, &ro());
        let waiting_for_room = exec.open_async(&path, &ro());
        let cancelled_waiting = exec.open_async(&path, &ro());
        assert_eq!(exec.pending_fds().waiting, 2);
        drop(waiting_for_room);
        cancelled_waiting.cancel();
        drop(queued_on_shard);
        gate.send(()).unwrap();
        ok(stall, "the hold");
        assert!(
            matches!(
                wait(cancelled_waiting),
                Err(Error::Cancelled { op: "open", .. })
            ),
            "an open cancelled while it waited for room"
        );
        // The dropped ones' places come back: a new open gets one and completes.
        drop(ok(
            exec.open_async(&path, &ro()),
            "an open after the dropped ones",
        ));
        eventually("no descriptor in transit", HANG, || {
            exec.pending_fds().in_transit == 0
        });
        assert_eq!(
            exec.stats().total.ops(OpKind::Open),
            1,
            "a dropped open ran"
        );
        exec.shutdown().unwrap();
        drop(exec);
        back_to_base("descriptors after opens dropped before they ran");
    }

    // Shutdown: an open queued on a busy shard when shutdown begins is refused and creates
    // nothing; so is one waiting for room; one in the kernel (a held lookup) finishes, is refused
    // at its install, and its descriptor is closed.
    {
        // Room for the open in the kernel (if any) and the queued one: the third waits.
        let exec = Arc::new(
            Executor::builder()
                .shards(2)
                .max_pending_fds(if fs.is_some() { 2 } else { 1 })
                .build()
                .expect("executor"),
        );
        // The shards take opens in turn: this first one goes to shard 0 (and, on FUSE, stays in
        // its ring: a closure could not run there), the queued one to shard 1, held by a gate.
        let in_kernel = match &fs {
            Some(fs) => {
                std::fs::write(fs.backing("s"), b"x").unwrap();
                fs.rules().add("s", &[Op::Lookup], 0..1, Fault::Hold);
                let c = exec.open_async(fs.join("s"), &ro());
                eventually("the lookup is held", HANG, || fs.held() == 1);
                Some(c)
            }
            None => {
                let p = dir.path().join("s");
                std::fs::write(&p, b"x").unwrap();
                drop(ok(exec.open_async(&p, &ro()), "open"));
                eventually("its place is back", HANG, || {
                    exec.pending_fds().in_transit == 0
                });
                None
            }
        };
        let (gate, stall) = hold_shard(&exec, 1);
        let created = dir.path().join("created");
        let queued = exec.open_async(&created, &rwc());
        let waiting = exec.open_async(dir.path().join("created2"), &rwc());
        assert_eq!(exec.pending_fds().waiting, 1);
        let shutter = {
            let exec = Arc::clone(&exec);
            std::thread::spawn(move || exec.shutdown())
        };
        eventually("shutdown has begun", HANG, || {
            exec.submit_to(1, |_| ()).is_done()
        });
        assert_eq!(wait(waiting).unwrap_err(), Error::Shutdown);
        if let Some(fs) = &fs {
            fs.rules().clear();
            fs.release_held();
        }
        gate.send(()).unwrap();
        ok(stall, "the hold");
        assert_eq!(wait(queued).unwrap_err(), Error::Shutdown);
        assert!(
            !created.exists(),
            "an open refused at shutdown created its file"
        );
        assert!(!dir.path().join("created2").exists());
        if let Some(c) = in_kernel {
            match wait(c) {
                Err(Error::Shutdown | Error::Cancelled { .. }) => {}
                other => panic!("an open in the kernel at shutdown: {other:?}"),
            }
        }
        shutter.join().unwrap().unwrap();
        drop(exec);
        back_to_base("descriptors after opens at shutdown");
    }

    // A dead shard: opens go to the live one; a file of the dead shard is opened, refused at
    // its install and closed; a file of the live one opens. Opens queued on a shard as it dies
    // are failed unopened.
    {
        let exec = Executor::builder().shards(2).build().expect("executor");
        let on0 = file_on(&exec, dir.path(), "d", 0);
        let on1 = file_on(&exec, dir.path(), "d", 1);
        let (gate, stall) = hold_shard(&exec, 1);
        let dying = exec.kill_shard_for_tests(1, Duration::ZERO);
        // The shards take opens in turn: some of these wait in shard 1's inbox as it dies.
        let queued: Vec<_> = (0..4).map(|_| exec.open_async(&on0, &ro())).collect();
        gate.send(()).unwrap();
        ok(stall, "the hold");
        assert!(is_shard_failed(&wait(dying).unwrap_err(), 1));
        for c in queued {
            match wait(c) {
                Ok(f) => assert_eq!(f.shard(), 0),
                Err(e) => assert!(is_shard_failed(&e, 1), "{e:?}"),
            }
        }
        for _ in 0..4 {
            let e = wait(exec.open_async(&on1, &ro())).unwrap_err();
            assert!(is_shard_failed(&e, 1), "{e:?}");
            let f = ok(exec.open_async(&on0, &ro()), "open of a live shard's file");
            assert_eq!(f.shard(), 0);
        }
        let _ = exec.shutdown();
        drop(exec);
        back_to_base("descriptors after opens with a dead shard");
    }
    drop(fs);
}

/// The last `Executor` dropped inside a tokio task, with a shard held busy by a gate: the drop
/// returns (and the task ends) while the gate is still closed; the shards then stop by themselves
/// once it opens. Before, the drop shut down and joined, blocking the runtime's thread until the
/// busy shard let go.
#[test]
fn dropping_the_last_executor_in_a_task_returns_at_once() {
    let _g = serial();
    let _dog = Watchdog::new(
        "dropping_the_last_executor_in_a_task_returns_at_once",
        Duration::from_secs(120),
    );
    let exec = Executor::builder().shards(2).build().expect("executor");
    let tids: Vec<i32> = (0..2)
        .map(|s| ok(exec.submit_to(s, |_| gettid()), "tid"))
        .collect();
    let (gate, held) = hold_shard(&exec, 1);
    let (dropped_tx, dropped) = std::sync::mpsc::channel();
    let runtime = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async move {
            tokio::spawn(async move { drop(exec) }).await.unwrap();
            dropped_tx.send(()).unwrap();
        });
    });
    let returned = dropped.recv_timeout(HANG);
    // The gate is still closed here: the shard is still busy.
    assert!(
        !held.is_done(),
        "the held shard let go before the drop returned"
    );
    gate.send(()).unwrap();
    assert!(
        returned.is_ok(),
        "the drop did not return while a shard was busy"
    );
    runtime.join().unwrap();
    ok(held, "the hold");
    for tid in tids {
        eventually("a shard thread ends", HANG, || {
            !Path::new(&format!("/proc/self/task/{tid}")).exists()
        });
    }
}

/// The gate of `writes_sent_and_forgotten_land_before_the_process_exits`'s child, opened by
/// its `atexit` handler.
static EXIT_GATE: std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>> =
    std::sync::Mutex::new(None);

extern "C" fn open_exit_gate() {
    if let Some(gate) = EXIT_GATE.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = gate.send(());
    }
}

/// Child side of `writes_sent_and_forgotten_land_before_the_process_exits`; a no-op unless
/// RINGSHARD_CHILD=exit-write. The write is queued behind a closure that holds its shard until
/// the process is exiting (the gate opens in an `atexit` handler registered after the drop, so
/// it runs before ringshard's), and the executor is dropped without waiting.
#[test]
fn exit_write_child_only() {
    let Ok(path) = std::env::var("RINGSHARD_CHILD_FILE") else {
        return;
    };
    if std::env::var("RINGSHARD_CHILD").as_deref() != Ok("exit-write") {
        return;
    }
    let exec = Executor::builder().shards(2).build().expect("executor");
    let mut o = OpenOptions::new();
    o.write(true).create(true);
    let f = ok(exec.open(&path, &o), "open");
    let (gate, held) = hold_shard(&exec, f.shard());
    // Sent, never waited for.
    exec.write(&f, 0, b"landed".to_vec()).detach();
    drop(f);
    assert!(!held.is_done(), "the shard is held");
    drop(held);
    drop(exec);
    *EXIT_GATE.lock().unwrap() = Some(gate);
    // SAFETY: a plain `extern "C" fn()` that takes a lock and sends on a channel; it does not
    // unwind (a poisoned lock is taken as is, a send error is ignored).
    assert_eq!(unsafe { libc::atexit(open_exit_gate) }, 0, "atexit");
    println!("RINGSHARD_EXIT_WRITE_CHILD_SENT");
}

/// A write sent and never waited for, on an executor dropped at once (dropping does not block):
/// the process waits for the shards when it exits, so the write is in the file when the process
/// is gone. Runs this test binary again with only `exit_write_child_only`.
#[test]
fn writes_sent_and_forgotten_land_before_the_process_exits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("forgotten");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "exit_write_child_only",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RINGSHARD_CHILD", "exit-write")
        .env("RINGSHARD_CHILD_FILE", &path)
        .output()
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains("RINGSHARD_EXIT_WRITE_CHILD_SENT")
            && stdout.contains("1 passed"),
        "child test failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"landed",
        "the write queued before the drop was lost at exit"
    );
}

/// `n` files `f0..` in the backing directory of `fs`, each with its lookup delayed by `delay`.
fn delayed_files(fs: &FaultFs, n: usize, delay: Duration) -> Vec<std::path::PathBuf> {
    (0..n)
        .map(|i| {
            let name = format!("f{i}");
            std::fs::write(fs.backing(&name), b"x").unwrap();
            fs.rules()
                .add(&name, &[Op::Lookup], 0..1, Fault::Delay(delay));
            fs.join(&name)
        })
        .collect()
}

/// Cold opens per second: `N` files on faultfs whose every lookup takes `DELAY` (the filesystem
/// answers each on a thread of its own, so lookups may overlap as far as the caller lets them),
/// opened with `open_async` all at once, then with `open` from one thread. Each round mounts a
/// fresh filesystem, so every lookup is cold. Prints the figures; asserts only that every open
/// succeeded.
#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn cold_open_throughput() {
    const N: usize = 200;
    const DELAY: Duration = Duration::from_millis(10);
    const ROUNDS: usize = 3;
    let _g = serial();
    let exec = Executor::builder().shards(2).build().expect("executor");
    let mut lines = Vec::new();
    for round in 0..ROUNDS {
        let Some(fs) = faultfs::mount_or_skip("cold_open_throughput") else {
            return;
        };
        let paths = delayed_files(&fs, N, DELAY);
        let t = Instant::now();
        let pending: Vec<_> = paths.iter().map(|p| exec.open_async(p, &ro())).collect();
        let files: Vec<_> = pending.into_iter().map(|c| ok(c, "open_async")).collect();
        let all_at_once = t.elapsed();
        drop(files);
        drop(fs);
        let Some(fs) = faultfs::mount_or_skip("cold_open_throughput") else {
            return;
        };
        let paths = delayed_files(&fs, N, DELAY);
        let t = Instant::now();
        for p in &paths {
            drop(ok(exec.open(p, &ro()), "open"));
        }
        let one_by_one = t.elapsed();
        drop(fs);
        lines.push(format!(
            "round {round}: open_async x{N} at once {:.0} opens/s ({all_at_once:.2?}); open one \
             by one {:.0} opens/s ({one_by_one:.2?})",
            N as f64 / all_at_once.as_secs_f64(),
            N as f64 / one_by_one.as_secs_f64(),
        ));
    }
    let backend = exec.stats().shards[0].backend;
    exec.shutdown().unwrap();
    report!("OPENS cold, 2 shards, {backend:?}, every lookup {DELAY:?}:");
    for l in lines {
        report!("  {l}");
    }
}

/// Hot opens per second on the local filesystem (the inode cached), with 1 and 2 shards:
/// open+drop of one file from one thread, and `open_async` of 1,000 files at once. The cost of
/// the path, not of the disk.
#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn hot_open_throughput() {
    const CYCLES: usize = 20_000;
    const FILES: usize = 1_000;
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<_> = (0..FILES)
        .map(|i| {
            let p = dir.path().join(format!("h{i}"));
            std::fs::write(&p, b"x").unwrap();
            p
        })
        .collect();
    for shards in [1, 2] {
        let exec = Executor::builder()
            .shards(shards)
            .build()
            .expect("executor");
        let mut lines = Vec::new();
        for round in 0..3 {
            let t = Instant::now();
            for _ in 0..CYCLES {
                drop(ok(exec.open(&paths[0], &ro()), "open"));
            }
            let cycles = t.elapsed();
            let t = Instant::now();
            let pending: Vec<_> = paths.iter().map(|p| exec.open_async(p, &ro())).collect();
            let files: Vec<_> = pending.into_iter().map(|c| ok(c, "open_async")).collect();
            let at_once = t.elapsed();
            drop(files);
            lines.push(format!(
                "round {round}: open+drop {:.0}/s; open_async x{FILES} at once {:.0}/s",
                CYCLES as f64 / cycles.as_secs_f64(),
                FILES as f64 / at_once.as_secs_f64(),
            ));
        }
        let backend = exec.stats().shards[0].backend;
        exec.shutdown().unwrap();
        report!("OPENS hot, {shards} shards, {backend:?}:");
        for l in lines {
            report!("  {l}");
        }
    }
}
