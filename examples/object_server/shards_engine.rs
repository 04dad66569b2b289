//! `--engine shards`: HTTP/1.1 on ringshard's own sockets, every connection a task on a shard.
//! Every answer comes from [`service::handle`]; this module only moves bytes.
//!
//! # Shape
//!
//! - A listener per shard ([`TcpListener::bind`] sets `SO_REUSEPORT`: the kernel spreads the
//!   connections over the shards), each in an acceptor task on its shard; a connection is served
//!   by one task on the shard that accepted it (its receives and sends go into that shard's ring,
//!   no hop to another thread).
//! - Per connection: a read buffer reused across requests, parsed in place with `httparse`
//!   (pipelined requests are parsed from the same buffer, one after the other); the answers of
//!   pipelined requests are gathered in one output buffer, in order, and sent together once no
//!   complete request is left in the read buffer; a head and a small body (at most
//!   [`SMALL_BODY`]) go in one send. The parsed headers go into a `HeaderMap` and the target into
//!   a `String` that are both reused (the service takes a `HeaderMap`; each header value is
//!   still copied into one of its own, an allocation per header).
//! - Small objects are read into a buffer kept by the connection (`Store::read_range_into`):
//!   a read of cached pages completes on this thread (ringshard's inline read, whichever shard
//!   holds the file), else it is a request to the file's shard. Larger objects go through
//!   `TcpStream::send_file` (SPLICE: no user-space copy; [`send_object`]), after their head.
//! - PUT bodies: `Content-Length` bodies are received straight into a fresh buffer per piece
//!   (handed to the store as is), chunked ones decoded from the read buffer (copied out); the
//!   store gathers pieces into chunks (a copy, unless a piece is a whole chunk) and writes them
//!   into the temporary file with one write in flight while the next piece arrives. `Expect: 100-continue` is answered when the service first asks for the
//!   body (a refused upload never asks, and the connection closes after its answer).
//! - Blocking calls: the store's lookups, renames, unlinks, fsyncs and statx are ringshard
//!   operations already; what is left (the Content-Type's xattr or sidecar, removing an abandoned
//!   temporary file from a guard's drop) runs on a small thread pool ([`blocking_pool`]), never
//!   on a shard thread.
//!
//! # Timeouts and cap
//!
//! As `--engine tokio` (see [`tokio_engine`](crate::tokio_engine)): idle (`--idle-timeout`: no
//! request in flight, nothing received), header (`--header-timeout`, from a head's first byte
//! to its end), send (a send that does not finish within `--idle-timeout`), body
//! (`--body-timeout` between pieces: 408, upload removed, connection closed). They are
//! ringshard's per-operation deadlines on the receive or send. `--max-connections`: one more is
//! answered 503 with `Retry-After: 1` and closed.
//!
//! # Stopping
//!
//! SIGINT/SIGTERM: the acceptors close their listeners, connections waiting for a request are
//! shut (their receive ends), connections with a request in flight finish it and close; after
//! `--grace` the executor is shut down, ending whatever is left.

use crate::http::{self, BodyPlan, Reply};
use crate::service::{self, Answer};
use crate::store::{Blocking, BodyError, BodySource, Entry, Store};
use crate::tokio_engine::Limits;
use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use ringshard::{Error, File, LocalShard, TcpListener, TcpStream};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The read buffer's size (and the most a receive for a head asks for).
const RBUF: usize = 16 * 1024;
/// The longest request head; a longer one is answered 431.
const MAX_HEAD: usize = 64 * 1024;
/// The most header fields a request may have (431 beyond).
const MAX_HEADERS: usize = 64;
/// A body up to this many bytes is sent in the same send as its head.
pub const SMALL_BODY: u64 = 64 * 1024;
/// Answers gathered (pipelined requests) before they are sent anyway.
const OUT_FLUSH: usize = 64 * 1024;
/// The most a receive of a `Content-Length` body asks for at once.
const BODY_RECV: u64 = 256 * 1024;
/// A `Content-Length` body of at least this many bytes, none of it received yet, goes straight
/// from the socket into its file (`TcpStream::recv_file`); a smaller one is received into a
/// buffer and written (every SPLICE round is an io-wq hand-off, which a small body does not pay
/// back).
const RECV_FILE_MIN: u64 = 64 * 1024;
/// The most one `recv_file` receives (each piece has the body timeout).
const RECV_FILE_PIECE: u64 = 4 << 20;
/// The most one `send_file` sends (each piece has the send timeout).
const SEND_FILE_PIECE: u64 = 4 << 20;
/// Reads in flight for a large object.
const READ_AHEAD: usize = 2;
/// How long, and how much, a closing connection reads and drops (so its answer is not reset
/// away by unread bytes).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// A pool of `threads` threads for the store's few blocking calls (see the module docs).
pub fn blocking_pool(threads: usize) -> std::io::Result<Blocking> {
    type Job = Box<dyn FnOnce() + Send>;
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..threads.max(1) {
        let rx = Arc::clone(&rx);
        std::thread::Builder::new()
            .name(format!("objsrv-blocking-{i}"))
            .spawn(move || loop {
                let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                match job {
                    Ok(f) => f(),
                    Err(_) => return,
                }
            })?;
    }
    let tx = Mutex::new(tx);
    Ok(Arc::new(move |f| {
        let _ = tx.lock().unwrap_or_else(|p| p.into_inner()).send(f);
    }))
}

