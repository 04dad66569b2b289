//! The threads backend: the ring's contract (push SQEs, submit, reap one CQE per SQE) kept with
//! plain system calls, for machines where io_uring is blocked.
//!
//! Every operation builds the same SQE on both backends; this module runs it with the system call
//! that does the same thing (`preadv2`, `pwritev2`, `fsync`, `statx`, `renameat2`, ...) and posts
//! the result as the kernel would. So the shard loop, per-file ordering, retries of short
//! transfers, cancellation and statistics are the same code on both backends.
//!
//! Where each SQE runs:
//! - reads of files without O_DIRECT (`READ`, `READV`, `READ_FIXED`) first run on the shard thread
//!   with `RWF_NOWAIT`: a cached page costs one system call and no hand-off; one that would block
//!   goes to a worker;
//! - everything else that may block (writes, O_DIRECT reads, which wait for the device even with
//!   `RWF_NOWAIT`, syncs, opens, metadata and path operations) goes to a worker thread of the shard
//!   (started on demand, one per queued job up to `max_workers`, pinned to the shard's CPU);
//! - timeouts, polls and cancellations are kept on the shard thread (deadlines in order, `ppoll`);
//!   armed polls are looked at when the shard sleeps (the shard's only poll is its wake-up
//!   eventfd, which matters only then);
//! - socket calls (accept, connect, recv, send, shutdown) run on the shard thread without
//!   blocking (`MSG_DONTWAIT`; a listener or connecting socket is made `O_NONBLOCK`); one that
//!   would wait is kept in an epoll set (`socket_waits.rs`) and run again when its socket is
//!   ready, looked at every time completions are collected and when the shard sleeps. So a peer
//!   that never sends (or never reads) holds no thread, a cancellation takes the wait out as it
//!   takes out a poll, and ten thousand idle connections cost a turn nothing.
//!
//! Memory rules are the kernel's: what an SQE points to must stay valid until its CQE is reaped.
//! The shard keeps to them already (it leaks what is in flight when it stops), and a worker
//! touches an SQE's memory only while its CQE is not yet posted. Like the kernel's file reference
//! per request, each job holds a reference to its file, a duplicate descriptor, so a descriptor
//! closed or reused meanwhile never changes what it acts on. The jobs on one of the shard's files
//! share one duplicate (made when the first is queued, closed with the last: the shard says which
//! descriptors are its files, `track_file`), so queued jobs do not use up RLIMIT_NOFILE; a
//! descriptor the shard does not own (a closure's raw SQE) gets a duplicate per job. A CLOSE holds
//! none: it closes the descriptor it names, once. When the driver is dropped, queued jobs are
//! dropped unrun and calls waiting in `poll` are woken to end.
//!
//! Known limit: a read of a pipe, FIFO or socket with nothing to read holds a worker while it
//! waits (cancellable), so `max_workers` such reads leave no worker for other jobs.

use super::socket_waits::{SocketWait, SocketWaits};
use super::sockopt::getsockopt_int;
use super::sqe::{Code, Sqe, FIXED_FILE, FSYNC_DATASYNC, SPLICE_F_FD_IN_FIXED, TIMEOUT_ABS};
use io_uring::squeue;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// One SQE handed to a worker, with its descriptor resolved.
struct Job {
    sqe: Sqe,
    code: Code,
    /// The descriptor the call uses: `held`'s, else the SQE's own.
    fd: RawFd,
    /// A reference to the file (see [`ThreadDriver::hold`]), kept until the call is done: as
    /// the kernel holds a file reference per request, a descriptor the shard closes (or that is
    /// reused for another file) never changes what a queued or running job acts on.
    _held: Option<Arc<OwnedFd>>,
}

impl Job {
    /// A job on `fd`, through `held` when there is one. Without (a negative `fd` such as
    /// AT_FDCWD, or EMFILE), `fd` itself: the shard keeps its files open while their ops are in
    /// flight (a close waits for them), except when the shard itself is torn down.
    fn new(sqe: Sqe, code: Code, fd: RawFd, held: Option<Arc<OwnedFd>>) -> Job {
        Job {
            sqe,
            code,
            fd: held.as_deref().map_or(fd, AsRawFd::as_raw_fd),
            _held: held,
        }
    }
}

/// A duplicate of `fd` (close-on-exec); `None` if it cannot be made (EMFILE, a bad descriptor).
fn dup(fd: RawFd) -> Option<OwnedFd> {
    if fd < 0 {
        return None;
    }
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) takes no memory; the result is checked.
    let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    // SAFETY: a fresh descriptor nobody else owns.
    (d >= 0).then(|| unsafe { OwnedFd::from_raw_fd(d) })
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Workers waiting for a job.
    idle: usize,
    workers: usize,
    stop: bool,
}

/// What a worker is running, so a cancellation can reach a call that waits in `poll`.
struct Running {
    /// The job's user_data; `None` when the worker runs nothing (0 is a valid user_data: the
    /// shard's op slot 0, generation 0).
    user_data: Option<u64>,
    /// The worker's eventfd: written to cancel its current call (-1 until it needs one).
    cancel: RawFd,
    /// A cancellation of the current job arrived (seen by a stream call before it waits).
    cancelled: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// One entry per worker: the job it runs (user_data 0 when none).
    running: Mutex<Vec<Running>>,
    more: Condvar,
    /// Results posted by workers, taken by the shard.
    done: Mutex<Vec<(u64, i32)>>,
    /// Written by a worker that posts a result while the shard sleeps in [`ThreadDriver::wait`].
    done_efd: OwnedFd,
    sleeping: AtomicBool,
}

/// Locks `m`, recovering from a poisoned lock: the queues hold plain data that a panic cannot
/// leave half-updated (every update is a single push or pop).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A ring without the kernel: see the module documentation.
pub(crate) struct ThreadDriver {
    sq: Vec<squeue::Entry>,
    sq_cap: usize,
    cq: VecDeque<(u64, i32)>,
    cq_cap: u32,
    shared: Arc<Shared>,
    /// The registered file table (`IOSQE_FIXED_FILE` indexes it); -1 for a free slot.
    files: Vec<RawFd>,
    /// Armed timeouts, (deadline, arm number) to user_data, earliest first; `timer_live` maps
    /// an armed timeout's user_data to its key there (`None`: a deadline past `Instant`'s range,
    /// which never fires). A timeout removed or cancelled leaves both at once, so they hold
    /// exactly the armed timeouts (a task's sleeps dropped in a loop, or taken out and armed
    /// again around every `submit_to`, do not pile up until their deadlines).
    timers: BTreeMap<(Instant, u64), u64>,
    timer_live: HashMap<u64, Option<(Instant, u64)>>,
    timer_seq: u64,
    /// Armed polls: (fd, events, user_data).
    polls: Vec<(RawFd, i16, u64)>,
    /// Socket calls that would have waited, each run again when its socket is ready.
    sockets: SocketWaits,
    /// The shard's open files by descriptor (`track_file` to `untrack_file`), each with the
    /// duplicate its queued and running jobs share while there are any (see `hold`).
    tracked: HashMap<RawFd, Weak<OwnedFd>>,
    /// O_DIRECT or not, by descriptor (see `is_direct`).
    direct: HashMap<RawFd, bool>,
    cpu: Option<usize>,
    max_workers: usize,
    name: String,
}

