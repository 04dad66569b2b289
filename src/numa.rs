//! Node-local memory: page-aligned anonymous slabs, placed on a NUMA node with `mbind`, and
//! checked with `get_mempolicy`.
//!
//! The C library has no wrappers for these system calls without libnuma, so they are made with
//! `libc::syscall`. Node masks are fixed at [`MAX_NODES`] bits.

use crate::error::{Error, Result};
use std::ptr::NonNull;

/// Highest NUMA node count ringshard can address (the size of the node masks it passes the kernel).
pub const MAX_NODES: usize = 1024;
const MASK_WORDS: usize = MAX_NODES / 64;

// From <linux/mempolicy.h>; libc does not export them for every target.
const MPOL_PREFERRED: libc::c_int = 1;
const MPOL_BIND: libc::c_int = 2;
const MPOL_F_NODE: libc::c_ulong = 1;
const MPOL_F_ADDR: libc::c_ulong = 2;

/// The page size of this machine.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory side effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

fn node_mask(node: u32) -> Result<[libc::c_ulong; MASK_WORDS]> {
    let n = node as usize;
    if n >= MAX_NODES {
        return Err(Error::InvalidConfig(format!(
            "NUMA node {node} is out of range (0..{MAX_NODES})"
        )));
    }
    let mut mask = [0 as libc::c_ulong; MASK_WORDS];
    mask[n / 64] |= 1 << (n % 64);
    Ok(mask)
}

/// An anonymous, page-aligned memory mapping owned by ringshard.
///
/// It is the backing store of a buffer pool: one mapping, so every buffer can start on a page
/// boundary (O_DIRECT needs that) and the whole pool is registered with one call.
#[derive(Debug)]
pub struct Slab {
    ptr: NonNull<u8>,
    len: usize,
    node: Option<u32>,
}

// SAFETY: a Slab is plain memory owned by one value; nothing in it is tied to a thread.
unsafe impl Send for Slab {}

impl Slab {
    /// Maps `len` bytes (rounded up to whole pages) of zeroed memory, placed by the caller's policy.
    pub fn new(len: usize) -> Result<Self> {
        Self::map(len, None)
    }

    /// Maps `len` bytes bound to NUMA node `node` (`mbind(MPOL_BIND)`) and touches every page so it
    /// is allocated there now, not at first use on whatever CPU touches it first.
    pub fn new_on_node(len: usize, node: u32) -> Result<Self> {
        Self::map(len, Some(node))
    }

    fn map(len: usize, node: Option<u32>) -> Result<Self> {
        let page = page_size();
        let len = len
            .checked_add(page - 1)
            .map(|l| l / page * page)
            .filter(|&l| l > 0)
            .ok_or_else(|| Error::InvalidConfig(format!("slab size {len} is invalid")))?;
        let mask = node.map(node_mask).transpose()?;
        // SAFETY: an anonymous private mapping with no address hint; the kernel picks the address,
        // and we check for MAP_FAILED before using it.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(Error::Memory {
                op: "mmap",
                bytes: len,
                errno: last_errno(),
            });
        }
        let ptr = NonNull::new(raw.cast::<u8>()).ok_or(Error::Memory {
            op: "mmap",
            bytes: len,
            errno: libc::ENOMEM,
        })?;
        let slab = Slab { ptr, len, node };
        if let (Some(node), Some(mask)) = (node, mask) {
            // SAFETY: mbind only changes the policy of the range we just mapped and own; the mask
            // array outlives the call and its bit count is passed as MAX_NODES + 1 (the kernel
            // reads maxnode - 1 bits).
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_mbind,
                    slab.ptr.as_ptr(),
                    slab.len,
                    MPOL_BIND,
                    mask.as_ptr(),
                    (MAX_NODES + 1) as libc::c_ulong,
                    0 as libc::c_uint,
                )
            };
            if rc != 0 {
                let errno = last_errno();
                return Err(if errno == libc::EINVAL {
                    Error::InvalidConfig(format!(
                        "mbind to NUMA node {node} failed with EINVAL: the node does not exist or \
                         has no memory on this machine"
                    ))
                } else {
                    Error::Memory {
                        op: "mbind",
                        bytes: slab.len,
                        errno,
                    }
                });
            }
            slab.touch();
        }
        Ok(slab)
    }

    /// Writes one byte per page so the kernel allocates every page now, under the current policy.
    fn touch(&self) {
        let page = page_size();
        for off in (0..self.len).step_by(page) {
            // SAFETY: `off` < len, inside our own writable mapping; volatile so the store is kept.
            unsafe { self.ptr.as_ptr().add(off).write_volatile(0) };
        }
    }

    /// Start of the mapping (page-aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes (a whole number of pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a slab has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The node this slab was bound to, if any.
    pub fn node(&self) -> Option<u32> {
        self.node
    }

    /// Gives up ownership without unmapping: used when the kernel may still write into the memory.
    /// The mapping stays for the life of the process.
    pub fn leak(self) {
        std::mem::forget(self);
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        // SAFETY: we own the mapping [ptr, ptr+len) and nothing borrows it any more (borrows of the
        // slab end before drop). Owners that may have I/O in flight call `leak` instead.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The NUMA node holding the page at `addr` (`get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR)`).
///
/// The page must be mapped; an untouched page is faulted in by the call's semantics only when it
/// has been written, so touch memory before asking.
// The address is only a lookup key for the kernel; nothing dereferences it.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub fn node_of_address(addr: *const u8) -> Result<u32> {
    let mut node: libc::c_int = -1;
    // SAFETY: get_mempolicy writes one int into `node`; with a null mask and maxnode 0 it writes no
    // mask; `addr` is only used as a lookup key by the kernel.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut node as *mut libc::c_int,
            std::ptr::null_mut::<libc::c_ulong>(),
            0 as libc::c_ulong,
            addr,
            MPOL_F_NODE | MPOL_F_ADDR,
        )
    };
    if rc != 0 {
        return Err(Error::Memory {
            op: "get_mempolicy",
            bytes: 0,
            errno: last_errno(),
        });
    }
    Ok(node as u32)
}

