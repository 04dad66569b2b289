//! The objects on disk, through ringshard: one file per key in the root, opened without
//! following symlinks, with a cache of open handles, the Content-Type store, the temporary files
//! of uploads and their commit (rename, under a per-key lock). No HTTP transport here: every
//! engine shares it.
//!
//! # Content-Type
//!
//! Kept with the object's inode, so the rename that publishes the object publishes its type in
//! the same step: the extended attribute `user.ringshard.content_type`, set on the temporary file
//! before the rename. Where the filesystem refuses user xattrs (EOPNOTSUPP, or EPERM), or with
//! `--content-types sidecar`, it goes into a sidecar `.ct-<key>` holding `<inode>\n<type>`,
//! written (itself through a temporary file and a rename) just before the object's rename, under
//! the key's lock; a sidecar whose inode is not the object's is stale and ignored. No stored type:
//! `application/octet-stream`.
//!
//! Reading it is the one thing a lookup does off the executor: `lgetxattr` and an `lstat` on the
//! blocking runner (an xattr outside the inode can need a disk read). That trip cost about 25 to
//! 35 µs of CPU per handle-cache miss (62 to 75 µs against 38 to 42 with `--cache 0`, 4 KiB
//! objects), so a lookup makes it only for an object that may have a type:
//!
//! **The rule.** An object stored with a Content-Type carries the sticky bit (`S_ISVTX`, which
//! Linux ignores on a regular file) in its mode, set when its temporary file is created; one
//! without it has no type, and its lookup reads no xattr (the statx of the opened handle shows
//! the mode). Objects written by servers before this rule have a type and no mark: at startup,
//! a root without the marker file `.types-marked` is scanned once ([`mark_typed_objects`]: every
//! object with a stored type gets the bit), then the marker is written. Until it is (the scan
//! failed), every lookup reads the xattr as before. A root with the marker must not be written by
//! an older server (its typed objects would lack the bit: their type would read as none), nor
//! typed behind the server's back; `chmod` that clears the bit drops the type.
//! An io_uring GETXATTR (Linux 5.19) would not help much: the kernel runs it on an io-wq worker
//! (it forces async), a thread trip as well.
//!
//! # O_DIRECT: chosen per object
//!
//! `--direct auto` (the default): a handle-cache miss asks the kernel how much of the object is
//! in the page cache (`cachestat(2)` through [`ringshard::File::page_cache`]: no I/O, no side
//! effect, unlike a RWF_NOWAIT read, whose miss starts readahead into the cache). Half of it or
//! more cached: a buffered handle (page-cache reads, SPLICE to the socket); less: an O_DIRECT
//! handle, so a cold object read once does not fill the page cache, nor pay the page-cache
//! insertion. An object whose O_DIRECT handle is found again in the handle cache by a GET is
//! read a second time: it is promoted (looked up again with a buffered handle), like the
//! kernel's LRU moves a page read twice to its active list (a HEAD reads no bytes: it promotes
//! nothing). Which handle is opened first follows what the
//! last misses found (mostly cached: buffered first; a new server guesses buffered), so the
//! common case takes one open; the other case opens the other handle too (a longer lookup: two
//! requests for one key are then likelier to both miss and open a handle each). Without
//! cachestat (before Linux 6.5) every object is read through the page cache, as with `never`. `--direct always`: every object of at least
//! `--direct-min` bytes through O_DIRECT (the old `--direct`); `--direct never`: the page cache.

use crate::http::Validators;
use bytes::Bytes;
use ringshard::{Completion, Error, Executor, File, Metadata, OpenOptions, RenameFlags};
use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Objects stored with a Content-Type carry this mode bit (see the module docs).
const TYPED_MARK: u32 = libc::S_ISVTX;
/// In the root: every typed object there carries [`TYPED_MARK`].
const TYPES_MARKED_FILE: &str = ".types-marked";
/// The xattr holding an object's Content-Type.
const TYPE_XATTR: &std::ffi::CStr = c"user.ringshard.content_type";
/// Temporary files (uploads, sidecars) start with this; removed at startup.
pub const TMP_PREFIX: &str = ".tmp-";
/// Content-Type sidecars: `.ct-<key>`.
const SIDECAR_PREFIX: &str = ".ct-";

/// Runs a blocking closure off the engine's threads (tokio: `spawn_blocking`). The store's few
/// blocking calls (xattrs, sidecars, removing an abandoned temporary file) go through it.
pub type Blocking = Arc<dyn Fn(Box<dyn FnOnce() + Send>) + Send + Sync>;

