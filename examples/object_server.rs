//! An HTTP/1.1 object store on ringshard: `GET`/`HEAD`/`PUT`/`DELETE /<key>` on files in `--root`,
//! and `GET /metrics` (the executor's stats in the Prometheus text format).
//!
//! ```text
//! cargo run --release --example object_server -- --root DIR --listen 127.0.0.1:8080
//! ```
//!
//! The first line on stdout is `listening on ADDR` (so `--listen 127.0.0.1:0` works for tests).
//!
//! - Keys are one path segment: 1 to 200 bytes of UTF-8 after percent-decoding, no `/`, `\`, NUL or
//!   other control characters, not starting with `.` (the server's temporary files start with
//!   `.tmp-`). Anything else (`..`, absolute paths, `%2e%2e`, `%2f`, `%00`, an empty key) is a 400
//!   and touches nothing. Keys with `/` are rejected, not mapped to subdirectories.
//! - `GET` serves the whole object (200) or one range (`Range: bytes=a-b`, `bytes=a-`,
//!   `bytes=-n`: 206 with `Content-Range`; an unsatisfiable range is a 416 with
//!   `Content-Range: bytes */LEN`; several ranges or a malformed header serve the whole object).
//!   `ETag` is `"<inode>-<size>-<mtime ns>"` (hex), `Last-Modified` an HTTP date; a matching
//!   `If-None-Match` is a 304, and a non-matching `If-Range` serves the whole object. Objects larger
//!   than one chunk (`--chunk`, 512 KiB) are streamed chunk by chunk with one read ahead, so a
//!   response holds at most two chunks in memory.
//! - `PUT` streams the body into `.tmp-<key>-<nonce>` in `--root` with ringshard writes (one write
//!   of up to a chunk in flight while the next chunk arrives), then fsyncs it, renames it over the
//!   key and fsyncs the directory: a 201 means the object is durable, and readers see the old
//!   object or the new one, never part of one. A body over `--max-object` (by `Content-Length` up
//!   front, or counted while a chunked body streams) is a 413; a failed or abandoned upload removes
//!   its temporary file. Temporary files left by a crash are removed at startup.
//! - `DELETE` is a 204 (the directory is fsynced) or a 404.
//! - Open handles and metadata are cached by key (`--cache` entries, least recently used out); the
//!   server owns `--root`, and its own `PUT`/`DELETE` invalidate the entry. Changes made to the
//!   directory behind the server's back are not seen while an entry is cached.
//! - `--direct`: objects of at least `--direct-min` bytes (default 4 KiB) are read through an
//!   O_DIRECT handle (reads aligned to 4 KiB, the page cache bypassed). Writes stay buffered (the
//!   fsync before the rename makes them durable).
//! - SIGINT/SIGTERM: stop accepting, let in-flight requests finish (at most `--grace` seconds),
//!   then shut the executor down and exit 0.

use bytes::Bytes;
use clap::Parser;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use ringshard::{Completion, Error, Executor, File, OpenOptions};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Parser, Debug)]
#[command(about = "An HTTP object store on ringshard")]
struct Args {
    /// Directory holding the objects (one file per key).
    #[arg(long)]
    root: PathBuf,
    /// Address to listen on (port 0 picks one; the bound address is printed first).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// ringshard shards (default 1).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Read objects of at least --direct-min bytes with O_DIRECT.
    #[arg(long)]
    direct: bool,
    /// Smallest object read with O_DIRECT under --direct.
    #[arg(long, default_value_t = 4096)]
    direct_min: u64,
    /// Largest object a PUT may store, in bytes (default 64 MiB).
    #[arg(long, default_value_t = 64 << 20)]
    max_object: u64,
    /// tokio worker threads (default: one per CPU).
    #[arg(long)]
    workers: Option<usize>,
    /// Open handles (with metadata) cached by key.
    #[arg(long, default_value_t = 8192)]
    cache: usize,
    /// Bytes per read or write request, and the largest body served in one piece.
    #[arg(long, default_value_t = 512 * 1024)]
    chunk: usize,
    /// How long an idle shard spins before it sleeps, in µs (default: the library's).
    #[arg(long)]
    spin_us: Option<u64>,
    /// Seconds in-flight requests get to finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 30)]
    grace: u64,
}

