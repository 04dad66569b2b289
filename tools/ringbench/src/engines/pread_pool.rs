//! The thread-pool baseline: worker threads doing pread/pwrite/fsync, fed by one crossbeam
//! channel. Submitter threads keep `--iodepth` requests each in flight and get results back on
//! their own channel; buffers travel with the requests (no allocation per operation).
//!
//! Workers: one per CPU of the placement (pinned like shards), or `--pool-threads`. In-shard
//! runs have one submitter per shard, so "one shard" compares with "one worker thread doing pread,
//! one caller submitting".

use super::{pin, DoneGuard, Output, RunCtx};
use crate::buf::AlignedBuf;
use crate::control::Control;
use crate::error::BenchError;
use crate::pace::{self, Wait};
use crate::pattern::Pattern;
use crate::tally::{errno_reason, Tally, Times};
use crate::workload::{IoKind, Next, Op, OpGen, Submitter};
use crossbeam_channel::RecvTimeoutError;
use crossbeam_channel::{Receiver, Sender};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Barrier;
use std::time::Instant;

struct Req {
    op: Op,
    slot: usize,
    buf: AlignedBuf,
    reply: usize,
}

struct Resp {
    slot: usize,
    buf: AlignedBuf,
    /// Bytes transferred, or the errno.
    result: Result<usize, i32>,
}

pub fn run(ctx: &RunCtx) -> Result<Output, BenchError> {
    let w = ctx.w;
    let subs = ctx.submitters();
    let workers = w.pool_threads.unwrap_or(ctx.cpus.len()).max(1);
    let files = ctx.open_std()?;
    let paths: Vec<PathBuf> = ctx.files.iter().map(|f| f.path.clone()).collect();
    let patterns = ctx.patterns();
    let control = Control::new(ctx.cpus.len().max(w.clients));
    let (req_tx, req_rx) = crossbeam_channel::bounded::<Req>(subs.len() * w.iodepth);
    let replies: Vec<(Sender<Resp>, Receiver<Resp>)> = subs
        .iter()
        .map(|_| crossbeam_channel::bounded(w.iodepth))
        .collect();
    let reply_tx: Vec<Sender<Resp>> = replies.iter().map(|(t, _)| t.clone()).collect();
    let barrier = Barrier::new(subs.len() + 1);

    let resident = ctx.warm()?;
    let (tallies, elapsed, cpu) = std::thread::scope(|scope| {
        for i in 0..workers {
            let (rx, tx, files) = (req_rx.clone(), reply_tx.clone(), &files);
            let (cpu, _) = ctx.cpu_of(i);
            std::thread::Builder::new()
                .name(format!("pread-pool-{i}"))
                .spawn_scoped(scope, move || {
                    pin(cpu);
                    worker(rx, tx, files)
                })
                .expect("spawning a pool worker");
        }
        drop(req_rx);
        drop(reply_tx);
        let handles: Vec<_> = subs
            .iter()
            .zip(replies)
            .enumerate()
            .map(|(k, (s, (_, rx)))| {
                let sub = SubmitterThread {
                    sub: s,
                    submitters: subs.len(),
                    reply: k,
                    tx: req_tx.clone(),
                    rx,
                    paths: &paths,
                    patterns: &patterns,
                    control: &control,
                    verify: w.verify,
                };
                let barrier = &barrier;
                std::thread::Builder::new()
                    .name(format!("pread-submit-{}", s.index))
                    .spawn_scoped(scope, move || {
                        barrier.wait();
                        sub.run(ctx)
                    })
                    .expect("spawning a submitter")
            })
            .collect();
        drop(req_tx);
        let (elapsed, cpu) =
            control.measure_phase(&barrier, subs.len(), w.duration, ctx.progress, &mut || {});
        let tallies: Vec<_> = handles
            .into_iter()
            .zip(&subs)
            .map(|(h, s)| (Some(s.index), None, None, h.join().unwrap_or_default()))
            .collect();
        // Submitters are gone, so the request channel closes and the workers return.
        (tallies, elapsed, cpu)
    });
    let notes = vec![format!(
        "{workers} pool worker thread(s) pinned to CPU(s) {}; {} submitter thread(s) unpinned",
        (0..workers)
            .map(|i| ctx.cpu_of(i).0.to_string())
            .collect::<Vec<_>>()
            .join(","),
        subs.len()
    )];
    Ok(Output::from_tallies(
        "submitter",
        tallies,
        elapsed,
        cpu,
        resident,
        notes,
    ))
}

fn worker(rx: Receiver<Req>, replies: Vec<Sender<Resp>>, files: &[File]) {
    while let Ok(mut req) = rx.recv() {
        let f = &files[req.op.file];
        let r = match req.op.kind {
            IoKind::Read => f.read_at(&mut req.buf, req.op.offset),
            IoKind::Write => f.write_at(&req.buf, req.op.offset),
            IoKind::Fsync => f.sync_all().map(|()| 0),
            IoKind::Fdatasync => f.sync_data().map(|()| 0),
        };
        let result = r.map_err(|e| e.raw_os_error().unwrap_or(libc::EIO));
        let _ = replies[req.reply].send(Resp {
            slot: req.slot,
            buf: req.buf,
            result,
        });
    }
}

