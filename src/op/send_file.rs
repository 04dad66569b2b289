//! send_file: bytes of a file to a socket (or pipe) without passing through user space.
//!
//! Two IORING_OP_SPLICEs per round through a pipe of the shard's pool (`crate::pipes`): the
//! file's bytes into the pipe (`fill`: at the file's offset, at most the pipe's size), then the
//! pipe into the destination (`drain`, repeated while the destination takes less than the pipe
//! holds), until `len` bytes are sent or the file ends (then fewer: what exists). The page cache's
//! pages are referenced by the pipe and handed to the socket: nothing is copied through user
//! space. One SQE at a time, each waiting for the last: a destination that stops taking bytes
//! leaves one SPLICE waiting in the kernel (an io-wq worker on the ring, `poll` on a worker of
//! the threads backend), which a cancellation, a deadline or a dropped handle ends.
//!
//! **The inline path.** A round to a stream socket with room, over a range of a file without
//! O_DIRECT whose every page is in the page cache (`cachestat(2)`, Linux 6.5+: [`cached`]),
//! is one sendfile(2) on the shard thread, at most the socket's room
//! ([`SendFile::inline_round`]): no pipe, no io-wq worker, no trip through the ring, as nginx
//! sends (sendfile to a socket, a poll for room when it is full). A socket without room is
//! waited for with a POLL_ADD first. Every SPLICE costs a wake-up of an io-wq worker and one of
//! the shard to hear of it: measured on hot 1 MiB objects (BENCHMARKS.md, "send_file"), the
//! pipe's eight SPLICEs per body cost ~9 context switches of the server per body, the inline
//! path under one, and less CPU per request on both the server's and the client's side. Where the kernel's view changes between the checks and the call (a page
//! evicted meanwhile), the shard thread waits: see [`SendFile::send_inline`]. Ranges not all
//! cached (and kernels without cachestat) take the pipe's rounds, which read on io-wq.
//! `RINGSHARD_SEND_FILE_INLINE=0` turns the inline path off.
//!
//! Sends of at most [`COPY_MAX`] bytes of a file without O_DIRECT take the copy path instead:
//! READ into a buffer of the op, then WRITE to the destination (the same rounds otherwise).
//! Every SPLICE is handed to an io-wq worker, where a READ of cached data and a WRITE to a
//! socket with room complete inline: below the threshold the copy costs less CPU (measured:
//! BENCHMARKS.md, "send_file").
//!
//! The destination. The kernel uses it while the op runs, whatever the caller does with its own
//! descriptor meanwhile (closes it, reuses the number), so the op owns a duplicate
//! (`F_DUPFD_CLOEXEC`: one system call and one descriptor per send, closed when the op ends):
//! made at request time ([`dup_dest`]), or, for `TcpStream::send_file`, the one its stream's
//! shard made after the stream's earlier sends (no second one); it refers to the same socket
//! (closing it does not close the connection while the caller's is open). A non-blocking destination (O_NONBLOCK is shared with the caller's
//! descriptor) answers EAGAIN when full, which io_uring does not retry for SPLICE: the op then
//! waits for room with a POLL_ADD and goes on (`FileOp::on_errno`); the blocking path, which
//! runs no polls, fails with EAGAIN instead.
//!
//! The pipe. A pipe goes back to the pool only empty: an op that ends with bytes in its pipe (an
//! error, a cancellation or deadline between its fill and its drain) closes it, so no later send
//! starts with another's bytes.
//!
//! Both backends run these SQEs: the threads backend with splice(2) on the shard's workers (its
//! drain waits for room in `poll`, where cancellation reaches it, and takes no more than the
//! socket's send buffer has room for, so it never blocks in the kernel).

use super::{on_fd, FileOp, Footprint, OpFd, OpKind, Outcome, Step};
use crate::completion::Completer;
use crate::driver::sockopt::getsockopt_int;
use crate::error::{Error, Result};
use crate::pipes::Pipe;
use crate::pool::Target;
use io_uring::{opcode, squeue, types};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// Where the bytes go.
#[derive(Debug)]
pub(crate) enum Dest {
    /// A duplicate of the caller's descriptor, owned (closed) by the op.
    Owned(OwnedFd),
}

