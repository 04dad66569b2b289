//! Abuse: threads and tokio tasks throw bad input at a running 2-shard executor while valid
//! traffic runs on other files. Bad input: huge and overflowing lengths and offsets, closed and
//! stale handles, handles from another executor, `Duration::MAX` wherever a duration is taken,
//! storms of dropped and cancelled completions and sessions (reads of a FIFO that never end
//! among them), wakers that panic, submit_to closures that panic, and the executor dropped from
//! one thread while another shuts it down.
//!
//! Checked: the process survives; every handle kept completes (within [`HANG`]); the valid
//! traffic's bytes are intact (read back through the executor during the run and from disk at
//! the end); descriptors return to their starting count once everything is dropped; RSS grows
//! by less than 64 MiB.
//!
//! One test in this binary: it measures process-wide descriptor and memory counts.

mod executor_util;

use executor_util::*;
use ringshard::{Completion, Error, Executor, FallocateMode, File, OpenOptions, Session};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::time::{Duration, Instant};

/// Bytes of each valid file.
const VALID_LEN: u64 = 192 * 1024;
/// Times valid traffic rewrites and rereads its files.
const VALID_ROUNDS: usize = 30;
/// How much RSS may grow over the run: the run moves a few MiB of data and makes a few
/// executors; a leak of buffers, ops or sessions per request would exceed it.
const RSS_GROWTH: u64 = 64 << 20;
/// How far the descriptor count may end from where it started: the test harness and the
/// allocator may hold a descriptor or two of their own ("± a few").
const FD_SLACK: usize = 4;

/// The byte valid traffic keeps at `off` of valid file `file`.
fn pat(file: usize, off: u64) -> u8 {
    let x = (off ^ ((file as u64) << 40)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8
}

fn pat_range(file: usize, off: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pat(file, off + i)).collect()
}

/// A valid file: its number (for the pattern), path and handle.
#[derive(Clone)]
struct Valid {
    id: usize,
    path: PathBuf,
    file: File,
}

fn is_invalid(e: &Error) -> bool {
    matches!(e, Error::InvalidArgument { .. })
}

fn is_bad_handle(e: &Error) -> bool {
    matches!(e, Error::BadHandle(_))
}

/// Waits for `c` and checks its error with `want`.
#[track_caller]
fn expect_err<T: std::fmt::Debug>(c: Completion<T>, want: fn(&Error) -> bool, what: &str) {
    match wait(c) {
        Err(e) if want(&e) => {}
        other => panic!("{what}: unexpected {other:?}"),
    }
}

/// Waits for `c`: any outcome but a hang is fine (the kernel decides, e.g. EFBIG or not).
#[track_caller]
fn settle<T>(c: Completion<T>) {
    let _ = wait(c);
}

// ---------------------------------------------------------------------------------------------
// Valid traffic
// ---------------------------------------------------------------------------------------------

/// Writes each of `files` whole in pieces of random sizes (some by plain requests, some in
/// batches, some with a deadline that never passes), then reads random ranges back and checks
/// them; [`VALID_ROUNDS`] times, with other piece boundaries (the bytes are a function of the
/// offset, so rewrites never change what a read may see).
fn valid_traffic(exec: &Executor, files: &[Valid], seed: u64) {
    let mut rng = Rng::new(seed);
    for round in 0..VALID_ROUNDS {
        let mut writes = Vec::new();
        for v in files {
            let mut off = 0u64;
            while off < VALID_LEN {
                let len = rng.range(1, 24 * 1024).min(VALID_LEN - off) as usize;
                let data = pat_range(v.id, off, len);
                let c = match rng.below(3) {
                    0 => exec.write(&v.file, off, data),
                    1 => exec.timeout(HANG).write(&v.file, off, data),
                    _ => {
                        let mut b = exec.batch();
                        let c = b.write(&v.file, off, data);
                        b.submit();
                        c
                    }
                };
                writes.push((c, len));
                off += len as u64;
            }
        }
        for (c, len) in writes {
            assert_eq!(ok(c, "valid write"), len);
        }
        let mut reads = Vec::new();
        for _ in 0..60 {
            let v = &files[rng.below(files.len() as u64) as usize];
            let off = rng.below(VALID_LEN);
            let len = rng.range(1, 32 * 1024).min(VALID_LEN - off) as usize;
            let c = if rng.chance(50) {
                exec.read(&v.file, off, len)
            } else {
                exec.timeout(Duration::MAX)
                    .read_into(&v.file, off, len, Vec::with_capacity(100))
            };
            reads.push((c, v.id, off, len));
        }
        for (c, id, off, len) in reads {
            let got = ok(c, "valid read");
            assert_bytes_eq(
                &got,
                &pat_range(id, off, len),
                &format!("round {round}: file {id} at {off}+{len}"),
            );
        }
    }
}

