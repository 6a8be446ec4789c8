//! The drop-in command line, end to end through real mounts: `stratafs [-f] [-d] [-s]
//! [-o LIST]... [SOURCE] MOUNTPOINT` as fuse-overlayfs takes it, the argv containers/storage
//! runs its `mount_program` with, the mount(8) helper `mount.fuse.stratafs` (`mount -t
//! fuse.stratafs`, an fstab line, mount.fuse3), one-line errors that mount nothing, and every
//! accepted option: it mounts, and the ones with a visible effect show it.
//!
//! Expected semantics come from fuse-overlayfs 1.10 where stratafs claims to be a drop-in
//! (uidmapping/gidmapping direction, squash precedence, what containers/storage sends). With
//! `STRATAFS_TEST_BIN=/usr/bin/fuse-overlayfs` the semantic tests (uidmapping, squash, noacl)
//! pass; most others fail there by design: fuse-overlayfs cannot name a layer directory with a
//! ':' (libfuse removes the `\` before lowerdir is split), ignores unknown options, fsname,
//! subtype, sync and dirsync, and has no `stratafs:` prefix or ino32_t warning.

mod common;

use common::dropin::*;
use common::*;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Three layers; the top two have a ':' and a ',' in their directory names.
/// base: hello, gone, shadowed, dir/{b, sub/deep}, script.sh, hard link pair, a symlink;
/// mid ("mid,comma"): dir/m, shadowed; top ("top:colon"): dir/t, shadowed, a char 0/0
/// whiteout of dir/b.
fn three_layers(env: &TestEnv) -> (Layer, Layer, Layer) {
    let base = env.layer("base");
    let mid = env.layer("mid,comma");
    let top = env.layer("top:colon");
    base.file("hello", "hello from base\n");
    base.file("gone", "to be deleted\n");
    base.file("shadowed", "base\n");
    base.file("dir/b", "b\n");
    base.file("dir/sub/deep", "deep\n");
    base.file("script.sh", "#!/bin/sh\necho ran\n").mode(0o755);
    base.file("linked", "two names\n");
    base.hardlink("linked", "linked2");
    base.symlink("link-to-hello", "hello");
    mid.file("dir/m", "m\n");
    mid.file("shadowed", "mid\n");
    top.file("dir/t", "t\n");
    top.file("shadowed", "top\n");
    top.whiteout("dir/b", Whiteout::CharDev);
    (top, mid, base)
}

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

/// `lowerdir=...,upperdir=...,workdir=...` (escaped).
fn rw_opts(lowers: &[PathBuf], upper: &Path, work: &Path) -> String {
    format!(
        "{},upperdir={},workdir={}",
        lowerdir_opt(lowers),
        opt_escape(upper),
        opt_escape(work)
    )
}

/// Mounts `stratafs -o OPTS MNT` in the background; panics with the output if it fails.
fn mount_opts(opts: &str, mnt: &Path) -> DropinMount {
    DropinMount::background(dropin_cmd().arg("-o").arg(opts).arg(mnt), mnt, mnt)
        .unwrap_or_else(|e| panic!("drop-in mount failed: {e}"))
}

/// A fresh mount point plus upper and work dirs.
fn fresh_rw(env: &TestEnv, tag: &str) -> (PathBuf, PathBuf, PathBuf) {
    let mnt = env.fresh_dir(&format!("mnt/{tag}"));
    let (u, w) = upper_work(&env.fresh_dir(&format!("rw/{tag}")));
    (mnt, u, w)
}

fn errno_of<T>(r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| match e.raw_os_error() {
        Some(n) => errno_name(n),
        None => e.to_string(),
    })
}

fn is_whiteout(p: &Path) -> bool {
    fs::symlink_metadata(p)
        .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
        .unwrap_or(false)
}

/// Runs `sh -c script` as uid/gid `id` (supplementary groups dropped).
fn sh_as(id: u32, script: &str) -> CmdOutput {
    run_timeout(
        Command::new("sh").arg("-c").arg(script).uid(id).gid(id),
        Duration::from_secs(30),
    )
}

/// Mounts under this test's root that are not in `before`.
fn new_mounts(env: &TestEnv, before: &[u64]) -> Vec<MountInfo> {
    mounts_under(&env.root)
        .into_iter()
        .filter(|m| !before.contains(&m.mount_id))
        .collect()
}

/// The merged view vs the kernel's read-only view of the same lowers. The root directory's
/// mtime is not compared: with an upper layer (or an empty top diff dir) the root is that
/// directory, made by the test, as on a writable kernel overlay.
fn view_diff(kernel: &Snapshot, mount: &Snapshot) -> Vec<String> {
    let mut m = mount.clone();
    if let (Some(k), Some(r)) = (
        kernel.entries.get(&Vec::new()),
        m.entries.get_mut(&Vec::new()),
    ) {
        r.mtime = k.mtime;
    }
    snapshot_diff(kernel, &m, Mode::Merged, "kernel", "stratafs")
}

/// The writes every writable spelling does, and what they must leave in upper.
fn do_writes(mnt: &Path) {
    fs::write(mnt.join("new-file"), "new\n").unwrap();
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("hello"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"more\n").unwrap();
    drop(f);
    fs::remove_file(mnt.join("gone")).unwrap();
    fs::create_dir(mnt.join("dir/newdir")).unwrap();
}

fn check_writes_landed(mnt: &Path, upper: &Path) -> Vec<String> {
    let mut p = Vec::new();
    let mut expect = |rel: &str, want: Option<&str>| {
        let got = fs::read_to_string(upper.join(rel)).ok();
        if got.as_deref() != want {
            p.push(format!("upper/{rel}: expected {want:?}, got {got:?}"));
        }
    };
    expect("new-file", Some("new\n"));
    expect("hello", Some("hello from base\nmore\n"));
    if !is_whiteout(&upper.join("gone")) {
        p.push(format!(
            "upper/gone should be a char 0/0 whiteout, is {:?}",
            fs::symlink_metadata(upper.join("gone")).map(|m| (m.file_type(), m.rdev()))
        ));
    }
    if !upper.join("dir/newdir").is_dir() {
        p.push("upper/dir/newdir missing".into());
    }
    if mnt.join("gone").exists() {
        p.push("gone still visible through the mount".into());
    }
    p
}

// ---------------------------------------------------------------------------------------------
// Spellings, read-only, foreground, debug, errors
// ---------------------------------------------------------------------------------------------

