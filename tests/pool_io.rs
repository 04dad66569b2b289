//! Integration tests for `RegisteredBufferPool` on a real io_uring ring and real files (no mocks).
//!
//! The pool needs a ring: these tests make their own with `IoUring::new`, whatever
//! `RINGSHARD_BACKEND` says (that only picks the executor's backend). Where io_uring is blocked
//! they fail at `IoUring::new` with the kernel's errno, as the pool's users would.
//!
//! Every test asserts what the kernel actually did: bytes on disk and in buffers, CQE results and
//! errnos, and the pool's counters.
//!
//! All tests here take one process-wide lock (`serial()`): the drop tests check whether an address
//! range is still mapped, which another test's `mmap` running at the same moment could disturb, and
//! the machines are small (2 cores), so running these one after another also keeps timing sane.

use io_uring::{cqueue, types, IoUring};
use ringshard::numa::{node_of_address, page_size};
use ringshard::{Error, RegisteredBufferPool};
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

static SERIAL: Mutex<()> = Mutex::new(());

/// Runs the calling test alone among the tests of this file (a panic in another test does not
/// poison it for the rest).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Longest wait for completions before a test fails instead of hanging.
const WAIT: Duration = Duration::from_secs(5);

/// Submits whatever is queued, waits until at least `n` completions have arrived (failing the test
/// after [`WAIT`]) and returns every completion available by then.
fn reap(ring: &mut IoUring, n: usize) -> Vec<cqueue::Entry> {
    let deadline = Instant::now() + WAIT;
    let mut out: Vec<cqueue::Entry> = Vec::with_capacity(n);
    loop {
        out.extend(ring.completion());
        if out.len() >= n && ring.submission().is_empty() {
            return out;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out after {WAIT:?} waiting for {n} completions (got {})",
            out.len()
        );
        let ts = types::Timespec::from(left);
        let args = types::SubmitArgs::new().timespec(&ts);
        match ring
            .submitter()
            .submit_with_args(n.saturating_sub(out.len()), &args)
        {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
            Err(e) => panic!("io_uring_enter failed: {e}"),
        }
    }
}

/// Submits what is queued and waits up to `timeout` for one completion; returns whether one came.
fn completion_within(ring: &mut IoUring, timeout: Duration) -> bool {
    let ts = types::Timespec::from(timeout);
    let args = types::SubmitArgs::new().timespec(&ts);
    match ring.submitter().submit_with_args(1, &args) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
        Err(e) => panic!("io_uring_enter failed: {e}"),
    }
    !ring.completion().is_empty()
}

/// Deterministic pseudo-random numbers (splitmix64): the tests need no `rand` dependency and every
/// run sees the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `len` bytes of the pattern seeded by `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng(seed).fill(&mut v);
    v
}

/// FNV-1a, 64 bit: a checksum that reports a whole-file mismatch in one line.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Asserts two byte slices are equal, reporting the first differing offset instead of dumping
/// megabytes.
fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i}: got {:#04x}, want {:#04x}",
            got[i], want[i]
        );
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no side effects.
    unsafe { libc::geteuid() == 0 }
}

/// `Ok(())` when the page holding `addr` is mapped in this process, else the errno of
/// `msync(MS_ASYNC)` (ENOMEM for an unmapped range).
fn page_mapped(addr: usize) -> Result<(), i32> {
    let base = addr & !(page_size() - 1);
    // SAFETY: msync only inspects the mapping of [base, base + page); it does not touch memory and
    // fails with ENOMEM when the range is not mapped.
    let rc = unsafe { libc::msync(base as *mut libc::c_void, page_size(), libc::MS_ASYNC) };
    if rc == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// A temporary directory on /tmp (ext4 on the development machines), not wherever TMPDIR points.
fn tmp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("create a temp dir in /tmp")
}

fn new_ring(entries: u32) -> IoUring {
    IoUring::new(entries).expect("io_uring_setup (is io_uring blocked here?)")
}

// ---------------------------------------------------------------------------------------------
// 1. The documented usage
// ---------------------------------------------------------------------------------------------

/// The example from the `RegisteredBufferPool` docs, as written (256 x 64 KiB: root has
/// CAP_IPC_LOCK, see `memlock_limit_as_ordinary_user` for an ordinary user), with the outcomes
/// checked against the file itself.
#[test]
fn documented_usage_write_then_read() {
    let _serial = serial();
    let mut ring = new_ring(32);
    let mut pool = RegisteredBufferPool::new(&mut ring, 64 * 1024, 256).expect("256 x 64 KiB pool");
    assert_eq!(pool.total_count(), 256);
    assert_eq!(pool.buffer_size(), 64 * 1024);
    let file = tempfile::tempfile().unwrap();
    let fd = file.as_raw_fd();

    // Write "hello" through a registered buffer.
    let (idx, buf) = pool.acquire().unwrap();
    assert_eq!(buf.len(), 64 * 1024);
    buf[..5].copy_from_slice(b"hello");
    let user_data = pool.submit_write_fixed(&mut ring, fd, idx, 0, 5).unwrap();
    assert!(pool.is_in_flight(idx));
    assert_eq!(pool.in_flight_count(), 1);
    ring.submit_and_wait(1).unwrap();
    let cqe = ring.completion().next().expect("one completion");
    assert_eq!(cqe.user_data(), user_data);
    assert_eq!(
        RegisteredBufferPool::buffer_index_of(cqe.user_data()),
        Some(idx)
    );
    assert_eq!(cqe.result(), 5);
    assert!(pool.is_kernel_owned(idx), "until the pool sees the CQE");
    assert_eq!(pool.complete_cqe(&cqe), Some((idx, 5)));
    assert!(!pool.is_in_flight(idx));
    assert!(!pool.is_kernel_owned(idx));
    assert_eq!(pool.kernel_owned_count(), 0);
    pool.release(idx);
    assert_eq!(pool.available_count(), 256);

    // The kernel really wrote it: the file holds exactly "hello".
    let mut on_disk = [0u8; 16];
    assert_eq!(file.read_at(&mut on_disk, 0).unwrap(), 5);
    assert_eq!(&on_disk[..5], b"hello");
    // Something written outside the pool, to be read back through it.
    file.write_at(b" world", 5).unwrap();

    // Read it back. The free list is LIFO and buffers are not cleared on release, so `acquire`
    // hands back the same buffer, still holding "hello": the docs' read-back check would pass even
    // if the read did nothing. Poison the buffer first so this check means something.
    let (ridx, rbuf) = pool.acquire().unwrap();
    assert_eq!(
        ridx, idx,
        "LIFO free list hands back the buffer just released"
    );
    assert_eq!(&rbuf[..5], b"hello", "release does not clear buffers");
    rbuf.fill(0xEE);
    let read_data = pool.submit_read_fixed(&mut ring, fd, ridx, 0, 11).unwrap();
    assert_ne!(read_data, user_data, "user_data is unique per operation");
    ring.submit_and_wait(1).unwrap();
    let cqe = ring.completion().next().expect("one completion");
    assert_eq!(cqe.user_data(), read_data);
    assert_eq!(pool.complete_cqe(&cqe), Some((ridx, 11)));
    let got = pool.get(ridx).unwrap();
    assert_eq!(&got[..11], b"hello world");
    assert!(
        got[11..].iter().all(|&b| b == 0xEE),
        "bytes past the read untouched"
    );
    pool.release(ridx);

    let s = pool.stats();
    assert_eq!(
        (s.available_count, s.acquired_count, s.in_flight_count),
        (256, 0, 0)
    );
    assert_eq!(s.acquisitions, 2);
    assert_eq!(s.misuse_total(), 0);
    assert_eq!(s.total_bytes, 256 * 64 * 1024);
    assert_eq!(s.numa_node, None);
}

