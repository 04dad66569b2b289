//! Range operations on real files, on whichever backend `RINGSHARD_BACKEND` picks: typed
//! fallocate modes and sync_file_range flags.

mod executor_util;

use ringshard::{Error, Executor, FallocateMode, File, OpenOptions, SyncRangeFlags};
use std::path::Path;

fn exec() -> Executor {
    Executor::builder().shards(2).build().unwrap()
}

fn rw() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true).write(true).create(true);
    o
}

fn open(exec: &Executor, p: &Path) -> File {
    exec.open(p, &rw()).wait().unwrap()
}

#[test]
fn punch_hole_reads_zeros_and_keeps_the_size() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let f = open(&exec, &dir.path().join("f"));
    f.write_all_at(0, vec![0xab; 3 * 4096]).wait().unwrap();
    f.sync_data().wait().unwrap();
    let before = f.metadata().wait().unwrap().blocks();
    f.fallocate(FallocateMode::PunchHole, 4096, 4096)
        .wait()
        .unwrap();
    assert_eq!(f.size().wait().unwrap(), 3 * 4096, "the size is kept");
    let data = f.read_at(0, 3 * 4096).wait().unwrap();
    assert!(data[..4096].iter().all(|&b| b == 0xab));
    assert!(
        data[4096..8192].iter().all(|&b| b == 0),
        "the hole reads zeros"
    );
    assert!(data[8192..].iter().all(|&b| b == 0xab));
    // The block is given back (st_blocks counts 512-byte units).
    assert!(
        f.metadata().wait().unwrap().blocks() < before,
        "punching a hole frees blocks"
    );
}

#[test]
fn zero_range_zeros_and_extends_unless_asked_to_keep_the_size() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let f = open(&exec, &dir.path().join("f"));
    f.write_all_at(0, vec![0x11; 8192]).wait().unwrap();
    f.fallocate(FallocateMode::ZeroRangeKeepSize, 100, 1000)
        .wait()
        .unwrap();
    assert_eq!(f.size().wait().unwrap(), 8192);
    let data = f.read_at(0, 8192).wait().unwrap();
    assert!(data[..100].iter().all(|&b| b == 0x11));
    assert!(data[100..1100].iter().all(|&b| b == 0));
    assert!(data[1100..].iter().all(|&b| b == 0x11));
    // Without KEEP_SIZE the file grows to cover the range, and reads see it at once.
    f.fallocate(FallocateMode::ZeroRange, 8192, 4096)
        .wait()
        .unwrap();
    assert_eq!(f.read_at(8000, 10_000).wait().unwrap().len(), 12_288 - 8000);
    assert_eq!(f.size().wait().unwrap(), 12_288);
    // KeepSize allocates past the end without growing the file.
    f.fallocate(FallocateMode::KeepSize, 12_288, 1 << 20)
        .wait()
        .unwrap();
    assert_eq!(f.size().wait().unwrap(), 12_288);
}

#[test]
fn collapse_and_insert_range_move_the_rest_of_the_file() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let f = open(&exec, &dir.path().join("f"));
    let mut data = vec![1u8; 4096];
    data.extend(vec![2u8; 4096]);
    data.extend(vec![3u8; 4096]);
    f.write_all_at(0, data).wait().unwrap();
    f.fallocate(FallocateMode::CollapseRange, 4096, 4096)
        .wait()
        .unwrap();
    let got = f.read_at(0, 1 << 20).wait().unwrap();
    assert_eq!(got.len(), 8192, "collapse shrinks the file; a read sees it");
    assert!(got[..4096].iter().all(|&b| b == 1) && got[4096..].iter().all(|&b| b == 3));
    f.fallocate(FallocateMode::InsertRange, 4096, 4096)
        .wait()
        .unwrap();
    let got = f.read_at(0, 1 << 20).wait().unwrap();
    assert_eq!(got.len(), 12_288);
    assert!(got[4096..8192].iter().all(|&b| b == 0), "an inserted hole");
    assert!(got[8192..].iter().all(|&b| b == 3));
}

