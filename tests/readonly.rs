//! Every write-type operation fails with EROFS, exactly as on a read-only kernel overlay, and
//! leaves the merged view and the layers unchanged.

mod common;

use common::*;
use std::ffi::CString;
use std::fs;
use std::os::unix::io::AsRawFd;
use std::path::Path;

type Op = (&'static str, bool, fn(&Path) -> Result<(), i32>);

fn c(p: &Path, rel: &str) -> CString {
    cpath(&if rel.is_empty() {
        p.to_path_buf()
    } else {
        p.join(rel)
    })
}

fn open_flags(root: &Path, rel: &str, flags: i32) -> Result<(), i32> {
    let p = c(root, rel);
    // SAFETY: valid C string; the fd is closed right away.
    let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        return Err(errno());
    }
    unsafe { libc::close(fd) };
    Ok(())
}

fn with_ro_fd(root: &Path, rel: &str, f: impl FnOnce(i32) -> i32) -> Result<(), i32> {
    let file = fs::File::open(root.join(rel)).map_err(|e| e.raw_os_error().unwrap())?;
    check(f(file.as_raw_fd())).map(|_| ())
}

/// (name, must be EROFS, operation). Those not marked must match the kernel's errno.
fn ops() -> Vec<Op> {
    // SAFETY (all closures): plain syscalls on valid C strings / fds.
    vec![
        ("create new file (O_CREAT|O_WRONLY)", true, |r| {
            open_flags(r, "newfile", libc::O_CREAT | libc::O_WRONLY)
        }),
        ("create new file (O_CREAT|O_EXCL|O_RDONLY)", true, |r| {
            open_flags(r, "newfile", libc::O_CREAT | libc::O_EXCL | libc::O_RDONLY)
        }),
        ("create in subdir", true, |r| {
            open_flags(r, "dir/newfile", libc::O_CREAT | libc::O_WRONLY)
        }),
        ("open existing O_WRONLY", true, |r| {
            open_flags(r, "file", libc::O_WRONLY)
        }),
        ("open existing O_RDWR", true, |r| {
            open_flags(r, "file", libc::O_RDWR)
        }),
        ("open existing O_WRONLY|O_APPEND", true, |r| {
            open_flags(r, "file", libc::O_WRONLY | libc::O_APPEND)
        }),
        ("open existing O_RDONLY|O_TRUNC", true, |r| {
            open_flags(r, "file", libc::O_RDONLY | libc::O_TRUNC)
        }),
        ("open lower-layer file O_RDWR", true, |r| {
            open_flags(r, "dir/lowerfile", libc::O_RDWR)
        }),
        ("open existing O_CREAT|O_RDONLY", false, |r| {
            open_flags(r, "file", libc::O_CREAT | libc::O_RDONLY)
        }),
        ("open dir O_RDWR", false, |r| {
            open_flags(r, "dir", libc::O_RDWR)
        }),
        ("mkdir", true, |r| {
            check(unsafe { libc::mkdir(c(r, "newdir").as_ptr(), 0o755) }).map(|_| ())
        }),
        ("mkdir existing", false, |r| {
            check(unsafe { libc::mkdir(c(r, "dir").as_ptr(), 0o755) }).map(|_| ())
        }),
        ("unlink file", true, |r| {
            check(unsafe { libc::unlink(c(r, "file").as_ptr()) }).map(|_| ())
        }),
        ("unlink lower-layer file", true, |r| {
            check(unsafe { libc::unlink(c(r, "dir/lowerfile").as_ptr()) }).map(|_| ())
        }),
        ("unlink symlink", true, |r| {
            check(unsafe { libc::unlink(c(r, "link").as_ptr()) }).map(|_| ())
        }),
        ("rmdir empty dir", true, |r| {
            check(unsafe { libc::rmdir(c(r, "emptydir").as_ptr()) }).map(|_| ())
        }),
        ("rmdir non-empty dir", true, |r| {
            check(unsafe { libc::rmdir(c(r, "dir").as_ptr()) }).map(|_| ())
        }),
        ("rename file to new name", true, |r| {
            check(unsafe { libc::rename(c(r, "file").as_ptr(), c(r, "renamed").as_ptr()) })
                .map(|_| ())
        }),
        ("rename file over file", true, |r| {
            check(unsafe { libc::rename(c(r, "file").as_ptr(), c(r, "dir/lowerfile").as_ptr()) })
                .map(|_| ())
        }),
        ("rename dir", true, |r| {
            check(unsafe { libc::rename(c(r, "dir").as_ptr(), c(r, "dir2").as_ptr()) }).map(|_| ())
        }),
        ("renameat2 RENAME_EXCHANGE", true, |r| {
            let (a, b) = (c(r, "file"), c(r, "link"));
            check(unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    libc::AT_FDCWD,
                    b.as_ptr(),
                    libc::RENAME_EXCHANGE,
                )
            })
            .map(|_| ())
        }),
        ("symlink", true, |r| {
            check(unsafe {
                libc::symlink(
                    c(Path::new(""), "target").as_ptr(),
                    c(r, "newlink").as_ptr(),
                )
            })
            .map(|_| ())
        }),
        ("link", true, |r| {
            check(unsafe { libc::link(c(r, "file").as_ptr(), c(r, "newhardlink").as_ptr()) })
                .map(|_| ())
        }),
        ("chmod file", true, |r| {
            check(unsafe { libc::chmod(c(r, "file").as_ptr(), 0o600) }).map(|_| ())
        }),
        ("chmod dir", true, |r| {
            check(unsafe { libc::chmod(c(r, "dir").as_ptr(), 0o700) }).map(|_| ())
        }),
        ("chmod to same mode", true, |r| {
            check(unsafe { libc::chmod(c(r, "file").as_ptr(), 0o644) }).map(|_| ())
        }),
        ("chown file", true, |r| {
            check(unsafe { libc::chown(c(r, "file").as_ptr(), 1, 1) }).map(|_| ())
        }),
        ("lchown symlink", true, |r| {
            check(unsafe { libc::lchown(c(r, "link").as_ptr(), 1, 1) }).map(|_| ())
        }),
        ("utimes (now)", true, |r| {
            check(unsafe {
                libc::utimensat(libc::AT_FDCWD, c(r, "file").as_ptr(), std::ptr::null(), 0)
            })
            .map(|_| ())
        }),
        ("utimes (explicit)", true, |r| {
            let t = [
                libc::timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                },
                libc::timespec {
                    tv_sec: 2,
                    tv_nsec: 0,
                },
            ];
            check(unsafe { libc::utimensat(libc::AT_FDCWD, c(r, "dir").as_ptr(), t.as_ptr(), 0) })
                .map(|_| ())
        }),
        ("truncate", true, |r| {
            check(unsafe { libc::truncate(c(r, "file").as_ptr(), 0) }).map(|_| ())
        }),
        ("truncate lower-layer file larger", true, |r| {
            check(unsafe { libc::truncate(c(r, "dir/lowerfile").as_ptr(), 1 << 20) }).map(|_| ())
        }),
        ("setxattr", true, |r| {
            let n = CString::new("user.new").unwrap();
            check(unsafe {
                libc::lsetxattr(
                    c(r, "file").as_ptr(),
                    n.as_ptr(),
                    b"v".as_ptr().cast(),
                    1,
                    0,
                )
            })
            .map(|_| ())
        }),
        ("setxattr replace existing", true, |r| {
            let n = CString::new("user.existing").unwrap();
            check(unsafe {
                libc::lsetxattr(
                    c(r, "file").as_ptr(),
                    n.as_ptr(),
                    b"v".as_ptr().cast(),
                    1,
                    libc::XATTR_REPLACE,
                )
            })
            .map(|_| ())
        }),
        ("setxattr on dir", true, |r| {
            let n = CString::new("user.new").unwrap();
            check(unsafe {
                libc::lsetxattr(c(r, "dir").as_ptr(), n.as_ptr(), b"v".as_ptr().cast(), 1, 0)
            })
            .map(|_| ())
        }),
        ("removexattr existing", true, |r| {
            let n = CString::new("user.existing").unwrap();
            check(unsafe { libc::lremovexattr(c(r, "file").as_ptr(), n.as_ptr()) }).map(|_| ())
        }),
        ("removexattr missing", false, |r| {
            let n = CString::new("user.missing").unwrap();
            check(unsafe { libc::lremovexattr(c(r, "file").as_ptr(), n.as_ptr()) }).map(|_| ())
        }),
        ("mknod fifo", true, |r| {
            check(unsafe { libc::mknod(c(r, "newfifo").as_ptr(), libc::S_IFIFO | 0o644, 0) })
                .map(|_| ())
        }),
        ("mknod char dev", true, |r| {
            check(unsafe {
                libc::mknod(
                    c(r, "newchr").as_ptr(),
                    libc::S_IFCHR | 0o644,
                    libc::makedev(1, 3),
                )
            })
            .map(|_| ())
        }),
        ("mknod regular", true, |r| {
            check(unsafe { libc::mknod(c(r, "newreg").as_ptr(), libc::S_IFREG | 0o644, 0) })
                .map(|_| ())
        }),
        ("mkfifo in subdir", true, |r| {
            check(unsafe { libc::mkfifo(c(r, "dir/newfifo").as_ptr(), 0o644) }).map(|_| ())
        }),
        ("fchmod on O_RDONLY fd", true, |r| {
            with_ro_fd(r, "file", |fd| unsafe { libc::fchmod(fd, 0o600) })
        }),
        ("fchown on O_RDONLY fd", true, |r| {
            with_ro_fd(r, "file", |fd| unsafe { libc::fchown(fd, 2, 2) })
        }),
        ("futimens on O_RDONLY fd", true, |r| {
            with_ro_fd(r, "file", |fd| unsafe {
                libc::futimens(fd, std::ptr::null())
            })
        }),
        ("fsetxattr on O_RDONLY fd", true, |r| {
            let n = CString::new("user.new").unwrap();
            with_ro_fd(r, "file", |fd| unsafe {
                libc::fsetxattr(fd, n.as_ptr(), b"v".as_ptr().cast(), 1, 0)
            })
        }),
        ("fremovexattr on O_RDONLY fd", true, |r| {
            let n = CString::new("user.existing").unwrap();
            with_ro_fd(r, "file", |fd| unsafe {
                libc::fremovexattr(fd, n.as_ptr())
            })
        }),
        ("access W_OK", true, |r| {
            check(unsafe { libc::access(c(r, "file").as_ptr(), libc::W_OK) }).map(|_| ())
        }),
    ]
}

