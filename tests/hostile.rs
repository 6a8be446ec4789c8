//! Hostile layers: symlinks to `/`, `..` chains, absolute and relative escaping targets, and
//! symlinks where another layer has a directory. Symlinks show as symlinks with their exact
//! target; the kernel follows them itself (normal VFS behaviour); the daemon never serves
//! content from outside the layer roots under names inside the mount.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

const LAYER_RELATIVE: &str = "DECOY: resolved relative to the layer directory";
const MOUNT_RELATIVE: &str = "HOST: resolved relative to the mount point";
const ABSOLUTE: &str = "ABSOLUTE DECOY";

/// Layers live 4 levels below the env root, mounts 2 levels below: a relative escaping target
/// resolves to different host directories depending on which side resolves it.
struct Hostile<'e> {
    env: &'e TestEnv,
    top: Layer,
    mid: Layer,
    base: Layer,
}

fn build(env: &TestEnv) -> Hostile<'_> {
    let layers = env.root.join("deep/er/layers");
    let top = Layer::new(layers.join("top"));
    let mid = Layer::new(layers.join("mid"));
    let base = Layer::new(layers.join("base"));
    // Decoys outside every layer.
    fs::create_dir_all(env.root.join("deep/er/decoy")).unwrap();
    fs::write(env.root.join("deep/er/decoy/secret"), LAYER_RELATIVE).unwrap();
    fs::create_dir_all(env.root.join("decoy/b")).unwrap();
    fs::write(env.root.join("decoy/secret"), MOUNT_RELATIVE).unwrap();
    fs::write(env.root.join("decoy/b/secret"), MOUNT_RELATIVE).unwrap();
    fs::create_dir_all(env.root.join("absdecoy/b")).unwrap();
    fs::write(env.root.join("absdecoy/secret"), ABSOLUTE).unwrap();
    fs::write(env.root.join("absdecoy/b/secret"), ABSOLUTE).unwrap();
    let absdecoy = env.root.join("absdecoy");

    // The classic ones, in the top layer, with lower-layer content under the same names.
    top.symlink("etc", "/etc");
    base.file("etc/passwd", "LAYER PASSWD");
    top.symlink("rootlink", "/");
    base.file("rootlink/etc/passwd", "LAYER PASSWD");
    top.symlink("x", "../../..");
    top.symlink("esc", "../../decoy");
    top.symlink("abs", absdecoy.as_os_str().as_bytes());
    top.symlink("up", "../../../../../../../../../../../../..");
    top.symlink("self", ".");
    top.symlink("parent", "..");
    top.symlink("loop", "loop");
    top.symlink("proc_self_root", "/proc/self/root");
    top.symlink("long_target", "a/".repeat(2047) + "z");
    top.symlink(b"odd_target", b"new\nline \xff\xfe /../..");
    base.file("x/y", "LAYER x/y");
    base.file("esc/secret", "LAYER esc/secret");

    // A directory in the top layer over a symlink (to / and to a decoy) in a lower layer: the
    // symlink stops the merge; the symlink target's contents must never be merged in.
    top.file("dir_over_root_link/mine", "mine");
    mid.symlink("dir_over_root_link", "/");
    top.file("dir_over_decoy/mine", "mine");
    mid.symlink("dir_over_decoy", "../../decoy");
    base.file("dir_over_decoy/base_only", "hidden by mid's symlink");
    top.file("a/b/file", "top a/b/file");
    mid.symlink("a", absdecoy.as_os_str().as_bytes());
    base.file("a/b/base", "hidden");
    // Relative escaping symlink in a middle layer, visible.
    mid.symlink("mid_esc", "../../decoy/secret");
    // Hostile OCI marker names.
    base.file(".wh..", "");
    base.file(".wh...", "");
    mid.file(".wh.", "");
    Hostile {
        env,
        top,
        mid,
        base,
    }
}

#[test]
fn hostile_symlinks_match_kernel() {
    require_root();
    let env = TestEnv::new("hostile");
    let h = build(&env);
    let stack = h.env.stack(&[&h.top, &h.mid, &h.base]);
    let (_k, s) = stack.assert_matches_kernel();
    for (name, target) in [
        ("etc", &b"/etc"[..]),
        ("rootlink", b"/"),
        ("x", b"../../.."),
        ("esc", b"../../decoy"),
        ("up", b"../../../../../../../../../../../../.."),
        ("self", b"."),
        ("parent", b".."),
        ("loop", b"loop"),
        ("proc_self_root", b"/proc/self/root"),
        ("odd_target", b"new\nline \xff\xfe /../.."),
        ("mid_esc", b"../../decoy/secret"),
    ] {
        let e = s.entry(name);
        assert_eq!(e.kind, Kind::Symlink, "{name} must be a symlink");
        assert_eq!(e.target.as_deref(), Some(target), "readlink {name}");
    }
    assert_eq!(s.entry("long_target").target.as_ref().unwrap().len(), 4095);
    s.assert_children("dir_over_root_link", &["mine"]);
    s.assert_children("dir_over_decoy", &["mine"]);
    s.assert_children("a", &["b"]);
    s.assert_children("a/b", &["file"]);
    s.assert_children(
        "",
        &[
            "a",
            "abs",
            "dir_over_decoy",
            "dir_over_root_link",
            "esc",
            "etc",
            "long_target",
            "loop",
            "mid_esc",
            "odd_target",
            "parent",
            "proc_self_root",
            "rootlink",
            "self",
            "up",
            "x",
        ],
    );
}

