//! ringbench as an ordinary user with the distribution's default RLIMIT_MEMLOCK (64 KiB): the
//! executor fits what it can (smaller rings, fewer or unregistered buffers, or the threads
//! backend) and every engine runs with what it got, saying what that was.
//!
//! Each test runs ringbench as a user of its own (pinned memory is counted per user; see
//! `limited_user`), so the tests do not change what fits for each other.

#[path = "../../../tests/support/limited_user.rs"]
mod limited_user;

use std::process::Command;

const MEMLOCK: u64 = 64 * 1024;

/// Runs ringbench with `args` as user `uid` under [`MEMLOCK`]; returns its stdout, after checking
/// that it exited 0.
fn ringbench_as(uid: u32, args: &[&str]) -> Option<String> {
    if !limited_user::is_root() {
        println!("SKIPPED: not root, so ringbench cannot run as a user of its own");
        return None;
    }
    let (exe, _copy) =
        limited_user::runnable_by_others(std::path::Path::new(env!("CARGO_BIN_EXE_ringbench")));
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .args(["--duration", "300ms", "--size", "4m"])
        .env_remove("RINGSHARD_BACKEND")
        .current_dir("/tmp");
    limited_user::with_memlock_as(&mut cmd, MEMLOCK, uid);
    let out = cmd.output().expect("running ringbench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "ringbench {args:?} as uid {uid} with RLIMIT_MEMLOCK {MEMLOCK}\nstdout:\n{stdout}\n\
         stderr:\n{stderr}"
    );
    Some(stdout)
}

/// What the issue ran: `ringbench` with its default flags (2 shards here, in-shard load) as
/// `nobody` with `ulimit -l 64`. Before, the second shard's ring failed with ENOMEM, or (one
/// shard) the in-shard engine failed acquiring 32 buffers from a pool fitted to 4.
#[test]
fn default_run_as_nobody_with_memlock_64k_runs_and_says_what_it_got() {
    let Some(out) = ringbench_as(limited_user::NOBODY, &[]) else {
        return;
    };
    assert!(out.contains("\nbackend: "), "the backend and why:\n{out}");
    assert!(out.contains("\npool: "), "the pool and why:\n{out}");
    assert!(!out.contains("errors:"), "{out}");
}

/// One shard (so io_uring fits): its pool holds fewer buffers than `--iodepth`, and the in-shard
/// engine runs at the depth it could get, and says so.
#[test]
fn in_shard_with_one_shard_runs_at_the_depth_its_pool_allows() {
    let Some(out) = ringbench_as(
        limited_user::private_uid(1),
        &["--shards", "1", "--iodepth", "32", "--verify"],
    ) else {
        return;
    };
    assert!(out.contains("\nbackend: io_uring"), "{out}");
    assert!(
        out.contains("note: shard 0: iodepth ") && out.contains(", not 32: its pool had "),
        "the engine says it ran at a lower depth:\n{out}"
    );
    assert!(out.contains("0 mismatches"), "{out}");
}

/// Every ringshard request path (routed sessions, async completions, tasks) with what the
/// executor got.
#[test]
fn routed_async_and_tasks_modes_run_under_the_limit() {
    for (slot, mode) in [(2, "routed"), (3, "async"), (4, "tasks")] {
        let uid = limited_user::private_uid(slot);
        let Some(out) = ringbench_as(uid, &["--mode", mode, "--verify", "--rw", "randrw"]) else {
            return;
        };
        assert!(out.contains("\npool: "), "{mode}:\n{out}");
        assert!(out.contains("0 mismatches"), "{mode}:\n{out}");
    }
}

/// The raw io_uring baseline does what the library does under the limit (smaller rings, plain
/// READ/WRITE into unregistered buffers) and says so (before, its setup failed with ENOMEM).
#[test]
fn the_raw_uring_baseline_runs_under_the_limit() {
    let Some(out) = ringbench_as(
        limited_user::private_uid(5),
        &["--engine", "raw-uring", "--verify"],
    ) else {
        return;
    };
    assert!(
        out.contains("note: raw-uring thread ") && out.contains("to fit RLIMIT_MEMLOCK"),
        "{out}"
    );
    assert!(out.contains("0 mismatches"), "{out}");
}