/// Makes the calling thread prefer memory from `node` for its future allocations
/// (`set_mempolicy(MPOL_PREFERRED)`): stacks, rings and heap pages touched by the thread land there,
/// and fall back to other nodes rather than fail when the node is full.
pub fn prefer_node_for_thread(node: u32) -> Result<()> {
    let mask = node_mask(node)?;
    // SAFETY: set_mempolicy reads the mask array, which outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_set_mempolicy,
            MPOL_PREFERRED,
            mask.as_ptr(),
            (MAX_NODES + 1) as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(Error::Memory {
            op: "set_mempolicy",
            bytes: 0,
            errno: last_errno(),
        });
    }
    Ok(())
}

/// [`prefer_node_for_thread`] for a shard thread, when it has a node: what became of it, for the
/// shard's stats (a refusal is logged, not an error: there may be one node, or no NUMA support).
pub(crate) fn prefer_node_for_shard(shard: usize, node: Option<u32>) -> Option<MemPolicy> {
    let node = node?;
    Some(match prefer_node_for_thread(node) {
        Ok(()) => MemPolicy::Preferred,
        Err(e) => {
            mem_policy_failed(shard, node, &e);
            MemPolicy::Failed {
                errno: e.errno().unwrap_or(libc::EIO),
            }
        }
    })
}

pub(crate) fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// What became of a shard thread's NUMA memory policy (`set_mempolicy(MPOL_PREFERRED)` for the
/// node of its core), which puts its ring, stacks and heap pages on that node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MemPolicy {
    /// The thread prefers memory from its node.
    Preferred,
    /// The kernel refused the policy (no NUMA support, or a seccomp filter): memory comes from
    /// wherever the kernel's default policy puts it.
    Failed {
        /// The errno of `set_mempolicy`.
        errno: i32,
    },
}

impl MemPolicy {
    /// `"preferred"` or `"failed"`.
    pub fn name(self) -> &'static str {
        match self {
            MemPolicy::Preferred => "preferred",
            MemPolicy::Failed { .. } => "failed",
        }
    }
}

/// Logs (feature `tracing`) that the kernel refused the shard thread's NUMA memory policy.
fn mem_policy_failed(shard: usize, node: u32, error: &Error) {
    #[cfg(feature = "tracing")]
    tracing::warn!(
        target: "ringshard::shard",
        shard,
        node,
        error = %error,
        "NUMA memory policy refused: the shard's memory may come from another node"
    );
    #[cfg(not(feature = "tracing"))]
    let _ = (shard, node, error);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_is_page_aligned_and_rounded() {
        let s = Slab::new(100).unwrap();
        assert_eq!(s.as_ptr() as usize % page_size(), 0);
        assert_eq!(s.len(), page_size());
        assert!(s.node().is_none());
    }

    #[test]
    fn slab_on_node_zero_lands_on_node_zero() {
        let s = Slab::new_on_node(8 * page_size(), 0).unwrap();
        for i in 0..8 {
            // SAFETY (pointer arithmetic): page i of 8 lies inside the slab.
            let addr = unsafe { s.as_ptr().add(i * page_size()) };
            assert_eq!(node_of_address(addr).unwrap(), 0);
        }
        assert_eq!(s.node(), Some(0));
    }

    #[test]
    fn slab_on_missing_node_is_a_clear_error() {
        // Node 1000 does not exist on any machine this runs on.
        let e = Slab::new_on_node(4096, 1000).unwrap_err();
        assert!(matches!(e, Error::InvalidConfig(_)), "{e}");
        assert!(e.to_string().contains("node 1000"), "{e}");
        let e = Slab::new_on_node(4096, 5000).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
    }

    #[test]
    fn zero_and_overflowing_sizes_are_refused() {
        assert!(Slab::new(0).is_err());
        assert!(Slab::new(usize::MAX).is_err());
    }

    #[test]
    fn thread_preference_accepts_node_zero() {
        std::thread::spawn(|| prefer_node_for_thread(0).unwrap())
            .join()
            .unwrap();
    }
}
