//! open (IORING_OP_OPENAT): opens a path on a shard's ring, reads the file's identity, and hands
//! the descriptor to the shard its inode hashes to (`Message::Install`, as `adopt` does), or to
//! the shard `open_on` named.
//!
//! Any shard can run an open (the executor picks them in turn), and its ring runs many at once:
//! the kernel tries each inline with only cached lookups and hands the rest to its io-wq workers
//! (the threads backend: to the shard's workers), so one slow lookup (a cold inode, a stalled
//! network or FUSE filesystem) holds only its own open. Two rounds:
//! 1. OPENAT (refused, without a system call, once the executor is shutting down: a refused open
//!    creates and truncates nothing);
//! 2. `statx(AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_INO)` on the new descriptor, on the shard
//!    thread: the device and inode are in the inode already, so no filesystem is asked (a FUSE
//!    or NFS attribute refresh would block the shard).
//!
//! # The descriptor never leaks
//!
//! From the OPENAT's completion on, the descriptor is an `OwnedFd` in this op (`on_result` takes
//! it before anything else looks at the result, even for an op cancelled meanwhile), and the op
//! ends in one of two ways: `complete(Ok)` moves it into `Message::Install`, whose shard puts it
//! in its file table or, refused (shut down, dead shard), drops the message and closes it; any
//! other end (an error, the statx failing, the handle dropped, shutdown's cancellation, a shard
//! that stops or dies with the op queued) drops the op, which closes it. The one exception is
//! the rule for every op: a shard thread that panics with the OPENAT still in the kernel leaks
//! the op, and the descriptor the kernel may open after that is never seen (a panic is the
//! shard's own bug; `kill_shard_for_tests` waits for a quiet ring and so never does this).
//! [`open_cached`] (the blocking `open`'s hot path, on the caller's thread) keeps the same
//! rule: its descriptor is an `OwnedFd` from `openat2`'s return, moved into the install or
//! dropped.

use super::{cwd, FileOp, OpFd, OpKind, Outcome, PathTarget};
use crate::completion::Completer;
use crate::error::{Error, Result};
use crate::fd_transit::InTransit;
use crate::file::{File, FileFlags, OpenPlan};
use crate::router::FileKey;
use io_uring::{opcode, squeue};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;

pub(crate) use crate::router::OPEN_KEY_DEV;

/// Where an open's descriptor goes: the executor (`ExecShared`), which sends it to the shard its
/// inode hashes to. A trait here, so that `op/` needs nothing above it.
pub(crate) trait Installer: Send + Sync {
    /// Shutdown has begun: an open not yet run is refused.
    fn closed(&self) -> bool;

    /// A place among the descriptors in transit, taken at once (on a shard thread, which must
    /// not wait for closes its own shard runs): for a descriptor the kernel made here (an
    /// accepted connection) on its way to the file table.
    fn fd_token(&self) -> InTransit;

    /// Sends `fd` to be installed on shard `on`, or if `None` on the shard `key` hashes to,
    /// which completes `done` (or, if the message is refused, fails it and closes `fd`). Never
    /// blocks.
    #[allow(clippy::too_many_arguments)]
    fn install(
        self: Arc<Self>,
        on: Option<usize>,
        fd: OwnedFd,
        key: FileKey,
        flags: FileFlags,
        path: &Path,
        done: Completer<File>,
        transit: InTransit,
    );
}

/// Where an open is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// OPENAT next (or in the kernel).
    Open,
    /// The descriptor is here; its identity next.
    Identify,
}

/// One open: see the module docs.
pub(crate) struct OpenAt {
    plan: OpenPlan,
    /// The path (errors) and the op's own order key.
    target: PathTarget,
    exec: Arc<dyn Installer>,
    done: Option<Completer<File>>,
    /// This descriptor's place in the executor's bound on descriptors in transit: taken before
    /// the open was sent, handed on with the install (or dropped with the op).
    transit: Option<InTransit>,
    stage: Stage,
    fd: Option<OwnedFd>,
    key: Option<FileKey>,
    /// The executor was shutting down before the OPENAT: refused, not run.
    refused: bool,
    /// The shard to install the file on (`open_on`); `None`: the one its inode hashes to.
    on: Option<usize>,
}

