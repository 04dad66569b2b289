//! Values kept on a shard thread for the layers above (each `Sharded<T>`'s value on this shard),
//! by id, type-erased: held in this thread's storage so that only code running here reaches them,
//! and dropped here, at the latest as the shard stops ([`drop_here`], from `teardown.rs`).

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

thread_local! {
    /// The values this shard thread holds, by id.
    static VALUES: RefCell<HashMap<u64, Rc<dyn Any>>> = RefCell::new(HashMap::new());
}

/// Keeps `value` on this thread under `id` (a value already there is dropped).
pub(crate) fn insert(id: u64, value: Rc<dyn Any>) {
    VALUES.with(|m| m.borrow_mut().insert(id, value));
}

/// This thread's value `id`, if it holds one of type `T`.
pub(crate) fn get<T: 'static>(id: u64) -> Option<Rc<T>> {
    // why: the Rc is cloned out, so no borrow of the table is held while user code runs (it may
    // use another value, or drop one).
    let v = VALUES
        .try_with(|m| m.try_borrow().ok()?.get(&id).cloned())
        .ok()??;
    Rc::downcast::<T>(v).ok()
}

/// Takes this thread's value `id` out of the table and drops it (outside the table's borrow: its
/// drop may touch another value).
pub(crate) fn remove(id: u64) {
    let v = VALUES
        .try_with(|m| m.try_borrow_mut().ok()?.remove(&id))
        .ok()
        .flatten();
    drop(v);
}

/// Called by a shard thread as it stops, after its tasks are dropped: drops every value it still
/// holds, here on its own thread. A panicking drop is contained (the shard is finishing its
/// shutdown and must go on).
pub(crate) fn drop_here() {
    let values: Vec<Rc<dyn Any>> = VALUES
        .try_with(|m| {
            m.try_borrow_mut()
                .map(|mut m| m.drain().map(|(_, v)| v).collect())
        })
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    for v in values {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(v)));
    }
}
