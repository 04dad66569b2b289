//! What a load-generating thread counts: operations, bytes, latency (HDR histogram, ns), errors
//! and verification results; merged exactly at the end of a run.

use crate::pattern::Mismatch;
use crate::workload::IoKind;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// Messages kept per run (the counts are always complete).
const KEEP_MESSAGES: usize = 10;

/// fio's default percentile list (`percentile_list`).
pub const FIO_PERCENTILES: [f64; 17] = [
    1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95,
    99.99,
];

/// Latency statistics, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LatSummary {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub min: f64,
    pub stddev: f64,
    /// Samples.
    pub n: u64,
    /// The `--percentiles` list (percent -> µs; "99.9" style keys); empty in per-row summaries.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub percentiles: BTreeMap<String, f64>,
}

/// "99.9" for 99.9, "50" for 50.
pub fn pct_key(p: f64) -> String {
    let s = format!("{p:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

impl LatSummary {
    pub fn from_hist(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        LatSummary {
            p50: us(h.value_at_quantile(0.5)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
            min: us(h.min()),
            stddev: h.stdev() / 1000.0,
            n: h.len(),
            percentiles: BTreeMap::new(),
        }
    }

    /// With the percentiles of `list` (percent values) too.
    pub fn with_percentiles(h: &Histogram<u64>, list: &[f64]) -> Self {
        let mut s = Self::from_hist(h);
        if !h.is_empty() {
            for &p in list {
                let v = h.value_at_quantile(p / 100.0) as f64 / 1000.0;
                s.percentiles.insert(pct_key(p), v);
            }
        }
        s
    }

    pub fn from_lib(l: &ringshard::LatencySummary) -> Self {
        LatSummary {
            p50: l.p50_us,
            p99: l.p99_us,
            p999: l.p999_us,
            max: l.max_us,
            mean: l.mean_us,
            ..Default::default()
        }
    }
}

/// A latency histogram: 1 ns to 60 s, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("constant histogram bounds are valid")
}

/// A histogram for the parts of the latency (slat, clat): 1 ns to 60 s, 2 significant digits
/// (under 1% error, finer than fio's own bins; about 30 KiB instead of 220).
pub fn new_part_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 2).expect("constant histogram bounds are valid")
}

/// When an operation was meant to start, started, was issued and completed: fio's
/// definitions, plus the intended start of open loop.
///
/// `start`: when the operation was prepared (in open loop after waiting for its intended time;
/// fio's `start_time`). `issue`: when the call that hands it to the I/O interface returned: the
/// `io_uring_enter` that submits it (raw-uring and ringshard in-shard in open loop; closed loop
/// they submit and wait in one call, and `issue` is taken before it), else the request call,
/// channel send or `spawn_blocking` (fio's `issue_time`). `done`: when it was reaped.
/// `intended`: its intended start in open loop (`--rate-iops`), else `start`.
/// slat = issue - start, clat = done - issue, lat = done - start (fio's), co_lat = done -
/// intended (coordinated omission corrected: also counts how late the start went out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Times {
    pub intended: Instant,
    pub start: Instant,
    pub issue: Instant,
    pub done: Instant,
}

impl Times {
    /// `intended` None: closed loop (meant to start when it started).
    #[inline]
    pub fn new(intended: Option<Instant>, start: Instant, issue: Instant, done: Instant) -> Self {
        Times {
            intended: intended.map_or(start, |s| s.min(start)),
            start,
            issue: issue.max(start),
            done: done.max(issue),
        }
    }

    /// Started and issued by one call at `at` (the engines that cannot tell them apart).
    #[inline]
    pub fn at_call(intended: Option<Instant>, at: Instant, done: Instant) -> Self {
        Self::new(intended, at, at, done)
    }

    #[inline]
    pub fn slat_ns(&self) -> u64 {
        ns(self.start, self.issue)
    }

    #[inline]
    pub fn clat_ns(&self) -> u64 {
        ns(self.issue, self.done)
    }

    #[inline]
    pub fn lat_ns(&self) -> u64 {
        ns(self.start, self.done)
    }

    #[inline]
    pub fn co_lat_ns(&self) -> u64 {
        ns(self.intended, self.done)
    }
}

#[inline]
fn ns(from: Instant, to: Instant) -> u64 {
    to.saturating_duration_since(from).as_nanos() as u64
}

