//! Layer builders: files with content/mode/owner/mtime/xattrs, links, special files, and every
//! whiteout/opaque dialect stratafs reads.

use std::ffi::OsStr;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::{Path, PathBuf};

use super::sys::{lgetxattr, lsetxattr, mknod, set_times_nofollow};

/// Whiteout dialects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whiteout {
    /// Character device 0/0 (kernel overlayfs).
    CharDev,
    /// Zero-size regular file with `trusted.overlay.whiteout`; the parent gets
    /// `trusted.overlay.opaque=x` (the kernel only honours xattr whiteouts there).
    XattrTrusted,
    /// Zero-size regular file with `user.overlay.whiteout`; the parent gets
    /// `user.overlay.opaque=x`.
    XattrUser,
    /// OCI `.wh.NAME` file.
    Oci,
}

pub const ALL_WHITEOUTS: [Whiteout; 4] = [
    Whiteout::CharDev,
    Whiteout::XattrTrusted,
    Whiteout::XattrUser,
    Whiteout::Oci,
];

/// Opaque-directory dialects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opaque {
    /// `trusted.overlay.opaque=y`
    Trusted,
    /// `user.overlay.opaque=y`
    UserOverlay,
    /// `user.fuseoverlayfs.opaque=y`
    UserFuseOverlayfs,
    /// OCI `.wh..wh..opq` file in the directory.
    Oci,
}

pub const ALL_OPAQUES: [Opaque; 4] = [
    Opaque::Trusted,
    Opaque::UserOverlay,
    Opaque::UserFuseOverlayfs,
    Opaque::Oci,
];

/// Converts test-friendly path arguments (str, byte strings) to a relative path.
pub fn rel(p: impl AsRef<[u8]>) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(p.as_ref()))
}

/// One layer directory being built.
#[derive(Clone, Debug)]
pub struct Layer {
    pub root: PathBuf,
}

/// A node just created in a layer; its methods change its metadata (chainable).
#[derive(Clone, Debug)]
pub struct Node {
    pub path: PathBuf,
}

impl Node {
    fn is_symlink(&self) -> bool {
        fs::symlink_metadata(&self.path)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
    }

    /// chmod (permission bits incl. setuid/setgid/sticky). Not for symlinks.
    pub fn mode(self, mode: u32) -> Node {
        assert!(
            !self.is_symlink(),
            "test bug: chmod on a symlink {}",
            self.path.display()
        );
        fs::set_permissions(&self.path, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", self.path.display()));
        self
    }

    /// lchown; the permission bits (incl. setuid bits, which chown clears) are restored.
    pub fn owner(self, uid: u32, gid: u32) -> Node {
        let md = fs::symlink_metadata(&self.path).unwrap();
        lchown(&self.path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("lchown {}: {e}", self.path.display()));
        if !md.file_type().is_symlink() {
            fs::set_permissions(
                &self.path,
                fs::Permissions::from_mode(md.permissions().mode() & 0o7777),
            )
            .unwrap();
        }
        self
    }

    /// Sets atime and mtime (not following symlinks).
    pub fn mtime(self, sec: i64, nsec: i64) -> Node {
        set_times_nofollow(&self.path, sec, nsec)
            .unwrap_or_else(|e| panic!("utimensat {}: {e}", self.path.display()));
        self
    }

    /// Sets an xattr (not following symlinks).
    pub fn xattr(self, name: &str, value: &[u8]) -> Node {
        lsetxattr(&self.path, name.as_bytes(), value)
            .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", self.path.display()));
        self
    }
}

impl Layer {
    pub fn new(root: PathBuf) -> Layer {
        fs::create_dir_all(&root).unwrap();
        Layer { root }
    }

    pub fn path(&self, p: impl AsRef<[u8]>) -> PathBuf {
        let r = rel(p);
        if r.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(r)
        }
    }

