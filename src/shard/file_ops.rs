//! The `FileOp` host: every operation but read, write and close is a boxed
//! [`FileOp`](crate::op::FileOp). The shard issues its rounds (an SQE, or its blocking call where
//! the kernel lacks the opcode or the kind is forced there), feeds each result back, and delivers
//! the outcome the op returns.

use super::ops::{CancelWhy, BESIDE_TAG, MAX_FIXED_PER_OP, SLOT_BITS};
use super::runner::Shard;
use super::{IoOp, Reply};
use crate::error::Result;
use crate::op::FixedBuf;
use std::os::fd::RawFd;
use std::path::Path;

impl Shard {
    /// Issues the next round of a [`FileOp`](crate::op::FileOp): its SQE, or, where the kernel
    /// lacks its opcode (or the kind is forced there, or the op has no SQE), its blocking call on
    /// this thread, finished at once.
    pub(super) fn issue_file_op(&mut self, slot: u32) -> Result<bool> {
        let gen = self.ops.gen(slot);
        let raw = self.fd_of(slot);
        let Some(op) = self.ops.get(slot) else {
            return Ok(true);
        };
        let blocking = self.blocking[op.kind.index()];
        let target = op.target;
        if !matches!(op.io, IoOp::File(_)) {
            return Ok(true);
        }
        op.issued = 1;
        if !blocking && op.fixed.is_none() {
            self.lend_fixed(slot);
        }
        let Some(op) = self.ops.get(slot) else {
            return Ok(true);
        };
        let IoOp::File(f) = &mut op.io else {
            return Ok(true);
        };
        let fd = crate::op::OpFd { target, raw };
        let entry = if blocking { None } else { f.sqe(fd) };
        let entry = match entry {
            Some(entry) => entry,
            None => {
                let res = f.run_blocking(raw);
                self.file_op_result(slot, res, 0, raw);
                return Ok(true);
            }
        };
        let beside = f.sqe_beside(fd);
        let user_data = u64::from(slot) | (u64::from(gen) << SLOT_BITS);
        if let Err(e) = self.push_entry(&entry.user_data(user_data)) {
            if beside.is_some() {
                if let Some(IoOp::File(f)) = self.ops.get(slot).map(|op| &mut op.io) {
                    f.on_beside(-libc::EAGAIN);
                }
            }
            return Err(e);
        }
        // The SQE beside it, if any: not pushed (a full SQ the kernel will not take), it is
        // answered EAGAIN and the round goes on without it.
        let beside = beside.map(|b| self.push_entry(&b.user_data(user_data | BESIDE_TAG)));
        if let Some(op) = self.ops.get(slot) {
            op.outstanding = 1 + u32::from(matches!(beside, Some(Ok(()))));
            op.peer_round = op.kind.waits_for_peer()
                || matches!(&op.io, IoOp::File(f) if f.round_waits_for_peer());
            if op.peer_round {
                self.peer_in_flight += 1;
            }
            if let (Some(Err(_)), IoOp::File(f)) = (&beside, &mut op.io) {
                f.on_beside(-libc::EAGAIN);
            }
        }
        Ok(true)
    }

    /// The CQE of the SQE beside a round's own ([`FileOp::sqe_beside`](crate::op::FileOp::sqe_beside)):
    /// to the op; and if the round's own last CQE came first (kept in `round_end`), the round
    /// ends now.
    pub(super) fn file_op_beside(&mut self, slot: u32, res: i32, raw: RawFd) {
        let Some(op) = self.ops.get(slot) else { return };
        op.outstanding = op.outstanding.saturating_sub(1);
        if let IoOp::File(f) = &mut op.io {
            f.on_beside(res);
        }
        if let Some((res, flags)) = op.round_end.take() {
            self.file_op_result(slot, res, flags, raw);
        }
    }

