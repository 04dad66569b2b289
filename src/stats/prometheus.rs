//! Prometheus text exposition (version 0.0.4) and OpenMetrics 1.0 rendering of [`ExecutorStats`].
//!
//! Every series is per shard and carries the labels `shard`, `backend` (`"io_uring"`) and
//! `ring_mode` ([`RingMode::name`](crate::ring::RingMode::name), or `"none"`); per-kind series add
//! `op`, errors add `errno`. No totals are written: sum over `shard` in queries. Latency is a
//! histogram in seconds per shard and `op` (`read`, `write`, `other`: every kind but reads, writes
//! and tasks), with cumulative buckets read from the HDR histogram at [`LATENCY_BUCKETS_NS`].

use std::fmt::{self, Write};

use super::{errno_name, ExecutorStats, LatencyHistogram, MemPolicy, OpKind, ShardStats};

/// `Content-Type` of [`ExecutorStats::to_prometheus`] output, for an HTTP `/metrics` answer.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of [`ExecutorStats::to_openmetrics`] output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (`le`) of the latency histogram buckets, in nanoseconds (1 µs to 10 s; `+Inf`
/// follows). A bucket counts the samples at or below its bound to the histogram's resolution (3
/// significant digits: a sample up to 0.1% above a bound may be counted in it).
pub const LATENCY_BUCKETS_NS: [u64; 22] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Which of the two text formats.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavor {
    /// Prometheus text format 0.0.4: counters are declared with their `_total` name.
    Prometheus,
    /// OpenMetrics 1.0: counter families are declared without `_total`; ends with `# EOF`.
    OpenMetrics,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The value of the `backend` label: `"io_uring"` or `"threads"`.
fn backend(s: &ShardStats) -> &'static str {
    s.backend.name()
}

/// Escapes a label value: backslash, double quote and newline.
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes HELP text: backslash and newline (and, in OpenMetrics, double quote).
fn escape_help(v: &str, flavor: Flavor) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if flavor == Flavor::OpenMetrics => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

/// Writes a float the way both parsers read it (`+Inf`, never NaN for our values).
fn float(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if v.is_nan() {
        "NaN".to_string()
    } else {
        format!("{v}")
    }
}

struct Writer<'a, W: Write> {
    out: &'a mut W,
    flavor: Flavor,
}

impl<W: Write> Writer<'_, W> {
    /// Writes the HELP and TYPE lines of a family. `name` has no `_total`.
    fn family(&mut self, name: &str, kind: Kind, help: &str) -> fmt::Result {
        let declared = match (kind, self.flavor) {
            (Kind::Counter, Flavor::Prometheus) => format!("{name}_total"),
            _ => name.to_string(),
        };
        let ty = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        writeln!(
            self.out,
            "# HELP {declared} {}",
            escape_help(help, self.flavor)
        )?;
        writeln!(self.out, "# TYPE {declared} {ty}")
    }

    /// Writes one sample: `name{labels} value`.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: &str) -> fmt::Result {
        self.out.write_str(name)?;
        if !labels.is_empty() {
            self.out.write_char('{')?;
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.write_char(',')?;
                }
                write!(self.out, "{k}=\"{}\"", escape_label(v))?;
            }
            self.out.write_char('}')?;
        }
        writeln!(self.out, " {value}")
    }
}

/// The labels every per-shard series carries.
struct ShardLabels {
    shard: String,
    backend: &'static str,
    ring_mode: &'static str,
}

impl ShardLabels {
    fn of(s: &ShardStats) -> Self {
        ShardLabels {
            shard: s.shard.to_string(),
            backend: backend(s),
            ring_mode: s.ring_mode.map(|m| m.name()).unwrap_or("none"),
        }
    }

    fn with<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut v = vec![
            ("shard", self.shard.as_str()),
            ("backend", self.backend),
            ("ring_mode", self.ring_mode),
        ];
        v.extend_from_slice(extra);
        v
    }
}

type Getter = fn(&ShardStats) -> u64;

