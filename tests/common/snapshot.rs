//! Tree snapshots (lstat semantics, never following symlinks) and their comparison.
//!
//! Two comparison modes:
//! - [`Mode::Raw`]: for lower-layer integrity. Every field except atime: type, mode, uid, gid,
//!   size, content hash, symlink target, rdev, all xattrs (trusted.* included), mtime, ctime,
//!   nlink (directories too), st_ino, st_dev, and readdir's d_type/d_ino.
//! - [`Mode::Merged`]: kernel overlay mount vs stratafs mount. Type, mode, uid, gid, size,
//!   content hash, symlink target, rdev, xattrs, mtime, nlink of non-directories, d_type, and
//!   hard-link groups (as sets of paths, since inode numbers legitimately differ).
//!   Directory nlink is left out: the kernel reports 1 for a directory merged from more than
//!   one layer, which is an overlayfs artefact, not a contract. st_ino/st_dev values and
//!   ctime are left out (checked by dedicated invariants instead). On the kernel side,
//!   xattrs in the namespaces stratafs must hide (`trusted.overlay.*`, `user.overlay.*`,
//!   `user.fuseoverlayfs.*`, `user.stratafs.*`) are removed before comparing (the kernel shows
//!   `user.*` ones when not in userxattr mode); the stratafs side is compared unfiltered, so a
//!   leaked marker xattr shows up as a difference.

use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::sys::{RawDirent, errno_name, lgetxattr, llistxattr, major_minor, read_dir_raw};

/// xattr namespaces that must never show through a stratafs mount.
pub const HIDDEN_XATTR_PREFIXES: &[&[u8]] = &[
    b"trusted.overlay.",
    b"user.overlay.",
    b"user.fuseoverlayfs.",
    b"user.stratafs.",
    b"trusted.stratafs.",
];

pub fn is_hidden_xattr(name: &[u8]) -> bool {
    HIDDEN_XATTR_PREFIXES.iter().any(|p| name.starts_with(p))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
    Unknown,
}

impl Kind {
    pub fn from_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::File,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => Kind::Unknown,
        }
    }

    pub fn from_dtype(t: u8) -> Kind {
        match t {
            libc::DT_DIR => Kind::Dir,
            libc::DT_REG => Kind::File,
            libc::DT_LNK => Kind::Symlink,
            libc::DT_FIFO => Kind::Fifo,
            libc::DT_SOCK => Kind::Socket,
            libc::DT_CHR => Kind::CharDev,
            libc::DT_BLK => Kind::BlockDev,
            _ => Kind::Unknown,
        }
    }
}

/// Everything recorded about one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub sha256: Option<String>,
    pub target: Option<Vec<u8>>,
    pub rdev: u64,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub nlink: u64,
    pub ino: u64,
    pub dev: u64,
    /// d_type from the parent's readdir (None for the root).
    pub d_type: Option<u8>,
    /// d_ino from the parent's readdir (None for the root).
    pub d_ino: Option<u64>,
}

/// A walked tree: relative path bytes (root = empty) → entry.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub root: PathBuf,
    pub entries: BTreeMap<Vec<u8>, Entry>,
    /// Errors met while walking (failed lstat/readdir/read, duplicate names, ...).
    pub anomalies: Vec<String>,
}

/// Readable form of a relative path.
pub fn show_path(p: &[u8]) -> String {
    if p.is_empty() {
        ".".to_string()
    } else {
        p.escape_ascii().to_string()
    }
}

pub fn show_bytes(b: &[u8]) -> String {
    format!("\"{}\"", b.escape_ascii())
}

pub fn join_rel(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        let mut v = parent.to_vec();
        v.push(b'/');
        v.extend_from_slice(name);
        v
    }
}