impl Dest {
    pub(crate) fn raw(&self) -> RawFd {
        match self {
            Dest::Owned(fd) => fd.as_raw_fd(),
        }
    }
}

/// What a destination is: splice needs a stream socket, pipe or FIFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DestKind {
    /// A SOCK_STREAM socket.
    Socket,
    /// A pipe or FIFO.
    Pipe,
}

/// What `dest` is and its name for errors (`fd 7 (socket)`), or ENOTSOCK (anything but a
/// stream socket, pipe or FIFO) and that name. Makes no descriptor.
pub(crate) fn check_dest(
    dest: std::os::fd::BorrowedFd<'_>,
) -> std::result::Result<(DestKind, PathBuf), (i32, PathBuf)> {
    let raw = dest.as_raw_fd();
    // SAFETY: all-zero bytes are a valid `libc::stat` (integers only).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into that local only; `raw` is a live descriptor the caller lends.
    let kind = if unsafe { libc::fstat(raw, &mut st) } != 0 {
        None
    } else {
        match st.st_mode & libc::S_IFMT {
            // A stream socket only: a datagram or seqpacket socket waits on its peer's queue
            // whatever its send buffer says, which the threads backend's room estimate cannot see.
            libc::S_IFSOCK if is_stream_socket(raw) => Some(DestKind::Socket),
            libc::S_IFIFO => Some(DestKind::Pipe),
            _ => None,
        }
    };
    let what = match kind {
        Some(DestKind::Socket) => "socket",
        Some(DestKind::Pipe) => "pipe",
        None => "not a socket or pipe",
    };
    let name = PathBuf::from(format!("fd {raw} ({what})"));
    match kind {
        Some(kind) => Ok((kind, name)),
        None => Err((libc::ENOTSOCK, name)),
    }
}

/// A close-on-exec duplicate of `dest` for an op (see the module docs), or the errno (EMFILE
/// when no descriptor is left).
pub(crate) fn dup_dest(dest: std::os::fd::BorrowedFd<'_>) -> std::result::Result<Dest, i32> {
    dest.try_clone_to_owned()
        .map(Dest::Owned)
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EMFILE))
}

/// Whether `fd` is a SOCK_STREAM socket.
fn is_stream_socket(fd: RawFd) -> bool {
    getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE) == Ok(libc::SOCK_STREAM)
}

/// The round in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// File -> pipe.
    Fill,
    /// Pipe -> destination.
    Drain,
    /// File -> the op's buffer (the copy path).
    Read,
    /// The op's buffer -> destination (the copy path).
    Write,
    /// File -> socket with sendfile(2) on the shard thread, the range being in the page cache
    /// (the inline path: no pipe, no io-wq; see [`SendFile::inline_round`]).
    Inline,
}

/// Sends of at most this many bytes of a file without O_DIRECT are copied (READ into a buffer
/// of the op, then WRITE to the destination) instead of spliced. Both SQEs of a copy complete
/// without leaving the ring when the data is cached and the socket has room, where every
/// SPLICE is handed to an io-wq worker: measured over loopback TCP (examples/send_file_bench,
/// CPU time of the whole process per GiB), the copy cost less CPU up to this size. It bounds the
/// op's buffer too. `RINGSHARD_SEND_FILE_COPY_MAX` (bytes, read once) overrides it.
pub(crate) const COPY_MAX: u64 = 64 * 1024;

/// [`COPY_MAX`], or the process's override.
fn copy_max() -> u64 {
    static MAX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var("RINGSHARD_SEND_FILE_COPY_MAX")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(COPY_MAX, |v| v.min(1 << 30))
    })
}

