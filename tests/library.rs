//! The `stratafs` library (`stratafs::Mount`, issue 7) through real FUSE mounts served by
//! this test process:
//!
//! - read-only: the view equals kernel overlayfs over the same layers, writes give EROFS,
//!   `diff()` is empty, `upper_dir()` is None;
//! - ephemeral: changes, `diff()` (the exact list, and the same as `stratafs diff` of the
//!   mount point, which finds the library's mount in the registry); drop unmounts and removes
//!   the temporary mount point and upper;
//! - `.upper(DIR).work(DIR)`: the changes stay in DIR after the drop, the workdir is clean;
//! - `mount_at` an existing empty directory (which stays); a missing directory, a file, a live
//!   mount point, `upper` without `work` (and the reverse), a missing lower layer: an error
//!   with a readable message, nothing mounted, no temporary directory left; a non-empty
//!   directory too (the documented "an existing empty directory");
//! - six threads each mounting, writing, diffing and dropping at the same time (all six mounts
//!   alive at once, each seeing only its own changes);
//! - a panic inside the guard's scope (caught with `catch_unwind`, and in a thread of its own)
//!   still unmounts and removes the temporary directories;
//! - dropping a `Mount` while this process still has its working directory or an open
//!   directory in it returns (the mount is detached) instead of waiting for itself — run in a
//!   child process (this binary re-executed on the ignored helper `library_child`), killed
//!   after 15 s if it hangs;
//! - `examples/fixture_view` runs, prints what it did, and leaves no mount and nothing in its
//!   `$TMPDIR`;
//! - a stored image through `MountBuilder::image` (with a directory layer above it);
//! - the unprivileged `stratafs-test` account (this binary re-executed under `setpriv` on
//!   `library_child`): read-only and ephemeral mounts through fusermount3, owned by the user,
//!   `diff()`, drop; its `$TMPDIR` keeps only its (empty) mount registry `stratafs-<uid>/mounts`.
//!
//! Temporary directories are named `stratafs-*-PID-N` in `$TMPDIR` (mount points, ephemeral
//! uppers): the checks look at this process's (the tests of this file are serialized by a
//! lock, so that they hold under `cargo test` too, where they share one process).

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::time::Duration;

use common::oci::{StoreDir, zero_dir_sizes};
use common::*;
use stratafs::Mount;

const T: Duration = Duration::from_secs(60);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Two layers, bottom `l1` and top `l2`, readable by everyone ([`two_layer_fixture`]).
fn fixture(env: &TestEnv) -> (Layer, Layer) {
    two_layer_fixture(env, |_| {})
}

fn builder(stack: &Stack<'_>) -> stratafs::MountBuilder {
    let mut b = Mount::builder();
    for l in &stack.lowers {
        b = b.lower(l);
    }
    b
}

/// This process's temporary directories (`stratafs-*-PID-*` in `$TMPDIR`).
fn my_temp_dirs() -> Vec<String> {
    let tag = format!("-{}-", std::process::id());
    let mut v: Vec<String> = fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("stratafs-") && n.contains(&tag))
        .collect();
    v.sort();
    v
}

/// What a dropped mount must have cleaned up: the mount, its temporary mount point, its
/// temporary upper's directory.
fn gone_problems(path: &Path, upper: Option<&Path>) -> Vec<String> {
    let mut out = Vec::new();
    if is_mounted(path) {
        out.push(format!("{} still mounted", path.display()));
    }
    if path.exists() {
        out.push(format!("temporary mount point {} left", path.display()));
    }
    if let Some(u) = upper {
        let dir = u.parent().unwrap();
        if dir.exists() {
            out.push(format!("temporary upper {} left", dir.display()));
        }
    }
    out
}

