//! The layer store against real OCI tooling: images built with `umoci`, copied and recompressed
//! with `skopeo` (zstd, gzip, docker-archive), the Debian image as layer tars made by GNU tar,
//! `stratafs layer export` read back by `umoci`, multi-platform indexes, and broken layouts
//! (missing or corrupt blobs, a wrong diff_id) that must fail with one line and leave the store
//! as it was.
//!
//! The reference for a mounted image is `umoci unpack` of the same layout (umoci applies the
//! layers to one directory as root, so owners, devices and xattrs are real), compared entry by
//! entry ([`umoci_problems`]: what umoci does not reproduce is listed and explained there). The
//! Debian image is also compared with a kernel overlay of its original layer directories. Every
//! mount is a guard that borrows a `Stack` over the store and the source layouts, so they are
//! checked bit-identical after the unmount, even when the test fails.

mod common;

use std::path::{Path, PathBuf};

use common::convert::convert_to_oci;
use common::debian::debian_image;
use common::oci::*;
use common::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Deterministic pseudo-random bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `security.capability` v2, `cap_net_bind_service=ep` (the kernel checks the format).
const FILE_CAP: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

const LONG_NAME_LEN: usize = 200;
const DEEP_LEVELS: usize = 60;

fn deep_dirs() -> Vec<String> {
    (0..=DEEP_LEVELS)
        .map(|n| format!("deep{}", "/d".repeat(n)))
        .collect()
}

/// Three layers with every kind of entry and change: files (setuid, setgid, read-only, empty,
/// 1 MiB), directories (sticky, 0700 owned by a user, read-only with content), symlinks
/// (relative, absolute, dangling, to a directory, a 300-byte target), hard links, devices,
/// a FIFO, xattrs (user, trusted, security.capability, an empty value), nanosecond, negative,
/// epoch and year-2100 mtimes, ids above the ustar limit, names with spaces, UTF-8, 200 bytes,
/// a path 60 directories deep; then whiteouts of files and of a whole directory, an opaque
/// directory whose marker comes after its siblings, type changes (dir → file, file → dir, file →
/// symlink), a hard-link group with one name replaced and one whited out, metadata-only changes
/// of directories (the root too), xattrs replaced, a directory re-created above its whiteout,
/// a whiteout of a name that never existed. Every directory an entry needs is listed (a tar
/// that leaves parents implied is another case, see `docs/format.md`).
fn crafted_layers() -> Vec<LayerTar> {
    let mut l1 = LayerTar::new();
    l1.dir(".", 0o755).mtime(1_500_000_000, 1);
    l1.dir("etc", 0o755).mtime(1_500_000_100, 123_456_789);
    l1.file("etc/hostname", "base\n", 0o644)
        .mtime(1_500_000_001, 999_999_999);
    l1.file("etc/shadow", "root:*:19000::::::\n", 0o640)
        .owner(0, 42);
    l1.file("etc/caps", noise(1, 4000), 0o755)
        .xattr("security.capability", &FILE_CAP)
        .xattr("user.note", b"base")
        .xattr("trusted.t", b"\x00\x01binary\xff");
    l1.file("etc/empty-xattr", "e", 0o644)
        .xattr("user.empty", b"");
    l1.file("etc/to-whiteout", "bye", 0o644);
    l1.file("etc/hl-a", "linked\n", 0o644)
        .mtime(1_400_000_000, 7);
    l1.hardlink("etc/hl-b", "etc/hl-a");
    l1.hardlink("etc/hl-c", "etc/hl-a");
    l1.dir("bin", 0o755);
    l1.file("bin/tool", noise(2, 30_000), 0o4755);
    l1.hardlink("bin/tool-alias", "bin/tool");
    l1.file("bin/sgid", "#!/bin/sh\n", 0o2755).owner(0, 50);
    l1.dir("tmp", 0o1777);
    l1.dir("home", 0o755);
    l1.dir("home/user", 0o700)
        .owner(1000, 1000)
        .mtime(1_600_000_500, 5);
    l1.file("home/user/.profile", "PATH=/bin\n", 0o644)
        .owner(1000, 1000);
    l1.dir("ro-dir", 0o555);
    l1.file("ro-dir/f", "read only", 0o444);
    l1.dir("opq", 0o755);
    l1.file("opq/old1", "1", 0o644);
    l1.dir("opq/sub", 0o755);
    l1.file("opq/sub/old2", "2", 0o644);
    l1.dir("gone", 0o755);
    l1.file("gone/a", "a", 0o644);
    l1.dir("gone/deep", 0o755);
    l1.file("gone/deep/b", "b", 0o644);
    l1.dir("d2f", 0o755);
    l1.file("d2f/x", "x", 0o644);
    l1.file("f2d", "file", 0o644);
    l1.file("f2l", "file", 0o644);
    l1.dir("links", 0o755);
    l1.symlink("links/rel", "../etc/hostname")
        .mtime(1_300_000_000, 3);
    l1.symlink("links/abs", "/etc/hostname");
    l1.symlink("links/dangling", "nowhere/x");
    l1.symlink("links/dir", "../etc");
    l1.symlink("links/long", format!("{}end", "a/".repeat(150)));
    l1.dir("dev", 0o755);
    l1.chardev("dev/null", 1, 3);
    l1.blockdev("dev/loop0", 7, 0).owner(0, 6);
    l1.fifo("dev/fifo");
    l1.dir("names", 0o755);
    l1.file("names/sp ace", "s", 0o644);
    l1.file("names/ünï cødé", "u", 0o644);
    l1.file(format!("names/{}", "n".repeat(LONG_NAME_LEN)), "l", 0o644);
    for d in deep_dirs() {
        l1.dir(d, 0o755);
    }
    l1.file(
        format!("{}/leaf", deep_dirs().last().unwrap()),
        "leaf",
        0o644,
    );
    l1.dir("time", 0o755);
    l1.file("time/neg", "n", 0o644).mtime(-3, 5);
    l1.file("time/epoch", "e", 0o644).mtime(0, 0);
    l1.file("time/y2100", "y", 0o644)
        .mtime(4_102_444_800, 999_999_999);
    l1.file("time/bigid", "b", 0o644)
        .owner(3_000_000, 4_000_000);
    l1.file("big", noise(3, 1 << 20), 0o644);
    l1.file("empty", "", 0o600);

    let mut l2 = LayerTar::new();
    l2.dir(".", 0o755).mtime(1_500_000_200, 0);
    l2.dir("etc", 0o751).mtime(1_500_000_200, 222);
    l2.whiteout("etc/to-whiteout");
    l2.file("etc/hostname", "layer2\n", 0o600).owner(5, 5);
    l2.file("etc/hl-a", "new a\n", 0o644);
    l2.whiteout("etc/hl-c");
    l2.file("etc/added", "added", 0o644);
    l2.file("etc/caps", noise(1, 4000), 0o755)
        .xattr("user.note", b"layer2");
    l2.dir("opq", 0o750).mtime(1_500_000_222, 2);
    l2.file("opq/new", "new", 0o644);
    l2.opaque("opq");
    l2.whiteout("gone");
    l2.file("d2f", "now a file", 0o644);
    l2.dir("f2d", 0o711);
    l2.file("f2d/child", "c", 0o644);
    l2.whiteout("never-existed");
    l2.dir("home", 0o755);
    l2.dir("home/user", 0o700)
        .owner(1000, 1000)
        .mtime(1_600_000_600, 6);
    l2.file("home/user/.bashrc", "alias x=y\n", 0o644)
        .owner(1000, 1000);
    l2.dir("l2", 0o755);
    l2.file("l2/a", "group of layer 2", 0o644);
    l2.hardlink("l2/b", "l2/a");

    let mut l3 = LayerTar::new();
    l3.dir(".", 0o755).mtime(1_500_000_300, 333);
    l3.dir("gone", 0o700).mtime(1_500_000_300, 3);
    l3.file("gone/fresh", "fresh", 0o644);
    l3.dir("etc", 0o751).mtime(1_500_000_300, 300);
    l3.whiteout("etc/added");
    l3.symlink("f2l", "etc/hostname");
    l3.dir("tmp", 0o1777).mtime(1_500_000_300, 0);
    l3.file("tmp/scratch", "s", 0o600);
    vec![l1, l2, l3]
}