#[test]
fn an_unsupported_mode_is_eopnotsupp_with_op_path_and_fix() {
    // ext4 (/tmp here) has no FALLOC_FL_UNSHARE_RANGE; tmpfs has no ZERO_RANGE. Either way the
    // kernel's EOPNOTSUPP comes back named.
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    let f = open(&exec, &p);
    f.write_all_at(0, vec![5u8; 4096]).wait().unwrap();
    let e = f
        .fallocate(FallocateMode::UnshareRange, 0, 4096)
        .wait()
        .unwrap_err();
    match &e {
        Error::Io {
            op: "fallocate",
            path: Some(path),
            errno,
            ..
        } => {
            assert_eq!(*errno, libc::EOPNOTSUPP, "{e}");
            assert_eq!(path, &p);
        }
        other => panic!("{other:?}"),
    }
    let text = e.to_string();
    assert!(
        text.contains("EOPNOTSUPP") && text.contains("does not support"),
        "{text}"
    );
    // Nothing changed.
    assert_eq!(f.read_at(0, 5000).wait().unwrap(), vec![5u8; 4096]);
}

#[test]
fn sync_range_flags_write_and_wait() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let f = open(&exec, &dir.path().join("f"));
    f.write_all_at(0, vec![9u8; 1 << 16]).wait().unwrap();
    let all = SyncRangeFlags::WAIT_BEFORE | SyncRangeFlags::WRITE | SyncRangeFlags::WAIT_AFTER;
    assert_eq!(
        all.bits(),
        (libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER)
    );
    assert!(all.contains(SyncRangeFlags::WRITE));
    f.sync_file_range(0, 0, all).wait().unwrap();
    exec.sync_file_range(&f, 4096, 4096, SyncRangeFlags::WRITE)
        .wait()
        .unwrap();
    assert_eq!(f.read_at(0, 10).wait().unwrap(), vec![9u8; 10]);
}

