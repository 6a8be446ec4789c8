//! Writable-layer behaviour the step-by-step differential cannot express: open-but-deleted
//! files and the workdir, inode numbers across copy-up/rename/remount, ownership of entries
//! created by an unprivileged caller, `rm -rf` of a large lower tree on a tiny upper, what a
//! copy-up preserves (holes, setuid, owner, times, xattrs) and filters (overlay/private
//! xattrs), workdir cleanup and locking, readers during a copy-up, ENOSPC during a copy-up.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn rw_dirs(env: &TestEnv, name: &str) -> (PathBuf, PathBuf) {
    upper_work(&env.fresh_dir(name))
}

fn errno_of(e: &std::io::Error) -> String {
    errno_name(e.raw_os_error().unwrap_or(0))
}

fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
        .ino()
}

/// d_ino of `name` in directory `dir` (from readdir).
fn d_ino(dir: &Path, name: &str) -> u64 {
    read_dir_raw(dir)
        .unwrap()
        .into_iter()
        .find(|d| d.name == name.as_bytes())
        .unwrap_or_else(|| panic!("{name} not listed in {}", dir.display()))
        .ino
}

/// Files deleted while open keep working through their fds until the last close: a lower file
/// copied up by the open, a lower file copied up later by a write through the fd, a new file.
/// While they are open the name is gone from the view and from upper; after the last close
/// and the unmount, nothing of them is left in upper or workdir.
#[test]
fn deleted_open_files_keep_working_until_closed() {
    require_root();
    let env = TestEnv::new("ws-unlinked");
    let base = env.layer("base");
    base.file("lower1", "lower one\n");
    base.file("lower2", "lower two\n");
    base.file("d/lower3", "lower three\n");
    let stack = env.stack(&[&base]);
    let (upper, work) = rw_dirs(&env, "rw");
    let m = stack.stratafs_rw(&UpperSpec::new(&upper, &work));
    let mut a = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join("lower1"))
        .unwrap();
    a.write_all(b"LOWER").unwrap();
    fs::remove_file(m.join("lower1")).unwrap();
    // Opened for writing, nothing written before the unlink.
    let b = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join("d/lower3"))
        .unwrap();
    fs::remove_file(m.join("d/lower3")).unwrap();
    fs::remove_dir(m.join("d")).unwrap();
    let mut c = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(m.join("new"))
        .unwrap();
    c.write_all(b"new file data").unwrap();
    fs::remove_file(m.join("new")).unwrap();
    // A read-only fd on a lower file, which is then unlinked: never copied up.
    let mut r = fs::File::open(m.join("lower2")).unwrap();
    fs::remove_file(m.join("lower2")).unwrap();

    for n in ["lower1", "lower2", "new", "d"] {
        assert!(
            fs::symlink_metadata(m.join(n)).is_err(),
            "{n} still visible after unlink"
        );
    }
    // Through the fds.
    a.write_all(b" and more").unwrap();
    let mut s = String::new();
    a.seek(SeekFrom::Start(0)).unwrap();
    a.read_to_string(&mut s).unwrap();
    assert_eq!(s, "LOWER and more"); // " and more" overwrote " one\n" at offset 5
    b.write_all_at(b"written after unlink", 0).unwrap();
    let mut buf = vec![0u8; 64];
    let n = b.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"written after unlink");
    assert_eq!(b.metadata().unwrap().nlink(), 0);
    c.write_all_at(b"NEW", 0).unwrap();
    let n = c.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"NEW file data");
    c.set_len(3).unwrap();
    assert_eq!(c.metadata().unwrap().len(), 3);
    let mut s = String::new();
    r.read_to_string(&mut s).unwrap();
    assert_eq!(s, "lower two\n");
    // Nothing of them under their names in upper.
    let up = Snapshot::take(&upper);
    for n in ["lower1", "lower2", "new", "d/lower3"] {
        if let Some(e) = up.entries.get(n.as_bytes()) {
            assert!(
                e.kind == Kind::CharDev && e.rdev == 0,
                "upper/{n} should be a whiteout or absent, is {:?}",
                e.kind
            );
        }
    }
    // The same name can be reused meanwhile.
    fs::write(m.join("lower1"), "reused").unwrap();
    assert_eq!(fs::read(m.join("lower1")).unwrap(), b"reused");
    drop((a, b, c, r));
    m.unmount();
    assert_eq!(workdir_leftovers(&work), Vec::<String>::new());
    let up = Snapshot::take(&upper);
    up.assert_content("lower1", "reused");
    let (bytes, _) = file_bytes(&upper);
    assert_eq!(
        bytes,
        6,
        "upper should hold only the reused lower1: {:?}",
        up.entries.keys().map(|k| show_path(k)).collect::<Vec<_>>()
    );
}

/// st_ino does not change when an entry is copied up (data, metadata, directory, symlink,
/// FIFO), nor when it is renamed, nor after the kernel forgets it, nor across a remount;
/// readdir's d_ino agrees; a hard link made through the mount shares the number.
#[test]
fn inode_numbers_survive_copy_up_rename_and_remount() {
    require_root();
    let env = TestEnv::new("ws-ino");
    let base = env.layer("base");
    let top = env.layer("top");
    base.file("f", "data");
    base.file("m", "meta");
    base.file("d/g", "g");
    base.file("d/h", "h");
    base.symlink("s", "f");
    base.fifo("p");
    top.file("t", "top");
    top.dir("d");
    let stack = env.stack(&[&top, &base]);
    let (upper, work) = rw_dirs(&env, "rw");
    let spec = UpperSpec::new(&upper, &work);
    let m = stack.stratafs_rw(&spec);
    let names = ["f", "m", "d", "d/g", "d/h", "s", "p", "t"];
    let before: BTreeMap<&str, u64> = names.iter().map(|n| (*n, ino(&m.join(n)))).collect();
    // Copy-ups of every kind.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(m.join("f"))
        .unwrap();
    assert_eq!(
        f.metadata().unwrap().ino(),
        before["f"],
        "fstat before the write"
    );
    f.write_all(b" appended").unwrap();
    assert_eq!(
        f.metadata().unwrap().ino(),
        before["f"],
        "fstat after copy-up"
    );
    drop(f);
    fs::set_permissions(m.join("m"), fs::Permissions::from_mode(0o600)).unwrap();
    lsetxattr(&m.join("d"), b"user.x", b"1").unwrap();
    fs::write(m.join("d/g"), "rewritten").unwrap();
    std::os::unix::fs::lchown(m.join("s"), Some(1000), None).unwrap();
    fs::set_permissions(m.join("p"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(m.join("t"), "top rewritten").unwrap();
    let check = |root: &Path, map: &BTreeMap<&str, u64>, what: &str| {
        let mut problems = Vec::new();
        for (n, i) in map {
            let now = ino(&root.join(n));
            if now != *i {
                problems.push(format!("{n}: st_ino {i} then {now}"));
            }
            let p = Path::new(n);
            let parent = root.join(p.parent().unwrap());
            let dino = d_ino(&parent, p.file_name().unwrap().to_str().unwrap());
            if dino != now {
                problems.push(format!("{n}: d_ino {dino} != st_ino {now}"));
            }
        }
        assert!(problems.is_empty(), "{}", format_problems(what, &problems));
    };
    check(m.path(), &before, "st_ino after copy-up");
    // Renames (of a copied-up file, of a lower file, of an upper-only file).
    fs::rename(m.join("f"), m.join("f2")).unwrap();
    fs::rename(m.join("d/h"), m.join("h2")).unwrap();
    fs::write(m.join("new"), "new").unwrap();
    let new_ino = ino(&m.join("new"));
    fs::rename(m.join("new"), m.join("d/new2")).unwrap();
    fs::hard_link(m.join("d/new2"), m.join("link")).unwrap();
    let mut after: BTreeMap<&str, u64> = before.clone();
    after.remove("f");
    after.remove("d/h");
    after.insert("f2", before["f"]);
    after.insert("h2", before["d/h"]);
    after.insert("d/new2", new_ino);
    after.insert("link", new_ino);
    check(m.path(), &after, "st_ino after rename and link");
    forget_kernel_inodes();
    check(
        m.path(),
        &after,
        "st_ino after the kernel forgot the inodes",
    );
    m.unmount();
    let m2 = stack.stratafs_rw(&spec);
    check(m2.path(), &after, "st_ino across remount");
    forget_kernel_inodes();
    check(m2.path(), &after, "st_ino across remount, inodes forgotten");
    let s = Snapshot::take(m2.path());
    let inv = mount_invariants(&s);
    assert!(inv.is_empty(), "{}", format_problems("invariants", &inv));
}

/// The same shell script, run as uid/gid 1000 with a given umask, on a kernel overlay and on
/// stratafs; returns (stdout, stderr) of each.
fn run_as_1000(root: &Path, script: &str) -> (String, String) {
    run_as(root, 1000, 1000, script)
}

fn run_as(root: &Path, uid: u32, gid: u32, script: &str) -> (String, String) {
    let out = run_timeout(
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .current_dir(root)
            .uid(uid)
            .gid(gid),
        Duration::from_secs(60),
    );
    assert!(out.status.is_some(), "script timed out: {}", out.describe());
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).replace(&root.display().to_string(), "MNT"),
    )
}

