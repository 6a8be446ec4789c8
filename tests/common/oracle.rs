//! A layer stack under test: integrity of the lower layers, stratafs and kernel mounts of it,
//! and the full comparison against the kernel.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::convert::{convert_for_kernel, needs_conversion};
use super::env::TestEnv;
use super::layer::Layer;
use super::mounts::{KernelOverlay, MountMode, StratafsMount, UpperSpec};
use super::snapshot::{
    Mode, Snapshot, format_problems, is_hidden_xattr, join_rel, mount_invariants, probe, rel_path,
    show_path, snapshot_diff,
};
use super::sys::{errno_name, lgetxattr};

/// A stack of lower layers (top first). Creating it snapshots every layer (raw: markers, all
/// xattrs, ctime, inode numbers; not atime); dropping it re-snapshots them and panics unless
/// they are bit-identical. Mount guards borrow the stack, so they are always dropped (and
/// unmounted) before that check runs.
pub struct Stack<'e> {
    env: &'e TestEnv,
    pub lowers: Vec<PathBuf>,
    before: Vec<Snapshot>,
    kernel_lowers: RefCell<Option<Vec<PathBuf>>>,
    /// Set once [`Stack::check_layers`] has reported; Drop then does not check again.
    checked: std::cell::Cell<bool>,
}

impl TestEnv {
    pub fn stack(&self, layers: &[&Layer]) -> Stack<'_> {
        self.stack_paths(layers.iter().map(|l| l.root.clone()).collect())
    }

    pub fn stack_paths(&self, lowers: Vec<PathBuf>) -> Stack<'_> {
        let before = lowers.iter().map(|l| Snapshot::take(l)).collect();
        Stack {
            env: self,
            lowers,
            before,
            kernel_lowers: RefCell::new(None),
            checked: std::cell::Cell::new(false),
        }
    }
}

impl<'e> Stack<'e> {
    /// The raw snapshots taken of the layers (top first) when the stack was created.
    pub fn layer_snapshots(&self) -> &[Snapshot] {
        &self.before
    }