fn changes(mnt: &Mount) -> Vec<String> {
    mnt.diff()
        .unwrap_or_else(|e| panic!("diff() of {}: {e}", mnt.path().display()))
        .iter()
        .map(|c| c.to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn read_only_mount_shows_the_layers() {
    require_root();
    let _s = serial();
    let env = TestEnv::new("lib-ro");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let kview = stack.kernel_view();
    let before = my_temp_dirs();
    let mnt = builder(&stack).mount_temp().expect("read-only mount_temp");
    let path = mnt.path().to_path_buf();
    assert!(path.is_absolute() && path.starts_with(std::env::temp_dir()));
    assert_eq!(mnt.lowers(), stack.lowers.as_slice());
    assert!(mnt.upper_dir().is_none());
    assert_eq!(
        mounts_at(&path).last().map(|m| m.fstype.clone()).as_deref(),
        Some("fuse.stratafs")
    );
    let s = Snapshot::take(&path);
    let d = snapshot_diff(&kview, &s, Mode::Merged, "kernel", "library mount");
    assert!(
        d.is_empty(),
        "{}",
        format_problems("read-only library mount", &d)
    );
    let inv = mount_invariants(&s);
    assert!(inv.is_empty(), "{inv:#?}");
    assert_eq!(
        errno_of(fs::write(path.join("new"), "x")),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno_of(fs::remove_file(path.join("keep.txt"))),
        Some(libc::EROFS)
    );
    assert_eq!(errno_of(fs::create_dir(path.join("d"))), Some(libc::EROFS));
    assert_eq!(
        changes(&mnt),
        Vec::<String>::new(),
        "diff() of a read-only mount"
    );
    drop(mnt);
    let p = gone_problems(&path, None);
    assert!(p.is_empty(), "{p:#?}");
    assert_eq!(my_temp_dirs(), before);
    stack.assert_layers_unchanged();
}

#[test]
fn ephemeral_mount_diff_matches_the_cli_and_drop_cleans_up() {
    require_root();
    let _s = serial();
    let env = TestEnv::new("lib-eph");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let before = my_temp_dirs();
    let mnt = builder(&stack)
        .ephemeral_upper()
        .mount_temp()
        .expect("ephemeral mount_temp");
    let path = mnt.path().to_path_buf();
    let upper = mnt
        .upper_dir()
        .expect("an ephemeral mount has an upper")
        .to_path_buf();
    assert!(
        upper.starts_with(std::env::temp_dir()),
        "{}",
        upper.display()
    );
    assert_eq!(
        changes(&mnt),
        Vec::<String>::new(),
        "diff() before any change"
    );
    let m = &path;
    fs::write(m.join("new.txt"), "new\n").unwrap();
    fs::write(m.join("mod.txt"), "changed\n").unwrap();
    fs::remove_file(m.join("del.txt")).unwrap();
    fs::remove_dir_all(m.join("dir")).unwrap();
    fs::rename(m.join("movedir"), m.join("moved")).unwrap();
    fs::create_dir_all(m.join("n/e/w")).unwrap();
    fs::remove_dir_all(m.join("opq")).unwrap();
    fs::create_dir(m.join("opq")).unwrap();
    let expected = [
        "D /del.txt",
        "D /dir",
        "C /mod.txt",
        "A /moved",
        "A /moved/f",
        "D /movedir",
        "A /n",
        "A /n/e",
        "A /n/e/w",
        "A /new.txt",
        "C /opq",
        "D /opq/new",
    ];
    assert_eq!(changes(&mnt), expected, "diff()");
    assert!(
        upper.join("new.txt").is_file(),
        "the change is not in upper_dir() {}",
        upper.display()
    );
    // `stratafs diff` of the library's mount point finds it in the registry.
    let out = run_ok(Command::new(stratafs_bin()).arg("diff").arg(&path), T);
    let cli: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(cli, expected, "stratafs diff of the library's mount point");
    // diff() mounted and unmounted its own views: nothing more of ours is mounted.
    let tag = format!("-{}-", std::process::id());
    let ours: Vec<_> = mounts()
        .into_iter()
        .filter(|m| {
            m.mount_point.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with("stratafs-") && n.contains(&tag)
            })
        })
        .map(|m| m.mount_point)
        .collect();
    assert_eq!(
        ours,
        vec![path.clone()],
        "mounts of this process after diff()"
    );
    drop(mnt);
    let p = gone_problems(&path, Some(&upper));
    assert!(p.is_empty(), "{p:#?}");
    assert_eq!(
        my_temp_dirs(),
        before,
        "temporary directories after the drop"
    );
    stack.assert_layers_unchanged();
}

