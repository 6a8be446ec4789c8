//! The differential harness for the writable layer: the same operations run against kernel
//! overlayfs (the oracle) and stratafs, each over its own identical copy of the same lower
//! layers and its own fresh upper/work, comparing:
//! - after every step, the result (the output, or the exact errno);
//! - at the end, the whole merged tree (snapshot comparison, hard-link groups instead of inode
//!   numbers, clock-set mtimes normalized) and the mount invariants of the stratafs view;
//! - the meaning of the upper directory: each upper, mounted afterwards by the kernel as the top
//!   of a read-only stack over the same lowers, gives the same view;
//! - the on-disk rules of the stratafs upper ([`upper_format_problems`]);
//! - persistence: stratafs remounted over its upper/work gives the same view;
//! - the workdir is clean after the unmount; the lower layers are bit-identical.
//!
//! Scripts are either fixed (scenarios; each step may carry the result the kernel must give,
//! which guards against scenario bugs) or random (seeded, generated adaptively from the kernel
//! mount's current tree, so that most operations hit existing names). A random failure is
//! shrunk (by replaying subsets of the steps) before it is reported.
//!
//! Kernel options: `redirect_dir=on,metacopy=off,index=off` (with `userxattr`, which allows
//! neither, stratafs runs with `--redirect-dir off --metacopy off`). Differences from the kernel that
//! are legitimate by design are kept out of the scripts (see `tests/README.md`):
//! - names starting with `.wh.` (EINVAL on stratafs, allowed by the kernel);
//! - reads through an fd opened read-only before the file's copy-up (the kernel keeps reading
//!   the lower file; stratafs may show the new data): random scripts open read-only only with
//!   O_TRUNC (which copies up at open on both);
//! - hard links inside a lower layer (keeping them across copy-up is a planned stratafs
//!   extension, the kernel with index=off breaks them): the differential layers have none;
//! - st_ino/st_dev values, directory nlink, atime, ctime, st_blocks, statfs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::convert::convert_for_kernel;
use super::env::TestEnv;
use super::layer::{Layer, Opaque, Whiteout};
use super::mounts::{KernelOverlay, MountMode, UpperDialect, UpperSpec};
use super::ops::{Ctx, Data, Op, Out, Res, Rng, SLOTS, TimeArg, now_secs, show_result};
use super::rw::{
    Watchdog, fix_times, normalize_times, strip_hidden_xattrs, upper_format_problems,
    upper_format_problems_opaque, upper_work, workdir_leftovers,
};
use super::snapshot::{Kind, Mode, Snapshot, format_problems, mount_invariants, snapshot_diff};
use super::sys::{errno_name, read_dir_raw, set_times_nofollow};

/// mtime given to both upper roots before mounting (older than the layers' fixed times, so a
/// root that shows the wrong directory's attributes differs).
pub const UPPER_ROOT_TIME: i64 = 990_000_000;

/// Which marker dialect the upper lower layer of [`standard_layers`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LowerMarkers {
    /// char 0/0 + trusted.overlay.opaque (what the kernel reads natively).
    Kernel,
    /// `.wh.` files.
    Oci,
    /// user.overlay.whiteout files + user.overlay.opaque.
    UserXattr,
}

/// The layers of the random and most scripted differentials (top first):
/// base: files of several modes/owners (setuid, 0444, owned by 1000), xattrs, a 300 KiB file,
/// a sparse file, symlinks (one dangling), a FIFO, nested and empty directories;
/// top: an override, a whiteout, an opaque directory, new names, a name with a space.
/// No hard links (see the module docs). Every timestamp is fixed and old.
pub fn standard_layers(env: &TestEnv, markers: LowerMarkers) -> Vec<Layer> {
    let base = env.layer("base");
    let top = env.layer("top");
    base.file("f1", "base f1\n");
    base.file("zero", "");
    base.file("big", super::ops::gen_bytes(7, 300 * 1024));
    {
        let p = base.path("sparse");
        let f = std::fs::File::create(&p).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&super::ops::gen_bytes(8, 65536), 0).unwrap();
        f.write_all_at(&super::ops::gen_bytes(9, 4096), 1 << 20)
            .unwrap();
    }
    base.file("suid", "#!/bin/sh\necho suid\n").mode(0o4755);
    base.file("ro", "read-only\n").mode(0o444);
    base.file("owned", "owned by 1000\n")
        .owner(1000, 1000)
        .mode(0o600);
    base.file("xa", "xattrs\n")
        .xattr("user.a", b"1")
        .xattr("user.b", b"two");
    base.symlink("s1", "f1");
    base.symlink("dang", "nothere");
    base.fifo("p");
    base.file("a/f2", "base a/f2\n");
    base.file("a/f3", "base a/f3\n");
    base.file("a/sub/f4", "base a/sub/f4\n");
    base.file("a/sub/deep/f5", "base a/sub/deep/f5\n");
    base.file("b/f6", "base b/f6\n");
    base.file("b/f7", "base b/f7\n");
    base.dir("e");
    base.file("g/f8", "base g/f8\n").owner(1000, 1000);
    base.dir("g").mode(0o700).owner(1000, 1000);
    top.file("f1", "top f1\n");
    top.file("a/g", "top a/g\n");
    top.file("b/n1", "top b/n1\n");
    top.file("c/h", "top c/h\n");
    top.file("x y", "space\n");
    let (wh, op) = match markers {
        LowerMarkers::Kernel => (Whiteout::CharDev, Opaque::Trusted),
        LowerMarkers::Oci => (Whiteout::Oci, Opaque::Oci),
        LowerMarkers::UserXattr => (Whiteout::XattrUser, Opaque::UserOverlay),
    };
    top.whiteout("a/f2", wh);
    top.opaque("b", op);
    for l in [&base, &top] {
        fix_times(&l.root);
    }
    vec![top, base]
}