/// What every shard shares: the limits and the count of connections served.
struct Shared {
    limits: Limits,
    live: AtomicUsize,
}

/// Holds one of `Shared::live` for a connection.
struct Live(Arc<Shared>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection as its shard's acceptor sees it: whether it waits for a request (shut on stop).
struct Slot {
    stream: TcpStream,
    idle: Cell<bool>,
}

/// The connections of one shard (only touched on that shard's thread).
#[derive(Default)]
struct Registry {
    slots: RefCell<Vec<Option<Rc<Slot>>>>,
    free: RefCell<Vec<usize>>,
    /// The server stops: answer what is in flight, then close.
    stopping: Cell<bool>,
}

impl Registry {
    fn add(&self, slot: Rc<Slot>) -> usize {
        let mut slots = self.slots.borrow_mut();
        match self.free.borrow_mut().pop() {
            Some(i) => {
                slots[i] = Some(slot);
                i
            }
            None => {
                slots.push(Some(slot));
                slots.len() - 1
            }
        }
    }

    fn remove(&self, i: usize) {
        self.slots.borrow_mut()[i] = None;
        self.free.borrow_mut().push(i);
    }

    /// Connections waiting for a request now.
    fn idle(&self) -> Vec<TcpStream> {
        self.slots
            .borrow()
            .iter()
            .flatten()
            .filter(|s| s.idle.get())
            .map(|s| s.stream.clone())
            .collect()
    }
}

/// Serves until SIGINT or SIGTERM, then lets in-flight requests finish (at most `grace`).
/// Blocks the calling thread (the main thread: not a shard).
pub fn serve(
    listen: SocketAddr,
    st: Arc<Store>,
    limits: Limits,
) -> Result<(), Box<dyn std::error::Error>> {
    use tokio::signal::unix::{signal, SignalKind};
    // Signal handlers first: once the address is printed, SIGTERM means a graceful stop. A
    // runtime of one thread (this one) only to wait for them.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut term, mut int) = {
        let _in = rt.enter();
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        )
    };
    let grace = limits.grace;
    let shared = Arc::new(Shared {
        limits,
        live: AtomicUsize::new(0),
    });
    // Shard 0 binds first (port 0 gets its port there), the others the address it got.
    let mut addr = listen;
    let mut acceptors = Vec::new();
    for shard in 0..st.exec.shard_count() {
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (st2, shared2) = (Arc::clone(&st), Arc::clone(&shared));
        let h = st.exec.spawn_on_with(shard, move |local| {
            acceptor(local, addr, st2, shared2, bound_tx, stop_rx)
        });
        addr = bound_rx
            .recv()
            .map_err(|_| format!("shard {shard}: the acceptor ended before it bound"))??;
        acceptors.push((h, stop_tx));
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}")?;
        out.flush()?;
    }
    rt.block_on(async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    });
    for (h, stop) in acceptors {
        let _ = stop.send(());
        let _ = h.wait();
    }
    // The listeners' closes went to their shards as the acceptors ended (a listener held by a
    // cancelled accept closes when that accept ends): make sure, by probing until refused.
    let mut probe = addr;
    if probe.ip().is_unspecified() {
        probe.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    for _ in 0..100 {
        if std::net::TcpStream::connect_timeout(&probe, Duration::from_millis(100)).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("shutting down: waiting for in-flight requests");
    let deadline = Instant::now().checked_add(grace);
    while shared.live.load(Ordering::Acquire) > 0 {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            eprintln!("grace period over; closing the remaining connections");
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    st.exec.shutdown()?;
    Ok(())
}

/// Binds `addr` on this shard (the bound address goes to `bound`), accepts until `stop`, then
/// closes the listener and shuts the shard's idle connections.
async fn acceptor(
    local: LocalShard,
    addr: SocketAddr,
    st: Arc<Store>,
    shared: Arc<Shared>,
    bound: std::sync::mpsc::Sender<Result<SocketAddr, String>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    use futures::future::{select, Either};
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => {
            let _ = bound.send(Ok(l.local_addr()));
            l
        }
        Err(e) => {
            let _ = bound.send(Err(e.to_string()));
            return;
        }
    };
    let reg = Rc::new(Registry::default());
    let mut stop = stop;
    loop {
        let acc = std::pin::pin!(listener.accept());
        match select(acc, &mut stop).await {
            Either::Left((Ok((stream, _)), _)) => {
                let n = shared.live.fetch_add(1, Ordering::AcqRel);
                let live = Live(Arc::clone(&shared));
                if n >= shared.limits.max_connections {
                    // Not counted while it is answered 503 (nor waited for at a stop).
                    drop(live);
                    local.spawn_local(over_cap(stream)).detach();
                    continue;
                }
                let task = connection(Arc::clone(&st), Rc::clone(&reg), stream, live);
                local.spawn_local(task).detach();
            }
            Either::Left((Err(e), _)) => {
                // EMFILE and the like: back off a little, keep serving.
                tracing::warn!(target: "object_server", "accept: {e}");
                local.sleep(Duration::from_millis(10)).await;
            }
            Either::Right(_) => break,
        }
    }
    drop(listener);
    reg.stopping.set(true);
    for s in reg.idle() {
        let _ = s.shutdown(std::net::Shutdown::Read).await;
    }
}

/// Answers a connection over the cap with a 503 and closes it.
async fn over_cap(stream: TcpStream) {
    let msg = "server busy\n";
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{msg}",
        msg.len()
    );
    let mut stream = stream;
    stream.set_send_timeout(Some(LINGER));
    if let Ok((Ok(_), _)) = stream.send_all(resp.into_bytes()).await {
        linger(&mut stream).await;
    }
}

