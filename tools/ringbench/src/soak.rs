//! Long runs (`--report-every`): periodic samples of operations, verification mismatches, errors,
//! the process's resident memory and open descriptors, and a verdict on whether memory or
//! descriptors grow over the run.
//!
//! The sampler is process-wide (one measured phase runs at a time): [`begin`] at the start of a
//! phase, [`tick`] from the supervising loop, [`finish`] at its end, [`take`] when the report is
//! built. Errors and mismatches are counted live by [`note_error`] and [`note_mismatch`] (called
//! where every engine records them), so a sample shows them as they happen, not only at the end.
//!
//! The verdict: samples before the warm-up (the first 10% of the samples' time span, at least
//! one interval) are left out; of the rest, the median of the first third is compared with the
//! median of the last third. RSS grows when the last third's median exceeds the first's by more
//! than [`RSS_TOLERANCE_KIB`] and by more than [`RSS_TOLERANCE_PCT`] percent; descriptors grow
//! when it exceeds it by more than [`FD_TOLERANCE`]. With fewer than 3 samples after warm-up,
//! every sample is used (first vs last third still).

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// RSS may rise this much (KiB) without counting as growth (allocator and page-cache noise).
pub const RSS_TOLERANCE_KIB: u64 = 8 * 1024;
/// ... and this much relative to the first third's median (percent).
pub const RSS_TOLERANCE_PCT: u64 = 10;
/// Descriptors may rise this much without counting as growth.
pub const FD_TOLERANCE: u64 = 2;

static ERRORS: AtomicU64 = AtomicU64::new(0);
static MISMATCHES: AtomicU64 = AtomicU64::new(0);
static STATE: Mutex<Option<State>> = Mutex::new(None);
static EVERY: Mutex<Option<Duration>> = Mutex::new(None);

/// Sets the sampling interval of the measured phases to come (`None`: no sampling).
pub fn set_every(every: Option<Duration>) {
    *EVERY.lock().unwrap_or_else(|p| p.into_inner()) = every;
}

/// Counts a failed operation as it happens.
pub fn note_error() {
    ERRORS.fetch_add(1, Ordering::Relaxed);
}

/// Counts a read with wrong bytes as it happens.
pub fn note_mismatch() {
    MISMATCHES.fetch_add(1, Ordering::Relaxed);
}

/// One sample of the process.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the measured phase started.
    pub t_s: f64,
    /// Reads + writes done so far.
    pub ops: u64,
    /// Operations per second since the previous sample.
    pub iops: f64,
    /// Verification mismatches so far.
    pub mismatches: u64,
    /// Failed operations so far.
    pub errors: u64,
    /// Resident set size, KiB (/proc/self/statm).
    pub rss_kib: u64,
    /// Open descriptors (/proc/self/fd).
    pub fds: u64,
}

struct State {
    start: Instant,
    every: Duration,
    next: Instant,
    base_errors: u64,
    base_mismatches: u64,
    samples: Vec<Sample>,
}

impl State {
    fn sample(&mut self, ops: u64) {
        let t_s = self.start.elapsed().as_secs_f64();
        let iops = match self.samples.last() {
            Some(p) if t_s > p.t_s => (ops.saturating_sub(p.ops)) as f64 / (t_s - p.t_s),
            _ => 0.0,
        };
        self.samples.push(Sample {
            t_s,
            ops,
            iops,
            mismatches: MISMATCHES
                .load(Ordering::Relaxed)
                .saturating_sub(self.base_mismatches),
            errors: ERRORS
                .load(Ordering::Relaxed)
                .saturating_sub(self.base_errors),
            rss_kib: rss_kib(),
            fds: fd_count(),
        });
    }
}

