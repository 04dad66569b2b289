//! What a shard submits its SQEs to: the kernel's ring, or the threads backend where io_uring is
//! blocked. Both take the same SQEs and give one CQE per SQE, so nothing above this module (the
//! shard loop, the operations, the pool) knows which one runs.
//!
//! The backend is chosen once per executor ([`choose`]), before any shard starts:
//! - `RINGSHARD_BACKEND=threads` or [`BackendChoice::Threads`]: the threads backend;
//! - `RINGSHARD_BACKEND=io_uring` or [`BackendChoice::IoUring`]: io_uring, and an error (with the
//!   diagnosis) when it is missing;
//! - otherwise ([`BackendChoice::Auto`]): io_uring when a ring can be made and has the opcodes the
//!   shards need; the threads backend when `kernel.io_uring_disabled` is 2, when `io_uring_setup`
//!   fails with EPERM, ENOSYS, EOPNOTSUPP or EACCES (seccomp filters, gVisor, old kernels) or
//!   ENOMEM (RLIMIT_MEMLOCK used up: a shard's ring is first retried with fewer entries, see
//!   [`fallback_reason`]), or when a required opcode is missing. The reason is kept for stats and
//!   logged once.

pub(crate) mod cachestat;
pub(crate) mod fd_flags;
pub(crate) mod socket_waits;
pub(crate) mod sockopt;
pub(crate) mod sqe;
pub(crate) mod threads;

use crate::error::{errno_text, Error, Result};
use crate::ring::RingConfig;
use io_uring::{opcode, squeue, IoUring};
use std::os::fd::RawFd;
use std::time::Duration;
pub(crate) use threads::ThreadDriver;

/// Which backend runs a shard's operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
pub enum Backend {
    /// The kernel's io_uring.
    IoUring,
    /// Blocking system calls (`preadv2`, `pwritev2`, `fsync`, ...) on the shard thread and a few
    /// worker threads per shard: for machines where io_uring is blocked.
    Threads,
}

impl Backend {
    /// `"io_uring"` or `"threads"`, as in JSON, metric labels and `RINGSHARD_BACKEND`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::IoUring => "io_uring",
            Backend::Threads => "threads",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How [`ExecutorBuilder::backend`](crate::ExecutorBuilder::backend) picks the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// `RINGSHARD_BACKEND` if set, else io_uring where it works and the threads backend where it
    /// is blocked or lacks what the shards need.
    #[default]
    Auto,
    /// io_uring, or an error saying why it cannot be used.
    IoUring,
    /// The threads backend, even where io_uring works.
    Threads,
}

/// The backend an executor runs on, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chosen {
    pub backend: Backend,
    /// Why this backend (always set for the threads backend).
    pub reason: String,
    /// io_uring was required (no fallback to the threads backend).
    pub forced: bool,
}

/// The environment variable that forces a backend.
pub const BACKEND_ENV: &str = "RINGSHARD_BACKEND";

