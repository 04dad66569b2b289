//! A sharded key-value log: every shard keeps its own append-only log file (opened onto that
//! shard with `Executor::open_on`) and an in-memory index (key -> offset and length of the
//! latest record), built on the shard's own thread with `Executor::sharded`. A key belongs to one
//! shard (by hash); puts and gets run as async tasks on that shard, so the index is touched by
//! one thread only (a plain `RefCell`, no lock) and the log's I/O goes straight into that shard's
//! ring (no channel).
//!
//! Run: `cargo run --example shard_log`

use ringshard::{Error, Executor, File, OpenOptions, Sharded};
use std::cell::{Cell, RefCell};
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// One shard's log.
struct ShardLog {
    /// Opened onto this shard (`open_on`).
    file: File,
    /// Where the next record goes. Only this shard appends, so a plain counter is enough.
    tail: Cell<u64>,
    /// key -> (offset of the value, its length). Only this shard's thread touches it: the
    /// state stays on its shard (`Sharded` asks for neither `Send` nor `Sync`).
    index: RefCell<HashMap<String, (u64, usize)>>,
}

/// A record: key length (u32), value length (u32), key, value. The index points at the value.
fn record(key: &str, value: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(8 + key.len() + value.len());
    r.extend_from_slice(&(key.len() as u32).to_le_bytes());
    r.extend_from_slice(&(value.len() as u32).to_le_bytes());
    r.extend_from_slice(key.as_bytes());
    r.extend_from_slice(value);
    r
}

struct Store {
    exec: Arc<Executor>,
    logs: Sharded<ShardLog>,
}

impl Store {
    fn shard_of(&self, key: &str) -> usize {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % self.logs.len() as u64) as usize
    }

    /// Appends `key = value` on the key's shard; returns once the record is written.
    async fn put(&self, key: &str, value: Vec<u8>) -> ringshard::Result<()> {
        let (logs, key) = (self.logs.clone(), key.to_string());
        let shard = self.shard_of(&key);
        self.exec
            .spawn_on(shard, async move {
                let local = ringshard::local().expect("a shard task");
                let rec = record(&key, &value);
                let (file, at) = logs.with(|log| {
                    let at = log.tail.get();
                    log.tail.set(at + rec.len() as u64);
                    (log.file.clone(), at)
                })?;
                local.write(&file, at, rec).await?;
                let value_at = at + 8 + key.len() as u64;
                logs.with(|log| log.index.borrow_mut().insert(key, (value_at, value.len())))?;
                Ok(())
            })
            .await?
    }

    /// The latest value of `key`, read from its shard's log.
    async fn get(&self, key: &str) -> ringshard::Result<Option<Vec<u8>>> {
        let (logs, key) = (self.logs.clone(), key.to_string());
        self.exec
            .spawn_on(self.shard_of(&key), async move {
                let local = ringshard::local().expect("a shard task");
                let found = logs.with(|log| {
                    let at = log.index.borrow().get(&key).copied();
                    at.map(|at| (log.file.clone(), at))
                })?;
                match found {
                    Some((file, (at, len))) => Ok(Some(local.read(&file, at, len).await?)),
                    None => Ok(None),
                }
            })
            .await?
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let exec = Arc::new(Executor::new()?);
    let dir = tempfile::tempdir()?;
    // One log file per shard, opened onto that shard (files land on shards by inode otherwise).
    let opts = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .clone();
    let files = (0..exec.shard_count())
        .map(|s| {
            exec.open_on(s, dir.path().join(format!("log-{s}")), &opts)
                .wait()
        })
        .collect::<ringshard::Result<Vec<File>>>()?;
    let files = Arc::new(files);
    // Each shard builds its own log state, on its own thread.
    let logs = exec.sharded(move |local| ShardLog {
        file: files[local.index()].clone(),
        tail: Cell::new(0),
        index: RefCell::new(HashMap::new()),
    })?;
    let store = Arc::new(Store {
        exec: Arc::clone(&exec),
        logs,
    });

    // Serve from any runtime: here a small tokio runtime stands in for a server.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()?;
    let s = Arc::clone(&store);
    rt.block_on(async move {
        for i in 0..1000u32 {
            s.put(&format!("key-{i}"), format!("value {i}").into_bytes())
                .await?;
        }
        // Overwrite some: the index points at the latest record.
        for i in (0..1000u32).step_by(10) {
            s.put(&format!("key-{i}"), format!("new value {i}").into_bytes())
                .await?;
        }
        for i in [0u32, 7, 10, 999] {
            let v = s.get(&format!("key-{i}")).await?.unwrap_or_default();
            println!("key-{i} = {}", String::from_utf8_lossy(&v));
        }
        assert_eq!(s.get("missing").await?, None);
        Ok::<_, Error>(())
    })?;

    // Per-shard figures, gathered with map_reduce.
    let per_shard = ringshard::block_on(store.logs.map_reduce(
        |log| async move { (log.index.borrow().len(), log.tail.get()) },
        Vec::new(),
        |mut acc, x| {
            acc.push(x);
            acc
        },
    ))?;
    for (shard, (keys, bytes)) in per_shard.iter().enumerate() {
        println!("shard {shard}: {keys} keys, {bytes} bytes of log");
    }
    println!("{}", exec.stats());
    drop(store);
    exec.shutdown()?;
    Ok(())
}
