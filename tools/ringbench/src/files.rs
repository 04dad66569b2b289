//! The data files: the directory checks, creating and filling files (reused when present with the
//! right size and, for `--verify`, the right pattern), warming them into the page cache right before
//! a measured run, and checking how much of them is resident.

use crate::error::BenchError;
use crate::pattern::Pattern;
use crate::workload::Workload;
use ringshard::router::{shard_for, FileKey};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// One data file of a run.
#[derive(Debug, Clone)]
pub struct BenchFile {
    /// The file's number: its name (`ringbench.N.dat`) and its pattern.
    pub number: usize,
    pub path: PathBuf,
    pub key: FileKey,
}

/// The directory the files live in; a temporary one is removed on drop.
#[derive(Debug)]
pub struct Workspace {
    pub dir: PathBuf,
    temporary: bool,
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if self.temporary {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A new private directory under the system's temporary directory (mkdtemp).
fn make_temp_dir() -> std::io::Result<PathBuf> {
    let template = std::env::temp_dir().join("ringbench-XXXXXX");
    let mut bytes = template.into_os_string().into_encoded_bytes();
    bytes.push(0);
    // SAFETY: `bytes` is a NUL-terminated template that mkdtemp rewrites in place.
    let p = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
    if p.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    bytes.pop();
    // SAFETY: the bytes came from an OsString and mkdtemp only replaced ASCII X's.
    Ok(PathBuf::from(unsafe {
        std::ffi::OsString::from_encoded_bytes_unchecked(bytes)
    }))
}

/// Checks `--dir` (exists, is a directory, is writable), or makes a temporary directory.
pub fn workspace(dir: Option<&Path>) -> Result<Workspace, BenchError> {
    let Some(dir) = dir else {
        let dir = make_temp_dir().map_err(|e| {
            BenchError::usage(format!(
                "cannot create a temporary directory in {}: {e}; pass --dir DIR on a writable \
                 filesystem",
                std::env::temp_dir().display()
            ))
        })?;
        return Ok(Workspace {
            dir,
            temporary: true,
        });
    };
    let d = dir.display();
    match fs::metadata(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(BenchError::usage(format!(
                "--dir {d} does not exist: create it (mkdir -p {d}) or pass an existing directory"
            )))
        }
        Err(e) => {
            return Err(BenchError::usage(format!(
                "--dir {d} cannot be examined ({e}): pass a directory you can read and write"
            )))
        }
        Ok(m) if !m.is_dir() => {
            return Err(BenchError::usage(format!(
                "--dir {d} is not a directory: pass a directory (the files are created in it)"
            )))
        }
        Ok(_) => {}
    }
    let probe = dir.join(format!(".ringbench-probe-{}", std::process::id()));
    match OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
        }
        Err(e) => {
            return Err(BenchError::usage(format!(
                "--dir {d} is not writable ({e}): pass a directory you can create files in, or \
                 fix its permissions"
            )))
        }
    }
    Ok(Workspace {
        dir: dir.to_path_buf(),
        temporary: false,
    })
}

/// The filesystem type of `dir` (statfs), by name where known.
pub fn fs_type(dir: &Path) -> String {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return "unknown".into();
    };
    // SAFETY: statfs writes only into the struct we pass; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "unknown".into();
    }
    match st.f_type as u64 {
        0xEF53 => "ext4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x794c_7630 => "overlayfs".into(),
        0x6969 => "nfs".into(),
        0x2fc1_2fc1 => "zfs".into(),
        0xF2F5_2010 => "f2fs".into(),
        t => format!("fs 0x{t:x}"),
    }
}

/// Fails with a usage error when the filesystem of `dir` refuses O_DIRECT (tmpfs: EINVAL).
pub fn check_direct(dir: &Path) -> Result<(), BenchError> {
    let probe = dir.join(format!(".ringbench-direct-{}", std::process::id()));
    let r = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe);
    let _ = fs::remove_file(&probe);
    match r {
        Ok(_) => Ok(()),
        Err(e) => Err(BenchError::usage(format!(
            "--direct: {} ({}) refuses O_DIRECT (open failed: {e}); use a --dir on a disk \
             filesystem such as ext4 or xfs, or drop --direct",
            dir.display(),
            fs_type(dir)
        ))),
    }
}

