//! Reading a submission queue entry back: the threads backend runs the very SQEs every operation
//! builds, so it decodes them by the kernel's ABI (`struct io_uring_sqe`, stable since 5.1).

use io_uring::{opcode, squeue};

/// `IOSQE_FIXED_FILE`: `fd` is an index into the registered file table.
pub(crate) const FIXED_FILE: u8 = 1 << 0;
/// `IORING_FSYNC_DATASYNC`.
pub(crate) const FSYNC_DATASYNC: u32 = 1;
/// `IORING_TIMEOUT_ABS`.
pub(crate) const TIMEOUT_ABS: u32 = 1;

/// The fields of one SQE, by the kernel's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sqe {
    pub opcode: u8,
    pub flags: u8,
    pub fd: i32,
    /// `off`, or `addr2` (statx's buffer; rename's, linkat's and symlinkat's new path).
    pub off: u64,
    /// `addr`: the buffer, iovec array, path, timespec, or the `user_data` to cancel.
    pub addr: u64,
    pub len: u32,
    /// The per-opcode flags word (`rw_flags`, `fsync_flags`, `poll32_events`, ...).
    pub op_flags: u32,
    pub user_data: u64,
    /// `file_index` (direct descriptors, e.g. a CLOSE of a registered slot): ringshard uses
    /// none, and the threads backend refuses SQEs that name one. The same word is SPLICE's
    /// `splice_fd_in` (see [`Sqe::splice_fd_in`]).
    pub file_index: u32,
}

impl Sqe {
    /// Decodes `entry`.
    pub(crate) fn of(entry: &squeue::Entry) -> Sqe {
        const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);
        // SAFETY: `squeue::Entry` is `#[repr(C)]` around the kernel's 64-byte `io_uring_sqe`
        // (checked above), which is plain integers: any bit pattern is a valid `[u8; 64]`.
        let b: [u8; 64] = unsafe { std::mem::transmute_copy(entry) };
        let u32_at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | (u64::from(u32_at(i + 4)) << 32);
        Sqe {
            opcode: b[0],
            flags: b[1],
            fd: u32_at(4) as i32,
            off: u64_at(8),
            addr: u64_at(16),
            len: u32_at(24),
            op_flags: u32_at(28),
            user_data: u64_at(32),
            file_index: u32_at(44),
        }
    }

    /// SPLICE's source descriptor (`splice_fd_in`, the word `file_index` shares); a registered
    /// slot when `op_flags` has [`SPLICE_F_FD_IN_FIXED`].
    pub(crate) fn splice_fd_in(&self) -> i32 {
        self.file_index as i32
    }

    /// SPLICE's source offset (`splice_off_in`, in `addr`): `None` for -1 (a pipe: no offset).
    pub(crate) fn splice_off_in(&self) -> Option<i64> {
        (self.addr != u64::MAX).then_some(self.addr as i64)
    }
}

/// `entry` with `optlen` (the word `file_index` shares, at byte 44) set to `optlen`: a multishot
/// RECV's total byte limit (IORING_RECV_MSHOT_LIM; kernels without it refuse the SQE with EINVAL),
/// which `io_uring::opcode::RecvMulti` has no setter for.
pub(crate) fn with_optlen(entry: squeue::Entry, optlen: u32) -> squeue::Entry {
    // SAFETY: `squeue::Entry` is `#[repr(C)]` around the kernel's 64-byte `io_uring_sqe`
    // (asserted in `Sqe::of`), plain integers: any bit pattern of 64 bytes is a valid one, and
    // bytes 44..48 are the `file_index`/`optlen` word of the kernel's layout.
    let mut b: [u8; 64] = unsafe { std::mem::transmute_copy(&entry) };
    b[44..48].copy_from_slice(&optlen.to_ne_bytes());
    // SAFETY: as above, in the other direction.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(b) }
}

/// `SPLICE_F_FD_IN_FIXED`: SPLICE's `splice_fd_in` is a registered slot.
pub(crate) const SPLICE_F_FD_IN_FIXED: u32 = 1 << 31;

/// Declares [`Code`] from one list: each line names a variant and its `io_uring::opcode` type,
/// so [`Code::of`] and [`Code::opcode`] cannot disagree, and a [`Code`] is both an opcode and
/// its blocking implementation (its arm in `threads::run_blocking`, a match with no default: a
/// new line here does not build until that arm exists).
macro_rules! codes {
    ($($variant:ident = $op:ident,)+) => {
        /// The opcodes the threads backend runs, by name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Code {
            $($variant,)+
        }

        impl Code {
            /// Every code, in the list's order.
            #[cfg(test)]
            pub(crate) const ALL: &'static [Code] = &[$(Code::$variant,)+];

            /// The opcode's name, or None for one the threads backend does not run.
            pub(crate) fn of(op: u8) -> Option<Code> {
                match op {
                    $(opcode::$op::CODE => Some(Code::$variant),)+
                    _ => None,
                }
            }

            /// The io_uring opcode.
            pub(crate) const fn opcode(self) -> u8 {
                match self {
                    $(Code::$variant => opcode::$op::CODE,)+
                }
            }
        }
    };
}

