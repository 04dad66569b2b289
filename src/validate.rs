//! Checks a request before it leaves the caller: one validated constructor per operation, used
//! by the one face of the per-operation methods (`deadlined.rs`), whichever way the request goes
//! ([`Executor`](crate::Executor), [`Batch`](crate::Batch), [`Session`](crate::Session), `File`).
//! What passes here cannot make the shard allocate more than the request can return, overflow a
//! file offset, or break O_DIRECT's alignment rules.

use crate::error::{Error, Result};
use crate::file::File;
use crate::op::{self, PathTarget};
use crate::router::FileKey;
use crate::shard::IoOp;
use std::ffi::CString;
use std::path::Path;
use std::sync::Arc;

/// The default largest read or write one request may ask for.
pub const DEFAULT_MAX_REQUEST_SIZE: usize = 256 << 20;
/// The largest value [`max_request_size`](crate::ExecutorBuilder::max_request_size) accepts.
pub const MAX_REQUEST_SIZE_LIMIT: usize = 1 << 40;

/// Bounds on what one request may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Largest read or write length, in bytes.
    pub max_request: usize,
    /// send_file of an O_DIRECT file: rounds of at least this many bytes go as SEND_ZC.
    pub send_zc_min: u64,
    /// send_file of an O_DIRECT file: buffers per send (2: each round's READ runs while the
    /// round before it is sent).
    pub send_file_buffers: usize,
}

/// A read of `len` bytes at `offset`.
pub(crate) fn read(file: &File, offset: u64, len: usize, limits: Limits) -> Result<()> {
    check_rw(file, "read", offset, len, file.flags().readable, limits)
}

/// A write of `len` bytes at `offset`.
pub(crate) fn write(file: &File, offset: u64, len: usize, limits: Limits) -> Result<()> {
    check_rw(file, "write", offset, len, file.flags().writable, limits)
}

/// The checked op of a read of `len` bytes at `offset` into `buf`'s allocation.
pub(crate) fn read_op(
    file: &File,
    offset: u64,
    len: usize,
    buf: Vec<u8>,
    limits: Limits,
) -> Result<IoOp> {
    read_op_with(
        file,
        offset,
        len,
        buf,
        crate::op::rw::RwFlags::empty(),
        limits,
    )
}

/// [`read_op`] with `RWF_*` flags.
pub(crate) fn read_op_with(
    file: &File,
    offset: u64,
    len: usize,
    buf: Vec<u8>,
    flags: crate::op::rw::RwFlags,
    limits: Limits,
) -> Result<IoOp> {
    read(file, offset, len, limits)?;
    check_rw_flags("read", flags)?;
    Ok(IoOp::Read {
        offset,
        len,
        buf,
        kept: 0,
        flags: flags.bits(),
    })
}

/// The checked op of a write of `data` at `offset` with `RWF_*` flags; refused, `data` comes
/// back with the error (for requests whose buffer comes back whatever happens: sessions,
/// [`crate::buf`]).
pub(crate) fn write_op(
    file: &File,
    offset: u64,
    data: Vec<u8>,
    flags: crate::op::rw::RwFlags,
    limits: Limits,
) -> std::result::Result<IoOp, (Error, Vec<u8>)> {
    match write(file, offset, data.len(), limits).and_then(|()| check_rw_flags("write", flags)) {
        Ok(()) => Ok(IoOp::Write {
            offset,
            data,
            flags: flags.bits(),
        }),
        Err(e) => Err((e, data)),
    }
}

/// Only the known `RWF_*` flags; APPEND, DSYNC and SYNC only on writes.
fn check_rw_flags(op: &'static str, flags: crate::op::rw::RwFlags) -> Result<()> {
    use crate::op::rw::RwFlags as F;
    let known = F::DSYNC | F::SYNC | F::NOWAIT | F::HIPRI | F::APPEND | F::DONTCACHE;
    let write_only = F::DSYNC | F::SYNC | F::APPEND;
    if flags.bits() & !known.bits() != 0 {
        return Err(Error::invalid(
            op,
            format!("unknown RWF flags {:#x}", flags.bits() & !known.bits()),
        ));
    }
    if flags.contains(F::DONTCACHE) {
        let (supported, release) = crate::op::rw::dontcache_supported();
        if !supported {
            return Err(Error::invalid(
                op,
                format!(
                    "RWF_DONTCACHE needs Linux 6.14 and a filesystem that supports it (ext4, \
                     xfs, btrfs): this kernel is {release}; drop RwFlags::DONTCACHE (or use \
                     posix_fadvise(POSIX_FADV_DONTNEED) after the I/O)"
                ),
            ));
        }
    }
    if op == "read" && flags.bits() & write_only.bits() != 0 {
        return Err(Error::invalid(
            op,
            "DSYNC, SYNC and APPEND are flags of writes",
        ));
    }
    Ok(())
}