/// The writable mount in every spelling fuse-overlayfs accepts: one -o with everything, repeated
/// -o, -oLIST, options reordered and after the mount point, a SOURCE positional, -s, relative
/// paths (resolved against the cwd), and layer directories whose names hold ':' (escaped `\:`)
/// and ',' (escaped `\,`). Each launcher exits 0 with the mount live and its stdout/stderr
/// released; the merged view equals the kernel's; writes land in upper (content, copy-up,
/// char 0/0 whiteout, new dir) in the overlay upper format; the lowers stay bit-identical.
#[test]
fn writable_mount_in_every_spelling() {
    require_root();
    let env = TestEnv::new("dropin-spellings");
    let (top, mid, base) = three_layers(&env);
    let stack = env.stack(&[&top, &mid, &base]);
    let lower_view = {
        let k = stack.kernel();
        Snapshot::take(k.path())
    };
    assert!(
        lower_view.has("dir/t") && lower_view.has("dir/m") && !lower_view.has("dir/b"),
        "test setup: kernel view {:?}",
        lower_view.children("dir")
    );
    let lowers = stack.lowers.clone();
    let lo = lowerdir_opt(&lowers);
    let rel_lo = format!(
        "lowerdir={}",
        lowers
            .iter()
            .map(|p| opt_escape(p.strip_prefix(&env.root).unwrap()))
            .collect::<Vec<_>>()
            .join(":")
    );
    assert!(lo.contains(r"top\:colon") && lo.contains(r"mid\,comma"));

    type Spelling<'a> = Box<dyn Fn(&Path, &Path, &Path) -> (Vec<OsString>, Option<PathBuf>) + 'a>;
    let spellings: Vec<(&str, Spelling)> = vec![
        (
            "one -o",
            Box::new(|m: &Path, u: &Path, w: &Path| {
                let mut a = os(&["-o"]);
                a.push(rw_opts(&lowers, u, w).into());
                a.push(m.into());
                (a, None)
            }),
        ),
        (
            "repeated -o, reordered",
            Box::new(|m: &Path, u: &Path, w: &Path| {
                let a = vec![
                    "-o".into(),
                    format!("workdir={}", opt_escape(w)).into(),
                    "-o".into(),
                    lo.clone().into(),
                    "-o".into(),
                    format!("upperdir={}", opt_escape(u)).into(),
                    m.into(),
                ];
                (a, None)
            }),
        ),
        (
            "-oLIST twice",
            Box::new(|m: &Path, u: &Path, w: &Path| {
                let a = vec![
                    format!("-o{},upperdir={}", lo, opt_escape(u)).into(),
                    format!("-oworkdir={}", opt_escape(w)).into(),
                    m.into(),
                ];
                (a, None)
            }),
        ),
        (
            "SOURCE MOUNTPOINT then -o, -s",
            Box::new(|m: &Path, u: &Path, w: &Path| {
                let a = vec![
                    "overlay".into(),
                    m.into(),
                    "-s".into(),
                    "-o".into(),
                    format!("upperdir={},workdir={}", opt_escape(u), opt_escape(w)).into(),
                    "-o".into(),
                    lo.clone().into(),
                ];
                (a, None)
            }),
        ),
        (
            "relative paths",
            Box::new(|m: &Path, u: &Path, w: &Path| {
                let r = |p: &Path| p.strip_prefix(&env.root).unwrap().to_path_buf();
                let a = vec![
                    "-o".into(),
                    format!(
                        "{rel_lo},upperdir={},workdir={}",
                        opt_escape(&r(u)),
                        opt_escape(&r(w))
                    )
                    .into(),
                    r(m).into(),
                ];
                (a, Some(env.root.clone()))
            }),
        ),
    ];

    let mut problems = Vec::new();
    for (i, (name, make)) in spellings.iter().enumerate() {
        // A unique name, so that a relative mount point finds this daemon only.
        let mnt = env.fresh_dir(&format!("mnt/sp-{}-{i}-", std::process::id()));
        let (upper, work) = upper_work(&env.fresh_dir("rw/sp"));
        let (args, cwd) = make(&mnt, &upper, &work);
        let daemon_arg = PathBuf::from(args.iter().find(|a| mnt.ends_with(a)).unwrap());
        let mut cmd = dropin_cmd();
        cmd.args(&args);
        if let Some(d) = &cwd {
            cmd.current_dir(d);
        }
        let m = match DropinMount::background(&mut cmd, &mnt, &daemon_arg) {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("[{name}] {e}"));
                continue;
            }
        };
        let launch = m.launch.as_ref().unwrap();
        if !launch.stdio_closed {
            problems.push(format!(
                "[{name}] the daemon kept the launcher's stdout/stderr open"
            ));
        }
        if !launch.stderr.is_empty() {
            problems.push(format!(
                "[{name}] unexpected stderr: {:?}",
                launch.stderr_str()
            ));
        }
        if m.pids().is_empty() {
            problems.push(format!("[{name}] no daemon process found"));
        }
        let view = Snapshot::take(m.path());
        problems.extend(
            view_diff(&lower_view, &view)
                .into_iter()
                .map(|d| format!("[{name}] {d}")),
        );
        do_writes(m.path());
        problems.extend(
            check_writes_landed(m.path(), &upper)
                .into_iter()
                .map(|d| format!("[{name}] {d}")),
        );
        problems.extend(m.finish().into_iter().map(|d| format!("[{name}] {d}")));
        problems.extend(
            upper_format_problems(&Snapshot::take(&upper), UpperDialect::Overlay, &lower_view)
                .into_iter()
                .map(|d| format!("[{name}] upper format: {d}")),
        );
    }
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("drop-in spellings", &problems)
    );
}

/// The same writes through stratafs (drop-in form) and through a writable kernel overlay give
/// the same merged tree (mtimes set during the run compared as "fresh").
#[test]
fn writes_match_kernel_overlay() {
    require_root();
    let env = TestEnv::new("dropin-vs-kernel");
    let (top, mid, base) = three_layers(&env);
    fix_times(&top.root);
    fix_times(&mid.root);
    fix_times(&base.root);
    let stack = env.stack(&[&top, &mid, &base]);
    let t0 = now_secs();
    let kcopies = stack.kernel_copies();
    let kstack = env.stack_paths(kcopies.clone());
    let (kmnt, ku, kw) = fresh_rw(&env, "k");
    let k = KernelOverlay::writable(&kstack.lowers, &ku, &kw, &kmnt).unwrap();
    do_writes(k.path());
    let mut ks = Snapshot::take(k.path());
    let (mnt, u, w) = fresh_rw(&env, "s");
    let m = mount_opts(&rw_opts(&stack.lowers, &u, &w), &mnt);
    do_writes(m.path());
    let mut ss = Snapshot::take(m.path());
    normalize_times(&mut ks, t0);
    normalize_times(&mut ss, t0);
    let d = snapshot_diff(&ks, &ss, Mode::Merged, "kernel", "stratafs");
    m.unmount();
    drop(k);
    assert!(
        d.is_empty(),
        "{}",
        format_problems("same writes, kernel vs stratafs", &d)
    );
}

/// `-o lowerdir=A:B` alone: a read-only mount that serves the merged tree; every write fails
/// with EROFS.
#[test]
fn lowerdir_only_is_read_only() {
    require_root();
    let env = TestEnv::new("dropin-ro");
    let (top, mid, base) = three_layers(&env);
    let stack = env.stack(&[&top, &mid, &base]);
    let kview = {
        let k = stack.kernel();
        Snapshot::take(k.path())
    };
    let mnt = env.fresh_dir("mnt/ro");
    let m = mount_opts(&lowerdir_opt(&stack.lowers), &mnt);
    let view = Snapshot::take(m.path());
    let mut problems = view_diff(&kview, &view);
    problems.extend(erofs_problems(m.path()));
    m.unmount();
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("lowerdir-only mount", &problems)
    );
}

/// Every kind of write on `mnt` must fail with EROFS.
fn erofs_problems(mnt: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let j = |r: &str| mnt.join(r);
    let results: Vec<(&str, Result<(), String>)> = vec![
        ("create", errno_of(fs::write(j("created"), "x"))),
        (
            "open O_WRONLY existing",
            errno_of(
                fs::OpenOptions::new()
                    .write(true)
                    .open(j("hello"))
                    .map(drop),
            ),
        ),
        (
            "truncate",
            errno_of(
                fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(j("hello"))
                    .map(drop),
            ),
        ),
        ("mkdir", errno_of(fs::create_dir(j("newdir")))),
        ("unlink", errno_of(fs::remove_file(j("gone")))),
        ("rmdir", errno_of(fs::remove_dir(j("dir/sub")))),
        ("rename", errno_of(fs::rename(j("hello"), j("hello2")))),
        (
            "chmod",
            errno_of(fs::set_permissions(
                j("hello"),
                fs::Permissions::from_mode(0o600),
            )),
        ),
        (
            "chown",
            errno_of(std::os::unix::fs::chown(j("hello"), Some(1), Some(1))),
        ),
        (
            "symlink",
            errno_of(std::os::unix::fs::symlink("x", j("sym"))),
        ),
        ("link", errno_of(fs::hard_link(j("hello"), j("hl")))),
        (
            "setxattr",
            errno_of(lsetxattr(&j("hello"), b"user.x", b"y")),
        ),
        ("utimes", errno_of(set_times_nofollow(&j("hello"), 5, 0))),
    ];
    results
        .into_iter()
        .filter(|(_, r)| *r != Err("EROFS".to_string()))
        .map(|(op, r)| format!("{op}: expected EROFS, got {r:?}"))
        .collect()
}

/// `-f` stays in the foreground (the process that mounted keeps serving) and SIGTERM / SIGINT
/// unmount and end it with status 0; with an absolute and with a relative mount point (which
/// fuse-overlayfs gets wrong: it chdirs to / and cannot unmount).
#[test]
fn foreground_f_stays_and_signals_unmount() {
    require_root();
    let env = TestEnv::new("dropin-fg");
    let (top, mid, base) = three_layers(&env);
    let stack = env.stack(&[&top, &mid, &base]);
    let mut problems = Vec::new();
    for (i, (sig, relative)) in [
        (libc::SIGTERM, false),
        (libc::SIGINT, true),
        (libc::SIGTERM, true),
    ]
    .into_iter()
    .enumerate()
    {
        let mnt = env.fresh_dir(&format!("mnt/fg-{}-{i}-", std::process::id()));
        let (u, w) = upper_work(&env.fresh_dir("rw/fg"));
        let mut cmd = dropin_cmd();
        let arg = if relative {
            cmd.current_dir(&env.root);
            mnt.strip_prefix(&env.root).unwrap().to_path_buf()
        } else {
            mnt.clone()
        };
        cmd.arg("-f")
            .arg("-o")
            .arg(rw_opts(&stack.lowers, &u, &w))
            .arg(&arg);
        let log = env.path(&format!("fg{i}.log"));
        let mut m = DropinMount::foreground(&mut cmd, &mnt, &log)
            .unwrap_or_else(|e| panic!("-f mount failed: {e}"));
        std::thread::sleep(Duration::from_millis(300));
        if let Some(st) = m.try_wait() {
            problems.push(format!("[{i}] -f process exited ({st}) while mounted"));
        }
        if fs::read(m.join("hello")).ok().as_deref() != Some(&b"hello from base\n"[..]) {
            problems.push(format!("[{i}] cannot read through the -f mount"));
        }
        fs::write(m.join("fg-file"), "x").unwrap();
        let st = m.signal_and_wait(sig);
        let still = is_mounted(&mnt);
        match st {
            None => problems.push(format!("[{i}] signal {sig}: still running after 20 s")),
            Some(s) if s.code() != Some(0) => problems.push(format!(
                "[{i}] signal {sig}: exit status {s}, expected 0; output {:?}",
                m.stderr()
            )),
            _ => {}
        }
        if still {
            problems.push(format!(
                "[{i}] signal {sig} (relative mount point: {relative}) did not unmount"
            ));
        }
        problems.extend(m.finish().into_iter().map(|p| format!("[{i}] {p}")));
        if fs::read(u.join("fg-file")).ok().as_deref() != Some(&b"x"[..]) {
            problems.push(format!("[{i}] the write did not land in upper"));
        }
    }
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("foreground mode", &problems)
    );
}

