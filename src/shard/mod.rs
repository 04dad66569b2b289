//! The shard: one pinned thread that owns one ring, one registered buffer pool and one file table.
//!
//! - `ShardLink` is the callers' side: the inbox sender and the wake-up eventfd.
//! - `runner` is the thread's loop (admit requests, issue SQEs, submit, reap, sleep) and the
//!   `Shard` it runs on; each step is a file of its own, in the order a turn takes them:
//!   - `setup`: the thread, pinned, with its ring, pool and file table; `teardown`: its stop;
//!   - `inbox`: messages in, in order; `install`: files in and out of the file table;
//!   - `admit`: a request becomes an op, in its file's order;
//!   - `issue`: ready ops get their SQEs; the data paths: `data_path` (memory and inline) and
//!     `direct` (O_DIRECT in pool buffers); `file_ops`: the host of every other operation;
//!   - `submit`: pushing SQEs, submitting, reaping CQEs; `finish`: results to their handles;
//!   - `cancel`: cancellation and deadlines;
//!   - `task_host` and `timers`: async tasks, their leases and their sleeps; `submit_to`: closures;
//!   - `sleep`: sleeping and waking up.
//! - `files` is the shard's file table; `ops` what an admitted request becomes.
//! - `order` keeps operations on one file in a safe order.
//! - [`ShardContext`] is what a closure run on the shard (`Executor::submit_to`) gets.
//! - `task_queues`: the per-thread queues between the shard and its async tasks (run queue,
//!   messages sent on its thread, sleeps to arm, lent buffers: `lease`); the tasks themselves,
//!   as their code sees them, are `crate::task`.
//! - `local_values`: values the layers above keep on the shard thread (`Sharded<T>`'s).

mod admit;
mod cancel;
mod context;
mod data_path;
mod direct;
mod file_ops;
mod files;
mod finish;
mod inbox;
mod install;
mod issue;
pub(crate) mod lease;
pub(crate) mod local_io;
pub(crate) mod local_values;
mod ops;
mod order;
mod runner;
pub(crate) mod session_table;
mod setup;
mod sleep;
mod submit;
mod submit_to;
mod task_host;
mod task_io;
pub(crate) mod task_queues;
mod teardown;
mod timers;

pub use context::{ShardContext, ShardCqe, CANCEL_USER_DATA, WAKE_USER_DATA};
pub(crate) use ops::MAX_LIVE_OPS;
pub(crate) use setup::{spawn, ShardConfig};
pub use task_queues::SLOW_POLL;
pub(crate) use teardown::notify_death;

use crate::completion::Completer;
use crate::error::{Error, Result};
use crate::file::{File, FileFlags, FileRef};
use crate::router::FileKey;
use crate::stats::{OpKind, ShardStats};
use crossbeam_channel::Sender;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// One I/O request for a shard.
pub(crate) struct IoRequest {
    pub file: FileRef,
    pub op: IoOp,
    /// Where the result goes.
    pub reply: Reply,
    /// When the caller made the request (latency is counted from here).
    pub at: Instant,
    /// Past this instant the request is cancelled (not issued, or cancelled in the kernel).
    pub deadline: Option<Instant>,
    /// A mutation's count in its inode's unfinished mutations (inline reads wait for it to
    /// finish): dropped by the shard once the op has finished, before its handle is completed.
    pub pending: Option<crate::inline::Pending>,
}

