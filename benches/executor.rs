//! Executor benchmarks: the routing + channel round trip of one request (a zero-length read,
//! which does no I/O) through a `Completion` and through a `Session`, and end-to-end 4 KiB reads
//! from the page cache from one and from several caller threads, per request and by session.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringshard::{Executor, File, OpenOptions};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

const FILE_SIZE: u64 = 32 << 20;
const BLOCKS: u64 = FILE_SIZE / 4096;

fn setup(shards: usize, files: usize) -> (tempfile::TempDir, Arc<Executor>, Vec<File>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let exec = Executor::builder()
        .shards(shards)
        .build()
        .expect("executor");
    let chunk = vec![0xa5u8; 1 << 20];
    let files = (0..files)
        .map(|i| {
            let path = dir.path().join(format!("bench-{i}"));
            let mut f = std::fs::File::create(&path).expect("create");
            for _ in 0..(FILE_SIZE >> 20) {
                f.write_all(&chunk).expect("fill");
            }
            exec.open(&path, OpenOptions::new().read(true))
                .wait()
                .expect("open")
        })
        .collect();
    (dir, Arc::new(exec), files)
}

fn next(n: &mut u64) -> u64 {
    *n = n
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *n >> 11
}

fn round_trip(c: &mut Criterion) {
    let (_dir, exec, files) = setup(1, 1);
    c.bench_function("executor/round_trip_empty_read", |b| {
        b.iter(|| exec.read(&files[0], 0, 0).wait().expect("read"))
    });
}

fn session_round_trip(c: &mut Criterion) {
    let (_dir, exec, files) = setup(1, 1);
    let mut s = exec.session_with_capacity(32).expect("session");
    let mut done = Vec::with_capacity(32);
    let mut g = c.benchmark_group("executor");
    g.bench_function("session_round_trip_empty_read", |b| {
        b.iter(|| {
            s.read(&files[0], 0, 0, Vec::new(), 0).expect("submit");
            s.wait(1, &mut done).expect("wait");
            done.clear();
        })
    });
    // 32 zero-length reads per flush: the hop's cost per request when it is batched.
    g.throughput(Throughput::Elements(32));
    g.bench_function("session_round_trip_batch32", |b| {
        b.iter(|| {
            for t in 0..32 {
                s.read(&files[0], 0, 0, Vec::new(), t).expect("submit");
            }
            s.wait(32, &mut done).expect("wait");
            done.clear();
        })
    });
    g.finish();
}

fn reads_one_thread(c: &mut Criterion) {
    let (_dir, exec, files) = setup(1, 1);
    let mut g = c.benchmark_group("executor");
    let mut n = 1u64;
    g.throughput(Throughput::Elements(1));
    g.bench_function("read_4k_qd1", |b| {
        b.iter(|| {
            let off = next(&mut n) % BLOCKS * 4096;
            exec.read(&files[0], off, 4096).wait().expect("read")
        })
    });
    g.throughput(Throughput::Elements(32));
    g.bench_function("read_4k_batch32", |b| {
        b.iter(|| {
            let mut batch = exec.batch();
            let pending: Vec<_> = (0..32)
                .map(|_| batch.read(&files[0], next(&mut n) % BLOCKS * 4096, 4096))
                .collect();
            batch.submit();
            for p in pending {
                p.wait().expect("read");
            }
        })
    });
    let mut s = exec.session_with_capacity(32).expect("session");
    let mut done = Vec::with_capacity(32);
    let mut spare: Vec<Vec<u8>> = (0..32).map(|_| Vec::with_capacity(4096)).collect();
    g.bench_function("session_read_4k_batch32", |b| {
        b.iter(|| {
            for t in 0..32 {
                let buf = spare.pop().unwrap_or_default();
                s.read(&files[0], next(&mut n) % BLOCKS * 4096, 4096, buf, t)
                    .expect("submit");
            }
            s.wait(32, &mut done).expect("wait");
            spare.extend(done.drain(..).map(|d| d.buf));
        })
    });
    g.finish();
}

fn reads_many_threads(c: &mut Criterion) {
    const THREADS: usize = 4;
    let (_dir, exec, files) = setup(2, 4);
    let files = Arc::new(files);
    let mut g = c.benchmark_group("executor");
    g.throughput(Throughput::Elements(THREADS as u64 * 32));
    g.bench_function("read_4k_4threads_batch32", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (exec, files) = (Arc::clone(&exec), Arc::clone(&files));
                    std::thread::spawn(move || {
                        let mut n = t as u64 + 1;
                        for _ in 0..iters {
                            let mut batch = exec.batch();
                            let pending: Vec<_> = (0..32)
                                .map(|i| {
                                    let f = &files[(t + i) % files.len()];
                                    batch.read(f, next(&mut n) % BLOCKS * 4096, 4096)
                                })
                                .collect();
                            batch.submit();
                            for p in pending {
                                p.wait().expect("read");
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().expect("worker");
            }
            start.elapsed()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = round_trip, session_round_trip, reads_one_thread, reads_many_threads
}
criterion_main!(benches);
