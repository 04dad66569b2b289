//! Runs the built ringbench binary: every engine in both modes with --verify and --json for about a
//! second each, --mode async with each async engine, --api, --compare, --sweep (shards, iodepth,
//! tasks), verification catching a corrupted byte, and the usage errors (exit code 2, one line).

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn ringbench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringbench"))
        .args(args)
        .output()
        .expect("running ringbench")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs ringbench expecting success, as if fio were not installed; returns stdout.
fn ok_without_fio(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ringbench"))
        .args(args)
        .env("RINGBENCH_FIO", "")
        .output()
        .expect("running ringbench");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// Runs ringbench expecting success; returns stdout.
fn ok(args: &[&str]) -> String {
    let out = ringbench(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "ringbench {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("reading --json")).expect("JSON")
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"))
}

/// Checks the fields every single-run report has, and that the run did work without errors.
fn check_run(v: &Value, engine: &str, mode: &str, verify: bool) {
    assert_eq!(v["engine"], engine, "{v}");
    assert_eq!(v["mode"], mode);
    let w = &v["workload"];
    for key in [
        "rw",
        "bs",
        "size",
        "files",
        "iodepth",
        "duration",
        "ops",
        "direct",
        "fsync_every",
        "seed",
        "verify",
        "placement",
        "mode",
        "clients",
        "tasks",
        "api",
        "engine",
    ] {
        assert!(w.get(key).is_some(), "workload.{key} missing: {w}");
    }
    assert!(num(v, "duration_s") > 0.0);
    let t = &v["total"];
    assert!(num(t, "ops") > 0.0, "no ops: {t}");
    assert!(num(t, "iops") > 0.0);
    assert!(num(t, "bytes") > 0.0);
    assert!(num(t, "mb_s") > 0.0);
    assert_eq!(t["errors"], 0, "errors: {}", v["messages"]);
    for key in ["p50", "p99", "p999", "max"] {
        assert!(num(&t["lat_us"], key) > 0.0, "lat_us.{key}: {t}");
    }
    let shards = v["shards"].as_array().expect("shards array");
    assert!(!shards.is_empty());
    for s in shards {
        for key in ["shard", "cpu", "numa_node", "ops", "iops", "lat_us"] {
            assert!(s.get(key).is_some(), "shards[].{key} missing: {s}");
        }
    }
    let row_ops: f64 = shards.iter().map(|s| num(s, "ops")).sum();
    assert_eq!(row_ops, num(t, "ops"));
    assert!(num(&v["cpu"], "user_s") >= 0.0);
    assert!(num(&v["cpu"], "sys_s") >= 0.0);
    if verify {
        assert!(num(&v["verify"], "verified_reads") > 0.0);
        assert_eq!(v["verify"]["mismatches"], 0);
    }
}

/// One engine, both modes, mixed reads and writes with fsyncs, verified, for `duration` each.
fn engine_both_modes(engine: &str, duration: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for mode in ["in-shard", "routed"] {
        let js = dir.path().join(format!("{mode}.json"));
        let mut args = vec![
            "--engine",
            engine,
            "--mode",
            mode,
            "--rw",
            "randrw",
            "--fsync-every",
            "64",
            "--size",
            "4m",
            "--iodepth",
            "8",
            "--duration",
            duration,
            "--verify",
            "--quiet",
            "--dir",
            d,
            "--json",
            js.to_str().unwrap(),
        ];
        if mode == "routed" {
            args.extend(["--clients", "2"]);
        }
        let out = ok(&args);
        assert!(out.contains("total:"), "{out}");
        assert!(out.contains("CPU:"), "{out}");
        let v = json(&js);
        check_run(&v, engine, mode, true);
        assert!(num(&v["total"], "writes") > 0.0);
        if engine == "ringshard" {
            assert!(out.contains("ringshard statistics"), "{out}");
            assert!(v["library_stats"]["total"]["total_ops"].as_u64().unwrap() > 0);
        }
    }
}

#[test]
fn ringshard_in_shard_and_routed() {
    engine_both_modes("ringshard", "1s");
}

#[test]
fn raw_uring_in_shard_and_routed() {
    engine_both_modes("raw-uring", "1s");
}

#[test]
fn pread_pool_in_shard_and_routed() {
    engine_both_modes("pread-pool", "1s");
}

#[test]
fn tokio_fs_in_shard_and_routed() {
    engine_both_modes("tokio-fs", "1s");
}

#[test]
fn spawn_blocking_in_shard_and_routed() {
    engine_both_modes("spawn-blocking", "300ms");
}

/// Runs ringbench expecting success on 4 MiB files in `dir`, quietly, with `--json`: returns
/// stdout and the JSON.
fn run_in(dir: &Path, args: &[&str]) -> (String, Value) {
    let js = dir.join("out.json");
    let mut all = args.to_vec();
    let (d, j) = (dir.to_str().unwrap(), js.to_str().unwrap());
    all.extend(["--size", "4m", "--quiet", "--dir", d, "--json", j]);
    let out = ok(&all);
    (out, json(&js))
}

/// `--mode async` on one engine: tasks with mixed reads and writes with fsyncs, verified.
fn async_engine(engine: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (out, v) = run_in(
        dir.path(),
        &[
            "--mode",
            "async",
            "--engine",
            engine,
            "--tasks",
            "8",
            "--rw",
            "randrw",
            "--fsync-every",
            "64",
            "--duration",
            "300ms",
            "--verify",
        ],
    );
    assert!(out.contains("per task"), "{out}");
    assert!(
        out.contains("8 task(s) on 2 tokio worker thread(s)"),
        "{out}"
    );
    check_run(&v, engine, "async", true);
    assert!(num(&v["total"], "writes") > 0.0);
    assert_eq!(v["row_kind"], "task");
    assert_eq!(v["shards"].as_array().unwrap().len(), 8);
    assert_eq!(
        v["workload"]["iodepth"], 1,
        "async default: one request per task"
    );
    assert_eq!(v["workload"]["clients"], 2);
    if engine == "ringshard" {
        assert_eq!(
            v["api"], "completion",
            "async default: per-request completions"
        );
        assert!(out.contains("ringshard async (completion API) |"), "{out}");
        assert!(v["library_stats"]["total"]["total_ops"].as_u64().unwrap() > 0);
    } else {
        assert!(v["api"].is_null(), "{}", v["api"]);
    }
}

#[test]
fn async_ringshard() {
    async_engine("ringshard");
}

#[test]
fn async_spawn_blocking() {
    async_engine("spawn-blocking");
}

#[test]
fn async_tokio_fs() {
    async_engine("tokio-fs");
}

#[test]
fn async_iodepth_keeps_several_requests_per_task() {
    let dir = tempfile::tempdir().unwrap();
    let (_, v) = run_in(
        dir.path(),
        &[
            "--mode",
            "async",
            "--tasks",
            "2",
            "--iodepth",
            "4",
            "--clients",
            "1",
            "--ops",
            "2000",
            "--verify",
        ],
    );
    check_run(&v, "ringshard", "async", true);
    assert_eq!(v["total"]["ops"], 2000);
    assert_eq!(v["workload"]["iodepth"], 4);
    assert_eq!(v["shards"].as_array().unwrap().len(), 2);
}

#[test]
fn api_completion_and_session_run_routed_and_async() {
    let dir = tempfile::tempdir().unwrap();
    for mode in ["routed", "async"] {
        for api in ["completion", "session"] {
            let args = ["--mode", mode, "--api", api, "--ops", "2000"];
            let (out, v) = run_in(dir.path(), &args);
            let head = format!("ringshard {mode} ({api} API) |");
            assert!(out.contains(&head), "{out}");
            check_run(&v, "ringshard", mode, false);
            assert_eq!(v["api"], api);
            assert_eq!(v["workload"]["api"], api);
            assert_eq!(v["total"]["ops"], 2000);
        }
    }
}

#[test]
fn compare_in_async_mode_runs_the_async_engines() {
    let dir = tempfile::tempdir().unwrap();
    let (out, v) = run_in(
        dir.path(),
        &[
            "--compare",
            "--mode",
            "async",
            "--tasks",
            "4",
            "--repeat",
            "1",
            "--ops",
            "2000",
        ],
    );
    assert!(out.contains("ringshard completion API"), "{out}");
    let names: Vec<&str> = v["engines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["engine"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["ringshard", "inline-nowait", "spawn-blocking", "tokio-fs"]
    );
    assert_eq!(v["api"], "completion");
    for r in v["runs"].as_array().unwrap() {
        check_run(r, r["engine"].as_str().unwrap(), "async", false);
    }
}

#[test]
fn ops_limit_is_exact_and_reads_verify() {
    let dir = tempfile::tempdir().unwrap();
    let js = dir.path().join("r.json");
    ok(&[
        "--ops",
        "3000",
        "--size",
        "4m",
        "--shards",
        "1",
        "--verify",
        "--quiet",
        "--dir",
        dir.path().to_str().unwrap(),
        "--json",
        js.to_str().unwrap(),
    ]);
    let v = json(&js);
    check_run(&v, "ringshard", "in-shard", true);
    assert_eq!(v["total"]["ops"], 3000);
    assert_eq!(v["verify"]["verified_reads"], 3000);
}

#[test]
fn verify_reports_a_corrupted_byte_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let base = [
        "--size", "1m", "--shards", "1", "--files", "1", "--verify", "--quiet", "--dir", d,
    ];
    let mut first = base.to_vec();
    first.extend(["--ops", "100"]);
    ok(&first);
    let file = dir.path().join("ringbench.0.dat");
    let mut data = std::fs::read(&file).unwrap();
    data[5000] ^= 0xff;
    std::fs::write(&file, data).unwrap();
    let mut second = base.to_vec();
    second.extend(["--rw", "read", "--ops", "256", "--iodepth", "4"]);
    let out = ringbench(&second);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("{} at offset 5000", file.display())),
        "{stdout}"
    );
    assert!(stdout.contains("1 mismatches"), "{stdout}");
}

