//! Which CPUs a thread may run on.

use rustix::process::getpid;
use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

/// While held, the calling thread may run on every CPU the process's main
/// thread may (a queue thread is tied to one), and so may the threads it
/// starts; dropped, it is tied again as it was.
pub struct Unpinned {
    own: Option<CpuSet>,
}

pub fn unpinned() -> Unpinned {
    let own = sched_getaffinity(None).ok();
    if let Ok(all) = sched_getaffinity(Some(getpid())) {
        let _ = sched_setaffinity(None, &all);
    }
    Unpinned { own }
}

impl Drop for Unpinned {
    fn drop(&mut self) {
        if let Some(own) = &self.own {
            let _ = sched_setaffinity(None, own);
        }
    }
}
