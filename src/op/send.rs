//! send (IORING_OP_SEND): the caller's buffer to a connected socket, owned by the op until its
//! last CQE. Sends on one socket run in the order made, beside its receives (`Footprint::Send`);
//! `send_all` sends the rest after a short send, round after round, so no other send of the
//! socket comes between its bytes. A send that waits for a peer who does not read is taken out
//! of the kernel when its handle is dropped or its deadline passes (the bytes already sent stay
//! sent: the error says how many). `MSG_NOSIGNAL`: a peer that closed gives EPIPE, never SIGPIPE.
//! `MSG_MORE` on request (`TcpStream::send_all_more`): TCP keeps a last partial segment back
//! for the next send to fill, as TCP_CORK would, without the two setsockopt calls a cork costs.

use super::{on_fd, FileOp, Footprint, OpFd, OpKind, Outcome, Step};
use crate::buf::RawBuf;
use crate::completion::Completer;
use crate::error::{Error, Result};
use io_uring::{opcode, squeue};
use std::os::fd::RawFd;
use std::path::Path;

/// One send of `buf` (all of it, with `all`; with `more`, MSG_MORE: more follows at once).
pub(crate) struct Send {
    buf: Vec<u8>,
    sent: usize,
    all: bool,
    more: bool,
    done: Option<Completer<RawBuf>>,
}

impl Send {
    pub(crate) fn new(buf: Vec<u8>, all: bool, more: bool, done: Completer<RawBuf>) -> Self {
        Send {
            buf,
            sent: 0,
            all,
            more,
            done: Some(done),
        }
    }
}

impl FileOp for Send {
    fn kind(&self) -> OpKind {
        OpKind::Send
    }

    fn footprint(&self, _known_size: u64) -> Footprint {
        Footprint::Send
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        let rest = &self.buf[self.sent.min(self.buf.len())..];
        let len = rest.len().min(u32::MAX as usize) as u32;
        let ptr = rest.as_ptr();
        let flags = if self.more {
            libc::MSG_NOSIGNAL | libc::MSG_MORE
        } else {
            libc::MSG_NOSIGNAL
        };
        Some(on_fd!(fd.target, |f| opcode::Send::new(f, ptr, len)
            .flags(flags)
            .build()))
    }

    fn on_result(&mut self, res: i32, _flags: u32, _fd: RawFd) -> Step {
        let n = res.max(0) as usize;
        self.sent = self.sent.saturating_add(n).min(self.buf.len());
        if self.all && n > 0 && self.sent < self.buf.len() {
            Step::Again
        } else {
            Step::Done
        }
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        Error::io("send", Some(file.to_path_buf()), None, errno).with_written(self.sent as u64)
    }

    fn abandon_memory(&mut self) {
        // The kernel may still read it: the caller gets an empty buffer back.
        std::mem::forget(std::mem::take(&mut self.buf));
    }

    fn complete(&mut self, result: Result<()>) -> Outcome {
        let buf = std::mem::take(&mut self.buf);
        let sent = self.sent as u64;
        // A send stopped part-way (cancelled, late) says how much went out: the stream's
        // position is known to the caller.
        let result = result.map_err(|e| if sent > 0 { e.with_written(sent) } else { e });
        if let Some(done) = self.done.take() {
            done.complete(Ok((result.map(|()| sent), buf)));
        }
        Outcome::Delivered { bytes: sent }
    }

    fn is_cancelled(&self) -> bool {
        self.done.as_ref().is_some_and(Completer::is_cancelled)
    }

    fn cancel_in_flight(&self) -> bool {
        true
    }
}
