//! stratafs without privileges, and the id-mapping options of the drop-in command line:
//! - `rootless_plain_mount_use_unmount`: the unprivileged account (no namespace) mounts with
//!   the fuse-overlayfs style command line (through fusermount3), uses the mount (a scripted
//!   sequence run as that user, every result compared with the same sequence on a kernel
//!   overlay mounted by root with `userxattr`), unmounts with `stratafs umount`; the upper it
//!   wrote is a valid overlay upper (`user.overlay.opaque`, char 0/0 whiteouts) for the kernel;
//!   workdir clean, lowers bit-identical.
//! - `userns_differential`: the differential engine (scripted and random sequences) run as
//!   the unprivileged account in a user namespace where it is root (with its own mount
//!   namespace, as `unshare -Urm` gives, made by bubblewrap with only the directories the test
//!   needs): stratafs mounted there directly vs kernel overlayfs mounted there with `userxattr`.
//! - `rootless_allow_other_root_can_compare`: a read-only stack the user mounts with
//!   `allow_other`; root walks it and compares it with its own kernel overlay of the stack.
//!   Without `allow_other`, root is refused (EACCES).
//! - `squash_and_mapping`: `uidmapping`/`gidmapping` (DISK:SHOWN:LEN, fuse-overlayfs' order),
//!   `squash_to_root`, `squash_to_uid/gid`: shown ids, chown mapped back, on-disk owners of new
//!   entries and copy-ups, refusals for unmapped ids.
//! - `rootless_xattr_permissions_keeps_foreign_owners`: like the plain test, over root's
//!   entries (renamed, copied up as parents) with `xattr_permissions=2`: owners and refusals as
//!   on the kernel.
//!
//! The parts run as the unprivileged user are this test binary re-executed (under `setpriv`,
//! and `bwrap` for the namespace) on the ignored helper tests `rootless_ops_child` and
//! `userns_differential_child`; paths reach them through environment variables, results come
//! back as files (step results, snapshots as text).
//!
//! Requires `scripts/setup.sh` (the `stratafs-test` account, /dev/fuse 0666, fuse3,
//! `user_allow_other`). Random sequences: `STRATAFS_DIFF_SEEDS`, `STRATAFS_DIFF_OPS`,
//! `STRATAFS_DIFF_SEED` as in `write_differential.rs`.

mod common;

use common::differential::*;
use common::*;
use libc::{
    EACCES, EEXIST, EINVAL, ENOENT, ENOTEMPTY, EPERM, EXDEV, O_APPEND, O_CREAT, O_EXCL, O_RDWR,
    O_WRONLY, XATTR_REPLACE,
};
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

// ---- op constructors ----

fn open(slot: usize, path: &str, flags: i32, mode: u32) -> Step {
    Step::new(Op::Open {
        slot,
        path: path.into(),
        flags,
        mode,
    })
}
fn close(slot: usize) -> Step {
    Step::new(Op::Close { slot })
}
fn write(slot: usize, data: &str) -> Step {
    Step::new(Op::Write {
        slot,
        data: Data::lit(data),
    })
}
fn pwrite(slot: usize, off: u64, data: &str) -> Step {
    Step::new(Op::Pwrite {
        slot,
        off,
        data: Data::lit(data),
    })
}
fn fchmod(slot: usize, mode: u32) -> Step {
    Step::new(Op::Fchmod { slot, mode })
}
fn fstat(slot: usize) -> Step {
    Step::new(Op::Fstat { slot })
}
fn read_file(path: &str) -> Step {
    Step::new(Op::ReadFile { path: path.into() })
}
fn truncate(path: &str, len: u64) -> Step {
    Step::new(Op::Truncate {
        path: path.into(),
        len,
    })
}
fn mkdir(path: &str, mode: u32) -> Step {
    Step::new(Op::Mkdir {
        path: path.into(),
        mode,
    })
}
fn rmdir(path: &str) -> Step {
    Step::new(Op::Rmdir { path: path.into() })
}
fn unlink(path: &str) -> Step {
    Step::new(Op::Unlink { path: path.into() })
}
fn rename(from: &str, to: &str) -> Step {
    Step::new(Op::Rename {
        from: from.into(),
        to: to.into(),
        flags: 0,
    })
}
fn symlink(target: &str, path: &str) -> Step {
    Step::new(Op::Symlink {
        target: target.into(),
        path: path.into(),
    })
}
fn link(from: &str, to: &str) -> Step {
    Step::new(Op::Link {
        from: from.into(),
        to: to.into(),
    })
}
fn mknod(path: &str, mode: u32) -> Step {
    Step::new(Op::Mknod {
        path: path.into(),
        mode,
    })
}
fn chmod(path: &str, mode: u32) -> Step {
    Step::new(Op::Chmod {
        path: path.into(),
        mode,
    })
}
fn chown(path: &str, uid: u32, gid: u32) -> Step {
    Step::new(Op::Chown {
        path: path.into(),
        uid,
        gid,
    })
}
fn utimens(path: &str, sec: i64, nsec: i64) -> Step {
    Step::new(Op::Utimens {
        path: path.into(),
        atime: TimeArg::At(sec, nsec),
        mtime: TimeArg::At(sec, nsec),
        nofollow: false,
    })
}
fn setxattr(path: &str, name: &str, value: &str, flags: i32) -> Step {
    Step::new(Op::Setxattr {
        path: path.into(),
        name: name.into(),
        value: Data::lit(value),
        flags,
    })
}
fn removexattr(path: &str, name: &str) -> Step {
    Step::new(Op::Removexattr {
        path: path.into(),
        name: name.into(),
    })
}
fn getxattr(path: &str, name: &str) -> Step {
    Step::new(Op::Getxattr {
        path: path.into(),
        name: name.into(),
    })
}
fn listxattr(path: &str) -> Step {
    Step::new(Op::Listxattr { path: path.into() })
}
fn lstat(path: &str) -> Step {
    Step::new(Op::Lstat { path: path.into() })
}
fn readdir(path: &str) -> Step {
    Step::new(Op::Readdir { path: path.into() })
}
fn readlink(path: &str) -> Step {
    Step::new(Op::Readlink { path: path.into() })
}
fn names(v: &[(&str, Kind)]) -> Out {
    Out::Names(v.iter().map(|(n, k)| (n.to_string(), *k)).collect())
}

