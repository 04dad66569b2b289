//! The tokio side shared by `--mode async` (every engine) and the tokio-fs engine in the other
//! modes: a multi-thread runtime, the load split into groups (one table row each) of tokio tasks,
//! the measured phase, and the per-task loops.
//!
//! A task either runs its own loop (tokio-fs: one `tokio::fs::File` operation at a time), or
//! [`pipeline`]: it keeps `depth` requests of a [`TaskIo`] in flight, awaiting the oldest. With
//! depth 1 (the default of `--mode async`) that is "await one request, issue the next".

use super::{DoneGuard, Output, RunCtx};
use crate::control::{Control, Measure};
use crate::error::BenchError;
use crate::pace::{self, Wait};
use crate::pattern::Pattern;
use crate::tally::{Tally, Times};
use crate::workload::{IoKind, Mode, Next, Op, OpGen, Submitter, Workload};
use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How a run is laid out on tokio.
pub struct Plan {
    /// Runtime worker threads.
    pub workers: usize,
    /// One table row each; a group's files and `--ops` quota are split over its tasks.
    pub groups: Vec<Submitter>,
    /// tokio tasks per group.
    pub per_group: usize,
    /// Operations each task keeps in flight (for [`pipeline`]).
    pub depth: usize,
    /// What a row is: "task" in `--mode async`, else "client".
    pub row_kind: &'static str,
}

impl Plan {
    /// `--mode async`: one group per `--tasks` task on `--clients` workers. Other modes: one group
    /// per submitter (shard or client), on one worker per CPU of the placement.
    pub fn new(ctx: &RunCtx, per_group: usize, depth: usize) -> Self {
        let (workers, row_kind) = match ctx.w.mode {
            Mode::Async => (ctx.w.clients, "task"),
            Mode::InShard | Mode::Routed | Mode::Tasks => (ctx.cpus.len(), "client"),
        };
        Plan {
            workers: workers.max(1),
            groups: ctx.submitters(),
            per_group: per_group.max(1),
            depth: depth.max(1),
            row_kind,
        }
    }
}

/// What one tokio task works with.
pub struct TaskJob {
    pub w: Arc<Workload>,
    /// Global indexes of the files the task uses.
    pub files: Vec<usize>,
    /// Reads+writes to issue (None: until told to stop).
    pub quota: Option<u64>,
    /// Generator stream: distinct per task.
    pub stream: usize,
    pub streams: usize,
    /// Tasks sharing one submitter's open-loop rate.
    pub rate_share: usize,
    /// The task's progress slot in `control`.
    pub index: usize,
    /// Operations to keep in flight.
    pub depth: usize,
    pub paths: Arc<Vec<PathBuf>>,
    pub patterns: Arc<Vec<Pattern>>,
    pub control: Arc<Control>,
}

impl TaskJob {
    /// The task's operation sequence.
    pub fn gen(&self) -> OpGen {
        OpGen::new(
            &self.w,
            self.files.clone(),
            self.quota,
            self.stream,
            self.streams,
        )
        .rate_share(self.rate_share)
    }
}

/// A task's future, as the engines hand it to [`run`].
pub type TaskFuture = Pin<Box<dyn Future<Output = Tally> + Send>>;

/// Starts the runtime, warms the files, spawns `spawn(job)` for every task of `plan`, runs the
/// measured phase and returns one row per group. `notes` go to the report, after one describing
/// the plan.
pub fn run(
    ctx: &RunCtx,
    plan: &Plan,
    mut notes: Vec<String>,
    spawn: impl Fn(TaskJob) -> TaskFuture,
    on_ramp_end: &mut dyn FnMut(),
) -> Result<Output, BenchError> {
    let w = ctx.w;
    let per = plan.per_group;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(plan.workers)
        .enable_time()
        .thread_name("ringbench-tokio")
        .build()
        .map_err(|e| BenchError::runtime(format!("starting the tokio runtime: {e}")))?;
    let paths = Arc::new(ctx.files.iter().map(|f| f.path.clone()).collect::<Vec<_>>());
    let patterns = Arc::new(ctx.patterns());
    let tasks = plan.groups.len() * per;
    let control = Arc::new(Control::new(tasks));
    let wl = Arc::new(w.clone());

    let resident = ctx.warm()?;
    let meas = Measure::start();
    let handles: Vec<_> = jobs(
        &plan.groups,
        per,
        plan.depth,
        &wl,
        &paths,
        &patterns,
        &control,
    )
    .into_iter()
    .map(|(_, job)| rt.spawn(spawn(job)))
    .collect();
    let (elapsed, cpu) = control.supervise(tasks, meas, w.duration, ctx.progress, on_ramp_end);
    let per_task: Vec<Tally> = rt.block_on(async {
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await.unwrap_or_default());
        }
        out
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    let tallies = plan
        .groups
        .iter()
        .zip(group_tallies(&per_task, per))
        .map(|(s, t)| (Some(s.index), None, None, t))
        .collect();
    let grouped = if per > 1 {
        format!(" ({per} per {})", plan.row_kind)
    } else {
        String::new()
    };
    notes.insert(
        0,
        format!(
            "{} tokio worker thread(s), {tasks} tokio task(s){grouped}, {} operation(s) in flight \
             per tokio task",
            plan.workers, plan.depth
        ),
    );
    Ok(Output::from_tallies(
        plan.row_kind,
        tallies,
        elapsed,
        cpu,
        resident,
        notes,
    ))
}

