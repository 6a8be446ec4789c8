//! The upper directory as a layer: in the overlay dialect it mounts with kernel overlayfs (as
//! the upper of a fresh writable kernel mount, and as a lower) and gives the same view, and
//! stratafs reads back what the kernel then writes into it; in the OCI dialect it holds only
//! `.wh.` markers and mounts through stratafs (and, converted, the kernel) as a lower layer
//! with the same view. Markers: exactly one per fact, a whiteout only where a lower layer has
//! the name, none inside an opaque directory.

mod common;

use common::differential::{LowerMarkers, standard_layers};
use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A workload that makes every kind of marker (and some that must not be made).
fn workload(m: &Path) {
    let p = |r: &str| m.join(r);
    fs::remove_file(p("a/f3")).unwrap(); // whiteout
    fs::remove_dir_all(p("a/sub")).unwrap(); // whiteouts, then one for the dir
    fs::create_dir(p("a/sub")).unwrap(); // opaque
    fs::write(p("a/sub/q"), "q").unwrap();
    fs::remove_file(p("a/sub/q")).unwrap(); // inside an opaque dir: no whiteout
    fs::write(p("a/sub/new"), "new").unwrap();
    fs::remove_file(p("b/n1")).unwrap();
    fs::remove_dir(p("b")).unwrap();
    fs::create_dir(p("b")).unwrap(); // opaque
    fs::write(p("b/x"), "x").unwrap();
    fs::rename(p("f1"), p("f1b")).unwrap(); // whiteout at f1
    fs::write(p("f1"), "f1 again").unwrap(); // replaces the whiteout
    fs::remove_file(p("f1")).unwrap(); // whiteout again (one)
    fs::write(p("n"), "n").unwrap();
    fs::remove_file(p("n")).unwrap(); // upper only: nothing
    fs::write(p("c/f6"), "not in any lower").unwrap();
    fs::remove_file(p("c/f6")).unwrap(); // nothing
    fs::write(p("a/f2"), "a/f2 is whited out below").unwrap();
    fs::remove_file(p("a/f2")).unwrap(); // nothing: no lower shows a/f2
    fs::remove_dir(p("e")).unwrap();
    fs::create_dir(p("e")).unwrap();
    fs::remove_dir(p("e")).unwrap();
    fs::create_dir(p("e")).unwrap(); // opaque, one marker
    let mut f = fs::OpenOptions::new().append(true).open(p("big")).unwrap();
    std::io::Write::write_all(&mut f, b"appended").unwrap();
    drop(f);
    fs::set_permissions(p("suid"), fs::Permissions::from_mode(0o6755)).unwrap();
    lsetxattr(&p("xa"), b"user.c", b"3").unwrap();
    std::os::unix::fs::symlink("f1b", p("newlink")).unwrap();
    fs::hard_link(p("zero"), p("zero2")).unwrap();
    mknod(&p("p2"), libc::S_IFIFO | 0o640, 0, 0).unwrap();
    fs::rename(p("s1"), p("c/s1")).unwrap(); // whiteout at s1
    fs::create_dir(p("nd")).unwrap();
    fs::write(p("nd/x"), "x").unwrap();
    fs::rename(p("nd"), p("nd2")).unwrap(); // upper-only dir: nothing at nd
    fs::remove_file(p("dang")).unwrap(); // whiteout
    fs::remove_file(p("g/f8")).unwrap();
    fs::remove_dir(p("g")).unwrap();
    fs::write(p("g"), "g is a file").unwrap(); // replaces the dir's whiteout
    fs::rename(p("a"), p("A")).unwrap(); // a merged dir moves with a redirect
    fs::rename(p("c"), p("nd2/c")).unwrap(); // into an upper-only dir
}

/// Markers in an upper snapshot for `path`: (whiteouts, opaque markers) in any dialect.
fn markers(up: &Snapshot, path: &str) -> (usize, usize) {
    let (parent, name) = match path.rsplit_once('/') {
        Some((a, b)) => (a.to_string(), b.to_string()),
        None => (String::new(), path.to_string()),
    };
    let mut wh = 0;
    let mut op = 0;
    if let Some(e) = up.get(path) {
        if e.kind == Kind::CharDev && e.rdev == 0 {
            wh += 1;
        }
        for x in ["trusted.overlay.whiteout", "user.overlay.whiteout"] {
            if e.xattrs.contains_key(x.as_bytes()) {
                wh += 1;
            }
        }
        for x in [
            "trusted.overlay.opaque",
            "user.overlay.opaque",
            "user.fuseoverlayfs.opaque",
        ] {
            if e.xattrs.contains_key(x.as_bytes()) {
                op += 1;
            }
        }
        if up.get(&format!("{path}/.wh..wh..opq")).is_some() {
            op += 1;
        }
    }
    let oci = if parent.is_empty() {
        format!(".wh.{name}")
    } else {
        format!("{parent}/.wh.{name}")
    };
    if up.get(&oci).is_some() {
        wh += 1;
    }
    (wh, op)
}