/// Shuts the sending side (after what was sent), then reads and drops what the client still
/// sends (bounded), so closing does not reset an answer away.
async fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    let Some(deadline) = Instant::now().checked_add(LINGER) else {
        return;
    };
    let mut buf = Vec::with_capacity(RBUF);
    let mut left = LINGER_BYTES;
    while left > 0 {
        let t = deadline.saturating_duration_since(Instant::now());
        if t.is_zero() {
            return;
        }
        stream.set_recv_timeout(Some(t));
        match stream.recv(buf).await {
            Ok((Ok(n), b)) if n > 0 => {
                left = left.saturating_sub(n);
                buf = b;
            }
            _ => return,
        }
    }
}

/// Why a receive brought nothing.
enum RecvError {
    /// The operation's deadline passed.
    Timeout,
    /// End of stream, or an error (the detail).
    Closed(String),
}

fn recv_error(e: Error) -> RecvError {
    match e {
        Error::DeadlineExceeded { .. } => RecvError::Timeout,
        e => RecvError::Closed(e.to_string()),
    }
}

/// A connection's socket and read buffer: `rbuf[pos..]` is received and not parsed yet.
struct Io {
    stream: TcpStream,
    rbuf: Vec<u8>,
    pos: usize,
    /// Receives land here while `rbuf` holds a part of a request (then copied after it).
    spare: Vec<u8>,
}

impl Io {
    fn avail(&self) -> usize {
        self.rbuf.len() - self.pos
    }

