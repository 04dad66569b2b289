//! A descriptor's file status flags (`fcntl(F_GETFL)`): the one place that reads them (the
//! access mode and O_APPEND/O_DIRECT of an adopted file, O_DIRECT for the threads backend's
//! inline reads, O_NONBLOCK for send_file's inline path and for sockets the threads backend
//! must not block on).

use std::os::fd::RawFd;

/// `fd`'s open file description's status flags, or the errno (EBADF). Never waits.
pub(crate) fn fd_flags(fd: RawFd) -> Result<libc::c_int, i32> {
    // SAFETY: fcntl(F_GETFL) takes no memory; on a descriptor that is not ours it fails or
    // reads another description's flags, never touching memory.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if fl < 0 {
        Err(crate::numa::last_errno())
    } else {
        Ok(fl)
    }
}

/// Whether `fd`'s open file description is O_NONBLOCK (false where fcntl fails). The flag
/// belongs to the description, shared by every duplicate of the descriptor.
pub(crate) fn is_nonblocking(fd: RawFd) -> bool {
    fd_flags(fd).is_ok_and(|fl| fl & libc::O_NONBLOCK != 0)
}

/// Makes `fd`'s open file description O_NONBLOCK (where it is not already; a failure leaves it
/// as it was: the caller's calls then pass MSG_DONTWAIT or poll first anyway).
pub(crate) fn set_nonblocking(fd: RawFd) {
    if let Ok(fl) = fd_flags(fd) {
        if fl & libc::O_NONBLOCK == 0 {
            // SAFETY: fcntl(F_SETFL) takes no memory.
            unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) };
        }
    }
}