fn expect_holds(e: &Expect, r: &Res) -> bool {
    match (e, r) {
        (Expect::Ok, Ok(_)) => true,
        (Expect::Err(x), Err(y)) => x == y,
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

fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

// ---- 1. a plain rootless mount (no namespace) ----

/// The layers of the plain rootless test (top first). Everything is readable by the user;
/// what the script modifies belongs to the user (`uid:gid`), except the entries the script
/// only removes from root-owned files in the user's directories, and `shared/`, root's, where
/// every write must be refused. Markers are `user.overlay.*` ones (read by stratafs and by the
/// kernel with `userxattr`).
fn plain_layers(env: &TestEnv, uid: u32, gid: u32) -> Vec<Layer> {
    let base = env.layer("base");
    let top = env.layer("top");
    base.file("readme", "base readme\n");
    base.file("mine.txt", "base mine\n").owner(uid, gid);
    base.file("proj/a.c", "int a;\n").owner(uid, gid);
    base.file("proj/root.txt", "root's file\n");
    base.file("proj/sub/b.c", "int b;\n").owner(uid, gid);
    base.dir("proj/sub").owner(uid, gid);
    base.dir("proj").owner(uid, gid);
    base.file("gone/x", "x\n").owner(uid, gid);
    base.file("gone/y", "y (root's)\n");
    base.dir("gone").owner(uid, gid);
    base.file("docs/old.md", "# old\n").owner(uid, gid);
    base.file("docs/keep.md", "keep\n");
    base.dir("docs").owner(uid, gid);
    base.file("exec.sh", "#!/bin/sh\necho hi\n").owner(uid, gid);
    base.file("attr.txt", "attrs\n")
        .owner(uid, gid)
        .xattr("user.orig", b"1");
    base.file("shared/ro.txt", "root only\n");
    base.file("old-removed", "whited out by top\n");
    base.file("opq/hidden", "hidden by top's opaque dir\n")
        .owner(uid, gid);
    base.dir("opq").owner(uid, gid);
    base.symlink("rel-link", "readme");
    base.fifo("pipe").owner(uid, gid);
    base.socket("sock").owner(uid, gid);
    top.file("top.txt", "top\n").owner(uid, gid);
    top.file("docs/top-doc.md", "top doc\n").owner(uid, gid);
    top.dir("docs").owner(uid, gid);
    top.file("opq/new", "new in top\n").owner(uid, gid);
    top.opaque("opq", Opaque::UserOverlay).owner(uid, gid);
    top.whiteout("old-removed", Whiteout::XattrUser);
    for l in [&base, &top] {
        fix_times(&l.root);
    }
    vec![top, base]
}

const MINE_TIME: (i64, i64) = (1_500_000_000, 5);

/// What the user does through the mount (create, write, append to a lower file, rm of a lower
/// file, rm -r of a lower directory, mkdir over a whiteout, rename, symlink, chmod, user.*
/// xattrs, hard link, FIFO, utimens, and what must be refused on root's files).
fn plain_script() -> Vec<Step> {
    use Kind::{Dir, File};
    vec![
        open(0, "new.txt", O_CREAT | O_WRONLY | O_EXCL, 0o644).ok(),
        write(0, "hello\n").out(Out::Num(6)),
        close(0).ok(),
        open(0, "mine.txt", O_WRONLY | O_APPEND, 0).ok(),
        write(0, "appended\n").out(Out::Num(9)),
        close(0).ok(),
        read_file("mine.txt").data("base mine\nappended\n"),
        open(1, "readme", O_WRONLY | O_APPEND, 0).err(EACCES),
        read_file("rel-link").data("base readme\n"),
        unlink("readme").ok(),
        lstat("readme").err(ENOENT),
        read_file("rel-link").err(ENOENT),
        // rm -r proj
        rmdir("proj").err(ENOTEMPTY),
        unlink("proj/sub/b.c").ok(),
        rmdir("proj/sub").ok(),
        unlink("proj/a.c").ok(),
        unlink("proj/root.txt").ok(),
        rmdir("proj").ok(),
        lstat("proj").err(ENOENT),
        // rm -r gone; mkdir gone (over the whiteout: an opaque directory)
        unlink("gone/x").ok(),
        unlink("gone/y").ok(),
        rmdir("gone").ok(),
        mkdir("gone", 0o755).ok(),
        readdir("gone").out(names(&[])),
        open(2, "gone/fresh", O_CREAT | O_WRONLY, 0o600).ok(),
        close(2).ok(),
        readdir("gone").out(names(&[("fresh", File)])),
        rename("docs/old.md", "docs/new.md").ok(),
        read_file("docs/new.md").data("# old\n"),
        lstat("docs/old.md").err(ENOENT),
        rename("docs", "docs2").err(EXDEV),
        symlink("new.txt", "ln").ok(),
        readlink("ln").data("new.txt"),
        read_file("ln").data("hello\n"),
        chmod("exec.sh", 0o755).ok(),
        lstat("exec.sh"),
        setxattr("attr.txt", "user.comment", "hi", 0).ok(),
        getxattr("attr.txt", "user.comment").data("hi"),
        listxattr("attr.txt").out(Out::XattrNames(vec![
            "user.comment".into(),
            "user.orig".into(),
        ])),
        // Root's files stay root's.
        truncate("shared/ro.txt", 0).err(EACCES),
        unlink("shared/ro.txt").err(EACCES),
        open(3, "shared/new", O_CREAT | O_WRONLY, 0o644).err(EACCES),
        chmod("shared/ro.txt", 0o666).err(EPERM),
        chown("mine.txt", 0, 0).err(EPERM),
        setxattr("shared/ro.txt", "user.x", "1", 0),
        mkdir("newdir", 0o755).ok(),
        rename("new.txt", "newdir/new.txt").ok(),
        read_file("ln").err(ENOENT),
        mknod("fifo", libc::S_IFIFO | 0o644).ok(),
        link("top.txt", "top-link").ok(),
        rename("top.txt", "docs/top.txt").ok(),
        rmdir("opq").err(ENOTEMPTY),
        readdir("opq").out(names(&[("new", File)])),
        lstat("old-removed").err(ENOENT),
        truncate("mine.txt", 4).ok(),
        utimens("mine.txt", MINE_TIME.0, MINE_TIME.1).ok(),
        read_file("mine.txt").data("base"),
        mkdir("newdir", 0o755).err(EEXIST),
        readdir("").out(names(&[
            ("attr.txt", File),
            ("docs", Dir),
            ("exec.sh", File),
            ("fifo", Kind::Fifo),
            ("gone", Dir),
            ("ln", Kind::Symlink),
            ("mine.txt", File),
            ("newdir", Dir),
            ("opq", Dir),
            ("pipe", Kind::Fifo),
            ("rel-link", Kind::Symlink),
            ("shared", Dir),
            ("sock", Kind::Socket),
            ("top-link", File),
        ])),
        // Copy-ups of the user's special files (metadata changes).
        chmod("pipe", 0o600).ok(),
        utimens("sock", MINE_TIME.0, MINE_TIME.1).ok(),
        lstat("pipe"),
        lstat("sock"),
    ]
}

/// What the view must show after [`plain_script`], independently of the kernel.
fn plain_view_problems(s: &Snapshot, uid: u32, gid: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            out.push(what);
        }
    };
    let sha = |p: &str| s.get(p).and_then(|e| e.sha256.clone());
    let content = |p: &str, c: &str| sha(p) == Some(sha256_hex(c.as_bytes()));
    check(content("mine.txt", "base"), "mine.txt content".into());
    check(
        content("newdir/new.txt", "hello\n"),
        "newdir/new.txt content".into(),
    );
    check(content("docs/new.md", "# old\n"), "docs/new.md".into());
    check(content("docs/top.txt", "top\n"), "docs/top.txt".into());
    for absent in [
        "readme",
        "proj",
        "old-removed",
        "docs/old.md",
        "new.txt",
        "top.txt",
        "gone/x",
        "opq/hidden",
    ] {
        check(!s.has(absent), format!("{absent} should be gone"));
    }
    check(
        s.children("gone") == vec!["fresh".to_string()],
        format!("gone/ should hold only fresh: {:?}", s.children("gone")),
    );
    for own in [
        "",
        "mine.txt",
        "newdir",
        "newdir/new.txt",
        "gone",
        "gone/fresh",
        "ln",
        "fifo",
        "exec.sh",
        "docs/new.md",
    ] {
        let e = s.get(own);
        check(
            e.is_some_and(|e| e.uid == uid && e.gid == gid),
            format!("{own:?} should belong to {uid}:{gid}: {e:?}"),
        );
    }
    for root_owned in ["shared", "shared/ro.txt", "docs/keep.md"] {
        check(
            s.get(root_owned).is_some_and(|e| e.uid == 0 && e.gid == 0),
            format!("{root_owned} should still belong to root"),
        );
    }
    check(
        s.get("mine.txt").map(|e| e.mtime) == Some(MINE_TIME),
        "mine.txt mtime (utimensat)".into(),
    );
    check(
        s.get("exec.sh").map(|e| e.mode & 0o7777) == Some(0o755),
        "exec.sh mode".into(),
    );
    check(
        s.get("gone/fresh").map(|e| e.mode & 0o7777) == Some(0o600),
        "gone/fresh mode".into(),
    );
    check(
        s.get("ln").and_then(|e| e.target.clone()) == Some(b"new.txt".to_vec()),
        "ln target".into(),
    );
    check(
        s.get("attr.txt")
            .and_then(|e| e.xattrs.get(&b"user.comment"[..]).cloned())
            == Some(b"hi".to_vec()),
        "attr.txt user.comment".into(),
    );
    check(
        s.get("fifo").map(|e| e.kind) == Some(Kind::Fifo),
        "fifo".into(),
    );
    check(
        s.get("pipe").map(|e| (e.kind, e.mode & 0o7777)) == Some((Kind::Fifo, 0o600)),
        format!("pipe (a lower FIFO) after chmod 600: {:?}", s.get("pipe")),
    );
    check(
        s.get("sock").map(|e| (e.kind, e.mtime)) == Some((Kind::Socket, MINE_TIME)),
        format!("sock (a lower socket) after utimensat: {:?}", s.get("sock")),
    );
    let group: std::collections::BTreeSet<Vec<u8>> =
        [b"docs/top.txt".to_vec(), b"top-link".to_vec()].into();
    check(
        s.link_groups().contains(&group),
        format!("hard links docs/top.txt, top-link: {:?}", s.link_groups()),
    );
    out
}

/// Output of [`rootless_ops_child`] run on one mount.
struct ChildRun {
    results: Vec<String>,
    unexpected: Vec<String>,
    snapshot: Snapshot,
}

