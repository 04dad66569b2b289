//! The shard's operations: what an admitted request becomes, its chunks, and the table that
//! names it in `user_data` (slot + generation).

use super::{IoOp, Reply};
use crate::pool::Target;
use crate::router::FileKey;
use crate::stats::OpKind;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// `user_data` of an op that uses no pool buffer: `slot | generation << SLOT_BITS`.
pub(super) const SLOT_BITS: u32 = 24;
/// Mask of the slot part.
pub(super) const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
/// Mask of the generation part (23 bits: bit 63 stays clear, it is the pool's tag).
pub(super) const GEN_MASK: u64 = (1 << 23) - 1;
/// Live ops a shard holds at most, whatever their kind: a slot past `SLOT_MASK` would spill into
/// the generation bits of `user_data`, and a completion could then finish another op. Socket ops
/// waiting for peers are outside `channel_capacity` (see [`OpTable::bounded`]), so this is their
/// bound; half the slot space, with room to spare.
pub(crate) const MAX_LIVE_OPS: usize = 1 << (SLOT_BITS - 1);

/// Where a read or write moves its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DataPath {
    /// Through registered pool buffers with READ_FIXED/WRITE_FIXED, one chunk per buffer: the
    /// path for O_DIRECT, where registered buffers spare the kernel pinning pages on every I/O.
    Fixed,
    /// Straight into the read's result vector (or from the write's data) with READ/WRITE, one SQE
    /// at a time: page-cache I/O, one copy instead of two.
    Memory,
    /// `pwrite` on the shard thread: buffered writes, which ext4 cannot do without blocking and
    /// io_uring would hand to a worker thread each.
    Inline,
}

/// Largest transfer handed to the kernel in one SQE on the memory path.
pub(super) const MAX_SQE_BYTES: u64 = 1 << 30;

pub(super) struct Op {
    pub(super) kind: OpKind,
    pub(super) key: FileKey,
    pub(super) file_slot: u32,
    pub(super) target: Target,
    pub(super) path: Arc<Path>,
    pub(super) offset: u64,
    pub(super) len: u64,
    /// Bytes of the range handed to chunks so far.
    pub(super) issued: u64,
    /// SQEs of this op in the kernel.
    pub(super) outstanding: u32,
    /// End of file seen by a read, relative to `offset`.
    pub(super) eof: Option<u64>,
    pub(super) errno: Option<i32>,
    /// Only one chunk at a time (O_APPEND writes; the memory path).
    pub(super) serial: bool,
    pub(super) data_path: DataPath,
    /// Bytes moved so far on the memory path.
    pub(super) transferred: u64,
    /// A write on the pool path: where the first chunk that stopped short (error, or no more
    /// room) ended, relative to `offset`; `u64::MAX` while none has.
    pub(super) written_to: u64,
    /// Its handle already got its cancellation error (and it was counted): the op only waits
    /// for the kernel's completion.
    pub(super) answered: bool,
    pub(super) queued: bool,
    /// Its SQE was cancelled to let `submit_to` closures run (a socket op waiting for a peer):
    /// its ECANCELED is not its end; it is issued again after the closures.
    pub(super) parked: bool,
    /// The round in the kernel waits for a socket's peer (`OpKind::waits_for_peer`, or
    /// `FileOp::round_waits_for_peer` when it was issued): counted in `peer_in_flight`, and
    /// parked for closures.
    pub(super) peer_round: bool,
    pub(super) at: Instant,
    /// Past this instant the op is cancelled.
    pub(super) deadline: Option<Instant>,
    /// Why the op is being cancelled, once it is (an ASYNC_CANCEL was sent for what is in flight).
    pub(super) cancel: Option<CancelWhy>,
    /// The request.
    pub(super) io: IoOp,
    /// Where its result goes.
    pub(super) reply: Reply,
    /// A read's data, filled chunk by chunk.
    pub(super) out: Vec<u8>,
    /// A pooled read's buffer (reply [`Reply::Lease`](super::Reply::Lease)): kept, not copied
    /// and released, after its CQE; handed to the task at finish (or released on error).
    pub(super) lent: Option<u16>,
    /// A mutation's count in its inode's unfinished mutations: dropped when the op finishes.
    pub(super) pending: Option<crate::inline::Pending>,
    /// Pool buffers lent to a `FileOp` for its life (`FileOp::fixed_wanted`; `shard/file_ops.rs`):
    /// `None` until offered (before its first round). Taken back when it leaves the table.
    pub(super) fixed: Option<[Option<u16>; MAX_FIXED_PER_OP]>,
    /// A `FileOp` round's last CQE (result, flags), kept while the SQE beside it
    /// (`FileOp::sqe_beside`) is still in the kernel: the round ends when that one's CQE comes.
    pub(super) round_end: Option<(i32, u32)>,
}

