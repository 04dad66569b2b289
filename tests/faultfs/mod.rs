//! A fault-injecting FUSE filesystem for tests (not a test target of its own: a test file includes
//! it with `mod faultfs;`).
//!
//! [`FaultFs::mount`] mounts a passthrough filesystem on a fresh temporary directory, served by a
//! background thread of the test process (the `fuser` crate, pure-Rust mount: as root it calls
//! mount(2) on /dev/fuse itself; otherwise fuser runs fusermount3). Files live in a backing
//! directory (a second temporary directory), so a test can check what really landed with plain
//! `std::fs` on [`FaultFs::backing`], bypassing FUSE. Dropping it unmounts (lazily, so a
//! descriptor still open does not keep it mounted).
//!
//! The directory is flat (files only, no subdirectories). Each operation that reaches the
//! filesystem is checked against [`Rules`], shared as `Arc<Mutex<Rules>>` and changeable while
//! mounted: per file name, per operation (read, write, fsync; lookup and unlink of a name) and per
//! byte range, a rule returns EIO, cuts a transfer short, delays the operation, holds it until the
//! test releases it ([`FaultFs::release_held`]), returns ENOSPC once N bytes were written, or
//! fails one fsync. Every fault that fires is counted ([`Counts`]). The fsyncs and fdatasyncs a
//! rule matched are recorded in the order they reached the filesystem ([`Rules::syncs_seen`]):
//! syncs of one file in flight together reach it in any order, so this is how a test tells which
//! one a rule failed.
//!
//! A held operation is what a test uses to have something in flight for as long as it needs,
//! whatever the machine's speed: it waits until [`FaultFs::held`] counts the operation, asserts
//! what must hold meanwhile, then lets go ([`FaultFs::release_all`]). A delay only makes an
//! operation slow; never assert that something is still pending after one.
//!
//! A failing test must not leave the process stuck: the filesystem is served by the test process
//! itself, and a thread waiting in the kernel for an answer that was sent to it waits
//! uninterruptibly, even for a process being killed. So a test that holds operations keeps a
//! [`FaultFs::release_on_drop`] guard declared after its executor (its unwinding then answers
//! what is held before the executor's shutdown waits for it), and a
//! [`Watchdog`](crate::executor_util::Watchdog) about to abort the process first aborts every
//! mounted faultfs connection (`umount2(MNT_FORCE)`), which ends all such waits.
//!
//! Mount and open choices:
//! - Files are opened with `FOPEN_DIRECT_IO` and without `FOPEN_KEEP_CACHE`: every read(2) and
//!   write(2) the executor makes reaches this filesystem with its own offset and length (the
//!   kernel splits only at max_read/max_write), and its result (a short count, an errno) goes back
//!   unchanged. Through the page cache, the kernel would serve reads from cached pages (a rule
//!   would not fire), read ahead in page-sized pieces (a rule would hit neighbouring reads), and
//!   treat a short read as end of file (and shrink the cached size). The executor still takes its
//!   page-cache path (the file is not opened O_DIRECT); only the FUSE layer bypasses the cache.
//! - The kernel is asked for asynchronous direct I/O (`FUSE_ASYNC_DIO`). Without it (fuser does
//!   not ask by default), a read through io_uring that the filesystem answers short -- at the end
//!   of the file, too -- is retried by the kernel at the same offset, not where the short read
//!   ended, and the CQE reports the full length with bytes repeated (kernel 6.18: FUSE's
//!   synchronous direct I/O path leaves `ki_pos` where it was, and io_uring's retry of a short
//!   read of a regular file starts from it). With it, the short count reaches the executor.
//! - Files are opened with `FOPEN_NOFLUSH`: close(2) sends no FLUSH. The kernel waits for a FLUSH
//!   answer uninterruptibly; if the test process exits or aborts (a watchdog) while a shard
//!   thread closes a file, the serving thread is gone, the closing thread never returns, and the
//!   process stays a zombie holding the mount (seen once while writing these tests).
//! - Attribute and entry timeouts are zero: sizes always come from the backing file.
//! - Lookups in the directory may run in parallel (`FUSE_PARALLEL_DIROPS`): a held lookup holds
//!   only its own caller.
//! - Delayed operations are carried out on a thread of their own, and held ones by the thread that
//!   releases them, so one stalled file never holds up the filesystem's request loop: what stalls
//!   is only what the kernel and the executor make wait for it.

