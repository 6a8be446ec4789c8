//! Building and running a mount session: options, fuser `Config`, threads,
//! daemonizing once ready, and clean unmount on termination signals.

mod daemon;
mod direct;
mod error;
mod library;
mod mountpoint;
mod options;
mod registry;
mod scratch;
mod unmount;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use fuser::{Config, MountOption, Session, SessionACL};

pub use error::MountError;
pub use library::{Mount, MountBuilder};
pub use mountpoint::check_mountpoint;
pub use options::{Access, FuseOptions};
pub use registry::{
    MountRecord, Registered, find as find_mount, find_by_upper, register, wait_for_exit,
};
pub use scratch::{ephemeral_upper, temp_dir, work_beside};
pub use unmount::unmount;

use crate::fuse::{AdapterConfig, DevFs, StrataFs};
use crate::union::{Union, UpperSpec, ViewOptions};

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
    pub fuse: FuseOptions,
    pub view: ViewOptions,
    /// Per lower layer (top first): a check of file content on first open.
    pub checks: Vec<Option<Arc<dyn crate::layer::ContentCheck>>>,
    /// Kept for as long as the mount serves (locks on stored layers).
    pub keep_alive: Vec<Arc<dyn std::fmt::Debug + Send + Sync>>,
    /// Removed once the mount is gone (an ephemeral upper and workdir).
    pub remove_after: Option<PathBuf>,
}

impl MountSpec {
    /// What the registry says about this mount, served by this process.
    pub fn record(&self) -> MountRecord {
        let abs = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
        MountRecord {
            mountpoint: self.mountpoint.clone(),
            lowers: self.lowers.iter().map(abs).collect(),
            upper: self.upper.as_ref().map(|u| abs(&u.upper)),
            work: self.upper.as_ref().map(|u| abs(&u.work)),
            pid: std::process::id(),
        }
    }

    /// A read-only mount of `lowers` (top first) at `mountpoint`, with
    /// default options.
    pub fn new(lowers: Vec<PathBuf>, mountpoint: PathBuf) -> Self {
        MountSpec {
            lowers,
            upper: None,
            mountpoint,
            foreground: false,
            fuse: FuseOptions::default(),
            view: ViewOptions::default(),
            checks: Vec::new(),
            keep_alive: Vec::new(),
            remove_after: None,
        }
    }
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
    // Entries are created with exactly the mode the caller asked for (its
    // umask already applied); the daemon's own umask must not cut more.
    rustix::process::umask(rustix::fs::Mode::empty());
    let mut union = Union::new(&spec.lowers, spec.upper.as_ref(), spec.view.clone())?;
    union.set_content_checks(spec.checks.clone());
    warn_unreadable_markers(&spec.lowers);
    raise_fd_limit();
    let cleanup = || {
        if let Some(dir) = &spec.remove_after
            && let Err(e) = std::fs::remove_dir_all(dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove the ephemeral upper");
        }
    };
    let served = if spec.foreground {
        serve(spec, union, None)
    } else {
        daemon::spawn(|ready| {
            let r = serve(spec, union, Some(ready));
            cleanup();
            r
        })
    };
    if spec.foreground || served.is_err() {
        cleanup();
    }
    served
}

/// Without CAP_SYS_ADMIN in the initial user namespace, trusted.* xattrs
/// cannot even be read, so an opaque directory marked only with
/// `trusted.overlay.opaque` would merge with the layers below. A layer
/// written by this very user cannot carry such markers; one owned by
/// somebody else might: say so rather than silently showing hidden entries.
fn warn_unreadable_markers(lowers: &[PathBuf]) {
    if privileged() {
        return;
    }
    let me = rustix::process::geteuid().as_raw();
    let foreign: Vec<&PathBuf> = lowers
        .iter()
        .filter(|p| {
            std::fs::metadata(p).is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) != me)
        })
        .collect();
    if let Some(first) = foreign.first() {
        eprintln!(
            "stratafs: warning: unprivileged mount: trusted.overlay.* markers cannot be read \
             in {} lower layer(s) owned by other users (first: {}); if they mark opaque \
             directories that way, run 'stratafs layer add-user-markers DIR' on them as root",
            foreign.len(),
            first.display()
        );
    }
}

/// True for root of the initial user namespace, which reads trusted xattrs
/// and may use FUSE passthrough.
fn privileged() -> bool {
    rustix::process::geteuid().is_root()
        && std::fs::read_to_string("/proc/self/uid_map")
            .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
}

