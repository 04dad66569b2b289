//! Integration tests of `Executor` on real files and real io_uring rings (no mocks): data
//! integrity under concurrency, per-file ordering, routing, and read/write edge cases.
//!
//! Other executor tests: `executor_errors.rs` (bad input, ENOSPC, O_DIRECT), `executor_lifecycle.rs`
//! (shutdown with work in flight, a panicking shard), `executor_platform.rs` (NUMA placement,
//! pinning, statistics, async, wake-ups, backpressure).

mod executor_util;

use executor_util::*;
use ringshard::router::shard_for;
use ringshard::{Completion, Error, Executor, FallocateMode, File, OpKind, OpenOptions};
use std::collections::HashSet;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// 1. Many threads, many files, random reads and writes, checked against an exact model
// ---------------------------------------------------------------------------------------------

const THREADS: usize = 6;
const FILES: usize = 12;
/// Files `0..TWICE` are opened twice; threads use both handles at random.
const TWICE: usize = 4;
/// Bytes of every file that each thread owns (thread t: `t*REGION..(t+1)*REGION`).
const REGION: usize = 96 * 1024;
const FILE_LEN: usize = THREADS * REGION;
const OPS_PER_THREAD: usize = 220;
const BUF: usize = 16 * 1024;

enum Pending {
    Read {
        c: Completion<Vec<u8>>,
        want: Vec<u8>,
        what: String,
    },
    Write {
        c: Completion<usize>,
        len: usize,
        what: String,
    },
}

fn settle(pending: &mut Vec<Pending>) {
    for p in pending.drain(..) {
        match p {
            Pending::Read { c, want, what } => {
                let got = ok(c, &what);
                assert_bytes_eq(&got, &want, &what);
            }
            Pending::Write { c, len, what } => assert_eq!(ok(c, &what), len, "{what}"),
        }
    }
}

/// A random length: often tiny, often a few buffers long, sometimes unaligned and zero.
fn random_len(rng: &mut Rng) -> usize {
    match rng.below(10) {
        0 => 0,
        1..=3 => rng.range(1, 300) as usize,
        4..=6 => rng.range(300, BUF as u64) as usize,
        _ => rng.range(BUF as u64, 4 * BUF as u64 + 777) as usize,
    }
}

