//! `TcpStream::recv_pooled`: receives into the shard's receive buffers (a provided-buffer ring
//! on io_uring 5.19+, plain buffers otherwise). Real sockets on 127.0.0.1; both backends
//! (RINGSHARD_BACKEND=threads too). States are arranged (silent peers, leases held until told),
//! never slept for.

mod executor_util;

use executor_util::*;
use ringshard::net::RecvBuf;
use ringshard::{Backend, Error, Executor, TcpListener, TcpStream};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

fn exec_with(count: u16, size: usize) -> Arc<Executor> {
    Arc::new(
        Executor::builder()
            .shards(1)
            .recv_buffers(count, size)
            .build()
            .expect("executor"),
    )
}

fn stats(exec: &Executor) -> ringshard::ShardStats {
    exec.stats().shards[0].clone()
}

/// Whether this executor's shard receives from a provided-buffer ring.
fn has_ring(exec: &Executor) -> bool {
    let st = stats(exec);
    st.backend == Backend::IoUring && st.recv_buffers > 0
}

/// Binds a listener on shard 0 and runs `serve` with each connection in a task of its own.
fn serve<F, Fut>(exec: &Executor, serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let (tx, rx) = mpsc::channel();
    exec.spawn_on(0, async move {
        let local = ringshard::local().expect("on a shard");
        let l = TcpListener::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        tx.send(l.local_addr()).unwrap();
        loop {
            let (s, _) = match l.accept().await {
                Ok(c) => c,
                Err(_) => return,
            };
            local.spawn_local(serve(s)).detach();
        }
    })
    .detach();
    rx.recv_timeout(HANG).expect("listener address")
}

/// Echoes with `recv_pooled` until end of stream; counts the receives served from the ring.
async fn pooled_echo(s: TcpStream, from_ring: Arc<AtomicUsize>) {
    loop {
        let got = match s.recv_pooled().await {
            Ok(b) => b,
            Err(Error::Shutdown) => return,
            Err(e) => panic!("recv_pooled: {e}"),
        };
        if got.is_empty() {
            return;
        }
        if got.is_from_ring() {
            from_ring.fetch_add(1, Ordering::Relaxed);
        }
        let bytes = got.to_vec();
        drop(got);
        let (r, _) = s.send_all(bytes).await.expect("send handle");
        if r.is_err() {
            return;
        }
    }
}

/// Polls `fut` once: whether it is still pending.
fn pending<F: std::future::Future + Unpin>(fut: &mut F) -> bool {
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = std::task::Waker::from(Arc::new(Noop));
    let mut cx = std::task::Context::from_waker(&waker);
    std::pin::Pin::new(fut).poll(&mut cx).is_pending()
}

#[test]
fn recv_pooled_receives_byte_for_byte() {
    let _serial = serial();
    let _w = Watchdog::new("pooled echo", HANG);
    let exec = exec_with(8, 4096);
    let from_ring = Arc::new(AtomicUsize::new(0));
    let fr = from_ring.clone();
    let addr = serve(&exec, move |s| pooled_echo(s, fr.clone()));
    let mut rng = Rng::new(19);
    for round in 0..4 {
        let msg = rng.bytes(300_000 + round * 12_345);
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(HANG)).unwrap();
        let writer = {
            let mut c = c.try_clone().unwrap();
            let msg = msg.clone();
            std::thread::spawn(move || {
                c.write_all(&msg).unwrap();
                c.shutdown(std::net::Shutdown::Write).unwrap();
            })
        };
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert_bytes_eq(&got, &msg, "echoed through recv_pooled");
    }
    let st = stats(&exec);
    if has_ring(&exec) {
        // 8 buffers of 4 KiB carried 1.2 MB: each went back to the ring and came out again.
        assert!(from_ring.load(Ordering::Relaxed) > 8, "{st:?}");
    } else {
        assert_eq!(from_ring.load(Ordering::Relaxed), 0);
    }
    assert!(st.ops[ringshard::OpKind::RecvPooled.index()] > 0, "{st:?}");
    eventually("buffers back", HANG, || stats(&exec).recv_buffers_held == 0);
}

