//! File -> shard routing.
//!
//! A file is identified by its inode: the `(st_dev, st_ino)` pair of the open file. Every path that
//! reaches the same file (a symlink, a hard link, `a/../b`, a bind mount) therefore routes to the
//! same shard, and so does every reopen, for as long as the file exists. The hash is fixed (no
//! per-process random seed), so routing is also stable across runs with the same shard count.

/// The identity of an open file: device and inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct FileKey {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl FileKey {
    /// The key of an open descriptor (`fstat`).
    pub(crate) fn of_fd(fd: std::os::fd::RawFd) -> std::io::Result<FileKey> {
        // SAFETY: fstat writes only into the stat buffer we pass, which lives for the call.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above; fd is a descriptor the caller owns.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FileKey {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }
}

/// The `dev` of the order key an open gets: no device has it (`dev_t` values fit in 32 bits), so
/// opens are ordered against nothing (each has a key of its own, `ino` a sequence number).
pub(crate) const OPEN_KEY_DEV: u64 = u64::MAX;

/// The `dev` of a socket's key ([`FileKey::unique_socket`]): no device has it, and it is not
/// [`OPEN_KEY_DEV`] (a socket sharing an open's key would share its order list: an open would
/// wait behind a receive that waits for its peer).
pub(crate) const SOCKET_KEY_DEV: u64 = u64::MAX - 1;

impl FileKey {
    /// A key no other descriptor has, for a socket `ringshard::net` made or accepted: the
    /// kernel numbers sockets (and pipes) from one 32-bit counter that wraps, so a new
    /// connection could get a live one's (dev, ino), and with it its order list (its receive
    /// would wait behind the other's). Sockets are installed on a shard chosen by the caller,
    /// never routed by key, so any unique value serves ([`SOCKET_KEY_DEV`]).
    pub(crate) fn unique_socket() -> FileKey {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        FileKey {
            dev: SOCKET_KEY_DEV,
            ino: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// splitmix64's finalizer: a fixed, well-mixing 64-bit hash.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The shard (0..shards) that owns `key`. `shards` must be at least 1.
pub fn shard_for(key: FileKey, shards: usize) -> usize {
    let h = mix(mix(key.dev) ^ key.ino.rotate_left(17));
    (h % shards.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_keys_are_unique_and_name_no_device() {
        let a = FileKey::unique_socket();
        let b = FileKey::unique_socket();
        assert_ne!(a, b);
        assert_eq!((a.dev, b.dev), (SOCKET_KEY_DEV, SOCKET_KEY_DEV));
        assert_ne!(
            SOCKET_KEY_DEV, OPEN_KEY_DEV,
            "an open would share a socket's order list"
        );
    }

    #[test]
    fn stable_and_in_range() {
        let k = FileKey {
            dev: 2049,
            ino: 1234,
        };
        for shards in 1..9 {
            let s = shard_for(k, shards);
            assert!(s < shards);
            assert_eq!(s, shard_for(k, shards));
        }
        assert_eq!(shard_for(k, 0), 0);
    }

    #[test]
    fn spreads_consecutive_inodes() {
        let mut counts = [0usize; 4];
        for ino in 0..4000 {
            counts[shard_for(FileKey { dev: 1, ino }, 4)] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn hard_link_has_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, b"x").unwrap();
        std::fs::hard_link(&a, &b).unwrap();
        use std::os::fd::AsRawFd;
        let fa = std::fs::File::open(&a).unwrap();
        let fb = std::fs::File::open(&b).unwrap();
        assert_eq!(
            FileKey::of_fd(fa.as_raw_fd()).unwrap(),
            FileKey::of_fd(fb.as_raw_fd()).unwrap()
        );
    }
}
