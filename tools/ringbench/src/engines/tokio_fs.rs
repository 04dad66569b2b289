//! What async users reach for: tokio's file I/O, which runs every call on tokio's blocking thread
//! pool. Each submitter (client) is `--iodepth` tasks, each doing one operation at a time:
//!
//! - `--tokio-api seek-read` (default): a `tokio::fs::File` per task and file, `seek` then
//!   `read_exact` (or `write_all` + `flush`): two blocking-pool round trips per operation;
//! - `--tokio-api read-at`: `spawn_blocking` around `read_at` / `write_at` on a shared
//!   `std::fs::File` with an aligned buffer: one round trip (used for `--direct`, since
//!   `tokio::fs::File` reads through its own unaligned buffer).
//!
//! The runtime has one worker thread per CPU of the placement.

use super::{DoneGuard, Output, RunCtx};
use crate::buf::AlignedBuf;
use crate::control::{Control, Measure};
use crate::error::BenchError;
use crate::pattern::Pattern;
use crate::tally::{errno_reason, Tally};
use crate::workload::{IoKind, OpGen, TokioApi, Workload};
use std::io::SeekFrom;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

struct TaskJob {
    w: Arc<Workload>,
    api: TokioApi,
    files: Vec<usize>,
    quota: Option<u64>,
    /// Generator stream: distinct per task.
    stream: usize,
    streams: usize,
    index: usize,
    std_files: Arc<Vec<std::fs::File>>,
    paths: Arc<Vec<PathBuf>>,
    patterns: Arc<Vec<Pattern>>,
    control: Arc<Control>,
}

pub fn run(ctx: &RunCtx) -> Result<Output, BenchError> {
    let w = ctx.w;
    let mut notes = Vec::new();
    let api = if w.direct && w.tokio_api == TokioApi::SeekRead {
        notes.push(
            "--direct: tokio::fs::File reads through its own unaligned buffer, which O_DIRECT \
             refuses; used spawn_blocking + read_at with aligned buffers instead"
                .to_string(),
        );
        TokioApi::ReadAt
    } else {
        w.tokio_api
    };
    let subs = ctx.submitters();
    let depth = w.iodepth;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(ctx.cpus.len().max(1))
        .thread_name("ringbench-tokio")
        .build()
        .map_err(|e| BenchError::runtime(format!("starting the tokio runtime: {e}")))?;
    let std_files = Arc::new(ctx.open_std()?);
    let paths = Arc::new(ctx.files.iter().map(|f| f.path.clone()).collect::<Vec<_>>());
    let patterns = Arc::new(ctx.patterns());
    let tasks = subs.len() * depth;
    let control = Arc::new(Control::new(tasks));
    let wl = Arc::new(w.clone());

    let resident = ctx.warm()?;
    let meas = Measure::start();
    let mut handles = Vec::with_capacity(tasks);
    for (k, s) in subs.iter().enumerate() {
        for d in 0..depth {
            let quota = s
                .quota
                .map(|q| q / depth as u64 + u64::from((d as u64) < q % depth as u64));
            let job = TaskJob {
                w: Arc::clone(&wl),
                api,
                files: s.files.clone(),
                quota,
                stream: s.index * depth + d,
                streams: subs.len() * depth,
                index: k * depth + d,
                std_files: Arc::clone(&std_files),
                paths: Arc::clone(&paths),
                patterns: Arc::clone(&patterns),
                control: Arc::clone(&control),
            };
            handles.push(rt.spawn(task(job)));
        }
    }
    let elapsed = control.supervise(tasks, meas.start, w.duration, ctx.progress);
    let cpu = meas.cpu();
    let per_task: Vec<Tally> = rt.block_on(async {
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await.unwrap_or_default());
        }
        out
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    let tallies = subs
        .iter()
        .zip(per_task.chunks(depth.max(1)))
        .map(|(s, ts)| {
            let mut t = Tally::default();
            for x in ts {
                t.merge(x);
            }
            (Some(s.index), None, None, t)
        })
        .collect();
    notes.push(format!(
        "{} runtime worker thread(s), {} task(s) ({} per client), API {}",
        ctx.cpus.len().max(1),
        tasks,
        depth,
        match api {
            TokioApi::SeekRead => "tokio::fs::File seek + read_exact/write_all",
            TokioApi::ReadAt => "spawn_blocking(read_at/write_at)",
        }
    ));
    Ok(Output::from_tallies(
        "client", tallies, elapsed, cpu, resident, notes,
    ))
}

