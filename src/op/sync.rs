//! fsync and fdatasync (IORING_OP_FSYNC): ordered after every earlier write to the file.

use super::{on_fd, FileOp, Footprint, OpFd, OpKind};
use io_uring::{opcode, squeue, types};

/// fsync, or fdatasync with `datasync`.
pub(crate) struct Sync {
    pub datasync: bool,
}

impl FileOp for Sync {
    fn kind(&self) -> OpKind {
        if self.datasync {
            OpKind::Fdatasync
        } else {
            OpKind::Fsync
        }
    }

    fn footprint(&self, _known_size: u64) -> Footprint {
        Footprint::Sync
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        let flags = if self.datasync {
            types::FsyncFlags::DATASYNC
        } else {
            types::FsyncFlags::empty()
        };
        Some(on_fd!(fd.target, |f| opcode::Fsync::new(f)
            .flags(flags)
            .build()))
    }
}