#[test]
fn concurrent_random_io_matches_model() {
    let exec = Executor::builder()
        .shards(2)
        .buffer_size(BUF)
        .buffer_count(8)
        .build()
        .expect("executor");
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    let mut handles: Vec<Vec<File>> = Vec::new();
    for i in 0..FILES {
        let path = dir.path().join(format!("data{i}"));
        // Pre-size (sparse zeros) so every read inside the file returns its full length whatever
        // the other threads have written so far: the per-thread model is then exact.
        std::fs::File::create(&path)
            .unwrap()
            .set_len(FILE_LEN as u64)
            .unwrap();
        let mut hs = vec![ok(exec.open(&path, &rw()), "open")];
        if i < TWICE {
            hs.push(ok(exec.open(&path, &rw()), "second open"));
            assert_eq!(hs[0].shard(), hs[1].shard(), "same file, same shard");
        }
        handles.push(hs);
        paths.push(path);
    }
    let shards_used: HashSet<usize> = handles.iter().map(|h| h[0].shard()).collect();
    assert_eq!(shards_used.len(), 2, "12 files should use both shards");

    let before = exec.stats().total;
    let (models, writes, written) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let exec = &exec;
                let handles = &handles;
                s.spawn(move || {
                    let mut rng = Rng::new(0x5eed_0000 + t as u64);
                    let base = (t * REGION) as u64;
                    let mut model = vec![vec![0u8; REGION]; FILES];
                    let mut pending = Vec::new();
                    let (mut writes, mut written) = (0u64, 0u64);
                    let mut n = 0;
                    while n < OPS_PER_THREAD {
                        // Sometimes a batch of several requests, sometimes one at a time.
                        let group = if rng.chance(25) { rng.range(2, 6) } else { 1 };
                        let mut batch = (group > 1).then(|| exec.batch());
                        for _ in 0..group {
                            n += 1;
                            let f = rng.below(FILES as u64) as usize;
                            let h = &handles[f][rng.below(handles[f].len() as u64) as usize];
                            let off = rng.below(REGION as u64) as usize;
                            let len = random_len(&mut rng).min(REGION - off);
                            let at = base + off as u64;
                            let what = format!("thread {t} op {n} file {f} at {at} len {len}");
                            if rng.chance(55) {
                                let data = rng.bytes(len);
                                model[f][off..off + len].copy_from_slice(&data);
                                writes += 1;
                                written += len as u64;
                                let c = match batch.as_mut() {
                                    Some(b) => b.write(h, at, data),
                                    None => exec.write(h, at, data),
                                };
                                pending.push(Pending::Write { c, len, what });
                            } else {
                                // What this read must see: every earlier write of this thread
                                // (only this thread writes these bytes), waited for or not.
                                let want = model[f][off..off + len].to_vec();
                                let c = match batch.as_mut() {
                                    Some(b) => b.read(h, at, len),
                                    None => exec.read(h, at, len),
                                };
                                pending.push(Pending::Read { c, want, what });
                            }
                        }
                        if let Some(b) = batch {
                            b.submit();
                        }
                        if pending.len() >= 12 || rng.chance(30) {
                            settle(&mut pending);
                        }
                    }
                    settle(&mut pending);
                    (model, writes, written)
                })
            })
            .collect();
        let mut models = Vec::new();
        let (mut writes, mut written) = (0, 0);
        for w in workers {
            let (m, n, b) = w.join().expect("worker thread");
            models.push(m);
            writes += n;
            written += b;
        }
        (models, writes, written)
    });

    for f in 0..FILES {
        let want: Vec<u8> = (0..THREADS)
            .flat_map(|t| models[t][f].iter().copied())
            .collect();
        for (k, h) in handles[f].iter().enumerate() {
            let what = format!("file {f} through handle {k}");
            assert_eq!(
                ok(exec.size(h), &what),
                FILE_LEN as u64,
                "{what}: size changed"
            );
            let got = ok(exec.read(h, 0, FILE_LEN), &what);
            assert_bytes_eq(&got, &want, &format!("{what}: executor read"));
        }
        let on_disk = std::fs::read(&paths[f]).unwrap();
        assert_bytes_eq(&on_disk, &want, &format!("file {f}: std::fs::read"));
        println!(
            "file {f}: shard {} fnv {:016x}",
            handles[f][0].shard(),
            checksum(&want)
        );
    }

    let after = exec.stats().total;
    assert_eq!(after.ops(OpKind::Write) - before.ops(OpKind::Write), writes);
    assert_eq!(after.bytes_written - before.bytes_written, written);
    assert_eq!(
        after.error_count(),
        0,
        "no errors expected: {:?}",
        after.errors
    );
    exec.shutdown().expect("clean shutdown");
}

// ---------------------------------------------------------------------------------------------
// 2. Ordering on one file
// ---------------------------------------------------------------------------------------------

fn one_shard(buffer_size: usize, buffer_count: usize) -> Executor {
    Executor::builder()
        .shards(1)
        .buffer_size(buffer_size)
        .buffer_count(buffer_count)
        .build()
        .expect("executor")
}

#[test]
fn read_after_unwaited_write_sees_it() {
    let exec = one_shard(4096, 4);
    let dir = tempfile::tempdir().unwrap();
    let f = open_rwc(&exec, &dir.path().join("f"));
    let mut rng = Rng::new(2);
    for round in 0..40u64 {
        // Lengths up to several buffers, unaligned offsets.
        let len = rng.range(1, 5 * 4096) as usize;
        let off = rng.below(20_000);
        let data = rng.bytes(len);
        let (w, r) = if round % 2 == 0 {
            let w = exec.write(&f, off, data.clone());
            (w, exec.read(&f, off, len))
        } else {
            let mut b = exec.batch();
            let w = b.write(&f, off, data.clone());
            let r = b.read(&f, off, len);
            assert_eq!(b.len(), 2);
            b.submit();
            (w, r)
        };
        // Wait for the read first: it must already include the write.
        let got = ok(r, "read");
        assert_bytes_eq(&got, &data, &format!("round {round}: read after write"));
        assert_eq!(ok(w, "write"), len);
    }
}

