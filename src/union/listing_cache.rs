//! Listings kept between the reads of one directory: a reader goes through a
//! big directory in many requests, and each must not list it again. Bounded
//! by the entries held.
//!
//! A listing read to its end is kept too, while no name in its directory
//! changed since it was taken and the kernel holds the directory: the kernel's own
//! copy of a listing loses pages under memory reclaim, and it then reads on
//! from the first page it lost (a warm `ls -l` of 100k entries listed them
//! all again, 0.4 s, for the last few thousand).

use std::collections::VecDeque;
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

/// The directories of this many recent changes are remembered; a listing
/// begun before all of them counts as changed.
const RECENT_CHANGES: usize = 8192;

#[derive(Debug)]
pub struct ListingCache {
    inner: Mutex<Inner>,
    /// The key of the listings' cookie hash, fixed for the life of the mount.
    key: RandomState,
    /// Orders listings by when they were begun.
    stamps: AtomicU64,
    /// Counts the changes to names anywhere in the union.
    changes: AtomicU64,
    /// The directories each recent change touched, oldest first.
    recent: Mutex<VecDeque<(u64, u64)>>,
}

/// When a listing was begun (taken before the directory is read).
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    order: u64,
    changes: u64,
}

/// An operation that may change names under way: the directories whose
/// names (or whose own place) it may change are [`Changing::touch`]ed.
pub struct Changing<'a> {
    cache: &'a ListingCache,
    dirs: Vec<u64>,
}

impl Changing<'_> {
    /// Directory (or any inode that may be one) `ino` may change.
    pub fn touch(&mut self, ino: u64) {
        self.dirs.push(ino);
    }
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        self.cache.changed(&self.dirs);
    }
}

#[derive(Debug)]
struct Kept {
    stamp: Stamp,
    listing: Arc<Listing>,
    /// A reader has been through it all.
    read: bool,
}

#[derive(Debug)]
struct Inner {
    listings: LruCache<u64, Kept>,
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
            changes: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::new()),
        }
    }
}

impl ListingCache {
    pub fn key(&self) -> &RandomState {
        &self.key
    }

    /// A stamp to take before a directory is read for a listing (see
    /// [`ListingCache::insert`]).
    pub fn stamp(&self) -> Stamp {
        Stamp {
            changes: self.changes.load(Ordering::Acquire),
            order: self.stamps.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// To be called once names in directories `dirs` were added, removed
    /// or moved (after: a listing begun before it completed must not be
    /// taken as current).
    fn changed(&self, dirs: &[u64]) {
        let mut recent = self.recent.lock();
        let change = self.changes.load(Ordering::Relaxed) + 1;
        recent.extend(dirs.iter().map(|&ino| (change, ino)));
        while recent.len() > RECENT_CHANGES {
            recent.pop_front();
        }
        self.changes.store(change, Ordering::Release);
    }

    /// Calls [`ListingCache::changed`] when dropped: held through an
    /// operation that may change names, however it ends.
    pub fn changing(&self) -> Changing<'_> {
        Changing {
            cache: self,
            dirs: Vec::new(),
        }
    }

    /// Whether a name in directory `ino` changed after the union's change
    /// count was `since` (or that cannot be told any more).
    pub fn changed_since(&self, ino: u64, since: u64) -> bool {
        if self.changes.load(Ordering::Acquire) == since {
            return false;
        }
        let recent = self.recent.lock();
        // Changes after `since` forgotten: the history is lost.
        if recent.front().is_none_or(|&(change, _)| change > since + 1) {
            return true;
        }
        recent
            .iter()
            .rev()
            .take_while(|&&(change, _)| change > since)
            .any(|&(_, dir)| dir == ino)
    }

    /// How many changes were made so far.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Whether a listing of directory `ino` is kept that a read from its
    /// start would take.
    pub fn holds_current(&self, ino: u64) -> bool {
        let stamp = self.inner.lock().listings.peek(&ino).map(|kept| kept.stamp);
        stamp.is_some_and(|stamp| !self.changed_since(ino, stamp.changes))
    }

    /// The listing kept for directory `ino` for a read from its start, if
    /// no name in it changed since it was taken, or for a read going on (a
    /// reader's listing is taken once, however the union changes).
    pub fn get(&self, ino: u64, from_start: bool) -> Option<Arc<Listing>> {
        let mut inner = self.inner.lock();
        let kept = inner.listings.get(&ino)?;
        if !self.changed_since(ino, kept.stamp.changes) {
            return Some(kept.listing.clone());
        }
        if kept.read {
            inner.forget(ino);
            return None;
        }
        (!from_start).then(|| kept.listing.clone())
    }

    /// Keeps `listing` for directory `ino`, unless one begun later is kept
    /// already (a slow listing must not replace a newer one, which may show
    /// a change the older missed), and drops the least recently used others
    /// while too many entries are kept.
    pub fn insert(&self, ino: u64, listing: Arc<Listing>, stamp: Stamp) {
        let mut inner = self.inner.lock();
        if inner
            .listings
            .peek(&ino)
            .is_some_and(|kept| kept.stamp.order > stamp.order)
        {
            return;
        }
        inner.put(
            ino,
            Kept {
                stamp,
                listing,
                read: false,
            },
        );
    }

    /// A reader went through `listing` of directory `ino` to its end: if it
    /// is still the one kept, it stays only while current.
    pub fn read_through(&self, ino: u64, listing: &Arc<Listing>) {
        let mut inner = self.inner.lock();
        if let Some(kept) = inner.listings.peek_mut(&ino)
            && Arc::ptr_eq(&kept.listing, listing)
        {
            kept.read = true;
        }
    }

    /// The kernel forgot directory `ino`: its listing goes too.
    pub fn forget(&self, ino: u64) {
        self.inner.lock().forget(ino);
    }
}

impl Inner {
    fn put(&mut self, ino: u64, kept: Kept) {
        self.weight += weight(&kept.listing);
        if let Some(old) = self.listings.put(ino, kept) {
            self.weight -= weight(&old.listing);
        }
        while self.weight > MAX_ENTRIES && self.listings.len() > MIN_KEPT {
            match self.listings.pop_lru() {
                Some((_, old)) => self.weight -= weight(&old.listing),
                None => break,
            }
        }
    }

