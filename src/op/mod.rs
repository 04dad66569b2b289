//! Operations: one file per kind, all behind one small trait, [`FileOp`].
//!
//! The shard loop (`shard/runner.rs`) knows no operation here by name: it admits an op in the
//! per-file order with the op's [`footprint`](FileOp::footprint), asks it for an SQE
//! ([`sqe`](FileOp::sqe)) or, when the kernel lacks the opcode (probed once per shard) or the
//! kind is forced to the blocking path, runs it with a plain system call
//! ([`run_blocking`](FileOp::run_blocking)); it hands each result to
//! [`on_result`](FileOp::on_result) (which may ask for another round: short transfers), and
//! at the end calls [`complete`](FileOp::complete) with the result and delivers the
//! [`Outcome`] it returns. The op is boxed and lives in
//! the shard's op table until its last CQE has arrived, so every piece of memory its SQE names
//! (path strings, a statx buffer, iovec arrays, data) stays put whatever the caller does (drop,
//! cancel, timeout, shutdown); a shard that stops with the op still in the kernel leaks the box.
//!
//! Reads and writes are not here: they stay unboxed fast paths in the runner (chunking over pool
//! buffers, three data paths), and `close` stays special (it edits the file table).
//!
//! # How to add an operation
//!
//! 1. One line in the `op_kinds!` list in `op/kind.rs`: the variant, its name and its driver
//!    `Code` (the opcode it needs and how the blocking path runs it), or `None` for an op with no
//!    SQE of its own (`size`, `copy_range`: it overrides [`run_blocking`](FileOp::run_blocking)).
//!    An opcode ringshard did not use yet also needs its line in the `codes!` list and in
//!    `Code::driver_only` (`driver/sqe.rs`) and the system call that does the same in
//!    `run_blocking` (`driver/threads.rs`, reading the SQE's fields by the kernel's layout,
//!    `Sqe`): none of these build until all are there, so no op can fail with EINVAL on the
//!    threads backend for want of them.
//! 2. Write `src/op/<name>.rs` (and its `mod` line here): a struct that owns everything the
//!    kernel will read or write (strings, buffers), and an `impl FileOp` with `kind` and `sqe`
//!    (`run_blocking` runs that same SQE as a system call) and, as needed, `footprint` (default:
//!    a barrier on its file), `on_result` (short transfers: return [`Step::Again`]), `error`,
//!    `size_at_admit`/`size_after`/`sets_size` (the file's known size, which orders reads near
//!    the end of the file), `value` and `complete`: an op whose result is a plain value (a size;
//!    nothing) returns it in [`Outcome::Value`] and the shard delivers it through the request's
//!    reply; one with a result type of its own keeps its `Completer`, completes it in `complete`
//!    and returns [`Outcome::Delivered`] (it is sent with `Reply::InOp`). Nothing here imports
//!    the shard, sessions or the executor.
//! 3. Add a validated constructor in `validate.rs` and one function that sends it (an
//!    `ExecShared` method or a helper in `file_ops.rs`), which the public faces call: the
//!    `Executor` method (through `Deadlined`) and, for an op on an open file, the `File` method.
//!
//! An op that needs a second file (copy_file_range, FICLONERANGE) gets that file's
//! descriptor from the file's own shard: see `copy_range.rs` (a duplicate handed over, waited
//! for with a POLL_ADD, so neither shard blocks). One whose second descriptor is the caller's
//! (send_file's socket) owns a duplicate made at request time: see `send_file.rs`.
//!
//! An op that moves file data through memory of its own may ask for registered pool buffers
//! instead ([`fixed_wanted`](FileOp::fixed_wanted), [`use_fixed`](FileOp::use_fixed): READ_FIXED,
//! a SEND_ZC from a fixed buffer), lent for its life and taken back when it leaves the op table,
//! and may run a second SQE in the same round ([`sqe_beside`](FileOp::sqe_beside): the next READ
//! while the current send is in the kernel): see `send_file_direct.rs`.
//!
//! An op whose round may wait forever (a socket that stops taking bytes) says so with
//! [`cancel_in_flight`](FileOp::cancel_in_flight): a deadline or a dropped handle then cancels
//! its round in the kernel, as a read's.
//!
//! Operations on paths rather than open files (unlink, mkdir, rename, stat, open) return a
//! [`PathTarget`] from [`path_target`](FileOp::path_target): they are ordered per parent
//! directory instead of per file (an open gets an order key of its own: it waits for nothing).
//!
//! Both backends run every op unchanged: the threads backend (`driver/threads.rs`) runs the SQE
//! an op builds with the system call that does the same, and so does
//! [`run_blocking`](FileOp::run_blocking), through the same function: one place knows how each
//! opcode maps to a system call.

