//! One error type for the whole crate.
//!
//! Every variant carries what a caller needs to act on it: the operation, the errno where the kernel
//! gave one, the file where there is one, and (in `Display`) how to fix what a user can fix.

use std::fmt;
use std::path::PathBuf;

/// Result alias used throughout ringshard.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error's name before 0.2 (when every error came from io_uring); it is [`Error`].
#[deprecated(note = "renamed to `ringshard::Error`")]
pub type IoUringError = Error;

/// Everything that can go wrong in ringshard.
///
/// Match on the variant to react; use [`is_transient`](Self::is_transient) to decide whether a
/// retry can succeed and [`is_fatal`](Self::is_fatal) to decide whether the ring, pool or executor
/// that returned it is still usable.
///
/// `Debug` shows the variant and its fields followed by the `Display` text, so a `main` that
/// returns [`Result`] prints the diagnosis and its fix, not only the fields:
/// `Error: RingSetup { entries: 256, flags: "...", errno: 1 }: io_uring_setup(...) failed: ...`.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Creating an io_uring instance failed (`io_uring_setup`).
    RingSetup {
        /// Ring entries asked for.
        entries: u32,
        /// Setup flags asked for, as text (e.g. `"SINGLE_ISSUER|DEFER_TASKRUN"`).
        flags: String,
        /// The errno from the kernel.
        errno: i32,
    },
    /// Registering buffers or files with a ring failed (`io_uring_register`).
    Registration {
        /// What was being registered (`"buffers"`, `"files"`, ...).
        what: &'static str,
        /// Bytes the registration would pin (0 where not applicable).
        bytes: usize,
        /// The errno from the kernel.
        errno: i32,
        /// RLIMIT_MEMLOCK soft limit at the time, in bytes (`None` = unlimited or unknown).
        memlock_limit: Option<u64>,
    },
    /// Allocating or placing memory failed (`mmap`, `mbind`).
    Memory {
        /// The call that failed.
        op: &'static str,
        /// Bytes asked for.
        bytes: usize,
        /// The errno.
        errno: i32,
    },
    /// The submission queue had no free entry. Submit what is queued, reap completions, retry.
    SubmissionQueueFull,
    /// Every buffer of the pool is acquired or in flight. Release one, or make the pool larger.
    PoolExhausted {
        /// Buffers in the pool.
        total: usize,
    },
    /// A buffer index outside the pool.
    InvalidIndex {
        /// The index given.
        index: u16,
        /// Buffers in the pool.
        total: usize,
    },
    /// A buffer index that is in the wrong state for the call (e.g. releasing a buffer the kernel is
    /// still using, or submitting one that was never acquired).
    BufferState {
        /// The index given.
        index: u16,
        /// What was attempted.
        op: &'static str,
        /// The state the buffer is in (`"free"`, `"in flight"`, ...).
        state: &'static str,
    },
    /// A request larger than one buffer.
    BufferTooSmall {
        /// Bytes asked for.
        requested: usize,
        /// Bytes a buffer holds.
        buffer_size: usize,
    },
    /// A configuration value out of range; the text says which and what is allowed.
    InvalidConfig(String),
    /// An argument out of range or malformed for an operation (offset overflow, NUL in a path, ...).
    InvalidArgument {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// An I/O operation completed with an error.
    Io {
        /// The operation (`"read"`, `"write"`, `"open"`, `"fsync"`, ...).
        op: &'static str,
        /// The file, where known.
        path: Option<PathBuf>,
        /// The file offset, where the operation has one.
        offset: Option<u64>,
        /// The errno.
        errno: i32,
        /// For a write that failed: how many bytes from `offset` on are known to be written
        /// (a prefix; an O_DIRECT write's chunks run in parallel, and bytes past the first chunk
        /// that stopped short may be written too, uncounted). `None` for other operations.
        written: Option<u64>,
    },
    /// An operation on two paths (rename) completed with an error.
    PathPair {
        /// The operation (`"rename"`).
        op: &'static str,
        /// The source path.
        from: PathBuf,
        /// The destination path.
        to: PathBuf,
        /// The errno.
        errno: i32,
    },
    /// A pool was used with a ring other than the one its buffers are registered with.
    WrongRing,
    /// The file handle is closed, or belongs to another executor.
    BadHandle(String),
    /// The executor is shutting down or has shut down; no new work is accepted.
    Shutdown,
    /// A shard thread died (panicked); its pending operations fail with this error.
    ShardFailed {
        /// The shard's index.
        shard: usize,
        /// What is known of the failure.
        reason: String,
    },
    /// Waiting for a completion timed out; the operation itself is still running.
    Timeout,
    /// Reading the machine's topology failed.
    Topology(String),
    /// The operation was cancelled before it completed: its handle was dropped or cancelled, or
    /// the executor shut down while it could not finish (a read that waits forever).
    Cancelled {
        /// The operation.
        op: &'static str,
        /// The file, where known.
        path: Option<PathBuf>,
        /// For a send (or write) cut short: the bytes known to have gone out before it was
        /// stopped ([`Error::written`]); `None` otherwise.
        written: Option<u64>,
    },
    /// The operation's deadline passed before it completed; it was cancelled.
    DeadlineExceeded {
        /// The operation.
        op: &'static str,
        /// The file, where known.
        path: Option<PathBuf>,
        /// For a send (or write) cut short: the bytes known to have gone out before it was
        /// stopped ([`Error::written`]); `None` otherwise.
        written: Option<u64>,
    },
    /// A [`Session`](crate::Session) already has as many requests in flight as its capacity.
    SessionFull {
        /// The session's capacity.
        capacity: usize,
    },
    /// A blocking call made on a shard's thread would wait for a shard of the same executor:
    /// its own cannot run while its thread waits, and shards waiting on each other deadlock.
    WouldDeadlock {
        /// What was called.
        op: &'static str,
        /// The shard whose thread made the call.
        shard: usize,
    },
    /// Per-shard state ([`Sharded`](crate::Sharded)) was asked for off the shards: it lives on
    /// its shards' threads and is reachable only from code running there.
    NotOnShard {
        /// What was called.
        op: &'static str,
    },
    /// An async task spawned on a shard panicked; the shard goes on.
    TaskPanicked {
        /// The shard the task ran on.
        shard: usize,
        /// The panic's message.
        message: String,
    },
}

