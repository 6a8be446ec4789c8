//! `image import`: an OCI image layout directory (umoci, skopeo, buildah
//! output; `PATH:TAG` picks a tag) or a `docker save` tarball (legacy or
//! OCI-in-tar). Every blob is checked against its digest and every layer
//! against the config's diff_id while it streams; layers already stored
//! (by digest, diff_id or blob alias) are not extracted again. On any error
//! the layers this import added are removed again: the store is as before.

use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use serde::Deserialize;
use serde_json::Value;

use super::digest::Digest;
use super::import::{Expect, Progress};
use super::layout::{Store, open_dir};
use super::tree_writer::TreeWriter;
use super::{StoreError, tar_read};

/// What an image import did.
#[derive(Debug, Clone)]
pub struct OciImport {
    /// The image name it was stored under.
    pub name: String,
    /// Bottom first, with whether each was stored already.
    pub layers: Vec<(Digest, bool)>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize, Clone, Debug)]
struct Platform {
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct ImageManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// `os/arch[/variant]` of this machine, as OCI spells it.
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("linux/{arch}")
}

/// Opens `rel` beneath `root`: symlinks inside the layout are followed,
/// never out of it.
fn open_beneath(root: BorrowedFd<'_>, rel: &str) -> Result<fs::File, StoreError> {
    let fd: OwnedFd = rustix::fs::openat2(
        root,
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| StoreError::NotFound(format!("{rel}: {}", std::io::Error::from(e))))?;
    Ok(fs::File::from(fd))
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

struct Layout {
    dir: OwnedFd,
    name: String,
}

impl Layout {
    /// Reads a small blob whole and checks its digest (and size, if given).
    fn blob(&self, desc: &Descriptor) -> Result<Vec<u8>, StoreError> {
        let d = Digest::parse(&desc.digest)?;
        let mut bytes = Vec::new();
        open_beneath(self.dir.as_fd(), &blob_path(&d))
            .map_err(|_| StoreError::NotFound(format!("blob {d} is missing from the layout")))?
            .read_to_end(&mut bytes)?;
        let actual = Digest::of(&bytes);
        if actual != d {
            return Err(StoreError::Mismatch {
                what: "blob",
                blob: d.to_string(),
                actual: actual.to_string(),
            });
        }
        if let Some(size) = desc.size
            && size != bytes.len() as u64
        {
            return Err(StoreError::Invalid(format!(
                "blob {d}: {} bytes, descriptor says {size}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }
}

fn is_index(media_type: &str, json: &Value) -> bool {
    media_type.contains("image.index")
        || media_type.contains("manifest.list")
        || json.get("manifests").is_some()
}

fn pick_platform<'a>(
    manifests: &'a [Descriptor],
    want: &str,
) -> Result<&'a Descriptor, StoreError> {
    let parts: Vec<&str> = want.split('/').collect();
    let found = manifests.iter().find(|m| match &m.platform {
        Some(p) => {
            p.os == parts[0]
                && parts.get(1).is_none_or(|a| *a == p.architecture)
                && parts
                    .get(2)
                    .is_none_or(|v| p.variant.as_deref() == Some(*v))
        }
        None => false,
    });
    found.ok_or_else(|| {
        let have: Vec<String> = manifests
            .iter()
            .filter_map(|m| m.platform.as_ref())
            .map(|p| match &p.variant {
                Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                None => format!("{}/{}", p.os, p.architecture),
            })
            .collect();
        StoreError::NotFound(format!(
            "no image for platform {want} (the index has: {}); choose one with --platform",
            have.join(", ")
        ))
    })
}

impl Store {
    /// Imports an image; `spec` is a layout directory (optionally `:TAG`)
    /// or a docker save tarball.
    pub fn import_image(
        &self,
        spec: &str,
        name: Option<&str>,
        platform: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<OciImport, StoreError> {
        let (path, tag) = split_spec(spec);
        let meta = fs::metadata(&path).map_err(|e| StoreError::path(&path, e))?;
        let base = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let base = base
            .trim_end_matches(".tar")
            .trim_end_matches(".tgz")
            .to_string();
        // A tarball is unpacked into scratch first: its members are read
        // in whatever order the manifests ask.
        let (_scratch, dir) = if meta.is_dir() {
            (None, open_dir(&path)?)
        } else {
            let scratch = self.scratch()?;
            let unpacked = scratch.path().join("unpacked");
            fs::create_dir(&unpacked).map_err(|e| StoreError::path(&unpacked, e))?;
            let mut writer = TreeWriter::new(open_dir(&unpacked)?)?;
            let mut file = fs::File::open(&path).map_err(|e| StoreError::path(&path, e))?;
            let end = tar_read::extract(&mut file, &mut writer)
                .map_err(|e| StoreError::Invalid(format!("{}: {e}", path.display())))?;
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            tar_read::check_end(&end, len)
                .map_err(|e| StoreError::Invalid(format!("{}: {e}", path.display())))?;
            writer.finish()?;
            let fd = open_dir(&unpacked)?;
            (Some(scratch), fd)
        };
        let layout = Layout { dir, name: base };
        let plan = if open_beneath(layout.dir.as_fd(), "index.json").is_ok() {
            self.plan_oci(&layout, tag.as_deref(), platform)?
        } else if open_beneath(layout.dir.as_fd(), "manifest.json").is_ok() {
            self.plan_docker(&layout, tag.as_deref())?
        } else {
            return Err(StoreError::Invalid(format!(
                "{}: neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
                path.display()
            )));
        };
        let name = name.map(str::to_string).unwrap_or(plan.name.clone());
        super::images::check_name(&name)?;
        let mut added: Vec<Digest> = Vec::new();
        let result = self.run_plan(&layout, &plan, progress, &mut added);
        let pending = match result {
            Ok(layers) => layers,
            Err(e) => {
                for d in added {
                    let _ = self.remove_layer(&d);
                }
                return Err(e);
            }
        };
        let digests: Vec<Digest> = pending.iter().map(|p| p.digest).collect();
        if let Err(e) = self.create_image(&name, &digests, plan.config.clone(), plan.manifest, true)
        {
            for d in added {
                let _ = self.remove_layer(&d);
            }
            return Err(e);
        }
        // Only now that the image stands: aliases for layers stored before.
        for p in &pending {
            self.add_aliases(&p.digest, &p.aliases)?;
        }
        Ok(OciImport {
            name,
            layers: pending.iter().map(|p| (p.digest, p.existed)).collect(),
        })
    }

    fn run_plan(
        &self,
        layout: &Layout,
        plan: &Plan,
        progress: &dyn Progress,
        added: &mut Vec<Digest>,
    ) -> Result<Vec<Pending>, StoreError> {
        // Every blob must be there before anything is extracted.
        for l in &plan.layers {
            open_beneath(layout.dir.as_fd(), &l.file).map_err(|_| {
                StoreError::NotFound(format!("layer blob {} is missing from the layout", l.file))
            })?;
        }
        let mut out = Vec::new();
        for l in &plan.layers {
            let expect = Expect {
                blob: l.blob,
                diff_id: l.diff_id,
                defer_aliases: true,
            };
            let by_blob = match l.blob {
                Some(b) => self.find_alias(&b)?,
                None => None,
            };
            let by_diff_id = match (by_blob, l.diff_id) {
                (None, Some(d)) => self.find_alias(&d)?,
                _ => None,
            };
            if let Some(d) = by_blob {
                out.push(Pending::known(d, Vec::new()));
                continue;
            }
            let mut file = open_beneath(layout.dir.as_fd(), &l.file)?;
            let len = file.metadata().map(|m| m.len()).ok();
            progress.start(&format!("layer {}", short(l)), len);
            let result = match by_diff_id {
                // Stored from other bytes: this blob is still checked before
                // it becomes an alias.
                Some(d) => self
                    .check_blob(&mut file, expect)
                    .map(|()| Pending::known(d, l.blob.iter().map(|b| b.to_string()).collect())),
                None => self
                    .import_tar_stream(
                        &mut file,
                        expect,
                        format!("{}:{}", layout.name, l.file),
                        progress,
                    )
                    .map(|i| Pending {
                        digest: i.digest,
                        existed: i.existed,
                        aliases: i.pending_aliases,
                    }),
            };
            progress.finish();
            let pending = result.map_err(|e| match e {
                StoreError::Mismatch { .. } => e,
                other => StoreError::Invalid(format!("layer blob {}: {other}", l.file)),
            })?;
            if !pending.existed {
                added.push(pending.digest);
            }
            out.push(pending);
        }
        Ok(out)
    }

    fn plan_oci(
        &self,
        layout: &Layout,
        tag: Option<&str>,
        platform: Option<&str>,
    ) -> Result<Plan, StoreError> {
        let mut raw = Vec::new();
        open_beneath(layout.dir.as_fd(), "index.json")?.read_to_end(&mut raw)?;
        let index: Index = serde_json::from_slice(&raw)
            .map_err(|e| StoreError::Invalid(format!("index.json: {e}")))?;
        let chosen = match tag {
            Some(t) => index
                .manifests
                .iter()
                .find(|m| m.annotations.get(REF_NAME).map(String::as_str) == Some(t))
                .ok_or_else(|| {
                    StoreError::NotFound(format!("no tag {t:?} in the layout ({})", tags(&index)))
                })?,
            None if index.manifests.len() == 1 => &index.manifests[0],
            None if index.manifests.is_empty() => {
                return Err(StoreError::Invalid(
                    "the layout's index.json lists no image".into(),
                ));
            }
            None => match platform_choice(&index.manifests, platform)? {
                Some(d) => d,
                None => {
                    return Err(StoreError::Invalid(format!(
                        "the layout holds several images: add :TAG ({})",
                        tags(&index)
                    )));
                }
            },
        };
        let ref_name = chosen.annotations.get(REF_NAME).cloned();
        let mut desc_bytes = layout.blob(chosen)?;
        let mut media = chosen.media_type.clone();
        let mut manifest_digest = Digest::parse(&chosen.digest)?;
        for _ in 0..4 {
            let json: Value = serde_json::from_slice(&desc_bytes)?;
            if !is_index(&media, &json) {
                break;
            }
            let inner: Index = serde_json::from_value(json)?;
            let want = platform.map(str::to_string).unwrap_or_else(host_platform);
            let d = pick_platform(&inner.manifests, &want)?;
            media = d.media_type.clone();
            manifest_digest = Digest::parse(&d.digest)?;
            desc_bytes = layout.blob(d)?;
        }
        let manifest: ImageManifest = serde_json::from_slice(&desc_bytes)
            .map_err(|e| StoreError::Invalid(format!("image manifest {manifest_digest}: {e}")))?;
        let config_bytes = layout.blob(&manifest.config)?;
        let config: Value = serde_json::from_slice(&config_bytes)?;
        let diff_ids = diff_ids(&config)?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(StoreError::Invalid(format!(
                "manifest {manifest_digest} lists {} layers but its config {} diff_ids",
                manifest.layers.len(),
                diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        for (desc, diff_id) in manifest.layers.iter().zip(diff_ids) {
            if !desc.media_type.is_empty() && !desc.media_type.contains("tar") {
                return Err(StoreError::Invalid(format!(
                    "layer {}: unsupported media type {}",
                    desc.digest, desc.media_type
                )));
            }
            let blob = Digest::parse(&desc.digest)?;
            layers.push(PlannedLayer {
                file: blob_path(&blob),
                blob: Some(blob),
                diff_id: Some(diff_id),
            });
        }
        let name = match ref_name {
            Some(r) if r.contains(':') || r.contains('/') => r,
            Some(r) => format!("{}:{r}", layout.name),
            None => layout.name.clone(),
        };
        Ok(Plan {
            name,
            layers,
            config: Some(config),
            manifest: Some(manifest_digest),
        })
    }

    fn plan_docker(&self, layout: &Layout, tag: Option<&str>) -> Result<Plan, StoreError> {
        let mut raw = Vec::new();
        open_beneath(layout.dir.as_fd(), "manifest.json")?.read_to_end(&mut raw)?;
        let entries: Vec<DockerEntry> = serde_json::from_slice(&raw)
            .map_err(|e| StoreError::Invalid(format!("manifest.json: {e}")))?;
        let chosen = match tag {
            Some(t) => entries
                .iter()
                .find(|e| {
                    e.repo_tags
                        .iter()
                        .flatten()
                        .any(|rt| rt == t || rt.rsplit_once(':').is_some_and(|(_, tg)| tg == t))
                })
                .ok_or_else(|| StoreError::NotFound(format!("no tag {t:?} in the archive")))?,
            None => match entries.as_slice() {
                [one] => one,
                [] => return Err(StoreError::Invalid("manifest.json lists no image".into())),
                _ => {
                    return Err(StoreError::Invalid(
                        "the archive holds several images: add :TAG".into(),
                    ));
                }
            },
        };
        let mut config_bytes = Vec::new();
        open_beneath(layout.dir.as_fd(), &chosen.config)
            .map_err(|_| {
                StoreError::NotFound(format!(
                    "config {} is missing from the archive",
                    chosen.config
                ))
            })?
            .read_to_end(&mut config_bytes)?;
        // Config files are named by their digest, in both archive formats.
        let named = chosen
            .config
            .rsplit('/')
            .next()
            .map(|n| n.trim_end_matches(".json"))
            .and_then(Digest::from_hex);
        if let Some(want) = named
            && want != Digest::of(&config_bytes)
        {
            return Err(StoreError::Mismatch {
                what: "config",
                blob: want.to_string(),
                actual: Digest::of(&config_bytes).to_string(),
            });
        }
        let config: Value = serde_json::from_slice(&config_bytes)?;
        let diff_ids = diff_ids(&config)?;
        if diff_ids.len() != chosen.layers.len() {
            return Err(StoreError::Invalid(format!(
                "manifest.json lists {} layers but the config {} diff_ids",
                chosen.layers.len(),
                diff_ids.len()
            )));
        }
        let layers = chosen
            .layers
            .iter()
            .zip(diff_ids)
            .map(|(file, diff_id)| PlannedLayer {
                blob: file
                    .strip_prefix("blobs/sha256/")
                    .and_then(Digest::from_hex),
                file: file.clone(),
                diff_id: Some(diff_id),
            })
            .collect();
        let name = chosen
            .repo_tags
            .iter()
            .flatten()
            .next()
            .cloned()
            .unwrap_or_else(|| layout.name.clone());
        Ok(Plan {
            name,
            layers,
            config: Some(config),
            manifest: None,
        })
    }
}

fn platform_choice<'a>(
    manifests: &'a [Descriptor],
    platform: Option<&str>,
) -> Result<Option<&'a Descriptor>, StoreError> {
    // Several untagged manifests with platforms: a flattened multi-arch layout.
    if manifests.iter().all(|m| m.platform.is_some()) {
        let want = platform.map(str::to_string).unwrap_or_else(host_platform);
        return pick_platform(manifests, &want).map(Some);
    }
    Ok(None)
}

fn tags(index: &Index) -> String {
    let t: Vec<&str> = index
        .manifests
        .iter()
        .filter_map(|m| m.annotations.get(REF_NAME).map(String::as_str))
        .collect();
    if t.is_empty() {
        "it has no tags".into()
    } else {
        format!("tags: {}", t.join(", "))
    }
}

fn diff_ids(config: &Value) -> Result<Vec<Digest>, StoreError> {
    config
        .pointer("/rootfs/diff_ids")
        .and_then(Value::as_array)
        .ok_or_else(|| StoreError::Invalid("image config has no rootfs.diff_ids".into()))?
        .iter()
        .map(|v| Digest::parse(v.as_str().unwrap_or("")))
        .collect()
}

fn short(l: &PlannedLayer) -> String {
    l.diff_id
        .or(l.blob)
        .map(|d| d.hex()[..12].to_string())
        .unwrap_or_else(|| l.file.clone())
}

/// A layer of an image being imported, with the aliases to record once
/// the import has succeeded.
struct Pending {
    digest: Digest,
    existed: bool,
    aliases: Vec<String>,
}

impl Pending {
    fn known(digest: Digest, aliases: Vec<String>) -> Pending {
        Pending {
            digest,
            existed: true,
            aliases,
        }
    }
}

struct PlannedLayer {
    file: String,
    blob: Option<Digest>,
    diff_id: Option<Digest>,
}

struct Plan {
    name: String,
    layers: Vec<PlannedLayer>,
    config: Option<Value>,
    manifest: Option<Digest>,
}

/// `dir:tag` → (dir, Some(tag)) unless `dir:tag` itself exists.
fn split_spec(spec: &str) -> (PathBuf, Option<String>) {
    if Path::new(spec).exists() {
        return (PathBuf::from(spec), None);
    }
    match spec.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') && Path::new(p).exists() => {
            (PathBuf::from(p), Some(t.to_string()))
        }
        _ => (PathBuf::from(spec), None),
    }
}
