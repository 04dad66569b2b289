//! `--engine tokio`: hyper's HTTP/1.1 on a tokio runtime is the transport; every answer comes
//! from [`service::handle`]. This module only moves bytes: it parses with hyper, reads PUT bodies
//! (with the body timeout), writes the [`Reply`](crate::http::Reply)'s body plan (see "File
//! bodies"), enforces the connection timeouts and cap, and emits the access log when an answer
//! is done.
//!
//! # File bodies
//!
//! A range of at most [`SEND_FILE_MIN`] bytes is read and written by hyper. A longer one from a
//! handle without O_DIRECT goes from the page cache to the socket by ringshard's `send_file`,
//! without passing through user space, although hyper owns the socket and frames the response:
//! - the body gives hyper *placeholder frames*, `Bytes` over one zeroed region allocated once
//!   (at most [`SPAN_MAX`] bytes each), and queues the file range each stands for on the
//!   connection (`ConnState::spans`) as it hands the frame over;
//! - hyper writes a response's head, then its body frames, in order, through [`TimedStream`].
//!   With `writev(true)` it queues body buffers and passes them to `poll_write_vectored` as they
//!   are (hyper 1's `WriteBuf` "queue" strategy; the "flatten" strategy, which that setting
//!   turns off, would copy them);
//! - the stream writes real bytes up to the first placeholder byte as usual. Placeholder bytes,
//!   known by their address, it sends from the front range with `Executor::send_file` on the
//!   socket's descriptor (the op owns a duplicate: a connection dropped meanwhile cannot
//!   redirect it), and reports them written when that completes.
//!
//! hyper waits for that write, so nothing else writes to the socket meanwhile, and hyper's own
//! accounting (Content-Length, keep-alive, pipelining) is unchanged. Placeholder bytes with no
//! queued range behind them fail the connection. The one thing this relies on, hyper handing
//! body buffers over uncopied, is what every large-object test checks (they compare the bytes).
//! Bytes from an O_DIRECT handle (aligned reads) are read, into one buffer up to `--chunk`
//! bytes, beyond that a chunk at a time with one read ahead, and written by hyper.
//!
//! # Timeouts
//!
//! The stream itself ([`TimedStream`]) keeps the connection's clocks, because hyper's
//! `header_read_timeout` starts when a connection begins to wait for a request, so it would
//! bound keep-alive idleness by the (short) header limit. Here:
//! - idle (`--idle-timeout`): no request in flight and no byte received for that long: closed;
//! - header (`--header-timeout`): from the first byte of a request's head to its end;
//! - send: a response write that makes no progress for `--idle-timeout` (a client that stopped
//!   reading): closed (a `send_file` of placeholder bytes, up to [`SPAN_MAX`], counts as one
//!   write: it is cancelled with the connection);
//! - body (`--body-timeout`): the longest gap between pieces of a PUT body; the upload is
//!   abandoned (its temporary file removed) and answered 408, and the connection closed.
//!
//! # Connection cap
//!
//! `--max-connections` connections are served at once (a semaphore); one over the cap is
//! answered `503 Service Unavailable` with `Retry-After: 1` and closed, without being read.

use crate::http::{self, BodyPlan};
use crate::service::{self, Answer};
use crate::store::{BodyError, BodySource, Entry, Store};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use ringshard::Completion;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// The engine's settings.
pub struct Limits {
    pub header: Duration,
    pub idle: Duration,
    pub body: Duration,
    pub max_connections: usize,
    pub grace: Duration,
}

/// Requests in flight on one connection and how many have started (the stream's clocks look).
#[derive(Default)]
struct ConnState {
    active: AtomicUsize,
    started: AtomicU64,
    /// The connection's task, parked on a read while a request was in flight: woken when the
    /// last request ends, so that its read starts the idle clock (hyper, still waiting on the
    /// socket, would not poll again before a byte arrives).
    reader: atomic_waker::AtomicWaker,
    /// The file ranges behind the placeholder frames this connection's bodies gave hyper, in
    /// the order hyper writes them (see "File bodies" in the module docs).
    spans: Mutex<VecDeque<Span>>,
}

/// A file range that placeholder frames stand for.
struct Span {
    entry: Arc<Entry>,
    off: u64,
    len: u64,
}

