//! The shard side of the task-local read path (the task side is `local_io.rs`).
//!
//! A task's read of its own shard's file (page cache, one SQE's worth) skips the op table, the
//! per-file order list and the ready queue when its file has nothing older unfinished: its SQE is
//! pushed as the shard takes it, its state is a slot of [`TaskReads`] (named in `user_data` with
//! [`TASK_READ_TAG`], the slot and a generation), and its completion fills the task's buffer and
//! completes its handle.
//!
//! Order. Per file (inode) the only state is a count of such reads in flight and the byte range
//! that covers them (counters, no list), kept in the inode's entry of the file table, which a
//! read looks up anyway when it starts and when it ends:
//! - a queued read goes this way only while the file's order list is empty (nothing older
//!   unfinished: no write waiting or running) and the backlog is empty; otherwise it is admitted
//!   as an ordinary request, behind what is there;
//! - an ordinary op about to be issued for the first time waits ("held") while it conflicts with
//!   the file's reads in flight here (a write overlapping their range, fsync never, anything else
//!   always: close, fallocate, size), and is queued again when the last of them finishes. Reads
//!   never conflict with reads.
//!
//! Cancellation and deadlines are the op table's: every scan, a read whose handle was dropped
//! or whose deadline passed (everything, after shutdown's grace period) gets an ASYNC_CANCEL, and
//! a caller who cancelled gets its error at once; the buffer stays here until the read's own
//! completion. Statistics are counted as for every read (ops, bytes, latency from the request,
//! errors, cancellations, deadlines, slow-op log).
//!
//! This file is a child module of `runner.rs` so that it can reach the shard's fields; each hook
//! there is one call.

use super::context::CANCEL_USER_DATA;
use super::ops::{CancelWhy, MAX_SQE_BYTES};
use super::runner::Shard;
use crate::completion::Completer;
use crate::error::Error;
use crate::file::FileRef;
use crate::op::Footprint;
use crate::router::FileKey;
use crate::shard::local_io::{self, QueuedRead};
use crate::shard::order::conflicts;
use crate::shard::{IoOp, IoRequest, Message, Reply};
use crate::stats::OpKind;
use io_uring::{opcode, types};
use std::time::Instant;

/// `user_data` tag of a task read: `TASK_READ_TAG | generation << 32 | slot`. Bits 62 and 63 are
/// the timers' and the pool's tags.
pub(super) const TASK_READ_TAG: u64 = 1 << 61;
/// Mask of the slot part.
const SLOT_MASK: u64 = (1 << 32) - 1;
/// Mask of the generation part (below the tag).
const GEN_MASK: u64 = (1 << 29) - 1;

/// One read in flight.
struct InFlight {
    key: FileKey,
    file: FileRef,
    offset: u64,
    len: u64,
    /// Filled by the kernel up to `len`; its length is what arrived.
    buf: Vec<u8>,
    /// `None` once the caller got its answer (cancelled: its error was delivered at once).
    done: Option<Completer<Vec<u8>>>,
    at: Instant,
    deadline: Option<Instant>,
    cancel: Option<CancelWhy>,
    errno: Option<i32>,
    eof: bool,
}

/// One inode's reads in flight here, kept in its entry of the file table (`files::Inode`), which
/// a read looks up anyway: no table of its own to look up per read.
#[derive(Default, Debug)]
pub(super) struct FileReads {
    count: u32,
    /// Covers every one of them (grows until the count drops to zero).
    start: u64,
    end: u64,
}

impl FileReads {
    /// One more read of `start..end`.
    fn add(&mut self, start: u64, end: u64) {
        if self.count == 0 {
            (self.start, self.end) = (start, end);
        } else {
            (self.start, self.end) = (self.start.min(start), self.end.max(end));
        }
        self.count += 1;
    }

    /// One read fewer; returns whether it was the last.
    fn remove(&mut self) -> bool {
        self.count = self.count.saturating_sub(1);
        self.count == 0
    }

    /// The footprint covering the reads, if any.
    fn covering(&self) -> Option<Footprint> {
        (self.count > 0).then_some(Footprint::Read {
            start: self.start,
            end: self.end,
        })
    }
}

