//! sync_file_range (IORING_OP_SYNC_FILE_RANGE): ordered like fsync, after earlier writes.

use super::{on_fd, FileOp, OpFd};
use crate::error::Error;
use crate::shard::Footprint;
use crate::stats::OpKind;
use io_uring::{opcode, squeue};
use std::path::Path;

/// sync_file_range(2) of `len` bytes (0: to the end of the file) at `offset` with `flags`.
pub(crate) struct SyncRange {
    pub offset: u64,
    pub len: u32,
    pub flags: u32,
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
        .flags(self.flags)
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
