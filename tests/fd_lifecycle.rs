//! Descriptor lifecycle, in a process of its own: every test here lowers RLIMIT_NOFILE to 1024
//! first, so a descriptor leaked per open would hit EMFILE within about a thousand cycles.
//!
//! `open_drop_cycles_keep_the_descriptor_count_flat` runs the figure, 1,000,000 open+drop
//! cycles (about 17 s in a debug build on the 2-core machine, so it stays the default);
//! `RINGSHARD_FD_CYCLES=N` runs N instead (e.g. a quick 100000 while working on the code).

mod executor_util;

use executor_util::*;
use ringshard::{Error, Executor, File, DEFAULT_MAX_PENDING_FDS};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// Open+drop cycles by default: the figure, a thousand times what a 1024-descriptor
/// limit allows if each cycle leaked one.
const DEFAULT_CYCLES: u64 = 1_000_000;
/// The soft RLIMIT_NOFILE the tests run under.
const NOFILE: u64 = 1024;
/// How far the count may end above where it started once every close has run (a few; in
/// practice 0).
const END_SLACK: usize = 2;
/// A sample of the descriptor count (`fd_count`) holds one descriptor itself, for the listing of
/// /proc/self/fd: one thread's sample sees the other thread's.
const OTHER_SAMPLER: usize = 1;

/// Lowers the soft RLIMIT_NOFILE to [`NOFILE`] (never raises it).
fn lower_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the local struct only.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur > NOFILE {
        lim.rlim_cur = NOFILE;
        // SAFETY: setrlimit reads the local struct only.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    }
}

fn cycles() -> u64 {
    match std::env::var("RINGSHARD_FD_CYCLES") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("RINGSHARD_FD_CYCLES={v:?}: want a number")),
        Err(_) => DEFAULT_CYCLES,
    }
}

/// Opens and drops one file again and again from two threads (each drop closes the file on its
/// shard): no open fails (EMFILE would), the descriptor count, sampled every 100,000 cycles (or
/// every tenth of the run, if shorter), never exceeds the documented bound (the files the
/// callers hold at once, here at most one per thread, plus `DEFAULT_MAX_PENDING_FDS` in transit),
/// whatever the speed of the callers against the shards, and it ends where it started.
#[test]
fn open_drop_cycles_keep_the_descriptor_count_flat() {
    let _g = serial();
    lower_nofile();
    let total = cycles();
    let every = (total / 10).clamp(1, 100_000);
    let exec = Executor::builder().shards(2).build().expect("executor");
    assert_eq!(exec.pending_fds().max, DEFAULT_MAX_PENDING_FDS);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"x").unwrap();
    let base = fd_count();
    const THREADS: u64 = 2;
    let bound = base + THREADS as usize + DEFAULT_MAX_PENDING_FDS + OTHER_SAMPLER;
    let samples = Mutex::new(vec![(0u64, base)]);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (exec, path, samples) = (&exec, &path, &samples);
            s.spawn(move || {
                // Thread t does cycles t, t + 2, t + 4, ...: together, every cycle once.
                let mut n = t;
                while n < total {
                    drop(ok(exec.open(path, &rw()), "open"));
                    if n % every == 0 && n > 0 {
                        let c = fd_count();
                        samples.lock().unwrap().push((n, c));
                    }
                    n += THREADS;
                }
            });
        }
    });
    let took = start.elapsed();
    let samples = samples.into_inner().unwrap();
    eprintln!(
        "{total} open+drop cycles in {took:?}; descriptors (cycle, count): {samples:?}; bound \
         {bound}"
    );
    for &(n, count) in &samples {
        assert!(
            count <= bound,
            "after {n} cycles: {count} descriptors open, {base} before (bound {bound})"
        );
    }
    // The last closes run on the shard after the last drops return.
    eventually("every descriptor closed after the cycles", HANG, || {
        fd_count() <= base + END_SLACK
    });
    exec.shutdown().unwrap();
}