/// Counters with one value per shard: (name without `_total`, help, getter).
const COUNTERS: [(&str, &str, Getter); 27] = [
    (
        "ringshard_read_bytes",
        "Bytes transferred by successful reads.",
        |s| s.bytes_read,
    ),
    (
        "ringshard_inline_reads",
        "Reads of the shard's files done on the caller's thread from the page cache (also counted in ringshard_ops_total{op=\"read\"}).",
        |s| s.inline_reads,
    ),
    (
        "ringshard_inline_fallbacks",
        "Inline read attempts that went to the shard after all (not cached, RWF_NOWAIT refused, or failed).",
        |s| s.inline_fallbacks,
    ),
    (
        "ringshard_send_file_pipes_made",
        "Pipes made for send_file.",
        |s| s.pipes_made,
    ),
    (
        "ringshard_send_file_pipes_shrunk",
        "send_file pipes smaller than asked (pipe-max-size, pipe-user-pages-soft, or a refused F_SETPIPE_SZ).",
        |s| s.pipes_shrunk,
    ),
    (
        "ringshard_send_file_pipes_dirty",
        "send_file pipes closed because a send ended with bytes in them.",
        |s| s.pipes_dirty,
    ),
    (
        "ringshard_recv_buffers_exhausted",
        "recv_pooled receives that found every ring buffer leased (ENOBUFS) and took a plain one.",
        |s| s.recv_buffers_exhausted,
    ),
    (
        "ringshard_send_file_inline_rounds",
        "send_file rounds sent with sendfile(2) on the shard thread (range in the page cache).",
        |s| s.send_file_inline,
    ),
    (
        "ringshard_send_file_uncached_rounds",
        "send_file rounds to a socket that went through a pipe: range not all in the page cache.",
        |s| s.send_file_uncached,
    ),
    (
        "ringshard_written_bytes",
        "Bytes transferred by successful writes.",
        |s| s.bytes_written,
    ),
    (
        "ringshard_cancelled",
        "Operations cancelled (handle or session dropped, cancel, shutdown).",
        |s| s.cancelled,
    ),
    (
        "ringshard_deadline_exceeded",
        "Operations cancelled because their deadline passed.",
        |s| s.deadline_exceeded,
    ),
    (
        "ringshard_task_polls",
        "Polls of async tasks run on the shard.",
        |s| s.task_polls,
    ),
    (
        "ringshard_slow_task_polls",
        "Task polls that kept the shard longer than SLOW_POLL without yielding.",
        |s| s.slow_task_polls,
    ),
    (
        "ringshard_sleeps",
        "Times the shard thread went to sleep waiting for work.",
        |s| s.sleeps,
    ),
    (
        "ringshard_wakeups",
        "Times the shard thread was woken by a sender.",
        |s| s.wakeups,
    ),
    (
        "ringshard_submits",
        "Submit calls (io_uring_enter) that passed SQEs to the kernel.",
        |s| s.submit_calls,
    ),
    (
        "ringshard_sqes_submitted",
        "Submission queue entries passed to the kernel.",
        |s| s.sqes_submitted,
    ),
    (
        "ringshard_task_local_reads",
        "Reads by tasks of their own shard's files that took the task-local path (also counted in ringshard_ops_total{op=\"read\"}).",
        |s| s.task_local_reads,
    ),
    (
        "ringshard_writes_at_admission",
        "Buffered writes written with pwrite on the shard thread as they were admitted, their file having nothing unfinished (also counted in ringshard_ops_total{op=\"write\"}).",
        |s| s.writes_at_admission,
    ),
    (
        "ringshard_sq_full_waits",
        "Times a request waited for a full submission queue.",
        |s| s.sq_full_events,
    ),
    (
        "ringshard_cqes_dropped",
        "Times io_uring_enter reported completions dropped under memory pressure (EBADR): operations that never complete.",
        |s| s.cqes_dropped,
    ),
    (
        "ringshard_pool_exhausted_waits",
        "Times a request waited for an exhausted buffer pool.",
        |s| s.pool_exhausted_events,
    ),
    (
        "ringshard_pool_acquisitions",
        "Buffers acquired from the shard's registered pool.",
        |s| s.pool.acquisitions,
    ),
    (
        "ringshard_pool_exhaustions",
        "Acquisitions refused because every buffer was in use.",
        |s| s.pool.exhaustions,
    ),
    (
        "ringshard_pool_misuse",
        "Pool calls refused as misuse (release in flight, a bad index, a call the buffer's state forbids).",
        |s| s.pool.misuse_total(),
    ),
    (
        "ringshard_pool_unmatched_completions",
        "Pool operations whose completion the pool took a caller's word for (complete_in_flight) without seeing the CQE.",
        |s| s.pool.unmatched_completions,
    ),
];

