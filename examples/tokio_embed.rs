//! ringshard inside a tokio program: the README's first example, run end to end
//! (`cargo run --example tokio_embed`). Every call here is awaited; none blocks a runtime thread.

use ringshard::{Executor, OpenOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let exec = Executor::builder().build()?; // one pinned shard per core
    let path = std::env::temp_dir().join(format!("ringshard-embed-{}", std::process::id()));
    let mut rw = OpenOptions::new();
    rw.read(true).write(true).create(true);
    let file = exec.open_async(&path, &rw).await?; // opened on a shard's ring
    file.write_all_at(0, b"hello tokio world").await?; // on the file's shard
    let reader = file.clone(); // a File is a cheap handle: Send + Sync + Clone
    let task = tokio::spawn(async move { reader.read_at(6, 5).await }); // cached: read right there
    println!("{}", String::from_utf8_lossy(&task.await??)); // "tokio"
    file.sync_all().await?; // after the write, on the same shard
    println!("{}", exec.stats_async().await); // per-shard table, inline reads included
    exec.shutdown_async().await?; // drains, closes, joins; never blocks
    std::fs::remove_file(&path)?;
    Ok(())
}
