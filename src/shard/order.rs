//! Per-file ordering inside a shard.
//!
//! SQEs on one ring carry no order, so the shard keeps, for each file (inode), the list of its
//! unfinished operations in arrival order. An operation is issued only when it conflicts with no
//! earlier unfinished one:
//!
//! | earlier \ later | read        | write       | sync  | barrier | close |
//! |-----------------|-------------|-------------|-------|---------|-------|
//! | read            | -           | if overlap  | -     | yes     | yes   |
//! | write           | if overlap  | if overlap  | yes   | yes     | yes   |
//! | sync            | -           | -           | -     | yes     | yes   |
//! | barrier         | yes         | yes         | yes   | yes     | yes   |
//! | close           | -           | -           | -     | yes     | -     |
//!
//! A socket's operations (`op/recv.rs`, `op/send.rs`, `op/accept.rs`, `op/shutdown.rs`) keep
//! their own order: a receive waits for earlier receives, a send for earlier sends, and the two
//! directions run side by side (a receive waiting for a peer that says nothing does not hold up
//! a send); accepts run side by side; connect is a barrier and close follows everything
//! earlier; a shutdown of the sending side (or both) follows earlier sends, one of the receiving
//! side waits for nothing (it ends a receive that waits). A file's footprints and a socket's meet only on a socket handed to a
//! file operation, where they keep their order (conflict).
//!
//! So reads run in parallel, a read sees every earlier overlapping write, a write never overtakes
//! an earlier overlapping read or write, an fsync covers every earlier write, fallocate and size
//! wait for everything before them and hold back everything after, and a close waits for
//! everything before it and holds back nothing: the operations after it are other handles'
//! (the inode's list is shared by all its handles on the shard), which must not wait for a
//! handle whose last operation waits on a peer.
//!
//! A read that may reach the end of the file ([`Footprint::read_to_end`]) touches everything from
//! its start up: a write above it, though it does not overlap the read's bytes, moves the end of
//! file the read sees (end of file, or the zeros of the hole the write makes), so they keep their
//! order too. A read that ends within the size the file is known to have cannot be changed by a
//! write it does not overlap.

use crate::op::Footprint;
use crate::router::FileKey;
use std::collections::{HashMap, VecDeque};

fn overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Whether `later` must wait for `earlier` on the same file.
pub(crate) fn conflicts(earlier: Footprint, later: Footprint) -> bool {
    use Footprint::*;
    match (earlier, later) {
        (Barrier, _) | (_, Barrier) => true,
        (_, Close) => true,
        (Close, _) => false,
        (Read { .. }, Read { .. }) => false,
        (Read { start: a, end: b }, Write { start: c, end: d })
        | (Write { start: a, end: b }, Read { start: c, end: d })
        | (Write { start: a, end: b }, Write { start: c, end: d }) => overlap((a, b), (c, d)),
        (Write { .. }, Sync) => true,
        (Read { .. }, Sync) | (Sync, Read { .. } | Write { .. } | Sync) => false,
        (Recv, Recv) | (Send, Send) => true,
        (Recv | Send | Unordered, Recv | Send | Unordered) => false,
        // A file's operations and a socket's on one descriptor: kept in order.
        (Recv | Send | Unordered, _) | (_, Recv | Send | Unordered) => true,
    }
}

#[derive(Debug)]
struct Entry {
    op: u32,
    fp: Footprint,
    running: bool,
}

/// One file's unfinished operations, in arrival order.
#[derive(Debug, Default)]
struct FileOrder {
    list: VecDeque<Entry>,
    /// Entries that are not reads: while there are none, a new read cannot conflict.
    non_reads: usize,
    /// Entries not yet running: while there are none, a finish has nothing to release.
    waiting: usize,
}

/// A cheap hasher for [`FileKey`]s (the router's mix, no per-process seed): the order table is
/// looked up once per request and once per completion.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = crate::router::mix(self.0 ^ v);
    }
}

pub(crate) type KeyMap<V> = HashMap<FileKey, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// The unfinished operations of every file of one shard.
#[derive(Debug, Default)]
pub(crate) struct Ordering {
    files: KeyMap<FileOrder>,
    waiting: usize,
}

impl Ordering {
    /// Records a new operation; returns whether it may be issued now.
    pub(crate) fn admit(&mut self, key: FileKey, op: u32, fp: Footprint) -> bool {
        let f = self.files.entry(key).or_default();
        let is_read = matches!(fp, Footprint::Read { .. });
        // Fast path: with only reads unfinished, a read conflicts with nothing.
        let running = (is_read && f.non_reads == 0) || f.list.iter().all(|e| !conflicts(e.fp, fp));
        f.list.push_back(Entry { op, fp, running });
        if !is_read {
            f.non_reads += 1;
        }
        if !running {
            f.waiting += 1;
            self.waiting += 1;
        }
        running
    }

