//! Merged view vs kernel overlayfs, for every whiteout/opaque dialect, a mixed-dialect stack and
//! the odd cases (special files, names, deep paths, xattrs, sparse files, statfs).

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;

/// A 3-layer stack exercising one whiteout dialect and one opaque dialect, with explicit
/// expectations checked on top of the kernel comparison.
fn dialect_scenario(name: &str, wh: Whiteout, op: Opaque) {
    require_root();
    let env = TestEnv::new(name);
    let base = env.layer("base");
    let mid = env.layer("mid");
    let top = env.layer("top");

    base.file("a", "base a");
    base.file("b", "base b");
    base.file("d/x", "base d/x");
    base.file("d/y", "base d/y");
    base.file("d/sub/z", "base d/sub/z");
    base.file("od/1", "base od/1");
    base.file("od/2", "base od/2");
    base.file("gone", "base gone");
    base.file("gonedir/f", "base gonedir/f");
    base.file("gonedir/deep/g", "base gonedir/deep/g");
    base.file("merged/base_only", "b");
    base.file("merged/shared", "base");
    base.file("merged/hidden_by_top", "base");
    base.file("nested/a/b/c/file", "deep base");
    base.file("nested/keep", "keep");
    base.file("wh_then_dir/old", "old");
    base.file("whiteout_in_bottom_target", "x");
    base.whiteout("nothing_below_bottom", wh);

    mid.whiteout("a", wh);
    mid.file("b", "mid b");
    mid.whiteout("d/x", wh);
    mid.whiteout("gonedir", wh);
    mid.whiteout("gone", wh);
    mid.file("merged/mid_only", "m");
    mid.file("merged/shared", "mid");
    mid.whiteout("nothing_below", wh);
    mid.opaque("od", op);
    mid.file("od/3", "mid od/3");
    mid.whiteout("wh_then_dir", wh);
    mid.opaque("nested/a", op);
    mid.file("nested/a/new", "new");

    top.file("merged/top_only", "t");
    top.whiteout("merged/hidden_by_top", wh);
    top.dir("wh_then_dir");
    top.file("wh_then_dir/new", "new");
    top.symlink("gone", "somewhere");
    top.file("d/sub/top", "top in d/sub");

    let stack = env.stack(&[&top, &mid, &base]);
    let (_k, s) = stack.assert_matches_kernel();

    s.assert_absent("a");
    s.assert_content("b", "mid b");
    s.assert_children("d", &["sub", "y"]);
    s.assert_children("d/sub", &["top", "z"]);
    s.assert_children("od", &["3"]);
    s.assert_absent("gonedir");
    assert_eq!(s.entry("gone").kind, Kind::Symlink);
    s.assert_children("merged", &["base_only", "mid_only", "shared", "top_only"]);
    s.assert_content("merged/shared", "mid");
    s.assert_children("nested", &["a", "keep"]);
    s.assert_children("nested/a", &["new"]);
    s.assert_children("wh_then_dir", &["new"]);
    s.assert_absent("nothing_below");
    s.assert_absent("nothing_below_bottom");
    s.assert_children(
        "",
        &[
            "b",
            "d",
            "gone",
            "merged",
            "nested",
            "od",
            "wh_then_dir",
            "whiteout_in_bottom_target",
        ],
    );
}

#[test]
fn whiteout_chardev() {
    dialect_scenario("wh-chardev", Whiteout::CharDev, Opaque::Trusted);
}

#[test]
fn whiteout_xattr_trusted() {
    dialect_scenario("wh-xattr-trusted", Whiteout::XattrTrusted, Opaque::Trusted);
}

#[test]
fn whiteout_xattr_user() {
    dialect_scenario("wh-xattr-user", Whiteout::XattrUser, Opaque::UserOverlay);
}

#[test]
fn whiteout_oci() {
    dialect_scenario("wh-oci", Whiteout::Oci, Opaque::Oci);
}

#[test]
fn opaque_trusted() {
    dialect_scenario("op-trusted", Whiteout::CharDev, Opaque::Trusted);
}

#[test]
fn opaque_user_overlay() {
    dialect_scenario("op-user-overlay", Whiteout::CharDev, Opaque::UserOverlay);
}

#[test]
fn opaque_user_fuseoverlayfs() {
    dialect_scenario(
        "op-user-fuseoverlayfs",
        Whiteout::CharDev,
        Opaque::UserFuseOverlayfs,
    );
}

#[test]
fn opaque_oci() {
    dialect_scenario("op-oci", Whiteout::CharDev, Opaque::Oci);
}

#[test]
fn every_whiteout_opaque_combination() {
    for wh in ALL_WHITEOUTS {
        for op in ALL_OPAQUES {
            eprintln!("combination {wh:?} + {op:?}");
            dialect_scenario(&format!("combo-{wh:?}-{op:?}"), wh, op);
        }
    }
}