    /// One receive into `buf` (its contents replaced) with `timeout`.
    async fn recv_vec(&mut self, buf: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, RecvError> {
        self.stream.set_recv_timeout(Some(timeout));
        match self.stream.recv(buf).await {
            Ok((Ok(_), b)) => Ok(b),
            Ok((Err(e), _)) | Err(e) => Err(recv_error(e)),
        }
    }

    /// Receives more after `rbuf[pos..]`: the count (0: end of stream). With nothing left to
    /// parse the receive lands in `rbuf` itself (no copy).
    async fn fill(&mut self, timeout: Duration) -> Result<usize, RecvError> {
        if self.pos >= self.rbuf.len() {
            let mut b = std::mem::take(&mut self.rbuf);
            b.clear();
            b.reserve(RBUF);
            self.pos = 0;
            let b = self.recv_vec(b, timeout).await?;
            let n = b.len();
            self.rbuf = b;
            Ok(n)
        } else {
            if self.pos > 0 {
                self.rbuf.drain(..self.pos);
                self.pos = 0;
            }
            let mut sp = std::mem::take(&mut self.spare);
            sp.clear();
            sp.reserve(RBUF);
            let b = self.recv_vec(sp, timeout).await?;
            self.rbuf.extend_from_slice(&b);
            let n = b.len();
            self.spare = b;
            Ok(n)
        }
    }

    /// Sends all of `buf` (given back cleared; with `more`, MSG_MORE: more follows at once);
    /// `Err`: the connection is unusable.
    async fn send_all(&mut self, buf: Vec<u8>, more: bool) -> Result<Vec<u8>, String> {
        let sending = if more {
            self.stream.send_all_more(buf)
        } else {
            self.stream.send_all(buf)
        };
        match sending.await {
            Ok((Ok(_), mut b)) => {
                b.clear();
                Ok(b)
            }
            Ok((Err(e), _)) | Err(e) => Err(e.to_string()),
        }
    }
}

/// Where a request body stands.
enum Framing {
    /// `Content-Length`: bytes left.
    Length(u64),
    Chunked(Chunk),
    Done,
}

enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// A request body read from the connection (see the module docs).
struct ConnBody<'a> {
    io: &'a mut Io,
    framing: Framing,
    timeout: Duration,
    /// `Expect: 100-continue` not answered yet.
    expect: bool,
}

impl ConnBody<'_> {
    fn finished(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    async fn more(&mut self, timeout: Duration) -> Result<(), BodyError> {
        match self.io.fill(timeout).await {
            Ok(0) => Err(BodyError::Broken("connection closed mid-body".into())),
            Ok(_) => Ok(()),
            Err(RecvError::Timeout) => Err(BodyError::Timeout),
            Err(RecvError::Closed(d)) => Err(BodyError::Broken(d)),
        }
    }

    /// The next piece of the body, each receive bounded by `timeout`.
    async fn piece(&mut self, timeout: Duration) -> Option<Result<Bytes, BodyError>> {
        if std::mem::take(&mut self.expect) && !self.finished() {
            let cont = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
            if let Err(d) = self.io.send_all(cont, false).await {
                return Some(Err(BodyError::Broken(d)));
            }
        }
        loop {
            let io = &mut *self.io;
            match &mut self.framing {
                Framing::Done => return None,
                Framing::Length(0) => {
                    self.framing = Framing::Done;
                    return None;
                }
                Framing::Length(left) => {
                    if io.avail() == 0 {
                        // Straight from the socket into a buffer of its own, handed on whole.
                        let want = (*left).min(BODY_RECV) as usize;
                        return Some(match io.recv_vec(Vec::with_capacity(want), timeout).await {
                            Ok(v) if !v.is_empty() => {
                                *left -= v.len() as u64;
                                Ok(Bytes::from(v))
                            }
                            Ok(_) => Err(BodyError::Broken("connection closed mid-body".into())),
                            Err(RecvError::Timeout) => Err(BodyError::Timeout),
                            Err(RecvError::Closed(d)) => Err(BodyError::Broken(d)),
                        });
                    }
                    let k = (io.avail() as u64).min(*left) as usize;
                    let b = Bytes::copy_from_slice(&io.rbuf[io.pos..io.pos + k]);
                    io.pos += k;
                    *left -= k as u64;
                    return Some(Ok(b));
                }
                Framing::Chunked(state) => match state {
                    Chunk::Size | Chunk::Trailer => {
                        let Some(i) = find_crlf(&io.rbuf[io.pos..]) else {
                            if io.avail() > 4096 {
                                return Some(Err(BodyError::Broken("chunk line too long".into())));
                            }
                            if let Err(e) = self.more(timeout).await {
                                return Some(Err(e));
                            }
                            continue;
                        };
                        let line = &io.rbuf[io.pos..io.pos + i];
                        if matches!(state, Chunk::Trailer) {
                            io.pos += i + 2;
                            if i == 0 {
                                self.framing = Framing::Done;
                                return None;
                            }
                            continue;
                        }
                        let hex = line.split(|&b| b == b';').next().unwrap_or(b"");
                        let hex = std::str::from_utf8(hex).unwrap_or("").trim();
                        let n = match u64::from_str_radix(hex, 16) {
                            Ok(n) if !hex.is_empty() && hex.len() <= 16 => n,
                            _ => return Some(Err(BodyError::Broken("bad chunk size".into()))),
                        };
                        io.pos += i + 2;
                        *state = if n == 0 {
                            Chunk::Trailer
                        } else {
                            Chunk::Data(n)
                        };
                    }
                    Chunk::Data(left) => {
                        if io.avail() == 0 {
                            if let Err(e) = self.more(timeout).await {
                                return Some(Err(e));
                            }
                            continue;
                        }
                        let k = (io.avail() as u64).min(*left) as usize;
                        let b = Bytes::copy_from_slice(&io.rbuf[io.pos..io.pos + k]);
                        io.pos += k;
                        *left -= k as u64;
                        if *left == 0 {
                            *state = Chunk::DataEnd;
                        }
                        return Some(Ok(b));
                    }
                    Chunk::DataEnd => {
                        if io.avail() < 2 {
                            if let Err(e) = self.more(timeout).await {
                                return Some(Err(e));
                            }
                            continue;
                        }
                        if &io.rbuf[io.pos..io.pos + 2] != b"\r\n" {
                            return Some(Err(BodyError::Broken("bad chunk end".into())));
                        }
                        io.pos += 2;
                        *state = Chunk::Size;
                    }
                },
            }
        }
    }
}