/// `-d` and `-o debug` log requests and imply the foreground: the launching process keeps
/// running, and a lookup of a unique name shows up in its output; SIGINT unmounts.
#[test]
fn debug_logs_requests_in_foreground() {
    require_root();
    let env = TestEnv::new("dropin-debug");
    let (top, mid, base) = three_layers(&env);
    let stack = env.stack(&[&top, &mid, &base]);
    let mut problems = Vec::new();
    for (i, debug_args) in [vec!["-d"], vec!["-o", "debug"]].into_iter().enumerate() {
        let mnt = env.fresh_dir("mnt/dbg");
        let (u, w) = upper_work(&env.fresh_dir("rw/dbg"));
        let mut cmd = dropin_cmd();
        cmd.args(&debug_args)
            .arg("-o")
            .arg(rw_opts(&stack.lowers, &u, &w))
            .arg(&mnt);
        let log = env.path(&format!("dbg{i}.log"));
        let mut m = match DropinMount::foreground(&mut cmd, &mnt, &log) {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("{debug_args:?}: {e}"));
                continue;
            }
        };
        std::thread::sleep(Duration::from_millis(300));
        if let Some(st) = m.try_wait() {
            problems.push(format!(
                "{debug_args:?}: the process exited ({st}) while mounted: debug must imply the foreground"
            ));
        }
        let probe = format!("debug-probe-name-{i}");
        let _ = fs::symlink_metadata(m.join(&probe));
        let _ = fs::read(m.join("hello"));
        std::thread::sleep(Duration::from_millis(300));
        let out = m.stderr();
        if !out.contains(&probe) {
            problems.push(format!(
                "{debug_args:?}: the lookup of {probe:?} is not in the debug output; output was:\n{}",
                out.lines().take(10).collect::<Vec<_>>().join("\n")
            ));
        }
        match m.signal_and_wait(libc::SIGINT) {
            None => problems.push(format!("{debug_args:?}: still running 20 s after SIGINT")),
            Some(_) if is_mounted(&mnt) => {
                problems.push(format!("{debug_args:?}: SIGINT did not unmount"))
            }
            Some(_) => {}
        }
        problems.extend(m.finish());
    }
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("debug mode", &problems)
    );
}

/// A failing drop-in mount: non-zero exit, exactly one line on stderr starting `stratafs:`, no
/// mount left under the test dir and no daemon left (in the background and with -f).
#[test]
fn errors_are_one_line_and_mount_nothing() {
    require_root();
    let env = TestEnv::new("dropin-errors");
    let (top, mid, base) = three_layers(&env);
    let stack = env.stack(&[&top, &mid, &base]);
    let lo = lowerdir_opt(&stack.lowers);
    let (mnt, u, w) = fresh_rw(&env, "err");
    let uo = format!("upperdir={}", opt_escape(&u));
    let wo = format!("workdir={}", opt_escape(&w));
    let missing = env.path("no-such-layer");
    let m = mnt.to_str().unwrap().to_string();
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "unknown option",
            vec!["-o".into(), format!("{lo},frobnicate=1"), m.clone()],
        ),
        (
            "upperdir without workdir",
            vec!["-o".into(), format!("{lo},{uo}"), m.clone()],
        ),
        (
            "no lowerdir",
            vec!["-o".into(), format!("{uo},{wo}"), m.clone()],
        ),
        ("no options at all", vec![m.clone()]),
        (
            "missing layer dir",
            vec![
                "-o".into(),
                format!("{lo}:{},{uo},{wo}", opt_escape(&missing)),
                m.clone(),
            ],
        ),
        (
            "missing upper dir",
            vec![
                "-o".into(),
                format!("{lo},upperdir={},{wo}", opt_escape(&missing)),
                m.clone(),
            ],
        ),
        (
            "uidmapping not triples",
            vec!["-o".into(), format!("{lo},uidmapping=0:1000"), m.clone()],
        ),
        (
            "uidmapping not numbers",
            vec!["-o".into(), format!("{lo},uidmapping=0:x:1"), m.clone()],
        ),
        (
            "gidmapping empty range",
            vec!["-o".into(), format!("{lo},gidmapping=0:1000:0"), m.clone()],
        ),
        (
            "xattr_permissions=3",
            vec!["-o".into(), format!("{lo},xattr_permissions=3"), m.clone()],
        ),
        (
            "missing mount point",
            vec![
                "-o".into(),
                lo.clone(),
                env.path("no-such-mnt").to_str().unwrap().into(),
            ],
        ),
        ("-o without a value", vec![m.clone(), "-o".into()]),
    ];
    let mut problems = Vec::new();
    for (name, args) in &cases {
        for fg in [false, true] {
            let before: Vec<u64> = mounts_under(&env.root).iter().map(|m| m.mount_id).collect();
            let mut cmd = dropin_cmd();
            if fg {
                cmd.arg("-f");
            }
            cmd.args(args);
            let out = run_timeout(&mut cmd, Duration::from_secs(30));
            let left = new_mounts(&env, &before);
            for l in &left {
                let _ = run_timeout(
                    Command::new("umount").arg("-l").arg(&l.mount_point),
                    Duration::from_secs(10),
                );
            }
            let tag = format!("[{name}{}]", if fg { ", -f" } else { "" });
            let err = out.stderr_str();
            let lines: Vec<&str> = err.lines().collect();
            if out.status.is_none() {
                problems.push(format!("{tag} did not exit within 30 s"));
            } else if out.success() {
                problems.push(format!("{tag} exited 0: {}", out.describe()));
            }
            if lines.len() != 1 || !lines[0].starts_with("stratafs:") || err.contains("panicked") {
                problems.push(format!(
                    "{tag} expected one line starting 'stratafs:', got {err:?}"
                ));
            }
            if !left.is_empty() {
                problems.push(format!("{tag} left mounts: {left:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
            let pids = pids_with_arg(&mnt);
            for &pid in &pids {
                // SAFETY: kill(2) of a daemon this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if !pids.is_empty() {
                problems.push(format!("{tag} left processes {pids:?}"));
            }
        }
    }
    assert!(
        fs::read_dir(&u).unwrap().next().is_none(),
        "a failed mount wrote into upper"
    );
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("failing drop-in mounts", &problems)
    );
}

/// `--help` describes the drop-in form; `--version` prints the version.
#[test]
fn help_and_version() {
    let h = run_timeout(dropin_cmd().arg("--help"), Duration::from_secs(10));
    assert!(h.success(), "--help: {}", h.describe());
    let text = String::from_utf8_lossy(&h.stdout);
    assert!(
        text.contains("-o lowerdir=") && text.contains("fuse-overlayfs"),
        "--help does not describe the drop-in form: {text}"
    );
    let v = run_timeout(dropin_cmd().arg("--version"), Duration::from_secs(10));
    assert!(v.success(), "--version: {}", v.describe());
    let text = String::from_utf8_lossy(&v.stdout);
    assert!(
        text.contains(env!("CARGO_PKG_VERSION")),
        "--version printed {text:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

/// Every accepted option mounts (one mount each, a writable stack), serves reads, takes a write
/// (except `ro`) and unmounts cleanly; none prints anything but the ones that warn.
#[test]
fn every_accepted_option_mounts() {
    require_root();
    let env = TestEnv::new("dropin-every-option");
    let (top, mid, base) = three_layers(&env);
    let stack = env.stack(&[&top, &mid, &base]);
    let groups: &[&str] = &[
        "uidmapping=0:0:65536,gidmapping=0:0:65536",
        "uidmapping=0:0:1:1:1:65535,gidmapping=0:0:1:1:1:65535",
        "squash_to_root",
        "squash_to_uid=1234,squash_to_gid=4321",
        "static_nlink",
        "noacl",
        "fsync=0",
        "fsync=1",
        "volatile",
        "timeout=0",
        "timeout=2.5",
        "writeback=1",
        "writeback=0",
        "noxattrs=1",
        "noxattrs=0",
        "xattr_permissions=0",
        "xattr_permissions=1",
        "xattr_permissions=2",
        "xino=auto",
        "xino=on",
        "xino=off",
        "ino32_t",
        "redirect_dir=off",
        "plugins=/nonexistent/plugin.so",
        "threaded=1",
        "threaded=0",
        "allow_other",
        "allow_root",
        "default_permissions",
        "ro",
        "rw",
        "suid",
        "nosuid",
        "dev",
        "nodev",
        "exec",
        "noexec",
        "atime",
        "noatime",
        "relatime",
        "sync",
        "async",
        "dirsync",
        "max_write=65536",
        "fsname=dropin-src",
        "subtype=dropin",
        "auto_unmount",
        "clone_fd",
        "kernel_cache",
        "max_idle_threads=4",
        "defaults",
        "noauto",
        "nofail",
        "_netdev",
        "x-systemd.automount",
        "lazytime",
        "user",
        "comment=anything",
    ];
    let warns = ["ino32_t", "plugins="];
    let mut problems = Vec::new();
    for g in groups {
        let (mnt, u, w) = fresh_rw(&env, "opt");
        let opts = format!("{},{g}", rw_opts(&stack.lowers, &u, &w));
        let m = match DropinMount::background(
            dropin_cmd().arg("-o").arg(&opts).arg(&mnt),
            &mnt,
            &mnt,
        ) {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("[{g}] {e}"));
                continue;
            }
        };
        let err = m.stderr();
        let should_warn = warns.iter().any(|x| g.starts_with(x));
        if !should_warn && !err.is_empty() {
            problems.push(format!("[{g}] unexpected stderr {err:?}"));
        }
        if should_warn && err.lines().count() != 1 {
            problems.push(format!("[{g}] expected one warning line, got {err:?}"));
        }
        match fs::read(m.join("dir/t")) {
            Ok(b) if b == b"t\n" => {}
            r => problems.push(format!("[{g}] read dir/t: {:?}", errno_of(r))),
        }
        if *g != "ro"
            && let Err(e) = fs::write(m.join("written"), "w")
        {
            problems.push(format!("[{g}] write: {e}"));
        }
        problems.extend(m.finish().into_iter().map(|p| format!("[{g}] {p}")));
        if *g != "ro" && fs::read(u.join("written")).ok().as_deref() != Some(&b"w"[..]) {
            problems.push(format!("[{g}] the write did not land in upper"));
        }
    }
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("accepted options", &problems)
    );
}

