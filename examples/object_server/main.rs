//! An HTTP/1.1 object store on ringshard: `GET`/`HEAD`/`PUT`/`DELETE /<key>` on files in `--root`,
//! `GET /?prefix=P` (the keys as JSON) and `GET /metrics` (the executor's stats in the Prometheus
//! text format).
//!
//! ```text
//! cargo run --release --example object_server -- --root DIR --listen 127.0.0.1:8080
//! ```
//!
//! The first line on stdout is `listening on ADDR` (so `--listen 127.0.0.1:0` works for tests).
//!
//! # Layout
//!
//! The HTTP semantics are transport-independent, so every engine serves the same protocol:
//! - `http`: keys, routes, conditional headers, ranges, validators, replies and their body plans
//!   (`Empty`, bytes, or "object O bytes a..b"), error bodies, the listing's JSON, the access
//!   log's event;
//! - `store`: the files, through ringshard (lookups, the handle cache, uploads and their commit,
//!   Content-Types, listing);
//! - `service`: one request from its parts (method, path, query, headers, a body source) to
//!   its `http::Reply`;
//! - `tokio_engine`: `--engine tokio` (the default), hyper on tokio as the transport (timeouts,
//!   connection cap, streaming bodies): the example of embedding ringshard in a tokio server;
//! - `shards_engine`: `--engine shards`, HTTP/1.1 (httparse) on ringshard's own sockets, every
//!   connection a task on the shard that accepted it (keep-alive, pipelining).
//!
//! An engine needs only its transport: parse a request
//! into `service::Request` (method, path, query, `HeaderMap`), implement
//! `store::BodySource` over its body (the body timeout lives there: `BodyError::Timeout` makes
//! the 408 and removes the upload), give the `store::Store` a `store::Blocking` runner, call
//! `service::handle`, and write the `http::Reply`: its status and headers, then its
//! `http::BodyPlan` (`File { file, start, end }`: read with `Store::read_range` and
//! `Store::take_read`, or hand the range to a file-to-socket operation), closing the connection
//! if `Answer::close`; then call `http::access_event`. Connection timeouts and the cap are the
//! transport's (see `tokio_engine` for what they mean).
//!
//! # Behaviour
//!
//! - Keys are one path segment: 1 to 200 bytes of UTF-8 after percent-decoding, no `/`, `\`, NUL or
//!   other control characters, not starting with `.` (the server's own files start with `.`).
//!   Anything else (`..`, absolute paths, `%2e%2e`, `%2f`, `%00`, an empty key, `/` without a
//!   `prefix` query) is a 400 and touches nothing.
//! - Symlinks are never followed: a key names one entry of the root, `lstat`ed before it is
//!   opened (a symlink, directory or FIFO there is a 404) and opened with O_NOFOLLOW (a symlink
//!   swapped in meanwhile fails the open: 404). The root path itself is trusted.
//! - `GET` serves the whole object (200) or one range (`Range: bytes=a-b`, `bytes=a-`,
//!   `bytes=-n`: 206 with `Content-Range`; an unsatisfiable range is a 416 with
//!   `Content-Range: bytes */LEN`; several ranges or a malformed header serve the whole object).
//!   `ETag` is `"<inode>-<size>-<mtime ns>"` (hex), `Last-Modified` an HTTP date, `Content-Type`
//!   the one given at PUT (default `application/octet-stream`). Conditional headers as RFC 9110
//!   section 13.2.2 orders them: `If-Match` (412 unless it names the ETag), else
//!   `If-Unmodified-Since` (412 if modified after); then `If-None-Match` (304 for GET/HEAD, 412
//!   for PUT/DELETE, if it names the ETag or is `*`), else `If-Modified-Since` (304 if not
//!   modified since); a non-matching `If-Range` serves the whole object. A body over 64 KiB
//!   goes from the page cache to the socket with ringshard's `send_file` (no user-space copy);
//!   one from an O_DIRECT handle larger than one chunk (`--chunk`, 512 KiB) is streamed chunk by
//!   chunk with one read ahead.
//! - `PUT` streams the body into a `.tmp-` file in `--root` with ringshard writes, stores its
//!   `Content-Type` (see `store`: an xattr, or a sidecar where xattrs are refused), fsyncs it,
//!   renames it over the key and fsyncs the directory: a 201 means the object is durable, and
//!   readers see the old object or the new one, never part of one. Conditional PUTs are checked
//!   before the upload and again under the key's commit lock just before the rename, which every
//!   write of the key takes; `If-None-Match: *` renames with RENAME_NOREPLACE (a 412 if the key
//!   exists, also against a file made behind the server's back). A body over `--max-object` is a
//!   413; a failed, abandoned or timed-out upload removes its temporary file. Temporary files left
//!   by a crash are removed at startup.
//! - `DELETE` is a 204 (the directory is fsynced), a 404, or a 412 (conditional headers).
//! - `GET /?prefix=P` (percent-decoded; `+` is a plus) answers
//!   `{"prefix":P,"keys":[...],"truncated":B}`: the keys starting with P, sorted, at most
//!   `--list-max`.
//! - Errors answer a fixed text (`no such key`, `internal error`, ...), never a server path or an
//!   errno; the detail goes to the log (stderr).
//! - Timeouts (`--header-timeout`, `--idle-timeout`, `--body-timeout`) and the connection cap
//!   (`--max-connections`, 503 beyond it): see `tokio_engine`.
//! - `--access-log`: one `tracing` event per request on stderr (target `access`: method, key,
//!   status, bytes, µs).
//! - Open handles and metadata are cached by key (`--cache` entries, least recently used out); the
//!   server owns `--root`, and its own `PUT`/`DELETE` invalidate the entry. Changes made to the
//!   directory behind the server's back are not seen while an entry is cached.
//! - O_DIRECT is chosen per object (`--direct auto`, the default): a handle-cache miss asks the
//!   kernel (cachestat) how much of the object is in the page cache; cached, the object is read
//!   through the page cache (and spliced to the socket); not cached, through an O_DIRECT handle,
//!   so a cold set read once does not fill the page cache. An O_DIRECT handle found again in the
//!   handle cache is replaced by a buffered one (the object is being re-read). `--direct`
//!   (`always`) forces O_DIRECT for objects of at least `--direct-min` bytes (default 4 KiB),
//!   `--direct never` the page cache. Writes stay buffered (the fsync before the rename makes
//!   them durable). `/metrics` counts the handles opened each way (`object_server_opens_total`).
//! - A Content-Type is read (an xattr, on the blocking pool) only for objects whose mode carries
//!   the sticky bit, which a PUT with a type sets; a root is scanned once at startup to mark
//!   objects typed by older servers (the marker file `.types-marked`; see `store`).
//! - SIGINT/SIGTERM: stop accepting, let in-flight requests finish (at most `--grace` seconds),
//!   then shut the executor down and exit 0.