/// A send of `len` bytes at `offset` of the op's file to `dest`.
pub(crate) struct SendFile {
    dest: Dest,
    /// A socket (the inline path's destination) or a pipe.
    dest_kind: DestKind,
    /// `sqe` is asked by `run_blocking` (the blocking path, which runs no polls), not by the
    /// shard's issue.
    blocking_call: bool,
    /// The destination as errors name it (`fd 7 (socket)`).
    dest_name: PathBuf,
    offset: u64,
    len: u64,
    /// Bytes read from the file into the pipe so far.
    filled: u64,
    /// Bytes the destination took so far.
    sent: u64,
    /// The file ended (a fill returned 0).
    eof: bool,
    /// Bytes the last fill asked for, and whether it got fewer (the file may end there: its
    /// drain goes without SPLICE_F_MORE, which would hold the tail back ~200 ms).
    asked: u64,
    short_fill: bool,
    phase: Phase,
    /// The destination said EAGAIN (a non-blocking socket: io_uring does not retry SPLICE on
    /// it): the next round is a POLL_ADD for room, then the same phase again.
    wait_out: bool,
    /// A wait for room was asked of the blocking path, which runs no polls: the op fails with
    /// EAGAIN there instead (documented).
    no_wait: bool,
    pipe: Option<Pipe>,
    /// Why there is no pipe (pipe2's errno: EMFILE, ENFILE).
    no_pipe: Option<i32>,
    /// The copy path's buffer (`len` bytes at most, `COPY_MAX` at most), allocated once: the
    /// SQE in flight points into it, and the op (boxed in the op table) keeps it put.
    buf: Vec<u8>,
    done: Option<Completer<u64>>,
}

impl SendFile {
    /// The send of `len` bytes at `offset` to `dest` (named `dest_name` in errors), from a file
    /// without O_DIRECT (an O_DIRECT file's send is `send_file_direct`'s).
    pub(crate) fn new(
        dest: Dest,
        dest_kind: DestKind,
        dest_name: PathBuf,
        offset: u64,
        len: u64,
        done: Completer<u64>,
    ) -> SendFile {
        let copy = len <= copy_max();
        SendFile {
            dest,
            dest_kind,
            blocking_call: false,
            dest_name,
            offset,
            len,
            filled: 0,
            sent: 0,
            eof: false,
            asked: 0,
            short_fill: false,
            wait_out: false,
            no_wait: false,
            phase: if copy { Phase::Read } else { Phase::Fill },
            pipe: None,
            no_pipe: None,
            // Bounded by `copy_max()` (at most 1 GiB even when overridden).
            buf: if copy {
                vec![0; len as usize]
            } else {
                Vec::new()
            },
            done: Some(done),
        }
    }

    /// Bytes in the pipe, not yet sent.
    fn in_pipe(&self) -> u64 {
        self.filled - self.sent
    }

    /// The next round after one that ended with the pipe (or buffer) holding `in_pipe()`
    /// bytes.
    fn next(&mut self) -> Step {
        let copy = matches!(self.phase, Phase::Read | Phase::Write);
        if self.in_pipe() > 0 {
            self.phase = if copy { Phase::Write } else { Phase::Drain };
            Step::Again
        } else if self.eof || self.filled >= self.len {
            Step::Done
        } else {
            self.phase = if copy { Phase::Read } else { Phase::Fill };
            Step::Again
        }
    }

    /// The copy path's SQEs: the whole range is read into `buf` (a short read: the rest), then
    /// written from where the destination stopped taking it.
    fn copy_sqe(&mut self, fd: OpFd) -> squeue::Entry {
        if self.phase == Phase::Read {
            let at = self.filled as usize;
            let n = (self.buf.len() - at) as u32;
            // SAFETY (pointer arithmetic): `at <= buf.len()`.
            let ptr = unsafe { self.buf.as_mut_ptr().add(at) };
            let off = self.offset + self.filled;
            on_fd!(fd.target, |f| opcode::Read::new(f, ptr, n)
                .offset(off)
                .build())
        } else {
            let from = self.sent as usize;
            let n = (self.filled - self.sent) as u32;
            // SAFETY (pointer arithmetic): `sent <= filled <= buf.len()`.
            let ptr = unsafe { self.buf.as_ptr().add(from) };
            // Offset 0: a socket or pipe has none (the ring ignores it there).
            opcode::Write::new(types::Fd(self.dest.raw()), ptr, n).build()
        }
    }
}

