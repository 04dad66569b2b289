//! Bad input to `Executor`: every case must give a clear, typed error (and where the user can fix
//! it, say how), and the executor must keep working afterwards. Real files, real rings.

mod executor_util;

use executor_util::*;
use ringshard::{Error, Executor, File, OpKind, OpenOptions};
use std::path::Path;

/// A good write and read on `f` through `exec` (proves the executor still works).
#[track_caller]
fn still_works(exec: &Executor, f: &File, tag: &str) {
    let data = format!("still working after {tag}").into_bytes();
    assert_eq!(ok(exec.write(f, 100, data.clone()), tag), data.len());
    assert_eq!(ok(exec.read(f, 100, data.len()), tag), data, "{tag}");
}

#[track_caller]
fn expect_bad_handle<T: std::fmt::Debug>(r: ringshard::Result<T>, must_say: &[&str], tag: &str) {
    match r {
        Err(e @ Error::BadHandle(_)) => {
            let s = e.to_string();
            for m in must_say {
                assert!(s.contains(m), "{tag}: message {s:?} should mention {m:?}");
            }
        }
        other => panic!("{tag}: expected BadHandle, got {other:?}"),
    }
}

#[track_caller]
fn expect_invalid<T: std::fmt::Debug>(r: ringshard::Result<T>, must_say: &str, tag: &str) {
    match r {
        Err(e @ Error::InvalidArgument { .. }) => {
            let s = e.to_string();
            assert!(
                s.contains(must_say),
                "{tag}: message {s:?} should mention {must_say:?}"
            );
        }
        other => panic!("{tag}: expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn access_mode_violations_say_how_to_fix() {
    let exec = exec2();
    let dir = tempfile::tempdir().unwrap();
    let good = open_rwc(&exec, &dir.path().join("good"));
    let path = dir.path().join("f");
    std::fs::write(&path, b"0123456789").unwrap();

    let wo = ok(
        exec.open(&path, OpenOptions::new().write(true)),
        "open write-only",
    );
    expect_bad_handle(
        wait(exec.read(&wo, 0, 4)),
        &["read(true)"],
        "read on write-only",
    );
    let mut b = exec.batch();
    let r = b.read(&wo, 0, 4);
    b.submit();
    expect_bad_handle(wait(r), &["read(true)"], "batched read on write-only");
    still_works(&exec, &good, "read on write-only");
    // The write-only handle itself is fine for writing.
    assert_eq!(ok(exec.write(&wo, 0, b"ab".to_vec()), "write"), 2);

    let ro = ok(
        exec.open(&path, OpenOptions::new().read(true)),
        "open read-only",
    );
    expect_bad_handle(
        wait(exec.write(&ro, 0, b"x".to_vec())),
        &["write(true)"],
        "write on read-only",
    );
    let mut b = exec.batch();
    let w = b.write(&ro, 0, b"x".to_vec());
    b.submit();
    expect_bad_handle(wait(w), &["write(true)"], "batched write on read-only");
    assert_eq!(ok(exec.read(&ro, 0, 10), "read"), b"ab23456789");
    still_works(&exec, &good, "write on read-only");

    // Nothing was written by the refused requests.
    assert_eq!(std::fs::read(&path).unwrap(), b"ab23456789");
}

#[test]
fn overflowing_ranges_and_bad_paths_are_invalid_arguments() {
    let exec = exec2();
    let dir = tempfile::tempdir().unwrap();
    let f = open_rwc(&exec, &dir.path().join("f"));

    expect_invalid(
        wait(exec.read(&f, u64::MAX - 5, 10)),
        "overflows",
        "read overflow",
    );
    expect_invalid(
        wait(exec.write(&f, u64::MAX, vec![1u8])),
        "overflows",
        "write overflow",
    );
    // Past the largest file offset (i64::MAX) without wrapping u64.
    expect_invalid(
        wait(exec.write(&f, i64::MAX as u64, vec![1u8; 2])),
        "overflows",
        "write past i64::MAX",
    );
    expect_invalid(
        wait(exec.fallocate(
            &f,
            ringshard::FallocateMode::Allocate,
            u64::MAX / 2,
            u64::MAX / 2 + 10,
        )),
        "overflows",
        "fallocate overflow",
    );
    let mut b = exec.batch();
    let r = b.read(&f, u64::MAX, 1);
    b.submit();
    expect_invalid(wait(r), "overflows", "batched read overflow");
    still_works(&exec, &f, "overflow");

    expect_invalid(
        wait(exec.open("/tmp/ring\0shard", &rwc())),
        "NUL",
        "path with NUL",
    );
    expect_invalid(
        wait(exec.open(dir.path().join("x"), &OpenOptions::new())),
        "read(true)",
        "no access mode",
    );
    // A missing file: the errno and the path.
    let missing = dir.path().join("missing/file");
    let e = wait(exec.open(&missing, &rw())).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOENT), "{e:?}");
    assert!(e.to_string().contains(missing.to_str().unwrap()), "{e}");
    still_works(&exec, &f, "bad paths");
}