codes! {
    Nop = Nop,
    Read = Read,
    Write = Write,
    ReadFixed = ReadFixed,
    WriteFixed = WriteFixed,
    Readv = Readv,
    Writev = Writev,
    Fsync = Fsync,
    Fallocate = Fallocate,
    SyncFileRange = SyncFileRange,
    Statx = Statx,
    Ftruncate = Ftruncate,
    Unlinkat = UnlinkAt,
    Renameat = RenameAt,
    Mkdirat = MkDirAt,
    Openat = OpenAt,
    Fadvise = Fadvise,
    Linkat = LinkAt,
    Symlinkat = SymlinkAt,
    Close = Close,
    Accept = Accept,
    Connect = Connect,
    Recv = Recv,
    Send = Send,
    Shutdown = Shutdown,
    Timeout = Timeout,
    TimeoutRemove = TimeoutRemove,
    PollAdd = PollAdd,
    AsyncCancel = AsyncCancel,
    Splice = Splice,
}

impl Code {
    /// Whether it acts on a socket and may wait for its peer: the threads backend runs it on the
    /// shard thread without blocking, and waits for readiness like a POLL_ADD (never a worker).
    pub(crate) const fn is_socket(self) -> bool {
        matches!(
            self,
            Code::Accept | Code::Connect | Code::Recv | Code::Send | Code::Shutdown
        )
    }

    /// Whether only a driver can run it: it acts on the ring's own state (its timers, polls and
    /// in-flight SQEs), so the blocking path (`threads::run_sqe`) refuses it with EINVAL.
    pub(crate) const fn driver_only(self) -> bool {
        match self {
            Code::Timeout | Code::TimeoutRemove | Code::PollAdd | Code::AsyncCancel => true,
            Code::Nop
            | Code::Read
            | Code::Write
            | Code::ReadFixed
            | Code::WriteFixed
            | Code::Readv
            | Code::Writev
            | Code::Fsync
            | Code::Fallocate
            | Code::SyncFileRange
            | Code::Statx
            | Code::Ftruncate
            | Code::Unlinkat
            | Code::Renameat
            | Code::Mkdirat
            | Code::Openat
            | Code::Fadvise
            | Code::Linkat
            | Code::Symlinkat
            | Code::Close
            | Code::Accept
            | Code::Connect
            | Code::Recv
            | Code::Send
            | Code::Shutdown
            | Code::Splice => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::types;

    #[test]
    fn decodes_what_the_builders_encode() {
        let buf = [0u8; 16];
        let e = opcode::Read::new(types::Fd(7), buf.as_ptr() as *mut u8, 16)
            .offset(4096)
            .rw_flags(libc::RWF_NOWAIT)
            .build()
            .user_data(0xdead_beef_1234);
        let s = Sqe::of(&e);
        assert_eq!(s.opcode, opcode::Read::CODE);
        assert_eq!(Code::of(s.opcode), Some(Code::Read));
        assert_eq!((s.fd, s.off, s.len), (7, 4096, 16));
        assert_eq!(s.addr, buf.as_ptr() as u64);
        assert_eq!(s.op_flags, libc::RWF_NOWAIT as u32);
        assert_eq!(s.user_data, 0xdead_beef_1234);
        assert_eq!(s.flags & FIXED_FILE, 0);

        let e = opcode::Fallocate::new(types::Fixed(3), 8192)
            .offset(100)
            .mode(1)
            .build();
        let s = Sqe::of(&e);
        assert_eq!(Code::of(s.opcode), Some(Code::Fallocate));
        assert_eq!((s.fd, s.off, s.addr, s.len), (3, 100, 8192, 1));
        assert_ne!(s.flags & FIXED_FILE, 0);

        let e = opcode::Fsync::new(types::Fd(5))
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        assert_eq!(Sqe::of(&e).op_flags, FSYNC_DATASYNC);

        let e = opcode::Splice::new(types::Fd(9), 4096, types::Fd(11), -1, 512)
            .flags(libc::SPLICE_F_MORE)
            .build();
        let s = Sqe::of(&e);
        assert_eq!(Code::of(s.opcode), Some(Code::Splice));
        assert_eq!((s.fd, s.splice_fd_in(), s.len), (11, 9, 512));
        assert_eq!((s.splice_off_in(), s.off), (Some(4096), u64::MAX));
        assert_eq!(s.op_flags, libc::SPLICE_F_MORE);
        let e = opcode::Splice::new(types::Fixed(2), -1, types::Fd(11), -1, 1).build();
        let s = Sqe::of(&e);
        assert_eq!((s.splice_fd_in(), s.splice_off_in()), (2, None));
        assert_ne!(s.op_flags & SPLICE_F_FD_IN_FIXED, 0);
    }

    #[test]
    fn each_code_is_its_own_opcode() {
        for &code in Code::ALL {
            assert_eq!(
                Code::of(code.opcode()),
                Some(code),
                "{code:?}: two lines, one opcode"
            );
        }
        assert_eq!(Code::of(u8::MAX), None);
    }
}