/// The jobs of `per` tasks for each of `groups` (with the group's submitter index): each group's
/// files and `--ops` quota are split over its tasks; every task has its own generator stream and
/// progress slot.
pub fn jobs(
    groups: &[Submitter],
    per: usize,
    depth: usize,
    w: &Arc<Workload>,
    paths: &Arc<Vec<PathBuf>>,
    patterns: &Arc<Vec<Pattern>>,
    control: &Arc<Control>,
) -> Vec<(usize, TaskJob)> {
    let mut out = Vec::with_capacity(groups.len() * per);
    for (k, s) in groups.iter().enumerate() {
        for d in 0..per {
            let quota = s
                .quota
                .map(|q| q / per as u64 + u64::from((d as u64) < q % per as u64));
            let job = TaskJob {
                w: Arc::clone(w),
                files: s.files.clone(),
                quota,
                stream: s.index * per + d,
                streams: groups.len() * per,
                rate_share: per,
                index: k * per + d,
                depth,
                paths: Arc::clone(paths),
                patterns: Arc::clone(patterns),
                control: Arc::clone(control),
            };
            out.push((s.index, job));
        }
    }
    out
}

/// One tally per group of `per` consecutive task tallies (each group's tasks merged).
pub fn group_tallies(per_task: &[Tally], per: usize) -> Vec<Tally> {
    per_task
        .chunks(per.max(1))
        .map(|ts| {
            let mut t = Tally::default();
            for x in ts {
                t.merge(x);
            }
            t
        })
        .collect()
}

/// An I/O interface a task drives through [`pipeline`].
pub trait TaskIo: Send + Sync + 'static {
    /// A data buffer; reads hand it back with the data.
    type Buf: std::ops::Deref<Target = [u8]> + Send + 'static;
    /// One operation in flight.
    type Pending: Future + Unpin + Send + 'static;

    /// The buffer for `op` (a spare one where it can be reused), holding the pattern for a
    /// verified write.
    fn buffer(&self, job: &TaskJob, op: &Op, spare: &mut Vec<Self::Buf>) -> Self::Buf;

    /// Starts `op`.
    fn issue(self: &Arc<Self>, op: &Op, buf: Self::Buf) -> Self::Pending;

    /// Whether `p` has finished (awaiting it will not wait).
    fn is_done(p: &Self::Pending) -> bool;

    /// The buffer back, if any, and the bytes transferred or why the operation failed.
    fn result(out: <Self::Pending as Future>::Output)
        -> (Option<Self::Buf>, Result<usize, String>);
}

