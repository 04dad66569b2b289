//! The shard's file table: open files by slot, with generations so a stale handle can never
//! reach a file opened later in the same slot.

use crate::error::{Error, Result};
use crate::file::{FileFlags, FileRef};
use crate::inline::{InlineFile, PendingCount};
use crate::pool::Target;
use crate::router::FileKey;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;

/// One open file of the shard.
#[derive(Debug)]
pub(crate) struct FileEntry {
    pub(super) fd: OwnedFd,
    /// Slot in the ring's registered file table, when it fit.
    pub(super) fixed: Option<u32>,
    pub(super) key: FileKey,
    pub(super) flags: FileFlags,
    pub(super) path: Arc<Path>,
    /// A close was admitted: new operations on this handle fail.
    pub(super) closing: bool,
    /// Until then, buffered writes of this file go through the ring instead of `pwrite` on the
    /// shard thread: one of them took longer than `INLINE_SLOW` (a stalled device, a network
    /// or FUSE filesystem), and inline it would hold every file of the shard.
    pub(super) inline_paused_until: Option<std::time::Instant>,
    /// Shared with the file's handles for inline reads on callers' threads: retired (no new
    /// inline read, those in progress waited for) before `fd` is closed.
    pub(super) inline: Arc<InlineFile>,
}

impl Drop for FileEntry {
    fn drop(&mut self) {
        // why: callers may be reading `fd` inline (a clone of the handle on another thread, or
        // every handle at shutdown or when the shard dies): the number must not be closed, and
        // reused by another open, under them. This runs before the fields drop (`fd` closes).
        self.inline.retire();
    }
}

impl FileEntry {
    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub(crate) fn target(&self) -> Target {
        match self.fixed {
            Some(slot) => Target::Fixed(slot),
            None => Target::Fd(self.fd()),
        }
    }
}

/// One slot of the file table.
#[derive(Debug, Default)]
pub(super) struct FileSlot {
    /// Changes when the slot's file is closed, so stale handles are recognized.
    pub(super) gen: u32,
    pub(super) entry: Option<FileEntry>,
    /// The path of the file last closed here, for errors about stale handles.
    pub(super) closed_path: Option<Arc<Path>>,
}

/// The shard's open files, indexed by slot; a slot's generation changes when it is closed, so a
/// stale handle can never reach a file opened later in the same slot.
#[derive(Debug, Default)]
pub(crate) struct FileTable {
    pub(super) slots: Vec<FileSlot>,
    pub(super) free: Vec<u32>,
    pub(super) exec_id: u64,
    pub(super) shard: usize,
    /// What the handles open on one inode share (its order list is shared too: `order.rs` is
    /// keyed by inode), while any is open here.
    pub(super) inodes: super::order::KeyMap<Inode>,
}

/// The state of one inode with handles open on the shard.
#[derive(Debug, Default)]
pub(crate) struct Inode {
    /// Entries open on it.
    opens: u32,
    /// A size the file is known to have at least (fstat at the first open, raised by completed
    /// reads and writes that moved bytes -- a transfer of nothing proves nothing --, fallocate,
    /// and set by size): a read that ends within it cannot be changed
    /// by a write it does not overlap (see `order.rs`). Changes made outside the executor are
    /// not seen. Per inode, not per handle: a size change through one handle (set_len, a write
    /// past the end) must order the reads of every other handle near the end of the file.
    pub(super) size_hint: u64,
    /// Ops that set the size (set_len) admitted and not finished: meanwhile, completions of
    /// earlier ops do not raise `size_hint` (see `FileOp::sets_size`).
    pub(super) size_setters: u32,
    /// Its unfinished mutations, shared with callers for inline reads (see `crate::inline`).
    pending: Arc<PendingCount>,
    /// Its reads in flight on the shard's task-local path (`task_io.rs`).
    pub(super) task_reads: super::task_io::FileReads,
}

