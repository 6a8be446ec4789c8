//! The command-line contract: clean one-line failures that mount nothing, background mode
//! returning only once the mount is live, foreground mode unmounting on SIGTERM/SIGINT, and the
//! ways to unmount.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn simple_layers(env: &TestEnv) -> (Layer, Layer) {
    let base = env.layer("base");
    let top = env.layer("top");
    base.file("hello", "hello from base\n");
    base.file("dir/b", "b");
    top.file("dir/t", "t");
    (top, base)
}

fn stratafs_processes_for(p: &Path) -> Vec<i32> {
    pids_with_arg(p)
}

/// Runs a mount that must fail: non-zero exit, exactly one non-empty line on stderr, the mount
/// table unchanged and no daemon left behind.
fn assert_clean_failure(env: &TestEnv, lowers: &[PathBuf], mnt: &Path, foreground: bool) {
    // Only this test's directories are looked at: other tests mount in parallel.
    let before: Vec<u64> = mounts_under(&env.root).iter().map(|m| m.mount_id).collect();
    let pids_before = stratafs_processes_for(mnt);
    let out = run_timeout(
        &mut mount_command(lowers, mnt, foreground),
        Duration::from_secs(30),
    );
    let after = mounts_under(&env.root);
    let new: Vec<&MountInfo> = after
        .iter()
        .filter(|m| !before.contains(&m.mount_id))
        .collect();
    // Clean up anything it mounted before asserting.
    for m in &new {
        let _ = run_timeout(
            Command::new("umount").arg("-l").arg(&m.mount_point),
            Duration::from_secs(10),
        );
    }
    assert!(
        out.status.is_some(),
        "stratafs mount did not exit within 30 s (foreground={foreground})"
    );
    assert!(
        !out.success(),
        "stratafs mount should fail: {}",
        out.describe()
    );
    let err = out.stderr_str();
    let lines: Vec<&str> = err.split_terminator('\n').collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one line on stderr, got {err:?}"
    );
    assert!(!lines[0].trim().is_empty(), "empty error line");
    assert!(!err.contains("panicked"), "error is a panic: {err:?}");
    assert!(new.is_empty(), "a failed mount left mounts behind: {new:?}");
    std::thread::sleep(Duration::from_millis(300));
    let left: Vec<i32> = stratafs_processes_for(mnt)
        .into_iter()
        .filter(|p| !pids_before.contains(p))
        .collect();
    for &pid in &left {
        // SAFETY: kill(2) of a leftover daemon started by this test.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(
        left.is_empty(),
        "a failed mount left processes behind: {left:?}"
    );
}

fn both_modes(env: &TestEnv, lowers: &[PathBuf], mnt: &Path) {
    assert_clean_failure(env, lowers, mnt, false);
    assert_clean_failure(env, lowers, mnt, true);
}

#[test]
fn mount_fails_cleanly_missing_mountpoint() {
    require_root();
    let env = TestEnv::new("cli-missing-mnt");
    let (top, base) = simple_layers(&env);
    let _integrity = env.stack(&[&top, &base]);
    both_modes(
        &env,
        &[top.root.clone(), base.root.clone()],
        &env.path("does-not-exist"),
    );
}

#[test]
fn mount_fails_cleanly_mountpoint_not_a_directory() {
    require_root();
    let env = TestEnv::new("cli-mnt-file");
    let (top, base) = simple_layers(&env);
    let _integrity = env.stack(&[&top, &base]);
    let f = env.path("a-file");
    fs::write(&f, "x").unwrap();
    both_modes(&env, &[top.root.clone(), base.root.clone()], &f);
}

#[test]
fn mount_fails_cleanly_mountpoint_busy() {
    require_root();
    let env = TestEnv::new("cli-busy");
    let (top, base) = simple_layers(&env);
    let lowers = [top.root.clone(), base.root.clone()];
    let stack = env.stack(&[&top, &base]);
    let t = env.mount_tmpfs("busy-tmpfs");
    both_modes(&env, &lowers, &t);
    assert_eq!(mounts_at(&t).len(), 1);
    // Already a stratafs mount point.
    let m = stack.stratafs();
    both_modes(&env, &lowers, m.path());
    assert_eq!(
        mounts_at(m.path()).len(),
        1,
        "only the first mount may be there"
    );
    assert_eq!(
        fs::read(m.join("hello")).unwrap(),
        b"hello from base\n",
        "the first mount must still work"
    );
}

