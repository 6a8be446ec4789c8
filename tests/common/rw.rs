//! Helpers for the writable layer: the on-disk rules of an upper directory, the workdir's
//! cleanliness, mtime normalization for comparing two mounts that ran the same operations at
//! different moments, fixed layer timestamps, and a watchdog for hung requests.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::mounts::UpperDialect;
use super::snapshot::{Kind, Snapshot, is_hidden_xattr, join_rel, show_path};
use super::sys::set_times_nofollow;

/// What stratafs may keep in its workdir between and during mounts, by top-level name
/// (directories listed here must be empty when the filesystem is idle). The design leaves the
/// choice to the implementation; `docs/upper-and-workdir.md` says: the lock file only.
pub const WORKDIR_KEEP: &[&str] = &[".stratafs.lock"];

/// The index of copied-up lower files with several names (`docs/upper-and-workdir.md`): kept
/// across mounts; only regular files named by a decimal inode number may be in it.
pub const WORKDIR_INDEX: &str = "stratafs-index";

/// Entries of the workdir that should not be there when no operation is in progress: anything
/// not in [`WORKDIR_KEEP`], and anything inside a kept directory.
pub fn workdir_leftovers(work: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(work) {
        Ok(rd) => rd,
        Err(e) => return vec![format!("readdir {}: {e}", work.display())],
    };
    let mut names: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
    names.sort();
    for n in names {
        let s = n.to_string_lossy().into_owned();
        let p = work.join(&n);
        if s == WORKDIR_INDEX {
            for e in fs::read_dir(&p).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let regular = e.file_type().is_ok_and(|t| t.is_file());
                if !regular || name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
                    out.push(format!("{s}/{name}"));
                }
            }
            continue;
        }
        if WORKDIR_KEEP.contains(&s.as_str()) {
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                let inner: Vec<String> = fs::read_dir(&p)
                    .map(|rd| {
                        rd.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                for i in inner {
                    out.push(format!("{s}/{i}"));
                }
            }
            continue;
        }
        out.push(s);
    }
    out
}

/// Whether a copy-up is under way in workdir `work`: a scratch entry is there, or one of the
/// daemon processes `pids` holds a nameless file of it open (a copy made with O_TMPFILE shows in
/// `/proc/PID/fd` as a deleted entry of the workdir).
pub fn copy_in_progress(work: &Path, pids: &[i32]) -> bool {
    if !workdir_leftovers(work).is_empty() {
        return true;
    }
    let prefix = work.as_os_str().as_bytes();
    pids.iter().any(|pid| {
        let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        rd.flatten().any(|e| {
            fs::read_link(e.path()).is_ok_and(|t| {
                let t = t.as_os_str().as_bytes();
                t.starts_with(prefix)
                    && t.get(prefix.len()) == Some(&b'/')
                    && t.ends_with(b" (deleted)")
            })
        })
    })
}

/// Sets every entry's atime/mtime in a layer tree to a fixed old value derived from its path
/// (bottom-up, so that directories keep theirs), making the tree's timestamps deterministic
/// and distinguishable from times set by the clock during a test.
pub fn fix_times(root: &Path) {
    fn walk(root: &Path, rel: &[u8]) {
        let p = super::snapshot::rel_path(root, rel);
        let md = fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                let e = e.unwrap();
                walk(root, &join_rel(rel, e.file_name().as_bytes()));
            }
        }
        let h = super::ops::gen_bytes(fnv(rel), 8);
        let h = u64::from_le_bytes(h.try_into().unwrap());
        let sec = 1_000_000_000 + (h % 50_000_000) as i64;
        let nsec = ((h >> 32) % 1_000_000_000) as i64;
        set_times_nofollow(&p, sec, nsec).unwrap();
    }
    walk(root, b"");
}