/// Opcodes every shard issues: a kernel without one of them gets the threads backend.
const REQUIRED: &[(u8, &str)] = &[
    (opcode::Read::CODE, "READ"),
    (opcode::Write::CODE, "WRITE"),
    (opcode::ReadFixed::CODE, "READ_FIXED"),
    (opcode::WriteFixed::CODE, "WRITE_FIXED"),
    (opcode::Fsync::CODE, "FSYNC"),
    (opcode::PollAdd::CODE, "POLL_ADD"),
    (opcode::Timeout::CODE, "TIMEOUT"),
    (opcode::TimeoutRemove::CODE, "TIMEOUT_REMOVE"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
];

/// Picks the backend: see the module documentation.
pub(crate) fn choose(choice: BackendChoice, ring: &RingConfig) -> Result<Chosen> {
    let env = std::env::var(BACKEND_ENV).ok();
    let choice = match (choice, env.as_deref()) {
        (BackendChoice::Auto, Some("threads")) => {
            return Ok(Chosen {
                backend: Backend::Threads,
                reason: format!("{BACKEND_ENV}=threads"),
                forced: false,
            })
        }
        (BackendChoice::Auto, Some("io_uring")) => BackendChoice::IoUring,
        (BackendChoice::Auto, Some("auto" | "")) | (BackendChoice::Auto, None) => {
            BackendChoice::Auto
        }
        (BackendChoice::Auto, Some(other)) => {
            return Err(Error::InvalidConfig(format!(
                "{BACKEND_ENV}={other:?}: expected io_uring, threads or auto"
            )))
        }
        (c, _) => c,
    };
    let forced = choice == BackendChoice::IoUring;
    match choice {
        BackendChoice::Threads => Ok(Chosen {
            backend: Backend::Threads,
            reason: "chosen by the builder".into(),
            forced: false,
        }),
        _ => match io_uring_usable(ring) {
            Ok(()) => Ok(Chosen {
                backend: Backend::IoUring,
                reason: if forced {
                    "required".into()
                } else {
                    "available".into()
                },
                forced,
            }),
            Err(Blocked::Error(e)) => Err(e),
            Err(Blocked::Why(why, e)) if forced => Err(e.unwrap_or_else(|| {
                Error::InvalidConfig(format!(
                    "io_uring was required ({BACKEND_ENV}=io_uring or the builder) but {why}"
                ))
            })),
            Err(Blocked::Why(why, _)) => Ok(Chosen {
                backend: Backend::Threads,
                reason: why,
                forced: false,
            }),
        },
    }
}

enum Blocked {
    /// io_uring cannot be used here, for this reason (with the setup error, if that was it).
    Why(String, Option<Error>),
    /// An error that no backend avoids (a bad configuration).
    Error(Error),
}

fn io_uring_usable(cfg: &RingConfig) -> std::result::Result<(), Blocked> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if v.trim() == "2" {
            return Err(Blocked::Why(
                "kernel.io_uring_disabled=2 (io_uring is disabled for every process)".into(),
                None,
            ));
        }
    }
    cfg.validate().map_err(Blocked::Error)?;
    let probe_cfg = RingConfig {
        entries: 2,
        sqpoll_cpu: None,
        ..cfg.clone()
    };
    let ring = match probe_cfg.build() {
        Ok((ring, _)) => ring,
        Err(e) => {
            return Err(match fallback_reason(&e) {
                Some(why) => Blocked::Why(why, Some(e)),
                None => Blocked::Error(e),
            })
        }
    };
    let mut probe = io_uring::Probe::new();
    if ring.submitter().register_probe(&mut probe).is_err() {
        return Err(Blocked::Why(
            "the kernel cannot report its opcodes (IORING_REGISTER_PROBE, before 5.6)".into(),
            None,
        ));
    }
    let missing: Vec<&str> = REQUIRED
        .iter()
        .filter(|(code, _)| !probe.is_supported(*code))
        .map(|(_, name)| *name)
        .collect();
    if !missing.is_empty() {
        return Err(Blocked::Why(
            format!("the kernel's io_uring lacks {}", missing.join(", ")),
            None,
        ));
    }
    Ok(())
}

/// Why the threads backend stands in when making a ring failed with `e`, or `None` when no
/// backend avoids the error (a bad configuration). ENOMEM comes here only once a ring of the
/// fewest entries was refused too (the probe's ring has 2; a shard's ring is first retried
/// smaller, see [`RingConfig::build_fitted`]).
pub(crate) fn fallback_reason(e: &Error) -> Option<String> {
    let Error::RingSetup {
        entries,
        errno,
        ref flags,
    } = *e
    else {
        return None;
    };
    match errno {
        // The plainest ring (no mode flags, only CQSIZE and CLAMP, both in 5.6) was refused
        // last: a kernel too old for ringshard's rings. A forced or SQPOLL mode's EINVAL is the
        // configuration's, and stays an error.
        libc::EINVAL if flags.ends_with(crate::ring::RingMode::Plain.flags()) => Some(format!(
            "io_uring_setup refused even a plain ring with {} (its CQSIZE and CLAMP flags need \
             Linux 5.6 or later): the kernel's io_uring is too old for ringshard's rings",
            errno_text(errno)
        )),
        libc::EPERM | libc::ENOSYS | libc::EOPNOTSUPP | libc::EACCES => Some(format!(
            "io_uring_setup failed with {} (a seccomp filter, a container's default profile, \
             kernel.io_uring_disabled=1 or a kernel without io_uring)",
            errno_text(errno)
        )),
        libc::ENOMEM => Some(format!(
            "io_uring_setup failed with {} even for a ring of {entries} entries: rings and \
             registered buffers count against RLIMIT_MEMLOCK ({}), shared by every process of \
             the user; raise it (`ulimit -l`, LimitMEMLOCK= for systemd, --ulimit memlock=-1 \
             for docker) to use io_uring",
            errno_text(errno),
            crate::error::memlock_limit()
                .map_or("unlimited".to_string(), |l| format!("{} KiB", l / 1024)),
        )),
        _ => None,
    }
}

/// One completion: `user_data`, result, and the CQE's flags (`IORING_CQE_F_MORE`: more CQEs of
/// this multishot SQE follow; `IORING_CQE_F_BUFFER`: a provided buffer's id in the upper 16 bits;
/// `IORING_CQE_F_NOTIF`: a zero-copy send's notification). The threads backend sets none: it runs
/// no multishot, provided-buffer or zero-copy request, so each of its SQEs has one CQE.
pub(crate) type Cqe = (u64, i32, u32);

