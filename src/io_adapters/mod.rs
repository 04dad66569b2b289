//! [`FileCursor`]: a [`File`] and a position, for code written against `std::io` or the async
//! I/O traits (`tokio::io::copy`, `tokio_util::io::ReaderStream`, hyper bodies, ...). The
//! blocking std impls are here; `tokio.rs` and `futures_io.rs` hold the async ones (features
//! `tokio` and `futures-io`). Both drive one state machine: at most one operation in flight,
//! polled (async) or waited for (std).

use crate::buf::{landed, RawBuf};
use crate::completion::Completion;
use crate::error::Result;
use crate::file::File;
use std::future::Future;
use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

#[cfg(feature = "futures-io")]
mod futures_io;
#[cfg(feature = "tokio")]
mod tokio;

/// A [`File`] and a position: `std::io::Read`, `Write` and `Seek`, and with the `tokio` feature
/// tokio's `AsyncRead`, `AsyncWrite` and `AsyncSeek`, and with `futures-io` the futures crates'
/// (`futures::io::AsyncRead`, ...). Made by [`File::cursor`] or [`FileCursor::new`].
///
/// Each read or write is one request at the cursor's position, which then moves past the bytes
/// moved. Data is copied once between your slice and the vector the request carries (the
/// cursor keeps one and reuses it); a read or write asks for at most
/// [`max_request_size`](crate::ExecutorBuilder::max_request_size) bytes at a time. A read
/// returns fewer bytes than asked only at end of file (0 there).
///
/// **The std impls block the calling thread** until the request completes (never call them on
/// an async runtime's thread; on a shard thread of the same executor they fail with
/// [`WouldDeadlock`](crate::Error::WouldDeadlock)). A std `write` returns how many bytes
/// landed, as [`File::write_at`] does; `flush` waits for nothing more (the data is in the page
/// cache: use [`File::sync_all`] for durability).
///
/// **The async impls never block**: they keep at most one request in flight and poll it. An
/// async write is handed to the shard and reported written at once (like `tokio::fs::File`);
/// the next operation on the cursor, or `flush`/`shutdown` (`close`), waits for it and reports
/// its error, and after an error the position is just past what landed. A cursor dropped with a
/// write in flight lets that write land (nobody sees its result; flush first to see errors);
/// a read in flight is cancelled. Requests on one file run in the order sent, so a write made
/// through the cursor lands before anything sent on the file after it, cursor or not.
///
/// Seeking from the end asks the shard for the file's size (after every earlier operation on
/// it). On a file opened with O_APPEND, writes go to the end whatever the position; on an
/// O_DIRECT file, positions and lengths must be multiples of 4096.
pub struct FileCursor {
    file: File,
    pos: u64,
    /// The vector requests carry, reused from one to the next.
    spare: Vec<u8>,
    /// The one operation in flight.
    pending: Pending,
    /// A seek asked for and not applied yet (it waits for the operation in flight).
    seek: Option<SeekTo>,
}

/// The operation a cursor has in flight.
enum Pending {
    Idle,
    /// A read at the position, for the `poll_read` that started it.
    Read(Completion<RawBuf>),
    /// A write already counted in the position (write-behind), and where it started. Only the
    /// async impls make one.
    #[cfg_attr(not(any(feature = "tokio", feature = "futures-io")), allow(dead_code))]
    Write(Completion<RawBuf>, u64),
    /// The file's size, for a seek `d` bytes from the end.
    Size(Completion<u64>, i64),
}

/// What an operation in flight came to.
enum Outcome {
    Read(Result<RawBuf>),
    Write(Result<RawBuf>, u64),
    Size(Result<u64>, i64),
}

/// Where a seek goes once the operation in flight is done.
#[derive(Debug, Clone, Copy)]
enum SeekTo {
    Start(u64),
    End(i64),
}

impl Pending {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outcome>> {
        let outcome = match self {
            Pending::Idle => return Poll::Ready(None),
            Pending::Read(c) => Outcome::Read(ready!(Pin::new(c).poll(cx))),
            Pending::Write(c, start) => Outcome::Write(ready!(Pin::new(c).poll(cx)), *start),
            Pending::Size(c, d) => Outcome::Size(ready!(Pin::new(c).poll(cx)), *d),
        };
        *self = Pending::Idle;
        Poll::Ready(Some(outcome))
    }

    /// Blocks until the operation in flight is done.
    fn wait(&mut self) -> Option<Outcome> {
        Some(match std::mem::replace(self, Pending::Idle) {
            Pending::Idle => return None,
            Pending::Read(c) => Outcome::Read(c.wait()),
            Pending::Write(c, start) => Outcome::Write(c.wait(), start),
            Pending::Size(c, d) => Outcome::Size(c.wait(), d),
        })
    }
}

