//! recv_pooled: a receive into one of the shard's receive buffers (`crate::recv_ring`), taken
//! only once bytes have arrived, so a connection that waits holds no buffer.
//!
//! With a provided-buffer ring: one RECV with IOSQE_BUFFER_SELECT; the kernel picks a buffer
//! when data is there and names it in the CQE (`IORING_CQE_F_BUFFER`, its id in the upper 16
//! bits). ENOBUFS (every buffer leased; the kernel answers so when it issues the RECV, bytes or
//! not): the receive waits for bytes as without a ring, then takes a plain buffer. Without
//! a ring (threads backend, a kernel before 5.19): a RECV of one byte with MSG_PEEK first (it
//! waits for bytes, or the end of the stream, into a byte of the op's own), then a RECV into a
//! plain buffer taken then. (Not POLL_ADD: the threads backend looks at its polls only when the
//! shard sleeps, and a busy shard would leave such receives waiting.) On the blocking path (no FAST_POLL, or forced) one RECV into a
//! plain buffer.
//!
//! These rounds are [`Rounds`], shared with `recv_stream.rs`, whose selecting round is a
//! multishot RECV (IORING_RECV_MULTISHOT) that stays armed across chunks.
//!
//! As a plain receive it is ordered among the socket's receives (`Footprint::Recv`), taken out
//! of the kernel when its handle is dropped or its deadline passes, and keeps a result that beat
//! the cancellation (the lease is then dropped, its buffer back in the ring).

use super::{on_fd, FileOp, Footprint, OpFd, OpKind, Outcome, Step};
use crate::completion::Completer;
use crate::error::{Error, Result};
use crate::recv_ring::{PlainBuf, RecvBuf, RecvBuffers, BGID};
use io_uring::{opcode, squeue};
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `IORING_CQE_F_BUFFER`: the CQE names a provided buffer (in its upper 16 bits).
const CQE_F_BUFFER: u32 = 1;

/// The round in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// RECV with a buffer the kernel selects from the ring (multishot for a stream).
    Select,
    /// RECV of one byte with MSG_PEEK: wait for bytes before taking a plain buffer.
    Wait,
    /// RECV into a plain buffer.
    Plain,
}

/// What a round that ended (or a multishot CQE) brought.
pub(crate) enum Round {
    /// Bytes, in a lease.
    Got(RecvBuf),
    /// The end of the stream (0 bytes).
    End,
    /// Nothing yet: another round follows (bytes are there: take a plain buffer for them).
    Again,
    /// A CQE that named no buffer of ours (a kernel bug): the receive fails with EIO.
    Bad,
}

/// The rounds of a receive into a shard buffer (see the module docs), for one result
/// ([`RecvPooled`]) or a stream of them (`recv_stream.rs`). Everything the kernel writes is
/// owned here (the peeked byte, the plain buffer) or is the ring's.
pub(crate) struct Rounds {
    phase: Option<Phase>,
    bufs: Option<Arc<RecvBuffers>>,
    /// A `Select` round is in the kernel (counted in the buffers' `in_kernel`).
    armed: bool,
    /// `Select` rounds are multishot (asked for, and the kernel has IORING_RECV_MULTISHOT).
    multishot: bool,
    plain: Option<PlainBuf>,
    /// The byte the `Wait` round peeks into (boxed: it stays put whatever moves the op).
    peek: Box<[u8; 1]>,
    /// A stream's `Wait` round saw bytes: it selects from the ring once more (leases may have
    /// come back meanwhile), and takes a plain buffer at once if the ring is still empty.
    waited: bool,
    /// The most bytes a multishot round takes before the kernel ends it (0: no limit).
    limit: u32,
    /// The multishot round in the kernel asked for `limit`.
    limited: bool,
}

/// The kernel refused a multishot receive's byte limit (EINVAL: a kernel without
/// IORING_RECV_MSHOT_LIM, which reads the word as `file_index`): multishot rounds go without one
/// from then on, in every shard (a property of the kernel).
static LIMIT_REFUSED: AtomicBool = AtomicBool::new(false);

impl Rounds {
    /// Rounds of one receive, or (`multishot`) of a stream where the kernel has multishot
    /// receives (Linux 6.0).
    pub(crate) fn new(multishot: bool) -> Self {
        Rounds {
            phase: None,
            bufs: None,
            armed: false,
            multishot: multishot && super::kernel_release().at_least(6, 0),
            plain: None,
            peek: Box::new([0]),
            waited: false,
            limit: 0,
            limited: false,
        }
    }