fn build(env: &TestEnv) -> (Layer, Layer) {
    let base = env.layer("base");
    let top = env.layer("top");
    base.file("dir/lowerfile", "lower");
    base.file("lowerfile2", "lower2");
    top.file("file", "top file").xattr("user.existing", b"e");
    top.dir("dir");
    top.dir("emptydir");
    top.symlink("link", "file");
    (top, base)
}

#[test]
fn every_write_op_fails_with_erofs() {
    require_root();
    let env = TestEnv::new("erofs");
    let (top, base) = build(&env);
    let stack = env.stack(&[&top, &base]);
    let k = stack.kernel();
    let m = stack.stratafs();
    let before = Snapshot::take(m.path());
    let mut problems = Vec::new();
    for (name, must_erofs, op) in ops() {
        let rk = op(k.path());
        let rs = op(m.path());
        if must_erofs && rs != Err(libc::EROFS) {
            problems.push(format!(
                "{name}: stratafs {} (kernel {}), expected EROFS",
                show_res(&rs),
                show_res(&rk)
            ));
        } else if rs != rk {
            problems.push(format!(
                "{name}: stratafs {} vs kernel {}",
                show_res(&rs),
                show_res(&rk)
            ));
        }
    }
    // `.wh.` names can never be created or looked up (design: EINVAL, which the lookup gives
    // before any create is attempted); the kernel's read-only overlay says EROFS instead.
    for (name, flags) in [
        ("create .wh. name", libc::O_CREAT | libc::O_WRONLY),
        ("open .wh. name", libc::O_RDONLY),
    ] {
        let rs = open_flags(m.path(), ".wh.x", flags);
        if rs != Err(libc::EINVAL) {
            problems.push(format!(
                "{name}: stratafs {}, expected EINVAL",
                show_res(&rs)
            ));
        }
    }
    let after = Snapshot::take(m.path());
    let d = snapshot_diff(&before, &after, Mode::Merged, "before", "after");
    problems.extend(d.into_iter().map(|x| format!("merged view changed: {x}")));
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("write operations", &problems)
    );
}

