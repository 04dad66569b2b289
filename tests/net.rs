//! Sockets on shards (`ringshard::net`): real TCP sockets on 127.0.0.1, std clients on test
//! threads, servers in shard tasks. Run on both backends (RINGSHARD_BACKEND=threads too).
//! States are arranged, never slept for: a peer that never sends, a peer that never reads, a
//! cancellation waited for through the shard's own counters.

mod executor_util;

use executor_util::*;
use ringshard::{Error, Executor, TcpListener, TcpStream};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// The tests of this file run one at a time: one counts the process's descriptors and memory,
/// which the others would change under it.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn exec(shards: usize) -> Arc<Executor> {
    Arc::new(
        Executor::builder()
            .shards(shards)
            .build()
            .expect("executor"),
    )
}

/// Binds a listener on `shard` and runs `serve` with it in a task there; returns its address.
fn serve<F, Fut>(exec: &Executor, shard: usize, serve: F) -> (SocketAddr, ringshard::JoinHandle<()>)
where
    F: FnOnce(TcpListener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let (tx, rx) = mpsc::channel();
    let h = exec.spawn_on(shard, async move {
        let local = ringshard::local().expect("on a shard");
        let l = TcpListener::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        tx.send(l.local_addr()).unwrap();
        // `serve`'s future need not be Send: it runs on this shard only.
        local.spawn_local(serve(l)).await.expect("server task");
    });
    let addr = rx.recv_timeout(HANG).expect("listener address");
    (addr, h)
}

/// Echoes what `s` receives until end of stream (or until the test's executor shuts down: its
/// socket ops are cancelled then).
async fn echo(s: TcpStream) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let (r, b) = s.recv(buf).await.expect("recv handle");
        let n = match r {
            Err(Error::Shutdown) => return,
            r => r.expect("recv"),
        };
        if n == 0 {
            return;
        }
        let (r, b) = s.send_all(b).await.expect("send handle");
        match r {
            Err(Error::Shutdown) => return,
            r => r.expect("send"),
        };
        buf = b;
    }
}

fn std_echo(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut c = std::net::TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(HANG)).unwrap();
    c.write_all(msg).unwrap();
    let mut got = vec![0; msg.len()];
    c.read_exact(&mut got).unwrap();
    got
}

fn shard_stats(exec: &Executor, shard: usize) -> ringshard::ShardStats {
    exec.stats().shards[shard].clone()
}

/// Waits (bounded by a watchdog) until `cond` holds.
fn wait_until(what: &'static str, mut cond: impl FnMut() -> bool) {
    let _w = Watchdog::new(what, HANG);
    while !cond() {
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn an_echo_server_on_a_shard_serves_std_clients() {
    let _serial = serial();
    let _w = Watchdog::new("echo", HANG);
    let exec = exec(2);
    let (addr, _h) = serve(&exec, 1, |l| async move {
        let local = ringshard::local().unwrap();
        loop {
            let (s, peer) = l.accept().await.expect("accept");
            assert_eq!(s.peer_addr().unwrap(), peer);
            assert_eq!(s.local_addr().unwrap(), l.local_addr());
            assert_eq!(s.shard(), 1);
            local.spawn_local(echo(s)).detach();
        }
    });
    for i in 0..20u8 {
        let msg: Vec<u8> = (0..1000 + i as usize * 977)
            .map(|j| (j as u8) ^ i)
            .collect();
        assert_eq!(std_echo(addr, &msg), msg);
    }
    // Each connection is counted as an accept, though one op (a multishot accept, or rounds
    // one after the other) took them all.
    let st = shard_stats(&exec, 1);
    assert!(st.ops[ringshard::OpKind::Accept.index()] >= 20, "{st:?}");
}

#[test]
fn many_connections_at_once_are_all_served() {
    let _serial = serial();
    let _w = Watchdog::new("many", HANG);
    let exec = exec(1);
    let (addr, _h) = serve(&exec, 0, |l| async move {
        let local = ringshard::local().unwrap();
        loop {
            let (s, _) = l.accept().await.expect("accept");
            local.spawn_local(echo(s)).detach();
        }
    });
    let mut clients: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.set_read_timeout(Some(HANG)).unwrap();
        c.write_all(format!("client {i:04}").as_bytes()).unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let mut got = [0u8; 11];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, format!("client {i:04}").as_bytes());
    }
}

#[test]
fn a_task_connects_and_talks_to_a_std_server() {
    let _serial = serial();
    let _w = Watchdog::new("connect", HANG);
    let exec = exec(1);
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hello");
        s.write_all(b"world").unwrap();
    });
    let got = exec
        .spawn_on(0, async move {
            let s = TcpStream::connect(addr).await.expect("connect");
            assert_eq!(s.peer_addr().unwrap(), addr);
            let (r, _) = s.send_all(b"hello".to_vec()).await.unwrap();
            assert_eq!(r.unwrap(), 5);
            let mut all = Vec::new();
            loop {
                let (r, b) = s.recv(Vec::with_capacity(64)).await.unwrap();
                if r.unwrap() == 0 {
                    break;
                }
                all.extend_from_slice(&b);
            }
            all
        })
        .wait()
        .unwrap();
    assert_eq!(got, b"world");
    t.join().unwrap();
    // Nobody listens there any more: refused, and the error names the operation and the peer.
    let err = exec
        .spawn_on(0, async move { TcpStream::connect(addr).await.map(|_| ()) })
        .wait()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::ECONNREFUSED), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("connect") && text.contains(&addr.to_string()),
        "{text}"
    );
}

