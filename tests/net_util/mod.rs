//! Helpers shared by the receive-buffer tests (`tests/net_recv_pooled.rs`,
//! `tests/net_recv_stream.rs`; not a test target of its own: each includes it with
//! `mod net_util;`): an executor of one shard with a given receive ring, and a listener that
//! serves each connection in a task.

#![allow(dead_code)] // each test binary uses a different subset

use ringshard::{Backend, Executor, TcpListener, TcpStream};
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// One shard, `count` receive buffers of `size` bytes.
pub fn exec_with(count: u16, size: usize) -> Arc<Executor> {
    Arc::new(
        Executor::builder()
            .shards(1)
            .recv_buffers(count, size)
            .build()
            .expect("executor"),
    )
}

/// Shard 0's stats.
pub fn stats(exec: &Executor) -> ringshard::ShardStats {
    exec.stats().shards[0].clone()
}

/// Whether this executor's shard receives from a provided-buffer ring.
pub fn has_ring(exec: &Executor) -> bool {
    let st = stats(exec);
    st.backend == Backend::IoUring && st.recv_buffers > 0
}

/// Binds a listener on shard 0 and runs `serve` with each connection in a task of its own;
/// waits up to `hang` for its address.
pub fn serve<F, Fut>(exec: &Executor, hang: Duration, serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let (tx, rx) = mpsc::channel();
    exec.spawn_on(0, async move {
        let local = ringshard::local().expect("on a shard");
        let l = TcpListener::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        tx.send(l.local_addr()).unwrap();
        loop {
            let (s, _) = match l.accept().await {
                Ok(c) => c,
                Err(_) => return,
            };
            local.spawn_local(serve(s)).detach();
        }
    })
    .detach();
    rx.recv_timeout(hang).expect("listener address")
}

/// Polls `fut` once: whether it is still pending.
pub fn poll_once<F: std::future::Future>(fut: std::pin::Pin<&mut F>) -> bool {
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = std::task::Waker::from(Arc::new(Noop));
    let mut cx = std::task::Context::from_waker(&waker);
    fut.poll(&mut cx).is_pending()
}
