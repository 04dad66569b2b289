//! [`TcpStream`]: a connection on the shard that accepted or made it.

use super::{here, install_here, tcp_socket, RecvStream};
use crate::buf::{BufCompletion, IoBuf, IoBufMut};
use crate::completion::Completion;
use crate::driver::sockopt::getsockopt_int;
use crate::error::{Error, Result};
use crate::file::File;
use crate::op::connect::Connect;
use crate::op::dup_fd::DupFd;
use crate::op::recv::Recv;
use crate::op::recv_pooled::RecvPooled;
use crate::op::send::Send;
use crate::op::shutdown::Shutdown;
use crate::op::sockaddr::{address_of, peer_name, peer_of_name};
use crate::op::FileOp;
use crate::recv_ring::RecvBuf;
use crate::routes::ExecShared;
use crate::shard::{IoOp, Reply};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A TCP connection on one shard, from [`TcpListener::accept`](super::TcpListener::accept) or
/// [`connect`](Self::connect).
///
/// Its operations go through its shard's ring (from a task on that shard, with no hop); the
/// buffers are owned: [`recv`](Self::recv) and [`send`](Self::send) take one and give it back
/// with the result, so the kernel never writes into memory the caller may free. A clone shares
/// the connection (a task that receives and one that sends); the socket is closed when the last
/// clone drops, after the operations made before.
#[derive(Clone)]
pub struct TcpStream {
    pub(super) file: File,
    pub(super) exec: Arc<ExecShared>,
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
    pub(super) recv_timeout: Option<Duration>,
    send_timeout: Option<Duration>,
}

impl std::fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStream")
            .field("peer", &self.peer)
            .field("local", &self.local)
            .field("shard", &self.file.shard())
            .finish()
    }
}

impl TcpStream {
    /// A stream around an installed socket: its addresses are read now (the peer's from the
    /// name it was installed under when the connection is already gone).
    pub(super) fn from_file(file: File, exec: Arc<ExecShared>) -> TcpStream {
        let fd = file.raw_fd();
        let peer = address_of(fd, true)
            .ok()
            .or_else(|| peer_of_name(file.path()));
        TcpStream {
            local: address_of(fd, false).ok(),
            peer,
            file,
            exec,
            recv_timeout: None,
            send_timeout: None,
        }
    }

    /// Connects to `addr` from the shard whose task calls this (anywhere else it fails with
    /// [`InvalidArgument`](crate::Error::InvalidArgument)): a socket installed on this shard,
    /// then IORING_OP_CONNECT on its ring. Dropping the future cancels the connect and closes
    /// the socket.
    pub async fn connect(addr: SocketAddr) -> Result<TcpStream> {
        let (exec, shard) = here("connect")?;
        let name = peer_name(Some(addr));
        let fd = tcp_socket("connect", &addr, &name)?;
        let file = install_here(&exec, shard, fd, &name).await?;
        let op = IoOp::File(Box::new(Connect::new(&addr)));
        exec.request(&file, Ok(op), Reply::Unit, None).await?;
        Ok(TcpStream::from_file(file, exec))
    }

    /// The peer's address (read when the stream was made; from the kernel's accept when the
    /// connection was already gone by then).
    pub fn peer_addr(&self) -> Result<SocketAddr> {
        self.known("getpeername", self.peer)
    }