/// Ranges longer than this (from a handle without O_DIRECT) are sent from the page cache by
/// `send_file`; shorter ones are read (on the calling thread when cached: an inline read) and
/// written by hyper. Measured on hot objects (wrk -t2 -c64): at 128 KiB and 256 KiB `send_file`
/// took about half the CPU per request of the read and copy; at this size and below
/// `send_file` itself copies (READ and WRITE on the ring, after a hop to the shard).
const SEND_FILE_MIN: u64 = 64 * 1024;

/// The longest placeholder frame, and so the most one `send_file` sends (each has the send
/// timeout, like `--engine shards`'s pieces).
const SPAN_MAX: usize = 4 << 20;

/// The memory of every placeholder frame: zeros that hyper queues and hands back to
/// [`TimedStream`] as they are, which knows them by their address and never reads them. Leaked
/// once, and allocated zeroed (calloc: fresh pages that nothing touches, so no memory is used).
fn placeholder() -> &'static [u8] {
    static P: OnceLock<&'static [u8]> = OnceLock::new();
    P.get_or_init(|| Vec::leak(vec![0u8; SPAN_MAX]))
}

/// Whether `b` is (part of) a placeholder frame.
fn is_placeholder(b: &[u8]) -> bool {
    !b.is_empty() && placeholder().as_ptr_range().contains(&b.as_ptr())
}

fn spans(conn: &ConnState) -> std::sync::MutexGuard<'_, VecDeque<Span>> {
    conn.spans.lock().unwrap_or_else(|p| p.into_inner())
}

/// A TCP stream with the connection's idle, header and send clocks (see the module docs).
struct TimedStream {
    io: TcpStream,
    conn: Arc<ConnState>,
    limits: Arc<Limits>,
    read_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
    /// Bytes of a request head have arrived (the header clock runs).
    in_head: bool,
    /// `conn.started` when last looked at: a new request resets the read clock.
    seen: u64,
    /// Where placeholder frames' bytes come from: the store's executor.
    st: Arc<Store>,
    /// The `send_file` of placeholder bytes in flight, and how many it stands for.
    sending: Option<(Completion<u64>, usize)>,
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timeout"))
}

impl AsyncRead for TimedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let started = this.conn.started.load(Ordering::Acquire);
        if started != this.seen {
            this.seen = started;
            this.in_head = false;
            this.read_timer = None;
        }
        let before = buf.filled().len();
        let idle = this.conn.active.load(Ordering::Acquire) == 0;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if idle && buf.filled().len() > before && !this.in_head {
                    // A request's head begins: its own clock from here.
                    this.in_head = true;
                    this.read_timer = Some(Box::pin(tokio::time::sleep(this.limits.header)));
                } else if !idle {
                    this.read_timer = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !idle {
                    // A request is in flight: its body has the body timeout, its answer its
                    // own. Registered, then looked at again: a request that ended between the
                    // first look and the registration woke nobody, and the connection would
                    // wait with no idle clock for a byte that may never come.
                    this.conn.reader.register(cx.waker());
                    if this.conn.active.load(Ordering::Acquire) != 0 {
                        this.read_timer = None;
                        return Poll::Pending;
                    }
                }
                let (limit, what) = if this.in_head {
                    (this.limits.header, "header")
                } else {
                    (this.limits.idle, "idle")
                };
                let t = this
                    .read_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if t.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(timed_out(what)));
                }
                Poll::Pending
            }
        }
    }
}

impl TimedStream {
    /// A write's result through the send clock: progress stops it, `Pending` starts it (and
    /// fails the write once it runs out).
    fn send_clock(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if r.is_ready() {
            self.write_timer = None;
            return r;
        }
        let idle = self.limits.idle;
        let t = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if t.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(timed_out("send")));
        }
        Poll::Pending
    }
}

