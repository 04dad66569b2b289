//! Faults from below: the executor on a fault-injecting FUSE filesystem (`tests/faultfs`), page-cache
//! path (files not opened O_DIRECT), through routed requests (`Completion`) and `Session`s; then
//! shard tasks' own I/O (`ringshard::local()`, page cache, O_DIRECT and `read_pooled`), pool
//! buffers of stalled O_DIRECT reads that the caller let go of (released only at their
//! completion), and truncation and unlinking while reads are in flight (on the local filesystem
//! too).
//!
//! Each test mounts its own filesystem, runs one shard (so "other files" are on the same shard as
//! the faulty one), injects one kind of fault, checks what the failing operation reports and that
//! everything else still works with its bytes intact, and prints one summary line per fault kind:
//! `FAULTS <kind>: ...` (the figures for the README's "Reliability" section). A test that cannot
//! mount FUSE here says so on stderr and returns (no /dev/fuse, mount refused).
//!
//! Every test takes [`serial`] (the stall measurements must not share two cores with the other
//! tests) and a [`Watchdog`]: nothing may hang.

mod executor_util;
mod faultfs;

use executor_util::*;
use faultfs::{Fault, FaultFs, Op};
use ringshard::{Completion, Done, Error, Executor, File, Session};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const LIMIT: Duration = Duration::from_secs(60);

/// One shard; buffered writes inline (`pwrite` on the shard, the default) or through the ring.
/// Inline writes stay inline however slow a FUSE call gets on a loaded machine (on mounts with
/// FUSE_ASYNC_DIO a short ring write is EIO; see `mount_for_writes`); the stall test uses
/// [`executor_detecting_stalls`].
fn executor(inline_writes: bool) -> Executor {
    Executor::builder()
        .shards(1)
        .inline_buffered_writes(inline_writes)
        .inline_write_stall(None)
        .build()
        .expect("executor")
}

/// [`executor`] with the default stall detection: an inline write that blocks sends its file's
/// writes through the ring for a while.
fn executor_detecting_stalls(inline_writes: bool) -> Executor {
    Executor::builder()
        .shards(1)
        .inline_buffered_writes(inline_writes)
        .build()
        .expect("executor")
}

/// Writes `len` bytes of seeded data into `name` in the backing directory (no FUSE, no rules) and
/// returns them.
fn seed(fs: &FaultFs, name: &str, len: usize, seed: u64) -> Vec<u8> {
    let data = Rng::new(seed).bytes(len);
    std::fs::write(fs.backing(name), &data).expect("seed file");
    data
}

/// Opens `name` on the FUSE mount, read-write.
fn open(exec: &Executor, fs: &FaultFs, name: &str) -> File {
    ok(exec.open(fs.join(name), &rwc()), "open on faultfs")
}

/// What is in `name`, read from the backing directory (what really landed).
fn landed(fs: &FaultFs, name: &str) -> Vec<u8> {
    std::fs::read(fs.backing(name)).expect("read backing file")
}

/// Asserts `r` is an `Io` error of `op` on `path` with `errno`; returns its offset.
#[track_caller]
fn assert_io<T: std::fmt::Debug>(
    r: &ringshard::Result<T>,
    op: &str,
    path: &Path,
    errno: i32,
) -> Option<u64> {
    match r {
        Err(Error::Io {
            op: o,
            path: Some(p),
            offset,
            errno: e,
            ..
        }) if *o == op && p == path && *e == errno => *offset,
        other => panic!(
            "want {op} on {} failing with errno {errno}, got {other:?}",
            path.display()
        ),
    }
}

/// Flushes `s` and waits for `n` results.
#[track_caller]
fn session_wait(s: &mut Session, n: usize) -> Vec<Done> {
    let mut out = Vec::new();
    while out.len() < n {
        match s.wait_timeout(n - out.len(), HANG, &mut out) {
            Ok(_) => {}
            Err(e) => panic!("session wait: {e:?} with {} of {n} results", out.len()),
        }
    }
    out.sort_by_key(|d| d.token);
    out
}

/// The executor's own count of errors with `errno` so far.
fn counted_errors(exec: &Executor, errno: i32) -> u64 {
    exec.stats().total.errors.get(&errno).copied().unwrap_or(0)
}

/// Mounts a filesystem fit for testing writes through `exec` made with `inline_writes`: inline
/// `pwrite` (a synchronous write in the kernel) on a mount with `FUSE_ASYNC_DIO`; writes through
/// the ring (asynchronous in the kernel) on a mount without it, where the kernel passes a short
/// write back instead of turning it into EIO (see `tests/faultfs`). On that mount, reads through
/// the ring must not come back short (kernel bug: retried at the same offset), so these tests
/// read only inside the file there and check what landed in the backing file.
fn mount_for_writes(what: &str, inline_writes: bool) -> Option<FaultFs> {
    faultfs::mount_with_or_skip(what, inline_writes)
}

/// Prints a line straight to stderr, past the test harness's capture: the `FAULTS` summaries
/// and the skip notes show in a plain `cargo test` run, passing or not.
macro_rules! report {
    ($($arg:tt)*) => {
        report_line(format_args!($($arg)*))
    };
}

/// Mounts, or prints why the test is skipped.
macro_rules! mount_or_return {
    ($what:expr) => {
        match faultfs::mount_or_skip($what) {
            Some(fs) => fs,
            None => return,
        }
    };
}

// ---------------------------------------------------------------------------------------------
// EIO on one range
// ---------------------------------------------------------------------------------------------