/// One kind of operation's counts and its latency histograms (fio's three, and lat from the
/// intended start).
#[derive(Debug, Clone)]
pub struct KindTally {
    pub ops: u64,
    pub bytes: u64,
    pub slat: Histogram<u64>,
    pub clat: Histogram<u64>,
    pub lat: Histogram<u64>,
    pub co_lat: Histogram<u64>,
}

impl KindTally {
    fn new() -> Self {
        KindTally {
            ops: 0,
            bytes: 0,
            slat: new_part_hist(),
            clat: new_part_hist(),
            lat: new_hist(),
            co_lat: new_hist(),
        }
    }

    fn merge(&mut self, o: &KindTally) {
        self.ops += o.ops;
        self.bytes += o.bytes;
        let _ = self.slat.add(&o.slat);
        let _ = self.clat.add(&o.clat);
        let _ = self.lat.add(&o.lat);
        let _ = self.co_lat.add(&o.co_lat);
    }
}

/// Verification results and errors, with the first few messages.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Checks {
    /// Reads whose bytes were checked against the pattern.
    pub verified: u64,
    /// Reads with at least one wrong byte.
    pub mismatches: u64,
    /// Failed operations by reason (errno name, "short read", ...).
    pub errors: BTreeMap<String, u64>,
    /// The first mismatches and errors, with file and offset.
    pub messages: Vec<String>,
}

impl Checks {
    pub fn mismatch(&mut self, path: &Path, m: Mismatch) {
        self.mismatches += 1;
        crate::soak::note_mismatch();
        self.note(format!(
            "verify: {} at offset {}: expected byte 0x{:02x}, read 0x{:02x}",
            path.display(),
            m.offset,
            m.expected,
            m.got
        ));
    }

    /// Counts a failed operation; `reason` is an errno name or a description.
    pub fn error(&mut self, kind: IoKind, path: &Path, offset: u64, reason: &str) {
        crate::soak::note_error();
        *self.errors.entry(reason.to_string()).or_insert(0) += 1;
        let what = kind.name();
        let at = if kind.is_sync() {
            String::new()
        } else {
            format!(" at offset {offset}")
        };
        self.note(format!("{what} {}{at} failed: {reason}", path.display()));
    }

    fn note(&mut self, msg: String) {
        if self.messages.len() < KEEP_MESSAGES && !self.messages.contains(&msg) {
            self.messages.push(msg);
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn merge(&mut self, o: &Checks) {
        self.verified += o.verified;
        self.mismatches += o.mismatches;
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
        for m in &o.messages {
            self.note(m.clone());
        }
    }
}

/// Everything one thread counts. Histograms are made for the kinds that occur (about 280 KiB per
/// kind).
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Per kind, indexed by [`IoKind`] order (read, write, fsync, fdatasync).
    pub kinds: [Option<Box<KindTally>>; 4],
    pub errors: u64,
    pub checks: Checks,
}

impl Tally {
    /// Counts a successful operation of `bytes` bytes, unless the ramp is still on
    /// (`--ramp-time`: nothing done before it counts).
    #[inline]
    pub fn ok(&mut self, kind: IoKind, bytes: u64, t: Times) {
        if !crate::control::ramping() {
            self.record(kind, bytes, t);
        }
    }

    /// Counts a successful operation (ramp or not).
    #[inline]
    fn record(&mut self, kind: IoKind, bytes: u64, t: Times) {
        let k = self.kinds[kind as usize].get_or_insert_with(|| Box::new(KindTally::new()));
        k.ops += 1;
        if !kind.is_sync() {
            k.bytes += bytes;
        }
        k.slat.saturating_record(t.slat_ns());
        k.clat.saturating_record(t.clat_ns());
        k.lat.saturating_record(t.lat_ns());
        k.co_lat.saturating_record(t.co_lat_ns());
    }

    /// Counts a failed operation.
    pub fn fail(&mut self, kind: IoKind, path: &Path, offset: u64, reason: &str) {
        self.errors += 1;
        self.checks.error(kind, path, offset, reason);
    }

    pub fn kind(&self, kind: IoKind) -> Option<&KindTally> {
        self.kinds[kind as usize].as_deref()
    }

    fn count(&self, kind: IoKind) -> u64 {
        self.kind(kind).map_or(0, |k| k.ops)
    }

    pub fn reads(&self) -> u64 {
        self.count(IoKind::Read)
    }

    pub fn writes(&self) -> u64 {
        self.count(IoKind::Write)
    }

