//! A model test of inline reads (beside `tests/model.rs`): several threads at once, each with
//! its own file opened three times (read-write, read-only, append), send seeded random groups of
//! 1 to 5 operations -- reads (inline-eligible: page-cached, at most the limit), writes,
//! `set_len`, `fallocate`, appends, sizes -- as `Completion`s, through a `Session` or in a
//! `Batch`, all sent before the first is waited for, and check every result against an
//! in-memory model computed in the order sent. Reads go through any of the three handles, so
//! they must not overtake a mutation made through another handle on the same inode; a read at
//! the end of the file must see the size the mutations before it left. After every few groups
//! the file, read with `std::fs`, must equal the model. On both backends.
//!
//! The groups run on the two shards together, so shards are busy with the other threads' work
//! while a thread's mutations are pending. Each thread's file is its own (the model of a file
//! is the order its one thread sent things in). Inline and routed reads both happen (checked):
//! a read at the start of a group finds no unfinished mutation, one after a mutation in its
//! group does.
//!
//! `RINGSHARD_MODEL_SEED` and `RINGSHARD_MODEL_CASES` (groups per thread) work as in
//! `tests/model.rs`; a failure names the thread's seed and its step.

mod executor_util;
mod faultfs;

use executor_util::*;
use ringshard::{BackendChoice, Completion, Executor, File, OpKind, OpenOptions};
use std::path::Path;
use std::time::Duration;

const THREADS: u64 = 3;
const BASE_SEED: u64 = 0x0117_5eed;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// One thread's file: its three handles and the model of its bytes.
struct Subject {
    rw: File,
    ro: File,
    app: File,
    model: Vec<u8>,
}

/// An operation sent, with what it must return.
enum Sent {
    Read(Completion<Vec<u8>>, Vec<u8>),
    Write(Completion<usize>, usize),
    Unit(Completion<()>),
    Append(Completion<ringshard::Appended>, u64, usize),
    Size(Completion<u64>, u64),
    /// A session's request: its token, and the read's expected bytes (`None` for a write of n).
    Session(u64, Result<Vec<u8>, usize>),
}

/// What a group goes through.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Completions,
    Session,
    Batch,
}

impl Subject {
    fn size(&self) -> u64 {
        self.model.len() as u64
    }

    /// A read of `off..off+len` in the model (cut at the end of the file).
    fn expect_read(&self, off: u64, len: usize) -> Vec<u8> {
        let start = (off as usize).min(self.model.len());
        let end = (off as usize).saturating_add(len).min(self.model.len());
        self.model[start..end].to_vec()
    }

    fn write(&mut self, off: u64, data: &[u8]) {
        let end = off as usize + data.len();
        if self.model.len() < end {
            self.model.resize(end, 0);
        }
        self.model[off as usize..end].copy_from_slice(data);
    }

    /// A read handle, picked at random: any of them reads the same inode.
    fn reader(&self, rng: &mut Rng) -> &File {
        if rng.chance(50) {
            &self.ro
        } else {
            &self.rw
        }
    }
}

/// Counts of what one thread did.
#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    groups: u64,
    reads: u64,
    mutations: u64,
}

