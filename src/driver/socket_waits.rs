//! The threads backend's socket calls that would wait: kept in an epoll set and run again, on
//! the shard thread, when their sockets are ready (see `threads.rs`).
//!
//! A socket has at most one registration in an epoll set, but may have several calls waiting
//! (a receive and a send; accepts side by side on one listener): the set's interest in a socket
//! is the union of what its calls wait for, and when it is ready each of its calls is tried
//! again (one that still would wait stays). Level-triggered: a ready socket is reported until
//! its calls are done. The epoll descriptor is made at the first wait. Sockets are the shard's
//! own, closed only after their operations end (a close follows every earlier operation in the
//! per-socket order), so a number in the set is never reused under it; a cancelled call leaves
//! at once.

use super::fd_flags::set_nonblocking;
use super::sqe::{Code, Sqe};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A socket call that would have waited.
pub(crate) struct SocketWait {
    fd: RawFd,
    /// What it waits for (`POLLIN`, `POLLOUT`).
    events: i16,
    sqe: Sqe,
    code: Code,
    /// It ran before: a connect then reads its outcome (`SO_ERROR`) instead of connecting again.
    again: bool,
}

impl SocketWait {
    /// A call of `code` (one of the socket codes) on socket `fd`, not tried yet.
    pub(crate) fn new(fd: RawFd, sqe: Sqe, code: Code) -> SocketWait {
        SocketWait {
            fd,
            events: 0,
            sqe,
            code,
            again: false,
        }
    }
}

/// The calls waiting, by socket, and the epoll set that watches their sockets.
#[derive(Default)]
pub(crate) struct SocketWaits {
    epoll: Option<OwnedFd>,
    /// Per socket: the interest registered in the set, and its calls in arrival order.
    by_fd: HashMap<RawFd, (u32, Vec<SocketWait>)>,
    /// The socket of each waiting call, by its SQE's user_data (for cancellation).
    fd_of: HashMap<u64, RawFd>,
}

/// Events taken from the set per `epoll_wait`.
const BATCH: usize = 64;

impl SocketWaits {
    /// Whether no call waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.fd_of.is_empty()
    }

    /// The epoll set's descriptor while calls wait (readable when one of their sockets is).
    pub(crate) fn epoll_fd(&self) -> Option<RawFd> {
        if self.is_empty() {
            return None;
        }
        self.epoll.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Runs `wait` now, without blocking: its result goes to `cq`, or it waits for its socket.
    pub(crate) fn run(&mut self, mut wait: SocketWait, cq: &mut VecDeque<(u64, i32)>) {
        match socket_call(&wait.sqe, wait.code, wait.fd, wait.again) {
            Ok(res) => cq.push_back((wait.sqe.user_data, res)),
            Err(events) => {
                wait.events = events;
                wait.again = true;
                let (fd, ud) = (wait.fd, wait.sqe.user_data);
                let entry = self.by_fd.entry(fd).or_insert((0, Vec::new()));
                entry.1.push(wait);
                self.fd_of.insert(ud, fd);
                self.update(fd, cq);
            }
        }
    }

    /// Runs again every call whose socket is ready (no waiting).
    pub(crate) fn run_ready(&mut self, cq: &mut VecDeque<(u64, i32)>) {
        let Some(ep) = self.epoll_fd() else { return };
        // SAFETY: epoll_event is plain data.
        let mut events: [libc::epoll_event; BATCH] = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: a live array of BATCH events; no wait; the kernel writes at most BATCH.
            let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), BATCH as i32, 0) };
            if n <= 0 {
                return;
            }
            for ev in &events[..n as usize] {
                let fd = ev.u64 as RawFd;
                let Some((_, calls)) = self.by_fd.get_mut(&fd) else {
                    continue;
                };
                for wait in std::mem::take(calls) {
                    self.fd_of.remove(&wait.sqe.user_data);
                    self.run(wait, cq);
                }
                self.update(fd, cq);
            }
            if (n as usize) < BATCH {
                return;
            }
        }
    }

    /// Takes out the call with `user_data`; whether it was waiting here.
    pub(crate) fn cancel(&mut self, user_data: u64, cq: &mut VecDeque<(u64, i32)>) -> bool {
        let Some(fd) = self.fd_of.remove(&user_data) else {
            return false;
        };
        if let Some((_, calls)) = self.by_fd.get_mut(&fd) {
            calls.retain(|w| w.sqe.user_data != user_data);
        }
        self.update(fd, cq);
        true
    }

    /// Sets the set's interest in `fd` to what its calls wait for (out of the set when none
    /// does). A socket the set refuses fails its calls with the errno.
    fn update(&mut self, fd: RawFd, cq: &mut VecDeque<(u64, i32)>) {
        let Some((registered, calls)) = self.by_fd.get(&fd) else {
            return;
        };
        let registered = *registered;
        let want = calls
            .iter()
            .fold(0u32, |acc, w| acc | w.events as u16 as u32);
        if want == registered {
            return;
        }
        let Some(ep) = self.epoll_or_make() else {
            self.fail(fd, crate::numa::last_errno(), cq);
            return;
        };
        let op = match (registered, want) {
            (_, 0) => libc::EPOLL_CTL_DEL,
            (0, _) => libc::EPOLL_CTL_ADD,
            _ => libc::EPOLL_CTL_MOD,
        };
        let mut ev = libc::epoll_event {
            events: want,
            u64: fd as u64,
        };
        // SAFETY: a live epoll_event for the call; `ep` is our epoll descriptor.
        let rc = unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) };
        if want == 0 {
            self.by_fd.remove(&fd);
            return;
        }
        if rc < 0 {
            self.fail(fd, crate::numa::last_errno(), cq);
            return;
        }
        if let Some(entry) = self.by_fd.get_mut(&fd) {
            entry.0 = want;
        }
    }

    /// Fails every call waiting on `fd` with `errno`.
    fn fail(&mut self, fd: RawFd, errno: i32, cq: &mut VecDeque<(u64, i32)>) {
        if let Some((registered, calls)) = self.by_fd.remove(&fd) {
            if registered != 0 {
                // A failed MOD leaves the old registration: take it out, or a ready socket
                // with no call would wake every wait at once (and a later ADD get EEXIST).
                if let Some(ep) = self.epoll.as_ref().map(AsRawFd::as_raw_fd) {
                    // SAFETY: EPOLL_CTL_DEL reads no event (a null one is allowed since 2.6.9).
                    unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
                }
            }
            for w in calls {
                self.fd_of.remove(&w.sqe.user_data);
                cq.push_back((w.sqe.user_data, -errno.max(1)));
            }
        }
    }

    fn epoll_or_make(&mut self) -> Option<RawFd> {
        if self.epoll.is_none() {
            // SAFETY: epoll_create1 takes no pointers; the result is checked before it is owned.
            let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            if fd < 0 {
                return None;
            }
            // SAFETY: a fresh descriptor, ours alone.
            self.epoll = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        self.epoll.as_ref().map(AsRawFd::as_raw_fd)
    }
}

