//! `examples/affinity`: the layout plan for the two-socket fixture (the plan functions directly,
//! and the example's printed plan), its errors, and a short real run on this machine.

// The example's planner, compiled into this test as-is (it uses only the library's topology).
#[allow(dead_code)]
#[path = "../examples/affinity/plan.rs"]
mod plan;

#[path = "support/example.rs"]
mod example;

use plan::Callers;
use ringshard::Topology;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

const NAMES: [&str; 7] = [
    "all-cpus",
    "physical-cores",
    "one-node",
    "apart",
    "sqpoll",
    "spin-on",
    "spin-off",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sysfs")
        .join(name)
}

/// The example's binary, built (or found up to date) once per test run with this test's profile.
fn example() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| example::build_example("affinity"))
}

fn run(args: &[&str]) -> (Output, String, String) {
    let out = Command::new(example())
        .args(args)
        .output()
        .expect("run the affinity example");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

#[test]
fn two_socket_plan_has_the_right_cpu_sets() {
    let topo = Topology::from_sysfs(&fixture("two_socket_smt")).unwrap();
    let every: Vec<usize> = (0..16).collect();
    let layouts = plan::plan(&topo, &every, Duration::from_micros(200)).unwrap();
    let names: Vec<&str> = layouts.iter().map(|l| l.name).collect();
    assert_eq!(names, NAMES);
    let by = |n: &str| layouts.iter().find(|l| l.name == n).unwrap();

    assert_eq!(by("all-cpus").shards, every);
    assert_eq!(by("all-cpus").callers, Callers::Unpinned);
    // Cores {0,8} {1,9} {2,10} {3,11} on node 0, {4,12} .. {7,15} on node 1.
    assert_eq!(by("physical-cores").shards, (0..8).collect::<Vec<_>>());
    let node0 = vec![0, 1, 2, 3, 8, 9, 10, 11];
    assert_eq!(by("one-node").shards, node0);
    assert_eq!(by("one-node").callers, Callers::Within(node0));
    // Per node, the first two cores (both SMT threads) for shards, the other two for callers.
    let apart = by("apart");
    assert_eq!(apart.shards, vec![0, 1, 4, 5, 8, 9, 12, 13]);
    assert_eq!(
        apart.callers,
        Callers::Pinned(vec![2, 3, 6, 7, 10, 11, 14, 15])
    );
    assert!(apart.skip.is_none());
    let sq = by("sqpoll");
    assert_eq!(sq.shards, apart.shards);
    assert_eq!(sq.sqpoll, Some(15));
    assert_eq!(sq.callers, Callers::Pinned(vec![2, 3, 6, 7, 10, 11, 14]));
    assert!(sq.skip.is_none());
    assert_eq!(by("spin-on").spin, Some(Duration::from_micros(200)));
    assert_eq!(by("spin-off").spin, Some(Duration::ZERO));
    assert_eq!(by("spin-off").shards, every);
    for l in &layouts {
        let used = l.cpus_used();
        assert!(used.iter().all(|c| *c < 16), "{}: {used:?}", l.name);
    }
}

#[test]
fn small_and_restricted_machines() {
    let topo = Topology::from_sysfs(&fixture("two_socket_smt")).unwrap();
    // Two CPUs of one node (like this development machine, but SMT siblings 0 and 8).
    let layouts = plan::plan(&topo, &[0, 8], Duration::from_micros(50)).unwrap();
    let by = |n: &str| layouts.iter().find(|l| l.name == n).unwrap();
    assert_eq!(by("physical-cores").shards, vec![0]);
    assert_eq!(by("apart").shards, vec![0]);
    assert_eq!(by("apart").callers, Callers::Pinned(vec![8]));
    let why = by("sqpoll").skip.as_deref().unwrap();
    assert!(why.contains("no spare CPU"), "{why}");
    // One CPU: apart and sqpoll are skipped, the rest run on it.
    let layouts = plan::plan(&topo, &[5], Duration::from_micros(50)).unwrap();
    let by = |n: &str| layouts.iter().find(|l| l.name == n).unwrap();
    assert!(by("apart")
        .skip
        .as_deref()
        .unwrap()
        .contains("at least 2 CPUs"));
    assert!(by("sqpoll").skip.is_some());
    assert_eq!(by("one-node").shards, vec![5]);
    // Nothing usable is an error, not a panic.
    assert!(plan::plan(&topo, &[99], Duration::ZERO).is_err());
}

#[test]
fn example_prints_the_two_socket_plan() {
    let root = fixture("two_socket_smt");
    let (out, stdout, stderr) = run(&["--sysfs-root", root.to_str().unwrap(), "--plan-only"]);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("16 online CPU(s), 8 physical core(s), SMT on, 2 NUMA node(s)"));
    assert!(stdout.contains("node 1: CPUs 4-7,12-15"), "{stdout}");
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no plan row for {name}:\n{stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(row("all-cpus").starts_with("all-cpus 16 0-15 unpinned - default"));
    assert!(row("physical-cores").starts_with("physical-cores 8 0-7 unpinned"));
    assert!(row("one-node").starts_with("one-node 8 0-3,8-11 within 0-3,8-11"));
    assert!(row("apart").starts_with("apart 8 0-1,4-5,8-9,12-13 pinned 2-3,6-7,10-11,14-15 -"));
    assert!(row("sqpoll").starts_with("sqpoll 8 0-1,4-5,8-9,12-13 pinned 2-3,6-7,10-11,14 15"));
    assert!(row("spin-on").starts_with("spin-on 16 0-15 unpinned - 200 µs"));
    assert!(row("spin-off").starts_with("spin-off 16 0-15 unpinned - 0 µs"));
    assert!(stdout.contains("--plan-only: nothing run"), "{stdout}");
}

#[test]
fn fixture_cpus_this_machine_lacks_are_planned_not_run() {
    let here = ringshard::topology::allowed_cpus().unwrap();
    if here.len() >= 16 {
        return; // a big machine would run the plan: the other tests cover it
    }
    let root = fixture("two_socket_smt");
    let (out, stdout, stderr) = run(&["--sysfs-root", root.to_str().unwrap()]);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("WOULD run"), "{stdout}");
    assert!(!stdout.contains("Winner"), "{stdout}");
}

#[test]
fn bad_input_exits_2_with_the_reason() {
    let (out, _, stderr) = run(&["--sysfs-root", "/nonexistent/sysfs", "--plan-only"]);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--sysfs-root /nonexistent/sysfs"),
        "{stderr}"
    );
    let (out, _, stderr) = run(&["--duration", "0s"]);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("duration"), "{stderr}");
    let (out, _, stderr) = run(&["--bs", "8m", "--size", "1m"]);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--bs"), "{stderr}");
    let (out, _, stderr) = run(&["--workload", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
}

#[test]
fn short_real_run_on_this_machine() {
    let start = std::time::Instant::now();
    let (out, stdout, stderr) = run(&[
        "--duration",
        "100ms",
        "--rounds",
        "1",
        "--size",
        "1m",
        "--iodepth",
        "8",
    ]);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let table = stdout
        .split("IOPS by round")
        .nth(1)
        .unwrap_or_else(|| panic!("no result table:\n{stdout}"));
    for name in NAMES {
        assert!(
            table.lines().any(|l| l.starts_with(&format!("{name} "))),
            "no result row for {name}:\n{stdout}"
        );
    }
    assert!(stdout.contains("Winner: "), "{stdout}");
    assert!(
        stdout.contains(" Why: ") || stdout.contains("same CPUs"),
        "{stdout}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
}