impl Error {
    /// For a write that failed part-way, the bytes from its offset known to be written: see
    /// [`Io::written`](Self::Io); for a send cut short by a cancellation or deadline, the bytes
    /// that went out before. `None` for other errors.
    pub fn written(&self) -> Option<u64> {
        match self {
            Self::Io { written, .. }
            | Self::Cancelled { written, .. }
            | Self::DeadlineExceeded { written, .. } => *written,
            _ => None,
        }
    }

    /// This error with how much of its write is known to be written.
    pub(crate) fn with_written(mut self, n: u64) -> Self {
        if let Self::Io { written, .. }
        | Self::Cancelled { written, .. }
        | Self::DeadlineExceeded { written, .. } = &mut self
        {
            *written = Some(n);
        }
        self
    }

    /// The errno behind this error, where the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::RingSetup { errno, .. }
            | Self::Registration { errno, .. }
            | Self::Memory { errno, .. }
            | Self::Io { errno, .. }
            | Self::PathPair { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// A retry of the same call, later, can succeed without the caller changing anything
    /// (queue or pool momentarily full, interrupted or would-block I/O, a wait that timed out).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::SubmissionQueueFull
            | Self::PoolExhausted { .. }
            | Self::Timeout
            | Self::SessionFull { .. } => true,
            Self::Io { errno, .. } | Self::PathPair { errno, .. } => {
                matches!(
                    *errno,
                    libc::EAGAIN | libc::EINTR | libc::EBUSY | libc::ENOBUFS
                )
            }
            _ => false,
        }
    }

    /// The object that returned this error cannot be used any more (its ring could not be made or
    /// its executor is gone): recreate it rather than retry.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::RingSetup { .. }
                | Self::Registration { .. }
                | Self::Memory { .. }
                | Self::Shutdown
                | Self::ShardFailed { .. }
                | Self::Topology(_)
        )
    }

    /// Builds an [`Io`](Self::Io) error from a negative CQE result or an errno.
    pub(crate) fn io(
        op: &'static str,
        path: Option<PathBuf>,
        offset: Option<u64>,
        errno: i32,
    ) -> Self {
        Self::Io {
            op,
            path,
            offset,
            errno: errno.abs(),
            written: None,
        }
    }

    /// Builds an [`InvalidArgument`](Self::InvalidArgument) error.
    pub(crate) fn invalid(op: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            op,
            reason: reason.into(),
        }
    }
}