/// Entries created through the mount belong to the calling process (uid, gid, umask), not
/// to the daemon, as on the kernel: new files, directories, symlinks, FIFOs, copied-up files
/// (owner preserved), setgid-directory inheritance, and permission refusals; root callers
/// too, in the daemon's own group (nothing to give away), in another group, and in a
/// setgid directory.
#[test]
fn created_entries_belong_to_the_caller() {
    require_root();
    let env = TestEnv::new("ws-owner");
    let base = env.layer("base");
    base.dir("shared").mode(0o777);
    base.file("shared/lowerfile", "lower\n")
        .owner(1000, 1000)
        .mode(0o644);
    base.dir("sgid").owner(0, 2000).mode(0o2777);
    base.dir("rootonly").mode(0o755);
    base.file("rootonly/f", "root\n");
    fix_times(&base.root);
    let stack = env.stack(&[&base]);
    let kcopies = stack.kernel_copies();
    let kstack = env.stack_paths(kcopies.clone());
    let (ku, kw) = rw_dirs(&env, "krw");
    let (su, sw) = rw_dirs(&env, "srw");
    let km = KernelOverlay::writable(&kcopies, &ku, &kw, &env.fresh_dir("mnt/k")).unwrap();
    let sm = stack.stratafs_rw(&UpperSpec::new(&su, &sw));
    let script = r#"
umask 022
touch shared/f; echo "touch $?"
mkdir shared/d; echo "mkdir $?"
mkdir shared/d/sub; echo "mkdir sub $?"
ln -s target shared/l; echo "symlink $?"
mkfifo shared/p; echo "mkfifo $?"
echo more >> shared/lowerfile; echo "append $?"
umask 077
touch shared/g; echo "touch077 $?"
mkdir shared/e; echo "mkdir077 $?"
umask 002
touch sgid/f; echo "sgid file $?"
mkdir sgid/d; echo "sgid dir $?"
touch rootonly/x; echo "denied create $?"
echo x >> rootonly/f; echo "denied write $?"
rm rootonly/f; echo "denied unlink $?"
mkdir shared/d/sub/deeper; echo "deeper $?"
chmod 4755 shared/f; echo "chmod own suid $?"
"#;
    let (kout, _kerr) = run_as_1000(km.path(), script);
    let (sout, serr) = run_as_1000(sm.path(), script);
    assert!(
        kout.contains("touch 0") && kout.contains("denied create 1"),
        "test setup: kernel output {kout}"
    );
    assert_eq!(
        sout, kout,
        "exit codes as uid 1000 (stratafs stderr: {serr})"
    );
    let root_script = r#"
umask 022
touch shared/rootf; echo "root touch $?"
mkdir shared/rootd; echo "root mkdir $?"
ln -s target shared/rootl; echo "root symlink $?"
touch sgid/rootf; echo "root sgid file $?"
mkdir sgid/rootd; echo "root sgid dir $?"
umask 0
python3 -c 'import os; os.close(os.open("shared/rootsf", os.O_CREAT | os.O_WRONLY, 0o6755))'; echo "root create 6755 $?"
"#;
    let other_group =
        "umask 022; touch shared/g3000f; mkdir shared/g3000d; echo \"other group $?\"";
    for m in [km.path(), sm.path()] {
        let (out, err) = run_as(m, 0, 0, root_script);
        assert_eq!(out.matches(" 0\n").count(), 6, "as root: {out} {err}");
        let (out, err) = run_as(m, 0, 3000, other_group);
        assert_eq!(out, "other group 0\n", "as root in group 3000: {err}");
    }
    let paths = [
        "shared",
        "shared/f",
        "shared/d",
        "shared/d/sub",
        "shared/d/sub/deeper",
        "shared/l",
        "shared/p",
        "shared/lowerfile",
        "shared/g",
        "shared/e",
        "sgid",
        "sgid/f",
        "sgid/d",
        "rootonly/f",
        "shared/rootf",
        "shared/rootd",
        "shared/rootl",
        "shared/rootsf",
        "sgid/rootf",
        "sgid/rootd",
        "shared/g3000f",
        "shared/g3000d",
    ];
    let own = |root: &Path, p: &str| -> String {
        match fs::symlink_metadata(root.join(p)) {
            Ok(md) => format!(
                "{p}: uid={} gid={} mode={:o}",
                md.uid(),
                md.gid(),
                md.mode()
            ),
            Err(e) => format!("{p}: {}", errno_of(&e)),
        }
    };
    let mut problems = Vec::new();
    for p in paths {
        let (k, s) = (own(km.path(), p), own(sm.path(), p));
        if k != s {
            problems.push(format!("kernel {k}\n    stratafs {s}"));
        }
    }
    // The expectations themselves (so that a kernel quirk cannot hide a wrong answer).
    let exp = [
        ("shared/f", 1000, 1000, 0o104755),
        ("shared/d", 1000, 1000, 0o40755),
        ("shared/l", 1000, 1000, 0o120777),
        ("shared/p", 1000, 1000, 0o10644),
        ("shared/lowerfile", 1000, 1000, 0o100644),
        ("shared/g", 1000, 1000, 0o100600),
        ("shared/e", 1000, 1000, 0o40700),
        ("sgid/f", 1000, 2000, 0o100664),
        ("sgid/d", 1000, 2000, 0o42775),
        ("shared/rootf", 0, 0, 0o100644),
        ("shared/rootd", 0, 0, 0o40755),
        ("shared/rootl", 0, 0, 0o120777),
        ("shared/rootsf", 0, 0, 0o106755),
        ("sgid/rootf", 0, 2000, 0o100644),
        ("sgid/rootd", 0, 2000, 0o42755),
        ("shared/g3000f", 0, 3000, 0o100644),
        ("shared/g3000d", 0, 3000, 0o40755),
    ];
    for (p, uid, gid, mode) in exp {
        let want = format!("{p}: uid={uid} gid={gid} mode={mode:o}");
        let got = own(sm.path(), p);
        if got != want {
            problems.push(format!("expected {want}\n    stratafs {got}"));
        }
    }
    // The real upper entries are owned by the caller too (not only the reported attributes).
    drop(km);
    sm.unmount();
    for (p, uid, gid, _) in exp {
        let md = fs::symlink_metadata(su.join(p)).unwrap();
        if (md.uid(), md.gid()) != (uid, gid) {
            problems.push(format!(
                "upper/{p} owned by {}:{}, expected {uid}:{gid}",
                md.uid(),
                md.gid()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("ownership of created entries", &problems)
    );
    drop(kstack);
}

/// `rm -rf` of a large lower tree writes only whiteouts: it succeeds with upper+work on a
/// 1 MiB tmpfs (the tree holds 40 MiB of data), leaves no regular-file data in upper, and the
/// upper ends up holding what the kernel's holds (one whiteout for the tree's root).
#[test]
fn rm_rf_of_a_lower_tree_writes_only_whiteouts() {
    require_root();
    let env = TestEnv::new("ws-rmrf");
    let base = env.layer("base");
    let block: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8 + 1).collect();
    for d in 0..32 {
        for f in 0..16 {
            base.file(format!("tree/d{d}/sub/f{f}"), &block);
        }
        base.symlink(format!("tree/d{d}/link"), "sub/f0");
    }
    base.file("tree/big", vec![7u8; 8 << 20]);
    base.file("keep", "kept");
    let stack = env.stack(&[&base]);
    let small = env.mount_tmpfs_opts("small", "mode=0755,size=1M");
    let (su, sw) = upper_work(&small.join("s"));
    let m = stack.stratafs_rw(&UpperSpec::new(&su, &sw));
    let out = run_timeout(
        Command::new("rm").arg("-rf").arg(m.join("tree")),
        Duration::from_secs(120),
    );
    assert!(out.success(), "rm -rf failed: {}", out.describe());
    assert!(fs::symlink_metadata(m.join("tree")).is_err());
    assert_eq!(fs::read(m.join("keep")).unwrap(), b"kept");
    m.unmount();
    let (bytes, files) = file_bytes(&su);
    assert_eq!(
        (bytes, files),
        (0, 0),
        "rm -rf copied data up: {bytes} bytes in {files} files"
    );
    // Compare the upper with the kernel's after the same rm -rf.
    let kcopies = stack.kernel_copies();
    let ksmall = env.mount_tmpfs_opts("ksmall", "mode=0755,size=1M");
    let (ku, kw) = upper_work(&ksmall.join("k"));
    {
        let km = KernelOverlay::writable(&kcopies, &ku, &kw, &env.fresh_dir("mnt/k")).unwrap();
        run_ok(
            Command::new("rm").arg("-rf").arg(km.join("tree")),
            Duration::from_secs(120),
        );
    }
    let shape = |s: &Snapshot| -> Vec<String> {
        s.entries
            .iter()
            .map(|(p, e)| {
                format!(
                    "{} {:?} rdev={:?}",
                    show_path(p),
                    e.kind,
                    major_minor(e.rdev)
                )
            })
            .collect()
    };
    assert_eq!(
        shape(&Snapshot::take(&su)),
        shape(&Snapshot::take(&ku)),
        "upper after rm -rf (stratafs vs kernel)"
    );
    assert_eq!(workdir_leftovers(&sw), Vec::<String>::new());
}

fn seek(fd: i32, off: i64, whence: i32) -> Result<i64, i32> {
    lseek(fd, off, whence)
}

/// The data extents of a file, as (start, end) pairs found with SEEK_DATA/SEEK_HOLE.
fn extents(p: &Path) -> Vec<(i64, i64)> {
    let f = fs::File::open(p).unwrap();
    let len = f.metadata().unwrap().len() as i64;
    let mut out = Vec::new();
    let mut off = 0;
    while off < len {
        let d = match seek(f.as_raw_fd(), off, libc::SEEK_DATA) {
            Ok(d) => d,
            Err(libc::ENXIO) => break,
            Err(e) => panic!("SEEK_DATA {}: {}", p.display(), errno_name(e)),
        };
        let h = seek(f.as_raw_fd(), d, libc::SEEK_HOLE).unwrap();
        out.push((d, h));
        off = h;
    }
    out
}

/// Copy-up keeps holes (SEEK_DATA/SEEK_HOLE and allocated blocks), the mode incl. setuid,
/// the owner, the mtime (for a metadata-only change), user.* and other trusted.* xattrs, and
/// never copies `trusted.overlay.*`, `user.overlay.*` or `user.fuseoverlayfs.*` xattrs.
#[test]
fn copy_up_preserves_metadata_and_holes_and_filters_markers() {
    require_root();
    let env = TestEnv::new("ws-copyup");
    let base = env.layer("base");
    let chunk: Vec<u8> = (0..65536u32).map(|i| (i % 249) as u8 + 1).collect();
    for name in ["meta", "data"] {
        let p = base.path(name);
        let f = fs::File::create(&p).unwrap();
        f.write_all_at(&chunk, 0).unwrap();
        f.write_all_at(&chunk, 8 << 20).unwrap();
        drop(f);
        Node { path: p }
            .owner(1234, 5678)
            .mode(0o4755)
            .xattr("user.a", b"1")
            .xattr("user.b", b"two")
            .xattr("trusted.t", b"3")
            .xattr("trusted.overlay.foo", b"private")
            .xattr("user.overlay.bar", b"private")
            .xattr("user.fuseoverlayfs.baz", b"private")
            .mtime(1_111_111_111, 222);
    }
    base.dir("dir")
        .owner(1234, 5678)
        .mode(0o2750)
        .xattr("user.d", b"d")
        .xattr("trusted.overlay.foo", b"private");
    base.file("dir/inside", "x");
    base.symlink("sym", "meta");
    Node {
        path: base.path("sym"),
    }
    .owner(1234, 5678)
    .mtime(1_111_111_000, 5);
    let stack = env.stack(&[&base]);
    let (su, sw) = rw_dirs(&env, "rw");
    let m = stack.stratafs_rw(&UpperSpec::new(&su, &sw));
    let lower_md = fs::metadata(base.path("meta")).unwrap();
    let lower_extents = extents(&base.path("meta"));
    assert_eq!(lower_extents.len(), 2, "test setup: sparse lower file");
    // Metadata-only trigger: a metadata-only copy (a sparse placeholder of the same size,
    // marked for the kernel's metacopy=on, its data named by a redirect)...
    lsetxattr(&m.join("meta"), b"user.trigger", b"t").unwrap();
    let mut early = Vec::new();
    {
        let up = su.join("meta");
        let md = fs::symlink_metadata(&up).unwrap();
        if md.len() != lower_md.len() || !extents(&up).is_empty() {
            early.push(format!(
                "metacopy placeholder: size {} (want {}), extents {:?} (want none)",
                md.len(),
                lower_md.len(),
                extents(&up)
            ));
        }
        if lgetxattr(&up, b"trusted.overlay.metacopy").is_err()
            || lgetxattr(&up, b"trusted.overlay.redirect").as_deref().ok() != Some(&b"/meta"[..])
        {
            early.push("metacopy placeholder: trusted.overlay.metacopy/redirect missing".into());
        }
        if fs::read(m.join("meta")).unwrap() != fs::read(base.path("meta")).unwrap() {
            early.push("metacopy: reads do not show the lower data".into());
        }
    }
    // ...filled in place by an open for writing that changes nothing.
    drop(
        fs::OpenOptions::new()
            .write(true)
            .open(m.join("meta"))
            .unwrap(),
    );
    // Data trigger: one byte appended.
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("data"))
        .unwrap()
        .write_all(b"!")
        .unwrap();
    // Directory and symlink copy-ups.
    fs::write(m.join("dir/new"), "n").unwrap();
    std::os::unix::fs::lchown(m.join("sym"), None, Some(42)).unwrap();
    let mut problems = early;
    let mut expect = |what: String, ok: bool| {
        if !ok {
            problems.push(what);
        }
    };
    let want_x: Vec<&[u8]> = vec![b"trusted.t", b"user.a", b"user.b"];
    let visible = |p: &Path| -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = llistxattr(p)
            .unwrap()
            .into_iter()
            .filter(|n| !n.starts_with(b"security."))
            .collect();
        v.sort();
        v
    };
    for (root, label) in [(m.path().to_path_buf(), "mount"), (su.clone(), "upper")] {
        for name in ["meta", "data"] {
            let p = root.join(name);
            let md = fs::symlink_metadata(&p).unwrap();
            expect(
                format!("{label}/{name}: mode {:o}, want 104755", md.mode()),
                md.mode() == 0o104755,
            );
            expect(
                format!("{label}/{name}: owner {}:{}", md.uid(), md.gid()),
                (md.uid(), md.gid()) == (1234, 5678),
            );
            let mut xs = visible(&p);
            if label == "upper" {
                xs.retain(|n| {
                    !n.starts_with(b"user.stratafs.") && !n.starts_with(b"trusted.stratafs.")
                });
            }
            let mut want: Vec<Vec<u8>> = want_x.iter().map(|x| x.to_vec()).collect();
            if name == "meta" {
                want.push(b"user.trigger".to_vec());
                want.sort();
            }
            expect(
                format!(
                    "{label}/{name}: xattrs {:?}, want {:?}",
                    xs.iter()
                        .map(|x| x.escape_ascii().to_string())
                        .collect::<Vec<_>>(),
                    want.iter()
                        .map(|x| x.escape_ascii().to_string())
                        .collect::<Vec<_>>()
                ),
                xs == want,
            );
            let ext = extents(&p);
            let want_ext: Vec<(i64, i64)> = if name == "meta" {
                lower_extents.clone()
            } else {
                vec![
                    lower_extents[0],
                    (lower_extents[1].0, lower_extents[1].1 + 1),
                ]
            };
            // The last extent of "data" may end at a block boundary or at EOF.
            let ext_ok = ext.len() == 2
                && ext[0] == want_ext[0]
                && ext[1].0 == want_ext[1].0
                && ext[1].1 >= lower_extents[1].1;
            expect(
                format!("{label}/{name}: data extents {ext:?}, want {want_ext:?}"),
                ext_ok,
            );
            if label == "upper" {
                expect(
                    format!(
                        "upper/{name}: {} blocks allocated for 128 KiB of data (holes filled?)",
                        md.blocks()
                    ),
                    md.blocks() * 512 <= 512 * 1024,
                );
            }
        }
        let md = fs::symlink_metadata(root.join("meta")).unwrap();
        expect(
            format!(
                "{label}/meta: mtime {}.{} after a metadata-only copy-up, want {}.{}",
                md.mtime(),
                md.mtime_nsec(),
                lower_md.mtime(),
                lower_md.mtime_nsec()
            ),
            (md.mtime(), md.mtime_nsec()) == (lower_md.mtime(), lower_md.mtime_nsec()),
        );
        let d = fs::symlink_metadata(root.join("dir")).unwrap();
        expect(
            format!(
                "{label}/dir: mode {:o} owner {}:{}",
                d.mode(),
                d.uid(),
                d.gid()
            ),
            d.mode() == 0o42750 && (d.uid(), d.gid()) == (1234, 5678),
        );
        let mut dx = visible(&root.join("dir"));
        if label == "upper" {
            dx.retain(|n| {
                !n.starts_with(b"user.stratafs.") && !n.starts_with(b"trusted.stratafs.")
            });
        }
        expect(
            format!(
                "{label}/dir: xattrs {:?}",
                dx.iter()
                    .map(|x| x.escape_ascii().to_string())
                    .collect::<Vec<_>>()
            ),
            dx == vec![b"user.d".to_vec()],
        );
        let s = fs::symlink_metadata(root.join("sym")).unwrap();
        expect(
            format!(
                "{label}/sym: owner {}:{} mtime {}.{}",
                s.uid(),
                s.gid(),
                s.mtime(),
                s.mtime_nsec()
            ),
            (s.uid(), s.gid()) == (1234, 42) && (s.mtime(), s.mtime_nsec()) == (1_111_111_000, 5),
        );
        expect(
            format!("{label}/sym: target"),
            fs::read_link(root.join("sym")).unwrap() == Path::new("meta"),
        );
    }
    for name in ["meta", "data"] {
        let want = {
            let mut v = fs::read(base.path(name)).unwrap();
            if name == "data" {
                v.push(b'!');
            }
            v
        };
        expect(
            format!("mount/{name}: content"),
            fs::read(m.join(name)).unwrap() == want,
        );
    }
    m.unmount();
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("copy-up preservation", &problems)
    );
}

