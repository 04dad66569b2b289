//! Inline cached reads (`ExecutorBuilder::inline_reads`): a buffered read first tries
//! `preadv2(RWF_NOWAIT)` on the caller's thread. Every test runs on both backends (io_uring and
//! the threads backend), on real files.
//!
//! What must hold: hits are done at once (a ready `Completion`, a `Done` in the session's own
//! queue) and counted in the owning shard's statistics; a read never misses a mutation the same
//! caller sent before it (it goes to the shard, and waits there, while one is unfinished); data
//! not in the page cache goes to the shard (with what arrived); a filesystem that refuses
//! RWF_NOWAIT is not asked again; longer reads than the limit go to the shard; the builder turns
//! it off; a descriptor closed while another clone reads inline is never read as another file.

mod executor_util;

use executor_util::*;
use ringshard::{BackendChoice, Error, Executor, File, OpKind, OpenOptions, ShardStats};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

const BACKENDS: [BackendChoice; 2] = [BackendChoice::IoUring, BackendChoice::Threads];

fn exec_on(backend: BackendChoice) -> Executor {
    Executor::builder()
        .shards(2)
        .backend(backend)
        .build()
        .expect("executor")
}

/// The statistics of `file`'s shard.
fn shard_stats(exec: &Executor, file: &File) -> ShardStats {
    exec.stats().shards[file.shard()].clone()
}

/// `len` known bytes, written with std (so they are in the page cache), opened through `exec`
/// with `opts`.
fn file_with(exec: &Executor, path: &Path, len: usize, opts: &OpenOptions) -> (File, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(path, &data).unwrap();
    (ok(exec.open(path, opts), "open"), data)
}

fn ro() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true);
    o
}

/// Holds `shard` in a `submit_to` closure until the returned sender is used (or dropped): what
/// is sent to the shard meanwhile stays pending, deterministically.
fn hold_shard(exec: &Executor, shard: usize) -> (mpsc::Sender<()>, ringshard::Completion<()>) {
    let (started_tx, started_rx) = mpsc::channel();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let task = exec.submit_to(shard, move |_| {
        started_tx.send(()).unwrap();
        let _ = gate_rx.recv_timeout(HANG);
    });
    started_rx
        .recv_timeout(HANG)
        .expect("the holding closure started");
    (gate_tx, task)
}

