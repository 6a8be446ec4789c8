//! `stratafs run` (issue 7) through the real binary:
//!
//! - the command's exit status is stratafs' (0, 3, 255; 128+n when a signal kills it), and
//!   stratafs adds nothing on stderr;
//! - the command runs with its working directory at the root of the merged view (a
//!   `fuse.stratafs` mount point under `$TMPDIR`, or `--at DIR`), which shows what kernel
//!   overlayfs shows for the same layers (the command is this test binary re-executed on the
//!   ignored helper `run_probe_child`, which snapshots its working directory);
//! - changes are discarded: the lower layers are bit-identical and a second run sees the
//!   pristine view; nothing is left in the private `$TMPDIR` given to stratafs, no mount,
//!   no record in the mount registry;
//! - `--keep-upper DIR` keeps them in the overlay format (char 0/0 whiteouts, an opaque
//!   directory, a redirect, a metadata-only copy-up), read back identically by the kernel
//!   (the kept upper as the top lower layer), by `stratafs diff`, and by a second run; its
//!   sibling work directory is removed;
//! - `--at DIR`: the view is mounted there and DIR is left as it was; a missing DIR or a file
//!   is refused (125, one `stratafs:` line, nothing left); a non-empty DIR too (the documented
//!   "an existing empty directory");
//! - SIGTERM, SIGINT and SIGHUP sent to stratafs reach the command (which traps them and
//!   chooses its status, or dies of them: 128+n), and the cleanup is still done;
//! - a command that does not exist (or cannot be executed) → 125, one line, no mount left;
//! - `run IMAGE` over a stored image (a per-test store: `layer import` + `image create`),
//!   with `--verify full`, with a `--lower` above it; an unknown image → 125;
//! - a process the command leaves behind in the view: the run still cleans up;
//! - the unprivileged `stratafs-test` account runs it too (through fusermount3) on a fixture
//!   it may only read, ephemeral and with `--keep-upper`. Its mount registry is
//!   `$TMPDIR/stratafs-<uid>/mounts` (no `$XDG_RUNTIME_DIR` here): that directory, empty,
//!   is the only thing allowed to stay in its `$TMPDIR`.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::oci::{StoreDir, zero_dir_sizes};
use common::*;

const T: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Fixture, probe, leftovers
// ---------------------------------------------------------------------------------------------

/// Two layers (bottom `l1`, top `l2`), readable by everyone, markers any user can read
/// (char 0/0 whiteout, `.wh..wh..opq`), fixed old timestamps: [`two_layer_fixture`] plus an
/// xattr, an executable and an `opq/` entry the top's opaque directory hides.
fn fixture(env: &TestEnv) -> (Layer, Layer) {
    two_layer_fixture(env, |l1| {
        l1.file("x.txt", "x\n").xattr("user.note", b"lower");
        l1.file("opq/old", "old\n");
        l1.file("exec.sh", "#!/bin/sh\n").mode(0o755);
    })
}

/// `stratafs run` with a private `$TMPDIR` and the given arguments before `--`.
fn run_cmd(tmp: &Path, args: &[&OsStr]) -> Command {
    let mut c = Command::new(stratafs_bin());
    c.arg("run").args(args).env("TMPDIR", tmp);
    c
}

fn lower_args<'s>(stack: &'s Stack<'_>) -> Vec<&'s OsStr> {
    let mut v = Vec::new();
    for l in &stack.lowers {
        v.push(OsStr::new("--lower"));
        v.push(l.as_os_str());
    }
    v
}

/// The probe command: this binary on `run_probe_child`, writing into `out`.
fn probe_argv() -> Vec<std::ffi::OsString> {
    vec![
        std::env::current_exe().unwrap().into_os_string(),
        "--exact".into(),
        "run_probe_child".into(),
        "--ignored".into(),
        "--nocapture".into(),
    ]
}

/// `stratafs run ARGS -- PROBE` (see [`run_cmd`]), the probe writing into `out`.
fn probe_cmd(tmp: &Path, args: &[&OsStr], out: &Path) -> Command {
    let mut c = run_cmd(tmp, args);
    c.arg("--")
        .args(probe_argv())
        .env("STRATAFS_RUNPROBE_OUT", out);
    c
}

/// What the probe saw from inside the view.
#[derive(Debug)]
struct Probe {
    cwd: PathBuf,
    fstype: String,
    super_options: String,
    uid: u32,
    snapshot: Snapshot,
    after: Option<Snapshot>,
    mutate_errors: String,
    /// `SigBlk:` of the command's /proc/self/status (hex).
    sigblk: String,
}

