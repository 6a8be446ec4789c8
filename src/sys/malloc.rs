//! Keeping the daemon's memory close to what it holds: glibc's allocator
//! otherwise keeps freed node memory (per-thread arenas, an untrimmed heap)
//! after the kernel forgets inodes.

/// Above this size an allocation is mapped on its own and unmapped when freed.
const MMAP_THRESHOLD: i32 = 256 * 1024;

/// Caps glibc's arenas at two, instead of up to eight per CPU for a daemon
/// whose request threads all allocate nodes: fewer heaps to fragment. And
/// fixes the mmap threshold: glibc raises it to the size of each mapped
/// block freed, so that the next big directory listing would be carved from
/// the heap, among nodes, and stay there after it is dropped.
pub fn tune_allocator() {
    // SAFETY: mallopt only adjusts allocator parameters; M_ARENA_MAX and
    // M_MMAP_THRESHOLD with these positive values are documented, always-valid
    // settings.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Returns free heap memory to the system.
pub fn trim() {
    // SAFETY: malloc_trim takes no pointers and may be called at any time;
    // it only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}
