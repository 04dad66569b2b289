//! `examples/object_server`: the server binary on 127.0.0.1:0, driven by hyper's HTTP/1.1 client,
//! by raw sockets (chunked bodies, `Expect: 100-continue`, a body held open across SIGTERM) and by
//! `curl`. Nothing waits on a timer for correctness: the tests poll for the state they need (a
//! temporary file, a log line) with generous bounds.

#[path = "support/example.rs"]
mod example;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The example's binary, built (or found up to date) once per test run with this test's profile.
fn server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| example::build_example("object_server"))
}

struct Server {
    child: Child,
    addr: String,
    /// `outer/root`: `outer` must hold nothing but `root` (traversal checks).
    outer: tempfile::TempDir,
    /// Lines the server wrote on stderr.
    log: mpsc::Receiver<String>,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let outer = tempfile::tempdir().expect("tempdir");
        let root = outer.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let mut child = Command::new(server_bin())
            .arg("--root")
            .arg(&root)
            .args(["--listen", "127.0.0.1:0", "--shards", "1", "--workers", "2"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start object_server");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let addr = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line {first:?}"))
            .to_string();
        let log = spawn_log_reader(child.stderr.take().unwrap());
        Server {
            child,
            addr,
            outer,
            log,
        }
    }

    fn root(&self) -> PathBuf {
        self.outer.path().join("root")
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Names in the root starting with `.tmp-`.
    fn temp_files(&self) -> Vec<String> {
        std::fs::read_dir(self.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp-"))
            .collect()
    }

    fn objects(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_log_reader(err: ChildStderr) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// One request on a fresh connection, through hyper's client.
async fn request(
    addr: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Resp {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = tx
        .send_request(b.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .expect("send request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Resp {
        status,
        headers,
        body: body.to_vec(),
    }
}

fn req(s: &Server, method: Method, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
    rt().block_on(request(&s.addr, method, path, headers, body))
}

/// Deterministic distinct bytes.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn curl(args: &[&str]) -> std::process::Output {
    let out = Command::new("curl").args(args).output();
    match out {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "curl is not installed: these tests drive the server with curl too \
             (apt-get install -y curl; .ci/run installs it)"
        ),
        Err(e) => panic!("run curl: {e}"),
    }
}

/// `curl -s -o /dev/null -w %{http_code} ARGS`.
fn curl_status(args: &[&str]) -> u16 {
    let mut all = vec!["-s", "-o", "/dev/null", "-w", "%{http_code}"];
    all.extend_from_slice(args);
    let out = curl(&all);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl {args:?}: {:?}", out))
}

/// Sends raw bytes, then reads the whole answer (the server closes or answers one request).
fn raw_exchange(addr: &str, parts: &[&[u8]]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    for p in parts {
        s.write_all(p).unwrap();
    }
    read_status_and_headers(&mut s)
}

/// Reads up to the end of the response headers.
fn read_status_and_headers(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(_) => got.push(b[0]),
            Err(e) => panic!(
                "read response: {e} (got {:?})",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn chunked(data: &[u8]) -> Vec<u8> {
    let mut v = format!("{:x}\r\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\r\n");
    v
}

#[test]
fn put_get_round_trips_of_several_sizes() {
    let s = Server::start(&[]);
    for (i, len) in [0usize, 1, 4096, 8 << 20].into_iter().enumerate() {
        let key = format!("obj{len}");
        let body = pattern(len, i as u64 + 1);
        let r = req(&s, Method::PUT, &format!("/{key}"), &[], body.clone());
        assert_eq!(r.status, StatusCode::CREATED, "PUT {len} bytes");
        assert!(r.header("etag").is_some());
        let r = req(&s, Method::GET, &format!("/{key}"), &[], vec![]);
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-length"), Some(len.to_string().as_str()));
        assert!(r.body == body, "GET {len} bytes: body differs");
        assert!(r.header("etag").is_some() && r.header("last-modified").is_some());
        // On disk, too.
        assert!(std::fs::read(s.root().join(&key)).unwrap() == body);
    }
    // Overwrite: the new bytes are served (the cached handle was invalidated).
    let r = req(&s, Method::PUT, "/obj4096", &[], b"new".to_vec());
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(req(&s, Method::GET, "/obj4096", &[], vec![]).body, b"new");

    // The same through curl: upload a file, download it.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let body = pattern(3 << 20, 99);
    std::fs::write(&src, &body).unwrap();
    let src = src.to_str().unwrap();
    assert_eq!(curl_status(&["-T", src, &s.url("/curl-obj")]), 201);
    let dst = dir.path().join("dst");
    let dst_s = dst.to_str().unwrap();
    let out = curl(&["-s", "-w", "%{http_code}", "-o", dst_s, &s.url("/curl-obj")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    assert!(std::fs::read(&dst).unwrap() == body);
    assert!(s.temp_files().is_empty(), "{:?}", s.temp_files());
}

#[test]
fn ranges_partial_content_and_416() {
    let s = Server::start(&[]);
    let body = pattern(10_000, 7);
    assert_eq!(
        req(&s, Method::PUT, "/r", &[], body.clone()).status,
        StatusCode::CREATED
    );
    let get = |range: &str| req(&s, Method::GET, "/r", &[("range", range)], vec![]);
    let r = get("bytes=10-19");
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.header("content-range"), Some("bytes 10-19/10000"));
    assert_eq!(r.body, &body[10..20]);
    let r = get("bytes=9990-");
    assert_eq!(r.header("content-range"), Some("bytes 9990-9999/10000"));
    assert_eq!(r.body, &body[9990..]);
    let r = get("bytes=-5");
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.header("content-range"), Some("bytes 9995-9999/10000"));
    assert_eq!(r.body, &body[9995..]);
    // A suffix longer than the object is the whole object; an end past it is clamped.
    let r = get("bytes=-20000");
    assert_eq!(r.header("content-range"), Some("bytes 0-9999/10000"));
    assert!(r.body == body);
    let r = get("bytes=9000-20000");
    assert_eq!(r.header("content-range"), Some("bytes 9000-9999/10000"));
    assert_eq!(r.body, &body[9000..]);
    for bad in ["bytes=10000-", "bytes=20000-30000", "bytes=-0"] {
        let r = get(bad);
        assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{bad}");
        assert_eq!(r.header("content-range"), Some("bytes */10000"), "{bad}");
    }
    // Several ranges, or a malformed one: the whole object.
    for whole in ["bytes=0-1,5-6", "bytes=5-2", "items=0-1"] {
        let r = get(whole);
        assert_eq!(r.status, StatusCode::OK, "{whole}");
        assert!(r.body == body);
    }
    // A range across chunks of a large object (streamed).
    let big = pattern(3 << 20, 8);
    req(&s, Method::PUT, "/big", &[], big.clone());
    let r = req(
        &s,
        Method::GET,
        "/big",
        &[("range", "bytes=100000-2999999")],
        vec![],
    );
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert!(r.body == big[100_000..3_000_000]);
    // An empty object has no satisfiable range.
    req(&s, Method::PUT, "/empty", &[], vec![]);
    let r = req(&s, Method::GET, "/empty", &[("range", "bytes=-1")], vec![]);
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("content-range"), Some("bytes */0"));
    // curl's -r.
    let out = curl(&["-s", "-r", "100-199", &s.url("/r")]);
    assert_eq!(out.stdout, &body[100..200]);
    assert_eq!(curl_status(&["-r", "50000-", &s.url("/r")]), 416);
}

#[test]
fn head_etag_304_delete_404_405() {
    let s = Server::start(&[]);
    req(&s, Method::PUT, "/h", &[], pattern(5000, 3));
    let h = req(&s, Method::HEAD, "/h", &[], vec![]);
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.header("content-length"), Some("5000"));
    assert!(h.body.is_empty());
    let etag = h.header("etag").unwrap().to_string();
    let lm = h.header("last-modified").unwrap().to_string();
    assert!(httpdate::parse_http_date(&lm).is_ok(), "{lm}");
    let g = req(&s, Method::GET, "/h", &[], vec![]);
    assert_eq!(g.header("etag"), Some(etag.as_str()));
    let r = req(&s, Method::GET, "/h", &[("if-none-match", &etag)], vec![]);
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());
    let r = req(
        &s,
        Method::GET,
        "/h",
        &[("if-none-match", "\"other\"")],
        vec![],
    );
    assert_eq!(r.status, StatusCode::OK);
    // A new object gets a new tag.
    req(&s, Method::PUT, "/h", &[], pattern(5000, 4));
    let r = req(&s, Method::GET, "/h", &[("if-none-match", &etag)], vec![]);
    assert_eq!(r.status, StatusCode::OK);
    assert_ne!(r.header("etag"), Some(etag.as_str()));

    assert_eq!(curl_status(&["-I", &s.url("/h")]), 200);
    assert_eq!(
        req(&s, Method::DELETE, "/h", &[], vec![]).status,
        StatusCode::NO_CONTENT
    );
    assert!(!s.root().join("h").exists());
    assert_eq!(
        req(&s, Method::GET, "/h", &[], vec![]).status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        req(&s, Method::HEAD, "/h", &[], vec![]).status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        req(&s, Method::DELETE, "/h", &[], vec![]).status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(curl_status(&["-X", "DELETE", &s.url("/h")]), 404);
    assert_eq!(curl_status(&[&s.url("/never")]), 404);
    let r = req(&s, Method::POST, "/h", &[], vec![]);
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.header("allow").is_some());
    assert_eq!(curl_status(&["-X", "PATCH", &s.url("/h")]), 405);
}

#[test]
fn traversal_and_bad_keys_are_400_and_touch_nothing() {
    let s = Server::start(&[]);
    let bad = [
        "/",
        "/..",
        "/../escape",
        "/%2e%2e",
        "/%2E%2e%2fescape",
        "/..%2fescape",
        "/%2fescape",
        "/%2Ftmp%2Fescape",
        "/a%00b",
        "/a/b",
        "/a/../escape",
        "//escape",
        "/.hidden",
        "/.tmp-x",
        "/%",
        "/%zz",
        "/a%5cb",
    ];
    for p in bad {
        for m in [Method::GET, Method::PUT, Method::DELETE, Method::HEAD] {
            let r = req(&s, m.clone(), p, &[], b"x".to_vec());
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{m} {p}");
        }
        assert_eq!(
            curl_status(&["--path-as-is", "-X", "PUT", "-d", "x", &s.url(p)]),
            400,
            "curl PUT {p}"
        );
    }
    // Nothing was created, in the root or next to it.
    assert!(s.objects().is_empty(), "{:?}", s.objects());
    let outer: Vec<_> = std::fs::read_dir(s.outer.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outer, vec![std::ffi::OsString::from("root")]);
    // A percent-encoded but valid key is decoded once: "%2541" is the key "%41".
    assert_eq!(
        req(&s, Method::PUT, "/a%2541", &[], b"y".to_vec()).status,
        StatusCode::CREATED
    );
    assert!(s.root().join("a%41").exists());
}

#[test]
fn too_large_bodies_are_413_with_no_temp_file() {
    let s = Server::start(&["--max-object", "1000"]);
    // Content-Length over the limit: refused before the body (the client waits for 100-continue).
    let head = format!(
        "PUT /big HTTP/1.1\r\nHost: {}\r\nContent-Length: 2000\r\nExpect: 100-continue\r\n\r\n",
        s.addr
    );
    let ans = raw_exchange(&s.addr, &[head.as_bytes()]);
    assert!(ans.starts_with("HTTP/1.1 413"), "{ans}");
    // Chunked, over the limit while streaming.
    let head = format!(
        "PUT /big HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        s.addr
    );
    let mut body = Vec::new();
    for i in 0..3 {
        body.extend(chunked(&pattern(400, i)));
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let ans = raw_exchange(&s.addr, &[head.as_bytes(), &body]);
    assert!(ans.starts_with("HTTP/1.1 413"), "{ans}");
    // curl, chunked from stdin.
    let mut c = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-T", "-"])
        .arg(s.url("/big"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl is not installed (apt-get install -y curl; .ci/run installs it)");
    c.stdin
        .take()
        .unwrap()
        .write_all(&pattern(5000, 9))
        .unwrap();
    let out = c.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "413");
    // Exactly the limit is fine.
    assert_eq!(
        req(&s, Method::PUT, "/ok", &[], pattern(1000, 1)).status,
        StatusCode::CREATED
    );
    assert!(s.temp_files().is_empty(), "{:?}", s.temp_files());
    assert_eq!(s.objects(), vec!["ok".to_string()]);
}

#[test]
fn concurrent_puts_of_one_key_leave_exactly_one_body() {
    let s = Server::start(&[]);
    let bodies: Vec<Vec<u8>> = (0..8).map(|i| pattern(1 << 20, 100 + i)).collect();
    let rt = rt();
    for round in 0..3 {
        let statuses = rt.block_on(async {
            let mut tasks = Vec::new();
            for b in &bodies {
                let (addr, b) = (s.addr.clone(), b.clone());
                tasks.push(tokio::spawn(async move {
                    request(&addr, Method::PUT, "/same", &[], b).await.status
                }));
            }
            let mut v = Vec::new();
            for t in tasks {
                v.push(t.await.unwrap());
            }
            v
        });
        assert!(
            statuses.iter().all(|s| *s == StatusCode::CREATED),
            "{statuses:?}"
        );
        let got = std::fs::read(s.root().join("same")).unwrap();
        assert!(
            bodies.contains(&got),
            "round {round}: the object is none of the bodies"
        );
        let served = req(&s, Method::GET, "/same", &[], vec![]).body;
        assert!(
            served == got,
            "round {round}: served bytes differ from the file"
        );
        assert!(s.temp_files().is_empty(), "{:?}", s.temp_files());
    }
}

#[test]
fn metrics_are_prometheus_text() {
    let s = Server::start(&[]);
    req(&s, Method::PUT, "/m", &[], pattern(10_000, 1));
    req(&s, Method::GET, "/m", &[], vec![]);
    let r = req(&s, Method::GET, "/metrics", &[], vec![]);
    assert_eq!(r.status, StatusCode::OK);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    let text = String::from_utf8(r.body).unwrap();
    let mut samples = 0;
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // name{labels} value
        let (series, value) = line.rsplit_once(' ').expect(line);
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        if series.contains('{') {
            assert!(series.ends_with('}'), "{line}");
        }
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "{line}"
        );
        samples += 1;
    }
    assert!(samples > 10);
    let read_ops = text
        .lines()
        .find(|l| l.starts_with("ringshard_ops_total{") && l.contains("op=\"read\""))
        .expect("ringshard_ops_total{op=\"read\"}");
    assert!(read_ops.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap() >= 1.0);
    assert!(text.contains("ringshard_written_bytes_total"));
    // curl sees the same endpoint.
    let out = curl(&["-s", &s.url("/metrics")]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("# TYPE ringshard_ops_total counter"));
}

#[test]
fn sigterm_lets_an_in_flight_upload_finish_and_exits_zero() {
    let mut s = Server::start(&[]);
    let part1 = pattern(100_000, 1);
    let part2 = pattern(200_000, 2);
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "PUT /slow HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        s.addr
    );
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(&chunked(&part1)).unwrap();
    // The handler runs once its temporary file exists.
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.temp_files().is_empty() {
        assert!(Instant::now() < deadline, "the upload never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(s.child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    // Wait until the server says it stopped accepting.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match s.log.recv_timeout(left) {
            Ok(l) if l.contains("shutting down") => break,
            Ok(_) => {}
            Err(e) => panic!("no shutdown message: {e}"),
        }
    }
    // New connections are refused now.
    assert!(TcpStream::connect(&s.addr).is_err(), "still accepting");
    // The in-flight upload completes.
    c.write_all(&chunked(&part2)).unwrap();
    c.write_all(b"0\r\n\r\n").unwrap();
    let ans = read_status_and_headers(&mut c);
    assert!(ans.starts_with("HTTP/1.1 201"), "{ans}");
    let mut want = part1.clone();
    want.extend_from_slice(&part2);
    assert!(std::fs::read(s.root().join("slow")).unwrap() == want);
    // And the process exits 0 within a bound.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(s.temp_files().is_empty());
}

#[test]
fn direct_reads_serve_the_same_bytes() {
    // Every object through O_DIRECT (--direct-min 0): unaligned ranges and lengths included.
    let s = Server::start(&["--direct", "--direct-min", "0", "--chunk", "65536"]);
    for (i, len) in [1usize, 4095, 4096, 4097, 200_001].into_iter().enumerate() {
        let body = pattern(len, 50 + i as u64);
        let key = format!("/d{len}");
        assert_eq!(
            req(&s, Method::PUT, &key, &[], body.clone()).status,
            StatusCode::CREATED
        );
        let r = req(&s, Method::GET, &key, &[], vec![]);
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body == body, "{len} bytes differ");
        let a = len / 3;
        let b = (len - 1).min(a + 70_000);
        let range = format!("bytes={a}-{b}");
        let r = req(&s, Method::GET, &key, &[("range", &range)], vec![]);
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert!(r.body == body[a..=b], "{len} bytes, {range}: differ");
    }
}

