//! The content-addressed layer store (issue 5), through the real CLI and real FUSE mounts:
//!
//! - digests: the same tree in another creation order or whiteout dialect gives the same
//!   digest; every single change (a content bit, mode, owner, a nanosecond, an xattr value, a
//!   link target, a hard link broken, a whiteout or opaque marker, the root's metadata) gives
//!   another, and the manifest differs in exactly that entry's record; the manifest is the
//!   documented text (`docs/format.md`), and the digest its SHA256;
//! - round trips: `layer export` twice gives the same bytes; the export (plain, `gzip`,
//!   `zstd`) imports to the same digest, in this store ("Already exists") and in a fresh one
//!   (same tree); importing a file again stores nothing;
//! - `mount IMAGE`: read-only, with `--upper/--work` and `--ephemeral`, compared with kernel
//!   overlayfs over the store trees and over the source directories; writes land in the upper;
//!   the ephemeral directory is gone after the unmount; the store trees are bit-identical after;
//! - verification: a corrupt byte, a changed mode, an added file: `layer verify`,
//!   `mount --verify=full` (mounts nothing), the default lazy check (EIO for that file only,
//!   copy-up refused, the log names layer and path), `--verify=none`, export refuses;
//! - `layer rm`, `image rm`, `gc` with images and mounts holding layers; digest prefixes,
//!   aliases, too-short, unknown and ambiguous prefixes;
//! - bad layer tars (hand-made bytes): one `stratafs:` line naming the entry, exit 1, the store
//!   untouched; device nodes refused to an unprivileged importer;
//! - two concurrent imports of one tar; `kill -9` of an import; `--json` outputs; the store
//!   chosen by `--store` (either side of the sub-command) and `$STRATAFS_STORE`.
//!
//! The binary is a debug build (SHA256 at a few tens of MB/s), so the data is kept small.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::dropin::DropinMount;
use common::oci::{
    StoreDir, digest_ok, flip_byte_in_place, gnu_tar_readdir_order, one_line_error_exit1,
    parse_layer_import,
};
use common::*;

const CMD_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// A store directory and the CLI over it
// ---------------------------------------------------------------------------------------------

/// One test's store (`--store DIR`, no `$STRATAFS_STORE`), each command limited to
/// [`CMD_TIMEOUT`].
fn store_in(env: &TestEnv, name: &str) -> StoreDir {
    StoreDir::in_env(env, name).with_timeout(CMD_TIMEOUT)
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// The store is as before: every entry, raw (type, mode, owners, content, xattrs, times,
/// inode numbers...), except the metadata of `tmp/` itself (imports make and remove their
/// scratch directories there); `tmp/` must hold exactly what it held.
fn assert_store_unchanged(before: &Snapshot, after: &Snapshot, what: &str) {
    let strip = |s: &Snapshot| {
        let mut s = s.clone();
        s.entries.remove(&b"tmp"[..]);
        s
    };
    let d = snapshot_diff(&strip(before), &strip(after), Mode::Raw, "before", "after");
    assert!(
        d.is_empty(),
        "{}",
        format_problems(&format!("{what}: the store changed"), &d)
    );
}

/// The snapshot without its char 0/0 whiteouts (their mode, owner and mtime are no part of a
/// layer: the store makes them with mode 0 at import time).
fn without_whiteouts(s: &Snapshot) -> Snapshot {
    let mut s = s.clone();
    s.entries
        .retain(|_, e| !(e.kind == Kind::CharDev && e.rdev == 0));
    s
}

fn sha256_file(p: &Path) -> String {
    sha256_hex(&fs::read(p).unwrap())
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ---------------------------------------------------------------------------------------------
// Trees: deterministic times, the rich tree of the digest tests
// ---------------------------------------------------------------------------------------------

fn fnv(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Sets every entry's mtime (and atime) from its path, nanoseconds included, children before
/// their directory, names in byte order (so the result does not depend on creation order or
/// readdir order). Files with several names get one fixed time, whichever name is visited last.
fn stamp_times(root: &Path) {
    fn walk(root: &Path, rel: &[u8]) {
        let p = rel_path(root, rel);
        let md = fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            let mut names: Vec<Vec<u8>> = fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().file_name().as_bytes().to_vec())
                .collect();
            names.sort();
            for n in names {
                walk(root, &join_rel(rel, &n));
            }
        }
        let (sec, nsec) = if !md.is_dir() && md.nlink() > 1 {
            (1_500_000_000, 111_111_111)
        } else {
            let h = fnv(rel);
            (
                1_000_000_000 + (h % 50_000_000) as i64,
                ((h >> 32) % 1_000_000_000) as i64,
            )
        };
        set_times_nofollow(&p, sec, nsec).unwrap();
    }
    walk(root, b"");
}

/// Adds `ns` nanoseconds to the mtime of `p` (not following symlinks).
fn bump_mtime(p: &Path, ns: i64) {
    let md = fs::symlink_metadata(p).unwrap();
    let total = md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128 + ns as i128;
    set_times_nofollow(
        p,
        total.div_euclid(1_000_000_000) as i64,
        total.rem_euclid(1_000_000_000) as i64,
    )
    .unwrap();
}

/// One change of the rich tree, for the "every change changes the digest" test, with the path
/// of the manifest record it must change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    None,
    ContentBit,
    Mode,
    Uid,
    Gid,
    MtimeNs,
    XattrValue,
    SymlinkTarget,
    BreakHardLink,
    DropWhiteout,
    DropOpaque,
    RootMtimeNs,
    DirMode,
    FifoMode,
}

const CHANGES: [(Change, &str); 13] = [
    (Change::ContentBit, "/etc/hosts"),
    (Change::Mode, "/etc/hosts"),
    (Change::Uid, "/home/user/.profile"),
    (Change::Gid, "/home/user/.profile"),
    (Change::MtimeNs, "/etc/hosts"),
    (Change::XattrValue, "/etc/hosts"),
    (Change::SymlinkTarget, "/link"),
    (Change::BreakHardLink, "/usr/bin/tool"),
    (Change::DropWhiteout, "/etc/old"),
    (Change::DropOpaque, "/var/cache"),
    (Change::RootMtimeNs, "/"),
    (Change::DirMode, "/home/user"),
    (Change::FifoMode, "/run/fifo"),
];

const LONG_NAME_LEN: usize = 120;

fn long_name() -> Vec<u8> {
    let mut n = b"deep/".to_vec();
    n.extend(std::iter::repeat_n(b'n', LONG_NAME_LEN));
    n.push(0xfe);
    n
}

fn long_target() -> Vec<u8> {
    let mut t: Vec<u8> = std::iter::repeat_n(b'a', 150).collect();
    t.extend_from_slice(b"/b");
    t
}

const ANCIENT: (i64, i64) = (-1_000_000, 123_456_789);

/// The rich tree: every entry type a layer holds (no devices other than whiteouts: those are
/// in their own test), owners, setuid, hard links across directories, user.* xattrs (on the
/// root, a directory, a file) and a trusted.* one on a symlink, names with a space, a newline,
/// a non-UTF-8 byte, `%,=`, a long non-UTF-8 name and a long symlink target (PAX in a tar),
/// a large uid, a negative mtime, nanosecond mtimes everywhere, two whiteouts and an opaque
/// directory in the given dialects; entries made in forward or reverse order.
fn build_rich(layer: &Layer, wh: Whiteout, opq: Opaque, reverse: bool, change: Change) {
    let mut hosts = b"127.0.0.1 localhost\n::1 localhost\n".to_vec();
    if change == Change::ContentBit {
        hosts[3] ^= 0x01;
    }
    let hosts_mode = if change == Change::Mode { 0o664 } else { 0o644 };
    let note: &[u8] = if change == Change::XattrValue {
        b"hj"
    } else {
        b"hi"
    };
    let (puid, pgid) = match change {
        Change::Uid => (1001, 100),
        Change::Gid => (1000, 101),
        _ => (1000, 100),
    };
    let link_target: &[u8] = if change == Change::SymlinkTarget {
        b"etc/hostz"
    } else {
        b"etc/hosts"
    };
    let tool: &[u8] = b"#!/bin/sh\necho tool\n";
    let tool_names: Vec<&[u8]> = if change == Change::BreakHardLink {
        vec![b"bin/tool", b"sbin/tool"]
    } else {
        vec![b"bin/tool", b"sbin/tool", b"usr/bin/tool"]
    };

    type Step<'a> = Box<dyn Fn(&Layer) + 'a>;
    let mut steps: Vec<Step> = Vec::new();
    steps.push(Box::new(|l: &Layer| {
        l.dir(b"")
            .owner(0, 0)
            .mode(0o755)
            .xattr("user.root", b"r00t");
    }));
    steps.push(Box::new(|l: &Layer| {
        l.dir(b"etc").owner(0, 0).mode(0o755);
    }));
    let hosts2 = hosts.clone();
    steps.push(Box::new(move |l: &Layer| {
        l.file(b"etc/hosts", &hosts2)
            .owner(0, 0)
            .mode(hosts_mode)
            .xattr("user.note", note)
            .xattr("user.bin", &[0, 0xff, b'=', b',']);
    }));
    let names = tool_names.clone();
    steps.push(Box::new(move |l: &Layer| {
        // In reverse order the inode is first made under its last name.
        let mut names = names.clone();
        if reverse {
            names.reverse();
        }
        l.file(names[0], tool).owner(0, 0).mode(0o4755);
        for n in &names[1..] {
            l.hardlink(names[0], n);
        }
    }));
    if change == Change::BreakHardLink {
        steps.push(Box::new(move |l: &Layer| {
            l.file(b"usr/bin/tool", tool).owner(0, 0).mode(0o4755);
        }));
    }
    steps.push(Box::new(move |l: &Layer| {
        l.file(b"home/user/.profile", b"export PS1='$ '\n")
            .owner(puid, pgid)
            .mode(0o600);
    }));
    steps.push(Box::new(move |l: &Layer| {
        let mode = if change == Change::DirMode {
            0o750
        } else {
            0o700
        };
        l.dir(b"home/user")
            .owner(1000, 100)
            .mode(mode)
            .xattr("user.dir", &[0x00, 0xff]);
    }));
    steps.push(Box::new(|l: &Layer| {
        l.file(b"big-id", b"x").owner(3_000_000_000, 3_000_000_001);
    }));
    steps.push(Box::new(move |l: &Layer| {
        l.symlink(b"link", link_target);
    }));
    steps.push(Box::new(|l: &Layer| {
        l.symlink(b"abs", b"/etc/shadow")
            .owner(7, 8)
            .xattr("trusted.sym", b"s");
    }));
    steps.push(Box::new(|l: &Layer| {
        l.symlink(b"long-target", long_target());
    }));
    steps.push(Box::new(move |l: &Layer| {
        let mode = if change == Change::FifoMode {
            0o640
        } else {
            0o620
        };
        l.fifo(b"run/fifo").mode(mode);
    }));
    steps.push(Box::new(|l: &Layer| {
        l.file(b"with space/file name", b"spaces\n");
    }));
    steps.push(Box::new(|l: &Layer| {
        l.file(b"new\nline", b"newline\n");
    }));
    steps.push(Box::new(|l: &Layer| {
        l.file(b"bad\xffname", b"not utf-8\n");
    }));
    steps.push(Box::new(|l: &Layer| {
        l.file(b"pct%,=x", b"escaped\n");
    }));
    steps.push(Box::new(|l: &Layer| {
        l.file(long_name(), b"long\n");
    }));
    steps.push(Box::new(|l: &Layer| {
        l.file(b"empty", b"").mode(0o444);
    }));
    steps.push(Box::new(|l: &Layer| {
        l.file(b"ancient", b"old\n");
    }));
    steps.push(Box::new(move |l: &Layer| {
        l.whiteout(b"gone", wh);
    }));
    if change != Change::DropWhiteout {
        steps.push(Box::new(move |l: &Layer| {
            l.whiteout(b"etc/old", wh);
        }));
    }
    steps.push(Box::new(move |l: &Layer| {
        if change == Change::DropOpaque {
            l.dir(b"var/cache");
        } else {
            l.opaque(b"var/cache", opq);
        }
    }));
    steps.push(Box::new(|l: &Layer| {
        l.file(b"var/cache/keep", b"kept\n").mode(0o640);
    }));
    steps.push(Box::new(|l: &Layer| {
        l.dir(b"var").mode(0o755);
    }));
    if reverse {
        steps.reverse();
    }
    for s in &steps {
        s(layer);
    }
    stamp_times(&layer.root);
    set_times_nofollow(&layer.path(b"ancient"), ANCIENT.0, ANCIENT.1).unwrap();
    match change {
        Change::MtimeNs => bump_mtime(&layer.path(b"etc/hosts"), 1),
        Change::RootMtimeNs => bump_mtime(&layer.root, 1),
        _ => {}
    }
}