/// A shard's ring: the kernel's, or the threads backend's.
pub(crate) enum Driver {
    Uring(IoUring),
    Threads(ThreadDriver),
}

impl Driver {
    pub(crate) fn backend(&self) -> Backend {
        match self {
            Driver::Uring(_) => Backend::IoUring,
            Driver::Threads(_) => Backend::Threads,
        }
    }

    /// Which opcodes this driver runs: the kernel's (IORING_REGISTER_PROBE, read once; a kernel
    /// that cannot tell is taken to have them, as before 5.6 every op it has is basic), or the
    /// ones the threads backend knows.
    pub(crate) fn opcode_support(&self) -> Box<dyn Fn(u8) -> bool> {
        match self {
            Driver::Uring(r) => {
                let mut probe = io_uring::Probe::new();
                if r.submitter().register_probe(&mut probe).is_ok() {
                    Box::new(move |code| probe.is_supported(code))
                } else {
                    Box::new(|_| true)
                }
            }
            Driver::Threads(_) => Box::new(|code| sqe::Code::of(code).is_some()),
        }
    }

    /// Queues an SQE; false when the submission queue is full.
    ///
    /// # Safety
    /// Everything `entry` points to stays valid, and is not used by anything else, until its
    /// completion is reaped (as for `io_uring::SubmissionQueue::push`).
    pub(crate) unsafe fn push(&mut self, entry: &squeue::Entry) -> bool {
        match self {
            // SAFETY: the caller's contract is the kernel's.
            Driver::Uring(r) => unsafe { r.submission().push(entry) }.is_ok(),
            Driver::Threads(t) => t.push(entry),
        }
    }

    pub(crate) fn sq_len(&mut self) -> usize {
        match self {
            Driver::Uring(r) => r.submission().len(),
            Driver::Threads(t) => t.sq_len(),
        }
    }

    pub(crate) fn sq_space(&mut self) -> usize {
        match self {
            Driver::Uring(r) => {
                let sq = r.submission();
                sq.capacity() - sq.len()
            }
            Driver::Threads(t) => t.sq_capacity() - t.sq_len(),
        }
    }

    /// Whether the kernel flagged deferred task work (only rings with TASKRUN_FLAG do).
    pub(crate) fn taskrun(&mut self) -> bool {
        match self {
            Driver::Uring(r) => r.submission().taskrun(),
            Driver::Threads(_) => false,
        }
    }

    /// Completions the kernel kept aside because the CQ was full, posted by the next enter with
    /// GETEVENTS.
    pub(crate) fn cq_overflow(&mut self) -> bool {
        match self {
            Driver::Uring(r) => r.submission().cq_overflow(),
            Driver::Threads(_) => false,
        }
    }

    /// Whether completions that find the CQ full are kept aside rather than lost: the kernel's
    /// IORING_FEAT_NODROP (5.5); the threads backend's queue is a vector, which never drops.
    pub(crate) fn cq_nodrop(&self) -> bool {
        match self {
            Driver::Uring(r) => r.params().is_feature_nodrop(),
            Driver::Threads(_) => true,
        }
    }

    /// Whether a socket op that must wait is armed on an internal poll rather than handed to
    /// an io-wq worker that blocks: the kernel's IORING_FEAT_FAST_POLL (5.7); the threads
    /// backend waits in its epoll set.
    pub(crate) fn fast_poll(&self) -> bool {
        match self {
            Driver::Uring(r) => r.params().is_feature_fast_poll(),
            Driver::Threads(_) => true,
        }
    }

    pub(crate) fn cq_entries(&self) -> u32 {
        match self {
            Driver::Uring(r) => r.params().cq_entries(),
            Driver::Threads(t) => t.cq_entries(),
        }
    }

    /// Submits what is queued and waits for `want` completions.
    pub(crate) fn submit_and_wait(&mut self, want: usize) -> std::io::Result<usize> {
        match self {
            Driver::Uring(r) => r.submit_and_wait(want),
            Driver::Threads(t) => {
                let n = t.sq_len();
                t.submit_and_wait(want, None);
                Ok(n)
            }
        }
    }

    /// Submits and waits for `want` completions or `timeout` (an `ETIME` error then).
    pub(crate) fn submit_and_wait_for(
        &mut self,
        want: usize,
        timeout: Duration,
    ) -> std::io::Result<usize> {
        match self {
            Driver::Uring(r) => {
                let ts = io_uring::types::Timespec::from(timeout);
                let args = io_uring::types::SubmitArgs::new().timespec(&ts);
                r.submitter().submit_with_args(want, &args)
            }
            Driver::Threads(t) => {
                let n = t.sq_len();
                if t.submit_and_wait(want, Some(timeout)) {
                    Ok(n)
                } else {
                    Err(std::io::Error::from_raw_os_error(libc::ETIME))
                }
            }
        }
    }