/// Where Content-Types are kept (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TypeStore {
    /// The xattr, falling back to a sidecar where xattrs are refused.
    Xattr,
    /// Always a sidecar.
    Sidecar,
}

/// When objects are read through O_DIRECT (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DirectMode {
    /// Per object, from the page cache's state at open (cachestat).
    Auto,
    /// Every object of at least `--direct-min` bytes.
    Always,
    /// Never: the page cache.
    Never,
}

/// The store's settings.
pub struct Config {
    pub root: PathBuf,
    pub direct: DirectMode,
    pub direct_min: u64,
    /// Every typed object in the root carries [`TYPED_MARK`] ([`mark_typed_objects`] said so).
    pub types_marked: bool,
    pub max_object: u64,
    pub chunk: usize,
    pub cache: usize,
    pub types: TypeStore,
    pub list_max: usize,
}

/// An open object and its validators (cached by key).
pub struct Entry {
    pub file: File,
    pub v: Validators,
    /// O_DIRECT chosen because the object was not cached: found again in the handle cache, the
    /// object is read a second time and promoted to a buffered handle.
    promote_on_hit: bool,
}

/// What the lookups chose, for `/metrics`.
#[derive(Default)]
pub struct OpenCounts {
    /// Handles opened without O_DIRECT.
    pub buffered: AtomicU64,
    /// Handles opened with O_DIRECT.
    pub direct: AtomicU64,
    /// O_DIRECT handles replaced by buffered ones on a second read.
    pub promoted: AtomicU64,
    /// Handle-cache misses whose Content-Type was read (the object carries the mark, or the
    /// root is not marked).
    pub type_reads: AtomicU64,
}

/// Why a lookup found nothing to serve.
pub enum LookupError {
    /// No such key, or not a regular file (a directory, a symlink, a FIFO: never followed).
    NotFound,
    /// Anything else, with the detail for the log.
    Io(String),
}

/// A piece of a request body, or why there is none.
pub enum BodyError {
    /// The client sent nothing for the body timeout.
    Timeout,
    /// The body was malformed or the connection failed.
    Broken(String),
}

/// A request body, as the engine reads it.
pub trait BodySource: Send {
    /// The next piece; `None` at the end.
    fn next(&mut self) -> impl Future<Output = Option<Result<Bytes, BodyError>>> + Send;
    /// Reads and drops what is left of a refused body (bounded), so the answer is not lost to a
    /// reset when the connection closes with unread bytes.
    fn discard(&mut self) -> impl Future<Output = ()> + Send;
    /// Moves the rest of the body straight into `file` at `offset`, if this source can and it is
    /// at most `limit` bytes: its length (the body is then finished). `None` (the default): it
    /// cannot (part of the body already received, a chunked body, an engine without it), and
    /// the caller takes pieces with `next`.
    fn rest_to_file(
        &mut self,
        file: &File,
        offset: u64,
        limit: u64,
    ) -> impl Future<Output = Option<Result<u64, BodyError>>> + Send {
        let _ = (file, offset, limit);
        async { None }
    }
}

/// Why an upload failed.
pub enum PutError {
    TooLarge,
    Body(BodyError),
    Io(String),
}

/// The object store.
pub struct Store {
    pub exec: Executor,
    pub cfg: Config,
    cache: Cache,
    bufs: Arc<BufPool>,
    nonce: AtomicU64,
    /// Commits (renames, unlinks) of a key take its stripe, so a conditional write's check and
    /// its rename are one step with respect to every other write of the key.
    locks: Vec<tokio::sync::Mutex<()>>,
    hasher: std::collections::hash_map::RandomState,
    blocking: Blocking,
    /// What the last misses found under `--direct auto`, from -8 (not cached) to 8 (cached):
    /// the handle a miss opens first.
    cached_misses: std::sync::atomic::AtomicI32,
    pub opens: OpenCounts,
}

const LOCK_STRIPES: usize = 64;
const DIRECT_ALIGN: u64 = 4096;
/// The page size cachestat counts in (4 KiB on the machines this runs on; a larger page only
/// makes the "half cached" test stricter).
const PAGE: u64 = 4096;
/// Reads at least this long use (and return) pooled buffers.
const POOLED_MIN: u64 = 64 * 1024;

fn not_found_errno(errno: Option<i32>) -> bool {
    matches!(
        errno,
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP) | Some(libc::EISDIR)
    )
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

