//! Directories the kernel was handed by readdirplus are listed ahead, by
//! threads of their own, while the reader is still busy with their parent:
//! a walk (`find`, `ls -lR`) reads each of them next, and waited for the
//! daemon to read every layer's directory and stat its files. The threads
//! work on the CPU the reader leaves free; the listing they leave is taken
//! like any kept one, only while no name in its directory changed since it
//! was begun.
//!
//! A walk goes deep first, in listing order: the subdirectories of the
//! latest listing are taken first, in their order.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use super::Union;
use super::readdir::Want;

/// Two: one reader's walk keeps one listing under way while the other
/// thread waits on the disk.
const THREADS: usize = 2;

/// Directories waiting to be listed at most; the oldest go first.
const MAX_WAITING: usize = 1024;

/// How long a reader waits for a listing of its directory under way before
/// it lists the directory itself.
const MAX_WAIT: Duration = Duration::from_millis(200);

/// A directory whose layer directories are bigger than this in all (about
/// 4000 entries on ext4) is left to its reader: its listing would take the
/// daemon's memory for a directory that may never be read.
pub(super) const MAX_DIR_BYTES: i64 = 128 * 1024;

#[derive(Debug, Default)]
pub(super) struct Lookahead {
    /// Shared with the threads, which hold the union only while they list.
    queue: Arc<Queue>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct Queue {
    state: Mutex<State>,
    /// Signalled when a directory is queued (one thread takes it).
    queued: Condvar,
    /// Signalled when a listing ahead is done (its reader may be waiting).
    listed: Condvar,
}

/// A directory to list, in `parent`, and the union's change count when
/// it was queued.
#[derive(Debug, Clone, Copy)]
struct Job {
    ino: u64,
    parent: u64,
    changes: u64,
    want: Want,
}

#[derive(Debug, Default)]
struct State {
    /// Next first.
    waiting: VecDeque<Job>,
    /// The directory whose subdirectories were queued last, and how many:
    /// the next of them goes after those, before all older ones.
    batch: Option<(u64, usize)>,
    /// Being listed now.
    listing: Vec<u64>,
    stopped: bool,
    started: bool,
}

impl Queue {
    fn push(&self, job: Job) {
        let parent = job.parent;
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if !state.started || state.stopped || state.listing.contains(&job.ino) {
            return;
        }
        let at = match state.batch {
            Some((p, n)) if p == parent => n.min(state.waiting.len()),
            _ => 0,
        };
        state.waiting.insert(at, job);
        state.batch = Some((parent, at + 1));
        if state.waiting.len() > MAX_WAITING {
            state.waiting.pop_back();
        }
        drop(state);
        self.queued.notify_one();
    }

    /// The next directory to list, waiting for one; `None` once stopped.
    fn next(&self) -> Option<Job> {
        let mut state = self.state.lock().ok()?;
        loop {
            if state.stopped {
                return None;
            }
            if let Some(job) = state.waiting.pop_front() {
                if let Some((_, n)) = &mut state.batch {
                    *n = n.saturating_sub(1);
                }
                state.listing.push(job.ino);
                return Some(job);
            }
            state = self.queued.wait(state).ok()?;
        }
    }

    fn done(&self, ino: u64) {
        if let Ok(mut state) = self.state.lock() {
            state.listing.retain(|&i| i != ino);
        }
        self.listed.notify_all();
    }

    /// A reader is about to list directory `ino`: it is no longer listed
    /// ahead, and a listing of it under way is waited for (a while).
    fn claim(&self, ino: u64) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if let Some(i) = state.waiting.iter().position(|j| j.ino == ino) {
            state.waiting.remove(i);
            if let Some((_, n)) = &mut state.batch
                && i < *n
            {
                *n -= 1;
            }
        }
        let _ = self
            .listed
            .wait_timeout_while(state, MAX_WAIT, |s| s.listing.contains(&ino));
    }
}

impl Lookahead {
    /// Asks for directory `ino`, a subdirectory of `parent`, to be listed
    /// ahead; `changes` is the union's change count now. Nothing happens
    /// unless the threads were started.
    pub(super) fn push(&self, parent: u64, ino: u64, changes: u64, want: Want) {
        self.queue.push(Job {
            ino,
            parent,
            changes,
            want,
        });
    }

    /// See [`Queue::claim`].
    pub(super) fn claim(&self, ino: u64) {
        self.queue.claim(ino);
    }

    /// Stops the threads and waits for them (not from one of them).
    pub(super) fn stop(&self) {
        if let Ok(mut state) = self.queue.state.lock() {
            state.stopped = true;
            state.waiting.clear();
        }
        self.queue.queued.notify_all();
        self.queue.listed.notify_all();
        let threads = self
            .threads
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in threads {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl Union {
    /// Starts the threads that list directories ahead of their readers
    /// (see the module comment).
    pub fn start_lookahead(self: &Arc<Self>) {
        let Ok(mut state) = self.lookahead.queue.state.lock() else {
            return;
        };
        if state.started || state.stopped {
            return;
        }
        for _ in 0..THREADS {
            let union: Weak<Union> = Arc::downgrade(self);
            let queue = self.lookahead.queue.clone();
            let spawned = std::thread::Builder::new()
                .name("lookahead".into())
                .spawn(move || {
                    while let Some(job) = queue.next() {
                        let u = union.upgrade();
                        let ahead = u
                            .as_ref()
                            .and_then(|u| u.list_ahead(job.ino, job.changes, job.want));
                        queue.done(job.ino);
                        if let (Some(u), Some(ahead)) = (u, ahead) {
                            u.warm_subdirs(&ahead);
                        }
                    }
                });
            match spawned {
                Ok(t) => {
                    state.started = true;
                    if let Ok(mut threads) = self.lookahead.threads.lock() {
                        threads.push(t);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "no thread to list directories ahead"),
            }
        }
    }

    /// Stops listing ahead and waits for listings under way: called before
    /// the union goes, so that it goes on the caller's thread.
    pub fn stop_lookahead(&self) {
        self.lookahead.stop();
    }
}

impl Drop for Union {
    fn drop(&mut self) {
        self.lookahead.stop();
    }
}
