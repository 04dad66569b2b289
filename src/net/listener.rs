//! [`TcpListener`]: a listening socket on the shard that bound it.

use super::{here, install_here, os_error, tcp_socket, TcpStream};
use crate::completion::pair;
use crate::error::Error;
use crate::error::Result;
use crate::file::File;
use crate::op::accept::{self, AcceptRounds, SharedQueue, Take};
use crate::op::open::Installer;
use crate::op::sockaddr::{address_of, listener_name, RawAddr};
use crate::op::FileOp;
use crate::routes::ExecShared;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The backlog of a listener: the kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

/// A TCP listener on one shard (see the [module docs](super) for the per-shard shape).
///
/// Closed when the last handle drops (a clone shares it), with the connections it accepted
/// that no accept took (see [`accept`](Self::accept)).
#[derive(Clone)]
pub struct TcpListener {
    file: File,
    /// Connections accepted and not taken, accepts waiting: shared with the op taking
    /// connections (`op/accept.rs`).
    queue: SharedQueue,
    exec: Arc<ExecShared>,
    local: SocketAddr,
    accept_timeout: Option<Duration>,
}

impl std::fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpListener")
            .field("local", &self.local)
            .field("shard", &self.file.shard())
            .finish()
    }
}

impl TcpListener {
    /// Binds `addr` and listens, on the shard whose task calls this (anywhere else it fails
    /// with [`InvalidArgument`](crate::Error::InvalidArgument)). `SO_REUSEADDR` and
    /// `SO_REUSEPORT` are set, so a task on each shard can bind the same address and the kernel
    /// spreads connections over them. The system calls (socket, setsockopt, bind, listen) do not
    /// block; the listener is then installed in this shard's file table.
    ///
    /// `SO_REUSEPORT` also lets another process of the same user bind the address and take a
    /// share of its connections (a second copy of a server started by mistake gets no
    /// EADDRINUSE); [`bind_exclusive`](Self::bind_exclusive) refuses that. And when one listener
    /// of the group closes, the connections queued on it and not yet accepted are reset, unless
    /// `net.ipv4.tcp_migrate_req` is 1 (Linux 5.14): then the kernel moves them to another
    /// listener of the group. Close listeners after the last accept, or set that sysctl.
    pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
        Self::bind_with(addr, true).await
    }

    /// [`bind`](Self::bind) without `SO_REUSEPORT` (`SO_REUSEADDR` only): the address is this
    /// listener's alone, and any other bind of it (another process, another shard, a `bind`)
    /// fails with EADDRINUSE naming the address. For a server that must not run twice, or one
    /// listener that accepts for a single shard.
    pub async fn bind_exclusive(addr: SocketAddr) -> Result<TcpListener> {
        Self::bind_with(addr, false).await
    }

    async fn bind_with(addr: SocketAddr, reuse_port: bool) -> Result<TcpListener> {
        let (exec, shard) = here("bind")?;
        let name = listener_name(addr);
        let fd = tcp_socket("bind", &addr, &name)?;
        let one: libc::c_int = 1;
        let opts: &[libc::c_int] = if reuse_port {
            &[libc::SO_REUSEADDR, libc::SO_REUSEPORT]
        } else {
            &[libc::SO_REUSEADDR]
        };
        for &opt in opts {
            // SAFETY: `one` is a live c_int of the size passed.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(os_error("setsockopt", &name));
            }
        }
        let raw = RawAddr::of(&addr);
        // SAFETY: `raw` holds a sockaddr of `raw.len` bytes, live for the call.
        if unsafe { libc::bind(fd.as_raw_fd(), raw.as_ptr(), raw.len) } < 0 {
            return Err(os_error("bind", &name));
        }
        // SAFETY: listen takes no pointers.
        if unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) } < 0 {
            return Err(os_error("listen", &name));
        }
        let local = address_of(fd.as_raw_fd(), false).unwrap_or(addr);
        let file = install_here(&exec, shard, fd, &listener_name(local)).await?;
        Ok(TcpListener {
            file,
            queue: SharedQueue::default(),
            exec,
            local,
            accept_timeout: None,
        })
    }

    /// The address it listens on (with the port the kernel picked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Each later accept of this handle fails with
    /// [`DeadlineExceeded`](crate::Error::DeadlineExceeded) (and is taken out of the kernel) if
    /// no connection came `timeout` after it was made; `None`: never.
    pub fn set_accept_timeout(&mut self, timeout: Option<Duration>) {
        self.accept_timeout = timeout;
    }

    /// The shard it lives on (and its connections).
    pub fn shard(&self) -> usize {
        self.file.shard()
    }

    /// Waits for a connection and returns it, installed on this listener's shard, with the
    /// peer's address. Accepts run side by side and get connections in the order they came.
    ///
    /// The first accept arms one accept in the shard's ring that stays armed and takes every
    /// connection that comes (IORING_OP_ACCEPT with IORING_ACCEPT_MULTISHOT, Linux 5.19; one
    /// round per connection on older kernels and the threads backend): a connection that comes
    /// while no accept waits is queued for the next one, up to 128 (then the kernel's listen
    /// backlog holds the next ones until accepts take the queued). Dropping the future (or its
    /// timeout) gives up the wait: a connection is never handed to it after that, but one
    /// handed to it just before is closed, never leaked. Dropping the listener's last handle
    /// closes the connections queued and takes the accept out of the kernel. A connection its
    /// peer reset before a multishot accept's completion was reaped comes with the unspecified
    /// address (`0.0.0.0:0`): its address is gone, and its first receive reports the reset.
    pub async fn accept(&self) -> Result<(TcpStream, SocketAddr)> {
        let shard = self.file.shard();
        let installer = Arc::clone(&self.exec) as Arc<dyn Installer>;
        let deadline = self
            .accept_timeout
            .and_then(|t| Instant::now().checked_add(t));
        let (c, done) = pair(self.exec.id, shard);
        let taken = accept::lock(&self.queue).take(done);
        match taken {
            Take::Ready(fd, name, done) => {
                accept::install_connection(&installer, shard, fd, name, done)
            }
            Take::Wait(None) => {}
            Take::Wait(Some(id)) => {
                // Nothing takes connections now: arm the op that does (outside the lock: a
                // refused request completes the op, which locks the queue).
                let queue = Arc::clone(&self.queue);
                let make = move |d| {
                    Box::new(AcceptRounds::new(queue, id, installer, shard, d)) as Box<dyn FileOp>
                };
                let mut armed = self.exec.request_op(&self.file, Ok(make), None);
                match armed.try_take() {
                    Some(Err(e)) => accept::lock(&self.queue).not_armed(id, &e),
                    _ => armed.detach(),
                }
            }
        }
        let file = self.wait_for(c, deadline).await?;
        let stream = TcpStream::from_file(file, Arc::clone(&self.exec));
        // A connection its peer reset before the shard took it from a multishot accept has no
        // address any more (its first recv reports the reset): the unspecified one stands in.
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| unspecified(self.local));
        Ok((stream, peer))
    }

    /// How many connections were accepted and wait for an accept to take them. For tests.
    #[doc(hidden)]
    pub fn queued_connections_for_tests(&self) -> usize {
        accept::lock(&self.queue).queued()
    }

    /// `c`'s connection, or DeadlineExceeded past `deadline` (then `c` is dropped: no
    /// connection is handed to it any more).
    async fn wait_for(
        &self,
        mut c: crate::completion::Completion<File>,
        deadline: Option<Instant>,
    ) -> Result<File> {
        if deadline.is_none() {
            return c.await;
        }
        let mut sleep = std::pin::pin!(crate::task::sleep_until(deadline));
        std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(r) = std::pin::Pin::new(&mut c).poll(cx) {
                return std::task::Poll::Ready(r);
            }
            match sleep.as_mut().poll(cx) {
                std::task::Poll::Ready(()) => {
                    std::task::Poll::Ready(Err(Error::DeadlineExceeded {
                        op: "accept",
                        path: Some(self.file.path().to_path_buf()),
                        written: None,
                    }))
                }
                std::task::Poll::Pending => std::task::Poll::Pending,
            }
        })
        .await
    }
}

/// The unspecified address of `local`'s family, port 0.
fn unspecified(local: SocketAddr) -> SocketAddr {
    match local {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
    }
}