pub(crate) mod accept;
pub(crate) mod append;
pub(crate) mod connect;
pub(crate) mod copy_range;
pub(crate) mod dup_fd;
pub(crate) mod fadvise;
pub(crate) mod fallocate;
pub(crate) mod kind;
pub(crate) mod link_file;
pub(crate) mod open;
pub(crate) mod path;
pub(crate) mod read;
pub(crate) mod read_dir;
pub(crate) mod recv;
pub(crate) mod recv_file;
pub(crate) mod recv_pooled;
pub(crate) mod recv_stream;
pub(crate) mod rw;
pub(crate) mod send;
pub(crate) mod send_file;
pub(crate) mod send_file_direct;
pub(crate) mod shutdown;
pub(crate) mod size;
pub(crate) mod sockaddr;
pub(crate) mod statx;
pub(crate) mod sync;
pub(crate) mod sync_range;
pub(crate) mod truncate;
pub(crate) mod vectored;
pub(crate) mod write;

use crate::error::{Error, Result};
use crate::pool::Target;
use crate::router::FileKey;
use io_uring::{squeue, types};
pub(crate) use kind::OpKind;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;

/// A registered pool buffer the shard lends an op for the op's life
/// ([`FileOp::fixed_wanted`], [`FileOp::use_fixed`]): the op reads and writes it through `ptr`
/// and names it by `index` in READ_FIXED and in a SEND_ZC with `IORING_RECVSEND_FIXED_BUF`.
/// The shard takes it back only once the op has left the op table (its last CQE, a SEND_ZC's
/// notification included, has come), and never if the op is abandoned in the kernel (the pool
/// then keeps its slab mapped for the rest of the process).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FixedBuf {
    /// The buffer's index in the registered pool.
    pub index: u16,
    /// Its first byte (page-aligned: the pool's stride is whole pages).
    pub ptr: std::ptr::NonNull<u8>,
    /// Its usable bytes.
    pub len: usize,
}

// SAFETY: a pointer into the shard's pool slab, used only by the op that holds it, on the shard
// thread (an op gets it after it reached its shard); the slab outlives every op that holds one
// (see `FixedBuf`).
unsafe impl Send for FixedBuf {}

/// The descriptor an op's SQE or system call names.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpFd {
    /// For SQEs: the registered slot, or the plain descriptor.
    pub target: Target,
    /// The plain descriptor (for opcodes that take no registered file, like STATX's dirfd).
    pub raw: RawFd,
}

/// What an op does after a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// It is done: complete it.
    Done,
    /// Issue it again (the rest of a short transfer).
    Again,
}

impl Step {
    /// [`Step::Again`] if `go_on`, else [`Step::Done`].
    pub(crate) fn again_if(go_on: bool) -> Step {
        if go_on {
            Step::Again
        } else {
            Step::Done
        }
    }
}

