//! What async users reach for: tokio's file I/O, which runs every call on tokio's blocking thread
//! pool. One operation at a time per task:
//!
//! - `--tokio-api seek-read` (default): a `tokio::fs::File` per task and file, `seek` then
//!   `read_exact` (or `write_all` + `flush`): two blocking-pool round trips per operation;
//! - `--tokio-api read-at` (and the `spawn-blocking` engine): `spawn_blocking` around `read_at` /
//!   `write_at` on a shared `std::fs::File` with an aligned buffer: one round trip (used for
//!   `--direct`, since `tokio::fs::File` reads through its own unaligned buffer).
//!
//! In-shard and routed: each submitter (client) is `--iodepth` tasks, on a runtime with one worker
//! thread per CPU of the placement. `--mode async`: `--tasks` tasks on `--clients` workers; a task
//! keeps `--iodepth` operations in flight, as `--iodepth` tasks with seek-read (a
//! `tokio::fs::File` does one operation at a time) and as one pipelined task with read-at.

use super::spawn_blocking::BlockingIo;
use super::tokio_tasks::{self, pipeline, Plan, TaskFuture, TaskJob};
use super::{DoneGuard, Output, RunCtx};
use crate::error::BenchError;
use crate::tally::{io_reason, Tally, Times};
use crate::workload::{IoKind, Mode, Next, OpGen, TokioApi};
use std::io::SeekFrom;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Runs tokio-fs with `api` (the `spawn-blocking` engine: read-at).
pub fn run(ctx: &RunCtx, api: TokioApi) -> Result<Output, BenchError> {
    let w = ctx.w;
    let mut notes = Vec::new();
    let api = if w.direct && api == TokioApi::SeekRead {
        notes.push(
            "--direct: tokio::fs::File reads through its own unaligned buffer, which O_DIRECT \
             refuses; used spawn_blocking + read_at with aligned buffers instead"
                .to_string(),
        );
        TokioApi::ReadAt
    } else {
        api
    };
    // (tasks per group, operations in flight per task)
    let (per_group, depth) = match (w.mode, api) {
        (Mode::Async, TokioApi::ReadAt) => (1, w.iodepth),
        _ => (w.iodepth, 1),
    };
    let plan = Plan::new(ctx, per_group, depth);
    notes.push(format!(
        "API {}",
        match api {
            TokioApi::SeekRead => "tokio::fs::File seek + read_exact/write_all",
            TokioApi::ReadAt => "spawn_blocking(read_at/write_at)",
        }
    ));
    let blocking = match api {
        TokioApi::ReadAt => Some(BlockingIo::new(ctx)?),
        TokioApi::SeekRead => None,
    };
    tokio_tasks::run(
        ctx,
        &plan,
        notes,
        |job| -> TaskFuture {
            match &blocking {
                Some(io) => Box::pin(pipeline(Arc::clone(io), job)),
                None => Box::pin(seek_read_task(job)),
            }
        },
        &mut || {},
    )
}

async fn seek_read_task(job: TaskJob) -> Tally {
    let _done = DoneGuard(&job.control);
    let mut tally = Tally::default();
    let mut gen = job.gen();
    if let Err(e) = seek_read_loop(&job, &mut gen, &mut tally).await {
        let path = &job.paths[job.files[0]];
        tally.fail(IoKind::Read, path, 0, &e);
        job.control.stop();
    }
    tally
}

/// One `tokio::fs::File` per file; seek then read_exact / write_all + flush.
async fn seek_read_loop(job: &TaskJob, gen: &mut OpGen, tally: &mut Tally) -> Result<(), String> {
    let w = &*job.w;
    let bs = w.bs;
    let mut handles: Vec<Option<tokio::fs::File>> = (0..job.paths.len()).map(|_| None).collect();
    for &i in &job.files {
        let f = tokio::fs::OpenOptions::new()
            .read(true)
            .write(w.rw.writes())
            .open(&job.paths[i])
            .await
            .map_err(|e| format!("opening {}: {e}", job.paths[i].display()))?;
        handles[i] = Some(f);
    }
    let mut buf = vec![0u8; bs];
    if w.rw.writes() && !w.verify {
        job.patterns[0].fill(&mut buf, 0);
    }
    while !job.control.stopped() {
        let (op, start) = match gen.next() {
            Next::Go(op, start) => (op, start),
            Next::Wait(at) => {
                // Open loop: one operation at a time, so nothing to reap meanwhile.
                tokio_tasks::pace_wait(at).await;
                continue;
            }
            Next::Done => break,
        };
        let Some(f) = handles[op.file].as_mut() else {
            break;
        };
        let t0 = Instant::now();
        let r: std::io::Result<usize> = async {
            match op.kind {
                IoKind::Read => {
                    f.seek(SeekFrom::Start(op.offset)).await?;
                    f.read_exact(&mut buf).await.map(|_| bs)
                }
                IoKind::Write => {
                    if w.verify {
                        job.patterns[op.file].fill(&mut buf, op.offset);
                    }
                    f.seek(SeekFrom::Start(op.offset)).await?;
                    f.write_all(&buf).await?;
                    f.flush().await.map(|()| bs)
                }
                IoKind::Fsync => f.sync_all().await.map(|()| 0),
                IoKind::Fdatasync => f.sync_data().await.map(|()| 0),
            }
        }
        .await;
        let times = Times::at_call(start, t0, Instant::now());
        tokio_tasks::record(
            job,
            gen,
            tally,
            op,
            r.map_err(|e| io_reason(&e)),
            &buf,
            times,
        );
    }
    Ok(())
}