fn read_probe(out: &Path, what: &str) -> Probe {
    let read = |n: &str| {
        fs::read(out.join(n)).unwrap_or_else(|e| panic!("{what}: the probe wrote no {n}: {e}"))
    };
    let mount = String::from_utf8(read("mount")).unwrap();
    let mut lines = mount.lines();
    let after = fs::read_to_string(out.join("snapshot-after"))
        .ok()
        .map(|t| snapshot_from_text(&t));
    Probe {
        cwd: PathBuf::from(OsStr::from_bytes(&read("cwd"))),
        fstype: lines.next().unwrap_or("").to_string(),
        super_options: lines.next().unwrap_or("").to_string(),
        uid: String::from_utf8(read("uid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap(),
        snapshot: snapshot_from_text(&String::from_utf8(read("snapshot")).unwrap()),
        after,
        mutate_errors: fs::read_to_string(out.join("mutate-errors")).unwrap_or_default(),
        sigblk: String::from_utf8(read("sigblk")).unwrap(),
    }
}

/// The changes the probe makes as root (`STRATAFS_RUNPROBE_MUTATE=full`).
fn mutate_full(root: &Path) -> Vec<String> {
    let mut errs = Vec::new();
    let mut chk = |what: &str, r: std::io::Result<()>| {
        if let Err(e) = r {
            errs.push(format!("{what}: {e}"));
        }
    };
    chk("write new.txt", fs::write(root.join("new.txt"), "new\n"));
    chk("append mod.txt", {
        use std::io::Write;
        fs::OpenOptions::new()
            .append(true)
            .open(root.join("mod.txt"))
            .and_then(|mut f| f.write_all(b"more\n"))
    });
    chk("rm del.txt", fs::remove_file(root.join("del.txt")));
    chk("rm -r dir", fs::remove_dir_all(root.join("dir")));
    chk(
        "mv movedir moved",
        fs::rename(root.join("movedir"), root.join("moved")),
    );
    chk("chmod 600 keep.txt", {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root.join("keep.txt"), fs::Permissions::from_mode(0o600))
    });
    chk("rm -r opq", fs::remove_dir_all(root.join("opq")));
    chk("mkdir opq", fs::create_dir(root.join("opq")));
    chk(
        "write opq/fresh",
        fs::write(root.join("opq/fresh"), "fresh\n"),
    );
    chk(
        "setxattr x.txt",
        lsetxattr(&root.join("x.txt"), b"user.note", b"upper"),
    );
    errs
}

/// The changes the probe makes as the unprivileged user (`STRATAFS_RUNPROBE_MUTATE=user`):
/// only in the view's root, which is the user's own upper directory.
fn mutate_user(root: &Path) -> Vec<String> {
    let mut errs = Vec::new();
    for (what, r) in [
        ("write new.txt", fs::write(root.join("new.txt"), "new\n")),
        ("rm del.txt", fs::remove_file(root.join("del.txt"))),
        ("mkdir newdir", fs::create_dir(root.join("newdir"))),
    ] {
        if let Err(e) = r {
            errs.push(format!("{what}: {e}"));
        }
    }
    errs
}

/// The command of the runs below (re-executed by `stratafs run`): records its working
/// directory, the mount there, its uid and a snapshot of the view into
/// `$STRATAFS_RUNPROBE_OUT`, makes the changes `$STRATAFS_RUNPROBE_MUTATE` names (then a
/// second snapshot), and exits with `$STRATAFS_RUNPROBE_EXIT` (default 0).
#[test]
#[ignore = "helper: the command `stratafs run` runs in the run_cmd tests"]
fn run_probe_child() {
    let Ok(out) = std::env::var("STRATAFS_RUNPROBE_OUT") else {
        return;
    };
    let out = PathBuf::from(out);
    let cwd = std::env::current_dir().unwrap();
    fs::write(out.join("cwd"), cwd.as_os_str().as_bytes()).unwrap();
    let m = mounts_at(&cwd);
    let (fstype, sopts) = m
        .last()
        .map(|m| (m.fstype.clone(), m.super_options.clone()))
        .unwrap_or_default();
    fs::write(out.join("mount"), format!("{fstype}\n{sopts}\n")).unwrap();
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    fs::write(out.join("uid"), uid.to_string()).unwrap();
    // This thread's mask, inherited from the one the command started with. Not
    // /proc/self (the main thread's), which reads "everything blocked" while the
    // test harness's main thread is inside pthread_create.
    let status = fs::read_to_string("/proc/thread-self/status").unwrap();
    let sigblk = status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    fs::write(out.join("sigblk"), sigblk).unwrap();
    fs::write(
        out.join("snapshot"),
        snapshot_to_text(&Snapshot::take(&cwd)),
    )
    .unwrap();
    let mutate = std::env::var("STRATAFS_RUNPROBE_MUTATE").unwrap_or_default();
    if !mutate.is_empty() {
        // Relative to the working directory, as a command would.
        let errs = match mutate.as_str() {
            "full" => mutate_full(Path::new(".")),
            "user" => mutate_user(Path::new(".")),
            other => vec![format!("unknown mutation set {other}")],
        };
        fs::write(out.join("mutate-errors"), errs.join("\n")).unwrap();
        fs::write(
            out.join("snapshot-after"),
            snapshot_to_text(&Snapshot::take(&cwd)),
        )
        .unwrap();
    }
    if std::env::var_os("STRATAFS_RUNPROBE_WAIT").is_some() {
        // Ready; then wait to be killed by a signal (exit 0 after 120 s: not killed).
        fs::write(
            out.join("ready.tmp"),
            format!("{}\n{}", std::process::id(), cwd.display()),
        )
        .unwrap();
        fs::rename(out.join("ready.tmp"), out.join("ready")).unwrap();
        std::thread::sleep(Duration::from_secs(120));
        std::process::exit(0);
    }
    let code: i32 = std::env::var("STRATAFS_RUNPROBE_EXIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    std::process::exit(code);
}

/// Records of the mount registry whose mount point is below `prefix`.
fn registry_records_under(dir: &Path, prefix: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(bytes) = fs::read(e.path()) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        if let Some(mp) = v["mountpoint"].as_str()
            && Path::new(mp).starts_with(prefix)
        {
            out.push(format!(
                "registry record {} for {mp} left behind",
                e.path().display()
            ));
        }
    }
    out
}

/// What a run by root left behind: anything in its private `$TMPDIR`, mounts below it,
/// registry records of mount points below it.
fn leftovers(tmp: &Path) -> Vec<String> {
    let mut out = tmp_leftovers(tmp);
    out.extend(registry_records_under(Path::new(MOUNT_REGISTRY), tmp));
    out
}

/// What a run by `uid` left behind in its private `$TMPDIR`: anything but its empty
/// registry directory `stratafs-<uid>/mounts`, and mounts below it.
fn user_leftovers(tmp: &Path, uid: u32) -> Vec<String> {
    let reg = format!("stratafs-{uid}");
    let mut out = Vec::new();
    for n in names_in(tmp) {
        if n != reg {
            out.push(format!("left in $TMPDIR: {n}"));
        }
    }
    let regdir = tmp.join(&reg);
    if regdir.exists() {
        for n in names_in(&regdir) {
            if n != "mounts" {
                out.push(format!("left in $TMPDIR/{reg}: {n}"));
            }
        }
        if regdir.join("mounts").exists() {
            for n in names_in(&regdir.join("mounts")) {
                out.push(format!("registry record left: {reg}/mounts/{n}"));
            }
        }
    }
    out.extend(
        mounts_under(tmp)
            .iter()
            .map(|m| format!("still mounted: {}", m.mount_point.display())),
    );
    out
}

fn assert_no_leftovers(tmp: &Path, what: &str) {
    let l = leftovers(tmp);
    assert!(l.is_empty(), "{what}: {l:#?}");
}

fn code(out: &CmdOutput) -> Option<i32> {
    out.status.and_then(|s| s.code())
}

/// The one `stratafs:` line of a run that failed itself: status 125.
fn refused_125(out: &CmdOutput, what: &str) -> String {
    assert_eq!(code(out), Some(125), "{what}: {}", out.describe());
    let err = out.stderr_str();
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("stratafs: "),
        "{what}: expected one `stratafs: ` line on stderr, got {err:?}"
    );
    lines[0].to_string()
}