#![allow(dead_code)] // each test binary uses a different subset

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    WriteFlags,
};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An operation a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Read,
    Write,
    /// fsync and fdatasync.
    Fsync,
    /// LOOKUP of the name (a path walk that reaches it: stat, open, unlink, rename ...).
    Lookup,
    /// UNLINK of the name.
    Unlink,
}

/// What a rule does to a matching operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail with EIO.
    Eio,
    /// Transfer at most this many bytes (at least 1) per call: a short read or short write.
    Short(u32),
    /// Writes answer that they wrote nothing, without an error (a broken filesystem): a caller
    /// that asks again forever, or takes it for success, is caught.
    WriteNothing,
    /// Carry the operation out this much later.
    Delay(Duration),
    /// Writes succeed until this many bytes were written through the rule; the write that
    /// crosses the limit is cut short at it (as a full disk does), later ones fail with ENOSPC.
    EnospcAfter(u64),
    /// The next fsync fails with EIO (without syncing); later ones pass through.
    FailFsyncOnce,
    /// The operation waits, unanswered, until [`FaultFs::release_held`] (or the unmount): what
    /// must be in flight stays in flight for as long as the test needs, whatever the machine's
    /// speed. Files are opened `FOPEN_DIRECT_IO`, so a held read holds no page or inode lock: a
    /// truncate or unlink of its file, or another file's I/O, goes on beside it (seen on 6.18).
    /// A held write holds its file's inode lock (FUSE direct writes take it): a truncate or
    /// another write of that file waits for it.
    Hold,
}

/// One rule: `fault` for operations `ops` on file `file` (a name in the mount's root) that touch
/// `range` (fsync, lookup and unlink always match it). An open file matches by its name now: once
/// unlinked, its operations match no rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub file: OsString,
    pub ops: Vec<Op>,
    pub range: Range<u64>,
    pub fault: Fault,
    /// Bytes written through an `EnospcAfter` rule; 1 once a `FailFsyncOnce` rule fired.
    used: u64,
}

/// How many faults fired, and how many operations the filesystem saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub reads: u64,
    pub writes: u64,
    pub fsyncs: u64,
    pub eio: u64,
    pub short_reads: u64,
    pub short_writes: u64,
    pub delayed: u64,
    /// Writes cut short at an `EnospcAfter` limit.
    pub enospc_partial: u64,
    /// Writes failed with ENOSPC.
    pub enospc: u64,
    pub fsync_failed: u64,
    /// Operations held by a `Hold` rule (released or not).
    pub held: u64,
}

/// An fsync or fdatasync that reached the filesystem while a rule on its file matched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncSeen {
    /// An fdatasync (not an fsync).
    pub datasync: bool,
    /// The error a rule failed it with.
    pub errno: Option<i32>,
}

/// The rules of a mounted [`FaultFs`], and the counts of what fired.
#[derive(Debug, Default)]
pub struct Rules {
    rules: Vec<Rule>,
    /// The syncs rules matched since the last [`clear`](Rules::clear), by file, in arrival order.
    syncs: Vec<(OsString, SyncSeen)>,
    pub counts: Counts,
}

impl Rules {
    /// Adds a rule: `fault` for `ops` on `file` over `range`.
    pub fn add(&mut self, file: &str, ops: &[Op], range: Range<u64>, fault: Fault) {
        self.rules.push(Rule {
            file: file.into(),
            ops: ops.to_vec(),
            range,
            fault,
            used: 0,
        });
    }

    /// Removes every rule and the record of the syncs they saw (the counts stay).
    pub fn clear(&mut self) {
        self.rules.clear();
        self.syncs.clear();
    }

    /// The fsyncs and fdatasyncs on `file` that a rule matched since the last
    /// [`clear`](Self::clear), in the order they reached the filesystem, with what each got.
    /// Syncs of one file in flight together run on threads of their own (io_uring's io-wq
    /// workers, the threads backend's workers), which take the inode's lock (`fuse_fsync`) in
    /// any order: the first one the caller sent need not be the first to arrive, nor the one a
    /// `FailFsyncOnce` rule fails.
    pub fn syncs_seen(&self, file: &str) -> Vec<SyncSeen> {
        self.syncs
            .iter()
            .filter(|(f, _)| f == file)
            .map(|(_, s)| *s)
            .collect()
    }

