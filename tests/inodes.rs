//! Inode numbers: stable within a mount (after the kernel forgets inodes) and across remount,
//! equal to readdir's d_ino, shared by hard links within a layer, distinct for distinct files
//! (even when layers on different filesystems reuse inode numbers), uniform st_dev, and kernel
//! whiteouts that are hard links of one inode not treated as a link group.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;

fn ino_map(s: &Snapshot) -> BTreeMap<Vec<u8>, u64> {
    s.entries.iter().map(|(p, e)| (p.clone(), e.ino)).collect()
}

fn assert_same_inos(a: &BTreeMap<Vec<u8>, u64>, b: &BTreeMap<Vec<u8>, u64>, what: &str) {
    let mut problems = Vec::new();
    for (p, ia) in a {
        match b.get(p) {
            Some(ib) if ib != ia => {
                problems.push(format!("{}: st_ino {ia} then {ib}", show_path(p)))
            }
            None => problems.push(format!("{}: missing the second time", show_path(p))),
            _ => {}
        }
    }
    assert!(problems.is_empty(), "{}", format_problems(what, &problems));
}

fn build_varied(env: &TestEnv) -> (Layer, Layer, Layer) {
    let base = env.layer("base");
    let mid = env.layer("mid");
    let top = env.layer("top");
    for i in 0..50 {
        base.file(format!("d/f{i}"), format!("{i}"));
        mid.file(format!("d/m{i}"), format!("{i}"));
        top.file(format!("e/t{i}"), format!("{i}"));
    }
    base.file("shadowed", "base");
    mid.file("shadowed", "mid");
    top.dir("d/sub");
    mid.file("d/sub/x", "x");
    base.symlink("link", "d/f1");
    base.fifo("fifo");
    base.file("hl/a", "linked");
    base.hardlink("hl/a", "hl/b");
    base.hardlink("hl/a", "d/c");
    mid.whiteout("d/f3", Whiteout::CharDev);
    (top, mid, base)
}

#[test]
fn inodes_stable_within_mount_and_across_remount() {
    require_root();
    let env = TestEnv::new("ino-stable");
    let (top, mid, base) = build_varied(&env);
    let stack = env.stack(&[&top, &mid, &base]);
    let m = stack.stratafs();
    let s1 = Snapshot::take(m.path());
    let inv = mount_invariants(&s1);
    assert!(inv.is_empty(), "{}", format_problems("invariants", &inv));
    forget_kernel_inodes();
    let s2 = Snapshot::take(m.path());
    assert_same_inos(
        &ino_map(&s1),
        &ino_map(&s2),
        "st_ino after the kernel forgot the inodes",
    );
    let root_dev_1 = s1.entry("").dev;
    drop(m);
    let m2 = stack.stratafs();
    let s3 = Snapshot::take(m2.path());
    assert_same_inos(&ino_map(&s1), &ino_map(&s3), "st_ino across remount");
    assert_eq!(ino_map(&s1).len(), ino_map(&s3).len());
    let _ = root_dev_1;
    // Looking the same objects up in a different order after a remount gives the same numbers.
    drop(m2);
    let m3 = stack.stratafs();
    let mut paths: Vec<&Vec<u8>> = s1.entries.keys().collect();
    paths.reverse();
    for p in paths {
        let md = fs::symlink_metadata(rel_path(m3.path(), p)).unwrap();
        assert_eq!(
            md.ino(),
            s1.entries[p].ino,
            "st_ino of {} looked up bottom-up after remount",
            show_path(p)
        );
    }
}

#[test]
fn d_ino_equals_st_ino_everywhere() {
    require_root();
    let env = TestEnv::new("dino");
    let (top, mid, base) = build_varied(&env);
    let stack = env.stack(&[&top, &mid, &base]);
    let m = stack.stratafs();
    // readdir first (before any lookup), then stat.
    let mut dirents = Vec::new();
    for dir in ["", "d", "e", "d/sub", "hl"] {
        for e in read_dir_raw(&m.join(dir)).unwrap() {
            if e.name != b"." && e.name != b".." {
                dirents.push((join_rel(dir.as_bytes(), &e.name), e.ino));
            }
        }
    }
    let mut problems = Vec::new();
    for (p, dino) in &dirents {
        let ino = fs::symlink_metadata(rel_path(m.path(), p)).unwrap().ino();
        if ino != *dino {
            problems.push(format!("{}: d_ino {dino} st_ino {ino}", show_path(p)));
        }
    }
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("d_ino vs st_ino", &problems)
    );
    let s = Snapshot::take(m.path());
    let inv = mount_invariants(&s);
    assert!(inv.is_empty(), "{}", format_problems("invariants", &inv));
}

