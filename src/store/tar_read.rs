//! Extracting an OCI/Docker layer tar into a [`TreeWriter`]: `.wh.` files
//! become whiteouts and opaque markers, PAX records give long names,
//! nanosecond times and xattrs; anything unsafe or ambiguous is refused.

use std::io::Read;

use tar::EntryType;

use super::StoreError;
use super::manifest::Meta;
use super::pax_time;
use super::tree_writer::{EntryPath, Special, TreeWriter};

const OPAQUE: &[u8] = b".wh..wh..opq";
const WHITEOUT: &[u8] = b".wh.";

fn bad(path: &[u8], e: impl std::fmt::Display) -> StoreError {
    StoreError::entry(path, e.to_string())
}

fn id(path: &[u8], v: std::io::Result<u64>) -> Result<u32, StoreError> {
    let v = v.map_err(|e| bad(path, e))?;
    u32::try_from(v).map_err(|_| bad(path, format!("id {v} out of range")))
}

/// Where the last entry of an archive ended, to check that an
/// end-of-archive marker follows.
pub struct End {
    offset: u64,
    last: String,
}

/// A tar ends with zero blocks; a stream that stops right after an entry's
/// data was cut short (and an empty stream is no archive at all).
pub fn check_end(end: &End, stream_len: u64) -> Result<(), StoreError> {
    if stream_len == 0 {
        return Err(StoreError::Invalid("empty input: not a tar archive".into()));
    }
    if stream_len < end.offset + 512 {
        return Err(StoreError::Invalid(format!(
            "truncated tar: no end-of-archive marker after {}",
            end.last
        )));
    }
    Ok(())
}

/// Extracts every entry of `reader` (an uncompressed tar) into `out`.
/// Truncated or corrupt archives are errors naming the last good entry.
pub fn extract(reader: &mut dyn Read, out: &mut TreeWriter) -> Result<End, StoreError> {
    let mut archive = tar::Archive::new(reader);
    let mut last = String::from("(start of archive)");
    let mut offset = 0u64;
    let entries = archive
        .entries()
        .map_err(|e| StoreError::Invalid(format!("not a tar archive: {}", one_line(&e))))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            StoreError::Invalid(format!(
                "corrupt or truncated tar after {last}: {}",
                one_line(&e)
            ))
        })?;
        let raw = entry.path_bytes().into_owned();
        last = format!("entry {:?}", String::from_utf8_lossy(&raw));
        offset = entry.raw_file_position() + entry.size().div_ceil(512) * 512;
        add_entry(&mut entry, &raw, out)?;
    }
    Ok(End { offset, last })
}

fn add_entry(
    entry: &mut tar::Entry<'_, &mut dyn Read>,
    raw: &[u8],
    out: &mut TreeWriter,
) -> Result<(), StoreError> {
    let path = EntryPath::parse(raw)?;
    let kind = entry.header().entry_type();
    let name = path.name().to_vec();
    if !path.is_root() && name.starts_with(WHITEOUT) {
        if !matches!(
            kind,
            EntryType::Regular | EntryType::Continuous | EntryType::Link
        ) {
            return Err(bad(raw, "whiteout marker that is not a plain file"));
        }
        let parent = path.parent();
        if name == OPAQUE {
            return out.opaque(&parent);
        }
        let target = &name[WHITEOUT.len()..];
        if target.starts_with(WHITEOUT) || target.is_empty() {
            // aufs bookkeeping (`.wh..wh.plnk`, ...): no meaning in a layer.
            return Ok(());
        }
        return out.whiteout(&parent.child(target));
    }
    let header = entry.header().clone();
    let mut meta = Meta {
        mode: header.mode().map_err(|e| bad(raw, e))? & 0o7777,
        uid: id(raw, header.uid())?,
        gid: id(raw, header.gid())?,
        mtime: header.mtime().map_err(|e| bad(raw, e))? as i64,
        mtime_nsec: 0,
        xattrs: Vec::new(),
    };
    if let Some(pax) = entry.pax_extensions().map_err(|e| bad(raw, e))? {
        for ext in pax {
            let ext = ext.map_err(|e| bad(raw, e))?;
            let key = ext.key().map_err(|e| bad(raw, e))?;
            if let Some(attr) = key.strip_prefix("SCHILY.xattr.") {
                if !crate::layer::is_private_xattr(attr.as_bytes()) {
                    meta.xattrs
                        .push((attr.as_bytes().to_vec(), ext.value_bytes().to_vec()));
                }
            } else if key == "uid" || key == "gid" {
                let v = ext.value().map_err(|e| bad(raw, e))?;
                let id: u32 = v
                    .parse()
                    .map_err(|_| bad(raw, format!("bad PAX {key} {v:?}")))?;
                if key == "uid" {
                    meta.uid = id;
                } else {
                    meta.gid = id;
                }
            } else if key == "mtime" {
                let v = ext.value().map_err(|e| bad(raw, e))?;
                (meta.mtime, meta.mtime_nsec) =
                    pax_time::parse(v).ok_or_else(|| bad(raw, format!("bad PAX mtime {v:?}")))?;
            }
        }
    }
    meta.xattrs.sort();
    meta.xattrs.dedup_by(|a, b| a.0 == b.0);
    let link = || -> Result<Vec<u8>, StoreError> {
        entry
            .link_name_bytes()
            .map(|l| l.into_owned())
            .ok_or_else(|| bad(raw, "link without a target"))
    };
    let device = |kind: fn(u32, u32) -> Special| -> Result<Special, StoreError> {
        let major = header.device_major().map_err(|e| bad(raw, e))?.unwrap_or(0);
        let minor = header.device_minor().map_err(|e| bad(raw, e))?.unwrap_or(0);
        Ok(kind(major, minor))
    };
    match kind {
        EntryType::Directory => out.dir(&path, meta),
        _ if path.is_root() => Err(bad(raw, "the layer root must be a directory")),
        EntryType::Regular | EntryType::Continuous => {
            let size = entry.size();
            out.file(&path, &meta, size, entry)
        }
        EntryType::Symlink => {
            let target = link()?;
            out.symlink(&path, &meta, &target)
        }
        EntryType::Link => {
            let target = EntryPath::parse(&link()?)
                .map_err(|e| bad(raw, format!("hard link target: {e}")))?;
            out.hardlink(&path, &target)
        }
        EntryType::Char => {
            let s = device(Special::Char)?;
            out.special(&path, &meta, s)
        }
        EntryType::Block => {
            let s = device(Special::Block)?;
            out.special(&path, &meta, s)
        }
        EntryType::Fifo => out.special(&path, &meta, Special::Fifo),
        other => Err(bad(raw, format!("unsupported tar entry type {other:?}"))),
    }
}

/// The tar crate quotes raw header bytes in its errors.
fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().escape_debug().to_string()
}