#[test]
fn second_unwaited_write_wins() {
    let exec = one_shard(4096, 8);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let f = open_rwc(&exec, &path);
    let len = 6 * 4096 + 123; // several buffers each
    for round in 0..30u8 {
        let a = vec![round.wrapping_mul(2); len];
        let b = vec![round.wrapping_mul(2).wrapping_add(1); len];
        let (wa, wb) = if round % 2 == 0 {
            (exec.write(&f, 7, a), exec.write(&f, 7, b.clone()))
        } else {
            let mut batch = exec.batch();
            let wa = batch.write(&f, 7, a);
            let wb = batch.write(&f, 7, b.clone());
            batch.submit();
            (wa, wb)
        };
        assert_eq!(ok(wb, "write B"), len);
        assert!(
            wa.is_done(),
            "write A must have completed before B (B waits for it)"
        );
        assert_eq!(ok(wa, "write A"), len);
        let disk = std::fs::read(&path).unwrap();
        assert_bytes_eq(
            &disk[7..7 + len],
            &b,
            &format!("round {round}: final content"),
        );
    }
}

#[test]
fn fsync_completes_after_earlier_writes() {
    let exec = one_shard(4096, 4);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let f = open_rwc(&exec, &path);
    for round in 0..10u64 {
        let writes: Vec<_> = (0..5u64)
            .map(|i| exec.write(&f, (round * 5 + i) * 10_000, vec![i as u8 + 1; 10_000]))
            .collect();
        let sync = if round % 2 == 0 {
            exec.fsync(&f)
        } else {
            exec.fdatasync(&f)
        };
        ok(sync, "fsync");
        for (i, w) in writes.into_iter().enumerate() {
            assert!(
                w.is_done(),
                "round {round}: write {i} not done when fsync was"
            );
            assert_eq!(ok(w, "write"), 10_000);
        }
    }
    let disk = std::fs::read(&path).unwrap();
    assert_eq!(disk.len(), 50 * 10_000);
    for (k, chunk) in disk.chunks(10_000).enumerate() {
        assert!(chunk.iter().all(|&b| b == (k % 5) as u8 + 1), "chunk {k}");
    }
}

#[test]
fn close_after_pending_writes_then_bad_handle() {
    let exec = one_shard(4096, 4);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let f = open_rwc(&exec, &path);
    let clone = f.clone();
    let writes: Vec<_> = (0..20u64)
        .map(|i| exec.write(&f, i * 9000, vec![i as u8; 9000]))
        .collect();
    let close = exec.close(&f);
    // Submitted after the close: refused, on this handle and on its clones.
    let late_read = exec.read(&clone, 0, 10);
    let late_write = exec.write(&f, 0, vec![1u8; 10]);
    ok(close, "close");
    for (i, w) in writes.into_iter().enumerate() {
        assert!(w.is_done(), "write {i} not done when close was");
        assert_eq!(ok(w, "write"), 9000);
    }
    for e in [
        wait(late_read).map(|_| ()).unwrap_err(),
        wait(late_write).map(|_| ()).unwrap_err(),
        wait(exec.size(&f)).map(|_| ()).unwrap_err(),
        wait(exec.fsync(&clone)).unwrap_err(),
        wait(exec.close(&f)).unwrap_err(),
    ] {
        assert!(matches!(e, Error::BadHandle(_)), "{e:?}");
        assert!(e.to_string().contains("closed"), "{e}");
    }
    let disk = std::fs::read(&path).unwrap();
    assert_eq!(disk.len(), 20 * 9000);
    for (i, chunk) in disk.chunks(9000).enumerate() {
        assert!(chunk.iter().all(|&b| b == i as u8), "chunk {i}");
    }
    // The executor goes on: the file can be reopened and read.
    let again = open_rwc(&exec, &path);
    assert_eq!(ok(exec.read(&again, 9000, 3), "read"), vec![1u8; 3]);
}

