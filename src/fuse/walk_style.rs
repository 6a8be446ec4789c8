//! Whether a process reading directories wants the attributes of their
//! files. readdirplus hands the kernel a node and attributes for every
//! entry, so that an `ls -l` stats nothing more; a `find` asks about no file,
//! and then the daemon's stat of each file (a disk read, cold) and the
//! kernel's inode for it are spent for nothing. The request says which
//! process reads: one that read a directory without asking about (or
//! removing, or changing) any of its files gets names and types only for
//! the files of the next, until it asks about a file of such a listing (it
//! then gets full entries for good). Only performance depends on the guess:
//! a file listed by name alone is looked up when asked about, as if never
//! listed.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;

use crate::union::Want;

/// Directories read in a row, none of whose files the reader asked about,
/// before the next is listed by names. (The first directory of an `ls -lR`
/// may hold only directories: it then looks up the files of the second.)
const QUIET_DIRS: u8 = 1;

/// Readers remembered (the least recent is forgotten first).
const READERS: usize = 64;

#[derive(Debug, Default, Clone, Copy)]
struct Reader {
    /// Asked about a file since its last directory read began.
    asked: bool,
    /// Directories read in a row without asking about a file.
    quiet: u8,
    /// What its current directory is listed with.
    want_names: bool,
    /// Asked about a file it was given by name only: always full entries.
    stats: bool,
}

pub(super) struct WalkStyles {
    readers: Mutex<LruCache<u32, Reader>>,
}

impl Default for WalkStyles {
    fn default() -> Self {
        let cap = NonZeroUsize::new(READERS).unwrap_or(NonZeroUsize::MIN);
        WalkStyles {
            readers: Mutex::new(LruCache::new(cap)),
        }
    }
}

impl WalkStyles {
    /// Process `pid` reads a directory from `offset`: what to list its
    /// files with. (Pid 0 is the kernel's own request.)
    pub(super) fn reading(&self, pid: u32, offset: u64) -> Want {
        if pid == 0 {
            return Want::Attrs;
        }
        let Ok(mut readers) = self.readers.lock() else {
            return Want::Attrs;
        };
        let mut known = true;
        let reader = readers.get_or_insert_mut(pid, || {
            known = false;
            Reader::default()
        });
        // A new directory (or a rewind): the one before it is done.
        if offset == 0 && known {
            reader.quiet = if reader.asked {
                0
            } else {
                reader.quiet.saturating_add(1)
            };
            reader.asked = false;
            reader.want_names = !reader.stats && reader.quiet >= QUIET_DIRS;
        }
        if reader.want_names {
            Want::Names
        } else {
            Want::Attrs
        }
    }

    /// Process `pid` asked about, removed or changed an inode, a file (not
    /// a directory) if `is_file`: only asked of a reader whose state it
    /// would change (every request of an `ls -l` comes here).
    pub(super) fn asked(&self, pid: u32, is_file: impl FnOnce() -> bool) {
        let Ok(mut readers) = self.readers.lock() else {
            return;
        };
        if let Some(reader) = readers.get_mut(&pid)
            && (!reader.asked || reader.want_names)
            && is_file()
        {
            reader.asked = true;
            if reader.want_names {
                reader.want_names = false;
                reader.stats = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walker_that_asks_about_no_file_gets_names_from_its_second_directory() {
        let w = WalkStyles::default();
        assert_eq!(w.reading(7, 0), Want::Attrs);
        assert_eq!(w.reading(7, 0), Want::Names);
        assert_eq!(w.reading(7, 500), Want::Names);
        // Another reader is judged on its own.
        assert_eq!(w.reading(8, 0), Want::Attrs);
        assert_eq!(w.reading(0, 0), Want::Attrs);
    }

    #[test]
    fn a_reader_that_asks_about_files_keeps_full_entries() {
        let w = WalkStyles::default();
        for _ in 0..5 {
            assert_eq!(w.reading(7, 0), Want::Attrs);
            w.asked(7, || true);
        }
    }

    #[test]
    fn asking_about_a_file_given_by_name_gives_full_entries_for_good() {
        let w = WalkStyles::default();
        w.reading(7, 0);
        assert_eq!(w.reading(7, 0), Want::Names);
        w.asked(7, || false);
        assert_eq!(
            w.reading(7, 100),
            Want::Names,
            "asking about a directory changes nothing"
        );
        w.asked(7, || true);
        assert_eq!(w.reading(7, 100), Want::Attrs);
        for _ in 0..5 {
            assert_eq!(w.reading(7, 0), Want::Attrs);
        }
    }
}
