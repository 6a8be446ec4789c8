//! Thin libc wrappers used by the harness (xattrs, mknod, times, raw readdir).

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The path as a C string (panics on an interior NUL, which no test path has).
pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path contains NUL")
}

/// The calling thread's errno.
pub fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Converts a libc return value into `Ok(value)` or `Err(errno)`.
pub fn check(ret: libc::c_int) -> Result<libc::c_int, i32> {
    if ret < 0 { Err(errno()) } else { Ok(ret) }
}

/// Name of an errno value, for messages.
pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTCONN => "ENOTCONN",
        libc::ESTALE => "ESTALE",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}

/// Shows a `Result<T, errno>` readably.
pub fn show_res<T: std::fmt::Debug>(r: &Result<T, i32>) -> String {
    match r {
        Ok(v) => format!("Ok({v:?})"),
        Err(e) => errno_name(*e),
    }
}

fn is_unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EOPNOTSUPP)
}

/// All xattr names of `p` (not following symlinks), in the order the filesystem gives.
/// "Not supported" is an empty list.
/// `rel: name name …`: the xattr names of `root/rel` a mount shows (hidden ones left out),
/// sorted, for comparing mounts.
pub fn visible_xattr_names(root: &Path, rel: &str) -> String {
    let mut names: Vec<String> = llistxattr(&root.join(rel))
        .unwrap_or_else(|e| panic!("listxattr {rel}: {e}"))
        .into_iter()
        .filter(|x| !super::snapshot::is_hidden_xattr(x))
        .map(|x| String::from_utf8_lossy(&x).into_owned())
        .collect();
    names.sort();
    format!("{rel}: {}", names.join(" "))
}

pub fn llistxattr(p: &Path) -> io::Result<Vec<Vec<u8>>> {
    let c = cpath(p);
    loop {
        // SAFETY: a NULL buffer of size 0 asks only for the needed size.
        let n = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if is_unsupported(&e) {
                return Ok(Vec::new());
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; n as usize];
        // SAFETY: buf is valid for buf.len() bytes.
        let m = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if m < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(e);
        }
        buf.truncate(m as usize);
        return Ok(buf
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| s.to_vec())
            .collect());
    }
}

/// The value of xattr `name` of `p` (not following symlinks).
pub fn lgetxattr(p: &Path, name: &[u8]) -> io::Result<Vec<u8>> {
    let c = cpath(p);
    let n = CString::new(name).expect("xattr name with NUL");
    loop {
        // SAFETY: size query with NULL buffer.
        let len = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; len as usize];
        if len == 0 {
            return Ok(buf);
        }
        // SAFETY: buf is valid for buf.len() bytes.
        let m =
            unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if m < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(e);
        }
        buf.truncate(m as usize);
        return Ok(buf);
    }
}

