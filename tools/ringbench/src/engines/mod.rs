//! The engines: ringshard (in-shard, routed and async) and the baselines it is compared with. Each
//! one sets itself up, warms the files, runs the measured phase and reports what it counted.

pub mod fio;
pub mod inline_nowait;
pub mod pread_pool;
pub mod raw_uring;
pub mod ringshard_async;
pub mod ringshard_inshard;
pub mod ringshard_routed;
pub mod ringshard_tasks;
pub mod spawn_blocking;
pub mod tokio_fs;
pub mod tokio_tasks;

use crate::control::CpuTimes;
use crate::error::BenchError;
use crate::files::{self, BenchFile};
use crate::pattern::Pattern;
use crate::tally::{Checks, LatSummary, Tally};
use crate::workload::{plan_submitters, EngineKind, Mode, Submitter, TokioApi, Workload};
use ringshard::router::shard_for;
use ringshard::ExecutorStats;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

/// What one run works with.
#[derive(Clone, Copy)]
pub struct RunCtx<'a> {
    pub w: &'a Workload,
    /// The placement: one shard (or baseline thread) per CPU, in order.
    pub cpus: &'a [usize],
    /// NUMA node of each CPU in `cpus`.
    pub nodes: &'a [Option<u32>],
    pub files: &'a [BenchFile],
    /// Show the live progress line.
    pub progress: bool,
    /// The ringshard backend (`ringshard-threads` runs `ringshard` with `Threads`).
    pub backend: ringshard::BackendChoice,
}

impl RunCtx<'_> {
    /// The load generators: in-shard, one per CPU of the placement with the files the router
    /// gives it; routed, `--clients` of them over every file; async, `--tasks` of them over every
    /// file.
    pub fn submitters(&self) -> Vec<Submitter> {
        match self.w.mode {
            Mode::InShard | Mode::Tasks => {
                let n = self.cpus.len();
                let owner = |i: usize| shard_for(self.files[i].key, n);
                plan_submitters(n, self.files.len(), Some(&owner), self.w.ops)
            }
            Mode::Routed => plan_submitters(self.w.clients, self.files.len(), None, self.w.ops),
            Mode::Async => plan_submitters(self.w.tasks, self.files.len(), None, self.w.ops),
        }
    }

    /// The CPU and node for thread `i` of a baseline (round-robin over the placement).
    pub fn cpu_of(&self, i: usize) -> (usize, Option<u32>) {
        let k = i % self.cpus.len().max(1);
        (self.cpus[k], self.nodes[k])
    }

    /// Reads the files into the page cache right before the measured phase (not with --direct;
    /// with --cold, drops them from it instead). The share of their pages cached then.
    pub fn warm(&self) -> Result<Option<f64>, BenchError> {
        if self.w.direct {
            return Ok(None);
        }
        if self.w.cold {
            return files::drop_cached(self.files, self.w.size).map(Some);
        }
        files::warm(self.files, self.w.size).map(Some)
    }

    /// Each file's verification pattern, by position in the run's file list.
    pub fn patterns(&self) -> Vec<Pattern> {
        self.files
            .iter()
            .map(|f| Pattern::new(self.w.seed, f.number))
            .collect()
    }

    /// Opens the files with std (O_DIRECT when asked), by position in the run's file list.
    pub fn open_std(&self) -> Result<Vec<File>, BenchError> {
        self.files
            .iter()
            .map(|f| {
                let mut o = OpenOptions::new();
                o.read(true).write(self.w.rw.writes());
                if self.w.direct {
                    o.custom_flags(libc::O_DIRECT);
                }
                o.open(&f.path)
                    .map_err(|e| BenchError::runtime(format!("opening {}: {e}", f.path.display())))
            })
            .collect()
    }
}

/// One row of the per-thread table: a shard, a thread or a client.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Row {
    pub id: Option<usize>,
    pub cpu: Option<usize>,
    pub numa_node: Option<u32>,
    pub reads: u64,
    pub writes: u64,
    pub fsyncs: u64,
    pub bytes: u64,
    pub errors: u64,
    pub lat_us: LatSummary,
}

impl Row {
    pub fn ops(&self) -> u64 {
        self.reads + self.writes
    }

    fn from_tally(id: Option<usize>, cpu: Option<usize>, node: Option<u32>, t: &Tally) -> Self {
        Row {
            id,
            cpu,
            numa_node: node,
            reads: t.reads(),
            writes: t.writes(),
            fsyncs: t.syncs(),
            bytes: t.bytes(),
            errors: t.errors,
            lat_us: LatSummary::from_hist(&t.rw_lat()),
        }
    }
}

/// A thread's tally with its row label: (index, pinned CPU, NUMA node, tally).
pub type RowTally = (Option<usize>, Option<usize>, Option<u32>, Tally);

/// What an engine measured.
pub struct Output {
    /// What a row is: "shard", "thread", "client" or "task".
    pub row_kind: &'static str,
    pub rows: Vec<Row>,
    pub total: Row,
    pub elapsed: Duration,
    pub cpu: CpuTimes,
    pub checks: Checks,
    /// Share of the files resident in the page cache after warming (None with --direct).
    pub resident: Option<f64>,
    /// ringshard's own merged statistics (elapsed set to the measured phase).
    pub library: Option<ExecutorStats>,
    /// Whether `rows`/`total` latencies were measured by the callers (else by the shards).
    pub client_latency: bool,
    pub notes: Vec<String>,
    /// Every submitter's counts merged: per-kind latency (slat, clat, lat).
    pub tally: Tally,
    /// Per-kind reports given as such (fio's), instead of from `tally`.
    pub kinds: Option<std::collections::BTreeMap<&'static str, crate::report::KindReport>>,
}