/// The kernel's view of the stack vs a view a run saw. The root directory of a writable view
/// is its upper directory (as on the kernel), so its mtime, owner and size are not the top
/// layer's: left out here, checked where it matters.
fn view_problems(kernel: &Snapshot, view: &Snapshot) -> Vec<String> {
    let (mut k, mut v) = (kernel.clone(), view.clone());
    for s in [&mut k, &mut v] {
        zero_dir_sizes(s);
        if let Some(r) = s.entries.get_mut(&Vec::new()) {
            r.mtime = (0, 0);
            r.uid = 0;
            r.gid = 0;
        }
    }
    snapshot_diff(&k, &v, Mode::Merged, "kernel", "run view")
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn exit_status_is_the_commands() {
    require_root();
    let env = TestEnv::new("run-exit");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let cases: &[(&str, i32)] = &[
        ("true", 0),
        ("exit 3", 3),
        ("exit 255", 255),
        ("kill -KILL $$", 128 + libc::SIGKILL),
        ("kill -USR1 $$", 128 + libc::SIGUSR1),
        ("echo hi > written-in-the-view; exit 4", 4),
    ];
    for (script, want) in cases {
        let tmp = env.fresh_dir("tmp");
        let out = run_timeout(
            run_cmd(&tmp, &lower_args(&stack))
                .args(["--", "sh", "-c"])
                .arg(script),
            T,
        );
        assert_eq!(
            code(&out),
            Some(*want),
            "run -- sh -c {script:?}: {}",
            out.describe()
        );
        assert!(
            out.stderr.is_empty(),
            "run -- sh -c {script:?}: stratafs wrote on stderr: {}",
            out.describe()
        );
        assert_no_leftovers(&tmp, &format!("after run -- sh -c {script:?}"));
    }
    stack.assert_layers_unchanged();
}

#[test]
fn cwd_is_the_merged_view_and_changes_are_discarded() {
    require_root();
    let env = TestEnv::new("run-view");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let kview = stack.kernel_view();

    let tmp = env.fresh_dir("tmp");
    let out_dir = env.fresh_dir("probe");
    let out = run_timeout(
        probe_cmd(&tmp, &lower_args(&stack), &out_dir)
            .env("STRATAFS_RUNPROBE_MUTATE", "full")
            .env("STRATAFS_RUNPROBE_EXIT", "0"),
        T,
    );
    assert_eq!(code(&out), Some(0), "probe run: {}", out.describe());
    let p = read_probe(&out_dir, "first run");
    assert!(
        p.cwd.starts_with(&tmp)
            && p.cwd
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("stratafs-")),
        "the command's cwd {} is not a stratafs-* directory of $TMPDIR {}",
        p.cwd.display(),
        tmp.display()
    );
    assert_eq!(
        p.fstype,
        "fuse.stratafs",
        "the command's cwd {} is not the root of a stratafs mount",
        p.cwd.display()
    );
    let d = view_problems(&kview, &p.snapshot);
    assert!(
        d.is_empty(),
        "{}",
        format_problems("the view the command saw vs kernel overlayfs", &d)
    );
    let root = p.snapshot.entry(b"");
    assert_eq!(root.mode & 0o7777, 0o755, "mode of the view's root");
    assert_eq!(p.mutate_errors, "", "changes made by the command failed");
    let after = p.after.as_ref().unwrap();
    after.assert_content("new.txt", "new\n");
    after.assert_content("mod.txt", "mod\nmore\n");
    after.assert_absent("del.txt");
    after.assert_absent("dir");
    after.assert_absent("movedir");
    after.assert_children("moved", &["f"]);
    after.assert_children("opq", &["fresh"]);
    assert_eq!(after.entry("keep.txt").mode & 0o7777, 0o600);
    assert_eq!(
        after
            .entry("x.txt")
            .xattrs
            .get(&b"user.note"[..])
            .map(|v| v.as_slice()),
        Some(&b"upper"[..])
    );
    assert_no_leftovers(&tmp, "after the run");
    stack.assert_layers_unchanged();

    // A second run sees the pristine view again.
    let tmp2 = env.fresh_dir("tmp");
    let out_dir2 = env.fresh_dir("probe");
    let out = run_timeout(&mut probe_cmd(&tmp2, &lower_args(&stack), &out_dir2), T);
    assert_eq!(code(&out), Some(0), "second run: {}", out.describe());
    let p2 = read_probe(&out_dir2, "second run");
    let d = view_problems(&kview, &p2.snapshot);
    assert!(
        d.is_empty(),
        "{}",
        format_problems(
            "second run: the changes of the first one were not discarded",
            &d
        )
    );
    assert_no_leftovers(&tmp2, "after the second run");
}