/// Hits from every caller-side API: done at once, right bytes, counted as inline in the owning
/// shard (and as reads, with their bytes and latency), visible in the table and in Prometheus.
#[test]
fn cached_reads_are_done_on_the_callers_thread_and_counted() {
    for backend in BACKENDS {
        let exec = Arc::new(exec_on(backend));
        let dir = tempfile::tempdir().unwrap();
        let (f, data) = file_with(&exec, &dir.path().join("f"), 256 * 1024, &rw());
        let before = shard_stats(&exec, &f);
        let mut n = 0u64;
        let mut bytes = 0u64;
        let mut check = |got: Vec<u8>, off: usize, len: usize, what: &str| {
            assert_bytes_eq(&got, &data[off..(off + len).min(data.len())], what);
            n += 1;
            bytes += got.len() as u64;
        };

        // Blocking caller: ready at once.
        let c = exec.read(&f, 4096, 4096);
        assert!(
            c.is_done(),
            "{backend:?}: a cached read is done when it returns"
        );
        check(c.wait().unwrap(), 4096, 4096, "read");
        let c = exec.read_into(&f, 100, 5000, Vec::with_capacity(8192));
        assert!(c.is_done());
        check(c.wait().unwrap(), 100, 5000, "read_into");
        let c = exec
            .timeout(Duration::from_secs(5))
            .read(&f, 65_536, 65_536);
        assert!(c.is_done(), "a read of the limit (64 KiB) is tried inline");
        check(c.wait().unwrap(), 65_536, 65_536, "timeout read");
        // Past the end of the file: a short read, confirmed by a second call, done here too.
        let c = exec.read(&f, 256 * 1024 - 10, 4096);
        assert!(c.is_done());
        check(c.wait().unwrap(), 256 * 1024 - 10, 10, "read at the end");

        // A batch's read is done when added.
        let mut b = exec.batch();
        let c = b.read(&f, 8192, 300);
        assert!(c.is_done());
        b.submit();
        check(c.wait().unwrap(), 8192, 300, "batch read");

        // A session's read goes straight to its own queue.
        let mut s = exec.session();
        s.read(&f, 12_345, 4096, Vec::new(), 7).unwrap();
        assert_eq!(s.in_flight(), 1);
        let mut out = Vec::new();
        assert_eq!(s.reap(&mut out), 1, "the result is there without waiting");
        assert_eq!(out[0].token, 7);
        assert_eq!(out[0].result, Ok(4096));
        check(
            std::mem::take(&mut out[0].buf),
            12_345,
            4096,
            "session read",
        );
        assert_eq!(s.in_flight(), 0);

        // From a tokio task, and from a task on the file's own shard.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let got = rt.block_on(exec.read(&f, 1000, 2000)).unwrap();
        check(got, 1000, 2000, "tokio await");
        let (e2, f2) = (Arc::clone(&exec), f.clone());
        let got = exec
            .spawn_on_owner(&f, async move {
                let local = ringshard::local().expect("on a shard");
                let a = local.read(&f2, 0, 512).await?;
                let b = e2.read(&f2, 512, 512).await?;
                Ok::<_, Error>([a, b].concat())
            })
            .wait()
            .unwrap()
            .unwrap();
        check(got, 0, 1024, "reads in a task on the shard");
        let n = n + 1; // that check was of two reads

        let after = shard_stats(&exec, &f);
        let d = after.since(&before);
        assert_eq!(
            d.inline_reads, n,
            "{backend:?}: every read above was inline"
        );
        assert_eq!(d.inline_fallbacks, 0);
        assert_eq!(d.ops(OpKind::Read), n, "inline reads count as reads");
        assert_eq!(d.bytes_read, bytes);
        assert_eq!(d.inline_latency().count, n);
        assert_eq!(d.read_latency().count, n);
        // The other shard counted none of them.
        let other = &exec.stats().shards[1 - f.shard()];
        assert_eq!(other.inline_reads, 0);

        let stats = exec.stats();
        let table = stats.to_string();
        assert!(table.lines().nth(1).unwrap().contains("inline"), "{table}");
        let prom = stats.to_prometheus();
        let line = format!(
            "ringshard_inline_reads_total{{shard=\"{}\",backend=\"{}\"",
            f.shard(),
            stats.shards[f.shard()].backend.name()
        );
        let sample = prom
            .lines()
            .find(|l| l.starts_with(&line))
            .unwrap_or_else(|| panic!("no {line} in\n{prom}"));
        assert!(
            sample.ends_with(&format!(" {}", after.inline_reads)),
            "{sample}"
        );
        assert!(prom.contains("# TYPE ringshard_inline_read_latency_seconds histogram"));
        assert!(prom.contains("ringshard_inline_fallbacks_total{"));
        #[cfg(feature = "serde")]
        assert!(stats.to_json().contains("\"inline_reads\""));

        // Each inline read is timed inside the call that makes it, so their total is at most the
        // calls' own (up to the histogram's 6%): a clock read in the wrong unit would not be.
        let before = shard_stats(&exec, &f);
        let t = std::time::Instant::now();
        for i in 0..500u64 {
            let c = exec.read(&f, (i % 60) * 4096, 4096);
            assert!(c.is_done());
            drop(c.wait().unwrap());
        }
        let calls = t.elapsed().as_secs_f64() * 1e6;
        let d = shard_stats(&exec, &f).since(&before);
        let l = d.inline_latency();
        assert_eq!(l.count, 500);
        let timed = l.mean_us * l.count as f64;
        assert!(
            timed > 0.0 && timed <= calls * 1.07,
            "{backend:?}: inline reads timed {timed:.1} µs in all, the calls took {calls:.1} µs"
        );
        exec.shutdown().unwrap();
    }
}