/// One step of a script: an op and, optionally, what the kernel must answer (a scenario's
/// own check: if the kernel answers otherwise, the scenario is wrong, not stratafs).
#[derive(Clone, Debug)]
pub struct Step {
    pub op: Op,
    pub expect: Option<Expect>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Any success.
    Ok,
    Err(i32),
    Out(Out),
}

impl Step {
    pub fn new(op: Op) -> Step {
        Step { op, expect: None }
    }
    pub fn ok(mut self) -> Step {
        self.expect = Some(Expect::Ok);
        self
    }
    pub fn err(mut self, e: i32) -> Step {
        self.expect = Some(Expect::Err(e));
        self
    }
    pub fn out(mut self, o: Out) -> Step {
        self.expect = Some(Expect::Out(o));
        self
    }
    /// Expects the data a read returns.
    pub fn data(self, d: impl AsRef<[u8]>) -> Step {
        self.out(Out::Data(d.as_ref().to_vec()))
    }
}

impl From<Op> for Step {
    fn from(op: Op) -> Step {
        Step::new(op)
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub enum Script {
    Fixed(Vec<Step>),
    Random { seed: u64, ops: usize },
}

/// A differential configuration.
#[derive(Clone)]
pub struct DiffConfig {
    /// Test name (temp dir prefix, messages).
    pub name: String,
    /// Builds the lower layers, top first.
    pub layers: fn(&TestEnv) -> Vec<Layer>,
    /// `--whiteout` for stratafs (None: the default).
    pub whiteout: Option<UpperDialect>,
    pub volatile: bool,
    /// The rootless flavor (false by default): the kernel oracle and every kernel mount of
    /// the run use `userxattr` and get exact copies of the layers (their `user.overlay.*`
    /// markers read natively, no conversion to `trusted.*`, which an unprivileged user
    /// cannot write), and the stratafs upper must mark opaque directories with
    /// `user.overlay.opaque=y` (an unprivileged daemon cannot set `trusted.*`). Used inside a
    /// user namespace by `tests/rootless.rs`.
    pub userxattr: bool,
    /// The kernel oracle runs with every feature stratafs has by default
    /// (`redirect_dir=on,index=on,metacopy=on`): hard links kept across copy-up, metadata-only
    /// copy-up. Scripts for it must not open a metadata-only copy for writing without
    /// writing: the kernel then sets its mtime to the time of the fill, stratafs keeps it.
    pub kernel_all: bool,
    /// The test binary named in the rerun hint of a random failure.
    pub test_binary: &'static str,
}

impl DiffConfig {
    pub fn new(name: &str, layers: fn(&TestEnv) -> Vec<Layer>) -> DiffConfig {
        DiffConfig {
            name: name.to_string(),
            layers,
            whiteout: None,
            volatile: false,
            userxattr: false,
            kernel_all: false,
            test_binary: "write_differential",
        }
    }

    fn dialect(&self) -> UpperDialect {
        self.whiteout.unwrap_or(UpperDialect::Overlay)
    }
}

/// A step as it ran: the kernel's and stratafs' results.
#[derive(Clone, Debug)]
pub struct Ran {
    pub step: Step,
    pub kernel: Res,
    pub stratafs: Option<Res>,
}

#[derive(Clone, Debug)]
pub struct Failure {
    /// What kind of failure (for shrinking: a smaller script must fail the same way).
    pub signature: String,
    pub summary: String,
    pub details: Vec<String>,
    pub log_tail: String,
}

pub struct RunResult {
    pub ran: Vec<Ran>,
    pub failure: Option<Failure>,
}

/// The tree as the generator sees it: (path, kind), the root ("") included.
pub struct Tree {
    pub entries: Vec<(String, Kind)>,
}

impl Tree {
    pub fn scan(root: &Path) -> Tree {
        let mut entries = vec![(String::new(), Kind::Dir)];
        fn walk(root: &Path, rel: &str, depth: usize, out: &mut Vec<(String, Kind)>) {
            let p = if rel.is_empty() {
                root.to_path_buf()
            } else {
                root.join(rel)
            };
            let Ok(list) = read_dir_raw(&p) else { return };
            let mut list: Vec<_> = list
                .into_iter()
                .filter(|d| d.name != b"." && d.name != b"..")
                .collect();
            list.sort_by(|a, b| a.name.cmp(&b.name));
            for d in list {
                let name = String::from_utf8_lossy(&d.name).into_owned();
                let child = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let k = Kind::from_dtype(d.dtype);
                out.push((child.clone(), k));
                if k == Kind::Dir && depth < 5 {
                    walk(root, &child, depth + 1, out);
                }
            }
        }
        walk(root, "", 0, &mut entries);
        Tree { entries }
    }

    fn of(&self, f: impl Fn(&str, Kind) -> bool) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(p, k)| f(p, *k))
            .map(|(p, _)| p.as_str())
            .collect()
    }
}