/// `opaque=x` ("contains xattr whiteouts") is not opaque, in either namespace.
#[test]
fn opaque_x_is_not_opaque() {
    require_root();
    let env = TestEnv::new("opaque-x");
    let base = env.layer("base");
    let top = env.layer("top");
    base.file("t/below", "below");
    base.file("u/below", "below");
    base.file("both/below", "below");
    top.dir("t").xattr("trusted.overlay.opaque", b"x");
    top.file("t/above", "above");
    top.dir("u").xattr("user.overlay.opaque", b"x");
    top.file("u/above", "above");
    top.dir("both")
        .xattr("trusted.overlay.opaque", b"x")
        .xattr("user.overlay.opaque", b"x");
    let stack = env.stack(&[&top, &base]);
    let (_k, s) = stack.assert_matches_kernel();
    s.assert_children("t", &["above", "below"]);
    s.assert_children("u", &["above", "below"]);
    s.assert_children("both", &["below"]);
}

/// Three layers, each mixing dialects, with every odd case of the contract.
#[test]
fn mixed_dialects_three_layers() {
    require_root();
    let env = TestEnv::new("mixed");
    let base = env.layer("base");
    let mid = env.layer("mid");
    let top = env.layer("top");

    // base: user.* dialects, markers in the bottom layer, lots of file kinds.
    base.file("etc/passwd", "root:x:0:0::/root:/bin/sh\n")
        .mtime(1_600_000_000, 123_456_789);
    base.file("etc/shadow", "secret").mode(0o640).owner(0, 42);
    base.file("bin/su", "su").owner(0, 0).mode(0o4755);
    base.file("bin/wall", "wall").owner(0, 5).mode(0o2755);
    base.dir("tmp").mode(0o1777);
    base.file("owned", "x")
        .owner(1234, 5678)
        .mtime(1_000_000_000, 1);
    base.file("empty", "");
    base.file("opq_over_file", "I am a file in base");
    base.file("file_over_dir/inside", "hidden");
    base.file("dir_over_wh/old", "old");
    base.file("symlink_over_dir/inside", "hidden");
    base.symlink("dir_over_symlink", "/etc");
    base.file("usr_share/doc/a", "a");
    base.file("usr_share/doc/b", "b");
    base.file("usr_share/man/m1", "m");
    base.file("wh_user/gone", "gone");
    base.file("wh_user/stays", "stays");
    base.whiteout("wh_user_bottom_nothing", Whiteout::XattrUser);
    base.opaque("opaque_bottom", Opaque::UserOverlay);
    base.file("opaque_bottom/f", "f");
    base.whiteout("oci_bottom_nothing", Whiteout::Oci);
    base.opaque("oci_opaque_bottom", Opaque::Oci);
    base.file("oci_opaque_bottom/f", "f");
    base.file("o_fuse/below", "below");
    base.file("o_user/below", "below");
    base.file("o_oci/below", "below");
    base.file("o_trusted/below", "below");
    base.sparse_file("sparse");
    base.fifo("fifo");
    base.chardev("devnull", 1, 3);
    base.blockdev("loop0", 7, 0);
    base.socket("sock");
    base.file("hl/one", "linked").mtime(1_500_000_000, 0);
    base.hardlink("hl/one", "hl/two");
    base.hardlink("hl/one", "other/three");
    base.file("x/y/z", "xyz");

    // mid: trusted xattr whiteouts, fuseoverlayfs opaque, chardev whiteouts.
    mid.whiteout("wh_user/gone", Whiteout::XattrUser);
    mid.whiteout("usr_share/doc/a", Whiteout::XattrTrusted);
    mid.file("usr_share/doc/c", "c");
    mid.opaque("o_fuse", Opaque::UserFuseOverlayfs);
    mid.file("o_fuse/mid", "mid");
    mid.whiteout("dir_over_wh", Whiteout::CharDev);
    mid.file("x/y/mid", "mid");
    mid.whiteout("hl/two", Whiteout::CharDev);
    mid.file("etc/hostname", "mid-host\n");

    // top: OCI whiteouts and opaques, chardev whiteouts, odd replacements.
    top.opaque("opq_over_file", Opaque::Trusted);
    top.file("opq_over_file/new", "new");
    top.file("file_over_dir", "now a file");
    top.dir("dir_over_wh");
    top.file("dir_over_wh/new", "new");
    top.symlink("symlink_over_dir", "usr_share");
    top.dir("dir_over_symlink");
    top.file("dir_over_symlink/mine", "mine");
    top.whiteout("usr_share/man", Whiteout::Oci);
    top.whiteout("usr_share/doc/b", Whiteout::Oci);
    top.opaque("o_oci", Opaque::Oci);
    top.file("o_oci/top", "top");
    top.opaque("o_user", Opaque::UserOverlay);
    top.file("o_user/top", "top");
    top.opaque("o_trusted", Opaque::Trusted);
    top.whiteout("etc/shadow", Whiteout::CharDev);
    top.file("etc/motd", "hello\n").mode(0o600);
    top.chardev("x/y/z", 1, 3);
    top.whiteout("oci_top_nothing", Whiteout::Oci);

    let stack = env.stack(&[&top, &mid, &base]);
    let (_k, s) = stack.assert_matches_kernel();

    s.assert_children("opq_over_file", &["new"]);
    assert_eq!(s.entry("file_over_dir").kind, Kind::File);
    s.assert_children("dir_over_wh", &["new"]);
    assert_eq!(s.entry("symlink_over_dir").kind, Kind::Symlink);
    s.assert_children("dir_over_symlink", &["mine"]);
    s.assert_children("usr_share", &["doc"]);
    s.assert_children("usr_share/doc", &["c"]);
    s.assert_children("wh_user", &["stays"]);
    s.assert_children("opaque_bottom", &["f"]);
    s.assert_children("oci_opaque_bottom", &["f"]);
    s.assert_children("o_fuse", &["mid"]);
    s.assert_children("o_oci", &["top"]);
    s.assert_children("o_user", &["top"]);
    s.assert_children("o_trusted", &[]);
    s.assert_children("etc", &["hostname", "motd", "passwd"]);
    s.assert_children("hl", &["one"]);
    let z = s.entry("x/y/z");
    assert_eq!((z.kind, major_minor(z.rdev)), (Kind::CharDev, (1, 3)));
    s.assert_children("x/y", &["mid", "z"]);
    assert_eq!(s.entry("bin/su").mode & 0o7777, 0o4755);
    assert_eq!(s.entry("bin/wall").mode & 0o7777, 0o2755);
    assert_eq!(s.entry("tmp").mode & 0o7777, 0o1777);
    assert_eq!((s.entry("owned").uid, s.entry("owned").gid), (1234, 5678));
    assert_eq!(s.entry("etc/passwd").mtime, (1_600_000_000, 123_456_789));
    for absent in [
        "wh_user_bottom_nothing",
        "oci_bottom_nothing",
        "oci_top_nothing",
        "etc/shadow",
    ] {
        s.assert_absent(absent);
    }
    assert_eq!(s.entry("fifo").kind, Kind::Fifo);
    assert_eq!(s.entry("sock").kind, Kind::Socket);
    assert_eq!(
        (s.entry("loop0").kind, major_minor(s.entry("loop0").rdev)),
        (Kind::BlockDev, (7, 0))
    );
}

