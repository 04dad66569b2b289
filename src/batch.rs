//! `Batch`: many requests sent as one message per shard.

use crate::completion::{pair, Completer, Completion};
use crate::deadlined::Sink;
use crate::error::Error;
use crate::executor::Executor;
use crate::file::File;
use crate::routes::ExecShared;
use crate::shard::{IoOp, IoRequest, Message, Reply};
use std::time::Instant;
/// A group of requests sent with one message per shard. Dropping a batch without submitting it
/// fails its completions with [`Error::InvalidArgument`].
#[must_use = "a batch sends nothing until it is submitted; dropped, its completions fail"]
pub struct Batch<'a> {
    pub(crate) exec: &'a Executor,
    /// Placeholder timestamp for requests; `submit` stamps them.
    pub(crate) created: Instant,
    pub(crate) per_shard: Vec<Vec<IoRequest>>,
    /// The files of the batch's requests (each once in a row), kept open until it is sent: a
    /// file whose last handle the caller drops meanwhile closes after the batch.
    pub(crate) held: Vec<File>,
}

/// Added to the batch, answered with a [`Completion`]: the per-operation methods are
/// [`Sink`]'s.
impl Sink for &mut Batch<'_> {
    type Out<T> = Completion<T>;

    #[inline]
    fn routes(&self) -> &ExecShared {
        &self.exec.shared
    }

    fn refuse<T>(self, err: Error, _buf: Vec<u8>) -> Completion<T> {
        Completion::ready(Err(err))
    }

    #[inline]
    fn read_here(self, data: Vec<u8>) -> Completion<Vec<u8>> {
        Completion::ready(Ok(data))
    }

    #[inline]
    fn send<T>(
        self,
        file: &File,
        op: IoOp,
        pending: Option<crate::inline::Pending>,
        reply: fn(Completer<T>) -> Reply,
    ) -> Completion<T> {
        let (c, done) = pair(self.exec.shared.id, file.shard());
        crate::file::hold(&mut self.held, file);
        if let Some(list) = self.per_shard.get_mut(file.shard()) {
            list.push(IoRequest {
                file: file.handle(),
                pending,
                op,
                reply: reply(done),
                at: self.created,
                deadline: None,
            });
        }
        c
    }
}

impl Batch<'_> {
    /// Adds a read (see [`Executor::read`]). A read of cached data is done at once (see
    /// [`ExecutorBuilder::inline_reads`](crate::ExecutorBuilder::inline_reads)), unless a write
    /// of the file is unfinished or added to the batch before it.
    pub fn read(&mut self, file: &File, offset: u64, len: usize) -> Completion<Vec<u8>> {
        self.read_into(file, offset, len, Vec::new())
    }

    /// Adds a read into `buf` (see [`Executor::read_into`]).
    pub fn read_into(
        &mut self,
        file: &File,
        offset: u64,
        len: usize,
        buf: Vec<u8>,
    ) -> Completion<Vec<u8>> {
        Sink::read_into(self, file, offset, len, buf)
    }

    /// Adds a write (see [`Executor::write`]).
    pub fn write(
        &mut self,
        file: &File,
        offset: u64,
        data: impl Into<Vec<u8>>,
    ) -> Completion<usize> {
        Sink::write(self, file, offset, data.into())
    }

    /// Adds an fsync (see [`Executor::fsync`]).
    pub fn fsync(&mut self, file: &File) -> Completion<()> {
        Sink::sync(self, file, false)
    }

    /// Requests in the batch.
    pub fn len(&self) -> usize {
        self.per_shard.iter().map(Vec::len).sum()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends the batch: one message and at most one wake-up per shard. Latency is counted from
    /// here. Never blocks.
    pub fn submit(mut self) {
        let exec = self.exec;
        let now = Instant::now();
        for (shard, mut reqs) in std::mem::take(&mut self.per_shard).into_iter().enumerate() {
            for r in &mut reqs {
                r.at = now;
            }
            if !reqs.is_empty() {
                exec.shared.send_or_fail(shard, Message::Batch(reqs));
            }
        }
        // After the sends: a close these drops may send goes behind the batch.
        self.held.clear();
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        for reqs in self.per_shard.drain(..) {
            if !reqs.is_empty() {
                let e = Error::invalid("batch", "the batch was dropped without submit()");
                Message::Batch(reqs).fail(&e);
            }
        }
    }
}