/// The upper a `--keep-upper` run left, for the changes of [`mutate_full`].
fn kept_upper_problems(kept: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |ok: bool, msg: String| {
        if !ok {
            out.push(msg);
        }
    };
    let get = |p: &str| kept.get(p);
    let whiteout = |p: &str| get(p).is_some_and(|e| e.kind == Kind::CharDev && e.rdev == 0);
    for p in ["del.txt", "dir", "movedir"] {
        check(
            whiteout(p),
            format!("{p}: expected a char 0/0 whiteout, got {:?}", get(p)),
        );
    }
    let file = |p: &str, c: &str| {
        get(p).is_some_and(|e| {
            e.kind == Kind::File && e.sha256.as_deref() == Some(&sha256_hex(c.as_bytes()))
        })
    };
    check(
        file("new.txt", "new\n"),
        format!("new.txt: {:?}", get("new.txt")),
    );
    check(
        file("mod.txt", "mod\nmore\n"),
        format!("mod.txt: {:?}", get("mod.txt")),
    );
    check(
        file("opq/fresh", "fresh\n"),
        format!("opq/fresh: {:?}", get("opq/fresh")),
    );
    check(
        get("opq").is_some_and(|e| {
            e.kind == Kind::Dir
                && e.xattrs
                    .get(&b"trusted.overlay.opaque"[..])
                    .map(|v| v.as_slice())
                    == Some(b"y")
        }),
        format!("opq: expected an opaque directory, got {:?}", get("opq")),
    );
    check(
        get("moved").is_some_and(|e| {
            e.kind == Kind::Dir
                && e.xattrs
                    .get(&b"trusted.overlay.redirect"[..])
                    .is_some_and(|v| v.ends_with(b"movedir"))
        }),
        format!(
            "moved: expected a redirect to movedir, got {:?}",
            get("moved")
        ),
    );
    check(
        !kept.has("moved/f"),
        "moved/f: copied into the upper, a redirect alone should do".into(),
    );
    check(
        get("keep.txt").is_some_and(|e| {
            e.kind == Kind::File
                && e.mode & 0o7777 == 0o600
                && e.xattrs.contains_key(&b"trusted.overlay.metacopy"[..])
        }),
        format!(
            "keep.txt: expected a metadata-only copy (mode 600, trusted.overlay.metacopy), got {:?}",
            get("keep.txt")
        ),
    );
    check(
        get("x.txt").is_some_and(|e| {
            e.xattrs.get(&b"user.note"[..]).map(|v| v.as_slice()) == Some(b"upper")
        }),
        format!("x.txt: {:?}", get("x.txt")),
    );
    for p in [
        "top.txt",
        "hl1",
        "hl2",
        "link",
        "fifo",
        "exec.sh",
        "hidden.txt",
    ] {
        check(!kept.has(p), format!("{p}: untouched, yet in the upper"));
    }
    out
}

#[test]
fn keep_upper_keeps_the_changes_in_overlay_format() {
    require_root();
    let env = TestEnv::new("run-keep");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let kview = stack.kernel_view();
    let parent = env.fresh_dir("keep");
    let kept = parent.join("upper");

    let tmp = env.fresh_dir("tmp");
    let out_dir = env.fresh_dir("probe");
    let mut args = lower_args(&stack);
    args.extend([OsStr::new("--keep-upper"), kept.as_os_str()]);
    let out = run_timeout(
        probe_cmd(&tmp, &args, &out_dir)
            .env("STRATAFS_RUNPROBE_MUTATE", "full")
            .env("STRATAFS_RUNPROBE_EXIT", "5"),
        T,
    );
    assert_eq!(code(&out), Some(5), "keep-upper run: {}", out.describe());
    let p = read_probe(&out_dir, "keep-upper run");
    assert_eq!(p.mutate_errors, "");
    let d = view_problems(&kview, &p.snapshot);
    assert!(
        d.is_empty(),
        "{}",
        format_problems("view before the changes", &d)
    );
    assert_no_leftovers(&tmp, "after the keep-upper run");
    assert_eq!(
        names_in(&parent),
        vec!["upper".to_string()],
        "beside the kept upper (its work directory must be gone)"
    );

    let ks = Snapshot::take(&kept);
    let mut problems = kept_upper_problems(&ks);
    problems.extend(upper_format_problems(&ks, UpperDialect::Overlay, &kview));
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("the kept upper", &problems)
    );

    // The kernel reads the kept upper as the top layer: the view the command left.
    let mut klowers = vec![kept.clone()];
    klowers.extend(stack.kernel_lowers());
    let kmnt = env.fresh_dir("mnt/kk");
    let after = p.after.as_ref().unwrap();
    {
        let k = KernelOverlay::lower_only(&klowers, &kmnt).unwrap();
        let kk = Snapshot::take(k.path());
        let (mut a, mut b) = (kk, after.clone());
        zero_dir_sizes(&mut a);
        zero_dir_sizes(&mut b);
        let d = snapshot_diff(
            &a,
            &b,
            Mode::Merged,
            "kernel over the kept upper",
            "run view",
        );
        assert!(
            d.is_empty(),
            "{}",
            format_problems(
                "the kept upper read by the kernel vs the view the command left",
                &d
            )
        );
    }

    // stratafs diff of the kept upper.
    let mut dargs: Vec<&OsStr> = vec![OsStr::new("diff"), kept.as_os_str()];
    dargs.extend(lower_args(&stack));
    let dtmp = env.fresh_dir("tmp");
    let out = run_ok(
        Command::new(stratafs_bin())
            .args(&dargs)
            .env("TMPDIR", &dtmp),
        T,
    );
    let expected = "\
D /del.txt
D /dir
C /keep.txt
C /mod.txt
A /moved
A /moved/f
D /movedir
A /new.txt
C /opq
A /opq/fresh
D /opq/new
C /x.txt
";
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        expected,
        "diff of the kept upper"
    );
    assert_no_leftovers(&dtmp, "after the diff");

    // A second run over the kept upper continues from it.
    let tmp2 = env.fresh_dir("tmp");
    let out_dir2 = env.fresh_dir("probe");
    let out = run_timeout(&mut probe_cmd(&tmp2, &args, &out_dir2), T);
    assert_eq!(
        code(&out),
        Some(0),
        "second keep-upper run: {}",
        out.describe()
    );
    let p2 = read_probe(&out_dir2, "second keep-upper run");
    let (mut a, mut b) = (after.clone(), p2.snapshot.clone());
    zero_dir_sizes(&mut a);
    zero_dir_sizes(&mut b);
    let d = snapshot_diff(&a, &b, Mode::Merged, "end of run 1", "start of run 2");
    assert!(d.is_empty(), "{}", format_problems("the kept changes", &d));
    assert_no_leftovers(&tmp2, "after the second keep-upper run");
    assert_eq!(names_in(&parent), vec!["upper".to_string()]);
    stack.assert_layers_unchanged();
}