/// Fifos, sockets and real device nodes (char 1:3 is not a whiteout) show up as they are.
#[test]
fn special_files_show_through() {
    require_root();
    let env = TestEnv::new("special");
    let base = env.layer("base");
    let top = env.layer("top");
    base.file("null", "a regular file hidden by a device");
    base.file("dev/console", "hidden");
    top.chardev("null", 1, 3).mode(0o666);
    top.chardev("dev/console", 5, 1).mode(0o600);
    top.chardev("dev/zero_major_nonzero_minor", 0, 1);
    top.chardev("dev/nonzero_major_zero_minor", 4, 0);
    top.blockdev("dev/sda", 8, 0);
    top.fifo("dev/fifo").mode(0o600);
    top.socket("dev/sock");
    let stack = env.stack(&[&top, &base]);
    let (_k, s) = stack.assert_matches_kernel();
    let n = s.entry("null");
    assert_eq!(
        (n.kind, major_minor(n.rdev), n.mode & 0o7777),
        (Kind::CharDev, (1, 3), 0o666)
    );
    s.assert_children(
        "dev",
        &[
            "console",
            "fifo",
            "nonzero_major_zero_minor",
            "sda",
            "sock",
            "zero_major_nonzero_minor",
        ],
    );
    assert_eq!(
        major_minor(s.entry("dev/zero_major_nonzero_minor").rdev),
        (0, 1)
    );
    assert_eq!(
        major_minor(s.entry("dev/nonzero_major_zero_minor").rdev),
        (4, 0)
    );
}

