//! RegisteredBufferPool micro benchmarks: acquire/release, and submit + complete of a 4 KiB
//! READ_FIXED from the page cache.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use io_uring::IoUring;
use ringshard::RegisteredBufferPool;
use std::hint::black_box;
use std::io::Write;
use std::os::fd::AsRawFd;

fn acquire_release(c: &mut Criterion) {
    let mut ring = IoUring::new(64).expect("io_uring");
    let mut pool = RegisteredBufferPool::new(&mut ring, 4096, 256).expect("pool");
    c.bench_function("pool/acquire+release", |b| {
        b.iter(|| {
            let (idx, _) = pool.acquire().expect("free buffer");
            pool.release(black_box(idx));
        })
    });
}

fn read_fixed_4k(c: &mut Criterion) {
    const FILE_SIZE: u64 = 64 << 20;
    let mut file = tempfile::tempfile().expect("temp file");
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..(FILE_SIZE >> 20) {
        file.write_all(&chunk).expect("fill");
    }
    let fd = file.as_raw_fd();
    let mut ring = IoUring::new(64).expect("io_uring");
    let mut pool = RegisteredBufferPool::new(&mut ring, 4096, 64).expect("pool");
    let blocks = FILE_SIZE / 4096;
    let mut group = c.benchmark_group("pool");
    group.throughput(Throughput::Elements(1));
    let mut n = 0u64;
    group.bench_function("read_fixed_4k_qd1", |b| {
        b.iter(|| {
            n = n
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (idx, _) = pool.acquire().expect("free buffer");
            pool.submit_read_fixed(&mut ring, fd, idx, (n % blocks) * 4096, 4096)
                .expect("push");
            ring.submit_and_wait(1).expect("submit");
            let cqe = ring.completion().next().expect("cqe");
            let (i, res) = pool.complete_cqe(&cqe).expect("pool cqe");
            assert_eq!(res, 4096);
            pool.release(i);
        })
    });
    group.throughput(Throughput::Elements(32));
    group.bench_function("read_fixed_4k_batch32", |b| {
        b.iter_batched(
            || (),
            |()| {
                for _ in 0..32 {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let (idx, _) = pool.acquire().expect("free buffer");
                    pool.submit_read_fixed(&mut ring, fd, idx, (n % blocks) * 4096, 4096)
                        .expect("push");
                }
                ring.submit_and_wait(32).expect("submit");
                let cqes: Vec<_> = ring.completion().collect();
                for cqe in &cqes {
                    let (i, res) = pool.complete_cqe(cqe).expect("pool cqe");
                    assert_eq!(res, 4096);
                    pool.release(i);
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, acquire_release, read_fixed_4k);
criterion_main!(benches);
