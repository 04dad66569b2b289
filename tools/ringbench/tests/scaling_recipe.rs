//! `examples/scaling.sh` (the README's "Scaling" recipe) with this ringbench, tiny runs: both
//! sweeps print speed-up and efficiency and write their SVGs; bad settings exit 2.

use std::path::Path;
use std::process::Command;

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/scaling.sh")
}

#[test]
fn recipe_sweeps_shards_and_clients_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let cpus = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2);
    let out = Command::new("bash")
        .arg(script())
        .args(["--quiet", "--size", "4m", "--dir"])
        .arg(dir.path())
        .env("RINGBENCH", env!("CARGO_BIN_EXE_ringbench"))
        .env("N", cpus.to_string())
        .env("M", "2")
        .env("REPEAT", "1")
        .env("RUN", "--ops 2000")
        .env("OUT", dir.path())
        .output()
        .expect("running bash examples/scaling.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("== sweep: ringshard in-shard"), "{stdout}");
    assert!(stdout.contains("== sweep: ringshard routed"), "{stdout}");
    assert_eq!(stdout.matches("efficiency").count(), 2, "{stdout}");
    for key in ["shards", "clients"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("{key} "))),
            "no {key} table:\n{stdout}"
        );
    }
    for svg in ["scaling.svg", "scaling-clients.svg"] {
        let s = std::fs::read_to_string(dir.path().join(svg)).unwrap();
        assert!(s.starts_with("<svg") && s.contains("ideal"), "{svg}");
    }
}

#[test]
fn recipe_refuses_bad_settings() {
    let out = Command::new("bash")
        .arg(script())
        .env("RINGBENCH", env!("CARGO_BIN_EXE_ringbench"))
        .env("N", "two")
        .output()
        .expect("running bash examples/scaling.sh");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("positive integers"));
}
