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
use std::sync::Arc;

/// `IORING_CQE_F_BUFFER`: the CQE names a provided buffer (in its upper 16 bits).
const CQE_F_BUFFER: u32 = 1;

/// The round in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// RECV with a buffer the kernel selects from the ring.
    Select,
    /// RECV of one byte with MSG_PEEK: wait for bytes before taking a plain buffer.
    Wait,
    /// RECV into a plain buffer.
    Plain,
}

/// One receive into a shard buffer.
pub(crate) struct RecvPooled {
    phase: Option<Phase>,
    bufs: Option<Arc<RecvBuffers>>,
    /// A `Select` round is in the kernel (counted in the buffers' `in_kernel`).
    armed: bool,
    plain: Option<PlainBuf>,
    /// The byte the `Wait` round peeks into (boxed: it stays put whatever moves the op).
    peek: Box<[u8; 1]>,
    got: Option<RecvBuf>,
    /// A CQE named a buffer that cannot be ours (a kernel bug): the op fails with EIO.
    bad_cqe: bool,
    done: Option<Completer<RecvBuf>>,
}

impl RecvPooled {
    pub(crate) fn new(done: Completer<RecvBuf>) -> Self {
        RecvPooled {
            phase: None,
            bufs: None,
            armed: false,
            plain: None,
            peek: Box::new([0]),
            got: None,
            bad_cqe: false,
            done: Some(done),
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
}

impl FileOp for RecvPooled {
    fn kind(&self) -> OpKind {
        OpKind::RecvPooled
    }

    fn footprint(&self, _known_size: u64) -> Footprint {
        Footprint::Recv
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        let bufs = self.bufs();
        Some(match self.phase.unwrap_or(Phase::Wait) {
            Phase::Select => {
                if !std::mem::replace(&mut self.armed, true) {
                    bufs.note_in_kernel(true);
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
        })
    }

    fn run_blocking(&mut self, fd: RawFd) -> i32 {
        // No ring selection and no poll here (the blocking path runs neither): one receive into
        // a plain buffer, which fails with EAGAIN rather than wait.
        self.bufs();
        self.phase = Some(Phase::Plain);
        super::run_own_sqe(self, fd)
    }

    fn on_cqe(&mut self, res: i32, flags: u32) {
        if res <= 0 && flags & CQE_F_BUFFER != 0 && self.phase == Some(Phase::Select) {
            // No bytes, yet a buffer (committed when the kernel selected it: io-wq): back to
            // the ring (the lease drops here), else it would be out of the ring for good.
            if let Some(b) = &self.bufs {
                drop(b.selected((flags >> 16) as u16, 0));
            }
        }
    }

    fn on_errno(&mut self, errno: i32) -> Option<Step> {
        if self.phase == Some(Phase::Select) {
            self.disarm();
            if errno == libc::ENOBUFS {
                // Every ring buffer is leased. The kernel selects a buffer when it issues the
                // RECV, before it looks for bytes: ENOBUFS comes whether or not any have
                // arrived. Wait for bytes (MSG_PEEK) before taking a plain buffer, so a receive
                // whose peer is silent holds none.
                if let Some(b) = &self.bufs {
                    b.note_exhausted();
                }
                self.phase = Some(Phase::Wait);
                return Some(Step::Again);
            }
        }
        None
    }

    fn on_result(&mut self, res: i32, flags: u32, _fd: RawFd) -> Step {
        match self.phase {
            Some(Phase::Select) => {
                self.disarm();
                if res > 0 {
                    let bid = (flags >> 16) as u16;
                    let lease = (flags & CQE_F_BUFFER != 0)
                        .then_some(self.bufs.as_ref())
                        .flatten()
                        .and_then(|b| b.selected(bid, res as usize));
                    self.bad_cqe = lease.is_none();
                    self.got = lease;
                }
                Step::Done
            }
            // Bytes are there: take the buffer now. (0: the end of the stream, nothing to take.)
            Some(Phase::Wait) if res > 0 => {
                self.phase = Some(Phase::Plain);
                Step::Again
            }
            Some(Phase::Wait) => Step::Done,
            _ => {
                if let Some(mut plain) = self.plain.take() {
                    let n = (res.max(0) as usize).min(plain.vec.capacity());
                    // SAFETY: the kernel wrote `n` bytes (at most the capacity) from the start
                    // of the vector, and its CQE has arrived: it writes nothing more.
                    unsafe { plain.vec.set_len(n) };
                    if n > 0 {
                        self.got = Some(RecvBuf::from_plain(plain));
                    }
                }
                Step::Done
            }
        }
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        Error::io("recv", Some(file.to_path_buf()), None, errno)
    }

    fn abandon_memory(&mut self) {
        // The kernel may still write into the plain buffer: leak it (still counted as held).
        // A selected buffer's round stays counted in `in_kernel` (`armed` is left set), so the
        // ring's mapping is leaked with the shard.
        if let Some(plain) = self.plain.take() {
            std::mem::forget(plain);
        }
        self.armed = false;
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
}
