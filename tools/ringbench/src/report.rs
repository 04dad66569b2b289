//! Results: one run's report (the table printed at the end, and the JSON), the host description,
//! and number formatting shared by the other reports.

use crate::engines::{Output, Row};
use crate::error::BenchError;
use crate::sweep::SweepKey;
use crate::tally::{LatSummary, Tally, FIO_PERCENTILES};
use crate::workload::{Api, EngineKind, IoKind, Mode, Workload};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// What the numbers were measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub kernel: String,
    pub online_cpus: usize,
    pub allowed_cpus: usize,
    pub dir: String,
    pub filesystem: String,
}

impl Host {
    pub fn detect(dir: &Path) -> Self {
        // SAFETY: uname writes only into the struct we pass.
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let kernel = if unsafe { libc::uname(&mut u) } == 0 {
            let f = |s: &[libc::c_char]| {
                // SAFETY: uname NUL-terminates its fields.
                unsafe { std::ffi::CStr::from_ptr(s.as_ptr()) }
                    .to_string_lossy()
                    .into_owned()
            };
            format!("{} {}", f(&u.sysname), f(&u.release))
        } else {
            "unknown".into()
        };
        Host {
            kernel,
            online_cpus: ringshard::Topology::detect().map_or(0, |t| t.cpus().len()),
            allowed_cpus: ringshard::topology::allowed_cpus().map_or(0, |c| c.len()),
            dir: dir.display().to_string(),
            filesystem: crate::files::fs_type(dir),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Total {
    /// Reads + writes (fsyncs are counted separately).
    pub ops: u64,
    pub reads: u64,
    pub writes: u64,
    pub fsyncs: u64,
    pub iops: f64,
    pub bytes: u64,
    pub mb_s: f64,
    pub errors: u64,
    pub lat_us: LatSummary,
    /// Per operation kind (read, write, fsync, fdatasync), with slat, clat and lat.
    pub kinds: BTreeMap<&'static str, KindReport>,
}

/// One kind of operation (read, write, fsync, fdatasync): counts and latency, split as fio
/// splits it: slat (start to issue), clat (issue to completion), lat (start to completion); and
/// co_lat, from the intended start (open loop; coordinated omission corrected) to completion.
#[derive(Debug, Clone, Serialize)]
pub struct KindReport {
    pub ops: u64,
    pub iops: f64,
    pub bytes: u64,
    pub mb_s: f64,
    pub slat_us: LatSummary,
    pub clat_us: LatSummary,
    pub lat_us: LatSummary,
    /// Latency from the intended start (closed loop: lat). None when the engine cannot tell (fio).
    pub co_lat_us: Option<LatSummary>,
}

/// The per-kind reports of `t` over `secs`, with `percentiles` (empty: fio's list).
pub fn kind_reports(
    t: &Tally,
    secs: f64,
    percentiles: &[f64],
) -> BTreeMap<&'static str, KindReport> {
    let list = if percentiles.is_empty() {
        &FIO_PERCENTILES[..]
    } else {
        percentiles
    };
    IoKind::ALL
        .iter()
        .filter_map(|&k| {
            let kt = t.kind(k)?;
            Some((
                k.name(),
                KindReport {
                    ops: kt.ops,
                    iops: per_sec(kt.ops as f64, secs),
                    bytes: kt.bytes,
                    mb_s: per_sec(kt.bytes as f64 / 1e6, secs),
                    slat_us: LatSummary::with_percentiles(&kt.slat, list),
                    clat_us: LatSummary::with_percentiles(&kt.clat, list),
                    lat_us: LatSummary::with_percentiles(&kt.lat, list),
                    co_lat_us: Some(LatSummary::with_percentiles(&kt.co_lat, list)),
                },
            ))
        })
        .collect()
}

/// Prints the per-kind latency table: one row per kind and measure, with `percentiles` as
/// columns (empty: p50, p99, p99.9).
pub fn print_kinds(kinds: &BTreeMap<&'static str, KindReport>, percentiles: &[f64], open: bool) {
    if kinds.is_empty() {
        return;
    }
    let list: Vec<f64> = if percentiles.is_empty() {
        vec![50.0, 99.0, 99.9]
    } else {
        percentiles.to_vec()
    };
    println!(
        "per operation kind (µs, as fio: slat start to issue, clat issue to completion, lat start \
         to completion{}):",
        if open {
            "; co_lat from the intended start (open loop), coordinated omission corrected"
        } else {
            ""
        }
    );
    let mut head: Vec<String> = ["kind", "", "ops", "IOPS", "MB/s", "min", "mean"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    head.extend(
        list.iter()
            .map(|p| format!("p{}", crate::tally::pct_key(*p))),
    );
    head.push("max".into());
    let mut rows = Vec::new();
    for k in IoKind::ALL {
        let Some(r) = kinds.get(k.name()) else {
            continue;
        };
        let co = r.co_lat_us.as_ref().filter(|_| open);
        for (i, (what, l)) in [
            ("lat", Some(&r.lat_us)),
            ("clat", Some(&r.clat_us)),
            ("slat", Some(&r.slat_us)),
            ("co_lat", co),
        ]
        .into_iter()
        .filter_map(|(what, l)| Some((what, l?)))
        .enumerate()
        {
            let first = i == 0;
            let blank = String::new;
            let mut row = vec![
                if first { k.name().to_string() } else { blank() },
                what.to_string(),
                if first { r.ops.to_string() } else { blank() },
                if first { fmt_count(r.iops) } else { blank() },
                if first && !k.is_sync() {
                    format!("{:.1}", r.mb_s)
                } else {
                    blank()
                },
                format!("{:.1}", l.min),
                format!("{:.1}", l.mean),
            ];
            for p in &list {
                let key = crate::tally::pct_key(*p);
                let v = l.percentiles.get(&key).copied().unwrap_or(0.0);
                row.push(format!("{v:.1}"));
            }
            row.push(format!("{:.1}", l.max));
            rows.push(row);
        }
    }
    let head: Vec<&str> = head.iter().map(String::as_str).collect();
    print_table(&head, &rows);
}

#[derive(Debug, Clone, Serialize)]
pub struct ShardRow {
    /// Shard, thread or client index (see `row_kind`).
    pub shard: Option<usize>,
    pub cpu: Option<usize>,
    pub numa_node: Option<u32>,
    pub ops: u64,
    pub iops: f64,
    pub mb_s: f64,
    pub errors: u64,
    pub lat_us: LatSummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    pub user_s: f64,
    pub sys_s: f64,
    /// CPU seconds (user + sys) per million reads+writes.
    pub cpu_s_per_mop: f64,
    /// Average busy cores over the run.
    pub cores: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub enabled: bool,
    pub verified_reads: u64,
    pub mismatches: u64,
}

/// Rows of the per-shard (thread, client, task) table printed before the total; JSON has all.
const MAX_ROWS: usize = 16;

/// One run, as printed and as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub engine: &'static str,
    pub mode: &'static str,
    /// The ringshard request API (`--api`) for routed and async ringshard runs, else null.
    pub api: Option<&'static str>,
    pub workload: Workload,
    pub host: Host,
    /// CPUs of the placement (one shard, or baseline thread, each).
    pub cpus: Vec<usize>,
    pub files: Vec<String>,
    pub duration_s: f64,
    pub total: Total,
    /// What a row of `shards` is: shard, thread, submitter or client.
    pub row_kind: &'static str,
    /// Latency measured by the callers ("caller") or inside the shards ("shard").
    pub latency_measured_by: &'static str,
    pub shards: Vec<ShardRow>,
    pub cpu: CpuReport,
    pub direct: bool,
    /// --cold: the files were dropped from the page cache instead of warmed.
    pub cold: bool,
    /// Share of the files in the page cache after warming (or dropping, with --cold), in percent
    /// (null with --direct).
    pub resident_pct: Option<f64>,
    pub verify: VerifyReport,
    pub errors: BTreeMap<String, u64>,
    /// The first verification mismatches and errors, with file and offset.
    pub messages: Vec<String>,
    pub notes: Vec<String>,
    /// ringshard's own merged statistics (`ExecutorStats` JSON), for ringshard runs.
    pub library_stats: Option<serde_json::Value>,
    #[serde(skip)]
    pub library_table: Option<String>,
    /// Samples over time and the growth verdict (`--report-every`), else null.
    pub soak: Option<crate::soak::SoakReport>,
    /// Every submitter's counts merged (for a group's total).
    #[serde(skip)]
    pub tally: Tally,
}

fn per_sec(n: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        n / secs
    } else {
        0.0
    }
}

fn shard_row(r: &Row, secs: f64) -> ShardRow {
    ShardRow {
        shard: r.id,
        cpu: r.cpu,
        numa_node: r.numa_node,
        ops: r.ops(),
        iops: per_sec(r.ops() as f64, secs),
        mb_s: per_sec(r.bytes as f64 / 1e6, secs),
        errors: r.errors,
        lat_us: r.lat_us.clone(),
    }
}

impl RunReport {
    pub fn new(
        engine: EngineKind,
        w: &Workload,
        host: &Host,
        cpus: &[usize],
        files: &[crate::files::BenchFile],
        out: &Output,
    ) -> Self {
        let secs = out.elapsed.as_secs_f64();
        let t = &out.total;
        let mops = t.ops() as f64 / 1e6;
        RunReport {
            engine: engine.name(),
            mode: w.mode.name(),
            api: api_of(engine, w),
            workload: w.clone(),
            host: host.clone(),
            cpus: cpus.to_vec(),
            files: files.iter().map(|f| f.path.display().to_string()).collect(),
            duration_s: secs,
            total: Total {
                ops: t.ops(),
                reads: t.reads,
                writes: t.writes,
                fsyncs: t.fsyncs,
                iops: per_sec(t.ops() as f64, secs),
                bytes: t.bytes,
                mb_s: per_sec(t.bytes as f64 / 1e6, secs),
                errors: t.errors.max(out.checks.error_count()),
                lat_us: t.lat_us.clone(),
                kinds: out
                    .kinds
                    .clone()
                    .unwrap_or_else(|| kind_reports(&out.tally, secs, &w.percentiles)),
            },
            row_kind: out.row_kind,
            latency_measured_by: if out.client_latency {
                "caller"
            } else {
                "shard"
            },
            shards: out.rows.iter().map(|r| shard_row(r, secs)).collect(),
            cpu: CpuReport {
                user_s: out.cpu.user_s,
                sys_s: out.cpu.sys_s,
                cpu_s_per_mop: if mops > 0.0 {
                    out.cpu.total() / mops
                } else {
                    0.0
                },
                cores: per_sec(out.cpu.total(), secs),
            },
            direct: w.direct,
            cold: w.cold,
            resident_pct: out.resident.map(|r| r * 100.0),
            verify: VerifyReport {
                enabled: w.verify,
                verified_reads: out.checks.verified,
                mismatches: out.checks.mismatches,
            },
            errors: out.checks.errors.clone(),
            messages: out.checks.messages.clone(),
            notes: out.notes.clone(),
            library_stats: out
                .library
                .as_ref()
                .and_then(|s| serde_json::to_value(s).ok()),
            library_table: out.library.as_ref().map(|s| s.to_string()),
            soak: crate::soak::take(),
            tally: out.tally.clone(),
        }
    }

