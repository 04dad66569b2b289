//! `ExecShared`: the routes to the shards that files, sessions, batches and the executor share
//! (send, fail, inline reads, opens and installs).

use crate::completion::{pair, Completer, Completion};
use crate::error::{Error, Result};
use crate::fd_transit::InTransit;
use crate::file::{File, FileFlags, FileOwner, FileRef, OpenOptions};
use crate::op::{self, FileOp};
use crate::router::{shard_for, FileKey};
use crate::shard::{IoOp, IoRequest, Message, Reply, ShardLink};
use crate::validate::{self, Limits};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
/// What files, sessions and the executor share: the routes to the shards.
pub(crate) struct ExecShared {
    pub(crate) id: u64,
    pub(crate) shards: Vec<ShardLink>,
    /// Shutdown has begun: new work is refused.
    pub(crate) closed: AtomicBool,
    /// The bound on descriptors in transit (see `fd_transit`).
    pub(crate) fds: Arc<crate::fd_transit::FdTransit>,
    /// Opens sent so far: the next one's shard (in turn) and its own order key.
    pub(crate) opens: AtomicU64,
    pub(crate) limits: Limits,
    /// Inline reads: settings and the per-shard counters of reads done on callers' threads.
    pub(crate) inline: crate::inline::InlineReads,
}

