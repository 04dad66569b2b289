//! The operations behind the `FileOp` trait on real files: metadata/stat, set_len, path
//! operations, vectored I/O, append, sync_file_range, directory handles and custom open flags,
//! their errors, and the same results on the blocking path (every kind forced there).

use ringshard::{Error, Executor, OpKind, OpenOptions, RenameFlags, MAX_IOVECS};
use std::path::Path;

fn exec() -> Executor {
    Executor::builder().shards(2).build().unwrap()
}

/// Every kind with an opcode forced to the blocking path.
fn blocking_exec() -> Executor {
    Executor::builder()
        .shards(2)
        .force_blocking(&OpKind::ALL)
        .build()
        .unwrap()
}

fn rw() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true).write(true).create(true);
    o
}

fn errno(e: &Error) -> i32 {
    e.errno().unwrap_or_else(|| panic!("no errno in {e:?}"))
}

/// Runs every new operation and its errors, returning a transcript of the results, so the ring
/// and the blocking path can be compared.
fn scenario(exec: &Executor, dir: &Path) -> Vec<String> {
    let mut log = Vec::new();
    let p = dir.join("f");
    let f = exec.open(&p, &rw()).wait().unwrap();
    exec.write(&f, 0, vec![7u8; 100]).wait().unwrap();

    // metadata and stat
    let md = exec.metadata(&f).wait().unwrap();
    assert!(md.is_file() && !md.is_dir() && !md.is_symlink());
    let std_md = std::fs::metadata(&p).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(md.ino(), std_md.ino());
    assert_eq!(md.dev(), std_md.dev());
    assert_eq!(md.nlink(), 1);
    assert_eq!(md.uid(), std_md.uid());
    assert_eq!(md.modified(), std_md.modified().unwrap());
    assert!(md.blksize() > 0);
    log.push(format!(
        "metadata len={} mode={:o}",
        md.len(),
        md.permissions()
    ));
    let st = exec.stat(&p).wait().unwrap();
    assert_eq!(st.ino(), md.ino());
    log.push(format!("stat len={}", st.len()));
    let dmd = exec.stat(dir).wait().unwrap();
    assert!(dmd.is_dir());
    std::os::unix::fs::symlink(&p, dir.join("link")).unwrap();
    assert!(exec
        .symlink_metadata(dir.join("link"))
        .wait()
        .unwrap()
        .is_symlink());
    assert!(exec.stat(dir.join("link")).wait().unwrap().is_file());
    let e = exec.stat(dir.join("missing")).wait().unwrap_err();
    assert_eq!(errno(&e), libc::ENOENT);
    assert!(e.to_string().contains("missing"), "{e}");
    log.push(format!("stat missing: {}", errno(&e)));

    // set_len, then reads past the new end
    exec.set_len(&f, 10).wait().unwrap();
    assert_eq!(exec.read(&f, 0, 100).wait().unwrap(), vec![7u8; 10]);
    assert_eq!(exec.size(&f).wait().unwrap(), 10);
    exec.set_len(&f, 20).wait().unwrap();
    let data = exec.read(&f, 0, 100).wait().unwrap();
    assert_eq!(&data[..10], &[7u8; 10]);
    assert_eq!(&data[10..], &[0u8; 10]);
    log.push(format!("set_len read {}", data.len()));

    // vectored
    let n = exec
        .write_vectored(
            &f,
            0,
            vec![b"abc".to_vec(), b"".to_vec(), b"defgh".to_vec()],
        )
        .wait()
        .unwrap();
    assert_eq!(n, 8);
    let v = exec.read_vectored(&f, 0, &[2, 0, 4, 2]).wait().unwrap();
    assert_eq!(
        v,
        vec![b"ab".to_vec(), vec![], b"cdef".to_vec(), b"gh".to_vec()]
    );
    // a short read at the end of the file (20 bytes): truncated vectors
    let v = exec.read_vectored(&f, 14, &[4, 4, 4]).wait().unwrap();
    assert_eq!(v.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 2, 0]);
    log.push(format!("readv eof {:?}", v));

    // sync_file_range
    exec.sync_file_range(&f, 0, 0, ringshard::SyncRangeFlags::WRITE)
        .wait()
        .unwrap();
    exec.fdatasync(&f).wait().unwrap();
    exec.fallocate(&f, ringshard::FallocateMode::Allocate, 0, 4096)
        .wait()
        .unwrap();
    assert_eq!(exec.size(&f).wait().unwrap(), 4096);

    // path operations
    let d = dir.join("d");
    exec.mkdir(&d, 0o755).wait().unwrap();
    assert!(d.is_dir());
    let e = exec.mkdir(&d, 0o755).wait().unwrap_err();
    assert_eq!(errno(&e), libc::EEXIST);
    std::fs::write(d.join("x"), b"x").unwrap();
    let e = exec.remove_dir(&d).wait().unwrap_err();
    assert_eq!(errno(&e), libc::ENOTEMPTY);
    let e = exec.unlink(&d).wait().unwrap_err();
    assert_eq!(errno(&e), libc::EISDIR);
    let e = exec.remove_dir(d.join("x")).wait().unwrap_err();
    assert_eq!(errno(&e), libc::ENOTDIR);
    exec.unlink(d.join("x")).wait().unwrap();
    let e = exec.unlink(d.join("x")).wait().unwrap_err();
    assert_eq!(errno(&e), libc::ENOENT);
    assert!(e.to_string().contains("unlink"), "{e}");
    exec.remove_dir(&d).wait().unwrap();
    assert!(!d.exists());
    log.push("path ops ok".into());

    // rename
    let (a, b) = (dir.join("a"), dir.join("b"));
    std::fs::write(&a, b"A").unwrap();
    std::fs::write(&b, b"B").unwrap();
    let e = exec
        .rename(&a, &b, RenameFlags::NOREPLACE)
        .wait()
        .unwrap_err();
    assert_eq!(errno(&e), libc::EEXIST);
    let text = e.to_string();
    assert!(text.contains("/a") && text.contains("/b"), "{text}");
    exec.rename(&a, &b, RenameFlags::EXCHANGE).wait().unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), b"B");
    assert_eq!(std::fs::read(&b).unwrap(), b"A");
    exec.rename(&a, &b, RenameFlags::empty()).wait().unwrap();
    assert!(!a.exists());
    assert_eq!(std::fs::read(&b).unwrap(), b"B");
    let e = exec
        .rename(&a, &b, RenameFlags::empty())
        .wait()
        .unwrap_err();
    assert_eq!(errno(&e), libc::ENOENT);
    log.push(format!("rename missing: {}", errno(&e)));

    // append
    let ap = exec
        .open(
            dir.join("log"),
            OpenOptions::new().append(true).read(true).create(true),
        )
        .wait()
        .unwrap();
    let x = exec.append(&ap, b"hello".to_vec()).wait().unwrap();
    let y = exec.append(&ap, b" world".to_vec()).wait().unwrap();
    assert_eq!((x.offset, x.len, y.offset, y.len), (0, 5, 5, 6));
    assert_eq!(exec.read(&ap, 0, 64).wait().unwrap(), b"hello world");
    log.push(format!("append {x:?} {y:?}"));

    // a directory handle
    let dh = exec.open_dir(dir).wait().unwrap();
    exec.fsync(&dh).wait().unwrap();
    assert!(exec.metadata(&dh).wait().unwrap().is_dir());
    let e = exec.read(&dh, 0, 10).wait().unwrap_err();
    assert!(matches!(e, Error::BadHandle(_)), "{e:?}");
    let e = exec.write(&dh, 0, b"x".to_vec()).wait().unwrap_err();
    assert!(matches!(e, Error::BadHandle(_)), "{e:?}");
    exec.close(&dh).wait().unwrap();
    exec.close(&ap).wait().unwrap();
    exec.close(&f).wait().unwrap();
    log
}

