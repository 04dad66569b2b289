//! The futures crates' async I/O traits on [`FileCursor`] (feature `futures-io`):
//! `futures::io::copy`, `AsyncReadExt`, ... work on it. Any executor (or none) drives them: the
//! cursor's requests complete on the shards, and their wakers are called from there.

use super::{FileCursor, Pending};
use futures_io::{AsyncRead, AsyncSeek, AsyncWrite};
use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::task::{Context, Poll};

impl AsyncRead for FileCursor {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let want = dst.len();
        self.get_mut().read_step(Some(cx), want, |data| {
            dst[..data.len()].copy_from_slice(data)
        })
    }
}

impl AsyncWrite for FileCursor {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        src: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_step(cx, src)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_idle(Some(cx))
    }

    /// Waits for the write in flight, like `poll_flush`; the file stays open (it closes when
    /// its last handle drops, or with [`File::close`](crate::File::close)).
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_idle(Some(cx))
    }
}

impl AsyncSeek for FileCursor {
    /// Starts the seek to `pos` unless one is under way (a call again after `Pending` goes on
    /// with the seek it started), and completes it.
    fn poll_seek(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        pos: SeekFrom,
    ) -> Poll<io::Result<u64>> {
        let this = self.get_mut();
        if this.seek.is_none() && !matches!(this.pending, Pending::Size(..)) {
            this.start_seek_step(pos)?;
        }
        this.poll_seek_done(cx)
    }
}
