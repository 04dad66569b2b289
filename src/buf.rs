//! Owned buffers that come back: [`IoBuf`] (what a write takes) and [`IoBufMut`] (what a read
//! fills), and [`BufCompletion`], whose result carries the buffer back, on success and on error
//! alike, so a server reuses its buffers instead of allocating one per request.
//!
//! The shards move `Vec<u8>`s: a buffer becomes a vector for the trip and is rebuilt from it
//! when the result is taken, on the caller's thread. What that costs, per type:
//!
//! | type | write | read |
//! |---|---|---|
//! | `Vec<u8>` | moved, no copy | moved, no copy: fills up to its **capacity**, its length becomes the count |
//! | `Box<[u8]>` | moved, no copy | moved, no copy: fills up to its **length**, which stays; bytes past the count are zeroed (only a read cut short by the end of the file has any) |
//! | `bytes::Bytes` (feature `bytes`) | moved when it is the only handle on its memory; otherwise copied once, and the original handle comes back | (immutable: no reads) |
//! | `bytes::BytesMut` (feature `bytes`) | moved when it is the only handle on its memory; otherwise copied once | moved when it is the only handle (else a new allocation, nothing copied): fills up to its **capacity**, its length becomes the count |
//!
//! "Moved" may still shift the bytes to the front of their own allocation when the handle is a
//! view that starts past it (a `Bytes` that was `advance`d or sliced).
//!
//! A read replaces the buffer's contents (it does not append). A buffer that fails validation
//! before it is sent (a read of a file opened write-only, a length over
//! [`max_request_size`](crate::ExecutorBuilder::max_request_size)) comes back at once with the
//! error; one that reaches the shard comes back when the kernel is done with it: a cancelled or
//! timed-out request completes only once the kernel has let go of the buffer.
//!
//! The buffer is lost only when the result is (the outer `Err` of a [`BufCompletion`]): a shard
//! thread that died, or a wait that gave up ([`Error::Timeout`],
//! [`Error::WouldDeadlock`]) while the request runs on; and when the executor stops with the
//! request still in the kernel, the memory is leaked on purpose and an empty buffer (a zeroed one
//! for `Box<[u8]>`) comes back with the error.

use crate::completion::Completion;
use crate::error::{Error, Result};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// The result of an operation on an owned buffer, with the buffer: `(result, buffer)`, as in
/// tokio-uring.
pub type BufResult<T, B> = (Result<T>, B);

/// What the shard hands back for a buffer request: the bytes moved (or the error) and the
/// vector the buffer travelled as.
pub(crate) type RawBuf = (Result<u64>, Vec<u8>);

/// An owned buffer a write can take and give back.
///
/// The executor moves `Vec<u8>`s to its shards: [`into_vec`](Self::into_vec) turns the buffer into
/// one (moving its memory where it can) and [`from_vec`](Self::from_vec) rebuilds it afterwards.
/// Implement it for your own buffer type the same way; nothing in it is `unsafe`, as the executor
/// only ever touches the vector. See the [module docs](self) for what each type costs.
pub trait IoBuf: Send + Sized + 'static {
    /// What the buffer keeps aside while its bytes travel as a vector (`()` for most types).
    type Stash: Send + Sync + Unpin + 'static;

    /// The buffer's bytes as a vector, and what [`from_vec`](Self::from_vec) needs to rebuild it.
    fn into_vec(self) -> (Vec<u8>, Self::Stash);

    /// Rebuilds the buffer from the vector coming back and the stash. After a write the vector
    /// holds the bytes `into_vec` gave; after a read ([`IoBufMut`]), exactly the bytes read (its
    /// length is the count). It may also be empty: the executor kept the memory because the
    /// kernel could still touch it (see the [module docs](self)).
    fn from_vec(vec: Vec<u8>, stash: Self::Stash) -> Self;
}

/// An owned buffer a read can fill and give back.
pub trait IoBufMut: IoBuf {
    /// The most bytes a read into this buffer asks for.
    fn read_capacity(&self) -> usize;

    /// The vector the read fills from its start, and the stash for [`IoBuf::from_vec`]. Its
    /// contents are discarded; its allocation is used when it can hold
    /// [`read_capacity`](Self::read_capacity) bytes (otherwise the read grows it as data
    /// arrives).
    fn into_read_vec(self) -> (Vec<u8>, Self::Stash);
}

impl IoBuf for Vec<u8> {
    type Stash = ();

    fn into_vec(self) -> (Vec<u8>, ()) {
        (self, ())
    }

    fn from_vec(vec: Vec<u8>, (): ()) -> Self {
        vec
    }
}

impl IoBufMut for Vec<u8> {
    /// The vector's capacity (`Vec::with_capacity(n)` or `vec![0; n]` read up to `n` bytes; an
    /// empty `Vec::new()` reads nothing).
    fn read_capacity(&self) -> usize {
        self.capacity()
    }

    fn into_read_vec(self) -> (Vec<u8>, ()) {
        (self, ())
    }
}