    /// fsyncs and fdatasyncs.
    pub fn syncs(&self) -> u64 {
        self.count(IoKind::Fsync) + self.count(IoKind::Fdatasync)
    }

    pub fn bytes(&self) -> u64 {
        self.kinds.iter().flatten().map(|k| k.bytes).sum()
    }

    /// Reads and writes done (syncs not included).
    pub fn ops(&self) -> u64 {
        self.reads() + self.writes()
    }

    /// Latency of reads and writes together from their intended starts (the per-row columns;
    /// closed loop, fio's lat).
    pub fn rw_lat(&self) -> Histogram<u64> {
        let mut h = new_hist();
        for k in [IoKind::Read, IoKind::Write] {
            if let Some(t) = self.kind(k) {
                let _ = h.add(&t.co_lat);
            }
        }
        h
    }

    pub fn merge(&mut self, o: &Tally) {
        for (mine, theirs) in self.kinds.iter_mut().zip(&o.kinds) {
            if let Some(t) = theirs {
                match mine {
                    Some(m) => m.merge(t),
                    None => *mine = Some(t.clone()),
                }
            }
        }
        self.errors += o.errors;
        self.checks.merge(&o.checks);
    }
}

/// The text of a failed result (negative errno) for messages.
pub fn errno_reason(errno: i32) -> String {
    ringshard::stats::errno_name(errno.abs())
}

/// The text of a failed ringshard request: its errno's name, or the error.
pub fn lib_reason(e: &ringshard::Error) -> String {
    match e.errno() {
        Some(errno) => errno_reason(errno),
        None => e.to_string(),
    }
}

/// The text of a failed std I/O call: its errno's name, or the error.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(errno) => errno_reason(errno),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn latency_is_split_by_kind_as_fio_does_with_the_intended_start_apart() {
        let t0 = Instant::now();
        let us = |n: u64| t0 + Duration::from_micros(n);
        let mut t = Tally::default();
        // Closed loop: prepared, issued 2 µs later, reaped at 10.
        t.record(IoKind::Read, 4096, Times::new(None, us(0), us(2), us(10)));
        // Open loop, started 100 µs after its intended start (every slot was busy), issued 5 µs
        // later, reaped 30 µs after that: fio's slat/clat/lat leave the 100 µs out, co_lat has it.
        t.record(
            IoKind::Write,
            4096,
            Times::new(Some(us(0)), us(100), us(105), us(135)),
        );
        t.record(IoKind::Fsync, 0, Times::at_call(None, us(0), us(5000)));
        let r = t.kind(IoKind::Read).unwrap();
        assert_eq!((r.ops, r.bytes, r.lat.max()), (1, 4096, 10_007));
        assert_eq!(r.co_lat.max(), r.lat.max());
        assert_eq!(LatSummary::from_hist(&r.slat).max.round(), 2.0);
        let w = t.kind(IoKind::Write).unwrap();
        assert_eq!(LatSummary::from_hist(&w.slat).max.round(), 5.0);
        assert_eq!(LatSummary::from_hist(&w.clat).max.round(), 30.0);
        assert_eq!(LatSummary::from_hist(&w.lat).max.round(), 35.0);
        assert_eq!(LatSummary::from_hist(&w.co_lat).max.round(), 135.0);
        let f = t.kind(IoKind::Fsync).unwrap();
        assert_eq!((f.ops, f.bytes), (1, 0));
        assert!(t.kind(IoKind::Fdatasync).is_none());
        assert_eq!((t.ops(), t.syncs(), t.bytes()), (2, 1, 8192));
        // Reads and writes together for the rows; syncs left out.
        assert_eq!(t.rw_lat().len(), 2);
        let mut u = Tally::default();
        u.merge(&t);
        u.merge(&t);
        assert_eq!((u.ops(), u.syncs()), (4, 2));
    }

    #[test]
    fn percentile_lists() {
        let mut h = new_hist();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let s = LatSummary::with_percentiles(&h, &[50.0, 99.9, 99.99]);
        let keys: Vec<&str> = s.percentiles.keys().map(String::as_str).collect();
        assert_eq!(keys, ["50", "99.9", "99.99"]);
        assert!((s.percentiles["50"] - 500.0).abs() < 1.0);
        assert!((s.percentiles["99.9"] - 999.0).abs() < 1.5);
        assert_eq!(s.n, 1000);
        assert_eq!(pct_key(99.95), "99.95");
        assert_eq!(pct_key(1.0), "1");
    }
}
