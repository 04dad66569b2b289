//! Which public types are `Send` and `Sync`: checked at compile time, so that a change that
//! takes one away (a new field holding an `Rc`, a raw pointer, a `dyn` without bounds) fails
//! here instead of in a user's code. Types deliberately not `Send` or `Sync` are listed with why.

use ringshard::{
    Appended, Batch, BufCompletion, BufferPoolStats, Completion, Deadlined, Done, Error, Executor,
    ExecutorBuilder, ExecutorStats, File, FileCursor, JoinHandle, LatencySummary, LocalShard,
    MemPolicy, Metadata, OpKind, OpenOptions, PendingFds, Placement, PoolBuf, RegisteredBufferPool,
    RingConfig, Session, ShardContext, ShardStats, Sharded, Sleep, Topology,
};
use std::rc::Rc;

fn send_sync<T: Send + Sync>() {}
fn send<T: Send>() {}

/// Compiles only if `T` is not `Send` (two blanket impls make the call ambiguous for `Send`
/// types: the `static_assertions::assert_not_impl_any` trick).
trait NotSend<A> {
    fn check() {}
}
impl<T: ?Sized> NotSend<()> for T {}
impl<T: ?Sized + Send> NotSend<u8> for T {}

/// The same for `Sync`.
trait NotSync<A> {
    fn check() {}
}
impl<T: ?Sized> NotSync<()> for T {}
impl<T: ?Sized + Sync> NotSync<u8> for T {}

#[test]
fn shared_handles_are_send_and_sync() {
    // Shared between threads (by reference or in an Arc).
    send_sync::<Executor>();
    send_sync::<ExecutorBuilder>();
    send_sync::<File>();
    send_sync::<OpenOptions>();
    send_sync::<FileCursor>();
    send_sync::<JoinHandle<Vec<u8>>>();
    send_sync::<LocalShard>();
    send_sync::<Sleep>();
    send_sync::<PendingFds>();
    // The handle of per-shard state is Send + Sync whatever T is: the values never leave their
    // shards (an Rc is fine).
    send_sync::<Sharded<Rc<std::cell::RefCell<Vec<u8>>>>>();
    // Results, errors and plain data.
    send_sync::<Error>();
    send_sync::<Metadata>();
    send_sync::<Appended>();
    send_sync::<Done>();
    send_sync::<ExecutorStats>();
    send_sync::<ShardStats>();
    send_sync::<LatencySummary>();
    send_sync::<BufferPoolStats>();
    send_sync::<OpKind>();
    send_sync::<MemPolicy>();
    send_sync::<Topology>();
    send_sync::<Placement>();
    send_sync::<RingConfig>();
    // Sockets, and a connection's stream of chunks: its `next` future can go to a
    // work-stealing runtime.
    send_sync::<ringshard::TcpStream>();
    send_sync::<ringshard::net::RecvStream>();
    send_sync::<ringshard::net::RecvBuf>();
    fn next_is_send(s: &mut ringshard::net::RecvStream) {
        send_value(s.next());
    }
    let _ = next_is_send;
}

/// Compiles only for a `Send` value (a future, whose type has no name to write).
fn send_value<T: Send>(_: T) {}

#[test]
fn single_owner_types_are_send() {
    // Waited for or polled through `&mut self` / by value by one owner at a time: Send (move
    // them to the thread or task that waits), not Sync (the op they carry, a `dyn FileOp`, is
    // not; nothing needs to share a `&Completion`).
    send::<Completion<Vec<u8>>>();
    send::<BufCompletion<usize, Vec<u8>>>();
    send::<Batch<'static>>();
    // A caller-owned completion queue: submit and reap through `&mut self`.
    send::<Session>();
    send::<Deadlined<'static>>();
    // Owns a ring's registered memory; used through `&mut` by the thread that drives its ring.
    send::<RegisteredBufferPool>();
    // What `submit_to` hands a closure on the shard thread, by `&mut`.
    send::<ShardContext<'static>>();
}

#[test]
fn shard_bound_types_are_not_send() {
    // A pooled read's buffer is the shard's registered memory: it is read and given back on its
    // shard's thread only, so it cannot move.
    <PoolBuf as NotSend<_>>::check();
    <PoolBuf as NotSync<_>>::check();
}