    /// [`decide`](Self::decide) for an fsync (`datasync`: an fdatasync) of `file`, recorded for
    /// [`syncs_seen`](Self::syncs_seen) if a rule matches it.
    fn decide_sync(&mut self, file: &OsStr, datasync: bool) -> Action {
        let act = self.decide(file, Op::Fsync, 0, 0);
        if self
            .rules
            .iter()
            .any(|r| r.file == file && r.ops.contains(&Op::Fsync))
        {
            let seen = SyncSeen {
                datasync,
                errno: act.errno,
            };
            self.syncs.push((file.to_owned(), seen));
        }
        act
    }

    /// Removes the `Hold` rules; the others stay. Then [`FaultFs::release_held`] lets go of
    /// everything held, and nothing arriving later is held.
    pub fn remove_holds(&mut self) {
        self.rules.retain(|r| r.fault != Fault::Hold);
    }

    /// Decides what happens to `op` on `file` over `off..off + len`.
    fn decide(&mut self, file: &OsStr, op: Op, off: u64, len: u64) -> Action {
        let mut act = Action {
            delay: Duration::ZERO,
            hold: false,
            errno: None,
            len,
        };
        match op {
            Op::Read => self.counts.reads += 1,
            Op::Write => self.counts.writes += 1,
            Op::Fsync => self.counts.fsyncs += 1,
            Op::Lookup | Op::Unlink => {}
        }
        let end = off.saturating_add(len.max(1));
        let whole = matches!(op, Op::Fsync | Op::Lookup | Op::Unlink);
        for r in &mut self.rules {
            let hit = r.file == file
                && r.ops.contains(&op)
                && (whole || (off < r.range.end && r.range.start < end));
            if !hit {
                continue;
            }
            match r.fault {
                Fault::Delay(d) => act.delay += d,
                Fault::Hold => act.hold = true,
                Fault::Eio => act.errno = act.errno.or(Some(libc::EIO)),
                Fault::Short(max) => act.len = act.len.min(u64::from(max.max(1))),
                Fault::WriteNothing if op == Op::Write => act.len = 0,
                Fault::EnospcAfter(limit) if op == Op::Write => {
                    let room = limit.saturating_sub(r.used);
                    if room == 0 {
                        act.errno = act.errno.or(Some(libc::ENOSPC));
                    } else if room < act.len {
                        act.len = room;
                    }
                }
                Fault::FailFsyncOnce if op == Op::Fsync && r.used == 0 => {
                    r.used = 1;
                    act.errno = act.errno.or(Some(libc::EIO));
                    self.counts.fsync_failed += 1;
                }
                _ => {}
            }
        }
        // Account what fired (and what an ENOSPC rule let through) once the outcome is known.
        if act.errno.is_none() && op == Op::Write {
            for r in &mut self.rules {
                if let Fault::EnospcAfter(_) = r.fault {
                    if r.file == file && r.ops.contains(&op) && off < r.range.end {
                        r.used += act.len;
                    }
                }
            }
        }
        if !act.delay.is_zero() {
            self.counts.delayed += 1;
        }
        if act.hold {
            self.counts.held += 1;
        }
        match act.errno {
            Some(libc::ENOSPC) => self.counts.enospc += 1,
            Some(_) if op != Op::Fsync => self.counts.eio += 1,
            Some(_) => {}
            None if act.len < len => {
                let enospc_cut = self.rules.iter().any(|r| {
                    r.file == file
                        && matches!(r.fault, Fault::EnospcAfter(l) if r.used >= l)
                        && r.ops.contains(&op)
                });
                match op {
                    Op::Write if enospc_cut => self.counts.enospc_partial += 1,
                    Op::Write => self.counts.short_writes += 1,
                    _ => self.counts.short_reads += 1,
                }
            }
            None => {}
        }
        act
    }
}

/// What one operation gets.
#[derive(Debug, Clone, Copy)]
struct Action {
    delay: Duration,
    /// Wait for [`FaultFs::release_held`].
    hold: bool,
    errno: Option<i32>,
    /// Bytes to transfer at most.
    len: u64,
}

