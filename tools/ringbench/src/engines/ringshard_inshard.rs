//! ringshard, load generated inside each shard: `Executor::submit_to` runs a loop on the shard
//! thread that keeps `--iodepth` READ_FIXED / WRITE_FIXED in flight on the shard's own ring and
//! pool (no channel per I/O) and records every operation in the shard's statistics.

use super::{ns_between, Output, RunCtx};
use crate::control::{Control, Measure};
use crate::error::BenchError;
use crate::pace::{self, RateWait, Wait};
use crate::pattern::Pattern;
use crate::tally::{errno_reason, Tally, Times};
use crate::workload::{IoKind, Next, Op, OpGen, Submitter, Workload};
use io_uring::{opcode, types};
use ringshard::{Executor, ExecutorStats, OpKind, OpenOptions, ShardContext, ShardCqe};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `user_data` of our fsync SQEs: bit 60 set (inside the range `ShardContext::push` leaves to
/// closures, 2^47..2^62), and the index of the slot's (idle) buffer in the low 16 bits.
const FSYNC_TAG: u64 = 1 << 60;
/// `user_data` of the open-loop wake-up timer (an IORING_OP_TIMEOUT), and of its removal.
const TIMER_TAG: u64 = 1 << 61;
const TIMER_REMOVE_TAG: u64 = (1 << 61) | 1;

/// Starts an executor on the run's CPUs with `buffers` pool buffers of `--bs` per shard.
pub fn build_executor(ctx: &RunCtx, buffers: usize) -> Result<Executor, BenchError> {
    let w = ctx.w;
    let entries = (buffers.next_power_of_two()).clamp(256, 32_768) as u32;
    let mut b = Executor::builder()
        .cores(ctx.cpus.to_vec())
        .buffer_size(w.bs)
        .buffer_count(buffers)
        .ring_entries(entries)
        .backend(ctx.backend);
    if let Some(us) = w.spin_us {
        b = b.spin(Duration::from_micros(us));
    }
    if let Some(cpu) = w.sqpoll {
        b = b.sqpoll(cpu);
    }
    match w.inline_limit {
        Some(0) => b = b.inline_reads(false),
        Some(n) => b = b.inline_read_limit(n),
        None => {}
    }
    b.build()
        .map_err(|e| BenchError::from_lib("starting the ringshard executor", e))
}

/// Opens the run's files through the executor (each lands on the shard its inode routes to).
pub fn open_files(exec: &Executor, ctx: &RunCtx) -> Result<Vec<ringshard::File>, BenchError> {
    let mut o = OpenOptions::new();
    o.read(true).write(ctx.w.rw.writes()).direct(ctx.w.direct);
    let pending: Vec<_> = ctx.files.iter().map(|f| exec.open(&f.path, &o)).collect();
    pending
        .into_iter()
        .zip(ctx.files)
        .map(|(c, f)| {
            c.wait().map_err(|e| {
                BenchError::from_lib(&format!("opening {} in the executor", f.path.display()), e)
            })
        })
        .collect()
}

/// An executor (shared, for engines whose tasks hold it) with the run's files open in it; if an
/// open fails, the executor is shut down before the error is returned.
pub fn start_with_files(
    ctx: &RunCtx,
    buffers: usize,
) -> Result<(std::sync::Arc<Executor>, Vec<ringshard::File>), BenchError> {
    let exec = std::sync::Arc::new(build_executor(ctx, buffers)?);
    match open_files(&exec, ctx) {
        Ok(files) => Ok((exec, files)),
        Err(e) => {
            let _ = exec.shutdown();
            Err(e)
        }
    }
}

/// What the shard loop returns: its per-kind latency (measured on the shard, from the intended
/// start in open loop) and checks.
#[derive(Default)]
struct ShardResult {
    tally: Tally,
    fatal: Option<String>,
    /// The depth it ran at when the pool had fewer free buffers than `--iodepth`.
    capped: Option<usize>,
}

/// Everything the shard loop needs. Dropping it (after the loop, or with the closure if the shard
/// never runs it) tells the coordinator this submitter is done.
struct Job {
    w: Arc<Workload>,
    files: Arc<Vec<ringshard::File>>,
    paths: Arc<Vec<PathBuf>>,
    patterns: Arc<Vec<Pattern>>,
    sub: Submitter,
    submitters: usize,
    control: Arc<Control>,
}

pub fn run(ctx: &RunCtx) -> Result<Output, BenchError> {
    let w = ctx.w;
    let exec = build_executor(ctx, w.iodepth)?;
    let files = Arc::new(open_files(&exec, ctx)?);
    let n = exec.shard_count();
    let owner = |i: usize| files[i].shard();
    let subs = crate::workload::plan_submitters(n, files.len(), Some(&owner), w.ops);
    let mut notes = Vec::new();
    if subs.len() < n {
        let idle: Vec<String> = (0..n)
            .filter(|i| !subs.iter().any(|s| s.index == *i))
            .map(|i| i.to_string())
            .collect();
        notes.push(format!(
            "shard(s) {} own none of the {} file(s) (files go to shards by inode) and stay idle; \
             omit --files to get one file per shard",
            idle.join(","),
            files.len()
        ));
    }
    let control = Arc::new(Control::new(n));
    let wl = Arc::new(w.clone());
    let paths = Arc::new(ctx.files.iter().map(|f| f.path.clone()).collect::<Vec<_>>());
    let patterns = Arc::new(ctx.patterns());

    let resident = ctx.warm()?;
    let meas = Measure::start();
    let pending: Vec<_> = subs
        .iter()
        .map(|s| {
            let job = Job {
                w: Arc::clone(&wl),
                files: Arc::clone(&files),
                paths: Arc::clone(&paths),
                patterns: Arc::clone(&patterns),
                sub: s.clone(),
                submitters: subs.len(),
                control: Arc::clone(&control),
            };
            exec.submit_to(s.index, move |sctx| shard_loop(sctx, job))
        })
        .collect();
    // No library snapshot at the end of a ramp: the shards are busy running the loop and
    // would only answer after it.
    let (elapsed, cpu) = control.supervise(subs.len(), meas, w.duration, ctx.progress, &mut || {});

    let mut tallies = Vec::new();
    let mut fatal = Vec::new();
    for (s, c) in subs.iter().zip(pending) {
        match c.wait() {
            Ok(r) => {
                if let Some(f) = r.fatal {
                    fatal.push(format!("shard {}: {f}", s.index));
                }
                if let Some(depth) = r.capped {
                    notes.push(format!(
                        "shard {}: iodepth {depth}, not {}: its pool had {depth} free buffer(s) \
                         (see `pool:` above; each I/O in flight holds one)",
                        s.index, w.iodepth
                    ));
                }
                let (cpu, node) = ctx.cpu_of(s.index);
                tallies.push((Some(s.index), Some(cpu), node, r.tally));
            }
            Err(e) => fatal.push(format!("shard {}: {e}", s.index)),
        }
    }
    let stats = exec.stats();
    let _ = exec.shutdown();
    if !fatal.is_empty() {
        return Err(BenchError::runtime(fatal.join("; ")));
    }
    let ramped = w.ramp.is_some();
    if ramped {
        notes.push(
            "--ramp-time: ringshard's own statistics are left out (they would include the ramp); \
             the tables are the loop's own counts after it"
                .to_string(),
        );
    }
    // The rows are the loop's own counts (latency from the intended start in open loop), as
    // for every engine; the library's statistics are shown beside them.
    let mut out = Output::from_tallies("shard", tallies, elapsed, cpu, resident, notes);
    out.client_latency = false;
    out.library = (!ramped).then(|| ExecutorStats::from_shards(stats.shards, elapsed));
    Ok(out)
}

impl Drop for Job {
    fn drop(&mut self) {
        self.control.done();
    }
}

/// One in-flight slot: its buffer, the operation using it, when it was issued (the
/// `io_uring_enter` that submitted it) and when it started (see [`Times`]).
struct Slot {
    buf: u16,
    op: Option<Op>,
    /// Intended start (open loop).
    intended: Option<Instant>,
    /// When prepared (pushed), and when the call that submitted it returned (see [`Times`]).
    start: Instant,
    issue: Instant,
    /// Done on this thread (a buffered write): when.
    done: Option<Instant>,
}

fn lib_kind(k: IoKind) -> OpKind {
    match k {
        IoKind::Read => OpKind::Read,
        IoKind::Write => OpKind::Write,
        IoKind::Fsync => OpKind::Fsync,
        IoKind::Fdatasync => OpKind::Fdatasync,
    }
}

/// The open-loop wake-up: one IORING_OP_TIMEOUT at a time, so that waiting for completions
/// also ends in time for the next intended start.
struct Timer {
    /// The timespec of the armed timeout (the kernel reads it when the SQE is submitted).
    ts: Box<io_uring::types::Timespec>,
    armed: bool,
}

impl Timer {
    /// Arms a timeout of `d` unless one is armed (that one ends soon enough: it was armed for an
    /// earlier or equal start). False if the SQ is full.
    fn arm(&mut self, ctx: &mut ShardContext<'_>, d: Duration) -> bool {
        if self.armed {
            return true;
        }
        *self.ts = io_uring::types::Timespec::new()
            .sec(d.as_secs())
            .nsec(d.subsec_nanos());
        let e = opcode::Timeout::new(&*self.ts).build().user_data(TIMER_TAG);
        // SAFETY: the timespec lives in `self.ts` for the whole loop (and the kernel copies it
        // at submission); the user_data is in the range left to closures; the timeout completes
        // (fires or is removed in `disarm`) before the loop returns.
        self.armed = unsafe { ctx.push(&e) }.is_ok();
        self.armed
    }

    /// Removes an armed timeout and reaps its completion (and the removal's) before returning.
    fn disarm(&mut self, ctx: &mut ShardContext<'_>) -> ringshard::Result<()> {
        if !self.armed {
            return Ok(());
        }
        let e = opcode::TimeoutRemove::new(TIMER_TAG)
            .build()
            .user_data(TIMER_REMOVE_TAG);
        // SAFETY: points to no memory; user_data in the closures' range; reaped below.
        let mut removal = unsafe { ctx.push(&e) }.is_ok();
        while self.armed || removal {
            ctx.submit_and_wait(1)?;
            ctx.reap(|c| match c.user_data {
                TIMER_TAG => self.armed = false,
                TIMER_REMOVE_TAG => removal = false,
                _ => {}
            });
        }
        Ok(())
    }
}

/// The loop run on the shard thread.
fn shard_loop(ctx: &mut ShardContext<'_>, job: Job) -> ShardResult {
    let mut res = ShardResult::default();
    let depth = job.w.iodepth;
    let mut slots = Vec::with_capacity(depth);
    // As many buffers as the pool has free, up to the depth: under a low RLIMIT_MEMLOCK the
    // executor fits its pool to the limit, and the run goes on at the depth it got.
    while slots.len() < depth {
        match ctx.pool().acquire() {
            Ok((buf, _)) => slots.push(Slot {
                buf,
                op: None,
                intended: None,
                start: Instant::now(),
                issue: Instant::now(),
                done: None,
            }),
            Err(e) if slots.is_empty() => {
                res.fatal = Some(format!("acquiring a pool buffer: {e}"));
                break;
            }
            Err(_) => {
                res.capped = Some(slots.len());
                break;
            }
        }
    }
    if res.fatal.is_none() {
        drive(ctx, &job, &mut slots, &mut res);
    }
    for s in &slots {
        ctx.pool().release(s.buf);
    }
    res
}

fn drive(ctx: &mut ShardContext<'_>, job: &Job, slots: &mut [Slot], res: &mut ShardResult) {
    let w = &*job.w;
    let bs = w.bs as u32;
    let mut gen = OpGen::for_submitter(w, &job.sub, job.submitters);
    let mut slot_of_buf = vec![u32::MAX; ctx.pool().total_count()];
    for (i, s) in slots.iter().enumerate() {
        slot_of_buf[s.buf as usize] = i as u32;
    }
    if w.rw.writes() && !w.verify {
        // Writes without --verify write whatever the buffer holds: fill it once.
        for s in slots.iter() {
            if let Ok(b) = ctx.pool().get_mut(s.buf) {
                job.patterns[0].fill(&mut b[..bs as usize], 0);
            }
        }
    }
    let paced = gen.paced();
    let sleep = paced && w.rate_wait == RateWait::Sleep;
    // fio's way leaves the timer slack as it is; polling wants timers on time.
    let window = if paced && !sleep {
        pace::precise_timers();
        pace::wake_window()
    } else {
        Duration::ZERO
    };
    let mut timer = Timer {
        ts: Box::new(io_uring::types::Timespec::new()),
        armed: false,
    };
    let mut free: Vec<usize> = (0..slots.len()).rev().collect();
    let mut fresh: Vec<usize> = Vec::with_capacity(slots.len());
    let mut cqes = Vec::with_capacity(slots.len() * 2);
    let mut inline_done: Vec<ShardCqe> = Vec::with_capacity(slots.len());
    let mut in_flight = 0usize;
    loop {
        // Open loop: the next intended start, when nothing is due yet and a slot is free.
        let mut waiting = None;
        if !job.control.stopped() {
            while let Some(&s) = free.last() {
                let (op, intended) = match gen.next() {
                    Next::Go(op, intended) => (op, intended),
                    Next::Wait(at) => {
                        waiting = Some(at);
                        break;
                    }
                    Next::Done => break,
                };
                // Only a write can complete inline (and needs its start before the call): reads
                // skip the clock here.
                let t_push = (op.kind == IoKind::Write).then(Instant::now);
                match push(ctx, job, &slots[s], &op, bs) {
                    Ok(done_now) => {
                        free.pop();
                        slots[s].op = Some(op);
                        slots[s].intended = intended;
                        // Prepared: fio's start_time (taken after its prep builds the SQE).
                        let pushed = Instant::now();
                        slots[s].start = pushed;
                        slots[s].done = None;
                        in_flight += 1;
                        match done_now {
                            // Done on this thread (a buffered write, as the executor does it),
                            // issued and completed by the call: handled with the ring's
                            // completions below.
                            Some(result) => {
                                slots[s].start = t_push.unwrap_or(pushed);
                                slots[s].issue = pushed;
                                slots[s].done = Some(pushed);
                                inline_done.push(ShardCqe {
                                    user_data: 0,
                                    result,
                                    flags: 0,
                                    buf_index: Some(slots[s].buf),
                                });
                            }
                            None => fresh.push(s),
                        }
                        // fio's way: one operation per submit (iodepth_batch_submit=1), so that
                        // each one's issue is its own.
                        if sleep {
                            break;
                        }
                    }
                    Err(e) => {
                        ctx.record_error(lib_kind(op.kind), e.errno().unwrap_or(libc::EINVAL), 0);
                        res.tally
                            .fail(op.kind, &job.paths[op.file], op.offset, &e.to_string());
                        job.control.stop();
                        break;
                    }
                }
            }
        }
        if in_flight == 0 && waiting.is_none() {
            break;
        }
        if !paced {
            // Closed loop: submit and wait in one call (the issue is taken before it); wait for
            // the ring only when nothing finished inline.
            let t = Instant::now();
            for s in fresh.drain(..) {
                slots[s].issue = t;
            }
            if let Err(e) = ctx.submit_and_wait(usize::from(inline_done.is_empty())) {
                // The shard waits for our in-flight buffers after we return.
                res.fatal = Some(format!("submit: {e}"));
                job.control.stop();
                return;
            }
        } else {
            // Open loop: submit on its own (as fio does), so that the issue is when it returns
            // (a page-cache read completes in the submit).
            if !fresh.is_empty() {
                if let Err(e) = ctx.submit_and_wait(0) {
                    res.fatal = Some(format!("submit: {e}"));
                    job.control.stop();
                    return;
                }
                let t = Instant::now();
                for s in fresh.drain(..) {
                    slots[s].issue = t;
                }
                // fio's way: the next operation is prepared (or found not due) before anything
                // is reaped, even what completed in the submit.
                if sleep {
                    continue;
                }
            }
            ctx.reap(|c| inline_done.push(c));
            // Nothing finished: wait. Every slot busy (or no more starts): for a completion.
            // fio's way (`sleep`): for every operation in flight, one at a time, and then sleep
            // below. Else no longer than until shortly before the next start, then poll
            // (arming a timer costs microseconds in a VM: not when something is done already).
            let want = match waiting {
                _ if !inline_done.is_empty() => None,
                None => (in_flight > 0).then_some(1),
                Some(_) if sleep => (in_flight > 0).then_some(1),
                Some(at) => Some(match pace::wait_for(at, Instant::now(), window) {
                    Wait::Block(d) => usize::from(timer.arm(ctx, d)),
                    // Polling: a zero timeout, so that the wait still runs deferred
                    // completions (DEFER_TASKRUN) without blocking.
                    Wait::Poll if timer.armed => 0,
                    Wait::Poll => usize::from(timer.arm(ctx, Duration::ZERO)),
                }),
            };
            if let Some(want) = want {
                if let Err(e) = ctx.submit_and_wait(want) {
                    res.fatal = Some(format!("submit: {e}"));
                    job.control.stop();
                    return;
                }
            }
        }
        let now = Instant::now();
        cqes.clear();
        cqes.append(&mut inline_done);
        ctx.reap(|c| cqes.push(c));
        let (mut ops, mut bytes) = (0u64, 0u64);
        for c in &cqes {
            let buf = match c.buf_index {
                Some(b) => b,
                None if c.user_data == TIMER_TAG => {
                    timer.armed = false;
                    continue;
                }
                None if c.user_data & FSYNC_TAG != 0 => c.user_data as u16,
                None => continue,
            };
            let s = slot_of_buf.get(buf as usize).copied().unwrap_or(u32::MAX) as usize;
            let Some(op) = slots.get_mut(s).and_then(|x| x.op.take()) else {
                continue;
            };
            in_flight -= 1;
            free.push(s);
            let done = slots[s].done.take().unwrap_or(now);
            let lat = ns_between(slots[s].start, done);
            let kind = lib_kind(op.kind);
            let path = &job.paths[op.file];
            if c.result < 0 {
                ctx.record_error(kind, -c.result, lat);
                res.tally
                    .fail(op.kind, path, op.offset, &errno_reason(c.result));
                continue;
            }
            if !op.kind.is_sync() && c.result as u32 != bs {
                ctx.record_error(kind, libc::EIO, lat);
                let what = format!("short transfer ({} of {bs} bytes)", c.result);
                res.tally.fail(op.kind, path, op.offset, &what);
                continue;
            }
            if op.kind == IoKind::Read && w.verify {
                res.tally.checks.verified += 1;
                if let Ok(b) = ctx.pool().get(slots[s].buf) {
                    if let Some(m) = job.patterns[op.file].check(&b[..bs as usize], op.offset) {
                        res.tally.checks.mismatch(path, m);
                    }
                }
            }
            ctx.record(kind, c.result as u64, lat);
            let times = Times::new(slots[s].intended, slots[s].start, slots[s].issue, done);
            res.tally.ok(op.kind, c.result as u64, times);
            if !op.kind.is_sync() {
                ops += 1;
                bytes += u64::from(bs);
            }
            gen.write_done(&op);
        }
        job.control.add(job.sub.index, ops, bytes);
        // fio's way: with everything in flight reaped, sleep until the next start.
        if let (true, Some(at), 0) = (sleep, waiting, in_flight) {
            pace::fio_sleep_until(at.min(Instant::now() + pace::MAX_BLOCK));
        }
    }
    if let Err(e) = timer.disarm(ctx) {
        res.fatal = Some(format!("removing the pacing timer: {e}"));
    }
}

/// Pushes the SQE of `op` into slot `slot` (filling the buffer first for a verified write).
/// `Some(result)`: the operation was done on this thread instead (a buffered write, where the
/// executor writes inline), with this result.
fn push(
    ctx: &mut ShardContext<'_>,
    job: &Job,
    slot: &Slot,
    op: &Op,
    bs: u32,
) -> ringshard::Result<Option<i32>> {
    let file = &job.files[op.file];
    match op.kind {
        IoKind::Read => ctx
            .push_read_fixed(file, slot.buf, op.offset, bs)
            .map(|_| None),
        IoKind::Write => {
            if job.w.verify {
                let b = ctx.pool().get_mut(slot.buf)?;
                job.patterns[op.file].fill(&mut b[..bs as usize], op.offset);
            }
            if !file.is_direct() && ctx.buffered_writes_inline() {
                return match ctx.write_fixed_inline(file, slot.buf, op.offset, bs as usize) {
                    Ok(n) => Ok(Some(n as i32)),
                    Err(e) => Ok(Some(-e.errno().unwrap_or(libc::EIO))),
                };
            }
            ctx.push_write_fixed(file, slot.buf, op.offset, bs)
                .map(|_| None)
        }
        IoKind::Fsync | IoKind::Fdatasync => {
            // The slot is found again through its (idle) buffer's index.
            let fd = ctx.raw_fd(file)?;
            let flags = if op.kind == IoKind::Fdatasync {
                types::FsyncFlags::DATASYNC
            } else {
                types::FsyncFlags::empty()
            };
            let e = opcode::Fsync::new(types::Fd(fd))
                .flags(flags)
                .build()
                .user_data(FSYNC_TAG | u64::from(slot.buf));
            // SAFETY: an fsync points to no memory; its user_data has bit 63 clear and is not
            // the shard's wake-up value.
            unsafe { ctx.push(&e) }.map(|()| None)
        }
    }
}
