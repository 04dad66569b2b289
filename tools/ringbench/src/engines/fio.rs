//! fio itself, with its io_uring engine: the baseline fio users trust. ringbench writes a fio job
//! file for the same workload (one fio job per ringbench load generator, with the same files and,
//! in-shard, the same CPU; the same depth, pattern, mix, distribution, sync cadence, open-loop
//! rate and durations; page cache left as warmed: `invalidate=0`), runs fio (`$RINGBENCH_FIO`,
//! else `fio` on the PATH) and reads its JSON back, group-reported.
//!
//! What differs, and is said in the report: fio has no co_lat (latency from the intended start:
//! its slat, clat and lat, as ringbench's, count from when an I/O started); its random offsets come from
//! its own generator (same law, other draws); fio cannot write ringbench's `--verify` pattern.

use super::{Output, Row, RunCtx};
use crate::control::CpuTimes;
use crate::error::BenchError;
use crate::report::KindReport;
use crate::tally::{LatSummary, Tally};
use crate::workload::{Mode, Rw};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The fio binary: `$RINGBENCH_FIO` if set (an empty value: none), else `fio` on the PATH.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RINGBENCH_FIO") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("fio"))
        .find(|p| p.is_file())
}

/// Why fio cannot run this workload in `--compare`, if it cannot.
pub fn unavailable(ctx_w: &crate::workload::Workload) -> Option<String> {
    if binary().is_none() {
        return Some(
            "fio: not installed (no $RINGBENCH_FIO, no fio on the PATH; apt-get install fio): \
             left out"
                .into(),
        );
    }
    if ctx_w.mode == Mode::Async {
        return Some(
            "fio: left out in --mode async (fio runs threads, not tasks; compare it in-shard or \
             routed)"
                .into(),
        );
    }
    if ctx_w.verify && ctx_w.rw.writes() {
        return Some(
            "fio: left out with --verify and writes (fio cannot write ringbench's pattern, and \
             the other engines would then find mismatches)"
                .into(),
        );
    }
    None
}

/// A file name for fio's `filename=` list (':' separates names: escaped).
fn fio_name(p: &std::path::Path) -> String {
    p.display().to_string().replace(':', "\\:")
}

/// The fio job file of the run.
pub fn job_file(ctx: &RunCtx) -> String {
    let w = ctx.w;
    let mut j = String::from("[global]\n");
    for (k, v) in global_options(ctx) {
        let _ = writeln!(j, "{k}={v}");
    }
    for s in ctx.submitters() {
        let _ = writeln!(j, "\n[ringbench{}]", s.index);
        let names: Vec<String> = s
            .files
            .iter()
            .map(|&i| fio_name(&ctx.files[i].path))
            .collect();
        let _ = writeln!(j, "filename={}", names.join(":"));
        if matches!(w.mode, Mode::InShard | Mode::Tasks) {
            let _ = writeln!(j, "cpus_allowed={}", ctx.cpu_of(s.index).0);
        }
        if let Some(q) = s.quota {
            // fio wraps around the files until io_size bytes are transferred.
            let _ = writeln!(j, "io_size={}", q * w.bs as u64);
        }
    }
    j
}