#[test]
fn bind_outside_a_shard_task_says_where_to_call_it() {
    let _serial = serial();
    let err = ringshard::block_on(TcpListener::bind("127.0.0.1:0".parse().unwrap())).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}

#[test]
fn a_dropped_accept_is_cancelled_and_the_next_one_gets_the_connection() {
    let _serial = serial();
    let _w = Watchdog::new("accept cancel", HANG);
    let exec = exec(1);
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (addr, h) = serve(&exec, 0, move |l| async move {
        // With a deadline and nobody connecting yet (the client waits for `go`):
        // DeadlineExceeded.
        let mut timed = l.clone();
        timed.set_accept_timeout(Some(Duration::from_millis(20)));
        let e = timed.accept().await.map(|_| ()).unwrap_err();
        assert!(matches!(e, Error::DeadlineExceeded { .. }), "{e}");
        {
            let mut first = Box::pin(l.accept());
            assert!(poll_once(&mut first).is_none(), "no client yet");
            ringshard::yield_now().await; // the accept reaches the ring
        } // dropped: no connection is handed to it any more
        go_tx.send(()).unwrap();
        let (s, _) = l.accept().await.expect("second accept");
        echo(s).await;
    });
    go_rx.recv_timeout(HANG).unwrap();
    assert_eq!(std_echo(addr, b"after a cancel"), b"after a cancel");
    h.wait().unwrap();
}

/// Client `i` of [`connect_numbered`] sends its number in two bytes.
fn connect_numbered(addr: SocketAddr, n: u16) -> Vec<std::net::TcpStream> {
    (0..n)
        .map(|i| {
            let mut c = std::net::TcpStream::connect(addr).expect("connect");
            c.write_all(&i.to_le_bytes()).unwrap();
            c
        })
        .collect()
}