#[test]
fn compare_reports_every_engine_with_ratios() {
    let dir = tempfile::tempdir().unwrap();
    let js = dir.path().join("c.json");
    // fio's engine is tested in tests/fio_compat.rs; here it is left out (RINGBENCH_FIO empty).
    let out = ok_without_fio(&[
        "--compare",
        "--repeat",
        "2",
        "--ops",
        "4000",
        "--size",
        "4m",
        "--shards",
        "1",
        "--quiet",
        "--dir",
        dir.path().to_str().unwrap(),
        "--json",
        js.to_str().unwrap(),
    ]);
    assert!(out.contains("IOPS vs ringshard"), "{out}");
    let v = json(&js);
    let engines = v["engines"].as_array().unwrap();
    let names: Vec<&str> = engines
        .iter()
        .map(|e| e["engine"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "ringshard",
            "ringshard-threads",
            "raw-uring",
            "pread-pool",
            "inline-nowait",
            "tokio-fs"
        ]
    );
    assert_eq!(engines[0]["iops_vs_ringshard"], 1.0);
    for e in engines {
        assert!(num(&e["median"], "iops") > 0.0, "{e}");
        assert!(num(e, "iops_vs_ringshard") > 0.0, "{e}");
        assert_eq!(e["rounds_iops"].as_array().unwrap().len(), 2);
    }
    assert_eq!(v["runs"].as_array().unwrap().len(), 12); // 6 engines x 2 rounds
    for r in v["runs"].as_array().unwrap() {
        check_run(r, r["engine"].as_str().unwrap(), "in-shard", false);
    }
}