/// What an [`IoRequest`] does. Validated by the caller's side before it is sent
/// (see `validate.rs`).
pub(crate) enum IoOp {
    Read {
        offset: u64,
        len: usize,
        /// Storage to read into (its capacity is reused; its contents past `kept` are
        /// discarded).
        buf: Vec<u8>,
        /// Bytes at the start of `buf` already read (by an inline attempt on the caller's
        /// thread that got part of the range): the shard reads the rest. 0 otherwise. (At most
        /// the inline read limit, which fits.)
        kept: u32,
        /// `RWF_*` flags ([`RwFlags`](crate::RwFlags)).
        flags: i32,
    },
    Write {
        offset: u64,
        data: Vec<u8>,
        /// `RWF_*` flags ([`RwFlags`](crate::RwFlags)).
        flags: i32,
    },
    /// Every other operation on a file or a path: see [`crate::op`].
    File(Box<dyn crate::op::FileOp>),
    /// Holds the descriptor's place in the executor's bound on descriptors in transit until the
    /// close has run (or will never run) and the op is dropped.
    Close(#[allow(dead_code)] crate::fd_transit::InTransit),
}

impl IoOp {
    /// The kind, for statistics.
    pub(crate) fn kind(&self) -> OpKind {
        match self {
            IoOp::Read { .. } => OpKind::Read,
            IoOp::Write { .. } => OpKind::Write,
            IoOp::File(op) => op.kind(),
            IoOp::Close(_) => OpKind::Close,
        }
    }

    /// The byte range (offset, length) the operation touches; (0, 0) for whole-file operations.
    pub(crate) fn range(&self) -> (u64, u64) {
        match self {
            IoOp::Read { offset, len, .. } => (*offset, *len as u64),
            IoOp::Write { offset, data, .. } => (*offset, data.len() as u64),
            IoOp::File(_) | IoOp::Close(_) => (0, 0),
        }
    }

    /// The caller's buffer, handed back with the result (a read's storage, a write's data).
    pub(crate) fn take_buf(&mut self) -> Vec<u8> {
        match self {
            IoOp::Read { buf, .. } => std::mem::take(buf),
            IoOp::Write { data, .. } => std::mem::take(data),
            _ => Vec::new(),
        }
    }

    /// A read's or write's `RWF_*` flags (0 for other ops).
    #[inline]
    pub(crate) fn rw_flags(&self) -> i32 {
        match self {
            IoOp::Read { flags, .. } | IoOp::Write { flags, .. } => *flags,
            _ => 0,
        }
    }

    /// Fails a request that will not run (or not finish): its handle (or session token) gets
    /// `err`, with the caller's buffer back. An op that holds its own completer (metadata,
    /// append, vectored) completes it; the op itself stays with the caller (a shard that stops
    /// with it in the kernel leaks it).
    pub(crate) fn fail(
        &mut self,
        reply: Reply,
        err: Error,
        sessions: &mut session_table::SessionTable,
    ) {
        match self {
            IoOp::File(op) => {
                reply.deliver_outcome(op.complete(Err(err)), sessions);
            }
            io => {
                let buf = io.take_buf();
                reply.deliver(Err(err), buf, sessions);
            }
        }
    }

    /// Whether nobody waits for the result (ops that hold their own completer).
    pub(crate) fn is_cancelled(&self) -> bool {
        match self {
            IoOp::File(op) => op.is_cancelled(),
            _ => false,
        }
    }