/// Names with spaces, newlines, UTF-8, non-UTF-8 bytes, 255 bytes, and near-marker names.
#[test]
fn odd_names() {
    require_root();
    let env = TestEnv::new("names");
    let base = env.layer("base");
    let top = env.layer("top");
    let long = "L".repeat(255);
    let names: Vec<Vec<u8>> = vec![
        b"with space".to_vec(),
        b" leading and trailing ".to_vec(),
        b"new\nline".to_vec(),
        b"tab\there".to_vec(),
        "utf8-\u{e9}\u{e8}-\u{2603}-\u{1f600}".as_bytes().to_vec(),
        b"latin1-\xe9\xff\xfe".to_vec(),
        b"-rf".to_vec(),
        b"back\\slash".to_vec(),
        b"...".to_vec(),
        b".wh".to_vec(),
        b"wh.file".to_vec(),
        b"x.wh.y".to_vec(),
        b".whx".to_vec(),
        b"colon:comma,".to_vec(),
        b"star*?[]".to_vec(),
        long.as_bytes().to_vec(),
    ];
    for (i, n) in names.iter().enumerate() {
        base.file(n, format!("base {i}"));
        let mut d = b"dir ".to_vec();
        d.extend_from_slice(if n.len() > 250 { b"long" } else { n });
        base.file([&d[..], b"/inner"].concat(), "inner");
        top.file([&d[..], b"/", &n[..]].concat(), format!("top {i}"));
        if i % 2 == 0 {
            top.file(n, format!("top {i}"));
        }
    }
    top.whiteout(b"dir new\nline/inner", Whiteout::CharDev);
    top.whiteout("dir with space/inner", Whiteout::Oci);
    let stack = env.stack(&[&top, &base]);
    let (_k, s) = stack.assert_matches_kernel();
    for (i, n) in names.iter().enumerate() {
        s.assert_content(
            n,
            if i % 2 == 0 {
                format!("top {i}")
            } else {
                format!("base {i}")
            },
        );
    }
    s.assert_absent("dir with space/inner");
    s.assert_absent(b"dir new\nline/inner");
}

/// A 60-level deep path, merged across three layers at every level.
#[test]
fn deep_paths() {
    require_root();
    let env = TestEnv::new("deep");
    let base = env.layer("base");
    let mid = env.layer("mid");
    let top = env.layer("top");
    let mut path = String::new();
    for level in 0..60 {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(&format!("level{level:02}"));
        base.file(format!("{path}/base"), format!("base {level}"));
        if level % 2 == 0 {
            mid.file(format!("{path}/mid"), format!("mid {level}"));
        }
        if level % 3 == 0 {
            top.file(format!("{path}/top"), format!("top {level}"));
        }
        if level % 10 == 5 {
            top.whiteout(format!("{path}/base"), Whiteout::CharDev);
        }
    }
    top.file(format!("{path}/deepest"), "deepest");
    let stack = env.stack(&[&top, &mid, &base]);
    let (_k, s) = stack.assert_matches_kernel();
    s.assert_content(format!("{path}/deepest"), "deepest");
    s.assert_content(format!("{path}/base"), "base 59");
    assert!(s.entries.len() > 150);
}