/// Runs `script` as `uid:gid` on `mnt` (this binary re-executed on [`rootless_ops_child`]).
fn run_ops_child(
    env: &TestEnv,
    label: &str,
    mnt: &Path,
    script: &str,
    t0: i64,
    (uid, gid): (u32, u32),
) -> ChildRun {
    let out = dir_owned_by(env, &format!("out-{label}-"), uid, gid);
    let exe = std::env::current_exe().unwrap();
    let mut cmd = as_user(uid, gid, &exe);
    cmd.args(["--exact", "rootless_ops_child", "--ignored", "--nocapture"])
        .env("STRATAFS_ROOTLESS_MNT", mnt)
        .env("STRATAFS_ROOTLESS_SCRIPT", script)
        .env("STRATAFS_ROOTLESS_T0", t0.to_string())
        .env("STRATAFS_ROOTLESS_OUT", &out);
    let desc = format!("{cmd:?}");
    let o = run_timeout(&mut cmd, Duration::from_secs(120));
    assert!(
        o.success(),
        "ops child ({label}) failed: {desc}\n{}",
        o.describe()
    );
    let read = |n: &str| {
        fs::read_to_string(out.join(n))
            .unwrap_or_else(|e| panic!("ops child ({label}) wrote no {n}: {e}; {}", o.describe()))
    };
    let lines = |s: String| -> Vec<String> { s.lines().map(str::to_string).collect() };
    ChildRun {
        results: lines(read("results")),
        unexpected: lines(read("unexpected")),
        snapshot: snapshot_from_text(&read("snapshot")),
    }
}

fn script_by_name(name: &str) -> Vec<Step> {
    match name {
        "plain" => plain_script(),
        "foreign" => foreign_script(),
        _ => panic!("unknown script {name:?}"),
    }
}

/// Runs a script on the mount in `STRATAFS_ROOTLESS_MNT` (as whoever runs it), writing into
/// `STRATAFS_ROOTLESS_OUT`: `results` (one line per step), `unexpected` (steps whose result
/// differs from the script's expectation), `snapshot` (the whole tree afterwards, as text).
#[test]
#[ignore = "helper: run as the unprivileged user by the rootless tests"]
fn rootless_ops_child() {
    let Ok(mnt) = std::env::var("STRATAFS_ROOTLESS_MNT") else {
        return;
    };
    let mnt = PathBuf::from(mnt);
    let steps = script_by_name(&env_var("STRATAFS_ROOTLESS_SCRIPT"));
    let t0: i64 = env_var("STRATAFS_ROOTLESS_T0").parse().unwrap();
    let out = PathBuf::from(env_var("STRATAFS_ROOTLESS_OUT"));
    let mut ctx = Ctx::new(&mnt, t0);
    let mut results = String::new();
    let mut unexpected = String::new();
    for (i, s) in steps.iter().enumerate() {
        let r = ctx.exec(&s.op);
        writeln!(results, "#{i} {} -> {}", s.op, show_result(&r)).unwrap();
        if let Some(e) = &s.expect
            && !expect_holds(e, &r)
        {
            writeln!(
                unexpected,
                "#{i} {}: expected {}, got {}",
                s.op,
                show_expect(e),
                show_result(&r)
            )
            .unwrap();
        }
    }
    ctx.close_all();
    fs::write(out.join("results"), results).unwrap();
    fs::write(out.join("unexpected"), unexpected).unwrap();
    fs::write(
        out.join("snapshot"),
        snapshot_to_text(&Snapshot::take(&mnt)),
    )
    .unwrap();
}

fn lowerdir(lowers: &[PathBuf]) -> String {
    lowers
        .iter()
        .map(|p| overlay_escape(p))
        .collect::<Vec<_>>()
        .join(":")
}

/// What [`rootless_vs_kernel`] compares and checks.
struct RootlessCase {
    name: &'static str,
    layers: fn(&TestEnv, u32, u32) -> Vec<Layer>,
    /// A script name of [`script_by_name`].
    script: &'static str,
    /// Options added to `lowerdir=...,upperdir=...,workdir=...`.
    extra_opts: &'static str,
    /// What the view must show after the script (checked on both views: a kernel view that
    /// fails it is a scenario bug).
    view_problems: fn(&Snapshot, u32, u32) -> Vec<String>,
    /// Whether the kernel mounting the upper (as a lower, userxattr) must give the stratafs
    /// view (not with `xattr_permissions`: owners kept in xattrs mean nothing to the kernel).
    upper_meaning: bool,
}

/// The unprivileged user mounts the case's layers with the drop-in command line (through
/// fusermount3) and runs the script through it; the same script, as the same user, runs on
/// kernel overlayfs (root, `userxattr`, exact copies of the layers). Compared: every step's
/// result, the final views; checked: the mount is a FUSE mount owned by the user and served by
/// a daemon running as the user, `stratafs umount` (as the user) unmounts and the daemon exits,
/// the workdir is clean, the upper follows the rules of an overlay upper written without
/// privileges (char 0/0 whiteouts, `user.overlay.opaque=y`, everything the user's) and (see
/// `upper_meaning`) means the same to the kernel, the lower layers are bit-identical.
/// Panics with every problem found.
fn rootless_vs_kernel(case: &RootlessCase) {
    require_root();
    let (uid, gid) = test_user_ids();
    let env = TestEnv::new(case.name);
    let layers = (case.layers)(&env, uid, gid);
    let refs: Vec<&Layer> = layers.iter().collect();
    let stack = env.stack(&refs);
    let kcopies = stack.exact_copies();
    let kstack = env.stack_paths(kcopies.clone());
    let lower_view = {
        let m = KernelOverlay::lower_only_userxattr(&kcopies, &env.fresh_dir("mnt/lowerview"))
            .unwrap_or_else(|e| panic!("{e}"));
        Snapshot::take(m.path())
    };
    // stratafs: upper, work and mount point belong to the user.
    let srw = dir_owned_by(&env, "s-rw", uid, gid);
    let (su, sw) = upper_work(&srw);
    // The kernel's: its upper root too (the merged root shows the upper root's owner).
    let (ku, kw) = upper_work(&env.fresh_dir("k-rw"));
    for d in [&su, &sw, &ku] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::lchown(d, Some(uid), Some(gid)).unwrap();
    }
    for u in [&su, &ku] {
        set_times_nofollow(u, UPPER_ROOT_TIME, 0).unwrap();
    }
    let smnt = dir_owned_by(&env, "mnt/s", uid, gid);
    let t0 = now_secs();
    // The oracle (userxattr) can neither rename merged directories nor copy up metadata
    // only: stratafs is asked for the same (its own tests cover both).
    let mut opts = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off",
        lowerdir(&stack.lowers),
        overlay_escape(&su),
        overlay_escape(&sw)
    );
    if !case.extra_opts.is_empty() {
        write!(opts, ",{}", case.extra_opts).unwrap();
    }
    let m = RootlessMount::start(&opts, &smnt, Some((uid, gid)), &env.path("mount.log"))
        .unwrap_or_else(|e| panic!("rootless mount failed: {e}"));
    let mut problems: Vec<String> = Vec::new();
    // A FUSE mount owned by the user, served by a daemon running as the user.
    let info = mounts_at(&smnt);
    if info.len() != 1 || !info[0].fstype.starts_with("fuse") {
        problems.push(format!(
            "expected one fuse mount at the mount point: {info:?}"
        ));
    }
    if fuse_mount_owner(&smnt) != Some(uid) {
        problems.push(format!(
            "mountinfo user_id should be {uid}: {:?}",
            info.iter().map(|m| &m.super_options).collect::<Vec<_>>()
        ));
    }
    if m.daemon_pids().is_empty() {
        problems.push("no daemon process found for the mount".into());
    }
    for &pid in m.daemon_pids() {
        if process_uids(pid) != Some((uid, uid)) {
            problems.push(format!(
                "daemon {pid} runs as {:?}, not as the user {uid}",
                process_uids(pid)
            ));
        }
    }
    let srun = run_ops_child(&env, "stratafs", &smnt, case.script, t0, (uid, gid));
    // The control: the same steps, as the same user, on kernel overlayfs mounted by root.
    let krun = {
        let k = KernelOverlay::writable_userxattr(&kcopies, &ku, &kw, &env.fresh_dir("mnt/k"))
            .unwrap_or_else(|e| panic!("kernel control: {e}"));
        run_ops_child(&env, "kernel", k.path(), case.script, t0, (uid, gid))
    };
    assert!(
        krun.unexpected.is_empty(),
        "scenario bug: the kernel contradicts the script:\n{}\nall kernel results:\n{}",
        krun.unexpected.join("\n"),
        krun.results.join("\n")
    );
    problems.extend(
        srun.unexpected
            .iter()
            .map(|u| format!("stratafs step: {u}")),
    );
    let n = krun.results.len().max(srun.results.len());
    for i in 0..n {
        let (k, s) = (krun.results.get(i), srun.results.get(i));
        if k != s {
            problems.push(format!(
                "step differs:\n    kernel:   {}\n    stratafs: {}",
                k.map_or("-", |x| x.as_str()),
                s.map_or("-", |x| x.as_str())
            ));
        }
    }
    let mut kview = krun.snapshot;
    let mut sview = srun.snapshot;
    problems.extend(
        mount_invariants(&sview)
            .into_iter()
            .map(|p| format!("invariant: {p}")),
    );
    normalize_times(&mut kview, t0);
    normalize_times(&mut sview, t0);
    let kernel_view_problems = (case.view_problems)(&kview, uid, gid);
    assert!(
        kernel_view_problems.is_empty(),
        "scenario bug: the kernel view does not show what the script did: {kernel_view_problems:#?}"
    );
    problems.extend(
        (case.view_problems)(&sview, uid, gid)
            .into_iter()
            .map(|p| format!("stratafs view: {p}")),
    );
    problems.extend(snapshot_diff(
        &kview,
        &sview,
        Mode::Merged,
        "kernel",
        "stratafs",
    ));
    // Unmount as the user (fusermount3), then the upper as a layer.
    problems.extend(m.finish().into_iter().map(|p| format!("unmount: {p}")));
    if is_mounted(&smnt) {
        problems.push(format!("{} still mounted", smnt.display()));
    }
    for l in workdir_leftovers(&sw) {
        problems.push(format!("workdir not clean after unmount: {l}"));
    }
    let sraw = Snapshot::take(&su);
    problems.extend(
        upper_format_problems_opaque(
            &sraw,
            UpperDialect::Overlay,
            &lower_view,
            "user.overlay.opaque=y",
        )
        .into_iter()
        .map(|p| format!("upper format: {p}")),
    );
    for (p, e) in &sraw.entries {
        if e.uid != uid || e.gid != gid {
            problems.push(format!(
                "upper entry {} belongs to {}:{}, not to the user whose daemon wrote it",
                show_path(p),
                e.uid,
                e.gid
            ));
        }
    }
    if case.upper_meaning {
        let mut lowers = vec![su.clone()];
        lowers.extend(kcopies.iter().cloned());
        let k = KernelOverlay::lower_only_userxattr(&lowers, &env.fresh_dir("mnt/meaning"))
            .unwrap_or_else(|e| panic!("kernel mount of the rootless upper as a lower: {e}"));
        let mut meaning = Snapshot::take(k.path());
        strip_hidden_xattrs(&mut meaning);
        normalize_times(&mut meaning, t0);
        problems.extend(
            snapshot_diff(
                &meaning,
                &sview,
                Mode::Merged,
                "kernel over the rootless upper",
                "stratafs before unmount",
            )
            .into_iter()
            .map(|p| format!("upper meaning (kernel, userxattr, read-only): {p}")),
        );
    }
    problems.extend(stack.check_layers());
    problems.extend(
        kstack
            .check_layers()
            .into_iter()
            .map(|p| format!("harness: kernel copy modified: {p}")),
    );
    if !problems.is_empty() {
        panic!(
            "{}\nstratafs step results:\n{}\nmount log:\n{}",
            format_problems(
                &format!(
                    "rootless mount (no namespace, extra options: {:?})",
                    case.extra_opts
                ),
                &problems
            ),
            srun.results.join("\n"),
            fs::read_to_string(env.path("mount.log")).unwrap_or_default()
        );
    }
}

