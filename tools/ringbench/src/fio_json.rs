//! `--output-format json`: the results in fio's JSON layout, for the fields fio and ringbench
//! both have, so that tools written for fio's output read ringbench's: `jobs[].jobname`,
//! `jobs[].read` / `write` (`io_bytes`, `io_kbytes`, `bw_bytes`, `bw` in KiB/s, `iops`, `runtime`
//! in ms, `total_ios`, `slat_ns` / `clat_ns` / `lat_ns` with `min`, `max`, `mean`, `stddev`, `N`
//! and `percentile` keyed "99.900000", meant as fio means them; and, not fio's, `co_lat_ns`:
//! from the intended start), `jobs[].sync` (`total_ios`, `lat_ns`: fsyncs or
//! fdatasyncs), `job_runtime`, `usr_cpu` and `sys_cpu` (percent of the runtime). ringbench's own
//! report of the job is under `jobs[].ringbench`.

use crate::report::{KindReport, RunReport};
use crate::tally::LatSummary;
use serde_json::{json, Map, Value};

/// fio's latency block (ns) from a summary in µs.
fn lat_block(l: &LatSummary) -> Value {
    let ns = |us: f64| (us * 1000.0).round() as u64;
    let mut pct = Map::new();
    for (k, v) in &l.percentiles {
        let p: f64 = k.parse().unwrap_or(0.0);
        pct.insert(format!("{p:.6}"), json!(ns(*v)));
    }
    json!({
        "min": ns(l.min),
        "max": ns(l.max),
        "mean": l.mean * 1000.0,
        "stddev": l.stddev * 1000.0,
        "N": l.n,
        "percentile": pct,
    })
}

fn dir_block(k: Option<&KindReport>, runtime_ms: u64) -> Value {
    let Some(k) = k else {
        let zero = json!({"min": 0, "max": 0, "mean": 0.0, "stddev": 0.0, "N": 0});
        return json!({
            "io_bytes": 0, "io_kbytes": 0, "bw_bytes": 0, "bw": 0, "iops": 0.0,
            "runtime": 0, "total_ios": 0, "short_ios": 0, "drop_ios": 0,
            "slat_ns": zero, "clat_ns": zero, "lat_ns": zero,
        });
    };
    let bw_bytes = (k.mb_s * 1e6).round() as u64;
    json!({
        "io_bytes": k.bytes,
        "io_kbytes": k.bytes / 1024,
        "bw_bytes": bw_bytes,
        "bw": bw_bytes / 1024,
        "iops": k.iops,
        "runtime": runtime_ms,
        "total_ios": k.ops,
        "short_ios": 0,
        "drop_ios": 0,
        "slat_ns": lat_block(&k.slat_us),
        "clat_ns": lat_block(&k.clat_us),
        "lat_ns": lat_block(&k.lat_us),
        // Not fio's: lat from the intended start (open loop; coordinated omission corrected).
        "co_lat_ns": k.co_lat_us.as_ref().map(lat_block),
    })
}

/// fio's `job options` for what ringbench ran (fio's option names, as strings).
fn job_options(r: &RunReport) -> Value {
    let w = &r.workload;
    let mut o = Map::new();
    let mut put = |k: &str, v: String| {
        o.insert(k.to_string(), Value::String(v));
    };
    put("name", w.name.clone().unwrap_or_else(|| "ringbench".into()));
    put("ioengine", format!("ringbench:{}", r.engine));
    put("rw", w.rw.name().to_string());
    put("bs", w.bs.to_string());
    put("filesize", w.size.to_string());
    put("nrfiles", r.files.len().to_string());
    put("iodepth", w.iodepth.to_string());
    put("direct", u8::from(w.direct).to_string());
    if w.rw.random() {
        put("random_distribution", w.distribution.to_string());
        put("percentage_random", w.percentage_random.to_string());
    }
    if w.rw.writes() && w.rw.reads() {
        put("rwmixread", w.rwmix_read.to_string());
    }
    if w.fsync_every > 0 {
        let key = if w.datasync { "fdatasync" } else { "fsync" };
        put(key, w.fsync_every.to_string());
    }
    if let Some(r) = w.rate_iops {
        put("rate_iops", format!("{r}"));
        put(
            "rate_process",
            format!("{:?}", w.rate_process).to_lowercase(),
        );
    }
    if let Some(d) = w.duration {
        put("runtime", format!("{}", d.as_secs_f64()));
    }
    if let Some(d) = w.ramp {
        put("ramp_time", format!("{}", d.as_secs_f64()));
    }
    Value::Object(o)
}

/// One `jobs[]` entry.
pub fn job(r: &RunReport) -> Value {
    let runtime_ms = (r.duration_s * 1000.0).round() as u64;
    let kinds = &r.total.kinds;
    let sync = kinds.get("fsync").or_else(|| kinds.get("fdatasync"));
    let pct = |s: f64| {
        if r.duration_s > 0.0 {
            s / r.duration_s * 100.0
        } else {
            0.0
        }
    };
    json!({
        "jobname": r.workload.name.clone().unwrap_or_else(|| "ringbench".into()),
        "groupid": 0,
        "error": i32::from(r.failed()),
        "elapsed": r.duration_s.round() as u64,
        "job options": job_options(r),
        "read": dir_block(kinds.get("read"), runtime_ms),
        "write": dir_block(kinds.get("write"), runtime_ms),
        "trim": dir_block(None, 0),
        "sync": {
            "total_ios": sync.map_or(0, |s| s.ops),
            "lat_ns": sync.map_or_else(|| lat_block(&LatSummary::default()), |s| lat_block(&s.lat_us)),
        },
        "job_runtime": runtime_ms,
        "usr_cpu": pct(r.cpu.user_s),
        "sys_cpu": pct(r.cpu.sys_s),
        "ringbench": r,
    })
}

/// The whole document for the jobs of a run.
pub fn document(reports: &[&RunReport]) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    json!({
        "fio version": format!("ringbench-{}", env!("CARGO_PKG_VERSION")),
        "timestamp": now.as_secs(),
        "timestamp_ms": now.as_millis() as u64,
        "jobs": reports.iter().map(|r| job(r)).collect::<Vec<_>>(),
        "disk_util": [],
    })
}

/// Writes the document to `path`, or stdout.
pub fn emit(
    reports: &[&RunReport],
    path: Option<&std::path::Path>,
) -> Result<(), crate::error::BenchError> {
    let doc = document(reports);
    match path {
        Some(p) => crate::report::write_json(p, &doc),
        None => {
            let text = serde_json::to_string_pretty(&doc)
                .map_err(|e| crate::error::BenchError::runtime(format!("encoding JSON: {e}")))?;
            println!("{text}");
            Ok(())
        }
    }
}
