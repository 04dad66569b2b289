//! `Executor` and the machine: NUMA placement of the buffer pools, CPU pinning, statistics,
//! async use, wake-ups of sleeping shards and backpressure. Real rings, real files; no timing
//! assertions (the machines are shared and noisy): only correctness and counts.

mod executor_util;

use executor_util::*;
use ringshard::numa::node_of_address;
use ringshard::{Error, Executor, File, OpKind, Placement, ShardStats, Topology};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/sysfs/two_socket_smt"
);

// ---------------------------------------------------------------------------------------------
// 8. Memory placement
// ---------------------------------------------------------------------------------------------

/// On shard `shard`: acquires every pool buffer, touches it, asks the kernel which node each
/// buffer's first and last page is on, releases them. Returns (ctx.numa_node(), nodes seen).
fn pool_nodes(exec: &Executor, shard: usize) -> (Option<u32>, Vec<u32>) {
    ok(
        exec.submit_to(shard, |ctx| {
            let node = ctx.numa_node();
            let mut held = Vec::new();
            let mut seen = Vec::new();
            while let Some((idx, buf)) = ctx.pool().try_acquire() {
                let last = buf.len() - 1;
                buf[0] = 1;
                buf[last] = 1;
                held.push(idx);
            }
            for &idx in &held {
                let buf = ctx.pool().get(idx).expect("acquired buffer");
                for addr in [buf.as_ptr(), buf[buf.len() - 1..].as_ptr()] {
                    seen.push(node_of_address(addr).expect("get_mempolicy"));
                }
            }
            for idx in held {
                ctx.pool().release(idx);
            }
            (node, seen)
        }),
        "pool placement task",
    )
}

#[test]
fn pool_buffers_live_on_the_shards_node() {
    let exec = Executor::builder()
        .shards(2)
        .buffer_count(8)
        .build()
        .expect("executor");
    let topo = Topology::detect().expect("topology");
    for (shard, cpu) in exec.shard_cpus().into_iter().enumerate() {
        let (node, seen) = pool_nodes(&exec, shard);
        let cpu = cpu.expect("pinned by default");
        assert_eq!(node, topo.node_of_cpu(cpu), "shard {shard} on CPU {cpu}");
        let node = node.expect("a NUMA node");
        assert_eq!(seen.len(), 16);
        assert!(
            seen.iter().all(|&n| n == node),
            "shard {shard}: buffers on nodes {seen:?}, shard on node {node}"
        );
    }
    // This machine has one NUMA node, so the check above cannot tell placement from luck.
    // Multi-node placement is covered by the fixture topologies (below: shards map to the
    // fixture's nodes and their pools are bound there) and by the numa unit tests, which bind a
    // slab to node 0 with mbind and read each page's node back with get_mempolicy.
    println!(
        "NUMA nodes on this machine: {:?}; multi-node placement is covered by the sysfs fixture \
         topologies and get_mempolicy on node 0",
        topo.nodes()
    );
}

