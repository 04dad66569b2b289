//! Where io_uring is blocked or limited: the threads backend chosen automatically under seccomp
//! filters (EPERM, ENOSYS), `RINGSHARD_BACKEND`, and the pool fitted to a low RLIMIT_MEMLOCK.
//!
//! Filters and limits are per process, so each case runs this test binary again as a child
//! (`child_workload`, which does nothing unless `RINGSHARD_TEST_CHILD` is set) with the filter
//! or limit installed between fork and exec, and checks what the child reports.
//!
//! The threads backend's own seams (what IORING_OP_CLOSE closes, removed timeouts, descriptors
//! held by queued jobs) are checked at the end, on real files through the executor.

#[path = "support/limited_user.rs"]
mod limited_user;
#[path = "support/seccomp.rs"]
mod seccomp;

use ringshard::{Backend, BackendChoice, Error, Executor, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CHILD: &str = "RINGSHARD_TEST_CHILD";

/// Reads and writes through the executor, buffered and O_DIRECT, routed and in a session, and
/// checks every byte; then prints what the executor reports about its backend and pool.
fn workload(exec: &Executor) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let e = |what: &str| {
        let what = what.to_string();
        move |err: Error| format!("{what}: {err}")
    };
    let path = dir.path().join("buffered");
    let f = exec
        .open(
            &path,
            OpenOptions::new().read(true).write(true).create(true),
        )
        .wait()
        .map_err(e("open"))?;
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    for (i, chunk) in data.chunks(64 * 1024).enumerate() {
        let n = exec
            .write(&f, (i * 64 * 1024) as u64, chunk.to_vec())
            .wait()
            .map_err(e("write"))?;
        if n != chunk.len() {
            return Err(format!("short write {n}"));
        }
    }
    exec.fsync(&f).wait().map_err(e("fsync"))?;
    let back = exec.read(&f, 0, 2 << 20).wait().map_err(e("read"))?;
    if back != data {
        return Err(format!(
            "read back {} bytes, not the data written",
            back.len()
        ));
    }
    let mut session = exec.session();
    for i in 0..16u64 {
        session
            .read(&f, i * 4096, 4096, Vec::new(), i)
            .map_err(e("session read"))?;
    }
    session.flush();
    let mut done = Vec::new();
    while done.len() < 16 {
        session.wait(1, &mut done).map_err(e("session wait"))?;
    }
    for d in &done {
        let off = d.token as usize * 4096;
        if d.result.as_ref().ok() != Some(&4096) || d.buf != data[off..off + 4096] {
            return Err(format!("session read {} wrong", d.token));
        }
    }
    let dpath = dir.path().join("direct");
    let d = exec
        .open(
            &dpath,
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .direct(true),
        )
        .wait()
        .map_err(e("open O_DIRECT"))?;
    let block: Vec<u8> = (0..256 * 1024).map(|i: u32| (i % 199) as u8).collect();
    exec.write(&d, 0, block.clone())
        .wait()
        .map_err(e("O_DIRECT write"))?;
    let got = exec
        .read(&d, 0, block.len())
        .wait()
        .map_err(e("O_DIRECT read"))?;
    if got != block {
        return Err("O_DIRECT read back wrong".into());
    }
    let stats = exec.stats();
    let s = &stats.shards[0];
    println!(
        "REPORT backend={} ring_mode={} reason={:?} pool_note={:?} ring_note={:?} pool_buffers={} \
         ops={}",
        s.backend,
        s.ring_mode.map_or("none", |m| m.name()),
        s.backend_reason,
        s.pool_note,
        s.ring_note,
        s.pool.total_count,
        stats.total.total_ops()
    );
    println!("DISPLAY {}", stats.to_string().replace('\n', " | "));
    Ok(())
}

/// The child's side: builds an executor of `RINGSHARD_TEST_SHARDS` shards (default 1) with the
/// defaults otherwise, as a user would, or expects it to fail when `RINGSHARD_TEST_EXPECT_ERROR`
/// is set, and runs the workload.
#[test]
fn child_workload() {
    if std::env::var_os(CHILD).is_none() {
        return; // only meaningful as a child of the tests below
    }
    let shards = std::env::var("RINGSHARD_TEST_SHARDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let built = Executor::builder().shards(shards).build();
    if std::env::var_os("RINGSHARD_TEST_EXPECT_ERROR").is_some() {
        match built {
            Ok(_) => panic!("the executor started, but an error was expected"),
            Err(e) => {
                println!("ERROR {e}");
                println!("DEBUG {e:?}");
                return;
            }
        }
    }
    let exec = built.unwrap_or_else(|e| panic!("executor: {e}"));
    if let Err(e) = workload(&exec) {
        panic!("workload: {e}");
    }
    exec.shutdown().unwrap();
}

/// Runs `child_workload` in a child process prepared by `prepare`; returns its stdout.
fn run_child(prepare: impl FnOnce(&mut Command)) -> String {
    // Children may run as another user (see `limited_user`).
    let (exe, _copy) = limited_user::runnable_by_others(&std::env::current_exe().unwrap());
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "child_workload",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(CHILD, "1")
    .env_remove("RINGSHARD_BACKEND");
    prepare(&mut cmd);
    let out = cmd.output().expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("REPORT") || stdout.contains("ERROR"),
        "the child ran nothing:\n{stdout}\n{stderr}"
    );
    stdout
}