#[test]
fn declared_too_large_without_expect_still_gets_its_413() {
    // The client sends the body right away (no 100-continue): the server reads and drops it
    // (up to 1 MiB) and answers 413 on the same connection.
    let s = Server::start(&["--max-object", "1000"]);
    let body = pattern(100_000, 5);
    let head = format!(
        "PUT /big HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
        s.addr,
        body.len()
    );
    let ans = raw_exchange(&s.addr, &[head.as_bytes(), &body]);
    assert!(ans.starts_with("HTTP/1.1 413"), "{ans}");
    let r = req(&s, Method::PUT, "/big", &[], pattern(2000, 1));
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(s.objects().is_empty(), "{:?}", s.objects());
}

#[test]
fn an_abandoned_upload_leaves_no_temp_file_and_no_object() {
    let s = Server::start(&[]);
    {
        let mut c = TcpStream::connect(&s.addr).unwrap();
        let head = format!(
            "PUT /gone HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
            s.addr
        );
        c.write_all(head.as_bytes()).unwrap();
        c.write_all(&chunked(&pattern(50_000, 1))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while s.temp_files().is_empty() {
            assert!(Instant::now() < deadline, "the upload never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        // The client goes away mid-body.
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s.temp_files().is_empty() {
        assert!(
            Instant::now() < deadline,
            "temporary file left: {:?}",
            s.temp_files()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(s.objects().is_empty(), "{:?}", s.objects());
    assert_eq!(
        req(&s, Method::GET, "/gone", &[], vec![]).status,
        StatusCode::NOT_FOUND
    );
}
