//! Helpers shared by the `tests/executor*.rs` integration tests (not a test target of its own:
//! it lives in a directory, and each test file includes it with `mod executor_util;`).

#![allow(dead_code)] // each test binary uses a different subset

use ringshard::{Completion, Error, Executor, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The longest any single operation may take before a test calls it a hang. Generous: the
/// machines are small and shared, and the debug build is slow; no test asserts on timing.
pub const HANG: Duration = Duration::from_secs(30);

/// Waits for `c` with [`HANG`] as the limit; a timeout fails the test (instead of hanging it).
#[track_caller]
pub fn wait<T>(mut c: Completion<T>) -> ringshard::Result<T> {
    match c.wait_timeout(HANG) {
        Err(Error::Timeout) => panic!("operation did not complete within {HANG:?}"),
        r => r,
    }
}

/// Waits for `c` and unwraps it with a message naming `what`.
#[track_caller]
pub fn ok<T>(c: Completion<T>, what: &str) -> T {
    match wait(c) {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e} ({e:?})"),
    }
}

/// Read + write + create.
pub fn rwc() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true).write(true).create(true);
    o
}

/// Read + write, no create.
pub fn rw() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    o
}

/// An executor of two shards with small pools (8 buffers of 16 KiB each).
pub fn exec2() -> Executor {
    Executor::builder()
        .shards(2)
        .buffer_size(16 * 1024)
        .buffer_count(8)
        .build()
        .expect("executor")
}

/// Opens `path` read-write (creating it) through `exec`.
#[track_caller]
pub fn open_rwc(exec: &Executor, path: &Path) -> File {
    ok(exec.open(path, &rwc()), "open")
}

/// A small deterministic PRNG (splitmix64): reproducible runs without extra dependencies.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// FNV-1a 64 of `data`: a checksum to report in failure messages.
pub fn checksum(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Asserts two byte strings are equal, reporting length, checksums and the first difference
/// instead of dumping megabytes.
#[track_caller]
pub fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: got {} bytes (fnv {:016x}), want {} bytes (fnv {:016x}); first difference at \
         byte {first} (got {:?}, want {:?})",
        got.len(),
        checksum(got),
        want.len(),
        checksum(want),
        got.get(first),
        want.get(first)
    );
}

/// Prints a line straight to stderr, past the test harness's capture: summaries (figures the
/// README quotes) and skip notes show in a plain `cargo test` run, passing or not. Test files
/// wrap it in a `report!` macro taking `format!` arguments.
pub fn report_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// Whether this process is root (mounting tmpfs needs it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A tmpfs mounted on a fresh temporary directory; unmounted (lazily, so open descriptors do not
/// stop it) when dropped.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `"256k"`), or says why it cannot.
    pub fn mount(size: &str) -> Result<Tmpfs, String> {
        if !is_root() {
            return Err("not root: cannot mount a tmpfs".into());
        }
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Opens files named `prefix{i}` in `dir` until at least `per_shard` files live on each of
/// `exec`'s shards (or `limit` files were tried); returns them all, with their paths.
pub fn files_on_every_shard(
    exec: &Executor,
    dir: &Path,
    prefix: &str,
    per_shard: usize,
    limit: usize,
) -> Vec<(PathBuf, File)> {
    files_on_every_shard_with(exec, dir, prefix, per_shard, limit, &rwc())
}

/// [`files_on_every_shard`] with these open options.
pub fn files_on_every_shard_with(
    exec: &Executor,
    dir: &Path,
    prefix: &str,
    per_shard: usize,
    limit: usize,
    opts: &OpenOptions,
) -> Vec<(PathBuf, File)> {
    let mut out = Vec::new();
    let mut counts = vec![0usize; exec.shard_count()];
    for i in 0..limit {
        if counts.iter().all(|&c| c >= per_shard) {
            break;
        }
        let path = dir.join(format!("{prefix}{i}"));
        let f = ok(exec.open(&path, opts), "open");
        counts[f.shard()] += 1;
        out.push((path, f));
    }
    assert!(
        counts.iter().all(|&c| c >= per_shard),
        "could not place {per_shard} files on every shard in {limit} tries: {counts:?}"
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Panics on shard threads
// ---------------------------------------------------------------------------------------------

type Hook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync + 'static>;

/// Silences panic messages from shard threads (`ringshard-*`), and the deliberate panics of
/// [`panicking_waker`] wherever they happen (a waker registered on an already-finished
/// completion is woken on the caller's thread), while alive; others still print. Printing one
/// with `RUST_BACKTRACE` set would load the binary's debug info into a process-wide cache (about
/// 80 MiB resident), which RSS checks would take for a leak.
pub struct QuietShardPanics {
    prev: Option<std::sync::Arc<Hook>>,
    /// One guard at a time (the hook is process-wide): tests using it run one after another.
    _one: std::sync::MutexGuard<'static, ()>,
}

static HOOK_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl QuietShardPanics {
    pub fn install() -> Self {
        let one = HOOK_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let prev = std::sync::Arc::new(std::panic::take_hook());
        let inner = std::sync::Arc::clone(&prev);
        std::panic::set_hook(Box::new(move |info| {
            let shard = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("ringshard-"));
            let deliberate = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|m| m == WAKER_PANIC);
            if !shard && !deliberate {
                inner(info);
            }
        }));
        QuietShardPanics {
            prev: Some(prev),
            _one: one,
        }
    }
}

impl Drop for QuietShardPanics {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return; // the hook cannot be changed now; leave ours (it forwards to the old one)
        }
        drop(std::panic::take_hook()); // ours: releases its reference to the previous hook
        if let Some(Ok(prev)) = self.prev.take().map(std::sync::Arc::try_unwrap) {
            std::panic::set_hook(prev);
        }
    }
}