/// How an op ended, from [`FileOp::complete`]: what the shard delivers.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The result for the request's reply (a completion or a session's batch), delivered by the
    /// shard: the op's [`value`](FileOp::value), or the error. Counts no bytes in statistics.
    Value(Result<u64>),
    /// The op completed its own `Completer` (its request's reply is `Reply::InOp`): nothing is
    /// left to deliver. `bytes` moved, for statistics.
    Delivered {
        /// Bytes moved.
        bytes: u64,
    },
}

/// The directory an operation on a path is ordered in, and the path for errors.
#[derive(Debug, Clone)]
pub(crate) struct PathTarget {
    /// The identity of the parent directory (the shard's order list for it).
    pub key: FileKey,
    /// The path, for errors.
    pub path: Arc<Path>,
}

/// What an operation touches, for the shard's per-file order (`shard/order.rs` says what
/// waits for what).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Footprint {
    /// Reads bytes `start..end`.
    Read { start: u64, end: u64 },
    /// Writes bytes `start..end`.
    Write { start: u64, end: u64 },
    /// fsync / fdatasync: must follow earlier writes.
    Sync,
    /// fallocate, size: ordered against everything.
    Barrier,
    /// close: after every earlier operation of the file (its own descriptor's among them), and
    /// holding back none after it. Later operations use other descriptors of the inode (nothing
    /// uses a closed handle), so they need not wait for it: a handle closed while one of its
    /// operations waits for a peer (a send_file to a client that stopped reading) must not stall
    /// every other handle of the same file behind the close.
    Close,
    /// A socket's receive: in order among its receives, beside its sends.
    Recv,
    /// A socket's send: in order among its sends, beside its receives.
    Send,
    /// A socket operation that waits for none of the socket's others (accept; shutdown of the
    /// receiving side, which ends a receive that waits).
    Unordered,
}

impl Footprint {
    pub(crate) fn read(offset: u64, len: u64) -> Self {
        Footprint::Read {
            start: offset,
            end: offset.saturating_add(len),
        }
    }

    /// A read from `offset` that may reach the end of the file: ordered against every write that
    /// ends above `offset`.
    pub(crate) fn read_to_end(offset: u64) -> Self {
        Footprint::Read {
            start: offset,
            end: u64::MAX,
        }
    }

    pub(crate) fn write(offset: u64, len: u64) -> Self {
        Footprint::Write {
            start: offset,
            end: offset.saturating_add(len),
        }
    }
}

/// One operation: an SQE (or one blocking system call), results, one completion.
///
/// The op table owns the op until its last CQE has arrived (see the module docs for how to add
/// one). Methods are called on the shard thread, in this order: `footprint` and `size_at_admit`
/// when admitted; then, once per round, `sqe` (or `run_blocking`), `on_more` for each CQE of a
/// multishot round but its last, and `on_result` with its (last) non-negative result (a
/// negative one is the op's errno: EINTR repeats the round, anything else fails the op); finally `size_after` (on success) and `complete`.
pub(crate) trait FileOp: Send {
    /// The kind, for statistics, probing and errors.
    fn kind(&self) -> OpKind;

    /// The per-file ordering class, given the size the file is known to have at least (default:
    /// a barrier, ordered against every op on the file).
    fn footprint(&self, known_size: u64) -> Footprint {
        let _ = known_size;
        Footprint::Barrier
    }

    /// For operations on a path: the directory they are ordered in. `None`: an open file's op.
    fn path_target(&self) -> Option<PathTarget> {
        None
    }

    /// The SQE of the next round; `None`: run [`run_blocking`](Self::run_blocking) instead. Memory
    /// the SQE points to must be owned by `self` (heap memory that does not move when the op
    /// does) and left untouched until the round's result arrives.
    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry>;

    /// A second SQE for the round [`sqe`](Self::sqe) just built, run beside it; `None` (the
    /// default): none. Both are in the kernel at once (with `outstanding` 2), the round ends
    /// only once both have their last CQE (the first one's result waits for the other), and
    /// this one's result goes to [`on_beside`](Self::on_beside): it neither repeats nor fails
    /// the round. send_file of an O_DIRECT file reads its next round here while the current
    /// one is sent. Not asked on the blocking path.
    fn sqe_beside(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        let _ = fd;
        None
    }