/// Two files of `exec` on different shards (names tried until the inode hashes differ).
fn on_two_shards(exec: &Executor, dir: &Path) -> (File, File) {
    let a = open(exec, &dir.join("a"));
    for i in 0..1000 {
        let b = open(exec, &dir.join(format!("b{i}")));
        if b.shard() != a.shard() {
            return (a, b);
        }
    }
    panic!("no second shard in 1000 files");
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn copy_within_a_file() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let f = open(&exec, &dir.path().join("f"));
    let data = pattern(8192, 1);
    f.write_all_at(0, data.clone()).wait().unwrap();
    assert_eq!(f.copy_range_to(100, &f, 8192, 4000).wait().unwrap(), 4000);
    let got = f.read_at(0, 1 << 20).wait().unwrap();
    assert_eq!(got.len(), 8192 + 4000);
    assert_eq!(&got[..8192], &data[..]);
    assert_eq!(&got[8192..], &data[100..4100]);
    // Overlapping ranges of one file: the kernel's EINVAL, with both paths.
    let e = f.copy_range_to(0, &f, 100, 4000).wait().unwrap_err();
    assert_eq!(e.errno(), Some(libc::EINVAL), "{e}");
    assert!(
        matches!(
            e,
            Error::PathPair {
                op: "copy_file_range",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn copy_across_files_on_different_shards_in_rounds() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = on_two_shards(&exec, dir.path());
    // More than one round (1 MiB each) and not a multiple of it.
    let data = pattern(3 << 20 | 12_345, 7);
    src.write_all_at(0, data.clone()).wait().unwrap();
    let n = exec
        .copy_file_range(&src, 0, &dst, 4096, data.len() as u64)
        .wait()
        .unwrap();
    assert_eq!(n, data.len() as u64);
    let got = std::fs::read(dir.path().join(dst.path().file_name().unwrap())).unwrap();
    assert!(got[..4096].iter().all(|&b| b == 0));
    assert!(got[4096..] == data[..], "the copy is the source's data");
    assert_eq!(dst.size().wait().unwrap(), 4096 + data.len() as u64);
    assert!(exec.stats().total.ops(ringshard::OpKind::CopyFileRange) >= 1);
}

#[test]
fn a_copy_sees_the_writes_sent_before_it_and_reads_after_it_see_the_copy() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = on_two_shards(&exec, dir.path());
    for round in 0..20u8 {
        // Nothing is waited for between the writes, the copy and the read: the order is the
        // executor's.
        let w_src = src.write_all_at(0, vec![round; 64 << 10]);
        let w_dst = dst.write_all_at(0, vec![0xee; 128 << 10]);
        let copy = src.copy_range_to(0, &dst, 0, 64 << 10);
        let read = dst.read_at(0, 128 << 10);
        w_src.wait().unwrap();
        w_dst.wait().unwrap();
        assert_eq!(copy.wait().unwrap(), 64 << 10);
        let got = read.wait().unwrap();
        assert!(got[..64 << 10].iter().all(|&b| b == round), "round {round}");
        assert!(got[64 << 10..].iter().all(|&b| b == 0xee), "round {round}");
    }
}

#[test]
fn a_copy_stops_short_at_the_end_of_the_source() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = on_two_shards(&exec, dir.path());
    src.write_all_at(0, pattern(5000, 3)).wait().unwrap();
    assert_eq!(
        src.copy_range_to(1000, &dst, 0, 1 << 30).wait().unwrap(),
        4000
    );
    assert_eq!(
        dst.read_at(0, 1 << 20).wait().unwrap(),
        &pattern(5000, 3)[1000..]
    );
    // At or past the end: nothing to copy.
    assert_eq!(src.copy_range_to(5000, &dst, 0, 10).wait().unwrap(), 0);
    assert_eq!(exec.copy_file_range(&src, 0, &dst, 0, 0).wait().unwrap(), 0);
}

#[test]
fn copy_checks_access_and_owner() {
    let exec = exec();
    let other = self::exec();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    let f = open(&exec, &p);
    let ro = exec.open(&p, OpenOptions::new().read(true)).wait().unwrap();
    let e = f.copy_range_to(0, &ro, 0, 10).wait().unwrap_err();
    assert!(
        matches!(e, Error::BadHandle(_)) && e.to_string().contains("write(true)"),
        "{e}"
    );
    let wo = exec
        .open(&p, OpenOptions::new().write(true))
        .wait()
        .unwrap();
    let e = wo.copy_range_to(0, &f, 0, 10).wait().unwrap_err();
    assert!(
        matches!(e, Error::BadHandle(_)) && e.to_string().contains("read(true)"),
        "{e}"
    );
    let ap = exec
        .open(&p, OpenOptions::new().append(true))
        .wait()
        .unwrap();
    let e = f.copy_range_to(0, &ap, 0, 10).wait().unwrap_err();
    assert!(e.to_string().contains("append"), "{e}");
    let g = open(&other, &dir.path().join("g"));
    let e = exec.copy_file_range(&f, 0, &g, 0, 10).wait().unwrap_err();
    assert!(matches!(e, Error::BadHandle(_)), "{e}");
    let e = f.copy_range_to(u64::MAX - 5, &f, 0, 10).wait().unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
}

#[test]
fn clone_on_ext4_or_tmpfs_says_there_is_no_reflink() {
    // /tmp here is ext4, which cannot share extents.
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = on_two_shards(&exec, dir.path());
    src.write_all_at(0, vec![1u8; 8192]).wait().unwrap();
    let e = src.clone_range_to(0, &dst, 0, 8192).wait().unwrap_err();
    match &e {
        Error::PathPair {
            op: "clone_range",
            from,
            to,
            errno,
        } => {
            assert_eq!(from, src.path());
            assert_eq!(to, dst.path());
            assert!(
                *errno == libc::EOPNOTSUPP || *errno == libc::EXDEV || *errno == libc::EINVAL,
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("reflink"), "{e}");
    assert_eq!(dst.size().wait().unwrap(), 0, "nothing happened");
}

#[test]
fn a_copy_between_filesystems_is_exdev_or_done() {
    let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
        return; // no tmpfs here
    };
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let src = open(&exec, &shm.path().join("src"));
    let dst = open(&exec, &dir.path().join("dst"));
    src.write_all_at(0, pattern(10_000, 9)).wait().unwrap();
    match src.copy_range_to(0, &dst, 0, 10_000).wait() {
        // Linux 5.19 on: only filesystems of one type copy between themselves.
        Err(e) => {
            assert_eq!(e.errno(), Some(libc::EXDEV), "{e}");
            assert!(e.to_string().contains("different filesystems"), "{e}");
        }
        Ok(n) => {
            assert_eq!(n, 10_000);
            assert_eq!(dst.read_at(0, 20_000).wait().unwrap(), pattern(10_000, 9));
        }
    }
}

#[test]
fn a_copy_whose_source_was_closed_fails_with_the_sources_error_and_does_not_hang() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = on_two_shards(&exec, dir.path());
    src.write_all_at(0, vec![1u8; 100]).wait().unwrap();
    src.clone().close().wait().unwrap();
    let e = src.copy_range_to(0, &dst, 0, 100).wait().unwrap_err();
    assert!(matches!(e, Error::BadHandle(_)), "{e:?}");
    // The destination's shard is free again.
    dst.write_all_at(0, vec![2u8; 10]).wait().unwrap();
    assert_eq!(dst.read_at(0, 100).wait().unwrap(), vec![2u8; 10]);
}

/// Pages of `path` in the page cache, and pages in all.
fn resident(path: &Path) -> (usize, usize) {
    let pages = executor_util::resident_pages(path);
    (pages.iter().filter(|&&r| r).count(), pages.len())
}

/// Writes `len` bytes to `path`, makes them durable and drops them from the page cache.
fn uncached_file(path: &Path, data: &[u8]) {
    use std::os::fd::AsRawFd;
    std::fs::write(path, data).unwrap();
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: fadvise takes no memory.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0);
    assert_eq!(
        resident(path).0,
        0,
        "the test needs the file out of the page cache"
    );
}