/// What [`SendFile::inline_round`] decided for the next round.
enum Inline {
    /// Send it with sendfile(2) on this thread (`run_blocking`).
    Send,
    /// The socket has no room: wait for it (POLL_ADD), then decide again.
    WaitRoom,
    /// Through the pipe, on io-wq.
    No,
}

impl SendFile {
    /// Whether the next round goes inline: a socket destination with room, and a range of a
    /// file without O_DIRECT whose every page is in the page cache ([`cached`]). Then the
    /// round is at most [`INLINE_MAX`] bytes, and no more than the socket's room.
    ///
    /// A socket without room is waited for (POLL_ADD), except on the blocking path, which runs
    /// no polls (it takes the pipe's rounds then, as before).
    fn inline_round(&mut self, file: RawFd) -> Inline {
        // Only a non-blocking socket (O_NONBLOCK, asked every round: it belongs to the open file
        // description the caller shares): sendfile to a blocking one waits in the kernel when
        // the room estimate is wrong (the kernel's accounting is by skb truesize, and global
        // TCP memory pressure makes any send wait), which would stall the shard thread until
        // the peer reads. Seen: a client that stopped reading hung a 1-shard server.
        if self.dest_kind != DestKind::Socket
            || !inline_enabled()
            || !crate::driver::fd_flags::is_nonblocking(self.dest.raw())
        {
            return Inline::No;
        }
        let Some(room) = crate::driver::threads::socket_room(self.dest.raw()) else {
            return Inline::No;
        };
        if room == 0 {
            return if self.blocking_call {
                Inline::No
            } else {
                Inline::WaitRoom
            };
        }
        let at = self.offset + self.filled;
        let n = (self.len - self.filled).min(room as u64).min(INLINE_MAX);
        if !cached(file, at, n) {
            crate::pipes::note_send_file_round(false);
            return Inline::No;
        }
        self.asked = n;
        self.phase = Phase::Inline;
        Inline::Send
    }

    /// The inline round: sendfile(2) of the `asked` bytes that [`inline_round`](Self::inline_round)
    /// found cached, to the socket, which has room for them.
    ///
    /// **Blocks the shard thread only where the kernel's view changed since the checks**, rare
    /// and bounded:
    /// - a page evicted between `cachestat` and this call (memory pressure within those
    ///   microseconds) is read from the disk here, on the shard thread: one read's latency
    ///   (a page, or the readahead around it), which the shard's other work waits for. The
    ///   file side of sendfile and splice honours no non-blocking flag (O_NONBLOCK on a regular
    ///   file and SPLICE_F_NONBLOCK concern only sockets and pipes), so nothing cheaper can
    ///   refuse instead; a page being read in (in the cache, not yet up to date) is waited for
    ///   the same way.
    ///
    /// The socket never blocks it: only a non-blocking one is sent to here ([`inline_round`](
    /// Self::inline_round)); a full one answers EAGAIN (a short count when partly full), and the
    /// op waits for room with a poll.
    fn send_inline(&mut self, file: RawFd) -> i32 {
        crate::pipes::note_send_file_round(true);
        // `offset + len` was checked to fit an `off_t` (validate::send_file's check_end).
        let mut off = (self.offset + self.filled) as libc::off_t;
        let n = self.asked.min(INLINE_MAX) as usize;
        // SAFETY: sendfile reads and updates `off`, a local; it names no other memory of ours.
        let res = unsafe { libc::sendfile(self.dest.raw(), file, &mut off, n) };
        if res < 0 {
            -crate::numa::last_errno()
        } else {
            res as i32 // at most INLINE_MAX
        }
    }
}

/// The most bytes one inline round sends (it runs on the shard thread: this bounds how long
/// the shard's other work waits for it; the socket's room usually bounds it first).
const INLINE_MAX: u64 = 1 << 20;

