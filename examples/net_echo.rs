//! Echo round trips through `ringshard::net` (a server task on shard 0) or a plain std
//! thread-per-connection server, from one std client doing ping-pong of 64-byte messages; prints
//! round trips per second and the process's CPU time per round trip (user + system, from
//! getrusage: less sensitive to other load than wall-clock time).
//!
//! `cargo run --release --example net_echo -- [ringshard|std] [round_trips] [idle_connections]`
//! (RINGSHARD_BACKEND=threads for the threads backend). Idle connections each hold a receive
//! that waits (a silent peer), to see what they cost the served one.

use ringshard::{Executor, TcpListener, TcpStream};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

fn cpu_us() -> f64 {
    // SAFETY: getrusage writes one rusage into a local.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 * 1e6 + tv.tv_usec as f64;
    t(ru.ru_utime) + t(ru.ru_stime)
}

async fn echo(s: TcpStream) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let (r, b) = match s.recv(buf).await {
            Ok(x) => x,
            Err(_) => return,
        };
        match r {
            Ok(n) if n > 0 => {}
            _ => return,
        }
        let (r, b) = match s.send_all(b).await {
            Ok(x) => x,
            Err(_) => return,
        };
        if r.is_err() {
            return;
        }
        buf = b;
    }
}

fn ringshard_server(exec: &Executor) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    exec.spawn_on(0, async move {
        let local = ringshard::local().expect("shard");
        let l = TcpListener::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        tx.send(l.local_addr()).unwrap();
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            local.spawn_local(echo(s)).detach();
        }
    })
    .detach();
    rx.recv().unwrap()
}

fn std_server() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let mut b = [0u8; 4096];
                    while let Ok(n) = s.read(&mut b) {
                        if n == 0 || s.write_all(&b[..n]).is_err() {
                            return;
                        }
                    }
                })
                .unwrap();
        }
    });
    addr
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("ringshard", String::as_str);
    let n: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let idle: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(0);
    let exec = Executor::builder().shards(1).build().expect("executor");
    let addr = match mode {
        "std" => std_server(),
        _ => ringshard_server(&exec),
    };
    let _idle: Vec<std::net::TcpStream> = (0..idle)
        .map(|_| std::net::TcpStream::connect(addr).expect("idle connect"))
        .collect();
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    let msg = [42u8; 64];
    let mut back = [0u8; 64];
    for _ in 0..1000 {
        c.write_all(&msg).unwrap();
        c.read_exact(&mut back).unwrap();
    }
    let (t0, cpu0) = (Instant::now(), cpu_us());
    for _ in 0..n {
        c.write_all(&msg).unwrap();
        c.read_exact(&mut back).unwrap();
    }
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_us() - cpu0);
    let backend = exec.stats().shards[0].backend;
    println!(
        "mode={mode} backend={backend:?} idle={idle} round_trips={n} rt_per_s={:.0} cpu_us_per_rt={:.2}",
        n as f64 / secs,
        cpu / n as f64
    );
}