impl OpenAt {
    pub(crate) fn new(
        plan: OpenPlan,
        path: Arc<Path>,
        seq: u64,
        exec: Arc<dyn Installer>,
        done: Completer<File>,
        transit: InTransit,
        on: Option<usize>,
    ) -> Self {
        OpenAt {
            plan,
            target: PathTarget {
                key: FileKey {
                    dev: OPEN_KEY_DEV,
                    ino: seq,
                },
                path,
            },
            exec,
            done: Some(done),
            transit: Some(transit),
            stage: Stage::Open,
            fd: None,
            key: None,
            refused: false,
            on,
        }
    }

    fn openat(&self) -> squeue::Entry {
        opcode::OpenAt::new(cwd(), self.plan.path.as_ptr())
            .flags(self.plan.flags)
            .mode(self.plan.mode as libc::mode_t)
            .build()
    }

    /// The new descriptor's identity: 0 or -errno.
    fn identify(&mut self) -> i32 {
        let Some(fd) = &self.fd else {
            return -libc::EBADF;
        };
        match identify(fd) {
            Ok(key) => {
                self.key = Some(key);
                0
            }
            Err(errno) => -errno,
        }
    }

    fn shutting_down(&self) -> bool {
        self.exec.closed()
    }
}

/// The device and inode of `fd`, without asking its filesystem (see the module docs), or the
/// errno.
fn identify(fd: &OwnedFd) -> std::result::Result<FileKey, i32> {
    // SAFETY: statx is plain data; zeroed is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: an empty NUL-terminated path with AT_EMPTY_PATH names `fd`, a live descriptor;
    // statx writes only into `stx`, which outlives the call.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC,
            libc::STATX_INO,
            &mut stx,
        )
    };
    if rc != 0 {
        return Err(crate::numa::last_errno());
    }
    // `st_dev` as stat(2) reports it, as `FileKey::of_fd` and `shard_of_path` read it.
    Ok(FileKey {
        dev: libc::makedev(stx.stx_dev_major, stx.stx_dev_minor),
        ino: stx.stx_ino,
    })
}

/// The blocking `open`'s first try, on the caller's thread: `openat2` with `RESOLVE_CACHED`,
/// which the kernel does only if every step of the lookup is in its caches (no disk, network or
/// FUSE lookup; `O_CREAT` and `O_TRUNC` are refused with EAGAIN), then [`identify`]. The same
/// inline attempt the ring makes before it hands an open to a worker, made where the caller
/// waits anyway: a hot open costs one hop (the install), not two. `None` on any failure: the
/// attempt has no side effect, and the open then goes through a shard's ring, which reports
/// the real error. The descriptor is owned from the call's return: dropped (closed) if it cannot
/// be identified.
pub(crate) fn open_cached(plan: &OpenPlan) -> Option<(OwnedFd, FileKey)> {
    // SAFETY: open_how is plain data; zeroed is a valid value (and the kernel wants the rest 0).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = plan.flags as u32 as u64;
    how.resolve = libc::RESOLVE_CACHED;
    // SAFETY: `plan.path` is NUL-terminated and `how` a live open_how of the size passed; the
    // kernel reads both during the call only.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            plan.path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return None; // EAGAIN (not cached, or creates), ENOSYS (before 5.6), EINVAL, any error
    }
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let key = identify(&fd).ok()?;
    Some((fd, key))
}

impl FileOp for OpenAt {
    fn kind(&self) -> OpKind {
        OpKind::Open
    }

    fn path_target(&self) -> Option<PathTarget> {
        Some(self.target.clone())
    }

    fn sqe(&mut self, _fd: OpFd) -> Option<squeue::Entry> {
        match self.stage {
            // Shutting down: `run_blocking` refuses it.
            Stage::Open if self.shutting_down() => None,
            Stage::Open => Some(self.openat()),
            Stage::Identify => None,
        }
    }

