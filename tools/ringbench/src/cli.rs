//! The command line: fio-like flags, parsed by clap and checked here into a [`Workload`], with
//! one-line errors that say what is wrong and how to fix it.

use crate::distribution::Distribution;
use crate::error::BenchError;
use crate::pace::{RateProcess, RateWait};
use crate::sweep::SweepKey;
use crate::workload::{Api, EngineKind, Mode, PlacementSpec, Rw, TokioApi, Workload};
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// fio-style load generator for ringshard, with side-by-side baselines.
///
/// With no arguments: 4k random reads from the page cache, one 64 MiB file per shard in a
/// temporary directory, generated inside every shard, for 3 seconds.
#[derive(Parser, Debug)]
#[command(name = "ringbench", version, about, args_override_self = true)]
pub struct Args {
    /// I/O pattern.
    #[arg(long, value_enum, default_value_t = Rw::Randread)]
    pub rw: Rw,
    /// Percentage of reads for --rw randrw.
    #[arg(
        long,
        alias = "rwmixread",
        default_value_t = 50,
        value_name = "PERCENT"
    )]
    pub rwmix_read: u32,
    /// Block size of each operation (k/m/g suffixes: 4k, 64k, 1m).
    #[arg(long, alias = "blocksize", default_value = "4k", value_name = "SIZE")]
    pub bs: String,
    /// Size of each file (e.g. 64m, 1g): fio's filesize (fio's size is a job's total over its
    /// files; in a job file ringbench divides it by nrfiles).
    #[arg(long, alias = "filesize", default_value = "64m", value_name = "SIZE")]
    pub size: String,
    /// Number of files, spread over the shards by the router (default: one per shard, chosen so
    /// that every shard gets one).
    #[arg(long, alias = "nrfiles", value_name = "N")]
    pub files: Option<usize>,
    /// Operations in flight per submitter: per shard in-shard, per client routed, per task async
    /// [default: 32; 1 with --mode async].
    #[arg(long, value_name = "N")]
    pub iodepth: Option<usize>,
    /// How long to run (e.g. 5s, 500ms, 1m); default 3s unless --ops is given.
    #[arg(long, alias = "runtime", value_name = "TIME")]
    pub duration: Option<String>,
    /// Run the load this long before measuring (e.g. 2s; fio's ramp_time): nothing done in the
    /// ramp is counted.
    #[arg(long, alias = "ramp_time", value_name = "TIME")]
    pub ramp_time: Option<String>,
    /// Sample ops, verification mismatches, errors, RSS and open descriptors this often (e.g.
    /// 10s, 500ms; "off": never), print them as a table with a verdict on growth ("flat" or
    /// "growing", which fails the run), and add them to --json [default: 10s when --duration is
    /// at least 1m, else off].
    #[arg(long, value_name = "TIME")]
    pub report_every: Option<String>,
    /// Stop after this many reads+writes in total (split over the submitters).
    #[arg(long, value_name = "N")]
    pub ops: Option<u64>,
    /// Bypass the page cache (O_DIRECT); --bs must be a multiple of 4096. fio's --direct=1 and
    /// --direct=0 work too.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "1",
          default_value = "0", value_parser = parse_flag, action = clap::ArgAction::Set)]
    pub direct: bool,
    /// Start from a cold page cache: instead of warming the files, drop their pages (fsync, then
    /// POSIX_FADV_DONTNEED) right before each measured phase.
    #[arg(long)]
    pub cold: bool,
    /// fsync a file after every N writes to it (0: never; fio's fsync).
    #[arg(long, alias = "fsync", default_value_t = 0, value_name = "N")]
    pub fsync_every: u64,
    /// fdatasync a file after every N writes to it (fio's fdatasync); instead of --fsync-every.
    #[arg(long, value_name = "N")]
    pub fdatasync: Option<u64>,
    /// Skewed random offsets, with fio's syntax: zipf:THETA, pareto:H, normal:PCT (each with an
    /// optional :CENTER from 0 to 1), or random (uniform, the default).
    #[arg(long, alias = "random_distribution", value_name = "DIST")]
    pub random_distribution: Option<String>,
    /// Percent of a random pattern's operations at random offsets; the rest continue
    /// sequentially from the previous one (fio's percentage_random).
    #[arg(
        long,
        alias = "percentage_random",
        default_value_t = 100,
        value_name = "PERCENT"
    )]
    pub percentage_random: u32,
    /// Open loop: start this many operations per second per load generator (per shard
    /// in-shard, client routed, task async: fio's rate_iops per job), at intended times; co_lat
    /// counts from the intended start (coordinated omission corrected), lat as fio's.
    #[arg(long, alias = "rate_iops", value_name = "IOPS")]
    pub rate_iops: Option<f64>,
    /// Open loop by bandwidth: bytes per second per load generator (e.g. 100m; fio's rate),
    /// i.e. --rate-iops RATE/bs.
    #[arg(long, value_name = "BYTES")]
    pub rate: Option<String>,
    /// Spacing of the open-loop starts: evenly (linear), or exponential gaps (poisson).
    #[arg(long, alias = "rate_process", value_enum, default_value_t = RateProcess::Linear)]
    pub rate_process: RateProcess,
    /// Open loop, how a load generator waits for its next start: poll (block on completions
    /// until shortly before it, then poll them) or sleep (fio's way: reap everything in flight,
    /// then nanosleep until fio's sleep granularity short of the start and spin the rest;
    /// in-shard ringshard and raw-uring).
    #[arg(long, alias = "rate_wait", value_enum, default_value_t = RateWait::Poll)]
    pub rate_wait: RateWait,
    /// Open loop with --rw randrw: split the rate between reads and writes by --rwmixread, each
    /// with its own schedule, as fio's rate_iops=R,W (a start's kind is then the direction that
    /// is due); else one schedule, each start's kind drawn by the mix.
    #[arg(long, alias = "rate_per_direction")]
    pub rate_per_direction: bool,
    /// Latency percentiles to report per operation kind, comma or colon separated (e.g.
    /// 50,99,99.9; fio's percentile_list) [default: 50,99,99.9 in the table, fio's list in JSON].
    #[arg(
        long,
        visible_alias = "percentile-list",
        alias = "percentile_list",
        value_name = "LIST"
    )]
    pub percentiles: Option<String>,
    /// Name of this job. Several --name groups run several jobs at once, each with the options
    /// after its --name (options before the first --name apply to every job), as fio does.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Load generators (fio's numjobs): --shards in-shard and tasks, --clients routed, --tasks
    /// async.
    #[arg(long, value_name = "N")]
    pub numjobs: Option<usize>,
    /// Directory for the data files (created and filled as needed, reused when present with the
    /// right size); default: a temporary directory, removed afterwards.
    #[arg(long, alias = "directory", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Seed of the operation sequence and of the --verify pattern.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write a known pattern and check every byte read; mismatches fail the run (exit code 1).
    #[arg(long)]
    pub verify: bool,

    /// Number of shards (spread over NUMA nodes and physical cores; with --cores, --numa-nodes
    /// or --physical-cores: the first N of those CPUs).
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// One shard on each of these CPUs (e.g. 0-1,3).
    #[arg(
        long,
        visible_alias = "cpus-allowed",
        alias = "cpus_allowed",
        value_name = "LIST"
    )]
    pub cores: Option<String>,
    /// One shard on each CPU of these NUMA nodes (e.g. 0,1).
    #[arg(long, value_name = "LIST")]
    pub numa_nodes: Option<String>,
    /// One shard per physical core (SMT siblings left idle).
    #[arg(long)]
    pub physical_cores: bool,
    /// Kernel submission polling with its thread on this CPU (burns that CPU).
    #[arg(long, value_name = "CPU")]
    pub sqpoll: Option<u32>,
    /// How long an idle shard spins before sleeping, in microseconds.
    #[arg(long, value_name = "N")]
    pub spin_us: Option<u64>,
    /// ringshard's inline read limit: reads up to this size are tried on the caller's thread
    /// (`ExecutorBuilder::inline_read_limit`); 0 turns inline reads off [default: the
    /// library's, 64k].
    #[arg(long, value_name = "SIZE")]
    pub inline_limit: Option<String>,

    /// Where load is generated: inside each shard, by --clients caller threads, by --tasks
    /// tokio tasks (async), or by --tasks async tasks on each shard (tasks).
    #[arg(long, value_enum, default_value_t = Mode::InShard)]
    pub mode: Mode,
    /// Caller threads for --mode routed, each keeping --iodepth requests in flight (default 1);
    /// tokio runtime worker threads for --mode async (default 2).
    #[arg(long, value_name = "N")]
    pub clients: Option<usize>,
    /// tokio tasks for --mode async (default 64), or tasks per shard for --mode tasks (default
    /// 1), each keeping --iodepth requests in flight. (--compare in tasks mode gives the in-shard
    /// loop and raw-uring --iodepth per shard: keep --tasks 1 for like-for-like depth.)
    #[arg(long, value_name = "N")]
    pub tasks: Option<usize>,
    /// Which ringshard request API --mode routed and --mode async use: the Session API, or one
    /// Completion per request [default: session for routed (each client thread keeps many
    /// requests in flight), completion for async (each task awaits its own requests)].
    #[arg(long, value_enum, value_name = "API")]
    pub api: Option<Api>,
    /// Implementation doing the I/O (--mode async: ringshard, inline-nowait, spawn-blocking or tokio-fs).
    #[arg(long, value_enum, default_value_t = EngineKind::Ringshard)]
    pub engine: EngineKind,
    /// pread-pool worker threads (default: one per shard of the placement).
    #[arg(long, value_name = "N")]
    pub pool_threads: Option<usize>,
    /// How the tokio-fs engine reads and writes.
    #[arg(long, value_enum, default_value_t = TokioApi::SeekRead)]
    pub tokio_api: TokioApi,

    /// Run the workload on every engine (--mode async: ringshard, inline-nowait, spawn-blocking,
    /// tokio-fs), interleaved over --repeat rounds, and compare.
    #[arg(long)]
    pub compare: bool,
    /// Rounds for --compare and --sweep (default: 3 for --compare, 1 for --sweep).
    #[arg(long, value_name = "N")]
    pub repeat: Option<usize>,
    /// Run once per value of one key and print a scaling table: shards=1,2,4, clients=1,2,4
    /// (routed, async), iodepth=1,8,32 or tasks=1,16,64 (async).
    #[arg(long, value_name = "KEY=LIST")]
    pub sweep: Option<String>,
    /// Write the --sweep scaling plot here (SVG).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// normal (the tables), json (fio's JSON layout, for fio tooling, on stdout or --output),
    /// or normal,json.
    #[arg(
        long,
        alias = "output_format",
        value_name = "FORMAT",
        default_value = "normal"
    )]
    pub output_format: String,
    /// Write the --output-format output to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
    /// A fio job file (ini: `[global]` and one `[section]` per job) with the options ringbench has,
    /// by their fio names; every job runs at once.
    #[arg(value_name = "JOBFILE")]
    pub job_file: Option<PathBuf>,
}