/// Whether `e` is [`Error::ShardFailed`] for `shard`.
pub fn is_shard_failed(e: &Error, shard: usize) -> bool {
    matches!(e, Error::ShardFailed { shard: s, .. } if *s == shard)
}

/// The text every [`panicking_waker`] panics with.
pub const WAKER_PANIC: &str = "this waker panics on purpose";

/// How many times a [`panicking_waker`] was woken (and panicked), in this process.
pub static WAKER_PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct PanicWaker;

impl std::task::Wake for PanicWaker {
    fn wake(self: std::sync::Arc<Self>) {
        WAKER_PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        panic!("{WAKER_PANIC}");
    }
}

/// A waker whose `wake` (and `wake_by_ref`) panics: a broken runtime.
pub fn panicking_waker() -> std::task::Waker {
    std::task::Waker::from(std::sync::Arc::new(PanicWaker))
}

// ---------------------------------------------------------------------------------------------
// Process resources
// ---------------------------------------------------------------------------------------------

/// Descriptors open in this process now (the entries of /proc/self/fd, less the one that lists
/// them).
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
        .saturating_sub(1)
}

/// What descriptor `fd` names now (the link target in /proc/self/fd), or `None` if it is closed.
pub fn fd_target(fd: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()
}

/// This process's resident set size, in bytes (/proc/self/statm).
pub fn rss_bytes() -> u64 {
    // Give freed memory back to the kernel first, so that RSS counts what is live, not the peak
    // glibc kept cached (a loaded machine queues more requests at once, and that peak is not a
    // leak). Leaks stay resident and still show.
    // SAFETY: malloc_trim only releases free heap memory; no pointer of ours is involved.
    unsafe { libc::malloc_trim(0) };
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("resident pages in /proc/self/statm");
    // SAFETY: sysconf has no memory arguments.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(4096) as u64
}

/// CPU time (user + system) the calling thread has used so far.
pub fn thread_cpu_time() -> Duration {
    // SAFETY: rusage is plain data; zeroed is a valid value, and getrusage writes only into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a local rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    assert_eq!(rc, 0, "getrusage(RUSAGE_THREAD)");
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Makes a FIFO at `path`.
pub fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

/// Aborts the process (with a message) unless dropped within `limit`: a test that waits with
/// `Duration::MAX` somewhere must still not hang CI forever. What was registered with
/// [`before_abort`] runs first.
pub struct Watchdog {
    _disarm: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    pub fn new(what: &'static str, limit: Duration) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("{what} hung for {limit:?}: aborting");
                let hooks = BEFORE_ABORT.lock().unwrap_or_else(|p| p.into_inner());
                for f in hooks.iter() {
                    f();
                }
                std::process::abort();
            }
        });
        Watchdog { _disarm: tx }
    }
}

static BEFORE_ABORT: std::sync::Mutex<Vec<fn()>> = std::sync::Mutex::new(Vec::new());

/// Has a [`Watchdog`] call `f` before it aborts the process. (tests/faultfs aborts its FUSE
/// connections: a thread waiting for an answer from a filesystem served by the dying process
/// itself would keep it, and its mount, alive for ever.)
pub fn before_abort(f: fn()) {
    BEFORE_ABORT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(f);
}