#[test]
fn mount_fails_cleanly_missing_layer() {
    require_root();
    let env = TestEnv::new("cli-missing-layer");
    let (top, base) = simple_layers(&env);
    let _integrity = env.stack(&[&top, &base]);
    let mnt = env.fresh_dir("mnt");
    both_modes(
        &env,
        &[
            top.root.clone(),
            env.path("no-such-layer"),
            base.root.clone(),
        ],
        &mnt,
    );
    both_modes(&env, &[env.path("no-such-layer")], &mnt);
}

#[test]
fn mount_fails_cleanly_layer_not_a_directory() {
    require_root();
    let env = TestEnv::new("cli-layer-file");
    let (top, base) = simple_layers(&env);
    let _integrity = env.stack(&[&top, &base]);
    let mnt = env.fresh_dir("mnt");
    let f = env.path("layer-file");
    fs::write(&f, "x").unwrap();
    both_modes(
        &env,
        &[top.root.clone(), base.root.clone(), f.clone()],
        &mnt,
    );
    both_modes(&env, &[f], &mnt);
}

fn foreground_signal(sig: i32, name: &str) {
    require_root();
    let env = TestEnv::new(name);
    let (top, base) = simple_layers(&env);
    let stack = env.stack(&[&top, &base]);
    let mnt = env.fresh_dir("mnt");
    let log = env.path("fg.log");
    let logf = fs::File::create(&log).unwrap();
    let mut child = mount_command(&stack.lowers, &mnt, true)
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .unwrap();
    let ready = wait_until(Duration::from_secs(30), || {
        is_mounted(&mnt) || child.try_wait().unwrap().is_some()
    });
    if !(ready && is_mounted(&mnt)) {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "--foreground did not mount: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let guard = scopeguard(&mnt);
    assert_eq!(fs::read(mnt.join("hello")).unwrap(), b"hello from base\n");
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
    let exited = wait_until(Duration::from_secs(20), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("daemon did not exit within 20 s of {name}");
    }
    let status = child.wait().unwrap();
    let still = is_mounted(&mnt);
    drop(guard);
    assert!(!still, "{name} did not unmount");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after {name}: {status}; log: {}",
        fs::read_to_string(&log).unwrap_or_default()
    );
}

/// Unmounts `mnt` lazily on drop if still mounted (for the raw-process tests).
struct LazyUmount(PathBuf);
fn scopeguard(p: &Path) -> LazyUmount {
    LazyUmount(p.to_path_buf())
}
impl Drop for LazyUmount {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = run_timeout(
                Command::new("umount").arg("-l").arg(&self.0),
                Duration::from_secs(10),
            );
        }
        for pid in pids_with_arg(&self.0) {
            // SAFETY: kill(2) of a daemon started by this test.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn foreground_sigterm_unmounts_cleanly() {
    foreground_signal(libc::SIGTERM, "cli-sigterm");
}

#[test]
fn foreground_sigint_unmounts_cleanly() {
    foreground_signal(libc::SIGINT, "cli-sigint");
}

