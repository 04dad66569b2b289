//! Running a measured phase: the start/stop signal, per-submitter progress counters, the live
//! progress line on stderr, the ramp (`--ramp-time`: the load runs, nothing is counted, then the
//! clocks start), and the wall-clock and CPU time (getrusage) of the phase.
//!
//! The ramp and the start of several jobs run together are process-wide (one group of measured
//! phases runs at a time): [`set_ramp`] once, and each job's thread joins the [`GroupStart`] so
//! that every job's load starts at the same moment.

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;
use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

static RAMP: Mutex<Option<Duration>> = Mutex::new(None);
static RAMPING: AtomicBool = AtomicBool::new(false);

/// Sets the ramp of the measured phases to come (`--ramp-time`; None: no ramp).
pub fn set_ramp(ramp: Option<Duration>) {
    *RAMP.lock().unwrap_or_else(|p| p.into_inner()) = ramp;
}

fn ramp() -> Option<Duration> {
    *RAMP.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether the current phase is still ramping (operations done now are not counted).
#[inline]
pub fn ramping() -> bool {
    RAMPING.load(Ordering::Relaxed)
}

/// The start line of several jobs run together: each job's load starts when every job is ready
/// (or has failed before getting there).
pub struct GroupStart {
    state: Mutex<Vec<bool>>,
    cv: Condvar,
}

impl GroupStart {
    pub fn new(jobs: usize) -> Arc<Self> {
        Arc::new(GroupStart {
            state: Mutex::new(vec![false; jobs]),
            cv: Condvar::new(),
        })
    }

    /// Job `job` is ready (or gone); idempotent.
    pub fn arrive(&self, job: usize) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = s.get_mut(job) {
            *a = true;
        }
        self.cv.notify_all();
    }

    fn wait_all(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while !s.iter().all(|&a| a) {
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

thread_local! {
    /// The group this thread's job belongs to, and its index in it.
    static GROUP: RefCell<Option<(Arc<GroupStart>, usize)>> = const { RefCell::new(None) };
}

/// Makes the calling thread's runs start with the rest of `group` (as job `job`).
pub fn join_group(group: Arc<GroupStart>, job: usize) {
    GROUP.with(|g| *g.borrow_mut() = Some((group, job)));
}

/// One submitter's counters, on their own cache lines (each has a single writer).
#[repr(align(128))]
#[derive(Default)]
struct Slot {
    ops: AtomicU64,
    bytes: AtomicU64,
}

/// Shared by the coordinator and the submitters of one run.
pub struct Control {
    stop: AtomicBool,
    slots: Vec<Slot>,
    done_tx: Sender<()>,
    done_rx: Receiver<()>,
}

impl Control {
    pub fn new(submitters: usize) -> Self {
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        Control {
            stop: AtomicBool::new(false),
            slots: (0..submitters).map(|_| Slot::default()).collect(),
            done_tx,
            done_rx,
        }
    }

    /// Whether submitters should stop issuing new operations.
    #[inline]
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Adds to submitter `i`'s progress (single writer per slot: no locked instruction).
    #[inline]
    pub fn add(&self, i: usize, ops: u64, bytes: u64) {
        if let Some(s) = self.slots.get(i) {
            s.ops
                .store(s.ops.load(Ordering::Relaxed) + ops, Ordering::Relaxed);
            s.bytes
                .store(s.bytes.load(Ordering::Relaxed) + bytes, Ordering::Relaxed);
        }
    }

    /// A submitter has finished (call exactly once per submitter, also on failure).
    pub fn done(&self) {
        let _ = self.done_tx.send(());
    }

    fn totals(&self) -> (u64, u64) {
        self.slots.iter().fold((0, 0), |(o, b), s| {
            (
                o + s.ops.load(Ordering::Relaxed),
                b + s.bytes.load(Ordering::Relaxed),
            )
        })
    }

    /// The measured phase of a run whose submitter threads wait on `go`: starts the clock and
    /// the CPU meter, releases them, supervises until they are done. Returns the wall time and the
    /// process CPU time of the phase.
    pub fn measure_phase(
        &self,
        go: &std::sync::Barrier,
        submitters: usize,
        duration: Option<Duration>,
        progress: bool,
        on_ramp_end: &mut dyn FnMut(),
    ) -> (Duration, CpuTimes) {
        let meas = Measure::start();
        go.wait();
        self.supervise(submitters, meas, duration, progress, on_ramp_end)
    }

    /// Waits until `submitters` have called [`done`](Self::done), telling them to stop after
    /// the ramp and `duration`, printing progress when `progress`. At the end of the ramp (at
    /// once without one) the clocks restart and `on_ramp_end` runs (engines snapshot their
    /// library statistics). Returns the wall time from the end of the ramp to the last `done`,
    /// and the process CPU time over it.
    pub fn supervise(
        &self,
        submitters: usize,
        mut meas: Measure,
        duration: Option<Duration>,
        progress: bool,
        on_ramp_end: &mut dyn FnMut(),
    ) -> (Duration, CpuTimes) {
        let mut line = Progress::new(progress, meas.start);
        let mut remaining = submitters;
        let tick = Duration::from_millis(250);
        let mut ramp_end = ramp().and_then(|r| meas.start.checked_add(r));
        RAMPING.store(ramp_end.is_some(), Ordering::Relaxed);
        if ramp_end.is_none() {
            on_ramp_end();
            crate::soak::begin(meas.start);
        }
        while remaining > 0 {
            let now = Instant::now();
            let mut wait = tick;
            if let Some(end) = ramp_end {
                if now >= end {
                    RAMPING.store(false, Ordering::Relaxed);
                    ramp_end = None;
                    meas = Measure::restart();
                    on_ramp_end();
                    crate::soak::begin(meas.start);
                    line.start = meas.start;
                    continue;
                }
                wait = wait.min(end - now);
            } else if let Some(next) = crate::soak::tick(self.totals().0) {
                wait = wait.min(next.max(Duration::from_millis(1)));
            }
            if let (Some(d), None) = (duration, ramp_end) {
                // A duration past Instant's range never ends the run by time.
                let deadline = meas.start.checked_add(d).unwrap_or(now + tick);
                if now >= deadline {
                    self.stop();
                } else {
                    wait = wait.min(deadline - now);
                }
            }
            match self.done_rx.recv_timeout(wait) {
                Ok(()) => remaining -= 1,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    let (ops, bytes) = self.totals();
                    line.show(ops, bytes);
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
        }
        if ramp_end.is_some() {
            // Every submitter finished within the ramp (a quota): nothing was measured.
            RAMPING.store(false, Ordering::Relaxed);
            meas = Measure::restart();
            on_ramp_end();
            crate::soak::begin(meas.start);
        }
        let elapsed = meas.start.elapsed();
        crate::soak::finish(self.totals().0);
        line.clear();
        (elapsed, meas.cpu())
    }
}

/// Whether the live progress line should be shown.
pub fn progress_wanted(quiet: bool) -> bool {
    !quiet && std::io::stderr().is_terminal()
}

struct Progress {
    on: bool,
    start: Instant,
    last: (Instant, u64, u64),
    shown: bool,
}

impl Progress {
    fn new(on: bool, start: Instant) -> Self {
        Progress {
            on,
            start,
            last: (start, 0, 0),
            shown: false,
        }
    }

    fn show(&mut self, ops: u64, bytes: u64) {
        if !self.on {
            return;
        }
        let now = Instant::now();
        let dt = now.duration_since(self.last.0).as_secs_f64();
        if dt < 0.2 {
            return;
        }
        let iops = (ops - self.last.1) as f64 / dt;
        let mbs = (bytes - self.last.2) as f64 / dt / 1e6;
        self.last = (now, ops, bytes);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[K[{:6.1}s] {:>10} IOPS {:>10.1} MB/s  ({} ops)",
            now.duration_since(self.start).as_secs_f64(),
            crate::report::fmt_count(iops),
            mbs,
            ops
        );
        let _ = err.flush();
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.shown {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

/// CPU time of the whole process (every thread, io_uring workers included).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuTimes {
    pub user_s: f64,
    pub sys_s: f64,
}

impl CpuTimes {
    pub fn now() -> Self {
        // SAFETY: getrusage writes only into the struct we pass.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        CpuTimes {
            user_s: s(ru.ru_utime),
            sys_s: s(ru.ru_stime),
        }
    }

    pub fn since(self, start: CpuTimes) -> CpuTimes {
        CpuTimes {
            user_s: self.user_s - start.user_s,
            sys_s: self.sys_s - start.sys_s,
        }
    }

    pub fn total(self) -> f64 {
        self.user_s + self.sys_s
    }
}

/// The measured phase: wall clock and CPU time.
pub struct Measure {
    pub start: Instant,
    cpu: CpuTimes,
}

impl Measure {
    /// Starts the phase (with every other job of the group, when there is one).
    pub fn start() -> Self {
        let group = GROUP.with(|g| g.borrow().clone());
        if let Some((g, job)) = group {
            g.arrive(job);
            g.wait_all();
        }
        Self::restart()
    }

    /// Restarts the clocks (the end of the ramp).
    fn restart() -> Self {
        let cpu = CpuTimes::now();
        Measure {
            start: Instant::now(),
            cpu,
        }
    }

    /// CPU time used since [`start`](Self::start).
    pub fn cpu(&self) -> CpuTimes {
        CpuTimes::now().since(self.cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The only unit test that sets the process-wide ramp (others would see `ramping()`).
    #[test]
    fn ramp_restarts_the_clocks_and_runs_the_hook() {
        set_ramp(Some(Duration::from_millis(200)));
        let c = Control::new(1);
        let t0 = Instant::now();
        let mut hook_at = None;
        let (elapsed, saw_ramp) = std::thread::scope(|s| {
            let sub = s.spawn(|| {
                let mut saw = false;
                while !c.stopped() {
                    saw |= ramping();
                    std::thread::sleep(Duration::from_millis(1));
                }
                c.done();
                saw
            });
            let (elapsed, _) = c.supervise(
                1,
                Measure::restart(),
                Some(Duration::from_millis(100)),
                false,
                &mut || hook_at = Some(t0.elapsed()),
            );
            (elapsed, sub.join().unwrap())
        });
        set_ramp(None);
        let wall = t0.elapsed();
        assert!(saw_ramp, "the submitter saw the ramp");
        assert!(!ramping());
        assert!(
            hook_at.unwrap() >= Duration::from_millis(200),
            "{hook_at:?}"
        );
        assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
        assert!(
            elapsed <= wall - Duration::from_millis(200),
            "{elapsed:?} of {wall:?}"
        );
    }
}