#[test]
fn ring_and_blocking_paths_agree() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let ring = exec();
    let a = scenario(&ring, d1.path());
    let stats = ring.stats();
    assert!(
        stats.total.blocking_ops.is_empty(),
        "{:?}",
        stats.total.blocking_ops
    );
    for k in [
        OpKind::Statx,
        OpKind::Truncate,
        OpKind::Unlink,
        OpKind::Rename,
        OpKind::Append,
    ] {
        assert!(stats.total.ops(k) > 0, "{k} not counted");
    }
    ring.shutdown().unwrap();

    let blocking = blocking_exec();
    let b = scenario(&blocking, d2.path());
    let stats = blocking.stats();
    for k in [
        OpKind::Open,
        OpKind::Fsync,
        OpKind::Statx,
        OpKind::Truncate,
        OpKind::Unlink,
        OpKind::RemoveDir,
        OpKind::Mkdir,
        OpKind::Rename,
        OpKind::Readv,
        OpKind::Writev,
        OpKind::Append,
        OpKind::SyncFileRange,
    ] {
        assert!(stats.total.blocking_ops.contains(&k), "{k} not blocking");
        assert!(stats.shards[0].blocking_ops.contains(&k));
    }
    assert!(!stats.total.blocking_ops.contains(&OpKind::Read));
    assert!(stats.to_string().contains("blocking path"), "{stats}");
    let prom = stats.to_prometheus();
    for name in ["statx", "rename", "readv", "append", "sync_file_range"] {
        assert!(
            prom.contains(&format!("op=\"{name}\"")),
            "{name} missing:\n{prom}"
        );
    }
    #[cfg(feature = "serde")]
    {
        let json = serde_json::to_value(&stats).unwrap();
        assert!(json.to_string().contains("\"blocking_ops\""), "{json}");
    }
    blocking.shutdown().unwrap();
    assert_eq!(a, b);
}