/// The child's line tagged `tag` (the test harness may print its own text before it).
fn line<'a>(out: &'a str, tag: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.find(&format!("{tag} ")).map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no {tag} line in:\n{out}"))
}

/// The error a child's `build()` reports with `var=value` in its environment.
fn child_error(var: &str, value: &str) -> String {
    let out = run_child(|cmd| {
        cmd.env(var, value).env("RINGSHARD_TEST_EXPECT_ERROR", "1");
    });
    line(&out, "ERROR").to_string()
}

fn filtered(errno: i32, name: &str) {
    if !seccomp::supported() {
        println!("SKIPPED: no seccomp filter for this architecture");
        return;
    }
    let out = run_child(|cmd| {
        seccomp::under_filter(cmd, errno);
    });
    let report = line(&out, "REPORT");
    assert!(report.contains("backend=threads"), "{report}");
    assert!(report.contains(name), "the reason names {name}: {report}");
    let display = line(&out, "DISPLAY");
    assert!(display.contains("backend: threads"), "{display}");
}

#[test]
fn under_a_seccomp_filter_giving_eperm_the_threads_backend_does_the_work() {
    filtered(libc::EPERM, "EPERM");
}

#[test]
fn under_a_seccomp_filter_giving_enosys_the_threads_backend_does_the_work() {
    filtered(libc::ENOSYS, "ENOSYS");
}

#[test]
fn requiring_io_uring_under_the_filter_is_an_error_with_the_diagnosis() {
    if !seccomp::supported() {
        println!("SKIPPED: no seccomp filter for this architecture");
        return;
    }
    let out = run_child(|cmd| {
        seccomp::under_filter(cmd, libc::EPERM);
        cmd.env("RINGSHARD_BACKEND", "io_uring")
            .env("RINGSHARD_TEST_EXPECT_ERROR", "1");
    });
    let err = line(&out, "ERROR");
    assert!(err.contains("EPERM") && err.contains("seccomp"), "{err}");
    // Debug (what `main() -> Result` prints) carries the diagnosis too.
    assert!(line(&out, "DEBUG").contains("seccomp"), "{out}");
}

#[test]
fn the_builder_and_the_environment_choose_the_backend() {
    let exec = Executor::builder()
        .shards(1)
        .backend(BackendChoice::Threads)
        .build()
        .unwrap();
    workload(&exec).unwrap();
    let s = exec.stats();
    assert_eq!(s.shards[0].backend, Backend::Threads);
    assert_eq!(
        s.shards[0].backend_reason.as_deref(),
        Some("chosen by the builder")
    );
    assert!(s.to_prometheus().contains("backend=\"threads\""));
    exec.shutdown().unwrap();

    let out = run_child(|cmd| {
        cmd.env("RINGSHARD_BACKEND", "threads");
    });
    assert!(
        line(&out, "REPORT").contains("RINGSHARD_BACKEND=threads"),
        "{out}"
    );

    let err = child_error("RINGSHARD_BACKEND", "iouring");
    assert!(err.contains("expected io_uring, threads or auto"), "{err}");
}

/// Runs the workload in a child with RLIMIT_MEMLOCK at `limit` bytes, as user `uid` (a user of
/// its own per test, see `limited_user`), with `shards` shards; returns its REPORT and DISPLAY
/// lines.
fn under_memlock(limit: u64, uid: u32, shards: usize) -> (String, String) {
    let out = run_child(|cmd| {
        limited_user::with_memlock_as(cmd, limit, uid);
        cmd.env("RINGSHARD_TEST_SHARDS", shards.to_string());
    });
    (
        line(&out, "REPORT").to_string(),
        line(&out, "DISPLAY").to_string(),
    )
}