#[test]
fn explicit_upper_and_work_keep_the_changes() {
    require_root();
    let _s = serial();
    let env = TestEnv::new("lib-upper");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let (upper, work) = upper_work(&env.fresh_dir("rw"));
    let before = my_temp_dirs();
    let mnt = builder(&stack)
        .upper(&upper)
        .work(&work)
        .mount_temp()
        .expect("mount_temp with upper and work");
    assert_eq!(mnt.upper_dir(), Some(upper.as_path()));
    let path = mnt.path().to_path_buf();
    fs::write(path.join("new.txt"), "new\n").unwrap();
    fs::remove_file(path.join("keep.txt")).unwrap();
    assert_eq!(changes(&mnt), ["D /keep.txt", "A /new.txt"]);
    mnt.unmount().expect("unmount()");
    let p = gone_problems(&path, None);
    assert!(p.is_empty(), "{p:#?}");
    assert_eq!(my_temp_dirs(), before);
    assert_eq!(fs::read(upper.join("new.txt")).unwrap(), b"new\n");
    let wh = fs::symlink_metadata(upper.join("keep.txt")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "keep.txt in the kept upper: not a char 0/0 whiteout"
    );
    let left = workdir_leftovers(&work);
    assert!(left.is_empty(), "workdir: {left:?}");
    stack.assert_layers_unchanged();
}

#[test]
fn mount_at_an_empty_directory() {
    require_root();
    let _s = serial();
    let env = TestEnv::new("lib-at");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let at = env.fresh_dir("at");
    let at_before = Snapshot::take(&at);
    let before = my_temp_dirs();
    let mnt = builder(&stack)
        .ephemeral_upper()
        .mount_at(&at)
        .expect("mount_at an empty directory");
    assert_eq!(mnt.path(), at.as_path());
    assert!(is_mounted(&at));
    fs::write(at.join("x"), "x").unwrap();
    let upper = mnt.upper_dir().unwrap().to_path_buf();
    drop(mnt);
    assert!(!is_mounted(&at), "{} still mounted", at.display());
    assert_dir_unchanged(&at_before, &at, "the mount_at directory");
    assert!(!upper.parent().unwrap().exists(), "ephemeral upper left");
    assert_eq!(my_temp_dirs(), before);
}

#[test]
fn bad_mount_points_and_options_error_cleanly() {
    require_root();
    let _s = serial();
    let env = TestEnv::new("lib-errors");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let before = my_temp_dirs();
    let live = builder(&stack).mount_temp().unwrap();
    let file = env.path("a-file");
    fs::write(&file, "x").unwrap();
    let missing = env.path("missing");
    let (upper, work) = upper_work(&env.fresh_dir("rw"));
    let mut problems = Vec::new();
    // Each case: an error (one line naming the problem), nothing mounted, and no temporary
    // directory of its own left (removed here when left, after being reported).
    let mut expect_err =
        |what: &str, make: &dyn Fn() -> Result<Mount, stratafs::mount::MountError>, want: &str| {
            let before = my_temp_dirs();
            match make() {
                Ok(m) => problems.push(format!("{what}: mounted at {}", m.path().display())),
                Err(e) => {
                    let msg = e.to_string();
                    if !msg.contains(want) || msg.contains('\n') {
                        problems.push(format!(
                            "{what}: message {msg:?} (expected one line with {want:?})"
                        ));
                    }
                }
            }
            let leaked: Vec<String> = my_temp_dirs()
                .into_iter()
                .filter(|n| !before.contains(n))
                .collect();
            if !leaked.is_empty() {
                problems.push(format!("{what}: temporary directories left: {leaked:?}"));
                for n in leaked {
                    let p = std::env::temp_dir().join(n);
                    if !is_mounted(&p) {
                        let _ = fs::remove_dir_all(&p);
                    }
                }
            }
        };
    expect_err(
        "mount_at a missing directory",
        &|| builder(&stack).ephemeral_upper().mount_at(&missing),
        "does not exist",
    );
    expect_err(
        "mount_at a file",
        &|| builder(&stack).ephemeral_upper().mount_at(&file),
        "not a directory",
    );
    expect_err(
        "mount_at a live mount point",
        &|| builder(&stack).mount_at(live.path()),
        "busy",
    );
    expect_err(
        "a missing lower layer",
        &|| {
            Mount::builder()
                .lower(env.path("no-such-layer"))
                .ephemeral_upper()
                .mount_temp()
        },
        "no-such-layer",
    );
    expect_err(
        "upper without work (mount_temp)",
        &|| builder(&stack).upper(&upper).mount_temp(),
        "work",
    );
    expect_err(
        "work without upper (mount_temp)",
        &|| builder(&stack).work(&work).mount_temp(),
        "work",
    );
    let mut left = Vec::new();
    if missing.exists() {
        left.push(format!("{} created", missing.display()));
    }
    if fs::read(&file).unwrap() != b"x" {
        left.push("the file changed".into());
    }
    let s = Snapshot::take(live.path());
    if s.entries.len() < 5 || !s.anomalies.is_empty() {
        left.push(format!("the live mount is damaged: {:?}", s.anomalies));
    }
    let live_path = live.path().to_path_buf();
    drop(live);
    left.extend(gone_problems(&live_path, None));
    let after = my_temp_dirs();
    if after != before {
        left.push(format!(
            "temporary directories left: {after:?} (before: {before:?})"
        ));
    }
    if !names_in(&upper).is_empty() || !names_in(&work).is_empty() {
        left.push("the refused upper or work was written to".into());
    }
    problems.extend(left);
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("refused mounts", &problems)
    );
    stack.assert_layers_unchanged();
}

