//! How a connection read in a loop costs the shard: `recv_pooled` per chunk (one RECV SQE each)
//! against `recv_stream` (one multishot RECV armed for the stream), and `recv` into the task's
//! own buffer, over loopback TCP from a std client thread.
//!
//! Two loads:
//! - `sink`: the client writes `messages` messages of `size` bytes (TCP_NODELAY, one write each)
//!   and the server task reads them all (chunks as the kernel cuts them).
//! - `echo`: ping-pong: the client writes one message and waits for it back (each receive waits
//!   for its peer: the case where a receive is armed before its bytes come).
//!
//! Printed: the shard thread's CPU time (CLOCK_THREAD_CPUTIME_ID, read on the shard before and
//! after: the server's cost only, not the client's) per message, per chunk received and per MB,
//! and SQEs per chunk (`ShardStats::sqes_submitted`, which also counts the shard's own SQEs: its
//! eventfd poll before each sleep). CPU time is less sensitive to other load than wall time; the
//! shard runs with no idle spin (`ExecutorBuilder::spin(0)`), so it counts the work, not the
//! shard's watch of its inbox while it waits for the client.
//!
//! `cargo run --release --example recv_stream_bench -- [sink|echo] [pooled|stream|recv]
//! [messages] [size] [connections]` (RINGSHARD_BACKEND=threads for the threads backend: `stream` then runs
//! `recv_pooled`'s rounds).

use ringshard::{Executor, TcpListener, TcpStream};
use std::io::{Read, Write};
use std::sync::mpsc;

/// The calling thread's CPU time, in microseconds.
fn thread_cpu_us() -> f64 {
    // SAFETY: clock_gettime writes one timespec into a local.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

/// The shard thread's CPU time, read on it.
fn shard_cpu_us(exec: &Executor) -> f64 {
    exec.spawn_on(0, async { thread_cpu_us() })
        .wait()
        .expect("shard cpu")
}

/// Receives until `want` bytes came (or the end), echoing them if `echo`, with `mode`.
async fn serve(s: TcpStream, mode: String, want: u64, echo: bool, done: mpsc::Sender<(u64, u64)>) {
    let mut got = 0u64;
    let mut chunks = 0u64;
    let mut stream = s.recv_stream();
    let mut own = Vec::with_capacity(16 * 1024);
    while got < want {
        chunks += 1;
        let bytes: Vec<u8> = if mode == "recv" {
            let (r, b) = s.recv(own).await.expect("recv");
            let n = r.expect("recv");
            if !echo {
                got += n as u64;
                own = b;
                if n == 0 {
                    break;
                }
                continue;
            }
            own = Vec::with_capacity(16 * 1024);
            b
        } else {
            let b = if mode == "stream" {
                stream.next().await.expect("next")
            } else {
                s.recv_pooled().await.expect("recv_pooled")
            };
            if !echo {
                got += b.len() as u64;
                if b.is_empty() {
                    break;
                }
                continue;
            }
            b.to_vec()
        };
        if bytes.is_empty() {
            break;
        }
        got += bytes.len() as u64;
        let (r, _) = s.send_all(bytes).await.expect("send");
        r.expect("send");
    }
    drop(stream);
    done.send((got, chunks)).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let load = args.get(1).cloned().unwrap_or_else(|| "sink".into());
    let mode = args.get(2).cloned().unwrap_or_else(|| "stream".into());
    let messages: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let size: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(64);
    let conns: u64 = args.get(5).and_then(|a| a.parse().ok()).unwrap_or(1).max(1);
    let echo = load == "echo";
    // No idle spin: an idle shard sleeps at once, so its CPU time is the work of the receives,
    // not the 20 µs watch of its inbox after each (which would cost both modes alike).
    let exec = Executor::builder()
        .shards(1)
        .spin(std::time::Duration::ZERO)
        .build()
        .expect("executor");
    // `conns` connections, each with its share of the messages (a client thread each): with
    // several, the shard has work waiting more often and sleeps less per receive.
    let per_conn = messages / conns;
    let messages = per_conn * conns;
    let want = messages * size as u64;
    let (addr_tx, addr_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let m = mode.clone();
    exec.spawn_on(0, async move {
        let local = ringshard::local().expect("on a shard");
        let l = TcpListener::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        addr_tx.send(l.local_addr()).unwrap();
        for _ in 0..conns {
            let (s, _) = l.accept().await.expect("accept");
            let want = per_conn * size as u64;
            local
                .spawn_local(serve(s, m.clone(), want, echo, done_tx.clone()))
                .detach();
        }
    })
    .detach();
    let addr = addr_rx.recv().unwrap();
    let clients: Vec<std::net::TcpStream> = (0..conns)
        .map(|_| {
            let c = std::net::TcpStream::connect(addr).unwrap();
            c.set_nodelay(true).unwrap();
            c
        })
        .collect();
    let st0 = exec.stats().shards[0].clone();
    let (cpu0, sqes0) = (shard_cpu_us(&exec), st0.sqes_submitted);
    let t0 = std::time::Instant::now();
    let threads: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                let msg = vec![42u8; size];
                let mut back = vec![0u8; size];
                for _ in 0..per_conn {
                    c.write_all(&msg).unwrap();
                    if echo {
                        c.read_exact(&mut back).unwrap();
                    }
                }
                c
            })
        })
        .collect();
    let (mut got, mut chunks) = (0, 0);
    for _ in 0..conns {
        let (g, c) = done_rx.recv().unwrap();
        got += g;
        chunks += c;
    }
    let _clients: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let secs = t0.elapsed().as_secs_f64();
    let (cpu, sqes) = (
        shard_cpu_us(&exec) - cpu0,
        exec.stats().shards[0].sqes_submitted - sqes0,
    );
    assert_eq!(got, want, "bytes received");
    let st = &exec.stats().shards[0];
    println!(
        "load={load} mode={mode} backend={:?} messages={messages} size={size} conns={conns} \
         chunks={chunks} shard_cpu_us_per_msg={:.3} shard_cpu_us_per_chunk={:.3} \
         shard_cpu_ms_per_mb={:.2} sqes_per_chunk={:.3} enters_per_chunk={:.3} \
         sleeps_per_chunk={:.3} msg_per_s={:.0}",
        st.backend,
        cpu / messages as f64,
        cpu / chunks as f64,
        cpu / 1e3 / (want as f64 / 1e6),
        sqes as f64 / chunks as f64,
        (st.submit_calls - st0.submit_calls) as f64 / chunks as f64,
        (st.sleeps - st0.sleeps) as f64 / chunks as f64,
        messages as f64 / secs,
    );
}