/// static_nlink: every directory reports st_nlink 1 (files keep theirs: a hard-linked pair 2).
#[test]
fn static_nlink_dirs_report_one() {
    require_root();
    let env = TestEnv::new("dropin-static-nlink");
    let (top, mid, base) = three_layers(&env);
    let stack = env.stack(&[&top, &mid, &base]);
    let (mnt, u, w) = fresh_rw(&env, "sn");
    let m = mount_opts(
        &format!("{},static_nlink", rw_opts(&stack.lowers, &u, &w)),
        &mnt,
    );
    fs::create_dir(m.join("dir/new-sub")).unwrap();
    let s = Snapshot::take(m.path());
    m.unmount();
    let mut problems: Vec<String> = s
        .entries
        .iter()
        .filter(|(_, e)| e.kind == Kind::Dir && e.nlink != 1)
        .map(|(p, e)| format!("{}: dir nlink {}", show_path(p), e.nlink))
        .collect();
    if s.entry("linked").nlink != 2 {
        problems.push(format!(
            "linked: nlink {}, expected 2",
            s.entry("linked").nlink
        ));
    }
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("static_nlink", &problems)
    );
}

fn raw_listxattr(p: &Path) -> Result<isize, String> {
    let c = cpath(p);
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length.
    let r = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        Err(errno_name(errno()))
    } else {
        Ok(r)
    }
}

/// noxattrs=1: getxattr, setxattr, listxattr and removexattr fail with EOPNOTSUPP (files and
/// directories, lower and upper), and nothing is copied up by the attempts. noxattrs=0 serves
/// the layer's xattr.
#[test]
fn noxattrs_fails_xattr_ops() {
    require_root();
    let env = TestEnv::new("dropin-noxattrs");
    let base = env.layer("base");
    base.file("f", "f").xattr("user.foo", b"bar");
    base.dir("d").xattr("user.dir", b"1");
    let stack = env.stack(&[&base]);
    let (mnt, u, w) = fresh_rw(&env, "nx");
    let m = mount_opts(
        &format!("{},noxattrs=1", rw_opts(&stack.lowers, &u, &w)),
        &mnt,
    );
    fs::write(m.join("upper-file"), "u").unwrap();
    let mut problems = Vec::new();
    for rel in ["f", "d", "upper-file", ""] {
        let p = m.path().join(rel);
        let ops: Vec<(&str, Result<String, String>)> = vec![
            (
                "getxattr",
                errno_of(lgetxattr(&p, b"user.foo")).map(|v| show_bytes(&v)),
            ),
            (
                "setxattr",
                errno_of(lsetxattr(&p, b"user.new", b"v")).map(|_| "ok".into()),
            ),
            ("listxattr", raw_listxattr(&p).map(|n| format!("{n} bytes"))),
            (
                "removexattr",
                errno_of(lremovexattr(&p, b"user.foo")).map(|_| "ok".into()),
            ),
        ];
        for (op, r) in ops {
            if r != Err("EOPNOTSUPP".into()) {
                problems.push(format!("{op} {rel:?}: expected EOPNOTSUPP, got {r:?}"));
            }
        }
    }
    m.unmount();
    for rel in ["f", "d"] {
        if fs::symlink_metadata(u.join(rel)).is_ok() {
            problems.push(format!("{rel} was copied up by a refused xattr call"));
        }
    }
    let (mnt2, u2, w2) = fresh_rw(&env, "x0");
    let m2 = mount_opts(
        &format!("{},noxattrs=0", rw_opts(&stack.lowers, &u2, &w2)),
        &mnt2,
    );
    let got = errno_of(lgetxattr(&m2.join("f"), b"user.foo"));
    m2.unmount();
    if got != Ok(b"bar".to_vec()) {
        problems.push(format!("noxattrs=0: getxattr user.foo gave {got:?}"));
    }
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("noxattrs", &problems)
    );
}

/// ro with an upper layer: every write fails with EROFS, the mount is ro in mountinfo, and the
/// upper dir stays empty.
#[test]
fn ro_with_upper_is_read_only() {
    require_root();
    let env = TestEnv::new("dropin-ro-upper");
    let (top, mid, base) = three_layers(&env);
    let stack = env.stack(&[&top, &mid, &base]);
    let (mnt, u, w) = fresh_rw(&env, "ro");
    let m = mount_opts(&format!("{},ro", rw_opts(&stack.lowers, &u, &w)), &mnt);
    let mut problems = erofs_problems(m.path());
    let mi = mounts_at(&mnt);
    if !mi.iter().all(|x| x.options.split(',').any(|o| o == "ro")) {
        problems.push(format!("mountinfo does not say ro: {mi:?}"));
    }
    m.unmount();
    let left: Vec<_> = fs::read_dir(&u)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    if !left.is_empty() {
        problems.push(format!("upper is not empty: {left:?}"));
    }
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("ro with upperdir", &problems)
    );
}