/// A mounted fault-injecting filesystem; unmounted when dropped.
pub struct FaultFs {
    rules: Arc<Mutex<Rules>>,
    held: Held,
    backing: tempfile::TempDir,
    mountpoint: tempfile::TempDir,
    session: Option<fuser::BackgroundSession>,
}

impl FaultFs {
    /// Mounts an empty filesystem, or says why it cannot (no /dev/fuse, mount refused).
    pub fn mount() -> Result<FaultFs, String> {
        Self::mount_with(true)
    }

    /// [`mount`](Self::mount), asking the kernel for asynchronous direct I/O (`FUSE_ASYNC_DIO`) or
    /// not: see the module docs for what changes.
    pub fn mount_with(async_dio: bool) -> Result<FaultFs, String> {
        if !Path::new("/dev/fuse").exists() {
            return Err("/dev/fuse is missing (no FUSE in this kernel or container)".into());
        }
        let backing = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let mountpoint = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let rules = Arc::new(Mutex::new(Rules::default()));
        let held = Held::default();
        let fs = Fs(Arc::new(Inner {
            root: backing.path().to_path_buf(),
            rules: Arc::clone(&rules),
            held: held.clone(),
            names: Mutex::new(Names::default()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            async_dio,
        }));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("faultfs".into()),
            MountOption::Subtype("faultfs".into()),
        ];
        let session = fuser::spawn_mount(fs, mountpoint.path(), &config)
            .map_err(|e| format!("mounting FUSE on {}: {e}", mountpoint.path().display()))?;
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| crate::executor_util::before_abort(abort_connections));
        mounted().push(mountpoint.path().to_path_buf());
        Ok(FaultFs {
            rules,
            held,
            backing,
            mountpoint,
            session: Some(session),
        })
    }

    /// The rules, shared with the filesystem: change them at any time.
    pub fn rules(&self) -> MutexGuard<'_, Rules> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Operations held by a [`Fault::Hold`] rule now, unanswered.
    pub fn held(&self) -> usize {
        self.held.lock().len()
    }

    /// Answers every held operation (carries it out now). A `Hold` rule still in place holds the
    /// operations that arrive after this call: see [`release_all`](Self::release_all).
    pub fn release_held(&self) {
        let held = std::mem::take(&mut *self.held.lock());
        for f in held {
            f();
        }
    }

    /// Removes every rule, then answers every held operation: nothing is held after it. (An
    /// operation is decided and held under the rules' lock, so none can slip in between.)
    pub fn release_all(&self) {
        self.rules().clear();
        self.release_held();
    }

    /// A guard that answers everything held ([`release_all`](Self::release_all)) when dropped.
    /// Declared after the test's executor, it is dropped before it when a failing test unwinds,
    /// so the executor's shutdown never waits for an operation the filesystem holds.
    pub fn release_on_drop(&self) -> ReleaseOnDrop<'_> {
        ReleaseOnDrop(self)
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        self.rules().counts.clone()
    }

    /// Where the filesystem is mounted.
    pub fn path(&self) -> &Path {
        self.mountpoint.path()
    }

    /// `name` in the mounted filesystem.
    pub fn join(&self, name: &str) -> PathBuf {
        self.mountpoint.path().join(name)
    }

    /// `name` in the backing directory (bypasses FUSE and its rules).
    pub fn backing(&self, name: &str) -> PathBuf {
        self.backing.path().join(name)
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        // A held operation keeps its caller (and a shard's worker) waiting: answer it first.
        self.release_all();
        mounted().retain(|p| p != self.mountpoint.path());
        let c = std::ffi::CString::new(self.mountpoint.path().as_os_str().as_bytes())
            .expect("mountpoint without NUL");
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        // fuser's own unmount now finds nothing mounted there; its thread ends when the kernel
        // closes the connection (once no descriptor on the filesystem is left). Not joined: a
        // leaked descriptor must not hang the test.
        drop(self.session.take());
    }
}

/// See [`FaultFs::release_on_drop`].
pub struct ReleaseOnDrop<'a>(&'a FaultFs);

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.release_all();
    }
}

