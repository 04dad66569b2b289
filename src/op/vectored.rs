//! read_vectored and write_vectored (IORING_OP_READV / WRITEV). The iovec array and every buffer
//! belong to the op until its CQE; a short transfer is continued from where it stopped (rebuilding
//! the iovecs between rounds, never while the kernel holds them); a read that meets the end of
//! the file returns its vectors truncated there.

use super::{on_fd, FileOp, Footprint, OpFd, OpKind, Outcome, Step};
use crate::completion::Completer;
use crate::error::{Error, Result};
use io_uring::{opcode, squeue};
use std::os::fd::RawFd;
use std::path::Path;

/// The most buffers one vectored request may name (the kernel's `IOV_MAX`).
pub const MAX_IOVECS: usize = 1024;

/// The iovecs of what is left after `done` bytes, given each buffer's base and length.
fn rest(iov: &mut Vec<libc::iovec>, parts: impl Iterator<Item = (*mut u8, usize)>, done: usize) {
    iov.clear();
    let mut start = 0usize;
    for (base, len) in parts {
        let skip = done.saturating_sub(start).min(len);
        start += len;
        if skip < len {
            iov.push(libc::iovec {
                // SAFETY (pointer arithmetic): skip < len, inside the buffer.
                iov_base: unsafe { base.add(skip) }.cast(),
                iov_len: len - skip,
            });
        }
    }
}

/// readv of `lens` bytes into fresh buffers at `offset`.
pub(crate) struct ReadV {
    offset: u64,
    lens: Vec<usize>,
    total: usize,
    /// Allocated with capacity `lens[i]` up front; lengths set at completion.
    bufs: Vec<Vec<u8>>,
    iov: Vec<libc::iovec>,
    done: usize,
    flags: i32,
    reply: Option<Completer<Vec<Vec<u8>>>>,
}

// SAFETY: the raw pointers in `iov` point into `bufs`, which the op owns and moves with it; they
// are used only on the thread that holds the op (the shard's).
unsafe impl Send for ReadV {}

impl ReadV {
    pub(crate) fn new(
        offset: u64,
        lens: Vec<usize>,
        flags: i32,
        done: Completer<Vec<Vec<u8>>>,
    ) -> Self {
        let bufs = lens.iter().map(|&n| Vec::with_capacity(n)).collect();
        ReadV {
            offset,
            total: lens.iter().sum(),
            lens,
            bufs,
            iov: Vec::new(),
            done: 0,
            flags,
            reply: Some(done),
        }
    }

    fn prepare(&mut self) {
        let parts = self
            .bufs
            .iter_mut()
            .zip(&self.lens)
            .map(|(b, &n)| (b.as_mut_ptr(), n));
        rest(&mut self.iov, parts, self.done);
    }
}

impl FileOp for ReadV {
    fn kind(&self) -> OpKind {
        OpKind::Readv
    }

    fn footprint(&self, known_size: u64) -> Footprint {
        let len = self.total as u64;
        if self.offset.saturating_add(len) <= known_size {
            Footprint::read(self.offset, len)
        } else {
            Footprint::read_to_end(self.offset)
        }
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        self.prepare();
        let off = self.offset + self.done as u64;
        Some(on_fd!(fd.target, |f| opcode::Readv::new(
            f,
            self.iov.as_ptr(),
            self.iov.len() as u32
        )
        .offset(off)
        .rw_flags(self.flags)
        .build()))
    }

    fn on_result(&mut self, res: i32, _flags: u32, _fd: RawFd) -> Step {
        advance(&mut self.done, self.total, res) // 0: end of file
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        Error::io("readv", Some(file.to_path_buf()), Some(self.offset), errno)
    }

    fn size_after(&self, known: &mut u64) {
        if let Some(s) = super::read::size_at_least(self.offset, self.done as u64) {
            *known = (*known).max(s);
        }
    }

    fn complete(&mut self, result: Result<()>) -> Outcome {
        let Some(done) = self.reply.take() else {
            return Outcome::Delivered { bytes: 0 };
        };
        if let Err(e) = result {
            done.complete(Err(e));
            return Outcome::Delivered { bytes: 0 };
        }
        let mut start = 0usize;
        let mut bufs = std::mem::take(&mut self.bufs);
        for (b, &n) in bufs.iter_mut().zip(&self.lens) {
            let filled = self.done.saturating_sub(start).min(n);
            start += n;
            // SAFETY: the kernel wrote the first `done` bytes of the iovec sequence, so the
            // first `filled` bytes of this buffer (within its capacity `n`) are initialized.
            unsafe { b.set_len(filled) };
        }
        done.complete(Ok(bufs));
        Outcome::Delivered {
            bytes: self.done as u64,
        }
    }

    fn is_cancelled(&self) -> bool {
        self.reply.as_ref().is_some_and(Completer::is_cancelled)
    }
}

/// writev of `bufs` at `offset` (all of them: short writes are continued).
pub(crate) struct WriteV {
    offset: u64,
    bufs: Vec<Vec<u8>>,
    total: usize,
    iov: Vec<libc::iovec>,
    done: usize,
    flags: i32,
    reply: Option<Completer<usize>>,
}

// SAFETY: as for ReadV: the iovecs point into `bufs`, owned by the op.
unsafe impl Send for WriteV {}

impl WriteV {
    pub(crate) fn new(offset: u64, bufs: Vec<Vec<u8>>, flags: i32, done: Completer<usize>) -> Self {
        WriteV {
            offset,
            total: bufs.iter().map(Vec::len).sum(),
            bufs,
            iov: Vec::new(),
            done: 0,
            flags,
            reply: Some(done),
        }
    }

    fn prepare(&mut self) {
        // The kernel only reads through these pointers (writev).
        let parts = self.bufs.iter_mut().map(|b| (b.as_mut_ptr(), b.len()));
        rest(&mut self.iov, parts, self.done);
    }
}

impl FileOp for WriteV {
    fn kind(&self) -> OpKind {
        OpKind::Writev
    }

    fn footprint(&self, _known_size: u64) -> Footprint {
        Footprint::write(self.offset, self.total as u64)
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        self.prepare();
        let off = self.offset + self.done as u64;
        Some(on_fd!(fd.target, |f| opcode::Writev::new(
            f,
            self.iov.as_ptr(),
            self.iov.len() as u32
        )
        .offset(off)
        .rw_flags(self.flags)
        .build()))
    }

    fn on_result(&mut self, res: i32, _flags: u32, _fd: RawFd) -> Step {
        advance(&mut self.done, self.total, res) // 0: no progress, report what was written
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        Error::io("writev", Some(file.to_path_buf()), Some(self.offset), errno)
    }

    fn size_after(&self, known: &mut u64) {
        if let Some(s) = super::write::size_at_least(self.offset, self.done as u64, false) {
            *known = (*known).max(s);
        }
    }

    fn complete(&mut self, result: Result<()>) -> Outcome {
        if let Some(done) = self.reply.take() {
            done.complete(result.map(|()| self.done));
        }
        Outcome::Delivered {
            bytes: self.done as u64,
        }
    }

    fn is_cancelled(&self) -> bool {
        self.reply.as_ref().is_some_and(Completer::is_cancelled)
    }
}

/// Counts a round's `res` bytes into `done`: another round while short of `total`, done at
/// `total` or when a round moved nothing.
fn advance(done: &mut usize, total: usize, res: i32) -> Step {
    if res == 0 {
        return Step::Done;
    }
    *done = (*done + res as usize).min(total);
    if *done < total {
        Step::Again
    } else {
        Step::Done
    }
}