fn fnv(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Replaces mtimes at or after `t0` (set by the clock during the run) by a sentinel, so that
/// two mounts that did the same things at different moments compare equal, while an mtime
/// that should have been preserved (copy-up, rename, chmod) but was not still differs.
pub fn normalize_times(s: &mut Snapshot, t0: i64) {
    for e in s.entries.values_mut() {
        if e.mtime.0 >= t0 {
            e.mtime = (i64::MAX, 0);
        }
    }
}

/// Removes the xattrs that must never show through a mount (overlay markers, private
/// stratafs metadata), for comparing views where a kernel mount shows the `user.*` ones.
pub fn strip_hidden_xattrs(s: &mut Snapshot) {
    for e in s.entries.values_mut() {
        e.xattrs.retain(|k, _| !is_hidden_xattr(k));
    }
}

const OPAQUE_XATTRS: &[&[u8]] = &[
    b"trusted.overlay.opaque",
    b"user.overlay.opaque",
    b"user.fuseoverlayfs.opaque",
];

fn parent_and_name(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|b| *b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (&p[..0], p),
    }
}

/// Every proper ancestor of `p` ("" included).
fn ancestors(p: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![Vec::new()];
    for (i, b) in p.iter().enumerate() {
        if *b == b'/' {
            out.push(p[..i].to_vec());
        }
    }
    out
}

/// Checks the rules of an upper directory written by stratafs (a raw snapshot of it) against
/// the merged view of the lower layers it sits on:
/// - only the markers of its dialect: overlay = char 0/0 whiteouts and
///   `trusted.overlay.opaque=y` (as root); oci = `.wh.NAME` and `.wh..wh..opq`; never xattr
///   whiteouts, never `user.overlay.*`/`user.fuseoverlayfs.*` markers;
/// - never two markers for one fact (two opaque markers on one directory; a `.wh.NAME` next
///   to a `NAME`);
/// - a whiteout only where the lower layers have the name (and it is not already hidden by an
///   opaque directory above it in upper); none inside an opaque directory.
pub fn upper_format_problems(
    upper: &Snapshot,
    dialect: UpperDialect,
    lower_view: &Snapshot,
) -> Vec<String> {
    upper_format_problems_opaque(upper, dialect, lower_view, "trusted.overlay.opaque=y")
}

