//! The kinds of operation, each listed once: its name (in stats, JSON and errors), the io_uring
//! opcode it needs and how the blocking path runs it.
//!
//! A kind's [`Code`] is both: its opcode ([`Code::opcode`], probed per shard) and its blocking
//! implementation (its arm in the threads backend's `run_blocking`, which runs the op's SQE
//! with the system call that does the same, on the threads backend and on the blocking path).
//! `driver/sqe.rs` declares the codes from one list and `run_blocking` matches them with no
//! default, so a kind cannot name an opcode the threads backend does not run: that does not
//! build. `None`: the kind needs no opcode (it is not a [`FileOp`](super::FileOp), or its op
//! has no SQE and overrides `run_blocking`, like `size`).

use crate::driver::sqe::Code;
#[cfg(feature = "serde")]
use serde::Serialize;
use std::fmt;

/// Declares [`OpKind`] from one list: the variants, [`OpKind::COUNT`], [`OpKind::ALL`],
/// [`OpKind::name`] and the opcodes stay in step (adding a kind is one line here).
macro_rules! op_kinds {
    ($($(#[$doc:meta])* $variant:ident => $name:literal, $code:expr,)+) => {
        /// The kind of an operation, for per-kind counters.
        ///
        /// `#[non_exhaustive]`: new operations add kinds (match with a `_` arm).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[cfg_attr(feature = "serde", derive(Serialize), serde(rename_all = "snake_case"))]
        #[non_exhaustive]
        pub enum OpKind {
            $($(#[$doc])* $variant,)+
        }

        impl OpKind {
            /// Number of kinds (the length of [`ShardStats::ops`](crate::ShardStats::ops)).
            pub const COUNT: usize = [$(OpKind::$variant,)+].len();

            /// Every kind, in declaration order (`ALL[k.index()] == k`).
            pub const ALL: [OpKind; OpKind::COUNT] = [$(OpKind::$variant,)+];

            /// Position of this kind in [`ShardStats::ops`](crate::ShardStats::ops).
            #[inline]
            pub const fn index(self) -> usize {
                self as usize
            }

            /// Lower-case name, as used in JSON (`"read"`, `"fdatasync"`, ...).
            pub fn name(self) -> &'static str {
                match self {
                    $(OpKind::$variant => $name,)+
                }
            }

            /// The opcode the kind needs and its blocking implementation (see the module docs).
            pub(crate) const fn code(self) -> Option<Code> {
                match self {
                    $(OpKind::$variant => $code,)+
                }
            }
        }
    };
}

op_kinds! {
    /// Opening a file.
    Open => "open", Some(Code::Openat),
    /// Reading from a file.
    Read => "read", None,
    /// Writing to a file.
    Write => "write", None,
    /// `fsync`.
    Fsync => "fsync", Some(Code::Fsync),
    /// `fdatasync`.
    Fdatasync => "fdatasync", Some(Code::Fsync),
    /// Closing a file.
    Close => "close", None,
    /// `fallocate`.
    Fallocate => "fallocate", Some(Code::Fallocate),
    /// Querying a file's size.
    Size => "size", None,
    /// A closure run on the shard thread.
    Task => "task", None,
    /// `statx` of an open file or of a path (metadata, stat).
    Statx => "statx", Some(Code::Statx),
    /// `ftruncate` (set_len).
    Truncate => "truncate", Some(Code::Ftruncate),
    /// `unlinkat` of a file.
    Unlink => "unlink", Some(Code::Unlinkat),
    /// `unlinkat(AT_REMOVEDIR)` of a directory.
    RemoveDir => "remove_dir", Some(Code::Unlinkat),
    /// `mkdirat`.
    Mkdir => "mkdir", Some(Code::Mkdirat),
    /// `renameat2`.
    Rename => "rename", Some(Code::Renameat),
    /// `readv` (read_vectored).
    Readv => "readv", Some(Code::Readv),
    /// `writev` (write_vectored).
    Writev => "writev", Some(Code::Writev),
    /// A write at the end of an O_APPEND file that reports where it landed.
    Append => "append", Some(Code::Write),
    /// `sync_file_range`.
    SyncFileRange => "sync_file_range", Some(Code::SyncFileRange),
    /// `posix_fadvise` (fadvise).
    Fadvise => "fadvise", Some(Code::Fadvise),
    /// `linkat` (hard_link).
    HardLink => "hard_link", Some(Code::Linkat),
    /// `symlinkat`.
    Symlink => "symlink", Some(Code::Symlinkat),
    /// `linkat` of an open file (link_into: an O_TMPFILE file given a name).
    LinkInto => "link_into", Some(Code::Linkat),
    /// A directory listing (`getdents64`, read_dir). Its first round opens the directory; its
    /// getdents64 rounds have no opcode and run on the shard thread.
    ReadDir => "read_dir", Some(Code::Openat),
    /// `copy_file_range` between two files (copy_range_to). No opcode: run_blocking on the
    /// shard thread (`copy_range.rs` says why).
    CopyFileRange => "copy_file_range", None,
    /// `FICLONERANGE` between two files (clone_range_to: reflink). No opcode, as
    /// `copy_file_range`.
    CloneRange => "clone_range", None,
    /// A file's bytes to a socket or pipe (send_file): SPLICE rounds through a pipe.
    SendFile => "send_file", Some(Code::Splice),
    /// A socket's or pipe's bytes into a file (recv_file): SPLICE rounds through a pipe.
    RecvFile => "recv_file", Some(Code::Splice),
    /// send_file of an O_DIRECT file: READ into the op's buffer, then SEND_ZC (6.0) or SEND.
    SendFileDirect => "send_file_direct", Some(Code::Read),
    /// Accepting a connection on a listening socket (`accept4`).
    Accept => "accept", Some(Code::Accept),
    /// Connecting a socket (`connect`).
    Connect => "connect", Some(Code::Connect),
    /// Receiving from a connected socket (`recv`).
    Recv => "recv", Some(Code::Recv),
    /// Receiving into a shard's receive buffer (`TcpStream::recv_pooled`): RECV with a buffer
    /// the kernel selects from the shard's provided-buffer ring, or POLL_ADD then RECV.
    RecvPooled => "recv_pooled", Some(Code::Recv),
    /// A connection's chunks through a `RecvStream` (`TcpStream::recv_stream`): a multishot RECV
    /// with buffers the kernel selects from the shard's ring (Linux 6.0), or `recv_pooled`'s
    /// rounds; each chunk counted as one.
    RecvStream => "recv_stream", Some(Code::Recv),
    /// Sending on a connected socket (`send`).
    Send => "send", Some(Code::Send),
    /// Shutting down one or both directions of a connection (`shutdown`).
    Shutdown => "shutdown", Some(Code::Shutdown),
    /// A duplicate of a socket's descriptor for an op on another shard (`TcpStream::send_file`).
    /// No opcode: `fcntl` on the shard thread.
    Dup => "dup", None,
}

impl OpKind {
    /// Whether the op's time is spent waiting for a socket's peer (accept, connect, recv,
    /// send; send_file and recv_file, whose rounds wait for a socket's room or input), not on
    /// a device. Such rounds are taken out of the ring for `submit_to` closures
    /// (`cancel::park_peer_ops`), which would otherwise wait for a silent peer.
    pub(crate) fn waits_for_peer(self) -> bool {
        matches!(
            self,
            OpKind::Accept
                | OpKind::Connect
                | OpKind::Recv
                | OpKind::RecvPooled
                | OpKind::RecvStream
                | OpKind::Send
                | OpKind::SendFile
                | OpKind::RecvFile
        )
    }

    /// The opcode the kind needs from the kernel, for probing (`None`: it needs none, or is not
    /// a [`FileOp`](super::FileOp)).
    pub(crate) fn opcode(self) -> Option<u8> {
        self.code().map(Code::opcode)
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind with an opcode runs on the threads backend and on the blocking path: the
    /// backend knows the opcode (else its SQEs fail there with EINVAL, silently) and does not
    /// keep it to itself as a driver's own (timeouts, polls, cancellations).
    #[test]
    fn every_opcode_has_a_blocking_implementation() {
        for kind in OpKind::ALL {
            let Some(code) = kind.code() else {
                continue;
            };
            let op = code.opcode();
            assert_eq!(kind.opcode(), Some(op));
            assert_eq!(
                Code::of(op),
                Some(code),
                "{kind}: the threads backend does not run opcode {op}"
            );
            assert!(
                !code.driver_only(),
                "{kind}: opcode {op} ({code:?}) is refused on the blocking path"
            );
        }
    }
}
