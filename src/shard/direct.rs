//! The O_DIRECT path (`DataPath::Fixed`): a read or write split into chunks of registered pool
//! buffers, issued side by side, each pushed again after a short transfer, and copied into the
//! caller's vector (or lent to a task, for a pooled read) as it completes.

use super::ops::Chunk;
use super::runner::Shard;
use super::{IoOp, Reply};
use crate::error::{Error, Result};
use crate::pool::Direction;

/// O_DIRECT chunks are multiples of this (the logical block size the executor assumes).
pub(super) const DIRECT_ALIGN: u64 = 4096;

impl Shard {
    pub(super) fn issue_chunk(&mut self, slot: u32) -> Result<bool> {
        // O_DIRECT needs every chunk (offset and length) aligned: use whole 4 KiB blocks of the
        // buffer, whatever its size.
        let buffer_size = self.pool.buffer_size() as u64;
        let chunk_size = buffer_size - buffer_size % DIRECT_ALIGN;
        if chunk_size == 0 {
            if let Some(op) = self.ops.get(slot) {
                op.errno.get_or_insert(libc::EINVAL);
            }
            return Ok(true);
        }
        let Some((idx, _)) = self.pool.try_acquire() else {
            self.stats.note_pool_exhausted();
            return Ok(false);
        };
        let Some(op) = self.ops.get(slot) else {
            self.pool.release(idx);
            return Ok(true);
        };
        let rel = op.issued;
        let len = (op.len - rel).min(chunk_size) as u32;
        let dir = match &op.io {
            IoOp::Write { data, .. } => {
                let src = &data[rel as usize..rel as usize + len as usize];
                // The buffer was just acquired, so it is not in flight; if the pool refused it
                // anyway, writing whatever it held would put other bytes on disk: fail instead.
                match self.pool.get_mut(idx) {
                    Ok(buf) => buf[..len as usize].copy_from_slice(src),
                    Err(_) => {
                        debug_assert!(false, "a just-acquired pool buffer was refused");
                        op.errno.get_or_insert(libc::EIO);
                        self.pool.release(idx);
                        return Ok(true);
                    }
                }
                Direction::Write
            }
            _ => Direction::Read,
        };
        op.issued += u64::from(len);
        op.outstanding += 1;
        self.chunks[idx as usize] = Chunk {
            op: slot,
            rel,
            len,
            done: 0,
            rewound: 0,
            user_data: 0,
        };
        if let Err(e) = self.push_chunk(dir, idx) {
            if let Some(op) = self.ops.get(slot) {
                op.outstanding -= 1;
                // Never issued: a failed write's known-written prefix ends before this chunk.
                op.written_to = op.written_to.min(rel);
            }
            self.pool.release(idx);
            return Err(e);
        }
        Ok(true)
    }

