//! send_file of a file open with O_DIRECT: READ into a buffer of the op, then SEND_ZC (Linux 6.0)
//! of what was read for rounds of at least `ExecutorBuilder::send_zc_min` bytes ([`DEFAULT_ZC_MIN`]:
//! never), SEND below it, round after round until `len` bytes are sent or the file ends. (Page-cache files splice:
//! `send_file.rs`.)
//!
//! The buffers. Up to two per op (`send_file_buffers`, default 2; one for a send of one round),
//! `CHUNK` bytes each (at most; less for a shorter send), aligned for O_DIRECT (the file's
//! `DirectIoAlign`, at least a page); a READ covers the aligned range around the bytes wanted,
//! and the sends take the part asked for. Each is a registered pool buffer the shard lends the
//! op for its life ([`fixed_wanted`](FileOp::fixed_wanted): READ_FIXED, and SEND_ZC with
//! `IORING_RECVSEND_FIXED_BUF`, so the kernel neither pins nor looks up the pages per request)
//! when the pool has one free beyond its reserve and of at least the op's round. Without one
//! (the threads backend, an exhausted or too small pool) the op has one aligned buffer of its
//! own and no second: a second one of its own cost more CPU per GiB than the overlap saved
//! (measured, BENCHMARKS.md).
//!
//! Rounds. With two buffers, a round sends from one (`front`) while, beside it
//! ([`sqe_beside`](FileOp::sqe_beside)), a READ fills the other with the bytes after it
//! ([`Ahead`]); the next round sends those and reads into the first. Only READs overlap: one
//! send at a time, in order, so the bytes reach the socket in the file's order. The kernel
//! reads a buffer until its SEND_ZC's notification: a SEND_ZC has two CQEs, the result (with
//! `IORING_CQE_F_MORE`, seen in [`on_more`](FileOp::on_more)) and the notification
//! (`IORING_CQE_F_NOTIF`, the round's last), and a round ends only once its send's last CQE
//! and its READ's CQE have both come; the op stays in the shard's op table, counted in flight,
//! until then. So a buffer is read into again only in a round after the one whose notification
//! freed it, and goes back to the pool (or is freed) only when the op leaves the table,
//! whatever the caller does (deadline, cancel, drop, shutdown: a shard that stops with it in
//! flight leaks it, [`abandon_memory`](FileOp::abandon_memory), and a lent pool buffer stays
//! marked in flight, so the pool keeps its slab mapped).
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

use super::{on_fd, FileOp, FixedBuf, Footprint, OpFd, OpKind, Outcome, Step};
use crate::completion::Completer;
use crate::driver::sockopt::getsockopt_int;
use crate::error::{Error, Result};
use crate::file::DirectIoAlign;
use crate::op::send_file::Dest;
use crate::pool::Target;
use io_uring::{opcode, squeue};
use std::alloc::Layout;
use std::cell::Cell;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

/// The most bytes one round reads and sends.
const CHUNK: usize = 256 * 1024;

/// The largest O_DIRECT alignment the op's buffer honours (statx reports a few KiB at most on
/// real devices).
const MAX_ALIGN: u64 = 1 << 20;

/// Sends of this many bytes or more per round use SEND_ZC (below: SEND). Default: never. Measured
/// here (BENCHMARKS.md, loopback and veth: local delivery, where the kernel copies anyway) it
/// cost as much CPU per GiB as a copy or more, from the op's own buffer and from registered pool
/// buffers alike. A round's notification waits for the peer's acknowledgement of the round, and
/// sends stay one at a time, so sends follow one another at the round trip's pace (256 KiB per
/// RTT; with two pool buffers the next round's READ runs meanwhile): a server sending through a
/// NIC over short round trips may set `send_zc_min(256 << 10)` (whole rounds only) after
/// measuring.
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

/// Where a round's bytes are: a registered pool buffer lent by the shard (READ_FIXED, and
/// SEND_ZC with `IORING_RECVSEND_FIXED_BUF`: the kernel neither pins nor looks up its pages per
/// request), or, when the shard lent none (pool absent, exhausted or too small: the threads
/// backend, the blocking path), an aligned buffer of the op's own.
enum Buf {
    Fixed(FixedBuf),
    Own(AlignedBuf),
}

impl Buf {
    fn ptr(&self) -> *mut u8 {
        match self {
            Buf::Fixed(f) => f.ptr.as_ptr(),
            Buf::Own(b) => b.ptr.as_ptr(),
        }
    }

