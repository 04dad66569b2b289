//! recv_stream: the receive behind `RecvStream` (`net/recv_stream.rs`), one armed receive per
//! connection that is read in a loop. Its chunks go to the stream's next call, or into the
//! stream's [`StreamQueue`] for a later one: taking a chunk that arrived costs no SQE.
//!
//! One op, [`StreamRounds`], receives while the stream wants bytes: a multishot RECV with a
//! buffer the kernel selects from the shard's ring (IORING_RECV_MULTISHOT, Linux 6.0: one SQE, a
//! CQE per chunk) where the kernel has it; the rounds are `recv_pooled`'s otherwise (the threads
//! backend, no ring, an older kernel: the op then ends after each chunk, so every call is one
//! receive, as `recv_pooled`'s). ENOBUFS (the ring is empty; it ends the kernel's multishot):
//! the op waits for bytes and takes a plain buffer, as `recv_pooled` does, then arms the
//! multishot again.
//!
//! The op stops (its multishot cancelled in the kernel) when the queue holds [`queue_bound`]
//! chunks nobody took, so a slow reader holds at most that many of the shard's buffers (and
//! the CQEs already on their way); the stream's next call that leaves the queue at most half
//! full arms a new op. It ends at the end of the stream, at an error (both kept in the queue,
//! after its chunks, for every later call), when the `RecvStream` is dropped (its queued leases
//! go back to the ring then), and at shutdown.
//!
//! Order: the op is a receive of the socket (`Footprint::Recv`), so a later op of the stream
//! (after a stop) runs only once this one has ended, after its last CQE: chunks are queued in
//! the order the kernel received them. Other receives of the socket wait for the op as for
//! any earlier receive.

use super::recv_pooled::{Round, Rounds};
use super::{FileOp, Footprint, OpFd, OpKind, Outcome, Step};
use crate::completion::Completer;
use crate::error::{Error, Result};
use crate::recv_ring::RecvBuf;
use io_uring::squeue;
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The most chunks a stream keeps that nobody took, for a ring of `ring_count` buffers: a
/// quarter of the ring, at most 8 (at least 1). A few more may come: CQEs already on their way
/// when the op stopped.
pub(crate) fn queue_bound(ring_count: usize) -> usize {
    (ring_count / 4).clamp(1, 8)
}

/// What a `RecvStream` shares with the op receiving for it.
#[derive(Default)]
pub(crate) struct StreamQueue {
    /// Chunks received and not taken, oldest first.
    pub(crate) ready: VecDeque<RecvBuf>,
    /// How the stream ended (after `ready`): `Ok` at the end of the stream, or the error.
    pub(crate) end: Option<Result<()>>,
    /// The call waiting for a chunk (the queue is empty then).
    pub(crate) waiter: Option<Completer<RecvBuf>>,
    /// The op receiving now (its id), if any.
    pub(crate) live: Option<u64>,
    /// The id of the next op.
    pub(crate) next_id: u64,
    /// The most chunks `ready` holds before the op stops (set by the op: the ring's size is
    /// known on the shard).
    pub(crate) bound: usize,
    /// The `RecvStream` is gone: chunks go back to the ring, the op stops.
    pub(crate) closed: bool,
}

/// A stream's [`StreamQueue`], shared with its op.
pub(crate) type SharedStream = Arc<Mutex<StreamQueue>>;

/// Locks `queue` (a panic while it was held left nothing half-done that matters: take it).
pub(crate) fn lock(queue: &SharedStream) -> MutexGuard<'_, StreamQueue> {
    queue.lock().unwrap_or_else(|p| p.into_inner())
}

impl StreamQueue {
    /// A chunk, or the end: to the waiting call, else queued (dropped, its buffer back in the
    /// ring, if the stream is gone).
    fn deliver(&mut self, got: Result<RecvBuf>) {
        if self.closed {
            return;
        }
        let got = match got {
            Ok(b) if !b.is_empty() => b,
            Ok(_) => {
                self.end.get_or_insert(Ok(()));
                RecvBuf::empty()
            }
            Err(e) => {
                self.end.get_or_insert(Err(e.clone()));
                if let Some(w) = self.waiter.take() {
                    w.complete(Err(e));
                }
                return;
            }
        };
        match self.waiter.take() {
            // Completed under the lock: a call that gives up its wait looks here first (see
            // `RecvStream::next`), so a chunk is never lost with it.
            Some(w) if !w.is_cancelled() => w.complete(Ok(got)),
            _ if got.is_empty() => {}
            _ => self.ready.push_back(got),
        }
    }