#[test]
fn connections_that_come_while_no_accept_waits_are_queued_and_accepted_in_order() {
    let _serial = serial();
    let _w = Watchdog::new("queued accepts", HANG);
    let exec = exec(1);
    // More than the 128 a listener queues: the rest wait in the kernel's backlog, and accepts
    // arm the listener's accept again once they have taken the queued ones.
    const N: u16 = 300;
    let (first_tx, first_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = std::sync::Mutex::new(go_rx);
    let (res_tx, res_rx) = mpsc::channel();
    let (addr, server) = serve(&exec, 0, move |l| async move {
        // The first accept arms the listener's accept; then no accept waits while the clients
        // connect.
        let (s, _) = l.accept().await.expect("first accept");
        first_tx.send(()).unwrap();
        loop {
            if go_rx.lock().unwrap().try_recv().is_ok() {
                break;
            }
            ringshard::yield_now().await;
        }
        drop(s);
        let mut order = Vec::new();
        for _ in 0..N {
            let (s, _) = l.accept().await.expect("accept");
            let (r, b) = s.recv(Vec::with_capacity(2)).await.expect("recv handle");
            assert_eq!(r.expect("recv"), 2);
            order.push(u16::from_le_bytes([b[0], b[1]]));
        }
        res_tx.send(order).unwrap();
    });
    let _first = std::net::TcpStream::connect(addr).expect("first connect");
    first_rx.recv_timeout(HANG).unwrap();
    let fds_before = fd_count();
    let clients = connect_numbered(addr, N);
    go_tx.send(()).unwrap();
    let order = res_rx.recv_timeout(HANG).expect("accepted");
    assert_eq!(order, (0..N).collect::<Vec<_>>());
    // The task ends and drops the listener, whose accept (armed again after the queue's stop,
    // with nothing left to take) is taken out of the kernel before the listener's descriptor
    // closes; the first connection's server side is closed too: two descriptors fewer.
    server.wait().expect("server task");
    drop(clients);
    wait_fds_back(fds_before - 2);
    // Neither the accept stopping at 128 queued (its multishot round taken out of the kernel)
    // nor its end once the listener is gone is a cancellation anyone asked for. (Read while the
    // listener's op could still be in the kernel, this saw 1 beside `stress-ng --cpu 4`: the
    // 5 ms scan that ended it counted it as cancelled.)
    assert_eq!(shard_stats(&exec, 0).cancelled, 0);
}

#[test]
fn a_listener_dropped_with_queued_connections_closes_them() {
    let _serial = serial();
    let _w = Watchdog::new("queued connections dropped", HANG);
    let exec = exec(1);
    let (addr_tx, addr_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let fds_before = fds_after_warm_up(&exec);
    exec.spawn_on(0, async move {
        let l = TcpListener::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        addr_tx.send(l.local_addr()).unwrap();
        let (s, _) = l.accept().await.expect("first accept");
        drop(s);
        // Twenty connections come while no accept waits: queued on the listener (the shard's
        // accept took them from the kernel's backlog) before it is dropped.
        while l.queued_connections_for_tests() < 20 {
            ringshard::yield_now().await;
        }
        drop(l);
        done_tx.send(()).unwrap();
    })
    .detach();
    let addr = addr_rx.recv_timeout(HANG).unwrap();
    let first = std::net::TcpStream::connect(addr).expect("first connect");
    let mut clients = connect_numbered(addr, 20);
    done_rx.recv_timeout(HANG).unwrap();
    // Closed, not leaked: each client sees its connection end.
    for c in &mut clients {
        c.set_read_timeout(Some(HANG)).unwrap();
        let mut b = [0u8; 1];
        loop {
            match c.read(&mut b) {
                Ok(0) => break,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => panic!("expected the connection closed, got {other:?}"),
            }
        }
    }
    drop(clients);
    drop(first);
    wait_fds_back(fds_before);
}

/// Serves one echo on shard 0 (threads and lazily made descriptors exist after it) and returns
/// the process's descriptor count then.
fn fds_after_warm_up(exec: &Executor) -> usize {
    let (addr, h) = serve(exec, 0, |l| async move {
        let (s, _) = l.accept().await.expect("accept");
        echo(s).await;
    });
    assert_eq!(std_echo(addr, b"warm"), b"warm");
    h.wait().unwrap();
    fd_count()
}

/// Waits until the process has no more descriptors than `before`.
fn wait_fds_back(before: usize) {
    wait_until("descriptors back to the count before", || {
        fd_count() <= before
    });
}

fn poll_once<F: std::future::Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = std::task::Waker::from(Arc::new(Noop));
    let mut cx = std::task::Context::from_waker(&waker);
    match std::pin::Pin::new(fut).poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

#[test]
fn a_recv_from_a_silent_peer_ends_at_its_deadline_or_when_dropped() {
    let _serial = serial();
    let _w = Watchdog::new("silent peer", HANG);
    let exec = exec(1);
    let (res_tx, res_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = std::sync::Mutex::new(go_rx);
    let (addr, _h) = serve(&exec, 0, move |l| async move {
        let (mut s, _) = l.accept().await.expect("accept");
        // 1. A deadline: the peer sends nothing.
        s.set_recv_timeout(Some(Duration::from_millis(20)));
        let (r, b) = s.recv(Vec::with_capacity(100)).await.expect("recv handle");
        res_tx
            .send(format!(
                "{:?} cap {}",
                r.map_err(|e| e.to_string()),
                b.capacity() >= 100
            ))
            .unwrap();
        // 2. Dropped while waiting in the kernel.
        s.set_recv_timeout(None);
        {
            let mut r = s.recv(Vec::with_capacity(100));
            assert!(poll_once(&mut r).is_none());
            ringshard::yield_now().await;
        }
        loop {
            if go_rx.lock().unwrap().try_recv().is_ok() {
                break;
            }
            ringshard::yield_now().await;
        }
        // 3. A buffer with no room is refused (0 would read as the end of the stream).
        let (r, _) = s.recv(Vec::new()).await.expect("recv handle");
        assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
        // 4. Nothing was lost: the next receive gets what the peer sends now.
        let (r, b) = s.recv(Vec::with_capacity(100)).await.expect("recv handle");
        r.expect("recv");
        res_tx.send(String::from_utf8(b).unwrap()).unwrap();
    });
    // Counted before the connection: the task drops its second receive as soon as it has
    // reported the first, which on a loaded machine can be before this thread looks again.
    let before = shard_stats(&exec, 0).cancelled;
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let first = res_rx.recv_timeout(HANG).unwrap();
    assert!(
        first.contains("deadline") && first.ends_with("cap true"),
        "{first}"
    );
    wait_until("the recv's cancellation", || {
        shard_stats(&exec, 0).cancelled > before
    });
    go_tx.send(()).unwrap();
    c.write_all(b"late words").unwrap();
    assert_eq!(res_rx.recv_timeout(HANG).unwrap(), "late words");
    assert!(shard_stats(&exec, 0).deadline_exceeded >= 1);
}

#[test]
fn a_send_to_a_peer_that_stops_reading_ends_at_its_deadline_and_others_are_served() {
    let _serial = serial();
    let _w = Watchdog::new("stuck peer", HANG);
    let exec = exec(1);
    let (res_tx, res_rx) = mpsc::channel();
    let (addr, _h) = serve(&exec, 0, move |l| async move {
        let local = ringshard::local().unwrap();
        let (mut stuck, _) = l.accept().await.expect("accept");
        stuck.set_send_timeout(Some(Duration::from_millis(100)));
        // Far more than the socket buffers hold: the send waits in the kernel.
        let sender = local.spawn_local(async move {
            let (r, b) = stuck
                .send_all(vec![7u8; 64 << 20])
                .await
                .expect("send handle");
            (r.map_err(|e| (e.to_string(), e.written())), b.len())
        });
        // Meanwhile other clients are served.
        for _ in 0..3 {
            let (s, _) = l.accept().await.expect("accept");
            local.spawn_local(echo(s)).detach();
        }
        res_tx.send(sender.await.expect("sender")).unwrap();
    });
    let _stuck = std::net::TcpStream::connect(addr).unwrap(); // never reads
    for _ in 0..3 {
        assert_eq!(std_echo(addr, b"still served"), b"still served");
    }
    let (r, len) = res_rx.recv_timeout(HANG).unwrap();
    let (e, written) = r.unwrap_err();
    assert!(e.contains("deadline"), "{e}");
    assert_eq!(len, 64 << 20, "the buffer comes back whole");
    // What went out before the deadline is known (the socket took its buffers' worth).
    assert!(
        written.is_some_and(|n| n > 0 && n < 64 << 20),
        "bytes sent before the deadline: {written:?}"
    );
}

#[test]
fn a_half_open_connection_reads_to_the_end_and_answers() {
    let _serial = serial();
    let _w = Watchdog::new("half open", HANG);
    let exec = exec(1);
    let (addr, _h) = serve(&exec, 0, |l| async move {
        loop {
            let (s, _) = l.accept().await.expect("accept");
            let mut all = Vec::new();
            loop {
                let (r, b) = s.recv(Vec::with_capacity(3)).await.unwrap();
                if r.unwrap() == 0 {
                    break;
                }
                all.extend_from_slice(&b);
            }
            all.reverse();
            let (r, _) = s.send_all(all).await.unwrap();
            r.unwrap();
            s.shutdown(std::net::Shutdown::Write).await.unwrap();
        }
    });
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(HANG)).unwrap();
    c.write_all(b"half open").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"nepo flah");
}

#[test]
fn a_peer_reset_fails_recv_with_an_error_naming_the_peer() {
    let _serial = serial();
    let _w = Watchdog::new("reset", HANG);
    let exec = exec(1);
    let (res_tx, res_rx) = mpsc::channel();
    let (acc_tx, acc_rx) = mpsc::channel::<()>();
    let (addr, _h) = serve(&exec, 0, move |l| async move {
        // Accepted before the reset (one reset before the shard reaped a multishot accept's
        // completion has no peer address any more: it comes with the unspecified one).
        let (s, peer) = l.accept().await.expect("accept");
        acc_tx.send(()).unwrap();
        let (r, _) = s.recv(Vec::with_capacity(10)).await.unwrap();
        let e = r.unwrap_err();
        res_tx.send((e.errno(), e.to_string(), peer)).unwrap();
    });
    let c = std::net::TcpStream::connect(addr).unwrap();
    let local = c.local_addr().unwrap();
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    use std::os::fd::AsRawFd;
    // SAFETY: a live linger struct of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    acc_rx.recv_timeout(HANG).unwrap();
    drop(c); // RST
    let (errno, text, peer) = res_rx.recv_timeout(HANG).unwrap();
    assert_eq!(peer, local);
    assert_eq!(errno, Some(libc::ECONNRESET), "{text}");
    assert!(
        text.contains("recv") && text.contains(&local.to_string()),
        "{text}"
    );
}

const TEN_K: u64 = 10_000;

#[test]
fn ten_thousand_connections_opened_and_dropped_leave_no_descriptor_behind() {
    let _serial = serial();
    let _w = Watchdog::new("2 x 10k", Duration::from_secs(240));
    let exec = exec(1);
    let (count_tx, count_rx) = mpsc::channel();
    let (addr, _h) = serve(&exec, 0, move |l| async move {
        let local = ringshard::local().unwrap();
        let mut n = 0u64;
        loop {
            let (s, _) = l.accept().await.expect("accept");
            n += 1;
            if n % 2 == 0 && n <= 2 * TEN_K + 1 {
                drop(s); // closed at once
            } else {
                local.spawn_local(echo(s)).detach(); // closed at the client's end of stream
            }
            let _ = count_tx.send(n);
        }
    });
    // Warm up (threads, lazily made descriptors), then count.
    assert_eq!(std_echo(addr, b"warm"), b"warm");
    let mut seen = count_rx.recv_timeout(HANG).unwrap();
    let fds_before = fd_count();
    let mut round = |what: &'static str| {
        for _ in 0..TEN_K {
            drop(std::net::TcpStream::connect(addr).expect("connect"));
        }
        let until = seen + TEN_K;
        while seen < until {
            seen = count_rx.recv_timeout(HANG).expect("accepted");
        }
        // Closes run on the shard after the handles drop: wait for them (bounded).
        wait_until(what, || fd_count() <= fds_before);
        rss_bytes()
    };
    // Two rounds: a leak grows with each; what the allocator keeps from the first round's peak
    // (every connection's task and buffer, if many were open at once) is reused by the second.
    let rss_first = round("descriptors back after the first 10,000");
    let rss_second = round("descriptors back after the second 10,000");
    report_line(format_args!(
        "NET 2 x 10,000 connections: descriptors back to {fds_before}; RSS {rss_first} bytes \
         after the first round, {rss_second} after the second"
    ));
    assert!(
        rss_second < rss_first + (16 << 20),
        "memory grew from {rss_first} to {rss_second} bytes over 10,000 connections"
    );
    assert_eq!(std_echo(addr, b"still here"), b"still here");
}