// ---------------------------------------------------------------------------------------------
// 2. O_DIRECT round trip
// ---------------------------------------------------------------------------------------------

const EXT4_SUPER_MAGIC: i64 = 0xEF53;

fn fs_magic(path: &Path) -> i64 {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: statfs writes into the zeroed struct we pass, which outlives the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path; `st` is a valid out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statfs {}: errno {}", path.display(), errno());
    st.f_type as i64
}

/// Creates `path` opened read-write with O_DIRECT, or `None` (after saying why) when its
/// filesystem refuses O_DIRECT, which is allowed only for filesystems other than ext4.
fn open_direct(path: &Path, test: &str) -> Option<File> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => {
            // SAFETY: F_GETFL only reads the descriptor's flags.
            let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
            assert!(flags & libc::O_DIRECT != 0, "file is open with O_DIRECT");
            Some(f)
        }
        Err(e) => {
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "open O_DIRECT: {e}");
            let dir = path.parent().unwrap_or(path);
            let magic = fs_magic(dir);
            assert_ne!(
                magic, EXT4_SUPER_MAGIC,
                "ext4 supports O_DIRECT, yet open failed with EINVAL"
            );
            eprintln!(
                "SKIP {test}: the filesystem of {} (magic {magic:#x}) refuses O_DIRECT with EINVAL",
                dir.display()
            );
            None
        }
    }
}

/// Pushes `ops` (buffer, offset, len) as fixed reads or writes all at once, checks they are all in
/// flight together, reaps them and checks every one transferred its full length.
fn run_batch(
    ring: &mut IoUring,
    pool: &mut RegisteredBufferPool,
    fd: i32,
    write: bool,
    ops: &[(u16, u64, u32)],
) {
    let mut expect = HashMap::new();
    for &(idx, off, len) in ops {
        let ud = if write {
            pool.submit_write_fixed(ring, fd, idx, off, len)
        } else {
            pool.submit_read_fixed(ring, fd, idx, off, len)
        }
        .unwrap();
        expect.insert(ud, (idx, off, len));
    }
    assert_eq!(
        pool.in_flight_count(),
        ops.len(),
        "whole batch in flight at once"
    );
    let cqes = reap(ring, ops.len());
    assert_eq!(cqes.len(), ops.len());
    for cqe in &cqes {
        let (idx, off, len) = expect.remove(&cqe.user_data()).expect("a CQE we submitted");
        assert_eq!(
            pool.complete_cqe(cqe),
            Some((idx, len as i32)),
            "{write} at {off}"
        );
    }
    assert_eq!(pool.in_flight_count(), 0);
}

/// 1 MiB of a seeded pattern written with O_DIRECT in 4 KiB and 64 KiB blocks, 32 operations in
/// flight at once, then read back with O_DIRECT (with the block sizes swapped, so reads straddle
/// the writes) into buffers the writes never used, and checked byte for byte; and with std::fs.
#[test]
fn o_direct_round_trip_1mib() {
    let _serial = serial();
    const TOTAL: usize = 1 << 20;
    const REGION: usize = 64 * 1024;
    const BATCH: usize = 32;
    let dir = tmp_dir("ringshard-odirect");
    let path = dir.path().join("data");
    let Some(file) = open_direct(&path, "o_direct_round_trip_1mib") else {
        return;
    };
    let fd = file.as_raw_fd();
    let data = pattern(0x0D1_2EC7, TOTAL);

    let mut ring = new_ring(64);
    let mut pool = RegisteredBufferPool::new(&mut ring, REGION, 2 * BATCH).unwrap();
    // Hold half the pool for the read-back, so reads land in buffers the writes never touched.
    let read_set: Vec<u16> = (0..BATCH)
        .map(|_| {
            let (i, b) = pool.acquire().unwrap();
            b.fill(0xA5);
            i
        })
        .collect();

    // Even 64 KiB regions are written as 16 x 4 KiB, odd ones as one 64 KiB block.
    let mut writes = Vec::new();
    for r in 0..TOTAL / REGION {
        let base = r * REGION;
        if r % 2 == 0 {
            writes.extend((0..REGION / 4096).map(|k| (base + k * 4096, 4096)));
        } else {
            writes.push((base, REGION));
        }
    }
    assert_eq!(writes.iter().map(|w| w.1).sum::<usize>(), TOTAL);
    let mut write_bufs = Vec::new();
    for batch in writes.chunks(BATCH) {
        let mut ops = Vec::new();
        for &(off, len) in batch {
            let (idx, buf) = pool.acquire().unwrap();
            buf[..len].copy_from_slice(&data[off..off + len]);
            write_bufs.push(idx);
            ops.push((idx, off as u64, len as u32));
        }
        run_batch(&mut ring, &mut pool, fd, true, &ops);
        for &(idx, ..) in &ops {
            pool.release(idx);
        }
    }
    assert!(write_bufs.iter().all(|i| !read_set.contains(i)));

    // Read back with the sizes swapped: even regions in one 64 KiB read, odd ones in 4 KiB reads.
    let mut reads = Vec::new();
    for r in 0..TOTAL / REGION {
        let base = r * REGION;
        if r % 2 == 0 {
            reads.push((base, REGION));
        } else {
            reads.extend((0..REGION / 4096).map(|k| (base + k * 4096, 4096)));
        }
    }
    for batch in reads.chunks(BATCH) {
        let ops: Vec<(u16, u64, u32)> = batch
            .iter()
            .zip(&read_set)
            .map(|(&(off, len), &idx)| (idx, off as u64, len as u32))
            .collect();
        for &(idx, ..) in &ops {
            pool.get_mut(idx).unwrap().fill(0xA5);
        }
        run_batch(&mut ring, &mut pool, fd, false, &ops);
        for &(idx, off, len) in &ops {
            let (off, len) = (off as usize, len as usize);
            let got = &pool.get(idx).unwrap()[..len];
            assert_bytes_eq(
                got,
                &data[off..off + len],
                &format!("O_DIRECT read at {off}"),
            );
        }
    }

    // O_DIRECT really is in effect: an unaligned offset is refused by the kernel.
    let idx = read_set[0];
    let ud = pool.submit_read_fixed(&mut ring, fd, idx, 1, 4096).unwrap();
    let cqe = reap(&mut ring, 1).pop().unwrap();
    assert_eq!(cqe.user_data(), ud);
    assert_eq!(pool.complete_cqe(&cqe), Some((idx, -libc::EINVAL)));

    for idx in read_set {
        pool.release(idx);
    }
    let s = pool.stats();
    assert_eq!((s.available_count, s.in_flight_count), (2 * BATCH, 0));
    assert_eq!(s.misuse_total(), 0);
    let on_disk = std::fs::read(&path).unwrap();
    assert_bytes_eq(&on_disk, &data, "file read with std::fs::read");
}

