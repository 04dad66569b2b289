//! Running a child process as an ordinary user with a small RLIMIT_MEMLOCK, as on a machine where
//! the limit is the distribution's default (64 KiB). Shared by the library's backend tests and
//! ringbench's (included with `#[path]`).
//!
//! Pinned memory (io_uring rings, registered buffers) is counted per user, over every process of
//! that user, and the kernel gives a closed ring's memory back a little later, asynchronously.
//! So each test runs its child as a user of its own ([`private_uid`]: a uid nothing else uses),
//! so that neither another test's children nor their closing rings change what fits.

#![allow(dead_code)] // each includer uses a part

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `nobody`.
pub const NOBODY: u32 = 65534;

/// A uid nothing else on the machine uses, for the test numbered `slot` (below 16) of this
/// process: the process id is part of it, so neither another test process running at the same
/// time (a second `cargo test`, a CI step) nor the closing rings of an earlier run, given back
/// asynchronously, are counted against the same user.
pub fn private_uid(slot: u32) -> u32 {
    200_000 + (std::process::id() % 100_000) * 16 + slot % 16
}

/// Whether this process runs as root (and so can make its children another user).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no side effects.
    unsafe { libc::geteuid() == 0 }
}

/// Lowers RLIMIT_MEMLOCK to `limit` bytes in the child and, when we are root, makes it user
/// `uid` (group `uid`, no supplementary groups), a user the limit really binds: root has
/// CAP_IPC_LOCK, which the switch drops.
pub fn with_memlock_as(cmd: &mut Command, limit: u64, uid: u32) {
    // SAFETY: between fork and exec the closure calls only setrlimit, geteuid, setgroups, setgid
    // and setuid (async-signal-safe, no allocation).
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::geteuid() == 0
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(uid) != 0
                    || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Whether any user (not owner, not in the group) can reach and run `exe`: every ancestor
/// directory needs o+x and the file o+rx.
fn others_can_exec(exe: &Path) -> bool {
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode())
            .unwrap_or(0)
    };
    exe.ancestors().skip(1).all(|d| mode(d) & 0o001 != 0) && mode(exe) & 0o005 == 0o005
}

/// `exe`, or, if another user could not run it where it is, a world-readable copy in a
/// directory of /tmp (kept until the returned guard drops).
pub fn runnable_by_others(exe: &Path) -> (PathBuf, Option<tempfile::TempDir>) {
    if others_can_exec(exe) {
        return (exe.to_path_buf(), None);
    }
    let dir = tempfile::Builder::new()
        .prefix("ringshard-as-user")
        .tempdir_in("/tmp")
        .expect("a temp dir in /tmp");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join(exe.file_name().expect("a file name"));
    std::fs::copy(exe, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    (copy, Some(dir))
}
