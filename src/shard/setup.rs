//! Starting a shard: its thread, pinned to its CPU with its memory policy, and the ring, the
//! buffer pool and the registered file table created there (a SINGLE_ISSUER ring is used only by
//! the thread that made it, and first-touch puts memory on the shard's node). Then the loop
//! ([`Shard::run`]) and, when it returns or panics, the teardown (`teardown.rs`).

use super::files::FileTable;
use super::ops::{Chunk, OpTable};
use super::order::Ordering;
use super::runner::Shard;
use super::session_table::SessionTable;
use super::task_queues;
use super::teardown::stop;
use super::{Message, ShardLink, ShardShared};
use crate::completion::set_current_shard;
use crate::driver::{Backend, Driver, ThreadDriver};
use crate::error::{Error, Result};
use crate::numa;
use crate::pool::{PoolFit, RegisteredBufferPool};
use crate::ring::{pin_workers, RingConfig};
use crate::stats::{OpKind, ShardStats};
use crossbeam_channel::Receiver;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a shard is set up.
#[derive(Debug, Clone)]
pub(crate) struct ShardConfig {
    pub index: usize,
    pub exec_id: u64,
    pub cpu: Option<usize>,
    pub node: Option<u32>,
    /// Bind the pool to `node` with mbind (only worth it on multi-node machines).
    pub bind_memory: bool,
    pub ring: RingConfig,
    pub buffer_size: usize,
    pub buffer_count: usize,
    pub max_files: u32,
    pub spin: Duration,
    /// Buffered writes with `pwrite` on the shard thread instead of through the ring.
    pub inline_buffered_writes: bool,
    pub channel_capacity: usize,
    /// The backend the executor chose (see `driver::choose`).
    pub backend: Backend,
    /// Worker threads per shard at most, on the threads backend.
    pub threads_per_shard: usize,
    /// Why that backend (for stats).
    pub backend_reason: Option<String>,
    /// Operations slower than this (ns) are logged; u64::MAX: never.
    pub slow_op_ns: u64,
    /// An inline write's system call blocked longer than this: the file's buffered writes go
    /// through the ring for `INLINE_PAUSE` (`None`: never).
    pub inline_write_stall: Option<Duration>,
    /// Op kinds to run with plain system calls even where the kernel has their opcode (tests).
    pub force_blocking: Vec<OpKind>,
    /// Live ops at most, of every kind ([`MAX_LIVE_OPS`](super::ops::MAX_LIVE_OPS); lower in
    /// tests): past it a request fails at admission.
    pub max_live_ops: usize,
    /// Buffers in the shard's provided-buffer ring for `recv_pooled` (0: plain buffers).
    pub recv_buffer_count: u16,
    /// Bytes per receive buffer.
    pub recv_buffer_size: usize,
}

/// Starts shard `cfg.index` on its own thread. Returns once the shard is set up (pinned, memory
/// policy set, ring and pool created on that thread) or with the setup error.
pub(crate) fn spawn(cfg: ShardConfig) -> Result<(ShardLink, std::thread::JoinHandle<()>)> {
    let shared = Arc::new(ShardShared::new()?);
    // Unbounded: a send never blocks a caller (or an async runtime thread). What the shard has
    // admitted is bounded by `channel_capacity`; the rest waits here in order, and its memory is
    // the callers' own requests.
    let (tx, rx) = crossbeam_channel::unbounded();
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<()>>(1);
    let thread_shared = Arc::clone(&shared);
    let thread_cfg = cfg.clone();
    let handle = std::thread::Builder::new()
        .name(format!("ringshard-{}", cfg.index))
        .spawn(move || shard_main(thread_cfg, rx, thread_shared, ready_tx))
        .map_err(|e| {
            Error::io(
                "spawn shard thread",
                None,
                None,
                e.raw_os_error().unwrap_or(libc::EAGAIN),
            )
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((
            ShardLink {
                index: cfg.index,
                cpu: cfg.cpu,
                node: cfg.node,
                tx,
                shared,
            },
            handle,
        )),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => {
            let _ = handle.join();
            Err(Error::ShardFailed {
                shard: cfg.index,
                reason: "the shard thread died during setup".into(),
            })
        }
    }
}

fn shard_main(
    cfg: ShardConfig,
    rx: Receiver<Message>,
    shared: Arc<ShardShared>,
    ready: crossbeam_channel::Sender<Result<()>>,
) {
    set_current_shard(cfg.exec_id, cfg.index);
    let index = cfg.index;
    let mut shard = match Shard::new(cfg, rx, Arc::clone(&shared)) {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s
        }
        Err(e) => {
            crate::logging::shard_setup_failed(index, &e);
            let _ = ready.send(Err(e));
            return;
        }
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shard.run()));
    if let Err(payload) = &outcome {
        crate::logging::shard_panicked(index, payload.as_ref());
    }
    stop(shard, &shared, index, outcome.is_err());
}