impl ThreadDriver {
    /// A driver with room for `entries` queued SQEs, whose workers (at most `max_workers`) run on
    /// `cpu` when given. Fails only if the eventfd cannot be made.
    pub(crate) fn new(
        entries: u32,
        cpu: Option<usize>,
        max_workers: usize,
        name: String,
    ) -> std::io::Result<ThreadDriver> {
        // SAFETY: eventfd takes no pointers; the result is checked before it is owned.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `efd` is a fresh descriptor nobody else owns.
        let done_efd = unsafe { OwnedFd::from_raw_fd(efd) };
        Ok(ThreadDriver {
            sq: Vec::with_capacity(entries as usize),
            sq_cap: entries.max(1) as usize,
            cq: VecDeque::new(),
            cq_cap: entries.saturating_mul(2).max(2),
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                running: Mutex::new(Vec::new()),
                more: Condvar::new(),
                done: Mutex::new(Vec::new()),
                done_efd,
                sleeping: AtomicBool::new(false),
            }),
            files: Vec::new(),
            timers: BTreeMap::new(),
            timer_live: HashMap::new(),
            timer_seq: 0,
            polls: Vec::new(),
            sockets: SocketWaits::default(),
            tracked: HashMap::new(),
            direct: HashMap::new(),
            cpu,
            max_workers: max_workers.max(1),
            name,
        })
    }

    /// Queues an SQE; false when the queue is full (submit, then push again).
    pub(crate) fn push(&mut self, entry: &squeue::Entry) -> bool {
        if self.sq.len() >= self.sq_cap {
            return false;
        }
        self.sq.push(entry.clone());
        true
    }

    pub(crate) fn sq_len(&self) -> usize {
        self.sq.len()
    }

    pub(crate) fn sq_capacity(&self) -> usize {
        self.sq_cap
    }

    pub(crate) fn cq_entries(&self) -> u32 {
        self.cq_cap
    }

    /// A sparse registered file table of `n` slots.
    pub(crate) fn register_files_sparse(&mut self, n: u32) {
        self.files = vec![-1; n as usize];
    }

    /// Sets registered file slots from `offset` (-1 clears one).
    pub(crate) fn register_files_update(&mut self, offset: u32, fds: &[RawFd]) -> i32 {
        let start = offset as usize;
        let Some(slots) = self.files.get_mut(start..start.saturating_add(fds.len())) else {
            return -libc::EINVAL;
        };
        slots.copy_from_slice(fds);
        for fd in fds {
            self.direct.remove(fd);
        }
        fds.len() as i32
    }

    /// `fd` is one of the shard's open files until [`untrack_file`](Self::untrack_file): the jobs
    /// on it share one duplicate.
    pub(crate) fn track_file(&mut self, fd: RawFd) {
        self.tracked.insert(fd, Weak::new());
        self.direct.remove(&fd);
    }

    /// The shard is about to close `fd`. Its queued and running jobs keep the duplicate they
    /// share (closed with the last of them), so the number may be reused at once; a file that
    /// gets it is tracked afresh, and its jobs get a duplicate of their own file.
    pub(crate) fn untrack_file(&mut self, fd: RawFd) {
        self.tracked.remove(&fd);
    }

    /// The reference a new job on `fd` holds: for one of the shard's files, the duplicate its
    /// jobs share (made for the first of them, closed with the last), so a file with hundreds
    /// of queued jobs costs one descriptor, not hundreds; for any other descriptor (a closure's
    /// raw SQE: its owner may close it once the SQE is submitted, as with the kernel), one of
    /// its own. `None` for a negative `fd` (AT_FDCWD) or when no duplicate can be made.
    fn hold(&mut self, fd: RawFd) -> Option<Arc<OwnedFd>> {
        let Some(shared) = self.tracked.get_mut(&fd) else {
            return dup(fd).map(Arc::new);
        };
        if let Some(held) = shared.upgrade() {
            return Some(held);
        }
        let held = Arc::new(dup(fd)?);
        *shared = Arc::downgrade(&held);
        Some(held)
    }

    /// Starts everything queued; returns how many SQEs were taken.
    pub(crate) fn submit(&mut self) -> usize {
        let sq = std::mem::take(&mut self.sq);
        let n = sq.len();
        for entry in &sq {
            self.start(Sqe::of(entry));
        }
        self.sq = sq;
        self.sq.clear();
        n
    }

    /// Submits, then waits until at least `want` completions are ready, or `timeout` passed
    /// (false then, like the kernel's ETIME).
    pub(crate) fn submit_and_wait(&mut self, want: usize, timeout: Option<Duration>) -> bool {
        self.submit();
        let until = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            self.collect();
            if self.cq.len() >= want {
                return true;
            }
            let now = Instant::now();
            if until.is_some_and(|u| now >= u) {
                return false;
            }
            let next_timer = self.timers.first_key_value().map(|(&(at, _), _)| at);
            let wake_at = match (until, next_timer) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            self.sleep(wake_at.map(|w| w.saturating_duration_since(now)));
        }
    }

    /// Moves every ready completion into `out`, with no CQE flags (see [`super::Cqe`]).
    pub(crate) fn flagged_completions(&mut self, out: &mut Vec<super::Cqe>) {
        self.collect();
        out.extend(self.cq.drain(..).map(|(ud, res)| (ud, res, 0)));
    }

    /// Moves every ready completion into `out` as (user_data, result).
    #[cfg(test)]
    pub(crate) fn completions(&mut self, out: &mut Vec<(u64, i32)>) {
        self.collect();
        out.extend(self.cq.drain(..));
    }

    /// Takes the workers' results, runs the socket calls whose sockets are ready and fires due
    /// timeouts.
    fn collect(&mut self) {
        {
            let mut done = lock(&self.shared.done);
            self.cq.extend(done.drain(..));
        }
        self.sockets.run_ready(&mut self.cq);
        if self.timers.is_empty() {
            return;
        }
        let now = Instant::now();
        while let Some(first) = self.timers.first_entry() {
            if first.key().0 > now {
                break;
            }
            let ud = first.remove();
            self.timer_live.remove(&ud);
            self.cq.push_back((ud, -libc::ETIME));
        }
    }

    /// Sleeps until a worker posts a result, an armed poll's descriptor is ready, or `timeout`.
    fn sleep(&mut self, timeout: Option<Duration>) {
        self.shared.sleeping.store(true, Ordering::SeqCst);
        // Checked after announcing the sleep: a worker that posted before it saw no sleeper.
        if !lock(&self.shared.done).is_empty() {
            self.shared.sleeping.store(false, Ordering::SeqCst);
            return;
        }
        let mut fds = Vec::with_capacity(2 + self.polls.len());
        fds.push(libc::pollfd {
            fd: self.shared.done_efd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        fds.extend(self.polls.iter().map(|&(fd, events, _)| libc::pollfd {
            fd,
            events,
            revents: 0,
        }));
        // The socket waits' epoll set is readable when one of their sockets is ready.
        fds.extend(self.sockets.epoll_fd().map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }));
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
        // SAFETY: `fds` is a live array of `fds.len()` pollfds and `ts_ptr` null or a live
        // timespec; ppoll writes only `revents`.
        let n = unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as _, ts_ptr, std::ptr::null()) };
        self.shared.sleeping.store(false, Ordering::SeqCst);
        if n < 0 && crate::numa::last_errno() != libc::EINTR {
            // Not expected (ENOMEM): pause rather than spin; the caller looks again.
            std::thread::sleep(Duration::from_millis(1));
            return;
        }
        if n <= 0 {
            return; // timeout or EINTR: the caller looks again
        }
        if fds[0].revents != 0 {
            let mut v = 0u64;
            // SAFETY: reads 8 bytes into a local; the eventfd is non-blocking.
            let _ = unsafe {
                libc::read(
                    self.shared.done_efd.as_raw_fd(),
                    (&mut v as *mut u64).cast(),
                    8,
                )
            };
        }
        let polls = self.polls.len();
        if fds[1 + polls..].iter().any(|p| p.revents != 0) {
            self.sockets.run_ready(&mut self.cq);
        }
        let ready: Vec<(usize, i16)> = fds[1..1 + polls]
            .iter()
            .enumerate()
            .filter(|(_, p)| p.revents != 0)
            .map(|(i, p)| (i, p.revents))
            .collect();
        for &(i, revents) in ready.iter().rev() {
            let (_, _, ud) = self.polls.swap_remove(i);
            self.cq.push_back((ud, i32::from(revents)));
        }
    }

    /// Starts one SQE: done here when it cannot block, else handed to a worker.
    fn start(&mut self, mut sqe: Sqe) {
        let ud = sqe.user_data;
        let Some(code) = Code::of(sqe.opcode) else {
            self.cq.push_back((ud, -libc::EINVAL));
            return;
        };
        // Links, drains and buffer selection are not used by ringshard; refuse them rather than
        // run them with different semantics. (SPLICE's source shares `file_index`'s word.)
        if sqe.flags & !FIXED_FILE != 0 || (sqe.file_index != 0 && code != Code::Splice) {
            self.cq.push_back((ud, -libc::EINVAL));
            return;
        }
        if code == Code::Splice && sqe.op_flags & SPLICE_F_FD_IN_FIXED != 0 {
            // The source is a registered slot: the plain descriptor, as the kernel would find.
            match self.files.get(sqe.splice_fd_in() as u32 as usize) {
                Some(&fd) if fd >= 0 => {
                    sqe.file_index = fd as u32;
                    sqe.op_flags &= !SPLICE_F_FD_IN_FIXED;
                }
                _ => {
                    self.cq.push_back((ud, -libc::EBADF));
                    return;
                }
            }
        }
        match code {
            Code::Nop => self.cq.push_back((ud, 0)),
            Code::Timeout => self.arm_timeout(sqe),
            Code::TimeoutRemove => {
                let res = if self.remove_timer(sqe.addr) {
                    self.cq.push_back((sqe.addr, -libc::ECANCELED));
                    0
                } else {
                    -libc::ENOENT
                };
                self.cq.push_back((ud, res));
            }
            Code::PollAdd => self.arm_poll(sqe),
            code if code.is_socket() => match self.resolve_fd(&sqe) {
                Ok(fd) => self
                    .sockets
                    .run(SocketWait::new(fd, sqe, code), &mut self.cq),
                Err(errno) => self.cq.push_back((ud, -errno)),
            },
            Code::AsyncCancel => {
                let res = self.cancel(sqe.addr);
                self.cq.push_back((ud, res));
            }
            // As in the kernel: IOSQE_FIXED_FILE does not name a registered slot to close.
            Code::Close if sqe.flags & FIXED_FILE != 0 => self.cq.push_back((ud, -libc::EBADF)),
            Code::Close => {
                // Closes the descriptor named, once, on a worker (a close may flush: NFS, FUSE;
                // the kernel too leaves those to its workers). The job holds no reference of its
                // own: the descriptor is what it closes.
                self.dispatch(Job::new(sqe, code, sqe.fd, None));
            }
            _ => {
                let fd = match self.resolve_fd(&sqe) {
                    Ok(fd) => fd,
                    Err(errno) => {
                        self.cq.push_back((ud, -errno));
                        return;
                    }
                };
                if matches!(code, Code::Read | Code::Readv | Code::ReadFixed) && !self.is_direct(fd)
                {
                    // A cached page is read here; one that would block goes to a worker.
                    let res = run_nowait_read(&sqe, code, fd);
                    let asked_nowait = sqe.op_flags & libc::RWF_NOWAIT as u32 != 0;
                    if asked_nowait || (res != -libc::EAGAIN && res != -libc::EOPNOTSUPP) {
                        self.cq.push_back((ud, res));
                        return;
                    }
                }
                let held = self.hold(fd);
                self.dispatch(Job::new(sqe, code, fd, held));
            }
        }
    }

    /// Whether `fd` was opened with O_DIRECT (remembered per descriptor; forgotten when a
    /// registered slot is set to it): an O_DIRECT read waits for the device even with
    /// RWF_NOWAIT, so it goes to a worker, never inline. A stale answer for a reused number only
    /// costs speed, never correctness.
    fn is_direct(&mut self, fd: RawFd) -> bool {
        if let Some(&d) = self.direct.get(&fd) {
            return d;
        }
        let d = super::fd_flags::fd_flags(fd).is_ok_and(|fl| fl & libc::O_DIRECT != 0);
        if self.direct.len() >= 4096 {
            self.direct.clear();
        }
        self.direct.insert(fd, d);
        d
    }

    fn resolve_fd(&self, sqe: &Sqe) -> Result<RawFd, i32> {
        if sqe.flags & FIXED_FILE == 0 {
            return Ok(sqe.fd);
        }
        match self.files.get(sqe.fd as u32 as usize) {
            Some(&fd) if fd >= 0 => Ok(fd),
            _ => Err(libc::EBADF),
        }
    }

    fn arm_timeout(&mut self, sqe: Sqe) {
        if sqe.addr == 0 {
            self.cq.push_back((sqe.user_data, -libc::EFAULT));
            return;
        }
        // SAFETY: a TIMEOUT's `addr` is a `__kernel_timespec` ({i64, i64}) that its submitter
        // keeps valid until the CQE (the kernel too reads it at submission, as here).
        let (sec, nsec) = unsafe {
            let p = sqe.addr as *const i64;
            (p.read_unaligned(), p.add(1).read_unaligned())
        };
        if sec < 0 || !(0..1_000_000_000).contains(&nsec) {
            self.cq.push_back((sqe.user_data, -libc::EINVAL));
            return;
        }
        let mut left = Duration::new(sec as u64, nsec as u32);
        if sqe.op_flags & TIMEOUT_ABS != 0 {
            let now = monotonic_now();
            left = left.saturating_sub(now);
        }
        self.timer_seq += 1;
        // A deadline past Instant's range never fires, like a timeout of centuries.
        let key = Instant::now()
            .checked_add(left)
            .map(|at| (at, self.timer_seq));
        // The same user_data armed again replaces the earlier timeout, which then never
        // completes (the shard arms each user_data once at a time).
        self.remove_timer(sqe.user_data);
        if let Some(key) = key {
            self.timers.insert(key, sqe.user_data);
        }
        self.timer_live.insert(sqe.user_data, key);
    }

    /// Takes the timeout armed with `user_data` out; false if none is armed.
    fn remove_timer(&mut self, user_data: u64) -> bool {
        match self.timer_live.remove(&user_data) {
            Some(key) => {
                if let Some(key) = key {
                    self.timers.remove(&key);
                }
                true
            }
            None => false,
        }
    }

    fn arm_poll(&mut self, sqe: Sqe) {
        let fd = match self.resolve_fd(&sqe) {
            Ok(fd) => fd,
            Err(errno) => {
                self.cq.push_back((sqe.user_data, -errno));
                return;
            }
        };
        if fd < 0 {
            self.cq.push_back((sqe.user_data, -libc::EBADF));
            return;
        }
        let events = sqe.op_flags as u16 as i16;
        let mut p = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: one live pollfd, no wait.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        if n > 0 {
            self.cq.push_back((sqe.user_data, i32::from(p.revents)));
        } else {
            self.polls.push((fd, events, sqe.user_data));
        }
    }

    /// IORING_OP_ASYNC_CANCEL of `target`: what has not started is cancelled; a system call
    /// already running in a worker cannot be, and completes on its own (as in the kernel for
    /// regular files).
    fn cancel(&mut self, target: u64) -> i32 {
        if self.remove_timer(target) {
            self.cq.push_back((target, -libc::ECANCELED));
            return 0;
        }
        if let Some(i) = self.polls.iter().position(|&(_, _, ud)| ud == target) {
            self.polls.swap_remove(i);
            self.cq.push_back((target, -libc::ECANCELED));
            return 0;
        }
        if self.sockets.cancel(target, &mut self.cq) {
            self.cq.push_back((target, -libc::ECANCELED));
            return 0;
        }
        // Queued and running are looked at under the queue lock: a worker records its job as
        // running before it lets go of that lock, so a job is always in one or the other.
        let mut q = lock(&self.shared.queue);
        if let Some(i) = q.jobs.iter().position(|j| j.sqe.user_data == target) {
            drop(q.jobs.remove(i));
            drop(q);
            self.cq.push_back((target, -libc::ECANCELED));
            return 0;
        }
        // Running: a call waiting in poll (a pipe, FIFO or socket) ends with ECANCELED; a call
        // on a regular file or block device cannot be stopped and completes (as in the kernel).
        let mut running = lock(&self.shared.running);
        drop(q);
        match running.iter_mut().find(|r| r.user_data == Some(target)) {
            Some(r) => {
                r.cancelled = true;
                wake_fd(r.cancel);
                -libc::EALREADY
            }
            None => -libc::ENOENT,
        }
    }

    fn dispatch(&mut self, job: Job) {
        let spawn = {
            let mut q = lock(&self.shared.queue);
            q.jobs.push_back(job);
            // One idle worker per queued job: an idle worker woken for an earlier job does not
            // count for this one (a worker waiting on a pipe must not hold up the write that
            // would feed it).
            let spawn = q.jobs.len() > q.idle && q.workers < self.max_workers;
            if spawn {
                q.workers += 1;
            }
            spawn
        };
        if spawn && !self.spawn_worker() {
            let mut q = lock(&self.shared.queue);
            q.workers -= 1;
            if q.workers == 0 {
                // No worker could be started: run it here rather than never.
                drop(q);
                self.run_queued_here();
                return;
            }
        }
        self.shared.more.notify_one();
    }

    fn spawn_worker(&self) -> bool {
        let shared = Arc::clone(&self.shared);
        let cpu = self.cpu;
        std::thread::Builder::new()
            .name(self.name.clone())
            .stack_size(256 * 1024)
            .spawn(move || {
                if let Some(cpu) = cpu {
                    // Best effort: an unpinned worker still does the job.
                    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                }
                worker(&shared);
            })
            .is_ok()
    }

    fn run_queued_here(&mut self) {
        let jobs: Vec<Job> = lock(&self.shared.queue).jobs.drain(..).collect();
        for job in jobs {
            let res = run_blocking(&job.sqe, job.code, job.fd);
            self.cq.push_back((job.sqe.user_data, res));
        }
    }

    /// How many timeouts are kept (see `Driver::threads_timer_entries`).
    pub(crate) fn timer_entries(&self) -> usize {
        self.timers.len()
    }

    /// Whether nothing is queued, running, armed or waiting to be reaped.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> bool {
        let q = lock(&self.shared.queue);
        q.jobs.is_empty()
            && self.cq.is_empty()
            && lock(&self.shared.done).is_empty()
            && self.timer_live.is_empty()
            && self.timers.is_empty()
            && self.polls.is_empty()
            && self.sockets.is_empty()
    }
}