/// `mount_at` takes "an existing empty directory" (its documentation): a non-empty one is an
/// error rather than hidden under the view.
#[test]
fn mount_at_refuses_a_non_empty_directory() {
    require_root();
    let _s = serial();
    let env = TestEnv::new("lib-at-nonempty");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let at = env.fresh_dir("at");
    fs::write(at.join("precious"), "mine\n").unwrap();
    let before = my_temp_dirs();
    let r = builder(&stack).ephemeral_upper().mount_at(&at);
    let mounted = r.as_ref().is_ok();
    drop(r);
    assert!(!is_mounted(&at));
    assert_eq!(fs::read(at.join("precious")).unwrap(), b"mine\n");
    assert_eq!(my_temp_dirs(), before);
    assert!(
        !mounted,
        "mount_at on a non-empty directory mounted over its content"
    );
}

#[test]
fn six_threads_mount_write_diff_and_drop_in_parallel() {
    require_root();
    let _s = serial();
    let env = TestEnv::new("lib-threads");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let before = my_temp_dirs();
    const N: usize = 6;
    let barrier = Arc::new(Barrier::new(N));
    let prefix = format!("stratafs-mnt-{}-", std::process::id());
    let mut handles = Vec::new();
    for i in 0..N {
        let lowers = stack.lowers.clone();
        let barrier = barrier.clone();
        let prefix = prefix.clone();
        handles.push(std::thread::spawn(move || {
            let mut problems = Vec::new();
            let mounted = (|| -> Result<Mount, String> {
                let mut b = Mount::builder();
                for l in &lowers {
                    b = b.lower(l);
                }
                let m = b
                    .ephemeral_upper()
                    .mount_temp()
                    .map_err(|e| e.to_string())?;
                let p = m.path();
                fs::write(p.join(format!("t{i}.txt")), format!("{i}\n"))
                    .map_err(|e| e.to_string())?;
                fs::write(p.join("mod.txt"), format!("thread {i}\n")).map_err(|e| e.to_string())?;
                fs::remove_file(p.join("del.txt")).map_err(|e| e.to_string())?;
                Ok(m)
            })();
            barrier.wait(); // every thread has mounted (or failed)
            let ours = mounts()
                .into_iter()
                .filter(|m| {
                    m.mount_point
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
                })
                .count();
            if ours != N {
                problems.push(format!(
                    "thread {i}: {ours} mounts of this process alive at once, expected {N}"
                ));
            }
            barrier.wait(); // every thread has counted
            let (path, upper) = match &mounted {
                Ok(m) => {
                    let p = m.path();
                    for j in 0..N {
                        if j != i && p.join(format!("t{j}.txt")).exists() {
                            problems.push(format!("thread {i} sees t{j}.txt"));
                        }
                    }
                    match fs::read(p.join("mod.txt")) {
                        Ok(c) if c == format!("thread {i}\n").as_bytes() => {}
                        other => problems.push(format!("thread {i}: mod.txt {other:?}")),
                    }
                    match m.diff() {
                        Ok(d) => {
                            let d: Vec<String> = d.iter().map(|c| c.to_string()).collect();
                            let want = vec![
                                "D /del.txt".to_string(),
                                "C /mod.txt".to_string(),
                                format!("A /t{i}.txt"),
                            ];
                            if d != want {
                                problems.push(format!("thread {i}: diff() {d:?}"));
                            }
                        }
                        Err(e) => problems.push(format!("thread {i}: diff(): {e}")),
                    }
                    (Some(p.to_path_buf()), m.upper_dir().map(Path::to_path_buf))
                }
                Err(e) => {
                    problems.push(format!("thread {i}: {e}"));
                    (None, None)
                }
            };
            barrier.wait(); // every thread has diffed; drop them all at once
            drop(mounted);
            if let Some(p) = &path {
                problems.extend(gone_problems(p, upper.as_deref()));
            }
            problems
        }));
    }
    let mut problems = Vec::new();
    for h in handles {
        match h.join() {
            Ok(p) => problems.extend(p),
            Err(_) => problems.push("a thread panicked".into()),
        }
    }
    if my_temp_dirs() != before {
        problems.push(format!("temporary directories left: {:?}", my_temp_dirs()));
    }
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("parallel mounts", &problems)
    );
    stack.assert_layers_unchanged();
}