/// Whether the inline path is on: `RINGSHARD_SEND_FILE_INLINE=0` (read once) turns it off
/// (every round then goes through the pipe), for comparisons.
fn inline_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("RINGSHARD_SEND_FILE_INLINE").map_or(true, |v| v != "0"))
}

/// The kernel has no cachestat (ENOSYS), or a seccomp filter refuses it (EPERM): never ask
/// again. Other errors (a file it does not take, such as hugetlbfs) concern one file.
static NO_CACHESTAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether every page of bytes `off..off + len` of `fd` that exists is in the page cache
/// (cachestat(2), Linux 6.5+): one system call that looks the pages up without reading,
/// faulting or waiting. Where it counts fewer, the file's size (fstat) says whether the range
/// only reaches past the end of the file, whose pages do not exist (and past which sendfile
/// reads nothing). False where it cannot say (no cachestat: ENOSYS or a seccomp filter's EPERM,
/// then never asked again; a file it does not take, such as hugetlbfs): those rounds go
/// through a pipe. The system call is `driver::cachestat`'s; this keeps only send_file's rules.
pub(crate) fn cached(fd: RawFd, off: u64, len: u64) -> bool {
    use std::sync::atomic::Ordering;
    if len == 0 || NO_CACHESTAT.load(Ordering::Relaxed) {
        return false;
    }
    let st = match crate::driver::cachestat::cachestat(fd, off, len) {
        Ok(Some(st)) => st,
        Ok(None) | Err(libc::EPERM) => {
            NO_CACHESTAT.store(true, Ordering::Relaxed);
            return false;
        }
        Err(_) => return false,
    };
    let page = crate::numa::page_size().max(1) as u64;
    let pages = |end: u64| end.div_ceil(page).saturating_sub(off / page);
    let end = off.saturating_add(len);
    if st.cached >= pages(end) {
        return true;
    }
    // SAFETY: all-zero bytes are a valid `libc::stat` (integers only).
    let mut meta: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into that local only; `fd` is the op's open file.
    if unsafe { libc::fstat(fd, &mut meta) } != 0 {
        return false;
    }
    let size = meta.st_size.max(0) as u64;
    end > size && st.cached >= pages(size)
}

/// The most bytes one SPLICE is asked for.
const SQE_MAX: u64 = 1 << 30;

impl FileOp for SendFile {
    fn kind(&self) -> OpKind {
        OpKind::SendFile
    }

    /// A read of the range: after earlier writes to it, side by side with other reads.
    fn footprint(&self, known_size: u64) -> Footprint {
        crate::op::read::footprint(self.offset, self.len, known_size)
    }

    fn sqe(&mut self, fd: OpFd) -> Option<squeue::Entry> {
        if self.wait_out {
            let dest = types::Fd(self.dest.raw());
            return Some(opcode::PollAdd::new(dest, libc::POLLOUT as u32).build());
        }
        if matches!(self.phase, Phase::Read | Phase::Write) {
            return Some(self.copy_sqe(fd));
        }
        if self.phase == Phase::Inline {
            self.phase = Phase::Fill; // a round after a wait for room: decided again
        }
        if self.phase == Phase::Fill {
            match self.inline_round(fd.raw) {
                Inline::Send => return None, // `run_blocking` sends it
                Inline::WaitRoom => {
                    self.wait_out = true;
                    let dest = types::Fd(self.dest.raw());
                    return Some(opcode::PollAdd::new(dest, libc::POLLOUT as u32).build());
                }
                Inline::No => {}
            }
        }
        if self.pipe.is_none() && self.no_pipe.is_none() {
            match crate::pipes::take() {
                Ok(p) => self.pipe = Some(p),
                Err(errno) => self.no_pipe = Some(errno),
            }
        }
        let pipe = self.pipe.as_ref()?; // none: `run_blocking` reports why
        let entry = match self.phase {
            // The copy path and the inline path: above.
            Phase::Read | Phase::Write | Phase::Inline => return None,
            Phase::Fill => {
                let n = (self.len - self.filled).min(pipe.cap as u64).min(SQE_MAX) as u32;
                self.asked = u64::from(n);
                let at = (self.offset + self.filled) as i64;
                let out = types::Fd(pipe.write.as_raw_fd());
                on_fd!(fd.target, |f| opcode::Splice::new(f, at, out, -1, n)
                    .build())
            }
            Phase::Drain => {
                let n = self.in_pipe().min(SQE_MAX) as u32;
                // More follows this round: the socket may hold a partial segment back for it.
                let more = !self.eof && !self.short_fill && self.filled < self.len;
                let flags = if more { libc::SPLICE_F_MORE } else { 0 };
                let dest = types::Fd(self.dest.raw());
                opcode::Splice::new(types::Fd(pipe.read.as_raw_fd()), -1, dest, -1, n)
                    .flags(flags)
                    .build()
            }
        };
        Some(entry)
    }

