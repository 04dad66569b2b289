//! The Prometheus / OpenMetrics text of real executor stats, read back by the reference parser
//! (Python's `prometheus_client`, Debian package `python3-prometheus-client`, which `.ci/run`
//! installs), and interval snapshots (`ExecutorStats::since`) around known work.
//!
//! Without the parser the exposition tests fail under CI (`CI` set) and are skipped, saying so,
//! elsewhere.

mod executor_util;

use executor_util::{ok, open_rwc};
use ringshard::{Executor, ExecutorStats, OpKind, OpenOptions};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/parse_metrics.py"
);

/// A Python interpreter that has `prometheus_client`, or `None` (skip) outside CI.
fn python() -> Option<&'static str> {
    for py in ["/usr/bin/python3", "python3"] {
        let found = Command::new(py)
            .args(["-c", "import prometheus_client"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if found {
            return Some(py);
        }
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "python3 with prometheus_client is needed to check the metrics text: apt-get install \
             python3-prometheus-client"
        );
    }
    eprintln!(
        "skipped: no python3 with prometheus_client (apt-get install python3-prometheus-client)"
    );
    None
}

/// Runs the reference parser on `text`: `Ok(parsed JSON)` or `Err(parser's message)`.
fn parse(py: &str, flavor: &str, text: &str) -> Result<Value, String> {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(text.as_bytes()).expect("write metrics text");
    let out = Command::new(py)
        .arg(SCRIPT)
        .arg(flavor)
        .arg(f.path())
        .output()
        .expect("run the parser");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("parser output is JSON"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// (sample name, sorted labels) -> value, over every family.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

fn samples(parsed: &Value) -> Samples {
    let mut out = BTreeMap::new();
    for fam in parsed["families"].as_array().expect("families") {
        for s in fam["samples"].as_array().expect("samples") {
            let labels: Vec<(String, String)> = s["labels"]
                .as_object()
                .expect("labels")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("label value").to_string()))
                .collect();
            let key = (s["name"].as_str().expect("name").to_string(), labels);
            let prev = out.insert(key.clone(), s["value"].as_f64().expect("value"));
            assert!(prev.is_none(), "duplicate sample {key:?}");
        }
    }
    out
}

fn family_type(parsed: &Value, name: &str) -> Option<String> {
    parsed["families"]
        .as_array()?
        .iter()
        .find(|f| f["name"] == name)
        .and_then(|f| f["type"].as_str().map(str::to_string))
}

