//! Ring configuration: which setup flags a shard's ring gets, and the fallbacks for kernels that
//! lack them.

use crate::error::{Error, Result};
use io_uring::IoUring;

/// How a shard's io_uring ring is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingConfig {
    /// Submission queue entries (a power of two is used; the CQ gets twice as many).
    pub entries: u32,
    /// Use `SINGLE_ISSUER | DEFER_TASKRUN` where the kernel has them (default true): completions
    /// are processed only when the shard asks, on its own core, with no interrupts of its work.
    pub defer_taskrun: bool,
    /// Kernel-side submission polling (`SQPOLL`) with its thread pinned to this CPU. Off by default:
    /// it burns a whole core per ring, which collapses throughput on machines with few cores.
    pub sqpoll_cpu: Option<u32>,
    /// How long the SQPOLL thread spins before sleeping, in milliseconds.
    pub sqpoll_idle_ms: u32,
    /// Bound on io_uring's worker threads (bounded, unbounded) per ring; buffered writes on ext4
    /// are handed to these. `None` keeps the kernel's default.
    pub iowq_max_workers: Option<[u32; 2]>,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            entries: 256,
            defer_taskrun: true,
            sqpoll_cpu: None,
            sqpoll_idle_ms: 100,
            iowq_max_workers: Some([4, 4]),
        }
    }
}

/// The flags a ring was finally created with.
///
/// Serialized (JSON) and labelled (Prometheus) by [`name`](Self::name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
pub enum RingMode {
    /// `SINGLE_ISSUER | DEFER_TASKRUN`.
    DeferTaskrun,
    /// `SINGLE_ISSUER | COOP_TASKRUN` (kernels 6.0 without DEFER_TASKRUN).
    CoopTaskrun,
    /// No optional flags.
    Plain,
    /// `SQPOLL`.
    Sqpoll,
}

impl RingMode {
    /// Lower-case name, as in JSON and metric labels: `"defer_taskrun"`, `"coop_taskrun"`,
    /// `"plain"`, `"sqpoll"`.
    pub fn name(self) -> &'static str {
        match self {
            RingMode::DeferTaskrun => "defer_taskrun",
            RingMode::CoopTaskrun => "coop_taskrun",
            RingMode::Plain => "plain",
            RingMode::Sqpoll => "sqpoll",
        }
    }

    /// A short name for the stats table: `"defer"`, `"coop"`, `"plain"`, `"sqpoll"`.
    pub fn short_name(self) -> &'static str {
        match self {
            RingMode::DeferTaskrun => "defer",
            RingMode::CoopTaskrun => "coop",
            RingMode::Plain => "plain",
            RingMode::Sqpoll => "sqpoll",
        }
    }

    /// The flags as text, for errors and stats.
    pub fn flags(self) -> &'static str {
        match self {
            RingMode::DeferTaskrun => "SINGLE_ISSUER|DEFER_TASKRUN",
            RingMode::CoopTaskrun => "SINGLE_ISSUER|COOP_TASKRUN",
            RingMode::Plain => "none",
            RingMode::Sqpoll => "SQPOLL",
        }
    }
}

impl RingConfig {
    /// Checks the values without touching the kernel.
    pub fn validate(&self) -> Result<()> {
        if self.entries == 0 || self.entries > 32_768 {
            return Err(Error::InvalidConfig(format!(
                "ring entries {} out of range: use 1 to 32768",
                self.entries
            )));
        }
        Ok(())
    }

    /// Creates a ring on the calling thread. With `defer_taskrun`, tries
    /// `SINGLE_ISSUER|DEFER_TASKRUN`, then `SINGLE_ISSUER|COOP_TASKRUN`, then no flags, keeping the
    /// first the kernel accepts; other errors (EPERM, ENOSYS, ENOMEM) are returned at once with
    /// their diagnosis. (The executor's shards retry ENOMEM with fewer entries, then fall back to
    /// the threads backend.)
    pub fn build(&self) -> Result<(IoUring, RingMode)> {
        self.validate()?;
        let cq = self.entries.saturating_mul(2);
        let forced = forced_mode()?;
        let attempts: &[RingMode] = if self.sqpoll_cpu.is_some() {
            &[RingMode::Sqpoll]
        } else if let Some(mode) = forced.as_ref() {
            std::slice::from_ref(mode)
        } else if self.defer_taskrun {
            &[
                RingMode::DeferTaskrun,
                RingMode::CoopTaskrun,
                RingMode::Plain,
            ]
        } else {
            &[RingMode::Plain]
        };
        let mut last = libc::EINVAL;
        for &mode in attempts {
            let mut b = IoUring::builder();
            b.setup_cqsize(cq).setup_clamp();
            match mode {
                // TASKRUN_FLAG: the kernel flags pending task work in the SQ, so a busy shard
                // knows when an enter with GETEVENTS is needed to post deferred completions.
                RingMode::DeferTaskrun => {
                    b.setup_single_issuer()
                        .setup_defer_taskrun()
                        .setup_taskrun_flag();
                }
                RingMode::CoopTaskrun => {
                    b.setup_single_issuer()
                        .setup_coop_taskrun()
                        .setup_taskrun_flag();
                }
                RingMode::Sqpoll => {
                    b.setup_sqpoll(self.sqpoll_idle_ms);
                    if let Some(cpu) = self.sqpoll_cpu {
                        b.setup_sqpoll_cpu(cpu);
                    }
                }
                RingMode::Plain => {}
            }
            match b.build(self.entries) {
                Ok(ring) => {
                    self.tune(&ring);
                    return Ok((ring, mode));
                }
                Err(e) => {
                    last = e.raw_os_error().unwrap_or(libc::EIO);
                    if last != libc::EINVAL {
                        return Err(Error::RingSetup {
                            entries: self.entries,
                            flags: mode.flags().to_string(),
                            errno: last,
                        });
                    }
                }
            }
        }
        Err(Error::RingSetup {
            entries: self.entries,
            flags: attempts
                .iter()
                .map(|m| m.flags())
                .collect::<Vec<_>>()
                .join(" / "),
            errno: last,
        })
    }