impl BodySource for ConnBody<'_> {
    async fn next(&mut self) -> Option<Result<Bytes, BodyError>> {
        let t = self.timeout;
        self.piece(t).await
    }

    /// A `Content-Length` body of at least [`RECV_FILE_MIN`] bytes of which nothing was received
    /// yet: from the socket into the file by `TcpStream::recv_file` (no copy through user space),
    /// in pieces of at most [`RECV_FILE_PIECE`], each with the body timeout. The timeout is the
    /// longest gap between pieces, not a limit on the whole: a receive cut off by it after bytes
    /// came goes on from there (a deadline leaves the stream right after the bytes written), so
    /// only a client silent for a whole timeout is cut off (within two timeouts of its last
    /// byte).
    async fn rest_to_file(
        &mut self,
        file: &File,
        offset: u64,
        limit: u64,
    ) -> Option<Result<u64, BodyError>> {
        let Framing::Length(left) = self.framing else {
            return None;
        };
        if left < RECV_FILE_MIN || left > limit || self.io.avail() > 0 {
            return None;
        }
        if std::mem::take(&mut self.expect) {
            let cont = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
            if let Err(d) = self.io.send_all(cont, false).await {
                return Some(Err(BodyError::Broken(d)));
            }
        }
        let mut got = 0u64;
        while got < left {
            let piece = (left - got).min(RECV_FILE_PIECE);
            self.io.stream.set_recv_timeout(Some(self.timeout));
            let r = self.io.stream.recv_file(file, offset + got, piece).await;
            match r {
                Ok(n) if n == piece => got += n,
                // The client kept sending, slower than a piece per timeout: go on.
                Err(e @ Error::DeadlineExceeded { .. }) if e.written().is_some_and(|n| n > 0) => {
                    got += e.written().unwrap_or(0);
                }
                Ok(_) => {
                    self.framing = Framing::Length(left - got);
                    return Some(Err(BodyError::Broken("connection closed mid-body".into())));
                }
                Err(e) => {
                    // Unfinished (the connection closes after the answer): its place in its
                    // stream is lost with the bytes the receive had not written yet.
                    self.framing = Framing::Length(left - got);
                    return Some(Err(match e {
                        Error::DeadlineExceeded { .. } => BodyError::Timeout,
                        e => BodyError::Broken(e.to_string()),
                    }));
                }
            }
        }
        self.framing = Framing::Done;
        Some(Ok(got))
    }

    /// At most 1 MiB, for at most 2 s.
    async fn discard(&mut self) {
        let Some(deadline) = Instant::now().checked_add(LINGER) else {
            return;
        };
        let mut left = LINGER_BYTES;
        while left > 0 {
            let t = deadline.saturating_duration_since(Instant::now());
            if t.is_zero() {
                return;
            }
            match self.piece(t).await {
                Some(Ok(b)) => left = left.saturating_sub(b.len()),
                _ => return,
            }
        }
    }
}

/// A parsed request head, its parts copied out of the read buffer.
struct Head {
    method: Method,
    /// HTTP/1.1 (else 1.0).
    v11: bool,
    /// Length of the head in the read buffer.
    len: usize,
}