mod http;
mod service;
mod shards_engine;
mod store;
mod tokio_engine;

use clap::Parser;
use ringshard::Executor;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The transports the server can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Engine {
    /// hyper's HTTP/1.1 on a tokio runtime.
    Tokio,
    /// ringshard's sockets: every connection a task on the shard that accepted it.
    Shards,
}

#[derive(Parser, Debug)]
#[command(about = "An HTTP object store on ringshard")]
struct Args {
    /// Directory holding the objects (one file per key).
    #[arg(long)]
    root: PathBuf,
    /// Address to listen on (port 0 picks one; the bound address is printed first).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The transport (the HTTP semantics are the same on every engine).
    #[arg(long, value_enum, default_value_t = Engine::Tokio)]
    engine: Engine,
    /// ringshard shards. Default: one per CPU this process may run on. With `--engine shards`
    /// each shard serves its own connections (thread per core); with `--engine tokio` the
    /// shards do the file I/O and send bodies (send_file on the shard thread), tokio's workers
    /// the rest (measured: hot 1 MiB 0.84x nginx with 1 shard, 0.96x with 2, 2 CPUs).
    #[arg(long)]
    shards: Option<usize>,
    /// When objects are read with O_DIRECT: `auto` (per object: O_DIRECT when the object is not
    /// in the page cache at open, promoted to the page cache when read again), `always` (every
    /// object of at least --direct-min bytes; `--direct` alone), `never`.
    #[arg(long, value_enum, default_value_t = store::DirectMode::Auto, num_args = 0..=1,
          default_missing_value = "always")]
    direct: store::DirectMode,
    /// Smallest object read with O_DIRECT.
    #[arg(long, default_value_t = 4096)]
    direct_min: u64,
    /// Largest object a PUT may store, in bytes (default 64 MiB).
    #[arg(long, default_value_t = 64 << 20)]
    max_object: u64,
    /// tokio worker threads (default: one per CPU); with `--engine shards`, the threads for the
    /// store's few blocking calls (default 2).
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
    /// Seconds from a request head's first byte to its end.
    #[arg(long, default_value_t = 10.0)]
    header_timeout: f64,
    /// Seconds a connection may wait with no request in flight, or a response write may make no
    /// progress.
    #[arg(long, default_value_t = 60.0)]
    idle_timeout: f64,
    /// Seconds a PUT body may send nothing (the upload is then abandoned: a 408).
    #[arg(long, default_value_t = 30.0)]
    body_timeout: f64,
    /// Connections served at once; one more is answered 503 and closed.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Where Content-Types are kept: xattr (a sidecar where refused) or always a sidecar.
    #[arg(long, value_enum, default_value_t = store::TypeStore::Xattr)]
    content_types: store::TypeStore,
    /// Most keys a listing answers.
    #[arg(long, default_value_t = 1000)]
    list_max: usize,
    /// Log one line per request on stderr (tracing target `access`).
    #[arg(long)]
    access_log: bool,
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

