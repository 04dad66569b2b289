//! Helpers shared by the `tests/executor*.rs` integration tests (not a test target of its own:
//! it lives in a directory, and each test file includes it with `mod executor_util;`).

#![allow(dead_code)] // each test binary uses a different subset

use ringshard::{Completion, Executor, File, IoUringError, OpenOptions};
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
        Err(IoUringError::Timeout) => panic!("operation did not complete within {HANG:?}"),
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