    /// The local address (read when the stream was made).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.known("getsockname", self.local)
    }

    /// `addr`, or the error of `op` that found none (ENOTCONN: the connection was gone).
    fn known(&self, op: &'static str, addr: Option<SocketAddr>) -> Result<SocketAddr> {
        let name = self.file.path().to_path_buf();
        addr.ok_or_else(|| Error::io(op, Some(name), None, libc::ENOTCONN))
    }

    /// The shard it lives on.
    pub fn shard(&self) -> usize {
        self.file.shard()
    }

    /// Sets `TCP_NODELAY` (on: small segments go out at once instead of waiting for the peer's
    /// acknowledgement of earlier ones; a server that writes a response in more than one send
    /// wants it). The call does not block.
    pub fn set_nodelay(&self, on: bool) -> Result<()> {
        let v: libc::c_int = on.into();
        // SAFETY: setsockopt reads one c_int from a live local of the size passed; no memory of
        // ours is kept. The descriptor is the shard's, open while this handle lives and the
        // executor runs (once it has stopped, the number may name another descriptor: the call
        // would then fail or set the option there; it never touches memory).
        let rc = unsafe {
            libc::setsockopt(
                self.file.raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            let name = self.file.path().to_path_buf();
            return Err(Error::io(
                "setsockopt TCP_NODELAY",
                Some(name),
                None,
                crate::numa::last_errno(),
            ));
        }
        Ok(())
    }

    /// Whether `TCP_NODELAY` is set. The call does not block.
    pub fn nodelay(&self) -> Result<bool> {
        let v = getsockopt_int(self.file.raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY).map_err(
            |errno| {
                let name = self.file.path().to_path_buf();
                Error::io("getsockopt TCP_NODELAY", Some(name), None, errno)
            },
        )?;
        Ok(v != 0)
    }

    /// Each later receive of this handle fails with
    /// [`DeadlineExceeded`](crate::Error::DeadlineExceeded) (its buffer back, the receive taken
    /// out of the kernel) if it has not finished `timeout` after it was made; `None`: never.
    /// Deadlines are checked every few milliseconds, so one may end up to ~5 ms late.
    pub fn set_recv_timeout(&mut self, timeout: Option<Duration>) {
        self.recv_timeout = timeout;
    }

    /// As [`set_recv_timeout`](Self::set_recv_timeout), for sends (a peer that does not read).
    pub fn set_send_timeout(&mut self, timeout: Option<Duration>) {
        self.send_timeout = timeout;
    }

    /// Receives what has arrived, up to the buffer's
    /// [`read_capacity`](IoBufMut::read_capacity) (at most
    /// [`max_request_size`](crate::ExecutorBuilder::max_request_size)), into `buf`: the count
    /// and the buffer come back (its length is the count). 0: the peer shut down its sending
    /// side (end of stream). Receives of one socket run in the order made. A buffer with no
    /// room fails with [`InvalidArgument`](crate::Error::InvalidArgument) (and comes back).
    ///
    /// Dropping the completion cancels the receive; bytes the kernel received before the
    /// cancellation reached it are lost with it (the stream is then cut at an unknown place).
    /// A deadline ([`set_recv_timeout`](Self::set_recv_timeout)) keeps them: a receive that
    /// finished before its cancellation returns its bytes.
    pub fn recv<B: IoBufMut>(&self, buf: B) -> BufCompletion<usize, B> {
        let cap = buf.read_capacity().min(self.exec.limits.max_request);
        let (vec, stash) = buf.into_read_vec();
        if cap == 0 {
            // A receive of nothing would return 0, which reads as the end of the stream.
            let e = Error::invalid(
                "recv",
                "the buffer has no room (a Vec's capacity, a Box<[u8]>'s length): give it some, \
                 e.g. Vec::with_capacity(4096)",
            );
            return BufCompletion::new(Completion::ready(Ok((Err(e), vec))), stash, count);
        }
        let make = move |done| Box::new(Recv::new(vec, cap, done)) as Box<dyn FileOp>;
        let raw = self
            .exec
            .request_op(&self.file, Ok(make), deadline(self.recv_timeout));
        BufCompletion::new(raw, stash, count)
    }

    /// Receives what has arrived into one of this shard's receive buffers, taken only once bytes
    /// are there: a connection that waits for its peer holds no buffer (see
    /// [`ExecutorBuilder::recv_buffers`](crate::ExecutorBuilder::recv_buffers)). The
    /// [`RecvBuf`] derefs to the bytes (at most the buffer size); an empty one: the peer shut
    /// down its sending side. Dropping it gives the buffer back (from any thread): hold it only
    /// while you need the bytes.
    ///
    /// Where the kernel has provided-buffer rings (Linux 5.19) the kernel picks the buffer
    /// (IOSQE_BUFFER_SELECT); when all are leased, or without a ring (the threads backend, an
    /// older kernel), the receive waits for the socket to be readable and then takes a plain
    /// buffer of the same size. On the blocking path (a ring without IORING_FEAT_FAST_POLL, or
    /// the kind forced there: see [`net`](crate::net)) it is one non-blocking receive into a
    /// plain buffer: EAGAIN where nothing has arrived, and no buffer held. Ordering,
    /// cancellation and the deadline ([`set_recv_timeout`](Self::set_recv_timeout)) are
    /// [`recv`](Self::recv)'s; a buffer is never handed out while the kernel may write it.
    pub fn recv_pooled(&self) -> Completion<RecvBuf> {
        let make = |done| Box::new(RecvPooled::new(done)) as Box<dyn FileOp>;
        self.exec
            .request_op(&self.file, Ok(make), deadline(self.recv_timeout))
    }

    /// The connection's chunks, from one receive that stays armed in the kernel while the
    /// stream is read in a loop (a multishot receive into the shard's receive buffers, Linux
    /// 6.0; [`recv_pooled`](Self::recv_pooled) per chunk elsewhere): see [`RecvStream`] for
    /// its bound, order and drop. For a connection read until it ends (a request stream, a
    /// sink); read a socket through one stream, or through `recv`/`recv_pooled`, at a time.
    pub fn recv_stream(&self) -> RecvStream {
        RecvStream::new(self.clone())
    }

    /// Sends what the socket takes of `buf` now (at least one byte, unless the buffer is
    /// empty): the count and the buffer come back. Sends of one socket run in the order made.
    pub fn send<B: IoBuf>(&self, buf: B) -> BufCompletion<usize, B> {
        self.send_with(buf, false, false)
    }

    /// Sends all of `buf` (round after round, no other send of the socket in between): the
    /// count and the buffer come back. On an error the count already sent is in the error
    /// ([`Error::written`]).
    pub fn send_all<B: IoBuf>(&self, buf: B) -> BufCompletion<usize, B> {
        self.send_with(buf, true, false)
    }

    /// [`send_all`](Self::send_all) with `MSG_MORE`: more follows at once (a response head before
    /// its body from [`send_file`](Self::send_file)). TCP keeps the last partial segment back,
    /// and the next send's first bytes go in it: a small head and its body reach the peer in
    /// one segment rather than two, as TCP_CORK would do, without a cork's two system calls.
    /// The next send without it pushes what was kept: make one at once, or the kept bytes may
    /// wait (for a later send, or the stream's close).
    pub fn send_all_more<B: IoBuf>(&self, buf: B) -> BufCompletion<usize, B> {
        self.send_with(buf, true, true)
    }

    fn send_with<B: IoBuf>(&self, buf: B, all: bool, more: bool) -> BufCompletion<usize, B> {
        let (vec, stash) = buf.into_vec();
        let make = move |done| Box::new(Send::new(vec, all, more, done)) as Box<dyn FileOp>;
        let raw = self
            .exec
            .request_op(&self.file, Ok(make), deadline(self.send_timeout));
        BufCompletion::new(raw, stash, count)
    }

    /// Sends `len` bytes of `file` from `offset` to the peer without copying them through user
    /// space where that pays: [`Executor::send_file`](crate::Executor::send_file) (SPLICE through
    /// a pipe of the file's shard; a ring copy for small sends), with this stream's send
    /// timeout. The count comes back: fewer than `len` only where the file ends.
    ///
    /// It follows this stream's earlier sends (their bytes go first: the stream's shard makes a
    /// duplicate of the socket after them, which the send owns, so dropping the stream meanwhile
    /// cannot cut it off). A send made before this one finishes may go first: await it before
    /// sending more. The bytes move on the file's shard; from a task there (and the connection
    /// there too) nothing crosses threads but the duplicate.
    pub async fn send_file(&self, file: &File, offset: u64, len: u64) -> Result<u64> {
        let deadline = deadline(self.send_timeout);
        let dup = self.dup_after(DupFd::after_sends, deadline).await?;
        crate::deadlined::Deadlined::new(&self.exec, deadline)
            .send_file_owned(file, offset, len, dup)
            .await
            .map_err(|e| self.named_peer(e, true))
    }

    /// Receives up to `len` bytes from the peer into `file` at `offset` without copying them
    /// through user space: [`Executor::recv_file`](crate::Executor::recv_file) (SPLICE through a
    /// pipe of the file's shard), with this stream's receive timeout. The count comes back:
    /// fewer than `len` only where the peer ended its stream. An upload whose length is known
    /// (`Content-Length`) goes straight into its file.
    ///
    /// It follows this stream's earlier receives (they take their bytes first: the stream's
    /// shard makes a duplicate of the socket after them, which the receive owns). A receive made
    /// before this one finishes may take bytes first: await it before receiving more. Cut off by
    /// its deadline (or cancelled), it took exactly the bytes that reached the file
    /// ([`Error::written`]): the stream goes on after them. After another error (the file's,
    /// a reset) the stream's position is unknown (bytes received but not yet written are
    /// lost): close the connection.
    pub async fn recv_file(&self, file: &File, offset: u64, len: u64) -> Result<u64> {
        let deadline = deadline(self.recv_timeout);
        let dup = self.dup_after(DupFd::after_receives, deadline).await?;
        crate::deadlined::Deadlined::new(&self.exec, deadline)
            .recv_file_owned(file, offset, len, dup)
            .await
            .map_err(|e| self.named_peer(e, false))
    }

    /// A duplicate of the socket made on its shard by `dup` (after the stream's earlier sends
    /// or receives), for an op on a file's shard, which owns it.
    async fn dup_after(
        &self,
        dup: fn(crate::completion::Completer<std::os::fd::OwnedFd>) -> DupFd,
        deadline: Option<Instant>,
    ) -> Result<std::os::fd::OwnedFd> {
        let make = move |done| Box::new(dup(done)) as Box<dyn FileOp>;
        self.exec.request_op(&self.file, Ok(make), deadline).await
    }

    /// `e` naming this stream's peer where it named the duplicate's descriptor number: the
    /// socket side of a `PathPair`, `to` of a send (`peer_is_to`), `from` of a receive.
    fn named_peer(&self, e: Error, peer_is_to: bool) -> Error {
        match e {
            Error::PathPair {
                op,
                from,
                to,
                errno,
            } => {
                let peer = self.file.path().to_path_buf();
                let (from, to) = if peer_is_to { (from, peer) } else { (peer, to) };
                Error::PathPair {
                    op,
                    from,
                    to,
                    errno,
                }
            }
            e => e,
        }
    }

    /// Shuts down the sending side (after the sends made before it: the peer reads their bytes,
    /// then end of stream), the receiving side (at once: a receive that waits returns 0), or
    /// both.
    pub fn shutdown(&self, how: std::net::Shutdown) -> Completion<()> {
        let how = match how {
            std::net::Shutdown::Read => libc::SHUT_RD,
            std::net::Shutdown::Write => libc::SHUT_WR,
            std::net::Shutdown::Both => libc::SHUT_RDWR,
        };
        let op = IoOp::File(Box::new(Shutdown { how }));
        self.exec.request(&self.file, Ok(op), Reply::Unit, None)
    }
}

/// The deadline of an operation made now with `timeout`.
fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}

/// A count of bytes moved as the caller's `usize`.
fn count(result: Result<u64>) -> Result<usize> {
    result.map(|n| n as usize)
}