/// `base + d`, or the error std gives for a seek before the start (or past `u64::MAX`).
fn offset_by(base: u64, d: i64) -> io::Result<u64> {
    base.checked_add_signed(d).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("seek to {base} {d:+}: before the start of the file (or past u64::MAX)"),
        )
    })
}

/// The value of a step taken without a context: every step waited, so it is ready.
fn waited<T>(p: Poll<io::Result<T>>) -> io::Result<T> {
    match p {
        Poll::Ready(r) => r,
        Poll::Pending => Err(io::Error::other(
            "ringshard: a blocking step did not finish",
        )),
    }
}

impl FileCursor {
    /// A cursor on `file` at `pos`.
    pub fn new(file: File, pos: u64) -> Self {
        FileCursor {
            file,
            pos,
            spare: Vec::new(),
            pending: Pending::Idle,
            seek: None,
        }
    }

    /// The position: where the next read or write goes. A seek started with tokio's
    /// `start_seek` and not completed yet is not counted.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The file back (a write in flight still lands: see the type's docs).
    pub fn into_file(self) -> File {
        self.file.clone()
    }

    /// The most bytes one request asks for.
    fn max_chunk(&self) -> usize {
        // A file without routes fails every request; any size does for it.
        self.file
            .routes()
            .map_or(crate::validate::DEFAULT_MAX_REQUEST_SIZE, |r| {
                r.limits.max_request
            })
    }

    /// The outcome of the operation in flight: polled with `cx`, or waited for without.
    fn step(&mut self, cx: Option<&mut Context<'_>>) -> Poll<Option<Outcome>> {
        match cx {
            Some(cx) => self.pending.poll(cx),
            None => Poll::Ready(self.pending.wait()),
        }
    }

    /// Finishes the operation in flight (reporting a write's error) and applies the seek asked
    /// for: ready once nothing is in flight and the position is settled.
    fn poll_idle(&mut self, mut cx: Option<&mut Context<'_>>) -> Poll<io::Result<()>> {
        loop {
            match ready!(self.step(cx.as_deref_mut())) {
                Some(outcome) => self.settle(outcome)?,
                None => match self.seek.take() {
                    None => return Poll::Ready(Ok(())),
                    Some(SeekTo::Start(p)) => self.pos = p,
                    Some(SeekTo::End(d)) => self.pending = Pending::Size(self.file.size(), d),
                },
            }
        }
    }

    /// Takes in what an operation came to.
    fn settle(&mut self, outcome: Outcome) -> io::Result<()> {
        match outcome {
            // A read whose `poll_read` went away (or was overtaken by a seek): only its buffer.
            Outcome::Read(r) => {
                if let Ok((_, vec)) = r {
                    self.spare = vec;
                }
                Ok(())
            }
            Outcome::Write(r, start) => match r {
                Ok((Ok(_), vec)) => {
                    self.spare = vec;
                    Ok(())
                }
                Ok((Err(e), vec)) => {
                    self.spare = vec;
                    self.pos = start.saturating_add(e.written().unwrap_or(0));
                    Err(e.into())
                }
                Err(e) => {
                    self.pos = start;
                    Err(e.into())
                }
            },
            Outcome::Size(r, d) => {
                self.pos = offset_by(r?, d)?;
                Ok(())
            }
        }
    }

    /// Reads up to `want` bytes at the position into `put`: continues the read in flight, or
    /// starts one once the cursor is idle.
    fn read_step(
        &mut self,
        mut cx: Option<&mut Context<'_>>,
        want: usize,
        put: impl FnOnce(&[u8]),
    ) -> Poll<io::Result<usize>> {
        if want == 0 {
            return Poll::Ready(Ok(0));
        }
        let c = match std::mem::replace(&mut self.pending, Pending::Idle) {
            Pending::Read(c) if self.seek.is_none() => c,
            other => {
                self.pending = other;
                ready!(self.poll_idle(cx.as_deref_mut()))?;
                let len = want.min(self.max_chunk());
                self.file
                    .read_raw(std::mem::take(&mut self.spare), len, self.pos)
            }
        };
        let r = match cx {
            Some(cx) => {
                let mut c = c;
                match Pin::new(&mut c).poll(cx) {
                    Poll::Ready(r) => r,
                    Poll::Pending => {
                        self.pending = Pending::Read(c);
                        return Poll::Pending;
                    }
                }
            }
            None => c.wait(),
        };
        let (result, vec) = r?;
        let n = match result {
            // A read started for a longer `want` (an earlier poll) gives only what fits now.
            Ok(n) => (n as usize).min(want).min(vec.len()),
            Err(e) => {
                self.spare = vec;
                return Poll::Ready(Err(e.into()));
            }
        };
        put(&vec[..n]);
        self.pos = self.pos.saturating_add(n as u64);
        self.spare = vec;
        Poll::Ready(Ok(n))
    }

