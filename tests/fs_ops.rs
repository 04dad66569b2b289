//! The file operations added for issue 20 item 4 on real files, on whichever backend the
//! environment picks (`RINGSHARD_BACKEND=threads` for the threads backend) and on the blocking
//! path (every kind forced there): fadvise, hard and symbolic links, O_TMPFILE published with a
//! link, directory listings.

mod executor_util;

use executor_util::resident_pages;
use ringshard::{Advice, Error, Executor, OpKind, OpenOptions};
use std::path::Path;

fn exec() -> Executor {
    Executor::builder().shards(2).build().unwrap()
}

/// Every kind with an opcode forced to the blocking path (the system call on the shard thread).
fn blocking_exec() -> Executor {
    Executor::builder()
        .shards(2)
        .force_blocking(&OpKind::ALL)
        .build()
        .unwrap()
}

/// Both ways of running the ops: their SQEs (io_uring, or the threads backend's workers), and
/// the blocking path.
fn execs() -> Vec<(&'static str, Executor)> {
    vec![("ring", exec()), ("blocking", blocking_exec())]
}

fn rw() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true).write(true).create(true);
    o
}

fn errno(e: &Error) -> i32 {
    e.errno().unwrap_or_else(|| panic!("no errno in {e:?}"))
}

#[test]
fn fadvise_dontneed_drops_pages_and_willneed_reads_them_in() {
    // /tmp is ext4 here (tmpfs ignores DONTNEED: its pages are the file).
    let dir = tempfile::tempdir().unwrap();
    for (how, exec) in execs() {
        let p = dir.path().join(format!("f-{how}"));
        let f = exec.open(&p, &rw()).wait().unwrap();
        // 64 KiB: within the smallest readahead window, so WILLNEED reads all of it.
        exec.write(&f, 0, vec![5u8; 65536]).wait().unwrap();
        f.sync_all().wait().unwrap(); // clean pages: DONTNEED can drop them
        assert!(
            resident_pages(&p).iter().all(|r| *r),
            "{how}: written pages cached"
        );

        f.fadvise(0, 0, Advice::DontNeed).wait().unwrap();
        let left = resident_pages(&p).iter().filter(|r| **r).count();
        assert_eq!(left, 0, "{how}: DONTNEED left {left} pages cached");

        // WILLNEED starts the reads and returns; mincore counts a page once its read is done.
        // Nothing else reads the file meanwhile, so a page that shows up is WILLNEED's.
        exec.fadvise(&f, 0, 65536, Advice::WillNeed).wait().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !resident_pages(&p)[0] {
            assert!(
                std::time::Instant::now() < deadline,
                "{how}: WILLNEED read nothing in"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(f.read_at(0, 65536).wait().unwrap(), vec![5u8; 65536]);

        for advice in [
            Advice::Normal,
            Advice::Sequential,
            Advice::Random,
            Advice::NoReuse,
        ] {
            exec.fadvise(&f, 4096, 8192, advice).wait().unwrap();
        }
        // The deadline form reaches the same operation.
        exec.timeout(std::time::Duration::from_secs(60))
            .fadvise(&f, 0, 0, Advice::DontNeed)
            .wait()
            .unwrap();
        exec.shutdown().unwrap();
    }
}

#[test]
fn fadvise_errors_carry_op_errno_and_path() {
    let dir = tempfile::tempdir().unwrap();
    for (how, exec) in execs() {
        let p = dir.path().join(format!("f-{how}"));
        let f = exec.open(&p, &rw()).wait().unwrap();
        // Ranges refused before anything is sent.
        let e = f.fadvise(u64::MAX, 2, Advice::WillNeed).wait().unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { op: "fadvise", .. }),
            "{e:?}"
        );
        let e = f.fadvise(0, 1 << 32, Advice::WillNeed).wait().unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { op: "fadvise", .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("4 GiB"), "{e}");

        // The kernel's own refusal: a FIFO has no page cache (ESPIPE).
        let fifo = dir.path().join(format!("fifo-{how}"));
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path, read during the call only.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let ff = exec.open(&fifo, &rw()).wait().unwrap();
        let e = ff.fadvise(0, 0, Advice::DontNeed).wait().unwrap_err();
        assert_eq!(errno(&e), libc::ESPIPE, "{how}: {e:?}");
        match &e {
            Error::Io { op, path, .. } => {
                assert_eq!(*op, "fadvise");
                assert_eq!(path.as_deref(), Some(fifo.as_path()));
            }
            other => panic!("{how}: {other:?}"),
        }
        // A file of another executor is refused, as for every Executor method.
        let other = Executor::builder().shards(1).build().unwrap();
        let e = other.fadvise(&f, 0, 0, Advice::Normal).wait().unwrap_err();
        assert!(matches!(e, Error::BadHandle(_)), "{e:?}");
        exec.shutdown().unwrap();
    }
}