impl std::fmt::Debug for ExecShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecShared")
            .field("id", &self.id)
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl ExecShared {
    /// Sends `msg` to `shard`; gives it back with the error when it cannot go.
    ///
    /// On `shard`'s own thread (a task, a `submit_to` closure, a handle dropped there) the
    /// message skips the channel: it goes into the shard's thread-local queue, behind everything
    /// sent there before it, so that every request one thread makes to one file, single or in a
    /// batch, a session flush or a close, is admitted in the order it was made.
    #[allow(clippy::result_large_err)] // cold path: shut down or the shard is gone
    pub(crate) fn send(
        &self,
        shard: usize,
        msg: Message,
    ) -> std::result::Result<(), (Message, Error)> {
        if self.closed.load(Ordering::Acquire) {
            return Err((msg, Error::Shutdown));
        }
        let msg = match crate::shard::task_queues::try_local(self.id, shard, msg) {
            Ok(()) => return Ok(()),
            Err(msg) => msg,
        };
        match self.shards.get(shard) {
            Some(link) => link.send(msg),
            None => Err((msg, Error::invalid("route", format!("no shard {shard}")))),
        }
    }

    /// Sends `msg`; on failure completes the completers inside it with the error.
    pub(crate) fn send_or_fail(&self, shard: usize, msg: Message) {
        if let Err((msg, e)) = self.send(shard, msg) {
            // Nothing to wait for: the shard is not running this shutdown.
            if let Some(done) = msg.fail(&e) {
                done.complete(Ok(()));
            }
        }
    }

    /// `file` must have been opened by this executor.
    pub(crate) fn check_owner(&self, file: &File) -> Result<()> {
        if file.handle().exec == self.id {
            Ok(())
        } else {
            Err(Error::BadHandle(format!(
                "{} was opened by another executor",
                file.path().display()
            )))
        }
    }

    /// Routes one request, checked here to be on a file of this executor. On the thread of the
    /// file's own shard (a task, a `submit_to` closure) it skips the channel (see
    /// [`send`](Self::send)).
    pub(crate) fn request<T>(
        &self,
        file: &File,
        op: Result<IoOp>,
        reply: impl FnOnce(Completer<T>) -> Reply,
        deadline: Option<Instant>,
    ) -> Completion<T> {
        let op = match op.and_then(|op| self.check_owner(file).map(|()| op)) {
            Ok(op) => op,
            Err(e) => return Completion::ready(Err(e)),
        };
        let pending = crate::inline::pending_for(file, op.kind());
        self.send_checked(file, op, pending, reply, deadline)
    }

    /// Routes a request on a file of this executor (`pending`: its count among the inode's
    /// unfinished mutations).
    #[inline]
    pub(crate) fn send_checked<T>(
        &self,
        file: &File,
        op: IoOp,
        pending: Option<crate::inline::Pending>,
        reply: impl FnOnce(Completer<T>) -> Reply,
        deadline: Option<Instant>,
    ) -> Completion<T> {
        let (c, done) = pair(self.id, file.shard());
        let req = IoRequest {
            file: file.handle(),
            pending,
            op,
            reply: reply(done),
            // In a shard task: the start of its poll, at most a poll earlier than now.
            at: crate::shard::task_queues::poll_start().unwrap_or_else(Instant::now),
            deadline,
        };
        self.send_or_fail(file.shard(), Message::Io(req));
        c
    }

    /// [`InlineReads::try_read`](crate::inline::InlineReads::try_read) of a checked read, for a
    /// file of this executor while it runs (otherwise routed, and refused there).
    pub(crate) fn try_inline_read(
        &self,
        file: &File,
        offset: u64,
        len: usize,
        buf: Vec<u8>,
    ) -> crate::inline::Attempt {
        if !self.inline.enabled
            || file.handle().exec != self.id
            || self.closed.load(Ordering::Acquire)
        {
            return crate::inline::Attempt::Route { buf, kept: 0 };
        }
        self.inline.try_read(file, offset, len, buf)
    }

    /// Routes a checked [`FileOp`] that holds its own completer, built by `make`, on `file`.
    pub(crate) fn request_op<T>(
        &self,
        file: &File,
        make: Result<impl FnOnce(Completer<T>) -> Box<dyn FileOp>>,
        deadline: Option<Instant>,
    ) -> Completion<T> {
        let make = match make.and_then(|m| self.check_owner(file).map(|()| m)) {
            Ok(m) => m,
            Err(e) => return Completion::ready(Err(e)),
        };
        let (c, done) = pair(self.id, file.shard());
        let op = make(done);
        let pending = crate::inline::pending_for(file, op.kind());
        let req = IoRequest {
            file: file.handle(),
            op: IoOp::File(op),
            reply: Reply::InOp,
            at: Instant::now(),
            deadline,
            pending,
        };
        self.send_or_fail(file.shard(), Message::Io(req));
        c
    }

    /// A copy (or clone) of `len` bytes at `src_off` of `src` to `dst_off` of `dst`: the one
    /// route of `Executor::copy_file_range`/`clone_range` and `File::copy_range_to`/
    /// `clone_range_to`. Two steps, source's shard then destination's: see `op::copy_range`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn copy_range(
        &self,
        how: op::copy_range::How,
        src: &File,
        src_off: u64,
        dst: &File,
        dst_off: u64,
        len: u64,
        deadline: Option<Instant>,
    ) -> Completion<u64> {
        let name = match how {
            op::copy_range::How::Copy => "copy_file_range",
            op::copy_range::How::Clone => "clone_range",
        };
        let checked = self
            .check_owner(src)
            .and_then(|()| self.check_owner(dst))
            .and_then(|()| validate::copy_range(name, src, src_off, dst, dst_off, len));
        if let Err(e) = checked {
            return Completion::ready(Err(e));
        }
        if len == 0 {
            return Completion::ready(Ok(0));
        }
        let handoff = match op::copy_range::Handoff::new(name) {
            Ok(h) => h,
            Err(e) => return Completion::ready(Err(e)),
        };
        // The source's step first: it hands the copy the source's descriptor.
        let sfd = op::copy_range::SourceFd::new(how, Arc::clone(&handoff));
        let req = IoRequest {
            file: src.handle(),
            op: IoOp::File(Box::new(sfd)),
            reply: Reply::InOp,
            at: Instant::now(),
            deadline: None,
            // The source is not changed.
            pending: None,
        };
        self.send_or_fail(src.shard(), Message::Io(req));
        // Then the copy, which holds its place among the destination's operations from now on
        // and waits for the descriptor (on the same inode: after the source's step).
        let make = |done| {
            Box::new(op::copy_range::CopyRange::new(
                how,
                handoff,
                src.path(),
                src_off,
                dst_off,
                len,
                done,
            )) as Box<dyn FileOp>
        };
        self.request_op(dst, Ok(make), deadline)
    }

    /// Routes an operation on a path to the shard of its parent directory (`dir_of`: another
    /// path's, or the path's own directory itself). `make` builds the op from the path, its
    /// order target and the completer.
    pub(crate) fn request_path<T>(
        &self,
        op: &'static str,
        path: &Path,
        dir_of: Option<DirOf<'_>>,
        make: impl FnOnce(std::ffi::CString, op::PathTarget, Completer<T>) -> Box<dyn FileOp>,
        deadline: Option<Instant>,
    ) -> Completion<T> {
        if self.closed.load(Ordering::Acquire) {
            return Completion::ready(Err(Error::Shutdown));
        }
        let routed = match dir_of {
            Some(DirOf::Path(d)) => validate::path_op(op, path, Some(d), self.shards.len()),
            Some(DirOf::Itself) => validate::dir_op(op, path, self.shards.len()),
            None => validate::path_op(op, path, None, self.shards.len()),
        };
        let (cpath, target, shard) = match routed {
            Ok(t) => t,
            Err(e) => return Completion::ready(Err(e)),
        };
        let (c, done) = pair(self.id, shard);
        let req = IoRequest {
            file: FileRef {
                exec: self.id,
                shard,
                slot: u32::MAX,
                gen: 0,
            },
            op: IoOp::File(make(cpath, target, done)),
            reply: Reply::InOp,
            at: Instant::now(),
            deadline,
            pending: None,
        };
        self.send_or_fail(shard, Message::Io(req));
        c
    }

    /// Counts requests a caller dropped before they were sent to `shard`.
    pub(crate) fn note_cancelled_unsent(&self, shard: usize, n: u64) {
        if let Some(link) = self.shards.get(shard) {
            link.shared.cancelled_unsent.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A place among the descriptors in transit for `adopt`: waits for one (blocking) unless
    /// called on one of this executor's shard threads, which must not wait for closes their own
    /// shard runs.
    pub(crate) fn fd_place(&self) -> Result<InTransit> {
        if crate::completion::current_shard().is_some_and(|(exec, _)| exec == self.id) {
            return Ok(self.fds.enter());
        }
        self.fds.enter_bounded(&self.closed)
    }

    /// Opens `path` through a shard's ring (see `op/open.rs`); never blocks. The options are
    /// checked here; then, once there is room among the descriptors in transit (at once, or
    /// when a token drop makes room: see `fd_transit`), the open goes to the next shard in turn
    /// that is alive, which opens and identifies the file and installs it on the shard its
    /// inode hashes to.
    /// `on`: install it on that shard instead (`Executor::open_on`).
    pub(crate) fn open(
        self: &Arc<Self>,
        path: &Path,
        options: &OpenOptions,
        on: Option<usize>,
    ) -> Completion<File> {
        if self.closed.load(Ordering::Acquire) {
            return Completion::ready(Err(Error::Shutdown));
        }
        if let Some(shard) = on.filter(|&s| s >= self.shards.len()) {
            return Completion::ready(Err(Error::invalid(
                "open_on",
                format!(
                    "no shard {shard}: this executor has {} shards (0..{})",
                    self.shards.len(),
                    self.shards.len()
                ),
            )));
        }
        match options.plan(path) {
            Ok(plan) => self.open_planned(plan, path, on),
            Err(e) => Completion::ready(Err(e)),
        }
    }

    /// The blocking open, on a thread that may block: a hot open (lookup cached, no create or
    /// truncate) on this thread (`op::open::open_cached`) when a place among the descriptors in
    /// transit is free now, returning the install's completion; else [`open`](Self::open) and a
    /// wait. Either way the open itself is done when this returns.
    pub(crate) fn open_blocking(
        self: &Arc<Self>,
        path: &Path,
        options: &OpenOptions,
    ) -> Completion<File> {
        if self.closed.load(Ordering::Acquire) {
            return Completion::ready(Err(Error::Shutdown));
        }
        let plan = match options.plan(path) {
            Ok(p) => p,
            Err(e) => return Completion::ready(Err(e)),
        };
        if let Some(transit) = self.fds.try_enter_now() {
            if let Some((fd, key)) = crate::op::open::open_cached(&plan) {
                // why: the completion names the file's shard, so that a wait for it on that
                // shard's own thread fails with WouldDeadlock instead of hanging.
                let (c, done) = pair(self.id, shard_for(key, self.shards.len()));
                self.install(self, fd, key, plan.file, path, done, transit, true);
                return c;
            }
        }
        Completion::ready(self.open_planned(plan, path, None).wait())
    }

    /// [`open`](Self::open) of a checked plan.
    fn open_planned(
        self: &Arc<Self>,
        plan: crate::file::OpenPlan,
        path: &Path,
        on: Option<usize>,
    ) -> Completion<File> {
        let seq = self.opens.fetch_add(1, Ordering::Relaxed);
        let n = self.shards.len().max(1);
        let first = (seq % n as u64) as usize;
        // why: a completion named after the shard it installs on makes a wait for it on that
        // shard's thread fail with WouldDeadlock (it could only finish there).
        let (c, done) = pair(self.id, on.unwrap_or(first));
        let path: Arc<Path> = Arc::from(path);
        let exec = Arc::clone(self);
        self.fds.enter_then(
            &self.closed,
            Box::new(move |place| {
                let transit = match place {
                    Ok(t) => t,
                    Err(e) => return done.complete(Err(e)),
                };
                if done.is_cancelled() {
                    // The place goes back unused; a handle kept after `cancel` learns why.
                    return done.complete(Err(Error::Cancelled {
                        op: "open",
                        path: Some(path.to_path_buf()),
                    }));
                }
                // why: a dead shard would fail every open sent to it, whichever shard the file
                // lives on; another one opens it.
                let alive = |s: usize| {
                    exec.shards
                        .get(s)
                        .is_some_and(|l| !l.shared.dead.load(Ordering::Acquire))
                };
                let shard = (0..n)
                    .map(|i| (first + i) % n)
                    .find(|&s| alive(s))
                    .unwrap_or(first);
                let installer: Arc<ExecShared> = Arc::clone(&exec);
                let op =
                    crate::op::open::OpenAt::new(plan, path, seq, installer, done, transit, on);
                let req = IoRequest {
                    file: FileRef {
                        exec: exec.id,
                        shard,
                        slot: u32::MAX,
                        gen: 0,
                    },
                    op: IoOp::File(Box::new(op)),
                    reply: Reply::InOp,
                    at: Instant::now(),
                    deadline: None,
                    // An open changes no file's data or size: inline reads need not wait for it.
                    pending: None,
                };
                exec.send_or_fail(shard, Message::Io(req));
            }),
        );
        c
    }

    /// Sends an open descriptor to the shard its inode hashes to, to be installed there.
    /// `count_open`: count it as an open there (an adopted descriptor).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn install(
        &self,
        self_arc: &Arc<ExecShared>,
        fd: OwnedFd,
        key: FileKey,
        flags: FileFlags,
        path: &Path,
        done: Completer<File>,
        transit: InTransit,
        count_open: bool,
    ) {
        let shard = shard_for(key, self.shards.len());
        self.install_on(
            shard, self_arc, fd, key, flags, path, done, transit, count_open,
        );
    }

    /// [`install`](Self::install) on shard `shard`, whatever the inode (`open_on`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn install_on(
        &self,
        shard: usize,
        self_arc: &Arc<ExecShared>,
        fd: OwnedFd,
        key: FileKey,
        flags: FileFlags,
        path: &Path,
        done: Completer<File>,
        transit: InTransit,
        count_open: bool,
    ) {
        self.send_or_fail(
            shard,
            Message::Install {
                fd,
                key,
                flags,
                path: Arc::from(path),
                exec: Arc::clone(self_arc) as Arc<dyn FileOwner>,
                done,
                transit,
                count_open,
            },
        );
    }
}

