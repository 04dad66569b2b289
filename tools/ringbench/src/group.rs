//! Several jobs at once (`--name` groups, a job file): each job gets its files (in a directory
//! named after it), its engine and its own threads, as fio's jobs do; their loads start together
//! (after every job's setup) and each job stops after its own duration. One report per job,
//! then the group: per-job lines and the total, with the latency of every job's operations
//! merged per kind.

use crate::cli::Config;
use crate::control::{join_group, GroupStart};
use crate::error::BenchError;
use crate::files::Workspace;
use crate::report::{self, fmt_count, Host, KindReport, RunReport};
use crate::tally::Tally;
use crate::Setup;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The group's total.
#[derive(Debug, Serialize)]
pub struct GroupTotal {
    pub jobs: usize,
    /// The longest job's measured time.
    pub duration_s: f64,
    pub ops: u64,
    /// The jobs' IOPS summed.
    pub iops: f64,
    pub bytes: u64,
    pub mb_s: f64,
    pub errors: u64,
    /// Every job's operations, per kind (IOPS over `duration_s`).
    pub kinds: BTreeMap<&'static str, KindReport>,
    /// Process CPU seconds over the run (the jobs share the process: no per-job split).
    pub cpu_s: f64,
    pub cpu_s_per_mop: f64,
}

#[derive(Serialize)]
struct GroupJson<'a> {
    group: &'a GroupTotal,
    runs: &'a [RunReport],
}

/// The directory of job `name`: `DIR/NAME` (created).
fn job_dir(base: &Path, name: &str) -> Result<std::path::PathBuf, BenchError> {
    let d = base.join(name);
    std::fs::create_dir_all(&d)
        .map_err(|e| BenchError::usage(format!("creating {}: {e}", d.display())))?;
    Ok(d)
}

pub fn run(
    cfgs: &[Config],
    shared: &Workspace,
    host: &Host,
    progress: bool,
) -> Result<i32, BenchError> {
    let mut setups = Vec::with_capacity(cfgs.len());
    let mut spaces = Vec::new();
    for c in cfgs {
        let name = c.w.name.as_deref().unwrap_or("job");
        let base = match &c.w.dir {
            Some(d) => {
                let ws = crate::files::workspace(Some(d))?;
                let dir = job_dir(&ws.dir, name)?;
                spaces.push(ws);
                dir
            }
            None => job_dir(&shared.dir, name)?,
        };
        let ws = crate::files::workspace(Some(&base))?;
        setups.push(Setup::new(&c.w, &ws, None)?);
        spaces.push(ws);
    }
    let group = GroupStart::new(cfgs.len());
    let results: Vec<Result<RunReport, BenchError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = cfgs
            .iter()
            .zip(&setups)
            .enumerate()
            .map(|(i, (c, setup))| {
                let group = std::sync::Arc::clone(&group);
                scope.spawn(move || {
                    join_group(std::sync::Arc::clone(&group), i);
                    // Only the first job draws the progress line.
                    let r = setup.run(&c.w, c.w.engine, host, progress && i == 0);
                    group.arrive(i);
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(BenchError::runtime("a job's thread panicked")))
            })
            .collect()
    });
    let mut reports = Vec::new();
    let mut failed = false;
    for (c, r) in cfgs.iter().zip(results) {
        match r {
            Ok(r) => reports.push(r),
            Err(BenchError::Usage(m)) => return Err(BenchError::Usage(m)),
            Err(BenchError::Runtime(m)) => {
                eprintln!("ringbench: job {}: {m}", c.w.name.as_deref().unwrap_or("?"));
                failed = true;
            }
        }
    }
    let total = total(&reports, &cfgs[0].w.percentiles);
    let cfg = &cfgs[0];
    if cfg.output_format.normal {
        for r in &reports {
            println!("=== job {}", r.workload.name.as_deref().unwrap_or("?"));
            r.print();
            println!();
        }
        print_group(&reports, &total, &cfg.w.percentiles);
    }
    if cfg.output_format.json {
        let refs: Vec<&RunReport> = reports.iter().collect();
        crate::fio_json::emit(&refs, cfg.output.as_deref())?;
    }
    if let Some(p) = &cfg.json {
        report::write_json(
            p,
            &GroupJson {
                group: &total,
                runs: &reports,
            },
        )?;
    }
    failed |= reports.iter().any(RunReport::failed);
    Ok(i32::from(failed))
}

fn total(reports: &[RunReport], percentiles: &[f64]) -> GroupTotal {
    let mut tally = Tally::default();
    for r in reports {
        tally.merge(&r.tally);
    }
    let secs = reports.iter().map(|r| r.duration_s).fold(0.0, f64::max);
    let ops: u64 = reports.iter().map(|r| r.total.ops).sum();
    // The jobs overlap: each measured the whole process over about the same time.
    let cpu_s = reports
        .iter()
        .map(|r| r.cpu.user_s + r.cpu.sys_s)
        .fold(0.0, f64::max);
    GroupTotal {
        jobs: reports.len(),
        duration_s: secs,
        ops,
        iops: reports.iter().map(|r| r.total.iops).sum(),
        bytes: reports.iter().map(|r| r.total.bytes).sum(),
        mb_s: reports.iter().map(|r| r.total.mb_s).sum(),
        errors: reports.iter().map(|r| r.total.errors).sum(),
        kinds: report::kind_reports(&tally, secs, percentiles),
        cpu_s,
        cpu_s_per_mop: if ops > 0 {
            cpu_s / (ops as f64 / 1e6)
        } else {
            0.0
        },
    }
}

fn print_group(reports: &[RunReport], t: &GroupTotal, percentiles: &[f64]) {
    println!("=== group: {} job(s) at once", t.jobs);
    let head = [
        "job", "engine", "workload", "ops", "IOPS", "MB/s", "p50 µs", "p99 µs", "s",
    ];
    let mut rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                r.workload.name.clone().unwrap_or_default(),
                format!("{} {}", r.engine, r.mode),
                r.workload.label(),
                r.total.ops.to_string(),
                fmt_count(r.total.iops),
                format!("{:.1}", r.total.mb_s),
                format!("{:.1}", r.total.lat_us.p50),
                format!("{:.1}", r.total.lat_us.p99),
                format!("{:.2}", r.duration_s),
            ]
        })
        .collect();
    rows.push(vec![
        "total".into(),
        String::new(),
        String::new(),
        t.ops.to_string(),
        fmt_count(t.iops),
        format!("{:.1}", t.mb_s),
        String::new(),
        String::new(),
        format!("{:.2}", t.duration_s),
    ]);
    report::print_table(&head, &rows);
    let open = reports.iter().any(|r| r.workload.rate_iops.is_some());
    report::print_kinds(&t.kinds, percentiles, open);
    println!(
        "CPU: {:.2} s for the whole process ({:.3} CPU s per million ops); errors: {}",
        t.cpu_s, t.cpu_s_per_mop, t.errors
    );
}
