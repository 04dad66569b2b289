//! The server's HTTP semantics, apart from any transport: what a request names ([`route`]), the
//! conditional headers ([`preconditions`]), ranges ([`parse_range`]), validators ([`Validators`]:
//! ETag and Last-Modified), the answers' shape ([`Reply`], [`BodyPlan`]), error bodies
//! ([`Reply::error`]), the listing's JSON ([`listing_json`]) and the access log's event
//! ([`access_event`]). Each engine parses a request into method, path, query and headers, calls
//! [`service::handle`](super::service::handle), and writes the [`Reply`] it gets back.

use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest key, in bytes.
pub const MAX_KEY: usize = 200;
/// The longest Content-Type kept with an object, in bytes.
pub const MAX_CONTENT_TYPE: usize = 255;
/// The Content-Type of an object stored without one.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// What a request path (and query) names.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `/metrics`.
    Metrics,
    /// `/?prefix=P`: the keys starting with `P`.
    List { prefix: String },
    /// `/<key>`.
    Object(String),
    /// Anything else: a 400 that touches nothing.
    BadKey,
}

/// The route of `path` and `query` (the part after `?`, if any).
pub fn route(path: &str, query: Option<&str>) -> Route {
    if path == "/metrics" {
        return Route::Metrics;
    }
    if path == "/" {
        // The listing needs its `prefix` parameter (empty lists every key): `/` alone names no
        // key.
        let prefix = query.and_then(|q| {
            q.split('&')
                .find_map(|kv| match kv.split_once('=') {
                    Some(("prefix", v)) => Some(v),
                    None if kv == "prefix" => Some(""),
                    _ => None,
                })
                .map(|v| percent_decode(v).and_then(|b| String::from_utf8(b).ok()))
        });
        return match prefix {
            Some(Some(prefix)) => Route::List { prefix },
            _ => Route::BadKey,
        };
    }
    match parse_key(path) {
        Some(k) => Route::Object(k),
        None => Route::BadKey,
    }
}

/// Percent-decodes a path; `None` on a malformed escape.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
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

/// The key a request path names, or `None` if it is not a valid key: 1 to [`MAX_KEY`] bytes of
/// UTF-8 after percent-decoding, no `/`, `\` or control characters, not starting with `.` (the
/// server's own files start with `.`). A key is one path segment, so the file it names is one
/// directory entry of the root.
pub fn parse_key(path: &str) -> Option<String> {
    let raw = path.strip_prefix('/')?;
    let key = String::from_utf8(percent_decode(raw)?).ok()?;
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY
        && !key.starts_with('.')
        && !key.chars().any(|c| c == '/' || c == '\\' || c.is_control());
    ok.then_some(key)
}

/// The Content-Type a PUT asks to store: `Some(None)` without one, `None` if it is not printable
/// ASCII of at most [`MAX_CONTENT_TYPE`] bytes (a 400).
pub fn put_content_type(h: &HeaderMap) -> Option<Option<String>> {
    let Some(v) = h.get(header::CONTENT_TYPE) else {
        return Some(None);
    };
    let s = v.to_str().ok()?;
    let ok = !s.is_empty() && s.len() <= MAX_CONTENT_TYPE && !s.chars().any(|c| c.is_control());
    ok.then(|| Some(s.to_string()))
}

/// What identifies one version of an object: its inode, length and modification time (the
/// ETag `"<inode>-<size>-<mtime ns>"` in hex) and its Content-Type.
#[derive(Debug, Clone)]
pub struct Validators {
    pub etag: HeaderValue,
    pub last_modified: HeaderValue,
    pub mtime: SystemTime,
    pub len: u64,
    pub content_type: HeaderValue,
}

