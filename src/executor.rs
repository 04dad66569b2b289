//! The executor: builds the shards, routes requests to them, merges their statistics, shuts down.

pub use crate::batch::Batch;
pub use crate::builder::{ExecutorBuilder, MAX_CHANNEL_CAPACITY};
use crate::completion::{pair, Completion};
pub use crate::deadlined::Deadlined;
use crate::error::panic_text;
use crate::error::{Error, Result};
use crate::fd_transit::{InTransit, PendingFds};
use crate::file::{File, FileFlags, OpenOptions};
use crate::router::{shard_for, FileKey};
use crate::routes::ExecShared;
use crate::session::{Session, DEFAULT_SESSION_CAPACITY};
use crate::shard::KillShard;
use crate::shard::{Message, Reply, ShardContext};
use crate::stats::{ExecutorStats, ShardStats};
use crate::validate::{self};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
/// A sharded io_uring executor: one pinned thread per shard, each with its own ring, registered
/// buffer pool and files. Share it between threads by reference or in an `Arc`.
///
/// ```
/// # fn main() -> ringshard::Result<()> {
/// use ringshard::{Executor, OpenOptions};
/// let exec = Executor::builder().shards(2).build()?;
/// let dir = tempfile::tempdir().unwrap();
/// let file = exec.open(dir.path().join("data"), OpenOptions::new().read(true).write(true).create(true)).wait()?;
/// exec.write(&file, 0, b"hello, shard".to_vec()).wait()?;
/// exec.fsync(&file).wait()?;
/// assert_eq!(exec.read(&file, 0, 5).wait()?, b"hello");
/// exec.close(&file).wait()?;
/// println!("{}", exec.stats());
/// exec.shutdown()?;
/// # Ok(()) }
/// ```
///
/// What blocks: [`open`](Self::open) (it waits for the open; use
/// [`open_async`](Self::open_async) in async code), [`adopt`](Self::adopt),
/// [`stats`](Self::stats) and [`shutdown`](Self::shutdown) (they have async forms), and the
/// `wait` methods of [`Completion`] and [`Session`]. Sending a request never blocks, and neither
/// does dropping the executor (it begins the shutdown and returns: see `Drop for Executor`).
#[derive(Debug)]
pub struct Executor {
    pub(crate) shared: Arc<ExecShared>,
    pub(crate) threads: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) started: Instant,
    pub(crate) shutdown_timeout: Duration,
}

impl Executor {
    /// A builder with the defaults.
    pub fn builder() -> ExecutorBuilder {
        ExecutorBuilder::default()
    }

    /// An executor with the defaults (one shard per CPU).
    pub fn new() -> Result<Self> {
        Self::builder().build()
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shared.shards.len()
    }

    /// The shard that owns the file at `path` (following symlinks), without opening it: the
    /// same routing [`open`](Self::open) uses. Fails if the file does not exist. Blocks on
    /// stat(2).
    pub fn shard_of_path(&self, path: impl AsRef<Path>) -> Result<usize> {
        use std::os::unix::fs::MetadataExt;
        let path = path.as_ref();
        let md = std::fs::metadata(path).map_err(|e| {
            Error::io(
                "stat",
                Some(path.to_path_buf()),
                None,
                e.raw_os_error().unwrap_or(libc::EIO),
            )
        })?;
        let key = FileKey {
            dev: md.dev(),
            ino: md.ino(),
        };
        Ok(shard_for(key, self.shared.shards.len()))
    }

    /// Descriptors in transit between callers and shards (opened and not yet installed, or
    /// dropped and not yet closed by their shard), the opens waiting for room, and the bound
    /// ([`ExecutorBuilder::max_pending_fds`]).
    pub fn pending_fds(&self) -> PendingFds {
        self.shared.fds.snapshot()
    }

    /// The CPU each shard is pinned to (`None` when pinning is off), by shard index.
    pub fn shard_cpus(&self) -> Vec<Option<usize>> {
        self.shared.shards.iter().map(|s| s.cpu).collect()
    }

    /// Opens `path`, blocking until the file is open: when it returns, the open (and any create
    /// or truncate) is done, and the completion finishes once the file is installed on its
    /// shard. The file's inode picks its shard: every path to the same file (symlinks, hard
    /// links) lands on the same shard, and so does every reopen.
    ///
    /// As this thread waits anyway, a hot open is done right here: `openat2` with
    /// `RESOLVE_CACHED`, which the kernel does only when the whole lookup is in its caches (never
    /// with `create`, `create_new` or `truncate`; a FUSE or network filesystem's own open call
    /// may still take long), when a place among the descriptors in transit is free now; then
    /// only the install goes to a shard. Anything else (a cold lookup, a create) goes through a
    /// shard's ring, as with [`open_async`](Self::open_async), and this waits for it.
    ///
    /// Blocks the calling thread until the open is done (on a slow or network filesystem that
    /// can be long), including the wait while
    /// [`max_pending_fds`](ExecutorBuilder::max_pending_fds) descriptors are in transit (a shard
    /// that falls behind on closes slows its openers down instead of letting descriptors pile
    /// up): in async code use [`open_async`](Self::open_async). On one of this executor's shard
    /// threads it does not block: it returns `open_async`'s completion (await it in a shard task;
    /// waiting on it there fails with [`Error::WouldDeadlock`]).
    pub fn open(&self, path: impl AsRef<Path>, options: &OpenOptions) -> Completion<File> {
        if crate::completion::current_shard().is_some_and(|(exec, _)| exec == self.shared.id) {
            return self.shared.open(path.as_ref(), options, None);
        }
        self.shared.open_blocking(path.as_ref(), options)
    }

