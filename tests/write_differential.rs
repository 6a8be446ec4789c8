//! The writable layer against kernel overlayfs: scripted scenarios for every mutating operation
//! of issue 3, and seeded random sequences. Each run compares every step's result (output or
//! exact errno), then the whole merged tree, the meaning of the upper directory for the kernel,
//! the upper's on-disk rules, the view after a remount, the workdir, and the lower layers. See
//! `common/differential.rs` for what is (and is deliberately not) compared.
//!
//! Random sequences: `STRATAFS_DIFF_SEEDS=N` seeds per test, `STRATAFS_DIFF_OPS=N` ops per seed,
//! `STRATAFS_DIFF_SEED=S` one seed, `STRATAFS_DIFF_SHRINK=N` replays to minimize a failure.

mod common;

use common::differential::*;
use common::*;
use libc::{
    EEXIST, EINVAL, EISDIR, ENODATA, ENOENT, ENOTDIR, ENOTEMPTY, EPERM, O_APPEND, O_CREAT, O_EXCL,
    O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY, RENAME_EXCHANGE, RENAME_NOREPLACE,
};

// ---- op constructors (keep the scenarios readable) ----

fn open(slot: usize, path: &str, flags: i32) -> Step {
    Step::new(Op::Open {
        slot,
        path: path.into(),
        flags,
        mode: 0o644,
    })
}
fn open_mode(slot: usize, path: &str, flags: i32, mode: u32) -> Step {
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
fn pwrite(slot: usize, off: u64, data: &str) -> Step {
    Step::new(Op::Pwrite {
        slot,
        off,
        data: Data::lit(data),
    })
}
fn pwrite_gen(slot: usize, off: u64, seed: u64, len: usize) -> Step {
    Step::new(Op::Pwrite {
        slot,
        off,
        data: Data::Gen { seed, len },
    })
}
fn write(slot: usize, data: &str) -> Step {
    Step::new(Op::Write {
        slot,
        data: Data::lit(data),
    })
}
fn pread(slot: usize, off: u64, len: usize) -> Step {
    Step::new(Op::Pread { slot, off, len })
}
fn ftruncate(slot: usize, len: u64) -> Step {
    Step::new(Op::Ftruncate { slot, len })
}
fn fallocate(slot: usize, mode: i32, off: u64, len: u64) -> Step {
    Step::new(Op::Fallocate {
        slot,
        mode,
        off,
        len,
    })
}
fn cfr(src: usize, dst: usize, off_in: u64, off_out: u64, len: usize) -> Step {
    Step::new(Op::CopyFileRange {
        src,
        dst,
        off_in,
        off_out,
        len,
    })
}
fn fsync(slot: usize) -> Step {
    Step::new(Op::Fsync { slot })
}
fn fstat(slot: usize) -> Step {
    Step::new(Op::Fstat { slot })
}
fn fchmod(slot: usize, mode: u32) -> Step {
    Step::new(Op::Fchmod { slot, mode })
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
fn mkdir(path: &str) -> Step {
    Step::new(Op::Mkdir {
        path: path.into(),
        mode: 0o755,
    })
}
fn rmdir(path: &str) -> Step {
    Step::new(Op::Rmdir { path: path.into() })
}
fn unlink(path: &str) -> Step {
    Step::new(Op::Unlink { path: path.into() })
}
fn rename(from: &str, to: &str) -> Step {
    rename2(from, to, 0)
}
fn rename2(from: &str, to: &str, flags: u32) -> Step {
    Step::new(Op::Rename {
        from: from.into(),
        to: to.into(),
        flags,
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
fn utimens(path: &str, atime: TimeArg, mtime: TimeArg, nofollow: bool) -> Step {
    Step::new(Op::Utimens {
        path: path.into(),
        atime,
        mtime,
        nofollow,
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
fn stat(path: &str) -> Step {
    Step::new(Op::Stat { path: path.into() })
}
fn readdir(path: &str) -> Step {
    Step::new(Op::Readdir { path: path.into() })
}
fn readlink(path: &str) -> Step {
    Step::new(Op::Readlink { path: path.into() })
}
fn fsync_path(path: &str) -> Step {
    Step::new(Op::FsyncPath { path: path.into() })
}

fn names(v: &[(&str, Kind)]) -> Out {
    Out::Names(v.iter().map(|(n, k)| (n.to_string(), *k)).collect())
}

fn kernel_layers(env: &TestEnv) -> Vec<Layer> {
    standard_layers(env, LowerMarkers::Kernel)
}
fn oci_layers(env: &TestEnv) -> Vec<Layer> {
    standard_layers(env, LowerMarkers::Oci)
}
fn user_xattr_layers(env: &TestEnv) -> Vec<Layer> {
    standard_layers(env, LowerMarkers::UserXattr)
}

fn cfg(name: &str) -> DiffConfig {
    DiffConfig::new(name, kernel_layers)
}

/// Runs a scenario in the default configuration and again with the upper written in the OCI
/// dialect over OCI-marked lowers (the step results and views must be the same).
fn check_both_dialects(name: &str, steps: Vec<Step>) {
    check_script(&cfg(name), steps.clone());
    let mut c = DiffConfig::new(&format!("{name}-oci"), oci_layers);
    c.whiteout = Some(UpperDialect::Oci);
    check_script(&c, steps);
}

// ---- scripted scenarios ----

/// Opening existing lower files with O_TRUNC, O_APPEND, O_EXCL, O_CREAT, writes at offsets,
/// truncate/ftruncate (shrink, extend), symlinks followed by open, FIFOs and directories.
#[test]
fn open_flags_write_truncate() {
    require_root();
    check_both_dialects(
        "wd-open",
        vec![
            open(0, "f1", O_WRONLY | O_APPEND).ok(),
            write(0, "more\n").out(Out::Num(5)),
            pwrite(0, 0, "XX").out(Out::Num(2)),
            close(0).ok(),
            read_file("f1").data("top f1\nmore\nXX"),
            open(0, "a/f3", O_RDWR).ok(),
            pwrite(0, 2, "##").ok(),
            pread(0, 0, 100).data("ba## a/f3\n"),
            pwrite_gen(0, 70_000, 1, 5000).ok(),
            pread(0, 0, 80_000),
            fstat(0),
            ftruncate(0, 3).ok(),
            pread(0, 0, 100).data("ba#"),
            ftruncate(0, 200_000).ok(),
            fstat(0),
            close(0).ok(),
            read_file("a/f3"),
            lstat("a"),
            open(1, "a/sub/f4", O_WRONLY | O_TRUNC).ok(),
            close(1).ok(),
            read_file("a/sub/f4").data(""),
            lstat("a/sub"),
            lstat("a/sub/f4"),
            // b is opaque in the top layer: base's b/f6 is not visible, so O_EXCL creates it.
            open(0, "b/f6", O_CREAT | O_EXCL | O_WRONLY).ok(),
            write(0, "new b/f6"),
            close(0).ok(),
            read_file("b/f6").data("new b/f6"),
            open(0, "f1", O_CREAT | O_EXCL | O_WRONLY).err(EEXIST),
            open(0, "zero", O_CREAT | O_RDONLY).ok(),
            close(0).ok(),
            open(0, "big", O_RDONLY | O_TRUNC).ok(),
            fstat(0),
            close(0).ok(),
            lstat("big"),
            truncate("sparse", 100).ok(),
            read_file("sparse"),
            truncate("a/sub/deep/f5", 100_000).ok(),
            read_file("a/sub/deep/f5"),
            truncate("a", 0).err(EISDIR),
            truncate("nothere-either", 0).err(ENOENT),
            // setuid survives a write by root (CAP_FSETID), on both.
            open(0, "suid", O_WRONLY | O_APPEND).ok(),
            write(0, "# appended\n"),
            close(0).ok(),
            lstat("suid"),
            // Through a symlink to a lower file, and through a dangling one (creates its target).
            open(0, "s1", O_WRONLY | O_APPEND).ok(),
            write(0, "via s1\n"),
            close(0).ok(),
            read_file("f1"),
            readlink("s1").data("f1"),
            stat("s1"),
            open(0, "dang", O_CREAT | O_WRONLY).ok(),
            write(0, "created through dang"),
            close(0).ok(),
            lstat("nothere"),
            read_file("dang"),
            open(0, "p", O_RDWR).ok(),
            close(0).ok(),
            open(0, "a", O_RDWR).err(EISDIR),
            open(0, "nonexist/x", O_CREAT | O_WRONLY).err(ENOENT),
            open(0, "f1/x", O_CREAT | O_WRONLY).err(ENOTDIR),
            open_mode(2, "new", O_CREAT | O_RDWR, 0o4755).ok(),
            fstat(2),
            pwrite(2, 10, "after a hole"),
            fsync(2).ok(),
            close(2).ok(),
            read_file("new"),
            fsync_path("a").ok(),
            fsync_path("").ok(),
            readdir(""),
            readdir("a"),
            readdir("a/sub"),
            readdir("b"),
        ],
    );
}

/// fallocate (allocate, keep size, punch hole) and copy_file_range on copied-up and new files.
#[test]
fn fallocate_and_copy_file_range() {
    require_root();
    check_script(
        &cfg("wd-falloc"),
        vec![
            open(0, "big", O_RDWR).ok(),
            fallocate(
                0,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                4096,
                8192,
            )
            .ok(),
            pread(0, 0, 20_000),
            fallocate(0, libc::FALLOC_FL_KEEP_SIZE, 300_000, 100_000).ok(),
            fstat(0),
            fallocate(0, 0, 300_000, 100_000).ok(),
            fstat(0),
            pread(0, 290_000, 120_000),
            open(1, "copy", O_CREAT | O_RDWR).ok(),
            cfr(0, 1, 1000, 0, 50_000).out(Out::Num(50_000)),
            cfr(0, 1, 250_000, 100_000, 200_000),
            fstat(1),
            pread(1, 0, 400_000),
            open(2, "sparse", O_RDWR).ok(),
            cfr(2, 1, 60_000, 10, 10_000).ok(),
            cfr(1, 2, 0, 2_000_000, 5000).ok(),
            fstat(2),
            close(0).ok(),
            close(1).ok(),
            close(2).ok(),
            read_file("copy"),
            read_file("sparse"),
            read_file("big"),
            // O_APPEND destination: EBADF on both.
            open(0, "f1", O_RDONLY | O_TRUNC).ok(),
            open(1, "a/f3", O_WRONLY | O_APPEND).ok(),
            cfr(0, 1, 0, 0, 10),
            close(0).ok(),
            close(1).ok(),
        ],
    );
}

/// chmod (incl. setuid/setgid/sticky), chown (which clears setuid), utimensat (fixed times,
/// UTIME_NOW, UTIME_OMIT, on symlinks), fchmod, on lower files, directories and symlinks.
#[test]
fn metadata_changes() {
    require_root();
    check_both_dialects(
        "wd-meta",
        vec![
            chmod("f1", 0o4755).ok(),
            lstat("f1"),
            chmod("a/f3", 0o2711).ok(),
            lstat("a/f3"),
            lstat("a"),
            chmod("a/sub", 0o1777).ok(),
            lstat("a/sub"),
            lstat("a/sub/f4"),
            chmod("e", 0o700).ok(),
            lstat("e"),
            chmod("s1", 0o600).ok(), // follows the symlink to f1
            lstat("f1"),
            lstat("s1"),
            chown("suid", 1000, 1000).ok(),
            lstat("suid"), // setuid cleared by chown
            chown("ro", 65534, 0).ok(),
            lstat("ro"),
            chown("s1", 1000, 65534).ok(), // lchown of a lower symlink
            lstat("s1"),
            chown("g", 0, 0).ok(),
            lstat("g"),
            lstat("g/f8"),
            utimens(
                "a/f3",
                TimeArg::At(1_234_567_890, 5),
                TimeArg::At(1_234_567_891, 123_456_789),
                false,
            )
            .ok(),
            lstat("a/f3"),
            utimens("b/f7", TimeArg::Now, TimeArg::Now, false).err(ENOENT),
            utimens("b/n1", TimeArg::Omit, TimeArg::At(1_300_000_000, 0), false).ok(),
            lstat("b/n1"),
            utimens("zero", TimeArg::Now, TimeArg::Omit, false).ok(),
            lstat("zero"), // mtime kept (old, compared exactly)
            utimens("xa", TimeArg::Omit, TimeArg::Now, false).ok(),
            lstat("xa"), // mtime fresh on both
            utimens(
                "dang",
                TimeArg::At(1_250_000_000, 0),
                TimeArg::At(1_250_000_000, 1),
                true,
            )
            .ok(),
            lstat("dang"),
            utimens("dang", TimeArg::Now, TimeArg::Now, false).err(ENOENT),
            utimens("", TimeArg::Omit, TimeArg::At(1_260_000_000, 0), false).ok(),
            lstat(""),
            open(0, "owned", O_RDWR).ok(),
            fchmod(0, 0o640).ok(),
            fstat(0),
            close(0).ok(),
            lstat("owned"),
            chmod("c/h", 0).ok(),
            read_file("c/h"),
            lstat("c/h"),
            chmod("p", 0o600).ok(),
            lstat("p"),
            chmod("nothere", 0o600).err(ENOENT),
        ],
    );
}

/// user.* xattrs: set/replace/create/remove/get/list on lower files, directories and symlinks.
#[test]
fn xattrs() {
    require_root();
    check_both_dialects(
        "wd-xattr",
        vec![
            listxattr("xa"),
            getxattr("xa", "user.a").data("1"),
            setxattr("xa", "user.a", "one", libc::XATTR_REPLACE).ok(),
            getxattr("xa", "user.a").data("one"),
            setxattr("xa", "user.c", "3", libc::XATTR_CREATE).ok(),
            setxattr("xa", "user.c", "3", libc::XATTR_CREATE).err(EEXIST),
            setxattr("xa", "user.zz", "3", libc::XATTR_REPLACE).err(ENODATA),
            removexattr("xa", "user.b").ok(),
            removexattr("xa", "user.b").err(ENODATA),
            getxattr("xa", "user.b").err(ENODATA),
            listxattr("xa"),
            lstat("xa"), // mtime untouched by xattr changes and their copy-up
            read_file("xa").data("xattrs\n"),
            setxattr("a", "user.dir", "d", 0).ok(),
            listxattr("a"),
            lstat("a"),
            setxattr("a/sub/deep", "user.deep", "x", 0).ok(),
            lstat("a/sub"),
            lstat("a/sub/deep"),
            setxattr("s1", "user.onlink", "x", 0).err(EPERM),
            setxattr("p", "user.onfifo", "x", 0).err(EPERM),
            removexattr("f1", "user.none").err(ENODATA),
            setxattr("f1", "user.big", &"v".repeat(3000), 0).ok(),
            getxattr("f1", "user.big"),
            setxattr("f1", "user.empty", "", 0).ok(),
            getxattr("f1", "user.empty").data(""),
            listxattr("f1"),
            listxattr("s1"),
            listxattr(""),
        ],
    );
}

/// unlink/rmdir of lower entries (whiteouts), emptiness of merged directories across layers
/// (ENOTEMPTY as the kernel), EISDIR/ENOTDIR, recreating names.
#[test]
fn unlink_and_rmdir() {
    require_root();
    check_both_dialects(
        "wd-unlink",
        vec![
            unlink("f1").ok(),
            lstat("f1").err(ENOENT),
            read_file("s1").err(ENOENT),
            unlink("f1").err(ENOENT),
            open(0, "f1", O_CREAT | O_WRONLY).ok(),
            write(0, "recreated"),
            close(0).ok(),
            read_file("f1").data("recreated"),
            unlink("f1").ok(),
            unlink("s1").ok(),
            unlink("p").ok(),
            unlink("dang").ok(),
            unlink("a").err(EISDIR),
            rmdir("zero").err(ENOTDIR),
            rmdir("e").ok(),
            lstat("e").err(ENOENT),
            // a: merged from base (f2 whited out by top, f3, sub) and top (g).
            rmdir("a").err(ENOTEMPTY),
            unlink("a/g").ok(),
            rmdir("a").err(ENOTEMPTY),
            unlink("a/f3").ok(),
            rmdir("a").err(ENOTEMPTY),
            rmdir("a/sub").err(ENOTEMPTY),
            unlink("a/sub/deep/f5").ok(),
            rmdir("a/sub/deep").ok(),
            unlink("a/sub/f4").ok(),
            readdir("a/sub").out(names(&[])),
            rmdir("a/sub").ok(),
            readdir("a").out(names(&[])),
            rmdir("a").ok(),
            lstat("a").err(ENOENT),
            // b: opaque in top, only n1 visible.
            rmdir("b").err(ENOTEMPTY),
            unlink("b/n1").ok(),
            rmdir("b").ok(),
            // c: top only.
            unlink("c/h").ok(),
            rmdir("c").ok(),
            // a new file, removed again: nothing to white out.
            open(0, "tmpfile", O_CREAT | O_WRONLY).ok(),
            close(0).ok(),
            unlink("tmpfile").ok(),
            mkdir("tmpdir").ok(),
            mkdir("tmpdir/inner").ok(),
            rmdir("tmpdir").err(ENOTEMPTY),
            rmdir("tmpdir/inner").ok(),
            rmdir("tmpdir").ok(),
            readdir(""),
        ],
    );
}

/// A directory recreated over a whiteout is opaque: nothing of the lower directory shows.
/// Also a directory replacing a lower file and a file replacing a lower directory.
#[test]
fn recreated_directories_are_opaque() {
    require_root();
    check_both_dialects(
        "wd-opaque",
        vec![
            unlink("a/sub/deep/f5").ok(),
            rmdir("a/sub/deep").ok(),
            unlink("a/sub/f4").ok(),
            rmdir("a/sub").ok(),
            mkdir("a/sub").ok(),
            readdir("a/sub").out(names(&[])),
            lstat("a/sub/f4").err(ENOENT),
            lstat("a/sub/deep").err(ENOENT),
            open(0, "a/sub/new", O_CREAT | O_WRONLY).ok(),
            close(0).ok(),
            readdir("a/sub").out(names(&[("new", Kind::File)])),
            unlink("b/n1").ok(),
            rmdir("b").ok(),
            mkdir("b").ok(),
            readdir("b").out(names(&[])),
            lstat("b/f6").err(ENOENT),
            unlink("f1").ok(),
            mkdir("f1").ok(),
            readdir("f1").out(names(&[])),
            lstat("f1"),
            unlink("g/f8").ok(),
            rmdir("g").ok(),
            open(0, "g", O_CREAT | O_WRONLY).ok(),
            write(0, "g is a file now"),
            close(0).ok(),
            read_file("g").data("g is a file now"),
            // Again, on the recreated dir: remove it, recreate it.
            unlink("a/sub/new").ok(),
            rmdir("a/sub").ok(),
            mkdir("a/sub").ok(),
            readdir("a/sub").out(names(&[])),
            readdir("a"),
            readdir(""),
        ],
    );
}

/// Metadata-only copy-up (issue 8): chmod, chown, utimes, xattrs, link and rename of lower
/// files keep their data in the lower layer until the first write, truncate or open for
/// writing; reads, sizes, hard links and renames (of the file and of its directory) behave
/// exactly as with a full copy-up. (The on-disk form — sparse placeholder, metacopy mark,
/// redirect — is checked in write_scenarios.rs; the oracle copies data, see mounts.rs.)
#[test]
fn metadata_only_copy_up() {
    require_root();
    check_both_dialects(
        "wd-metacopy",
        vec![
            chmod("big", 0o600).ok(),
            lstat("big"),
            read_file("big"),
            chown("sparse", 1000, 1000).ok(),
            read_file("sparse"),
            setxattr("a/f3", "user.m", "1", 0).ok(),
            read_file("a/f3").data("base a/f3\n"),
            link("a/f3", "f3-link").ok(), // a metadata-only copy gets a second name
            lstat("f3-link"),
            open(0, "f3-link", O_WRONLY | O_APPEND).ok(), // fills it: both names see it
            write(0, "+appended"),
            close(0).ok(),
            read_file("a/f3").data("base a/f3\n+appended"),
            lstat("a/f3"),
            rename("big", "a/sub/big2").ok(), // moves with its data still below
            read_file("a/sub/big2"),
            rename("a", "a-moved").ok(), // and its directory moves too
            read_file("a-moved/sub/big2"),
            open(1, "a-moved/sub/big2", O_RDWR).ok(),
            pwrite(1, 10, "patched"),
            pread(1, 0, 64),
            close(1).ok(),
            read_file("a-moved/sub/big2"),
            utimens(
                "sparse",
                TimeArg::At(1_000_000_000, 0),
                TimeArg::At(1_000_000_001, 0),
                false,
            )
            .ok(),
            truncate("sparse", 4096).ok(), // shrinks: data first
            read_file("sparse"),
            lstat("sparse"),
            chmod("zero", 0o640).ok(), // empty: nothing to leave below
            read_file("zero").data(""),
            removexattr("xa", "user.a").ok(),
            listxattr("xa"),
            read_file("xa").data("xattrs\n"),
            truncate("xa", 0).ok(),
            read_file("xa").data(""),
            readdir("a-moved/sub"),
            readdir(""),
        ],
    );
}

/// Layers with hard links: the standard ones plus `h1`, `h2` and `a/h3`, one lower inode.
fn hard_link_layers(env: &TestEnv) -> Vec<Layer> {
    let layers = standard_layers(env, LowerMarkers::Kernel);
    let base = &layers[1];
    base.file("h1", "one inode, three names\n");
    std::fs::hard_link(base.path("h1"), base.path("h2")).unwrap();
    std::fs::hard_link(base.path("h1"), base.path("a/h3")).unwrap();
    fix_times(&base.root);
    layers
}

/// Issue 8 against the kernel with every feature on (`redirect_dir=on,index=on,metacopy=on`):
/// lower hard links stay one file across copy-up (write through one name, read the others,
/// nlink, link and unlink), metadata-only copies (written, so that the kernel's mtime quirk
/// on fills does not apply — see `DiffConfig::kernel_all`), and directory renames.
#[test]
fn hard_links_metacopy_and_renames_vs_kernel_index_metacopy() {
    require_root();
    let mut c = DiffConfig::new("wd-kernel-all", hard_link_layers);
    c.kernel_all = true;
    check_script(
        &c,
        vec![
            lstat("h1"),
            lstat("h2"),
            open(0, "h1", O_WRONLY | O_APPEND).ok(),
            write(0, "appended through h1\n"),
            close(0).ok(),
            read_file("h2").data("one inode, three names\nappended through h1\n"),
            read_file("a/h3"),
            lstat("h1"),
            lstat("h2"),
            lstat("a/h3"),
            chmod("h2", 0o600).ok(),
            lstat("a/h3"),
            link("h2", "h4").ok(),
            lstat("h1"),
            unlink("h1").ok(),
            lstat("h2"),
            lstat("h4"),
            chmod("big", 0o600).ok(), // metadata only, on both
            lstat("big"),
            open(1, "big", O_WRONLY).ok(),
            pwrite(1, 7, "written"), // filled, and written: fresh mtime on both
            close(1).ok(),
            read_file("big"),
            lstat("big"),
            rename("a", "a-moved").ok(),
            read_file("a-moved/h3"),
            lstat("a-moved/h3"),
            readdir("a-moved"),
            readdir(""),
        ],
    );
}

/// Directory renames (issue 8): lower-only, merged and opaque directories move in O(1) with a
/// redirect; chains (a→b, b/c→a, back again, into a sibling's subdirectory), deletes and
/// creations under renamed directories, over empty directories (merged emptiness), with
/// RENAME_NOREPLACE/RENAME_EXCHANGE, into the directory's own descendant (EINVAL), and a new
/// directory at a vacated name. The harness also remounts stratafs over the result and mounts
/// the upper with the kernel.
#[test]
fn directory_renames() {
    require_root();
    check_both_dialects(
        "wd-dirrename",
        vec![
            rename("a", "x").ok(),
            readdir("x"),
            readdir("x/sub"),
            read_file("x/sub/deep/f5").data("base a/sub/deep/f5\n"),
            lstat("x/f2").err(ENOENT), // still whited out
            rename("x/sub", "a").ok(), // a child of the renamed dir takes the vacated name
            readdir("a"),
            readdir("a/deep"),
            readdir("x"),
            rename("a", "x/sub").ok(), // and back
            readdir("x/sub/deep"),
            rename("x/sub/deep", "g2").ok(),
            readdir("g2"),
            open(0, "x/sub/new", O_CREAT | O_WRONLY).ok(),
            write(0, "new under a renamed dir"),
            close(0).ok(),
            unlink("x/f3").ok(), // delete a lower file under a renamed dir
            unlink("x/g").ok(),
            readdir("x"),
            mkdir("a").ok(), // a fresh directory at the original name: opaque
            readdir("a"),
            mkdir("a/in").ok(),
            rename("c", "a/in/c").ok(), // into a subdirectory of a sibling
            readdir("a/in/c"),
            read_file("a/in/c/h").data("top c/h\n"),
            rename("a/in", "a/in/c/loop").err(EINVAL), // into its own descendant
            rename2("x", "g", RENAME_NOREPLACE).err(EEXIST),
            rename2("x", "b", RENAME_EXCHANGE).ok(), // two merged/opaque dirs swap
            readdir("x"),
            readdir("b"),
            readdir("b/sub"),
            rename("e", "a/in/c").err(ENOTEMPTY),
            mkdir("empty").ok(),
            rename("b", "empty").ok(), // over an empty upper dir
            readdir("empty"),
            rename("e", "g2").err(ENOTEMPTY),
            unlink("g2/f5").ok(),
            rename("e", "g2").ok(), // over a lower dir emptied by whiteouts
            readdir("g2"),
            lstat("e").err(ENOENT),
            rmdir("g2").ok(), // remove a renamed (lower) directory
            lstat("g2").err(ENOENT),
            rename("empty", "x/moved").ok(), // renamed a fourth time, into a renamed dir
            readdir("x/moved"),
            readdir("x/moved/sub"),
            read_file("x/moved/sub/new").data("new under a renamed dir"),
            rename("x", "zz").ok(),
            readdir("zz/moved/sub"),
            readdir(""),
        ],
    );
}

/// rename: plain, RENAME_NOREPLACE, RENAME_EXCHANGE; files over files, over empty dirs;
/// lower/merged directories move with a redirect (kernel redirect_dir=on), upper-only ones
/// move plainly.
#[test]
fn renames() {
    require_root();
    check_both_dialects(
        "wd-rename",
        vec![
            rename("a/f3", "moved").ok(),
            lstat("a/f3").err(ENOENT),
            read_file("moved").data("base a/f3\n"),
            lstat("moved"),             // mtime preserved by the copy-up
            rename("moved", "f1").ok(), // over a lower file
            read_file("f1").data("base a/f3\n"),
            rename("xa", "zero").ok(),
            listxattr("zero"),
            rename("s1", "a/s1").ok(), // a lower symlink
            readlink("a/s1").data("f1"),
            read_file("a/s1").err(ENOENT), // relative target, now resolved in a/
            rename("ro", "owned").ok(),
            lstat("owned"),
            rename2("f1", "suid", RENAME_NOREPLACE).err(EEXIST),
            rename2("f1", "fresh", RENAME_NOREPLACE).ok(),
            rename2("fresh", "suid", RENAME_EXCHANGE).ok(),
            read_file("suid").data("base a/f3\n"),
            read_file("fresh"),
            rename2("fresh", "nothere", RENAME_EXCHANGE).err(ENOENT),
            rename2("big", "c/h", RENAME_EXCHANGE).ok(),
            lstat("big"),
            lstat("c/h"),
            // Directories.
            rename("a", "a2").ok(), // merged
            lstat("a").err(ENOENT),
            readdir("a2"),
            readdir("a2/sub/deep"),
            rename("e", "e2").ok(), // lower-only, empty
            rename("b", "b2").ok(), // opaque
            readdir("b2"),
            rename("c", "c2").ok(), // top layer only
            readdir(""),
            rename("a2", "a").ok(), // back where they were
            rename("e2", "e").ok(),
            rename("b2", "b").ok(),
            rename("c2", "c").ok(),
            mkdir("n1").ok(),
            open(0, "n1/inner", O_CREAT | O_WRONLY).ok(),
            close(0).ok(),
            rename("n1", "n2").ok(),
            readdir("n2"),
            mkdir("d1").ok(),
            rename("n2", "d1").ok(), // over an empty upper dir
            readdir("d1"),
            mkdir("d2").ok(),
            rename("d2", "d1").err(ENOTEMPTY),
            rename("d2", "a/sub/deep/moved").ok(),
            readdir("a/sub/deep"),
            rename("d1", "d1/inner2").err(EINVAL),
            rename("d1", "zero").err(ENOTDIR),
            rename("zero", "d1").err(EISDIR),
            rename2("zero", "d1", RENAME_EXCHANGE).ok(), // file <-> upper dir
            lstat("zero"),
            lstat("d1"),
            rename("owned", "owned").ok(),
            rename("p", "b/fifo").ok(), // into the opaque dir
            lstat("b/fifo"),
            rename("a/f3", "x").err(ENOENT),
            rename("sparse", "b/f6").ok(), // a name hidden by the opaque dir
            read_file("b/f6"),
            readdir("b"),
            readdir("a"),
            readdir(""),
        ],
    );
}

/// Renames onto lower directories and out of them, whose results the kernel decides (no
/// expectations beyond the kernel's).
#[test]
fn renames_over_directories() {
    require_root();
    check_both_dialects(
        "wd-rename-dirs",
        vec![
            mkdir("n1").ok(),
            rename("n1", "e"), // upper dir over an empty lower dir
            readdir("e"),
            lstat("e"),
            mkdir("n2").ok(),
            rename("n2", "a"), // over a non-empty merged dir
            mkdir("n3").ok(),
            open(0, "n3/f", O_CREAT | O_WRONLY).ok(),
            close(0).ok(),
            rename2("n3", "e", RENAME_EXCHANGE),
            readdir("e"),
            readdir("n3"),
            unlink("c/h").ok(),
            rename("zero", "c"),
            unlink("b/n1").ok(),
            rmdir("b").ok(),
            mkdir("b").ok(), // opaque, recreated
            rename("b", "b2"),
            readdir("b2"),
            lstat("b"),
            rename("f1", "g/f8"),
            rename("a/sub/f4", "a/sub/deep/f4"),
            readdir("a/sub/deep"),
            // An upper directory moved onto a whited-out (lower file) name.
            unlink("a/f3").ok(),
            mkdir("nd").ok(),
            rename2("nd", "a/f3", RENAME_NOREPLACE).ok(),
            lstat("a/f3"),
            unlink("ro").ok(),
            mkdir("nd2").ok(),
            rename("nd2", "ro").ok(),
            readdir("ro").out(names(&[])),
            readdir("a"),
            readdir(""),
        ],
    );
}

/// Hard links (of lower files: copy-up then link), symlinks, FIFOs and sockets.
#[test]
fn links_and_special_files() {
    require_root();
    check_both_dialects(
        "wd-links",
        vec![
            link("f1", "f1-link").ok(),
            lstat("f1").ok(),
            lstat("f1-link"),
            open(0, "f1-link", O_WRONLY | O_APPEND).ok(),
            write(0, "via link"),
            close(0).ok(),
            read_file("f1").data("top f1\nvia link"),
            unlink("f1").ok(),
            lstat("f1-link"),
            link("a/f3", "a/sub/f3-link").ok(),
            link("a/f3", "a/sub/f3-link").err(EEXIST),
            link("a", "a-link").err(EPERM),
            link("nothere", "x").err(ENOENT),
            link("s1", "s1-link").ok(), // the symlink itself
            lstat("s1-link"),
            readlink("s1-link").data("f1"),
            link("p", "p-link").ok(),
            lstat("p-link"),
            symlink("a/f3", "sym").ok(),
            read_file("sym").data("base a/f3\n"),
            symlink("x", "sym").err(EEXIST),
            symlink("x", "f1-link").err(EEXIST),
            symlink("dir/target", "a/sub/deep/s").ok(),
            readlink("a/sub/deep/s").data("dir/target"),
            mknod("fifo2", libc::S_IFIFO | 0o640).ok(),
            lstat("fifo2"),
            mknod("a/sock", libc::S_IFSOCK | 0o600).ok(),
            lstat("a/sock"),
            mknod("zero", libc::S_IFIFO | 0o600).err(EEXIST),
            // Times of a hard-linked symlink, after its other name is gone.
            symlink("f1-link", "sl").ok(),
            link("sl", "sl2").ok(),
            unlink("sl2").ok(),
            utimens(
                "sl",
                TimeArg::At(1_222_333_444, 5),
                TimeArg::At(1_222_333_445, 6),
                true,
            )
            .ok(),
            lstat("sl"),
            utimens("sl", TimeArg::Now, TimeArg::At(1_222_333_446, 7), true).ok(),
            lstat("sl"),
            open(0, "a/sock", O_RDWR),
            // A new file linked, then one name removed.
            open(0, "n1", O_CREAT | O_WRONLY).ok(),
            write(0, "n1"),
            close(0).ok(),
            link("n1", "a/n1").ok(),
            lstat("a/n1"),
            unlink("n1").ok(),
            lstat("a/n1"),
            readdir("a"),
            readdir(""),
        ],
    );
}

/// Files deleted (or renamed over) while open keep working through their fds until closed:
/// a lower file copied up by the open, a new file, a lower file opened read-only (never copied
/// up), a file whose directory is removed too.
#[test]
fn unlinked_while_open() {
    require_root();
    check_both_dialects(
        "wd-open-unlinked",
        vec![
            open(0, "f1", O_RDWR).ok(),
            unlink("f1").ok(),
            lstat("f1").err(ENOENT),
            pwrite(0, 0, "still writable").ok(),
            pread(0, 0, 100).data("still writable"),
            fstat(0),
            open(1, "f1", O_CREAT | O_EXCL | O_RDWR).ok(),
            write(1, "a new f1"),
            pread(0, 0, 100).data("still writable"),
            read_file("f1").data("a new f1"),
            close(0).ok(),
            close(1).ok(),
            open(2, "n1", O_CREAT | O_RDWR).ok(),
            write(2, "new file"),
            unlink("n1").ok(),
            pwrite_gen(2, 100_000, 3, 70_000).ok(),
            fstat(2),
            pread(2, 0, 200_000),
            ftruncate(2, 10).ok(),
            pread(2, 0, 100).data("new file\0\0"),
            close(2).ok(),
            // Read-only, never copied up: reads the lower file after the unlink.
            open(3, "big", O_RDONLY).ok(),
            unlink("big").ok(),
            pread(3, 100_000, 50_000),
            fstat(3),
            close(3).ok(),
            // Renamed over.
            open(0, "a/f3", O_RDWR).ok(),
            rename("zero", "a/f3").ok(),
            pread(0, 0, 100).data("base a/f3\n"),
            pwrite(0, 0, "B").ok(),
            read_file("a/f3").data(""),
            close(0).ok(),
            // Its directory removed as well.
            mkdir("d").ok(),
            open(1, "d/f", O_CREAT | O_RDWR).ok(),
            unlink("d/f").ok(),
            rmdir("d").ok(),
            write(1, "orphan"),
            pread(1, 0, 10).data("orphan"),
            fsync(1).ok(),
            close(1).ok(),
            readdir(""),
        ],
    );
}

/// Mixed multi-layer scenario on OCI-marked and user-xattr-marked lowers with the default
/// upper dialect (the kernel mounts converted copies).
#[test]
fn other_lower_dialects() {
    require_root();
    let steps = vec![
        readdir("a"),
        readdir("b"),
        lstat("a/f2").err(ENOENT),
        open(0, "a/f2", O_CREAT | O_EXCL | O_WRONLY).ok(),
        close(0).ok(),
        unlink("b/n1").ok(),
        readdir("b").out(names(&[])),
        rmdir("b").ok(),
        mkdir("b").ok(),
        readdir("b").out(names(&[])),
        chmod("a", 0o700).ok(),
        rename("a/g", "a/g2").ok(),
        readdir("a"),
    ];
    check_script(&DiffConfig::new("wd-lower-oci", oci_layers), steps.clone());
    check_script(
        &DiffConfig::new("wd-lower-userxattr", user_xattr_layers),
        steps,
    );
}

// ---- random sequences ----

fn random(name: &str, first_seed: u64, mut c: DiffConfig) {
    c.name = name.to_string();
    let seeds = seeds(first_seed, 4);
    let ops = ops_per_seed(400);
    check_random(&c, &seeds, ops, name);
}

/// Random sequences over kernel-marked lowers, default upper dialect.
#[test]
fn random_sequences() {
    require_root();
    random("random_sequences", 1000, cfg("rnd"));
}

/// Random sequences over OCI-marked lowers, default upper dialect.
#[test]
fn random_sequences_oci_lowers() {
    require_root();
    random(
        "random_sequences_oci_lowers",
        2000,
        DiffConfig::new("rnd", oci_layers),
    );
}

/// Random sequences with the upper written in the OCI dialect.
#[test]
fn random_sequences_oci_upper() {
    require_root();
    let mut c = DiffConfig::new("rnd", user_xattr_layers);
    c.whiteout = Some(UpperDialect::Oci);
    random("random_sequences_oci_upper", 3000, c);
}

/// Random sequences on a `--volatile` mount (no fsync before publishing; same semantics).
#[test]
fn random_sequences_volatile() {
    require_root();
    let mut c = cfg("rnd");
    c.volatile = true;
    random("random_sequences_volatile", 4000, c);
}

/// The harness itself: ops on a plain directory give deterministic results, the generator is
/// deterministic for a seed, and the results a differential compares do differ when the two
/// sides differ (a mutated tree).
#[test]
fn differential_harness_selftest() {
    require_root();
    let env = TestEnv::new("wd-self");
    let layers = kernel_layers(&env);
    let a = env.fresh_dir("a");
    let b = env.fresh_dir("b");
    for (i, d) in [&a, &b].into_iter().enumerate() {
        let dst = d.join("t");
        common::convert::convert_for_kernel(&layers[1].root, &dst);
        if i == 1 {
            std::fs::write(dst.join("f1"), "changed").unwrap();
        }
    }
    let t0 = now_secs();
    let mut ca = Ctx::new(&a.join("t"), t0);
    let mut cb = Ctx::new(&b.join("t"), t0);
    assert_eq!(
        ca.exec(&Op::ReadFile {
            path: "a/f3".into()
        }),
        cb.exec(&Op::ReadFile {
            path: "a/f3".into()
        })
    );
    assert_ne!(
        ca.exec(&Op::ReadFile { path: "f1".into() }),
        cb.exec(&Op::ReadFile { path: "f1".into() })
    );
    assert_eq!(
        ca.exec(&Op::Unlink {
            path: "nothere".into()
        }),
        Err(ENOENT)
    );
    let tree = Tree::scan(&a.join("t"));
    let mut g1 = Gen::new(5);
    let mut g2 = Gen::new(5);
    for _ in 0..200 {
        assert_eq!(g1.next(&tree), g2.next(&tree));
    }
    // O_RDONLY without O_TRUNC never comes out of the generator.
    let mut g = Gen::new(9);
    for _ in 0..5000 {
        if let Op::Open { flags, path, .. } = g.next(&tree) {
            assert!(
                flags & libc::O_ACCMODE != O_RDONLY || flags & O_TRUNC != 0,
                "read-only open generated"
            );
            assert!(!path.contains(".wh."));
        }
    }
}