/// The log on stderr: the server's own warnings and errors always, the access log (target
/// `access`) with `--access-log`.
fn init_log(access: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::filter::filter_fn(move |m| {
        if m.target() == "access" {
            access
        } else {
            *m.level() <= tracing::Level::WARN
        }
    });
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(filter)
        .try_init();
}

fn seconds(name: &str, s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|_| format!("--{name}: not a number of seconds: {s}"))
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if !args.root.is_dir() {
        return Err(format!("--root {}: not a directory", args.root.display()).into());
    }
    if args.chunk == 0 || args.chunk % 4096 != 0 {
        return Err("--chunk must be a positive multiple of 4096".into());
    }
    if args.max_connections == 0 {
        return Err("--max-connections must be at least 1".into());
    }
    let limits = tokio_engine::Limits {
        header: seconds("header-timeout", args.header_timeout)?,
        idle: seconds("idle-timeout", args.idle_timeout)?,
        body: seconds("body-timeout", args.body_timeout)?,
        max_connections: args.max_connections,
        grace: Duration::from_secs(args.grace),
    };
    init_log(args.access_log);
    raise_nofile();
    let stale = store::remove_stale_tmp(&args.root)?;
    if stale > 0 {
        eprintln!("removed {stale} stale temporary files");
    }
    let types_marked =
        store::mark_typed_objects(&args.root, args.content_types).unwrap_or_else(|e| {
            eprintln!(
                "could not mark the typed objects in {} ({e}): every lookup reads its \
                 Content-Type",
                args.root.display()
            );
            false
        });
    let mut builder = Executor::builder()
        .shards(shard_count(&args))
        .max_files(args.cache.clamp(1024, 65536) as u32);
    if let Some(us) = args.spin_us {
        builder = builder.spin(Duration::from_micros(us));
    }
    let exec = builder.build()?;
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ ((std::process::id() as u64) << 40);
    let cfg = store::Config {
        root: args.root.clone(),
        direct: args.direct,
        direct_min: args.direct_min,
        types_marked,
        max_object: args.max_object,
        chunk: args.chunk,
        cache: args.cache,
        types: args.content_types,
        list_max: args.list_max,
    };
    match args.engine {
        Engine::Tokio => {
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            rt.enable_all();
            if let Some(w) = args.workers {
                rt.worker_threads(w.max(1));
            }
            let rt = rt.build()?;
            let handle = rt.handle().clone();
            let blocking: store::Blocking = Arc::new(move |f| {
                handle.spawn_blocking(f);
            });
            let st = Arc::new(store::Store::new(exec, cfg, seed, blocking));
            rt.block_on(tokio_engine::serve(args.listen, st, limits))?;
            drop(rt);
        }
        Engine::Shards => {
            let blocking = shards_engine::blocking_pool(args.workers.unwrap_or(2))?;
            let st = Arc::new(store::Store::new(exec, cfg, seed, blocking));
            shards_engine::serve(args.listen, st, limits)?;
        }
    }
    Ok(())
}

/// `--shards`, or its default for the engine (see [`Args::shards`]).
fn shard_count(args: &Args) -> usize {
    let cpus = || std::thread::available_parallelism().map_or(1, |n| n.get());
    args.shards.map_or_else(cpus, |n| n.max(1))
}
