//! The receive buffers of a shard (`TcpStream::recv_pooled`): a provided-buffer ring
//! (IORING_REGISTER_PBUF_RING, Linux 5.19) from which the kernel picks a buffer only once data
//! has arrived, so a connection that waits holds none; or, where the kernel has no buffer rings
//! and on the threads backend, plain buffers taken when the socket is readable.
//!
//! One [`RecvBuffers`] per shard thread (a thread-local, set up with the shard's ring): `count`
//! buffers of `size` bytes in one mapping (touched only as the kernel fills them), and a ring of
//! `count` entries the kernel takes them from. A buffer the kernel filled is a [`RecvBuf`], a
//! lease that derefs to the received bytes; its drop puts the buffer back in the ring, on any
//! thread (the ring's tail is written under a mutex, and the kernel only reads it). While a
//! lease lives its buffer is in no ring entry: the kernel cannot pick it.
//!
//! The mapping is unmapped only when no receive with a selected buffer can be in the kernel
//! (`in_kernel`: counted per round by the op) and no lease is left (each holds the `Arc`); else
//! it is leaked (the kernel may still write into it).
//!
//! Memory: `count * size` bytes per shard (default 256 x 16 KiB = 4 MiB;
//! `ExecutorBuilder::recv_buffers`), plus `count * 16` bytes of ring. When all buffers are
//! leased the kernel answers ENOBUFS (counted in `exhausted`); the receive then waits for bytes
//! and takes a plain buffer of `size` bytes for itself, so it neither hangs nor fails.

use crate::numa::Slab;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The buffer group id of every shard's ring (one ring per io_uring instance).
pub(crate) const BGID: u16 = 0x5253;

/// Default buffers per shard.
pub(crate) const DEFAULT_COUNT: u16 = 256;
/// Default bytes per buffer.
pub(crate) const DEFAULT_SIZE: usize = 16 * 1024;
/// The most bytes per buffer (a CQE's result is an i32; a receive of more buys nothing).
pub(crate) const MAX_SIZE: usize = 1 << 20;
/// The most buffers per ring (the kernel's bound on a buffer ring's entries).
pub(crate) const MAX_COUNT: u16 = 1 << 15;

/// The registered ring: its entries' mapping and the buffers'.
struct Ring {
    /// `count` entries of `io_uring_buf` (16 bytes each); the tail is in the last 2 bytes of
    /// the first entry (`BufRingEntry::tail`).
    entries: Slab,
    buffers: Slab,
    /// The tail as userspace last published it, and what the mask cuts it to.
    tail: Mutex<u16>,
    mask: u16,
}

/// A shard's receive buffers (see the module docs).
pub(crate) struct RecvBuffers {
    ring: Option<Ring>,
    size: usize,
    count: u16,
    /// Ring buffers leased out ([`RecvBuf`]s alive).
    leased: AtomicUsize,
    /// Plain buffers held (by receives past their wait, by leases).
    plain_held: AtomicUsize,
    /// Receives the kernel answered with ENOBUFS (all buffers leased).
    exhausted: AtomicU64,
    /// Receives with a selected buffer in the kernel now.
    in_kernel: AtomicUsize,
}

// SAFETY: the ring's entries are written only under `tail`'s mutex (and read by the kernel);
// each buffer's bytes are reached only by the one lease that holds its id (a buffer is leased
// at most once: the kernel hands each id out once per time it is in the ring, and a lease puts
// it back only as it drops); the rest are atomics.
unsafe impl Send for RecvBuffers {}
// SAFETY: as above.
unsafe impl Sync for RecvBuffers {}

thread_local! {
    static LOCAL: RefCell<Option<Arc<RecvBuffers>>> = const { RefCell::new(None) };
}

/// What a shard's stats say about its receive buffers.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Snapshot {
    /// Buffers in the ring (0: plain buffers).
    pub ring_buffers: u64,
    /// Buffers held now (leases, and plain buffers of receives past their wait).
    pub held: u64,
    /// Receives that found every ring buffer leased (ENOBUFS) and took a plain one.
    pub exhausted: u64,
}

impl RecvBuffers {
    /// Buffers for this shard thread: a ring of `count` buffers of `size` bytes registered with
    /// `register(ring_addr, entries, bgid)` (the driver's IORING_REGISTER_PBUF_RING), or, when
    /// `register` is `None` (threads backend), `count` is 0 or anything is refused (a kernel
    /// before 5.19, memory), plain buffers of `size` bytes. Installed as this thread's.
    pub(crate) fn install(
        count: u16,
        size: usize,
        register: Option<&mut dyn FnMut(u64, u16, u16) -> std::io::Result<()>>,
    ) -> Option<String> {
        let size = size.clamp(1, MAX_SIZE);
        let mut note = None;
        let ring = match register {
            Some(register) if count > 0 => match Self::ring(count, size, register) {
                Ok(r) => Some(r),
                Err(why) => {
                    note = Some(why);
                    None
                }
            },
            _ => None,
        };
        let bufs = RecvBuffers {
            count: if ring.is_some() { count } else { 0 },
            ring,
            size,
            leased: AtomicUsize::new(0),
            plain_held: AtomicUsize::new(0),
            exhausted: AtomicU64::new(0),
            in_kernel: AtomicUsize::new(0),
        };
        if let Some(ring) = &bufs.ring {
            // Every buffer into the ring at once.
            let mut tail = ring.tail.lock().unwrap_or_else(|p| p.into_inner());
            for bid in 0..count {
                bufs.put(ring, &mut tail, bid);
            }
        }
        LOCAL.with(|l| *l.borrow_mut() = Some(Arc::new(bufs)));
        note
    }

