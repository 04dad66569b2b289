//! sync_file_range (IORING_OP_SYNC_FILE_RANGE): ordered like fsync, after earlier writes;
//! [`SyncRangeFlags`], its typed flags.

use super::{on_fd, FileOp, Footprint, OpFd, OpKind};
use crate::error::Error;
use io_uring::{opcode, squeue};
use std::path::Path;

/// What a [`sync_file_range`](crate::Executor::sync_file_range) waits for and starts
/// (`SYNC_FILE_RANGE_*`). `WAIT_BEFORE | WRITE | WAIT_AFTER` writes the range out and waits for
/// it; none of them makes it durable (no metadata, no disk cache flush): see the man page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct SyncRangeFlags(u32);

impl SyncRangeFlags {
    /// Wait for writeback of the range already in progress before starting any
    /// (`SYNC_FILE_RANGE_WAIT_BEFORE`).
    pub const WAIT_BEFORE: SyncRangeFlags = SyncRangeFlags(libc::SYNC_FILE_RANGE_WAIT_BEFORE);
    /// Start writeback of the range's dirty pages (`SYNC_FILE_RANGE_WRITE`).
    pub const WRITE: SyncRangeFlags = SyncRangeFlags(libc::SYNC_FILE_RANGE_WRITE);
    /// Wait for the range's writeback to finish (`SYNC_FILE_RANGE_WAIT_AFTER`).
    pub const WAIT_AFTER: SyncRangeFlags = SyncRangeFlags(libc::SYNC_FILE_RANGE_WAIT_AFTER);

    /// No flags (sync_file_range then does nothing).
    pub const fn empty() -> Self {
        SyncRangeFlags(0)
    }

    /// The raw `SYNC_FILE_RANGE_*` bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: SyncRangeFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for SyncRangeFlags {
    type Output = SyncRangeFlags;
    fn bitor(self, rhs: Self) -> Self {
        SyncRangeFlags(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for SyncRangeFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

/// sync_file_range(2) of `len` bytes (0: to the end of the file) at `offset` with `flags`.
pub(crate) struct SyncRange {
    pub offset: u64,
    pub len: u32,
    pub flags: SyncRangeFlags,
}

impl FileOp for SyncRange {
    fn kind(&self) -> OpKind {
        OpKind::SyncFileRange
    }

    fn footprint(&self, _known_size: u64) -> Footprint {
        Footprint::Sync
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        Some(on_fd!(fd.target, |f| opcode::SyncFileRange::new(
            f, self.len
        )
        .offset(self.offset)
        .flags(self.flags.bits())
        .build()))
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        Error::io(
            "sync_file_range",
            Some(file.to_path_buf()),
            Some(self.offset),
            errno,
        )
    }
}
