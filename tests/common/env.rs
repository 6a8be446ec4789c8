//! Per-test temp directories, /proc/self/mountinfo parsing, and commands with timeouts.

use std::cell::Cell;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::layer::Layer;

/// One line of /proc/self/mountinfo.
#[derive(Clone, Debug)]
pub struct MountInfo {
    pub mount_id: u64,
    pub mount_point: PathBuf,
    pub options: String,
    pub fstype: String,
    pub source: String,
    pub super_options: String,
}

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// All mounts of this process's mount namespace.
pub fn mounts() -> Vec<MountInfo> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(MountInfo {
                mount_id: f[0].parse().ok()?,
                mount_point: PathBuf::from(OsStr::from_bytes(&unescape(f[4]))),
                options: f[5].to_string(),
                fstype: f.get(sep + 1)?.to_string(),
                source: f.get(sep + 2).unwrap_or(&"").to_string(),
                super_options: f.get(sep + 3).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

/// Mounts whose mount point is exactly `p`.
pub fn mounts_at(p: &Path) -> Vec<MountInfo> {
    mounts()
        .into_iter()
        .filter(|m| m.mount_point == p)
        .collect()
}

pub fn is_mounted(p: &Path) -> bool {
    !mounts_at(p).is_empty()
}

/// Mounts at or below `p`.
pub fn mounts_under(p: &Path) -> Vec<MountInfo> {
    mounts()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(p))
        .collect()
}

/// Output of a command run with a timeout.
#[derive(Debug)]
pub struct CmdOutput {
    /// None: it did not exit within the timeout (it was killed).
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Whether stdout and stderr reached EOF shortly after the process exited (a daemon that
    /// keeps them open makes `$(cmd)` in a shell hang).
    pub stdio_closed: bool,
    pub elapsed: Duration,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    pub fn describe(&self) -> String {
        format!(
            "status {:?}, stdout {:?}, stderr {:?}",
            self.status,
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr)
        )
    }
}

/// Runs `cmd` (stdin closed, stdout/stderr captured), killing it after `timeout`.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut readers = Vec::new();
    let mut bufs = Vec::new();
    let pipes: Vec<Box<dyn Read + Send>> = vec![
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stderr.take().unwrap()),
    ];
    for mut pipe in pipes {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (b2, d2) = (buf.clone(), done.clone());
        readers.push(done);
        bufs.push(buf);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => b2.lock().unwrap().extend_from_slice(&chunk[..n]),
                }
            }
            d2.store(true, Ordering::SeqCst);
        });
    }
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(3);
    while !readers.iter().all(|d| d.load(Ordering::SeqCst)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stdio_closed = readers.iter().all(|d| d.load(Ordering::SeqCst));
    let stdout = bufs[0].lock().unwrap().clone();
    let stderr = bufs[1].lock().unwrap().clone();
    CmdOutput {
        status,
        stdout,
        stderr,
        stdio_closed,
        elapsed,
    }
}

