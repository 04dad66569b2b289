//! send_file of an O_DIRECT file, zero-copy (SEND_ZC) against copy (SEND), to a TCP sink: sends
//! per second and CPU time of this process (user + system: the shard, io-wq workers) per GiB,
//! per send size, the two modes interleaved round by round (load on a shared machine hits both
//! alike). The sink is another process (`sink` mode), so its copy-out is not counted; run it in
//! another network namespace to send over a veth pair.
//!
//! Usage:
//!   send_zc_bench sink 0.0.0.0:7000
//!   send_zc_bench send 127.0.0.1:7000 /tmp/file [MiB per run] [rounds] [sizes in KiB, comma]
//!
//! The file must exist (its first 64 MiB are sent, from offset 0 up); it is opened with O_DIRECT.

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
    let modes = [("zc", 0u64), ("copy", u64::MAX)];
    let execs: Vec<Executor> = modes
        .iter()
        .map(|&(_, min)| {
            Executor::builder()
                .shards(1)
                .send_zc_min(min)
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
    println!("size_kib mode round sends_per_s gib_per_s cpu_s_per_gib");
    for &size in &sizes {
        let n = (mib << 20) / size;
        for round in 0..rounds {
            for (i, &(name, _)) in modes.iter().enumerate() {
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
                let gib = (n * size) as f64 / f64::from(1u32 << 30);
                println!(
                    "{} {name} {round} {:.0} {:.3} {:.3}",
                    size / 1024,
                    n as f64 / wall,
                    gib / wall,
                    cpu_t / gib
                );
            }
        }
    }
}
