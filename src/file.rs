//! File handles and open options.
//!
//! Opening happens on a shard's ring (IORING_OP_OPENAT, see `op/open.rs`): the options are
//! checked on the caller's thread, the shard opens the path and reads the file's identity, and the
//! inode decides the shard that keeps it (see [`router`](crate::router)), which installs the
//! descriptor in its ring's registered file table.

pub use crate::driver::cachestat::PageCacheState;
use crate::error::{Error, Result};
use crate::router::FileKey;
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
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
    directory: bool,
    tmpfile: bool,
    custom_flags: i32,
    mode: Option<u32>,
}

/// Flags [`OpenOptions`] sets itself: `custom_flags` may not contain them.
const CONTROLLED_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_CREAT
    | libc::O_EXCL
    | libc::O_TRUNC
    | libc::O_APPEND
    | libc::O_DIRECT
    | libc::O_DIRECTORY
    | libc::O_PATH
    | libc::O_TMPFILE;

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
    /// multiples of the file's O_DIRECT alignment ([`File::direct_io_align`]: 512 or 4096 on
    /// most devices; the executor's buffers are page-aligned). Not every filesystem supports
    /// it (tmpfs before Linux 6.6, some FUSE and network filesystems): `open` then fails with
    /// EINVAL.
    pub fn direct(&mut self, on: bool) -> &mut Self {
        self.direct = on;
        self
    }

    /// Opens a directory (O_RDONLY | O_DIRECTORY): a handle for [`Executor::fsync`] of the
    /// directory (after creating, renaming or unlinking entries in it) and
    /// [`Executor::metadata`]. Needs `read(true)` and nothing else; reads and writes on it fail
    /// with [`Error::BadHandle`]. See also [`Executor::open_dir`].
    ///
    /// [`Executor::fsync`]: crate::Executor::fsync
    /// [`Executor::metadata`]: crate::Executor::metadata
    /// [`Executor::open_dir`]: crate::Executor::open_dir
    pub fn directory(&mut self, on: bool) -> &mut Self {
        self.directory = on;
        self
    }

    /// O_TMPFILE: the path names a **directory**, and the open makes an unnamed regular file
    /// on its filesystem, which is gone when closed unless it is given a name first with
    /// [`File::link_into`] (so readers never see it half-written at that name). Needs
    /// `write(true)`; `create`, `create_new`, `truncate` and `directory` are refused. Not every
    /// filesystem supports it (ext4, xfs, btrfs and tmpfs do; procfs, some FUSE and network
    /// filesystems do not): `open` then fails with EOPNOTSUPP. See also
    /// [`Executor::open_tmpfile`](crate::Executor::open_tmpfile).
    pub fn tmpfile(&mut self, on: bool) -> &mut Self {
        self.tmpfile = on;
        self
    }

    /// Extra `open(2)` flags, OR-ed in: `O_DSYNC`, `O_SYNC`, `O_NOATIME`, `O_NOFOLLOW`, ... Flags
    /// these options control themselves (access mode, `O_CREAT`, `O_EXCL`, `O_TRUNC`,
    /// `O_APPEND`, `O_DIRECT`, `O_DIRECTORY`, `O_TMPFILE`) and `O_PATH` are refused at open with
    /// [`Error::InvalidArgument`]: use the matching switch. `O_CLOEXEC` is always set.
    pub fn custom_flags(&mut self, flags: i32) -> &mut Self {
        self.custom_flags = flags;
        self
    }

    /// Permission bits for a created file (default 0o644).
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.mode = Some(mode);
        self
    }

    fn flags(&self) -> Result<libc::c_int> {
        if self.custom_flags & CONTROLLED_FLAGS != 0 {
            return Err(Error::invalid(
                "open",
                format!(
                    "custom_flags {:#o} contain flags OpenOptions sets itself ({:#o}): use \
                     read/write/create/create_new/truncate/append/direct/directory/tmpfile \
                     instead",
                    self.custom_flags,
                    self.custom_flags & CONTROLLED_FLAGS
                ),
            ));
        }
        if self.directory {
            if !self.read
                || self.write
                || self.append
                || self.create
                || self.create_new
                || self.truncate
                || self.direct
            {
                return Err(Error::invalid(
                    "open",
                    "directory(true) opens read-only: set read(true) and no write, append, \
                     create, create_new, truncate or direct",
                ));
            }
            return Ok(libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | self.custom_flags);
        }
        let write = self.write || self.append;
        let mut flags =
            match (self.read, write) {
                (true, false) => libc::O_RDONLY,
                (false, true) => libc::O_WRONLY,
                (true, true) => libc::O_RDWR,
                (false, false) => return Err(Error::invalid(
                    "open",
                    "neither read nor write access asked for: set read(true) and/or write(true)",
                )),
            };
        if self.tmpfile {
            if !write || self.create || self.create_new || self.truncate || self.directory {
                return Err(Error::invalid(
                    "open",
                    "tmpfile(true) makes a new unnamed file in the directory given: set \
                     write(true) and no create, create_new, truncate or directory",
                ));
            }
            // O_TMPFILE without O_EXCL: the file may be linked into the filesystem later.
            flags |= libc::O_TMPFILE;
        }
        if (self.create || self.create_new || self.truncate) && !write {
            return Err(Error::invalid(
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
        Ok(flags | self.custom_flags)
    }

    /// Checks the options and `path` for an open (no system call): what the shard's OPENAT gets.
    pub(crate) fn plan(&self, path: &Path) -> Result<OpenPlan> {
        let flags = self.flags()?;
        let path = c_path("open", path)?;
        Ok(OpenPlan {
            path,
            flags,
            mode: self.mode.unwrap_or(0o644),
            file: FileFlags {
                readable: self.read,
                writable: self.write || self.append,
                append: self.append,
                direct: self.direct,
                directory: self.directory,
            },
        })
    }
}

/// An open, checked: the arguments of its OPENAT and what its handle may do.
#[derive(Debug)]
pub(crate) struct OpenPlan {
    pub path: CString,
    pub flags: libc::c_int,
    pub mode: u32,
    pub file: FileFlags,
}

/// The identity (device, inode) of an open descriptor, which decides its shard.
fn key_of(fd: &OwnedFd, path: &Path) -> Result<FileKey> {
    use std::os::fd::AsRawFd;
    FileKey::of_fd(fd.as_raw_fd()).map_err(|e| {
        Error::io(
            "fstat",
            Some(path.to_path_buf()),
            None,
            e.raw_os_error().unwrap_or(libc::EIO),
        )
    })
}

/// Keeps `file` open until `held` is cleared, once per run of requests for the same file: a
/// `Session` or `Batch` holds the files of requests it has not sent yet, so that a last handle
/// the caller drops meanwhile closes the file only after those requests (its close is sent when
/// the held clone drops, after the send).
pub(crate) fn hold(held: &mut Vec<File>, file: &File) {
    if !held
        .last()
        .is_some_and(|f| Arc::ptr_eq(&f.inner, &file.inner))
    {
        held.push(file.clone());
    }
}

/// Identifies an existing descriptor for [`Executor::adopt`](crate::Executor::adopt): its access
/// mode, O_APPEND and O_DIRECT from `fcntl(F_GETFL)`, its identity from `fstat`.
pub(crate) fn describe_fd(fd: &OwnedFd, path: &Path) -> Result<(FileKey, FileFlags)> {
    use std::os::fd::AsRawFd;
    let fl = crate::driver::fd_flags::fd_flags(fd.as_raw_fd())
        .map_err(|errno| Error::io("fcntl(F_GETFL)", Some(path.to_path_buf()), None, errno))?;
    let key = key_of(fd, path)?;
    let acc = fl & libc::O_ACCMODE;
    Ok((
        key,
        FileFlags {
            readable: acc == libc::O_RDONLY || acc == libc::O_RDWR,
            writable: acc == libc::O_WRONLY || acc == libc::O_RDWR,
            append: fl & libc::O_APPEND != 0,
            direct: fl & libc::O_DIRECT != 0,
            directory: is_dir(fd),
        },
    ))
}

/// [`describe_fd`] for a socket of `ringshard::net`: its key is unique
/// ([`FileKey::unique_socket`]), not its (dev, ino), which the kernel reuses.
pub(crate) fn describe_socket(fd: &OwnedFd, path: &Path) -> Result<(FileKey, FileFlags)> {
    describe_fd(fd, path).map(|(_, flags)| (FileKey::unique_socket(), flags))
}

/// Whether a descriptor is a directory.
fn is_dir(fd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: fstat writes into the local struct only.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; fd is a live descriptor.
    unsafe {
        libc::fstat(fd.as_raw_fd(), &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// What a handle may do, fixed at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileFlags {
    pub readable: bool,
    pub writable: bool,
    pub append: bool,
    pub direct: bool,
    /// A directory handle: no reads or writes.
    pub directory: bool,
}

/// A file open in an [`Executor`](crate::Executor).
///
/// Cheap to clone: clones name the same open file. When the last clone is dropped, the file is
/// closed on its shard (after every operation already sent for it), and its registered slot is
/// reused. [`Executor::close`](crate::Executor::close) closes it earlier and reports errors;
/// after that, every clone is stale and operations on it fail with [`Error::BadHandle`],
/// as do operations on a handle from another executor.
#[derive(Clone)]
pub struct File {
    pub(crate) inner: Arc<FileInner>,
}

/// The executor a [`File`] belongs to, as the file itself needs it: the close of its last
/// handle. Defined here, below the routes that implement it (`routes::ExecShared`, the one
/// implementation), so that this file and the shard that builds `File`s name nothing above
/// them; the layers above get their own type back through [`as_any`](Self::as_any).
pub(crate) trait FileOwner: Send + Sync {
    /// Sends the close of a file whose last handle was dropped (nobody waits for the result).
    fn close_detached(&self, file: FileRef);
    /// Itself, for the routes to name their own type.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// The shared part of a [`File`]: what its clones name, and the close on drop.
pub(crate) struct FileInner {
    pub(crate) handle: FileRef,
    pub(crate) key: FileKey,
    pub(crate) flags: FileFlags,
    pub(crate) path: Arc<Path>,
    /// The executor that opened it (its routes).
    pub(crate) exec: Arc<dyn FileOwner>,
    /// An explicit close was sent: the drop sends none.
    pub(crate) closed: AtomicBool,
    /// What inline reads on the caller's thread need: the shard's descriptor (retired before it
    /// is closed), the inode's unfinished mutations (see `crate::inline`).
    pub(crate) inline: Arc<crate::inline::InlineFile>,
    /// O_DIRECT files: the alignment their I/O needs (read at install).
    pub(crate) direct_align: Option<DirectIoAlign>,
}

impl Drop for FileInner {
    fn drop(&mut self) {
        if !self.closed.load(AtomicOrdering::Acquire) {
            // Never blocks (the inbox is unbounded); refused quietly once the executor is shut
            // down, when the shard has closed every file itself.
            self.exec.close_detached(self.handle);
        }
    }
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("File")
            .field("path", &self.inner.path)
            .field("shard", &self.inner.handle.shard)
            .field("slot", &self.inner.handle.slot)
            .field("key", &self.inner.key)
            .finish()
    }
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
        self.inner.handle
    }

    pub(crate) fn flags(&self) -> FileFlags {
        self.inner.flags
    }

    /// The shard's descriptor of the file (valid while this handle lives; for calls that
    /// change nothing, such as a socket's getpeername).
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        self.inner.inline.raw_fd()
    }

    /// The shard that runs every operation on this file.
    pub fn shard(&self) -> usize {
        self.inner.handle.shard
    }

    /// The path the file was opened by.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The file's identity (device and inode), which decided its shard.
    pub fn key(&self) -> FileKey {
        self.inner.key
    }

    /// Whether the file was opened with O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.inner.flags.direct
    }

    /// How much of `len` bytes from `offset` (`len` 0: to the end of the file) is in the page
    /// cache now, from `cachestat(2)` on the shard's descriptor, called on this thread: it only
    /// reads the inode's page-cache counters (no I/O, no lock held for long; about a
    /// microsecond). The answer is about the inode, whatever this handle's O_DIRECT flag: use it
    /// to choose between a handle with and one without O_DIRECT. `Ok(None)` where the kernel
    /// has no cachestat (before Linux 6.5: ENOSYS); any other refusal is an error with its
    /// errno (EPERM: a seccomp filter refuses the call). Fails after an explicit
    /// [`close`](crate::Executor::close) of this file; a close racing with the call can make it
    /// describe whatever file reuses the descriptor number (a wrong hint, never a fault).
    pub fn page_cache(&self, offset: u64, len: u64) -> Result<Option<PageCacheState>> {
        if self.inner.closed.load(AtomicOrdering::Acquire) {
            return Err(Error::io(
                "cachestat",
                Some(self.path().into()),
                Some(offset),
                libc::EBADF,
            ));
        }
        crate::driver::cachestat::cachestat(self.inner.inline.raw_fd(), offset, len)
            .map_err(|errno| Error::io("cachestat", Some(self.path().into()), Some(offset), errno))
    }

    /// For an O_DIRECT file, the alignment its reads and writes need (read once at open, see
    /// [`DirectIoAlign`]); `None` for a file opened without O_DIRECT.
    pub fn direct_io_align(&self) -> Option<DirectIoAlign> {
        self.inner.direct_align
    }
}

/// The alignment O_DIRECT reads and writes of a file need: from `statx(STATX_DIOALIGN)` (Linux
/// 6.1) where the kernel and filesystem report it, else the logical block size of the
/// filesystem's device (sysfs), else 4096.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DirectIoAlign {
    /// Buffers' addresses must be multiples of this (`stx_dio_mem_align`). The executor's pool
    /// buffers are page-aligned, which satisfies any value up to the page size.
    pub memory: u32,
    /// Offsets and lengths must be multiples of this (`stx_dio_offset_align`); requests that are
    /// not are refused before they are sent, with this value in the error.
    pub offset: u32,
}

