//! Running a measured phase: the start/stop signal, per-submitter progress counters, the live
//! progress line on stderr, and the wall-clock and CPU time (getrusage) of the phase.

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
    ) -> (Duration, CpuTimes) {
        let meas = Measure::start();
        go.wait();
        let elapsed = self.supervise(submitters, meas.start, duration, progress);
        (elapsed, meas.cpu())
    }

    /// Waits until `submitters` have called [`done`](Self::done), telling them to stop after
    /// `duration`, printing progress when `progress`. Returns the time from `start` to the last
    /// `done`.
    pub fn supervise(
        &self,
        submitters: usize,
        start: Instant,
        duration: Option<Duration>,
        progress: bool,
    ) -> Duration {
        let mut line = Progress::new(progress, start);
        let mut remaining = submitters;
        let tick = Duration::from_millis(250);
        crate::soak::begin(start);
        while remaining > 0 {
            let now = Instant::now();
            let mut wait = tick;
            if let Some(next) = crate::soak::tick(self.totals().0) {
                wait = wait.min(next.max(Duration::from_millis(1)));
            }
            if let Some(d) = duration {
                let deadline = start + d;
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
        let elapsed = start.elapsed();
        crate::soak::finish(self.totals().0);
        line.clear();
        elapsed
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
    pub fn start() -> Self {
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
