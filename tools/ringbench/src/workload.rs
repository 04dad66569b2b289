//! What to run: the validated workload, and the per-submitter operation generator.
//!
//! Every engine draws its operations from [`OpGen`], seeded by (`--seed`, submitter index), so two
//! engines given the same workload issue the same sequence of (file, offset, kind) per submitter.

use crate::distribution::{BlockPicker, Distribution};
use crate::pace::{Pacer, RateProcess, RateWait};
use clap::ValueEnum;
use serde::Serialize;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The I/O pattern (`--rw`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rw {
    /// Random reads.
    Randread,
    /// Random writes.
    Randwrite,
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads and writes, `--rwmix-read` percent reads.
    Randrw,
}

impl Rw {
    pub fn name(self) -> &'static str {
        match self {
            Rw::Randread => "randread",
            Rw::Randwrite => "randwrite",
            Rw::Read => "read",
            Rw::Write => "write",
            Rw::Randrw => "randrw",
        }
    }

    pub fn writes(self) -> bool {
        !matches!(self, Rw::Randread | Rw::Read)
    }

    pub fn reads(self) -> bool {
        !matches!(self, Rw::Randwrite | Rw::Write)
    }

    pub fn random(self) -> bool {
        matches!(self, Rw::Randread | Rw::Randwrite | Rw::Randrw)
    }
}

/// Where the load is generated (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Inside each shard (ringshard: `Executor::submit_to`); baselines use one thread per shard.
    InShard,
    /// From `--clients` caller threads through the public request API.
    Routed,
    /// From `--tasks` tokio tasks on a multi-thread runtime with `--clients` worker threads.
    Async,
    /// From `--tasks` async tasks on each shard (ringshard: `Executor::spawn_on`), through the
    /// request API, which on a file's own shard skips the channel. Baselines: ringshard's
    /// in-shard loop and one raw io_uring loop per shard CPU.
    Tasks,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::InShard => "in-shard",
            Mode::Routed => "routed",
            Mode::Async => "async",
            Mode::Tasks => "tasks",
        }
    }
}

/// Which implementation does the I/O (`--engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    /// The ringshard executor.
    Ringshard,
    /// One plain io_uring loop per thread: fixed buffers, registered files, batching.
    RawUring,
    /// Worker threads doing pread/pwrite, fed by a channel.
    PreadPool,
    /// tokio::fs (blocking-pool file I/O).
    TokioFs,
    /// tokio `spawn_blocking` around pread/pwrite on a shared `std::fs::File`.
    SpawnBlocking,
    /// ringshard's in-shard loop (`submit_to` with the raw ring), in any mode: the reference
    /// `--mode tasks` is compared with.
    RingshardInshard,
    /// The ringshard executor on its threads backend (what runs where io_uring is blocked).
    RingshardThreads,
    /// fio with its io_uring engine, given the same workload (in --compare when installed).
    Fio,
    /// tokio tasks calling `preadv2(RWF_NOWAIT)` themselves, `spawn_blocking` for what would
    /// block (misses, writes, syncs, O_DIRECT).
    InlineNowait,
}

impl EngineKind {
    /// The engines `--compare` runs in `mode`, ringshard first (the ratios are to it).
    pub fn compared(mode: Mode) -> &'static [EngineKind] {
        match mode {
            Mode::Async => &[
                EngineKind::Ringshard,
                EngineKind::InlineNowait,
                EngineKind::SpawnBlocking,
                EngineKind::TokioFs,
            ],
            Mode::Tasks => &[
                EngineKind::Ringshard,
                EngineKind::RingshardInshard,
                EngineKind::RawUring,
                EngineKind::Fio,
            ],
            Mode::InShard | Mode::Routed => &[
                EngineKind::Ringshard,
                EngineKind::RingshardThreads,
                EngineKind::RawUring,
                EngineKind::PreadPool,
                EngineKind::InlineNowait,
                EngineKind::TokioFs,
                EngineKind::Fio,
            ],
        }
    }

    /// Whether the engine runs as tokio tasks in `--mode async`.
    pub fn has_async_form(self) -> bool {
        Self::compared(Mode::Async).contains(&self)
    }

    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Ringshard => "ringshard",
            EngineKind::RawUring => "raw-uring",
            EngineKind::PreadPool => "pread-pool",
            EngineKind::TokioFs => "tokio-fs",
            EngineKind::SpawnBlocking => "spawn-blocking",
            EngineKind::RingshardInshard => "ringshard-inshard",
            EngineKind::RingshardThreads => "ringshard-threads",
            EngineKind::Fio => "fio",
            EngineKind::InlineNowait => "inline-nowait",
        }
    }
}

