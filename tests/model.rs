//! Model-based tests: seeded random sequences of file operations on a 2-shard executor, checked
//! after every step against an in-memory model of the files.
//!
//! A sequence works on a few file names (`s{seq}-a` ..; the fault filesystem is flat, so each
//! sequence has its own prefix instead of its own directory). A step is one of:
//! - open (create; create + truncate; append + create) of a file that has no open handle;
//! - rename or unlink through the executor (`Executor::rename`, `unlink`), between groups and only
//!   on closed files (renaming a file under an open handle only changes what later opens find);
//! - a group of 1 to 4 operations (read, write, append -- a write through a handle opened with
//!   append --, fsync, fdatasync, fallocate mode 0, set_len (on files without faults), size,
//!   close, or an operation on a handle closed earlier, which must fail with `BadHandle`) sent as routed requests (`Completion`s,
//!   all sent before the first is waited for), one `Batch` (read, write, fsync) or through one
//!   `Session` (read, write, fsync, fdatasync), spread over the open files and so over both
//!   shards.
//!
//! The model computes every operation's result as it is generated, in the order the group sends
//! them: the executor keeps per-file order where it matters (a read sees every earlier
//! overlapping write, overlapping writes keep their order, fsync, close, fallocate and size
//! follow what came before) and files are independent. After each step the results match it
//! exactly and every file's contents, read with `std::fs` (from the backing directory on the
//! fault filesystem, bypassing FUSE), equal the model's, and no other file of the sequence exists.
//! No allowance: a write past the end of the file changes the end of file a read below it sees
//! (end of file, or the zeros of the hole the write makes) though their byte ranges do not
//! overlap, and the executor orders a read that may reach the end of the file against every write
//! above it, so such reads match the model exactly too. (Before that rule, 46 of ~10,000 reads
//! raced a write of their group; `Seq::read_eof_race` recognises that case and it now fails.)
//!
//! With faults (`tests/faultfs`, on a 2-shard executor with inline buffered writes, the default),
//! one group in four gets one rule on one open file for the length of the step: EIO on reads of a
//! range inside the file, EIO on writes of a range, short reads and writes (the executor
//! completes them: results as without the fault), ENOSPC after N bytes, or one failing fsync.
//! The model expects the error -- its errno, the operation's name (`read`, `write`, `fsync`,
//! `fdatasync`) and the file's path -- on exactly the operations that touch the faulty range, and
//! unchanged contents where a write failed: EIO fails a write before any byte lands. A failing
//! fsync fails the first sync of the file to reach the filesystem, which need not be the first
//! the step sent: the executor does not order syncs of one file against each other
//! (src/shard/order.rs), and those in flight together run on threads of their own (io_uring's
//! io-wq workers, the threads backend's workers) that reach the filesystem in any order. So in such a step the file gets at most one fsync and one
//! fdatasync, every one of them must have reached the filesystem (its record,
//! `Rules::syncs_seen`), and the one of the kind the filesystem failed must fail with EIO and
//! the other succeed. ENOSPC is different: the filesystem
//! takes a crossing write's bytes up to the limit and refuses the rest, and the executor reports
//! ENOSPC without a count, so that write lands partly; and which write of a group crosses the
//! limit depends on the order the executor runs non-overlapping writes in. So in an ENOSPC step
//! each write of the file must succeed whole or fail with ENOSPC, the whole writes must fit in
//! the room (and if all of them fit, none may fail), reads and sizes of the file are not checked,
//! the bytes outside the step's write ranges must be unchanged, and then the model takes the
//! file's contents from disk (re-synchronizes) before going on.
//!
//! Seeds: sequence `i` of a test uses seed `base + i`, the base fixed per test or taken from
//! `RINGSHARD_MODEL_SEED`; `RINGSHARD_MODEL_CASES` sets the sequences per test (a longer
//! campaign). No shrinking: a failure names the sequence's seed and lists its steps; rerun that
//! one sequence with `RINGSHARD_MODEL_SEED=<seed> RINGSHARD_MODEL_CASES=1 cargo test --test model
//! <test name>`. Each test prints `model: N sequences, M steps, K faults injected, 0 mismatches`
//! (K: faults the filesystem fired) and the operations it ran by kind.

mod executor_util;
mod faultfs;

use executor_util::*;
use faultfs::{Fault, FaultFs, Op, SyncSeen};
use ringshard::{Completion, Done, Error, Executor, File, OpenOptions};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NAMES: [&str; 4] = ["a", "b", "c", "d"];
const LOCAL_SEED: u64 = 0x5eed_0f12;
const FAULT_SEED: u64 = 0x5eed_fa17;

