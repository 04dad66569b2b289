//! send_file of an O_DIRECT file to a TCP sink, by how it sends: SEND (a copy) or SEND_ZC
//! (zero-copy), from the op's own buffers or from registered pool buffers (READ_FIXED, SEND_ZC
//! with IORING_RECVSEND_FIXED_BUF), with one buffer per send or two (the next round's READ
//! beside the current send). Sends per second and CPU time of this process (user + system: the
//! shards, io-wq workers) per GiB, per send size, the modes interleaved round by round (load on
//! a shared machine hits all alike). The sink is another process (`sink` mode), so its copy-out
//! is not counted; run it in another network namespace to send over a veth pair.
//!
//! Usage:
//!   send_zc_bench sink 0.0.0.0:7000
//!   send_zc_bench send 127.0.0.1:7000 /tmp/file [MiB per run] [rounds] [sizes in KiB, comma]
//!
//! The file must exist (its first 64 MiB are sent, from offset 0 up); it is opened with O_DIRECT.
//! Modes: `copy`/`zc` (send_zc_min u64::MAX / 0), `own`/`fixed` (a pool of 4 KiB buffers, too
//! small for a round, or of 8 x 1 MiB: each send leases its buffers), `1`/`2` pool buffers per
//! send.

use ringshard::{Executor, OpenOptions};
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn cpu() -> Duration {
    // SAFETY: getrusage writes one struct into a local.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn sink(addr: &str) {
    let l = TcpListener::bind(addr).expect("bind");
    for c in l.incoming() {
        let mut c = c.expect("accept");
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
        });
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("sink") => return sink(args.get(2).map_or("0.0.0.0:7000", String::as_str)),
        Some("send") => {}
        _ => {
            eprintln!("usage: send_zc_bench sink ADDR | send ADDR FILE [MiB] [rounds] [KiB,..]");
            std::process::exit(2);
        }
    }
    let addr = args.get(2).expect("address").clone();
    let path = args.get(3).expect("file").clone();
    let mib: u64 = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(256);
    let rounds: usize = args.get(5).and_then(|a| a.parse().ok()).unwrap_or(3);
    let sizes: Vec<u64> = args
        .get(6)
        .map_or("16,64,256,1024", String::as_str)
        .split(',')
        .filter_map(|s| s.parse::<u64>().ok())
        .map(|k| k * 1024)
        .collect();
    let span: u64 = 64 << 20;
    // (name, send_zc_min, pool buffer size, buffers per send)
    // (A send without pool buffers has one of its own: no `own-2`.)
    let modes: [(&str, u64, usize, usize); 6] = [
        ("copy-own", u64::MAX, 4096, 1),
        ("copy-fixed-1", u64::MAX, 1 << 20, 1),
        ("copy-fixed-2", u64::MAX, 1 << 20, 2),
        ("zc-own", 0, 4096, 1),
        ("zc-fixed-1", 0, 1 << 20, 1),
        ("zc-fixed-2", 0, 1 << 20, 2),
    ];
    let execs: Vec<Executor> = modes
        .iter()
        .map(|&(_, min, size, buffers)| {
            Executor::builder()
                .shards(1)
                .send_zc_min(min)
                .buffer_size(size)
                .buffer_count(8)
                .send_file_buffers(buffers)
                .build()
                .unwrap()
        })
        .collect();
    let files: Vec<_> = execs
        .iter()
        .map(|e| {
            e.open(&path, OpenOptions::new().read(true).direct(true))
                .wait()
                .expect("open O_DIRECT")
        })
        .collect();
    let socks: Vec<TcpStream> = execs
        .iter()
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    // leases_per_send: pool buffers leased per send_file (0: the op's own buffers).
    println!("size_kib mode round sends_per_s gib_per_s cpu_s_per_gib leases_per_send");
    let leases = |e: &Executor| e.stats().shards[0].pool.acquisitions;
    for &size in &sizes {
        let n = (mib << 20) / size;
        for round in 0..rounds {
            for (i, &(name, ..)) in modes.iter().enumerate() {
                let l0 = leases(&execs[i]);
                let (t0, c0) = (Instant::now(), cpu());
                let mut off = 0u64;
                for _ in 0..n {
                    let sent = execs[i]
                        .send_file(&files[i], off, size, &socks[i])
                        .wait()
                        .expect("send_file");
                    assert_eq!(sent, size);
                    off = (off + size) % span;
                }
                let (wall, cpu_t) = (t0.elapsed().as_secs_f64(), (cpu() - c0).as_secs_f64());
                let leased = (leases(&execs[i]) - l0) as f64 / n as f64;
                let gib = (n * size) as f64 / f64::from(1u32 << 30);
                println!(
                    "{} {name} {round} {:.0} {:.3} {:.3} {leased:.2}",
                    size / 1024,
                    n as f64 / wall,
                    gib / wall,
                    cpu_t / gib
                );
            }
        }
    }
}