/// Which ringshard request API the routed and async engines use (`--api`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// A `Session` per client thread or task: tokens in, results out in batches, buffers moved in
    /// and back.
    #[default]
    Session,
    /// One `Completion` per request (`Executor::read_into`, `write`, `fsync`, `batch`).
    Completion,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Api::Session => "session",
            Api::Completion => "completion",
        }
    }

    /// Whether `--api` means anything for `engine` in `mode` (ringshard, routed or async).
    pub fn applies(engine: EngineKind, mode: Mode) -> bool {
        engine == EngineKind::Ringshard && mode != Mode::InShard
    }
}

/// How the tokio-fs engine does one operation (`--tokio-api`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokioApi {
    /// `tokio::fs::File`: `seek` then `read_exact` / `write_all` + `flush`.
    #[default]
    SeekRead,
    /// `spawn_blocking` around `FileExt::read_at` / `write_at` on a shared `std::fs::File`.
    ReadAt,
}

/// Which CPUs the shards (and the baselines' threads) use.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlacementSpec {
    pub shards: Option<usize>,
    pub cores: Option<Vec<usize>>,
    pub numa_nodes: Option<Vec<u32>>,
    pub physical_cores: bool,
}

/// The validated workload: every flag, in units.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    pub rw: Rw,
    pub rwmix_read: u32,
    pub bs: usize,
    pub size: u64,
    /// `None`: one file per shard, picked so that the router gives every shard one.
    pub files: Option<usize>,
    /// Operations in flight per submitter (per shard, client, or task in `--mode async`).
    pub iodepth: usize,
    #[serde(serialize_with = "ser_opt_secs")]
    pub duration: Option<Duration>,
    pub ops: Option<u64>,
    /// Sampling interval of ops, mismatches, errors, RSS and descriptors (`--report-every`).
    #[serde(serialize_with = "ser_opt_secs")]
    pub report_every: Option<Duration>,
    pub direct: bool,
    /// Drop the files from the page cache before measuring, instead of warming them.
    pub cold: bool,
    /// Sync a file after every N writes to it (0: never): fsync, or fdatasync with `datasync`.
    pub fsync_every: u64,
    pub datasync: bool,
    /// How random offsets are drawn (`--random-distribution`).
    pub distribution: Distribution,
    /// Percent of the operations of a random pattern at random offsets; the others continue
    /// sequentially from the previous one (`--percentage-random`, fio's `percentage_random`).
    pub percentage_random: u32,
    /// Open loop: intended starts per second of each submitter (`--rate-iops`, or `--rate`
    /// divided by `--bs`); None: closed loop.
    pub rate_iops: Option<f64>,
    pub rate_process: RateProcess,
    /// How an open-loop submitter waits for its next start (`--rate-wait`).
    pub rate_wait: RateWait,
    /// `--rate-per-direction`: a mix's rate split between reads and writes by `rwmix_read`, each
    /// with its own schedule (fio's `rate_iops=R,W`).
    pub rate_per_direction: bool,
    /// Run this long before measuring (`--ramp-time`).
    #[serde(serialize_with = "ser_opt_secs")]
    pub ramp: Option<Duration>,
    /// Latency percentiles reported per operation kind (`--percentiles`).
    pub percentiles: Vec<f64>,
    /// The job's name (`--name`, a job file section), for runs of several jobs.
    pub name: Option<String>,
    pub dir: Option<PathBuf>,
    pub seed: u64,
    pub verify: bool,
    pub placement: PlacementSpec,
    pub sqpoll: Option<u32>,
    pub spin_us: Option<u64>,
    /// ringshard's inline read limit (0: inline reads off; `None`: the library's default).
    pub inline_limit: Option<usize>,
    pub mode: Mode,
    /// Caller threads (routed) or tokio worker threads (async).
    pub clients: usize,
    /// tokio tasks (async).
    pub tasks: usize,
    pub api: Api,
    pub engine: EngineKind,
    pub pool_threads: Option<usize>,
    pub tokio_api: TokioApi,
}

fn ser_opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

impl Workload {
    /// Blocks per file.
    pub fn blocks(&self) -> u64 {
        self.size / self.bs as u64
    }