/// A workdir left dirty (a crash) is emptied at mount: nothing of it shows through the mount
/// or ends up in upper; after the unmount only what the implementation keeps is left.
#[test]
fn dirty_workdir_is_cleaned_at_mount() {
    require_root();
    let env = TestEnv::new("ws-dirtywork");
    let base = env.layer("base");
    base.file("f", "lower");
    let stack = env.stack(&[&base]);
    let (su, sw) = rw_dirs(&env, "rw");
    fs::write(su.join("already"), "in upper").unwrap();
    // Junk of every kind, including things that look like stratafs' own scratch entries.
    fs::write(sw.join("#1234.5"), "half a copy-up").unwrap();
    fs::create_dir_all(sw.join("#99.1/deep/er")).unwrap();
    fs::write(sw.join("#99.1/deep/er/file"), "x").unwrap();
    fs::create_dir(sw.join("readonly")).unwrap();
    fs::write(sw.join("readonly/f"), "x").unwrap();
    fs::set_permissions(sw.join("readonly"), fs::Permissions::from_mode(0o500)).unwrap();
    fs::create_dir(sw.join("work")).unwrap(); // what kernel overlayfs leaves
    mknod(&sw.join("work/#1"), libc::S_IFCHR | 0o600, 0, 0).unwrap();
    mknod(&sw.join("fifo"), libc::S_IFIFO | 0o600, 0, 0).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", sw.join("symlink")).unwrap();
    fs::write(sw.join("xattr"), "").unwrap();
    lsetxattr(&sw.join("xattr"), b"trusted.overlay.opaque", b"y").unwrap();
    fs::write(sw.join(".stratafs.lock"), "stale").unwrap();
    let m = stack.stratafs_rw(&UpperSpec::new(&su, &sw));
    let live = workdir_leftovers(&sw);
    assert_eq!(
        live,
        Vec::<String>::new(),
        "workdir junk left while mounted"
    );
    let view = Snapshot::take(m.path());
    view.assert_children("", &["already", "f"]);
    fs::write(m.join("f"), "changed").unwrap();
    m.unmount();
    assert_eq!(workdir_leftovers(&sw), Vec::<String>::new());
    assert!(fs::read("/etc/passwd").is_ok(), "symlink target untouched");
    let up = Snapshot::take(&su);
    up.assert_children("", &["already", "f"]);
}