    fn run_blocking(&mut self, _fd: RawFd) -> i32 {
        match self.stage {
            Stage::Open if self.shutting_down() => {
                self.refused = true;
                -libc::ECANCELED
            }
            Stage::Open => crate::driver::threads::run_sqe(&self.openat()),
            Stage::Identify => self.identify(),
        }
    }

    fn on_result(&mut self, res: i32, _flags: u32, _fd: RawFd) -> super::Step {
        match self.stage {
            Stage::Open => {
                // SAFETY: a successful OPENAT's result is a new descriptor that nothing else
                // owns; from here the op closes it unless it is installed.
                self.fd = Some(unsafe { OwnedFd::from_raw_fd(res) });
                if self.is_cancelled() {
                    return super::Step::Done; // nobody waits: closed when the op drops
                }
                self.stage = Stage::Identify;
                super::Step::Again
            }
            Stage::Identify => super::Step::Done,
        }
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        match self.stage {
            _ if self.refused => Error::Shutdown,
            Stage::Open => Error::io("open", Some(file.to_path_buf()), None, errno),
            Stage::Identify => Error::io("statx", Some(file.to_path_buf()), None, errno),
        }
    }

    fn complete(&mut self, result: Result<()>) -> Outcome {
        let Some(done) = self.done.take() else {
            return Outcome::Delivered { bytes: 0 };
        };
        if done.is_cancelled() {
            // Nobody waits (or the caller cancelled): not installed; a descriptor still here is
            // closed when the op drops.
            done.complete(Err(Error::Cancelled {
                op: "open",
                path: Some(self.target.path.to_path_buf()),
                written: None,
            }));
            return Outcome::Delivered { bytes: 0 };
        }
        let installed =
            result.and_then(|()| match (self.fd.take(), self.key, self.transit.take()) {
                (Some(fd), Some(key), Some(transit)) => Ok((fd, key, transit)),
                _ => Err(Error::invalid(
                    "open",
                    "the open finished without a descriptor",
                )),
            });
        match installed {
            Ok((fd, key, transit)) => {
                let exec = Arc::clone(&self.exec);
                exec.install(
                    self.on,
                    fd,
                    key,
                    self.plan.file,
                    &self.target.path,
                    done,
                    transit,
                );
            }
            // A descriptor still here is closed when the op drops.
            Err(e) => done.complete(Err(e)),
        }
        Outcome::Delivered { bytes: 0 }
    }

    fn is_cancelled(&self) -> bool {
        self.done.as_ref().is_some_and(Completer::is_cancelled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::OpenOptions;

    #[test]
    fn identify_agrees_with_fstat() {
        let f = tempfile::tempfile().unwrap();
        let fd = OwnedFd::from(f);
        assert_eq!(
            identify(&fd).unwrap(),
            FileKey::of_fd(fd.as_raw_fd()).unwrap()
        );
    }

    #[test]
    fn the_hot_open_never_creates_or_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"data").unwrap();
        let plan = |o: &OpenOptions| o.plan(&path).unwrap();
        // Cached (just written): opened here, and identified.
        let (fd, key) = open_cached(&plan(OpenOptions::new().read(true))).expect("a hot open");
        assert_eq!(key, FileKey::of_fd(fd.as_raw_fd()).unwrap());
        // Creates and truncates are left to the ring, untouched.
        assert!(open_cached(&plan(OpenOptions::new().write(true).truncate(true))).is_none());
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        let new = dir.path().join("new");
        let create = OpenOptions::new()
            .write(true)
            .create(true)
            .plan(&new)
            .unwrap();
        assert!(open_cached(&create).is_none());
        assert!(!new.exists());
        // A missing file: no answer here (the ring reports the error).
        let missing = OpenOptions::new().read(true).plan(&new).unwrap();
        assert!(open_cached(&missing).is_none());
    }
}
