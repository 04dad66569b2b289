//! A file's arrival and departure: `install` takes a descriptor opened for this shard into the
//! file table (and the ring's registered files) and hands back its `File`; `run_close` takes it
//! out again, in its place among the file's operations.

use super::files::FileEntry;
use super::runner::elapsed_ns;
use super::runner::Shard;
use crate::completion::Completer;
use crate::file::{File, FileFlags, FileInner, FileOwner, FileRef};
use crate::inline::InlineFile;
use crate::router::FileKey;
use crate::stats::OpKind;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn install(
        &mut self,
        fd: OwnedFd,
        key: FileKey,
        flags: FileFlags,
        path: Arc<Path>,
        exec: Arc<dyn FileOwner>,
        done: Completer<File>,
        count_open: bool,
    ) {
        let at = Instant::now();
        let slot = self.files.next_slot();
        let fixed = (slot < self.fixed_capacity
            && self.ring.register_files_update(slot, &[fd.as_raw_fd()]))
        .then_some(slot);
        self.ring.file_opened(fd.as_raw_fd());
        // SAFETY: fstat writes into the local struct only; fd is the descriptor just received.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above: a valid descriptor and a struct that lives for the call.
        let stat_ok = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0;
        let size_hint = if stat_ok {
            st.st_size.max(0) as u64
        } else {
            0 // unknown: every read is ordered as if it could reach the end of the file
        };
        // Inline reads (on callers' threads) only of regular files read through the page cache:
        // a FIFO or a device has no offsets to read at, and O_DIRECT waits for the device.
        let regular = stat_ok && st.st_mode & libc::S_IFMT == libc::S_IFREG;
        let inline = Arc::new(InlineFile::new(
            fd.as_raw_fd(),
            regular && flags.readable && !flags.direct && !flags.directory,
            self.files.open_inode(key, size_hint),
        ));
        let direct_align = flags
            .direct
            .then(|| crate::file::DirectIoAlign::of(fd.as_raw_fd()));
        let (slot, gen) = self.files.insert(FileEntry {
            fd,
            fixed,
            key,
            flags,
            path: Arc::clone(&path),
            closing: false,
            inline_paused_until: None,
            inline: Arc::clone(&inline),
        });
        if count_open {
            self.stats.record(OpKind::Open, 0, elapsed_ns(at));
        }
        // Made here, so that a handle dropped by a caller who no longer waits still closes the
        // file (its drop sends the close).
        done.complete(Ok(File {
            inner: Arc::new(FileInner {
                handle: FileRef {
                    exec: self.cfg.exec_id,
                    shard: self.cfg.index,
                    slot,
                    gen,
                },
                key,
                flags,
                path,
                exec,
                closed: AtomicBool::new(false),
                inline,
                direct_align,
            }),
        }));
    }

    /// Closes op `slot`'s file (removes it from the file table and the ring's registered
    /// files), then finishes the close.
    pub(super) fn run_close(&mut self, slot: u32) {
        let Some(op) = self.ops.get(slot) else { return };
        let file_slot = op.file_slot;
        if let Some(entry) = self.files.remove(file_slot) {
            if let Some(fixed) = entry.fixed {
                // Drops the ring's reference; refused, it stays until the ring closes.
                let _ = self.ring.register_files_update(fixed, &[-1]);
            }
            self.ring.file_closing(entry.fd());
            drop(entry); // closes the descriptor
        }
        self.finish(slot);
    }
}
