//! The inbox: messages from other threads are read in bursts of [`INBOX_BATCH`], and every
//! message, from the inbox or from this thread's local queue, goes through one [`Shard::handle`],
//! so requests are admitted in the order each source sent them. Requests that do not fit the op
//! table wait in the backlog, ahead of anything newer.

use super::runner::Shard;
use super::task_queues;
use super::{IoRequest, Message, Reply};
use crossbeam_channel::TryRecvError;

/// Messages taken from the inbox per loop turn, so completions are reaped between bursts.
const INBOX_BATCH: usize = 256;

impl Shard {
    pub(super) fn admit_inbox(&mut self) -> bool {
        let mut any = false;
        for _ in 0..INBOX_BATCH {
            // The backlog first: it holds requests that arrived before anything in the inbox.
            while self.can_admit() {
                let Some(req) = self.backlog.pop_front() else {
                    break;
                };
                any = true;
                self.admit(req);
            }
            // why: the inbox is read even when the op table is full. Its ops may never finish on
            // their own (reads of a FIFO with no writer), and a shard that stopped reading would
            // never see the shutdown that cancels them, nor answer stats or run tasks: requests
            // read now wait in the backlog, in order, and control messages are handled.
            match self.rx.try_recv() {
                Ok(msg) => {
                    any = true;
                    self.handle(msg);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.closing = true;
                    break;
                }
            }
        }
        if any {
            self.stats
                .note_queued((self.ready.len() + self.order.waiting() + self.backlog.len()) as u64);
        }
        any
    }

    /// Handles one message, from the inbox or from this thread's local queue (see
    /// `task_queues::try_local`): the one entry for every source, so requests are admitted in the
    /// order each source sent them.
    pub(super) fn handle(&mut self, msg: Message) {
        match msg {
            Message::Io(req) => self.admit_in_order(std::iter::once(req)),
            Message::Batch(reqs) => self.admit_in_order(reqs.into_iter()),
            Message::Session { session, reqs, at } => {
                let index = self.sessions.register(session, reqs.len());
                let reqs = reqs.into_iter().map(|r| IoRequest {
                    file: r.file,
                    op: r.op,
                    reply: Reply::Session {
                        session: index,
                        token: r.token,
                    },
                    at,
                    deadline: r.deadline,
                    pending: r.pending,
                });
                self.admit_in_order(reqs);
            }
            Message::Install {
                fd,
                key,
                flags,
                path,
                exec,
                done,
                transit: _transit, // dropped after the install
                count_open,
            } => self.install(fd, key, flags, path, exec, done, count_open),
            Message::Task(t) => self.tasks.push_back(t),
            Message::Run(r) => task_queues::push_runnable(r),
            Message::SetExec(exec) => task_queues::set_executor(exec),
            Message::Stats(done) => {
                self.stats.pool = self.pool.stats();
                self.stats.note_pipes();
                done.complete(Ok(self.stats.clone()));
            }
            Message::Shutdown { grace, done } => {
                if !self.closing {
                    self.closing = true;
                    self.closing_deadline = self.now().checked_add(grace);
                }
                self.shutdown_waiters.extend(done);
            }
        }
    }

    /// Admits `reqs` in order: straight into the op table while there is room and nothing older
    /// waits; the rest waits in the backlog (first in, first admitted), behind what was there.
    fn admit_in_order(&mut self, mut reqs: impl Iterator<Item = IoRequest>) {
        if self.backlog.is_empty() {
            while self.can_admit() {
                let Some(req) = reqs.next() else { return };
                self.admit(req);
            }
        }
        self.backlog.extend(reqs);
    }
}