    /// Sends a descriptor adopted on this thread to its shard.
    fn install_routed(
        &self,
        fd: OwnedFd,
        key: FileKey,
        flags: FileFlags,
        path: &Path,
        transit: InTransit,
    ) -> Completion<File> {
        // why: the completion names the shard the file goes to, so that waiting for it on that
        // shard's own thread fails with WouldDeadlock; named "no shard", it hung there forever.
        let shard = shard_for(key, self.shared.shards.len());
        let (c, done) = pair(self.shared.id, shard);
        self.shared
            .install(&self.shared, fd, key, flags, path, done, transit, true);
        c
    }

    /// Opens `path` without blocking: the completion finishes once the file is open and
    /// installed on its shard. Await it (or wait on it).
    ///
    /// The open runs on a shard's ring (IORING_OP_OPENAT; the shards take opens in turn), so
    /// opens run side by side: the kernel hands a lookup that must read the disk (or wait for a
    /// network or FUSE filesystem) to a worker, and other opens go on meanwhile. The shard then
    /// reads the file's identity (device and inode, without asking the filesystem) and hands the
    /// descriptor to the shard its inode picks. While
    /// [`max_pending_fds`](ExecutorBuilder::max_pending_fds) descriptors are in transit, the
    /// open waits in a queue, in order, and goes out when a shard has installed or closed one:
    /// nothing blocks, the completion just comes later. Dropping the completion before the
    /// open is sent (or issued) means it never runs; dropped later, the descriptor is closed.
    /// Once [`shutdown`](Self::shutdown) has begun, an open that has not reached the kernel
    /// fails with [`Error::Shutdown`] and creates or truncates nothing.
    pub fn open_async(&self, path: impl AsRef<Path>, options: &OpenOptions) -> Completion<File> {
        self.shared.open(path.as_ref(), options, None)
    }

    /// Opens `path` like [`open_async`](Self::open_async) (without blocking), but installs the
    /// file on shard `shard` instead of the shard its inode hashes to: for state placed by key
    /// (a per-shard log, a partition of an index) whose files must live on the shard that owns
    /// the key, so that its tasks do their I/O straight into their own ring.
    ///
    /// Per-file ordering (overlapping writes in order, reads near the end of the file ordered
    /// against writes above them, fsync after writes) and the size a shard knows a file to have
    /// are kept per shard: they hold among the handles on one shard. Opening an inode that is
    /// also open on another shard (through `open_on`, or `open` picking its shard by inode) is
    /// allowed, and then requests through handles on different shards are as independent as
    /// two processes' I/O on one file: order them yourself (await one before making the other).
    /// A shard index out of range fails with [`Error::InvalidArgument`].
    pub fn open_on(
        &self,
        shard: usize,
        path: impl AsRef<Path>,
        options: &OpenOptions,
    ) -> Completion<File> {
        self.shared.open(path.as_ref(), options, Some(shard))
    }

    /// Takes over an open descriptor: its shard is picked by its inode like [`open`](Self::open),
    /// its access mode, O_APPEND and O_DIRECT are read from the descriptor, and it is closed when
    /// the last handle drops. `path` names it in errors. Blocks for fcntl(2) and fstat(2), and
    /// first, like [`open`](Self::open), while
    /// [`max_pending_fds`](ExecutorBuilder::max_pending_fds) descriptors are in transit.
    pub fn adopt(&self, fd: OwnedFd, path: impl AsRef<Path>) -> Completion<File> {
        let path = path.as_ref();
        let transit = match self.shared.fd_place() {
            Ok(t) => t,
            Err(e) => return Completion::ready(Err(e)),
        };
        if self.shared.closed.load(Ordering::Acquire) {
            return Completion::ready(Err(Error::Shutdown));
        }
        match crate::file::describe_fd(&fd, path) {
            Ok((key, flags)) => self.install_routed(fd, key, flags, path, transit),
            Err(e) => Completion::ready(Err(e)),
        }
    }

    /// Reads up to `len` bytes at `offset`. Fewer come back only at end of file. Lengths up to
    /// [`max_request_size`](ExecutorBuilder::max_request_size) work: long reads are split, and
    /// memory grows only as data arrives. Data already in the page cache is read on this thread
    /// (see [`inline_reads`](ExecutorBuilder::inline_reads)): the completion is then ready when
    /// this returns.
    pub fn read(&self, file: &File, offset: u64, len: usize) -> Completion<Vec<u8>> {
        self.read_into(file, offset, len, Vec::new())
    }

    /// [`read`](Self::read) into `buf`, whose allocation is reused (its contents are replaced):
    /// a server that recycles its buffers spares an allocation per read.
    pub fn read_into(
        &self,
        file: &File,
        offset: u64,
        len: usize,
        buf: Vec<u8>,
    ) -> Completion<Vec<u8>> {
        self.with_deadline(None).read_into(file, offset, len, buf)
    }

    /// Writes all of `data` at `offset` (short writes are completed); returns the bytes written.
    pub fn write(&self, file: &File, offset: u64, data: impl Into<Vec<u8>>) -> Completion<usize> {
        self.with_deadline(None).write(file, offset, data)
    }

    /// [`read`](Self::read) with per-operation flags ([`RwFlags`](crate::RwFlags): `NOWAIT`,
    /// `HIPRI`, `DONTCACHE`), passed as the SQE's `rw_flags` on every data path. With `NOWAIT`, data not in
    /// the page cache fails the read with errno EAGAIN (never retried); a read that got part of
    /// its data before that returns the error too.
    pub fn read_with(
        &self,
        file: &File,
        offset: u64,
        len: usize,
        flags: crate::op::rw::RwFlags,
    ) -> Completion<Vec<u8>> {
        self.with_deadline(None).read_with(file, offset, len, flags)
    }