#[test]
fn bad_arguments_fail_before_the_shard() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let f = exec.open(dir.path().join("f"), &rw()).wait().unwrap();
    let too_many = vec![1usize; MAX_IOVECS + 1];
    let e = exec.read_vectored(&f, 0, &too_many).wait().unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    let e = exec
        .write_vectored(&f, 0, vec![vec![0u8; 1]; MAX_IOVECS + 1])
        .wait()
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    let e = exec
        .read_vectored(&f, 0, &[usize::MAX, 1])
        .wait()
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    let e = exec
        .read_vectored(&f, u64::MAX - 1, &[4])
        .wait()
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    let e = exec.set_len(&f, u64::MAX).wait().unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    let e = exec
        .sync_file_range(&f, 0, 1 << 33, ringshard::SyncRangeFlags::WRITE)
        .wait()
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    let e = exec.append(&f, b"x".to_vec()).wait().unwrap_err();
    assert!(matches!(e, Error::BadHandle(_)), "{e:?}");
    assert!(e.to_string().contains("append(true)"), "{e}");
    let e = exec.unlink(dir.path().join("a\0b")).wait().unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    let e = exec
        .mkdir(dir.path().join("no/such/dir"), 0o755)
        .wait()
        .unwrap_err();
    assert_eq!(errno(&e), libc::ENOENT);

    // Access modes: writes on a read-only handle, reads on a write-only one.
    let ro = exec
        .open(dir.path().join("f"), OpenOptions::new().read(true))
        .wait()
        .unwrap();
    let e = exec
        .write_vectored(&ro, 0, vec![b"x".to_vec()])
        .wait()
        .unwrap_err();
    assert!(matches!(e, Error::BadHandle(_)), "{e:?}");
    let e = exec.set_len(&ro, 0).wait().unwrap_err();
    assert!(matches!(e, Error::BadHandle(_)), "{e:?}");
    let wo = exec
        .open(dir.path().join("f"), OpenOptions::new().write(true))
        .wait()
        .unwrap();
    let e = exec.read_vectored(&wo, 0, &[1]).wait().unwrap_err();
    assert!(matches!(e, Error::BadHandle(_)), "{e:?}");

    // Open flags: conflicts are refused; directory(true) needs read-only.
    let e = exec
        .open(dir.path().join("g"), rw().custom_flags(libc::O_TRUNC))
        .wait()
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    let e = exec
        .open(
            dir.path(),
            OpenOptions::new().read(true).write(true).directory(true),
        )
        .wait()
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    let e = exec.open_dir(dir.path().join("f")).wait().unwrap_err();
    assert_eq!(errno(&e), libc::ENOTDIR);
    exec.shutdown().unwrap();
}

/// `fcntl(F_GETFL)` of the descriptor this process has open on `path` (found in /proc/self/fd),
/// if one is.
fn fd_flags_of(path: &Path) -> Option<i32> {
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        if std::fs::read_link(entry.path()).ok().as_deref() == Some(path) {
            let fd: i32 = entry.file_name().to_str()?.parse().ok()?;
            // SAFETY: F_GETFL reads the descriptor's flags; no memory is passed.
            let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            return (fl >= 0).then_some(fl);
        }
    }
    None
}

#[test]
fn custom_flags_reach_the_descriptor() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dsync");
    let f = exec
        .open(&p, rw().custom_flags(libc::O_DSYNC))
        .wait()
        .unwrap();
    exec.write(&f, 0, b"durable".to_vec()).wait().unwrap();
    let flags = fd_flags_of(&p.canonicalize().unwrap()).expect("the descriptor is open");
    assert_ne!(flags & libc::O_DSYNC, 0, "flags {flags:o}");
    // Without the flag, no O_DSYNC.
    let q = dir.path().join("plain");
    let g = exec.open(&q, &rw()).wait().unwrap();
    let flags = fd_flags_of(&q.canonicalize().unwrap()).unwrap();
    assert_eq!(flags & libc::O_DSYNC, 0, "flags {flags:o}");
    drop((f, g));
    exec.shutdown().unwrap();
}