/// A read sent after a mutation of the same inode (through any handle) goes to the shard and
/// waits there while the mutation is unfinished (the shard is held, so it is), then sees it; once
/// it has finished, reads are inline again.
#[test]
fn a_read_after_an_unfinished_mutation_waits_for_it() {
    for backend in BACKENDS {
        let exec = exec_on(backend);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let (f, mut data) = file_with(&exec, &path, 64 * 1024, &rw());
        // Other handles on the same inode: reads through one see writes through the other.
        let reader = ok(exec.open(&path, &ro()), "open read-only");
        let appender = ok(
            exec.open(&path, OpenOptions::new().append(true)),
            "open append",
        );
        // Each case changes the model and sends its mutation; the result is waited for later.
        type Waiter = Box<dyn FnOnce() -> ringshard::Result<()>>;
        fn waiter<T: 'static>(c: ringshard::Completion<T>) -> Waiter {
            Box::new(move || wait(c).map(drop))
        }
        type Mutate<'a> = Box<dyn Fn(&mut Vec<u8>) -> Waiter + 'a>;
        let cases: Vec<(&str, Mutate)> = vec![
            (
                "write",
                Box::new(|d: &mut Vec<u8>| {
                    d[100..200].fill(0xAB);
                    waiter(exec.write(&f, 100, vec![0xABu8; 100]))
                }),
            ),
            (
                "write past the end",
                Box::new(|d: &mut Vec<u8>| {
                    let at = d.len() + 5000;
                    d.resize(at, 0);
                    d.extend_from_slice(&[7u8; 50]);
                    waiter(exec.write(&f, at as u64, vec![7u8; 50]))
                }),
            ),
            (
                "set_len",
                Box::new(|d: &mut Vec<u8>| {
                    d.truncate(30_000);
                    waiter(exec.set_len(&f, 30_000))
                }),
            ),
            (
                "fallocate",
                Box::new(|d: &mut Vec<u8>| {
                    d.resize(40_000, 0);
                    waiter(exec.fallocate(&f, ringshard::FallocateMode::Allocate, 0, 40_000))
                }),
            ),
            (
                "append",
                Box::new(|d: &mut Vec<u8>| {
                    d.extend_from_slice(&[9u8; 300]);
                    waiter(exec.append(&appender, vec![9u8; 300]))
                }),
            ),
            (
                "writev",
                Box::new(|d: &mut Vec<u8>| {
                    d[0..4].copy_from_slice(b"abcd");
                    waiter(exec.write_vectored(&f, 0, vec![b"ab".to_vec(), b"cd".to_vec()]))
                }),
            ),
        ];
        for (what, mutate) in &cases {
            let before = shard_stats(&exec, &f);
            let (gate, held) = hold_shard(&exec, f.shard());
            let m = mutate(&mut data);
            // The whole file, through the other handle: routed, so not done while the shard is
            // held (an inline read would be done by now).
            let r = exec.read(&reader, 0, 128 * 1024);
            let r2 = exec.read(&f, 0, 4096);
            assert!(
                !r.is_done() && !r2.is_done(),
                "{backend:?} {what}: a read went inline"
            );
            let mut s = exec.session();
            s.read(&reader, 0, 4096, Vec::new(), 1).unwrap();
            let mut out = Vec::new();
            assert_eq!(
                s.reap(&mut out),
                0,
                "{what}: the session's read went inline"
            );
            gate.send(()).unwrap();
            ok(held, "holding closure");
            m().unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_bytes_eq(&ok(r, what), &data, what);
            assert_bytes_eq(&ok(r2, what), &data[..4096.min(data.len())], what);
            s.wait(1, &mut out).unwrap();
            assert_bytes_eq(&out[0].buf, &data[..4096.min(data.len())], what);
            let d = shard_stats(&exec, &f).since(&before);
            assert_eq!(d.inline_reads, 0, "{what}");
            assert_eq!(d.inline_fallbacks, 0, "{what}: no attempt was made");
            // Finished: the next read is inline again, and sees it.
            let c = exec.read(&reader, 0, 4096);
            assert!(
                c.is_done(),
                "{backend:?} {what}: not inline after the mutation finished"
            );
            assert_bytes_eq(&c.wait().unwrap(), &data[..4096.min(data.len())], what);
        }

        // A write queued in a session (not even sent yet) or in a batch holds reads back too.
        let before = shard_stats(&exec, &f);
        let mut s = exec.session();
        s.write(&f, 0, b"SESSION".to_vec(), 1).unwrap();
        let c = exec.read(&f, 0, 7);
        let mut b = exec.batch();
        let w = b.write(&f, 7, b"BATCH".to_vec());
        let c2 = b.read(&f, 0, 12);
        assert!(
            !c2.is_done(),
            "a batch read after a batch write went inline"
        );
        b.submit();
        let mut out = Vec::new();
        s.wait(1, &mut out).unwrap();
        assert_eq!(out[0].result, Ok(7));
        assert_eq!(ok(w, "batch write"), 5);
        // The routed reads went out before the session's write was sent (at `wait`): they see
        // the bytes as they were then, as without inline reads; the batch's read sees its write.
        let mut then = data[..7].to_vec();
        assert_eq!(ok(c, "read"), then);
        then.extend_from_slice(b"BATCH");
        assert_eq!(ok(c2, "batch read"), then);
        let d = shard_stats(&exec, &f).since(&before);
        assert_eq!((d.inline_reads, d.ops(OpKind::Read)), (0, 2), "{backend:?}");
        assert_eq!(ok(exec.read(&f, 0, 12), "read"), b"SESSIONBATCH");
        exec.shutdown().unwrap();
    }
}

