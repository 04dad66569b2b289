//! The `Display` table of `ExecutorStats`.

use std::fmt;

use super::executor::rate;
use super::*;
use crate::driver::Backend;

const MB: f64 = 1_000_000.0;

pub(super) const HEADERS: [&str; 21] = [
    "shard",
    "cpu",
    "node",
    "ring",
    "ops",
    "reads",
    "inline",
    "writes",
    "MB read",
    "MB written",
    "errors",
    "cancelled",
    "p50 µs",
    "p99 µs",
    "p99.9 µs",
    "max µs",
    "in-flight hwm",
    "queued hwm",
    "sleeps",
    "wakeups",
    "slow polls",
];

fn table_row(s: &ShardStats) -> [String; HEADERS.len()] {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    let lat = s.latency();
    let shard = if s.is_total() {
        "total".to_string()
    } else if s.failed {
        format!("{}*", s.shard)
    } else {
        s.shard.to_string()
    };
    [
        shard,
        opt(s.cpu.map(|c| c.to_string())),
        match (s.numa_node, s.mem_policy) {
            (Some(n), Some(MemPolicy::Failed { .. })) => format!("{n}!"),
            (None, Some(MemPolicy::Failed { .. })) => "-!".to_string(),
            (n, _) => opt(n.map(|n| n.to_string())),
        },
        match s.backend {
            Backend::Threads => "threads".to_string(),
            Backend::IoUring => opt(s.ring_mode.map(|m| m.short_name().to_string())),
        },
        s.total_ops().to_string(),
        s.ops(OpKind::Read).to_string(),
        s.inline_reads.to_string(),
        s.ops(OpKind::Write).to_string(),
        format!("{:.1}", s.bytes_read as f64 / MB),
        format!("{:.1}", s.bytes_written as f64 / MB),
        s.error_count().to_string(),
        s.cancelled.to_string(),
        format!("{:.1}", lat.p50_us),
        format!("{:.1}", lat.p99_us),
        format!("{:.1}", lat.p999_us),
        format!("{:.1}", lat.max_us),
        s.in_flight_hwm.to_string(),
        s.queued_hwm.to_string(),
        s.sleeps.to_string(),
        s.wakeups.to_string(),
        s.slow_task_polls.to_string(),
    ]
}

/// A summary line, a table with one row per shard and a `total` row (MB = 10^6 bytes; latencies over
/// all operations; a `*` after a shard index marks a failed shard; `ring` is the ring's mode (`defer`,
/// `coop`, `plain`, `sqpoll`; `-` in a total whose shards differ); a `!` after a node marks a shard
/// whose NUMA memory policy the kernel refused; `inline` counts the reads (of `reads`) done on
/// callers' threads; the total's high-water marks are the largest single-shard ones), then the
/// backend, ring and pool lines of [`setup`](ExecutorStats::setup), then the errors by errno
/// name, most frequent first.
impl fmt::Display for ExecutorStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.total;
        writeln!(
            f,
            "{} shards, elapsed {:.3} s, {} ops ({:.0} ops/s), read {:.1} MB/s, written {:.1} MB/s",
            self.shards.len(),
            self.elapsed.as_secs_f64(),
            t.total_ops(),
            self.ops_per_sec(),
            rate(t.bytes_read as f64 / MB, self.elapsed),
            rate(t.bytes_written as f64 / MB, self.elapsed),
        )?;

        let mut rows: Vec<[String; HEADERS.len()]> = self.shards.iter().map(table_row).collect();
        rows.push(table_row(t));
        let mut widths = HEADERS.map(|h| h.chars().count());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row.iter()) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let write_row = |f: &mut fmt::Formatter<'_>, cells: &[&str]| -> fmt::Result {
            for (i, (cell, &w)) in cells.iter().zip(widths.iter()).enumerate() {
                if i == 0 {
                    write!(f, "{cell:<w$}")?;
                } else {
                    write!(f, "  {cell:>w$}")?;
                }
            }
            writeln!(f)
        };
        write_row(f, &HEADERS)?;
        for row in &rows {
            let cells: [&str; HEADERS.len()] = std::array::from_fn(|i| row[i].as_str());
            write_row(f, &cells)?;
        }

        if self.shards.iter().any(|s| s.failed) {
            writeln!(f, "* shard failed")?;
        }
        f.write_str(&self.setup())?;
        if let Some(MemPolicy::Failed { errno }) = t.mem_policy {
            writeln!(
                f,
                "! NUMA memory policy refused ({}): memory may be on another node",
                errno_name(errno)
            )?;
        }
        if !t.blocking_ops.is_empty() {
            let names: Vec<&str> = t.blocking_ops.iter().map(|k| k.name()).collect();
            writeln!(
                f,
                "blocking path (no io_uring opcode, or forced): {}",
                names.join(", ")
            )?;
        }
        if !t.errors.is_empty() {
            let mut errs: Vec<(i32, u64)> = t.errors.iter().map(|(&e, &n)| (e, n)).collect();
            errs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            write!(f, "errors:")?;
            for (i, (errno, n)) in errs.iter().enumerate() {
                let sep = if i == 0 { " " } else { ", " };
                write!(f, "{sep}{} x{n}", errno_name(*errno))?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
