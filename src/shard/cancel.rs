//! Cancellation and deadlines: an op whose handle was dropped (or cancelled), whose session was dropped, or
//! whose deadline passed is skipped if the kernel has not seen it, checked when it is admitted
//! and when it is issued. Ops already in the kernel are looked at every [`SCAN_EVERY`] (the shard
//! sleeps no longer than that while ops are in flight): reads get an ASYNC_CANCEL, writes and
//! syncs finish (a write is never torn out of order), except after shutdown's grace period, when
//! everything left is cancelled. Ops whose rounds may wait forever (`FileOp::cancel_in_flight`:
//! sockets, send_file) are cancelled like reads, and at once when shutdown begins: they wait for
//! a peer, not for a device. Buffers are released only at each SQE's own completion.

use super::context::CANCEL_USER_DATA;
use super::ops::{CancelWhy, DataPath, BESIDE_TAG, SLOT_BITS};
use super::runner::Shard;
use super::session_table::SessionTable;
use super::{IoOp, Reply};
use crate::error::Error;
use crate::stats::OpKind;
use io_uring::opcode;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often ops in the kernel are checked for cancellation and deadlines, and the longest the
/// shard sleeps while ops are in flight.
pub(super) const SCAN_EVERY: Duration = Duration::from_millis(5);

/// Why an op should not run (or go on) any more: nobody waits for it, its deadline passed, or
/// it stopped by its own rules (`FileOp::stopped`).
/// A close is never skipped: whoever dropped its handle still wants the file closed (the handle's
/// own drop sends no second close once an explicit one was sent).
pub(super) fn skip_reason(
    kind: OpKind,
    io: &IoOp,
    reply: &Reply,
    deadline: Option<Instant>,
    now: Instant,
    sessions: &SessionTable,
) -> Option<CancelWhy> {
    if kind == OpKind::Close {
        return None;
    }
    if deadline.is_some_and(|d| now >= d) {
        return Some(CancelWhy::Deadline);
    }
    if io.stopped() {
        // Its own end (an accept whose listener is gone): taken out, counted as nothing.
        return Some(CancelWhy::Stopped);
    }
    (reply.is_cancelled(sessions) || io.is_cancelled()).then_some(CancelWhy::Dropped)
}

impl Shard {
    /// Takes the socket ops waiting for peers out of the ring (ASYNC_CANCEL), so queued
    /// `submit_to` closures, which run once nothing of the shard's is in the kernel, do not wait
    /// for a peer that may never speak. Each is marked `parked`: its ECANCELED puts it back in
    /// the ready queue (`file_op_result`), and it is issued again after the closures; a result
    /// that beat the cancellation is its result, as for any cancellation.
    pub(super) fn park_peer_ops(&mut self) {
        self.parking_peers = true;
        let mut targets = Vec::new();
        for (slot, (gen, op)) in self.ops.slots.iter_mut().enumerate() {
            let Some(op) = op else { continue };
            if op.outstanding > 0 && op.peer_round && op.cancel.is_none() && !op.parked {
                op.parked = true;
                targets.push(slot as u64 | (u64::from(*gen) << SLOT_BITS));
            }
        }
        for ud in targets {
            let entry = opcode::AsyncCancel::new(ud)
                .build()
                .user_data(CANCEL_USER_DATA);
            if self.push_entry(&entry).is_err() {
                // Not pushed: the op stays in the kernel; the next park tries again.
                self.parking_peers = false;
                if let Some(op) = self.ops.get((ud & ((1 << SLOT_BITS) - 1)) as u32) {
                    op.parked = false;
                }
            }
        }
    }

    /// Every [`SCAN_EVERY`]: cancels what nobody waits for or what is past its deadline, and
    /// ends shutdown's grace period.
    pub(super) fn housekeeping(&mut self) {
        let now = self.now();
        if now.saturating_duration_since(self.last_scan) < SCAN_EVERY {
            return;
        }
        self.last_scan = now;
        if self.closing && !self.cancel_all && self.closing_deadline.is_some_and(|d| now >= d) {
            self.cancel_all = true;
            self.abandon_at = now.checked_add(super::runner::ABANDON_AFTER);
        }
        for slot in 0..self.ops.slots.len() as u32 {
            let Some(op) = self.ops.get(slot) else {
                continue;
            };
            if op.cancel.is_some() {
                continue;
            }
            // A socket op waiting for its peer is not work in progress that the grace period
            // lets land: a peer that says nothing would hold shutdown for all of it.
            let waits_for_peer = matches!(&op.io, IoOp::File(f) if f.cancel_in_flight());
            let why = if self.cancel_all || (self.closing && waits_for_peer) {
                Some(CancelWhy::Shutdown)
            } else {
                skip_reason(op.kind, &op.io, &op.reply, op.deadline, now, &self.sessions)
            };
            if let Some(why) = why {
                self.cancel(slot, why);
            }
        }
        self.scan_task_reads(now);
    }