/// The paths of a [`Error::PathPair`].
fn pair(e: &Error) -> (&'static str, &Path, &Path, i32) {
    match e {
        Error::PathPair {
            op,
            from,
            to,
            errno,
        } => (op, from.as_path(), to.as_path(), *errno),
        other => panic!("not a PathPair: {other:?}"),
    }
}

#[test]
fn hard_link_then_read_through_it() {
    let dir = tempfile::tempdir().unwrap();
    for (how, exec) in execs() {
        let d = dir.path().join(how);
        std::fs::create_dir(&d).unwrap();
        let (a, b) = (d.join("a"), d.join("b"));
        let f = exec.open(&a, &rw()).wait().unwrap();
        f.write_all_at(0, b"linked data").wait().unwrap();
        exec.hard_link(&a, &b).wait().unwrap();
        let md = exec.stat(&b).wait().unwrap();
        assert_eq!(md.nlink(), 2, "{how}");
        assert_eq!(md.ino(), exec.metadata(&f).wait().unwrap().ino(), "{how}");
        // Sent in order in one directory: the unlink of the original runs after the link.
        let link = exec.hard_link(&a, d.join("c"));
        let gone = exec.unlink(&a);
        link.wait().unwrap();
        gone.wait().unwrap();
        let g = exec.open(&b, OpenOptions::new().read(true)).wait().unwrap();
        assert_eq!(g.read_at(0, 100).wait().unwrap(), b"linked data", "{how}");
        assert_eq!(std::fs::read(d.join("c")).unwrap(), b"linked data", "{how}");

        // EEXIST names both paths.
        let e = exec.hard_link(&b, d.join("c")).wait().unwrap_err();
        assert_eq!(
            pair(&e),
            (
                "hard_link",
                b.as_path(),
                d.join("c").as_path(),
                libc::EEXIST
            )
        );
        assert!(e.to_string().contains("EEXIST"), "{e}");
        // A missing original: ENOENT.
        let e = exec.hard_link(&a, d.join("x")).wait().unwrap_err();
        assert_eq!(
            pair(&e),
            (
                "hard_link",
                a.as_path(),
                d.join("x").as_path(),
                libc::ENOENT
            )
        );
        // A directory cannot be hard-linked.
        let e = exec
            .hard_link(&d, dir.path().join(format!("{how}-dir")))
            .wait()
            .unwrap_err();
        assert_eq!(errno(&e), libc::EPERM, "{how}: {e:?}");
        exec.shutdown().unwrap();
    }
}

