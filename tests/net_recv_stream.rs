//! `TcpStream::recv_stream`: a connection's chunks from one receive that stays armed (a
//! multishot receive into the shard's provided-buffer ring on io_uring 6.0+; `recv_pooled` per
//! chunk on the threads backend, without a ring, on older kernels). Real sockets on
//! 127.0.0.1; both backends (RINGSHARD_BACKEND=threads too). States are arranged (silent peers,
//! leases held, queues filled and looked at), never slept for.

mod executor_util;
mod net_util;

use executor_util::*;
use net_util::*;
use ringshard::net::{RecvBuf, RecvStream};
use ringshard::{Error, Executor, OpKind, TcpStream};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// The running kernel's major and minor version.
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0))
}

/// Whether a stream's receive stays armed here (a ring, and a kernel with multishot receives).
fn multishot(exec: &Executor) -> bool {
    has_ring(exec) && kernel_version() >= (6, 0)
}

/// Reads `stream` to its end: the bytes, and how many chunks came from the ring.
async fn read_to_end(stream: &mut RecvStream) -> Result<(Vec<u8>, usize), Error> {
    let mut all = Vec::new();
    let mut from_ring = 0;
    loop {
        let b = stream.next().await?;
        if b.is_empty() {
            return Ok((all, from_ring));
        }
        from_ring += usize::from(b.is_from_ring());
        all.extend_from_slice(&b);
    }
}

/// Writes `msg` in pieces of 1 to 3000 bytes (TCP_NODELAY: many small segments), then shuts
/// down the sending side.
fn send_in_pieces(addr: SocketAddr, msg: Vec<u8>, seed: u64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_nodelay(true).unwrap();
        let mut rng = Rng::new(seed);
        let mut at = 0;
        while at < msg.len() {
            let n = (rng.range(1, 3000) as usize).min(msg.len() - at);
            c.write_all(&msg[at..at + n]).unwrap();
            at += n;
        }
        c.shutdown(std::net::Shutdown::Write).unwrap();
        // Keep the socket until the server is done (its end of stream, then ours).
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
    })
}

/// Many small chunks arrive byte for byte and in order, with and without a ring; the end of the
/// stream is sticky; every buffer goes back.
#[test]
fn a_stream_of_many_small_chunks_arrives_byte_for_byte() {
    let _serial = serial();
    let _w = Watchdog::new("recv_stream byte for byte", HANG);
    for count in [16u16, 0] {
        let exec = exec_with(count, 4096);
        let (tx, rx) = mpsc::channel::<(Vec<u8>, usize, bool)>();
        let tx = Arc::new(Mutex::new(tx));
        let addr = serve(&exec, HANG, move |s| {
            let tx = tx.clone();
            async move {
                let mut stream = s.recv_stream();
                let (all, from_ring) = read_to_end(&mut stream).await.expect("recv_stream");
                // After the end: the end again.
                let again = stream.next().await.expect("after the end").is_empty();
                tx.lock().unwrap().send((all, from_ring, again)).unwrap();
            }
        });
        let mut rng = Rng::new(u64::from(count) + 7);
        for round in 0..3u64 {
            let msg = rng.bytes(400_000 + round as usize * 33_333);
            let writer = send_in_pieces(addr, msg.clone(), round);
            let (got, from_ring, again) = rx.recv_timeout(HANG).expect("the server's bytes");
            writer.join().unwrap();
            assert_bytes_eq(&got, &msg, "received through recv_stream");
            assert!(again, "the end of the stream is sticky");
            if has_ring(&exec) {
                // 16 buffers of 4 KiB carried 400 KB: each went back and came out again.
                assert!(from_ring > 16, "{from_ring}");
            } else {
                assert_eq!(from_ring, 0);
            }
        }
        let st = stats(&exec);
        assert!(st.ops[OpKind::RecvStream.index()] > 0, "{st:?}");
        eventually("buffers back", HANG, || stats(&exec).recv_buffers_held == 0);
    }
}