/// fio's boolean values: 1/0, true/false, yes/no, on/off.
fn parse_flag(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("{s:?} is not 0 or 1")),
    }
}

/// What to print: the tables, fio's JSON, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutputFormat {
    pub normal: bool,
    pub json: bool,
}

fn parse_output_format(s: &str) -> Result<OutputFormat, BenchError> {
    let mut f = OutputFormat::default();
    for part in s.split(',') {
        match part.trim() {
            "normal" | "terse" => f.normal = true,
            "json" | "json+" => f.json = true,
            other => {
                return Err(BenchError::usage(format!(
                    "--output-format {other:?}: use normal, json or normal,json"
                )))
            }
        }
    }
    Ok(f)
}

/// Parses a percentile list ("50,99,99.9" or fio's "50:99:99.9").
pub fn parse_percentiles(s: &str) -> Result<Vec<f64>, BenchError> {
    let bad = |why: String| {
        BenchError::usage(format!(
            "--percentiles {s:?}: {why}; use percentages above 0 and at most 100, comma or              colon separated (e.g. 50,99,99.9)"
        ))
    };
    let mut v = Vec::new();
    for p in s.split([',', ':']) {
        let x: f64 = p
            .trim()
            .parse()
            .map_err(|_| bad(format!("{:?} is not a number", p.trim())))?;
        if !(x > 0.0 && x <= 100.0) {
            return Err(bad(format!("{x} is out of range")));
        }
        v.push(x);
    }
    if v.is_empty() || v.len() > 64 {
        return Err(bad("give 1 to 64 values".into()));
    }
    v.sort_by(f64::total_cmp);
    v.dedup();
    Ok(v)
}

