//! ringbench as fio users expect it: latency per operation kind with --percentiles, open loop
//! (--rate-iops, --rate) in every engine, --ramp-time, skewed offsets, several jobs (--name groups
//! and fio job files), fio's option names and JSON layout, and fio itself in --compare.
//!
//! No test depends on the machine's speed: open loop is checked by what a schedule guarantees
//! (never faster than the rate: the run lasts at least (ops - 1) / rate) and by the accounting in
//! the reports; distributions' shapes are checked by the unit tests with fixed seeds.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn ringbench_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ringbench"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("running ringbench")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = ringbench_env(args, env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "ringbench {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn ok(args: &[&str]) -> String {
    ok_env(args, &[])
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("reading --json")).expect("JSON")
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"))
}

/// Runs with `--quiet --size 2m --dir DIR --json DIR/out.json` first (options of the whole run,
/// before any --name): stdout and the JSON.
fn run_in(dir: &Path, args: &[&str]) -> (String, Value) {
    let js = dir.join("out.json");
    let mut all = vec![
        "--quiet",
        "--size",
        "2m",
        "--dir",
        dir.to_str().unwrap(),
        "--json",
        js.to_str().unwrap(),
    ];
    all.extend(args);
    let out = ok(&all);
    (out, json(&js))
}

fn usage_error(args: &[&str], needle: &str) {
    let out = ringbench_env(args, &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
}

/// Checks one kind's report: ops, slat/clat/lat/co_lat with the requested percentiles, and what
/// holds for every operation: lat = slat + clat covers each part, co_lat (from the intended
/// start) covers lat. An order that holds per operation holds for every percentile, min, mean
/// and max; 1% for the parts' coarser histograms (2 significant digits, lat's 3).
fn check_kind(k: &Value, keys: &[&str]) {
    assert!(num(k, "ops") > 0.0, "{k}");
    for stat in ["slat_us", "clat_us", "lat_us", "co_lat_us"] {
        let s = &k[stat];
        for key in ["min", "mean", "max", "p50", "p99"] {
            assert!(s.get(key).is_some(), "{stat}.{key}: {k}");
        }
        let pct = s["percentiles"].as_object().expect("percentiles");
        let got: Vec<&str> = pct.keys().map(String::as_str).collect();
        assert_eq!(got, keys, "{stat}");
    }
    let at = |stat: &str, key: &str| -> f64 {
        match key.parse::<f64>() {
            Ok(_) => num(&k[stat]["percentiles"], key),
            Err(_) => num(&k[stat], key),
        }
    };
    let mut points = vec!["min", "mean", "max", "p50", "p99"];
    points.extend(keys);
    for p in points {
        let (lat, co) = (at("lat_us", p), at("co_lat_us", p));
        for part in ["slat_us", "clat_us"] {
            let v = at(part, p);
            assert!(lat >= v * 0.99 - 0.002, "lat {p} {lat} < {part} {v}: {k}");
        }
        assert!(
            co >= lat * 0.999 - 0.002,
            "co_lat {p} {co} < lat {lat}: {k}"
        );
    }
}

#[test]
fn latency_per_kind_with_percentiles_and_fdatasync() {
    let dir = tempfile::tempdir().unwrap();
    let (out, v) = run_in(
        dir.path(),
        &[
            "--rw",
            "randrw",
            "--fdatasync",
            "8",
            "--percentiles",
            "50:99.9",
            "--ops",
            "2000",
            "--shards",
            "1",
            "--iodepth",
            "4",
        ],
    );
    assert!(out.contains("per operation kind"), "{out}");
    assert!(out.contains("p99.9"), "{out}");
    let kinds = &v["total"]["kinds"];
    for k in ["read", "write", "fdatasync"] {
        check_kind(&kinds[k], &["50", "99.9"]);
    }
    assert!(kinds.get("fsync").is_none(), "{kinds}");
    assert_eq!(num(&kinds["fdatasync"], "bytes"), 0.0);
    assert_eq!(
        num(&kinds["read"], "ops") + num(&kinds["write"], "ops"),
        2000.0
    );
    assert_eq!(v["workload"]["datasync"], true);
    usage_error(&["--percentiles", "0,50"], "--percentiles");
    usage_error(&["--fsync", "4", "--fdatasync", "4"], "give one");
}

/// Open loop on `engine` in `mode`: 60 operations at 300 per second per load generator, one
/// generator: the schedule cannot finish before 59/300 s, whatever the machine.
fn open_loop(engine: &str, mode: &str, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--engine",
        engine,
        "--mode",
        mode,
        "--rate-iops",
        "300",
        "--ops",
        "60",
        "--iodepth",
        "2",
        "--rw",
        "randrw",
        "--fsync",
        "16",
        "--percentiles",
        "50,99",
    ];
    args.extend(extra);
    let (out, v) = run_in(dir.path(), &args);
    assert!(out.contains("intended start (open loop)"), "{out}");
    assert_eq!(num(&v["workload"], "rate_iops"), 300.0);
    assert_eq!(num(&v["total"], "ops"), 60.0, "{engine} {mode}");
    // With --iodepth 2, tokio-fs splits a generator into 2 tasks of 30 at 150/s: 29/150 s.
    assert!(
        num(&v, "duration_s") >= 29.0 / 150.0 * 0.99,
        "{engine} {mode}: 60 ops at 300/s in {} s",
        v["duration_s"]
    );
    let kinds = &v["total"]["kinds"];
    for k in ["read", "write"] {
        let lat = &kinds[k]["lat_us"];
        assert!(num(lat, "n") > 0.0, "{engine} {mode} {k}: {kinds}");
    }
    for k in kinds.as_object().expect("kinds").values() {
        check_kind(k, &["50", "99"]);
    }
    // Syncs are not paced: meant to start when they started (co_lat = lat).
    if let Some(f) = kinds.get("fsync") {
        assert_eq!(f["co_lat_us"]["max"], f["lat_us"]["max"], "{f}");
    }
}

