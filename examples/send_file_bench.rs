//! send_file against a copy through user space, over a loopback TCP connection: MB/s and CPU
//! time (user + system, of the whole process: shard, io-wq workers and the reading thread) per
//! GiB sent, for sends of 4 KiB, 64 KiB and 1 MiB from the page cache. Modes run interleaved,
//! round by round, so load on a shared machine hits all of them alike.
//!
//! - `send_file`: `Executor::send_file` (SPLICE file -> pipe -> socket on the shard's ring above
//!   its copy threshold, READ + WRITE on the ring below it; `RINGSHARD_SEND_FILE_COPY_MAX=0`
//!   splices every send, `=1073741824` copies every send);
//! - `read+write`: `Executor::read` (done inline, a pread on this thread, when cached) then
//!   `write_all` to the socket: the user-space copy send_file avoids;
//! - `sendfile`: sendfile(2) on this thread (the kernel's own pipe; a reference);
//! - `ring-seq` / `ring-link`: the two SPLICEs of a round on a bare ring (no executor),
//!   submitted one after the other (two waits) or linked (IOSQE_IO_LINK, one submission).
//!
//! Usage: `cargo run --release --example send_file_bench [MiB per run] [rounds]`.

use ringshard::{Executor, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const FILE_LEN: u64 = 64 << 20;
const MODES: [&str; 5] = [
    "send_file",
    "read+write",
    "sendfile",
    "ring-seq",
    "ring-link",
];

/// CPU time of the whole process so far (every thread, io_uring's workers included).
fn cpu() -> Duration {
    // SAFETY: getrusage writes one struct into a local.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A bare ring with one pipe, for the linked / sequential comparison.
struct Bare {
    ring: io_uring::IoUring,
    pipe: [RawFd; 2],
}

impl Bare {
    fn new() -> Bare {
        let mut pipe = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array.
        assert_eq!(
            unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) },
            0
        );
        // SAFETY: F_SETPIPE_SZ takes no memory.
        unsafe { libc::fcntl(pipe[1], libc::F_SETPIPE_SZ, 256 * 1024) };
        Bare {
            ring: io_uring::IoUring::new(8).unwrap(),
            pipe,
        }
    }

    /// Sends `len` bytes at `off` of `file` to `sock` in rounds of at most the pipe's size.
    fn send(&mut self, file: RawFd, off: u64, len: u64, sock: RawFd, link: bool) {
        use io_uring::{opcode, squeue::Flags, types::Fd};
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(256 * 1024) as u32;
            let fill = opcode::Splice::new(Fd(file), (off + done) as i64, Fd(self.pipe[1]), -1, n)
                .build()
                .user_data(1);
            let drain = opcode::Splice::new(Fd(self.pipe[0]), -1, Fd(sock), -1, n)
                .build()
                .user_data(2);
            if link {
                // SAFETY: the SQEs name only descriptors, which outlive the wait below.
                unsafe {
                    let mut sq = self.ring.submission();
                    sq.push(&fill.flags(Flags::IO_LINK)).unwrap();
                    sq.push(&drain).unwrap();
                }
                self.ring.submit_and_wait(2).unwrap();
                let res: Vec<i32> = self.ring.completion().map(|c| c.result()).collect();
                assert!(res.iter().all(|&r| r == n as i32), "{res:?}");
            } else {
                for e in [fill, drain] {
                    // SAFETY: as above.
                    unsafe { self.ring.submission().push(&e).unwrap() };
                    self.ring.submit_and_wait(1).unwrap();
                    let r = self.ring.completion().next().unwrap().result();
                    assert_eq!(r, n as i32);
                }
            }
            done += u64::from(n);
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let per_run: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(256) << 20;
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);

    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let path = dir.path().join("payload");
    std::fs::write(&path, vec![0x5a; FILE_LEN as usize]).unwrap();
    let _ = std::fs::read(&path).unwrap(); // in the page cache
    let exec = Executor::builder().shards(1).build().unwrap();
    let file = exec
        .open(&path, OpenOptions::new().read(true))
        .wait()
        .unwrap();
    let raw_file = std::fs::File::open(&path).unwrap();

    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut sock = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut peer, _) = l.accept().unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let got2 = Arc::clone(&got);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match peer.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => got2.fetch_add(n as u64, Ordering::Release),
            };
        }
    });
    let mut bare = Bare::new();

    println!(
        "mode       size      MB/s  CPU ms/GiB  (median of {rounds} rounds, {} MiB each)",
        per_run >> 20
    );
    for size in [4096u64, 64 << 10, 1 << 20] {
        let n = per_run / size;
        let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); MODES.len()];
        for _ in 0..rounds {
            for (m, mode) in MODES.iter().enumerate() {
                let target = got.load(Ordering::Acquire) + n * size;
                let (t0, c0) = (Instant::now(), cpu());
                for i in 0..n {
                    let off = (i * size) % (FILE_LEN - size);
                    match *mode {
                        "send_file" => {
                            let sent = exec.send_file(&file, off, size, &sock).wait().unwrap();
                            assert_eq!(sent, size);
                        }
                        "read+write" => {
                            let buf = exec.read(&file, off, size as usize).wait().unwrap();
                            sock.write_all(&buf).unwrap();
                        }
                        "sendfile" => {
                            let mut o = off as libc::off_t;
                            let mut left = size as usize;
                            while left > 0 {
                                // SAFETY: `o` is a local the call updates.
                                let r = unsafe {
                                    libc::sendfile(
                                        sock.as_raw_fd(),
                                        raw_file.as_raw_fd(),
                                        &mut o,
                                        left,
                                    )
                                };
                                assert!(r > 0);
                                left -= r as usize;
                            }
                        }
                        "ring-seq" | "ring-link" => bare.send(
                            raw_file.as_raw_fd(),
                            off,
                            size,
                            sock.as_raw_fd(),
                            *mode == "ring-link",
                        ),
                        _ => unreachable!(),
                    }
                }
                results[m].push(finish(&got, target, t0, c0, n * size));
            }
        }
        print_medians(&MODES, size, &results);
    }
    cross_shard(&path, per_run, rounds, &got, &sock);
    drop(sock);
}