/// user.* xattrs with binary values (NUL, 0xff), empty and large values; trusted.* non-overlay
/// xattrs; the size-query and ERANGE protocol of getxattr/listxattr.
#[test]
fn xattrs_binary_values() {
    require_root();
    let env = TestEnv::new("xattrs");
    let base = env.layer("base");
    let top = env.layer("top");
    let binary: Vec<u8> = vec![0, 1, 2, 0xff, 0, 0xfe, b'a', 0];
    let large: Vec<u8> = (0..4000u32).map(|i| (i * 7 % 256) as u8).collect();
    base.file("f", "f")
        .xattr("user.binary", &binary)
        .xattr("user.empty", b"")
        .xattr("user.large", &large)
        .xattr("user.text", b"hello")
        .xattr("trusted.test", b"trusted value");
    base.dir("d")
        .xattr("user.dir", b"\xff\xff")
        .xattr("user.overlay.opaque", b"n");
    top.file("e/g", "g")
        .xattr("user.z", b"z")
        .xattr("user.a", b"a");
    // A merged directory has the xattrs of its top-most instance.
    base.dir("shadowdir").xattr("user.lower", b"lower");
    base.file("shadowdir/below", "");
    top.dir("shadowdir").xattr("user.upper", b"upper");
    top.symlink("link", "f")
        .xattr("trusted.linkattr", b"\x00\xff");
    for i in 0..50 {
        base.file("many", "many")
            .xattr(&format!("user.attr{i:03}"), format!("value {i}").as_bytes());
    }
    let stack = env.stack(&[&top, &base]);
    stack.assert_matches_kernel();

    let m = stack.stratafs();
    let f = m.join("f");
    assert_eq!(lgetxattr(&f, b"user.binary").unwrap(), binary);
    assert_eq!(lgetxattr(&f, b"user.empty").unwrap(), b"");
    assert_eq!(lgetxattr(&f, b"user.large").unwrap(), large);
    assert_eq!(lgetxattr(&f, b"trusted.test").unwrap(), b"trusted value");
    assert_eq!(
        lgetxattr(&m.join("link"), b"trusted.linkattr").unwrap(),
        b"\x00\xff"
    );
    assert_eq!(
        lgetxattr(&f, b"user.missing").map_err(|e| e.raw_os_error()),
        Err(Some(libc::ENODATA))
    );
    let d = m.join("d");
    assert_eq!(lgetxattr(&d, b"user.dir").unwrap(), b"\xff\xff");
    assert!(
        lgetxattr(&d, b"user.overlay.opaque").is_err(),
        "user.overlay.* must be hidden"
    );
    let sd: Vec<Vec<u8>> = llistxattr(&m.join("shadowdir")).unwrap();
    assert_eq!(
        sd,
        vec![b"user.upper".to_vec()],
        "xattrs of a merged dir come from its top-most instance"
    );
    let names = llistxattr(&m.join("many")).unwrap();
    assert_eq!(names.len(), 50, "{names:?}");

    // Size query and ERANGE, compared with the kernel.
    let k = stack.kernel();
    for (path_s, path_k) in [(m.join("f"), k.join("f")), (m.join("many"), k.join("many"))] {
        for which in [&path_s, &path_k] {
            let c = cpath(which);
            // SAFETY: size queries with NULL buffers, then a too-small buffer.
            let need = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
            assert!(
                need > 0,
                "listxattr size query on {}: {}",
                which.display(),
                errno_name(errno())
            );
            let mut small = vec![0i8; 3];
            let r = unsafe { libc::llistxattr(c.as_ptr(), small.as_mut_ptr(), small.len()) };
            assert_eq!(
                (r, errno()),
                (-1, libc::ERANGE),
                "listxattr with small buffer on {}",
                which.display()
            );
        }
        let cs = cpath(&path_s);
        let ck = cpath(&path_k);
        // SAFETY: size queries.
        let ns = unsafe { libc::llistxattr(cs.as_ptr(), std::ptr::null_mut(), 0) };
        let nk = unsafe { libc::llistxattr(ck.as_ptr(), std::ptr::null_mut(), 0) };
        let hidden_in_kernel: usize = llistxattr(&path_k)
            .unwrap()
            .iter()
            .filter(|n| is_hidden_xattr(n))
            .map(|n| n.len() + 1)
            .sum();
        assert_eq!(
            ns as usize,
            nk as usize - hidden_in_kernel,
            "listxattr size of {}",
            path_s.display()
        );
    }
    let c = cpath(&m.join("f"));
    let name = std::ffi::CString::new("user.large").unwrap();
    let mut small = vec![0u8; 10];
    // SAFETY: buffer valid for its length.
    let r = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            name.as_ptr(),
            small.as_mut_ptr().cast(),
            small.len(),
        )
    };
    assert_eq!(
        (r, errno()),
        (-1, libc::ERANGE),
        "getxattr with a small buffer"
    );
    let r = unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(r, 4000, "getxattr size query");
}

/// Names starting with `.wh.` cannot be looked up through the mount (EINVAL), whether or not
/// such a file exists in a layer.
#[test]
fn whiteout_names_cannot_be_looked_up() {
    require_root();
    let env = TestEnv::new("wh-lookup");
    let base = env.layer("base");
    let top = env.layer("top");
    base.file("foo", "foo");
    base.file("dir/bar", "bar");
    top.whiteout("foo", Whiteout::Oci);
    top.whiteout("dir/bar", Whiteout::Oci);
    top.opaque("opq", Opaque::Oci);
    let stack = env.stack(&[&top, &base]);
    let m = stack.stratafs();
    for p in [
        ".wh.foo",
        ".wh.nonexistent",
        ".wh..wh..opq",
        "opq/.wh..wh..opq",
        "dir/.wh.bar",
        "dir/.wh.",
        ".wh.dir",
    ] {
        let r = fs::symlink_metadata(m.join(p)).map_err(|e| e.raw_os_error());
        assert_eq!(r.map(|_| ()), Err(Some(libc::EINVAL)), "lstat {p}");
        let r = fs::File::open(m.join(p)).map_err(|e| e.raw_os_error());
        assert_eq!(r.map(|_| ()), Err(Some(libc::EINVAL)), "open {p}");
    }
    for p in ["foo", "dir/bar"] {
        let r = fs::symlink_metadata(m.join(p)).map_err(|e| e.raw_os_error());
        assert_eq!(r.map(|_| ()), Err(Some(libc::ENOENT)), "lstat {p}");
    }
}

