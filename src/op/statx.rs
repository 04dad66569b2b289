//! statx: the metadata of an open file (`AT_EMPTY_PATH` on its descriptor) or of a path. The
//! statx buffer and the path belong to the op until its CQE.
//!
//! A path goes through the ring (IORING_OP_STATX: the lookup may read the disk). An open file's
//! is a `statx` call on the shard thread, like `size`'s fstat: io_uring runs every STATX on an
//! io-wq worker (it forces async), a thread trip that costs more than the call, and an open
//! file's inode is in memory, so a local filesystem answers without I/O (a network filesystem may
//! ask its server, as for `size`).

use super::{FileOp, Footprint, OpFd, OpKind, Outcome, PathTarget};
use crate::completion::Completer;
use crate::error::{Error, Result};
use io_uring::{opcode, squeue, types};
use std::ffi::CString;
use std::os::fd::RawFd;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// A file's metadata, from `statx(2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    stx: StatxFields,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatxFields {
    mask: u32,
    mode: u32,
    size: u64,
    ino: u64,
    dev: u64,
    rdev: u64,
    nlink: u32,
    uid: u32,
    gid: u32,
    blksize: u32,
    blocks: u64,
    atime: (i64, u32),
    btime: (i64, u32),
    ctime: (i64, u32),
    mtime: (i64, u32),
}

fn time((sec, nsec): (i64, u32)) -> SystemTime {
    let nsec = Duration::from_nanos(u64::from(nsec.min(999_999_999)));
    if sec >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(sec as u64) + nsec
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + nsec
    }
}

impl Metadata {
    fn from_statx(s: &libc::statx) -> Self {
        let t = |t: &libc::statx_timestamp| (t.tv_sec, t.tv_nsec);
        Metadata {
            stx: StatxFields {
                mask: s.stx_mask,
                mode: u32::from(s.stx_mode),
                size: s.stx_size,
                ino: s.stx_ino,
                dev: libc::makedev(s.stx_dev_major, s.stx_dev_minor),
                rdev: libc::makedev(s.stx_rdev_major, s.stx_rdev_minor),
                nlink: s.stx_nlink,
                uid: s.stx_uid,
                gid: s.stx_gid,
                blksize: s.stx_blksize,
                blocks: s.stx_blocks,
                atime: t(&s.stx_atime),
                btime: t(&s.stx_btime),
                ctime: t(&s.stx_ctime),
                mtime: t(&s.stx_mtime),
            },
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.stx.size
    }

    /// Whether the size is 0.
    pub fn is_empty(&self) -> bool {
        self.stx.size == 0
    }

    /// File type and permission bits (`st_mode`).
    pub fn mode(&self) -> u32 {
        self.stx.mode
    }

    /// Permission bits only (`mode & 0o7777`).
    pub fn permissions(&self) -> u32 {
        self.stx.mode & 0o7777
    }

    /// A regular file.
    pub fn is_file(&self) -> bool {
        self.stx.mode & libc::S_IFMT == libc::S_IFREG
    }

    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.stx.mode & libc::S_IFMT == libc::S_IFDIR
    }

    /// A symbolic link: only [`Executor::symlink_metadata`](crate::Executor::symlink_metadata)
    /// sees one ([`Executor::stat`](crate::Executor::stat) follows a final symlink).
    pub fn is_symlink(&self) -> bool {
        self.stx.mode & libc::S_IFMT == libc::S_IFLNK
    }

    /// Inode number.
    pub fn ino(&self) -> u64 {
        self.stx.ino
    }

    /// Device of the filesystem (`st_dev`, as `makedev(major, minor)`).
    pub fn dev(&self) -> u64 {
        self.stx.dev
    }

    /// Device the file is, for device files (`st_rdev`).
    pub fn rdev(&self) -> u64 {
        self.stx.rdev
    }

    /// Hard links.
    pub fn nlink(&self) -> u64 {
        u64::from(self.stx.nlink)
    }

    /// Owner's user id.
    pub fn uid(&self) -> u32 {
        self.stx.uid
    }

    /// Owner's group id.
    pub fn gid(&self) -> u32 {
        self.stx.gid
    }

    /// Preferred I/O block size.
    pub fn blksize(&self) -> u64 {
        u64::from(self.stx.blksize)
    }

    /// 512-byte blocks allocated.
    pub fn blocks(&self) -> u64 {
        self.stx.blocks
    }

