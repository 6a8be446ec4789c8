//! The drop-in (fuse-overlayfs style) command line: `stratafs [-f] [-d] -o OPTIONS MOUNTPOINT`.
//!
//! [`DropinMount`] is the RAII guard of a mount made that way (by the binary under test, by
//! mount(8) through the `mount.fuse.stratafs` helper, or by an unprivileged user): Drop unmounts
//! with `umount` (then `fusermount3 -u`, then `umount -l`) and waits for the daemon to exit,
//! killing it if it does not; problems panic unless the test is already panicking.
//! [`HelperLink`] installs `/sbin/mount.fuse.stratafs` for the duration of a test (serialized
//! between test processes by a lock file) and restores what was there before.

use std::fs;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::env::{CmdOutput, is_mounted, run_timeout};
use super::mounts::{pids_with_arg, process_alive, stratafs_bin, unmount_or_detach, wait_until};

/// `stratafs` (or `$STRATAFS_TEST_BIN`) with no arguments yet: add the drop-in form's.
pub fn dropin_cmd() -> Command {
    Command::new(stratafs_bin())
}

/// Escapes a path for a `-o` option value: `\` before `\`, `,` and `:` (the form that works
/// both in fuse-overlayfs' option lists and in the kernel's lowerdir=).
pub fn opt_escape(p: &Path) -> String {
    super::mounts::overlay_escape(p)
}