/// The users of the tests below (nobody, and uids nothing else uses: pinned memory is counted
/// per user).
const UID_64K: u32 = limited_user::NOBODY;
fn uid_4k() -> u32 {
    limited_user::private_uid(1)
}
fn uid_12k() -> u32 {
    limited_user::private_uid(2)
}
fn uid_16k() -> u32 {
    limited_user::private_uid(3)
}

#[test]
fn with_memlock_64k_as_nobody_the_pool_goes_unregistered_and_says_how_to_fix_it() {
    let (report, display) = under_memlock(64 * 1024, UID_64K, 1);
    // A 256-entry ring takes 28 KiB (Linux 6.18), and the probe's small ring may not be given
    // back yet: the ring fits, perhaps smaller; 64 buffers of 64 KiB do not.
    assert!(report.contains("backend=io_uring"), "{report}");
    assert!(
        report.contains("unregistered") && report.contains("ulimit -l"),
        "the pool note says what was done and the fix: {report}"
    );
    assert!(display.contains("pool: buffers unregistered"), "{display}");
    assert!(display.contains("backend: io_uring"), "{display}");
}

/// Below what any ring takes (two pages), the probe's ring is refused with ENOMEM: the threads
/// backend does the work and says why (before, `build()` failed with the ENOMEM).
#[test]
fn with_memlock_4k_no_ring_fits_and_the_threads_backend_says_why() {
    if !limited_user::is_root() {
        println!("SKIPPED: not root, so the limit cannot be applied to a user of its own");
        return;
    }
    let (report, display) = under_memlock(4096, uid_4k(), 2);
    assert!(report.contains("backend=threads"), "{report}");
    assert!(
        report.contains("ENOMEM") && report.contains("RLIMIT_MEMLOCK"),
        "the reason names ENOMEM and the limit: {report}"
    );
    assert!(
        display.contains("backend: threads (io_uring_setup failed with ENOMEM"),
        "{display}"
    );
    assert!(display.contains("pool: each of 2 shards:"), "{display}");
}

/// 12 KiB: the probe's ring (8 KiB) fits, but two shards' rings (8 KiB each at least) never both
/// do, even at the fewest entries: whichever shard is refused, every shard starts again on the
/// threads backend, which says which shard and why (before, `build()` failed).
#[test]
fn with_memlock_12k_two_shards_rings_do_not_fit_and_the_executor_falls_back() {
    if !limited_user::is_root() {
        println!("SKIPPED: not root, so the limit cannot be applied to a user of its own");
        return;
    }
    let (report, display) = under_memlock(12 * 1024, uid_12k(), 2);
    assert!(report.contains("backend=threads"), "{report}");
    assert!(
        report.contains("reason=Some(\"shard ") && report.contains("even for a ring of 8 entries"),
        "the reason names the shard and the smallest ring tried: {report}"
    );
    assert!(display.contains("backend: threads (shard "), "{display}");
}

/// 16 KiB: a 256-entry ring (28 KiB) never fits, a 64-entry one (8 KiB) always does, even next to
/// the probe's ring not yet given back: the shard's ring is made smaller and says so (before,
/// `build()` failed with ENOMEM).
#[test]
fn with_memlock_16k_the_ring_is_made_smaller_and_says_so() {
    if !limited_user::is_root() {
        println!("SKIPPED: not root, so the limit cannot be applied to a user of its own");
        return;
    }
    let (report, display) = under_memlock(16 * 1024, uid_16k(), 1);
    assert!(report.contains("backend=io_uring"), "{report}");
    assert!(
        report.contains("entries, not 256: io_uring_setup refused 256 entries with ENOMEM"),
        "the ring note says what was done: {report}"
    );
    assert!(display.contains("ring: shard 0: "), "{display}");
}