/// Sum of `name` over samples whose labels include every pair of `with`.
fn sum(s: &Samples, name: &str, with: &[(&str, &str)]) -> f64 {
    s.iter()
        .filter(|((n, labels), _)| {
            n == name
                && with
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Known work on two files: per file, an open, `writes` 4 KiB writes, `reads` 4 KiB reads, one
/// fsync and a close; then the directory is opened, read once (EISDIR, in the kernel) and closed.
fn work(exec: &Executor, dir: &Path, writes: u64, reads: u64) {
    for i in 0..2 {
        let path = dir.join(format!("m{i}"));
        let f = open_rwc(exec, &path);
        for k in 0..writes {
            ok(exec.write(&f, k * 4096, vec![7u8; 4096]), "write");
        }
        for k in 0..reads {
            ok(exec.read(&f, (k % writes.max(1)) * 4096, 4096), "read");
        }
        ok(exec.fsync(&f), "fsync");
        ok(exec.close(&f), "close");
        let d = ok(exec.open(dir, OpenOptions::new().read(true)), "open dir");
        let e = executor_util::wait(exec.read(&d, 0, 100));
        assert_eq!(e.err().and_then(|e| e.errno()), Some(libc::EISDIR));
        ok(exec.close(&d), "close dir");
    }
}

fn executor() -> Executor {
    Executor::builder()
        .shards(2)
        .buffer_count(16)
        .build()
        .expect("executor")
}

/// Checks the parsed samples against the stats they were rendered from.
fn check_against(stats: &ExecutorStats, s: &Samples) {
    for shard in &stats.shards {
        let id = shard.shard.to_string();
        let mode = shard.ring_mode.map(|m| m.name()).unwrap_or("none");
        for kind in OpKind::ALL {
            let got = sum(
                s,
                "ringshard_ops_total",
                &[("shard", &id), ("op", kind.name())],
            );
            assert_eq!(got, shard.ops(kind) as f64, "shard {id} {kind}");
        }
        // Every series of the shard carries its backend and ring mode.
        let info = sum(
            s,
            "ringshard_shard_info",
            &[
                ("shard", &id),
                ("backend", shard.backend.name()),
                ("ring_mode", mode),
            ],
        );
        assert_eq!(info, 1.0, "shard {id} info");
        let hist = sum(
            s,
            "ringshard_op_latency_seconds_count",
            &[
                ("shard", &id),
                ("backend", shard.backend.name()),
                ("ring_mode", mode),
            ],
        );
        assert_eq!(
            hist,
            shard.latency().count as f64,
            "shard {id} latency count"
        );
        let inf = sum(
            s,
            "ringshard_op_latency_seconds_bucket",
            &[("shard", &id), ("op", "read"), ("le", "+Inf")],
        );
        assert_eq!(inf, shard.read_latency().count as f64);
    }
    let t = &stats.total;
    assert_eq!(
        sum(s, "ringshard_written_bytes_total", &[]),
        t.bytes_written as f64
    );
    assert_eq!(
        sum(s, "ringshard_read_bytes_total", &[]),
        t.bytes_read as f64
    );
    assert_eq!(
        sum(s, "ringshard_errors_total", &[("errno", "EISDIR")]),
        t.errors_with(libc::EISDIR) as f64
    );
    assert_eq!(sum(s, "ringshard_sleeps_total", &[]), t.sleeps as f64);
    assert_eq!(
        sum(s, "ringshard_sqes_submitted_total", &[]),
        t.sqes_submitted as f64
    );
    assert_eq!(
        sum(s, "ringshard_pool_buffers", &[]),
        t.pool.total_count as f64
    );
    // Median within the bucket holding it: the cumulative buckets are monotone and reach _count.
    let count = sum(s, "ringshard_op_latency_seconds_count", &[]);
    assert_eq!(count, t.latency().count as f64);
    let secs = sum(s, "ringshard_op_latency_seconds_sum", &[]);
    let mean_s = t.latency().mean_us / 1e6;
    assert!(
        (secs - mean_s * count).abs() <= 0.01 * secs.max(1e-9),
        "sum {secs} vs mean {mean_s} x {count}"
    );
}

#[test]
fn exposition_parses_and_matches_the_stats() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let exec = executor();
    work(&exec, dir.path(), 8, 8);
    let stats = exec.stats();
    exec.shutdown().expect("shutdown");
    for shard in &stats.shards {
        // A ring on io_uring; none on the threads backend (RINGSHARD_BACKEND=threads).
        assert_eq!(
            shard.ring_mode.is_some(),
            shard.backend == ringshard::Backend::IoUring,
            "shard {}: a ring exactly on io_uring",
            shard.shard
        );
        if shard.numa_node.is_some() {
            assert!(shard.mem_policy.is_some(), "shard {}", shard.shard);
        }
    }
    assert_eq!(stats.total.errors_with(libc::EISDIR), 2, "{stats}");

    let om_text = stats.to_openmetrics();
    let om = parse(py, "openmetrics", &om_text)
        .unwrap_or_else(|e| panic!("OpenMetrics text rejected: {e}\n{om_text}"));
    let prom_text = stats.to_prometheus();
    let prom = parse(py, "prometheus", &prom_text)
        .unwrap_or_else(|e| panic!("Prometheus text rejected: {e}\n{prom_text}"));

    assert_eq!(
        family_type(&om, "ringshard_ops").as_deref(),
        Some("counter")
    );
    assert_eq!(
        family_type(&om, "ringshard_op_latency_seconds").as_deref(),
        Some("histogram")
    );
    assert_eq!(
        family_type(&om, "ringshard_shard_info").as_deref(),
        Some("gauge")
    );
    assert_eq!(
        family_type(&prom, "ringshard_ops").as_deref(),
        Some("counter")
    );
    let om_samples = samples(&om);
    check_against(&stats, &om_samples);
    // The two formats carry the same samples.
    assert_eq!(om_samples, samples(&prom));
}

#[test]
fn malformed_exposition_is_rejected() {
    let Some(py) = python() else { return };
    let exec = executor();
    let dir = tempfile::tempdir().expect("tempdir");
    work(&exec, dir.path(), 2, 2);
    let text = exec.stats().to_openmetrics();
    exec.shutdown().expect("shutdown");
    parse(py, "openmetrics", &text).expect("the unmodified text parses");

    // The checker must catch what a broken renderer would write.
    let no_eof = text.replace("# EOF\n", "");
    let bad_bucket = {
        // The first +Inf bucket claims one sample more than its _count.
        let line = text
            .lines()
            .find(|l| l.starts_with("ringshard_op_latency_seconds_bucket") && l.contains("+Inf"))
            .expect("an +Inf bucket");
        let (head, n) = line.rsplit_once(' ').expect("value");
        let n: u64 = n.parse().expect("integer");
        text.replacen(line, &format!("{head} {}", n + 1), 1)
    };
    let unescaped = text.replacen("shard=\"0\"", "shard=\"0\"0\"", 1);
    let late_help = format!("{}# HELP ringshard_ops again\n# EOF\n", no_eof);
    for (what, bad) in [
        ("no # EOF", no_eof.clone()),
        ("+Inf bucket != _count", bad_bucket),
        ("unescaped quote", unescaped),
        ("metadata after samples", late_help),
    ] {
        assert!(
            parse(py, "openmetrics", &bad).is_err(),
            "{what}: the parser accepted it"
        );
    }
}

#[test]
fn since_covers_the_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exec = executor();
    work(&exec, dir.path(), 5, 3);
    let before = exec.stats();
    work(&exec, dir.path(), 4, 6);
    let after = exec.stats();
    exec.shutdown().expect("shutdown");

    let d = after.since(&before);
    let t = &d.total;
    // Per file: 4 writes, 6 reads and a failing one, 1 fsync, 2 opens, 2 closes; two files.
    assert_eq!(t.ops(OpKind::Write), 2 * 4, "{d}");
    assert_eq!(t.ops(OpKind::Read), 2 * 7, "{d}");
    assert_eq!(t.ops(OpKind::Fsync), 2, "{d}");
    assert_eq!(t.ops(OpKind::Open), 4, "{d}");
    assert_eq!(t.ops(OpKind::Close), 4, "{d}");
    assert_eq!(t.bytes_written, 2 * 4 * 4096);
    assert_eq!(t.bytes_read, 2 * 6 * 4096);
    assert_eq!(t.errors_with(libc::EISDIR), 2);
    assert_eq!(t.error_count(), 2);
    assert_eq!(t.latency().count, t.total_ops() - t.ops(OpKind::Task));
    assert_eq!(t.read_latency().count, 14);
    assert_eq!(d.elapsed, after.elapsed - before.elapsed);
    assert!(d.ops_per_sec() > 0.0);
    // The later snapshot is the sum of the earlier one and the interval.
    assert_eq!(
        after.total.total_ops(),
        before.total.total_ops() + t.total_ops()
    );
    assert_eq!(
        after.total.latency().count,
        before.total.latency().count + t.latency().count
    );
    // The interval renders like any stats.
    if let Some(py) = python() {
        let text = d.to_openmetrics();
        let parsed = parse(py, "openmetrics", &text)
            .unwrap_or_else(|e| panic!("OpenMetrics text rejected: {e}\n{text}"));
        check_against(&d, &samples(&parsed));
    }
}
