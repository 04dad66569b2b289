//! Sessions under load: every token completes exactly once with its own buffer back, from many
//! threads and tasks with random flush and wait patterns; dropped sessions strand nothing; and a
//! shard kept busy by its inbox still posts deferred (O_DIRECT) completions promptly.

mod executor_util;

use executor_util::{files_on_every_shard, ok, Rng, HANG};
use ringshard::{Done, Error, Executor, OpenOptions};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BS: usize = 512;

/// The byte at `offset` of file `f` in the verify pattern.
fn pattern(f: usize, offset: u64) -> u8 {
    (f as u64 * 31 + offset / BS as u64 * 7) as u8
}

fn block(f: usize, offset: u64) -> Vec<u8> {
    vec![pattern(f, offset); BS]
}

/// What a token stands for, so its result can be checked.
#[derive(Debug, Clone, Copy)]
enum Sent {
    Read { file: usize, offset: u64 },
    Write { file: usize, offset: u64 },
    Fsync,
}

/// Checks one result against what was sent; returns the buffer for reuse.
fn check(sent: Sent, d: Done) -> Vec<u8> {
    match sent {
        Sent::Read { file, offset } => {
            assert_eq!(d.result, Ok(BS), "read {file}@{offset}");
            assert_eq!(d.buf.len(), BS);
            assert!(
                d.buf.iter().all(|&b| b == pattern(file, offset)),
                "read {file}@{offset}: wrong bytes"
            );
        }
        Sent::Write { file, offset } => {
            assert_eq!(d.result, Ok(BS), "write {file}@{offset}");
            assert_eq!(
                d.buf,
                block(file, offset),
                "a write's data comes back as given"
            );
        }
        Sent::Fsync => assert_eq!(d.result, Ok(0)),
    }
    d.buf
}