fn data_path(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("ringbench.{n}.dat"))
}

fn meta_path(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!(".ringbench.{n}.pattern"))
}

fn meta_text(seed: u64, n: usize, size: u64) -> String {
    format!("ringbench pattern v1 seed={seed} file={n} size={size}\n")
}

fn key_of(path: &Path) -> std::io::Result<FileKey> {
    let m = fs::metadata(path)?;
    Ok(FileKey {
        dev: m.dev(),
        ino: m.ino(),
    })
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> BenchError {
    BenchError::runtime(format!("{what} {}: {e}", path.display()))
}

/// The file numbers of a run: `0..N` for `--files N`; without `--files`, one file per shard,
/// picked (creating empty candidates as needed) so that the router gives every shard one.
fn choose(dir: &Path, files: Option<usize>, shards: usize) -> Result<Vec<usize>, BenchError> {
    if let Some(n) = files {
        return Ok((0..n).collect());
    }
    let shards = shards.max(1);
    let mut chosen: Vec<Option<usize>> = vec![None; shards];
    let mut scratch = Vec::new();
    let mut result = Ok(());
    for n in 0..64 * shards + 64 {
        let path = data_path(dir, n);
        if !path.exists() {
            match File::create_new(&path) {
                Ok(_) => scratch.push(n),
                Err(e) => {
                    result = Err(io_err("creating", &path, e));
                    break;
                }
            }
        }
        let key = match key_of(&path) {
            Ok(k) => k,
            Err(e) => {
                result = Err(io_err("examining", &path, e));
                break;
            }
        };
        let s = shard_for(key, shards);
        if chosen[s].is_none() {
            chosen[s] = Some(n);
            scratch.retain(|&x| x != n);
        }
        if chosen.iter().all(Option::is_some) {
            break;
        }
    }
    // Candidates not chosen are removed only now, so their inodes are not reused meanwhile.
    for n in scratch {
        let _ = fs::remove_file(data_path(dir, n));
    }
    result?;
    let mut out: Vec<usize> = chosen.into_iter().flatten().collect();
    if out.len() < shards {
        return Err(BenchError::runtime(format!(
            "could not find files that route to all {shards} shards; pass --files N"
        )));
    }
    out.sort_unstable();
    Ok(out)
}

/// Creates or reuses the files of a run with `shards` shards. A file is (re)written when it is
/// missing or has the wrong size, or for `--verify` when it does not hold this seed's pattern.
pub fn prepare(dir: &Path, w: &Workload, shards: usize) -> Result<Vec<BenchFile>, BenchError> {
    let numbers = choose(dir, w.files, shards)?;
    let mut todo = Vec::new();
    for &n in &numbers {
        let path = data_path(dir, n);
        let size_ok = fs::metadata(&path).is_ok_and(|m| m.len() == w.size);
        let pattern_ok =
            fs::read_to_string(meta_path(dir, n)).is_ok_and(|t| t == meta_text(w.seed, n, w.size));
        if !size_ok || (w.verify && !pattern_ok) {
            todo.push(n);
        }
    }
    let need = w.size * todo.len() as u64;
    if need > 0 {
        let free = free_bytes(dir);
        if free.is_some_and(|f| f < need + (64 << 20)) {
            return Err(BenchError::usage(format!(
                "{} has {} MiB free but the files need {} MiB: use a smaller --size or fewer \
                 --files, or another --dir",
                dir.display(),
                free.unwrap_or(0) >> 20,
                need >> 20
            )));
        }
    }
    for &n in &todo {
        fill(dir, n, w.size, w.seed)?;
    }
    numbers
        .into_iter()
        .map(|n| {
            let path = data_path(dir, n);
            let key = key_of(&path).map_err(|e| io_err("examining", &path, e))?;
            Ok(BenchFile {
                number: n,
                path,
                key,
            })
        })
        .collect()
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs writes only into the struct we pass; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0)
        .then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Writes the pattern of file `n` over its whole size and records that it holds it.
fn fill(dir: &Path, n: usize, size: u64, seed: u64) -> Result<(), BenchError> {
    let path = data_path(dir, n);
    let _ = fs::remove_file(meta_path(dir, n));
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_err("creating", &path, e))?;
    f.set_len(size).map_err(|e| io_err("sizing", &path, e))?;
    let p = Pattern::new(seed, n);
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < size {
        let len = ((size - off) as usize).min(buf.len());
        p.fill(&mut buf[..len], off);
        f.write_all_at(&buf[..len], off)
            .map_err(|e| io_err("writing", &path, e))?;
        off += len as u64;
    }
    f.sync_data().map_err(|e| io_err("syncing", &path, e))?;
    fs::write(meta_path(dir, n), meta_text(seed, n, size))
        .map_err(|e| io_err("writing", &meta_path(dir, n), e))?;
    Ok(())
}

