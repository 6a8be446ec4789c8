//! A real container client on a stratafs root: bubblewrap (`bwrap --bind MNT / --proc /proc
//! --dev /dev /bin/sh -c ...`) over the cached Debian image stack (see `common/debian.rs`),
//! mounted writable with the drop-in command line. The container writes files, edits
//! /etc/hostname, deletes a lower file and reads the dpkg database; the changes must land in
//! the upper dir with the right markers, and the lowers must stay bit-identical.
//!
//! As root, the upper the container leaves is compared with the one the same script leaves on a
//! writable kernel overlay. As the unprivileged user `stratafs-test` (made by scripts/setup.sh),
//! the user mounts a copy of the image it owns (through fusermount3) and runs bwrap in a user
//! namespace (`--unshare-user --uid 0 --gid 0`).

mod common;

use common::debian::{DebianImage, debian_image, recorded_digest};
use common::dropin::*;
use common::*;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// What the container does. `$1` says who runs it (for the marker file).
const SCRIPT: &str = r#"
set -e
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
echo "written by $1" > /root/x
echo ctr-host > /etc/hostname
rm /etc/issue
test ! -e /etc/issue
mkdir -p /var/tmp/ctr
echo data > /var/tmp/ctr/file
ln -s /root/x /tmp/link-to-x
echo "tmp by $1" > /tmp/from-container
rm -r /usr/share/locale
mkdir /usr/share/locale
echo again > /usr/share/locale/NEW
dpkg -l file less | grep '^ii'
apt-get --version | head -n 1
echo "hostname=$(cat /etc/hostname) uid=$(id -u)"
"#;