impl Store {
    pub fn new(exec: Executor, cfg: Config, nonce: u64, blocking: Blocking) -> Store {
        Store {
            exec,
            cache: Cache::new(cfg.cache),
            cfg,
            bufs: Arc::new(BufPool {
                free: Mutex::new(Vec::new()),
                keep: 256,
            }),
            nonce: AtomicU64::new(nonce),
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            hasher: Default::default(),
            blocking,
            // A new server guesses "cached": buffered first.
            cached_misses: std::sync::atomic::AtomicI32::new(1),
            opens: Default::default(),
        }
    }

    /// Runs `f` through the engine's blocking runner; `None` if it was dropped unrun.
    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (self.blocking)(Box::new(move || {
            let _ = tx.send(f());
        }));
        rx.await.ok()
    }

    fn path(&self, key: &str) -> PathBuf {
        self.cfg.root.join(key)
    }

    /// The commit lock of `key`.
    pub async fn lock(&self, key: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let i = (self.hasher.hash_one(key) as usize) % LOCK_STRIPES;
        self.locks[i].lock().await
    }

    /// The current object's validators (no Content-Type), by `lstat`: `None` if there is no
    /// regular file at the key. For conditional writes.
    pub async fn current(&self, key: &str) -> Result<Option<Validators>, String> {
        match self.exec.symlink_metadata(self.path(key)).await {
            Ok(md) if md.is_file() => Ok(Some(Validators::new(
                md.ino(),
                md.len(),
                md.modified(),
                None,
            ))),
            Ok(_) => Ok(None),
            Err(e) if not_found_errno(e.errno()) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The open object for `key`, from the cache or opened now. Never follows a symlink: the
    /// key is one directory entry of the root, `lstat`ed first (a symlink, directory or FIFO is
    /// not found, and a FIFO is never opened) and opened with O_NOFOLLOW (a symlink swapped in
    /// between is ELOOP: not found). With or without O_DIRECT: see the module docs.
    /// `reads_body`: the request reads the object's bytes (a GET); a HEAD does not, so an
    /// O_DIRECT handle it finds in the handle cache is not promoted (only a second read is a
    /// reason to move an object into the page cache).
    pub async fn lookup(&self, key: &str, reads_body: bool) -> Result<Arc<Entry>, LookupError> {
        let io = |e: Error| {
            if not_found_errno(e.errno()) {
                LookupError::NotFound
            } else {
                LookupError::Io(e.to_string())
            }
        };
        // A PUT between the open and the type's read is seen (the type's inode differs): again.
        for _ in 0..3 {
            let (gen, promote) = match self.cache.get(key) {
                Ok(e) if !e.promote_on_hit || !reads_body => return Ok(e),
                Ok(_) => (self.cache.gen(key), true),
                Err(gen) => (gen, false),
            };
            let path = self.path(key);
            let md = self.exec.symlink_metadata(&path).await.map_err(io)?;
            if !md.is_file() {
                return Err(LookupError::NotFound);
            }
            let at = &path;
            // On a shard (the shards engine), the handle lives on this shard: its statx, reads
            // and close need no hop to another thread (the inode's shard is the other one half
            // of the time with 2 shards). A cached handle read from another shard is routed
            // there, as any file's request; the server never writes an object's open inode, so
            // handles of one inode on two shards need no ordering between them.
            let local = ringshard::local().map(|l| l.index());
            let open = |direct: bool| async move {
                let mut o = OpenOptions::new();
                o.read(true).direct(direct).custom_flags(libc::O_NOFOLLOW);
                let open = |o: &OpenOptions| match local {
                    Some(shard) => self.exec.open_on(shard, at, o),
                    None => self.exec.open_async(at, o),
                };
                match open(&o).await {
                    // A filesystem without O_DIRECT (tmpfs on older kernels): the page cache.
                    Err(e) if direct && e.errno() == Some(libc::EINVAL) => {
                        o.direct(false);
                        open(&o).await
                    }
                    r => r,
                }
            };
            let may_direct = md.len() >= self.cfg.direct_min.max(1);
            let auto = self.cfg.direct == DirectMode::Auto && may_direct && !promote;
            let direct = match self.cfg.direct {
                DirectMode::Always => may_direct,
                DirectMode::Never => false,
                DirectMode::Auto => auto && self.cached_misses.load(Ordering::Relaxed) <= 0,
            };
            let mut file = open(direct).await.map_err(io)?;
            // Describe the file actually opened (statx on the handle): a PUT or DELETE between
            // the lstat and the open cannot give this file another file's ETag.
            let md = self
                .exec
                .metadata(&file)
                .await
                .map_err(|e| LookupError::Io(e.to_string()))?;
            if !md.is_file() {
                return Err(LookupError::NotFound);
            }
            let mut chose_direct = false;
            if auto {
                match self.cached(&file, md.len()) {
                    Some(cached) => {
                        let step = if cached { 1 } else { -1 };
                        let _ = self.cached_misses.fetch_update(
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                            |v| Some((v + step).clamp(-8, 8)),
                        );
                        chose_direct = !cached;
                        if cached == file.is_direct() {
                            // The other handle; the same inode, or the key changed: again.
                            let other = open(!cached).await.map_err(io)?;
                            let same = self
                                .exec
                                .metadata(&other)
                                .await
                                .map_err(|e| LookupError::Io(e.to_string()))?;
                            if same.ino() != md.ino() {
                                continue;
                            }
                            file = other;
                        }
                    }
                    // No cachestat: the handle opened (buffered, since no answer ever moved the
                    // guess off "cached").
                    None => chose_direct = file.is_direct(),
                }
            }
            let counter = if file.is_direct() {
                &self.opens.direct
            } else {
                &self.opens.buffered
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if promote {
                self.opens.promoted.fetch_add(1, Ordering::Relaxed);
            }
            let ct = if !self.cfg.types_marked || md.mode() & TYPED_MARK != 0 {
                self.opens.type_reads.fetch_add(1, Ordering::Relaxed);
                let Some(ct) = self.read_type(key, md.ino()).await else {
                    continue;
                };
                ct
            } else {
                None
            };
            let promote_on_hit = chose_direct && file.is_direct();
            let entry = Arc::new(Entry {
                file,
                v: Validators::new(md.ino(), md.len(), md.modified(), ct.as_deref()),
                promote_on_hit,
            });
            self.cache.insert(key, gen, Arc::clone(&entry));
            return Ok(entry);
        }
        Err(LookupError::Io(format!(
            "{key}: replaced during every lookup"
        )))
    }

    /// Whether at least half of the first `len` bytes of `file` are in the page cache; `None`
    /// where the kernel cannot say (no cachestat, or it failed).
    fn cached(&self, file: &File, len: u64) -> Option<bool> {
        let pages = len.div_ceil(PAGE).max(1);
        match file.page_cache(0, len) {
            Ok(Some(s)) => Some(s.cached * 2 >= pages),
            _ => None,
        }
    }

    /// The Content-Type stored for inode `ino` at `key`: `Some(None)` if none is; `None` if the
    /// key no longer names `ino` (look up again).
    async fn read_type(&self, key: &str, ino: u64) -> Option<Option<String>> {
        let (path, sidecar, types) = (self.path(key), self.sidecar(key), self.cfg.types);
        self.blocking(move || read_type(&path, &sidecar, ino, types))
            .await
            .unwrap_or(Some(None))
    }

    fn sidecar(&self, key: &str) -> PathBuf {
        self.cfg.root.join(format!("{SIDECAR_PREFIX}{key}"))
    }

    fn tmp_path(&self, what: &str) -> PathBuf {
        let nonce = self.nonce.fetch_add(1, Ordering::Relaxed);
        self.cfg
            .root
            .join(format!("{TMP_PREFIX}{what}-{nonce:016x}"))
    }

    /// A new temporary file for an upload of `key`, and the guard that removes it; `typed`:
    /// the upload has a Content-Type, and the file carries the mark (see the module docs).
    pub async fn create_tmp(&self, key: &str, typed: bool) -> Result<(File, TmpGuard), String> {
        let tmp = self.tmp_path(key);
        let mut opts = OpenOptions::new();
        let mark = if typed { TYPED_MARK } else { 0 };
        opts.write(true).create_new(true).mode(0o644 | mark);
        let file = self
            .exec
            .open_async(&tmp, &opts)
            .await
            .map_err(|e| e.to_string())?;
        Ok((
            file,
            TmpGuard {
                path: Some(tmp),
                blocking: Arc::clone(&self.blocking),
            },
        ))
    }

    /// Streams `body` into `file` a chunk at a time, one write in flight, or the rest of it
    /// straight from the connection where the engine can (`BodySource::rest_to_file`); its
    /// length.
    pub async fn write_body(
        &self,
        file: &File,
        body: &mut impl BodySource,
    ) -> Result<u64, PutError> {
        let chunk = self.cfg.chunk;
        let mut buf: Vec<u8> = Vec::new();
        let mut off = 0u64;
        let mut total = 0u64;
        let mut pending: Option<Completion<usize>> = None;
        let io = |e: Error| PutError::Io(e.to_string());
        loop {
            // The rest straight from the connection, after what is gathered in `buf` (written
            // beside it: another range of the file).
            let limit = self.cfg.max_object.saturating_sub(total);
            let at = off + buf.len() as u64;
            if let Some(r) = body.rest_to_file(file, at, limit).await {
                if let Some(p) = pending.take() {
                    p.await.map_err(io)?;
                }
                let n = r.map_err(PutError::Body)?;
                if !buf.is_empty() {
                    self.exec.write(file, off, buf).await.map_err(io)?;
                }
                return Ok(at + n);
            }
            let Some(data) = body.next().await else {
                break;
            };
            let data = data.map_err(PutError::Body)?;
            total += data.len() as u64;
            if total > self.cfg.max_object {
                if let Some(p) = pending.take() {
                    let _ = p.await;
                }
                body.discard().await;
                return Err(PutError::TooLarge);
            }
            if buf.is_empty() && data.len() >= chunk {
                // A whole chunk already: hand it over without a copy when it is not shared.
                if let Some(p) = pending.take() {
                    p.await.map_err(io)?;
                }
                let n = data.len() as u64;
                pending = Some(self.exec.write(file, off, Vec::from(data)));
                off += n;
                continue;
            }
            if buf.capacity() == 0 {
                buf.reserve(chunk);
            }
            buf.extend_from_slice(&data);
            if buf.len() >= chunk {
                if let Some(p) = pending.take() {
                    p.await.map_err(io)?;
                }
                let v = std::mem::take(&mut buf);
                let n = v.len() as u64;
                pending = Some(self.exec.write(file, off, v));
                off += n;
            }
        }
        if let Some(p) = pending.take() {
            p.await.map_err(io)?;
        }
        if !buf.is_empty() {
            let n = buf.len() as u64;
            self.exec.write(file, off, buf).await.map_err(io)?;
            off += n;
        }
        Ok(off)
    }

    /// Makes an upload durable and describes it: fsync, the Content-Type's xattr (`Ok(true)`:
    /// refused, the commit writes a sidecar), metadata, close.
    pub async fn finish_tmp(
        &self,
        file: &File,
        guard: &TmpGuard,
        content_type: Option<&str>,
    ) -> Result<(Metadata, bool), String> {
        let s = |e: Error| e.to_string();
        self.exec.fsync(file).await.map_err(s)?;
        let mut sidecar = false;
        if let (Some(ct), Some(tmp)) = (content_type, guard.path.clone()) {
            if self.cfg.types == TypeStore::Sidecar {
                sidecar = true;
            } else {
                let ct = ct.to_string();
                let r = self.blocking(move || set_type_xattr(&tmp, &ct)).await;
                match r {
                    Some(Ok(())) => {}
                    Some(Err(e))
                        if e == libc::EOPNOTSUPP || e == libc::ENOTSUP || e == libc::EPERM =>
                    {
                        sidecar = true
                    }
                    Some(Err(e)) => {
                        return Err(format!(
                            "setxattr {TYPE_XATTR:?}: {}",
                            std::io::Error::from_raw_os_error(e)
                        ))
                    }
                    None => return Err("setxattr: the blocking pool is gone".into()),
                }
            }
        }
        let md = self.exec.metadata(file).await.map_err(s)?;
        self.exec.close(file).await.map_err(s)?;
        Ok((md, sidecar))
    }

    /// Publishes an upload under `key` (its lock held by the caller): the sidecar first if
    /// `sidecar` (for inode `ino`), then the rename, with RENAME_NOREPLACE if `create_only`
    /// (`Ok(false)`: the key exists). Invalidates the cache and fsyncs the root.
    pub async fn commit(
        &self,
        key: &str,
        guard: &mut TmpGuard,
        create_only: bool,
        sidecar: Option<(u64, String)>,
    ) -> Result<bool, String> {
        let Some(tmp) = guard.path.clone() else {
            return Err("commit without a temporary file".into());
        };
        if let Some((ino, ct)) = sidecar {
            let (stmp, dest) = (self.tmp_path("ct"), self.sidecar(key));
            let r = self
                .blocking(move || write_sidecar(&stmp, &dest, ino, &ct))
                .await;
            match r {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(format!("write a Content-Type sidecar: {e}")),
                None => return Err("sidecar: the blocking pool is gone".into()),
            }
        }
        let flags = if create_only {
            RenameFlags::NOREPLACE
        } else {
            RenameFlags::empty()
        };
        match self.exec.rename(&tmp, self.path(key), flags).await {
            Ok(()) => {}
            Err(e) if create_only && e.errno() == Some(libc::EEXIST) => return Ok(false),
            Err(e) => return Err(e.to_string()),
        }
        guard.path = None;
        self.cache.invalidate(key);
        self.fsync_root().await?;
        Ok(true)
    }

    /// Removes the object `key` (its lock held by the caller): `Ok(false)` if there was none.
    pub async fn delete(&self, key: &str) -> Result<bool, String> {
        match self.exec.unlink(self.path(key)).await {
            Ok(()) => {}
            Err(e) if not_found_errno(e.errno()) => return Ok(false),
            Err(e) => return Err(e.to_string()),
        }
        self.cache.invalidate(key);
        // Its sidecar, if any (a stale one would be ignored anyway).
        let _ = self.exec.unlink(self.sidecar(key)).await;
        self.fsync_root().await?;
        Ok(true)
    }

    /// fsyncs the root (makes its renames and unlinks durable).
    async fn fsync_root(&self) -> Result<(), String> {
        let d = self
            .exec
            .open_async(
                &self.cfg.root,
                OpenOptions::new().read(true).directory(true),
            )
            .await
            .map_err(|e| e.to_string())?;
        self.exec.fsync(&d).await.map_err(|e| e.to_string())
    }

    /// Removes a failed upload's temporary file now (so a client that sees the error sees no
    /// temporary file); the guard removes it later if this fails.
    pub async fn abandon(&self, file: &File, guard: &mut TmpGuard) {
        let _ = self.exec.close(file).await;
        if let Some(p) = guard.path.clone() {
            if self.exec.unlink(&p).await.is_ok() {
                guard.path = None;
            }
        }
    }

    /// The keys starting with `prefix`, sorted, at most `--list-max` (`true`: there were more).
    /// Regular files only (no symlinks, directories, or the server's own dot files).
    pub async fn list(&self, prefix: &str) -> Result<(Vec<String>, bool), String> {
        let entries = self
            .exec
            .read_dir(&self.cfg.root)
            .await
            .map_err(|e| e.to_string())?;
        let mut keys = Vec::new();
        for e in entries {
            let name = e.name().as_bytes();
            if name.starts_with(b".") || !name.starts_with(prefix.as_bytes()) {
                continue;
            }
            let Ok(name) = std::str::from_utf8(name) else {
                continue;
            };
            let file = match e.file_type() {
                ringshard::EntryType::File => true,
                ringshard::EntryType::Unknown => self
                    .exec
                    .symlink_metadata(self.path(name))
                    .await
                    .is_ok_and(|m| m.is_file()),
                _ => false,
            };
            if file {
                keys.push(name.to_string());
            }
        }
        keys.sort_unstable();
        let truncated = keys.len() > self.cfg.list_max;
        keys.truncate(self.cfg.list_max);
        Ok((keys, truncated))
    }

    /// Starts a read of `len` bytes at `off` of `file` (aligned for O_DIRECT handles): the
    /// completion, the bytes to skip at its start, and the bytes it must yield.
    pub fn read_range(
        &self,
        file: &File,
        off: u64,
        len: u64,
    ) -> (Completion<Vec<u8>>, usize, usize) {
        // Small reads take a fresh allocation (cheap from malloc's free lists); large ones a
        // pooled buffer.
        let buf = if len >= POOLED_MIN {
            self.bufs.take()
        } else {
            Vec::new()
        };
        self.read_range_into(file, off, len, buf)
    }

    /// [`read_range`](Self::read_range) into `buf` (its allocation reused, its contents
    /// replaced): for an engine that keeps a buffer per connection.
    pub fn read_range_into(
        &self,
        file: &File,
        off: u64,
        len: u64,
        buf: Vec<u8>,
    ) -> (Completion<Vec<u8>>, usize, usize) {
        if file.is_direct() {
            let start = off - off % DIRECT_ALIGN;
            let end = (off + len).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
            let c = self
                .exec
                .read_into(file, start, (end - start) as usize, buf);
            (c, (off - start) as usize, len as usize)
        } else {
            (
                self.exec.read_into(file, off, len as usize, buf),
                0,
                len as usize,
            )
        }
    }

    /// The bytes a finished read must yield, or an error if the object came up short.
    pub fn take_read(&self, data: Vec<u8>, skip: usize, want: usize) -> std::io::Result<Bytes> {
        if data.len() < skip + want {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "object shorter than its metadata",
            ));
        }
        let b = if data.capacity() as u64 >= POOLED_MIN {
            Bytes::from_owner(Pooled {
                buf: data,
                pool: Arc::clone(&self.bufs),
            })
        } else {
            Bytes::from(data)
        };
        Ok(if skip == 0 && b.len() == want {
            b
        } else {
            b.slice(skip..skip + want)
        })
    }
}

