//! [`TcpListener`]: a listening socket on the shard that bound it.

use super::{here, install_here, os_error, tcp_socket, TcpStream};
use crate::error::Result;
use crate::file::File;
use crate::op::accept::Accept;
use crate::op::open::Installer;
use crate::op::sockaddr::{address_of, listener_name, RawAddr};
use crate::op::FileOp;
use crate::routes::ExecShared;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The backlog of a listener: the kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

/// A TCP listener on one shard (see the [module docs](super) for the per-shard shape).
///
/// Closed when the last handle drops (a clone shares it). An accept in flight keeps it open
/// until that accept ends.
#[derive(Clone)]
pub struct TcpListener {
    file: File,
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

    /// Waits for a connection (IORING_OP_ACCEPT on the shard's ring) and returns it, installed
    /// on this listener's shard, with the peer's address. Accepts run side by side. Dropping
    /// the future cancels the accept; a connection the kernel accepted meanwhile is closed, never
    /// leaked.
    pub async fn accept(&self) -> Result<(TcpStream, SocketAddr)> {
        let shard = self.file.shard();
        let installer = Arc::clone(&self.exec) as Arc<dyn Installer>;
        let make = move |done| Box::new(Accept::new(installer, shard, done)) as Box<dyn FileOp>;
        let deadline = self
            .accept_timeout
            .and_then(|t| Instant::now().checked_add(t));
        let file = self.exec.request_op(&self.file, Ok(make), deadline).await?;
        let stream = TcpStream::from_file(file, Arc::clone(&self.exec));
        let peer = stream.peer_addr()?;
        Ok((stream, peer))
    }
}