/// A peer that closes ends the stream (empty chunk); one that resets ends it with the error,
/// for every later call.
#[test]
fn peer_close_and_reset_end_the_stream() {
    let _serial = serial();
    let _w = Watchdog::new("recv_stream close and reset", HANG);
    let exec = exec_with(8, 4096);
    let (tx, rx) = mpsc::channel::<String>();
    let tx = Arc::new(Mutex::new(tx));
    let addr = serve(&exec, HANG, move |s| {
        let tx = tx.clone();
        async move {
            let mut stream = s.recv_stream();
            let mut said = Vec::new();
            for _ in 0..3 {
                said.push(match stream.next().await {
                    Ok(b) if b.is_empty() => "end".to_string(),
                    Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                    Err(e) => format!("error {e}"),
                });
                if said
                    .last()
                    .is_some_and(|s| s == "end" || s.starts_with("error"))
                {
                    let again = match stream.next().await {
                        Ok(b) if b.is_empty() => "end".to_string(),
                        Ok(_) => "bytes".to_string(),
                        Err(e) => format!("error {e}"),
                    };
                    said.push(again);
                    break;
                }
            }
            tx.lock().unwrap().send(said.join("|")).unwrap();
        }
    });
    // Close after a few bytes: the bytes, then the end, then the end again.
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(b"hello").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let said = rx.recv_timeout(HANG).unwrap();
    assert_eq!(said, "hello|end|end");
    drop(c);
    // A reset (SO_LINGER 0, then close) with nothing sent: the error, then the same error.
    let c = std::net::TcpStream::connect(addr).unwrap();
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads one linger from a live local of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&c),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    drop(c);
    let said = rx.recv_timeout(HANG).unwrap();
    let parts: Vec<&str> = said.split('|').collect();
    assert_eq!(parts.len(), 2, "{said}");
    assert!(
        parts[0].contains("ECONNRESET") && parts[0].contains("recv_stream"),
        "{said}"
    );
    assert_eq!(parts[0], parts[1], "the error is sticky");
    eventually("buffers back", HANG, || stats(&exec).recv_buffers_held == 0);
}

/// A ring of 4 buffers, every chunk held until the end: the ring runs empty (ENOBUFS ends the
/// kernel's multishot), the stream goes on with plain buffers, loses nothing, and once the
/// leases are back its chunks come from the ring again.
#[test]
fn an_empty_ring_ends_the_multishot_and_the_stream_recovers() {
    let _serial = serial();
    let _w = Watchdog::new("recv_stream ring empty", HANG);
    let exec = exec_with(4, 4096);
    const FIRST: usize = 200_000;
    let (tx, rx) = mpsc::channel::<(Vec<u8>, usize, usize)>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Arc::new(Mutex::new(go_rx));
    let tx = Arc::new(Mutex::new(tx));
    let addr = serve(&exec, HANG, move |s| {
        let (tx, go_rx) = (tx.clone(), go_rx.clone());
        async move {
            let mut stream = s.recv_stream();
            let mut held: Vec<RecvBuf> = Vec::new();
            let mut n = 0;
            while n < FIRST {
                let b = stream.next().await.expect("next");
                assert!(!b.is_empty(), "end before {FIRST} bytes");
                n += b.len();
                held.push(b);
            }
            let all: Vec<u8> = held.iter().flat_map(|b| b.iter().copied()).collect();
            let plain = held.iter().filter(|b| !b.is_from_ring()).count();
            let chunks = held.len();
            tx.lock().unwrap().send((all, plain, chunks)).unwrap();
            // The leases stay held until the test has looked at the stats.
            while go_rx.lock().unwrap().try_recv().is_err() {
                ringshard::yield_now().await;
            }
            drop(held);
            let b = stream.next().await.expect("after the leases went back");
            let from_ring = usize::from(b.is_from_ring());
            tx.lock().unwrap().send((b.to_vec(), from_ring, 1)).unwrap();
        }
    });
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let msg = Rng::new(3).bytes(FIRST);
    c.write_all(&msg).unwrap();
    let (got, plain, chunks) = rx.recv_timeout(HANG).expect("the first bytes");
    assert_bytes_eq(&got, &msg, "received with the ring empty");
    let st = stats(&exec);
    assert_eq!(st.recv_buffers_held, chunks as u64, "{st:?}");
    if has_ring(&exec) {
        // At most the 4 ring buffers came from the ring while all were held.
        assert!(chunks - plain <= 4, "{chunks} chunks, {plain} plain");
        assert!(st.recv_buffers_exhausted >= 1, "{st:?}");
    } else {
        assert_eq!(plain, chunks);
    }
    go_tx.send(()).unwrap();
    c.write_all(b"again").unwrap();
    let (b, from_ring, _) = rx.recv_timeout(HANG).expect("the next chunk");
    assert_eq!(&b[..], b"again");
    assert_eq!(from_ring == 1, has_ring(&exec));
    eventually("buffers back", HANG, || stats(&exec).recv_buffers_held == 0);
}