// ---------------------------------------------------------------------------------------------
// 3. Random mixed workload against a model
// ---------------------------------------------------------------------------------------------

/// 2000 random 4 KiB reads and writes (half of them at unaligned offsets) on an 8 MiB file at
/// queue depth 16, checked against an in-memory model: every read as it completes, and the whole
/// file at the end. Operations in flight together never overlap (the ring does not order them).
#[test]
fn random_mixed_workload_matches_model() {
    let _serial = serial();
    const FILE_LEN: usize = 8 << 20;
    const OP_LEN: usize = 4096;
    const OPS: usize = 2000;
    const DEPTH: usize = 16;

    struct Op {
        user_data: u64,
        write: bool,
        off: usize,
    }

    let dir = tmp_dir("ringshard-random");
    let path = dir.path().join("data");
    let mut model = pattern(0x5EED_0003, FILE_LEN);
    std::fs::write(&path, &model).unwrap();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let fd = file.as_raw_fd();

    let mut ring = new_ring(32);
    let mut pool = RegisteredBufferPool::new(&mut ring, OP_LEN, DEPTH).unwrap();
    let mut rng = Rng(42);
    let mut in_flight: HashMap<u16, Op> = HashMap::new();
    let (mut issued, mut done, mut reads_checked, mut writes_done) = (0, 0, 0, 0);
    let mut max_depth = 0;

    while done < OPS {
        while in_flight.len() < DEPTH && issued < OPS {
            let off = loop {
                let mut off = rng.below((FILE_LEN - OP_LEN + 1) as u64) as usize;
                if rng.below(2) == 0 {
                    off &= !(OP_LEN - 1);
                }
                if in_flight.values().all(|o| off.abs_diff(o.off) >= OP_LEN) {
                    break off;
                }
            };
            let write = rng.below(2) == 0;
            let (idx, buf) = pool.acquire().expect("a free buffer at depth < 16");
            let user_data = if write {
                rng.fill(buf);
                model[off..off + OP_LEN].copy_from_slice(buf);
                pool.submit_write_fixed(&mut ring, fd, idx, off as u64, OP_LEN as u32)
            } else {
                buf.fill(0xC3);
                pool.submit_read_fixed(&mut ring, fd, idx, off as u64, OP_LEN as u32)
            }
            .unwrap();
            in_flight.insert(
                idx,
                Op {
                    user_data,
                    write,
                    off,
                },
            );
            issued += 1;
        }
        max_depth = max_depth.max(pool.in_flight_count());
        assert_eq!(pool.in_flight_count(), in_flight.len());
        for cqe in reap(&mut ring, 1) {
            let (idx, res) = pool.complete_cqe(&cqe).expect("a pool CQE");
            let op = in_flight.remove(&idx).expect("buffer had an op in flight");
            assert_eq!(cqe.user_data(), op.user_data);
            assert_eq!(res, OP_LEN as i32, "write={} at {}", op.write, op.off);
            if op.write {
                writes_done += 1;
            } else {
                let want = &model[op.off..op.off + OP_LEN];
                assert_bytes_eq(pool.get(idx).unwrap(), want, &format!("read at {}", op.off));
                reads_checked += 1;
            }
            pool.release(idx);
            done += 1;
        }
    }

    assert_eq!(max_depth, DEPTH, "the workload reached queue depth {DEPTH}");
    assert_eq!(reads_checked + writes_done, OPS);
    assert!(
        reads_checked > 800 && writes_done > 800,
        "{reads_checked} reads, {writes_done} writes"
    );
    let s = pool.stats();
    assert_eq!((s.available_count, s.in_flight_count), (DEPTH, 0));
    assert_eq!(s.acquisitions, OPS as u64);
    assert_eq!(s.misuse_total(), 0);
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(on_disk.len(), FILE_LEN);
    assert_eq!(
        fnv1a(&on_disk),
        fnv1a(&model),
        "file checksum equals the model's"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Short reads at EOF
// ---------------------------------------------------------------------------------------------

/// A short read is a normal result: READ_FIXED of 8192 bytes at 4096 of a 5000-byte file returns
/// 904 (the bytes that exist); at 10000, past EOF, it returns 0.
#[test]
fn short_read_at_eof() {
    let _serial = serial();
    let data = pattern(5000, 5000);
    let mut file = tempfile::tempfile_in("/tmp").unwrap();
    file.write_all(&data).unwrap();
    let fd = file.as_raw_fd();
    let mut ring = new_ring(8);
    let mut pool = RegisteredBufferPool::new(&mut ring, 8192, 2).unwrap();

    for (off, want) in [(4096u64, 904usize), (10_000, 0)] {
        let (idx, buf) = pool.acquire().unwrap();
        buf.fill(0x77);
        let ud = pool
            .submit_read_fixed(&mut ring, fd, idx, off, 8192)
            .unwrap();
        let cqe = reap(&mut ring, 1).pop().unwrap();
        assert_eq!(cqe.user_data(), ud);
        assert_eq!(
            pool.complete_cqe(&cqe),
            Some((idx, want as i32)),
            "read at {off}"
        );
        let got = pool.get(idx).unwrap();
        let start = off as usize;
        assert_bytes_eq(
            &got[..want],
            &data[start.min(5000)..(start + want).min(5000)],
            "tail",
        );
        assert!(
            got[want..].iter().all(|&b| b == 0x77),
            "nothing written past the result"
        );
        pool.release(idx);
    }
    assert_eq!(pool.stats().misuse_total(), 0);
}

// ---------------------------------------------------------------------------------------------
// 5. Kernel errors arrive as negative CQE results
// ---------------------------------------------------------------------------------------------

/// READ_FIXED on a write-only descriptor and WRITE_FIXED on a read-only one: both submit fine and
/// complete with -EBADF; the pool accounts them like any completion and the buffers can be
/// released.
#[test]
fn kernel_errors_are_negative_results() {
    let _serial = serial();
    let dir = tmp_dir("ringshard-ebadf");
    let path = dir.path().join("f");
    std::fs::write(&path, b"some bytes").unwrap();
    let write_only = OpenOptions::new().write(true).open(&path).unwrap();
    let read_only = File::open(&path).unwrap();
    let mut ring = new_ring(8);
    let mut pool = RegisteredBufferPool::new(&mut ring, 4096, 4).unwrap();

    let (r, _) = pool.acquire().unwrap();
    let (w, buf) = pool.acquire().unwrap();
    buf[..4].copy_from_slice(b"nope");
    let ud_r = pool
        .submit_read_fixed(&mut ring, write_only.as_raw_fd(), r, 0, 10)
        .unwrap();
    let ud_w = pool
        .submit_write_fixed(&mut ring, read_only.as_raw_fd(), w, 0, 4)
        .unwrap();
    assert_eq!(pool.in_flight_count(), 2);

    let cqes = reap(&mut ring, 2);
    assert_eq!(cqes.len(), 2);
    for cqe in &cqes {
        let want = if cqe.user_data() == ud_r {
            r
        } else {
            assert_eq!(cqe.user_data(), ud_w);
            w
        };
        assert_eq!(cqe.result(), -libc::EBADF);
        assert_eq!(pool.complete_cqe(cqe), Some((want, -libc::EBADF)));
        assert!(!pool.is_in_flight(want));
    }
    let s = pool.stats();
    assert_eq!(
        (s.acquired_count, s.in_flight_count, s.available_count),
        (2, 0, 2)
    );
    pool.try_release(r).unwrap();
    pool.try_release(w).unwrap();
    assert_eq!(pool.available_count(), 4);
    assert_eq!(pool.stats().misuse_total(), 0);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"some bytes",
        "the refused write wrote nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Drop with buffers in flight
// ---------------------------------------------------------------------------------------------

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array we pass.
    let rc = unsafe { libc::pipe(fds.as_mut_ptr()) };
    assert_eq!(rc, 0, "pipe: errno {}", errno());
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Writes all of `data` to the pipe `tx` (it must fit in the pipe's buffer).
fn write_pipe(tx: &OwnedFd, data: &[u8]) {
    // SAFETY: writes `data.len()` bytes from a live slice to a pipe we own.
    let n = unsafe { libc::write(tx.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    assert_eq!(n, data.len() as isize, "write to pipe: errno {}", errno());
}

/// What the caller of `drop_with_pipe_read_pending` does before the pool is dropped.
#[derive(Clone, Copy, PartialEq)]
enum Lie {
    /// Nothing: the read is in flight by both records.
    No,
    /// Declares the read complete (`complete_in_flight`) and releases the buffer: quarantined.
    Released,
    /// The same, then takes every buffer, so the pool hands the quarantined one out again on the
    /// caller's word (its record dropped).
    Reclaimed,
}

/// A READ_FIXED on an empty pipe stays in flight; the pool is dropped (after the caller lied as
/// `lie` says); the buffer's page must still be mapped, and when data arrives the read completes
/// with the bytes written, into that still-mapped memory, without a crash.
fn drop_with_pipe_read_pending(lie: Lie) {
    let _serial = serial();
    let (rx, tx) = pipe();
    let mut ring = new_ring(8);
    let mut pool = RegisteredBufferPool::new(&mut ring, 4096, 4).unwrap();
    let (idx, buf) = pool.acquire().unwrap();
    buf.fill(0x5A);
    let addr = buf.as_ptr() as usize;
    let ud = pool
        .submit_read_fixed(&mut ring, rx.as_raw_fd(), idx, 0, 4096)
        .unwrap();
    assert!(
        !completion_within(&mut ring, Duration::from_millis(50)),
        "a read of an empty pipe must stay in flight"
    );
    assert_eq!(pool.kernel_owned_count(), 1);
    if lie == Lie::No {
        assert!(pool.is_in_flight(idx));
        assert_eq!(pool.in_flight_count(), 1);
    } else {
        // No CQE has arrived: a false completion, then a release the pool must not honour.
        pool.complete_in_flight(idx);
        pool.release(idx);
        assert!(!pool.is_in_flight(idx));
        assert_eq!(pool.in_flight_count(), 0);
        let s = pool.stats();
        assert_eq!(
            (s.available_count, s.quarantined_count),
            (4, 1),
            "quarantined, not free"
        );
    }
    if lie == Lie::Reclaimed {
        let free: Vec<u16> = (0..3).map(|_| pool.acquire().unwrap().0).collect();
        let (again, _) = pool
            .acquire()
            .expect("the quarantined buffer, on the caller's word");
        assert_eq!(again, idx);
        assert!(!pool.is_kernel_owned(idx), "its record was dropped");
        assert_eq!(pool.stats().unmatched_completions, 1);
        for j in free.into_iter().chain([again]) {
            pool.release(j);
        }
        assert_eq!(pool.available_count(), 4);
        assert_eq!(pool.kernel_owned_count(), 0);
    } else {
        assert!(pool.is_kernel_owned(idx));
        assert_eq!(pool.kernel_owned_count(), 1);
    }

    drop(pool);
    assert_eq!(
        page_mapped(addr),
        Ok(()),
        "dropping a pool with a read in flight must keep the buffer mapped"
    );

    let msg = b"late data";
    write_pipe(&tx, msg);
    let cqe = reap(&mut ring, 1).pop().unwrap();
    assert_eq!(cqe.user_data(), ud);
    assert_eq!(
        RegisteredBufferPool::buffer_index_of(cqe.user_data()),
        Some(idx)
    );
    assert_eq!(cqe.result(), msg.len() as i32);
    // SAFETY: the leaked mapping stays for the life of the process and nothing else uses it; the
    // read that wrote into it has completed.
    let landed = unsafe { std::slice::from_raw_parts(addr as *const u8, 16) };
    assert_eq!(
        &landed[..msg.len()],
        msg,
        "the late read landed in the leaked buffer"
    );
    assert!(landed[msg.len()..].iter().all(|&b| b == 0x5A));
    assert_eq!(page_mapped(addr), Ok(()));
}

/// Expected behaviour (the "Lifetime and drop" docs of `RegisteredBufferPool`): dropping the pool
/// while an operation is in flight leaks the slab on purpose, so the mapping stays and a late
/// completion lands in memory nobody else owns.
#[test]
fn drop_with_read_in_flight_keeps_buffer_mapped() {
    drop_with_pipe_read_pending(Lie::No);
}

/// The same when the caller has declared the read complete (`complete_in_flight`) before its CQE
/// and released the buffer: the pool's own record still says the kernel owns it, so the slab leaks.
#[test]
fn drop_with_kernel_owned_buffer_keeps_slab_mapped() {
    drop_with_pipe_read_pending(Lie::Released);
}

/// And when the pool has since handed the buffer out again on that word (nothing else was free),
/// so its own record of the read is gone and nothing is in flight by either record: it remembers
/// that it took a word for a CQE it never saw (`unmatched_completions`), and still leaks the slab.
#[test]
fn drop_after_taking_a_false_word_keeps_slab_mapped() {
    drop_with_pipe_read_pending(Lie::Reclaimed);
}

/// Child side of `drop_with_nothing_in_flight_unmaps`; a no-op unless RINGSHARD_CHILD=unmap.
#[test]
fn unmap_child_only() {
    if std::env::var(CHILD_ENV).as_deref() != Ok("unmap") {
        return;
    }
    let file = tempfile::tempfile_in("/tmp").unwrap();
    let mut ring = new_ring(8);
    let mut pool = RegisteredBufferPool::new(&mut ring, 4096, 4).unwrap();
    let (idx, buf) = pool.acquire().unwrap();
    buf[..3].copy_from_slice(b"abc");
    let addr = buf.as_ptr() as usize;
    pool.submit_write_fixed(&mut ring, file.as_raw_fd(), idx, 0, 3)
        .unwrap();
    let cqe = reap(&mut ring, 1).pop().unwrap();
    assert_eq!(pool.complete_cqe(&cqe), Some((idx, 3)));
    assert_eq!(pool.in_flight_count(), 0);
    assert_eq!(page_mapped(addr), Ok(()));

    drop(pool);
    assert_eq!(
        page_mapped(addr),
        Err(libc::ENOMEM),
        "dropping a pool with nothing in flight must unmap its slab"
    );
    let mut back = [0u8; 3];
    file.read_at(&mut back, 0).unwrap();
    assert_eq!(&back, b"abc");
    drop(ring);
    println!("{UNMAP_OK}");
}

const UNMAP_OK: &str = "RINGSHARD_UNMAP_CHILD_OK";

/// Contrast: with nothing in flight (after a completed write), dropping the pool unmaps the slab:
/// msync on the buffer's page fails with ENOMEM. (The ring is still alive: the kernel keeps the
/// registered pages pinned, not mapped, until it goes.) Runs this test binary again with only
/// `unmap_child_only`: in this process, the test harness starting another test's thread maps
/// that thread's stack, which could land on the range just unmapped (it did, once in a few runs).
#[test]
fn drop_with_nothing_in_flight_unmaps() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "unmap_child_only",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "unmap")
        .output()
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(UNMAP_OK) && stdout.contains("1 passed"),
        "child test failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// 7. RLIMIT_MEMLOCK as an ordinary user
// ---------------------------------------------------------------------------------------------

const CHILD_ENV: &str = "RINGSHARD_CHILD";
const CHILD_TEST: &str = "memlock_child_only";
const CHILD_OK: &str = "RINGSHARD_MEMLOCK_CHILD_OK";
const MEMLOCK: u64 = 8 << 20;

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether user nobody (not owner, not in the group) can reach and run `exe`: every ancestor
/// directory needs o+x and the file o+rx.
fn others_can_exec(exe: &Path) -> bool {
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode())
            .unwrap_or(0)
    };
    exe.ancestors().skip(1).all(|d| mode(d) & 0o001 != 0) && mode(exe) & 0o005 == 0o005
}

/// Child side of `memlock_limit_as_ordinary_user`; a no-op unless RINGSHARD_CHILD=memlock.
#[test]
fn memlock_child_only() {
    if std::env::var(CHILD_ENV).as_deref() != Ok("memlock") {
        return;
    }
    // SAFETY: getuid/getrlimit have no side effects beyond filling the struct we pass.
    let uid = unsafe { libc::getuid() };
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) },
        0
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    println!(
        "child: uid {uid}, RLIMIT_MEMLOCK {}/{}, CapEff {cap_eff:#x}",
        lim.rlim_cur, lim.rlim_max
    );
    assert_eq!(lim.rlim_cur, MEMLOCK, "the parent lowered RLIMIT_MEMLOCK");
    const CAP_IPC_LOCK: u32 = 14;
    assert_eq!(
        cap_eff & (1 << CAP_IPC_LOCK),
        0,
        "the child must run without CAP_IPC_LOCK"
    );

    let mut ring = new_ring(8);
    let err = RegisteredBufferPool::new(&mut ring, 64 * 1024, 256)
        .expect_err("16 MiB of registered buffers must not fit an 8 MiB RLIMIT_MEMLOCK");
    println!("child: 256 x 64 KiB refused: {err}");
    match &err {
        Error::Registration {
            what,
            bytes,
            errno,
            memlock_limit,
        } => {
            assert_eq!(*what, "buffers");
            assert_eq!(*bytes, 16 << 20);
            assert_eq!(*errno, libc::ENOMEM);
            assert_eq!(*memlock_limit, Some(MEMLOCK));
        }
        other => panic!("expected Error::Registration, got {other:?}"),
    }
    assert_eq!(err.errno(), Some(libc::ENOMEM));
    let msg = err.to_string();
    for needle in [
        "RLIMIT_MEMLOCK",
        "16777216",
        "8388608",
        "ulimit -l",
        "CAP_IPC_LOCK",
    ] {
        assert!(msg.contains(needle), "message lacks {needle:?}: {msg}");
    }

    // The same ring takes a pool that fits, and it works.
    let mut pool = RegisteredBufferPool::new(&mut ring, 4096, 16).expect("16 x 4 KiB fits 8 MiB");
    let file = tempfile::tempfile_in("/tmp").unwrap();
    let (idx, buf) = pool.acquire().unwrap();
    buf[..6].copy_from_slice(b"nobody");
    pool.submit_write_fixed(&mut ring, file.as_raw_fd(), idx, 0, 6)
        .unwrap();
    let cqe = reap(&mut ring, 1).pop().unwrap();
    assert_eq!(pool.complete_cqe(&cqe), Some((idx, 6)));
    pool.release(idx);
    println!("{CHILD_OK}");
}

/// As an ordinary user (nobody, with RLIMIT_MEMLOCK at 8 MiB and no CAP_IPC_LOCK) a 16 MiB pool
/// is refused with ENOMEM and a message that says why and how to fix it; a small pool works. Runs
/// this test binary again as that user, with only `memlock_child_only`.
#[test]
fn memlock_limit_as_ordinary_user() {
    let _serial = serial();
    let (Some(prlimit), Some(setpriv)) = (find_in_path("prlimit"), find_in_path("setpriv")) else {
        panic!("prlimit and setpriv are needed for this test: install util-linux (CI installs it)");
    };
    let exe = std::env::current_exe().unwrap();
    let root = is_root();
    let _copy_dir;
    let mut cmd = Command::new(prlimit);
    cmd.arg(format!("--memlock={MEMLOCK}:{MEMLOCK}"));
    let exe = if root {
        cmd.arg(setpriv)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        if others_can_exec(&exe) {
            exe
        } else {
            // nobody cannot reach the binary under target/: run a world-readable copy.
            let dir = tmp_dir("ringshard-memlock");
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let copy = dir.path().join("pool_io");
            std::fs::copy(&exe, &copy).unwrap();
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
            eprintln!(
                "{} is not reachable by nobody; running a copy at {}",
                exe.display(),
                copy.display()
            );
            _copy_dir = dir;
            copy
        }
    } else {
        eprintln!(
            "not root, so cannot switch to user nobody: running the child as this user with only \
             RLIMIT_MEMLOCK lowered to {MEMLOCK}"
        );
        exe
    };
    let out = cmd
        .arg(&exe)
        .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "memlock")
        .current_dir("/")
        .output()
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(CHILD_OK) && stdout.contains("1 passed"),
        "child test failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    if root {
        assert!(stdout.contains("child: uid 65534"), "{stdout}");
    }
}