    /// A call found nothing queued: the id of the op to arm, if none receives now and the
    /// stream wants more (not ended; its queue at most half full).
    pub(crate) fn arm_next(&mut self) -> Option<u64> {
        if self.live.is_some() || self.end.is_some() || self.closed {
            return None;
        }
        if self.ready.len() * 2 > self.bound {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.live = Some(id);
        Some(id)
    }

    /// The op `id` was refused (no shard to take it): the stream ends with `e`.
    pub(crate) fn not_armed(&mut self, id: u64, e: &Error) {
        if self.live == Some(id) {
            self.live = None;
            self.deliver(Err(e.clone()));
        }
    }

    /// Whether the op may go on receiving: the stream is there and wants more.
    fn wants_more(&self, id: u64) -> bool {
        self.live == Some(id) && !self.closed && self.end.is_none() && self.ready.len() < self.bound
    }
}

/// The op receiving for a stream (see the module docs).
pub(crate) struct StreamRounds {
    rounds: Rounds,
    queue: SharedStream,
    id: u64,
    /// The socket's name, for errors met where the shard gives none (a bad CQE).
    name: PathBuf,
    /// An errno the kernel ended a round with (not ECANCELED): the stream's end.
    errno: Option<i32>,
    /// Bytes received, for statistics (recorded when the op ends without an error, as the
    /// shard records every op's bytes; not for an op stopped or dropped).
    bytes: u64,
    /// Completed when the op ends (nobody waits for it).
    done: Option<Completer<()>>,
}

impl StreamRounds {
    pub(crate) fn new(queue: SharedStream, id: u64, name: PathBuf, done: Completer<()>) -> Self {
        StreamRounds {
            rounds: Rounds::new(true),
            queue,
            id,
            name,
            errno: None,
            bytes: 0,
            done: Some(done),
        }
    }

    /// A round's result: into the queue. Then whether the op goes on ([`Step::Again`]) or
    /// stops ([`Step::Done`]: the end, the queue full, the stream gone, or no multishot here:
    /// one chunk per op, as `recv_pooled`).
    fn take(&mut self, round: Round, multishot: bool) -> Step {
        let mut q = lock(&self.queue);
        let got = match round {
            Round::Again => return Step::Again,
            Round::Got(b) => {
                self.bytes += b.len() as u64;
                Ok(b)
            }
            Round::End => Ok(RecvBuf::empty()),
            Round::Bad => Err(self.error(libc::EIO, &self.name)),
        };
        q.deliver(got);
        let go_on = multishot && q.wants_more(self.id);
        if !go_on && q.live == Some(self.id) {
            // Stopped: the stream's next call arms a new op.
            q.live = None;
        }
        Step::again_if(go_on)
    }
}

impl FileOp for StreamRounds {
    fn kind(&self) -> OpKind {
        OpKind::RecvStream
    }

    fn footprint(&self, _known_size: u64) -> Footprint {
        Footprint::Recv
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        let bound = queue_bound(self.rounds.ring_count());
        let room = {
            let mut q = lock(&self.queue);
            q.bound = bound;
            bound.saturating_sub(q.ready.len()).max(1)
        };
        // A multishot round takes at most the queue's room in full buffers before the kernel
        // ends it (the bytes already in the socket are received before any CQE is seen).
        let bytes = room.saturating_mul(self.rounds.buffer_size());
        self.rounds
            .limit_multishot(bytes.min(u32::MAX as usize) as u32);
        Some(self.rounds.sqe(fd))
    }

    fn run_blocking(&mut self, fd: RawFd) -> i32 {
        lock(&self.queue).bound = 1;
        self.rounds.for_blocking_path();
        super::run_own_sqe(self, fd)
    }

    fn on_cqe(&mut self, res: i32, flags: u32) {
        self.rounds.on_cqe(res, flags);
    }

    fn on_errno(&mut self, errno: i32) -> Option<Step> {
        let step = self.rounds.on_errno(errno);
        if step.is_none() && errno != libc::ECANCELED {
            self.errno = Some(errno);
        }
        step
    }

    fn on_more(&mut self, res: i32, flags: u32, _fd: RawFd) -> Step {
        let round = self.rounds.on_more(res, flags);
        self.take(round, true)
    }

