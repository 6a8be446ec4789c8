//! The FUSE adapter: one thin method per operation that decodes the request,
//! calls the union core and replies (`ops`), whichever transport carried it
//! (`dev`: fuser's /dev/fuse loop). No layer decisions are made here.

mod alias;
mod convert;
mod dev;
mod ops;
mod passthrough;
mod reply;
pub mod ring;
mod walk_style;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use fuser::{Generation, TimeOrNow};

use crate::union::{Caller, SetTime, Union};
use convert::file_attr;
use passthrough::Passthrough;
use reply::Ctx;

/// Options of the adapter that are not union semantics.
#[derive(Debug, Clone)]
pub struct AdapterConfig {
    /// How long the kernel may cache entries and attributes. Lower layers
    /// never change, so this can be long.
    pub ttl: Duration,
    /// Let the kernel enforce POSIX ACLs and cache them per inode.
    pub acl: bool,
    /// Kernel writeback cache for writes; `None`: when passthrough is off.
    pub writeback: Option<bool>,
    pub max_write: Option<u32>,
    /// Ask for FUSE passthrough (needs CAP_SYS_ADMIN in the initial user
    /// namespace); falls back to the daemon when refused.
    pub passthrough: bool,
    /// Ask for FUSE over io_uring (the kernel offers it when root set
    /// `fuse.enable_uring`); then `ring::start` must serve the queues.
    pub uring: bool,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        AdapterConfig {
            ttl: Duration::from_secs(24 * 3600),
            acl: true,
            writeback: None,
            max_write: None,
            passthrough: false,
            uring: false,
        }
    }
}

pub struct StrataFs {
    core: Arc<Union>,
    cfg: AdapterConfig,
    passthrough: Passthrough,
    aliases: alias::Aliases,
    /// The kernel leaves clearing setuid/setgid on writes to us
    /// (FUSE_HANDLE_KILLPRIV_V2), and so skips a security.capability
    /// lookup per write.
    killpriv: AtomicBool,
    /// The kernel caches writes (FUSE_WRITEBACK_CACHE).
    writeback: AtomicBool,
    /// The kernel opens directories by itself once opendir says ENOSYS
    /// (FUSE_NO_OPENDIR_SUPPORT, Linux 5.1).
    no_opendir: AtomicBool,
    /// The kernel agreed to FUSE over io_uring.
    uring: AtomicBool,
    walks: walk_style::WalkStyles,
}

/// The file system as fuser's session holds it; the io_uring queues share it.
pub struct DevFs(pub Arc<StrataFs>);

impl StrataFs {
    pub fn new(core: Arc<Union>, cfg: AdapterConfig) -> Self {
        StrataFs {
            core,
            cfg,
            passthrough: Passthrough::default(),
            aliases: alias::Aliases::default(),
            killpriv: AtomicBool::new(false),
            writeback: AtomicBool::new(false),
            no_opendir: AtomicBool::new(false),
            uring: AtomicBool::new(false),
            walks: walk_style::WalkStyles::default(),
        }
    }

    /// Whether the kernel agreed to FUSE over io_uring (known after the handshake).
    pub fn uring(&self) -> bool {
        self.uring.load(Relaxed)
    }

    fn writeback(&self) -> bool {
        self.writeback.load(Relaxed)
    }

    /// With a writeback cache the kernel reads pages of files opened for
    /// writing only and applies O_APPEND itself.
    fn open_flags(&self, flags: i32) -> i32 {
        if !self.writeback() {
            return flags;
        }
        let flags = flags & !libc::O_APPEND;
        if flags & libc::O_ACCMODE == libc::O_WRONLY {
            (flags & !libc::O_ACCMODE) | libc::O_RDWR
        } else {
            flags
        }
    }

    /// Whether a change by this caller must clear setuid/setgid, which is
    /// ours to do under FUSE_HANDLE_KILLPRIV_V2. The request carries no
    /// capabilities: root is taken to hold CAP_FSETID.
    fn lacks_fsetid(&self, ctx: &Ctx) -> bool {
        self.killpriv.load(Relaxed) && ctx.uid != 0
    }

    /// Attributes as the mount shows them.
    fn attr_out(&self, attr: crate::union::Attr) -> fuser::FileAttr {
        file_attr(&self.core.shown(attr))
    }
}

fn caller(ctx: &Ctx, umask: u32) -> Caller {
    Caller {
        uid: ctx.uid,
        gid: ctx.gid,
        umask,
    }
}

/// The caller's groups: its gid and, from /proc, its supplementary groups.
fn caller_groups(ctx: &Ctx) -> Vec<u32> {
    let mut groups = vec![ctx.gid];
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", ctx.pid))
        && let Some(line) = status.lines().find_map(|l| l.strip_prefix("Groups:"))
    {
        groups.extend(
            line.split_whitespace()
                .filter_map(|g| g.parse::<u32>().ok()),
        );
    }
    groups
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => {
            let t = convert::unix_time(st);
            SetTime::At {
                sec: t.sec,
                nsec: t.nsec,
            }
        }
    }
}

/// The kernel's 32-bit `new_encode_dev` form back to a dev_t.
fn decode_dev(rdev: u32) -> u64 {
    let major = (rdev & 0xfff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    rustix::fs::makedev(major, minor)
}

const GENERATION: Generation = Generation(0);