/// Forgets that the files hold the pattern (before writes that do not write it).
pub fn invalidate_pattern(dir: &Path, files: &[BenchFile]) {
    for f in files {
        let _ = fs::remove_file(meta_path(dir, f.number));
    }
}

/// Reads every file once so a buffered run starts from the page cache; returns the share of the
/// files' pages resident afterwards (0.0..=1.0).
pub fn warm(files: &[BenchFile], size: u64) -> Result<f64, BenchError> {
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        let file = File::open(&f.path).map_err(|e| io_err("opening", &f.path, e))?;
        let mut off = 0u64;
        while off < size {
            let len = ((size - off) as usize).min(buf.len());
            match file.read_at(&mut buf[..len], off) {
                Ok(0) => break,
                Ok(n) => off += n as u64,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("warming", &f.path, e)),
            }
        }
    }
    Ok(resident_share(files, size))
}

/// Writes the files back and drops their pages from the page cache (`--cold`); returns the share
/// still cached (pages the kernel could not drop: mapped or locked elsewhere).
pub fn drop_cached(files: &[BenchFile], size: u64) -> Result<f64, BenchError> {
    use std::os::fd::AsRawFd;
    for f in files {
        let file = File::open(&f.path).map_err(|e| io_err("opening", &f.path, e))?;
        file.sync_all().map_err(|e| io_err("fsync", &f.path, e))?;
        // SAFETY: fadvise takes no memory.
        let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if r != 0 {
            let e = std::io::Error::from_raw_os_error(r);
            return Err(io_err("dropping from the page cache", &f.path, e));
        }
    }
    Ok(resident_share(files, size))
}

/// Share of the files' pages in the page cache (mincore), 0.0..=1.0.
pub fn resident_share(files: &[BenchFile], size: u64) -> f64 {
    let (mut resident, mut total) = (0u64, 0u64);
    for f in files {
        if let Some((r, t)) = resident_pages(&f.path, size) {
            resident += r;
            total += t;
        }
    }
    if total == 0 {
        0.0
    } else {
        resident as f64 / total as f64
    }
}

fn resident_pages(path: &Path, size: u64) -> Option<(u64, u64)> {
    use std::os::fd::AsRawFd;
    if size == 0 {
        return None;
    }
    let file = File::open(path).ok()?;
    let page = 4096u64;
    let pages = size.div_ceil(page);
    // SAFETY: a fresh read-only shared mapping of an open file; unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return None;
    }
    let mut vec = vec![0u8; pages as usize];
    // SAFETY: `vec` has one byte per page of the mapping.
    let ok = unsafe { libc::mincore(addr, size as usize, vec.as_mut_ptr()) } == 0;
    // SAFETY: unmapping the mapping made above.
    unsafe { libc::munmap(addr, size as usize) };
    ok.then(|| (vec.iter().filter(|&&b| b & 1 != 0).count() as u64, pages))
}
