//! Quickstart: open a file, write, fsync, read back, look at the statistics, shut down.
//!
//! Run: `cargo run --example quickstart`

use ringshard::{Executor, OpenOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One shard per CPU this process may run on; each pinned, with its own ring and buffers.
    // Where io_uring is blocked or RLIMIT_MEMLOCK is small, the executor falls back (threads
    // backend, smaller rings, unregistered buffers): these lines say what it got and why.
    let exec = Executor::new()?;
    println!(
        "{} shards on CPUs {:?}",
        exec.shard_count(),
        exec.shard_cpus()
    );
    print!("{}", exec.stats().setup());

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("quickstart.dat");
    let file = exec
        .open(
            &path,
            OpenOptions::new().read(true).write(true).create(true),
        )
        .wait()?;
    println!("{} lives on shard {}", path.display(), file.shard());

    // Writes of any length, short writes completed. A buffered write is one pwrite on the
    // shard's thread (or through the ring); only O_DIRECT files use the pool's buffers.
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let written = exec.write(&file, 0, data.clone()).wait()?;
    // fsync runs after the write above (same file, same shard, ordered).
    exec.fsync(&file).wait()?;

    // Many requests at once: one message and one wake-up per shard.
    let mut batch = exec.batch();
    let reads: Vec<_> = (0..4)
        .map(|i| batch.read(&file, i * 50_000, 50_000))
        .collect();
    batch.submit();
    let mut back = Vec::new();
    for r in reads {
        back.extend(r.wait()?);
    }
    assert_eq!(back, data);

    // Reading past the end returns what exists.
    let tail = exec.read(&file, 199_990, 100).wait()?;
    println!(
        "wrote {written} bytes, read back {} bytes, tail {}",
        back.len(),
        tail.len()
    );

    exec.close(&file).wait()?;
    println!("{}", exec.stats());
    exec.shutdown()?;
    Ok(())
}
