//! Stopping a shard: once the loop returns (shutdown) or panics, everything still queued for it
//! is failed (Shutdown, or ShardFailed after a panic), its stats are kept for `Executor::stats`,
//! and `Drop for Shard` fails what never finished and leaks what the kernel may still touch,
//! before the ring closes.

use super::ops::{DataPath, Op};
use super::runner::Shard;
use super::task_queues;
use super::{IoOp, ShardShared};
use crate::completion::{set_abandon_reason, AbandonReason, Completer};
use crate::error::Error;
use std::sync::atomic::Ordering as AtomicOrdering;

/// After the loop: the shard stops (`panicked`: it panicked). Runs on the shard thread.
pub(super) fn stop(mut shard: Shard, shared: &ShardShared, index: usize, panicked: bool) {
    if panicked {
        // First of all: from now on the shard is dead, and its files are read by nobody (not even
        // inline on callers' threads) before any handle is told so.
        shard.files.retire_all();
        shared.dead.store(true, AtomicOrdering::Release);
        set_abandon_reason(AbandonReason::ShardPanicked);
        DEATH_NOTICES.with(|n| n.borrow_mut().clear());
    }
    // Tasks still runnable are dropped here, on their thread (their handles report it); from now
    // on a task woken on this thread is dropped at once.
    let unhandled = task_queues::shutdown_here();
    if !panicked {
        // Kept for `Executor::stats` after shutdown.
        shard.stats.pool = shard.pool.stats();
        shard.stats.note_pipes();
        if let Ok(mut last) = shared.final_stats.lock() {
            *last = Some(shard.stats.clone());
        }
    }
    let error = if panicked {
        // Everything still pending on this shard fails with ShardFailed; new work is refused at
        // the door. The ring is dropped before the pool, and the pool keeps its memory mapped
        // if the kernel may still write into it.
        shared.dead.store(true, AtomicOrdering::Release);
        set_abandon_reason(AbandonReason::ShardPanicked);
        shard.panicked = true;
        Error::ShardFailed {
            shard: index,
            reason: "the shard thread panicked; this operation did not complete".into(),
        }
    } else {
        set_abandon_reason(AbandonReason::Shutdown);
        Error::Shutdown
    };
    // Whatever is still queued for this shard is failed, including what callers put in between
    // their checks and their send: see `ShardLink::send`. (Messages sent on this thread that
    // the loop did not handle are left only by a panic: a clean stop waits for them.)
    shared.exited.store(true, AtomicOrdering::SeqCst);
    // Per-shard state (`Sharded`) is dropped here, on its own thread, after the tasks that
    // used it; what its drops send to this shard is refused or failed below like the rest.
    super::local_values::drop_here();
    for msg in unhandled {
        shard.shutdown_waiters.extend(msg.fail(&error));
    }
    loop {
        while let Ok(msg) = shard.rx.try_recv() {
            shard.shutdown_waiters.extend(msg.fail(&error));
        }
        if shared.sending.load(AtomicOrdering::SeqCst) == 0 && shard.rx.is_empty() {
            break;
        }
        std::thread::yield_now();
    }
    let waiters = std::mem::take(&mut shard.shutdown_waiters);
    drop(shard);
    for w in waiters {
        w.complete(Ok(()));
    }
}

thread_local! {
    /// Completers to fail once this shard thread has died (`kill_shard_for_tests`).
    static DEATH_NOTICES: std::cell::RefCell<Vec<Completer<()>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Keeps `done` until this shard thread is marked dead, then drops it (failing its handle with
/// ShardFailed). Called on a shard thread about to panic.
pub(crate) fn notify_death(done: Completer<()>) {
    let _ = DEATH_NOTICES.try_with(|n| n.borrow_mut().push(done));
}

impl Drop for Shard {
    fn drop(&mut self) {
        // Fail what never ran or never finished (handles and sessions are told why), and close
        // every file. Memory the kernel may still read or write (the memory path of an op in
        // flight) is leaked, not freed: the ring is closed only after this.
        let error = if self.panicked {
            Error::ShardFailed {
                shard: self.cfg.index,
                reason: "the shard thread panicked; this operation did not complete".into(),
            }
        } else {
            Error::Shutdown
        };
        self.abandon_task_reads(&error);
        for op in self.ops.drain() {
            let Op {
                mut io,
                reply,
                mut out,
                outstanding,
                data_path,
                mut pending,
                fixed,
                ..
            } = op;
            if outstanding == 0 {
                // Nothing of it in the kernel: its pool buffers (a `FileOp`'s) come back. An op
                // still in the kernel keeps them marked in flight: the pool leaks its slab.
                self.return_fixed(fixed);
            }
            if outstanding > 0 {
                // It may still change the file: the inode's reads keep going to the shard (a
                // dead one fails them), never inline past a write that is still landing.
                std::mem::forget(pending.take());
            }
            let in_kernel = outstanding > 0 && data_path == DataPath::Memory;
            if in_kernel {
                // The kernel may still write into a read's vector or read a write's data: leak
                // them (the handle gets no buffer back).
                std::mem::forget(out);
                match &mut io {
                    IoOp::Write { data, .. } => std::mem::forget(std::mem::take(data)),
                    // Before `fail` completes it: what its completion would hand back.
                    IoOp::File(f) => f.abandon_memory(),
                    _ => {}
                }
            } else if let IoOp::Read { buf, .. } = &mut io {
                // What was read so far goes back as the caller's buffer.
                *buf = std::mem::take(&mut out);
            }
            io.fail(reply, error.clone(), &mut self.sessions);
            if in_kernel {
                if let IoOp::File(f) = io {
                    // The kernel may still read or write the memory its SQE names (paths, a
                    // statx buffer, iovecs and buffers), all owned by the op: leak it.
                    std::mem::forget(f);
                }
            }
        }
        for req in std::mem::take(&mut self.backlog) {
            req.fail(error.clone(), &mut self.sessions);
        }
        self.sessions.deliver();
        self.tasks.clear();
        // Sleepers wake (their tasks are dropped: the shard has stopped). The timeouts' memory is
        // copied by the kernel when it takes the SQE; the timespecs go with the ring anyway.
        for (t, _) in self.timers.drain(..).flatten() {
            t.fire();
        }
        for t in self
            .parked_timers
            .drain(..)
            .chain(self.new_timers.drain(..))
        {
            t.fire();
        }
        // The pool is unmapped after this body: guards of lent buffers read nothing from now on.
        task_queues::set_pool_alive(false);
    }
}