    /// Whether the op ended its own work (`FileOp::stopped`): not a cancellation to count.
    pub(crate) fn stopped(&self) -> bool {
        match self {
            IoOp::File(op) => op.stopped(),
            _ => false,
        }
    }
}

/// Where an operation's result goes.
pub(crate) enum Reply {
    /// A read's [`Completion`](crate::Completion): the data.
    Data(Completer<Vec<u8>>),
    /// A write's: bytes written.
    Count(Completer<usize>),
    /// A positioned write's ([`File::write_at`]): the bytes that landed, which for a write that
    /// failed part-way is the count written before the failure (see `buf::landed`).
    Landed(Completer<usize>),
    /// A request on an owned buffer ([`crate::buf`]): the result and the buffer, on error too.
    Buf(Completer<crate::buf::RawBuf>),
    /// fsync, fallocate, close.
    Unit(Completer<()>),
    /// size.
    Size(Completer<u64>),
    /// A session's request: its token; the result goes into the session's batch (the index names
    /// the session in the shard's session table).
    Session { session: u32, token: u64 },
    /// Nobody waits: the close of a dropped [`File`].
    Detached,
    /// The op delivers its result itself (a [`FileOp`](crate::op::FileOp) holding its own
    /// completer).
    InOp,
    /// A task's pooled O_DIRECT read: the pool buffer itself, lent until the guard is dropped.
    Lease(Completer<lease::Lease>),
}

impl Reply {
    /// Delivers a result: `n` is the bytes moved (the size, for `size`), `buf` the caller's buffer
    /// (a read's data). Sessions' results are collected in `sessions` and delivered per batch.
    pub(crate) fn deliver(
        self,
        result: Result<u64>,
        buf: Vec<u8>,
        sessions: &mut session_table::SessionTable,
    ) {
        match self {
            Reply::Data(c) => c.complete(result.map(|_| buf)),
            Reply::Count(c) => c.complete(result.map(|n| n as usize)),
            Reply::Landed(c) => c.complete(crate::buf::landed(result)),
            Reply::Buf(c) => c.complete(Ok((result, buf))),
            Reply::Unit(c) => c.complete(result.map(|_| ())),
            Reply::Size(c) => c.complete(result),
            Reply::Session { session, token } => sessions.push(
                session,
                session_table::Done {
                    token,
                    result: result.map(|n| n as usize),
                    buf,
                },
            ),
            Reply::Detached | Reply::InOp => {}
            // Only the shard's finish can lend a buffer: anything arriving here is an error.
            Reply::Lease(c) => c.complete(
                result.and_then(|_| Err(Error::invalid("read_pooled", "no pool buffer was lent"))),
            ),
        }
    }

    /// Delivers what a [`FileOp`](crate::op::FileOp) ended with: a value through this reply, or
    /// nothing (the op completed its own completer). Returns the bytes moved, for statistics.
    pub(crate) fn deliver_outcome(
        self,
        outcome: crate::op::Outcome,
        sessions: &mut session_table::SessionTable,
    ) -> u64 {
        match outcome {
            crate::op::Outcome::Value(result) => {
                self.deliver(result, Vec::new(), sessions);
                0
            }
            crate::op::Outcome::Delivered { bytes } => bytes,
        }
    }

