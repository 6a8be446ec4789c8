//! Building and running a mount session: options, fuser `Config`, threads,
//! daemonizing once ready, and clean unmount on termination signals.

mod daemon;
mod error;
mod mountpoint;
mod unmount;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use fuser::{Config, MountOption, Session, SessionACL};

pub use error::MountError;
pub use mountpoint::check_mountpoint;
pub use unmount::unmount;

use crate::fuse::{AdapterConfig, StrataFs};
use crate::union::{Union, UpperSpec};

/// What to mount and how.
#[derive(Debug, Clone)]
pub struct MountSpec {
    /// Lower layers, top first.
    pub lowers: Vec<PathBuf>,
    /// The writable layer; without it the mount is read-only.
    pub upper: Option<UpperSpec>,
    pub mountpoint: PathBuf,
    /// Stay attached to the terminal instead of forking once ready.
    pub foreground: bool,
    /// FUSE event loops; 0 picks two per CPU (at least four).
    pub threads: usize,
}

/// Mounts and serves until unmounted. Without `foreground`, returns in the
/// calling process as soon as the mount is ready, while a forked daemon serves.
pub fn run(spec: &MountSpec) -> Result<(), MountError> {
    check_mountpoint(&spec.mountpoint)?;
    // The daemon leaves the caller's working directory, so it needs an absolute path.
    let mut spec = spec.clone();
    spec.mountpoint = std::path::absolute(&spec.mountpoint)
        .map_err(|e| MountError::io("resolving the mount point", e))?;
    let spec = &spec;
    let union = Union::new(&spec.lowers, spec.upper.as_ref())?;
    raise_fd_limit();
    // Entries are created with exactly the mode the caller asked for (its
    // umask already applied); the daemon's own umask must not cut more.
    rustix::process::umask(rustix::fs::Mode::empty());
    if spec.foreground {
        serve(spec, union, None)
    } else {
        daemon::spawn(|ready| serve(spec, union, Some(ready)))
    }
}

fn threads(spec: &MountSpec) -> usize {
    if spec.threads > 0 {
        return spec.threads;
    }
    // A long copy-up occupies its request loop: keep spares so that it never
    // stalls requests for other files.
    std::thread::available_parallelism()
        .map(|n| n.get() * 2)
        .unwrap_or(4)
        .max(4)
}

fn session_config(spec: &MountSpec) -> Config {
    let root = rustix::process::geteuid().is_root();
    let mut options = vec![
        MountOption::FSName("stratafs".into()),
        MountOption::Subtype("stratafs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    if spec.upper.is_none() {
        options.push(MountOption::RO);
    }
    if root {
        // A container root file system needs its setuid binaries and devices.
        options.extend([MountOption::Suid, MountOption::Dev]);
    }
    let mut cfg = Config::default();
    cfg.mount_options = options;
    cfg.acl = if root || user_allow_other() {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    cfg.n_threads = Some(threads(spec));
    cfg.clone_fd = true;
    cfg
}

/// Non-root users may ask for allow_other only when /etc/fuse.conf says so.
fn user_allow_other() -> bool {
    std::fs::read_to_string("/etc/fuse.conf")
        .map(|s| s.lines().any(|l| l.trim() == "user_allow_other"))
        .unwrap_or(false)
}

/// Directory nodes hold one fd per contributing layer and upper entries one
/// each, for as long as the kernel holds them: allow as many as the system
/// does (root may raise the hard limit to fs.nr_open), else the hard limit.
fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let system_max = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    for max in [system_max, lim.maximum].into_iter().flatten() {
        let want = Rlimit {
            current: Some(max),
            maximum: Some(max),
        };
        match setrlimit(Resource::Nofile, want) {
            Ok(()) => return,
            Err(e) => tracing::debug!(error = %e, max, "cannot raise the open file limit"),
        }
    }
}

fn serve(spec: &MountSpec, union: Union, ready: Option<daemon::Ready>) -> Result<(), MountError> {
    // Block termination signals before any thread exists, so every thread
    // inherits the mask and only the signal thread below receives them.
    let signals = crate::sys::block_termination_signals()
        .map_err(|e| MountError::io("blocking signals", e))?;
    let fs = StrataFs::new(Arc::new(union), AdapterConfig::default());
    let session =
        Session::new(fs, &spec.mountpoint, &session_config(spec)).map_err(|e| MountError::Fuse {
            path: spec.mountpoint.clone(),
            err: e,
        });
    let mut session = match session {
        Ok(s) => s,
        Err(e) => {
            if let Some(ready) = ready {
                ready.failed(&e.to_string());
            }
            return Err(e);
        }
    };
    let mut unmounter = session.unmount_callable();
    let mountpoint = spec.mountpoint.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = signals.wait() {
                tracing::info!(signal = sig, "unmounting on signal");
                if let Err(e) = unmounter.unmount() {
                    tracing::warn!(error = %e, "unmount failed; detaching");
                    let _ = unmount(&mountpoint, true);
                }
            }
        })
        .map_err(|e| MountError::io("starting the signal thread", e))?;
    if let Some(ready) = ready {
        ready.succeeded();
    }
    tracing::info!(mountpoint = %spec.mountpoint.display(), "mounted");
    session
        .run()
        .map_err(|e| MountError::io("serving the mount", e))?;
    let _ = std::io::stderr().flush();
    Ok(())
}