/// The crafted image's merged view, checked on its own (so that a comparison cannot pass with
/// umoci and stratafs wrong in the same way).
fn check_crafted_view(s: &Snapshot, who: &str) {
    for gone in [
        "etc/to-whiteout",
        "etc/hl-c",
        "etc/added",
        "opq/old1",
        "opq/sub",
        "gone/a",
        "gone/deep",
        "d2f/x",
        "never-existed",
    ] {
        assert!(!s.has(gone), "{who}: {gone} should be hidden");
    }
    s.assert_children("opq", &["new"]);
    s.assert_children("gone", &["fresh"]);
    s.assert_children("f2d", &["child"]);
    s.assert_content("etc/hostname", "layer2\n");
    s.assert_content("etc/hl-a", "new a\n");
    s.assert_content("etc/hl-b", "linked\n");
    s.assert_content("d2f", "now a file");
    s.assert_content("big", noise(3, 1 << 20));
    let caps = s.entry("etc/caps");
    assert_eq!(
        caps.xattrs.keys().map(|k| k.as_slice()).collect::<Vec<_>>(),
        vec![&b"user.note"[..]],
        "{who}: etc/caps xattrs are layer 2's only"
    );
    assert_eq!(s.entry("f2l").kind, Kind::Symlink, "{who}: f2l");
    assert_eq!(s.entry("etc").mode & 0o7777, 0o751, "{who}: etc mode");
    assert_eq!(
        s.entry("etc").mtime,
        (1_500_000_300, 300),
        "{who}: etc mtime"
    );
    assert_eq!(s.entry("time/neg").mtime, (-3, 5), "{who}: negative mtime");
    assert_eq!(
        (s.entry("time/bigid").uid, s.entry("time/bigid").gid),
        (3_000_000, 4_000_000),
        "{who}: large ids"
    );
    assert_eq!(s.entry("bin/tool").mode & 0o7777, 0o4755, "{who}: setuid");
    assert_eq!(s.entry("bin/tool").nlink, 2, "{who}: bin/tool nlink");
    assert_eq!(s.entry("l2/a").nlink, 2, "{who}: l2/a nlink");
    assert!(
        s.has(format!("{}/leaf", deep_dirs().last().unwrap())),
        "{who}: deep leaf"
    );
    assert!(
        s.has(format!("names/{}", "n".repeat(LONG_NAME_LEN))),
        "{who}: long name"
    );
}