    /// Whether nobody wants the result any more (handle dropped or cancelled, session dropped).
    pub(crate) fn is_cancelled(&self, sessions: &session_table::SessionTable) -> bool {
        match self {
            Reply::Data(c) => c.is_cancelled(),
            Reply::Count(c) | Reply::Landed(c) => c.is_cancelled(),
            Reply::Buf(c) => c.is_cancelled(),
            Reply::Unit(c) => c.is_cancelled(),
            Reply::Size(c) => c.is_cancelled(),
            Reply::Session { session, .. } => sessions.is_dropped(*session),
            Reply::Detached | Reply::InOp => false,
            Reply::Lease(c) => c.is_cancelled(),
        }
    }
}

/// A closure to run on the shard thread.
pub(crate) type Task = Box<dyn FnOnce(&mut ShardContext<'_>) + Send>;

/// What travels over a shard's inbox (or, sent on the shard's own thread, its thread-local
/// queue: see `task_queues::try_local`).
pub(crate) enum Message {
    Io(IoRequest),
    Batch(Vec<IoRequest>),
    /// A session's flush: its requests for this shard, in order.
    Session {
        session: Arc<session_table::SessionShared>,
        reqs: Vec<session_table::SessionReq>,
        at: Instant,
    },
    Install {
        fd: OwnedFd,
        key: FileKey,
        flags: FileFlags,
        path: Arc<Path>,
        /// The executor, for the handle's close-on-drop.
        exec: Arc<dyn crate::file::FileOwner>,
        done: Completer<File>,
        /// Dropped once the shard has the descriptor in its file table (or never will).
        transit: crate::fd_transit::InTransit,
        /// Count it as an open in this shard's stats: an adopted descriptor (an open through a
        /// ring was counted by the shard that opened it).
        count_open: bool,
    },
    Task(Task),
    /// The executor, for tasks (`ringshard::local()`, which knows its type: the shard is below it);
    /// sent once after the shards start.
    SetExec(std::sync::Weak<dyn std::any::Any + Send + Sync>),
    /// An async task woken on another thread: it runs on the shard's next batch.
    Run(async_task::Runnable),
    Stats(Completer<ShardStats>),
    /// Stop after what is queued; `grace` bounds how long in-flight operations may take before
    /// they are cancelled; `done` completes when the shard has stopped.
    Shutdown {
        grace: std::time::Duration,
        done: Option<Completer<()>>,
    },
}

impl IoRequest {
    /// Fails the request (see [`IoOp::fail`]).
    pub(crate) fn fail(self, err: Error, sessions: &mut session_table::SessionTable) {
        let mut op = self.op;
        op.fail(self.reply, err, sessions);
    }
}

impl Message {
    /// Fails a message that will not run, whatever its kind and whatever the reason (shutdown,
    /// a dead shard, a refused send, a dropped batch): every handle, session token and task
    /// inside gets `err`. The one place that does so: a refused send, a shard's last drain and
    /// its thread-local leftovers all come here. Returns a shutdown's waiter, for the caller to
    /// complete once the shard has stopped.
    ///
    /// A refused runnable is dropped (its task cancelled): only its shard's thread sends them
    /// to this function (other threads keep `!Send` tasks away from here).
    pub(crate) fn fail(self, err: &Error) -> Option<Completer<()>> {
        // A request not admitted has no session entry (a session's requests travel whole, in
        // `Message::Session`): nothing is collected here.
        let mut none = session_table::SessionTable::default();
        match self {
            Message::Io(req) => req.fail(err.clone(), &mut none),
            Message::Batch(reqs) => {
                for req in reqs {
                    req.fail(err.clone(), &mut none);
                }
            }
            Message::Session { session, reqs, .. } => {
                let mut out: Vec<session_table::Done> = reqs
                    .into_iter()
                    .map(|mut r| session_table::Done {
                        token: r.token,
                        result: Err(err.clone()),
                        buf: r.op.take_buf(),
                    })
                    .collect();
                session.deliver(&mut out);
            }
            Message::Install { done, .. } => done.complete(Err(err.clone())),
            Message::Stats(done) => done.complete(Err(err.clone())),
            Message::Shutdown { done, .. } => return done,
            // A closure's completer is inside it: dropped, it fails with what `err` says.
            Message::Task(task) => crate::completion::drop_failing(task, err),
            Message::Run(r) => drop(r),
            Message::SetExec(_) => {}
        }
        None
    }
}

/// [`ShardShared::sleep`]: the shard is running.
pub(crate) const AWAKE: u32 = 0;
/// The shard waits in `io_uring_enter` (it has I/O in the kernel): wake it with the eventfd.
pub(crate) const IN_RING: u32 = 1;
/// The shard sleeps on the `sleep` word (nothing of its own in the kernel): a futex wake is
/// about a microsecond, where an eventfd write, the poll's task work and the ring's wake-up cost
/// several times that on both sides.
pub(crate) const ON_FUTEX: u32 = 2;

/// State shared between a shard thread and the callers.
#[derive(Debug)]
pub(crate) struct ShardShared {
    /// Whether (and how) the shard sleeps: [`AWAKE`], [`IN_RING`] (a caller wakes it with the
    /// eventfd) or [`ON_FUTEX`] (a caller wakes it with a futex wake on this word).
    pub sleep: AtomicU32,
    /// The shard thread has died (panicked); new work fails at once.
    pub dead: AtomicBool,
    /// The shard thread has left its loop and is draining its inbox for the last time.
    pub exited: AtomicBool,
    /// Callers inside [`ShardLink::send`]; the exiting shard drains until this is 0.
    pub sending: AtomicUsize,
    /// Wakes the shard: an `IORING_OP_POLL_ADD` on it is armed in the ring whenever the shard
    /// sleeps. Non-blocking, so the shard can reset it with a plain read that never waits.
    pub eventfd: OwnedFd,
    /// The shard's statistics as it stopped after a clean shutdown.
    pub final_stats: std::sync::Mutex<Option<ShardStats>>,
    /// Requests cancelled on the callers' side before they reached the shard (a session dropped
    /// with unsent requests); added to the shard's `cancelled` count in stats.
    pub cancelled_unsent: AtomicU64,
}

impl ShardShared {
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: eventfd has no memory arguments.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(Error::io("eventfd", None, None, crate::numa::last_errno()));
        }
        // SAFETY: eventfd returned a new descriptor that nothing else owns.
        let eventfd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
        Ok(ShardShared {
            sleep: AtomicU32::new(AWAKE),
            dead: AtomicBool::new(false),
            exited: AtomicBool::new(false),
            sending: AtomicUsize::new(0),
            eventfd,
            final_stats: std::sync::Mutex::new(None),
            cancelled_unsent: AtomicU64::new(0),
        })
    }