impl Drop for ThreadDriver {
    fn drop(&mut self) {
        // Queued jobs never run (the shard has leaked their memory, as for the kernel); calls
        // waiting in poll are woken to end; workers finish the call they are in and exit. They
        // are not joined, so a stalled device cannot hang the drop.
        let mut q = lock(&self.shared.queue);
        q.stop = true;
        q.jobs.clear();
        drop(q);
        for r in lock(&self.shared.running).iter_mut() {
            if r.user_data.is_some() {
                r.cancelled = true;
                wake_fd(r.cancel);
            }
        }
        self.shared.more.notify_all();
    }
}

/// Adds 1 to eventfd `fd` (nothing for -1).
fn wake_fd(fd: RawFd) {
    if fd < 0 {
        return;
    }
    let one = 1u64;
    // SAFETY: writes 8 bytes from a local; `fd` is an eventfd kept open while it is recorded
    // (its owner clears the record under the same lock before closing it).
    let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

fn worker(shared: &Shared) {
    let slot = {
        let mut running = lock(&shared.running);
        running.push(Running {
            user_data: None,
            cancel: -1,
            cancelled: false,
        });
        running.len() - 1
    };
    // The worker's eventfd, made at its first pipe/FIFO/socket call (workloads on regular files
    // never need one, and descriptors stay flat as workers start).
    let mut cancel: Option<OwnedFd> = None;
    worker_loop(shared, slot, &mut cancel);
    // The entry stays (its index is the slot) but names nothing, and its descriptor is closed
    // after it is cleared, under the lock: no cancellation writes to a closed descriptor.
    let mut running = lock(&shared.running);
    if let Some(r) = running.get_mut(slot) {
        r.user_data = None;
        r.cancel = -1;
    }
    drop(running);
    drop(cancel);
}

/// The worker's cancellation eventfd, made on first use and recorded in its `running` slot.
fn cancel_fd(shared: &Shared, slot: usize, cancel: &mut Option<OwnedFd>) -> Option<RawFd> {
    if cancel.is_none() {
        // SAFETY: eventfd takes no pointers; the result is checked before it is owned.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return None;
        }
        // SAFETY: a fresh descriptor nobody else owns.
        *cancel = Some(unsafe { OwnedFd::from_raw_fd(efd) });
        if let Some(r) = lock(&shared.running).get_mut(slot) {
            r.cancel = efd;
        }
    }
    cancel.as_ref().map(AsRawFd::as_raw_fd)
}