/// The manifest as (path → record line), checking the header and the sort order.
fn manifest_records(m: &[u8]) -> BTreeMap<String, String> {
    let text = std::str::from_utf8(m).expect("manifest is not ASCII");
    assert!(text.is_ascii(), "manifest has non-ASCII bytes");
    let body = text
        .strip_prefix("stratafs-manifest-v1\n")
        .unwrap_or_else(|| panic!("manifest header missing: {:?}", &text[..text.len().min(80)]));
    let mut out = BTreeMap::new();
    let mut last: Option<Vec<u8>> = None;
    for line in body.lines() {
        let path = line.split(' ').next().unwrap().to_string();
        let raw = unescape_manifest(&path);
        if let Some(prev) = &last {
            assert!(*prev < raw, "manifest not sorted by path bytes at {line:?}");
        }
        last = Some(raw);
        assert!(
            out.insert(path.clone(), line.to_string()).is_none(),
            "duplicate record {path}"
        );
    }
    out
}

fn unescape_manifest(p: &str) -> Vec<u8> {
    let b = p.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&p[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn hex_bytes(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Hand-made tars
// ---------------------------------------------------------------------------------------------

/// A ustar archive written byte by byte: no checks at all, so that any bad entry can be made.
struct RawTar(Vec<u8>);

fn octal(field: &mut [u8], v: u64) {
    let w = field.len() - 1;
    let s = format!("{v:0w$o}");
    assert_eq!(s.len(), w, "test bug: {v} does not fit a {w}-digit field");
    field[..w].copy_from_slice(s.as_bytes());
    field[w] = 0;
}

impl RawTar {
    fn new() -> RawTar {
        RawTar(Vec::new())
    }

    fn header(&mut self, name: &[u8], typ: u8, mode: u32, size: u64, link: &[u8], dev: (u32, u32)) {
        let mut h = [0u8; 512];
        assert!(
            name.len() <= 100 && link.len() <= 100,
            "test bug: long name"
        );
        h[..name.len()].copy_from_slice(name);
        octal(&mut h[100..108], u64::from(mode));
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], 1_700_000_000);
        h[156] = typ;
        h[157..157 + link.len()].copy_from_slice(link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        octal(&mut h[329..337], u64::from(dev.0));
        octal(&mut h[337..345], u64::from(dev.1));
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        self.0.extend_from_slice(&h);
    }

    fn file(mut self, name: &[u8], content: &[u8]) -> RawTar {
        self.header(name, b'0', 0o644, content.len() as u64, b"", (0, 0));
        self.0.extend_from_slice(content);
        let pad = (512 - content.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    fn dir(mut self, name: &[u8]) -> RawTar {
        self.header(name, b'5', 0o755, 0, b"", (0, 0));
        self
    }

    fn symlink(mut self, name: &[u8], target: &[u8]) -> RawTar {
        self.header(name, b'2', 0o777, 0, target, (0, 0));
        self
    }

    fn hardlink(mut self, name: &[u8], target: &[u8]) -> RawTar {
        self.header(name, b'1', 0o644, 0, target, (0, 0));
        self
    }

    fn chardev(mut self, name: &[u8], major: u32, minor: u32) -> RawTar {
        self.header(name, b'3', 0o666, 0, b"", (major, minor));
        self
    }

    /// The archive with its end marker (two zero blocks).
    fn bytes(&self) -> Vec<u8> {
        let mut v = self.0.clone();
        v.extend(std::iter::repeat_n(0u8, 1024));
        v
    }
}

fn compress(tool: &str, input: &Path, output: &Path) {
    let f = fs::File::create(output).unwrap();
    let st = Command::new(tool)
        .args(["-c", "-q"])
        .arg(input)
        .stdout(f)
        .stderr(Stdio::inherit())
        .status()
        .unwrap_or_else(|e| panic!("{tool}: {e} (scripts/setup.sh installs it)"));
    assert!(st.success(), "{tool} -c {}: {st}", input.display());
}

// ---------------------------------------------------------------------------------------------
// Mounts of stored images
// ---------------------------------------------------------------------------------------------

/// `stratafs --store S mount IMAGE MNT EXTRA...` in the background; the guard unmounts (umount,
/// fusermount3 -u, umount -l) and waits for the daemon to exit, even when the test panics.
fn mount_image(
    store: &StoreDir,
    image: &str,
    mnt: &Path,
    extra: &[&OsStr],
    env: &[(&str, &OsStr)],
) -> Result<DropinMount, String> {
    let mut c = store.cmd();
    c.arg("mount").arg(image).arg(mnt).args(extra);
    for (k, v) in env {
        c.env(k, v);
    }
    DropinMount::background(&mut c, mnt, mnt)
}

/// A mount that must be refused: exit 1, one line naming `needle`, nothing mounted, no daemon.
fn mount_refused(store: &StoreDir, image: &str, mnt: &Path, extra: &[&str], needle: &str) {
    let mut args: Vec<OsString> = vec!["mount".into(), image.into(), mnt.into()];
    args.extend(extra.iter().map(OsString::from));
    let out = store.run(&args);
    let mounted = is_mounted(mnt);
    let daemons = pids_with_arg(mnt);
    if mounted {
        let _ = run_timeout(Command::new("umount").arg("-l").arg(mnt), CMD_TIMEOUT);
    }
    for pid in &daemons {
        // SAFETY: kill(2) of a daemon this test started.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    assert!(!mounted, "mount {extra:?} should have mounted nothing");
    assert!(
        daemons.is_empty(),
        "mount {extra:?} left daemons {daemons:?}"
    );
    let line = one_line_error_exit1(&out, &format!("mount {image} {extra:?}"));
    assert!(
        line.contains(needle),
        "mount {extra:?}: the error should name {needle:?}: {line}"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Determinism
// ---------------------------------------------------------------------------------------------

#[test]
fn same_tree_same_digest_whatever_the_order_and_dialect() {
    require_root();
    let env = TestEnv::new("store-determinism");
    let store = store_in(&env, "store");
    let variants = [
        ("chardev", Whiteout::CharDev, Opaque::Trusted, false),
        ("oci", Whiteout::Oci, Opaque::Oci, true),
        (
            "xattr-trusted",
            Whiteout::XattrTrusted,
            Opaque::UserOverlay,
            true,
        ),
        (
            "xattr-user",
            Whiteout::XattrUser,
            Opaque::UserFuseOverlayfs,
            false,
        ),
    ];
    let mut layers = Vec::new();
    for (name, wh, opq, reverse) in variants {
        let l = env.layer(name);
        build_rich(&l, wh, opq, reverse, Change::None);
        layers.push(l);
    }
    let sources: Vec<Snapshot> = layers.iter().map(|l| Snapshot::take(&l.root)).collect();

    let digest = store.import(&layers[0].root);
    for l in &layers[1..] {
        assert_eq!(
            store.import_existing(&l.root),
            digest,
            "{} (another order and dialect) has another digest",
            l.root.display()
        );
    }
    assert_eq!(store.layer_hexes(), vec![hex_of(&digest).to_string()]);
    // Each variant alone in a fresh store: the same digest, stored anew.
    for (i, l) in layers.iter().enumerate().skip(1) {
        let fresh = store_in(&env, &format!("fresh{i}"));
        assert_eq!(fresh.import(&l.root), digest, "{}", l.root.display());
    }

    // The digest is the SHA256 of the manifest, which is the documented text.
    let m = store.manifest(&digest);
    assert_eq!(format!("sha256:{}", sha256_hex(&m)), digest);
    assert_eq!(
        fs::read(store.layer_dir(&digest).join("manifest")).unwrap(),
        m,
        "inspect --manifest differs from the stored manifest"
    );
    let recs = manifest_records(&m);
    let hosts = b"127.0.0.1 localhost\n::1 localhost\n";
    let t = |p: &[u8]| {
        let md = fs::symlink_metadata(layers[0].path(p)).unwrap();
        format!("{}.{:09}", md.mtime(), md.mtime_nsec())
    };
    let expect = [
        (
            "/".to_string(),
            format!("/ d 0755 0 0 {} - user.root={}", t(b""), hex_bytes(b"r00t")),
        ),
        (
            "/etc/hosts".into(),
            format!(
                "/etc/hosts f 0644 0 0 {} {} {} user.bin=00ff3d2c,user.note={}",
                t(b"etc/hosts"),
                hosts.len(),
                sha256_hex(hosts),
                hex_bytes(b"hi")
            ),
        ),
        ("/etc/old".into(), "/etc/old w".into()),
        ("/gone".into(), "/gone w".into()),
        (
            "/bin/tool".into(),
            "/bin/tool f 4755 0 0 1500000000.111111111 20 ".to_string()
                + &sha256_hex(b"#!/bin/sh\necho tool\n")
                + " -",
        ),
        ("/sbin/tool".into(), "/sbin/tool h /bin/tool".into()),
        ("/usr/bin/tool".into(), "/usr/bin/tool h /bin/tool".into()),
        (
            "/var/cache".into(),
            format!("/var/cache d 0755 0 0 {} opaque -", t(b"var/cache")),
        ),
        (
            "/home/user".into(),
            format!(
                "/home/user d 0700 1000 100 {} - user.dir=00ff",
                t(b"home/user")
            ),
        ),
        (
            "/big-id".into(),
            format!(
                "/big-id f 0644 3000000000 3000000001 {} 1 {} -",
                t(b"big-id"),
                sha256_hex(b"x")
            ),
        ),
        (
            "/abs".into(),
            format!("/abs l 0777 7 8 {} /etc/shadow trusted.sym=73", t(b"abs")),
        ),
        (
            "/run/fifo".into(),
            format!("/run/fifo p 0620 0 0 {} -", t(b"run/fifo")),
        ),
        (
            "/ancient".into(),
            format!(
                "/ancient f 0644 0 0 -1000000.123456789 4 {} -",
                sha256_hex(b"old\n")
            ),
        ),
        (
            "/empty".into(),
            format!("/empty f 0444 0 0 {} 0 {} -", t(b"empty"), sha256_hex(b"")),
        ),
    ];
    let mut problems = Vec::new();
    for (path, line) in &expect {
        match recs.get(path) {
            Some(l) if l == line => {}
            other => problems.push(format!("{path}: expected {line:?}, got {other:?}")),
        }
    }
    for escaped in [
        "/with%20space/file%20name",
        "/new%0Aline",
        "/bad%FFname",
        "/pct%25%2C%3Dx",
    ] {
        if !recs.contains_key(escaped) {
            problems.push(format!("no record {escaped}"));
        }
    }
    for path in recs.keys() {
        if path.contains(".wh.") {
            problems.push(format!("marker recorded as an entry: {path}"));
        }
    }
    for line in recs.values() {
        if line.contains("overlay") || line.contains("fuseoverlayfs") {
            problems.push(format!("marker xattr recorded: {line}"));
        }
    }
    assert!(
        problems.is_empty(),
        "manifest vs docs/format.md:\n{}\nmanifest:\n{}",
        problems.join("\n"),
        String::from_utf8_lossy(&m)
    );

    // The stored tree is an exact copy of the source in the store's own dialect (char 0/0,
    // trusted.overlay.opaque=y), whiteouts aside (their metadata is no part of a layer).
    let tree = Snapshot::take(&store.tree(&digest));
    let mut src = sources[0].clone();
    let mut dst = tree.clone();
    for w in [&b"gone"[..], b"etc/old"] {
        for s in [&mut src, &mut dst] {
            let e = s
                .entries
                .remove(w)
                .unwrap_or_else(|| panic!("{} missing from {}", show_path(w), s.root.display()));
            assert!(
                e.kind == Kind::CharDev && e.rdev == 0,
                "{} is not char 0/0",
                show_path(w)
            );
        }
    }
    // The store's own bookkeeping (a stored tree's root says it is one;
    // docs/format.md) is the only thing the copy may add.
    for e in dst.entries.values_mut() {
        e.xattrs.retain(|name, _| {
            !matches!(
                name.as_slice(),
                b"trusted.stratafs.layer" | b"user.stratafs.layer"
            )
        });
    }
    let d = exact_copy_problems(&src, &dst);
    assert!(d.is_empty(), "stored tree vs source: {d:#?}");
    assert_eq!(
        store.ok(&["layer", "verify", &digest]),
        format!("{digest} OK\n")
    );

    // The sources were only read.
    for (l, before) in layers.iter().zip(&sources) {
        assert_snapshots_eq(
            before,
            &Snapshot::take(&l.root),
            Mode::Raw,
            "before",
            "after",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Every single change changes the digest, in exactly that record
// ---------------------------------------------------------------------------------------------

#[test]
fn every_single_change_changes_the_digest() {
    require_root();
    let env = TestEnv::new("store-changes");
    let store = store_in(&env, "store");
    let base_layer = env.layer("base");
    build_rich(
        &base_layer,
        Whiteout::CharDev,
        Opaque::Trusted,
        false,
        Change::None,
    );
    let base = store.import(&base_layer.root);
    let base_recs = manifest_records(&store.manifest(&base));

    let mut seen: BTreeMap<String, Change> = BTreeMap::new();
    seen.insert(base.clone(), Change::None);
    let mut problems = Vec::new();
    for (change, path) in CHANGES {
        let l = env.layer(&format!("{change:?}"));
        build_rich(&l, Whiteout::CharDev, Opaque::Trusted, false, change);
        let (d, existed) = store.import_any(&l.root);
        if let Some(prev) = seen.get(&d) {
            problems.push(format!(
                "{change:?} gives {d}, the digest of {prev:?} (existed={existed})"
            ));
            continue;
        }
        seen.insert(d.clone(), change);
        // Exactly one record differs, and it is the changed entry's.
        let recs = manifest_records(&store.manifest(&d));
        let keys: BTreeSet<&String> = base_recs.keys().chain(recs.keys()).collect();
        let differing: Vec<&String> = keys
            .into_iter()
            .filter(|k| base_recs.get(*k) != recs.get(*k))
            .collect();
        if differing != vec![&path.to_string()] {
            problems.push(format!(
                "{change:?}: records that differ: {differing:?}, expected only {path}: {:?} vs {:?}",
                differing
                    .iter()
                    .map(|k| base_recs.get(*k))
                    .collect::<Vec<_>>(),
                differing.iter().map(|k| recs.get(*k)).collect::<Vec<_>>()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(store.layer_hexes().len(), CHANGES.len() + 1);
}

// ---------------------------------------------------------------------------------------------
// 3. Export and import round trips
// ---------------------------------------------------------------------------------------------

#[test]
fn export_is_deterministic_and_round_trips() {
    require_root();
    let env = TestEnv::new("store-roundtrip");
    let store = store_in(&env, "store");
    let src = env.layer("src");
    build_rich(&src, Whiteout::Oci, Opaque::Oci, false, Change::None);
    let digest = store.import(&src.root);
    let out = env.fresh_dir("out");

    // Twice to stdout, once with -o: the same bytes.
    let tar1 = store.export(&digest);
    let tar2 = store.export(&digest);
    assert!(tar1 == tar2, "two exports of {digest} differ");
    let tar_path = out.join("layer.tar");
    store.ok(&[
        OsStr::new("layer"),
        OsStr::new("export"),
        OsStr::new(&digest),
        OsStr::new("-o"),
        tar_path.as_os_str(),
    ]);
    assert!(
        fs::read(&tar_path).unwrap() == tar1,
        "export -o differs from stdout"
    );
    assert_eq!(
        names_in_or_empty(&out),
        vec!["layer.tar"],
        "export -o left other files"
    );
    // The short-prefix spelling exports the same layer.
    assert!(store.export(&hex_of(&digest)[..8]) == tar1);

    let gz = out.join("layer.tar.gz");
    let zst = out.join("layer.tar.zst");
    compress("gzip", &tar_path, &gz);
    compress("zstd", &tar_path, &zst);
    let diff_id = format!("sha256:{}", sha256_file(&tar_path));
    let gz_id = format!("sha256:{}", sha256_file(&gz));
    let zst_id = format!("sha256:{}", sha256_file(&zst));

    // Into the same store: the layer exists; its aliases gain the tar's digests.
    for f in [&tar_path, &gz, &zst] {
        assert_eq!(store.import_existing(f), digest, "{}", f.display());
    }
    assert_eq!(store.layer_hexes(), vec![hex_of(&digest).to_string()]);
    assert!(
        store.tmp_names().is_empty(),
        "tmp/ not empty: {:?}",
        store.tmp_names()
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&fs::read(store.layer_dir(&digest).join("meta.json")).unwrap())
            .unwrap();
    let aliases: BTreeSet<String> = meta["aliases"]
        .as_array()
        .expect("aliases")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let want: BTreeSet<String> = [&diff_id, &gz_id, &zst_id].into_iter().cloned().collect();
    assert_eq!(
        aliases, want,
        "aliases after importing the tar, .gz and .zst"
    );
    // An alias names the layer.
    for a in [&diff_id, &gz_id, &zst_id] {
        let v: serde_json::Value =
            serde_json::from_str(&store.ok(&["layer", "inspect", a])).unwrap();
        assert_eq!(v["digest"], digest.as_str(), "inspect {a}");
    }

    // Importing the same files again stores nothing at all.
    let before = store.snapshot();
    for f in [&tar_path, &gz, &zst, &src.root] {
        assert_eq!(store.import_existing(f), digest, "{}", f.display());
    }
    assert_store_unchanged(&before, &store.snapshot(), "importing stored layers again");

    // Into fresh stores: the same digest and the same tree (exactly: owners, modes, times,
    // xattrs, hard links, whiteouts and opaque markers), and the same export bytes.
    let tree = Snapshot::take(&store.tree(&digest));
    for (i, f) in [&tar_path, &gz, &zst].into_iter().enumerate() {
        let fresh = store_in(&env, &format!("fresh{i}"));
        assert_eq!(fresh.import(f), digest, "{} in a fresh store", f.display());
        let d = exact_copy_problems(
            &without_whiteouts(&tree),
            &without_whiteouts(&Snapshot::take(&fresh.tree(&digest))),
        );
        assert!(d.is_empty(), "tree imported from {}: {d:#?}", f.display());
        assert!(
            fresh.export(&digest) == tar1,
            "export from the fresh store differs"
        );
        let meta: serde_json::Value =
            serde_json::from_slice(&fs::read(fresh.layer_dir(&digest).join("meta.json")).unwrap())
                .unwrap();
        let aliases: BTreeSet<&str> = meta["aliases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let mut want = BTreeSet::from([diff_id.as_str()]);
        if i == 1 {
            want.insert(&gz_id);
        }
        if i == 2 {
            want.insert(&zst_id);
        }
        assert_eq!(aliases, want, "aliases of {}", f.display());
    }

    // Not to a terminal.
    let out = run_timeout(
        Command::new("script").args([
            "-qec",
            &format!(
                "{} --store {} layer export {digest}",
                stratafs_bin().display(),
                store.dir.display()
            ),
            "/dev/null",
        ]),
        CMD_TIMEOUT,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(1),
        "export to a terminal: {text:?}"
    );
    assert!(
        text.contains("stratafs: refusing to write a tar to a terminal") && text.len() < 200,
        "export to a terminal: {text:?}"
    );

    // A socket can be stored but not written to a tar: export says so and writes no file.
    let sock = env.layer("sock");
    sock.file(b"f", b"x");
    sock.socket(b"s.sock");
    let sd = store.import(&sock.root);
    let sock_out = env.fresh_dir("sockout");
    let line = store.refused(&[
        OsStr::new("layer"),
        OsStr::new("export"),
        OsStr::new(&sd),
        OsStr::new("-o"),
        sock_out.join("s.tar").as_os_str(),
    ]);
    assert!(
        line.contains("/s.sock"),
        "export error should name the socket: {line}"
    );
    assert_eq!(
        names_in_or_empty(&sock_out),
        Vec::<String>::new(),
        "a failed export left files"
    );
}

#[test]
fn a_directory_and_its_tar_give_one_digest() {
    require_root();
    let env = TestEnv::new("store-gnutar");
    let store = store_in(&env, "store");
    let mut problems = Vec::new();

    // The rich tree in the OCI dialect, through GNU tar (another tar writer than ours).
    let rich = env.layer("rich");
    build_rich(&rich, Whiteout::Oci, Opaque::Oci, false, Change::None);
    let d = store.import(&rich.root);
    let tar = env.path("rich.tar");
    gnu_tar_readdir_order(&rich.root, &tar);
    match store.run(&[OsStr::new("layer"), OsStr::new("import"), tar.as_os_str()]) {
        out if out.success() => {
            let (td, existed) = parse_layer_import(&String::from_utf8_lossy(&out.stdout));
            if td != d || !existed {
                let recs = manifest_records(&store.manifest(&d));
                let trecs = manifest_records(&store.manifest(&td));
                let keys: BTreeSet<&String> = recs.keys().chain(trecs.keys()).collect();
                let diff: Vec<String> = keys
                    .into_iter()
                    .filter(|k| recs.get(*k) != trecs.get(*k))
                    .map(|k| format!("  dir {:?}\n  tar {:?}", recs.get(k), trecs.get(k)))
                    .collect();
                problems.push(format!(
                    "GNU tar of the rich tree: {td} (existed={existed}), directory: {d}\n{}",
                    diff.join("\n")
                ));
            }
        }
        out => problems.push(format!(
            "GNU tar of the rich tree refused: {}",
            out.describe()
        )),
    }

    // An OCI layer may hold `.wh.NAME` and NAME together (the whiteout hides only lower
    // layers): the directory imports, so must its tar, to the same digest.
    let both = env.layer("both");
    both.file(b"foo", b"replaced\n");
    both.whiteout(b"foo", Whiteout::Oci);
    stamp_times(&both.root);
    let dir_out = store.run(&[
        OsStr::new("layer"),
        OsStr::new("import"),
        both.root.as_os_str(),
    ]);
    let btar = env.path("both.tar");
    gnu_tar_readdir_order(&both.root, &btar);
    let tar_out = store.run(&[OsStr::new("layer"), OsStr::new("import"), btar.as_os_str()]);
    match (dir_out.success(), tar_out.success()) {
        (true, true) => {
            let (bd, _) = parse_layer_import(&String::from_utf8_lossy(&dir_out.stdout));
            let (td, _) = parse_layer_import(&String::from_utf8_lossy(&tar_out.stdout));
            if td != bd {
                problems.push(format!(".wh.foo + foo: tar {td} vs directory {bd}"));
            }
        }
        (false, false) => {
            for out in [&dir_out, &tar_out] {
                let line = one_line_error_exit1(out, ".wh.foo + foo");
                assert!(line.contains("foo"), "{line}");
            }
        }
        (true, false) => problems.push(format!(
            "a tar with .wh.foo and foo is refused while its directory imports ({}): {}",
            String::from_utf8_lossy(&dir_out.stdout).trim_end(),
            tar_out.stderr_str().trim_end()
        )),
        (false, true) => problems.push(format!(
            "a directory with .wh.foo and foo is refused while its tar imports: {}",
            dir_out.stderr_str().trim_end()
        )),
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 4. Mounting stored images
// ---------------------------------------------------------------------------------------------

/// Two layers: a bottom one, and a top one (in the OCI dialect) with whiteouts, an opaque
/// directory, a replaced file and new entries.
fn build_image_layers(env: &TestEnv) -> (Layer, Layer) {
    let bottom = env.layer("bottom");
    bottom.file(b"etc/hosts", b"old hosts\n");
    bottom.file(b"etc/old", b"to be whited out\n");
    bottom.file(b"etc/passwd", b"root:x:0:0::/root:/bin/sh\n");
    bottom.file(b"usr/bin/tool", b"#!/bin/sh\n").mode(0o755);
    bottom
        .file(b"usr/lib/libx.so.1", b"\x7fELF libx")
        .mode(0o755);
    bottom.hardlink(b"usr/lib/libx.so.1", b"usr/lib/libx.so");
    bottom.file(b"var/cache/a", b"a\n");
    bottom.file(b"var/cache/b", b"b\n");
    bottom
        .file(b"home/user/notes", b"notes\n")
        .owner(1000, 100)
        .mode(0o600);
    bottom.dir(b"home/user").owner(1000, 100).mode(0o750);
    bottom
        .file(b"data/file", b"data\n")
        .xattr("user.tag", b"v1");
    bottom.symlink(b"link", b"etc/hosts");
    bottom.fifo(b"run/fifo");
    stamp_times(&bottom.root);

    let top = env.layer("top");
    top.whiteout(b"etc/old", Whiteout::Oci);
    top.file(b"etc/hosts", b"new hosts\n").xattr("user.v", b"2");
    top.opaque(b"var/cache", Opaque::Oci);
    top.file(b"var/cache/new", b"new\n");
    top.file(b"opt/app/run.sh", b"#!/bin/sh\nexit 0\n")
        .mode(0o755);
    top.file(b"home/user/todo", b"todo\n").owner(1000, 100);
    top.dir(b"home/user").owner(1000, 100).mode(0o750);
    stamp_times(&top.root);
    (bottom, top)
}

#[test]
fn mounted_image_matches_kernel_overlay() {
    require_root();
    let env = TestEnv::new("store-mount");
    let store = store_in(&env, "store");
    let (bottom, top) = build_image_layers(&env);
    let src_stack = env.stack(&[&top, &bottom]);
    let db = store.import(&bottom.root);
    let dt = store.import(&top.root);
    store.image_create("app:1", &[&db, &dt]);
    // Snapshots of the store trees now, checked bit for bit when the stack is dropped (after
    // every mount guard, which borrow nothing but are declared later).
    let trees = env.stack_paths(vec![store.tree(&dt), store.tree(&db)]);

    // Read-only.
    {
        let mnt = env.fresh_dir("mnt/ro");
        let m = mount_image(&store, "app:1", &mnt, &[], &[]).unwrap_or_else(|e| panic!("{e}"));
        let (_, view, problems) = trees.compare_mount_with_kernel(m.path());
        assert!(
            problems.is_empty(),
            "{}",
            format_problems("image mount vs kernel over the store trees", &problems)
        );
        let (_, _, problems) = src_stack.compare_mount_with_kernel(m.path());
        assert!(
            problems.is_empty(),
            "{}",
            format_problems("image mount vs kernel over the source dirs", &problems)
        );
        view.assert_content(b"etc/hosts", b"new hosts\n");
        view.assert_absent(b"etc/old");
        view.assert_children(b"var/cache", &["new"]);
        assert_eq!(
            errno_of(fs::write(m.join("etc/new"), b"x")),
            Some(libc::EROFS),
            "a read-only image mount accepted a write"
        );
        // `stratafs umount` unmounts it; the guard then finds nothing to do.
        run_ok(
            Command::new(stratafs_bin()).arg("umount").arg(&mnt),
            CMD_TIMEOUT,
        );
        m.unmount();
    }

    // --verify=full on an intact image mounts.
    {
        let mnt = env.fresh_dir("mnt/full");
        let m = mount_image(&store, "app:1", &mnt, &[OsStr::new("--verify=full")], &[])
            .unwrap_or_else(|e| panic!("{e}"));
        Snapshot::take(m.path()).assert_content(b"usr/bin/tool", b"#!/bin/sh\n");
        m.unmount();
    }

    // Writable: the same operations as on a writable kernel overlay of the store trees.
    let base = env.fresh_dir("rw");
    let (upper, work) = upper_work(&base.join("s"));
    let (kupper, kwork) = upper_work(&base.join("k"));
    let t0 = now_secs() - 1;
    {
        let mnt = env.fresh_dir("mnt/rw");
        let m = mount_image(
            &store,
            "app:1",
            &mnt,
            &[
                OsStr::new("--upper"),
                upper.as_os_str(),
                OsStr::new("--work"),
                work.as_os_str(),
            ],
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let kmnt = env.fresh_dir("mnt/krw");
        let k = KernelOverlay::writable(&trees.lowers, &kupper, &kwork, &kmnt)
            .unwrap_or_else(|e| panic!("{e}"));
        for root in [m.path(), k.path()] {
            fs::write(root.join("opt/app/config"), b"cfg\n").unwrap();
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(root.join("etc/passwd"))
                .unwrap();
            f.write_all(b"user:x:1000:100::/home/user:/bin/sh\n")
                .unwrap();
            drop(f);
            fs::remove_file(root.join("data/file")).unwrap();
            fs::create_dir(root.join("newdir")).unwrap();
            fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o700))
                .unwrap();
        }
        let mut ks = Snapshot::take(k.path());
        let mut ss = Snapshot::take(m.path());
        normalize_times(&mut ks, t0);
        normalize_times(&mut ss, t0);
        assert_snapshots_eq(&ks, &ss, Mode::Merged, "kernel", "stratafs");
        let inv = mount_invariants(&ss);
        assert!(inv.is_empty(), "mount invariants: {inv:#?}");
        drop(k);
        m.unmount();
    }
    // The writes are in the upper.
    let up = Snapshot::take(&upper);
    up.assert_content(b"opt/app/config", b"cfg\n");
    up.assert_content(
        b"etc/passwd",
        b"root:x:0:0::/root:/bin/sh\nuser:x:1000:100::/home/user:/bin/sh\n",
    );
    let wh = up.entry(b"data/file");
    assert!(
        wh.kind == Kind::CharDev && wh.rdev == 0,
        "data/file in the upper is not a char 0/0 whiteout: {wh:?}"
    );
    assert_eq!(up.entry(b"newdir").kind, Kind::Dir);
    assert_eq!(up.entry(b"usr/bin/tool").mode & 0o7777, 0o700);
    // And seen again by a new mount over the same upper.
    {
        let mnt = env.fresh_dir("mnt/rw2");
        let m = mount_image(
            &store,
            "app:1",
            &mnt,
            &[
                OsStr::new("--upper"),
                upper.as_os_str(),
                OsStr::new("--work"),
                work.as_os_str(),
            ],
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let view = Snapshot::take(m.path());
        view.assert_content(b"opt/app/config", b"cfg\n");
        view.assert_absent(b"data/file");
        view.assert_content(b"etc/hosts", b"new hosts\n");
        m.unmount();
    }

    // Ephemeral: a private upper under $TMPDIR, gone after the unmount.
    let tmpdir = env.fresh_dir("ephtmp");
    for round in 0..2 {
        let mnt = env.fresh_dir("mnt/eph");
        let m = mount_image(
            &store,
            "app:1",
            &mnt,
            &[OsStr::new("--ephemeral")],
            &[("TMPDIR", tmpdir.as_os_str())],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let dirs = names_in_or_empty(&tmpdir);
        assert_eq!(
            dirs.len(),
            1,
            "round {round}: ephemeral dirs in $TMPDIR: {dirs:?}"
        );
        let eph = tmpdir.join(&dirs[0]);
        assert_eq!(
            fs::metadata(&eph).unwrap().mode() & 0o777,
            0o700,
            "the ephemeral dir is not private"
        );
        let view = Snapshot::take(m.path());
        view.assert_absent(b"scratch");
        view.assert_content(b"etc/hosts", b"new hosts\n");
        fs::write(m.join("scratch"), b"temporary\n").unwrap();
        fs::remove_file(m.join("etc/hosts")).unwrap();
        Snapshot::take(&eph.join("upper")).assert_content(b"scratch", b"temporary\n");
        run_ok(
            Command::new(stratafs_bin()).arg("umount").arg(&mnt),
            CMD_TIMEOUT,
        );
        // The guard waits for the daemon to exit; the daemon removes the directory first.
        m.unmount();
        assert!(
            !eph.exists(),
            "round {round}: the ephemeral dir {} is still there after the unmount",
            eph.display()
        );
    }

    assert_eq!(
        store.ok(&["layer", "verify", "--all"]),
        format!("{db} OK\n{dt} OK\n")
            .lines()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
    trees.assert_layers_unchanged();
    src_stack.assert_layers_unchanged();
}

// ---------------------------------------------------------------------------------------------
// 5. Verification
// ---------------------------------------------------------------------------------------------

fn patterned(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// A store tree is bit-identical to its snapshot taken before a mount (raw: ctime and inode
/// numbers included, atime aside).
fn assert_tree_unchanged(before: &Snapshot, tree: &Path) {
    assert_snapshots_eq(
        before,
        &Snapshot::take(tree),
        Mode::Raw,
        "before the mount",
        "after",
    );
}

fn read_errno(p: &Path) -> Result<Vec<u8>, i32> {
    fs::read(p).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

#[test]
fn verification_catches_corrupt_and_added_files() {
    require_root();
    let env = TestEnv::new("store-verify");
    let store = store_in(&env, "store");
    let src = env.layer("src");
    let a = patterned(8192, 1);
    let b = patterned(3000, 2);
    src.file(b"a", &a);
    src.hardlink(b"a", b"z-link");
    src.file(b"b", &b);
    src.file(b"sub/c", b"c\n");
    stamp_times(&src.root);
    let d = store.import(&src.root);
    store.image_create("v", &[&d]);
    let tree = store.tree(&d);
    let log = env.path("mount.log");
    let mnt = env.fresh_dir("mnt/v");

    // Intact.
    assert_eq!(store.ok(&["layer", "verify", &d]), format!("{d} OK\n"));

    // One byte of /a flipped.
    flip_byte_in_place(&tree.join("a"), 5000);
    let corrupt = fs::read(tree.join("a")).unwrap();
    assert_ne!(corrupt, a);
    let out = store.run(&["layer", "verify", &d]);
    let err = one_line_error_exit1(&out, "layer verify of a corrupt layer");
    assert!(err.contains("failed verification"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("{d} FAILED: ")) && stdout.contains("/a differs (content)"),
        "verify should name /a: {stdout:?}"
    );
    let out = store.run(&["layer", "verify", "--all", "--json"]);
    assert_eq!(out.status.and_then(|s| s.code()), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("verify --json");
    assert_eq!(v[0]["digest"], d.as_str());
    assert_eq!(v[0]["ok"], false);
    assert!(
        v[0]["error"].as_str().unwrap().contains("/a differs"),
        "{v}"
    );

    mount_refused(
        &store,
        "v",
        &mnt,
        &["--verify=full"],
        "/a differs (content)",
    );

    // Lazy (the default): /a and its other name fail with EIO, the rest reads fine.
    {
        let tree_before = Snapshot::take(&tree);
        let m = mount_image(
            &store,
            "v",
            &mnt,
            &[OsStr::new("--log"), log.as_os_str()],
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_errno(&m.join("a")), Err(libc::EIO), "corrupt /a");
        assert_eq!(
            read_errno(&m.join("z-link")),
            Err(libc::EIO),
            "corrupt /a as z-link"
        );
        assert_eq!(read_errno(&m.join("b")), Ok(b.clone()));
        assert_eq!(read_errno(&m.join("sub/c")), Ok(b"c\n".to_vec()));
        assert_eq!(
            read_errno(&m.join("a")),
            Err(libc::EIO),
            "corrupt /a, second open"
        );
        assert_eq!(fs::symlink_metadata(m.join("a")).unwrap().len(), 8192);
        m.unmount();
        assert_tree_unchanged(&tree_before, &tree);
    }
    let logtext = fs::read_to_string(&log).unwrap_or_default();
    let hit = logtext.lines().find(|l| {
        l.contains("ERROR")
            && l.contains("content does not match the layer manifest")
            && l.contains(&format!("layer={d}"))
            && l.contains("path=/a")
    });
    assert!(
        hit.is_some(),
        "the log should name the layer and /a:\n{logtext}"
    );

    // Lazy with an upper: no copy-up of the corrupt file.
    {
        let (upper, work) = upper_work(&env.fresh_dir("rw"));
        let tree_before = Snapshot::take(&tree);
        let m = mount_image(
            &store,
            "v",
            &mnt,
            &[
                OsStr::new("--upper"),
                upper.as_os_str(),
                OsStr::new("--work"),
                work.as_os_str(),
            ],
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let r = fs::OpenOptions::new().append(true).open(m.join("a"));
        assert_eq!(errno_of(r), Some(libc::EIO), "append to corrupt /a");
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(m.join("b"))
            .unwrap();
        f.write_all(b"+").unwrap();
        drop(f);
        m.unmount();
        assert_tree_unchanged(&tree_before, &tree);
        assert!(
            fs::symlink_metadata(upper.join("a")).is_err(),
            "the corrupt file was copied up"
        );
        let mut b2 = b.clone();
        b2.push(b'+');
        assert_eq!(fs::read(upper.join("b")).unwrap(), b2);
    }

    // --verify=none trusts the store.
    {
        let tree_before = Snapshot::take(&tree);
        let m = mount_image(&store, "v", &mnt, &[OsStr::new("--verify=none")], &[])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_errno(&m.join("a")), Ok(corrupt.clone()));
        m.unmount();
        assert_tree_unchanged(&tree_before, &tree);
    }

    // Export checks content as it writes: refused (the leftover check comes last, so that
    // the rest of the test runs either way).
    let outdir = env.fresh_dir("out");
    let line = store.refused(&[
        OsStr::new("layer"),
        OsStr::new("export"),
        OsStr::new(&d),
        OsStr::new("-o"),
        outdir.join("v.tar").as_os_str(),
    ]);
    assert!(
        line.contains("/a differs (content)"),
        "export of a corrupt layer should name /a: {line}"
    );
    let export_leftovers = names_in_or_empty(&outdir);

    // Repaired: OK again.
    flip_byte_in_place(&tree.join("a"), 5000);
    assert_eq!(store.ok(&["layer", "verify", &d]), format!("{d} OK\n"));

    // A changed mode.
    fs::set_permissions(tree.join("b"), fs::Permissions::from_mode(0o600)).unwrap();
    let out = store.run(&["layer", "verify", &d]);
    one_line_error_exit1(&out, "verify after chmod");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("/b differs (metadata)"),
        "{}",
        out.describe()
    );
    fs::set_permissions(tree.join("b"), fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(store.ok(&["layer", "verify", &d]), format!("{d} OK\n"));

    // A file added to the tree (the directory's mtime kept, so only the addition differs).
    let sub_md = fs::symlink_metadata(tree.join("sub")).unwrap();
    fs::write(tree.join("sub/extra"), b"smuggled\n").unwrap();
    set_times_nofollow(&tree.join("sub"), sub_md.mtime(), sub_md.mtime_nsec()).unwrap();
    let out = store.run(&["layer", "verify", &d]);
    one_line_error_exit1(&out, "verify with an added file");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("/sub/extra was added"),
        "{}",
        out.describe()
    );
    mount_refused(
        &store,
        "v",
        &mnt,
        &["--verify=full"],
        "/sub/extra was added",
    );
    {
        let tree_before = Snapshot::take(&tree);
        let m = mount_image(&store, "v", &mnt, &[], &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            read_errno(&m.join("sub/extra")),
            Err(libc::EIO),
            "added file"
        );
        assert_eq!(read_errno(&m.join("a")), Ok(a.clone()));
        assert_eq!(read_errno(&m.join("sub/c")), Ok(b"c\n".to_vec()));
        m.unmount();
        assert_tree_unchanged(&tree_before, &tree);
    }
    fs::remove_file(tree.join("sub/extra")).unwrap();
    set_times_nofollow(&tree.join("sub"), sub_md.mtime(), sub_md.mtime_nsec()).unwrap();
    assert_eq!(store.ok(&["layer", "verify", "--all"]), format!("{d} OK\n"));
    assert_eq!(
        export_leftovers,
        Vec::<String>::new(),
        "a failed `layer export -o` left files"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. rm, gc, layers held by images and mounts; prefixes and aliases
// ---------------------------------------------------------------------------------------------

fn small_layer(env: &TestEnv, name: &str) -> Layer {
    let l = env.layer(name);
    l.file(format!("{name}/file"), format!("{name}\n"));
    stamp_times(&l.root);
    l
}

#[test]
fn rm_and_gc_respect_images_and_mounts() {
    require_root();
    let env = TestEnv::new("store-gc");
    let store = store_in(&env, "store");
    let l1 = store.import(&small_layer(&env, "one").root);
    let l2 = store.import(&small_layer(&env, "two").root);
    let l3 = store.import(&small_layer(&env, "three").root);
    store.image_create("img", &[&l1, &l2]);
    // The same name with the same layers is fine; other layers are refused.
    store.image_create("img", &[&l1, &l2]);
    let line = store.refused(&["image", "create", "img", &l2, &l1]);
    assert!(line.contains("img"), "{line}");
    let line = store.refused(&[
        "image",
        "create",
        "other",
        &format!("sha256:{}", "0".repeat(64)),
    ]);
    assert!(line.contains("no layer"), "{line}");

    // A layer an image uses is not removed.
    let before = store.snapshot();
    let line = store.refused(&["layer", "rm", &l1]);
    assert!(
        line.contains("img"),
        "rm should name the image using it: {line}"
    );
    assert_store_unchanged(&before, &store.snapshot(), "refused layer rm");

    // gc removes the unused one only.
    let out = store.ok(&["gc"]);
    assert_eq!(out, format!("Deleted: {l3}\n1 layer(s) removed\n"));
    let mut want = vec![hex_of(&l1).to_string(), hex_of(&l2).to_string()];
    want.sort();
    assert_eq!(store.layer_hexes(), want);

    // Mounted, then its image removed: the mount holds the layers.
    let mnt = env.fresh_dir("mnt/g");
    let trees_before = [
        Snapshot::take(&store.tree(&l1)),
        Snapshot::take(&store.tree(&l2)),
    ];
    let m = mount_image(&store, "img", &mnt, &[], &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(store.ok(&["image", "rm", "img"]), "Untagged: img\n");
    let out = store.ok(&["gc"]);
    let lines: BTreeSet<&str> = out.lines().collect();
    let want: BTreeSet<String> = [
        format!("Kept (mounted): {l1}"),
        format!("Kept (mounted): {l2}"),
        "0 layer(s) removed".to_string(),
    ]
    .into();
    assert_eq!(
        lines,
        want.iter().map(|s| s.as_str()).collect(),
        "gc while mounted"
    );
    let v: serde_json::Value = serde_json::from_str(&store.ok(&["gc", "--json"])).unwrap();
    assert_eq!(v["removed"], serde_json::json!([]));
    let in_use: BTreeSet<&str> = v["in_use"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(in_use, BTreeSet::from([l1.as_str(), l2.as_str()]));
    let before = store.snapshot();
    let line = store.refused(&["layer", "rm", &l2]);
    assert!(line.contains("mount"), "rm of a mounted layer: {line}");
    assert_store_unchanged(&before, &store.snapshot(), "refused rm of a mounted layer");
    assert_eq!(
        fs::read(m.join("one/file")).unwrap(),
        b"one\n",
        "the mount still serves"
    );
    assert_eq!(fs::read(m.join("two/file")).unwrap(), b"two\n");
    run_ok(
        Command::new(stratafs_bin()).arg("umount").arg(&mnt),
        CMD_TIMEOUT,
    );
    m.unmount();
    for (before, l) in trees_before.iter().zip([&l1, &l2]) {
        assert_tree_unchanged(before, &store.tree(l));
    }

    // Unmounted: gc removes both.
    let out = store.ok(&["gc"]);
    let lines: BTreeSet<&str> = out.lines().collect();
    let want: BTreeSet<String> = [
        format!("Deleted: {l1}"),
        format!("Deleted: {l2}"),
        "2 layer(s) removed".to_string(),
    ]
    .into();
    assert_eq!(
        lines,
        want.iter().map(|s| s.as_str()).collect(),
        "gc after umount"
    );
    assert!(store.layer_hexes().is_empty());
    assert!(
        store.tmp_names().is_empty(),
        "tmp/: {:?}",
        store.tmp_names()
    );
    assert_eq!(store.ok(&["image", "ls", "--json"]).trim(), "[]");

    // layer rm of an unused layer, by prefix.
    let l4 = store.import(&small_layer(&env, "four").root);
    assert_eq!(
        store.ok(&["layer", "rm", &hex_of(&l4)[..10]]),
        format!("Deleted: {l4}\n")
    );
    assert!(store.layer_hexes().is_empty());
    let line = store.refused(&["layer", "rm", &l4]);
    assert!(line.contains("no layer"), "{line}");
}

/// The manifest of a tree that is only its root directory (mode 0755, owned by root).
fn root_only_manifest(sec: i64) -> Vec<u8> {
    format!("stratafs-manifest-v1\n/ d 0755 0 0 {sec}.000000000 - -\n").into_bytes()
}

#[test]
fn digest_prefixes_aliases_and_ambiguity() {
    require_root();
    let env = TestEnv::new("store-prefix");
    let store = store_in(&env, "store");
    // Two root-only trees whose digests (computed here from the documented manifest format)
    // share their first four hex digits.
    let mut by_prefix: BTreeMap<String, i64> = BTreeMap::new();
    let (s1, s2) = (1_000_000_000i64..)
        .find_map(|sec| {
            let h = sha256_hex(&root_only_manifest(sec));
            by_prefix
                .insert(h[..4].to_string(), sec)
                .map(|other| (other, sec))
        })
        .unwrap();
    let (h1, h2) = (
        sha256_hex(&root_only_manifest(s1)),
        sha256_hex(&root_only_manifest(s2)),
    );
    let mut digests = Vec::new();
    for (i, sec) in [s1, s2].into_iter().enumerate() {
        let d = env.fresh_dir(&format!("root{i}-"));
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        set_times_nofollow(&d, sec, 0).unwrap();
        digests.push(store.import(&d));
    }
    assert_eq!(
        digests,
        vec![format!("sha256:{h1}"), format!("sha256:{h2}")],
        "digests of root-only trees vs sha256 of the documented manifest"
    );
    assert_eq!(store.manifest(&digests[0]), root_only_manifest(s1));

    let common = &h1[..4];
    let line = store.refused(&["layer", "inspect", common]);
    assert!(line.contains("ambiguous"), "{line}");
    let line = store.refused(&["layer", "inspect", &format!("sha256:{common}")]);
    assert!(line.contains("ambiguous"), "{line}");
    // The shortest unique prefixes (at least four digits) name each.
    let split = h1
        .bytes()
        .zip(h2.bytes())
        .position(|(a, b)| a != b)
        .unwrap();
    let n = (split + 1).max(4);
    for (h, d) in [(&h1, &digests[0]), (&h2, &digests[1])] {
        for spec in [h[..n].to_string(), format!("sha256:{}", &h[..n]), d.clone()] {
            let v: serde_json::Value =
                serde_json::from_str(&store.ok(&["layer", "inspect", &spec])).unwrap();
            assert_eq!(v["digest"], d.as_str(), "inspect {spec}");
        }
    }
    // Too short, not hex, unknown.
    for spec in [&h1[..3], "zzzz", "sha256:"] {
        let line = store.refused(&["layer", "inspect", spec]);
        assert!(line.contains("not a digest"), "{spec}: {line}");
    }
    let unknown = (0..)
        .map(|i| format!("{i:06x}"))
        .find(|p| !h1.starts_with(p.as_str()) && !h2.starts_with(p.as_str()))
        .unwrap();
    let line = store.refused(&["layer", "inspect", &unknown]);
    assert!(line.contains("no layer matches"), "{line}");
    let full_unknown = format!("sha256:{}", "e".repeat(64));
    let line = store.refused(&["layer", "inspect", &full_unknown]);
    assert!(line.contains("no layer"), "{line}");

    // Aliases: the digest of an imported tar (compressed and not) names its layer.
    let tar = env.path("t.tar");
    fs::write(&tar, RawTar::new().file(b"f", b"content\n").bytes()).unwrap();
    let gz = env.path("t.tar.gz");
    compress("gzip", &tar, &gz);
    let d = store.import(&gz);
    for alias in [sha256_file(&tar), sha256_file(&gz)] {
        let v: serde_json::Value =
            serde_json::from_str(&store.ok(&["layer", "inspect", &format!("sha256:{alias}")]))
                .unwrap();
        assert_eq!(v["digest"], d.as_str(), "alias {alias}");
    }
    // A tar whose digest is an alias is not extracted again.
    assert_eq!(store.import_existing(&tar), d);
}

// ---------------------------------------------------------------------------------------------
// 7. Bad inputs
// ---------------------------------------------------------------------------------------------

struct BadCase {
    name: &'static str,
    bytes: Vec<u8>,
    /// Text the one-line error must contain (the entry, or what is wrong).
    needle: &'static str,
}

fn bad_cases(env: &TestEnv) -> Vec<BadCase> {
    let ok_tar = RawTar::new()
        .dir(b"d/")
        .file(b"d/one", &patterned(3000, 7))
        .file(b"d/two", &patterned(70_000, 9));
    let ok = ok_tar.bytes();
    let plain = env.path("ok.tar");
    fs::write(&plain, &ok).unwrap();
    let gz = env.path("ok.tar.gz");
    compress("gzip", &plain, &gz);
    let zst = env.path("ok.tar.zst");
    compress("zstd", &plain, &zst);
    let gzb = fs::read(&gz).unwrap();
    let zstb = fs::read(&zst).unwrap();

    let mut truncated_plain = ok.clone();
    truncated_plain.truncate(512 * 3 + 4000); // inside d/two's content
    let mut zst_mid = zstb.clone();
    let mid = zst_mid.len() / 2;
    zst_mid[mid] ^= 0xff;
    let mut zst_sum = zstb.clone();
    let last = zst_sum.len() - 1;
    zst_sum[last] ^= 0x01; // the content checksum
    let mut garbage: Vec<u8> = patterned(2048, 0x5a);
    garbage[0] = b'x';
    // Not a tar, with a newline inside the header's checksum field: still one line.
    let mut garbage_nl = garbage.clone();
    garbage_nl[150] = b'\n';

    vec![
        BadCase {
            name: "absolute path",
            bytes: RawTar::new().file(b"/etc/evil", b"x").bytes(),
            needle: "/etc/evil",
        },
        BadCase {
            name: "dot-dot",
            bytes: RawTar::new().file(b"../evil", b"x").bytes(),
            needle: "../evil",
        },
        BadCase {
            name: "dot-dot inside",
            bytes: RawTar::new().dir(b"a/").file(b"a/../../evil", b"x").bytes(),
            needle: "a/../../evil",
        },
        BadCase {
            name: "hard link outside",
            bytes: RawTar::new()
                .file(b"ok", b"x")
                .hardlink(b"evil", b"../../etc/passwd")
                .bytes(),
            needle: "evil",
        },
        BadCase {
            name: "hard link to a later entry",
            bytes: RawTar::new()
                .hardlink(b"early", b"late")
                .file(b"late", b"x")
                .bytes(),
            needle: "early",
        },
        BadCase {
            name: "hard link to itself",
            bytes: RawTar::new().hardlink(b"selfref", b"selfref").bytes(),
            needle: "selfref",
        },
        BadCase {
            name: "hard link to a directory",
            bytes: RawTar::new().dir(b"dir/").hardlink(b"dl", b"dir").bytes(),
            needle: "dl",
        },
        BadCase {
            name: "hard link to an absolute path",
            bytes: RawTar::new()
                .file(b"ok", b"x")
                .hardlink(b"abs", b"/ok")
                .bytes(),
            needle: "abs",
        },
        BadCase {
            name: "duplicate entry",
            bytes: RawTar::new()
                .file(b"dupfile", b"1")
                .file(b"dupfile", b"2")
                .bytes(),
            needle: "dupfile",
        },
        BadCase {
            name: "duplicate directory",
            bytes: RawTar::new().dir(b"dupdir/").dir(b"dupdir/").bytes(),
            needle: "dupdir",
        },
        BadCase {
            name: "entry below a symlink",
            bytes: RawTar::new()
                .symlink(b"lnk", b"/etc")
                .file(b"lnk/passwd", b"root::0:0::/:/bin/sh\n")
                .bytes(),
            needle: "lnk",
        },
        BadCase {
            name: "entry below a relative symlink",
            bytes: RawTar::new()
                .dir(b"real/")
                .symlink(b"rl", b"real")
                .file(b"rl/f", b"x")
                .bytes(),
            needle: "rl",
        },
        BadCase {
            name: "entry below a file",
            bytes: RawTar::new()
                .file(b"plainfile", b"x")
                .file(b"plainfile/inner", b"y")
                .bytes(),
            needle: "plainfile",
        },
        BadCase {
            name: "char 0/0 entry",
            bytes: RawTar::new().chardev(b"zeronode", 0, 0).bytes(),
            needle: "zeronode",
        },
        BadCase {
            name: "whiteout marker that is a directory",
            bytes: RawTar::new().dir(b".wh.x/").bytes(),
            needle: ".wh.x",
        },
        BadCase {
            name: "truncated tar",
            bytes: truncated_plain,
            needle: "d/two",
        },
        BadCase {
            name: "truncated gzip",
            bytes: gzb[..gzb.len() / 2].to_vec(),
            needle: "",
        },
        BadCase {
            name: "gzip without its trailer",
            bytes: gzb[..gzb.len() - 4].to_vec(),
            needle: "",
        },
        BadCase {
            name: "corrupt zstd",
            bytes: zst_mid,
            needle: "",
        },
        BadCase {
            name: "zstd with a bad checksum",
            bytes: zst_sum,
            needle: "",
        },
        BadCase {
            name: "garbage",
            bytes: garbage,
            needle: "",
        },
        BadCase {
            name: "garbage with a newline",
            bytes: garbage_nl,
            needle: "",
        },
        BadCase {
            name: "empty file",
            bytes: Vec::new(),
            needle: "",
        },
    ]
}

#[test]
fn bad_tars_are_refused_and_leave_the_store_untouched() {
    require_root();
    let env = TestEnv::new("store-bad");
    let store = store_in(&env, "store");
    // A store with content: a layer, an image, and the lock file.
    let keep = store.import(&small_layer(&env, "keep").root);
    store.image_create("keep", &[&keep]);
    let cases = bad_cases(&env);
    let dir = env.fresh_dir("bad");
    let mut problems = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let f = dir.join(format!("{i:02}.tar"));
        fs::write(&f, &c.bytes).unwrap();
        let before = store.snapshot();
        let out = store.run(&[OsStr::new("layer"), OsStr::new("import"), f.as_os_str()]);
        let r = std::panic::catch_unwind(|| {
            let line = one_line_error_exit1(&out, c.name);
            assert!(
                line.contains(c.needle),
                "{}: the error should name {:?}: {line}",
                c.name,
                c.needle
            );
            assert!(out.stdout.is_empty(), "{}: stdout {:?}", c.name, out.stdout);
            assert_store_unchanged(&before, &store.snapshot(), c.name);
        });
        if let Err(e) = r {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            problems.push(format!("[{}] {msg}", c.name));
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} bad inputs mishandled:\n{}",
        problems.len(),
        cases.len(),
        problems.join("\n")
    );
    assert_eq!(store.layer_hexes(), vec![hex_of(&keep).to_string()]);
    assert_eq!(
        store.ok(&["layer", "verify", "--all"]),
        format!("{keep} OK\n")
    );
}

#[test]
fn device_nodes_need_root() {
    require_root();
    let env = TestEnv::new("store-devices");
    let (uid, gid) = test_user_ids();
    let ustore_dir = dir_owned_by(&env, "ustore", uid, gid);
    let ustore = StoreDir::new(&ustore_dir).with_timeout(CMD_TIMEOUT);
    let user_cmd = |args: &[&OsStr]| {
        let mut c = as_test_user(stratafs_bin());
        c.arg("--store").arg(&ustore_dir).args(args);
        run_timeout(&mut c, CMD_TIMEOUT)
    };
    let with_dev = env.path("dev.tar");
    fs::write(
        &with_dev,
        RawTar::new()
            .dir(b"dev/")
            .chardev(b"dev/null", 1, 3)
            .file(b"dev/README", b"devices\n")
            .bytes(),
    )
    .unwrap();
    let plain = env.path("plain.tar");
    fs::write(&plain, RawTar::new().file(b"hello", b"hi\n").bytes()).unwrap();

    // The store made by the user, refusing the device node and staying as it was.
    let out = user_cmd(&[OsStr::new("layer"), OsStr::new("ls")]);
    assert!(out.success(), "unprivileged layer ls: {}", out.describe());
    let before = ustore.snapshot();
    let out = user_cmd(&[
        OsStr::new("layer"),
        OsStr::new("import"),
        with_dev.as_os_str(),
    ]);
    let line = one_line_error_exit1(&out, "unprivileged import of a device node");
    assert!(
        line.contains("dev/null") && line.contains("device"),
        "the error should name dev/null: {line}"
    );
    assert_store_unchanged(&before, &ustore.snapshot(), "refused device node");

    // Without the device, the user imports it; the tree and the manifest keep the user's ids.
    let out = user_cmd(&[OsStr::new("layer"), OsStr::new("import"), plain.as_os_str()]);
    assert!(out.success(), "unprivileged import: {}", out.describe());
    let (ud, _) = parse_layer_import(&String::from_utf8_lossy(&out.stdout));
    let tree = ustore.tree(&ud);
    let md = fs::symlink_metadata(tree.join("hello")).unwrap();
    assert_eq!(
        (md.uid(), md.gid()),
        (uid, gid),
        "unprivileged tree keeps the user's ids"
    );
    let m = String::from_utf8(ustore.manifest(&ud)).unwrap();
    assert!(
        m.contains(&format!("/hello f 0644 {uid} {gid} ")),
        "the manifest records the ids the tree holds:\n{m}"
    );
    let out = user_cmd(&[OsStr::new("layer"), OsStr::new("verify"), OsStr::new(&ud)]);
    assert!(out.success(), "unprivileged verify: {}", out.describe());

    // Root imports it.
    let store = store_in(&env, "store");
    let d = store.import(&with_dev);
    let m = String::from_utf8(store.manifest(&d)).unwrap();
    assert!(
        m.lines()
            .any(|l| l.starts_with("/dev/null c 0666 0 0 ") && l.contains(" 1:3 ")),
        "root's manifest should have the device:\n{m}"
    );
    let md = fs::symlink_metadata(store.tree(&d).join("dev/null")).unwrap();
    assert!(md.file_type().is_char_device() && md.rdev() == libc::makedev(1, 3));
}

// ---------------------------------------------------------------------------------------------
// 8. Concurrency and crashes
// ---------------------------------------------------------------------------------------------

/// A tar of `files` files of 1 MiB each (distinct content).
fn big_tar(path: &Path, files: usize) {
    let mut t = RawTar::new().dir(b"big/");
    for i in 0..files {
        t = t.file(
            format!("big/f{i:03}").as_bytes(),
            &patterned(1 << 20, i as u8),
        );
    }
    fs::write(path, t.bytes()).unwrap();
}

#[test]
fn concurrent_imports_store_one_layer() {
    require_root();
    let env = TestEnv::new("store-concurrent");
    let store = store_in(&env, "store");
    let tar = env.path("big.tar");
    big_tar(&tar, 64);
    // Open the store once so that both imports find it made.
    store.ok(&["layer", "ls"]);
    let spawn = || {
        store
            .cmd()
            .args([
                OsStr::new("layer"),
                OsStr::new("import"),
                OsStr::new("--json"),
            ])
            .arg(&tar)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children = [spawn(), spawn()];
    let mut results = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "concurrent import: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        results.push((
            v["digest"].as_str().unwrap().to_string(),
            v["existed"].as_bool().unwrap(),
        ));
    }
    assert_eq!(results[0].0, results[1].0, "the two imports disagree");
    assert_eq!(
        results.iter().filter(|r| !r.1).count(),
        1,
        "exactly one import stores the layer: {results:?}"
    );
    let d = &results[0].0;
    assert_eq!(store.layer_hexes(), vec![hex_of(d).to_string()]);
    assert!(
        store.tmp_names().is_empty(),
        "tmp/: {:?}",
        store.tmp_names()
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&fs::read(store.layer_dir(d).join("meta.json")).unwrap()).unwrap();
    assert_eq!(
        meta["aliases"],
        serde_json::json!([format!("sha256:{}", sha256_file(&tar))])
    );
    assert_eq!(store.ok(&["layer", "verify", d]), format!("{d} OK\n"));
}

/// Whether some regular file exists below `dir`.
fn has_file_below(dir: &Path) -> bool {
    let Ok(rd) = fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|e| match e.file_type() {
        Ok(t) if t.is_dir() => has_file_below(&e.path()),
        Ok(t) => t.is_file(),
        Err(_) => false,
    })
}

#[test]
fn killed_import_leaves_nothing_after_the_next_command() {
    require_root();
    let env = TestEnv::new("store-kill");
    let store = store_in(&env, "store");
    let keep = store.import(&small_layer(&env, "keep").root);
    store.image_create("keep", &[&keep]);
    let tar = env.path("big.tar");
    big_tar(&tar, 128);
    let before_layers = store.layer_hexes();

    let spawn = || {
        store
            .cmd()
            .args([OsStr::new("layer"), OsStr::new("import")])
            .arg(&tar)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The scratch directory of `pid` with a file of the tree written in it (extracting), or
    // the process gone.
    let extracting =
        |child: &mut std::process::Child| {
            let prefix = format!("{}-", child.id());
            wait_until(Duration::from_secs(120), || {
                store.tmp_names().iter().any(|n| {
                    n.starts_with(&prefix) && has_file_below(&store.dir.join("tmp").join(n))
                }) || child.try_wait().unwrap().is_some()
            })
        };

    // While an import runs, other commands (which clear tmp/ of dead processes) and gc leave
    // its scratch alone, and it completes.
    let mut child = spawn();
    let prefix = format!("{}-", child.id());
    assert!(
        extracting(&mut child),
        "the first import never started extracting"
    );
    store.ok(&["layer", "ls"]);
    assert_eq!(store.ok(&["gc"]), "0 layer(s) removed\n");
    let running = child.try_wait().unwrap().is_none();
    let scratch_kept = store.tmp_names().iter().any(|n| n.starts_with(&prefix));
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "an import during gc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !running || scratch_kept,
        "gc removed the scratch of a running import"
    );
    let (d, _) = parse_layer_import(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(store.ok(&["layer", "verify", &d]), format!("{d} OK\n"));
    assert_eq!(store.ok(&["layer", "rm", &d]), format!("Deleted: {d}\n"));
    assert_eq!(store.layer_hexes(), before_layers);

    // Killed while extracting.
    let mut child = spawn();
    let pid = child.id();
    let prefix = format!("{pid}-");
    let extracting = extracting(&mut child);
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let st = child.wait().unwrap();
    assert!(extracting, "the import never started extracting");
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "the import ended ({st}) before it could be killed: make the tar bigger"
    );
    let left = store.tmp_names();
    assert!(
        left.iter().any(|n| n.starts_with(&prefix)),
        "expected the killed import's scratch in tmp/: {left:?}"
    );
    assert_eq!(
        store.layer_hexes(),
        before_layers,
        "a killed import published a layer"
    );

    // The next command clears the dead process's scratch.
    store.ok(&["layer", "ls"]);
    assert!(
        store.tmp_names().is_empty(),
        "tmp/ after the next command: {:?}",
        store.tmp_names()
    );
    assert_eq!(store.layer_hexes(), before_layers);
    // And the import works afterwards.
    let d = store.import(&tar);
    assert_eq!(store.ok(&["layer", "verify", "--all"]).lines().count(), 2);
    assert!(store.layer_hexes().contains(&hex_of(&d).to_string()));
    assert!(store.layer_hexes().contains(&hex_of(&keep).to_string()));
}

// ---------------------------------------------------------------------------------------------
// 9. --json and the choice of the store
// ---------------------------------------------------------------------------------------------

#[test]
fn json_outputs_and_store_selection() {
    require_root();
    let env = TestEnv::new("store-json");
    let store = store_in(&env, "store");
    let l = small_layer(&env, "j");
    let tar = env.path("j.tar");
    fs::write(&tar, RawTar::new().file(b"t", b"tar\n").bytes()).unwrap();

    let v: serde_json::Value = serde_json::from_str(&store.ok(&[
        OsStr::new("layer"),
        OsStr::new("import"),
        l.root.as_os_str(),
        OsStr::new("--json"),
    ]))
    .unwrap();
    let d = v["digest"].as_str().unwrap().to_string();
    assert!(digest_ok(&d) && v["existed"] == false, "{v}");
    let v: serde_json::Value = serde_json::from_str(&store.ok(&[
        OsStr::new("layer"),
        OsStr::new("import"),
        OsStr::new("--json"),
        l.root.as_os_str(),
    ]))
    .unwrap();
    assert_eq!(v, serde_json::json!({"digest": d, "existed": true}));
    let td = store.import(&tar);

    let v: serde_json::Value = serde_json::from_str(&store.ok(&["layer", "ls", "--json"])).unwrap();
    let arr = v.as_array().expect("layer ls --json is an array");
    assert_eq!(arr.len(), 2);
    let mut seen = BTreeSet::new();
    for m in arr {
        for k in ["digest", "size", "entries", "created", "aliases", "source"] {
            assert!(m.get(k).is_some(), "layer ls entry without {k}: {m}");
        }
        seen.insert(m["digest"].as_str().unwrap().to_string());
        if m["digest"] == d.as_str() {
            assert_eq!(m["size"], 2, "{m}"); // "j\n"
            assert_eq!(m["entries"], 3, "{m}"); // /, /j, /j/file
            assert_eq!(m["aliases"], serde_json::json!([]));
            assert_eq!(m["source"], l.root.to_str().unwrap());
        } else {
            assert_eq!(
                m["aliases"],
                serde_json::json!([format!("sha256:{}", sha256_file(&tar))])
            );
        }
    }
    assert_eq!(seen, BTreeSet::from([d.clone(), td.clone()]));

    store.image_create("j/img:latest", &[&td, &d]);
    let v: serde_json::Value = serde_json::from_str(&store.ok(&["layer", "inspect", &d])).unwrap();
    assert_eq!(v["digest"], d.as_str());
    assert_eq!(v["images"], serde_json::json!(["j/img:latest"]));
    assert_eq!(v["tree"], store.tree(&d).to_str().unwrap());
    let v: serde_json::Value =
        serde_json::from_str(&store.ok(&["image", "inspect", "j/img:latest"])).unwrap();
    assert_eq!(v["name"], "j/img:latest");
    assert_eq!(v["layers"], serde_json::json!([td, d]));
    let v: serde_json::Value = serde_json::from_str(&store.ok(&["image", "ls", "--json"])).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["name"], "j/img:latest");
    let v: serde_json::Value =
        serde_json::from_str(&store.ok(&["layer", "verify", "--all", "--json"])).unwrap();
    let oks: BTreeSet<(String, bool)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["digest"].as_str().unwrap().to_string(),
                r["ok"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(oks, BTreeSet::from([(d.clone(), true), (td.clone(), true)]));
    let v: serde_json::Value = serde_json::from_str(&store.ok(&["gc", "--json"])).unwrap();
    assert_eq!(v, serde_json::json!({"removed": [], "in_use": []}));

    // $STRATAFS_STORE, and --store after the sub-command, and --store over the variable.
    let env_store = env.path("env-store");
    let out = run_ok(
        Command::new(stratafs_bin())
            .env("STRATAFS_STORE", &env_store)
            .args([
                OsStr::new("layer"),
                OsStr::new("import"),
                l.root.as_os_str(),
            ]),
        CMD_TIMEOUT,
    );
    assert_eq!(
        parse_layer_import(&String::from_utf8_lossy(&out.stdout)),
        (d.clone(), false)
    );
    assert_eq!(
        names_in_or_empty(&env_store.join("layers/sha256")),
        vec![hex_of(&d).to_string()]
    );
    let out = run_ok(
        Command::new(stratafs_bin())
            .env("STRATAFS_STORE", &env_store)
            .args(["layer", "ls", "--json"]),
        CMD_TIMEOUT,
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);

    let after_store = env.path("after-store");
    let out = run_ok(
        Command::new(stratafs_bin())
            .env("STRATAFS_STORE", &env_store)
            .args([OsStr::new("layer"), OsStr::new("import"), tar.as_os_str()])
            .arg("--store")
            .arg(&after_store),
        CMD_TIMEOUT,
    );
    assert_eq!(
        parse_layer_import(&String::from_utf8_lossy(&out.stdout)),
        (td.clone(), false)
    );
    assert_eq!(
        names_in_or_empty(&after_store.join("layers/sha256")),
        vec![hex_of(&td).to_string()]
    );
    assert_eq!(
        names_in_or_empty(&env_store.join("layers/sha256")),
        vec![hex_of(&d).to_string()],
        "--store must win over $STRATAFS_STORE"
    );
}