impl Output {
    /// Builds the rows and the exact total from per-thread tallies.
    #[allow(clippy::too_many_arguments)]
    pub fn from_tallies(
        row_kind: &'static str,
        tallies: Vec<RowTally>,
        elapsed: Duration,
        cpu: CpuTimes,
        resident: Option<f64>,
        notes: Vec<String>,
    ) -> Self {
        let mut all = Tally::default();
        let mut rows = Vec::with_capacity(tallies.len());
        let mut nodes = Vec::new();
        for (id, c, node, t) in &tallies {
            all.merge(t);
            rows.push(Row::from_tally(*id, *c, *node, t));
            nodes.push(*node);
        }
        let node = nodes
            .first()
            .copied()
            .flatten()
            .filter(|n| nodes.iter().all(|m| *m == Some(*n)));
        let total = Row::from_tally(None, None, node, &all);
        Output {
            row_kind,
            rows,
            total,
            elapsed,
            cpu,
            checks: all.checks.clone(),
            resident,
            library: None,
            client_latency: true,
            notes,
            tally: all,
            kinds: None,
        }
    }
}

/// Runs the workload on one engine.
pub fn run(engine: EngineKind, ctx: &RunCtx) -> Result<Output, BenchError> {
    if ctx.files.is_empty() {
        return Err(BenchError::usage(
            "no files to run on: pass --files N (N >= 1)",
        ));
    }
    match (engine, ctx.w.mode) {
        (EngineKind::RingshardThreads, _) => run(
            EngineKind::Ringshard,
            &RunCtx {
                backend: ringshard::BackendChoice::Threads,
                ..*ctx
            },
        ),
        (EngineKind::Ringshard, Mode::InShard) => ringshard_inshard::run(ctx),
        (EngineKind::Ringshard, Mode::Routed) => ringshard_routed::run(ctx),
        (EngineKind::Ringshard, Mode::Async) => ringshard_async::run(ctx),
        (EngineKind::Ringshard, Mode::Tasks) => ringshard_tasks::run(ctx),
        (EngineKind::RingshardInshard, Mode::Async) => Err(BenchError::usage(
            "--engine ringshard-inshard has no async form: use --mode in-shard or tasks",
        )),
        (EngineKind::RingshardInshard, _) => ringshard_inshard::run(ctx),
        (EngineKind::PreadPool | EngineKind::TokioFs | EngineKind::SpawnBlocking, Mode::Tasks) => {
            Err(BenchError::usage(format!(
                "--engine {} has no tasks form: --mode tasks runs ringshard, ringshard-inshard \
                 or raw-uring",
                engine.name()
            )))
        }
        (EngineKind::RawUring | EngineKind::PreadPool, Mode::Async) => {
            Err(BenchError::usage(format!(
                "--engine {} has no async form: --mode async runs ringshard, inline-nowait, spawn-blocking or \
                 tokio-fs",
                engine.name()
            )))
        }
        (EngineKind::Fio, _) => fio::run(ctx),
        (EngineKind::RawUring, _) => raw_uring::run(ctx),
        (EngineKind::PreadPool, _) => pread_pool::run(ctx),
        (EngineKind::TokioFs, _) => tokio_fs::run(ctx, ctx.w.tokio_api),
        (EngineKind::SpawnBlocking, _) => tokio_fs::run(ctx, TokioApi::ReadAt),
        (EngineKind::InlineNowait, Mode::Tasks) => Err(BenchError::usage(
            "--engine inline-nowait has no tasks form: --mode tasks runs ringshard, \
             ringshard-inshard or raw-uring",
        )),
        (EngineKind::InlineNowait, _) => inline_nowait::run(ctx),
    }
}

/// Keeps `buf` for reuse if it has an allocation and fewer than `max` are kept. Results that
/// bring no buffer back (fsync) or more than are taken (writes whose data is built fresh) must
/// not make the spare list grow with the run: a soak found one that grew by a 4 KiB buffer per
/// fsync (850 MiB in 10 minutes).
pub fn keep_spare(spare: &mut Vec<Vec<u8>>, buf: Option<Vec<u8>>, max: usize) {
    if let Some(b) = buf {
        if b.capacity() > 0 && spare.len() < max {
            spare.push(b);
        }
    }
}

/// Latency in ns between two instants (0 if `to` is earlier).
#[inline]
pub fn ns_between(from: std::time::Instant, to: std::time::Instant) -> u64 {
    to.saturating_duration_since(from).as_nanos() as u64
}

/// Calls `Control::done` when dropped, so a submitter is counted as finished on every path.
pub struct DoneGuard<'a>(pub &'a crate::control::Control);

impl Drop for DoneGuard<'_> {
    fn drop(&mut self) {
        self.0.done();
    }
}

/// Pins the calling thread to `cpu` (best effort; false if refused).
pub fn pin(cpu: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
}

/// An operation in flight under a request token: the operation, when it started, when the call
/// that sent it returned (its issue), and its intended start (open loop).
pub type Sent = (
    crate::workload::Op,
    std::time::Instant,
    std::time::Instant,
    Option<std::time::Instant>,
);