#[test]
fn open_loop_in_shard_engines() {
    for engine in [
        "ringshard",
        "raw-uring",
        "pread-pool",
        "tokio-fs",
        "spawn-blocking",
        "ringshard-inshard",
        "ringshard-threads",
    ] {
        open_loop(engine, "in-shard", &["--shards", "1"]);
    }
    for engine in ["ringshard", "raw-uring"] {
        open_loop(
            engine,
            "in-shard",
            &["--shards", "1", "--rate-wait", "sleep"],
        );
    }
}

/// fio's definitions on real runs of the ring engines (open loop both ways of waiting, and
/// closed loop): per kind lat >= slat and lat >= clat, co_lat >= lat; in fio's JSON layout too
/// (`slat_ns`, `clat_ns`, `lat_ns` and ringbench's `co_lat_ns`).
#[test]
fn fio_latency_definitions_hold_per_kind() {
    let runs: [&[&str]; 6] = [
        &[
            "--engine",
            "raw-uring",
            "--rate-iops",
            "2000",
            "--rate-wait",
            "poll",
        ],
        &[
            "--engine",
            "raw-uring",
            "--rate-iops",
            "2000",
            "--rate-wait",
            "sleep",
        ],
        &[
            "--engine",
            "ringshard",
            "--rate-iops",
            "2000",
            "--rate-wait",
            "poll",
        ],
        &[
            "--engine",
            "ringshard",
            "--rate-iops",
            "2000",
            "--rate-wait",
            "sleep",
        ],
        &["--engine", "raw-uring"],
        // fio's rate_iops=R,W: reads and writes on schedules of their own.
        &[
            "--engine",
            "raw-uring",
            "--rate-iops",
            "2000",
            "--rate-wait",
            "sleep",
            "--rate-per-direction",
        ],
    ];
    for extra in runs {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--rw",
            "randrw",
            "--ops",
            "600",
            "--iodepth",
            "4",
            "--shards",
            "1",
            "--fsync",
            "32",
            "--percentiles",
            "50,99,99.9",
        ];
        args.extend(extra);
        let (out, v) = run_in(dir.path(), &args);
        let open = extra.contains(&"--rate-iops");
        assert_eq!(
            out.contains("co_lat from the intended start"),
            open,
            "{out}"
        );
        let kinds = v["total"]["kinds"].as_object().expect("kinds");
        for k in ["read", "write", "fsync"] {
            check_kind(&kinds[k], &["50", "99", "99.9"]);
        }
        let split = extra.contains(&"--rate-per-direction");
        assert_eq!(v["workload"]["rate_per_direction"], split, "{extra:?}");
        if split {
            // Neither schedule goes faster than its share (1400 reads/s, 600 writes/s): 600
            // operations take at least (600 - 2) / 2000 s.
            assert!(num(&v, "duration_s") >= 0.29, "{v}");
        }
        if let Some(w) = extra.iter().position(|a| *a == "--rate-wait") {
            assert_eq!(v["workload"]["rate_wait"], extra[w + 1], "{extra:?}");
        }
        // fio's layout: the same numbers in ns.
        let mut fio_args = args.clone();
        let d = dir.path().to_str().unwrap();
        fio_args.extend([
            "--quiet",
            "--size",
            "2m",
            "--dir",
            d,
            "--output-format",
            "json",
        ]);
        let j: Value = serde_json::from_str(&ok(&fio_args)).expect("fio JSON");
        for k in ["read", "write"] {
            let b = &j["jobs"][0][k];
            for p in ["50.000000", "99.000000", "99.900000"] {
                let at = |f: &str| num(&b[f]["percentile"], p);
                let lat = at("lat_ns");
                assert!(
                    lat >= at("slat_ns") * 0.99 && lat >= at("clat_ns") * 0.99,
                    "{b}"
                );
                assert!(at("co_lat_ns") >= lat * 0.999, "{b}");
            }
        }
    }
    usage_error(&["--rate-wait", "spin"], "--rate-wait");
}