    fn ring(
        count: u16,
        size: usize,
        register: &mut dyn FnMut(u64, u16, u16) -> std::io::Result<()>,
    ) -> Result<Ring, String> {
        if !count.is_power_of_two() || count > MAX_COUNT {
            return Err(format!(
                "recv_buffers: {count} is not a power of two up to {MAX_COUNT}: plain buffers"
            ));
        }
        let entries = Slab::new(usize::from(count) * 16).map_err(|e| e.to_string())?;
        let buffers = Slab::new(usize::from(count) * size).map_err(|e| e.to_string())?;
        // SAFETY (the registration's contract): both mappings live in the `Ring`, which lives
        // in an `Arc` kept until no selected-buffer receive can be in the kernel (else leaked:
        // see Drop); the entries' memory is zeroed (an empty ring) until `put` fills it.
        register(entries.as_ptr() as u64, count, BGID).map_err(|e| {
            format!("no provided-buffer ring (IORING_REGISTER_PBUF_RING, Linux 5.19: {e}): plain buffers")
        })?;
        Ok(Ring {
            entries,
            buffers,
            tail: Mutex::new(0),
            mask: count - 1,
        })
    }

    /// This shard thread's buffers (plain ones of the default size if none were installed: a
    /// thread that is not a shard's, unit tests).
    pub(crate) fn local() -> Arc<RecvBuffers> {
        LOCAL.with(|l| {
            l.borrow_mut()
                .get_or_insert_with(|| {
                    Arc::new(RecvBuffers {
                        ring: None,
                        size: DEFAULT_SIZE,
                        count: 0,
                        leased: AtomicUsize::new(0),
                        plain_held: AtomicUsize::new(0),
                        exhausted: AtomicU64::new(0),
                        in_kernel: AtomicUsize::new(0),
                    })
                })
                .clone()
        })
    }

    /// This shard thread's counters (zeros before any setup).
    pub(crate) fn stats() -> Snapshot {
        LOCAL.with(|l| {
            l.borrow()
                .as_ref()
                .map_or_else(Snapshot::default, |b| Snapshot {
                    ring_buffers: u64::from(b.count),
                    held: (b.leased.load(Ordering::Relaxed) + b.plain_held.load(Ordering::Relaxed))
                        as u64,
                    exhausted: b.exhausted.load(Ordering::Relaxed),
                })
        })
    }

    /// Whether receives select their buffers from the ring.
    pub(crate) fn has_ring(&self) -> bool {
        self.ring.is_some()
    }

    /// Buffers in the ring (0: plain buffers).
    pub(crate) fn count(&self) -> usize {
        usize::from(self.count)
    }

