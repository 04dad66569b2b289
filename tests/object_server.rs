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
    /// The `--engine` it runs.
    engine: &'static str,
    addr: String,
    /// `outer/root`: `outer` must hold nothing but `root` (traversal checks).
    outer: tempfile::TempDir,
    /// Lines the server wrote on stderr.
    log: mpsc::Receiver<String>,
}

impl Server {
    fn start(engine: &'static str, extra: &[&str]) -> Server {
        let outer = tempfile::tempdir().expect("tempdir");
        let root = outer.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let (mut child, addr) = spawn_server(&root, engine, extra, Stdio::piped());
        let log = spawn_log_reader(child.stderr.take().unwrap());
        Server {
            child,
            engine,
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

    /// Names in the root, but the marker the server writes at startup (`.types-marked`).
    fn objects(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".types-marked")
            .collect();
        v.sort();
        v
    }
}

impl Server {
    /// Waits (at most 60 s) for the server to exit, and checks that it exited 0.
    fn exits_zero(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "the server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status:?}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server on `root` (port 0, `engine`, one shard, two workers, `extra` flags); the
/// child and the address it printed.
fn spawn_server(root: &Path, engine: &str, extra: &[&str], stderr: Stdio) -> (Child, String) {
    let mut child = Command::new(server_bin())
        .arg("--root")
        .arg(root)
        .args(["--listen", "127.0.0.1:0", "--engine", engine])
        .args(["--shards", "1", "--workers", "2"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(stderr)
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
    (child, addr)
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

/// Reads one whole response (headers, then `Content-Length` bytes of body).
fn read_response(s: &mut TcpStream) -> String {
    let head = read_status_and_headers(s);
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    head + &String::from_utf8_lossy(&body)
}

fn chunked(data: &[u8]) -> Vec<u8> {
    let mut v = format!("{:x}\r\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\r\n");
    v
}

fn put_get_round_trips_of_several_sizes(engine: &'static str) {
    let s = Server::start(engine, &[]);
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
    // The shards engine received the large body straight into its file (recv_file: whatever
    // part of it came with the head aside).
    if engine == "shards" {
        assert!(
            ops_total(&s, "recv_file") >= 1.0,
            "the 8 MiB upload took no recv_file"
        );
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

fn ranges_partial_content_and_416(engine: &'static str) {
    let s = Server::start(engine, &[]);
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

fn head_etag_304_delete_404_405(engine: &'static str) {
    let s = Server::start(engine, &[]);
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

fn traversal_and_bad_keys_are_400_and_touch_nothing(engine: &'static str) {
    let s = Server::start(engine, &[]);
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

fn too_large_bodies_are_413_with_no_temp_file(engine: &'static str) {
    let s = Server::start(engine, &["--max-object", "1000"]);
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

fn concurrent_puts_of_one_key_leave_exactly_one_body(engine: &'static str) {
    let s = Server::start(engine, &[]);
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

fn metrics_are_prometheus_text(engine: &'static str) {
    let s = Server::start(engine, &[]);
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

fn sigterm_lets_an_in_flight_upload_finish_and_exits_zero(engine: &'static str) {
    let mut s = Server::start(engine, &[]);
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
    s.exits_zero();
    assert!(s.temp_files().is_empty());
}

fn direct_reads_serve_the_same_bytes(engine: &'static str) {
    // Every object through O_DIRECT (--direct-min 0): unaligned ranges and lengths included.
    let s = Server::start(
        engine,
        &["--direct", "--direct-min", "0", "--chunk", "65536"],
    );
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

fn declared_too_large_without_expect_still_gets_its_413(engine: &'static str) {
    // The client sends the body right away (no 100-continue): the server reads and drops it
    // (up to 1 MiB) and answers 413 on the same connection.
    let s = Server::start(engine, &["--max-object", "1000"]);
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

fn an_abandoned_upload_leaves_no_temp_file_and_no_object(engine: &'static str) {
    let s = Server::start(engine, &[]);
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

/// The `user.ringshard.content_type` xattr of `path`, if any.
fn type_xattr(path: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = [0u8; 512];
    // SAFETY: NUL-terminated names and a live buffer of the length passed.
    let n = unsafe {
        libc::lgetxattr(
            p.as_ptr(),
            c"user.ringshard.content_type".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| String::from_utf8_lossy(&buf[..n as usize]).into_owned())
}

fn content_type_is_stored_at_put_and_returned(engine: &'static str) {
    for store in ["xattr", "sidecar"] {
        let s = Server::start(engine, &["--content-types", store]);
        let put = |key: &str, ct: Option<&str>, body: &[u8]| {
            let h: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
            req(&s, Method::PUT, key, &h, body.to_vec()).status
        };
        assert_eq!(
            put("/page", Some("text/html; charset=utf-8"), b"<p>"),
            StatusCode::CREATED
        );
        assert_eq!(put("/blob", None, b"x"), StatusCode::CREATED);
        for m in [Method::GET, Method::HEAD] {
            let r = req(&s, m.clone(), "/page", &[], vec![]);
            assert_eq!(
                r.header("content-type"),
                Some("text/html; charset=utf-8"),
                "{store} {m}"
            );
            let r = req(&s, m.clone(), "/blob", &[], vec![]);
            assert_eq!(
                r.header("content-type"),
                Some("application/octet-stream"),
                "{store} {m}"
            );
        }
        // A range answer keeps it; a new PUT replaces it (or drops it to the default).
        let r = req(&s, Method::GET, "/page", &[("range", "bytes=0-0")], vec![]);
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(put("/page", Some("image/png"), b"png"), StatusCode::CREATED);
        let r = req(&s, Method::GET, "/page", &[], vec![]);
        assert_eq!(r.header("content-type"), Some("image/png"), "{store}");
        assert_eq!(put("/page", None, b"raw"), StatusCode::CREATED);
        let r = req(&s, Method::GET, "/page", &[], vec![]);
        assert_eq!(
            r.header("content-type"),
            Some("application/octet-stream"),
            "{store}"
        );
        assert_eq!(put("/page", Some("text/css"), b"a{}"), StatusCode::CREATED);
        // The object carries the mark of a stored type (see store.rs).
        assert!(typed_mark(&s.root().join("page")), "{store}");
        assert!(!typed_mark(&s.root().join("blob")), "{store}");
        // Where it is kept: the xattr on the object, or the sidecar (not a key).
        let xattr = type_xattr(&s.root().join("page"));
        if store == "xattr" {
            assert_eq!(xattr.as_deref(), Some("text/css"));
        } else {
            assert_eq!(xattr, None);
            let side = std::fs::read_to_string(s.root().join(".ct-page")).unwrap();
            assert!(side.ends_with("\ntext/css"), "{side:?}");
        }
        // A restarted server (empty cache) reads it back.
        s.child_restart(&["--content-types", store]);
        assert!(s.temp_files().is_empty(), "{:?}", s.temp_files());
    }
}

/// Whether `path` carries the sticky bit (the server's mark of an object stored with a type).
fn typed_mark(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).unwrap().mode() & libc::S_ISVTX != 0
}

/// `ringshard_ops_total` of `op`, summed over the shards.
fn ops_total(s: &Server, op: &str) -> f64 {
    let r = req(s, Method::GET, "/metrics", &[], vec![]);
    let label = format!("op=\"{op}\"}}");
    String::from_utf8(r.body)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("ringshard_ops_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A metric's value in `/metrics`' text (the whole series name, labels included).
fn metric(s: &Server, series: &str) -> f64 {
    let r = req(s, Method::GET, "/metrics", &[], vec![]);
    let text = String::from_utf8(r.body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

fn content_type_marks_typed_objects_and_marks_older_ones_at_startup(engine: &'static str) {
    // An object stored with a type carries the mark; one without does not, and its lookup reads
    // no type.
    let s = Server::start(engine, &["--cache", "0"]);
    let h = [("content-type", "text/plain")];
    assert_eq!(
        req(&s, Method::PUT, "/t", &h, b"t".to_vec()).status,
        StatusCode::CREATED
    );
    assert_eq!(
        req(&s, Method::PUT, "/u", &[], b"u".to_vec()).status,
        StatusCode::CREATED
    );
    assert!(typed_mark(&s.root().join("t")));
    assert!(!typed_mark(&s.root().join("u")));
    assert!(s.root().join(".types-marked").exists());
    let before = metric(&s, "object_server_type_reads_total");
    let r = req(&s, Method::GET, "/u", &[], vec![]);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(metric(&s, "object_server_type_reads_total"), before);
    let r = req(&s, Method::GET, "/t", &[], vec![]);
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(metric(&s, "object_server_type_reads_total"), before + 1.0);
    drop(s);

    // A root written by an older server: a typed object without the mark, no marker file. The
    // server marks it at startup, and serves its type.
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let old = root.join("old");
    std::fs::write(&old, b"old").unwrap();
    std::fs::write(root.join("plain"), b"plain").unwrap();
    {
        use std::os::unix::ffi::OsStrExt;
        let p = std::ffi::CString::new(old.as_os_str().as_bytes()).unwrap();
        let ct = b"text/old";
        // SAFETY: NUL-terminated names; `ct` is live for the call and its length is passed.
        let rc = unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                c"user.ringshard.content_type".as_ptr(),
                ct.as_ptr().cast(),
                ct.len(),
                0,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    }
    let (child, addr) = spawn_server(&root, engine, &[], Stdio::null());
    struct Reaped(Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _reaped = Reaped(child);
    assert!(typed_mark(&old));
    assert!(!typed_mark(&root.join("plain")));
    assert!(root.join(".types-marked").exists());
    let r = rt().block_on(request(&addr, Method::GET, "/old", &[], vec![]));
    assert_eq!(r.header("content-type"), Some("text/old"));
    assert_eq!(r.body, b"old");
    let r = rt().block_on(request(&addr, Method::GET, "/plain", &[], vec![]));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
}

/// cachestat(2) (Linux 6.5): the pages of `path` in the page cache; `None` without it.
fn cached_pages(path: &Path) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    let range = [0u64, 0u64];
    let mut out = [0u64; 5];
    // SAFETY: cachestat reads `range` (off, len) and writes five u64 into `out`; both outlive
    // the call.
    let r = unsafe { libc::syscall(451, f.as_raw_fd(), range.as_ptr(), out.as_mut_ptr(), 0u32) };
    (r == 0).then_some(out[0])
}

/// Writes `data` to `path`, durably, and drops its pages from the page cache.
fn write_uncached(path: &Path, data: &[u8]) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::create(path).unwrap();
    (&f).write_all(data).unwrap();
    f.sync_all().unwrap();
    // SAFETY: a live descriptor; fadvise changes only the page cache.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
}

fn direct_is_chosen_by_the_page_cache(engine: &'static str) {
    let s = Server::start(engine, &[]);
    let (warm, cold) = (pattern(64 * 1024, 7), pattern(64 * 1024 + 100, 8));
    write_uncached(&s.root().join("warm"), &warm);
    write_uncached(&s.root().join("cold"), &cold);
    let Some(0) = cached_pages(&s.root().join("cold")) else {
        eprintln!("no cachestat, or the pages stayed: the page-cache checks are skipped");
        return;
    };
    assert_eq!(std::fs::read(s.root().join("warm")).unwrap(), warm);
    assert_eq!(cached_pages(&s.root().join("warm")), Some(16));
    let opens = |mode: &str| metric(&s, &format!("object_server_opens_total{{mode=\"{mode}\"}}"));
    let (b0, d0) = (opens("buffered"), opens("direct"));

    // Cached: read through the page cache (a buffered handle). Not cached: O_DIRECT, and the
    // page cache stays empty.
    let r = req(&s, Method::GET, "/warm", &[], vec![]);
    assert_eq!(r.body, warm);
    assert_eq!(opens("buffered"), b0 + 1.0);
    let r = req(&s, Method::GET, "/cold", &[], vec![]);
    assert_eq!(r.body, cold);
    assert!(opens("direct") >= d0 + 1.0);
    assert_eq!(
        cached_pages(&s.root().join("cold")),
        Some(0),
        "a cold read filled the cache"
    );

    // A HEAD finds its O_DIRECT handle in the handle cache and reads no body: not a second
    // read, so no promotion, no new handle, and the page cache stays empty.
    let promoted = metric(&s, "object_server_promoted_total");
    let (b1, d1) = (opens("buffered"), opens("direct"));
    let r = req(&s, Method::HEAD, "/cold", &[], vec![]);
    assert_eq!(r.status, StatusCode::OK);
    let len = cold.len().to_string();
    assert_eq!(r.header("content-length"), Some(len.as_str()));
    assert!(r.body.is_empty());
    assert_eq!(metric(&s, "object_server_promoted_total"), promoted);
    assert_eq!((opens("buffered"), opens("direct")), (b1, d1));
    assert_eq!(
        cached_pages(&s.root().join("cold")),
        Some(0),
        "a HEAD filled the cache"
    );
    // Nor a conditional GET answered 304 (its validator matches: no body).
    let etag = r.header("etag").expect("etag").to_string();
    let r = req(
        &s,
        Method::GET,
        "/cold",
        &[("if-none-match", etag.as_str())],
        vec![],
    );
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(metric(&s, "object_server_promoted_total"), promoted);
    assert_eq!((opens("buffered"), opens("direct")), (b1, d1));

    // Read again (its O_DIRECT handle found in the handle cache): promoted to a buffered handle,
    // and from now on in the page cache.
    let r = req(
        &s,
        Method::GET,
        "/cold",
        &[("range", "bytes=5000-70000")],
        vec![],
    );
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, &cold[5000..=65635]);
    assert_eq!(metric(&s, "object_server_promoted_total"), promoted + 1.0);
    assert!(cached_pages(&s.root().join("cold")).unwrap() > 0);
    let r = req(&s, Method::GET, "/cold", &[], vec![]);
    assert_eq!(r.body, cold);
    assert_eq!(metric(&s, "object_server_promoted_total"), promoted + 1.0);

    // Forced either way.
    drop(s);
    for (flag, direct) in [("never", false), ("always", true)] {
        let s = Server::start(engine, &["--direct", flag]);
        write_uncached(&s.root().join("cold"), &cold);
        let r = req(&s, Method::GET, "/cold", &[], vec![]);
        assert_eq!(r.body, cold);
        let mode = if direct { "direct" } else { "buffered" };
        assert_eq!(
            metric(&s, &format!("object_server_opens_total{{mode=\"{mode}\"}}")),
            1.0
        );
        assert_eq!(
            cached_pages(&s.root().join("cold")) == Some(0),
            direct,
            "--direct {flag}"
        );
    }
}

impl Server {
    /// Starts another server on the same root (with `types`), and checks that it serves
    /// `/page` with the type stored by this one.
    fn child_restart(&self, types: &[&str]) {
        /// Kills and reaps the child however the check ends.
        struct Reaped(Child);
        impl Drop for Reaped {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let (child, addr) = spawn_server(&self.root(), self.engine, types, Stdio::null());
        let _reaped = Reaped(child);
        let r = rt().block_on(request(&addr, Method::GET, "/page", &[], vec![]));
        assert_eq!(
            r.header("content-type"),
            Some("text/css"),
            "after a restart"
        );
    }
}

fn conditional_get_and_head(engine: &'static str) {
    let s = Server::start(engine, &[]);
    req(&s, Method::PUT, "/c", &[], pattern(100, 1));
    let h = req(&s, Method::HEAD, "/c", &[], vec![]);
    let etag = h.header("etag").unwrap().to_string();
    let past = "Sun, 06 Nov 1994 08:49:37 GMT";
    let future = "Fri, 01 Jan 2100 00:00:00 GMT";
    let weak = format!("W/{etag}");
    let cases: &[(&str, &str, StatusCode)] = &[
        ("if-match", &etag, StatusCode::OK),
        ("if-match", "*", StatusCode::OK),
        ("if-match", "\"other\"", StatusCode::PRECONDITION_FAILED),
        // If-Match compares strongly: a weak tag never matches.
        ("if-match", &weak, StatusCode::PRECONDITION_FAILED),
        ("if-unmodified-since", future, StatusCode::OK),
        ("if-unmodified-since", past, StatusCode::PRECONDITION_FAILED),
        ("if-unmodified-since", "not a date", StatusCode::OK),
        ("if-modified-since", past, StatusCode::OK),
        ("if-modified-since", future, StatusCode::NOT_MODIFIED),
        ("if-modified-since", "not a date", StatusCode::OK),
        ("if-none-match", &weak, StatusCode::NOT_MODIFIED),
        ("if-none-match", "*", StatusCode::NOT_MODIFIED),
    ];
    for (name, value, want) in cases {
        for m in [Method::GET, Method::HEAD] {
            let r = req(&s, m.clone(), "/c", &[(name, value)], vec![]);
            assert_eq!(r.status, *want, "{m} {name}: {value}");
        }
    }
    // The RFC's order: If-Match decides before If-Unmodified-Since, If-None-Match before
    // If-Modified-Since.
    let r = req(
        &s,
        Method::GET,
        "/c",
        &[("if-match", &etag), ("if-unmodified-since", past)],
        vec![],
    );
    assert_eq!(r.status, StatusCode::OK);
    let r = req(
        &s,
        Method::GET,
        "/c",
        &[
            ("if-none-match", "\"other\""),
            ("if-modified-since", future),
        ],
        vec![],
    );
    assert_eq!(r.status, StatusCode::OK);
    // Last-Modified itself is "not modified since".
    let lm = h.header("last-modified").unwrap().to_string();
    let r = req(&s, Method::GET, "/c", &[("if-modified-since", &lm)], vec![]);
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    // A missing key is a 404 whatever the conditions.
    let r = req(&s, Method::GET, "/none", &[("if-match", "*")], vec![]);
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

fn conditional_put_and_delete(engine: &'static str) {
    let s = Server::start(engine, &[]);
    let inm = [("if-none-match", "*")];
    // Create-only: the first wins, the second is a 412 and changes nothing.
    let r = req(&s, Method::PUT, "/k", &inm, b"one".to_vec());
    assert_eq!(r.status, StatusCode::CREATED);
    let etag1 = r.header("etag").unwrap().to_string();
    let r = req(&s, Method::PUT, "/k", &inm, b"two".to_vec());
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(std::fs::read(s.root().join("k")).unwrap(), b"one");
    // If-Match: replace only the version named.
    let r = req(
        &s,
        Method::PUT,
        "/k",
        &[("if-match", "\"stale\"")],
        b"three".to_vec(),
    );
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let r = req(
        &s,
        Method::PUT,
        "/k",
        &[("if-match", &etag1)],
        b"four".to_vec(),
    );
    assert_eq!(r.status, StatusCode::CREATED);
    let etag2 = r.header("etag").unwrap().to_string();
    assert_ne!(etag1, etag2);
    assert_eq!(
        req(&s, Method::GET, "/k", &[], vec![]).header("etag"),
        Some(etag2.as_str()),
        "a PUT's ETag is the one GET serves"
    );
    let r = req(
        &s,
        Method::PUT,
        "/k",
        &[("if-match", &etag1)],
        b"five".to_vec(),
    );
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    // If-Match on a missing key: 412, nothing created.
    let r = req(&s, Method::PUT, "/new", &[("if-match", "*")], b"x".to_vec());
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    // If-Unmodified-Since on PUT.
    let past = "Sun, 06 Nov 1994 08:49:37 GMT";
    let r = req(
        &s,
        Method::PUT,
        "/k",
        &[("if-unmodified-since", past)],
        b"six".to_vec(),
    );
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(std::fs::read(s.root().join("k")).unwrap(), b"four");
    // DELETE: If-Match false, then true.
    let r = req(&s, Method::DELETE, "/k", &[("if-match", &etag1)], vec![]);
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    assert!(s.root().join("k").exists());
    let r = req(&s, Method::DELETE, "/k", &[("if-match", &etag2)], vec![]);
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(s.objects(), Vec::<String>::new());
    assert!(s.temp_files().is_empty());

    // Concurrent create-only PUTs of one key: exactly one 201.
    let rt = rt();
    for round in 0..3 {
        let key = format!("/race{round}");
        let statuses = rt.block_on(async {
            let mut tasks = Vec::new();
            for i in 0..8u64 {
                let (addr, key) = (s.addr.clone(), key.clone());
                tasks.push(tokio::spawn(async move {
                    let body = pattern(256 << 10, i);
                    let st = request(&addr, Method::PUT, &key, &[("if-none-match", "*")], body)
                        .await
                        .status;
                    (st, i)
                }));
            }
            let mut v = Vec::new();
            for t in tasks {
                v.push(t.await.unwrap());
            }
            v
        });
        let won: Vec<u64> = statuses
            .iter()
            .filter(|(st, _)| *st == StatusCode::CREATED)
            .map(|(_, i)| *i)
            .collect();
        assert_eq!(won.len(), 1, "round {round}: {statuses:?}");
        assert!(statuses
            .iter()
            .all(|(st, _)| *st == StatusCode::CREATED || *st == StatusCode::PRECONDITION_FAILED));
        let got = std::fs::read(s.root().join(&key[1..])).unwrap();
        assert!(
            got == pattern(256 << 10, won[0]),
            "round {round}: not the winner's body"
        );
    }
    assert!(s.temp_files().is_empty(), "{:?}", s.temp_files());
}

/// Reads until the server closes the connection (EOF or reset), within `bound`; what it sent.
fn read_until_closed(s: &mut TcpStream, bound: Duration) -> (String, Duration) {
    let t0 = Instant::now();
    s.set_read_timeout(Some(bound)).unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "not closed within {bound:?}: {e} (got {:?})",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), t0.elapsed())
}

fn header_and_idle_timeouts_close_the_connection(engine: &'static str) {
    // Half a header, then nothing: closed by the header timeout (1 s), not the idle one.
    let s = Server::start(engine, &["--header-timeout", "1", "--idle-timeout", "600"]);
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .unwrap();
    let (_, took) = read_until_closed(&mut c, Duration::from_secs(30));
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    // An idle connection (nothing sent) lives past the header timeout...
    let mut idle = TcpStream::connect(&s.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut b = [0u8; 1];
    let e = idle.read(&mut b).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{e}"
    );
    // ... and serves a request afterwards.
    idle.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let ans = read_status_and_headers(&mut idle);
    assert!(ans.starts_with("HTTP/1.1 404"), "{ans}");

    // With the idle timeout short: a connection with nothing to say is closed, also after a
    // request on it was answered.
    let s = Server::start(engine, &["--header-timeout", "600", "--idle-timeout", "1"]);
    let mut c = TcpStream::connect(&s.addr).unwrap();
    let (_, took) = read_until_closed(&mut c, Duration::from_secs(30));
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let (got, _) = read_until_closed(&mut c, Duration::from_secs(30));
    assert!(got.starts_with("HTTP/1.1 404"), "{got}");
}

fn a_client_that_stops_mid_body_is_answered_408_and_its_temp_file_removed(engine: &'static str) {
    let s = Server::start(engine, &["--body-timeout", "1"]);
    let mut c = TcpStream::connect(&s.addr).unwrap();
    let head = format!(
        "PUT /stalled HTTP/1.1\r\nHost: {}\r\nContent-Length: 100000\r\n\r\n",
        s.addr
    );
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(&pattern(1000, 1)).unwrap();
    // The client sends nothing more and keeps the connection open.
    let (got, took) = read_until_closed(&mut c, Duration::from_secs(30));
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(
        took >= Duration::from_millis(900),
        "answered after {took:?}"
    );
    // The temporary file is gone by the time of the answer; no object.
    assert!(s.temp_files().is_empty(), "{:?}", s.temp_files());
    assert!(s.objects().is_empty(), "{:?}", s.objects());
}

/// The body timeout is the longest gap between a body's pieces, not a limit on the whole body:
/// an upload that keeps coming, slower than the timeout for the whole but never pausing that
/// long, is stored (on the shards engine, a large body goes straight into its file with
/// `recv_file`, whose deadline covers a whole receive). Paced by the client: a 10 KiB piece
/// every 100 ms for 2.4 s, against a 1 s timeout.
fn a_slow_steady_upload_is_not_cut_off_by_the_body_timeout(engine: &'static str) {
    let s = Server::start(engine, &["--body-timeout", "1"]);
    let mut c = TcpStream::connect(&s.addr).unwrap();
    let body = pattern(240 << 10, 7);
    let head = format!(
        "PUT /slow HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
        s.addr,
        body.len()
    );
    c.write_all(head.as_bytes()).unwrap();
    for piece in body.chunks(10 << 10) {
        std::thread::sleep(Duration::from_millis(100));
        c.write_all(piece).unwrap();
    }
    let ans = read_response(&mut c);
    assert!(ans.starts_with("HTTP/1.1 201"), "{ans}");
    let r = req(&s, Method::GET, "/slow", &[], vec![]);
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body == body, "the slow upload's body differs");
    assert!(s.temp_files().is_empty(), "{:?}", s.temp_files());
}

fn connections_over_the_cap_are_answered_503(engine: &'static str) {
    let s = Server::start(engine, &["--max-connections", "1"]);
    // The one allowed connection: served, and kept open.
    let mut first = TcpStream::connect(&s.addr).unwrap();
    first
        .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let ans = read_response(&mut first);
    assert!(ans.starts_with("HTTP/1.1 404"), "{ans}");
    // A second one while it is open: 503, closed.
    let mut second = TcpStream::connect(&s.addr).unwrap();
    second
        .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let (got, _) = read_until_closed(&mut second, Duration::from_secs(30));
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    assert!(got.contains("Retry-After: 1"), "{got}");
    // The first still works; once it closes, a new connection is served.
    first
        .write_all(b"GET /y HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let ans = read_response(&mut first);
    assert!(ans.starts_with("HTTP/1.1 404"), "{ans}");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Raw: a 503 may come before the request is written (an HTTP client may call that a
        // failed connection); the server reads and drops what follows it.
        let ans = raw_exchange(&s.addr, &[b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"]);
        if ans.starts_with("HTTP/1.1 404") {
            break;
        }
        assert!(ans.starts_with("HTTP/1.1 503"), "{ans}");
        assert!(Instant::now() < deadline, "the slot never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn symlinks_in_the_root_are_never_followed(engine: &'static str) {
    let s = Server::start(engine, &[]);
    let secret = s.outer.path().join("secret");
    std::fs::write(&secret, b"outside the root").unwrap();
    let root = s.root();
    std::os::unix::fs::symlink(&secret, root.join("abs")).unwrap();
    std::os::unix::fs::symlink("../secret", root.join("rel")).unwrap();
    std::os::unix::fs::symlink(s.outer.path(), root.join("dir")).unwrap();
    // A FIFO is not an object either (and opening it must not hang the server).
    let fifo = std::ffi::CString::new(root.join("fifo").to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    for key in ["/abs", "/rel", "/dir", "/fifo"] {
        for m in [Method::GET, Method::HEAD, Method::DELETE] {
            let r = req(&s, m.clone(), key, &[], vec![]);
            assert!(
                r.status == StatusCode::NOT_FOUND || r.status == StatusCode::FORBIDDEN,
                "{m} {key}: {}",
                r.status
            );
            assert!(
                !String::from_utf8_lossy(&r.body).contains("outside"),
                "{m} {key}"
            );
        }
    }
    assert!(root.join("abs").is_symlink() && root.join("rel").is_symlink());
    // A listing shows none of them.
    let r = req(&s, Method::GET, "/?prefix=", &[], vec![]);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["keys"], serde_json::json!([]));
    // A PUT to a symlinked key replaces the link, never writes through it.
    let r = req(&s, Method::PUT, "/abs", &[], b"new".to_vec());
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(std::fs::read(&secret).unwrap(), b"outside the root");
    assert!(!root.join("abs").is_symlink());
    assert_eq!(req(&s, Method::GET, "/abs", &[], vec![]).body, b"new");
    // A symlink swapped in behind the server's back (after a cached lookup was dropped by a
    // DELETE) is not followed either.
    assert_eq!(
        req(&s, Method::DELETE, "/abs", &[], vec![]).status,
        StatusCode::NO_CONTENT
    );
    std::os::unix::fs::symlink(&secret, root.join("abs")).unwrap();
    assert_eq!(
        req(&s, Method::GET, "/abs", &[], vec![]).status,
        StatusCode::NOT_FOUND
    );
}

fn listing_by_prefix_is_json(engine: &'static str) {
    let s = Server::start(engine, &["--list-max", "3", "--content-types", "sidecar"]);
    for k in ["a1", "a2", "ab", "b1", "b2", "a b", "a\"q"] {
        let path = format!("/{}", k.replace(' ', "%20").replace('"', "%22"));
        let r = req(
            &s,
            Method::PUT,
            &path,
            &[("content-type", "text/plain")],
            b"x".to_vec(),
        );
        assert_eq!(r.status, StatusCode::CREATED, "{k}");
    }
    let list = |q: &str| {
        let r = req(&s, Method::GET, &format!("/?{q}"), &[], vec![]);
        assert_eq!(r.status, StatusCode::OK, "{q}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let keys: Vec<String> = v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect();
        (keys, v["truncated"].as_bool().unwrap(), v["prefix"].clone())
    };
    assert_eq!(
        list("prefix=b"),
        (vec!["b1".into(), "b2".into()], false, "b".into())
    );
    assert_eq!(
        list("prefix=a%20"),
        (vec!["a b".into()], false, "a ".into())
    );
    assert_eq!(
        list("prefix=a%22"),
        (vec!["a\"q".into()], false, "a\"".into())
    );
    assert_eq!(list("prefix=zz"), (vec![], false, "zz".into()));
    // Sorted, cut at --list-max.
    assert_eq!(
        list("prefix=a"),
        (
            vec!["a b".into(), "a\"q".into(), "a1".into()],
            true,
            "a".into()
        )
    );
    assert!(list("x=1&prefix=").1);
    // Sidecars and temporary files are not keys.
    assert!(s.objects().iter().any(|o| o.starts_with(".ct-")));
    let (all, _, _) = list("prefix=.");
    assert!(all.is_empty(), "{all:?}");
    let r = req(&s, Method::HEAD, "/?prefix=a", &[], vec![]);
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());
    assert_eq!(
        req(&s, Method::PUT, "/?prefix=a", &[], vec![]).status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

fn error_bodies_name_no_server_path_or_errno(engine: &'static str) {
    let s = Server::start(engine, &["--max-object", "10"]);
    req(&s, Method::PUT, "/e", &[], b"12345".to_vec());
    let mut answers = vec![
        req(&s, Method::GET, "/missing", &[], vec![]),
        req(&s, Method::GET, "/%2e%2e", &[], vec![]),
        req(&s, Method::POST, "/e", &[], vec![]),
        req(&s, Method::GET, "/e", &[("if-match", "\"x\"")], vec![]),
        req(&s, Method::GET, "/e", &[("range", "bytes=99-")], vec![]),
        req(&s, Method::PUT, "/big", &[], pattern(100, 1)),
    ];
    // An I/O failure: the root is gone (renamed away) under the server.
    let moved = s.outer.path().join("moved");
    std::fs::rename(s.root(), &moved).unwrap();
    let r = req(&s, Method::PUT, "/e2", &[], b"x".to_vec());
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    answers.push(r);
    let r = req(&s, Method::GET, "/?prefix=", &[], vec![]);
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    answers.push(r);
    std::fs::rename(&moved, s.root()).unwrap();
    for r in &answers {
        assert!(r.status.as_u16() >= 400, "{}", r.status);
        let body = String::from_utf8_lossy(&r.body);
        assert!(!body.is_empty(), "{}", r.status);
        for bad in ["/", "errno", "os error", "No such file", "root"] {
            assert!(
                !body.contains(bad),
                "{}: {body:?} contains {bad:?}",
                r.status
            );
        }
    }
    // The detail went to the server's log instead.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match s.log.recv_timeout(left) {
            Ok(l) if l.contains("ERROR") && l.contains("No such file") => break,
            Ok(_) => {}
            Err(e) => panic!("no error detail in the log: {e}"),
        }
    }
}

fn access_log_has_one_event_per_request(engine: &'static str) {
    let s = Server::start(engine, &["--access-log"]);
    req(&s, Method::PUT, "/logged", &[], pattern(3000, 1));
    req(&s, Method::GET, "/logged", &[], vec![]);
    req(&s, Method::GET, "/nope", &[], vec![]);
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = s
            .log
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("{e}: {lines:?}"));
        if l.contains(" access:") {
            lines.push(l);
        }
    }
    let want = [
        ("method=PUT", "key=\"logged\"", "status=201", "bytes=3000"),
        ("method=GET", "key=\"logged\"", "status=200", "bytes=3000"),
        ("method=GET", "key=\"nope\"", "status=404", "bytes="),
    ];
    for (l, (m, k, st, b)) in lines.iter().zip(want) {
        for part in [m, k, st, b, "us="] {
            assert!(l.contains(part), "{l:?} lacks {part:?}");
        }
    }
    // Without the flag: no access events.
    let quiet = Server::start(engine, &[]);
    req(&quiet, Method::GET, "/nope", &[], vec![]);
    quiet.child_kill();
    let rest: Vec<String> = quiet.log.try_iter().collect();
    assert!(!rest.iter().any(|l| l.contains(" access:")), "{rest:?}");
}

impl Server {
    /// Stops the server and waits for it (its stderr is then complete).
    fn child_kill(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::metadata(format!("/proc/{}/status", self.child.id()))
            .and_then(|_| std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())))
            .is_ok_and(|s| !s.contains(") Z "))
        {
            assert!(Instant::now() < deadline, "the server did not die");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn engine_flag_takes_both_engines_and_refuses_others() {
    for engine in ["tokio", "shards"] {
        let s = Server::start(engine, &[]);
        assert_eq!(
            req(&s, Method::GET, "/none", &[], vec![]).status,
            StatusCode::NOT_FOUND
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(server_bin())
        .arg("--root")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--engine", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid value 'nope'") && err.contains("tokio") && err.contains("shards"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "it must not listen");
}

/// Reads `n` whole responses from `s` (each: head, then `Content-Length` bytes).
fn read_responses(s: &mut TcpStream, n: usize) -> Vec<String> {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    (0..n).map(|_| read_response(s)).collect()
}

fn keep_alive_serves_many_requests_on_one_connection(engine: &'static str) {
    let s = Server::start(engine, &[]);
    let small = pattern(3000, 7);
    let large = pattern(2 << 20, 8);
    assert_eq!(
        req(&s, Method::PUT, "/small", &[], small.clone()).status,
        StatusCode::CREATED
    );
    assert_eq!(
        req(&s, Method::PUT, "/large", &[], large.clone()).status,
        StatusCode::CREATED
    );
    // One hyper connection: requests one after the other, each answered in full, the connection
    // kept (hyper's client reuses it: a closed one would fail the next send).
    rt().block_on(async {
        let stream = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        for i in 0..50 {
            let (m, path, want): (Method, &str, &[u8]) = match i % 4 {
                0 => (Method::GET, "/small", &small),
                1 => (Method::GET, "/large", &large),
                2 => (Method::HEAD, "/large", b""),
                _ => (Method::GET, "/missing", b"no such key\n"),
            };
            let r = Request::builder()
                .method(m.clone())
                .uri(path)
                .header("host", &s.addr)
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = tx
                .send_request(r)
                .await
                .expect("send on the kept connection");
            let len = resp.headers().get("content-length").cloned();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(body == want, "request {i}: {m} {path}: body differs");
            if m == Method::HEAD {
                assert_eq!(len.unwrap(), (2usize << 20).to_string().as_str());
            }
            tx.ready().await.expect("the connection is kept");
        }
    });
    // HTTP/1.0 asking for keep-alive: kept (two requests on one connection), and said so. Every
    // answer has a Date.
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    for _ in 0..2 {
        c.write_all(b"GET /small HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let got = read_response(&mut c).to_ascii_lowercase();
        assert!(got.contains(" 200 ok\r\n"), "{got}");
        assert!(got.contains("\r\nconnection: keep-alive\r\n"), "{got}");
        assert!(got.contains("\r\ndate: "), "{got}");
    }
    // A target in absolute form names the same object.
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "GET http://{}/small HTTP/1.1\r\nHost: {}\r\n\r\n",
        s.addr, s.addr
    );
    c.write_all(head.as_bytes()).unwrap();
    let got = read_response(&mut c);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.ends_with(&*String::from_utf8_lossy(&small)));
    // HTTP/1.0 without keep-alive, and 1.1 with `Connection: close`: answered, then closed.
    for head in [
        "GET /small HTTP/1.0\r\n\r\n",
        "GET /small HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ] {
        let mut c = TcpStream::connect(&s.addr).unwrap();
        c.write_all(head.as_bytes()).unwrap();
        let (got, _) = read_until_closed(&mut c, Duration::from_secs(30));
        assert!(got.contains(" 200 OK\r\n"), "{head:?}: {got}");
        assert!(got.ends_with(&String::from_utf8_lossy(&small).into_owned()));
    }
}

fn pipelined_requests_are_answered_in_order(engine: &'static str) {
    let s = Server::start(engine, &["--chunk", "65536"]);
    let bodies: Vec<Vec<u8>> = (0..4)
        .map(|i| pattern(1000 + i * 70_000, 20 + i as u64))
        .collect();
    for (i, b) in bodies.iter().enumerate() {
        assert_eq!(
            req(&s, Method::PUT, &format!("/p{i}"), &[], b.clone()).status,
            StatusCode::CREATED
        );
    }
    // Several requests in one write (GETs of small and streamed objects, a 404, a HEAD, a PUT
    // with its body, a GET of what that PUT stored): the answers come in the request order.
    let mut c = TcpStream::connect(&s.addr).unwrap();
    let mut w = Vec::new();
    for i in [3, 0, 2, 1] {
        w.extend_from_slice(format!("GET /p{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    }
    w.extend_from_slice(b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n");
    w.extend_from_slice(b"HEAD /p2 HTTP/1.1\r\nHost: a\r\n\r\n");
    w.extend_from_slice(b"PUT /pn HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nfresh");
    w.extend_from_slice(b"GET /pn HTTP/1.1\r\nHost: a\r\n\r\n");
    c.write_all(&w).unwrap();
    let mut got = read_responses(&mut c, 5);
    // The HEAD's answer says the object's length and has no body.
    got.push(read_status_and_headers(&mut c));
    got.extend(read_responses(&mut c, 2));
    for (k, i) in [3usize, 0, 2, 1].into_iter().enumerate() {
        assert!(
            got[k].starts_with("HTTP/1.1 200"),
            "answer {k}: {}",
            &got[k][..40]
        );
        assert!(
            got[k].ends_with(&*String::from_utf8_lossy(&bodies[i])),
            "answer {k} is not /p{i}"
        );
    }
    assert!(got[4].starts_with("HTTP/1.1 404"), "{}", got[4]);
    assert!(got[5].starts_with("HTTP/1.1 200"), "{}", got[5]);
    let len = bodies[2].len().to_string();
    assert!(got[5]
        .to_ascii_lowercase()
        .contains(&format!("content-length: {len}")));
    assert!(got[6].starts_with("HTTP/1.1 201"), "{}", got[6]);
    assert!(
        got[7].starts_with("HTTP/1.1 200") && got[7].ends_with("fresh"),
        "{}",
        got[7]
    );
    // Requests split at awkward places (inside a head, between head and body) are the same.
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.set_nodelay(true).unwrap();
    let all = b"GET /p0 HTTP/1.1\r\nHost: a\r\n\r\nPUT /pm HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /pm HTTP/1.1\r\nHost: a\r\n\r\n";
    for piece in all.chunks(7) {
        c.write_all(piece).unwrap();
    }
    let got = read_responses(&mut c, 3);
    assert!(got[0].ends_with(&*String::from_utf8_lossy(&bodies[0])));
    assert!(got[1].starts_with("HTTP/1.1 201"), "{}", got[1]);
    assert!(got[2].ends_with("abc"), "{}", got[2]);
}

fn sigterm_closes_idle_keep_alive_connections_at_once(engine: &'static str) {
    // A grace period far longer than the test's bound: an idle connection must not hold the
    // stop for it.
    let mut s = Server::start(engine, &["--grace", "600"]);
    let mut idle = TcpStream::connect(&s.addr).unwrap();
    idle.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let ans = read_response(&mut idle);
    assert!(ans.starts_with("HTTP/1.1 404"), "{ans}");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(s.child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let (rest, _) = read_until_closed(&mut idle, Duration::from_secs(60));
    assert!(rest.is_empty(), "{rest}");
    s.exits_zero();
}

fn a_client_that_stops_reading_a_large_body_is_cut_off(engine: &'static str) {
    // The send timeout is the idle one; 32 MiB is far more than loopback's socket buffers hold,
    // so the answer's send (from the file, without a user-space copy) stalls when its client
    // reads nothing.
    let s = Server::start(engine, &["--idle-timeout", "1", "--access-log"]);
    let big = pattern(32 << 20, 5);
    assert_eq!(
        req(&s, Method::PUT, "/big", &[], big.clone()).status,
        StatusCode::CREATED
    );
    let mut stalled = TcpStream::connect(&s.addr).unwrap();
    stalled
        .write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    // Meanwhile another client gets the same object whole.
    assert!(req(&s, Method::GET, "/big", &[], vec![]).body == big);
    // The stalled answer ends when its send has made no progress for the timeout: both GETs
    // are in the access log (an answer's event comes when it is over, sent or not)...
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut gets = 0;
    while gets < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = s.log.recv_timeout(left).expect("the stalled answer ends");
        if l.contains(" access:") && l.contains("method=GET") && l.contains("key=\"big\"") {
            gets += 1;
        }
    }
    // ... and its client finds the answer cut short and the connection closed.
    let mut got = Vec::new();
    stalled
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut b = vec![0u8; 1 << 16];
    loop {
        match stalled.read(&mut b) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("not closed: {e} after {} bytes", got.len()),
        }
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert!(got.len() < big.len(), "{} bytes: not cut short", got.len());
}

/// Every test above runs against both engines: "both pass the same integration tests".
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod tokio_engine {
            $( #[test] fn $name() { super::$name("tokio") } )*
        }
        mod shards_engine {
            $( #[test] fn $name() { super::$name("shards") } )*
        }
    };
}

on_both_engines!(
    put_get_round_trips_of_several_sizes,
    ranges_partial_content_and_416,
    head_etag_304_delete_404_405,
    traversal_and_bad_keys_are_400_and_touch_nothing,
    too_large_bodies_are_413_with_no_temp_file,
    concurrent_puts_of_one_key_leave_exactly_one_body,
    metrics_are_prometheus_text,
    sigterm_lets_an_in_flight_upload_finish_and_exits_zero,
    direct_reads_serve_the_same_bytes,
    declared_too_large_without_expect_still_gets_its_413,
    an_abandoned_upload_leaves_no_temp_file_and_no_object,
    content_type_is_stored_at_put_and_returned,
    content_type_marks_typed_objects_and_marks_older_ones_at_startup,
    direct_is_chosen_by_the_page_cache,
    conditional_get_and_head,
    conditional_put_and_delete,
    header_and_idle_timeouts_close_the_connection,
    a_client_that_stops_mid_body_is_answered_408_and_its_temp_file_removed,
    a_slow_steady_upload_is_not_cut_off_by_the_body_timeout,
    connections_over_the_cap_are_answered_503,
    symlinks_in_the_root_are_never_followed,
    listing_by_prefix_is_json,
    error_bodies_name_no_server_path_or_errno,
    access_log_has_one_event_per_request,
    keep_alive_serves_many_requests_on_one_connection,
    pipelined_requests_are_answered_in_order,
    sigterm_closes_idle_keep_alive_connections_at_once,
    a_client_that_stops_reading_a_large_body_is_cut_off,
);
