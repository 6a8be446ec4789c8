//! Filesystem operations for the write tests: a small deterministic PRNG, generated data, an
//! [`Op`] type that runs against any mount point through raw syscalls, and results normalized
//! so that two filesystems can be compared exactly ([`Res`]).
//!
//! Normalization: stat results keep type, mode, owner, size, nlink (not for directories: the
//! kernel reports 1 for a merged directory), rdev and mtime; an mtime at or after the run's
//! start (`t0`) is "fresh" (set by the clock, so not comparable between two mounts), an older
//! one (set explicitly by a layer builder or a `utimensat` with a fixed time) is compared
//! exactly. st_ino, st_dev, atime, ctime and st_blocks are never compared here.

use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::snapshot::{Kind, sha256_hex};
use super::sys::{cpath, errno, read_dir_raw};

/// splitmix64: deterministic, seedable, good enough for test generation.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, n) (0 when n == 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo))
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }

    /// An index chosen with the given weights.
    pub fn weighted(&mut self, w: &[u32]) -> usize {
        let total: u64 = w.iter().map(|x| u64::from(*x)).sum();
        let mut r = self.below(total);
        for (i, x) in w.iter().enumerate() {
            if r < u64::from(*x) {
                return i;
            }
            r -= u64::from(*x);
        }
        w.len() - 1
    }
}

/// `len` pseudo-random bytes, a pure function of (seed, len).
pub fn gen_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ len as u64);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&r.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Data written by an op: generated (seed, len) or literal.
#[derive(Clone, PartialEq, Eq)]
pub enum Data {
    Gen { seed: u64, len: usize },
    Lit(Vec<u8>),
}

impl Data {
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Data::Gen { seed, len } => gen_bytes(*seed, *len),
            Data::Lit(v) => v.clone(),
        }
    }

    pub fn lit(s: impl AsRef<[u8]>) -> Data {
        Data::Lit(s.as_ref().to_vec())
    }
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Data::Gen { seed, len } => write!(f, "gen(seed={seed}, len={len})"),
            Data::Lit(v) if v.len() <= 48 => write!(f, "b\"{}\"", v.escape_ascii()),
            Data::Lit(v) => write!(f, "b\"{}\"...({} bytes)", v[..48].escape_ascii(), v.len()),
        }
    }
}

/// A time argument of utimensat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeArg {
    Now,
    Omit,
    At(i64, i64),
}

impl TimeArg {
    fn timespec(self) -> libc::timespec {
        match self {
            TimeArg::Now => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            TimeArg::Omit => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            TimeArg::At(s, n) => libc::timespec {
                tv_sec: s,
                tv_nsec: n,
            },
        }
    }
}

/// Number of fd slots an op sequence can use.
pub const SLOTS: usize = 4;