pub fn rel_path(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

/// SHA-256 of a regular file's content (opened with O_NOFOLLOW).
pub fn hash_file(p: &Path) -> std::io::Result<String> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// lstat-based record of one path (no readdir information).
pub fn record(p: &Path) -> Result<Entry, String> {
    let md = fs::symlink_metadata(p).map_err(|e| format!("lstat: {e}"))?;
    let kind = Kind::from_mode(md.mode());
    let sha256 = if kind == Kind::File {
        Some(hash_file(p).map_err(|e| format!("read: {e}"))?)
    } else {
        None
    };
    let target = if kind == Kind::Symlink {
        Some(
            fs::read_link(p)
                .map_err(|e| format!("readlink: {e}"))?
                .as_os_str()
                .as_bytes()
                .to_vec(),
        )
    } else {
        None
    };
    let mut xattrs = BTreeMap::new();
    for name in llistxattr(p).map_err(|e| format!("listxattr: {e}"))? {
        match lgetxattr(p, &name) {
            Ok(v) => {
                xattrs.insert(name, v);
            }
            Err(e) => return Err(format!("getxattr {}: {e}", show_bytes(&name))),
        }
    }
    Ok(Entry {
        kind,
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        size: md.size(),
        sha256,
        target,
        rdev: if matches!(kind, Kind::CharDev | Kind::BlockDev) {
            md.rdev()
        } else {
            0
        },
        xattrs,
        mtime: (md.mtime(), md.mtime_nsec()),
        ctime: (md.ctime(), md.ctime_nsec()),
        nlink: md.nlink(),
        ino: md.ino(),
        dev: md.dev(),
        d_type: None,
        d_ino: None,
    })
}

impl Snapshot {
    /// Walks `root` (lstat semantics; never follows symlinks).
    pub fn take(root: &Path) -> Snapshot {
        let mut s = Snapshot {
            root: root.to_path_buf(),
            entries: BTreeMap::new(),
            anomalies: Vec::new(),
        };
        s.walk(Vec::new(), None);
        s
    }

    fn walk(&mut self, rel: Vec<u8>, dirent: Option<&RawDirent>) {
        let abs = rel_path(&self.root, &rel);
        let mut entry = match record(&abs) {
            Ok(e) => e,
            Err(e) => {
                self.anomalies.push(format!("{}: {e}", show_path(&rel)));
                return;
            }
        };
        if let Some(d) = dirent {
            entry.d_type = Some(d.dtype);
            entry.d_ino = Some(d.ino);
        }
        let is_dir = entry.kind == Kind::Dir;
        self.entries.insert(rel.clone(), entry);
        if !is_dir {
            return;
        }
        let list = match read_dir_raw(&abs) {
            Ok(l) => l,
            Err(e) => {
                self.anomalies
                    .push(format!("{}: readdir: {e}", show_path(&rel)));
                return;
            }
        };
        let mut seen: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        for d in &list {
            *seen.entry(d.name.clone()).or_default() += 1;
        }
        for dot in [&b"."[..], &b".."[..]] {
            let n = seen.get(dot).copied().unwrap_or(0);
            if n != 1 {
                self.anomalies.push(format!(
                    "{}: readdir returned {} {n} times",
                    show_path(&rel),
                    show_bytes(dot)
                ));
            }
        }
        for (name, n) in &seen {
            if *n > 1 && name != b"." && name != b".." {
                self.anomalies.push(format!(
                    "{}: readdir returned {} {n} times",
                    show_path(&rel),
                    show_bytes(name)
                ));
            }
        }
        let mut children: Vec<&RawDirent> = list
            .iter()
            .filter(|d| d.name != b"." && d.name != b"..")
            .collect();
        children.sort_by(|a, b| a.name.cmp(&b.name));
        children.dedup_by(|a, b| a.name == b.name);
        for d in children {
            self.walk(join_rel(&rel, &d.name), Some(d));
        }
    }

    pub fn get(&self, rel: &str) -> Option<&Entry> {
        self.entries.get(rel.as_bytes())
    }

    /// Hard-link groups: sets of paths (size ≥ 2) of non-directories with nlink > 1 sharing
    /// one (st_dev, st_ino).
    pub fn link_groups(&self) -> BTreeSet<BTreeSet<Vec<u8>>> {
        let mut by_ino: BTreeMap<(u64, u64), BTreeSet<Vec<u8>>> = BTreeMap::new();
        for (p, e) in &self.entries {
            if e.kind != Kind::Dir && e.nlink > 1 {
                by_ino.entry((e.dev, e.ino)).or_default().insert(p.clone());
            }
        }
        by_ino.into_values().filter(|g| g.len() > 1).collect()
    }

    /// A digest of the snapshot in raw mode (for caches).
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (p, e) in &self.entries {
            h.update(format!("{}\0{:?}\n", show_path(p), e).as_bytes());
        }
        for a in &self.anomalies {
            h.update(a.as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Raw,
    Merged,
}

fn show_xattrs(x: &BTreeMap<Vec<u8>, Vec<u8>>) -> String {
    let parts: Vec<String> = x
        .iter()
        .map(|(k, v)| format!("{}={}", k.escape_ascii(), show_bytes(v)))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

fn show_dtype(t: Option<u8>) -> String {
    match t {
        None => "-".into(),
        Some(t) => format!("{:?}({t})", Kind::from_dtype(t)),
    }
}

/// Field-by-field differences between two entries (`a` is the reference side).
pub fn entry_diff(a: &Entry, b: &Entry, mode: Mode) -> Vec<String> {
    let mut d = Vec::new();
    macro_rules! field {
        ($name:expr, $x:expr, $y:expr, $fmt:expr) => {
            if $x != $y {
                d.push(format!("{}: {} vs {}", $name, $fmt(&$x), $fmt(&$y)));
            }
        };
    }
    let dbg = |v: &dyn std::fmt::Debug| format!("{v:?}");
    field!("type", a.kind, b.kind, |v: &Kind| dbg(v));
    field!("mode", a.mode, b.mode, |v: &u32| format!("{v:o}"));
    field!("uid", a.uid, b.uid, |v: &u32| v.to_string());
    field!("gid", a.gid, b.gid, |v: &u32| v.to_string());
    field!("size", a.size, b.size, |v: &u64| v.to_string());
    field!("sha256", a.sha256, b.sha256, |v: &Option<String>| dbg(v));
    field!("symlink target", a.target, b.target, |v: &Option<
        Vec<u8>,
    >| match v {
        Some(t) => show_bytes(t),
        None => "-".into(),
    });
    field!("rdev", a.rdev, b.rdev, |v: &u64| format!(
        "{:?}",
        major_minor(*v)
    ));
    let (ax, bx) = match mode {
        Mode::Raw => (a.xattrs.clone(), b.xattrs.clone()),
        Mode::Merged => (
            a.xattrs
                .iter()
                .filter(|(k, _)| !is_hidden_xattr(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            b.xattrs.clone(),
        ),
    };
    field!("xattrs", ax, bx, show_xattrs);
    field!("mtime", a.mtime, b.mtime, |v: &(i64, i64)| format!(
        "{}.{:09}",
        v.0, v.1
    ));
    let nlink_counts = mode == Mode::Raw || (a.kind != Kind::Dir && b.kind != Kind::Dir);
    if nlink_counts {
        field!("nlink", a.nlink, b.nlink, |v: &u64| v.to_string());
    }
    field!("d_type", a.d_type, b.d_type, |v: &Option<u8>| show_dtype(
        *v
    ));
    if mode == Mode::Raw {
        field!("ctime", a.ctime, b.ctime, |v: &(i64, i64)| format!(
            "{}.{:09}",
            v.0, v.1
        ));
        field!("st_ino", a.ino, b.ino, |v: &u64| v.to_string());
        field!("st_dev", a.dev, b.dev, |v: &u64| v.to_string());
        field!("d_ino", a.d_ino, b.d_ino, |v: &Option<u64>| dbg(v));
    }
    d
}

/// All differences between two snapshots, one string per differing path (plus link groups
/// and walk anomalies).
pub fn snapshot_diff(a: &Snapshot, b: &Snapshot, mode: Mode, la: &str, lb: &str) -> Vec<String> {
    let mut out = Vec::new();
    for an in &a.anomalies {
        if !b.anomalies.contains(an) {
            out.push(format!("walk anomaly only in {la}: {an}"));
        }
    }
    for an in &b.anomalies {
        if !a.anomalies.contains(an) {
            out.push(format!("walk anomaly only in {lb}: {an}"));
        }
    }
    let keys: BTreeSet<&Vec<u8>> = a.entries.keys().chain(b.entries.keys()).collect();
    for k in keys {
        match (a.entries.get(k), b.entries.get(k)) {
            (Some(x), None) => out.push(format!("{}: only in {la} ({:?})", show_path(k), x.kind)),
            (None, Some(y)) => out.push(format!("{}: only in {lb} ({:?})", show_path(k), y.kind)),
            (Some(x), Some(y)) => {
                let d = entry_diff(x, y, mode);
                if !d.is_empty() {
                    out.push(format!("{}: {} [{la} vs {lb}]", show_path(k), d.join("; ")));
                }
            }
            (None, None) => unreachable!(),
        }
    }
    let ga = a.link_groups();
    let gb = b.link_groups();
    let show_group = |g: &BTreeSet<Vec<u8>>| {
        format!(
            "{{{}}}",
            g.iter()
                .map(|p| show_path(p))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    for g in ga.difference(&gb) {
        out.push(format!("hard-link group only in {la}: {}", show_group(g)));
    }
    for g in gb.difference(&ga) {
        out.push(format!("hard-link group only in {lb}: {}", show_group(g)));
    }
    out
}

/// Formats a list of problems (first 20 in full) for a panic message.
pub fn format_problems(title: &str, problems: &[String]) -> String {
    let mut s = format!("{title}: {} difference(s)\n", problems.len());
    for p in problems.iter().take(20) {
        s.push_str("  ");
        s.push_str(p);
        s.push('\n');
    }
    if problems.len() > 20 {
        s.push_str(&format!("  ... and {} more\n", problems.len() - 20));
    }
    s
}

/// Panics with a readable diff unless the snapshots are equal under `mode`.
pub fn assert_snapshots_eq(a: &Snapshot, b: &Snapshot, mode: Mode, la: &str, lb: &str) {
    let d = snapshot_diff(a, b, mode, la, lb);
    if !d.is_empty() {
        panic!(
            "{}",
            format_problems(&format!("snapshots differ ({la} vs {lb}, {mode:?})"), &d)
        );
    }
}

/// `dir` is bit-identical to its snapshot `before` (raw: every field but atime, inode numbers
/// and ctime included); `what` names it in the panic message.
pub fn assert_dir_unchanged(before: &Snapshot, dir: &Path, what: &str) {
    let d = snapshot_diff(before, &Snapshot::take(dir), Mode::Raw, "before", "after");
    assert!(d.is_empty(), "{}", format_problems(what, &d));
}

/// A mounted view at `dir` shows what its snapshot `before` did, in the merged comparison mode
/// ([`Mode::Merged`]); `what` names it in the panic message.
pub fn assert_view_unchanged(before: &Snapshot, dir: &Path, what: &str) {
    let d = snapshot_diff(
        before,
        &Snapshot::take(dir),
        Mode::Merged,
        "before",
        "after",
    );
    assert!(d.is_empty(), "{}", format_problems(what, &d));
}

/// Invariants every stratafs mount snapshot must satisfy on its own:
/// uniform st_dev, d_ino == st_ino, d_type == lstat type, no `.wh.` names, no hidden xattrs,
/// distinct st_ino for distinct objects (shared only by non-directories with nlink > 1).
pub fn mount_invariants(s: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    let Some(root) = s.entries.get(&Vec::new()) else {
        return vec!["mount root missing from snapshot".into()];
    };
    let mut by_ino: BTreeMap<u64, Vec<&Vec<u8>>> = BTreeMap::new();
    for (p, e) in &s.entries {
        if e.dev != root.dev {
            out.push(format!(
                "{}: st_dev {} differs from the mount root's {}",
                show_path(p),
                e.dev,
                root.dev
            ));
        }
        if let Some(dino) = e.d_ino
            && dino != e.ino
        {
            out.push(format!(
                "{}: readdir d_ino {dino} != st_ino {}",
                show_path(p),
                e.ino
            ));
        }
        if let Some(t) = e.d_type
            && Kind::from_dtype(t) != e.kind
        {
            out.push(format!(
                "{}: d_type {} but lstat says {:?}",
                show_path(p),
                show_dtype(Some(t)),
                e.kind
            ));
        }
        if p.split(|b| *b == b'/').any(|c| c.starts_with(b".wh.")) {
            out.push(format!(
                "{}: whiteout/marker name visible through the mount",
                show_path(p)
            ));
        }
        for k in e.xattrs.keys() {
            if is_hidden_xattr(k) {
                out.push(format!(
                    "{}: private xattr {} visible",
                    show_path(p),
                    k.escape_ascii()
                ));
            }
        }
        if e.kind == Kind::CharDev && e.rdev == 0 {
            out.push(format!("{}: a char 0/0 whiteout is visible", show_path(p)));
        }
        by_ino.entry(e.ino).or_default().push(p);
    }
    for (ino, paths) in by_ino {
        if paths.len() > 1 {
            let ok = paths.iter().all(|p| {
                let e = &s.entries[*p];
                e.kind != Kind::Dir && e.nlink > 1
            });
            if !ok {
                let shown: Vec<String> = paths.iter().map(|p| show_path(p)).collect();
                out.push(format!(
                    "st_ino {ino} shared by distinct objects: {}",
                    shown.join(", ")
                ));
            }
        }
    }
    out
}

/// Result of an lstat probe, normalized for comparison.
pub fn probe(p: &Path) -> Result<String, String> {
    match fs::symlink_metadata(p) {
        Ok(md) => {
            let kind = Kind::from_mode(md.mode());
            let nlink = if kind == Kind::Dir { 0 } else { md.nlink() };
            Ok(format!(
                "{kind:?} mode={:o} uid={} gid={} size={} mtime={}.{:09} rdev={:?} nlink={nlink}",
                md.mode(),
                md.uid(),
                md.gid(),
                md.size(),
                md.mtime(),
                md.mtime_nsec(),
                major_minor(md.rdev()),
            ))
        }
        Err(e) => Err(errno_name(e.raw_os_error().unwrap_or(0))),
    }
}

/// SHA-256 hex of bytes.
pub fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

impl Snapshot {
    /// Names of the direct children of `rel` (sorted, as readable strings).
    pub fn children(&self, rel: impl AsRef<[u8]>) -> Vec<String> {
        let rel = rel.as_ref();
        let prefix = if rel.is_empty() {
            Vec::new()
        } else {
            join_rel(rel, b"")
        };
        self.entries
            .keys()
            .filter(|k| {
                !k.is_empty()
                    && k.starts_with(&prefix)
                    && k.len() > prefix.len()
                    && !k[prefix.len()..].contains(&b'/')
            })
            .map(|k| show_path(&k[prefix.len()..]))
            .collect()
    }

    pub fn has(&self, rel: impl AsRef<[u8]>) -> bool {
        self.entries.contains_key(rel.as_ref())
    }

    pub fn entry(&self, rel: impl AsRef<[u8]>) -> &Entry {
        let rel = rel.as_ref();
        self.entries.get(rel).unwrap_or_else(|| {
            panic!(
                "{} missing from snapshot of {}",
                show_path(rel),
                self.root.display()
            )
        })
    }

    /// Panics unless `rel` is a regular file with exactly `content`.
    pub fn assert_content(&self, rel: impl AsRef<[u8]>, content: impl AsRef<[u8]>) {
        let rel = rel.as_ref();
        let e = self.entry(rel);
        assert_eq!(
            e.kind,
            Kind::File,
            "{} should be a regular file",
            show_path(rel)
        );
        assert_eq!(
            e.sha256.as_deref(),
            Some(sha256_hex(content.as_ref()).as_str()),
            "{} content differs from {}",
            show_path(rel),
            show_bytes(content.as_ref())
        );
    }

    pub fn assert_absent(&self, rel: impl AsRef<[u8]>) {
        let rel = rel.as_ref();
        assert!(
            !self.has(rel),
            "{} should not be visible, found {:?}",
            show_path(rel),
            self.entries.get(rel).map(|e| e.kind)
        );
    }

    pub fn assert_children(&self, rel: impl AsRef<[u8]>, expected: &[&str]) {
        let rel = rel.as_ref();
        let mut exp: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        exp.sort();
        assert_eq!(self.children(rel), exp, "children of {}", show_path(rel));
    }
}
