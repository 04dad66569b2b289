//! shutdown (IORING_OP_SHUTDOWN) of one or both directions of a connection. Shutting down the
//! sending side (or both) follows the socket's earlier sends (the FIN goes after their bytes);
//! shutting down only the receiving side waits for nothing (it ends a receive that waits: the
//! receive returns 0).

use super::{on_fd, FileOp, Footprint, OpFd, OpKind};
use crate::error::Error;
use io_uring::{opcode, squeue};
use std::path::Path;

/// shutdown(2) with `how` (`SHUT_RD`, `SHUT_WR`, `SHUT_RDWR`).
pub(crate) struct Shutdown {
    pub how: i32,
}

impl FileOp for Shutdown {
    fn kind(&self) -> OpKind {
        OpKind::Shutdown
    }

    fn footprint(&self, _known_size: u64) -> Footprint {
        if self.how == libc::SHUT_RD {
            Footprint::Unordered
        } else {
            Footprint::Send
        }
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        Some(on_fd!(fd.target, |f| opcode::Shutdown::new(f, self.how).build()))
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        Error::io("shutdown", Some(file.to_path_buf()), None, errno)
    }
}