    /// The shard thread's buffers (taken at the first round: the op is made on the caller's
    /// thread) and the phase to start with.
    fn bufs(&mut self) -> Arc<RecvBuffers> {
        let bufs = self.bufs.get_or_insert_with(RecvBuffers::local).clone();
        if self.phase.is_none() {
            self.phase = Some(if bufs.has_ring() {
                Phase::Select
            } else {
                Phase::Wait
            });
        }
        bufs
    }

    /// The next round selects from the ring again (where there is one): after a plain buffer
    /// was filled, a stream goes back to its multishot round.
    pub(crate) fn reselect(&mut self) {
        self.phase = None;
    }

    /// Whether selecting rounds are multishot here (asked for, a kernel with multishot
    /// receives, a provided-buffer ring, not the blocking path): a stream's op goes on after a
    /// chunk only then.
    pub(crate) fn multishot(&mut self) -> bool {
        self.multishot && self.bufs().has_ring()
    }

    /// Multishot rounds end after `bytes` (IORING_RECV_MSHOT_LIM, the SQE's `optlen`: recent
    /// kernels, 6.18 among them; where the kernel refuses it, they go without: see `on_errno`). The kernel takes buffers for the bytes
    /// waiting in the socket before its CQEs are seen; this bounds how many it takes at once.
    pub(crate) fn limit_multishot(&mut self, bytes: u32) {
        self.limit = bytes;
    }

    /// As on a kernel before 6.0: selecting rounds are single-shot. (Unit tests.)
    #[cfg(test)]
    pub(crate) fn without_multishot(&mut self) {
        self.multishot = false;
    }

    /// Bytes per buffer.
    pub(crate) fn buffer_size(&mut self) -> usize {
        self.bufs().size()
    }

    /// The buffers in the shard's ring (0: plain buffers).
    pub(crate) fn ring_count(&mut self) -> usize {
        self.bufs().count()
    }

    /// The plain buffer's pointer and room (taken now if not yet).
    fn plain_room(&mut self, bufs: &Arc<RecvBuffers>) -> (*mut u8, u32) {
        let plain = self.plain.get_or_insert_with(|| bufs.plain());
        let room = plain.vec.capacity().min(u32::MAX as usize) as u32;
        (plain.vec.as_mut_ptr(), room)
    }

    /// The `Select` round is back from the kernel.
    fn disarm(&mut self) {
        if std::mem::take(&mut self.armed) {
            if let Some(b) = &self.bufs {
                b.note_in_kernel(false);
            }
        }
    }