    /// Cancels op `slot`: one the kernel has not seen is finished now; of one in the kernel,
    /// reads (everything, after shutdown's grace) get an ASYNC_CANCEL per SQE, and it finishes
    /// at its completions. Issued writes and syncs finish normally.
    pub(super) fn cancel(&mut self, slot: u32, why: CancelWhy) {
        let gen = self.ops.gen(slot);
        let Some(op) = self.ops.get(slot) else { return };
        if !op.started() {
            op.cancel = Some(why);
            self.finish(slot);
            return;
        }
        let is_read = match &op.io {
            IoOp::Read { .. } => true,
            IoOp::File(f) => f.cancel_in_flight(),
            _ => false,
        };
        if !is_read && why != CancelWhy::Shutdown {
            return;
        }
        op.cancel = Some(why);
        let targets: Vec<u64> = match op.data_path {
            DataPath::Fixed => self
                .chunks
                .iter()
                .enumerate()
                .filter(|(i, c)| c.op == slot && self.pool.is_kernel_owned(*i as u16))
                .map(|(_, c)| c.user_data)
                .collect(),
            _ if op.outstanding > 0 => {
                let ud = u64::from(slot) | (u64::from(gen) << SLOT_BITS);
                // Two: a `FileOp` round with an SQE beside its own (`sqe_beside`).
                let beside = (op.outstanding > 1).then_some(ud | BESIDE_TAG);
                std::iter::once(ud).chain(beside).collect()
            }
            _ => Vec::new(),
        };
        if targets.is_empty() {
            // Nothing in the kernel right now (between two SQEs of a long read): done.
            if let Some(op) = self.ops.get(slot) {
                if op.outstanding == 0 {
                    self.finish(slot);
                }
            }
            return;
        }
        let mut sent = false;
        for ud in targets {
            let entry = opcode::AsyncCancel::new(ud)
                .build()
                .user_data(CANCEL_USER_DATA);
            sent |= self.push_entry(&entry).is_ok();
        }
        let Some(op) = self.ops.get(slot) else { return };
        if !sent {
            // Not one cancel went in (the SQ could not be flushed): the next scan tries again.
            op.cancel = None;
            return;
        }
        if why != CancelWhy::Shutdown
            && matches!(
                op.reply,
                Reply::Data(_) | Reply::Count(_) | Reply::Unit(_) | Reply::Size(_)
            )
        {
            // why: a read the kernel cannot stop at once (a stalled device, FUSE) would keep a
            // caller that cancelled it, or whose deadline passed, waiting for the device. The
            // handle gets its error now; the op, its buffer included, stays in the table until
            // its own completion (and is counted then).
            let reply = std::mem::replace(&mut op.reply, Reply::Detached);
            op.answered = true;
            let (kind, path) = (op.kind, Arc::clone(&op.path));
            let e = self.cancel_error(why, kind, Some(&path));
            reply.deliver(Err(e), Vec::new(), &mut self.sessions);
        } else if why != CancelWhy::Shutdown && matches!(op.reply, Reply::InOp) {
            // An op with its own completer whose round may outlive the cancellation by far (a
            // SEND_ZC's notification waits for the peer's acknowledgement) answers now if it
            // can (`FileOp::answer_when_cancelled`); it stays in the table until its last CQE.
            let (kind, path) = (op.kind, Arc::clone(&op.path));
            let e = cancel_error_of(why, kind, Some(&path));
            let IoOp::File(f) = &mut op.io else { return };
            if f.answer_when_cancelled(e) {
                op.answered = true;
                // Counted once, now.
                let _ = self.cancel_error(why, kind, Some(&path));
            }
        }
    }

    /// The error a cancelled op completes with.
    /// The error of an op cancelled for `why`, counted in the stats.
    pub(super) fn cancel_error(
        &mut self,
        why: CancelWhy,
        kind: OpKind,
        path: Option<&Path>,
    ) -> Error {
        match why {
            CancelWhy::Deadline => self.stats.note_deadline_exceeded(),
            CancelWhy::Dropped | CancelWhy::Shutdown => self.stats.note_cancelled(),
            CancelWhy::Stopped => {}
        }
        cancel_error_of(why, kind, path)
    }
}

/// What a cancelled op's own failure adds to the error counts: nothing when it is the kernel's
/// answer to the cancellation (ECANCELED; EINTR from a blocking call the cancel interrupted),
/// which `cancelled` or `deadline_exceeded` counts already, whenever that CQE arrives; any other
/// error the op got before it was stopped (EIO, ...) is counted.
pub(super) fn counted_after_cancel(errno: Option<i32>) -> Option<i32> {
    errno.filter(|&e| e != libc::ECANCELED && e != libc::EINTR)
}

/// The error of an op cancelled for `why`.
pub(super) fn cancel_error_of(why: CancelWhy, kind: OpKind, path: Option<&Path>) -> Error {
    let path = path.map(Path::to_path_buf);
    match why {
        CancelWhy::Deadline => Error::DeadlineExceeded {
            op: kind.name(),
            path,
            written: None,
        },
        CancelWhy::Dropped | CancelWhy::Shutdown | CancelWhy::Stopped => Error::Cancelled {
            op: kind.name(),
            path,
            written: None,
        },
    }
}