/// Writes back and drops `path`'s pages from the page cache; checks that none is left.
fn drop_cache(path: &Path) {
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: fadvise takes no memory.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0, "posix_fadvise");
    let left = resident_pages(path).iter().filter(|r| **r).count();
    assert_eq!(
        left,
        0,
        "{left} pages of {} stayed in the page cache",
        path.display()
    );
}

/// Runs `attempt` until it reports that the inline attempt fell back (`true`), at most 50 times.
/// An RWF_NOWAIT read of a page not in the cache starts its readahead before it answers EAGAIN;
/// on a fast disk that I/O can finish before the read looks again, and the kernel then completes
/// the whole read inline. That outcome is correct (each attempt checks its data), but it is not
/// the path under test, so the page cache is arranged again and the read repeated.
fn until_it_falls_back(what: &str, mut attempt: impl FnMut() -> bool) {
    for _ in 0..50 {
        if attempt() {
            return;
        }
    }
    panic!("{what}: 50 reads of uncached data all completed inline (readahead always won)");
}

/// Data not in the page cache: the attempt gets EAGAIN, and the shard reads it. Part of it
/// cached: the part read inline is kept, and the shard reads the rest.
#[test]
fn uncached_data_goes_to_the_shard() {
    for backend in BACKENDS {
        let exec = exec_on(backend);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cold");
        let (f, data) = file_with(&exec, &path, 64 * 1024, &rw());
        until_it_falls_back("cold read", || {
            drop_cache(&path);
            let before = shard_stats(&exec, &f);
            assert_bytes_eq(
                &ok(exec.read(&f, 8192, 4096), "cold read"),
                &data[8192..12_288],
                "cold",
            );
            let d = shard_stats(&exec, &f).since(&before);
            if d.inline_reads == 1 {
                return false;
            }
            assert_eq!(
                (d.inline_reads, d.inline_fallbacks, d.ops(OpKind::Read)),
                (0, 1, 1),
                "{backend:?}: the attempt fell back, the shard read it"
            );
            true
        });

        // Only the first page cached (read without readahead): 4 KiB inline, the rest routed.
        let std_f = std::fs::File::open(&path).unwrap();
        // SAFETY: fadvise takes no memory.
        unsafe { libc::posix_fadvise(std_f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
        let mut page = vec![0u8; 4096];
        until_it_falls_back("partly cached (session)", || {
            drop_cache(&path);
            std::os::unix::fs::FileExt::read_exact_at(&std_f, &mut page, 0).unwrap();
            let res = resident_pages(&path);
            assert!(
                res[0] && !res[1],
                "page 0 cached, page 1 not: {:?}",
                &res[..4]
            );
            let before = shard_stats(&exec, &f);
            let mut s = exec.session();
            s.read(&f, 0, 16_384, Vec::new(), 1).unwrap();
            let mut out = Vec::new();
            s.wait(1, &mut out).unwrap();
            assert_eq!(out[0].result, Ok(16_384));
            assert_bytes_eq(&out[0].buf, &data[..16_384], "partly cached (session)");
            let d = shard_stats(&exec, &f).since(&before);
            if d.inline_reads == 1 {
                return false;
            }
            assert_eq!((d.inline_reads, d.inline_fallbacks), (0, 1), "{backend:?}");
            true
        });
        // The same through a Completion, from a page in the middle of the file.
        until_it_falls_back("partly cached (completion)", || {
            drop_cache(&path);
            std::os::unix::fs::FileExt::read_exact_at(&std_f, &mut page, 20_480).unwrap();
            let before = shard_stats(&exec, &f);
            assert_bytes_eq(
                &ok(exec.read(&f, 20_480 + 100, 9000), "partly cached"),
                &data[20_580..29_580],
                "partly cached (completion)",
            );
            let d = shard_stats(&exec, &f).since(&before);
            if d.inline_reads == 1 {
                return false;
            }
            assert_eq!((d.inline_reads, d.inline_fallbacks), (0, 1), "{backend:?}");
            true
        });
        exec.shutdown().unwrap();
    }
}

/// A filesystem that refuses RWF_NOWAIT (tmpfs on Linux 6.18): the first read of a file falls
/// back, and its later reads are not tried.
#[test]
fn a_refused_nowait_stops_the_attempts() {
    let tmpfs = Tmpfs::mount("1m");
    let dir = match &tmpfs {
        Ok(t) => t.path().to_path_buf(),
        Err(why) if Path::new("/dev/shm").is_dir() => {
            eprintln!("using /dev/shm ({why})");
            Path::new("/dev/shm").to_path_buf()
        }
        Err(why) => {
            eprintln!("skipped: no tmpfs ({why})");
            return;
        }
    };
    for backend in BACKENDS {
        let exec = exec_on(backend);
        let path = dir.join(format!(
            "ringshard-inline-{}-{backend:?}",
            std::process::id()
        ));
        let (f, data) = file_with(&exec, &path, 20_000, &rw());
        // Whether this filesystem refuses it (it may learn RWF_NOWAIT one day).
        let probe = std::fs::File::open(&path).unwrap();
        let mut b = [0u8; 16];
        let iov = libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        };
        // SAFETY: `iov` names `b`, which lives for the call.
        let r = unsafe { libc::preadv2(probe.as_raw_fd(), &iov, 1, 0, libc::RWF_NOWAIT) };
        let refused =
            r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EOPNOTSUPP);
        let before = shard_stats(&exec, &f);
        for i in 0..3 {
            assert_bytes_eq(
                &ok(exec.read(&f, 100, 1000), "read"),
                &data[100..1100],
                "tmpfs",
            );
            let d = shard_stats(&exec, &f).since(&before);
            if refused {
                assert_eq!(
                    (d.inline_reads, d.inline_fallbacks),
                    (0, 1),
                    "{backend:?} read {i}"
                );
            } else {
                eprintln!("this tmpfs does RWF_NOWAIT: nothing to check");
            }
        }
        drop(f);
        exec.shutdown().unwrap();
        let _ = std::fs::remove_file(&path);
    }
}