    /// The next round's SQE.
    pub(crate) fn sqe(&mut self, fd: OpFd) -> squeue::Entry {
        let bufs = self.bufs();
        match self.phase.unwrap_or(Phase::Wait) {
            Phase::Select => {
                if !std::mem::replace(&mut self.armed, true) {
                    bufs.note_in_kernel(true);
                }
                if self.multishot {
                    // len 0: each chunk fills at most one buffer of the group.
                    let entry = on_fd!(fd.target, |f| opcode::RecvMulti::new(f, BGID).build());
                    self.limited = self.limit > 0 && !LIMIT_REFUSED.load(Ordering::Relaxed);
                    return if self.limited {
                        crate::driver::sqe::with_optlen(entry, self.limit)
                    } else {
                        entry
                    };
                }
                let len = bufs.size().min(u32::MAX as usize) as u32;
                on_fd!(fd.target, |f| opcode::Recv::new(
                    f,
                    std::ptr::null_mut(),
                    len
                )
                .buf_group(BGID)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT))
            }
            Phase::Wait => {
                let ptr = self.peek.as_mut_ptr();
                on_fd!(fd.target, |f| opcode::Recv::new(f, ptr, 1)
                    .flags(libc::MSG_PEEK)
                    .build())
            }
            Phase::Plain => {
                let (ptr, len) = self.plain_room(&bufs);
                on_fd!(fd.target, |f| opcode::Recv::new(f, ptr, len).build())
            }
        }
    }

    /// The blocking path's round (no ring selection, no poll: the blocking path runs neither):
    /// one receive into a plain buffer, which fails with EAGAIN rather than wait. Call
    /// `run_own_sqe` after.
    pub(crate) fn for_blocking_path(&mut self) {
        self.bufs();
        self.multishot = false;
        self.phase = Some(Phase::Plain);
    }

    /// `FileOp::on_cqe`.
    pub(crate) fn on_cqe(&mut self, res: i32, flags: u32) {
        if res <= 0 && flags & CQE_F_BUFFER != 0 && self.phase == Some(Phase::Select) {
            // No bytes, yet a buffer (committed when the kernel selected it: io-wq): back to
            // the ring (the lease drops here), else it would be out of the ring for good.
            if let Some(b) = &self.bufs {
                drop(b.selected((flags >> 16) as u16, 0));
            }
        }
    }

    /// `FileOp::on_errno`: ENOBUFS (every ring buffer leased) makes the next round wait for
    /// bytes; `None` for any other errno.
    pub(crate) fn on_errno(&mut self, errno: i32) -> Option<Step> {
        if self.phase == Some(Phase::Select) {
            self.disarm();
            if errno == libc::EINVAL && std::mem::take(&mut self.limited) {
                // A kernel without multishot byte limits: the round again without one. The stream's queue bound then stops the round only once its
                // CQEs are seen.
                LIMIT_REFUSED.store(true, Ordering::Relaxed);
                return Some(Step::Again);
            }
            if errno == libc::ENOBUFS {
                // The kernel selects a buffer when it issues the RECV, before it looks for
                // bytes: ENOBUFS comes whether or not any have arrived (and ends a multishot
                // round). Wait for bytes (MSG_PEEK) before taking a plain buffer, so a
                // receive whose peer is silent holds none; after a wait, bytes are there.
                if std::mem::take(&mut self.waited) {
                    self.phase = Some(Phase::Plain);
                    return Some(Step::Again);
                }
                if let Some(b) = &self.bufs {
                    b.note_exhausted();
                }
                self.phase = Some(Phase::Wait);
                return Some(Step::Again);
            }
        }
        None
    }

    /// A multishot CQE with `IORING_CQE_F_MORE`: its bytes (the round stays armed).
    pub(crate) fn on_more(&mut self, res: i32, flags: u32) -> Round {
        self.selected(res, flags)
    }

    /// The lease of the buffer a selecting CQE names.
    fn selected(&self, res: i32, flags: u32) -> Round {
        if res <= 0 {
            return Round::End;
        }
        let bid = (flags >> 16) as u16;
        (flags & CQE_F_BUFFER != 0)
            .then_some(self.bufs.as_ref())
            .flatten()
            .and_then(|b| b.selected(bid, res as usize))
            .map_or(Round::Bad, Round::Got)
    }

    /// A round's last CQE, with a non-negative result.
    pub(crate) fn on_result(&mut self, res: i32, flags: u32) -> Round {
        match self.phase {
            Some(Phase::Select) => {
                self.disarm();
                self.waited = false;
                self.selected(res, flags)
            }
            // Bytes are there: take the buffer now (a stream first tries the ring again). (0:
            // the end of the stream, nothing to take.)
            Some(Phase::Wait) if res > 0 => {
                self.waited = self.multishot && self.bufs.as_ref().is_some_and(|b| b.has_ring());
                self.phase = Some(if self.waited {
                    Phase::Select
                } else {
                    Phase::Plain
                });
                Round::Again
            }
            Some(Phase::Wait) => Round::End,
            _ => {
                let Some(mut plain) = self.plain.take() else {
                    return Round::End;
                };
                let n = (res.max(0) as usize).min(plain.vec.capacity());
                // SAFETY: the kernel wrote `n` bytes (at most the capacity) from the start of
                // the vector, and its CQE has arrived: it writes nothing more.
                unsafe { plain.vec.set_len(n) };
                if n > 0 {
                    Round::Got(RecvBuf::from_plain(plain))
                } else {
                    Round::End
                }
            }
        }
    }

    /// `FileOp::abandon_memory`.
    pub(crate) fn abandon_memory(&mut self) {
        // The kernel may still write into the plain buffer: leak it (still counted as held).
        // A selected buffer's round stays counted in `in_kernel`: `armed` is cleared without
        // the count going down (the drop below then leaves it), so the ring's mapping is leaked
        // with the shard rather than unmapped under the kernel.
        if let Some(plain) = self.plain.take() {
            std::mem::forget(plain);
        }
        self.armed = false;
    }
}

/// An op is dropped only once nothing of it is in the kernel (the shard keeps it until its last
/// CQE; an op abandoned at teardown is `abandon_memory`'d first, or leaked), so a `Select`
/// round still counted here is over: one parked (its round ended by ECANCELED to let other
/// work through) and then cancelled or dropped before it was issued again.
impl Drop for Rounds {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// One receive into a shard buffer.
pub(crate) struct RecvPooled {
    rounds: Rounds,
    got: Option<RecvBuf>,
    /// A CQE named a buffer that cannot be ours (a kernel bug): the op fails with EIO.
    bad_cqe: bool,
    done: Option<Completer<RecvBuf>>,
}

impl RecvPooled {
    pub(crate) fn new(done: Completer<RecvBuf>) -> Self {
        RecvPooled {
            rounds: Rounds::new(false),
            got: None,
            bad_cqe: false,
            done: Some(done),
        }
    }
}

impl FileOp for RecvPooled {
    fn kind(&self) -> OpKind {
        OpKind::RecvPooled
    }

