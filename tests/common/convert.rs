//! Converts a layer into the dialect the kernel reads (for the oracle mount).
//!
//! The kernel (non-userxattr mode) does not read OCI `.wh.` markers nor `user.*` markers, so the
//! oracle mounts a converted copy while stratafs mounts the original:
//! - `.wh.NAME` → char 0/0 `NAME`; `.wh..wh..opq` → `trusted.overlay.opaque=y` on the dir;
//! - `user.overlay.opaque=y` / `user.fuseoverlayfs.opaque=y` → `trusted.overlay.opaque=y`;
//! - zero-size regular files with `trusted.overlay.whiteout` or `user.overlay.whiteout` → char
//!   0/0 (equivalent for the kernel, and avoids `=x` vs `=y` conflicts), `opaque=x` dropped;
//! - `user.overlay.*` and `user.fuseoverlayfs.*` xattrs are not copied.
//!
//! Everything else is copied exactly: type, mode, owner, mtime, xattrs, symlink targets, device
//! numbers, hard links (within the layer), and holes of sparse files.
//!
//! [`convert_to_oci`] goes the other way: a kernel-dialect layer (as a container engine's
//! overlay upper directory holds it) to the OCI dialect a layer tar carries, for GNU tar.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt, lchown};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::sys::{
    lgetxattr, llistxattr, lremovexattr, lseek, lsetxattr, mknod, set_times_nofollow,
};

fn is_user_marker(name: &[u8]) -> bool {
    name.starts_with(b"user.overlay.") || name.starts_with(b"user.fuseoverlayfs.")
}

fn is_xattr_whiteout(p: &Path, md: &fs::Metadata) -> bool {
    md.file_type().is_file()
        && md.size() == 0
        && (lgetxattr(p, b"trusted.overlay.whiteout").is_ok()
            || lgetxattr(p, b"user.overlay.whiteout").is_ok())
}

/// Whether a layer uses any marker the kernel cannot read directly.
pub fn needs_conversion(root: &Path) -> bool {
    fn walk(p: &Path) -> bool {
        let md = fs::symlink_metadata(p).unwrap();
        if llistxattr(p)
            .unwrap_or_default()
            .iter()
            .any(|n| is_user_marker(n))
        {
            return true;
        }
        if !md.is_dir() {
            return false;
        }
        for e in fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            if e.file_name().as_bytes().starts_with(b".wh.") || walk(&e.path()) {
                return true;
            }
        }
        false
    }
    walk(root)
}

fn copy_meta(src_md: &fs::Metadata, dst: &Path) {
    lchown(dst, Some(src_md.uid()), Some(src_md.gid())).unwrap();
    if !src_md.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(src_md.mode() & 0o7777)).unwrap();
    }
}

fn copy_xattrs(src: &Path, dst: &Path, opaque: &mut bool) {
    for name in llistxattr(src).unwrap() {
        let v = lgetxattr(src, &name).unwrap();
        if (name == b"user.overlay.opaque" || name == b"user.fuseoverlayfs.opaque") && v == b"y" {
            *opaque = true;
        }
        // Redirects and metacopy marks in any namespace become the kernel's.
        if matches!(
            name.as_slice(),
            b"user.overlay.redirect" | b"user.stratafs.redirect" | b"trusted.stratafs.redirect"
        ) {
            lsetxattr(dst, b"trusted.overlay.redirect", &v).unwrap();
            continue;
        }
        if matches!(
            name.as_slice(),
            b"user.overlay.metacopy" | b"user.stratafs.metacopy" | b"trusted.stratafs.metacopy"
        ) {
            lsetxattr(dst, b"trusted.overlay.metacopy", &v).unwrap();
            continue;
        }
        if is_user_marker(&name) {
            continue;
        }
        if name == b"trusted.overlay.opaque" {
            if v == b"y" {
                *opaque = true;
            }
            continue;
        }
        lsetxattr(dst, &name, &v).unwrap_or_else(|e| {
            panic!("setxattr {} on {}: {e}", name.escape_ascii(), dst.display())
        });
    }
}

fn copy_sparse(src: &Path, dst: &Path) {
    let s = fs::File::open(src).unwrap();
    let len = s.metadata().unwrap().len();
    let d = fs::File::create(dst).unwrap();
    let mut off = 0i64;
    let mut buf = vec![0u8; 1 << 20];
    while (off as u64) < len {
        let data = match lseek(s.as_raw_fd(), off, libc::SEEK_DATA) {
            Ok(x) => x,
            Err(libc::ENXIO) => break,
            Err(e) => panic!("SEEK_DATA {}: errno {e}", src.display()),
        };
        let hole = lseek(s.as_raw_fd(), data, libc::SEEK_HOLE).unwrap();
        let mut pos = data as u64;
        while pos < hole as u64 {
            let n = ((hole as u64 - pos) as usize).min(buf.len());
            s.read_exact_at(&mut buf[..n], pos).unwrap();
            d.write_all_at(&buf[..n], pos).unwrap();
            pos += n as u64;
        }
        off = hole;
    }
    d.set_len(len).unwrap();
}

