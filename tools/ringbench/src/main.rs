//! ringbench: the fio-style load generator for ringshard, with side-by-side baselines.
//!
//! `cargo run --release -p ringbench` runs a short default workload (4k random reads from the page
//! cache, one 64 MiB file per shard in a temporary directory, load generated inside every shard)
//! and prints the table. See `--help` for the flags, `--mode async` for tokio tasks, `--compare`
//! for the baselines and `--sweep shards=1,2,...` (or clients, iodepth, tasks) for a scaling curve.

mod buf;
mod cli;
mod compare;
mod control;
mod distribution;
mod engines;
mod error;
mod files;
mod fio_json;
mod group;
mod jobs;
mod pace;
mod pattern;
mod placement;
mod report;
mod soak;
mod sweep;
mod tally;
mod workload;

use cli::{Action, Config};
use engines::RunCtx;
use error::BenchError;
use files::{BenchFile, Workspace};
use report::{Host, RunReport};
use workload::{EngineKind, Workload};

fn main() {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let code = match jobs::parse(argv).and_then(run) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringbench: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

fn run(cfgs: Vec<Config>) -> Result<i32, BenchError> {
    let cfg = &cfgs[0];
    soak::set_every(cfg.w.report_every);
    control::set_ramp(cfg.w.ramp);
    if cfg.output_format.json && !matches!(cfg.action, Action::Single) {
        return Err(BenchError::usage(
            "--output-format json is for runs of one or several jobs, not --compare or --sweep \
             (their --json FILE has every run)",
        ));
    }
    let ws = files::workspace(if cfgs.len() > 1 {
        None
    } else {
        cfg.w.dir.as_deref()
    })?;
    if cfg.w.direct {
        files::check_direct(&ws.dir)?;
        if files::fs_type(&ws.dir) == "tmpfs" {
            eprintln!(
                "ringbench: note: tmpfs accepts O_DIRECT on this kernel but has no device behind \
                 it: --direct measures memory copies here"
            );
        }
    }
    let host = Host::detect(&ws.dir);
    let progress = control::progress_wanted(cfg.quiet);
    if cfgs.len() > 1 {
        return group::run(&cfgs, &ws, &host, progress);
    }
    match &cfg.action {
        Action::Single => {
            let setup = Setup::new(&cfg.w, &ws, None)?;
            let report = setup.run(&cfg.w, cfg.w.engine, &host, progress)?;
            if cfg.output_format.normal {
                report.print();
            }
            if cfg.output_format.json {
                fio_json::emit(&[&report], cfg.output.as_deref())?;
            }
            if let Some(p) = &cfg.json {
                report::write_json(p, &report)?;
            }
            Ok(i32::from(report.failed()))
        }
        Action::Compare { repeat } => compare::run(cfg, &ws, &host, *repeat, progress),
        Action::Sweep {
            key,
            values,
            repeat,
        } => sweep::run(cfg, &ws, &host, *key, values, *repeat, progress),
    }
}

/// A run ready to go: the placement resolved and the files prepared.
pub struct Setup {
    pub cpus: placement::Cpus,
    pub files: Vec<BenchFile>,
    dir: std::path::PathBuf,
}

impl Setup {
    /// Resolves the placement (`shards` overrides `--shards`) and prepares the files.
    pub fn new(w: &Workload, ws: &Workspace, shards: Option<usize>) -> Result<Self, BenchError> {
        let cpus = placement::resolve(&w.placement, shards)?;
        let files = files::prepare(&ws.dir, w, cpus.cpus.len())?;
        if w.rw.writes() && !w.verify {
            files::invalidate_pattern(&ws.dir, &files);
        }
        Ok(Setup {
            cpus,
            files,
            dir: ws.dir.clone(),
        })
    }

    /// Runs `w` on `engine` (warming the files first unless --direct).
    pub fn run(
        &self,
        w: &Workload,
        engine: EngineKind,
        host: &Host,
        progress: bool,
    ) -> Result<RunReport, BenchError> {
        let ctx = RunCtx {
            w,
            cpus: &self.cpus.cpus,
            nodes: &self.cpus.nodes,
            files: &self.files,
            progress,
            backend: ringshard::BackendChoice::Auto,
        };
        let out = engines::run(engine, &ctx)?;
        if out.checks.mismatches > 0 {
            // Rewrite the pattern next time rather than report the same damage again.
            files::invalidate_pattern(&self.dir, &self.files);
        }
        Ok(RunReport::new(
            engine,
            w,
            host,
            &self.cpus.cpus,
            &self.files,
            &out,
        ))
    }
}
