//! `layer`, `image` and `gc` sub-commands over the store: parsing is in
//! `mod.rs`, the work in `stratafs::store`; this file prints results.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::json;
use stratafs::store::{Digest, Image, LayerMeta, Store};

use super::progress::Bar;

pub fn open(store: &Option<PathBuf>) -> anyhow::Result<Store> {
    let dir = store
        .clone()
        .unwrap_or_else(stratafs::store::default_store_dir);
    Store::open(&dir).with_context(|| format!("opening the store at {}", dir.display()))
}

fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

pub fn layer_import(store: &Store, src: &Path, json: bool) -> anyhow::Result<()> {
    let bar = Bar::new(json);
    let meta = std::fs::metadata(src).with_context(|| format!("{}", src.display()))?;
    let imported = if meta.is_dir() {
        store.import_dir(src, &bar)
    } else {
        store.import_tar_file(src, &bar)
    }
    .with_context(|| format!("importing {}", src.display()))?;
    if json {
        return print_json(
            &json!({"digest": imported.digest.to_string(), "existed": imported.existed}),
        );
    }
    if imported.existed {
        println!("{} Already exists", imported.digest);
    } else {
        println!("{}", imported.digest);
    }
    Ok(())
}

pub fn layer_ls(store: &Store, json: bool) -> anyhow::Result<()> {
    let layers = store.layers()?;
    if json {
        return print_json(&serde_json::to_value(&layers)?);
    }
    println!("{:<71}  {:>10}  {:>8}  SOURCE", "DIGEST", "SIZE", "ENTRIES");
    for l in layers {
        println!(
            "{:<71}  {:>10}  {:>8}  {}",
            l.digest,
            human(l.size),
            l.entries,
            l.source
        );
    }
    Ok(())
}

pub fn layer_inspect(store: &Store, spec: &str, manifest: bool) -> anyhow::Result<()> {
    let d = store.resolve_layer(spec)?;
    if manifest {
        let bytes = std::fs::read(store.layer_dir(&d).join("manifest"))?;
        std::io::stdout().lock().write_all(&bytes)?;
        return Ok(());
    }
    let meta: LayerMeta = store.layer_meta(&d)?;
    let images: Vec<String> = store
        .images()?
        .into_iter()
        .filter(|i| i.layers.contains(&meta.digest))
        .map(|i| i.name)
        .collect();
    let mut v = serde_json::to_value(&meta)?;
    v["tree"] = json!(store.tree_path(&d));
    v["images"] = json!(images);
    print_json(&v)
}

pub fn layer_verify(store: &Store, specs: &[String], all: bool, json: bool) -> anyhow::Result<()> {
    let digests: Vec<Digest> = if all {
        store
            .layers()?
            .iter()
            .map(|m| Digest::parse(&m.digest))
            .collect::<Result<_, _>>()?
    } else if specs.is_empty() {
        bail!("name a layer to verify, or pass --all");
    } else {
        specs
            .iter()
            .map(|s| store.resolve_layer(s))
            .collect::<Result<_, _>>()?
    };
    let bar = Bar::new(json);
    let mut bad = Vec::new();
    let mut results = Vec::new();
    for d in digests {
        match store.verify_layer(&d, &bar) {
            Ok(()) => {
                if !json {
                    println!("{d} OK");
                }
                results.push(json!({"digest": d.to_string(), "ok": true}));
            }
            Err(e) => {
                if !json {
                    println!("{d} FAILED: {e}");
                }
                results.push(json!({"digest": d.to_string(), "ok": false, "error": e.to_string()}));
                bad.push(d);
            }
        }
    }
    if json {
        print_json(&json!(results))?;
    }
    if !bad.is_empty() {
        bail!("{} layer(s) failed verification", bad.len());
    }
    Ok(())
}

pub fn layer_export(store: &Store, spec: &str, output: Option<&Path>) -> anyhow::Result<()> {
    let d = store.resolve_layer(spec)?;
    match output {
        Some(path) => export_to(store, &d, path),
        None => {
            if std::io::stdout().is_terminal() {
                bail!("refusing to write a tar to a terminal: redirect stdout or pass -o FILE");
            }
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            store.export_layer(&d, &mut out)?;
            out.flush()?;
            Ok(())
        }
    }
}