/// One operation, with paths relative to the mount root ("" is the root itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// open(2) into a slot (closing what the slot held). O_CLOEXEC|O_NONBLOCK are added
    /// (O_NONBLOCK: opening a FIFO never blocks; it changes nothing for regular files).
    Open {
        slot: usize,
        path: String,
        flags: i32,
        mode: u32,
    },
    Close {
        slot: usize,
    },
    Pwrite {
        slot: usize,
        off: u64,
        data: Data,
    },
    /// write(2) at the fd's offset (the end for O_APPEND).
    Write {
        slot: usize,
        data: Data,
    },
    Pread {
        slot: usize,
        off: u64,
        len: usize,
    },
    Ftruncate {
        slot: usize,
        len: u64,
    },
    Fallocate {
        slot: usize,
        mode: i32,
        off: u64,
        len: u64,
    },
    /// copy_file_range(2) with explicit offsets, repeated until `len` or a 0 return.
    CopyFileRange {
        src: usize,
        dst: usize,
        off_in: u64,
        off_out: u64,
        len: usize,
    },
    Fsync {
        slot: usize,
    },
    Fstat {
        slot: usize,
    },
    Fchmod {
        slot: usize,
        mode: u32,
    },
    /// open O_RDONLY, read everything, close.
    ReadFile {
        path: String,
    },
    /// truncate(2) (follows symlinks).
    Truncate {
        path: String,
        len: u64,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Unlink {
        path: String,
    },
    /// renameat2(2); flags 0, RENAME_NOREPLACE or RENAME_EXCHANGE.
    Rename {
        from: String,
        to: String,
        flags: u32,
    },
    Symlink {
        target: String,
        path: String,
    },
    /// linkat(2) without following symlinks.
    Link {
        from: String,
        to: String,
    },
    /// mknod(2); `mode` includes the type (S_IFIFO, S_IFSOCK).
    Mknod {
        path: String,
        mode: u32,
    },
    /// chmod(2) (follows symlinks).
    Chmod {
        path: String,
        mode: u32,
    },
    /// lchown(2).
    Chown {
        path: String,
        uid: u32,
        gid: u32,
    },
    Utimens {
        path: String,
        atime: TimeArg,
        mtime: TimeArg,
        nofollow: bool,
    },
    /// lsetxattr(2); flags 0, XATTR_CREATE or XATTR_REPLACE.
    Setxattr {
        path: String,
        name: String,
        value: Data,
        flags: i32,
    },
    Removexattr {
        path: String,
        name: String,
    },
    Getxattr {
        path: String,
        name: String,
    },
    /// llistxattr(2), sorted.
    Listxattr {
        path: String,
    },
    Lstat {
        path: String,
    },
    Stat {
        path: String,
    },
    /// Names and d_type of a directory, sorted ("." and ".." left out).
    Readdir {
        path: String,
    },
    Readlink {
        path: String,
    },
    /// open O_RDONLY (a file or a directory), fsync, close.
    FsyncPath {
        path: String,
    },
}

impl Op {
    /// The variant's name (for failure signatures).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Open { .. } => "open",
            Op::Close { .. } => "close",
            Op::Pwrite { .. } => "pwrite",
            Op::Write { .. } => "write",
            Op::Pread { .. } => "pread",
            Op::Ftruncate { .. } => "ftruncate",
            Op::Fallocate { .. } => "fallocate",
            Op::CopyFileRange { .. } => "copy_file_range",
            Op::Fsync { .. } => "fsync",
            Op::Fstat { .. } => "fstat",
            Op::Fchmod { .. } => "fchmod",
            Op::ReadFile { .. } => "readfile",
            Op::Truncate { .. } => "truncate",
            Op::Mkdir { .. } => "mkdir",
            Op::Rmdir { .. } => "rmdir",
            Op::Unlink { .. } => "unlink",
            Op::Rename { .. } => "rename",
            Op::Symlink { .. } => "symlink",
            Op::Link { .. } => "link",
            Op::Mknod { .. } => "mknod",
            Op::Chmod { .. } => "chmod",
            Op::Chown { .. } => "chown",
            Op::Utimens { .. } => "utimensat",
            Op::Setxattr { .. } => "setxattr",
            Op::Removexattr { .. } => "removexattr",
            Op::Getxattr { .. } => "getxattr",
            Op::Listxattr { .. } => "listxattr",
            Op::Lstat { .. } => "lstat",
            Op::Stat { .. } => "stat",
            Op::Readdir { .. } => "readdir",
            Op::Readlink { .. } => "readlink",
            Op::FsyncPath { .. } => "fsync(path)",
        }
    }
}

/// Symbolic open flags, for messages.
pub fn show_open_flags(flags: i32) -> String {
    let mut parts = vec![
        match flags & libc::O_ACCMODE {
            libc::O_RDONLY => "O_RDONLY",
            libc::O_WRONLY => "O_WRONLY",
            _ => "O_RDWR",
        }
        .to_string(),
    ];
    for (bit, name) in [
        (libc::O_CREAT, "O_CREAT"),
        (libc::O_EXCL, "O_EXCL"),
        (libc::O_TRUNC, "O_TRUNC"),
        (libc::O_APPEND, "O_APPEND"),
        (libc::O_DIRECTORY, "O_DIRECTORY"),
        (libc::O_NOFOLLOW, "O_NOFOLLOW"),
    ] {
        if flags & bit != 0 {
            parts.push(name.into());
        }
    }
    parts.join("|")
}