/// Reads longer than the limit, O_DIRECT reads, reads with RWF flags and vectored reads go to
/// the shard without an attempt; `inline_reads(false)` turns it all off; the limit is checked.
#[test]
fn what_is_not_tried_inline() {
    match Executor::builder()
        .inline_read_limit(ringshard::MAX_INLINE_READ_LIMIT + 1)
        .build()
    {
        Err(Error::InvalidConfig(m)) => assert!(m.contains("inline_read_limit"), "{m}"),
        other => panic!("a limit over the maximum: {other:?}"),
    }
    for backend in BACKENDS {
        let exec = Executor::builder()
            .shards(2)
            .backend(backend)
            .inline_read_limit(8192)
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (f, data) = file_with(&exec, &dir.path().join("f"), 64 * 1024, &rw());
        let before = shard_stats(&exec, &f);
        let c = exec.read(&f, 0, 8192);
        assert!(c.is_done(), "{backend:?}: a read of the limit is inline");
        assert_bytes_eq(&c.wait().unwrap(), &data[..8192], "at the limit");
        assert_bytes_eq(
            &ok(exec.read(&f, 0, 8193), "over"),
            &data[..8193],
            "over the limit",
        );
        let flagged = exec.read_with(&f, 0, 100, ringshard::RwFlags::NOWAIT);
        assert_bytes_eq(&ok(flagged, "read_with"), &data[..100], "read_with");
        let v = ok(exec.read_vectored(&f, 0, &[10, 20]), "readv");
        assert_eq!(v, vec![data[..10].to_vec(), data[10..30].to_vec()]);
        let d = shard_stats(&exec, &f).since(&before);
        assert_eq!((d.inline_reads, d.inline_fallbacks), (1, 0), "{backend:?}");
        assert_eq!(d.ops(OpKind::Read), 3);

        let mut o = rw();
        o.direct(true);
        if let Ok(direct) = wait(exec.open(dir.path().join("f"), &o)) {
            let before = shard_stats(&exec, &direct);
            assert_bytes_eq(
                &ok(exec.read(&direct, 4096, 4096), "direct"),
                &data[4096..8192],
                "o_direct",
            );
            let d = shard_stats(&exec, &direct).since(&before);
            assert_eq!(
                (d.inline_reads, d.inline_fallbacks, d.ops(OpKind::Read)),
                (0, 0, 1)
            );
        }
        exec.shutdown().unwrap();

        let off = Executor::builder()
            .shards(2)
            .backend(backend)
            .inline_reads(false)
            .build()
            .unwrap();
        let f = ok(off.open(dir.path().join("f"), &rw()), "open");
        let mut s = off.session();
        s.read(&f, 0, 100, Vec::new(), 1).unwrap();
        let mut out = Vec::new();
        s.wait(1, &mut out).unwrap();
        assert_bytes_eq(&out[0].buf, &data[..100], "session, off");
        assert_bytes_eq(&ok(off.read(&f, 50, 100), "read"), &data[50..150], "off");
        let st = shard_stats(&off, &f);
        assert_eq!(
            (st.inline_reads, st.inline_fallbacks, st.ops(OpKind::Read)),
            (0, 0, 2)
        );
        off.shutdown().unwrap();
    }
}