#[test]
fn open_loop_routed_async_and_tasks() {
    open_loop("ringshard", "routed", &["--clients", "1"]);
    open_loop(
        "ringshard",
        "routed",
        &["--clients", "1", "--api", "completion"],
    );
    open_loop("ringshard", "async", &["--tasks", "1"]);
    open_loop("ringshard", "async", &["--tasks", "1", "--api", "session"]);
    open_loop("tokio-fs", "async", &["--tasks", "1"]);
    open_loop("inline-nowait", "async", &["--tasks", "1"]);
    open_loop("spawn-blocking", "async", &["--tasks", "1"]);
    open_loop("ringshard", "tasks", &["--shards", "1"]);
    open_loop("ringshard-inshard", "tasks", &["--shards", "1"]);
    open_loop("raw-uring", "tasks", &["--shards", "1"]);
    open_loop("ringshard-threads", "routed", &["--clients", "1"]);
    open_loop("pread-pool", "routed", &["--clients", "1"]);
    // --rate is bytes per second: 1.2 MB/s of 4k blocks is 300 IOPS.
    let dir = tempfile::tempdir().unwrap();
    let (_, v) = run_in(
        dir.path(),
        &[
            "--rate",
            "1200k",
            "--rate-process",
            "poisson",
            "--ops",
            "20",
            "--shards",
            "1",
        ],
    );
    assert_eq!(num(&v["workload"], "rate_iops"), 300.0);
    assert_eq!(v["workload"]["rate_process"], "poisson");
    usage_error(&["--rate-iops", "0"], "--rate-iops");
    usage_error(&["--rate-iops", "10", "--rate", "1m"], "give one");
}