/// A second mount using a workdir that a live stratafs uses is refused: non-zero exit, one
/// clear message, nothing mounted, no daemon left; the first mount keeps working; once it is
/// unmounted the workdir can be used again.
#[test]
fn second_mount_on_a_live_workdir_is_refused() {
    require_root();
    let env = TestEnv::new("ws-lock");
    let base = env.layer("base");
    base.file("f", "lower");
    let stack = env.stack(&[&base]);
    let (su, sw) = rw_dirs(&env, "rw");
    let spec = UpperSpec::new(&su, &sw);
    let m = stack.stratafs_rw(&spec);
    let (su2, _) = rw_dirs(&env, "rw2");
    for (upper, foreground) in [(&su, false), (&su2, false), (&su2, true)] {
        let mnt2 = env.fresh_dir("mnt/second");
        let spec2 = UpperSpec::new(upper, &sw);
        let out = run_timeout(
            &mut mount_command_with(&stack.lowers, Some(&spec2), &mnt2, foreground),
            Duration::from_secs(30),
        );
        let mounted = is_mounted(&mnt2);
        if mounted {
            let _ = run_timeout(
                Command::new("umount").arg("-l").arg(&mnt2),
                Duration::from_secs(10),
            );
        }
        let left = pids_with_arg(&mnt2);
        for &p in &left {
            // SAFETY: kill(2) of a stray daemon this test started.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        let what = format!(
            "second mount (same workdir, {} upper, foreground={foreground})",
            if *upper == su { "same" } else { "other" }
        );
        assert!(
            out.status.is_some(),
            "{what}: did not exit: {}",
            out.describe()
        );
        assert!(!out.success(), "{what}: succeeded: {}", out.describe());
        assert!(!mounted, "{what}: mounted something");
        assert!(left.is_empty(), "{what}: left a daemon running");
        let err = out.stderr_str();
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{what}: want one line on stderr: {err:?}");
        assert!(
            err.to_lowercase().contains("work"),
            "{what}: the message should name the workdir problem: {err:?}"
        );
    }
    // The first mount is unaffected.
    fs::write(m.join("f"), "changed").unwrap();
    assert_eq!(fs::read(m.join("f")).unwrap(), b"changed");
    m.unmount();
    let m = stack.stratafs_rw(&spec);
    assert_eq!(fs::read(m.join("f")).unwrap(), b"changed");
    m.unmount();
}