#[test]
fn at_mounts_the_view_on_the_given_directory() {
    require_root();
    let env = TestEnv::new("run-at");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let kview = stack.kernel_view();
    let at = env.fresh_dir("at");
    let at_before = Snapshot::take(&at);

    let tmp = env.fresh_dir("tmp");
    let out_dir = env.fresh_dir("probe");
    let mut args = lower_args(&stack);
    args.extend([OsStr::new("--at"), at.as_os_str()]);
    let out = run_timeout(
        probe_cmd(&tmp, &args, &out_dir).env("STRATAFS_RUNPROBE_MUTATE", "full"),
        T,
    );
    assert_eq!(code(&out), Some(0), "run --at: {}", out.describe());
    let p = read_probe(&out_dir, "run --at");
    assert_eq!(p.cwd, at, "the command's cwd with --at");
    assert_eq!(
        p.fstype,
        "fuse.stratafs",
        "--at {}: not a stratafs mount",
        at.display()
    );
    let d = view_problems(&kview, &p.snapshot);
    assert!(d.is_empty(), "{}", format_problems("run --at view", &d));
    assert!(
        !is_mounted(&at),
        "{} still mounted after the run",
        at.display()
    );
    assert_dir_unchanged(&at_before, &at, "the --at directory");
    assert_no_leftovers(&tmp, "after run --at");

    // A missing directory, a file: refused, nothing mounted or left.
    let file = env.path("a-file");
    fs::write(&file, "x").unwrap();
    let missing = env.path("missing-dir");
    for (dir, want) in [(&missing, "does not exist"), (&file, "not a directory")] {
        let tmp = env.fresh_dir("tmp");
        let mut args = lower_args(&stack);
        args.extend([OsStr::new("--at"), dir.as_os_str()]);
        let out = run_timeout(run_cmd(&tmp, &args).args(["--", "true"]), T);
        let line = refused_125(&out, &format!("run --at {}", dir.display()));
        assert!(line.contains(want), "run --at {}: {line}", dir.display());
        assert_no_leftovers(&tmp, &format!("after run --at {}", dir.display()));
        assert!(!missing.exists(), "run --at created {}", missing.display());
        assert_eq!(fs::read(&file).unwrap(), b"x");
    }
    stack.assert_layers_unchanged();
}

/// `--at DIR` takes "an existing empty directory" (`stratafs run --help`): a non-empty one is
/// refused rather than hidden under the view.
#[test]
fn at_refuses_a_non_empty_directory() {
    require_root();
    let env = TestEnv::new("run-at-nonempty");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let at = env.fresh_dir("at");
    fs::write(at.join("precious"), "mine\n").unwrap();
    let before = Snapshot::take(&at);
    let tmp = env.fresh_dir("tmp");
    let mut args = lower_args(&stack);
    args.extend([OsStr::new("--at"), at.as_os_str()]);
    let out = run_timeout(
        run_cmd(&tmp, &args).args(["--", "sh", "-c", "ls > /dev/null; exit 0"]),
        T,
    );
    assert!(!is_mounted(&at));
    assert_dir_unchanged(&before, &at, "the --at directory");
    assert_no_leftovers(&tmp, "after run --at on a non-empty directory");
    refused_125(&out, "run --at on a non-empty directory");
}

/// A `stratafs run` in progress; Drop kills it and its command if still alive (SIGKILL, by
/// pid: a command that ignored a forwarded signal must not outlive the test).
struct Running {
    child: Child,
    command_pid: Option<i32>,
    log: PathBuf,
}