/// The op of an fallocate of `len` bytes at `offset` with `mode`.
pub(crate) fn fallocate_op(
    mode: op::fallocate::FallocateMode,
    offset: u64,
    len: u64,
) -> Result<IoOp> {
    check_end("fallocate", offset, len)?;
    Ok(IoOp::File(Box::new(op::fallocate::Fallocate {
        mode,
        offset,
        len,
    })))
}

/// The op of an fsync (fdatasync with `datasync`).
pub(crate) fn sync_op(datasync: bool) -> IoOp {
    IoOp::File(Box::new(op::sync::Sync { datasync }))
}

/// The op of a size query.
pub(crate) fn size_op() -> IoOp {
    IoOp::File(Box::<op::size::Size>::default())
}

/// A set_len to `len`: the file must be open for writing.
pub(crate) fn set_len(file: &File, len: u64) -> Result<()> {
    access(file, "set_len", file.flags().writable, "write(true)")?;
    check_end("set_len", len, 0)
}

/// A copy (or clone) of `len` bytes at `src_off` of `src` to `dst_off` of `dst`: `src` open
/// for reading, `dst` for writing and not for appending (the kernel refuses O_APPEND
/// destinations), neither range past the largest offset. `len` bounds no allocation: the copy
/// moves at most `copy_range::ROUND_MAX` bytes per round, in the kernel.
pub(crate) fn copy_range(
    op: &'static str,
    src: &File,
    src_off: u64,
    dst: &File,
    dst_off: u64,
    len: u64,
) -> Result<()> {
    access(src, op, src.flags().readable, "read(true) (the source)")?;
    access(
        dst,
        op,
        dst.flags().writable,
        "write(true) (the destination)",
    )?;
    if dst.flags().append {
        return Err(Error::BadHandle(format!(
            "{op} to {}: the destination is open with append(true), which the kernel refuses \
             (EBADF); open it without append",
            dst.path().display()
        )));
    }
    check_end(op, src_off, len)?;
    check_end(op, dst_off, len)
}

/// A send_file of `len` bytes at `offset` of `file` to `dest`: `file` open for reading, the
/// range within the largest offset, an O_DIRECT file's offset and length multiples of its
/// alignment (the kernel reads it with O_DIRECT into the pipe's pages); `dest` a stream socket,
/// pipe or FIFO (what it is, and its name for errors, come back). The op owns a duplicate of
/// `dest` (see `op::send_file`), made by the caller: [`send_file_dup`], or one it has already.
/// `len` bounds no allocation: each round moves at most a pipe's size, in the kernel.
pub(crate) fn send_file(
    file: &File,
    offset: u64,
    len: u64,
    dest: std::os::fd::BorrowedFd<'_>,
) -> Result<(op::send_file::DestKind, std::path::PathBuf)> {
    const OP: &str = "send_file";
    access(file, OP, file.flags().readable, "read(true)")?;
    check_end(OP, offset, len)?;
    if let Some(align) = file.direct_io_align() {
        let a = u64::from(align.offset);
        if offset % a != 0 || len % a != 0 {
            return Err(Error::invalid(
                OP,
                format!(
                    "{} is open with O_DIRECT: offset {offset} and length {len} must be \
                     multiples of {a}, its filesystem's O_DIRECT alignment: align them, or \
                     open the file without direct",
                    file.path().display()
                ),
            ));
        }
    }
    op::send_file::check_dest(dest).map_err(|(errno, name)| send_file_error(file, name, errno))
}

/// A recv_file of up to `len` bytes from `src` into `file` at `offset`: `file` open for writing,
/// without O_APPEND (the bytes land at `offset`) or O_DIRECT (the pipe's pages have no alignment
/// to give), the range within the largest offset; `src` a stream socket, pipe or FIFO (its name
/// for errors comes back). `len` bounds no allocation: each round moves at most a pipe's size,
/// in the kernel.
pub(crate) fn recv_file(
    file: &File,
    offset: u64,
    len: u64,
    src: std::os::fd::BorrowedFd<'_>,
) -> Result<std::path::PathBuf> {
    const OP: &str = "recv_file";
    access(file, OP, file.flags().writable, "write(true)")?;
    check_end(OP, offset, len)?;
    let refuse = |what: &str, how: &str| {
        Error::invalid(
            OP,
            format!(
                "{} is open with {what}: recv_file writes at the offset it is given through a \
                 pipe; {how}",
                file.path().display()
            ),
        )
    };
    if file.flags().append {
        return Err(refuse(
            "O_APPEND",
            "open it without append and pass the offset",
        ));
    }
    if file.flags().direct {
        return Err(refuse(
            "O_DIRECT",
            "open it without direct, or receive into a buffer and write that",
        ));
    }
    match op::send_file::check_dest(src) {
        Ok((_, name)) => Ok(name),
        Err((errno, name)) => Err(Error::PathPair {
            op: OP,
            from: name,
            to: file.path().to_path_buf(),
            errno,
        }),
    }
}

