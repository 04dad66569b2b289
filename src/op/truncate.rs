//! set_len (IORING_OP_FTRUNCATE, Linux 6.9; `ftruncate` on the blocking path): a barrier that
//! sets the file's known size.

use super::{on_fd, FileOp, OpFd};
use crate::stats::OpKind;
use io_uring::{opcode, squeue};
use std::os::fd::RawFd;

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

    fn run_blocking(&mut self, fd: RawFd) -> i32 {
        // SAFETY: no memory is passed; len was checked to fit off_t.
        let ret = unsafe { libc::ftruncate(fd, self.len as libc::off_t) };
        super::syscall_result(i64::from(ret))
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