/// One thread's run: `groups` groups on its file, seeded by `seed`. Panics on a mismatch.
fn run_thread(exec: &Executor, dir: &Path, t: u64, seed: u64, groups: u64) -> Counts {
    let path = dir.join(format!("t{t}"));
    let initial: Vec<u8> = Rng::new(seed ^ 0xf11e).bytes(20_000);
    std::fs::write(&path, &initial).unwrap();
    let mut s = Subject {
        rw: ok(exec.open(&path, &rw()), "open rw"),
        ro: ok(exec.open(&path, OpenOptions::new().read(true)), "open ro"),
        app: ok(
            exec.open(&path, OpenOptions::new().append(true)),
            "open append",
        ),
        model: initial,
    };
    let mut rng = Rng::new(seed);
    let mut counts = Counts::default();
    let mut session = exec.session();
    let mut token = 0u64;
    for step in 0..groups {
        let via = match rng.below(10) {
            0..=5 => Via::Completions,
            6..=7 => Via::Session,
            _ => Via::Batch,
        };
        let n = rng.range(1, 5);
        let mut sent = Vec::new();
        let mut steps = Vec::new();
        let mut batch = (via == Via::Batch).then(|| exec.batch());
        for _ in 0..n {
            // Reads in two of five operations; the rest mutate (or ask the size).
            let kind = rng.below(10);
            let limit = 48 * 1024;
            if kind < 4 {
                let off = rng.below(s.size() + 4096);
                let len = rng.range(1, 16_384) as usize;
                let want = s.expect_read(off, len);
                steps.push(format!("read({off}, {len})"));
                counts.reads += 1;
                let reader = s.reader(&mut rng).clone();
                match via {
                    Via::Completions => sent.push(Sent::Read(exec.read(&reader, off, len), want)),
                    Via::Batch => {
                        let b = batch.as_mut().unwrap();
                        sent.push(Sent::Read(b.read(&reader, off, len), want));
                    }
                    Via::Session => {
                        token += 1;
                        session.read(&reader, off, len, Vec::new(), token).unwrap();
                        sent.push(Sent::Session(token, Ok(want)));
                    }
                }
                continue;
            }
            counts.mutations += 1;
            let kind = if via == Via::Completions { kind } else { 4 };
            match kind {
                4..=5 => {
                    let off = rng.below(limit);
                    let n = rng.range(1, 4096) as usize;
                    let data = rng.bytes(n);
                    steps.push(format!("write({off}, {})", data.len()));
                    s.write(off, &data);
                    let len = data.len();
                    match via {
                        Via::Completions => {
                            sent.push(Sent::Write(exec.write(&s.rw, off, data), len))
                        }
                        Via::Batch => {
                            let b = batch.as_mut().unwrap();
                            sent.push(Sent::Write(b.write(&s.rw, off, data), len));
                        }
                        Via::Session => {
                            token += 1;
                            session.write(&s.rw, off, data, token).unwrap();
                            sent.push(Sent::Session(token, Err(len)));
                        }
                    }
                }
                6 => {
                    let len = rng.below(limit);
                    steps.push(format!("set_len({len})"));
                    s.model.resize(len as usize, 0);
                    sent.push(Sent::Unit(exec.set_len(&s.rw, len)));
                }
                7 => {
                    let off = rng.below(limit);
                    let len = rng.range(1, 8192);
                    steps.push(format!("fallocate({off}, {len})"));
                    if s.size() < off + len {
                        s.model.resize((off + len) as usize, 0);
                    }
                    sent.push(Sent::Unit(exec.fallocate(
                        &s.rw,
                        ringshard::FallocateMode::Allocate,
                        off,
                        len,
                    )));
                }
                8 => {
                    let n = rng.range(1, 2048) as usize;
                    let data = rng.bytes(n);
                    steps.push(format!("append({})", data.len()));
                    let at = s.size();
                    let len = data.len();
                    s.write(at, &data);
                    sent.push(Sent::Append(exec.append(&s.app, data), at, len));
                }
                _ => {
                    counts.mutations -= 1;
                    steps.push("size".into());
                    sent.push(Sent::Size(exec.size(&s.ro), s.size()));
                }
            }
        }
        if let Some(b) = batch.take() {
            b.submit();
        }
        let fail = |what: &str| -> String {
            format!("thread {t} seed {seed:#x} step {step} ({steps:?}): {what}")
        };
        let mut session_want = std::collections::HashMap::new();
        for x in sent {
            match x {
                Sent::Read(c, want) => {
                    let got = wait(c).unwrap_or_else(|e| panic!("{}", fail(&e.to_string())));
                    if got != want {
                        panic!(
                            "{}",
                            fail(&format!("read {} bytes, want {}", got.len(), want.len()))
                        );
                    }
                }
                Sent::Write(c, n) => {
                    let got = wait(c).unwrap_or_else(|e| panic!("{}", fail(&e.to_string())));
                    assert_eq!(got, n, "{}", fail("write count"));
                }
                Sent::Unit(c) => {
                    wait(c).unwrap_or_else(|e| panic!("{}", fail(&e.to_string())));
                }
                Sent::Append(c, at, n) => {
                    let a = wait(c).unwrap_or_else(|e| panic!("{}", fail(&e.to_string())));
                    assert_eq!((a.offset, a.len), (at, n), "{}", fail("append"));
                }
                Sent::Size(c, n) => {
                    let got = wait(c).unwrap_or_else(|e| panic!("{}", fail(&e.to_string())));
                    assert_eq!(got, n, "{}", fail("size"));
                }
                Sent::Session(tok, want) => {
                    session_want.insert(tok, want);
                }
            }
        }
        if !session_want.is_empty() {
            let mut out = Vec::new();
            while out.len() < session_want.len() {
                session
                    .wait_timeout(session_want.len() - out.len(), HANG, &mut out)
                    .unwrap();
            }
            for d in out {
                match session_want.remove(&d.token) {
                    Some(Ok(want)) => {
                        let n = d
                            .result
                            .unwrap_or_else(|e| panic!("{}", fail(&e.to_string())));
                        if n != want.len() || d.buf != want {
                            panic!(
                                "{}",
                                fail(&format!("session read {n}, want {}", want.len()))
                            );
                        }
                    }
                    Some(Err(len)) => {
                        assert_eq!(d.result, Ok(len), "{}", fail("session write"));
                    }
                    None => panic!("{}", fail(&format!("unknown token {}", d.token))),
                }
            }
        }
        if step % 8 == 7 || step + 1 == groups {
            let disk = std::fs::read(&path).unwrap();
            if disk != s.model {
                panic!(
                    "{}",
                    fail(&format!(
                        "file has {} bytes, model {} (first difference at {:?})",
                        disk.len(),
                        s.model.len(),
                        disk.iter().zip(&s.model).position(|(a, b)| a != b)
                    ))
                );
            }
        }
        counts.groups += 1;
    }
    counts
}