/// A reader held (by a test hook) between its checks and its system call, on the descriptor of a
/// file that another thread then closes (explicitly through another clone, or by shutting the
/// executor down): the close waits for it, so the descriptor number cannot be reused meanwhile,
/// and the read returns the file's own bytes. (Without the wait, the number goes to the files
/// opened meanwhile and the read returns their bytes.)
#[test]
fn a_close_waits_for_an_inline_read_in_progress() {
    for backend in BACKENDS {
        for by_shutdown in [false, true] {
            let armed = Arc::new(AtomicBool::new(false));
            let (in_tx, in_rx) = mpsc::channel::<()>();
            let (gate_tx, gate_rx) = mpsc::channel::<()>();
            let (in_tx, gate_rx) = (Mutex::new(in_tx), Mutex::new(gate_rx));
            let hook_armed = Arc::clone(&armed);
            let hook = Arc::new(move || {
                if hook_armed.swap(false, Ordering::SeqCst) {
                    in_tx.lock().unwrap().send(()).unwrap();
                    let _ = gate_rx.lock().unwrap().recv_timeout(HANG);
                }
            });
            let exec = Arc::new(
                Executor::builder()
                    .shards(2)
                    .backend(backend)
                    .inline_read_hook_for_tests(hook)
                    .build()
                    .unwrap(),
            );
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("a"), vec![0xAAu8; 8192]).unwrap();
            std::fs::write(dir.path().join("b"), vec![0xBBu8; 8192]).unwrap();
            let f = ok(exec.open(dir.path().join("a"), &ro()), "open");
            armed.store(true, Ordering::SeqCst);
            let (e, clone) = (Arc::clone(&exec), f.clone());
            let reader = std::thread::spawn(move || wait(e.read(&clone, 0, 4096)));
            in_rx
                .recv_timeout(HANG)
                .expect("the reader reached its system call");
            // Close it now, and give an unprotected close time to happen (either way is fine).
            let (done_tx, done_rx) = mpsc::channel();
            if by_shutdown {
                let e = Arc::clone(&exec);
                std::thread::spawn(move || done_tx.send(e.shutdown()).unwrap());
            } else {
                let c = exec.close(&f);
                std::thread::spawn(move || done_tx.send(wait(c)).unwrap());
            }
            let early = done_rx.recv_timeout(Duration::from_millis(200)).ok();
            // Take descriptor numbers: the closed one's is the lowest free, if it was freed.
            let others: Vec<_> = (0..16)
                .map(|_| std::fs::File::open(dir.path().join("b")).unwrap())
                .collect();
            gate_tx.send(()).unwrap();
            let got = reader.join().unwrap();
            match got {
                Ok(d) => assert!(
                    d.len() == 4096 && d.iter().all(|&b| b == 0xAA),
                    "{backend:?} shutdown {by_shutdown}: the read returned another file's bytes \
                     (close finished early: {})",
                    early.is_some()
                ),
                Err(e) => panic!("{backend:?} shutdown {by_shutdown}: {e}"),
            }
            let done = match early {
                Some(r) => r,
                None => done_rx.recv_timeout(HANG).expect("the close finished"),
            };
            done.unwrap();
            drop(others);
            let _ = exec.shutdown();
        }
    }
}