    /// Before the first round of op `slot`: lends it the registered pool buffers it asks for
    /// ([`FileOp::fixed_wanted`](crate::op::FileOp::fixed_wanted)), as many as are free beyond
    /// half the pool, which stays for O_DIRECT reads and writes (an op may hold its buffers as
    /// long as a peer that stops reading holds its SEND_ZC's pages: it must not starve the
    /// shard's file I/O, which waits for a free buffer). Each is marked in flight in the pool
    /// (the caller's record) until [`return_fixed`](Self::return_fixed): a shard that stops with
    /// the op in the kernel leaves the mark, and the pool keeps its slab mapped.
    fn lend_fixed(&mut self, slot: u32) {
        let mut held = [None; MAX_FIXED_PER_OP];
        let mut bufs = [None; MAX_FIXED_PER_OP];
        let registered = self.pool.is_registered();
        let Some(op) = self.ops.get(slot) else { return };
        let IoOp::File(f) = &mut op.io else { return };
        let (want, bytes) = f.fixed_wanted();
        let reserve = self.pool.total_count() / 2;
        if registered && want > 0 && self.pool.buffer_size() >= bytes {
            for (h, b) in held.iter_mut().zip(&mut bufs).take(want) {
                if self.pool.available_count() <= reserve {
                    break;
                }
                let Some((index, buf)) = self.pool.try_acquire() else {
                    break;
                };
                let (ptr, len) = (buf.as_mut_ptr(), buf.len());
                self.pool.mark_in_flight(index);
                *h = Some(index);
                *b = std::ptr::NonNull::new(ptr).map(|ptr| FixedBuf { index, ptr, len });
            }
        }
        let Some(op) = self.ops.get(slot) else { return };
        op.fixed = Some(held);
        let lent: Vec<FixedBuf> = bufs.iter().flatten().copied().collect();
        if let (IoOp::File(f), false) = (&mut op.io, lent.is_empty()) {
            f.use_fixed(&lent);
        }
    }

    /// Takes back the pool buffers a `FileOp` that has left the op table held (nothing of it is
    /// in the kernel: its last CQE came).
    pub(super) fn return_fixed(&mut self, held: Option<[Option<u16>; MAX_FIXED_PER_OP]>) {
        for index in held.iter().flatten().flatten() {
            self.pool.complete_in_flight(*index);
            self.pool.release(*index);
        }
    }

    /// A round of a [`FileOp`](crate::op::FileOp) ended with `res` (a CQE's or its blocking
    /// call's; `flags`: the CQE's): another round, or finish. A CQE with `IORING_CQE_F_MORE` does
    /// not end its multishot round: see [`file_op_more`](Self::file_op_more).
    pub(super) fn file_op_result(&mut self, slot: u32, res: i32, flags: u32, raw: RawFd) {
        if io_uring::cqueue::more(flags) {
            self.file_op_more(slot, res, flags, raw);
            return;
        }
        let Some(op) = self.ops.get(slot) else { return };
        if op.outstanding > 1 {
            // The SQE beside this one is still in the kernel: the round ends with its CQE
            // (`file_op_beside`), this one counted in flight until then.
            op.round_end = Some((res, flags));
            return;
        }
        if let IoOp::File(f) = &mut op.io {
            f.on_cqe(res, flags);
        }
        let res = restart_as_eintr(res);
        let peer_sqe = op.outstanding > 0 && std::mem::take(&mut op.peer_round);
        op.outstanding = 0;
        if peer_sqe {
            self.peer_in_flight = self.peer_in_flight.saturating_sub(1);
        }
        let Some(op) = self.ops.get(slot) else { return };
        if std::mem::take(&mut op.parked) && op.cancel.is_none() && res == -libc::ECANCELED {
            // Taken out for closures (`park_peer_ops`), not ended: the same round again after
            // them (issue() runs once no closure is queued).
            op.issued = 0;
            self.enqueue(slot);
            return;
        }
        let IoOp::File(f) = &mut op.io else { return };
        let again = match res {
            r if r == -libc::EINTR => true,
            r if r < 0 => match f.on_errno(-r) {
                Some(crate::op::Step::Again) => true,
                _ => {
                    op.errno = Some(-r);
                    false
                }
            },
            r => f.on_result(r, flags, raw) == crate::op::Step::Again,
        };
        if res >= 0 && !again && f.cancel_in_flight() && f.failed().is_none() {
            // The kernel finished the op before its cancellation reached it: its result (bytes
            // received, a connection accepted) is delivered, not lost. (Not one that failed
            // earlier, a SEND_ZC whose result was ECANCELED and whose notification ends it.)
            op.cancel = None;
        }
        // A cancelled op whose next round must land runs it, and ends as cancelled at the first
        // round that may be cancelled (a receive that took bytes from its peer writes them
        // before it stops: `FileOp::cancel_in_flight` is false while it holds them). Not after
        // shutdown's grace period, which stops everything.
        let go_on = match op.cancel {
            None => true,
            Some(why) => why != CancelWhy::Shutdown && !f.cancel_in_flight(),
        };
        if again && go_on {
            if res >= 0 && f.rounds_are_ops() {
                self.count_round(slot);
            }
            let Some(op) = self.ops.get(slot) else { return };
            op.issued = 0;
            // Counts finished rounds: the op has started, so it is not skipped between rounds
            // (a half-done vectored write is not cut short by a dropped handle).
            op.transferred += 1;
            self.enqueue(slot);
        } else {
            self.finish(slot);
        }
    }

