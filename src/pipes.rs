//! Pipes for `send_file`'s splices (file -> pipe -> socket), one pool per shard thread.
//!
//! A pipe is the kernel's buffer between the two splices: its size bounds a round (more bytes
//! per round, fewer SQEs), and its pages count against the user's pipe budget, which the kernel
//! enforces per user, across processes: `/proc/sys/fs/pipe-max-size` caps one pipe (an
//! unprivileged `F_SETPIPE_SZ` above it fails with EPERM), and once the user's pipes hold more
//! than `/proc/sys/fs/pipe-user-pages-soft` pages every new pipe gets 2 pages and resizing fails
//! (EPERM). So a pool asks for [`PIPE_WANT`] per pipe, never more than `pipe-max-size`, and
//! never more than half the soft budget for all its pipes together ([`plan_size`]); when the
//! kernel still refuses a size it halves it down to the pipe's default, and counts the pipe as
//! [`shrunk`](PoolStats::shrunk) (a smaller pipe only means more, smaller rounds).
//!
//! The pool is the shard thread's own (a thread-local: only that thread's ops take and give
//! pipes, so no lock), keeps at most [`MAX_IDLE`] idle pipes, and takes back only pipes that are
//! empty: an op ended with bytes still in its pipe (an error, a cancellation, a deadline) closes
//! it, so no later send ever starts with another's bytes.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The size a pool asks for each pipe: 256 KiB, 64 pages (the default pipe is 64 KiB).
pub(crate) const PIPE_WANT: usize = 256 * 1024;
/// Idle pipes a pool keeps at most (the rest are closed when given back).
pub(crate) const MAX_IDLE: usize = 4;
const PAGE: usize = 4096;
/// The size of a pipe the kernel made without being asked (16 pages).
const DEFAULT_SIZE: usize = 16 * PAGE;

/// Pages held by the pipes of every pool in the process (asked sizes), for the soft budget.
static PAGES_HELD: AtomicUsize = AtomicUsize::new(0);

/// The kernel's pipe limits, read once per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PipeLimits {
    /// `pipe-max-size`, in bytes.
    pub max_size: usize,
    /// `pipe-user-pages-soft`, in pages (0: no limit).
    pub soft_pages: usize,
}

impl PipeLimits {
    fn read() -> PipeLimits {
        let num = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
        };
        PipeLimits {
            // The kernel's defaults where /proc cannot say.
            max_size: num("/proc/sys/fs/pipe-max-size").unwrap_or(1 << 20),
            soft_pages: num("/proc/sys/fs/pipe-user-pages-soft").unwrap_or(16384),
        }
    }

    /// This process's view (read at first use).
    pub(crate) fn get() -> PipeLimits {
        static LIMITS: OnceLock<PipeLimits> = OnceLock::new();
        *LIMITS.get_or_init(PipeLimits::read)
    }
}

/// The size to ask for a new pipe (`None`: keep the kernel's default), given `want` bytes, the
/// limits and the pages the process's pipes hold already: a power-of-two number of pages, at
/// most `pipe-max-size`, and with all pipes together within half of `pipe-user-pages-soft` (the
/// other half is left to the rest of the user's programs). Below the default size, the default.
pub(crate) fn plan_size(want: usize, limits: PipeLimits, pages_held: usize) -> Option<usize> {
    let mut size = want.clamp(PAGE, 1 << 30).next_power_of_two();
    while size > limits.max_size.max(PAGE) {
        size /= 2;
    }
    if limits.soft_pages > 0 {
        let budget = limits.soft_pages / 2;
        while size > PAGE && pages_held + size / PAGE > budget {
            size /= 2;
        }
    }
    (size > DEFAULT_SIZE).then_some(size)
}

/// One pipe: its read and write ends and its capacity in bytes.
#[derive(Debug)]
pub(crate) struct Pipe {
    pub(crate) read: OwnedFd,
    pub(crate) write: OwnedFd,
    /// What `F_GETPIPE_SZ` says it holds.
    pub(crate) cap: usize,
    /// Pages counted in [`PAGES_HELD`] for it.
    pages: usize,
}

impl Drop for Pipe {
    fn drop(&mut self) {
        PAGES_HELD.fetch_sub(self.pages, Ordering::Relaxed);
    }
}

/// What a pool did, for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PoolStats {
    /// Pipes made.
    pub made: u64,
    /// Pipes taken from the idle list.
    pub reused: u64,
    /// Pipes made smaller than [`PIPE_WANT`] (the limits, or the kernel refused the size).
    pub shrunk: u64,
    /// Pipes closed because they were given back with bytes in them.
    pub dirty: u64,
    /// send_file rounds sent inline (sendfile(2) on the shard thread: the range was cached).
    pub inline_rounds: u64,
    /// send_file rounds that could have gone inline but for a range not all in the page cache
    /// (they went through a pipe).
    pub uncached_rounds: u64,
}