fn state() -> std::sync::MutexGuard<'static, Option<State>> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts sampling a measured phase that started at `start`, at the interval of [`set_every`]
/// (no sampling when there is none): takes the first sample now.
pub fn begin(start: Instant) {
    let every = *EVERY.lock().unwrap_or_else(|p| p.into_inner());
    let mut s = state();
    *s = every.map(|every| State {
        start,
        every,
        next: start + every,
        base_errors: ERRORS.load(Ordering::Relaxed),
        base_mismatches: MISMATCHES.load(Ordering::Relaxed),
        samples: Vec::new(),
    });
    if let Some(st) = s.as_mut() {
        st.sample(0);
    }
}

/// Takes a sample if one is due; `ops` is the phase's reads + writes so far. Returns the time
/// until the next one (to bound the caller's wait).
pub fn tick(ops: u64) -> Option<Duration> {
    let mut s = state();
    let st = s.as_mut()?;
    let now = Instant::now();
    if now >= st.next {
        st.sample(ops);
        while st.next <= now {
            st.next += st.every;
        }
    }
    Some(st.next.saturating_duration_since(now))
}

/// Takes the last sample (the phase is over).
pub fn finish(ops: u64) {
    if let Some(st) = state().as_mut() {
        st.sample(ops);
    }
}

/// The samples of the last phase and their verdict (None if it was not sampled).
pub fn take() -> Option<SoakReport> {
    let st = state().take()?;
    Some(SoakReport::new(st.every, st.samples))
}

/// The samples of one run and what they say.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub every_s: f64,
    pub samples: Vec<Sample>,
    /// Samples left out as warm-up.
    pub warmup_samples: usize,
    /// Median RSS (KiB) of the first and last third of the samples after warm-up.
    pub rss_kib_first: u64,
    pub rss_kib_last: u64,
    /// Median descriptor count of the first and last third.
    pub fds_first: u64,
    pub fds_last: u64,
    pub rss_growing: bool,
    pub fds_growing: bool,
    /// "flat" or "growing".
    pub verdict: &'static str,
    /// The rule, in words.
    pub rule: String,
}

fn median_u64(v: &[u64]) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2
    }
}

impl SoakReport {
    pub fn new(every: Duration, samples: Vec<Sample>) -> Self {
        let span = samples.last().map_or(0.0, |s| s.t_s);
        let warmup = (span * 0.1).max(every.as_secs_f64());
        let mut kept: Vec<&Sample> = samples.iter().filter(|s| s.t_s >= warmup).collect();
        if kept.len() < 3 {
            kept = samples.iter().collect();
        }
        let warmup_samples = samples.len() - kept.len();
        let third = kept.len().div_ceil(3).max(1);
        let first = &kept[..third.min(kept.len())];
        let last = &kept[kept.len().saturating_sub(third)..];
        let med = |part: &[&Sample], f: fn(&Sample) -> u64| {
            median_u64(&part.iter().map(|s| f(s)).collect::<Vec<_>>())
        };
        let rss_kib_first = med(first, |s| s.rss_kib);
        let rss_kib_last = med(last, |s| s.rss_kib);
        let fds_first = med(first, |s| s.fds);
        let fds_last = med(last, |s| s.fds);
        let rss_rise = rss_kib_last.saturating_sub(rss_kib_first);
        let rss_growing =
            rss_rise > RSS_TOLERANCE_KIB && rss_rise * 100 > rss_kib_first * RSS_TOLERANCE_PCT;
        let fds_growing = fds_last > fds_first + FD_TOLERANCE;
        SoakReport {
            every_s: every.as_secs_f64(),
            samples,
            warmup_samples,
            rss_kib_first,
            rss_kib_last,
            fds_first,
            fds_last,
            rss_growing,
            fds_growing,
            verdict: if rss_growing || fds_growing {
                "growing"
            } else {
                "flat"
            },
            rule: format!(
                "median of the last third of the samples after warm-up (first 10% of the run, at \
                 least one interval) vs the first third: RSS growing if up more than {} MiB and \
                 {RSS_TOLERANCE_PCT}%, descriptors if up more than {FD_TOLERANCE}",
                RSS_TOLERANCE_KIB / 1024
            ),
        }
    }