impl TimedStream {
    /// Writes `want` placeholder bytes: sends the file bytes they stand for (the front of the
    /// connection's spans) into this socket with ringshard's `send_file`, through the send
    /// clock. Hyper waits meanwhile, so nothing else writes to the socket.
    fn poll_span(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.sending.is_none() {
            let mut q = spans(&self.conn);
            let Some(s) = q.front_mut().filter(|s| want as u64 <= s.len) else {
                // Cannot happen while hyper writes body buffers as they are (module docs).
                tracing::error!(target: "object_server", "placeholder bytes without a file range");
                return Poll::Ready(Err(io::Error::other("placeholder without a file range")));
            };
            let c = self
                .st
                .exec
                .send_file(&s.entry.file, s.off, want as u64, &self.io);
            s.off += want as u64;
            s.len -= want as u64;
            if s.len == 0 {
                q.pop_front();
            }
            self.sending = Some((c, want));
        }
        let Some((c, want)) = self.sending.as_mut() else {
            return Poll::Pending;
        };
        let want = *want;
        let r = match Pin::new(c).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => {
                self.sending = None;
                Poll::Ready(match r {
                    Ok(n) if n == want as u64 => Ok(want),
                    Ok(_) => {
                        tracing::error!(target: "object_server", "send_file: object shorter than its metadata");
                        Err(io::Error::other("object shorter than its metadata"))
                    }
                    Err(e) => {
                        // A client that went away is no server error.
                        if !matches!(e.errno(), Some(libc::EPIPE | libc::ECONNRESET)) {
                            tracing::error!(target: "object_server", "send_file: {e}");
                        }
                        Err(io::Error::other("send_file failed"))
                    }
                })
            }
        };
        self.send_clock(cx, r)
    }
}

