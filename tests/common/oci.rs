//! OCI images and the store, for the tests that use real image tooling (`oci_tools.rs`):
//!
//! - [`LayerTar`]: layer tars written entry by entry (PAX records for nanosecond and negative
//!   mtimes, large ids, long names, `SCHILY.xattr.*`), whiteouts as `.wh.` files;
//! - [`Layout`]: an OCI image layout read and edited as JSON and blobs (hand-built images,
//!   multi-platform indexes, corrupted blobs, rewritten configs);
//! - `umoci` and `skopeo` wrappers ([`umoci_layout`], [`umoci_unpack`], [`skopeo_copy`]);
//! - [`StoreDir`]: `stratafs --store DIR ...` with its output parsed, and [`mount_image`]
//!   (a [`StratafsMount`] guard of `stratafs mount IMAGE MNT`, borrowing the [`Stack`] that
//!   checks the store and the source layouts are left bit-identical);
//! - the comparisons: [`umoci_problems`] (an `umoci unpack` rootfs vs a mount) and
//!   [`store_changes`] (a store before/after a failed import).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::env::{CmdOutput, TestEnv, run_ok, run_timeout};
use super::mounts::{MountMode, StratafsMount, stratafs_bin};
use super::oracle::Stack;
use super::snapshot::{Entry, Kind, Mode, Snapshot, sha256_hex, show_path, snapshot_diff};
use super::sys::set_times_nofollow;

