//! ringbench where io_uring is blocked: under a seccomp filter that makes io_uring_setup fail
//! with EPERM (Docker's default profile), the ringshard engine runs on the threads backend and
//! says so; and the `ringshard-threads` engine (the same backend, forced) in both modes.

#[path = "../../../tests/support/seccomp.rs"]
mod seccomp;

use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running ringbench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "ringbench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

#[test]
fn ringbench_runs_under_a_filter_that_blocks_io_uring() {
    if !seccomp::supported() {
        println!("SKIPPED: no seccomp filter for this architecture");
        return;
    }
    for mode in ["in-shard", "routed"] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringbench"));
        cmd.args([
            "--mode",
            mode,
            "--duration",
            "300ms",
            "--size",
            "4m",
            "--verify",
        ])
        .args(["--rw", "randrw"])
        .env_remove("RINGSHARD_BACKEND");
        seccomp::under_filter(&mut cmd, libc::EPERM);
        let out = run(&mut cmd);
        assert!(out.contains("backend: threads"), "{mode}:\n{out}");
        assert!(out.contains("EPERM"), "the reason is shown:\n{out}");
        assert!(
            out.contains("0 mismatches") || !out.contains("mismatch"),
            "{out}"
        );
    }
}

#[test]
fn the_threads_engine_runs_in_both_modes_with_verify() {
    for mode in ["in-shard", "routed"] {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("out.json");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringbench"));
        cmd.args(["--engine", "ringshard-threads", "--mode", mode])
            .args([
                "--duration",
                "300ms",
                "--size",
                "4m",
                "--verify",
                "--rw",
                "randrw",
            ])
            .arg("--json")
            .arg(&json);
        run(&mut cmd);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(v["engine"], "ringshard-threads", "{v}");
        assert_eq!(v["verify"]["mismatches"], 0, "{v}");
        assert!(
            v["verify"]["verified_reads"].as_u64().unwrap_or(0) > 0,
            "{v}"
        );
        assert!(v["total"]["ops"].as_u64().unwrap_or(0) > 0, "{v}");
        assert_eq!(v["library_stats"]["total"]["backend"], "threads", "{v}");
    }
}