/// Gauges with one value per shard: (name, help, getter).
const GAUGES: [(&str, &str, Getter); 14] = [
    (
        "ringshard_recv_buffers",
        "Buffers in the shards' provided-buffer rings for recv_pooled.",
        |s| s.recv_buffers,
    ),
    (
        "ringshard_recv_buffers_held",
        "Receive buffers held (leases alive, plain buffers of receives under way).",
        |s| s.recv_buffers_held,
    ),
    (
        "ringshard_shard_failed",
        "1 if the shard thread failed (panicked or could not start).",
        |s| u64::from(s.failed),
    ),
    (
        "ringshard_in_flight_high_water",
        "Largest number of operations in the kernel at once.",
        |s| s.in_flight_hwm,
    ),
    (
        "ringshard_queued_high_water",
        "Largest number of requests waiting in the shard's queue at once.",
        |s| s.queued_hwm,
    ),
    (
        "ringshard_pool_buffers",
        "Buffers in the shard's registered pool.",
        |s| s.pool.total_count as u64,
    ),
    (
        "ringshard_pool_available_buffers",
        "Pool buffers free to acquire.",
        |s| s.pool.available_count as u64,
    ),
    (
        "ringshard_pool_acquired_buffers",
        "Pool buffers acquired (by the shard or a caller).",
        |s| s.pool.acquired_count as u64,
    ),
    (
        "ringshard_pool_lent_buffers",
        "Pool buffers lent to tasks (pooled reads), refused to everyone else until given back.",
        |s| s.pool.lent_count as u64,
    ),
    (
        "ringshard_pool_in_flight_buffers",
        "Pool buffers in submitted operations.",
        |s| s.pool.in_flight_count as u64,
    ),
    (
        "ringshard_pool_kernel_owned_buffers",
        "Pool buffers the kernel may still write into.",
        |s| s.pool.kernel_owned_count as u64,
    ),
    (
        "ringshard_pool_quarantined_buffers",
        "Pool buffers released before the pool saw their completion, held back until it does (or until no other is free).",
        |s| s.pool.quarantined_count as u64,
    ),
    (
        "ringshard_pool_buffer_size_bytes",
        "Size of one pool buffer.",
        |s| s.pool.buffer_size as u64,
    ),
    (
        "ringshard_pool_bytes",
        "Bytes of registered (pinned) pool memory.",
        |s| s.pool.total_bytes as u64,
    ),
];

fn latency_of<'a>(s: &'a ShardStats, op: &str) -> Option<&'a LatencyHistogram> {
    match op {
        "read" => Some(&s.read_latency),
        "write" => Some(&s.write_latency),
        "other" => Some(&s.other_latency),
        _ => None,
    }
}

/// The samples of one latency histogram series (`labels`), with buckets at
/// [`LATENCY_BUCKETS_NS`].
fn write_histogram<W: Write>(
    w: &mut Writer<'_, W>,
    h: Option<&hdrhistogram::Histogram<u64>>,
    labels: Vec<(&str, &str)>,
    bucket: &str,
    sum: &str,
    count: &str,
) -> fmt::Result {
    let total = h.map(|h| h.len()).unwrap_or(0);
    for &b in &LATENCY_BUCKETS_NS {
        let n = h.map(|h| h.count_between(0, b)).unwrap_or(0).min(total);
        let le = float(b as f64 / 1e9);
        let mut ls = labels.clone();
        ls.push(("le", &le));
        w.sample(bucket, &ls, &n.to_string())?;
    }
    let mut ls = labels.clone();
    ls.push(("le", "+Inf"));
    w.sample(bucket, &ls, &total.to_string())?;
    let sum_s = match h {
        Some(h) if total > 0 => h.mean() * total as f64 / 1e9,
        _ => 0.0,
    };
    w.sample(sum, &labels, &float(sum_s))?;
    w.sample(count, &labels, &total.to_string())
}