/// The marker expectations of [`workload`], for either dialect.
fn marker_problems(up: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    let expect = |path: &str, want: (usize, usize), out: &mut Vec<String>| {
        let got = markers(up, path);
        if got != want {
            out.push(format!(
                "{path}: (whiteouts, opaque markers) = {got:?}, want {want:?}"
            ));
        }
    };
    // `a` and `c` were renamed last: whiteouts at their old names, markers moved with them.
    for wh in ["A/f3", "f1", "s1", "dang", "a", "c"] {
        expect(wh, (1, 0), &mut out);
    }
    for op in ["A/sub", "b", "e"] {
        expect(op, (0, 1), &mut out);
    }
    for none in [
        "n",
        "nd2/c/f6",
        "A/f2",
        "A/sub/q",
        "A/sub/f4",
        "A/sub/deep",
        "nd",
        "b/n1",
        "g",
        "f1b",
        "A",
        "nd2/c",
        "big",
    ] {
        expect(none, (0, 0), &mut out);
    }
    out
}

fn stripped(root: &Path) -> Snapshot {
    let mut s = Snapshot::take(root);
    strip_hidden_xattrs(&mut s);
    s
}

fn diff(a: &Snapshot, b: &Snapshot, la: &str, lb: &str) -> Vec<String> {
    snapshot_diff(a, b, Mode::Merged, la, lb)
}

/// Overlay dialect: the upper mounts with the kernel as a lower and as an upper with the same
/// view; what the kernel writes into it next, stratafs reads back identically.
#[test]
fn overlay_upper_is_a_kernel_overlay_upper() {
    require_root();
    let env = TestEnv::new("uf-overlay");
    let layers = standard_layers(&env, LowerMarkers::Kernel);
    let stack = env.stack(&[&layers[0], &layers[1]]);
    let kcopies = stack.kernel_copies();
    let kstack = env.stack_paths(kcopies.clone());
    let lower_view = {
        let k = KernelOverlay::lower_only(&kcopies, &env.fresh_dir("mnt/lv")).unwrap();
        Snapshot::take(k.path())
    };
    let (su, sw) = upper_work(&env.fresh_dir("rw"));
    let spec = UpperSpec::new(&su, &sw);
    let m = stack.stratafs_rw(&spec);
    workload(m.path());
    let view = stripped(m.path());
    m.unmount();
    let mut problems = Vec::new();
    let raw = Snapshot::take(&su);
    problems.extend(upper_format_problems(
        &raw,
        UpperDialect::Overlay,
        &lower_view,
    ));
    problems.extend(marker_problems(&raw));
    // As a lower layer of a read-only kernel mount.
    {
        let mut lowers = vec![su.clone()];
        lowers.extend(kcopies.iter().cloned());
        let k = KernelOverlay::lower_only(&lowers, &env.fresh_dir("mnt/kro")).unwrap();
        problems.extend(diff(
            &view,
            &stripped(k.path()),
            "stratafs",
            "kernel (upper as lower)",
        ));
    }
    // As a lower layer through stratafs: metadata-only copies read through to their data
    // below, renamed directories followed.
    {
        let lowers: Vec<_> = std::iter::once(su.clone())
            .chain(stack.lowers.iter().cloned())
            .collect();
        let ustack = env.stack_paths(lowers);
        let m = ustack.stratafs();
        problems.extend(diff(
            &view,
            &stripped(m.path()),
            "stratafs rw",
            "stratafs (upper as lower)",
        ));
        drop(m);
        problems.extend(ustack.check_layers());
    }
    // As the upper of a writable kernel mount, which then writes into it.
    let kwork = env.fresh_dir("rw/kwork");
    let after_kernel = {
        let k = KernelOverlay::writable_metacopy(&kcopies, &su, &kwork, &env.fresh_dir("mnt/krw"))
            .unwrap();
        problems.extend(diff(
            &view,
            &stripped(k.path()),
            "stratafs",
            "kernel (as upperdir)",
        ));
        let p = |r: &str| k.join(r);
        fs::write(p("k1"), "from the kernel").unwrap();
        fs::remove_file(p("zero")).unwrap();
        fs::remove_file(p("b/x")).unwrap();
        fs::remove_dir(p("b")).unwrap();
        fs::create_dir(p("b")).unwrap();
        fs::rename(p("big"), p("big2")).unwrap();
        fs::remove_file(p("A/g")).unwrap();
        fs::remove_file(p("nd2/c/h")).unwrap();
        fs::create_dir(p("kd")).unwrap();
        fs::write(p("A/sub/new"), "rewritten by the kernel").unwrap();
        fs::rename(p("A/sub"), p("sub-by-kernel")).unwrap();
        fs::rename(p("A"), p("a")).unwrap(); // back, redirect rewritten by the kernel
        stripped(k.path())
    };
    let m = stack.stratafs_rw(&spec);
    problems.extend(diff(
        &after_kernel,
        &Snapshot::take(m.path()),
        "kernel",
        "stratafs (reading the kernel's writes)",
    ));
    let inv = mount_invariants(&Snapshot::take(m.path()));
    problems.extend(inv.into_iter().map(|p| format!("invariant: {p}")));
    m.unmount();
    problems.extend(stack.check_layers());
    drop(kstack);
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("overlay-dialect upper vs kernel overlayfs", &problems)
    );
}

