//! Writes: the parts of the write fast path that need no shard state. The write itself stays an
//! unboxed `IoOp::Write` in the runner (pool buffers for O_DIRECT, the caller's data on the ring,
//! or `pwrite` on the shard thread: [`rw::pwrite_all`](super::rw::pwrite_all)).

use super::Footprint;

/// The ordering class of a write of `len` bytes at `offset`. An O_APPEND write lands at the end,
/// wherever that is: it is ordered against everything.
#[inline]
pub(crate) fn footprint(offset: u64, len: u64, append: bool) -> Footprint {
    if append {
        Footprint::Barrier
    } else {
        Footprint::write(offset, len)
    }
}

/// What a successful write of `n` bytes at `offset` tells of the file's size: at least
/// `offset + n`, unless it appended (it landed at the end, not at `offset`) or wrote nothing (a
/// write of nothing past the end does not extend the file).
#[inline]
pub(crate) fn size_at_least(offset: u64, n: u64, append: bool) -> Option<u64> {
    (!append && n > 0).then(|| offset.saturating_add(n))
}