    /// `src` (up to one request's worth) as the vector a write carries.
    fn write_vec(&mut self, src: &[u8]) -> Vec<u8> {
        let n = src.len().min(self.max_chunk());
        let mut vec = std::mem::take(&mut self.spare);
        vec.clear();
        vec.extend_from_slice(&src[..n]);
        vec
    }

    /// The async write: hands `src` to the shard and counts it written (write-behind); the
    /// next step waits for it. A request refused before it left (a read-only file) fails here.
    #[cfg_attr(not(any(feature = "tokio", feature = "futures-io")), allow(dead_code))]
    fn poll_write_step(&mut self, cx: &mut Context<'_>, src: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_idle(Some(cx)))?;
        if src.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let vec = self.write_vec(src);
        let n = vec.len();
        let start = self.pos;
        let mut c = self.file.write_raw(vec, start);
        self.pos = start.saturating_add(n as u64);
        if let Some(r) = c.try_take() {
            self.settle(Outcome::Write(r, start))?;
        } else {
            self.pending = Pending::Write(c, start);
        }
        Poll::Ready(Ok(n))
    }

    /// The async seek's first half: records where to go (from the current position for
    /// `Current`); the move happens once the operation in flight is done.
    fn start_seek_step(&mut self, to: SeekFrom) -> io::Result<()> {
        if self.seek.is_some() || matches!(self.pending, Pending::Size(..)) {
            return Err(io::Error::other(
                "a seek is already in progress on this FileCursor: complete it first \
                 (poll_complete) before starting another",
            ));
        }
        self.seek = Some(match to {
            SeekFrom::Start(p) => SeekTo::Start(p),
            SeekFrom::Current(d) => SeekTo::Start(offset_by(self.pos, d)?),
            SeekFrom::End(d) => SeekTo::End(d),
        });
        Ok(())
    }

    /// The async seek's second half: the position once it is settled.
    #[cfg_attr(not(any(feature = "tokio", feature = "futures-io")), allow(dead_code))]
    fn poll_seek_done(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        ready!(self.poll_idle(Some(cx)))?;
        Poll::Ready(Ok(self.pos))
    }
}

impl std::fmt::Debug for FileCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCursor")
            .field("file", &self.file)
            .field("pos", &self.pos)
            .field("busy", &!matches!(self.pending, Pending::Idle))
            .finish()
    }
}

impl Drop for FileCursor {
    fn drop(&mut self) {
        // The caller was told this write was made: let it land rather than cancel it.
        if let Pending::Write(c, _) = std::mem::replace(&mut self.pending, Pending::Idle) {
            c.detach();
        }
    }
}

/// Blocks the calling thread for each read (see [`FileCursor`]).
impl io::Read for FileCursor {
    fn read(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        let want = dst.len();
        waited(self.read_step(None, want, |data| dst[..data.len()].copy_from_slice(data)))
    }
}

/// Blocks the calling thread for each write (see [`FileCursor`]).
impl io::Write for FileCursor {
    /// Writes `src` (up to one request's worth) at the position and returns how many bytes
    /// landed ([`File::write_at`]'s count).
    fn write(&mut self, src: &[u8]) -> io::Result<usize> {
        waited(self.poll_idle(None))?;
        if src.is_empty() {
            return Ok(0);
        }
        let vec = self.write_vec(src);
        let (result, vec) = self.file.write_raw(vec, self.pos).wait()?;
        self.spare = vec;
        let n = landed(result)?;
        self.pos = self.pos.saturating_add(n as u64);
        Ok(n)
    }

    /// Waits for an async write still in flight; the data is then in the page cache (not
    /// necessarily on disk: [`File::sync_all`]).
    fn flush(&mut self) -> io::Result<()> {
        waited(self.poll_idle(None))
    }
}

/// Blocks the calling thread (for the size, with `SeekFrom::End`; see [`FileCursor`]).
impl io::Seek for FileCursor {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        waited(self.poll_idle(None))?;
        self.start_seek_step(to)?;
        waited(self.poll_idle(None))?;
        Ok(self.pos)
    }

    fn stream_position(&mut self) -> io::Result<u64> {
        waited(self.poll_idle(None))?;
        Ok(self.pos)
    }
}