#[test]
fn rootless_plain_mount_use_unmount() {
    rootless_vs_kernel(&RootlessCase {
        name: "rootless-plain",
        layers: plain_layers,
        script: "plain",
        extra_opts: "",
        view_problems: plain_view_problems,
        upper_meaning: true,
    });
}

/// Root's entries, some inside the user's directories and the user's files inside root's
/// directories: what a copy-up by an unprivileged daemon cannot own.
fn foreign_layers(env: &TestEnv, uid: u32, gid: u32) -> Vec<Layer> {
    let base = env.layer("base");
    let top = env.layer("top");
    base.file("rootfile", "root's\n");
    base.file("rdir/mine", "the user's, in root's directory\n")
        .owner(uid, gid);
    base.file("rdir/theirs", "root's, in root's directory\n");
    base.file("udir/rootowned", "root's, in the user's directory\n");
    base.dir("udir").owner(uid, gid);
    base.file("setgid-dir/f", "f\n").owner(uid, gid);
    base.dir("setgid-dir").mode(0o2775).owner(0, gid);
    top.file("top-mine", "top\n").owner(uid, gid);
    for l in [&base, &top] {
        fix_times(&l.root);
    }
    vec![top, base]
}

/// Copy-ups of entries the user does not own (renames of root's files, root's directories
/// copied up as the parents of the user's files), then what root's entries must still refuse.
fn foreign_script() -> Vec<Step> {
    use Kind::File;
    vec![
        rename("rootfile", "rootfile2").ok(),
        open(0, "rdir/mine", O_WRONLY | O_APPEND, 0).ok(),
        write(0, "more\n").out(Out::Num(5)),
        close(0).ok(),
        chmod("rdir/mine", 0o600).ok(),
        rename("udir/rootowned", "udir/r2").ok(),
        open(1, "setgid-dir/f", O_WRONLY | O_APPEND, 0).ok(),
        write(1, "x\n").out(Out::Num(2)),
        close(1).ok(),
        // root's entries stay root's: no writes, no new entries in root's directory
        open(2, "rdir/new", O_CREAT | O_WRONLY, 0o644).err(EACCES),
        unlink("rdir/theirs").err(EACCES),
        truncate("rootfile2", 0).err(EACCES),
        truncate("udir/r2", 0).err(EACCES),
        chmod("udir/r2", 0o666).err(EPERM),
        chmod("rdir", 0o777).err(EPERM),
        lstat("rootfile2"),
        lstat("rdir"),
        lstat("rdir/mine"),
        lstat("udir/r2"),
        lstat("setgid-dir"),
        readdir("rdir").out(names(&[("mine", File), ("theirs", File)])),
        read_file("rootfile2").data("root's\n"),
        read_file("rdir/mine").data("the user's, in root's directory\nmore\n"),
    ]
}

fn foreign_view_problems(s: &Snapshot, uid: u32, gid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for (p, want) in [
        ("rootfile2", (0, 0, 0o644)),
        ("rdir", (0, 0, 0o755)),
        ("rdir/theirs", (0, 0, 0o644)),
        ("rdir/mine", (uid, gid, 0o600)),
        ("udir/r2", (0, 0, 0o644)),
        ("udir", (uid, gid, 0o755)),
        ("setgid-dir", (0, gid, 0o2775)),
    ] {
        let got = s.get(p).map(|e| (e.uid, e.gid, e.mode & 0o7777));
        if got != Some(want) {
            out.push(format!("{p}: owner and mode {got:?}, want {want:?}"));
        }
    }
    out
}

/// With `xattr_permissions=2` the owners an unprivileged daemon cannot give away are kept in
/// `user.fuseoverlayfs.override_stat`: root's files renamed and root's directories copied up
/// still show (and act as) root's, exactly as on the kernel. (Without it a copy-up keeps the
/// daemon's ownership, as docs/rootless-and-dropin.md says: not compared with the kernel.)
#[test]
fn rootless_xattr_permissions_keeps_foreign_owners() {
    rootless_vs_kernel(&RootlessCase {
        name: "rootless-foreign",
        layers: foreign_layers,
        script: "foreign",
        extra_opts: "xattr_permissions=2",
        view_problems: foreign_view_problems,
        upper_meaning: false,
    });
}

// ---- 2. the differential engine in a user namespace ----

/// The layers the parent built (as root, owned by the user) for the namespace child, top first.
fn prebuilt_layers(_env: &TestEnv) -> Vec<Layer> {
    env_var("STRATAFS_ROOTLESS_LAYERS")
        .split('\n')
        .map(|p| Layer::new(PathBuf::from(p)))
        .collect()
}

