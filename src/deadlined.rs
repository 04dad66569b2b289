//! `Deadlined`: requests with a deadline ([`Executor::timeout`](crate::Executor::timeout),
//! [`LocalShard::timeout`](crate::LocalShard::timeout)), and the one face of every per-operation
//! method: `Executor`'s and `LocalShard`'s methods are this face without a deadline.
//!
//! The operations that a [`Batch`](crate::Batch) and a [`Session`](crate::Session) offer too
//! (read, write, fsync, fdatasync) are written once, as the provided methods of [`Sink`]: each
//! checks its request (`validate.rs`), takes the file's footprint (`crate::inline::pending_for`)
//! and names its reply, then hands it to the sink, which says only where it goes: sent now
//! (`Deadlined`, and the owned-buffer forms of `File`'s methods), added to a batch, or queued in a
//! session under a token.

use crate::completion::{Completer, Completion};
use crate::error::Error;
#[cfg(doc)]
use crate::executor::Executor;
use crate::file::File;
use crate::op::rw::RwFlags;
use crate::op::{self, FileOp};
use crate::routes::{DirOf, ExecShared};
use crate::shard::{IoOp, Reply};
use crate::validate::{self};
use std::path::Path;
use std::time::Instant;

/// Where a request made by the per-operation methods below goes, and what its caller gets back.
/// The methods themselves are written once, here; an implementation says only where a checked
/// request goes.
pub(crate) trait Sink: Sized {
    /// What the caller gets for a request whose result is a `T`.
    type Out<T>;

    /// The routes the request goes by (limits, inline reads, the owner check).
    fn routes(&self) -> &ExecShared;

    /// A request refused before it left: `err`, with the caller's buffer.
    fn refuse<T>(self, err: Error, buf: Vec<u8>) -> Self::Out<T>;

    /// A read done on this thread (see `crate::inline`), with its data.
    fn read_here(self, data: Vec<u8>) -> Self::Out<Vec<u8>>;

    /// A read a task makes of its own shard's file, straight to that shard's ring
    /// (`shard::local_io`); `Err` hands the buffer back to route the read. Only requests sent
    /// at once, with a `Completion`, take that path.
    fn read_local(
        &self,
        _file: &File,
        _offset: u64,
        _len: usize,
        buf: Vec<u8>,
    ) -> std::result::Result<Self::Out<Vec<u8>>, Vec<u8>> {
        Err(buf)
    }

    /// A checked request on `file` (`pending`: its count among the inode's unfinished
    /// mutations), answered through `reply`.
    fn send<T>(
        self,
        file: &File,
        op: IoOp,
        pending: Option<crate::inline::Pending>,
        reply: fn(Completer<T>) -> Reply,
    ) -> Self::Out<T>;

    /// A read of up to `len` bytes at `offset` into `buf`'s allocation: done on this thread if
    /// its data is cached (see `crate::inline`), else routed with the part that arrived here.
    #[inline]
    fn read_into(self, file: &File, offset: u64, len: usize, buf: Vec<u8>) -> Self::Out<Vec<u8>> {
        if let Err(e) = validate::read(file, offset, len, self.routes().limits) {
            return self.refuse(e, buf);
        }
        // The op is built only for the shard: a hit needs none.
        let (buf, kept) = match self.routes().try_inline_read(file, offset, len, buf) {
            crate::inline::Attempt::Done(data) => return self.read_here(data),
            crate::inline::Attempt::Route { buf, kept } => (buf, kept),
        };
        let buf = match kept {
            0 => match self.read_local(file, offset, len, buf) {
                Ok(out) => return out,
                Err(buf) => buf,
            },
            _ => buf,
        };
        let op = IoOp::Read {
            offset,
            len,
            buf,
            kept,
            flags: 0,
        };
        self.checked(file, op, Reply::Data)
    }

    /// A write of all of `data` at `offset` with `flags`, answered through `reply` (the bytes
    /// written, or those that landed, or nothing).
    #[inline]
    fn write_as<T>(
        self,
        file: &File,
        offset: u64,
        data: Vec<u8>,
        flags: RwFlags,
        reply: fn(Completer<T>) -> Reply,
    ) -> Self::Out<T> {
        match validate::write_op(file, offset, data, flags, self.routes().limits) {
            Ok(op) => self.checked(file, op, reply),
            Err((e, data)) => self.refuse(e, data),
        }
    }

    /// A write of all of `data` at `offset`: the bytes written.
    #[inline]
    fn write(self, file: &File, offset: u64, data: Vec<u8>) -> Self::Out<usize> {
        self.write_as(file, offset, data, RwFlags::empty(), Reply::Count)
    }