/// The type's xattr of the entry at `path` (`lgetxattr`: a symlink's own, never its target's),
/// then `lstat` to check that `path` still names inode `ino` (the one the lookup opened; the
/// server never renames an older inode back, so a match means the xattr read was of `ino`); or
/// the sidecar. Two system calls where an open, fstat, fgetxattr and close took four (a cache
/// miss cost about 10 µs of CPU less). Blocks (runs on the blocking runner).
fn read_type(path: &Path, sidecar: &Path, ino: u64, types: TypeStore) -> Option<Option<String>> {
    use std::os::unix::fs::MetadataExt;
    if types == TypeStore::Xattr {
        let p = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        let mut buf = [0u8; crate::http::MAX_CONTENT_TYPE + 1];
        // SAFETY: both names are NUL-terminated and `buf` a live buffer of the length passed;
        // the kernel writes at most that many bytes into it during the call.
        let n = unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                TYPE_XATTR.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        let e = last_errno();
        if std::fs::symlink_metadata(path).ok()?.ino() != ino {
            return None;
        }
        if n >= 0 {
            return Some(
                std::str::from_utf8(&buf[..n as usize])
                    .ok()
                    .map(str::to_string),
            );
        }
        if e != libc::EOPNOTSUPP && e != libc::ENOTSUP {
            return Some(None); // ENODATA: stored without a type
        }
    }
    let text = std::fs::read(sidecar).ok();
    let ct = text.as_deref().and_then(|t| {
        let t = std::str::from_utf8(t).ok()?;
        let (i, ct) = t.split_once('\n')?;
        (i.parse::<u64>().ok()? == ino).then(|| ct.to_string())
    });
    Some(ct)
}

