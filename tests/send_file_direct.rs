//! send_file of an O_DIRECT file: READ into the op's buffer, then SEND_ZC (io_uring, 6.0+) or
//! SEND (below `send_zc_min`, the threads backend, a kernel without SEND_ZC), WRITE to a pipe.
//! On whichever backend `RINGSHARD_BACKEND` picks; every reader checks every byte.

mod executor_util;

use executor_util::{
    eventually, ok, pattern_byte as byte, pattern_reader as reader, stop_stalled_send_file, wait,
    wait_until_full, Watchdog, HANG,
};
use ringshard::{Executor, File, OpenOptions};
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;

fn exec(zc_min: u64) -> Executor {
    Executor::builder()
        .shards(1)
        .send_zc_min(zc_min)
        .build()
        .unwrap()
}

/// An O_DIRECT file of `len` bytes of pattern `seed` under /tmp (tmpfs may refuse O_DIRECT:
/// `None` then).
fn make(exec: &Executor, dir: &Path, name: &str, seed: u64, len: u64) -> Option<File> {
    let path = dir.join(name);
    std::fs::write(&path, (0..len).map(|i| byte(seed, i)).collect::<Vec<_>>()).unwrap();
    match wait(exec.open(&path, OpenOptions::new().read(true).direct(true))) {
        Ok(f) => Some(f),
        Err(e) if e.errno() == Some(libc::EINVAL) => None,
        Err(e) => panic!("{e}"),
    }
}

fn pipe() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the local array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are new and owned by nothing else.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

fn tcp_pair() -> (TcpStream, TcpStream) {
    tcp_pair_rcvbuf(None)
}

/// Sets SOL_SOCKET option `opt` of socket `fd` to `value`.
fn set_sockopt<T>(fd: std::os::fd::RawFd, opt: libc::c_int, value: &T) {
    // SAFETY: `value` is a `T` of its size, the option's type for `opt` (the callers': an int
    // for SO_RCVBUF, a linger for SO_LINGER).
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "setsockopt {opt}");
}

/// A TCP pair on loopback; `rcvbuf`: the accepting end's (`b`) SO_RCVBUF.
fn tcp_pair_rcvbuf(rcvbuf: Option<libc::c_int>) -> (TcpStream, TcpStream) {
    use std::os::fd::AsRawFd;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    if let Some(size) = rcvbuf {
        // (Inherited by the accepted socket.)
        set_sockopt(l.as_raw_fd(), libc::SO_RCVBUF, &size);
    }
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    (a, b)
}

#[test]
fn o_direct_files_go_byte_for_byte_to_tcp_unix_sockets_and_pipes_zero_copy_or_not() {
    let _w = Watchdog::new("send_file O_DIRECT", HANG);
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let size: u64 = 3 * (1 << 20) + 517;
    // Always zero-copy, the default threshold, never.
    for zc_min in [0, 64 * 1024, u64::MAX] {
        let exec = exec(zc_min);
        let Some(f) = make(&exec, dir.path(), "d", 9, size) else {
            return;
        };
        // (offset, len, bytes that exist there): offsets and lengths aligned (O_DIRECT asks
        // it), lengths below one round, of many rounds, and past the end of the file.
        let past = size.div_ceil(4096) * 4096;
        let cases: [(u64, u64, u64); 5] = [
            (0, 4096, 4096),
            (4096, 1536, 1536),
            (8192, 300_032, 300_032),
            (0, past, size),
            (size / 4096 * 4096, 8192, size % 4096),
        ];
        for (offset, len, exist) in cases {
            let (a, b) = tcp_pair();
            let r = reader(b, 9, offset, exist);
            let sent = ok(exec.send_file(&f, offset, len, &a), "tcp");
            assert_eq!(sent, exist, "tcp zc_min {zc_min} offset {offset} len {len}");
            drop(a);
            r.join().unwrap();
        }
        let (a, b) = UnixStream::pair().unwrap();
        let r = reader(b, 9, 4096, 700_416);
        assert_eq!(ok(exec.send_file(&f, 4096, 700_416, &a), "unix"), 700_416);
        r.join().unwrap();
        let (pr, pw) = pipe();
        let r = reader(pr, 9, 0, 600_064);
        assert_eq!(ok(exec.send_file(&f, 0, 600_064, &pw), "pipe"), 600_064);
        r.join().unwrap();
        let st = exec.stats();
        let kind = ringshard::OpKind::SendFileDirect.index();
        assert_eq!(st.total.ops[kind], 7, "one op counted per send");
    }
}