    /// A CQE of a multishot round that more CQEs follow: the op stays in the table with its SQE
    /// counted in flight (`outstanding`, `in_flight`, `peer_in_flight` are left as they are), so
    /// drain, shutdown and `Drop for Shard` treat it as in the kernel until its last CQE. If
    /// the op asks to stop, or nobody waits for it any more, its round is cancelled in the
    /// kernel (ASYNC_CANCEL, once); its last CQE then finishes it.
    fn file_op_more(&mut self, slot: u32, res: i32, flags: u32, raw: RawFd) {
        let Some(op) = self.ops.get(slot) else { return };
        let IoOp::File(f) = &mut op.io else { return };
        let step = f.on_more(res, flags, raw);
        // A multishot accept's CQEs are connections, each counted; a SEND_ZC's first CQE is
        // half of one round.
        let counted = f.rounds_are_ops();
        let why = if op.cancel.is_some() {
            None // cancelled already: its last CQE is on its way
        } else if step == crate::op::Step::Done || f.stopped() {
            Some(CancelWhy::Stopped)
        } else if f.is_cancelled() {
            Some(CancelWhy::Dropped)
        } else {
            None
        };
        if counted {
            self.count_round(slot);
        }
        if let Some(why) = why {
            self.cancel(slot, why);
        }
    }

    /// Counts a round of op `slot` that ended well as an operation of its own (see
    /// [`FileOp::rounds_are_ops`](crate::op::FileOp::rounds_are_ops)); the next round's time
    /// starts now.
    fn count_round(&mut self, slot: u32) {
        let now = self.now();
        let Some(op) = self.ops.get(slot) else { return };
        let (kind, at) = (op.kind, op.at);
        op.at = now;
        let lat = self.elapsed_since(at);
        self.stats.record(kind, 0, lat);
    }

    /// Completes a [`FileOp`](crate::op::FileOp): its outcome to its handle, its known-size
    /// change to the file (on success), the stats.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish_file_op(
        &mut self,
        mut f: Box<dyn crate::op::FileOp>,
        reply: Reply,
        cancel: Option<CancelWhy>,
        errno: Option<i32>,
        path: &Path,
        file_slot: u32,
        lat: u64,
        answered: bool,
    ) {
        let kind = f.kind();
        let errno = errno.or_else(|| f.failed());
        let result = if let Some(why) = cancel {
            if let Some(errno) = super::cancel::counted_after_cancel(errno) {
                self.stats.record_error(kind, errno, lat);
            }
            if answered {
                // Its handle got (and the stats counted) this error when it was cancelled.
                Err(super::cancel::cancel_error_of(why, kind, Some(path)))
            } else {
                Err(self.cancel_error(why, kind, Some(path)))
            }
        } else if let Some(errno) = errno {
            self.stats.record_error(kind, errno, lat);
            Err(f.error(errno, path))
        } else {
            if let Some(inode) = self.files.inode_of(file_slot) {
                if inode.size_setters == 0 || f.sets_size() {
                    f.size_after(&mut inode.size_hint);
                }
            }
            Ok(())
        };
        if f.sets_size() {
            if let Some(inode) = self.files.inode_of(file_slot) {
                inode.size_setters = inode.size_setters.saturating_sub(1);
            }
        }
        let ok = result.is_ok();
        let bytes = reply.deliver_outcome(f.complete(result), &mut self.sessions);
        if ok {
            self.stats.record(kind, bytes, lat);
        }
    }
}

/// A result with one of the kernel's internal restart codes (ERESTARTSYS 512 to
/// ERESTART_RESTARTBLOCK 516) as -EINTR, what a system call interrupted by a signal returns.
/// They never reach user space from a system call, but a CQE can carry one: a SPLICE that an
/// io-wq worker runs, waiting for a socket, ends with -ERESTARTSYS when an ASYNC_CANCEL
/// interrupts it (seen on 6.18: "errno 512" for a recv_file taken out for a closure). As EINTR
/// the round is repeated, or ends a cancelled op as its cancellation, never as an unknown error.
fn restart_as_eintr(res: i32) -> i32 {
    const ERESTARTSYS: i32 = 512;
    const ERESTART_RESTARTBLOCK: i32 = 516;
    if (-ERESTART_RESTARTBLOCK..=-ERESTARTSYS).contains(&res) {
        -libc::EINTR
    } else {
        res
    }
}

#[cfg(test)]
mod tests {
    use super::restart_as_eintr;

    #[test]
    fn kernel_restart_codes_are_eintr_and_nothing_else_is() {
        for code in 512..=516 {
            assert_eq!(restart_as_eintr(-code), -libc::EINTR);
        }
        for res in [
            0,
            1,
            512,
            -511,
            -517,
            -libc::ECANCELED,
            -libc::EAGAIN,
            i32::MIN,
        ] {
            assert_eq!(restart_as_eintr(res), res);
        }
    }
}
