//! File handles and open options.
//!
//! Opening happens on the caller's thread (`open(2)` then `fstat(2)`): the inode decides the shard
//! (see [`router`](crate::router)), and the descriptor is then handed to that shard, which installs
//! it in its ring's registered file table. Opens are rare; reads and writes are the hot path.

use crate::error::{IoUringError, Result};
use crate::router::FileKey;
use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

/// How to open a file: the same switches as [`std::fs::OpenOptions`], plus O_DIRECT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenOptions {
    read: bool,
    write: bool,
    create: bool,
    create_new: bool,
    truncate: bool,
    append: bool,
    direct: bool,
    mode: Option<u32>,
}

impl OpenOptions {
    /// All switches off; turn on at least `read` or `write`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Open for reading.
    pub fn read(&mut self, on: bool) -> &mut Self {
        self.read = on;
        self
    }

    /// Open for writing.
    pub fn write(&mut self, on: bool) -> &mut Self {
        self.write = on;
        self
    }

    /// Create the file if it does not exist (needs `write` or `append`).
    pub fn create(&mut self, on: bool) -> &mut Self {
        self.create = on;
        self
    }

    /// Create the file, failing with EEXIST if it exists.
    pub fn create_new(&mut self, on: bool) -> &mut Self {
        self.create_new = on;
        self
    }

    /// Truncate to length 0 on open (needs `write`).
    pub fn truncate(&mut self, on: bool) -> &mut Self {
        self.truncate = on;
        self
    }

    /// Every write appends at the end of the file (the offset given to `write` is ignored, and
    /// writes to the file run one at a time, in order).
    pub fn append(&mut self, on: bool) -> &mut Self {
        self.append = on;
        self
    }

    /// O_DIRECT: bypass the page cache. Offsets and lengths of reads and writes must then be
    /// multiples of 4096 (the executor's buffers are page-aligned). Not every filesystem supports
    /// it (tmpfs before Linux 6.6, some FUSE and network filesystems): `open` then fails with
    /// EINVAL.
    pub fn direct(&mut self, on: bool) -> &mut Self {
        self.direct = on;
        self
    }

    /// Permission bits for a created file (default 0o644).
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.mode = Some(mode);
        self
    }

    fn flags(&self) -> Result<libc::c_int> {
        let write = self.write || self.append;
        let mut flags =
            match (self.read, write) {
                (true, false) => libc::O_RDONLY,
                (false, true) => libc::O_WRONLY,
                (true, true) => libc::O_RDWR,
                (false, false) => return Err(IoUringError::invalid(
                    "open",
                    "neither read nor write access asked for: set read(true) and/or write(true)",
                )),
            };
        if (self.create || self.create_new || self.truncate) && !write {
            return Err(IoUringError::invalid(
                "open",
                "create/create_new/truncate need write access: set write(true)",
            ));
        }
        flags |= libc::O_CLOEXEC;
        if self.create_new {
            flags |= libc::O_CREAT | libc::O_EXCL;
        } else if self.create {
            flags |= libc::O_CREAT;
        }
        if self.truncate {
            flags |= libc::O_TRUNC;
        }
        if self.append {
            flags |= libc::O_APPEND;
        }
        if self.direct {
            flags |= libc::O_DIRECT;
        }
        Ok(flags)
    }

    /// Opens `path` on the calling thread and identifies it.
    pub(crate) fn open_fd(&self, path: &Path) -> Result<(OwnedFd, FileKey, FileFlags)> {
        let flags = self.flags()?;
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
            IoUringError::invalid("open", format!("path {:?} contains a NUL byte", path))
        })?;
        let mode = self.mode.unwrap_or(0o644) as libc::c_uint;
        // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
        let fd = unsafe { libc::open(c.as_ptr(), flags, mode) };
        if fd < 0 {
            return Err(IoUringError::io(
                "open",
                Some(path.to_path_buf()),
                None,
                crate::numa::last_errno(),
            ));
        }
        // SAFETY: open returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        use std::os::fd::AsRawFd;
        let key = FileKey::of_fd(fd.as_raw_fd()).map_err(|e| {
            IoUringError::io(
                "fstat",
                Some(path.to_path_buf()),
                None,
                e.raw_os_error().unwrap_or(libc::EIO),
            )
        })?;
        Ok((
            fd,
            key,
            FileFlags {
                readable: self.read,
                writable: self.write || self.append,
                append: self.append,
                direct: self.direct,
            },
        ))
    }
}

/// What a handle may do, fixed at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileFlags {
    pub readable: bool,
    pub writable: bool,
    pub append: bool,
    pub direct: bool,
}

/// A file open in an [`Executor`](crate::Executor).
///
/// Cheap to clone: clones name the same open file. After [`close`](crate::Executor::close), every
/// clone is stale and operations on it fail with [`IoUringError::BadHandle`]; so do operations on
/// a handle from another executor.
#[derive(Debug, Clone)]
pub struct File {
    pub(crate) exec: u64,
    pub(crate) shard: usize,
    pub(crate) slot: u32,
    pub(crate) gen: u32,
    pub(crate) key: FileKey,
    pub(crate) flags: FileFlags,
    pub(crate) path: Arc<Path>,
}

/// What a request carries to name its file: copied, not reference-counted, so requests do not
/// bounce a shared counter between cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileRef {
    pub exec: u64,
    pub shard: usize,
    pub slot: u32,
    pub gen: u32,
}

impl File {
    pub(crate) fn handle(&self) -> FileRef {
        FileRef {
            exec: self.exec,
            shard: self.shard,
            slot: self.slot,
            gen: self.gen,
        }
    }

    /// The shard that runs every operation on this file.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// The path the file was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's identity (device and inode), which decided its shard.
    pub fn key(&self) -> FileKey {
        self.key
    }

    /// Whether the file was opened with O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.flags.direct
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_rules() {
        assert!(OpenOptions::new().flags().is_err());
        assert!(OpenOptions::new().read(true).create(true).flags().is_err());
        let f = OpenOptions::new().read(true).write(true).flags().unwrap();
        assert_eq!(f & libc::O_ACCMODE, libc::O_RDWR);
        let f = OpenOptions::new()
            .append(true)
            .create(true)
            .flags()
            .unwrap();
        assert_eq!(f & libc::O_ACCMODE, libc::O_WRONLY);
        assert_ne!(f & libc::O_APPEND, 0);
        assert_ne!(f & libc::O_CREAT, 0);
    }

    #[test]
    fn nul_in_path_is_invalid_argument() {
        let e = OpenOptions::new()
            .read(true)
            .open_fd(Path::new("/tmp/a\0b"))
            .unwrap_err();
        assert!(matches!(e, IoUringError::InvalidArgument { .. }), "{e}");
        assert!(e.to_string().contains("NUL"), "{e}");
    }

    #[test]
    fn missing_file_names_path_and_errno() {
        let e = OpenOptions::new()
            .read(true)
            .open_fd(Path::new("/nonexistent/ringshard"))
            .unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENOENT));
        assert!(e.to_string().contains("/nonexistent/ringshard"), "{e}");
    }
}