#[test]
fn foreign_and_closed_handles_are_bad_handles() {
    let exec = exec2();
    let other = exec2();
    let dir = tempfile::tempdir().unwrap();
    let f = open_rwc(&exec, &dir.path().join("f"));
    let theirs = open_rwc(&other, &dir.path().join("theirs"));

    expect_bad_handle(
        wait(exec.read(&theirs, 0, 1)),
        &["another executor"],
        "foreign read",
    );
    expect_bad_handle(
        wait(exec.write(&theirs, 0, b"x".to_vec())),
        &["another executor"],
        "foreign write",
    );
    expect_bad_handle(
        wait(exec.fsync(&theirs)),
        &["another executor"],
        "foreign fsync",
    );
    expect_bad_handle(
        wait(exec.close(&theirs)),
        &["another executor"],
        "foreign close",
    );
    let mut b = exec.batch();
    let r = b.read(&theirs, 0, 1);
    b.submit();
    expect_bad_handle(wait(r), &["another executor"], "foreign batched read");
    still_works(&exec, &f, "foreign handle");
    // The other executor's file was not touched or closed by any of that.
    still_works(&other, &theirs, "foreign handle (owner)");

    let g = open_rwc(&exec, &dir.path().join("g"));
    ok(exec.close(&g), "close");
    expect_bad_handle(wait(exec.read(&g, 0, 1)), &["closed"], "read closed");
    expect_bad_handle(
        wait(exec.write(&g, 0, b"x".to_vec())),
        &["closed"],
        "write closed",
    );
    expect_bad_handle(wait(exec.size(&g)), &["closed"], "size closed");
    expect_bad_handle(wait(exec.close(&g)), &["closed"], "double close");
    // A new file may reuse the closed one's table slot: the stale handle must still be refused.
    let h = open_rwc(&exec, &dir.path().join("h"));
    expect_bad_handle(wait(exec.read(&g, 0, 1)), &["closed"], "stale after reuse");
    still_works(&exec, &h, "closed handle");
    other.shutdown().unwrap();
    exec.shutdown().unwrap();
}

