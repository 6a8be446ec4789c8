//! How the union shows what the layers hold: id mapping, squashing, link
//! counts, inode number width, xattrs. Attributes inside the union stay as
//! they are on disk; they are translated here on the way out, and ids coming
//! in (chown, the caller of a create) are translated back.

use super::attr::Attr;

/// The id a file shows when its on-disk id has no mapping, as the kernel
/// shows unmapped ids in a user namespace.
pub const OVERFLOW_ID: u32 = 65534;

/// One range of an id mapping: `len` ids starting at `shown` in the mount
/// stand for `len` ids starting at `disk` in the layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub shown: u32,
    pub disk: u32,
    pub len: u32,
}

/// An id mapping; empty means identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap {
    ranges: Vec<IdRange>,
}

impl IdMap {
    pub fn new(ranges: Vec<IdRange>) -> IdMap {
        IdMap { ranges }
    }

    pub fn is_identity(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The id a disk id shows as; [`OVERFLOW_ID`] when unmapped.
    pub fn to_shown(&self, disk: u32) -> u32 {
        if self.ranges.is_empty() {
            return disk;
        }
        self.ranges
            .iter()
            .find(|r| disk >= r.disk && disk - r.disk < r.len)
            .map_or(OVERFLOW_ID, |r| r.shown + (disk - r.disk))
    }

    /// The disk id a shown id stands for; `None` when it has no mapping.
    pub fn to_disk(&self, shown: u32) -> Option<u32> {
        if self.ranges.is_empty() {
            return Some(shown);
        }
        self.ranges
            .iter()
            .find(|r| shown >= r.shown && shown - r.shown < r.len)
            .map(|r| r.disk + (shown - r.shown))
    }
}

/// Where `xattr_permissions` keeps owner and mode that could not be set for real.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideStat {
    /// `security.fuseoverlayfs.override_stat` (fuse-overlayfs `xattr_permissions=1`).
    Privileged,
    /// `user.fuseoverlayfs.override_stat` (fuse-overlayfs `xattr_permissions=2`).
    User,
}

/// Presentation choices of one mount.
#[derive(Debug, Clone, Default)]
pub struct ViewOptions {
    pub uid_map: IdMap,
    pub gid_map: IdMap,
    /// Every file shows this owner (`squash_to_uid`, `squash_to_gid`)...
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
    /// ...or else root (`squash_to_root`). Only what is shown changes:
    /// chown still changes the files, and its failures are not reported.
    pub squash_root: bool,
    /// Directories report one link, like many FUSE filesystems (`static_nlink`).
    pub static_nlink: bool,
    /// Extended attributes are not supported at all (`noxattrs=1`).
    pub no_xattrs: bool,
    /// Owner and mode live in an xattr where chown is impossible.
    pub override_stat: Option<OverrideStat>,
}

impl ViewOptions {
    /// The attributes the mount shows for attributes read from a layer.
    pub fn shown(&self, mut a: Attr) -> Attr {
        let root = self.squash_root.then_some(0);
        a.uid = (self.squash_uid.or(root)).unwrap_or_else(|| self.uid_map.to_shown(a.uid));
        a.gid = (self.squash_gid.or(root)).unwrap_or_else(|| self.gid_map.to_shown(a.gid));
        if self.static_nlink && a.kind == super::attr::Kind::Dir {
            a.nlink = 1;
        }
        a
    }

    pub fn squashes(&self) -> bool {
        self.squash_root || self.squash_uid.is_some() || self.squash_gid.is_some()
    }

    /// The disk uid for a uid the mount shows; `None` when it has no mapping.
    pub fn disk_uid(&self, shown: u32) -> Option<u32> {
        self.uid_map.to_disk(shown)
    }

    pub fn disk_gid(&self, shown: u32) -> Option<u32> {
        self.gid_map.to_disk(shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squash_options_win_over_the_mapping_uid_and_gid_apart() {
        let a = Attr {
            ino: 2,
            kind: super::super::attr::Kind::File,
            perm: 0o644,
            nlink: 1,
            uid: 1000,
            gid: 1001,
            rdev: 0,
            size: 0,
            blocks: 0,
            blksize: 4096,
            atime: super::super::attr::Time { sec: 0, nsec: 0 },
            mtime: super::super::attr::Time { sec: 0, nsec: 0 },
            ctime: super::super::attr::Time { sec: 0, nsec: 0 },
        };
        let root = ViewOptions {
            squash_root: true,
            ..ViewOptions::default()
        };
        assert_eq!((root.shown(a).uid, root.shown(a).gid), (0, 0));
        let both = ViewOptions {
            squash_root: true,
            squash_uid: Some(42),
            ..ViewOptions::default()
        };
        assert_eq!((both.shown(a).uid, both.shown(a).gid), (42, 0));
    }

    #[test]
    fn identity_map_passes_ids_through() {
        let m = IdMap::default();
        assert_eq!(m.to_shown(1234), 1234);
        assert_eq!(m.to_disk(0), Some(0));
    }

    #[test]
    fn ranges_map_both_ways_and_unmapped_ids_overflow() {
        let m = IdMap::new(vec![
            IdRange {
                shown: 0,
                disk: 1000,
                len: 1,
            },
            IdRange {
                shown: 1,
                disk: 100000,
                len: 65536,
            },
        ]);
        assert_eq!(m.to_shown(1000), 0);
        assert_eq!(m.to_shown(100000), 1);
        assert_eq!(m.to_shown(165535), 65536);
        assert_eq!(m.to_shown(165536), OVERFLOW_ID);
        assert_eq!(m.to_shown(0), OVERFLOW_ID);
        assert_eq!(m.to_disk(0), Some(1000));
        assert_eq!(m.to_disk(2), Some(100001));
        assert_eq!(m.to_disk(65537), None);
    }
}