/// `etc/hl-b` is the only name left of layer 1's three-name group (`hl-a` replaced, `hl-c`
/// whited out in layer 2): umoci's tree counts 1 name, the union mount shows the layer-1
/// inode, which has 3 (as kernel overlayfs does).
const CRAFTED_NLINK: &[NlinkException<'static>] = &[NlinkException {
    path: "etc/hl-b",
    umoci: 1,
    stratafs: 3,
}];

/// Writes the layers as `DIR/layer<N>.tar` (bottom first).
fn write_tars(dir: &Path, layers: &[LayerTar]) -> Vec<PathBuf> {
    layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let p = dir.join(format!("layer{i}.tar"));
            l.write(&p);
            p
        })
        .collect()
}

/// The crafted image as an umoci layout `<env>/crafted`, tag `t` (gzip layers).
fn crafted_umoci_layout(env: &TestEnv) -> (Layout, Vec<PathBuf>) {
    let tars = write_tars(&env.fresh_dir("tars"), &crafted_layers());
    (umoci_layout(&env.path("crafted"), "t", &tars), tars)
}

/// Mounts `image` of `store` (`args` added to the mount command), walks it, checks the mount
/// invariants, unmounts, and checks that the store and `sources` are bit-identical to before
/// the mount.
fn mount_snapshot(
    env: &TestEnv,
    store: &StoreDir,
    image: &str,
    sources: &[&Path],
    args: &[&str],
) -> Snapshot {
    let mut watched = vec![store.dir.clone()];
    watched.extend(sources.iter().map(|p| p.to_path_buf()));
    let stack = env.stack_paths(watched);
    let m = mount_image(&stack, store, image, args);
    let snap = Snapshot::take(m.path());
    m.unmount();
    let inv = mount_invariants(&snap);
    assert!(
        inv.is_empty(),
        "{}",
        format_problems(&format!("mount invariants of {image}"), &inv)
    );
    stack.assert_layers_unchanged();
    snap
}

fn assert_no_problems(title: &str, problems: &[String]) {
    assert!(problems.is_empty(), "{}", format_problems(title, problems));
}

fn spec(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

// ---------------------------------------------------------------------------------------------
// 1. umoci-built layout
// ---------------------------------------------------------------------------------------------

#[test]
fn umoci_built_layout_mounts_like_umoci_unpack() {
    require_root();
    let env = TestEnv::new("oci-umoci");
    let (layout, _) = crafted_umoci_layout(&env);
    let store = StoreDir::new(&env.path("store"));

    let imp = store.import_image(&image_ref(&layout.dir, "t"), &[]);
    assert_eq!(imp.name, "crafted:t", "name from the bare ref.name tag");
    assert_eq!(imp.layers.len(), 3);
    assert!(imp.none_existed(), "fresh store: {imp:?}");
    assert_eq!(store.image_layers("crafted:t"), imp.digests());
    store.ok(&["layer", "verify", "--all"]);

    let rootfs = umoci_unpack(&layout.dir, "t", &env.path("bundle"));
    let reference = Snapshot::take(&rootfs);
    check_crafted_view(&reference, "umoci");

    let mounted = mount_snapshot(&env, &store, "crafted:t", &[&layout.dir], &[]);
    check_crafted_view(&mounted, "stratafs");
    assert_eq!(
        mounted
            .entry("etc/empty-xattr")
            .xattrs
            .get(&b"user.empty"[..]),
        Some(&Vec::new()),
        "an xattr with an empty value (left out of the umoci comparison) is kept"
    );
    assert_no_problems(
        "umoci unpack vs stratafs mount",
        &umoci_problems(&reference, &mounted, CRAFTED_NLINK),
    );

    // Importing it again stores nothing.
    let layers_before = Snapshot::take(&store.dir.join("layers"));
    let again = store.import_image(&image_ref(&layout.dir, "t"), &[]);
    assert!(again.all_existed(), "second import: {again:?}");
    assert_eq!(again.digests(), imp.digests());
    assert_eq!(again.name, imp.name);
    assert_snapshots_eq(
        &layers_before,
        &Snapshot::take(&store.dir.join("layers")),
        Mode::Raw,
        "layers before",
        "layers after the second import",
    );
}

/// Entry names of a gzip layer blob.
fn gzip_tar_names(blob: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(blob));
    a.entries()
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
        .collect()
}

