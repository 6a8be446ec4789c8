//! Termination signals handled synchronously by one thread with sigwait(2),
//! so that Ctrl-C / SIGTERM / SIGHUP unmount cleanly instead of killing the
//! daemon with the mount left dangling.

use std::io;

/// The set of blocked termination signals; call [`TerminationSignals::wait`]
/// from the thread that should handle them.
#[derive(Clone, Copy)]
pub struct TerminationSignals {
    set: libc::sigset_t,
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread. Threads spawned
/// afterwards inherit the mask, so only an explicit `wait` receives them.
pub fn block_termination_signals() -> io::Result<TerminationSignals> {
    // SAFETY: `set` is a local sigset_t initialised by sigemptyset before any
    // other use; pthread_sigmask only reads it; the old mask is not requested.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(TerminationSignals { set })
    }
}

impl TerminationSignals {
    /// Blocks until one of the signals arrives; returns its number.
    pub fn wait(&self) -> io::Result<i32> {
        let mut sig: libc::c_int = 0;
        // SAFETY: `self.set` is an initialised sigset_t and `sig` a valid
        // out-pointer for the duration of the call.
        let rc = unsafe { libc::sigwait(&self.set, &mut sig) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(sig)
    }
}

/// Makes `cmd` start its program with no signal blocked: a child inherits
/// the spawning thread's mask (std keeps it since Rust 1.66), and a daemon
/// or `stratafs run` blocks the termination signals it waits for.
pub fn unblock_signals_in_child(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls
    // sigemptyset and pthread_sigmask on a local set, both async-signal-safe;
    // it allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(())
        });
    }
}