/// Names new entries get (several are names of the lower layers, so that recreating a name
/// over a whiteout happens often). No `.wh.` names.
pub const GEN_NAMES: &[&str] = &[
    "f1", "a", "b", "c", "e", "g", "n1", "n2", "n3", "d1", "big", "x y", "s1", "zero", "f3", "sub",
];

/// Symlink targets: relative, without "..", so nothing resolves outside the mount.
pub const GEN_LINK_TARGETS: &[&str] = &[
    "f1", "n1", "a", "a/f3", "nothere", "s1", "x y", "sub/f4", "big",
];

const XATTR_NAMES: &[&str] = &["user.a", "user.b", "user.new"];

/// The random op generator.
pub struct Gen {
    rng: Rng,
    open: [bool; SLOTS],
}

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen {
            rng: Rng::new(seed),
            open: [false; SLOTS],
        }
    }

    /// Tells the generator what the kernel answered (tracks which slots hold an fd).
    pub fn observe(&mut self, op: &Op, kernel: &Res) {
        match op {
            Op::Open { slot, .. } => self.open[*slot] = kernel.is_ok(),
            Op::Close { slot } => self.open[*slot] = false,
            _ => {}
        }
    }

    fn existing(&mut self, t: &Tree, f: impl Fn(&str, Kind) -> bool) -> Option<String> {
        let v = t.of(f);
        if v.is_empty() {
            None
        } else {
            Some(self.rng.pick(&v).to_string())
        }
    }

    fn any_existing(&mut self, t: &Tree) -> String {
        self.existing(t, |p, _| !p.is_empty())
            .unwrap_or_else(|| "f1".into())
    }

    fn new_path(&mut self, t: &Tree) -> String {
        let dirs = t.of(|p, k| k == Kind::Dir && p.matches('/').count() < 3);
        let d = self.rng.pick(&dirs).to_string();
        let n = *self.rng.pick(GEN_NAMES);
        if d.is_empty() {
            n.to_string()
        } else {
            format!("{d}/{n}")
        }
    }

    fn path(&mut self, t: &Tree, existing_pct: u64) -> String {
        if self.rng.chance(existing_pct) {
            self.any_existing(t)
        } else {
            self.new_path(t)
        }
    }

    fn file_path(&mut self, t: &Tree, existing_pct: u64) -> String {
        if self.rng.chance(existing_pct) {
            if self.rng.chance(85) {
                self.existing(t, |_, k| k == Kind::File)
                    .unwrap_or_else(|| self.new_path(t))
            } else {
                self.any_existing(t)
            }
        } else {
            self.new_path(t)
        }
    }

    fn data(&mut self) -> Data {
        let len = match self.rng.weighted(&[50, 35, 15]) {
            0 => self.rng.below(600),
            1 => self.rng.range(600, 20_000),
            _ => self.rng.range(20_000, 200_000),
        } as usize;
        Data::Gen {
            seed: self.rng.below(1_000_000),
            len,
        }
    }

    fn offset(&mut self) -> u64 {
        match self.rng.weighted(&[20, 50, 20, 10]) {
            0 => 0,
            1 => self.rng.below(320_000),
            2 => self.rng.below(1_100_000),
            _ => self.rng.range(1_000_000, 3_000_000),
        }
    }

    fn open_slot(&mut self) -> Option<usize> {
        let v: Vec<usize> = (0..SLOTS).filter(|s| self.open[*s]).collect();
        if v.is_empty() {
            None
        } else {
            Some(*self.rng.pick(&v))
        }
    }

    fn time(&mut self) -> TimeArg {
        match self.rng.weighted(&[25, 25, 50]) {
            0 => TimeArg::Now,
            1 => TimeArg::Omit,
            _ => TimeArg::At(
                1_200_000_000 + self.rng.below(1_000_000) as i64,
                self.rng.below(1_000_000_000) as i64,
            ),
        }
    }

    fn open_op(&mut self, t: &Tree) -> Op {
        let slot = self.rng.below(SLOTS as u64) as usize;
        let mut flags = match self.rng.weighted(&[35, 55, 10]) {
            0 => libc::O_WRONLY,
            1 => libc::O_RDWR,
            // Read-only only with O_TRUNC (see the module docs).
            _ => libc::O_RDONLY | libc::O_TRUNC,
        };
        if self.rng.chance(50) {
            flags |= libc::O_CREAT;
            if self.rng.chance(20) {
                flags |= libc::O_EXCL;
            }
        }
        if self.rng.chance(20) {
            flags |= libc::O_TRUNC;
        }
        if self.rng.chance(20) {
            flags |= libc::O_APPEND;
        }
        let mode = *self.rng.pick(&[0o644, 0o600, 0o755, 0o4755, 0o2755, 0o444]);
        let path = self.file_path(t, 65);
        Op::Open {
            slot,
            path,
            flags,
            mode,
        }
    }

    /// The next op, given the kernel mount's current tree.
    pub fn next(&mut self, t: &Tree) -> Op {
        const W: &[u32] = &[
            10, 3, 10, 4, 6, 3, 2, 2, 1, 3, 1, 6, 3, 5, 4, 6, 8, 2, 3, 2, 3, 2, 3, 3, 2, 1, 1, 4,
            1, 4, 1, 1,
        ];
        let which = self.rng.weighted(W);
        let slot_ops = 1..=10;
        let slot = if slot_ops.contains(&which) {
            match self.open_slot() {
                Some(s) => s,
                None => return self.open_op(t),
            }
        } else {
            0
        };
        match which {
            0 => self.open_op(t),
            1 => Op::Close { slot },
            2 => Op::Pwrite {
                slot,
                off: self.offset(),
                data: self.data(),
            },
            3 => Op::Write {
                slot,
                data: self.data(),
            },
            4 => Op::Pread {
                slot,
                off: self.offset(),
                len: self.rng.below(200_000) as usize,
            },
            5 => Op::Ftruncate {
                slot,
                len: self.offset(),
            },
            6 => {
                let mode = match self.rng.weighted(&[40, 30, 30]) {
                    0 => 0,
                    1 => libc::FALLOC_FL_KEEP_SIZE,
                    _ => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                };
                Op::Fallocate {
                    slot,
                    mode,
                    off: self.rng.below(400_000),
                    len: self.rng.range(1, 200_000),
                }
            }
            7 => {
                let dst = self.open_slot().unwrap_or(slot);
                Op::CopyFileRange {
                    src: slot,
                    dst,
                    off_in: self.rng.below(320_000),
                    off_out: self.offset(),
                    len: self.rng.below(100_000) as usize,
                }
            }
            8 => Op::Fsync { slot },
            9 => Op::Fstat { slot },
            10 => Op::Fchmod {
                slot,
                mode: *self.rng.pick(&[0o644, 0o600, 0o4755, 0o2755, 0o755]),
            },
            11 => Op::ReadFile {
                path: self.file_path(t, 92),
            },
            12 => Op::Truncate {
                path: self.file_path(t, 85),
                len: self.offset(),
            },
            13 => {
                let path = if self.rng.chance(80) {
                    self.new_path(t)
                } else {
                    self.any_existing(t)
                };
                Op::Mkdir {
                    path,
                    mode: *self.rng.pick(&[0o755, 0o700, 0o777, 0o1777]),
                }
            }
            14 => {
                let path = if self.rng.chance(85) {
                    self.existing(t, |p, k| k == Kind::Dir && !p.is_empty())
                        .unwrap_or_else(|| self.any_existing(t))
                } else {
                    self.path(t, 50)
                };
                Op::Rmdir { path }
            }
            15 => Op::Unlink {
                path: self.path(t, 90),
            },
            16 => {
                let from = self.path(t, 92);
                let to = self.path(t, 50);
                let flags = match self.rng.weighted(&[70, 15, 15]) {
                    0 => 0,
                    1 => libc::RENAME_NOREPLACE,
                    _ => libc::RENAME_EXCHANGE,
                };
                Op::Rename { from, to, flags }
            }
            17 => Op::Symlink {
                target: self.rng.pick(GEN_LINK_TARGETS).to_string(),
                path: self.path(t, 15),
            },
            18 => {
                let from = if self.rng.chance(90) {
                    self.existing(t, |p, k| k != Kind::Dir && !p.is_empty())
                        .unwrap_or_else(|| self.any_existing(t))
                } else {
                    self.any_existing(t)
                };
                Op::Link {
                    from,
                    to: self.path(t, 20),
                }
            }
            19 => Op::Mknod {
                path: self.path(t, 10),
                mode: if self.rng.chance(70) {
                    libc::S_IFIFO | 0o644
                } else {
                    libc::S_IFSOCK | 0o644
                },
            },
            20 => Op::Chmod {
                path: self.path(t, 92),
                mode: *self.rng.pick(&[
                    0o644, 0o600, 0o755, 0o700, 0o4755, 0o2755, 0o1777, 0o444, 0o000, 0o6755,
                ]),
            },
            21 => {
                let ids = [0u32, 1000, 65534];
                Op::Chown {
                    path: self.path(t, 92),
                    uid: *self.rng.pick(&ids),
                    gid: *self.rng.pick(&ids),
                }
            }
            22 => Op::Utimens {
                path: self.path(t, 92),
                atime: self.time(),
                mtime: self.time(),
                nofollow: self.rng.chance(50),
            },
            23 => {
                let len = if self.rng.chance(90) {
                    self.rng.below(100)
                } else {
                    self.rng.range(1000, 5000)
                } as usize;
                Op::Setxattr {
                    path: self.path(t, 92),
                    name: self.rng.pick(XATTR_NAMES).to_string(),
                    value: Data::Gen {
                        seed: self.rng.below(1000),
                        len,
                    },
                    flags: match self.rng.weighted(&[60, 20, 20]) {
                        0 => 0,
                        1 => libc::XATTR_CREATE,
                        _ => libc::XATTR_REPLACE,
                    },
                }
            }
            24 => Op::Removexattr {
                path: self.path(t, 92),
                name: self.rng.pick(XATTR_NAMES).to_string(),
            },
            25 => Op::Getxattr {
                path: self.path(t, 92),
                name: self.rng.pick(XATTR_NAMES).to_string(),
            },
            26 => Op::Listxattr {
                path: self.path(t, 92),
            },
            27 => Op::Lstat {
                path: self.path(t, 90),
            },
            28 => Op::Stat {
                path: self.path(t, 90),
            },
            29 => {
                let path = if self.rng.chance(85) {
                    self.existing(t, |_, k| k == Kind::Dir).unwrap_or_default()
                } else {
                    self.path(t, 70)
                };
                Op::Readdir { path }
            }
            30 => Op::Readlink {
                path: self.path(t, 90),
            },
            _ => Op::FsyncPath {
                path: self.path(t, 90),
            },
        }
    }
}