fn worker_loop(shared: &Shared, slot: usize, cancel: &mut Option<OwnedFd>) {
    loop {
        let job = {
            let mut q = lock(&shared.queue);
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    if let Some(r) = lock(&shared.running).get_mut(slot) {
                        r.user_data = Some(job.sqe.user_data);
                        r.cancelled = false;
                    }
                    break job;
                }
                if q.stop {
                    q.workers -= 1;
                    return;
                }
                q.idle += 1;
                q = shared.more.wait(q).unwrap_or_else(|p| p.into_inner());
                q.idle -= 1;
            }
        };
        let stream = matches!(
            job.code,
            Code::Read | Code::Readv | Code::Write | Code::Writev | Code::Splice
        ) && is_stream(job.fd);
        let efd = if stream {
            cancel_fd(shared, slot, cancel)
        } else {
            None
        };
        let res = match efd {
            Some(_) if cancelled(shared, slot) => -libc::ECANCELED,
            Some(efd) => run_stream(&job.sqe, job.code, job.fd, efd),
            None => run_blocking(&job.sqe, job.code, job.fd),
        };
        done_running(shared, slot, efd);
        let user_data = job.sqe.user_data;
        drop(job); // its reference: the last job on a file closes the duplicate
        lock(&shared.done).push((user_data, res));
        if shared.sleeping.load(Ordering::SeqCst) {
            let one = 1u64;
            // SAFETY: writes 8 bytes from a local to our eventfd.
            let _ =
                unsafe { libc::write(shared.done_efd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }
}

/// Worker `slot` is done with its job: nothing recorded as running, and a cancellation that
/// came for it (its eventfd written) drained, so it cannot end the next call (both under the
/// lock the canceller takes).
fn done_running(shared: &Shared, slot: usize, efd: Option<RawFd>) {
    let mut running = lock(&shared.running);
    if let Some(r) = running.get_mut(slot) {
        r.user_data = None;
        r.cancelled = false;
    }
    if let Some(efd) = efd {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a local from the worker's own non-blocking eventfd.
        let _ = unsafe { libc::read(efd, (&mut v as *mut u64).cast(), 8) };
    }
    drop(running);
}

/// Whether the job worker `slot` runs was cancelled before its call started waiting.
fn cancelled(shared: &Shared, slot: usize) -> bool {
    lock(&shared.running).get(slot).is_some_and(|r| r.cancelled)
}

/// CLOCK_MONOTONIC now, as a duration since its epoch (for IORING_TIMEOUT_ABS).
fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec into a local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// The return of a system call as a CQE result: the value, or -errno.
pub(crate) fn cqe_res(ret: i64) -> i32 {
    if ret < 0 {
        -crate::numa::last_errno()
    } else {
        ret.min(i64::from(i32::MAX)) as i32
    }
}

/// A page-cache read with RWF_NOWAIT added: -EAGAIN when it would block.
fn run_nowait_read(sqe: &Sqe, code: Code, fd: RawFd) -> i32 {
    let flags = sqe.op_flags as i32 | libc::RWF_NOWAIT;
    rw(sqe, code, fd, flags)
}

/// `preadv2`/`pwritev2` for the read and write opcodes, with `flags` as RWF flags.
fn rw(sqe: &Sqe, code: Code, fd: RawFd, flags: i32) -> i32 {
    let one = libc::iovec {
        iov_base: sqe.addr as *mut libc::c_void,
        iov_len: sqe.len as usize,
    };
    let (iov, cnt) = match code {
        Code::Readv | Code::Writev => (sqe.addr as *const libc::iovec, sqe.len as i32),
        _ => (&one as *const libc::iovec, 1),
    };
    // An offset of -1 means the file position, for preadv2 as for the ring.
    let call = |off: i64| {
        // SAFETY: the SQE's submitter keeps its buffer (or iovec array and buffers) valid and
        // unaliased until the CQE, which is posted only after this call returns; `one` is a local.
        let ret = unsafe {
            match code {
                Code::Read | Code::ReadFixed | Code::Readv => {
                    libc::preadv2(fd, iov, cnt, off, flags)
                }
                _ => libc::pwritev2(fd, iov, cnt, off, flags),
            }
        };
        cqe_res(ret as i64)
    };
    match call(sqe.off as i64) {
        // A pipe, FIFO or socket has no offset: the ring ignores it there, and so do we.
        res if res == -libc::ESPIPE && sqe.off != u64::MAX => call(-1),
        res => res,
    }
}

/// Whether `fd` is a pipe, FIFO, socket or character device: a read or write there may wait
/// forever, so a worker waits for it in `poll`, where a cancellation can reach it.
fn is_stream(fd: RawFd) -> bool {
    // SAFETY: fstat writes into a local struct only.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; a bad descriptor fails, and the call that follows reports it.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    matches!(
        st.st_mode & libc::S_IFMT,
        libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR
    )
}

/// Runs a read or write on a stream descriptor: waits in `poll` for it to be ready or for
/// `cancel` (the worker's eventfd) to be written, then does the call.
fn run_stream(sqe: &Sqe, code: Code, fd: RawFd, cancel: RawFd) -> i32 {
    if code == Code::Splice {
        return run_stream_splice(sqe, fd, cancel);
    }
    let events = match code {
        Code::Read | Code::ReadFixed | Code::Readv => libc::POLLIN,
        _ => libc::POLLOUT,
    };
    loop {
        if let Err(res) = wait_ready(fd, events, cancel) {
            return res;
        }
        // Ready (or hung up: the call then returns 0 or EPIPE, as it would in the ring).
        let res = rw(sqe, code, fd, sqe.op_flags as i32 | libc::RWF_NOWAIT);
        if res == -libc::EAGAIN && sqe.op_flags & libc::RWF_NOWAIT as u32 == 0 {
            continue; // another reader took the data first
        }
        if res == -libc::EOPNOTSUPP {
            return rw(sqe, code, fd, sqe.op_flags as i32);
        }
        return res;
    }
}