    /// The result (or `-errno`) of the round's [`sqe_beside`](Self::sqe_beside) SQE, before the
    /// round ends; `-EAGAIN` when it could not be pushed (a full submission queue).
    fn on_beside(&mut self, res: i32) {
        let _ = res;
    }

    /// The same round as a plain system call on the calling thread: its result, or `-errno`, as
    /// a CQE would carry it. Used where the kernel lacks the opcode, when the kind is forced to the
    /// blocking path, and by a backend without io_uring.
    fn run_blocking(&mut self, fd: RawFd) -> i32 {
        run_own_sqe(self, fd)
    }

    /// Every CQE that ends a round, before anything else looks at it (even one the shard repeats
    /// or a parked op's ECANCELED): `res` and `flags` as the kernel gave them. An op whose SQE
    /// selects a provided buffer takes back here a buffer named (`IORING_CQE_F_BUFFER`) by a
    /// CQE that carries no bytes: the kernel commits a buffer when it selects it on some paths
    /// (io-wq), and then names it in an end-of-stream or error CQE as well.
    fn on_cqe(&mut self, res: i32, flags: u32) {
        let _ = (res, flags);
    }

    /// A round ended with `errno` (not EINTR, which repeats the round): `Some(Step::Again)` to
    /// issue another round instead of failing (send_file waits for room on a non-blocking
    /// destination after EAGAIN); `None` (the default): the op fails with `errno`.
    fn on_errno(&mut self, errno: i32) -> Option<Step> {
        let _ = errno;
        None
    }

    /// A round's non-negative result and its CQE's flags (`IORING_CQE_F_BUFFER` with the
    /// provided buffer's id, ...; 0 from a blocking call or the threads backend); `fd` is the op's
    /// plain descriptor. For a multishot round this is its last CQE (the one without
    /// `IORING_CQE_F_MORE`): [`Step::Again`] arms a new round.
    fn on_result(&mut self, res: i32, flags: u32, fd: RawFd) -> Step {
        let _ = (res, flags, fd);
        Step::Done
    }

    /// A CQE of a multishot round that is not its last (it has `IORING_CQE_F_MORE`): `res` is
    /// its result (for a multishot round a non-negative one: the kernel ends it at its first
    /// error, with a CQE without the flag; a SEND_ZC's first CQE, its result, may be an error,
    /// and its notification, with `IORING_CQE_F_NOTIF`, is the last), `flags` its flags. The round stays in the kernel, and the op
    /// in the op table, counted in flight, until the last CQE comes; everything the SQE names
    /// stays put until then. [`Step::Again`]: keep the round armed; [`Step::Done`]: stop it (the
    /// shard cancels it with ASYNC_CANCEL; CQEs already on their way still come here, and the
    /// last one, `-ECANCELED` or a result, ends the op as a cancelled op's does). Only an op
    /// whose SQE asks for a multishot round or a SEND_ZC gets this; the threads backend runs none (it runs
    /// each SQE once: its CQE is the last).
    fn on_more(&mut self, res: i32, flags: u32, fd: RawFd) -> Step {
        let _ = (res, flags, fd);
        Step::Again
    }

    /// Registered pool buffers the op can use instead of memory of its own: how many, and the
    /// fewest bytes each must hold; `(0, _)` (the default): none. Asked once, before the op's
    /// first round, on a ring with a registered pool (never on the threads backend or the
    /// blocking path).
    fn fixed_wanted(&self) -> (usize, usize) {
        (0, 0)
    }

    /// The pool buffers lent for the op's life, before its first round: as many as it wanted
    /// or fewer (none free, or the shard keeps the rest of its pool for O_DIRECT reads and
    /// writes); not called when none was lent. The op must work with what it gets.
    fn use_fixed(&mut self, bufs: &[FixedBuf]) {
        let _ = bufs;
    }

