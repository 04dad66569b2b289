//! The shard threads of executors dropped without [`Executor::shutdown`]: dropping never blocks
//! (the thread that drops may be an async runtime's worker or a shard), so the shards finish
//! stopping by themselves, and the process waits for them when it exits, so that work a caller
//! queued and never waited for (a write sent and forgotten) is done before the process ends.
//!
//! [`Executor::shutdown`]: crate::Executor::shutdown

use std::sync::{Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Shard threads still stopping, each with how long its executor lets in-flight work run
/// (`shutdown_timeout`).
static STOPPING: Mutex<Vec<(JoinHandle<()>, Duration)>> = Mutex::new(Vec::new());
static AT_EXIT: Once = Once::new();

/// Beyond a shard's `shutdown_timeout`, how long the exit waits for it to close its files and
/// end (a shard stuck in a system call that never returns must not hold the process forever):
/// a second more than the shard itself waits for ops the kernel does not end when cancelled
/// (`shard::ABANDON_AFTER`, a second after the grace period).
const EXIT_SLACK: Duration = Duration::from_secs(2);

/// Keeps `threads` (a dropped executor's shards, told to stop) to be waited for at exit.
pub(crate) fn adopt(threads: Vec<JoinHandle<()>>, grace: Duration) {
    if threads.is_empty() {
        return;
    }
    AT_EXIT.call_once(|| {
        // SAFETY: `wait_at_exit` is an `extern "C" fn()` that never unwinds (it cannot panic:
        // no indexing, no unwrap, a poisoned lock is taken as is) and stays valid for the
        // process's life. If registration fails the threads are simply not waited for.
        unsafe { libc::atexit(wait_at_exit) };
    });
    let mut stopping = STOPPING.lock().unwrap_or_else(|p| p.into_inner());
    // Those already ended need no wait: their handles go (a long-lived process that makes and
    // drops executors keeps this list short).
    stopping.retain(|(t, _)| !t.is_finished());
    stopping.extend(threads.into_iter().map(|t| (t, grace)));
}

/// Run by `exit` (after `main` returns, or `std::process::exit`): waits for each adopted shard
/// thread to end, for at most its `shutdown_timeout` plus [`EXIT_SLACK`] from the exit's start.
extern "C" fn wait_at_exit() {
    let stopping = std::mem::take(&mut *STOPPING.lock().unwrap_or_else(|p| p.into_inner()));
    let start = Instant::now();
    for (thread, grace) in stopping {
        let limit = grace.saturating_add(EXIT_SLACK);
        while !thread.is_finished() && start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(1));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}