    fn on_result(&mut self, res: i32, flags: u32, _fd: RawFd) -> Step {
        let multishot = self.rounds.multishot();
        let round = self.rounds.on_result(res, flags);
        let got = matches!(round, Round::Got(_));
        let step = self.take(round, multishot);
        if got && step == Step::Again {
            // A plain buffer after ENOBUFS, or a multishot round the kernel ended with bytes
            // (its CQ was full): the multishot round again.
            self.rounds.reselect();
        }
        step
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        Error::io("recv_stream", Some(file.to_path_buf()), None, errno)
    }

    fn abandon_memory(&mut self) {
        self.rounds.abandon_memory();
    }

    fn complete(&mut self, result: Result<()>) -> Outcome {
        let mut q = lock(&self.queue);
        let live = q.live == Some(self.id);
        if live {
            q.live = None;
        }
        // The kernel's errno ends the stream whoever stopped the op; a cancellation only if
        // it was not the op's own stop (shutdown, a shard that failed).
        let end = match (self.errno, result) {
            (Some(errno), _) => Some(self.error(errno, &self.name)),
            (None, Err(e)) if live => Some(e),
            _ => None,
        };
        match end {
            // The blocking path's receive found no bytes (it does not wait): that call fails,
            // the stream goes on (its next call tries again), as `recv_pooled`'s would.
            Some(e) if self.errno == Some(libc::EAGAIN) => {
                if let Some(w) = q.waiter.take() {
                    w.complete(Err(e));
                }
            }
            Some(e) => q.deliver(Err(e)),
            None => {}
        }
        drop(q);
        if let Some(done) = self.done.take() {
            done.complete(Ok(()));
        }
        Outcome::Delivered { bytes: self.bytes }
    }

    /// The stream is gone: its round is cancelled.
    fn is_cancelled(&self) -> bool {
        lock(&self.queue).closed
    }

    fn rounds_are_ops(&self) -> bool {
        true
    }

    fn cancel_in_flight(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::sqe::Sqe;
    use crate::recv_ring::RecvBuffers;

    /// `IORING_CQE_F_BUFFER` with buffer `bid`.
    fn buffer(bid: u16) -> u32 {
        1 | (u32::from(bid) << 16)
    }

    /// What an SQE asks for: "multishot" (select, len 0), "select" (single), "peek", "plain".
    fn round_of(op: &mut StreamRounds) -> &'static str {
        let fd = OpFd {
            target: crate::pool::Target::Fd(-1),
            raw: -1,
        };
        let sqe = Sqe::of(&op.sqe(fd).expect("an SQE"));
        let select = sqe.flags & squeue::Flags::BUFFER_SELECT.bits() != 0;
        match (select, sqe.len, sqe.op_flags) {
            // Limited to the queue's room in buffers (`optlen`, the `file_index` word).
            (true, 0, _) if sqe.file_index == 2 * 4096 => "multishot",
            (true, _, _) => "select",
            (false, 1, f) if f == libc::MSG_PEEK as u32 => "peek",
            _ => "plain",
        }
    }

    /// A stream's op on a ring of 8 buffers (in user memory only: no kernel reads it), armed.
    fn armed_stream() -> (SharedStream, StreamRounds, Arc<RecvBuffers>) {
        let mut register = |_: u64, _: u16, _: u16| Ok(());
        assert!(RecvBuffers::install(8, 4096, Some(&mut register)).is_none());
        let bufs = RecvBuffers::local();
        let queue = SharedStream::default();
        let id = lock(&queue).arm_next().expect("armed");
        let (_c, done) = crate::completion::pair::<()>(0, 0);
        let op = StreamRounds::new(Arc::clone(&queue), id, PathBuf::from("peer"), done);
        (queue, op, bufs)
    }