impl Running {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(pid) = self.command_pid
            && process_alive(pid)
        {
            // SAFETY: plain kill(2) of the command of the run this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Starts `stratafs run` of `argv` (which writes `$OUT/ready`: its pid, a newline, its cwd,
/// once set up), sends `sig` to stratafs, and waits at most `limit` for it to exit.
/// Returns (exit status or None on a hang, what the command wrote to `$OUT/got`, its cwd, the
/// log); the leftovers are checked only when it exited.
fn signal_run(
    env: &TestEnv,
    stack: &Stack<'_>,
    argv: &[std::ffi::OsString],
    extra_env: &[(&str, &OsStr)],
    sig: i32,
    limit: Duration,
) -> (Option<ExitStatus>, String, PathBuf, String) {
    let tmp = env.fresh_dir("tmp");
    let out = env.fresh_dir("sigout");
    let log = env.root.join(format!(
        "{}.log",
        out.file_name().unwrap().to_string_lossy()
    ));
    let logf = fs::File::create(&log).unwrap();
    let mut cmd = run_cmd(&tmp, &lower_args(stack));
    cmd.arg("--")
        .args(argv)
        .env("OUT", &out)
        .env("STRATAFS_RUNPROBE_OUT", &out);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .unwrap();
    let mut run = Running {
        child,
        command_pid: None,
        log,
    };
    let ready = out.join("ready");
    assert!(
        wait_until(T, || ready.exists()),
        "the command never got ready; log: {}",
        run.log()
    );
    let text = fs::read_to_string(&ready).unwrap();
    let (pid, cwd) = text.split_once('\n').expect("ready: PID\\nCWD");
    run.command_pid = Some(pid.trim().parse().unwrap());
    let cwd = PathBuf::from(cwd.trim_end());
    // SAFETY: plain kill(2) of the stratafs process this test started.
    unsafe { libc::kill(run.child.id() as i32, sig) };
    let start = Instant::now();
    let st = loop {
        if let Some(st) = run.child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > limit {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let got = fs::read_to_string(out.join("got")).unwrap_or_default();
    let log = run.log();
    if let Some(st) = st {
        let l = leftovers(&tmp);
        assert!(
            l.is_empty(),
            "after signal {sig} (status {st}): {l:#?}; log: {log}"
        );
    }
    (st, got, cwd, log)
}

fn sh(script: &str) -> Vec<std::ffi::OsString> {
    vec!["sh".into(), "-c".into(), script.into()]
}

const READY: &str =
    r#"printf '%s\n%s' $$ "$PWD" > "$OUT/ready.tmp" && mv "$OUT/ready.tmp" "$OUT/ready""#;

#[test]
fn signals_to_stratafs_reach_the_command_and_cleanup_is_done() {
    require_root();
    let env = TestEnv::new("run-signals");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let trapping = format!(
        r#"
trap 'echo TERM > "$OUT/got"; exit 7' TERM
trap 'echo INT > "$OUT/got"; exit 7' INT
trap 'echo HUP > "$OUT/got"; exit 7' HUP
echo changed > mod.txt
{READY}
while :; do sleep 0.05; done
"#
    );
    for (sig, name) in [
        (libc::SIGTERM, "TERM"),
        (libc::SIGINT, "INT"),
        (libc::SIGHUP, "HUP"),
    ] {
        let (st, got, cwd, log) = signal_run(&env, &stack, &sh(&trapping), &[], sig, T);
        let st = st.unwrap_or_else(|| panic!("SIG{name}: stratafs run hung; log: {log}"));
        assert_eq!(
            st.code(),
            Some(7),
            "SIG{name} to stratafs: the command's trap should have chosen the status (got {st}); log: {log}"
        );
        assert_eq!(got.trim(), name, "SIG{name}: what the command's trap saw");
        assert!(!is_mounted(&cwd));
    }
    // A shell that does not catch them (and exec's a program) dies of them: 128+n.
    let plain = format!("{READY}; exec sleep 1000");
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let (st, _, _, log) = signal_run(&env, &stack, &sh(&plain), &[], sig, T);
        let st = st.unwrap_or_else(|| panic!("signal {sig}: stratafs run hung; log: {log}"));
        assert_eq!(
            st.code(),
            Some(128 + sig),
            "signal {sig} to stratafs, command `exec sleep`: status {st}; log: {log}"
        );
        assert_eq!(st.signal(), None, "stratafs itself died of signal {sig}");
    }
    stack.assert_layers_unchanged();
}

/// The blocked-signal bits of SIGHUP, SIGINT and SIGTERM in a `SigBlk:` mask of
/// /proc/PID/status.
fn termination_signals_blocked(sigblk: &str) -> Vec<&'static str> {
    let mask =
        u64::from_str_radix(sigblk.trim(), 16).unwrap_or_else(|e| panic!("SigBlk {sigblk:?}: {e}"));
    [
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGTERM, "SIGTERM"),
    ]
    .into_iter()
    .filter(|(s, _)| mask & (1u64 << (s - 1)) != 0)
    .map(|(_, n)| n)
    .collect()
}

/// stratafs blocks SIGINT/SIGTERM/SIGHUP to forward them; the command must not inherit that
/// mask (a program that does not reset its mask — most do not; dash does, lazily — would
/// never receive Ctrl-C, a forwarded signal or its own `kill`). The command here is this test
/// binary (it does not touch its mask), and `sh -c 'kill -TERM $$'`.
#[test]
fn the_command_gets_no_blocked_signal_and_dies_of_forwarded_ones() {
    require_root();
    let env = TestEnv::new("run-sigmask");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);

    let tmp = env.fresh_dir("tmp");
    let out_dir = env.fresh_dir("probe");
    let out = run_timeout(&mut probe_cmd(&tmp, &lower_args(&stack), &out_dir), T);
    assert_eq!(code(&out), Some(0), "probe run: {}", out.describe());
    let p = read_probe(&out_dir, "probe run");
    let blocked = termination_signals_blocked(&p.sigblk);
    assert!(
        blocked.is_empty(),
        "the command started with {blocked:?} blocked (SigBlk {}): stratafs' own mask leaked into it",
        p.sigblk
    );
    assert_no_leftovers(&tmp, "after the probe run");