/// The file operations the server uses beyond read/write/fsync, in one place: ringshard's
/// `metadata`, `stat`, `rename`, `unlink`, `mkdir` and a directory handle's `fsync`, with their
/// errors as `std::io::Error` (the errno kept) for the handlers' status mapping.
mod fsops {
    use ringshard::{Error, Executor, File, OpenOptions, RenameFlags};
    use std::path::Path;

    pub use ringshard::Metadata;

    fn io(e: Error) -> std::io::Error {
        match e.errno() {
            Some(errno) => std::io::Error::from_raw_os_error(errno),
            None => std::io::Error::other(e.to_string()),
        }
    }

    /// The metadata of an open file (statx on its descriptor: exactly the file opened).
    pub async fn metadata(exec: &Executor, file: &File) -> std::io::Result<Metadata> {
        exec.metadata(file).await.map_err(io)
    }

    /// The metadata of the file at `path` (following symlinks).
    pub async fn stat(exec: &Executor, path: &Path) -> std::io::Result<Metadata> {
        exec.stat(path).await.map_err(io)
    }

    /// Renames `from` to `to`, replacing `to`.
    pub async fn rename(exec: &Executor, from: &Path, to: &Path) -> std::io::Result<()> {
        exec.rename(from, to, RenameFlags::empty())
            .await
            .map_err(io)
    }

    /// Removes a file.
    pub async fn unlink(exec: &Executor, path: &Path) -> std::io::Result<()> {
        exec.unlink(path).await.map_err(io)
    }

    /// Creates a directory (unused while keys are single segments; kept for nested keys).
    #[allow(dead_code)]
    pub async fn mkdir(exec: &Executor, path: &Path, mode: u32) -> std::io::Result<()> {
        exec.mkdir(path, mode).await.map_err(io)
    }

    /// fsyncs a directory (makes the renames and unlinks in it durable): a directory handle,
    /// opened through a shard's ring, and an fsync on its shard, ordered after the
    /// path operations sent to that directory before it.
    pub async fn fsync_dir(exec: &Executor, dir: &Path) -> std::io::Result<()> {
        let d = exec
            .open_async(dir, OpenOptions::new().read(true).directory(true))
            .await
            .map_err(io)?;
        exec.fsync(&d).await.map_err(io)
    }
}

/// A cached open object.
struct Entry {
    file: File,
    len: u64,
    etag: HeaderValue,
    last_modified: HeaderValue,
}

struct CacheShard {
    map: HashMap<Box<str>, (Arc<Entry>, u64)>,
    /// Bumped by every invalidation: a lookup that started before one does not insert.
    gen: u64,
}

/// Open handles by key, least recently used out (evicted in batches of an eighth).
struct Cache {
    shards: Vec<Mutex<CacheShard>>,
    per_shard: usize,
    tick: AtomicU64,
    hasher: std::collections::hash_map::RandomState,
}

const CACHE_SHARDS: usize = 16;

impl Cache {
    fn new(cap: usize) -> Self {
        Cache {
            shards: (0..CACHE_SHARDS)
                .map(|_| {
                    Mutex::new(CacheShard {
                        map: HashMap::new(),
                        gen: 0,
                    })
                })
                .collect(),
            per_shard: cap.div_ceil(CACHE_SHARDS),
            tick: AtomicU64::new(0),
            hasher: Default::default(),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<CacheShard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % CACHE_SHARDS]
    }

    fn lock(m: &Mutex<CacheShard>) -> std::sync::MutexGuard<'_, CacheShard> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry, or the generation to pass to `insert`.
    fn get(&self, key: &str) -> Result<Arc<Entry>, u64> {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut s = Self::lock(self.shard(key));
        match s.map.get_mut(key) {
            Some((e, used)) => {
                *used = tick;
                Ok(Arc::clone(e))
            }
            None => Err(s.gen),
        }
    }

    fn insert(&self, key: &str, gen: u64, entry: Arc<Entry>) {
        if self.per_shard == 0 {
            return;
        }
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut evicted = Vec::new();
        {
            let mut s = Self::lock(self.shard(key));
            if s.gen != gen {
                return;
            }
            if s.map.len() >= self.per_shard && !s.map.contains_key(key) {
                let mut ticks: Vec<u64> = s.map.values().map(|(_, t)| *t).collect();
                let n = (self.per_shard / 8).max(1).min(ticks.len());
                let (_, cut, _) = ticks.select_nth_unstable(n - 1);
                let cut = *cut;
                s.map.retain(|_, (e, t)| {
                    if *t <= cut {
                        evicted.push(Arc::clone(e));
                        false
                    } else {
                        true
                    }
                });
            }
            s.map.insert(key.into(), (entry, tick));
        }
        // Closing evicted handles (a send each) happens outside the lock.
        drop(evicted);
    }