/// The mount is flagged read-only (mountinfo "ro", statvfs ST_RDONLY), like the kernel's
/// lowerdir-only overlay.
#[test]
fn mount_is_flagged_read_only() {
    require_root();
    let env = TestEnv::new("ro-flag");
    let (top, base) = build(&env);
    let stack = env.stack(&[&top, &base]);
    let m = stack.stratafs();
    let info = mounts_at(m.path());
    assert_eq!(info.len(), 1, "{info:?}");
    assert!(
        info[0].options.split(',').any(|o| o == "ro"),
        "mount options {:?} lack ro",
        info[0].options
    );
    let st = statvfs(m.path()).unwrap();
    assert!(
        st.f_flag & libc::ST_RDONLY != 0,
        "statvfs f_flag {:#x} lacks ST_RDONLY",
        st.f_flag
    );
}

/// Reading still works after all the failed writes, and reads of lower data are correct
/// (a failed O_RDWR open must not leave a half copy-up behind).
#[test]
fn reads_work_after_failed_writes() {
    require_root();
    let env = TestEnv::new("ro-reads");
    let (top, base) = build(&env);
    let stack = env.stack(&[&top, &base]);
    let m = stack.stratafs();
    for (_, _, op) in ops() {
        let _ = op(m.path());
    }
    assert_eq!(fs::read(m.join("dir/lowerfile")).unwrap(), b"lower");
    assert_eq!(fs::read(m.join("file")).unwrap(), b"top file");
    assert_eq!(lgetxattr(&m.join("file"), b"user.existing").unwrap(), b"e");
    assert!(fs::symlink_metadata(m.join("newfile")).is_err());
}