/// Many threads, each with a session, random mixes of reads, rewrites (same pattern) and fsyncs,
/// random flush points and wait sizes: each token completes exactly once, buffers come back, no
/// wake-up is lost (a lost one would hang a wait: bounded by HANG).
#[test]
fn many_threads_random_flush_and_wait_every_token_once() {
    let exec = Arc::new(Executor::builder().shards(2).build().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<_> = files_on_every_shard(&exec, dir.path(), "s", 2, 64)
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    const BLOCKS: u64 = 64;
    // Lay the pattern down first.
    let mut s = exec.session();
    let mut done = Vec::new();
    for (i, f) in files.iter().enumerate() {
        for b in 0..BLOCKS {
            let off = b * BS as u64;
            s.write(f, off, block(i, off), b).unwrap();
        }
        s.wait(BLOCKS as usize, &mut done).unwrap();
        assert!(done.drain(..).all(|d| d.result == Ok(BS)));
    }
    drop(s);

    let threads: Vec<_> = (0..6u64)
        .map(|t| {
            let (exec, files) = (Arc::clone(&exec), files.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(t);
                let cap = 1 + rng.below(48) as usize;
                let mut s = exec.session_with_capacity(cap).unwrap();
                let mut sent: HashMap<u64, Sent> = HashMap::new();
                let mut spare: Vec<Vec<u8>> = Vec::new();
                let mut done = Vec::new();
                let mut completed = 0u64;
                for token in (t << 48)..(t << 48) + 3000 {
                    if s.in_flight() == s.capacity() {
                        // Full: the session refuses more, and says so; waiting for one result
                        // makes room (every turn sends one: a count that does not depend on how
                        // fast the shards answer).
                        let e = s.fsync(&files[0], u64::MAX).unwrap_err();
                        assert!(matches!(e, Error::SessionFull { .. }), "{e}");
                        s.wait(1, &mut done).unwrap();
                    }
                    let fi = rng.below(files.len() as u64) as usize;
                    let off = rng.below(BLOCKS) * BS as u64;
                    let what = match rng.below(10) {
                        0..=5 => {
                            let buf = spare.pop().unwrap_or_default();
                            s.read(&files[fi], off, BS, buf, token).unwrap();
                            Sent::Read {
                                file: fi,
                                offset: off,
                            }
                        }
                        6..=8 => {
                            s.write(&files[fi], off, block(fi, off), token).unwrap();
                            Sent::Write {
                                file: fi,
                                offset: off,
                            }
                        }
                        _ => {
                            s.fsync(&files[fi], token).unwrap();
                            Sent::Fsync
                        }
                    };
                    assert!(sent.insert(token, what).is_none());
                    match rng.below(6) {
                        0 => s.flush(),
                        1 => {
                            s.reap(&mut done);
                        }
                        2 => {
                            let min = 1 + rng.below(s.in_flight().max(1) as u64) as usize;
                            let n = s.wait(min, &mut done).unwrap();
                            assert!(n >= min.min(s.in_flight() + n));
                        }
                        3 => {
                            s.wait_timeout(1, Duration::from_micros(rng.below(200)), &mut done)
                                .unwrap();
                        }
                        _ => {} // keep queueing without flushing
                    }
                    for d in done.drain(..) {
                        let what = sent.remove(&d.token).expect("a token completed twice");
                        spare.push(check(what, d));
                        completed += 1;
                    }
                }
                while s.in_flight() > 0 {
                    s.wait(s.in_flight(), &mut done).unwrap();
                    for d in done.drain(..) {
                        let what = sent.remove(&d.token).expect("a token completed twice");
                        check(what, d);
                        completed += 1;
                    }
                }
                assert!(sent.is_empty(), "tokens never completed: {}", sent.len());
                completed
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(total, 6 * 3000, "every request sent completed once");
    let stats = exec.stats();
    assert_eq!(stats.total.error_count(), 0, "{stats}");
}

/// Tokio tasks on a 2-worker runtime, each with a session awaited through `next`: no blocking,
/// every token exactly once.
#[test]
fn tokio_tasks_with_sessions() {
    let exec = Arc::new(Executor::builder().shards(2).build().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<_> = files_on_every_shard(&exec, dir.path(), "t", 1, 64)
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    for (i, f) in files.iter().enumerate() {
        for b in 0..16u64 {
            let off = b * BS as u64;
            ok(exec.write(f, off, block(i, off)), "write");
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let total: u64 = rt.block_on(async {
        let tasks: Vec<_> = (0..32u64)
            .map(|t| {
                let (exec, files) = (Arc::clone(&exec), files.clone());
                tokio::spawn(async move {
                    let mut rng = Rng::new(100 + t);
                    let mut s = exec.session_with_capacity(8).unwrap();
                    let mut sent = HashMap::new();
                    let mut done = Vec::new();
                    let mut n = 0u64;
                    for i in 0..400u64 {
                        let fi = rng.below(files.len() as u64) as usize;
                        let off = rng.below(16) * BS as u64;
                        let token = (t << 32) | i;
                        s.read(&files[fi], off, BS, Vec::new(), token).unwrap();
                        sent.insert(
                            token,
                            Sent::Read {
                                file: fi,
                                offset: off,
                            },
                        );
                        if s.in_flight() == s.capacity() || rng.below(3) == 0 {
                            s.next(&mut done).await;
                        }
                        for d in done.drain(..) {
                            check(sent.remove(&d.token).expect("once"), d);
                            n += 1;
                        }
                    }
                    while s.in_flight() > 0 {
                        s.next(&mut done).await;
                        for d in done.drain(..) {
                            check(sent.remove(&d.token).expect("once"), d);
                            n += 1;
                        }
                    }
                    assert!(sent.is_empty());
                    n
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        total
    });
    assert_eq!(total, 32 * 400);
}

/// Sessions dropped with requests queued, in flight and done-but-not-taken: nothing hangs, the
/// shards keep serving, unsent and unissued requests count as cancelled, and memory stays flat.
#[test]
fn dropping_sessions_with_requests_in_flight() {
    // Requests must be queued and in flight on the shards: none is served on this thread.
    let exec = Executor::builder()
        .shards(2)
        .inline_reads(false)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<_> = files_on_every_shard(&exec, dir.path(), "d", 1, 64)
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    for f in &files {
        ok(exec.write(f, 0, vec![9u8; 64 * 1024]), "write");
    }
    let rss = executor_util::rss_bytes;
    // A file's size() runs after every earlier request on it: once each file's is answered, the
    // dropped sessions' reads are all done, however far behind the shards were, and RSS counts
    // only what stays.
    let drained = || {
        for f in &files {
            ok(exec.size(f), "size");
        }
    };
    let mut rss_after_warmup = 0;
    for round in 0..400u64 {
        let mut s = exec.session_with_capacity(64).unwrap();
        for i in 0..64u64 {
            let f = &files[(i % files.len() as u64) as usize];
            s.read(f, (i % 16) * 4096, 4096, Vec::with_capacity(4096), i)
                .unwrap();
            if i == 31 {
                s.flush(); // half sent, half only queued
            }
        }
        if round % 3 == 0 {
            // Some done and left untaken in the session.
            let mut out = Vec::new();
            s.wait(1, &mut out).unwrap();
        }
        drop(s);
        // Wait for the dropped session's requests each round: at most one session's worth is in
        // flight at a time, so RSS measures what stays (a leak), not how far behind a loaded
        // machine let the shards fall (glibc keeps part of that peak however much it trims: the
        // test once saw 36 MB of it under load).
        drained();
        if round == 50 {
            rss_after_warmup = rss();
        }
    }
    drained();
    // The shards go on.
    for f in &files {
        assert_eq!(ok(exec.read(f, 0, 4), "read after drops"), vec![9u8; 4]);
    }
    let stats = exec.stats();
    assert!(
        stats.total.cancelled >= 400 * 32,
        "unsent requests count as cancelled: {}",
        stats.total.cancelled
    );
    assert_eq!(stats.total.error_count(), 0, "{stats}");
    let grown = rss().saturating_sub(rss_after_warmup);
    assert!(
        grown < 32 << 20,
        "RSS grew by {grown} bytes over 350 rounds"
    );
    exec.shutdown().unwrap();
}

/// A session used after shutdown gets every token back with Shutdown; one whose shards stop with
/// its requests in flight gets them all (done or Shutdown), none lost.
#[test]
fn session_across_shutdown() {
    let exec = Executor::builder().shards(1).build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = ok(
        exec.open(
            dir.path().join("f"),
            OpenOptions::new().read(true).write(true).create(true),
        ),
        "open",
    );
    let mut s = exec.session_with_capacity(200).unwrap();
    for i in 0..100u64 {
        s.write(&f, i * 8, vec![1u8; 8], i).unwrap();
    }
    s.flush();
    exec.shutdown().unwrap();
    for i in 100..200u64 {
        s.write(&f, i * 8, vec![1u8; 8], i).unwrap();
    }
    let mut done = Vec::new();
    s.wait_timeout(200, HANG, &mut done).unwrap();
    assert_eq!(done.len(), 200);
    let mut seen = [false; 200];
    for d in done {
        assert!(!seen[d.token as usize]);
        seen[d.token as usize] = true;
        if d.token >= 100 {
            assert_eq!(d.result, Err(Error::Shutdown), "token {}", d.token);
        } else {
            assert_eq!(d.result, Ok(8), "sent before shutdown: drained");
        }
        assert_eq!(d.buf, vec![1u8; 8]);
    }
}

/// With DEFER_TASKRUN, completions that need task work (O_DIRECT) are posted only by an enter
/// with GETEVENTS. A shard that never runs out of work (its inbox busy with page-cache reads,
/// and a task that always yields, so it never sleeps: arranged, not hoped for) must still post
/// them every turn: every O_DIRECT read completes while the shard's sleep count stays the same.
/// (Before the fix, deferred completions were posted only when the shard slept.)
#[test]
fn direct_read_is_not_starved_by_a_busy_inbox() {
    // The page-cache load must keep the shard busy: none of it is served on the callers' threads.
    let exec = Arc::new(
        Executor::builder()
            .shards(1)
            .inline_reads(false)
            .build()
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let hot = ok(
        exec.open(dir.path().join("hot"), &executor_util::rwc()),
        "open",
    );
    ok(exec.write(&hot, 0, vec![3u8; 1 << 20]), "fill hot");
    let cold_path = dir.path().join("cold");
    std::fs::write(&cold_path, vec![5u8; 1 << 20]).unwrap();
    let cold = match exec
        .open(&cold_path, OpenOptions::new().read(true).direct(true))
        .wait()
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("skipped: this filesystem refuses O_DIRECT ({e}); the test needs it");
            return;
        }
    };
    // Alone, for reference.
    let alone = {
        let t = Instant::now();
        ok(exec.read(&cold, 0, 4096), "direct read alone");
        t.elapsed()
    };

    // A task that yields until told to stop: a shard with a runnable task never sleeps.
    let stop = Arc::new(AtomicBool::new(false));
    let hog = exec.spawn_on(0, {
        let stop = Arc::clone(&stop);
        async move {
            while !stop.load(Ordering::Relaxed) {
                ringshard::yield_now().await;
            }
        }
    });
    // Producers that keep the inbox busy: one message per request (per-request handles), up to
    // 1000 outstanding each.
    let load_ops = Arc::new(AtomicU64::new(0));
    let loaders: Vec<_> = (0..3)
        .map(|t| {
            let (exec, hot, stop, load_ops) = (
                Arc::clone(&exec),
                hot.clone(),
                Arc::clone(&stop),
                Arc::clone(&load_ops),
            );
            std::thread::spawn(move || {
                let mut rng = Rng::new(t);
                let mut q = std::collections::VecDeque::new();
                while !stop.load(Ordering::Relaxed) {
                    while q.len() < 1000 {
                        q.push_back(exec.read(&hot, rng.below(256) * 4096, 4096));
                    }
                    for _ in 0..100 {
                        if let Some(c) = q.pop_front() {
                            c.wait().unwrap();
                        }
                    }
                    load_ops.fetch_add(100, Ordering::Relaxed);
                }
                for c in q {
                    c.wait().unwrap();
                }
            })
        })
        .collect();
    executor_util::eventually("the load runs", HANG, || {
        load_ops.load(Ordering::Relaxed) > 0
    });
    let sleeps = exec.stats().total.sleeps;
    let mut times = Vec::new();
    for i in 1..=20u64 {
        let t = Instant::now();
        let mut c = exec.read(&cold, i * 4096 * 4, 4096);
        let data = c
            .wait_timeout(HANG)
            .unwrap_or_else(|e| panic!("O_DIRECT read {i} under load: {e}"));
        times.push(t.elapsed());
        assert_eq!(data, vec![5u8; 4096]);
    }
    assert_eq!(
        exec.stats().total.sleeps,
        sleeps,
        "the shard slept while a task was runnable"
    );
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.join().unwrap();
    }
    hog.wait().unwrap();
    times.sort();
    eprintln!(
        "O_DIRECT 4 KiB read: alone {alone:?}; under load (the shard never slept) median {:?}, \
         max {:?}; {} page-cache reads by the load",
        times[times.len() / 2],
        times[times.len() - 1],
        load_ops.load(Ordering::Relaxed)
    );
}

/// A file whose last handle is dropped while a session (or batch) still holds unflushed requests
/// for it closes after those requests, not before them.
#[test]
fn dropping_the_last_file_handle_before_a_flush() {
    // The requests must wait in the session and batch (a read served on this thread holds
    // nothing).
    let exec = Executor::builder()
        .shards(1)
        .inline_reads(false)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), vec![4u8; 8192]).unwrap();
    for round in 0..50u64 {
        let f = ok(
            exec.open(dir.path().join("f"), OpenOptions::new().read(true)),
            "open",
        );
        let mut s = exec.session();
        s.read(&f, 0, 4096, Vec::new(), round).unwrap();
        let mut batch = exec.batch();
        let c = batch.read(&f, 4096, 4096);
        drop(f); // the last handle: its close goes out when the requests have
        batch.submit();
        let mut done = Vec::new();
        s.wait(1, &mut done).unwrap();
        assert_eq!(done[0].result, Ok(4096), "round {round}");
        assert_eq!(c.wait().unwrap(), vec![4u8; 4096], "round {round}");
    }
    // Every file was closed: only the executor's own descriptors remain open on it.
    let open_on_f = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t == &dir.path().join("f"))
        .count();
    assert!(
        open_on_f <= 1,
        "{open_on_f} descriptors still open on the file"
    );
}