/// No marker file and no private xattr is visible anywhere, in any dialect, in any layer.
#[test]
fn markers_never_show_through() {
    require_root();
    let env = TestEnv::new("markers");
    let layers: Vec<Layer> = (0..3).map(|i| env.layer(&format!("l{i}"))).collect();
    for (i, l) in layers.iter().enumerate() {
        for (j, wh) in ALL_WHITEOUTS.iter().enumerate() {
            l.file(format!("d{j}/victim{i}"), "v");
            l.whiteout(format!("d{j}/wh{i}"), *wh);
            l.whiteout(format!("root_wh_{i}_{j}"), *wh);
        }
        for (j, op) in ALL_OPAQUES.iter().enumerate() {
            l.opaque(format!("o{j}_{i}"), *op);
            l.file(format!("o{j}_{i}/f"), "f");
        }
        l.file(format!("plain{i}"), "p")
            .xattr("user.overlay.origin", b"o")
            .xattr("trusted.overlay.origin", b"o")
            .xattr("user.fuseoverlayfs.foo", b"f")
            .xattr("user.stratafs.origin", b"s")
            .xattr("user.visible", b"yes");
    }
    let refs: Vec<&Layer> = layers.iter().collect();
    let stack = env.stack(&refs);
    let (_k, s) = stack.assert_matches_kernel();
    for i in 0..3 {
        let e = s.entry(format!("plain{i}"));
        let names: Vec<&[u8]> = e.xattrs.keys().map(|k| k.as_slice()).collect();
        assert_eq!(names, vec![&b"user.visible"[..]], "xattrs of plain{i}");
    }
    let m = stack.stratafs();
    for name in [
        &b"user.overlay.origin"[..],
        b"trusted.overlay.origin",
        b"user.fuseoverlayfs.foo",
        b"user.stratafs.origin",
    ] {
        assert!(
            lgetxattr(&m.join("plain0"), name).is_err(),
            "getxattr {} visible",
            name.escape_ascii()
        );
    }
}