#[test]
fn symlink_then_metadata_and_readlink() {
    let dir = tempfile::tempdir().unwrap();
    for (how, exec) in execs() {
        let d = dir.path().join(how);
        std::fs::create_dir(&d).unwrap();
        let a = d.join("a");
        std::fs::write(&a, b"through the link").unwrap();

        // A relative target resolves against the link's directory.
        let l = d.join("l");
        exec.symlink("a", &l).wait().unwrap();
        assert!(
            exec.symlink_metadata(&l).wait().unwrap().is_symlink(),
            "{how}"
        );
        assert!(exec.stat(&l).wait().unwrap().is_file(), "{how}");
        assert_eq!(std::fs::read_link(&l).unwrap(), Path::new("a"), "{how}");
        let f = exec.open(&l, OpenOptions::new().read(true)).wait().unwrap();
        assert_eq!(f.read_at(0, 100).wait().unwrap(), b"through the link");

        // The target is stored as given: a dangling link is fine, and odd bytes survive.
        use std::os::unix::ffi::OsStrExt;
        let odd = std::ffi::OsStr::from_bytes(b"no such \xff\x01 target");
        let dangling = d.join("dangling");
        exec.symlink(odd, &dangling).wait().unwrap();
        assert_eq!(std::fs::read_link(&dangling).unwrap().as_os_str(), odd);
        let e = exec.stat(&dangling).wait().unwrap_err();
        assert_eq!(errno(&e), libc::ENOENT, "{how}: {e:?}");

        // EEXIST names the target and the link.
        let e = exec.symlink("elsewhere", &a).wait().unwrap_err();
        assert_eq!(
            pair(&e),
            ("symlink", Path::new("elsewhere"), a.as_path(), libc::EEXIST)
        );
        // A missing directory for the link: refused while routing (its parent is stat'ed).
        let e = exec.symlink("a", d.join("no/l")).wait().unwrap_err();
        assert_eq!(errno(&e), libc::ENOENT, "{how}: {e:?}");
        // A NUL in the target is refused before anything is sent.
        let e = exec.symlink("a\0b", d.join("n")).wait().unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { op: "symlink", .. }),
            "{e:?}"
        );
        exec.shutdown().unwrap();
    }
}

/// The names in `dir` (std's listing, for checking).
fn names(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    v.sort();
    v
}

#[test]
fn tmpfile_is_published_whole_by_link_into() {
    let ext4 = tempfile::tempdir().unwrap();
    // tmpfs too, where there is one (O_TMPFILE is a per-filesystem feature).
    let shm = tempfile::tempdir_in("/dev/shm").ok();
    let roots: Vec<&Path> = std::iter::once(ext4.path())
        .chain(shm.as_ref().map(|d| d.path()))
        .collect();
    for root in roots {
        for (how, exec) in execs() {
            let d = root.join(how);
            std::fs::create_dir(&d).unwrap();
            let fin = d.join("final");
            let f = exec.open_tmpfile(&d, 0o640).wait().unwrap();
            assert!(exec.metadata(&f).wait().unwrap().is_file());
            // Written in several requests; until the link, no name shows any of it.
            let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            for (i, chunk) in data.chunks(65536).enumerate() {
                f.write_all_at((i * 65536) as u64, chunk.to_vec())
                    .wait()
                    .unwrap();
            }
            assert!(names(&d).is_empty(), "{how}: {:?}", names(&d));
            assert_eq!(
                std::fs::metadata(&fin).unwrap_err().kind(),
                std::io::ErrorKind::NotFound
            );
            assert_eq!(exec.metadata(&f).wait().unwrap().nlink(), 0, "{how}");

            // The link is sent right after the last write, without waiting for it: it runs
            // after every write sent before it, so the name appears with all the data.
            let tail = f.write_all_at(data.len() as u64, b"END".to_vec());
            let linked = f.link_into(&fin);
            tail.wait().unwrap();
            linked.wait().unwrap();
            let mut want = data.clone();
            want.extend_from_slice(b"END");
            assert_eq!(std::fs::read(&fin).unwrap(), want, "{how}");
            use std::os::unix::fs::PermissionsExt;
            let md = std::fs::metadata(&fin).unwrap();
            assert_eq!(md.permissions().mode() & 0o777, 0o640, "{how}");
            assert_eq!(exec.metadata(&f).wait().unwrap().nlink(), 1, "{how}");

            // A second name through the Executor's face; EEXIST leaves the existing file.
            exec.link_file(&f, d.join("again")).wait().unwrap();
            std::fs::write(d.join("taken"), b"old").unwrap();
            let g = exec.open_tmpfile(&d, 0o600).wait().unwrap();
            g.write_all_at(0, b"new".to_vec()).wait().unwrap();
            let e = g.link_into(d.join("taken")).wait().unwrap_err();
            match &e {
                Error::PathPair {
                    op,
                    from,
                    to,
                    errno,
                } => {
                    assert_eq!((*op, *errno), ("link_into", libc::EEXIST), "{how}");
                    assert_eq!(
                        (from.as_path(), to.as_path()),
                        (d.as_path(), &*d.join("taken"))
                    );
                }
                other => panic!("{how}: {other:?}"),
            }
            assert!(e.to_string().contains("exists already"), "{e}");
            assert_eq!(std::fs::read(d.join("taken")).unwrap(), b"old");
            // Never linked: gone with its last handle.
            g.close().wait().unwrap();
            let mut want_names = vec!["again", "final", "taken"];
            want_names.sort();
            assert_eq!(names(&d), want_names, "{how}");
            // A link into a directory that does not exist.
            let e = f.link_into(d.join("no/such")).wait().unwrap_err();
            assert_eq!(errno(&e), libc::ENOENT, "{how}: {e:?}");
            exec.shutdown().unwrap();
        }
    }
}