    fn run_blocking(&mut self, fd: RawFd) -> i32 {
        if self.wait_out {
            // No poll on the blocking path (it would block the shard thread): EAGAIN.
            self.no_wait = true;
            return -libc::EAGAIN;
        }
        if self.phase == Phase::Inline {
            return self.send_inline(fd); // chosen by `sqe` just now
        }
        if let Some(errno) = self.no_pipe {
            return -errno;
        }
        let target = OpFd {
            target: Target::Fd(fd),
            raw: fd,
        };
        self.blocking_call = true;
        let entry = self.sqe(target);
        self.blocking_call = false;
        match entry {
            Some(entry) => crate::driver::threads::run_sqe(&entry),
            None if self.phase == Phase::Inline => self.send_inline(fd),
            None => -self.no_pipe.unwrap_or(libc::EMFILE),
        }
    }

    fn on_errno(&mut self, errno: i32) -> Option<Step> {
        let out = matches!(self.phase, Phase::Drain | Phase::Write | Phase::Inline);
        if errno == libc::EAGAIN && out && !self.no_wait {
            self.wait_out = true;
            return Some(Step::Again);
        }
        None
    }

    fn on_result(&mut self, res: i32, _flags: u32, _fd: RawFd) -> Step {
        if self.wait_out {
            // Room (or an error the next round will see): the same phase again.
            self.wait_out = false;
            return Step::Again;
        }
        let n = res.max(0) as u64;
        match self.phase {
            // A round asks for at least one byte: none is the end of the file.
            Phase::Fill | Phase::Read | Phase::Inline if n == 0 => self.eof = true,
            Phase::Inline => {
                self.filled += n;
                self.sent += n;
            }
            Phase::Fill => {
                self.short_fill = n < self.asked;
                self.filled += n;
            }
            Phase::Read => self.filled += n,
            // A destination that takes nothing of a non-empty pipe: stop (short), rather than
            // ask again forever.
            Phase::Drain | Phase::Write if n == 0 => return Step::Done,
            Phase::Drain | Phase::Write => self.sent += n.min(self.in_pipe()),
        }
        self.next()
    }

    fn error(&self, errno: i32, file: &Path) -> Error {
        Error::PathPair {
            op: OpKind::SendFile.name(),
            from: file.to_path_buf(),
            to: self.dest_name.clone(),
            errno,
        }
    }

    fn complete(&mut self, result: Result<()>) -> Outcome {
        if let Some(done) = self.done.take() {
            done.complete(result.map(|()| self.sent));
        }
        Outcome::Delivered { bytes: self.sent }
    }

    fn is_cancelled(&self) -> bool {
        self.done.as_ref().is_some_and(Completer::is_cancelled)
    }

    /// A destination may stop taking bytes for good: its round in the kernel is cancelled.
    fn cancel_in_flight(&self) -> bool {
        true
    }
}

impl Drop for SendFile {
    fn drop(&mut self) {
        // Only an empty pipe goes back (the op is dropped only once nothing of it is in the
        // kernel: the shard leaks an op it stops with in flight).
        if let Some(pipe) = self.pipe.take() {
            let empty = self.in_pipe() == 0;
            crate::pipes::give(pipe, empty);
        }
    }
}