    /// The error for `errno`; `file` is the op's file (path operations name their own paths).
    fn error(&self, errno: i32, file: &Path) -> Error {
        Error::io(self.kind().name(), Some(file.to_path_buf()), None, errno)
    }

    /// Adjusts the size the file is known to have at least, when the op is admitted (an op that
    /// may shrink the file lowers it at once, so later reads are ordered as if they may reach the
    /// end of the file).
    fn size_at_admit(&self, known: &mut u64) {
        let _ = known;
    }

    /// Whether the op sets the file's size to a value of its own (it may shrink it). While one
    /// such op is admitted and unfinished, the completions of ops admitted before it do not
    /// raise the known size (their sizes are stale once it runs); its own `size_after` does.
    fn sets_size(&self) -> bool {
        false
    }

    /// Adjusts the known size after the op succeeded.
    fn size_after(&self, known: &mut u64) {
        let _ = known;
    }

    /// The value of a successful op's [`Outcome::Value`] (a size; 0 otherwise).
    fn value(&self) -> u64 {
        0
    }

    /// Ends the op with `result`: what the shard is to deliver. The default hands the result (and
    /// [`value`](Self::value)) to the request's reply; ops with results of their own type keep
    /// their `Completer` in `self`, complete it here and return [`Outcome::Delivered`] (their
    /// request's reply is `Reply::InOp`).
    fn complete(&mut self, result: Result<()>) -> Outcome {
        Outcome::Value(result.map(|()| self.value()))
    }

    /// An error the op met in a CQE that did not end its round as an error (a SEND_ZC's result,
    /// whose notification ends the round with 0; no memory for its buffer): the shard ends the
    /// op with it, as with an errno from [`on_errno`](Self::on_errno), and counts it as one.
    fn failed(&self) -> Option<i32> {
        None
    }

    /// The shard stops with a round of this op still in the kernel (a failed shard, shutdown's
    /// grace period over): leak what its SQE names that [`complete`](Self::complete) would hand
    /// back to the caller (a receive's buffer, a send's), which the kernel may still write or
    /// read. `complete` runs right after, and the op itself is leaked then too.
    fn abandon_memory(&mut self) {}

    /// Nobody waits for the result any more (ops that keep their own `Completer`).
    fn is_cancelled(&self) -> bool {
        false
    }

    /// The op has no more work to do, by its own rules rather than anyone's cancellation (an
    /// accept whose listener's last handle is gone, or that is no longer its listener's live
    /// op): taken out of the kernel as a cancelled op is (ASYNC_CANCEL of its round), but
    /// counted in no stat (`CancelWhy::Stopped`), since nobody asked for it. Looked at before
    /// [`is_cancelled`](Self::is_cancelled).
    fn stopped(&self) -> bool {
        false
    }

    /// The op was cancelled (a deadline, a dropped or cancelled handle) with a round in the
    /// kernel, which ASYNC_CANCEL may not end soon: answer the handle with `error` now and return
    /// true, or false (the default) to answer it when the op ends (a receive keeps bytes that
    /// beat the cancellation). The op stays in the table, its memory with it, until its last
    /// CQE either way; its later answer is dropped. For ops with their own `Completer`.
    fn answer_when_cancelled(&mut self, error: Error) -> bool {
        let _ = error;
        false
    }

    /// Whether each round's result is an operation of its own in the statistics (an accept's
    /// rounds each take a connection), counted when it comes (with the time since the op or its
    /// last counted round began), rather than the op once at its end; so is each CQE of a
    /// multishot round but its last (a SEND_ZC's result, before its notification, is not).
    fn rounds_are_ops(&self) -> bool {
        false
    }