#[test]
fn cancelled_accepts_and_dropped_listeners_leak_no_connection() {
    let _serial = serial();
    let _w = Watchdog::new("accept leaks", Duration::from_secs(120));
    let exec = exec(1);
    let fds_before = fds_after_warm_up(&exec);
    for round in 0..50 {
        // An accept in the kernel, a client connecting meanwhile, then the accept and the
        // listener dropped: whichever wins (the accept's CQE or its cancellation), the
        // connection is closed, never leaked. On even rounds the client's connection is in the
        // listener's queue (its connect returned) before the drop; on odd ones it races it (and
        // may be refused).
        let connected = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (go_tx, go_rx) = mpsc::channel::<SocketAddr>();
        let flag = Arc::clone(&connected);
        let client = std::thread::spawn(move || {
            let addr = go_rx.recv().unwrap();
            let c = std::net::TcpStream::connect(addr);
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            c
        });
        let (done_tx, done_rx) = mpsc::channel::<()>();
        exec.spawn_on(0, async move {
            let l = TcpListener::bind("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            let mut a = Box::pin(l.accept());
            assert!(poll_once(&mut a).is_none());
            ringshard::yield_now().await; // in the kernel now
            go_tx.send(l.local_addr()).unwrap();
            if round % 2 == 0 {
                while !connected.load(std::sync::atomic::Ordering::SeqCst) {
                    ringshard::yield_now().await;
                }
            }
            drop(a);
            drop(l);
            done_tx.send(()).unwrap();
        })
        .detach();
        done_rx.recv_timeout(HANG).unwrap();
        let c = client.join().unwrap();
        if round % 2 == 0 {
            c.expect("connected before the drop");
        }
    }
    wait_fds_back(fds_before);
}

#[test]
fn shutdown_does_not_wait_for_silent_peers() {
    let _serial = serial();
    let _w = Watchdog::new("shutdown with silent peers", HANG);
    let exec = Arc::new(
        Executor::builder()
            .shards(1)
            .shutdown_timeout(Duration::from_secs(3600))
            .build()
            .expect("executor"),
    );
    let (res_tx, res_rx) = mpsc::channel();
    let (addr, _h) = serve(&exec, 0, move |l| async move {
        let (s, _) = l.accept().await.expect("accept");
        res_tx.send("accepted".to_string()).unwrap();
        let (r, _) = s.recv(Vec::with_capacity(10)).await.expect("recv handle");
        res_tx.send(format!("{r:?}")).unwrap();
        let _ = l.accept().await; // and an accept waiting too
    });
    let _silent = std::net::TcpStream::connect(addr).unwrap();
    assert_eq!(res_rx.recv_timeout(HANG).unwrap(), "accepted");
    // The grace period (an hour) is for writes to land, not for peers to speak.
    exec.shutdown().expect("shutdown");
}

#[test]
fn idle_connections_beyond_the_admission_bound_and_the_cq_do_not_stop_the_shard() {
    let _serial = serial();
    let _w = Watchdog::new("idle connections", HANG);
    // A small shard: at most 16 ops admitted, a CQ of 16 entries. Each idle connection keeps a
    // receive waiting for its peer: 200 of them are far past both.
    let exec = Arc::new(
        Executor::builder()
            .shards(1)
            .channel_capacity(16)
            .ring_entries(8)
            .build()
            .expect("executor"),
    );
    let (addr, _h) = serve(&exec, 0, |l| async move {
        let local = ringshard::local().unwrap();
        loop {
            let (s, _) = l.accept().await.expect("accept");
            local.spawn_local(echo(s)).detach();
        }
    });
    let idle: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
        .collect();
    // Every idle connection was accepted and waits in a receive...
    wait_until("200 receives waiting", || {
        shard_stats(&exec, 0).ops[ringshard::OpKind::Accept.index()] >= 200
    });
    // ...and the shard still serves: a connection, and a file.
    assert_eq!(std_echo(addr, b"still served"), b"still served");
    let dir = tempfile::tempdir().unwrap();
    let f = open_rwc(&exec, &dir.path().join("f"));
    assert_eq!(wait(exec.write(&f, 0, b"file too".to_vec())).unwrap(), 8);
    assert_eq!(wait(exec.read(&f, 0, 8)).unwrap(), b"file too");
    // All at once: more completions than the CQ holds.
    let mut idle = idle;
    for (i, c) in idle.iter_mut().enumerate() {
        c.write_all(&[i as u8; 3]).unwrap();
    }
    for (i, c) in idle.iter_mut().enumerate() {
        c.set_read_timeout(Some(HANG)).unwrap();
        let mut b = [0u8; 3];
        c.read_exact(&mut b).unwrap();
        assert_eq!(b, [i as u8; 3]);
    }
}

#[test]
fn set_nodelay_sets_tcp_nodelay() {
    let _g = serial();
    let exec = exec(1);
    let (tx, rx) = mpsc::channel();
    let (addr, _h) = serve(&exec, 0, move |l| async move {
        let (s, _) = l.accept().await.expect("accept");
        let get = |s: &TcpStream| i32::from(s.nodelay().expect("nodelay"));
        let before = get(&s);
        s.set_nodelay(true).expect("set_nodelay");
        let on = get(&s);
        s.set_nodelay(false).expect("set_nodelay");
        let off = get(&s);
        tx.send((before, on, off)).unwrap();
    });
    let _c = std::net::TcpStream::connect(addr).unwrap();
    assert_eq!(rx.recv_timeout(HANG).unwrap(), (0, 1, 0));
}

/// A response as a server sends one: a header with send_all, then a file's bytes with
/// `TcpStream::send_file`, for a file on the connection's shard and on the other one, below the
/// copy threshold (a ring copy) and above it (SPLICE through a pipe); the client checks every
/// byte, in order.
#[test]
fn send_file_on_a_stream_follows_its_earlier_sends_from_either_shard() {
    let _serial = serial();
    let _w = Watchdog::new("send_file on a stream", HANG);
    let exec = exec(2);
    let dir = tempfile::tempdir().unwrap();
    // One file on each shard, each with bytes of its own.
    let files: Vec<(ringshard::File, Vec<u8>)> = {
        let mut placed = files_on_every_shard(&exec, dir.path(), "f", 1, 64);
        let mut files: Vec<Option<(ringshard::File, Vec<u8>)>> = vec![None, None];
        for (i, (path, f)) in placed.drain(..).enumerate() {
            let s = f.shard();
            if files[s].is_none() {
                let data: Vec<u8> = (0..300_001 + i)
                    .map(|j| (j % 251) as u8 ^ i as u8)
                    .collect();
                std::fs::write(&path, &data).unwrap();
                files[s] = Some((f, data));
            }
        }
        files
            .into_iter()
            .map(|f| f.expect("a file on each shard"))
            .collect()
    };
    // (which file, offset, length): a small send (copied) and a large one (spliced) of each.
    let plan: Vec<(usize, u64, u64)> =
        vec![(0, 7, 4000), (1, 1, 5000), (0, 3, 250_000), (1, 0, 300_001)];
    let (wanted, served) = {
        let mut wanted = Vec::new();
        let mut served = Vec::new();
        for (k, &(which, off, len)) in plan.iter().enumerate() {
            let header = format!("part {k} {len}\n").into_bytes();
            wanted.extend_from_slice(&header);
            let data = &files[which].1;
            wanted.extend_from_slice(&data[off as usize..(off + len) as usize]);
            served.push((header, files[which].0.clone(), off, len));
        }
        (wanted, served)
    };
    let (addr, _h) = serve(&exec, 1, move |l| async move {
        let (s, _) = l.accept().await.expect("accept");
        for (header, file, off, len) in served {
            let (r, _) = s.send_all(header).await.expect("send handle");
            r.expect("header");
            assert_eq!(s.send_file(&file, off, len).await.expect("send_file"), len);
        }
        s.shutdown(std::net::Shutdown::Write)
            .await
            .expect("shutdown");
    });
    let mut c = std::net::TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(HANG)).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), wanted.len());
    assert!(got == wanted, "bytes differ");
    let st = exec.stats();
    let sends: u64 = st
        .shards
        .iter()
        .map(|s| s.ops[ringshard::OpKind::SendFile.index()])
        .sum();
    assert_eq!(sends, 4, "{st:?}");
}