    fn parent_ready(&self, p: &Path) {
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("mkdir -p {}: {e}", parent.display()));
        }
    }

    /// A directory (mkdir -p), mode 0755 unless changed.
    pub fn dir(&self, p: impl AsRef<[u8]>) -> Node {
        let path = self.path(p);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir -p {}: {e}", path.display()));
        Node { path }
    }

    /// A regular file with content, mode 0644 unless changed.
    pub fn file(&self, p: impl AsRef<[u8]>, content: impl AsRef<[u8]>) -> Node {
        let path = self.path(p);
        self.parent_ready(&path);
        fs::write(&path, content.as_ref())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        Node { path }
    }

    pub fn symlink(&self, p: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Node {
        let path = self.path(p);
        self.parent_ready(&path);
        std::os::unix::fs::symlink(OsStr::from_bytes(target.as_ref()), &path)
            .unwrap_or_else(|e| panic!("symlink {}: {e}", path.display()));
        Node { path }
    }

    /// A hard link `new` to the existing `existing` (both in this layer).
    pub fn hardlink(&self, existing: impl AsRef<[u8]>, new: impl AsRef<[u8]>) -> Node {
        let (a, b) = (self.path(existing), self.path(new));
        self.parent_ready(&b);
        fs::hard_link(&a, &b)
            .unwrap_or_else(|e| panic!("link {} {}: {e}", a.display(), b.display()));
        Node { path: b }
    }

    pub fn fifo(&self, p: impl AsRef<[u8]>) -> Node {
        let path = self.path(p);
        self.parent_ready(&path);
        mknod(&path, libc::S_IFIFO | 0o644, 0, 0)
            .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
        Node { path }
    }

    /// A unix socket file, made by a real bind(2). Keep the path under 108 bytes.
    pub fn socket(&self, p: impl AsRef<[u8]>) -> Node {
        let path = self.path(p);
        self.parent_ready(&path);
        let l = std::os::unix::net::UnixListener::bind(&path)
            .unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        drop(l);
        Node { path }
    }

    pub fn chardev(&self, p: impl AsRef<[u8]>, major: u32, minor: u32) -> Node {
        let path = self.path(p);
        self.parent_ready(&path);
        mknod(&path, libc::S_IFCHR | 0o644, major, minor)
            .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
        Node { path }
    }

    pub fn blockdev(&self, p: impl AsRef<[u8]>, major: u32, minor: u32) -> Node {
        let path = self.path(p);
        self.parent_ready(&path);
        mknod(&path, libc::S_IFBLK | 0o600, major, minor)
            .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
        Node { path }
    }

    /// Marks the parent of an xattr whiteout with `opaque=x` (unless already opaque, which
    /// would make the case ambiguous: the kernel ignores xattr whiteouts in a `=y` directory).
    fn mark_x(&self, parent: &Path, name: &[u8]) {
        if let Ok(v) = lgetxattr(parent, name) {
            assert_ne!(
                v,
                b"y",
                "test bug: xattr whiteout inside an opaque directory {}",
                parent.display()
            );
        }
        lsetxattr(parent, name, b"x").unwrap();
    }

    /// A whiteout for `p` in the given dialect.
    pub fn whiteout(&self, p: impl AsRef<[u8]>, dialect: Whiteout) -> Node {
        let path = self.path(p);
        self.parent_ready(&path);
        let parent = path.parent().unwrap().to_path_buf();
        match dialect {
            Whiteout::CharDev => {
                mknod(&path, libc::S_IFCHR | 0o600, 0, 0)
                    .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
                Node { path }
            }
            Whiteout::XattrTrusted => {
                fs::write(&path, b"").unwrap();
                lsetxattr(&path, b"trusted.overlay.whiteout", b"").unwrap();
                self.mark_x(&parent, b"trusted.overlay.opaque");
                Node { path }
            }
            Whiteout::XattrUser => {
                fs::write(&path, b"").unwrap();
                lsetxattr(&path, b"user.overlay.whiteout", b"").unwrap();
                self.mark_x(&parent, b"user.overlay.opaque");
                Node { path }
            }
            Whiteout::Oci => {
                let mut name = b".wh.".to_vec();
                name.extend_from_slice(path.file_name().unwrap().as_bytes());
                let wh = parent.join(OsStr::from_bytes(&name));
                fs::write(&wh, b"").unwrap();
                Node { path: wh }
            }
        }
    }

    /// A char 0/0 whiteout for `new` that is a hard link of the existing whiteout `existing`
    /// (the way the kernel shares one whiteout inode).
    pub fn whiteout_link(&self, existing: impl AsRef<[u8]>, new: impl AsRef<[u8]>) -> Node {
        self.hardlink(existing, new)
    }

    /// Makes `p` an opaque directory (creating it if needed) in the given dialect.
    pub fn opaque(&self, p: impl AsRef<[u8]>, dialect: Opaque) -> Node {
        let node = self.dir(p);
        match dialect {
            Opaque::Trusted => node.xattr("trusted.overlay.opaque", b"y"),
            Opaque::UserOverlay => node.xattr("user.overlay.opaque", b"y"),
            Opaque::UserFuseOverlayfs => node.xattr("user.fuseoverlayfs.opaque", b"y"),
            Opaque::Oci => {
                fs::write(node.path.join(".wh..wh..opq"), b"").unwrap();
                node
            }
        }
    }

    /// A sparse file: 64 KiB of data at 0, a hole, 64 KiB of data at 10 MiB.
    pub fn sparse_file(&self, p: impl AsRef<[u8]>) -> Node {
        let path = self.path(p);
        self.parent_ready(&path);
        let mut f = fs::File::create(&path).unwrap();
        let chunk: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8 + 1).collect();
        f.write_all(&chunk).unwrap();
        f.seek(SeekFrom::Start(10 << 20)).unwrap();
        f.write_all(&chunk).unwrap();
        f.sync_all().unwrap();
        Node { path }
    }
}
