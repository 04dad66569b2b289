//! Reads: the parts of the read fast path that need no shard state. The read itself stays an
//! unboxed `IoOp::Read` in the runner (chunks over pool buffers for O_DIRECT, the result vector
//! for the page cache); its flags and retry rule are in [`rw`](super::rw).

use super::Footprint;

/// A page-cache read asks the kernel for at most this much in its first SQE; each next SQE asks
/// for as much as has arrived so far. So a read allocates at most about twice what it returns,
/// whatever length it was given (a 1 TiB read of a 4 KiB file allocates 1 MiB, not 1 TiB).
pub(crate) const READ_STEP: u64 = 1 << 20;

/// The ordering class of a read of `len` bytes at `offset` of a file known to be at least
/// `known_size` bytes long: within it, only overlapping writes matter; past it, the read may
/// meet the end of the file, which any write above it moves.
#[inline]
pub(crate) fn footprint(offset: u64, len: u64, known_size: u64) -> Footprint {
    if offset.saturating_add(len) <= known_size {
        Footprint::read(offset, len)
    } else {
        Footprint::read_to_end(offset)
    }
}

/// What a successful read that returned `n` bytes at `offset` tells of the file's size: at least
/// `offset + n` if it returned anything. An empty read only says the end of the file is at or
/// below `offset`, no lower bound: taken as one, a later read below `offset` would count as
/// inside the file and not be ordered against a write that extends the file under it.
#[inline]
pub(crate) fn size_at_least(offset: u64, n: u64) -> Option<u64> {
    (n > 0).then(|| offset.saturating_add(n))
}

/// Bytes the next page-cache SQE of a read of `len` asks for, `at` bytes having arrived: grows as
/// data arrives (READ_STEP, then doubling), at most `max_sqe`.
#[inline]
pub(crate) fn next_sqe_len(len: u64, at: u64, max_sqe: u64) -> u64 {
    (len - at).min(max_sqe).min(READ_STEP.max(at))
}
