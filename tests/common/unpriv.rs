//! Helpers for the rootless tests (`tests/rootless.rs`): the unprivileged test account,
//! commands run as it (optionally in a new user + mount namespace), trees handed over to it,
//! exact layer copies (markers kept, for a kernel mounted with `userxattr`), snapshots passed
//! between processes as text, and an RAII guard for a mount made with the fuse-overlayfs style
//! command line (`stratafs [-f] -o lowerdir=...,upperdir=...,workdir=... MNT`), possibly by
//! the unprivileged user.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::env::{is_mounted, mounts_at, run_status_timeout, run_timeout};
use super::mounts::{pids_with_arg, process_alive, stratafs_bin, unmount_or_detach, wait_until};
use super::oracle::Stack;
use super::snapshot::{Entry, Kind, Snapshot, show_path};

/// The unprivileged account `scripts/setup.sh` creates.
pub const TEST_USER: &str = "stratafs-test";

/// (uid, gid) of [`TEST_USER`]; panics with a hint when the account is missing.
pub fn test_user_ids() -> (u32, u32) {
    let name = CString::new(TEST_USER).unwrap();
    // SAFETY: getpwnam with a valid C string; the result is read at once (single-threaded
    // use in a test process is enough: nothing else calls getpw* here).
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "the unprivileged account {TEST_USER} does not exist: run scripts/setup.sh"
    );
    // SAFETY: pw is non-null and points to libc's static passwd record.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

/// The environment passed to commands run as another user: nothing of the test's own
/// (HOME, cargo variables...) except the variables the rootless and differential tests read.
fn user_env(cmd: &mut Command) {
    cmd.env_clear();
    cmd.env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    cmd.env("HOME", "/nonexistent");
    cmd.env("LANG", "C.UTF-8");
    for (k, v) in std::env::vars_os() {
        let k_s = k.to_string_lossy();
        if k_s.starts_with("STRATAFS_") || k_s == "RUST_BACKTRACE" || k_s == "RUST_LOG" {
            cmd.env(&k, &v);
        }
    }
}

/// `setpriv --reuid=U --regid=G --clear-groups PROGRAM ARGS...` (cwd `/`, a clean environment
/// plus the `STRATAFS_*` variables).
pub fn as_user(uid: u32, gid: u32, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg("--")
        .arg(program);
    user_env(&mut c);
    c.current_dir("/");
    c
}

/// [`as_user`] for [`TEST_USER`].
pub fn as_test_user(program: impl AsRef<OsStr>) -> Command {
    let (uid, gid) = test_user_ids();
    as_user(uid, gid, program)
}

/// [`TEST_USER`] as root of a new user namespace (uid and gid 0 map to the user's own ids,
/// nothing else is mapped; all capabilities in that namespace), with its own mount and pid
/// namespaces, through bubblewrap. The mount namespace holds only `/usr`, `/etc` (read-only),
/// the directories of `ro` (read-only) and of `rw` (read-write, at the same paths), a minimal
/// `/dev` with `/dev/fuse`, and a fresh `/proc`: a copy of the whole mount table (what
/// `unshare -Urm` makes) would keep every FUSE mount other tests have at that moment alive
/// after their unmount, and their daemons would not exit until this namespace ends. The pid
/// namespace ends every process of the sandbox when its command ends (or is killed).
pub fn as_test_user_in_userns(program: impl AsRef<OsStr>, ro: &[&Path], rw: &[&Path]) -> Command {
    let mut c = as_test_user("bwrap");
    c.args([
        "--unshare-user",
        "--uid",
        "0",
        "--gid",
        "0",
        "--unshare-pid",
        "--die-with-parent",
        "--cap-add",
        "ALL",
        "--ro-bind",
        "/usr",
        "/usr",
        "--ro-bind",
        "/etc",
        "/etc",
    ]);
    for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let host = Path::new("/").join(top);
        match fs::symlink_metadata(&host) {
            Ok(md) if md.file_type().is_symlink() => {
                c.arg("--symlink")
                    .arg(fs::read_link(&host).unwrap())
                    .arg(&host);
            }
            Ok(md) if md.is_dir() => {
                c.arg("--ro-bind").arg(&host).arg(&host);
            }
            _ => {}
        }
    }
    c.args([
        "--dev",
        "/dev",
        "--dev-bind",
        "/dev/fuse",
        "/dev/fuse",
        "--proc",
        "/proc",
    ]);
    // Outer directories first, so that none hides one bound inside it.
    let mut binds: Vec<(&Path, &str)> = ro.iter().map(|d| (*d, "--ro-bind")).collect();
    binds.extend(rw.iter().map(|d| (*d, "--bind")));
    binds.sort_by_key(|(d, _)| d.components().count());
    for (d, how) in binds {
        c.arg(how).arg(d).arg(d);
    }
    c.args(["--chdir", "/", "--"]).arg(program);
    c
}