// ---------------------------------------------------------------------------------------------
// 8. NUMA placement
// ---------------------------------------------------------------------------------------------

/// Every page of every buffer reports `node`, the pool reports it, and the buffers do real I/O.
fn check_pool_on_node(node: u32) {
    let mut ring = new_ring(8);
    let mut pool = RegisteredBufferPool::new_on_node(&mut ring, 4096, 64, node)
        .unwrap_or_else(|e| panic!("pool on node {node}: {e}"));
    assert_eq!(pool.stats().numa_node, Some(node));
    assert_eq!(pool.numa_node(), Some(node));
    let mut held = Vec::new();
    while let Some((idx, buf)) = pool.try_acquire() {
        for page in (0..buf.len()).step_by(page_size()) {
            let where_ = node_of_address(buf[page..].as_ptr()).unwrap();
            assert_eq!(
                where_, node,
                "buffer {idx} page {page} lives on node {where_}"
            );
        }
        held.push(idx);
    }
    assert_eq!(held.len(), 64);
    let file = tempfile::tempfile_in("/tmp").unwrap();
    let idx = held[63];
    pool.get_mut(idx).unwrap()[..4].copy_from_slice(b"numa");
    pool.submit_write_fixed(&mut ring, file.as_raw_fd(), idx, 0, 4)
        .unwrap();
    let cqe = reap(&mut ring, 1).pop().unwrap();
    assert_eq!(pool.complete_cqe(&cqe), Some((idx, 4)));
    for idx in held {
        pool.release(idx);
    }
    let mut back = [0u8; 4];
    file.read_at(&mut back, 0).unwrap();
    assert_eq!(&back, b"numa");
}

