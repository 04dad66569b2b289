//! recv_file: bytes from a socket (or pipe) into a file without passing through user space, the
//! mirror of `send_file.rs` (an upload received straight into its file).
//!
//! Two IORING_OP_SPLICEs per round through a pipe of the shard's pool (`crate::pipes`): the
//! source's bytes into the pipe (`fill`: at most the pipe's size and what is left to receive),
//! then the pipe into the file at its offset (`drain`, repeated while the file takes less than
//! the pipe holds), until `len` bytes are in the file or the source ends its stream (then fewer:
//! what came). A socket's received pages are handed to the pipe by reference; the one copy is
//! the page cache's, where a `recv` then `write` copy twice, once through a user buffer.
//!
//! The source. The kernel uses it while the op runs, whatever the caller does with its own
//! descriptor, so the op owns a duplicate (`TcpStream::recv_file` has its stream's shard make it
//! after the stream's earlier receives; `Executor::recv_file` makes one at request time). A
//! source with nothing to read waits: a blocking one in the kernel (an io-wq worker; `poll` on a
//! worker of the threads backend), a non-blocking one (EAGAIN, which io_uring does not retry
//! for SPLICE) with a POLL_ADD for input, then the fill again. A peer that sends nothing keeps
//! it waiting: a deadline, a cancellation or a dropped handle ends the wait (`cancel_in_flight`),
//! and the error says how many bytes reached the file before (`Error::written`). Bytes already
//! received into the pipe are written first (the drain is not cancelled; the op stops after
//! it), so a cancelled or late receive took from its source exactly the bytes that reached the
//! file: the source's next reader gets the byte after them (not after shutdown's grace period,
//! which stops everything). The blocking
//! path, which runs no polls, fails with EAGAIN where the source has nothing yet.
//!
//! **Inline fills.** From a non-blocking source (O_NONBLOCK: accepted and connected shard
//! sockets are) the fill is splice(2) on the shard thread with SPLICE_F_NONBLOCK: it never waits,
//! and a SPLICE on the ring would be handed to an io-wq worker every round.
//! `RINGSHARD_RECV_FILE_INLINE=0` turns it off. The drain (a page-cache write, which may wait
//! for writeback) stays on the ring.
//!
//! The pipe goes back to the pool only empty: bytes received and not yet in the file when the op
//! ends (a file error between fill and drain, shutdown's end) are dropped with it (the pipe is
//! closed), never handed to a later op.
//!
//! Ordering: a write of the range (`Footprint::write`): after earlier reads and writes that
//! overlap it, before later ones.

use super::{on_fd, FileOp, Footprint, OpFd, OpKind, Outcome, Step};
use crate::completion::Completer;
use crate::driver::fd_flags::is_nonblocking;
use crate::error::{Error, Result};
use crate::pipes::Pipe;
use io_uring::{opcode, squeue, types};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// The most bytes one SPLICE is asked for.
const SQE_MAX: u64 = 1 << 30;

/// The round in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Source -> pipe.
    Fill,
    /// Pipe -> file.
    Drain,
}

/// A receive of up to `len` bytes from `src` into the op's file at `offset`.
pub(crate) struct RecvFile {
    src: OwnedFd,
    /// The source as errors name it (`fd 7 (socket)`).
    src_name: PathBuf,
    offset: u64,
    len: u64,
    /// Bytes received into the pipe so far.
    filled: u64,
    /// Bytes the file took so far.
    written: u64,
    /// The source ended its stream (a fill returned 0).
    eof: bool,
    phase: Phase,
    /// The source said EAGAIN (non-blocking, nothing to read): the next round is a POLL_ADD for
    /// input, then the fill again.
    wait_in: bool,
    /// A wait was asked of the blocking path, which runs no polls: the op fails with EAGAIN.
    no_wait: bool,
    pipe: Option<Pipe>,
    /// Why there is no pipe (pipe2's errno: EMFILE, ENFILE).
    no_pipe: Option<i32>,
    /// This round runs on the shard thread (`run_blocking`), chosen by `sqe`.
    inline: bool,
    /// The file took nothing of a non-empty pipe, without an error: the op fails with EIO.
    stuck: bool,
    done: Option<Completer<u64>>,
}

