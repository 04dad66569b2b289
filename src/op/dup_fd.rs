//! dup: a duplicate of a socket's descriptor, made on its shard after the socket's earlier sends
//! or receives (`TcpStream::send_file` hands it to a send_file op, `TcpStream::recv_file` to a
//! recv_file op, which owns and closes it: the shard's own
//! descriptor is never named by an op on another shard, so closing the stream cannot close what
//! such an op is using, nor let a reused number reach it).

use super::{FileOp, Footprint, OpFd, OpKind, Outcome};
use crate::completion::Completer;
use crate::error::{Error, Result};
use io_uring::squeue;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// A close-on-exec duplicate of `fd`, a descriptor of the shard's file table the calling op runs
/// on (its op keeps the file installed meanwhile), or the errno.
pub(crate) fn dup_cloexec(fd: RawFd) -> std::result::Result<OwnedFd, i32> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) takes no memory; `fd` is open (see above).
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(crate::numa::last_errno());
    }
    // SAFETY: `dup` is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// `fcntl(F_DUPFD_CLOEXEC)` of the op's descriptor on its shard thread.
pub(crate) struct DupFd {
    /// What it follows: the socket's earlier sends (`Footprint::Send`) or receives
    /// (`Footprint::Recv`).
    after: Footprint,
    got: Option<OwnedFd>,
    done: Option<Completer<OwnedFd>>,
}

impl DupFd {
    /// A dup after the socket's earlier sends (what is sent through it follows their bytes),
    /// whose descriptor goes to `done`.
    pub(crate) fn after_sends(done: Completer<OwnedFd>) -> DupFd {
        DupFd {
            after: Footprint::Send,
            got: None,
            done: Some(done),
        }
    }

    /// A dup after the socket's earlier receives (what is received through it follows the
    /// bytes they took), whose descriptor goes to `done`.
    pub(crate) fn after_receives(done: Completer<OwnedFd>) -> DupFd {
        DupFd {
            after: Footprint::Recv,
            got: None,
            done: Some(done),
        }
    }
}

impl FileOp for DupFd {
    fn kind(&self) -> OpKind {
        OpKind::Dup
    }

    /// After the socket's earlier sends or receives (see the constructors).
    fn footprint(&self, _known_size: u64) -> Footprint {
        self.after
    }

    fn sqe(&mut self, _fd: OpFd) -> Option<squeue::Entry> {
        None // fcntl: a system call that never blocks, on the shard thread
    }

    fn run_blocking(&mut self, fd: RawFd) -> i32 {
        match dup_cloexec(fd) {
            Ok(dup) => {
                self.got = Some(dup);
                0
            }
            Err(errno) => -errno,
        }
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        Error::io("dup", Some(file.to_path_buf()), None, errno)
    }

    fn complete(&mut self, result: Result<()>) -> Outcome {
        let result = result.and_then(|()| {
            self.got
                .take()
                .ok_or_else(|| Error::io("dup", None, None, libc::EBADF))
        });
        if let Some(done) = self.done.take() {
            done.complete(result);
        }
        Outcome::Delivered { bytes: 0 }
    }

    fn is_cancelled(&self) -> bool {
        self.done.as_ref().is_some_and(Completer::is_cancelled)
    }
}