/// A shard that falls behind on its closes, on purpose: a closure on its thread waits on a gate
/// (the shard reads nothing meanwhile) while a caller sends opens as fast as it can. The file
/// lives on the stalled shard (1 of 2), so every open's descriptor stays in transit: the shards
/// take opens in turn, and shard 0's are opened and then wait to be installed on shard 1, shard
/// 1's wait to be opened. Exactly `MAX - HELD` opens get a place (the held files' closes have the
/// rest); the others wait in the queue, and `open_async` returns at once for each (nothing
/// blocks); a blocking `open` from another thread waits too. The descriptor count never exceeds
/// the files held plus the bound; when the gate opens, every open completes and every descriptor
/// is closed once the handles drop. (Without the bound, every open of shard 0 went through while
/// the shard was stalled: one descriptor each.)
#[test]
fn a_stalled_shard_makes_openers_wait_at_the_bound() {
    let _g = serial();
    lower_nofile();
    const MAX: usize = 16;
    const HELD: usize = MAX / 2;
    const CYCLES: usize = 4 * MAX;
    let exec = Executor::builder()
        .shards(2)
        .max_pending_fds(MAX)
        .build()
        .expect("executor");
    let dir = tempfile::tempdir().unwrap();
    let path = (0..200)
        .map(|i| dir.path().join(format!("f{i}")))
        .find(|p| {
            std::fs::write(p, b"x").unwrap();
            exec.shard_of_path(p).unwrap() == 1
        })
        .expect("a file on shard 1");
    let base = fd_count();
    // Files held open before the stall: their closes will wait behind it.
    let held: Vec<File> = (0..HELD)
        .map(|_| ok(exec.open(&path, &rw()), "open"))
        .collect();
    let (gate, stall) = hold_shard(&exec, 1);
    drop(held);
    assert_eq!(
        exec.pending_fds().in_transit,
        HELD,
        "the held files' closes"
    );
    // open_async never blocks: every call returns at once, whatever the bound.
    let pending: Vec<_> = (0..CYCLES).map(|_| exec.open_async(&path, &rw())).collect();
    eventually("the opens fill the bound", HANG, || {
        exec.pending_fds().in_transit == MAX
    });
    let p = exec.pending_fds();
    assert_eq!(
        (p.in_transit, p.waiting, p.max),
        (MAX, CYCLES - (MAX - HELD), MAX),
        "{p:?}"
    );
    assert!(pending.iter().all(|c| !c.is_done()), "an open finished");
    std::thread::scope(|s| {
        let (exec, path) = (&exec, &path);
        // A blocking open waits with them.
        let blocking = s.spawn(move || ok(exec.open(path, &rw()), "open"));
        eventually("the blocking open waits too", HANG, || {
            exec.pending_fds().waiting == CYCLES - (MAX - HELD) + 1
        });
        assert!(!blocking.is_finished());
        let fds = fd_count();
        assert!(
            fds <= base + HELD + MAX,
            "{fds} descriptors open, {base} before: above the {HELD} held plus the bound {MAX}"
        );
        gate.send(()).unwrap();
        drop(blocking.join().unwrap());
    });
    wait(stall).unwrap();
    let files: Vec<File> = pending.into_iter().map(|c| ok(c, "open_async")).collect();
    assert!(files.iter().all(|f| f.shard() == 1));
    drop(files);
    eventually("every descriptor closed after the stall", HANG, || {
        fd_count() <= base + END_SLACK && exec.pending_fds().in_transit == 0
    });
    exec.shutdown().unwrap();
}

fn fd_of(path: &Path) -> OwnedFd {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap()
        .into()
}

/// Whether descriptor `fd` no longer names `path`: closed (F_GETFD fails with EBADF), or closed
/// and already reused for something else (the /proc link names another file).
fn no_longer(fd: i32, path: &Path) -> bool {
    match fd_target(fd) {
        Some(t) => t != path,
        None => {
            // SAFETY: F_GETFD takes no memory; on a closed descriptor it fails with EBADF.
            let rc = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            rc == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF)
        }
    }
}

/// `adopt` takes over a descriptor: the file works through the executor, stays open while any
/// clone of its handle lives, and is closed on its shard when the last one drops. Adopted after
/// shutdown, the descriptor is closed at once; adopted and still held at shutdown, the shard
/// closes it as it stops.
#[test]
fn an_adopted_descriptor_is_closed_with_its_last_handle() {
    let _g = serial();
    lower_nofile();
    let exec = Executor::builder().shards(2).build().expect("executor");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().canonicalize().unwrap().join("adopted");
    let fd = fd_of(&path);
    let raw = fd.as_raw_fd();
    assert_eq!(fd_target(raw).as_deref(), Some(path.as_path()));
    let f = ok(exec.adopt(fd, &path), "adopt");
    assert_eq!(f.shard(), exec.shard_of_path(&path).unwrap());
    ok(exec.write(&f, 0, b"adopted".to_vec()), "write");
    let g = f.clone();
    drop(f);
    assert_eq!(ok(exec.read(&g, 0, 7), "read"), b"adopted");
    assert_eq!(
        fd_target(raw).as_deref(),
        Some(path.as_path()),
        "closed too early"
    );
    drop(g);
    // The close runs on the shard, after the drop returns.
    eventually("the adopted descriptor is closed", HANG, || {
        no_longer(raw, &path)
    });
    assert_eq!(std::fs::read(&path).unwrap(), b"adopted");

    // Held at shutdown: the shard closes it as it stops.
    let held_path = path.with_file_name("held");
    let fd = fd_of(&held_path);
    let held_raw = fd.as_raw_fd();
    let held = ok(exec.adopt(fd, &held_path), "adopt");
    exec.shutdown().unwrap();
    assert!(no_longer(held_raw, &held_path), "still open after shutdown");
    drop(held);

    // Adopted after shutdown: refused, and the descriptor is not leaked.
    let late_path = path.with_file_name("late");
    let fd = fd_of(&late_path);
    let late_raw = fd.as_raw_fd();
    assert_eq!(
        wait(exec.adopt(fd, &late_path)).unwrap_err(),
        Error::Shutdown
    );
    assert!(no_longer(late_raw, &late_path), "leaked by a refused adopt");
}
