//! recv_file against a copy through user space, over a loopback TCP connection: MB/s and CPU
//! time (user + system, of the whole process: shard, io-wq workers and the sending thread) per
//! GiB received into a file (page cache; no fsync), for receives of 64 KiB, 256 KiB, 1 MiB and 4 MiB.
//! Modes run interleaved, round by round, so load on a shared machine hits both alike.
//!
//! - `recv_file`: `Executor::recv_file` from a non-blocking socket (splice socket -> pipe on the
//!   shard thread, SPLICE pipe -> file on its ring; `RINGSHARD_RECV_FILE_INLINE=0`: both on the
//!   ring);
//! - `recv+write`: a blocking `read` on this thread into a buffer, then `Executor::write` of it
//!   (what an upload costs without recv_file: the copy out of the socket and the copy into the
//!   page cache).
//!
//! Usage: `cargo run --release --example recv_file_bench [MiB per run] [rounds]`.

use ringshard::{Executor, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const MODES: [&str; 2] = ["recv_file", "recv+write"];
const SIZES: [u64; 4] = [64 << 10, 256 << 10, 1 << 20, 4 << 20];

/// CPU time of the whole process so far (every thread, io_uring's workers included).
fn cpu() -> Duration {
    // SAFETY: an all-zero rusage is valid (integers only).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one struct into that local.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A connected pair over loopback: (the receiving side, the sending side).
fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (s, _) = l.accept().expect("accept");
    (s, c)
}

/// One run: `total` bytes sent by a thread, received in calls of `size` bytes by `mode` into a
/// fresh file: (seconds, CPU seconds).
fn run(exec: &Executor, dir: &std::path::Path, mode: &str, size: u64, total: u64) -> (f64, f64) {
    let path = dir.join(format!("in-{mode}-{size}"));
    let _ = std::fs::remove_file(&path);
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true);
    let file = exec.open(&path, &opts).wait().expect("open");
    let (mut rx, mut tx) = pair();
    // recv_file from a non-blocking socket, as ringshard's own streams are (its fill runs on
    // the shard thread then); the copy reads a blocking one on this thread.
    rx.set_nonblocking(mode == "recv_file").expect("O_NONBLOCK");
    let sender = std::thread::spawn(move || {
        let chunk = vec![0x5au8; 1 << 20];
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            tx.write_all(&chunk[..n]).expect("send");
            left -= n as u64;
        }
    });
    let (t0, c0) = (Instant::now(), cpu());
    let mut off = 0u64;
    let mut buf = vec![0u8; size as usize];
    while off < total {
        let want = size.min(total - off);
        if mode == "recv_file" {
            let n = exec
                .recv_file(&file, off, want, &rx)
                .wait()
                .expect("recv_file");
            assert_eq!(n, want, "short recv_file");
        } else {
            rx.read_exact(&mut buf[..want as usize]).expect("read");
            let data = std::mem::take(&mut buf);
            let n = exec.write(&file, off, data).wait().expect("write");
            assert_eq!(n as u64, want);
            buf = vec![0u8; size as usize];
        }
        off += want;
    }
    let (secs, cpus) = (t0.elapsed().as_secs_f64(), (cpu() - c0).as_secs_f64());
    sender.join().expect("sender");
    drop(file);
    let _ = std::fs::remove_file(&path);
    (secs, cpus)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(256);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let total = mib << 20;
    let exec = Executor::builder().shards(1).build().expect("executor");
    let dir = tempfile::tempdir_in("/var/tmp").expect("temp dir");
    // (size, mode) -> (MB/s, CPU s per GiB) of each round.
    let mut res: std::collections::BTreeMap<(u64, &str), Vec<(f64, f64)>> = Default::default();
    for round in 0..rounds {
        for &size in &SIZES {
            for (i, _) in MODES.iter().enumerate() {
                // Rotate who goes first.
                let mode = MODES[(i + round) % MODES.len()];
                let (secs, cpus) = run(&exec, dir.path(), mode, size, total);
                let gib = total as f64 / (1u64 << 30) as f64;
                res.entry((size, mode))
                    .or_default()
                    .push((total as f64 / 1e6 / secs, cpus / gib));
            }
        }
    }
    println!(
        "{mib} MiB per run, {rounds} rounds (median); load {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "{:>8} {:>11} | {:>8} | {:>13}",
        "size", "mode", "MB/s", "CPU s per GiB"
    );
    for ((size, mode), v) in &res {
        let med = |f: fn(&(f64, f64)) -> f64| {
            let mut x: Vec<f64> = v.iter().map(f).collect();
            x.sort_by(|a, b| a.total_cmp(b));
            x[x.len() / 2]
        };
        println!(
            "{:>8} {:>11} | {:>8.0} | {:>13.3}",
            size,
            mode,
            med(|r| r.0),
            med(|r| r.1)
        );
    }
}
