//! Per-operation flags of reads and writes (`RWF_*`, as for `preadv2`/`pwritev2`), and the
//! retry rule their results follow on every data path. Reads and writes themselves stay unboxed
//! fast paths in the runner (chunking over pool buffers, three data paths); what is theirs alone
//! and needs no runner state lives here.

/// Flags of one read or write ([`Executor::read_with`](crate::Executor::read_with),
/// [`Executor::write_with`](crate::Executor::write_with)): the SQE's `rw_flags` on the ring,
/// `pwritev2`'s flags on the inline write path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct RwFlags(i32);

impl RwFlags {
    /// Per-write O_DSYNC (`RWF_DSYNC`).
    pub const DSYNC: RwFlags = RwFlags(libc::RWF_DSYNC);
    /// Per-write O_SYNC (`RWF_SYNC`).
    pub const SYNC: RwFlags = RwFlags(libc::RWF_SYNC);
    /// Fail with EAGAIN instead of waiting (`RWF_NOWAIT`): a read of data not in the page cache,
    /// a write that would block. The error comes back (errno EAGAIN); it is never retried.
    pub const NOWAIT: RwFlags = RwFlags(libc::RWF_NOWAIT);
    /// High-priority polled I/O where the device supports it (`RWF_HIPRI`).
    pub const HIPRI: RwFlags = RwFlags(libc::RWF_HIPRI);
    /// Append this write at the end of the file, whatever its offset (`RWF_APPEND`).
    pub const APPEND: RwFlags = RwFlags(libc::RWF_APPEND);
    /// Uncached buffered I/O (`RWF_DONTCACHE`, Linux 6.14): the data goes through the page
    /// cache, and the pages this read or write brought in are dropped once it is done (a write's
    /// after writeback, which it starts), so a stream read or written once does not push other
    /// data out of memory. Needs Linux 6.14 (refused before, at the request) and a filesystem
    /// that supports it (ext4, xfs, btrfs; elsewhere the operation fails with errno
    /// EOPNOTSUPP). No effect on O_DIRECT files.
    pub const DONTCACHE: RwFlags = RwFlags(RWF_DONTCACHE);

    /// No flags.
    pub const fn empty() -> Self {
        RwFlags(0)
    }

    /// The raw `RWF_*` bits.
    pub const fn bits(self) -> i32 {
        self.0
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: RwFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for RwFlags {
    type Output = RwFlags;
    fn bitor(self, rhs: Self) -> Self {
        RwFlags(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for RwFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

/// `RWF_DONTCACHE` (include/uapi/linux/fs.h, Linux 6.14).
const RWF_DONTCACHE: i32 = 0x0000_0080;

/// Whether this kernel knows `RWF_DONTCACHE` (Linux 6.14 or later; its release read once with
/// `uname`), and the release, for errors. A kernel that does not know the flag refuses it with
/// EOPNOTSUPP on every file, so asking it per file would only repeat that answer.
pub(crate) fn dontcache_supported() -> (bool, &'static str) {
    let release = super::kernel_release();
    (release.at_least(6, 14), release.text.as_str())
}

/// Whether a read or write chunk that failed with `errno` is issued again: EINTR always; EAGAIN
/// unless the caller asked for RWF_NOWAIT (then EAGAIN is the answer).
#[inline]
pub(crate) fn retried(errno: i32, rw_flags: i32) -> bool {
    errno == libc::EINTR || (errno == libc::EAGAIN && rw_flags & libc::RWF_NOWAIT == 0)
}

/// Writes all of `data` at `offset` of `fd` on the calling thread (`pwrite`, or `pwritev2` with
/// `rw_flags`), resuming short writes and retrying as [`retried`] says; the bytes written, or
/// the bytes written before the error and the errno.
pub(crate) fn pwrite_all(
    fd: std::os::fd::RawFd,
    data: &[u8],
    offset: u64,
    rw_flags: i32,
) -> std::result::Result<usize, (usize, i32)> {
    pwrite_all_timed(fd, data, offset, rw_flags, None)
}

/// [`pwrite_all`], telling `each_call` (if given: only then is the clock read) how long every
/// system call took and how many bytes it was asked to write.
pub(crate) fn pwrite_all_timed(
    fd: std::os::fd::RawFd,
    data: &[u8],
    offset: u64,
    rw_flags: i32,
    mut each_call: Option<&mut dyn FnMut(std::time::Duration, usize)>,
) -> std::result::Result<usize, (usize, i32)> {
    let mut done = 0usize;
    // One clock read per call: each call's end is the next one's start.
    let mut start = each_call.as_ref().map(|_| std::time::Instant::now());
    while done < data.len() {
        let rest = &data[done..];
        let at = (offset + done as u64) as libc::off_t;
        let n = if rw_flags == 0 {
            // SAFETY: pwrite reads `rest.len()` bytes from a live slice.
            unsafe { libc::pwrite(fd, rest.as_ptr().cast(), rest.len(), at) }
        } else {
            let iov = libc::iovec {
                iov_base: rest.as_ptr() as *mut libc::c_void,
                iov_len: rest.len(),
            };
            // SAFETY: one iovec over a live slice, only read by the kernel.
            unsafe { libc::pwritev2(fd, &iov, 1, at, rw_flags) }
        };
        if let (Some(f), Some(t)) = (each_call.as_mut(), start.as_mut()) {
            let end = std::time::Instant::now();
            f(end.saturating_duration_since(*t), data.len() - done);
            *t = end;
        }
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err((done, libc::EIO)), // no progress: would loop forever
            _ => {
                let errno = crate::numa::last_errno();
                if !retried(errno, rw_flags) {
                    return Err((done, errno));
                }
            }
        }
    }
    Ok(done)
}