    /// An fsync (fdatasync with `datasync`), after every earlier write to the file.
    #[inline]
    fn sync(self, file: &File, datasync: bool) -> Self::Out<()> {
        self.checked(file, validate::sync_op(datasync), Reply::Unit)
    }

    /// Sends `op` on `file` if it was opened by these routes; refuses it otherwise.
    #[inline]
    fn checked<T>(
        self,
        file: &File,
        mut op: IoOp,
        reply: fn(Completer<T>) -> Reply,
    ) -> Self::Out<T> {
        if let Err(e) = self.routes().check_owner(file) {
            return self.refuse(e, op.take_buf());
        }
        let pending = crate::inline::pending_for(file, op.kind());
        self.send(file, op, pending, reply)
    }
}

/// Requests with a deadline: see [`Executor::timeout`].
#[derive(Clone, Copy)]
pub struct Deadlined<'a> {
    exec: &'a ExecShared,
    deadline: Option<Instant>,
}

impl std::fmt::Debug for Deadlined<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadlined")
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl<'a> Deadlined<'a> {
    /// Requests routed by `exec`, failed with `DeadlineExceeded` past `deadline` (none: never).
    pub(crate) fn new(exec: &'a ExecShared, deadline: Option<Instant>) -> Self {
        Deadlined { exec, deadline }
    }
}

/// Sent now, answered with a [`Completion`]. (Called as `Sink::read_into(*self, ..)`: the
/// public methods of the same names are these.)
impl Sink for Deadlined<'_> {
    type Out<T> = Completion<T>;

    #[inline]
    fn routes(&self) -> &ExecShared {
        self.exec
    }

    fn refuse<T>(self, err: Error, _buf: Vec<u8>) -> Completion<T> {
        Completion::ready(Err(err))
    }

    #[inline]
    fn read_here(self, data: Vec<u8>) -> Completion<Vec<u8>> {
        Completion::ready(Ok(data))
    }

    #[inline]
    fn read_local(
        &self,
        file: &File,
        offset: u64,
        len: usize,
        buf: Vec<u8>,
    ) -> std::result::Result<Completion<Vec<u8>>, Vec<u8>> {
        crate::shard::local_io::try_read(self.exec.id, file, offset, len, buf, self.deadline)
    }

    #[inline]
    fn send<T>(
        self,
        file: &File,
        op: IoOp,
        pending: Option<crate::inline::Pending>,
        reply: fn(Completer<T>) -> Reply,
    ) -> Completion<T> {
        self.exec
            .send_checked(file, op, pending, reply, self.deadline)
    }
}

/// The owned-buffer forms of `File`'s reads and writes ([`crate::buf`]): sent now, answered
/// with the result and the buffer, on error too.
pub(crate) struct Owned<'a>(pub(crate) Deadlined<'a>);

impl Sink for Owned<'_> {
    type Out<T> = Completion<crate::buf::RawBuf>;

    fn routes(&self) -> &ExecShared {
        self.0.exec
    }

    fn refuse<T>(self, err: Error, buf: Vec<u8>) -> Self::Out<T> {
        Completion::ready(Ok((Err(err), buf)))
    }

    fn read_here(self, data: Vec<u8>) -> Self::Out<Vec<u8>> {
        Completion::ready(Ok((Ok(data.len() as u64), data)))
    }

    fn send<T>(
        self,
        file: &File,
        op: IoOp,
        pending: Option<crate::inline::Pending>,
        _reply: fn(Completer<T>) -> Reply,
    ) -> Self::Out<T> {
        self.0
            .exec
            .send_checked(file, op, pending, Reply::Buf, self.0.deadline)
    }
}