/// A deterministic pattern with no zero byte (a partially copied file would show zeros).
fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 4096 + i * 7 + salt as usize) % 251) as u8 + 1)
        .collect()
}

/// Readers during a copy-up see consistent data: an fd opened read-only before the copy-up
/// reads either the old or the new content of every range; opens during the copy-up never see
/// a partial file (size or bytes); a new open after it sees the new content.
#[test]
fn readers_during_copy_up_see_consistent_data() {
    require_root();
    let env = TestEnv::new("ws-readers");
    let base = env.layer("base");
    const BIG: usize = 48 << 20;
    const MODSZ: usize = 8 << 20;
    let big = pattern(BIG, 1);
    let modf = pattern(MODSZ, 2);
    base.file("big", &big);
    base.file("mod", &modf);
    let stack = env.stack(&[&base]);
    let (su, sw) = rw_dirs(&env, "rw");
    let m = stack.stratafs_rw(&UpperSpec::new(&su, &sw));
    let root = m.path().to_path_buf();
    let big = Arc::new(big);

    // 1. Appending to "big" (copy-up of 48 MiB) while readers open and read it.
    let early = fs::File::open(root.join("big")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    early.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..], &big[..1 << 20]);
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|t| {
            let (root, big, done) = (root.clone(), big.clone(), done.clone());
            std::thread::spawn(move || -> Result<usize, String> {
                let mut rng = Rng::new(t);
                let mut rounds = 0;
                let mut buf = vec![0u8; 65536];
                while !done.load(Ordering::SeqCst) || rounds < 3 {
                    rounds += 1;
                    let f = fs::File::open(root.join("big")).map_err(|e| format!("open: {e}"))?;
                    let len = f.metadata().map_err(|e| e.to_string())?.len() as usize;
                    if len != BIG && len != BIG + 4 {
                        return Err(format!("size {len} seen during the copy-up"));
                    }
                    let l = fs::symlink_metadata(root.join("big")).unwrap().len() as usize;
                    if l != BIG && l != BIG + 4 {
                        return Err(format!("lstat size {l} seen during the copy-up"));
                    }
                    for _ in 0..4 {
                        let off = rng.below((BIG - buf.len()) as u64) as usize;
                        f.read_exact_at(&mut buf, off as u64)
                            .map_err(|e| format!("read at {off}: {e}"))?;
                        if buf[..] != big[off..off + buf.len()] {
                            return Err(format!("wrong bytes at {off} during the copy-up"));
                        }
                    }
                }
                Ok(rounds)
            })
        })
        .collect();
    {
        let mut w = fs::OpenOptions::new()
            .append(true)
            .open(root.join("big"))
            .unwrap();
        w.write_all(b"TAIL").unwrap();
    }
    done.store(true, Ordering::SeqCst);
    for r in readers {
        r.join().unwrap().unwrap_or_else(|e| panic!("reader: {e}"));
    }
    // The early fd: old or new, consistently (identical below BIG; at BIG: nothing or TAIL).
    let last = (BIG - buf.len()) as u64;
    early.read_exact_at(&mut buf, last).unwrap();
    assert_eq!(&buf[..], &big[last as usize..]);
    let mut tail = [0u8; 8];
    let n = early.read_at(&mut tail, BIG as u64).unwrap();
    assert!(
        n == 0 || &tail[..n] == b"TAIL",
        "early fd read {:?} past the old end",
        &tail[..n]
    );
    let mut now = Vec::new();
    fs::File::open(root.join("big"))
        .unwrap()
        .read_to_end(&mut now)
        .unwrap();
    assert_eq!(now.len(), BIG + 4, "a new open sees the new size");
    assert!(
        now[..BIG] == big[..] && &now[BIG..] == b"TAIL",
        "new open: new content"
    );
    drop(early);

    // 2. An in-place change: the early fd sees the old or the new bytes, a new open the new.
    let early = fs::File::open(root.join("mod")).unwrap();
    early.read_exact_at(&mut buf, 0).unwrap();
    let off = 4 << 20;
    {
        let w = fs::OpenOptions::new()
            .write(true)
            .open(root.join("mod"))
            .unwrap();
        w.write_all_at(b"XXXX", off as u64).unwrap();
    }
    let mut got = [0u8; 4];
    early.read_exact_at(&mut got, off as u64).unwrap();
    assert!(
        got == modf[off..off + 4] || &got == b"XXXX",
        "early fd read {got:?}: neither old nor new"
    );
    let mut around = vec![0u8; 8192];
    early
        .read_exact_at(&mut around, (off - 4096) as u64)
        .unwrap();
    assert_eq!(
        &around[..4096],
        &modf[off - 4096..off],
        "early fd: bytes around the change"
    );
    let fresh = fs::File::open(root.join("mod")).unwrap();
    fresh.read_exact_at(&mut got, off as u64).unwrap();
    assert_eq!(&got, b"XXXX", "a new open sees the new data");
    drop((early, fresh));
    m.unmount();
}