    /// [`write`](Self::write) with per-operation flags ([`RwFlags`](crate::RwFlags): `DSYNC`,
    /// `SYNC`, `NOWAIT`, `HIPRI`, `APPEND`, `DONTCACHE`): the SQE's `rw_flags`, or `pwritev2`'s flags on the
    /// inline path. With `NOWAIT`, a write that would block fails with errno EAGAIN (never
    /// retried).
    pub fn write_with(
        &self,
        file: &File,
        offset: u64,
        data: impl Into<Vec<u8>>,
        flags: crate::op::rw::RwFlags,
    ) -> Completion<usize> {
        self.with_deadline(None)
            .write_with(file, offset, data, flags)
    }

    /// fsync: completes after every earlier write to the file (through this executor) is durable.
    pub fn fsync(&self, file: &File) -> Completion<()> {
        self.with_deadline(None).fsync(file)
    }

    /// fdatasync: like [`fsync`](Self::fsync) without flushing metadata that reads do not need.
    pub fn fdatasync(&self, file: &File) -> Completion<()> {
        self.with_deadline(None).fdatasync(file)
    }

    /// fallocate(2) of `len` bytes at `offset` with `mode` ([`FallocateMode`](crate::FallocateMode):
    /// allocate, punch a hole, zero, collapse or insert a range), ordered against every
    /// operation on the file; reads sent after it see its effect. A mode the filesystem lacks
    /// fails with errno EOPNOTSUPP.
    pub fn fallocate(
        &self,
        file: &File,
        mode: crate::op::fallocate::FallocateMode,
        offset: u64,
        len: u64,
    ) -> Completion<()> {
        let op = validate::fallocate_op(mode, offset, len);
        self.shared.request(file, op, Reply::Unit, None)
    }

    /// Copies `len` bytes at `src_off` of `src` to `dst_off` of `dst` in the kernel
    /// (`copy_file_range(2)`: no data through user space; filesystems that can share extents,
    /// btrfs, xfs, NFS 4.2, may do so), and returns the bytes copied: fewer than `len` only
    /// where `src` ends. Both files are of this executor; they may be the same file (ranges
    /// must not overlap: EINVAL) or on different shards. `src` must be open for reading, `dst`
    /// for writing (not append).
    ///
    /// Order: the copy runs after every operation on `dst` and every write, set_len or
    /// fallocate of `src` sent before it, and reads of `dst` sent after it see it. Writes to
    /// `src` sent after it are not held back: they may land before or during the copy. It runs
    /// on `dst`'s shard thread (io_uring has no copy opcode), at most 1 MiB per system call, so
    /// a large copy holds that shard for one call at a time. Different filesystems: errno
    /// EXDEV.
    pub fn copy_file_range(
        &self,
        src: &File,
        src_off: u64,
        dst: &File,
        dst_off: u64,
        len: u64,
    ) -> Completion<u64> {
        use crate::op::copy_range::How;
        self.shared
            .copy_range(How::Copy, src, src_off, dst, dst_off, len, None)
    }

    /// Sends `len` bytes at `offset` of `file` to `dest`, a socket, pipe or FIFO (a
    /// `TcpStream`, `UnixStream`, ...), without passing them through user space: SPLICE
    /// (file -> pipe -> `dest`) in rounds of at most a pipe of the shard's pool (256 KiB).
    /// Sends of at most 64 KiB of a file without O_DIRECT are copied instead (READ into a
    /// buffer of the op, then WRITE, on the ring: at that size two SPLICEs, each handed to a
    /// kernel worker, cost more CPU than the copy; BENCHMARKS.md). Returns
    /// the bytes sent: `len`, or fewer where the file ends. `file` must be open for reading (an
    /// O_DIRECT file's offset and length aligned as for a read).
    ///
    /// `dest` is duplicated for the send (one descriptor, closed when it ends), so it may be
    /// closed or dropped meanwhile; it is not set non-blocking (a non-blocking one is waited for with a poll when full). Order: like a read of the
    /// range, after earlier writes to it. A peer that stops reading leaves the send waiting
    /// (nothing blocks a shard thread): cancel it, drop it or give it a deadline
    /// ([`timeout`](Self::timeout)); what was sent before is not taken back. A peer that went
    /// away: [`Error::PathPair`] with EPIPE or ECONNRESET (SIGPIPE is not
    /// raised in Rust programs, which ignore it; a program that does not should too). On the
    /// threads backend the same rounds run as splice(2) (and pread/write) on the shard's
    /// workers. Forced to the blocking path
    /// ([`force_blocking`](crate::ExecutorBuilder::force_blocking)), its rounds run on the shard
    /// thread without waiting for the destination: one without room fails it with EAGAIN.
    pub fn send_file(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        dest: impl std::os::fd::AsFd,
    ) -> Completion<u64> {
        self.with_deadline(None).send_file(file, offset, len, dest)
    }

    /// Receives up to `len` bytes from `src` (a stream socket, pipe or FIFO) into `file` at
    /// `offset` without passing them through user space: SPLICE rounds through a pipe of the
    /// file's shard (the socket's pages go to the pipe by reference; the one copy is into the
    /// page cache, where `recv` and `write` copy twice). The count comes back: fewer than `len`
    /// only where the source ended its stream (the peer closed, or shut down its side).
    ///
    /// `file` must be open for writing, without O_APPEND or O_DIRECT
    /// ([`InvalidArgument`](Error::InvalidArgument) says so). `src` is duplicated for the receive
    /// (one descriptor, closed when it ends), so it may be closed meanwhile; a non-blocking one
    /// is waited for with a poll when it has nothing to read. Order: like a write of the range.
    /// A peer that sends nothing leaves the receive waiting (nothing blocks a shard thread):
    /// cancel it, drop it or give it a deadline ([`timeout`](Self::timeout)); that error then
    /// says how many bytes reached the file before ([`Error::written`]), and those are exactly
    /// the bytes taken from `src` (bytes received are written before the receive stops): the
    /// next read of `src` gets the byte after them. After any other error (the file's, such
    /// as ENOSPC, or the peer's reset) bytes received but not yet written are lost with the
    /// connection's position in its stream: treat the connection as unusable then. On the threads backend the same rounds run as
    /// splice(2) on the shard's workers. Forced to the blocking path
    /// ([`force_blocking`](crate::ExecutorBuilder::force_blocking)), a source with nothing to
    /// read yet fails it with EAGAIN.
    pub fn recv_file(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        src: impl std::os::fd::AsFd,
    ) -> Completion<u64> {
        self.with_deadline(None).recv_file(file, offset, len, src)
    }

