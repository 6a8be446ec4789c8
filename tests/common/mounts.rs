//! RAII guards for a stratafs mount and a kernel overlayfs mount.
//!
//! The binary under test is `CARGO_BIN_EXE_stratafs`, or `$STRATAFS_TEST_BIN` when set (used to
//! run the suite against another implementation of the same CLI, to validate the suite itself).

use std::fs;
use std::marker::PhantomData;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::env::{is_mounted, mounts_at, run_timeout};

pub fn stratafs_bin() -> PathBuf {
    match std::env::var_os("STRATAFS_TEST_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_stratafs")),
    }
}

/// `stratafs mount --lower L1 ... [--foreground] MNT` as a Command (top layer first).
pub fn mount_command(lowers: &[PathBuf], mnt: &Path, foreground: bool) -> Command {
    mount_command_with(lowers, None, mnt, foreground)
}

/// Whiteout dialect written into the upper layer (`--whiteout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpperDialect {
    /// char 0/0 whiteouts, `trusted.overlay.opaque=y` (the default).
    Overlay,
    /// `.wh.NAME`, `.wh..wh..opq`.
    Oci,
}

/// The writable part of a mount: `--upper UPPER --work WORK [--whiteout D] [--volatile]`.
#[derive(Clone, Debug)]
pub struct UpperSpec {
    pub upper: PathBuf,
    pub work: PathBuf,
    /// None: no `--whiteout` option (the default dialect, overlay).
    pub whiteout: Option<UpperDialect>,
    pub volatile: bool,
    /// `--redirect-dir off` when false (directory renames EXDEV, as the kernel with userxattr).
    pub redirect_dir: bool,
    /// `--metacopy off` when false (every copy-up copies data).
    pub metacopy: bool,
}

impl UpperSpec {
    pub fn new(upper: &Path, work: &Path) -> UpperSpec {
        UpperSpec {
            upper: upper.to_path_buf(),
            work: work.to_path_buf(),
            whiteout: None,
            volatile: false,
            redirect_dir: true,
            metacopy: true,
        }
    }

    pub fn dialect(&self) -> UpperDialect {
        self.whiteout.unwrap_or(UpperDialect::Overlay)
    }
}

/// `stratafs mount --lower L1 ... [--upper U --work W ...] [--foreground] MNT`.
pub fn mount_command_with(
    lowers: &[PathBuf],
    upper: Option<&UpperSpec>,
    mnt: &Path,
    foreground: bool,
) -> Command {
    let mut c = Command::new(stratafs_bin());
    c.arg("mount");
    for l in lowers {
        c.arg("--lower").arg(l);
    }
    if let Some(u) = upper {
        c.arg("--upper").arg(&u.upper).arg("--work").arg(&u.work);
        match u.whiteout {
            Some(UpperDialect::Overlay) => {
                c.args(["--whiteout", "overlay"]);
            }
            Some(UpperDialect::Oci) => {
                c.args(["--whiteout", "oci"]);
            }
            None => {}
        }
        if u.volatile {
            c.arg("--volatile");
        }
        if !u.redirect_dir {
            c.args(["--redirect-dir", "off"]);
        }
        if !u.metacopy {
            c.args(["--metacopy", "off"]);
        }
    }
    if foreground {
        c.arg("--foreground");
    }
    c.arg(mnt);
    c
}

fn tail(p: &Path, lines: usize) -> String {
    let s = fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Pids (other than ours) whose argv contains `mnt` as a whole argument.
pub fn pids_with_arg(mnt: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
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
            .any(|a| a == mnt.as_os_str().as_bytes())
            && process_alive(pid)
        {
            out.push(pid);
        }
    }
    out
}

/// Alive = exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next())
                .unwrap_or(None);
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountMode {
    /// `--foreground`; the guard owns the daemon process and its log.
    Foreground,
    /// Default (forking) mode; the guard finds the daemon by its argv.
    Background,
}

/// A live stratafs mount. Drop: `stratafs umount`, then `fusermount3 -u`, then `umount -l`,
/// then SIGKILL of a daemon still alive. When the test is not already panicking, Drop panics if
/// `stratafs umount` did not unmount or the daemon did not exit 0 (foreground) / at all
/// (background) after the unmount.
pub struct StratafsMount<'a> {
    pub mnt: PathBuf,
    pub mode: MountMode,
    child: Option<Child>,
    daemon_pids: Vec<i32>,
    log: PathBuf,
    done: bool,
    _stack: PhantomData<&'a ()>,
}