/// A reader that takes nothing: the stream queues a bounded number of chunks (the receive is
/// stopped, not holding the ring); dropping the stream gives them back; a `recv_pooled` after it
/// gets the bytes that followed, in order.
#[test]
fn a_slow_reader_holds_a_bounded_queue_and_a_dropped_stream_gives_it_back() {
    let _serial = serial();
    let _w = Watchdog::new("recv_stream bound and drop", HANG);
    const RING: u16 = 64;
    const TOTAL: usize = 2 << 20;
    let exec = exec_with(RING, 4096);
    let armed_stream = multishot(&exec);
    let (tx, rx) = mpsc::channel::<usize>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Arc::new(Mutex::new(go_rx));
    let tx = Arc::new(Mutex::new(tx));
    let queued = Arc::new(AtomicUsize::new(0));
    let q = queued.clone();
    let (rest_tx, rest_rx) = mpsc::channel::<Vec<u8>>();
    let rest_tx = Arc::new(Mutex::new(rest_tx));
    let addr = serve(&exec, HANG, move |s| {
        let (tx, go_rx, q, rest_tx) = (tx.clone(), go_rx.clone(), q.clone(), rest_tx.clone());
        async move {
            let mut stream = s.recv_stream();
            let first = stream.next().await.expect("first chunk");
            tx.lock().unwrap().send(first.len()).unwrap();
            drop(first);
            // Take nothing more; say how much is queued until told to go on.
            while go_rx.lock().unwrap().try_recv().is_err() {
                q.store(stream.queued(), Ordering::SeqCst);
                ringshard::yield_now().await;
            }
            // Dropped with its chunks queued: their bytes are lost, their buffers go back.
            drop(stream);
            // The socket goes on with recv_pooled, after the stream's receive has ended.
            let mut rest = Vec::new();
            loop {
                let b = s.recv_pooled().await.expect("recv_pooled");
                if b.is_empty() {
                    break;
                }
                rest.extend_from_slice(&b);
            }
            rest_tx.lock().unwrap().send(rest).unwrap();
        }
    });
    let msg = Rng::new(11).bytes(TOTAL);
    let c = std::net::TcpStream::connect(addr).unwrap();
    let writer = {
        let mut c = c.try_clone().unwrap();
        let msg = msg.clone();
        std::thread::spawn(move || {
            c.write_all(&msg).unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    let first = rx.recv_timeout(HANG).unwrap();
    let bound = (usize::from(RING) / 4).min(8);
    if armed_stream {
        // The receive stayed armed: chunks queue with no call made, up to the bound.
        eventually("the queue filled", HANG, || {
            queued.load(Ordering::SeqCst) >= bound
        });
        // Stopped there: a slow reader holds the bound's buffers, not the ring. The multishot
        // round was armed with a byte limit of the queue's room (IORING_RECV_MSHOT_LIM), so the
        // kernel took no more buffers for the bytes waiting in the socket. (A kernel without
        // the limit, which refuses it, takes buffers until the stop reaches it: checked only
        // where the limit is known to be there, 6.18.)
        let st = stats(&exec);
        if kernel_version() >= (6, 18) {
            assert!(st.recv_buffers_held <= bound as u64, "{st:?}");
            assert_eq!(st.recv_buffers_exhausted, 0, "{st:?}");
        }
    } else {
        assert_eq!(queued.load(Ordering::SeqCst), 0);
    }
    go_tx.send(()).unwrap();
    let rest = rest_rx.recv_timeout(HANG).expect("the rest");
    writer.join().unwrap();
    // Nothing out of order: what recv_pooled read is the end of the message, and only the
    // stream's queued chunks are missing before it.
    assert!(rest.len() <= TOTAL - first);
    if !armed_stream {
        assert_eq!(rest.len(), TOTAL - first);
    }
    assert_bytes_eq(&rest, &msg[TOTAL - rest.len()..], "read after the stream");
    eventually("buffers back", HANG, || stats(&exec).recv_buffers_held == 0);
    drop(c);
}

/// Dropping a stream with chunks queued gives their buffers back and cancels its receive.
#[test]
fn a_stream_dropped_with_chunks_queued_gives_their_buffers_back() {
    let _serial = serial();
    let _w = Watchdog::new("recv_stream dropped with chunks", HANG);
    let exec = exec_with(64, 4096);
    let armed_stream = multishot(&exec);
    let (tx, rx) = mpsc::channel::<usize>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Arc::new(Mutex::new(go_rx));
    let tx = Arc::new(Mutex::new(tx));
    let addr = serve(&exec, HANG, move |s| {
        let (tx, go_rx) = (tx.clone(), go_rx.clone());
        async move {
            let mut stream = s.recv_stream();
            drop(stream.next().await.expect("first chunk"));
            tx.lock().unwrap().send(0).unwrap();
            while go_rx.lock().unwrap().try_recv().is_err() {
                ringshard::yield_now().await;
            }
            tx.lock().unwrap().send(stream.queued()).unwrap();
            drop(stream);
            tx.lock().unwrap().send(0).unwrap();
            // Keep the connection (the socket) open until the test is done.
            while go_rx.lock().unwrap().try_recv().is_err() {
                ringshard::yield_now().await;
            }
            drop(s);
        }
    });
    let before = stats(&exec).cancelled;
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(b"first").unwrap();
    assert_eq!(rx.recv_timeout(HANG).unwrap(), 0);
    // More chunks, each its own segment after the first was taken.
    for i in 0..3u8 {
        c.write_all(&[i; 100]).unwrap();
        if armed_stream {
            eventually("a chunk held", HANG, || {
                stats(&exec).recv_buffers_held > u64::from(i)
            });
        }
    }
    go_tx.send(()).unwrap();
    let queued = rx.recv_timeout(HANG).unwrap();
    if armed_stream {
        assert!(queued >= 1, "{queued}");
    }
    assert_eq!(rx.recv_timeout(HANG).unwrap(), 0);
    eventually("buffers back", HANG, || stats(&exec).recv_buffers_held == 0);
    if armed_stream {
        // The armed receive was taken out of the kernel.
        eventually("the receive cancelled", HANG, || {
            stats(&exec).cancelled > before
        });
    }
    go_tx.send(()).unwrap();
}

/// A call past its timeout fails with DeadlineExceeded and the stream goes on; dropping a call
/// that waits loses nothing.
#[test]
fn a_timed_out_or_dropped_call_loses_nothing() {
    let _serial = serial();
    let _w = Watchdog::new("recv_stream timeout", HANG);
    let exec = exec_with(8, 4096);
    let (tx, rx) = mpsc::channel::<String>();
    let tx = Arc::new(Mutex::new(tx));
    let addr = serve(&exec, HANG, move |s| {
        let tx = tx.clone();
        async move {
            let mut stream = s.recv_stream();
            stream.set_timeout(Some(Duration::from_millis(20)));
            let r = stream.next().await;
            let said = format!("{:?}", r.map(|b| b.len()).map_err(|e| e.to_string()));
            tx.lock().unwrap().send(said).unwrap();
            // A call dropped while it waits (polled once: its receive is armed).
            stream.set_timeout(None);
            {
                let next = std::pin::pin!(stream.next());
                assert!(poll_once(next));
            }
            tx.lock().unwrap().send("dropped".into()).unwrap();
            let b = stream.next().await.expect("next");
            tx.lock()
                .unwrap()
                .send(String::from_utf8_lossy(&b).into_owned())
                .unwrap();
        }
    });
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let first = rx.recv_timeout(HANG).unwrap();
    assert!(
        first.contains("deadline") && first.contains("recv_stream"),
        "{first}"
    );
    assert_eq!(rx.recv_timeout(HANG).unwrap(), "dropped");
    c.write_all(b"late words").unwrap();
    assert_eq!(rx.recv_timeout(HANG).unwrap(), "late words");
    eventually("buffers back", HANG, || stats(&exec).recv_buffers_held == 0);
}

/// Shutdown with a stream's receive armed and a call waiting (on a thread of its own, not a
/// shard's task): the call fails, nothing hangs.
#[test]
fn shutdown_with_a_stream_armed_ends_it() {
    let _serial = serial();
    let _w = Watchdog::new("recv_stream shutdown", HANG);
    let exec = exec_with(8, 4096);
    let (tx, rx) = mpsc::channel::<TcpStream>();
    let tx = Arc::new(Mutex::new(tx));
    let addr = serve(&exec, HANG, move |s| {
        let tx = tx.clone();
        async move { tx.lock().unwrap().send(s).unwrap() }
    });
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let s = rx.recv_timeout(HANG).expect("the connection");
    c.write_all(b"x").unwrap();
    let (waits_tx, waits_rx) = mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let mut stream = s.recv_stream();
        let first = futures::executor::block_on(stream.next()).expect("first chunk");
        assert_eq!(&first[..], b"x");
        drop(first);
        let mut next = std::pin::pin!(stream.next());
        assert!(poll_once(next.as_mut()));
        waits_tx.send(()).unwrap();
        let r = futures::executor::block_on(next);
        format!("{:?}", r.map(|b| b.len()).map_err(|e| e.to_string()))
    });
    waits_rx.recv_timeout(HANG).expect("the second call waits");
    let exec = Arc::try_unwrap(exec).unwrap_or_else(|_| panic!("one executor handle"));
    exec.shutdown().expect("shutdown");
    let said = reader.join().expect("the reader");
    assert!(said.starts_with("Err"), "{said}");
    drop(c);
}