/// A scenario over `standard_layers` as namespace root: copy-ups (data, xattrs, a 0600 file,
/// setuid), rm and rm -r of lower entries, mkdir over a whiteout, renames (EXDEV for a lower
/// directory), chown to the one mapped id and to an unmapped one, special files.
fn userns_script() -> Vec<Step> {
    use Kind::{Dir, File};
    vec![
        open(0, "f1", O_WRONLY | O_APPEND, 0).ok(),
        write(0, "more\n").out(Out::Num(5)),
        close(0).ok(),
        read_file("f1").data("top f1\nmore\n"),
        open(1, "owned", O_RDWR, 0).ok(),
        pwrite(1, 0, "XY").out(Out::Num(2)),
        close(1).ok(),
        read_file("owned").data("XYned by 1000\n"),
        unlink("a/f3").ok(),
        lstat("a/f3").err(ENOENT),
        readdir("a").out(names(&[("g", File), ("sub", Dir)])),
        unlink("a/sub/deep/f5").ok(),
        rmdir("a/sub/deep").ok(),
        unlink("a/sub/f4").ok(),
        rmdir("a/sub").ok(),
        readdir("a").out(names(&[("g", File)])),
        mkdir("a/sub", 0o755).ok(),
        readdir("a/sub").out(names(&[])),
        rename("b/n1", "b/n2").ok(),
        rename("f1", "e/f1").ok(),
        rename("a", "a2").err(EXDEV),
        chown("zero", 0, 0).ok(),
        chown("zero", 1000, 1000).err(EINVAL),
        lstat("zero"),
        chmod("suid", 0o6755).ok(),
        lstat("suid"),
        setxattr("xa", "user.a", "new", XATTR_REPLACE).ok(),
        removexattr("xa", "user.b").ok(),
        listxattr("xa").out(Out::XattrNames(vec!["user.a".into()])),
        setxattr("e", "user.dir", "1", 0).ok(),
        symlink("f1", "s2").ok(),
        link("big", "big2").ok(),
        lstat("big2"),
        mknod("sock", libc::S_IFSOCK | 0o644).ok(),
        mknod("fifo2", libc::S_IFIFO | 0o600).ok(),
        truncate("sparse", 100).ok(),
        utimens("ro", 1_234_567_890, 42).ok(),
        rmdir("g").err(ENOTEMPTY),
        unlink("g/f8").ok(),
        rmdir("g").ok(),
        mkdir("g", 0o700).ok(),
        open(2, "c/new", O_CREAT | O_WRONLY | O_EXCL, 0o640).ok(),
        write(2, "new\n").out(Out::Num(4)),
        fchmod(2, 0o4755).ok(),
        fstat(2),
        close(2).ok(),
        unlink("x y").ok(),
        readdir(""),
        // Last (a failure ends the script): copy-up of a lower FIFO by a metadata change.
        chmod("p", 0o600).ok(),
        utimens("p", 1_234_567_890, 43).ok(),
        lstat("p"),
    ]
}

/// Runs the differential inside the user namespace (this binary re-executed by
/// `userns_differential` under `setpriv` + `bwrap`, see [`as_test_user_in_userns`]).
#[test]
#[ignore = "helper: run in a user namespace as the unprivileged user by userns_differential"]
fn userns_differential_child() {
    if std::env::var_os("STRATAFS_ROOTLESS_LAYERS").is_none() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "not namespace root");
    let map = fs::read_to_string("/proc/self/uid_map").unwrap();
    assert!(
        !map.split_whitespace().eq(["0", "0", "4294967295"]),
        "not in a user namespace: uid_map {map:?}"
    );
    let mut cfg = DiffConfig::new("userns-scripted", prebuilt_layers);
    cfg.userxattr = true;
    cfg.test_binary = "rootless";
    let mut rcfg = cfg.clone();
    rcfg.name = "userns-random".into();
    // Both parts run (mounts are unmounted by their guards while a failure unwinds); the
    // failures are reported together.
    let scripted = std::panic::catch_unwind(|| check_script(&cfg, userns_script()));
    let random = std::panic::catch_unwind(|| {
        check_random(
            &rcfg,
            &seeds(7100, 2),
            ops_per_seed(300),
            "userns_differential",
        )
    });
    let text = |e: Box<dyn std::any::Any + Send>| -> String {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    };
    let failures: Vec<String> = [scripted, random]
        .into_iter()
        .filter_map(|r| r.err().map(text))
        .collect();
    if !failures.is_empty() {
        panic!("{}", failures.join("\n\n"));
    }
}

#[test]
fn userns_differential() {
    require_root();
    let (uid, gid) = test_user_ids();
    let env = TestEnv::new("rootless-userns");
    // The standard layers, owned by the user: all of them map to root in the namespace.
    let layers = standard_layers(&env, LowerMarkers::UserXattr);
    for l in &layers {
        chown_tree(&l.root, uid, gid);
    }
    let refs: Vec<&Layer> = layers.iter().collect();
    let stack = env.stack(&refs);
    let tmp = dir_owned_by(&env, "userns-tmp", uid, gid);
    let exe = std::env::current_exe().unwrap();
    let bin = stratafs_bin();
    let mut cmd = as_test_user_in_userns(
        &exe,
        &[exe.parent().unwrap(), bin.parent().unwrap()],
        &[&env.root],
    );
    cmd.args([
        "--exact",
        "userns_differential_child",
        "--ignored",
        "--nocapture",
    ])
    .env(
        "STRATAFS_ROOTLESS_LAYERS",
        layers
            .iter()
            .map(|l| l.root.to_str().unwrap())
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .env("TMPDIR", &tmp);
    let desc = format!("{cmd:?}");
    let out = run_timeout(&mut cmd, Duration::from_secs(240));
    // A child killed by the timeout leaves its daemons (and with them its namespaces).
    let mut problems = Vec::new();
    for pid in pids_mentioning(&tmp) {
        problems.push(format!(
            "process {pid} left behind by the namespace child; killed"
        ));
        // SAFETY: kill(2) of a process this test started (its command line names our dir).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    problems.extend(stack.check_layers());
    if !out.success() {
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        problems.insert(
            0,
            format!(
                "the differential in the user namespace failed ({:?}): {desc}\n{text}",
                out.status
            ),
        );
    }
    if !problems.is_empty() {
        panic!("{}", problems.join("\n"));
    }
}

// ---- 3. allow_other: root compares the user's mount with its own kernel view ----

/// Three layers in every marker dialect an unprivileged daemon can read (char 0/0, `.wh.`,
/// `user.overlay.*`, `user.fuseoverlayfs.opaque`), owners 0, 1000 and the user's, special
/// files, hard links, xattrs, a sparse file. Everything is readable by the user (its daemon
/// reads the layers); `trusted.*` markers are left out (see docs/rootless-and-dropin.md).
fn allow_other_layers(env: &TestEnv, uid: u32, gid: u32) -> Vec<Layer> {
    let base = env.layer("base");
    let mid = env.layer("mid");
    let top = env.layer("top");
    base.file("f", "base f\n");
    base.file("private", "the user's own, mode 0600\n")
        .owner(uid, gid)
        .mode(0o600);
    base.file("group-readable", "root's, the user's group, 0640\n")
        .owner(0, gid)
        .mode(0o640);
    base.file("o1000", "owned by 1000\n").owner(1000, 1000);
    base.file("keep1000", "owned by 1000\n").owner(1000, 1000);
    base.file("suid", "#!/bin/sh\n").mode(0o4755);
    for n in ["a", "b", "c", "d"] {
        base.file(format!("d1/{n}"), format!("base d1/{n}\n"));
    }
    base.file("d1/sub/x", "x\n");
    base.file("d2/a", "base d2/a\n").owner(1000, 1000);
    base.dir("d2").owner(1000, 1000);
    base.file("d3/a", "base d3/a\n");
    base.file("d4/hidden", "hidden\n");
    base.file("d5/hidden", "hidden\n");
    base.file("d6/hidden", "hidden\n");
    base.sparse_file("sparse");
    base.symlink("sl", "f");
    base.symlink("dangling", "nowhere");
    base.fifo("fifo");
    base.chardev("null", 1, 3);
    base.file("hl1", "hard linked\n");
    base.hardlink("hl1", "hl2");
    base.file("xa", "xattrs\n")
        .xattr("user.one", b"1")
        .xattr("user.two", b"");
    mid.file("f", "mid f\n");
    mid.whiteout("d1/a", Whiteout::CharDev);
    mid.whiteout("d1/b", Whiteout::Oci);
    mid.whiteout("d1/c", Whiteout::XattrUser);
    mid.opaque("d4", Opaque::UserOverlay);
    mid.file("d4/new", "mid d4/new\n");
    mid.opaque("d5", Opaque::Oci);
    mid.file("d5/new", "mid d5/new\n");
    mid.file("only-mid", "mid\n").owner(uid, gid);
    top.opaque("d2", Opaque::UserFuseOverlayfs);
    top.file("d2/b", "top d2/b\n");
    top.whiteout("o1000", Whiteout::CharDev);
    top.whiteout("d3", Whiteout::Oci);
    top.opaque("d6", Opaque::UserOverlay);
    top.file("d1/sub/y", "top y\n");
    top.file("x y", "a space\n");
    for l in [&base, &mid, &top] {
        fix_times(&l.root);
    }
    vec![top, mid, base]
}

#[test]
fn rootless_allow_other_root_can_compare() {
    require_root();
    let (uid, gid) = test_user_ids();
    let env = TestEnv::new("rootless-allow-other");
    let layers = allow_other_layers(&env, uid, gid);
    let refs: Vec<&Layer> = layers.iter().collect();
    let stack = env.stack(&refs);
    let mnt = dir_owned_by(&env, "mnt/s", uid, gid);
    let opts = format!("lowerdir={},allow_other", lowerdir(&stack.lowers));
    let m = RootlessMount::start(&opts, &mnt, Some((uid, gid)), &env.path("mount.log"))
        .unwrap_or_else(|e| panic!("rootless mount failed: {e}"));
    let mut problems = Vec::new();
    let info = mounts_at(&mnt);
    if fuse_mount_owner(&mnt) != Some(uid) {
        problems.push(format!("mountinfo user_id should be {uid}: {info:?}"));
    }
    if !info.iter().any(|i| {
        i.super_options.split(',').any(|o| o == "allow_other")
            && i.options.split(',').any(|o| o == "ro")
    }) {
        problems.push(format!("expected a read-only allow_other mount: {info:?}"));
    }
    // Root (this process) walks the user's mount.
    let (ks, ss, diff) = stack.compare_mount_with_kernel(&mnt);
    problems.extend(diff);
    if ss.entries.len() < 20 || ss.entries.len() != ks.entries.len() {
        problems.push(format!(
            "root saw {} entries through the user's mount, {} through the kernel's",
            ss.entries.len(),
            ks.entries.len()
        ));
    }
    match fs::read(m.join("private")) {
        Ok(d) if d == b"the user's own, mode 0600\n" => {}
        other => problems.push(format!(
            "root reading the user's 0600 file through the mount: {other:?}"
        )),
    }
    problems.extend(m.finish().into_iter().map(|p| format!("unmount: {p}")));
    // Without allow_other the mount admits only its owner: root is refused.
    let mnt2 = dir_owned_by(&env, "mnt/s", uid, gid);
    let opts2 = format!("lowerdir={}", lowerdir(&stack.lowers));
    let m2 = RootlessMount::start(&opts2, &mnt2, Some((uid, gid)), &env.path("mount2.log"))
        .unwrap_or_else(|e| panic!("rootless mount (no allow_other) failed: {e}"));
    if mounts_at(&mnt2)
        .iter()
        .any(|i| i.super_options.split(',').any(|o| o == "allow_other"))
    {
        problems.push(format!(
            "mounted with allow_other although not asked for: {:?}",
            mounts_at(&mnt2)
        ));
    }
    match fs::symlink_metadata(m2.join("f")) {
        Err(e) if e.raw_os_error() == Some(EACCES) => {}
        other => problems.push(format!(
            "root's lstat through the user's mount without allow_other: expected EACCES, got \
             {other:?}"
        )),
    }
    problems.extend(
        m2.finish()
            .into_iter()
            .map(|p| format!("unmount (no allow_other): {p}")),
    );
    if !problems.is_empty() {
        panic!(
            "{}",
            format_problems("the user's allow_other mount, seen by root", &problems)
        );
    }
}

// ---- 4. id mapping and squashing (as root, no namespace) ----

fn ids_of(p: &Path) -> Result<(u32, u32), String> {
    fs::symlink_metadata(p)
        .map(|m| (m.uid(), m.gid()))
        .map_err(|e| format!("lstat {}: {e}", p.display()))
}

fn lchown_errno(p: &Path, uid: u32, gid: u32) -> Result<(), i32> {
    let c = cpath(p);
    // SAFETY: lchown on a valid C string.
    check(unsafe { libc::lchown(c.as_ptr(), uid, gid) }).map(|_| ())
}

/// `sh -c 'echo x > FILE'` as `uid:gid` (no supplementary groups): Ok, or the shell's
/// complaint.
fn create_as(uid: u32, gid: u32, file: &Path) -> Result<(), String> {
    let mut c = as_user(uid, gid, "sh");
    c.arg("-c").arg("echo x > \"$1\"").arg("sh").arg(file);
    let o = run_timeout(&mut c, Duration::from_secs(30));
    if o.success() {
        Ok(())
    } else {
        Err(o.stderr_str().trim().to_string())
    }
}

struct Expectations<'a> {
    problems: &'a mut Vec<String>,
    label: &'static str,
}

impl Expectations<'_> {
    fn ids(&mut self, p: &Path, want: (u32, u32), what: &str) {
        match ids_of(p) {
            Ok(got) if got == want => {}
            got => self.problems.push(format!(
                "[{}] {what}: {} should show {}:{}, got {got:?}",
                self.label,
                p.display(),
                want.0,
                want.1
            )),
        }
    }
    fn ok<T: std::fmt::Debug, E: std::fmt::Debug>(&mut self, r: Result<T, E>, what: &str) {
        if let Err(e) = r {
            self.problems
                .push(format!("[{}] {what}: failed: {e:?}", self.label));
        }
    }
    fn errno(&mut self, r: Result<(), i32>, want: i32, what: &str) {
        if r != Err(want) {
            self.problems.push(format!(
                "[{}] {what}: expected {}, got {}",
                self.label,
                errno_name(want),
                show_res(&r)
            ));
        }
    }
}

