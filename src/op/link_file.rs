//! link_into (IORING_OP_LINKAT of an open file): gives the file a name, typically an O_TMPFILE
//! file written in full first, so the name appears atomically with all of its data.
//!
//! The file is named by its descriptor as `/proc/self/fd/N` with `AT_SYMLINK_FOLLOW`, which any
//! user may do (a `linkat(fd, "", .., AT_EMPTY_PATH)` needs CAP_DAC_READ_SEARCH). It runs on the
//! file's shard, which owns the descriptor, as a barrier on the file: after every write sent
//! before it, and the descriptor stays open until it is done (a close waits for it). The path
//! strings belong to the op until its CQE.

use super::{cwd, FileOp, OpFd, OpKind, Outcome};
use crate::completion::Completer;
use crate::error::{Error, Result};
use io_uring::{opcode, squeue};
use std::ffi::CString;
use std::path::Path;
use std::sync::Arc;

/// A link of the op's file at `to`.
pub(crate) struct LinkFile {
    to: CString,
    to_path: Arc<Path>,
    /// `/proc/self/fd/N` of the shard's descriptor, made when the SQE is: it must live until the
    /// CQE, so it is kept here.
    proc_path: Option<CString>,
    done: Option<Completer<()>>,
}

impl LinkFile {
    pub(crate) fn new(to: CString, to_path: Arc<Path>, done: Completer<()>) -> Self {
        LinkFile {
            to,
            to_path,
            proc_path: None,
            done: Some(done),
        }
    }
}

impl FileOp for LinkFile {
    fn kind(&self) -> OpKind {
        OpKind::LinkInto
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        // A number's digits never hold a NUL.
        let proc_path = CString::new(format!("/proc/self/fd/{}", fd.raw)).ok()?;
        let from = self.proc_path.insert(proc_path).as_ptr();
        Some(
            opcode::LinkAt::new(cwd(), from, cwd(), self.to.as_ptr())
                .flags(libc::AT_SYMLINK_FOLLOW)
                .build(),
        )
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        Error::PathPair {
            op: "link_into",
            from: file.to_path_buf(),
            to: self.to_path.to_path_buf(),
            errno,
        }
    }

    fn complete(&mut self, result: Result<()>) -> Outcome {
        if let Some(done) = self.done.take() {
            done.complete(result);
        }
        Outcome::Delivered { bytes: 0 }
    }

    fn is_cancelled(&self) -> bool {
        self.done.as_ref().is_some_and(Completer::is_cancelled)
    }
}