/// Copies layer `src` to the new directory `dst`, converting markers for the kernel.
pub fn convert_for_kernel(src: &Path, dst: &Path) {
    let mut links: HashMap<(u64, u64), std::path::PathBuf> = HashMap::new();
    fs::create_dir(dst).unwrap();
    copy_dir(src, dst, &mut links);
}

fn copy_dir(src: &Path, dst: &Path, links: &mut HashMap<(u64, u64), std::path::PathBuf>) {
    let md = fs::symlink_metadata(src).unwrap();
    let mut opaque = false;
    let mut names: Vec<_> = fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for name in names {
        let nb = name.as_bytes();
        let s = src.join(&name);
        let smd = fs::symlink_metadata(&s).unwrap();
        if nb == b".wh..wh..opq" {
            opaque = true;
            continue;
        }
        if let Some(target) = nb.strip_prefix(b".wh.") {
            if target.is_empty() || target == b"." || target == b".." {
                continue; // whiteout of nothing (hostile layers)
            }
            mknod(
                &dst.join(OsStr::from_bytes(target)),
                libc::S_IFCHR | 0o600,
                0,
                0,
            )
            .unwrap();
            continue;
        }
        let d = dst.join(&name);
        if is_xattr_whiteout(&s, &smd) {
            mknod(&d, libc::S_IFCHR | 0o600, 0, 0).unwrap();
            continue;
        }
        let ft = smd.file_type();
        if ft.is_dir() {
            fs::create_dir(&d).unwrap();
            copy_dir(&s, &d, links);
            continue;
        }
        if smd.nlink() > 1 {
            if let Some(first) = links.get(&(smd.dev(), smd.ino())) {
                fs::hard_link(first, &d).unwrap();
                continue;
            }
            links.insert((smd.dev(), smd.ino()), d.clone());
        }
        if ft.is_file() {
            copy_sparse(&s, &d);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&s).unwrap(), &d).unwrap();
        } else {
            let (ma, mi) = super::sys::major_minor(smd.rdev());
            mknod(&d, smd.mode(), ma, mi).unwrap();
        }
        copy_meta(&smd, &d);
        let mut ignored = false;
        copy_xattrs(&s, &d, &mut ignored);
        set_times_nofollow(&d, smd.mtime(), smd.mtime_nsec()).unwrap();
    }
    copy_meta(&md, dst);
    copy_xattrs(src, dst, &mut opaque);
    if opaque {
        lsetxattr(dst, b"trusted.overlay.opaque", b"y").unwrap();
    }
    set_times_nofollow(dst, md.mtime(), md.mtime_nsec()).unwrap();
}

/// Copies the kernel-dialect layer `src` to the new directory `dst` in the OCI dialect, the
/// form a layer tar carries (for `tar -c`): char 0/0 whiteouts become empty `.wh.NAME` files
/// (mode 0644, owner 0:0, mtime 0, as docker and `stratafs layer export` write them),
/// `trusted.overlay.opaque=y` becomes a `.wh..wh..opq` file, and every `trusted.overlay.*`
/// xattr (the kernel's bookkeeping: origin, impure, uuid, ...) is dropped. Everything else is
/// copied by `cp -a` (owners, modes, nanosecond mtimes, xattrs, hard links, devices, holes);
/// directories whose entries were changed get their mtime back.
pub fn convert_to_oci(src: &Path, dst: &Path) {
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg("--")
        .arg(src)
        .arg(dst)
        .output()
        .expect("spawn cp");
    assert!(
        out.status.success(),
        "cp -a {} {}: {}",
        src.display(),
        dst.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    fix_oci(src, dst);
}

fn drop_overlay_xattrs(p: &Path) -> bool {
    let mut opaque = false;
    for name in llistxattr(p).unwrap() {
        if name.starts_with(b"trusted.overlay.") {
            if name == b"trusted.overlay.opaque" && lgetxattr(p, &name).unwrap() == b"y" {
                opaque = true;
            }
            lremovexattr(p, &name).unwrap();
        }
    }
    opaque
}

fn oci_marker(p: &Path) {
    fs::write(p, b"").unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(0o644)).unwrap();
    lchown(p, Some(0), Some(0)).unwrap();
    set_times_nofollow(p, 0, 0).unwrap();
}

fn fix_oci(src: &Path, dst: &Path) {
    let mut names: Vec<_> = fs::read_dir(dst)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for name in names {
        let d = dst.join(&name);
        let md = fs::symlink_metadata(&d).unwrap();
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            fs::remove_file(&d).unwrap();
            let mut wh = b".wh.".to_vec();
            wh.extend_from_slice(name.as_bytes());
            oci_marker(&dst.join(OsStr::from_bytes(&wh)));
            continue;
        }
        if ft.is_dir() {
            fix_oci(&src.join(&name), &d);
        } else {
            drop_overlay_xattrs(&d);
        }
    }
    if drop_overlay_xattrs(dst) {
        oci_marker(&dst.join(".wh..wh..opq"));
    }
    let smd = fs::symlink_metadata(src).unwrap();
    set_times_nofollow(dst, smd.mtime(), smd.mtime_nsec()).unwrap();
}