    /// Whether the run failed its checks (errors or verification mismatches).
    pub fn failed(&self) -> bool {
        self.total.errors > 0
            || self.verify.mismatches > 0
            || self.soak.as_ref().is_some_and(|s| s.growing())
    }

    /// One line saying what ran where.
    pub fn headline(&self) -> String {
        let w = &self.workload;
        let placement = format!(
            "{} shard{} on CPU{} {}",
            self.cpus.len(),
            if self.cpus.len() == 1 { "" } else { "s" },
            if self.cpus.len() == 1 { "" } else { "s" },
            self.cpus
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let who = match w.mode {
            Mode::InShard => placement,
            Mode::Routed => format!("{placement}, {} client(s)", w.clients),
            Mode::Async => format!(
                "{placement}, {} task(s) on {} tokio worker thread(s)",
                w.tasks, w.clients
            ),
            Mode::Tasks => format!("{placement}, {} task(s) per shard", w.tasks),
        };
        let cache = match self.resident_pct {
            _ if self.direct => "O_DIRECT".to_string(),
            Some(p) if self.cold => format!("page cache, cold ({p:.0}% resident at the start)"),
            Some(p) => format!("page cache ({p:.0}% resident after warming)"),
            None => "page cache".to_string(),
        };
        format!(
            "{} {}{} | {} | iodepth {} | {} file(s) x {} | {} | {}",
            self.engine,
            self.mode,
            self.api.map_or(String::new(), |a| format!(" ({a} API)")),
            w.label(),
            w.iodepth,
            self.files.len(),
            crate::cli::fmt_size(w.size),
            cache,
            who
        )
    }

    /// The full text report.
    pub fn print(&self) {
        println!("== {}", self.headline());
        println!(
            "   host: {}, {} online CPUs ({} allowed), {} at {}",
            self.host.kernel,
            self.host.online_cpus,
            self.host.allowed_cpus,
            self.host.filesystem,
            self.host.dir
        );
        if let Some(t) = &self.library_table {
            println!("ringshard statistics (exec.stats(), measured phase):");
            print!("{t}");
            if self.latency_measured_by == "shard" {
                println!(
                    "   (latency columns above cover every I/O operation the shards counted, \
                     the opens included; the benchmark loop is counted as one `task`)"
                );
            }
        }
        println!(
            "per {} (latency of reads and writes in µs, measured by the {}):",
            self.row_kind, self.latency_measured_by
        );
        let hidden = self.shards.len().saturating_sub(MAX_ROWS);
        let mut rows: Vec<Vec<String>> = self
            .shards
            .iter()
            .take(MAX_ROWS)
            .map(|r| {
                row_cells(
                    r.shard.map_or("-".into(), |s| s.to_string()),
                    r.cpu,
                    r.numa_node,
                    r.ops,
                    r.iops,
                    r.mb_s,
                    r.errors,
                    &r.lat_us,
                )
            })
            .collect();
        let t = &self.total;
        let node = self
            .shards
            .first()
            .and_then(|r| r.numa_node)
            .filter(|n| self.shards.iter().all(|r| r.numa_node == Some(*n)));
        rows.push(row_cells(
            "total".into(),
            None,
            node,
            t.ops,
            t.iops,
            t.mb_s,
            t.errors,
            &t.lat_us,
        ));
        let head = [
            self.row_kind,
            "cpu",
            "node",
            "ops",
            "IOPS",
            "MB/s",
            "errors",
            "p50",
            "p99",
            "p99.9",
            "max",
        ];
        print_table(&head, &rows);
        if hidden > 0 {
            println!(
                "({hidden} more {} rows not shown; --json FILE has every row)",
                self.row_kind
            );
        }
        let w = &self.workload;
        print_kinds(&t.kinds, &w.percentiles, w.rate_iops.is_some());
        println!(
            "total: {} IOPS, {:.1} MB/s, {} reads + {} writes{} in {:.3} s",
            fmt_count(t.iops),
            t.mb_s,
            t.reads,
            t.writes,
            if t.fsyncs > 0 {
                format!(" + {} fsyncs", t.fsyncs)
            } else {
                String::new()
            },
            self.duration_s
        );
        println!(
            "CPU: user {:.2} s + sys {:.2} s ({:.2} cores busy) = {:.3} CPU s per million ops",
            self.cpu.user_s, self.cpu.sys_s, self.cpu.cores, self.cpu.cpu_s_per_mop
        );
        if self.verify.enabled {
            println!(
                "verify: {} reads checked, {} mismatches",
                self.verify.verified_reads, self.verify.mismatches
            );
        }
        if !self.errors.is_empty() {
            let e: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k} x{v}"))
                .collect();
            println!("errors: {}", e.join(", "));
        }
        for m in &self.messages {
            println!("  {m}");
        }
        for n in &self.notes {
            println!("note: {n}");
        }
        if let Some(s) = &self.soak {
            s.print();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn row_cells(
    id: String,
    cpu: Option<usize>,
    node: Option<u32>,
    ops: u64,
    iops: f64,
    mbs: f64,
    errors: u64,
    l: &LatSummary,
) -> Vec<String> {
    vec![
        id,
        cpu.map_or("-".into(), |c| c.to_string()),
        node.map_or("-".into(), |n| n.to_string()),
        ops.to_string(),
        fmt_count(iops),
        format!("{mbs:.1}"),
        errors.to_string(),
        format!("{:.1}", l.p50),
        format!("{:.1}", l.p99),
        format!("{:.1}", l.p999),
        format!("{:.1}", l.max),
    ]
}

/// The `--api` a run of `engine` reports: ringshard's, in routed and async mode.
pub fn api_of(engine: EngineKind, w: &Workload) -> Option<&'static str> {
    Api::applies(engine, w.mode).then(|| w.api.name())
}

/// How the load is generated, for headers and plot titles ("iodepth 32", "2 client(s), iodepth
/// 32", "64 task(s), 2 worker(s), iodepth 1"), leaving out what a sweep over `except` varies.
pub fn load_params(w: &Workload, except: Option<SweepKey>) -> String {
    let shown = |k: SweepKey| except != Some(k);
    let mut parts = Vec::new();
    match w.mode {
        Mode::InShard => {}
        Mode::Routed => {
            if shown(SweepKey::Clients) {
                parts.push(format!("{} client(s)", w.clients));
            }
        }
        Mode::Tasks => {
            if shown(SweepKey::Tasks) {
                parts.push(format!("{} task(s) per shard", w.tasks));
            }
        }
        Mode::Async => {
            if shown(SweepKey::Tasks) {
                parts.push(format!("{} task(s)", w.tasks));
            }
            if shown(SweepKey::Clients) {
                parts.push(format!("{} worker(s)", w.clients));
            }
        }
    }
    if shown(SweepKey::Iodepth) {
        parts.push(format!("iodepth {}", w.iodepth));
    }
    parts.join(", ")
}

/// Prints an aligned table: first column left-aligned, the others right-aligned.
pub fn print_table(head: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i == 0 {
                s.push_str(&format!("{c:<w$}"));
            } else {
                s.push_str(&format!("  {c:>w$}"));
            }
        }
        println!("{}", s.trim_end());
    };
    line(head.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// Per-round counts, space separated, for the "by round" columns.
pub fn fmt_rounds(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| fmt_count(*v))
        .collect::<Vec<_>>()
        .join(" ")
}

/// 812.3K style.
pub fn fmt_count(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}K", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), BenchError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| BenchError::runtime(format!("encoding JSON: {e}")))?;
    std::fs::write(path, text + "\n")
        .map_err(|e| BenchError::runtime(format!("writing --json {}: {e}", path.display())))
}

/// The median of `v` (mean of the middle two for an even count; 0 when empty).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(fmt_count(812_345.0), "812.3K");
        assert_eq!(fmt_count(1_500_000.0), "1.50M");
        assert_eq!(fmt_count(950.0), "950");
    }
}
