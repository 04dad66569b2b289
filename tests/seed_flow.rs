//! The flow documented by the seed API's reference page (the `RegisteredBufferPool` this crate's
//! pool grew from), followed exactly: `new`, `acquire`, submit with `submit_write_fixed` /
//! `submit_read_fixed`, `mark_in_flight` "after submitting", `complete_in_flight(idx)` "when the
//! CQE arrives", then `get`, `get_mut` and `release`; and every error case that page documents.
//!
//! Each test uses a real ring (`IoUring::new`, whatever `RINGSHARD_BACKEND` says) and a real temp
//! file, reaps its completions from the ring itself as a user of that page does, and never gives a
//! CQE to the pool (`complete_cqe` is this crate's addition, not the page's). The pool is believed
//! when it is told a CQE arrived: the buffer is readable, writable and released as the page says,
//! and released buffers come back, however many rounds there are.

use io_uring::{cqueue, IoUring};
use ringshard::{Error, RegisteredBufferPool};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// Submits what is queued, waits for one completion and takes it from the ring (the caller reaps
/// its own completions, as with the seed API).
fn wait_cqe(ring: &mut IoUring) -> cqueue::Entry {
    ring.submit_and_wait(1).expect("io_uring_enter");
    ring.completion().next().expect("a completion")
}

/// 4 KiB of bytes that differ from round to round.
fn pattern(round: usize) -> Vec<u8> {
    (0..4096).map(|i| (i * 31 + round * 7 + 1) as u8).collect()
}

/// The page's example, call for call: a 256 x 64 KiB pool, "hello" written through a buffer, and
/// the buffer released after the completion (`complete_in_flight` when the CQE arrives, as
/// `mark_in_flight`'s doc says). The buffer is available again: nothing is counted as misuse and
/// nothing is left in flight. (Without its CQE the pool keeps it after the free buffers, as
/// `quarantined_count` shows: a detail of this crate, not of the page's contract.)
#[test]
fn the_pages_example() {
    let mut ring = IoUring::new(32).expect("io_uring");
    let file = tempfile::tempfile().unwrap();
    let fd = file.as_raw_fd();

    let mut pool = RegisteredBufferPool::new(&mut ring, 64 * 1024, 256).expect("pool");

    // Acquire a buffer
    let (idx, buf) = pool.acquire().expect("acquire");
    buf[..5].copy_from_slice(b"hello");

    // Use the buffer for I/O
    let user_data = pool
        .submit_write_fixed(&mut ring, fd, idx, 0, 5)
        .expect("submit_write_fixed");
    let cqe = wait_cqe(&mut ring);
    assert_eq!(cqe.user_data(), user_data);
    assert_eq!(cqe.result(), 5);
    pool.complete_in_flight(idx);

    // After completion, release the buffer
    pool.release(idx);

    let mut on_disk = [0u8; 8];
    assert_eq!(file.read_at(&mut on_disk, 0).unwrap(), 5);
    assert_eq!(&on_disk[..5], b"hello");
    let s = pool.stats();
    assert_eq!((s.available_count, s.acquired_count), (256, 0), "{s:?}");
    assert_eq!(s.in_flight_count, 0, "{s:?}");
    assert_eq!(s.misuse_total(), 0, "{s:?}");
    assert_eq!(pool.available_count(), 256);
    assert_eq!(pool.acquired_count(), 0);
    assert!(!pool.is_exhausted());
}

/// Writes through every buffer, then reads everything back, three times as many rounds as the pool
/// has buffers, each round exactly as documented: acquire, fill (`get_mut`), submit, the CQE,
/// `complete_in_flight`, `get` / `get_mut`, `release`. Buffers released this way are handed out
/// again (the pool never runs dry), the data read back is the data written, and the pool ends
/// with every buffer free and no misuse counted.
#[test]
fn write_then_read_back_through_every_buffer_as_documented() {
    const COUNT: usize = 4;
    const ROUNDS: usize = 3 * COUNT;
    let mut ring = IoUring::new(8).expect("io_uring");
    let file = tempfile::tempfile().unwrap();
    let fd = file.as_raw_fd();
    let mut pool = RegisteredBufferPool::new(&mut ring, 4096, COUNT).expect("pool");
    let mut used = std::collections::HashSet::new();

    for round in 0..ROUNDS {
        let off = (round * 4096) as u64;
        let (idx, _) = pool.acquire().expect("the pool never runs dry");
        used.insert(idx);
        pool.get_mut(idx)
            .expect("an acquired buffer")
            .copy_from_slice(&pattern(round));
        let ud = pool
            .submit_write_fixed(&mut ring, fd, idx, off, 4096)
            .expect("submit_write_fixed");
        let cqe = wait_cqe(&mut ring);
        assert_eq!((cqe.user_data(), cqe.result()), (ud, 4096), "write {round}");
        pool.complete_in_flight(idx);
        assert!(!pool.is_in_flight(idx));
        assert_eq!(pool.get(idx).expect("after its CQE"), &pattern(round)[..]);
        pool.release(idx);
    }
    assert_eq!(used.len(), COUNT, "every buffer was used");

    for round in 0..ROUNDS {
        let off = (round * 4096) as u64;
        let (idx, _) = pool.acquire().expect("the pool never runs dry");
        // Poison it first: the read must put the file's bytes there.
        pool.get_mut(idx).expect("an acquired buffer").fill(0xEE);
        let ud = pool
            .submit_read_fixed(&mut ring, fd, idx, off, 4096)
            .expect("submit_read_fixed");
        let cqe = wait_cqe(&mut ring);
        assert_eq!((cqe.user_data(), cqe.result()), (ud, 4096), "read {round}");
        pool.complete_in_flight(idx);
        assert_eq!(pool.get(idx).expect("after its CQE"), &pattern(round)[..]);
        // The caller's buffer is the caller's again: it may write into it.
        let data = pool.get_mut(idx).expect("after its CQE");
        data[0] ^= 0xFF;
        let first = data[0];
        assert_eq!(pool.get(idx).unwrap()[0], first);
        pool.release(idx);
    }

    let s = pool.stats();
    assert_eq!((s.available_count, s.acquired_count), (COUNT, 0), "{s:?}");
    assert_eq!(s.in_flight_count, 0, "{s:?}");
    assert_eq!(s.acquisitions, 2 * ROUNDS as u64, "{s:?}");
    assert_eq!((s.exhaustions, s.misuse_total()), (0, 0), "{s:?}");
}