impl Deadlined<'_> {
    /// [`Executor::read`] with the deadline.
    pub fn read(&self, file: &File, offset: u64, len: usize) -> Completion<Vec<u8>> {
        self.read_into(file, offset, len, Vec::new())
    }

    /// [`Executor::read_into`] with the deadline.
    pub fn read_into(
        &self,
        file: &File,
        offset: u64,
        len: usize,
        buf: Vec<u8>,
    ) -> Completion<Vec<u8>> {
        Sink::read_into(*self, file, offset, len, buf)
    }

    /// [`Executor::read_with`] with the deadline.
    pub fn read_with(
        &self,
        file: &File,
        offset: u64,
        len: usize,
        flags: crate::op::rw::RwFlags,
    ) -> Completion<Vec<u8>> {
        let op = validate::read_op_with(file, offset, len, Vec::new(), flags, self.exec.limits);
        self.exec.request(file, op, Reply::Data, self.deadline)
    }

    /// [`Executor::write_with`] with the deadline.
    pub fn write_with(
        &self,
        file: &File,
        offset: u64,
        data: impl Into<Vec<u8>>,
        flags: crate::op::rw::RwFlags,
    ) -> Completion<usize> {
        Sink::write_as(*self, file, offset, data.into(), flags, Reply::Count)
    }

    /// [`Executor::write`] with the deadline.
    pub fn write(&self, file: &File, offset: u64, data: impl Into<Vec<u8>>) -> Completion<usize> {
        Sink::write(*self, file, offset, data.into())
    }

    /// [`Executor::fsync`] with the deadline.
    pub fn fsync(&self, file: &File) -> Completion<()> {
        Sink::sync(*self, file, false)
    }

    /// [`Executor::size`] with the deadline.
    pub fn size(&self, file: &File) -> Completion<u64> {
        self.exec.request(
            file,
            Ok(crate::validate::size_op()),
            Reply::Size,
            self.deadline,
        )
    }

    /// [`Executor::metadata`] with the deadline.
    pub fn metadata(&self, file: &File) -> Completion<crate::op::statx::Metadata> {
        let make = |done| Box::new(op::statx::Statx::of_file(done)) as Box<dyn FileOp>;
        self.exec.request_op(file, Ok(make), self.deadline)
    }

    /// [`Executor::stat`] with the deadline.
    pub fn stat(&self, path: impl AsRef<Path>) -> Completion<crate::op::statx::Metadata> {
        self.stat_with(path.as_ref(), false)
    }

    pub(crate) fn stat_with(
        &self,
        path: &Path,
        nofollow: bool,
    ) -> Completion<crate::op::statx::Metadata> {
        self.exec.request_path(
            "stat",
            path,
            None,
            |c, target, done| Box::new(op::statx::Statx::of_path(c, target, nofollow, done)),
            self.deadline,
        )
    }

    /// [`Executor::set_len`] with the deadline.
    pub fn set_len(&self, file: &File, len: u64) -> Completion<()> {
        let op = validate::set_len(file, len)
            .map(|()| IoOp::File(Box::new(op::truncate::Truncate { len })));
        self.exec.request(file, op, Reply::Unit, self.deadline)
    }

    /// [`Executor::sync_file_range`] with the deadline.
    pub fn sync_file_range(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        flags: crate::op::sync_range::SyncRangeFlags,
    ) -> Completion<()> {
        let op = validate::sync_file_range(offset, len, flags);
        self.exec.request(file, op, Reply::Unit, self.deadline)
    }

    /// [`Executor::fadvise`] with the deadline.
    pub fn fadvise(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        advice: crate::op::fadvise::Advice,
    ) -> Completion<()> {
        if let Err(e) = self.exec.check_owner(file) {
            return Completion::ready(Err(e));
        }
        crate::routes::fadvise(file, offset, len, advice, self.deadline)
    }

    /// [`Executor::read_vectored`] with the deadline.
    pub fn read_vectored(
        &self,
        file: &File,
        offset: u64,
        lens: &[usize],
    ) -> Completion<Vec<Vec<u8>>> {
        let limits = self.exec.limits;
        let lens = lens.to_vec();
        let make = validate::vectored(
            file,
            "readv",
            offset,
            lens.iter().copied(),
            lens.len(),
            false,
            limits,
        )
        .map(|()| {
            move |done| Box::new(op::vectored::ReadV::new(offset, lens, 0, done)) as Box<dyn FileOp>
        });
        self.exec.request_op(file, make, self.deadline)
    }

    /// [`Executor::write_vectored`] with the deadline.
    pub fn write_vectored(
        &self,
        file: &File,
        offset: u64,
        bufs: Vec<Vec<u8>>,
    ) -> Completion<usize> {
        let limits = self.exec.limits;
        let make = validate::vectored(
            file,
            "writev",
            offset,
            bufs.iter().map(Vec::len),
            bufs.len(),
            true,
            limits,
        )
        .map(|()| {
            move |done| {
                Box::new(op::vectored::WriteV::new(offset, bufs, 0, done)) as Box<dyn FileOp>
            }
        });
        self.exec.request_op(file, make, self.deadline)
    }

    /// [`Executor::append`] with the deadline.
    pub fn append(
        &self,
        file: &File,
        data: impl Into<Vec<u8>>,
    ) -> Completion<crate::op::append::Appended> {
        let data = data.into();
        let make = validate::append(file, data.len(), self.exec.limits)
            .map(|()| move |done| Box::new(op::append::Append::new(data, done)) as Box<dyn FileOp>);
        self.exec.request_op(file, make, self.deadline)
    }

    /// [`Executor::unlink`] with the deadline.
    pub fn unlink(&self, path: impl AsRef<Path>) -> Completion<()> {
        self.path_call("unlink", path.as_ref(), op::path::PathCall::Unlink)
    }

    /// [`Executor::remove_dir`] with the deadline.
    pub fn remove_dir(&self, path: impl AsRef<Path>) -> Completion<()> {
        // A directory made at this path later is another one: route it anew.
        validate::forget_dirs(path.as_ref());
        self.path_call("remove_dir", path.as_ref(), op::path::PathCall::RemoveDir)
    }

    /// [`Executor::mkdir`] with the deadline.
    pub fn mkdir(&self, path: impl AsRef<Path>, mode: u32) -> Completion<()> {
        self.path_call("mkdir", path.as_ref(), op::path::PathCall::Mkdir { mode })
    }

    /// [`Executor::rename`] with the deadline.
    pub fn rename(
        &self,
        from: impl AsRef<Path>,
        to: impl AsRef<Path>,
        flags: crate::op::path::RenameFlags,
    ) -> Completion<()> {
        let (from, to) = (from.as_ref(), to.as_ref());
        // Directories renamed away or replaced: route what is at these paths anew.
        validate::forget_dirs(from);
        validate::forget_dirs(to);
        let to_c = match op::c_path("rename", to) {
            Ok(c) => c,
            Err(e) => return Completion::ready(Err(e)),
        };
        let call = op::path::PathCall::Rename {
            to: to_c,
            to_path: std::sync::Arc::from(to),
            flags,
        };
        self.exec.request_path(
            "rename",
            from,
            Some(DirOf::Path(to)),
            |c, target, done| Box::new(op::path::PathOp::new(call, c, target, done)),
            self.deadline,
        )
    }

    /// [`Executor::read_dir`] with the deadline.
    pub fn read_dir(
        &self,
        path: impl AsRef<Path>,
    ) -> Completion<Vec<crate::op::read_dir::DirEntry>> {
        self.exec.request_path(
            "read_dir",
            path.as_ref(),
            Some(DirOf::Itself),
            |c, target, done| Box::new(op::read_dir::ReadDir::of_path(c, target, done)),
            self.deadline,
        )
    }

    /// [`Executor::link_file`] with the deadline.
    pub fn link_file(&self, file: &File, path: impl AsRef<Path>) -> Completion<()> {
        if let Err(e) = self.exec.check_owner(file) {
            return Completion::ready(Err(e));
        }
        crate::routes::link_into(file, path.as_ref(), self.deadline)
    }

    /// [`Executor::hard_link`] with the deadline.
    pub fn hard_link(&self, original: impl AsRef<Path>, new: impl AsRef<Path>) -> Completion<()> {
        let (original, new) = (original.as_ref(), new.as_ref());
        let to = match op::c_path("hard_link", new) {
            Ok(c) => c,
            Err(e) => return Completion::ready(Err(e)),
        };
        let call = op::path::PathCall::Link {
            to,
            to_path: std::sync::Arc::from(new),
        };
        self.exec.request_path(
            "hard_link",
            original,
            Some(DirOf::Path(new)),
            |c, target, done| Box::new(op::path::PathOp::new(call, c, target, done)),
            self.deadline,
        )
    }

    /// [`Executor::symlink`] with the deadline.
    pub fn symlink(&self, target: impl AsRef<Path>, link: impl AsRef<Path>) -> Completion<()> {
        let target = target.as_ref();
        let c = match op::c_path("symlink", target) {
            Ok(c) => c,
            Err(e) => return Completion::ready(Err(e)),
        };
        let call = op::path::PathCall::Symlink {
            target: c,
            target_path: std::sync::Arc::from(target),
        };
        self.path_call("symlink", link.as_ref(), call)
    }

    fn path_call(
        &self,
        name: &'static str,
        path: &Path,
        call: op::path::PathCall,
    ) -> Completion<()> {
        self.exec.request_path(
            name,
            path,
            None,
            |c, target, done| Box::new(op::path::PathOp::new(call, c, target, done)),
            self.deadline,
        )
    }

    /// [`Executor::send_file`] with the deadline.
    pub fn send_file(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        dest: impl std::os::fd::AsFd,
    ) -> Completion<u64> {
        let dest = dest.as_fd();
        let checked = self
            .exec
            .check_owner(file)
            .and_then(|()| validate::send_file(file, offset, len, dest));
        let (kind, name) = match checked {
            Ok(_) if len == 0 => return Completion::ready(Ok(0)),
            Ok(d) => d,
            Err(e) => return Completion::ready(Err(e)),
        };
        match validate::send_file_dup(file, dest, &name) {
            Ok(dup) => self.send_file_as(file, offset, len, dup, kind, name),
            Err(e) => Completion::ready(Err(e)),
        }
    }

    /// [`send_file`](Self::send_file) to a duplicate the caller made for it (a stream's, made on
    /// its shard after its earlier sends): the op owns and closes it; no other is made.
    pub(crate) fn send_file_owned(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        dest: std::os::fd::OwnedFd,
    ) -> Completion<u64> {
        let checked = self
            .exec
            .check_owner(file)
            .and_then(|()| validate::send_file(file, offset, len, std::os::fd::AsFd::as_fd(&dest)));
        match checked {
            Ok(_) if len == 0 => Completion::ready(Ok(0)),
            Ok((kind, name)) => {
                let dup = op::send_file::Dest::Owned(dest);
                self.send_file_as(file, offset, len, dup, kind, name)
            }
            Err(e) => Completion::ready(Err(e)),
        }
    }

    fn send_file_as(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        dest: op::send_file::Dest,
        kind: op::send_file::DestKind,
        name: std::path::PathBuf,
    ) -> Completion<u64> {
        let zc_min = self.exec.limits.send_zc_min;
        let buffers = self.exec.limits.send_file_buffers;
        let make = |done| match file.direct_io_align() {
            // O_DIRECT: read into the op's buffer, then SEND_ZC or SEND.
            Some(align) => Box::new(op::send_file_direct::SendFileDirect::new(
                dest,
                name,
                file.path().to_path_buf(),
                offset,
                len,
                align,
                zc_min,
                buffers,
                done,
            )) as Box<dyn FileOp>,
            None => Box::new(op::send_file::SendFile::new(
                dest, kind, name, offset, len, done,
            )) as Box<dyn FileOp>,
        };
        self.exec.request_op(file, Ok(make), self.deadline)
    }

    /// [`Executor::recv_file`] with the deadline.
    pub fn recv_file(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        src: impl std::os::fd::AsFd,
    ) -> Completion<u64> {
        let src = src.as_fd();
        let dup = |name: std::path::PathBuf| {
            src.try_clone_to_owned().map_err(|e| Error::PathPair {
                op: "recv_file",
                from: name,
                to: file.path().to_path_buf(),
                errno: e.raw_os_error().unwrap_or(libc::EMFILE),
            })
        };
        let checked = self
            .exec
            .check_owner(file)
            .and_then(|()| validate::recv_file(file, offset, len, src));
        match checked {
            Ok(_) if len == 0 => Completion::ready(Ok(0)),
            Ok(name) => match dup(name.clone()) {
                Ok(owned) => self.recv_file_as(file, offset, len, owned, name),
                Err(e) => Completion::ready(Err(e)),
            },
            Err(e) => Completion::ready(Err(e)),
        }
    }

    /// [`recv_file`](Self::recv_file) from a duplicate the caller made for it (a stream's, made
    /// on its shard after its earlier receives): the op owns and closes it; no other is made.
    pub(crate) fn recv_file_owned(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        src: std::os::fd::OwnedFd,
    ) -> Completion<u64> {
        let checked = self
            .exec
            .check_owner(file)
            .and_then(|()| validate::recv_file(file, offset, len, std::os::fd::AsFd::as_fd(&src)));
        match checked {
            Ok(_) if len == 0 => Completion::ready(Ok(0)),
            Ok(name) => self.recv_file_as(file, offset, len, src, name),
            Err(e) => Completion::ready(Err(e)),
        }
    }

    fn recv_file_as(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        src: std::os::fd::OwnedFd,
        name: std::path::PathBuf,
    ) -> Completion<u64> {
        let make = |done| {
            Box::new(op::recv_file::RecvFile::new(src, name, offset, len, done)) as Box<dyn FileOp>
        };
        self.exec.request_op(file, Ok(make), self.deadline)
    }

    /// [`Executor::fdatasync`] with the deadline.
    pub fn fdatasync(&self, file: &File) -> Completion<()> {
        Sink::sync(*self, file, true)
    }
}