/// Waits until the reader got `target` bytes in all; then (MB/s, CPU ms per GiB) of the
/// `bytes` sent since `t0` and `c0`.
fn finish(got: &AtomicU64, target: u64, t0: Instant, c0: Duration, bytes: u64) -> (f64, f64) {
    while got.load(Ordering::Acquire) < target {
        std::thread::yield_now();
    }
    let (wall, c) = (t0.elapsed(), cpu() - c0);
    let bytes = bytes as f64;
    (
        bytes / wall.as_secs_f64() / 1e6,
        c.as_secs_f64() * 1e3 / (bytes / (1u64 << 30) as f64),
    )
}

/// One line per mode: the medians of its rounds.
fn print_medians(modes: &[&str], size: u64, results: &[Vec<(f64, f64)>]) {
    for (mode, r) in modes.iter().zip(results) {
        let mut mbs: Vec<f64> = r.iter().map(|r| r.0).collect();
        let mut cpu: Vec<f64> = r.iter().map(|r| r.1).collect();
        mbs.sort_by(f64::total_cmp);
        cpu.sort_by(f64::total_cmp);
        println!(
            "{mode:<10} {size:>8} {:>8.0} {:>10.0}",
            mbs[mbs.len() / 2],
            cpu[cpu.len() / 2]
        );
    }
}

/// Where a send is asked from, when the bytes always move on the file's shard: the caller's
/// thread, a task on the file's shard, or a task on the other shard (the request crosses to
/// the file's shard, as for a connection owned by another shard). 2 shards.
fn cross_shard(
    path: &std::path::Path,
    per_run: u64,
    rounds: usize,
    got: &AtomicU64,
    sock: &TcpStream,
) {
    let exec = Executor::builder().shards(2).build().unwrap();
    let file = exec
        .open(path, OpenOptions::new().read(true))
        .wait()
        .unwrap();
    let owner = file.shard();
    let modes = ["caller", "task-own", "task-other"];
    println!("send_file asked from (2 shards; bytes move on the file's shard)");
    for size in [64u64 << 10, 1 << 20] {
        let n = per_run / size;
        let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); modes.len()];
        for _ in 0..rounds {
            for (m, mode) in modes.iter().enumerate() {
                let target = got.load(Ordering::Acquire) + n * size;
                let (t0, c0) = (Instant::now(), cpu());
                if *mode == "caller" {
                    for i in 0..n {
                        let off = (i * size) % (FILE_LEN - size);
                        exec.send_file(&file, off, size, sock).wait().unwrap();
                    }
                } else {
                    let shard = if *mode == "task-own" {
                        owner
                    } else {
                        1 - owner
                    };
                    let (f, s) = (file.clone(), sock.try_clone().unwrap());
                    exec.spawn_on(shard, async move {
                        let l = ringshard::local().unwrap();
                        for i in 0..n {
                            let off = (i * size) % (FILE_LEN - size);
                            l.send_file(&f, off, size, &s).await.unwrap();
                        }
                    })
                    .wait()
                    .unwrap();
                }
                results[m].push(finish(got, target, t0, c0, n * size));
            }
        }
        print_medians(&modes, size, &results);
    }
}