#[test]
fn inline_reads_never_overtake_mutations_from_several_threads() {
    let base = env_u64("RINGSHARD_MODEL_SEED").unwrap_or(BASE_SEED);
    let groups = env_u64("RINGSHARD_MODEL_CASES").unwrap_or(300);
    for backend in [BackendChoice::IoUring, BackendChoice::Threads] {
        let exec = Executor::builder()
            .shards(2)
            .backend(backend)
            .build()
            .expect("executor");
        let dir = tempfile::tempdir().unwrap();
        let before = exec.stats();
        let counts: Vec<Counts> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (exec, dir) = (&exec, dir.path());
                    scope.spawn(move || run_thread(exec, dir, t, base + t, groups))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let d = exec.stats().since(&before);
        let reads: u64 = counts.iter().map(|c| c.reads).sum();
        let mutations: u64 = counts.iter().map(|c| c.mutations).sum();
        report_line(format_args!(
            "inline model ({backend:?}): {THREADS} threads x {groups} groups, {reads} reads \
             ({} inline, {} to the shards), {mutations} mutations, 0 mismatches",
            d.total.inline_reads,
            d.total.ops(OpKind::Read) - d.total.inline_reads
        ));
        assert_eq!(d.total.ops(OpKind::Read), reads);
        assert!(d.total.inline_reads > 0, "no read was inline");
        assert!(
            d.total.inline_reads < reads,
            "every read was inline: none followed a mutation of its group"
        );
        exec.shutdown().unwrap();
    }
}

/// What the model above found: the size a file is known to have (which decides whether a read
/// near the end of the file must wait for writes above it) was kept per handle. After a set_len
/// through one handle, a read through another handle still thought the file long, ran beside a
/// write past the end sent after it, and returned the zeros of the hole that write made instead
/// of the end of the file. (Reads of the file are delayed in FUSE, so that an unordered write
/// lands first whichever of the two the shard starts first; ordered, the write waits.) Fails
/// before the fix, on both backends.
#[test]
fn a_size_change_through_one_handle_orders_the_reads_of_another() {
    let Some(fs) = faultfs::mount_or_skip("size change through another handle") else {
        return;
    };
    for backend in [BackendChoice::IoUring, BackendChoice::Threads] {
        let exec = Executor::builder()
            .shards(1)
            .backend(backend)
            // FUSE: a short delay in the ring is fine; keep buffered writes inline regardless.
            .inline_write_stall(None)
            .build()
            .expect("executor");
        let name = format!("f-{backend:?}");
        std::fs::write(fs.backing(&name), vec![1u8; 20_000]).unwrap();
        let rw = ok(exec.open(fs.join(&name), &rw()), "open rw");
        let ro = ok(
            exec.open(fs.join(&name), OpenOptions::new().read(true)),
            "open ro",
        );
        ok(exec.set_len(&rw, 10_000), "set_len");
        fs.rules().add(
            &name,
            &[faultfs::Op::Read],
            0..u64::MAX,
            faultfs::Fault::Delay(Duration::from_millis(300)),
        );
        let read = exec.read(&ro, 10_114, 3798);
        let write = exec.write(&rw, 40_214, vec![2u8; 616]);
        assert_eq!(ok(write, "write"), 616);
        let got = ok(read, "read");
        fs.rules().clear();
        assert!(
            got.is_empty(),
            "{backend:?}: a read past the end of the file (10,000 bytes) returned {} bytes (the \
             hole of a write sent after it)",
            got.len()
        );
        exec.shutdown().unwrap();
    }
}
