//! connect (IORING_OP_CONNECT): connects a socket installed on its shard to `addr`. Its
//! address is owned by the op until the CQE; a connect that waits (a peer that does not answer)
//! is taken out of the kernel when its handle is dropped or its deadline passes. A barrier: the
//! socket's receives and sends made after it wait for it.
//!
//! Rounds. The CONNECT normally completes with the handshake's outcome. Some kernels answer
//! -EINPROGRESS instead (a non-blocking socket, or a CONNECT issued without waiting), and a
//! CONNECT repeated after EINTR finds the first one's handshake under way (EALREADY) or done
//! (EISCONN): as connect(2) says for a non-blocking socket, the op then waits for the socket to
//! be writable (a POLL_ADD for POLLOUT) and reads the handshake's outcome (`SO_ERROR`); EISCONN
//! on a repeated CONNECT is success. The blocking path, which runs no polls (it is the shard's
//! thread), fails with EAGAIN where the handshake is not done; the op closes nothing (the
//! socket is the stream's, closed when its handle drops).

use super::sockaddr::RawAddr;
use super::{on_fd, FileOp, OpFd, OpKind, Step};
use crate::error::Error;
use io_uring::{opcode, squeue, types};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::path::Path;

/// One connect to `addr`.
pub(crate) struct Connect {
    addr: RawAddr,
    round: Round,
    /// CONNECT SQEs built so far (a repeat after EINTR is the second).
    connects: u32,
}

/// What the next round does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// IORING_OP_CONNECT.
    Connect,
    /// POLL_ADD for POLLOUT: the handshake is under way.
    WaitOut,
    /// Read `SO_ERROR` (a `getsockopt` on the shard thread: it never waits).
    Outcome,
}

impl Connect {
    pub(crate) fn new(addr: &SocketAddr) -> Self {
        Connect {
            addr: RawAddr::of(addr),
            round: Round::Connect,
            connects: 0,
        }
    }
}

/// The round after a CONNECT (the `connects`-th) failed with `errno`, if the op goes on.
fn after_connect_errno(errno: i32, connects: u32) -> Option<Round> {
    match errno {
        // Under way: wait until the socket is writable, then read the outcome.
        libc::EINPROGRESS | libc::EALREADY => Some(Round::WaitOut),
        // An earlier CONNECT of this op (interrupted) connected: read the outcome (0).
        libc::EISCONN if connects > 1 => Some(Round::Outcome),
        _ => None,
    }
}

impl FileOp for Connect {
    fn kind(&self) -> OpKind {
        OpKind::Connect
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        match self.round {
            Round::Connect => {
                self.connects += 1;
                let (addr, len) = (self.addr.as_ptr(), self.addr.len);
                Some(on_fd!(fd.target, |f| opcode::Connect::new(f, addr, len).build()))
            }
            Round::WaitOut => {
                Some(opcode::PollAdd::new(types::Fd(fd.raw), libc::POLLOUT as u32).build())
            }
            // `run_blocking` reads it.
            Round::Outcome => None,
        }
    }

    fn run_blocking(&mut self, fd: RawFd) -> i32 {
        match self.round {
            Round::Connect => {
                self.connects += 1;
                let (addr, len) = (self.addr.as_ptr(), self.addr.len);
                let entry = opcode::Connect::new(types::Fd(fd), addr, len).build();
                crate::driver::threads::run_sqe(&entry)
            }
            // No poll on the blocking path (it would block the shard thread).
            Round::WaitOut => -libc::EAGAIN,
            Round::Outcome => crate::driver::socket_waits::socket_error(fd),
        }
    }

    fn on_errno(&mut self, errno: i32) -> Option<Step> {
        if self.round != Round::Connect {
            return None;
        }
        self.round = after_connect_errno(errno, self.connects)?;
        Some(Step::Again)
    }

    fn on_result(&mut self, _res: i32, _flags: u32, _fd: RawFd) -> Step {
        match self.round {
            // Connected.
            Round::Connect | Round::Outcome => Step::Done,
            // Writable (or an error or hang-up, which SO_ERROR names).
            Round::WaitOut => {
                self.round = Round::Outcome;
                Step::Again
            }
        }
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        Error::io("connect", Some(file.to_path_buf()), None, errno)
    }