/// ENOSPC during a copy-up: appending to a 4 MiB lower file fails with ENOSPC (at the open
/// or at the write), an extending truncate too; the merged view still shows the old content
/// and size, nothing partial is left in upper or workdir, the space is given back, and the
/// mount still works. `fs_root` is the small filesystem holding upper and work.
fn check_enospc(stack: &Stack<'_>, fs_root: &Path, su: &Path, sw: &Path, content: &[u8]) {
    let m = stack.stratafs_rw(&UpperSpec::new(su, sw));
    let used = || {
        let st = statvfs(fs_root).unwrap();
        (st.f_blocks - st.f_bfree) * st.f_frsize
    };
    let used_before = used();
    let attempt = || -> Result<(), String> {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(m.join("big"))
            .map_err(|e| format!("open: {}", errno_of(&e)))?;
        f.write_all(b"x")
            .map_err(|e| format!("write: {}", errno_of(&e)))?;
        f.sync_all()
            .map_err(|e| format!("fsync: {}", errno_of(&e)))?;
        drop(f);
        Ok(())
    };
    let r = attempt();
    assert!(
        matches!(&r, Err(e) if e.ends_with("ENOSPC")),
        "appending to a 4 MiB lower file with 2 MiB free for upper: {r:?}"
    );
    let trunc = fs::OpenOptions::new()
        .write(true)
        .open(m.join("big"))
        .and_then(|f| f.set_len(5 << 20));
    assert!(
        matches!(&trunc, Err(e) if e.raw_os_error() == Some(libc::ENOSPC)),
        "extending truncate: {trunc:?}"
    );
    let md = fs::symlink_metadata(m.join("big")).unwrap();
    assert_eq!(md.len(), 4 << 20, "size after the failed copy-up");
    assert!(
        fs::read(m.join("big")).unwrap() == content,
        "content after the failed copy-up"
    );
    // Nothing partial: no file of that name in upper, workdir clean, space given back.
    assert!(
        fs::symlink_metadata(su.join("big")).is_err(),
        "a partial copy is in upper"
    );
    assert_eq!(workdir_leftovers(sw), Vec::<String>::new());
    let used_after = used();
    assert!(
        used_after <= used_before + 64 * 1024,
        "space not given back: {used_before} bytes used before, {used_after} after"
    );
    // The mount still works.
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("small"))
        .unwrap()
        .write_all(b"more\n")
        .unwrap();
    assert_eq!(fs::read(m.join("small")).unwrap(), b"small\nmore\n");
    m.unmount();
    assert_eq!(workdir_leftovers(sw), Vec::<String>::new());
    let (bytes, files) = file_bytes(su);
    assert_eq!(
        (bytes, files),
        (11, 1),
        "upper holds only the changed small file"
    );
}

/// ENOSPC during a copy-up, upper+work on a 2 MiB tmpfs, the lower elsewhere.
#[test]
fn enospc_during_copy_up_leaves_the_old_content() {
    require_root();
    let env = TestEnv::new("ws-enospc");
    let base = env.layer("base");
    let content = pattern(4 << 20, 3);
    base.file("big", &content);
    base.file("small", "small\n");
    let stack = env.stack(&[&base]);
    let small = env.mount_tmpfs_opts("small", "mode=0755,size=2M");
    let (su, sw) = upper_work(&small.join("s"));
    check_enospc(&stack, &small, &su, &sw, &content);
}

/// ENOSPC during a copy-up, with the lower layer on the same (6 MiB) filesystem as upper and
/// work, so that the copy itself can use copy_file_range/reflink.
#[test]
fn enospc_during_copy_up_same_filesystem() {
    require_root();
    let env = TestEnv::new("ws-enospc-same");
    let fsroot = env.mount_tmpfs_opts("fs", "mode=0755,size=6M");
    let base = Layer::new(fsroot.join("lower"));
    let content = pattern(4 << 20, 4);
    base.file("big", &content);
    base.file("small", "small\n");
    let stack = env.stack(&[&base]);
    let (su, sw) = upper_work(&fsroot.join("s"));
    check_enospc(&stack, &fsroot, &su, &sw, &content);
}

