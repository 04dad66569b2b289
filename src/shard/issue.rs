//! Issuing: ready ops, in order and at most [`ISSUE_BATCH`] per turn, get their next SQE, or run
//! on this thread where that is their path (inline writes, closes, blocking file ops). The memory
//! path's read and write SQEs are built here.

use super::cancel::skip_reason;
use super::files::FileEntry;
use super::ops::{DataPath, MAX_SQE_BYTES, SLOT_BITS};
use super::runner::Shard;
use super::IoOp;
use crate::error::Result;
use crate::pool::Target;
use io_uring::{opcode, types};
use std::os::fd::RawFd;

/// SQEs issued per turn at most. A turn ends with a submit, a reap and the delivery of results,
/// so a smaller batch hands results back sooner and callers refill while the shard works on the
/// rest. Measured (routed 4 KiB reads, 1 shard x 1 client, QD32, interleaved): unbounded, the
/// shard and its caller took turns (1.0-1.4 cores busy); 8 to 32 kept both cores busy.
const ISSUE_BATCH: usize = 32;

impl Shard {
    /// Issues SQEs for ready ops, in order, until buffers or CQ room run out.
    pub(super) fn issue(&mut self) -> bool {
        let mut any = false;
        let mut issued = 0usize;
        while let Some(&slot) = self.ready.front() {
            if issued >= ISSUE_BATCH {
                break;
            }
            let Some(op) = self.ops.get(slot) else {
                self.ready.pop_front();
                continue;
            };
            if !op.more_to_issue() {
                op.queued = false;
                self.ready.pop_front();
                if op.finished() {
                    self.finish(slot);
                }
                continue;
            }
            let fresh = !op.started();
            if fresh && self.hold_behind_task_reads(slot) {
                continue;
            }
            if !self.has_cq_room() {
                break;
            }
            // Room for the op's SQE before it is built (an op is not undone halfway): a kernel
            // that takes nothing until completions are reaped (EBUSY) stops the turn here.
            if self.ring.sq_space() == 0 && !matches!(self.make_sq_room(), Ok(true)) {
                break;
            }
            if fresh {
                // Dropped or past its deadline while it waited: it never runs.
                let now = self.now();
                let why = self.ops.get(slot).and_then(|op| {
                    skip_reason(op.kind, &op.io, &op.reply, op.deadline, now, &self.sessions)
                });
                if let Some(why) = why {
                    if let Some(op) = self.ops.get(slot) {
                        op.cancel = Some(why);
                    }
                    self.finish(slot);
                    any = true;
                    continue;
                }
            }
            match self.issue_one(slot) {
                Ok(true) => {
                    any = true;
                    issued += 1;
                }
                Ok(false) => break, // no free buffer: wait for completions
                Err(e) => {
                    // Pushing failed for a reason that will not pass: fail the op.
                    if let Some(op) = self.ops.get(slot) {
                        op.errno.get_or_insert(e.errno().unwrap_or(libc::EIO));
                    }
                    any = true;
                }
            }
        }
        if any {
            self.stats.note_in_flight(u64::from(self.ops_in_flight()));
        }
        any
    }

    /// Issues the next SQE of op `slot`. `Ok(false)`: it needs a buffer and none is free.
    fn issue_one(&mut self, slot: u32) -> Result<bool> {
        let gen = self.ops.gen(slot);
        let Some(op) = self.ops.get(slot) else {
            return Ok(true);
        };
        if op.data_path == DataPath::Inline {
            let file_slot = op.file_slot;
            if self.inline_writes_paused(file_slot) {
                // A recent write of this file stalled the shard: this one waits in the kernel.
                if let Some(op) = self.ops.get(slot) {
                    op.data_path = DataPath::Memory;
                }
            }
        }
        let Some(op) = self.ops.get(slot) else {
            return Ok(true);
        };
        let user_data = u64::from(slot) | (u64::from(gen) << SLOT_BITS);
        let entry = match (&op.io, op.data_path) {
            (IoOp::Read { .. } | IoOp::Write { .. }, DataPath::Fixed) => {
                return self.issue_chunk(slot)
            }
            (IoOp::Write { .. }, DataPath::Inline) => {
                self.write_inline(slot);
                return Ok(true);
            }
            (IoOp::Read { .. }, DataPath::Memory) => {
                let at = op.transferred;
                // Grow as data arrives (READ_STEP, then doubling): memory stays within about
                // twice what the read returns, whatever length it asked for.
                let n = crate::op::read::next_sqe_len(op.len, at, MAX_SQE_BYTES);
                // `out.len()` is `at` (set after each completion): room for `n` more.
                op.out.reserve_exact(n as usize);
                // SAFETY (pointer arithmetic): `out` has capacity >= len + n = at + n, so the
                // pointer is inside (or one past) its allocation.
                let ptr = unsafe { op.out.as_mut_ptr().add(at as usize) };
                let off = op.offset + at;
                op.issued = at + n;
                let flags = op.io.rw_flags();
                match op.target {
                    Target::Fixed(s) => opcode::Read::new(types::Fixed(s), ptr, n as u32)
                        .offset(off)
                        .rw_flags(flags)
                        .build(),
                    Target::Fd(fd) => opcode::Read::new(types::Fd(fd), ptr, n as u32)
                        .offset(off)
                        .rw_flags(flags)
                        .build(),
                }
            }
            (IoOp::Write { data, flags, .. }, _) => {
                let (at, n) = (op.transferred, (op.len - op.transferred).min(MAX_SQE_BYTES));
                // SAFETY (pointer arithmetic): at + n <= data.len().
                let ptr = unsafe { data.as_ptr().add(at as usize) };
                let off = op.offset + at;
                op.issued = at + n;
                match op.target {
                    Target::Fixed(s) => opcode::Write::new(types::Fixed(s), ptr, n as u32)
                        .offset(off)
                        .rw_flags(*flags)
                        .build(),
                    Target::Fd(fd) => opcode::Write::new(types::Fd(fd), ptr, n as u32)
                        .offset(off)
                        .rw_flags(*flags)
                        .build(),
                }
            }
            (IoOp::Read { .. }, _) => return self.issue_chunk(slot),
            (IoOp::File(_), _) => return self.issue_file_op(slot),
            (IoOp::Close(_), _) => {
                // Synchronous and cheap: run it here, in order.
                op.issued = 1;
                self.run_close(slot);
                return Ok(true);
            }
        };
        self.push_entry(&entry.user_data(user_data))?;
        if let Some(op) = self.ops.get(slot) {
            op.outstanding = 1;
        }
        Ok(true)
    }

    /// The raw descriptor of op `slot`'s file.
    pub(super) fn fd_of(&mut self, slot: u32) -> RawFd {
        let Some(op) = self.ops.get(slot) else {
            return -1;
        };
        match op.target {
            Target::Fd(fd) => fd,
            Target::Fixed(_) => {
                let file_slot = op.file_slot;
                self.files.get(file_slot).map_or(-1, FileEntry::fd)
            }
        }
    }
}
