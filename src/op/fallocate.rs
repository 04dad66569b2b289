//! fallocate (IORING_OP_FALLOCATE): a barrier on its file.

use super::{on_fd, FileOp, OpFd};
use crate::error::Error;
use crate::stats::OpKind;
use io_uring::{opcode, squeue};
use std::path::Path;

/// fallocate(2) of `len` bytes at `offset` with `mode`.
pub(crate) struct Fallocate {
    pub mode: i32,
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
            .mode(self.mode)
            .build()))
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        Error::io(
            "fallocate",
            Some(file.to_path_buf()),
            Some(self.offset),
            errno,
        )
    }

    fn size_after(&self, known: &mut u64) {
        // Mode 0 allocates and extends the file to at least offset + len.
        if self.mode == 0 {
            *known = (*known).max(self.offset.saturating_add(self.len));
        }
    }
}
