//! Sleeping on an atomic word (Linux futex): how a caller thread waits for a shard's completion
//! without a mutex or condvar. The waiter announces itself in the word, re-checks, and sleeps only
//! while the word still holds the value it saw; the completer changes the word first and calls
//! [`wake_all`] only when it saw a waiter, so a completion nobody waits for costs no system call.

use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

/// The longest single futex sleep: longer waits loop (and re-check their deadline), so no
/// `Duration` the caller gives can overflow the kernel's timespec.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// Sleeps while `word` holds `expected`, for at most `timeout` (`None`: until woken). Returns
/// early on a wake-up, a signal, a spurious wake-up, or when the word differs already: callers
/// loop and re-check their condition.
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| {
        let t = t.min(MAX_SLEEP);
        libc::timespec {
            tv_sec: t.as_secs() as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        }
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned u32 for the whole call; FUTEX_WAIT only reads it. The
    // timespec (or null) lives on this stack frame for the call. A private futex: the word is
    // never shared with another process.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ts_ptr,
        );
    }
}

/// How long a waiter keeps looking for its result, yielding the core between looks, before it
/// sleeps. A sleep costs the waiter two context switches and the shard a futex wake; on this
/// 2-vCPU VM a wake of a sleeping thread costs several microseconds of the waker's time (9% of
/// a routed run's samples were the shard waking callers that slept after 8 yields). Measured,
/// routed 4 KiB reads, interleaved rounds: 1 shard x 1 client QD32 rose from 0.8x to 1.0x of
/// the pread pool going from ~3 µs (8 yields) to 50 µs; 200 µs was no better. Yielding, not
/// spinning: the shard often shares the waiter's core, and a pure spin (crossbeam-style) before
/// the yields halved QD1 throughput for every doubling of its length.
const LOOK_FOR: Duration = Duration::from_micros(50);

/// Calls `ready` until it returns true (then true), yielding the core between calls, for at most
/// [`LOOK_FOR`] (then false: the caller sleeps).
pub(crate) fn look(mut ready: impl FnMut() -> bool) -> bool {
    let limit = LOOK_FOR;
    let start = Instant::now();
    loop {
        if ready() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::yield_now();
    }
}

/// Wakes every thread sleeping in [`wait`] on `word`.
pub(crate) fn wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key; `word` is live for the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn wait_returns_at_once_when_word_differs() {
        let w = AtomicU32::new(1);
        let t = Instant::now();
        wait(&w, 0, Some(Duration::from_secs(5)));
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn timeout_bounds_the_wait_and_huge_timeouts_do_not_panic() {
        let w = AtomicU32::new(0);
        let t = Instant::now();
        wait(&w, 0, Some(Duration::from_millis(20)));
        assert!(t.elapsed() >= Duration::from_millis(15));
        // Duration::MAX is clamped, not overflowed; the word differs so it returns at once.
        let w1 = AtomicU32::new(1);
        wait(&w1, 0, Some(Duration::MAX));
    }

    #[test]
    fn wake_all_wakes_a_sleeper() {
        let w = Arc::new(AtomicU32::new(0));
        let w2 = Arc::clone(&w);
        let t = std::thread::spawn(move || {
            while w2.load(Ordering::Acquire) == 0 {
                wait(&w2, 0, None);
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        w.store(1, Ordering::Release);
        wake_all(&w);
        t.join().unwrap();
    }
}