/// Prints a line straight to stderr, past the test harness's capture.
macro_rules! report {
    ($($arg:tt)*) => {
        report_line(format_args!($($arg)*))
    };
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

fn executor() -> Executor {
    Executor::builder()
        .shards(2)
        // Buffered writes stay inline whatever a loaded machine does to a FUSE call's timing:
        // on faultfs (FUSE_ASYNC_DIO) a short write through the ring comes back as EIO.
        .inline_write_stall(None)
        .build()
        .expect("executor")
}

// ---------------------------------------------------------------------------------------------
// Operations, expected and actual results
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Kind {
    Read { off: u64, len: usize },
    Write { off: u64, data: Vec<u8> },
    Sync { data_only: bool },
    Fallocate { off: u64, len: u64 },
    SetLen { len: u64 },
    Size,
    Close,
}

impl Kind {
    fn describe(&self) -> String {
        match self {
            Kind::Read { off, len } => format!("read({off}, {len})"),
            Kind::Write { off, data } => {
                format!(
                    "write({off}, {} bytes fnv {:016x})",
                    data.len(),
                    checksum(data)
                )
            }
            Kind::Sync { data_only: false } => "fsync".into(),
            Kind::Sync { data_only: true } => "fdatasync".into(),
            Kind::Fallocate { off, len } => format!("fallocate(0, {off}, {len})"),
            Kind::SetLen { len } => format!("set_len({len})"),
            Kind::Size => "size".into(),
            Kind::Close => "close".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Want {
    Data(Vec<u8>),
    Count(usize),
    Unit,
    Size(u64),
    Io {
        op: &'static str,
        errno: i32,
    },
    BadHandle,
    /// A write under an ENOSPC rule: all of it, or ENOSPC.
    CountOrEnospc(usize),
    /// Not checked: the file's contents are unknown (after a partial ENOSPC write).
    Any,
    /// A sync of the file under a failing fsync: EIO if the filesystem failed its kind, else
    /// success; replaced by one of those once the step ran (`Seq::resolve_fsync_once`).
    FsyncOnce,
}

#[derive(Debug)]
enum Got {
    Data(Vec<u8>),
    Count(usize),
    Unit,
    Size(u64),
    Err(Error),
}

fn got<T>(r: ringshard::Result<T>, f: impl FnOnce(T) -> Got) -> Got {
    match r {
        Ok(v) => f(v),
        Err(e) => Got::Err(e),
    }
}

/// Compares one result with the model's; `path` is the path the handle was opened with.
fn check(want: &Want, got: &Got, path: &Path) -> Result<(), String> {
    let fine = match (want, got) {
        (Want::Any, _) => true,
        (Want::Data(w), Got::Data(g)) => w == g,
        (Want::Count(w), Got::Count(g)) => w == g,
        (Want::Unit, Got::Unit) => true,
        (Want::Size(w), Got::Size(g)) => w == g,
        (Want::BadHandle, Got::Err(Error::BadHandle(_))) => true,
        (Want::CountOrEnospc(w), Got::Count(g)) => w == g,
        (
            Want::CountOrEnospc(_),
            Got::Err(Error::Io {
                op: "write",
                path: Some(p),
                errno: libc::ENOSPC,
                ..
            }),
        ) => p == path,
        (
            Want::Io { op, errno },
            Got::Err(Error::Io {
                op: o,
                path: Some(p),
                errno: e,
                ..
            }),
        ) => op == o && errno == e && p == path,
        _ => false,
    };
    if fine {
        return Ok(());
    }
    let show = |g: &Got| match g {
        Got::Data(d) => format!("Data({} bytes, fnv {:016x})", d.len(), checksum(d)),
        other => format!("{other:?}"),
    };
    let want_s = match want {
        Want::Data(d) => format!("Data({} bytes, fnv {:016x})", d.len(), checksum(d)),
        other => format!("{other:?}"),
    };
    Err(format!("want {want_s}, got {}", show(got)))
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// The fault in force for one step, on one file name.
#[derive(Debug, Clone)]
enum StepFault {
    EioRead(Range<u64>),
    EioWrite(Range<u64>),
    /// Short reads and writes: the executor completes them, results as without the fault.
    Short,
    /// Writes fail with ENOSPC once `room` bytes were written.
    Enospc {
        room: u64,
    },
    /// The first sync of the file to reach the filesystem fails with EIO. The step sends at
    /// most one fsync and one fdatasync on the file (these say which it sent so far): the kind
    /// the filesystem failed names the operation.
    FsyncOnce {
        fsync_sent: bool,
        fdatasync_sent: bool,
    },
}

struct Handle {
    file: File,
    append: bool,
}

/// Bytes of a file the model no longer knows (a write that crossed an ENOSPC limit).
#[derive(Debug, Clone)]
struct Unknown {
    /// The contents before the step.
    before: Vec<u8>,
    /// The ranges of the step's writes (an append's: from the old end of the file on).
    ranges: Vec<Range<u64>>,
}

#[derive(Default)]
struct Model {
    /// File name (without the sequence prefix) -> contents.
    files: BTreeMap<&'static str, Vec<u8>>,
    open: BTreeMap<&'static str, Handle>,
    /// Handles closed with `close`: every operation on them fails with `BadHandle`.
    stale: Vec<File>,
    unknown: BTreeMap<&'static str, Unknown>,
    fault: Option<(&'static str, StepFault)>,
}

fn overlaps(r: &Range<u64>, off: u64, len: u64) -> bool {
    len > 0 && off < r.end && r.start < off + len
}

impl Model {
    /// The result `kind` on `name`'s open handle must give; updates the model.
    fn apply(&mut self, name: &'static str, kind: &Kind) -> Want {
        let append = self.open.get(name).is_some_and(|h| h.append);
        let unknown = self.unknown.contains_key(name);
        let fault = match &mut self.fault {
            Some((n, f)) if *n == name => Some(f),
            _ => None,
        };
        let data = self.files.get_mut(name).expect("open file exists");
        match kind {
            Kind::Read { off, len } => {
                if unknown {
                    return Want::Any;
                }
                if let Some(StepFault::EioRead(r)) = fault {
                    if overlaps(r, *off, *len as u64) {
                        return Want::Io {
                            op: "read",
                            errno: libc::EIO,
                        };
                    }
                }
                let start = (*off as usize).min(data.len());
                let end = (*off as usize).saturating_add(*len).min(data.len());
                Want::Data(data[start..end].to_vec())
            }
            Kind::Write { off, data: bytes } => {
                let len = bytes.len() as u64;
                let at = if append { data.len() as u64 } else { *off };
                match fault {
                    Some(StepFault::EioWrite(r)) if overlaps(r, at, len) => {
                        return Want::Io {
                            op: "write",
                            errno: libc::EIO,
                        };
                    }
                    Some(StepFault::Enospc { .. }) => {
                        // Which write crosses the limit depends on the order the executor runs
                        // this group's writes in, free for writes that do not overlap: each one
                        // lands whole or fails with ENOSPC (having landed partly, or not at all).
                        let u = self.unknown.get_mut(name).expect("set when injected");
                        u.ranges.push(if append {
                            u.before.len() as u64..u64::MAX
                        } else {
                            at..at + len
                        });
                        return Want::CountOrEnospc(bytes.len());
                    }
                    _ => {}
                }
                let end = (at + len) as usize;
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[at as usize..end].copy_from_slice(bytes);
                Want::Count(bytes.len())
            }
            Kind::Sync { data_only } => match fault {
                Some(StepFault::FsyncOnce {
                    fsync_sent,
                    fdatasync_sent,
                }) => {
                    let sent = if *data_only {
                        fdatasync_sent
                    } else {
                        fsync_sent
                    };
                    assert!(
                        !*sent,
                        "plan sends one sync of each kind under a failing fsync"
                    );
                    *sent = true;
                    Want::FsyncOnce
                }
                _ => Want::Unit,
            },
            Kind::SetLen { len } => {
                // Planned only on files the model knows byte for byte (no fault on them).
                data.resize(*len as usize, 0);
                Want::Unit
            }
            Kind::Fallocate { off, len } => {
                let end = (off + len) as usize;
                if data.len() < end {
                    data.resize(end, 0);
                }
                if unknown {
                    Want::Any
                } else {
                    Want::Unit
                }
            }
            Kind::Size => {
                if unknown {
                    Want::Any
                } else {
                    Want::Size(data.len() as u64)
                }
            }
            Kind::Close => {
                let h = self.open.remove(name).expect("open");
                self.stale.push(h.file);
                Want::Unit
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One sequence
// ---------------------------------------------------------------------------------------------

/// Where a sequence's files are: `exec_dir` is the directory the executor opens in (the FUSE mount
/// with faults), `real_dir` where `std::fs` reads what landed (the backing directory).
struct Place<'a> {
    exec_dir: PathBuf,
    real_dir: PathBuf,
    fs: Option<&'a FaultFs>,
}

#[derive(Debug, Default, Clone)]
struct Figures {
    /// Operations and groups by kind.
    kinds: BTreeMap<&'static str, u64>,
    sequences: u64,
    steps: u64,
    ops: u64,
    fault_steps: u64,
    expected_errors: u64,
    /// Failing-fsync steps where the sync the filesystem failed was not the first one sent.
    syncs_overtaken: u64,
}

struct Seq<'a> {
    exec: &'a Executor,
    place: &'a Place<'a>,
    prefix: String,
    rng: Rng,
    model: Model,
    trace: Vec<String>,
    figures: Figures,
}

/// One planned operation, with the model's answer.
struct Planned {
    /// The file's name, `None` for an operation on a closed handle.
    name: Option<&'static str>,
    file: File,
    kind: Kind,
    want: Want,
}

impl Figures {
    fn count(&mut self, kind: &'static str) {
        *self.kinds.entry(kind).or_default() += 1;
    }

    fn add(&mut self, o: &Figures) {
        for (k, v) in &o.kinds {
            *self.kinds.entry(k).or_default() += v;
        }
        self.sequences += o.sequences;
        self.steps += o.steps;
        self.ops += o.ops;
        self.fault_steps += o.fault_steps;
        self.expected_errors += o.expected_errors;
        self.syncs_overtaken += o.syncs_overtaken;
    }

    fn kinds(&self) -> String {
        self.kinds
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Seq<'_> {
    fn exec_path(&self, name: &str) -> PathBuf {
        self.place.exec_dir.join(format!("{}{name}", self.prefix))
    }

    fn real_path(&self, name: &str) -> PathBuf {
        self.place.real_dir.join(format!("{}{name}", self.prefix))
    }

    fn fail(&self, what: String) -> String {
        format!(
            "{what}\nsteps of this sequence (newest last):\n  {}",
            self.trace.join("\n  ")
        )
    }

    fn step(&mut self) -> Result<(), String> {
        let r = self.rng.below(100);
        let closed: Vec<&'static str> = NAMES
            .iter()
            .copied()
            .filter(|n| !self.model.open.contains_key(n))
            .collect();
        let closed_existing: Vec<&'static str> = closed
            .iter()
            .copied()
            .filter(|n| self.model.files.contains_key(n))
            .collect();
        if self.model.open.is_empty() || (r < 12 && !closed.is_empty()) {
            let name = closed[self.rng.below(closed.len() as u64) as usize];
            return self.open(name);
        }
        if r < 24 && !closed_existing.is_empty() {
            let from = closed_existing[self.rng.below(closed_existing.len() as u64) as usize];
            if self.rng.chance(50) {
                return self.rename(from, &closed);
            }
            return self.unlink(from);
        }
        self.group()
    }

    fn open(&mut self, name: &'static str) -> Result<(), String> {
        let mut o = OpenOptions::new();
        let mode = self.rng.below(3);
        match mode {
            0 => o.read(true).write(true).create(true),
            1 => o.read(true).write(true).create(true).truncate(true),
            _ => o.read(true).append(true).create(true),
        };
        let label = ["create", "create+truncate", "append+create"][mode as usize];
        self.trace.push(format!("open {name} ({label})"));
        let file = wait(self.exec.open(self.exec_path(name), &o))
            .map_err(|e| self.fail(format!("open {name} ({label}): {e:?}")))?;
        let data = self.model.files.entry(name).or_default();
        if mode == 1 {
            data.clear();
        }
        self.figures
            .count(["open", "open+truncate", "open+append"][mode as usize]);
        self.model.open.insert(
            name,
            Handle {
                file,
                append: mode == 2,
            },
        );
        self.figures.ops += 1;
        self.verify_files()
    }

    fn rename(&mut self, from: &'static str, closed: &[&'static str]) -> Result<(), String> {
        let targets: Vec<&'static str> = closed.iter().copied().filter(|n| *n != from).collect();
        if targets.is_empty() {
            return Ok(());
        }
        let to = targets[self.rng.below(targets.len() as u64) as usize];
        self.trace.push(format!("rename {from} -> {to}"));
        wait(self.exec.rename(
            self.exec_path(from),
            self.exec_path(to),
            ringshard::RenameFlags::empty(),
        ))
        .map_err(|e| self.fail(format!("rename {from} -> {to}: {e}")))?;
        let data = self.model.files.remove(from).expect("exists");
        self.model.files.insert(to, data);
        self.figures.ops += 1;
        self.figures.count("rename");
        self.verify_files()
    }

    fn unlink(&mut self, name: &'static str) -> Result<(), String> {
        self.trace.push(format!("unlink {name}"));
        wait(self.exec.unlink(self.exec_path(name)))
            .map_err(|e| self.fail(format!("unlink {name}: {e}")))?;
        self.model.files.remove(name);
        self.figures.ops += 1;
        self.figures.count("unlink");
        self.verify_files()
    }

    /// Picks a fault for this step (fault runs only), installs its rule.
    fn inject(&mut self) {
        let Some(fs) = self.place.fs else { return };
        if !self.rng.chance(25) {
            return;
        }
        let names: Vec<&'static str> = self.model.open.keys().copied().collect();
        let name = names[self.rng.below(names.len() as u64) as usize];
        let size = self.model.files[name].len() as u64;
        let file = format!("{}{name}", self.prefix);
        let (fault, ops, range, rule) = match self.rng.below(5) {
            // Inside the file: a read touches it exactly when its range does, wherever the end
            // of the file is.
            0 if size > 0 => {
                let start = self.rng.below(size);
                let end = (start + self.rng.range(1, 4096)).min(size);
                (
                    StepFault::EioRead(start..end),
                    vec![Op::Read],
                    start..end,
                    Fault::Eio,
                )
            }
            1 => {
                let start = self.rng.below(size + 16_384);
                let end = start + self.rng.range(1, 4096);
                (
                    StepFault::EioWrite(start..end),
                    vec![Op::Write],
                    start..end,
                    Fault::Eio,
                )
            }
            2 => {
                let n = self.rng.range(1, 3000) as u32;
                (
                    StepFault::Short,
                    vec![Op::Read, Op::Write],
                    0..u64::MAX,
                    Fault::Short(n),
                )
            }
            3 => {
                let room = self.rng.below(12_000);
                (
                    StepFault::Enospc { room },
                    vec![Op::Write],
                    0..u64::MAX,
                    Fault::EnospcAfter(room),
                )
            }
            _ => (
                StepFault::FsyncOnce {
                    fsync_sent: false,
                    fdatasync_sent: false,
                },
                vec![Op::Fsync],
                0..u64::MAX,
                Fault::FailFsyncOnce,
            ),
        };
        self.trace.push(format!(
            "  fault on {name}: {fault:?} ({rule:?} over {range:?})"
        ));
        fs.rules().add(&file, &ops, range, rule);
        if let StepFault::Enospc { .. } = fault {
            // Reads and sizes of the file are not checked in this step (see `Want::Any`).
            self.model.unknown.insert(
                name,
                Unknown {
                    before: self.model.files[name].clone(),
                    ranges: Vec::new(),
                },
            );
        }
        self.model.fault = Some((name, fault));
        self.figures.fault_steps += 1;
    }

    /// Generates one operation for a group sent `how`.
    fn plan(&mut self, how: How) -> Option<Planned> {
        // An operation on a handle closed earlier.
        if !self.model.stale.is_empty() && self.rng.chance(8) {
            let file =
                self.model.stale[self.rng.below(self.model.stale.len() as u64) as usize].clone();
            let kind = match (how, self.rng.below(5)) {
                (_, 0) => Kind::Read { off: 0, len: 10 },
                (_, 1) => Kind::Write {
                    off: 0,
                    data: vec![1; 10],
                },
                (_, 2) => Kind::Sync { data_only: false },
                (How::Routed, 3) => Kind::Size,
                (How::Routed, _) => Kind::Close,
                _ => Kind::Read { off: 5, len: 5 },
            };
            return Some(Planned {
                name: None,
                file,
                kind,
                want: Want::BadHandle,
            });
        }
        let names: Vec<&'static str> = self.model.open.keys().copied().collect();
        if names.is_empty() {
            return None;
        }
        let name = names[self.rng.below(names.len() as u64) as usize];
        let size = self.model.files[name].len() as u64;
        let r = self.rng.below(100);
        let known = !self.model.unknown.contains_key(name)
            && !matches!(&self.model.fault, Some((n, _)) if *n == name);
        let kind = match how {
            How::Routed if r >= 86 => Kind::Close,
            How::Routed if (70..74).contains(&r) && known => Kind::SetLen {
                len: self.rng.below(size + 8192),
            },
            How::Routed if r >= 82 => Kind::Size,
            How::Routed if r >= 74 => Kind::Fallocate {
                off: self.rng.below(size + 8192),
                len: self.rng.range(1, 8192),
            },
            _ if r < 35 => Kind::Read {
                off: self.rng.below(size + 100),
                len: self.rng.range(1, 16_384) as usize,
            },
            _ if r < 65 => {
                let len = self.rng.range(1, 8192) as usize;
                Kind::Write {
                    off: self.rng.below(size + 4096),
                    data: self.rng.bytes(len),
                }
            }
            How::Batched => Kind::Sync { data_only: false },
            _ => Kind::Sync {
                data_only: self.rng.chance(50),
            },
        };
        // Under a failing fsync, one sync of each kind on the file (see `StepFault::FsyncOnce`):
        // a second one of a kind becomes the other kind where the group can send it, else it is
        // not sent.
        let kind = match (kind, &self.model.fault) {
            (
                Kind::Sync { data_only },
                Some((
                    n,
                    StepFault::FsyncOnce {
                        fsync_sent,
                        fdatasync_sent,
                    },
                )),
            ) if *n == name => {
                let sent = |d: bool| if d { *fdatasync_sent } else { *fsync_sent };
                if !sent(data_only) {
                    Kind::Sync { data_only }
                } else if how != How::Batched && !sent(!data_only) {
                    Kind::Sync {
                        data_only: !data_only,
                    }
                } else {
                    return None;
                }
            }
            (kind, _) => kind,
        };
        let want = self.model.apply(name, &kind);
        let file = self.model.open_or_stale(name);
        Some(Planned {
            name: Some(name),
            file,
            kind,
            want,
        })
    }

    fn group(&mut self) -> Result<(), String> {
        let how = match self.rng.below(3) {
            0 => How::Routed,
            1 => How::Batched,
            _ => How::Session,
        };
        self.inject();
        let start_sizes: BTreeMap<&'static str, u64> = self
            .model
            .files
            .iter()
            .map(|(n, d)| (*n, d.len() as u64))
            .collect();
        let n = self.rng.range(1, 4);
        let mut planned = Vec::new();
        for _ in 0..n {
            if let Some(p) = self.plan(how) {
                planned.push(p);
            }
        }
        self.trace.push(format!(
            "{how:?}: {}",
            planned
                .iter()
                .map(|p| format!("{} on {}", p.kind.describe(), p.file.path().display()))
                .collect::<Vec<_>>()
                .join("; ")
        ));
        let results = match how {
            How::Routed => self.run_routed(&planned),
            How::Batched => self.run_batch(&planned),
            How::Session => self.run_session(&planned),
        };
        let fault = self.model.fault.take();
        let mut seen = Vec::new();
        if let Some(fs) = self.place.fs {
            let mut rules = fs.rules();
            if let Some((name, StepFault::FsyncOnce { .. })) = &fault {
                seen = rules.syncs_seen(&format!("{}{name}", self.prefix));
            }
            rules.clear();
        }
        if let Some((name, StepFault::FsyncOnce { .. })) = &fault {
            self.resolve_fsync_once(name, &seen, &mut planned)?;
        }
        self.figures.ops += planned.len() as u64;
        self.figures.count(match how {
            How::Routed => "groups of Completions",
            How::Batched => "Batches",
            How::Session => "Session groups",
        });
        for p in &planned {
            let append = p
                .name
                .is_some_and(|n| self.model.open.get(n).is_some_and(|h| h.append));
            self.figures.count(match (&p.kind, p.name) {
                (_, None) => "ops on closed handles",
                (Kind::Read { .. }, _) => "reads",
                (Kind::Write { .. }, _) if append => "appends",
                (Kind::Write { .. }, _) => "writes",
                (Kind::Sync { data_only: false }, _) => "fsyncs",
                (Kind::Sync { data_only: true }, _) => "fdatasyncs",
                (Kind::Fallocate { .. }, _) => "fallocates",
                (Kind::SetLen { .. }, _) => "set_lens",
                (Kind::Size, _) => "sizes",
                (Kind::Close, _) => "closes",
            });
        }
        for (i, (p, g)) in planned.iter().zip(&results).enumerate() {
            if let Want::Io { .. } = p.want {
                self.figures.expected_errors += 1;
            }
            let others: Vec<&Planned> = planned
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, q)| q)
                .collect();
            let start_size = p
                .name
                .map_or(0, |n| start_sizes.get(n).copied().unwrap_or(0));
            // The executor orders a read that may reach the end of the file after every earlier
            // write above it (src/shard/order.rs), so its end of file is the model's exactly. A
            // read that only `read_eof_race` would explain is a mismatch, reported as such.
            let raced = self.read_eof_race(p, &others, start_size, g);
            raced
                .and_then(|r| {
                    if r {
                        Err(
                            "the read's end of file raced a write of its group (the executor \
                             must order it after writes above it)"
                                .to_string(),
                        )
                    } else {
                        check(&p.want, g, p.file.path())
                    }
                })
                .map_err(|e| {
                    self.fail(format!(
                        "operation {i} ({} on {}) of the last step (fault {fault:?}): {e}",
                        p.kind.describe(),
                        p.file.path().display()
                    ))
                })?;
        }
        if let Some((name, StepFault::Enospc { room })) = &fault {
            // The writes that succeeded fit in the room; if all fit, none failed.
            let (mut ok, mut all, mut failed) = (0u64, 0u64, 0u64);
            for (p, g) in planned.iter().zip(&results) {
                if let (Some(n), Kind::Write { data, .. }) = (p.name, &p.kind) {
                    if n == *name {
                        all += data.len() as u64;
                        match g {
                            Got::Count(c) => ok += *c as u64,
                            _ => failed += 1,
                        }
                    }
                }
            }
            self.figures.expected_errors += failed;
            if ok > *room || (all <= *room && failed > 0) {
                return Err(self.fail(format!(
                    "ENOSPC after {room} bytes: {ok} of {all} bytes written in whole writes, \
                     {failed} writes failed"
                )));
            }
        }
        self.resync()?;
        self.verify_files()
    }

    /// Under a failing fsync on `name`: checks the filesystem's record of the step's syncs of the
    /// file (`seen`, in arrival order) -- each one the step sent arrived, nothing else did, and
    /// the rule failed the first with EIO and only it -- then expects EIO on the step's sync of
    /// the kind that arrived first and success on the other.
    fn resolve_fsync_once(
        &mut self,
        name: &'static str,
        seen: &[SyncSeen],
        planned: &mut [Planned],
    ) -> Result<(), String> {
        let label = |data_only: bool| if data_only { "fdatasync" } else { "fsync" };
        let sent: Vec<bool> = planned
            .iter()
            .filter_map(|p| match (p.name, &p.kind) {
                (Some(n), Kind::Sync { data_only }) if n == name => Some(*data_only),
                _ => None,
            })
            .collect();
        assert!(
            !(sent.len() == 2 && sent[0] == sent[1]) && sent.len() <= 2,
            "plan sends one sync of each kind under a failing fsync: {sent:?}"
        );
        let arrived: Vec<bool> = seen.iter().map(|s| s.datasync).collect();
        let (mut a, mut b) = (arrived.clone(), sent.clone());
        a.sort_unstable();
        b.sort_unstable();
        let rule_kept = seen
            .iter()
            .enumerate()
            .all(|(i, s)| s.errno == (i == 0).then_some(libc::EIO));
        if a != b || !rule_kept {
            return Err(self.fail(format!(
                "syncs of {name} under a failing fsync: the step sent {:?}, the filesystem saw \
                 {seen:?}",
                sent.iter().map(|&d| label(d)).collect::<Vec<_>>()
            )));
        }
        let Some(first) = seen.first() else {
            return Ok(());
        };
        self.trace.push(format!(
            "  the filesystem failed the {} of {name} (arrival order: {})",
            label(first.datasync),
            arrived
                .iter()
                .map(|&d| label(d))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        if sent[0] != first.datasync {
            self.figures.syncs_overtaken += 1;
        }
        for p in planned.iter_mut() {
            if let (Some(n), Kind::Sync { data_only }) = (p.name, &p.kind) {
                if n == name {
                    p.want = if *data_only == first.datasync {
                        Want::Io {
                            op: label(*data_only),
                            errno: libc::EIO,
                        }
                    } else {
                        Want::Unit
                    };
                }
            }
        }
        Ok(())
    }

    /// A read in the same group as a write to the same file that does not overlap it may see
    /// the end of the file from before or after that write. The executor orders operations on
    /// one file by byte range (src/shard/order.rs: a read waits only for earlier overlapping
    /// writes, a write only for earlier overlapping reads), and a write past the end of the file
    /// also changes what a read below it returns -- end of file or the zeros of the hole it
    /// makes -- though their ranges do not overlap. So: the bytes the read returns must agree
    /// with the model at the read's place in the group on every byte both have; it may return
    /// fewer (not fewer than the size at the start of the group allows) or more (each extra
    /// byte a zero of a hole, or the byte there at the end of the group).
    fn read_eof_race(
        &self,
        p: &Planned,
        others: &[&Planned],
        start_size: u64,
        got: &Got,
    ) -> Result<bool, String> {
        let (Some(name), Kind::Read { off, len }, Want::Data(want), Got::Data(g)) =
            (p.name, &p.kind, &p.want, got)
        else {
            return Ok(false);
        };
        let writes = others
            .iter()
            .any(|q| q.name == Some(name) && matches!(q.kind, Kind::Write { .. }));
        if !writes || g.len() == want.len() {
            return Ok(false);
        }
        let end = &self.model.files[name];
        let off = *off as usize;
        let floor = (start_size as usize).saturating_sub(off).min(*len);
        let common = g.len().min(want.len());
        let fine = g.len() >= floor
            && g.len() <= *len
            && off + g.len() <= end.len()
            && g[..common] == want[..common]
            && g[common..]
                .iter()
                .enumerate()
                .all(|(i, &b)| b == 0 || b == end[off + common + i]);
        if fine {
            return Ok(true);
        }
        Err(format!(
            "a read at the end of the file returned {} bytes, the model {} (size {start_size} at \
             the start of the group, {} at its end): not explained by the group's other writes",
            g.len(),
            want.len(),
            end.len()
        ))
    }

    fn run_routed(&self, planned: &[Planned]) -> Vec<Got> {
        let e = self.exec;
        enum C {
            D(Completion<Vec<u8>>),
            N(Completion<usize>),
            U(Completion<()>),
            S(Completion<u64>),
        }
        let cs: Vec<C> = planned
            .iter()
            .map(|p| match &p.kind {
                Kind::Read { off, len } => C::D(e.read(&p.file, *off, *len)),
                Kind::Write { off, data } => C::N(e.write(&p.file, *off, data.clone())),
                Kind::Sync { data_only: false } => C::U(e.fsync(&p.file)),
                Kind::Sync { data_only: true } => C::U(e.fdatasync(&p.file)),
                Kind::Fallocate { off, len } => {
                    C::U(e.fallocate(&p.file, ringshard::FallocateMode::Allocate, *off, *len))
                }
                Kind::SetLen { len } => C::U(e.set_len(&p.file, *len)),
                Kind::Size => C::S(e.size(&p.file)),
                Kind::Close => C::U(e.close(&p.file)),
            })
            .collect();
        cs.into_iter()
            .map(|c| match c {
                C::D(c) => got(wait(c), Got::Data),
                C::N(c) => got(wait(c), Got::Count),
                C::U(c) => got(wait(c), |()| Got::Unit),
                C::S(c) => got(wait(c), Got::Size),
            })
            .collect()
    }

    fn run_batch(&self, planned: &[Planned]) -> Vec<Got> {
        enum C {
            D(Completion<Vec<u8>>),
            N(Completion<usize>),
            U(Completion<()>),
        }
        let mut b = self.exec.batch();
        let cs: Vec<C> = planned
            .iter()
            .map(|p| match &p.kind {
                Kind::Read { off, len } => C::D(b.read(&p.file, *off, *len)),
                Kind::Write { off, data } => C::N(b.write(&p.file, *off, data.clone())),
                Kind::Sync { .. } => C::U(b.fsync(&p.file)),
                other => unreachable!("not in a batch: {other:?}"),
            })
            .collect();
        b.submit();
        cs.into_iter()
            .map(|c| match c {
                C::D(c) => got(wait(c), Got::Data),
                C::N(c) => got(wait(c), Got::Count),
                C::U(c) => got(wait(c), |()| Got::Unit),
            })
            .collect()
    }

    fn run_session(&self, planned: &[Planned]) -> Vec<Got> {
        let mut s = self.exec.session();
        let mut results: Vec<Option<Got>> = planned.iter().map(|_| None).collect();
        let mut sent = 0;
        for (i, p) in planned.iter().enumerate() {
            let t = i as u64;
            let r = match &p.kind {
                Kind::Read { off, len } => s.read(&p.file, *off, *len, Vec::new(), t),
                Kind::Write { off, data } => s.write(&p.file, *off, data.clone(), t),
                Kind::Sync { data_only: false } => s.fsync(&p.file, t),
                Kind::Sync { data_only: true } => s.fdatasync(&p.file, t),
                other => unreachable!("not in a session: {other:?}"),
            };
            match r {
                Ok(()) => sent += 1,
                Err(e) => results[i] = Some(Got::Err(e)),
            }
        }
        let mut out: Vec<Done> = Vec::new();
        while out.len() < sent {
            if let Err(e) = s.wait_timeout(sent - out.len(), HANG, &mut out) {
                panic!("session wait: {e:?} with {} of {sent} results", out.len());
            }
        }
        for d in out {
            let i = d.token as usize;
            results[i] = Some(match (&planned[i].kind, d.result) {
                (_, Err(e)) => Got::Err(e),
                (Kind::Read { .. }, Ok(n)) => {
                    assert_eq!(d.buf.len(), n, "a session read's buffer holds what it read");
                    Got::Data(d.buf)
                }
                (Kind::Write { .. }, Ok(n)) => Got::Count(n),
                (_, Ok(0)) => Got::Unit,
                (_, Ok(n)) => Got::Count(n),
            });
        }
        results
            .into_iter()
            .map(|r| r.expect("every request has a result"))
            .collect()
    }

    /// After a write that crossed an ENOSPC limit: everything outside its range is as before
    /// (the file may have grown by what landed), then the model takes the file as it is.
    fn resync(&mut self) -> Result<(), String> {
        let unknown = std::mem::take(&mut self.model.unknown);
        for (name, u) in unknown {
            let real = std::fs::read(self.real_path(name))
                .map_err(|e| self.fail(format!("read {name} after ENOSPC: {e}")))?;
            let before = &u.before;
            let inside = |i: u64| u.ranges.iter().any(|r| r.contains(&i));
            let changed = (0..before.len()).find(|&i| !inside(i as u64) && real[i] != before[i]);
            if real.len() < before.len() || changed.is_some() {
                return Err(self.fail(format!(
                    "{name} after ENOSPC: {} bytes, was {}; first byte changed outside the \
                     step's writes {:?}: {changed:?}",
                    real.len(),
                    before.len(),
                    u.ranges
                )));
            }
            self.trace.push(format!(
                "  resync {name} from disk after ENOSPC: {} bytes (was {})",
                real.len(),
                before.len()
            ));
            self.model.files.insert(name, real);
        }
        Ok(())
    }

    /// Every file's contents equal the model's; no other file of this sequence exists.
    fn verify_files(&self) -> Result<(), String> {
        for name in NAMES {
            let path = self.real_path(name);
            match (self.model.files.get(name), std::fs::read(&path)) {
                (Some(want), Ok(real)) => {
                    if &real != want {
                        let first = real
                            .iter()
                            .zip(want)
                            .position(|(a, b)| a != b)
                            .unwrap_or(real.len().min(want.len()));
                        return Err(self.fail(format!(
                            "contents of {name}: {} bytes on disk (fnv {:016x}), model {} \
                             (fnv {:016x}); first difference at byte {first}",
                            real.len(),
                            checksum(&real),
                            want.len(),
                            checksum(want)
                        )));
                    }
                }
                (None, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                (want, real) => {
                    return Err(self.fail(format!(
                        "{name}: model has it: {}, on disk: {:?}",
                        want.is_some(),
                        real.map(|d| d.len())
                    )))
                }
            }
        }
        Ok(())
    }

    /// Closes what is open (each close must succeed).
    fn finish(&mut self) -> Result<(), String> {
        let open: Vec<&'static str> = self.model.open.keys().copied().collect();
        for name in open {
            let h = self.model.open.remove(name).expect("open");
            wait(self.exec.close(&h.file))
                .map_err(|e| self.fail(format!("final close of {name}: {e:?}")))?;
        }
        self.verify_files()
    }
}

impl Model {
    /// The handle `name` was last opened with (closed by now if the operation was a close).
    fn open_or_stale(&self, name: &str) -> File {
        match self.open.get(name) {
            Some(h) => h.file.clone(),
            None => self.stale.last().expect("just closed").clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    Routed,
    Batched,
    Session,
}

/// Runs `cases` sequences of `steps` steps from `base_seed` for test `test`; returns the figures,
/// or panics at the first mismatch with the seed and command that reproduce it.
fn campaign(
    test: &str,
    exec: &Executor,
    place: &Place<'_>,
    base_seed: u64,
    cases: u64,
    steps: u64,
) -> Figures {
    let mut total = Figures::default();
    for i in 0..cases {
        let seed = base_seed.wrapping_add(i);
        let mut seq = Seq {
            exec,
            place,
            prefix: format!("s{i}-"),
            rng: Rng::new(seed),
            model: Model::default(),
            trace: Vec::new(),
            figures: Figures::default(),
        };
        let mut run = || -> Result<(), String> {
            for _ in 0..steps {
                seq.step()?;
                seq.figures.steps += 1;
            }
            seq.finish()
        };
        if let Err(e) = run() {
            panic!(
                "model mismatch in sequence {i}, seed {seed:#x} (rerun: RINGSHARD_MODEL_SEED={seed:#x} \
                 RINGSHARD_MODEL_CASES=1 cargo test --test model {test}): {e}"
            );
        }
        seq.figures.sequences = 1;
        total.add(&seq.figures);
    }
    total
}

fn cases(default: u64) -> u64 {
    env_u64("RINGSHARD_MODEL_CASES").unwrap_or(default).max(1)
}

fn base_seed(default: u64) -> u64 {
    env_u64("RINGSHARD_MODEL_SEED").unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn model_sequences_match_on_a_local_filesystem() {
    let _dog = Watchdog::new("model_sequences_match_on_a_local_filesystem", LIMIT);
    let start = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let exec = executor();
    let place = Place {
        exec_dir: dir.path().to_path_buf(),
        real_dir: dir.path().to_path_buf(),
        fs: None,
    };
    let f = campaign(
        "model_sequences_match_on_a_local_filesystem",
        &exec,
        &place,
        base_seed(LOCAL_SEED),
        cases(300),
        50,
    );
    report!(
        "model: {} sequences, {} steps, 0 faults injected, 0 mismatches ({} operations; local \
         filesystem, 2 shards; {:.2?})\n  model (local) by kind: {}",
        f.sequences,
        f.steps,
        f.ops,
        start.elapsed(),
        f.kinds()
    );
}

#[test]
fn model_sequences_match_under_faults() {
    let _dog = Watchdog::new("model_sequences_match_under_faults", LIMIT);
    let start = Instant::now();
    let Some(fs) = faultfs::mount_or_skip("model_sequences_match_under_faults") else {
        return;
    };
    let exec = executor();
    let place = Place {
        exec_dir: fs.path().to_path_buf(),
        real_dir: fs.backing(""),
        fs: Some(&fs),
    };
    let f = campaign(
        "model_sequences_match_under_faults",
        &exec,
        &place,
        base_seed(FAULT_SEED),
        cases(150),
        50,
    );
    let c = fs.counts();
    let fired =
        c.eio + c.short_reads + c.short_writes + c.enospc + c.enospc_partial + c.fsync_failed;
    report!(
        "model: {} sequences, {} steps, {} faults injected, 0 mismatches ({} operations, {} fault \
         rules over as many steps, {} errors expected and reported; fired: {} EIO, {} short \
         reads, {} short writes, {} ENOSPC, {} writes cut at an ENOSPC limit, {} failed fsyncs \
         ({} of them not on the first sync the step sent: it arrived later); \
         faultfs, 2 shards; {:.2?})\n  model (faults) by kind: {}",
        f.sequences,
        f.steps,
        fired,
        f.ops,
        f.fault_steps,
        f.expected_errors,
        c.eio,
        c.short_reads,
        c.short_writes,
        c.enospc,
        c.enospc_partial,
        c.fsync_failed,
        f.syncs_overtaken,
        start.elapsed(),
        f.kinds()
    );
    drop(exec);
}

/// A campaign may run long; the watchdog only catches hangs.
const LIMIT: Duration = Duration::from_secs(3600);