fn show_rename_flags(flags: u32) -> &'static str {
    match flags {
        0 => "0",
        libc::RENAME_NOREPLACE => "RENAME_NOREPLACE",
        libc::RENAME_EXCHANGE => "RENAME_EXCHANGE",
        _ => "?",
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Open {
                slot,
                path,
                flags,
                mode,
            } => write!(
                f,
                "fd{slot} = open({path:?}, {}, {mode:o})",
                show_open_flags(*flags)
            ),
            Op::Rename { from, to, flags } => write!(
                f,
                "renameat2({from:?}, {to:?}, {})",
                show_rename_flags(*flags)
            ),
            Op::Mknod { path, mode } => {
                let t = match mode & libc::S_IFMT {
                    libc::S_IFIFO => "S_IFIFO",
                    libc::S_IFSOCK => "S_IFSOCK",
                    _ => "?",
                };
                write!(f, "mknod({path:?}, {t}|{:o})", mode & 0o7777)
            }
            Op::Chmod { path, mode } => write!(f, "chmod({path:?}, {mode:o})"),
            Op::Fchmod { slot, mode } => write!(f, "fchmod(fd{slot}, {mode:o})"),
            Op::Mkdir { path, mode } => write!(f, "mkdir({path:?}, {mode:o})"),
            Op::Fallocate {
                slot,
                mode,
                off,
                len,
            } => {
                let m = match *mode {
                    0 => "0".to_string(),
                    libc::FALLOC_FL_KEEP_SIZE => "KEEP_SIZE".into(),
                    x if x == libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE => {
                        "PUNCH_HOLE|KEEP_SIZE".into()
                    }
                    x if x == libc::FALLOC_FL_ZERO_RANGE => "ZERO_RANGE".into(),
                    x => format!("{x:#x}"),
                };
                write!(f, "fallocate(fd{slot}, {m}, {off}, {len})")
            }
            Op::Setxattr {
                path,
                name,
                value,
                flags,
            } => {
                let fl = match *flags {
                    0 => "0",
                    libc::XATTR_CREATE => "XATTR_CREATE",
                    libc::XATTR_REPLACE => "XATTR_REPLACE",
                    _ => "?",
                };
                write!(f, "lsetxattr({path:?}, {name:?}, {value:?}, {fl})")
            }
            other => write!(f, "{other:?}"),
        }
    }
}

/// A normalized mtime: "fresh" (set from the clock during the run) or an exact old value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeN {
    Fresh,
    At(i64, i64),
}

impl TimeN {
    pub fn new(sec: i64, nsec: i64, t0: i64) -> TimeN {
        if sec >= t0 {
            TimeN::Fresh
        } else {
            TimeN::At(sec, nsec)
        }
    }
}

/// A normalized stat result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatN {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// None for directories.
    pub nlink: Option<u64>,
    pub rdev: (u32, u32),
    pub mtime: TimeN,
}

impl StatN {
    pub fn from_stat(st: &libc::stat, t0: i64) -> StatN {
        let kind = Kind::from_mode(st.st_mode);
        StatN {
            kind,
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            nlink: if kind == Kind::Dir {
                None
            } else {
                Some(st.st_nlink)
            },
            rdev: if matches!(kind, Kind::CharDev | Kind::BlockDev) {
                (libc::major(st.st_rdev), libc::minor(st.st_rdev))
            } else {
                (0, 0)
            },
            mtime: TimeN::new(st.st_mtime, st.st_mtime_nsec, t0),
        }
    }
}

/// What a successful op returned.
#[derive(Clone, PartialEq, Eq)]
pub enum Out {
    Unit,
    Num(i64),
    Data(Vec<u8>),
    Stat(StatN),
    Names(Vec<(String, Kind)>),
    XattrNames(Vec<String>),
}