impl RecvFile {
    /// The receive of up to `len` bytes from `src` (named `src_name` in errors, owned and closed
    /// by the op) into the file at `offset` (a file without O_DIRECT or O_APPEND: checked by
    /// `validate::recv_file`).
    pub(crate) fn new(
        src: OwnedFd,
        src_name: PathBuf,
        offset: u64,
        len: u64,
        done: Completer<u64>,
    ) -> RecvFile {
        RecvFile {
            src,
            src_name,
            offset,
            len,
            filled: 0,
            written: 0,
            eof: false,
            phase: Phase::Fill,
            wait_in: false,
            no_wait: false,
            pipe: None,
            no_pipe: None,
            inline: false,
            stuck: false,
            done: Some(done),
        }
    }

    /// Bytes in the pipe, not yet in the file.
    fn in_pipe(&self) -> u64 {
        self.filled - self.written
    }
}

impl RecvFile {
    /// The fill as splice(2) on the shard thread, from a non-blocking source into the op's empty
    /// pipe: it never waits (nothing to read: EAGAIN, and the op polls for input), and moves
    /// page references, no bytes. A SPLICE on the ring is always handed to an io-wq worker (a
    /// wake-up there and one of the shard to hear of it, per round).
    fn fill_inline(&mut self) -> i32 {
        let Some(pipe) = self.pipe.as_ref() else {
            return -self.no_pipe.unwrap_or(libc::EMFILE);
        };
        let n = (self.len - self.filled).min(pipe.cap as u64) as usize;
        // SAFETY: splice names no memory of ours (null offsets: a socket and a pipe have none);
        // both descriptors are the op's, open while it lives.
        let res = unsafe {
            libc::splice(
                self.src.as_raw_fd(),
                std::ptr::null_mut(),
                pipe.write.as_raw_fd(),
                std::ptr::null_mut(),
                n,
                libc::SPLICE_F_NONBLOCK,
            )
        };
        if res < 0 {
            -crate::numa::last_errno()
        } else {
            res.min(i32::MAX as isize) as i32 // at most the pipe's size
        }
    }
}

/// Whether fills from non-blocking sources run on the shard thread:
/// `RINGSHARD_RECV_FILE_INLINE=0` (read once) sends every fill through the ring, for comparisons.
fn inline_fills_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("RINGSHARD_RECV_FILE_INLINE").map_or(true, |v| v != "0"))
}

impl FileOp for RecvFile {
    fn kind(&self) -> OpKind {
        OpKind::RecvFile
    }

    /// A write of the range.
    fn footprint(&self, _known_size: u64) -> Footprint {
        Footprint::write(self.offset, self.len)
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        let src = types::Fd(self.src.as_raw_fd());
        if self.wait_in {
            return Some(opcode::PollAdd::new(src, libc::POLLIN as u32).build());
        }
        if self.pipe.is_none() && self.no_pipe.is_none() {
            match crate::pipes::take() {
                Ok(p) => self.pipe = Some(p),
                Err(errno) => self.no_pipe = Some(errno),
            }
        }
        let pipe = self.pipe.as_ref()?; // none: `run_blocking` reports why
        if self.phase == Phase::Fill && inline_fills_on() && is_nonblocking(self.src.as_raw_fd()) {
            self.inline = true;
            return None; // `run_blocking`: the fill on this thread
        }
        Some(match self.phase {
            Phase::Fill => {
                let n = (self.len - self.filled).min(pipe.cap as u64).min(SQE_MAX) as u32;
                let out = types::Fd(pipe.write.as_raw_fd());
                opcode::Splice::new(src, -1, out, -1, n).build()
            }
            Phase::Drain => {
                let n = self.in_pipe().min(SQE_MAX) as u32;
                // `offset + len` was checked to fit an `off_t` (validate::recv_file).
                let at = (self.offset + self.written) as i64;
                let from = types::Fd(pipe.read.as_raw_fd());
                on_fd!(fd.target, |f| opcode::Splice::new(from, -1, f, at, n)
                    .build())
            }
        })
    }