#[test]
fn a_panic_in_the_guards_scope_still_unmounts() {
    require_root();
    let _s = serial();
    let env = TestEnv::new("lib-panic");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let before = my_temp_dirs();
    let seen: Mutex<Option<(PathBuf, PathBuf)>> = Mutex::new(None);
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mnt = builder(&stack).ephemeral_upper().mount_temp().unwrap();
        *seen.lock().unwrap() = Some((
            mnt.path().to_path_buf(),
            mnt.upper_dir().unwrap().to_path_buf(),
        ));
        fs::write(mnt.path().join("x"), "x").unwrap();
        let _reader = fs::File::open(mnt.path().join("keep.txt")).unwrap();
        panic!("deliberate panic inside the mount's scope");
    }));
    assert!(r.is_err());
    let (path, upper) = seen.lock().unwrap().take().expect("the mount was made");
    let p = gone_problems(&path, Some(&upper));
    assert!(p.is_empty(), "after a caught panic: {p:#?}");
    assert!(
        !fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(path.to_str().unwrap()),
        "/proc/self/mountinfo still names {}",
        path.display()
    );

    // A thread that panics while its mount is alive.
    let lowers = stack.lowers.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let mut b = Mount::builder();
        for l in &lowers {
            b = b.lower(l);
        }
        let mnt = b.ephemeral_upper().mount_temp().unwrap();
        tx.send((
            mnt.path().to_path_buf(),
            mnt.upper_dir().unwrap().to_path_buf(),
        ))
        .unwrap();
        fs::remove_file(mnt.path().join("keep.txt")).unwrap();
        panic!("deliberate panic in a thread holding a mount");
    });
    assert!(h.join().is_err());
    let (path, upper) = rx.recv().unwrap();
    let p = gone_problems(&path, Some(&upper));
    assert!(p.is_empty(), "after a thread's panic: {p:#?}");
    assert_eq!(my_temp_dirs(), before);
    stack.assert_layers_unchanged();
}

/// Runs this binary on `library_child` with `mode`; (output, timed out).
fn run_child(cmd: &mut Command, limit: Duration) -> CmdOutput {
    cmd.args(["--exact", "library_child", "--ignored", "--nocapture"]);
    run_timeout(cmd, limit)
}

fn child_results(out_dir: &Path) -> (String, String) {
    (
        fs::read_to_string(out_dir.join("results")).unwrap_or_default(),
        fs::read_to_string(out_dir.join("problems")).unwrap_or_default(),
    )
}

