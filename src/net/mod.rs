//! Sockets on shards: [`TcpListener`] and [`TcpStream`] (and a stream's [`RecvStream`]), used
//! from shard tasks.
//!
//! # The shape: a listener per shard
//!
//! [`TcpListener::bind`] binds on the shard whose task calls it, with `SO_REUSEPORT`: a task on
//! each shard binds the same address (bind port 0 once, then the port it got on the others),
//! and the kernel spreads incoming connections over the shards' listeners. A connection is
//! installed in the file table of the shard that accepted it and stays there: its receives and
//! sends go straight into that shard's ring, with no hop. (One acceptor handing connections to
//! other shards would pay a hop per connection and put every accept on one core.)
//!
//! `SO_REUSEPORT` lets any process of the same user join the group (and take connections);
//! [`TcpListener::bind_exclusive`] binds without it, so a second bind fails with EADDRINUSE.
//! A listener of the group that closes resets the connections queued on it (not yet accepted)
//! unless `net.ipv4.tcp_migrate_req` is set (5.14), which moves them to the group's others.
//!
//! # Operations
//!
//! accept, connect, recv, send, shutdown are operations like a file's (`src/op/`: one SQE each,
//! through the shard's ring; a listener's accepts and a [`RecvStream`]'s receives keep one
//! multishot SQE armed where the kernel has it): ordered per socket (receives in order among receives, sends among
//! sends, the two directions side by side), cancelled when their handle is dropped, failed with
//! [`Error::DeadlineExceeded`] past the socket's timeout, with the buffer back. A receive or send
//! that waits for its peer (a peer that sends nothing, or does not read) is taken out of the
//! kernel when cancelled or late; the kernel never writes into a buffer after its completion.
//! The socket is closed when its last handle drops, on its shard, like a [`File`].
//! A connect the kernel answers with EINPROGRESS (or, repeated after EINTR, EALREADY) waits for
//! the socket to be writable and reads the handshake's outcome (`SO_ERROR`); EISCONN on a
//! repeated connect is success (`op/connect.rs`).
//!
//! On the threads backend the socket calls run on the shard thread without blocking and wait for
//! readiness as the ring's polls do (`driver/threads.rs`): a peer that never sends holds no
//! thread. On a ring without the socket opcodes (Linux before 5.6; 5.11 for shutdown), or with
//! the kinds forced to the blocking path, a call that would wait fails with EAGAIN. So does an
//! accept, receive or send on a ring without IORING_FEAT_FAST_POLL (Linux 5.6): there the kernel
//! would hand each waiting one to an io-wq worker thread blocked in the call for as long as the
//! peer is silent, a thread per idle connection; they run on the blocking path instead
//! (`ShardStats::blocking_ops` lists them; `shard/setup.rs`, `needs_fast_poll`).
//!
//! ```no_run
//! # fn main() -> ringshard::Result<()> {
//! let exec = ringshard::Executor::builder().shards(2).build()?;
//! let addr: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
//! for shard in 0..exec.shard_count() {
//!     exec.spawn_on(shard, async move {
//!         let local = ringshard::local().expect("on a shard");
//!         let listener = ringshard::TcpListener::bind(addr).await?;
//!         loop {
//!             let (stream, _peer) = listener.accept().await?;
//!             local.spawn_local(async move {
//!                 let mut buf = Vec::with_capacity(4096);
//!                 loop {
//!                     let (n, b) = stream.recv(buf).await?;
//!                     if n? == 0 {
//!                         return Ok::<_, ringshard::Error>(()); // end of stream
//!                     }
//!                     let (sent, b) = stream.send_all(b).await?;
//!                     sent?;
//!                     buf = b;
//!                 }
//!             })
//!             .detach();
//!         }
//!         #[allow(unreachable_code)]
//!         Ok::<_, ringshard::Error>(())
//!     })
//!     .detach();
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Errors name the operation and the peer (`recv peer 127.0.0.1:41234 failed: ECONNRESET ...`)
//! or the listener (`accept listener 0.0.0.0:8080 failed: ...`).

mod listener;
mod recv_stream;
mod stream;

pub use crate::recv_ring::RecvBuf;
pub use listener::TcpListener;
pub use recv_stream::RecvStream;
pub use stream::TcpStream;

use crate::completion::pair;
use crate::error::{Error, Result};
use crate::file::File;
use crate::routes::ExecShared;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

/// The executor and index of the shard this task runs on, or the error that says where to call
/// `op` from.
fn here(op: &'static str) -> Result<(Arc<ExecShared>, usize)> {
    let local = crate::task::local().ok_or_else(|| {
        Error::invalid(
            op,
            "call it from a task on a shard (Executor::spawn_on): a socket lives on the shard \
             that made it",
        )
    })?;
    Ok((Arc::clone(local.routes()), local.index()))
}

/// A new TCP socket for `addr`'s family (`SOCK_CLOEXEC`; blocking: see the module docs).
fn tcp_socket(op: &'static str, addr: &SocketAddr, name: &Path) -> Result<OwnedFd> {
    let domain = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: socket(2) takes no pointers.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_error(op, name));
    }
    // SAFETY: a fresh descriptor, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The last system call's error as an `Error` of `op` on `name`.
fn os_error(op: &'static str, name: &Path) -> Error {
    // The errno first: the path's allocation may change it.
    let errno = crate::numa::last_errno();
    Error::io(op, Some(name.to_path_buf()), None, errno)
}

/// Installs `fd` in the file table of shard `shard` (this task's) and hands back its `File`.
async fn install_here(
    exec: &Arc<ExecShared>,
    shard: usize,
    fd: OwnedFd,
    name: &Path,
) -> Result<File> {
    let (key, flags) = crate::file::describe_socket(&fd, name)?;
    let transit = exec.fd_place()?;
    let (c, done) = pair(exec.id, shard);
    exec.install_on(shard, exec, fd, key, flags, name, done, transit, false);
    c.await
}