    /// "4k randread" style label.
    pub fn label(&self) -> String {
        let mut s = format!(
            "{} {}",
            crate::cli::fmt_size(self.bs as u64),
            self.rw.name()
        );
        if self.rw == Rw::Randrw {
            s.push_str(&format!(" ({}% reads)", self.rwmix_read));
        }
        s
    }
}

/// One operation to issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    pub kind: IoKind,
    /// Index into the run's file list.
    pub file: usize,
    /// Index into this generator's own file list (for fsync bookkeeping).
    pub local: u32,
    pub offset: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum IoKind {
    Read,
    Write,
    Fsync,
    Fdatasync,
}

impl IoKind {
    pub const ALL: [IoKind; 4] = [
        IoKind::Read,
        IoKind::Write,
        IoKind::Fsync,
        IoKind::Fdatasync,
    ];

    pub fn name(self) -> &'static str {
        match self {
            IoKind::Read => "read",
            IoKind::Write => "write",
            IoKind::Fsync => "fsync",
            IoKind::Fdatasync => "fdatasync",
        }
    }

    /// fsync or fdatasync: no data, no offset.
    #[inline]
    pub fn is_sync(self) -> bool {
        matches!(self, IoKind::Fsync | IoKind::Fdatasync)
    }
}

/// splitmix64 as a random number generator (for rand_distr's samplers).
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    #[inline]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }
}

impl rand::TryRng for SplitMix {
    type Error = std::convert::Infallible;

    #[inline]
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok((self.next() >> 32) as u32)
    }

    #[inline]
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.next())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}

/// What a submitter does next (see [`OpGen::next`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Issue this operation; in open loop with its intended start time.
    Go(Op, Option<Instant>),
    /// Open loop: nothing is due before this time.
    Wait(Instant),
    /// The quota is used up (or the submitter has no files).
    Done,
}

/// splitmix64: a fast, well-mixed 64-bit generator step / hash.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The operation sequence of one submitter.
#[derive(Debug)]
pub struct OpGen {
    rng: SplitMix,
    files: Vec<usize>,
    /// Offsets of random ops, per local file (None: uniform, drawn inline).
    pickers: Option<Vec<BlockPicker>>,
    percentage_random: u64,
    /// The previous block of each local file (where a sequential step of a random pattern goes on).
    last: Vec<u64>,
    pacer: Option<Pacer>,
    /// `--rate-per-direction` with a mix: the writes' own schedule (`pacer` is the reads').
    write_pacer: Option<Pacer>,
    sync_kind: IoKind,
    blocks: u64,
    bs: u64,
    rw: Rw,
    read_pct: u64,
    seq: Vec<u64>,
    remaining: Option<u64>,
    fsync_every: u64,
    since_fsync: Vec<u64>,
    fsyncs: VecDeque<(usize, u32)>,
}

impl OpGen {
    /// The generator of submitter `sub` (one of `submitters`).
    pub fn for_submitter(w: &Workload, sub: &Submitter, submitters: usize) -> Self {
        OpGen::new(w, sub.files.clone(), sub.quota, sub.index, submitters)
    }

    /// `files`: the global indexes this submitter uses; `quota`: reads+writes to issue (None: no
    /// limit); `submitter`/`submitters` spread the sequential starting points.
    pub fn new(
        w: &Workload,
        files: Vec<usize>,
        quota: Option<u64>,
        submitter: usize,
        submitters: usize,
    ) -> Self {
        let blocks = w.blocks().max(1);
        let start = blocks * submitter as u64 / submitters.max(1) as u64;
        let n = files.len();
        let seed = mix64(w.seed ^ mix64(0x5eed_0000 + submitter as u64));
        // fio's rate_iops=R,W: reads and writes on schedules of their own.
        let split = w.rate_per_direction && w.rw == Rw::Randrw;
        let read_share = f64::from(w.rwmix_read.min(100)) / 100.0;
        let pickers = (!w.distribution.is_uniform()).then(|| {
            files
                .iter()
                .map(|&f| BlockPicker::new(w.distribution, blocks, mix64(w.seed ^ f as u64)))
                .collect()
        });
        OpGen {
            rng: SplitMix::new(seed),
            pickers,
            percentage_random: u64::from(w.percentage_random.min(100)),
            last: vec![start; n],
            pacer: w.rate_iops.map(|r| {
                let r = if split { r * read_share } else { r };
                Pacer::new(r, w.rate_process, mix64(seed ^ 0x9ace))
            }),
            write_pacer: w
                .rate_iops
                .filter(|_| split)
                .map(|r| Pacer::new(r * (1.0 - read_share), w.rate_process, mix64(seed ^ 0x3a1e))),
            sync_kind: if w.datasync {
                IoKind::Fdatasync
            } else {
                IoKind::Fsync
            },
            files,
            blocks,
            bs: w.bs as u64,
            rw: w.rw,
            read_pct: u64::from(w.rwmix_read),
            seq: vec![start; n],
            remaining: quota,
            fsync_every: if w.rw.writes() { w.fsync_every } else { 0 },
            since_fsync: vec![0; n],
            fsyncs: VecDeque::new(),
        }
    }