impl IoBuf for Box<[u8]> {
    /// The slice's length, restored after a read.
    type Stash = usize;

    fn into_vec(self) -> (Vec<u8>, usize) {
        let len = self.len();
        (self.into_vec(), len)
    }

    fn from_vec(mut vec: Vec<u8>, len: usize) -> Self {
        // why: a read fills only its count; the rest of the slice must be initialized bytes.
        // Free when the read filled it (or for a write); `into_boxed_slice` does not reallocate
        // while the capacity is still the slice's length.
        vec.resize(len, 0);
        vec.into_boxed_slice()
    }
}

impl IoBufMut for Box<[u8]> {
    /// The slice's length.
    fn read_capacity(&self) -> usize {
        self.len()
    }

    fn into_read_vec(self) -> (Vec<u8>, usize) {
        IoBuf::into_vec(self)
    }
}

#[cfg(feature = "bytes")]
impl IoBuf for bytes::Bytes {
    /// The original handle, when its memory is shared and the write took a copy.
    type Stash = Option<bytes::Bytes>;

    fn into_vec(self) -> (Vec<u8>, Option<bytes::Bytes>) {
        if self.is_unique() {
            (Vec::from(self), None)
        } else {
            // Other handles (or a static) hold the memory: copy, and hand the original back.
            (self.to_vec(), Some(self))
        }
    }

    fn from_vec(vec: Vec<u8>, stash: Option<bytes::Bytes>) -> Self {
        stash.unwrap_or_else(|| bytes::Bytes::from(vec))
    }
}

#[cfg(feature = "bytes")]
impl IoBuf for bytes::BytesMut {
    type Stash = ();

    fn into_vec(self) -> (Vec<u8>, ()) {
        (Vec::from(self), ())
    }

    fn from_vec(vec: Vec<u8>, (): ()) -> Self {
        // Both steps take the allocation over without copying its bytes.
        bytes::BytesMut::from(bytes::Bytes::from(vec))
    }
}

#[cfg(feature = "bytes")]
impl IoBufMut for bytes::BytesMut {
    /// The buffer's capacity.
    fn read_capacity(&self) -> usize {
        self.capacity()
    }

    fn into_read_vec(mut self) -> (Vec<u8>, ()) {
        // Emptied first, so a shared buffer's conversion copies nothing.
        self.clear();
        (Vec::from(self), ())
    }
}

/// Turns a write's result into std's `write_at` answer: how many bytes landed. A write that
/// failed after some of its bytes were written returns that count (writing the rest again
/// reports the error); one that wrote nothing returns the error.
pub(crate) fn landed(result: Result<u64>) -> Result<usize> {
    match result {
        Ok(n) => Ok(n as usize),
        Err(e) => match e.written() {
            Some(n) if n > 0 => Ok(n as usize),
            _ => Err(e),
        },
    }
}

/// A [`Completion`] whose result carries the operation's buffer back: `(result, buffer)` on
/// success and on error alike (see [`BufResult`]).
///
/// The same handle as a [`Completion`]: [`wait`](Self::wait) blocks (and returns
/// [`Error::WouldDeadlock`] on a shard thread of the same executor), `.await` does not,
/// dropping it cancels the request, and the outer `Err` is what a [`Completion`] would give
/// besides the operation's own result: the buffer is lost only then (a shard that died, a wait
/// that timed out while the request runs on). The buffer is rebuilt from the vector it travelled
/// as when the result is taken, on the caller's thread.
#[must_use = "the buffer comes back only through its BufCompletion"]
pub struct BufCompletion<T, B: IoBuf> {
    raw: Completion<RawBuf>,
    /// `Some` until the result is taken.
    stash: Option<B::Stash>,
    /// The operation's own result, from the bytes moved (or the error).
    finish: fn(Result<u64>) -> Result<T>,
}

impl<T, B: IoBuf> std::fmt::Debug for BufCompletion<T, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufCompletion")
            .field("done", &self.raw.is_done())
            .finish()
    }
}

// The stash is `Unpin` and nothing is pinned in place: polling works through `&mut`.
impl<T, B: IoBuf> Unpin for BufCompletion<T, B> {}

impl<T, B: IoBuf> BufCompletion<T, B> {
    pub(crate) fn new(
        raw: Completion<RawBuf>,
        stash: B::Stash,
        finish: fn(Result<u64>) -> Result<T>,
    ) -> Self {
        BufCompletion {
            raw,
            stash: Some(stash),
            finish,
        }
    }

    /// The result and the buffer rebuilt from the vector that came back.
    fn assemble(
        stash: Option<B::Stash>,
        finish: fn(Result<u64>) -> Result<T>,
        (result, vec): RawBuf,
    ) -> Result<BufResult<T, B>> {
        let stash = stash.ok_or_else(|| {
            Error::invalid("wait", "the result of this completion was already taken")
        })?;
        Ok((finish(result), B::from_vec(vec, stash)))
    }