fn threads(spec: &MountSpec) -> usize {
    if let Some(n) = spec.fuse.threads.filter(|n| *n > 0) {
        return n;
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
    let o = &spec.fuse;
    let flag = |on: bool, yes: MountOption, no: MountOption| if on { yes } else { no };
    let mut options = vec![
        MountOption::FSName(o.fsname.clone().unwrap_or_else(|| "stratafs".into())),
        MountOption::Subtype(o.subtype.clone().unwrap_or_else(|| "stratafs".into())),
        MountOption::DefaultPermissions,
        flag(o.atime, MountOption::Atime, MountOption::NoAtime),
    ];
    if spec.upper.is_none() || o.read_only {
        options.push(MountOption::RO);
    }
    // A container root file system needs its setuid binaries and devices:
    // on by default where the daemon may grant them.
    options.push(flag(
        o.suid.unwrap_or(root),
        MountOption::Suid,
        MountOption::NoSuid,
    ));
    options.push(flag(
        o.dev.unwrap_or(root),
        MountOption::Dev,
        MountOption::NoDev,
    ));
    if !o.exec {
        options.push(MountOption::NoExec);
    }
    if o.sync {
        options.push(MountOption::Sync);
    }
    if o.dirsync {
        options.push(MountOption::DirSync);
    }
    let mut cfg = Config::default();
    cfg.mount_options = options;
    cfg.acl = match o.access {
        Access::Auto if root => SessionACL::All,
        Access::Auto | Access::Owner => SessionACL::Owner,
        Access::AllowOther => SessionACL::All,
        Access::AllowRoot => SessionACL::RootAndOwner,
    };
    cfg.n_threads = Some(threads(spec));
    cfg.clone_fd = true;
    cfg
}

fn adapter_config(spec: &MountSpec) -> AdapterConfig {
    let mut cfg = AdapterConfig::default();
    if let Some(t) = spec.fuse.timeout {
        cfg.ttl = t;
    }
    cfg.acl = spec.fuse.acl;
    cfg.writeback = spec.fuse.writeback;
    cfg.passthrough = spec.fuse.passthrough.unwrap_or_else(privileged);
    cfg.max_write = spec.fuse.max_write;
    cfg.uring = match spec.fuse.uring {
        Some(false) => false,
        // An explicit request that cannot be met fails at the handshake.
        Some(true) => true,
        None => match crate::fuse::ring::available() {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "FUSE over io_uring not usable here");
                false
            }
        },
    };
    cfg
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

/// Descriptor slots the daemon's table holds from the start (128 KiB of
/// kernel memory): a mount holds a descriptor for each layer directory of a
/// directory the kernel knows and for each upper file (untar of 10k files
/// holds 10k).
const FD_TABLE_SLOTS: u64 = 16384;

/// Grows the descriptor table now, while the daemon has one thread: a table
/// that threads share waits for an RCU grace period each time it doubles
/// (`expand_fdtable`), and the request opening the descriptor waits with it.
/// Growing from 64 slots to 1024 during a cold `find` of the Debian image
/// made it take 100 ms instead of 64.
fn presize_fd_table() {
    use rustix::process::{Resource, getrlimit};
    let limit = getrlimit(Resource::Nofile)
        .current
        .unwrap_or(FD_TABLE_SLOTS);
    let Ok(top) = i32::try_from(FD_TABLE_SLOTS.min(limit).saturating_sub(1)) else {
        return;
    };
    let grown = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .and_then(|null| rustix::io::fcntl_dupfd_cloexec(&null, top));
    if let Err(e) = grown {
        tracing::debug!(error = %e, "cannot grow the descriptor table");
    }
}

/// An unprivileged mount goes through fusermount3, which fuser finds by
/// running each candidate with `-h` (a process and an exec, a noticeable
/// part of a rootless mount's time) unless `FUSERMOUNT_PATH` names it: name
/// it from `PATH` while the daemon has a single thread.
fn name_fusermount() {
    const VAR: &str = "FUSERMOUNT_PATH";
    if rustix::process::geteuid().is_root() || std::env::var_os(VAR).is_some() {
        return;
    }
    let Some(path) = std::env::var_os("PATH") else {
        return;
    };
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join("fusermount3"))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file())
                && rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok()
        });
    if let Some(p) = found
        && p.is_absolute()
    {
        crate::sys::set_env_if_single_threaded(VAR, p.as_os_str());
    }
}

