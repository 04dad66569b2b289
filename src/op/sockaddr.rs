//! Socket addresses as the kernel takes them (`sockaddr_storage` and its length) and back, and
//! the name a socket goes by in errors (in place of a file's path).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::path::PathBuf;

/// A socket address in the kernel's layout, with its length.
#[derive(Clone, Copy)]
pub(crate) struct RawAddr {
    pub storage: libc::sockaddr_storage,
    pub len: libc::socklen_t,
}

impl RawAddr {
    /// Room for any address (an accept's or getsockname's output).
    pub(crate) fn empty() -> RawAddr {
        RawAddr {
            // SAFETY: sockaddr_storage is plain integers: all zeros is a valid value.
            storage: unsafe { std::mem::zeroed() },
            len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        }
    }

    /// `addr` in the kernel's layout.
    pub(crate) fn of(addr: &SocketAddr) -> RawAddr {
        let mut raw = RawAddr::empty();
        match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned for
                // it (it is made to hold any sockaddr).
                unsafe {
                    std::ptr::write(&mut raw.storage as *mut _ as *mut libc::sockaddr_in, sin)
                };
                raw.len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: as above, for sockaddr_in6.
                unsafe {
                    std::ptr::write(&mut raw.storage as *mut _ as *mut libc::sockaddr_in6, sin6)
                };
                raw.len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            }
        }
        raw
    }

    /// The address, if it is an IPv4 or IPv6 one.
    pub(crate) fn get(&self) -> Option<SocketAddr> {
        match i32::from(self.storage.ss_family) {
            libc::AF_INET if self.len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: the family says the storage holds a sockaddr_in, and it is long enough.
                let sin = unsafe { *(&self.storage as *const _ as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 if self.len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: as above, for sockaddr_in6.
                let sin6 = unsafe { *(&self.storage as *const _ as *const libc::sockaddr_in6) };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    /// A pointer to the address, for the kernel.
    pub(crate) fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }

    /// A pointer to the address the kernel fills.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut libc::sockaddr {
        (&mut self.storage as *mut libc::sockaddr_storage).cast()
    }
}

/// The peer (`getpeername`) or local (`getsockname`) address of socket `fd`.
pub(crate) fn address_of(fd: RawFd, peer: bool) -> std::io::Result<SocketAddr> {
    let mut raw = RawAddr::empty();
    // SAFETY: the kernel writes at most `raw.len` bytes into `raw.storage` and the length into
    // `raw.len`, both live locals.
    let rc = unsafe {
        if peer {
            libc::getpeername(fd, raw.as_mut_ptr(), &mut raw.len)
        } else {
            libc::getsockname(fd, raw.as_mut_ptr(), &mut raw.len)
        }
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    raw.get()
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
}

/// What a connected socket is called in errors, in place of a path: `peer 10.0.0.7:41234`.
pub(crate) fn peer_name(peer: Option<SocketAddr>) -> PathBuf {
    match peer {
        Some(a) => PathBuf::from(format!("peer {a}")),
        None => PathBuf::from("peer (unknown address)"),
    }
}

/// The peer's address in a name made by [`peer_name`].
pub(crate) fn peer_of_name(name: &std::path::Path) -> Option<SocketAddr> {
    name.to_str()?.strip_prefix("peer ")?.parse().ok()
}

/// What a listening socket is called in errors: `listener 0.0.0.0:8080`.
pub(crate) fn listener_name(local: SocketAddr) -> PathBuf {
    PathBuf::from(format!("listener {local}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        for a in [
            "127.0.0.1:8080".parse::<SocketAddr>().unwrap(),
            "[::1]:443".parse().unwrap(),
            "[fe80::1%2]:1".parse().unwrap(),
        ] {
            assert_eq!(RawAddr::of(&a).get(), Some(a));
        }
        assert_eq!(RawAddr::empty().get(), None);
    }
}
