//! accept (IORING_OP_ACCEPT): connections from a listening socket, installed in the file table
//! of the listener's shard (not the shard its inode hashes to: a connection lives where it was
//! accepted, the thread-per-core shape) and handed to the listener's accepts as `File`s.
//!
//! One op, [`AcceptRounds`], takes a listener's connections while someone accepts: a multishot
//! accept (`IORING_ACCEPT_MULTISHOT`, Linux 5.19: one SQE, a CQE per connection) where the
//! kernel has it, else single-shot rounds one after the other (an older kernel, the threads
//! backend, which ends every round at its first CQE). Each connection goes to the oldest accept
//! waiting for one, or into the listener's [`AcceptQueue`] for the next accept; the op stops
//! (its multishot round cancelled in the kernel, or no next round) when that queue holds
//! [`QUEUED_MAX`] connections, when the listener's last handle is gone, or at shutdown. The next
//! accept that finds no connection queued and no op taking them arms a new one.
//!
//! No descriptor leaks: from its CQE a connection is an `OwnedFd` (in the queue, or moving into
//! `Message::Install`, whose refusal closes it; an install whose accept was dropped meanwhile
//! closes it through the `File`'s drop). Connections that come after the listener was dropped
//! or the op stopped (CQEs on their way) still go into the queue, which the op owns with the
//! listener: the last of them to go closes what is left in it.

use super::sockaddr::{address_of, peer_name, RawAddr};
use super::{on_fd, FileOp, Footprint, OpFd, OpKind, Outcome, Step};
use crate::completion::Completer;
use crate::error::{Error, Result};
use crate::file::File;
use io_uring::{opcode, squeue};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::open::Installer;

/// At most this many connections accepted and not taken by an accept wait in a listener's queue
/// before its op stops taking more (the kernel's listen backlog holds the next ones). A few more
/// may come: CQEs already on their way when the op stopped.
pub(crate) const QUEUED_MAX: usize = 128;

/// What a listener's handles share with the op that takes its connections.
#[derive(Default)]
pub(crate) struct AcceptQueue {
    /// Connections accepted and not taken yet, oldest first (closed if dropped), with their
    /// names (`peer 1.2.3.4:5678`).
    ready: VecDeque<(OwnedFd, PathBuf)>,
    /// Accepts waiting for a connection, oldest first.
    waiters: VecDeque<Completer<File>>,
    /// The op taking connections now (its id), if any.
    live: Option<u64>,
    /// The id of the next op.
    next_id: u64,
}

/// A listener's [`AcceptQueue`], shared with its op.
pub(crate) type SharedQueue = Arc<Mutex<AcceptQueue>>;

/// Locks `queue` (a panic while it was held left nothing half-done that matters: take it).
pub(crate) fn lock(queue: &SharedQueue) -> MutexGuard<'_, AcceptQueue> {
    queue.lock().unwrap_or_else(|p| p.into_inner())
}

/// What an accept does next: take this connection, or wait (arming an op with this id first).
pub(crate) enum Take {
    /// A queued connection and its name, to install for the accept's completer.
    Ready(OwnedFd, PathBuf, Completer<File>),
    /// No connection queued: `done` waits in the queue; `Some(id)`: no op takes connections, one
    /// with this id is to be sent.
    Wait(Option<u64>),
}

impl AcceptQueue {
    /// An accept: the oldest queued connection, or `done` queued as a waiter.
    pub(crate) fn take(&mut self, done: Completer<File>) -> Take {
        if let Some((fd, name)) = self.ready.pop_front() {
            return Take::Ready(fd, name, done);
        }
        // Accepts dropped while waiting (timed out, cancelled) leave here, not only when a
        // connection comes: a loop of timed-out accepts does not grow the queue.
        self.waiters.retain(|w| !w.is_cancelled());
        self.waiters.push_back(done);
        if self.live.is_some() {
            return Take::Wait(None);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.live = Some(id);
        Take::Wait(Some(id))
    }

    /// How many connections wait for an accept.
    pub(crate) fn queued(&self) -> usize {
        self.ready.len()
    }

    /// The op `id` was not sent (refused): its waiters fail with `e`.
    pub(crate) fn not_armed(&mut self, id: u64, e: &Error) {
        if self.live == Some(id) {
            self.live = None;
            for w in self.waiters.drain(..) {
                w.complete(Err(e.clone()));
            }
        }
    }

    /// A waiter that still waits, if any (dropped accepts are skipped).
    fn waiter(&mut self) -> Option<Completer<File>> {
        while let Some(w) = self.waiters.pop_front() {
            if !w.is_cancelled() {
                return Some(w);
            }
        }
        None
    }
}

/// Installs connection `fd` named `name` on shard `on` for `done`.
pub(crate) fn install_connection(
    exec: &Arc<dyn Installer>,
    on: usize,
    fd: OwnedFd,
    name: PathBuf,
    done: Completer<File>,
) {
    match crate::file::describe_socket(&fd, &name) {
        Ok((key, flags)) => {
            let transit = exec.fd_token();
            Arc::clone(exec).install(Some(on), fd, key, flags, &name, done, transit);
        }
        Err(e) => done.complete(Err(e)),
    }
}

/// The op that takes a listener's connections (see the module docs).
pub(crate) struct AcceptRounds {
    /// A single-shot round's peer address, written by the kernel (in this boxed op: it does not
    /// move).
    addr: RawAddr,
    /// Whether the round in the kernel is multishot.
    multishot: bool,
    queue: SharedQueue,
    id: u64,
    exec: Arc<dyn Installer>,
    on: usize,
    /// Completed when the op ends (nobody need wait for it).
    done: Option<Completer<()>>,
}

impl AcceptRounds {
    pub(crate) fn new(
        queue: SharedQueue,
        id: u64,
        exec: Arc<dyn Installer>,
        on: usize,
        done: Completer<()>,
    ) -> Self {
        AcceptRounds {
            addr: RawAddr::empty(),
            multishot: false,
            queue,
            id,
            exec,
            on,
            done: Some(done),
        }
    }