pub(super) fn write<W: Write>(stats: &ExecutorStats, out: &mut W, flavor: Flavor) -> fmt::Result {
    let mut w = Writer { out, flavor };
    let counter_sample = |name: &str| format!("{name}_total");
    let labels: Vec<ShardLabels> = stats.shards.iter().map(ShardLabels::of).collect();
    let shards = || stats.shards.iter().zip(labels.iter());

    w.family(
        "ringshard_elapsed_seconds",
        Kind::Gauge,
        "Time these statistics cover: since the executor started, or the interval of a difference of two snapshots.",
    )?;
    w.sample(
        "ringshard_elapsed_seconds",
        &[],
        &float(stats.elapsed.as_secs_f64()),
    )?;

    w.family(
        "ringshard_shard_info",
        Kind::Gauge,
        "Always 1: where each shard runs (cpu, numa_node, pool_numa_node; none if unknown), its I/O backend and ring mode, and whether its NUMA memory policy applied (mem_policy).",
    )?;
    for (s, l) in shards() {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "none".to_string());
        let cpu = opt(s.cpu.map(|c| c.to_string()));
        let node = opt(s.numa_node.map(|n| n.to_string()));
        let pool_node = opt(s.pool.numa_node.map(|n| n.to_string()));
        let policy = match s.mem_policy {
            None => "none".to_string(),
            Some(MemPolicy::Preferred) => "preferred".to_string(),
            Some(MemPolicy::Failed { errno }) => format!("failed: {}", errno_name(errno)),
        };
        w.sample(
            "ringshard_shard_info",
            &l.with(&[
                ("cpu", &cpu),
                ("numa_node", &node),
                ("pool_numa_node", &pool_node),
                ("mem_policy", &policy),
            ]),
            "1",
        )?;
    }

    w.family(
        "ringshard_ops",
        Kind::Counter,
        "Completed operations (successful or not) by kind.",
    )?;
    for (s, l) in shards() {
        for kind in OpKind::ALL {
            w.sample(
                &counter_sample("ringshard_ops"),
                &l.with(&[("op", kind.name())]),
                &s.ops(kind).to_string(),
            )?;
        }
    }

    w.family(
        "ringshard_errors",
        Kind::Counter,
        "Failed operations by errno.",
    )?;
    for (s, l) in shards() {
        for (&errno, &n) in &s.errors {
            let name = errno_name(errno);
            w.sample(
                &counter_sample("ringshard_errors"),
                &l.with(&[("errno", &name)]),
                &n.to_string(),
            )?;
        }
    }

    for (name, help, get) in COUNTERS {
        w.family(name, Kind::Counter, help)?;
        for (s, l) in shards() {
            w.sample(&counter_sample(name), &l.with(&[]), &get(s).to_string())?;
        }
    }
    for (name, help, get) in GAUGES {
        w.family(name, Kind::Gauge, help)?;
        for (s, l) in shards() {
            w.sample(name, &l.with(&[]), &get(s).to_string())?;
        }
    }

    let hist = "ringshard_op_latency_seconds";
    w.family(
        hist,
        Kind::Histogram,
        "Operation latency, submission to completion, by op (read, write, other; tasks excluded). Buckets are read from an HDR histogram with 3 significant digits.",
    )?;
    let bucket = format!("{hist}_bucket");
    let sum = format!("{hist}_sum");
    let count = format!("{hist}_count");
    for (s, l) in shards() {
        for op in ["read", "write", "other"] {
            let h = latency_of(s, op).and_then(|h| h.0.as_ref());
            write_histogram(&mut w, h, l.with(&[("op", op)]), &bucket, &sum, &count)?;
        }
    }

    let hist = "ringshard_inline_read_latency_seconds";
    w.family(
        hist,
        Kind::Histogram,
        "Latency of inline reads (done on the caller's thread; a subset of op=\"read\" above), measured by the caller, to about 6%.",
    )?;
    let bucket = format!("{hist}_bucket");
    let sum = format!("{hist}_sum");
    let count = format!("{hist}_count");
    for (s, l) in shards() {
        write_histogram(
            &mut w,
            s.inline_latency.0.as_ref(),
            l.with(&[]),
            &bucket,
            &sum,
            &count,
        )?;
    }

    if flavor == Flavor::OpenMetrics {
        writeln!(w.out, "# EOF")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(
            escape_help("a\\b\"c\nd", Flavor::Prometheus),
            "a\\\\b\"c\\nd"
        );
        assert_eq!(
            escape_help("a\\b\"c\nd", Flavor::OpenMetrics),
            "a\\\\b\\\"c\\nd"
        );
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(0.0000025), "0.0000025");
        assert_eq!(float(10.0), "10");
    }

    #[test]
    fn buckets_are_increasing() {
        assert!(LATENCY_BUCKETS_NS.windows(2).all(|w| w[0] < w[1]));
    }
}