/// `bufs` sent to `io` with sendmsg(2) and `MSG_MORE` (more follows at once): what the socket
/// takes now, or `Pending` until it has room.
fn poll_send_more(
    io: &TcpStream,
    cx: &mut Context<'_>,
    bufs: &[io::IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    use std::os::fd::AsRawFd;
    let fd = io.as_raw_fd();
    loop {
        std::task::ready!(io.poll_write_ready(cx))?;
        let sent = io.try_io(tokio::io::Interest::WRITABLE, || {
            // SAFETY: an all-zero msghdr is valid (no address, no control data).
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            // IoSlice is ABI-compatible with iovec (std documents it); sendmsg only reads them.
            msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = bufs.len().min(libc::UIO_MAXIOV as usize) as _;
            // SAFETY: `msg` points at `bufs`' iovecs, live and unchanged for this call; `fd` is
            // `io`'s open socket, borrowed for the call.
            let n = unsafe {
                libc::sendmsg(
                    fd,
                    &msg,
                    libc::MSG_MORE | libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match sent {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return Poll::Ready(r),
        }
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if is_placeholder(b) {
            return this.poll_span(cx, b.len());
        }
        let r = Pin::new(&mut this.io).poll_write(cx, b);
        this.send_clock(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Real bytes up to the first placeholder go out as they are; placeholder bytes first
        // are sent from their file.
        let lead = bufs.iter().take_while(|b| !is_placeholder(b)).count();
        if lead == 0 && !bufs.is_empty() {
            return this.poll_span(cx, bufs[0].len());
        }
        let r = if lead < bufs.len() {
            // A head before placeholder bytes: MSG_MORE, so its segment carries the body's first
            // bytes (`send_file` next; its last round pushes). The client takes one segment
            // less per response, as nginx's TCP_CORK gives it, without the cork's two calls.
            poll_send_more(&this.io, cx, &bufs[..lead])
        } else {
            Pin::new(&mut this.io).poll_write_vectored(cx, &bufs[..lead])
        };
        this.send_clock(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A PUT body through hyper, with the body timeout between pieces.
struct HyperBody {
    body: Incoming,
    timeout: Duration,
}

impl BodySource for HyperBody {
    async fn next(&mut self) -> Option<Result<Bytes, BodyError>> {
        loop {
            match tokio::time::timeout(self.timeout, self.body.frame()).await {
                Err(_) => return Some(Err(BodyError::Timeout)),
                Ok(None) => return None,
                Ok(Some(Err(e))) => return Some(Err(BodyError::Broken(e.to_string()))),
                Ok(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        return Some(Ok(d));
                    }
                }
            }
        }
    }

    /// At most 1 MiB, for at most 2 s.
    async fn discard(&mut self) {
        let mut left: i64 = 1 << 20;
        let body = &mut self.body;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while left > 0 {
                match body.frame().await {
                    Some(Ok(f)) => left -= f.data_ref().map_or(0, |d| d.len() as i64),
                    _ => break,
                }
            }
        })
        .await;
    }
}

/// One request's record, kept by its response body: on drop (the answer sent, or the
/// connection gone) it ends the request on its connection and emits the access-log event.
struct Done {
    conn: Arc<ConnState>,
    method: Method,
    key: String,
    status: StatusCode,
    sent: u64,
    stored: u64,
    start: Instant,
}

impl Drop for Done {
    fn drop(&mut self) {
        if self.conn.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.conn.reader.wake();
        }
        http::access_event(
            &self.method,
            &self.key,
            self.status,
            self.sent + self.stored,
            self.start.elapsed(),
        );
    }
}

/// A response body: nothing, one buffer, or an object streamed in chunks; and its request's
/// record.
struct ObjBody {
    kind: Kind,
    done: Option<Done>,
}

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Stream(Box<FileStream>),
    /// An object's range as placeholder frames of at most [`SPAN_MAX`] bytes (see "File
    /// bodies" in the module docs).
    Spans {
        entry: Arc<Entry>,
        next: u64,
        end: u64,
        conn: Arc<ConnState>,
    },
}

struct FileStream {
    st: Arc<Store>,
    entry: Arc<Entry>,
    /// Next byte to request, and the end of the range.
    next: u64,
    end: u64,
    /// Reads in flight: (completion, bytes to skip at its start, bytes it must yield).
    inflight: VecDeque<(Completion<Vec<u8>>, usize, usize)>,
}

const READ_AHEAD: usize = 2;

impl FileStream {
    fn fill(&mut self) {
        while self.inflight.len() < READ_AHEAD && self.next < self.end {
            let chunk = self.st.cfg.chunk as u64;
            let want = chunk.min(self.end - self.next);
            let c = self.st.read_range(&self.entry.file, self.next, want);
            self.inflight.push_back(c);
            self.next += want;
        }
    }
}

impl Body for ObjBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let r = match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Spans {
                entry,
                next,
                end,
                conn,
            } => {
                if *next >= *end {
                    return Poll::Ready(None);
                }
                let len = (*end - *next).min(SPAN_MAX as u64);
                // Queued before hyper has the frame: the stream finds the range when hyper
                // writes it.
                spans(conn).push_back(Span {
                    entry: Arc::clone(entry),
                    off: *next,
                    len,
                });
                *next += len;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                    &placeholder()[..len as usize],
                )))))
            }
            Kind::Stream(s) => {
                s.fill();
                let Some((c, skip, want)) = s.inflight.front_mut() else {
                    return Poll::Ready(None);
                };
                let (skip, want) = (*skip, *want);
                match Pin::new(c).poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(r) => {
                        s.inflight.pop_front();
                        s.fill();
                        let r = r
                            .map_err(|e| {
                                tracing::error!(target: "object_server", "read: {e}");
                                io::Error::other("read failed")
                            })
                            .and_then(|d| s.st.take_read(d, skip, want));
                        Poll::Ready(Some(r.map(Frame::data)))
                    }
                }
            }
        };
        if let (Poll::Ready(Some(Ok(f))), Some(d)) = (&r, this.done.as_mut()) {
            d.sent += f.data_ref().map_or(0, |b| b.len() as u64);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(b) => b.is_none(),
            Kind::Stream(s) => s.inflight.is_empty() && s.next >= s.end,
            Kind::Spans { next, end, .. } => next >= end,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream(s) => {
                let queued: u64 = s.inflight.iter().map(|(_, _, w)| *w as u64).sum();
                SizeHint::with_exact(queued + (s.end - s.next))
            }
            Kind::Spans { next, end, .. } => SizeHint::with_exact(end - next),
        }
    }
}

/// The body of a plan: a range longer than [`SEND_FILE_MIN`] from a handle without O_DIRECT
/// is sent from the file by `send_file` (placeholder frames, see the module docs); any other
/// range of at most a chunk is read now (one buffer), a longer one a chunk at a time with one
/// read ahead. `Err`: the read failed (a 500 instead).
async fn body_of(
    st: &Arc<Store>,
    conn: &Arc<ConnState>,
    plan: BodyPlan<Arc<Entry>>,
) -> Result<Kind, String> {
    Ok(match plan {
        BodyPlan::Empty => Kind::Empty,
        BodyPlan::Bytes(b) => Kind::Full(Some(b)),
        BodyPlan::File { file, start, end }
            if end - start > SEND_FILE_MIN && !file.file.is_direct() =>
        {
            Kind::Spans {
                entry: file,
                next: start,
                end,
                conn: Arc::clone(conn),
            }
        }
        BodyPlan::File { file, start, end } if end - start <= st.cfg.chunk as u64 => {
            let (c, skip, want) = st.read_range(&file.file, start, end - start);
            let d = c.await.map_err(|e| e.to_string())?;
            Kind::Full(Some(
                st.take_read(d, skip, want).map_err(|e| e.to_string())?,
            ))
        }
        BodyPlan::File { file, start, end } => {
            let mut s = FileStream {
                st: Arc::clone(st),
                entry: file,
                next: start,
                end,
                inflight: VecDeque::with_capacity(READ_AHEAD),
            };
            s.fill();
            Kind::Stream(Box::new(s))
        }
    })
}