enum Parsed {
    Head(Head),
    Partial,
    Bad(StatusCode, &'static str),
}

/// Parses a head at the start of `buf` into `target` and `hm` (both reused).
fn parse(buf: &[u8], target: &mut String, hm: &mut HeaderMap) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Bad(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many header fields",
            )
        }
        Err(_) => return Parsed::Bad(StatusCode::BAD_REQUEST, "bad request"),
    };
    let (Some(m), Some(path), Some(v)) = (req.method, req.path, req.version) else {
        return Parsed::Bad(StatusCode::BAD_REQUEST, "bad request");
    };
    let Ok(method) = Method::from_bytes(m.as_bytes()) else {
        return Parsed::Bad(StatusCode::BAD_REQUEST, "bad request");
    };
    // The absolute form (`GET http://host/key`), which servers must accept: its path.
    let path = match path.split_once("://") {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            rest.find('/').map_or("/", |i| &rest[i..])
        }
        _ => path,
    };
    if !path.starts_with('/') {
        return Parsed::Bad(StatusCode::BAD_REQUEST, "bad request");
    }
    target.clear();
    target.push_str(path);
    hm.clear();
    for h in req.headers.iter() {
        let (Ok(k), Ok(val)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Parsed::Bad(StatusCode::BAD_REQUEST, "bad request");
        };
        hm.append(k, val);
    }
    Parsed::Head(Head {
        method,
        v11: v == 1,
        len,
    })
}

/// Whether a comma-separated header has `token` (case-insensitive).
fn has_token(hm: &HeaderMap, name: HeaderName, token: &str) -> bool {
    hm.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// The body's framing from the head (RFC 9112 section 6): `Err` is a 400. `true`: close after
/// the answer (a `Transfer-Encoding` with a `Content-Length`).
fn framing(hm: &HeaderMap) -> Result<(Framing, bool), ()> {
    if hm.contains_key(header::TRANSFER_ENCODING) {
        let last = hm
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty());
        if !last.is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            return Err(());
        }
        let smuggle = hm.contains_key(header::CONTENT_LENGTH);
        return Ok((Framing::Chunked(Chunk::Size), smuggle));
    }
    let mut len = None;
    for v in hm.get_all(header::CONTENT_LENGTH) {
        let s = v.to_str().map_err(|_| ())?.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(());
        }
        let n: u64 = s.parse().map_err(|_| ())?;
        if len.is_some_and(|l| l != n) {
            return Err(());
        }
        len = Some(n);
    }
    Ok((Framing::Length(len.unwrap_or(0)), false))
}