impl fmt::Debug for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Out::Unit => write!(f, "()"),
            Out::Num(n) => write!(f, "{n}"),
            Out::Data(d) if d.len() <= 64 => write!(f, "b\"{}\"", d.escape_ascii()),
            Out::Data(d) => write!(
                f,
                "{} bytes sha256 {}.. starting b\"{}\"",
                d.len(),
                &sha256_hex(d)[..16],
                d[..32].escape_ascii()
            ),
            Out::Stat(s) => write!(
                f,
                "{:?} mode={:o} uid={} gid={} size={} nlink={:?} rdev={:?} mtime={:?}",
                s.kind, s.mode, s.uid, s.gid, s.size, s.nlink, s.rdev, s.mtime
            ),
            Out::Names(n) => {
                let v: Vec<String> = n.iter().map(|(a, k)| format!("{a}:{k:?}")).collect();
                write!(f, "[{}]", v.join(", "))
            }
            Out::XattrNames(n) => write!(f, "{n:?}"),
        }
    }
}

/// An op's result: Ok(output) or Err(errno).
pub type Res = Result<Out, i32>;

pub fn show_result(r: &Res) -> String {
    match r {
        Ok(o) => format!("Ok({o:?})"),
        Err(e) => super::sys::errno_name(*e),
    }
}

/// The per-mount side of an op sequence: the mount root, open fds, and `t0`.
pub struct Ctx {
    pub root: PathBuf,
    pub fds: Vec<Option<OwnedFd>>,
    pub t0: i64,
}

fn neg(r: libc::c_int) -> Result<libc::c_int, i32> {
    if r < 0 { Err(errno()) } else { Ok(r) }
}

fn negl(r: isize) -> Result<isize, i32> {
    if r < 0 { Err(errno()) } else { Ok(r) }
}

fn cs(s: &str) -> CString {
    CString::new(s).expect("NUL in a string")
}