fn kernel_matches(expect: &Expect, r: &Res) -> bool {
    match (expect, r) {
        (Expect::Ok, Ok(_)) => true,
        (Expect::Err(e), Err(x)) => e == x,
        (Expect::Out(o), Ok(x)) => o == x,
        _ => false,
    }
}

fn show_expect(e: &Expect) -> String {
    match e {
        Expect::Ok => "success".into(),
        Expect::Err(x) => errno_name(*x),
        Expect::Out(o) => format!("Ok({o:?})"),
    }
}

/// Runs a script once. Panics only on harness/scenario bugs (a kernel answer that
/// contradicts the scenario's expectation, a kernel mount that fails).
pub fn run(cfg: &DiffConfig, script: &Script) -> RunResult {
    let env = TestEnv::new(&cfg.name);
    let layers = (cfg.layers)(&env);
    let refs: Vec<&Layer> = layers.iter().collect();
    let stack = env.stack(&refs);
    let kcopies = if cfg.userxattr {
        stack.exact_copies()
    } else {
        stack.kernel_copies()
    };
    let kstack = env.stack_paths(kcopies.clone());
    let lower_only = |lowers: &[PathBuf], mnt: &Path| {
        if cfg.userxattr {
            KernelOverlay::lower_only_userxattr(lowers, mnt)
        } else {
            KernelOverlay::lower_only(lowers, mnt)
        }
    };
    let lower_view = {
        let m =
            lower_only(&kcopies, &env.fresh_dir("mnt/lowerview")).unwrap_or_else(|e| panic!("{e}"));
        Snapshot::take(m.path())
    };
    let (ku, kw) = upper_work(&env.fresh_dir("kernel-rw"));
    let (su, sw) = upper_work(&env.fresh_dir("stratafs-rw"));
    for u in [&ku, &su] {
        set_times_nofollow(u, UPPER_ROOT_TIME, 0).unwrap();
    }
    let spec = UpperSpec {
        upper: su.clone(),
        work: sw.clone(),
        whiteout: cfg.whiteout,
        volatile: cfg.volatile,
        // Kernel overlayfs with userxattr can do neither (nofollow, metacopy=off).
        redirect_dir: !cfg.userxattr,
        metacopy: !cfg.userxattr,
    };
    // Everything set by the clock from here on is "fresh".
    let t0 = now_secs();
    let mut ran: Vec<Ran> = Vec::new();
    let mut failure: Option<Failure> = None;
    let kmnt = if cfg.userxattr {
        KernelOverlay::writable_userxattr(&kcopies, &ku, &kw, &env.fresh_dir("mnt/k"))
    } else if cfg.kernel_all {
        KernelOverlay::writable_all(&kcopies, &ku, &kw, &env.fresh_dir("mnt/k"))
    } else {
        KernelOverlay::writable(&kcopies, &ku, &kw, &env.fresh_dir("mnt/k"))
    }
    .unwrap_or_else(|e| panic!("kernel oracle: {e}"));
    let smnt = match stack.try_stratafs_rw(&spec, MountMode::Foreground) {
        Ok(m) => m,
        Err(e) => {
            return RunResult {
                ran,
                failure: Some(Failure {
                    signature: "mount".into(),
                    summary: "stratafs mount with an upper layer failed".into(),
                    details: vec![e],
                    log_tail: String::new(),
                }),
            };
        }
    };
    let watchdog = Watchdog::new(smnt.daemon_pids().to_vec(), Duration::from_secs(60));
    let mut kctx = Ctx::new(kmnt.path(), t0);
    let mut sctx = Ctx::new(smnt.path(), t0);
    let (mut gen_, fixed, total) = match script {
        Script::Fixed(steps) => (None, steps.clone(), steps.len()),
        Script::Random { seed, ops } => (Some(Gen::new(*seed)), Vec::new(), *ops),
    };
    let mut fixed_steps = fixed.into_iter();
    for i in 0..total {
        let step = match &mut gen_ {
            Some(g) => Step::new(g.next(&Tree::scan(kmnt.path()))),
            None => fixed_steps.next().expect("fixed script step"),
        };
        let kres = kctx.exec(&step.op);
        if let Some(g) = &mut gen_ {
            g.observe(&step.op, &kres);
        }
        if let Some(exp) = &step.expect
            && !kernel_matches(exp, &kres)
        {
            panic!(
                "scenario bug in {}: step #{i} {} should give {} but the kernel gave {}",
                cfg.name,
                step.op,
                show_expect(exp),
                show_result(&kres)
            );
        }
        watchdog.arm(format!("#{i} {}", step.op));
        let sres = sctx.exec(&step.op);
        watchdog.disarm();
        let same = kres == sres;
        ran.push(Ran {
            step: step.clone(),
            kernel: kres.clone(),
            stratafs: Some(sres.clone()),
        });
        if !same {
            let mut details = vec![format!(
                "step #{i}: {}\n    kernel:   {}\n    stratafs: {}",
                step.op,
                show_result(&kres),
                show_result(&sres)
            )];
            if let Some(w) = watchdog.fired() {
                details.push(w);
            }
            failure = Some(Failure {
                signature: format!("step:{}", step.op.name()),
                summary: format!("step #{i} ({}) differs", step.op.name()),
                details,
                log_tail: smnt.log_tail(),
            });
            break;
        }
    }
    kctx.close_all();
    sctx.close_all();
    drop(watchdog);
    let log_tail = smnt.log_tail();
    let mut problems: Vec<String> = Vec::new();
    let mut kview = Snapshot::take(kmnt.path());
    if cfg.userxattr {
        // Kernel quirk in a user namespace: a file hard-linked after its copy-up in the same
        // mount session reports two inode numbers (the copied-up name its lower origin's, the
        // new link the upper inode's) although nlink is 2. Take the inode identity of such
        // entries from the kernel's upper directory, as the kernel itself reports after a
        // remount.
        super::unpriv::inode_numbers_from_upper(&mut kview, &ku);
    }
    if failure.is_none() {
        let mut sview = Snapshot::take(smnt.path());
        problems.extend(
            mount_invariants(&sview)
                .into_iter()
                .map(|p| format!("invariant: {p}")),
        );
        normalize_times(&mut kview, t0);
        normalize_times(&mut sview, t0);
        problems.extend(snapshot_diff(
            &kview,
            &sview,
            Mode::Merged,
            "kernel",
            "stratafs",
        ));
        if !kview.anomalies.is_empty() {
            problems.push(format!(
                "harness: kernel view walk anomalies {:?}",
                kview.anomalies
            ));
        }
    }
    problems.extend(smnt.finish().into_iter().map(|p| format!("unmount: {p}")));
    drop(kmnt);
    if failure.is_none() {
        // The upper directory: format rules, then its meaning for the kernel.
        let sraw = Snapshot::take(&su);
        problems.extend(
            upper_format_problems_opaque(
                &sraw,
                cfg.dialect(),
                &lower_view,
                if cfg.userxattr {
                    "user.overlay.opaque=y"
                } else {
                    "trusted.overlay.opaque=y"
                },
            )
            .into_iter()
            .map(|p| format!("upper format: {p}")),
        );
        let s_top = match cfg.dialect() {
            UpperDialect::Overlay => su.clone(),
            UpperDialect::Oci => {
                let dst = env.fresh_dir("converted-upper").join("tree");
                convert_for_kernel(&su, &dst);
                dst
            }
        };
        let view_of = |top: &Path, label: &str| -> Snapshot {
            let mut lowers = vec![top.to_path_buf()];
            lowers.extend(kcopies.iter().cloned());
            let m = lower_only(&lowers, &env.fresh_dir(&format!("mnt/{label}")))
                .unwrap_or_else(|e| panic!("kernel mount of an upper as a lower: {e}"));
            let mut s = Snapshot::take(m.path());
            strip_hidden_xattrs(&mut s);
            normalize_times(&mut s, t0);
            s
        };
        // With index=on an upper needs its index to mean what the mount showed (a hard-linked
        // name not yet in upper is found through it), for the kernel as for stratafs, so read
        // alone it means less; the remount below checks the stratafs upper with its index.
        let (kmean, smean) = if cfg.kernel_all {
            (Snapshot::default(), Snapshot::default())
        } else {
            (view_of(&ku, "kmean"), view_of(&s_top, "smean"))
        };
        problems.extend(
            snapshot_diff(
                &kmean,
                &smean,
                Mode::Merged,
                "kernel upper",
                "stratafs upper",
            )
            .into_iter()
            .map(|p| format!("upper meaning (kernel read-only mount over the lowers): {p}")),
        );
        // Persistence: stratafs remounted over the same upper/work.
        match stack.try_stratafs_rw(&spec, MountMode::Foreground) {
            Ok(m) => {
                let mut again = Snapshot::take(m.path());
                normalize_times(&mut again, t0);
                problems.extend(
                    snapshot_diff(&kview, &again, Mode::Merged, "kernel", "stratafs remounted")
                        .into_iter()
                        .map(|p| format!("after remount: {p}")),
                );
                problems.extend(
                    m.finish()
                        .into_iter()
                        .map(|p| format!("unmount after remount: {p}")),
                );
            }
            Err(e) => problems.push(format!("remount over the same upper/work failed: {e}")),
        }
        for l in workdir_leftovers(&sw) {
            problems.push(format!("workdir not clean after unmount: {l}"));
        }
    }
    problems.extend(stack.check_layers());
    problems.extend(
        kstack
            .check_layers()
            .into_iter()
            .map(|p| format!("harness: kernel copy modified: {p}")),
    );
    if failure.is_none() && !problems.is_empty() {
        failure = Some(Failure {
            signature: "final".into(),
            summary: format!("{} difference(s) after the steps", problems.len()),
            details: problems,
            log_tail,
        });
    } else if let Some(f) = &mut failure {
        f.details.extend(problems);
    }
    RunResult { ran, failure }
}

