//! Admission: a request becomes an op in the op table. It is checked (dropped, past its deadline,
//! on an unknown file, a pooled read that does not fit), given its data path and its footprint,
//! and placed in its file's (or directory's) order list; an op free to run goes on the ready
//! queue. A buffered write whose file has nothing unfinished here is written at once instead
//! (`pwrite`, as the ready queue would have it written next), never entering the table.

use super::cancel::skip_reason;
use super::direct::DIRECT_ALIGN;
use super::ops::{DataPath, Op};
use super::runner::elapsed_ns;
use super::runner::Shard;
use super::{IoOp, IoRequest, Reply};
use crate::error::Error;
use crate::op::Footprint;
use crate::pool::Target;
use std::sync::Arc;
use std::time::Instant;

/// The `file_slot` of an op on a path: it names no open file.
const PATH_SLOT: u32 = u32::MAX;

/// The error of a request refused because its shard already holds `max` live ops (the op
/// table's hard cap, [`MAX_LIVE_OPS`](super::ops::MAX_LIVE_OPS) unless a test lowered it).
fn too_many_live_ops(kind: crate::stats::OpKind, shard: usize, max: usize) -> Error {
    Error::invalid(
        kind.name(),
        format!(
            "shard {shard} already holds {max} live operations, its limit (most of them socket \
             operations waiting for peers: each idle connection keeps one); close idle \
             connections (a receive timeout ends them), or spread them over more shards"
        ),
    )
}

impl Shard {
    /// Checks a request and queues it as an op.
    pub(super) fn admit(&mut self, req: IoRequest) {
        let IoRequest {
            file,
            mut op,
            reply,
            at,
            deadline,
            pending,
        } = req;
        let now = self.now();
        if let Some(why) = skip_reason(op.kind(), &op, &reply, deadline, now, &self.sessions) {
            let err = self.cancel_error(why, op.kind(), None);
            op.fail(reply, err, &mut self.sessions);
            return;
        }
        if self.ops.live >= self.cfg.max_live_ops {
            let e = too_many_live_ops(op.kind(), self.cfg.index, self.cfg.max_live_ops);
            self.stats
                .record_error(op.kind(), libc::EAGAIN, elapsed_ns(at));
            op.fail(reply, e, &mut self.sessions);
            return;
        }
        if let IoOp::File(f) = &op {
            if let Some(target) = f.path_target() {
                self.admit_path(target, op, reply, at, deadline);
                return;
            }
        }
        let (entry, inode) = match self.files.lookup_with_inode(file) {
            Ok(e) => e,
            Err(e) => {
                self.stats.record_error(
                    op.kind(),
                    e.errno().unwrap_or(libc::EBADF),
                    elapsed_ns(at),
                );
                op.fail(reply, e, &mut self.sessions);
                return;
            }
        };
        let kind = op.kind();
        let entry_fd = entry.fd();
        let (offset, len) = op.range();
        let data_path = match (&op, entry.flags.direct) {
            (IoOp::Read { .. } | IoOp::Write { .. }, true) => DataPath::Fixed,
            (IoOp::Write { .. }, false) if self.cfg.inline_buffered_writes => DataPath::Inline,
            _ => DataPath::Memory,
        };
        if matches!(reply, Reply::Lease(_)) {
            // A pooled read fills exactly one pool buffer, in place.
            let chunk = self.pool.buffer_size() as u64 / DIRECT_ALIGN * DIRECT_ALIGN;
            if data_path != DataPath::Fixed || len > chunk || !matches!(op, IoOp::Read { .. }) {
                let e = Error::invalid(
                    "read_pooled",
                    format!(
                        "a pooled read is an O_DIRECT read of at most one pool buffer \
                         ({chunk} bytes); got {len} bytes{}",
                        if data_path == DataPath::Fixed {
                            ""
                        } else {
                            " on a file without O_DIRECT"
                        }
                    ),
                );
                op.fail(reply, e, &mut self.sessions);
                return;
            }
        }
        let fp = match &op {
            IoOp::Read { .. } => crate::op::read::footprint(offset, len, inode.size_hint),
            IoOp::Write { .. } => crate::op::write::footprint(offset, len, entry.flags.append),
            IoOp::File(f) => {
                let fp = f.footprint(inode.size_hint);
                f.size_at_admit(&mut inode.size_hint);
                if f.sets_size() {
                    inode.size_setters += 1;
                }
                fp
            }
            IoOp::Close(_) => {
                entry.closing = true;
                Footprint::Close
            }
        };
        // An inline attempt's part of a page-cache read stays in the result: the shard reads
        // the rest (the memory path continues from `transferred`).
        let kept = match &op {
            IoOp::Read { kept, buf, .. } if data_path == DataPath::Memory => {
                (*kept as usize).min(buf.len()).min(len as usize)
            }
            _ => 0,
        };
        let op = Op {
            kind,
            key: entry.key,
            file_slot: file.slot,
            target: entry.target(),
            path: Arc::clone(&entry.path),
            offset,
            len,
            issued: kept as u64,
            outstanding: 0,
            eof: None,
            errno: None,
            serial: entry.flags.append || data_path != DataPath::Fixed,
            data_path,
            transferred: kept as u64,
            written_to: u64::MAX,
            answered: false,
            queued: false,
            parked: false,
            peer_round: false,
            at,
            deadline,
            cancel: None,
            out: match &mut op {
                IoOp::Read { buf, .. } => {
                    let mut b = std::mem::take(buf);
                    b.truncate(kept);
                    b
                }
                _ => Vec::new(),
            },
            io: op,
            reply,
            lent: None,
            pending,
            fixed: None,
            round_end: None,
        };
        let key = op.key;
        if data_path == DataPath::Inline && self.may_write_now(key, file.slot, fp) {
            self.write_inline_now(op, entry_fd);
            return;
        }
        let slot = self.ops.insert(op);
        if self.order.admit(key, slot, fp) {
            self.enqueue(slot);
        }
    }

