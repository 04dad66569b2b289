//! ringshard through its public request API: `--clients` caller threads, each keeping `--iodepth`
//! requests in flight. With the session API (the default), each client owns a `Session`: requests
//! carry a token, buffers travel with them, and the client takes whatever has completed. With the
//! per-request API, each refill is an `Executor::batch` (one message per shard), and the client
//! waits on the oldest `Completion` and takes every other one already done. Latency is measured by
//! the callers.

use super::ringshard_inshard::{build_executor, open_files};
use super::{DoneGuard, Output, RunCtx};
use crate::control::Control;
use crate::error::BenchError;
use crate::pace::{self, Wait};
use crate::pattern::Pattern;
use crate::tally::{Tally, Times};
use crate::workload::{Api, IoKind, Next, Op, OpGen, Submitter};
use ringshard::{Completion, Error, Executor, ExecutorStats};
use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Barrier;
use std::task::{Context, Poll};
use std::time::Instant;

/// One request in flight: the caller threads wait on it, the async engine's tasks await it.
pub enum Pending {
    Read(Completion<Vec<u8>>),
    Write(Completion<usize>),
    Sync(Completion<()>),
}

impl Pending {
    pub fn is_done(&self) -> bool {
        match self {
            Pending::Read(c) => c.is_done(),
            Pending::Write(c) => c.is_done(),
            Pending::Sync(c) => c.is_done(),
        }
    }

    /// Waits; the bytes transferred (reads: the data) or the error.
    fn wait(self) -> ringshard::Result<(usize, Option<Vec<u8>>)> {
        match self {
            Pending::Read(c) => c.wait().map(|d| (d.len(), Some(d))),
            Pending::Write(c) => c.wait().map(|n| (n, None)),
            Pending::Sync(c) => c.wait().map(|()| (0, None)),
        }
    }

    /// Waits up to `d`; None if the request is still running.
    fn wait_timeout(
        &mut self,
        d: std::time::Duration,
    ) -> Option<ringshard::Result<(usize, Option<Vec<u8>>)>> {
        let r = match self {
            Pending::Read(c) => c.wait_timeout(d).map(|d| (d.len(), Some(d))),
            Pending::Write(c) => c.wait_timeout(d).map(|n| (n, None)),
            Pending::Sync(c) => c.wait_timeout(d).map(|()| (0, None)),
        };
        match r {
            Err(Error::Timeout) => None,
            r => Some(r),
        }
    }
}

impl Future for Pending {
    /// As [`Pending::wait`] returns it.
    type Output = ringshard::Result<(usize, Option<Vec<u8>>)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Pending::Read(c) => Pin::new(c).poll(cx).map_ok(|d| (d.len(), Some(d))),
            Pending::Write(c) => Pin::new(c).poll(cx).map_ok(|n| (n, None)),
            Pending::Sync(c) => Pin::new(c).poll(cx).map_ok(|()| (0, None)),
        }
    }
}

struct InFlight {
    pending: Pending,
    op: Op,
    /// Just before the batch was submitted, and when `submit` returned.
    t0: Instant,
    issued: Instant,
    start: Option<Instant>,
}

pub fn run(ctx: &RunCtx) -> Result<Output, BenchError> {
    let api = ctx.w.api;
    let w = ctx.w;
    let buffers = (w.clients * w.iodepth).clamp(64, 16_384);
    let exec = build_executor(ctx, buffers)?;
    let files = open_files(&exec, ctx)?;
    let subs = ctx.submitters();
    let control = Control::new(subs.len());
    let paths: Vec<PathBuf> = ctx.files.iter().map(|f| f.path.clone()).collect();
    let patterns = ctx.patterns();
    let barrier = Barrier::new(subs.len() + 1);

    let resident = ctx.warm()?;
    let (tallies, elapsed, cpu, at_ramp_end) = std::thread::scope(|scope| {
        let handles: Vec<_> = subs
            .iter()
            .map(|s| {
                let c = Client {
                    exec: &exec,
                    files: &files,
                    paths: &paths,
                    patterns: &patterns,
                    control: &control,
                    sub: s,
                    submitters: subs.len(),
                };
                let barrier = &barrier;
                std::thread::Builder::new()
                    .name(format!("ringbench-client-{}", s.index))
                    .spawn_scoped(scope, move || {
                        barrier.wait();
                        match api {
                            Api::Session => c.run_session(ctx),
                            Api::Completion => c.run(ctx),
                        }
                    })
                    .expect("spawning a client thread")
            })
            .collect();
        let mut at_ramp_end = None;
        let (elapsed, cpu) =
            control.measure_phase(&barrier, subs.len(), w.duration, ctx.progress, &mut || {
                if w.ramp.is_some() {
                    at_ramp_end = Some(exec.stats());
                }
            });
        let tallies: Vec<_> = handles
            .into_iter()
            .zip(&subs)
            .map(|(h, s)| {
                let t = h.join().unwrap_or_default();
                (Some(s.index), None, None, t)
            })
            .collect();
        (tallies, elapsed, cpu, at_ramp_end)
    });
    let (tallies, elapsed, cpu, at_ramp_end) = (tallies, elapsed, cpu, at_ramp_end);
    let mut stats = exec.stats();
    let _ = exec.shutdown();
    if let Some(before) = &at_ramp_end {
        stats = stats.since(before);
    }
    let mut out = Output::from_tallies("client", tallies, elapsed, cpu, resident, Vec::new());
    out.library = Some(ExecutorStats::from_shards(stats.shards, elapsed));
    Ok(out)
}