/// nosuid,nodev,noexec,noatime (and sync, dirsync) reach the kernel: mountinfo shows them, a
/// script cannot be executed and a device node cannot be opened. suid,dev,exec: neither
/// restriction, and nothing of the kind in mountinfo.
#[test]
fn mount_flags_reach_the_kernel() {
    require_root();
    let env = TestEnv::new("dropin-flags");
    let base = env.layer("base");
    base.file("script.sh", "#!/bin/sh\necho ran\n").mode(0o755);
    base.chardev("null", 1, 3).mode(0o666);
    let stack = env.stack(&[&base]);
    let mut problems = Vec::new();
    let all_opts = |mi: &[MountInfo]| -> Vec<String> {
        mi.iter()
            .flat_map(|m| {
                m.options
                    .split(',')
                    .chain(m.super_options.split(','))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    {
        let (mnt, u, w) = fresh_rw(&env, "restrict");
        let m = mount_opts(
            &format!(
                "{},nosuid,nodev,noexec,noatime,sync,dirsync",
                rw_opts(&stack.lowers, &u, &w)
            ),
            &mnt,
        );
        let opts = all_opts(&mounts_at(&mnt));
        for want in ["nosuid", "nodev", "noexec", "noatime", "sync", "dirsync"] {
            if !opts.iter().any(|o| o == want) {
                problems.push(format!("{want} missing from mountinfo: {opts:?}"));
            }
        }
        let exec = errno_of(Command::new(m.join("script.sh")).output());
        if exec.as_ref().err().map(String::as_str) != Some("EACCES") {
            problems.push(format!(
                "noexec: executing a script gave {:?}",
                exec.map(|o| o.status)
            ));
        }
        let dev = errno_of(fs::File::open(m.join("null")));
        if dev.as_ref().err().map(String::as_str) != Some("EACCES") {
            problems.push(format!("nodev: opening a device gave {dev:?}"));
        }
        m.unmount();
    }
    {
        let (mnt, u, w) = fresh_rw(&env, "allow");
        let m = mount_opts(
            &format!("{},suid,dev,exec", rw_opts(&stack.lowers, &u, &w)),
            &mnt,
        );
        let opts = all_opts(&mounts_at(&mnt));
        for unwanted in ["nosuid", "nodev", "noexec"] {
            if opts.iter().any(|o| o == unwanted) {
                problems.push(format!("suid,dev,exec: {unwanted} in mountinfo: {opts:?}"));
            }
        }
        match Command::new(m.join("script.sh")).output() {
            Ok(o) if o.status.success() && o.stdout == b"ran\n" => {}
            r => problems.push(format!("exec: running the script gave {r:?}")),
        }
        if let Err(e) = fs::File::open(m.join("null")) {
            problems.push(format!("dev: opening the device node: {e}"));
        }
        m.unmount();
    }
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("mount flags", &problems)
    );
}

fn owners(root: &Path) -> Vec<(String, u32, u32)> {
    Snapshot::take(root)
        .entries
        .iter()
        .map(|(p, e)| (show_path(p), e.uid, e.gid))
        .collect()
}

/// squash_to_uid=N / squash_to_gid=M: every entry (lower, upper, new, root) shows N:M;
/// squash_to_root shows 0:0; squash_to_uid takes precedence over squash_to_root (42:0, as in
/// fuse-overlayfs). A chown through a squashed mount succeeds.
#[test]
fn squash_options_show_ids() {
    require_root();
    let env = TestEnv::new("dropin-squash");
    let base = env.layer("base");
    base.file("root-owned", "r");
    base.file("user-owned", "u").owner(1000, 1001);
    base.dir("d").owner(5, 6);
    base.file("d/f", "f").owner(70000, 70001);
    base.symlink("sym", "root-owned");
    let stack = env.stack(&[&base]);
    let mut problems = Vec::new();
    for (opts, want) in [
        ("squash_to_uid=1234,squash_to_gid=4321", (1234, 4321)),
        ("squash_to_root", (0, 0)),
        ("squash_to_uid=42,squash_to_root", (42, 0)),
    ] {
        let (mnt, u, w) = fresh_rw(&env, "sq");
        let m = mount_opts(&format!("{},{opts}", rw_opts(&stack.lowers, &u, &w)), &mnt);
        fs::write(m.join("created"), "c").unwrap();
        fs::write(m.join("user-owned"), "copied up").unwrap();
        if let Err(e) = std::os::unix::fs::chown(m.join("d/f"), Some(77), Some(78)) {
            problems.push(format!("[{opts}] chown through the mount: {e}"));
        }
        for (p, uid, gid) in owners(m.path()) {
            if (uid, gid) != want {
                problems.push(format!("[{opts}] {p}: {uid}:{gid}, expected {want:?}"));
            }
        }
        m.unmount();
    }
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("squash options", &problems)
    );
}

/// uidmapping/gidmapping as fuse-overlayfs and containers/storage mean them:
/// `CONTAINER:HOST:LEN` = on-disk id : shown id : count. With `0:1000:1:1:100000:65536`,
/// on-disk 0 shows as 1000, 5 as 100004, 1000 as 100999, 70000 (unmapped) as the overflow id
/// 65534; a file created by shown uid 1000 / 100004 is owned by 0 / 5 on disk; a chown to
/// 100009 stores 10. Both the plain form and the leading-':' form the current
/// containers/storage writes (`uidmapping=:0:1000:1:...`, which fuse-overlayfs parses with
/// strtok) are checked.
#[test]
fn uidmapping_follows_fuse_overlayfs() {
    require_root();
    let env = TestEnv::new("dropin-idmap");
    let base = env.layer("base");
    base.file("own0", "0");
    base.file("own5", "5").owner(5, 5);
    base.file("own1000", "1000").owner(1000, 1000);
    base.file("own70000", "7").owner(70000, 70000);
    base.dir("shared").mode(0o777);
    let stack = env.stack(&[&base]);
    let mut problems = Vec::new();
    for map in ["0:1000:1:1:100000:65536", ":0:1000:1:1:100000:65536"] {
        let (mnt, u, w) = fresh_rw(&env, "map");
        let opts = format!(
            "{},uidmapping={map},gidmapping={map}",
            rw_opts(&stack.lowers, &u, &w)
        );
        let m = match DropinMount::background(
            dropin_cmd().arg("-o").arg(&opts).arg(&mnt),
            &mnt,
            &mnt,
        ) {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("[{map}] {e}"));
                continue;
            }
        };
        for (rel, want) in [
            ("", 1000),
            ("own0", 1000),
            ("own5", 100004),
            ("own1000", 100999),
            ("own70000", 65534),
            ("shared", 1000),
        ] {
            match fs::symlink_metadata(m.join(rel)) {
                Ok(md) if (md.uid(), md.gid()) == (want, want) => {}
                Ok(md) => problems.push(format!(
                    "[{map}] {rel:?} (on disk {:?}) shows {}:{}, expected {want}:{want}",
                    fs::symlink_metadata(base.path(rel)).map(|d| d.uid()).ok(),
                    md.uid(),
                    md.gid()
                )),
                Err(e) => problems.push(format!("[{map}] stat {rel:?}: {e}")),
            }
        }
        for (id, disk) in [(1000u32, 0u32), (100004, 5)] {
            let name = format!("shared/by-{id}");
            let out = sh_as(id, &format!("echo x > '{}'", m.join(&name).display()));
            if !out.success() {
                problems.push(format!("[{map}] create as uid {id}: {}", out.describe()));
                continue;
            }
            match fs::symlink_metadata(u.join(&name)) {
                Ok(md) if (md.uid(), md.gid()) == (disk, disk) => {}
                r => problems.push(format!(
                    "[{map}] file created by shown uid {id}: on disk {:?}, expected {disk}:{disk}",
                    r.map(|md| (md.uid(), md.gid()))
                )),
            }
        }
        if let Err(e) = std::os::unix::fs::chown(m.join("own5"), Some(100009), Some(100009)) {
            problems.push(format!("[{map}] chown own5 100009: {e}"));
        }
        problems.extend(m.finish().into_iter().map(|p| format!("[{map}] {p}")));
        match fs::symlink_metadata(u.join("own5")) {
            Ok(md) if (md.uid(), md.gid()) == (10, 10) => {}
            r => problems.push(format!(
                "[{map}] chown to shown 100009: upper own5 is {:?}, expected 10:10",
                r.map(|md| (md.uid(), md.gid()))
            )),
        }
    }
    assert!(
        problems.is_empty(),
        "{}",
        format_problems(
            "uidmapping/gidmapping (fuse-overlayfs semantics)",
            &problems
        )
    );
}