/// Changes made in an unpacked rootfs and committed by `umoci repack`: a layer whose whiteouts
/// (and re-added hard links, metadata-only changes) umoci itself wrote. umoci lists a changed
/// entry without its parent directory when the directory itself did not change (here
/// `home/user/.profile` without `home/user/`, a 0700 directory owned by uid 1000, and
/// `bin/sgid` without `bin/`): the parent must keep its metadata from the layers below, as
/// `umoci unpack` (and containerd, which copies it from the parent layers) shows it.
#[test]
fn umoci_repacked_changes_mount_like_umoci_unpack() {
    require_root();
    let env = TestEnv::new("oci-repack");
    let (layout, _) = crafted_umoci_layout(&env);
    let store = StoreDir::new(&env.path("store"));
    let base = store.import_image(&image_ref(&layout.dir, "t"), &[]);

    let bundle = env.path("bundle");
    let rootfs = umoci_unpack(&layout.dir, "t", &bundle);
    let r = |p: &str| rootfs.join(p);
    std::fs::remove_file(r("etc/shadow")).unwrap();
    std::fs::remove_file(r("etc/hl-b")).unwrap();
    std::fs::remove_dir_all(r("links")).unwrap();
    std::fs::remove_file(r("names/sp ace")).unwrap();
    std::fs::write(r("home/user/.profile"), "PATH=/usr/bin:/bin\n").unwrap();
    std::fs::write(r("big"), noise(4, 300_000)).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(r("bin/sgid"), std::fs::Permissions::from_mode(0o750)).unwrap();
    }
    common::sys::lsetxattr(&r("etc/hostname"), b"user.added", b"by repack").unwrap();
    std::fs::create_dir(r("newdir")).unwrap();
    std::fs::write(r("newdir/f"), "new").unwrap();
    std::fs::hard_link(r("newdir/f"), r("newdir/g")).unwrap();
    std::fs::remove_file(r("d2f")).unwrap();
    std::fs::create_dir(r("d2f")).unwrap();
    std::fs::write(r("d2f/inner"), "inner").unwrap();
    umoci(&[
        spec("repack"),
        spec("--image"),
        &image_ref(&layout.dir, "t2"),
        bundle.as_os_str(),
    ]);
    let names = gzip_tar_names(&layout.blob(layout.layer_blobs("t2").last().unwrap()));
    let has = |want: &str| {
        names
            .iter()
            .any(|n| n.trim_start_matches("./").trim_end_matches('/') == want)
    };
    for want in [
        "etc/.wh.shadow",
        ".wh.links",
        "names/.wh.sp ace",
        "newdir/g",
        "home/user/.profile",
        "bin/sgid",
    ] {
        assert!(has(want), "umoci's layer lacks {want}: {names:?}");
    }
    for implied in ["home/user", "home", "bin"] {
        assert!(!has(implied), "umoci's layer lists {implied}: {names:?}");
    }

    let imp = store.import_image(&image_ref(&layout.dir, "t2"), &[]);
    assert_eq!(imp.name, "crafted:t2");
    assert_eq!(imp.layers.len(), 4);
    assert_eq!(
        imp.layers[..3],
        base.layers
            .iter()
            .map(|(d, _)| (d.clone(), true))
            .collect::<Vec<_>>()[..]
    );
    assert!(!imp.layers[3].1, "umoci's new layer is imported");

    let reference = Snapshot::take(&umoci_unpack(&layout.dir, "t2", &env.path("bundle2")));
    reference.assert_absent("etc/shadow");
    reference.assert_absent("links");
    reference.assert_children("d2f", &["inner"]);
    let mounted = mount_snapshot(&env, &store, "crafted:t2", &[&layout.dir], &[]);
    assert_no_problems(
        "umoci unpack vs stratafs mount of the repacked image",
        &umoci_problems(&reference, &mounted, &[]),
    );
}

// ---------------------------------------------------------------------------------------------
// 2. skopeo: zstd, gzip, docker-archive
// ---------------------------------------------------------------------------------------------

#[test]
fn skopeo_copies_import_as_the_same_layers() {
    require_root();
    let env = TestEnv::new("oci-skopeo");
    let (layout, tars) = crafted_umoci_layout(&env);
    let store = StoreDir::new(&env.path("store"));
    let imp = store.import_image(&image_ref(&layout.dir, "t"), &[]);

    // Layer digests name trees: each tar imported alone gives the same one.
    let scratch = StoreDir::new(&env.path("scratch-store"));
    let alone: Vec<String> = tars.iter().map(|t| scratch.import_layer(t)).collect();
    assert_eq!(alone, imp.digests(), "layer import of each tar");

    let src = format!("oci:{}:t", layout.dir.display());
    let zstd_dir = env.path("zstd");
    skopeo_copy(
        &["--dest-compress-format", "zstd"],
        &src,
        &format!("oci:{}:t", zstd_dir.display()),
    );
    let zl = Layout::open(&zstd_dir);
    assert!(
        zl.layer_media_types("t")
            .iter()
            .all(|m| m.ends_with("+zstd")),
        "skopeo wrote {:?}",
        zl.layer_media_types("t")
    );
    // Recompressed from the zstd copy with another level: new gzip streams, not umoci's.
    let gzip_dir = env.path("gzip");
    skopeo_copy(
        &[
            "--dest-compress-format",
            "gzip",
            "--dest-compress-level",
            "9",
        ],
        &format!("oci:{}:t", zstd_dir.display()),
        &format!("oci:{}:t", gzip_dir.display()),
    );
    let gl = Layout::open(&gzip_dir);
    assert!(
        gl.layer_media_types("t")
            .iter()
            .all(|m| m.ends_with("+gzip")),
        "skopeo wrote {:?}",
        gl.layer_media_types("t")
    );
    let umoci_blobs = layout.layer_blobs("t");
    assert!(
        gl.layer_blobs("t").iter().all(|b| !umoci_blobs.contains(b)),
        "skopeo reused umoci's gzip blobs: this case would not test another gzip stream"
    );
    let archive = env.path("out.tar");
    skopeo_copy(
        &[],
        &src,
        &format!("docker-archive:{}:name:tag", archive.display()),
    );

    let reference = Snapshot::take(&umoci_unpack(&layout.dir, "t", &env.path("bundle")));
    let cases: [(&Path, std::ffi::OsString, &str); 3] = [
        (&zstd_dir, image_ref(&zstd_dir, "t"), "zstd:t"),
        (&gzip_dir, image_ref(&gzip_dir, "t"), "gzip:t"),
        (
            &archive,
            archive.clone().into_os_string(),
            "docker.io/library/name:tag",
        ),
    ];
    for (i, (source, spec, name)) in cases.iter().enumerate() {
        // A fresh store extracts every layer of this form.
        let fresh = StoreDir::new(&env.path(&format!("fresh-{i}")));
        let got = fresh.import_image(spec, &[]);
        assert_eq!(got.name, *name);
        assert!(got.none_existed(), "{name} into a fresh store: {got:?}");
        assert_eq!(got.digests(), imp.digests(), "{name}: layer digests");
        let mounted = mount_snapshot(&env, &fresh, name, &[*source], &[]);
        check_crafted_view(&mounted, name);
        assert_no_problems(
            &format!("umoci unpack vs stratafs mount of {name}"),
            &umoci_problems(&reference, &mounted, CRAFTED_NLINK),
        );
        // The store that has the umoci import already has every layer.
        let got = store.import_image(spec, &[]);
        assert!(
            got.all_existed(),
            "{name} into the populated store: {got:?}"
        );
        assert_eq!(got.digests(), imp.digests(), "{name}: layer digests");
        assert_eq!(store.image_layers(name), imp.digests());
    }
}