#[test]
fn ramp_time_is_not_counted() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = std::time::Instant::now();
    let (out, v) = run_in(
        dir.path(),
        &[
            "--ramp_time",
            "600ms",
            "--runtime",
            "400ms",
            "--rate_iops",
            "500",
            "--shards",
            "1",
            "--iodepth",
            "4",
        ],
    );
    let wall = t0.elapsed().as_secs_f64();
    assert_eq!(num(&v["workload"], "ramp"), 0.6);
    let secs = num(&v, "duration_s");
    assert!(num(&v["total"], "ops") > 0.0);
    // The run lasted the ramp and the duration; the measured time is the part after the ramp.
    assert!(wall >= 1.0, "{wall} s");
    assert!(
        secs >= 0.4 && secs <= wall - 0.6,
        "measured {secs} s of {wall} s"
    );
    assert!(
        out.contains("ringshard's own statistics are left out"),
        "{out}"
    );
    usage_error(
        &["--ramp-time", "1s", "--ops", "10"],
        "--ramp-time with --ops",
    );
}

#[test]
fn skewed_offsets_options() {
    let dir = tempfile::tempdir().unwrap();
    let (_, v) = run_in(
        dir.path(),
        &[
            "--random_distribution",
            "zipf:1.2",
            "--percentage_random",
            "90",
            "--ops",
            "2000",
            "--shards",
            "1",
            "--verify",
        ],
    );
    assert_eq!(v["workload"]["distribution"], "zipf:1.2");
    assert_eq!(v["workload"]["percentage_random"], 90);
    assert_eq!(v["verify"]["mismatches"], 0);
    for d in ["pareto:0.2", "normal:10:0.5"] {
        let (_, v) = run_in(
            dir.path(),
            &["--random-distribution", d, "--ops", "500", "--shards", "1"],
        );
        assert_eq!(v["workload"]["distribution"], d);
    }
    usage_error(
        &["--random-distribution", "zipf:0"],
        "--random-distribution",
    );
    usage_error(&["--random-distribution", "pareto:1.5"], "between 0 and 1");
    usage_error(
        &["--rw", "read", "--random-distribution", "zipf:1.2"],
        "apply to random patterns",
    );
    usage_error(&["--percentage-random", "101"], "--percentage-random");
}

#[test]
fn fio_names_and_fio_json_layout() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = ok(&[
        "--runtime",
        "300ms",
        "--numjobs",
        "1",
        "--nrfiles",
        "2",
        "--directory",
        d,
        "--cpus_allowed",
        "0",
        "--output-format=json",
        "--fsync",
        "16",
        "--rw",
        "randrw",
        "--rwmixread",
        "60",
        "--direct=0",
        "--blocksize",
        "4k",
        "--filesize",
        "2m",
        "--quiet",
    ]);
    let v: Value = serde_json::from_str(&out).expect("stdout is fio's JSON and nothing else");
    assert!(v["fio version"].as_str().unwrap().starts_with("ringbench-"));
    let job = &v["jobs"][0];
    assert_eq!(job["jobname"], "ringbench");
    for dir in ["read", "write"] {
        let d = &job[dir];
        assert!(num(d, "iops") > 0.0, "{d}");
        assert!(num(d, "total_ios") > 0.0);
        assert!(num(d, "io_bytes") > 0.0);
        assert!(num(d, "runtime") > 0.0);
        for lat in ["slat_ns", "clat_ns", "lat_ns"] {
            assert!(num(&d[lat], "N") > 0.0, "{dir}.{lat}");
        }
        let p = d["clat_ns"]["percentile"].as_object().unwrap();
        assert_eq!(p.len(), 17, "fio's default list");
        assert!(
            p.contains_key("99.000000") && p.contains_key("99.990000"),
            "{p:?}"
        );
    }
    assert!(num(&job["sync"], "total_ios") > 0.0);
    assert_eq!(job["job options"]["fsync"], "16");
    assert_eq!(job["job options"]["rw"], "randrw");
    assert!(num(job, "job_runtime") > 0.0);
    let rb = &job["ringbench"];
    assert_eq!(rb["workload"]["files"], 2);
    assert_eq!(
        rb["workload"]["placement"]["shards"], 1,
        "--numjobs is --shards"
    );
    assert_eq!(rb["workload"]["placement"]["cores"][0], 0);
    assert_eq!(rb["workload"]["rwmix_read"], 60);
    // --numjobs is --clients routed; --output needs json.
    let js = dir.path().join("fio.json");
    ok(&[
        "--mode",
        "routed",
        "--numjobs",
        "2",
        "--ops",
        "500",
        "--size",
        "2m",
        "--directory",
        d,
        "--output-format",
        "normal,json",
        "--output",
        js.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(json(&js)["jobs"][0]["ringbench"]["workload"]["clients"], 2);
    usage_error(&["--numjobs", "2", "--shards", "1"], "disagree");
    usage_error(&["--output", "x.json"], "--output-format json");
    usage_error(&["--output-format", "xml"], "--output-format");
}

/// Several jobs at once from --name groups: one report each, the group total, files apart.
#[test]
fn name_groups_run_several_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let (out, v) = run_in(
        dir.path(),
        &[
            "--runtime",
            "300ms",
            "--shards",
            "1",
            "--name",
            "reader",
            "--rw",
            "randread",
            "--random-distribution",
            "zipf:1.1",
            "--name",
            "writer",
            "--rw",
            "randwrite",
            "--engine",
            "raw-uring",
            "--fsync",
            "8",
        ],
    );
    assert!(out.contains("=== job reader"), "{out}");
    assert!(out.contains("=== job writer"), "{out}");
    assert!(out.contains("=== group: 2 job(s) at once"), "{out}");
    let g = &v["group"];
    assert_eq!(g["jobs"], 2);
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs[0]["workload"]["name"], "reader");
    assert_eq!(runs[1]["engine"], "raw-uring");
    assert_eq!(runs[1]["workload"]["rw"], "randwrite");
    let ops: f64 = runs.iter().map(|r| num(&r["total"], "ops")).sum();
    assert_eq!(num(g, "ops"), ops);
    assert!(g["kinds"]["read"]["ops"].as_u64().unwrap() > 0);
    assert!(g["kinds"]["fsync"]["ops"].as_u64().unwrap() > 0);
    for job in ["reader", "writer"] {
        assert!(
            dir.path().join(job).join("ringbench.0.dat").exists(),
            "{job}"
        );
    }
}