impl Shard {
    fn new(cfg: ShardConfig, rx: Receiver<Message>, shared: Arc<ShardShared>) -> Result<Self> {
        if let Some(cpu) = cfg.cpu {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                return Err(Error::InvalidConfig(format!(
                    "shard {}: cannot pin to CPU {cpu} (sched_setaffinity refused): the CPU may \
                     be offline or outside this process's cpuset",
                    cfg.index
                )));
            }
        }
        // Best effort: a kernel without NUMA support refuses, and then there is one node.
        let mem_policy = numa::prefer_node_for_shard(cfg.index, cfg.node);
        // The ring, the pool and the file table are created here, on the pinned thread: with
        // SINGLE_ISSUER only this thread may use the ring, and first-touch puts memory locally.
        let mut ring_note = None;
        let (mut ring, mode) = match cfg.backend {
            Backend::IoUring => {
                // ENOMEM even at the fewest entries fails the setup: the executor then starts
                // every shard on the threads backend.
                let (ring, mode, note) = cfg.ring.build_fitted()?;
                if let Some(cpu) = cfg.cpu {
                    pin_workers(&ring, cpu);
                }
                ring_note = note;
                (Driver::Uring(ring), Some(mode))
            }
            Backend::Threads => {
                let driver = ThreadDriver::new(
                    cfg.ring.entries,
                    cfg.cpu,
                    cfg.threads_per_shard,
                    format!("ringshard-{}-io", cfg.index),
                )
                .map_err(|e| {
                    Error::io("eventfd", None, None, e.raw_os_error().unwrap_or(libc::EIO))
                })?;
                (Driver::Threads(driver), None)
            }
        };
        let node = if cfg.bind_memory { cfg.node } else { None };
        let (pool, fit) =
            RegisteredBufferPool::for_shard(&mut ring, cfg.buffer_size, cfg.buffer_count, node)?;
        let fixed_capacity = if cfg.max_files > 0 {
            match ring.register_files_sparse(cfg.max_files) {
                Ok(()) => cfg.max_files,
                // EMFILE (RLIMIT_NOFILE below max_files) or an old kernel: plain descriptors.
                Err(_) => 0,
            }
        } else {
            0
        };
        let cq_capacity = ring.cq_entries();
        let cq_nodrop = ring.cq_nodrop();
        if !cq_nodrop {
            // Recorded where the shard's setup is read (stats, its log line): without NODROP
            // every socket op counts against the CQ, so idle connections limit the shard.
            let note = format!(
                "the kernel lacks IORING_FEAT_NODROP (5.5): at most {cq_capacity} operations in \
                 flight, socket operations waiting for peers included; upgrade the kernel"
            );
            ring_note = Some(match ring_note {
                Some(n) => format!("{n}; {note}"),
                None => note,
            });
        }
        // The receive buffers of `TcpStream::recv_pooled`: a provided-buffer ring on io_uring
        // (5.19+), else plain buffers; a refusal is noted, not an error.
        let recv_note = if ring.backend() == Backend::IoUring {
            let mut register = |addr: u64, entries: u16, bgid: u16| {
                // SAFETY: `recv_ring` keeps the ring's and the buffers' mappings until no request
                // can select a buffer (leaked otherwise), as the registration requires.
                unsafe { ring.register_buf_ring(addr, entries, bgid) }
            };
            crate::recv_ring::RecvBuffers::install(
                cfg.recv_buffer_count,
                cfg.recv_buffer_size,
                Some(&mut register),
            )
        } else {
            crate::recv_ring::RecvBuffers::install(0, cfg.recv_buffer_size, None)
        };
        if let Some(note) = recv_note {
            ring_note = Some(match ring_note {
                Some(n) => format!("{n}; {note}"),
                None => note,
            });
        }
        let blocking = probe_blocking(&ring, &cfg.force_blocking);
        let mut stats = ShardStats::new(cfg.index, cfg.cpu, cfg.node);
        stats.blocking_ops = OpKind::ALL
            .into_iter()
            .filter(|k| blocking[k.index()])
            .collect();
        stats.pool = pool.stats();
        (stats.ring_mode, stats.mem_policy) = (mode, mem_policy);
        stats.backend = ring.backend();
        stats.backend_reason = cfg.backend_reason.clone();
        stats.pool_note = pool_note(&fit, &pool);
        stats.ring_note = ring_note;
        crate::logging::shard_setup(&stats, fixed_capacity);
        let mut shard = Shard {
            chunks: vec![Chunk::default(); cfg.buffer_count],
            files: FileTable {
                exec_id: cfg.exec_id,
                shard: cfg.index,
                ..FileTable::default()
            },
            ring,
            pool,
            cfg,
            fixed_capacity,
            ops: OpTable::default(),
            blocking,
            ready: VecDeque::new(),
            order: Ordering::default(),
            backlog: VecDeque::new(),
            sessions: SessionTable::default(),
            tasks: VecDeque::new(),
            local: Vec::new(),
            timers: Vec::new(),
            timer_free: Vec::new(),
            new_timers: Vec::new(),
            timers_armed: 0,
            parking: false,
            parking_peers: false,
            parked_timers: Vec::new(),
            released: Vec::new(),
            stats,
            shared,
            rx,
            wake_armed: false,
            wake_broken: false,
            in_flight: 0,
            peer_in_flight: 0,
            cq_capacity,
            cq_nodrop,
            closing: false,
            closing_deadline: None,
            abandon_at: None,
            cancel_all: false,
            shutdown_waiters: Vec::new(),
            last_scan: Instant::now(),
            cqes: Vec::with_capacity(256),
            clock: None,
            panicked: false,
            fast: super::task_io::TaskReads::default(),
        };
        shard.arm_wake()?;
        task_queues::set_pool_alive(true);
        Ok(shard)
    }
}