/// Sets the type's xattr on the (new, never a symlink) temporary file; the errno on failure.
/// Blocks.
fn set_type_xattr(tmp: &Path, ct: &str) -> Result<(), i32> {
    let p = std::ffi::CString::new(tmp.as_os_str().as_bytes()).map_err(|_| libc::EINVAL)?;
    // SAFETY: both names are NUL-terminated, `ct` is live for the call and its length is passed.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            TYPE_XATTR.as_ptr(),
            ct.as_ptr().cast(),
            ct.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(last_errno())
    }
}

/// Writes `<ino>\n<ct>` into `tmp` and renames it over `dest`. Blocks.
fn write_sidecar(tmp: &Path, dest: &Path, ino: u64, ct: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)?;
    let r = f
        .write_all(format!("{ino}\n{ct}").as_bytes())
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(tmp, dest));
    if r.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    r
}

/// Removes a temporary file unless disarmed (also when the request is dropped mid-upload).
pub struct TmpGuard {
    path: Option<PathBuf>,
    blocking: Blocking,
}

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            // A handler dropped mid-upload cannot await: remove on the blocking runner.
            (self.blocking)(Box::new(move || {
                let _ = std::fs::remove_file(p);
            }));
        }
    }
}

/// Makes the root follow the Content-Type rule (see the module docs): unless the marker file is
/// there, gives every object with a stored type the mark, then writes the marker. `Ok(true)`: the
/// root is marked (lookups of unmarked objects read no type). Blocks (at startup, before serving;
/// one `lgetxattr` per unmarked object, once per root).
pub fn mark_typed_objects(root: &Path, types: TypeStore) -> std::io::Result<bool> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let marker = root.join(TYPES_MARKED_FILE);
    if marker.exists() {
        return Ok(true);
    }
    for e in std::fs::read_dir(root)? {
        let e = e?;
        let name = e.file_name();
        if name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = e.path();
        let md = std::fs::symlink_metadata(&path)?;
        if !md.is_file() || md.mode() & TYPED_MARK != 0 {
            continue;
        }
        let sidecar = root.join(format!("{SIDECAR_PREFIX}{}", name.to_string_lossy()));
        if let Some(Some(_)) = read_type(&path, &sidecar, md.ino(), types) {
            // A regular file (lstat above; the server is not serving yet).
            std::fs::set_permissions(
                &path,
                std::fs::Permissions::from_mode(md.mode() & 0o7777 | TYPED_MARK),
            )?;
        }
    }
    let f = std::fs::File::create(&marker)?;
    f.sync_all()?;
    std::fs::File::open(root)?.sync_all()?;
    Ok(true)
}