/// Dropping a `Mount` while this very process still uses it (its working directory, an open
/// directory): the drop must return — detaching the mount — and not wait for the process to
/// let go, which it never will while it waits.
#[test]
fn drop_while_the_process_still_uses_the_mount_returns() {
    require_root();
    let _s = serial();
    let env = TestEnv::new("lib-busy");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let mut problems = Vec::new();
    for how in ["cwd", "dirfd"] {
        let tmp = env.fresh_dir("tmp");
        let out_dir = env.fresh_dir("out");
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env("STRATAFS_LIBCHILD", how)
            .env("STRATAFS_LIBCHILD_OUT", &out_dir)
            .env("STRATAFS_LIBCHILD_LOWERS", lowers_env(&stack))
            .env("TMPDIR", &tmp);
        let out = run_child(&mut cmd, Duration::from_secs(15));
        let (results, child_problems) = child_results(&out_dir);
        if out.status.is_none() {
            problems.push(format!(
                "{how}: the child hung (killed after 15 s); it got as far as: {results:?}"
            ));
        } else if !out.success() {
            problems.push(format!("{how}: child failed: {}", out.describe()));
        }
        if !child_problems.is_empty() {
            problems.push(format!("{how}: {child_problems}"));
        }
        let m = mounts_under(&tmp);
        if !m.is_empty() {
            problems.push(format!("{how}: mounts left: {m:?}"));
        }
        if out.status.is_some() && !names_in(&tmp).is_empty() {
            problems.push(format!("{how}: left in $TMPDIR: {:?}", names_in(&tmp)));
        }
    }
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("dropping a Mount this process still uses", &problems)
    );
    stack.assert_layers_unchanged();
}

fn lowers_env(stack: &Stack<'_>) -> std::ffi::OsString {
    let mut v = Vec::new();
    for (i, l) in stack.lowers.iter().enumerate() {
        if i > 0 {
            v.push(b'\n');
        }
        v.extend_from_slice(l.as_os_str().as_bytes());
    }
    OsStr::from_bytes(&v).to_os_string()
}

/// Helper run as a separate process by the tests above (`$STRATAFS_LIBCHILD`):
/// - `cwd`/`dirfd`: mounts an ephemeral view of `$STRATAFS_LIBCHILD_LOWERS`, enters it (or
///   opens its root directory), drops the mount, records that the drop returned and whether
///   the mount is gone, then leaves it;
/// - `user`: as the unprivileged user, a read-only mount (snapshot, EROFS, drop) and an
///   ephemeral one (changes, `diff()`, owner of the mount and of the upper, drop).
///
/// Writes `results` (one fact a line) and `problems` into `$STRATAFS_LIBCHILD_OUT`.
#[test]
#[ignore = "helper: run in a child process by the library tests"]
fn library_child() {
    let Ok(mode) = std::env::var("STRATAFS_LIBCHILD") else {
        return;
    };
    let out = PathBuf::from(std::env::var_os("STRATAFS_LIBCHILD_OUT").unwrap());
    let lowers: Vec<PathBuf> = std::env::var_os("STRATAFS_LIBCHILD_LOWERS")
        .unwrap()
        .as_bytes()
        .split(|b| *b == b'\n')
        .map(|p| PathBuf::from(OsStr::from_bytes(p)))
        .collect();
    let results = std::cell::RefCell::new(String::new());
    let note = |s: String| {
        let mut r = results.borrow_mut();
        r.push_str(&s);
        r.push('\n');
        fs::write(out.join("results"), r.as_bytes()).unwrap();
    };
    let mut problems = Vec::new();
    let b = || {
        let mut b = Mount::builder();
        for l in &lowers {
            b = b.lower(l);
        }
        b
    };
    match mode.as_str() {
        "cwd" | "dirfd" => {
            let mnt = b().ephemeral_upper().mount_temp().unwrap();
            let path = mnt.path().to_path_buf();
            let upper = mnt.upper_dir().unwrap().to_path_buf();
            let mut dirfd = None;
            if mode == "cwd" {
                std::env::set_current_dir(&path).unwrap();
            } else {
                dirfd = Some(fs::File::open(&path).unwrap());
            }
            note(format!("mounted {}", path.display()));
            drop(mnt);
            note("drop returned".into());
            if is_mounted(&path) {
                problems.push(format!("{} still mounted after the drop", path.display()));
            }
            std::env::set_current_dir("/").unwrap();
            drop(dirfd);
            note("left the view".into());
            let _ = upper;
        }
        "user" => {
            // SAFETY: geteuid has no preconditions.
            let uid = unsafe { libc::geteuid() };
            note(format!("uid {uid}"));
            let ro = b().mount_temp().unwrap();
            let path = ro.path().to_path_buf();
            match fuse_mount_owner(&path) {
                Some(o) if o == uid => {}
                other => problems.push(format!("read-only mount owner {other:?}")),
            }
            fs::write(
                out.join("ro-snapshot"),
                snapshot_to_text(&Snapshot::take(&path)),
            )
            .unwrap();
            if errno_of(fs::write(path.join("x"), "x")) != Some(libc::EROFS) {
                problems.push("a write to the read-only mount did not give EROFS".into());
            }
            drop(ro);
            problems.extend(gone_problems(&path, None));
            note("read-only done".into());

            let rw = b().ephemeral_upper().mount_temp().unwrap();
            let path = rw.path().to_path_buf();
            let upper = rw.upper_dir().unwrap().to_path_buf();
            match fuse_mount_owner(&path) {
                Some(o) if o == uid => {}
                other => problems.push(format!("ephemeral mount owner {other:?}")),
            }
            if fs::metadata(&upper).map(|m| m.uid()).ok() != Some(uid) {
                problems.push(format!("upper {} not owned by {uid}", upper.display()));
            }
            for (what, r) in [
                ("write new.txt", fs::write(path.join("new.txt"), "new\n")),
                ("rm del.txt", fs::remove_file(path.join("del.txt"))),
                ("mkdir newdir", fs::create_dir(path.join("newdir"))),
            ] {
                if let Err(e) = r {
                    problems.push(format!("{what}: {e}"));
                }
            }
            match rw.diff() {
                Ok(d) => note(format!(
                    "diff {}",
                    d.iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                )),
                Err(e) => problems.push(format!("diff(): {e}")),
            }
            drop(rw);
            problems.extend(gone_problems(&path, Some(&upper)));
            note("ephemeral done".into());
        }
        other => problems.push(format!("unknown mode {other}")),
    }
    fs::write(out.join("problems"), problems.join("\n")).unwrap();
}