/// Waits in `poll` until `fd` has `events` or `cancel` (the worker's eventfd) is written:
/// `Err(-ECANCELED)` for a cancellation, `Err(-errno)` if poll fails.
fn wait_ready(fd: RawFd, events: i16, cancel: RawFd) -> Result<(), i32> {
    loop {
        let mut fds = [
            libc::pollfd {
                fd,
                events,
                revents: 0,
            },
            libc::pollfd {
                fd: cancel,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two live pollfds; no timeout.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if crate::numa::last_errno() == libc::EINTR {
                continue;
            }
            return Err(-crate::numa::last_errno());
        }
        if fds[1].revents != 0 {
            return Err(-libc::ECANCELED);
        }
        if fds[0].revents != 0 {
            return Ok(()); // ready, or hung up: the call then says which
        }
    }
}

/// A SPLICE whose destination is a pipe, FIFO or socket, on a worker: waits in `poll` (where a
/// cancellation reaches it) for its source to have data (when the source is a stream) and its
/// destination room, then splices without waiting ([`splice_now`]).
fn run_stream_splice(sqe: &Sqe, fd_out: RawFd, cancel: RawFd) -> i32 {
    let fd_in = sqe.splice_fd_in();
    let in_is_stream = is_stream(fd_in);
    loop {
        if in_is_stream {
            if let Err(res) = wait_ready(fd_in, libc::POLLIN, cancel) {
                return res;
            }
        }
        if let Err(res) = wait_ready(fd_out, libc::POLLOUT, cancel) {
            return res;
        }
        match splice_now(sqe, fd_out) {
            // A file source that would block (the destination has room: polled): its read
            // waits for the device, as a read on a worker does.
            res if res == -libc::EAGAIN && !in_is_stream => {
                return splice_call(sqe, fd_out, sqe.len as usize, sqe.op_flags)
            }
            res if res == -libc::EAGAIN => continue, // someone else took the room or the data
            res => return res,
        }
    }
}

/// `splice(2)` of `sqe` to `fd_out`, as the ring runs it; `SPLICE_F_FD_IN_FIXED` is resolved by
/// the driver before (the blocking path never sees one: its ops name plain descriptors).
fn splice_call(sqe: &Sqe, fd_out: RawFd, len: usize, flags: u32) -> i32 {
    let mut off_in = sqe.splice_off_in().unwrap_or(-1);
    let mut off_out = sqe.off as i64;
    let p_in = if off_in < 0 {
        std::ptr::null_mut()
    } else {
        &mut off_in as *mut i64
    };
    let p_out = if sqe.off == u64::MAX {
        std::ptr::null_mut()
    } else {
        &mut off_out as *mut i64
    };
    // SAFETY: the offsets are locals (or null); splice reads no other memory of ours.
    let ret = unsafe {
        libc::splice(
            sqe.splice_fd_in(),
            p_in,
            fd_out,
            p_out,
            len,
            flags & !SPLICE_F_FD_IN_FIXED,
        )
    };
    cqe_res(ret as i64)
}

/// A SPLICE that does not wait: `SPLICE_F_NONBLOCK` for the pipe side, and, for a socket
/// destination (which SPLICE_F_NONBLOCK does not make non-blocking, and whose O_NONBLOCK is its
/// owner's to set), at most the room its send buffer has ([`socket_room`]): a peer that stops
/// reading makes the next round wait in `poll`, cancellable, instead of holding a worker in
/// the kernel.
fn splice_now(sqe: &Sqe, fd_out: RawFd) -> i32 {
    let len = match socket_room(fd_out) {
        // No room: a splice would block (a worker polls again; the shard thread says EAGAIN).
        Some(0) => return -libc::EAGAIN,
        Some(room) => (sqe.len as usize).min(room),
        None => sqe.len as usize,
    };
    splice_call(sqe, fd_out, len, sqe.op_flags | libc::SPLICE_F_NONBLOCK)
}

/// Whether a splice from `fd` can start without waiting for input. SPLICE_F_NONBLOCK keeps a
/// pipe from waiting, and a Unix socket, but not a TCP socket's splice_read, which waits for
/// data unless its file is O_NONBLOCK: a blocking socket is asked with a poll that does not
/// wait (readable, or at its end or in error: the splice then returns at once). Another reader
/// of the same socket may take the bytes between the two calls: the splice then waits for more,
/// as a blocking receive of a socket two threads read from does.
fn input_now(fd: RawFd) -> bool {
    // SAFETY: fstat writes into a local struct only.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; a bad descriptor fails, and the splice reports it.
    if unsafe { libc::fstat(fd, &mut st) } != 0
        || st.st_mode & libc::S_IFMT != libc::S_IFSOCK
        || super::fd_flags::is_nonblocking(fd)
    {
        return true;
    }
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd, no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n != 0
}

/// For a socket: about how many more bytes its send buffer takes without blocking, half of
/// `SO_SNDBUF` less what is queued (`SIOCOUTQ`), as the kernel also counts each segment's
/// overhead against the buffer. `None`: not a socket (or it cannot say).
pub(crate) fn socket_room(fd: RawFd) -> Option<usize> {
    let sndbuf = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF).ok()?;
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int into a local.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued as *mut libc::c_int) } != 0 {
        queued = 0;
    }
    let room = (sndbuf.max(0) as usize).saturating_sub(queued.max(0) as usize) / 2;
    // TCP_NOTSENT_LOWAT (the socket's, else the sysctl's): tcp_sendmsg waits once the unsent
    // bytes reach it, whatever SO_SNDBUF says.
    let Ok(lowat) = getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT) else {
        // Not TCP: the send buffer alone says.
        return Some(room);
    };
    let lowat = if lowat > 0 {
        lowat as u32 as usize
    } else {
        // The sysctl, read once per process (send_file's inline path asks before every round;
        // a later change of the sysctl is not seen).
        static SYSCTL: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *SYSCTL.get_or_init(|| {
            std::fs::read_to_string("/proc/sys/net/ipv4/tcp_notsent_lowat")
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .unwrap_or(u32::MAX as usize)
        })
    };
    let mut unsent: libc::c_int = 0;
    const SIOCOUTQNSD: libc::c_ulong = 0x894B;
    // SAFETY: SIOCOUTQNSD writes one int into a local.
    if unsafe { libc::ioctl(fd, SIOCOUTQNSD, &mut unsent as *mut libc::c_int) } != 0 {
        unsent = 0;
    }
    Some(room.min(lowat.saturating_sub(unsent.max(0) as usize)))
}

/// Runs `entry` on the calling thread with the system call that does what its opcode does: the
/// result, or -errno, as its CQE would carry it. For ops run blocking on the shard (a kernel
/// without the opcode, or forced): built for a plain descriptor (no registered file), and not a
/// timeout, poll or cancellation, which only a driver can run.
pub(crate) fn run_sqe(entry: &squeue::Entry) -> i32 {
    let sqe = Sqe::of(entry);
    match Code::of(sqe.opcode) {
        Some(Code::Splice) if sqe.flags != 0 || sqe.op_flags & SPLICE_F_FD_IN_FIXED != 0 => {
            -libc::EINVAL
        }
        // On a pipe, FIFO or socket a splice may wait forever: what it can do now, or EAGAIN.
        Some(Code::Splice) if is_stream(sqe.fd) || is_stream(sqe.splice_fd_in()) => {
            if !input_now(sqe.splice_fd_in()) {
                return -libc::EAGAIN;
            }
            splice_now(&sqe, sqe.fd)
        }
        Some(Code::Splice) => run_blocking(&sqe, Code::Splice, sqe.fd),
        _ if sqe.flags != 0 || sqe.file_index != 0 => -libc::EINVAL,
        // On a pipe, FIFO or socket a read or write may wait forever, and this is the shard's
        // thread: it does what it can now (RWF_NOWAIT), or says EAGAIN.
        Some(
            code @ (Code::Read
            | Code::Readv
            | Code::ReadFixed
            | Code::Write
            | Code::Writev
            | Code::WriteFixed),
        ) if is_stream(sqe.fd) => rw(&sqe, code, sqe.fd, sqe.op_flags as i32 | libc::RWF_NOWAIT),
        Some(code) if !code.driver_only() => run_blocking(&sqe, code, sqe.fd),
        Some(_) | None => -libc::EINVAL,
    }
}