/// A head sent with `send_all_more` (MSG_MORE) is pushed by the body that follows it: the
/// client gets every byte of each response, head and body, while the connection stays open (the
/// server waits for the client's answer before the next response), for a body copied (small), sent
/// inline (cached) and spliced through a pipe (evicted: the threads backend and kernels without
/// cachestat splice anyway).
#[test]
fn a_head_sent_with_more_goes_out_with_the_body_after_it() {
    let _serial = serial();
    let _w = Watchdog::new("send_all_more then send_file", HANG);
    let exec = exec(1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("body");
    let data: Vec<u8> = (0..400_000u32).map(|j| (j % 253) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let file = open_rwc(&exec, &path);
    // (offset, length, evict first): copied, inline (cached), spliced (evicted).
    let plan: Vec<(u64, u64, bool)> =
        vec![(5, 3000, false), (0, 400_000, false), (1, 399_000, true)];
    let sizes: Vec<(usize, usize)> = plan
        .iter()
        .enumerate()
        .map(|(k, &(_, len, _))| (format!("head {k}\n").len(), len as usize))
        .collect();
    let evict_path = path.clone();
    let (addr, _h) = serve(&exec, 0, move |l| async move {
        let (s, _) = l.accept().await.expect("accept");
        for (k, (off, len, evict)) in plan.into_iter().enumerate() {
            if evict {
                let f = std::fs::File::open(&evict_path).unwrap();
                // SAFETY: fadvise on an open descriptor; no memory is passed.
                unsafe {
                    libc::posix_fadvise(
                        std::os::fd::AsRawFd::as_raw_fd(&f),
                        0,
                        0,
                        libc::POSIX_FADV_DONTNEED,
                    )
                };
            }
            let (r, _) = s
                .send_all_more(format!("head {k}\n").into_bytes())
                .await
                .expect("send handle");
            r.expect("head");
            assert_eq!(s.send_file(&file, off, len).await.expect("send_file"), len);
            // The client answers once it has the whole response.
            let (r, _) = s.recv(vec![0u8; 1]).await.expect("recv handle");
            assert_eq!(r.expect("the client's answer"), 1);
        }
    });
    let mut c = std::net::TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(HANG)).unwrap();
    let offs = [5usize, 0, 1];
    for (k, (hl, bl)) in sizes.into_iter().enumerate() {
        let mut got = vec![0u8; hl + bl];
        c.read_exact(&mut got)
            .expect("a whole response with the connection open");
        assert_eq!(&got[..hl], format!("head {k}\n").as_bytes());
        assert!(got[hl..] == data[offs[k]..offs[k] + bl], "body {k} differs");
        c.write_all(b"k").unwrap();
    }
}

/// A `submit_to` closure runs once nothing of its shard's is in the kernel: a receive waiting
/// for a silent peer must not hold it (nor everything queued behind it) forever. The receive is
/// taken out of the ring for the closure and put back after it, and still gets the peer's
/// bytes. Arranged: the receive is made, then the task yields (the shard issues and submits
/// what was made before it polls the task again), and only then is the closure sent.
#[test]
fn submit_to_runs_while_a_receive_waits_for_a_silent_peer() {
    let _serial = serial();
    let _w = Watchdog::new("submit_to beside an idle connection", HANG);
    let exec = exec(1);
    let (in_kernel_tx, in_kernel_rx) = mpsc::channel();
    let (got_tx, got_rx) = mpsc::channel();
    let (addr, _h) = serve(&exec, 0, move |l| async move {
        let (s, _) = l.accept().await.expect("accept");
        let recv = s.recv(Vec::with_capacity(16));
        ringshard::yield_now().await;
        in_kernel_tx.send(()).unwrap();
        let (r, b) = recv.await.expect("recv handle");
        got_tx.send((r.map_err(|e| e.to_string()), b)).unwrap();
    });
    let mut idle = std::net::TcpStream::connect(addr).unwrap();
    in_kernel_rx.recv_timeout(HANG).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = open_rwc(&exec, &dir.path().join("f"));
    assert_eq!(ok(exec.submit_to(0, |_ctx| 42u32), "submit_to"), 42);
    ok(exec.fsync(&f), "fsync after the closure");
    // An open (OPENAT: each has an order key of its own, as each socket does; the two kinds of
    // key must never meet, or it would wait behind the receive).
    let g = ok(
        exec.open_async(dir.path().join("g"), &rwc()),
        "open_async beside a waiting receive",
    );
    assert_eq!(ok(exec.write(&g, 0, b"ok".to_vec()), "write"), 2);
    idle.write_all(b"x").unwrap();
    let (r, b) = got_rx.recv_timeout(HANG).unwrap();
    assert_eq!(r, Ok(1));
    assert_eq!(b, b"x");
}

#[test]
fn past_the_live_op_cap_a_request_fails_and_names_the_limit() {
    let _serial = serial();
    let _w = Watchdog::new("live op cap", HANG);
    // Socket ops waiting for peers escape channel_capacity; the op table's hard cap still holds
    // them (lowered here to 3: the listener's armed accept, then receives from a silent peer,
    // until one is refused).
    const CAP: usize = 3;
    let exec = Arc::new(
        Executor::builder()
            .shards(1)
            .max_live_ops_for_tests(CAP)
            .build()
            .expect("executor"),
    );
    let (res_tx, res_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = std::sync::Mutex::new(go_rx);
    let before = shard_stats(&exec, 0).cancelled;
    let (addr, h) = serve(&exec, 0, move |l| async move {
        let (s, _) = l.accept().await.expect("accept");
        {
            // Receives from a silent peer, each admitted (the task yields: the shard takes what
            // was made before it polls the task again) before the next is made.
            let mut held = Vec::new();
            let mut refused = None;
            for _ in 0..=CAP {
                let mut r = s.recv(Vec::with_capacity(8));
                ringshard::yield_now().await;
                match poll_once(&mut r) {
                    None => held.push(r),
                    Some(done) => {
                        refused = Some(done.map(|(res, _)| res));
                        break;
                    }
                }
            }
            let e = match refused {
                Some(Ok(Err(e))) => e.to_string(),
                other => format!("no refusal: {} held, {:?}", held.len(), other.map(|_| ())),
            };
            res_tx.send((e, held.len())).unwrap();
        } // the receives dropped: cancelled, and then the table has room again
        loop {
            if go_rx.lock().unwrap().try_recv().is_ok() {
                break;
            }
            ringshard::yield_now().await;
        }
        let (s2, _) = l.accept().await.expect("accept after the cap");
        echo(s2).await;
    });
    let _silent = std::net::TcpStream::connect(addr).unwrap();
    let (e, held) = res_rx.recv_timeout(HANG).unwrap();
    assert!(
        e.contains("recv") && e.contains(&format!("{CAP} live operations")),
        "{e}"
    );
    assert!(
        (1..CAP).contains(&held),
        "{held} receives admitted before the refusal"
    );
    wait_until("the receives' cancellation", || {
        shard_stats(&exec, 0).cancelled > before
    });
    go_tx.send(()).unwrap();
    assert_eq!(std_echo(addr, b"room again"), b"room again");
    h.wait().unwrap();
}

#[test]
fn bind_exclusive_refuses_a_second_bind_with_eaddrinuse_naming_the_address() {
    let _serial = serial();
    let _w = Watchdog::new("bind_exclusive", HANG);
    let exec = exec(1);
    let h = exec.spawn_on(0, async move {
        // The default: SO_REUSEPORT, a second bind of the same address joins the group.
        let shared = TcpListener::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        let again = TcpListener::bind(shared.local_addr())
            .await
            .expect("a second SO_REUSEPORT bind");
        drop((shared, again));
        // Exclusive: every other bind of the address fails, whatever its options.
        let only = TcpListener::bind_exclusive("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind_exclusive");
        let addr = only.local_addr();
        let e = TcpListener::bind(addr).await.map(|_| ()).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EADDRINUSE), "{e}");
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
        let e = TcpListener::bind_exclusive(addr)
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.errno(), Some(libc::EADDRINUSE), "{e}");
        // As for another process's listener (std sets SO_REUSEADDR only).
        let e = std::net::TcpListener::bind(addr).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE), "{e}");
        // It still accepts.
        let c = std::thread::spawn(move || std::net::TcpStream::connect(addr).map(|_| ()));
        only.accept().await.expect("accept");
        c.join().unwrap().expect("connect");
    });
    h.wait().unwrap();
}