impl Validators {
    /// The validators of the file `ino` of `len` bytes modified at `mtime`.
    pub fn new(ino: u64, len: u64, mtime: SystemTime, content_type: Option<&str>) -> Validators {
        let ns = mtime
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let etag = format!("\"{ino:x}-{len:x}-{ns:x}\"");
        Validators {
            etag: HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\"")),
            last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(mtime))
                .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT")),
            mtime,
            len,
            content_type: content_type
                .and_then(|c| HeaderValue::from_str(c).ok())
                .unwrap_or(HeaderValue::from_static(DEFAULT_CONTENT_TYPE)),
        }
    }

    /// The modification time in whole seconds (what an HTTP date can say).
    fn mtime_secs(&self) -> u64 {
        self.mtime
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// The outcome of the conditional headers.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Precondition {
    /// Serve or change the object.
    Proceed,
    /// 304 (GET and HEAD only).
    NotModified,
    /// 412.
    Failed,
}

/// Whether `list` (an `If-Match` or `If-None-Match` value) names `etag`: `*` names any
/// existing object; `weak` compares `W/"x"` as `"x"` (If-None-Match), else weak tags never match
/// (If-Match).
fn etag_listed(list: &HeaderValue, etag: &HeaderValue, weak: bool) -> bool {
    let (Ok(list), Ok(tag)) = (list.to_str(), etag.to_str()) else {
        return false;
    };
    list.split(',').any(|t| {
        let t = t.trim();
        if t == "*" {
            return true;
        }
        match t.strip_prefix("W/") {
            Some(w) => weak && w == tag,
            None => t == tag,
        }
    })
}

fn header_date(h: &HeaderMap, name: HeaderName) -> Option<u64> {
    let v = h.get(name)?.to_str().ok()?;
    let t = httpdate::parse_http_date(v).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// RFC 9110 section 13.2.2, in its order, against the current object (`None`: there is none):
/// If-Match, else If-Unmodified-Since; then If-None-Match, else (GET and HEAD) If-Modified-Since.
/// An unparsable date is ignored, as the RFC says.
pub fn preconditions(method: &Method, h: &HeaderMap, current: Option<&Validators>) -> Precondition {
    let read = *method == Method::GET || *method == Method::HEAD;
    if let Some(im) = h.get(header::IF_MATCH) {
        match current {
            Some(v) if etag_listed(im, &v.etag, false) => {}
            _ => return Precondition::Failed,
        }
    } else if let (Some(since), Some(v)) = (header_date(h, header::IF_UNMODIFIED_SINCE), current) {
        if v.mtime_secs() > since {
            return Precondition::Failed;
        }
    }
    if let Some(inm) = h.get(header::IF_NONE_MATCH) {
        if let Some(v) = current {
            if etag_listed(inm, &v.etag, true) {
                return if read {
                    Precondition::NotModified
                } else {
                    Precondition::Failed
                };
            }
        }
    } else if let (true, Some(since), Some(v)) =
        (read, header_date(h, header::IF_MODIFIED_SINCE), current)
    {
        if v.mtime_secs() <= since {
            return Precondition::NotModified;
        }
    }
    Precondition::Proceed
}

/// `If-None-Match: *`: create only, never replace (a PUT's commit renames with
/// RENAME_NOREPLACE, so the check and the rename are one step).
pub fn create_only(h: &HeaderMap) -> bool {
    h.get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "*")
}

/// Whether a request has any conditional header (a write without one needs no current state).
pub fn is_conditional(h: &HeaderMap) -> bool {
    [
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
    ]
    .iter()
    .any(|n| h.contains_key(n))
}

/// A `Range` header's answer.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    Whole,
    /// Half-open byte range.
    Part(u64, u64),
    Unsatisfiable,
}