    // Its own `kill` at once (before dash unblocks anything).
    for (script, want) in [
        ("kill -TERM $$; echo survived", 128 + libc::SIGTERM),
        ("kill -INT $$; echo survived", 128 + libc::SIGINT),
        ("kill -HUP $$; echo survived", 128 + libc::SIGHUP),
    ] {
        let tmp = env.fresh_dir("tmp");
        let out = run_timeout(
            run_cmd(&tmp, &lower_args(&stack)).args(["--", "sh", "-c", script]),
            T,
        );
        assert_eq!(
            code(&out),
            Some(want),
            "run -- sh -c {script:?}: {}",
            out.describe()
        );
        assert_no_leftovers(&tmp, &format!("after run -- sh -c {script:?}"));
    }

    // Forwarded signals kill a program that keeps its initial mask. (A hang here: the
    // signal stayed pending in the command; it is killed after 20 s.)
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let (st, _, cwd, log) = signal_run(
            &env,
            &stack,
            &probe_argv(),
            &[("STRATAFS_RUNPROBE_WAIT", OsStr::new("1"))],
            sig,
            Duration::from_secs(20),
        );
        let st = st.unwrap_or_else(|| {
            panic!(
                "signal {sig} sent to stratafs: the command (this test binary, sleeping) did not die of it within 20 s; log: {log}"
            )
        });
        assert_eq!(st.code(), Some(128 + sig), "signal {sig}: status {st}");
        assert!(!is_mounted(&cwd));
    }
    stack.assert_layers_unchanged();
}

#[test]
fn a_command_that_cannot_run_gives_125_and_leaves_nothing() {
    require_root();
    let env = TestEnv::new("run-nocmd");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    // A missing program, a directory, a file of the view without execute permission.
    for prog in ["/nonexistent/program", "/", "./keep.txt"] {
        let tmp = env.fresh_dir("tmp");
        let out = run_timeout(run_cmd(&tmp, &lower_args(&stack)).args(["--", prog]), T);
        let line = refused_125(&out, &format!("run -- {prog}"));
        assert!(
            line.contains(prog),
            "run -- {prog}: the message should name it: {line}"
        );
        assert_no_leftovers(&tmp, &format!("after run -- {prog}"));
    }
    // The view's own executables are found relative to it.
    let tmp = env.fresh_dir("tmp");
    let out = run_timeout(
        run_cmd(&tmp, &lower_args(&stack)).args(["--", "./exec.sh"]),
        T,
    );
    assert_eq!(code(&out), Some(0), "run -- ./exec.sh: {}", out.describe());
    assert_no_leftovers(&tmp, "after run -- ./exec.sh");
    // Nothing to run in; a missing lower layer.
    let tmp = env.fresh_dir("tmp");
    let out = run_timeout(run_cmd(&tmp, &[]).args(["--", "true"]), T);
    refused_125(&out, "run without layers");
    assert_no_leftovers(&tmp, "after run without layers");
    let tmp = env.fresh_dir("tmp");
    let missing = env.path("no-such-layer");
    let out = run_timeout(
        run_cmd(&tmp, &[OsStr::new("--lower"), missing.as_os_str()]).args(["--", "true"]),
        T,
    );
    let line = refused_125(&out, "run with a missing lower layer");
    assert!(line.contains("no-such-layer"), "{line}");
    assert_no_leftovers(&tmp, "after run with a missing lower layer");
    stack.assert_layers_unchanged();
}

#[test]
fn a_process_left_behind_in_the_view_does_not_prevent_the_cleanup() {
    require_root();
    let env = TestEnv::new("run-bg");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let tmp = env.fresh_dir("tmp");
    let out = run_timeout(
        run_cmd(&tmp, &lower_args(&stack)).args([
            "--",
            "sh",
            "-c",
            "(sleep 1; cat keep.txt > /dev/null) > /dev/null 2>&1 & echo started",
        ]),
        T,
    );
    assert_eq!(code(&out), Some(0), "{}", out.describe());
    assert_no_leftovers(&tmp, "after a run whose command left a process in the view");
    stack.assert_layers_unchanged();
}

#[test]
fn run_a_stored_image() {
    require_root();
    let env = TestEnv::new("run-image");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let kview = stack.kernel_view();
    let store = StoreDir::new(&env.path("store"));
    let [d1, d2] = store.image_from("img", [&l1.root, &l2.root]);
    let trees: Vec<PathBuf> = [&d2, &d1]
        .iter()
        .map(|d| {
            store
                .dir
                .join("layers/sha256")
                .join(d.strip_prefix("sha256:").unwrap())
                .join("tree")
        })
        .collect();
    for t in &trees {
        assert!(t.is_dir(), "store layout: no {}", t.display());
    }
    // The store's trees are checked bit-identical when this is dropped.
    let store_stack = env.stack_paths(trees);

    for verify in ["lazy", "full", "none"] {
        let tmp = env.fresh_dir("tmp");
        let out_dir = env.fresh_dir("probe");
        let out = run_timeout(
            store
                .cmd()
                .args(["run", "img", "--verify", verify, "--"])
                .args(probe_argv())
                .env("TMPDIR", &tmp)
                .env("STRATAFS_RUNPROBE_OUT", &out_dir)
                .env("STRATAFS_RUNPROBE_MUTATE", "full"),
            T,
        );
        assert_eq!(
            code(&out),
            Some(0),
            "run img --verify {verify}: {}",
            out.describe()
        );
        let p = read_probe(&out_dir, "run img");
        assert_eq!(p.fstype, "fuse.stratafs");
        assert_eq!(p.mutate_errors, "");
        let d = view_problems(&kview, &p.snapshot);
        assert!(
            d.is_empty(),
            "{}",
            format_problems(&format!("run img --verify {verify}: the view"), &d)
        );
        assert_no_leftovers(&tmp, &format!("after run img --verify {verify}"));
    }

    // A directory layer above the image.
    let extra = env.layer("extra");
    extra.file("extra.txt", "extra\n");
    extra.whiteout("top.txt", Whiteout::CharDev);
    fix_times(&extra.root);
    let stack3 = env.stack(&[&extra, &l2, &l1]);
    let kview3 = stack3.kernel_view();
    let tmp = env.fresh_dir("tmp");
    let out_dir = env.fresh_dir("probe");
    let out = run_timeout(
        store
            .cmd()
            .arg("run")
            .arg("--lower")
            .arg(&extra.root)
            .args(["img", "--"])
            .args(probe_argv())
            .env("TMPDIR", &tmp)
            .env("STRATAFS_RUNPROBE_OUT", &out_dir),
        T,
    );
    assert_eq!(
        code(&out),
        Some(0),
        "run --lower EXTRA img: {}",
        out.describe()
    );
    let p = read_probe(&out_dir, "run --lower EXTRA img");
    let d = view_problems(&kview3, &p.snapshot);
    assert!(
        d.is_empty(),
        "{}",
        format_problems("run --lower EXTRA img", &d)
    );
    p.snapshot.assert_content("extra.txt", "extra\n");
    p.snapshot.assert_absent("top.txt");
    assert_no_leftovers(&tmp, "after run --lower EXTRA img");

    // An unknown image.
    let tmp = env.fresh_dir("tmp");
    let out = run_timeout(
        store
            .cmd()
            .args(["run", "no-such-image", "--", "true"])
            .env("TMPDIR", &tmp),
        T,
    );
    let line = refused_125(&out, "run of an unknown image");
    assert!(line.contains("no-such-image"), "{line}");
    assert_no_leftovers(&tmp, "after run of an unknown image");
    drop(store_stack);
    drop(stack3);
    drop(stack);
}