/// Runs one SQE with the system call that does what the opcode does.
fn run_blocking(sqe: &Sqe, code: Code, fd: RawFd) -> i32 {
    let addr = sqe.addr as *const libc::c_char;
    // SAFETY (every call below): pointers come from the SQE, whose submitter keeps what they point
    // to (paths, statx buffers, buffers) valid until the CQE, posted after the call returns.
    let ret: i64 = unsafe {
        match code {
            Code::Read
            | Code::ReadFixed
            | Code::Readv
            | Code::Write
            | Code::WriteFixed
            | Code::Writev => return rw(sqe, code, fd, sqe.op_flags as i32),
            Code::Fsync if sqe.op_flags & FSYNC_DATASYNC != 0 => libc::fdatasync(fd) as i64,
            Code::Fsync => libc::fsync(fd) as i64,
            Code::Fallocate => {
                libc::fallocate(fd, sqe.len as i32, sqe.off as i64, sqe.addr as i64) as i64
            }
            Code::SyncFileRange => {
                libc::sync_file_range(fd, sqe.off as i64, i64::from(sqe.len), sqe.op_flags) as i64
            }
            Code::Statx => libc::statx(
                fd,
                addr,
                sqe.op_flags as i32,
                sqe.len,
                sqe.off as *mut libc::statx,
            ) as i64,
            Code::Ftruncate => libc::ftruncate(fd, sqe.off as i64) as i64,
            Code::Unlinkat => libc::unlinkat(fd, addr, sqe.op_flags as i32) as i64,
            Code::Renameat => libc::syscall(
                libc::SYS_renameat2,
                fd,
                addr,
                sqe.len as i32,
                sqe.off as *const libc::c_char,
                sqe.op_flags,
            ),
            Code::Mkdirat => libc::mkdirat(fd, addr, sqe.len as libc::mode_t) as i64,
            // OPENAT: `open_flags` in the flags word, the mode in `len`.
            Code::Openat => {
                libc::openat(fd, addr, sqe.op_flags as i32, sqe.len as libc::c_uint) as i64
            }
            Code::Close => libc::close(fd) as i64,
            // FADVISE: the advice in the flags word; posix_fadvise returns the errno itself.
            Code::Fadvise => {
                let advice = sqe.op_flags as i32;
                let len = i64::from(sqe.len);
                let err = libc::posix_fadvise(fd, sqe.off as i64, len, advice);
                return if err == 0 { 0 } else { -err };
            }
            // LINKAT: the new directory in `len`, the new path in `addr2`, flags in the flags
            // word. SYMLINKAT: the target in `addr`, the link's directory in `fd`, its path in
            // `addr2`.
            Code::Linkat => libc::linkat(
                fd,
                addr,
                sqe.len as i32,
                sqe.off as *const libc::c_char,
                sqe.op_flags as i32,
            ) as i64,
            Code::Symlinkat => libc::symlinkat(addr, fd, sqe.off as *const libc::c_char) as i64,
            // Never waits (this may be the shard thread): what would wait says EAGAIN. The
            // threads backend itself runs these on the shard thread with `socket_call` and
            // waits for readiness there.
            Code::Accept | Code::Connect | Code::Recv | Code::Send | Code::Shutdown => {
                return super::socket_waits::socket_call(sqe, code, fd, false)
                    .unwrap_or(-libc::EAGAIN);
            }
            // SPLICE: the destination in `fd` (at `off`, -1: none), the source in
            // `splice_fd_in` (at `splice_off_in`), flags in the flags word.
            Code::Splice => return splice_call(sqe, fd, sqe.len as usize, sqe.op_flags),
            Code::Nop | Code::Timeout | Code::TimeoutRemove | Code::PollAdd | Code::AsyncCancel => {
                0
            }
        }
    };
    cqe_res(ret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::{opcode, types};
    use std::io::Write;
    use std::os::fd::IntoRawFd;

    fn driver() -> ThreadDriver {
        ThreadDriver::new(64, None, 4, "test-worker".into()).unwrap()
    }

    fn run_one(d: &mut ThreadDriver, e: squeue::Entry) -> (u64, i32) {
        assert!(d.push(&e));
        assert!(d.submit_and_wait(1, Some(Duration::from_secs(10))));
        let mut out = Vec::new();
        d.completions(&mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        out[0]
    }

    /// Submits and reaps until `n` completions came (10 s at most), sorted by user_data.
    fn reap_sorted(d: &mut ThreadDriver, n: usize) -> Vec<(u64, i32)> {
        let mut out = Vec::new();
        let until = Instant::now() + Duration::from_secs(10);
        while out.len() < n && Instant::now() < until {
            d.submit_and_wait(1, Some(Duration::from_millis(100)));
            d.completions(&mut out);
        }
        out.sort();
        out
    }

    #[test]
    fn reads_writes_and_syncs_a_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(b"hello, world")
            .unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let fd = f.as_raw_fd();
        let mut d = driver();
        let mut buf = vec![0u8; 5];
        let e = opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), 5)
            .offset(7)
            .build()
            .user_data(1);
        assert_eq!(run_one(&mut d, e), (1, 5));
        assert_eq!(&buf, b"world");

        let data = b"HELLO";
        d.register_files_sparse(4);
        assert_eq!(d.register_files_update(2, &[fd]), 1);
        let e = opcode::Write::new(types::Fixed(2), data.as_ptr(), 5)
            .build()
            .user_data(2);
        assert_eq!(run_one(&mut d, e), (2, 5));
        let e = opcode::Fsync::new(types::Fixed(2))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(3);
        assert_eq!(run_one(&mut d, e), (3, 0));
        assert_eq!(std::fs::read(&path).unwrap(), b"HELLO, world");

        // An empty fixed slot is EBADF, as in the kernel.
        let e = opcode::Fsync::new(types::Fixed(1)).build().user_data(4);
        assert_eq!(run_one(&mut d, e), (4, -libc::EBADF));
        // A read past the end returns 0.
        let e = opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), 5)
            .offset(100)
            .build()
            .user_data(5);
        assert_eq!(run_one(&mut d, e), (5, 0));
        assert!(d.idle());
    }

    #[test]
    fn timeouts_fire_in_order_and_not_early_and_can_be_removed() {
        let mut d = driver();
        let t1 = types::Timespec::from(Duration::from_millis(30));
        let t2 = types::Timespec::from(Duration::from_millis(10));
        let t3 = types::Timespec::from(Duration::from_secs(60));
        let start = Instant::now();
        for (ts, ud) in [(&t1, 1), (&t2, 2), (&t3, 3)] {
            assert!(d.push(&opcode::Timeout::new(ts).build().user_data(ud)));
        }
        let mut out = Vec::new();
        while out.len() < 2 {
            d.submit_and_wait(1, Some(Duration::from_secs(5)));
            d.completions(&mut out);
        }
        assert_eq!(out, vec![(2, -libc::ETIME), (1, -libc::ETIME)]);
        assert!(start.elapsed() >= Duration::from_millis(30));
        let out = run_two(&mut d, opcode::TimeoutRemove::new(3).build().user_data(9));
        assert_eq!(out, vec![(3, -libc::ECANCELED), (9, 0)]);
        assert!(d.idle());
    }

    /// A removed timeout leaves the store at once (not at its deadline): arming and removing
    /// many keeps it empty.
    #[test]
    fn removed_timeouts_leave_the_store() {
        let mut d = driver();
        let hour = types::Timespec::from(Duration::from_secs(3600));
        for i in 0..1000u64 {
            let out = {
                assert!(d.push(&opcode::Timeout::new(&hour).build().user_data(i)));
                run_two(
                    &mut d,
                    opcode::TimeoutRemove::new(i).build().user_data(1 << 40),
                )
            };
            assert_eq!(out, vec![(i, -libc::ECANCELED), (1 << 40, 0)]);
        }
        assert_eq!(d.timer_entries(), 0);
        // ASYNC_CANCEL takes one out too.
        assert!(d.push(&opcode::Timeout::new(&hour).build().user_data(5)));
        d.submit();
        assert_eq!(d.timer_entries(), 1);
        let out = run_two(&mut d, opcode::AsyncCancel::new(5).build().user_data(6));
        assert_eq!(out, vec![(5, -libc::ECANCELED), (6, 0)]);
        assert_eq!(d.timer_entries(), 0);
        assert!(d.idle());
    }

    /// Pushes `e`, whose submission completes two operations (itself and its target).
    /// A receive with nothing to read waits on the shard thread (no worker), completes when
    /// the peer writes, and a second one is taken out by ASYNC_CANCEL; a send beside a waiting
    /// receive on the same socket completes at once.
    #[test]
    fn socket_calls_wait_for_readiness_and_can_be_cancelled() {
        let mut d = driver();
        let mut fds = [0i32; 2];
        // SAFETY: socketpair writes two descriptors into `fds`.
        assert_eq!(
            unsafe {
                libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                    0,
                    fds.as_mut_ptr(),
                )
            },
            0
        );
        // SAFETY: fresh descriptors, ours alone.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut buf = [0u8; 16];
        let e = opcode::Recv::new(types::Fd(a.as_raw_fd()), buf.as_mut_ptr(), 16)
            .build()
            .user_data(1);
        assert!(d.push(&e));
        assert!(
            !d.submit_and_wait(1, Some(Duration::from_millis(10))),
            "nothing to read"
        );
        assert_eq!(lock(&d.shared.queue).workers, 0, "no worker holds the wait");
        let msg = *b"ping";
        let e = opcode::Send::new(types::Fd(a.as_raw_fd()), msg.as_ptr(), 4)
            .build()
            .user_data(2);
        assert_eq!(run_one(&mut d, e), (2, 4), "the send beside it");
        // SAFETY: 4 bytes from a local.
        assert_eq!(
            unsafe { libc::write(b.as_raw_fd(), msg.as_ptr().cast(), 4) },
            4
        );
        assert!(d.submit_and_wait(1, Some(Duration::from_secs(10))));
        let mut out = Vec::new();
        d.completions(&mut out);
        assert_eq!(out, vec![(1, 4)]);
        assert_eq!(&buf[..4], b"ping");
        let e = opcode::Recv::new(types::Fd(a.as_raw_fd()), buf.as_mut_ptr(), 16)
            .build()
            .user_data(3);
        assert!(d.push(&e));
        d.submit();
        let mut out = run_two(&mut d, opcode::AsyncCancel::new(3).build().user_data(4));
        out.sort_unstable();
        assert_eq!(out, vec![(3, -libc::ECANCELED), (4, 0)]);
        assert!(d.idle());
    }

    fn run_two(d: &mut ThreadDriver, e: squeue::Entry) -> Vec<(u64, i32)> {
        assert!(d.push(&e));
        d.submit_and_wait(2, Some(Duration::from_secs(5)));
        let mut out = Vec::new();
        d.completions(&mut out);
        out
    }

    #[test]
    fn a_poll_on_an_eventfd_completes_when_written_and_wakes_a_sleeper() {
        let mut d = driver();
        // SAFETY: eventfd takes no pointers.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(efd >= 0);
        // SAFETY: fresh descriptor.
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };
        let e = opcode::PollAdd::new(types::Fd(efd.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(7);
        assert!(d.push(&e));
        assert!(!d.submit_and_wait(1, Some(Duration::from_millis(20))));
        let raw = efd.as_raw_fd();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let one = 1u64;
            // SAFETY: 8 bytes from a local.
            unsafe { libc::write(raw, (&one as *const u64).cast(), 8) };
        });
        assert!(d.submit_and_wait(1, Some(Duration::from_secs(10))));
        writer.join().unwrap();
        let mut out = Vec::new();
        d.completions(&mut out);
        assert_eq!(out, vec![(7, i32::from(libc::POLLIN))]);
    }

    /// A read of a pipe and the write that feeds it, submitted together: the read waits in a
    /// worker, and the write gets a worker of its own (one idle worker is not counted for both).
    #[test]
    fn a_pipe_read_and_the_write_feeding_it_both_complete() {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: fresh descriptors nobody else owns.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut d = ThreadDriver::new(64, None, 4, "test-worker".into()).unwrap();
        // Start one worker and let it go idle.
        assert_eq!(
            run_one(
                &mut d,
                opcode::Fsync::new(types::Fd(w.as_raw_fd()))
                    .build()
                    .user_data(9)
            )
            .0,
            9
        );
        let mut buf = vec![0u8; 5];
        let data = b"hello";
        let read = opcode::Read::new(types::Fd(r.as_raw_fd()), buf.as_mut_ptr(), 5)
            .build()
            .user_data(1);
        let write = opcode::Write::new(types::Fd(w.as_raw_fd()), data.as_ptr(), 5)
            .build()
            .user_data(2);
        assert!(d.push(&read) && d.push(&write));
        let out = reap_sorted(&mut d, 2);
        assert_eq!(out, vec![(1, 5), (2, 5)]);
        assert_eq!(&buf, b"hello");
    }

    /// SPLICE: a file into a pipe, then the pipe into a socket nobody reads whose buffer is full:
    /// that splice waits in `poll` on a worker (it does not block in the kernel) and a
    /// cancellation ends it; after the peer reads, the bytes left in the pipe go through.
    #[test]
    fn a_splice_into_a_full_socket_waits_cancellably() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 100_000]).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh descriptors nobody else owns.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut d = driver();
        let fill = opcode::Splice::new(
            types::Fd(f.as_raw_fd()),
            0,
            types::Fd(w.as_raw_fd()),
            -1,
            65536,
        );
        assert_eq!(run_one(&mut d, fill.build().user_data(1)), (1, 65536));
        // Fill the socket without blocking (MSG_DONTWAIT: this call only).
        let junk = [0u8; 4096];
        // SAFETY: reads 4096 bytes from a live local.
        while unsafe {
            libc::send(
                a.as_raw_fd(),
                junk.as_ptr().cast(),
                4096,
                libc::MSG_DONTWAIT,
            )
        } > 0
        {}
        let drain = opcode::Splice::new(
            types::Fd(r.as_raw_fd()),
            -1,
            types::Fd(a.as_raw_fd()),
            -1,
            65536,
        );
        assert!(d.push(&drain.build().user_data(2)));
        // Nobody reads: it cannot complete.
        assert!(!d.submit_and_wait(1, Some(Duration::from_millis(50))));
        let cancel = opcode::AsyncCancel::new(2).build().user_data(3);
        assert!(d.push(&cancel));
        let out = reap_sorted(&mut d, 2);
        assert_eq!(out[0], (2, -libc::ECANCELED), "{out:?}");
        assert!(out[1].0 == 3 && (out[1].1 == -libc::EALREADY || out[1].1 == 0));
        // The peer reads: the pipe's 64 KiB go through (in rounds no larger than the room).
        let reader = std::thread::spawn(move || {
            let mut v = vec![0u8; 1 << 20];
            let mut got = 0;
            // The junk, then the file's 65536 bytes of 7.
            loop {
                let n = std::io::Read::read(&mut b, &mut v).unwrap();
                got += v[..n].iter().filter(|&&x| x == 7).count();
                if got >= 65536 {
                    return got;
                }
            }
        });
        let mut sent = 0;
        while sent < 65536 {
            let drain = opcode::Splice::new(
                types::Fd(r.as_raw_fd()),
                -1,
                types::Fd(a.as_raw_fd()),
                -1,
                65536 - sent,
            );
            let (ud, res) = run_one(&mut d, drain.build().user_data(4));
            assert!(ud == 4 && res > 0, "{res}");
            sent += res as u32;
        }
        assert_eq!(reader.join().unwrap(), 65536);
    }

    /// CLOSE closes the descriptor it names, once; with IOSQE_FIXED_FILE it is EBADF (as in the
    /// kernel), and closes nothing.
    #[test]
    fn close_closes_the_descriptor_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let fd = std::fs::File::create(dir.path().join("c"))
            .unwrap()
            .into_raw_fd();
        let ino = |fd| {
            // SAFETY: fstat writes into a local struct only.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: as above; a closed descriptor fails with EBADF.
            (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
        };
        let id = ino(fd).unwrap();
        let mut d = driver();
        d.register_files_sparse(2);
        assert_eq!(d.register_files_update(0, &[fd]), 1);
        let e = opcode::Close::new(types::Fd(0))
            .build()
            .flags(squeue::Flags::FIXED_FILE)
            .user_data(1);
        assert_eq!(run_one(&mut d, e), (1, -libc::EBADF));
        assert_eq!(ino(fd), Some(id), "a refused close closed the file");
        assert_eq!(d.register_files_update(0, &[-1]), 1);
        let e = opcode::Close::new(types::Fd(fd)).build().user_data(2);
        assert_eq!(run_one(&mut d, e), (2, 0));
        // Closed (the number may be another thread's file by now, never this one).
        assert_ne!(ino(fd), Some(id));
        assert!(d.idle());
    }

    /// How many of this process's descriptors refer to the file at `path` (canonical).
    fn descriptors_of(path: &std::path::Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target == path)
            .count()
    }

    /// Jobs on one of the shard's files share one duplicate of its descriptor, and keep acting
    /// on that file when the shard closes it while they are queued and its number (and its
    /// registered slot) goes to another file. The one worker waits in a pipe read meanwhile.
    #[test]
    fn queued_jobs_share_one_reference_that_outlives_a_close() {
        const JOBS: usize = 16;
        let dir = tempfile::tempdir().unwrap();
        let old_path = dir.path().join("old");
        let fd = std::fs::File::create(&old_path).unwrap().into_raw_fd();
        let old_path = std::fs::canonicalize(&old_path).unwrap();
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh descriptors nobody else owns.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut d = ThreadDriver::new(64, None, 1, "test-worker".into()).unwrap();
        d.register_files_sparse(1);
        assert_eq!(d.register_files_update(0, &[fd]), 1);
        d.track_file(fd);
        let mut byte = [0u8; 1];
        let read = opcode::Read::new(types::Fd(r.as_raw_fd()), byte.as_mut_ptr(), 1)
            .build()
            .user_data(100);
        assert!(d.push(&read));
        let data: Vec<u8> = (0..JOBS * 512).map(|i| (i / 512) as u8 + 1).collect();
        for (i, block) in data.chunks(512).enumerate() {
            let e = opcode::Write::new(types::Fixed(0), block.as_ptr(), 512)
                .offset((i * 512) as u64)
                .build()
                .user_data(i as u64);
            assert!(d.push(&e));
        }
        d.submit();
        assert_eq!(
            descriptors_of(&old_path),
            2,
            "the file's own descriptor and one its {JOBS} queued jobs share"
        );
        // The shard closes the file with its jobs queued; its slot (and likely its number) goes
        // to another file.
        assert_eq!(d.register_files_update(0, &[-1]), 1);
        d.untrack_file(fd);
        // SAFETY: the test owns `fd` (taken from the File above) and closes it once.
        assert_eq!(unsafe { libc::close(fd) }, 0);
        let new = std::fs::File::create(dir.path().join("new")).unwrap();
        assert_eq!(d.register_files_update(0, &[new.as_raw_fd()]), 1);
        d.track_file(new.as_raw_fd());
        assert_eq!(descriptors_of(&old_path), 1, "the jobs' shared duplicate");
        // SAFETY: one byte from a static to the pipe's write end.
        let wrote = unsafe { libc::write(w.as_raw_fd(), b"!".as_ptr().cast(), 1) };
        assert_eq!(wrote, 1);
        let mut out = Vec::new();
        let until = Instant::now() + Duration::from_secs(30);
        while out.len() < JOBS + 1 && Instant::now() < until {
            d.submit_and_wait(1, Some(Duration::from_millis(100)));
            d.completions(&mut out);
        }
        out.sort();
        let mut want: Vec<(u64, i32)> = (0..JOBS as u64).map(|i| (i, 512)).collect();
        want.push((100, 1));
        assert_eq!(out, want);
        assert_eq!(std::fs::read(&old_path).unwrap(), data);
        assert_eq!(
            new.metadata().unwrap().len(),
            0,
            "a queued job wrote to the new file"
        );
        assert_eq!(
            descriptors_of(&old_path),
            0,
            "the last job closed the duplicate"
        );
        assert!(d.idle());
    }

    #[test]
    fn unknown_opcodes_and_links_are_refused() {
        let mut d = driver();
        let e = opcode::Nop::new()
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(1);
        assert_eq!(run_one(&mut d, e), (1, -libc::EINVAL));
        let e = opcode::Nop::new().build().user_data(2);
        assert_eq!(run_one(&mut d, e), (2, 0));
    }

    #[test]
    fn path_operations_and_statx_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = driver();
        let a =
            std::ffi::CString::new(dir.path().join("a").as_os_str().as_encoded_bytes()).unwrap();
        let b =
            std::ffi::CString::new(dir.path().join("b").as_os_str().as_encoded_bytes()).unwrap();
        let e = opcode::MkDirAt::new(types::Fd(libc::AT_FDCWD), a.as_ptr())
            .mode(0o755)
            .build()
            .user_data(1);
        assert_eq!(run_one(&mut d, e), (1, 0));
        let e = opcode::MkDirAt::new(types::Fd(libc::AT_FDCWD), a.as_ptr())
            .build()
            .user_data(2);
        assert_eq!(run_one(&mut d, e), (2, -libc::EEXIST));
        let e = opcode::RenameAt::new(
            types::Fd(libc::AT_FDCWD),
            a.as_ptr(),
            types::Fd(libc::AT_FDCWD),
            b.as_ptr(),
        )
        .build()
        .user_data(3);
        assert_eq!(run_one(&mut d, e), (3, 0));
        // SAFETY: statx is plain data.
        let mut st: libc::statx = unsafe { std::mem::zeroed() };
        let e = opcode::Statx::new(
            types::Fd(libc::AT_FDCWD),
            b.as_ptr(),
            (&mut st as *mut libc::statx).cast(),
        )
        .mask(libc::STATX_BASIC_STATS)
        .build()
        .user_data(4);
        assert_eq!(run_one(&mut d, e), (4, 0));
        assert_eq!(u32::from(st.stx_mode) & libc::S_IFMT, libc::S_IFDIR);
        let e = opcode::UnlinkAt::new(types::Fd(libc::AT_FDCWD), b.as_ptr())
            .flags(libc::AT_REMOVEDIR)
            .build()
            .user_data(5);
        assert_eq!(run_one(&mut d, e), (5, 0));
        assert!(!dir.path().join("b").exists());
    }

    #[test]
    fn openat_opens_with_its_flags_and_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut d = driver();
        let path = dir.path().join("new");
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
        let e = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), c.as_ptr())
            .flags(flags)
            .mode(0o600)
            .build()
            .user_data(1);
        let (ud, fd) = run_one(&mut d, e);
        assert_eq!(ud, 1);
        assert!(fd >= 0, "openat: {fd}");
        // SAFETY: the descriptor the CQE carries is new and ours.
        let f = unsafe { std::fs::File::from_raw_fd(fd) };
        // SAFETY: F_GETFD reads the descriptor's flags; no memory is passed.
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_GETFD) }, libc::FD_CLOEXEC);
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        // O_EXCL on an existing file: the errno, as the kernel's CQE carries it.
        let e = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), c.as_ptr())
            .flags(flags)
            .build()
            .user_data(2);
        assert_eq!(run_one(&mut d, e), (2, -libc::EEXIST));
        // The same SQE through `run_sqe` (the blocking path).
        let e = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), c.as_ptr())
            .flags(libc::O_RDONLY | libc::O_CLOEXEC)
            .build();
        let fd = run_sqe(&e);
        assert!(fd >= 0, "openat: {fd}");
        // SAFETY: as above.
        drop(unsafe { std::fs::File::from_raw_fd(fd) });
    }

    #[test]
    fn cancel_finds_timers_and_reports_what_it_cannot_cancel() {
        let mut d = driver();
        let ts = types::Timespec::from(Duration::from_secs(60));
        assert!(d.push(&opcode::Timeout::new(&ts).build().user_data(1)));
        d.submit();
        let out = run_two(&mut d, opcode::AsyncCancel::new(1).build().user_data(2));
        assert_eq!(out, vec![(1, -libc::ECANCELED), (2, 0)]);
        // Nothing by that user_data: ENOENT, as in the kernel.
        let e = opcode::AsyncCancel::new(77).build().user_data(3);
        assert_eq!(run_one(&mut d, e), (3, -libc::ENOENT));
    }
    /// A running job whose user_data is 0 (the shard's op slot 0, generation 0) is cancelled
    /// like any other, and no idle worker takes the cancellation instead (0 once meant "idle").
    /// The sleeps only let workers take their jobs; the outcome does not depend on them (a
    /// cancelled job that was still queued ends with ECANCELED too).
    #[test]
    fn a_running_job_with_user_data_zero_is_cancelled() {
        let pipe = || {
            let mut fds = [0i32; 2];
            // SAFETY: pipe2 writes two descriptors into the array.
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            // SAFETY: fresh descriptors nobody else owns.
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
        };
        let mut misses = 0;
        for _ in 0..20 {
            let mut d = driver();
            let (r0, w0) = pipe();
            let (r7, w7) = pipe();
            let mut b0 = [0u8; 8];
            let mut b7 = [0u8; 8];
            let e0 = opcode::Read::new(types::Fd(r0.as_raw_fd()), b0.as_mut_ptr(), 8)
                .build()
                .user_data(0);
            let e7 = opcode::Read::new(types::Fd(r7.as_raw_fd()), b7.as_mut_ptr(), 8)
                .build()
                .user_data(7);
            assert!(d.push(&e7));
            assert!(d.push(&e0));
            d.submit();
            std::thread::sleep(Duration::from_millis(20));
            // SAFETY: one byte from a static.
            assert_eq!(
                unsafe { libc::write(w7.as_raw_fd(), b"x".as_ptr().cast(), 1) },
                1
            );
            assert!(d.submit_and_wait(1, Some(Duration::from_secs(5))));
            let mut out = Vec::new();
            d.completions(&mut out);
            assert_eq!(out, vec![(7, 1)]);
            std::thread::sleep(Duration::from_millis(20));
            let c = opcode::AsyncCancel::new(0).build().user_data(99);
            assert!(d.push(&c));
            d.submit_and_wait(2, Some(Duration::from_millis(500)));
            let mut out = Vec::new();
            d.completions(&mut out);
            if !out.contains(&(0, -libc::ECANCELED)) {
                misses += 1;
                // Let the read end, so the driver can go.
                // SAFETY: one byte from a static.
                unsafe { libc::write(w0.as_raw_fd(), b"x".as_ptr().cast(), 1) };
            }
        }
        assert_eq!(misses, 0, "cancellations of user_data 0 that missed");
    }
}
