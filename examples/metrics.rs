//! Metrics: the executor's statistics in the Prometheus text format, as a `/metrics` endpoint
//! would serve them, and the rates of an interval between two snapshots.
//!
//! Run: `cargo run --example metrics` (add `-- --openmetrics` for the OpenMetrics format).

use ringshard::{Executor, OpenOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let openmetrics = std::env::args().any(|a| a == "--openmetrics");
    let exec = Executor::builder().shards(2).build()?;
    let dir = std::env::temp_dir().join(format!("ringshard-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("metrics.dat");
    let file = exec
        .open(
            &path,
            OpenOptions::new().read(true).write(true).create(true),
        )
        .wait()?;

    let before = exec.stats();
    for i in 0..64u64 {
        exec.write(&file, i * 4096, vec![i as u8; 4096]).wait()?;
    }
    for i in 0..64u64 {
        exec.read(&file, i * 4096, 4096).wait()?;
    }
    let after = exec.stats();
    exec.close(&file).wait()?;
    exec.shutdown()?;
    let _ = std::fs::remove_dir_all(&dir);

    // Rates over the interval: counters and histograms of the two snapshots subtracted.
    let interval = after.since(&before);
    eprintln!(
        "interval: {:.0} ops/s, read p99 {:.1} µs",
        interval.ops_per_sec(),
        interval.total.read_latency().p99_us
    );

    // What a scrape gets (Content-Type: ringshard::stats::PROMETHEUS_CONTENT_TYPE or
    // OPENMETRICS_CONTENT_TYPE).
    if openmetrics {
        print!("{}", after.to_openmetrics());
    } else {
        print!("{}", after.to_prometheus());
    }
    Ok(())
}
