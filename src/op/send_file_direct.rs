//! send_file of a file open with O_DIRECT: READ into a buffer of the op, then SEND_ZC (Linux 6.0)
//! of what was read for rounds of at least `ExecutorBuilder::send_zc_min` bytes ([`DEFAULT_ZC_MIN`]:
//! never), SEND below it, round after round until `len` bytes are sent or the file ends. (Page-cache files splice:
//! `send_file.rs`.)
//!
//! The buffer. One per op, `CHUNK` bytes (at most; less for a shorter send), aligned for
//! O_DIRECT (the file's `DirectIoAlign`, at least a page); the READ covers the aligned range
//! around the bytes wanted, and the sends take the part asked for. The kernel reads it until a
//! SEND_ZC's notification: a SEND_ZC has two CQEs, the result (with `IORING_CQE_F_MORE`, seen
//! in [`on_more`](FileOp::on_more)) and the notification (`IORING_CQE_F_NOTIF`, the round's
//! last), and the op stays in the shard's op table, counted in flight, until that last one: the
//! next READ into the buffer, and the buffer's free, wait for it, whatever the caller does
//! (deadline, cancel, drop, shutdown: a shard that stops with it in flight leaks it,
//! [`abandon_memory`](FileOp::abandon_memory)).
//!
//! Fallbacks. A kernel without SEND_ZC answers EINVAL (at prep: a CQE without
//! `IORING_CQE_F_MORE`): the round goes again as a SEND, and the shard thread remembers not to
//! try again (one probe per shard thread); the threads backend, which has no SEND_ZC, answers
//! EINVAL once the same way and then sends with `send(2)`. A socket without zero-copy (MPTCP)
//! answers EOPNOTSUPP at issue, in a first CQE with `IORING_CQE_F_MORE` and a notification
//! after it: the round goes again as a SEND after the notification, and this op sends with
//! SEND from then on. A non-blocking destination that is full (EAGAIN) is waited for
//! with a POLL_ADD, as `send_file.rs` does.
//!
//! What the threshold means here. On loopback and on a veth pair between network namespaces the
//! receiving side is local, and the kernel copies zero-copy pages before it queues them for a
//! local socket (`skb_orphan_frags_rx`): SEND_ZC then saves no copy and adds its notification
//! and page pinning. It pays only towards a real NIC; see BENCHMARKS.md ("send_file from
//! O_DIRECT files") for what was measured here and why the default is what it is.

use super::{on_fd, FileOp, Footprint, OpFd, OpKind, Outcome, Step};
use crate::completion::Completer;
use crate::driver::sockopt::getsockopt_int;
use crate::error::{Error, Result};
use crate::file::DirectIoAlign;
use crate::op::send_file::Dest;
use io_uring::{opcode, squeue};
use std::alloc::Layout;
use std::cell::Cell;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

/// The most bytes one round reads and sends.
const CHUNK: usize = 256 * 1024;

/// Sends of this many bytes or more per round use SEND_ZC (below: SEND). Default: never. Measured
/// here (BENCHMARKS.md, loopback and veth: local delivery, where the kernel copies anyway) it
/// cost as much CPU per GiB as a copy or more at every size, and a round's notification waits
/// for the peer's acknowledgement of the round, which with one buffer per op serializes rounds
/// on the round trip (256 KiB per RTT): a server sending through a NIC over short round trips
/// may set `send_zc_min(256 << 10)` (whole rounds only) after measuring.
pub(crate) const DEFAULT_ZC_MIN: u64 = u64::MAX;

/// `IORING_CQE_F_NOTIF`: a SEND_ZC's notification (its buffer is free again).
const CQE_F_NOTIF: u32 = 1 << 3;

thread_local! {
    /// This shard thread's ring refused SEND_ZC once (EINVAL/EOPNOTSUPP): no more tries.
    static ZC_REFUSED: Cell<bool> = const { Cell::new(false) };
}