/// [`upper_format_problems`] with the opaque marker the overlay dialect must use given
/// explicitly (`user.overlay.opaque=y` for an upper written by an unprivileged daemon, which
/// cannot set `trusted.*` xattrs).
pub fn upper_format_problems_opaque(
    upper: &Snapshot,
    dialect: UpperDialect,
    lower_view: &Snapshot,
    overlay_opaque: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut opaque: BTreeSet<Vec<u8>> = BTreeSet::new();
    // Opaque markers first.
    for (p, e) in &upper.entries {
        if e.kind != Kind::Dir {
            continue;
        }
        let mut markers = Vec::new();
        for x in OPAQUE_XATTRS {
            if let Some(v) = e.xattrs.get(*x) {
                markers.push(format!("{}={}", x.escape_ascii(), v.escape_ascii()));
            }
        }
        if upper.entries.contains_key(&join_rel(p, b".wh..wh..opq")) {
            markers.push(".wh..wh..opq".into());
        }
        if markers.is_empty() {
            continue;
        }
        opaque.insert(p.clone());
        if markers.len() > 1 {
            out.push(format!(
                "{}: two markers for one opaque directory: {}",
                show_path(p),
                markers.join(", ")
            ));
        }
        let allowed: &str = match dialect {
            UpperDialect::Overlay => overlay_opaque,
            UpperDialect::Oci => ".wh..wh..opq",
        };
        for m in &markers {
            if m != allowed {
                out.push(format!(
                    "{}: opaque marker {m} in an upper dir written in the {dialect:?} dialect",
                    show_path(p)
                ));
            }
        }
    }
    for (p, e) in &upper.entries {
        if p.is_empty() {
            continue;
        }
        let (parent, name) = parent_and_name(p);
        for k in e.xattrs.keys() {
            if k.ends_with(b".whiteout")
                && (k.starts_with(b"trusted.overlay.") || k.starts_with(b"user.overlay."))
            {
                out.push(format!(
                    "{}: xattr whiteout marker {} (stratafs never writes that dialect)",
                    show_path(p),
                    k.escape_ascii()
                ));
            }
        }
        // What does this entry white out, if anything?
        let target: Option<Vec<u8>> = if e.kind == Kind::CharDev && e.rdev == 0 {
            if dialect == UpperDialect::Oci {
                out.push(format!(
                    "{}: char 0/0 whiteout in an upper dir written in the oci dialect",
                    show_path(p)
                ));
            }
            Some(p.clone())
        } else if name == b".wh..wh..opq" {
            if dialect == UpperDialect::Overlay {
                out.push(format!(
                    "{}: OCI opaque marker in an upper dir written in the overlay dialect",
                    show_path(p)
                ));
            }
            if e.kind != Kind::File || e.size != 0 {
                out.push(format!(
                    "{}: OCI opaque marker is not an empty regular file",
                    show_path(p)
                ));
            }
            None
        } else if let Some(t) = name.strip_prefix(b".wh.") {
            if dialect == UpperDialect::Overlay {
                out.push(format!(
                    "{}: OCI whiteout in an upper dir written in the overlay dialect",
                    show_path(p)
                ));
            }
            if e.kind != Kind::File || e.size != 0 {
                out.push(format!(
                    "{}: OCI whiteout is not an empty regular file",
                    show_path(p)
                ));
            }
            let t = join_rel(parent, t);
            if upper.entries.contains_key(&t) {
                out.push(format!(
                    "{}: two markers for one fact: whiteout {} next to the entry {}",
                    show_path(p),
                    show_path(p),
                    show_path(&t)
                ));
            }
            Some(t)
        } else {
            None
        };
        let Some(t) = target else { continue };
        // A directory with a redirect below the opaque one takes its lower layers from
        // elsewhere: whiteouts inside it are needed.
        let redirected = |d: &Vec<u8>| {
            upper
                .entries
                .get(d)
                .is_some_and(|e| REDIRECT_XATTRS.iter().any(|x| e.xattrs.contains_key(*x)))
        };
        let anc = ancestors(&t);
        let innermost_opaque = anc
            .iter()
            .filter(|a| opaque.contains(*a))
            .max_by_key(|a| a.len());
        if let Some(a) = innermost_opaque
            && !anc.iter().any(|b| b.len() > a.len() && redirected(b))
        {
            out.push(format!(
                "{}: whiteout inside the opaque directory {}",
                show_path(p),
                show_path(a)
            ));
            continue;
        }
        let t = lower_path_of(upper, &t);
        if !lower_view.entries.contains_key(&t) {
            out.push(format!(
                "{}: whiteout of {} although no lower layer has that name",
                show_path(p),
                show_path(&t)
            ));
        }
    }
    out
}

const REDIRECT_XATTRS: [&[u8]; 4] = [
    b"trusted.overlay.redirect",
    b"user.overlay.redirect",
    b"trusted.stratafs.redirect",
    b"user.stratafs.redirect",
];

/// Where upper path `p` is looked up in the lower layers: directories on the way that carry a
/// redirect (absolute `/x/y`, or a name in the same parent) send the rest of the path there.
pub fn lower_path_of(upper: &Snapshot, p: &[u8]) -> Vec<u8> {
    let mut upper_prefix: Vec<u8> = Vec::new();
    let mut lower: Vec<u8> = Vec::new();
    for comp in p.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
        upper_prefix = join_rel(&upper_prefix, comp);
        lower = join_rel(&lower, comp);
        let Some(e) = upper.entries.get(&upper_prefix) else {
            continue;
        };
        if e.kind != Kind::Dir {
            continue;
        }
        if let Some(v) = REDIRECT_XATTRS.iter().find_map(|x| e.xattrs.get(*x)) {
            lower = match v.strip_prefix(b"/") {
                Some(abs) => abs.to_vec(),
                None => join_rel(parent_and_name(&lower).0, v),
            };
        }
    }
    lower
}