fn describe(cfg: &DiffConfig, ran: &[Ran], f: &Failure, header: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "differential `{}` (upper dialect {:?}{}): {}\n{header}",
        cfg.name,
        cfg.dialect(),
        if cfg.volatile { ", volatile" } else { "" },
        f.summary
    );
    let _ = writeln!(s, "{}", format_problems("problems", &f.details));
    let _ = writeln!(s, "steps ({}):", ran.len());
    let skip = ran.len().saturating_sub(60);
    if skip > 0 {
        let _ = writeln!(s, "  ... {skip} earlier steps not shown");
    }
    for (i, r) in ran.iter().enumerate().skip(skip) {
        let sres = r.stratafs.as_ref().map(show_result).unwrap_or_default();
        let kres = show_result(&r.kernel);
        if sres == kres {
            let _ = writeln!(s, "  #{i} {} -> {kres}", r.step.op);
        } else {
            let _ = writeln!(s, "  #{i} {} -> kernel {kres} | stratafs {sres}", r.step.op);
        }
    }
    if !f.log_tail.is_empty() {
        let _ = writeln!(s, "stratafs log (tail):\n{}", f.log_tail);
    }
    s
}

/// Runs a fixed script; panics with a full report on any difference. When
/// `STRATAFS_DIFF_SHRINK=N` is set explicitly, the failing script is also minimized (as for
/// random scripts; not by default, to keep failing CI runs short).
pub fn check_script(cfg: &DiffConfig, steps: Vec<Step>) {
    let r = run(cfg, &Script::Fixed(steps.clone()));
    let Some(f) = &r.failure else { return };
    let mut msg = describe(cfg, &r.ran, f, "");
    let budget = env_usize("STRATAFS_DIFF_SHRINK", 0);
    if budget > 0 {
        let secs = env_usize("STRATAFS_DIFF_SHRINK_SECS", 60) as u64;
        let deadline = Instant::now() + Duration::from_secs(secs);
        if let Some((small, ran, f2)) = shrink(cfg, steps, &f.signature, budget, deadline) {
            msg.push_str(&format!(
                "\n==== minimized to {} step(s) ====\n{}",
                small.len(),
                describe(cfg, &ran, &f2, "")
            ));
        }
    }
    panic!("{msg}");
}

