//! One request, apart from any transport: the engine hands over method, path, query, headers
//! and a [`BodySource`], and gets an [`Answer`] (a [`Reply`] whose body plan may name an open
//! object's byte range) to write. Every engine calls [`handle`]; this is where the HTTP
//! semantics ([`http`]) meet the store ([`store`](crate::store)).

use crate::http::{self, Precondition, Reply, Route, Validators};
use crate::store::{BodyError, BodySource, Entry, LookupError, PutError, Store};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, StatusCode};
use std::sync::Arc;

/// A request's parts, as the engine parsed them.
pub struct Request<'a> {
    pub method: &'a Method,
    /// The path, still percent-encoded.
    pub path: &'a str,
    /// The part after `?`, if any.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// What to send, and what the access log says of it.
pub struct Answer {
    pub reply: Reply<Arc<Entry>>,
    /// The key (or, if the path names none, the path).
    pub key: String,
    /// Body bytes a PUT stored.
    pub stored: u64,
    /// The connection must close after this answer (its request body was not read to its end).
    pub close: bool,
}

impl Answer {
    fn new(reply: Reply<Arc<Entry>>, key: &str) -> Answer {
        Answer {
            reply,
            key: key.to_string(),
            stored: 0,
            close: false,
        }
    }
}

/// Answers one request.
pub async fn handle(st: &Store, req: &Request<'_>, body: &mut impl BodySource) -> Answer {
    let m = req.method;
    let read = *m == Method::GET || *m == Method::HEAD;
    let head = *m == Method::HEAD;
    match http::route(req.path, req.query) {
        Route::Metrics if read => Answer::new(metrics(st, head).await, req.path),
        Route::List { prefix } if read => Answer::new(list(st, &prefix, head).await, req.path),
        Route::Metrics | Route::List { .. } => {
            Answer::new(Reply::method_not_allowed("GET, HEAD"), req.path)
        }
        Route::BadKey => Answer::new(
            Reply::error(StatusCode::BAD_REQUEST, "invalid key"),
            req.path,
        ),
        Route::Object(key) => match *m {
            Method::GET | Method::HEAD => Answer::new(get(st, &key, req).await, &key),
            Method::PUT => put(st, &key, req, body).await,
            Method::DELETE => Answer::new(delete(st, &key, req.headers).await, &key),
            _ => Answer::new(Reply::method_not_allowed("GET, HEAD, PUT, DELETE"), &key),
        },
    }
}

async fn get(st: &Store, key: &str, req: &Request<'_>) -> Reply<Arc<Entry>> {
    match st.lookup(key, *req.method != Method::HEAD).await {
        Ok(e) => {
            let file = Arc::clone(&e);
            http::object_reply(req.method, req.headers, &e.v, file)
        }
        Err(LookupError::NotFound) => Reply::error(StatusCode::NOT_FOUND, "no such key"),
        Err(LookupError::Io(d)) => Reply::internal("lookup", &d),
    }
}

/// A refused upload's answer: the body is read and dropped first (bounded) unless the client
/// waits for `100-continue`, so the answer is not lost to a reset.
async fn refuse(
    body: &mut impl BodySource,
    h: &HeaderMap,
    reply: Reply<Arc<Entry>>,
) -> Reply<Arc<Entry>> {
    if !h.contains_key(header::EXPECT) {
        body.discard().await;
    }
    reply
}

/// The conditional headers against the key's current object (by lstat): `None` to go on, or
/// the reply (a 412, or a 500).
async fn check_write(
    st: &Store,
    key: &str,
    m: &Method,
    h: &HeaderMap,
) -> Option<Reply<Arc<Entry>>> {
    if !http::is_conditional(h) {
        return None;
    }
    let cur = match st.current(key).await {
        Ok(c) => c,
        Err(d) => return Some(Reply::internal("lstat", &d)),
    };
    match http::preconditions(m, h, cur.as_ref()) {
        Precondition::Failed => Some(Reply::error(
            StatusCode::PRECONDITION_FAILED,
            "precondition failed",
        )),
        _ => None,
    }
}