// ---------------------------------------------------------------------------------------------
// 3. the Debian image as an umoci layout of GNU tar layers
// ---------------------------------------------------------------------------------------------

#[test]
fn debian_image_from_gnu_tar_layers() {
    require_root();
    let Some(img) = debian_image("debian_image_from_gnu_tar_layers") else {
        return;
    };
    let env = TestEnv::new("oci-debian");
    // The top layer as a container engine's upper directory holds it (char 0/0 whiteouts,
    // opaque xattrs, the kernel's trusted.overlay.* bookkeeping) becomes an OCI layer tar.
    let top = env.path("top-oci");
    convert_to_oci(&img.layer, &top);
    let (root_tar, top_tar) = (env.path("rootfs.tar"), env.path("top.tar"));
    gnu_tar(&img.rootfs, &root_tar);
    gnu_tar(&top, &top_tar);
    let layout = umoci_layout(&env.path("bookworm"), "minbase", &[root_tar, top_tar]);

    let store = StoreDir::new(&env.path("store"));
    let imp = store.import_image(&image_ref(&layout.dir, "minbase"), &[]);
    assert_eq!(imp.name, "bookworm:minbase");
    assert_eq!(imp.layers.len(), 2);
    assert!(imp.none_existed(), "{imp:?}");
    // The original layer directories are the same trees: the same digests.
    for (dir, digest) in [
        (&img.rootfs, &imp.digests()[0]),
        (&img.layer, &imp.digests()[1]),
    ] {
        let out = store.ok(&[spec("layer"), spec("import"), dir.as_os_str()]);
        assert_eq!(
            out.trim(),
            format!("{digest} Already exists"),
            "layer import {}",
            dir.display()
        );
    }

    let reference = Snapshot::take(&umoci_unpack(&layout.dir, "minbase", &env.path("bundle")));
    let stack = env.stack_paths(vec![
        store.dir.clone(),
        layout.dir.clone(),
        img.layer.clone(),
        img.rootfs.clone(),
    ]);
    let m = mount_image(&stack, &store, "bookworm:minbase", &[]);
    let mounted = Snapshot::take(m.path());
    let kernel = {
        let k = KernelOverlay::lower_only(&img.lowers(), &env.fresh_dir("mnt/k"))
            .unwrap_or_else(|e| panic!("{e}"));
        Snapshot::take(k.path())
    };
    m.unmount();
    assert_no_problems("mount invariants", &mount_invariants(&mounted));
    assert!(
        mounted.entries.len() > 3000,
        "only {} entries",
        mounted.entries.len()
    );
    assert_no_problems(
        "kernel overlay of the layer directories vs stratafs mount of the imported image",
        &image_problems(&kernel, &mounted, "kernel"),
    );
    assert_no_problems(
        "umoci unpack vs stratafs mount",
        &umoci_problems(&reference, &mounted, &[]),
    );
    stack.assert_layers_unchanged();
}

// ---------------------------------------------------------------------------------------------
// 4. exported layers read back by umoci
// ---------------------------------------------------------------------------------------------

/// Exports the layers of `image`, makes an umoci layout of the tars (`umoci raw add-layer`),
/// unpacks it and returns the rootfs snapshot; each exported tar must import alone to its
/// layer's digest.
fn umoci_view_of_exported(env: &TestEnv, store: &StoreDir, image: &str) -> Snapshot {
    let dir = env.fresh_dir("exported");
    let scratch = StoreDir::new(&env.fresh_dir("scratch-store"));
    let mut tars = Vec::new();
    for (i, d) in store.image_layers(image).iter().enumerate() {
        let t = dir.join(format!("{i}.tar"));
        store.export_layer(d, &t);
        assert_eq!(&scratch.import_layer(&t), d, "exported {d} imports back");
        tars.push(t);
    }
    let layout = umoci_layout(&env.path("reexported"), "x", &tars);
    Snapshot::take(&umoci_unpack(
        &layout.dir,
        "x",
        &env.path("bundle-exported"),
    ))
}