/// Several threads trigger the copy-up of the same lower file (appending) and of the same
/// lower directories (creating entries) at once: one copy-up, no lost write, no lost entry.
#[test]
fn concurrent_copy_ups_of_one_file_and_one_directory() {
    require_root();
    let env = TestEnv::new("ws-concurrent");
    let base = env.layer("base");
    let big = pattern(8 << 20, 5);
    base.file("f", &big);
    for d in 0..4 {
        base.file(format!("d{d}/lower"), "lower");
    }
    let stack = env.stack(&[&base]);
    let (su, sw) = rw_dirs(&env, "rw");
    let m = stack.stratafs_rw(&UpperSpec::new(&su, &sw));
    let root = m.path().to_path_buf();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let root = root.clone();
            std::thread::spawn(move || {
                let mut f = fs::OpenOptions::new()
                    .append(true)
                    .open(root.join("f"))
                    .unwrap();
                f.write_all(format!("<{t}>").as_bytes()).unwrap();
                for d in 0..4 {
                    fs::write(root.join(format!("d{d}/t{t}")), format!("{t}")).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let d = fs::read(m.join("f")).unwrap();
    assert!(
        d.len() == big.len() + 24 && d[..big.len()] == big[..],
        "f after 8 appends"
    );
    let mut tags: Vec<&[u8]> = d[big.len()..].chunks(3).collect();
    tags.sort();
    let want: Vec<String> = (0..8).map(|t| format!("<{t}>")).collect();
    assert_eq!(
        tags,
        want.iter().map(|s| s.as_bytes()).collect::<Vec<_>>(),
        "appended tags"
    );
    for d in 0..4 {
        let mut names: Vec<String> = fs::read_dir(m.join(format!("d{d}")))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want: Vec<String> = (0..8).map(|t| format!("t{t}")).collect();
        want.push("lower".into());
        want.sort();
        assert_eq!(names, want, "d{d}");
    }
    m.unmount();
    assert_eq!(workdir_leftovers(&sw), Vec::<String>::new());
}

/// No global lock across a copy-up: while a 256 MiB file is being copied up (its scratch
/// entry is in the workdir, or its nameless file open in the daemon), first lookups and reads of 50 files in another directory
/// complete. An ordering check, not a timing one: the lookups must finish before the
/// copy-up does.
#[test]
fn a_long_copy_up_does_not_stall_other_requests() {
    require_root();
    let env = TestEnv::new("ws-nostall");
    let base = env.layer("base");
    {
        let mut f = fs::File::create(base.path("huge")).unwrap();
        let chunk = pattern(1 << 20, 6);
        for _ in 0..256 {
            f.write_all(&chunk).unwrap();
        }
    }
    for i in 0..50 {
        base.file(format!("other/f{i}"), format!("file {i}"));
    }
    let stack = env.stack(&[&base]);
    let (su, sw) = rw_dirs(&env, "rw");
    let m = stack.stratafs_rw(&UpperSpec::new(&su, &sw));
    let root = m.path().to_path_buf();
    let copy_done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (root, copy_done) = (root.clone(), copy_done.clone());
        std::thread::spawn(move || {
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(root.join("huge"))
                .unwrap();
            f.write_all(b"!").unwrap();
            copy_done.store(true, Ordering::SeqCst);
        })
    };
    // Wait (without a clock) until the copy-up is visibly in progress.
    let mut in_progress = false;
    while !copy_done.load(Ordering::SeqCst) {
        if copy_in_progress(&sw, m.daemon_pids()) {
            in_progress = true;
            break;
        }
        std::thread::yield_now();
    }
    let mut finished_first = false;
    if in_progress {
        for i in 0..50 {
            let p = root.join(format!("other/f{i}"));
            fs::symlink_metadata(&p).unwrap();
            assert_eq!(fs::read(&p).unwrap(), format!("file {i}").as_bytes());
        }
        finished_first = !copy_done.load(Ordering::SeqCst);
    }
    writer.join().unwrap();
    assert!(
        in_progress,
        "the copy-up finished before it was seen in the workdir (inconclusive)"
    );
    assert!(
        finished_first,
        "lookups and reads in another directory waited for a 256 MiB copy-up to finish"
    );
    assert_eq!(
        fs::symlink_metadata(m.join("huge")).unwrap().len(),
        (256 << 20) + 1
    );
    m.unmount();
}

/// Hard links of a lower file that the mount has seen stay one file through copy-up: a write
/// through one name shows through the other, also after the kernel drops its caches and after
/// a remount; removing one name never loses what is written through another.
#[test]
fn lower_hard_links_seen_by_the_mount_survive_copy_up() {
    require_root();
    let env = TestEnv::new("ws-hardlinks");
    let base = env.layer("base");
    base.file("a", "orig\n");
    base.hardlink("a", "b");
    base.file("c", "one\n");
    base.hardlink("c", "sub/d");
    let stack = env.stack(&[&base]);
    let (upper, work) = rw_dirs(&env, "rw");
    {
        let m = stack.stratafs_rw(&UpperSpec::new(&upper, &work));
        // Both names known to the mount, then one removed: writes through the other stay.
        let ino_a = fs::symlink_metadata(m.join("a")).unwrap().ino();
        assert_eq!(fs::symlink_metadata(m.join("b")).unwrap().ino(), ino_a);
        fs::remove_file(m.join("a")).unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(m.join("b"))
            .unwrap()
            .write_all(b"x\n")
            .unwrap();
        drop_kernel_caches();
        assert_eq!(fs::read_to_string(m.join("b")).unwrap(), "orig\nx\n");
        assert!(fs::symlink_metadata(m.join("a")).is_err());

        // A write through one name of a pair in different directories.
        let ino_c = fs::symlink_metadata(m.join("c")).unwrap().ino();
        assert_eq!(fs::symlink_metadata(m.join("sub/d")).unwrap().ino(), ino_c);
        fs::write(m.join("c"), "new\n").unwrap();
        drop_kernel_caches();
        assert_eq!(fs::read_to_string(m.join("c")).unwrap(), "new\n");
        assert_eq!(fs::read_to_string(m.join("sub/d")).unwrap(), "new\n");
        assert_eq!(fs::symlink_metadata(m.join("sub/d")).unwrap().nlink(), 2);
        m.unmount();
    }
    let m = stack.stratafs_rw(&UpperSpec::new(&upper, &work));
    assert_eq!(fs::read_to_string(m.join("b")).unwrap(), "orig\nx\n");
    assert_eq!(fs::read_to_string(m.join("c")).unwrap(), "new\n");
    assert_eq!(fs::read_to_string(m.join("sub/d")).unwrap(), "new\n");
    assert_eq!(
        fs::symlink_metadata(m.join("c")).unwrap().ino(),
        fs::symlink_metadata(m.join("sub/d")).unwrap().ino()
    );
    m.unmount();
}

/// Metadata-only copy-up on disk and across remounts (issue 8): chmod of a 64 MiB lower file
/// leaves a sparse placeholder (no data blocks) marked for the kernel's `metacopy=on` with a
/// redirect to its data; st_ino, size and st_blocks stay the lower file's; reads come from the
/// lower layer, also after a remount and after the directory holding it is renamed and the
/// mount remounted again; the first write fills it in place and drops the marks.
#[test]
fn metadata_only_copy_up_on_disk_and_across_remounts() {
    require_root();
    let env = TestEnv::new("ws-metacopy");
    let base = env.layer("base");
    let content = gen_bytes(3, 64 << 20);
    base.file("d/big", content.clone());
    let stack = env.stack(&[&base]);
    let (su, sw) = upper_work(&env.fresh_dir("rw"));
    let spec = UpperSpec::new(&su, &sw);
    let mut problems = Vec::new();
    let mut expect = |what: String, ok: bool| {
        if !ok {
            problems.push(what);
        }
    };

    let m = stack.stratafs_rw(&spec);
    let before = fs::metadata(m.join("d/big")).unwrap();
    fs::set_permissions(m.join("d/big"), fs::Permissions::from_mode(0o600)).unwrap();
    let up = fs::metadata(su.join("d/big")).unwrap();
    expect(
        format!(
            "placeholder holds {} blocks of data; want none (an xattr block at most)",
            up.blocks()
        ),
        up.blocks() * 512 <= 8192 && up.len() == content.len() as u64,
    );
    expect(
        "placeholder lacks trusted.overlay.metacopy or its redirect".into(),
        lgetxattr(&su.join("d/big"), b"trusted.overlay.metacopy").is_ok()
            && lgetxattr(&su.join("d/big"), b"trusted.overlay.redirect")
                .as_deref()
                .ok()
                == Some(&b"/d/big"[..]),
    );
    let after = fs::metadata(m.join("d/big")).unwrap();
    expect(
        format!(
            "after chmod: ino {} blocks {} size {} mode {:o}; want ino {} blocks {} size {} mode 100600",
            after.ino(),
            after.blocks(),
            after.len(),
            after.mode(),
            before.ino(),
            before.blocks(),
            before.len()
        ),
        after.ino() == before.ino()
            && after.blocks() == before.blocks()
            && after.len() == before.len()
            && after.mode() == 0o100600,
    );
    expect(
        "read after chmod".into(),
        fs::read(m.join("d/big")).unwrap() == content,
    );
    m.unmount();

    let m = stack.stratafs_rw(&spec);
    let again = fs::metadata(m.join("d/big")).unwrap();
    expect(
        format!("after remount: ino {} mode {:o}", again.ino(), again.mode()),
        again.ino() == before.ino()
            && again.mode() == 0o100600
            && again.blocks() == before.blocks(),
    );
    expect(
        "read after remount".into(),
        fs::read(m.join("d/big")).unwrap() == content,
    );
    fs::rename(m.join("d"), m.join("d2")).unwrap();
    expect(
        "read after the directory moved".into(),
        fs::read(m.join("d2/big")).unwrap() == content,
    );
    m.unmount();

    let m = stack.stratafs_rw(&spec);
    expect(
        "read after the move and a remount".into(),
        fs::read(m.join("d2/big")).unwrap() == content,
    );
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("d2/big"))
        .unwrap()
        .write_all(b"x")
        .unwrap();
    let mut want = content.clone();
    want.push(b'x');
    expect(
        "read after the first write".into(),
        fs::read(m.join("d2/big")).unwrap() == want,
    );
    let filled = fs::metadata(m.join("d2/big")).unwrap();
    expect(
        format!(
            "after the write: ino {} mode {:o}",
            filled.ino(),
            filled.mode()
        ),
        filled.ino() == before.ino() && filled.mode() == 0o100600,
    );
    m.unmount();
    let up = su.join("d2/big");
    expect(
        "filled copy still carries a metacopy mark or redirect".into(),
        lgetxattr(&up, b"trusted.overlay.metacopy").is_err()
            && lgetxattr(&up, b"trusted.overlay.redirect").is_err(),
    );
    expect(
        "filled copy has its data".into(),
        fs::read(&up).unwrap() == want && fs::metadata(&up).unwrap().blocks() * 512 >= (64 << 20),
    );
    problems.extend(stack.check_layers());
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("metadata-only copy-up", &problems)
    );
}

