//! Log events through the `tracing` crate, behind the `tracing` feature.
//!
//! Without the feature every function here is empty. With it, events go to whatever subscriber
//! the application installed, and nowhere without one (silent by default). Targets are
//! `ringshard::shard`.

use crate::error::Error;
use crate::stats::ShardStats;

/// A shard is set up: its core, node, ring mode, pool and memory policy.
pub(crate) fn shard_setup(stats: &ShardStats, fixed_files: u32) {
    #[cfg(feature = "tracing")]
    tracing::info!(
        target: "ringshard::shard",
        shard = stats.shard,
        cpu = ?stats.cpu,
        numa_node = ?stats.numa_node,
        ring_mode = stats.ring_mode.map(|m| m.name()).unwrap_or("none"),
        mem_policy = stats.mem_policy.map(|p| p.name()).unwrap_or("none"),
        pool_buffers = stats.pool.total_count,
        buffer_size = stats.pool.buffer_size,
        pool_numa_node = ?stats.pool.numa_node,
        fixed_files,
        "shard ready"
    );
    #[cfg(not(feature = "tracing"))]
    let _ = (stats, fixed_files);
}

/// io_uring_enter reported dropped completions (EBADR): operations that will never complete.
pub(crate) fn cqes_dropped(shard: usize) {
    #[cfg(feature = "tracing")]
    tracing::error!(
        target: "ringshard::shard",
        shard,
        "io_uring_enter: EBADR: the kernel dropped completions (it could not keep an overflowing \
         CQE aside: the machine is critically short of memory); the operations they belonged to \
         never complete"
    );
    #[cfg(not(feature = "tracing"))]
    let _ = shard;
}

/// A shard could not be set up.
pub(crate) fn shard_setup_failed(shard: usize, error: &Error) {
    #[cfg(feature = "tracing")]
    tracing::error!(target: "ringshard::shard", shard, error = %error, "shard setup failed");
    #[cfg(not(feature = "tracing"))]
    let _ = (shard, error);
}

/// A shard thread panicked; `payload` is what `catch_unwind` returned.
pub(crate) fn shard_panicked(shard: usize, payload: &(dyn std::any::Any + Send)) {
    #[cfg(feature = "tracing")]
    {
        let reason = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(not a string)");
        tracing::error!(
            target: "ringshard::shard",
            shard,
            reason,
            "shard thread panicked: its pending operations fail with ShardFailed"
        );
    }
    #[cfg(not(feature = "tracing"))]
    let _ = (shard, payload);
}

/// The executor's backend, chosen once before its shards start: a warning when it is the threads
/// backend (io_uring blocked or forced), with the reason.
pub(crate) fn backend_chosen(backend: crate::driver::Backend, reason: &str) {
    #[cfg(feature = "tracing")]
    match backend {
        crate::driver::Backend::Threads => tracing::warn!(
            target: "ringshard::backend",
            backend = backend.name(),
            reason,
            "io_uring not used: operations run on the threads backend"
        ),
        crate::driver::Backend::IoUring => tracing::info!(
            target: "ringshard::backend",
            backend = backend.name(),
            reason,
            "backend chosen"
        ),
    }
    #[cfg(not(feature = "tracing"))]
    let _ = (backend, reason);
}

/// An operation took `latency_ns` or more from request to result (the builder's
/// `slow_op_threshold`): a device stall, a saturated shard, or a blocking task on it.
pub(crate) fn slow_op(
    shard: usize,
    kind: crate::stats::OpKind,
    path: &std::path::Path,
    latency_ns: u64,
    errno: Option<i32>,
) {
    #[cfg(feature = "tracing")]
    tracing::warn!(
        target: "ringshard::slow",
        shard,
        op = kind.name(),
        path = %path.display(),
        latency_ms = latency_ns as f64 / 1e6,
        errno = errno.map(crate::error::errno_text),
        "slow operation"
    );
    #[cfg(not(feature = "tracing"))]
    let _ = (shard, kind, path, latency_ns, errno);
}