/// Tag of the `user_data` of a `FileOp` round's second SQE (`FileOp::sqe_beside`): bit 60, clear
/// in every other `user_data` the shard makes (pool: 63, timers: 62, task reads: 61; op slots and
/// generations stop at bit 46).
pub(super) const BESIDE_TAG: u64 = 1 << 60;

/// Most pool buffers one `FileOp` holds at once.
pub(super) const MAX_FIXED_PER_OP: usize = 2;

impl Op {
    /// Whether the kernel has seen any of it (or, inline, it ran): then it is not skipped.
    pub(super) fn started(&self) -> bool {
        self.outstanding > 0 || self.issued > 0 || self.transferred > 0
    }

    pub(super) fn more_to_issue(&self) -> bool {
        match self.io {
            IoOp::Read { .. } | IoOp::Write { .. } => {
                self.errno.is_none()
                    && self.cancel.is_none()
                    && self.eof.is_none()
                    && self.issued < self.len
                    && !(self.serial && self.outstanding > 0)
            }
            _ => self.outstanding == 0 && self.issued == 0 && self.cancel.is_none(),
        }
    }

    pub(super) fn finished(&self) -> bool {
        self.outstanding == 0 && !self.more_to_issue()
    }
}

/// Why an op was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CancelWhy {
    /// Its handle was dropped or cancelled, or its session dropped.
    Dropped,
    /// Its deadline passed.
    Deadline,
    /// Shutdown's grace period ran out.
    Shutdown,
    /// The op stopped its own multishot round (`FileOp::on_more` said `Done`), or has no more
    /// work by its own rules (`FileOp::stopped`: an accept whose listener was dropped): not a
    /// cancellation anyone asked for, so not counted as one.
    Stopped,
}

/// A part of a read or write that fits one buffer.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Chunk {
    pub(super) op: u32,
    /// Offset of the chunk inside the op.
    pub(super) rel: u64,
    pub(super) len: u32,
    /// Bytes already transferred (short transfers are resubmitted from here).
    pub(super) done: u32,
    /// Where a short O_DIRECT write last ended inside a block (and was rewound to the block's
    /// start); 0 if none. A rewound write that ends there again makes no progress.
    pub(super) rewound: u32,
    /// The `user_data` of the chunk's SQE in flight (to cancel it).
    pub(super) user_data: u64,
}

/// Op slots with generations: a slot's generation changes when it is freed, so a late or stray
/// completion can never finish another operation.
#[derive(Default)]
pub(super) struct OpTable {
    pub(super) slots: Vec<(u32, Option<Op>)>,
    pub(super) free: Vec<u32>,
    pub(super) live: usize,
    /// Of `live`, the socket ops waiting for a peer (`OpKind::waits_for_peer`): not bounded by
    /// `channel_capacity` (see [`bounded`](Self::bounded)).
    pub(super) peer: usize,
}

impl OpTable {
    pub(super) fn insert(&mut self, op: Op) -> u32 {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push((0, None));
                (self.slots.len() - 1) as u32
            }
        };
        self.peer += usize::from(op.kind.waits_for_peer());
        self.slots[slot as usize].1 = Some(op);
        self.live += 1;
        slot
    }

    pub(super) fn get(&mut self, slot: u32) -> Option<&mut Op> {
        self.slots.get_mut(slot as usize)?.1.as_mut()
    }

    pub(super) fn gen(&self, slot: u32) -> u32 {
        self.slots.get(slot as usize).map_or(0, |s| s.0)
    }

    pub(super) fn remove(&mut self, slot: u32) -> Option<Op> {
        let s = self.slots.get_mut(slot as usize)?;
        let op = s.1.take()?;
        s.0 = s.0.wrapping_add(1) & GEN_MASK as u32;
        self.free.push(slot);
        self.live -= 1;
        self.peer -= usize::from(op.kind.waits_for_peer());
        Some(op)
    }

    /// The live ops admission is bounded by: all but the socket ops waiting for a peer. Those
    /// last as long as their peers say nothing (a server's idle connections each keep a receive
    /// waiting), so counted they would stop the shard from admitting anything once there are
    /// `channel_capacity` idle connections. Their number is bounded by the sockets (descriptors)
    /// and the tasks that wait on them, which are the user's.
    pub(super) fn bounded(&self) -> usize {
        self.live - self.peer
    }

    pub(super) fn drain(&mut self) -> Vec<Op> {
        self.free.clear();
        self.live = 0;
        self.peer = 0;
        self.slots.drain(..).filter_map(|s| s.1).collect()
    }
}
