//! Sessions: a caller-owned completion queue for callers that keep many requests in flight.
//!
//! A [`Session`] is made per thread or per task. Requests carry a caller token; buffers move in
//! with the request and come back with its result ([`Done`]). Requests to one shard are queued in
//! the session and go out together on [`flush`](Session::flush) (also done by every reap and
//! wait): one message and at most one wake-up per shard per flush. The shard collects the
//! session's results over one turn of its loop and hands them back in one batch: one lock and at
//! most one wake-up per batch, no allocation, `Arc`, `Mutex` or `Condvar` per operation.
//!
//! ```text
//! caller (Session)                               shard i
//! read/write/fsync(token) -> pending[i]          admit the batch's requests (in order)
//! flush: pending[i] --(one message)-------------> ... issue, reap ...
//!                                                finish: Done{token, result, buf} -> per-turn batch
//! reap/wait/next: take the batch <--(one lock, one wake per batch)-- end of turn: deliver
//! ```

use crate::deadlined::Sink;
use crate::error::{Error, Result};
use crate::file::File;
use crate::park;
use crate::routes::ExecShared;
pub use crate::shard::session_table::Done;
pub(crate) use crate::shard::session_table::{SessionReq, SessionShared};
use crate::shard::{IoOp, Message};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Requests a session may have in flight by default.
pub const DEFAULT_SESSION_CAPACITY: usize = 256;
/// The largest session capacity.
pub const MAX_SESSION_CAPACITY: usize = 65_536;

/// A caller-owned completion queue on an [`Executor`](crate::Executor): see the
/// [module docs](self).
///
/// ```
/// # fn main() -> ringshard::Result<()> {
/// use ringshard::{Executor, OpenOptions};
/// let exec = Executor::builder().shards(2).build()?;
/// let dir = tempfile::tempdir().unwrap();
/// let file = exec.open(dir.path().join("f"), OpenOptions::new().read(true).write(true).create(true)).wait()?;
/// let mut s = exec.session();
/// for i in 0..8u64 {
///     s.write(&file, i * 4096, vec![i as u8; 4096], i)?;    // token i
/// }
/// let mut done = Vec::new();
/// s.wait(8, &mut done)?;                                    // flushes, then waits for all 8
/// assert!(done.iter().all(|d| d.result == Ok(4096)));
/// let mut bufs: Vec<Vec<u8>> = done.drain(..).map(|d| d.buf).collect(); // reuse the buffers
/// for i in 0..8u64 {
///     s.read(&file, i * 4096, 4096, bufs.pop().unwrap(), 100 + i)?;
/// }
/// while s.in_flight() > 0 {
///     s.wait(1, &mut done)?;                                // whatever is done, in any order
/// }
/// for d in &done {
///     assert_eq!(d.buf, vec![(d.token - 100) as u8; 4096]);
/// }
/// # Ok(()) }
/// ```
///
/// In async code, [`next`](Self::next) awaits at least one result without blocking the runtime.
/// A session is `Send` (move it between threads or tasks) but not shared: one owner at a time.
///
/// Dropping a session with requests in flight is safe: requests not yet sent or issued never run
/// (counted as cancelled), issued reads are cancelled in the kernel, issued writes finish, and
/// every buffer is freed only after its operation's completion.
pub struct Session {
    exec: Arc<ExecShared>,
    shared: Arc<SessionShared>,
    /// Requests queued per shard, not yet flushed.
    pending: Vec<Vec<SessionReq>>,
    /// The files of unflushed requests (each once in a row): a file whose last handle the
    /// caller drops meanwhile is closed only after these requests, as its close is sent when
    /// this clone drops, after the flush.
    held: Vec<File>,
    /// Results the caller's side produced itself (requests refused before they left).
    local: Vec<Done>,
    /// Requests submitted and not yet reaped (queued, sent, or done and not taken).
    in_flight: usize,
    capacity: usize,
    timeout: Option<Duration>,
    /// The epoch last seen: a changed epoch means something was delivered.
    seen_epoch: u32,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("in_flight", &self.in_flight)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Session {
    /// A session of `capacity` (checked: 1 to [`MAX_SESSION_CAPACITY`]).
    pub(crate) fn with_capacity(exec: Arc<ExecShared>, capacity: usize) -> Result<Self> {
        if capacity == 0 || capacity > MAX_SESSION_CAPACITY {
            return Err(Error::InvalidConfig(format!(
                "session capacity {capacity} out of range: use 1 to {MAX_SESSION_CAPACITY}"
            )));
        }
        Ok(Self::new(exec, capacity))
    }

    /// A session of `capacity`, which the caller has checked.
    pub(crate) fn new(exec: Arc<ExecShared>, capacity: usize) -> Self {
        let shards = exec.shards.len();
        Session {
            exec,
            shared: Arc::new(SessionShared::new()),
            pending: (0..shards).map(|_| Vec::new()).collect(),
            held: Vec::new(),
            local: Vec::new(),
            in_flight: 0,
            capacity,
            timeout: None,
            seen_epoch: 0,
        }
    }

    /// Requests this session may have in flight.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Requests submitted and not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// A timeout for the requests submitted from now on (`None`: no deadline). A request not
    /// done in time is cancelled and completes with
    /// [`DeadlineExceeded`](Error::DeadlineExceeded). Durations too large to be a point in
    /// time mean no deadline.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// The place of one more request in flight, under `token`: fails with
    /// [`SessionFull`](Error::SessionFull) when there is none. Whatever becomes of the request
    /// from here (queued, refused, or done at once) its result comes back under `token`.
    fn slot(&mut self, token: u64) -> Result<Slot<'_>> {
        if self.in_flight >= self.capacity {
            return Err(Error::SessionFull {
                capacity: self.capacity,
            });
        }
        self.in_flight += 1;
        Ok(Slot {
            session: self,
            token,
        })
    }