/// The op's own duplicate of a checked `dest` (named `name`), or the error (EMFILE).
pub(crate) fn send_file_dup(
    file: &File,
    dest: std::os::fd::BorrowedFd<'_>,
    name: &std::path::Path,
) -> Result<op::send_file::Dest> {
    op::send_file::dup_dest(dest).map_err(|errno| send_file_error(file, name.to_path_buf(), errno))
}

fn send_file_error(file: &File, to: std::path::PathBuf, errno: i32) -> Error {
    Error::PathPair {
        op: "send_file",
        from: file.path().to_path_buf(),
        to,
        errno,
    }
}

/// A sync_file_range of `len` bytes at `offset` with `flags`: `len` fits the SQE's 32 bits.
pub(crate) fn sync_file_range(
    offset: u64,
    len: u64,
    flags: op::sync_range::SyncRangeFlags,
) -> Result<IoOp> {
    check_end("sync_file_range", offset, len)?;
    let len = u32::try_from(len).map_err(|_| {
        Error::invalid(
            "sync_file_range",
            format!("length {len} is more than 4 GiB - 1: split it, or pass 0 for \"to the end\""),
        )
    })?;
    Ok(IoOp::File(Box::new(op::sync_range::SyncRange {
        offset,
        len,
        flags,
    })))
}

/// An fadvise of `len` bytes at `offset` (0: to the end of the file): `len` fits the SQE's 32
/// bits.
pub(crate) fn fadvise_op(
    offset: u64,
    len: u64,
    advice: crate::op::fadvise::Advice,
) -> Result<IoOp> {
    check_end("fadvise", offset, len)?;
    let len = u32::try_from(len).map_err(|_| {
        Error::invalid(
            "fadvise",
            format!("length {len} is more than 4 GiB - 1: split it, or pass 0 for \"to the end\""),
        )
    })?;
    Ok(IoOp::File(Box::new(op::fadvise::Fadvise {
        offset,
        len,
        advice,
    })))
}

/// A vectored read of `lens` or write of buffers of `lens` at `offset`.
pub(crate) fn vectored(
    file: &File,
    op: &'static str,
    offset: u64,
    lens: impl Iterator<Item = usize>,
    count: usize,
    write: bool,
    limits: Limits,
) -> Result<()> {
    if count > op::vectored::MAX_IOVECS {
        return Err(Error::invalid(
            op,
            format!(
                "{count} buffers, more than IOV_MAX ({}): split the request",
                op::vectored::MAX_IOVECS
            ),
        ));
    }
    if file.is_direct() {
        return Err(Error::invalid(
            op,
            format!(
                "{} is open with O_DIRECT: vectored I/O needs aligned buffers, use read/write",
                file.path().display()
            ),
        ));
    }
    let total = lens.fold(0usize, |a, n| a.saturating_add(n));
    let (allowed, how) = if write {
        (file.flags().writable, "write(true)")
    } else {
        (file.flags().readable, "read(true)")
    };
    access(file, op, allowed, how)?;
    check_size(file, op, total, limits)?;
    check_end(op, offset, total as u64)
}

/// An append of `len` bytes: the file must be open with `append(true)`.
pub(crate) fn append(file: &File, len: usize, limits: Limits) -> Result<()> {
    if !file.flags().append {
        return Err(Error::BadHandle(format!(
            "append on {}: the file was not opened with append(true) (O_APPEND), so where the \
             data lands is not the end of the file; open it with append(true)",
            file.path().display()
        )));
    }
    check_size(file, "append", len, limits)
}

/// An operation on `path`, routed and ordered by its parent directory (`dir_of`, or the path's
/// own parent): the path as a C string, the order target, and the shard. Blocks on stat(2) of the
/// directory (like `open`).
/// Directories' identities by path, so routing a path operation costs a stat(2) only the first
/// time its directory is seen (not on every call, which would block async callers each time).
/// A directory replaced at the same path keeps its old route until the cache is cleared (when
/// full): its operations still act on the path; only their order relative to the new
/// directory's handle is then not kept.
static DIR_KEYS: std::sync::Mutex<Option<std::collections::HashMap<std::path::PathBuf, FileKey>>> =
    std::sync::Mutex::new(None);

/// Directories remembered at most (the cache starts over when full).
const DIR_KEYS_MAX: usize = 4096;