    fn invalidate(&self, key: &str) {
        let old = {
            let mut s = Self::lock(self.shard(key));
            s.gen += 1;
            s.map.remove(key)
        };
        drop(old);
    }
}

/// Read buffers of a chunk each, reused: a fresh large `Vec` is a fresh mapping whose pages
/// fault in (and are zeroed) on every read.
struct BufPool {
    free: Mutex<Vec<Vec<u8>>>,
    keep: usize,
}

/// A pooled buffer lent to a response body (`Bytes::from_owner`): back to the pool on drop.
struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BufPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let mut free = self.pool.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.pool.keep {
            free.push(buf);
        }
    }
}

impl BufPool {
    fn take(&self) -> Vec<u8> {
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default()
    }
}

struct State {
    exec: Executor,
    bufs: Arc<BufPool>,
    root: PathBuf,
    direct: bool,
    direct_min: u64,
    max_object: u64,
    chunk: usize,
    cache: Cache,
    nonce: AtomicU64,
}

#[derive(Debug)]
enum ServeError {
    NotFound,
    Io(String),
}

fn errno_of(e: &Error) -> Option<i32> {
    e.errno()
}

fn not_found_errno(errno: Option<i32>) -> bool {
    matches!(errno, Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

impl State {
    /// The open object for `key`, from the cache or opened now.
    async fn lookup(&self, key: &str) -> Result<Arc<Entry>, ServeError> {
        let gen = match self.cache.get(key) {
            Ok(e) => return Ok(e),
            Err(gen) => gen,
        };
        let path = self.root.join(key);
        // stat first: a missing key is a 404 without an open (and a directory is refused before
        // it is opened).
        let md = fsops::stat(&self.exec, &path).await.map_err(|e| {
            if not_found_errno(e.raw_os_error()) {
                ServeError::NotFound
            } else {
                ServeError::Io(e.to_string())
            }
        })?;
        if !md.is_file() {
            return Err(ServeError::NotFound);
        }
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).direct(direct);
            self.exec.open_async(&path, &o)
        };
        let first = match open(self.direct).await {
            // A filesystem without O_DIRECT (tmpfs on older kernels): read through the page cache.
            Err(e) if self.direct && errno_of(&e) == Some(libc::EINVAL) => open(false).await,
            r => r,
        };
        let mut file = first.map_err(|e| {
            if not_found_errno(errno_of(&e)) {
                ServeError::NotFound
            } else {
                ServeError::Io(e.to_string())
            }
        })?;
        // Describe the file actually opened (statx on the handle): a PUT or DELETE between the
        // stat and the open cannot give this file another file's ETag.
        let md = fsops::metadata(&self.exec, &file)
            .await
            .map_err(|e| ServeError::Io(e.to_string()))?;
        if self.direct && md.len() < self.direct_min {
            file = open(false)
                .await
                .map_err(|e| ServeError::Io(e.to_string()))?;
        }
        let mtime = md.modified();
        let ns = mtime
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let etag = format!("\"{:x}-{:x}-{:x}\"", md.ino(), md.len(), ns);
        let entry = Arc::new(Entry {
            file,
            len: md.len(),
            etag: HeaderValue::from_str(&etag).expect("hex is a valid header"),
            last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(mtime))
                .expect("an HTTP date is a valid header"),
        });
        self.cache.insert(key, gen, Arc::clone(&entry));
        Ok(entry)
    }
}

/// A response body: nothing, one buffer, or an object streamed in chunks.
enum ObjBody {
    Empty,
    Full(Option<Bytes>),
    Stream(Box<FileStream>),
}

struct FileStream {
    state: Arc<State>,
    entry: Arc<Entry>,
    /// Next byte to request, and the end of the range.
    next: u64,
    end: u64,
    /// Reads in flight: (completion, bytes to skip at its start, bytes it must yield).
    inflight: VecDeque<(Completion<Vec<u8>>, usize, usize)>,
}