async fn put(st: &Store, key: &str, req: &Request<'_>, body: &mut impl BodySource) -> Answer {
    let h = req.headers;
    let done = |reply| Answer::new(reply, key);
    let declared = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > st.cfg.max_object) {
        let r = Reply::error(StatusCode::PAYLOAD_TOO_LARGE, "object too large");
        return done(refuse(body, h, r).await);
    }
    let Some(ct) = http::put_content_type(h) else {
        let r = Reply::error(StatusCode::BAD_REQUEST, "invalid content type");
        return done(refuse(body, h, r).await);
    };
    // Checked before the upload (a refused PUT sends no body it need not), and again at the
    // commit, under the key's lock.
    if let Some(r) = check_write(st, key, &Method::PUT, h).await {
        return done(refuse(body, h, r).await);
    }
    let (file, mut guard) = match st.create_tmp(key, ct.is_some()).await {
        Ok(f) => f,
        Err(d) => return done(Reply::internal("create a temporary file", &d)),
    };
    let written = async {
        let len = st.write_body(&file, body).await?;
        let (md, sidecar) = st
            .finish_tmp(&file, &guard, ct.as_deref())
            .await
            .map_err(PutError::Io)?;
        Ok::<_, PutError>((len, md, sidecar))
    }
    .await;
    let (len, md, sidecar) = match written {
        Ok(w) => w,
        Err(e) => {
            st.abandon(&file, &mut guard).await;
            let mut a = done(match e {
                PutError::TooLarge => {
                    Reply::error(StatusCode::PAYLOAD_TOO_LARGE, "object too large")
                }
                PutError::Body(BodyError::Timeout) => {
                    Reply::error(StatusCode::REQUEST_TIMEOUT, "request body timed out")
                }
                PutError::Body(BodyError::Broken(d)) => {
                    tracing::warn!(target: "object_server", "PUT {key}: body: {d}");
                    Reply::error(StatusCode::BAD_REQUEST, "bad request body")
                }
                PutError::Io(d) => Reply::internal("upload", &d),
            });
            a.close = true;
            return a;
        }
    };
    let committed = {
        let _lock = st.lock(key).await;
        match check_write(st, key, &Method::PUT, h).await {
            Some(r) => Err(r),
            None => {
                let side = ct.filter(|_| sidecar).map(|ct| (md.ino(), ct));
                match st.commit(key, &mut guard, http::create_only(h), side).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(Reply::error(
                        StatusCode::PRECONDITION_FAILED,
                        "precondition failed",
                    )),
                    Err(d) => Err(Reply::internal("commit", &d)),
                }
            }
        }
    };
    if let Err(r) = committed {
        st.abandon(&file, &mut guard).await;
        return done(r);
    }
    let mut r = Reply::empty(StatusCode::CREATED);
    let v = Validators::new(md.ino(), md.len(), md.modified(), None);
    r.headers.insert(header::ETAG, v.etag);
    let mut a = done(r);
    a.stored = len;
    a
}

async fn delete(st: &Store, key: &str, h: &HeaderMap) -> Reply<Arc<Entry>> {
    let _lock = st.lock(key).await;
    // Only a regular file is an object: a symlink (or anything else) at a key is not one.
    match st.current(key).await {
        Ok(Some(_)) => {}
        Ok(None) => return Reply::error(StatusCode::NOT_FOUND, "no such key"),
        Err(d) => return Reply::internal("lstat", &d),
    }
    if let Some(r) = check_write(st, key, &Method::DELETE, h).await {
        return r;
    }
    match st.delete(key).await {
        Ok(true) => Reply::empty(StatusCode::NO_CONTENT),
        Ok(false) => Reply::error(StatusCode::NOT_FOUND, "no such key"),
        Err(d) => Reply::internal("delete", &d),
    }
}

async fn list(st: &Store, prefix: &str, head: bool) -> Reply<Arc<Entry>> {
    let (keys, truncated) = match st.list(prefix).await {
        Ok(k) => k,
        Err(d) => return Reply::internal("list", &d),
    };
    let json = http::listing_json(prefix, &keys, truncated);
    let mut r = Reply::empty(StatusCode::OK);
    r.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(json.len()));
    if !head {
        r.body = http::BodyPlan::Bytes(json);
    }
    r
}

async fn metrics(st: &Store, head: bool) -> Reply<Arc<Entry>> {
    let mut text = st.exec.stats_async().await.to_prometheus();
    let o = &st.opens;
    let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    text.push_str(&format!(
        "# HELP object_server_opens_total Object handles opened, by page-cache mode.\n\
         # TYPE object_server_opens_total counter\n\
         object_server_opens_total{{mode=\"buffered\"}} {}\n\
         object_server_opens_total{{mode=\"direct\"}} {}\n\
         # HELP object_server_promoted_total O_DIRECT handles replaced by buffered ones on a second read.\n\
         # TYPE object_server_promoted_total counter\n\
         object_server_promoted_total {}\n\
         # HELP object_server_type_reads_total Lookups that read a stored Content-Type.\n\
         # TYPE object_server_type_reads_total counter\n\
         object_server_type_reads_total {}\n",
        n(&o.buffered),
        n(&o.direct),
        n(&o.promoted),
        n(&o.type_reads)
    ));
    let mut r = Reply::empty(StatusCode::OK);
    r.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(ringshard::stats::PROMETHEUS_CONTENT_TYPE),
    );
    r.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    if !head {
        r.body = http::BodyPlan::Bytes(bytes::Bytes::from(text));
    }
    r
}
