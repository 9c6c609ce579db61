//! The allocator's share of resident memory. glibc's malloc gives every thread that contends
//! for the heap an arena of its own (up to eight per core) and keeps freed memory in them; a
//! cut that builds Arrow tables and runs DataFusion on a pool of threads then leaves each arena
//! holding its high-water mark, and resident memory follows the sum of those marks instead of
//! what the state holds. quotaflow caps the arenas at start ([`limit_arenas`]) and hands the
//! free pages back after every cut ([`trim`]). Measured in docs/performance.md ("The
//! allocator"); other allocators and platforms are left as they are.

/// Arenas when `MALLOC_ARENA_MAX` does not say otherwise.
pub const ARENAS: i32 = 2;

/// Caps glibc's malloc arenas at [`ARENAS`] unless `MALLOC_ARENA_MAX` is set (glibc reads
/// that itself). Call before any thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a malloc parameter; called before other threads exist.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        }
    }
}

/// Returns the free pages of every arena to the system (glibc's `malloc_trim`).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim walks malloc's own free lists under its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
