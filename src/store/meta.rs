//! `meta.json` beside each stored layer: sizes, time of import, aliases.

use serde::{Deserialize, Serialize};

/// What the store knows about a layer besides its tree and manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerMeta {
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    /// Bytes of regular-file content (each inode once).
    pub size: u64,
    /// Records in the manifest.
    pub entries: u64,
    /// Seconds since the epoch.
    pub created: u64,
    /// Other digests that name this layer: OCI diff_ids (uncompressed tar)
    /// and blob digests (as stored in a registry or layout).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Where it came from, for people.
    #[serde(default)]
    pub source: String,
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