/// `strerror`-style text for an errno, e.g. `"ENOMEM (Cannot allocate memory)"`.
pub fn errno_text(errno: i32) -> String {
    let desc = std::io::Error::from_raw_os_error(errno).to_string();
    // std's text ends in " (os error N)"; keep only the description.
    let desc = desc.split(" (os error").next().unwrap_or(&desc).to_string();
    match errno_name(errno) {
        Some(name) => format!("{name} ({desc})"),
        None => format!("errno {errno} ({desc})"),
    }
}

fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EPIPE => "EPIPE",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ECANCELED => "ECANCELED",
        libc::ENOBUFS => "ENOBUFS",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOTDIR => "ENOTDIR",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EXDEV => "EXDEV",
        _ => return None,
    })
}

fn fmt_limit(limit: Option<u64>) -> String {
    match limit {
        None => "unlimited".to_string(),
        Some(l) => format!("{l} bytes ({} KiB)", l / 1024),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RingSetup {
                entries,
                flags,
                errno,
            } => {
                write!(
                    f,
                    "io_uring_setup({entries} entries, flags {flags}) failed: {}",
                    errno_text(*errno)
                )?;
                match *errno {
                    libc::EPERM => write!(
                        f,
                        "; io_uring is blocked: either the sysctl kernel.io_uring_disabled is set \
                         (currently {}; 0 allows everyone, 1 only the group in \
                         kernel.io_uring_group) or a seccomp filter denies it (Docker's default \
                         profile does: run with --security-opt seccomp=unconfined or a profile \
                         that allows io_uring_setup/enter/register)",
                        io_uring_disabled_sysctl()
                    ),
                    libc::ENOSYS => write!(
                        f,
                        "; this kernel has no io_uring (built without CONFIG_IO_URING, or a \
                         sandbox such as gVisor or a seccomp filter hides it); ringshard's io_uring \
                         backend needs Linux 5.6 or later with io_uring enabled (6.1 or later \
                         for its best ring mode)"
                    ),
                    libc::EINVAL => write!(
                        f,
                        "; the kernel rejected the setup flags (older kernels lack \
                         SINGLE_ISSUER/DEFER_TASKRUN, and SQPOLL cannot be combined with \
                         COOP_TASKRUN or DEFER_TASKRUN): choose fewer flags"
                    ),
                    libc::ENOMEM => write!(
                        f,
                        "; the ring's memory could not be allocated or locked: use fewer entries, \
                         or raise RLIMIT_MEMLOCK (ulimit -l)"
                    ),
                    _ => Ok(()),
                }
            }
            Self::Registration {
                what,
                bytes,
                errno,
                memlock_limit,
            } => {
                write!(f, "io_uring_register({what}")?;
                if *bytes > 0 {
                    write!(f, ", {bytes} bytes")?;
                }
                write!(f, ") failed: {}", errno_text(*errno))?;
                match *errno {
                    libc::ENOMEM => write!(
                        f,
                        "; registered buffers are pinned and count against RLIMIT_MEMLOCK \
                         (current limit {}, asked for {bytes} bytes): raise the limit \
                         (`ulimit -l unlimited`, or memlock in /etc/security/limits.conf, or \
                         LimitMEMLOCK= in a systemd unit), use a smaller pool (fewer or smaller \
                         buffers), or give the process CAP_IPC_LOCK",
                        fmt_limit(*memlock_limit)
                    ),
                    libc::EBUSY => write!(
                        f,
                        "; this ring already has {what} registered: use one pool per ring, or \
                         unregister the old one first"
                    ),
                    libc::EEXIST => write!(
                        f,
                        "; the ring was created with SINGLE_ISSUER by another thread: register \
                         from the thread that created the ring"
                    ),
                    _ => Ok(()),
                }
            }
            Self::Memory { op, bytes, errno } => {
                write!(f, "{op} of {bytes} bytes failed: {}", errno_text(*errno))
            }
            Self::SubmissionQueueFull => write!(
                f,
                "submission queue full: submit the queued entries (ring.submit()), reap \
                 completions, then retry; or create the ring with more entries"
            ),
            Self::PoolExhausted { total } => write!(
                f,
                "buffer pool exhausted: all {total} buffers are acquired or in flight; release \
                 buffers whose I/O has completed, or create a larger pool"
            ),
            Self::InvalidIndex { index, total } => write!(
                f,
                "invalid buffer index {index}: the pool has {total} buffers (0..{total})"
            ),
            Self::BufferState { index, op, state } => {
                write!(f, "cannot {op} buffer {index}: it is {state}")?;
                if *state == "in flight" {
                    write!(
                        f,
                        "; wait for its completion and give its CQE to complete_cqe first (or call \
                         complete_in_flight for an operation you marked yourself), because the \
                         kernel may still write into it"
                    )?;
                }
                Ok(())
            }
            Self::BufferTooSmall {
                requested,
                buffer_size,
            } => write!(
                f,
                "request of {requested} bytes does not fit a {buffer_size}-byte buffer: split it, \
                 or create the pool with larger buffers"
            ),
            Self::InvalidConfig(reason) => write!(f, "invalid configuration: {reason}"),
            Self::InvalidArgument { op, reason } => write!(f, "{op}: invalid argument: {reason}"),
            Self::PathPair {
                op,
                from,
                to,
                errno,
            } => {
                write!(
                    f,
                    "{op} {} -> {} failed: {}",
                    from.display(),
                    to.display(),
                    errno_text(*errno)
                )?;
                match *errno {
                    libc::EOPNOTSUPP | libc::EINVAL | libc::ENOTTY if *op == "clone_range" => {
                        write!(
                            f,
                            "; this filesystem cannot share blocks between files (reflink: \
                             btrfs, xfs with reflink=1, bcachefs, ocfs2; not ext4 or tmpfs), or \
                             the range is not aligned to its block size (offset, length and \
                             destination offset must be multiples of it, except a length that \
                             reaches the source's end): use copy_range_to, which copies"
                        )
                    }
                    libc::EXDEV if *op == "clone_range" || *op == "copy_file_range" => write!(
                        f,
                        "; the two files are on different filesystems (or mounts the kernel \
                         will not copy between): copy them with read and write"
                    ),
                    libc::EPIPE | libc::ECONNRESET if *op == "send_file" => write!(
                        f,
                        "; the peer closed (or reset) the connection before everything was sent"
                    ),
                    libc::EINVAL if *op == "send_file" => write!(
                        f,
                        "; the destination must be a socket or a pipe, and an O_DIRECT source's \
                         offset a multiple of its block size"
                    ),
                    libc::EEXIST => write!(f, "; the new name exists already"),
                    libc::EXDEV => write!(f, "; both paths must be on the same filesystem"),
                    libc::ENOENT if *op == "link_into" => write!(
                        f,
                        "; the new name's directory must exist, and /proc must be mounted (the \
                         file is named by its descriptor as /proc/self/fd/N)"
                    ),
                    _ => Ok(()),
                }
            }
            Self::Io {
                op,
                path,
                offset,
                errno,
                written,
            } => {
                write!(f, "{op}")?;
                if let Some(p) = path {
                    write!(f, " {}", p.display())?;
                }
                if let Some(o) = offset {
                    write!(f, " at offset {o}")?;
                }
                write!(f, " failed: {}", errno_text(*errno))?;
                if let Some(n) = written.filter(|n| *n > 0) {
                    write!(f, " after {n} bytes were written")?;
                }
                match *errno {
                    libc::EINVAL if *op == "open" => write!(
                        f,
                        "; if O_DIRECT was asked for, this filesystem may not support it (tmpfs \
                         before Linux 6.6, some FUSE and network filesystems): open without \
                         direct, or put the file on a filesystem that supports it"
                    ),
                    libc::EOPNOTSUPP if *op == "open" => write!(
                        f,
                        "; if tmpfile (O_TMPFILE) was asked for, this filesystem cannot make \
                         unnamed files (procfs, some FUSE and network filesystems): create a \
                         named temporary file and rename it into place instead"
                    ),
                    libc::EINVAL if *op == "read" || *op == "write" => write!(
                        f,
                        "; with O_DIRECT, offset and length must be multiples of the device's \
                         logical block size (File::direct_io_align says which)"
                    ),
                    libc::EOPNOTSUPP if *op == "fallocate" => write!(
                        f,
                        "; this filesystem does not support this fallocate mode (tmpfs has only \
                         Allocate, KeepSize and PunchHole; ext4 has no UnshareRange): use a mode \
                         it has, or write zeros instead"
                    ),
                    libc::EINVAL if *op == "fallocate" => write!(
                        f,
                        "; CollapseRange and InsertRange need offset and length in multiples of \
                         the filesystem's block size, and a range inside the file"
                    ),
                    libc::EOPNOTSUPP if *op == "read" || *op == "write" => write!(
                        f,
                        "; the file refused an RWF flag: RWF_DONTCACHE needs Linux 6.14 and a \
                         filesystem that supports it (ext4, xfs, btrfs; not tmpfs), RWF_NOWAIT \
                         a filesystem that supports it: drop the flag for this file"
                    ),
                    libc::EBADF if *op == "write" => {
                        write!(
                            f,
                            "; the file may be open read-only: open it with write access"
                        )
                    }
                    libc::ECONNRESET | libc::EPIPE => write!(
                        f,
                        "; the peer closed or reset the connection: it is over, drop the stream"
                    ),
                    libc::ECONNREFUSED => write!(
                        f,
                        "; nothing listens at that address: check the address and that the \
                         server runs"
                    ),
                    libc::EADDRINUSE => write!(
                        f,
                        "; the address is taken by a socket without SO_REUSEPORT (or of another \
                         user): pick another port, or port 0 for one the kernel picks"
                    ),
                    libc::ENOSPC => write!(f, "; the filesystem is full"),
                    libc::EMFILE => write!(
                        f,
                        "; too many open files: close files or raise RLIMIT_NOFILE (ulimit -n)"
                    ),
                    _ => Ok(()),
                }
            }
            Self::WrongRing => write!(
                f,
                "this buffer pool is registered with another ring: submit through the ring the \
                 pool was created with"
            ),
            Self::BadHandle(why) => write!(f, "bad file handle: {why}"),
            Self::Shutdown => write!(f, "the executor is shut down; no new work is accepted"),
            Self::ShardFailed { shard, reason } => write!(f, "shard {shard} failed: {reason}"),
            Self::Timeout => write!(
                f,
                "timed out waiting for a completion; the operation is still running"
            ),
            Self::Topology(reason) => write!(f, "reading the CPU/NUMA topology failed: {reason}"),
            Self::Cancelled { op, path, written } => {
                write!(f, "{op}")?;
                if let Some(p) = path {
                    write!(f, " {}", p.display())?;
                }
                write!(
                    f,
                    " was cancelled before it completed (its handle was dropped or cancelled, or \
                     the executor shut down while it could not finish)"
                )?;
                sent_before(f, op, *written)
            }
            Self::DeadlineExceeded { op, path, written } => {
                write!(f, "{op}")?;
                if let Some(p) = path {
                    write!(f, " {}", p.display())?;
                }
                write!(f, " did not complete before its deadline and was cancelled")?;
                sent_before(f, op, *written)?;
                if matches!(
                    *op,
                    "accept" | "connect" | "recv" | "recv_pooled" | "send" | "recv_file"
                ) {
                    write!(
                        f,
                        ": allow more time, or look at the peer (it sent or read nothing)"
                    )
                } else {
                    write!(
                        f,
                        ": allow more time, or look for a slow device or a blocking file (FIFO, \
                         network filesystem)"
                    )
                }
            }
            Self::SessionFull { capacity } => write!(
                f,
                "session full: {capacity} requests are in flight; reap completions before \
                 submitting more, or create the session with a larger capacity"
            ),
            Self::WouldDeadlock { op, shard } => write!(
                f,
                "{op} called on shard {shard}'s own thread would block it waiting for a shard of \
                 the same executor: its own cannot run while it waits, and two shards waiting \
                 on each other never finish; inside shard code, use the ShardContext or an async \
                 form instead of blocking"
            ),
            Self::NotOnShard { op } => write!(
                f,
                "{op} called off the executor's shards: per-shard state lives on the shard \
                 threads; run the code there (spawn_on, submit_to, Sharded::run_on_each)"
            ),
            Self::TaskPanicked { shard, message } => write!(
                f,
                "a task on shard {shard} panicked ({message}); the shard goes on"
            ),
        }
    }
}