/// What to do with the workload.
#[derive(Debug, Clone)]
pub enum Action {
    Single,
    Compare {
        repeat: usize,
    },
    Sweep {
        key: SweepKey,
        values: Vec<usize>,
        repeat: usize,
    },
}

/// Everything the command line asked for.
#[derive(Debug, Clone)]
pub struct Config {
    pub w: Workload,
    pub action: Action,
    pub json: Option<PathBuf>,
    pub plot: Option<PathBuf>,
    pub quiet: bool,
    pub output_format: OutputFormat,
    pub output: Option<PathBuf>,
}

/// Parses a size: a whole number with an optional k, m, g or t suffix (binary multiples;
/// "kb", "kib" and a trailing "b" are accepted too).
pub fn parse_size(flag: &str, s: &str) -> Result<u64, BenchError> {
    let bad = || {
        BenchError::usage(format!(
            "{flag} {s:?} is not a size: use a whole number with an optional k, m or g suffix \
             (e.g. 4k, 64k, 1m, 64m)"
        ))
    };
    let t = s.trim().to_ascii_lowercase();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = t[..digits].parse().map_err(|_| bad())?;
    let shift = match &t[digits..] {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// "4k" style, for labels.
pub fn fmt_size(n: u64) -> String {
    for (shift, suffix) in [(40, "t"), (30, "g"), (20, "m"), (10, "k")] {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{}{suffix}", n >> shift);
        }
    }
    n.to_string()
}

/// Parses a duration: a number with an optional ms, s, m or h suffix (seconds by default).
pub fn parse_duration(flag: &str, s: &str) -> Result<Duration, BenchError> {
    let bad = || {
        BenchError::usage(format!(
            "{flag} {s:?} is not a duration: use a number with an optional ms, s, m or h suffix \
             (e.g. 500ms, 5s, 1m)"
        ))
    };
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let n: f64 = t[..split].parse().map_err(|_| bad())?;
    let secs = match &t[split..] {
        "" | "s" | "sec" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_list<T: TryFrom<usize>>(flag: &str, s: &str) -> Result<Vec<T>, BenchError> {
    let list = ringshard::topology::parse_cpu_list(s)
        .map_err(|e| BenchError::usage(format!("{flag} {s:?}: {e}")))?;
    list.into_iter()
        .map(|v| {
            T::try_from(v).map_err(|_| BenchError::usage(format!("{flag}: {v} is out of range")))
        })
        .collect()
}

/// "shards=1,2,4" -> (shards, [1, 2, 4]); one key per sweep.
fn parse_sweep(s: &str) -> Result<(SweepKey, Vec<usize>), BenchError> {
    let keys = SweepKey::ALL.map(SweepKey::name).join(", ");
    let bad = |why: String| {
        BenchError::usage(format!(
            "--sweep {s:?}: {why}; use one KEY=LIST with KEY one of {keys} (e.g. --sweep \
             shards=1,2,4 or --sweep iodepth=1,8,32)"
        ))
    };
    let Some((name, list)) = s.split_once('=') else {
        return Err(bad("no KEY=".to_string()));
    };
    let key = SweepKey::ALL
        .into_iter()
        .find(|k| k.name() == name.trim())
        .ok_or_else(|| bad(format!("{:?} is not a key that can be swept", name.trim())))?;
    if list.contains('=') {
        return Err(bad("one key per sweep".to_string()));
    }
    let v: Vec<usize> = list
        .split(',')
        .map(|x| {
            x.trim()
                .parse::<usize>()
                .map_err(|_| bad(format!("{:?} is not a number", x.trim())))
        })
        .collect::<Result<_, _>>()?;
    if v.is_empty() || v.contains(&0) {
        return Err(bad(format!("{} values must be at least 1", key.name())));
    }
    Ok((key, v))
}

/// Checks a count given by `flag` (`--iodepth`, `--tasks`, or a value of `--sweep` for them):
/// from 1 to `max` `what`.
pub fn check_count(flag: &str, n: usize, max: usize, what: &str) -> Result<usize, BenchError> {
    if n == 0 || n > max {
        return Err(BenchError::usage(format!(
            "{flag} {n}: use 1 to {max} {what} (e.g. {flag} 1)"
        )));
    }
    Ok(n)
}

/// Most operations in flight per submitter.
pub const MAX_IODEPTH: usize = 4096;
/// Most tasks of `--mode async`.
pub const MAX_TASKS: usize = 65_536;

impl Args {
    /// Checks every flag and builds the configuration.
    pub fn into_config(mut self) -> Result<Config, BenchError> {
        if let Some(n) = self.numjobs {
            let (flag, slot) = match self.mode {
                Mode::InShard | Mode::Tasks => ("--shards", &mut self.shards),
                Mode::Routed => ("--clients", &mut self.clients),
                Mode::Async => ("--tasks", &mut self.tasks),
            };
            if slot.is_some_and(|v| v != n) {
                return Err(BenchError::usage(format!(
                    "--numjobs {n} and {flag} {} disagree: in --mode {} --numjobs is {flag}; give                      one of them",
                    slot.unwrap_or(0),
                    self.mode.name()
                )));
            }
            *slot = Some(n);
        }
        let bs = parse_size("--bs", &self.bs)?;
        let size = parse_size("--size", &self.size)?;
        if bs == 0 {
            return Err(BenchError::usage(
                "--bs 0: use a block size of at least 1 byte",
            ));
        }
        if bs > 1 << 30 {
            return Err(BenchError::usage(format!(
                "--bs {}: at most 1g per operation (the kernel's limit for one registered buffer)",
                self.bs
            )));
        }
        if bs > size {
            return Err(BenchError::usage(format!(
                "--bs {} is larger than --size {}: make --size at least --bs",
                self.bs, self.size
            )));
        }
        if self.cold && self.direct {
            return Err(BenchError::usage(
                "--cold is for page-cache runs: --direct bypasses the cache already",
            ));
        }
        if self.direct && bs % 4096 != 0 {
            return Err(BenchError::usage(format!(
                "--direct needs --bs to be a multiple of 4096 (got {}): use e.g. 4k or 64k",
                self.bs
            )));
        }
        let iodepth = match (self.iodepth, self.mode) {
            (Some(n), _) => check_count("--iodepth", n, MAX_IODEPTH, "operations in flight")?,
            (None, Mode::Async) => 1,
            (None, Mode::Tasks) => 32,
            (None, _) => 32,
        };
        if self.rwmix_read > 100 {
            return Err(BenchError::usage(format!(
                "--rwmix-read {}: a percentage from 0 to 100",
                self.rwmix_read
            )));
        }
        if self.files == Some(0) {
            return Err(BenchError::usage("--files 0: use at least one file"));
        }
        if self.clients == Some(0) {
            return Err(BenchError::usage("--clients 0: use at least one client"));
        }
        if let Some(n) = self.tasks {
            check_count("--tasks", n, MAX_TASKS, "tasks")?;
        }
        if self.pool_threads == Some(0) {
            return Err(BenchError::usage(
                "--pool-threads 0: use at least one thread",
            ));
        }
        if self.ops == Some(0) {
            return Err(BenchError::usage("--ops 0: use at least one operation"));
        }
        let ramp = self
            .ramp_time
            .as_deref()
            .map(|r| parse_duration("--ramp-time", r))
            .transpose()?;
        if ramp.is_some() && self.ops.is_some() {
            return Err(BenchError::usage(
                "--ramp-time with --ops: the quota would be spent partly in the ramp; use                  --duration (--runtime) with a ramp",
            ));
        }
        let distribution = match &self.random_distribution {
            Some(d) => Distribution::parse(d)?,
            None => Distribution::Uniform,
        };
        if self.percentage_random > 100 {
            return Err(BenchError::usage(format!(
                "--percentage-random {}: a percentage from 0 to 100",
                self.percentage_random
            )));
        }
        if !self.rw.random() && (!distribution.is_uniform() || self.percentage_random < 100) {
            return Err(BenchError::usage(format!(
                "--random-distribution and --percentage-random apply to random patterns: use                  --rw randread, randwrite or randrw (not {})",
                self.rw.name()
            )));
        }
        let rate_iops = match (self.rate_iops, &self.rate) {
            (Some(_), Some(_)) => {
                return Err(BenchError::usage(
                    "--rate-iops and --rate both set the open-loop rate: give one",
                ))
            }
            (Some(r), None) => Some(r),
            (None, Some(r)) => Some(parse_size("--rate", r)? as f64 / bs.max(1) as f64),
            (None, None) => None,
        };
        if let Some(r) = rate_iops {
            if !(r.is_finite() && r > 0.0 && r <= 1e9) {
                return Err(BenchError::usage(format!(
                    "--rate-iops {r}: use a rate above 0 and at most 1e9 per second (e.g.                      --rate-iops 10000)"
                )));
            }
        }
        if self.fdatasync.is_some() && self.fsync_every > 0 {
            return Err(BenchError::usage(
                "--fsync-every (--fsync) and --fdatasync together: give one",
            ));
        }
        let percentiles = self
            .percentiles
            .as_deref()
            .map(parse_percentiles)
            .transpose()?;
        let output_format = parse_output_format(&self.output_format)?;
        if self.output.is_some() && !output_format.json {
            return Err(BenchError::usage(
                "--output FILE is for --output-format json (the tables go to stdout; --json FILE                  writes ringbench's own JSON)",
            ));
        }
        let duration = match &self.duration {
            Some(d) => Some(parse_duration("--duration", d)?),
            None if self.ops.is_none() => Some(Duration::from_secs(3)),
            None => None,
        };
        let report_every = match self.report_every.as_deref() {
            Some("off" | "0") => None,
            Some(d) => Some(parse_duration("--report-every", d)?),
            None => duration
                .filter(|d| *d >= Duration::from_secs(60))
                .map(|_| Duration::from_secs(10)),
        };
        let placement = PlacementSpec {
            shards: self.shards,
            cores: self
                .cores
                .as_deref()
                .map(|s| parse_list("--cores", s))
                .transpose()?,
            numa_nodes: self
                .numa_nodes
                .as_deref()
                .map(|s| parse_list("--numa-nodes", s))
                .transpose()?,
            physical_cores: self.physical_cores,
        };
        let explicit = [
            placement.cores.is_some(),
            placement.numa_nodes.is_some(),
            placement.physical_cores,
        ];
        if explicit.iter().filter(|&&b| b).count() > 1 {
            return Err(BenchError::usage(
                "--cores, --numa-nodes and --physical-cores each choose the CPUs: use one of \
                 them (with --shards N to take the first N)",
            ));
        }
        let action = match (&self.sweep, self.compare) {
            (Some(_), true) => {
                return Err(BenchError::usage(
                    "--sweep and --compare together: run one, then the other",
                ))
            }
            (Some(s), false) => {
                let (key, values) = parse_sweep(s)?;
                key.check(self.mode, &values)?;
                Action::Sweep {
                    key,
                    values,
                    repeat: self.repeat.unwrap_or(1),
                }
            }
            (None, true) => Action::Compare {
                repeat: self.repeat.unwrap_or(3),
            },
            (None, false) => {
                if self.repeat.is_some() {
                    return Err(BenchError::usage(
                        "--repeat needs --compare or --sweep (it sets their number of rounds)",
                    ));
                }
                Action::Single
            }
        };
        if let Action::Compare { repeat: 0 } | Action::Sweep { repeat: 0, .. } = action {
            return Err(BenchError::usage("--repeat 0: use at least one round"));
        }
        if self.plot.is_some() && !matches!(action, Action::Sweep { .. }) {
            return Err(BenchError::usage(
                "--plot needs --sweep KEY=LIST (it draws the scaling curve)",
            ));
        }
        if self.clients.is_some() && matches!(self.mode, Mode::InShard | Mode::Tasks) {
            return Err(BenchError::usage(
                "--clients applies to --mode routed and --mode async (in-shard and tasks run the \
                 load on the shards)",
            ));
        }
        if self.tasks.is_some() && !matches!(self.mode, Mode::Async | Mode::Tasks) {
            return Err(BenchError::usage(
                "--tasks applies to --mode async and --mode tasks",
            ));
        }
        if self.mode == Mode::Tasks && !EngineKind::compared(Mode::Tasks).contains(&self.engine) {
            return Err(BenchError::usage(format!(
                "--engine {} has no tasks form: --mode tasks runs ringshard, ringshard-inshard or \
                 raw-uring",
                self.engine.name()
            )));
        }
        if self.api.is_some() && self.mode == Mode::InShard {
            return Err(BenchError::usage(
                "--api applies to --mode routed and --mode async (in-shard load runs inside the \
                 shards, not through the request API)",
            ));
        }
        if self.mode == Mode::Async && !self.engine.has_async_form() {
            return Err(BenchError::usage(format!(
                "--engine {} has no async form: --mode async runs ringshard, inline-nowait, spawn-blocking or \
                 tokio-fs (use --mode in-shard or routed for {})",
                self.engine.name(),
                self.engine.name()
            )));
        }
        let w = Workload {
            rw: self.rw,
            rwmix_read: self.rwmix_read,
            bs: bs as usize,
            size: size / bs * bs,
            files: self.files,
            iodepth,
            duration,
            ops: self.ops,
            report_every,
            direct: self.direct,
            fsync_every: self.fdatasync.unwrap_or(self.fsync_every),
            datasync: self.fdatasync.is_some(),
            distribution,
            percentage_random: self.percentage_random,
            rate_iops,
            rate_process: self.rate_process,
            rate_wait: self.rate_wait,
            rate_per_direction: self.rate_per_direction,
            ramp,
            percentiles: percentiles.unwrap_or_default(),
            name: self.name,
            cold: self.cold,
            dir: self.dir,
            seed: self.seed,
            verify: self.verify,
            placement,
            sqpoll: self.sqpoll,
            spin_us: self.spin_us,
            inline_limit: match &self.inline_limit {
                Some(s) => Some(usize::try_from(parse_size("--inline-limit", s)?).map_err(
                    |_| BenchError::usage("--inline-limit is too large for this machine"),
                )?),
                None => None,
            },
            mode: self.mode,
            clients: self
                .clients
                .unwrap_or(if self.mode == Mode::Async { 2 } else { 1 }),
            tasks: self
                .tasks
                .unwrap_or(if self.mode == Mode::Tasks { 1 } else { 64 }),
            api: self.api.unwrap_or(match self.mode {
                Mode::Async | Mode::Tasks => Api::Completion,
                Mode::Routed | Mode::InShard => Api::Session,
            }),
            engine: self.engine,
            pool_threads: self.pool_threads,
            tokio_api: self.tokio_api,
        };
        Ok(Config {
            w,
            action,
            json: self.json,
            plot: self.plot,
            quiet: self.quiet,
            output_format,
            output: self.output,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("--bs", "4k").unwrap(), 4096);
        assert_eq!(parse_size("--bs", "64K").unwrap(), 65536);
        assert_eq!(parse_size("--bs", "1m").unwrap(), 1 << 20);
        assert_eq!(parse_size("--size", "2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("--size", "4096").unwrap(), 4096);
        assert_eq!(parse_size("--size", "8KiB").unwrap(), 8192);
        for bad in [
            "",
            "k",
            "4x",
            "4 k",
            "-1",
            "1.5m",
            "4kk",
            "99999999999999999999t",
        ] {
            let e = parse_size("--bs", bad).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains("--bs"), "{e}");
        }
        assert_eq!(fmt_size(4096), "4k");
        assert_eq!(fmt_size(1 << 20), "1m");
        assert_eq!(fmt_size(1000), "1000");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("d", "5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("d", "2").unwrap(), Duration::from_secs(2));
        assert_eq!(
            parse_duration("d", "500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_duration("d", "1m").unwrap(), Duration::from_secs(60));
        for bad in ["", "s", "5x", "0", "-1s", "1..2s"] {
            assert!(parse_duration("d", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sweeps() {
        assert_eq!(
            parse_sweep("shards=1,2,4").unwrap(),
            (SweepKey::Shards, vec![1, 2, 4])
        );
        assert_eq!(
            parse_sweep("clients=1").unwrap(),
            (SweepKey::Clients, vec![1])
        );
        assert_eq!(
            parse_sweep("iodepth=1,8,32").unwrap(),
            (SweepKey::Iodepth, vec![1, 8, 32])
        );
        assert_eq!(
            parse_sweep("tasks=1,16").unwrap(),
            (SweepKey::Tasks, vec![1, 16])
        );
        for bad in [
            "shards=0",
            "shards=a",
            "cores=1,2",
            "shards",
            "shards=1,tasks=2",
            "=1",
        ] {
            let e = parse_sweep(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(
                e.to_string().contains("shards, clients, iodepth, tasks"),
                "{e}"
            );
        }
    }

    #[test]
    fn tasks_mode_defaults_and_checks() {
        let c = cfg(&["--mode", "tasks"]).unwrap();
        assert_eq!(c.w.mode, Mode::Tasks);
        assert_eq!((c.w.tasks, c.w.iodepth), (1, 32));
        let c = cfg(&["--mode", "tasks", "--tasks", "4", "--iodepth", "8"]).unwrap();
        assert_eq!((c.w.tasks, c.w.iodepth), (4, 8));
        assert!(cfg(&["--mode", "tasks", "--engine", "ringshard-inshard"]).is_ok());
        assert!(cfg(&["--mode", "tasks", "--engine", "tokio-fs"]).is_err());
        assert!(cfg(&["--mode", "tasks", "--clients", "2"]).is_err());
    }

    #[test]
    fn async_mode_defaults_and_checks() {
        let c = cfg(&["--mode", "async"]).unwrap();
        assert_eq!(c.w.mode, Mode::Async);
        assert_eq!((c.w.tasks, c.w.clients, c.w.iodepth), (64, 2, 1));
        assert_eq!(c.w.api, Api::Completion);
        let c = cfg(&["--mode", "routed"]).unwrap();
        assert_eq!(c.w.api, Api::Session);
        let c = cfg(&["--mode", "async", "--iodepth", "4", "--tasks", "8"]).unwrap();
        assert_eq!((c.w.tasks, c.w.iodepth), (8, 4));
        let c = cfg(&["--mode", "routed", "--api", "completion"]).unwrap();
        assert_eq!(
            (c.w.api, c.w.iodepth, c.w.clients),
            (Api::Completion, 32, 1)
        );
        for bad in [
            &["--mode", "async", "--engine", "raw-uring"][..],
            &["--mode", "async", "--engine", "pread-pool"],
            &["--mode", "async", "--tasks", "0"],
            &["--tasks", "4"],
            &["--api", "completion"],
            &["--sweep", "tasks=1,2", "--mode", "routed"],
            &["--sweep", "clients=1,2"],
            &["--sweep", "iodepth=1,5000"],
        ] {
            assert_eq!(cfg(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
        let c = cfg(&["--mode", "async", "--sweep", "tasks=1,4"]).unwrap();
        assert!(matches!(
            c.action,
            Action::Sweep {
                key: SweepKey::Tasks,
                ..
            }
        ));
    }

    fn cfg(args: &[&str]) -> Result<Config, BenchError> {
        let mut v = vec!["ringbench"];
        v.extend_from_slice(args);
        Args::try_parse_from(v).unwrap().into_config()
    }

    #[test]
    fn defaults_and_errors() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.w.bs, 4096);
        assert_eq!(c.w.size, 64 << 20);
        assert_eq!(c.w.duration, Some(Duration::from_secs(3)));
        assert!(matches!(c.action, Action::Single));
        assert_eq!(cfg(&["--iodepth", "0"]).unwrap_err().exit_code(), 2);
        assert_eq!(
            cfg(&["--bs", "1m", "--size", "64k"])
                .unwrap_err()
                .exit_code(),
            2
        );
        assert_eq!(cfg(&["--bs", "abc"]).unwrap_err().exit_code(), 2);
        assert_eq!(
            cfg(&["--direct", "--bs", "1000"]).unwrap_err().exit_code(),
            2
        );
        assert_eq!(cfg(&["--repeat", "2"]).unwrap_err().exit_code(), 2);
        assert!(cfg(&["--ops", "10"]).unwrap().w.duration.is_none());
        let c = cfg(&["--compare"]).unwrap();
        assert!(matches!(c.action, Action::Compare { repeat: 3 }));
    }
}
