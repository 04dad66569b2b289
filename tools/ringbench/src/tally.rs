//! What a load-generating thread counts: operations, bytes, latency (HDR histogram, ns), errors
//! and verification results; merged exactly at the end of a run.

use crate::pattern::Mismatch;
use crate::workload::IoKind;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Messages kept per run (the counts are always complete).
const KEEP_MESSAGES: usize = 10;

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatSummary {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
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
        }
    }

    pub fn from_lib(l: &ringshard::LatencySummary) -> Self {
        LatSummary {
            p50: l.p50_us,
            p99: l.p99_us,
            p999: l.p999_us,
            max: l.max_us,
            mean: l.mean_us,
        }
    }
}

/// A latency histogram: 1 ns to 60 s, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("constant histogram bounds are valid")
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
        let what = match kind {
            IoKind::Read => "read",
            IoKind::Write => "write",
            IoKind::Fsync => "fsync",
        };
        let at = if kind == IoKind::Fsync {
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

/// Everything one thread counts.
#[derive(Debug, Clone)]
pub struct Tally {
    pub reads: u64,
    pub writes: u64,
    pub fsyncs: u64,
    pub bytes: u64,
    pub errors: u64,
    /// Latency of reads and writes (fsyncs are counted, not timed).
    pub hist: Histogram<u64>,
    pub checks: Checks,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            reads: 0,
            writes: 0,
            fsyncs: 0,
            bytes: 0,
            errors: 0,
            hist: new_hist(),
            checks: Checks::default(),
        }
    }
}

impl Tally {
    /// Counts a successful operation of `bytes` bytes that took `ns`.
    #[inline]
    pub fn ok(&mut self, kind: IoKind, bytes: u64, ns: u64) {
        match kind {
            IoKind::Read => self.reads += 1,
            IoKind::Write => self.writes += 1,
            IoKind::Fsync => {
                self.fsyncs += 1;
                return;
            }
        }
        self.bytes += bytes;
        self.hist.saturating_record(ns);
    }

    /// Counts a failed operation.
    pub fn fail(&mut self, kind: IoKind, path: &Path, offset: u64, reason: &str) {
        self.errors += 1;
        self.checks.error(kind, path, offset, reason);
    }

    /// Reads and writes done (fsyncs not included).
    pub fn ops(&self) -> u64 {
        self.reads + self.writes
    }

    pub fn merge(&mut self, o: &Tally) {
        self.reads += o.reads;
        self.writes += o.writes;
        self.fsyncs += o.fsyncs;
        self.bytes += o.bytes;
        self.errors += o.errors;
        let _ = self.hist.add(&o.hist);
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