/// While clones of a handle read inline in a loop on other threads, the file is closed
/// (explicitly, or by shutdown) and new files take its descriptor numbers: no read ever returns
/// another file's bytes; each read returns the file's bytes or fails as closed.
#[test]
fn closing_under_inline_readers_never_reads_another_file() {
    for backend in BACKENDS {
        for round in 0..10 {
            let exec = exec_on(backend);
            let dir = tempfile::tempdir().unwrap();
            let (f, _) = file_with(&exec, &dir.path().join("a"), 64 * 1024, &rw());
            std::fs::write(dir.path().join("a"), vec![0xAAu8; 64 * 1024]).unwrap();
            std::fs::write(dir.path().join("b"), vec![0xBBu8; 64 * 1024]).unwrap();
            let by_shutdown = round % 4 == 3;
            let reads = std::sync::atomic::AtomicU64::new(0);
            let stop = AtomicBool::new(false);
            std::thread::scope(|scope| {
                let readers: Vec<_> = (0..2)
                    .map(|t| {
                        let (f, exec, reads, stop) = (f.clone(), &exec, &reads, &stop);
                        scope.spawn(move || {
                            let mut i = 0u64;
                            while !stop.load(Ordering::Relaxed) {
                                i += 1;
                                match wait(exec.read(&f, (i * 4096 + t * 100) % 60_000, 4096)) {
                                    Ok(d) => {
                                        assert!(
                                            d.iter().all(|&b| b == 0xAA),
                                            "{backend:?} round {round}: read another file's bytes"
                                        );
                                        reads.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Err(Error::BadHandle(_) | Error::Shutdown) => break,
                                    Err(e) => panic!("{backend:?} round {round}: {e}"),
                                }
                            }
                        })
                    })
                    .collect();
                eventually("the readers read", HANG, || {
                    reads.load(Ordering::Relaxed) >= 200
                });
                if by_shutdown {
                    exec.shutdown().unwrap();
                } else {
                    ok(exec.close(&f), "close");
                }
                // New descriptors, likely to reuse the closed one's number.
                let mut others = Vec::new();
                for _ in 0..8 {
                    others.push(std::fs::File::open(dir.path().join("b")).unwrap());
                    if !by_shutdown {
                        others.push(std::fs::File::open(dir.path().join("b")).unwrap());
                        let _ = wait(exec.open(dir.path().join("b"), &ro()));
                    }
                }
                stop.store(true, Ordering::Relaxed);
                for r in readers {
                    r.join().unwrap();
                }
            });
        }
    }
}

/// A tokio task whose reads are all served inline still yields to its runtime now and then: the
/// other task of a current-thread runtime runs long before it is done (with a Completion and
/// with a Session).
#[test]
fn a_task_served_inline_lets_others_run() {
    let exec = Arc::new(exec_on(BackendChoice::IoUring));
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = file_with(&exec, &dir.path().join("f"), 64 * 1024, &rw());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for use_session in [false, true] {
        let before = shard_stats(&exec, &f);
        let flag = Arc::new(AtomicBool::new(false));
        let (e, file, seen) = (Arc::clone(&exec), f.clone(), Arc::clone(&flag));
        let seen_at = rt.block_on(async move {
            let reader = tokio::spawn(async move {
                let mut s = e.session();
                let mut out = Vec::new();
                for i in 0..1000u64 {
                    if seen.load(Ordering::Relaxed) {
                        return Some(i);
                    }
                    if use_session {
                        s.read(&file, (i % 16) * 4096, 4096, Vec::new(), i).unwrap();
                        out.clear();
                        s.next(&mut out).await;
                    } else {
                        e.read(&file, (i % 16) * 4096, 4096).await.unwrap();
                    }
                }
                None
            });
            let setter = tokio::spawn(async move { flag.store(true, Ordering::Relaxed) });
            setter.await.unwrap();
            reader.await.unwrap()
        });
        let d = shard_stats(&exec, &f).since(&before);
        assert!(d.inline_reads > 0, "the reads were inline");
        match seen_at {
            Some(i) => assert!(
                i <= 256, // a yield every 128 ready results at most
                "session {use_session}: the other task ran after {i} reads"
            ),
            None => panic!("session {use_session}: the other task never ran during 1000 reads"),
        }
    }
}
