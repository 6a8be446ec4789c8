//! The cached Debian image shared by the tests that need a real root filesystem: a
//! debootstrapped Debian bookworm (minbase) as the bottom layer and a layer built the way container
//! engines build one (kernel overlay with upperdir, apt-get install and deletions inside a chroot),
//! so it holds real kernel-made whiteouts (hard-linked char 0/0 devices) and opaque directories.
//!
//! Both layers are cached in /var/cache/stratafs-tests/ (built in a temp dir and renamed into
//! place, so a partial build is never used); a digest recorded at build time detects a cache
//! that was modified afterwards. (Moved here from `debian_image.rs`, unchanged.)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::env::{is_mounted, mounts_under, run_ok, run_timeout};
use super::mounts::{KernelOverlay, process_alive};
use super::snapshot::Snapshot;

pub const CACHE: &str = "/var/cache/stratafs-tests";
pub const ROOTFS: &str = "bookworm-minbase-v1";
pub const LAYER: &str = "bookworm-layer1-v1";
pub const SUITE: &str = "bookworm";

/// The Debian mirror the host's apt uses (first `.../debian` URI that is not a security one).
pub fn host_mirror() -> String {
    let mut texts = Vec::new();
    if let Ok(t) = fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            if let Ok(t) = fs::read_to_string(&p) {
                texts.push(t);
            }
        }
    }
    for t in texts {
        for line in t.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let uris: Vec<&str> = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().collect()
            } else if line.starts_with("deb ") {
                line.split_whitespace()
                    .filter(|w| w.starts_with("http"))
                    .take(1)
                    .collect()
            } else {
                Vec::new()
            };
            for u in uris {
                let u = u.trim_end_matches('/');
                if u.ends_with("/debian") && !u.contains("security") {
                    return u.to_string();
                }
            }
        }
    }
    "http://deb.debian.org/debian".to_string()
}

/// A tool from $PATH or the sbin directories (root's PATH may lack them).
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Removes leftovers of interrupted builds (their mounts first).
pub fn clean_stale_tmp() {
    let Ok(rd) = fs::read_dir(CACHE) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("tmp-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if process_alive(pid) {
            continue;
        }
        let mut under = mounts_under(&e.path());
        under.sort_by_key(|m| std::cmp::Reverse(m.mount_point.as_os_str().len()));
        for m in under {
            let _ = run_timeout(
                Command::new("umount").arg("-l").arg(&m.mount_point),
                Duration::from_secs(10),
            );
        }
        let _ = fs::remove_dir_all(e.path());
    }
}

/// Builds `CACHE/<name>/tree` with `build(tmp_tree)` unless present; returns the tree path.
pub fn cached(name: &str, build: impl FnOnce(&Path, &Path)) -> PathBuf {
    let fin = Path::new(CACHE).join(name);
    if !fin.exists() {
        let tmp = Path::new(CACHE).join(format!("tmp-{}-{name}", std::process::id()));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).unwrap();
        }
        fs::create_dir_all(&tmp).unwrap();
        let tree = tmp.join("tree");
        build(&tmp, &tree);
        let digest = Snapshot::take(&tree).digest();
        fs::write(tmp.join("digest"), digest).unwrap();
        fs::rename(&tmp, &fin).unwrap_or_else(|e| {
            let _ = fs::remove_dir_all(&tmp);
            if !fin.exists() {
                panic!("rename {} into place: {e}", tmp.display());
            }
        });
    }
    fin.join("tree")
}

pub fn recorded_digest(tree: &Path) -> String {
    fs::read_to_string(tree.parent().unwrap().join("digest")).unwrap()
}

/// Unmounts (lazily if needed) on drop.
pub struct MountGuard(pub PathBuf);
impl Drop for MountGuard {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = run_timeout(Command::new("umount").arg(&self.0), Duration::from_secs(30));
        }
        if is_mounted(&self.0) {
            let _ = run_timeout(
                Command::new("umount").arg("-l").arg(&self.0),
                Duration::from_secs(30),
            );
        }
    }
}

/// The apt layer's script (also the benchmark's, so both build the same image).
pub const LAYER_SCRIPT: &str = include_str!("../../scripts/debian-layer.sh");

