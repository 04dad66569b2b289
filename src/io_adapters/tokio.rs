//! tokio's async I/O traits on [`FileCursor`] (feature `tokio`): `tokio::io::copy`,
//! `tokio_util::io::ReaderStream`, `BufReader`, ... work on it as on a `tokio::fs::File`. No
//! tokio runtime is needed: the cursor's requests complete on the shards, and their wakers
//! are called from there.

use super::FileCursor;
use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

impl AsyncRead for FileCursor {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let want = buf.remaining();
        self.get_mut()
            .read_step(Some(cx), want, |data| buf.put_slice(data))
            .map_ok(|_| ())
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
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_idle(Some(cx))
    }
}

impl AsyncSeek for FileCursor {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        self.get_mut().start_seek_step(position)
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        self.get_mut().poll_seek_done(cx)
    }
}