/// The variant and its fields (like a derived `Debug`), then `": "` and the `Display` text: the
/// form a `main` returning [`Result`] prints, so it carries the diagnosis.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RingSetup {
                entries,
                flags,
                errno,
            } => f
                .debug_struct("RingSetup")
                .field("entries", entries)
                .field("flags", flags)
                .field("errno", errno)
                .finish(),
            Self::Registration {
                what,
                bytes,
                errno,
                memlock_limit,
            } => f
                .debug_struct("Registration")
                .field("what", what)
                .field("bytes", bytes)
                .field("errno", errno)
                .field("memlock_limit", memlock_limit)
                .finish(),
            Self::Memory { op, bytes, errno } => f
                .debug_struct("Memory")
                .field("op", op)
                .field("bytes", bytes)
                .field("errno", errno)
                .finish(),
            Self::SubmissionQueueFull => f.write_str("SubmissionQueueFull"),
            Self::PoolExhausted { total } => f
                .debug_struct("PoolExhausted")
                .field("total", total)
                .finish(),
            Self::InvalidIndex { index, total } => f
                .debug_struct("InvalidIndex")
                .field("index", index)
                .field("total", total)
                .finish(),
            Self::BufferState { index, op, state } => f
                .debug_struct("BufferState")
                .field("index", index)
                .field("op", op)
                .field("state", state)
                .finish(),
            Self::BufferTooSmall {
                requested,
                buffer_size,
            } => f
                .debug_struct("BufferTooSmall")
                .field("requested", requested)
                .field("buffer_size", buffer_size)
                .finish(),
            Self::InvalidConfig(reason) => f.debug_tuple("InvalidConfig").field(reason).finish(),
            Self::InvalidArgument { op, reason } => f
                .debug_struct("InvalidArgument")
                .field("op", op)
                .field("reason", reason)
                .finish(),
            Self::Io {
                op,
                path,
                offset,
                errno,
                written,
            } => f
                .debug_struct("Io")
                .field("op", op)
                .field("path", path)
                .field("offset", offset)
                .field("errno", errno)
                .field("written", written)
                .finish(),
            Self::PathPair {
                op,
                from,
                to,
                errno,
            } => f
                .debug_struct("PathPair")
                .field("op", op)
                .field("from", from)
                .field("to", to)
                .field("errno", errno)
                .finish(),
            Self::WrongRing => f.write_str("WrongRing"),
            Self::BadHandle(why) => f.debug_tuple("BadHandle").field(why).finish(),
            Self::Shutdown => f.write_str("Shutdown"),
            Self::ShardFailed { shard, reason } => f
                .debug_struct("ShardFailed")
                .field("shard", shard)
                .field("reason", reason)
                .finish(),
            Self::Timeout => f.write_str("Timeout"),
            Self::Topology(reason) => f.debug_tuple("Topology").field(reason).finish(),
            Self::Cancelled { op, path, written } => f
                .debug_struct("Cancelled")
                .field("op", op)
                .field("path", path)
                .field("written", written)
                .finish(),
            Self::DeadlineExceeded { op, path, written } => f
                .debug_struct("DeadlineExceeded")
                .field("op", op)
                .field("path", path)
                .field("written", written)
                .finish(),
            Self::SessionFull { capacity } => f
                .debug_struct("SessionFull")
                .field("capacity", capacity)
                .finish(),
            Self::WouldDeadlock { op, shard } => f
                .debug_struct("WouldDeadlock")
                .field("op", op)
                .field("shard", shard)
                .finish(),
            Self::NotOnShard { op } => f.debug_struct("NotOnShard").field("op", op).finish(),
            Self::TaskPanicked { shard, message } => f
                .debug_struct("TaskPanicked")
                .field("shard", shard)
                .field("message", message)
                .finish(),
        }?;
        write!(f, ": {self}")
    }
}

