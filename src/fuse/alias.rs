//! Second kernel inodes for one union inode. A lower file the kernel reads
//! directly (passthrough) stays bound to that lower file while it is open;
//! when a copy-up changes what new opens must reach, the name gets a fresh
//! node id for the same union inode, and with it a new kernel inode. The
//! inode number the kernel shows (`st_ino`) stays the union's. Only the
//! io_uring transport can say so: fuser's replies make the node id the
//! inode number. Aliases are kept for the life of the mount: one per such
//! copy-up, a few dozen bytes each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::RwLock;

/// Alias node ids: the filesystem index the union's numbering never gives
/// (see `union::inode::InoMap`), then a counter.
const ALIAS_BASE: u64 = 0x7f << 56;

#[derive(Default)]
pub struct Aliases {
    /// Set once an alias exists: until then no request pays for a lookup.
    any: AtomicBool,
    next: AtomicU64,
    map: RwLock<Map>,
}

#[derive(Default)]
struct Map {
    /// Alias node id -> union inode.
    ino: HashMap<u64, u64>,
    /// Union inode -> the node id its names now lead to.
    current: HashMap<u64, u64>,
}

impl Aliases {
    /// The union inode behind kernel node id `nodeid`.
    pub fn ino(&self, nodeid: u64) -> u64 {
        if !self.any.load(Ordering::Acquire) {
            return nodeid;
        }
        self.map.read().ino.get(&nodeid).copied().unwrap_or(nodeid)
    }

    /// The node id that names of union inode `ino` lead to.
    pub fn nodeid(&self, ino: u64) -> u64 {
        if !self.any.load(Ordering::Acquire) {
            return ino;
        }
        self.map.read().current.get(&ino).copied().unwrap_or(ino)
    }

    /// Makes the names of `ino` lead to another node id than `stale`, the
    /// kernel inode that cannot serve them: the current alias if that is
    /// another, else a new one.
    pub fn renew(&self, ino: u64, stale: u64) -> u64 {
        let mut map = self.map.write();
        if let Some(&current) = map.current.get(&ino)
            && current != stale
        {
            return current;
        }
        let alias = ALIAS_BASE | (self.next.fetch_add(1, Ordering::Relaxed) + 1);
        map.ino.insert(alias, ino);
        map.current.insert(ino, alias);
        self.any.store(true, Ordering::Release);
        alias
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_map_both_ways_and_renew() {
        let a = Aliases::default();
        assert_eq!((a.ino(5), a.nodeid(5)), (5, 5));
        let first = a.renew(5, 5);
        assert_ne!(first, 5);
        assert_eq!((a.ino(first), a.nodeid(5)), (5, first));
        // The original inode again: the names already lead elsewhere.
        assert_eq!(a.renew(5, 5), first);
        // The alias itself cannot serve them: another one.
        let second = a.renew(5, first);
        assert_ne!(second, first);
        assert_eq!((a.ino(first), a.ino(second), a.nodeid(5)), (5, 5, second));
        assert_eq!((a.ino(7), a.nodeid(7)), (7, 7));
    }
}