/// Hard links within a layer share st_ino and report the layer's nlink (as the kernel does);
/// a link hidden by a whiteout or replaced by a higher layer drops out of the group.
#[test]
fn hard_links_share_inode() {
    require_root();
    let env = TestEnv::new("hardlinks");
    let base = env.layer("base");
    let top = env.layer("top");
    base.file("a/one", "linked content").mode(0o640).owner(7, 8);
    base.hardlink("a/one", "a/two");
    base.hardlink("a/one", "b/three");
    base.hardlink("a/one", "b/four");
    base.hardlink("a/one", "c/hidden");
    base.file("pair1", "pair");
    base.hardlink("pair1", "pair2");
    base.file("solo", "solo");
    top.whiteout("c/hidden", Whiteout::CharDev);
    top.file("b/four", "replaced");
    top.file("t1", "top pair");
    top.hardlink("t1", "tdir/t2");
    let stack = env.stack(&[&top, &base]);
    let (_k, s) = stack.assert_matches_kernel();
    let one = s.entry("a/one");
    for p in ["a/two", "b/three"] {
        assert_eq!(
            s.entry(p).ino,
            one.ino,
            "{p} should share st_ino with a/one"
        );
        assert_eq!(s.entry(p).nlink, one.nlink);
    }
    assert_ne!(
        s.entry("b/four").ino,
        one.ino,
        "b/four is a different file in top"
    );
    assert_eq!(s.entry("pair1").ino, s.entry("pair2").ino);
    assert_eq!(s.entry("t1").ino, s.entry("tdir/t2").ino);
    assert_ne!(s.entry("t1").ino, s.entry("pair1").ino);
    assert_eq!(s.entry("solo").nlink, 1);
}

/// Two layers on two fresh tmpfs mounts have identical inode numbers for different files: the
/// merged view must still give distinct files distinct st_ino, one st_dev, and the same numbers
/// across remount.
#[test]
fn distinct_files_distinct_inodes_across_filesystems() {
    require_root();
    let env = TestEnv::new("ino-collide");
    let t1 = env.mount_tmpfs("fs1");
    let t2 = env.mount_tmpfs("fs2");
    let top = Layer::new(t1.join("layer"));
    let base = Layer::new(t2.join("layer"));
    for l in [&top, &base] {
        for i in 0..20 {
            l.file(
                format!("dir/f{i}"),
                if std::ptr::eq(l, &top) {
                    format!("top {i}")
                } else {
                    format!("base {i}")
                },
            );
        }
    }
    // Names that differ between the layers so both sets are visible.
    for i in 0..20 {
        top.file(format!("only_top_{i}"), "t");
        base.file(format!("only_base_{i}"), "b");
    }
    let ti = fs::symlink_metadata(top.path("only_top_0")).unwrap().ino();
    let bi = fs::symlink_metadata(base.path("only_base_0"))
        .unwrap()
        .ino();
    assert_eq!(
        ti, bi,
        "test setup: tmpfs should reuse inode numbers (got {ti} vs {bi})"
    );
    let stack = env.stack(&[&top, &base]);
    let (_k, s) = stack.assert_matches_kernel();
    assert!(s.has("only_top_0") && s.has("only_base_0"));
    let m = stack.stratafs();
    let a = Snapshot::take(m.path());
    drop(m);
    let m2 = stack.stratafs();
    let b = Snapshot::take(m2.path());
    assert_same_inos(
        &ino_map(&a),
        &ino_map(&b),
        "st_ino across remount (layers on tmpfs)",
    );
}

/// Kernel whiteouts are often hard links of one char 0/0 inode; they must still act as
/// whiteouts, and no visible file may be tied to them as a link group.
#[test]
fn kernel_whiteout_hard_links_are_not_a_link_group() {
    require_root();
    let env = TestEnv::new("wh-links");
    let base = env.layer("base");
    let mid = env.layer("mid");
    let top = env.layer("top");
    for i in 0..6 {
        base.file(format!("w{i}"), format!("base w{i}"));
        base.file(format!("sub/w{i}"), format!("base sub/w{i}"));
    }
    base.file("keep", "keep");
    mid.whiteout("w0", Whiteout::CharDev);
    for i in 1..6 {
        mid.whiteout_link("w0", format!("w{i}"));
        mid.whiteout_link("w0", format!("sub/w{i}"));
    }
    mid.file("sub/w0", "mid replaces sub/w0");
    assert_eq!(fs::symlink_metadata(mid.path("w0")).unwrap().nlink(), 11);
    // The top layer also links whiteouts across directories.
    top.whiteout("keep2", Whiteout::CharDev);
    top.whiteout_link("keep2", "sub/keep2");
    base.file("keep2", "hidden");
    let stack = env.stack(&[&top, &mid, &base]);
    let (_k, s) = stack.assert_matches_kernel();
    s.assert_children("", &["keep", "sub"]);
    s.assert_children("sub", &["w0"]);
    s.assert_content("sub/w0", "mid replaces sub/w0");
    assert!(
        s.link_groups().is_empty(),
        "no link groups expected: {:?}",
        s.link_groups()
    );
    assert_eq!(s.entry("sub/w0").nlink, 1);
}

#[test]
fn st_dev_uniform_across_layers_and_filesystems() {
    require_root();
    let env = TestEnv::new("stdev");
    let t = env.mount_tmpfs("fs");
    let top = Layer::new(t.join("layer"));
    let base = env.layer("base");
    top.file("d/top", "t");
    base.file("d/base", "b");
    base.file("other/x", "x");
    let stack = env.stack(&[&top, &base]);
    let m = stack.stratafs();
    let s = Snapshot::take(m.path());
    let devs: std::collections::BTreeSet<u64> = s.entries.values().map(|e| e.dev).collect();
    assert_eq!(devs.len(), 1, "st_dev values seen: {devs:?}");
    let host_dev = fs::metadata(&env.root).unwrap().dev();
    assert!(
        !devs.contains(&host_dev),
        "st_dev must be the mount's own, not a layer's"
    );
}