/// Nodes that exist here (`nodeN` directories in sysfs), in order.
fn numa_nodes() -> Vec<u32> {
    let mut nodes: Vec<u32> = std::fs::read_dir("/sys/devices/system/node")
        .map(|rd| {
            rd.filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_prefix("node")?
                    .parse()
                    .ok()
            })
            .collect()
        })
        .unwrap_or_default();
    nodes.sort_unstable();
    nodes
}

#[test]
fn numa_placement() {
    let _serial = serial();
    check_pool_on_node(0);

    let nodes = numa_nodes();
    if nodes.contains(&7) {
        eprintln!("node 7 exists here: the absent-node check is skipped");
    } else {
        let mut ring = new_ring(8);
        let e = RegisteredBufferPool::new_on_node(&mut ring, 4096, 64, 7).unwrap_err();
        assert!(matches!(e, Error::InvalidConfig(_)), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("node 7") && msg.contains("does not exist"),
            "{msg}"
        );
        let p = RegisteredBufferPool::new(&mut ring, 4096, 64).expect("ring still takes a pool");
        assert_eq!(p.total_count(), 64);
    }

    if Path::new("/sys/devices/system/node/node1").exists() {
        let last = *nodes.last().unwrap();
        check_pool_on_node(last);
    } else {
        eprintln!(
            "only one NUMA node here ({nodes:?}): the multi-node placement check needs a second \
             node"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 9. A full filesystem
// ---------------------------------------------------------------------------------------------

/// Unmounts the tmpfs when dropped, also when the test fails.
struct Unmount(CString);

impl Drop for Unmount {
    fn drop(&mut self) {
        // SAFETY: umount2 takes a valid NUL-terminated path.
        if unsafe { libc::umount2(self.0.as_ptr(), 0) } != 0 {
            // Something still holds it open: detach it so it goes when the last user does.
            // SAFETY: as above.
            unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Writes through the pool into a 64 KiB tmpfs until it is full: the failing writes complete with
/// -ENOSPC, the pool accounts those buffers like any other, and exactly the successful writes'
/// bytes are in the file.
#[test]
fn tmpfs_full_gives_enospc() {
    let _serial = serial();
    const BUF: usize = 4096;
    const DEPTH: usize = 8;
    let dir = tmp_dir("ringshard-tmpfs");
    let target = CString::new(dir.path().as_os_str().as_bytes()).unwrap();
    // SAFETY: every argument is a valid NUL-terminated string.
    let rc = unsafe {
        libc::mount(
            c"none".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"size=64k".as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = errno();
        if is_root() {
            panic!("mount tmpfs as root failed: errno {e}");
        }
        assert_eq!(e, libc::EPERM, "mount as an ordinary user");
        eprintln!("SKIP tmpfs_full_gives_enospc: mounting a tmpfs needs root (EPERM)");
        return;
    }
    let _unmount = Unmount(target);
    let path = dir.path().join("fill");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let fd = file.as_raw_fd();

    let mut ring = new_ring(16);
    let mut pool = RegisteredBufferPool::new(&mut ring, BUF, DEPTH).unwrap();
    let mut written: HashMap<u64, Vec<u8>> = HashMap::new();
    let (mut enospc, mut next_off, mut rng) = (0, 0u64, Rng(9));
    // 64 KiB fills after 16 blocks; allow a few rounds beyond that before giving up.
    for _round in 0..6 {
        let mut expect = HashMap::new();
        for _ in 0..DEPTH {
            let (idx, buf) = pool.acquire().unwrap();
            rng.fill(buf);
            let ud = pool
                .submit_write_fixed(&mut ring, fd, idx, next_off, BUF as u32)
                .unwrap();
            expect.insert(ud, (idx, next_off));
            next_off += BUF as u64;
        }
        assert_eq!(pool.in_flight_count(), DEPTH);
        for cqe in reap(&mut ring, DEPTH) {
            let (idx, off) = expect.remove(&cqe.user_data()).unwrap();
            let res = cqe.result();
            assert_eq!(pool.complete_cqe(&cqe), Some((idx, res)));
            // Completed, not yet released: still acquired, no longer in flight.
            assert!(!pool.is_in_flight(idx));
            match res {
                r if r == BUF as i32 => {
                    written.insert(off, pool.get(idx).unwrap().to_vec());
                }
                r if r == -libc::ENOSPC => enospc += 1,
                r => panic!("write at {off}: unexpected result {r}"),
            }
        }
        let s = pool.stats();
        assert_eq!(
            (s.acquired_count, s.in_flight_count, s.available_count),
            (DEPTH, 0, 0)
        );
        for idx in 0..DEPTH as u16 {
            pool.try_release(idx).unwrap();
        }
        assert_eq!(pool.available_count(), DEPTH);
        if enospc > 0 {
            break;
        }
    }

    assert!(enospc > 0, "a 64 KiB tmpfs never reported ENOSPC");
    assert!(
        !written.is_empty() && written.len() * BUF <= 64 * 1024,
        "{} blocks",
        written.len()
    );
    assert_eq!(pool.stats().misuse_total(), 0);
    let on_disk = std::fs::read(&path).unwrap();
    for (off, data) in &written {
        let off = *off as usize;
        assert_bytes_eq(&on_disk[off..off + BUF], data, &format!("block at {off}"));
    }
    println!(
        "tmpfs: {} blocks written, {enospc} writes got ENOSPC",
        written.len()
    );
    drop(file);
}

// ---------------------------------------------------------------------------------------------
// 10. A caller that breaks its promise (`complete_in_flight` before the CQE)
// ---------------------------------------------------------------------------------------------

const LIE_LEN: usize = 4096;

/// A file in a new temp dir on /tmp holding `LIE_LEN` bytes of a pattern, opened with O_DIRECT
/// (`None` where the filesystem refuses O_DIRECT), with the pattern.
fn direct_file_with_pattern(test: &str) -> Option<(tempfile::TempDir, PathBuf, File, Vec<u8>)> {
    let dir = tmp_dir("ringshard-quarantine");
    let path = dir.path().join("data");
    let file = open_direct(&path, test)?;
    let theirs = pattern(0xF11E, LIE_LEN);
    // Written through the page cache; an O_DIRECT read writes back the range before reading.
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&theirs, 0)
        .unwrap();
    Some((dir, path, file, theirs))
}

/// Every buffer of the free list, acquired (released again). (Once the free list is empty, the
/// pool would hand out a quarantined buffer on its caller's word.)
fn all_acquirable(pool: &mut RegisteredBufferPool) -> Vec<u16> {
    let mut got = Vec::new();
    let s = pool.stats();
    for _ in 0..s.available_count - s.quarantined_count {
        got.push(pool.acquire().unwrap().0);
    }
    for &j in &got {
        pool.release(j);
    }
    got
}

/// The issue "Safe to embed": a caller declares its READ_FIXED complete (`complete_in_flight`)
/// while the read still waits on an empty pipe, and releases the buffer. Another caller takes every
/// buffer the pool will give and does an O_DIRECT read, in flight together with the misused read
/// when the pipe's data arrives: it never gets the misused buffer, and gets its file's bytes, not
/// the pipe's. The misused buffer comes back to the free list only once its CQE is given to the
/// pool (before that, `acquire` would take it only with no other buffer free).
#[test]
fn lie_during_slow_read_never_gives_the_buffer_to_an_o_direct_reader() {
    let _serial = serial();
    let test = "lie_during_slow_read_never_gives_the_buffer_to_an_o_direct_reader";
    let Some((_dir, _path, file, theirs)) = direct_file_with_pattern(test) else {
        return;
    };
    let (rx, tx) = pipe();
    let mut ring = new_ring(8);
    let mut pool = RegisteredBufferPool::new(&mut ring, LIE_LEN, 2).unwrap();

    // The misbehaving caller.
    let (mine, buf) = pool.acquire().unwrap();
    buf.fill(0x11);
    let late_ud = pool
        .submit_read_fixed(&mut ring, rx.as_raw_fd(), mine, 0, LIE_LEN as u32)
        .unwrap();
    assert!(
        !completion_within(&mut ring, Duration::from_millis(50)),
        "a read of an empty pipe must stay in flight"
    );
    pool.complete_in_flight(mine); // the lie: no CQE has arrived
    pool.release(mine);
    let s = pool.stats();
    assert_eq!((s.in_flight_count, s.kernel_owned_count), (0, 1));
    assert_eq!((s.available_count, s.quarantined_count), (2, 1));
    assert_eq!(s.misuse_total(), 0);

    // The other caller takes a buffer: the free one, not the misused one (which `acquire` would
    // hand out only with no free buffer left, on the word it was given).
    let (other, buf) = pool.acquire().unwrap();
    assert_ne!(other, mine);
    buf.fill(0xEE);
    assert_eq!(pool.available_count(), 1, "only the quarantined one");
    let their_ud = pool
        .submit_read_fixed(&mut ring, file.as_raw_fd(), other, 0, LIE_LEN as u32)
        .unwrap();
    // The pipe's data arrives while both reads are in flight.
    let misused = pattern(0xBAD, LIE_LEN);
    write_pipe(&tx, &misused);
    let mut cqes = reap(&mut ring, 2);
    assert_eq!(cqes.len(), 2);
    cqes.sort_by_key(|c| c.user_data() != their_ud);
    let (theirs_cqe, late) = (&cqes[0], &cqes[1]);
    assert_eq!(
        (theirs_cqe.user_data(), late.user_data()),
        (their_ud, late_ud)
    );
    assert_eq!(late.result(), LIE_LEN as i32);
    assert_eq!(pool.complete_cqe(theirs_cqe), Some((other, LIE_LEN as i32)));
    assert_bytes_eq(
        pool.get(other).unwrap(),
        &theirs,
        "the other caller's O_DIRECT read",
    );
    pool.release(other);
    // Reaped from the ring, but not yet given to the pool: still not handed out.
    assert_eq!(all_acquirable(&mut pool), vec![other]);
    assert!(pool.is_kernel_owned(mine));

    assert_eq!(pool.complete_cqe(late), Some((mine, LIE_LEN as i32)));
    assert_eq!(pool.complete_cqe(late), None, "a repeated CQE is stale");
    let s = pool.stats();
    assert_eq!((s.kernel_owned_count, s.quarantined_count), (0, 0));
    assert_eq!((s.available_count, s.acquired_count), (2, 0));
    let mut back = all_acquirable(&mut pool);
    back.sort_unstable();
    assert_eq!(back, vec![mine.min(other), mine.max(other)]);
    // The pipe's bytes landed in the misused buffer and nowhere else.
    assert_bytes_eq(pool.get(mine).unwrap(), &misused, "the misused buffer");
    assert_bytes_eq(pool.get(other).unwrap(), &theirs, "the other buffer");
    let s = pool.stats();
    assert_eq!((s.misuse_total(), s.unmatched_completions), (0, 0));
}

/// The same through the executor: a task (`submit_to`) reads a FIFO into a buffer of its shard's
/// pool, declares the read complete before any data comes, releases the buffer and returns.
/// Another caller's O_DIRECT read on that shard must get its file's bytes, and the shard must stay
/// sound once the FIFO's data arrives (it reclaims the task's buffer by the pool's own record).
#[test]
fn task_lying_to_its_pool_cannot_corrupt_another_read() {
    let _serial = serial();
    let test = "task_lying_to_its_pool_cannot_corrupt_another_read";
    let Some((dir, path, _file, theirs)) = direct_file_with_pattern(test) else {
        return;
    };
    let fifo = dir.path().join("fifo");
    let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo: errno {}",
        errno()
    );

    let exec = ringshard::Executor::builder().shards(1).build().unwrap();
    let data = exec
        .open(&path, ringshard::OpenOptions::new().read(true).direct(true))
        .wait()
        .unwrap();
    // Read-write, so the open does not wait for a writer.
    let ff = exec
        .open(&fifo, ringshard::OpenOptions::new().read(true).write(true))
        .wait()
        .unwrap();
    let g = ff.clone();
    let total = exec
        .submit_to(ff.shard(), move |ctx| {
            let (i, _) = ctx.pool().acquire().expect("a buffer");
            ctx.push_read_fixed(&g, i, 0, LIE_LEN as u32).expect("push");
            ctx.submit().expect("submit");
            ctx.pool().complete_in_flight(i); // the lie: no CQE has arrived
            ctx.pool().release(i);
            ctx.pool().total_count()
        })
        .wait()
        .unwrap();

    // Another caller's O_DIRECT read, while the task's read still waits on the FIFO.
    let read = exec.read(&data, 0, LIE_LEN);
    std::thread::sleep(Duration::from_millis(50));
    let misused = pattern(0xBAD, LIE_LEN);
    OpenOptions::new()
        .write(true)
        .open(&fifo)
        .unwrap()
        .write_all(&misused)
        .unwrap();
    assert_bytes_eq(
        &read.wait().unwrap(),
        &theirs,
        "O_DIRECT read after the lie",
    );
    // The shard goes on, with every buffer back.
    for _ in 0..2 * total {
        assert_bytes_eq(
            &exec.read(&data, 0, LIE_LEN).wait().unwrap(),
            &theirs,
            "again",
        );
    }
    let pool = exec.stats().total.pool;
    assert_eq!(pool.misuse_total(), 0, "{pool:?}");
    assert_eq!(pool.unmatched_completions, 0, "the FIFO's CQE was matched");
    assert_eq!((pool.kernel_owned_count, pool.quarantined_count), (0, 0));
    assert_eq!(pool.available_count, total);
}

/// A task (`submit_to`) lies about its FIFO read (`complete_in_flight` before any data) and then
/// submits again on the same buffer, so the pool takes its word and drops its record of the FIFO
/// read; it releases the buffer and returns. The shard must not take that word: it waits at the
/// ring for the CQE of every SQE the task pushed through the pool before it uses the pool again.
/// A task's pooled read (the pool's only buffer, lent to it) made meanwhile holds its file's bytes
/// when the FIFO's data arrives, not the FIFO's.
#[test]
fn task_lying_then_reusing_its_buffer_cannot_reach_a_lent_one() {
    let _serial = serial();
    let test = "task_lying_then_reusing_its_buffer_cannot_reach_a_lent_one";
    let Some((dir, path, _file, theirs)) = direct_file_with_pattern(test) else {
        return;
    };
    let fifo = dir.path().join("fifo");
    let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo: errno {}",
        errno()
    );

    let exec = ringshard::Executor::builder()
        .shards(1)
        .buffer_size(LIE_LEN)
        .buffer_count(1)
        .build()
        .unwrap();
    let data = exec
        .open(&path, ringshard::OpenOptions::new().read(true).direct(true))
        .wait()
        .unwrap();
    // Read-write, so the open does not wait for a writer.
    let ff = exec
        .open(&fifo, ringshard::OpenOptions::new().read(true).write(true))
        .wait()
        .unwrap();
    let (g, d) = (ff.clone(), data.clone());
    let unmatched = exec
        .submit_to(ff.shard(), move |ctx| {
            let (i, _) = ctx.pool().acquire().expect("a buffer");
            ctx.push_read_fixed(&g, i, 0, LIE_LEN as u32).expect("push");
            ctx.submit().expect("submit");
            ctx.pool().complete_in_flight(i); // the lie: no CQE has arrived
                                              // The buffer used again: the pool takes the word and forgets the FIFO read.
            ctx.push_read_fixed(&d, i, 0, LIE_LEN as u32).expect("push");
            while ctx.reap(|_| {}) == 0 {
                ctx.submit_and_wait(1).expect("submit");
            }
            ctx.pool().release(i);
            ctx.pool().stats().unmatched_completions
        })
        .wait()
        .unwrap();
    assert_eq!(unmatched, 1);

    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
    let task = exec.spawn_on_with(data.shard(), move |l| async move {
        let buf = l.read_pooled(&data, 0, LIE_LEN).await.unwrap();
        held_tx.send(()).unwrap();
        // Wait (yielding) until the test has written the FIFO.
        while gate_rx.try_recv().is_err() {
            ringshard::yield_now().await;
        }
        buf.to_vec()
    });
    // Where the shard took the task's word, the pooled read would run now, into the buffer the
    // FIFO read still owns: give it the chance to (it cannot, where the shard waits for the FIFO
    // read's CQE first: then the read runs after the data below arrives).
    let early = held_rx.recv_timeout(Duration::from_millis(200)).is_ok();
    let misused = pattern(0xBAD, LIE_LEN);
    OpenOptions::new()
        .write(true)
        .open(&fifo)
        .unwrap()
        .write_all(&misused)
        .unwrap();
    if !early {
        held_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    }
    gate_tx.send(()).unwrap();
    assert_bytes_eq(&task.wait().unwrap(), &theirs, "the lent buffer");
    assert!(
        !early,
        "the pooled read ran while the task's FIFO read was in the kernel"
    );
    let pool = exec.stats().total.pool;
    assert_eq!(
        (pool.kernel_owned_count, pool.lent_count),
        (0, 0),
        "{pool:?}"
    );
    assert_eq!(pool.unmatched_completions, 1, "{pool:?}");
    assert_eq!(pool.misuse_total(), 0, "{pool:?}");
}
