//! The `serde` feature's `Serialize` impls of the statistics (JSON).

use std::collections::BTreeMap;

use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};

use super::*;

/// Serializes `ops` as `{"open": n, "read": n, ...}` in [`OpKind::ALL`] order.
struct OpsView<'a>(&'a [u64; OpKind::COUNT]);

impl Serialize for OpsView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(OpKind::COUNT))?;
        for kind in OpKind::ALL {
            map.serialize_entry(kind.name(), &self.0[kind.index()])?;
        }
        map.end()
    }
}

/// Serializes errors as `{"ENOSPC": n, ...}` (errno order).
struct ErrorsView<'a>(&'a BTreeMap<i32, u64>);

impl Serialize for ErrorsView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (&errno, n) in self.0 {
            map.serialize_entry(&errno_name(errno), n)?;
        }
        map.end()
    }
}

/// JSON shape: every counter; `shard` is `null` for a merged total; `ring_mode` as
/// [`RingMode::name`](crate::RingMode::name) or `null`; `mem_policy` as `"preferred"`, `"failed"` or `null`, with
/// `mem_policy_errno` (`"EPERM"`, ...) when it failed; `blocking_ops` as `["statx", ...]`; `ops` as
/// `{"read": n, ...}`; `errors` as `{"ENOSPC": n, ...}`; `total_ops`, `error_count`;
/// `latency`, `read_latency`, `write_latency` as [`LatencySummary`]; `pool` as [`BufferPoolStats`](crate::BufferPoolStats).
impl Serialize for ShardStats {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("ShardStats", 45)?;
        let shard = if self.is_total() {
            None
        } else {
            Some(self.shard)
        };
        s.serialize_field("shard", &shard)?;
        s.serialize_field("cpu", &self.cpu)?;
        s.serialize_field("numa_node", &self.numa_node)?;
        s.serialize_field("failed", &self.failed)?;
        s.serialize_field("ring_mode", &self.ring_mode)?;
        s.serialize_field("backend", &self.backend)?;
        s.serialize_field("backend_reason", &self.backend_reason)?;
        s.serialize_field("pool_note", &self.pool_note)?;
        s.serialize_field("ring_note", &self.ring_note)?;
        s.serialize_field("mem_policy", &self.mem_policy.map(MemPolicy::name))?;
        let policy_errno = match self.mem_policy {
            Some(MemPolicy::Failed { errno }) => Some(errno_name(errno)),
            _ => None,
        };
        s.serialize_field("mem_policy_errno", &policy_errno)?;
        s.serialize_field("blocking_ops", &self.blocking_ops)?;
        s.serialize_field("total_ops", &self.total_ops())?;
        s.serialize_field("ops", &OpsView(&self.ops))?;
        s.serialize_field("bytes_read", &self.bytes_read)?;
        s.serialize_field("bytes_written", &self.bytes_written)?;
        s.serialize_field("error_count", &self.error_count())?;
        s.serialize_field("errors", &ErrorsView(&self.errors))?;
        s.serialize_field("in_flight_hwm", &self.in_flight_hwm)?;
        s.serialize_field("queued_hwm", &self.queued_hwm)?;
        s.serialize_field("sq_full_events", &self.sq_full_events)?;
        s.serialize_field("cqes_dropped", &self.cqes_dropped)?;
        s.serialize_field("task_local_reads", &self.task_local_reads)?;
        s.serialize_field("writes_at_admission", &self.writes_at_admission)?;
        s.serialize_field("pool_exhausted_events", &self.pool_exhausted_events)?;
        s.serialize_field("sleeps", &self.sleeps)?;
        s.serialize_field("wakeups", &self.wakeups)?;
        s.serialize_field("submit_calls", &self.submit_calls)?;
        s.serialize_field("task_polls", &self.task_polls)?;
        s.serialize_field("slow_task_polls", &self.slow_task_polls)?;
        s.serialize_field("sqes_submitted", &self.sqes_submitted)?;
        s.serialize_field("cancelled", &self.cancelled)?;
        s.serialize_field("deadline_exceeded", &self.deadline_exceeded)?;
        s.serialize_field("latency", &self.latency())?;
        s.serialize_field("read_latency", &self.read_latency())?;
        s.serialize_field("write_latency", &self.write_latency())?;
        s.serialize_field("inline_reads", &self.inline_reads)?;
        s.serialize_field("inline_fallbacks", &self.inline_fallbacks)?;
        s.serialize_field("inline_latency", &self.inline_latency())?;
        s.serialize_field("pipes_made", &self.pipes_made)?;
        s.serialize_field("pipes_shrunk", &self.pipes_shrunk)?;
        s.serialize_field("pipes_dirty", &self.pipes_dirty)?;
        s.serialize_field("recv_buffers", &self.recv_buffers)?;
        s.serialize_field("recv_buffers_held", &self.recv_buffers_held)?;
        s.serialize_field("recv_buffers_exhausted", &self.recv_buffers_exhausted)?;
        s.serialize_field("send_file_inline", &self.send_file_inline)?;
        s.serialize_field("send_file_uncached", &self.send_file_uncached)?;
        s.serialize_field("pool", &self.pool)?;
        s.end()
    }
}

impl Serialize for ExecutorStats {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("ExecutorStats", 3)?;
        s.serialize_field("elapsed_s", &self.elapsed.as_secs_f64())?;
        s.serialize_field("total", &self.total)?;
        s.serialize_field("shards", &self.shards)?;
        s.end()
    }
}
