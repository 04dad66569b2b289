//! fadvise (IORING_OP_FADVISE; `posix_fadvise` on the threads backend): advice about the file's
//! page cache. Ordered like `sync_file_range`, after earlier writes to the file, so advice such
//! as [`Advice::DontNeed`] covers the data they wrote.

use super::{on_fd, FileOp, Footprint, OpFd, OpKind};
use crate::error::Error;
use io_uring::{opcode, squeue};
use std::path::Path;

/// The advice of [`File::fadvise`](crate::File::fadvise) (`posix_fadvise(2)`'s `POSIX_FADV_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Advice {
    /// No advice: the default readahead (`POSIX_FADV_NORMAL`).
    Normal,
    /// The range will be read in order: a larger readahead window (`POSIX_FADV_SEQUENTIAL`).
    Sequential,
    /// The range will be read in random order: no readahead (`POSIX_FADV_RANDOM`).
    Random,
    /// The data will be used once (`POSIX_FADV_NOREUSE`; since Linux 6.3 it keeps those pages
    /// from being promoted in the page cache's LRU).
    NoReuse,
    /// The range will be needed soon: start reading it into the page cache now
    /// (`POSIX_FADV_WILLNEED`; asynchronous readahead, it does not wait for the reads).
    WillNeed,
    /// The range will not be needed soon: drop its clean cached pages (`POSIX_FADV_DONTNEED`;
    /// dirty pages are written back first where the kernel can, and stay until they are clean).
    DontNeed,
}

impl Advice {
    /// The `POSIX_FADV_*` value.
    pub const fn raw(self) -> i32 {
        match self {
            Advice::Normal => libc::POSIX_FADV_NORMAL,
            Advice::Sequential => libc::POSIX_FADV_SEQUENTIAL,
            Advice::Random => libc::POSIX_FADV_RANDOM,
            Advice::NoReuse => libc::POSIX_FADV_NOREUSE,
            Advice::WillNeed => libc::POSIX_FADV_WILLNEED,
            Advice::DontNeed => libc::POSIX_FADV_DONTNEED,
        }
    }
}

/// fadvise of `len` bytes (0: to the end of the file) at `offset`.
pub(crate) struct Fadvise {
    pub offset: u64,
    /// The SQE's length field is 32 bits wide (checked in `validate::fadvise_op`).
    pub len: u32,
    pub advice: Advice,
}

impl FileOp for Fadvise {
    fn kind(&self) -> OpKind {
        OpKind::Fadvise
    }

    fn footprint(&self, _known_size: u64) -> Footprint {
        Footprint::Sync
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        let len = libc::off_t::from(self.len);
        Some(on_fd!(fd.target, |f| opcode::Fadvise::new(
            f,
            len,
            self.advice.raw()
        )
        .offset(self.offset)
        .build()))
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        Error::io(
            "fadvise",
            Some(file.to_path_buf()),
            Some(self.offset),
            errno,
        )
    }
}