    pub fn growing(&self) -> bool {
        self.rss_growing || self.fds_growing
    }

    /// The samples table and the verdict line.
    pub fn print(&self) {
        println!("samples (every {} s):", self.every_s);
        let rows: Vec<Vec<String>> = self
            .samples
            .iter()
            .map(|s| {
                vec![
                    format!("{:.1}", s.t_s),
                    s.ops.to_string(),
                    crate::report::fmt_count(s.iops),
                    s.mismatches.to_string(),
                    s.errors.to_string(),
                    format!("{:.1}", s.rss_kib as f64 / 1024.0),
                    s.fds.to_string(),
                ]
            })
            .collect();
        crate::report::print_table(
            &[
                "t (s)",
                "ops",
                "IOPS",
                "mismatches",
                "errors",
                "RSS MiB",
                "fds",
            ],
            &rows,
        );
        let (first, last) = (self.samples.first(), self.samples.last());
        println!(
            "soak: {} -- RSS {:.1} -> {:.1} MiB (medians of first/last third after {} warm-up \
             samples: {:.1} -> {:.1} MiB), fds {} -> {} (medians {} -> {}); mismatches {}, errors {}",
            self.verdict,
            first.map_or(0.0, |s| s.rss_kib as f64 / 1024.0),
            last.map_or(0.0, |s| s.rss_kib as f64 / 1024.0),
            self.warmup_samples,
            self.rss_kib_first as f64 / 1024.0,
            self.rss_kib_last as f64 / 1024.0,
            first.map_or(0, |s| s.fds),
            last.map_or(0, |s| s.fds),
            self.fds_first,
            self.fds_last,
            last.map_or(0, |s| s.mismatches),
            last.map_or(0, |s| s.errors),
        );
        println!("  (rule: {})", self.rule);
    }
}

/// Resident set size of this process in KiB (0 if /proc is unreadable).
pub fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no memory arguments.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    pages * page / 1024
}

/// Open descriptors of this process (0 if /proc is unreadable). The directory's own descriptor,
/// open while it is listed, is not counted.
pub fn fd_count() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count().saturating_sub(1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t_s: f64, rss_kib: u64, fds: u64) -> Sample {
        Sample {
            t_s,
            ops: 0,
            iops: 0.0,
            mismatches: 0,
            errors: 0,
            rss_kib,
            fds,
        }
    }

    #[test]
    fn verdicts() {
        let every = Duration::from_secs(10);
        // Flat after a warm-up jump.
        let flat: Vec<Sample> = (0..=30)
            .map(|i| {
                s(
                    i as f64 * 10.0,
                    if i == 0 { 1000 } else { 50_000 + i % 3 },
                    12,
                )
            })
            .collect();
        let r = SoakReport::new(every, flat);
        assert_eq!(r.verdict, "flat", "{r:?}");
        assert!(r.warmup_samples >= 1);
        // RSS growing steadily by 1 MiB a sample.
        let grow: Vec<Sample> = (0..=30)
            .map(|i| s(i as f64 * 10.0, 50_000 + i * 1024, 12))
            .collect();
        let r = SoakReport::new(every, grow);
        assert!(r.rss_growing && r.verdict == "growing", "{r:?}");
        // A descriptor leaked every sample.
        let fds: Vec<Sample> = (0..=30)
            .map(|i| s(i as f64 * 10.0, 50_000, 12 + i))
            .collect();
        let r = SoakReport::new(every, fds);
        assert!(r.fds_growing && !r.rss_growing, "{r:?}");
        // Too few samples: all used, no panic.
        let r = SoakReport::new(every, vec![s(0.0, 10, 5), s(1.0, 10, 5)]);
        assert_eq!(r.verdict, "flat");
        assert!(SoakReport::new(every, Vec::new()).verdict == "flat");
        assert!(rss_kib() > 0 && fd_count() >= 3);
    }
}