impl<'a> StratafsMount<'a> {
    /// Mounts `lowers` (top first) on `mnt` and waits until the mount is live.
    /// `log` receives the daemon's stdout/stderr (foreground) or the mount command's.
    pub fn start(
        lowers: &[PathBuf],
        mnt: &Path,
        log: &Path,
        mode: MountMode,
    ) -> Result<StratafsMount<'a>, String> {
        Self::start_with(lowers, None, mnt, log, mode)
    }

    /// Like [`StratafsMount::start`], with an optional writable upper layer.
    pub fn start_with(
        lowers: &[PathBuf],
        upper: Option<&UpperSpec>,
        mnt: &Path,
        log: &Path,
        mode: MountMode,
    ) -> Result<StratafsMount<'a>, String> {
        let cmd = mount_command_with(lowers, upper, mnt, mode == MountMode::Foreground);
        Self::start_command(cmd, mnt, log, mode)
    }

    /// Runs a mount command line built by the caller (e.g. `stratafs --store S mount IMAGE
    /// MNT`, with `--foreground` for [`MountMode::Foreground`]) and guards the mount like
    /// [`StratafsMount::start`]: Drop unmounts with `stratafs umount`.
    pub fn start_command(
        mut cmd: Command,
        mnt: &Path,
        log: &Path,
        mode: MountMode,
    ) -> Result<StratafsMount<'a>, String> {
        let logf = fs::File::create(log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        match mode {
            MountMode::Foreground => {
                let mut child = cmd
                    .spawn()
                    .map_err(|e| format!("spawn {}: {e}", stratafs_bin().display()))?;
                let start = Instant::now();
                loop {
                    if is_mounted(mnt) {
                        break;
                    }
                    if let Some(st) = child.try_wait().unwrap() {
                        return Err(format!(
                            "stratafs --foreground exited ({st}) before mounting {}; log:\n{}",
                            mnt.display(),
                            tail(log, 40)
                        ));
                    }
                    if start.elapsed() > Duration::from_secs(60) {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(format!(
                            "{} not mounted after 60 s; log:\n{}",
                            mnt.display(),
                            tail(log, 40)
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                let pid = child.id() as i32;
                Ok(StratafsMount {
                    mnt: mnt.to_path_buf(),
                    mode,
                    child: Some(child),
                    daemon_pids: vec![pid],
                    log: log.to_path_buf(),
                    done: false,
                    _stack: PhantomData,
                })
            }
            MountMode::Background => {
                let mut child = cmd
                    .spawn()
                    .map_err(|e| format!("spawn {}: {e}", stratafs_bin().display()))?;
                let start = Instant::now();
                let st = loop {
                    if let Some(st) = child.try_wait().unwrap() {
                        break st;
                    }
                    if start.elapsed() > Duration::from_secs(60) {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(format!(
                            "`stratafs mount` did not return within 60 s; log:\n{}",
                            tail(log, 40)
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                };
                let mounted = is_mounted(mnt);
                let daemon_pids = pids_with_arg(mnt);
                let guard = StratafsMount {
                    mnt: mnt.to_path_buf(),
                    mode,
                    child: None,
                    daemon_pids,
                    log: log.to_path_buf(),
                    done: false,
                    _stack: PhantomData,
                };
                if !st.success() || !mounted {
                    let msg = format!(
                        "`stratafs mount` exited {st}, mounted={mounted}; output:\n{}",
                        tail(log, 40)
                    );
                    drop(guard);
                    return Err(msg);
                }
                Ok(guard)
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }

    pub fn join(&self, rel: impl AsRef<[u8]>) -> PathBuf {
        let r = super::layer::rel(rel);
        if r.as_os_str().is_empty() {
            self.mnt.clone()
        } else {
            self.mnt.join(r)
        }
    }

    /// The daemon's pid(s) (foreground: the child; background: found by argv).
    pub fn daemon_pids(&self) -> &[i32] {
        &self.daemon_pids
    }

    /// The daemon's log so far.
    pub fn log_tail(&self) -> String {
        tail(&self.log, 40)
    }

    /// Unmounts now with the strict checks of Drop.
    pub fn unmount(mut self) {
        let problems = self.teardown();
        if !problems.is_empty() {
            panic!("{}", problems.join("\n"));
        }
    }

    /// Unmounts now with the checks of Drop, returning the problems instead of panicking.
    pub fn finish(mut self) -> Vec<String> {
        self.teardown()
    }

    /// `kill -9` of the daemon (a simulated crash), then cleanup of the dead mount
    /// (`fusermount3 -uz`, else `umount -l`). Returns problems with the cleanup (a mount left
    /// behind, a daemon that did not die).
    pub fn kill9(mut self) -> Vec<String> {
        self.done = true;
        let mut problems = Vec::new();
        for &pid in &self.daemon_pids {
            // SAFETY: plain kill(2) of the daemon this guard started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        for &pid in &self.daemon_pids {
            if !wait_until(Duration::from_secs(15), || !process_alive(pid)) {
                problems.push(format!("daemon {pid} still alive 15 s after SIGKILL"));
            }
        }
        if is_mounted(&self.mnt) {
            let _ = run_timeout(
                Command::new("fusermount3").arg("-uz").arg(&self.mnt),
                Duration::from_secs(30),
            );
        }
        if is_mounted(&self.mnt) {
            let _ = run_timeout(
                Command::new("umount").arg("-l").arg(&self.mnt),
                Duration::from_secs(30),
            );
        }
        if is_mounted(&self.mnt) {
            problems.push(format!(
                "{} still mounted after kill -9 and umount -l",
                self.mnt.display()
            ));
        }
        problems
    }

    fn teardown(&mut self) -> Vec<String> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        let mut problems = Vec::new();
        if is_mounted(&self.mnt) {
            problems.extend(unmount_or_detach(
                &self.mnt,
                Command::new(stratafs_bin()).arg("umount").arg(&self.mnt),
                false,
            ));
        }
        match self.child.take() {
            Some(mut child) => {
                let start = Instant::now();
                let status = loop {
                    if let Some(st) = child.try_wait().unwrap() {
                        break Some(st);
                    }
                    if start.elapsed() > Duration::from_secs(15) {
                        break None;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                };
                match status {
                    Some(st) if st.success() => {}
                    Some(st) => problems.push(format!(
                        "daemon exited with {st} after unmount; log:\n{}",
                        tail(&self.log, 40)
                    )),
                    None => {
                        problems.push(format!(
                            "daemon still running 15 s after unmount; killed; log:\n{}",
                            tail(&self.log, 40)
                        ));
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                }
            }
            None => {
                for &pid in &self.daemon_pids {
                    if !wait_until(Duration::from_secs(15), || !process_alive(pid)) {
                        problems.push(format!(
                            "background daemon {pid} still running 15 s after unmount; killed"
                        ));
                        // SAFETY: plain kill(2) of the daemon this guard started.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
        problems
    }
}

impl Drop for StratafsMount<'_> {
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

/// Escapes a path for overlayfs' lowerdir= option.
pub fn overlay_escape(p: &Path) -> String {
    let s = p.to_str().expect("non-UTF-8 layer path");
    let mut out = String::new();
    for c in s.chars() {
        if matches!(c, ':' | ',' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Unmounts `mnt` by running `cmd`, again while the mount is busy (under `cargo test` another
/// thread's fork can briefly hold fds into it until its child execs), then, if it is still
/// mounted, with `fusermount3 -u` and `umount -l`. Returns the problems: `cmd` failing (when
/// `strict`), a mount left behind.
pub fn unmount_or_detach(mnt: &Path, cmd: &mut Command, strict: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let desc = format!("{cmd:?}");
    let mut out = run_timeout(cmd, Duration::from_secs(30));
    for _ in 0..5 {
        if !is_mounted(mnt) || !out.stderr_str().contains("busy") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        out = run_timeout(cmd, Duration::from_secs(30));
    }
    if strict && !out.success() {
        problems.push(format!("{desc} failed: {}", out.describe()));
    }
    if is_mounted(mnt) {
        problems.push(format!(
            "{desc} left {} mounted: {}",
            mnt.display(),
            out.describe()
        ));
        let _ = run_timeout(
            Command::new("fusermount3").arg("-u").arg(mnt),
            Duration::from_secs(30),
        );
    }
    if is_mounted(mnt) {
        let _ = run_timeout(
            Command::new("umount").arg("-l").arg(mnt),
            Duration::from_secs(30),
        );
    }
    if is_mounted(mnt) {
        problems.push(format!(
            "{} is still mounted after umount -l",
            mnt.display()
        ));
    }
    problems
}

/// A kernel overlayfs mount. Drop: umount, fallback umount -l.
pub struct KernelOverlay<'a> {
    pub mnt: PathBuf,
    _stack: PhantomData<&'a ()>,
}

impl<'a> KernelOverlay<'a> {
    /// Read-only overlay of `lowers` (top first); redirects in them are followed.
    pub fn lower_only(lowers: &[PathBuf], mnt: &Path) -> Result<KernelOverlay<'a>, String> {
        let opts = format!(
            "lowerdir={},redirect_dir=follow,metacopy=on",
            lowers
                .iter()
                .map(|p| overlay_escape(p))
                .collect::<Vec<_>>()
                .join(":")
        );
        Self::mount(&opts, mnt)
    }

    /// Writable overlay of `lowers` (top first), the oracle of the write tests:
    /// `redirect_dir=on,metacopy=off,index=off`: renaming a lower or merged directory moves it
    /// with a redirect, as stratafs does. Metadata-only copy-up changes nothing a user sees, so
    /// the oracle copies data (the kernel's `metacopy=on` also bumps the mtime of a file whose
    /// data it fills on a plain open for writing — a kernel quirk stratafs does not copy).
    pub fn writable(
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        mnt: &Path,
    ) -> Result<KernelOverlay<'a>, String> {
        Self::over_upper(
            lowers,
            upper,
            work,
            mnt,
            "redirect_dir=on,metacopy=off,index=off",
        )
    }

    /// Read-only overlay of `lowers` (top first) with `userxattr`: the kernel reads (and
    /// hides) `user.overlay.*` markers instead of `trusted.overlay.*` ones. The form an
    /// unprivileged user mounts in a user namespace; root may use it too.
    pub fn lower_only_userxattr(
        lowers: &[PathBuf],
        mnt: &Path,
    ) -> Result<KernelOverlay<'a>, String> {
        let opts = format!(
            "lowerdir={},userxattr",
            lowers
                .iter()
                .map(|p| overlay_escape(p))
                .collect::<Vec<_>>()
                .join(":")
        );
        Self::mount(&opts, mnt)
    }

    /// Writable overlay with `userxattr` (the oracle of the rootless tests). `userxattr`
    /// refuses `redirect_dir=off` (on this kernel "off" means "follow"): `nofollow` creates no
    /// redirects either, so renaming a lower or merged directory gives EXDEV, as with
    /// [`KernelOverlay::writable`].
    pub fn writable_userxattr(
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        mnt: &Path,
    ) -> Result<KernelOverlay<'a>, String> {
        Self::over_upper(
            lowers,
            upper,
            work,
            mnt,
            "userxattr,redirect_dir=nofollow,metacopy=off,index=off",
        )
    }

    /// Writable overlay with every kernel feature stratafs writes in its uppers
    /// (`redirect_dir=on,metacopy=on`): the kernel taking over a stratafs upper.
    pub fn writable_metacopy(
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        mnt: &Path,
    ) -> Result<KernelOverlay<'a>, String> {
        Self::over_upper(
            lowers,
            upper,
            work,
            mnt,
            "redirect_dir=on,metacopy=on,index=off",
        )
    }

    /// Writable overlay with `redirect_dir=on,index=on,metacopy=on`: hard links kept across
    /// copy-up as well.
    pub fn writable_all(
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        mnt: &Path,
    ) -> Result<KernelOverlay<'a>, String> {
        Self::over_upper(
            lowers,
            upper,
            work,
            mnt,
            "redirect_dir=on,metacopy=on,index=on",
        )
    }

    /// Writable overlay (upperdir + workdir), as container engines build layers.
    pub fn with_upper(
        lower: &Path,
        upper: &Path,
        work: &Path,
        mnt: &Path,
    ) -> Result<KernelOverlay<'a>, String> {
        let lowers = [lower.to_path_buf()];
        Self::over_upper(
            &lowers,
            upper,
            work,
            mnt,
            "index=off,metacopy=off,redirect_dir=off",
        )
    }

    /// A writable overlay of `lowers` (top first) with kernel options `features`.
    fn over_upper(
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        mnt: &Path,
        features: &str,
    ) -> Result<KernelOverlay<'a>, String> {
        let lowerdir: Vec<String> = lowers.iter().map(|p| overlay_escape(p)).collect();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},{features}",
            lowerdir.join(":"),
            overlay_escape(upper),
            overlay_escape(work)
        );
        Self::mount(&opts, mnt)
    }

    fn mount(opts: &str, mnt: &Path) -> Result<KernelOverlay<'a>, String> {
        let out = run_timeout(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", opts])
                .arg(mnt),
            Duration::from_secs(60),
        );
        if !out.success() || !is_mounted(mnt) {
            return Err(format!(
                "kernel overlay mount on {} failed: {}",
                mnt.display(),
                out.describe()
            ));
        }
        Ok(KernelOverlay {
            mnt: mnt.to_path_buf(),
            _stack: PhantomData,
        })
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }

    pub fn join(&self, rel: impl AsRef<[u8]>) -> PathBuf {
        let r = super::layer::rel(rel);
        if r.as_os_str().is_empty() {
            self.mnt.clone()
        } else {
            self.mnt.join(r)
        }
    }
}

impl Drop for KernelOverlay<'_> {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = run_timeout(
                Command::new("umount").arg(&self.mnt),
                Duration::from_secs(30),
            );
        }
        if is_mounted(&self.mnt) {
            let _ = run_timeout(
                Command::new("umount").arg("-l").arg(&self.mnt),
                Duration::from_secs(30),
            );
        }
        if is_mounted(&self.mnt) {
            eprintln!(
                "kernel overlay {} still mounted: {:?}",
                self.mnt.display(),
                mounts_at(&self.mnt)
            );
        }
    }
}