/// Writes layer `d` as a tar to `path` (gzip for `.gz`/`.tgz`, zstd for
/// `.zst`, both deterministic), through a temporary name.
pub fn export_to(store: &Store, d: &Digest, path: &Path) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    let name = path.to_string_lossy();
    let written = (|| -> anyhow::Result<()> {
        let file = std::fs::File::create(&tmp).with_context(|| format!("{}", tmp.display()))?;
        let file = if name.ends_with(".gz") || name.ends_with(".tgz") {
            let mut gz = flate2::GzBuilder::new().mtime(0).write(
                std::io::BufWriter::new(file),
                flate2::Compression::default(),
            );
            store.export_layer(d, &mut gz)?;
            gz.finish()?.into_inner().map_err(|e| e.into_error())?
        } else if name.ends_with(".zst") {
            let mut z = zstd::Encoder::new(std::io::BufWriter::new(file), 3)?;
            store.export_layer(d, &mut z)?;
            z.finish()?.into_inner().map_err(|e| e.into_error())?
        } else {
            let mut w = std::io::BufWriter::new(file);
            store.export_layer(d, &mut w)?;
            w.into_inner().map_err(|e| e.into_error())?
        };
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

pub fn layer_rm(store: &Store, specs: &[String]) -> anyhow::Result<()> {
    for s in specs {
        let d = store.resolve_layer(s)?;
        store.remove_layer(&d)?;
        println!("Deleted: {d}");
    }
    Ok(())
}

pub fn image_import(
    store: &Store,
    spec: &str,
    name: Option<&str>,
    platform: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let bar = Bar::new(json);
    let r = store
        .import_image(spec, name, platform, &bar)
        .with_context(|| format!("importing {spec}"))?;
    if json {
        return print_json(&json!({
            "name": r.name,
            "layers": r.layers.iter().map(|(d, existed)| json!({"digest": d.to_string(), "existed": existed})).collect::<Vec<_>>(),
        }));
    }
    for (d, existed) in &r.layers {
        if *existed {
            println!("{d} Already exists");
        } else {
            println!("{d} Imported");
        }
    }
    println!("Loaded image: {}", r.name);
    Ok(())
}

pub fn image_create(store: &Store, name: &str, layers: &[String]) -> anyhow::Result<()> {
    let digests: Vec<Digest> = layers
        .iter()
        .map(|s| store.resolve_layer(s))
        .collect::<Result<_, _>>()?;
    let image = store.create_image(name, &digests, None, None, false)?;
    println!("{}", image.name);
    Ok(())
}

pub fn image_ls(store: &Store, json: bool) -> anyhow::Result<()> {
    let images = store.images()?;
    if json {
        return print_json(&serde_json::to_value(&images)?);
    }
    println!("{:<40}  {:>6}  {:>10}  TOP LAYER", "NAME", "LAYERS", "SIZE");
    for i in images {
        let size: u64 = image_size(store, &i);
        println!(
            "{:<40}  {:>6}  {:>10}  {}",
            i.name,
            i.layers.len(),
            human(size),
            i.layers.last().map(|l| &l[..19.min(l.len())]).unwrap_or("")
        );
    }
    Ok(())
}

fn image_size(store: &Store, i: &Image) -> u64 {
    i.layer_digests()
        .unwrap_or_default()
        .iter()
        .filter_map(|d| store.layer_meta(d).ok())
        .map(|m| m.size)
        .sum()
}

pub fn image_inspect(store: &Store, name: &str) -> anyhow::Result<()> {
    let image = store.image(name)?;
    print_json(&serde_json::to_value(&image)?)
}

pub fn image_rm(store: &Store, names: &[String]) -> anyhow::Result<()> {
    for n in names {
        store.remove_image(n)?;
        println!("Untagged: {n}");
    }
    Ok(())
}

pub fn gc(store: &Store, json: bool) -> anyhow::Result<()> {
    let (removed, busy) = store.gc()?;
    if json {
        return print_json(&json!({
            "removed": removed.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            "in_use": busy.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        }));
    }
    for d in &removed {
        println!("Deleted: {d}");
    }
    for d in &busy {
        println!("Kept (mounted): {d}");
    }
    println!("{} layer(s) removed", removed.len());
    Ok(())
}