/// lchown of every entry of a tree (the root included); the permission bits chown clears
/// (setuid/setgid) are restored, mtimes are unchanged.
pub fn chown_tree(root: &Path, uid: u32, gid: u32) {
    let md = fs::symlink_metadata(root).unwrap();
    if md.is_dir() {
        for e in fs::read_dir(root).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
    lchown(root, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("lchown {}: {e}", root.display()));
    if !md.file_type().is_symlink() {
        fs::set_permissions(root, fs::Permissions::from_mode(md.mode() & 0o7777)).unwrap();
    }
}

/// A fresh directory `env.root/<prefix><n>` owned by `uid:gid`.
pub fn dir_owned_by(env: &super::env::TestEnv, prefix: &str, uid: u32, gid: u32) -> PathBuf {
    let d = env.fresh_dir(prefix);
    lchown(&d, Some(uid), Some(gid)).unwrap();
    d
}

/// The fields that an exact copy must keep (not ctime, inode numbers, st_dev, d_ino).
fn copy_fields(e: &Entry) -> impl PartialEq + std::fmt::Debug {
    (
        e.kind,
        e.mode,
        e.uid,
        e.gid,
        // A directory's st_size is the filesystem's bookkeeping, not content.
        if e.kind == Kind::Dir { 0 } else { e.size },
        e.sha256.clone(),
        e.target.clone(),
        e.rdev,
        e.xattrs.clone(),
        e.mtime,
        if e.kind == Kind::Dir { 0 } else { e.nlink },
        e.d_type,
    )
}

/// Differences between a tree and its copy (every field a layer means, markers included).
pub fn exact_copy_problems(src: &Snapshot, dst: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (p, e) in &src.entries {
        match dst.entries.get(p) {
            None => out.push(format!("{}: missing from the copy", show_path(p))),
            Some(d) if copy_fields(d) != copy_fields(e) => out.push(format!(
                "{}: copy differs: {:?} vs {:?}",
                show_path(p),
                copy_fields(e),
                copy_fields(d)
            )),
            Some(_) => {}
        }
    }
    for p in dst.entries.keys() {
        if !src.entries.contains_key(p) {
            out.push(format!("{}: only in the copy", show_path(p)));
        }
    }
    out
}

/// Copies the tree `src` to the new path `dst` exactly (`cp -a`: owners, modes, times,
/// xattrs — `user.overlay.*` markers included —, hard links, sparse files) and checks it.
pub fn copy_tree_exact(src: &Path, dst: &Path) {
    let out = run_timeout(
        Command::new("cp")
            .args(["-a", "--sparse=always", "--preserve=all"])
            .arg(src)
            .arg(dst),
        Duration::from_secs(120),
    );
    assert!(
        out.success(),
        "cp -a {} {}: {}",
        src.display(),
        dst.display(),
        out.describe()
    );
    let problems = exact_copy_problems(&Snapshot::take(src), &Snapshot::take(dst));
    assert!(
        problems.is_empty(),
        "harness: inexact copy of {}: {problems:#?}",
        src.display()
    );
}

impl Stack<'_> {
    /// Fresh exact copies of every layer (markers kept as they are), for a kernel mounted
    /// with `userxattr` (which reads `user.overlay.*` markers itself).
    pub fn exact_copies(&self) -> Vec<PathBuf> {
        self.lowers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let dst = self.env().fresh_dir(&format!("xcopy/{i}-")).join("tree");
                copy_tree_exact(l, &dst);
                dst
            })
            .collect()
    }

    /// The comparison of [`Stack::assert_matches_kernel`] for a stratafs mount the harness
    /// did not make (e.g. one an unprivileged user made with `allow_other`), returning the
    /// problems: snapshots equal ([`super::snapshot::Mode::Merged`]), mount invariants, lstat
    /// probes of every layer path, private xattrs hidden. Returns (kernel view, stratafs
    /// view, problems).
    pub fn compare_mount_with_kernel(&self, smnt: &Path) -> (Snapshot, Snapshot, Vec<String>) {
        use super::snapshot::{Mode, mount_invariants, snapshot_diff};
        let k = self.kernel();
        let mut ks = Snapshot::take(k.path());
        let ss = Snapshot::take(smnt);
        // The kernel quirk handled by assert_matches_kernel: whiteouts in unmerged lower
        // directories are listed by the kernel's readdir but fail lookup.
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
        problems.extend(self.probe_problems(k.path(), smnt));
        problems.extend(self.hidden_xattr_problems(smnt));
        if !ks.anomalies.is_empty() {
            problems.push(format!(
                "test bug? kernel mount walk anomalies: {:?}",
                ks.anomalies
            ));
        }
        (ks, ss, problems)
    }
}

