//! Placement tuning: prints the machine's topology, then runs one short workload under each
//! shard/caller layout (all CPUs, physical cores, one NUMA node, shards apart from the callers,
//! SQPOLL on a spare CPU, spin on and off), in interleaved rounds, and prints a table (median
//! IOPS, p99 latency, CPU per operation) and which layout won and why.
//!
//! ```sh
//! cargo run --release --example affinity                          # measure this machine
//! cargo run --release --example affinity -- --duration 2s --rounds 5
//! cargo run --release --example affinity -- --sysfs-root tests/fixtures/sysfs/two_socket_smt
//! cargo run --release --features hwloc --example affinity         # also hwloc's view
//! ```
//!
//! With `--sysfs-root DIR` the layouts are planned for the topology under DIR (a sysfs-shaped
//! tree); when this machine lacks CPUs the plan names, it prints the plan and stops. `--plan-only`
//! always stops after the plan. `docs/AFFINITY.md` explains the layouts and the table.

mod plan;

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use plan::{cpu_list, Callers, Layout};
use ringshard::topology::allowed_cpus;
use ringshard::{Executor, File, OpenOptions, Topology};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// Random reads of --bs from files in the page cache, through a Session per caller thread.
    Randread,
    /// Random overwrites of --bs in files in the page cache, through a Session per caller thread.
    Randwrite,
}

