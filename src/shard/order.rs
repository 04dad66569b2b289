//! Per-file ordering inside a shard.
//!
//! SQEs on one ring carry no order, so the shard keeps, for each file (inode), the list of its
//! unfinished operations in arrival order. An operation is issued only when it conflicts with no
//! earlier unfinished one:
//!
//! | earlier \ later | read        | write       | sync  | barrier |
//! |-----------------|-------------|-------------|-------|---------|
//! | read            | -           | if overlap  | -     | yes     |
//! | write           | if overlap  | if overlap  | yes   | yes     |
//! | sync            | -           | -           | -     | yes     |
//! | barrier         | yes         | yes         | yes   | yes     |
//!
//! So reads run in parallel, a read sees every earlier overlapping write, a write never overtakes
//! an earlier overlapping read or write, an fsync covers every earlier write, and close, fallocate
//! and size wait for everything before them and hold back everything after.

use crate::router::FileKey;
use std::collections::{HashMap, VecDeque};

/// What an operation touches, for ordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Footprint {
    /// Reads bytes `start..end`.
    Read { start: u64, end: u64 },
    /// Writes bytes `start..end`.
    Write { start: u64, end: u64 },
    /// fsync / fdatasync: must follow earlier writes.
    Sync,
    /// close, fallocate, size: ordered against everything.
    Barrier,
}

impl Footprint {
    pub(crate) fn read(offset: u64, len: u64) -> Self {
        Footprint::Read {
            start: offset,
            end: offset.saturating_add(len),
        }
    }

    pub(crate) fn write(offset: u64, len: u64) -> Self {
        Footprint::Write {
            start: offset,
            end: offset.saturating_add(len),
        }
    }
}

fn overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Whether `later` must wait for `earlier` on the same file.
pub(crate) fn conflicts(earlier: Footprint, later: Footprint) -> bool {
    use Footprint::*;
    match (earlier, later) {
        (Barrier, _) | (_, Barrier) => true,
        (Read { .. }, Read { .. }) => false,
        (Read { start: a, end: b }, Write { start: c, end: d })
        | (Write { start: a, end: b }, Read { start: c, end: d })
        | (Write { start: a, end: b }, Write { start: c, end: d }) => overlap((a, b), (c, d)),
        (Write { .. }, Sync) => true,
        (Read { .. }, Sync) | (Sync, _) => false,
    }
}

#[derive(Debug)]
struct Entry {
    op: u32,
    fp: Footprint,
    running: bool,
}

/// The unfinished operations of every file of one shard.
#[derive(Debug, Default)]
pub(crate) struct Ordering {
    files: HashMap<FileKey, VecDeque<Entry>>,
}

impl Ordering {
    /// Records a new operation; returns whether it may be issued now.
    pub(crate) fn admit(&mut self, key: FileKey, op: u32, fp: Footprint) -> bool {
        let list = self.files.entry(key).or_default();
        let running = list.iter().all(|e| !conflicts(e.fp, fp));
        list.push_back(Entry { op, fp, running });
        running
    }

    /// Forgets a finished operation and appends to `ready`, in order, every waiting operation of
    /// the same file that no longer conflicts with anything before it.
    pub(crate) fn finish(&mut self, key: FileKey, op: u32, ready: &mut VecDeque<u32>) {
        let Some(list) = self.files.get_mut(&key) else {
            return;
        };
        if let Some(pos) = list.iter().position(|e| e.op == op) {
            list.remove(pos);
        }
        if list.is_empty() {
            self.files.remove(&key);
            return;
        }
        for i in 0..list.len() {
            if list[i].running {
                continue;
            }
            let fp = list[i].fp;
            if list.iter().take(i).all(|e| !conflicts(e.fp, fp)) {
                list[i].running = true;
                ready.push_back(list[i].op);
            }
        }
    }

    /// Operations waiting behind others, over all files.
    pub(crate) fn waiting(&self) -> usize {
        self.files
            .values()
            .map(|l| l.iter().filter(|e| !e.running).count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: FileKey = FileKey { dev: 1, ino: 1 };
    const K2: FileKey = FileKey { dev: 1, ino: 2 };

    #[test]
    fn conflict_table() {
        let r = Footprint::read(0, 10);
        let w = Footprint::write(5, 10);
        let w_far = Footprint::write(100, 10);
        assert!(!conflicts(r, r));
        assert!(conflicts(r, w) && conflicts(w, r) && conflicts(w, w));
        assert!(!conflicts(r, w_far) && !conflicts(w_far, r));
        assert!(conflicts(w_far, Footprint::Sync));
        assert!(!conflicts(r, Footprint::Sync));
        assert!(!conflicts(Footprint::Sync, w));
        assert!(conflicts(Footprint::Barrier, r) && conflicts(r, Footprint::Barrier));
        // Touching ranges do not overlap.
        assert!(!conflicts(Footprint::write(0, 10), Footprint::read(10, 5)));
    }

    #[test]
    fn reads_run_together_and_writes_wait() {
        let mut o = Ordering::default();
        let mut ready = VecDeque::new();
        assert!(o.admit(K, 1, Footprint::read(0, 4096)));
        assert!(o.admit(K, 2, Footprint::read(0, 4096)));
        assert!(!o.admit(K, 3, Footprint::write(0, 4096)));
        // A read behind the waiting write must not overtake it.
        assert!(!o.admit(K, 4, Footprint::read(0, 4096)));
        // Another file is independent.
        assert!(o.admit(K2, 5, Footprint::write(0, 4096)));
        assert_eq!(o.waiting(), 2);
        o.finish(K, 1, &mut ready);
        assert!(ready.is_empty());
        o.finish(K, 2, &mut ready);
        assert_eq!(ready, [3]);
        o.finish(K, 3, &mut ready);
        assert_eq!(ready, [3, 4]);
        o.finish(K, 4, &mut ready);
        o.finish(K2, 5, &mut ready);
        assert_eq!(o.waiting(), 0);
        assert!(o.files.is_empty());
    }

    #[test]
    fn fsync_waits_for_writes_only() {
        let mut o = Ordering::default();
        let mut ready = VecDeque::new();
        assert!(o.admit(K, 1, Footprint::read(0, 10)));
        assert!(o.admit(K, 2, Footprint::write(100, 10)));
        assert!(!o.admit(K, 3, Footprint::Sync));
        // A later write need not wait for the fsync.
        assert!(o.admit(K, 4, Footprint::write(200, 10)));
        // Once the earlier write is done, the fsync goes, though the earlier read has not
        // finished and a later write is still running.
        o.finish(K, 2, &mut ready);
        assert_eq!(ready, [3]);
        assert_eq!(o.waiting(), 0);
    }

    #[test]
    fn barrier_holds_everything() {
        let mut o = Ordering::default();
        let mut ready = VecDeque::new();
        assert!(o.admit(K, 1, Footprint::read(0, 10)));
        assert!(!o.admit(K, 2, Footprint::Barrier));
        assert!(!o.admit(K, 3, Footprint::read(50, 10)));
        o.finish(K, 1, &mut ready);
        assert_eq!(ready, [2]);
        o.finish(K, 2, &mut ready);
        assert_eq!(ready, [2, 3]);
    }
}
