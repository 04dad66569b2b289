//! set_len (IORING_OP_FTRUNCATE, Linux 6.9; `ftruncate` on the blocking path): a barrier that
//! sets the file's known size.

use super::{on_fd, FileOp, OpFd, OpKind};
use io_uring::{opcode, squeue};

/// ftruncate(2) to `len`.
pub(crate) struct Truncate {
    pub len: u64,
}

impl FileOp for Truncate {
    fn kind(&self) -> OpKind {
        OpKind::Truncate
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        Some(on_fd!(fd.target, |f| opcode::Ftruncate::new(f, self.len).build()))
    }

    fn size_at_admit(&self, known: &mut u64) {
        // A shrink is lowered at once: reads admitted from now on past `len` may meet the new end
        // of file, so they must be ordered like reads that may reach it.
        *known = (*known).min(self.len);
    }

    fn sets_size(&self) -> bool {
        true
    }

    fn size_after(&self, known: &mut u64) {
        *known = self.len;
    }
}
