//! accept (IORING_OP_ACCEPT): one connection from a listening socket, installed in the file
//! table of the listener's shard (not the shard its inode hashes to: a connection lives where
//! it was accepted, the thread-per-core shape) and handed to the task as a `File`.
//!
//! The new descriptor never leaks, as an open's does not (`open.rs`): from its CQE it is an
//! `OwnedFd` in this op (`on_result` takes it before anything looks at the result, even for an
//! accept cancelled meanwhile: a connection that arrives after a cancellation was asked for is
//! still accepted, and then either delivered or closed), and the op ends in one of two ways:
//! `complete(Ok)` moves it into `Message::Install` (whose refusal closes it; an install whose
//! handle nobody waits for any more closes it through the `File`'s drop), or the op is dropped
//! with it (an error, cancellation, shutdown), which closes it.
//!
//! One SQE per accept: a multishot accept (one SQE, a CQE per connection) would need an op that
//! stays in the op table across CQEs, which the runner does not have yet.

use super::open::Installer;
use super::sockaddr::{peer_name, RawAddr};
use super::{on_fd, FileOp, Footprint, OpFd, OpKind, Outcome, Step};
use crate::completion::Completer;
use crate::error::{Error, Result};
use crate::file::File;
use io_uring::{opcode, squeue};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;

/// One accept on a listener of shard `on`.
pub(crate) struct Accept {
    /// The peer's address, written by the kernel (in this boxed op: it does not move).
    addr: RawAddr,
    fd: Option<OwnedFd>,
    exec: Arc<dyn Installer>,
    on: usize,
    done: Option<Completer<File>>,
}

impl Accept {
    pub(crate) fn new(exec: Arc<dyn Installer>, on: usize, done: Completer<File>) -> Self {
        Accept {
            addr: RawAddr::empty(),
            fd: None,
            exec,
            on,
            done: Some(done),
        }
    }
}

impl FileOp for Accept {
    fn kind(&self) -> OpKind {
        OpKind::Accept
    }

    fn footprint(&self, _known_size: u64) -> Footprint {
        Footprint::Unordered
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        self.addr = RawAddr::empty();
        let addr = self.addr.as_mut_ptr();
        let len = &mut self.addr.len as *mut libc::socklen_t;
        Some(on_fd!(fd.target, |f| opcode::Accept::new(f, addr, len)
            .flags(libc::SOCK_CLOEXEC)
            .build()))
    }

    fn on_result(&mut self, res: i32, _fd: RawFd) -> Step {
        // SAFETY: a non-negative ACCEPT result is a new descriptor, ours alone.
        self.fd = Some(unsafe { OwnedFd::from_raw_fd(res) });
        Step::Done
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        Error::io("accept", Some(file.to_path_buf()), None, errno)
    }

    fn complete(&mut self, result: Result<()>) -> Outcome {
        let Some(done) = self.done.take() else {
            return Outcome::Delivered { bytes: 0 };
        };
        match (result, self.fd.take()) {
            (Ok(()), Some(fd)) => {
                let name = peer_name(self.addr.get());
                match crate::file::describe_fd(&fd, &name) {
                    Ok((key, flags)) => {
                        let transit = self.exec.fd_token();
                        Arc::clone(&self.exec).install(
                            Some(self.on),
                            fd,
                            key,
                            flags,
                            &name,
                            done,
                            transit,
                        );
                    }
                    Err(e) => done.complete(Err(e)),
                }
            }
            (Ok(()), None) => done.complete(Err(Error::io("accept", None, None, libc::EBADF))),
            (Err(e), _) => done.complete(Err(e)),
        }
        Outcome::Delivered { bytes: 0 }
    }

    fn is_cancelled(&self) -> bool {
        self.done.as_ref().is_some_and(Completer::is_cancelled)
    }

    fn cancel_in_flight(&self) -> bool {
        true
    }
}