    /// Whether a buffered write (footprint `fp`) of file `file_slot` may be written at once, at
    /// its admission, skipping the op table, its file's order list and the ready queue: nothing
    /// of its file (inode) is unfinished here (no op in its order list, no task read that it
    /// overlaps in flight), so it is next in the file's order whichever way it goes, and its
    /// file's inline writes are not paused after a stall. A write that may not waits in order
    /// as any op.
    fn may_write_now(
        &mut self,
        key: crate::router::FileKey,
        file_slot: u32,
        fp: Footprint,
    ) -> bool {
        self.order.is_idle(key)
            && !self.task_reads_conflict(key, fp)
            && !self.inline_writes_paused(file_slot)
    }

    /// Admits an operation on a path: ordered in its directory's order list by its footprint
    /// (unlink, mkdir, rename: barriers; stat: a read, side by side with other stats, after
    /// earlier mutations); it names no open file.
    fn admit_path(
        &mut self,
        target: crate::op::PathTarget,
        io: IoOp,
        reply: Reply,
        at: Instant,
        deadline: Option<Instant>,
    ) {
        let op = Op {
            kind: io.kind(),
            key: target.key,
            file_slot: PATH_SLOT,
            target: Target::Fd(libc::AT_FDCWD),
            path: target.path,
            offset: 0,
            len: 0,
            issued: 0,
            outstanding: 0,
            eof: None,
            errno: None,
            serial: true,
            data_path: DataPath::Memory,
            transferred: 0,
            written_to: u64::MAX,
            answered: false,
            queued: false,
            parked: false,
            peer_round: false,
            at,
            deadline,
            cancel: None,
            out: Vec::new(),
            io,
            reply,
            lent: None,
            pending: None,
            fixed: None,
            round_end: None,
        };
        let fp = match &op.io {
            IoOp::File(f) => f.footprint(0),
            _ => Footprint::Barrier,
        };
        let key = op.key;
        let slot = self.ops.insert(op);
        if self.order.admit(key, slot, fp) {
            self.enqueue(slot);
        }
    }

    pub(super) fn enqueue(&mut self, slot: u32) {
        if let Some(op) = self.ops.get(slot) {
            if !op.queued {
                op.queued = true;
                self.ready.push_back(slot);
            }
        }
    }
}