    /// Runs deferred completions without blocking (an enter with GETEVENTS); the enter's error,
    /// if any (EBADR: completions were dropped).
    pub(crate) fn get_events(&mut self) -> std::io::Result<()> {
        if let Driver::Uring(r) = self {
            // SAFETY: a plain io_uring_enter with no submissions and no argument.
            unsafe {
                r.submitter().enter::<libc::sigset_t>(
                    0,
                    0,
                    io_uring::EnterFlags::GETEVENTS.bits(),
                    None,
                )
            }?;
        }
        Ok(())
    }

    /// Appends every ready completion as a [`Cqe`].
    pub(crate) fn completions(&mut self, out: &mut Vec<Cqe>) {
        match self {
            Driver::Uring(r) => out.extend(
                r.completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            ),
            Driver::Threads(t) => t.flagged_completions(out),
        }
    }

    pub(crate) fn register_files_sparse(&mut self, n: u32) -> std::io::Result<()> {
        match self {
            Driver::Uring(r) => r.submitter().register_files_sparse(n),
            Driver::Threads(t) => {
                t.register_files_sparse(n);
                Ok(())
            }
        }
    }

    /// The shard installed `fd` in its file table. On the threads backend its jobs then share
    /// one duplicate of it; io_uring needs nothing (the kernel takes a file reference per
    /// request).
    pub(crate) fn file_opened(&mut self, fd: RawFd) {
        if let Driver::Threads(t) = self {
            t.track_file(fd);
        }
    }

    /// The shard is about to close `fd` (see [`file_opened`](Self::file_opened)).
    pub(crate) fn file_closing(&mut self, fd: RawFd) {
        if let Driver::Threads(t) = self {
            t.untrack_file(fd);
        }
    }

    /// How many timeouts the threads backend keeps (armed, or removed and not yet dropped);
    /// `None` on io_uring. For tests: it must stay bounded by the sleeps armed.
    pub(crate) fn threads_timer_entries(&self) -> Option<usize> {
        match self {
            Driver::Uring(_) => None,
            Driver::Threads(t) => Some(t.timer_entries()),
        }
    }

    /// Registers a provided-buffer ring of `entries` entries at `ring_addr` as group `bgid`
    /// (IORING_REGISTER_PBUF_RING, Linux 5.19); the threads backend has none (EOPNOTSUPP).
    ///
    /// # Safety
    /// The `entries * 16` bytes at `ring_addr` (page-aligned), and every buffer later put in the
    /// ring, stay mapped while the ring is alive and a request may select a buffer from it.
    pub(crate) unsafe fn register_buf_ring(
        &mut self,
        ring_addr: u64,
        entries: u16,
        bgid: u16,
    ) -> std::io::Result<()> {
        match self {
            // SAFETY: the caller's contract is the kernel's.
            Driver::Uring(r) => unsafe {
                r.submitter()
                    .register_buf_ring_with_flags(ring_addr, entries, bgid, 0)
            },
            Driver::Threads(_) => Err(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
        }
    }

    /// Sets registered file slots from `offset` (-1 clears one); false if refused.
    pub(crate) fn register_files_update(&mut self, offset: u32, fds: &[RawFd]) -> bool {
        match self {
            Driver::Uring(r) => r.submitter().register_files_update(offset, fds).is_ok(),
            Driver::Threads(t) => t.register_files_update(offset, fds) >= 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::RingMode;

    fn setup_error(flags: &str, errno: i32) -> Error {
        Error::RingSetup {
            entries: 2,
            flags: flags.to_string(),
            errno,
        }
    }

    /// A kernel older than 5.6 refuses every ring mode with EINVAL, the plain one last: the
    /// threads backend stands in. A forced mode or SQPOLL refused with EINVAL is a configuration
    /// error and stays one.
    #[test]
    fn einval_for_the_plain_ring_falls_back_and_a_forced_mode_does_not() {
        let all = [
            RingMode::DeferTaskrun.flags(),
            RingMode::CoopTaskrun.flags(),
            RingMode::Plain.flags(),
        ]
        .join(" / ");
        let why = fallback_reason(&setup_error(&all, libc::EINVAL)).expect("falls back");
        assert!(why.contains("5.6") && why.contains("EINVAL"), "{why}");
        assert!(fallback_reason(&setup_error(RingMode::Plain.flags(), libc::EINVAL)).is_some());
        for forced in [
            RingMode::Sqpoll,
            RingMode::DeferTaskrun,
            RingMode::CoopTaskrun,
        ] {
            assert_eq!(
                fallback_reason(&setup_error(forced.flags(), libc::EINVAL)),
                None,
                "{forced:?}"
            );
        }
        assert_eq!(fallback_reason(&setup_error(&all, libc::EFAULT)), None);
    }
}
