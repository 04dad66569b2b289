//! `--compare`: the same workload on every engine, interleaved over `--repeat` rounds (the engine
//! order rotates each round), summarised by medians and by ratios to ringshard. The ratio of an
//! engine is the median over rounds of (engine / ringshard in the same round): runs minutes apart
//! on a noisy machine are never compared with each other.

use crate::cli::Config;
use crate::error::BenchError;
use crate::files::Workspace;
use crate::report::{self, fmt_count, median, Host, RunReport};
use crate::workload::{EngineKind, Workload};
use crate::Setup;
use serde::Serialize;

#[derive(Debug, Serialize)]
struct Median {
    iops: f64,
    mb_s: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_s_per_mop: f64,
}

#[derive(Debug, Serialize)]
struct EngineSummary {
    engine: &'static str,
    /// IOPS of each round, in round order.
    rounds_iops: Vec<f64>,
    median: Median,
    /// Median over rounds of IOPS / ringshard's IOPS in the same round.
    iops_vs_ringshard: Option<f64>,
    /// Median over rounds of (CPU s per Mop) / ringshard's in the same round.
    cpu_per_op_vs_ringshard: Option<f64>,
    errors: u64,
    mismatches: u64,
    failures: Vec<String>,
}

#[derive(Debug, Serialize)]
struct CompareReport<'a> {
    compare: bool,
    rounds: usize,
    mode: &'static str,
    /// ringshard's request API (routed and async).
    api: Option<&'static str>,
    workload: &'a Workload,
    host: &'a Host,
    engines: Vec<EngineSummary>,
    /// Engines left out, and why (fio not installed, ...).
    left_out: Vec<String>,
    runs: Vec<&'a RunReport>,
}