/// Hard links of lower files (issue 8): two names of one lower inode stay one file after
/// either is copied up — in the same mount, after a remount, and whichever name is looked up
/// first; st_ino is shared, st_nlink counts every visible name (after unlink and link too);
/// a metadata-only change through one name shows through the others.
#[test]
fn lower_hard_links_stay_one_file_across_copy_up_and_remount() {
    require_root();
    let env = TestEnv::new("ws-hardlinks");
    let base = env.layer("base");
    base.file("a", "data\n");
    base.file("big", gen_bytes(5, 1 << 20));
    fs::create_dir(base.path("d")).unwrap();
    fs::hard_link(base.path("a"), base.path("b")).unwrap();
    fs::hard_link(base.path("a"), base.path("d/c")).unwrap();
    fs::hard_link(base.path("big"), base.path("d/big2")).unwrap();
    let stack = env.stack(&[&base]);
    let (su, sw) = upper_work(&env.fresh_dir("rw"));
    let spec = UpperSpec::new(&su, &sw);
    let mut problems = Vec::new();
    let mut expect = |what: String, ok: bool| {
        if !ok {
            problems.push(what);
        }
    };
    let links = |m: &StratafsMount, names: &[&str]| -> Vec<(u64, u64)> {
        names
            .iter()
            .map(|n| {
                let md = fs::symlink_metadata(m.join(n)).unwrap();
                (md.ino(), md.nlink())
            })
            .collect()
    };

    // Only `a` is looked up before its copy-up.
    let m = stack.stratafs_rw(&spec);
    let ino = fs::metadata(m.join("a")).unwrap().ino();
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("a"))
        .unwrap()
        .write_all(b"more\n")
        .unwrap();
    expect(
        "b and d/c show the write through a".into(),
        fs::read(m.join("b")).unwrap() == b"data\nmore\n"
            && fs::read(m.join("d/c")).unwrap() == b"data\nmore\n",
    );
    let l = links(&m, &["a", "b", "d/c"]);
    expect(
        format!("inode/nlink of a, b, d/c: {l:?}"),
        l.iter().all(|x| *x == (ino, 3)),
    );
    // A metadata-only change through one name of another lower inode.
    fs::set_permissions(m.join("d/big2"), fs::Permissions::from_mode(0o600)).unwrap();
    m.unmount();

    // Remount: `d/c` first, then the others.
    let m = stack.stratafs_rw(&spec);
    expect(
        "after remount, d/c (looked up first) is the copy".into(),
        fs::read(m.join("d/c")).unwrap() == b"data\nmore\n",
    );
    let l = links(&m, &["d/c", "a", "b"]);
    expect(
        format!("after remount: {l:?}"),
        l.iter().all(|x| *x == (ino, 3)),
    );
    let big = fs::metadata(m.join("big")).unwrap();
    expect(
        format!("big shares d/big2's chmod: mode {:o}", big.mode()),
        big.mode() & 0o7777 == 0o600,
    );
    fs::remove_file(m.join("b")).unwrap();
    fs::hard_link(m.join("a"), m.join("e")).unwrap();
    let l = links(&m, &["a", "d/c", "e"]);
    expect(
        format!("after rm b, ln a e: {l:?}"),
        l.iter().all(|x| *x == (ino, 3)),
    );
    m.unmount();

    let m = stack.stratafs_rw(&spec);
    let l = links(&m, &["e", "d/c", "a"]);
    expect(
        format!("after a second remount: {l:?}"),
        l.iter().all(|x| *x == (ino, 3)),
    );
    expect(
        "b stays deleted".into(),
        fs::symlink_metadata(m.join("b")).is_err(),
    );
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("e"))
        .unwrap()
        .write_all(b"e\n")
        .unwrap();
    expect(
        "a sees a write through e".into(),
        fs::read(m.join("a")).unwrap() == b"data\nmore\ne\n",
    );
    m.unmount();
    problems.extend(stack.check_layers());
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("lower hard links", &problems)
    );
}

/// A default ACL granting uid 1000 read and execute (`user::rwx,user:1000:r-x,group::r-x,
/// mask::r-x,other::r-x` in the kernel's xattr form), so that new entries get an access ACL.
fn default_acl() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 7u16, u32::MAX),
        (0x02, 5, 1000),
        (0x04, 5, u32::MAX),
        (0x10, 5, u32::MAX),
        (0x20, 5, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// New entries list the xattrs kernel overlayfs shows for them: none in a plain directory,
/// the inherited ACLs under a default ACL, in both an upper directory and a lower one copied
/// up by the create, with the parents' xattrs listed first (so the daemon may have them
/// cached) and a file written before it is listed.
#[test]
fn new_entries_list_inherited_acls_like_the_kernel() {
    require_root();
    let env = TestEnv::new("ws-new-acl");
    let base = env.layer("base");
    base.dir("lower-plain");
    base.dir("lower-acl")
        .xattr("system.posix_acl_default", &default_acl());
    let stack = env.stack(&[&base]);
    let dirs = ["plain", "acl", "lower-plain", "lower-acl"];
    let act = |root: &Path| -> Vec<String> {
        fs::create_dir(root.join("plain")).unwrap();
        fs::create_dir(root.join("acl")).unwrap();
        lsetxattr(
            &root.join("acl"),
            b"system.posix_acl_default",
            &default_acl(),
        )
        .unwrap();
        let mut seen: Vec<String> = dirs.iter().map(|d| visible_xattr_names(root, d)).collect();
        for d in dirs {
            let mut f = fs::File::create(root.join(d).join("f")).unwrap();
            f.write_all(b"data").unwrap();
            drop(f);
            fs::create_dir(root.join(d).join("sub")).unwrap();
            seen.push(visible_xattr_names(root, &format!("{d}/f")));
            seen.push(visible_xattr_names(root, &format!("{d}/sub")));
        }
        seen
    };
    let (kernel, ours) = stack.on_kernel_then_stratafs(act);
    assert_eq!(ours, kernel, "stratafs vs kernel overlay");
    // The oracle itself: ACLs where a default ACL is inherited, nothing elsewhere.
    for d in ["acl", "lower-acl"] {
        assert!(
            kernel.contains(&format!("{d}/f: system.posix_acl_access")),
            "{kernel:?}"
        );
    }
    for d in ["plain", "lower-plain"] {
        assert!(kernel.contains(&format!("{d}/f: ")), "{kernel:?}");
    }
    stack.assert_layers_unchanged();
}
