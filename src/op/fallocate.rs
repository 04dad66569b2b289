//! fallocate (IORING_OP_FALLOCATE): a barrier on its file; [`FallocateMode`], its typed modes.

use super::{on_fd, FileOp, OpFd, OpKind};
use crate::error::Error;
use io_uring::{opcode, squeue};
use std::path::Path;

/// What an [`Executor::fallocate`](crate::Executor::fallocate) does to the range (fallocate(2)'s
/// `FALLOC_FL_*` modes). Filesystems support different subsets: a mode the filesystem lacks
/// fails with errno EOPNOTSUPP (tmpfs has only `Allocate`, `KeepSize` and `PunchHole`; ext4 has
/// no `UnshareRange`), and `CollapseRange`/`InsertRange` need `offset` and `len` to be multiples
/// of the filesystem's block size (else EINVAL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum FallocateMode {
    /// Allocates the range and extends the file to cover it (mode 0).
    #[default]
    Allocate,
    /// Allocates the range without changing the file's size (`FALLOC_FL_KEEP_SIZE`).
    KeepSize,
    /// Deallocates the range: it reads as zeros, the size is unchanged
    /// (`FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`: the kernel requires both).
    PunchHole,
    /// Zeroes the range (allocated, unwritten extents) and extends the file to cover it
    /// (`FALLOC_FL_ZERO_RANGE`).
    ZeroRange,
    /// Zeroes the range without changing the file's size
    /// (`FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE`).
    ZeroRangeKeepSize,
    /// Removes the range and shifts the rest of the file down: the file shrinks by `len`
    /// (`FALLOC_FL_COLLAPSE_RANGE`; the range must end before the end of the file).
    CollapseRange,
    /// Inserts a hole of `len` bytes at `offset`, shifting the rest of the file up: the file grows
    /// by `len` (`FALLOC_FL_INSERT_RANGE`).
    InsertRange,
    /// Gives shared (reflinked) blocks of the range private copies (`FALLOC_FL_UNSHARE_RANGE`;
    /// xfs, btrfs).
    UnshareRange,
}

impl FallocateMode {
    /// The `mode` argument of fallocate(2).
    pub const fn bits(self) -> i32 {
        match self {
            FallocateMode::Allocate => 0,
            FallocateMode::KeepSize => libc::FALLOC_FL_KEEP_SIZE,
            FallocateMode::PunchHole => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            FallocateMode::ZeroRange => libc::FALLOC_FL_ZERO_RANGE,
            FallocateMode::ZeroRangeKeepSize => {
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
            }
            FallocateMode::CollapseRange => libc::FALLOC_FL_COLLAPSE_RANGE,
            FallocateMode::InsertRange => libc::FALLOC_FL_INSERT_RANGE,
            FallocateMode::UnshareRange => libc::FALLOC_FL_UNSHARE_RANGE,
        }
    }

    /// The mode's name in errors and docs (`"punch hole"`).
    pub const fn name(self) -> &'static str {
        match self {
            FallocateMode::Allocate => "allocate",
            FallocateMode::KeepSize => "allocate, keep size",
            FallocateMode::PunchHole => "punch hole",
            FallocateMode::ZeroRange => "zero range",
            FallocateMode::ZeroRangeKeepSize => "zero range, keep size",
            FallocateMode::CollapseRange => "collapse range",
            FallocateMode::InsertRange => "insert range",
            FallocateMode::UnshareRange => "unshare range",
        }
    }
}

/// fallocate(2) of `len` bytes at `offset` with `mode`.
pub(crate) struct Fallocate {
    pub mode: FallocateMode,
    pub offset: u64,
    pub len: u64,
}

impl FileOp for Fallocate {
    fn kind(&self) -> OpKind {
        OpKind::Fallocate
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        Some(on_fd!(fd.target, |f| opcode::Fallocate::new(f, self.len)
            .offset(self.offset)
            .mode(self.mode.bits())
            .build()))
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        // Display says what EOPNOTSUPP and EINVAL mean for fallocate (error.rs).
        Error::io(
            "fallocate",
            Some(file.to_path_buf()),
            Some(self.offset),
            errno,
        )
    }

    fn size_at_admit(&self, known: &mut u64) {
        // A collapse shrinks the file: at least `offset` bytes remain (the range ended inside it).
        if self.mode == FallocateMode::CollapseRange {
            *known = (*known).min(self.offset);
        }
    }

    fn sets_size(&self) -> bool {
        self.mode == FallocateMode::CollapseRange
    }

    fn size_after(&self, known: &mut u64) {
        match self.mode {
            // These extend the file to at least offset + len.
            FallocateMode::Allocate | FallocateMode::ZeroRange => {
                *known = (*known).max(self.offset.saturating_add(self.len));
            }
            // The file grew by len: what was known to be there moved up.
            FallocateMode::InsertRange => *known = known.saturating_add(self.len),
            _ => {}
        }
    }
}