const DIRECT_ALIGN: u64 = 4096;
const READ_AHEAD: usize = 2;
/// Reads at least this long use (and return) pooled buffers.
const POOLED_MIN: u64 = 64 * 1024;

impl FileStream {
    fn fill(&mut self) {
        while self.inflight.len() < READ_AHEAD && self.next < self.end {
            let chunk = self.state.chunk as u64;
            let want = chunk.min(self.end - self.next);
            let c = read_range(&self.state, &self.entry.file, self.next, want);
            self.inflight.push_back(c);
            self.next += want;
        }
    }
}

/// Starts a read of `len` bytes at `off` (aligned for O_DIRECT handles).
fn read_range(st: &State, file: &File, off: u64, len: u64) -> (Completion<Vec<u8>>, usize, usize) {
    // Small reads take a fresh allocation (cheap from malloc's free lists); large ones a pooled
    // buffer.
    let buf = || {
        if len >= POOLED_MIN {
            st.bufs.take()
        } else {
            Vec::new()
        }
    };
    if file.is_direct() {
        let start = off - off % DIRECT_ALIGN;
        let end = (off + len).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        let c = st
            .exec
            .read_into(file, start, (end - start) as usize, buf());
        (c, (off - start) as usize, len as usize)
    } else {
        (
            st.exec.read_into(file, off, len as usize, buf()),
            0,
            len as usize,
        )
    }
}

/// The bytes a finished read must yield, or an error if the object came up short.
fn take_read(st: &State, data: Vec<u8>, skip: usize, want: usize) -> std::io::Result<Bytes> {
    if data.len() < skip + want {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "object shorter than its metadata",
        ));
    }
    let b = if data.capacity() as u64 >= POOLED_MIN {
        Bytes::from_owner(Pooled {
            buf: data,
            pool: Arc::clone(&st.bufs),
        })
    } else {
        Bytes::from(data)
    };
    Ok(if skip == 0 && b.len() == want {
        b
    } else {
        b.slice(skip..skip + want)
    })
}

impl Body for ObjBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            ObjBody::Empty => Poll::Ready(None),
            ObjBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ObjBody::Stream(s) => {
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
                            .map_err(|e| std::io::Error::other(e.to_string()))
                            .and_then(|d| take_read(&s.state, d, skip, want));
                        Poll::Ready(Some(r.map(Frame::data)))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ObjBody::Empty => true,
            ObjBody::Full(b) => b.is_none(),
            ObjBody::Stream(s) => s.inflight.is_empty() && s.next >= s.end,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ObjBody::Empty => SizeHint::with_exact(0),
            ObjBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ObjBody::Stream(s) => {
                let queued: u64 = s.inflight.iter().map(|(_, _, w)| *w as u64).sum();
                SizeHint::with_exact(queued + (s.end - s.next))
            }
        }
    }
}

use std::future::Future;

fn simple(status: StatusCode, msg: &str) -> Response<ObjBody> {
    let mut r = Response::new(if msg.is_empty() {
        ObjBody::Empty
    } else {
        ObjBody::Full(Some(Bytes::from(format!("{msg}\n"))))
    });
    *r.status_mut() = status;
    if !msg.is_empty() {
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    r
}

/// Percent-decodes a path; `None` on a malformed escape.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let hi = hex(*b.get(i + 1)?)?;
            let lo = hex(*b.get(i + 2)?)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The key a request path names, or `None` if it is not a valid key (see the module docs).
fn parse_key(path: &str) -> Option<String> {
    let raw = path.strip_prefix('/')?;
    let key = String::from_utf8(percent_decode(raw)?).ok()?;
    let ok = !key.is_empty()
        && key.len() <= 200
        && !key.starts_with('.')
        && !key.chars().any(|c| c == '/' || c == '\\' || c.is_control());
    ok.then_some(key)
}

enum RangeAnswer {
    Whole,
    Part(u64, u64),
    Unsatisfiable,
}

/// A single `bytes=` range against an object of `len` bytes (half-open result).
fn parse_range(h: &str, len: u64) -> RangeAnswer {
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Whole;
    };
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Whole;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    if a.is_empty() {
        let Some(n) = num(b) else {
            return RangeAnswer::Whole;
        };
        if n == 0 || len == 0 {
            return RangeAnswer::Unsatisfiable;
        }
        return RangeAnswer::Part(len - n.min(len), len);
    }
    let Some(start) = num(a) else {
        return RangeAnswer::Whole;
    };
    let last = if b.is_empty() {
        None
    } else {
        match num(b) {
            Some(v) if v >= start => Some(v),
            _ => return RangeAnswer::Whole,
        }
    };
    if start >= len {
        return RangeAnswer::Unsatisfiable;
    }
    let end = last.map_or(len, |l| l.saturating_add(1).min(len));
    RangeAnswer::Part(start, end)
}