/// An op that stops early (a read that meets end of file) while it still sits at the head of the
/// shard's ready queue waiting for buffers must not leave its slot there: the next admitted op
/// reuses the slot, and a stale queue entry would issue it out of order, ahead of the earlier
/// conflicting op it waits for.
///
/// Made deterministic with a FIFO: its reads block until the test closes the writer, so the big
/// read holds every buffer (and the write behind it waits) for as long as the test wants; a task
/// on the shard keeps it from issuing while the slot is reused.
#[test]
fn early_finished_op_does_not_reorder_later_ones() {
    let exec = one_shard(4096, 4);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let data = open_rwc(&exec, &path);
    for round in 0..3u8 {
        let fifo = dir.path().join(format!("fifo{round}"));
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        // Opening a FIFO for reading blocks until a writer opens it: open the writer alongside.
        let fifo2 = fifo.clone();
        let writer = std::thread::spawn(move || {
            std::fs::OpenOptions::new().write(true).open(fifo2).unwrap()
        });
        let pipe = ok(exec.open(&fifo, OpenOptions::new().read(true)), "open fifo");
        let writer = writer.join().unwrap();

        let (v1, v2) = (vec![round * 2 + 1; 4096], vec![round * 2 + 2; 4096]);
        // A wants 16 buffers, gets all 4 and blocks in the FIFO; W1 waits behind A for a buffer.
        let mut b = exec.batch();
        let a = b.read(&pipe, 0, 64 * 4096);
        let w1 = b.write(&data, 0, v1);
        b.submit();
        std::thread::sleep(Duration::from_millis(30));
        // T keeps the shard from issuing anything new (it runs once nothing is in flight).
        let task = exec.submit_to(0, |_| std::thread::sleep(Duration::from_millis(150)));
        std::thread::sleep(Duration::from_millis(30));
        // End of file: A's reads return 0, A finishes early and its slot is freed; T starts.
        drop(writer);
        std::thread::sleep(Duration::from_millis(40));
        // W2 must land after W1 (same bytes); it is admitted while T runs and reuses A's slot.
        let w2 = exec.write(&data, 0, v2.clone());
        ok(task, "task");
        assert_eq!(ok(w2, "w2"), 4096);
        assert_eq!(ok(w1, "w1"), 4096);
        let got = ok(a, "fifo read");
        assert!(got.is_empty(), "the FIFO had no data: {} bytes", got.len());
        let disk = std::fs::read(&path).unwrap();
        assert_bytes_eq(
            &disk[..4096],
            &v2,
            &format!("round {round}: the later write must win"),
        );
        ok(exec.close(&pipe), "close fifo");
    }
}