/// `lowerdir=A:B:...` (top first) with every path escaped.
pub fn lowerdir_opt(lowers: &[PathBuf]) -> String {
    format!(
        "lowerdir={}",
        lowers
            .iter()
            .map(|p| opt_escape(p))
            .collect::<Vec<_>>()
            .join(":")
    )
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// A live mount made through the drop-in command line (see the module doc).
pub struct DropinMount {
    pub mnt: PathBuf,
    /// The launcher's exit status and output (background mounts and mount(8)).
    pub launch: Option<CmdOutput>,
    child: Option<Child>,
    log: Option<PathBuf>,
    pids: Vec<i32>,
    done: bool,
}

impl DropinMount {
    /// Runs a command that mounts `mnt` and returns (a background drop-in mount, `mount(8)`,
    /// ...): it must exit 0 with `mnt` mounted at that moment. `daemon_arg` is the argument by
    /// which the daemon is found in /proc/*/cmdline (the mount point as passed on its command
    /// line). The launcher's output is kept in `launch`.
    pub fn background(
        cmd: &mut Command,
        mnt: &Path,
        daemon_arg: &Path,
    ) -> Result<DropinMount, String> {
        let desc = format!("{cmd:?}");
        let out = run_timeout(cmd, Duration::from_secs(60));
        // Checked the moment the launcher exited: no polling.
        let mounted = is_mounted(mnt);
        let pids = pids_with_arg(daemon_arg);
        let ok = out.success() && mounted;
        let msg = format!(
            "{desc}: {}, mounted={mounted}, stdio closed={}",
            out.describe(),
            out.stdio_closed
        );
        let guard = DropinMount {
            mnt: mnt.to_path_buf(),
            launch: Some(out),
            child: None,
            log: None,
            pids,
            done: false,
        };
        if !ok {
            let problems = guard.finish();
            return Err(if problems.is_empty() {
                msg
            } else {
                format!("{msg}; cleanup: {}", problems.join("; "))
            });
        }
        Ok(guard)
    }

    /// Spawns a foreground mount (`-f`, `-d`), its stdout/stderr going to `log`, and waits until
    /// `mnt` is mounted (Err if the process exits first or nothing is mounted within 60 s).
    pub fn foreground(cmd: &mut Command, mnt: &Path, log: &Path) -> Result<DropinMount, String> {
        let desc = format!("{cmd:?}");
        let logf = fs::File::create(log).unwrap();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .map_err(|e| format!("spawn {desc}: {e}"))?;
        let start = Instant::now();
        loop {
            if is_mounted(mnt) {
                break;
            }
            if let Some(st) = child.try_wait().unwrap() {
                return Err(format!(
                    "{desc} exited ({st}) before mounting; output:\n{}",
                    tail(&fs::read_to_string(log).unwrap_or_default(), 40)
                ));
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{desc}: not mounted after 60 s"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let pid = child.id() as i32;
        Ok(DropinMount {
            mnt: mnt.to_path_buf(),
            launch: None,
            child: Some(child),
            log: Some(log.to_path_buf()),
            pids: vec![pid],
            done: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The daemon pids (foreground: the child).
    pub fn pids(&self) -> &[i32] {
        &self.pids
    }

    /// The launcher's stderr (background) or the log so far (foreground).
    pub fn stderr(&self) -> String {
        match (&self.launch, &self.log) {
            (Some(o), _) => o.stderr_str(),
            (None, Some(l)) => String::from_utf8_lossy(&fs::read(l).unwrap_or_default()).into(),
            (None, None) => String::new(),
        }
    }

    /// The foreground child, if it has exited: its status.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    /// Sends `sig` to the foreground child, waits up to 20 s for it to exit and returns its exit
    /// status (None: still running; it is left to Drop).
    pub fn signal_and_wait(&mut self, sig: i32) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("not a foreground mount");
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return Some(st);
            }
            if start.elapsed() > Duration::from_secs(20) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Unmounts now (Drop's checks), panicking on problems.
    pub fn unmount(self) {
        let problems = self.finish();
        if !problems.is_empty() {
            panic!("{}", problems.join("\n"));
        }
    }

    /// Unmounts now (Drop's checks), returning the problems.
    pub fn finish(mut self) -> Vec<String> {
        self.teardown()
    }

    /// Unmounts (if still mounted: a test may have unmounted it with another tool), then waits
    /// for the daemon to exit.
    fn teardown(&mut self) -> Vec<String> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        let mut problems = Vec::new();
        if is_mounted(&self.mnt) {
            problems.extend(unmount_or_detach(
                &self.mnt,
                Command::new("umount").arg(&self.mnt),
                false,
            ));
        }
        if let Some(mut child) = self.child.take() {
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
                    "foreground daemon exited with {st} after unmount; output:\n{}",
                    tail(&self.stderr(), 20)
                )),
                None => {
                    problems.push("foreground daemon still running 15 s after unmount".into());
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        for &pid in &self.pids {
            if !wait_until(Duration::from_secs(15), || !process_alive(pid)) {
                problems.push(format!(
                    "daemon {pid} still running 15 s after unmount; killed"
                ));
                // SAFETY: kill(2) of a daemon this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        problems
    }
}

impl Drop for DropinMount {
    fn drop(&mut self) {
        let problems = self.teardown();
        if !problems.is_empty() {
            if std::thread::panicking() {
                eprintln!("drop-in mount teardown problems:\n{}", problems.join("\n"));
            } else {
                panic!("{}", problems.join("\n"));
            }
        }
    }
}

/// `/sbin/<name>` as a symlink to `target` for the lifetime of the guard. Test processes that
/// install the same name take turns (an flock on a file in /run/lock). What was there before (a
/// symlink) is put back on drop; a regular file there is never replaced (panic).
pub struct HelperLink {
    pub path: PathBuf,
    previous: Option<PathBuf>,
    _lock: fs::File,
}

impl HelperLink {
    pub fn install(name: &str, target: &Path) -> HelperLink {
        let lock_dir = Path::new("/run/lock");
        let lock_dir = if lock_dir.is_dir() {
            lock_dir.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let lock_path = lock_dir.join(format!("stratafs-tests-{name}.lock"));
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", lock_path.display()));
        // SAFETY: flock on an fd we own; blocks until the other test process is done.
        let r = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(r, 0, "flock {}", lock_path.display());
        let path = Path::new("/sbin").join(name);
        let previous = match fs::symlink_metadata(&path) {
            Ok(md) if md.file_type().is_symlink() => {
                let prev = fs::read_link(&path).unwrap();
                fs::remove_file(&path).unwrap();
                // A dangling link (left by a test binary that is gone) is not worth restoring.
                if path.parent().unwrap().join(&prev).exists() {
                    Some(prev)
                } else {
                    None
                }
            }
            Ok(_) => panic!(
                "{} exists and is not a symlink: not replacing an installed helper",
                path.display()
            ),
            Err(_) => None,
        };
        std::os::unix::fs::symlink(target, &path)
            .unwrap_or_else(|e| panic!("symlink {} -> {}: {e}", path.display(), target.display()));
        HelperLink {
            path,
            previous,
            _lock: lock,
        }
    }
}

impl Drop for HelperLink {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        if let Some(prev) = &self.previous {
            let _ = std::os::unix::fs::symlink(prev, &self.path);
        }
    }
}