#[test]
fn the_unprivileged_user_can_use_the_library() {
    require_root();
    let _s = serial();
    let env = TestEnv::new("lib-user");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let kview = stack.kernel_view();
    let (uid, gid) = test_user_ids();
    let tmp = dir_owned_by(&env, "utmp", uid, gid);
    let out_dir = dir_owned_by(&env, "uout", uid, gid);
    let mut cmd = as_test_user(std::env::current_exe().unwrap());
    cmd.env("STRATAFS_LIBCHILD", "user")
        .env("STRATAFS_LIBCHILD_OUT", &out_dir)
        .env("STRATAFS_LIBCHILD_LOWERS", lowers_env(&stack))
        .env("TMPDIR", &tmp);
    let out = run_child(&mut cmd, T);
    let (results, problems) = child_results(&out_dir);
    assert!(
        out.success(),
        "the child as {TEST_USER}: {}",
        out.describe()
    );
    assert_eq!(problems, "", "problems in the child as {TEST_USER}");
    assert_eq!(
        results,
        format!(
            "uid {uid}\nread-only done\ndiff D /del.txt,A /new.txt,A /newdir\nephemeral done\n"
        ),
        "what the child did"
    );
    let ro = snapshot_from_text(&fs::read_to_string(out_dir.join("ro-snapshot")).unwrap());
    let (mut a, mut b) = (kview.clone(), ro);
    zero_dir_sizes(&mut a);
    zero_dir_sizes(&mut b);
    let d = snapshot_diff(
        &a,
        &b,
        Mode::Merged,
        "kernel (root)",
        "library mount (user)",
    );
    assert!(
        d.is_empty(),
        "{}",
        format_problems("the user's read-only view", &d)
    );
    // Only the user's (empty) mount registry may stay in its $TMPDIR.
    let reg = format!("stratafs-{uid}");
    let mut left = Vec::new();
    for n in names_in(&tmp) {
        if n != reg {
            left.push(n);
        }
    }
    if tmp.join(&reg).exists() {
        assert_eq!(names_in(&tmp.join(&reg)), vec!["mounts".to_string()]);
        left.extend(names_in(&tmp.join(&reg).join("mounts")));
    }
    assert!(left.is_empty(), "left in the user's $TMPDIR: {left:?}");
    assert!(mounts_under(&tmp).is_empty());
    stack.assert_layers_unchanged();
}

