//! recv (IORING_OP_RECV): up to a buffer's capacity from a connected socket, into the caller's
//! own buffer, which the op owns until its CQE (the kernel never writes into memory the caller
//! may free: a dropped or timed-out receive keeps it until the kernel has let go). Receives on
//! one socket run in the order made, beside its sends (`Footprint::Recv`); a receive that waits
//! for a peer who sends nothing is taken out of the kernel when its handle is dropped or its
//! deadline passes.

use super::{on_fd, FileOp, Footprint, OpFd, OpKind, Outcome, Step};
use crate::buf::RawBuf;
use crate::completion::Completer;
use crate::error::{Error, Result};
use io_uring::{opcode, squeue};
use std::os::fd::RawFd;
use std::path::Path;

/// One receive of at most `cap` bytes into `buf`.
pub(crate) struct Recv {
    buf: Vec<u8>,
    cap: usize,
    got: usize,
    done: Option<Completer<RawBuf>>,
}

impl Recv {
    /// A receive into `buf`'s allocation of up to `cap` bytes (grown to `cap` if smaller).
    pub(crate) fn new(mut buf: Vec<u8>, cap: usize, done: Completer<RawBuf>) -> Self {
        buf.clear();
        buf.reserve(cap);
        Recv {
            buf,
            cap,
            got: 0,
            done: Some(done),
        }
    }
}

impl FileOp for Recv {
    fn kind(&self) -> OpKind {
        OpKind::Recv
    }

    fn footprint(&self, _known_size: u64) -> Footprint {
        Footprint::Recv
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        let len = self.cap.min(self.buf.capacity()).min(u32::MAX as usize) as u32;
        let ptr = self.buf.as_mut_ptr();
        Some(on_fd!(fd.target, |f| opcode::Recv::new(f, ptr, len).build()))
    }

    fn on_result(&mut self, res: i32, _flags: u32, _fd: RawFd) -> Step {
        self.got = (res.max(0) as usize).min(self.buf.capacity());
        Step::Done
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        Error::io("recv", Some(file.to_path_buf()), None, errno)
    }

    fn abandon_memory(&mut self) {
        // The kernel may still write into it: the caller gets an empty buffer back.
        std::mem::forget(std::mem::take(&mut self.buf));
    }

    fn complete(&mut self, result: Result<()>) -> Outcome {
        let mut buf = std::mem::take(&mut self.buf);
        let got = if result.is_ok() { self.got } else { 0 };
        // SAFETY: the kernel wrote `got` bytes (at most the capacity, clamped in `on_result`)
        // from the start of the buffer, and its CQE has arrived: it writes nothing more. (A
        // shard that stopped with the receive in the kernel took the buffer first,
        // `abandon_memory`: this is an empty one and `got` is 0, the result being an error.)
        unsafe { buf.set_len(got) };
        if let Some(done) = self.done.take() {
            done.complete(Ok((result.map(|()| got as u64), buf)));
        }
        Outcome::Delivered { bytes: got as u64 }
    }

    fn is_cancelled(&self) -> bool {
        self.done.as_ref().is_some_and(Completer::is_cancelled)
    }

    fn cancel_in_flight(&self) -> bool {
        true
    }
}
