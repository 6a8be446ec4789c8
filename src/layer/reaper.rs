//! Directories moved into the workdir to be removed are removed by a thread
//! of their own, after the request that moved them was answered: a removed
//! directory of a lower tree holds a whiteout for each of its files, and
//! `rm -rf` waited for each to be unlinked (about half of an rmdir's time).
//! Removing whatever is left there is part of every mount's start, so a
//! crash in between leaves nothing behind for good.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;

use super::walk::remove_tree;

#[derive(Debug)]
pub(super) struct Reaper {
    work: OwnedFd,
    running: Mutex<Option<Running>>,
}

#[derive(Debug)]
struct Running {
    names: Sender<CString>,
    thread: JoinHandle<()>,
}

impl Reaper {
    /// A reaper of entries of the workdir `work` (its own descriptor).
    pub(super) fn new(work: OwnedFd) -> Reaper {
        Reaper {
            work,
            running: Mutex::new(None),
        }
    }

    /// Removes `name` from the workdir, later; now if no thread can be had.
    pub(super) fn remove(&self, name: CString) {
        let Ok(mut running) = self.running.lock() else {
            return self.remove_now(&name);
        };
        if running.is_none() {
            *running = self.start();
        }
        let Some(r) = running.as_ref() else {
            drop(running);
            return self.remove_now(&name);
        };
        if let Err(mpsc::SendError(name)) = r.names.send(name) {
            self.remove_now(&name);
        }
    }

    fn start(&self) -> Option<Running> {
        let work = self.work.try_clone().ok()?;
        let (names, rx) = mpsc::channel::<CString>();
        let thread = std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || {
                for name in rx {
                    remove_logged(work.as_fd(), &name);
                }
            })
            .ok()?;
        Some(Running { names, thread })
    }

    fn remove_now(&self, name: &CStr) {
        remove_logged(self.work.as_fd(), name);
    }

    /// Waits until everything handed over is removed.
    pub(super) fn finish(&self) {
        let running = match self.running.lock() {
            Ok(mut r) => r.take(),
            Err(_) => None,
        };
        if let Some(Running { names, thread }) = running {
            drop(names);
            let _ = thread.join();
        }
    }
}

/// Removes the workdir entry `name` (file or tree); a failure is only
/// logged (the next mount's workdir cleaning tries again).
pub(super) fn remove_logged(work: BorrowedFd<'_>, name: &CStr) {
    if let Err(e) = remove_tree(work, name) {
        tracing::warn!(error = %e, ?name, "cannot remove workdir scratch entry");
    }
}