fn fio_installed() -> bool {
    Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// True (and says so) when fio is not installed: the tests that run fio are then skipped.
fn skip_without_fio() -> bool {
    let missing = !fio_installed();
    if missing {
        println!("SKIPPED: fio is not installed (apt-get install fio)");
    }
    missing
}

/// A fio job file: ringbench runs it (fio's names, [global] shared, size split over nrfiles),
/// and, where fio is installed, fio accepts the same file.
#[test]
fn fio_job_file_runs_every_section() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mixed.fio");
    std::fs::write(
        &file,
        "\
; two jobs at once
[global]
ioengine=io_uring
bs=4k
size=4m
nrfiles=2
runtime=300ms
time_based
iodepth=4

[hot-reads]
rw=randread
random_distribution=zipf:1.2
rate_iops=2000

[writes]
rw=randwrite
fdatasync=16
",
    )
    .unwrap();
    let js = dir.path().join("out.json");
    let out = ok(&[
        file.to_str().unwrap(),
        "--shards",
        "1",
        "--dir",
        dir.path().to_str().unwrap(),
        "--quiet",
        "--json",
        js.to_str().unwrap(),
    ]);
    assert!(
        out.contains("=== job hot-reads") && out.contains("=== job writes"),
        "{out}"
    );
    let v = json(&js);
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    let r = &runs[0]["workload"];
    assert_eq!(r["distribution"], "zipf:1.2");
    assert_eq!(r["rate_iops"], 2000.0);
    assert_eq!(
        (r["files"].as_u64(), r["size"].as_u64()),
        (Some(2), Some(2 << 20))
    );
    assert_eq!(runs[1]["workload"]["datasync"], true);
    if fio_installed() {
        let parsed = Command::new("fio")
            .arg("--parse-only")
            .arg(&file)
            .output()
            .unwrap();
        assert!(parsed.status.success(), "{}", text(&parsed.stderr));
    }
    let bad = dir.path().join("bad.fio");
    std::fs::write(&bad, "[j]\nfilename=/dev/null\n").unwrap();
    usage_error(&[bad.to_str().unwrap()], "is not an option ringbench has");
}

