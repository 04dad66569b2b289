//! Socket options read as one `int`: the one `getsockopt` every layer above uses (a socket's
//! type, `SO_SNDBUF`, `TCP_NOTSENT_LOWAT`, `TCP_NODELAY`, `SO_ERROR`).

use std::os::fd::RawFd;

/// The `int` value of socket option `name` at `level` on `fd`, or the errno of the refusal
/// (ENOTSOCK for anything but a socket, ENOPROTOOPT for an option of another protocol). Never
/// waits.
pub(crate) fn getsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> Result<libc::c_int, i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the live local `v` and updates `len`
    // (a local too); it keeps no pointer. On a descriptor that is not ours it fails or reads
    // another socket's option: it never touches other memory.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        Err(crate::numa::last_errno())
    } else {
        Ok(v)
    }
}