/// The mountpoints of the filesystems mounted now.
fn mounted() -> MutexGuard<'static, Vec<PathBuf>> {
    static MOUNTED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    MOUNTED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Aborts the FUSE connection of every filesystem mounted now (and detaches it): every request
/// waiting for an answer fails at once. For a watchdog about to abort the process.
fn abort_connections() {
    for p in mounted().iter() {
        if let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) {
            // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_FORCE | libc::MNT_DETACH) };
        }
    }
}

/// Mounts a [`FaultFs`] for test `what`, or prints why the test is skipped and returns `None`.
pub fn mount_or_skip(what: &str) -> Option<FaultFs> {
    mount_with_or_skip(what, true)
}

/// [`mount_or_skip`] with [`FaultFs::mount_with`]'s choice.
pub fn mount_with_or_skip(what: &str, async_dio: bool) -> Option<FaultFs> {
    match FaultFs::mount_with(async_dio) {
        Ok(fs) => Some(fs),
        Err(why) => {
            // Straight to stderr, past the test harness's capture: a skip must show.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED {what}: needs a FUSE mount: {why}"
            );
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The filesystem
// ---------------------------------------------------------------------------------------------

/// Names in the (flat) root and their inode numbers.
#[derive(Default)]
struct Names {
    ino_of: HashMap<OsString, u64>,
    name_of: HashMap<u64, OsString>,
    next: u64,
}

impl Names {
    fn ino(&mut self, name: &OsStr) -> u64 {
        if let Some(&ino) = self.ino_of.get(name) {
            return ino;
        }
        self.next = self.next.max(1) + 1; // 1 is the root
        self.ino_of.insert(name.to_owned(), self.next);
        self.name_of.insert(self.next, name.to_owned());
        self.next
    }
}

struct Handle {
    file: Arc<File>,
    ino: u64,
}

/// A held operation's answer: called, it carries the operation out and replies.
type Answer = Box<dyn FnOnce() + Send>;

/// Operations held by a [`Fault::Hold`] rule.
#[derive(Clone, Default)]
struct Held(Arc<Mutex<Vec<Answer>>>);

impl Held {
    fn lock(&self) -> MutexGuard<'_, Vec<Answer>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Inner {
    root: PathBuf,
    rules: Arc<Mutex<Rules>>,
    held: Held,
    names: Mutex<Names>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    async_dio: bool,
}

struct Fs(Arc<Inner>);

const TTL: Duration = Duration::ZERO;

/// How files are opened: see the module docs.
const OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_DIRECT_IO.union(FopenFlags::FOPEN_NOFLUSH);

fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn attr_of(ino: u64, m: &std::fs::Metadata) -> FileAttr {
    let t = |s: i64, ns: i64| {
        if s >= 0 {
            UNIX_EPOCH + Duration::new(s as u64, ns as u32)
        } else {
            UNIX_EPOCH
        }
    };
    FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.blocks(),
        atime: t(m.atime(), m.atime_nsec()),
        mtime: t(m.mtime(), m.mtime_nsec()),
        ctime: t(m.ctime(), m.ctime_nsec()),
        crtime: SystemTime::UNIX_EPOCH,
        kind: if m.is_dir() {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl Inner {
    fn names(&self) -> MutexGuard<'_, Names> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handles(&self) -> MutexGuard<'_, HashMap<u64, Handle>> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn rules(&self) -> MutexGuard<'_, Rules> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn name_of(&self, ino: u64) -> Option<OsString> {
        self.names().name_of.get(&ino).cloned()
    }

    fn handle(&self, fh: FileHandle) -> Option<(Arc<File>, u64)> {
        self.handles()
            .get(&fh.0)
            .map(|h| (Arc::clone(&h.file), h.ino))
    }

    fn add_handle(&self, file: File, ino: u64) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles().insert(
            fh,
            Handle {
                file: Arc::new(file),
                ino,
            },
        );
        fh
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let path = if ino == INodeNo::ROOT.0 {
            self.root.clone()
        } else {
            let name = self.name_of(ino).ok_or(Errno::ENOENT)?;
            self.root.join(name)
        };
        std::fs::symlink_metadata(&path)
            .map(|m| attr_of(ino, &m))
            .map_err(|e| errno_of(&e))
    }

    fn open_backing(&self, name: &OsStr, flags: i32, mode: Option<u32>) -> std::io::Result<File> {
        let mut o = std::fs::OpenOptions::new();
        match flags & libc::O_ACCMODE {
            libc::O_RDONLY => o.read(true),
            libc::O_WRONLY => o.write(true),
            _ => o.read(true).write(true),
        };
        if let Some(mode) = mode {
            o.create(true).mode(mode);
        }
        // O_APPEND is the kernel's business (it passes the offset); O_DIRECT is not passed on:
        // the backing directory may not support it, and only the FUSE side is under test.
        o.custom_flags(flags & (libc::O_EXCL | libc::O_TRUNC));
        o.open(self.root.join(name))
    }

    /// Decides what happens to `op` on `name` over `off..off + len`, then answers it with `f`:
    /// now, after the action's delay, or when the test releases it (held).
    fn answer(
        &self,
        name: &OsStr,
        op: Op,
        off: u64,
        len: u64,
        f: impl FnOnce(Action) + Send + 'static,
    ) {
        self.answer_with(|rules| rules.decide(name, op, off, len), f);
    }

    /// [`answer`](Self::answer) with the decision made by `decide` under the rules' lock.
    fn answer_with(
        &self,
        decide: impl FnOnce(&mut Rules) -> Action,
        f: impl FnOnce(Action) + Send + 'static,
    ) {
        let mut rules = self.rules();
        let act = decide(&mut rules);
        if act.hold {
            // Still under the rules' lock: once a test has cleared its rules, every operation a
            // rule held is in the list that `release_held` empties.
            self.held.lock().push(Box::new(move || f(act)));
            return;
        }
        drop(rules);
        later(act.delay, move || f(act));
    }

    /// [`answer`](Self::answer) for an operation on the open file `ino`.
    fn answer_ino(
        &self,
        ino: u64,
        op: Op,
        off: u64,
        len: u64,
        f: impl FnOnce(Action) + Send + 'static,
    ) {
        let name = self.name_of(ino).unwrap_or_default();
        self.answer(&name, op, off, len, f);
    }
}

/// Runs `f` now, or after `delay` on a thread of its own.
fn later(delay: Duration, f: impl FnOnce() + Send + 'static) {
    if delay.is_zero() {
        f();
    } else {
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            f();
        });
    }
}

