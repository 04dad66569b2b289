//! Operations on paths (IORING_OP_UNLINKAT, MKDIRAT, RENAMEAT, LINKAT, SYMLINKAT): unlink,
//! remove_dir, mkdir, rename, hard_link, symlink. They are routed by their parent directory
//! (rename and hard_link: the destination's; symlink: the new link's) and ordered in
//! that directory's order list as barriers: on one shard, path operations in one directory run one
//! at a time, in the order they were sent, and an `fsync` of the directory's open handle (same
//! inode, so same shard and list) runs after them. The path strings belong to the op until its CQE.

use super::{cwd, FileOp, OpFd, OpKind, Outcome, PathTarget};
use crate::completion::Completer;
use crate::error::{Error, Result};
use io_uring::{opcode, squeue};
use std::ffi::CString;
use std::path::Path;
use std::sync::Arc;

/// Flags of [`Executor::rename`](crate::Executor::rename) (`renameat2(2)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct RenameFlags(u32);

impl RenameFlags {
    /// Fail with EEXIST if the destination exists (`RENAME_NOREPLACE`).
    pub const NOREPLACE: RenameFlags = RenameFlags(libc::RENAME_NOREPLACE);
    /// Swap source and destination atomically; both must exist (`RENAME_EXCHANGE`).
    pub const EXCHANGE: RenameFlags = RenameFlags(libc::RENAME_EXCHANGE);

    /// No flags: replace the destination if it exists, like `rename(2)`.
    pub const fn empty() -> Self {
        RenameFlags(0)
    }

    /// The raw `renameat2` flags.
    pub const fn bits(self) -> u32 {
        self.0
    }
}

impl std::ops::BitOr for RenameFlags {
    type Output = RenameFlags;
    fn bitor(self, rhs: Self) -> Self {
        RenameFlags(self.0 | rhs.0)
    }
}

/// What a path operation does.
pub(crate) enum PathCall {
    Unlink,
    RemoveDir,
    Mkdir {
        mode: u32,
    },
    Rename {
        to: CString,
        to_path: Arc<Path>,
        flags: RenameFlags,
    },
    /// A hard link at `to` to the op's path (`linkat`, not following a final symlink).
    Link {
        to: CString,
        to_path: Arc<Path>,
    },
    /// A symbolic link at the op's path whose contents are `target` (`symlinkat`).
    Symlink {
        target: CString,
        target_path: Arc<Path>,
    },
}

/// One path operation: its call, its (first) path, the directory it is ordered in (whose
/// `path` is the op's first path, for errors).
pub(crate) struct PathOp {
    call: PathCall,
    path: CString,
    target: PathTarget,
    done: Option<Completer<()>>,
}

impl PathOp {
    pub(crate) fn new(
        call: PathCall,
        path: CString,
        target: PathTarget,
        done: Completer<()>,
    ) -> Self {
        PathOp {
            call,
            path,
            target,
            done: Some(done),
        }
    }
}

impl FileOp for PathOp {
    fn kind(&self) -> OpKind {
        match self.call {
            PathCall::Unlink => OpKind::Unlink,
            PathCall::RemoveDir => OpKind::RemoveDir,
            PathCall::Mkdir { .. } => OpKind::Mkdir,
            PathCall::Rename { .. } => OpKind::Rename,
            PathCall::Link { .. } => OpKind::HardLink,
            PathCall::Symlink { .. } => OpKind::Symlink,
        }
    }

    fn path_target(&self) -> Option<PathTarget> {
        Some(self.target.clone())
    }

    fn sqe(&mut self, _fd: OpFd) -> Option<squeue::Entry> {
        let p = self.path.as_ptr();
        Some(match &self.call {
            PathCall::Unlink => opcode::UnlinkAt::new(cwd(), p).build(),
            PathCall::RemoveDir => opcode::UnlinkAt::new(cwd(), p)
                .flags(libc::AT_REMOVEDIR)
                .build(),
            PathCall::Mkdir { mode } => opcode::MkDirAt::new(cwd(), p)
                .mode(*mode as libc::mode_t)
                .build(),
            PathCall::Rename { to, flags, .. } => {
                opcode::RenameAt::new(cwd(), p, cwd(), to.as_ptr())
                    .flags(flags.bits())
                    .build()
            }
            PathCall::Link { to, .. } => opcode::LinkAt::new(cwd(), p, cwd(), to.as_ptr()).build(),
            PathCall::Symlink { target, .. } => {
                opcode::SymlinkAt::new(cwd(), target.as_ptr(), p).build()
            }
        })
    }

    fn error(&self, errno: i32, _file: &Path) -> Error {
        let from = self.target.path.to_path_buf();
        match &self.call {
            PathCall::Rename { to_path, .. } => Error::PathPair {
                op: "rename",
                from,
                to: to_path.to_path_buf(),
                errno,
            },
            PathCall::Link { to_path, .. } => Error::PathPair {
                op: "hard_link",
                from,
                to: to_path.to_path_buf(),
                errno,
            },
            // The link's target first, as in `symlink(target, linkpath)`.
            PathCall::Symlink { target_path, .. } => Error::PathPair {
                op: "symlink",
                from: target_path.to_path_buf(),
                to: from,
                errno,
            },
            _ => Error::io(self.kind().name(), Some(from), None, errno),
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