const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------------
// Layer tars
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub enum TarKind {
    Dir,
    File(Vec<u8>),
    Symlink(Vec<u8>),
    /// A tar hard link to the named earlier entry of the same layer.
    HardLink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// One tar entry. `path` is relative (no leading `./`), directories without a trailing `/`
/// (it is added when written); `.` is the layer root.
#[derive(Clone, Debug)]
pub struct TarEntry {
    pub path: Vec<u8>,
    pub kind: TarKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds (may be negative) and nanoseconds counting forward.
    pub mtime: (i64, u32),
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl TarEntry {
    pub fn owner(&mut self, uid: u64, gid: u64) -> &mut Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn mtime(&mut self, sec: i64, nsec: u32) -> &mut Self {
        self.mtime = (sec, nsec);
        self
    }

    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.mode = mode;
        self
    }

    pub fn xattr(&mut self, name: &str, value: &[u8]) -> &mut Self {
        self.xattrs.push((name.to_string(), value.to_vec()));
        self
    }
}

/// A layer tar being described, written by [`LayerTar::bytes`] in the order entries were added.
#[derive(Clone, Debug, Default)]
pub struct LayerTar {
    pub entries: Vec<TarEntry>,
    /// Write every mtime as a PAX record, even whole seconds: other tar bytes (another
    /// diff_id) for the same tree (the same layer digest).
    pub always_pax_mtime: bool,
}

/// A PAX record `LEN key=value\n` (LEN counts the whole record, its own digits included).
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// PAX time: `[-]SECONDS.NANOSECONDS` of the signed total (`(-3, 5)` is `-2.999999995`).
pub fn pax_time(sec: i64, nsec: u32) -> String {
    let total = i128::from(sec) * 1_000_000_000 + i128::from(nsec);
    let sign = if total < 0 { "-" } else { "" };
    let a = total.abs();
    format!("{sign}{}.{:09}", a / 1_000_000_000, a % 1_000_000_000)
}

fn set_field(field: &mut [u8], bytes: &[u8]) {
    field.iter_mut().for_each(|b| *b = 0);
    let n = bytes.len().min(field.len());
    field[..n].copy_from_slice(&bytes[..n]);
}

const USTAR_ID_MAX: u64 = 0o7777777;

impl LayerTar {
    pub fn new() -> LayerTar {
        LayerTar::default()
    }

    fn push(&mut self, path: impl AsRef<[u8]>, kind: TarKind, mode: u32) -> &mut TarEntry {
        let path = path.as_ref().to_vec();
        assert!(
            !path.starts_with(b"/") && !path.ends_with(b"/"),
            "test bug: tar path {}",
            show_path(&path)
        );
        self.entries.push(TarEntry {
            path,
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: (1_600_000_000, 0),
            xattrs: Vec::new(),
        });
        self.entries.last_mut().unwrap()
    }

    pub fn dir(&mut self, path: impl AsRef<[u8]>, mode: u32) -> &mut TarEntry {
        self.push(path, TarKind::Dir, mode)
    }

    pub fn file(
        &mut self,
        path: impl AsRef<[u8]>,
        data: impl AsRef<[u8]>,
        mode: u32,
    ) -> &mut TarEntry {
        self.push(path, TarKind::File(data.as_ref().to_vec()), mode)
    }

    pub fn symlink(&mut self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &mut TarEntry {
        self.push(path, TarKind::Symlink(target.as_ref().to_vec()), 0o777)
    }

    pub fn hardlink(&mut self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &mut TarEntry {
        self.push(path, TarKind::HardLink(target.as_ref().to_vec()), 0o644)
    }

    pub fn chardev(&mut self, path: impl AsRef<[u8]>, major: u32, minor: u32) -> &mut TarEntry {
        self.push(path, TarKind::Char(major, minor), 0o666)
    }

    pub fn blockdev(&mut self, path: impl AsRef<[u8]>, major: u32, minor: u32) -> &mut TarEntry {
        self.push(path, TarKind::Block(major, minor), 0o660)
    }

    pub fn fifo(&mut self, path: impl AsRef<[u8]>) -> &mut TarEntry {
        self.push(path, TarKind::Fifo, 0o600)
    }

    /// `DIR/.wh.NAME` for `DIR/NAME` (an empty regular file, 0644, ids 0, mtime 0).
    pub fn whiteout(&mut self, path: impl AsRef<[u8]>) -> &mut TarEntry {
        let p = path.as_ref();
        let (dir, name) = match p.iter().rposition(|b| *b == b'/') {
            Some(i) => (&p[..=i], &p[i + 1..]),
            None => (&b""[..], p),
        };
        let mut wh = dir.to_vec();
        wh.extend_from_slice(b".wh.");
        wh.extend_from_slice(name);
        self.push(wh, TarKind::File(Vec::new()), 0o644).mtime(0, 0)
    }

    /// `DIR/.wh..wh..opq`: DIR hides the layers below.
    pub fn opaque(&mut self, dir: impl AsRef<[u8]>) -> &mut TarEntry {
        let mut p = dir.as_ref().to_vec();
        p.extend_from_slice(b"/.wh..wh..opq");
        self.push(p, TarKind::File(Vec::new()), 0o644).mtime(0, 0)
    }

    /// The tar (ustar headers, PAX records where ustar cannot say it).
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in &self.entries {
            let mut name = if e.path == b"." {
                b"./".to_vec()
            } else {
                e.path.clone()
            };
            if matches!(e.kind, TarKind::Dir) && !name.ends_with(b"/") {
                name.push(b'/');
            }
            let mut pax = Vec::new();
            if name.len() > 99 || !name.is_ascii() {
                pax_record(&mut pax, "path", &name);
            }
            let link: Option<&[u8]> = match &e.kind {
                TarKind::Symlink(t) | TarKind::HardLink(t) => Some(t),
                _ => None,
            };
            if let Some(t) = link
                && (t.len() > 99 || !t.is_ascii())
            {
                pax_record(&mut pax, "linkpath", t);
            }
            if e.uid > USTAR_ID_MAX {
                pax_record(&mut pax, "uid", e.uid.to_string().as_bytes());
            }
            if e.gid > USTAR_ID_MAX {
                pax_record(&mut pax, "gid", e.gid.to_string().as_bytes());
            }
            if e.mtime.1 != 0 || e.mtime.0 < 0 || self.always_pax_mtime {
                pax_record(&mut pax, "mtime", pax_time(e.mtime.0, e.mtime.1).as_bytes());
            }
            for (k, v) in &e.xattrs {
                pax_record(&mut pax, &format!("SCHILY.xattr.{k}"), v);
            }
            if !pax.is_empty() {
                let mut h = tar::Header::new_ustar();
                let mut xname = b"PaxHeaders/".to_vec();
                xname.extend_from_slice(&name[name.len().saturating_sub(80)..]);
                set_field(&mut h.as_old_mut().name, &xname);
                h.set_entry_type(tar::EntryType::XHeader);
                h.set_mode(0o644);
                h.set_size(pax.len() as u64);
                h.set_mtime(0);
                h.set_cksum();
                b.append(&h, pax.as_slice()).unwrap();
            }
            let mut h = tar::Header::new_ustar();
            set_field(&mut h.as_old_mut().name, &name);
            h.set_mode(e.mode);
            h.set_uid(e.uid.min(USTAR_ID_MAX));
            h.set_gid(e.gid.min(USTAR_ID_MAX));
            h.set_mtime(e.mtime.0.max(0) as u64);
            let (ty, data): (tar::EntryType, &[u8]) = match &e.kind {
                TarKind::Dir => (tar::EntryType::Directory, &[]),
                TarKind::File(d) => (tar::EntryType::Regular, d),
                TarKind::Symlink(_) => (tar::EntryType::Symlink, &[]),
                TarKind::HardLink(_) => (tar::EntryType::Link, &[]),
                TarKind::Char(..) => (tar::EntryType::Char, &[]),
                TarKind::Block(..) => (tar::EntryType::Block, &[]),
                TarKind::Fifo => (tar::EntryType::Fifo, &[]),
            };
            h.set_entry_type(ty);
            if let Some(t) = link {
                set_field(&mut h.as_old_mut().linkname, t);
            }
            if let TarKind::Char(ma, mi) | TarKind::Block(ma, mi) = e.kind {
                h.set_device_major(ma).unwrap();
                h.set_device_minor(mi).unwrap();
            }
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    pub fn write(&self, path: &Path) {
        fs::write(path, self.bytes()).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

// ---------------------------------------------------------------------------------------------
// OCI image layouts
// ---------------------------------------------------------------------------------------------

pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn media_type(self) -> String {
        match self {
            Compression::None => MT_LAYER.to_string(),
            Compression::Gzip => format!("{MT_LAYER}+gzip"),
            Compression::Zstd => format!("{MT_LAYER}+zstd"),
        }
    }

    pub fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
                e.write_all(tar).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::stream::encode_all(tar, 3).unwrap(),
        }
    }
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

fn hex_of(digest: &str) -> &str {
    digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"))
}

/// A descriptor `{mediaType, digest, size}`.
pub fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": sha256_digest(bytes), "size": bytes.len()})
}

/// An OCI image layout directory.
#[derive(Clone, Debug)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    /// An empty layout (oci-layout, empty index.json, blobs/sha256/).
    pub fn create(dir: &Path) -> Layout {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let l = Layout {
            dir: dir.to_path_buf(),
        };
        l.set_index(Vec::new());
        l
    }

    pub fn open(dir: &Path) -> Layout {
        assert!(
            dir.join("index.json").is_file(),
            "{} is not an OCI layout",
            dir.display()
        );
        Layout {
            dir: dir.to_path_buf(),
        }
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(hex_of(digest))
    }

    /// Stores a blob (named by its digest) and returns the digest.
    pub fn put_blob(&self, bytes: &[u8]) -> String {
        let d = sha256_digest(bytes);
        fs::write(self.blob_path(&d), bytes).unwrap();
        d
    }

    pub fn blob(&self, digest: &str) -> Vec<u8> {
        fs::read(self.blob_path(digest))
            .unwrap_or_else(|e| panic!("blob {digest} of {}: {e}", self.dir.display()))
    }

    pub fn json_blob(&self, digest: &str) -> Value {
        serde_json::from_slice(&self.blob(digest)).unwrap()
    }

    pub fn put_json(&self, v: &Value) -> Vec<u8> {
        let bytes = serde_json::to_vec(v).unwrap();
        self.put_blob(&bytes);
        bytes
    }

    pub fn index(&self) -> Value {
        serde_json::from_slice(&fs::read(self.dir.join("index.json")).unwrap()).unwrap()
    }

    pub fn set_index(&self, manifests: Vec<Value>) {
        let v = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests});
        fs::write(self.dir.join("index.json"), serde_json::to_vec(&v).unwrap()).unwrap();
    }

    /// Stores the layers (compressed as asked), their config (`rootfs.diff_ids` = digests of
    /// the uncompressed tars) and manifest; returns the manifest's descriptor (with `platform`
    /// when given as (os, arch)). Not yet referenced by index.json.
    pub fn add_image(&self, layers: &[(Vec<u8>, Compression)], platform: (&str, &str)) -> Value {
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for (tar, c) in layers {
            let blob = c.compress(tar);
            self.put_blob(&blob);
            descs.push(descriptor(&c.media_type(), &blob));
            diff_ids.push(sha256_digest(tar));
        }
        let config = json!({
            "architecture": platform.1,
            "os": platform.0,
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = self.put_json(&config);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": descriptor(MT_CONFIG, &config),
            "layers": descs,
        });
        let manifest = self.put_json(&manifest);
        let mut d = descriptor(MT_MANIFEST, &manifest);
        d["platform"] = json!({"os": platform.0, "architecture": platform.1});
        d
    }

    /// The manifest descriptor index.json gives for `tag` (ref.name annotation).
    pub fn tagged(&self, tag: &str) -> Value {
        self.index()["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"][REF_NAME] == tag)
            .unwrap_or_else(|| panic!("no tag {tag} in {}", self.dir.display()))
            .clone()
    }

    /// The image manifest of `tag`.
    pub fn manifest(&self, tag: &str) -> Value {
        self.json_blob(self.tagged(tag)["digest"].as_str().unwrap())
    }

    /// Layer blob digests of `tag`, bottom first.
    pub fn layer_blobs(&self, tag: &str) -> Vec<String> {
        self.manifest(tag)["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn layer_media_types(&self, tag: &str) -> Vec<String> {
        self.manifest(tag)["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["mediaType"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn config_digest(&self, tag: &str) -> String {
        self.manifest(tag)["config"]["digest"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Rewrites the config of `tag` with `f`, then the manifest's config descriptor and the
    /// index entry, consistently (new blobs; the old ones stay).
    pub fn rewrite_config(&self, tag: &str, f: impl FnOnce(&mut Value)) {
        let mut manifest = self.manifest(tag);
        let mut config = self.json_blob(manifest["config"]["digest"].as_str().unwrap());
        f(&mut config);
        let config = self.put_json(&config);
        manifest["config"] = descriptor(MT_CONFIG, &config);
        let manifest = self.put_json(&manifest);
        let mut index = self.index();
        for m in index["manifests"].as_array_mut().unwrap() {
            if m["annotations"][REF_NAME] == tag {
                m["digest"] = json!(sha256_digest(&manifest));
                m["size"] = json!(manifest.len());
            }
        }
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }
}

/// Flips one bit of the byte at `at` (a fraction of the length) of a file.
pub fn flip_byte(path: &Path, at: f64) -> usize {
    let mut b = fs::read(path).unwrap();
    let i = ((b.len() as f64) * at) as usize;
    b[i] ^= 0x01;
    // umoci and skopeo write blobs read-only; root writes anyway.
    fs::write(path, &b).unwrap();
    i
}

/// Flips one bit of the byte at offset `at` of a file in place and restores its mtime: a bit flip
/// on disk, not a write (unlike [`flip_byte`], which rewrites the file and takes a fraction).
pub fn flip_byte_in_place(p: &Path, at: u64) {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let md = fs::symlink_metadata(p).unwrap();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x01;
    f.write_all_at(&b, at).unwrap();
    drop(f);
    set_times_nofollow(p, md.mtime(), md.mtime_nsec()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// GNU tar
// ---------------------------------------------------------------------------------------------

/// `tar --format=pax` (GNU tar: PAX times with nanoseconds, numeric ids, xattrs) of `dir`, the
/// entries sorted by name.
pub fn gnu_tar(dir: &Path, out: &Path) {
    gnu_pax_tar(dir, out, true, TOOL_TIMEOUT);
}

/// [`gnu_tar`] without `--sort=name`: the entries in readdir order, for tests whose point is
/// that the order does not matter; each tar limited to 120 s.
pub fn gnu_tar_readdir_order(dir: &Path, out: &Path) {
    gnu_pax_tar(dir, out, false, Duration::from_secs(120));
}

fn gnu_pax_tar(dir: &Path, out: &Path, sort: bool, timeout: Duration) {
    let mut cmd = Command::new("tar");
    cmd.args([
        "--create",
        "--format=pax",
        "--xattrs",
        "--xattrs-include=*",
        "--numeric-owner",
    ]);
    if sort {
        cmd.arg("--sort=name");
    }
    cmd.arg("--pax-option=delete=atime,delete=ctime")
        .arg("--file")
        .arg(out)
        .arg("--directory")
        .arg(dir)
        .arg(".");
    run_ok(&mut cmd, timeout);
}

// ---------------------------------------------------------------------------------------------
// umoci and skopeo
// ---------------------------------------------------------------------------------------------

pub fn umoci(args: &[&OsStr]) -> CmdOutput {
    run_ok(Command::new("umoci").args(args), TOOL_TIMEOUT)
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// `umoci init`, `umoci new`, then `umoci raw add-layer` of each tar (bottom first): an image
/// `dir:tag` with gzip layers and a config whose diff_ids umoci computed.
pub fn umoci_layout(dir: &Path, tag: &str, tars: &[PathBuf]) -> Layout {
    umoci(&[os("init"), os("--layout"), dir.as_os_str()]);
    let image = image_ref(dir, tag);
    umoci(&[os("new"), os("--image"), &image]);
    for t in tars {
        umoci(&[
            os("raw"),
            os("add-layer"),
            os("--image"),
            &image,
            t.as_os_str(),
        ]);
    }
    Layout::open(dir)
}

/// `DIR:TAG`.
pub fn image_ref(dir: &Path, tag: &str) -> OsString {
    let mut s = dir.as_os_str().to_os_string();
    s.push(":");
    s.push(tag);
    s
}

/// `umoci unpack --image DIR:TAG BUNDLE` (as root: real owners and devices); returns the
/// rootfs.
pub fn umoci_unpack(dir: &Path, tag: &str, bundle: &Path) -> PathBuf {
    umoci(&[
        os("unpack"),
        os("--image"),
        &image_ref(dir, tag),
        bundle.as_os_str(),
    ]);
    bundle.join("rootfs")
}

/// `skopeo copy --insecure-policy [ARGS] SRC DST`.
pub fn skopeo_copy(args: &[&str], src: &str, dst: &str) -> CmdOutput {
    run_ok(
        Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--quiet"])
            .args(args)
            .arg(src)
            .arg(dst),
        TOOL_TIMEOUT,
    )
}

// ---------------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------------

/// What `stratafs image import` printed: each layer (bottom first) with whether it was stored
/// already, and the name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageImport {
    pub layers: Vec<(String, bool)>,
    pub name: String,
}

impl ImageImport {
    pub fn digests(&self) -> Vec<String> {
        self.layers.iter().map(|(d, _)| d.clone()).collect()
    }

    pub fn all_existed(&self) -> bool {
        self.layers.iter().all(|(_, e)| *e)
    }

    pub fn none_existed(&self) -> bool {
        self.layers.iter().all(|(_, e)| !*e)
    }
}

fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Parses `image import`'s output: `sha256:… Imported` / `sha256:… Already exists` lines,
/// then `Loaded image: NAME`; any other line is an error.
pub fn parse_image_import(stdout: &str) -> Result<ImageImport, String> {
    let mut layers = Vec::new();
    let mut name = None;
    for line in stdout.lines() {
        if name.is_some() {
            return Err(format!("line after `Loaded image:`: {line:?}"));
        }
        if let Some(n) = line.strip_prefix("Loaded image: ") {
            name = Some(n.to_string());
        } else if let Some((d, what)) = line.split_once(' ')
            && is_digest(d)
            && (what == "Imported" || what == "Already exists")
        {
            layers.push((d.to_string(), what == "Already exists"));
        } else {
            return Err(format!("unexpected output line {line:?}"));
        }
    }
    Ok(ImageImport {
        layers,
        name: name.ok_or("no `Loaded image:` line")?,
    })
}

/// A layer digest as the store prints it: `sha256:` and 64 lowercase hex digits (stricter than
/// [`is_digest`], which takes upper case too).
pub fn digest_ok(s: &str) -> bool {
    s.len() == 71
        && s.starts_with("sha256:")
        && s[7..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `sha256:<hex>` or `sha256:<hex> Already exists`, one line.
pub fn parse_layer_import(stdout: &str) -> (String, bool) {
    let line = stdout
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("import output is not one line: {stdout:?}"));
    assert!(
        !line.contains('\n'),
        "import output is not one line: {stdout:?}"
    );
    let (d, existed) = match line.strip_suffix(" Already exists") {
        Some(d) => (d, true),
        None => (line, false),
    };
    assert!(digest_ok(d), "import printed {stdout:?}, not a digest");
    (d.to_string(), existed)
}

/// A store directory (`stratafs --store DIR`).
#[derive(Clone, Debug)]
pub struct StoreDir {
    pub dir: PathBuf,
    /// Limit of each command ([`StoreDir::run`]).
    pub timeout: Duration,
}

impl StoreDir {
    pub fn new(dir: &Path) -> StoreDir {
        StoreDir {
            dir: dir.to_path_buf(),
            timeout: TOOL_TIMEOUT,
        }
    }

    /// The store `name` in the test's directory.
    pub fn in_env(env: &TestEnv, name: &str) -> StoreDir {
        StoreDir::new(&env.path(name))
    }

    /// The same store, with another limit for each command.
    pub fn with_timeout(mut self, timeout: Duration) -> StoreDir {
        self.timeout = timeout;
        self
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(stratafs_bin());
        c.arg("--store").arg(&self.dir);
        // No `$STRATAFS_STORE`: only `--store` picks the store.
        c.env_remove("STRATAFS_STORE");
        c
    }

    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> CmdOutput {
        run_timeout(self.cmd().args(args), self.timeout)
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        let out = self.run(args);
        assert!(
            out.success(),
            "stratafs --store {} {} failed: {}",
            self.dir.display(),
            shown.join(" "),
            out.describe()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `image import SPEC [EXTRA...]`, which must succeed; its output parsed.
    pub fn import_image(&self, spec: &OsStr, extra: &[&str]) -> ImageImport {
        let mut args: Vec<&OsStr> = vec![os("image"), os("import"), spec];
        args.extend(extra.iter().map(|a| os(a)));
        let out = self.ok(&args);
        parse_image_import(&out).unwrap_or_else(|e| panic!("image import output: {e}:\n{out}"))
    }

    /// `layer import PATH` (a directory or a tar): the digest.
    pub fn import_layer(&self, path: &Path) -> String {
        let out = self.ok(&[os("layer"), os("import"), path.as_os_str()]);
        let d = out.split_whitespace().next().unwrap_or("").to_string();
        assert!(is_digest(&d), "layer import printed {out:?}");
        d
    }

    /// `layer import` of each directory or tar (bottom first), then `image create NAME` of
    /// them: the layers' digests.
    pub fn image_from<const N: usize>(&self, name: &str, bottom_first: [&Path; N]) -> [String; N] {
        let digests = bottom_first.map(|p| self.import_layer(p));
        let mut args = vec!["image", "create", name];
        args.extend(digests.iter().map(String::as_str));
        self.ok(&args);
        digests
    }

    /// `image inspect NAME` as JSON.
    pub fn image(&self, name: &str) -> Value {
        serde_json::from_str(&self.ok(&["image", "inspect", name])).unwrap()
    }

    /// The layers of image `name`, bottom first.
    pub fn image_layers(&self, name: &str) -> Vec<String> {
        self.image(name)["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }

    /// Digests of every stored layer, sorted.
    pub fn layer_digests(&self) -> Vec<String> {
        let v: Value = serde_json::from_str(&self.ok(&["layer", "ls", "--json"])).unwrap();
        let mut d: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect();
        d.sort();
        d
    }

    /// `layer export DIGEST -o FILE`.
    pub fn export_layer(&self, digest: &str, out: &Path) {
        self.ok(&[
            os("layer"),
            os("export"),
            os(digest),
            os("-o"),
            out.as_os_str(),
        ]);
    }

    /// A snapshot of the whole store, for "nothing changed" checks.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::take(&self.dir)
    }

    /// Runs a command that must be refused (exit 1, one `stratafs:` line); that line.
    pub fn refused<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        let what = format!(
            "stratafs {:?}",
            args.iter().map(|a| a.as_ref()).collect::<Vec<_>>()
        );
        one_line_error_exit1(&out, &what)
    }

    /// `layer import SRC`; (digest, existed), checking the output's exact form.
    pub fn import_any(&self, src: &Path) -> (String, bool) {
        parse_layer_import(&self.ok(&[OsStr::new("layer"), OsStr::new("import"), src.as_os_str()]))
    }

    /// `layer import SRC` that must store a new layer.
    pub fn import(&self, src: &Path) -> String {
        let (d, existed) = self.import_any(src);
        assert!(!existed, "{} was already stored as {d}", src.display());
        d
    }

    /// `layer import SRC` that must find the layer already stored.
    pub fn import_existing(&self, src: &Path) -> String {
        let (d, existed) = self.import_any(src);
        assert!(
            existed,
            "{} should have been found in the store (Already exists), got a new layer {d}",
            src.display()
        );
        d
    }

    pub fn manifest(&self, digest: &str) -> Vec<u8> {
        let out = self.run(&["layer", "inspect", digest, "--manifest"]);
        assert!(
            out.success(),
            "layer inspect --manifest: {}",
            out.describe()
        );
        out.stdout
    }

    pub fn layer_dir(&self, digest: &str) -> PathBuf {
        self.dir
            .join("layers/sha256")
            .join(digest.strip_prefix("sha256:").unwrap_or(digest))
    }

    pub fn tree(&self, digest: &str) -> PathBuf {
        self.layer_dir(digest).join("tree")
    }

    /// Hex names under layers/sha256 (sorted).
    pub fn layer_hexes(&self) -> Vec<String> {
        super::env::names_in_or_empty(&self.dir.join("layers/sha256"))
    }

    pub fn tmp_names(&self) -> Vec<String> {
        super::env::names_in_or_empty(&self.dir.join("tmp"))
    }

    /// `layer export DIGEST` to stdout: the tar bytes.
    pub fn export(&self, digest: &str) -> Vec<u8> {
        let out = self.run(&["layer", "export", digest]);
        assert!(
            out.success(),
            "layer export {digest}: status {:?}, stderr {}",
            out.status,
            out.stderr_str()
        );
        assert!(!out.stdout.is_empty(), "layer export wrote nothing");
        out.stdout
    }

    pub fn image_create<S: AsRef<str>>(&self, name: &str, bottom_first: &[S]) {
        let mut args = vec!["image", "create", name];
        args.extend(bottom_first.iter().map(|s| s.as_ref()));
        let out = self.ok(&args);
        assert_eq!(out.trim(), name, "image create prints the name");
    }
}

/// Mounts stored image `image` (foreground daemon; `extra` e.g. `--verify none`) on a fresh
/// directory. The guard borrows `stack`, whose layers should include the store, so the store
/// is checked bit-identical after the unmount.
pub fn mount_image<'s>(
    stack: &'s Stack<'_>,
    store: &StoreDir,
    image: &str,
    extra: &[&str],
) -> StratafsMount<'s> {
    let env = stack.env();
    let mnt = env.fresh_dir("mnt/i");
    let log = env.root.join(format!(
        "{}.log",
        mnt.file_name().unwrap().to_string_lossy()
    ));
    let mut cmd = store.cmd();
    cmd.arg("mount")
        .arg(image)
        .arg(&mnt)
        .arg("--foreground")
        .args(extra);
    StratafsMount::start_command(cmd, &mnt, &log, MountMode::Foreground)
        .unwrap_or_else(|e| panic!("stratafs mount {image} failed: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Comparisons
// ---------------------------------------------------------------------------------------------

/// A path whose st_nlink legitimately differs between an umoci rootfs and a stratafs mount:
/// a name of a lower-layer hard-link group some of whose other names a higher layer replaced or
/// whited out. umoci applies the layers to one directory tree, so the survivor's st_nlink
/// counts the names left; a union mount shows the lower inode, which still has all its names
/// in its own layer (as kernel overlayfs does).
#[derive(Clone, Copy, Debug)]
pub struct NlinkException<'a> {
    pub path: &'a str,
    pub umoci: u64,
    pub stratafs: u64,
}

/// Sets every directory's st_size to 0: it is the host filesystem's bookkeeping (it depends on
/// how many entries the directory ever held), recorded by neither a tar nor a layer manifest,
/// and an imported image's trees are other directories than the ones it was made from.
pub fn zero_dir_sizes(s: &mut Snapshot) {
    for e in s.entries.values_mut() {
        if e.kind == Kind::Dir {
            e.size = 0;
        }
    }
}

/// Merged-mode differences between a reference view (`kernel`: an overlay of the directories
/// an image was made from) and a stratafs mount of the imported image, directory sizes aside
/// ([`zero_dir_sizes`]).
pub fn image_problems(reference: &Snapshot, mount: &Snapshot, lr: &str) -> Vec<String> {
    let (mut r, mut m) = (reference.clone(), mount.clone());
    zero_dir_sizes(&mut r);
    zero_dir_sizes(&mut m);
    snapshot_diff(&r, &m, Mode::Merged, lr, "stratafs")
}

/// Differences between an `umoci unpack` rootfs (reference) and a stratafs mount of the same
/// image, in the merged comparison mode (type, mode, owner, size, content, symlink target,
/// rdev, xattrs, mtime with nanoseconds, nlink of non-directories, d_type, hard-link groups).
/// Left out, because umoci does not reproduce them (each checked where it matters by the
/// callers):
/// - directory sizes ([`zero_dir_sizes`]);
/// - the root directory's mtime: umoci sets it to the time of the unpack;
/// - xattrs with an empty value: umoci 0.4.7 does not restore them;
/// - st_nlink of the `nlink` exceptions (each must differ exactly as stated).
pub fn umoci_problems(
    umoci: &Snapshot,
    mount: &Snapshot,
    nlink: &[NlinkException<'_>],
) -> Vec<String> {
    let mut u = umoci.clone();
    let mut m = mount.clone();
    let mut problems = Vec::new();
    if let (Some(ur), Some(mr)) = (u.entries.get_mut(&Vec::new()), m.entries.get(&Vec::new())) {
        ur.mtime = mr.mtime;
    }
    for s in [&mut u, &mut m] {
        for e in s.entries.values_mut() {
            e.xattrs.retain(|_, v| !v.is_empty());
        }
    }
    for x in nlink {
        let key = x.path.as_bytes().to_vec();
        let (Some(ue), Some(me)) = (u.entries.get_mut(&key), m.entries.get_mut(&key)) else {
            problems.push(format!("{}: missing from umoci or from the mount", x.path));
            continue;
        };
        if (ue.nlink, me.nlink) != (x.umoci, x.stratafs) {
            problems.push(format!(
                "{}: nlink umoci {} stratafs {}, expected {} and {}",
                x.path, ue.nlink, me.nlink, x.umoci, x.stratafs
            ));
        }
        ue.nlink = me.nlink;
    }
    problems.extend(image_problems(&u, &m, "umoci"));
    problems
}

/// Directories of a store whose mtime and ctime change when an import is rolled back, by
/// design (docs/format.md): a layer is renamed into `layers/sha256/`, then out through
/// `tmp/` and deleted.
pub const STORE_DIRS_TOUCHED_BY_ROLLBACK: &[&str] = &["layers/sha256", "tmp"];

/// Raw differences between two snapshots of a store (every field but atime, inode numbers
/// included), except the mtime and ctime of [`STORE_DIRS_TOUCHED_BY_ROLLBACK`].
pub fn store_changes(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut b = before.clone();
    let a = after.clone();
    for d in STORE_DIRS_TOUCHED_BY_ROLLBACK {
        let key = d.as_bytes().to_vec();
        if let (Some(be), Some(ae)) = (b.entries.get_mut(&key), a.entries.get(&key)) {
            be.mtime = ae.mtime;
            be.ctime = ae.ctime;
        }
    }
    snapshot_diff(&b, &a, Mode::Raw, "before", "after")
}

/// The entry at `rel`, or a panic naming the snapshot.
pub fn entry<'s>(s: &'s Snapshot, rel: &str) -> &'s Entry {
    s.entry(rel.as_bytes())
}

/// Whether `rel` is a regular file in `s`.
pub fn is_file(s: &Snapshot, rel: &str) -> bool {
    s.get(rel).is_some_and(|e| e.kind == Kind::File)
}

/// The single line a failing command wrote on stderr (panics unless exactly one, starting
/// with `stratafs: `).
pub fn one_line_error(out: &CmdOutput) -> String {
    assert!(!out.success(), "expected a failure, got {}", out.describe());
    let err = out.stderr_str();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("stratafs: "),
        "expected one `stratafs: ` error line, got {err:?}"
    );
    lines[0].to_string()
}

/// A stricter [`one_line_error`], for refusals whose exit status is part of the contract: exit
/// status exactly 1, and stderr exactly one line (newline-terminated, no blank lines) starting
/// `stratafs: `; that line. `what` names the command in the panic messages.
pub fn one_line_error_exit1(out: &CmdOutput, what: &str) -> String {
    let err = out.stderr_str();
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(1),
        "{what}: expected exit status 1: {}",
        out.describe()
    );
    assert!(
        err.starts_with("stratafs: ") && err.ends_with('\n') && err.matches('\n').count() == 1,
        "{what}: expected one line `stratafs: ...` on stderr, got {err:?}"
    );
    err.trim_end().to_string()
}