    fn footprint(&self, _known_size: u64) -> Footprint {
        Footprint::Recv
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        Some(self.rounds.sqe(fd))
    }

    fn run_blocking(&mut self, fd: RawFd) -> i32 {
        self.rounds.for_blocking_path();
        super::run_own_sqe(self, fd)
    }

    fn on_cqe(&mut self, res: i32, flags: u32) {
        self.rounds.on_cqe(res, flags);
    }

    fn on_errno(&mut self, errno: i32) -> Option<Step> {
        self.rounds.on_errno(errno)
    }

    fn on_result(&mut self, res: i32, flags: u32, _fd: RawFd) -> Step {
        match self.rounds.on_result(res, flags) {
            Round::Got(b) => self.got = Some(b),
            Round::Again => return Step::Again,
            Round::End => {}
            Round::Bad => self.bad_cqe = true,
        }
        Step::Done
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        Error::io("recv_pooled", Some(file.to_path_buf()), None, errno)
    }

    fn abandon_memory(&mut self) {
        self.rounds.abandon_memory();
    }

    fn failed(&self) -> Option<i32> {
        self.bad_cqe.then_some(libc::EIO)
    }

    fn complete(&mut self, result: Result<()>) -> Outcome {
        // (A bad CQE comes here as EIO: `failed`.)
        let got = self.got.take().unwrap_or_else(RecvBuf::empty);
        let bytes = if result.is_ok() { got.len() as u64 } else { 0 };
        if let Some(done) = self.done.take() {
            // A failed receive's lease (none: a failure carries no bytes) drops here, its buffer
            // back in the ring; so does one nobody waits for any more.
            done.complete(result.map(|()| got));
        }
        Outcome::Delivered { bytes }
    }

    fn is_cancelled(&self) -> bool {
        self.done.as_ref().is_some_and(Completer::is_cancelled)
    }

    fn cancel_in_flight(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::OpFd;

    /// A receive whose `Select` round is "in the kernel" (its handle dropped: nobody waits).
    fn armed() -> RecvPooled {
        let (_c, done) = crate::completion::pair::<RecvBuf>(0, 0);
        let mut op = RecvPooled::new(done);
        let fd = OpFd {
            target: crate::op::Target::Fd(-1),
            raw: -1,
        };
        assert!(op.sqe(fd).is_some());
        op
    }

    /// A CQE without bytes that names a buffer (the kernel committed it at selection: io-wq,
    /// seen on 6.18 for an end of stream under IOSQE_ASYNC) gives the buffer back to the ring.
    #[test]
    fn a_cqe_without_bytes_that_names_a_buffer_puts_it_back() {
        std::thread::spawn(|| {
            // A ring in user memory only (no kernel reads it here): its tail says what was put.
            let mut register = |_: u64, _: u16, _: u16| Ok(());
            assert!(RecvBuffers::install(4, 4096, Some(&mut register)).is_none());
            let bufs = RecvBuffers::local();
            assert_eq!(bufs.published_tail(), Some(4));
            for (res, bid) in [(0, 2u16), (-libc::ECANCELED, 3), (-libc::EINTR, 1)] {
                let mut op = armed();
                op.on_cqe(res, CQE_F_BUFFER | (u32::from(bid) << 16));
            }
            // Each buffer went back (one entry each); none is counted as held.
            assert_eq!(bufs.published_tail(), Some(7));
            assert_eq!(RecvBuffers::stats().held, 0);
            // A CQE with bytes is not one: its buffer becomes the lease (not put back here).
            let mut op = armed();
            op.on_cqe(5, CQE_F_BUFFER);
            assert_eq!(bufs.published_tail(), Some(7));
        })
        .join()
        .unwrap();
    }

    /// A receive dropped while counted in the kernel's rounds (parked, then cancelled before it
    /// was issued again) uncounts itself, so the ring's mapping can be unmapped at the end; one
    /// abandoned at teardown stays counted (the kernel may still select a buffer for it).
    #[test]
    fn a_dropped_receive_leaves_the_in_kernel_count_and_an_abandoned_one_keeps_it() {
        std::thread::spawn(|| {
            let mut register = |_: u64, _: u16, _: u16| Ok(());
            assert!(RecvBuffers::install(4, 4096, Some(&mut register)).is_none());
            let bufs = RecvBuffers::local();
            drop(armed());
            assert_eq!(bufs.in_kernel_for_tests(), 0);
            let mut op = armed();
            op.abandon_memory();
            drop(op);
            assert_eq!(bufs.in_kernel_for_tests(), 1);
        })
        .join()
        .unwrap();
    }
}
