//! Finishing an op: it leaves the table, the next ops of its file are let go, it is counted in
//! the stats, and its result goes to its handle or session (a successful read or write also
//! raises the file's known size).

use super::cancel::{cancel_error_of, counted_after_cancel};
use super::ops::{DataPath, Op};
use super::runner::Shard;
use super::{IoOp, Reply};
use crate::error::Error;
use crate::stats::OpKind;

impl Shard {
    /// Completes op `slot`'s handle, counts it, and lets the next ops of its file go.
    pub(super) fn finish(&mut self, slot: u32) {
        let Some(op) = self.ops.remove(slot) else {
            return;
        };
        // why: an op can finish while still queued (a read that met end of file, or failed, while
        // waiting at the head of `ready` for a buffer). Its slot is freed and the next admitted op
        // reuses it; a stale entry left here would issue that op ahead of the ops it must wait for.
        if op.queued {
            if let Some(pos) = self.ready.iter().position(|&s| s == slot) {
                self.ready.remove(pos);
            }
        }
        let before = self.ready.len();
        self.order.finish(op.key, slot, &mut self.ready);
        // Ops made ready by `order.finish` are queued now.
        for i in before..self.ready.len() {
            let s = self.ready[i];
            if let Some(o) = self.ops.get(s) {
                o.queued = true;
            }
        }
        self.complete(op);
    }

    /// Counts an op that is over (out of the table and its file's order, or never in them: a
    /// write done at admission) and delivers its result.
    pub(super) fn complete(&mut self, mut op: Op) {
        // The op is over (nothing of it in the kernel): a mutation no longer holds back inline
        // reads of its inode. Before its handle completes, so a caller that waited for it reads
        // inline at once.
        drop(op.pending.take());
        let lat = self.elapsed_since(op.at);
        // A socket op's time is mostly its peer's (a receive waits for the peer to speak): not
        // a slow device or filesystem, so not logged as one.
        if lat >= self.cfg.slow_op_ns && !op.kind.waits_for_peer() {
            crate::logging::slow_op(self.cfg.index, op.kind, &op.path, lat, op.errno);
        }
        if let IoOp::File(f) = op.io {
            // Out of the table with nothing in the kernel: its pool buffers come back.
            self.return_fixed(op.fixed);
            self.finish_file_op(
                f,
                op.reply,
                op.cancel,
                op.errno,
                &op.path,
                op.file_slot,
                lat,
                op.answered,
            );
            return;
        }
        let Op {
            kind,
            mut io,
            reply,
            out,
            cancel,
            errno,
            path,
            offset,
            len,
            eof,
            lent,
            file_slot,
            data_path,
            issued,
            transferred,
            written_to,
            answered,
            ..
        } = op;
        let buf = if kind == OpKind::Read {
            out
        } else {
            io.take_buf()
        };
        let result = if let Some(why) = cancel {
            // A cancelled op that the kernel had started is counted as the error it got too.
            if let Some(errno) = counted_after_cancel(errno) {
                self.stats.record_error(kind, errno, lat);
            }
            if answered {
                // Its handle got (and the stats counted) this error when it was cancelled.
                Err(cancel_error_of(why, kind, Some(&path)))
            } else {
                Err(self.cancel_error(why, kind, Some(&path)))
            }
        } else if let Some(errno) = errno {
            self.stats.record_error(kind, errno, lat);
            let offset = matches!(io, IoOp::Read { .. } | IoOp::Write { .. }).then_some(offset);
            let e = Error::io(kind.name(), Some(path.to_path_buf()), offset, errno);
            Err(match io {
                // How much of a failed write is known to be written, from its offset on: the
                // chunks of an O_DIRECT write run in parallel, so its prefix ends at the first
                // chunk that stopped short (or the first never issued); the other paths are
                // serial and count what moved.
                IoOp::Write { .. } => e.with_written(match data_path {
                    DataPath::Fixed => written_to.min(issued).min(len),
                    _ => transferred.min(len),
                }),
                _ => e,
            })
        } else {
            match io {
                IoOp::Read { .. } => {
                    let n = eof.unwrap_or(len).min(len);
                    self.stats.record(kind, n, lat);
                    Ok(n)
                }
                IoOp::Write { .. } => {
                    self.stats.record(kind, len, lat);
                    Ok(len)
                }
                IoOp::File(_) | IoOp::Close(_) => {
                    self.stats.record(kind, 0, lat);
                    Ok(0)
                }
            }
        };
        if let Reply::Lease(c) = reply {
            self.lend(c, result, lent);
            return;
        }
        if let Ok(n) = &result {
            self.note_size(file_slot, &io, offset, *n);
        }
        let buf = match (&result, kind) {
            (Ok(n), OpKind::Read) => {
                let mut b = buf;
                b.truncate(*n as usize);
                b
            }
            _ => buf,
        };
        reply.deliver(result, buf, &mut self.sessions);
    }

    /// Raises the file's known size after a successful read or write (`n`: bytes moved).
    fn note_size(&mut self, file_slot: u32, io: &IoOp, offset: u64, n: u64) {
        let Some(append) = self.files.get(file_slot).map(|e| e.flags.append) else {
            return;
        };
        let Some(inode) = self.files.inode_of(file_slot) else {
            return;
        };
        let at_least = match io {
            // A set_len admitted after this op will set the size: what this op saw is stale.
            _ if inode.size_setters > 0 => return,
            IoOp::Read { .. } => match crate::op::read::size_at_least(offset, n) {
                Some(s) => s,
                None => return,
            },
            IoOp::Write { .. } => match crate::op::write::size_at_least(offset, n, append) {
                Some(s) => s,
                None => return,
            },
            _ => return,
        };
        inode.size_hint = inode.size_hint.max(at_least);
    }
}
