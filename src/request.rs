//! Checks a request before it leaves the caller: one validated constructor per operation, shared
//! by [`Executor`](crate::Executor), [`Batch`](crate::Batch) and [`Session`](crate::Session).
//! What passes here cannot make the shard allocate more than the request can return, overflow a
//! file offset, or break O_DIRECT's alignment rules.

use crate::error::{IoUringError, Result};
use crate::file::File;
use crate::shard::IoOp;

/// The default largest read or write one request may ask for.
pub const DEFAULT_MAX_REQUEST_SIZE: usize = 256 << 20;
/// The largest value [`max_request_size`](crate::ExecutorBuilder::max_request_size) accepts.
pub const MAX_REQUEST_SIZE_LIMIT: usize = 1 << 40;

/// Bounds on what one request may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Largest read or write length, in bytes.
    pub max_request: usize,
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
    read(file, offset, len, limits).map(|()| IoOp::Read { offset, len, buf })
}

/// The checked op of a write of `data` at `offset`.
pub(crate) fn write_op(file: &File, offset: u64, data: Vec<u8>, limits: Limits) -> Result<IoOp> {
    write(file, offset, data.len(), limits).map(|()| IoOp::Write { offset, data })
}

/// An fallocate of `len` bytes at `offset`.
pub(crate) fn fallocate(offset: u64, len: u64) -> Result<()> {
    check_end("fallocate", offset, len)
}

fn check_end(op: &'static str, offset: u64, len: u64) -> Result<()> {
    if offset
        .checked_add(len)
        .is_none_or(|end| end > i64::MAX as u64)
    {
        return Err(IoUringError::invalid(
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
    if !allowed {
        let how = if op == "read" {
            "read(true)"
        } else {
            "write(true)"
        };
        return Err(IoUringError::BadHandle(format!(
            "{op} on {}: the file was not opened for {op}ing; open it with {how}",
            file.path().display()
        )));
    }
    if len > limits.max_request {
        return Err(IoUringError::invalid(
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
    check_end(op, offset, len as u64)?;
    if file.is_direct() && (offset % 4096 != 0 || len % 4096 != 0) {
        return Err(IoUringError::invalid(
            op,
            format!(
                "{} is open with O_DIRECT: offset {offset} and length {len} must be multiples of \
                 4096",
                file.path().display()
            ),
        ));
    }
    Ok(())
}