    /// Divides the open-loop rate by `k` (a submitter run as `k` tasks, each with a share).
    pub fn rate_share(mut self, k: usize) -> Self {
        for p in self.pacer.iter_mut().chain(self.write_pacer.iter_mut()) {
            p.scale(k.max(1) as f64);
        }
        self
    }

    /// Whether the generator is open loop (`--rate-iops`).
    pub fn paced(&self) -> bool {
        self.pacer.is_some()
    }

    #[inline]
    fn rand(&mut self) -> u64 {
        self.rng.next()
    }

    /// The next thing to do: an operation (in open loop, only when due, with its intended
    /// start), a time to wait for, or done. Syncs queued by [`write_done`](Self::write_done) go
    /// first and are not paced (they start when issued).
    #[inline]
    pub fn next(&mut self) -> Next {
        if !self.fsyncs.is_empty() {
            return self.next_op().map_or(Next::Done, |op| Next::Go(op, None));
        }
        if self.files.is_empty() || self.remaining == Some(0) {
            return Next::Done;
        }
        if self.write_pacer.is_some() {
            return self.next_per_direction();
        }
        let start = match &mut self.pacer {
            None => None,
            Some(p) => match p.due(Instant::now()) {
                Ok(t) => Some(t),
                Err(at) => return Next::Wait(at),
            },
        };
        self.next_op().map_or(Next::Done, |op| Next::Go(op, start))
    }

    /// [`next`](Self::next) with a schedule per direction, as fio's `rate_ddir`: the mix picks a
    /// direction; if it is not due and the other is, the other goes; if neither is, wait for the
    /// earlier.
    fn next_per_direction(&mut self) -> Next {
        let (Some(rp), Some(wp)) = (&mut self.pacer, &mut self.write_pacer) else {
            return Next::Done;
        };
        let now = Instant::now();
        let (r_at, w_at) = (rp.peek(now), wp.peek(now));
        let read = self.below(100) < self.read_pct;
        let kind = match (read, r_at <= now, w_at <= now) {
            (true, true, _) | (false, true, false) => IoKind::Read,
            (false, _, true) | (true, false, true) => IoKind::Write,
            _ => return Next::Wait(r_at.min(w_at)),
        };
        let p = if kind == IoKind::Read {
            &mut self.pacer
        } else {
            &mut self.write_pacer
        };
        let start = p.as_mut().and_then(|p| p.due(now).ok());
        self.next_op_of(Some(kind))
            .map_or(Next::Done, |op| Next::Go(op, start))
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; n > 0).
    #[inline]
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.rand()) * u128::from(n)) >> 64) as u64
    }

    /// The next operation, or `None` when the quota is used up (or the generator has no files).
    #[inline]
    pub fn next_op(&mut self) -> Option<Op> {
        self.next_op_of(None)
    }

    /// [`next_op`](Self::next_op), of this kind if given (a read or a write of a mix).
    #[inline]
    fn next_op_of(&mut self, kind: Option<IoKind>) -> Option<Op> {
        if let Some((file, local)) = self.fsyncs.pop_front() {
            return Some(Op {
                kind: self.sync_kind,
                file,
                local,
                offset: 0,
            });
        }
        if self.files.is_empty() || self.remaining == Some(0) {
            return None;
        }
        if let Some(r) = &mut self.remaining {
            *r -= 1;
        }
        let local = if self.files.len() == 1 {
            0
        } else {
            self.below(self.files.len() as u64) as usize
        };
        let kind = match (kind, self.rw) {
            (Some(k), _) => k,
            (None, Rw::Randread | Rw::Read) => IoKind::Read,
            (None, Rw::Randwrite | Rw::Write) => IoKind::Write,
            (None, Rw::Randrw) => {
                if self.below(100) < self.read_pct {
                    IoKind::Read
                } else {
                    IoKind::Write
                }
            }
        };
        let random = self.rw.random()
            && (self.percentage_random >= 100 || self.below(100) < self.percentage_random);
        let block = if random {
            let b = match &self.pickers {
                None => self.below(self.blocks),
                Some(p) => p[local].pick(&mut self.rng),
            };
            self.last[local] = b;
            b
        } else if self.rw.random() {
            // The sequential share of a random pattern: on from the previous operation.
            let b = self.last[local] + 1;
            let b = if b >= self.blocks { 0 } else { b };
            self.last[local] = b;
            b
        } else {
            let b = self.seq[local];
            self.seq[local] = if b + 1 >= self.blocks { 0 } else { b + 1 };
            b
        };
        Some(Op {
            kind,
            file: self.files[local],
            local: local as u32,
            offset: block * self.bs,
        })
    }

    /// Tells the generator a write completed (queues an fsync every `--fsync-every` writes).
    #[inline]
    pub fn write_done(&mut self, op: &Op) {
        if self.fsync_every == 0 || op.kind != IoKind::Write {
            return;
        }
        let n = &mut self.since_fsync[op.local as usize];
        *n += 1;
        if *n >= self.fsync_every {
            *n = 0;
            self.fsyncs.push_back((op.file, op.local));
        }
    }
}