/// The same through a session, awaited from a tokio task, one file after another.
async fn valid_session_traffic(exec: Arc<Executor>, files: Vec<Valid>, seed: u64) {
    for (k, v) in files.into_iter().enumerate() {
        let s = exec.session_with_capacity(32).unwrap();
        valid_session_file(s, v, seed + k as u64).await;
    }
}

async fn valid_session_file(mut s: Session, v: Valid, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut off = 0u64;
    let mut token = 0u64;
    let mut out = Vec::new();
    while off < VALID_LEN {
        let len = rng.range(1, 16 * 1024).min(VALID_LEN - off) as usize;
        s.write(&v.file, off, pat_range(v.id, off, len), token)
            .expect("session has room");
        token += 1;
        off += len as u64;
        if s.in_flight() == s.capacity() {
            s.next(&mut out).await;
        }
    }
    while s.in_flight() > 0 {
        s.next(&mut out).await;
    }
    assert_eq!(out.len() as u64, token);
    for d in out.drain(..) {
        d.result.expect("session write");
    }
    let mut want = Vec::new();
    for t in 0..40u64 {
        let off = rng.below(VALID_LEN);
        let len = rng.range(1, 16 * 1024).min(VALID_LEN - off) as usize;
        if s.in_flight() == s.capacity() {
            s.next(&mut out).await;
        }
        s.read(&v.file, off, len, Vec::new(), t).unwrap();
        want.push((off, len));
    }
    while s.in_flight() > 0 {
        s.next(&mut out).await;
    }
    for d in out {
        let (off, len) = want[d.token as usize];
        let got = d.result.map(|_| d.buf).expect("session read");
        assert_bytes_eq(&got, &pat_range(v.id, off, len), "session read");
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

/// Lengths, offsets and durations at their extremes, through every way in.
fn bad_arguments(exec: &Executor, scratch: &File, read_only: &File, direct: Option<&File>) {
    for _ in 0..200 {
        // Plain requests.
        expect_err(
            exec.read(scratch, 0, usize::MAX),
            is_invalid,
            "read usize::MAX",
        );
        expect_err(exec.read(scratch, 0, 1 << 40), is_invalid, "read 1 TiB");
        expect_err(
            exec.read(scratch, u64::MAX - 1, 10),
            is_invalid,
            "read at u64::MAX-1",
        );
        expect_err(
            exec.read(scratch, u64::MAX - 1, 0),
            is_invalid,
            "read 0 at u64::MAX-1",
        );
        expect_err(
            exec.write(scratch, u64::MAX - 1, vec![1]),
            is_invalid,
            "write u64::MAX-1",
        );
        let end = i64::MAX as u64;
        expect_err(
            exec.write(scratch, end, vec![1, 2]),
            is_invalid,
            "write past i64::MAX",
        );
        expect_err(
            exec.fallocate(scratch, FallocateMode::Allocate, u64::MAX - 1, 10),
            is_invalid,
            "fallocate",
        );
        expect_err(
            exec.fallocate(scratch, FallocateMode::Allocate, 0, u64::MAX),
            is_invalid,
            "fallocate len",
        );
        // Far but legal: the kernel decides (EOF, a sparse write, EFBIG, EINVAL).
        settle(exec.read(scratch, 1 << 40, 10));
        settle(exec.read(scratch, end - 10, 10));
        settle(exec.write(scratch, 1 << 40, vec![7u8; 8]));
        settle(exec.fallocate(scratch, FallocateMode::InsertRange, 0, 10));
        expect_err(
            exec.write(read_only, 0, vec![1]),
            is_bad_handle,
            "write read-only",
        );
        if let Some(d) = direct {
            expect_err(exec.read(d, 1, 4096), is_invalid, "unaligned direct read");
            expect_err(
                exec.write(d, 0, vec![0u8; 100]),
                is_invalid,
                "short direct write",
            );
        }
        // With deadlines at the extremes.
        let never = exec.timeout(Duration::MAX);
        expect_err(
            never.read(scratch, 0, usize::MAX),
            is_invalid,
            "deadline read",
        );
        expect_err(
            never.write(scratch, u64::MAX - 1, vec![1]),
            is_invalid,
            "deadline write",
        );
        let mut c = never.read(scratch, 0, 10);
        assert!(c.wait_timeout(Duration::MAX).is_ok());
        never.fsync(scratch).wait_timeout(Duration::MAX).unwrap();
        match wait(exec.timeout(Duration::ZERO).read(scratch, 0, 10)) {
            Ok(_) | Err(Error::DeadlineExceeded { .. }) => {}
            other => panic!("zero deadline: {other:?}"),
        }
        // Batches.
        let mut b = exec.batch();
        let bad = [
            b.read(scratch, 0, usize::MAX),
            b.read(scratch, u64::MAX - 1, 1),
            b.read(read_only, 1 << 40, 1),
        ];
        let w = b.write(scratch, u64::MAX - 1, vec![1]);
        b.submit();
        let [a, b2, c2] = bad;
        expect_err(a, is_invalid, "batch read usize::MAX");
        expect_err(b2, is_invalid, "batch read at u64::MAX-1");
        settle(c2);
        expect_err(w, is_invalid, "batch write");
        // Sessions: errors come back as results, with the buffers.
        let mut s = exec.session();
        s.set_timeout(Some(Duration::MAX));
        s.read(scratch, 0, usize::MAX, vec![0u8; 3], 1).unwrap();
        s.read(scratch, u64::MAX - 1, 5, Vec::new(), 2).unwrap();
        s.write(scratch, u64::MAX - 1, vec![9u8; 4], 3).unwrap();
        s.write(read_only, 0, vec![9u8; 4], 4).unwrap();
        s.read(scratch, 0, 10, Vec::new(), 5).unwrap();
        let mut out = Vec::new();
        assert_eq!(s.wait_timeout(5, HANG, &mut out), Ok(5));
        assert_eq!(s.wait_timeout(1, Duration::MAX, &mut out), Ok(0));
        out.sort_by_key(|d| d.token);
        assert!(
            out[0].result.as_ref().is_err_and(is_invalid),
            "{:?}",
            out[0]
        );
        assert_eq!(out[0].buf.len(), 3, "the buffer comes back");
        assert!(
            out[1].result.as_ref().is_err_and(is_invalid),
            "{:?}",
            out[1]
        );
        assert!(
            out[2].result.as_ref().is_err_and(is_invalid),
            "{:?}",
            out[2]
        );
        assert_eq!(out[2].buf, vec![9u8; 4]);
        assert!(
            out[3].result.as_ref().is_err_and(is_bad_handle),
            "{:?}",
            out[3]
        );
        assert!(out[4].result.is_ok(), "{:?}", out[4]);
        // Configuration out of range.
        assert!(exec.session_with_capacity(0).is_err());
        assert!(exec.session_with_capacity(usize::MAX).is_err());
        expect_err(
            exec.submit_to(usize::MAX, |_| ()),
            is_invalid,
            "submit_to MAX",
        );
        expect_err(exec.submit_to(2, |_| ()), is_invalid, "submit_to 2");
        let mut ready = Completion::ready(Ok(1u8));
        assert_eq!(ready.wait_timeout(Duration::MAX), Ok(1));
    }
}

/// Closed handles, handles from another executor, and opens whose handles are dropped at once.
/// After each close the same path is reopened: it lands in the very slot the stale handle names
/// (same shard, freed slot reused first), and the stale handle must not reach it.
fn stale_and_foreign(exec: &Executor, other: &Executor, dir: &Path, foreign: &File, mine: &File) {
    for i in 0..200 {
        let path = dir.join(format!("stale{}", i % 4));
        let f = open_rwc(exec, &path);
        let stale = f.clone();
        ok(exec.close(&f), "close");
        drop(f);
        let fresh = open_rwc(exec, &path);
        ok(exec.write(&fresh, 0, b"fresh".to_vec()), "write fresh");
        expect_err(exec.read(&stale, 0, 5), is_bad_handle, "stale read");
        expect_err(
            exec.write(&stale, 0, b"STALE".to_vec()),
            is_bad_handle,
            "stale write",
        );
        expect_err(exec.fsync(&stale), is_bad_handle, "stale fsync");
        expect_err(exec.fdatasync(&stale), is_bad_handle, "stale fdatasync");
        expect_err(exec.size(&stale), is_bad_handle, "stale size");
        expect_err(
            exec.fallocate(&stale, FallocateMode::Allocate, 0, 10),
            is_bad_handle,
            "stale fallocate",
        );
        expect_err(exec.close(&stale), is_bad_handle, "stale close");
        expect_err(
            exec.timeout(Duration::MAX)
                .write(&stale, 0, b"STALE".to_vec()),
            is_bad_handle,
            "stale deadline write",
        );
        let mut b = exec.batch();
        let w = b.write(&stale, 0, b"STALE".to_vec());
        b.submit();
        expect_err(w, is_bad_handle, "stale batch write");
        let mut s = exec.session();
        s.write(&stale, 0, b"STALE".to_vec(), 0).unwrap();
        let mut out = Vec::new();
        assert_eq!(s.wait_timeout(1, HANG, &mut out), Ok(1));
        assert!(out[0].result.as_ref().is_err_and(is_bad_handle));
        assert_eq!(ok(exec.read(&fresh, 0, 5), "read fresh"), b"fresh");
        drop(stale); // closed already: its drop must not close `fresh`
        assert_eq!(ok(exec.read(&fresh, 0, 5), "read fresh"), b"fresh");
        drop(fresh);

        // Handles from the other executor, both ways.
        expect_err(exec.read(foreign, 0, 1), is_bad_handle, "foreign read");
        expect_err(
            exec.write(foreign, 0, vec![1]),
            is_bad_handle,
            "foreign write",
        );
        expect_err(exec.close(foreign), is_bad_handle, "foreign close");
        expect_err(exec.size(foreign), is_bad_handle, "foreign size");
        expect_err(
            other.write(mine, 0, vec![1]),
            is_bad_handle,
            "mine on other",
        );
        let mut s = other.session();
        s.read(mine, 0, 1, Vec::new(), 0).unwrap();
        assert_eq!(s.wait_timeout(1, HANG, &mut out), Ok(1));
        assert!(out[1].result.as_ref().is_err_and(is_bad_handle));
        let mut b = exec.batch();
        let r = b.read(foreign, 0, 1);
        drop(b); // never submitted: fails its handles
        assert!(wait(r).is_err());

        // Opens whose handles nobody keeps: the files are closed on their shards.
        drop(open_rwc(exec, &dir.join(format!("dropped{}", i % 3))));
        drop(exec.open_async(dir.join(format!("dropped{}", i % 3)), &rwc()));
        drop(exec.open(dir.join("missing/nope"), &rw()));
    }
    // Every one of those paths now holds what its last fresh handle wrote.
    for k in 0..4 {
        assert_eq!(
            std::fs::read(dir.join(format!("stale{k}"))).unwrap(),
            b"fresh"
        );
    }
}

/// Thousands of completions and hundreds of sessions made and dropped with requests in flight,
/// or cancelled and waited for; reads of a FIFO that never end among them.
fn cancel_storm(exec: &Executor, scratch: &File, valid: &[Valid], fifo: &File, seed: u64) {
    let mut rng = Rng::new(seed);
    for _ in 0..120 {
        for i in 0..400u64 {
            let v = &valid[(i as usize) % valid.len()].file;
            drop(exec.read(v, rng.below(VALID_LEN), 4096));
            drop(exec.write(scratch, rng.below(1 << 20), vec![3u8; 512]));
            drop(
                exec.timeout(Duration::from_millis(rng.below(3)))
                    .read(scratch, 0, 4096),
            );
            if i % 20 == 0 {
                drop(exec.read(fifo, 0, 64));
            }
        }
        let cancelled: Vec<_> = (0..200u64)
            .map(|i| {
                let c = if i % 10 == 0 {
                    exec.read(fifo, 0, 64)
                } else {
                    exec.read(&valid[i as usize % valid.len()].file, i * 100, 100)
                };
                c.cancel();
                c
            })
            .collect();
        for (i, c) in cancelled.into_iter().enumerate() {
            match wait(c) {
                Ok(_) if i % 10 != 0 => {}
                Err(Error::Cancelled { .. }) => {}
                other => panic!("cancelled read {i}: {other:?}"),
            }
        }
        for k in 0..60u64 {
            let mut s = exec.session();
            for t in 0..16u64 {
                match t % 4 {
                    0 => s.read(fifo, 0, 64, Vec::new(), t).unwrap(),
                    1 => s.write(scratch, t * 512, vec![4u8; 512], t).unwrap(),
                    _ => s
                        .read(&valid[t as usize % valid.len()].file, t * 64, 64, vec![], t)
                        .unwrap(),
                }
                if k % 2 == 0 && t == 8 {
                    s.flush(); // half sent, half still queued in the session
                }
            }
            if k % 3 == 0 {
                s.flush();
            }
            drop(s);
        }
    }
}

/// Panicking submit_to closures, and wakers that panic when the shard wakes them.
fn panics(exec: &Executor, scratch: &File) {
    let waker = panicking_waker();
    let mut cx = Context::from_waker(&waker);
    for i in 0..120usize {
        let e = wait(exec.submit_to(i % 2, move |_| -> u8 { panic!("abuse task panic {i}") }))
            .unwrap_err();
        match &e {
            Error::ShardFailed { reason, .. } => {
                assert!(
                    reason.contains(&format!("abuse task panic {i}")),
                    "{reason}"
                )
            }
            other => panic!("panicking task: {other:?}"),
        }
        // Hold the scratch file's shard on a gate so the polls below see Pending and the shard,
        // not this thread, calls the waker.
        let (gate, busy) = hold_shard(exec, scratch.shard());
        // Longer than the inline read limit, so the shard serves it (and calls the waker).
        let long = ringshard::DEFAULT_INLINE_READ_LIMIT + 1;
        let mut c = exec.read(scratch, 0, long);
        // The waker panics only when woken; a poll that wakes at once panics here, harmlessly.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = Pin::new(&mut c).poll(&mut cx);
        }));
        let mut s = exec.session();
        s.read(scratch, 0, long, Vec::new(), 0).unwrap();
        let mut out = Vec::new();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = s.poll_next(&mut cx, &mut out);
        }));
        gate.send(()).unwrap();
        ok(busy, "busy task");
        // Both results arrive (and the shard wakes both wakers) before this thread waits on
        // them: a waiting thread would take the place of the waker.
        eventually("the read's result", HANG, || c.is_done());
        eventually("the session's result", HANG, || {
            s.reap(&mut out);
            !out.is_empty()
        });
        assert!(wait(c).is_ok());
        assert!(out[0].result.is_ok());
    }
}