impl std::error::Error for Error {}

/// For code written against `std::io` (a [`FileCursor`](crate::FileCursor)'s std and async impls
/// use it). An error with an errno becomes that OS error, so `raw_os_error()` and `kind()` are
/// the kernel's (the operation and the file are then not in the `io::Error`: log the ringshard
/// error first where you need them). A [`Timeout`](Error::Timeout) is
/// [`ErrorKind::TimedOut`](std::io::ErrorKind::TimedOut); a [`Cancelled`](Error::Cancelled) is
/// `Interrupted`; the others keep the whole error as their source, with a kind that says what
/// it is where std has one (`WouldBlock` for [`WouldDeadlock`](Error::WouldDeadlock),
/// `InvalidInput` for [`InvalidArgument`](Error::InvalidArgument)), else `Other`.
impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        use std::io::ErrorKind;
        if let Some(errno) = e.errno() {
            return std::io::Error::from_raw_os_error(errno);
        }
        let kind = match &e {
            Error::Timeout => ErrorKind::TimedOut,
            Error::Cancelled { .. } => ErrorKind::Interrupted,
            Error::WouldDeadlock { .. } => ErrorKind::WouldBlock,
            Error::InvalidArgument { .. } => ErrorKind::InvalidInput,
            _ => ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}