struct Client<'a> {
    exec: &'a Executor,
    files: &'a [ringshard::File],
    paths: &'a [PathBuf],
    patterns: &'a [Pattern],
    control: &'a Control,
    sub: &'a Submitter,
    submitters: usize,
}

impl Client<'_> {
    fn run(&self, ctx: &RunCtx) -> Tally {
        let _done = DoneGuard(self.control);
        let w = ctx.w;
        let bs = w.bs;
        let mut gen = OpGen::for_submitter(w, self.sub, self.submitters);
        let mut tally = Tally::default();
        let mut template = vec![0u8; bs];
        self.patterns[0].fill(&mut template, 0);
        let mut q: VecDeque<InFlight> = VecDeque::with_capacity(w.iodepth);
        let mut added: Vec<(Pending, Op, Option<Instant>)> = Vec::with_capacity(w.iodepth);
        // Read buffers come back with their data and are reused (Executor::read_into).
        let mut spare: Vec<Vec<u8>> = Vec::with_capacity(w.iodepth);
        if gen.paced() {
            pace::precise_timers();
        }
        loop {
            let mut waiting = None;
            if !self.control.stopped() && q.len() < w.iodepth {
                let mut batch = self.exec.batch();
                while q.len() + added.len() < w.iodepth {
                    let (op, start) = match gen.next() {
                        Next::Go(op, start) => (op, start),
                        Next::Wait(at) => {
                            waiting = Some(at);
                            break;
                        }
                        Next::Done => break,
                    };
                    let f = &self.files[op.file];
                    let p = match op.kind {
                        IoKind::Read => {
                            let buf = spare.pop().unwrap_or_default();
                            Pending::Read(batch.read_into(f, op.offset, bs, buf))
                        }
                        IoKind::Write => {
                            let data = if w.verify {
                                let mut d = vec![0u8; bs];
                                self.patterns[op.file].fill(&mut d, op.offset);
                                d
                            } else {
                                template.clone()
                            };
                            Pending::Write(batch.write(f, op.offset, data))
                        }
                        IoKind::Fsync => Pending::Sync(batch.fsync(f)),
                        // A batch has no fdatasync: sent on its own (after the batch's writes,
                        // which are sent first below).
                        IoKind::Fdatasync => Pending::Sync(Completion::ready(Ok(()))),
                    };
                    added.push((p, op, start));
                }
                let t0 = Instant::now();
                batch.submit();
                let issued = Instant::now();
                q.extend(added.drain(..).map(|(mut pending, op, start)| {
                    if op.kind == IoKind::Fdatasync {
                        pending = Pending::Sync(self.exec.fdatasync(&self.files[op.file]));
                    }
                    InFlight {
                        pending,
                        op,
                        t0,
                        issued,
                        start,
                    }
                }));
            }
            let Some(mut first) = q.pop_front() else {
                match waiting {
                    None => break,
                    Some(at) => {
                        pace::sleep_until(at.min(Instant::now() + pace::MAX_BLOCK));
                        continue;
                    }
                }
            };
            // Open loop with a free slot: wait for the oldest no longer than until shortly
            // before the next start.
            let r = match waiting.map(|at| pace::wait_for(at, Instant::now(), pace::wake_window()))
            {
                None => Some(
                    first
                        .pending
                        .wait_timeout(std::time::Duration::MAX)
                        .unwrap_or(Err(Error::Timeout)),
                ),
                Some(Wait::Block(d)) => first.pending.wait_timeout(d),
                Some(Wait::Poll) => first
                    .pending
                    .is_done()
                    .then(|| first.pending.wait_timeout(std::time::Duration::ZERO))
                    .flatten(),
            };
            let Some(r) = r else {
                q.push_front(first);
                continue;
            };
            let now = Instant::now();
            let (mut ops, mut bytes) = (0, 0);
            let times = Times::new(first.start, first.t0, first.issued, now);
            spare.extend(self.finish(&mut tally, &mut gen, first.op, times, r, w.verify, bs));
            (ops, bytes) = count(first.op, ops, bytes, bs);
            while q.front().is_some_and(|f| f.pending.is_done()) {
                let Some(f) = q.pop_front() else { break };
                let r = f.pending.wait();
                let times = Times::new(f.start, f.t0, f.issued, now);
                spare.extend(self.finish(&mut tally, &mut gen, f.op, times, r, w.verify, bs));
                (ops, bytes) = count(f.op, ops, bytes, bs);
            }
            self.control.add(self.sub.index, ops, bytes);
        }
        tally
    }

    /// The session loop: fill every free slot, flush, take whatever completed, repeat.
    fn run_session(&self, ctx: &RunCtx) -> Tally {
        let _done = DoneGuard(self.control);
        let w = ctx.w;
        let bs = w.bs;
        let mut gen = OpGen::for_submitter(w, self.sub, self.submitters);
        let mut tally = Tally::default();
        let mut session = match self.exec.session_with_capacity(w.iodepth) {
            Ok(s) => s,
            Err(e) => {
                tally.fail(IoKind::Read, &self.paths[0], 0, &e.to_string());
                return tally;
            }
        };
        let mut template = vec![0u8; bs];
        self.patterns[0].fill(&mut template, 0);
        // Slot i holds the op whose token is i; buffers come back with results and are reused.
        let mut slots: Vec<Option<super::Sent>> = vec![None; w.iodepth];
        let mut free: Vec<usize> = (0..w.iodepth).rev().collect();
        let mut spare: Vec<Vec<u8>> = Vec::with_capacity(w.iodepth);
        let mut done = Vec::with_capacity(w.iodepth);
        if gen.paced() {
            pace::precise_timers();
        }
        loop {
            let mut waiting = None;
            if !self.control.stopped() {
                let t0 = Instant::now();
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
                    let issue = if start.is_some() { Instant::now() } else { t0 };
                    let f = &self.files[op.file];
                    let token = slot as u64;
                    let submitted = match op.kind {
                        IoKind::Read => {
                            let buf = spare.pop().unwrap_or_default();
                            session.read(f, op.offset, bs, buf, token)
                        }
                        IoKind::Write => {
                            let mut data = spare.pop().unwrap_or_default();
                            data.clear();
                            if w.verify {
                                data.resize(bs, 0);
                                self.patterns[op.file].fill(&mut data, op.offset);
                            } else {
                                data.extend_from_slice(&template);
                            }
                            session.write(f, op.offset, data, token)
                        }
                        IoKind::Fsync => session.fsync(f, token),
                        IoKind::Fdatasync => session.fdatasync(f, token),
                    };
                    // The session holds `iodepth` requests, as many as there are slots.
                    if submitted.is_ok() {
                        slots[slot] = Some((op, issue, Instant::now(), start));
                    } else {
                        free.push(slot);
                        break;
                    }
                }
            }
            if session.in_flight() == 0 && waiting.is_none() {
                break;
            }
            // Open loop with a free slot: wait no longer than until shortly before the next
            // start, then poll.
            let r = match waiting.map(|at| pace::wait_for(at, Instant::now(), pace::wake_window()))
            {
                None => session.wait(1, &mut done),
                Some(Wait::Block(d)) => session.wait_timeout(1, d, &mut done),
                Some(Wait::Poll) => {
                    session.flush();
                    Ok(session.reap(&mut done))
                }
            };
            if let Err(e) = r {
                tally.fail(IoKind::Read, &self.paths[0], 0, &e.to_string());
                break;
            }
            let now = Instant::now();
            let (mut ops, mut bytes) = (0, 0);
            for d in done.drain(..) {
                let slot = d.token as usize;
                let Some((op, t0, issued, start)) = slots.get_mut(slot).and_then(Option::take)
                else {
                    continue;
                };
                free.push(slot);
                let r = match (op.kind, d.result) {
                    (IoKind::Read, Ok(n)) => Ok((n, Some(d.buf))),
                    (_, Ok(n)) => {
                        super::keep_spare(&mut spare, Some(d.buf), w.iodepth);
                        Ok((n, None))
                    }
                    (_, Err(e)) => Err(e),
                };
                let times = Times::new(start, t0, issued, now);
                let back = self.finish(&mut tally, &mut gen, op, times, r, w.verify, bs);
                super::keep_spare(&mut spare, back, w.iodepth);
                (ops, bytes) = count(op, ops, bytes, bs);
            }
            self.control.add(self.sub.index, ops, bytes);
        }
        tally
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        tally: &mut Tally,
        gen: &mut OpGen,
        op: Op,
        times: Times,
        r: ringshard::Result<(usize, Option<Vec<u8>>)>,
        verify: bool,
        bs: usize,
    ) -> Option<Vec<u8>> {
        let path = &self.paths[op.file];
        match r {
            Err(e) => {
                tally.fail(op.kind, path, op.offset, &crate::tally::lib_reason(&e));
                None
            }
            Ok((n, _)) if !op.kind.is_sync() && n != bs => {
                let what = format!("short transfer ({n} of {bs} bytes)");
                tally.fail(op.kind, path, op.offset, &what);
                None
            }
            Ok((n, data)) => {
                if let (true, Some(d)) = (verify, &data) {
                    tally.checks.verified += 1;
                    if let Some(m) = self.patterns[op.file].check(d, op.offset) {
                        tally.checks.mismatch(path, m);
                    }
                }
                tally.ok(op.kind, n as u64, times);
                gen.write_done(&op);
                // The read's buffer goes back to the client for its next read.
                data
            }
        }
    }
}

fn count(op: Op, ops: u64, bytes: u64, bs: usize) -> (u64, u64) {
    if op.kind.is_sync() {
        (ops, bytes)
    } else {
        (ops + 1, bytes + bs as u64)
    }
}
