//! Tests of the harness itself: the comparisons really compare, the integrity check really
//! catches a modified layer, the OCI/user-marker converter is faithful, and the mount guards
//! unmount when a test panics.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::panic::{AssertUnwindSafe, catch_unwind};

fn sample(l: &Layer) {
    l.file("f", "content").xattr("user.a", b"1");
    l.file("g", "g").mtime(1_000_000_000, 5);
    l.symlink("s", "f");
    l.fifo("p");
    l.chardev("c", 1, 3);
    l.file("h1", "linked");
    l.hardlink("h1", "h2");
    l.dir("d").mode(0o750);
}

type Mutation = Box<dyn Fn(&Layer)>;

/// Every recorded field, changed alone, produces a difference (Merged mode, and Raw mode).
#[test]
fn snapshot_diff_detects_each_field() {
    require_root();
    let env = TestEnv::new("self-diff");
    let mutations: Vec<(&str, Mutation)> = vec![
        (
            "content",
            Box::new(|l: &Layer| fs::write(l.path("f"), "contenT").unwrap()),
        ),
        (
            "mode",
            Box::new(|l: &Layer| {
                fs::set_permissions(l.path("f"), fs::Permissions::from_mode(0o4644)).unwrap()
            }),
        ),
        (
            "dir mode",
            Box::new(|l: &Layer| {
                fs::set_permissions(l.path("d"), fs::Permissions::from_mode(0o755)).unwrap()
            }),
        ),
        (
            "owner",
            Box::new(|l: &Layer| std::os::unix::fs::lchown(l.path("f"), Some(1), None).unwrap()),
        ),
        (
            "group",
            Box::new(|l: &Layer| std::os::unix::fs::lchown(l.path("s"), None, Some(1)).unwrap()),
        ),
        (
            "mtime nsec",
            Box::new(|l: &Layer| set_times_nofollow(&l.path("g"), 1_000_000_000, 6).unwrap()),
        ),
        (
            "xattr value",
            Box::new(|l: &Layer| lsetxattr(&l.path("f"), b"user.a", b"2").unwrap()),
        ),
        (
            "xattr added",
            Box::new(|l: &Layer| lsetxattr(&l.path("d"), b"user.b", b"").unwrap()),
        ),
        (
            "symlink target",
            Box::new(|l: &Layer| {
                fs::remove_file(l.path("s")).unwrap();
                std::os::unix::fs::symlink("g", l.path("s")).unwrap();
            }),
        ),
        (
            "rdev",
            Box::new(|l: &Layer| {
                fs::remove_file(l.path("c")).unwrap();
                mknod(&l.path("c"), libc::S_IFCHR | 0o644, 1, 5).unwrap();
            }),
        ),
        (
            "type",
            Box::new(|l: &Layer| {
                fs::remove_file(l.path("p")).unwrap();
                fs::write(l.path("p"), "").unwrap();
            }),
        ),
        (
            "hard link broken",
            Box::new(|l: &Layer| {
                fs::remove_file(l.path("h2")).unwrap();
                fs::write(l.path("h2"), "linked").unwrap();
            }),
        ),
        (
            "entry added",
            Box::new(|l: &Layer| fs::write(l.path("d/new"), "").unwrap()),
        ),
        (
            "entry removed",
            Box::new(|l: &Layer| fs::remove_file(l.path("g")).unwrap()),
        ),
    ];
    for (i, (what, mutate)) in mutations.iter().enumerate() {
        let l = env.layer(&format!("m{i}"));
        sample(&l);
        let before = Snapshot::take(&l.root);
        assert!(snapshot_diff(&before, &Snapshot::take(&l.root), Mode::Raw, "a", "b").is_empty());
        mutate(&l);
        let after = Snapshot::take(&l.root);
        for mode in [Mode::Raw, Mode::Merged] {
            let d = snapshot_diff(&before, &after, mode, "a", "b");
            assert!(
                !d.is_empty(),
                "{what}: no difference found in {mode:?} mode"
            );
        }
    }
}

