//! The ceiling: one plain io_uring loop per thread, pinned like a shard, with its own ring
//! (SINGLE_ISSUER | DEFER_TASKRUN), registered buffers and registered files, pushing a whole batch
//! per `io_uring_enter`. Same loop shape and operation sequence as the in-shard ringshard loop,
//! without the library in between. Under a low RLIMIT_MEMLOCK it does what the library does (a
//! smaller ring, plain READ/WRITE into unregistered buffers) and says so in a note.

use super::{pin, DoneGuard, Output, RunCtx};
use crate::buf::{AlignedBuf, ALIGN};
use crate::control::Control;
use crate::error::BenchError;
use crate::pace::{self, RateWait, Wait};
use crate::pattern::Pattern;
use crate::tally::{errno_reason, Tally, Times};
use crate::workload::{IoKind, Next, Op, OpGen, Submitter};
use io_uring::{opcode, types, IoUring};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Barrier;
use std::time::Duration;
use std::time::Instant;

pub fn run(ctx: &RunCtx) -> Result<Output, BenchError> {
    let w = ctx.w;
    let subs = ctx.submitters();
    let files = ctx.open_std()?;
    let paths: Vec<PathBuf> = ctx.files.iter().map(|f| f.path.clone()).collect();
    let patterns = ctx.patterns();
    let control = Control::new(ctx.cpus.len().max(w.clients));
    let barrier = Barrier::new(subs.len() + 1);
    // Each thread's setup: what it had to give up to fit RLIMIT_MEMLOCK, or why it failed.
    let (ready_tx, ready_rx) = crossbeam_channel::unbounded::<Result<Option<String>, String>>();

    let result = std::thread::scope(|scope| {
        let handles: Vec<_> = subs
            .iter()
            .map(|s| {
                let (cpu, node) = ctx.cpu_of(s.index);
                let t = Thread {
                    sub: s,
                    submitters: subs.len(),
                    files: &files,
                    paths: &paths,
                    patterns: &patterns,
                    control: &control,
                    cpu,
                };
                let (barrier, ready) = (&barrier, ready_tx.clone());
                let h = std::thread::Builder::new()
                    .name(format!("raw-uring-{}", s.index))
                    .spawn_scoped(scope, move || t.main(ctx, barrier, ready))
                    .expect("spawning a raw-uring thread");
                (h, s.index, cpu, node)
            })
            .collect();
        let (mut setup_errors, mut notes) = (Vec::new(), Vec::new());
        for _ in 0..subs.len() {
            match ready_rx.recv() {
                Ok(Err(e)) => setup_errors.push(e),
                Ok(Ok(Some(note))) => notes.push(note),
                _ => {}
            }
        }
        if !setup_errors.is_empty() {
            control.stop();
        }
        let resident = if setup_errors.is_empty() {
            ctx.warm()
        } else {
            Ok(None)
        };
        let (elapsed, cpu) =
            control.measure_phase(&barrier, subs.len(), w.duration, ctx.progress, &mut || {});
        let tallies: Vec<_> = handles
            .into_iter()
            .map(|(h, i, c, n)| (Some(i), Some(c), n, h.join().unwrap_or_default()))
            .collect();
        if !setup_errors.is_empty() {
            return Err(BenchError::runtime(format!(
                "raw-uring setup: {}",
                setup_errors.join("; ")
            )));
        }
        Ok((tallies, elapsed, cpu, resident?, notes))
    })?;
    let (tallies, elapsed, cpu, resident, notes) = result;
    Ok(Output::from_tallies(
        "thread", tallies, elapsed, cpu, resident, notes,
    ))
}

struct Thread<'a> {
    sub: &'a Submitter,
    submitters: usize,
    files: &'a [File],
    paths: &'a [PathBuf],
    patterns: &'a [Pattern],
    control: &'a Control,
    cpu: usize,
}

/// A ring with the same flags a shard asks for (SQPOLL when `--sqpoll`); refused for its memory
/// (ENOMEM: RLIMIT_MEMLOCK), again with half the entries, down to 8, as a shard does. Returns the
/// entries it got.
fn ring_fitted(entries: u32, sqpoll: Option<u32>) -> std::io::Result<(IoUring, u32)> {
    let mut n = entries;
    loop {
        match ring(n, sqpoll) {
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) && n > 8 => n = (n / 2).max(8),
            r => return r.map(|r| (r, n)),
        }
    }
}