/// The path a ring without IORING_FEAT_FAST_POLL (Linux 5.6) gives accept, recv and send, forced
/// here: one non-blocking attempt, EAGAIN where it would wait, and the socket still usable.
#[test]
fn on_the_blocking_path_a_wait_fails_with_eagain_and_the_socket_stays_usable() {
    use ringshard::OpKind;
    let _serial = serial();
    let _w = Watchdog::new("blocking sockets", HANG);
    let exec = Arc::new(
        Executor::builder()
            .shards(1)
            .force_blocking(&[OpKind::Accept, OpKind::Recv, OpKind::Send])
            .build()
            .expect("executor"),
    );
    let blocking = &shard_stats(&exec, 0).blocking_ops;
    assert!(blocking.contains(&OpKind::Recv), "{blocking:?}");
    let (addr_tx, addr_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = std::sync::Mutex::new(go_rx);
    let h = exec.spawn_on(0, async move {
        let l = TcpListener::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        // Nobody connecting yet: EAGAIN, and the listener goes on.
        let e = l.accept().await.map(|_| ()).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EAGAIN), "{e}");
        addr_tx.send(l.local_addr()).unwrap();
        let s = loop {
            match l.accept().await {
                Ok((s, _)) => break s,
                Err(e) if e.errno() == Some(libc::EAGAIN) => ringshard::yield_now().await,
                Err(e) => panic!("accept: {e}"),
            }
        };
        // The peer has sent nothing yet.
        let (r, b) = s.recv(Vec::with_capacity(16)).await.expect("recv handle");
        assert_eq!(r.unwrap_err().errno(), Some(libc::EAGAIN));
        addr_tx.send(s.local_addr().unwrap()).unwrap();
        loop {
            if go_rx.lock().unwrap().try_recv().is_ok() {
                break;
            }
            ringshard::yield_now().await;
        }
        // Sent by now; retried should loopback delivery lag.
        let mut b = b;
        let n = loop {
            let (r, back) = s.recv(b).await.expect("recv handle");
            b = back;
            match r {
                Err(e) if e.errno() == Some(libc::EAGAIN) => ringshard::yield_now().await,
                r => break r.expect("recv"),
            }
        };
        assert_eq!(n, 5);
        let (r, _) = s.send_all(b).await.expect("send handle");
        r.expect("send");
    });
    let addr = addr_rx.recv_timeout(HANG).unwrap();
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    addr_rx.recv_timeout(HANG).unwrap();
    c.write_all(b"hello").unwrap();
    go_tx.send(()).unwrap();
    c.set_read_timeout(Some(HANG)).unwrap();
    let mut got = [0u8; 5];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    h.wait().unwrap();
}