    pub fn env(&self) -> &'e TestEnv {
        self.env
    }

    /// Mounts stratafs (foreground mode, owned by the guard); panics if that fails.
    pub fn stratafs(&self) -> StratafsMount<'_> {
        self.try_stratafs(MountMode::Foreground)
            .unwrap_or_else(|e| panic!("stratafs mount failed: {e}"))
    }

    pub fn try_stratafs(&self, mode: MountMode) -> Result<StratafsMount<'_>, String> {
        let mnt = self.env.fresh_dir("mnt/s");
        let log = self.env.root.join(format!(
            "{}.log",
            mnt.file_name().unwrap().to_string_lossy()
        ));
        StratafsMount::start(&self.lowers, &mnt, &log, mode)
    }

    /// Mounts stratafs with a writable upper layer (foreground mode, owned by the guard).
    pub fn stratafs_rw(&self, upper: &UpperSpec) -> StratafsMount<'_> {
        self.try_stratafs_rw(upper, MountMode::Foreground)
            .unwrap_or_else(|e| panic!("stratafs mount (writable) failed: {e}"))
    }

    pub fn try_stratafs_rw(
        &self,
        upper: &UpperSpec,
        mode: MountMode,
    ) -> Result<StratafsMount<'_>, String> {
        let mnt = self.env.fresh_dir("mnt/s");
        let log = self.env.root.join(format!(
            "{}.log",
            mnt.file_name().unwrap().to_string_lossy()
        ));
        StratafsMount::start_with(&self.lowers, Some(upper), &mnt, &log, mode)
    }

    /// Runs `act` on a writable kernel overlay of the stack, then on a writable stratafs mount
    /// (each with a fresh upper), and returns what it returned on each: (kernel, stratafs).
    pub fn on_kernel_then_stratafs<T>(&self, act: impl Fn(&Path) -> T) -> (T, T) {
        let kernel = {
            let (ku, kw) = super::rw::upper_work(&self.env.fresh_dir("krw"));
            let k = KernelOverlay::writable(
                &self.kernel_lowers(),
                &ku,
                &kw,
                &self.env.fresh_dir("mnt/k"),
            )
            .unwrap_or_else(|e| panic!("kernel overlay (writable) failed: {e}"));
            act(k.path())
        };
        let (upper, work) = super::rw::upper_work(&self.env.fresh_dir("rw"));
        let m = self.stratafs_rw(&UpperSpec::new(&upper, &work));
        let ours = act(m.path());
        m.unmount();
        (kernel, ours)
    }

    /// Fresh copies of every layer for the kernel, never the originals (identical copies where
    /// the layer uses only markers the kernel reads, converted copies otherwise).
    pub fn kernel_copies(&self) -> Vec<PathBuf> {
        self.lowers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let dst = self.env.fresh_dir(&format!("kcopy/{i}-")).join("tree");
                convert_for_kernel(l, &dst);
                dst
            })
            .collect()
    }

    /// Panics unless every lower layer is as snapshotted ([`Stack::check_layers`] is empty).
    pub fn assert_layers_unchanged(&self) {
        let problems = self.check_layers();
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    /// Re-snapshots the layers now and returns the differences from when the stack was made
    /// (empty: bit-identical). When it reports problems (the caller's to report), Drop does
    /// not check again; otherwise Drop still checks at the end.
    pub fn check_layers(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (before, layer) in self.before.iter().zip(&self.lowers) {
            let after = Snapshot::take(layer);
            let d = snapshot_diff(before, &after, Mode::Raw, "before", "after");
            if !d.is_empty() {
                problems.push(format_problems(
                    &format!("lower layer {} was modified", layer.display()),
                    &d,
                ));
            }
        }
        if !problems.is_empty() {
            self.checked.set(true);
        }
        problems
    }

    /// The layers the kernel mounts: converted copies where a layer uses markers the kernel
    /// does not read (made once per stack).
    pub fn kernel_lowers(&self) -> Vec<PathBuf> {
        let mut cached = self.kernel_lowers.borrow_mut();
        if let Some(v) = &*cached {
            return v.clone();
        }
        let v: Vec<PathBuf> = self
            .lowers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                if needs_conversion(l) {
                    let dst = self.env.fresh_dir(&format!("converted/{i}-")).join("tree");
                    convert_for_kernel(l, &dst);
                    dst
                } else {
                    l.clone()
                }
            })
            .collect();
        *cached = Some(v.clone());
        v
    }

    /// Mounts the kernel oracle (lowerdir-only, read-only).
    pub fn kernel(&self) -> KernelOverlay<'_> {
        let lowers = self.kernel_lowers();
        let mnt = self.env.fresh_dir("mnt/k");
        KernelOverlay::lower_only(&lowers, &mnt).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A snapshot of the kernel oracle's view (mounted for the snapshot, then unmounted).
    pub fn kernel_view(&self) -> Snapshot {
        let k = self.kernel();
        Snapshot::take(k.path())
    }

    /// Every relative path that occurs in some layer, plus the names OCI whiteouts refer to.
    pub fn layer_paths(&self) -> BTreeSet<Vec<u8>> {
        let mut out = BTreeSet::new();
        for s in &self.before {
            for p in s.entries.keys() {
                if p.is_empty() {
                    continue;
                }
                out.insert(p.clone());
                let (parent, name) = match p.iter().rposition(|b| *b == b'/') {
                    Some(i) => (&p[..i], &p[i + 1..]),
                    None => (&p[..0], &p[..]),
                };
                if let Some(t) = name.strip_prefix(b".wh.")
                    && t != b".wh..opq"
                {
                    out.insert(join_rel(parent, t));
                }
            }
        }
        out
    }

    /// Mounts stratafs and the kernel, and checks, collecting every problem:
    /// the two snapshots are equal ([`Mode::Merged`]); the stratafs snapshot satisfies
    /// [`mount_invariants`]; lstat of every path occurring in any layer gives the same result
    /// (a name with a `.wh.` component gives EINVAL through stratafs when its parent is a
    /// directory of the mount); getxattr of every private xattr any layer carries fails through
    /// stratafs. Returns (kernel snapshot, stratafs snapshot).
    pub fn assert_matches_kernel(&self) -> (Snapshot, Snapshot) {
        let k = self.kernel();
        let s = self.stratafs();
        let mut ks = Snapshot::take(k.path());
        let ss = Snapshot::take(s.path());
        // Kernel quirk (seen on 6.18): a whiteout (char 0/0 or xattr whiteout) in a lower
        // directory that is not merged with another layer's (and an xattr whiteout in the lowest
        // layer) is listed by readdir but its lookup fails with ENOENT. Drop exactly those from
        // the kernel side; stratafs must hide them from readdir and from lookup alike.
        let quirks = self.whiteout_paths();
        ks.anomalies.retain(|a| {
            !quirks.iter().any(|p| {
                *a == format!(
                    "{}: lstat: No such file or directory (os error 2)",
                    show_path(p)
                )
            })
        });
        let mut problems = snapshot_diff(&ks, &ss, Mode::Merged, "kernel", "stratafs");
        problems.extend(
            mount_invariants(&ss)
                .into_iter()
                .map(|p| format!("invariant: {p}")),
        );
        problems.extend(self.probe_problems(k.path(), s.path()));
        problems.extend(self.hidden_xattr_problems(s.path()));
        if !ks.anomalies.is_empty() {
            problems.push(format!(
                "test bug? kernel mount walk anomalies: {:?}",
                ks.anomalies
            ));
        }
        drop(s);
        drop(k);
        if !problems.is_empty() {
            panic!(
                "{}",
                format_problems("stratafs differs from kernel overlayfs", &problems)
            );
        }
        (ks, ss)
    }

    /// Paths that some layer whites out, in any dialect.
    pub fn whiteout_paths(&self) -> BTreeSet<Vec<u8>> {
        use super::snapshot::Kind;
        let mut out = BTreeSet::new();
        for s in &self.before {
            for (p, e) in &s.entries {
                let xattr_wh = e.kind == Kind::File
                    && e.size == 0
                    && (e.xattrs.contains_key(&b"trusted.overlay.whiteout"[..])
                        || e.xattrs.contains_key(&b"user.overlay.whiteout"[..]));
                if xattr_wh || (e.kind == Kind::CharDev && e.rdev == 0) {
                    out.insert(p.clone());
                }
                let (parent, name) = match p.iter().rposition(|b| *b == b'/') {
                    Some(i) => (&p[..i], &p[i + 1..]),
                    None => (&p[..0], &p[..]),
                };
                if let Some(t) = name.strip_prefix(b".wh.")
                    && !t.is_empty()
                    && t != b".wh..opq"
                {
                    out.insert(join_rel(parent, t));
                }
            }
        }
        out
    }

    /// lstat probes of every layer path on both mounts.
    pub fn probe_problems(&self, kmnt: &Path, smnt: &Path) -> Vec<String> {
        let mut problems = Vec::new();
        for p in self.layer_paths() {
            let comps: Vec<&[u8]> = p.split(|b| *b == b'/').collect();
            let s_res = probe(&rel_path(smnt, &p));
            if let Some(i) = comps.iter().position(|c| c.starts_with(b".wh.")) {
                let prefix = comps[..i].join(&b'/');
                let kprefix = rel_path(kmnt, &prefix);
                let inside_dir = fs::canonicalize(&kprefix)
                    .map(|c| c.starts_with(kmnt) && c.is_dir())
                    .unwrap_or(false);
                if inside_dir {
                    if s_res != Err(errno_name(libc::EINVAL)) {
                        problems.push(format!(
                            "lstat {}: expected EINVAL for a .wh. name, stratafs gave {s_res:?}",
                            show_path(&p)
                        ));
                    }
                    continue;
                }
            }
            let k_res = probe(&rel_path(kmnt, &p));
            if k_res != s_res {
                problems.push(format!(
                    "lstat {}: kernel {k_res:?} vs stratafs {s_res:?}",
                    show_path(&p)
                ));
            }
        }
        problems
    }

    /// getxattr of private/marker xattrs present in the layers must never succeed through the
    /// stratafs mount.
    pub fn hidden_xattr_problems(&self, smnt: &Path) -> Vec<String> {
        let mut problems = Vec::new();
        let mut names: BTreeSet<Vec<u8>> = [
            &b"trusted.overlay.opaque"[..],
            b"trusted.overlay.whiteout",
            b"user.overlay.opaque",
            b"user.overlay.whiteout",
            b"user.fuseoverlayfs.opaque",
        ]
        .iter()
        .map(|n| n.to_vec())
        .collect();
        for s in &self.before {
            for e in s.entries.values() {
                names.extend(e.xattrs.keys().filter(|k| is_hidden_xattr(k)).cloned());
            }
        }
        let mut paths: BTreeSet<Vec<u8>> = BTreeSet::new();
        for s in &self.before {
            for (p, e) in &s.entries {
                if e.xattrs.keys().any(|k| is_hidden_xattr(k)) {
                    paths.insert(p.clone());
                }
            }
        }
        for p in paths {
            let full = rel_path(smnt, &p);
            if fs::symlink_metadata(&full).is_err() {
                continue;
            }
            for n in &names {
                if let Ok(v) = lgetxattr(&full, n) {
                    problems.push(format!(
                        "getxattr({}, {}) succeeded through stratafs with {:?}",
                        show_path(&p),
                        n.escape_ascii(),
                        v.escape_ascii().to_string()
                    ));
                }
            }
        }
        problems
    }
}

impl Drop for Stack<'_> {
    fn drop(&mut self) {
        if self.checked.get() {
            return;
        }
        let mut problems = Vec::new();
        for (before, layer) in self.before.iter().zip(&self.lowers) {
            let after = Snapshot::take(layer);
            let d = snapshot_diff(before, &after, Mode::Raw, "before", "after");
            if !d.is_empty() {
                problems.push(format_problems(
                    &format!("lower layer {} was modified", layer.display()),
                    &d,
                ));
            }
        }
        if !problems.is_empty() {
            if std::thread::panicking() {
                eprintln!("{}", problems.join("\n"));
            } else {
                panic!("{}", problems.join("\n"));
            }
        }
    }
}