    /// Wakes the shard if it sleeps. Called after a message was put in the inbox.
    ///
    /// The shard sets `sleep`, then (after a SeqCst fence) looks at the inbox once more before
    /// it blocks; the caller puts the message in, then (after a SeqCst fence) looks at `sleep`.
    /// One of the two sees the other, so no wake-up is lost. Only the caller that flips `sleep`
    /// back to [`AWAKE`] wakes it, so a burst of requests costs one wake-up: a futex wake when
    /// the shard sleeps on the word (nothing of its own in the kernel), an eventfd write when it
    /// waits in the ring.
    pub(crate) fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.sleep.load(Ordering::Relaxed) == AWAKE {
            return;
        }
        let was = self.sleep.swap(AWAKE, Ordering::AcqRel);
        if was == ON_FUTEX {
            crate::park::wake_all(&self.sleep);
        } else if was == IN_RING {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a local u64 to our eventfd. EAGAIN (counter saturated)
            // means a wake-up is pending anyway.
            unsafe {
                libc::write(
                    self.eventfd.as_raw_fd(),
                    (&one as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
        }
    }
}

/// The callers' side of one shard.
#[derive(Debug)]
pub(crate) struct ShardLink {
    pub index: usize,
    pub cpu: Option<usize>,
    pub node: Option<u32>,
    pub tx: Sender<Message>,
    pub shared: Arc<ShardShared>,
}

impl ShardLink {
    /// Puts `msg` in the inbox and wakes the shard if it sleeps. Never blocks: the inbox is
    /// unbounded, and what a shard has admitted is bounded on its side (the rest waits in the
    /// inbox, in order). Gives the message back when the shard is gone.
    #[allow(clippy::result_large_err)] // cold path: the shard is gone
    pub(crate) fn send(&self, msg: Message) -> std::result::Result<(), (Message, Error)> {
        if self.shared.dead.load(Ordering::Acquire) {
            return Err((msg, self.dead_error()));
        }
        // why: a message put in the inbox after the exiting shard's last drain would be neither
        // received nor dropped (crossbeam keeps it while a sender lives), so its handle would hang.
        // The shard sets `exited`, then drains until no send is in progress; a send that starts
        // after `exited` is set is refused here. (SeqCst on both sides: one sees the other.)
        self.shared.sending.fetch_add(1, Ordering::SeqCst);
        let result = if self.shared.exited.load(Ordering::SeqCst) {
            Err((msg, self.gone_error()))
        } else {
            match self.tx.send(msg) {
                Ok(()) => {
                    self.shared.wake();
                    Ok(())
                }
                Err(e) => Err((e.0, self.gone_error())),
            }
        };
        self.shared.sending.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn dead_error(&self) -> Error {
        Error::ShardFailed {
            shard: self.index,
            reason: "the shard thread panicked earlier; its files are unavailable".into(),
        }
    }

    fn gone_error(&self) -> Error {
        if self.shared.dead.load(Ordering::Acquire) {
            self.dead_error()
        } else {
            Error::Shutdown
        }
    }
}

/// The panic payload of `Executor::kill_shard_for_tests`: the shard lets it unwind.
pub(crate) struct KillShard;