#[test]
fn a_dontcache_read_returns_the_data_and_leaves_the_pages_uncached() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    let data = pattern(256 << 10, 4);
    uncached_file(&p, &data);
    let f = exec.open(&p, OpenOptions::new().read(true)).wait().unwrap();
    let got = f
        .read_with(0, 1 << 20, ringshard::RwFlags::DONTCACHE)
        .wait()
        .unwrap();
    assert!(got == data);
    let (cached, pages) = resident(&p);
    // Pages are dropped as each read completes (a page whose lock another thread held at that
    // moment may stay): never the whole file, which a plain read leaves cached (below).
    assert!(
        cached < pages / 2,
        "{cached} of {pages} pages cached after RWF_DONTCACHE"
    );
    let got = exec.read(&f, 0, 1 << 20).wait().unwrap();
    assert!(got == data);
    assert_eq!(resident(&p), (pages, pages), "a plain read caches");
}

#[test]
fn a_dontcache_write_lands() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    let f = open(&exec, &p);
    let data = pattern(64 << 10, 5);
    let n = exec
        .write_with(&f, 0, data.clone(), ringshard::RwFlags::DONTCACHE)
        .wait()
        .unwrap();
    assert_eq!(n, data.len());
    assert!(std::fs::read(&p).unwrap() == data);
}

#[test]
fn a_dontcache_read_on_tmpfs_is_refused_with_what_it_needs() {
    let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
        return; // no tmpfs here
    };
    let exec = exec();
    let p = shm.path().join("f");
    std::fs::write(&p, b"data").unwrap();
    let f = exec.open(&p, OpenOptions::new().read(true)).wait().unwrap();
    let e = f
        .read_with(0, 10, ringshard::RwFlags::DONTCACHE)
        .wait()
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc::EOPNOTSUPP), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("RWF_DONTCACHE needs Linux 6.14") && text.contains(&p.display().to_string()),
        "{text}"
    );
    // Without the flag the same read works.
    assert_eq!(f.read_at(0, 10).wait().unwrap(), b"data");
}

#[test]
fn o_direct_alignment_comes_from_the_filesystem() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    std::fs::write(&p, pattern(16 << 10, 6)).unwrap();
    let buffered = exec.open(&p, OpenOptions::new().read(true)).wait().unwrap();
    assert_eq!(buffered.direct_io_align(), None);
    let Ok(f) = exec
        .open(&p, OpenOptions::new().read(true).write(true).direct(true))
        .wait()
    else {
        return; // a filesystem without O_DIRECT
    };
    let align = f
        .direct_io_align()
        .expect("an O_DIRECT file has an alignment");
    // What the kernel says (STATX_DIOALIGN, Linux 6.1), or the device's logical block size.
    assert!(
        align.offset.is_power_of_two() && (512..=4096).contains(&align.offset),
        "{align:?}"
    );
    assert!(
        align.memory.is_power_of_two() && align.memory <= 4096,
        "{align:?}"
    );
    let a = align.offset as u64;
    // An aligned read at the smallest step the file allows is accepted and returns the data.
    let got = f.read_at(a, a as usize).wait().unwrap();
    assert_eq!(got, &pattern(16 << 10, 6)[a as usize..2 * a as usize]);
    // 512-aligned: accepted where the file allows it, else refused naming the alignment.
    match f.read_at(512, 512).wait() {
        Ok(got) => {
            assert_eq!(a, 512);
            assert_eq!(got, &pattern(16 << 10, 6)[512..1024]);
        }
        Err(e) => {
            assert!(a > 512, "{e}");
            assert!(
                matches!(e, Error::InvalidArgument { op: "read", .. }),
                "{e:?}"
            );
            assert!(e.to_string().contains(&format!("multiples of {a}")), "{e}");
        }
    }
    // Never aligned: refused before it is sent, with the alignment and the file.
    let e = f.write_at(100, vec![0u8; 512]).wait().unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(&format!("multiples of {a}")) && text.contains("STATX_DIOALIGN"),
        "{text}"
    );
    assert!(text.contains(&p.display().to_string()), "{text}");
}
