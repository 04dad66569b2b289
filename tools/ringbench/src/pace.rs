//! Open-loop load (`--rate-iops`, `--rate`): each submitter has a schedule of intended start
//! times at its rate (evenly spaced, or with `--rate-process poisson` exponential gaps, as fio's
//! `rate_process`). An operation is issued at its intended time or, when every slot is busy, as
//! soon as one frees up; its co_lat is counted from the intended time either way, so a stall
//! shows in every operation that should have started during it (coordinated omission corrected;
//! fio's slat, clat and lat count from when the operation actually started). Behind schedule, the schedule is not skipped: late operations go out
//! back to back until it is caught up.
//!
//! Waiting for the next start (`--rate-wait`): `poll` (default) blocks on completions (or
//! sleeps) until shortly before it, with a 1 ns timer slack, then polls completions until it is
//! due, so that starts are not late by the timer's wake-up delay and completions are reaped while
//! waiting. `sleep` does what fio does: reap everything in flight first (fio's `io_u_quiesce`),
//! then `nanosleep` with the thread's default timer slack until fio's sleep granularity short of
//! the start, and spin the rest.

use rand_distr::{Distribution as _, Exp};
use serde::Serialize;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How intended start times are spaced (`--rate-process`, fio's `rate_process`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateProcess {
    /// Evenly spaced (fio's default).
    #[default]
    Linear,
    /// Exponential gaps with the same mean (a Poisson arrival process).
    Poisson,
}

/// How an open-loop submitter waits for its next start (`--rate-wait`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateWait {
    /// Block on completions until shortly before the start, then poll them (ringbench's).
    #[default]
    Poll,
    /// Reap everything in flight, then sleep until the start (fio's).
    Sleep,
}

/// The longest a paced submitter blocks before looking at the stop flag again.
pub const MAX_BLOCK: Duration = Duration::from_millis(50);

/// One submitter's schedule of intended start times.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// The next intended start (None before the first operation: it starts on the first call).
    next: Option<Instant>,
    /// Mean gap between starts, in ns.
    gap_ns: f64,
    poisson: Option<Exp<f64>>,
    rng: crate::workload::SplitMix,
}

impl Pacer {
    /// A schedule of `iops` starts per second (> 0).
    pub fn new(iops: f64, process: RateProcess, seed: u64) -> Self {
        let gap_ns = 1e9 / iops.max(1e-9);
        Pacer {
            next: None,
            gap_ns,
            poisson: match process {
                RateProcess::Linear => None,
                // Exp(1) scaled by the mean gap; 1.0 is a valid rate.
                RateProcess::Poisson => Exp::new(1.0).ok(),
            },
            rng: crate::workload::SplitMix::new(seed),
        }
    }

    /// Spreads the rate over `k` schedules: each gets 1/k of it.
    pub fn scale(&mut self, k: f64) {
        self.gap_ns *= k;
    }

    /// The intended start of the next operation (the schedule starts at `now` if it has not).
    #[inline]
    pub fn peek(&mut self, now: Instant) -> Instant {
        *self.next.get_or_insert(now)
    }

    /// The intended start of the next operation if it is due at `now` (and moves the schedule
    /// on), else `Err(when it is due)`.
    #[inline]
    pub fn due(&mut self, now: Instant) -> Result<Instant, Instant> {
        let at = *self.next.get_or_insert(now);
        if at > now {
            return Err(at);
        }
        let gap = match &self.poisson {
            None => self.gap_ns,
            Some(e) => self.gap_ns * e.sample(&mut self.rng),
        };
        // A gap past Instant's range means "never again": keep the last start (the run ends
        // by its duration or quota first).
        self.next = Some(
            at.checked_add(Duration::from_nanos(gap.min(1e18) as u64))
                .unwrap_or(at),
        );
        Ok(at)
    }
}

/// How a submitter with a free slot waits for its next intended start at `due`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Block (on completions, or asleep) for at most this long, then look again.
    Block(Duration),
    /// The start is close: poll completions without blocking, and look again.
    Poll,
}

/// How to wait until `due` from `now` when blocking wakes up late by up to `window`.
pub fn wait_for(due: Instant, now: Instant, window: Duration) -> Wait {
    match due.checked_duration_since(now) {
        Some(left) if left > window => Wait::Block((left - window).min(MAX_BLOCK)),
        _ => Wait::Poll,
    }
}