    /// Queues a read of up to `len` bytes at `offset` into `buf` (its allocation is reused; its
    /// contents are replaced). Fewer bytes come back only at end of file. Data already in the page
    /// cache is read at once on this thread (see
    /// [`inline_reads`](crate::ExecutorBuilder::inline_reads)), unless a write of the file is
    /// unfinished or queued before it: its result is then in this session's queue already. Fails only when the
    /// session is full ([`SessionFull`](Error::SessionFull)); any other error comes back
    /// as the request's result, with its buffer.
    pub fn read(
        &mut self,
        file: &File,
        offset: u64,
        len: usize,
        buf: Vec<u8>,
        token: u64,
    ) -> Result<()> {
        Sink::read_into(self.slot(token)?, file, offset, len, buf)
    }

    /// Queues a write of all of `data` at `offset` (short writes are completed). Fails only when
    /// the session is full; other errors come back as the request's result, with `data`.
    pub fn write(&mut self, file: &File, offset: u64, data: Vec<u8>, token: u64) -> Result<()> {
        Sink::write(self.slot(token)?, file, offset, data)
    }

    /// Queues an fsync: done after every earlier write to the file is durable.
    pub fn fsync(&mut self, file: &File, token: u64) -> Result<()> {
        Sink::sync(self.slot(token)?, file, false)
    }

    /// Queues an fdatasync.
    pub fn fdatasync(&mut self, file: &File, token: u64) -> Result<()> {
        Sink::sync(self.slot(token)?, file, true)
    }

    /// Sends the queued requests: one message and at most one wake-up per shard. Never blocks.
    pub fn flush(&mut self) {
        let now = Instant::now();
        for shard in 0..self.pending.len() {
            if self.pending[shard].is_empty() {
                continue;
            }
            let n = self.pending[shard].len();
            let reqs = std::mem::replace(&mut self.pending[shard], Vec::with_capacity(n));
            let msg = Message::Session {
                session: Arc::clone(&self.shared),
                reqs,
                at: now,
            };
            // Refused (shut down, shard gone): the results come back like the shard's.
            self.exec.send_or_fail(shard, msg);
        }
        // After the sends: a close these drops may send goes behind the requests.
        self.held.clear();
    }

    /// Moves every result ready now into `out` (appending); returns how many. Flushes first.
    /// Never blocks.
    pub fn reap(&mut self, out: &mut Vec<Done>) -> usize {
        self.flush();
        self.take(out)
    }

    fn take(&mut self, out: &mut Vec<Done>) -> usize {
        let before = out.len();
        out.append(&mut self.local);
        let epoch = self.shared.epoch.load(Ordering::Acquire);
        if epoch != self.seen_epoch {
            self.seen_epoch = epoch;
            let mut q = self.shared.lock();
            if out.is_empty() {
                // Swap: no copy, and the caller's spare capacity goes to the shard.
                std::mem::swap(&mut *q, out);
            } else {
                out.append(&mut q);
            }
        }
        let n = out.len() - before;
        self.in_flight -= n.min(self.in_flight);
        n
    }

    /// Flushes, then blocks until at least `min` results (at most [`in_flight`](Self::in_flight))
    /// are in `out`; returns how many were added. Blocks the calling thread: in async code use
    /// [`next`](Self::next).
    pub fn wait(&mut self, min: usize, out: &mut Vec<Done>) -> Result<usize> {
        self.wait_until(min, None, out)
    }

    /// Like [`wait`](Self::wait), giving up after `timeout` with what arrived by then (which may
    /// be fewer than `min`; requests still in flight stay in flight). Any `Duration` works.
    pub fn wait_timeout(
        &mut self,
        min: usize,
        timeout: Duration,
        out: &mut Vec<Done>,
    ) -> Result<usize> {
        let deadline = Instant::now().checked_add(timeout);
        self.wait_until(min, Some(deadline), out)
    }