    /// Shares the extents of `len` bytes at `src_off` of `src` with `dst_off` of `dst`
    /// (`FICLONERANGE`, a reflink: no data is copied, and later writes to either file
    /// unshare what they touch), with the order of [`copy_file_range`](Self::copy_file_range);
    /// returns `len`. All or nothing. Needs a filesystem with reflink (btrfs, xfs formatted with
    /// reflink, bcachefs): elsewhere (ext4, tmpfs) errno EOPNOTSUPP, between filesystems EXDEV;
    /// offsets and `len` must be multiples of the filesystem's block size (else EINVAL), except a
    /// `len` that reaches the end of `src`.
    pub fn clone_range(
        &self,
        src: &File,
        src_off: u64,
        dst: &File,
        dst_off: u64,
        len: u64,
    ) -> Completion<u64> {
        use crate::op::copy_range::How;
        self.shared
            .copy_range(How::Clone, src, src_off, dst, dst_off, len, None)
    }

    /// The file's size, after every earlier operation on it.
    pub fn size(&self, file: &File) -> Completion<u64> {
        self.with_deadline(None).size(file)
    }

    /// Opens the directory at `path` read-only (O_RDONLY | O_DIRECTORY): a handle to
    /// [`fsync`](Self::fsync) after creating, renaming or unlinking entries in it, or to get its
    /// [`metadata`](Self::metadata). Reads and writes on it fail with
    /// [`Error::BadHandle`]. Blocks like [`open`](Self::open).
    pub fn open_dir(&self, path: impl AsRef<Path>) -> Completion<File> {
        self.open(path, OpenOptions::new().read(true).directory(true))
    }

    /// The file's metadata (`statx` on its descriptor), after every earlier operation on it.
    pub fn metadata(&self, file: &File) -> Completion<crate::op::statx::Metadata> {
        self.with_deadline(None).metadata(file)
    }

    /// The metadata of the file at `path` (`statx`, following a final symlink). Routed and
    /// ordered like the other path operations (see [`unlink`](Self::unlink)).
    pub fn stat(&self, path: impl AsRef<Path>) -> Completion<crate::op::statx::Metadata> {
        self.with_deadline(None).stat(path)
    }

    /// [`stat`](Self::stat) without following a final symlink (so
    /// [`Metadata::is_symlink`](crate::Metadata::is_symlink) can be true).
    pub fn symlink_metadata(
        &self,
        path: impl AsRef<Path>,
    ) -> Completion<crate::op::statx::Metadata> {
        self.with_deadline(None).stat_with(path.as_ref(), true)
    }

    /// Sets the file's length (`ftruncate`: IORING_OP_FTRUNCATE where the kernel has it, Linux
    /// 6.9, else the system call on the shard thread). Ordered against every operation on the
    /// file; reads sent after it see the new end of file. Needs write access.
    pub fn set_len(&self, file: &File, len: u64) -> Completion<()> {
        self.with_deadline(None).set_len(file, len)
    }

    /// `sync_file_range(2)` of `len` bytes at `offset` (0: to the end of the file) with `flags`
    /// ([`SyncRangeFlags`](crate::SyncRangeFlags)), after every earlier write to the file. Not a durability
    /// guarantee (no metadata, no disk cache flush): see the man page.
    pub fn sync_file_range(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        flags: crate::op::sync_range::SyncRangeFlags,
    ) -> Completion<()> {
        self.with_deadline(None)
            .sync_file_range(file, offset, len, flags)
    }

    /// `posix_fadvise(2)` of `len` bytes at `offset` (0: to the end of the file; at most
    /// 4 GiB - 1) with `advice` (IORING_OP_FADVISE; the system call on the threads backend),
    /// after every earlier write to the file: [`Advice::DontNeed`](crate::Advice::DontNeed)
    /// drops the clean cached pages of the range, [`Advice::WillNeed`](crate::Advice::WillNeed)
    /// starts reading it in. Advice only: the kernel may ignore it (as tmpfs does for
    /// `DontNeed`). Same as [`File::fadvise`].
    pub fn fadvise(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        advice: crate::op::fadvise::Advice,
    ) -> Completion<()> {
        self.with_deadline(None).fadvise(file, offset, len, advice)
    }

    /// Reads into buffers of `lens` bytes at `offset` with one `readv` (at most
    /// [`MAX_IOVECS`](crate::MAX_IOVECS) buffers, and
    /// [`max_request_size`](ExecutorBuilder::max_request_size) bytes in all). A short read is
    /// continued; at end of file the vectors come back truncated there (later ones empty). Not
    /// for O_DIRECT files.
    pub fn read_vectored(
        &self,
        file: &File,
        offset: u64,
        lens: &[usize],
    ) -> Completion<Vec<Vec<u8>>> {
        self.with_deadline(None).read_vectored(file, offset, lens)
    }

    /// Writes `bufs` one after another at `offset` with `writev` (same bounds as
    /// [`read_vectored`](Self::read_vectored)); short writes are continued. Returns the bytes
    /// written.
    pub fn write_vectored(
        &self,
        file: &File,
        offset: u64,
        bufs: Vec<Vec<u8>>,
    ) -> Completion<usize> {
        self.with_deadline(None).write_vectored(file, offset, bufs)
    }

