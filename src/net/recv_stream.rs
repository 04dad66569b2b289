//! [`RecvStream`]: a connection read in a loop, from one receive that stays armed in the kernel.

use super::TcpStream;
use crate::completion::{pair, Completion};
use crate::error::{Error, Result};
use crate::op::recv_stream::{self, SharedStream, StreamRounds};
use crate::op::FileOp;
use crate::recv_ring::RecvBuf;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

/// The chunks a connection receives, one [`next`](Self::next) at a time, from
/// [`TcpStream::recv_stream`].
///
/// Where the kernel has multishot receives (Linux 6.0) and the shard a provided-buffer ring
/// ([`ExecutorBuilder::recv_buffers`](crate::ExecutorBuilder::recv_buffers)), one receive stays
/// armed in the shard's ring (IORING_RECV_MULTISHOT): each chunk that arrives fills a ring
/// buffer and goes to the waiting `next`, or waits in the stream's queue for the next one,
/// which then takes it without a system call or a message to the shard. A connection whose peer
/// is silent holds no buffer. Elsewhere (the threads backend, an older kernel, no ring) each
/// `next` is one [`recv_pooled`](TcpStream::recv_pooled): same results, a receive per chunk.
///
/// - **Bounded.** At most a quarter of the shard's ring buffers (at most 8) wait in the queue
///   for a reader that does not take them; then the receive is taken out of the kernel (the
///   socket's buffer, then TCP's window, hold the peer back) and the `next` that leaves the
///   queue at most half full arms it again. A chunk you took is yours until you drop it: drop
///   [`RecvBuf`]s soon, as for `recv_pooled`.
/// - **Ring empty.** When every ring buffer is leased the kernel ends the multishot receive
///   (ENOBUFS): the stream waits for bytes, takes a plain buffer for them, and arms it again.
/// - **End.** An empty chunk is the end of the stream (the peer shut down its sending side);
///   an error (a reset, [`Error::Shutdown`]-like cancellation at shutdown) ends it too. Every
///   `next` after the end returns the same.
/// - **Order.** Chunks come in the order received. The armed receive is one of the socket's
///   receives: a [`recv`](TcpStream::recv) or `recv_pooled` made while it is armed waits until
///   it stops (its queue full, or the stream dropped), and then takes the bytes after those
///   the stream received: read a socket through one of them at a time.
/// - **Drop.** Dropping the stream gives the queued chunks' buffers back to the ring (their
///   bytes are lost, as a dropped receive's) and takes the receive out of the kernel
///   (ASYNC_CANCEL, within a few milliseconds). Dropping a `next` that waits loses nothing: a
///   chunk handed to it goes back to the front of the queue.
#[must_use = "a stream receives only when next() is called"]
pub struct RecvStream {
    stream: TcpStream,
    queue: SharedStream,
    timeout: Option<Duration>,
}

impl std::fmt::Debug for RecvStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvStream")
            .field("stream", &self.stream)
            .field("queued", &self.queued())
            .finish()
    }
}

impl RecvStream {
    pub(super) fn new(stream: TcpStream) -> RecvStream {
        RecvStream {
            timeout: stream.recv_timeout,
            stream,
            queue: SharedStream::default(),
        }
    }

    /// Each later [`next`](Self::next) fails with
    /// [`DeadlineExceeded`](crate::Error::DeadlineExceeded) if no chunk came `timeout` after it
    /// was made; `None`: never (the default is the stream's
    /// [`set_recv_timeout`](TcpStream::set_recv_timeout)). The stream goes on: the receive stays
    /// armed (holding no buffer while nothing arrives), and the next call gets what comes.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// The next chunk the connection received (at most a ring buffer's size); an empty one: the
    /// end of the stream. A chunk already queued is returned at once; else the call waits for
    /// one, arming the receive if it is not armed (see the [type docs](Self)).
    pub async fn next(&mut self) -> Result<RecvBuf> {
        let deadline = self.timeout.and_then(|t| Instant::now().checked_add(t));
        let (arm, c) = {
            let mut q = recv_stream::lock(&self.queue);
            if let Some(b) = q.ready.pop_front() {
                let arm = q.arm_next();
                drop(q);
                if let Some(id) = arm {
                    self.arm(id);
                }
                return Ok(b);
            }
            if let Some(end) = &q.end {
                return end.clone().map(|()| RecvBuf::empty());
            }
            // Nothing queued: wait (a completion made only now: a queued chunk costs none).
            let (c, done) = pair(self.stream.exec.id, self.stream.shard());
            q.waiter = Some(done);
            (q.arm_next(), c)
        };
        if let Some(id) = arm {
            self.arm(id);
        }
        let waiting = Waiting {
            queue: &self.queue,
            path: self.stream.file.path(),
            c,
            answered: false,
        };
        waiting.wait(deadline).await
    }

    /// Chunks received and not taken yet. For tests.
    #[doc(hidden)]
    pub fn queued(&self) -> usize {
        recv_stream::lock(&self.queue).ready.len()
    }

    /// Sends the op `id` that receives for this stream.
    fn arm(&self, id: u64) {
        let queue = Arc::clone(&self.queue);
        let name = self.stream.file.path().to_path_buf();
        let make = move |d| Box::new(StreamRounds::new(queue, id, name, d)) as Box<dyn FileOp>;
        let exec = &self.stream.exec;
        let mut armed = exec.request_op(&self.stream.file, Ok(make), None);
        match armed.try_take() {
            Some(Err(e)) => recv_stream::lock(&self.queue).not_armed(id, &e),
            _ => armed.detach(),
        }
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        let mut q = recv_stream::lock(&self.queue);
        q.closed = true;
        let queued = std::mem::take(&mut q.ready);
        drop(q);
        // Their buffers back to the ring (outside the lock); the op sees `closed` and is
        // cancelled in the kernel at its next CQE or the shard's next scan.
        drop(queued);
    }
}

/// A `next` that waits: its completion, taken back from the queue if the call gives up.
struct Waiting<'a> {
    queue: &'a SharedStream,
    path: &'a Path,
    c: Completion<RecvBuf>,
    /// The call has its answer (its completion's, or the deadline's): nothing to take back.
    answered: bool,
}

impl Waiting<'_> {
    /// The chunk, or DeadlineExceeded past `deadline`.
    async fn wait(mut self, deadline: Option<Instant>) -> Result<RecvBuf> {
        let mut sleep = std::pin::pin!(crate::task::sleep_until(deadline));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = Pin::new(&mut self.c).poll(cx) {
                self.answered = true;
                return Poll::Ready(r);
            }
            if deadline.is_none() {
                return Poll::Pending;
            }
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.answered = true;
                    Poll::Ready(self.timed_out())
                }
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// The deadline passed: no chunk is handed to this call any more (one handed to it just
    /// now, under the queue's lock, is its result).
    fn timed_out(&mut self) -> Result<RecvBuf> {
        let took_back = recv_stream::lock(self.queue).waiter.take().is_some();
        let late = Error::DeadlineExceeded {
            op: "recv_stream",
            path: Some(self.path.to_path_buf()),
            written: None,
        };
        if took_back {
            return Err(late);
        }
        self.c.try_take().unwrap_or(Err(late))
    }
}

/// A call dropped while it waits: its place in the queue is taken back, and a chunk already
/// handed to it goes back to the front of the queue (completions are made under the lock).
impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let mut q = recv_stream::lock(self.queue);
        if q.waiter.take().is_some() {
            return;
        }
        if let Some(Ok(b)) = self.c.try_take() {
            if !b.is_empty() {
                q.ready.push_front(b);
            }
        }
    }
}