/// The shard's task reads in flight and the ops held behind them.
#[derive(Default)]
pub(super) struct TaskReads {
    slots: Vec<(u32, Option<InFlight>)>,
    free: Vec<u32>,
    /// Reads in flight.
    pub(super) live: usize,
    /// Ordinary ops (op-table slot, generation, file) held until the file's reads here finish.
    held: Vec<(u32, u32, FileKey)>,
    /// Kept to reuse its allocation.
    queued: Vec<QueuedRead>,
}

impl TaskReads {
    fn user_data(&self, slot: u32) -> u64 {
        let gen = self.slots.get(slot as usize).map_or(0, |s| s.0);
        TASK_READ_TAG | (u64::from(gen) << 32) | u64::from(slot)
    }
}

impl Shard {
    /// Takes the reads tasks queued on this thread (before the messages they sent: see
    /// `local_io`): each goes to the ring now or is admitted as an ordinary request.
    pub(super) fn admit_task_reads(&mut self) -> bool {
        let mut queued = std::mem::take(&mut self.fast.queued);
        local_io::take_queued(&mut queued);
        let any = !queued.is_empty();
        for r in queued.drain(..) {
            if let Err(r) = self.start_task_read(r) {
                let req = IoRequest {
                    file: r.file,
                    op: IoOp::Read {
                        offset: r.offset,
                        len: r.len,
                        buf: r.buf,
                        kept: 0,
                        flags: 0,
                    },
                    reply: Reply::Data(r.done),
                    at: r.at,
                    deadline: r.deadline,
                    pending: None,
                };
                self.handle(Message::Io(req));
            }
        }
        self.fast.queued = queued;
        any
    }

    /// Pushes the SQE of `r` if it may skip the op table (see the module's doc); else hands it
    /// back.
    fn start_task_read(&mut self, mut r: QueuedRead) -> std::result::Result<(), QueuedRead> {
        let len = r.len as u64;
        if len == 0
            || len > crate::op::read::READ_STEP.min(MAX_SQE_BYTES)
            || self.closing
            || !self.backlog.is_empty()
            || self.ops.bounded() + self.fast.live >= self.cfg.channel_capacity
            || !self.has_cq_room()
            || r.done.is_cancelled()
            || r.deadline.is_some_and(|d| self.now() >= d)
        {
            return Err(r);
        }
        let Ok((e, inode)) = self.files.lookup_with_inode(r.file) else {
            return Err(r);
        };
        if e.flags.direct || !self.order.is_idle(e.key) {
            return Err(r);
        }
        let Footprint::Read { start, end } =
            crate::op::read::footprint(r.offset, len, inode.size_hint)
        else {
            return Err(r);
        };
        let (target, key) = (e.target(), e.key);
        inode.task_reads.add(start, end);
        r.buf.clear();
        r.buf.reserve_exact(r.len);
        let slot = match self.fast.free.pop() {
            Some(s) => s,
            None => {
                self.fast.slots.push((0, None));
                (self.fast.slots.len() - 1) as u32
            }
        };
        let ptr = r.buf.as_mut_ptr();
        self.fast.slots[slot as usize].1 = Some(InFlight {
            key,
            file: r.file,
            offset: r.offset,
            len,
            buf: r.buf,
            done: Some(r.done),
            at: r.at,
            deadline: r.deadline,
            cancel: None,
            errno: None,
            eof: false,
        });
        self.fast.live += 1;
        self.stats.note_task_local_read();
        self.push_task_read(slot, target, ptr, len as u32, r.offset);
        Ok(())
    }

    /// Pushes the SQE reading `n` bytes at `off` into `ptr` for read `slot`; a push that fails
    /// fails the read.
    fn push_task_read(
        &mut self,
        slot: u32,
        target: crate::pool::Target,
        ptr: *mut u8,
        n: u32,
        off: u64,
    ) {
        let ud = self.fast.user_data(slot);
        let entry = match target {
            crate::pool::Target::Fixed(s) => opcode::Read::new(types::Fixed(s), ptr, n)
                .offset(off)
                .build(),
            crate::pool::Target::Fd(fd) => {
                opcode::Read::new(types::Fd(fd), ptr, n).offset(off).build()
            }
        };
        // The entry points into the read's buffer, which stays in `TaskReads` (not resized,
        // not freed) until this SQE's completion, or is leaked by Drop for Shard (see
        // `push_entry`).
        if let Err(e) = self.push_entry(&entry.user_data(ud)) {
            if let Some(read) = self.fast.slots[slot as usize].1.as_mut() {
                read.errno.get_or_insert(e.errno().unwrap_or(libc::EIO));
            }
            self.finish_task_read(slot);
        }
    }

