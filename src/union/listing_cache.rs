//! Listings kept between the reads of one directory: a reader goes through a
//! big directory in many requests, and each must not list it again. Bounded
//! by the entries held; a listing read to its end is dropped at once.

use std::hash::RandomState;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use super::readdir::Listing;

/// At most this many entries (about 24 bytes and a name each) are kept.
const MAX_ENTRIES: usize = 256 * 1024;

#[derive(Debug)]
pub struct ListingCache {
    inner: Mutex<Inner>,
    /// The key of the listings' cookie hash, fixed for the life of the mount.
    key: RandomState,
}

#[derive(Debug)]
struct Inner {
    listings: LruCache<u64, Arc<Listing>>,
    entries: usize,
}

impl Default for ListingCache {
    fn default() -> Self {
        ListingCache {
            inner: Mutex::new(Inner {
                listings: LruCache::unbounded(),
                entries: 0,
            }),
            key: RandomState::new(),
        }
    }
}

impl ListingCache {
    pub fn key(&self) -> &RandomState {
        &self.key
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Listing>> {
        self.inner.lock().listings.get(&ino).cloned()
    }

    /// Keeps `listing` for directory `ino`, dropping the least recently
    /// used others while too many entries are kept.
    pub fn insert(&self, ino: u64, listing: Arc<Listing>) {
        let mut inner = self.inner.lock();
        inner.entries += listing.len();
        if let Some(old) = inner.listings.put(ino, listing) {
            inner.entries -= old.len();
        }
        while inner.entries > MAX_ENTRIES && inner.listings.len() > 1 {
            match inner.listings.pop_lru() {
                Some((_, old)) => inner.entries -= old.len(),
                None => break,
            }
        }
    }

    pub fn remove(&self, ino: u64) {
        let mut inner = self.inner.lock();
        if let Some(old) = inner.listings.pop(&ino) {
            inner.entries -= old.len();
        }
    }
}
