//! append: a write at the end of an O_APPEND file that reports where it landed.
//!
//! The data goes out with IORING_OP_WRITE at offset -1 (the file position; with O_APPEND the
//! kernel moves it to the end of the file and writes there, atomically with respect to other
//! appenders, other processes included). The descriptor's file position is then the end of what
//! was written: `lseek(fd, 0, SEEK_CUR)` on the shard thread, minus the bytes written, is where
//! the data landed. The position belongs to the shard's open file description alone (other
//! processes' appends do not move it), and appends to one file are barriers (one at a time), and
//! reads and writes with offsets do not touch it, so the answer is exact. A short write (a full
//! disk, RLIMIT_FSIZE, a signal) is continued at the new end of the file: if another process
//! appended in between, the data is then in two pieces and the call fails with EIO rather than
//! report a range that is not the data's.

use super::{on_fd, FileOp, OpFd, OpKind, Outcome, Step};
use crate::completion::Completer;
use crate::error::{Error, Result};
use io_uring::{opcode, squeue};
use std::os::fd::RawFd;
use std::path::Path;

/// Where [`Executor::append`](crate::Executor::append)'s data landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Appended {
    /// The file offset of the first byte.
    pub offset: u64,
    /// Bytes written (all of the data).
    pub len: usize,
}

/// An append of `data`.
pub(crate) struct Append {
    data: Vec<u8>,
    done: usize,
    /// Where the first piece landed.
    start: Option<u64>,
    /// The end of the last piece (the file position after it).
    end: u64,
    /// The data landed in more than one piece, not contiguous.
    split: bool,
    reply: Option<Completer<Appended>>,
}

impl Append {
    pub(crate) fn new(data: Vec<u8>, done: Completer<Appended>) -> Self {
        Append {
            data,
            done: 0,
            start: None,
            end: 0,
            split: false,
            reply: Some(done),
        }
    }
}

impl FileOp for Append {
    fn kind(&self) -> OpKind {
        OpKind::Append
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        let rest = &self.data[self.done..];
        let len = rest.len().min(1 << 30) as u32;
        // Offset -1: the file position, which O_APPEND moves to the end before each write.
        Some(on_fd!(fd.target, |f| opcode::Write::new(
            f,
            rest.as_ptr(),
            len
        )
        .offset(u64::MAX)
        .build()))
    }

    fn on_result(&mut self, res: i32, _flags: u32, fd: RawFd) -> Step {
        if res == 0 && !self.data.is_empty() {
            self.split = true; // no progress: fails with EIO below
            return Step::Done;
        }
        // SAFETY: lseek takes no memory; fd is the op's descriptor.
        let pos = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
        let n = res as usize;
        if pos >= 0 {
            let pos = pos as u64;
            let start = pos.saturating_sub(n as u64);
            match self.start {
                None => self.start = Some(start),
                Some(_) if start != self.end => self.split = true,
                Some(_) => {}
            }
            self.end = pos;
        } else {
            self.split = true;
        }
        self.done += n;
        if self.done < self.data.len() && !self.split {
            Step::Again
        } else {
            Step::Done
        }
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        Error::io("append", Some(file.to_path_buf()), None, errno)
    }

    fn size_after(&self, known: &mut u64) {
        *known = (*known).max(self.end);
    }

    fn complete(&mut self, result: Result<()>) -> Outcome {
        let Some(done) = self.reply.take() else {
            return Outcome::Delivered { bytes: 0 };
        };
        let r = result.and_then(|()| match (self.split, self.start) {
            (false, Some(offset)) => Ok(Appended {
                offset,
                len: self.done,
            }),
            (false, None) => Ok(Appended {
                offset: self.end,
                len: 0,
            }),
            (true, _) => Err(Error::io("append", None, self.start, libc::EIO)),
        });
        done.complete(r);
        Outcome::Delivered {
            bytes: self.done as u64,
        }
    }

    fn is_cancelled(&self) -> bool {
        self.reply.as_ref().is_some_and(Completer::is_cancelled)
    }
}