    /// Appends `data` at the end of a file opened with [`append(true)`](OpenOptions::append) and
    /// says where it landed. Appends to one file run one at a time, in the order sent; the
    /// offset is exact even when other processes append to the file too (the shard reads its
    /// descriptor's position after the write). If a short write had to be continued after
    /// another process appended, the data is not contiguous and the call fails with EIO.
    pub fn append(
        &self,
        file: &File,
        data: impl Into<Vec<u8>>,
    ) -> Completion<crate::op::append::Appended> {
        self.with_deadline(None).append(file, data)
    }

    /// Removes the file at `path` (`unlinkat`).
    ///
    /// Path operations (`unlink`, `remove_dir`, `mkdir`, `rename`, `stat`) go through the ring
    /// (UNLINKAT, MKDIRAT, RENAMEAT, STATX) of the shard that owns the path's **parent
    /// directory** (its inode, hashed as files are: the shard an [`open_dir`](Self::open_dir) of
    /// that directory gets). There they are barriers in the directory's order list: path
    /// operations in one directory run one at a time, in the order they were sent, and an
    /// `fsync` of the directory's handle runs after those sent before it (a `stat` orders like a
    /// read: side by side with other stats). Finding the parent's identity blocks the caller on
    /// one stat(2) the first time a directory is seen; it is remembered by path after that.
    /// Relative paths are resolved against the process's working directory.
    pub fn unlink(&self, path: impl AsRef<Path>) -> Completion<()> {
        self.with_deadline(None).unlink(path)
    }

    /// Removes the empty directory at `path` (`unlinkat(AT_REMOVEDIR)`). See
    /// [`unlink`](Self::unlink) for routing and order.
    pub fn remove_dir(&self, path: impl AsRef<Path>) -> Completion<()> {
        self.with_deadline(None).remove_dir(path)
    }

    /// Creates the directory `path` with permission bits `mode` (less the umask). See
    /// [`unlink`](Self::unlink) for routing and order.
    pub fn mkdir(&self, path: impl AsRef<Path>, mode: u32) -> Completion<()> {
        self.with_deadline(None).mkdir(path, mode)
    }

    /// Renames `from` to `to` (`renameat2` with `flags`). Routed and ordered by the
    /// **destination's** parent directory: that is the directory whose contents the caller
    /// then usually makes durable (`fsync` of its handle, ordered after the rename on the
    /// same shard), and the name that appears is the one later operations look up. Operations
    /// in the source's directory on another shard are not ordered against it. Errors name both
    /// paths ([`Error::PathPair`]).
    pub fn rename(
        &self,
        from: impl AsRef<Path>,
        to: impl AsRef<Path>,
        flags: crate::op::path::RenameFlags,
    ) -> Completion<()> {
        self.with_deadline(None).rename(from, to, flags)
    }

    /// Makes `new` a hard link to the file at `original` (`linkat`, IORING_OP_LINKAT; a final
    /// symlink at `original` is linked itself, not followed). Routed and ordered like
    /// [`rename`](Self::rename), by the **new** name's parent directory. Fails with EEXIST if
    /// `new` exists, EXDEV across filesystems, EPERM for a directory. Errors name both paths
    /// ([`Error::PathPair`], op `"hard_link"`).
    pub fn hard_link(&self, original: impl AsRef<Path>, new: impl AsRef<Path>) -> Completion<()> {
        self.with_deadline(None).hard_link(original, new)
    }

    /// Creates a symbolic link at `link` whose contents are `target` (`symlinkat`,
    /// IORING_OP_SYMLINKAT). `target` is stored as given, not looked up: it may be relative (to
    /// the link's directory) or name nothing yet. Routed and ordered by `link`'s parent
    /// directory (see [`unlink`](Self::unlink)). Fails with EEXIST if `link` exists. Errors name
    /// both ([`Error::PathPair`], op `"symlink"`, `from` the target, `to` the link).
    pub fn symlink(&self, target: impl AsRef<Path>, link: impl AsRef<Path>) -> Completion<()> {
        self.with_deadline(None).symlink(target, link)
    }

    /// The entries of the directory at `path` (`getdents64`), but `.` and `..`, in the order the
    /// directory gives them: each [`DirEntry`](crate::DirEntry) has the name (any bytes), the
    /// inode number and the [`EntryType`](crate::EntryType) the directory records.
    ///
    /// Runs on the shard of the directory itself (the one an [`open_dir`](Self::open_dir) of
    /// it gets), never on the caller's thread: the directory is opened in the ring (OPENAT),
    /// then read with one `getdents64` of 32 KiB per round on the shard thread (io_uring has no
    /// opcode for it; a directory block not cached is read from the device within that call).
    /// Ordered after the path operations in that directory sent before it (`unlink`, `mkdir`,
    /// `rename`, `hard_link`, `symlink`: see [`unlink`](Self::unlink)), so it sees them.
    /// Memory grows with the entries as they arrive (a list of a million entries is tens of
    /// MB). Routing it blocks the caller on one stat(2) of the directory the first time it is
    /// seen. Errors (ENOENT, ENOTDIR, EACCES) name `read_dir` and the path. On an open
    /// directory handle: [`File::read_dir`].
    pub fn read_dir(
        &self,
        path: impl AsRef<Path>,
    ) -> Completion<Vec<crate::op::read_dir::DirEntry>> {
        self.with_deadline(None).read_dir(path)
    }