#[test]
fn exported_layers_unpack_with_umoci_like_the_mount() {
    require_root();
    let env = TestEnv::new("oci-export");
    let (layout, _) = crafted_umoci_layout(&env);
    let store = StoreDir::new(&env.path("store"));
    store.import_image(&image_ref(&layout.dir, "t"), &[]);
    let reference = umoci_view_of_exported(&env, &store, "crafted:t");
    check_crafted_view(&reference, "umoci (exported layers)");
    let mounted = mount_snapshot(&env, &store, "crafted:t", &[&layout.dir], &[]);
    assert_no_problems(
        "umoci unpack of the exported layers vs stratafs mount",
        &umoci_problems(&reference, &mounted, CRAFTED_NLINK),
    );
}

#[test]
fn exported_debian_layers_unpack_with_umoci_like_the_mount() {
    require_root();
    let Some(img) = debian_image("exported_debian_layers_unpack_with_umoci_like_the_mount") else {
        return;
    };
    let env = TestEnv::new("oci-export-debian");
    let store = StoreDir::new(&env.path("store"));
    let bottom = store.import_layer(&img.rootfs);
    let top = store.import_layer(&img.layer);
    store.ok(&["image", "create", "debian", &bottom, &top]);
    let reference = umoci_view_of_exported(&env, &store, "debian");
    let mounted = mount_snapshot(&env, &store, "debian", &[], &[]);
    assert!(
        mounted.entries.len() > 3000,
        "only {} entries",
        mounted.entries.len()
    );
    assert_no_problems(
        "umoci unpack of the exported Debian layers vs stratafs mount",
        &umoci_problems(&reference, &mounted, &[]),
    );
}

// ---------------------------------------------------------------------------------------------
// 5. multi-platform index
// ---------------------------------------------------------------------------------------------

fn one_file_layer(name: &str, content: &str) -> Vec<u8> {
    let mut t = LayerTar::new();
    t.dir(".", 0o755);
    t.file(name, content, 0o644);
    t.bytes()
}