/// Layer files with the on-disk owners the mappings are tested with.
fn idmap_layer(env: &TestEnv) -> Layer {
    let base = env.layer("base");
    for (name, uid, gid) in [
        ("by999", 999, 999),
        ("by100000", 100_000, 100_000),
        ("by100007", 100_007, 100_007),
        ("by165535", 165_535, 165_535),
        ("by165536", 165_536, 165_536),
        ("byroot", 0, 0),
        ("by1000", 1000, 1000),
        ("by1005", 1005, 1005),
        ("mixed", 999, 100_003),
        ("app", 100_009, 100_009),
    ] {
        base.file(name, format!("{name}\n")).owner(uid, gid);
    }
    base.file("d/f", "d/f\n").owner(100_002, 100_002);
    base.dir("d").owner(100_002, 100_002);
    base.symlink("ln", "by999").owner(100_001, 100_001);
    base.dir("pub").mode(0o1777);
    fix_times(&base.root);
    base
}

fn mount_as_root(
    env: &TestEnv,
    label: &str,
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    extra: &str,
) -> RootlessMount {
    let mnt = env.fresh_dir(&format!("mnt/{label}-"));
    let mut opts = format!("lowerdir={}", lowerdir(lowers));
    if let Some((u, w)) = upper {
        write!(
            opts,
            ",upperdir={},workdir={}",
            overlay_escape(u),
            overlay_escape(w)
        )
        .unwrap();
    }
    write!(opts, ",{extra}").unwrap();
    RootlessMount::start(&opts, &mnt, None, &env.path(&format!("{label}.log")))
        .unwrap_or_else(|e| panic!("mount ({label}): {e}"))
}