    /// Whether the round about to be issued waits for a socket's peer and may be taken out of
    /// the ring for `submit_to` closures and issued again after them (an ECANCELED from that is
    /// not its end), for an op whose kind is not one of `OpKind::waits_for_peer`'s: send_file of
    /// an O_DIRECT file while it waits for room or sends without zero copy (a SEND_ZC cannot be
    /// taken back, nor a READ of the device). Asked when the round is issued. Default: no.
    fn round_waits_for_peer(&self) -> bool {
        false
    }

    /// Whether a round already in the kernel is cancelled (ASYNC_CANCEL) when the op is dropped
    /// or past its deadline, as a read's is: for rounds that may wait forever (a socket that
    /// stops taking bytes, a peer that sends nothing). Default: no, the round completes (a
    /// started sync or write lands). A last round that finished before the cancellation reached
    /// it keeps its result (received bytes, an accepted connection, are not dropped for a
    /// cancellation that came too late), and such ops are cancelled at once when shutdown
    /// begins (they wait for a peer, not for a device).
    fn cancel_in_flight(&self) -> bool {
        false
    }
}

/// The default [`FileOp::run_blocking`]: the op's own SQE, built for the plain descriptor, run
/// as a system call. One place runs SQEs as system calls: the threads backend's (an op without
/// an SQE overrides `run_blocking`; one that picks another round there calls this after).
pub(crate) fn run_own_sqe<O: FileOp + ?Sized>(op: &mut O, fd: RawFd) -> i32 {
    let target = OpFd {
        target: Target::Fd(fd),
        raw: fd,
    };
    match op.sqe(target) {
        Some(entry) => crate::driver::threads::run_sqe(&entry),
        None => -libc::ENOSYS,
    }
}

/// Builds an SQE on either form of descriptor (registered slot or plain).
macro_rules! on_fd {
    ($target:expr, |$fd:ident| $build:expr) => {
        match $target {
            $crate::pool::Target::Fixed(s) => {
                let $fd = io_uring::types::Fixed(s);
                $build
            }
            $crate::pool::Target::Fd(d) => {
                let $fd = io_uring::types::Fd(d);
                $build
            }
        }
    };
}
pub(crate) use on_fd;

/// `AT_FDCWD` as an SQE's directory descriptor: paths are resolved like the caller's (relative
/// paths against the process's working directory).
pub(crate) fn cwd() -> types::Fd {
    types::Fd(libc::AT_FDCWD)
}

pub(crate) use crate::file::c_path;

/// The running kernel's release (`uname`, read once): for request flags that the opcode probe
/// cannot tell about (an older kernel refuses an unknown flag on every request alike).
pub(crate) struct KernelRelease {
    /// Major and minor version; `None` when `uname` failed (then every flag is tried, and the
    /// kernel answers per request).
    version: Option<(u32, u32)>,
    /// The release as `uname` gives it, for errors.
    pub text: String,
}

impl KernelRelease {
    /// Whether the kernel is `major.minor` or later (true when unknown).
    pub(crate) fn at_least(&self, major: u32, minor: u32) -> bool {
        self.version.is_none_or(|v| v >= (major, minor))
    }
}

/// See [`KernelRelease`].
pub(crate) fn kernel_release() -> &'static KernelRelease {
    static KERNEL: std::sync::OnceLock<KernelRelease> = std::sync::OnceLock::new();
    KERNEL.get_or_init(|| {
        // SAFETY: uname fills a local struct of fixed-size arrays.
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: as above; the release is NUL-terminated by the kernel.
        if unsafe { libc::uname(&mut u) } != 0 {
            return KernelRelease {
                version: None,
                text: String::from("unknown"),
            };
        }
        // SAFETY: `release` is a NUL-terminated array inside `u`.
        let text = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let mut parts = text
            .split(|c: char| !c.is_ascii_digit())
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let version = Some((parts.next().unwrap_or(0), parts.next().unwrap_or(0)));
        KernelRelease { version, text }
    })
}