    /// Opens an unnamed temporary file in directory `dir` for reading and writing, with
    /// permission bits `mode` (O_TMPFILE: see [`OpenOptions::tmpfile`]); give it a name with
    /// [`link_file`](Self::link_file) once it is written. Blocks like [`open`](Self::open).
    pub fn open_tmpfile(&self, dir: impl AsRef<Path>, mode: u32) -> Completion<File> {
        self.open(
            dir,
            OpenOptions::new()
                .read(true)
                .write(true)
                .tmpfile(true)
                .mode(mode),
        )
    }

    /// Gives `file` the name `path` (`linkat` of its descriptor on the file's shard), after
    /// every earlier operation on it: an [`open_tmpfile`](Self::open_tmpfile) file, written in
    /// full, appears at `path` at once. Same as [`File::link_into`], which says more.
    pub fn link_file(&self, file: &File, path: impl AsRef<Path>) -> Completion<()> {
        self.with_deadline(None).link_file(file, path)
    }

    /// Closes the file after every earlier operation on it and reports errors; later operations
    /// on any clone of the handle fail with [`Error::BadHandle`]. (Dropping the last
    /// clone closes it too, without a report.) A read of the file that another clone is doing
    /// on its own thread at that moment (an inline read, see
    /// [`inline_reads`](ExecutorBuilder::inline_reads)) finishes first: the descriptor is never
    /// closed under it.
    pub fn close(&self, file: &File) -> Completion<()> {
        if let Err(e) = self.shared.check_owner(file) {
            return Completion::ready(Err(e));
        }
        crate::routes::close(file)
    }

