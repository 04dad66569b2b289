//! The read and write paths that use no pool buffer: the memory path's completions (a page-cache
//! read into the caller's vector, a write from the caller's data; a short transfer's rest goes out
//! next turn) and inline buffered writes (`pwrite` on this thread, sent through the ring for a
//! while after one stalls).

use super::ops::{DataPath, Op, BESIDE_TAG, GEN_MASK, SLOT_BITS, SLOT_MASK};
use super::runner::Shard;
use super::IoOp;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// How long a file's buffered writes go through the ring after a slow inline one.
pub(super) const INLINE_PAUSE: Duration = Duration::from_secs(5);

impl Shard {
    pub(super) fn complete_plain(&mut self, ud: u64, res: i32, flags: u32) {
        let slot = (ud & SLOT_MASK) as u32;
        if u64::from(self.ops.gen(slot)) != (ud >> SLOT_BITS) & GEN_MASK {
            return; // stale: cannot happen while slots outlive their SQEs, but never misroute
        }
        let Some(op) = self.ops.get(slot) else { return };
        if matches!(op.io, IoOp::File(_)) {
            let raw = self.fd_of(slot);
            if ud & BESIDE_TAG != 0 {
                self.file_op_beside(slot, res, raw);
            } else {
                self.file_op_result(slot, res, flags, raw);
            }
            return;
        }
        op.outstanding = op.outstanding.saturating_sub(1);
        if op.data_path == DataPath::Memory
            && matches!(op.io, IoOp::Read { .. } | IoOp::Write { .. })
        {
            let is_read = matches!(op.io, IoOp::Read { .. });
            match res {
                r if r < 0 && crate::op::rw::retried(-r, op.io.rw_flags()) => {}
                r if r < 0 => op.errno = Some(-r),
                // A read of 0 bytes is the end of the file; a write of 0 would loop forever.
                0 if is_read => op.eof = Some(op.transferred),
                0 => op.errno = Some(libc::EIO),
                r => {
                    op.transferred += r as u64;
                    if is_read {
                        debug_assert!(op.out.len() + r as usize == op.transferred as usize);
                        // SAFETY: the kernel initialized bytes up to `transferred`, which is
                        // within the capacity reserved before the read was issued.
                        unsafe { op.out.set_len(op.transferred as usize) };
                    }
                }
            }
            // The rest of a short transfer (or a retry) goes out next turn.
            op.issued = op.transferred;
            if !op.finished() {
                self.enqueue(slot);
                return;
            }
        } else if res < 0 {
            op.errno = Some(-res);
        }
        self.finish(slot);
    }

    /// Writes a buffered write of the op table with `pwrite` on this thread, then finishes it.
    pub(super) fn write_inline(&mut self, slot: u32) {
        let fd = self.fd_of(slot);
        let Some(op) = self.ops.get(slot) else { return };
        let (stalled, file_slot) = pwrite_op(op, fd, self.cfg.inline_write_stall);
        self.after_inline_write(stalled, file_slot);
        self.finish(slot);
    }

    /// A buffered write admitted while nothing of its file is unfinished (see
    /// `admit::write_now`): written with `pwrite` at once and completed, never in the op table
    /// or its file's order. `fd` is its file's descriptor.
    pub(super) fn write_inline_now(&mut self, mut op: Op, fd: RawFd) {
        let (stalled, file_slot) = pwrite_op(&mut op, fd, self.cfg.inline_write_stall);
        self.after_inline_write(stalled, file_slot);
        self.stats.note_write_at_admission();
        self.complete(op);
    }

    /// After an inline write: one that stalled sends its file's next writes through the ring
    /// for a while.
    fn after_inline_write(&mut self, stalled: bool, file_slot: u32) {
        if stalled {
            let now = Instant::now();
            if let Some(entry) = self.files.get_mut(file_slot) {
                entry.inline_paused_until = now.checked_add(INLINE_PAUSE);
            }
            // The turn's clock is far behind now: later reads of it take the time after this.
            self.clock = Some(now);
        }
    }

    /// Whether buffered writes of file `file_slot` go through the ring now (a recent one
    /// stalled the shard).
    pub(super) fn inline_writes_paused(&mut self, file_slot: u32) -> bool {
        let now = self.now();
        self.files
            .get(file_slot)
            .and_then(|e| e.inline_paused_until)
            .is_some_and(|until| now < until)
    }
}

/// Writes `op`'s data with `pwrite` on `fd` (its file's, open until its close, which cannot run
/// before the write is over: a close waits for it), recording what landed and the errno. Returns
/// whether one system call stalled (see `ShardConfig::inline_write_stall`), and the op's file slot.
fn pwrite_op(op: &mut Op, fd: RawFd, inline_stall: Option<Duration>) -> (bool, u32) {
    // why: one system call that blocked, not a long write: a big write copies for a while
    // (allowed at 1 GB/s), and a write made of many short ones (FUSE) takes many calls.
    let mut stalled = false;
    let mut each_call = |took: Duration, bytes: usize| {
        // The threshold, plus 1 ns per byte asked: a page-cache write copies at GB/s.
        let slow = inline_stall.unwrap_or(Duration::MAX);
        stalled |= took > slow.saturating_add(Duration::from_nanos(bytes as u64));
    };
    // With detection off, no clock is read around the writes.
    let timing = inline_stall
        .is_some()
        .then_some(&mut each_call as &mut dyn FnMut(_, _));
    if let IoOp::Write { data, .. } = &op.io {
        match crate::op::rw::pwrite_all_timed(fd, data, op.offset, op.io.rw_flags(), timing) {
            Ok(n) => op.transferred = n as u64,
            Err((done, errno)) => {
                op.transferred = done as u64;
                op.errno = Some(errno);
            }
        }
    }
    op.issued = op.len;
    (stalled, op.file_slot)
}