/// Whether `s` holds bytes its peer has not taken (SIOCOUTQ: unsent or unacknowledged): with
/// a peer that stops reading, the pages of a zero-copy send stay the kernel's.
fn bytes_held(s: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut out: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int into a local.
    unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut out) };
    out > 0
}

#[test]
fn a_peer_that_stops_reading_ends_the_send_and_its_buffer_is_not_reused_before_the_kernel_is_done()
{
    let _w = Watchdog::new("stalled zero-copy peer", HANG);
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let exec = exec(0);
    let big = 32 << 20;
    let Some(f) = make(&exec, dir.path(), "big", 3, big) else {
        return;
    };
    let Some(g) = make(&exec, dir.path(), "other", 4, 4 << 20) else {
        return;
    };
    for how in ["deadline", "cancel", "drop"] {
        let (a, b) = tcp_pair();
        stop_stalled_send_file(&exec, how, &f, big, &a, || bytes_held(&a));
        // Other sends run on the same shard while the stalled socket still holds (zero-copy)
        // pages of the first send's buffer: their buffers must not be that one.
        for _ in 0..3 {
            let (c, d) = tcp_pair();
            let r = reader(d, 4, 0, 4 << 20);
            assert_eq!(ok(exec.send_file(&g, 0, 4 << 20, &c), how), 4 << 20);
            r.join().unwrap();
        }
        // Now the stalled peer reads what was sent: a prefix of the big file, every byte right.
        drop(a);
        let mut b = b;
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        // (A deadline may pass before a byte went out; the others waited for bytes held.)
        assert!(
            how == "deadline" || !got.is_empty(),
            "{how}: nothing arrived"
        );
        for (i, &x) in got.iter().enumerate() {
            assert_eq!(x, byte(3, i as u64), "{how}: byte {i} of {}", got.len());
        }
    }
    // Each stopped send is counted once, as cancelled or past its deadline, and not as an error.
    let stopped = || {
        let st = exec.stats().total;
        st.cancelled + st.deadline_exceeded
    };
    eventually("the stopped sends counted", HANG, || stopped() >= 3);
    let st = exec.stats().total;
    assert_eq!(stopped(), 3, "{st:?}");
    assert!(!st.errors.contains_key(&libc::ECANCELED), "{st:?}");
}

fn sockaddr_in(ip: [u8; 4], port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    }
}