/// Without --foreground, `stratafs mount` returns 0 only once the mount is live: the very next
/// stat/read/readdir works, without retries. Repeated to catch races.
#[test]
fn background_mount_returns_when_ready() {
    require_root();
    let env = TestEnv::new("cli-bg");
    let (top, base) = simple_layers(&env);
    let stack = env.stack(&[&top, &base]);
    for i in 0..5 {
        let mnt = env.fresh_dir("mnt");
        let guard = scopeguard(&mnt);
        let log = env.path(&format!("bg{i}.log"));
        let status = run_status_timeout(
            &mut mount_command(&stack.lowers, &mnt, false),
            &log,
            Duration::from_secs(60),
        );
        // No sleeping or polling here on purpose: checked the moment the process exited.
        let mounted = is_mounted(&mnt);
        let read = fs::read(mnt.join("hello")).map_err(|e| e.to_string());
        let list = fs::read_dir(mnt.join("dir"))
            .map(|d| d.count())
            .map_err(|e| e.to_string());
        assert!(
            status.is_some_and(|s| s.success()),
            "iteration {i}: stratafs mount: {status:?}, output {:?}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            mounted,
            "iteration {i}: not in mountinfo when `stratafs mount` returned"
        );
        assert_eq!(
            read,
            Ok(b"hello from base\n".to_vec()),
            "iteration {i}: read right after mount returned"
        );
        assert_eq!(
            list,
            Ok(2),
            "iteration {i}: readdir right after mount returned"
        );
        let pids = pids_with_arg(&mnt);
        assert!(!pids.is_empty(), "iteration {i}: no daemon process found");
        let um = run_timeout(
            Command::new(stratafs_bin()).arg("umount").arg(&mnt),
            Duration::from_secs(30),
        );
        assert!(
            um.success(),
            "iteration {i}: stratafs umount: {}",
            um.describe()
        );
        assert!(
            !is_mounted(&mnt),
            "iteration {i}: still mounted after stratafs umount"
        );
        assert!(
            wait_until(Duration::from_secs(10), || pids
                .iter()
                .all(|p| !process_alive(*p))),
            "iteration {i}: daemon still alive 10 s after stratafs umount"
        );
        drop(guard);
    }
}

/// The background mount must not keep the caller's stdout/stderr open (`out=$(stratafs mount
/// ...)` would hang until unmount).
#[test]
fn background_mount_releases_stdio() {
    require_root();
    let env = TestEnv::new("cli-bg-stdio");
    let (top, base) = simple_layers(&env);
    let stack = env.stack(&[&top, &base]);
    let mnt = env.fresh_dir("mnt");
    let _guard = scopeguard(&mnt);
    let out = run_timeout(
        &mut mount_command(&stack.lowers, &mnt, false),
        Duration::from_secs(60),
    );
    assert!(out.success(), "{}", out.describe());
    let closed = out.stdio_closed;
    let _ = run_timeout(
        Command::new(stratafs_bin()).arg("umount").arg(&mnt),
        Duration::from_secs(30),
    );
    assert!(
        closed,
        "the daemon kept the stdout/stderr pipes of `stratafs mount` open"
    );
}

fn unmount_with(tool: &[&str], name: &str) {
    require_root();
    let env = TestEnv::new(name);
    let (top, base) = simple_layers(&env);
    let stack = env.stack(&[&top, &base]);
    let mnt = env.fresh_dir("mnt");
    let _guard = scopeguard(&mnt);
    let out = run_timeout(
        &mut mount_command(&stack.lowers, &mnt, false),
        Duration::from_secs(60),
    );
    assert!(out.success(), "{}", out.describe());
    let pids = pids_with_arg(&mnt);
    assert!(!pids.is_empty(), "no daemon process found");
    let um = run_timeout(
        Command::new(tool[0]).args(&tool[1..]).arg(&mnt),
        Duration::from_secs(30),
    );
    assert!(um.success(), "{tool:?}: {}", um.describe());
    assert!(!is_mounted(&mnt), "still mounted after {tool:?}");
    assert!(
        wait_until(Duration::from_secs(10), || pids
            .iter()
            .all(|p| !process_alive(*p))),
        "daemon still alive 10 s after {tool:?}"
    );
}

#[test]
fn unmount_with_fusermount3() {
    unmount_with(&["fusermount3", "-u"], "cli-fusermount");
}

#[test]
fn unmount_with_umount() {
    unmount_with(&["umount"], "cli-umount");
}

/// A mount through the guard in background mode, with the strict teardown checks.
#[test]
fn background_mount_guard_round_trip() {
    require_root();
    let env = TestEnv::new("cli-bg-guard");
    let (top, base) = simple_layers(&env);
    let stack = env.stack(&[&top, &base]);
    let m = stack
        .try_stratafs(MountMode::Background)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fs::read(m.join("dir/t")).unwrap(), b"t");
    m.unmount();
}