/// Removes temporary files a crash left behind.
pub fn remove_stale_tmp(root: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(root)? {
        let e = e?;
        if e.file_name()
            .as_encoded_bytes()
            .starts_with(TMP_PREFIX.as_bytes())
        {
            std::fs::remove_file(e.path())?;
            n += 1;
        }
    }
    Ok(n)
}

struct CacheShard {
    map: HashMap<Box<str>, (Arc<Entry>, u64)>,
    /// Bumped by every invalidation: a lookup that started before one does not insert.
    gen: u64,
}

/// Open handles by key, least recently used out (evicted in batches of an eighth).
struct Cache {
    shards: Vec<Mutex<CacheShard>>,
    per_shard: usize,
    tick: AtomicU64,
    hasher: std::collections::hash_map::RandomState,
}

const CACHE_SHARDS: usize = 16;

impl Cache {
    fn new(cap: usize) -> Self {
        Cache {
            shards: (0..CACHE_SHARDS)
                .map(|_| {
                    Mutex::new(CacheShard {
                        map: HashMap::new(),
                        gen: 0,
                    })
                })
                .collect(),
            per_shard: cap.div_ceil(CACHE_SHARDS),
            tick: AtomicU64::new(0),
            hasher: Default::default(),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<CacheShard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % CACHE_SHARDS]
    }