impl Filesystem for Fs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // Without it, a short read of a direct_io file through io_uring is retried by the kernel
        // at the same offset (see the module docs).
        if self.0.async_dio {
            let _ = config.add_capabilities(fuser::InitFlags::FUSE_ASYNC_DIO);
        }
        // Without it, the kernel serializes every lookup in a directory (on the directory's
        // inode lock): a held lookup would hold back lookups of other names too.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_PARALLEL_DIROPS);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        let (inner, owned) = (Arc::clone(&self.0), name.to_owned());
        self.0.answer(name, Op::Lookup, 0, 0, move |act| {
            if let Some(errno) = act.errno {
                return reply.error(Errno::from_i32(errno));
            }
            let name = owned;
            match std::fs::symlink_metadata(inner.root.join(&name)) {
                Ok(m) => {
                    let ino = inner.names().ino(&name);
                    reply.entry(&TTL, &attr_of(ino, &m), Generation(0));
                }
                Err(e) => reply.error(errno_of(&e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some((file, _)) = fh.and_then(|fh| self.0.handle(fh)) {
            return match file.metadata() {
                Ok(m) => reply.attr(&TTL, &attr_of(ino.0, &m)),
                Err(e) => reply.error(errno_of(&e)),
            };
        }
        match self.0.attr(ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let path = match self.0.name_of(ino.0) {
            Some(n) => self.0.root.join(n),
            None if ino == INodeNo::ROOT => self.0.root.clone(),
            None => return reply.error(Errno::ENOENT),
        };
        let res = (|| -> std::io::Result<()> {
            if let Some(size) = size {
                match fh.and_then(|fh| self.0.handle(fh)) {
                    Some((f, _)) => f.set_len(size)?,
                    None => std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)?
                        .set_len(size)?,
                }
            }
            if let Some(mode) = mode {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))?;
            }
            Ok(())
        })();
        match res.and_then(|()| std::fs::symlink_metadata(&path)) {
            Ok(m) => reply.attr(&TTL, &attr_of(ino.0, &m)),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if parent != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        let (inner, owned) = (Arc::clone(&self.0), name.to_owned());
        self.0.answer(name, Op::Unlink, 0, 0, move |act| {
            if let Some(errno) = act.errno {
                return reply.error(Errno::from_i32(errno));
            }
            let name = owned;
            match std::fs::remove_file(inner.root.join(&name)) {
                Ok(()) => {
                    let mut names = inner.names();
                    if let Some(ino) = names.ino_of.remove(&name) {
                        names.name_of.remove(&ino);
                    }
                    reply.ok();
                }
                Err(e) => reply.error(errno_of(&e)),
            }
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if parent != INodeNo::ROOT || newparent != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        match std::fs::rename(self.0.root.join(name), self.0.root.join(newname)) {
            Ok(()) => {
                let mut names = self.0.names();
                if let Some(old) = names.ino_of.remove(newname) {
                    names.name_of.remove(&old);
                }
                if let Some(ino) = names.ino_of.remove(name) {
                    names.ino_of.insert(newname.to_owned(), ino);
                    names.name_of.insert(ino, newname.to_owned());
                }
                reply.ok();
            }
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(name) = self.0.name_of(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        match self.0.open_backing(&name, flags.0, None) {
            Ok(f) => {
                let fh = self.0.add_handle(f, ino.0);
                reply.opened(FileHandle(fh), OPEN_FLAGS);
            }
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if parent != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        let res = self
            .0
            .open_backing(name, flags, Some(mode & !umask & 0o7777))
            .and_then(|f| f.metadata().map(|m| (f, m)));
        match res {
            Ok((f, m)) => {
                let ino = self.0.names().ino(name);
                let fh = self.0.add_handle(f, ino);
                reply.created(
                    &TTL,
                    &attr_of(ino, &m),
                    Generation(0),
                    FileHandle(fh),
                    OPEN_FLAGS,
                );
            }
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some((file, ino)) = self.0.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        self.0
            .answer_ino(ino, Op::Read, offset, u64::from(size), move |act| {
                if let Some(errno) = act.errno {
                    return reply.error(Errno::from_i32(errno));
                }
                let mut buf = vec![0u8; act.len as usize];
                let mut got = 0;
                while got < buf.len() {
                    match file.read_at(&mut buf[got..], offset + got as u64) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return reply.error(errno_of(&e)),
                    }
                }
                reply.data(&buf[..got]);
            });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some((file, ino)) = self.0.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        let data = data.to_vec();
        self.0
            .answer_ino(ino, Op::Write, offset, data.len() as u64, move |act| {
                if let Some(errno) = act.errno {
                    return reply.error(Errno::from_i32(errno));
                }
                let data = &data[..act.len as usize];
                match file.write_all_at(data, offset) {
                    Ok(()) => reply.written(data.len() as u32),
                    Err(e) => reply.error(errno_of(&e)),
                }
            });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.0.handles().remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let Some((file, ino)) = self.0.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        let name = self.0.name_of(ino).unwrap_or_default();
        self.0.answer_with(
            |rules| rules.decide_sync(&name, datasync),
            move |act| {
                if let Some(errno) = act.errno {
                    return reply.error(Errno::from_i32(errno));
                }
                let res = if datasync {
                    file.sync_data()
                } else {
                    file.sync_all()
                };
                match res {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(errno_of(&e)),
                }
            },
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let mut entries = vec![
            (INodeNo::ROOT.0, FileType::Directory, OsString::from(".")),
            (INodeNo::ROOT.0, FileType::Directory, OsString::from("..")),
        ];
        if let Ok(dir) = std::fs::read_dir(&self.0.root) {
            for e in dir.flatten() {
                let ino = self.0.names().ino(&e.file_name());
                entries.push((ino, FileType::RegularFile, e.file_name()));
            }
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let Some((file, _)) = self.0.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        use std::os::fd::AsRawFd;
        // SAFETY: fallocate on a descriptor we own; no memory arguments.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                length as libc::off_t,
            )
        };
        if rc == 0 {
            reply.ok();
        } else {
            reply.error(errno_of(&std::io::Error::last_os_error()));
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 20, 1 << 19, 1 << 19, 1 << 16, 1 << 15, 4096, 255, 4096);
    }
}