    /// Pushes (or re-pushes, after a short transfer) the SQE of the chunk in buffer `idx`.
    fn push_chunk(&mut self, dir: Direction, idx: u16) -> Result<()> {
        let ch = self.chunks[idx as usize];
        let Some(op) = self.ops.get(ch.op) else {
            return Err(Error::invalid("issue", "chunk without op"));
        };
        let (target, file_off) = (op.target, op.offset + ch.rel + u64::from(ch.done));
        let rw_flags = op.io.rw_flags();
        let entry = self.pool.prepare_at(
            dir,
            target,
            idx,
            ch.done as usize,
            file_off,
            ch.len - ch.done,
            rw_flags,
        )?;
        loop {
            match self.pool.push_prepared(&mut self.ring, entry.clone(), idx) {
                Ok(user_data) => {
                    self.in_flight += 1;
                    self.chunks[idx as usize].user_data = user_data;
                    return Ok(());
                }
                Err(Error::SubmissionQueueFull) => {
                    if !self.make_sq_room()? {
                        return Err(super::submit::would_block());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(super) fn complete_chunk(&mut self, idx: u16, ud: u64, res: i32) {
        // Only a completion of an operation the pool has in flight counts: never a stale one.
        if (idx as usize) >= self.chunks.len() || self.pool.complete_user_data(ud).is_none() {
            return;
        }
        let mut ch = self.chunks[idx as usize];
        let Some(op) = self.ops.get(ch.op) else {
            self.pool.release(idx);
            return;
        };
        let is_read = matches!(op.io, IoOp::Read { .. });
        let lease = matches!(op.reply, Reply::Lease(_));
        let dir = if is_read {
            Direction::Read
        } else {
            Direction::Write
        };
        let mut retry = false;
        if res < 0 {
            if crate::op::rw::retried(-res, op.io.rw_flags()) {
                retry = true;
            } else {
                op.errno.get_or_insert(-res);
            }
        } else if res == 0 {
            if is_read {
                let end = ch.rel + u64::from(ch.done);
                op.eof = Some(op.eof.map_or(end, |e| e.min(end)));
            } else {
                // A write that makes no progress would loop forever.
                op.errno.get_or_insert(libc::EIO);
            }
        } else {
            ch.done += res as u32;
            if ch.done < ch.len && u64::from(ch.done) % DIRECT_ALIGN != 0 {
                if is_read {
                    // A short O_DIRECT read that ends inside a block is the end of the file.
                    let end = ch.rel + u64::from(ch.done);
                    op.eof = Some(op.eof.map_or(end, |e| e.min(end)));
                } else if ch.done <= ch.rewound {
                    // why: the kernel may cut the rewritten block short at the same point again
                    // (it had room for the partial block and no more, or RLIMIT_FSIZE ends
                    // there); rewriting it again would never end, with the shard spinning.
                    let end = op.offset + ch.rel + u64::from(ch.done);
                    op.errno.get_or_insert(short_direct_write_errno(end));
                } else {
                    // The rest must start on a block: write the partial block again (same bytes),
                    // so the retry is aligned and reports the real error (ENOSPC), not EINVAL.
                    ch.rewound = ch.done;
                    ch.done -= (u64::from(ch.done) % DIRECT_ALIGN) as u32;
                    retry = true;
                }
            } else {
                retry = ch.done < ch.len;
            }
            self.chunks[idx as usize].done = ch.done;
            self.chunks[idx as usize].rewound = ch.rewound;
        }
        if retry && op.errno.is_none() && op.cancel.is_none() {
            if self.push_chunk(dir, idx).is_ok() {
                return;
            }
            if let Some(op) = self.ops.get(ch.op) {
                op.errno.get_or_insert(libc::EIO);
            }
        }
        let Some(op) = self.ops.get(ch.op) else {
            return;
        };
        if !is_read && ch.done < ch.len {
            // This chunk ends the prefix of the write known to be on disk.
            op.written_to = op.written_to.min(ch.rel + u64::from(ch.done));
        }
        if is_read && ch.done > 0 && !lease {
            // Grows only as far as data has arrived (chunks may land out of order; the gaps are
            // filled by their own chunks or cut at end of file).
            let (start, end) = (ch.rel as usize, ch.rel as usize + ch.done as usize);
            if op.out.len() < end {
                op.out.resize(end, 0);
            }
            match self.pool.get(idx) {
                Ok(buf) => op.out[start..end].copy_from_slice(&buf[..ch.done as usize]),
                Err(_) => {
                    // Matched above, so the pool holds it for us; never return zeros as data.
                    debug_assert!(false, "a completed pool buffer was refused");
                    op.errno.get_or_insert(libc::EIO);
                }
            }
        }
        op.outstanding -= 1;
        if lease {
            // The data stays in the buffer: it is the task's until its guard is dropped.
            op.lent = Some(idx);
        } else {
            self.pool.release(idx);
        }
        let slot = ch.op;
        if op.finished() {
            self.finish(slot);
        } else if op.more_to_issue() {
            self.enqueue(slot);
        }
    }
}

/// Why an O_DIRECT write stops for good at `end`, inside a block: RLIMIT_FSIZE ends there
/// (EFBIG), or the filesystem has no room for the rest of the block (ENOSPC; a full quota cuts
/// the write short the same way and is reported as ENOSPC too). The kernel gives no errno for a
/// short write, and asking it with a write from `end` would fail O_DIRECT's alignment (EINVAL).
fn short_direct_write_errno(end: u64) -> i32 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the local struct only.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim) } == 0;
    if got && lim.rlim_cur != libc::RLIM_INFINITY && end >= lim.rlim_cur {
        libc::EFBIG
    } else {
        libc::ENOSPC
    }
}
