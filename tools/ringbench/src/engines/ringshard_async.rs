//! ringshard from async code: `--tasks` tokio tasks on a multi-thread runtime with `--clients`
//! worker threads, each awaiting the executor's `Completion` futures
//! (`exec.read_into(&file, off, bs, buf).await`, `exec.write(..)`, `exec.fsync(..)`) with
//! `--iodepth` requests in flight (default 1). Read buffers come back with their data and are
//! reused; writes send a copy of a template block (or, with `--verify`, the pattern), as the
//! routed engine does. Latency is measured by the tasks.

use super::ringshard_inshard::{build_executor, open_files};
use super::ringshard_routed::Pending;
use super::tokio_tasks::{self, pipeline, Plan, TaskFuture, TaskIo, TaskJob};
use super::{Output, RunCtx};
use crate::error::BenchError;
use crate::tally::lib_reason;
use crate::workload::{IoKind, Op};
use ringshard::{Executor, ExecutorStats};
use std::sync::Arc;

struct RingIo {
    exec: Arc<Executor>,
    files: Vec<ringshard::File>,
    bs: usize,
    /// What writes without --verify send.
    template: Vec<u8>,
}

impl TaskIo for RingIo {
    type Buf = Vec<u8>;
    type Pending = Pending;

    fn buffer(&self, job: &TaskJob, op: &Op, spare: &mut Vec<Vec<u8>>) -> Vec<u8> {
        match op.kind {
            IoKind::Read => spare.pop().unwrap_or_default(),
            IoKind::Write if job.w.verify => {
                let mut d = vec![0u8; self.bs];
                job.patterns[op.file].fill(&mut d, op.offset);
                d
            }
            IoKind::Write => self.template.clone(),
            IoKind::Fsync => Vec::new(),
        }
    }

    fn issue(self: &Arc<Self>, op: &Op, buf: Vec<u8>) -> Pending {
        let f = &self.files[op.file];
        match op.kind {
            IoKind::Read => Pending::Read(self.exec.read_into(f, op.offset, self.bs, buf)),
            IoKind::Write => Pending::Write(self.exec.write(f, op.offset, buf)),
            IoKind::Fsync => Pending::Sync(self.exec.fsync(f)),
        }
    }

    fn is_done(p: &Pending) -> bool {
        p.is_done()
    }

    fn result(
        out: ringshard::Result<(usize, Option<Vec<u8>>)>,
    ) -> (Option<Vec<u8>>, Result<usize, String>) {
        match out {
            Ok((n, data)) => (data, Ok(n)),
            Err(e) => (None, Err(lib_reason(&e))),
        }
    }
}

pub fn run(ctx: &RunCtx) -> Result<Output, BenchError> {
    let w = ctx.w;
    let buffers = w.tasks.saturating_mul(w.iodepth).clamp(64, 16_384);
    let exec = Arc::new(build_executor(ctx, buffers)?);
    let files = match open_files(&exec, ctx) {
        Ok(f) => f,
        Err(e) => {
            let _ = exec.shutdown();
            return Err(e);
        }
    };
    let mut template = vec![0u8; w.bs];
    if let Some(p) = ctx.patterns().first() {
        p.fill(&mut template, 0);
    }
    let io = Arc::new(RingIo {
        exec: Arc::clone(&exec),
        files,
        bs: w.bs,
        template,
    });
    let plan = Plan::new(ctx, 1, w.iodepth);
    let notes = vec![
        "each task awaits Executor::read_into / write / fsync (a Completion is a Future)"
            .to_string(),
    ];
    let out = tokio_tasks::run(ctx, &plan, notes, |job| -> TaskFuture {
        Box::pin(pipeline(Arc::clone(&io), job))
    });
    let stats = exec.stats();
    let _ = exec.shutdown();
    let mut out = out?;
    out.library = Some(ExecutorStats::from_shards(stats.shards, out.elapsed));
    Ok(out)
}