/// A `File` closes through its executor when its last handle drops (see `file.rs`).
impl FileOwner for ExecShared {
    fn close_detached(&self, file: FileRef) {
        let req = IoRequest {
            file,
            op: IoOp::Close(self.fds.enter()),
            reply: Reply::Detached,
            at: Instant::now(),
            deadline: None,
            pending: None,
        };
        // Refused after shutdown: the shard closes every file as it stops.
        let _ = self.send(file.shard, Message::Io(req));
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// An open run on a shard hands its descriptor to the executor (see `op/open.rs`).
impl crate::op::open::Installer for ExecShared {
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn fd_token(&self) -> InTransit {
        self.fds.enter()
    }

    fn install(
        self: Arc<Self>,
        on: Option<usize>,
        fd: OwnedFd,
        key: FileKey,
        flags: FileFlags,
        path: &Path,
        done: Completer<File>,
        transit: InTransit,
    ) {
        match on {
            Some(shard) => {
                self.install_on(shard, &self, fd, key, flags, path, done, transit, false)
            }
            None => ExecShared::install(&self, &self, fd, key, flags, path, done, transit, false),
        }
    }
}

/// Which directory a path operation is routed and ordered by, when not the path's parent.
#[derive(Clone, Copy)]
pub(crate) enum DirOf<'a> {
    /// The parent of this other path (rename, hard_link: the destination's).
    Path(&'a Path),
    /// The path itself, a directory (read_dir).
    Itself,
}

/// Closes `file` after every earlier operation on it: later operations on any clone fail with
/// [`Error::BadHandle`], and its last drop sends no second close. Shared by
/// [`File::close`](crate::File::close) and [`Executor::close`](crate::Executor::close).
pub(crate) fn close(file: &File) -> Completion<()> {
    file.inner.closed.store(true, Ordering::Release);
    file.route(|r| r.request(file, Ok(IoOp::Close(r.fds.enter())), Reply::Unit, None))
}

/// Sends an fadvise of `file`: the one implementation of [`File::fadvise`](crate::File::fadvise),
/// [`Executor::fadvise`](crate::Executor::fadvise) and its [`Deadlined`](crate::Deadlined) form.
pub(crate) fn fadvise(
    file: &File,
    offset: u64,
    len: u64,
    advice: crate::op::fadvise::Advice,
    deadline: Option<std::time::Instant>,
) -> Completion<()> {
    let op = validate::fadvise_op(offset, len, advice);
    file.route(|r| r.request(file, op, Reply::Unit, deadline))
}

/// Sends a link of `file` at `path`: the one implementation of [`File::link_into`](crate::File::link_into),
/// [`Executor::link_file`](crate::Executor::link_file) and its [`Deadlined`](crate::Deadlined)
/// form.
pub(crate) fn link_into(
    file: &File,
    path: &std::path::Path,
    deadline: Option<std::time::Instant>,
) -> Completion<()> {
    let make = op::c_path("link_into", path).map(|to| {
        let to_path = std::sync::Arc::from(path);
        move |done| Box::new(op::link_file::LinkFile::new(to, to_path, done)) as Box<dyn FileOp>
    });
    file.route(|r| r.request_op(file, make, deadline))
}

impl File {
    /// The routes of the executor that opened this file (so `check_owner` passes). The file
    /// holds them as a [`FileOwner`] (`file.rs` is below this layer); `ExecShared` is the only
    /// one, so the error, `BadHandle`, is never seen.
    pub(crate) fn routes(&self) -> Result<&ExecShared> {
        self.inner.exec.as_any().downcast_ref().ok_or_else(|| {
            Error::BadHandle(format!(
                "{} has no ringshard executor to route it",
                self.path().display()
            ))
        })
    }

    /// What `f` sends on this file's routes; completed with [`routes`](Self::routes)' error
    /// when there are none.
    pub(crate) fn route<T>(&self, f: impl FnOnce(&ExecShared) -> Completion<T>) -> Completion<T> {
        match self.routes() {
            Ok(r) => f(r),
            Err(e) => Completion::ready(Err(e)),
        }
    }
}