async fn task(job: TaskJob) -> Tally {
    let _done = DoneGuard(&job.control);
    let mut tally = Tally::default();
    let w = &*job.w;
    let mut gen = OpGen::new(w, job.files.clone(), job.quota, job.stream, job.streams);
    let r = match job.api {
        TokioApi::SeekRead => seek_read_loop(&job, &mut gen, &mut tally).await,
        TokioApi::ReadAt => read_at_loop(&job, &mut gen, &mut tally).await,
    };
    if let Err(e) = r {
        let path = &job.paths[job.files[0]];
        tally.fail(IoKind::Read, path, 0, &e);
        job.control.stop();
    }
    tally
}

fn reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(errno) => errno_reason(errno),
        None => e.to_string(),
    }
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
        let Some(op) = gen.next_op() else { break };
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
            }
        }
        .await;
        let lat = t0.elapsed().as_nanos() as u64;
        record(job, gen, tally, op, r.map_err(|e| reason(&e)), &buf, lat);
    }
    Ok(())
}

/// spawn_blocking around read_at / write_at on a shared std file, with an aligned buffer.
async fn read_at_loop(job: &TaskJob, gen: &mut OpGen, tally: &mut Tally) -> Result<(), String> {
    let w = &*job.w;
    let mut buf = Some(AlignedBuf::new(w.bs));
    if w.rw.writes() && !w.verify {
        if let Some(b) = buf.as_mut() {
            job.patterns[0].fill(b, 0);
        }
    }
    while !job.control.stopped() {
        let Some(op) = gen.next_op() else { break };
        let Some(mut b) = buf.take() else { break };
        if op.kind == IoKind::Write && w.verify {
            job.patterns[op.file].fill(&mut b, op.offset);
        }
        let files = Arc::clone(&job.std_files);
        let t0 = Instant::now();
        let joined = tokio::task::spawn_blocking(move || {
            let f = &files[op.file];
            let r = match op.kind {
                IoKind::Read => f.read_at(&mut b, op.offset),
                IoKind::Write => f.write_at(&b, op.offset),
                IoKind::Fsync => f.sync_all().map(|()| 0),
            };
            (b, r)
        })
        .await;
        let lat = t0.elapsed().as_nanos() as u64;
        let (b, r) = joined.map_err(|e| format!("blocking task: {e}"))?;
        record(job, gen, tally, op, r.map_err(|e| reason(&e)), &b, lat);
        buf = Some(b);
    }
    Ok(())
}

fn record(
    job: &TaskJob,
    gen: &mut OpGen,
    tally: &mut Tally,
    op: crate::workload::Op,
    r: Result<usize, String>,
    buf: &[u8],
    lat: u64,
) {
    let bs = job.w.bs;
    let path = &job.paths[op.file];
    match r {
        Err(reason) => tally.fail(op.kind, path, op.offset, &reason),
        Ok(n) if op.kind != IoKind::Fsync && n != bs => {
            let what = format!("short transfer ({n} of {bs} bytes)");
            tally.fail(op.kind, path, op.offset, &what);
        }
        Ok(n) => {
            if op.kind == IoKind::Read && job.w.verify {
                tally.checks.verified += 1;
                if let Some(m) = job.patterns[op.file].check(&buf[..bs], op.offset) {
                    tally.checks.mismatch(path, m);
                }
            }
            tally.ok(op.kind, n as u64, lat);
            gen.write_done(&op);
            if op.kind != IoKind::Fsync {
                job.control.add(job.index, 1, bs as u64);
            }
        }
    }
}
