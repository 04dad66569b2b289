//! `Deadlined`: requests with a deadline ([`Executor::timeout`](crate::Executor::timeout),
//! [`LocalShard::timeout`](crate::LocalShard::timeout)), and the one face of every per-operation
//! method: `Executor`'s and `LocalShard`'s methods are this face without a deadline.

use crate::completion::Completion;
#[cfg(doc)]
use crate::executor::Executor;
use crate::file::File;
use crate::op::{self, FileOp};
use crate::routes::{DirOf, ExecShared};
use crate::shard::{IoOp, Reply};
use crate::validate::{self};
use std::path::Path;
use std::time::Instant;
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
        self.exec.read(file, offset, len, buf, self.deadline)
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
        let op = validate::write_op_with(file, offset, data.into(), flags, self.exec.limits);
        self.exec.request(file, op, Reply::Count, self.deadline)
    }

    /// [`Executor::write`] with the deadline.
    pub fn write(&self, file: &File, offset: u64, data: impl Into<Vec<u8>>) -> Completion<usize> {
        let op = validate::write_op(file, offset, data.into(), self.exec.limits);
        self.exec.request(file, op, Reply::Count, self.deadline)
    }

    /// [`Executor::fsync`] with the deadline.
    pub fn fsync(&self, file: &File) -> Completion<()> {
        let op = Ok(crate::validate::sync_op(false));
        self.exec.request(file, op, Reply::Unit, self.deadline)
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
        let checked = self
            .exec
            .check_owner(file)
            .and_then(|()| validate::send_file(file, offset, len, dest.as_fd()));
        let (dest, name) = match checked {
            Ok(_) if len == 0 => return Completion::ready(Ok(0)),
            Ok(d) => d,
            Err(e) => return Completion::ready(Err(e)),
        };
        let make = |done| {
            let direct = file.direct_io_align().is_some();
            Box::new(op::send_file::SendFile::new(
                dest, name, offset, len, direct, done,
            )) as Box<dyn FileOp>
        };
        self.exec.request_op(file, Ok(make), self.deadline)
    }

    /// [`Executor::fdatasync`] with the deadline.
    pub fn fdatasync(&self, file: &File) -> Completion<()> {
        let op = Ok(crate::validate::sync_op(true));
        self.exec.request(file, op, Reply::Unit, self.deadline)
    }
}