/// A ring with the same flags a shard asks for (SQPOLL when `--sqpoll`).
fn ring(entries: u32, sqpoll: Option<u32>) -> std::io::Result<IoUring> {
    let mut b = IoUring::builder();
    b.setup_cqsize(entries * 2).setup_clamp();
    match sqpoll {
        Some(cpu) => {
            b.setup_sqpoll(100).setup_sqpoll_cpu(cpu);
        }
        None => {
            b.setup_single_issuer().setup_defer_taskrun();
        }
    }
    match b.build(entries) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::new(entries),
        r => r,
    }
}

struct Setup {
    ring: IoUring,
    slab: AlignedBuf,
    stride: usize,
    /// The slab is registered (READ_FIXED/WRITE_FIXED); else plain READ/WRITE into it.
    registered: bool,
    /// Registered file slot of each global file index (u32::MAX: not ours).
    fixed: Vec<u32>,
}

impl Thread<'_> {
    fn main(
        self,
        ctx: &RunCtx,
        barrier: &Barrier,
        ready: crossbeam_channel::Sender<Result<Option<String>, String>>,
    ) -> Tally {
        let _done = DoneGuard(self.control);
        pin(self.cpu);
        let setup = self.setup(ctx);
        let _ = ready.send(
            setup
                .as_ref()
                .map(|(_, note)| note.clone())
                .map_err(Clone::clone),
        );
        let setup = setup.map(|(s, _)| s);
        barrier.wait();
        let mut tally = Tally::default();
        if let Ok(mut s) = setup {
            if !self.control.stopped() {
                self.drive(ctx, &mut s, &mut tally);
            }
        }
        tally
    }

    /// The thread's ring, buffers and files, and a note on what it gave up to fit RLIMIT_MEMLOCK.
    fn setup(&self, ctx: &RunCtx) -> Result<(Setup, Option<String>), String> {
        let w = ctx.w;
        let depth = w.iodepth;
        let entries = depth.next_power_of_two().max(8) as u32;
        let (ring, got) =
            ring_fitted(entries, w.sqpoll).map_err(|e| format!("io_uring_setup: {e}"))?;
        let mut gave_up = Vec::new();
        if got < entries {
            gave_up.push(format!("a ring of {got} entries, not {entries}"));
        }
        let stride = w.bs.div_ceil(ALIGN) * ALIGN;
        let slab = AlignedBuf::new(stride * depth);
        let iovecs: Vec<libc::iovec> = (0..depth)
            .map(|i| libc::iovec {
                // SAFETY (pointer arithmetic): i * stride is inside the slab.
                iov_base: unsafe { slab.as_ptr().add(i * stride) } as *mut libc::c_void,
                iov_len: w.bs,
            })
            .collect();
        // SAFETY: the slab outlives the ring's use of it: `Setup` drops the ring first (field
        // order), and every operation completes before `drive` returns.
        let registered = match unsafe { ring.submitter().register_buffers(&iovecs) } {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => {
                gave_up.push("unregistered buffers (plain READ/WRITE)".into());
                false
            }
            Err(e) => return Err(format!("registering buffers: {e}")),
        };
        let fds: Vec<i32> = self
            .sub
            .files
            .iter()
            .map(|&i| self.files[i].as_raw_fd())
            .collect();
        ring.submitter()
            .register_files(&fds)
            .map_err(|e| format!("registering files: {e}"))?;
        let mut fixed = vec![u32::MAX; self.files.len()];
        for (slot, &i) in self.sub.files.iter().enumerate() {
            fixed[i] = slot as u32;
        }
        let note = (!gave_up.is_empty()).then(|| {
            format!(
                "raw-uring thread {}: {}, to fit RLIMIT_MEMLOCK (ENOMEM)",
                self.sub.index,
                gave_up.join(" and ")
            )
        });
        Ok((
            Setup {
                ring,
                slab,
                stride,
                registered,
                fixed,
            },
            note,
        ))
    }

    fn drive(&self, ctx: &RunCtx, s: &mut Setup, tally: &mut Tally) {
        let w = ctx.w;
        let bs = w.bs;
        let depth = w.iodepth;
        let mut gen = OpGen::for_submitter(w, self.sub, self.submitters);
        if w.rw.writes() && !w.verify {
            for i in 0..depth {
                let b = &mut s.slab[i * s.stride..i * s.stride + bs];
                self.patterns[0].fill(b, 0);
            }
        }
        let now = Instant::now();
        let mut st = Slots {
            ops: vec![None; depth],
            intended: vec![None; depth],
            start: vec![now; depth],
            issue: vec![now; depth],
            free: (0..depth).rev().collect(),
            in_flight: 0,
        };
        let mut fresh: Vec<usize> = Vec::with_capacity(depth);
        let paced = gen.paced();
        let sleep = paced && w.rate_wait == RateWait::Sleep;
        // fio's way leaves the timer slack as it is; polling wants timers on time.
        let window = if paced && !sleep {
            pace::precise_timers();
            pace::wake_window()
        } else {
            Duration::ZERO
        };
        loop {
            let mut waiting = None;
            if !self.control.stopped() {
                while let Some(&slot) = st.free.last() {
                    let (op, intended) = match gen.next() {
                        Next::Go(op, intended) => (op, intended),
                        Next::Wait(at) => {
                            waiting = Some(at);
                            break;
                        }
                        Next::Done => break,
                    };
                    st.free.pop();
                    let off = slot * s.stride;
                    let file = types::Fixed(s.fixed[op.file]);
                    let ptr = s.slab[off..].as_mut_ptr();
                    let (len, idx) = (bs as u32, slot as u16);
                    let entry = match (op.kind, s.registered) {
                        (IoKind::Read, true) => opcode::ReadFixed::new(file, ptr, len, idx)
                            .offset(op.offset)
                            .build(),
                        (IoKind::Read, false) => {
                            opcode::Read::new(file, ptr, len).offset(op.offset).build()
                        }
                        (IoKind::Write, registered) => {
                            if w.verify {
                                self.patterns[op.file].fill(&mut s.slab[off..off + bs], op.offset);
                            }
                            if registered {
                                opcode::WriteFixed::new(file, ptr, len, idx)
                                    .offset(op.offset)
                                    .build()
                            } else {
                                opcode::Write::new(file, ptr, len).offset(op.offset).build()
                            }
                        }
                        (IoKind::Fsync, _) => opcode::Fsync::new(file).build(),
                        (IoKind::Fdatasync, _) => opcode::Fsync::new(file)
                            .flags(types::FsyncFlags::DATASYNC)
                            .build(),
                    };
                    // SAFETY: the entry points into our slab (registered or not), which stays
                    // alive and untouched until its completion is reaped below. A full SQ (a ring
                    // made smaller than `depth`) refuses the push: the loop submits first.
                    if unsafe { s.ring.submission().push(&entry.user_data(slot as u64)) }.is_err() {
                        st.free.push(slot);
                        break;
                    }
                    // Prepared: fio's start_time (taken after its prep builds the SQE).
                    st.start[slot] = Instant::now();
                    st.ops[slot] = Some(op);
                    st.intended[slot] = intended;
                    fresh.push(slot);
                    st.in_flight += 1;
                    // fio's way: one operation per submit (iodepth_batch_submit=1), so that each
                    // one's issue is its own.
                    if sleep {
                        break;
                    }
                }
            }
            if st.in_flight == 0 && waiting.is_none() {
                break;
            }
            if !paced {
                // Closed loop: submit and wait for a completion in one call (the ceiling's way);
                // the issue is taken before it.
                let t = Instant::now();
                for slot in fresh.drain(..) {
                    st.issue[slot] = t;
                }
                let r = s.ring.submit_and_wait(1);
                if !self.entered(r, s, tally) {
                    return;
                }
                self.reap(w, s, &mut st, &mut gen, tally);
                continue;
            }
            // Open loop: submit on its own (as fio does), so that the issue is when it returns.
            if !fresh.is_empty() {
                let r = submit(&mut s.ring, w.sqpoll.is_some());
                if !self.entered(r, s, tally) {
                    return;
                }
                let t = Instant::now();
                for slot in fresh.drain(..) {
                    st.issue[slot] = t;
                }
                // fio's way: the next operation is prepared (or found not due) before anything
                // is reaped, even what completed in the submit.
                if sleep {
                    continue;
                }
            }
            let reaped = self.reap(w, s, &mut st, &mut gen, tally);
            match waiting {
                // Every slot busy, or no more starts: wait for a completion.
                None => {
                    if reaped == 0 && st.in_flight > 0 {
                        let r = s.ring.submit_and_wait(1);
                        if !self.entered(r, s, tally) {
                            return;
                        }
                        self.reap(w, s, &mut st, &mut gen, tally);
                    }
                }
                // fio's way: reap everything in flight (io_u_quiesce), then sleep to the start.
                Some(at) if sleep => {
                    while st.in_flight > 0 {
                        let r = s.ring.submit_and_wait(1);
                        if !self.entered(r, s, tally) {
                            return;
                        }
                        self.reap(w, s, &mut st, &mut gen, tally);
                    }
                    pace::fio_sleep_until(at.min(Instant::now() + pace::MAX_BLOCK));
                }
                // Block on completions no longer than until shortly before the next start
                // (EXT_ARG timeout), then poll.
                Some(at) => {
                    if reaped == 0 {
                        let d = match pace::wait_for(at, Instant::now(), window) {
                            Wait::Block(d) => d,
                            Wait::Poll => Duration::ZERO,
                        };
                        let ts = types::Timespec::from(d);
                        let args = types::SubmitArgs::new().timespec(&ts);
                        let r = s.ring.submitter().submit_with_args(1, &args);
                        if !self.entered(r, s, tally) {
                            return;
                        }
                        self.reap(w, s, &mut st, &mut gen, tally);
                    }
                }
            }
        }
    }

    /// Whether an `io_uring_enter` went well enough to go on (a timeout or an interruption
    /// does); else counts the failure and stops the run.
    fn entered(&self, r: std::io::Result<usize>, s: &mut Setup, tally: &mut Tally) -> bool {
        match r {
            Ok(_) => true,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::ETIME)
                ) =>
            {
                true
            }
            Err(e) => {
                let path = &self.paths[self.sub.files[0]];
                tally.fail(IoKind::Read, path, 0, &format!("io_uring_enter: {e}"));
                self.control.stop();
                // Nothing more can be reaped safely: keep the slab (leak) rather than free it
                // under the kernel.
                std::mem::forget(std::mem::replace(&mut s.slab, AlignedBuf::new(1)));
                false
            }
        }
    }

    /// Takes the completions there are (without waiting), all reaped now; returns how many.
    fn reap(
        &self,
        w: &crate::workload::Workload,
        s: &mut Setup,
        st: &mut Slots,
        gen: &mut OpGen,
        tally: &mut Tally,
    ) -> usize {
        let bs = w.bs;
        let now = Instant::now();
        let (mut n, mut done_ops, mut done_bytes) = (0usize, 0u64, 0u64);
        for cqe in s.ring.completion() {
            let slot = cqe.user_data() as usize;
            let Some(op) = st.ops.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            n += 1;
            st.in_flight -= 1;
            st.free.push(slot);
            let path = &self.paths[op.file];
            let res = cqe.result();
            if res < 0 {
                tally.fail(op.kind, path, op.offset, &errno_reason(res));
                continue;
            }
            if !op.kind.is_sync() && res as usize != bs {
                let what = format!("short transfer ({res} of {bs} bytes)");
                tally.fail(op.kind, path, op.offset, &what);
                continue;
            }
            if op.kind == IoKind::Read && w.verify {
                tally.checks.verified += 1;
                let off = slot * s.stride;
                if let Some(m) = self.patterns[op.file].check(&s.slab[off..off + bs], op.offset) {
                    tally.checks.mismatch(path, m);
                }
            }
            let times = Times::new(st.intended[slot], st.start[slot], st.issue[slot], now);
            tally.ok(op.kind, res as u64, times);
            gen.write_done(&op);
            if !op.kind.is_sync() {
                done_ops += 1;
                done_bytes += bs as u64;
            }
        }
        self.control.add(self.sub.index, done_ops, done_bytes);
        n
    }
}

/// A thread's operations in flight, by slot.
struct Slots {
    ops: Vec<Option<Op>>,
    /// Intended start (open loop).
    intended: Vec<Option<Instant>>,
    /// When prepared, and when the `io_uring_enter` that submitted it returned.
    start: Vec<Instant>,
    issue: Vec<Instant>,
    free: Vec<usize>,
    in_flight: usize,
}

/// Submits what is queued without waiting, with GETEVENTS so that deferred task work runs (as
/// fio's submit does: `io_uring_enter(n, 0, GETEVENTS)`); with SQPOLL, the crate's submit.
fn submit(ring: &mut IoUring, sqpoll: bool) -> std::io::Result<usize> {
    if sqpoll {
        return ring.submit();
    }
    let n = ring.submission().len();
    // SAFETY: no argument pointer (None), flags GETEVENTS only, min_complete 0: a plain submit
    // of the `n` entries the ring holds.
    unsafe {
        ring.submitter().enter::<libc::sigset_t>(
            n as u32,
            0,
            io_uring::EnterFlags::GETEVENTS.bits(),
            None,
        )
    }
}
