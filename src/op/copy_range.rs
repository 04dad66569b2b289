//! copy_file_range and FICLONERANGE (reflink) between two open files of one executor: the
//! first op that names two descriptors.
//!
//! io_uring has no opcode for either (IORING_OP_SPLICE needs a pipe between two files), so both
//! run on the blocking path of the destination's shard: `run_blocking`, never an SQE, on either
//! backend. A copy blocks that shard's thread for one round at a time: at most [`ROUND_MAX`]
//! bytes per copy_file_range call (the rest is another round, so other ops of the shard run in
//! between); a clone is one ioctl (the filesystem shares extents: no data moves).
//!
//! The second descriptor. The source may live on another shard, whose file table only that
//! shard touches. So a copy is two ops, both sent when it is requested:
//! - [`CopyRange`] to the destination's shard, a barrier in the destination's order list: it
//!   starts after every earlier operation on the destination, and every later one waits for it
//!   (a read sent after the copy sees it). Its first round waits, without blocking the shard,
//!   for the source's descriptor: a POLL_ADD on the eventfd of the copy's [`Handoff`];
//! - [`SourceFd`] to the source's shard, ordered like a read of the whole source file: it runs
//!   after every earlier write, set_len or fallocate of the source sent through the executor,
//!   duplicates the shard's descriptor (`F_DUPFD_CLOEXEC`, a reference the copy then owns),
//!   hands it over and writes the eventfd. Whatever happens to it (an error, a cancellation,
//!   shutdown, a dead shard), dropping it hands over an error instead, so the copy never waits
//!   forever.
//!
//! Writes to the source sent after the copy are ordered after [`SourceFd`] only: they may land
//! before or during the copy, as with two threads calling copy_file_range and pwrite.

use super::{FileOp, Footprint, OpFd, OpKind, Outcome};
use crate::completion::Completer;
use crate::error::{Error, Result};
use io_uring::{opcode, squeue, types};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The most bytes one blocking copy_file_range call is asked for: it bounds how long a copy
/// holds its shard's thread at once (a round of 1 MiB from the page cache takes well under a
/// millisecond; from a disk, one read of that size).
pub(crate) const ROUND_MAX: u64 = 1 << 20;

/// What to do with the range: copy it (copy_file_range; the filesystem may share extents
/// itself) or share its extents (FICLONERANGE: reflink, or an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum How {
    Copy,
    Clone,
}

impl How {
    fn kind(self) -> OpKind {
        match self {
            How::Copy => OpKind::CopyFileRange,
            How::Clone => OpKind::CloneRange,
        }
    }
}

/// Where the source's shard leaves the source's descriptor (or why there is none) for the
/// destination's shard, and the eventfd that says it is there.
pub(crate) struct Handoff {
    efd: OwnedFd,
    slot: Mutex<Option<Result<OwnedFd>>>,
}