pub fn build_layer(chroot: &Path, rootfs: &Path, tmp: &Path, tree: &Path) {
    let work = tmp.join("work");
    let merged = tmp.join("merged");
    for d in [tree, &work, &merged] {
        fs::create_dir_all(d).unwrap();
    }
    {
        let ov = KernelOverlay::with_upper(rootfs, tree, &work, &merged)
            .unwrap_or_else(|e| panic!("{e}"));
        run_ok(
            Command::new("mount")
                .args(["-t", "proc", "proc"])
                .arg(merged.join("proc")),
            Duration::from_secs(30),
        );
        let _proc = MountGuard(merged.join("proc"));
        let resolv = merged.join("etc/resolv.conf");
        let bound = if fs::symlink_metadata(&resolv).is_ok_and(|m| m.is_file()) {
            run_ok(
                Command::new("mount")
                    .arg("--bind")
                    .arg("/etc/resolv.conf")
                    .arg(&resolv),
                Duration::from_secs(30),
            );
            Some(MountGuard(resolv.clone()))
        } else {
            fs::write(&resolv, fs::read("/etc/resolv.conf").unwrap_or_default()).unwrap();
            None
        };
        let out = run_timeout(
            Command::new(chroot)
                .arg(&merged)
                .args(["/bin/sh", "-c", LAYER_SCRIPT]),
            Duration::from_secs(900),
        );
        assert!(
            out.success(),
            "building the container layer failed: {}",
            out.describe()
        );
        drop(bound);
        if fs::symlink_metadata(&resolv).is_ok()
            && fs::symlink_metadata(rootfs.join("etc/resolv.conf")).is_err()
        {
            fs::remove_file(&resolv).unwrap();
        }
        drop(_proc);
        drop(ov);
    }
    fs::remove_dir_all(&work).unwrap();
    fs::remove_dir_all(&merged).unwrap();
}

/// The two cached layers, and the tools used to build and enter them.
#[derive(Clone, Debug)]
pub struct DebianImage {
    /// The container-built layer (top).
    pub layer: PathBuf,
    /// The debootstrapped root filesystem (bottom).
    pub rootfs: PathBuf,
    /// chroot(8).
    pub chroot: PathBuf,
}

impl DebianImage {
    /// The lower layers, top first.
    pub fn lowers(&self) -> Vec<PathBuf> {
        vec![self.layer.clone(), self.rootfs.clone()]
    }
}

/// The cached image, built first if it is not cached yet. Panics when debootstrap is not
/// installed. Returns None (after printing `SKIPPED <test_name>: ...` on stderr and stdout) when
/// the image is not cached and the Debian mirror cannot be reached to build it.
pub fn debian_image(test_name: &str) -> Option<DebianImage> {
    let debootstrap = find_tool("debootstrap").unwrap_or_else(|| {
        panic!(
            "debootstrap is not installed: run the suite through scripts/test.sh, which installs it"
        )
    });
    let chroot = find_tool("chroot").expect("chroot (coreutils) not found");
    fs::create_dir_all(CACHE).unwrap();
    clean_stale_tmp();
    let mirror = host_mirror();
    // Both cached layers need the mirror to be built (debootstrap, then apt-get in the chroot).
    if !Path::new(CACHE).join(ROOTFS).exists() || !Path::new(CACHE).join(LAYER).exists() {
        let probe = std::env::temp_dir().join(format!("stratafs-release-{}", std::process::id()));
        let out = run_timeout(
            Command::new("/usr/lib/apt/apt-helper")
                .arg("download-file")
                .arg(format!("{mirror}/dists/{SUITE}/Release"))
                .arg(&probe),
            Duration::from_secs(120),
        );
        let _ = fs::remove_file(&probe);
        if !out.success() {
            eprintln!(
                "SKIPPED {test_name}: cannot reach the Debian mirror {mirror}: {}",
                out.describe()
            );
            println!("SKIPPED {test_name}: cannot reach the Debian mirror {mirror}");
            return None;
        }
    }
    let rootfs = cached(ROOTFS, |_tmp, tree| {
        eprintln!(
            "debootstrap --variant=minbase {SUITE} from {mirror} (cached afterwards in {CACHE})"
        );
        let out = run_timeout(
            Command::new(&debootstrap)
                .args(["--variant=minbase", SUITE])
                .arg(tree)
                .arg(&mirror),
            Duration::from_secs(1800),
        );
        assert!(out.success(), "debootstrap failed: {}", out.describe());
    });
    let layer = cached(LAYER, |tmp, tree| build_layer(&chroot, &rootfs, tmp, tree));
    Some(DebianImage {
        layer,
        rootfs,
        chroot,
    })
}