/// The identity of directory `parent` (for errors, `routed` is the path the op names).
fn dir_key(op: &'static str, routed: &Path, parent: &Path) -> Result<FileKey> {
    let lock = || DIR_KEYS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(key) = lock().as_ref().and_then(|m| m.get(parent).copied()) {
        return Ok(key);
    }
    let pc = op::c_path(op, parent)?;
    // SAFETY: stat writes into the local struct only; `pc` is NUL-terminated and outlives it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::stat(pc.as_ptr(), &mut st) } != 0 {
        return Err(Error::io(
            op,
            Some(routed.to_path_buf()),
            None,
            crate::numa::last_errno(),
        ));
    }
    let key = FileKey {
        dev: st.st_dev,
        ino: st.st_ino,
    };
    if !parent.is_absolute() {
        return Ok(key); // relative: it depends on the working directory, which may change
    }
    let mut guard = lock();
    let map = guard.get_or_insert_with(Default::default);
    if map.len() >= DIR_KEYS_MAX {
        map.clear();
    }
    map.insert(parent.to_path_buf(), key);
    Ok(key)
}

/// Forgets what is remembered of `dir` and the directories under it (the library removed or
/// renamed it: a directory made there later is another one).
pub(crate) fn forget_dirs(dir: &Path) {
    let mut guard = DIR_KEYS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(map) = guard.as_mut() {
        map.retain(|p, _| !p.starts_with(dir));
    }
}

pub(crate) fn path_op(
    op: &'static str,
    path: &Path,
    dir_of: Option<&Path>,
    shards: usize,
) -> Result<(CString, PathTarget, usize)> {
    let c = op::c_path(op, path)?;
    let routed = dir_of.unwrap_or(path);
    let parent = match routed.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => routed, // the root
    };
    let key = dir_key(op, routed, parent)?;
    let target = PathTarget {
        key,
        path: Arc::from(path),
    };
    Ok((c, target, crate::router::shard_for(key, shards)))
}

/// An operation on the directory `path` itself (read_dir), routed and ordered by its own
/// identity (the order list the path operations inside it use): the path as a C string, the
/// order target, and the shard. Blocks on stat(2) of the directory the first time it is seen.
pub(crate) fn dir_op(
    op: &'static str,
    path: &Path,
    shards: usize,
) -> Result<(CString, PathTarget, usize)> {
    let c = op::c_path(op, path)?;
    let dir = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    let key = dir_key(op, path, dir)?;
    let target = PathTarget {
        key,
        path: Arc::from(path),
    };
    Ok((c, target, crate::router::shard_for(key, shards)))
}

fn access(file: &File, op: &'static str, allowed: bool, how: &str) -> Result<()> {
    if file.flags().directory {
        return Err(Error::BadHandle(format!(
            "{op} on {}: it is a directory handle (open_dir / directory(true)); only fsync, \
             metadata and close work on it",
            file.path().display()
        )));
    }
    if !allowed {
        return Err(Error::BadHandle(format!(
            "{op} on {}: the file was not opened for this; open it with {how}",
            file.path().display()
        )));
    }
    Ok(())
}

fn check_size(file: &File, op: &'static str, len: usize, limits: Limits) -> Result<()> {
    if len > limits.max_request {
        return Err(Error::invalid(
            op,
            format!(
                "{} bytes asked for on {}, more than the executor's maximum request size of {} \
                 bytes: split the request, or raise ExecutorBuilder::max_request_size",
                len,
                file.path().display(),
                limits.max_request
            ),
        ));
    }
    Ok(())
}

fn check_end(op: &'static str, offset: u64, len: u64) -> Result<()> {
    if offset
        .checked_add(len)
        .is_none_or(|end| end > i64::MAX as u64)
    {
        return Err(Error::invalid(
            op,
            format!("offset {offset} + length {len} overflows the largest file offset"),
        ));
    }
    Ok(())
}

/// Access mode, size limit, overflow, O_DIRECT alignment.
fn check_rw(
    file: &File,
    op: &'static str,
    offset: u64,
    len: usize,
    allowed: bool,
    limits: Limits,
) -> Result<()> {
    if file.flags().directory {
        return access(file, op, allowed, "");
    }
    if !allowed {
        let (doing, how) = if op == "read" {
            ("reading", "read(true)")
        } else {
            ("writing", "write(true)")
        };
        return Err(Error::BadHandle(format!(
            "{op} on {}: the file was not opened for {doing}; open it with {how}",
            file.path().display()
        )));
    }
    check_size(file, op, len, limits)?;
    check_end(op, offset, len as u64)?;
    if let Some(align) = file.direct_io_align() {
        let a = u64::from(align.offset);
        if offset % a != 0 || len as u64 % a != 0 {
            return Err(Error::invalid(
                op,
                format!(
                    "{} is open with O_DIRECT: offset {offset} and length {len} must be \
                     multiples of {a}, its filesystem's O_DIRECT alignment (STATX_DIOALIGN, \
                     File::direct_io_align): align them, or open the file without direct",
                    file.path().display()
                ),
            ));
        }
    }
    Ok(())
}
