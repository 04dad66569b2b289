//! size: fstat on the shard thread (cheap and never blocking on a local filesystem), as a
//! barrier so it sees every earlier operation of the file.

use super::{FileOp, OpFd, OpKind};
use io_uring::squeue;
use std::os::fd::RawFd;

/// The file's size.
#[derive(Default)]
pub(crate) struct Size {
    size: u64,
}

impl FileOp for Size {
    fn kind(&self) -> OpKind {
        OpKind::Size
    }

    fn sqe(&mut self, _fd: OpFd) -> Option<squeue::Entry> {
        None // an fstat costs less than a round trip through the ring
    }

    fn run_blocking(&mut self, fd: RawFd) -> i32 {
        // SAFETY: fstat writes into the local struct only.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fd is a descriptor of this shard's file table (or -1, which fails).
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return -crate::numa::last_errno();
        }
        self.size = st.st_size.max(0) as u64;
        0
    }

    fn size_after(&self, known: &mut u64) {
        // Exact: a barrier, nothing of ours ran meanwhile.
        *known = self.size;
    }

    fn value(&self) -> u64 {
        self.size
    }
}