#[test]
fn o_direct_alignment_and_unsupported_filesystems() {
    let exec = exec2();
    let dir = tempfile::tempdir().unwrap(); // /tmp: ext4 here, O_DIRECT works
    let good = open_rwc(&exec, &dir.path().join("good"));
    let path = dir.path().join("direct");
    let mut o = rwc();
    o.direct(true);
    let d = ok(exec.open(&path, &o), "open O_DIRECT");
    assert!(d.is_direct());

    let block: Vec<u8> = (0..8192u32).map(|i| (i % 253) as u8).collect();
    // The error names the file's own alignment (STATX_DIOALIGN: 512 or 4096 here).
    let align = format!("multiples of {}", d.direct_io_align().unwrap().offset);
    expect_invalid(
        wait(exec.write(&d, 100, block.clone())),
        &align,
        "unaligned offset",
    );
    expect_invalid(
        wait(exec.write(&d, 0, block[..1000].to_vec())),
        &align,
        "unaligned len",
    );
    expect_invalid(
        wait(exec.read(&d, 4095, 4096)),
        "O_DIRECT",
        "unaligned read",
    );
    still_works(&exec, &good, "unaligned O_DIRECT");
    // Aligned I/O works, and bypasses nothing it should not: the bytes are in the file.
    assert_eq!(
        ok(exec.write(&d, 4096, block.clone()), "direct write"),
        8192
    );
    assert_eq!(ok(exec.read(&d, 4096, 8192), "direct read"), block);
    assert_eq!(std::fs::read(&path).unwrap()[4096..], block[..]);
    // A short O_DIRECT read at end of file returns what exists (the rest is not retried at an
    // unaligned offset).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4096 + 5000)
        .unwrap();
    assert_eq!(
        ok(exec.read(&d, 4096, 8192), "short direct read"),
        block[..5000]
    );
    assert_eq!(
        ok(exec.read(&d, 0, 64 * 1024), "long direct read").len(),
        9096
    );
    assert_eq!(
        ok(exec.read(&d, 16384, 4096), "direct read past eof"),
        Vec::<u8>::new()
    );

    // A filesystem without O_DIRECT: procfs refuses it at open with EINVAL.
    let e = wait(exec.open(
        "/proc/self/status",
        OpenOptions::new().read(true).direct(true),
    ))
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Io {
                op: "open",
                errno: libc::EINVAL,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("O_DIRECT"), "{e}");
    still_works(&exec, &good, "O_DIRECT open refused");

    // tmpfs: before Linux 6.6 it refused O_DIRECT (EINVAL at open); since 6.6 it accepts it.
    // Check whichever this kernel does, and that the error (if any) explains itself.
    match Tmpfs::mount("1m") {
        Err(why) => println!("SKIPPED O_DIRECT-on-tmpfs part: {why}"),
        Ok(tmp) => {
            let p = tmp.join("direct");
            match wait(exec.open(&p, &o)) {
                Ok(f) => {
                    println!("this kernel accepts O_DIRECT on tmpfs (Linux >= 6.6)");
                    assert_eq!(
                        ok(exec.write(&f, 0, block.clone()), "tmpfs direct write"),
                        8192
                    );
                    assert_eq!(ok(exec.read(&f, 0, 8192), "tmpfs direct read"), block);
                    ok(exec.close(&f), "close");
                }
                Err(e) => {
                    println!("this kernel refuses O_DIRECT on tmpfs: {e}");
                    assert_eq!(e.errno(), Some(libc::EINVAL), "{e:?}");
                    let s = e.to_string();
                    assert!(s.contains("O_DIRECT") && s.contains("tmpfs"), "{s}");
                }
            }
            still_works(&exec, &good, "O_DIRECT on tmpfs");
        }
    }
}

#[test]
fn enospc_is_an_io_error_and_counted() {
    let tmp = match Tmpfs::mount("256k") {
        Ok(t) => t,
        Err(why) => {
            println!("SKIPPED: {why}");
            return;
        }
    };
    let exec = exec2();
    let dir = tempfile::tempdir().unwrap();
    let good = open_rwc(&exec, &dir.path().join("good"));
    let small = tmp.join("full");
    let f = open_rwc(&exec, &small);
    let before = exec.stats().total;

    let e = wait(exec.write(&f, 0, vec![0xab; 512 * 1024])).unwrap_err();
    match &e {
        Error::Io {
            op, errno, path, ..
        } => {
            assert_eq!(*op, "write");
            assert_eq!(*errno, libc::ENOSPC);
            assert_eq!(path.as_deref(), Some(small.as_path()));
        }
        other => panic!("expected Io ENOSPC, got {other:?}"),
    }
    assert!(e.to_string().contains("ENOSPC"), "{e}");
    assert_eq!(e.errno(), Some(libc::ENOSPC));

    let after = exec.stats();
    assert_eq!(
        after.total.errors_with(libc::ENOSPC) - before.errors_with(libc::ENOSPC),
        1,
        "{:?}",
        after.total.errors
    );
    assert_eq!(after.shards[f.shard()].errors_with(libc::ENOSPC), 1);
    assert_eq!(
        after.total.ops(OpKind::Write) - before.ops(OpKind::Write),
        1,
        "the failed write counts as one write op"
    );
    #[cfg(feature = "serde")]
    {
        let json = serde_json::to_value(&after).unwrap();
        assert_eq!(json["total"]["errors"]["ENOSPC"], 1, "{json}");
    }

    // The executor goes on: elsewhere, and on the full filesystem once there is room.
    still_works(&exec, &good, "ENOSPC");
    let written = std::fs::metadata(&small).unwrap().len();
    assert!(written < 512 * 1024);
    ok(exec.close(&f), "close");
    std::fs::remove_file(&small).unwrap();
    let f2 = open_rwc(&exec, &small);
    still_works(&exec, &f2, "ENOSPC (room again)");
    ok(exec.close(&f2), "close");
    exec.shutdown().unwrap();
    drop(tmp);
}