/// Which op kinds take the blocking path on this ring: those whose opcode the kernel does not
/// know (`IORING_REGISTER_PROBE`, read once; a kernel without probing (before 5.6) is taken to
/// have them all, as the ring setup already needs a recent kernel), those in `forced`, and the
/// socket kinds that wait for peers where the ring lacks IORING_FEAT_FAST_POLL (5.7; see
/// [`needs_fast_poll`]).
fn probe_blocking(ring: &Driver, forced: &[OpKind]) -> [bool; OpKind::COUNT] {
    let supported = ring.opcode_support();
    let fast_poll = ring.fast_poll();
    let mut out = [false; OpKind::COUNT];
    for kind in OpKind::ALL {
        let Some(code) = kind.opcode() else {
            continue;
        };
        out[kind.index()] =
            forced.contains(&kind) || !supported(code) || (needs_fast_poll(kind) && !fast_poll);
    }
    out
}

/// Whether `kind` runs in the ring only where the kernel has IORING_FEAT_FAST_POLL. Without it
/// (Linux 5.6: the socket opcodes came in 5.5 and 5.6, FAST_POLL in 5.7) a receive, send or
/// accept that must wait is handed to an io-wq worker thread, which blocks in the system call
/// for as long as the peer is silent: a kernel thread per idle connection, and, where
/// RLIMIT_NPROC caps the workers, operations queued behind silent peers. Such a ring runs them
/// as a kernel without their opcodes would: one non-blocking attempt on the shard thread (a call
/// that would wait fails with EAGAIN), shown in `ShardStats::blocking_ops`. (A POLL_ADD round
/// before each would keep them in the ring; not worth it for one kernel release.) Connect
/// waits for the handshake, not for a peer that may stay silent, and keeps its opcode.
fn needs_fast_poll(kind: OpKind) -> bool {
    matches!(
        kind,
        OpKind::Accept | OpKind::Recv | OpKind::RecvPooled | OpKind::RecvStream | OpKind::Send
    )
}

/// What a shard's stats say about its pool when it is not the registered pool asked for.
fn pool_note(fit: &PoolFit, pool: &RegisteredBufferPool) -> Option<String> {
    let size = pool.stats().buffer_size;
    match fit {
        PoolFit::Registered => None,
        PoolFit::Fitted { asked, error } => Some(format!(
            "{} of {asked} buffers of {size} bytes registered, to fit RLIMIT_MEMLOCK{}",
            pool.stats().total_count,
            error.as_ref().map_or(String::new(), |e| format!(" ({e})")),
        )),
        PoolFit::Unregistered { bytes: 0 } => None,
        PoolFit::Unregistered { bytes } => Some(format!(
            "buffers unregistered (plain READ/WRITE): fewer than {} buffers of {size} bytes fit \
             RLIMIT_MEMLOCK (limit {}; the full pool pins {bytes} bytes). Raise the limit \
             (`ulimit -l unlimited`, memlock in /etc/security/limits.conf, LimitMEMLOCK= for \
             systemd, --ulimit memlock=-1 for docker) to register them",
            crate::pool::MIN_REGISTERED,
            crate::error::memlock_limit().map_or("unlimited".to_string(), |l| format!("{l} bytes")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_fast_poll_only_the_socket_waits_leave_the_ring() {
        let kinds: Vec<OpKind> = OpKind::ALL
            .into_iter()
            .filter(|k| needs_fast_poll(*k))
            .collect();
        assert_eq!(
            kinds,
            [
                OpKind::Accept,
                OpKind::Recv,
                OpKind::RecvPooled,
                OpKind::RecvStream,
                OpKind::Send
            ]
        );
    }

    #[test]
    fn this_kernel_has_fast_poll_so_sockets_stay_in_the_ring() {
        let (ring, _) = RingConfig::default().build().unwrap();
        let ring = Driver::Uring(ring);
        assert!(ring.fast_poll());
        let blocking = probe_blocking(&ring, &[]);
        assert!(!blocking[OpKind::Recv.index()]);
    }
}