    /// [`assemble`](Self::assemble) for the `&mut self` methods: the stash is taken only with a
    /// result (a wait that timed out may be repeated).
    fn rebuild(&mut self, raw: Result<RawBuf>) -> Result<BufResult<T, B>> {
        Self::assemble(self.stash.take(), self.finish, raw?)
    }

    /// Blocks until the operation completes, like [`Completion::wait`].
    pub fn wait(self) -> Result<BufResult<T, B>> {
        let BufCompletion { raw, stash, finish } = self;
        Self::assemble(stash, finish, raw.wait()?)
    }

    /// Blocks up to `timeout`, like [`Completion::wait_timeout`]: on
    /// [`Error::Timeout`] the operation (and its buffer) is still in flight, and this
    /// handle can be waited on again.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<BufResult<T, B>> {
        let r = self.raw.wait_timeout(timeout);
        self.rebuild(r)
    }

    /// The result if it has arrived, without blocking (see [`Completion::try_take`]).
    pub fn try_take(&mut self) -> Option<Result<BufResult<T, B>>> {
        let r = self.raw.try_take()?;
        Some(self.rebuild(r))
    }

    /// Whether the result has arrived (and not been taken yet). Never blocks.
    pub fn is_done(&self) -> bool {
        self.raw.is_done()
    }

    /// Asks for the operation to be cancelled (see [`Completion::cancel`]); the buffer still
    /// comes back, with [`Error::Cancelled`] or the operation's real result.
    pub fn cancel(&self) {
        self.raw.cancel();
    }
}

impl<T, B: IoBuf> Future for BufCompletion<T, B> {
    type Output = Result<BufResult<T, B>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match Pin::new(&mut this.raw).poll(cx) {
            Poll::Ready(r) => Poll::Ready(this.rebuild(r)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trip<B: IoBuf>(b: B) -> B {
        let (v, s) = b.into_vec();
        B::from_vec(v, s)
    }

    #[test]
    fn box_keeps_its_length_and_zeroes_past_the_count() {
        let b: Box<[u8]> = vec![9u8; 8].into_boxed_slice();
        assert_eq!(b.read_capacity(), 8);
        let (mut v, len) = b.into_read_vec();
        let ptr = v.as_ptr();
        v.truncate(3); // a read of 3 bytes
        let back = <Box<[u8]> as IoBuf>::from_vec(v, len);
        assert_eq!(&back[..], &[9, 9, 9, 0, 0, 0, 0, 0]);
        assert_eq!(back.as_ptr(), ptr, "the same allocation comes back");
        assert_eq!(&trip(back)[..], &[9, 9, 9, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn vec_reads_to_its_capacity() {
        let v = Vec::<u8>::with_capacity(100);
        assert_eq!(v.read_capacity(), 100);
        assert_eq!(vec![1u8; 5].read_capacity(), 5);
        assert_eq!(trip(vec![1u8, 2]), vec![1, 2]);
    }

    #[test]
    fn landed_is_the_written_prefix() {
        let e = Error::io("write", None, Some(0), libc::EFBIG);
        assert_eq!(landed(Ok(7)), Ok(7));
        assert_eq!(landed(Err(e.clone().with_written(3))), Ok(3));
        assert_eq!(
            landed(Err(e.clone().with_written(0))),
            Err(e.clone().with_written(0))
        );
        assert_eq!(landed(Err(e.clone())), Err(e));
    }

    #[cfg(feature = "bytes")]
    #[test]
    fn bytes_move_when_unique_and_copy_when_shared() {
        let b = bytes::Bytes::from(vec![1u8, 2, 3]);
        let ptr = b.as_ptr();
        let (v, s) = IoBuf::into_vec(b);
        assert_eq!(v.as_ptr(), ptr, "a unique Bytes is moved");
        assert!(s.is_none());
        let b = bytes::Bytes::from(v);
        let keep = b.clone();
        let (v, s) = IoBuf::into_vec(b);
        assert_ne!(v.as_ptr(), keep.as_ptr(), "a shared Bytes is copied");
        assert_eq!(v, [1, 2, 3]);
        let back = <bytes::Bytes as IoBuf>::from_vec(v, s);
        assert_eq!(back.as_ptr(), keep.as_ptr(), "and the original comes back");
        let (v, s) = IoBuf::into_vec(bytes::Bytes::from_static(b"xy"));
        assert_eq!(v, b"xy");
        assert_eq!(<bytes::Bytes as IoBuf>::from_vec(v, s), &b"xy"[..]);

        let mut m = bytes::BytesMut::with_capacity(64);
        m.extend_from_slice(b"abc");
        let ptr = m.as_ptr();
        assert_eq!(m.read_capacity(), 64);
        let (v, ()) = m.into_read_vec();
        assert!(v.is_empty() && v.capacity() >= 64);
        assert_eq!(v.as_ptr(), ptr, "a unique BytesMut is moved");
        let back = <bytes::BytesMut as IoBuf>::from_vec(v, ());
        assert_eq!(back.as_ptr(), ptr);
        assert!(back.capacity() >= 64);
    }
}
