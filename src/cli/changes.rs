//! `stratafs diff` and `stratafs commit`: printing and storing what a
//! writable layer changed.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;
use stratafs::changeset::{self, Source};
use stratafs::store::{Digest, Store, VerifyMode};

/// Where the lower layers come from when the target is not a live mount.
pub struct Lowers {
    pub dirs: Vec<PathBuf>,
    pub from_image: Option<String>,
    pub work: Option<PathBuf>,
}

fn source(
    target: &Path,
    lowers: Lowers,
    store: &Option<PathBuf>,
) -> anyhow::Result<(Source, Vec<stratafs::store::Held>)> {
    let mut dirs = lowers.dirs;
    let mut held = Vec::new();
    if let Some(image) = &lowers.from_image {
        let store = super::store_cmds::open(store)?;
        let prepared = store.prepare_image(image, VerifyMode::None, &stratafs::store::Quiet)?;
        dirs.extend(prepared.lowers);
        held = prepared.held;
    }
    Ok((Source::resolve(target, dirs, lowers.work)?, held))
}

pub fn diff(
    target: &Path,
    lowers: Lowers,
    store: &Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let (src, _held) = source(target, lowers, store)?;
    let changes = changeset::diff(&src).with_context(|| format!("diff of {}", target.display()))?;
    let mut out = std::io::stdout().lock();
    if json {
        let list: Vec<_> = changes
            .iter()
            .map(|c| json!({"kind": c.kind, "path": String::from_utf8_lossy(&c.path)}))
            .collect();
        serde_json::to_writer_pretty(&mut out, &list)?;
        writeln!(out)?;
    } else {
        for c in &changes {
            writeln!(out, "{c}")?;
        }
    }
    Ok(())
}

pub struct CommitArgs {
    pub image: Option<String>,
    pub message: Option<String>,
    pub oci_tar: Option<PathBuf>,
    pub json: bool,
}

/// The stored digest of a lower layer: its own if it is a store tree, else
/// the digest of importing it.
fn layer_digest(store: &Store, dir: &Path) -> anyhow::Result<Digest> {
    let layers = std::fs::canonicalize(store.layers_dir())?;
    if let Ok(abs) = std::fs::canonicalize(dir)
        && abs.file_name().is_some_and(|n| n == "tree")
        && let Some(hex_dir) = abs.parent()
        && hex_dir.parent() == Some(layers.as_path())
        && let Some(d) = hex_dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(Digest::from_hex)
    {
        return Ok(d);
    }
    Ok(store
        .import_dir(dir, &stratafs::store::Quiet)
        .with_context(|| format!("storing lower layer {}", dir.display()))?
        .digest)
}

pub fn commit(
    target: &Path,
    lowers: Lowers,
    store_dir: &Option<PathBuf>,
    args: CommitArgs,
) -> anyhow::Result<()> {
    let (src, _held) = source(target, lowers, store_dir)?;
    let store = super::store_cmds::open(store_dir)?;
    let (imported, changes) = changeset::commit(&src, &store, args.message.as_deref())
        .with_context(|| format!("commit of {}", target.display()))?;
    let mut image_name = None;
    if let Some(name) = &args.image {
        let mut layers = Vec::new();
        for dir in src.lowers.iter().rev() {
            layers.push(layer_digest(&store, dir)?);
        }
        layers.push(imported.digest);
        store.create_image(name, &layers, None, None, false)?;
        image_name = Some(name.clone());
    }
    if let Some(path) = &args.oci_tar {
        super::store_cmds::export_to(&store, &imported.digest, path)?;
    }
    if args.json {
        let v = json!({
            "digest": imported.digest.to_string(),
            "existed": imported.existed,
            "image": image_name,
            "changes": changes.len(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{}", imported.digest);
        if let Some(n) = image_name {
            println!("image: {n}");
        }
    }
    Ok(())
}