    /// Requests with a deadline `timeout` from now: one not done by then is cancelled (not
    /// issued; or, for reads, cancelled in the kernel) and fails with
    /// [`Error::DeadlineExceeded`]. Writes already issued are not torn: they finish.
    /// A timeout too large to be a point in time means no deadline.
    ///
    /// ```
    /// # fn main() -> ringshard::Result<()> {
    /// # let exec = ringshard::Executor::builder().shards(1).build()?;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let file = exec.open(dir.path().join("f"), ringshard::OpenOptions::new().read(true).write(true).create(true)).wait()?;
    /// let data = exec.timeout(std::time::Duration::from_secs(2)).read(&file, 0, 4096).wait()?;
    /// # assert!(data.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn timeout(&self, timeout: Duration) -> Deadlined<'_> {
        self.with_deadline(Instant::now().checked_add(timeout))
    }

    fn with_deadline(&self, deadline: Option<Instant>) -> Deadlined<'_> {
        Deadlined::new(&self.shared, deadline)
    }

    /// Starts a batch: requests added to it go out with one message (and at most one wake-up) per
    /// shard when [`Batch::submit`] is called.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            exec: self,
            created: Instant::now(),
            per_shard: (0..self.shared.shards.len()).map(|_| Vec::new()).collect(),
            held: Vec::new(),
        }
    }

    /// A [`Session`] with the default capacity (256 requests in flight).
    pub fn session(&self) -> Session {
        Session::new(Arc::clone(&self.shared), DEFAULT_SESSION_CAPACITY)
    }

    /// A [`Session`] that may have up to `capacity` requests in flight (1 to 65,536).
    pub fn session_with_capacity(&self, capacity: usize) -> Result<Session> {
        Session::with_capacity(Arc::clone(&self.shared), capacity)
    }

    /// Runs `f` on shard `shard`'s thread with direct access to its ring and pool (see
    /// [`ShardContext`]), after the shard's own in-flight operations have completed (operations
    /// queued but not yet issued may run after it). A panic in `f` fails this call with
    /// [`Error::ShardFailed`] (naming the panic); the shard goes on.
    pub fn submit_to<R, F>(&self, shard: usize, f: F) -> Completion<R>
    where
        F: FnOnce(&mut ShardContext<'_>) -> R + Send + 'static,
        R: Send + 'static,
    {
        if self.shared.closed.load(Ordering::Acquire) {
            return Completion::ready(Err(Error::Shutdown));
        }
        // why: `send` cannot fail a task's completer with its error (the completer is inside the
        // closure), so an unknown shard would surface as "ShardFailed { shard }" for a shard that
        // does not exist.
        if shard >= self.shared.shards.len() {
            return Completion::ready(Err(Error::invalid(
                "submit_to",
                format!(
                    "no shard {shard}: this executor has {} shards (0..{})",
                    self.shared.shards.len(),
                    self.shared.shards.len()
                ),
            )));
        }
        let (c, done) = pair(self.shared.id, shard);
        let task = Box::new(move |ctx: &mut ShardContext<'_>| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(ctx)));
            done.complete(r.map_err(|p| Error::ShardFailed {
                shard,
                reason: format!(
                    "the task panicked ({}); the shard goes on",
                    panic_text(p.as_ref())
                ),
            }));
        });
        self.shared.send_or_fail(shard, Message::Task(task));
        c
    }

    /// Spawns `fut` as an async task on shard `shard`. It runs on that shard's thread,
    /// interleaved with the shard's I/O; inside it, [`crate::local()`] gives the shard's
    /// [`LocalShard`](crate::LocalShard) (I/O on the shard's own files without the channel,
    /// timers on its ring, `!Send` tasks).
    ///
    /// The [`JoinHandle`](crate::JoinHandle) can be awaited anywhere or waited on; dropping it
    /// cancels the task ([`detach`](crate::JoinHandle::detach) to let it run). A panic in the task
    /// comes back as [`Error::TaskPanicked`]; the shard goes on. A task must not block its
    /// thread (no blocking waits, no long computations without [`crate::yield_now`]): the shard's
    /// I/O and its other tasks stop meanwhile (polls over
    /// [`SLOW_POLL`](crate::SLOW_POLL) are counted in `ShardStats::slow_task_polls`).
    ///
    /// ```
    /// # fn main() -> ringshard::Result<()> {
    /// # let exec = ringshard::Executor::builder().shards(2).build()?;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let file = exec.open(dir.path().join("t"), ringshard::OpenOptions::new().read(true).write(true).create(true)).wait()?;
    /// let f = file.clone();
    /// let n = exec
    ///     .spawn_on_owner(&file, async move {
    ///         let local = ringshard::local().expect("on a shard");
    ///         local.write(&f, 0, b"hello".to_vec()).await?;
    ///         Ok::<_, ringshard::Error>(local.read(&f, 0, 5).await?.len())
    ///     })
    ///     .wait()??; // or `.await` from any runtime, or from another shard's task
    /// assert_eq!(n, 5);
    /// # exec.shutdown() }
    /// ```
    ///
    /// Use `spawn_on` for application code that lives on a shard (it interleaves with the
    /// shard's work and awaits I/O); use [`submit_to`](Self::submit_to) for a synchronous closure
    /// that needs the raw ring and pool ([`ShardContext`]), which runs only once the shard has
    /// no I/O in flight (task sleeps are taken out of the ring for it and put back after).
    pub fn spawn_on<F>(&self, shard: usize, fut: F) -> crate::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        crate::task::spawn(&self.shared, shard, fut)
    }

    /// [`spawn_on`](Self::spawn_on) the shard that owns `file`.
    pub fn spawn_on_owner<F>(&self, file: &File, fut: F) -> crate::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn_on(file.shard(), fut)
    }

    /// Runs a future that need not be `Send` on shard `shard`: `f` (which is `Send`) builds it on
    /// the shard's thread, from the shard's [`LocalShard`](crate::LocalShard). The output must be
    /// `Send`, as it travels back to the handle.
    pub fn spawn_on_with<F, Fut>(&self, shard: usize, f: F) -> crate::task::JoinHandle<Fut::Output>
    where
        F: FnOnce(crate::task::LocalShard) -> Fut + Send + 'static,
        Fut: std::future::Future + 'static,
        Fut::Output: Send + 'static,
    {
        crate::task::spawn_with(&self.shared, shard, f)
    }

    /// Builds one `T` per shard, each by `make` on its own shard's thread (so its memory is
    /// allocated on the shard's NUMA node), like Seastar's `sharded<T>`: see
    /// [`Sharded`](crate::Sharded) for running code on each and `map_reduce`. Each `T` stays on
    /// its shard's thread (it need not be `Send` or `Sync`) and is dropped there.
    ///
    /// Blocks until every shard has built its `T` (a [`WouldDeadlock`](Error::WouldDeadlock)
    /// on a shard's own thread); [`sharded_async`](Self::sharded_async) awaits instead. A panic
    /// in `make` fails the call with [`Error::TaskPanicked`].
    pub fn sharded<T, F>(&self, make: F) -> Result<crate::sharded::Sharded<T>>
    where
        T: 'static,
        F: Fn(&crate::task::LocalShard) -> T + Send + Sync + 'static,
    {
        if let Some((id, shard)) = crate::completion::current_shard() {
            if id == self.shared.id {
                return Err(Error::WouldDeadlock {
                    op: "sharded",
                    shard,
                });
            }
        }
        crate::task::block_on(self.sharded_async(make))
    }

    /// [`sharded`](Self::sharded) without blocking.
    pub async fn sharded_async<T, F>(&self, make: F) -> Result<crate::sharded::Sharded<T>>
    where
        T: 'static,
        F: Fn(&crate::task::LocalShard) -> T + Send + Sync + 'static,
    {
        crate::sharded::build(&self.shared, make).await
    }

    /// Fault injection for tests: shard `shard`'s thread panics after sleeping `after`, as if
    /// the shard itself had a bug (a task's own panic does not kill a shard). Its pending work
    /// fails with [`Error::ShardFailed`]; other shards go on. Not for production use.
    #[doc(hidden)]
    pub fn kill_shard_for_tests(&self, shard: usize, after: Duration) -> Completion<()> {
        let (c, done) = pair(self.shared.id, shard);
        let task = Box::new(move |_: &mut ShardContext<'_>| {
            std::thread::sleep(after);
            // Failed with ShardFailed once the shard is marked dead (not while unwinding, when
            // its files could still be read inline).
            crate::shard::notify_death(done);
            std::panic::panic_any(KillShard);
        });
        self.shared.send_or_fail(shard, Message::Task(task));
        c
    }

    /// Sends a stats request to every shard.
    fn request_stats(&self) -> Vec<(usize, Option<Completion<ShardStats>>)> {
        self.shared
            .shards
            .iter()
            .map(|link| {
                let (c, done) = pair(self.shared.id, link.index);
                let sent = link.send(Message::Stats(done)).is_ok();
                (link.index, sent.then_some(c))
            })
            .collect()
    }

    /// Fills in a shard's stats from its reply, its last snapshot, or as failed; adds the
    /// caller-side cancellations.
    fn shard_stats(&self, index: usize, got: Option<ShardStats>) -> ShardStats {
        let link = &self.shared.shards[index];
        let last = || link.shared.final_stats.lock().ok().and_then(|s| s.clone());
        let mut s = got.or_else(last).unwrap_or_else(|| {
            let mut s = ShardStats::new(link.index, link.cpu, link.node);
            s.failed = true;
            s
        });
        s.cancelled = s
            .cancelled
            .saturating_add(link.shared.cancelled_unsent.load(Ordering::Relaxed));
        // Reads done on callers' threads for this shard's files.
        s.add_inline(&self.shared.inline.snapshot(index));
        s
    }

    /// Per-shard and merged statistics. After shutdown, the counts as the shards stopped; a shard
    /// that died shows as failed with no counts.
    ///
    /// Blocks until every shard has answered (each answers between two turns of its loop). On a
    /// shard thread of this executor it waits for no shard (a shard thread never blocks on
    /// shards): use [`try_stats`](Self::try_stats) or [`stats_async`](Self::stats_async) there;
    /// this shows the shards it could not wait for as failed.
    pub fn stats(&self) -> ExecutorStats {
        let shards = self
            .request_stats()
            .into_iter()
            .map(|(i, c)| {
                let got = c.and_then(|c| c.wait().ok());
                self.shard_stats(i, got)
            })
            .collect();
        ExecutorStats::from_shards(shards, self.started.elapsed())
    }

    /// [`stats`](Self::stats), failing with [`Error::WouldDeadlock`] on a shard thread of
    /// this executor instead of showing shards as failed.
    pub fn try_stats(&self) -> Result<ExecutorStats> {
        if let Some((exec, shard)) = crate::completion::current_shard() {
            if exec == self.shared.id {
                return Err(Error::WouldDeadlock {
                    op: "Executor::stats",
                    shard,
                });
            }
        }
        Ok(self.stats())
    }

    /// [`stats`](Self::stats) without blocking: awaits each shard's answer.
    pub async fn stats_async(&self) -> ExecutorStats {
        let mut shards = Vec::with_capacity(self.shared.shards.len());
        for (i, c) in self.request_stats() {
            let got = match c {
                Some(c) => c.await.ok(),
                None => None,
            };
            shards.push(self.shard_stats(i, got));
        }
        ExecutorStats::from_shards(shards, self.started.elapsed())
    }

    /// Tells every shard to stop; the completions finish when each has stopped.
    fn begin_shutdown(&self) -> Vec<Completion<()>> {
        self.shared.closed.store(true, Ordering::Release);
        // Opens still waiting for room among the descriptors in transit never go out.
        self.shared.fds.fail_queued();
        self.shared
            .shards
            .iter()
            .map(|link| {
                let (c, done) = pair(self.shared.id, link.index);
                let msg = Message::Shutdown {
                    grace: self.shutdown_timeout,
                    done: Some(done),
                };
                match link.send(msg) {
                    Ok(()) => c,
                    // Already stopped (or stopping past its last drain): nothing to wait for.
                    Err(_) => Completion::ready(Ok(())),
                }
            })
            .collect()
    }

    /// Joins the stopped shard threads (never the calling thread itself) and reports a dead shard.
    fn finish_shutdown(&self) -> Result<()> {
        // why: the lock is held while joining, so a concurrent shutdown() waits here for the
        // shards to stop instead of finding the list empty and returning while work is pending.
        // why: on one of this executor's shard threads, joining is left to a caller elsewhere
        // (or to nobody: a dropped executor's threads end by themselves). Joining itself would
        // never end, and two shards shutting down at once would each wait to join the other.
        let on_a_shard =
            crate::completion::current_shard().is_some_and(|(exec, _)| exec == self.shared.id);
        if !on_a_shard {
            let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
            for t in threads.drain(..) {
                let _ = t.join();
            }
        }
        match self
            .shared
            .shards
            .iter()
            .find(|l| l.shared.dead.load(Ordering::Acquire))
        {
            Some(l) => Err(Error::ShardFailed {
                shard: l.index,
                reason: "the shard thread panicked".into(),
            }),
            None => Ok(()),
        }
    }

    /// Stops accepting work (new calls fail with [`Error::Shutdown`]), lets every queued and
    /// in-flight operation finish and complete its handle, cancels what is still in flight after
    /// [`shutdown_timeout`](ExecutorBuilder::shutdown_timeout) (and abandons, a second later,
    /// what the kernel did not end when cancelled: see there), closes files, unregisters and
    /// unmaps, and joins the shard threads. Returns an error if a shard had died. Idempotent.
    ///
    /// Blocks until the shards have stopped: in async code use
    /// [`shutdown_async`](Self::shutdown_async). Called on one of this executor's shard threads,
    /// it tells every shard to stop but waits for none (each stops by itself; that one once the
    /// call returns to it): a shard thread never blocks on shards.
    pub fn shutdown(&self) -> Result<()> {
        for c in self.begin_shutdown() {
            // WouldDeadlock on a shard thread: the shards stop by themselves.
            let _ = c.wait();
        }
        self.finish_shutdown()
    }

    /// [`shutdown`](Self::shutdown) without blocking: awaits the shards' stop, then joins their
    /// threads, which have exited by then.
    pub async fn shutdown_async(&self) -> Result<()> {
        for c in self.begin_shutdown() {
            let _ = c.await;
        }
        self.finish_shutdown()
    }
}

/// Dropping the executor begins its shutdown, as [`Executor::shutdown`] does (new work is
/// refused; queued and in-flight operations finish and complete their handles, what is still in
/// flight after `shutdown_timeout` is cancelled, files are closed), and returns at once: it never
/// blocks the thread that drops it (an async runtime's worker, a shard's own thread, any other).
/// The shard threads finish the shutdown by themselves and exit, and the process waits for them
/// when it exits (`main` returning, or `std::process::exit`; for at most `shutdown_timeout` and
/// a second), so that writes queued and never waited for are done before it ends. To wait for
/// them yourself (to have the files closed and the pinned memory released before building
/// another executor, say), call [`shutdown`](Executor::shutdown) or `shutdown_async().await`
/// before the drop.
impl Drop for Executor {
    fn drop(&mut self) {
        drop(self.begin_shutdown());
        // why: joining here would block the dropping thread until every shard has drained, up to
        // `shutdown_timeout` with a stalled operation: an async runtime's worker (the last
        // `Arc<Executor>` dropped in a task) or a shard thread (which can never join itself). The
        // handles are dropped, which detaches the threads; an explicit `shutdown` joined them
        // already.
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        crate::stop_at_exit::adopt(threads, self.shutdown_timeout);
    }
}
