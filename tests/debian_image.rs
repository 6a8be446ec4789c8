//! A realistic image: a debootstrapped Debian bookworm (minbase) as the bottom layer and a layer
//! built the way container engines build one (kernel overlay with upperdir, apt-get install and
//! deletions inside a chroot), so it holds real kernel-made whiteouts (hard-linked char 0/0
//! devices) and opaque directories. stratafs must show exactly what the kernel shows.
//!
//! Both layers are cached in /var/cache/stratafs-tests/ (built in a temp dir and renamed into
//! place, so a partial build is never used); a digest recorded at build time detects a cache
//! that was modified afterwards. The builder lives in `common/debian.rs`.

mod common;

use common::debian::{CACHE, debian_image, recorded_digest};
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[test]
fn debian_image_matches_kernel() {
    require_root();
    let Some(image) = debian_image("debian_image_matches_kernel") else {
        return;
    };
    let (layer, rootfs, chroot) = (image.layer, image.rootfs, image.chroot);

    let env = TestEnv::new("debian");
    let stack = env.stack_paths(vec![layer.clone(), rootfs.clone()]);
    for (snap, tree) in stack.layer_snapshots().iter().zip([&layer, &rootfs]) {
        assert_eq!(
            snap.digest(),
            recorded_digest(tree),
            "the cached layer {} changed since it was built (a lower layer was modified?); delete {CACHE} to rebuild",
            tree.display()
        );
    }
    // The layer really has what this test is about.
    let ls = &stack.layer_snapshots()[0];
    let whiteouts: Vec<&Entry> = ls
        .entries
        .values()
        .filter(|e| e.kind == Kind::CharDev && e.rdev == 0)
        .collect();
    let opaque = ls
        .entries
        .values()
        .filter(|e| {
            e.xattrs
                .get(&b"trusted.overlay.opaque"[..])
                .is_some_and(|v| v == b"y")
        })
        .count();
    assert!(
        whiteouts.len() >= 10,
        "expected many kernel whiteouts in the layer, found {}",
        whiteouts.len()
    );
    assert!(
        opaque >= 2,
        "expected opaque directories in the layer, found {opaque}"
    );
    eprintln!(
        "layer: {} entries, {} whiteouts (max nlink {}), {opaque} opaque dirs; rootfs: {} entries",
        ls.entries.len(),
        whiteouts.len(),
        whiteouts.iter().map(|e| e.nlink).max().unwrap_or(0),
        stack.layer_snapshots()[1].entries.len()
    );

    let (k, s) = stack.assert_matches_kernel();
    assert!(
        s.entries.len() > 3000,
        "suspiciously small merged tree: {}",
        s.entries.len()
    );
    assert_eq!(k.entries.len(), s.entries.len());
    s.assert_children("usr/share/doc", &[]);
    s.assert_children("etc/apt/apt.conf.d", &["99norecommends"]);
    s.assert_children("usr/share/locale", &["README"]);
    s.assert_absent("usr/bin/rgrep");
    assert!(s.has("usr/bin/file") && s.has("usr/bin/less"));

    // Run programs from the mounts (as a container would): same answers on both.
    let km = stack.kernel();
    let sm = stack.stratafs();
    for cmd in [
        vec!["dpkg-query", "-W", "-f", "${Package} ${Version}\\n"],
        vec!["file", "/bin/sh", "/etc/passwd", "/usr/bin/less"],
        vec![
            "sh",
            "-c",
            "ls -1A /etc/apt/apt.conf.d /usr/share/doc /usr/share/locale; cat /etc/motd",
        ],
    ] {
        let run = |root: &Path| {
            let o = run_timeout(
                Command::new(&chroot)
                    .arg(root)
                    .args(&cmd)
                    .env("LC_ALL", "C"),
                Duration::from_secs(120),
            );
            assert!(
                o.success(),
                "chroot {} {cmd:?}: {}",
                root.display(),
                o.describe()
            );
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let ko = run(km.path());
        let so = run(sm.path());
        assert_eq!(so, ko, "output of {cmd:?} differs (stratafs vs kernel)");
        if cmd[0] == "dpkg-query" {
            assert!(
                so.lines().any(|l| l.starts_with("file ")),
                "package 'file' not installed in the image"
            );
        }
    }
}