#[test]
fn everything_after_shutdown_is_refused_with_shutdown() {
    let exec = exec2();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let f = open_rwc(&exec, &path);
    still_works(&exec, &f, "nothing");
    exec.shutdown().expect("shutdown");
    exec.shutdown().expect("shutdown is idempotent");

    let is_shutdown = |e: Error, what: &str| {
        assert_eq!(e, Error::Shutdown, "{what}");
        assert!(e.is_fatal());
    };
    is_shutdown(wait(exec.open(&path, &rw())).unwrap_err(), "open");
    is_shutdown(
        wait(exec.open(dir.path().join("new"), &rwc())).unwrap_err(),
        "open new",
    );
    is_shutdown(wait(exec.read(&f, 0, 1)).unwrap_err(), "read");
    is_shutdown(wait(exec.write(&f, 0, b"x".to_vec())).unwrap_err(), "write");
    is_shutdown(wait(exec.fsync(&f)).unwrap_err(), "fsync");
    is_shutdown(wait(exec.fdatasync(&f)).unwrap_err(), "fdatasync");
    is_shutdown(
        wait(exec.fallocate(&f, ringshard::FallocateMode::Allocate, 0, 10)).unwrap_err(),
        "fallocate",
    );
    is_shutdown(wait(exec.size(&f)).unwrap_err(), "size");
    is_shutdown(wait(exec.close(&f)).unwrap_err(), "close");
    is_shutdown(wait(exec.submit_to(0, |_| 1)).unwrap_err(), "submit_to");
    let mut b = exec.batch();
    let r = b.read(&f, 0, 1);
    let w = b.write(&f, 0, b"y".to_vec());
    b.submit();
    is_shutdown(wait(r).unwrap_err(), "batched read");
    is_shutdown(wait(w).unwrap_err(), "batched write");
    // The file holds what was written before, nothing after.
    assert_eq!(
        std::fs::read(&path).unwrap()[100..],
        b"still working after nothing"[..]
    );
    // A refused open has no effect on the filesystem: it neither truncates nor creates.
    let mut trunc = rw();
    trunc.truncate(true);
    is_shutdown(wait(exec.open(&path, &trunc)).unwrap_err(), "open truncate");
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        100 + b"still working after nothing".len() as u64,
        "an open refused after shutdown truncated the file"
    );
    assert!(
        !Path::new(&dir.path().join("new")).exists(),
        "an open refused after shutdown created the file"
    );
}

#[test]
fn submit_to_a_shard_that_does_not_exist_is_an_invalid_argument() {
    let exec = exec2();
    let e = wait(exec.submit_to(2, |_| 1)).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { .. }),
        "expected InvalidArgument, got {e:?}"
    );
    assert!(!e.is_fatal(), "{e:?}");
    assert!(e.to_string().contains('2'), "{e}");
    let e = wait(exec.submit_to(usize::MAX, |_| 1)).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    // Both shards are fine.
    assert_eq!(ok(exec.submit_to(0, |ctx| ctx.shard()), "task"), 0);
    assert_eq!(ok(exec.submit_to(1, |ctx| ctx.shard()), "task"), 1);
}