    /// A task read's completion: the rest of a short read goes out again; otherwise it is done.
    pub(super) fn complete_task_read(&mut self, ud: u64, res: i32) {
        let slot = (ud & SLOT_MASK) as u32;
        let gen = ((ud >> 32) & GEN_MASK) as u32;
        let Some((g, Some(read))) = self.fast.slots.get_mut(slot as usize) else {
            return;
        };
        if *g != gen {
            return; // stale: never misroute
        }
        match res {
            r if r < 0 && crate::op::rw::retried(-r, 0) && read.cancel.is_none() => {}
            r if r < 0 => read.errno = Some(-r),
            0 => read.eof = true,
            r => {
                let n = read.buf.len() + r as usize;
                debug_assert!(n as u64 <= read.len);
                // SAFETY: the kernel wrote `r` bytes after the `len()` already there, inside the
                // capacity reserved (`len` bytes) before the read was issued.
                unsafe { read.buf.set_len(n) };
            }
        }
        let at = read.buf.len() as u64;
        if read.errno.is_none() && !read.eof && read.cancel.is_none() && at < read.len {
            // A short read: the rest, from where it stopped.
            let (file, off, n) = (read.file, read.offset + at, (read.len - at) as u32);
            // SAFETY (pointer arithmetic): `at` < `len` <= the buffer's capacity.
            let ptr = unsafe { read.buf.as_mut_ptr().add(at as usize) };
            match self.files.lookup(file) {
                Ok(e) => {
                    let target = e.target();
                    self.push_task_read(slot, target, ptr, n, off);
                }
                Err(_) => {
                    if let Some(read) = self.fast.slots[slot as usize].1.as_mut() {
                        read.errno = Some(libc::EBADF);
                    }
                    self.finish_task_read(slot);
                }
            }
            return;
        }
        self.finish_task_read(slot);
    }

    /// Read `slot` is over (nothing of it in the kernel): counts it, answers its handle, and
    /// lets ops held behind its file's reads go.
    fn finish_task_read(&mut self, slot: u32) {
        let Some(s) = self.fast.slots.get_mut(slot as usize) else {
            return;
        };
        let Some(read) = s.1.take() else { return };
        s.0 = (s.0 + 1) & GEN_MASK as u32;
        self.fast.free.push(slot);
        self.fast.live -= 1;
        let key = read.key;
        let n = read.buf.len() as u64;
        let ok = read.cancel.is_none() && read.errno.is_none();
        // One look-up of the inode: its reads here, and the size a read that moved bytes proves.
        let last = match self.files.inode_mut(key) {
            Some(inode) => {
                if ok && inode.size_setters == 0 {
                    if let Some(s) = crate::op::read::size_at_least(read.offset, n) {
                        inode.size_hint = inode.size_hint.max(s);
                    }
                }
                inode.task_reads.remove()
            }
            None => false,
        };
        if last {
            self.release_held(key);
        }
        let lat = self.elapsed_since(read.at);
        let slow = lat >= self.cfg.slow_op_ns;
        // The path names the file in a slow-op log line or an error only.
        let path = (slow || !ok)
            .then(|| self.files.get(read.file.slot))
            .flatten()
            .map(|e| std::sync::Arc::clone(&e.path));
        let path = path.as_deref();
        if slow {
            if let Some(p) = path {
                crate::logging::slow_op(self.cfg.index, OpKind::Read, p, lat, read.errno);
            }
        }
        let result = if let Some(why) = read.cancel {
            if let Some(errno) = super::cancel::counted_after_cancel(read.errno) {
                self.stats.record_error(OpKind::Read, errno, lat);
            }
            match read.done {
                // Answered when cancelled (and counted then).
                None => return,
                Some(_) => Err(self.cancel_error(why, OpKind::Read, path)),
            }
        } else if let Some(errno) = read.errno {
            self.stats.record_error(OpKind::Read, errno, lat);
            Err(Error::io(
                "read",
                path.map(|p| p.to_path_buf()),
                Some(read.offset),
                errno,
            ))
        } else {
            self.stats.record(OpKind::Read, n, lat);
            Ok(read.buf)
        };
        if let Some(done) = read.done {
            done.complete(result);
        }
    }