// ---- snapshots as text (from a child process to the test) ----

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(1 + 2 * b.len());
    s.push('x');
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn unhex(s: &str) -> Vec<u8> {
    let s = s
        .strip_prefix('x')
        .expect("snapshot text: hex token without 'x'");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("snapshot text: bad hex"))
        .collect()
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or("-".into(), |x| x.to_string())
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Dir => "dir",
        Kind::File => "file",
        Kind::Symlink => "symlink",
        Kind::Fifo => "fifo",
        Kind::Socket => "socket",
        Kind::CharDev => "chr",
        Kind::BlockDev => "blk",
        Kind::Unknown => "unknown",
    }
}

fn kind_parse(s: &str) -> Kind {
    match s {
        "dir" => Kind::Dir,
        "file" => Kind::File,
        "symlink" => Kind::Symlink,
        "fifo" => Kind::Fifo,
        "socket" => Kind::Socket,
        "chr" => Kind::CharDev,
        "blk" => Kind::BlockDev,
        _ => Kind::Unknown,
    }
}

/// A snapshot as text, one line per entry/anomaly ([`snapshot_from_text`] reads it back).
pub fn snapshot_to_text(s: &Snapshot) -> String {
    let mut out = format!("R {}\n", hex(s.root.as_os_str().as_bytes()));
    for (p, e) in &s.entries {
        let xattrs: Vec<String> = e
            .xattrs
            .iter()
            .map(|(k, v)| format!("{}={}", hex(k), hex(v)))
            .collect();
        out.push_str(&format!(
            "E {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {}\n",
            hex(p),
            kind_name(e.kind),
            e.mode,
            e.uid,
            e.gid,
            e.size,
            opt(&e.sha256),
            e.target.as_ref().map_or("-".into(), |t| hex(t)),
            e.rdev,
            e.mtime.0,
            e.mtime.1,
            e.ctime.0,
            e.ctime.1,
            e.nlink,
            e.ino,
            e.dev,
            opt(&e.d_type),
            opt(&e.d_ino),
            if xattrs.is_empty() {
                "-".to_string()
            } else {
                xattrs.join(",")
            }
        ));
    }
    for a in &s.anomalies {
        out.push_str(&format!("A {}\n", hex(a.as_bytes())));
    }
    out
}

/// Reads back [`snapshot_to_text`].
pub fn snapshot_from_text(text: &str) -> Snapshot {
    let mut s = Snapshot {
        root: PathBuf::new(),
        entries: BTreeMap::new(),
        anomalies: Vec::new(),
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f[0] {
            "R" => s.root = PathBuf::from(OsStr::from_bytes(&unhex(f[1]))),
            "A" => s
                .anomalies
                .push(String::from_utf8_lossy(&unhex(f[1])).into_owned()),
            "E" => {
                assert_eq!(f.len(), 20, "snapshot text: bad line {line:?}");
                let n = |i: usize| -> i64 { f[i].parse().expect("snapshot text: number") };
                let o = |i: usize| -> Option<u64> {
                    (f[i] != "-").then(|| f[i].parse().expect("snapshot text: number"))
                };
                let mut xattrs = BTreeMap::new();
                if f[19] != "-" {
                    for kv in f[19].split(',') {
                        let (k, v) = kv.split_once('=').expect("snapshot text: xattr");
                        xattrs.insert(unhex(k), unhex(v));
                    }
                }
                let e = Entry {
                    kind: kind_parse(f[2]),
                    mode: n(3) as u32,
                    uid: n(4) as u32,
                    gid: n(5) as u32,
                    size: n(6) as u64,
                    sha256: (f[7] != "-").then(|| f[7].to_string()),
                    target: (f[8] != "-").then(|| unhex(f[8])),
                    rdev: n(9) as u64,
                    mtime: (n(10), n(11)),
                    ctime: (n(12), n(13)),
                    nlink: n(14) as u64,
                    ino: f[15].parse().expect("snapshot text: number"),
                    dev: f[16].parse().expect("snapshot text: number"),
                    d_type: o(17).map(|x| x as u8),
                    d_ino: o(18),
                    xattrs,
                };
                s.entries.insert(unhex(f[1]), e);
            }
            _ => panic!("snapshot text: bad line {line:?}"),
        }
    }
    s
}

// ---- mounts made with the fuse-overlayfs style command line ----

/// The `user_id=` of a FUSE mount (its owner), from mountinfo.
pub fn fuse_mount_owner(mnt: &Path) -> Option<u32> {
    mounts_at(mnt).iter().find_map(|m| {
        m.super_options
            .split(',')
            .find_map(|o| o.strip_prefix("user_id="))
            .and_then(|v| v.parse().ok())
    })
}

