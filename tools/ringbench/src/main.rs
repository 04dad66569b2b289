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
mod pace;
mod pattern;
mod placement;
mod report;
mod soak;
mod sweep;
mod tally;
mod workload;

use clap::Parser;
use cli::Action;
use engines::RunCtx;
use error::BenchError;
use files::{BenchFile, Workspace};
use report::{Host, RunReport};
use workload::{EngineKind, Workload};

fn main() {
    let args = cli::Args::parse();
    let code = match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringbench: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

fn run(args: cli::Args) -> Result<i32, BenchError> {
    let cfg = args.into_config()?;
    soak::set_every(cfg.w.report_every);
    let ws = files::workspace(cfg.w.dir.as_deref())?;
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
    match &cfg.action {
        Action::Single => {
            let setup = Setup::new(&cfg.w, &ws, None)?;
            let report = setup.run(&cfg.w, cfg.w.engine, &host, progress)?;
            report.print();
            if let Some(p) = &cfg.json {
                report::write_json(p, &report)?;
            }
            Ok(i32::from(report.failed()))
        }
        Action::Compare { repeat } => compare::run(&cfg, &ws, &host, *repeat, progress),
        Action::Sweep {
            key,
            values,
            repeat,
        } => sweep::run(&cfg, &ws, &host, *key, values, *repeat, progress),
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