    /// Called for an ordinary op about to be issued for the first time: holds it (out of the
    /// ready queue) while it conflicts with task reads of its file in flight. Returns whether it
    /// was held.
    pub(super) fn hold_behind_task_reads(&mut self, slot: u32) -> bool {
        if self.fast.live == 0 {
            return false;
        }
        let gen = self.ops.gen(slot);
        let Some(op) = self.ops.get(slot) else {
            return false;
        };
        let fp = match &op.io {
            IoOp::Read { .. } => return false,
            IoOp::Write { .. } => Footprint::write(op.offset, op.len),
            IoOp::File(f) if f.kind() == OpKind::Fsync || f.kind() == OpKind::Fdatasync => {
                Footprint::Sync
            }
            // Anything else is ordered against everything (close, fallocate, size...).
            _ => Footprint::Barrier,
        };
        let key = op.key;
        if !self.task_reads_conflict(key, fp) {
            return false;
        }
        let Some(op) = self.ops.get(slot) else {
            return false;
        };
        op.queued = false;
        self.ready.pop_front();
        self.fast.held.push((slot, gen, key));
        true
    }

    /// Whether an op of footprint `fp` on file `key` must wait for the task reads of that file
    /// in flight here (see the module's doc).
    pub(super) fn task_reads_conflict(&self, key: FileKey, fp: Footprint) -> bool {
        self.files
            .inode(key)
            .and_then(|i| i.task_reads.covering())
            .is_some_and(|c| conflicts(c, fp))
    }

    /// Queues again the ops held behind the reads of `key` (all of them are done).
    fn release_held(&mut self, key: FileKey) {
        if self.fast.held.is_empty() {
            return;
        }
        let mut i = 0;
        while i < self.fast.held.len() {
            let (slot, gen, k) = self.fast.held[i];
            if k != key {
                i += 1;
                continue;
            }
            self.fast.held.remove(i);
            // An op finished meanwhile (cancelled) freed its slot: its generation moved on.
            if self.ops.gen(slot) == gen {
                self.enqueue(slot);
            }
        }
    }

    /// Part of every scan: cancels the reads whose handle was dropped or whose deadline passed
    /// (every read, after shutdown's grace period), as for ops in the table.
    pub(super) fn scan_task_reads(&mut self, now: Instant) {
        if self.fast.live == 0 {
            return;
        }
        for slot in 0..self.fast.slots.len() as u32 {
            let Some(read) = self.fast.slots[slot as usize].1.as_ref() else {
                continue;
            };
            if read.cancel.is_some() {
                continue;
            }
            let why = if self.cancel_all {
                CancelWhy::Shutdown
            } else if read.deadline.is_some_and(|d| now >= d) {
                CancelWhy::Deadline
            } else if read.done.as_ref().is_some_and(Completer::is_cancelled) {
                CancelWhy::Dropped
            } else {
                continue;
            };
            let file_slot = read.file.slot;
            let entry = opcode::AsyncCancel::new(self.fast.user_data(slot))
                .build()
                .user_data(CANCEL_USER_DATA);
            if self.push_entry(&entry).is_err() {
                continue; // the next scan tries again
            }
            let path = self
                .files
                .get(file_slot)
                .map(|e| std::sync::Arc::clone(&e.path));
            let Some(read) = self.fast.slots[slot as usize].1.as_mut() else {
                continue;
            };
            read.cancel = Some(why);
            if why != CancelWhy::Shutdown {
                // why: as for ops in the table: a read the kernel cannot stop at once must not
                // keep a caller who gave up waiting. The buffer stays here until the completion.
                if let Some(done) = read.done.take() {
                    let e = self.cancel_error(why, OpKind::Read, path.as_deref());
                    done.complete(Err(e));
                }
            }
        }
    }

    /// Drop for Shard: the reads still in the kernel keep their buffers (leaked: the kernel may
    /// still write into them) and their handles get `error`.
    pub(super) fn abandon_task_reads(&mut self, error: &Error) {
        for (_, read) in self.fast.slots.drain(..) {
            let Some(read) = read else { continue };
            std::mem::forget(read.buf);
            if let Some(done) = read.done {
                done.complete(Err(error.clone()));
            }
        }
        self.fast.live = 0;
        // The reads queued and not yet taken never reached the kernel: their completers fail
        // as they drop.
        self.fast.queued.clear();
    }
}