#[test]
fn idle_connections_hold_no_buffers_and_leases_are_counted_until_dropped() {
    let _serial = serial();
    let _w = Watchdog::new("idle connections", HANG);
    const N: usize = 200;
    let exec = exec_with(256, 16 * 1024);
    let waiting = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(AtomicUsize::new(0));
    // Each task keeps its lease until the test lets go.
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (w, r, rel) = (waiting.clone(), received.clone(), released.clone());
    let addr = serve(&exec, move |s| {
        let (w, r, rel, rx) = (w.clone(), r.clone(), rel.clone(), release_rx.clone());
        async move {
            let c = s.recv_pooled();
            w.fetch_add(1, Ordering::SeqCst);
            let lease = match c.await {
                Ok(b) => b,
                Err(_) => return,
            };
            assert_eq!(&lease[..], b"x");
            r.fetch_add(1, Ordering::SeqCst);
            while !rel.load(Ordering::SeqCst) {
                if rx.lock().unwrap().try_recv().is_ok() {
                    rel.store(true, Ordering::SeqCst);
                }
                ringshard::yield_now().await;
            }
            drop(lease);
        }
    });
    let mut idle: Vec<std::net::TcpStream> = (0..N)
        .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
        .collect();
    eventually("every receive made", HANG, || {
        waiting.load(Ordering::SeqCst) == N
    });
    // A receive made after them on the same shard goes through: they were all issued.
    {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(b"x").unwrap();
        eventually("the probe received", HANG, || {
            received.load(Ordering::SeqCst) == 1
        });
    }
    let st = stats(&exec);
    // 200 receives wait for silent peers: none holds a buffer (the probe's lease is the one).
    assert_eq!(st.recv_buffers_held, 1, "{st:?}");
    if st.backend == Backend::IoUring {
        assert_eq!(st.recv_buffers, 256, "{st:?}");
    }
    for c in &mut idle {
        c.write_all(b"x").unwrap();
    }
    eventually("every idle connection received", HANG, || {
        received.load(Ordering::SeqCst) == N + 1
    });
    let st = stats(&exec);
    assert_eq!(st.recv_buffers_held, (N + 1) as u64, "{st:?}");
    if has_ring(&exec) {
        assert_eq!(st.recv_buffers_exhausted, 0, "{st:?}");
    }
    release_tx.send(()).unwrap();
    eventually("every lease dropped", HANG, || {
        stats(&exec).recv_buffers_held == 0
    });
}

#[test]
fn more_receivers_than_buffers_all_receive_and_buffers_come_back() {
    let _serial = serial();
    let _w = Watchdog::new("more receivers than buffers", HANG);
    const N: usize = 16;
    let exec = exec_with(4, 4096);
    let (lease_tx, lease_rx) = mpsc::channel::<(usize, RecvBuf)>();
    let lease_tx = Arc::new(Mutex::new(lease_tx));
    let addr = serve(&exec, move |s| {
        let tx = lease_tx.clone();
        async move {
            let b = s.recv_pooled().await.expect("recv_pooled");
            let who = b[0] as usize;
            // The lease crosses to the test thread and is dropped there.
            tx.lock().unwrap().send((who, b)).unwrap();
        }
    });
    let mut conns: Vec<std::net::TcpStream> = (0..N)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    for (i, c) in conns.iter_mut().enumerate() {
        let msg: Vec<u8> = (0..1000).map(|j| (i + j) as u8).collect();
        c.write_all(&msg).unwrap();
    }
    let mut leases = Vec::new();
    for _ in 0..N {
        leases.push(lease_rx.recv_timeout(HANG).expect("a receive"));
    }
    for (who, b) in &leases {
        // A receive may see fewer bytes than were sent (they arrive as they do): a prefix.
        let want: Vec<u8> = (0..b.len()).map(|j| (who + j) as u8).collect();
        assert_bytes_eq(b, &want, "received");
    }
    let st = stats(&exec);
    assert_eq!(st.recv_buffers_held, N as u64, "{st:?}");
    if has_ring(&exec) {
        // 4 ring buffers, 16 receivers holding theirs: 12 found the ring empty (ENOBUFS) and
        // took plain buffers.
        let from_ring = leases.iter().filter(|(_, b)| b.is_from_ring()).count();
        assert_eq!(from_ring, 4, "{st:?}");
        assert_eq!(st.recv_buffers_exhausted, (N - 4) as u64, "{st:?}");
    }
    // Dropped on this thread (not the shard's): the buffers go back to the ring.
    drop(leases);
    assert_eq!(stats(&exec).recv_buffers_held, 0);
    // The ring is whole again: the next receives come from it.
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(&[7u8; 10]).unwrap();
    let (_, b) = lease_rx.recv_timeout(HANG).unwrap();
    assert_eq!(&b[..], &[7u8; 10]);
    assert_eq!(b.is_from_ring(), has_ring(&exec));
}