/// ino32_t is accepted with a warning on stderr, exactly once (not once per request), in the
/// foreground (where the daemon's stderr is visible) and in the background (the launcher's).
#[test]
fn ino32_t_warns_once() {
    require_root();
    let env = TestEnv::new("dropin-ino32");
    let (top, mid, base) = three_layers(&env);
    let stack = env.stack(&[&top, &mid, &base]);
    let mut problems = Vec::new();
    let count = |s: &str| s.lines().filter(|l| l.contains("ino32_t")).count();
    {
        let (mnt, u, w) = fresh_rw(&env, "i32f");
        let log = env.path("ino32.log");
        let mut m = DropinMount::foreground(
            dropin_cmd()
                .arg("-f")
                .arg("-o")
                .arg(format!("{},ino32_t", rw_opts(&stack.lowers, &u, &w)))
                .arg(&mnt),
            &mnt,
            &log,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..3 {
            let s = Snapshot::take(m.path());
            assert!(s.has("dir/t"));
            fs::write(m.join("f"), "x").unwrap();
        }
        let _ = m.signal_and_wait(libc::SIGTERM);
        let out = m.stderr();
        problems.extend(m.finish());
        if count(&out) != 1 || !out.contains("has no effect yet") {
            problems.push(format!(
                "-f: expected exactly one 'ino32_t ... has no effect yet' warning, output {out:?}"
            ));
        }
    }
    {
        let (mnt, u, w) = fresh_rw(&env, "i32b");
        let m = mount_opts(&format!("{},ino32_t", rw_opts(&stack.lowers, &u, &w)), &mnt);
        let out = m.stderr();
        m.unmount();
        if count(&out) != 1 || out.lines().count() != 1 {
            problems.push(format!(
                "background: expected one warning line about ino32_t, got {out:?}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("ino32_t", &problems)
    );
}

const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;

/// The xattr form of a POSIX ACL: version 2, then (tag, perm, id) entries, little endian.
fn posix_acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// noacl: the kernel stops enforcing POSIX ACLs (only mode bits count) — a file whose ACL grants
/// uid 65534 what the mode denies becomes unreadable for it, one whose ACL denies what the mode
/// grants becomes readable. Without noacl, the ACLs are enforced.
#[test]
fn noacl_turns_acl_enforcement_off() {
    require_root();
    let env = TestEnv::new("dropin-noacl");
    let base = env.layer("base");
    let n = u32::MAX;
    base.file("acl_allows", "a").mode(0o600).xattr(
        "system.posix_acl_access",
        &posix_acl(&[
            (ACL_USER_OBJ, 6, n),
            (ACL_USER, 4, 65534),
            (ACL_GROUP_OBJ, 0, n),
            (ACL_MASK, 4, n),
            (ACL_OTHER, 0, n),
        ]),
    );
    base.file("acl_denies", "d").mode(0o644).xattr(
        "system.posix_acl_access",
        &posix_acl(&[
            (ACL_USER_OBJ, 6, n),
            (ACL_USER, 0, 65534),
            (ACL_GROUP_OBJ, 4, n),
            (ACL_MASK, 4, n),
            (ACL_OTHER, 4, n),
        ]),
    );
    let stack = env.stack(&[&base]);
    let mut problems = Vec::new();
    for (extra, allows_ok, denies_ok) in [("", true, false), (",noacl", false, true)] {
        let (mnt, u, w) = fresh_rw(&env, "acl");
        let m = mount_opts(&format!("{}{extra}", rw_opts(&stack.lowers, &u, &w)), &mnt);
        for (f, want) in [("acl_allows", allows_ok), ("acl_denies", denies_ok)] {
            let out = sh_as(65534, &format!("cat '{}'", m.join(f).display()));
            if out.success() != want {
                problems.push(format!(
                    "[{}] uid 65534 reading {f}: {}, expected {}",
                    if extra.is_empty() { "acl" } else { "noacl" },
                    if out.success() { "allowed" } else { "denied" },
                    if want { "allowed" } else { "denied" }
                ));
            }
        }
        m.unmount();
    }
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("noacl", &problems)
    );
}

/// allow_root on a mount made by root: other users are refused (EACCES), root is served; by
/// default (as fuse-overlayfs run by root) other users are served.
#[test]
fn allow_root_refuses_other_users() {
    require_root();
    let env = TestEnv::new("dropin-allow-root");
    let (top, mid, base) = three_layers(&env);
    let stack = env.stack(&[&top, &mid, &base]);
    let mut problems = Vec::new();
    for (extra, other_ok) in [("", true), (",allow_other", true), (",allow_root", false)] {
        let (mnt, u, w) = fresh_rw(&env, "ar");
        let m = mount_opts(&format!("{}{extra}", rw_opts(&stack.lowers, &u, &w)), &mnt);
        let out = sh_as(65534, &format!("cat '{}'", m.join("hello").display()));
        if out.success() != other_ok {
            problems.push(format!("[{extra}] uid 65534 reading: {}", out.describe()));
        }
        if fs::read(m.join("hello")).is_err() {
            problems.push(format!("[{extra}] root cannot read"));
        }
        m.unmount();
    }
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("allow_root/allow_other", &problems)
    );
}

/// fsname=X: the mount's source in mountinfo is X.
#[test]
fn fsname_option_sets_source() {
    require_root();
    let env = TestEnv::new("dropin-fsname");
    let (top, mid, base) = three_layers(&env);
    let stack = env.stack(&[&top, &mid, &base]);
    let (mnt, u, w) = fresh_rw(&env, "fs");
    let m = mount_opts(
        &format!("{},fsname=dropin-src", rw_opts(&stack.lowers, &u, &w)),
        &mnt,
    );
    let mi = mounts_at(&mnt);
    m.unmount();
    assert!(
        mi.len() == 1 && mi[0].source == "dropin-src",
        "fsname=dropin-src: mountinfo {mi:?}"
    );
}

/// subtype=X: the mount's type in mountinfo is fuse.X (the option is accepted, so it must take
/// effect, as fsname= does).
#[test]
fn subtype_option_sets_fstype() {
    require_root();
    let env = TestEnv::new("dropin-subtype");
    let (top, mid, base) = three_layers(&env);
    let stack = env.stack(&[&top, &mid, &base]);
    let (mnt, u, w) = fresh_rw(&env, "st");
    let m = mount_opts(
        &format!("{},subtype=dropin", rw_opts(&stack.lowers, &u, &w)),
        &mnt,
    );
    let mi = mounts_at(&mnt);
    m.unmount();
    assert!(
        mi.len() == 1 && mi[0].fstype == "fuse.dropin",
        "subtype=dropin: expected type fuse.dropin, mountinfo {mi:?}"
    );
}

fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

/// context=: containers/storage sends `context="LABEL"` (double-quoted, and the label's
/// category list holds a comma: `...:s0:c1,c2`) whenever SELinux labels the container.
/// fuse-overlayfs consumes the option, so the mount works everywhere. On a host without
/// SELinux the kernel refuses a context= mount option, so a drop-in must not fail the mount
/// because of it. Both the plain and the quoted-with-comma forms must mount.
#[test]
fn context_option_as_containers_storage_sends_it() {
    require_root();
    let env = TestEnv::new("dropin-context");
    let (top, mid, base) = three_layers(&env);
    let stack = env.stack(&[&top, &mid, &base]);
    let mut problems = Vec::new();
    for ctx in [
        "context=system_u:object_r:container_file_t:s0",
        "context=\"system_u:object_r:container_file_t:s0:c1,c2\"",
    ] {
        let (mnt, u, w) = fresh_rw(&env, "ctx");
        let opts = format!("{},{ctx}", rw_opts(&stack.lowers, &u, &w));
        match DropinMount::background(dropin_cmd().arg("-o").arg(&opts).arg(&mnt), &mnt, &mnt) {
            Ok(m) => {
                if fs::read(m.join("hello")).is_err() {
                    problems.push(format!("[{ctx}] cannot read"));
                }
                problems.extend(m.finish());
            }
            Err(e) => problems.push(format!(
                "[{ctx}] (selinux enabled: {}) {e}",
                selinux_enabled()
            )),
        }
    }
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("context=", &problems)
    );
}

// ---------------------------------------------------------------------------------------------
// Callers: containers/storage, mount(8), fstab, mount.fuse3
// ---------------------------------------------------------------------------------------------

/// A containers/storage overlay graph root, as the driver lays it out for a mount program:
/// `HOME/<id>/diff` per layer (extracted with AUFS-format `.wh.` whiteouts, as it does for a
/// mount program), `HOME/l/<short> -> ../<id>/diff`, and the container layer
/// `HOME/ctr/{diff,work,merged}`.
struct GraphRoot {
    home: PathBuf,
    /// `HOME/l/<short>` (symlinks), top first.
    links: Vec<PathBuf>,
    /// The real diff dirs, top first.
    diffs: Vec<PathBuf>,
    diff: PathBuf,
    work: PathBuf,
    merged: PathBuf,
}

fn graph_root(env: &TestEnv) -> GraphRoot {
    let home = env.path("storage/overlay");
    let base = Layer::new(home.join("aaaa1111/diff"));
    base.file("etc/os-release", "ID=test\n");
    base.file("etc/gone", "deleted by the upper image layer\n");
    base.file("usr/share/doc/a", "a\n");
    base.file("usr/share/doc/b", "b\n");
    base.file("bin/tool", "#!/bin/sh\necho tool\n").mode(0o755);
    let top = Layer::new(home.join("bbbb2222/diff"));
    top.file("etc/added", "added\n");
    top.whiteout("etc/gone", Whiteout::Oci);
    top.opaque("usr/share/doc", Opaque::Oci);
    top.file("usr/share/doc/only", "only\n");
    fs::create_dir_all(home.join("l")).unwrap();
    let mut links = Vec::new();
    for (short, id) in [("BBBBSHORT", "bbbb2222"), ("AAAASHORT", "aaaa1111")] {
        let l = home.join("l").join(short);
        std::os::unix::fs::symlink(format!("../{id}/diff"), &l).unwrap();
        fs::write(home.join(id).join("link"), short).unwrap();
        links.push(l);
    }
    let ctr = home.join("cccc3333");
    let (diff, work, merged) = (ctr.join("diff"), ctr.join("work"), ctr.join("merged"));
    for d in [&diff, &work, &merged] {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(ctr.join("lower"), "l/BBBBSHORT:l/AAAASHORT").unwrap();
    GraphRoot {
        home,
        links,
        diffs: vec![top.root.clone(), base.root.clone()],
        diff,
        work,
        merged,
    }
}

/// The argv containers/storage runs its mount_program with (`exec.Command(mount_program, "-o",
/// data, merged)`, cwd = the graph root; kernel flags such as nodev stripped from `data`):
/// current form (absolute `l/` symlink lowers, mountopt appended), the older ones (relative
/// lowers; mountopt prepended), a read-only image mount (no upper), and the rootless ones
/// (uidmapping/gidmapping appended, in the current leading-':' form too; squash_to_uid for a
/// single id), and the exact argv podman 4.3.1 (Debian 12) was seen to pass. Each exits 0 with the mount live and the expected view; writes land in the
/// container's diff dir; `fusermount3 -u` (what the driver's Put runs) unmounts and the daemon
/// exits.
#[test]
fn containers_storage_mount_program_argv() {
    require_root();
    let env = TestEnv::new("dropin-cstorage");
    let g = graph_root(&env);
    let stack = env.stack_paths(g.diffs.clone());
    let kview = {
        let k = stack.kernel();
        Snapshot::take(k.path())
    };
    assert!(kview.has("etc/added") && !kview.has("etc/gone") && !kview.has("usr/share/doc/a"));
    let abs_lowers = g
        .links
        .iter()
        .map(|p| p.to_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let (diff, work, merged) = (
        g.diff.to_str().unwrap().to_string(),
        g.work.to_str().unwrap().to_string(),
        g.merged.to_str().unwrap().to_string(),
    );
    let map = "0:1000:1:1:100000:65536";
    let cases: Vec<(&str, String, bool, Option<u32>)> = vec![
        (
            "current, root",
            format!("lowerdir={abs_lowers},upperdir={diff},workdir={work},fsync=0"),
            true,
            None,
        ),
        (
            "podman 4.3.1 `run --rm` (observed argv: empty item, volatile)",
            format!("lowerdir={abs_lowers},upperdir={diff},workdir={work},,volatile"),
            true,
            None,
        ),
        (
            "podman 4.3.1 `run` (observed argv: trailing comma)",
            format!("lowerdir={abs_lowers},upperdir={diff},workdir={work},"),
            true,
            None,
        ),
        (
            "older, relative lowers, mountopt first",
            format!("fsync=0,lowerdir=l/BBBBSHORT:l/AAAASHORT,upperdir={diff},workdir={work}"),
            true,
            None,
        ),
        (
            "read-only image",
            format!("lowerdir={}:{abs_lowers}", g.diff.display()),
            false,
            None,
        ),
        (
            "rootless, uidmapping",
            format!(
                "lowerdir={abs_lowers},upperdir={diff},workdir={work},volatile,uidmapping={map},gidmapping={map}"
            ),
            true,
            Some(1000),
        ),
        (
            "rootless, current uidmapping with leading ':'",
            format!(
                "lowerdir={abs_lowers},upperdir={diff},workdir={work},uidmapping=:{map},gidmapping=:{map}"
            ),
            true,
            Some(1000),
        ),
        (
            "rootless, single id",
            format!(
                "lowerdir={abs_lowers},upperdir={diff},workdir={work},squash_to_uid=1000,squash_to_gid=1000"
            ),
            true,
            Some(1000),
        ),
    ];
    let mut problems = Vec::new();
    for (i, (name, data, writable, shown_root)) in cases.iter().enumerate() {
        // A fresh container layer each time (the driver's Put renames merged.1 over merged).
        for d in [&g.diff, &g.work] {
            let _ = fs::remove_dir_all(d);
            fs::create_dir_all(d).unwrap();
        }
        let mut cmd = dropin_cmd();
        cmd.arg("-o").arg(data).arg(&merged).current_dir(&g.home);
        let m = match DropinMount::background(&mut cmd, &g.merged, &g.merged) {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("[{name}] {e}"));
                continue;
            }
        };
        let view = Snapshot::take(m.path());
        match shown_root {
            None => problems.extend(
                view_diff(&kview, &view)
                    .into_iter()
                    .map(|d| format!("[{name}] {d}")),
            ),
            Some(id) => {
                let root_uid = view.entry("etc/os-release").uid;
                if root_uid != *id {
                    problems.push(format!(
                        "[{name}] a root-owned image file shows uid {root_uid}, expected {id}"
                    ));
                }
                let paths: Vec<&Vec<u8>> = view.entries.keys().collect();
                let kpaths: Vec<&Vec<u8>> = kview.entries.keys().collect();
                if paths != kpaths {
                    problems.push(format!("[{name}] the tree differs from the kernel's"));
                }
            }
        }
        if *writable {
            // The container's root writes: uid 0, or the host id it maps to.
            let id = shown_root.unwrap_or(0);
            let out = sh_as(
                id,
                &format!(
                    "echo {i} > '{}' && rm '{}'",
                    m.join("etc/written").display(),
                    m.join("etc/os-release").display()
                ),
            );
            if !out.success() {
                problems.push(format!(
                    "[{name}] writes as uid {id} failed: {}",
                    out.describe()
                ));
            }
        } else if errno_of(fs::write(m.join("etc/written"), "x")) != Err("EROFS".into()) {
            problems.push(format!(
                "[{name}] a write to a read-only image mount did not fail with EROFS"
            ));
        }
        let pids = m.pids().to_vec();
        let um = run_timeout(
            Command::new("fusermount3").arg("-u").arg(&g.merged),
            Duration::from_secs(30),
        );
        if !um.success() || is_mounted(&g.merged) {
            problems.push(format!("[{name}] fusermount3 -u: {}", um.describe()));
        }
        if !wait_until(Duration::from_secs(10), || {
            pids.iter().all(|p| !process_alive(*p))
        }) {
            problems.push(format!("[{name}] daemon alive 10 s after fusermount3 -u"));
        }
        problems.extend(m.finish().into_iter().map(|p| format!("[{name}] {p}")));
        if *writable {
            if fs::read_to_string(g.diff.join("etc/written")).ok() != Some(format!("{i}\n")) {
                problems.push(format!("[{name}] etc/written did not land in the diff dir"));
            }
            let d = g.diff.join("etc/os-release");
            let oci = g.diff.join("etc/.wh.os-release");
            if !is_whiteout(&d) && !oci.exists() {
                problems.push(format!(
                    "[{name}] no whiteout for etc/os-release in the diff dir"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("containers/storage mount_program argv", &problems)
    );
}

/// mount(8) with `/sbin/mount.fuse.stratafs` (a symlink to the binary, for the test only):
/// `mount -t fuse.stratafs overlay MNT -o lowerdir=...,upperdir=...,workdir=...` mounts and
/// serves, writes land in upper, `umount MNT` unmounts and the daemon exits; `-o ro,...` is
/// read-only; `mount -f` (fake) mounts nothing and leaves no daemon; a bad option fails with
/// nothing mounted.
#[test]
fn mount_helper_mount_and_umount() {
    require_root();
    let env = TestEnv::new("dropin-helper");
    let (top, mid, base) = three_layers(&env);
    let stack = env.stack(&[&top, &mid, &base]);
    let kview = {
        let k = stack.kernel();
        Snapshot::take(k.path())
    };
    let _link = HelperLink::install("mount.fuse.stratafs", &stratafs_bin());
    let mut problems = Vec::new();
    let mount_cmd = |extra: &[&str], opts: &str, mnt: &Path| {
        let mut c = Command::new("mount");
        c.args(extra)
            .args(["-t", "fuse.stratafs", "overlay"])
            .arg(mnt)
            .arg("-o")
            .arg(opts);
        c
    };
    {
        let (mnt, u, w) = fresh_rw(&env, "h");
        let m = DropinMount::background(
            &mut mount_cmd(&[], &rw_opts(&stack.lowers, &u, &w), &mnt),
            &mnt,
            &mnt,
        )
        .unwrap_or_else(|e| panic!("mount -t fuse.stratafs: {e}"));
        let view = Snapshot::take(m.path());
        problems.extend(view_diff(&kview, &view));
        do_writes(m.path());
        problems.extend(check_writes_landed(m.path(), &u));
        let pids = m.pids().to_vec();
        if pids.is_empty() {
            problems.push("no daemon found for the helper mount".into());
        }
        let um = run_timeout(Command::new("umount").arg(&mnt), Duration::from_secs(30));
        if !um.success() || is_mounted(&mnt) {
            problems.push(format!("umount MNT: {}", um.describe()));
        }
        if !wait_until(Duration::from_secs(10), || {
            pids.iter().all(|p| !process_alive(*p))
        }) {
            problems.push("daemon alive 10 s after umount".into());
        }
        problems.extend(m.finish());
    }
    {
        let (mnt, u, w) = fresh_rw(&env, "hro");
        let m = DropinMount::background(
            &mut mount_cmd(&[], &format!("ro,{}", rw_opts(&stack.lowers, &u, &w)), &mnt),
            &mnt,
            &mnt,
        )
        .unwrap_or_else(|e| panic!("mount -t fuse.stratafs -o ro: {e}"));
        if errno_of(fs::write(m.join("x"), "x")) != Err("EROFS".into()) {
            problems.push("mount -o ro,...: a write did not fail with EROFS".into());
        }
        problems.extend(m.finish());
    }
    {
        let (mnt, u, w) = fresh_rw(&env, "hfake");
        let out = run_timeout(
            &mut mount_cmd(&["-f"], &rw_opts(&stack.lowers, &u, &w), &mnt),
            Duration::from_secs(30),
        );
        std::thread::sleep(Duration::from_millis(200));
        let pids = pids_with_arg(&mnt);
        if !out.success() || is_mounted(&mnt) || !pids.is_empty() {
            problems.push(format!(
                "mount -f: {}, mounted={}, daemons {pids:?}",
                out.describe(),
                is_mounted(&mnt)
            ));
        }
        for pid in pids {
            // SAFETY: kill(2) of a daemon this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if is_mounted(&mnt) {
            let _ = run_timeout(
                Command::new("umount").arg("-l").arg(&mnt),
                Duration::from_secs(10),
            );
        }
    }
    {
        let (mnt, u, w) = fresh_rw(&env, "hbad");
        let out = run_timeout(
            &mut mount_cmd(
                &[],
                &format!("{},frobnicate", rw_opts(&stack.lowers, &u, &w)),
                &mnt,
            ),
            Duration::from_secs(30),
        );
        if out.success() || is_mounted(&mnt) {
            problems.push(format!("mount with a bad option: {}", out.describe()));
        }
        if is_mounted(&mnt) {
            let _ = run_timeout(
                Command::new("umount").arg("-l").arg(&mnt),
                Duration::from_secs(10),
            );
        }
    }
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("mount(8) helper", &problems)
    );
}

/// A mount made by `mount -t fuse.stratafs` shows as type fuse.stratafs (as mount.fuse3 and
/// fuse-overlayfs' helper mounts show fuse.<subtype>), so `findmnt -t fuse.stratafs` and
/// `umount -a -t fuse.stratafs` find it.
#[test]
fn mount_helper_fstype_is_fuse_stratafs() {
    require_root();
    let env = TestEnv::new("dropin-helper-type");
    let (top, mid, base) = three_layers(&env);
    let stack = env.stack(&[&top, &mid, &base]);
    let _link = HelperLink::install("mount.fuse.stratafs", &stratafs_bin());
    let (mnt, u, w) = fresh_rw(&env, "ht");
    let m = DropinMount::background(
        Command::new("mount")
            .args(["-t", "fuse.stratafs", "overlay"])
            .arg(&mnt)
            .arg("-o")
            .arg(rw_opts(&stack.lowers, &u, &w)),
        &mnt,
        &mnt,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mi = mounts_at(&mnt);
    let found = run_timeout(
        Command::new("findmnt")
            .args(["-n", "-t", "fuse.stratafs"])
            .arg(&mnt),
        Duration::from_secs(10),
    );
    m.unmount();
    assert!(
        mi.len() == 1 && mi[0].fstype == "fuse.stratafs" && found.success(),
        "expected type fuse.stratafs; mountinfo {mi:?}; findmnt -t fuse.stratafs: {}",
        found.describe()
    );
}

/// An fstab line used with `mount --fstab FILE MNT` (util-linux): the helper gets the options
/// minus the fstab-only ones (noauto, nofail, x-*, _netdev), nodev reaches the kernel, and
/// `umount MNT` unmounts. A line without noauto works with `mount --fstab FILE -a`, twice
/// (the second run sees it mounted and mounts nothing more).
#[test]
fn fstab_line_with_mount_fstab() {
    require_root();
    let env = TestEnv::new("dropin-fstab");
    let (top, mid, base) = three_layers(&env);
    // fstab has no escape for ':' in lowerdir paths beyond the option's own: use plain names.
    let plain_top = env.path("plain-top");
    let plain_mid = env.path("plain-mid");
    std::os::unix::fs::symlink(&top.root, &plain_top).unwrap();
    std::os::unix::fs::symlink(&mid.root, &plain_mid).unwrap();
    let _stack = env.stack(&[&top, &mid, &base]);
    let lowers = vec![plain_top, plain_mid, base.root.clone()];
    let _link = HelperLink::install("mount.fuse.stratafs", &stratafs_bin());
    let mut problems = Vec::new();
    {
        let (mnt, u, w) = fresh_rw(&env, "fs");
        let fstab = env.path("fstab");
        fs::write(
            &fstab,
            format!(
                "# test fstab\noverlay {} fuse.stratafs {},nodev,noauto,nofail,_netdev,x-test.opt=1 0 0\n",
                mnt.display(),
                rw_opts(&lowers, &u, &w)
            ),
        )
        .unwrap();
        match DropinMount::background(
            Command::new("mount").arg("--fstab").arg(&fstab).arg(&mnt),
            &mnt,
            &mnt,
        ) {
            Ok(m) => {
                let mi = mounts_at(&mnt);
                if !mi
                    .iter()
                    .any(|x| x.options.split(',').any(|o| o == "nodev"))
                {
                    problems.push(format!("nodev from fstab not in mountinfo: {mi:?}"));
                }
                do_writes(m.path());
                problems.extend(check_writes_landed(m.path(), &u));
                let um = run_timeout(Command::new("umount").arg(&mnt), Duration::from_secs(30));
                if !um.success() || is_mounted(&mnt) {
                    problems.push(format!("umount: {}", um.describe()));
                }
                problems.extend(m.finish());
            }
            Err(e) => problems.push(format!("mount --fstab FILE MNT: {e}")),
        }
    }
    {
        let (mnt, u, w) = fresh_rw(&env, "fsa");
        let fstab = env.path("fstab-a");
        fs::write(
            &fstab,
            format!(
                "overlay {} fuse.stratafs {} 0 0\n",
                mnt.display(),
                rw_opts(&lowers, &u, &w)
            ),
        )
        .unwrap();
        let mut cmd = Command::new("mount");
        cmd.arg("--fstab").arg(&fstab).arg("-a");
        match DropinMount::background(&mut cmd, &mnt, &mnt) {
            Ok(m) => {
                let again = run_timeout(&mut cmd, Duration::from_secs(30));
                if !again.success() || mounts_at(&mnt).len() != 1 {
                    problems.push(format!(
                        "second mount -a: {}, {} mount(s)",
                        again.describe(),
                        mounts_at(&mnt).len()
                    ));
                }
                problems.extend(m.finish());
            }
            Err(e) => problems.push(format!("mount --fstab FILE -a: {e}")),
        }
    }
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("fstab", &problems)
    );
}

/// The route through libfuse's mount.fuse3 (what `mount -t fuse.stratafs` uses when no
/// mount.fuse.stratafs exists): it runs `stratafs SOURCE MNT -o OPTS,dev,suid` from $PATH.
/// That command line must mount; `dev,suid` are honoured.
#[test]
fn mount_fuse3_route() {
    require_root();
    let env = TestEnv::new("dropin-mount-fuse3");
    let (top, mid, base) = three_layers(&env);
    let stack = env.stack(&[&top, &mid, &base]);
    let Some(helper) = ["/sbin/mount.fuse3", "/usr/sbin/mount.fuse3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        panic!("mount.fuse3 not found (package fuse3)");
    };
    let bindir = env.fresh_dir("bin");
    std::os::unix::fs::symlink(stratafs_bin(), bindir.join("stratafs")).unwrap();
    let path = format!(
        "{}:{}",
        bindir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (mnt, u, w) = fresh_rw(&env, "mf");
    let m = DropinMount::background(
        Command::new(&helper)
            .arg("overlay")
            .arg(&mnt)
            .arg("-o")
            .arg(rw_opts(&stack.lowers, &u, &w))
            .args(["-t", "fuse.stratafs"])
            .env("PATH", path),
        &mnt,
        &mnt,
    )
    .unwrap_or_else(|e| panic!("mount.fuse3 -t fuse.stratafs: {e}"));
    let mi = mounts_at(&mnt);
    let ok = fs::read(m.join("hello")).ok();
    m.unmount();
    assert_eq!(ok.as_deref(), Some(&b"hello from base\n"[..]));
    assert!(
        mi.iter()
            .all(|x| !x.options.split(',').any(|o| o == "nodev" || o == "nosuid")),
        "mount.fuse3 passed dev,suid but mountinfo says {mi:?}"
    );
}