/// `mark_in_flight`'s doc says "call this after submitting a read/write operation that uses this
/// buffer", then `complete_in_flight` when the CQE arrives. For a `submit_*` the pool has already
/// recorded the operation: that mark is the same operation, not a second one, and one
/// `complete_in_flight` ends it.
#[test]
fn mark_in_flight_after_submitting_as_the_page_says() {
    const COUNT: usize = 2;
    let mut ring = IoUring::new(8).expect("io_uring");
    let file = tempfile::tempfile().unwrap();
    let fd = file.as_raw_fd();
    let mut pool = RegisteredBufferPool::new(&mut ring, 4096, COUNT).expect("pool");

    for round in 0..3 * COUNT {
        let off = (round * 4096) as u64;
        let (idx, buf) = pool.acquire().expect("the pool never runs dry");
        buf.copy_from_slice(&pattern(round));
        pool.submit_write_fixed(&mut ring, fd, idx, off, 4096)
            .expect("submit_write_fixed");
        pool.mark_in_flight(idx);
        assert!(pool.is_in_flight(idx));
        assert_eq!(pool.in_flight_count(), 1);
        assert_eq!(wait_cqe(&mut ring).result(), 4096);
        pool.complete_in_flight(idx);
        assert!(!pool.is_in_flight(idx), "round {round}");
        pool.get_mut(idx).expect("after its CQE").fill(0);
        pool.submit_read_fixed(&mut ring, fd, idx, off, 4096)
            .expect("submit_read_fixed");
        pool.mark_in_flight(idx);
        assert_eq!(wait_cqe(&mut ring).result(), 4096);
        pool.complete_in_flight(idx);
        assert_eq!(pool.get(idx).expect("after its CQE"), &pattern(round)[..]);
        pool.release(idx);
    }
    let s = pool.stats();
    assert_eq!((s.available_count, s.in_flight_count), (COUNT, 0), "{s:?}");
    assert_eq!(s.misuse_total(), 0, "{s:?}");
}

/// `new`: "Returns an error if buffer registration fails." A ring takes one set of buffers: a
/// second pool on it is refused by the kernel (EBUSY), with the advice in the message.
#[test]
fn new_errors_when_registration_fails() {
    let mut ring = IoUring::new(8).expect("io_uring");
    let _pool = RegisteredBufferPool::new(&mut ring, 4096, 2).expect("pool");
    let e = RegisteredBufferPool::new(&mut ring, 4096, 2).unwrap_err();
    assert!(matches!(e, Error::Registration { .. }), "{e:?}");
    assert_eq!(e.errno(), Some(libc::EBUSY), "{e}");
}

/// `acquire`: "Returns an error if no buffers are available"; `try_acquire`: "Returns None if no
/// buffers are available." `is_exhausted` says so. A buffer released after its CQE (the documented
/// flow) is available again.
#[test]
fn acquire_errors_when_no_buffer_is_available() {
    let mut ring = IoUring::new(8).expect("io_uring");
    let file = tempfile::tempfile().unwrap();
    let mut pool = RegisteredBufferPool::new(&mut ring, 4096, 2).expect("pool");
    let (a, _) = pool.acquire().unwrap();
    let (b, _) = pool.try_acquire().expect("a second buffer");
    assert!(pool.is_exhausted());
    assert!(matches!(
        pool.acquire(),
        Err(Error::PoolExhausted { total: 2 })
    ));
    assert!(pool.try_acquire().is_none());

    pool.submit_write_fixed(&mut ring, file.as_raw_fd(), a, 0, 4096)
        .unwrap();
    assert_eq!(wait_cqe(&mut ring).result(), 4096);
    pool.complete_in_flight(a);
    pool.release(a);
    assert_eq!(pool.available_count(), 1);
    let (again, _) = pool.acquire().expect("the released buffer");
    assert_eq!(again, a);
    assert_eq!(pool.stats().exhaustions, 2);
    pool.release(again);
    pool.release(b);
    assert_eq!(pool.available_count(), 2);
}

