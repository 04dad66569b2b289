//! ringshard from async code: `--tasks` tokio tasks on a multi-thread runtime with `--clients`
//! worker threads, each with `--iodepth` requests in flight (default 1). With `--api session`
//! (the default) each task owns a `Session` and awaits `Session::next`; with `--api completion`
//! it awaits the file's `Completion` futures (`file.read_into(off, bs, buf).await`,
//! `file.write_at(..)`, `file.sync_all()`). Read buffers come back with their data and are
//! reused; writes send a copy of a template block (or, with `--verify`, the pattern), as the
//! routed engine does. Latency is measured by the tasks.

use super::ringshard_inshard::start_with_files;
use super::ringshard_routed::Pending;
use super::tokio_tasks::{
    self, first_or, pace_timer, pace_wait, pipeline, record, Plan, TaskFuture, TaskIo, TaskJob,
};
use super::{DoneGuard, Output, RunCtx};
use crate::error::BenchError;
use crate::tally::{lib_reason, Tally, Times};
use crate::workload::{Api, IoKind, Next, Op};
use ringshard::{Executor, ExecutorStats};
use std::sync::Arc;
use std::time::Instant;

/// ringshard's file API as a [`TaskIo`]: `File::read_into` / `write_at` / `sync_all`. (Cached
/// reads run on the task's own thread; on a file's own shard, in a shard task, the rest skip the
/// channel.)
pub struct RingIo {
    exec: Arc<Executor>,
    files: Vec<ringshard::File>,
    bs: usize,
    /// What writes without --verify send.
    template: Vec<u8>,
}

impl RingIo {
    /// Requests of `--bs` on `files`; unverified writes send a block of the first file's pattern.
    pub fn new(ctx: &RunCtx, exec: Arc<Executor>, files: Vec<ringshard::File>) -> Self {
        let mut template = vec![0u8; ctx.w.bs];
        if let Some(p) = ctx.patterns().first() {
            p.fill(&mut template, 0);
        }
        RingIo {
            exec,
            files,
            bs: ctx.w.bs,
            template,
        }
    }
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
            IoKind::Fsync | IoKind::Fdatasync => Vec::new(),
        }
    }

    fn issue(self: &Arc<Self>, op: &Op, buf: Vec<u8>) -> Pending {
        let f = &self.files[op.file];
        match op.kind {
            IoKind::Read => Pending::Read(f.read_into(op.offset, self.bs, buf)),
            IoKind::Write => Pending::Write(f.write_at(op.offset, buf)),
            IoKind::Fsync => Pending::Sync(f.sync_all()),
            IoKind::Fdatasync => Pending::Sync(f.sync_data()),
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
    let (exec, files) = start_with_files(ctx, buffers)?;
    let io = Arc::new(RingIo::new(ctx, Arc::clone(&exec), files));
    let plan = Plan::new(ctx, 1, w.iodepth);
    let api = w.api;
    let note = match api {
        Api::Session => "each task owns a Session (capacity --iodepth) and awaits Session::next",
        Api::Completion => {
            "each task awaits File::read_into / write_at / sync_all (a Completion is a Future)"
        }
    };
    let mut at_ramp_end = None;
    let out = tokio_tasks::run(
        ctx,
        &plan,
        vec![note.to_string()],
        |job| -> TaskFuture {
            match api {
                Api::Session => Box::pin(session_task(Arc::clone(&io), job)),
                Api::Completion => Box::pin(pipeline(Arc::clone(&io), job)),
            }
        },
        &mut || {
            if w.ramp.is_some() {
                at_ramp_end = Some(exec.stats());
            }
        },
    );
    let mut stats = exec.stats();
    let _ = exec.shutdown();
    if let Some(before) = &at_ramp_end {
        stats = stats.since(before);
    }
    let mut out = out?;
    out.library = Some(ExecutorStats::from_shards(stats.shards, out.elapsed));
    Ok(out)
}

/// A task with its own `Session`: keeps `job.depth` requests in flight (slot i = token i),
/// awaits whatever completes, and refills.
async fn session_task(io: Arc<RingIo>, job: TaskJob) -> Tally {
    let _done = DoneGuard(&job.control);
    let mut tally = Tally::default();
    let mut gen = job.gen();
    let mut session = match io.exec.session_with_capacity(job.depth) {
        Ok(s) => s,
        Err(e) => {
            tally.fail(IoKind::Read, &job.paths[0], 0, &lib_reason(&e));
            return tally;
        }
    };
    let mut slots: Vec<Option<super::Sent>> = vec![None; job.depth];
    let mut free: Vec<usize> = (0..job.depth).rev().collect();
    let mut spare: Vec<Vec<u8>> = Vec::with_capacity(job.depth);
    let mut done = Vec::with_capacity(job.depth);
    loop {
        let mut waiting = None;
        if !job.control.stopped() {
            while let Some(slot) = free.pop() {
                let (op, start) = match gen.next() {
                    Next::Go(op, start) => (op, start),
                    Next::Wait(at) => {
                        waiting = Some(at);
                        free.push(slot);
                        break;
                    }
                    Next::Done => {
                        free.push(slot);
                        break;
                    }
                };
                let buf = io.buffer(&job, &op, &mut spare);
                let f = &io.files[op.file];
                let token = slot as u64;
                let t0 = Instant::now();
                let sent = match op.kind {
                    IoKind::Read => session.read(f, op.offset, io.bs, buf, token),
                    IoKind::Write => session.write(f, op.offset, buf, token),
                    IoKind::Fsync => session.fsync(f, token),
                    IoKind::Fdatasync => session.fdatasync(f, token),
                };
                if sent.is_err() {
                    free.push(slot);
                    break;
                }
                slots[slot] = Some((op, t0, Instant::now(), start));
            }
        }
        if session.in_flight() == 0 {
            match waiting {
                None => break,
                Some(at) => {
                    pace_wait(at).await;
                    continue;
                }
            }
        }
        // Open loop with a free slot: no longer than until the next start (then refill).
        match waiting {
            None => {
                session.next(&mut done).await;
            }
            Some(at) => {
                let mut next = Box::pin(session.next(&mut done));
                let _ = first_or(&mut next, pace_timer(at)).await;
            }
        }
        let now = Instant::now();
        for d in done.drain(..) {
            let slot = d.token as usize;
            let Some((op, t0, issued, start)) = slots.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            free.push(slot);
            let r = d.result.map_err(|e| lib_reason(&e));
            // Only a read's data is checked; every buffer is reused.
            let data: &[u8] = if op.kind == IoKind::Read { &d.buf } else { &[] };
            let times = Times::new(start, t0, issued, now);
            record(&job, &mut gen, &mut tally, op, r, data, times);
            super::keep_spare(&mut spare, Some(d.buf), job.depth);
        }
    }
    tally
}
