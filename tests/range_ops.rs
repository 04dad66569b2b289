//! Range operations on real files, on whichever backend `RINGSHARD_BACKEND` picks: typed
//! fallocate modes and sync_file_range flags.

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