/// A transfer of nothing past the end of the file says nothing of its size. Before the fix, the
/// shard took `offset + 0` from an empty read (or a zero-length write) at 91 of an empty file as
/// a size the file has at least: a later read of 12..23 then counted as inside the file, was not
/// ordered against a write above it sent after it (src/shard/order.rs), and returned the zeros
/// of the hole that write made (seen once in the model test under faults). The shard is held
/// while the read and the write are sent, so both are admitted and issued in one turn: unless
/// the read is ordered first, the inline write runs before the read's SQE is submitted.
#[test]
fn a_transfer_of_nothing_past_the_end_leaves_later_reads_ordered() {
    let exec = one_shard(4096, 4);
    let dir = tempfile::tempdir().unwrap();
    for probe in ["read", "write"] {
        let f = open_rwc(&exec, &dir.path().join(probe));
        match probe {
            "read" => assert!(ok(exec.read(&f, 91, 100), "read past the end").is_empty()),
            _ => assert_eq!(ok(exec.write(&f, 91, Vec::new()), "empty write"), 0),
        }
        let (gate, busy) = hold_shard(&exec, f.shard());
        let r = exec.read(&f, 12, 11);
        let w = exec.write(&f, 1684, vec![7; 1571]);
        gate.send(()).unwrap();
        ok(busy, "busy task");
        let got = ok(r, "read");
        assert!(
            got.is_empty(),
            "after an empty {probe} past the end: a read sent before the write that made a hole \
             under it returned {} bytes of it",
            got.len()
        );
        assert_eq!(ok(w, "write"), 1571);
        assert_eq!(ok(exec.size(&f), "size"), 1684 + 1571);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Routing
// ---------------------------------------------------------------------------------------------

#[test]
fn every_path_to_a_file_routes_to_one_shard() {
    let exec = Executor::builder().shards(2).build().expect("executor");
    let dir = tempfile::tempdir().unwrap();
    let files = files_on_every_shard(&exec, dir.path(), "r", 10, 200);
    assert!(files.len() >= 20, "{} files", files.len());
    let mut per_shard = [0usize; 2];
    for (i, (path, f)) in files.iter().enumerate() {
        per_shard[f.shard()] += 1;
        // The shard is the router's choice for the file's inode.
        assert_eq!(f.shard(), shard_for(f.key(), 2), "{}", path.display());
        let again = open_rwc(&exec, path);
        assert_eq!(again.shard(), f.shard(), "reopen of {}", path.display());
        assert_eq!(again.key(), f.key());

        let sym = dir.path().join(format!("sym{i}"));
        std::os::unix::fs::symlink(path, &sym).unwrap();
        let via_sym = ok(exec.open(&sym, &rw()), "open symlink");
        assert_eq!(via_sym.shard(), f.shard(), "symlink {}", sym.display());
        assert_eq!(via_sym.path(), sym.as_path());

        let hard = dir.path().join(format!("hard{i}"));
        std::fs::hard_link(path, &hard).unwrap();
        let via_link = ok(exec.open(&hard, &rw()), "open hard link");
        assert_eq!(via_link.shard(), f.shard(), "hard link {}", hard.display());

        // All of them name the same bytes: a write through one is read through the others.
        let tag = format!("file {i}").into_bytes();
        ok(exec.write(&via_sym, 0, tag.clone()), "write via symlink");
        assert_eq!(ok(exec.read(&via_link, 0, tag.len()), "read via link"), tag);
        assert_eq!(ok(exec.read(f, 0, tag.len()), "read"), tag);

        // Close and reopen: same shard again.
        ok(exec.close(f), "close");
        let reopened = open_rwc(&exec, path);
        assert_eq!(
            reopened.shard(),
            f.shard(),
            "close + reopen {}",
            path.display()
        );
        assert_eq!(ok(exec.read(&reopened, 0, tag.len()), "read"), tag);
    }
    println!("files per shard: {per_shard:?}");
    assert!(per_shard.iter().all(|&n| n >= 1), "{per_shard:?}");
}

// ---------------------------------------------------------------------------------------------
// 4. End of file, zero lengths, long requests
// ---------------------------------------------------------------------------------------------

#[test]
fn eof_zero_length_and_long_requests() {
    // 4 buffers of 64 KiB: a 1 MiB request needs 16 buffers, so the shard must recycle them.
    let exec = Executor::builder()
        .shards(2)
        .buffer_size(64 * 1024)
        .buffer_count(4)
        .build()
        .expect("executor");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let f = open_rwc(&exec, &path);

    // Empty file: any read returns nothing; zero-length ops work.
    assert_eq!(ok(exec.read(&f, 0, 100), "read empty"), Vec::<u8>::new());
    assert_eq!(ok(exec.read(&f, 0, 0), "zero read"), Vec::<u8>::new());
    assert_eq!(ok(exec.write(&f, 0, Vec::new()), "zero write"), 0);
    assert_eq!(ok(exec.write(&f, 5000, Vec::new()), "zero write"), 0);
    assert_eq!(ok(exec.size(&f), "size"), 0, "a zero write does not extend");

    let mut rng = Rng::new(4);
    let big = rng.bytes(1 << 20);
    assert_eq!(ok(exec.write(&f, 0, big.clone()), "1 MiB write"), 1 << 20);
    assert_eq!(ok(exec.size(&f), "size"), 1 << 20);
    assert_bytes_eq(&ok(exec.read(&f, 0, 1 << 20), "1 MiB read"), &big, "1 MiB");
    assert_bytes_eq(&std::fs::read(&path).unwrap(), &big, "1 MiB on disk");

    // Short reads at end of file, including ones spanning many buffers.
    let n = big.len() as u64;
    assert_bytes_eq(
        &ok(exec.read(&f, n - 10, 100), "tail"),
        &big[big.len() - 10..],
        "tail",
    );
    let long_tail = ok(exec.read(&f, 100_000, 2 << 20), "long tail");
    assert_bytes_eq(&long_tail, &big[100_000..], "long tail");
    assert_eq!(ok(exec.read(&f, n, 10), "at eof"), Vec::<u8>::new());
    assert_eq!(
        ok(exec.read(&f, n + 12_345, 300_000), "past eof"),
        Vec::<u8>::new()
    );
    assert_eq!(ok(exec.read(&f, 0, 0), "zero read"), Vec::<u8>::new());

    // A write past the end leaves a hole of zeros; a read over the hole returns them.
    assert_eq!(
        ok(exec.write(&f, n + 4096, b"xyz".to_vec()), "write past end"),
        3
    );
    let mut want = vec![0u8; 4096];
    want.extend_from_slice(b"xyz");
    assert_eq!(ok(exec.read(&f, n, 10_000), "over the hole"), want);

    // Many long writes and reads at once on several files: they queue for the 4 buffers.
    let files: Vec<_> = (0..4)
        .map(|i| open_rwc(&exec, &dir.path().join(format!("g{i}"))))
        .collect();
    let blobs: Vec<Vec<u8>> = (0..4).map(|_| rng.bytes(700_001)).collect();
    let writes: Vec<_> = files
        .iter()
        .zip(&blobs)
        .map(|(g, b)| exec.write(g, 3, b.clone()))
        .collect();
    let reads: Vec<_> = files.iter().map(|g| exec.read(g, 3, 800_000)).collect();
    for ((w, r), b) in writes.into_iter().zip(reads).zip(&blobs) {
        assert_eq!(ok(w, "long write"), 700_001);
        // Submitted after the write to the same file: sees all of it, and the file ends there.
        assert_bytes_eq(&ok(r, "long read"), b, "read after long write");
    }
    for (g, b) in files.iter().zip(&blobs) {
        assert_bytes_eq(&ok(exec.read(g, 3, 700_001), "read back"), b, "long blob");
    }
    // Buffered I/O moves bytes straight between the caller's vectors and the page cache; the
    // pool's buffers carry O_DIRECT I/O. Long O_DIRECT requests on several files at once must
    // queue inside the shard for the 4 buffers and still all complete, byte for byte.
    let direct: Vec<_> = (0..4)
        .map(|i| {
            let p = dir.path().join(format!("d{i}"));
            let opts = rwc().direct(true).clone();
            ok(exec.open(&p, &opts), "open O_DIRECT")
        })
        .collect();
    let blobs: Vec<Vec<u8>> = (0..4).map(|_| rng.bytes(1 << 20)).collect();
    let writes: Vec<_> = direct
        .iter()
        .zip(&blobs)
        .map(|(g, b)| exec.write(g, 4096, b.clone()))
        .collect();
    let reads: Vec<_> = direct.iter().map(|g| exec.read(g, 4096, 1 << 20)).collect();
    for ((w, r), b) in writes.into_iter().zip(reads).zip(&blobs) {
        assert_eq!(ok(w, "long O_DIRECT write"), 1 << 20);
        assert_bytes_eq(&ok(r, "long O_DIRECT read"), b, "O_DIRECT read after write");
    }
    let stats = exec.stats();
    assert_eq!(stats.total.error_count(), 0, "{:?}", stats.total.errors);
    assert!(
        stats.total.pool_exhausted_events > 0,
        "4 buffers for 16-buffer O_DIRECT requests must run out"
    );
}

#[test]
fn append_mode_writes_land_in_order_at_the_end() {
    let exec = one_shard(4096, 4);
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("log");
    std::fs::write(&path, b"head:").unwrap();
    let log = ok(
        exec.open(&path, OpenOptions::new().append(true).read(true)),
        "open append",
    );
    let entries: Vec<Vec<u8>> = (0..50u8)
        .map(|i| vec![b'a' + i % 26; 3000 + i as usize])
        .collect();
    // The offset is ignored in append mode.
    let writes: Vec<_> = entries
        .iter()
        .map(|e| exec.write(&log, 0, e.clone()))
        .collect();
    for (w, e) in writes.into_iter().zip(&entries) {
        assert_eq!(ok(w, "append"), e.len());
    }
    let mut want = b"head:".to_vec();
    for e in &entries {
        want.extend_from_slice(e);
    }
    assert_bytes_eq(&std::fs::read(&path).unwrap(), &want, "append log");
}

#[test]
fn files_beyond_the_registered_table_and_fallocate() {
    for max_files in [0u32, 2] {
        let exec = Executor::builder()
            .shards(1)
            .buffer_size(4096)
            .buffer_count(4)
            .max_files(max_files)
            .build()
            .expect("executor");
        let dir = tempfile::tempdir().unwrap();
        // More files than registered slots: the rest go through plain descriptors.
        let files: Vec<_> = (0..5)
            .map(|i| open_rwc(&exec, &dir.path().join(format!("f{i}"))))
            .collect();
        for (i, f) in files.iter().enumerate() {
            let data = vec![i as u8 + 1; 10_000];
            assert_eq!(ok(exec.write(f, 1, data.clone()), "write"), 10_000);
            assert_eq!(ok(exec.read(f, 1, 10_000), "read"), data, "file {i}");
            assert_eq!(ok(exec.size(f), "size"), 10_001);
        }
        // Close two, open two more (reusing slots): every handle still reaches its own file.
        ok(exec.close(&files[0]), "close");
        ok(exec.close(&files[3]), "close");
        let more: Vec<_> = (5..7)
            .map(|i| open_rwc(&exec, &dir.path().join(format!("f{i}"))))
            .collect();
        for (i, f) in more.iter().enumerate() {
            ok(exec.write(f, 0, vec![0xee; 3]), "write");
            assert_eq!(
                ok(exec.read(f, 0, 3), "read"),
                vec![0xee; 3],
                "new file {i}"
            );
        }
        for i in [1usize, 2, 4] {
            let want = vec![i as u8 + 1; 10_000];
            assert_eq!(
                ok(exec.read(&files[i], 1, 10_000), "read"),
                want,
                "file {i}"
            );
        }

        // fallocate: Allocate extends; KeepSize does not; both leave the data alone.
        let f = &files[1];
        ok(
            exec.fallocate(f, FallocateMode::Allocate, 0, 1 << 20),
            "fallocate",
        );
        assert_eq!(ok(exec.size(f), "size"), 1 << 20);
        ok(
            exec.fallocate(f, FallocateMode::KeepSize, 1 << 20, 1 << 20),
            "fallocate keep size",
        );
        assert_eq!(ok(exec.size(f), "size"), 1 << 20);
        assert_eq!(ok(exec.read(f, 1, 10), "read"), vec![2u8; 10]);
        // An unaligned collapse is the kernel's EINVAL, reported as an Io error of op "fallocate".
        let e = wait(exec.fallocate(f, FallocateMode::CollapseRange, 1, 10)).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Io {
                    op: "fallocate",
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            ok(exec.read(f, 1, 10), "read after a failed fallocate"),
            vec![2u8; 10]
        );
        exec.shutdown().unwrap();
    }
}

#[test]
fn shard_context_writes_inline_like_the_executor() {
    for inline in [true, false] {
        let exec = Executor::builder()
            .shards(1)
            .inline_buffered_writes(inline)
            .build()
            .expect("executor");
        let dir = tempfile::tempdir().unwrap();
        let f = open_rwc(&exec, &dir.path().join("ctx"));
        let g = f.clone();
        let (flag, n) = ok(
            exec.submit_to(0, move |ctx| {
                let flag = ctx.buffered_writes_inline();
                let (idx, buf) = ctx.pool().acquire().expect("buffer");
                buf[..6].copy_from_slice(b"inline");
                let n = ctx.write_fixed_inline(&g, idx, 10, 6);
                // More than the buffer holds is refused, not read past its end.
                let size = ctx.pool().buffer_size();
                let too_long = ctx.write_fixed_inline(&g, idx, 0, size + 1);
                assert!(too_long.is_err());
                ctx.pool().release(idx);
                (flag, n.expect("inline write"))
            }),
            "task",
        );
        assert_eq!(flag, inline);
        assert_eq!(n, 6);
        assert_eq!(ok(exec.read(&f, 10, 6), "read back"), b"inline");
        // The executor's own buffered writes take the configured path and land the same.
        assert_eq!(ok(exec.write(&f, 0, b"0123456789".to_vec()), "write"), 10);
        assert_eq!(ok(exec.read(&f, 0, 16), "read"), b"0123456789inline");
    }
}

#[test]
fn shard_of_path_predicts_open() {
    let exec = Executor::builder().shards(2).build().expect("executor");
    let dir = tempfile::tempdir().unwrap();
    for i in 0..8 {
        let p = dir.path().join(format!("p{i}"));
        std::fs::write(&p, b"x").unwrap();
        let predicted = exec.shard_of_path(&p).expect("stat");
        let f = open_rwc(&exec, &p);
        assert_eq!(predicted, f.shard(), "{}", p.display());
    }
    let e = exec.shard_of_path(dir.path().join("missing")).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");
}

#[test]
fn read_into_reuses_the_callers_buffer() {
    let exec = Executor::builder().shards(1).build().expect("executor");
    let dir = tempfile::tempdir().unwrap();
    let f = open_rwc(&exec, &dir.path().join("ri"));
    ok(exec.write(&f, 0, b"fresh bytes".to_vec()), "write");
    // Old contents are replaced, the allocation is kept.
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(b"stale stale stale");
    let ptr = buf.as_ptr();
    let got = ok(exec.read_into(&f, 0, 5, buf), "read_into");
    assert_eq!(got, b"fresh");
    assert_eq!(got.as_ptr(), ptr, "the caller's allocation is reused");
    // Past the end: what exists; in a batch too.
    let mut b = exec.batch();
    let r = b.read_into(&f, 6, 100, got);
    b.submit();
    assert_eq!(ok(r, "batch read_into"), b"bytes");
}