/// Paths through the symlinks are resolved by the kernel: to the host root and to the
/// mount-relative decoy, never to the lower layer's content under the same name nor to the
/// layer-relative decoy.
#[test]
fn kernel_follows_symlinks_not_the_daemon() {
    require_root();
    let env = TestEnv::new("hostile-follow");
    let h = build(&env);
    let stack = h.env.stack(&[&h.top, &h.mid, &h.base]);
    let m = stack.stratafs();
    let host = fs::metadata("/etc/passwd").unwrap();
    let via = fs::metadata(m.join("etc/passwd")).unwrap();
    assert_eq!(
        (via.dev(), via.ino()),
        (host.dev(), host.ino()),
        "MNT/etc/passwd must be the host's /etc/passwd"
    );
    assert_eq!(
        fs::read(m.join("etc/passwd")).unwrap(),
        fs::read("/etc/passwd").unwrap()
    );
    assert_eq!(
        fs::read_link(m.join("etc")).unwrap().as_os_str().as_bytes(),
        b"/etc"
    );
    let via_root = fs::metadata(m.join("rootlink/etc/passwd")).unwrap();
    assert_eq!(
        (via_root.dev(), via_root.ino()),
        (host.dev(), host.ino()),
        "MNT/rootlink/etc/passwd (rootlink -> /)"
    );
    assert_eq!(
        fs::read_link(m.join("rootlink"))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        b"/"
    );
    // rootlink -> / makes MNT/rootlink/passwd the host's /passwd (absent), never a layer file.
    let r = fs::symlink_metadata(m.join("rootlink/passwd")).map_err(|e| e.raw_os_error());
    assert_eq!(
        r.map(|_| ()),
        fs::symlink_metadata("/passwd")
            .map(|_| ())
            .map_err(|e| e.raw_os_error())
    );
    // x -> ../../.. from MNT (= R/mnt/sN) is the parent of R; so x/y is R/../y: not the layer's.
    let r = fs::read(m.join("x/y"));
    assert!(
        !matches!(&r, Ok(c) if c == b"LAYER x/y"),
        "MNT/x/y was served from the lower layer"
    );
    let expect_xy = fs::read(env.root.parent().unwrap().join("y")).map_err(|e| e.kind());
    assert_eq!(
        r.map_err(|e| e.kind()),
        expect_xy,
        "MNT/x/y must be what the kernel's own resolution gives"
    );
    assert_eq!(
        fs::read_to_string(m.join("esc/secret")).unwrap(),
        MOUNT_RELATIVE
    );
    assert_eq!(
        fs::read_to_string(m.join("mid_esc")).unwrap(),
        MOUNT_RELATIVE
    );
    assert_eq!(fs::read_to_string(m.join("abs/secret")).unwrap(), ABSOLUTE);
    assert_eq!(
        fs::read_to_string(m.join("a/b/file")).unwrap(),
        "top a/b/file"
    );
    for p in [
        "a/b/secret",
        "a/b/base",
        "dir_over_decoy/secret",
        "dir_over_decoy/base_only",
        "dir_over_root_link/etc",
    ] {
        let r = fs::symlink_metadata(m.join(p)).map_err(|e| e.raw_os_error());
        assert_eq!(
            r.map(|_| ()),
            Err(Some(libc::ENOENT)),
            "{p} must not exist in the mount"
        );
    }
    let up = fs::metadata(m.join("up")).unwrap();
    let root = fs::metadata("/").unwrap();
    assert_eq!(
        (up.dev(), up.ino()),
        (root.dev(), root.ino()),
        "MNT/up resolves to the host root"
    );
    let r = fs::metadata(m.join("loop")).map_err(|e| e.raw_os_error());
    assert_eq!(r.map(|_| ()), Err(Some(libc::ELOOP)));
}

/// Walking and reading the mount without following symlinks only ever yields content that
/// exists in some layer.
#[test]
fn listing_and_reading_never_expose_outside_files() {
    require_root();
    let env = TestEnv::new("hostile-walk");
    let h = build(&env);
    let stack = h.env.stack(&[&h.top, &h.mid, &h.base]);
    let layer_hashes: BTreeSet<String> = stack
        .layer_snapshots()
        .iter()
        .flat_map(|s| s.entries.values().filter_map(|e| e.sha256.clone()))
        .collect();
    let m = stack.stratafs();
    let s = Snapshot::take(m.path());
    assert!(s.anomalies.is_empty(), "{:?}", s.anomalies);
    for (p, e) in &s.entries {
        if let Some(h) = &e.sha256 {
            assert!(
                layer_hashes.contains(h),
                "{} has content found in no layer",
                show_path(p)
            );
        }
    }
    let forbidden = [LAYER_RELATIVE, MOUNT_RELATIVE, ABSOLUTE].map(|s| sha256_hex(s.as_bytes()));
    for (p, e) in &s.entries {
        assert!(
            !forbidden.iter().any(|f| Some(f) == e.sha256.as_ref()),
            "{} exposes a decoy",
            show_path(p)
        );
    }
    let names: BTreeSet<String> = s.entries.keys().map(|k| show_path(k)).collect();
    for bad in [
        "secret",
        "etc/passwd",
        "a/b/secret",
        "dir_over_root_link/etc",
        "dir_over_root_link/proc",
    ] {
        assert!(!names.contains(bad), "{bad} listed inside the mount");
    }
}
