//! read_dir: the entries of a directory (`getdents64`), by path or on an open directory handle.
//!
//! io_uring has no opcode for getdents64, so the listing is the blocking path: on the shard of
//! the directory (its inode, hashed as files are: the shard an `open_dir` of it gets), never on
//! the caller's thread. By path, two stages:
//! 1. OPENAT of the directory (`O_RDONLY | O_DIRECTORY`) in the ring (the threads backend: a
//!    worker), so a slow lookup does not hold the shard thread; the descriptor is an `OwnedFd`
//!    of the op from its CQE on (closed when the op ends, however it ends);
//! 2. one `getdents64` of at most [`CHUNK`] bytes per round on the shard thread, until it
//!    returns 0. Between rounds the shard runs other work, so a huge directory holds the thread
//!    for one chunk at a time (a directory block not in the cache is read from the device
//!    within that call: the one place this op blocks the shard).
//!
//! On an open handle the same rounds run on the handle's descriptor, from its start (the
//! descriptor's position is rewound first; the op is a barrier on the handle, so no other
//! listing of it interleaves). By path it is ordered in the directory's order list like a
//! `stat`: after the unlinks, renames and mkdirs in that directory sent before it.

use super::{cwd, FileOp, Footprint, OpFd, OpKind, Outcome, PathTarget, Step};
use crate::completion::Completer;
use crate::error::{Error, Result};
use io_uring::{opcode, squeue};
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The buffer one `getdents64` fills (a few hundred entries).
pub(crate) const CHUNK: usize = 32 * 1024;

/// The type of a directory entry, as the directory records it (`d_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryType {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (not followed).
    Symlink,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// The filesystem does not record types in its directories (`DT_UNKNOWN`: some older or
    /// network filesystems): [`Executor::symlink_metadata`](crate::Executor::symlink_metadata)
    /// of the entry tells.
    Unknown,
}

impl EntryType {
    fn of(d_type: u8) -> EntryType {
        match d_type {
            libc::DT_REG => EntryType::File,
            libc::DT_DIR => EntryType::Dir,
            libc::DT_LNK => EntryType::Symlink,
            libc::DT_FIFO => EntryType::Fifo,
            libc::DT_SOCK => EntryType::Socket,
            libc::DT_CHR => EntryType::CharDevice,
            libc::DT_BLK => EntryType::BlockDevice,
            _ => EntryType::Unknown,
        }
    }
}

/// One entry of a directory listing ([`Executor::read_dir`](crate::Executor::read_dir)).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DirEntry {
    name: OsString,
    ino: u64,
    file_type: EntryType,
}

impl DirEntry {
    /// The entry's name in its directory: any bytes but `/` and NUL (not necessarily UTF-8).
    pub fn name(&self) -> &OsStr {
        &self.name
    }

    /// Its inode number (`d_ino`).
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// Its type, as recorded in the directory (symlinks are not followed).
    pub fn file_type(&self) -> EntryType {
        self.file_type
    }
}

/// Where the listing comes from.
enum Source {
    /// A path, opened by the op (stage 1), then its descriptor (`None` until the OPENAT's CQE).
    Path {
        path: CString,
        target: PathTarget,
        fd: Option<OwnedFd>,
    },
    /// The op's own open handle; `rewound` once its position is back at the start.
    Handle { rewound: bool },
}

/// One listing: see the module docs.
pub(crate) struct ReadDir {
    source: Source,
    buf: Vec<u8>,
    entries: Vec<DirEntry>,
    done: Option<Completer<Vec<DirEntry>>>,
}

impl ReadDir {
    /// A listing of the directory at `path`, ordered in `target` (the directory's own key).
    pub(crate) fn of_path(
        path: CString,
        target: PathTarget,
        done: Completer<Vec<DirEntry>>,
    ) -> Self {
        Self::new(
            Source::Path {
                path,
                target,
                fd: None,
            },
            done,
        )
    }

    /// A listing of the op's open directory handle.
    pub(crate) fn of_handle(done: Completer<Vec<DirEntry>>) -> Self {
        Self::new(Source::Handle { rewound: false }, done)
    }

    fn new(source: Source, done: Completer<Vec<DirEntry>>) -> Self {
        ReadDir {
            source,
            buf: Vec::new(),
            entries: Vec::new(),
            done: Some(done),
        }
    }

    /// The OPENAT of stage 1, while the path has no descriptor yet.
    fn openat(&self) -> Option<squeue::Entry> {
        match &self.source {
            Source::Path { path, fd: None, .. } => Some(
                opcode::OpenAt::new(cwd(), path.as_ptr())
                    .flags(libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC)
                    .build(),
            ),
            _ => None,
        }
    }