thread_local! {
    /// This thread's `Date` header line and the second it names (formatted once a second).
    static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

/// A connection: its socket, buffers reused across requests, and its shard's registry.
struct Conn {
    io: Io,
    /// Answers not sent yet (pipelined requests' answers gather here, in order).
    out: Vec<u8>,
    /// A small object's bytes are read here.
    fbuf: Vec<u8>,
    /// A large object's chunk buffers.
    chunks: Vec<Vec<u8>>,
    target: String,
    hm: HeaderMap,
    /// The request being answered is HTTP/1.0 (keep-alive is then said in the answer).
    http10: bool,
}

/// Serves one connection on this shard until it closes.
async fn connection(st: Arc<Store>, reg: Rc<Registry>, stream: TcpStream, live: Live) {
    let _ = stream.set_nodelay(true);
    let slot = Rc::new(Slot {
        stream: stream.clone(),
        idle: Cell::new(true),
    });
    let i = reg.add(Rc::clone(&slot));
    let mut stream = stream;
    stream.set_send_timeout(Some(live.0.limits.idle));
    let mut c = Conn {
        io: Io {
            stream,
            rbuf: Vec::with_capacity(RBUF),
            pos: 0,
            spare: Vec::new(),
        },
        out: Vec::with_capacity(RBUF),
        fbuf: Vec::new(),
        chunks: Vec::new(),
        target: String::new(),
        hm: HeaderMap::new(),
        http10: false,
    };
    let linger_after = c.run(&st, &reg, &slot, &live.0.limits).await;
    reg.remove(i);
    if linger_after {
        linger(&mut c.io.stream).await;
    }
}

impl Conn {
    /// Serves requests until the connection ends; `true`: it ends with an answer sent that
    /// asked to close (linger before closing).
    async fn run(&mut self, st: &Store, reg: &Registry, slot: &Slot, limits: &Limits) -> bool {
        // When the head being received began (the header clock).
        let mut head_start: Option<Instant> = None;
        loop {
            let head = match parse(&self.io.rbuf[self.io.pos..], &mut self.target, &mut self.hm) {
                Parsed::Head(h) => h,
                Parsed::Partial => {
                    if self.io.avail() >= MAX_HEAD {
                        let r = Reply::error(
                            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                            "request head too large",
                        );
                        return self.last_answer(st, r).await;
                    }
                    // Nothing complete left: what was gathered goes out before waiting.
                    if !self.out.is_empty() && self.flush().await.is_err() {
                        return false;
                    }
                    let idle = self.io.avail() == 0;
                    let timeout = if idle {
                        head_start = None;
                        if reg.stopping.get() {
                            return false;
                        }
                        slot.idle.set(true);
                        limits.idle
                    } else {
                        let t0 = *head_start.get_or_insert_with(Instant::now);
                        limits.header.saturating_sub(t0.elapsed())
                    };
                    let r = self.io.fill(timeout).await;
                    slot.idle.set(false);
                    match r {
                        Ok(n) if n > 0 => {
                            if idle {
                                head_start = Some(Instant::now());
                            }
                            continue;
                        }
                        _ => return false,
                    }
                }
                Parsed::Bad(status, msg) => {
                    return self.last_answer(st, Reply::error(status, msg)).await;
                }
            };
            head_start = None;
            let start = Instant::now();
            self.io.pos += head.len;
            let (framing, te_and_cl) = match framing(&self.hm) {
                Ok(f) => f,
                Err(()) => {
                    let r = Reply::error(StatusCode::BAD_REQUEST, "bad request");
                    return self.last_answer(st, r).await;
                }
            };
            let keep_alive = if head.v11 {
                !has_token(&self.hm, header::CONNECTION, "close")
            } else {
                has_token(&self.hm, header::CONNECTION, "keep-alive")
            };
            self.http10 = !head.v11;
            let has_body = !matches!(framing, Framing::Length(0));
            if has_body && !self.out.is_empty() && self.flush().await.is_err() {
                return false;
            }
            let expect = head.v11 && has_token(&self.hm, header::EXPECT, "100-continue");
            let (query_at, target) = (self.target.find('?'), self.target.as_str());
            let (path, query) = match query_at {
                Some(q) => (&target[..q], Some(&target[q + 1..])),
                None => (target, None),
            };
            let mut body = ConnBody {
                io: &mut self.io,
                framing,
                timeout: limits.body,
                expect,
            };
            let req = service::Request {
                method: &head.method,
                path,
                query,
                headers: &self.hm,
            };
            let Answer {
                reply,
                key,
                stored,
                close,
            } = service::handle(st, &req, &mut body).await;
            let body_done = body.finished();
            let close = close || !keep_alive || !body_done || te_and_cl || reg.stopping.get();
            let status = reply.status;
            let sent = self.answer(st, reply, close).await;
            http::access_event(
                &head.method,
                &key,
                status,
                sent.as_ref().map_or(0, |n| *n) + stored,
                start.elapsed(),
            );
            if sent.is_err() {
                return false;
            }
            if close {
                return self.flush().await.is_ok();
            }
        }
    }

    /// Writes an answer after which the connection closes (a bad request).
    async fn last_answer(&mut self, st: &Store, r: Reply<()>) -> bool {
        let r = Reply::<Arc<Entry>> {
            status: r.status,
            headers: r.headers,
            body: match r.body {
                BodyPlan::Bytes(b) => BodyPlan::Bytes(b),
                _ => BodyPlan::Empty,
            },
        };
        self.answer(st, r, true).await.is_ok() && self.flush().await.is_ok()
    }

    async fn flush(&mut self) -> Result<(), String> {
        let out = std::mem::take(&mut self.out);
        self.out = self.io.send_all(out, false).await?;
        Ok(())
    }

    /// `flush` before a body that follows at once: with MSG_MORE, so the head's segment carries
    /// the body's first bytes (the client takes one segment less per response; nginx corks).
    async fn flush_before_body(&mut self) -> Result<(), String> {
        let out = std::mem::take(&mut self.out);
        self.out = self.io.send_all(out, true).await?;
        Ok(())
    }

    /// Appends the status line and headers to `out`, with `Content-Length: body_len` unless the
    /// reply has its own (HEAD) or the status has no body.
    fn head(&mut self, status: StatusCode, headers: &HeaderMap, body_len: u64, close: bool) {
        let out = &mut self.out;
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for (k, v) in headers {
            out.extend_from_slice(k.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let bodiless = status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        if !bodiless && !headers.contains_key(header::CONTENT_LENGTH) {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa(body_len, &mut [0u8; 20]));
            out.extend_from_slice(b"\r\n");
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        } else if self.http10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
        DATE.with(|d| {
            let mut d = d.borrow_mut();
            let now = std::time::SystemTime::now();
            let secs = now
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |t| t.as_secs());
            if d.0 != secs || d.1.is_empty() {
                *d = (secs, format!("date: {}\r\n", httpdate::fmt_http_date(now)));
            }
            out.extend_from_slice(d.1.as_bytes());
        });
        out.extend_from_slice(b"\r\n");
    }

    /// Writes `reply` (into `out`, sent now if it is large or the connection closes; a large
    /// object streamed): the body bytes sent, or `Err` if the connection is unusable.
    async fn answer(
        &mut self,
        st: &Store,
        reply: Reply<Arc<Entry>>,
        close: bool,
    ) -> Result<u64, String> {
        let Reply {
            status,
            headers,
            body,
        } = reply;
        let sent = match body {
            BodyPlan::Empty => {
                self.head(status, &headers, 0, close);
                0
            }
            BodyPlan::Bytes(b) => {
                self.head(status, &headers, b.len() as u64, close);
                self.out.extend_from_slice(&b);
                b.len() as u64
            }
            BodyPlan::File { file, start, end } if end - start <= SMALL_BODY => {
                let buf = std::mem::take(&mut self.fbuf);
                let (c, skip, want) = st.read_range_into(&file.file, start, end - start, buf);
                match c.await {
                    Ok(d) if d.len() >= skip + want => {
                        self.head(status, &headers, want as u64, close);
                        self.out.extend_from_slice(&d[skip..skip + want]);
                        self.fbuf = d;
                        want as u64
                    }
                    r => {
                        let d = match r {
                            Ok(_) => "object shorter than its metadata".to_string(),
                            Err(e) => e.to_string(),
                        };
                        let r = Reply::<()>::internal("read", &d);
                        let BodyPlan::Bytes(b) = r.body else {
                            return Err(d);
                        };
                        self.head(r.status, &r.headers, b.len() as u64, close);
                        self.out.extend_from_slice(&b);
                        0
                    }
                }
            }
            BodyPlan::File { file, start, end } => {
                self.head(status, &headers, end - start, close);
                send_object(self, st, &file, start, end).await?
            }
        };
        if close || self.out.len() >= OUT_FLUSH {
            self.flush().await?;
        }
        Ok(sent)
    }
}

/// `n` in decimal, in `buf`.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Sends bytes `start..end` of `entry` after the head already in `c.out`: the bytes sent.
///
/// **The file-to-socket path.** A file without O_DIRECT goes through `TcpStream::send_file`
/// (SPLICE through a pipe of the file's shard: the bytes do not pass through user space), with
/// the stream's send timeout, after the head. O_DIRECT handles, whose reads need
/// aligned ranges, are read a chunk at a time (`--chunk`, one read ahead) and sent.
async fn send_object(
    c: &mut Conn,
    st: &Store,
    entry: &Entry,
    start: u64,
    end: u64,
) -> Result<u64, String> {
    if !entry.file.is_direct() {
        c.flush_before_body().await?;
        // In pieces, each with the send timeout: a slow reader of a large object is cut off
        // only when a piece makes no headway for that long, not when the whole takes longer.
        let mut at = start;
        while at < end {
            let len = (end - at).min(SEND_FILE_PIECE);
            let n =
                c.io.stream
                    .send_file(&entry.file, at, len)
                    .await
                    .map_err(|e| format!("send_file: {e}"))?;
            if n < len {
                return Err("send_file: object shorter than its metadata".into());
            }
            at += n;
        }
        return Ok(end - start);
    }
    let chunk = st.cfg.chunk as u64;
    let mut next = start;
    let mut reads = VecDeque::with_capacity(READ_AHEAD);
    let mut fill = |c: &mut Conn, reads: &mut VecDeque<_>| {
        while reads.len() < READ_AHEAD && next < end {
            let want = chunk.min(end - next);
            let buf = c.chunks.pop().unwrap_or_default();
            reads.push_back(st.read_range_into(&entry.file, next, want, buf));
            next += want;
        }
    };
    fill(c, &mut reads);
    c.flush_before_body().await?;
    let mut sent = 0u64;
    while let Some((rd, skip, want)) = reads.pop_front() {
        let mut d = rd.await.map_err(|e| format!("read: {e}"))?;
        fill(c, &mut reads);
        if d.len() < skip + want {
            return Err("read: object shorter than its metadata".into());
        }
        if skip > 0 || d.len() != want {
            d.truncate(skip + want);
            d.drain(..skip);
        }
        let d = c.io.send_all(d, false).await?;
        sent += want as u64;
        if c.chunks.len() < READ_AHEAD {
            c.chunks.push(d);
        }
    }
    Ok(sent)
}