#[test]
fn compare_says_when_fio_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let js = dir.path().join("c.json");
    let d = dir.path().to_str().unwrap();
    let args = [
        "--compare",
        "--repeat",
        "1",
        "--ops",
        "1000",
        "--size",
        "2m",
        "--shards",
        "1",
        "--quiet",
        "--dir",
        d,
        "--json",
        js.to_str().unwrap(),
    ];
    let out = ok_env(&args, &[("RINGBENCH_FIO", "")]);
    assert!(out.contains("fio: not installed"), "{out}");
    let v = json(&js);
    assert!(v["left_out"][0].as_str().unwrap().contains("not installed"));
    assert!(v["engines"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["engine"] != "fio"));
    let e = ringbench_env(
        &["--engine", "fio", "--ops", "10"],
        &[("RINGBENCH_FIO", "")],
    );
    assert_eq!(e.status.code(), Some(2));
    assert!(text(&e.stderr).contains("fio is not installed"));
}

#[test]
fn compare_runs_fio_with_the_same_workload() {
    if skip_without_fio() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (out, v) = run_in(
        dir.path(),
        &[
            "--compare",
            "--repeat",
            "1",
            "--ops",
            "3000",
            "--shards",
            "1",
            "--rw",
            "randrw",
            "--fsync",
            "32",
            "--random-distribution",
            "zipf:1.2",
        ],
    );
    assert!(out.contains("fio"), "{out}");
    let runs = v["runs"].as_array().unwrap();
    let fio = runs
        .iter()
        .find(|r| r["engine"] == "fio")
        .expect("a fio run");
    assert_eq!(fio["total"]["ops"], 3000, "number_ios per job: {fio}");
    let kinds = &fio["total"]["kinds"];
    for k in ["read", "write"] {
        assert!(num(&kinds[k]["lat_us"], "p50") > 0.0, "{kinds}");
    }
    assert!(kinds["fsync"]["ops"].as_u64().unwrap() > 0);
    assert!(fio["notes"][0]
        .as_str()
        .unwrap()
        .contains("coordinated-omission"));
}

/// The fio engine in open loop: fio's `rate_iops` is per direction, so ringbench gives each
/// direction the mix's share (700 reads + 300 writes per second here). fio never goes faster
/// than its schedule, so neither direction's IOPS is above its share, on any machine (10% for
/// fio's millisecond runtime and the first operation of each schedule, which goes at once).
#[test]
fn fio_engine_runs_open_loop_at_the_rate_per_direction() {
    if skip_without_fio() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (out, v) = run_in(
        dir.path(),
        &[
            "--engine",
            "fio",
            "--rate-iops",
            "1000",
            "--ops",
            "300",
            "--rw",
            "randrw",
            "--rwmixread",
            "70",
            "--random-distribution",
            "zipf:1.2",
            "--iodepth",
            "2",
            "--shards",
            "1",
            "--percentiles",
            "50,90,99",
        ],
    );
    assert!(out.contains("no co_lat"), "{out}");
    let kinds = &v["total"]["kinds"];
    assert_eq!(
        num(&kinds["read"], "ops") + num(&kinds["write"], "ops"),
        300.0,
        "{kinds}"
    );
    for (k, share) in [("read", 700.0), ("write", 300.0)] {
        let iops = num(&kinds[k], "iops");
        assert!(iops > 0.0 && iops <= share * 1.1, "{k}: {iops} IOPS");
        let lat = &kinds[k]["lat_us"];
        let pct = lat["percentiles"].as_object().expect("percentiles");
        let got: Vec<&str> = pct.keys().map(String::as_str).collect();
        assert_eq!(got, ["50", "90", "99"], "{k}");
        assert!(num(&lat["percentiles"], "99") >= num(&lat["percentiles"], "50"));
        assert!(kinds[k]["co_lat_us"].is_null(), "fio has no co_lat: {k}");
    }
}