/// The `[global]` section: (fio option, value).
fn global_options(ctx: &RunCtx) -> Vec<(&'static str, String)> {
    let w = ctx.w;
    let mut o: Vec<(&'static str, String)> = vec![
        ("ioengine", "io_uring".into()),
        ("thread", "1".into()),
        ("group_reporting", "1".into()),
        // Keep the page cache as ringbench warmed it.
        ("invalidate", "0".into()),
        ("norandommap", "1".into()),
        ("lat_percentiles", "1".into()),
        ("slat_percentiles", "1".into()),
        ("direct", u8::from(w.direct).to_string()),
        ("rw", w.rw.name().into()),
        ("bs", w.bs.to_string()),
        ("filesize", w.size.to_string()),
        ("iodepth", w.iodepth.to_string()),
        // Page-aligned buffers, as every other engine's: fio aligns them only for O_DIRECT, and
        // 16 bytes off a page the kernel's page-cache copy into them took 4x as long (64k reads,
        // 41 µs instead of 9-10, on an AMD EPYC VM).
        ("iomem_align", "4096".into()),
    ];
    if w.rw == Rw::Randrw {
        o.push(("rwmixread", w.rwmix_read.to_string()));
    }
    if w.rw.random() {
        if !w.distribution.is_uniform() {
            o.push(("random_distribution", w.distribution.to_string()));
        }
        if w.percentage_random < 100 {
            o.push(("percentage_random", w.percentage_random.to_string()));
        }
    }
    if w.fsync_every > 0 && w.rw.writes() {
        let k = if w.datasync { "fdatasync" } else { "fsync" };
        o.push((k, w.fsync_every.to_string()));
    }
    if let Some(r) = w.rate_iops {
        // fio's rate is per direction: each gets the mix's share of the rate.
        let v = match w.rw {
            Rw::Randrw => {
                let rd = (r * f64::from(w.rwmix_read) / 100.0).round() as u64;
                let wr = (r * f64::from(100 - w.rwmix_read) / 100.0).round() as u64;
                format!("{},{}", rd.max(1), wr.max(1))
            }
            _ => format!("{}", r.round().max(1.0) as u64),
        };
        o.push(("rate_iops", v));
        o.push((
            "rate_process",
            format!("{:?}", w.rate_process).to_lowercase(),
        ));
    }
    // An --ops run is io_size-based (per job), else time-based.
    if let Some(d) = w.duration {
        o.push(("time_based", "1".into()));
        o.push(("runtime", format!("{}ms", d.as_millis().max(1))));
    }
    if let Some(r) = w.ramp {
        o.push(("ramp_time", format!("{}ms", r.as_millis().max(1))));
    }
    let list = if w.percentiles.is_empty() {
        crate::tally::FIO_PERCENTILES.to_vec()
    } else {
        w.percentiles.clone()
    };
    let list: Vec<String> = list.iter().map(|p| p.to_string()).collect();
    o.push(("percentile_list", list.join(":")));
    o
}

/// A latency summary (µs) from fio's block (ns).
fn lat_from(v: &Value) -> LatSummary {
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0) / 1000.0;
    let mut s = LatSummary {
        min: f("min"),
        max: f("max"),
        mean: f("mean"),
        stddev: f("stddev"),
        n: v["N"].as_u64().unwrap_or(0),
        ..Default::default()
    };
    if let Some(p) = v["percentile"].as_object() {
        for (k, x) in p {
            let pct: f64 = k.parse().unwrap_or(0.0);
            let us = x.as_f64().unwrap_or(0.0) / 1000.0;
            s.percentiles.insert(crate::tally::pct_key(pct), us);
            if (pct - 50.0).abs() < 1e-9 {
                s.p50 = us;
            } else if (pct - 99.0).abs() < 1e-9 {
                s.p99 = us;
            } else if (pct - 99.9).abs() < 1e-9 {
                s.p999 = us;
            }
        }
    }
    s
}