/// Bad input from an async task: the same kinds of calls, awaited.
async fn async_abuse(exec: Arc<Executor>, scratch: File, fifo: File, dir: PathBuf) {
    let waker = panicking_waker();
    for i in 0..400u64 {
        assert!(exec.read(&scratch, 0, usize::MAX).await.is_err());
        assert!(exec.write(&scratch, u64::MAX - 1, vec![1]).await.is_err());
        let r = exec.timeout(Duration::MAX).read(&scratch, 0, 16).await;
        assert!(r.is_ok(), "{r:?}");
        drop(exec.read(&fifo, 0, 16));
        drop(exec.open_async(dir.join(format!("async{}", i % 3)), &rwc()));
        if i % 10 == 0 {
            let f = exec
                .open_async(dir.join("async-kept"), &rwc())
                .await
                .expect("open_async");
            let stale = f.clone();
            exec.close(&f).await.expect("close");
            assert!(exec.read(&stale, 0, 1).await.is_err());
            let stats = exec.stats_async().await;
            assert!(!stats.total.failed);
        }
        // A session's `next` future dropped while its requests are in flight.
        let mut s = exec.session();
        s.read(&fifo, 0, 16, Vec::new(), 0).unwrap();
        s.read(&scratch, 0, 16, Vec::new(), 1).unwrap();
        let mut out = Vec::new();
        {
            let mut next = s.next(&mut out);
            let mut cx = Context::from_waker(&waker);
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = Pin::new(&mut next).poll(&mut cx);
            }));
        }
        drop(s);
        tokio::task::yield_now().await;
    }
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/// Runs `f` on a scoped thread and reports how long it took.
fn timed<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    what: &'static str,
    f: impl FnOnce() + Send + 'scope,
) -> std::thread::ScopedJoinHandle<'scope, ()> {
    scope.spawn(move || {
        let t = Instant::now();
        f();
        eprintln!("  {what}: {:?}", t.elapsed());
    })
}

