//! ringshard inside a tokio program: the README's "Embedding in a server" example, run end to end
//! (`cargo run --example tokio_embed`). Every call here is awaited; none blocks a runtime thread.

use ringshard::{Executor, OpenOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let exec = Executor::builder().build()?; // one pinned shard per core
    let path = std::env::temp_dir().join(format!("ringshard-embed-{}", std::process::id()));
    let rw = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .clone();
    let file = exec.open_async(&path, &rw).await?; // opened on a shard's ring
    file.write_all_at(0, b"hello tokio world").await?; // on the file's shard
    let readers: Vec<_> = (0..3u64)
        .map(|i| {
            let file = file.clone(); // a File is a cheap handle: Send + Sync + Clone
            tokio::spawn(async move { file.read_at(i * 6, 5).await }) // cached: read right here
        })
        .collect();
    for r in readers {
        println!("{}", String::from_utf8_lossy(&r.await??));
    }
    file.sync_all().await?; // after the write, on the same shard
    println!("{}", exec.stats_async().await); // per-shard table, inline reads included
    exec.shutdown_async().await?; // drains, closes, joins; never blocks
    std::fs::remove_file(&path)?;
    Ok(())
}
