//! The do-it-yourself version of ringshard's inline reads, in tokio: each task calls
//! `preadv2(.., RWF_NOWAIT)` itself, and only what would block (a page-cache miss, or part of
//! the data) goes to `tokio::task::spawn_blocking(pread)`. Writes, fsyncs and O_DIRECT reads go
//! to `spawn_blocking` too (see [`spawn_blocking`](super::spawn_blocking)). A hit is a future
//! that is ready at once: like a plain tokio loop around a system call, the task does not yield
//! to the runtime for it.
//!
//! `--mode async`: `--tasks` tasks on `--clients` workers. Routed and in-shard: one task per
//! submitter (client or shard), `--iodepth` operations in flight each, on one worker per CPU of
//! the placement.

use super::spawn_blocking::BlockingIo;
use super::tokio_tasks::{self, pipeline, Plan, TaskFuture, TaskIo, TaskJob};
use super::{Output, RunCtx};
use crate::buf::AlignedBuf;
use crate::error::BenchError;
use crate::workload::{IoKind, Op};
use std::future::Future;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::task::{JoinError, JoinHandle};

/// [`BlockingIo`] with the inline attempt in front of reads.
pub struct NowaitIo {
    blocking: Arc<BlockingIo>,
    direct: bool,
}

/// The result of a blocking-pool call, or of an inline hit.
type Out = Result<(AlignedBuf, std::io::Result<usize>), JoinError>;

/// An operation: done inline (ready at the first poll), or on the blocking pool.
pub enum NowaitPending {
    Ready(Option<(AlignedBuf, std::io::Result<usize>)>),
    Blocking(JoinHandle<(AlignedBuf, std::io::Result<usize>)>),
}

impl Future for NowaitPending {
    type Output = Out;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Out> {
        match self.get_mut() {
            NowaitPending::Ready(r) => match r.take() {
                Some(v) => Poll::Ready(Ok(v)),
                None => Poll::Pending, // polled after completion: never again ready
            },
            NowaitPending::Blocking(h) => Pin::new(h).poll(cx),
        }
    }
}

impl TaskIo for NowaitIo {
    type Buf = AlignedBuf;
    type Pending = NowaitPending;

    fn buffer(&self, job: &TaskJob, op: &Op, spare: &mut Vec<AlignedBuf>) -> AlignedBuf {
        self.blocking.buffer(job, op, spare)
    }

    fn issue(self: &Arc<Self>, op: &Op, mut b: AlignedBuf) -> NowaitPending {
        if op.kind == IoKind::Read && !self.direct {
            let fd = self.blocking.file(op.file).as_raw_fd();
            let want = b.len();
            let mut got = 0usize;
            loop {
                let iov = libc::iovec {
                    iov_base: b[got..].as_mut_ptr().cast(),
                    iov_len: want - got,
                };
                // SAFETY: `iov` names the unfilled tail of `b`, which this call alone uses.
                let n = unsafe {
                    libc::preadv2(
                        fd,
                        &iov,
                        1,
                        (op.offset + got as u64) as i64,
                        libc::RWF_NOWAIT,
                    )
                };
                if n > 0 {
                    got += n as usize;
                    if got < want {
                        continue;
                    }
                }
                if n >= 0 {
                    return NowaitPending::Ready(Some((b, Ok(got))));
                }
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                break; // EAGAIN (or anything else): the blocking pool does the whole read
            }
        }
        NowaitPending::Blocking(self.blocking.issue(op, b))
    }

    fn is_done(p: &NowaitPending) -> bool {
        match p {
            NowaitPending::Ready(r) => r.is_some(),
            NowaitPending::Blocking(h) => h.is_finished(),
        }
    }

    fn result(out: Out) -> (Option<AlignedBuf>, Result<usize, String>) {
        <BlockingIo as TaskIo>::result(out)
    }
}

pub fn run(ctx: &RunCtx) -> Result<Output, BenchError> {
    let io = Arc::new(NowaitIo {
        blocking: BlockingIo::new(ctx)?,
        direct: ctx.w.direct,
    });
    let plan = Plan::new(ctx, 1, ctx.w.iodepth);
    let note = "preadv2(RWF_NOWAIT) on the task; spawn_blocking(read_at/write_at/fsync) for \
                misses, writes, syncs and O_DIRECT"
        .to_string();
    tokio_tasks::run(
        ctx,
        &plan,
        vec![note],
        |job| -> TaskFuture { Box::pin(pipeline(Arc::clone(&io), job)) },
        &mut || {},
    )
}