#[test]
fn abuse_a_running_executor() {
    let _quiet = QuietShardPanics::install();
    // Some waits below are unbounded by design (Duration::MAX): a hang must still end the run.
    let _dog = Watchdog::new("abuse_a_running_executor", Duration::from_secs(300));
    let fds_before = fd_count();
    let rss_before = rss_bytes();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let exec = Arc::new(
        Executor::builder()
            .shards(2)
            .buffer_size(16 * 1024)
            .buffer_count(16)
            .shutdown_timeout(Duration::from_millis(300))
            .build()
            .expect("executor"),
    );
    let other = Executor::builder()
        .shards(1)
        .buffer_size(4096)
        .buffer_count(4)
        .spin(Duration::MAX) // clamped
        .shutdown_timeout(Duration::MAX)
        .build()
        .expect("other executor");

    let valid: Vec<Valid> = files_on_every_shard(&exec, d, "valid", 3, 200)
        .into_iter()
        .enumerate()
        .map(|(id, (path, file))| Valid { id, path, file })
        .collect();
    let scratch = open_rwc(&exec, &d.join("scratch"));
    let read_only = ok(
        exec.open(d.join("scratch"), OpenOptions::new().read(true)),
        "open read-only",
    );
    let direct = {
        let mut o = rwc();
        o.direct(true);
        wait(exec.open(d.join("direct"), &o)).ok()
    };
    mkfifo(&d.join("fifo"));
    let fifo = ok(exec.open(d.join("fifo"), &rw()), "open fifo");
    let foreign = open_rwc(&other, &d.join("foreign"));

    // Valid traffic: two threads and a tokio task, each on files of its own.
    let (a, rest) = valid.split_at(2);
    let (b, c) = rest.split_at(2);
    let (a, b, c) = (a.to_vec(), b.to_vec(), c.to_vec());
    let exec_for_tasks = Arc::clone(&exec);
    std::thread::scope(|scope| {
        let exec = &*exec;
        let valid = &valid;
        let workers = vec![
            timed(scope, "valid A", move || valid_traffic(exec, &a, 1)),
            timed(scope, "valid B", move || valid_traffic(exec, &b, 2)),
            timed(scope, "bad arguments", || {
                bad_arguments(exec, &scratch, &read_only, direct.as_ref())
            }),
            timed(scope, "stale/foreign", || {
                stale_and_foreign(exec, &other, d, &foreign, &scratch)
            }),
            timed(scope, "cancel storm", || {
                cancel_storm(exec, &scratch, valid, &fifo, 3)
            }),
            timed(scope, "panics", || panics(exec, &scratch)),
        ];
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let t1 = tokio::spawn(valid_session_traffic(Arc::clone(&exec_for_tasks), c, 4));
            let t2 = tokio::spawn(async_abuse(
                exec_for_tasks,
                scratch.clone(),
                fifo.clone(),
                d.to_path_buf(),
            ));
            t1.await.expect("valid session task");
            t2.await.expect("async abuse task");
        });
        drop(rt);
        for w in workers {
            w.join().expect("worker");
        }
    });
    let stats = exec.stats();
    assert!(!stats.total.failed, "a shard died");
    assert!(stats.total.cancelled > 0 && stats.total.deadline_exceeded > 0);
    // Shards woke panicking wakers (in `panics`, each poll runs while the shard is held, and the
    // result arrives before anything else waits for it).
    assert!(WAKER_PANICS.load(std::sync::atomic::Ordering::SeqCst) > 0);

    // The end: requests still in flight (reads that never end among them); one thread shuts
    // down while another drops its clone of the executor, and this thread drops the last.
    let hung: Vec<_> = (0..3).map(|_| exec.read(&fifo, 0, 64)).collect();
    let reads: Vec<_> = valid
        .iter()
        .map(|v| (v.id, exec.read(&v.file, 0, VALID_LEN as usize)))
        .collect();
    let e1 = Arc::clone(&exec);
    let e2 = Arc::clone(&exec);
    let shutter = std::thread::spawn(move || e1.shutdown());
    let dropper = std::thread::spawn(move || drop(e2));
    drop(exec);
    let shut = shutter.join().expect("shutdown thread");
    dropper.join().expect("dropping thread");
    assert_eq!(shut, Ok(()));
    for c in hung {
        match wait(c) {
            Err(Error::Cancelled { .. }) => {}
            other => panic!("a FIFO read at shutdown: {other:?}"),
        }
    }
    for (id, c) in reads {
        assert_bytes_eq(
            &ok(c, "final read"),
            &pat_range(id, 0, VALID_LEN as usize),
            "final read",
        );
    }
    other.shutdown().expect("other shutdown");
    for v in &valid {
        assert_bytes_eq(
            &std::fs::read(&v.path).unwrap(),
            &pat_range(v.id, 0, VALID_LEN as usize),
            &format!("valid file {} on disk", v.id),
        );
    }
    drop((valid, scratch, read_only, direct, fifo, foreign, other));
    drop(dir);

    // Descriptors: the shards' rings and files are closed; the opener threads let go of the
    // executors' wake-up eventfds as they exit, which may take a moment.
    eventually("descriptors back to the starting count", HANG, || {
        fd_count() <= fds_before + FD_SLACK
    });
    let grew = rss_bytes().saturating_sub(rss_before);
    assert!(grew < RSS_GROWTH, "RSS grew by {} MiB", grew >> 20);
    eprintln!(
        "abuse run: {:?}, RSS +{} KiB, descriptors {} -> {}",
        started.elapsed(),
        grew >> 10,
        fds_before,
        fd_count()
    );
}