#[test]
fn concurrent_appends_land_contiguously() {
    let exec = std::sync::Arc::new(exec());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("log");
    let f = exec
        .open(&p, OpenOptions::new().append(true).create(true))
        .wait()
        .unwrap();
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let (exec, f) = (exec.clone(), f.clone());
            std::thread::spawn(move || {
                (0..50usize)
                    .map(|i| {
                        let rec = vec![b'a' + t; 1 + (i * 7 + t as usize) % 300];
                        let c = exec.append(&f, rec.clone());
                        (c, rec)
                    })
                    .collect::<Vec<_>>()
                    .into_iter()
                    .map(|(c, rec)| (c.wait().unwrap(), rec))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_by_key(|(a, _)| a.offset);
    let content = std::fs::read(&p).unwrap();
    let mut at = 0u64;
    for (a, rec) in &all {
        assert_eq!(a.offset, at, "not contiguous");
        assert_eq!(a.len, rec.len());
        assert_eq!(
            &content[a.offset as usize..a.offset as usize + a.len],
            &rec[..]
        );
        at += a.len as u64;
    }
    assert_eq!(at, content.len() as u64);
    // Another writer of the file (another open file description) moves the end: the next append
    // still reports where its own data landed.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .and_then(|mut o| std::io::Write::write_all(&mut o, b"outsider"))
        .unwrap();
    let a = exec.append(&f, b"mine".to_vec()).wait().unwrap();
    assert_eq!(a.offset, at + 8);
    let content = std::fs::read(&p).unwrap();
    assert_eq!(&content[a.offset as usize..], b"mine");
    drop(f);
    exec.shutdown().unwrap();
}

#[test]
fn set_len_orders_reads_sent_after_it() {
    // Many rounds of write / shrink / read with no wait in between: the read must see the
    // shrunk file every time (set_len is a barrier, and it lowers the known size when admitted).
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let f = exec.open(dir.path().join("f"), &rw()).wait().unwrap();
    for round in 0..50u64 {
        let w = exec.write(&f, 0, vec![1u8; 8192]);
        let t = exec.set_len(&f, round);
        let r = exec.read(&f, 0, 8192);
        let w2 = exec.write(&f, 16384, vec![2u8; 10]);
        w.wait().unwrap();
        t.wait().unwrap();
        assert_eq!(r.wait().unwrap().len() as u64, round, "round {round}");
        w2.wait().unwrap();
    }
    exec.shutdown().unwrap();
}

#[test]
fn path_ops_in_one_directory_keep_their_order() {
    // Sent without waiting: mkdir, rmdir, mkdir, ... must run in order (each depends on the last).
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("x");
    let mut cs = Vec::new();
    for _ in 0..20 {
        cs.push(exec.mkdir(&d, 0o700));
        cs.push(exec.remove_dir(&d));
    }
    cs.push(exec.mkdir(&d, 0o700));
    for c in cs {
        c.wait().unwrap();
    }
    assert!(d.is_dir());
    // and an fsync of the directory's handle after them.
    let dh = exec.open_dir(dir.path()).wait().unwrap();
    exec.unlink(dir.path().join("nothing")).wait().unwrap_err();
    exec.fsync(&dh).wait().unwrap();
    exec.shutdown().unwrap();
}

#[test]
fn deadlined_path_and_file_ops() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let f = exec.open(dir.path().join("f"), &rw()).wait().unwrap();
    let t = exec.timeout(std::time::Duration::from_secs(5));
    t.write_vectored(&f, 0, vec![b"ab".to_vec()])
        .wait()
        .unwrap();
    assert_eq!(t.metadata(&f).wait().unwrap().len(), 2);
    t.mkdir(dir.path().join("d"), 0o700).wait().unwrap();
    assert!(t.stat(dir.path().join("d")).wait().unwrap().is_dir());
    // Dropped handles: the op still runs or is skipped, the shard goes on.
    drop(exec.metadata(&f));
    drop(exec.read_vectored(&f, 0, &[1, 1]));
    assert_eq!(exec.read(&f, 0, 2).wait().unwrap(), b"ab");
    exec.shutdown().unwrap();
}

#[test]
fn rw_flags_reach_reads_and_writes() {
    use ringshard::RwFlags;
    for inline in [true, false] {
        let exec = Executor::builder()
            .shards(1)
            .inline_buffered_writes(inline)
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = exec.open(&p, &rw()).wait().unwrap();
        let data: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let n = exec
            .write_with(&f, 0, data.clone(), RwFlags::DSYNC | RwFlags::HIPRI)
            .wait();
        // HIPRI on a file without polling support: the kernel may refuse it (EOPNOTSUPP); DSYNC
        // alone must work.
        if n.is_err() {
            exec.write_with(&f, 0, data.clone(), RwFlags::DSYNC)
                .wait()
                .unwrap();
        }
        // Warm page: NOWAIT succeeds with the right data, or says EAGAIN; never wrong data.
        match exec.read_with(&f, 0, data.len(), RwFlags::NOWAIT).wait() {
            Ok(got) => assert_eq!(got, data),
            Err(e) => assert_eq!(errno(&e), libc::EAGAIN, "{e}"),
        }
        // Cold pages: dropped from the page cache (after the data is on disk).
        exec.fsync(&f).wait().unwrap();
        let std_f = std::fs::File::open(&p).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: no memory is passed.
        unsafe { libc::posix_fadvise(std_f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        match exec.read_with(&f, 0, data.len(), RwFlags::NOWAIT).wait() {
            Ok(got) => {
                eprintln!("cold NOWAIT read: served (inline {inline})");
                assert_eq!(got, data, "NOWAIT returned other bytes");
            }
            Err(e) => {
                eprintln!("cold NOWAIT read: {e} (inline {inline})");
                assert_eq!(errno(&e), libc::EAGAIN, "{e}");
                assert!(e.is_transient());
            }
        }
        // Plain reads still see it all.
        assert_eq!(exec.read(&f, 0, data.len()).wait().unwrap(), data);
        // APPEND: the write lands at the end, whatever its offset.
        exec.write_with(&f, 0, b"tail".to_vec(), RwFlags::APPEND)
            .wait()
            .unwrap();
        assert_eq!(exec.size(&f).wait().unwrap(), data.len() as u64 + 4);
        // Write-only flags are refused on reads.
        let e = exec.read_with(&f, 0, 1, RwFlags::DSYNC).wait().unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
        exec.shutdown().unwrap();
    }
}

#[test]
fn shutdown_with_new_ops_queued_completes_every_handle() {
    // Many ops sent, then shutdown at once: every handle completes (done, or refused with
    // Shutdown), none hangs; the directory ends up consistent with the ops that succeeded.
    for blocking in [false, true] {
        let exec = if blocking { blocking_exec() } else { exec() };
        let dir = tempfile::tempdir().unwrap();
        let f = exec.open(dir.path().join("f"), &rw()).wait().unwrap();
        let mut units = Vec::new();
        let mut metas = Vec::new();
        let mut reads = Vec::new();
        for i in 0..200u64 {
            units.push(exec.mkdir(dir.path().join(format!("d{i}")), 0o700));
            units.push(exec.set_len(&f, i));
            metas.push(exec.metadata(&f));
            metas.push(exec.stat(dir.path()));
            reads.push(exec.read_vectored(&f, 0, &[8, 8]));
        }
        exec.shutdown().unwrap();
        for c in units {
            match c.wait() {
                Ok(()) | Err(Error::Shutdown) => {}
                Err(e) => panic!("{e:?}"),
            }
        }
        for c in metas {
            match c.wait() {
                Ok(_) | Err(Error::Shutdown) => {}
                Err(e) => panic!("{e:?}"),
            }
        }
        for c in reads {
            match c.wait() {
                Ok(v) => assert!(v.iter().all(|b| b.iter().all(|&x| x == 0))),
                Err(Error::Shutdown) => {}
                Err(e) => panic!("{e:?}"),
            }
        }
    }
}

#[test]
fn a_dying_shard_fails_queued_new_ops() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let f = exec.open(dir.path().join("f"), &rw()).wait().unwrap();
    exec.write(&f, 0, vec![1u8; 64]).wait().unwrap();
    let dead = exec.kill_shard_for_tests(f.shard(), std::time::Duration::from_millis(20));
    let cs: Vec<_> = (0..50)
        .map(|_| {
            (
                exec.metadata(&f),
                exec.read_vectored(&f, 0, &[4, 4]),
                exec.write_vectored(&f, 0, vec![vec![2u8; 4]]),
            )
        })
        .collect();
    assert!(dead.wait().is_err());
    for (m, r, w) in cs {
        for e in [m.wait().err(), r.wait().err(), w.wait().err()]
            .into_iter()
            .flatten()
        {
            assert!(matches!(e, Error::ShardFailed { .. }), "{e:?}");
        }
    }
    // Path ops go to the directory's shard: done there, or ShardFailed if it is the dead one.
    match exec.mkdir(dir.path().join("other"), 0o700).wait() {
        Ok(()) | Err(Error::ShardFailed { .. }) => {}
        Err(e) => panic!("{e:?}"),
    }
    let _ = exec.shutdown();
}