#[test]
fn squash_and_mapping() {
    require_root();
    let env = TestEnv::new("rootless-idmap");
    let base = idmap_layer(&env);
    let stack = env.stack(&[&base]);
    let mut problems = Vec::new();
    const OVF: u32 = 65534;

    // Mapping triples are DISK:SHOWN:LEN, fuse-overlayfs' order (its read_mappings/find_mapping:
    // ids [DISK, DISK+LEN) on disk show as SHOWN + (id - DISK); containers/storage passes
    // ContainerID:HostID:Size, the layers holding container ids).
    // A: disk 999 shows as 0, disk 100000.. as 1..
    {
        let (u, w) = upper_work(&env.fresh_dir("a-rw"));
        std::os::unix::fs::lchown(&u, Some(999), Some(999)).unwrap();
        let m = mount_as_root(
            &env,
            "a",
            &stack.lowers,
            Some((&u, &w)),
            "uidmapping=999:0:1:100000:1:65536,gidmapping=999:0:1:100000:1:65536",
        );
        let mut x = Expectations {
            problems: &mut problems,
            label: "uidmapping=999:0:1:100000:1:65536",
        };
        for (name, want) in [
            ("", (0, 0)),
            ("by999", (0, 0)),
            ("by100000", (1, 1)),
            ("by100007", (8, 8)),
            ("by165535", (65536, 65536)),
            ("by165536", (OVF, OVF)),
            ("byroot", (OVF, OVF)),
            ("by1000", (OVF, OVF)),
            ("mixed", (0, 4)),
            ("d", (3, 3)),
            ("d/f", (3, 3)),
            ("ln", (2, 2)),
            ("app", (10, 10)),
        ] {
            x.ids(&m.join(name), want, "stat of a lower entry");
        }
        // chown maps back to disk ids.
        x.ok(lchown_errno(&m.join("by100000"), 5, 6), "chown to 5:6");
        x.ids(&m.join("by100000"), (5, 6), "after chown to 5:6");
        x.ids(
            &u.join("by100000"),
            (100_004, 100_005),
            "upper copy after chown",
        );
        x.ok(lchown_errno(&m.join("d/f"), 0, 0), "chown d/f to 0:0");
        x.ids(&u.join("d/f"), (999, 999), "upper d/f after chown to 0:0");
        x.ids(&u.join("d"), (100_002, 100_002), "upper d (copied up)");
        x.ok(
            lchown_errno(&m.join("ln"), 3, u32::MAX),
            "lchown of a symlink",
        );
        x.ids(&m.join("ln"), (3, 2), "symlink after lchown to 3:-1");
        x.ids(
            &u.join("ln"),
            (100_002, 100_001),
            "upper symlink after lchown",
        );
        x.errno(
            lchown_errno(&m.join("by999"), 70_000, u32::MAX),
            EINVAL,
            "chown to an unmapped uid",
        );
        x.errno(
            lchown_errno(&m.join("by999"), u32::MAX, 70_000),
            EINVAL,
            "chown to an unmapped gid",
        );
        x.ids(&m.join("by999"), (0, 0), "after the refused chowns");
        // New entries made by root (container root) belong to disk 999.
        x.ok(fs::write(m.join("new-a"), "new\n"), "create as root");
        x.ids(&u.join("new-a"), (999, 999), "upper file created by root");
        x.ids(&m.join("new-a"), (0, 0), "file created by root");
        x.ok(fs::create_dir(m.join("dir-a")), "mkdir as root");
        x.ids(&u.join("dir-a"), (999, 999), "upper dir created by root");
        // A copy-up keeps the disk owner (no second mapping).
        x.ok(
            fs::OpenOptions::new()
                .append(true)
                .open(m.join("app"))
                .and_then(|mut f| std::io::Write::write_all(&mut f, b"more\n")),
            "append to a lower file",
        );
        x.ids(&u.join("app"), (100_009, 100_009), "copied-up file on disk");
        x.ids(&m.join("app"), (10, 10), "copied-up file");
        // Other callers: uid 100 is disk 100099; uid 70000 has no mapping.
        x.ok(
            create_as(100, 100, &m.join("pub/f100")),
            "create as uid 100",
        );
        x.ids(&m.join("pub/f100"), (100, 100), "file created by uid 100");
        x.ids(&u.join("pub/f100"), (100_099, 100_099), "its upper copy");
        match create_as(70_000, 70_000, &m.join("pub/f70000")) {
            Err(e) if e.contains("Value too large") => {}
            other => x.problems.push(format!(
                "[{}] create by uid 70000 (unmapped) should fail with EOVERFLOW: {other:?}",
                x.label
            )),
        }
        problems.extend(m.finish().into_iter().map(|p| format!("unmount A: {p}")));
    }

    // B: disk 1000..66535 shows as 0..65535.
    {
        let (u, w) = upper_work(&env.fresh_dir("b-rw"));
        let m = mount_as_root(
            &env,
            "b",
            &stack.lowers,
            Some((&u, &w)),
            "uidmapping=1000:0:65536,gidmapping=1000:0:65536",
        );
        let mut x = Expectations {
            problems: &mut problems,
            label: "uidmapping=1000:0:65536",
        };
        for (name, want) in [
            ("by1000", (0, 0)),
            ("by1005", (5, 5)),
            ("by999", (OVF, OVF)),
            ("byroot", (OVF, OVF)),
            ("by100000", (OVF, OVF)),
            ("by165536", (OVF, OVF)),
        ] {
            x.ids(&m.join(name), want, "stat of a lower entry");
        }
        x.ok(fs::write(m.join("new-file"), "new\n"), "create as root");
        x.ok(fs::create_dir(m.join("new-dir")), "mkdir as root");
        x.ok(
            std::os::unix::fs::symlink("new-file", m.join("new-link")),
            "symlink as root",
        );
        x.ok(
            check(unsafe {
                // SAFETY: mkfifo on a valid C string.
                libc::mkfifo(cpath(&m.join("new-fifo")).as_ptr(), 0o644)
            }),
            "mkfifo as root",
        );
        x.ok(
            fs::write(m.join("new-dir/inner"), "in\n"),
            "create in new dir",
        );
        for n in [
            "new-file",
            "new-dir",
            "new-link",
            "new-fifo",
            "new-dir/inner",
        ] {
            x.ids(&u.join(n), (1000, 1000), "upper entry created by root");
            x.ids(&m.join(n), (0, 0), "entry created by root");
        }
        x.ok(
            lchown_errno(&m.join("by1005"), 65535, 65535),
            "chown to 65535",
        );
        x.ids(
            &u.join("by1005"),
            (66_535, 66_535),
            "upper copy after chown",
        );
        x.errno(
            lchown_errno(&m.join("by1005"), 65536, u32::MAX),
            EINVAL,
            "chown to 65536 (unmapped)",
        );
        problems.extend(m.finish().into_iter().map(|p| format!("unmount B: {p}")));
    }

    // C: squash_to_root: every entry shows 0:0; what is written keeps its real owner.
    {
        let (u, w) = upper_work(&env.fresh_dir("c-rw"));
        let m = mount_as_root(&env, "c", &stack.lowers, Some((&u, &w)), "squash_to_root");
        let mut x = Expectations {
            problems: &mut problems,
            label: "squash_to_root",
        };
        for name in [
            "", "by999", "by100000", "by165536", "byroot", "by1000", "mixed", "d", "d/f", "ln",
            "pub",
        ] {
            x.ids(&m.join(name), (0, 0), "squashed");
        }
        x.ok(
            create_as(2000, 2000, &m.join("pub/f2000")),
            "create as uid 2000",
        );
        x.ids(
            &m.join("pub/f2000"),
            (0, 0),
            "file created by uid 2000, squashed",
        );
        x.ids(&u.join("pub/f2000"), (2000, 2000), "its upper copy");
        x.ok(fs::write(m.join("by-root"), "r\n"), "create as root");
        x.ids(&u.join("by-root"), (0, 0), "upper file created by root");
        problems.extend(m.finish().into_iter().map(|p| format!("unmount C: {p}")));
    }

    // D: squash_to_uid / squash_to_gid, read-only; a uid option wins over squash_to_root.
    for (extra, want) in [
        ("squash_to_uid=1234,squash_to_gid=4321", (1234, 4321)),
        ("squash_to_uid=7,squash_to_root", (7, 0)),
        ("squash_to_root,squash_to_gid=9", (0, 9)),
    ] {
        let m = mount_as_root(&env, "d", &stack.lowers, None, extra);
        let mut x = Expectations {
            problems: &mut problems,
            label: "squash_to_uid/gid",
        };
        for name in ["", "by999", "by165536", "byroot", "mixed", "d/f", "ln"] {
            x.ids(&m.join(name), want, extra);
        }
        problems.extend(
            m.finish()
                .into_iter()
                .map(|p| format!("unmount ({extra}): {p}")),
        );
    }
    problems.extend(stack.check_layers());
    if !problems.is_empty() {
        panic!("{}", format_problems("id mapping and squashing", &problems));
    }
}

/// The real Debian image stack (debootstrap minbase + a layer built the Docker way, with
/// kernel whiteouts and `trusted.overlay.opaque` directories) mounted by the unprivileged
/// user. First on root-owned copies as they are: the user cannot read `trusted.*`, and the
/// mount says so on stderr. Then after `stratafs layer add-user-markers` (run as root) and a
/// chown of the copies to the user (as a rootless engine's own layers are): root compares
/// the user's `allow_other` mount with its kernel view of the same copies, entry by entry —
/// nothing hidden shows, nothing visible is missing.
#[test]
fn debian_image_rootless_matches_kernel() {
    require_root();
    let Some(img) = common::debian::debian_image("debian_image_rootless_matches_kernel") else {
        return;
    };
    let (uid, gid) = test_user_ids();
    let env = TestEnv::new("rootless-debian");
    let copies: Vec<PathBuf> = img
        .lowers()
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let dst = env.fresh_dir(&format!("layer{i}-")).join("tree");
            copy_tree_exact(l, &dst);
            dst
        })
        .collect();
    let mut problems = Vec::new();

    // As they are: the limit is announced.
    let mnt = dir_owned_by(&env, "mnt/raw", uid, gid);
    let log = env.path("raw.log");
    let m = RootlessMount::start(
        &format!("lowerdir={}", lowerdir(&copies)),
        &mnt,
        Some((uid, gid)),
        &log,
    )
    .unwrap_or_else(|e| panic!("rootless mount of the root-owned copies failed: {e}"));
    let said = m.log();
    problems.extend(
        m.finish()
            .into_iter()
            .map(|p| format!("unmount (raw): {p}")),
    );
    if !said.contains("trusted.overlay.* markers cannot be read")
        || !said.contains("add-user-markers")
    {
        problems.push(format!(
            "an unprivileged mount of root-owned layers must warn that trusted markers are \
             unreadable; its output was: {said:?}"
        ));
    }

    // Translated by root, owned by the user.
    let out = run_timeout(
        Command::new(stratafs_bin())
            .args(["layer", "add-user-markers"])
            .args(&copies),
        Duration::from_secs(300),
    );
    assert!(
        out.success(),
        "layer add-user-markers failed: {}",
        out.describe()
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let added: u64 = stdout
        .lines()
        .next()
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|w| w.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if added == 0 {
        problems.push(format!(
            "add-user-markers found no trusted opaque directory in the apt layer: {stdout}"
        ));
    }
    let again = run_timeout(
        Command::new(stratafs_bin())
            .args(["layer", "add-user-markers"])
            .args(&copies),
        Duration::from_secs(300),
    );
    let again = String::from_utf8_lossy(&again.stdout).into_owned();
    if !again
        .lines()
        .all(|l| l.contains(" 0 opaque markers and 0 whiteout markers added"))
    {
        problems.push(format!("add-user-markers is not idempotent: {again}"));
    }
    for c in &copies {
        chown_tree(c, uid, gid);
    }
    let stack = env.stack_paths(copies.clone());
    let mnt = dir_owned_by(&env, "mnt/s", uid, gid);
    let m = RootlessMount::start(
        &format!("lowerdir={},allow_other", lowerdir(&copies)),
        &mnt,
        Some((uid, gid)),
        &env.path("mount.log"),
    )
    .unwrap_or_else(|e| panic!("rootless mount of the translated copies failed: {e}"));
    let (ks, ss, diff) = stack.compare_mount_with_kernel(&mnt);
    problems.extend(diff);
    if ks.entries.len() < 3000 || ss.entries.len() != ks.entries.len() {
        problems.push(format!(
            "root saw {} entries through the user's mount, {} through the kernel's",
            ss.entries.len(),
            ks.entries.len()
        ));
    }
    problems.extend(m.finish().into_iter().map(|p| format!("unmount: {p}")));
    problems.extend(stack.check_layers());
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("the Debian image, rootless", &problems)
    );
}