#[test]
fn the_example_program_runs_and_leaves_no_mount() {
    require_root();
    let _s = serial();
    let env = TestEnv::new("lib-example");
    let (l1, _l2) = fixture(&env);
    let stack = env.stack(&[&l1]);
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples/fixture_view");
    assert!(
        example.is_file(),
        "{} missing: build it with `cargo build --examples` (cargo test builds it)",
        example.display()
    );
    let tmp = env.fresh_dir("tmp");
    let out = run_timeout(Command::new(&example).arg(&l1.root).env("TMPDIR", &tmp), T);
    assert!(out.success(), "fixture_view: {}", out.describe());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "fixture_view output: {text}");
    let prefix = format!("fixtures of {} mounted at ", l1.root.display());
    let mnt = PathBuf::from(
        lines[0]
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("first line: {:?}", lines[0])),
    );
    assert!(
        mnt.starts_with(&tmp),
        "mounted at {} outside its $TMPDIR",
        mnt.display()
    );
    let mut names: Vec<std::ffi::OsString> = fs::read_dir(&l1.root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(lines[1], format!("entries: {names:?}"));
    let first_file = names
        .iter()
        .find(|n| fs::symlink_metadata(l1.root.join(n)).unwrap().is_file())
        .unwrap();
    assert_eq!(
        lines[2],
        format!(
            "removed {} (in the view only)",
            first_file.to_string_lossy()
        )
    );
    assert_eq!(lines[3], format!("unmounted; {} removed", mnt.display()));
    assert!(!is_mounted(&mnt));
    assert_eq!(names_in(&tmp), Vec::<String>::new(), "left in its $TMPDIR");
    stack.assert_layers_unchanged();
}

#[test]
fn a_stored_image_through_the_library() {
    require_root();
    let _s = serial();
    let env = TestEnv::new("lib-image");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let kview = stack.kernel_view();
    let sd = StoreDir::new(&env.path("store"));
    sd.image_from("img", [&l1.root, &l2.root]);
    let before = my_temp_dirs();
    let store = stratafs::store::Store::open(&sd.dir).expect("Store::open");
    {
        let mnt = Mount::builder()
            .image(&store, "img", stratafs::store::VerifyMode::Full)
            .expect("image()")
            .mount_temp()
            .expect("mount of the image");
        let s = Snapshot::take(mnt.path());
        let (mut a, mut b) = (kview.clone(), s);
        zero_dir_sizes(&mut a);
        zero_dir_sizes(&mut b);
        let d = snapshot_diff(&a, &b, Mode::Merged, "kernel", "library mount of the image");
        assert!(
            d.is_empty(),
            "{}",
            format_problems("image through the library", &d)
        );
        assert_eq!(mnt.lowers().len(), 2);
    }
    // A directory layer above the image, and an ephemeral upper.
    let extra = env.layer("extra");
    extra.file("extra.txt", "extra\n");
    let mnt = Mount::builder()
        .lower(&extra.root)
        .image(&store, "img", stratafs::store::VerifyMode::Lazy)
        .expect("image()")
        .ephemeral_upper()
        .mount_temp()
        .expect("mount of extra + image");
    assert_eq!(fs::read(mnt.path().join("extra.txt")).unwrap(), b"extra\n");
    assert_eq!(fs::read(mnt.path().join("top.txt")).unwrap(), b"top\n");
    assert_eq!(fs::read(mnt.path().join("keep.txt")).unwrap(), b"keep\n");
    fs::remove_file(mnt.path().join("extra.txt")).unwrap();
    fs::write(mnt.path().join("keep.txt"), "changed\n").unwrap();
    assert_eq!(changes(&mnt), ["D /extra.txt", "C /keep.txt"]);
    let path = mnt.path().to_path_buf();
    drop(mnt);
    let p = gone_problems(&path, None);
    assert!(p.is_empty(), "{p:#?}");
    assert_eq!(my_temp_dirs(), before);
    assert!(
        !sd.ok(&["image", "ls"]).is_empty(),
        "the store is still usable after the library's mounts"
    );
    stack.assert_layers_unchanged();
}