#[derive(Default)]
struct Pool {
    idle: Vec<Pipe>,
    stats: PoolStats,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// A pipe from this thread's pool (an idle one, else a new one sized by [`plan_size`]), or the
/// errno of `pipe2` (EMFILE, ENFILE).
pub(crate) fn take() -> Result<Pipe, i32> {
    if let Some(p) = POOL.with(|p| {
        let mut p = p.borrow_mut();
        let pipe = p.idle.pop();
        if pipe.is_some() {
            p.stats.reused += 1;
        }
        pipe
    }) {
        return Ok(p);
    }
    let plan = plan_size(
        PIPE_WANT,
        PipeLimits::get(),
        PAGES_HELD.load(Ordering::Relaxed),
    );
    let pipe = make(plan)?;
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        p.stats.made += 1;
        if pipe.cap < PIPE_WANT {
            p.stats.shrunk += 1;
        }
    });
    Ok(pipe)
}

/// Gives `pipe` back: kept if `empty` and the pool has room, else closed. A pipe that may
/// hold bytes is never kept.
///
/// An op dropped while the thread's locals are being torn down (a leaked op table freed at
/// thread exit) finds no pool: its pipe is closed.
pub(crate) fn give(pipe: Pipe, empty: bool) {
    let mut pipe = Some(pipe);
    let _ = POOL.try_with(|p| {
        let mut p = p.borrow_mut();
        if !empty {
            p.stats.dirty += 1;
        } else if p.idle.len() < MAX_IDLE {
            p.idle.extend(pipe.take());
        }
    });
    drop(pipe);
}

/// Counts a send_file round that went inline (`true`) or found its range not all cached.
pub(crate) fn note_send_file_round(inline: bool) {
    let _ = POOL.try_with(|p| {
        let mut p = p.borrow_mut();
        if inline {
            p.stats.inline_rounds += 1;
        } else {
            p.stats.uncached_rounds += 1;
        }
    });
}

/// This thread's pool's counters.
pub(crate) fn stats() -> PoolStats {
    POOL.with(|p| p.borrow().stats)
}

/// A new pipe (close-on-exec), resized to `size` when given; a refused size is halved down to
/// the default.
fn make(size: Option<usize>) -> Result<Pipe, i32> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(crate::numa::last_errno());
    }
    // SAFETY: two fresh descriptors nobody else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut ask = size.unwrap_or(0);
    while ask > DEFAULT_SIZE {
        // SAFETY: fcntl(F_SETPIPE_SZ) takes no memory.
        if unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, ask as libc::c_int) } >= 0 {
            break;
        }
        ask /= 2; // EPERM (over a limit), EBUSY, ENOMEM: a smaller pipe
    }
    // SAFETY: fcntl(F_GETPIPE_SZ) takes no memory.
    let cap = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
    let cap = if cap > 0 { cap as usize } else { DEFAULT_SIZE };
    let pages = cap / PAGE;
    PAGES_HELD.fetch_add(pages, Ordering::Relaxed);
    Ok(Pipe {
        read,
        write,
        cap,
        pages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PipeLimits = PipeLimits {
        max_size: 1 << 20,
        soft_pages: 16384,
    };

    #[test]
    fn plans_within_max_size_and_half_the_soft_budget() {
        assert_eq!(plan_size(256 * 1024, LIMITS, 0), Some(256 * 1024));
        // Not a power of two: rounded up (the kernel rounds to one too).
        assert_eq!(plan_size(300 * 1024, LIMITS, 0), Some(512 * 1024));
        // pipe-max-size caps it.
        let small_max = PipeLimits {
            max_size: 128 * 1024,
            ..LIMITS
        };
        assert_eq!(plan_size(1 << 20, small_max, 0), Some(128 * 1024));
        // A forced small soft limit (the fallback): 64 pages, half for us, 20 held already.
        let low = PipeLimits {
            max_size: 1 << 20,
            soft_pages: 64,
        };
        assert_eq!(plan_size(1 << 20, low, 0), Some(128 * 1024));
        assert_eq!(plan_size(1 << 20, low, 20), None); // 12 pages left: the default pipe
        assert_eq!(plan_size(1 << 20, low, 40), None);
        // No soft limit (0): only the max size.
        let none = PipeLimits {
            soft_pages: 0,
            ..LIMITS
        };
        assert_eq!(plan_size(1 << 20, none, 1 << 30), Some(1 << 20));
        // The default or less: keep the default.
        assert_eq!(plan_size(4096, LIMITS, 0), None);
    }

    #[test]
    fn a_refused_size_falls_back_to_a_smaller_pipe() {
        let max = PipeLimits::get().max_size;
        // Far above pipe-max-size: refused (EPERM) unless privileged (CAP_SYS_RESOURCE), then
        // halved until the kernel takes it; never above what was asked.
        let p = make(Some(max.saturating_mul(4))).expect("pipe");
        assert!(
            p.cap >= DEFAULT_SIZE && p.cap <= max.saturating_mul(4),
            "{}",
            p.cap
        );
        let p = make(None).expect("pipe");
        assert_eq!(p.cap, DEFAULT_SIZE);
    }

    #[test]
    fn only_empty_pipes_are_kept() {
        let a = take().expect("pipe");
        let before = stats();
        give(a, false);
        assert_eq!(stats().dirty, before.dirty + 1);
        let b = take().expect("pipe");
        assert_eq!(stats().reused, before.reused, "a dirty pipe was reused");
        give(b, true);
        let _c = take().expect("pipe");
        assert_eq!(stats().reused, before.reused + 1);
    }
}
