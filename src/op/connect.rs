//! connect (IORING_OP_CONNECT): connects a socket installed on its shard to `addr`. Its
//! address is owned by the op until the CQE; a connect that waits (a peer that does not answer)
//! is taken out of the kernel when its handle is dropped or its deadline passes. A barrier: the
//! socket's receives and sends made after it wait for it.

use super::sockaddr::RawAddr;
use super::{on_fd, FileOp, OpFd, OpKind};
use crate::error::Error;
use io_uring::{opcode, squeue};
use std::net::SocketAddr;
use std::path::Path;

/// One connect to `addr`.
pub(crate) struct Connect {
    addr: RawAddr,
}

impl Connect {
    pub(crate) fn new(addr: &SocketAddr) -> Self {
        Connect {
            addr: RawAddr::of(addr),
        }
    }
}

impl FileOp for Connect {
    fn kind(&self) -> OpKind {
        OpKind::Connect
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        let (addr, len) = (self.addr.as_ptr(), self.addr.len);
        Some(on_fd!(fd.target, |f| opcode::Connect::new(f, addr, len).build()))
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        Error::io("connect", Some(file.to_path_buf()), None, errno)
    }

    fn cancel_in_flight(&self) -> bool {
        true
    }
}
