//! Operations on the file itself: `file.read_at(..)`, `file.write_all_at(..)`, `file.sync_all()`,
//! ... as std, tokio and tokio-uring put them on their files. A [`File`] knows its executor, so
//! these need none at hand; each is the per-operation method of the [`Executor`] method of the
//! same operation (`deadlined.rs`), so checks, order, data paths, statistics and errors are
//! those of the executor's.
//!
//! [`Executor`]: crate::Executor

use crate::buf::{self, BufCompletion, IoBuf, IoBufMut, RawBuf};
use crate::completion::Completion;
use crate::deadlined::{Deadlined, Owned, Sink};
use crate::file::File;
use crate::op::{self, FileOp};
use crate::routes::{close, fadvise, link_into};
use crate::shard::Reply;
use crate::validate;

/// Operations on the file. Each returns a [`Completion`] (`.wait()` blocks, `.await` does not)
/// and never blocks to send. They are the [`Executor`](crate::Executor)'s operations of the same
/// names (`fsync` is [`sync_all`](File::sync_all), `fdatasync`
/// [`sync_data`](File::sync_data)), on the executor that opened the file; once it has shut down
/// they fail with [`Error::Shutdown`](crate::Error::Shutdown).
///
/// ```
/// # fn main() -> ringshard::Result<()> {
/// use ringshard::{Executor, OpenOptions};
/// let exec = Executor::builder().shards(1).build()?;
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("f");
/// let file = exec.open(&path, OpenOptions::new().read(true).write(true).create(true)).wait()?;
/// file.write_all_at(0, b"hello, file").wait()?;
/// file.sync_data().wait()?;
/// assert_eq!(file.read_at(7, 100).wait()?, b"file");      // fewer only at end of file
/// assert_eq!(file.size().wait()?, 11);
///
/// // Buffers that come back, on error too:
/// let (n, buf) = file.read_buf_at(Vec::with_capacity(5), 0).wait()?;
/// assert_eq!((n?, &buf[..]), (5, &b"hello"[..]));
/// let (n, buf) = file.write_buf_at(buf, 11).wait()?;       // reuse it
/// assert_eq!((n?, buf.len()), (5, 5));
/// file.close().wait()?;
/// # Ok(()) }
/// ```
impl File {
    /// What `f` asks of the one face of the per-operation methods ([`Deadlined`], with no
    /// deadline) on this file's routes: the file methods that mean the same as an `Executor`
    /// method are that method.
    fn face<T>(&self, f: impl FnOnce(Deadlined<'_>) -> Completion<T>) -> Completion<T> {
        self.route(|r| f(Deadlined::new(r, None)))
    }

    /// A read of up to `len` bytes at `offset` into `vec` (its allocation reused), with the
    /// vector back whatever happens: [`Deadlined`]'s read, answered with the buffer ([`Owned`]).
    /// Like every buffered read, it is done on the caller's thread when its data is cached (see
    /// `crate::inline`).
    pub(crate) fn read_raw(&self, vec: Vec<u8>, len: usize, offset: u64) -> Completion<RawBuf> {
        match self.routes() {
            Ok(r) => Sink::read_into(Owned(Deadlined::new(r, None)), self, offset, len, vec),
            Err(e) => Completion::ready(Ok((Err(e), vec))),
        }
    }

    /// A write of all of `vec` at `offset`, with the vector back whatever happens.
    pub(crate) fn write_raw(&self, vec: Vec<u8>, offset: u64) -> Completion<RawBuf> {
        match self.routes() {
            Ok(r) => Sink::write(Owned(Deadlined::new(r, None)), self, offset, vec),
            Err(e) => Completion::ready(Ok((Err(e), vec))),
        }
    }

    /// Reads up to `len` bytes at `offset` into a new vector. Fewer come back only at end of
    /// file (short reads are continued), so a result shorter than `len` means the file ends
    /// there. See [`Executor::read`](crate::Executor::read).
    pub fn read_at(&self, offset: u64, len: usize) -> Completion<Vec<u8>> {
        self.read_into(offset, len, Vec::new())
    }

    /// [`read_at`](Self::read_at) into `buf`, whose allocation is reused (its contents are
    /// replaced). On error the vector is dropped: [`read_buf_at`](Self::read_buf_at) gives it
    /// back.
    pub fn read_into(&self, offset: u64, len: usize, buf: Vec<u8>) -> Completion<Vec<u8>> {
        self.face(|d| d.read_into(self, offset, len, buf))
    }

    /// [`read_at`](Self::read_at) with per-operation flags ([`RwFlags`](crate::RwFlags):
    /// `NOWAIT`, `HIPRI`); see [`Executor::read_with`](crate::Executor::read_with).
    pub fn read_with(
        &self,
        offset: u64,
        len: usize,
        flags: crate::op::rw::RwFlags,
    ) -> Completion<Vec<u8>> {
        self.face(|d| d.read_with(self, offset, len, flags))
    }

    /// Reads into `buf` at `offset`, up to [`buf.read_capacity()`](IoBufMut::read_capacity)
    /// bytes (a `Vec`'s capacity, a `Box<[u8]>`'s length), and gives the buffer back with the
    /// count, on error too. As with [`read_at`](Self::read_at), fewer bytes come back only at
    /// end of file. See [`crate::buf`] for what each buffer type costs.
    pub fn read_buf_at<B: IoBufMut>(&self, buf: B, offset: u64) -> BufCompletion<usize, B> {
        let len = buf.read_capacity();
        let (vec, stash) = buf.into_read_vec();
        BufCompletion::new(self.read_raw(vec, len, offset), stash, |r| {
            r.map(|n| n as usize)
        })
    }

    /// Reads into buffers of `lens` bytes at `offset` with one `readv`; see
    /// [`Executor::read_vectored`](crate::Executor::read_vectored).
    pub fn read_vectored(&self, offset: u64, lens: &[usize]) -> Completion<Vec<Vec<u8>>> {
        self.face(|d| d.read_vectored(self, offset, lens))
    }

    /// Writes `data` at `offset` and returns how many bytes landed, as std's
    /// [`FileExt::write_at`](std::os::unix::fs::FileExt::write_at): all of them, unless an
    /// error stopped the write part-way, when it returns the count written before it (writing
    /// the rest again reports the error). An error comes back only when nothing was written.
    /// Short writes are continued, so fewer bytes always mean that an error stopped the write.
    /// For "all or an error", use [`write_all_at`](Self::write_all_at).
    pub fn write_at(&self, offset: u64, data: impl Into<Vec<u8>>) -> Completion<usize> {
        self.write_with(offset, data, crate::op::rw::RwFlags::empty())
    }

    /// Writes all of `data` at `offset`, or fails: the error's
    /// [`written`](crate::Error::written) says how much of it landed. The same operation as
    /// [`Executor::write`](crate::Executor::write).
    pub fn write_all_at(&self, offset: u64, data: impl Into<Vec<u8>>) -> Completion<()> {
        let data = data.into();
        self.face(|d| {
            Sink::write_as(
                d,
                self,
                offset,
                data,
                crate::op::rw::RwFlags::empty(),
                Reply::Unit,
            )
        })
    }

    /// [`write_at`](Self::write_at) with per-operation flags ([`RwFlags`](crate::RwFlags):
    /// `DSYNC`, `SYNC`, `NOWAIT`, `HIPRI`, `APPEND`); see
    /// [`Executor::write_with`](crate::Executor::write_with). Like `write_at`, it returns how many
    /// bytes landed (a `NOWAIT` write that blocked part-way returns what it wrote).
    pub fn write_with(
        &self,
        offset: u64,
        data: impl Into<Vec<u8>>,
        flags: crate::op::rw::RwFlags,
    ) -> Completion<usize> {
        let data = data.into();
        self.face(|d| Sink::write_as(d, self, offset, data, flags, Reply::Landed))
    }

    /// [`write_at`](Self::write_at) from an owned buffer, given back with the count, on error
    /// too. See [`crate::buf`] for what each buffer type costs (a `Vec` or `Box<[u8]>` is
    /// moved, never copied).
    pub fn write_buf_at<B: IoBuf>(&self, buf: B, offset: u64) -> BufCompletion<usize, B> {
        let (vec, stash) = buf.into_vec();
        BufCompletion::new(self.write_raw(vec, offset), stash, buf::landed)
    }

    /// [`write_all_at`](Self::write_all_at) from an owned buffer, given back on error too.
    pub fn write_all_buf_at<B: IoBuf>(&self, buf: B, offset: u64) -> BufCompletion<(), B> {
        let (vec, stash) = buf.into_vec();
        BufCompletion::new(self.write_raw(vec, offset), stash, |r| r.map(|_| ()))
    }

    /// Writes `bufs` one after another at `offset` with `writev`; see
    /// [`Executor::write_vectored`](crate::Executor::write_vectored).
    pub fn write_vectored(&self, offset: u64, bufs: Vec<Vec<u8>>) -> Completion<usize> {
        self.face(|d| d.write_vectored(self, offset, bufs))
    }

    /// Appends `data` at the end of a file opened with
    /// [`append(true)`](crate::OpenOptions::append) and says where it landed; see
    /// [`Executor::append`](crate::Executor::append).
    pub fn append(&self, data: impl Into<Vec<u8>>) -> Completion<crate::op::append::Appended> {
        self.face(|d| d.append(self, data))
    }

    /// fsync: completes once every earlier write to the file (through this executor) and its
    /// metadata are durable ([`Executor::fsync`](crate::Executor::fsync)).
    pub fn sync_all(&self) -> Completion<()> {
        self.face(|d| d.fsync(self))
    }

    /// fdatasync: [`sync_all`](Self::sync_all) without the metadata reads do not need
    /// ([`Executor::fdatasync`](crate::Executor::fdatasync)).
    pub fn sync_data(&self) -> Completion<()> {
        self.face(|d| d.fdatasync(self))
    }

    /// `sync_file_range(2)`; see [`Executor::sync_file_range`](crate::Executor::sync_file_range).
    pub fn sync_file_range(
        &self,
        offset: u64,
        len: u64,
        flags: crate::op::sync_range::SyncRangeFlags,
    ) -> Completion<()> {
        self.face(|d| d.sync_file_range(self, offset, len, flags))
    }

    /// The file's metadata (`statx`), after every earlier operation on it.
    pub fn metadata(&self) -> Completion<crate::op::statx::Metadata> {
        self.face(|d| d.metadata(self))
    }

    /// The file's size, after every earlier operation on it.
    pub fn size(&self) -> Completion<u64> {
        self.face(|d| d.size(self))
    }

    /// Sets the file's length (`ftruncate`); needs write access. See
    /// [`Executor::set_len`](crate::Executor::set_len).
    pub fn set_len(&self, len: u64) -> Completion<()> {
        self.face(|d| d.set_len(self, len))
    }

    /// `fallocate(2)` with `mode`; see [`Executor::fallocate`](crate::Executor::fallocate).
    pub fn fallocate(
        &self,
        mode: crate::op::fallocate::FallocateMode,
        offset: u64,
        len: u64,
    ) -> Completion<()> {
        let op = validate::fallocate_op(mode, offset, len);
        self.route(|r| r.request(self, op, Reply::Unit, None))
    }

    /// `posix_fadvise(2)`: advice about the file's page cache for `len` bytes at `offset` (0: to
    /// the end of the file; at most 4 GiB - 1), after earlier writes to the file. See
    /// [`Executor::fadvise`](crate::Executor::fadvise).
    pub fn fadvise(
        &self,
        offset: u64,
        len: u64,
        advice: crate::op::fadvise::Advice,
    ) -> Completion<()> {
        fadvise(self, offset, len, advice, None)
    }

    /// Gives the file the name `path` (`linkat` of its descriptor, IORING_OP_LINKAT), after
    /// every earlier operation on it: the way to publish a file opened with
    /// [`tmpfile(true)`](crate::OpenOptions::tmpfile) once it is written, so that `path`
    /// appears with all of its data at once (add [`sync_all`](Self::sync_all) before it for
    /// durability, and an fsync of the directory after). Fails with EEXIST if `path` exists
    /// (to replace a file, link to a temporary name and [`rename`](crate::Executor::rename)),
    /// EXDEV if `path` is on another filesystem. Works for any user: the descriptor is named as
    /// `/proc/self/fd/N`, so /proc must be mounted. Errors name both paths
    /// ([`Error::PathPair`](crate::Error::PathPair), op `"link_into"`). See
    /// [`Executor::link_file`](crate::Executor::link_file).
    pub fn link_into(&self, path: impl AsRef<std::path::Path>) -> Completion<()> {
        link_into(self, path.as_ref(), None)
    }

    /// The entries of this directory handle (from [`open_dir`](crate::Executor::open_dir) or
    /// [`OpenOptions::directory`](crate::OpenOptions::directory)), from its start, after every
    /// earlier operation on it: the listing of
    /// [`Executor::read_dir`](crate::Executor::read_dir), on the handle's descriptor and its
    /// shard. Listings of one handle run one at a time. ENOTDIR on a handle of a file.
    pub fn read_dir(&self) -> Completion<Vec<crate::op::read_dir::DirEntry>> {
        let make = |done| Box::new(op::read_dir::ReadDir::of_handle(done)) as Box<dyn FileOp>;
        self.route(|r| r.request_op(self, Ok(make), None))
    }

    /// Copies `len` bytes at `offset` of this file to `dst_offset` of `dst` in the kernel;
    /// returns the bytes copied (fewer only where this file ends). See
    /// [`Executor::copy_file_range`](crate::Executor::copy_file_range).
    pub fn copy_range_to(
        &self,
        offset: u64,
        dst: &File,
        dst_offset: u64,
        len: u64,
    ) -> Completion<u64> {
        use crate::op::copy_range::How;
        self.route(|r| r.copy_range(How::Copy, self, offset, dst, dst_offset, len, None))
    }

    /// Sends `len` bytes at `offset` of this file to `dest` (a socket, pipe or FIFO) without
    /// passing them through user space; returns the bytes sent (fewer only where this file
    /// ends). See [`Executor::send_file`](crate::Executor::send_file).
    pub fn send_to(&self, offset: u64, len: u64, dest: impl std::os::fd::AsFd) -> Completion<u64> {
        self.face(|d| d.send_file(self, offset, len, dest))
    }

    /// Shares `len` bytes at `offset` of this file with `dst_offset` of `dst` (reflink,
    /// `FICLONERANGE`); returns `len`. See
    /// [`Executor::clone_range`](crate::Executor::clone_range).
    pub fn clone_range_to(
        &self,
        offset: u64,
        dst: &File,
        dst_offset: u64,
        len: u64,
    ) -> Completion<u64> {
        use crate::op::copy_range::How;
        self.route(|r| r.copy_range(How::Clone, self, offset, dst, dst_offset, len, None))
    }

    /// Closes the file after every earlier operation on it and reports errors; operations on any
    /// other clone of the handle then fail with [`Error::BadHandle`](crate::Error::BadHandle). Dropping the last
    /// clone closes it too, without a report.
    pub fn close(self) -> Completion<()> {
        close(&self)
    }

    /// A cursor at position 0 for `std::io::Read`/`Write`/`Seek` (blocking) and tokio's or the
    /// futures crates' async I/O traits (features `tokio`, `futures-io`): see
    /// [`FileCursor`](crate::FileCursor).
    pub fn cursor(&self) -> crate::io_adapters::FileCursor {
        crate::io_adapters::FileCursor::new(self.clone(), 0)
    }
}