#[test]
fn each_ring_mode_can_be_forced_and_runs_the_workload() {
    for (env, name) in [
        ("defer", "defer_taskrun"),
        ("coop", "coop_taskrun"),
        ("plain", "plain"),
    ] {
        let out = run_child(|cmd| {
            cmd.env("RINGSHARD_RING_MODE", env);
        });
        let report = line(&out, "REPORT");
        assert!(
            report.contains(&format!("ring_mode={name} ")),
            "RINGSHARD_RING_MODE={env}: {report}"
        );
    }
    let err = child_error("RINGSHARD_RING_MODE", "fast");
    assert!(err.contains("expected defer, coop or plain"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The threads backend's seams
// ---------------------------------------------------------------------------------------------

/// Longest a step may take before a test calls it a hang (never a timing assertion).
const HANG: Duration = Duration::from_secs(30);

/// One shard on the threads backend with at most `workers` worker threads.
fn threads_exec(workers: usize) -> Executor {
    Executor::builder()
        .shards(1)
        .backend(BackendChoice::Threads)
        .threads_per_shard(workers)
        .inline_buffered_writes(false)
        .build()
        .expect("executor on the threads backend")
}

/// How many of this process's descriptors refer to the file at `path` (canonical).
fn descriptors_of(path: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target == path)
        .count()
}

/// The file (device, inode) that descriptor `fd` refers to now; `None` if it is closed.
fn identity(fd: i32) -> Option<(u64, u64)> {
    // SAFETY: fstat writes into a local struct only; a closed descriptor fails with EBADF.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
}

fn mkfifo(path: &Path) -> PathBuf {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    path.to_path_buf()
}

/// Polls `cond` every 2 ms until it holds; panics naming `what` after [`HANG`].
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < HANG, "{what}: not within {HANG:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// IORING_OP_CLOSE on the threads backend closes the descriptor the SQE names, once. Before, the
/// job closed the duplicate it held, then closed that number again when the job was dropped
/// (another thread's new file, had it got the number), left the named descriptor open and said
/// 0. The close is kept queued behind a pipe read (the one worker waits in it) while another
/// thread opens a file, so both descriptors exist when it runs.
#[test]
fn on_the_threads_backend_close_closes_the_descriptor_it_names() {
    let exec = threads_exec(1);
    let dir = tempfile::tempdir().unwrap();
    let named_path = dir.path().join("named");
    let named = std::fs::File::create(&named_path).unwrap();
    let named_path = std::fs::canonicalize(&named_path).unwrap();
    let named_id = identity(named.as_raw_fd()).expect("open");
    let other_path = dir.path().join("other");
    std::fs::write(&other_path, b"other").unwrap();
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh descriptors nobody else owns.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    const READ: u64 = 1 << 50;
    const CLOSE: u64 = READ + 1;
    let (n, mut got, other, other_id) = exec
        .submit_to(0, move |ctx| -> ringshard::Result<_> {
            use io_uring::{opcode, types};
            let n = named.into_raw_fd(); // the close owns it now
            let mut byte = [0u8; 1];
            let read = opcode::Read::new(types::Fd(r.as_raw_fd()), byte.as_mut_ptr(), 1)
                .build()
                .user_data(READ);
            let close = opcode::Close::new(types::Fd(n)).build().user_data(CLOSE);
            // SAFETY: `byte` and the pipe outlive both operations: both completions are reaped
            // below, before this closure returns; the close takes a descriptor nobody else owns.
            unsafe {
                ctx.push(&read)?;
                ctx.push(&close)?;
            }
            ctx.submit()?;
            // Opened by another thread while the close waits behind the pipe read.
            let other = std::thread::spawn(move || std::fs::File::open(other_path).unwrap())
                .join()
                .unwrap();
            let other_id = identity(other.as_raw_fd());
            // SAFETY: one byte from a static to the pipe's write end.
            let wrote = unsafe { libc::write(w.as_raw_fd(), b"!".as_ptr().cast(), 1) };
            assert_eq!(wrote, 1);
            let mut got = Vec::new();
            let start = Instant::now();
            while got.len() < 2 {
                assert!(start.elapsed() < HANG, "completions: {got:?}");
                ctx.submit_and_wait(1)?;
                ctx.reap(|c| got.push((c.user_data, c.result)));
            }
            assert_eq!(&byte, b"!");
            Ok((n, got, other, other_id))
        })
        .wait()
        .unwrap()
        .unwrap();
    got.sort();
    assert_eq!(got, vec![(READ, 1), (CLOSE, 0)]);
    // The named descriptor is closed (its number may be another file's by now, never this one).
    assert_ne!(identity(n), Some(named_id), "descriptor {n} still open");
    assert_eq!(
        descriptors_of(&named_path),
        0,
        "a descriptor of the closed file is still open"
    );
    // The file another thread opened meanwhile is untouched.
    assert!(other_id.is_some());
    assert_eq!(identity(other.as_raw_fd()), other_id);
    exec.shutdown().unwrap();
}

/// How many timeouts shard 0's threads backend keeps (a `submit_to`: the shard's own sleeps are
/// taken out while it runs).
fn timer_entries(exec: &Executor) -> usize {
    exec.submit_to(0, |ctx| ctx.threads_timer_entries_for_tests())
        .wait()
        .unwrap()
        .expect("the threads backend")
}

const LONG: Duration = Duration::from_secs(3600);

/// On the threads backend a removed timeout leaves the timer store at once. Before, each stayed
/// until its deadline: a task's sleeps dropped before they fired (`select(sleep(1 h), read)` in a
/// loop, see tasks.rs `dropped_sleeps_leave_the_ring`) grew it by one entry per iteration.
#[test]
fn on_the_threads_backend_dropped_sleeps_leave_the_timer_store() {
    const ROUNDS: usize = 3000;
    let exec = threads_exec(4);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    std::fs::write(&path, vec![7u8; 4096]).unwrap();
    let f = exec
        .open(&path, OpenOptions::new().read(true))
        .wait()
        .unwrap();
    let h = exec.spawn_on_with(0, move |l| async move {
        use futures::future::{select, Either};
        for _ in 0..ROUNDS {
            let nap = Box::pin(l.sleep(LONG));
            let read = Box::pin(l.read(&f, 0, 4096));
            match select(read, nap).await {
                Either::Left((r, _nap)) => assert_eq!(r.unwrap().len(), 4096),
                Either::Right(_) => panic!("a one-hour sleep fired"),
            }
        }
    });
    eventually("the reads", || h.is_finished());
    h.wait().unwrap();
    // Every sleep was dropped, so none is left.
    assert_eq!(timer_entries(&exec), 0, "after {ROUNDS} dropped sleeps");
    exec.shutdown().unwrap();
}

/// The same for the sleeps a `submit_to` takes out of the ring (TIMEOUT_REMOVE) and arms again
/// after it: before, each call left one more entry behind.
#[test]
fn on_the_threads_backend_sleeps_parked_by_submit_to_leave_the_timer_store() {
    const CALLS: usize = 1000;
    let exec = threads_exec(4);
    let (tx, rx) = std::sync::mpsc::channel();
    let h = exec.spawn_on_with(0, move |l| async move {
        tx.send(()).unwrap();
        l.sleep(LONG).await;
    });
    rx.recv_timeout(HANG).expect("the sleeper started");
    let most = (0..CALLS).map(|_| timer_entries(&exec)).max().unwrap();
    assert!(
        most <= 1,
        "{most} timer entries with one sleep armed, over {CALLS} submit_to calls"
    );
    h.cancel();
    exec.shutdown().unwrap();
}

/// Jobs queued on one file on the threads backend share one reference to it. Before, each held
/// a duplicate descriptor of its own, so a shard's few hundred queued jobs could use up
/// RLIMIT_NOFILE (1024 by default), where the kernel holds file references. The one worker waits
/// in a FIFO's read, so the writes stay queued while the descriptors are counted.
#[test]
fn on_the_threads_backend_queued_jobs_on_one_file_share_one_descriptor() {
    const JOBS: usize = 300;
    let exec = threads_exec(1);
    let dir = tempfile::tempdir().unwrap();
    let fifo = mkfifo(&dir.path().join("fifo"));
    // Read-write, so open(2) does not wait for a writer.
    let pipe = exec
        .open(&fifo, OpenOptions::new().read(true).write(true))
        .wait()
        .unwrap();
    let path = dir.path().join("data");
    let f = exec
        .open(
            &path,
            OpenOptions::new().read(true).write(true).create(true),
        )
        .wait()
        .unwrap();
    let path = std::fs::canonicalize(&path).unwrap();
    assert_eq!(descriptors_of(&path), 1);
    let stuck = exec.read(&pipe, 0, 1);
    eventually("the FIFO read issued", || {
        exec.stats().shards[0].in_flight_hwm >= 1
    });
    let writes: Vec<_> = (0..JOBS)
        .map(|i| exec.write(&f, (i * 4096) as u64, vec![i as u8; 4096]))
        .collect();
    // The FIFO read and every write in flight at once.
    eventually("the writes issued", || {
        exec.stats().shards[0].in_flight_hwm > JOBS as u64
    });
    let held = descriptors_of(&path);
    assert!(
        held <= 2,
        "{held} descriptors of the file with {JOBS} jobs queued on it (its own, and at most one \
         the jobs share)"
    );
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    std::io::Write::write_all(&mut writer, b"!").unwrap();
    assert_eq!(stuck.wait().unwrap(), b"!");
    for (i, w) in writes.into_iter().enumerate() {
        assert_eq!(w.wait().unwrap(), 4096, "write {i}");
    }
    let data = std::fs::read(&path).unwrap();
    assert_eq!(data.len(), JOBS * 4096);
    for (i, chunk) in data.chunks(4096).enumerate() {
        assert!(chunk.iter().all(|&b| b == i as u8), "block {i}");
    }
    // The jobs are done: only the file's own descriptor is left (once the worker has let go of
    // the last job, which may come just after its completion).
    eventually("the jobs' shared descriptor closed", || {
        descriptors_of(&path) == 1
    });
    exec.shutdown().unwrap();
}