    /// The pool index of a lent buffer.
    fn index(&self) -> Option<u16> {
        match self {
            Buf::Fixed(f) => Some(f.index),
            Buf::Own(_) => None,
        }
    }
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

/// The buffer beside the one being sent (double-buffering): read into while the other's bytes
/// go out, then sent from while the other is read into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ahead {
    /// Nothing read into it (or there is no second buffer).
    Empty,
    /// Its READ (`sqe_beside`) is in the kernel: `want` bytes from file offset `from`, which
    /// is `skip` bytes into the aligned READ.
    Reading { from: u64, skip: usize, want: u64 },
    /// `buf[start..end]` are the file's bytes from offset `from` on.
    Ready { from: u64, start: usize, end: usize },
    /// Its READ at `from` found the end of the file.
    End { from: u64 },
}

/// A send of `len` bytes at `offset` of an O_DIRECT file.
pub(crate) struct SendFileDirect {
    /// The destination's duplicate; closed once the handle is answered (the kernel keeps what it
    /// needs for an outstanding notification).
    dest: Option<Dest>,
    dest_kind: DestKind,
    dest_name: PathBuf,
    /// The file's offset of the next byte to send (where the next round's own READ starts).
    offset: u64,
    /// Bytes left to send.
    left: u64,
    sent: u64,
    align: u64,
    zc_min: u64,
    /// The buffers: the shard's lent ones, or, at the first round, one of the op's own (a
    /// second only from the pool). `bufs[front]` is read into
    /// by the round's own READ and sent from; the other is [`Ahead`]'s. A buffer is reused
    /// only in a round after the one that sent from it: a SEND_ZC's round ends at its
    /// notification, so the kernel is done with its pages by then.
    bufs: [Option<Buf>; 2],
    front: usize,
    /// Most buffers to use (1: no read ahead).
    most: usize,
    /// The first round has chosen `bufs[0]` (`None` then: no memory, the round fails ENOMEM).
    chosen: bool,
    cap: usize,
    /// The bytes read and not yet sent: `bufs[front][start..end]`, from `offset` on.
    start: usize,
    end: usize,
    ahead: Ahead,
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
    /// A send of `len` bytes at `offset`; `buffers`: 2 reads each round while the one before
    /// it is sent (the default), 1 reads and sends in turn.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        dest: Dest,
        dest_name: PathBuf,
        file_path: PathBuf,
        offset: u64,
        len: u64,
        align: DirectIoAlign,
        zc_min: u64,
        buffers: usize,
        done: Completer<u64>,
    ) -> Self {
        let page = crate::numa::page_size() as u64;
        // Bounded: the buffer is at least one alignment unit, and a device that reported an
        // absurd one must not make a huge allocation (its READs then fail with EINVAL instead).
        let align = u64::from(align.offset.max(align.memory))
            .max(page)
            .min(MAX_ALIGN);
        // The aligned span of the range (from `offset` rounded down), at most CHUNK (itself a
        // multiple of pages) per round.
        let whole = (offset % align)
            .saturating_add(len)
            .div_ceil(align)
            .saturating_mul(align);
        let cap = (whole.min(CHUNK as u64) as usize).max(align as usize);
        // A second buffer only for sends of more than one round.
        let most = if whole > cap as u64 {
            buffers.clamp(1, 2)
        } else {
            1
        };
        SendFileDirect {
            dest_kind: DestKind::of(dest.raw()),
            dest: Some(dest),
            dest_name,
            offset,
            left: len,
            sent: 0,
            align,
            zc_min,
            bufs: [None, None],
            front: 0,
            most,
            chosen: false,
            cap,
            start: 0,
            end: 0,
            ahead: Ahead::Empty,
            phase: Phase::Read,
            zc_result: None,
            failed: None,
            zc_refused: false,
            no_zc: false,
            file_path,
            done: Some(done),
        }
    }

    /// After `n` bytes were sent: the next round (sending what the buffer beside holds, when it
    /// follows on).
    fn sent(&mut self, n: usize) -> Step {
        let n = n.min(self.end - self.start);
        self.start += n;
        self.sent += n as u64;
        self.left -= (n as u64).min(self.left);
        self.offset += n as u64;
        if self.left == 0 || n == 0 {
            return Step::Done;
        }
        if self.start < self.end {
            self.phase = self.send_phase();
            return Step::Again;
        }
        match std::mem::replace(&mut self.ahead, Ahead::Empty) {
            Ahead::Ready { from, start, end } if from == self.offset => {
                self.front = 1 - self.front;
                self.start = start;
                self.end = end;
                self.phase = self.send_phase();
            }
            Ahead::End { from } if from == self.offset => return Step::Done,
            // (Not where this round ended: a short READ left a gap. Read it again here.)
            _ => self.phase = Phase::Read,
        }
        Step::Again
    }

    /// The READ of up to `want` bytes of the file from `from` into `buf`, aligned for O_DIRECT
    /// (from `from` rounded down, whole alignment units, at most `cap` bytes): the SQE, and
    /// where byte `from` lands in the buffer.
    fn read(&self, target: Target, buf: &Buf, from: u64, want: u64) -> (squeue::Entry, usize) {
        let at = from / self.align * self.align;
        let skip = (from - at) as usize;
        let len = (skip as u64 + want)
            .div_ceil(self.align)
            .saturating_mul(self.align)
            .min(self.cap as u64) as u32;
        let base = buf.ptr();
        let entry = match buf.index() {
            Some(index) => on_fd!(target, |f| opcode::ReadFixed::new(f, base, len, index)
                .offset(at)
                .build()),
            None => on_fd!(target, |f| opcode::Read::new(f, base, len)
                .offset(at)
                .build()),
        };
        (entry, skip)
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

    fn fixed_wanted(&self) -> (usize, usize) {
        (self.most, self.cap)
    }

    fn use_fixed(&mut self, bufs: &[FixedBuf]) {
        if self.chosen {
            return;
        }
        let fits =
            |b: &&FixedBuf| b.len >= self.cap && b.ptr.as_ptr() as usize % self.align as usize == 0;
        for (slot, b) in self.bufs.iter_mut().zip(bufs.iter().filter(fits)) {
            *slot = Some(Buf::Fixed(*b));
        }
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        if !std::mem::replace(&mut self.chosen, true) && self.bufs[0].is_none() {
            self.bufs[0] = AlignedBuf::new(self.cap, self.align as usize).map(Buf::Own);
        }
        let Some(buf) = &self.bufs[self.front] else {
            // No memory for the buffer: the round fails (complete says ENOMEM).
            return Some(opcode::Nop::new().build());
        };
        let base = buf.ptr();
        let fixed = buf.index();
        let dest = io_uring::types::Fd(self.dest.as_ref().map_or(-1, Dest::raw));
        Some(match self.phase {
            Phase::Read => {
                let (entry, skip) = self.read(fd.target, buf, self.offset, self.left);
                self.start = skip;
                self.end = skip;
                entry
            }
            Phase::Send { zc } => {
                // SAFETY: start <= end <= cap: inside the buffer.
                let ptr = unsafe { base.add(self.start) };
                let len = (self.end - self.start) as u32;
                if self.dest_kind == DestKind::Pipe {
                    opcode::Write::new(dest, ptr, len).offset(u64::MAX).build()
                } else if zc {
                    opcode::SendZc::new(dest, ptr, len)
                        .buf_index(fixed)
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

    /// The next round's READ, into the other buffer, while this round sends (or waits for
    /// room): only the READ overlaps, the sends stay one after another.
    fn sqe_beside(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        if self.most < 2 || self.ahead != Ahead::Empty || self.phase == Phase::Read {
            return None;
        }
        let held = (self.end - self.start) as u64;
        let want = self.left.checked_sub(held).filter(|&w| w > 0)?;
        // Only a lent pool buffer: a second buffer of the op's own cost more CPU per GiB than
        // it saved (a fresh allocation per send, faulted in and pinned by each O_DIRECT READ;
        // BENCHMARKS.md, "send_file from O_DIRECT files").
        let buf = self.bufs[1 - self.front].as_ref()?;
        let from = self.offset + held;
        let (entry, skip) = self.read(fd.target, buf, from, want);
        self.ahead = Ahead::Reading { from, skip, want };
        Some(entry)
    }

    fn on_beside(&mut self, res: i32) {
        let Ahead::Reading { from, skip, want } = self.ahead else {
            return;
        };
        let got = (res.max(0) as usize).min(self.cap);
        self.ahead = if res < 0 {
            // Failed (or never pushed): the round that needs these bytes reads them itself,
            // and meets the error itself.
            Ahead::Empty
        } else if got <= skip {
            Ahead::End { from }
        } else {
            let end = got.min(skip.saturating_add(want.min(usize::MAX as u64) as usize));
            Ahead::Ready {
                from,
                start: skip,
                end,
            }
        };
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
        if self.bufs[self.front].is_none() {
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
        // (a READ): leak it. (A lent pool buffer stays marked in flight: the pool keeps its slab.)
        for buf in self.bufs.iter_mut().filter_map(Option::take) {
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

    /// A wait for room, or a plain SEND (which the kernel ends with ECANCELED only when it sent
    /// nothing): taken out for `submit_to` closures and issued again. Not a SEND_ZC (its pages
    /// are the kernel's until the notification) nor a READ.
    fn round_waits_for_peer(&self) -> bool {
        matches!(self.phase, Phase::Room | Phase::Send { zc: false })
    }
}
