//! Extended attributes of an entry named relative to a directory fd, without
//! following a final symlink and without an fd to the entry itself.
//!
//! Linux 6.13 added `getxattrat`/`listxattrat`, which do exactly this. On older
//! kernels we fall back to the `/proc/self/fd/N/NAME` form, which still
//! resolves relative to the directory fd and never follows `NAME` if it is a
//! symlink (the `l*xattr` calls).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

// Same number on every architecture: these syscalls postdate the unified table.
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;
const SYS_SETXATTRAT: libc::c_long = 463;

/// `struct xattr_args` from `include/uapi/linux/xattr.h`.
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

static AT_CALLS_MISSING: AtomicBool = AtomicBool::new(false);

fn proc_path(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<CString> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name.to_bytes());
    CString::new(p).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Runs one of the `*xattrat` syscalls unless the kernel is known to lack
/// them; `None` means "use the /proc fallback".
fn try_at_call(call: impl FnOnce() -> libc::c_long) -> Option<io::Result<usize>> {
    if AT_CALLS_MISSING.load(Ordering::Relaxed) {
        return None;
    }
    let r = call();
    if r >= 0 {
        return Some(Ok(r as usize));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENOSYS) {
        AT_CALLS_MISSING.store(true, Ordering::Relaxed);
        return None;
    }
    Some(Err(err))
}

fn buf_len(buf: &[u8]) -> u32 {
    u32::try_from(buf.len()).unwrap_or(u32::MAX)
}

/// Reads xattr `attr` of `name` beneath `dir` into `buf`; with an empty `buf`
/// returns the value's size. `name` may be `.` for the directory itself, or
/// empty for whatever `dir` is (an O_PATH fd to a file, too).
pub fn getxattr_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    attr: &CStr,
    buf: &mut [u8],
) -> io::Result<usize> {
    if name.is_empty() {
        // By the magic link: the `*xattrat` calls take an empty name only for
        // fds that are not O_PATH.
        let path = super::proc_fd_path(dir);
        let r = if buf.is_empty() {
            rustix::fs::getxattr_query(path.as_c_str(), attr)
        } else {
            rustix::fs::getxattr(path.as_c_str(), attr, buf)
        };
        return r.map_err(io::Error::from);
    }
    let mut args = XattrArgs {
        value: if buf.is_empty() {
            0
        } else {
            buf.as_mut_ptr() as u64
        },
        size: buf_len(buf),
        flags: 0,
    };
    // SAFETY: `name` and `attr` are NUL-terminated; `args.value` points to
    // `buf`, which is writable for `args.size` bytes and outlives the call;
    // `args` is a correctly laid out `struct xattr_args` of the size passed.
    let at = try_at_call(|| unsafe {
        libc::syscall(
            SYS_GETXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            attr.as_ptr(),
            &mut args as *mut XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    });
    if let Some(result) = at {
        return result;
    }
    let path = proc_path(dir, name)?;
    if buf.is_empty() {
        return rustix::fs::lgetxattr_query(path.as_c_str(), attr).map_err(io::Error::from);
    }
    rustix::fs::lgetxattr(path.as_c_str(), attr, buf).map_err(io::Error::from)
}

/// Lists xattr names of `name` beneath `dir` into `buf` (NUL-separated); with
/// an empty `buf` returns the list's size.
pub fn listxattr_at(dir: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    let ptr = if buf.is_empty() {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr()
    };
    // SAFETY: `name` is NUL-terminated; `ptr` is null (size query) or
    // points to `buf`, writable for `buf.len()` bytes for the whole call.
    let at = try_at_call(|| unsafe {
        libc::syscall(
            SYS_LISTXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            ptr,
            buf.len(),
        )
    });
    if let Some(result) = at {
        return result;
    }
    let path = proc_path(dir, name)?;
    if buf.is_empty() {
        return rustix::fs::llistxattr_query(path.as_c_str()).map_err(io::Error::from);
    }
    rustix::fs::llistxattr(path.as_c_str(), buf).map_err(io::Error::from)
}

/// Sets xattr `attr` of `name` beneath `dir` to `value`, not following a
/// final symlink; an empty `name` means `dir` itself, as in [`getxattr_at`].
pub fn setxattr_at(dir: BorrowedFd<'_>, name: &CStr, attr: &CStr, value: &[u8]) -> io::Result<()> {
    if name.is_empty() {
        let path = super::proc_fd_path(dir);
        return rustix::fs::setxattr(
            path.as_c_str(),
            attr,
            value,
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(io::Error::from);
    }
    let args = XattrArgs {
        value: value.as_ptr() as u64,
        size: u32::try_from(value.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
        flags: 0,
    };
    // SAFETY: `name` and `attr` are NUL-terminated; `args.value` points to
    // `value`, readable for `args.size` bytes during the call; `args` is a
    // correctly laid out `struct xattr_args` of the size passed.
    let at = try_at_call(|| unsafe {
        libc::syscall(
            SYS_SETXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            attr.as_ptr(),
            &args as *const XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    });
    if let Some(result) = at {
        return result.map(drop);
    }
    let path = proc_path(dir, name)?;
    rustix::fs::lsetxattr(
        path.as_c_str(),
        attr,
        value,
        rustix::fs::XattrFlags::empty(),
    )
    .map_err(io::Error::from)
}