/// On the blocking path (forced here) a connect that would wait fails with EAGAIN naming the
/// peer, and closes nothing else: the shard's other sockets go on.
#[test]
fn a_blocking_path_connect_under_way_fails_with_eagain_and_closes_nothing_else() {
    use std::os::fd::AsRawFd;
    let _serial = serial();
    let _w = Watchdog::new("blocking connect", HANG);
    let exec = Arc::new(
        Executor::builder()
            .shards(1)
            .force_blocking(&[ringshard::OpKind::Connect])
            .build()
            .expect("executor"),
    );
    // A listener whose accept queue (backlog 0: one connection) is full: a connect to it stays
    // under way (its SYN dropped).
    let full = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: listen takes no pointers; `full` is a live listening socket.
    assert_eq!(unsafe { libc::listen(full.as_raw_fd(), 0) }, 0);
    let full_addr = full.local_addr().unwrap();
    let _queued = std::net::TcpStream::connect(full_addr).unwrap();
    let (addr, h) = serve(&exec, 0, move |l| async move {
        let (s, _) = l.accept().await.expect("accept");
        let e = TcpStream::connect(full_addr).await.map(|_| ()).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EAGAIN), "{e}");
        assert!(e.to_string().contains(&full_addr.to_string()), "{e}");
        // The accepted stream is untouched.
        echo(s).await;
    });
    assert_eq!(std_echo(addr, b"still open"), b"still open");
    h.wait().unwrap();
}