async fn handle(
    st: Arc<Store>,
    limits: Arc<Limits>,
    conn: Arc<ConnState>,
    req: Request<Incoming>,
) -> Result<Response<ObjBody>, Infallible> {
    conn.active.fetch_add(1, Ordering::AcqRel);
    conn.started.fetch_add(1, Ordering::AcqRel);
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    let mut done = Done {
        conn,
        method: parts.method.clone(),
        key: String::new(),
        status: StatusCode::OK,
        sent: 0,
        stored: 0,
        start,
    };
    let mut body = HyperBody {
        body,
        timeout: limits.body,
    };
    let r = service::Request {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
    };
    let Answer {
        reply,
        key,
        stored,
        close,
    } = service::handle(&st, &r, &mut body).await;
    let (mut status, mut headers) = (reply.status, reply.headers);
    let kind = match body_of(&st, &done.conn, reply.body).await {
        Ok(k) => k,
        Err(d) => {
            let r = http::Reply::<()>::internal("read", &d);
            (status, headers) = (r.status, r.headers);
            match r.body {
                BodyPlan::Bytes(b) => Kind::Full(Some(b)),
                _ => Kind::Empty,
            }
        }
    };
    done.key = key;
    done.status = status;
    done.stored = stored;
    let mut resp = Response::new(ObjBody {
        kind,
        done: Some(done),
    });
    *resp.status_mut() = status;
    if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// Answers a connection over the cap with a 503 and closes it (a task of its own, bounded).
async fn over_cap(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let msg = "server busy\n";
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{msg}",
        msg.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(resp.as_bytes()).await?;
        stream.shutdown().await?;
        // Read (and drop) what the client sent, so closing does not reset the answer away.
        let mut buf = [0u8; 4096];
        while stream.read(&mut buf).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// Serves until SIGINT or SIGTERM, then lets in-flight requests finish (at most `grace`).
pub async fn serve(
    listen: std::net::SocketAddr,
    st: Arc<Store>,
    limits: Limits,
) -> Result<(), Box<dyn std::error::Error>> {
    use tokio::signal::unix::{signal, SignalKind};
    // Signal handlers first: once the address is printed, SIGTERM means a graceful stop.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", listener.local_addr()?)?;
        out.flush()?;
    }
    let limits = Arc::new(limits);
    let cap = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // The stream keeps the header clock (see the module docs).
    http.timer(TokioTimer::new()).header_read_timeout(None);
    // Body buffers queued and written as they are, never copied: placeholder frames rely on
    // it (see the module docs).
    http.writev(true);
    loop {
        tokio::select! {
            acc = listener.accept() => {
                let (stream, _) = match acc {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and the like: back off a little, keep serving.
                        tracing::warn!(target: "object_server", "accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&cap).try_acquire_owned() else {
                    tokio::spawn(over_cap(stream));
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let conn = Arc::new(ConnState::default());
                let io = TimedStream {
                    io: stream,
                    conn: Arc::clone(&conn),
                    limits: Arc::clone(&limits),
                    read_timer: None,
                    write_timer: None,
                    in_head: false,
                    seen: 0,
                    st: Arc::clone(&st),
                    sending: None,
                };
                let (st, limits2) = (Arc::clone(&st), Arc::clone(&limits));
                let svc = hyper::service::service_fn(move |req| {
                    handle(Arc::clone(&st), Arc::clone(&limits2), Arc::clone(&conn), req)
                });
                let conn = graceful.watch(http.serve_connection(TokioIo::new(io), svc));
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(permit);
                });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(listener);
    eprintln!("shutting down: waiting for in-flight requests");
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.grace) => {
            eprintln!("grace period over; closing the remaining connections");
        }
    }
    st.exec.shutdown_async().await?;
    Ok(())
}