/// Sets xattr `name` on `p` (not following symlinks).
pub fn lsetxattr(p: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let c = cpath(p);
    let n = CString::new(name).expect("xattr name with NUL");
    // SAFETY: pointers valid for the given lengths.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Removes xattr `name` from `p` (not following symlinks).
pub fn lremovexattr(p: &Path, name: &[u8]) -> io::Result<()> {
    let c = cpath(p);
    let n = CString::new(name).expect("xattr name with NUL");
    // SAFETY: valid C strings.
    let r = unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// mknod with a full mode (type bits included) and a device number.
pub fn mknod(p: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    let c = cpath(p);
    let dev = libc::makedev(major, minor);
    // SAFETY: valid C string.
    let r = unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, dev) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets atime and mtime of `p` (not following symlinks).
pub fn set_times_nofollow(p: &Path, sec: i64, nsec: i64) -> io::Result<()> {
    let c = cpath(p);
    let ts = libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let times = [ts, ts];
    // SAFETY: valid C string and two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// major/minor of a device number.
pub fn major_minor(rdev: u64) -> (u32, u32) {
    (libc::major(rdev), libc::minor(rdev))
}

/// One directory entry as readdir(3) returned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawDirent {
    pub name: Vec<u8>,
    pub ino: u64,
    pub dtype: u8,
    pub off: i64,
}

/// An open directory stream (opendir/readdir/telldir/seekdir).
pub struct Dir(*mut libc::DIR);

impl Dir {
    pub fn open(p: &Path) -> io::Result<Dir> {
        let c = cpath(p);
        // SAFETY: valid C string.
        let d = unsafe { libc::opendir(c.as_ptr()) };
        if d.is_null() {
            Err(io::Error::last_os_error())
        } else {
            Ok(Dir(d))
        }
    }

    /// The next entry, `None` at the end.
    pub fn read(&mut self) -> io::Result<Option<RawDirent>> {
        // SAFETY: errno is thread-local; self.0 is an open DIR*.
        unsafe { *libc::__errno_location() = 0 };
        let ent = unsafe { libc::readdir(self.0) };
        if ent.is_null() {
            let e = errno();
            return if e == 0 {
                Ok(None)
            } else {
                Err(io::Error::from_raw_os_error(e))
            };
        }
        // SAFETY: readdir returned a valid dirent that lives until the next call.
        let ent = unsafe { &*ent };
        let name = unsafe { CStr::from_ptr(ent.d_name.as_ptr()) }
            .to_bytes()
            .to_vec();
        Ok(Some(RawDirent {
            name,
            ino: ent.d_ino,
            dtype: ent.d_type,
            off: ent.d_off,
        }))
    }

    pub fn tell(&mut self) -> i64 {
        // SAFETY: open DIR*.
        unsafe { libc::telldir(self.0) as i64 }
    }

    pub fn seek(&mut self, pos: i64) {
        // SAFETY: open DIR*; pos came from telldir on this stream.
        unsafe { libc::seekdir(self.0, pos as libc::c_long) }
    }

    pub fn rewind(&mut self) {
        // SAFETY: open DIR*.
        unsafe { libc::rewinddir(self.0) }
    }

    /// Reads every remaining entry.
    pub fn read_all(&mut self) -> io::Result<Vec<RawDirent>> {
        let mut out = Vec::new();
        while let Some(e) = self.read()? {
            out.push(e);
        }
        Ok(out)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // SAFETY: self.0 is open and closed exactly once.
        unsafe { libc::closedir(self.0) };
    }
}

/// All entries of a directory, "." and ".." included, in readdir order.
pub fn read_dir_raw(p: &Path) -> io::Result<Vec<RawDirent>> {
    Dir::open(p)?.read_all()
}

/// lseek on an fd, as `Ok(offset)` or `Err(errno)`.
pub fn lseek(fd: i32, off: i64, whence: i32) -> Result<i64, i32> {
    // SAFETY: plain syscall.
    let r = unsafe { libc::lseek(fd, off, whence) };
    if r < 0 { Err(errno()) } else { Ok(r) }
}

/// statvfs of a path.
pub fn statvfs(p: &Path) -> Result<libc::statvfs, i32> {
    let c = cpath(p);
    // SAFETY: zeroed statvfs is a valid out buffer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if r < 0 { Err(errno()) } else { Ok(st) }
}

/// The errno of a failed I/O call; `None` on success (or an error without one).
pub fn errno_of<T>(r: io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// Counts entries created directly in a directory (inotify `IN_CREATE`), from
/// when it is made until [`CreateWatch::count`].
pub struct CreateWatch {
    fd: std::os::fd::OwnedFd,
}

impl CreateWatch {
    pub fn new(dir: &Path) -> CreateWatch {
        use std::os::fd::FromRawFd;
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(raw >= 0, "inotify_init1: {}", io::Error::last_os_error());
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let p = cpath(dir);
        let wd = unsafe { libc::inotify_add_watch(raw, p.as_ptr(), libc::IN_CREATE) };
        assert!(
            wd >= 0,
            "inotify_add_watch {}: {}",
            dir.display(),
            io::Error::last_os_error()
        );
        CreateWatch { fd }
    }

    /// The creations seen so far (an overflow counts as many).
    pub fn count(&self) -> usize {
        use std::os::fd::AsRawFd;
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0;
        loop {
            let got =
                unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if got <= 0 {
                return n;
            }
            let mut at = 0;
            let head = std::mem::size_of::<libc::inotify_event>();
            while at + head <= got as usize {
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
                n += if ev.mask & libc::IN_Q_OVERFLOW != 0 {
                    1 << 20
                } else {
                    1
                };
                at += head + ev.len as usize;
            }
        }
    }
}
