//! Changing this process's environment, which is sound only while no other
//! thread can read it.

use std::ffi::OsStr;

/// Whether this process has one thread (from `/proc/self/status`).
fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .is_some_and(|n| n.trim() == "1")
    })
}

/// Sets `key` to `value` if this process has a single thread; returns
/// whether it did.
pub fn set_env_if_single_threaded(key: &str, value: &OsStr) -> bool {
    if !single_threaded() {
        return false;
    }
    // SAFETY: the process has one thread (checked just above, and only this
    // thread could start another), so nothing reads or writes the
    // environment concurrently.
    unsafe { std::env::set_var(key, value) };
    true
}