/// Compare shard/caller placements on this machine (or plan them for a fixture topology).
#[derive(Debug, Parser)]
#[command(name = "affinity")]
struct Args {
    /// The workload every layout runs.
    #[arg(long, value_enum, default_value = "randread")]
    workload: Workload,
    /// Measured time per layout per round (e.g. 500ms, 2s); a short warm-up precedes it.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    duration: Duration,
    /// Size of each data file (one per shard; e.g. 16m, 1g).
    #[arg(long, default_value = "16m", value_parser = parse_size)]
    size: u64,
    /// Block size of each operation (e.g. 4k).
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    bs: u64,
    /// Rounds; every layout runs once per round (order rotated) and the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Caller threads (default: half the allowed CPUs, at least 1), the same in every layout.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    clients: Option<u32>,
    /// Requests each caller keeps in flight (its Session's capacity).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    iodepth: u32,
    /// The idle spin of the spin-on layout, in microseconds.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    spin_us: u64,
    /// Plan against this sysfs-shaped tree (e.g. tests/fixtures/sysfs/two_socket_smt).
    #[arg(long)]
    sysfs_root: Option<PathBuf>,
    /// Print the topology and the plan, run nothing.
    #[arg(long)]
    plan_only: bool,
    /// Where the data files go (default: a temporary directory, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration: use e.g. 500ms, 2s or 1.5s");
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "m" | "min" => v * 60.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 3600.0 {
        return Err(format!("{s:?}: use a duration above 0 and at most 1 hour"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a size: use e.g. 4096, 4k, 16m or 1g");
    let t = s.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix('b')
        .unwrap_or(&t)
        .strip_suffix('i')
        .unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let v: u64 = num.trim().parse().map_err(|_| bad())?;
    match v.checked_mul(mult) {
        Some(0) => Err(format!("{s:?}: a size must be above 0")),
        Some(b) if b <= 1 << 40 => Ok(b),
        _ => Err(format!("{s:?}: at most 1 TiB")),
    }
}

/// One layout's result in one round.
#[derive(Debug, Clone)]
struct Sample {
    /// The round it ran in (0-based).
    round: usize,
    iops: f64,
    p99_us: f64,
    cpu_us_per_op: f64,
    errors: u64,
}

/// A layout's results over the rounds.
#[derive(Debug, Default)]
struct Results {
    samples: Vec<Sample>,
    failure: Option<String>,
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Results {
    fn med(&self, f: impl Fn(&Sample) -> f64) -> f64 {
        median(&mut self.samples.iter().map(f).collect::<Vec<_>>())
    }
    fn iops(&self) -> f64 {
        self.med(|s| s.iops)
    }
    fn p99(&self) -> f64 {
        self.med(|s| s.p99_us)
    }
    fn cpu(&self) -> f64 {
        self.med(|s| s.cpu_us_per_op)
    }
    fn range(&self) -> (f64, f64) {
        let it = self.samples.iter().map(|s| s.iops);
        (
            it.clone().fold(f64::INFINITY, f64::min),
            it.fold(0.0, f64::max),
        )
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("affinity: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<ExitCode, String> {
    if args.bs > args.size {
        return Err(format!(
            "--bs {} is larger than --size {}: make the files larger or the blocks smaller",
            args.bs, args.size
        ));
    }
    let topo = match &args.sysfs_root {
        Some(root) => Topology::from_sysfs(root)
            .map_err(|e| format!("--sysfs-root {}: {e}", root.display()))?,
        None => Topology::detect().map_err(|e| e.to_string())?,
    };
    let here = allowed_cpus().map_err(|e| e.to_string())?;
    // A fixture is planned as if the process could use all of its CPUs (as the executor does
    // with a sysfs root); this machine, with the process's affinity mask.
    let allowed: Vec<usize> = if args.sysfs_root.is_some() {
        topo.cpus().iter().map(|c| c.id).collect()
    } else {
        here.clone()
    };
    print_topology(&topo, &allowed, args.sysfs_root.as_deref());

    let layouts = plan::plan(&topo, &allowed, Duration::from_micros(args.spin_us))
        .map_err(|e| e.to_string())?;
    let clients = args
        .clients
        .map_or_else(|| (allowed.len() / 2).max(1), |c| c as usize);
    println!(
        "\n== plan: {} caller thread(s) in every layout, {} requests in flight each",
        clients, args.iodepth
    );
    print!("{}", plan::plan_table(&layouts));
    if args.plan_only {
        println!("\n--plan-only: nothing run");
        return Ok(ExitCode::SUCCESS);
    }
    if args.sysfs_root.is_some() {
        let missing: Vec<usize> = layouts
            .iter()
            .filter(|l| l.skip.is_none())
            .flat_map(Layout::cpus_used)
            .filter(|c| !here.contains(c))
            .collect();
        if !missing.is_empty() {
            println!(
                "\nthis machine does not have (or this process may not use) CPUs {} of that \
                 topology (allowed here: {}): the plan above is what affinity WOULD run there; \
                 nothing run",
                cpu_list(&missing),
                cpu_list(&here)
            );
            return Ok(ExitCode::SUCCESS);
        }
        println!("\nevery CPU of the plan exists here: running it on this machine");
    }
    measure(args, &layouts, clients)
}

fn print_topology(topo: &Topology, allowed: &[usize], root: Option<&Path>) {
    let source = root.map_or("/sys".to_string(), |r| r.display().to_string());
    let cores = topo.physical_cores();
    let smt = topo.cpus().iter().any(|c| c.siblings.len() > 1);
    println!("== topology (sysfs: {source})");
    println!(
        "{} online CPU(s), {} physical core(s), SMT {}, {} NUMA node(s); this process may use \
         CPUs {}",
        topo.cpus().len(),
        cores.len(),
        if smt { "on" } else { "off (one CPU per core)" },
        topo.nodes().len(),
        cpu_list(allowed)
    );
    for &n in topo.nodes() {
        let cpus = topo.cpus_of_nodes(&[n]).unwrap_or_default();
        println!("  node {n}: CPUs {}", cpu_list(&cpus));
    }
    println!(
        "  {:>4} {:>7} {:>5} {:>5}  siblings",
        "cpu", "package", "core", "node"
    );
    for c in topo.cpus() {
        println!(
            "  {:>4} {:>7} {:>5} {:>5}  {}",
            c.id,
            c.package,
            c.core,
            c.node,
            cpu_list(&c.siblings)
        );
    }
    print_hwloc(topo, root);
}

#[cfg(feature = "hwloc")]
fn print_hwloc(sysfs: &Topology, root: Option<&Path>) {
    if root.is_some() {
        println!("== hwloc: skipped (hwloc reads this machine, not the --sysfs-root tree)");
        return;
    }
    match Topology::from_hwloc() {
        Ok(hw) => {
            let agree = hw == *sysfs;
            println!(
                "== hwloc: {} CPU(s), {} physical core(s), {} NUMA node(s): {}",
                hw.cpus().len(),
                hw.physical_cores().len(),
                hw.nodes().len(),
                if agree {
                    "agrees with sysfs on every CPU".to_string()
                } else {
                    let diff: Vec<usize> = hw
                        .cpus()
                        .iter()
                        .filter(|c| sysfs.cpu(c.id) != Some(c))
                        .map(|c| c.id)
                        .collect();
                    format!(
                        "DIFFERS from sysfs on CPUs {} (sysfs is what ringshard uses)",
                        cpu_list(&diff)
                    )
                }
            );
        }
        Err(e) => println!("== hwloc: {e}"),
    }
}

#[cfg(not(feature = "hwloc"))]
fn print_hwloc(_sysfs: &Topology, _root: Option<&Path>) {
    println!("(hwloc's view: build with --features hwloc)");
}

/// Data files shared by every layout: each run uses one file per shard, chosen so that the
/// router puts one on every shard; more files are made when a shard has none.
struct Files {
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    paths: Vec<PathBuf>,
    size: u64,
}

impl Files {
    fn new(dir: Option<&Path>, size: u64) -> Result<Files, String> {
        let (dir, tmp) = match dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|e| format!("--dir {}: {e}", d.display()))?;
                (d.to_path_buf(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("ringshard-affinity")
                    .tempdir()
                    .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        Ok(Files {
            dir,
            _tmp: tmp,
            paths: Vec::new(),
            size,
        })
    }

    fn add(&mut self) -> Result<(), String> {
        let path = self.dir.join(format!("affinity-{}.dat", self.paths.len()));
        let ok = std::fs::metadata(&path).is_ok_and(|m| m.len() == self.size);
        if !ok {
            use std::io::Write;
            let chunk: Vec<u8> = (0..1u64 << 20).map(|i| (i % 251) as u8).collect();
            let err = |e: std::io::Error| format!("{}: {e}", path.display());
            let mut f = std::io::BufWriter::new(std::fs::File::create(&path).map_err(err)?);
            let mut left = self.size;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                f.write_all(&chunk[..n]).map_err(err)?;
                left -= n as u64;
            }
            f.flush().map_err(err)?;
        }
        self.paths.push(path);
        Ok(())
    }

    /// One path per shard of `exec`.
    fn per_shard(&mut self, exec: &Executor) -> Result<Vec<PathBuf>, String> {
        let n = exec.shard_count();
        let mut chosen: Vec<Option<PathBuf>> = vec![None; n];
        let mut i = 0;
        while chosen.iter().any(Option::is_none) {
            if i == self.paths.len() {
                if i >= 64 * n + 64 {
                    return Err("could not find a file for every shard".to_string());
                }
                self.add()?;
            }
            let s = exec
                .shard_of_path(&self.paths[i])
                .map_err(|e| e.to_string())?;
            if chosen[s].is_none() {
                chosen[s] = Some(self.paths[i].clone());
            }
            i += 1;
        }
        Ok(chosen.into_iter().flatten().collect())
    }
}

/// Reads the files once so they are in the page cache (idle page cache is reclaimed quickly on
/// some machines).
fn warm(paths: &[PathBuf]) -> Result<(), String> {
    use std::io::Read;
    let mut buf = vec![0u8; 1 << 20];
    for p in paths {
        let mut f = std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
        while f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", p.display()))?
            > 0
        {}
    }
    Ok(())
}

fn measure(args: &Args, layouts: &[Layout], clients: usize) -> Result<ExitCode, String> {
    let mut files = Files::new(args.dir.as_deref(), args.size)?;
    let mut results: Vec<Results> = layouts.iter().map(|_| Results::default()).collect();
    let runnable: Vec<usize> = (0..layouts.len())
        .filter(|&i| layouts[i].skip.is_none())
        .collect();
    println!(
        "\n== {:?}, {} B blocks, {:.1} MiB per file, {} s per layout per round, {} round(s), \
         order rotated each round",
        args.workload,
        args.bs,
        args.size as f64 / (1u64 << 20) as f64,
        args.duration.as_secs_f64(),
        args.rounds
    );
    for round in 0..args.rounds as usize {
        for k in 0..runnable.len() {
            let i = runnable[(round + k) % runnable.len()];
            let l = &layouts[i];
            if results[i].failure.is_some() {
                continue;
            }
            match run_layout(args, l, clients, &mut files) {
                Ok(s) => {
                    println!(
                        "round {}/{}  {:<15} {:>10.0} IOPS  p99 {:>7.1} µs  {:>6.2} CPU µs/op{}",
                        round + 1,
                        args.rounds,
                        l.name,
                        s.iops,
                        s.p99_us,
                        s.cpu_us_per_op,
                        if s.errors > 0 {
                            format!("  {} ERRORS", s.errors)
                        } else {
                            String::new()
                        }
                    );
                    results[i].samples.push(Sample { round, ..s });
                }
                Err(e) => {
                    println!(
                        "round {}/{}  {:<15} FAILED: {e}",
                        round + 1,
                        args.rounds,
                        l.name
                    );
                    results[i].failure = Some(e);
                }
            }
        }
    }
    println!();
    print_table(layouts, &results);
    println!();
    println!("{}", verdict(layouts, &results));
    if let Some(line) = separated(layouts, &results) {
        println!("{line}");
    }
    let errors: u64 = results
        .iter()
        .flat_map(|r| &r.samples)
        .map(|s| s.errors)
        .sum();
    Ok(if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The median over the rounds of `r`'s IOPS / `base`'s IOPS in the same round: drift of the
/// machine between rounds cancels out.
fn ratio_to(r: &Results, base: &Results) -> Option<f64> {
    let mut v = round_ratios(r, base);
    (!v.is_empty()).then(|| median(&mut v))
}

fn print_table(layouts: &[Layout], results: &[Results]) {
    let base = layouts.iter().position(|l| l.name == "all-cpus");
    println!(
        "{:<15} {:<12} {:<16} {:>10} {:>8} {:>9} {:>11}  IOPS by round",
        "layout", "shard CPUs", "callers", "IOPS", "x all", "p99 µs", "CPU µs/op"
    );
    for (l, r) in layouts.iter().zip(results) {
        let head = format!(
            "{:<15} {:<12} {:<16}",
            l.name,
            cpu_list(&l.shards),
            l.callers_text()
        );
        if let Some(why) = &l.skip {
            println!("{head} skipped: {why}");
        } else if let Some(e) = &r.failure {
            println!("{head} failed: {e}");
        } else {
            let rounds: Vec<String> = r
                .samples
                .iter()
                .map(|s| format!("{:.0}K", s.iops / 1e3))
                .collect();
            let ratio = base
                .and_then(|b| ratio_to(r, &results[b]))
                .map_or("-".to_string(), |x| format!("{x:.2}x"));
            println!(
                "{head} {:>10.0} {:>8} {:>9.1} {:>11.2}  {}",
                r.iops(),
                ratio,
                r.p99(),
                r.cpu(),
                rounds.join(" ")
            );
        }
    }
}

/// Which layout won and why, from the numbers.
fn verdict(layouts: &[Layout], results: &[Results]) -> String {
    let mut ranked: Vec<usize> = (0..layouts.len())
        .filter(|&i| !results[i].samples.is_empty())
        .collect();
    ranked.sort_by(|&a, &b| results[b].iops().total_cmp(&results[a].iops()));
    let Some(&w) = ranked.first() else {
        return "no layout ran: nothing to compare".to_string();
    };
    let (lw, rw) = (&layouts[w], &results[w]);
    let mut s = format!(
        "Winner: {} ({:.0} IOPS, p99 {:.1} µs, {:.2} CPU µs/op).",
        lw.name,
        rw.iops(),
        rw.p99(),
        rw.cpu()
    );
    let Some(&r) = ranked.get(1) else {
        s.push_str(" It is the only layout that ran.");
        return s;
    };
    let (lr, rr) = (&layouts[r], &results[r]);
    let pct = |a: f64, b: f64| (a / b - 1.0) * 100.0;
    s.push_str(&format!(
        " It did {:+.0}% IOPS over the runner-up, {} ({:.0} IOPS)",
        pct(rw.iops(), rr.iops()),
        lr.name,
        rr.iops()
    ));
    let (w_lo, _) = rw.range();
    let (_, r_hi) = rr.range();
    let margin = pct(rw.iops(), rr.iops());
    if rw.samples.len() < 2 || rr.samples.len() < 2 {
        s.push_str(
            "; with one round there is no measure of the noise: use --rounds 3 or more before \
             trusting the order.",
        );
    } else if w_lo <= r_hi || margin < 3.0 {
        s.push_str(
            ", but that is within this machine's noise (under 3%, or its worst round is below \
             the runner-up's best): a tie; run more --rounds to separate them.",
        );
    } else {
        s.push_str(", and every one of its rounds beat every round of the runner-up.");
    }
    // Why: against the all-cpus baseline (or, when all-cpus won, against the runner-up).
    let base = if lw.name == "all-cpus" {
        r
    } else {
        match layouts.iter().position(|l| l.name == "all-cpus") {
            Some(b) if !results[b].samples.is_empty() => b,
            _ => r,
        }
    };
    let (lb, rb) = (&layouts[base], &results[base]);
    let d_iops = pct(rw.iops(), rb.iops());
    let d_cpu = pct(rw.cpu(), rb.cpu());
    let d_p99 = pct(rw.p99(), rb.p99());
    let mut diff = Vec::new();
    if lw.shards.len() != lb.shards.len() {
        diff.push(format!(
            "{} shard(s) instead of {}",
            lw.shards.len(),
            lb.shards.len()
        ));
    }
    if lw.callers != lb.callers {
        diff.push(format!("callers {}", lw.callers_text()));
    }
    if lw.sqpoll != lb.sqpoll {
        diff.push(match lw.sqpoll {
            Some(c) => format!("SQPOLL on CPU {c}"),
            None => "no SQPOLL".to_string(),
        });
    }
    if lw.spin != lb.spin {
        diff.push(match lw.spin {
            None => "the default spin".to_string(),
            Some(_) => format!("spin {}", lw.spin_text()),
        });
    }
    let what = if diff.is_empty() {
        "the same CPUs".to_string()
    } else {
        diff.join(", ")
    };
    let cause = if d_cpu < -5.0 {
        "each operation cost less CPU, so the same CPUs did more of them (less switching \
         and waking between shard and caller threads)"
    } else if d_cpu > 5.0 && d_iops > 0.0 {
        "it bought throughput with more CPU per operation (threads kept busy instead of \
         sleeping and being woken)"
    } else if d_cpu > 5.0 {
        "it spent more CPU per operation"
    } else {
        "CPU per operation was within 5%: the difference is in waiting, not in work"
    };
    if lw.name != lb.name
        && lw
            .note
            .as_deref()
            .is_some_and(|n| n.contains("same CPUs as"))
    {
        s.push_str(&format!(
            " It runs the same threads on the same CPUs as {}, so its {d_iops:+.0}% against it \
             is noise, not placement.",
            lb.name
        ));
        return s;
    }
    s.push_str(&format!(
        " Why: against {} it ran with {what}: {d_iops:+.0}% IOPS, {d_cpu:+.0}% CPU per op, \
         {d_p99:+.0}% p99; {cause}.",
        lb.name
    ));
    s
}

/// Per-round IOPS ratios of `r` to `base` (rounds where both ran).
fn round_ratios(r: &Results, base: &Results) -> Vec<f64> {
    r.samples
        .iter()
        .filter_map(|s| {
            let b = base.samples.iter().find(|b| b.round == s.round)?;
            (b.iops > 0.0).then(|| s.iops / b.iops)
        })
        .collect()
}

/// The layouts that beat or lost to `all-cpus` in every round (each round compares runs made
/// seconds apart, so drift of the machine between rounds cancels): the differences the noise
/// does not explain. Needs 5 paired rounds (all on one side by chance: 2 in 2^5); layouts that
/// run the same threads on the same CPUs as `all-cpus` are left out (their differences are noise
/// by construction).
fn separated(layouts: &[Layout], results: &[Results]) -> Option<String> {
    const MIN_ROUNDS: usize = 5;
    let b = layouts.iter().position(|l| l.name == "all-cpus")?;
    let rb = &results[b];
    if rb.samples.len() < MIN_ROUNDS {
        return Some(format!(
            "(Run --rounds {MIN_ROUNDS} or more to see which layouts differ from all-cpus beyond \
             the noise.)"
        ));
    }
    let pct = |a: f64, b: f64| (a / b - 1.0) * 100.0;
    let clear: Vec<String> = layouts
        .iter()
        .zip(results)
        .filter(|(l, _)| {
            l.name != "all-cpus"
                && !l
                    .note
                    .as_deref()
                    .is_some_and(|n| n.contains("same CPUs as"))
        })
        .filter_map(|(l, r)| {
            let v = round_ratios(r, rb);
            let all_below = v.iter().all(|&x| x < 1.0);
            let all_above = v.iter().all(|&x| x > 1.0);
            (v.len() >= MIN_ROUNDS && (all_below || all_above)).then(|| {
                format!(
                    "{} {} in all {} rounds ({:.2}x IOPS, {:+.0}% CPU per op, {:+.0}% p99)",
                    l.name,
                    if all_below { "lost" } else { "won" },
                    v.len(),
                    ratio_to(r, rb).unwrap_or(f64::NAN),
                    pct(r.cpu(), rb.cpu()),
                    pct(r.p99(), rb.p99())
                )
            })
        })
        .collect();
    Some(if clear.is_empty() {
        "No layout won or lost against all-cpus in every round: here, at this load, placement \
         made no difference beyond the noise."
            .to_string()
    } else {
        format!(
            "Beyond the noise, against all-cpus in the same round: {}.",
            clear.join("; ")
        )
    })
}

/// Pins the calling thread to `cpus`.
fn pin_to(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain old data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::other(format!(
                "CPU {c} is beyond cpu_set_t"
            )));
        }
        // SAFETY: c is below CPU_SETSIZE, the set is a valid cpu_set_t.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed; 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// CPU time (user + system) of the whole process so far: every thread, io_uring's workers and
/// SQPOLL threads included.
fn process_cpu() -> Duration {
    // SAFETY: rusage is plain old data, filled by getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid rusage to write into.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// What one caller thread measured.
struct CallerTally {
    ops: u64,
    errors: u64,
    hist: Histogram<u64>,
}

fn run_layout(
    args: &Args,
    l: &Layout,
    clients: usize,
    files: &mut Files,
) -> Result<Sample, String> {
    let mut b = Executor::builder().cores(l.shards.clone());
    if let Some(spin) = l.spin {
        b = b.spin(spin);
    }
    if let Some(cpu) = l.sqpoll {
        b = b.sqpoll(cpu as u32);
    }
    let exec = b.build().map_err(|e| e.to_string())?;
    let paths = files.per_shard(&exec)?;
    warm(&paths)?;
    let write = args.workload == Workload::Randwrite;
    let mut opts = OpenOptions::new();
    opts.read(true).write(write);
    let open: Vec<File> = paths
        .iter()
        .map(|p| exec.open(p, &opts).wait().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let blocks = (args.size / args.bs).max(1);
    let bs = args.bs as usize;
    let iodepth = args.iodepth as usize;

    let warmup = (args.duration / 4).clamp(Duration::from_millis(20), Duration::from_millis(300));
    let stop = AtomicBool::new(false);
    let ready = Barrier::new(clients + 1);
    let go = Barrier::new(clients + 1);
    let begin = std::sync::OnceLock::<(Instant, Instant)>::new();
    let (tallies, cpu) = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for c in 0..clients {
            let (exec, open, stop, ready, go, begin) = (&exec, &open, &stop, &ready, &go, &begin);
            let pin: Option<Vec<usize>> = match &l.callers {
                Callers::Unpinned => None,
                Callers::Within(list) => Some(list.clone()),
                Callers::Pinned(list) => Some(vec![list[c % list.len()]]),
            };
            handles.push(scope.spawn(move || -> Result<CallerTally, String> {
                // Set up, then meet the others at both barriers whatever happened: a caller
                // that returned early would leave them waiting forever.
                let setup = (|| {
                    if let Some(cpus) = &pin {
                        pin_to(cpus).map_err(|e| format!("pinning a caller to {cpus:?}: {e}"))?;
                    }
                    let session = exec
                        .session_with_capacity(iodepth)
                        .map_err(|e| e.to_string())?;
                    let hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>((session, hist))
                })();
                ready.wait();
                go.wait();
                let (mut session, mut hist) = setup?;
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ ((c as u64 + 1) << 32);
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let mut issued = vec![Instant::now(); iodepth];
                let mut spare: Vec<Vec<u8>> = (0..iodepth)
                    .map(|_| {
                        if write {
                            vec![0x5a; bs]
                        } else {
                            Vec::with_capacity(bs)
                        }
                    })
                    .collect();
                let mut free: Vec<usize> = (0..iodepth).collect();
                let mut done = Vec::with_capacity(iodepth);
                let (mut ops, mut errors) = (0u64, 0u64);
                let (t0, t1) = *begin.get().expect("set before the go barrier");
                let mut counting = false;
                loop {
                    let now = Instant::now();
                    if !counting && now >= t0 {
                        counting = true;
                        hist.reset();
                        ops = 0;
                        errors = 0;
                    }
                    let running = now < t1 && !stop.load(Ordering::Relaxed);
                    if running {
                        while let Some(slot) = free.pop() {
                            let r = next();
                            let file = &open[(r % open.len() as u64) as usize];
                            let off = ((r >> 16) % blocks) * bs as u64;
                            let buf = spare.pop().unwrap_or_default();
                            issued[slot] = Instant::now();
                            let res = if write {
                                session.write(file, off, buf, slot as u64)
                            } else {
                                session.read(file, off, bs, buf, slot as u64)
                            };
                            res.map_err(|e| e.to_string())?;
                        }
                    } else if session.in_flight() == 0 {
                        break;
                    }
                    session.wait(1, &mut done).map_err(|e| e.to_string())?;
                    let end = Instant::now();
                    for d in done.drain(..) {
                        let slot = d.token as usize;
                        if counting && end < t1 {
                            ops += 1;
                            if d.result.is_err() {
                                errors += 1;
                            }
                            let us = end.duration_since(issued[slot]).as_micros() as u64;
                            let _ = hist.record(us.max(1));
                        }
                        let mut buf = d.buf;
                        if write && buf.len() != bs {
                            buf = vec![0x5a; bs];
                        }
                        spare.push(buf);
                        free.push(slot);
                    }
                }
                Ok(CallerTally { ops, errors, hist })
            }));
        }
        ready.wait();
        let t0 = Instant::now() + warmup;
        let t1 = t0 + args.duration;
        let _ = begin.set((t0, t1));
        go.wait();
        std::thread::sleep(t0.saturating_duration_since(Instant::now()));
        let c0 = process_cpu();
        std::thread::sleep(t1.saturating_duration_since(Instant::now()));
        let c1 = process_cpu();
        stop.store(true, Ordering::Relaxed);
        let tallies: Vec<Result<CallerTally, String>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a caller thread panicked".to_string()))
            })
            .collect();
        (tallies, c1.saturating_sub(c0))
    });
    drop(open);
    exec.shutdown().map_err(|e| e.to_string())?;
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let (mut ops, mut errors) = (0u64, 0u64);
    for t in tallies {
        let t = t?;
        ops += t.ops;
        errors += t.errors;
        let _ = hist.add(&t.hist);
    }
    let secs = args.duration.as_secs_f64();
    Ok(Sample {
        round: 0,
        iops: ops as f64 / secs,
        p99_us: hist.value_at_quantile(0.99) as f64,
        cpu_us_per_op: if ops == 0 {
            f64::NAN
        } else {
            cpu.as_secs_f64() * 1e6 / ops as f64
        },
        errors,
    })
}