pub fn run(
    cfg: &Config,
    ws: &Workspace,
    host: &Host,
    repeat: usize,
    progress: bool,
) -> Result<i32, BenchError> {
    let setup = Setup::new(&cfg.w, ws, None)?;
    let mut left_out = Vec::new();
    let engines: Vec<EngineKind> = EngineKind::compared(cfg.w.mode)
        .iter()
        .copied()
        .filter(|&e| match (e, crate::engines::fio::unavailable(&cfg.w)) {
            (EngineKind::Fio, Some(why)) => {
                left_out.push(why);
                false
            }
            _ => true,
        })
        .collect();
    let n = engines.len();
    // results[engine][round]
    let mut results: Vec<Vec<Option<RunReport>>> = vec![Vec::new(); n];
    let mut failures: Vec<Vec<String>> = vec![Vec::new(); n];
    println!(
        "== compare: {} {}{} | {} | {} file(s) x {} | {} | {} round(s), engine order \
         rotated each round",
        cfg.w.mode.name(),
        cfg.w.label(),
        report::api_of(EngineKind::Ringshard, &cfg.w)
            .map_or(String::new(), |a| format!(" | ringshard {a} API")),
        report::load_params(&cfg.w, None),
        setup.files.len(),
        crate::cli::fmt_size(cfg.w.size),
        if cfg.w.direct {
            "O_DIRECT"
        } else if cfg.w.cold {
            "page cache, cold at the start of each run"
        } else {
            "page cache"
        },
        repeat
    );
    for why in &left_out {
        println!("{why}");
    }
    for round in 0..repeat {
        for k in 0..n {
            let e = (round + k) % n;
            let engine = engines[e];
            let mut w = cfg.w.clone();
            w.engine = engine;
            match setup.run(&w, engine, host, progress) {
                Ok(r) => {
                    println!(
                        "round {}/{repeat}  {:<14}  {:>9} IOPS  {:>9.1} MB/s  p50 {:>7.1} µs  \
                         p99 {:>8.1} µs  {:>6.3} CPU s/Mop{}",
                        round + 1,
                        engine.name(),
                        fmt_count(r.total.iops),
                        r.total.mb_s,
                        r.total.lat_us.p50,
                        r.total.lat_us.p99,
                        r.cpu.cpu_s_per_mop,
                        if r.failed() { "  FAILED CHECKS" } else { "" }
                    );
                    for m in &r.messages {
                        println!("    {m}");
                    }
                    results[e].push(Some(r));
                }
                Err(BenchError::Usage(m)) => return Err(BenchError::Usage(m)),
                Err(BenchError::Runtime(m)) => {
                    println!(
                        "round {}/{repeat}  {:<14}  failed: {m}",
                        round + 1,
                        engine.name()
                    );
                    failures[e].push(m);
                    results[e].push(None);
                }
            }
        }
    }

    let base: Vec<Option<&RunReport>> = results[0].iter().map(Option::as_ref).collect();
    let summaries: Vec<EngineSummary> = engines
        .iter()
        .enumerate()
        .map(|(e, engine)| summarize(*engine, &results[e], &base, failures[e].clone()))
        .collect();

    println!();
    println!(
        "medians over {repeat} round(s); ratios are medians of per-round ratios to ringshard \
         (same round)"
    );
    let head = [
        "engine",
        "IOPS",
        "MB/s",
        "p50 µs",
        "p99 µs",
        "CPU s/Mop",
        "IOPS vs ringshard",
        "CPU/op vs ringshard",
        "IOPS by round",
    ];
    let ratio = |r: Option<f64>| r.map_or("-".to_string(), |v| format!("{v:.2}x"));
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|s| {
            vec![
                s.engine.to_string(),
                fmt_count(s.median.iops),
                format!("{:.1}", s.median.mb_s),
                format!("{:.1}", s.median.p50_us),
                format!("{:.1}", s.median.p99_us),
                format!("{:.3}", s.median.cpu_s_per_mop),
                ratio(s.iops_vs_ringshard),
                ratio(s.cpu_per_op_vs_ringshard),
                report::fmt_rounds(&s.rounds_iops),
            ]
        })
        .collect();
    report::print_table(&head, &rows);
    println!(
        "host: {}, {} online CPUs, {} at {}; placement CPUs {:?}",
        host.kernel, host.online_cpus, host.filesystem, host.dir, setup.cpus.cpus
    );

    let failed = summaries
        .iter()
        .any(|s| s.errors > 0 || s.mismatches > 0 || !s.failures.is_empty());
    if let Some(p) = &cfg.json {
        let runs: Vec<&RunReport> = results.iter().flatten().flatten().collect();
        let rep = CompareReport {
            compare: true,
            rounds: repeat,
            mode: cfg.w.mode.name(),
            api: report::api_of(EngineKind::Ringshard, &cfg.w),
            workload: &cfg.w,
            host,
            engines: summaries,
            left_out,
            runs,
        };
        report::write_json(p, &rep)?;
    }
    Ok(i32::from(failed))
}

fn summarize(
    engine: EngineKind,
    runs: &[Option<RunReport>],
    base: &[Option<&RunReport>],
    failures: Vec<String>,
) -> EngineSummary {
    let ok: Vec<&RunReport> = runs.iter().flatten().collect();
    let pick = |f: &dyn Fn(&RunReport) -> f64| median(&ok.iter().map(|r| f(r)).collect::<Vec<_>>());
    let paired = |f: &dyn Fn(&RunReport) -> f64| {
        let v: Vec<f64> = runs
            .iter()
            .zip(base)
            .filter_map(|(r, b)| match (r, b) {
                (Some(r), Some(b)) if f(b) > 0.0 => Some(f(r) / f(b)),
                _ => None,
            })
            .collect();
        (!v.is_empty()).then(|| median(&v))
    };
    EngineSummary {
        engine: engine.name(),
        rounds_iops: runs
            .iter()
            .map(|r| r.as_ref().map_or(0.0, |r| r.total.iops))
            .collect(),
        median: Median {
            iops: pick(&|r| r.total.iops),
            mb_s: pick(&|r| r.total.mb_s),
            p50_us: pick(&|r| r.total.lat_us.p50),
            p99_us: pick(&|r| r.total.lat_us.p99),
            cpu_s_per_mop: pick(&|r| r.cpu.cpu_s_per_mop),
        },
        iops_vs_ringshard: paired(&|r| r.total.iops),
        cpu_per_op_vs_ringshard: paired(&|r| r.cpu.cpu_s_per_mop),
        errors: ok.iter().map(|r| r.total.errors).sum(),
        mismatches: ok.iter().map(|r| r.verify.mismatches).sum(),
        failures,
    }
}