#[test]
fn fixture_topology_maps_shards_to_its_nodes() {
    let fixture = Path::new(FIXTURE);
    let topo = Topology::from_sysfs(fixture).expect("fixture topology");
    assert_eq!(topo.nodes(), &[0, 1]);
    // In the fixture CPUs 0-3 and 8-11 are node 0, 4-7 and 12-15 node 1. Only CPUs 0 and 1 exist
    // on this machine, both on fixture node 0: an executor built from the fixture can pin there.
    let exec = Executor::builder()
        .sysfs_root(fixture)
        .cores(vec![0, 1])
        .buffer_count(4)
        .build()
        .expect("executor on the fixture topology, CPUs 0 and 1");
    assert_eq!(exec.shard_cpus(), vec![Some(0), Some(1)]);
    let stats = exec.stats();
    for s in &stats.shards {
        let cpu = s.cpu.unwrap();
        assert_eq!(s.numa_node, topo.node_of_cpu(cpu), "shard {}", s.shard);
        assert_eq!(s.numa_node, Some(0));
        // The fixture has two nodes, so the pool was bound (mbind) to the shard's node.
        assert_eq!(s.pool.numa_node, Some(0), "shard {} pool", s.shard);
    }
    for shard in 0..2 {
        let (node, seen) = pool_nodes(&exec, shard);
        assert_eq!(node, Some(0));
        assert!(seen.iter().all(|&n| n == 0), "{seen:?}");
    }
    exec.shutdown().unwrap();

    // Shards on different fixture nodes need CPUs this machine lacks, so check where placement
    // puts them instead: spread over both nodes, node lists, explicit cores.
    let all: Vec<usize> = topo.cpus().iter().map(|c| c.id).collect();
    let spread = Placement::Spread(2).resolve(&topo, &all).unwrap();
    let nodes: Vec<_> = spread.iter().map(|&c| topo.node_of_cpu(c)).collect();
    assert_eq!(nodes, vec![Some(0), Some(1)], "spread {spread:?}");
    let on1 = Placement::NumaNodes(vec![1]).resolve(&topo, &all).unwrap();
    assert_eq!(on1, vec![4, 5, 6, 7, 12, 13, 14, 15]);
    let cores = Placement::Cores(vec![0, 4]).resolve(&topo, &all).unwrap();
    let nodes: Vec<_> = cores.iter().map(|&c| topo.node_of_cpu(c)).collect();
    assert_eq!(nodes, vec![Some(0), Some(1)]);

    // Unpinned shards on fixture CPUs 0 and 4 want memory on node 1: where node 1 does not exist,
    // the build must fail with a clear error rather than place memory somewhere else.
    let built = Executor::builder()
        .sysfs_root(fixture)
        .cores(vec![0, 4])
        .pin(false)
        .buffer_count(4)
        .build();
    if Path::new("/sys/devices/system/node/node1").exists() {
        let exec = built.expect("node 1 exists here");
        let (_, seen) = pool_nodes(&exec, 1);
        assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
    } else {
        let e = built.expect_err("this machine has no NUMA node 1");
        assert!(matches!(e, Error::InvalidConfig(_)), "{e:?}");
        assert!(e.to_string().contains("node 1"), "{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Pinning
// ---------------------------------------------------------------------------------------------

fn affinity_of_current_thread() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills the set we pass, of the size given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let rc = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        assert_eq!(
            rc,
            0,
            "sched_getaffinity: {}",
            std::io::Error::last_os_error()
        );
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

#[test]
fn each_shard_thread_is_pinned_to_exactly_its_cpu() {
    let exec = Executor::builder()
        .shards(2)
        .buffer_count(4)
        .build()
        .expect("executor");
    let cpus = exec.shard_cpus();
    assert_eq!(cpus.len(), 2);
    let distinct: std::collections::HashSet<_> = cpus.iter().collect();
    assert_eq!(distinct.len(), 2, "two shards on two CPUs: {cpus:?}");
    for (shard, cpu) in cpus.iter().enumerate() {
        let cpu = cpu.expect("pinned by default");
        let (mask, ctx_cpu, name) = ok(
            exec.submit_to(shard, |ctx| {
                (
                    affinity_of_current_thread(),
                    ctx.cpu(),
                    std::thread::current().name().map(str::to_string),
                )
            }),
            "affinity task",
        );
        assert_eq!(mask, vec![cpu], "shard {shard}");
        assert_eq!(ctx_cpu, Some(cpu));
        assert_eq!(name.as_deref(), Some(format!("ringshard-{shard}").as_str()));
    }

    // Unpinned: the shard threads keep the process's mask.
    let loose = Executor::builder()
        .shards(2)
        .pin(false)
        .buffer_count(4)
        .build()
        .expect("executor");
    assert_eq!(loose.shard_cpus(), vec![None, None]);
    let process_mask = affinity_of_current_thread();
    for shard in 0..2 {
        let mask = ok(
            loose.submit_to(shard, |_| affinity_of_current_thread()),
            "task",
        );
        assert_eq!(mask, process_mask);
    }
}

// ---------------------------------------------------------------------------------------------
// 10. Statistics
// ---------------------------------------------------------------------------------------------

fn sum_over_shards(stats: &[ShardStats], f: impl Fn(&ShardStats) -> u64) -> u64 {
    stats.iter().map(f).sum()
}

#[test]
fn stats_count_exactly_what_was_done() {
    let exec = Executor::builder()
        .shards(2)
        .buffer_size(16 * 1024)
        .buffer_count(4)
        .build()
        .expect("executor");
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<File> = files_on_every_shard(&exec, dir.path(), "s", 1, 200)
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    let mut opens = files.len() as u64;

    // Writes (M) of known sizes, alternating over the files, some multi-buffer.
    let mut written = 0u64;
    let sizes = [1usize, 100, 4096, 16 * 1024, 40_000, 7, 65_536, 3];
    for (i, &n) in sizes.iter().enumerate() {
        let f = &files[i % files.len()];
        assert_eq!(ok(exec.write(f, 0, vec![i as u8; n]), "write"), n);
        written += n as u64;
    }
    let m = sizes.len() as u64;
    // Reads (N), including short ones at the end of a file and one past it.
    let mut read = 0u64;
    let mut n_reads = 0u64;
    for (i, f) in files.iter().enumerate() {
        for (off, len) in [(0u64, 10usize), (5, 50_000), (1 << 20, 100)] {
            let got = ok(exec.read(f, off, len), "read");
            assert!(got.len() <= len);
            read += got.len() as u64;
            n_reads += 1;
            if i == 0 && off == 1 << 20 {
                assert!(got.is_empty());
            }
        }
    }
    // fsync (K) and fdatasync.
    let k = 3u64;
    for i in 0..k {
        ok(exec.fsync(&files[i as usize % files.len()]), "fsync");
    }
    ok(exec.fdatasync(&files[0]), "fdatasync");
    ok(exec.size(&files[0]), "size");
    ok(exec.submit_to(1, |_| ()), "task");

    // Errors (E): reads of a directory fail in the kernel with EISDIR; requests on a closed handle
    // are refused by the shard with EBADF.
    let d = ok(
        exec.open(dir.path(), ringshard::OpenOptions::new().read(true)),
        "open dir",
    );
    opens += 1;
    let eisdir = 3u64;
    for _ in 0..eisdir {
        let e = wait(exec.read(&d, 0, 100)).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EISDIR), "{e:?}");
    }
    let g = open_rwc(&exec, &dir.path().join("closed"));
    opens += 1;
    ok(exec.close(&g), "close");
    let ebadf = 2u64;
    for _ in 0..ebadf {
        let e = wait(exec.write(&g, 0, vec![1u8])).unwrap_err();
        assert!(matches!(e, Error::BadHandle(_)), "{e:?}");
    }

    let stats = exec.stats();
    let t = &stats.total;
    assert_eq!(t.ops(OpKind::Open), opens);
    assert_eq!(t.ops(OpKind::Write), m + ebadf);
    assert_eq!(t.ops(OpKind::Read), n_reads + eisdir);
    assert_eq!(t.ops(OpKind::Fsync), k);
    assert_eq!(t.ops(OpKind::Fdatasync), 1);
    assert_eq!(t.ops(OpKind::Size), 1);
    assert_eq!(t.ops(OpKind::Close), 1);
    assert_eq!(t.ops(OpKind::Task), 1);
    assert_eq!(t.ops(OpKind::Fallocate), 0);
    let total_ops = opens + m + ebadf + n_reads + eisdir + k + 1 + 1 + 1 + 1;
    assert_eq!(t.total_ops(), total_ops);
    assert_eq!(t.bytes_written, written);
    assert_eq!(t.bytes_read, read);
    assert_eq!(t.errors_with(libc::EISDIR), eisdir);
    assert_eq!(t.errors_with(libc::EBADF), ebadf);
    assert_eq!(t.error_count(), eisdir + ebadf, "{:?}", t.errors);
    // One latency sample per I/O op; a task's run time is not an I/O latency.
    assert_eq!(
        t.latency().count,
        total_ops - 1,
        "one latency sample per I/O op"
    );
    assert_eq!(t.read_latency().count, n_reads + eisdir);
    assert_eq!(t.write_latency().count, m + ebadf);

    // Per-shard rows add up to the total.
    let s = &stats.shards;
    assert_eq!(s.len(), 2);
    for kind in OpKind::ALL {
        assert_eq!(sum_over_shards(s, |x| x.ops(kind)), t.ops(kind), "{kind}");
    }
    assert_eq!(sum_over_shards(s, |x| x.bytes_read), t.bytes_read);
    assert_eq!(sum_over_shards(s, |x| x.bytes_written), t.bytes_written);
    assert_eq!(sum_over_shards(s, |x| x.error_count()), t.error_count());
    assert_eq!(sum_over_shards(s, |x| x.latency().count), total_ops - 1);
    assert_eq!(sum_over_shards(s, |x| x.sleeps), t.sleeps);
    assert_eq!(s[1].ops(OpKind::Task), 1);
    assert!(
        s.iter().all(|x| x.ops(OpKind::Open) >= 1),
        "files on both shards"
    );

    // JSON carries the same numbers. (feature `serde`)
    #[cfg(feature = "serde")]
    {
        let json = serde_json::to_value(&stats).unwrap();
        let jt = &json["total"];
        assert_eq!(jt["total_ops"], total_ops, "{json}");
        assert_eq!(jt["ops"]["read"], n_reads + eisdir);
        assert_eq!(jt["ops"]["write"], m + ebadf);
        assert_eq!(jt["ops"]["fsync"], k);
        assert_eq!(jt["ops"]["open"], opens);
        assert_eq!(jt["bytes_read"], read);
        assert_eq!(jt["bytes_written"], written);
        assert_eq!(jt["errors"]["EISDIR"], eisdir);
        assert_eq!(jt["errors"]["EBADF"], ebadf);
        assert_eq!(jt["error_count"], eisdir + ebadf);
        assert_eq!(jt["latency"]["count"], total_ops - 1);
        assert!(jt["shard"].is_null());
        let js = json["shards"].as_array().expect("shards array");
        assert_eq!(js.len(), 2);
        let sum: u64 = js.iter().map(|x| x["total_ops"].as_u64().unwrap()).sum();
        assert_eq!(sum, total_ops);
        for (i, x) in js.iter().enumerate() {
            assert_eq!(x["shard"], i);
            assert_eq!(x["ops"]["write"], s[i].ops(OpKind::Write));
        }
    }
    let text = stats.to_string();
    assert!(text.contains("EISDIR"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// 11. Async
// ---------------------------------------------------------------------------------------------

#[test]
fn completions_are_futures_in_tokio_and_block_on() {
    let exec = Arc::new(
        Executor::builder()
            .shards(2)
            .buffer_size(16 * 1024)
            .buffer_count(8)
            .build()
            .expect("executor"),
    );
    let dir = tempfile::tempdir().unwrap();
    let files: Arc<Vec<File>> = Arc::new(
        files_on_every_shard(&exec, dir.path(), "a", 2, 200)
            .into_iter()
            .map(|(_, f)| f)
            .collect(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let tasks = 64u64;
    let total: usize = rt.block_on(async {
        let mut joins = Vec::new();
        for t in 0..tasks {
            let (exec, files) = (Arc::clone(&exec), Arc::clone(&files));
            joins.push(tokio::spawn(async move {
                let f = &files[t as usize % files.len()];
                let mut rng = Rng::new(t);
                let mut n = 0;
                for round in 0..10u64 {
                    let len = rng.range(1, 40_000) as usize;
                    let data = rng.bytes(len);
                    let off = (t * 10 + round) * 50_000;
                    // Both requests go out before either is awaited.
                    let w = exec.write(f, off, data.clone());
                    let r = exec.read(f, off, len);
                    let (w, r) = tokio::join!(w, r);
                    assert_eq!(w.expect("write"), len);
                    assert_eq!(r.expect("read"), data);
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0;
        for j in joins {
            total += j.await.expect("task");
        }
        total
    });
    assert_eq!(total as u64, tasks * 10);

    let f = &files[0];
    assert_eq!(
        futures::executor::block_on(exec.write(f, 3, b"blocking".to_vec())).unwrap(),
        8
    );
    assert_eq!(
        futures::executor::block_on(exec.read(f, 3, 8)).unwrap(),
        b"blocking"
    );
    let both = futures::executor::block_on(async {
        let a = exec.read(&files[0], 3, 8);
        let b = exec.read(&files[1], 0, 0);
        futures::future::join(a, b).await
    });
    assert_eq!(both.0.unwrap(), b"blocking");
    assert_eq!(both.1.unwrap(), Vec::<u8>::new());
}

#[test]
fn wait_timeout_reports_timeout_then_the_result() {
    let exec = Executor::builder()
        .shards(2)
        .buffer_count(4)
        // The read must queue behind the busy shard, not be served on this thread.
        .inline_reads(false)
        .build()
        .expect("executor");
    let dir = tempfile::tempdir().unwrap();
    let f = open_rwc(&exec, &dir.path().join("f"));
    ok(exec.write(&f, 0, b"0123456789".to_vec()), "write");
    // Hold the file's shard on a gate: a read queued behind it cannot finish until it opens.
    let (gate, busy) = hold_shard(&exec, f.shard());
    let mut r = exec.read(&f, 0, 10);
    assert_eq!(
        r.wait_timeout(Duration::from_millis(10)),
        Err(Error::Timeout)
    );
    assert!(Error::Timeout.is_transient());
    assert_eq!(r.try_take(), None, "still running");
    gate.send(()).unwrap();
    // The same handle can be waited on again, and gets the result.
    assert_eq!(r.wait().unwrap(), b"0123456789");
    ok(busy, "busy task");
    // A future on an operation that is still pending resolves when it completes: polled while
    // the shard is held, it is pending; it completes once the gate opens.
    let (gate, busy) = hold_shard(&exec, f.shard());
    let mut r = exec.read(&f, 2, 3);
    let waker = futures::task::noop_waker();
    let polled = std::future::Future::poll(
        std::pin::Pin::new(&mut r),
        &mut std::task::Context::from_waker(&waker),
    );
    assert!(polled.is_pending());
    gate.send(()).unwrap();
    assert_eq!(futures::executor::block_on(r).unwrap(), b"234");
    ok(busy, "busy task");
}

// ---------------------------------------------------------------------------------------------
// 12. No lost wake-ups
// ---------------------------------------------------------------------------------------------

#[test]
fn sleeping_shards_never_miss_a_request() {
    let exec = Executor::builder()
        .shards(2)
        .buffer_size(4096)
        .buffer_count(4)
        .spin(Duration::ZERO) // shards sleep as soon as they are idle
        .build()
        .expect("executor");
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<File> = files_on_every_shard(&exec, dir.path(), "w", 2, 200)
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    let shards_of: Vec<usize> = files.iter().map(File::shard).collect();
    const ROUND_TRIPS: u64 = 5_000;
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (exec, files) = (&exec, &files);
            s.spawn(move || {
                for i in 0..ROUND_TRIPS {
                    // A write, then a read of it from the same file; then the next file (and so
                    // the other shard).
                    let f = &files[(t as usize + i as usize / 2) % files.len()];
                    let off = t * 8;
                    let lost = || panic!("thread {t}: request {i} lost (no completion in 10 s)");
                    if i % 2 == 0 {
                        let mut c = exec.write(f, off, i.to_le_bytes().to_vec());
                        match c.wait_timeout(Duration::from_secs(10)) {
                            Ok(8) => {}
                            Err(Error::Timeout) => lost(),
                            other => panic!("thread {t}: write {i}: {other:?}"),
                        }
                    } else {
                        let mut c = exec.read(f, off, 8);
                        match c.wait_timeout(Duration::from_secs(10)) {
                            Ok(v) => assert_eq!(v, (i - 1).to_le_bytes(), "thread {t} read {i}"),
                            Err(Error::Timeout) => lost(),
                            Err(e) => panic!("thread {t}: read {i}: {e:?}"),
                        }
                    }
                }
            });
        }
    });
    let stats = exec.stats();
    println!(
        "files on shards {shards_of:?}; sleeps {} wakeups {}",
        stats.total.sleeps, stats.total.wakeups
    );
    assert_eq!(
        stats.total.ops(OpKind::Read) + stats.total.ops(OpKind::Write),
        4 * ROUND_TRIPS
    );
    assert!(stats.total.sleeps > 0, "shards should have slept");
    assert!(stats.total.wakeups > 0, "and been woken");
    for s in &stats.shards {
        assert!(
            s.sleeps > 0 && s.wakeups > 0,
            "shard {}: {:?}",
            s.shard,
            (s.sleeps, s.wakeups)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 13. Backpressure
// ---------------------------------------------------------------------------------------------

#[test]
fn tiny_inbox_and_pool_still_complete_everything() {
    // Buffered files: bytes go straight between vectors and the page cache.
    tiny_inbox_and_pool(false);
    // O_DIRECT files: every request needs two of the shard's two pool buffers.
    tiny_inbox_and_pool(true);
}

fn tiny_inbox_and_pool(direct: bool) {
    let exec = Executor::builder()
        .shards(2)
        .buffer_size(4096)
        .buffer_count(2)
        .channel_capacity(2)
        .build()
        .expect("executor");
    let dir = tempfile::tempdir().unwrap();
    let opts = rwc().direct(direct).clone();
    let named = files_on_every_shard_with(&exec, dir.path(), "b", 2, 200, &opts);
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 250; // 1000 requests in flight at once
                                 // Two buffers each (O_DIRECT needs whole blocks).
    let len: usize = if direct { 8192 } else { 5000 };
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let named = &named;
            let exec = &exec;
            s.spawn(move || {
                // All submitted before any is waited for.
                let mut writes = Vec::new();
                for i in 0..PER_THREAD {
                    let f = &named[(i as usize) % named.len()].1;
                    let off = (t * PER_THREAD + i) * len as u64;
                    let byte = (t * PER_THREAD + i) as u8;
                    writes.push((f, off, byte, exec.write(f, off, vec![byte; len])));
                }
                let reads: Vec<_> = writes
                    .iter()
                    .map(|(f, off, byte, _)| (*byte, exec.read(f, *off, len)))
                    .collect();
                for (_, _, _, w) in writes {
                    assert_eq!(ok(w, "write"), len);
                }
                for (byte, r) in reads {
                    assert_eq!(ok(r, "read"), vec![byte; len]);
                }
            });
        }
    });
    for (k, (path, _)) in named.iter().enumerate() {
        let disk = std::fs::read(path).unwrap();
        for t in 0..THREADS {
            for i in (0..PER_THREAD).filter(|i| (*i as usize) % named.len() == k) {
                let off = ((t * PER_THREAD + i) * len as u64) as usize;
                let byte = (t * PER_THREAD + i) as u8;
                assert!(
                    disk[off..off + len].iter().all(|&b| b == byte),
                    "file {k} at {off}"
                );
            }
        }
    }
    let stats = exec.stats();
    assert_eq!(
        stats.total.ops(OpKind::Write),
        THREADS * PER_THREAD,
        "every write counted once"
    );
    assert_eq!(stats.total.ops(OpKind::Read), THREADS * PER_THREAD);
    assert_eq!(stats.total.error_count(), 0);
    if direct {
        assert!(
            stats.total.pool_exhausted_events > 0,
            "2 buffers for 2-buffer requests must run out"
        );
    }
    assert_eq!(stats.total.pool.total_count, 4, "2 buffers per shard");
    println!(
        "pool exhausted {} times; queued hwm {}",
        stats.total.pool_exhausted_events, stats.total.queued_hwm
    );
}