#[test]
fn tmpfile_options_and_unsupported_filesystems() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    // Needs write access; create/truncate/directory make no sense with it.
    for opts in [
        OpenOptions::new().read(true).tmpfile(true).clone(),
        OpenOptions::new()
            .write(true)
            .create(true)
            .tmpfile(true)
            .clone(),
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .tmpfile(true)
            .clone(),
    ] {
        let e = exec.open(dir.path(), &opts).wait().unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { op: "open", .. }),
            "{e:?}"
        );
    }
    let e = exec
        .open(
            dir.path(),
            OpenOptions::new().write(true).custom_flags(libc::O_TMPFILE),
        )
        .wait()
        .unwrap_err();
    assert!(e.to_string().contains("tmpfile"), "{e}");
    // A path that is not a directory.
    let file = dir.path().join("f");
    std::fs::write(&file, b"").unwrap();
    let e = exec.open_tmpfile(&file, 0o600).wait().unwrap_err();
    assert_eq!(errno(&e), libc::ENOTDIR, "{e:?}");
    // procfs cannot make unnamed files: EOPNOTSUPP, with the way out. (Only root gets that far:
    // anyone else is refused /proc's write permission first, EACCES.)
    let e = exec.open_tmpfile("/proc", 0o600).wait().unwrap_err();
    // SAFETY: geteuid takes nothing and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert_eq!(errno(&e), libc::EACCES, "{e:?}");
        return;
    }
    match &e {
        Error::Io {
            op, path, errno, ..
        } => {
            assert_eq!((*op, *errno), ("open", libc::EOPNOTSUPP));
            assert_eq!(path.as_deref(), Some(Path::new("/proc")));
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("rename it into place"), "{e}");
    exec.shutdown().unwrap();
}

/// `(name, inode, type)` of each entry, sorted.
fn listing(
    entries: &[ringshard::DirEntry],
) -> Vec<(std::ffi::OsString, u64, ringshard::EntryType)> {
    let mut v: Vec<_> = entries
        .iter()
        .map(|e| (e.name().to_os_string(), e.ino(), e.file_type()))
        .collect();
    v.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    v
}

/// The same from std's listing (`symlink_metadata`: types not followed).
fn std_listing(dir: &Path) -> Vec<(std::ffi::OsString, u64, ringshard::EntryType)> {
    use ringshard::EntryType;
    use std::os::unix::fs::{DirEntryExt, FileTypeExt};
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            let t = if t.is_file() {
                EntryType::File
            } else if t.is_dir() {
                EntryType::Dir
            } else if t.is_symlink() {
                EntryType::Symlink
            } else if t.is_fifo() {
                EntryType::Fifo
            } else {
                EntryType::Unknown
            };
            (e.file_name(), e.ino(), t)
        })
        .collect();
    v.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    v
}