struct SubmitterThread<'a> {
    sub: &'a Submitter,
    submitters: usize,
    reply: usize,
    tx: Sender<Req>,
    rx: Receiver<Resp>,
    paths: &'a [PathBuf],
    patterns: &'a [Pattern],
    control: &'a Control,
    verify: bool,
}

impl SubmitterThread<'_> {
    fn run(self, ctx: &RunCtx) -> Tally {
        let _done = DoneGuard(self.control);
        let w = ctx.w;
        let bs = w.bs;
        let depth = w.iodepth;
        let mut gen = OpGen::for_submitter(w, self.sub, self.submitters);
        let mut tally = Tally::default();
        let mut bufs: Vec<Option<AlignedBuf>> = (0..depth)
            .map(|_| {
                let mut b = AlignedBuf::new(bs);
                if w.rw.writes() && !w.verify {
                    self.patterns[0].fill(&mut b, 0);
                }
                Some(b)
            })
            .collect();
        let mut ops: Vec<Option<Op>> = vec![None; depth];
        let mut t0 = vec![Instant::now(); depth];
        // When the channel send of each slot's request returned (its issue).
        let mut sent = t0.clone();
        let mut starts: Vec<Option<Instant>> = vec![None; depth];
        let mut free: Vec<usize> = (0..depth).rev().collect();
        let mut in_flight = 0usize;
        if gen.paced() {
            pace::precise_timers();
        }
        loop {
            let mut waiting = None;
            if !self.control.stopped() {
                let t = Instant::now();
                while let Some(&slot) = free.last() {
                    let (op, start) = match gen.next() {
                        Next::Go(op, start) => (op, start),
                        Next::Wait(at) => {
                            waiting = Some(at);
                            break;
                        }
                        Next::Done => break,
                    };
                    free.pop();
                    let Some(mut buf) = bufs[slot].take() else {
                        break;
                    };
                    if op.kind == IoKind::Write && w.verify {
                        self.patterns[op.file].fill(&mut buf, op.offset);
                    }
                    ops[slot] = Some(op);
                    t0[slot] = if start.is_some() { Instant::now() } else { t };
                    starts[slot] = start;
                    in_flight += 1;
                    let req = Req {
                        op,
                        slot,
                        buf,
                        reply: self.reply,
                    };
                    if self.tx.send(req).is_err() {
                        return tally;
                    }
                    sent[slot] = Instant::now();
                }
            }
            if in_flight == 0 && waiting.is_none() {
                break;
            }
            // Open loop with a free slot: wait no longer than until shortly before the next
            // start, then poll.
            let first =
                match waiting.map(|at| pace::wait_for(at, Instant::now(), pace::wake_window())) {
                    None => match self.rx.recv() {
                        Ok(r) => r,
                        Err(_) => break,
                    },
                    Some(Wait::Block(d)) => match self.rx.recv_timeout(d) {
                        Ok(r) => r,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => break,
                    },
                    Some(Wait::Poll) => match self.rx.try_recv() {
                        Ok(r) => r,
                        Err(crossbeam_channel::TryRecvError::Empty) => continue,
                        Err(crossbeam_channel::TryRecvError::Disconnected) => break,
                    },
                };
            let now = Instant::now();
            let (mut n_ops, mut n_bytes) = (0u64, 0u64);
            let mut next = Some(first);
            while let Some(r) = next.take() {
                let slot = r.slot;
                in_flight -= 1;
                free.push(slot);
                if let Some(op) = ops[slot].take() {
                    let times = Times::new(starts[slot], t0[slot], sent[slot], now);
                    if self.finish(&mut tally, &mut gen, op, &r, times, bs) {
                        n_ops += 1;
                        n_bytes += bs as u64;
                    }
                }
                bufs[slot] = Some(r.buf);
                next = self.rx.try_recv().ok();
            }
            self.control.add(self.sub.index, n_ops, n_bytes);
        }
        tally
    }

    /// Counts one result; true for a completed read or write.
    fn finish(
        &self,
        tally: &mut Tally,
        gen: &mut OpGen,
        op: Op,
        r: &Resp,
        times: Times,
        bs: usize,
    ) -> bool {
        let path = &self.paths[op.file];
        match r.result {
            Err(errno) => {
                tally.fail(op.kind, path, op.offset, &errno_reason(errno));
                false
            }
            Ok(n) if !op.kind.is_sync() && n != bs => {
                let what = format!("short transfer ({n} of {bs} bytes)");
                tally.fail(op.kind, path, op.offset, &what);
                false
            }
            Ok(n) => {
                if op.kind == IoKind::Read && self.verify {
                    tally.checks.verified += 1;
                    if let Some(m) = self.patterns[op.file].check(&r.buf[..bs], op.offset) {
                        tally.checks.mismatch(path, m);
                    }
                }
                tally.ok(op.kind, n as u64, times);
                gen.write_done(&op);
                !op.kind.is_sync()
            }
        }
    }
}