#[test]
fn the_unprivileged_user_can_run() {
    require_root();
    let env = TestEnv::new("run-user");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let kview = stack.kernel_view();
    let (uid, gid) = test_user_ids();

    // Ephemeral.
    let tmp = dir_owned_by(&env, "utmp", uid, gid);
    let out_dir = dir_owned_by(&env, "uprobe", uid, gid);
    let mut cmd = as_test_user(stratafs_bin());
    cmd.arg("run")
        .args(lower_args(&stack))
        .arg("--")
        .args(probe_argv())
        .env("TMPDIR", &tmp)
        .env("STRATAFS_RUNPROBE_OUT", &out_dir)
        .env("STRATAFS_RUNPROBE_MUTATE", "user")
        .env("STRATAFS_RUNPROBE_EXIT", "6");
    let out = run_timeout(&mut cmd, T);
    assert_eq!(
        code(&out),
        Some(6),
        "run as {TEST_USER}: {}",
        out.describe()
    );
    let p = read_probe(&out_dir, "run as the user");
    assert_eq!(p.uid, uid, "the command's uid");
    assert_eq!(p.fstype, "fuse.stratafs");
    assert!(
        p.super_options
            .split(',')
            .any(|o| o == format!("user_id={uid}")),
        "the view should be the user's own FUSE mount: {}",
        p.super_options
    );
    let d = view_problems(&kview, &p.snapshot);
    assert!(d.is_empty(), "{}", format_problems("the user's view", &d));
    let root = p.snapshot.entry(b"");
    assert_eq!(
        (root.uid, root.gid),
        (uid, gid),
        "the root of the user's writable view is the user's upper directory"
    );
    assert_eq!(p.mutate_errors, "", "the user's changes in the view");
    let after = p.after.as_ref().unwrap();
    after.assert_content("new.txt", "new\n");
    after.assert_absent("del.txt");
    let l = user_leftovers(&tmp, uid);
    assert!(l.is_empty(), "after the user's run: {l:#?}");

    // --keep-upper, then `stratafs diff` of it, as the user.
    let parent = dir_owned_by(&env, "ukeep", uid, gid);
    let kept = parent.join("upper");
    let tmp = dir_owned_by(&env, "utmp", uid, gid);
    let out_dir = dir_owned_by(&env, "uprobe", uid, gid);
    let mut cmd = as_test_user(stratafs_bin());
    cmd.arg("run")
        .args(lower_args(&stack))
        .arg("--keep-upper")
        .arg(&kept)
        .arg("--")
        .args(probe_argv())
        .env("TMPDIR", &tmp)
        .env("STRATAFS_RUNPROBE_OUT", &out_dir)
        .env("STRATAFS_RUNPROBE_MUTATE", "user");
    let out = run_timeout(&mut cmd, T);
    assert_eq!(
        code(&out),
        Some(0),
        "run --keep-upper as the user: {}",
        out.describe()
    );
    assert_eq!(
        read_probe(&out_dir, "keep-upper run as the user").mutate_errors,
        ""
    );
    assert_eq!(names_in(&parent), vec!["upper".to_string()]);
    let ks = Snapshot::take(&kept);
    let wh = ks.get("del.txt");
    assert!(
        wh.is_some_and(|e| e.kind == Kind::CharDev && e.rdev == 0 && e.uid == uid),
        "del.txt in the user's kept upper: {wh:?}"
    );
    let mut cmd = as_test_user(stratafs_bin());
    cmd.arg("diff")
        .arg(&kept)
        .args(lower_args(&stack))
        .env("TMPDIR", &tmp);
    let out = run_timeout(&mut cmd, T);
    assert!(out.success(), "diff as the user: {}", out.describe());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "D /del.txt\nA /new.txt\nA /newdir\n",
        "diff of the user's kept upper"
    );
    let l = user_leftovers(&tmp, uid);
    assert!(
        l.is_empty(),
        "after the user's keep-upper run and diff: {l:#?}"
    );
    stack.assert_layers_unchanged();
}