/// The real and effective uid of a process (from /proc/PID/status).
pub fn process_uids(pid: i32) -> Option<(u32, u32)> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Uid:"))?;
    let v: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    Some((*v.first()?, *v.get(1)?))
}

/// A stratafs mount made with `stratafs -o OPTIONS MNT` (background mode), by root or by
/// `as_user` = (uid, gid). Drop: `stratafs umount MNT` as the same user, then (as root)
/// `fusermount3 -uz` / `umount -l`, then SIGKILL of a daemon still alive (by its pid). When
/// the test is not already panicking, Drop panics if that was needed.
pub struct RootlessMount {
    pub mnt: PathBuf,
    pub user: Option<(u32, u32)>,
    daemon_pids: Vec<i32>,
    log: PathBuf,
    done: bool,
}

impl RootlessMount {
    fn command(user: Option<(u32, u32)>, args: &[&OsStr]) -> Command {
        let mut c = match user {
            Some((u, g)) => as_user(u, g, stratafs_bin()),
            None => Command::new(stratafs_bin()),
        };
        c.args(args);
        c
    }

    /// Mounts (`stratafs -o OPTIONS MNT`, which returns once mounted) and waits for the mount.
    pub fn start(
        options: &str,
        mnt: &Path,
        user: Option<(u32, u32)>,
        log: &Path,
    ) -> Result<RootlessMount, String> {
        let mut cmd = Self::command(
            user,
            &[OsStr::new("-o"), OsStr::new(options), mnt.as_os_str()],
        );
        let desc = format!("{cmd:?}");
        let st = run_status_timeout(&mut cmd, log, Duration::from_secs(60));
        let mounted = is_mounted(mnt);
        let guard = RootlessMount {
            mnt: mnt.to_path_buf(),
            user,
            daemon_pids: pids_with_arg(mnt),
            log: log.to_path_buf(),
            done: false,
        };
        if !st.is_some_and(|s| s.success()) || !mounted {
            let msg = format!(
                "{desc} exited {st:?}, mounted={mounted}; output:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
            drop(guard);
            return Err(msg);
        }
        Ok(guard)
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn daemon_pids(&self) -> &[i32] {
        &self.daemon_pids
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Unmounts with `stratafs umount` (as the mounting user) and returns the problems: the
    /// command failed, left the mount, or the daemon did not exit within 15 s.
    pub fn finish(mut self) -> Vec<String> {
        self.teardown()
    }

    fn teardown(&mut self) -> Vec<String> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        let mut problems = Vec::new();
        if is_mounted(&self.mnt) {
            let mut cmd = Self::command(self.user, &[OsStr::new("umount"), self.mnt.as_os_str()]);
            problems.extend(unmount_or_detach(&self.mnt, &mut cmd, true));
        }
        for &pid in &self.daemon_pids {
            if !wait_until(Duration::from_secs(15), || !process_alive(pid)) {
                problems.push(format!(
                    "daemon {pid} still running 15 s after the unmount; killed; log:\n{}",
                    self.log()
                ));
                // SAFETY: plain kill(2) of the daemon this guard started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        problems
    }
}

impl Drop for RootlessMount {
    fn drop(&mut self) {
        let problems = self.teardown();
        if !problems.is_empty() {
            if std::thread::panicking() {
                eprintln!("stratafs teardown problems:\n{}", problems.join("\n"));
            } else {
                panic!("{}", problems.join("\n"));
            }
        }
    }
}

/// Pids of live processes (not this one) whose command line mentions `needle` anywhere (to
/// find what a killed child left behind below a test's own directory).
pub fn pids_mentioning(needle: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let needle = needle.as_os_str().as_bytes();
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .split(|b| *b == 0)
            .any(|a| a.windows(needle.len()).any(|w| w == needle))
            && process_alive(pid)
        {
            out.push(pid);
        }
    }
    out
}

/// For the entries of a kernel overlay view that are non-directories with several links and
/// exist in the mount's upper directory `upper`, replaces (st_dev, st_ino) by the upper
/// inode's, so that the hard-link groups of the view are the real ones (see the user-namespace
/// quirk in `differential::run`).
pub fn inode_numbers_from_upper(view: &mut Snapshot, upper: &Path) {
    use super::snapshot::rel_path;
    for (p, e) in view.entries.iter_mut() {
        if e.kind == Kind::Dir || e.nlink < 2 {
            continue;
        }
        if let Ok(md) = fs::symlink_metadata(rel_path(upper, p))
            && Kind::from_mode(md.mode()) == e.kind
        {
            e.dev = md.dev();
            e.ino = md.ino();
        }
    }
}
