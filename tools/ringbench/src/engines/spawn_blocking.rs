//! What async code does when tokio::fs is too slow: `tokio::task::spawn_blocking` around
//! `pread` / `pwrite` / `fsync` on a shared `std::fs::File`, awaited by the task, with a
//! page-aligned buffer that travels with the call (so `--direct` works). tokio's blocking pool has
//! its default size.
//!
//! The `spawn-blocking` engine (any mode) and `tokio-fs --tokio-api read-at` run this through
//! [`pipeline`](super::tokio_tasks::pipeline).

use super::tokio_tasks::{TaskIo, TaskJob};
use super::RunCtx;
use crate::buf::AlignedBuf;
use crate::error::BenchError;
use crate::pattern::Pattern;
use crate::tally::io_reason;
use crate::workload::{IoKind, Op};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use tokio::task::{JoinError, JoinHandle};

pub struct BlockingIo {
    files: Vec<std::fs::File>,
    bs: usize,
    /// What a new buffer holds for writes without --verify (they write whatever it holds).
    fill: Option<Pattern>,
}

impl BlockingIo {
    pub fn new(ctx: &RunCtx) -> Result<Arc<Self>, BenchError> {
        let w = ctx.w;
        Ok(Arc::new(BlockingIo {
            files: ctx.open_std()?,
            bs: w.bs,
            fill: (w.rw.writes() && !w.verify)
                .then(|| ctx.patterns().first().copied())
                .flatten(),
        }))
    }
}

impl BlockingIo {
    /// The open file at position `i` of the run's file list.
    pub fn file(&self, i: usize) -> &std::fs::File {
        &self.files[i]
    }

    /// [`TaskIo::issue`] on a shared handle (for engines that wrap this one).
    pub fn issue(
        self: &Arc<Self>,
        op: &Op,
        b: AlignedBuf,
    ) -> JoinHandle<(AlignedBuf, std::io::Result<usize>)> {
        <Self as TaskIo>::issue(self, op, b)
    }

    /// [`TaskIo::buffer`] (for engines that wrap this one).
    pub fn buffer(&self, job: &TaskJob, op: &Op, spare: &mut Vec<AlignedBuf>) -> AlignedBuf {
        <Self as TaskIo>::buffer(self, job, op, spare)
    }
}

impl TaskIo for BlockingIo {
    type Buf = AlignedBuf;
    type Pending = JoinHandle<(AlignedBuf, std::io::Result<usize>)>;

    fn buffer(&self, job: &TaskJob, op: &Op, spare: &mut Vec<AlignedBuf>) -> AlignedBuf {
        let mut b = spare.pop().unwrap_or_else(|| {
            let mut b = AlignedBuf::new(self.bs);
            if let Some(p) = self.fill {
                p.fill(&mut b, 0);
            }
            b
        });
        if op.kind == IoKind::Write && job.w.verify {
            job.patterns[op.file].fill(&mut b, op.offset);
        }
        b
    }

    fn issue(self: &Arc<Self>, op: &Op, mut b: AlignedBuf) -> Self::Pending {
        let (io, op) = (Arc::clone(self), *op);
        tokio::task::spawn_blocking(move || {
            let f = &io.files[op.file];
            let r = match op.kind {
                IoKind::Read => f.read_at(&mut b, op.offset),
                IoKind::Write => f.write_at(&b, op.offset),
                IoKind::Fsync => f.sync_all().map(|()| 0),
                IoKind::Fdatasync => f.sync_data().map(|()| 0),
            };
            (b, r)
        })
    }

    fn is_done(p: &Self::Pending) -> bool {
        p.is_finished()
    }

    fn result(
        out: Result<(AlignedBuf, std::io::Result<usize>), JoinError>,
    ) -> (Option<AlignedBuf>, Result<usize, String>) {
        match out {
            Ok((b, r)) => (Some(b), r.map_err(|e| io_reason(&e))),
            Err(e) => (None, Err(format!("blocking task: {e}"))),
        }
    }
}