/// Reads fio's JSON (group-reported: one job) into ringbench's per-kind reports and a row.
pub fn parse_output(
    text: &str,
    w: &crate::workload::Workload,
) -> Result<(Output, Vec<String>), BenchError> {
    let start = text.find('{').unwrap_or(0);
    let v: Value = serde_json::from_str(&text[start..])
        .map_err(|e| BenchError::runtime(format!("reading fio's JSON: {e}")))?;
    let job = &v["jobs"][0];
    if job.is_null() {
        return Err(BenchError::runtime("fio's JSON has no job"));
    }
    let runtime = Duration::from_millis(job["job_runtime"].as_u64().unwrap_or(0));
    let secs = runtime.as_secs_f64();
    let mut kinds = BTreeMap::new();
    let mut total = Row::default();
    for (name, key) in [("read", "read"), ("write", "write")] {
        let d = &job[key];
        let ops = d["total_ios"].as_u64().unwrap_or(0);
        if ops == 0 {
            continue;
        }
        let bytes = d["io_bytes"].as_u64().unwrap_or(0);
        let k = KindReport {
            ops,
            iops: d["iops"].as_f64().unwrap_or(0.0),
            bytes,
            mb_s: d["bw_bytes"].as_f64().unwrap_or(0.0) / 1e6,
            slat_us: lat_from(&d["slat_ns"]),
            clat_us: lat_from(&d["clat_ns"]),
            lat_us: lat_from(&d["lat_ns"]),
            co_lat_us: None,
        };
        if name == "read" {
            total.reads = ops;
        } else {
            total.writes = ops;
        }
        total.bytes += bytes;
        // The row's latency: the kind with the most operations.
        if ops >= total.ops() - ops {
            total.lat_us = LatSummary {
                percentiles: BTreeMap::new(),
                ..k.lat_us.clone()
            };
        }
        kinds.insert(name, k);
    }
    let sync = &job["sync"];
    let syncs = sync["total_ios"].as_u64().unwrap_or(0);
    if syncs > 0 {
        let lat = lat_from(&sync["lat_ns"]);
        let name = if w.datasync { "fdatasync" } else { "fsync" };
        kinds.insert(
            name,
            KindReport {
                ops: syncs,
                iops: if secs > 0.0 { syncs as f64 / secs } else { 0.0 },
                bytes: 0,
                mb_s: 0.0,
                slat_us: LatSummary::default(),
                clat_us: lat.clone(),
                lat_us: lat,
                co_lat_us: None,
            },
        );
        total.fsyncs = syncs;
    }
    total.errors = job["error"].as_u64().unwrap_or(0);
    let pct = |k: &str| job[k].as_f64().unwrap_or(0.0) / 100.0 * secs;
    let cpu = CpuTimes {
        user_s: pct("usr_cpu"),
        sys_s: pct("sys_cpu"),
    };
    let notes = vec![format!(
        "{} (io_uring engine), group-reported; latency counted from when fio starts an I/O \
         (fio's lat; no co_lat: no coordinated-omission correction); CPU from fio's usr_cpu/sys_cpu",
        v["fio version"].as_str().unwrap_or("fio")
    )];
    let mut out = Output::from_tallies("fio job", Vec::new(), runtime, cpu, None, Vec::new());
    out.rows = vec![Row {
        id: None,
        ..total.clone()
    }];
    out.total = total;
    out.kinds = Some(kinds);
    if out.total.errors > 0 {
        out.checks
            .errors
            .insert(format!("fio error {}", out.total.errors), 1);
    }
    Ok((out, notes))
}

pub fn run(ctx: &RunCtx) -> Result<Output, BenchError> {
    let Some(fio) = binary() else {
        return Err(BenchError::usage(
            "--engine fio: fio is not installed (apt-get install fio), or set RINGBENCH_FIO",
        ));
    };
    if ctx.w.verify && ctx.w.rw.writes() {
        return Err(BenchError::usage(
            "--engine fio with --verify and writes: fio cannot write ringbench's pattern",
        ));
    }
    let text = job_file(ctx);
    let dir = ctx
        .files
        .first()
        .and_then(|f| f.path.parent())
        .map_or_else(std::env::temp_dir, |p| p.to_path_buf());
    let job_path = dir.join(format!(".ringbench-fio-{}.fio", std::process::id()));
    std::fs::write(&job_path, &text)
        .map_err(|e| BenchError::runtime(format!("writing {}: {e}", job_path.display())))?;
    let resident = ctx.warm()?;
    let out = Command::new(&fio)
        .arg("--output-format=json")
        .arg(&job_path)
        .output();
    let _ = std::fs::remove_file(&job_path);
    let out = out.map_err(|e| BenchError::runtime(format!("running {}: {e}", fio.display())))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(BenchError::runtime(format!(
            "fio failed ({}): {}",
            out.status,
            err.trim().lines().last().unwrap_or("no message")
        )));
    }
    let (mut o, notes) = parse_output(&String::from_utf8_lossy(&out.stdout), ctx.w)?;
    o.resident = resident;
    o.notes = notes;
    o.tally = Tally::default();
    Ok(o)
}