#[test]
fn sweep_prints_scaling_and_writes_svg() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("s.svg");
    let js = dir.path().join("s.json");
    let out = ok(&[
        "--sweep",
        "shards=1,2",
        "--ops",
        "4000",
        "--size",
        "4m",
        "--quiet",
        "--dir",
        dir.path().to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
        "--json",
        js.to_str().unwrap(),
    ]);
    assert!(
        out.contains("speed-up") && out.contains("efficiency"),
        "{out}"
    );
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.starts_with("<svg") && s.contains("polyline") && s.contains("ideal"));
    let v = json(&js);
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    assert_eq!(v["sweep"], "shards");
    assert_eq!(points[0]["value"], 1);
    assert_eq!(points[0]["speedup"], 1.0);
    assert_eq!(points[0]["efficiency"], 1.0);
    assert!(num(&points[1], "iops") > 0.0);
}

/// A sweep over a key without linear scaling: speed-up only, no ideal line.
fn sweep_speedup_only(args: &[&str], key: &str) {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("s.svg");
    let mut all = args.to_vec();
    all.extend(["--ops", "2000", "--plot", svg.to_str().unwrap()]);
    let (out, v) = run_in(dir.path(), &all);
    assert!(out.contains("speed-up"), "{out}");
    assert!(!out.contains("efficiency"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with(&format!("{key} "))),
        "table column named {key}: {out}"
    );
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.contains(&format!(">{key}<")), "x axis label");
    assert!(!s.contains("ideal"), "no ideal line for {key}");
    assert_eq!(v["sweep"], key);
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    assert_eq!(points[0]["value"], 1);
    assert_eq!(points[1]["value"], 4);
    assert!(points[0]["efficiency"].is_null());
    assert_eq!(points[0]["speedup"], 1.0);
    let runs = v["runs"].as_array().unwrap();
    assert!(runs.iter().all(|r| r["total"]["ops"] == 2000));
    let by_value: Vec<u64> = runs
        .iter()
        .map(|r| r["workload"][key].as_u64().unwrap())
        .collect();
    assert_eq!(by_value, [1, 4]);
}