/// OCI dialect: only `.wh.NAME` / `.wh..wh..opq` markers (no char devices, no marker
/// xattrs), the whiteouts hard links of one empty file; the upper mounts through stratafs as a lower layer with the same view, and
/// through the kernel once converted; stratafs remounts it writable with the same view.
#[test]
fn oci_upper_has_only_oci_markers_and_reads_back() {
    require_root();
    let env = TestEnv::new("uf-oci");
    let layers = standard_layers(&env, LowerMarkers::Kernel);
    let stack = env.stack(&[&layers[0], &layers[1]]);
    let kcopies = stack.kernel_copies();
    let lower_view = {
        let k = KernelOverlay::lower_only(&kcopies, &env.fresh_dir("mnt/lv")).unwrap();
        Snapshot::take(k.path())
    };
    let (su, sw) = upper_work(&env.fresh_dir("rw"));
    let mut spec = UpperSpec::new(&su, &sw);
    spec.whiteout = Some(UpperDialect::Oci);
    let m = stack.stratafs_rw(&spec);
    workload(m.path());
    let view = stripped(m.path());
    m.unmount();
    let mut problems = Vec::new();
    // Whiteouts are links of one empty file, as the kernel's are of one device node (no
    // inode each); the workdir keeps none of it once unmounted.
    let raw = Snapshot::take(&su);
    let whiteouts: Vec<&Entry> = raw
        .entries
        .iter()
        .filter(|(p, _)| {
            let name = p.rsplit(|b| *b == b'/').next().unwrap_or(p);
            name.starts_with(b".wh.") && name != b".wh..wh..opq"
        })
        .map(|(_, e)| e)
        .collect();
    let inodes: std::collections::BTreeSet<_> = whiteouts.iter().map(|e| e.ino).collect();
    if whiteouts.len() < 3
        || inodes.len() != 1
        || whiteouts
            .iter()
            .any(|e| e.kind != Kind::File || e.size != 0)
    {
        problems.push(format!(
            "{} whiteouts on {} inodes, want empty files on one inode: {whiteouts:?}",
            whiteouts.len(),
            inodes.len()
        ));
    }
    let work_left: Vec<_> = fs::read_dir(&sw)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".stratafs.lock" && n != "index")
        .collect();
    if !work_left.is_empty() {
        problems.push(format!("workdir left with {work_left:?}"));
    }
    problems.extend(upper_format_problems(&raw, UpperDialect::Oci, &lower_view));
    problems.extend(marker_problems(&raw));
    for (p, e) in &raw.entries {
        if matches!(e.kind, Kind::CharDev | Kind::BlockDev) {
            problems.push(format!(
                "{}: device node in an OCI-dialect upper",
                show_path(p)
            ));
        }
        for k in e.xattrs.keys() {
            if k.windows(7).any(|w| w == b"overlay") {
                problems.push(format!(
                    "{}: overlay xattr {} in an OCI-dialect upper",
                    show_path(p),
                    k.escape_ascii()
                ));
            }
        }
    }
    // As a lower layer through stratafs.
    {
        let lowers: Vec<_> = std::iter::once(su.clone())
            .chain(stack.lowers.iter().cloned())
            .collect();
        let ustack = env.stack_paths(lowers);
        let m = ustack.stratafs();
        problems.extend(diff(
            &view,
            &stripped(m.path()),
            "stratafs rw",
            "stratafs (upper as lower)",
        ));
        drop(m);
        problems.extend(ustack.check_layers());
    }
    // Converted, through the kernel.
    {
        let conv = env.fresh_dir("conv").join("tree");
        common::convert::convert_for_kernel(&su, &conv);
        let mut lowers = vec![conv];
        lowers.extend(kcopies.iter().cloned());
        let k = KernelOverlay::lower_only(&lowers, &env.fresh_dir("mnt/k")).unwrap();
        problems.extend(diff(
            &view,
            &stripped(k.path()),
            "stratafs rw",
            "kernel (converted upper)",
        ));
    }
    // Remounted writable.
    let m = stack.stratafs_rw(&spec);
    problems.extend(diff(
        &view,
        &stripped(m.path()),
        "stratafs rw",
        "stratafs remounted",
    ));
    m.unmount();
    problems.extend(stack.check_layers());
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("OCI-dialect upper", &problems)
    );
}