#[test]
fn a_pooled_receive_dropped_or_past_its_deadline_holds_no_buffer_and_loses_nothing() {
    let _serial = serial();
    let _w = Watchdog::new("cancelled pooled receives", HANG);
    let exec = exec_with(1, 4096);
    let (res_tx, res_rx) = mpsc::channel::<String>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Arc::new(Mutex::new(go_rx));
    let res_tx = Arc::new(Mutex::new(res_tx));
    let addr = serve(&exec, move |mut s| {
        let (res_tx, go_rx) = (res_tx.clone(), go_rx.clone());
        async move {
            // 1. A deadline: the peer sends nothing.
            s.set_recv_timeout(Some(Duration::from_millis(20)));
            let r = s.recv_pooled().await;
            let msg = format!("{:?}", r.map(|b| b.len()).map_err(|e| e.to_string()));
            res_tx.lock().unwrap().send(msg).unwrap();
            // 2. Dropped while waiting in the kernel.
            s.set_recv_timeout(None);
            {
                let mut c = s.recv_pooled();
                assert!(pending(&mut c));
                ringshard::yield_now().await;
            }
            while go_rx.lock().unwrap().try_recv().is_err() {
                ringshard::yield_now().await;
            }
            // 3. Nothing was lost, and the one ring buffer is free: the next receive has it.
            let b = s.recv_pooled().await.expect("recv_pooled");
            let msg = format!(
                "{} {}",
                String::from_utf8_lossy(&b),
                if b.is_from_ring() { "ring" } else { "plain" }
            );
            res_tx.lock().unwrap().send(msg).unwrap();
        }
    });
    // Counted before the connection: the task drops its second receive as soon as it has
    // reported the first, which on a loaded machine can be before this thread looks again.
    let before = stats(&exec).cancelled;
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let first = res_rx.recv_timeout(HANG).unwrap();
    assert!(first.contains("deadline"), "{first}");
    eventually("the dropped receive's cancellation", HANG, || {
        stats(&exec).cancelled > before
    });
    assert_eq!(stats(&exec).recv_buffers_held, 0);
    go_tx.send(()).unwrap();
    c.write_all(b"late words").unwrap();
    let want = if has_ring(&exec) {
        "late words ring"
    } else {
        "late words plain"
    };
    assert_eq!(res_rx.recv_timeout(HANG).unwrap(), want);
    eventually("the lease dropped", HANG, || {
        stats(&exec).recv_buffers_held == 0
    });
    assert!(stats(&exec).deadline_exceeded >= 1);
}

#[test]
fn recv_buffers_out_of_range_are_refused_with_the_range() {
    for (count, size) in [(3u16, 4096usize), (4, 0), (4, (1 << 20) + 1)] {
        let e = Executor::builder()
            .shards(1)
            .recv_buffers(count, size)
            .build()
            .expect_err("refused");
        assert!(e.to_string().contains("power of two"), "{e}");
    }
    // 0: no ring; receives take plain buffers.
    let exec = exec_with(0, 4096);
    assert_eq!(stats(&exec).recv_buffers, 0);
}

#[test]
fn a_receive_that_finds_the_ring_empty_holds_no_buffer_while_its_peer_is_silent() {
    let _serial = serial();
    let _w = Watchdog::new("idle receive, ring empty", HANG);
    let exec = exec_with(1, 4096);
    let waiting = Arc::new(AtomicUsize::new(0));
    let (lease_tx, lease_rx) = mpsc::channel::<RecvBuf>();
    let lease_tx = Arc::new(Mutex::new(lease_tx));
    let w = waiting.clone();
    let addr = serve(&exec, move |s| {
        let (tx, w) = (lease_tx.clone(), w.clone());
        async move {
            let mut c = s.recv_pooled();
            if pending(&mut c) {
                w.fetch_add(1, Ordering::SeqCst);
            }
            if let Ok(b) = c.await {
                tx.lock().unwrap().send(b).unwrap();
            }
        }
    });
    // The one ring buffer is leased (held by this thread).
    let mut first = std::net::TcpStream::connect(addr).unwrap();
    first.write_all(b"a").unwrap();
    let held = lease_rx.recv_timeout(HANG).expect("first lease");
    assert_eq!(&held[..], b"a");
    // A second connection whose peer says nothing: its receive finds the ring empty. (The
    // first receive may have counted itself as waiting too, before its lease was sent: counted
    // from here.)
    let waited_before = waiting.load(Ordering::SeqCst);
    let mut second = std::net::TcpStream::connect(addr).unwrap();
    eventually("the second receive is waiting", HANG, || {
        waiting.load(Ordering::SeqCst) == waited_before + 1
    });
    // Wait until the shard has issued it (the exhaustion is counted when the kernel answers).
    if has_ring(&exec) {
        eventually("ENOBUFS seen", HANG, || {
            stats(&exec).recv_buffers_exhausted >= 1
        });
    }
    let st = stats(&exec);
    // Only the first lease is held: a waiting receive holds none.
    assert_eq!(st.recv_buffers_held, 1, "{st:?}");
    second.write_all(b"b").unwrap();
    let b = lease_rx.recv_timeout(HANG).expect("second lease");
    assert_eq!(&b[..], b"b");
    drop((held, b));
    eventually("every lease dropped", HANG, || {
        stats(&exec).recv_buffers_held == 0
    });
}