    /// Forgets a finished operation and appends to `ready`, in order, every waiting operation of
    /// the same file that no longer conflicts with anything before it.
    pub(crate) fn finish(&mut self, key: FileKey, op: u32, ready: &mut VecDeque<u32>) {
        let Some(f) = self.files.get_mut(&key) else {
            return;
        };
        if let Some(pos) = f.list.iter().position(|e| e.op == op) {
            if let Some(e) = f.list.remove(pos) {
                if !matches!(e.fp, Footprint::Read { .. }) {
                    f.non_reads -= 1;
                }
                if !e.running {
                    f.waiting -= 1;
                    self.waiting -= 1;
                }
            }
        }
        if f.list.is_empty() {
            self.files.remove(&key);
            return;
        }
        for i in 0..f.list.len() {
            if f.waiting == 0 {
                break;
            }
            if f.list[i].running {
                continue;
            }
            let fp = f.list[i].fp;
            if f.list.iter().take(i).all(|e| !conflicts(e.fp, fp)) {
                f.list[i].running = true;
                f.waiting -= 1;
                self.waiting -= 1;
                ready.push_back(f.list[i].op);
            } else if fp == Footprint::Barrier {
                // Everything after a waiting barrier waits for it.
                break;
            }
        }
    }

    /// Whether file `key` has no unfinished operation here.
    pub(crate) fn is_idle(&self, key: FileKey) -> bool {
        !self.files.contains_key(&key)
    }

    /// Operations waiting behind others, over all files.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting
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
        // A read that may reach the end of the file: every write ending above its start moves
        // its end of file, either way round; a write wholly below it cannot.
        let tail = Footprint::read_to_end(50);
        assert!(conflicts(Footprint::write(100, 10), tail));
        assert!(conflicts(tail, Footprint::write(100, 10)));
        assert!(conflicts(Footprint::write(40, 20), tail));
        assert!(!conflicts(Footprint::write(0, 50), tail));
        assert!(!conflicts(tail, Footprint::read(1000, 10)));
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
        assert_eq!(o.waiting, 0);
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

    /// Random admits and finishes agree with the rule applied from scratch: an op runs exactly
    /// when it conflicts with no earlier unfinished op.
    #[test]
    fn agrees_with_the_rule_from_scratch() {
        let mut seed = 0x1234_5678_u64;
        let mut rnd = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let mut o = Ordering::default();
        let mut ready = VecDeque::new();
        // (op, footprint, running) in arrival order, per file key 1 or 2.
        let mut model: Vec<(u32, FileKey, Footprint, bool)> = Vec::new();
        let mut next = 0u32;
        for _ in 0..5000 {
            if model.is_empty() || rnd(3) > 0 {
                let key = if rnd(2) == 0 { K } else { K2 };
                let off = rnd(8) * 10;
                let fp = match rnd(10) {
                    0..=5 => Footprint::read(off, 15),
                    6..=7 => Footprint::write(off, 15),
                    8 => Footprint::Sync,
                    _ => Footprint::Barrier,
                };
                let run = o.admit(key, next, fp);
                model.push((next, key, fp, run));
                next += 1;
            } else {
                // Finish a random running op.
                let running: Vec<usize> = (0..model.len()).filter(|&i| model[i].3).collect();
                if running.is_empty() {
                    continue;
                }
                let i = running[rnd(running.len() as u64) as usize];
                let (op, key, _, _) = model.remove(i);
                ready.clear();
                o.finish(key, op, &mut ready);
                for &r in &ready {
                    let m = model.iter_mut().find(|m| m.0 == r).unwrap();
                    assert!(!m.3, "op {r} released twice");
                    m.3 = true;
                }
            }
            // Check every op against the rule.
            for (idx, m) in model.iter().enumerate() {
                let blocked = model[..idx]
                    .iter()
                    .any(|e| e.1 == m.1 && conflicts(e.2, m.2));
                assert_eq!(
                    m.3, !blocked,
                    "op {} running={} but blocked={}",
                    m.0, m.3, blocked
                );
            }
            assert_eq!(o.waiting(), model.iter().filter(|m| !m.3).count());
        }
    }

    /// A close waits for what came before it on the file and holds back nothing after it (the
    /// later operations are other handles' of the same inode).
    #[test]
    fn a_close_waits_for_earlier_operations_and_holds_back_none_after_it() {
        let mut o = Ordering::default();
        let mut ready = VecDeque::new();
        assert!(o.admit(K, 1, Footprint::read(0, 10)));
        assert!(!o.admit(K, 2, Footprint::Close));
        assert!(o.admit(K, 3, Footprint::read(0, 10)));
        assert!(o.admit(K, 4, Footprint::write(100, 10)));
        assert!(!o.admit(K, 5, Footprint::Barrier));
        o.finish(K, 3, &mut ready);
        o.finish(K, 4, &mut ready);
        assert!(
            ready.is_empty(),
            "the close still waits for op 1: {ready:?}"
        );
        o.finish(K, 1, &mut ready);
        assert_eq!(ready, [2]);
        ready.clear();
        o.finish(K, 2, &mut ready);
        assert_eq!(ready, [5]);
    }
}