    /// `deadline`: `None` waits forever; `Some(None)` is a deadline too far to represent.
    fn wait_until(
        &mut self,
        min: usize,
        deadline: Option<Option<Instant>>,
        out: &mut Vec<Done>,
    ) -> Result<usize> {
        self.flush();
        let want = min.min(self.in_flight);
        let mut got = self.take(out);
        if got >= want {
            return Ok(got);
        }
        self.check_not_on_own_shard()?;
        let mut looked = false;
        loop {
            let epoch = self.shared.epoch.load(Ordering::Acquire);
            if epoch != self.seen_epoch {
                got += self.take(out);
                if got >= want {
                    return Ok(got);
                }
                continue;
            }
            if !looked {
                // Look for a while before sleeping (see `park::look`); again after each sleep
                // only if the shard delivers too little.
                looked = true;
                let seen = self.seen_epoch;
                let shared = &self.shared;
                if park::look(|| shared.epoch.load(Ordering::Acquire) != seen) {
                    continue;
                }
            }
            let left = match deadline {
                None => None,
                Some(None) => Some(Duration::MAX),
                Some(Some(d)) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(got);
                    }
                    Some(d - now)
                }
            };
            self.shared.thread_waiting.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if self.shared.epoch.load(Ordering::SeqCst) == epoch {
                park::wait(&self.shared.epoch, epoch, left);
            }
            self.shared.thread_waiting.store(false, Ordering::Relaxed);
        }
    }

    /// Blocking on a session whose requests this very shard thread must run would never end.
    fn check_not_on_own_shard(&self) -> Result<()> {
        if let Some((exec, shard)) = crate::completion::current_shard() {
            if exec == self.exec.id {
                return Err(Error::WouldDeadlock {
                    op: "Session::wait",
                    shard,
                });
            }
        }
        Ok(())
    }

    /// Awaits at least one result (flushing first) and moves every ready result into `out`;
    /// resolves to how many were added, or to 0 at once when nothing is in flight. Never blocks
    /// the runtime thread.
    pub fn next<'a>(&'a mut self, out: &'a mut Vec<Done>) -> Next<'a> {
        Next { session: self, out }
    }

    /// The polling form of [`next`](Self::next).
    pub fn poll_next(&mut self, cx: &mut Context<'_>, out: &mut Vec<Done>) -> Poll<usize> {
        // Results this thread made itself (reads served inline) are ready without waiting: a
        // task that only ever finds them must still yield to its runtime now and then.
        if !self.local.is_empty() && crate::completion::coop_yield(cx) {
            return Poll::Pending;
        }
        self.flush();
        let n = self.take(out);
        if n > 0 || self.in_flight == 0 {
            return Poll::Ready(n);
        }
        self.shared.waker.register(cx.waker());
        // A delivery between the take above and the registration would not wake us: look again.
        let n = self.take(out);
        if n > 0 {
            Poll::Ready(n)
        } else {
            Poll::Pending
        }
    }
}

/// One request's place in a [`Session`] ([`Session::slot`]): the per-operation methods are
/// [`Sink`]'s; the request is queued for its shard, and its result (or its refusal, or a read
/// done at once) comes back in the session's queue under the token.
struct Slot<'s> {
    session: &'s mut Session,
    token: u64,
}

impl Slot<'_> {
    /// A result made on the caller's side.
    fn done_here(self, result: Result<usize>, buf: Vec<u8>) -> Result<()> {
        self.session.local.push(Done {
            token: self.token,
            result,
            buf,
        });
        Ok(())
    }
}

impl Sink for Slot<'_> {
    type Out<T> = Result<()>;

    #[inline]
    fn routes(&self) -> &ExecShared {
        &self.session.exec
    }

    fn refuse<T>(self, err: Error, buf: Vec<u8>) -> Result<()> {
        self.done_here(Err(err), buf)
    }

    #[inline]
    fn read_here(self, data: Vec<u8>) -> Result<()> {
        self.done_here(Ok(data.len()), data)
    }

    #[inline]
    fn send<T>(
        self,
        file: &File,
        op: IoOp,
        pending: Option<crate::inline::Pending>,
        _reply: fn(crate::completion::Completer<T>) -> crate::shard::Reply,
    ) -> Result<()> {
        let s = self.session;
        let deadline = s.timeout.and_then(|t| Instant::now().checked_add(t));
        crate::file::hold(&mut s.held, file);
        if let Some(q) = s.pending.get_mut(file.shard()) {
            q.push(SessionReq {
                file: file.handle(),
                pending,
                op,
                token: self.token,
                deadline,
            });
        }
        Ok(())
    }
}

/// The future of [`Session::next`].
#[must_use = "futures do nothing unless awaited"]
pub struct Next<'a> {
    session: &'a mut Session,
    out: &'a mut Vec<Done>,
}

impl Future for Next<'_> {
    type Output = usize;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        let this = self.get_mut();
        this.session.poll_next(cx, this.out)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.dropped.store(true, Ordering::Release);
        for (shard, q) in self.pending.iter().enumerate() {
            if !q.is_empty() {
                self.exec.note_cancelled_unsent(shard, q.len() as u64);
            }
        }
    }
}