/// One load-generating thread (or shard, or task group) of a run.
#[derive(Debug, Clone)]
pub struct Submitter {
    pub index: usize,
    pub files: Vec<usize>,
    pub quota: Option<u64>,
}

/// Splits the files and the `--ops` quota over `count` submitters. `owner(file)` gives the
/// submitter of a file (in-shard: its shard), or `None` when every submitter uses every file.
/// Submitters without files are left out.
pub fn plan_submitters(
    count: usize,
    files: usize,
    owner: Option<&dyn Fn(usize) -> usize>,
    ops: Option<u64>,
) -> Vec<Submitter> {
    let mut subs: Vec<Submitter> = (0..count)
        .map(|index| Submitter {
            index,
            files: match owner {
                Some(f) => (0..files).filter(|&i| f(i) == index).collect(),
                None => (0..files).collect(),
            },
            quota: None,
        })
        .filter(|s| !s.files.is_empty())
        .collect();
    if let Some(total) = ops {
        let n = subs.len().max(1) as u64;
        for (i, s) in subs.iter_mut().enumerate() {
            s.quota = Some(total / n + u64::from((i as u64) < total % n));
        }
    }
    subs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wl(rw: Rw) -> Workload {
        Workload {
            rw,
            rwmix_read: 70,
            bs: 4096,
            size: 1 << 20,
            files: None,
            iodepth: 4,
            duration: None,
            ops: None,
            report_every: None,
            direct: false,
            cold: false,
            fsync_every: 3,
            datasync: false,
            distribution: Distribution::Uniform,
            percentage_random: 100,
            rate_iops: None,
            rate_process: RateProcess::Linear,
            rate_wait: RateWait::Poll,
            rate_per_direction: false,
            ramp: None,
            percentiles: Vec::new(),
            name: None,
            dir: None,
            seed: 7,
            verify: false,
            placement: PlacementSpec::default(),
            sqpoll: None,
            spin_us: None,
            inline_limit: None,
            mode: Mode::InShard,
            clients: 1,
            tasks: 64,
            api: Api::Session,
            engine: EngineKind::Ringshard,
            pool_threads: None,
            tokio_api: TokioApi::SeekRead,
        }
    }

    #[test]
    fn offsets_in_range_and_aligned() {
        let w = wl(Rw::Randrw);
        let mut g = OpGen::new(&w, vec![3, 5], Some(10_000), 0, 1);
        let mut reads = 0;
        let mut n = 0;
        while let Some(op) = g.next_op() {
            if op.kind == IoKind::Fsync {
                continue;
            }
            n += 1;
            assert!(op.offset % 4096 == 0 && op.offset + 4096 <= w.size);
            assert!(op.file == 3 || op.file == 5);
            reads += u32::from(op.kind == IoKind::Read);
        }
        assert_eq!(n, 10_000);
        assert!((6_500..7_500).contains(&reads), "{reads}");
    }

    #[test]
    fn same_seed_same_sequence() {
        let w = wl(Rw::Randread);
        let a: Vec<Op> = {
            let mut g = OpGen::new(&w, vec![0], Some(100), 1, 2);
            std::iter::from_fn(|| g.next_op()).collect()
        };
        let mut g = OpGen::new(&w, vec![0], Some(100), 1, 2);
        let b: Vec<Op> = std::iter::from_fn(|| g.next_op()).collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 100);
    }

    #[test]
    fn sequential_wraps() {
        let w = wl(Rw::Read);
        let mut g = OpGen::new(&w, vec![0], Some(300), 0, 1);
        let offs: Vec<u64> = std::iter::from_fn(|| g.next_op())
            .map(|o| o.offset)
            .collect();
        assert_eq!(offs[0], 0);
        assert_eq!(offs[255], 255 * 4096);
        assert_eq!(offs[256], 0);
    }

    #[test]
    fn fsync_every_n_writes() {
        let w = wl(Rw::Randwrite);
        let mut g = OpGen::new(&w, vec![0], Some(6), 0, 1);
        let mut fsyncs = 0;
        while let Some(op) = g.next_op() {
            match op.kind {
                IoKind::Write => g.write_done(&op),
                IoKind::Fsync => fsyncs += 1,
                IoKind::Read | IoKind::Fdatasync => unreachable!(),
            }
        }
        assert_eq!(fsyncs, 2);
    }

    #[test]
    fn fdatasync_every_n_writes_and_syncs_are_not_paced() {
        let mut w = wl(Rw::Randwrite);
        w.datasync = true;
        w.rate_iops = Some(1.0);
        let mut g = OpGen::new(&w, vec![0], Some(10), 0, 1);
        // The first write is due at once; the next one a second later.
        let Next::Go(op, Some(_)) = g.next() else {
            panic!("first op not due")
        };
        assert!(matches!(g.next(), Next::Wait(_)));
        for _ in 0..2 {
            g.write_done(&op);
        }
        g.write_done(&op);
        // The queued sync goes out now, with no intended start (it starts when issued).
        match g.next() {
            Next::Go(s, None) => assert_eq!(s.kind, IoKind::Fdatasync),
            other => panic!("{other:?}"),
        }
        assert!(matches!(g.next(), Next::Wait(_)));
    }

    #[test]
    fn percentage_random_mixes_in_sequential_steps() {
        let mut w = wl(Rw::Randread);
        w.size = 1 << 30;
        w.percentage_random = 25;
        let mut g = OpGen::new(&w, vec![0], Some(20_000), 0, 1);
        let offs: Vec<u64> = std::iter::from_fn(|| g.next_op())
            .map(|o| o.offset)
            .collect();
        let steps = offs.windows(2).filter(|p| p[1] == p[0] + 4096).count();
        // About 75% of the ops continue from the previous one (random hits are 1 in 262144).
        let share = steps as f64 / (offs.len() - 1) as f64;
        assert!((0.72..0.78).contains(&share), "{share}");
        w.percentage_random = 100;
        let mut g = OpGen::new(&w, vec![0], Some(20_000), 0, 1);
        let offs: Vec<u64> = std::iter::from_fn(|| g.next_op())
            .map(|o| o.offset)
            .collect();
        assert!(offs.windows(2).filter(|p| p[1] == p[0] + 4096).count() < 10);
    }

    #[test]
    fn zipf_offsets_are_skewed_and_in_range() {
        let mut w = wl(Rw::Randread);
        w.distribution = Distribution::parse("zipf:1.2").unwrap();
        let mut g = OpGen::new(&w, vec![0, 1], Some(50_000), 0, 1);
        let mut hits = std::collections::HashMap::new();
        while let Some(op) = g.next_op() {
            assert!(op.offset % 4096 == 0 && op.offset + 4096 <= w.size);
            *hits.entry((op.file, op.offset)).or_insert(0u32) += 1;
        }
        let top = hits.values().copied().max().unwrap();
        // 256 blocks per file: uniform would give about 98 hits per block.
        assert!(top > 2000, "hottest block {top} hits");
    }

    #[test]
    fn plan_splits_quota_and_skips_idle() {
        let owner = |f: usize| f % 3;
        let p = plan_submitters(4, 5, Some(&owner), Some(10));
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].files, vec![0, 3]);
        let q: u64 = p.iter().map(|s| s.quota.unwrap()).sum();
        assert_eq!(q, 10);
        let all = plan_submitters(2, 2, None, None);
        assert_eq!(all[1].files, vec![0, 1]);
    }
}