impl FileTable {
    pub(crate) fn lookup(&self, file: FileRef) -> Result<&FileEntry> {
        if file.exec != self.exec_id || file.shard != self.shard {
            return Err(Error::BadHandle(
                "the file belongs to another executor".into(),
            ));
        }
        match self.slots.get(file.slot as usize) {
            Some(FileSlot {
                gen,
                entry: Some(e),
                ..
            }) if *gen == file.gen && !e.closing => Ok(e),
            Some(FileSlot {
                gen,
                entry: Some(e),
                ..
            }) if *gen == file.gen => {
                Err(Error::BadHandle(format!("{} is closed", e.path.display())))
            }
            Some(s) if s.gen == file.gen.wrapping_add(1) && s.closed_path.is_some() => {
                let p = s.closed_path.as_deref().unwrap_or(Path::new("the file"));
                Err(Error::BadHandle(format!("{} is closed", p.display())))
            }
            _ => Err(Error::BadHandle("the file is closed".into())),
        }
    }

    pub(super) fn get(&self, slot: u32) -> Option<&FileEntry> {
        self.slots.get(slot as usize)?.entry.as_ref()
    }

    pub(super) fn get_mut(&mut self, slot: u32) -> Option<&mut FileEntry> {
        self.slots.get_mut(slot as usize)?.entry.as_mut()
    }

    pub(super) fn insert(&mut self, entry: FileEntry) -> (u32, u32) {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(FileSlot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[slot as usize];
        s.entry = Some(entry);
        (slot, s.gen)
    }

    pub(super) fn remove(&mut self, slot: u32) -> Option<FileEntry> {
        let s = self.slots.get_mut(slot as usize)?;
        let e = s.entry.take()?;
        s.gen = s.gen.wrapping_add(1);
        s.closed_path = Some(Arc::clone(&e.path));
        self.free.push(slot);
        if let Some(inode) = self.inodes.get_mut(&e.key) {
            inode.opens = inode.opens.saturating_sub(1);
            if inode.opens == 0 {
                self.inodes.remove(&e.key);
            }
        }
        Some(e)
    }

    /// Counts one more entry about to be inserted on inode `key` (of `size` bytes, if it is the
    /// first); returns its unfinished-mutation count.
    pub(super) fn open_inode(&mut self, key: FileKey, size: u64) -> Arc<PendingCount> {
        let inode = self.inodes.entry(key).or_insert_with(|| Inode {
            size_hint: size,
            ..Inode::default()
        });
        inode.opens += 1;
        Arc::clone(&inode.pending)
    }

    /// The inode of the entry in `slot`.
    pub(super) fn inode_of(&mut self, slot: u32) -> Option<&mut Inode> {
        let key = self.get(slot)?.key;
        self.inodes.get_mut(&key)
    }

    /// Stops inline reads of every open file (waiting for those in progress): the shard died.
    pub(super) fn retire_all(&self) {
        for e in self.slots.iter().filter_map(|s| s.entry.as_ref()) {
            e.inline.retire();
        }
    }

    /// The inode `key`, while a handle of it is open here.
    pub(super) fn inode(&self, key: FileKey) -> Option<&Inode> {
        self.inodes.get(&key)
    }

    /// [`inode`](Self::inode), to change.
    pub(super) fn inode_mut(&mut self, key: FileKey) -> Option<&mut Inode> {
        self.inodes.get_mut(&key)
    }

    /// The entry of `file`, checked as by [`lookup`](Self::lookup), and its inode.
    pub(super) fn lookup_with_inode(
        &mut self,
        file: FileRef,
    ) -> Result<(&mut FileEntry, &mut Inode)> {
        self.lookup(file)?;
        let FileTable { slots, inodes, .. } = self;
        match slots.get_mut(file.slot as usize) {
            Some(FileSlot { entry: Some(e), .. }) => {
                let inode = inodes.entry(e.key).or_default();
                Ok((e, inode))
            }
            _ => Err(Error::BadHandle("the file is closed".into())),
        }
    }

    pub(super) fn next_slot(&self) -> u32 {
        self.free.last().copied().unwrap_or(self.slots.len() as u32)
    }
}