/// A task keeping `job.depth` operations of `io` in flight: issues up to the depth, awaits the
/// oldest, takes every other one already done with the same clock reading, and refills. lat is
/// from just before the call that starts an operation (start and issue in one) to its
/// completion as the task sees it; co_lat in open loop from its intended start.
pub async fn pipeline<E: TaskIo>(io: Arc<E>, job: TaskJob) -> Tally {
    let _done = DoneGuard(&job.control);
    let mut tally = Tally::default();
    let mut gen = job.gen();
    if gen.paced() {
        pace::precise_timers();
    }
    let mut q: VecDeque<(E::Pending, Op, Instant, Option<Instant>)> =
        VecDeque::with_capacity(job.depth);
    let mut spare: Vec<E::Buf> = Vec::with_capacity(job.depth);
    loop {
        let mut waiting = None;
        if !job.control.stopped() {
            while q.len() < job.depth {
                let (op, start) = match gen.next() {
                    Next::Go(op, start) => (op, start),
                    Next::Wait(at) => {
                        waiting = Some(at);
                        break;
                    }
                    Next::Done => break,
                };
                let buf = io.buffer(&job, &op, &mut spare);
                let t0 = Instant::now();
                q.push_back((io.issue(&op, buf), op, t0, start));
            }
        }
        let Some(front) = q.front_mut() else {
            match waiting {
                None => break,
                Some(at) => {
                    pace_wait(at).await;
                    continue;
                }
            }
        };
        // Open loop with a free slot: the oldest, or the time to issue the next.
        let out = match waiting {
            None => (&mut front.0).await,
            Some(at) => match first_or(&mut front.0, pace_timer(at)).await {
                Some(out) => out,
                None => continue,
            },
        };
        let Some((_, op, t0, start)) = q.pop_front() else {
            break;
        };
        let now = Instant::now();
        let mut done = |op: Op, t0: Instant, start: Option<Instant>, out| {
            let (buf, r) = E::result(out);
            let data = buf.as_deref().unwrap_or(&[]);
            let times = Times::at_call(start, t0, now);
            record(&job, &mut gen, &mut tally, op, r, data, times);
            spare.extend(buf);
        };
        done(op, t0, start, out);
        while q.front().is_some_and(|(p, _, _, _)| E::is_done(p)) {
            let Some((p, op, t0, start)) = q.pop_front() else {
                break;
            };
            done(op, t0, start, p.await);
        }
    }
    tally
}

/// How late this task's timer may fire: a shard task's (an io_uring timeout: the thread's wake-up
/// delay) or tokio's (1 ms ticks).
fn timer_window() -> Duration {
    if ringshard::local().is_some() {
        pace::wake_window()
    } else {
        Duration::from_millis(2)
    }
}

/// Sleeps `d` on the runtime the task runs on: the shard's ring (`--mode tasks`) or tokio's timer.
fn runtime_sleep(d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    match ringshard::local() {
        Some(shard) => Box::pin(shard.sleep(d)),
        None => Box::pin(tokio::time::sleep(d)),
    }
}

/// Ready on its second poll: lets the other tasks run once.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// What to wait on before looking at the schedule again: a sleep until shortly before `at`, or,
/// when it is close, one yield (the task polls until the start is due).
pub fn pace_timer(at: Instant) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    match pace::wait_for(at, Instant::now(), timer_window()) {
        Wait::Block(d) => runtime_sleep(d),
        Wait::Poll => Box::pin(YieldOnce(false)),
    }
}

/// Waits (with nothing in flight) until `at`, or at most [`pace::MAX_BLOCK`].
pub async fn pace_wait(at: Instant) {
    let at = at.min(Instant::now() + pace::MAX_BLOCK);
    while Instant::now() < at {
        pace_timer(at).await;
    }
}

/// The output of `first` if it completes before `timer`, else None (`first` stays in flight).
pub async fn first_or<F: Future + Unpin>(
    first: &mut F,
    mut timer: Pin<Box<dyn Future<Output = ()> + Send>>,
) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = Pin::new(&mut *first).poll(cx) {
            return Poll::Ready(Some(out));
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// Counts one finished operation: errors, short transfers, the `--verify` check of a read, its
/// latency, the fsync bookkeeping and the progress counters.
pub fn record(
    job: &TaskJob,
    gen: &mut OpGen,
    tally: &mut Tally,
    op: Op,
    r: Result<usize, String>,
    buf: &[u8],
    times: Times,
) {
    let bs = job.w.bs;
    let path = &job.paths[op.file];
    match r {
        Err(reason) => tally.fail(op.kind, path, op.offset, &reason),
        Ok(n) if !op.kind.is_sync() && n != bs => {
            let what = format!("short transfer ({n} of {bs} bytes)");
            tally.fail(op.kind, path, op.offset, &what);
        }
        Ok(n) => {
            if op.kind == IoKind::Read && job.w.verify {
                tally.checks.verified += 1;
                match buf.get(..bs) {
                    Some(data) => {
                        if let Some(m) = job.patterns[op.file].check(data, op.offset) {
                            tally.checks.mismatch(path, m);
                        }
                    }
                    None => {
                        let what = format!("read returned {} of {bs} bytes", buf.len());
                        tally.fail(op.kind, path, op.offset, &what);
                        return;
                    }
                }
            }
            tally.ok(op.kind, n as u64, times);
            gen.write_done(&op);
            if !op.kind.is_sync() {
                job.control.add(job.index, 1, bs as u64);
            }
        }
    }
}