/// How late a blocking wait of this thread wakes up: fio's "sleep granularity", measured once
/// per process (a few short sleeps: twice the 3rd largest overshoot of 16), at least 40 µs (a
/// wake-up from a ring's timeout in a VM is often later than one from nanosleep) and at most
/// 1 ms.
pub fn wake_window() -> Duration {
    static WINDOW: OnceLock<Duration> = OnceLock::new();
    *WINDOW.get_or_init(|| {
        precise_timers();
        let mut over: Vec<Duration> = (0..16)
            .map(|_| {
                let t = Instant::now();
                std::thread::sleep(Duration::from_micros(10));
                t.elapsed().saturating_sub(Duration::from_micros(10))
            })
            .collect();
        over.sort_unstable();
        (over[13] * 2).clamp(Duration::from_micros(40), Duration::from_millis(1))
    })
}

/// Asks the kernel to fire this thread's timers on time (timer slack 1 ns instead of the default
/// 50 µs): paced submitters block with a timeout and must wake when asked. Best effort.
pub fn precise_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// Blocks the calling thread until `due` (sleeps, then spins the last `wake_window()`).
pub fn sleep_until(due: Instant) {
    loop {
        let now = Instant::now();
        match wait_for(due, now, wake_window()) {
            Wait::Block(d) => std::thread::sleep(d),
            Wait::Poll if now >= due => return,
            Wait::Poll => std::hint::spin_loop(),
        }
    }
}

/// fio's sleep granularity (`ns_granularity`): the longest of 10 `nanosleep`s of 1 µs, whole
/// µs, with the calling thread's timer slack as it is (fio leaves the default 50 µs). Measured
/// once per process.
pub fn fio_granularity() -> Duration {
    static G: OnceLock<Duration> = OnceLock::new();
    *G.get_or_init(|| {
        (0..10)
            .map(|_| {
                let t = Instant::now();
                std::thread::sleep(Duration::from_micros(1));
                Duration::from_micros(t.elapsed().as_micros() as u64)
            })
            .max()
            .unwrap_or_default()
    })
}

/// fio's `usec_sleep` until `due`: sleeps the granularity short of it, again while more than the
/// granularity is left, and spins the rest.
pub fn fio_sleep_until(due: Instant) {
    let g = fio_granularity();
    loop {
        let now = Instant::now();
        let Some(left) = due.checked_duration_since(now) else {
            return;
        };
        if left < g {
            while Instant::now() < due {
                std::hint::spin_loop();
            }
            return;
        }
        std::thread::sleep((left - g).min(MAX_BLOCK));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_schedule_is_evenly_spaced_from_the_first_call() {
        let mut p = Pacer::new(1000.0, RateProcess::Linear, 1);
        let t0 = Instant::now();
        assert_eq!(p.due(t0), Ok(t0));
        // Not yet due: says when.
        assert_eq!(p.due(t0), Err(t0 + Duration::from_millis(1)));
        assert_eq!(
            p.due(t0 + Duration::from_micros(999)),
            Err(t0 + Duration::from_millis(1))
        );
        // Called late (the submitter was busy): every missed start is handed out, in order, with
        // its own intended time, not skipped and not moved to now.
        let late = t0 + Duration::from_micros(3500);
        let starts: Vec<Duration> = std::iter::from_fn(|| p.due(late).ok())
            .map(|t| t - t0)
            .collect();
        assert_eq!(
            starts,
            [1000, 2000, 3000].map(Duration::from_micros).to_vec()
        );
        assert_eq!(p.due(late), Err(t0 + Duration::from_millis(4)));
    }

    #[test]
    fn poisson_gaps_average_to_the_rate() {
        let mut p = Pacer::new(10_000.0, RateProcess::Poisson, 7);
        let t0 = Instant::now();
        let far = t0 + Duration::from_secs(3600);
        assert_eq!(p.due(t0), Ok(t0));
        let n = 20_000;
        let mut last = t0;
        let mut gaps = Vec::with_capacity(n);
        for _ in 0..n {
            let t = p.due(far).unwrap();
            gaps.push((t - last).as_nanos() as f64);
            last = t;
        }
        let mean = gaps.iter().sum::<f64>() / n as f64;
        assert!((mean / 100_000.0 - 1.0).abs() < 0.05, "mean gap {mean} ns");
        // Exponential: about 63% of the gaps are below the mean (1 - 1/e).
        let below = gaps.iter().filter(|&&g| g < 100_000.0).count() as f64 / n as f64;
        assert!((0.58..0.68).contains(&below), "{below}");
    }

    #[test]
    fn waits_block_short_of_the_start_then_poll() {
        let now = Instant::now();
        let w = Duration::from_micros(20);
        assert_eq!(
            wait_for(now + Duration::from_micros(100), now, w),
            Wait::Block(Duration::from_micros(80))
        );
        assert_eq!(
            wait_for(now + Duration::from_micros(15), now, w),
            Wait::Poll
        );
        assert_eq!(wait_for(now, now + Duration::from_micros(1), w), Wait::Poll);
        assert_eq!(
            wait_for(now + Duration::from_secs(10), now, w),
            Wait::Block(MAX_BLOCK)
        );
    }
}