/// Current value of `kernel.io_uring_disabled`, or `"unknown"` where the sysctl does not exist.
fn io_uring_disabled_sysctl() -> String {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// The soft RLIMIT_MEMLOCK in bytes, `None` when unlimited or unknown.
pub(crate) fn memlock_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct we pass, which lives for the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        None
    } else {
        Some(lim.rlim_cur)
    }
}

/// The text of a panic payload.
pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-text panic payload".to_string()
    }
}

/// ", after N bytes went out" for an error that carries a count sent (a send cut short).
fn sent_before(f: &mut fmt::Formatter<'_>, op: &str, written: Option<u64>) -> fmt::Result {
    match written {
        // A receive into a file counts what it wrote, not what it sent.
        Some(n) if op == "recv_file" => write!(f, " after {n} received bytes reached the file"),
        Some(n) => write!(f, " after {n} bytes went out"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_receive_into_a_file_points_at_the_peer_and_counts_what_reached_the_file() {
        let e = Error::DeadlineExceeded {
            op: "recv_file",
            path: Some("/up/f".into()),
            written: Some(1000),
        };
        let text = e.to_string();
        assert!(
            text.contains("after 1000 received bytes reached the file"),
            "{text}"
        );
        assert!(text.contains("look at the peer"), "{text}");
        let e = Error::DeadlineExceeded {
            op: "recv_pooled",
            path: None,
            written: None,
        };
        assert!(e.to_string().contains("look at the peer"), "{e}");
    }

    #[test]
    fn into_io_error_keeps_the_errno_and_maps_the_rest_by_kind() {
        let e = Error::invalid("read", "x");
        let io: std::io::Error = Error::Io {
            op: "read",
            errno: libc::ENOENT,
            path: Some("/nowhere".into()),
            offset: None,
            written: None,
        }
        .into();
        assert_eq!(io.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        let io: std::io::Error = Error::Timeout.into();
        assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(io.raw_os_error(), None);
        let io: std::io::Error = e.clone().into();
        assert_eq!(io.kind(), std::io::ErrorKind::InvalidInput);
        // The whole ringshard error is the source: its text and variant stay reachable.
        let inner = io.get_ref().and_then(|r| r.downcast_ref::<Error>());
        assert_eq!(inner, Some(&e));
    }

    #[test]
    fn memlock_message_names_limit_bytes_and_fixes() {
        let e = Error::Registration {
            what: "buffers",
            bytes: 16 << 20,
            errno: libc::ENOMEM,
            memlock_limit: Some(8 << 20),
        };
        let s = e.to_string();
        assert!(s.contains("ENOMEM"), "{s}");
        assert!(s.contains("RLIMIT_MEMLOCK"), "{s}");
        assert!(s.contains("16777216"), "{s}");
        assert!(s.contains("8388608"), "{s}");
        assert!(s.contains("ulimit -l"), "{s}");
        assert!(s.contains("CAP_IPC_LOCK"), "{s}");
        assert!(e.is_fatal());
        assert!(!e.is_transient());
        assert_eq!(e.errno(), Some(libc::ENOMEM));
    }

    #[test]
    fn setup_eperm_explains_sysctl_and_seccomp() {
        let e = Error::RingSetup {
            entries: 64,
            flags: "none".into(),
            errno: libc::EPERM,
        };
        let s = e.to_string();
        assert!(s.contains("io_uring_disabled"), "{s}");
        assert!(s.contains("seccomp"), "{s}");
    }

    #[test]
    fn io_error_carries_op_path_offset_errno() {
        let e = Error::io("read", Some("/x/y".into()), Some(4096), -libc::EIO);
        assert_eq!(e.errno(), Some(libc::EIO));
        let s = e.to_string();
        assert!(s.contains("read /x/y at offset 4096 failed: EIO"), "{s}");
        let io: std::io::Error = e.into();
        assert_eq!(io.raw_os_error(), Some(libc::EIO));
    }

    #[test]
    fn transient_and_fatal_classification() {
        assert!(Error::SubmissionQueueFull.is_transient());
        assert!(Error::PoolExhausted { total: 1 }.is_transient());
        assert!(Error::io("read", None, None, libc::EAGAIN).is_transient());
        assert!(!Error::io("read", None, None, libc::EIO).is_transient());
        assert!(Error::Shutdown.is_fatal());
        assert!(!Error::InvalidIndex { index: 3, total: 2 }.is_fatal());
    }

    #[test]
    fn debug_shows_fields_and_diagnosis() {
        let e = Error::RingSetup {
            entries: 256,
            flags: "SINGLE_ISSUER|DEFER_TASKRUN".into(),
            errno: libc::EPERM,
        };
        // What `fn main() -> ringshard::Result<()>` prints after "Error: ".
        let d = format!("{e:?}");
        assert!(
            d.starts_with(
                "RingSetup { entries: 256, flags: \"SINGLE_ISSUER|DEFER_TASKRUN\", errno: 1 }: "
            ),
            "{d}"
        );
        assert!(d.ends_with(&e.to_string()), "{d}");
        assert!(d.contains("seccomp"), "{d}");
        // Through Box<dyn Error> too (the examples' return type).
        let boxed: Box<dyn std::error::Error> = Box::new(e.clone());
        assert_eq!(format!("{boxed:?}"), d);
        // Unit and tuple variants.
        let d = format!("{:?}", Error::Shutdown);
        assert!(d.starts_with("Shutdown: the executor is shut down"), "{d}");
        let d = format!("{:?}", Error::InvalidConfig("x".into()));
        assert_eq!(d, "InvalidConfig(\"x\"): invalid configuration: x");
        // The alternate form keeps the pretty fields.
        let d = format!("{e:#?}");
        assert!(d.starts_with("RingSetup {\n    entries: 256,"), "{d}");
    }

    #[test]
    fn errno_text_has_name_and_description() {
        assert!(errno_text(libc::ENOSPC).starts_with("ENOSPC ("));
        assert!(errno_text(9999).starts_with("errno 9999"));
    }
}