#[test]
fn read_dir_lists_many_odd_and_no_entries() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    for (how, exec) in execs() {
        let d = dir.path().join(how);
        std::fs::create_dir(&d).unwrap();
        // Many entries: about 150 KiB of dirents, several 32 KiB getdents64 rounds.
        for i in 0..2000 {
            std::fs::write(
                d.join(format!("entry-{i:05}-with-a-longer-name-to-fill")),
                b"",
            )
            .unwrap();
        }
        // Odd bytes (not UTF-8, control characters, spaces) and every common type.
        let odd = std::ffi::OsStr::from_bytes(b"\xff\xfe not utf-8 \x01\n\ttab");
        std::fs::write(d.join(odd), b"").unwrap();
        std::fs::create_dir(d.join("sub dir")).unwrap();
        std::os::unix::fs::symlink("nowhere", d.join("a link")).unwrap();
        let fifo = std::ffi::CString::new(d.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path, read during the call only.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

        let got = exec.read_dir(&d).wait().unwrap();
        assert_eq!(got.len(), 2004, "{how}");
        assert_eq!(listing(&got), std_listing(&d), "{how}");
        assert!(got.iter().any(|e| e.name() == odd), "{how}");

        // Path operations in the directory sent before the listing (not waited for) are seen.
        let gone = exec.unlink(d.join("entry-00000-with-a-longer-name-to-fill"));
        let made = exec.mkdir(d.join("made"), 0o755);
        let got = exec.read_dir(&d).wait().unwrap();
        gone.wait().unwrap();
        made.wait().unwrap();
        let names: Vec<_> = got.iter().map(|e| e.name().to_os_string()).collect();
        assert!(names.iter().any(|n| n == "made"), "{how}");
        assert!(!names
            .iter()
            .any(|n| n == "entry-00000-with-a-longer-name-to-fill"));
        assert_eq!(listing(&got), std_listing(&d), "{how}");

        // An open directory handle: the same listing, from the start each time.
        let h = exec.open_dir(&d).wait().unwrap();
        assert_eq!(
            listing(&h.read_dir().wait().unwrap()),
            std_listing(&d),
            "{how}"
        );
        assert_eq!(
            listing(&h.read_dir().wait().unwrap()),
            std_listing(&d),
            "{how}"
        );

        // An empty directory.
        let empty = d.join("sub dir");
        assert!(exec.read_dir(&empty).wait().unwrap().is_empty(), "{how}");
        let eh = exec.open_dir(&empty).wait().unwrap();
        assert!(eh.read_dir().wait().unwrap().is_empty(), "{how}");
        exec.shutdown().unwrap();
    }
}

#[test]
fn read_dir_errors_carry_op_errno_and_path() {
    let dir = tempfile::tempdir().unwrap();
    for (how, exec) in execs() {
        let file = dir.path().join(format!("file-{how}"));
        std::fs::write(&file, b"x").unwrap();
        let check = |e: Error, want: i32, path: &Path| match &e {
            Error::Io {
                op, path: p, errno, ..
            } => {
                assert_eq!((*op, *errno), ("read_dir", want), "{how}: {e}");
                assert_eq!(p.as_deref(), Some(path), "{how}");
            }
            other => panic!("{how}: {other:?}"),
        };
        check(
            exec.read_dir(&file).wait().unwrap_err(),
            libc::ENOTDIR,
            &file,
        );
        let missing = dir.path().join("missing");
        check(
            exec.read_dir(&missing).wait().unwrap_err(),
            libc::ENOENT,
            &missing,
        );
        // A handle of a regular file.
        let f = exec
            .open(&file, OpenOptions::new().read(true))
            .wait()
            .unwrap();
        check(f.read_dir().wait().unwrap_err(), libc::ENOTDIR, &file);
        exec.shutdown().unwrap();
    }
}