    /// Chunks queue up to the bound (a quarter of the ring), then the op stops; its last CQE
    /// (the cancellation) ends nothing, the round leaves the ring's in-kernel count, and the
    /// queued leases go back when the stream drops them.
    #[test]
    fn chunks_queue_up_to_the_bound_then_the_op_stops() {
        if !crate::op::kernel_release().at_least(6, 0) {
            return;
        }
        std::thread::spawn(|| {
            let (queue, mut op, bufs) = armed_stream();
            assert_eq!(round_of(&mut op), "multishot");
            assert_eq!(bufs.in_kernel_for_tests(), 1);
            assert_eq!(lock(&queue).bound, 2);
            assert_eq!(op.on_more(100, buffer(0), -1), Step::Again);
            assert_eq!(op.on_more(200, buffer(1), -1), Step::Done);
            assert_eq!(
                lock(&queue).live,
                None,
                "stopped: the next call arms a new op"
            );
            // A chunk already on its way still goes into the queue (never lost).
            assert_eq!(op.on_more(300, buffer(2), -1), Step::Done);
            op.on_cqe(-libc::ECANCELED, 0);
            assert_eq!(op.on_errno(libc::ECANCELED), None);
            let cancelled = Err(Error::Cancelled {
                op: "recv_stream",
                path: None,
                written: None,
            });
            op.complete(cancelled);
            drop(op);
            assert_eq!(bufs.in_kernel_for_tests(), 0);
            let mut q = lock(&queue);
            assert!(q.end.is_none(), "the op's own stop does not end the stream");
            let lens: Vec<usize> = q.ready.iter().map(|b| b.len()).collect();
            assert_eq!(lens, [100, 200, 300]);
            assert_eq!(RecvBuffers::stats().held, 3);
            q.ready.clear();
            assert_eq!(RecvBuffers::stats().held, 0);
        })
        .join()
        .unwrap();
    }

    /// ENOBUFS ends the multishot: the op waits for bytes holding no buffer, tries the ring once
    /// more, takes a plain buffer if it is still empty, and arms the multishot again.
    #[test]
    fn an_empty_ring_waits_then_takes_a_plain_buffer_then_arms_again() {
        if !crate::op::kernel_release().at_least(6, 0) {
            return;
        }
        std::thread::spawn(|| {
            let (queue, mut op, bufs) = armed_stream();
            assert_eq!(round_of(&mut op), "multishot");
            op.on_cqe(-libc::ENOBUFS, 0);
            assert_eq!(op.on_errno(libc::ENOBUFS), Some(Step::Again));
            assert_eq!(RecvBuffers::stats().exhausted, 1);
            assert_eq!(round_of(&mut op), "peek");
            assert_eq!(RecvBuffers::stats().held, 0, "waiting holds no buffer");
            assert_eq!(op.on_result(1, 0, -1), Step::Again);
            assert_eq!(round_of(&mut op), "multishot");
            op.on_cqe(-libc::ENOBUFS, 0);
            assert_eq!(op.on_errno(libc::ENOBUFS), Some(Step::Again));
            assert_eq!(RecvBuffers::stats().exhausted, 1, "one wait, counted once");
            assert_eq!(round_of(&mut op), "plain");
            assert_eq!(op.on_result(0, 0, -1), Step::Done, "the end of the stream");
            assert!(matches!(lock(&queue).end, Some(Ok(()))));
            op.complete(Ok(()));
            drop(op);
            assert_eq!(bufs.in_kernel_for_tests(), 0);
            assert_eq!(RecvBuffers::stats().held, 0);
        })
        .join()
        .unwrap();
    }

    /// A kernel without multishot receives (before 6.0): one single-shot selecting round per
    /// op, which stops after its chunk (each call is one receive, as `recv_pooled`'s).
    #[test]
    fn without_multishot_each_op_takes_one_chunk() {
        std::thread::spawn(|| {
            let (queue, mut op, bufs) = armed_stream();
            op.rounds.without_multishot();
            assert_eq!(round_of(&mut op), "select");
            assert_eq!(op.on_result(100, buffer(3), -1), Step::Done);
            op.complete(Ok(()));
            drop(op);
            let mut q = lock(&queue);
            assert_eq!((q.live, q.ready.len(), q.end.is_none()), (None, 1, true));
            assert_eq!(bufs.in_kernel_for_tests(), 0);
            assert!(q.arm_next().is_some(), "the next call arms the next op");
        })
        .join()
        .unwrap();
    }

    /// An errno from the kernel ends the stream even after the op stopped itself.
    #[test]
    fn a_reset_ends_the_stream_whoever_stopped_the_op() {
        std::thread::spawn(|| {
            let (queue, mut op, _bufs) = armed_stream();
            let _ = round_of(&mut op);
            lock(&queue).live = None;
            assert_eq!(op.on_errno(libc::ECONNRESET), None);
            op.complete(Err(Error::Cancelled {
                op: "recv_stream",
                path: None,
                written: None,
            }));
            let q = lock(&queue);
            let e = q.end.clone().expect("ended").expect_err("an error");
            assert!(e.to_string().contains("ECONNRESET"), "{e}");
        })
        .join()
        .unwrap();
    }
}