#[test]
fn sweep_tasks_in_async_mode() {
    sweep_speedup_only(&["--sweep", "tasks=1,4", "--mode", "async"], "tasks");
}

#[test]
fn sweep_iodepth() {
    sweep_speedup_only(&["--sweep", "iodepth=1,4", "--shards", "1"], "iodepth");
}

#[test]
fn default_run_prints_the_table() {
    // What `cargo run -p ringbench` does, shortened: no workload flags.
    let out = ok(&["--duration", "1s", "--size", "8m"]);
    assert!(out.contains("ringshard in-shard | 4k randread"), "{out}");
    assert!(out.contains("ringshard statistics"), "{out}");
    assert!(out.contains("per shard"), "{out}");
    assert!(out.contains("CPU s per million ops"), "{out}");
}

/// Runs ringbench expecting a usage error: exit code 2 and one line on stderr naming `needle`.
fn usage_error(args: &[&str], needle: &str) {
    let out = ringbench(args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    usage_error(
        &["--dir", missing.to_str().unwrap()],
        "does not exist: create it",
    );
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    usage_error(&["--dir", file.to_str().unwrap()], "is not a directory");
    usage_error(&["--bs", "4x"], "--bs \"4x\" is not a size");
    usage_error(&["--size", "lots"], "--size \"lots\" is not a size");
    usage_error(&["--bs", "1m", "--size", "64k"], "larger than --size");
    usage_error(&["--iodepth", "0"], "--iodepth 0");
    usage_error(&["--shards", "64"], "more shards than cores");
    usage_error(&["--duration", "soon"], "is not a duration");
    usage_error(&["--direct", "--bs", "512"], "multiple of 4096");
    usage_error(&["--sweep", "cores=1,2"], "shards, clients, iodepth, tasks");
    usage_error(&["--sweep", "shards=1,iodepth=2"], "one key per sweep");
    usage_error(
        &["--sweep", "clients=2"],
        "needs --mode routed or --mode async",
    );
    usage_error(
        &["--sweep", "tasks=2", "--mode", "routed"],
        "needs --mode async",
    );
    usage_error(
        &["--mode", "async", "--engine", "raw-uring"],
        "--engine raw-uring has no async form",
    );
    usage_error(&["--tasks", "8"], "--tasks applies to --mode async");
    usage_error(&["--api", "completion"], "--api applies to --mode routed");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn direct_on_a_filesystem_without_o_direct_is_a_usage_error() {
    if !is_root() {
        eprintln!("skipped: needs root to mount a filesystem without O_DIRECT");
        return;
    }
    // ramfs refuses O_DIRECT with EINVAL at open (tmpfs accepts it since Linux 6.6).
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "ramfs", "ringbench-test", d])
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: could not mount ramfs");
        return;
    }
    let out = ringbench(&["--direct", "--dir", d, "--ops", "10"]);
    let _ = Command::new("umount").arg(d).status();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("refuses O_DIRECT"), "{err}");
    assert!(err.contains("drop --direct"), "{err}");
}

