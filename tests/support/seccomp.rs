//! A seccomp filter that makes the io_uring system calls fail with a chosen errno, as Docker's
//! default profile (EPERM) or a kernel without io_uring (ENOSYS) does. Shared by the library's
//! backend tests and ringbench's (included with `#[path]`).

#![allow(dead_code)] // each includer uses a part

/// `io_uring_setup`, `io_uring_enter`, `io_uring_register`: the same numbers on every
/// architecture (they were added after the tables were unified).
const IO_URING_SYSCALLS: [u32; 3] = [425, 426, 427];

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: Option<u32> = Some(0xc000_003e);
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: Option<u32> = Some(0xc000_00b7);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const AUDIT_ARCH: Option<u32> = None;

/// Whether this architecture is supported by [`deny_io_uring`] (else tests say so and skip).
pub fn supported() -> bool {
    AUDIT_ARCH.is_some()
}

#[repr(C)]
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;

/// Installs the filter on the calling thread (and what it execs): io_uring_setup, _enter and
/// _register fail with `errno`. Safe to call between fork and exec (no allocation).
pub fn deny_io_uring(errno: i32) -> std::io::Result<()> {
    let Some(arch) = AUDIT_ARCH else {
        return Err(std::io::Error::from_raw_os_error(libc::ENOSYS));
    };
    let deny = RET_ERRNO | (errno as u32 & 0xffff);
    let [a, b, c] = IO_URING_SYSCALLS;
    let op = |code, jt, jf, k| SockFilter { code, jt, jf, k };
    let prog = [
        // Another architecture's system call numbers mean other calls: allow them.
        op(LD_W_ABS, 0, 0, 4),
        op(JEQ_K, 1, 0, arch),
        op(RET_K, 0, 0, RET_ALLOW),
        op(LD_W_ABS, 0, 0, 0),
        op(JEQ_K, 3, 0, a),
        op(JEQ_K, 2, 0, b),
        op(JEQ_K, 1, 0, c),
        op(RET_K, 0, 0, RET_ALLOW),
        op(RET_K, 0, 0, deny),
    ];
    let fprog = SockFprog {
        len: prog.len() as u16,
        filter: prog.as_ptr(),
    };
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fprog` points at `prog`, both alive for the call; the kernel copies the program.
    if unsafe { libc::prctl(libc::PR_SET_SECCOMP, 2, &fprog as *const SockFprog, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `cmd` with the filter installed in the child before it execs.
pub fn under_filter(cmd: &mut std::process::Command, errno: i32) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls prctl (async-signal-safe, no allocation) between fork and
    // exec.
    unsafe { cmd.pre_exec(move || deny_io_uring(errno)) }
}