    /// A new connection: to the oldest accept waiting, or into the queue. Then whether this op
    /// goes on taking connections ([`Step::Again`]) or stops ([`Step::Done`]: no longer the live
    /// op, its queue is full, or its listener is gone).
    fn connection(&mut self, res: i32, from_sqe: bool) -> Step {
        // SAFETY: a non-negative ACCEPT result is a new descriptor, ours alone.
        let fd = unsafe { OwnedFd::from_raw_fd(res) };
        let mut q = lock(&self.queue);
        // The peer's address: a single-shot round's SQE has it (the kernel wrote it before the
        // CQE); a multishot round cannot name it there (every connection's would be written to
        // the same place), so it is read now, which fails for a connection its peer reset
        // before this CQE was reaped (it is handed out all the same, as accept(2) does).
        let peer = if from_sqe {
            self.addr.get()
        } else {
            address_of(fd.as_raw_fd(), true).ok()
        };
        let name = peer_name(peer);
        match q.waiter() {
            Some(w) => install_connection(&self.exec, self.on, fd, name, w),
            None => q.ready.push_back((fd, name)),
        }
        let go_on = q.live == Some(self.id)
            && q.ready.len() < QUEUED_MAX
            && Arc::strong_count(&self.queue) > 1;
        if !go_on && q.live == Some(self.id) {
            // Stopped: the next accept that finds nothing queued arms a new op.
            q.live = None;
        }
        if go_on {
            Step::Again
        } else {
            Step::Done
        }
    }
}

impl FileOp for AcceptRounds {
    fn kind(&self) -> OpKind {
        OpKind::Accept
    }

    fn footprint(&self, _known_size: u64) -> Footprint {
        Footprint::Unordered
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        // A multishot round names no address: it would write every connection's into the same
        // place before we read it (see `connection`).
        let multishot = super::kernel_release().at_least(5, 19);
        self.multishot = multishot;
        self.addr = RawAddr::empty();
        let addr = self.addr.as_mut_ptr();
        let len = &mut self.addr.len as *mut libc::socklen_t;
        // Connections are non-blocking, as connected streams are (op/connect.rs): ring RECV/SEND
        // wait by polling whatever the flag, the blocking path and the threads backend use
        // MSG_DONTWAIT anyway, and a send_file may then run on the shard thread (its inline
        // path) without a full socket ever blocking the shard.
        let flags = libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
        Some(on_fd!(fd.target, |f| if multishot {
            opcode::AcceptMulti::new(f).flags(flags).build()
        } else {
            opcode::Accept::new(f, addr, len).flags(flags).build()
        }))
    }

    fn on_more(&mut self, res: i32, _flags: u32, _fd: RawFd) -> Step {
        self.connection(res, false)
    }

    fn on_result(&mut self, res: i32, _flags: u32, _fd: RawFd) -> Step {
        // The round's last CQE (a single-shot round's only one): a connection too. (The threads
        // backend runs a multishot SQE as a single-shot round: no address then.)
        self.connection(res, !self.multishot)
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        Error::io("accept", Some(file.to_path_buf()), None, errno)
    }

    fn complete(&mut self, result: Result<()>) -> Outcome {
        let mut q = lock(&self.queue);
        if q.live == Some(self.id) {
            // Ended while live (an error, cancelled at shutdown): the accepts waiting get why.
            // One that comes later arms a new op.
            q.live = None;
            if let Err(e) = &result {
                for w in q.waiters.drain(..) {
                    w.complete(Err(e.clone()));
                }
            }
        }
        drop(q);
        if let Some(done) = self.done.take() {
            done.complete(result);
        }
        Outcome::Delivered { bytes: 0 }
    }

    /// No longer the live op, or its listener's last handle is gone: its round is taken out
    /// of the kernel. Not a cancellation in the stats: nobody waits on this op (its accepts
    /// wait in the queue, and hold the listener), so its end is nobody's cancellation, as a
    /// full queue's stop is not (found beside `stress-ng --cpu 4`: the scan that saw the
    /// listener dropped counted one `cancelled`).
    fn stopped(&self) -> bool {
        Arc::strong_count(&self.queue) == 1 || lock(&self.queue).live != Some(self.id)
    }

    fn rounds_are_ops(&self) -> bool {
        true
    }

    fn cancel_in_flight(&self) -> bool {
        true
    }
}