    /// Last modification.
    pub fn modified(&self) -> SystemTime {
        time(self.stx.mtime)
    }

    /// Last access.
    pub fn accessed(&self) -> SystemTime {
        time(self.stx.atime)
    }

    /// Last status change.
    pub fn changed(&self) -> SystemTime {
        time(self.stx.ctime)
    }

    /// Creation, where the filesystem records it (`STATX_BTIME` in the result).
    pub fn created(&self) -> Option<SystemTime> {
        (self.stx.mask & libc::STATX_BTIME != 0).then(|| time(self.stx.btime))
    }
}

/// What to ask for: the basic stats and the creation time.
const MASK: u32 = libc::STATX_BASIC_STATS | libc::STATX_BTIME;

/// statx of an open file (`path: None`) or of a path (following a final symlink unless
/// `nofollow`).
pub(crate) struct Statx {
    /// `None`: the op's file, by descriptor.
    path: Option<(CString, PathTarget)>,
    nofollow: bool,
    /// Written by the kernel: boxed, so it stays put when the op moves.
    buf: Box<libc::statx>,
    done: Option<Completer<Metadata>>,
}

impl Statx {
    /// statx of the open file the request names.
    pub(crate) fn of_file(done: Completer<Metadata>) -> Self {
        Statx {
            path: None,
            nofollow: false,
            // SAFETY: statx is plain old data; all zeros is a valid value.
            buf: Box::new(unsafe { std::mem::zeroed() }),
            done: Some(done),
        }
    }

    /// statx of a path.
    pub(crate) fn of_path(
        path: CString,
        target: PathTarget,
        nofollow: bool,
        done: Completer<Metadata>,
    ) -> Self {
        Statx {
            path: Some((path, target)),
            nofollow,
            // SAFETY: statx is plain old data; all zeros is a valid value.
            buf: Box::new(unsafe { std::mem::zeroed() }),
            done: Some(done),
        }
    }

    fn args(&self, fd: RawFd) -> (RawFd, *const libc::c_char, i32) {
        match &self.path {
            Some((c, _)) => {
                let flags = if self.nofollow {
                    libc::AT_SYMLINK_NOFOLLOW
                } else {
                    0
                };
                (libc::AT_FDCWD, c.as_ptr(), flags)
            }
            None => (fd, c"".as_ptr(), libc::AT_EMPTY_PATH),
        }
    }
}

impl FileOp for Statx {
    fn kind(&self) -> OpKind {
        OpKind::Statx
    }

    /// Reads only: stats run side by side (with each other and with reads), after every
    /// earlier write, and before later writes (a write overlaps every read of the whole file). In
    /// a directory's order list, after earlier unlinks, renames and mkdirs (barriers there).
    fn footprint(&self, _known_size: u64) -> Footprint {
        Footprint::read_to_end(0)
    }

    fn path_target(&self) -> Option<PathTarget> {
        self.path.as_ref().map(|(_, t)| t.clone())
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        // An open file's: run_blocking, on the shard thread (see the module docs).
        self.path.as_ref()?;
        let (dirfd, path, flags) = self.args(fd.raw);
        let buf = (&mut *self.buf as *mut libc::statx).cast::<types::statx>();
        Some(
            opcode::Statx::new(types::Fd(dirfd), path, buf)
                .flags(flags)
                .mask(MASK)
                .build(),
        )
    }

    fn run_blocking(&mut self, fd: RawFd) -> i32 {
        let (dirfd, path, flags) = self.args(fd);
        // SAFETY: `path` is NUL-terminated and lives in `self` (or is the static ""); statx
        // writes only into `*self.buf`, a live statx owned by the op, during the call.
        let r = unsafe { libc::statx(dirfd, path, flags, MASK, &mut *self.buf) };
        if r == 0 {
            0
        } else {
            -crate::numa::last_errno()
        }
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        let path = self.path.as_ref().map_or(file, |(_, t)| &t.path);
        let op = if self.path.is_some() {
            "stat"
        } else {
            "metadata"
        };
        Error::io(op, Some(path.to_path_buf()), None, errno)
    }

    fn complete(&mut self, result: Result<()>) -> Outcome {
        if let Some(done) = self.done.take() {
            done.complete(result.map(|()| Metadata::from_statx(&self.buf)));
        }
        Outcome::Delivered { bytes: 0 }
    }

    fn is_cancelled(&self) -> bool {
        self.done.as_ref().is_some_and(Completer::is_cancelled)
    }
}