impl DirectIoAlign {
    /// What the executor assumed before it asked the kernel, and the last fallback.
    const DEFAULT: DirectIoAlign = DirectIoAlign {
        memory: 4096,
        offset: 4096,
    };

    /// The alignment of the O_DIRECT descriptor `fd` (statx with `AT_STATX_DONT_SYNC`, which
    /// asks no remote server, and a sysfs read: neither waits for a device).
    pub(crate) fn of(fd: std::os::fd::RawFd) -> DirectIoAlign {
        // SAFETY: statx is plain data; zeroed is a valid value.
        let mut stx: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: statx writes only into `stx`, which outlives the call; the path is "".
        let r = unsafe {
            libc::statx(
                fd,
                c"".as_ptr(),
                libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC,
                libc::STATX_DIOALIGN,
                &mut stx,
            )
        };
        if r != 0 {
            return Self::DEFAULT;
        }
        let valid = |v: u32| v.is_power_of_two().then_some(v);
        if stx.stx_mask & libc::STATX_DIOALIGN != 0 {
            if let (Some(memory), Some(offset)) = (
                valid(stx.stx_dio_mem_align),
                valid(stx.stx_dio_offset_align),
            ) {
                return DirectIoAlign { memory, offset };
            }
        }
        // No answer (before 6.1, or a filesystem that does not say): the device's logical
        // block size, for both.
        let dev = format!("/sys/dev/block/{}:{}", stx.stx_dev_major, stx.stx_dev_minor);
        ["queue/logical_block_size", "../queue/logical_block_size"]
            .iter()
            .find_map(|f| {
                let text = std::fs::read_to_string(format!("{dev}/{f}")).ok()?;
                valid(text.trim().parse().ok()?)
            })
            .map_or(Self::DEFAULT, |b| DirectIoAlign {
                memory: b,
                offset: b,
            })
    }
}

/// A path as a C string, for an SQE or a system call; a NUL inside is an invalid argument.
pub(crate) fn c_path(op: &'static str, path: &Path) -> Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::invalid(op, format!("path {} contains a NUL byte", path.display())))
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
            .plan(Path::new("/tmp/a\0b"))
            .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        assert!(e.to_string().contains("NUL"), "{e}");
    }

    #[test]
    fn a_plan_carries_the_flags_mode_and_access() {
        let p = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .plan(Path::new("/tmp/x"))
            .unwrap();
        assert_eq!(p.path.as_bytes(), b"/tmp/x");
        assert_ne!(p.flags & libc::O_APPEND, 0);
        assert_ne!(p.flags & libc::O_CLOEXEC, 0);
        assert_eq!(p.mode, 0o600);
        assert!(p.file.writable && p.file.append && !p.file.readable);
        let p = OpenOptions::new().read(true).plan(Path::new("y")).unwrap();
        assert_eq!(p.mode, 0o644);
    }
}