/// Serializes the tests of one binary that measure process-wide things (descriptors, RSS, CPU
/// time, timer lateness): each holds the guard for its whole run.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Polls `cond` (every 2 ms) until it holds; panics naming `what` if it does not within `limit`.
/// Returns how long it took.
#[track_caller]
pub fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = std::time::Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            panic!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The Linux thread id of the calling thread.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// A task on `shard` that runs until the returned sender is used (or dropped): the shard is busy
/// meanwhile. Returns once the task has started.
pub fn hold_shard(exec: &Executor, shard: usize) -> (std::sync::mpsc::Sender<()>, Completion<()>) {
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
    let task = exec.submit_to(shard, move |_| {
        started_tx.send(()).unwrap();
        let _ = gate_rx.recv_timeout(HANG);
    });
    started_rx.recv_timeout(HANG).expect("the task started");
    (gate_tx, task)
}

/// Which pages of `path` are in the page cache (`mincore` of a shared mapping).
pub fn resident_pages(path: &Path) -> Vec<bool> {
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    if len == 0 {
        return Vec::new();
    }
    // SAFETY: a read-only shared mapping of a file we opened; unmapped below, never read.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap");
    let mut vec = vec![0u8; len.div_ceil(4096)];
    // SAFETY: `p` maps `len` bytes; `vec` has one byte per page.
    let r = unsafe { libc::mincore(p, len, vec.as_mut_ptr()) };
    // SAFETY: unmaps what was mapped above.
    unsafe { libc::munmap(p, len) };
    assert_eq!(r, 0, "mincore");
    vec.iter().map(|b| b & 1 != 0).collect()
}

/// Stops a send_file of `len` bytes of `file` to `dest` whose peer does not read, the way `how`
/// says: "deadline" (a 50 ms timeout: DeadlineExceeded), "cancel" (once `stalled()` holds:
/// Cancelled) or "drop" (once `stalled()` holds, the handle dropped).
pub fn stop_stalled_send_file(
    exec: &Executor,
    how: &str,
    file: &ringshard::File,
    len: u64,
    dest: impl std::os::fd::AsFd,
    stalled: impl Fn() -> bool,
) {
    let c = match how {
        "deadline" => exec
            .timeout(Duration::from_millis(50))
            .send_file(file, 0, len, dest),
        _ => exec.send_file(file, 0, len, dest),
    };
    if how != "deadline" {
        let _w = Watchdog::new("the send's peer stalled", HANG);
        while !stalled() {
            std::thread::yield_now();
        }
    }
    match how {
        "deadline" => match wait(c) {
            Err(Error::DeadlineExceeded { .. }) => {}
            other => panic!("{how}: {other:?}"),
        },
        "cancel" => {
            c.cancel();
            match wait(c) {
                Err(Error::Cancelled { .. }) => {}
                other => panic!("{how}: {other:?}"),
            }
        }
        _ => drop(c),
    }
}

/// The byte at `i` of a file of pattern `seed`: no period a misplaced round could line up with.
pub fn pattern_byte(seed: u64, i: u64) -> u8 {
    let x = (i ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0x2545_f491_4f6c_dd1d);
    (x >> 56) as u8
}

/// Reads exactly `n` bytes on a thread and checks they are bytes `from..from + n` of pattern
/// `seed` ([`pattern_byte`]).
pub fn pattern_reader<R: std::io::Read + Send + 'static>(
    mut r: R,
    seed: u64,
    from: u64,
    n: u64,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut got = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        while got < n {
            let want = ((n - got) as usize).min(buf.len());
            let k = r.read(&mut buf[..want]).unwrap();
            assert!(k > 0, "stream ended after {got} of {n} bytes");
            for (j, &b) in buf[..k].iter().enumerate() {
                let i = from + got + j as u64;
                assert_eq!(
                    b,
                    pattern_byte(seed, i),
                    "byte {i} of the file (received #{})",
                    got
                );
            }
            got += k as u64;
        }
    })
}

/// Waits until `s` takes no more bytes (its buffer is full: the send's drain waits).
pub fn wait_until_full(s: &impl std::os::fd::AsRawFd) {
    let start = std::time::Instant::now();
    loop {
        let mut p = libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        let n = unsafe { libc::poll(&mut p, 1, 10) };
        if n == 0 {
            return;
        }
        assert!(start.elapsed() < HANG, "the socket never filled");
        // Writable: the send is still filling it; look again shortly.
        std::thread::yield_now();
    }
}