    /// Bytes per buffer.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// A receive with a selected buffer goes into the kernel (`true`) or has come back.
    pub(crate) fn note_in_kernel(&self, going: bool) {
        if going {
            self.in_kernel.fetch_add(1, Ordering::Relaxed);
        } else {
            self.in_kernel.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Rounds counted in the kernel now (unit tests).
    #[cfg(test)]
    pub(crate) fn in_kernel_for_tests(&self) -> usize {
        self.in_kernel.load(Ordering::Relaxed)
    }

    /// The kernel found no buffer in the ring (ENOBUFS).
    pub(crate) fn note_exhausted(&self) {
        self.exhausted.fetch_add(1, Ordering::Relaxed);
    }

    /// Puts buffer `bid` at the ring's tail and publishes it (`tail` held).
    fn put(&self, ring: &Ring, tail: &mut u16, bid: u16) {
        let base = ring
            .entries
            .as_ptr()
            .cast::<io_uring::types::BufRingEntry>();
        // SAFETY: `tail & mask` < count, inside the entries' mapping; the entry at the tail is
        // not one the kernel may read (it reads from its head up to the published tail, and at
        // most `count` buffers exist, so this slot's last buffer was taken already). The
        // buffer's address and length are inside the buffers' mapping (bid < count). The
        // fields are written through raw pointers, never a `&mut` to the entry: entry 0's last
        // field is the ring's tail, which the kernel reads meanwhile.
        unsafe {
            let entry = base.add(usize::from(*tail & ring.mask)).cast::<RawEntry>();
            let addr = ring.buffers.as_ptr().add(usize::from(bid) * self.size) as u64;
            std::ptr::addr_of_mut!((*entry).addr).write(addr);
            std::ptr::addr_of_mut!((*entry).len).write(self.size as u32);
            std::ptr::addr_of_mut!((*entry).bid).write(bid);
        }
        *tail = tail.wrapping_add(1);
        // SAFETY: the tail field is inside the first entry (`BufRingEntry::tail`), aligned for a
        // u16; the kernel reads it with acquire ordering, and this release store publishes the
        // entry written above.
        unsafe {
            let t = io_uring::types::BufRingEntry::tail(base).cast::<AtomicU16>();
            (*t).store(*tail, Ordering::Release);
        }
    }

    /// The lease of buffer `bid`, which the kernel filled with `len` bytes (from a CQE with
    /// `IORING_CQE_F_BUFFER`); `None` for an id or length that cannot be ours.
    pub(crate) fn selected(self: &Arc<Self>, bid: u16, len: usize) -> Option<RecvBuf> {
        if self.ring.is_none() || bid >= self.count || len > self.size {
            return None;
        }
        self.leased.fetch_add(1, Ordering::Relaxed);
        Some(RecvBuf(Held::Ring {
            bufs: self.clone(),
            bid,
            len,
        }))
    }

    /// The ring's tail as last published (each buffer put back adds one).
    #[cfg(test)]
    pub(crate) fn published_tail(&self) -> Option<u16> {
        self.ring
            .as_ref()
            .map(|r| *r.tail.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A plain buffer of `size` bytes' room for one receive, counted as held until it drops.
    pub(crate) fn plain(self: &Arc<Self>) -> PlainBuf {
        self.plain_held.fetch_add(1, Ordering::Relaxed);
        PlainBuf {
            bufs: self.clone(),
            vec: Vec::with_capacity(self.size),
        }
    }
}

impl Drop for RecvBuffers {
    fn drop(&mut self) {
        if let Some(ring) = self.ring.take() {
            if self.in_kernel.load(Ordering::Acquire) > 0 {
                // A receive abandoned in the kernel (a shard that stopped with it in flight) may
                // still pick a buffer and write into it: keep both mappings for the process.
                ring.entries.leak();
                ring.buffers.leak();
            }
            // Otherwise no receive can pick a buffer any more (the shard's ring is closed or
            // has none that selects one) and no lease is left: both unmap here.
        }
    }
}

/// A plain buffer a receive owns (see [`RecvBuffers::plain`]).
pub(crate) struct PlainBuf {
    bufs: Arc<RecvBuffers>,
    /// The buffer: its capacity is the receive's room, its length what arrived.
    pub vec: Vec<u8>,
}

impl Drop for PlainBuf {
    fn drop(&mut self) {
        self.bufs.plain_held.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Received bytes in a shard's receive buffer, from
/// [`TcpStream::recv_pooled`](crate::net::TcpStream::recv_pooled): derefs to the bytes. Dropping
/// it gives the buffer back to its shard's ring (from any thread); keep it no longer than needed,
/// as each shard has a bounded number (`ExecutorBuilder::recv_buffers`).
pub struct RecvBuf(Held);

enum Held {
    /// Nothing arrived: the end of the stream.
    Empty,
    Ring {
        bufs: Arc<RecvBuffers>,
        bid: u16,
        len: usize,
    },
    Plain(PlainBuf),
}

impl RecvBuf {
    /// No bytes: the peer shut down its sending side.
    pub(crate) fn empty() -> RecvBuf {
        RecvBuf(Held::Empty)
    }

    /// A plain buffer's bytes.
    pub(crate) fn from_plain(plain: PlainBuf) -> RecvBuf {
        RecvBuf(Held::Plain(plain))
    }

    /// Whether the bytes are in a buffer of the shard's provided-buffer ring (else a plain
    /// buffer: the threads backend, a kernel without buffer rings, or every ring buffer was
    /// leased when the bytes arrived).
    pub fn is_from_ring(&self) -> bool {
        matches!(self.0, Held::Ring { .. })
    }
}

impl std::ops::Deref for RecvBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Held::Empty => &[],
            Held::Plain(p) => &p.vec,
            Held::Ring { bufs, bid, len } => match &bufs.ring {
                // SAFETY: the kernel wrote `len` (<= size) bytes at buffer `bid` (< count) of the
                // mapping, which lives as long as `bufs`; its CQE has arrived, and the buffer
                // is in no ring entry until this lease drops: nothing else writes it.
                Some(ring) => unsafe {
                    std::slice::from_raw_parts(
                        ring.buffers.as_ptr().add(usize::from(*bid) * bufs.size),
                        *len,
                    )
                },
                None => &[],
            },
        }
    }
}

impl AsRef<[u8]> for RecvBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for RecvBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBuf")
            .field("len", &self.len())
            .field("from_ring", &self.is_from_ring())
            .finish()
    }
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        if let Held::Ring { bufs, bid, .. } = &self.0 {
            if let Some(ring) = &bufs.ring {
                let mut tail = ring.tail.lock().unwrap_or_else(|p| p.into_inner());
                bufs.put(ring, &mut tail, *bid);
            }
            bufs.leased.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The kernel's `struct io_uring_buf` (what `BufRingEntry` wraps), for writing one field at a
/// time: `resv` of entry 0 is the ring's tail.
#[repr(C)]
struct RawEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const _: () = assert!(
    std::mem::size_of::<RawEntry>() == std::mem::size_of::<io_uring::types::BufRingEntry>()
);