/// The blocking path (a ring without IORING_FEAT_FAST_POLL, Linux 5.6; forced here): one
/// non-blocking RECV into a plain buffer, no ring selection and no wait. A silent peer: EAGAIN
/// at once (the socket still usable, no buffer held); bytes that arrived: received, byte for
/// byte, in a plain buffer; the peer's shutdown: an empty buffer.
#[test]
fn on_the_blocking_path_a_pooled_receive_takes_what_arrived_or_fails_with_eagain() {
    use ringshard::OpKind;
    let _serial = serial();
    let _w = Watchdog::new("blocking recv_pooled", HANG);
    let exec = Arc::new(
        Executor::builder()
            .shards(1)
            .recv_buffers(8, 4096)
            .force_blocking(&[OpKind::RecvPooled])
            .build()
            .expect("executor"),
    );
    let blocking = &stats(&exec).blocking_ops;
    assert!(blocking.contains(&OpKind::RecvPooled), "{blocking:?}");
    let (step_tx, step_rx) = mpsc::channel::<Result<Vec<u8>, (Option<i32>, String)>>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Arc::new(Mutex::new(go_rx));
    let addr = serve(&exec, move |s| {
        let (step_tx, go_rx) = (step_tx.clone(), go_rx.clone());
        async move {
            // Waits (yielding) for the test's word that the peer acted.
            let go = || async {
                while go_rx.lock().unwrap().try_recv().is_err() {
                    ringshard::yield_now().await;
                }
            };
            // Receives, again while loopback delivery lags (EAGAIN: nothing yet).
            let recv = || async {
                loop {
                    match s.recv_pooled().await {
                        Err(e) if e.errno() == Some(libc::EAGAIN) => ringshard::yield_now().await,
                        r => return r,
                    }
                }
            };
            // 1. The peer has sent nothing: EAGAIN at once, naming the operation.
            let r = s.recv_pooled().await.map(|b| b.to_vec());
            step_tx
                .send(r.map_err(|e| (e.errno(), e.to_string())))
                .unwrap();
            // 2. Bytes sent: received into a plain buffer (no ring on this path).
            go().await;
            let got = recv().await.expect("recv_pooled");
            assert!(!got.is_from_ring());
            step_tx.send(Ok(got.to_vec())).unwrap();
            drop(got);
            // 3. The peer shut down its sending side: an empty buffer.
            go().await;
            let end = recv().await.expect("recv_pooled at the end");
            step_tx.send(Ok(end.to_vec())).unwrap();
        }
    });
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let first = step_rx.recv_timeout(HANG).unwrap();
    let (errno, e) = first.expect_err("a receive with nothing arrived");
    assert_eq!(errno, Some(libc::EAGAIN), "{e}");
    assert!(e.contains("recv_pooled"), "{e}");
    assert_eq!(stats(&exec).recv_buffers_held, 0, "EAGAIN held a buffer");
    c.write_all(b"hello, blocking path").unwrap();
    go_tx.send(()).unwrap();
    assert_eq!(
        step_rx.recv_timeout(HANG).unwrap().unwrap(),
        b"hello, blocking path"
    );
    c.shutdown(std::net::Shutdown::Write).unwrap();
    go_tx.send(()).unwrap();
    assert_eq!(step_rx.recv_timeout(HANG).unwrap().unwrap(), b"");
    assert_eq!(stats(&exec).recv_buffers_held, 0, "a buffer still held");
}
