//! Listings kept between the reads of one directory: a reader goes through a
//! big directory in many requests, and each must not list it again. Bounded
//! by the entries held; a listing read to its end is dropped at once.

use std::hash::RandomState;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;
use parking_lot::Mutex;

use super::readdir::Listing;

/// At most about this many entries (24 bytes and a name each) are kept...
const MAX_ENTRIES: usize = 256 * 1024;
/// ...counting each listing's own overhead as this many, so that many small
/// listings left half read cannot pile up...
const OVERHEAD_ENTRIES: usize = 32;
/// ...but the most recent few are kept whatever their size: readers going
/// through big directories at once must not evict each other's listing at
/// every request, and make the daemon list the directory again each time.
const MIN_KEPT: usize = 4;

#[derive(Debug)]
pub struct ListingCache {
    inner: Mutex<Inner>,
    /// The key of the listings' cookie hash, fixed for the life of the mount.
    key: RandomState,
    /// Orders listings by when they were begun.
    stamps: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    listings: LruCache<u64, (u64, Arc<Listing>)>,
    weight: usize,
}

fn weight(listing: &Listing) -> usize {
    listing.len() + OVERHEAD_ENTRIES
}

impl Default for ListingCache {
    fn default() -> Self {
        ListingCache {
            inner: Mutex::new(Inner {
                listings: LruCache::unbounded(),
                weight: 0,
            }),
            key: RandomState::new(),
            stamps: AtomicU64::new(0),
        }
    }
}

impl ListingCache {
    pub fn key(&self) -> &RandomState {
        &self.key
    }

    /// A stamp to take before a directory is read for a listing (see
    /// [`ListingCache::insert`]).
    pub fn stamp(&self) -> u64 {
        self.stamps.fetch_add(1, Ordering::Relaxed)
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Listing>> {
        self.inner.lock().listings.get(&ino).map(|(_, l)| l.clone())
    }

    /// Keeps `listing` for directory `ino`, unless one begun later is kept
    /// already (a slow listing must not replace a newer one, which may show
    /// a change the older missed), and drops the least recently used others
    /// while too many entries are kept.
    pub fn insert(&self, ino: u64, listing: Arc<Listing>, stamp: u64) {
        let mut inner = self.inner.lock();
        if inner
            .listings
            .peek(&ino)
            .is_some_and(|(kept, _)| *kept > stamp)
        {
            return;
        }
        inner.weight += weight(&listing);
        if let Some((_, old)) = inner.listings.put(ino, (stamp, listing)) {
            inner.weight -= weight(&old);
        }
        while inner.weight > MAX_ENTRIES && inner.listings.len() > MIN_KEPT {
            match inner.listings.pop_lru() {
                Some((_, (_, old))) => inner.weight -= weight(&old),
                None => break,
            }
        }
    }

    /// Drops `listing` of directory `ino`, if it is still the one kept.
    pub fn remove(&self, ino: u64, listing: &Arc<Listing>) {
        let mut inner = self.inner.lock();
        if inner
            .listings
            .peek(&ino)
            .is_some_and(|(_, kept)| Arc::ptr_eq(kept, listing))
            && let Some((_, old)) = inner.listings.pop(&ino)
        {
            inner.weight -= weight(&old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_begun_later_is_not_replaced_by_an_older_one() {
        let cache = ListingCache::default();
        let (first, second, third) = (cache.stamp(), cache.stamp(), cache.stamp());
        let newer = Arc::new(Listing::of_files(3));
        cache.insert(1, newer.clone(), second);
        cache.insert(1, Arc::new(Listing::of_files(2)), first);
        assert!(Arc::ptr_eq(&cache.get(1).unwrap(), &newer));
        let newest = Arc::new(Listing::of_files(1));
        cache.insert(1, newest.clone(), third);
        assert!(Arc::ptr_eq(&cache.get(1).unwrap(), &newest));
    }

    #[test]
    fn a_reader_done_drops_only_the_listing_it_read() {
        let cache = ListingCache::default();
        let read = Arc::new(Listing::of_files(3));
        let other = Arc::new(Listing::of_files(3));
        cache.insert(7, other.clone(), cache.stamp());
        cache.remove(7, &read);
        assert!(Arc::ptr_eq(&cache.get(7).unwrap(), &other));
        cache.remove(7, &other);
        assert!(cache.get(7).is_none());
    }

    #[test]
    fn readers_of_big_directories_keep_their_listings() {
        let cache = ListingCache::default();
        let big = MAX_ENTRIES / 2;
        for ino in 0..MIN_KEPT as u64 {
            cache.insert(ino, Arc::new(Listing::of_files(big)), cache.stamp());
        }
        for ino in 0..MIN_KEPT as u64 {
            assert!(cache.get(ino).is_some(), "listing {ino} evicted");
        }
        // One more: the least recently used goes, the others stay.
        cache.insert(100, Arc::new(Listing::of_files(2)), cache.stamp());
        assert!(cache.get(0).is_none());
        assert!((1..MIN_KEPT as u64).all(|ino| cache.get(ino).is_some()));
        assert!(cache.get(100).is_some());
    }

    #[test]
    fn small_listings_left_half_read_are_bounded() {
        let cache = ListingCache::default();
        for ino in 0..100_000 {
            cache.insert(ino, Arc::new(Listing::of_files(2)), cache.stamp());
        }
        let kept = cache.inner.lock().listings.len();
        assert!(
            kept <= MAX_ENTRIES / OVERHEAD_ENTRIES,
            "{kept} small listings kept"
        );
    }
}