fn bwrap() -> PathBuf {
    ["/usr/bin/bwrap", "/bin/bwrap"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("bwrap not installed: run scripts/setup.sh (package bubblewrap)")
}

/// `bwrap [extra] --bind ROOT / --proc /proc --dev /dev /bin/sh -c SCRIPT sh WHO`.
fn bwrap_cmd(root: &Path, extra: &[&str], who: &str) -> Command {
    let mut c = Command::new(bwrap());
    c.args(extra)
        .args(["--unshare-pid", "--die-with-parent", "--bind"])
        .arg(root)
        .args(["/", "--proc", "/proc", "--dev", "/dev", "/bin/sh", "-c"])
        .arg(SCRIPT)
        .args(["sh", who]);
    c
}

/// Checks the container's output.
fn output_problems(out: &CmdOutput, uid: &str) -> Vec<String> {
    let mut p = Vec::new();
    if !out.success() {
        p.push(format!("the container failed: {}", out.describe()));
        return p;
    }
    let s = String::from_utf8_lossy(&out.stdout);
    for want in [
        "ii  file ".to_string(),
        "ii  less ".to_string(),
        "apt 2.".to_string(),
        format!("hostname=ctr-host uid={uid}"),
    ] {
        if !s.contains(&want) {
            p.push(format!("container output lacks {want:?}: {s:?}"));
        }
    }
    p
}

/// The changes the script must leave in `upper` (whiteout dialect checked by the caller).
fn upper_problems(upper: &Path, who: &str) -> Vec<String> {
    let mut p = Vec::new();
    let mut expect = |rel: &str, want: String| {
        let got = fs::read_to_string(upper.join(rel)).ok();
        if got.as_deref() != Some(want.as_str()) {
            p.push(format!("upper/{rel}: expected {want:?}, got {got:?}"));
        }
    };
    expect("root/x", format!("written by {who}\n"));
    expect("etc/hostname", "ctr-host\n".into());
    expect("var/tmp/ctr/file", "data\n".into());
    expect("tmp/from-container", format!("tmp by {who}\n"));
    expect("usr/share/locale/NEW", "again\n".into());
    match fs::read_link(upper.join("tmp/link-to-x")) {
        Ok(t) if t == Path::new("/root/x") => {}
        r => p.push(format!("upper/tmp/link-to-x: {r:?}")),
    }
    match fs::symlink_metadata(upper.join("root")) {
        Ok(md) if md.mode() & 0o7777 == 0o700 => {}
        Ok(md) => p.push(format!(
            "upper/root copied up with mode {:o}, the image has 0700",
            md.mode() & 0o7777
        )),
        Err(e) => p.push(format!("upper/root: {e}")),
    }
    p
}

fn is_char00(p: &Path) -> bool {
    fs::symlink_metadata(p)
        .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
        .unwrap_or(false)
}

/// The cached layers must still be what was built (nothing wrote into them earlier).
fn check_cache_digests(stack: &Stack, image: &DebianImage) {
    for (snap, tree) in stack
        .layer_snapshots()
        .iter()
        .zip([&image.layer, &image.rootfs])
    {
        assert_eq!(
            snap.digest(),
            recorded_digest(tree),
            "the cached layer {} changed since it was built; delete the cache to rebuild",
            tree.display()
        );
    }
}

/// Root runs a bwrap container on a writable stratafs mount of the Debian image (drop-in form).
/// The container's writes land in upper: new files, an edited /etc/hostname, a char 0/0
/// whiteout for the deleted /etc/issue, an opaque re-created directory, /root copied up with
/// its 0700 mode; the dpkg database is readable. The upper equals the one a writable kernel
/// overlay gets from the same script (times set by the run and overlay-private xattrs aside),
/// and the cached lowers are untouched.
#[test]
fn bwrap_as_root_on_a_stratafs_root() {
    require_root();
    let Some(image) = debian_image("bwrap_as_root_on_a_stratafs_root") else {
        return;
    };
    let env = TestEnv::new("ctr-root");
    let stack = env.stack_paths(image.lowers());
    check_cache_digests(&stack, &image);
    let t0 = now_secs();

    // stratafs, drop-in form.
    let mnt = env.fresh_dir("mnt/s");
    let (upper, work) = upper_work(&env.fresh_dir("rw/s"));
    let opts = format!(
        "{},upperdir={},workdir={}",
        lowerdir_opt(&stack.lowers),
        opt_escape(&upper),
        opt_escape(&work)
    );
    let m = DropinMount::background(dropin_cmd().arg("-o").arg(&opts).arg(&mnt), &mnt, &mnt)
        .unwrap_or_else(|e| panic!("drop-in mount of the Debian image failed: {e}"));
    let out = run_timeout(&mut bwrap_cmd(&mnt, &[], "root"), Duration::from_secs(120));
    let mut problems = output_problems(&out, "0");
    // The merged view after the run.
    if m.join("etc/issue").exists() {
        problems.push("/etc/issue still visible after rm".into());
    }
    let mut locale: Vec<String> = fs::read_dir(m.join("usr/share/locale"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    locale.sort();
    if locale != ["NEW"] {
        problems.push(format!("usr/share/locale lists {locale:?}, expected [NEW]"));
    }
    problems.extend(m.finish());
    problems.extend(upper_problems(&upper, "root"));
    if !is_char00(&upper.join("etc/issue")) {
        problems.push(format!(
            "upper/etc/issue should be a char 0/0 whiteout: {:?}",
            fs::symlink_metadata(upper.join("etc/issue")).map(|m| m.file_type())
        ));
    }
    if lgetxattr(&upper.join("usr/share/locale"), b"trusted.overlay.opaque").ok()
        != Some(b"y".to_vec())
    {
        problems
            .push("upper/usr/share/locale is not marked opaque (trusted.overlay.opaque=y)".into());
    }

    // The kernel with the same script.
    let kmnt = env.fresh_dir("mnt/k");
    let (kupper, kwork) = upper_work(&env.fresh_dir("rw/k"));
    {
        let k = KernelOverlay::writable(&stack.lowers, &kupper, &kwork, &kmnt)
            .unwrap_or_else(|e| panic!("{e}"));
        let kout = run_timeout(
            &mut bwrap_cmd(k.path(), &[], "root"),
            Duration::from_secs(120),
        );
        assert!(
            kout.success(),
            "test setup: the script fails on the kernel overlay too: {}",
            kout.describe()
        );
    }
    let mut su = Snapshot::take(&upper);
    let mut ku = Snapshot::take(&kupper);
    for s in [&mut su, &mut ku] {
        strip_hidden_xattrs(s);
        normalize_times(s, t0);
        // The kernel hard-links its whiteouts to one shared inode in the workdir: their link
        // count is not part of the format.
        for e in s.entries.values_mut() {
            if e.kind == Kind::CharDev && e.rdev == 0 {
                e.nlink = 1;
            }
        }
    }
    problems.extend(
        snapshot_diff(&ku, &su, Mode::Merged, "kernel upper", "stratafs upper")
            .into_iter()
            .map(|d| format!("upper vs kernel: {d}")),
    );
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("container on a stratafs root (root)", &problems)
    );
    problems.extend(stack.check_layers());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn user_ids(name: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = run_timeout(
            Command::new("id").arg(flag).arg(name),
            Duration::from_secs(10),
        );
        assert!(
            out.success(),
            "user {name} missing: run scripts/setup.sh ({})",
            out.describe()
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// Adds `user.overlay.opaque=y` next to every `trusted.overlay.opaque=y` under `root` (an
/// unprivileged daemon cannot read `trusted.*`; rootless engines use the user namespace's
/// markers).
fn add_user_opaque_markers(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        if lgetxattr(&d, b"trusted.overlay.opaque").ok().as_deref() == Some(b"y") {
            lsetxattr(&d, b"user.overlay.opaque", b"y").unwrap();
            n += 1;
        }
        for e in fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    n
}

/// The unprivileged user stratafs-test mounts (drop-in form, through fusermount3) a copy of the
/// image it owns, and runs bwrap in a user namespace as root of that namespace. The container's
/// writes land in the user's upper (owned by the user), the deletion as a whiteout (char 0/0,
/// which a user namespace may create, or `.wh.issue`), the re-created directory as opaque; the
/// copies of the lowers are untouched.
#[test]
fn bwrap_as_unprivileged_user_on_a_stratafs_root() {
    require_root();
    let Some(image) = debian_image("bwrap_as_unprivileged_user_on_a_stratafs_root") else {
        return;
    };
    let (uid, gid) = user_ids("stratafs-test");
    let env = TestEnv::new("ctr-user");
    let home = env.fresh_dir("home");
    let layers = home.join("layers");
    fs::create_dir_all(&layers).unwrap();
    let copies = [layers.join("layer"), layers.join("rootfs")];
    for (src, dst) in [&image.layer, &image.rootfs].into_iter().zip(&copies) {
        run_ok(
            Command::new("cp")
                .arg("-a")
                .arg("--reflink=auto")
                .arg(src)
                .arg(dst),
            Duration::from_secs(300),
        );
    }
    assert!(
        add_user_opaque_markers(&copies[0]) >= 2,
        "test setup: expected opaque dirs in the image layer"
    );
    run_ok(
        Command::new("chown")
            .arg("-R")
            .arg("-h")
            .arg(format!("{uid}:{gid}"))
            .arg(&home),
        Duration::from_secs(300),
    );
    let stack = env.stack_paths(copies.to_vec());
    let mnt = home.join("mnt");
    let (upper, work) = upper_work(&home.join("rw"));
    for d in [&mnt, &upper, &work, &home.join("rw")] {
        fs::create_dir_all(d).unwrap();
        std::os::unix::fs::chown(d, Some(uid), Some(gid)).unwrap();
    }
    let opts = format!(
        "{},upperdir={},workdir={}",
        lowerdir_opt(&stack.lowers),
        opt_escape(&upper),
        opt_escape(&work)
    );
    let m = DropinMount::background(
        dropin_cmd()
            .arg("-o")
            .arg(&opts)
            .arg(&mnt)
            .uid(uid)
            .gid(gid)
            .env("HOME", &home),
        &mnt,
        &mnt,
    )
    .unwrap_or_else(|e| panic!("unprivileged drop-in mount failed: {e}"));
    let mi = mounts_at(&mnt);
    let out = run_timeout(
        bwrap_cmd(
            &mnt,
            &["--unshare-user", "--uid", "0", "--gid", "0"],
            "user",
        )
        .uid(uid)
        .gid(gid)
        .env("HOME", &home),
        Duration::from_secs(120),
    );
    let mut problems = output_problems(&out, "0");
    if !mi
        .iter()
        .any(|x| x.super_options.contains(&format!("user_id={uid}")))
    {
        problems.push(format!("not a FUSE mount owned by uid {uid}: {mi:?}"));
    }
    problems.extend(m.finish());
    problems.extend(upper_problems(&upper, "user"));
    let wh_char = is_char00(&upper.join("etc/issue"));
    let wh_oci = upper.join("etc/.wh.issue").exists();
    eprintln!("unprivileged whiteout for etc/issue: char 0/0={wh_char}, .wh.issue={wh_oci}");
    if !(wh_char ^ wh_oci) {
        problems.push(format!(
            "upper/etc: expected exactly one whiteout for issue (char 0/0 or .wh.issue), got char={wh_char} oci={wh_oci}"
        ));
    }
    let loc = upper.join("usr/share/locale");
    let opaque = ["user.overlay.opaque", "trusted.overlay.opaque"]
        .iter()
        .any(|n| lgetxattr(&loc, n.as_bytes()).ok().as_deref() == Some(b"y"))
        || loc.join(".wh..wh..opq").exists();
    if !opaque {
        problems.push("upper/usr/share/locale is not marked opaque".into());
    }
    // Everything in upper belongs to the user.
    let foreign: Vec<String> = Snapshot::take(&upper)
        .entries
        .iter()
        .filter(|(_, e)| (e.uid, e.gid) != (uid, gid))
        .map(|(p, e)| format!("{} {}:{}", show_path(p), e.uid, e.gid))
        .take(10)
        .collect();
    if !foreign.is_empty() {
        problems.push(format!("upper entries not owned by the user: {foreign:?}"));
    }
    problems.extend(stack.check_layers());
    assert!(
        problems.is_empty(),
        "{}",
        format_problems(
            "container on a stratafs root (unprivileged user)",
            &problems
        )
    );
}