/// A writable rootless mount's directories, the user's, and its drop-in options.
struct UserRw {
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
    opts: String,
}

fn user_rw(env: &TestEnv, lowers: &[PathBuf], uid: u32, gid: u32) -> UserRw {
    let srw = dir_owned_by(env, "s-rw", uid, gid);
    let (upper, work) = upper_work(&srw);
    for d in [&upper, &work] {
        std::os::unix::fs::lchown(d, Some(uid), Some(gid)).unwrap();
    }
    let mnt = dir_owned_by(env, "mnt/s", uid, gid);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},allow_other",
        lowerdir(lowers),
        overlay_escape(&upper),
        overlay_escape(&work)
    );
    UserRw {
        upper,
        work,
        mnt,
        opts,
    }
}

/// [`user_rw`], mounted by the user (the drop-in command line, through fusermount3).
fn mount_user_rw(env: &TestEnv, lowers: &[PathBuf], uid: u32, gid: u32) -> (UserRw, RootlessMount) {
    let rw = user_rw(env, lowers, uid, gid);
    let m = RootlessMount::start(&rw.opts, &rw.mnt, Some((uid, gid)), &env.path("mount.log"))
        .unwrap_or_else(|e| panic!("rootless mount failed: {e}"));
    (rw, m)
}

/// What the user's process writes through the mount in
/// [`rootless_writeback_cache_keeps_writes_exact`]: seeded random writes and truncations through
/// a write-only fd of a lower file (copied up by the open), many small appends to a new file,
/// fsynced, and a new 6 MiB file written out in 1 MiB writes (the kernel flushes it to the daemon
/// in large writes, which the daemon sends on to the disk at once), one of them rewritten.
const WRITER_SCRIPT: &str = r#"
import os, random, sys
root = sys.argv[1]
rng = random.Random(7)
fd = os.open(os.path.join(root, "lower"), os.O_WRONLY)
for i in range(3000):
    off = rng.randrange(0, 300000)
    os.pwrite(fd, bytes([rng.randrange(256)]) * rng.randrange(1, 700), off)
    if i % 500 == 499:
        os.ftruncate(fd, rng.randrange(0, 300000))
os.close(fd)
fd = os.open(os.path.join(root, "new"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
for i in range(3000):
    os.write(fd, bytes([i % 251]) * (i % 13 + 1))
os.fsync(fd)
os.close(fd)
fd = os.open(os.path.join(root, "big"), os.O_WRONLY | os.O_CREAT, 0o644)
for i in range(6):
    os.write(fd, bytes((i * 7 + j) % 256 for j in range(4096)) * 256)
os.pwrite(fd, b"rewritten" * 100000, 2 << 20)
os.fsync(fd)
os.close(fd)
"#;

/// An unprivileged daemon (no passthrough) has the kernel cache writes by default: 6000 small
/// writes by the user's process reach the daemon as far fewer write calls, and the files read
/// back through the mount, and in the upper layer after unmounting, are byte for byte what the
/// same writes make in a plain directory.
#[test]
fn rootless_writeback_cache_keeps_writes_exact() {
    require_root();
    let (uid, gid) = test_user_ids();
    let env = TestEnv::new("rootless-writeback");
    let base = env.layer("base");
    let original: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    base.file("lower", &original).owner(uid, gid);
    let stack = env.stack(&[&base]);
    let (UserRw { upper: su, .. }, m) = mount_user_rw(&env, &stack.lowers, uid, gid);
    let plain = dir_owned_by(&env, "plain", uid, gid);
    fs::write(plain.join("lower"), &original).unwrap();
    std::os::unix::fs::lchown(plain.join("lower"), Some(uid), Some(gid)).unwrap();

    let run = |root: &Path| {
        run_ok(
            as_user(uid, gid, "python3")
                .arg("-c")
                .arg(WRITER_SCRIPT)
                .arg(root),
            Duration::from_secs(120),
        );
    };
    let before = daemon_counter(m.daemon_pids(), "io", "syscw:");
    run(m.path());
    let calls = daemon_counter(m.daemon_pids(), "io", "syscw:") - before;
    run(&plain);
    let mut problems = Vec::new();
    for name in ["lower", "new", "big"] {
        let want = fs::read(plain.join(name)).unwrap();
        if fs::read(m.join(name)).unwrap() != want {
            problems.push(format!(
                "{name} read through the mount differs from the plain copy"
            ));
        }
    }
    if calls >= 1500 {
        problems.push(format!(
            "the daemon made {calls} write calls for 6000 small writes: no writeback cache"
        ));
    }
    problems.extend(m.finish());
    for name in ["lower", "new", "big"] {
        if fs::read(su.join(name)).unwrap() != fs::read(plain.join(name)).unwrap() {
            problems.push(format!(
                "{name} in the upper layer differs from the plain copy"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    stack.assert_layers_unchanged();
}

/// With the writeback cache (rootless), the kernel flushes the ctime it changed on every
/// unlinked file as a setattr: that must not copy each removed lower file up. `rm -rf` by the
/// user of a lower tree of 300 files in 3 directories creates in the workdir only the
/// directories' copies and the shared whiteout (it created a copy per file), and the tree is
/// gone through the mount and after a remount.
#[test]
fn rootless_rm_rf_of_a_lower_tree_copies_no_file_up() {
    require_root();
    let (uid, gid) = test_user_ids();
    let env = TestEnv::new("rootless-rm");
    let base = env.layer("base");
    base.dir("tree").owner(uid, gid);
    for d in 0..3 {
        base.dir(format!("tree/d{d}")).owner(uid, gid);
        for f in 0..100 {
            base.file(format!("tree/d{d}/f{f:03}"), format!("{d} {f}\n"))
                .owner(uid, gid);
        }
    }
    base.file("keep", "kept\n").owner(uid, gid);
    let stack = env.stack(&[&base]);
    let (rw, m) = mount_user_rw(&env, &stack.lowers, uid, gid);
    let watch = CreateWatch::new(&rw.work);
    run_ok(
        as_user(uid, gid, "rm").arg("-rf").arg(m.join("tree")),
        Duration::from_secs(60),
    );
    let created = watch.count();
    let mut problems = Vec::new();
    if m.join("tree").exists() {
        problems.push("tree still there after rm -rf".to_string());
    }
    if created > 20 {
        problems.push(format!(
            "{created} entries created in the workdir for rm -rf of 300 lower files in 3 dirs"
        ));
    }
    problems.extend(m.finish());
    let again = RootlessMount::start(&rw.opts, &rw.mnt, Some((uid, gid)), &env.path("mount2.log"))
        .unwrap_or_else(|e| panic!("rootless remount failed: {e}"));
    if again.join("tree").exists()
        || fs::read(again.join("keep")).ok().as_deref() != Some(b"kept\n")
    {
        problems.push("after a remount: tree back, or keep lost".to_string());
    }
    problems.extend(again.finish());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    stack.assert_layers_unchanged();
}