/// SEEK_DATA / SEEK_HOLE on a sparse file give the kernel's answers.
#[test]
fn sparse_file_seek_data_hole() {
    require_root();
    let env = TestEnv::new("sparse");
    let base = env.layer("base");
    let top = env.layer("top");
    base.sparse_file("sparse");
    top.sparse_file("dir/sparse2");
    base.file("dense", vec![7u8; 200_000]);
    let stack = env.stack(&[&top, &base]);
    let k = stack.kernel();
    let m = stack.stratafs();
    let size = (10u64 << 20) + 65536;
    let offsets: Vec<i64> = vec![
        0,
        1,
        4095,
        4096,
        65535,
        65536,
        65537,
        1 << 20,
        (10 << 20) - 1,
        10 << 20,
        (10 << 20) + 1,
        size as i64 - 1,
        size as i64,
        size as i64 + 1,
        1 << 30,
    ];
    let mut problems = Vec::new();
    for rel in ["sparse", "dir/sparse2", "dense"] {
        let fk = fs::File::open(k.join(rel)).unwrap();
        let fs_ = fs::File::open(m.join(rel)).unwrap();
        let raw = fs::File::open(if rel == "dir/sparse2" {
            top.path(rel)
        } else {
            base.path(rel)
        })
        .unwrap();
        for &off in &offsets {
            for (wname, whence) in [
                ("SEEK_DATA", libc::SEEK_DATA),
                ("SEEK_HOLE", libc::SEEK_HOLE),
            ] {
                let rk = lseek(fk.as_raw_fd(), off, whence);
                let rs = lseek(fs_.as_raw_fd(), off, whence);
                let rr = lseek(raw.as_raw_fd(), off, whence);
                if rk != rs {
                    problems.push(format!(
                        "{rel}: lseek({off}, {wname}): kernel {} vs stratafs {} (layer file {})",
                        show_res(&rk),
                        show_res(&rs),
                        show_res(&rr)
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // And the data itself.
    assert_eq!(
        hash_file(&m.join("sparse")).unwrap(),
        hash_file(&base.path("sparse")).unwrap()
    );
    assert_eq!(fs::metadata(m.join("sparse")).unwrap().size(), size);
}

/// statfs works and reports the top layer's filesystem like the kernel does.
#[test]
fn statfs_reports_top_layer() {
    require_root();
    let env = TestEnv::new("statfs");
    let base = env.layer("base");
    let top = env.layer("top");
    base.file("f", "f");
    top.file("g", "g");
    let stack = env.stack(&[&top, &base]);
    let k = stack.kernel();
    let m = stack.stratafs();
    let sk = statvfs(k.path()).expect("statvfs on kernel overlay");
    let ss = statvfs(m.path()).unwrap_or_else(|e| panic!("statvfs on stratafs: {}", errno_name(e)));
    let st = statvfs(&top.root).unwrap();
    let total = |s: &libc::statvfs| s.f_blocks as u128 * s.f_frsize as u128;
    assert_eq!(total(&ss), total(&st), "total size vs top layer filesystem");
    assert_eq!(total(&ss), total(&sk), "total size vs kernel");
    assert_eq!(ss.f_files, st.f_files, "f_files vs top layer filesystem");
    assert_eq!(ss.f_namemax, sk.f_namemax, "f_namemax vs kernel");
    assert!(
        ss.f_bfree > 0 && ss.f_bfree <= ss.f_blocks,
        "f_bfree {}",
        ss.f_bfree
    );
    let st2 = statvfs(&m.join("f")).expect("statvfs on a file of the mount");
    assert_eq!(total(&st2), total(&ss));
}

/// Regular file reads at odd offsets and sizes return the layer's bytes.
#[test]
fn file_reads_at_offsets() {
    require_root();
    let env = TestEnv::new("reads");
    let base = env.layer("base");
    let top = env.layer("top");
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    base.file("big", &data);
    top.file("small", "0123456789");
    let stack = env.stack(&[&top, &base]);
    let m = stack.stratafs();
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(m.join("big")).unwrap();
    for (off, len) in [
        (0usize, 1usize),
        (1, 4095),
        (4095, 2),
        (65535, 131073),
        (2_999_990, 100),
        (3_000_000, 10),
        (1_234_567, 1_000_000),
    ] {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        loop {
            let n = f.read_at(&mut buf[got..], (off + got) as u64).unwrap();
            if n == 0 || got + n == len {
                got += n;
                break;
            }
            got += n;
        }
        let end = (off + len).min(data.len());
        let expect = if off < data.len() {
            &data[off..end]
        } else {
            &[][..]
        };
        assert_eq!(&buf[..got], expect, "read_at({off}, {len})");
    }
    assert_eq!(fs::read(m.join("small")).unwrap(), b"0123456789");
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

/// An opaque marker on a layer's root directory: the kernel ignores it (the root is always
/// merged); stratafs must do the same, in every dialect, and hide the marker.
#[test]
fn opaque_marker_on_layer_root() {
    require_root();
    for op in ALL_OPAQUES {
        let env = TestEnv::new(&format!("root-opaque-{op:?}"));
        let base = env.layer("base");
        let top = env.layer("top");
        base.file("below", "b");
        base.file("d/below", "b");
        top.file("above", "a");
        top.opaque("", op);
        top.opaque("d", op);
        top.file("d/above", "a");
        let stack = env.stack(&[&top, &base]);
        let (_k, s) = stack.assert_matches_kernel();
        s.assert_children("", &["above", "below", "d"]);
        s.assert_children("d", &["above"]);
    }
}

/// Permission checks for an unprivileged caller give the kernel's answers (modes of the
/// top-most instance of a merged directory apply to everything below it).
#[test]
fn permissions_for_unprivileged_caller_match_kernel() {
    use std::os::unix::process::CommandExt;
    require_root();
    let env = TestEnv::new("perms");
    let base = env.layer("base");
    let top = env.layer("top");
    base.file("locked/lower_file", "lower").mode(0o644);
    top.dir("locked").mode(0o700);
    base.file("opened/lower_file", "lower").mode(0o644);
    base.dir("opened").mode(0o700);
    top.dir("opened").mode(0o755);
    top.file("secret", "s").mode(0o600);
    top.file("public", "p").mode(0o644);
    top.file("mine", "m").mode(0o600).owner(65534, 65534);
    top.file("group", "g").mode(0o640).owner(0, 65534);
    top.file("script", "#!/bin/sh\necho run\n").mode(0o755);
    top.file("noexec", "#!/bin/sh\necho run\n").mode(0o644);
    top.file("traverse/inside", "i").mode(0o644);
    top.dir("traverse").mode(0o711);
    top.file("private/inside", "i");
    top.dir("private").mode(0o700);
    // POSIX ACLs (binary system.posix_acl_access values): one grants uid 65534 what the mode
    // bits deny, one denies what the mode bits grant; a lower-layer dir with ACLs.
    let n = u32::MAX;
    top.file("acl_allows", "a").mode(0o600).xattr(
        "system.posix_acl_access",
        &posix_acl(&[
            (ACL_USER_OBJ, 6, n),
            (ACL_USER, 4, 65534),
            (ACL_GROUP_OBJ, 0, n),
            (ACL_MASK, 4, n),
            (ACL_OTHER, 0, n),
        ]),
    );
    top.file("acl_denies", "d").mode(0o644).xattr(
        "system.posix_acl_access",
        &posix_acl(&[
            (ACL_USER_OBJ, 6, n),
            (ACL_USER, 0, 65534),
            (ACL_GROUP_OBJ, 4, n),
            (ACL_MASK, 4, n),
            (ACL_OTHER, 4, n),
        ]),
    );
    base.file("acl_dir/f", "f").mode(0o600);
    base.dir("acl_dir")
        .mode(0o700)
        .xattr(
            "system.posix_acl_access",
            &posix_acl(&[
                (ACL_USER_OBJ, 7, n),
                (ACL_USER, 5, 65534),
                (ACL_GROUP_OBJ, 0, n),
                (ACL_MASK, 5, n),
                (ACL_OTHER, 0, n),
            ]),
        )
        .xattr(
            "system.posix_acl_default",
            &posix_acl(&[
                (ACL_USER_OBJ, 7, n),
                (ACL_USER, 4, 65534),
                (ACL_GROUP_OBJ, 0, n),
                (ACL_MASK, 4, n),
                (ACL_OTHER, 0, n),
            ]),
        );
    let paths = [
        "locked",
        "locked/lower_file",
        "opened/lower_file",
        "secret",
        "public",
        "mine",
        "group",
        "script",
        "noexec",
        "traverse",
        "traverse/inside",
        "private",
        "private/inside",
        "acl_allows",
        "acl_denies",
        "acl_dir",
        "acl_dir/f",
    ];
    let stack = env.stack(&[&top, &base]);
    let k = stack.kernel();
    let m = stack.stratafs();
    let script = r#"cd "$1" || exit 99; shift
for p in "$@"; do
  cat "$p" >/dev/null 2>&1; a=$?; ls "$p" >/dev/null 2>&1; b=$?; stat "$p" >/dev/null 2>&1; c=$?
  [ -x "$p" ]; d=$?; [ -w "$p" ]; e=$?; "./$p" >/dev/null 2>&1; f=$?
  echo "$p cat=$a ls=$b stat=$c x=$d w=$e exec=$f"
done"#;
    let run = |root: &std::path::Path| {
        let out = run_timeout(
            std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .arg("sh")
                .arg(root)
                .args(paths)
                .uid(65534)
                .gid(65534),
            std::time::Duration::from_secs(60),
        );
        assert!(out.success(), "{}", out.describe());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (ko, so) = (run(k.path()), run(m.path()));
    assert!(
        ko.contains("public cat=0") && ko.contains("secret cat=1"),
        "test setup: {ko}"
    );
    assert!(
        ko.contains("acl_allows cat=0") && ko.contains("acl_denies cat=1"),
        "test setup (ACLs): {ko}"
    );
    let diffs: Vec<String> = ko
        .lines()
        .zip(so.lines())
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("kernel: {a}\n  stratafs: {b}"))
        .collect();
    assert!(
        diffs.is_empty(),
        "{}",
        format_problems("permission checks as uid 65534", &diffs)
    );
    assert_eq!(ko.lines().count(), so.lines().count());
}

/// Several threads walking and reading the mount at once (while the kernel is made to forget
/// inodes) all see exactly the single-threaded snapshot.
#[test]
fn concurrent_readers_see_a_consistent_tree() {
    require_root();
    let env = TestEnv::new("concurrent");
    let base = env.layer("base");
    let mid = env.layer("mid");
    let top = env.layer("top");
    for i in 0..400 {
        base.file(format!("d{}/f{i}", i % 7), format!("base {i}"));
        if i % 3 == 0 {
            mid.file(format!("d{}/f{i}", i % 7), format!("mid {i}"));
        }
        if i % 5 == 0 {
            top.whiteout(format!("d{}/f{i}", i % 7), Whiteout::CharDev);
        }
    }
    let big: Vec<u8> = (0..4_000_000u32).map(|i| (i % 253) as u8).collect();
    base.file("big", &big);
    base.file("hl/a", "linked");
    base.hardlink("hl/a", "hl/b");
    let stack = env.stack(&[&top, &mid, &base]);
    let m = stack.stratafs();
    let reference = Snapshot::take(m.path());
    let root = m.path().to_path_buf();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let forgetter = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = fs::write("/proc/sys/vm/drop_caches", "2");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        })
    };
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let root = root.clone();
            std::thread::spawn(move || (0..3).map(|_| Snapshot::take(&root)).collect::<Vec<_>>())
        })
        .collect();
    let results: Vec<Vec<Snapshot>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    forgetter.join().unwrap();
    for (i, snaps) in results.iter().enumerate() {
        for (j, s) in snaps.iter().enumerate() {
            let d = snapshot_diff(
                &reference,
                s,
                Mode::Raw,
                "reference",
                &format!("thread {i} pass {j}"),
            );
            assert!(d.is_empty(), "{}", format_problems("concurrent walk", &d));
        }
    }
}