#[test]
fn a_dropped_batch_fails_its_completions_and_nothing_runs() {
    let exec = exec2();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let f = open_rwc(&exec, &path);
    let mut b = exec.batch();
    let w = b.write(&f, 0, b"never".to_vec());
    let r = b.read(&f, 0, 5);
    assert_eq!(b.len(), 2);
    drop(b);
    // Each handle completes (with an error), none hangs, and nothing was written.
    let ew = wait(w).unwrap_err();
    let er = wait(r).unwrap_err();
    println!("dropped batch: write -> {ew}; read -> {er}");
    assert!(matches!(ew, Error::InvalidArgument { .. }), "{ew:?}");
    assert!(ew.to_string().contains("without submit"), "{ew}");
    assert!(matches!(er, Error::InvalidArgument { .. }), "{er:?}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    still_works(&exec, &f, "dropped batch");
}

#[test]
fn stats_after_shutdown_keep_the_final_counts() {
    let exec = exec2();
    let dir = tempfile::tempdir().unwrap();
    let f = open_rwc(&exec, &dir.path().join("f"));
    ok(exec.write(&f, 0, vec![1u8; 8192]), "write");
    ok(exec.read(&f, 0, 8192), "read");
    exec.shutdown().unwrap();
    let stats = exec.stats();
    assert!(stats.shards.iter().all(|s| !s.failed), "{stats}");
    assert_eq!(stats.total.ops(ringshard::OpKind::Write), 1);
    assert_eq!(stats.total.ops(ringshard::OpKind::Read), 1);
    assert_eq!(stats.total.bytes_written, 8192);
}

/// One request of every kind on `f` (`a`: opened for appending), each waited for: the errors, by
/// kind (a request that succeeded shows as `None`).
fn every_kind(exec: &Executor, f: &File, a: &File) -> Vec<(&'static str, Option<Error>)> {
    let dir = f.path().parent().expect("a directory");
    vec![
        ("read", wait(exec.read(f, 0, 1)).err()),
        ("write", wait(exec.write(f, 0, b"x".to_vec())).err()),
        ("fsync", wait(exec.fsync(f)).err()),
        ("size", wait(exec.size(f)).err()),
        ("set_len", wait(exec.set_len(f, 10)).err()),
        (
            "sync_file_range",
            wait(exec.sync_file_range(f, 0, 0, ringshard::SyncRangeFlags::WRITE)).err(),
        ),
        ("metadata", wait(exec.metadata(f)).err()),
        (
            "read_vectored",
            wait(exec.read_vectored(f, 0, &[1, 2])).err(),
        ),
        (
            "write_vectored",
            wait(exec.write_vectored(f, 0, vec![vec![1]])).err(),
        ),
        ("append", wait(exec.append(a, b"y".to_vec())).err()),
        ("stat", wait(exec.stat(f.path())).err()),
        ("mkdir", wait(exec.mkdir(dir.join("d"), 0o700)).err()),
    ]
}

/// An executor of one shard (so path operations go to the same shard as the files), a file and
/// a file opened for appending in `dir`.
fn one_shard_with_files(dir: &Path) -> (Executor, File, File) {
    let exec = Executor::builder().shards(1).build().expect("executor");
    let f = open_rwc(&exec, &dir.join("f"));
    let mut o = OpenOptions::new();
    o.append(true).create(true);
    let a = ok(exec.open(dir.join("a"), &o), "open for appending");
    (exec, f, a)
}

/// After shutdown, every kind of request is refused with `Shutdown`, including the ones that
/// complete through a completer of their own (metadata, append, vectored reads and writes): they
/// got "ShardFailed .. dropped" (their completer was dropped, not failed).
#[test]
fn every_kind_of_request_after_shutdown_gets_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (exec, f, a) = one_shard_with_files(dir.path());
    exec.shutdown().unwrap();
    for (what, e) in every_kind(&exec, &f, &a) {
        assert_eq!(e, Some(Error::Shutdown), "{what}");
    }
    assert_eq!(
        wait(exec.submit_to(0, |_| ())).err(),
        Some(Error::Shutdown),
        "submit_to"
    );
}

/// On a dead shard every kind of request fails the same way: the error a read gets.
#[test]
fn every_kind_of_request_to_a_dead_shard_gets_the_same_shard_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (exec, f, a) = one_shard_with_files(dir.path());
    let e = wait(exec.kill_shard_for_tests(0, std::time::Duration::ZERO)).unwrap_err();
    assert!(is_shard_failed(&e, 0), "{e:?}");
    // Dead for good: from now on its link refuses every message.
    eventually("the shard is dead", HANG, || exec.stats().shards[0].failed);
    let all = every_kind(&exec, &f, &a);
    let read = all[0].1.clone().expect("the read failed");
    assert!(is_shard_failed(&read, 0), "{read:?}");
    for (what, e) in all {
        assert_eq!(e.as_ref(), Some(&read), "{what}");
    }
    let e = wait(exec.submit_to(0, |_| ())).unwrap_err();
    assert!(is_shard_failed(&e, 0), "submit_to: {e:?}");
    assert!(exec.shutdown().is_err(), "shutdown reports the dead shard");
}