/// Replays `steps` (expectations dropped); Some(failure) when it fails the same way.
fn replay_fails(cfg: &DiffConfig, steps: &[Step], signature: &str) -> Option<(Vec<Ran>, Failure)> {
    let steps: Vec<Step> = steps.iter().map(|s| Step::new(s.op.clone())).collect();
    let r = run(cfg, &Script::Fixed(steps));
    match r.failure {
        Some(f) if f.signature == signature => Some((r.ran, f)),
        _ => None,
    }
}

/// Delta-debugging style minimization of a failing script, within a budget of replays and
/// of wall-clock time.
fn shrink(
    cfg: &DiffConfig,
    steps: Vec<Step>,
    signature: &str,
    budget: usize,
    deadline: Instant,
) -> Option<(Vec<Step>, Vec<Ran>, Failure)> {
    let mut best: Option<(Vec<Step>, Vec<Ran>, Failure)> = None;
    let mut cur = steps;
    let mut attempts = 0;
    let mut chunk = cur.len().div_ceil(2).max(1);
    loop {
        let mut i = 0;
        let mut progressed = false;
        while i < cur.len() && attempts < budget && Instant::now() < deadline {
            let mut cand = cur.clone();
            let end = (i + chunk).min(cand.len());
            cand.drain(i..end);
            attempts += 1;
            if let Some((ran, f)) = replay_fails(cfg, &cand, signature) {
                // Keep only what ran up to the failure.
                let cut = ran.len();
                cur = cand;
                cur.truncate(cut.max(1));
                best = Some((cur.clone(), ran, f));
                progressed = true;
            } else {
                i += chunk;
            }
        }
        if attempts >= budget || Instant::now() >= deadline {
            break;
        }
        if !progressed {
            if chunk == 1 {
                break;
            }
            chunk = chunk.div_ceil(2);
        }
    }
    best
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// The seeds a random differential runs: `STRATAFS_DIFF_SEED=S` (one seed), else
/// `STRATAFS_DIFF_SEEDS=N` seeds starting at `first` (default `default_n`).
pub fn seeds(first: u64, default_n: usize) -> Vec<u64> {
    if let Ok(v) = std::env::var("STRATAFS_DIFF_SEED") {
        return vec![
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("STRATAFS_DIFF_SEED={v:?} is not a number")),
        ];
    }
    let n = env_usize("STRATAFS_DIFF_SEEDS", default_n);
    (0..n as u64).map(|i| first + i).collect()
}