    fn forget(&mut self, ino: u64) {
        if let Some(old) = self.listings.pop(&ino) {
            self.weight -= weight(&old.listing);
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
        assert!(Arc::ptr_eq(&cache.get(1, false).unwrap(), &newer));
        let newest = Arc::new(Listing::of_files(1));
        cache.insert(1, newest.clone(), third);
        assert!(Arc::ptr_eq(&cache.get(1, false).unwrap(), &newest));
    }

    #[test]
    fn a_listing_read_through_is_kept_until_a_name_changes() {
        let cache = ListingCache::default();
        let listing = Arc::new(Listing::of_files(3));
        cache.insert(7, listing.clone(), cache.stamp());
        cache.read_through(7, &listing);
        let kept = cache.get(7, false).expect("kept after it was read through");
        assert_eq!(kept.len(), 3);
        cache.changed(&[7]);
        assert!(cache.get(7, false).is_none(), "kept across a change");
    }

    #[test]
    fn a_change_elsewhere_leaves_a_listing_current() {
        let cache = ListingCache::default();
        let listing = Arc::new(Listing::of_files(3));
        cache.insert(7, listing.clone(), cache.stamp());
        cache.read_through(7, &listing);
        cache.changed(&[8, 9]);
        assert!(cache.holds_current(7));
        assert!(
            cache.get(7, true).is_some(),
            "dropped after a change elsewhere"
        );
        cache.changed(&[7]);
        assert!(!cache.holds_current(7));
        assert!(cache.get(7, true).is_none(), "kept across a change in it");
    }

    #[test]
    fn a_listing_older_than_the_changes_remembered_is_not_current() {
        let cache = ListingCache::default();
        let listing = Arc::new(Listing::of_files(3));
        cache.insert(7, listing, cache.stamp());
        for _ in 0..RECENT_CHANGES {
            cache.changed(&[8]);
        }
        assert!(cache.holds_current(7));
        cache.changed(&[8]);
        assert!(
            !cache.holds_current(7),
            "current though the history is lost"
        );
    }

    #[test]
    fn a_listing_still_being_read_is_kept_across_changes() {
        let cache = ListingCache::default();
        let listing = Arc::new(Listing::of_files(3));
        cache.insert(7, listing.clone(), cache.stamp());
        cache.changed(&[7]);
        assert!(Arc::ptr_eq(&cache.get(7, false).unwrap(), &listing));
    }

    #[test]
    fn a_listing_begun_before_a_change_ended_is_not_current_after_it() {
        let cache = ListingCache::default();
        let stamp = cache.stamp();
        // The change completes while the directory is being read.
        cache.changed(&[7]);
        let listing = Arc::new(Listing::of_files(3));
        cache.insert(7, listing.clone(), stamp);
        cache.read_through(7, &listing);
        assert!(cache.get(7, false).is_none());
    }

    #[test]
    fn a_reader_done_marks_only_the_listing_it_read() {
        let cache = ListingCache::default();
        let read = Arc::new(Listing::of_files(3));
        let other = Arc::new(Listing::of_files(3));
        cache.insert(7, other.clone(), cache.stamp());
        cache.read_through(7, &read);
        cache.changed(&[7]);
        assert!(Arc::ptr_eq(&cache.get(7, false).unwrap(), &other));
    }

    #[test]
    fn a_forgotten_directory_loses_its_listing() {
        let cache = ListingCache::default();
        let listing = Arc::new(Listing::of_files(3));
        cache.insert(7, listing.clone(), cache.stamp());
        cache.read_through(7, &listing);
        cache.forget(7);
        assert!(cache.get(7, false).is_none());
        assert_eq!(cache.inner.lock().weight, 0);
    }

    #[test]
    fn readers_of_big_directories_keep_their_listings() {
        let cache = ListingCache::default();
        let big = MAX_ENTRIES / 2;
        for ino in 0..MIN_KEPT as u64 {
            cache.insert(ino, Arc::new(Listing::of_files(big)), cache.stamp());
        }
        for ino in 0..MIN_KEPT as u64 {
            assert!(cache.get(ino, false).is_some(), "listing {ino} evicted");
        }
        // One more: the least recently used goes, the others stay.
        cache.insert(100, Arc::new(Listing::of_files(2)), cache.stamp());
        assert!(cache.get(0, false).is_none());
        assert!((1..MIN_KEPT as u64).all(|ino| cache.get(ino, false).is_some()));
        assert!(cache.get(100, false).is_some());
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