#[test]
fn eio_on_one_range_fails_only_reads_of_that_range() {
    let _serial = serial();
    let _dog = Watchdog::new("eio_on_one_range", LIMIT);
    let start = Instant::now();
    let fs = mount_or_return!("eio_on_one_range_fails_only_reads_of_that_range");
    let exec = executor(true);
    let a_data = seed(&fs, "a", 256 * KIB, 1);
    let b_data = seed(&fs, "b", 256 * KIB, 2);
    let a = open(&exec, &fs, "a");
    let b = open(&exec, &fs, "b");
    assert_eq!(a.shard(), b.shard(), "one shard");
    let bad = 64 * KIB as u64..68 * KIB as u64;
    fs.rules().add("a", &[Op::Read], bad.clone(), Fault::Eio);

    let (mut failed, mut fine) = (0u64, 0u64);
    // Routed requests: reads touching the range fail, with op, path, offset and EIO.
    for (off, len) in [(64 * KIB, 4 * KIB), (60 * KIB, 8 * KIB), (67 * KIB, 100)] {
        let r = wait(exec.read(&a, off as u64, len));
        assert_eq!(
            assert_io(&r, "read", &fs.join("a"), libc::EIO),
            Some(off as u64)
        );
        failed += 1;
    }
    // Other ranges of the same file, and another file on the same shard: intact.
    for (off, len) in [(0, 64 * KIB), (68 * KIB, 4 * KIB), (128 * KIB, 128 * KIB)] {
        let got = ok(exec.read(&a, off as u64, len), "read beside the bad range");
        assert_bytes_eq(&got, &a_data[off..off + len], "a beside the bad range");
        fine += 1;
    }
    let got = ok(exec.read(&b, 0, 256 * KIB), "read b");
    assert_bytes_eq(&got, &b_data, "b");
    fine += 1;
    // Writes are not covered by the rule: one into the bad range lands.
    let patch = vec![0xAB; 4 * KIB];
    assert_eq!(
        ok(exec.write(&a, bad.start, patch.clone()), "write"),
        4 * KIB
    );
    fine += 1;

    // Sessions: the same outcomes, each request with its own result.
    let mut s = exec.session();
    s.read(&a, bad.start, 4 * KIB, Vec::new(), 0).unwrap();
    s.read(&a, 0, 64 * KIB, Vec::new(), 1).unwrap();
    s.read(&b, 4 * KIB as u64, 8 * KIB, Vec::new(), 2).unwrap();
    s.read(&a, 200 * KIB as u64, 56 * KIB, Vec::new(), 3)
        .unwrap();
    let done = session_wait(&mut s, 4);
    assert_io(&done[0].result, "read", &fs.join("a"), libc::EIO);
    failed += 1;
    assert_eq!(done[1].result, Ok(64 * KIB));
    assert_bytes_eq(&done[1].buf, &a_data[..64 * KIB], "session read of a");
    assert_eq!(done[2].result, Ok(8 * KIB));
    assert_bytes_eq(
        &done[2].buf,
        &b_data[4 * KIB..12 * KIB],
        "session read of b",
    );
    assert_eq!(done[3].result, Ok(56 * KIB));
    assert_bytes_eq(
        &done[3].buf,
        &a_data[200 * KIB..],
        "session read of a's end",
    );
    fine += 3;

    // Rules change while mounted: with the rule gone, the range reads back (with the write).
    fs.rules().clear();
    let got = ok(
        exec.read(&a, bad.start, 4 * KIB),
        "read after the rule is gone",
    );
    assert_bytes_eq(&got, &patch, "the bad range after clearing the rule");
    fine += 1;

    let c = fs.counts();
    assert!(
        c.eio >= failed,
        "filesystem injected {} EIO, {failed} failed",
        c.eio
    );
    let counted = counted_errors(&exec, libc::EIO);
    assert_eq!(counted, failed, "the executor counts each failed read once");
    drop((a, b, exec));
    report!(
        "FAULTS eio: injected={} (FUSE reads seen {}); {failed} reads failed with EIO naming op, \
         path and offset (executor counted {counted}); {fine} other reads/writes on the same file \
         and shard intact; {:.2?}",
        c.eio,
        c.reads,
        start.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Short reads and writes
// ---------------------------------------------------------------------------------------------

#[test]
fn short_reads_and_writes_are_completed() {
    let _serial = serial();
    let _dog = Watchdog::new("short_reads_and_writes", LIMIT);
    let start = Instant::now();
    let mut checks = 0u64;
    let (mut short_reads, mut short_writes) = (0, 0);
    for inline in [true, false] {
        let Some(fs) = mount_for_writes("short_reads_and_writes_are_completed", inline) else {
            return;
        };
        let exec = executor(inline);
        let name = format!("short-{inline}");
        let mut want = seed(&fs, &name, MIB, 3);
        let f = open(&exec, &fs, &name);
        // Short reads only where the kernel passes them on (see `mount_for_writes`).
        let ops: &[Op] = if inline {
            &[Op::Read, Op::Write]
        } else {
            &[Op::Write]
        };
        fs.rules().add(&name, ops, 0..u64::MAX, Fault::Short(1000));

        // Reads come back whole (1000 bytes per FUSE call), or cut only at the end of the file.
        let got = ok(exec.read(&f, 0, MIB), "read 1 MiB");
        assert_bytes_eq(&got, &want, "whole file through short reads");
        if inline {
            let got = ok(
                exec.read(&f, (MIB - 100) as u64, 4 * KIB),
                "read across EOF",
            );
            assert_bytes_eq(&got, &want[MIB - 100..], "read across the end of the file");
        }
        // Writes report their full length, and all of it lands.
        let data = Rng::new(4).bytes(300 * KIB);
        assert_eq!(ok(exec.write(&f, 100, data.clone()), "write"), data.len());
        want[100..100 + data.len()].copy_from_slice(&data);
        // Extends the file.
        let tail = Rng::new(5).bytes(10_000);
        assert_eq!(
            ok(exec.write(&f, MIB as u64, tail.clone()), "write"),
            10_000
        );
        want.extend_from_slice(&tail);
        checks += 4;

        // Sessions.
        let mut s = exec.session();
        let d1 = Rng::new(6).bytes(64 * KIB);
        s.write(&f, 500_000, d1.clone(), 0).unwrap();
        s.read(&f, 400_000, 200_000, Vec::new(), 1).unwrap();
        let done = session_wait(&mut s, 2);
        assert_eq!(done[0].result, Ok(d1.len()));
        want[500_000..500_000 + d1.len()].copy_from_slice(&d1);
        assert_eq!(done[1].result, Ok(200_000));
        assert_bytes_eq(&done[1].buf, &want[400_000..600_000], "session read");
        checks += 2;

        fs.rules().clear();
        assert_bytes_eq(
            &landed(&fs, &name),
            &want,
            "what landed in the backing file",
        );
        let got = ok(exec.read(&f, 0, want.len()), "read back");
        assert_bytes_eq(&got, &want, "read back");
        let c = fs.counts();
        assert!(c.short_writes > 300, "{c:?}");
        short_reads += c.short_reads;
        short_writes += c.short_writes;
        drop((f, exec));
    }
    assert!(short_reads > 1000, "{short_reads} short reads");
    report!(
        "FAULTS short: injected {} short reads and {} short writes (1000 bytes each); {checks} \
         requests (routed and session, inline and ring writes) all returned their full length \
         (reads cut only at EOF) with the right bytes; {:.2?}",
        short_reads,
        short_writes,
        start.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// A stalled file
// ---------------------------------------------------------------------------------------------

/// Runs `n` 4 KiB reads (or writes) of `fast` one after another, each waited for (a hang fails
/// the test after [`HANG`]); returns how long they took, for the report.
fn flow(exec: &Executor, fast: &File, n: usize, write: bool) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        let off = (i % 16 * 4 * KIB) as u64;
        if write {
            assert_eq!(
                ok(exec.write(fast, off, vec![i as u8; 4 * KIB]), "write"),
                4 * KIB
            );
        } else {
            assert_eq!(ok(exec.read(fast, off, 4 * KIB), "read").len(), 4 * KIB);
        }
    }
    start.elapsed()
}

/// Holds the stalled file's reads, writes and fsyncs in the filesystem until released.
fn hold_slow(fs: &FaultFs, name: &str) {
    fs.rules().add(
        name,
        &[Op::Read, Op::Write, Op::Fsync],
        0..u64::MAX,
        Fault::Hold,
    );
}

/// With `stalled` (an operation of the stalled file) held in the filesystem, 100 operations of
/// another file on the same shard: each must complete while it is still held (one that waited
/// for it would wait until the test's [`HANG`] limit). Then lets it go and returns its result
/// and a report line.
fn beside_held<T>(
    fs: &FaultFs,
    mut stalled: Completion<T>,
    exec: &Executor,
    fast: &File,
    write: bool,
    what: &str,
) -> (T, String) {
    eventually(
        &format!("the stalled {what} is held in the filesystem"),
        HANG,
        || fs.held() == 1,
    );
    let took = flow(exec, fast, 100, write);
    assert_eq!(fs.held(), 1, "the stalled {what} is still held");
    assert!(
        !stalled.is_done(),
        "the stalled {what} completed while the filesystem held it"
    );
    fs.release_all();
    let v = match stalled.wait_timeout(HANG) {
        Ok(v) => v,
        Err(e) => panic!("the stalled {what}, released: {e:?}"),
    };
    let others = if write { "writes" } else { "reads" };
    (
        v,
        format!("100 4 KiB {others} of another file in {took:.2?} while a {what} was held"),
    )
}

/// One file's operations held in FUSE (unanswered until the test lets go) never hold up another
/// file's on the same shard: reads, fsyncs, and writes through the ring, routed and in a session.
/// An inline buffered write (the default) is the exception: the shard thread waits in `pwrite`;
/// kept there past `inline_write_stall`, it sends that file's later writes through the ring.
#[test]
fn a_stalled_file_delays_only_itself() {
    let _serial = serial();
    let _dog = Watchdog::new("a_stalled_file", LIMIT);
    let start = Instant::now();
    let fs = mount_or_return!("a_stalled_file_delays_only_itself");
    let mut lines = Vec::new();
    let mut held = 0;
    for inline in [true, false] {
        let exec = executor_detecting_stalls(inline);
        // Dropped first if the test fails: nothing held when the executor shuts down.
        let _release = fs.release_on_drop();
        let line = |what: String| format!("  stall (inline_buffered_writes={inline}): {what}");
        let slow_name = format!("slow-{inline}");
        let slow_data = seed(&fs, &slow_name, 64 * KIB, 7);
        seed(&fs, "fast", 64 * KIB, 8);
        let slow = open(&exec, &fs, &slow_name);
        let fast = open(&exec, &fs, "fast");

        // A read of the stalled file, then the other file's reads.
        hold_slow(&fs, &slow_name);
        let (bytes, l) = beside_held(
            &fs,
            exec.read(&slow, 0, 4 * KIB),
            &exec,
            &fast,
            false,
            "read",
        );
        assert_bytes_eq(&bytes, &slow_data[..4 * KIB], "the held read's bytes");
        lines.push(line(l));
        // An fsync of the stalled file, then the other file's reads.
        hold_slow(&fs, &slow_name);
        let ((), l) = beside_held(&fs, exec.fsync(&slow), &exec, &fast, false, "fsync");
        lines.push(line(l));
        held += 2;
        if inline {
            // The inline write holds the shard thread in pwrite(2): another file's write sent
            // after it cannot complete until the filesystem answers.
            hold_slow(&fs, &slow_name);
            let w = exec.write(&slow, 0, vec![0x5A; 4 * KIB]);
            eventually("the inline write is held", HANG, || fs.held() == 1);
            let other = exec.write(&fast, 0, vec![1; 4 * KIB]);
            // Held well past the 50 ms inline_write_stall (a sleep lasts at least this long),
            // so the shard sees a stalled inline write.
            std::thread::sleep(Duration::from_millis(200));
            assert!(
                !other.is_done(),
                "another file's write completed while an inline write held the shard"
            );
            fs.release_all();
            assert_eq!(ok(w, "the held inline write"), 4 * KIB);
            assert_eq!(ok(other, "the write behind it"), 4 * KIB);
            assert_eq!(&landed(&fs, &slow_name)[..4 * KIB], &[0x5A; 4 * KIB][..]);
            lines.push(line(
                "an inline write held in FUSE held the shard: another file's write waited for it"
                    .into(),
            ));
            held += 1;
        }
        // A write of the stalled file, then the other file's writes. Through the ring, it waits
        // in a kernel worker and the shard goes on; inline, the stalled write above sent this
        // file's buffered writes to the ring for a while, so this one does not hold the shard.
        hold_slow(&fs, &slow_name);
        let w = exec.write(&slow, 0, vec![0x5B; 4 * KIB]);
        let (n, l) = beside_held(&fs, w, &exec, &fast, true, "write");
        assert_eq!(n, 4 * KIB);
        assert_eq!(&landed(&fs, &slow_name)[..4 * KIB], &[0x5B; 4 * KIB][..]);
        lines.push(line(l));
        // A session sees the same: its fast reads come back while its stalled one is held.
        hold_slow(&fs, &slow_name);
        let mut s = exec.session();
        s.read(&slow, 0, 4 * KIB, Vec::new(), 0).unwrap();
        for i in 1..=8u64 {
            s.read(&fast, i * 4096, 4 * KIB, Vec::new(), i).unwrap();
        }
        let mut first = Vec::new();
        while first.len() < 8 {
            s.wait_timeout(8 - first.len(), HANG, &mut first)
                .expect("session wait");
        }
        assert!(
            first.iter().all(|d| d.token != 0),
            "the session's stalled read completed while the filesystem held it"
        );
        eventually("the session's stalled read is held", HANG, || {
            fs.held() == 1
        });
        fs.release_all();
        let rest = session_wait(&mut s, 1);
        assert_eq!(rest[0].token, 0);
        assert!(rest.iter().chain(&first).all(|d| d.result == Ok(4 * KIB)));
        held += 2;
        drop((slow, fast, exec));
    }
    let c = fs.counts();
    assert_eq!(
        c.held, held,
        "one FUSE request held per stalled operation: {c:?}"
    );
    for l in &lines {
        report!("{l}");
    }
    report!(
        "FAULTS stall: held {} operations in FUSE until released; while each was held, reads \
         and fsyncs of the stalled file never held up another file's reads on the same shard, \
         nor its ring writes another file's writes; with inline buffered writes (the default) \
         the first stalled write holds the shard and sends that file's writes to the ring, so \
         the next ones do not; {:.2?}",
        c.held,
        start.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// ENOSPC after N bytes
// ---------------------------------------------------------------------------------------------

#[test]
fn enospc_after_n_bytes_fails_the_write_that_crosses_it() {
    let _serial = serial();
    let _dog = Watchdog::new("enospc", LIMIT);
    let start = Instant::now();
    const ROOM: u64 = 100_000;
    let mut reports = Vec::new();
    let (mut enospc, mut partial) = (0, 0);
    for inline in [true, false] {
        let what = "enospc_after_n_bytes_fails_the_write_that_crosses_it";
        let Some(fs) = mount_for_writes(what, inline) else {
            return;
        };
        let exec = executor(inline);
        let name = format!("full-{inline}");
        let f = open(&exec, &fs, &name);
        let path = fs.join(&name);
        fs.rules()
            .add(&name, &[Op::Write], 0..u64::MAX, Fault::EnospcAfter(ROOM));
        let data = Rng::new(9).bytes(256 * KIB);

        assert_eq!(
            ok(exec.write(&f, 0, data[..64 * KIB].to_vec()), "write"),
            64 * KIB
        );
        // Crosses the limit: FUSE takes 34,464 of its bytes, then ENOSPC; the error says how many.
        let r = wait(exec.write(&f, 64 * KIB as u64, data[64 * KIB..].to_vec()));
        assert_eq!(
            assert_io(&r, "write", &path, libc::ENOSPC),
            Some(64 * KIB as u64)
        );
        assert_eq!(
            r.as_ref().err().and_then(|e| e.written()),
            Some(ROOM - 64 * KIB as u64),
            "the partial write reports what landed: {r:?}"
        );
        assert!(format!("{}", r.as_ref().unwrap_err()).contains("bytes were written"));
        reports.push(format!("{r:?}"));
        // The disk is full: later writes fail too; reads and the bytes written so far are fine.
        let r = wait(exec.write(&f, 0, vec![1; 10]));
        assert_io(&r, "write", &path, libc::ENOSPC);
        let landed_now = landed(&fs, &name);
        assert_eq!(
            landed_now.len() as u64,
            ROOM,
            "the partial write's bytes landed"
        );
        assert_bytes_eq(
            &landed_now,
            &data[..ROOM as usize],
            "bytes before the limit",
        );
        let got = ok(exec.read(&f, 0, ROOM as usize), "read after ENOSPC");
        assert_bytes_eq(&got, &data[..ROOM as usize], "read after ENOSPC");

        // A session's write gets ENOSPC and its buffer back; an fsync after it works.
        let mut s = exec.session();
        s.write(&f, ROOM, vec![7; 4 * KIB], 0).unwrap();
        s.fsync(&f, 1).unwrap();
        let done = session_wait(&mut s, 2);
        assert_io(&done[0].result, "write", &path, libc::ENOSPC);
        assert_eq!(
            done[0].buf,
            vec![7; 4 * KIB],
            "the write's buffer comes back"
        );
        assert_eq!(done[1].result, Ok(0));
        assert_eq!(counted_errors(&exec, libc::ENOSPC), 3);
        fs.rules().clear();
        let c = fs.counts();
        assert_eq!((c.enospc_partial, c.enospc), (1, 3), "{c:?}");
        enospc += c.enospc;
        partial += c.enospc_partial;
        drop((f, exec));
    }
    report!(
        "  enospc: the crossing write reports {} -- its offset is where the write started, and \
         `written` how many of its bytes landed ({} of {})",
        reports[0],
        ROOM - 64 * KIB as u64,
        192 * KIB
    );
    report!(
        "FAULTS enospc: injected {} ENOSPC and {} writes cut short at the limit; every crossing or \
         later write failed with ENOSPC (op, path, start offset), bytes before the limit intact, \
         the crossing write's partial count reported exactly; {:.2?}",
        enospc,
        partial,
        start.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// fsync failing once ("fsyncgate")
// ---------------------------------------------------------------------------------------------

#[test]
fn a_failed_fsync_is_reported_never_hidden() {
    let _serial = serial();
    let _dog = Watchdog::new("fsync_fails_once", LIMIT);
    let start = Instant::now();
    let fs = mount_or_return!("a_failed_fsync_is_reported_never_hidden");
    let exec = executor(true);
    let f = open(&exec, &fs, "sync");
    let path = fs.join("sync");
    let mut failed = 0u64;

    // Routed: write, fsync (fails), fsync again.
    assert_eq!(ok(exec.write(&f, 0, vec![1; 8 * KIB]), "write"), 8 * KIB);
    fs.rules()
        .add("sync", &[Op::Fsync], 0..0, Fault::FailFsyncOnce);
    let first = wait(exec.fsync(&f));
    assert_io(&first, "fsync", &path, libc::EIO);
    failed += 1;
    let second = wait(exec.fsync(&f));
    let second_routed = format!("{second:?}");

    // fdatasync, the same.
    fs.rules()
        .add("sync", &[Op::Fsync], 0..0, Fault::FailFsyncOnce);
    let r = wait(exec.fdatasync(&f));
    assert_io(&r, "fdatasync", &path, libc::EIO);
    failed += 1;

    // Session: write, fsync, write, fdatasync; each with its own result. The executor does not
    // order syncs of one file against each other: once the (inline) writes are done, both are in
    // flight together, on threads that reach the filesystem in any order. So the rule fails the
    // one that arrives first, and the filesystem's record of its kind names the request.
    let mut rules = fs.rules();
    rules.clear();
    rules.add("sync", &[Op::Fsync], 0..0, Fault::FailFsyncOnce);
    drop(rules);
    let mut s = exec.session();
    s.write(&f, 8 * KIB as u64, vec![2; 4 * KIB], 0).unwrap();
    s.fsync(&f, 1).unwrap();
    s.write(&f, 12 * KIB as u64, vec![3; 4 * KIB], 2).unwrap();
    s.fdatasync(&f, 3).unwrap();
    let done = session_wait(&mut s, 4);
    assert_eq!(done[0].result, Ok(4 * KIB));
    assert_eq!(done[2].result, Ok(4 * KIB));
    let seen = fs.rules().syncs_seen("sync");
    assert_eq!(seen.len(), 2, "both syncs reached the filesystem: {seen:?}");
    assert_eq!(seen[0].errno, Some(libc::EIO), "{seen:?}");
    assert_eq!(seen[1].errno, None, "{seen:?}");
    assert_ne!(seen[0].datasync, seen[1].datasync, "{seen:?}");
    let (failed_sync, other) = if seen[0].datasync { (3, 1) } else { (1, 3) };
    let op = if seen[0].datasync {
        "fdatasync"
    } else {
        "fsync"
    };
    assert_io(&done[failed_sync].result, op, &path, libc::EIO);
    failed += 1;
    let second_session = format!("{:?}", done[other].result);

    let c = fs.counts();
    assert_eq!(c.fsync_failed, failed, "{c:?}");
    assert_eq!(counted_errors(&exec, libc::EIO), failed);
    let mut want = vec![1; 8 * KIB];
    want.extend_from_slice(&[2; 4 * KIB]);
    want.extend_from_slice(&[3; 4 * KIB]);
    assert_bytes_eq(
        &landed(&fs, "sync"),
        &want,
        "the writes around the failed fsyncs",
    );
    drop((f, exec));
    report!(
        "  fsync: the fsync after a failed one returned {second_routed} (routed) and the sync \
         that reached the filesystem after the failed one {second_session} (session): the \
         filesystem's answer, passed through. A real kernel \
         does the same after a writeback error (reported once per file description, the pages \
         marked clean): the caller must treat the first failure as data loss."
    );
    report!(
        "FAULTS fsync: injected {} fsync/fdatasync failures; each failed request reported EIO \
         (op, path), none reported success; writes after it landed; {:.2?}",
        c.fsync_failed,
        start.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Per-file order under faults
// ---------------------------------------------------------------------------------------------

#[test]
fn per_file_order_holds_under_faults() {
    let _serial = serial();
    let _dog = Watchdog::new("order_under_faults", LIMIT);
    let start = Instant::now();
    let fs = mount_or_return!("per_file_order_holds_under_faults");
    let mut rounds = 0;
    for inline in [true, false] {
        let exec = executor(inline);
        let _release = fs.release_on_drop();
        for round in 0..3u8 {
            let name = format!("ord-{inline}-{round}");
            let f = open(&exec, &fs, &name);
            let path = fs.join(&name);
            // The first write to 0..4K is held in FUSE until everything after it was sent; a
            // write touching byte 8192 fails.
            {
                let mut r = fs.rules();
                r.add(&name, &[Op::Write], 0..1, Fault::Hold);
                r.add(&name, &[Op::Write], 8192..8193, Fault::Eio);
            }
            let a = vec![0xA0 + round; 4 * KIB];
            let b = vec![0xB0 + round; 4 * KIB];
            let x = vec![0xEE; 4 * KIB];
            let y = vec![0xC0 + round; 4 * KIB - 8];
            let w1 = exec.write(&f, 0, a.clone()); // held
            let r1 = exec.read(&f, 0, 4 * KIB); // must see w1
            let w2 = exec.write(&f, 0, b.clone()); // must not overtake w1 or r1
            let w3 = exec.write(&f, 8192, x); // fails
            let w4 = exec.write(&f, 8200, y.clone()); // after w3, lands
                                                      // A session, behind them: its write to 4K..8K lands, its read sees everything.
            let mut s = exec.session();
            s.write(&f, 4096, vec![0xD0 + round; 4 * KIB], 0).unwrap();
            s.read(&f, 0, 12 * KIB, Vec::new(), 1).unwrap();
            s.flush();
            eventually("the first write is held", HANG, || fs.held() == 1);
            assert!(
                !r1.is_done() && !w2.is_done(),
                "r1 or w2 overtook the held write"
            );
            // Only the hold goes: w2 (also at 0) is not held when it comes; the EIO rule stays.
            fs.rules().remove_holds();
            fs.release_held();

            assert_eq!(ok(w1, "held write"), 4 * KIB);
            assert_bytes_eq(&ok(r1, "read after the held write"), &a, "r1 sees w1");
            assert_eq!(ok(w2, "write after"), 4 * KIB);
            assert_io(&wait(w3), "write", &path, libc::EIO);
            assert_eq!(ok(w4, "write after the failed one"), y.len());
            let mut want = b.clone();
            want.extend_from_slice(&[0xD0 + round; 4 * KIB]);
            want.extend_from_slice(&[0; 8]);
            want.extend_from_slice(&y);
            let done = session_wait(&mut s, 2);
            assert_eq!(done[0].result, Ok(4 * KIB));
            assert_eq!(done[1].result, Ok(12 * KIB));
            assert_bytes_eq(&done[1].buf, &want, "session read sees every earlier write");
            assert_bytes_eq(&landed(&fs, &name), &want, "what landed, in order");
            fs.rules().clear();
            rounds += 1;
        }
    }
    let c = fs.counts();
    assert_eq!(c.eio, rounds, "{c:?}");
    report!(
        "FAULTS order: {rounds} rounds (inline and ring writes), each with a write held in FUSE \
         until the later ones were sent and one failing with EIO; every later overlapping \
         read/write waited for them, the failed write left its range untouched and the writes \
         after it landed in order (held {} writes, injected {} EIO); {:.2?}",
        c.held,
        c.eio,
        start.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// O_DIRECT
// ---------------------------------------------------------------------------------------------

/// Opens `name` O_DIRECT, or says why O_DIRECT is not covered (the kernel refused it).
fn open_direct(exec: &Executor, fs: &FaultFs, name: &str) -> Option<File> {
    let mut o = rw();
    o.direct(true);
    match wait(exec.open(fs.join(name), &o)) {
        Ok(f) => Some(f),
        Err(e) => {
            report!("SKIPPED O_DIRECT faults: this kernel refuses O_DIRECT on FUSE: {e}");
            None
        }
    }
}

#[test]
fn o_direct_eio_and_enospc_mid_write() {
    let _serial = serial();
    let _dog = Watchdog::new("o_direct", LIMIT);
    let start = Instant::now();
    let what = "o_direct_eio_and_enospc_mid_write";
    // EIO on one block: the O_DIRECT read that covers it fails, others are intact.
    let fs = mount_or_return!(what);
    let exec = executor(true);
    let want = seed(&fs, "d", MIB, 11);
    let Some(f) = open_direct(&exec, &fs, "d") else {
        return;
    };
    let path = fs.join("d");
    fs.rules().add("d", &[Op::Read], 8192..8193, Fault::Eio);
    let r = wait(exec.read(&f, 0, 256 * KIB));
    assert_eq!(assert_io(&r, "read", &path, libc::EIO), Some(0));
    let got = ok(
        exec.read(&f, 64 * KIB as u64, 64 * KIB),
        "O_DIRECT read beside the bad block",
    );
    assert_bytes_eq(
        &got,
        &want[64 * KIB..128 * KIB],
        "O_DIRECT read beside the bad block",
    );
    let mut s = exec.session();
    s.read(&f, 4096, 8192, Vec::new(), 0).unwrap();
    s.read(&f, 512 * KIB as u64, 512 * KIB, Vec::new(), 1)
        .unwrap();
    let done = session_wait(&mut s, 2);
    assert_io(&done[0].result, "read", &path, libc::EIO);
    assert_bytes_eq(&done[1].buf, &want[512 * KIB..], "O_DIRECT session read");
    let eio = fs.counts().eio;
    drop((s, f, exec, fs));

    // ENOSPC in the middle of a multi-chunk O_DIRECT write (16 chunks of 64 KiB in flight), on a
    // mount where the kernel passes the short write back (see `mount_for_writes`).
    let Some(fs) = mount_for_writes(what, false) else {
        return;
    };
    let exec = executor(true);
    let old = seed(&fs, "d", MIB, 12);
    let Some(f) = open_direct(&exec, &fs, "d") else {
        return;
    };
    const ROOM: u64 = 400 * 1024;
    fs.rules()
        .add("d", &[Op::Write], 0..u64::MAX, Fault::EnospcAfter(ROOM));
    let new = Rng::new(13).bytes(MIB);
    let r = wait(exec.write(&f, 0, new.clone()));
    assert_eq!(assert_io(&r, "write", &fs.join("d"), libc::ENOSPC), Some(0));
    // What landed: each 4 KiB block is the new data or the old, never anything else, and no more
    // than the room there was.
    let now = landed(&fs, "d");
    assert_eq!(now.len(), MIB);
    let mut new_blocks = 0;
    for (i, b) in now.chunks(4096).enumerate() {
        if b == &new[i * 4096..(i + 1) * 4096] {
            new_blocks += 1;
        } else {
            assert_bytes_eq(
                b,
                &old[i * 4096..(i + 1) * 4096],
                "a block the write did not reach",
            );
        }
    }
    assert!(
        new_blocks as u64 * 4096 <= ROOM,
        "{new_blocks} blocks landed"
    );
    let first_gap = now
        .chunks(4096)
        .enumerate()
        .position(|(i, b)| b != &new[i * 4096..(i + 1) * 4096])
        .unwrap_or(MIB / 4096);
    // The error reports a prefix that really landed: never more than the first gap.
    let written = r.as_ref().err().and_then(|e| e.written()).expect("written");
    assert!(
        written <= first_gap as u64 * 4096 && written % 4096 == 0,
        "reported {written} bytes written, but the landed prefix is {} KiB",
        first_gap * 4
    );
    assert_bytes_eq(
        &now[..written as usize],
        &new[..written as usize],
        "the reported prefix",
    );
    let c = fs.counts();
    drop((f, exec));
    report!(
        "  o_direct: a 1 MiB O_DIRECT write with room for {} KiB failed with {r:?}; {} KiB of it \
         landed ({} KiB as one prefix; the error reports a landed prefix)",
        ROOM / 1024,
        new_blocks * 4,
        first_gap * 4
    );
    report!(
        "FAULTS o_direct: injected {eio} EIO on O_DIRECT reads (each covering read failed with \
         EIO, op, path, offset; others intact) and {} ENOSPC + {} cut-short writes in one \
         multi-chunk O_DIRECT write (reported ENOSPC at its start offset, with a written prefix \
         that really landed); {:.2?}",
        c.enospc,
        c.enospc_partial,
        start.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// What the kernel does with a short read of a FUSE direct_io file
// ---------------------------------------------------------------------------------------------

/// Reads 4 KiB at offset 0 of a 2,000-byte file (a short read: end of file) through the
/// executor, on a mount with and without `FUSE_ASYNC_DIO`. With it, the executor returns the
/// 2,000 bytes (asserted: the other tests rely on it). Without it, this kernel retries the short
/// read itself at the same offset and reports 4 KiB with bytes repeated: printed, not asserted
/// (a kernel fix would change it), and the reason the other tests avoid short reads there.
#[test]
fn short_read_at_eof_through_fuse_direct_io() {
    let _serial = serial();
    let _dog = Watchdog::new("short_read_at_eof", LIMIT);
    for async_dio in [true, false] {
        let Some(fs) = faultfs::mount_with_or_skip("short_read_at_eof", async_dio) else {
            return;
        };
        let exec = executor(true);
        let want = seed(&fs, "eof", 2000, 14);
        let f = open(&exec, &fs, "eof");
        let got = ok(exec.read(&f, 0, 4 * KIB), "read across EOF");
        let repeated = got.len() == 4 * KIB && got[2000..4000] == want[..];
        report!(
            "  eof (FUSE_ASYNC_DIO {async_dio}): a 4 KiB read of a 2000-byte file returned {} \
             bytes{}",
            got.len(),
            if repeated {
                " (the file's bytes, then the same bytes again)"
            } else {
                ""
            }
        );
        if async_dio {
            assert_bytes_eq(&got, &want, "read across EOF with FUSE_ASYNC_DIO");
        }
        drop((f, exec));
    }
}

// ---------------------------------------------------------------------------------------------
// Shard tasks under faults
// ---------------------------------------------------------------------------------------------

/// A task's result: how many operations failed as they should, and how many others were intact.
type Tally = (u64, u64);

/// Tasks on the owning shard (`spawn_on_owner`, `ringshard::local()`) doing their I/O without the
/// channel on faultfs files: EIO on a read range and on a write range fails exactly the
/// operations that touch them (op, path, offset, EIO), other ranges and another file are intact;
/// per-file order holds behind a write held in FUSE; and the same through O_DIRECT (`read`
/// through the pool and `read_pooled`).
#[test]
fn shard_tasks_under_faults() {
    let _serial = serial();
    let _dog = Watchdog::new("shard_tasks_under_faults", LIMIT);
    let start = Instant::now();
    let fs = mount_or_return!("shard_tasks_under_faults");
    let exec = executor(true);
    let a_data = seed(&fs, "ta", 256 * KIB, 21);
    let b_data = seed(&fs, "tb", 256 * KIB, 22);
    let a = open(&exec, &fs, "ta");
    let b = open(&exec, &fs, "tb");
    let pa = fs.join("ta");
    {
        let mut r = fs.rules();
        r.add(
            "ta",
            &[Op::Read],
            64 * KIB as u64..68 * KIB as u64,
            Fault::Eio,
        );
        r.add(
            "ta",
            &[Op::Write],
            200 * KIB as u64..204 * KIB as u64,
            Fault::Eio,
        );
    }

    // Page cache: EIO on ranges, everything else intact.
    let (f1, fb, a1, b1) = (a.clone(), b.clone(), a_data.clone(), b_data.clone());
    let (failed, fine): Tally = exec
        .spawn_on_owner(&a, async move {
            let l = ringshard::local().expect("a shard task");
            assert!(l.owns(&f1) && l.owns(&fb), "one shard owns both files");
            let (mut failed, mut fine) = (0, 0);
            // Issued together: all in flight at once, each with its own result.
            let bad: Vec<_> = [(64 * KIB, 4 * KIB), (60 * KIB, 8 * KIB), (67 * KIB, 100)]
                .into_iter()
                .map(|(off, len)| (off, l.read(&f1, off as u64, len)))
                .collect();
            let good: Vec<_> = [(0, 64 * KIB), (68 * KIB, 4 * KIB), (128 * KIB, 128 * KIB)]
                .into_iter()
                .map(|(off, len)| (off, len, l.read(&f1, off as u64, len)))
                .collect();
            let other = l.read(&fb, 0, 256 * KIB);
            let wbad = l.write(&f1, 202 * KIB as u64, vec![0xEE; 4 * KIB]);
            let wgood = l.write(&f1, 64 * KIB as u64, vec![0xAB; 4 * KIB]);
            for (off, c) in bad {
                let r = c.await;
                assert_eq!(assert_io(&r, "read", &pa, libc::EIO), Some(off as u64));
                failed += 1;
            }
            for (off, len, c) in good {
                assert_bytes_eq(
                    &c.await.expect("read beside"),
                    &a1[off..off + len],
                    "beside",
                );
                fine += 1;
            }
            assert_bytes_eq(&other.await.expect("read b"), &b1, "the other file");
            let r = wbad.await;
            assert_eq!(
                assert_io(&r, "write", &pa, libc::EIO),
                Some(202 * KIB as u64)
            );
            failed += 1;
            // Writes are not covered by the read rule: one into the bad read range lands.
            assert_eq!(wgood.await, Ok(4 * KIB));
            fine += 2;
            (failed, fine)
        })
        .wait()
        .expect("page-cache task");
    assert_bytes_eq(
        &landed(&fs, "ta")[64 * KIB..68 * KIB],
        &[0xAB; 4 * KIB],
        "the write into the bad read range",
    );
    assert_bytes_eq(
        &landed(&fs, "ta")[200 * KIB..204 * KIB],
        &a_data[200 * KIB..204 * KIB],
        "the failed write left its range untouched",
    );

    // Per-file order behind a write held in FUSE: the read after it sees it, the write after it
    // lands last; with writes through the ring (not inline), an unrelated read of the file
    // completes while the write is held; inline, the held write holds the shard thread (and the
    // task on it) until the filesystem answers.
    let mut order_lines = Vec::new();
    let mut order_rounds = 0;
    for inline in [true, false] {
        let ex = executor(inline);
        let _release = fs.release_on_drop();
        let fb = open(&ex, &fs, "tb");
        std::fs::write(fs.backing("tb"), &b_data).unwrap();
        fs.rules().add("tb", &[Op::Write], 0..1, Fault::Hold);
        let (other_tx, other_rx) = std::sync::mpsc::channel();
        let f2 = fb.clone();
        let task = ex.spawn_on_owner(&fb, async move {
            let l = ringshard::local().unwrap();
            let w1 = l.write(&f2, 0, vec![0xA1; 4 * KIB]);
            let r1 = l.read(&f2, 0, 8 * KIB);
            let w2 = l.write(&f2, 2 * KIB as u64, vec![0xB2; 4 * KIB]);
            let r2 = l.read(&f2, 0, 8 * KIB);
            let other = l.read(&f2, 128 * KIB as u64, 4 * KIB); // no overlap
            let other = other.await.unwrap();
            let _ = other_tx.send(());
            assert_eq!(w1.await, Ok(4 * KIB));
            let r1 = r1.await.unwrap();
            assert_eq!(w2.await, Ok(4 * KIB));
            let r2 = r2.await.unwrap();
            (r1, r2, other)
        });
        eventually("the first write is held in the filesystem", HANG, || {
            fs.held() == 1
        });
        if inline {
            assert!(
                other_rx.try_recv().is_err(),
                "the task ran while its inline write held the shard thread"
            );
        } else {
            other_rx
                .recv_timeout(HANG)
                .expect("an unrelated read waited for a held ring write");
            assert_eq!(fs.held(), 1, "the first write is still held");
        }
        fs.release_all();
        let (r1, r2, other) = task.wait().expect("order task");
        let mut want1 = vec![0xA1; 4 * KIB];
        want1.extend_from_slice(&b_data[4 * KIB..8 * KIB]);
        assert_bytes_eq(&r1, &want1, "the read after the held write sees it");
        let mut want2 = vec![0xA1; 2 * KIB];
        want2.extend_from_slice(&[0xB2; 4 * KIB]);
        want2.extend_from_slice(&b_data[6 * KIB..8 * KIB]);
        assert_bytes_eq(&r2, &want2, "the second write landed after the held one");
        assert_bytes_eq(
            &landed(&fs, "tb")[..8 * KIB],
            &want2,
            "what landed, in order",
        );
        assert_bytes_eq(&other, &b_data[128 * KIB..132 * KIB], "unrelated read");
        order_lines.push(format!(
            "inline_buffered_writes={inline}: the unrelated read {}",
            if inline {
                "waited for the held write"
            } else {
                "completed while the write was held"
            }
        ));
        order_rounds += 1;
        drop((fb, ex));
    }

    // O_DIRECT: `read` through the pool and `read_pooled`, EIO on one block.
    let d_data = seed(&fs, "td", 256 * KIB, 23);
    let Some(d) = open_direct(&exec, &fs, "td") else {
        return;
    };
    let pd = fs.join("td");
    fs.rules().add("td", &[Op::Read], 8192..8193, Fault::Eio);
    let (d1, dd) = (d.clone(), d_data.clone());
    let (dfailed, dfine): Tally = exec
        .spawn_on_with(d.shard(), move |l| async move {
            let (mut failed, mut fine) = (0, 0);
            let r = l.read(&d1, 0, 64 * KIB).await;
            assert_eq!(assert_io(&r, "read", &pd, libc::EIO), Some(0));
            failed += 1;
            let r = l.read_pooled(&d1, 8192, 4096).await;
            assert_eq!(assert_io(&r, "read", &pd, libc::EIO), Some(8192));
            failed += 1;
            let got = l.read(&d1, 64 * KIB as u64, 64 * KIB).await.unwrap();
            assert_bytes_eq(&got, &dd[64 * KIB..128 * KIB], "O_DIRECT read beside");
            for off in [0, 4096, 12288, 128 * KIB] {
                let p = l.read_pooled(&d1, off as u64, 4096).await.unwrap();
                assert_bytes_eq(&p, &dd[off..off + 4096], "pooled read beside");
                fine += 1;
            }
            (failed, fine + 1)
        })
        .wait()
        .expect("O_DIRECT task");
    fs.rules().clear();
    let c = fs.counts();
    let counted = counted_errors(&exec, libc::EIO);
    let total_failed = failed + dfailed;
    assert_eq!(
        counted, total_failed,
        "the executor counts each failure once"
    );
    assert_eq!(c.eio, total_failed, "one injected EIO per failed op: {c:?}");
    eventually("every pool buffer back", HANG, || {
        let p = exec.stats().total.pool;
        p.available_count == p.total_count
    });
    drop((a, b, d, exec));
    report!(
        "FAULTS tasks: injected {} EIO and held {} writes in FUSE under shard tasks' local I/O \
         (page cache, O_DIRECT read and read_pooled); {total_failed} ops failed with EIO naming \
         op, path and offset (executor counted {counted}); {} others intact; in {order_rounds} \
         rounds a read/write behind a held write waited and saw it, an unrelated read of the \
         file waited only with inline writes ({}); {:.2?}",
        c.eio,
        c.held,
        fine + dfine,
        order_lines.join("; "),
        start.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Pool buffers of a stalled O_DIRECT read: released only at its CQE
// ---------------------------------------------------------------------------------------------

/// How the caller lets go of a stalled read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LetGo {
    /// Drops its `Completion`.
    Drop,
    /// Calls `cancel()` and waits.
    Cancel,
    /// Its `timeout()` deadline passes.
    Deadline,
    /// A task drops its `read_pooled` future before it is done.
    PooledDropped,
}

const BUF: usize = 64 * KIB;

/// One round: a 64 KiB O_DIRECT read of `f` at 0 (one pool buffer) held in FUSE (unanswered until
/// the test lets go), let go of as `how`; meanwhile a task takes the pool's 3 other buffers with
/// `read_pooled` and asks for a 4th. Checks that a cancelled or deadlined handle fails while the
/// read is still held, that the held read's buffer stays out of the pool (the 4th waits) until
/// the filesystem answers it, that the buffers lent meanwhile keep their bytes (no late kernel
/// write into them), and returns a line on what happened.
fn stalled_round(exec: &Executor, fs: &FaultFs, f: &File, data: &[u8], how: LetGo) -> String {
    fs.rules().add("s", &[Op::Read], 0..1, Fault::Hold);
    let exhausted0 = exec.stats().total.pool_exhausted_events;
    let in_kernel = |what: &str| {
        eventually(what, HANG, || {
            fs.held() == 1 && exec.stats().total.pool.kernel_owned_count == 1
        });
    };
    let mut early = None;
    match how {
        LetGo::Drop | LetGo::Cancel => {
            let c = exec.read(f, 0, BUF);
            in_kernel("the stalled read holds a buffer and is held in the filesystem");
            if how == LetGo::Cancel {
                // Like a deadline: the handle fails at the next scan, not at the completion.
                c.cancel();
                let mut c = c;
                let r = c.wait_timeout(HANG);
                assert!(matches!(r, Err(Error::Cancelled { .. })), "{r:?}");
                assert_eq!(fs.held(), 1, "cancel() took effect while the read was held");
                early = Some("Cancelled");
            }
        }
        LetGo::Deadline => {
            // The handle fails at its deadline (within a scan) while the read is still held:
            // the op and its buffer stay in the shard until the filesystem answers. A read whose
            // deadline passed before the shard issued it never runs (a machine too busy to issue
            // it in time): then again, with a longer deadline.
            let mut issued = None;
            for d in [100, 1_000, 10_000].map(Duration::from_millis) {
                let mut c = exec.timeout(d).read(f, 0, BUF);
                let r = c.wait_timeout(HANG);
                assert!(
                    matches!(r, Err(Error::DeadlineExceeded { .. })),
                    "deadline: {r:?}"
                );
                if exec.stats().total.pool.kernel_owned_count == 1 {
                    issued = Some("DeadlineExceeded");
                    break;
                }
                assert_eq!(fs.held(), 0, "a read skipped at its deadline reached FUSE");
            }
            early = Some(issued.expect("a deadlined read issued before its deadline"));
            in_kernel("the deadlined read is held in the filesystem");
        }
        LetGo::PooledDropped => {}
    }
    // Set just before the held read is answered: a 4th buffer handed out earlier was the held
    // read's, released before its completion.
    let answered = Arc::new(AtomicBool::new(false));
    let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
    let (f2, want, answered2) = (f.clone(), data.to_vec(), Arc::clone(&answered));
    let task = exec.spawn_on_with(f.shard(), move |l| async move {
        if how == LetGo::PooledDropped {
            // Dropped once the test has seen it held in the filesystem.
            let stalled = Box::pin(l.read_pooled(&f2, 0, BUF));
            match futures::future::select(stalled, gate_rx).await {
                futures::future::Either::Left((r, _)) => panic!("not held: {r:?}"),
                futures::future::Either::Right((_, stalled)) => drop(stalled),
            }
        }
        let mut held = Vec::new();
        for off in [BUF, 2 * BUF, 3 * BUF] {
            let p = l
                .read_pooled(&f2, off as u64, BUF)
                .await
                .expect("pooled read");
            held.push((off, p));
        }
        let fourth = l.read_pooled(&f2, 4 * BUF as u64, BUF).await;
        let after_answer = answered2.load(Ordering::SeqCst);
        let fourth = fourth.expect("the 4th pooled read");
        assert_bytes_eq(&fourth, &want[4 * BUF..5 * BUF], "the 4th pooled read");
        let mut indexes = vec![fourth.buffer_index()];
        for (off, p) in &held {
            assert_bytes_eq(p, &want[*off..off + BUF], "a buffer held across the stall");
            indexes.push(p.buffer_index());
        }
        (after_answer, indexes)
    });
    if how == LetGo::PooledDropped {
        in_kernel("the task's pooled read holds a buffer and is held in the filesystem");
        let _ = gate_tx.send(());
    }
    // While the task waits for its 4th buffer: the pool is empty, one buffer is in the kernel.
    eventually("the 4th pooled read waits for a buffer", HANG, || {
        let total = exec.stats().total;
        let waiting = total.pool_exhausted_events > exhausted0 && total.pool.available_count == 0;
        waiting || task.is_finished()
    });
    let during = exec.stats().total.pool;
    assert_eq!(fs.held(), 1, "{how:?}: the read is still held");
    answered.store(true, Ordering::SeqCst);
    fs.release_all();
    let (after_answer, indexes) = task.wait().expect("the task");
    assert!(
        after_answer,
        "{how:?}: the 4th buffer was handed out while the stalled read was still held in FUSE: \
         its buffer was released before its completion"
    );
    assert_eq!(
        (during.available_count, during.kernel_owned_count),
        (0, 1),
        "{how:?}: while the read was held, 3 buffers lent to the task and 1 in the kernel: \
         {during:?}"
    );
    let mut sorted = indexes.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 4, "four distinct buffers: {indexes:?}");
    eventually("every buffer back in the pool", HANG, || {
        let p = exec.stats().total.pool;
        p.available_count == p.total_count && p.kernel_owned_count == 0
    });
    format!(
        "{how:?}: pool while the read was held: {} free, {} in the kernel; the 4th buffer (#{}) \
         was handed out only after the filesystem answered{}",
        during.available_count,
        during.kernel_owned_count,
        indexes[0],
        match early {
            Some(e) => format!("; the handle failed ({e}) while the read was held"),
            None => String::new(),
        }
    )
}

/// An O_DIRECT read held in FUSE keeps its registered pool buffer out of the pool until its
/// completion arrives, however the caller lets go of it (drop, `cancel()`, a `timeout()` deadline,
/// a task dropping its `read_pooled` future); later reads that reuse the buffers get the right
/// bytes.
#[test]
fn stalled_o_direct_read_keeps_its_buffer_until_its_cqe() {
    let _serial = serial();
    let _dog = Watchdog::new("stalled_o_direct_buffers", LIMIT);
    let start = Instant::now();
    let fs = mount_or_return!("stalled_o_direct_read_keeps_its_buffer_until_its_cqe");
    let exec = Executor::builder()
        .shards(1)
        .buffer_size(BUF)
        .buffer_count(4)
        .build()
        .expect("executor");
    let _release = fs.release_on_drop();
    let data = seed(&fs, "s", 16 * BUF, 31);
    let Some(f) = open_direct(&exec, &fs, "s") else {
        return;
    };
    let mut lines = Vec::new();
    for how in [
        LetGo::Drop,
        LetGo::Cancel,
        LetGo::Deadline,
        LetGo::PooledDropped,
    ] {
        lines.push(stalled_round(&exec, &fs, &f, &data, how));
        // Every buffer reused: reads over the whole file, 4 at a time, routed and pooled.
        let reads: Vec<_> = (0..16)
            .map(|i| (i, exec.read(&f, (i * BUF) as u64, BUF)))
            .collect();
        for (i, c) in reads {
            assert_bytes_eq(
                &ok(c, "read after the stall"),
                &data[i * BUF..(i + 1) * BUF],
                "a read reusing the buffers",
            );
        }
        let (f2, want) = (f.clone(), data.clone());
        exec.spawn_on_with(f.shard(), move |l| async move {
            for i in 0..16 {
                let p = l.read_pooled(&f2, (i * BUF) as u64, BUF).await.unwrap();
                assert_bytes_eq(&p, &want[i * BUF..(i + 1) * BUF], "pooled read after");
            }
        })
        .wait()
        .expect("pooled reads after the stall");
    }
    let c = fs.counts();
    let pool = exec.stats().total.pool;
    assert_eq!(pool.misuse_total(), 0, "{pool:?}");
    drop((f, exec));
    for l in &lines {
        report!("  buffers: {l}");
    }
    report!(
        "FAULTS buffers: {} O_DIRECT reads held in FUSE and let go (drop, cancel, deadline, \
         dropped read_pooled future); each kept its pool buffer until its completion (the 4th \
         buffer waited), buffers lent meanwhile kept their bytes, and 128 reads reusing the \
         buffers afterwards were intact; {:.2?}",
        c.held,
        start.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Truncate and unlink while reads are in flight
// ---------------------------------------------------------------------------------------------

const T_SIZE: usize = MIB;
const T_SHORT: usize = 256 * KIB;
const T_LONG: usize = 768 * KIB;

/// What the reads of one wave returned: (offset, asked length, result).
type Reads = Vec<(usize, usize, ringshard::Result<Vec<u8>>)>;

/// `n` reads of 4..64 KiB anywhere in the original file, from a seeded generator.
fn read_set(seed: u64, n: usize) -> Vec<(usize, usize)> {
    let mut r = Rng::new(seed);
    (0..n)
        .map(|_| {
            let len = r.range(1, 17) as usize * 4 * KIB;
            let off = r.below((T_SIZE / (4 * KIB)) as u64) as usize * 4 * KIB;
            (off, len)
        })
        .collect()
}

/// A wave of reads in flight: routed completions, one session, and one task on the file's shard.
struct Wave {
    routed: Vec<(usize, usize, Completion<Vec<u8>>)>,
    session: (Session, Vec<(usize, usize)>),
    task: ringshard::JoinHandle<Reads>,
    /// The task's reads (offset, length).
    task_set: Vec<(usize, usize)>,
}

impl Wave {
    fn start(exec: &Executor, f: &File, seed: u64, n: usize) -> Wave {
        let routed = read_set(seed, n)
            .into_iter()
            .map(|(o, l)| (o, l, exec.read(f, o as u64, l)))
            .collect();
        let mut s = exec.session();
        let set = read_set(seed + 1, n);
        for (i, (o, l)) in set.iter().enumerate() {
            s.read(f, *o as u64, *l, Vec::new(), i as u64).unwrap();
        }
        s.flush();
        let (f2, set2) = (f.clone(), read_set(seed + 2, n));
        let task_set = set2.clone();
        let task = exec.spawn_on_owner(f, async move {
            let l = ringshard::local().unwrap();
            let pending: Vec<_> = set2
                .into_iter()
                .map(|(o, n)| (o, n, l.read(&f2, o as u64, n)))
                .collect();
            let mut out = Vec::new();
            for (o, n, c) in pending {
                out.push((o, n, c.await));
            }
            out
        });
        Wave {
            routed,
            session: (s, set),
            task,
            task_set,
        }
    }

    /// How many of its reads have not completed yet (the session's and task's count as one each
    /// while any of theirs is pending).
    fn pending(&self) -> usize {
        self.routed.iter().filter(|(_, _, c)| !c.is_done()).count()
            + usize::from(!self.task.is_finished())
    }

    /// How many of its reads that start below `size` have completed (the task's count as one):
    /// none may while the filesystem holds the file's reads, as each needs its answer. (A read
    /// that starts past the end of the file may come back empty without reaching it.)
    fn completed_below(&self, size: usize) -> usize {
        let routed = self
            .routed
            .iter()
            .filter(|(o, _, c)| *o < size && c.is_done())
            .count();
        let task = self.task.is_finished() && self.task_set.iter().any(|(o, _)| *o < size);
        routed + usize::from(task)
    }

    fn finish(self) -> Reads {
        let mut out: Reads = self
            .routed
            .into_iter()
            .map(|(o, l, c)| (o, l, wait(c)))
            .collect();
        let (mut s, set) = self.session;
        for d in session_wait(&mut s, set.len()) {
            let (o, l) = set[d.token as usize];
            out.push((o, l, d.result.map(|_| d.buf)));
        }
        out.extend(self.task.wait().expect("the reading task"));
        out
    }
}

/// What the file holds after the truncations: the original below `T_SHORT`, zeros up to
/// `T_LONG`, nothing past it.
fn after_truncations(orig: &[u8]) -> Vec<u8> {
    let mut v = orig[..T_SHORT].to_vec();
    v.resize(T_LONG, 0);
    v
}

/// Checks reads that raced the truncations: every result is data or the kernel's errno (counted
/// in `errnos`); reads wholly below the shortest size got the original bytes in full; others got
/// at most what they asked, each byte the original or a zero (the file re-extended).
fn check_racing(
    reads: &Reads,
    orig: &[u8],
    errnos: &mut std::collections::BTreeMap<i32, u64>,
    short: &mut usize,
) {
    for (off, len, r) in reads {
        match r {
            Ok(got) => {
                assert!(got.len() <= *len);
                *short += usize::from(got.len() < *len);
                if off + len <= T_SHORT {
                    assert_bytes_eq(got, &orig[*off..off + len], "a read below the new size");
                } else {
                    for (i, b) in got.iter().enumerate() {
                        assert!(
                            *b == orig[off + i] || *b == 0,
                            "byte {} read while truncating is neither the old one nor zero",
                            off + i
                        );
                    }
                }
            }
            Err(Error::Io { errno, .. }) => *errnos.entry(*errno).or_default() += 1,
            Err(e) => panic!("a read racing a truncate failed with a non-kernel error: {e:?}"),
        }
    }
}

/// Checks reads of a file whose content is settled at `now` (exact bytes, short at its end).
fn check_settled(reads: &Reads, now: &[u8], what: &str) {
    for (off, len, r) in reads {
        let got = r
            .as_ref()
            .unwrap_or_else(|e| panic!("{what}: read at {off}: {e:?}"));
        let want = &now[(*off).min(now.len())..(off + len).min(now.len())];
        assert_bytes_eq(got, want, what);
    }
}

/// One run on `dir`'s file `name`: waves of reads in flight while another handle truncates the
/// file shorter then longer, then while it is unlinked. On faultfs (`fs`), the filesystem holds
/// every read of the file (unanswered) until both truncations, and again until the unlink, are
/// done: all of them are in flight then, on any machine (asserted), and are answered after it.
/// Returns (reads checked, racing reads cut short, reads in flight at the truncation and at the
/// unlink, errnos seen).
fn truncate_unlink_run(
    exec: &Executor,
    path: &Path,
    fs: Option<&FaultFs>,
    seed: u64,
) -> (
    usize,
    usize,
    usize,
    usize,
    std::collections::BTreeMap<i32, u64>,
) {
    const N: usize = 24;
    let orig = Rng::new(seed).bytes(T_SIZE);
    std::fs::write(path, &orig).unwrap();
    let f = ok(exec.open(path, &rw()), "open");
    let name = path.file_name().unwrap().to_str().unwrap().to_owned();
    let hold = || {
        if let Some(fs) = fs {
            fs.rules().add(&name, &[Op::Read], 0..u64::MAX, Fault::Hold);
        }
    };
    let wait_held = || {
        if let Some(fs) = fs {
            eventually("reads held in the filesystem", HANG, || fs.held() > 0);
        }
    };
    let release = || {
        if let Some(fs) = fs {
            fs.release_all();
        }
    };
    let mut errnos = std::collections::BTreeMap::new();
    let (mut checked, mut short) = (0, 0);

    // Truncate shorter, then longer, with waves in flight (on ext4, truncations race each wave).
    hold();
    let other = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let waves: Vec<Wave> = (0..2)
        .map(|i| Wave::start(exec, &f, seed * 10 + i * 3, N))
        .collect();
    wait_held();
    let in_flight_trunc: usize = waves.iter().map(Wave::pending).sum();
    other.set_len(T_SHORT as u64).unwrap();
    let mid = Wave::start(exec, &f, seed * 10 + 7, N);
    other.set_len(T_LONG as u64).unwrap();
    if fs.is_some() {
        // Held: no read of the file could complete before the truncations (all start inside
        // it), nor after them one that starts below the shortest size.
        assert_eq!(in_flight_trunc, 2 * (N + 1), "pending at the truncation");
        for w in waves.iter().chain([&mid]) {
            assert_eq!(
                w.completed_below(T_SHORT),
                0,
                "completed across the truncations"
            );
        }
    }
    release();
    for w in waves.into_iter().chain([mid]) {
        let reads = w.finish();
        check_racing(&reads, &orig, &mut errnos, &mut short);
        checked += reads.len();
    }
    // Settled: below the new size the right bytes, past it short or empty, by every path.
    let now = after_truncations(&orig);
    assert_eq!(ok(exec.size(&f), "size"), T_LONG as u64);
    let probes = [
        (0, 4 * KIB),
        (T_SHORT - 6 * KIB, 12 * KIB),
        (T_LONG - 68 * KIB, 100 * KIB),
        (T_LONG, 4 * KIB),
        (900 * KIB, 64 * KIB),
    ];
    let mut reads: Reads = probes
        .iter()
        .map(|&(o, l)| (o, l, wait(exec.read(&f, o as u64, l))))
        .collect();
    let (f2, p2) = (f.clone(), probes.to_vec());
    reads.extend(
        exec.spawn_on_owner(&f, async move {
            let l = ringshard::local().unwrap();
            let mut out = Vec::new();
            for (o, n) in p2 {
                out.push((o, n, l.read(&f2, o as u64, n).await));
            }
            out
        })
        .wait()
        .unwrap(),
    );
    let mut s = exec.session();
    for (i, &(o, l)) in probes.iter().enumerate() {
        s.read(&f, o as u64, l, Vec::new(), i as u64).unwrap();
    }
    for d in session_wait(&mut s, probes.len()) {
        let (o, l) = probes[d.token as usize];
        reads.push((o, l, d.result.map(|_| d.buf)));
    }
    check_settled(&reads, &now, "after the truncations");
    checked += reads.len();

    // Unlink with reads in flight: they complete, and the open handle still reads (and writes).
    hold();
    let wave = Wave::start(exec, &f, seed * 10 + 9, N);
    wait_held();
    let in_flight_unlink = wave.pending();
    if fs.is_some() {
        assert_eq!(
            wave.completed_below(T_LONG),
            0,
            "completed before the unlink"
        );
    }
    // What the filesystem holds stays held across the unlink (a rule no longer matches the
    // unlinked file: what reaches FUSE after it is not held).
    std::fs::remove_file(path).unwrap();
    assert!(!path.exists());
    release();
    let reads = wave.finish();
    check_settled(&reads, &now, "reads in flight at the unlink");
    checked += reads.len();
    let reads = Wave::start(exec, &f, seed * 10 + 11, N).finish();
    check_settled(&reads, &now, "reads after the unlink");
    checked += reads.len();
    assert_eq!(ok(exec.write(&f, 0, vec![0x77; 4 * KIB]), "write"), 4 * KIB);
    assert_eq!(ok(exec.read(&f, 0, 4 * KIB), "read"), vec![0x77; 4 * KIB]);
    drop((other, f));
    (checked, short, in_flight_trunc, in_flight_unlink, errnos)
}

/// Many reads in flight (routed, a session, a task) while another handle truncates the file
/// shorter then longer, and while it is unlinked: no hang, no panic, no error but the kernel's;
/// reads below the new size get the right bytes, past it short or empty; after the unlink the
/// open handle still reads. On ext4 (a temporary directory: the reads race the truncations) and
/// on faultfs, which holds the reads, so that they really are in flight (files opened
/// `FOPEN_DIRECT_IO`: a held read holds no page lock, and the truncate and unlink go through).
#[test]
fn truncate_and_unlink_while_reads_are_in_flight() {
    let _serial = serial();
    let _dog = Watchdog::new("truncate_and_unlink", LIMIT);
    let start = Instant::now();
    let exec = executor(true);
    let dir = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    for round in 0..3u64 {
        let (n, sh, t, u, e) = truncate_unlink_run(&exec, &dir.path().join("t"), None, 40 + round);
        lines.push(format!(
            "local fs round {round}: {n} reads checked ({sh} racing reads short), {t} pending at \
             the truncation, {u} at the unlink, errors {e:?}"
        ));
    }
    let fs = mount_or_return!("truncate_and_unlink_while_reads_are_in_flight");
    let (n, sh, t, u, e) = truncate_unlink_run(&exec, &fs.join("t"), Some(&fs), 50);
    let held = fs.counts().held;
    lines.push(format!(
        "faultfs (reads held in FUSE across the truncations and the unlink, {held} held): {n} \
         reads checked ({sh} racing reads short), {t} pending at the truncation, {u} at the \
         unlink, errors {e:?}"
    ));
    drop(exec);
    for l in &lines {
        report!("  truncate: {l}");
    }
    report!(
        "FAULTS truncate/unlink: reads in flight (routed, session, task) across truncate \
         shorter/longer and unlink on ext4 and faultfs: no hang, no non-kernel error, bytes right \
         below the new size, short/empty past it, reads and writes on the unlinked open file \
         fine; {:.2?}",
        start.elapsed()
    );
}

/// After another handle truncates the file, a write that extends it again followed by a read
/// between the old end and the write (issued after the write, on the same `File`): `rounds`
/// times; returns how many reads did not see the write (empty instead of the hole's zeros).
/// With `resync`, `size()` is called after each truncation (it resets what the shard believes
/// the size to be).
fn extend_then_read_after_external_truncate(rounds: u64, resync: bool) -> u64 {
    let exec = executor(false); // writes through the ring: the write and the read both in flight
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    std::fs::write(&p, vec![1u8; MIB]).unwrap();
    let f = ok(exec.open(&p, &rw()), "open");
    let other = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    let mut stale = 0;
    for i in 0..rounds {
        other.set_len(256 * KIB as u64).unwrap();
        if resync {
            assert_eq!(ok(exec.size(&f), "size"), 256 * KIB as u64);
        }
        let w = exec.write(&f, (512 * KIB) as u64 + (i % 64) * 4096, vec![9u8; 4 * KIB]);
        let r = exec.read(&f, 300 * KIB as u64, 4 * KIB);
        assert_eq!(ok(w, "write"), 4 * KIB);
        if ok(r, "read after the write") != vec![0u8; 4 * KIB] {
            stale += 1;
        }
    }
    stale
}

/// The shard orders a read that may reach the end of the file after every earlier write above it,
/// but decides "may reach the end" from the size it believes the file has, which it only raises
/// (or sets at `size()`): a truncation by another handle is not seen. Then a read issued after an
/// extending write, between the real end and the write, is not ordered after it and can return
/// nothing instead of the hole's zeros (seen: 30 of 300 on ext4, kernel 6.18).
#[test]
#[ignore = "the documented limit (README, Guarantees): the shard knows a file's size from what \
            went through the executor; after another handle or process shrinks the file, call \
            size() to refresh it (size_after_an_external_truncate_restores_the_order). Run with \
            --ignored to see what happens without it"]
fn read_after_extending_write_sees_it_after_an_external_truncate() {
    let _serial = serial();
    let stale = extend_then_read_after_external_truncate(300, false);
    assert_eq!(
        stale, 0,
        "{stale} of 300 reads missed the write issued before them"
    );
}

/// The workaround: `size()` after an outside truncation resets the shard's idea of the size, and
/// the read after an extending write sees it every time.
#[test]
fn size_after_an_external_truncate_restores_the_order() {
    let _serial = serial();
    assert_eq!(extend_then_read_after_external_truncate(300, true), 0);
}

/// Stats of paths order like reads in their directory's order list: a stat whose lookup the
/// filesystem holds does not hold back a second stat in the same directory (before the fix, every
/// path operation was a barrier there, and the second waited for the first), while an unlink sent
/// before a stat still runs first (the stat sees the name gone).
#[test]
fn stats_in_one_directory_run_side_by_side_after_its_mutations() {
    let _serial = serial();
    let _dog = Watchdog::new("stats_side_by_side", LIMIT);
    // Declared before the mount: the mount is dropped first, answering whatever is still held,
    // so the executor's shutdown never waits for an operation the filesystem holds.
    let exec = executor(true);
    let fs = mount_or_return!("stats_in_one_directory_run_side_by_side_after_its_mutations");
    for name in ["a", "b", "u"] {
        seed(&fs, name, 100, 1);
    }

    // Two stats: the first is held in the filesystem (its LOOKUP is not answered), the second
    // must complete meanwhile.
    fs.rules().add("a", &[Op::Lookup], 0..1, Fault::Hold);
    let first = exec.stat(fs.join("a"));
    eventually("the first stat's lookup is held", HANG, || fs.held() == 1);
    let second = exec.stat(fs.join("b"));
    let md = ok(second, "a stat beside a held stat in the same directory");
    assert_eq!(md.len(), 100);
    assert_eq!(fs.held(), 1, "the first stat is still held");
    assert!(
        !first.is_done(),
        "the first stat finished while its lookup was held"
    );
    fs.release_all();
    assert_eq!(ok(first, "the held stat, released").len(), 100);

    // An unlink held in the filesystem, then a stat of the same name: the stat runs after it.
    fs.rules().add("u", &[Op::Unlink], 0..1, Fault::Hold);
    let unlink = exec.unlink(fs.join("u"));
    eventually("the unlink is held", HANG, || fs.held() == 1);
    let stat = exec.stat(fs.join("u"));
    fs.release_all();
    ok(unlink, "unlink");
    assert_io(&wait(stat), "stat", &fs.join("u"), libc::ENOENT);
    report!(
        "FAULTS stat order: a stat beside a held stat in its directory completed; a stat after a \
         held unlink saw it"
    );
}