/// Ops per random seed: `STRATAFS_DIFF_OPS` (default `default_ops`).
pub fn ops_per_seed(default_ops: usize) -> usize {
    env_usize("STRATAFS_DIFF_OPS", default_ops)
}

/// Runs random scripts for every seed; on the first failure, shrinks it (budget:
/// `STRATAFS_DIFF_SHRINK` replays, default 40, 0 to skip, and `STRATAFS_DIFF_SHRINK_SECS`
/// seconds, default 60) and panics with both the original and the minimized reports.
pub fn check_random(cfg: &DiffConfig, seeds: &[u64], ops: usize, test: &str) {
    for &seed in seeds {
        let r = run(cfg, &Script::Random { seed, ops });
        let Some(f) = r.failure else { continue };
        let rerun = format!(
            "seed {seed}; rerun: STRATAFS_DIFF_SEED={seed} STRATAFS_DIFF_OPS={ops} \
             cargo nextest run --test {} {test}",
            cfg.test_binary
        );
        let mut msg = describe(cfg, &r.ran, &f, &rerun);
        let budget = env_usize("STRATAFS_DIFF_SHRINK", 40);
        if budget > 0 {
            let steps: Vec<Step> = r.ran.iter().map(|x| x.step.clone()).collect();
            let secs = env_usize("STRATAFS_DIFF_SHRINK_SECS", 60) as u64;
            let deadline = Instant::now() + Duration::from_secs(secs);
            if let Some((small, ran, f2)) = shrink(cfg, steps, &f.signature, budget, deadline) {
                msg.push_str(&format!(
                    "\n==== minimized to {} step(s) (replayed without the generator) ====\n{}",
                    small.len(),
                    describe(cfg, &ran, &f2, &rerun)
                ));
            } else {
                msg.push_str("\n(shrinking found no smaller failing script)\n");
            }
        }
        panic!("{msg}");
    }
}