impl Handoff {
    /// A handoff with its eventfd (non-blocking, close-on-exec).
    pub(crate) fn new(op: &'static str) -> Result<Arc<Handoff>> {
        // SAFETY: eventfd takes no memory.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(Error::io(op, None, None, crate::numa::last_errno()));
        }
        Ok(Arc::new(Handoff {
            // SAFETY: a new descriptor nothing else owns.
            efd: unsafe { OwnedFd::from_raw_fd(efd) },
            slot: Mutex::new(None),
        }))
    }

    /// Hands over `r` (only the first call counts) and wakes the poll.
    fn give(&self, r: Result<OwnedFd>) {
        {
            let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_some() {
                return;
            }
            *slot = Some(r);
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to our own eventfd (non-blocking; a full
        // counter cannot happen with one write per handoff).
        unsafe { libc::write(self.efd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn take(&self) -> Option<Result<OwnedFd>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The copy itself, on the destination's shard (the op's file is the destination).
pub(crate) struct CopyRange {
    how: How,
    handoff: Arc<Handoff>,
    /// The source's descriptor, once handed over: a duplicate owned by the op.
    src: Option<OwnedFd>,
    /// Why there is none (the source's step failed).
    failed: Option<Error>,
    /// The round in flight is the wait for the handoff (a POLL_ADD).
    waiting: bool,
    src_path: Arc<Path>,
    src_off: u64,
    dst_off: u64,
    len: u64,
    /// Bytes copied so far (rounds done).
    copied: u64,
    done: Option<Completer<u64>>,
}

impl CopyRange {
    /// The copy (or clone) of `len` bytes at `src_off` of the source (`src_path`, for errors) to
    /// `dst_off` of the op's file, waiting on `handoff` for the source's descriptor.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        how: How,
        handoff: Arc<Handoff>,
        src_path: &Path,
        src_off: u64,
        dst_off: u64,
        len: u64,
        done: Completer<u64>,
    ) -> CopyRange {
        CopyRange {
            how,
            handoff,
            src: None,
            failed: None,
            waiting: false,
            src_path: Arc::from(src_path),
            src_off,
            dst_off,
            len,
            copied: 0,
            done: Some(done),
        }
    }

    /// Takes what the source's shard handed over, if it has.
    fn collect(&mut self) -> bool {
        if self.src.is_some() || self.failed.is_some() {
            return true;
        }
        match self.handoff.take() {
            Some(Ok(fd)) => self.src = Some(fd),
            Some(Err(e)) => self.failed = Some(e),
            None => return false,
        }
        true
    }
}

/// `struct file_clone_range` of `<linux/fs.h>`, FICLONERANGE's argument.
#[repr(C)]
struct FileCloneRange {
    src_fd: i64,
    src_offset: u64,
    src_length: u64,
    dest_offset: u64,
}

/// `FICLONERANGE` = `_IOW(0x94, 13, struct file_clone_range)`.
const FICLONERANGE: libc::c_ulong = 0x4020_940d;
const _: () = assert!(std::mem::size_of::<FileCloneRange>() == 32);

impl FileOp for CopyRange {
    fn kind(&self) -> OpKind {
        self.how.kind()
    }

    // The default footprint: a barrier on the destination (it writes there, and the source may
    // be the same inode).

    fn sqe(&mut self, _fd: OpFd) -> Option<squeue::Entry> {
        if self.collect() {
            return None; // no opcode for the copy: see the module docs
        }
        // Wait for the source's descriptor without holding the shard.
        self.waiting = true;
        let events = libc::POLLIN as u32;
        Some(opcode::PollAdd::new(types::Fd(self.handoff.efd.as_raw_fd()), events).build())
    }

    fn run_blocking(&mut self, fd: RawFd) -> i32 {
        if !self.collect() {
            // Not reached (`sqe` waits first); were it, the round is simply tried again.
            return -libc::EINTR;
        }
        if self.failed.is_some() {
            return -libc::ECANCELED; // `error` reports the source's error
        }
        let Some(src) = self.src.as_ref().map(AsRawFd::as_raw_fd) else {
            return -libc::EBADF;
        };
        let rest = self.len - self.copied;
        let ret = match self.how {
            How::Copy => {
                let mut src_off = (self.src_off + self.copied) as libc::loff_t;
                let mut dst_off = (self.dst_off + self.copied) as libc::loff_t;
                let n = rest.min(ROUND_MAX) as usize;
                // SAFETY: both offsets are locals the call updates; the descriptors are open
                // (the destination's is the shard's, the source's our duplicate).
                unsafe { libc::copy_file_range(src, &mut src_off, fd, &mut dst_off, n, 0) as i64 }
            }
            How::Clone => {
                let arg = FileCloneRange {
                    src_fd: i64::from(src),
                    src_offset: self.src_off,
                    src_length: self.len,
                    dest_offset: self.dst_off,
                };
                // SAFETY: FICLONERANGE reads one `file_clone_range` from a live local.
                let r = unsafe { libc::ioctl(fd, FICLONERANGE, &arg as *const FileCloneRange) };
                if r == 0 {
                    // All or nothing: the whole range is shared.
                    rest.min(i32::MAX as u64) as i64
                } else {
                    i64::from(r)
                }
            }
        };
        if ret < 0 {
            return -crate::numa::last_errno();
        }
        // A round moves at most ROUND_MAX bytes (a clone reports at most i32::MAX, below).
        ret.min(i64::from(i32::MAX)) as i32
    }

    fn on_result(&mut self, res: i32, _flags: u32, _fd: RawFd) -> super::Step {
        if std::mem::take(&mut self.waiting) {
            return super::Step::Again; // handed over: now the copy
        }
        if self.how == How::Clone {
            self.copied = self.len;
            return super::Step::Done;
        }
        self.copied += res as u64;
        // 0: the source ended (a short copy at end of file).
        if res == 0 || self.copied >= self.len {
            super::Step::Done
        } else {
            super::Step::Again
        }
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        if let Some(e) = &self.failed {
            return e.clone();
        }
        Error::PathPair {
            op: self.how.kind().name(),
            from: self.src_path.to_path_buf(),
            to: file.to_path_buf(),
            errno,
        }
    }

    /// At least `dst_off + copied`, if it copied anything: a copy of nothing (the source ends
    /// before `src_off`; a clone to the source's end, whose length is not known here) past the
    /// destination's end does not extend it.
    fn size_after(&self, known: &mut u64) {
        if let Some(end) = super::write::size_at_least(self.dst_off, self.copied, false) {
            *known = (*known).max(end);
        }
    }

    fn complete(&mut self, result: Result<()>) -> Outcome {
        if let Some(done) = self.done.take() {
            done.complete(result.map(|()| self.copied));
        }
        Outcome::Delivered { bytes: self.copied }
    }

    fn is_cancelled(&self) -> bool {
        self.done.as_ref().is_some_and(Completer::is_cancelled)
    }
}

/// On the source's shard, after earlier writes to the source: duplicates its descriptor and
/// hands it to the copy.
pub(crate) struct SourceFd {
    how: How,
    handoff: Arc<Handoff>,
}

impl SourceFd {
    /// The source's step of a copy that waits on `handoff`.
    pub(crate) fn new(how: How, handoff: Arc<Handoff>) -> SourceFd {
        SourceFd { how, handoff }
    }
}

impl FileOp for SourceFd {
    fn kind(&self) -> OpKind {
        self.how.kind()
    }

    /// Like a read of the whole source: after every earlier write of it.
    fn footprint(&self, _known_size: u64) -> Footprint {
        Footprint::read_to_end(0)
    }

    fn sqe(&mut self, _fd: OpFd) -> Option<squeue::Entry> {
        None // a dup: a system call that never blocks
    }

    fn run_blocking(&mut self, fd: RawFd) -> i32 {
        match super::dup_fd::dup_cloexec(fd) {
            Ok(dup) => {
                self.handoff.give(Ok(dup));
                0
            }
            Err(errno) => -errno,
        }
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        Error::io(self.kind().name(), Some(file.to_path_buf()), None, errno)
    }

    fn complete(&mut self, result: Result<()>) -> Outcome {
        if let Err(e) = result {
            self.handoff.give(Err(e));
        }
        Outcome::Delivered { bytes: 0 }
    }
}

impl Drop for SourceFd {
    fn drop(&mut self) {
        // Never ran, never completed (a message dropped unsent): the copy must not wait on.
        self.handoff.give(Err(Error::Cancelled {
            op: self.how.kind().name(),
            path: None,
            written: None,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_known_size_rises_to_the_end_of_what_was_copied_and_not_for_nothing() {
        let (_rx, done) = crate::completion::pair(0, 0);
        let handoff = Handoff::new("copy_file_range").unwrap();
        let mut op = CopyRange::new(How::Copy, handoff, Path::new("src"), 0, 1 << 20, 100, done);
        let mut known = 10;
        op.size_after(&mut known);
        assert_eq!(known, 10, "a copy of nothing past the end");
        op.copied = 30;
        op.size_after(&mut known);
        assert_eq!(known, (1 << 20) + 30);
    }
}
