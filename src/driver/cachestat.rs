//! cachestat(2) (Linux 6.5): how much of a file's range is in the page cache, the one wrapper
//! of that system call (`File::page_cache` and send_file's inline-path check both use it).

use std::os::fd::RawFd;

/// A range of a file's pages in the page cache ([`File::page_cache`](crate::File::page_cache)),
/// in pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PageCacheState {
    /// Pages of the range in the page cache.
    pub cached: u64,
    /// Of those, dirty (written, not yet written back).
    pub dirty: u64,
    /// Pages of the range under writeback.
    pub writeback: u64,
    /// Pages of the range evicted from the cache (shadow entries).
    pub evicted: u64,
    /// Of those, evicted recently (they would be in the cache with a little more memory).
    pub recently_evicted: u64,
}

/// cachestat(2)'s number: 451 on every architecture of the unified table (Linux 6.5); the libc
/// crate names it only on some.
const SYS_CACHESTAT: libc::c_long = 451;

/// `struct cachestat_range`.
#[repr(C)]
struct Range {
    off: u64,
    len: u64,
}

/// cachestat(2) of bytes `offset..offset + len` of `fd` (`len` 0: to the end of the file):
/// `Ok(None)` where the kernel has no cachestat (ENOSYS), else the errno of a failure (EPERM
/// from a seccomp filter that refuses it, EBADF, EOPNOTSUPP for hugetlbfs...). Only reads the
/// inode's page-cache counters: no I/O, no waiting.
pub(crate) fn cachestat(fd: RawFd, offset: u64, len: u64) -> Result<Option<PageCacheState>, i32> {
    let range = Range { off: offset, len };
    let mut out = [0u64; 5];
    // SAFETY: cachestat reads `range` (a live `struct cachestat_range`: two u64) and writes
    // `struct cachestat` (five u64) into `out`, both locals outliving the call; it keeps no
    // pointer and changes nothing.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            fd as libc::c_uint,
            &range as *const Range,
            out.as_mut_ptr(),
            0 as libc::c_uint,
        )
    };
    if r == 0 {
        let [cached, dirty, writeback, evicted, recently_evicted] = out;
        return Ok(Some(PageCacheState {
            cached,
            dirty,
            writeback,
            evicted,
            recently_evicted,
        }));
    }
    match crate::numa::last_errno() {
        libc::ENOSYS => Ok(None),
        e => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_file_just_written_is_cached_and_a_bad_descriptor_is_an_errno() {
        let path = std::env::temp_dir().join(format!("ringshard-cachestat-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        match cachestat(f.as_raw_fd(), 0, 0) {
            Ok(Some(st)) => {
                let pages = 8192u64.div_ceil(crate::numa::page_size().max(1) as u64);
                assert_eq!(st.cached, pages, "{st:?}")
            }
            Ok(None) => {} // before Linux 6.5
            Err(e) => panic!("cachestat: errno {e}"),
        }
        drop(f);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(cachestat(-1, 0, 0), Err(libc::EBADF) | Ok(None)));
    }
}