/// Raw mode notices metadata-only writes (ctime) even when the visible values are restored.
#[test]
fn integrity_snapshot_notices_restored_changes() {
    require_root();
    let env = TestEnv::new("self-ctime");
    let l = env.layer("l");
    sample(&l);
    let before = Snapshot::take(&l.root);
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::set_permissions(l.path("f"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(l.path("f"), fs::Permissions::from_mode(0o644)).unwrap();
    let after = Snapshot::take(&l.root);
    assert!(!snapshot_diff(&before, &after, Mode::Raw, "a", "b").is_empty());
}

/// Private xattrs are ignored on the kernel side only.
#[test]
fn merged_mode_filters_hidden_xattrs_on_kernel_side_only() {
    require_root();
    let env = TestEnv::new("self-xattr");
    let a = env.layer("a");
    let b = env.layer("b");
    a.file("f", "x")
        .xattr("user.overlay.opaque", b"y")
        .xattr("user.keep", b"k");
    b.file("f", "x").xattr("user.keep", b"k");
    set_times_nofollow(&b.path("f"), 0, 0).unwrap();
    set_times_nofollow(&a.path("f"), 0, 0).unwrap();
    for l in [&a, &b] {
        set_times_nofollow(&l.root, 0, 0).unwrap();
    }
    let (sa, sb) = (Snapshot::take(&a.root), Snapshot::take(&b.root));
    assert!(snapshot_diff(&sa, &sb, Mode::Merged, "kernel", "stratafs").is_empty());
    assert!(!snapshot_diff(&sb, &sa, Mode::Merged, "kernel", "stratafs").is_empty());
    assert!(
        !mount_invariants(&sa).is_empty(),
        "a visible user.overlay.* xattr must break the invariants"
    );
}

/// Dropping a stack whose layer was modified while it was alive panics.
#[test]
#[should_panic(expected = "was modified")]
fn integrity_check_catches_modified_layer() {
    require_root();
    let env = TestEnv::new("self-integrity");
    let l = env.layer("l");
    sample(&l);
    let stack = env.stack(&[&l]);
    fs::write(l.path("f"), "tampered").unwrap();
    drop(stack);
}

/// Two kernel mounts of stacks that differ by one whiteout are reported as different.
#[test]
fn kernel_comparison_detects_a_difference() {
    require_root();
    let env = TestEnv::new("self-kernel");
    let base = env.layer("base");
    let top1 = env.layer("top1");
    let top2 = env.layer("top2");
    base.file("a", "a");
    base.file("b", "b");
    top1.file("c", "c");
    top2.file("c", "c");
    top2.whiteout("a", Whiteout::CharDev);
    set_times_nofollow(&top1.root, 5, 0).unwrap();
    set_times_nofollow(&top2.root, 5, 0).unwrap();
    set_times_nofollow(&top1.path("c"), 5, 0).unwrap();
    set_times_nofollow(&top2.path("c"), 5, 0).unwrap();
    let s1 = env.stack(&[&top1, &base]);
    let s2 = env.stack(&[&top2, &base]);
    let k1 = s1.kernel();
    let k2 = s2.kernel();
    let d = snapshot_diff(
        &Snapshot::take(k1.path()),
        &Snapshot::take(k2.path()),
        Mode::Merged,
        "1",
        "2",
    );
    assert_eq!(d, vec!["a: only in 1 (File)".to_string()]);
}

/// The converter used for the kernel oracle: OCI and user.* dialect layers, converted, mount
/// exactly like the same layers written natively for the kernel.
#[test]
fn converter_matches_native_kernel_dialect() {
    require_root();
    let env = TestEnv::new("self-convert");
    let build = |prefix: &str, wh: Whiteout, op: Opaque| {
        let base = env.layer(&format!("{prefix}-base"));
        let top = env.layer(&format!("{prefix}-top"));
        base.file("gone", "x");
        base.file("d/gone", "x");
        base.file("d/keep", "k");
        base.file("o/hidden", "h");
        base.sparse_file("sparse");
        top.whiteout("gone", wh);
        top.whiteout("d/gone", wh);
        top.opaque("o", op);
        top.file("o/new", "n")
            .mode(0o4755)
            .owner(3, 4)
            .xattr("user.x", b"\x00\xff");
        top.file("l1", "link");
        top.hardlink("l1", "d/l2");
        top.symlink("sym", "o/new");
        for p in ["", "d", "o", "o/new", "l1", "sym"] {
            set_times_nofollow(&top.path(p), 7, 7).unwrap();
        }
        for p in ["", "d", "o", "d/keep", "sparse"] {
            set_times_nofollow(&base.path(p), 8, 8).unwrap();
        }
        (top, base)
    };
    let (nt, nb) = build("native", Whiteout::CharDev, Opaque::Trusted);
    let reference = env.stack(&[&nt, &nb]);
    let kr = reference.kernel();
    let want = Snapshot::take(kr.path());
    assert_eq!(want.children(""), ["d", "l1", "o", "sparse", "sym"]);
    for (i, (wh, op)) in [
        (Whiteout::Oci, Opaque::Oci),
        (Whiteout::XattrUser, Opaque::UserOverlay),
        (Whiteout::XattrTrusted, Opaque::UserFuseOverlayfs),
    ]
    .into_iter()
    .enumerate()
    {
        let (t, b) = build(&format!("d{i}"), wh, op);
        let stack = env.stack(&[&t, &b]);
        assert!(
            stack.kernel_lowers()[0] != t.root,
            "{wh:?}/{op:?} layer should have been converted"
        );
        let k = stack.kernel();
        let got = Snapshot::take(k.path());
        let d = snapshot_diff(&want, &got, Mode::Merged, "native", "converted");
        assert!(
            d.is_empty(),
            "{}",
            format_problems(&format!("converted {wh:?}/{op:?}"), &d)
        );
        let (fd_n, fd_c) = (
            fs::File::open(kr.join("sparse")).unwrap(),
            fs::File::open(k.join("sparse")).unwrap(),
        );
        use std::os::unix::io::AsRawFd;
        for off in [0i64, 70_000] {
            assert_eq!(
                lseek(fd_n.as_raw_fd(), off, libc::SEEK_HOLE),
                lseek(fd_c.as_raw_fd(), off, libc::SEEK_HOLE)
            );
            assert_eq!(
                lseek(fd_n.as_raw_fd(), off, libc::SEEK_DATA),
                lseek(fd_c.as_raw_fd(), off, libc::SEEK_DATA)
            );
        }
    }
}

/// A panicking test still unmounts both kinds of mounts.
#[test]
fn guards_unmount_when_a_test_panics() {
    require_root();
    let env = TestEnv::new("self-panic");
    let l = env.layer("l");
    sample(&l);
    let l2 = env.layer("l2");
    l2.file("x", "x");
    let stack = env.stack(&[&l, &l2]);
    let mut points = Vec::new();
    let r = catch_unwind(AssertUnwindSafe(|| {
        let m = stack.stratafs();
        let k = stack.kernel();
        points.push(m.path().to_path_buf());
        points.push(k.path().to_path_buf());
        assert!(is_mounted(m.path()) && is_mounted(k.path()));
        panic!("deliberate");
    }));
    assert!(r.is_err());
    assert_eq!(points.len(), 2);
    for p in &points {
        assert!(
            !is_mounted(p),
            "{} still mounted after the panic",
            p.display()
        );
    }
}