/// `get` / `get_mut`: "Returns an error if the index is invalid."
#[test]
fn get_errors_for_an_invalid_index() {
    let mut ring = IoUring::new(8).expect("io_uring");
    let mut pool = RegisteredBufferPool::new(&mut ring, 4096, 2).expect("pool");
    assert!(matches!(
        pool.get(2),
        Err(Error::InvalidIndex { index: 2, total: 2 })
    ));
    assert!(matches!(
        pool.get_mut(u16::MAX),
        Err(Error::InvalidIndex { .. })
    ));
}

/// `submit_read_fixed` / `submit_write_fixed`: "Returns an error if the submission queue is full."
/// Nothing is recorded for the refused one; the others complete as documented.
#[test]
fn submit_errors_when_the_submission_queue_is_full() {
    let mut ring = IoUring::new(2).expect("io_uring");
    let file = tempfile::tempfile().unwrap();
    let fd = file.as_raw_fd();
    let mut pool = RegisteredBufferPool::new(&mut ring, 4096, 3).expect("pool");
    let idx: Vec<u16> = (0..3).map(|_| pool.acquire().unwrap().0).collect();
    pool.submit_write_fixed(&mut ring, fd, idx[0], 0, 4096)
        .unwrap();
    pool.submit_write_fixed(&mut ring, fd, idx[1], 4096, 4096)
        .unwrap();
    assert!(matches!(
        pool.submit_read_fixed(&mut ring, fd, idx[2], 0, 4096),
        Err(Error::SubmissionQueueFull)
    ));
    assert!(!pool.is_in_flight(idx[2]));
    ring.submit_and_wait(2).unwrap();
    let cqes: Vec<cqueue::Entry> = ring.completion().collect();
    assert_eq!(cqes.len(), 2);
    for cqe in &cqes {
        assert_eq!(cqe.result(), 4096);
        let i = RegisteredBufferPool::buffer_index_of(cqe.user_data()).expect("a pool operation");
        pool.complete_in_flight(i);
    }
    for &i in &idx {
        pool.release(i);
    }
    let s = pool.stats();
    assert_eq!((s.available_count, s.in_flight_count), (3, 0), "{s:?}");
    assert_eq!(s.misuse_total(), 0, "{s:?}");
}

/// `release`: "Panics in debug builds if the buffer index is invalid".
#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "invalid buffer index")]
fn release_of_an_invalid_index_panics_in_debug_builds() {
    let mut ring = IoUring::new(8).expect("io_uring");
    let mut pool = RegisteredBufferPool::new(&mut ring, 4096, 2).expect("pool");
    pool.release(2);
}

/// `release`: "Panics in debug builds if ... the buffer is still in-flight" (submitted, its CQE not
/// arrived: here not even submitted to the kernel).
#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "in flight")]
fn release_in_flight_panics_in_debug_builds() {
    let mut ring = IoUring::new(8).expect("io_uring");
    let file = tempfile::tempfile().unwrap();
    let mut pool = RegisteredBufferPool::new(&mut ring, 4096, 2).expect("pool");
    let (idx, _) = pool.acquire().unwrap();
    pool.submit_write_fixed(&mut ring, file.as_raw_fd(), idx, 0, 4096)
        .unwrap();
    pool.release(idx);
}

/// Release builds: the same two misuses are refused (the in-flight buffer stays out of the free
/// list) and counted.
#[cfg(not(debug_assertions))]
#[test]
fn release_misuse_is_refused_and_counted_in_release_builds() {
    let mut ring = IoUring::new(8).expect("io_uring");
    let file = tempfile::tempfile().unwrap();
    let mut pool = RegisteredBufferPool::new(&mut ring, 4096, 2).expect("pool");
    pool.release(2);
    let (idx, _) = pool.acquire().unwrap();
    pool.submit_write_fixed(&mut ring, file.as_raw_fd(), idx, 0, 4096)
        .unwrap();
    pool.release(idx);
    assert_eq!(
        pool.available_count(),
        1,
        "an in-flight buffer is never freed"
    );
    let s = pool.stats();
    assert_eq!((s.misuse_invalid_index, s.misuse_release_in_flight), (1, 1));
    assert_eq!(wait_cqe(&mut ring).result(), 4096);
    pool.complete_in_flight(idx);
    pool.release(idx);
    assert_eq!(pool.available_count(), 2);
}