#[test]
fn multi_platform_index_picks_the_platform() {
    require_root();
    let env = TestEnv::new("oci-platform");
    let base = one_file_layer("common", "shared base\n");
    let amd = one_file_layer("arch", "amd64\n");
    let arm = one_file_layer("arch", "arm64\n");
    // Content digests, whatever the compression.
    let scratch = StoreDir::new(&env.path("scratch-store"));
    let digest = |bytes: &[u8], n: &str| {
        let p = env.path(n);
        std::fs::write(&p, bytes).unwrap();
        scratch.import_layer(&p)
    };
    let (d_base, d_amd, d_arm) = (
        digest(&base, "base.tar"),
        digest(&amd, "amd.tar"),
        digest(&arm, "arm.tar"),
    );

    let build = |dir: &Path, nested: bool| {
        let l = Layout::create(dir);
        let m_amd = l.add_image(
            &[
                (base.clone(), Compression::Gzip),
                (amd.clone(), Compression::Gzip),
            ],
            ("linux", "amd64"),
        );
        let mut m_arm = l.add_image(
            &[
                (base.clone(), Compression::Gzip),
                (arm.clone(), Compression::Zstd),
            ],
            ("linux", "arm64"),
        );
        m_arm["platform"]["variant"] = serde_json::json!("v8");
        if nested {
            let index = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": MT_INDEX,
                "manifests": [m_amd, m_arm],
            });
            let bytes = l.put_json(&index);
            let mut d = descriptor(MT_INDEX, &bytes);
            d["annotations"] = serde_json::json!({REF_NAME: "multi"});
            l.set_index(vec![d]);
        } else {
            l.set_index(vec![m_amd, m_arm]);
        }
        l
    };

    for (nested, dirname) in [(true, "mp"), (false, "flat")] {
        let layout = build(&env.path(dirname), nested);
        let store = StoreDir::new(&env.path(&format!("store-{dirname}")));
        let refspec = if nested {
            image_ref(&layout.dir, "multi")
        } else {
            layout.dir.clone().into_os_string()
        };
        let default_name = if nested {
            format!("{dirname}:multi")
        } else {
            dirname.to_string()
        };
        let got = store.import_image(&refspec, &[]);
        assert_eq!(got.name, default_name);
        assert_eq!(
            got.digests(),
            vec![d_base.clone(), d_amd.clone()],
            "{dirname}: the host platform (linux/amd64) by default"
        );
        let got = store.import_image(&refspec, &["--platform", "linux/arm64", "--name", "arm"]);
        assert_eq!(got.name, "arm");
        assert_eq!(
            got.layers,
            vec![(d_base.clone(), true), (d_arm.clone(), false)],
            "{dirname}: --platform linux/arm64"
        );
        let got = store.import_image(
            &refspec,
            &["--platform", "linux/arm64/v8", "--name", "arm-v8"],
        );
        assert!(got.all_existed());
        assert_eq!(got.digests(), vec![d_base.clone(), d_arm.clone()]);

        let before = store.snapshot();
        let mut args = vec![spec("image"), spec("import"), refspec.as_os_str()];
        args.extend([spec("--platform"), spec("linux/s390x")]);
        let out = store.run(&args);
        let err = one_line_error(&out);
        for want in ["linux/s390x", "linux/amd64", "linux/arm64/v8"] {
            assert!(err.contains(want), "{dirname}: {err:?} should name {want}");
        }
        assert_no_problems(
            "store after an import for an unknown platform",
            &store_changes(&before, &store.snapshot()),
        );

        if nested {
            let mounted = mount_snapshot(&env, &store, "arm", &[&layout.dir], &[]);
            mounted.assert_content("arch", "arm64\n");
            mounted.assert_content("common", "shared base\n");
            mounted.assert_children("", &["arch", "common"]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 6. broken layouts
// ---------------------------------------------------------------------------------------------

/// Three single-file layers of 64 KiB of noise each (a flip in the middle of an uncompressed
/// blob lands in file data).
fn three_layers() -> Vec<Vec<u8>> {
    (0..3u64)
        .map(|i| {
            let mut t = LayerTar::new();
            t.dir(".", 0o755);
            t.file(format!("layer{i}"), noise(10 + i, 64 * 1024), 0o644);
            t.bytes()
        })
        .collect()
}

/// A layout `dir` with `layers` (compressed as given) as image tag `t`.
fn hand_layout(dir: &Path, layers: &[(Vec<u8>, Compression)]) -> Layout {
    let l = Layout::create(dir);
    let mut d = l.add_image(layers, ("linux", "amd64"));
    d.as_object_mut().unwrap().remove("platform");
    d["annotations"] = serde_json::json!({REF_NAME: "t"});
    l.set_index(vec![d]);
    l
}

/// A store holding an unrelated image (which a failed import must leave alone).
fn populated_store(env: &TestEnv) -> StoreDir {
    let store = StoreDir::new(&env.path("store"));
    let tar = env.path("unrelated.tar");
    std::fs::write(&tar, one_file_layer("unrelated", "keep me\n")).unwrap();
    let d = store.import_layer(&tar);
    store.ok(&["image", "create", "unrelated", &d]);
    store
}

/// Runs `image import DIR:t`, which must fail with one `stratafs:` line; returns the line,
/// after checking the store is as it was (except the directories a rollback touches) and
/// whether such a rollback happened (`rolled_back`: layers were published, then removed).
fn failing_import(store: &StoreDir, layout: &Layout, rolled_back: bool) -> String {
    let before = store.snapshot();
    let out = store.run(&[spec("image"), spec("import"), &image_ref(&layout.dir, "t")]);
    let err = one_line_error(&out);
    let after = store.snapshot();
    assert_no_problems(
        &format!("store after the failed import ({err})"),
        &store_changes(&before, &after),
    );
    let layers_dir = |s: &Snapshot| s.entry("layers/sha256").mtime;
    assert_eq!(
        layers_dir(&before) != layers_dir(&after),
        rolled_back,
        "layers/sha256 {} touched: was a layer published and rolled back? ({err})",
        if rolled_back { "not" } else { "was" }
    );
    err
}

#[test]
fn missing_blobs_fail_and_leave_the_store_unchanged() {
    require_root();
    let env = TestEnv::new("oci-missing");
    let store = populated_store(&env);
    let layers: Vec<_> = three_layers()
        .into_iter()
        .map(|t| (t, Compression::Gzip))
        .collect();

    let l = hand_layout(&env.path("no-layer"), &layers);
    let blob = l.layer_blobs("t")[1].clone();
    std::fs::remove_file(l.blob_path(&blob)).unwrap();
    let err = failing_import(&store, &l, false);
    assert!(
        err.contains(blob.trim_start_matches("sha256:")),
        "{err:?} should name the missing blob {blob}"
    );

    let l = hand_layout(&env.path("no-config"), &layers);
    let config = l.config_digest("t");
    std::fs::remove_file(l.blob_path(&config)).unwrap();
    let err = failing_import(&store, &l, false);
    assert!(
        err.contains(config.trim_start_matches("sha256:")),
        "{err:?} should name the missing config {config}"
    );
}

#[test]
fn corrupt_uncompressed_layer_names_the_blob_and_rolls_back() {
    require_root();
    let env = TestEnv::new("oci-corrupt-plain");
    let store = populated_store(&env);
    let layers: Vec<_> = three_layers()
        .into_iter()
        .map(|t| (t, Compression::None))
        .collect();
    let l = hand_layout(&env.path("plain"), &layers);
    let blob = l.layer_blobs("t")[2].clone();
    flip_byte(&l.blob_path(&blob), 0.5);
    let err = failing_import(&store, &l, true);
    assert!(err.contains(&blob), "{err:?} should name the blob {blob}");
}

/// Corrupt compressed layer blobs (a flipped bit in the middle, the last 100 bytes cut off)
/// in the top layer: the error must name the blob, and layers 1 and 2, imported by then, must
/// be rolled back.
#[test]
fn corrupt_compressed_layers_name_the_blob_and_roll_back() {
    require_root();
    let env = TestEnv::new("oci-corrupt-compressed");
    let store = populated_store(&env);
    let mut problems = Vec::new();
    for c in [Compression::Gzip, Compression::Zstd] {
        for damage in ["flip", "truncate"] {
            let layers: Vec<_> = three_layers().into_iter().map(|t| (t, c)).collect();
            let l = hand_layout(&env.path(&format!("{c:?}-{damage}")), &layers);
            let blob = l.layer_blobs("t")[2].clone();
            let p = l.blob_path(&blob);
            if damage == "flip" {
                flip_byte(&p, 0.5);
            } else {
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() - 100]).unwrap();
            }
            let err = failing_import(&store, &l, true);
            if !err.contains(blob.trim_start_matches("sha256:")) {
                problems.push(format!(
                    "{c:?} {damage}: {err:?} does not name the blob {blob}"
                ));
            }
        }
    }
    assert_no_problems("errors for corrupt compressed layers", &problems);
}

#[test]
fn wrong_diff_id_is_named_and_rolled_back() {
    require_root();
    let env = TestEnv::new("oci-diffid");
    let store = populated_store(&env);
    let layers: Vec<_> = three_layers()
        .into_iter()
        .map(|t| (t, Compression::Gzip))
        .collect();
    let l = hand_layout(&env.path("diffid"), &layers);
    let wrong = sha256_digest(b"not the second layer");
    l.rewrite_config("t", |c| {
        c["rootfs"]["diff_ids"][1] = serde_json::json!(wrong)
    });
    let err = failing_import(&store, &l, true);
    assert!(
        err.contains(&wrong),
        "{err:?} should name the diff_id {wrong}"
    );
}

/// A failed import must not change layers that were stored before it either: here the middle
/// layer's tree is already stored (imported from other tar bytes, so under other aliases) and
/// the top layer's blob is corrupt.
#[test]
fn failed_import_leaves_stored_layers_untouched() {
    require_root();
    let env = TestEnv::new("oci-rollback-aliases");
    let store = populated_store(&env);
    let mut tars = Vec::new();
    for i in 0..3u64 {
        let mut t = LayerTar::new();
        t.dir(".", 0o755);
        t.file(format!("layer{i}"), noise(10 + i, 64 * 1024), 0o644);
        tars.push(t);
    }
    let mut other_bytes = tars[1].clone();
    other_bytes.always_pax_mtime = true;
    let alt = env.path("layer1-other-bytes.tar");
    other_bytes.write(&alt);
    let stored = store.import_layer(&alt);

    let layers: Vec<_> = tars
        .iter()
        .map(|t| (t.bytes(), Compression::None))
        .collect();
    let l = hand_layout(&env.path("partly-stored"), &layers);
    // Precondition: the middle layer is the stored tree.
    let probe = StoreDir::new(&env.path("probe-store"));
    let ok = probe.import_image(&image_ref(&l.dir, "t"), &[]);
    assert_eq!(ok.digests()[1], stored, "middle layer = the stored tree");

    let blob = l.layer_blobs("t")[2].clone();
    flip_byte(&l.blob_path(&blob), 0.5);
    let err = failing_import(&store, &l, true);
    assert!(err.contains(&blob), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// Whiteout and new entry of the same name in one layer (OCI image-spec layer.md, "Whiteouts":
// "Files that are present in the same layer as a whiteout file can only be hidden by whiteout
// files in subsequent layers"): the lower entry is hidden, the new one shown; a new directory
// shows none of the lower one's children. The whiteout may come before or after the entry.
// ---------------------------------------------------------------------------------------------

#[test]
fn whiteout_and_new_entry_of_the_same_name_in_one_layer() {
    require_root();
    let env = TestEnv::new("oci-wh-same-layer");
    let mut l1 = LayerTar::new();
    l1.dir(".", 0o755);
    for d in ["dir-before", "dir-after", "file-over-dir"] {
        l1.dir(d, 0o755);
        l1.file(format!("{d}/old"), "old", 0o644);
    }
    l1.file("file", "old", 0o644);
    let mut l2 = LayerTar::new();
    l2.dir(".", 0o755);
    l2.whiteout("dir-before");
    l2.dir("dir-before", 0o700);
    l2.file("dir-before/new", "new", 0o644);
    l2.dir("dir-after", 0o700);
    l2.file("dir-after/new", "new", 0o644);
    l2.whiteout("dir-after");
    l2.whiteout("file-over-dir");
    l2.file("file-over-dir", "now a file", 0o644);
    l2.whiteout("file");
    l2.file("file", "new", 0o644);
    let tars = write_tars(&env.fresh_dir("tars"), &[l1, l2]);
    let layout = umoci_layout(&env.path("same"), "t", &tars);
    let mut reference = Snapshot::take(&umoci_unpack(&layout.dir, "t", &env.path("bundle")));
    // umoci 0.4.7 applies the whiteout that comes after `dir-after/` by emptying the directory
    // it just made, and leaves its mtime at the time of the unpack: the tar's is the one to
    // show (as for `dir-before`).
    let tar_mtime = (1_600_000_000, 0);
    reference.assert_children("dir-before", &["new"]);
    assert_eq!(reference.entry("dir-before").mtime, tar_mtime);
    reference
        .entries
        .get_mut(&b"dir-after"[..])
        .expect("umoci made dir-after")
        .mtime = tar_mtime;
    reference.assert_children("dir-after", &["new"]);
    reference.assert_content("file-over-dir", "now a file");
    reference.assert_content("file", "new");

    let store = StoreDir::new(&env.path("store"));
    let imp = store.import_image(&image_ref(&layout.dir, "t"), &[]);
    let mounted = mount_snapshot(&env, &store, &imp.name, &[&layout.dir], &[]);
    assert_no_problems(
        "umoci unpack vs stratafs mount",
        &umoci_problems(&reference, &mounted, &[]),
    );
}