#[test]
fn not_writable_dir_is_a_usage_error() {
    if !is_root() {
        return;
    }
    // Root writes anywhere; a read-only bind would need a mount: use /proc, which refuses files.
    usage_error(&["--dir", "/proc"], "is not writable");
}

/// `--report-every`: a short soak (randrw with fsyncs, 4 files, verified) in each ringshard mode
/// samples ops, mismatches, errors, RSS and descriptors over time, prints them with a verdict and
/// puts them in the JSON.
#[test]
fn soak_samples_ops_memory_and_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    for mode in ["routed", "in-shard", "tasks"] {
        let (out, v) = run_in(
            dir.path(),
            &[
                "--mode",
                mode,
                "--rw",
                "randrw",
                "--fsync-every",
                "64",
                "--files",
                "4",
                "--iodepth",
                "8",
                "--verify",
                "--duration",
                "2s",
                "--report-every",
                "250ms",
            ],
        );
        check_run(&v, "ringshard", mode, true);
        assert!(out.contains("samples (every 0.25 s)"), "{out}");
        assert!(out.contains("soak: flat"), "{out}");
        let soak = &v["soak"];
        assert_eq!(soak["verdict"], "flat", "{soak}");
        assert_eq!(num(soak, "every_s"), 0.25);
        let samples = soak["samples"].as_array().expect("soak.samples");
        // A sample at the start, one per 250 ms (some may be late on a busy machine), one at the end.
        assert!(samples.len() >= 6, "{} samples: {soak}", samples.len());
        let mut last_ops = 0.0;
        let mut last_t = -1.0;
        for s in samples {
            for key in [
                "t_s",
                "ops",
                "iops",
                "mismatches",
                "errors",
                "rss_kib",
                "fds",
            ] {
                assert!(s.get(key).is_some(), "sample.{key} missing: {s}");
            }
            assert!(
                num(s, "t_s") >= last_t && num(s, "ops") >= last_ops,
                "{soak}"
            );
            (last_t, last_ops) = (num(s, "t_s"), num(s, "ops"));
            assert_eq!((num(s, "mismatches"), num(s, "errors")), (0.0, 0.0));
            assert!(num(s, "rss_kib") > 1024.0, "{s}");
            // stdin/out/err, the ring, eventfd and the 4 files at least.
            assert!(num(s, "fds") >= 7.0, "{s}");
        }
        assert_eq!(num(&samples[0], "ops"), 0.0);
        assert_eq!(
            last_ops,
            num(&v["total"], "ops"),
            "the last sample is the total"
        );
        for key in ["rss_kib_first", "rss_kib_last", "fds_first", "fds_last"] {
            assert!(num(soak, key) > 0.0, "{key}: {soak}");
        }
        assert_eq!(soak["rss_growing"], false);
        assert_eq!(soak["fds_growing"], false);
    }
    // Short runs are not sampled unless asked; "off" turns it off; a bad interval is a usage error.
    let (_, v) = run_in(dir.path(), &["--duration", "300ms"]);
    assert!(v["soak"].is_null());
    let (_, v) = run_in(dir.path(), &["--ops", "1000", "--report-every", "off"]);
    assert!(v["soak"].is_null());
    usage_error(&["--report-every", "often"], "--report-every \"often\"");
}