    fn run_blocking(&mut self, fd: RawFd) -> i32 {
        if std::mem::take(&mut self.inline) {
            return self.fill_inline();
        }
        if self.wait_in {
            // No poll on the blocking path (it would block the shard thread): EAGAIN.
            self.no_wait = true;
            return -libc::EAGAIN;
        }
        let target = OpFd {
            target: crate::pool::Target::Fd(fd),
            raw: fd,
        };
        match self.sqe(target) {
            Some(entry) => crate::driver::threads::run_sqe(&entry),
            None if std::mem::take(&mut self.inline) => self.fill_inline(),
            None => -self.no_pipe.unwrap_or(libc::EMFILE),
        }
    }

    fn on_errno(&mut self, errno: i32) -> Option<Step> {
        if errno == libc::EAGAIN && self.phase == Phase::Fill && !self.no_wait {
            self.wait_in = true;
            return Some(Step::Again);
        }
        None
    }

    fn on_result(&mut self, res: i32, _flags: u32, _fd: RawFd) -> Step {
        if self.wait_in {
            // Input (or the end, or an error the fill will see): fill again.
            self.wait_in = false;
            return Step::Again;
        }
        let n = res.max(0) as u64;
        match self.phase {
            // A fill asks for at least one byte: none is the end of the source's stream.
            Phase::Fill if n == 0 => self.eof = true,
            Phase::Fill => self.filled += n,
            // A file that takes nothing of a non-empty pipe without an error (a broken
            // filesystem): fail with EIO, as a write that makes no progress does, rather than
            // ask again forever or end short, which says the source ended its stream.
            Phase::Drain if n == 0 => {
                self.stuck = true;
                return Step::Done;
            }
            Phase::Drain => self.written += n.min(self.in_pipe()),
        }
        if self.in_pipe() > 0 {
            self.phase = Phase::Drain;
            Step::Again
        } else if self.eof || self.written >= self.len {
            Step::Done
        } else {
            self.phase = Phase::Fill;
            Step::Again
        }
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        Error::PathPair {
            op: OpKind::RecvFile.name(),
            from: self.src_name.clone(),
            to: file.to_path_buf(),
            errno,
        }
    }

    /// At least `offset + written`, if it wrote anything: a receive of nothing (a peer that
    /// ended at once) past the end does not extend the file, and a known size raised to its
    /// offset would let a later read below it skip waiting for a write that extends the file.
    fn size_after(&self, known: &mut u64) {
        if let Some(end) = super::write::size_at_least(self.offset, self.written, false) {
            *known = (*known).max(end);
        }
    }

    fn complete(&mut self, result: Result<()>) -> Outcome {
        let written = self.written;
        // A receive stopped part-way (cancelled, late) says how much reached the file.
        let result = result.map_err(|e| {
            if written > 0 {
                e.with_written(written)
            } else {
                e
            }
        });
        if let Some(done) = self.done.take() {
            done.complete(result.map(|()| written));
        }
        Outcome::Delivered { bytes: written }
    }

    fn failed(&self) -> Option<i32> {
        self.stuck.then_some(libc::EIO)
    }

    fn is_cancelled(&self) -> bool {
        self.done.as_ref().is_some_and(Completer::is_cancelled)
    }

    /// A source may never send: a round that waits for it (a fill, a poll for input) is
    /// cancelled in the kernel. Not while the pipe holds received bytes: those drains land
    /// first (a file write, which ends), and the op stops after them, so a cancelled or late
    /// receive has taken from its source exactly what reached the file (`Error::written`).
    fn cancel_in_flight(&self) -> bool {
        self.in_pipe() == 0
    }
}

impl Drop for RecvFile {
    fn drop(&mut self) {
        // Only an empty pipe goes back (the op is dropped only once nothing of it is in the
        // kernel: the shard leaks an op it stops with in flight).
        if let Some(pipe) = self.pipe.take() {
            let empty = self.in_pipe() == 0;
            crate::pipes::give(pipe, empty);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(offset: u64) -> RecvFile {
        let (_rx, done) = crate::completion::pair(0, 0);
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        RecvFile::new(OwnedFd::from(a), PathBuf::from("src"), offset, 100, done)
    }

    #[test]
    fn the_known_size_rises_to_the_end_of_what_was_written_and_not_for_nothing() {
        let mut f = op(1 << 20);
        let mut known = 10;
        // The peer ended at once: nothing written, the file is as it was.
        f.size_after(&mut known);
        assert_eq!(known, 10);
        f.filled = 30;
        f.written = 30;
        f.size_after(&mut known);
        assert_eq!(known, (1 << 20) + 30);
    }
}
