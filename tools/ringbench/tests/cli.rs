//! Runs the built ringbench binary: every engine in both modes with --verify and --json for about a
//! second each, --compare, --sweep, verification catching a corrupted byte, and the usage errors
//! (exit code 2, one line).

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

/// One engine, both modes, mixed reads and writes with fsyncs, verified.
fn engine_both_modes(engine: &str) {
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
            "1s",
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
    engine_both_modes("ringshard");
}

#[test]
fn raw_uring_in_shard_and_routed() {
    engine_both_modes("raw-uring");
}

#[test]
fn pread_pool_in_shard_and_routed() {
    engine_both_modes("pread-pool");
}

#[test]
fn tokio_fs_in_shard_and_routed() {
    engine_both_modes("tokio-fs");
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
    let out = ok(&[
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
    assert_eq!(names, ["ringshard", "raw-uring", "pread-pool", "tokio-fs"]);
    assert_eq!(engines[0]["iops_vs_ringshard"], 1.0);
    for e in engines {
        assert!(num(&e["median"], "iops") > 0.0, "{e}");
        assert!(num(e, "iops_vs_ringshard") > 0.0, "{e}");
        assert_eq!(e["rounds_iops"].as_array().unwrap().len(), 2);
    }
    assert_eq!(v["runs"].as_array().unwrap().len(), 8);
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
    assert_eq!(points[0]["shards"], 1);
    assert_eq!(points[0]["speedup"], 1.0);
    assert!(num(&points[1], "iops") > 0.0);
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
    usage_error(&["--sweep", "clients=2"], "--sweep shards=");
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