/// Regular-file bytes (sum of st_size) and the number of regular files in a tree.
pub fn file_bytes(root: &Path) -> (u64, usize) {
    let s = Snapshot::take(root);
    let mut bytes = 0;
    let mut n = 0;
    for e in s.entries.values() {
        if e.kind == Kind::File {
            bytes += e.size;
            n += 1;
        }
    }
    (bytes, n)
}

/// Kills the daemon when one operation takes longer than the limit (a hung request), so that
/// the blocked syscall returns (ENOTCONN) and the test reports the operation instead of
/// hanging until the harness kills it.
pub struct Watchdog {
    current: Arc<Mutex<Option<(Instant, String)>>>,
    fired: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    pub fn new(pids: Vec<i32>, limit: Duration) -> Watchdog {
        let current: Arc<Mutex<Option<(Instant, String)>>> = Arc::new(Mutex::new(None));
        let fired = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (c2, f2, s2) = (current.clone(), fired.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
                let cur = c2.lock().unwrap().clone();
                if let Some((since, what)) = cur
                    && since.elapsed() > limit
                {
                    let msg = format!(
                        "watchdog: `{what}` did not return within {} s: the daemon was killed",
                        limit.as_secs()
                    );
                    eprintln!("{msg}");
                    *f2.lock().unwrap() = Some(msg);
                    for &pid in &pids {
                        // SAFETY: plain kill(2) of the daemon under test.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                    return;
                }
            }
        });
        Watchdog {
            current,
            fired,
            stop,
            thread: Some(thread),
        }
    }

    pub fn arm(&self, what: impl Into<String>) {
        *self.current.lock().unwrap() = Some((Instant::now(), what.into()));
    }

    pub fn disarm(&self) {
        *self.current.lock().unwrap() = None;
    }

    /// The message when the watchdog fired.
    pub fn fired(&self) -> Option<String> {
        self.fired.lock().unwrap().clone()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A fresh (upper, work) pair under `dir`, both on the same filesystem.
pub fn upper_work(base: &Path) -> (PathBuf, PathBuf) {
    let upper = base.join("upper");
    let work = base.join("work");
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    (upper, work)
}

/// The two-layer fixture of the run and library tests: bottom `l1` and top `l2`, readable by
/// everyone, with every kind of entry, a hard-link pair, a char 0/0 whiteout and an OCI opaque
/// directory. `more_l1` adds entries to `l1` before the timestamps are fixed ([`fix_times`]).
pub fn two_layer_fixture(
    env: &super::env::TestEnv,
    more_l1: impl FnOnce(&super::layer::Layer),
) -> (super::layer::Layer, super::layer::Layer) {
    use super::layer::{Opaque, Whiteout};
    let l1 = env.layer("l1");
    l1.file("keep.txt", "keep\n");
    l1.file("mod.txt", "mod\n");
    l1.file("del.txt", "del\n");
    l1.file("dir/a", "a\n");
    l1.file("dir/sub/b", "b\n");
    l1.file("movedir/f", "f\n");
    l1.file("hl1", "hl\n");
    l1.hardlink("hl1", "hl2");
    l1.symlink("link", "keep.txt");
    l1.fifo("fifo");
    l1.file("hidden.txt", "hidden\n");
    more_l1(&l1);
    let l2 = env.layer("l2");
    l2.file("top.txt", "top\n");
    l2.file("dir/c", "c\n");
    l2.whiteout("hidden.txt", Whiteout::CharDev);
    l2.opaque("opq", Opaque::Oci);
    l2.file("opq/new", "new\n");
    fix_times(&l1.root);
    fix_times(&l2.root);
    (l1, l2)
}
