//! Keeping the daemon's memory close to what it holds: glibc's allocator
//! otherwise keeps freed node memory (per-thread arenas, an untrimmed heap)
//! after the kernel forgets inodes.

/// Caps glibc's arenas at two, instead of up to eight per CPU for a daemon
/// whose request threads all allocate nodes: fewer heaps to fragment.
pub fn limit_arenas() {
    // SAFETY: mallopt only adjusts allocator parameters; M_ARENA_MAX with a
    // positive value is a documented, always-valid setting.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
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