    /// [`build`](Self::build), and where the kernel refuses the ring's memory (ENOMEM: the
    /// rings count against RLIMIT_MEMLOCK for users without CAP_IPC_LOCK, with whatever other
    /// rings and registered buffers the same user holds), again with half the entries, down to
    /// [`MIN_FITTED_ENTRIES`]. Returns the ring, its mode and, if it was made smaller than asked,
    /// a note saying so and why (for `ShardStats::ring_note`). Other errors, and ENOMEM at the
    /// smallest size, are returned.
    pub(crate) fn build_fitted(&self) -> Result<(IoUring, RingMode, Option<String>)> {
        let mut cfg = self.clone();
        loop {
            match cfg.build() {
                Ok((ring, mode)) => {
                    let note = (cfg.entries < self.entries).then(|| {
                        format!(
                            "{} entries, not {}: io_uring_setup refused {} entries with {}; \
                             rings count against RLIMIT_MEMLOCK ({}): raise it with `ulimit -l`",
                            ring.params().sq_entries(),
                            self.entries,
                            self.entries,
                            crate::error::errno_text(libc::ENOMEM),
                            crate::error::memlock_limit()
                                .map_or("unlimited".into(), |l| format!("{} KiB", l / 1024)),
                        )
                    });
                    return Ok((ring, mode, note));
                }
                Err(Error::RingSetup {
                    errno: libc::ENOMEM,
                    ..
                }) if cfg.entries > MIN_FITTED_ENTRIES => {
                    cfg.entries = (cfg.entries / 2).max(MIN_FITTED_ENTRIES);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Best-effort tuning that older kernels may refuse without harm.
    fn tune(&self, ring: &IoUring) {
        if let Some(max) = self.iowq_max_workers {
            let mut m = max;
            // Refusal (kernels before 5.15) only leaves the default worker limits.
            let _ = ring.submitter().register_iowq_max_workers(&mut m);
        }
    }
}

/// The fewest entries [`RingConfig::build_fitted`] tries before it gives up (from 256: 128, 64,
/// 32, 16, 8). With 4 KiB pages a ring takes two pages at least (measured on 6.18: 256 entries
/// 28 KiB, 128 16 KiB, 64 or fewer 8 KiB); a shard works with any of these, only with fewer SQEs per
/// submit.
pub(crate) const MIN_FITTED_ENTRIES: u32 = 8;

/// The environment variable that forces a ring mode (`defer`, `coop` or `plain`), to run a
/// program or test suite as it would run on an older kernel.
pub const RING_MODE_ENV: &str = "RINGSHARD_RING_MODE";

/// The mode `RINGSHARD_RING_MODE` forces, if set.
fn forced_mode() -> Result<Option<RingMode>> {
    match std::env::var(RING_MODE_ENV).ok().as_deref() {
        None | Some("") => Ok(None),
        Some("defer") => Ok(Some(RingMode::DeferTaskrun)),
        Some("coop") => Ok(Some(RingMode::CoopTaskrun)),
        Some("plain") => Ok(Some(RingMode::Plain)),
        Some(other) => Err(Error::InvalidConfig(format!(
            "{RING_MODE_ENV}={other:?}: expected defer, coop or plain"
        ))),
    }
}

/// Keeps io_uring's worker threads for `ring` on `cpu` (where buffered writes are punted on ext4),
/// so they share the shard's core instead of spreading over the machine. Best effort.
pub(crate) fn pin_workers(ring: &IoUring, cpu: usize) {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu < libc::CPU_SETSIZE as usize {
        // SAFETY: cpu < CPU_SETSIZE, so the bit is inside the set.
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // Refusal (kernels before 5.14) only leaves the workers unpinned.
        let _ = ring.submitter().register_iowq_aff(&set);
    }
}

/// Whether this process can create an io_uring ring at all, with the diagnosis when it cannot.
pub fn probe() -> Result<()> {
    RingConfig {
        entries: 2,
        defer_taskrun: false,
        ..RingConfig::default()
    }
    .build()
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ring_uses_defer_taskrun_here() {
        let (ring, mode) = RingConfig::default().build().unwrap();
        assert_eq!(
            mode,
            RingMode::DeferTaskrun,
            "kernel 6.1+ has DEFER_TASKRUN"
        );
        assert!(ring.params().sq_entries() >= 256);
        assert!(ring.params().cq_entries() >= 512);
    }

    #[test]
    fn plain_ring_when_asked() {
        let cfg = RingConfig {
            defer_taskrun: false,
            ..RingConfig::default()
        };
        assert_eq!(cfg.build().unwrap().1, RingMode::Plain);
    }

    #[test]
    fn sqpoll_ring_builds_pinned() {
        let cfg = RingConfig {
            sqpoll_cpu: Some(0),
            entries: 8,
            ..RingConfig::default()
        };
        let (ring, mode) = cfg.build().unwrap();
        assert_eq!(mode, RingMode::Sqpoll);
        assert!(ring.params().is_setup_sqpoll());
    }

    #[test]
    fn bad_entries_are_config_errors() {
        for entries in [0, 40_000] {
            let r = RingConfig {
                entries,
                ..RingConfig::default()
            }
            .build();
            let Err(e) = r else {
                panic!("{entries} entries must be refused")
            };
            assert!(matches!(e, Error::InvalidConfig(_)), "{e}");
        }
    }

    #[test]
    fn probe_succeeds_here() {
        probe().unwrap();
    }
}