/// What the destination is: what sends to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DestKind {
    /// A TCP socket: SEND_ZC or SEND.
    Tcp,
    /// Another stream socket (AF_UNIX: no zero-copy there): SEND.
    Socket,
    /// A pipe or FIFO: WRITE.
    Pipe,
}

impl DestKind {
    fn of(fd: RawFd) -> DestKind {
        match getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN) {
            Ok(libc::AF_INET | libc::AF_INET6) => DestKind::Tcp,
            Ok(_) => DestKind::Socket,
            Err(_) => DestKind::Pipe,
        }
    }
}

/// The round in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// File -> buffer.
    Read,
    /// Buffer -> destination (`zc`: as SEND_ZC).
    Send { zc: bool },
    /// Waiting for room on a non-blocking destination.
    Room,
}

/// An aligned heap buffer the op owns.
struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: a plain heap allocation, reached only through the op that owns it.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn new(len: usize, align: usize) -> Option<AlignedBuf> {
        let layout = Layout::from_size_align(len.max(1), align).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc(layout) })?;
        Some(AlignedBuf { ptr, layout })
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`; the op drops it only when no round is in
        // the kernel (the op table keeps the op until its last CQE; abandoned ops leak it).
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// A send of `len` bytes at `offset` of an O_DIRECT file.
pub(crate) struct SendFileDirect {
    /// The destination's duplicate; closed once the handle is answered (the kernel keeps what it
    /// needs for an outstanding notification).
    dest: Option<Dest>,
    dest_kind: DestKind,
    dest_name: PathBuf,
    /// Where the next READ starts (the file's offset of the next byte to send).
    offset: u64,
    /// Bytes left to send.
    left: u64,
    sent: u64,
    align: u64,
    zc_min: u64,
    buf: Option<AlignedBuf>,
    cap: usize,
    /// The bytes read and not yet sent: `buf[start..end]`.
    start: usize,
    end: usize,
    phase: Phase,
    /// A SEND_ZC's result, waiting for its notification.
    zc_result: Option<i32>,
    /// An error a SEND_ZC's first CQE carried (its notification ends the round).
    failed: Option<i32>,
    /// The socket refused SEND_ZC in the round's first CQE: its notification starts the round
    /// again as a SEND.
    zc_refused: bool,
    /// This destination refused SEND_ZC (EOPNOTSUPP: the socket's own refusal, not the
    /// kernel's): SEND to it.
    no_zc: bool,
    file_path: PathBuf,
    done: Option<Completer<u64>>,
}

impl SendFileDirect {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        dest: Dest,
        dest_name: PathBuf,
        file_path: PathBuf,
        offset: u64,
        len: u64,
        align: DirectIoAlign,
        zc_min: u64,
        done: Completer<u64>,
    ) -> Self {
        let page = crate::numa::page_size() as u64;
        let align = u64::from(align.offset.max(align.memory)).max(page);
        // Enough for `len` from an unaligned offset, at most CHUNK (itself a multiple of pages).
        let want = (len.saturating_add(2 * align) / align * align).min(CHUNK as u64) as usize;
        let cap = want.max(align as usize);
        SendFileDirect {
            dest_kind: DestKind::of(dest.raw()),
            dest: Some(dest),
            dest_name,
            offset,
            left: len,
            sent: 0,
            align,
            zc_min,
            buf: AlignedBuf::new(cap, align as usize),
            cap,
            start: 0,
            end: 0,
            phase: Phase::Read,
            zc_result: None,
            failed: None,
            zc_refused: false,
            no_zc: false,
            file_path,
            done: Some(done),
        }
    }

    /// After `n` bytes were sent: the next round.
    fn sent(&mut self, n: usize) -> Step {
        let n = n.min(self.end - self.start);
        self.start += n;
        self.sent += n as u64;
        self.left -= (n as u64).min(self.left);
        self.offset += n as u64;
        if self.left == 0 || n == 0 {
            return Step::Done;
        }
        self.phase = if self.start < self.end {
            self.send_phase()
        } else {
            Phase::Read
        };
        Step::Again
    }

    /// Answers the handle now (the op may stay for a notification: its buffer with it), and
    /// closes the destination's duplicate, which no later round uses.
    fn answer(&mut self, result: Result<u64>) {
        if let Some(done) = self.done.take() {
            done.complete(result);
        }
        self.dest = None;
    }

    /// SEND_ZC was refused with `errno`: EINVAL, the kernel (or the threads backend) has none,
    /// remembered for the shard thread; EOPNOTSUPP, this socket has none, for this op.
    fn refuse_zc(&mut self, errno: i32) {
        if errno == libc::EOPNOTSUPP {
            self.no_zc = true;
        } else {
            ZC_REFUSED.with(|r| r.set(true));
        }
    }

    fn send_phase(&self) -> Phase {
        let zc = self.dest_kind == DestKind::Tcp
            && !self.no_zc
            && (self.end - self.start) as u64 >= self.zc_min
            && !ZC_REFUSED.with(Cell::get);
        Phase::Send { zc }
    }
}

impl FileOp for SendFileDirect {
    fn kind(&self) -> OpKind {
        OpKind::SendFileDirect
    }

    /// A read of the range: after earlier writes to it, side by side with other reads.
    fn footprint(&self, known_size: u64) -> Footprint {
        crate::op::read::footprint(self.offset, self.left, known_size)
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        let Some(buf) = &self.buf else {
            // No memory for the buffer: the round fails (complete says ENOMEM).
            return Some(opcode::Nop::new().build());
        };
        let base = buf.ptr.as_ptr();
        let dest = io_uring::types::Fd(self.dest.as_ref().map_or(-1, Dest::raw));
        Some(match self.phase {
            Phase::Read => {
                let at = self.offset / self.align * self.align;
                let skip = (self.offset - at) as usize;
                let len = (skip as u64 + self.left)
                    .div_ceil(self.align)
                    .saturating_mul(self.align)
                    .min(self.cap as u64) as u32;
                self.start = skip;
                self.end = skip;
                on_fd!(fd.target, |f| opcode::Read::new(f, base, len)
                    .offset(at)
                    .build())
            }
            Phase::Send { zc } => {
                // SAFETY: start <= end <= cap: inside the buffer.
                let ptr = unsafe { base.add(self.start) };
                let len = (self.end - self.start) as u32;
                if self.dest_kind == DestKind::Pipe {
                    opcode::Write::new(dest, ptr, len).offset(u64::MAX).build()
                } else if zc {
                    opcode::SendZc::new(dest, ptr, len)
                        .flags(libc::MSG_NOSIGNAL)
                        .build()
                } else {
                    opcode::Send::new(dest, ptr, len)
                        .flags(libc::MSG_NOSIGNAL)
                        .build()
                }
            }
            Phase::Room => opcode::PollAdd::new(dest, libc::POLLOUT as u32).build(),
        })
    }

    fn on_more(&mut self, res: i32, _flags: u32, _fd: RawFd) -> Step {
        if matches!(-res, libc::EINVAL | libc::EOPNOTSUPP) {
            // A refusal at issue (a socket without zero-copy: MPTCP, ...) comes with
            // IORING_CQE_F_MORE and a notification like any SEND_ZC result (a kernel without the
            // opcode refuses it at prep, without one: `on_errno`). SEND from now on, once the
            // notification has come.
            self.refuse_zc(-res);
            self.zc_refused = true;
            return Step::Again;
        }
        // A SEND_ZC's result: its notification (the round's last CQE) follows, when the kernel
        // lets go of the buffer's pages, which a peer that stops reading can put off for as long
        // as the connection lives. The handle is answered now where the outcome is known (the
        // send complete, failed, past its deadline or cancelled); the op keeps the buffer.
        let errno = (res < 0).then_some(-res);
        let bytes = res.max(0) as usize;
        self.zc_result = Some(res.max(0));
        if let Some(errno) = errno {
            self.failed = Some(errno);
        }
        let complete =
            errno.is_none() && bytes >= self.end - self.start && self.left <= bytes as u64;
        if complete {
            let total = self.sent + self.left;
            self.answer(Ok(total));
        } else if let Some(errno) = errno.filter(|&e| e != libc::ECANCELED) {
            // (ECANCELED: a deadline or cancellation answered already, or shutdown, which
            // answers at the end.)
            if self.done.is_some() {
                let e = self.error(errno, &self.file_path);
                self.answer(Err(e));
            }
        }
        Step::Again
    }

    fn on_errno(&mut self, errno: i32) -> Option<Step> {
        match (self.phase, errno) {
            (Phase::Send { zc: true }, libc::EINVAL | libc::EOPNOTSUPP) => {
                // No SEND_ZC here (kernel, socket, or the threads backend): SEND from now on.
                self.refuse_zc(errno);
                self.phase = Phase::Send { zc: false };
                Some(Step::Again)
            }
            (Phase::Send { .. }, libc::EAGAIN) => {
                self.phase = Phase::Room;
                Some(Step::Again)
            }
            _ => None,
        }
    }

    fn on_result(&mut self, res: i32, flags: u32, _fd: RawFd) -> Step {
        if self.buf.is_none() {
            self.failed = Some(libc::ENOMEM);
            return Step::Done;
        }
        match self.phase {
            Phase::Read => {
                let got = (res.max(0) as usize).min(self.cap);
                if got <= self.start {
                    return Step::Done; // the end of the file
                }
                self.end = got.min(
                    self.start
                        .saturating_add(self.left.min(usize::MAX as u64) as usize),
                );
                self.phase = self.send_phase();
                Step::Again
            }
            Phase::Send { .. } if flags & CQE_F_NOTIF != 0 => {
                // The notification: the kernel is done with the buffer.
                if self.failed.is_some() {
                    return Step::Done;
                }
                if std::mem::take(&mut self.zc_refused) {
                    self.phase = Phase::Send { zc: false };
                    return Step::Again;
                }
                let n = self.zc_result.take().unwrap_or(0).max(0) as usize;
                self.sent(n)
            }
            Phase::Send { .. } => self.sent(res.max(0) as usize),
            Phase::Room => {
                self.phase = self.send_phase();
                Step::Again
            }
        }
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        let mut e = Error::PathPair {
            op: "send_file",
            from: file.to_path_buf(),
            to: self.dest_name.clone(),
            errno,
        };
        if self.sent > 0 {
            e = e.with_written(self.sent);
        }
        e
    }

    fn abandon_memory(&mut self) {
        // The kernel may still read the buffer (a SEND_ZC before its notification) or write it
        // (a READ): leak it.
        if let Some(buf) = self.buf.take() {
            std::mem::forget(buf);
        }
    }

    fn failed(&self) -> Option<i32> {
        self.failed
    }

    fn complete(&mut self, result: Result<()>) -> Outcome {
        // (An error of `failed` comes here as `result`, made by `error`.)
        let sent = self.sent;
        if let Some(done) = self.done.take() {
            done.complete(result.map(|()| sent));
        }
        Outcome::Delivered { bytes: sent }
    }

    fn answer_when_cancelled(&mut self, error: Error) -> bool {
        // Whatever round is in the kernel (a SEND_ZC waiting for room or for its notification,
        // a READ, a POLL_ADD), the handle need not wait for it: the op keeps the buffer. A
        // handle answered already (a SEND_ZC's result said how it went) is not answered, or
        // counted, again: the op ends as that result said.
        if self.done.is_none() {
            return false;
        }
        let e = error.with_written(self.sent);
        self.answer(Err(e));
        true
    }

    fn is_cancelled(&self) -> bool {
        self.done.as_ref().is_some_and(Completer::is_cancelled)
    }

    fn cancel_in_flight(&self) -> bool {
        true
    }
}