/// The socket's pending error (`SO_ERROR`, cleared by reading it): 0 once a connect is done,
/// or `-errno` (as a CQE would carry it) when it failed. Never waits.
pub(crate) fn socket_error(fd: RawFd) -> i32 {
    match super::sockopt::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR) {
        Ok(err) => -err,
        Err(errno) => -errno,
    }
}

/// Runs a socket SQE without blocking: `Ok(result)` (or `-errno`) as its CQE would carry it, or
/// `Err(events)` when it would wait for them. `again`: it waited, and its socket is ready now.
pub(crate) fn socket_call(sqe: &Sqe, code: Code, fd: RawFd, again: bool) -> Result<i32, i16> {
    let buf = sqe.addr as *mut libc::c_void;
    let len = sqe.len as usize;
    loop {
        // SAFETY (every call): the pointers come from the SQE, whose submitter keeps the buffer,
        // sockaddr and length it names valid until its CQE, posted after this call returns.
        let (ret, wait) = unsafe {
            match code {
                Code::Recv => (
                    libc::recv(fd, buf, len, sqe.op_flags as i32 | libc::MSG_DONTWAIT) as i64,
                    libc::POLLIN,
                ),
                Code::Send => (
                    libc::send(
                        fd,
                        buf,
                        len,
                        sqe.op_flags as i32 | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    ) as i64,
                    libc::POLLOUT,
                ),
                Code::Accept => {
                    // O_NONBLOCK on the listener: accept never waits on the shard thread.
                    set_nonblocking(fd);
                    let addr = sqe.addr as *mut libc::sockaddr;
                    let addrlen = sqe.off as *mut libc::socklen_t;
                    (
                        libc::accept4(fd, addr, addrlen, sqe.op_flags as i32) as i64,
                        libc::POLLIN,
                    )
                }
                Code::Connect if again => return Ok(socket_error(fd)),
                Code::Connect => {
                    // And on a connecting socket: connect answers EINPROGRESS, never waits.
                    set_nonblocking(fd);
                    let rc = libc::connect(
                        fd,
                        sqe.addr as *const libc::sockaddr,
                        sqe.off as libc::socklen_t,
                    );
                    if rc < 0 && crate::numa::last_errno() == libc::EINPROGRESS {
                        return Err(libc::POLLOUT);
                    }
                    (i64::from(rc), libc::POLLOUT)
                }
                Code::Shutdown => (i64::from(libc::shutdown(fd, sqe.len as i32)), libc::POLLOUT),
                _ => return Ok(-libc::EINVAL),
            }
        };
        let res = super::threads::cqe_res(ret);
        match -res {
            libc::EINTR => continue,
            libc::EAGAIN => return Err(wait),
            _ => return Ok(res),
        }
    }
}