fn etag_matches(list: &HeaderValue, etag: &HeaderValue) -> bool {
    let Ok(list) = list.to_str() else {
        return false;
    };
    let tag = etag.to_str().unwrap_or("");
    list.split(',').any(|t| {
        let t = t.trim();
        t == "*" || t.strip_prefix("W/").unwrap_or(t) == tag
    })
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Result<Response<ObjBody>, Infallible> {
    let path = req.uri().path();
    if path == "/metrics" {
        return Ok(match *req.method() {
            Method::GET | Method::HEAD => metrics(&st, req.method() == Method::HEAD).await,
            _ => method_not_allowed("GET, HEAD"),
        });
    }
    let Some(key) = parse_key(path) else {
        return Ok(simple(StatusCode::BAD_REQUEST, "invalid key"));
    };
    Ok(match *req.method() {
        Method::GET => get(&st, &key, req.headers(), false).await,
        Method::HEAD => get(&st, &key, req.headers(), true).await,
        Method::PUT => put(&st, &key, req).await,
        Method::DELETE => delete(&st, &key).await,
        _ => method_not_allowed("GET, HEAD, PUT, DELETE"),
    })
}

fn method_not_allowed(allow: &'static str) -> Response<ObjBody> {
    let mut r = simple(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

async fn metrics(st: &State, head: bool) -> Response<ObjBody> {
    let text = st.exec.stats_async().await.to_prometheus();
    let len = text.len();
    let mut r = Response::new(if head {
        ObjBody::Empty
    } else {
        ObjBody::Full(Some(Bytes::from(text)))
    });
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(ringshard::stats::PROMETHEUS_CONTENT_TYPE),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

async fn get(st: &Arc<State>, key: &str, h: &HeaderMap, head: bool) -> Response<ObjBody> {
    let entry = match st.lookup(key).await {
        Ok(e) => e,
        Err(ServeError::NotFound) => return simple(StatusCode::NOT_FOUND, "no such key"),
        Err(ServeError::Io(e)) => return simple(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    let validators = |r: &mut Response<ObjBody>| {
        let hd = r.headers_mut();
        hd.insert(header::ETAG, entry.etag.clone());
        hd.insert(header::LAST_MODIFIED, entry.last_modified.clone());
    };
    if let Some(inm) = h.get(header::IF_NONE_MATCH) {
        if etag_matches(inm, &entry.etag) {
            let mut r = simple(StatusCode::NOT_MODIFIED, "");
            validators(&mut r);
            return r;
        }
    }
    let len = entry.len;
    let range_ok = match h.get(header::IF_RANGE) {
        Some(v) => v == entry.etag || v == entry.last_modified,
        None => true,
    };
    let range = match h.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if range_ok => parse_range(r, len),
        _ => RangeAnswer::Whole,
    };
    let (status, start, end) = match range {
        RangeAnswer::Whole => (StatusCode::OK, 0, len),
        RangeAnswer::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b),
        RangeAnswer::Unsatisfiable => {
            let mut r = simple(StatusCode::RANGE_NOT_SATISFIABLE, "");
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).expect("valid"),
            );
            validators(&mut r);
            return r;
        }
    };
    let n = end - start;
    let body = if head || n == 0 {
        ObjBody::Empty
    } else if n <= st.chunk as u64 {
        let (c, skip, want) = read_range(st, &entry.file, start, n);
        match c.await {
            Ok(d) => match take_read(st, d, skip, want) {
                Ok(b) => ObjBody::Full(Some(b)),
                Err(e) => return simple(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            },
            Err(e) => return simple(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    } else {
        let mut s = FileStream {
            state: Arc::clone(st),
            entry: Arc::clone(&entry),
            next: start,
            end,
            inflight: VecDeque::with_capacity(READ_AHEAD),
        };
        s.fill();
        ObjBody::Stream(Box::new(s))
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    validators(&mut r);
    let hd = r.headers_mut();
    hd.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    hd.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    hd.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        hd.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {}-{}/{}", start, end - 1, len)).expect("valid"),
        );
    }
    r
}

/// Removes a temporary file unless disarmed (also when the request is dropped mid-upload).
struct TmpGuard {
    path: Option<PathBuf>,
}

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            // A handler dropped mid-upload cannot await: remove on the blocking pool (or here,
            // outside a runtime).
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn_blocking(move || std::fs::remove_file(p));
                }
                Err(_) => {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }
}

enum PutError {
    TooLarge,
    Body(String),
    Io(String),
}

async fn put(st: &Arc<State>, key: &str, req: Request<Incoming>) -> Response<ObjBody> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > st.max_object) {
        // A client waiting for 100-continue sends nothing (polling the body would invite it);
        // one already sending gets up to 1 MiB read and dropped, so the answer is not reset.
        if !req.headers().contains_key(header::EXPECT) {
            drain(&mut req.into_body()).await;
        }
        return simple(StatusCode::PAYLOAD_TOO_LARGE, "object too large");
    }
    let nonce = st.nonce.fetch_add(1, Ordering::Relaxed);
    let tmp = st.root.join(format!(".tmp-{key}-{nonce:016x}"));
    let dest = st.root.join(key);
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true).mode(0o644);
    let file = match st.exec.open_async(&tmp, &opts).await {
        Ok(f) => f,
        Err(e) => return simple(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let mut guard = TmpGuard {
        path: Some(tmp.clone()),
    };
    let result = async {
        let len = write_body(st, &file, req.into_body()).await?;
        st.exec
            .fsync(&file)
            .await
            .map_err(|e| PutError::Io(e.to_string()))?;
        let md = fsops::metadata(&st.exec, &file)
            .await
            .map_err(|e| PutError::Io(e.to_string()))?;
        st.exec
            .close(&file)
            .await
            .map_err(|e| PutError::Io(e.to_string()))?;
        fsops::rename(&st.exec, &tmp, &dest)
            .await
            .map_err(|e| PutError::Io(e.to_string()))?;
        Ok::<_, PutError>((len, md))
    }
    .await;
    match result {
        Ok((len, md)) => {
            guard.path = None;
            st.cache.invalidate(key);
            if let Err(e) = fsops::fsync_dir(&st.exec, &st.root).await {
                return simple(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
            }
            let ns = md
                .modified()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let mut r = simple(StatusCode::CREATED, "");
            let etag = format!("\"{:x}-{:x}-{:x}\"", md.ino(), len, ns);
            r.headers_mut()
                .insert(header::ETAG, HeaderValue::from_str(&etag).expect("valid"));
            r
        }
        Err(e) => {
            let _ = st.exec.close(&file).await;
            // Removed before answering, so a client that sees the error sees no temporary file.
            if fsops::unlink(&st.exec, &tmp).await.is_ok() {
                guard.path = None;
            }
            drop(guard);
            match e {
                PutError::TooLarge => simple(StatusCode::PAYLOAD_TOO_LARGE, "object too large"),
                PutError::Body(m) => simple(StatusCode::BAD_REQUEST, &m),
                PutError::Io(m) => simple(StatusCode::INTERNAL_SERVER_ERROR, &m),
            }
        }
    }
}

/// Streams the body into `file` a chunk at a time, one write in flight; returns its length.
async fn write_body(st: &State, file: &File, mut body: Incoming) -> Result<u64, PutError> {
    let chunk = st.chunk;
    let mut buf: Vec<u8> = Vec::new();
    let mut off = 0u64;
    let mut total = 0u64;
    let mut pending: Option<Completion<usize>> = None;
    let io = |e: Error| PutError::Io(e.to_string());
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| PutError::Body(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > st.max_object {
            if let Some(p) = pending.take() {
                let _ = p.await;
            }
            drain(&mut body).await;
            return Err(PutError::TooLarge);
        }
        if buf.is_empty() && data.len() >= chunk {
            // A whole chunk already: hand it over without a copy when it is not shared.
            if let Some(p) = pending.take() {
                p.await.map_err(io)?;
            }
            let n = data.len() as u64;
            pending = Some(st.exec.write(file, off, Vec::from(data)));
            off += n;
            continue;
        }
        if buf.capacity() == 0 {
            buf.reserve(chunk);
        }
        buf.extend_from_slice(&data);
        if buf.len() >= chunk {
            if let Some(p) = pending.take() {
                p.await.map_err(io)?;
            }
            let v = std::mem::take(&mut buf);
            let n = v.len() as u64;
            pending = Some(st.exec.write(file, off, v));
            off += n;
        }
    }
    if let Some(p) = pending.take() {
        p.await.map_err(io)?;
    }
    if !buf.is_empty() {
        let n = buf.len() as u64;
        st.exec.write(file, off, buf).await.map_err(io)?;
        off += n;
    }
    Ok(off)
}

/// Reads and drops what is left of a refused body (at most 1 MiB, for at most 2 s), so that the
/// answer is not lost to a reset when the connection closes with unread bytes.
async fn drain(body: &mut Incoming) {
    let mut left: i64 = 1 << 20;
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

async fn delete(st: &Arc<State>, key: &str) -> Response<ObjBody> {
    let path = st.root.join(key);
    match fsops::unlink(&st.exec, &path).await {
        Ok(()) => {
            st.cache.invalidate(key);
            match fsops::fsync_dir(&st.exec, &st.root).await {
                Ok(()) => simple(StatusCode::NO_CONTENT, ""),
                Err(e) => simple(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        Err(e) if not_found_errno(e.raw_os_error()) => simple(StatusCode::NOT_FOUND, "no such key"),
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
            simple(StatusCode::NOT_FOUND, "no such key")
        }
        Err(e) => simple(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Raises the open-file limit to its hard limit (the cache holds descriptors).
fn raise_nofile() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

/// Removes temporary files a crash left behind.
fn remove_stale_tmp(root: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(root)? {
        let e = e?;
        if e.file_name().as_encoded_bytes().starts_with(b".tmp-") {
            std::fs::remove_file(e.path())?;
            n += 1;
        }
    }
    Ok(n)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("object_server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if !args.root.is_dir() {
        return Err(format!("--root {}: not a directory", args.root.display()).into());
    }
    if args.chunk == 0 || args.chunk % DIRECT_ALIGN as usize != 0 {
        return Err("--chunk must be a positive multiple of 4096".into());
    }
    raise_nofile();
    let stale = remove_stale_tmp(&args.root)?;
    if stale > 0 {
        eprintln!("removed {stale} stale temporary files");
    }
    let mut builder = Executor::builder()
        .shards(args.shards.max(1))
        .max_files(args.cache.clamp(1024, 65536) as u32);
    if let Some(us) = args.spin_us {
        builder = builder.spin(Duration::from_micros(us));
    }
    let exec = builder.build()?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(w) = args.workers {
        rt.worker_threads(w.max(1));
    }
    let rt = rt.build()?;
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ ((std::process::id() as u64) << 40);
    let state = Arc::new(State {
        exec,
        root: args.root.clone(),
        direct: args.direct,
        direct_min: args.direct_min,
        max_object: args.max_object,
        chunk: args.chunk,
        bufs: Arc::new(BufPool {
            free: Mutex::new(Vec::new()),
            keep: 256,
        }),
        cache: Cache::new(args.cache),
        nonce: AtomicU64::new(seed),
    });
    rt.block_on(serve(args, Arc::clone(&state)))?;
    drop(rt);
    Ok(())
}

async fn serve(args: Args, st: Arc<State>) -> Result<(), Box<dyn std::error::Error>> {
    use tokio::signal::unix::{signal, SignalKind};
    // Signal handlers first: once the address is printed, SIGTERM means a graceful stop.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", listener.local_addr()?)?;
        out.flush()?;
    }
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    loop {
        tokio::select! {
            acc = listener.accept() => {
                let (stream, _) = match acc {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and the like: back off a little, keep serving.
                        eprintln!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let st = Arc::clone(&st);
                let svc = hyper::service::service_fn(move |req| handle(Arc::clone(&st), req));
                let conn = http.serve_connection(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
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
        _ = tokio::time::sleep(Duration::from_secs(args.grace)) => {
            eprintln!("grace period over; closing the remaining connections");
        }
    }
    st.exec.shutdown_async().await?;
    Ok(())
}