/// A single `bytes=` range against an object of `len` bytes (half-open result). Several ranges
/// or a malformed header: the whole object.
pub fn parse_range(h: &str, len: u64) -> RangeAnswer {
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

/// What a reply's body is, for the engine to produce.
pub enum BodyPlan<F> {
    /// No body (HEAD, 204, 304; `Content-Length` may still say the object's length).
    Empty,
    /// These bytes.
    Bytes(Bytes),
    /// Bytes `start..end` of the open object `F`.
    File { file: F, start: u64, end: u64 },
}

/// An answer: status, headers and the body's plan. `F` is the engine-neutral open object
/// (`store::Entry`).
pub struct Reply<F = ()> {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: BodyPlan<F>,
}

impl<F> Reply<F> {
    /// A reply with no body.
    pub fn empty(status: StatusCode) -> Reply<F> {
        Reply {
            status,
            headers: HeaderMap::new(),
            body: BodyPlan::Empty,
        }
    }

    /// An error (or short text) reply: a fixed message and a newline, never a server path or an
    /// errno (the detail goes to the server's log).
    pub fn error(status: StatusCode, msg: &'static str) -> Reply<F> {
        let mut r = Reply::empty(status);
        r.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r.body = BodyPlan::Bytes(Bytes::from(format!("{msg}\n")));
        r
    }

    /// A 500: `detail` (which may name paths and errnos) is logged, not sent.
    pub fn internal(what: &'static str, detail: &dyn std::fmt::Display) -> Reply<F> {
        tracing::error!(target: "object_server", "{what}: {detail}");
        Reply::error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }

    /// A 405 with its `Allow`.
    pub fn method_not_allowed(allow: &'static str) -> Reply<F> {
        let mut r = Reply::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        r.headers
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        r
    }
}

/// Adds an object's validators (ETag, Last-Modified) to a reply.
pub fn add_validators(h: &mut HeaderMap, v: &Validators) {
    h.insert(header::ETAG, v.etag.clone());
    h.insert(header::LAST_MODIFIED, v.last_modified.clone());
}

/// The reply to a GET or HEAD of an object with validators `v` (open as `file`), after the
/// conditional headers and `Range`/`If-Range`.
pub fn object_reply<F>(method: &Method, h: &HeaderMap, v: &Validators, file: F) -> Reply<F> {
    let head = *method == Method::HEAD;
    match preconditions(method, h, Some(v)) {
        Precondition::Proceed => {}
        Precondition::NotModified => {
            let mut r = Reply::empty(StatusCode::NOT_MODIFIED);
            add_validators(&mut r.headers, v);
            return r;
        }
        Precondition::Failed => {
            return Reply::error(StatusCode::PRECONDITION_FAILED, "precondition failed");
        }
    }
    let len = v.len;
    let range_ok = match h.get(header::IF_RANGE) {
        Some(ir) => *ir == v.etag || *ir == v.last_modified,
        None => true,
    };
    let range = match h.get(header::RANGE).and_then(|r| r.to_str().ok()) {
        Some(r) if range_ok => parse_range(r, len),
        _ => RangeAnswer::Whole,
    };
    let (status, start, end) = match range {
        RangeAnswer::Whole => (StatusCode::OK, 0, len),
        RangeAnswer::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b),
        RangeAnswer::Unsatisfiable => {
            let mut r = Reply::error(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
            r.headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).expect("digits are a header"),
            );
            add_validators(&mut r.headers, v);
            return r;
        }
    };
    let mut r = Reply::empty(status);
    add_validators(&mut r.headers, v);
    let hd = &mut r.headers;
    hd.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    hd.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    hd.insert(header::CONTENT_TYPE, v.content_type.clone());
    if status == StatusCode::PARTIAL_CONTENT {
        hd.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {}-{}/{}", start, end - 1, len))
                .expect("digits are a header"),
        );
    }
    if !head && end > start {
        r.body = BodyPlan::File { file, start, end };
    }
    r
}

/// The listing's JSON: `{"prefix":P,"keys":[...],"truncated":B}` (keys sorted).
pub fn listing_json(prefix: &str, keys: &[String], truncated: bool) -> Bytes {
    let mut s = String::with_capacity(32 + keys.iter().map(|k| k.len() + 3).sum::<usize>());
    s.push_str("{\"prefix\":");
    json_str(&mut s, prefix);
    s.push_str(",\"keys\":[");
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        json_str(&mut s, k);
    }
    s.push_str("],\"truncated\":");
    s.push_str(if truncated { "true" } else { "false" });
    s.push_str("}\n");
    Bytes::from(s)
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// One request's access-log event (target `access`): method, key (or the path, if it names none), status, body bytes sent (or
/// stored, for a PUT) and the time from the request's head to the end of its answer, in µs.
pub fn access_event(method: &Method, key: &str, status: StatusCode, bytes: u64, took: Duration) {
    tracing::info!(
        target: "access",
        method = %method,
        key,
        status = status.as_u16(),
        bytes,
        us = took.as_micros() as u64,
    );
}