/// Mounts `union` at the spec's mount point and returns the session (not
/// yet serving), and whether the mount was made here with mount(2) (then
/// it is ours to unmount; fuser's own mounts are fuser's).
fn open_session(spec: &MountSpec, union: Arc<Union>) -> Result<Opened, MountError> {
    union.start_lookahead();
    let fs = Arc::new(StrataFs::new(union, adapter_config(spec)));
    let config = session_config(spec);
    let fuse_err = |err: std::io::Error| MountError::Fuse {
        path: spec.mountpoint.clone(),
        err,
    };
    let direct = direct::mount(&direct::DirectMount {
        mountpoint: &spec.mountpoint,
        options: &spec.fuse,
        read_only: spec.upper.is_none() || spec.fuse.read_only,
        acl: config.acl,
        privileged: rustix::process::geteuid().is_root(),
    })
    .map_err(fuse_err)?;
    let here = direct.is_some();
    let session = match direct {
        Some(fd) => Session::from_fd(DevFs(fs.clone()), fd, config.acl, config.clone()),
        None => Session::new(DevFs(fs.clone()), &spec.mountpoint, &config),
    };
    let undo = || {
        if here {
            let _ = unmount(&spec.mountpoint, true);
        }
    };
    let session = session.inspect_err(|_| undo()).map_err(fuse_err)?;
    match serve_rings(spec, &fs, &session, config.acl) {
        Ok(rings) => Ok(Opened {
            session,
            here,
            rings,
        }),
        Err(err) => {
            drop(session);
            undo();
            Err(fuse_err(err))
        }
    }
}

/// A mounted session, not yet serving /dev/fuse.
struct Opened {
    session: Session<DevFs>,
    /// Mounted here with mount(2): ours to unmount (fuser's own mounts are fuser's).
    here: bool,
    /// The io_uring queues, already serving, if the kernel agreed to them.
    rings: Option<crate::fuse::ring::Rings>,
}

/// How long the end of a mount waits for its queue threads.
const RINGS_END: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts the io_uring queues if the kernel agreed to them; an explicit
/// `uring=1` fails the mount when it did not.
fn serve_rings(
    spec: &MountSpec,
    fs: &Arc<StrataFs>,
    session: &Session<DevFs>,
    acl: SessionACL,
) -> std::io::Result<Option<crate::fuse::ring::Rings>> {
    use std::os::fd::AsFd;
    if !fs.uring() {
        if spec.fuse.uring == Some(true) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "uring=1: the kernel offers no FUSE over io_uring (Linux 6.14+ with \
                 `echo Y > /sys/module/fuse/parameters/enable_uring`)",
            ));
        }
        return Ok(None);
    }
    // Agreed on: the kernel now holds every request until all queues are
    // registered, so a failure here must fail the mount.
    let dev = session.as_fd().try_clone_to_owned()?;
    crate::fuse::ring::start(fs.clone(), dev, acl, threads(spec))
        .map(Some)
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "registering the FUSE io_uring queues: {e} (uring=0 serves through /dev/fuse)"
                ),
            )
        })
}

fn serve(spec: &MountSpec, union: Union, ready: Option<daemon::Ready>) -> Result<(), MountError> {
    // Block termination signals before any thread exists, so every thread
    // inherits the mask and only the signal thread below receives them.
    let signals = crate::sys::block_termination_signals()
        .map_err(|e| MountError::io("blocking signals", e))?;
    crate::sys::tune_allocator();
    presize_fd_table();
    // Recorded before the mount appears, so that whoever sees the mount
    // (a foreground caller polling /proc/mounts) finds its record too.
    let _registered = register(&spec.record());
    name_fusermount();
    let union = Arc::new(union);
    let mounted = open_session(spec, union.clone());
    let Opened {
        mut session,
        here: mounted_here,
        rings,
    } = match mounted {
        Ok(m) => m,
        // In the foreground, a mount that somebody unmounted while its
        // handshake was under way ends like any other unmounted mount; a
        // background mount's caller still waits to hear it never got ready.
        Err(MountError::Fuse { err, .. })
            if ready.is_none() && err.kind() == std::io::ErrorKind::NotConnected =>
        {
            tracing::info!(error = %err, "unmounted before it was served");
            return Ok(());
        }
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
                // A mount made here is not fuser's to undo.
                let done = if mounted_here {
                    unmount(&mountpoint, false).map_err(|e| e.to_string())
                } else {
                    unmounter.unmount().map_err(|e| e.to_string())
                };
                if let Err(e) = done {
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
    let served = session
        .run()
        .map_err(|e| MountError::io("serving the mount", e));
    if let Some(rings) = rings {
        rings.wait(RINGS_END);
    }
    // The union goes on this thread, with its upper layer's cleaning.
    union.stop_lookahead();
    served?;
    let _ = std::io::stderr().flush();
    Ok(())
}