    /// One `getdents64` on `dir` into the op's buffer: the bytes filled, or -errno.
    fn getdents(&mut self, dir: RawFd) -> i32 {
        if let Source::Handle { rewound } = &mut self.source {
            if !*rewound {
                // SAFETY: lseek takes no memory; `dir` is the shard's descriptor of the handle.
                if unsafe { libc::lseek(dir, 0, libc::SEEK_SET) } < 0 {
                    return -crate::numa::last_errno();
                }
                *rewound = true;
            }
        }
        self.buf.resize(CHUNK, 0);
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which is ours and
        // outlives the call (a plain system call: nothing is in flight after it returns).
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir,
                self.buf.as_mut_ptr(),
                self.buf.len(),
            )
        };
        if n < 0 {
            -crate::numa::last_errno()
        } else {
            n.min(CHUNK as i64) as i32
        }
    }

    /// Adds the `linux_dirent64` records in the first `n` bytes of the buffer, but `.` and `..`.
    fn parse(&mut self, n: usize) {
        // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
        const NAME_AT: usize = 19;
        let buf = &self.buf[..n.min(self.buf.len())];
        let mut at = 0;
        while let Some(rec) = buf.get(at..at + NAME_AT) {
            let reclen = usize::from(u16::from_ne_bytes([rec[16], rec[17]]));
            let Some(whole) = buf.get(at..at + reclen).filter(|_| reclen > NAME_AT) else {
                break; // a malformed record: the kernel never writes one
            };
            let mut ino = [0u8; 8];
            ino.copy_from_slice(&rec[..8]);
            let raw = &whole[NAME_AT..];
            let name = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
            if name != b"." && name != b".." {
                self.entries.push(DirEntry {
                    name: OsStr::from_bytes(name).to_os_string(),
                    ino: u64::from_ne_bytes(ino),
                    file_type: EntryType::of(rec[18]),
                });
            }
            at += reclen;
        }
    }

    /// The descriptor the listing reads: the op's own, or the handle's (`fd`).
    fn dir_fd(&self, fd: RawFd) -> RawFd {
        match &self.source {
            Source::Path { fd: Some(own), .. } => own.as_raw_fd(),
            Source::Path { fd: None, .. } => -1,
            Source::Handle { .. } => fd,
        }
    }
}

impl FileOp for ReadDir {
    fn kind(&self) -> OpKind {
        OpKind::ReadDir
    }

    fn footprint(&self, _known_size: u64) -> Footprint {
        match self.source {
            // Like a stat: side by side with other reads of the directory, after its mutations.
            Source::Path { .. } => Footprint::read_to_end(0),
            // It moves the handle's position: one at a time.
            Source::Handle { .. } => Footprint::Barrier,
        }
    }

    fn path_target(&self) -> Option<PathTarget> {
        match &self.source {
            Source::Path { target, .. } => Some(target.clone()),
            Source::Handle { .. } => None,
        }
    }

    fn sqe(&mut self, _fd: OpFd) -> Option<squeue::Entry> {
        self.openat() // then getdents64, which has no opcode: `run_blocking`
    }

    fn run_blocking(&mut self, fd: RawFd) -> i32 {
        match self.openat() {
            Some(entry) => crate::driver::threads::run_sqe(&entry),
            None => self.getdents(self.dir_fd(fd)),
        }
    }

    fn on_result(&mut self, res: i32, _flags: u32, _fd: RawFd) -> Step {
        if let Source::Path { fd: own @ None, .. } = &mut self.source {
            // SAFETY: the OPENAT's result is a new descriptor nobody else owns; owned from
            // here, it is closed when the op is dropped, however the op ends.
            *own = Some(unsafe { OwnedFd::from_raw_fd(res) });
            return Step::Again;
        }
        if res == 0 {
            return Step::Done; // the end of the directory
        }
        self.parse(res as usize);
        Step::Again
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        let path = match &self.source {
            Source::Path { target, .. } => &target.path,
            Source::Handle { .. } => file,
        };
        Error::io("read_dir", Some(path.to_path_buf()), None, errno)
    }

    fn complete(&mut self, result: Result<()>) -> Outcome {
        if let Some(done) = self.done.take() {
            done.complete(result.map(|()| std::mem::take(&mut self.entries)));
        }
        Outcome::Delivered { bytes: 0 }
    }

    fn is_cancelled(&self) -> bool {
        self.done.as_ref().is_some_and(Completer::is_cancelled)
    }
}