    fn lock(m: &Mutex<CacheShard>) -> std::sync::MutexGuard<'_, CacheShard> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation to pass to `insert`.
    fn gen(&self, key: &str) -> u64 {
        Self::lock(self.shard(key)).gen
    }

    /// The entry, or the generation to pass to `insert`.
    fn get(&self, key: &str) -> Result<Arc<Entry>, u64> {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut s = Self::lock(self.shard(key));
        match s.map.get_mut(key) {
            Some((e, used)) => {
                *used = tick;
                Ok(Arc::clone(e))
            }
            None => Err(s.gen),
        }
    }

    fn insert(&self, key: &str, gen: u64, entry: Arc<Entry>) {
        if self.per_shard == 0 {
            return;
        }
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut evicted = Vec::new();
        {
            let mut s = Self::lock(self.shard(key));
            if s.gen != gen {
                return;
            }
            if s.map.len() >= self.per_shard && !s.map.contains_key(key) {
                let mut ticks: Vec<u64> = s.map.values().map(|(_, t)| *t).collect();
                let n = (self.per_shard / 8).max(1).min(ticks.len());
                let (_, cut, _) = ticks.select_nth_unstable(n - 1);
                let cut = *cut;
                s.map.retain(|_, (e, t)| {
                    if *t <= cut {
                        evicted.push(Arc::clone(e));
                        false
                    } else {
                        true
                    }
                });
            }
            s.map.insert(key.into(), (entry, tick));
        }
        // Closing evicted handles (a send each) happens outside the lock.
        drop(evicted);
    }

    fn invalidate(&self, key: &str) {
        let old = {
            let mut s = Self::lock(self.shard(key));
            s.gen += 1;
            s.map.remove(key)
        };
        drop(old);
    }
}

/// Read buffers of a chunk each, reused: a fresh large `Vec` is a fresh mapping whose pages
/// fault in (and are zeroed) on every read.
struct BufPool {
    free: Mutex<Vec<Vec<u8>>>,
    keep: usize,
}

/// A pooled buffer lent to a response body (`Bytes::from_owner`): back to the pool on drop.
struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BufPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let mut free = self.pool.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.pool.keep {
            free.push(buf);
        }
    }
}

impl BufPool {
    fn take(&self) -> Vec<u8> {
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default()
    }
}