/// A connected MPTCP pair on 127.0.0.1 (AF_INET, SOCK_STREAM, IPPROTO_MPTCP): an inet stream
/// socket without zero-copy sends. `None` where the kernel has no MPTCP.
fn mptcp_pair() -> Option<(TcpStream, TcpStream)> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) makes a new descriptor, owned by the TcpListener from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_MPTCP) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is new and owned by nothing else.
    let l = unsafe { TcpListener::from_raw_fd(fd) };
    let addr = sockaddr_in([127, 0, 0, 1], 0);
    use std::os::fd::AsRawFd;
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` is a sockaddr_in of `len` bytes.
    let bound = unsafe { libc::bind(l.as_raw_fd(), (&raw const addr).cast(), len) };
    // SAFETY: a bound socket.
    if bound != 0 || unsafe { libc::listen(l.as_raw_fd(), 1) } != 0 {
        return None;
    }
    let to = l.local_addr().unwrap();
    // SAFETY: as above.
    let c = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_MPTCP) };
    assert!(c >= 0);
    // SAFETY: `c` is new and owned by nothing else.
    let a = unsafe { TcpStream::from_raw_fd(c) };
    let std::net::SocketAddr::V4(to4) = to else {
        return None;
    };
    let peer = sockaddr_in(to4.ip().octets(), to4.port());
    // SAFETY: `peer` is a sockaddr_in of `len` bytes.
    assert_eq!(
        unsafe { libc::connect(a.as_raw_fd(), (&raw const peer).cast(), len) },
        0
    );
    let (b, _) = l.accept().unwrap();
    Some((a, b))
}

#[test]
fn an_inet_socket_without_zero_copy_falls_back_to_send() {
    let _w = Watchdog::new("send_file O_DIRECT to MPTCP", HANG);
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let exec = exec(0);
    let Some(f) = make(&exec, dir.path(), "m", 5, 1 << 20) else {
        return;
    };
    let Some((a, b)) = mptcp_pair() else {
        return;
    };
    let r = reader(b, 5, 0, 1 << 20);
    assert_eq!(ok(exec.send_file(&f, 0, 1 << 20, &a), "mptcp"), 1 << 20);
    drop(a);
    r.join().unwrap();
}

#[test]
fn a_zero_copy_send_to_a_reset_connection_fails_and_is_counted_as_failed() {
    use std::os::fd::AsRawFd;
    let _w = Watchdog::new("send_file O_DIRECT to a reset peer", HANG);
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let exec = exec(0);
    let Some(f) = make(&exec, dir.path(), "r", 6, 64 << 10) else {
        return;
    };
    let (a, b) = tcp_pair();
    // The peer resets the connection (SO_LINGER 0), and `a` has seen it (readable) before the
    // send starts.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    set_sockopt(b.as_raw_fd(), libc::SO_LINGER, &linger);
    drop(b);
    let mut p = libc::pollfd {
        fd: a.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd.
    assert_eq!(unsafe { libc::poll(&mut p, 1, HANG.as_millis() as i32) }, 1);
    let e = wait(exec.send_file(&f, 0, 64 << 10, &a)).expect_err("a send to a reset peer");
    assert!(
        matches!(e.errno(), Some(libc::ECONNRESET | libc::EPIPE)),
        "{e}"
    );
    // The handle is answered at the SEND_ZC's result; the op ends (and is counted) at its
    // notification.
    let kind = ringshard::OpKind::SendFileDirect.index();
    eventually("the send counted", HANG, || {
        let st = exec.stats().total;
        st.ops[kind] > 0 || !st.errors.is_empty()
    });
    let st = exec.stats().total;
    assert_eq!(st.ops[kind], 1, "one op: {st:?}");
    assert!(
        st.errors.contains_key(&libc::ECONNRESET) || st.errors.contains_key(&libc::EPIPE),
        "the failure is counted: {st:?}"
    );
}

/// A one-shard executor whose pool has `count` registered buffers of 256 KiB (a whole round of
/// send_file's), sending with `buffers` buffers per send.
fn exec_pool(zc_min: u64, count: usize, buffers: usize) -> Executor {
    Executor::builder()
        .shards(1)
        .send_zc_min(zc_min)
        .buffer_size(256 << 10)
        .buffer_count(count)
        .send_file_buffers(buffers)
        .build()
        .unwrap()
}

/// Whether the shard's pool is registered with its ring (io_uring, all of it registered): only
/// then does send_file lease pool buffers (READ_FIXED, SEND_ZC from a fixed buffer).
fn pool_registered(exec: &Executor) -> bool {
    let sh = &exec.stats().shards[0];
    sh.backend == ringshard::Backend::IoUring && sh.pool_note.is_none()
}

fn pool(exec: &Executor) -> ringshard::BufferPoolStats {
    exec.stats().shards[0].pool
}

/// A TCP pair whose accepting end (`b`) has a small receive buffer and nobody reads it yet: a
/// send to `a` stops once a few hundred KiB are on their way.
fn tcp_pair_small_rcvbuf() -> (TcpStream, TcpStream) {
    tcp_pair_rcvbuf(Some(16 << 10))
}

#[test]
fn registered_pool_buffers_one_or_two_per_send_carry_every_byte_around_round_boundaries() {
    let _w = Watchdog::new("send_file O_DIRECT from pool buffers", HANG);
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    const CHUNK: u64 = 256 << 10;
    let size = 5 * CHUNK + 517;
    for buffers in [1, 2] {
        for zc_min in [0, u64::MAX] {
            let exec = exec_pool(zc_min, 8, buffers);
            let Some(f) = make(&exec, dir.path(), "p", 7, size) else {
                return;
            };
            let fixed = pool_registered(&exec);
            let past = size.div_ceil(4096) * 4096;
            // Lengths just below, at and above one and two rounds, the whole file and past its
            // end (517 bytes into a block); offsets at and off a round's start and a page's
            // (O_DIRECT asks multiples of the filesystem's 512 bytes of the caller).
            let cases: [(u64, u64, u64); 9] = [
                (0, CHUNK - 4096, CHUNK - 4096),
                (0, CHUNK, CHUNK),
                (0, CHUNK + 4096, CHUNK + 4096),
                (4096, CHUNK + 512, CHUNK + 512),
                (0, 2 * CHUNK, 2 * CHUNK),
                (8192 + 512, 2 * CHUNK - 1536, 2 * CHUNK - 1536),
                (CHUNK, 3 * CHUNK + 1024, 3 * CHUNK + 1024),
                (0, past, size),
                (CHUNK - 4096, past, size - (CHUNK - 4096)),
            ];
            for (offset, len, exist) in cases {
                let before = pool(&exec).acquisitions;
                let (a, b) = tcp_pair();
                let r = reader(b, 7, offset, exist);
                let sent = ok(exec.send_file(&f, offset, len, &a), "tcp");
                let what = format!("buffers {buffers} zc_min {zc_min} offset {offset} len {len}");
                assert_eq!(sent, exist, "{what}");
                drop(a);
                r.join().unwrap();
                // Every leased buffer comes back once the op has ended (its last notification).
                eventually("pool buffers back", HANG, || {
                    pool(&exec).acquired_count == 0
                });
                let leased = pool(&exec).acquisitions - before;
                // Two buffers only for sends of more than one round: the aligned span (from
                // the page below `offset`) is above one.
                let rounds = (offset % 4096 + len).div_ceil(4096) * 4096 > CHUNK;
                let want = match (fixed, buffers, rounds) {
                    (false, ..) => 0,
                    (true, 2, true) => 2,
                    _ => 1,
                };
                assert_eq!(leased, want, "pool buffers leased: {what}");
            }
        }
    }
}

#[test]
fn an_exhausted_pool_falls_back_and_leased_buffers_come_back_only_after_the_notifications() {
    let _w = Watchdog::new("send_file O_DIRECT with the pool held", HANG);
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    // 4 buffers: a send leases at most half of them (the rest stay for O_DIRECT reads and
    // writes), so the first send below takes both it may and the next finds none.
    let exec = exec_pool(0, 4, 2);
    let big = 32 << 20;
    let Some(f) = make(&exec, dir.path(), "big", 3, big) else {
        return;
    };
    let Some(g) = make(&exec, dir.path(), "other", 4, 4 << 20) else {
        return;
    };
    let fixed = pool_registered(&exec);
    for how in ["drop", "deadline", "cancel"] {
        let (a, b) = tcp_pair_small_rcvbuf();
        let held = || bytes_held(&a) && (!fixed || pool(&exec).acquired_count == 2);
        stop_stalled_send_file(&exec, how, &f, big, &a, held);
        let before = pool(&exec).acquisitions;
        // Another send while the stalled one holds its buffers: the op's own buffers.
        let (c, d) = tcp_pair();
        let r = reader(d, 4, 0, 4 << 20);
        assert_eq!(ok(exec.send_file(&g, 0, 4 << 20, &c), how), 4 << 20);
        r.join().unwrap();
        assert_eq!(
            pool(&exec).acquisitions,
            before,
            "{how}: no pool buffer was free"
        );
        if fixed && how != "deadline" {
            // The stopped send's last SEND_ZC still has bytes in the socket (its notification
            // has not come): its buffers are not back. (A deadline may pass before the send
            // has stalled.)
            assert!(bytes_held(&a), "{how}");
            assert_eq!(pool(&exec).acquired_count, 2, "{how}: {:?}", pool(&exec));
        }
        // The peer reads: the notifications come, and the buffers go back.
        drop(a);
        let mut b = b;
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        for (i, &x) in got.iter().enumerate() {
            assert_eq!(x, byte(3, i as u64), "{how}: byte {i} of {}", got.len());
        }
        eventually("pool buffers back", HANG, || {
            let p = pool(&exec);
            p.acquired_count == 0 && p.available_count == p.total_count
        });
    }
    // With the pool free again, a send leases again.
    let before = pool(&exec).acquisitions;
    let (c, d) = tcp_pair();
    let r = reader(d, 4, 0, 4 << 20);
    assert_eq!(ok(exec.send_file(&g, 0, 4 << 20, &c), "again"), 4 << 20);
    r.join().unwrap();
    eventually("pool buffers back", HANG, || {
        pool(&exec).acquired_count == 0
    });
    let want = if fixed { 2 } else { 0 };
    assert_eq!(pool(&exec).acquisitions - before, want);
}

#[test]
fn shutdown_answers_a_send_stalled_on_its_leased_buffers_which_come_back_after_the_peer_reads() {
    let _w = Watchdog::new("shutdown with a stalled send_file O_DIRECT", HANG);
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let exec = Executor::builder()
        .shards(1)
        .send_zc_min(0)
        .buffer_size(256 << 10)
        .buffer_count(4)
        // Long: ops waiting for a peer are cancelled as soon as shutdown begins whatever the
        // grace period, and only after it would the op be abandoned (its buffers kept).
        .shutdown_timeout(HANG)
        .build()
        .unwrap();
    let big = 32 << 20;
    let Some(f) = make(&exec, dir.path(), "big", 8, big) else {
        return;
    };
    let fixed = pool_registered(&exec);
    let (a, b) = tcp_pair_small_rcvbuf();
    let c = exec.send_file(&f, 0, big, &a);
    eventually("the send stalled", HANG, || {
        bytes_held(&a) && (!fixed || pool(&exec).acquired_count == 2)
    });
    // Shutdown cancels the send; the op, and its pool buffers, stay with the shard until the
    // SEND_ZC's notification, which may need the peer to read (its handle is answered then,
    // and the shard stops, and `shutdown` returns, after it).
    std::thread::scope(|s| {
        let stopper = s.spawn(|| exec.shutdown());
        // Let the shutdown begin (and the send be cancelled) before the peer reads.
        eventually("shutdown begun", HANG, || {
            matches!(
                exec.read(&f, 0, 4096).wait(),
                Err(ringshard::Error::Shutdown)
            )
        });
        let mut b = b;
        let reader = s.spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        // Cancelled (or, had the peer read it all before the cancellation reached it, done).
        let r = wait(c);
        drop(a);
        let got = reader.join().unwrap();
        match r {
            Ok(n) => assert_eq!((n, got.len() as u64), (big, big)),
            Err(e) => assert!(
                matches!(
                    e,
                    ringshard::Error::Cancelled { .. } | ringshard::Error::Shutdown
                ),
                "{e}"
            ),
        }
        assert!(!got.is_empty());
        for (i, &x) in got.iter().enumerate() {
            assert_eq!(x, byte(8, i as u64), "byte {i} of {}", got.len());
        }
        stopper.join().unwrap().unwrap();
    });
    // The shard's last statistics, kept when it stopped: every buffer back in the pool.
    let p = pool(&exec);
    assert!(
        p.acquired_count == 0 && p.available_count == p.total_count,
        "{p:?}"
    );
}

/// A peer that never reads holds a SEND_ZC's notification (the kernel keeps the pages until the
/// peer takes them or the connection closes), which no cancellation ends: shutdown still
/// returns, a bounded time after its grace period (it abandons the op: its handle fails, its
/// buffers, leased ones included, are leaked rather than reused), instead of waiting forever.
/// Arranged: the send is stalled (bytes held in the socket, and on io_uring with SEND_ZC its
/// buffers leased) before shutdown, and the peer never reads until shutdown has returned.
#[test]
fn shutdown_returns_while_a_peer_that_never_reads_holds_a_zero_copy_send() {
    let _w = Watchdog::new("shutdown beside a peer that never reads", HANG);
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let exec = Executor::builder()
        .shards(1)
        .send_zc_min(0)
        .buffer_size(256 << 10)
        .buffer_count(4)
        .shutdown_timeout(std::time::Duration::from_millis(50))
        .build()
        .unwrap();
    let big = 32 << 20;
    let Some(f) = make(&exec, dir.path(), "big", 9, big) else {
        return;
    };
    let fixed = pool_registered(&exec);
    let (a, b) = tcp_pair_small_rcvbuf();
    let c = exec.send_file(&f, 0, big, &a);
    eventually("the send stalled", HANG, || {
        bytes_held(&a) && (!fixed || pool(&exec).acquired_count == 2)
    });
    let t0 = std::time::Instant::now();
    exec.shutdown().unwrap();
    let took = t0.elapsed();
    match wait(c) {
        Err(ringshard::Error::Cancelled { .. } | ringshard::Error::Shutdown) => {}
        r => panic!("a send to a peer that never read: {r:?}"),
    }
    // Only now may the peer go away.
    drop((a, b));
    // The grace period (50 ms) and a second more, with room for a loaded machine.
    assert!(
        took < std::time::Duration::from_secs(10),
        "shutdown took {took:?}"
    );
}

/// A `submit_to` closure runs once nothing of its shard's is in the kernel: an O_DIRECT send
/// that waits for a peer who reads nothing (a SEND to a blocking socket, or a wait for room on a
/// non-blocking one) must not hold it, nor every op queued behind it, for ever. Its round is
/// taken out of the ring for the closure and issued again after it, and every byte still
/// arrives. Arranged: the socket takes no more bytes (not writable: its peer's window is shut,
/// and nothing is acknowledged any more) before the closure is sent, so the send's round waits
/// in the kernel.
#[test]
fn submit_to_runs_while_an_o_direct_send_waits_for_a_peer_that_reads_nothing() {
    let _w = Watchdog::new("submit_to beside a stalled O_DIRECT send_file", HANG * 2);
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let exec = exec(u64::MAX);
    let len = 8 << 20;
    let Some(f) = make(&exec, dir.path(), "f", 14, len) else {
        return;
    };
    for nonblocking in [false, true] {
        let (a, b) = tcp_pair_small_rcvbuf();
        a.set_nonblocking(nonblocking).unwrap();
        let rx = exec.send_file(&f, 0, len, &a);
        wait_until_full(&a);
        assert_eq!(ok(exec.submit_to(0, |_ctx| 42u32), "submit_to"), 42);
        let r = reader(b, 14, 0, len);
        assert_eq!(ok(rx, "send_file after the closure"), len, "{nonblocking}");
        drop(a);
        r.join().unwrap();
    }
}