/// The current wall-clock time in seconds.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl Ctx {
    pub fn new(root: &Path, t0: i64) -> Ctx {
        Ctx {
            root: root.to_path_buf(),
            fds: (0..SLOTS).map(|_| None).collect(),
            t0,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    fn c(&self, rel: &str) -> CString {
        cpath(&self.path(rel))
    }

    fn fd(&self, slot: usize) -> Result<i32, i32> {
        match self.fds.get(slot).and_then(|f| f.as_ref()) {
            Some(f) => Ok(f.as_raw_fd()),
            None => Err(libc::EBADF),
        }
    }

    /// Closes every open fd.
    pub fn close_all(&mut self) {
        for f in &mut self.fds {
            *f = None;
        }
    }

    fn stat_out(&self, st: &libc::stat) -> Out {
        Out::Stat(StatN::from_stat(st, self.t0))
    }

    /// Runs one op. Never panics on an errno: that is the result.
    pub fn exec(&mut self, op: &Op) -> Res {
        // SAFETY (whole function): raw syscalls on valid C strings, owned fds and buffers of
        // the sizes passed.
        unsafe {
            match op {
                Op::Open {
                    slot,
                    path,
                    flags,
                    mode,
                } => {
                    self.fds[*slot] = None;
                    let fd = neg(libc::open(
                        self.c(path).as_ptr(),
                        flags | libc::O_CLOEXEC | libc::O_NONBLOCK,
                        *mode as libc::c_uint,
                    ))?;
                    self.fds[*slot] = Some(OwnedFd::from_raw_fd(fd));
                    Ok(Out::Unit)
                }
                Op::Close { slot } => match self.fds[*slot].take() {
                    Some(f) => {
                        let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
                        neg(libc::close(fd)).map(|_| Out::Unit)
                    }
                    None => Err(libc::EBADF),
                },
                Op::Pwrite { slot, off, data } => {
                    let fd = self.fd(*slot)?;
                    let b = data.bytes();
                    let n = negl(libc::pwrite(
                        fd,
                        b.as_ptr().cast(),
                        b.len(),
                        *off as libc::off_t,
                    ))?;
                    Ok(Out::Num(n as i64))
                }
                Op::Write { slot, data } => {
                    let fd = self.fd(*slot)?;
                    let b = data.bytes();
                    let n = negl(libc::write(fd, b.as_ptr().cast(), b.len()))?;
                    Ok(Out::Num(n as i64))
                }
                Op::Pread { slot, off, len } => {
                    let fd = self.fd(*slot)?;
                    let mut buf = vec![0u8; *len];
                    let mut got = 0usize;
                    while got < *len {
                        let n = negl(libc::pread(
                            fd,
                            buf[got..].as_mut_ptr().cast(),
                            len - got,
                            (*off + got as u64) as libc::off_t,
                        ))?;
                        if n == 0 {
                            break;
                        }
                        got += n as usize;
                    }
                    buf.truncate(got);
                    Ok(Out::Data(buf))
                }
                Op::Ftruncate { slot, len } => {
                    let fd = self.fd(*slot)?;
                    neg(libc::ftruncate(fd, *len as libc::off_t)).map(|_| Out::Unit)
                }
                Op::Fallocate {
                    slot,
                    mode,
                    off,
                    len,
                } => {
                    let fd = self.fd(*slot)?;
                    neg(libc::fallocate(
                        fd,
                        *mode,
                        *off as libc::off_t,
                        *len as libc::off_t,
                    ))
                    .map(|_| Out::Unit)
                }
                Op::CopyFileRange {
                    src,
                    dst,
                    off_in,
                    off_out,
                    len,
                } => {
                    let fi = self.fd(*src)?;
                    let fo = self.fd(*dst)?;
                    let mut oi = *off_in as libc::loff_t;
                    let mut oo = *off_out as libc::loff_t;
                    let mut total = 0usize;
                    while total < *len {
                        let n = libc::copy_file_range(fi, &mut oi, fo, &mut oo, len - total, 0);
                        if n < 0 {
                            if total > 0 {
                                break;
                            }
                            return Err(errno());
                        }
                        if n == 0 {
                            break;
                        }
                        total += n as usize;
                    }
                    Ok(Out::Num(total as i64))
                }
                Op::Fsync { slot } => {
                    let fd = self.fd(*slot)?;
                    neg(libc::fsync(fd)).map(|_| Out::Unit)
                }
                Op::Fstat { slot } => {
                    let fd = self.fd(*slot)?;
                    let mut st: libc::stat = std::mem::zeroed();
                    neg(libc::fstat(fd, &mut st))?;
                    Ok(self.stat_out(&st))
                }
                Op::Fchmod { slot, mode } => {
                    let fd = self.fd(*slot)?;
                    neg(libc::fchmod(fd, *mode)).map(|_| Out::Unit)
                }
                Op::ReadFile { path } => {
                    let fd = neg(libc::open(
                        self.c(path).as_ptr(),
                        libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK,
                    ))?;
                    let f = OwnedFd::from_raw_fd(fd);
                    let mut out = Vec::new();
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        let n = negl(libc::read(
                            f.as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                        ))?;
                        if n == 0 {
                            break;
                        }
                        out.extend_from_slice(&buf[..n as usize]);
                        if out.len() > (64 << 20) {
                            break;
                        }
                    }
                    Ok(Out::Data(out))
                }
                Op::Truncate { path, len } => {
                    neg(libc::truncate(self.c(path).as_ptr(), *len as libc::off_t))
                        .map(|_| Out::Unit)
                }
                Op::Mkdir { path, mode } => {
                    neg(libc::mkdir(self.c(path).as_ptr(), *mode)).map(|_| Out::Unit)
                }
                Op::Rmdir { path } => neg(libc::rmdir(self.c(path).as_ptr())).map(|_| Out::Unit),
                Op::Unlink { path } => neg(libc::unlink(self.c(path).as_ptr())).map(|_| Out::Unit),
                Op::Rename { from, to, flags } => neg(libc::renameat2(
                    libc::AT_FDCWD,
                    self.c(from).as_ptr(),
                    libc::AT_FDCWD,
                    self.c(to).as_ptr(),
                    *flags,
                ))
                .map(|_| Out::Unit),
                Op::Symlink { target, path } => {
                    neg(libc::symlink(cs(target).as_ptr(), self.c(path).as_ptr()))
                        .map(|_| Out::Unit)
                }
                Op::Link { from, to } => neg(libc::linkat(
                    libc::AT_FDCWD,
                    self.c(from).as_ptr(),
                    libc::AT_FDCWD,
                    self.c(to).as_ptr(),
                    0,
                ))
                .map(|_| Out::Unit),
                Op::Mknod { path, mode } => {
                    neg(libc::mknod(self.c(path).as_ptr(), *mode, 0)).map(|_| Out::Unit)
                }
                Op::Chmod { path, mode } => {
                    neg(libc::chmod(self.c(path).as_ptr(), *mode)).map(|_| Out::Unit)
                }
                Op::Chown { path, uid, gid } => {
                    neg(libc::lchown(self.c(path).as_ptr(), *uid, *gid)).map(|_| Out::Unit)
                }
                Op::Utimens {
                    path,
                    atime,
                    mtime,
                    nofollow,
                } => {
                    let ts = [atime.timespec(), mtime.timespec()];
                    neg(libc::utimensat(
                        libc::AT_FDCWD,
                        self.c(path).as_ptr(),
                        ts.as_ptr(),
                        if *nofollow {
                            libc::AT_SYMLINK_NOFOLLOW
                        } else {
                            0
                        },
                    ))
                    .map(|_| Out::Unit)
                }
                Op::Setxattr {
                    path,
                    name,
                    value,
                    flags,
                } => {
                    let v = value.bytes();
                    neg(libc::lsetxattr(
                        self.c(path).as_ptr(),
                        cs(name).as_ptr(),
                        v.as_ptr().cast(),
                        v.len(),
                        *flags,
                    ))
                    .map(|_| Out::Unit)
                }
                Op::Removexattr { path, name } => {
                    neg(libc::lremovexattr(self.c(path).as_ptr(), cs(name).as_ptr()))
                        .map(|_| Out::Unit)
                }
                Op::Getxattr { path, name } => {
                    let mut buf = vec![0u8; 65536];
                    let n = negl(libc::lgetxattr(
                        self.c(path).as_ptr(),
                        cs(name).as_ptr(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    ))?;
                    buf.truncate(n as usize);
                    Ok(Out::Data(buf))
                }
                Op::Listxattr { path } => {
                    let mut buf = vec![0u8; 65536];
                    let n = negl(libc::llistxattr(
                        self.c(path).as_ptr(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    ))?;
                    buf.truncate(n as usize);
                    let mut names: Vec<String> = buf
                        .split(|b| *b == 0)
                        .filter(|s| !s.is_empty())
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect();
                    names.sort();
                    Ok(Out::XattrNames(names))
                }
                Op::Lstat { path } => {
                    let mut st: libc::stat = std::mem::zeroed();
                    neg(libc::lstat(self.c(path).as_ptr(), &mut st))?;
                    Ok(self.stat_out(&st))
                }
                Op::Stat { path } => {
                    let mut st: libc::stat = std::mem::zeroed();
                    neg(libc::stat(self.c(path).as_ptr(), &mut st))?;
                    Ok(self.stat_out(&st))
                }
                Op::Readdir { path } => {
                    let list = read_dir_raw(&self.path(path))
                        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
                    let mut names: Vec<(String, Kind)> = list
                        .into_iter()
                        .filter(|d| d.name != b"." && d.name != b"..")
                        .map(|d| {
                            (
                                String::from_utf8_lossy(&d.name).into_owned(),
                                Kind::from_dtype(d.dtype),
                            )
                        })
                        .collect();
                    names.sort();
                    Ok(Out::Names(names))
                }
                Op::Readlink { path } => {
                    let mut buf = vec![0u8; 4096];
                    let n = negl(libc::readlink(
                        self.c(path).as_ptr(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    ))?;
                    buf.truncate(n as usize);
                    Ok(Out::Data(buf))
                }
                Op::FsyncPath { path } => {
                    let fd = neg(libc::open(
                        self.c(path).as_ptr(),
                        libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK,
                    ))?;
                    let f = OwnedFd::from_raw_fd(fd);
                    neg(libc::fsync(f.as_raw_fd())).map(|_| Out::Unit)
                }
            }
        }
    }
}