    fn cancel_in_flight(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Target;
    use io_uring::IoUring;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_second_round_maps_eisconn_to_success_and_in_progress_to_a_wait() {
        assert_eq!(
            after_connect_errno(libc::EINPROGRESS, 1),
            Some(Round::WaitOut)
        );
        assert_eq!(after_connect_errno(libc::EALREADY, 2), Some(Round::WaitOut));
        assert_eq!(after_connect_errno(libc::EISCONN, 2), Some(Round::Outcome));
        // A first CONNECT finding the socket connected did not connect it: an error.
        assert_eq!(after_connect_errno(libc::EISCONN, 1), None);
        assert_eq!(after_connect_errno(libc::ECONNREFUSED, 1), None);
    }

    fn socket() -> std::os::fd::OwnedFd {
        use std::os::fd::FromRawFd;
        // SAFETY: socket(2) takes no pointers; the descriptor is fresh and ours.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        assert!(fd >= 0);
        // SAFETY: as above.
        unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
    }

    /// Runs one round of `op` on a real ring as the shard would (its SQE, or its call on this
    /// thread; then its result): `None` while more rounds follow, else the outcome.
    fn round(ring: &mut IoUring, op: &mut Connect, fd: RawFd) -> Option<Result<(), i32>> {
        let target = OpFd {
            target: Target::Fd(fd),
            raw: fd,
        };
        let res = match op.sqe(target) {
            Some(entry) => {
                // SAFETY: the op (its address) outlives the wait below for this CQE.
                unsafe { ring.submission().push(&entry.user_data(7)).unwrap() };
                ring.submit_and_wait(1).unwrap();
                ring.completion().next().unwrap().result()
            }
            None => op.run_blocking(fd),
        };
        let step = match res {
            r if r < 0 => match op.on_errno(-r) {
                Some(step) => step,
                None => return Some(Err(-r)),
            },
            r => op.on_result(r, 0, fd),
        };
        (step == Step::Done).then_some(Ok(()))
    }

    fn drive(ring: &mut IoUring, op: &mut Connect, fd: RawFd) -> Result<(), i32> {
        for _ in 0..8 {
            if let Some(out) = round(ring, op, fd) {
                return out;
            }
        }
        panic!("connect did not end in 8 rounds");
    }

    #[test]
    fn a_connect_under_way_waits_for_pollout_then_reads_so_error() {
        // A listener whose accept queue (backlog 0: one connection) is full: the next SYN is
        // dropped, and that connect stays under way until the queue has room again.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // SAFETY: listen takes no pointers; `l` is a live listening socket.
        assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 0) }, 0);
        let first = std::net::TcpStream::connect(addr).unwrap();
        let s = socket();
        let raw = RawAddr::of(&addr);
        // SAFETY: `raw` holds a sockaddr of `raw.len` bytes, live for the call.
        let rc = unsafe { libc::connect(s.as_raw_fd(), raw.as_ptr(), raw.len) };
        assert_eq!(rc, -1);
        assert_eq!(crate::numa::last_errno(), libc::EINPROGRESS);
        // As a CONNECT repeated after EINTR: the handshake is under way (EALREADY): wait.
        let mut ring = IoUring::new(8).unwrap();
        let mut op = Connect::new(&addr);
        op.connects = 1;
        assert_eq!(round(&mut ring, &mut op, s.as_raw_fd()), None);
        assert_eq!(op.round, Round::WaitOut);
        // Room in the queue: the SYN's retransmission (about a second later) connects it.
        let (_a, _) = l.accept().unwrap();
        drive(&mut ring, &mut op, s.as_raw_fd()).unwrap();
        let (_b, from) = l.accept().unwrap();
        assert_eq!(
            crate::op::sockaddr::address_of(s.as_raw_fd(), false).unwrap(),
            from
        );
        drop(first);
    }

    #[test]
    fn a_connect_on_a_real_ring_ends_connected_however_the_kernel_answers() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut ring = IoUring::new(8).unwrap();
        // Non-blocking: the kernel may answer -EINPROGRESS (then a POLLOUT wait and SO_ERROR).
        let s = socket();
        let mut op = Connect::new(&addr);
        drive(&mut ring, &mut op, s.as_raw_fd()).unwrap();
        let (_peer, from) = l.accept().unwrap();
        assert_eq!(
            crate::op::sockaddr::address_of(s.as_raw_fd(), false).unwrap(),
            from
        );
        // A CONNECT repeated (as after EINTR) on the connected socket: EISCONN, success.
        let mut again = Connect::new(&addr);
        again.connects = 1; // its first CONNECT was interrupted
        drive(&mut ring, &mut again, s.as_raw_fd()).unwrap();
        // A first CONNECT that finds it connected is an error.
        let mut fresh = Connect::new(&addr);
        assert_eq!(
            drive(&mut ring, &mut fresh, s.as_raw_fd()),
            Err(libc::EISCONN)
        );
    }

    #[test]
    fn a_refused_connect_names_the_refusal_after_its_wait() {
        // A port nobody listens on: ECONNREFUSED, straight from CONNECT or from SO_ERROR.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let mut ring = IoUring::new(8).unwrap();
        let s = socket();
        let mut op = Connect::new(&addr);
        assert_eq!(
            drive(&mut ring, &mut op, s.as_raw_fd()),
            Err(libc::ECONNREFUSED)
        );
    }
}