/// Runs `cmd` with stdout/stderr appended to `log` (not pipes: the exit of the process, not the
/// closing of its pipes, is what is waited for) and returns its exit status, or None after
/// `timeout` (then it is killed).
pub fn run_status_timeout(cmd: &mut Command, log: &Path, timeout: Duration) -> Option<ExitStatus> {
    let f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs a command that must succeed (panics with its output otherwise).
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let desc = format!("{cmd:?}");
    let out = run_timeout(cmd, timeout);
    assert!(out.success(), "{desc} failed: {}", out.describe());
    out
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh temporary directory for one test. Drop unmounts anything left below it (lazily)
/// and removes it (kept when `STRATAFS_TEST_KEEP=1`).
pub struct TestEnv {
    pub root: PathBuf,
    next: Cell<u32>,
    tmpfs: std::cell::RefCell<Vec<PathBuf>>,
}

impl TestEnv {
    pub fn new(name: &str) -> TestEnv {
        // Deterministic modes for everything the harness creates (one test per process under
        // nextest, so the process-wide umask is this test's alone).
        // SAFETY: umask has no preconditions.
        unsafe { libc::umask(0o022) };
        let base = std::env::temp_dir().join("stratafs-tests");
        fs::create_dir_all(&base).unwrap();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let root = base.join(format!("{name}-{}-{n}", std::process::id()));
        if root.exists() {
            fs::remove_dir_all(&root).unwrap();
        }
        fs::create_dir_all(&root).unwrap();
        let root = fs::canonicalize(&root).unwrap();
        TestEnv {
            root,
            next: Cell::new(0),
            tmpfs: Default::default(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// A new empty directory `root/<prefix><n>`.
    pub fn fresh_dir(&self, prefix: &str) -> PathBuf {
        let n = self.next.get();
        self.next.set(n + 1);
        let p = self.root.join(format!("{prefix}{n}"));
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// A new layer directory `root/layers/<name>`.
    pub fn layer(&self, name: &str) -> Layer {
        let p = self.root.join("layers").join(name);
        assert!(!p.exists(), "test bug: layer {name} created twice");
        Layer::new(p)
    }

    /// Mounts a fresh tmpfs at `root/<rel>` (unmounted when the env is dropped).
    pub fn mount_tmpfs(&self, rel: &str) -> PathBuf {
        self.mount_tmpfs_opts(rel, "mode=0755")
    }

    /// Mounts a fresh tmpfs with the given options (e.g. `mode=0755,size=2M`) at `root/<rel>`
    /// (unmounted when the env is dropped).
    pub fn mount_tmpfs_opts(&self, rel: &str, opts: &str) -> PathBuf {
        let p = self.root.join(rel);
        fs::create_dir_all(&p).unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
                .arg(&p),
            Duration::from_secs(10),
        );
        self.tmpfs.borrow_mut().push(p.clone());
        p
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for p in self.tmpfs.borrow().iter().rev() {
            let _ = run_timeout(Command::new("umount").arg(p), Duration::from_secs(10));
        }
        let mut left = mounts_under(&self.root);
        left.sort_by_key(|m| std::cmp::Reverse(m.mount_point.as_os_str().len()));
        for m in &left {
            eprintln!(
                "TestEnv: lazily unmounting leftover mount {}",
                m.mount_point.display()
            );
            let _ = run_timeout(
                Command::new("umount").arg("-l").arg(&m.mount_point),
                Duration::from_secs(10),
            );
        }
        if std::env::var_os("STRATAFS_TEST_KEEP").is_some_and(|v| v == "1") {
            eprintln!("TestEnv: keeping {}", self.root.display());
            return;
        }
        if !mounts_under(&self.root).is_empty() {
            eprintln!(
                "TestEnv: mounts still below {}; not removing it",
                self.root.display()
            );
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.root) {
            eprintln!("TestEnv: removing {}: {e}", self.root.display());
        }
    }
}

/// The names in `dir`, sorted; panics (naming the directory) if it cannot be read.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Like [`names_in`], but a directory that cannot be read (e.g. does not exist yet) has no
/// names: for directories a command may or may not have created (a store's `tmp/`).
pub fn names_in_or_empty(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// Where root's stratafs records its live mounts.
pub const MOUNT_REGISTRY: &str = "/run/stratafs/mounts";

/// Anything left in a private `$TMPDIR` (every name in it), and mounts below it.
pub fn tmp_leftovers(tmp: &Path) -> Vec<String> {
    let mut out: Vec<String> = names_in(tmp)
        .into_iter()
        .map(|n| format!("left in $TMPDIR: {n}"))
        .collect();
    out.extend(
        mounts_under(tmp)
            .iter()
            .map(|m| format!("still mounted: {}", m.mount_point.display())),
    );
    out
}

/// Makes the kernel forget the mount's dentries and inodes (the daemon gets FORGETs): the next
/// lookups are answered afresh.
pub fn forget_kernel_inodes() {
    std::fs::write("/proc/sys/vm/drop_caches", "2").expect("drop_caches");
}

/// The sum over the daemon's processes of a counter in `/proc/PID/FILE` (`io` or `status`),
/// e.g. `("io", "syscr:")` for its read syscalls or `("status", "VmRSS:")` (in KiB).
pub fn daemon_counter(pids: &[i32], file: &str, field: &str) -> u64 {
    pids.iter()
        .map(|pid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/{file}"))
                .unwrap_or_else(|e| panic!("/proc/{pid}/{file}: {e}"));
            text.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/{file}"))
        })
        .sum()
}

/// Bytes the daemon's threads read and wrote with syscalls (`rchar`, `wchar`).
pub fn daemon_io(pids: &[i32]) -> (u64, u64) {
    (
        daemon_counter(pids, "io", "rchar:"),
        daemon_counter(pids, "io", "wchar:"),
    )
}

/// [`forget_kernel_inodes`], and the page cache too: file data is read from the layers again.
pub fn drop_kernel_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("drop_caches");
}
