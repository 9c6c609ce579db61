//! The allocators' share of resident memory. A cut builds Arrow tables and runs DataFusion on
//! a pool of threads, then frees them; what the allocator keeps of those peaks, not what the
//! state holds, is what made the live soak's RSS rise (docs/performance.md, "The allocator
//! built in").
//!
//! On Linux (glibc) Rust allocates from jemalloc ([`ALLOCATOR`], for the binary, the tests and
//! the benchmarks alike): after every cut [`trim`] purges its arenas, so resident memory falls
//! back to the live heap (within a cut jemalloc returns freed pages after ten seconds, its
//! default: sooner cost 11 % more CPU in a replay). The C libraries (librdkafka) still
//! allocate from glibc's malloc, which gives every thread that contends for the heap an arena
//! of its own and keeps freed memory in them: [`limit_arenas`] caps those at start and
//! [`trim`] hands their free pages back too. [`heap`] reads both allocators' counters (what
//! is allocated, what they hold) for `/metrics`. Other platforms keep their system
//! allocator.

/// glibc arenas when `MALLOC_ARENA_MAX` does not say otherwise.
pub const ARENAS: i32 = 2;

/// Rust's allocator on Linux with glibc: jemalloc, whose freed pages [`trim`] returns at once.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
pub static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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

/// Returns the free pages of both allocators to the system: every jemalloc arena's dirty
/// pages (`arena.<all>.purge`) and glibc's (`malloc_trim`). A failed purge is logged.
pub fn trim() {
    if let Err(code) = purge_jemalloc() {
        tracing::warn!(code, "jemalloc did not purge its arenas");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim walks malloc's own free lists under its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// jemalloc's counters: what Rust's live allocations hold, and the pages jemalloc keeps in
/// memory for them (the allocator's share of RSS); and glibc's heap, the C libraries'
/// (librdkafka's): what is in use and what its arenas hold (trimmed pages included). The
/// rest of RSS is code and stacks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Heap {
    pub allocated: u64,
    pub resident: u64,
    pub c_allocated: u64,
    pub c_held: u64,
}

/// Both allocators' counters as of now (jemalloc's `stats.allocated` and `stats.resident`,
/// glibc's `mallinfo2`, which walks its arenas under their locks); `None` where jemalloc is
/// not the allocator.
pub fn heap() -> Option<Heap> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // The counters are cached per `epoch`: writing it refreshes them.
        let mut epoch: u64 = 1;
        let mut len = std::mem::size_of::<u64>();
        let epoch_ptr: *mut u64 = &mut epoch;
        // SAFETY: `epoch` is a u64 read and written in place, `len` its size.
        let refreshed = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"epoch".as_ptr(),
                epoch_ptr.cast(),
                &mut len,
                epoch_ptr.cast(),
                len,
            )
        };
        if refreshed != 0 {
            return None;
        }
        let read = |name: &std::ffi::CStr| {
            let mut v: usize = 0;
            let mut len = std::mem::size_of::<usize>();
            let v_ptr: *mut usize = &mut v;
            // SAFETY: both counters are size_t, read into `v` of that size.
            let code = unsafe {
                tikv_jemalloc_sys::mallctl(
                    name.as_ptr(),
                    v_ptr.cast(),
                    &mut len,
                    std::ptr::null_mut(),
                    0,
                )
            };
            (code == 0).then_some(v as u64)
        };
        // SAFETY: mallinfo2 only reads malloc's own bookkeeping.
        let c = unsafe { libc::mallinfo2() };
        // Large chunks (128 KiB and up, by default) are mapped of their own (`hblkhd`), outside
        // the arenas; an arena keeps its size when `malloc_trim` returns its free pages.
        Some(Heap {
            allocated: read(c"stats.allocated")?,
            resident: read(c"stats.resident")?,
            c_allocated: (c.uordblks + c.hblkhd) as u64,
            c_held: (c.arena + c.hblkhd) as u64,
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// Purges every jemalloc arena (`MALLCTL_ARENAS_ALL` is 4096); the error is mallctl's code.
fn purge_jemalloc() -> Result<(), i32> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: a NUL-terminated name, and no old or new value to read or write.
        let code = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"arena.4096.purge".as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        if code != 0 {
            return Err(code);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn rust_allocates_from_jemalloc_and_its_arenas_purge() {
        // What the allocator handed out is jemalloc's: it knows the block's usable size.
        let block = std::hint::black_box(vec![0u8; 1000]);
        // SAFETY: the pointer is a live allocation of the global allocator.
        let usable = unsafe { tikv_jemalloc_sys::malloc_usable_size(block.as_ptr().cast()) };
        assert!(usable >= 1000, "jemalloc does not know the block: {usable}");
        drop(block);
        assert_eq!(super::purge_jemalloc(), Ok(()));
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn the_heap_counters_follow_what_is_allocated() {
        let before = super::heap().expect("jemalloc's counters");
        let block = std::hint::black_box(vec![1u8; 64 << 20]);
        let during = super::heap().expect("jemalloc's counters");
        // Other tests allocate on their threads meanwhile: 64 MiB is far above that noise.
        assert!(
            during.allocated >= before.allocated + (48 << 20),
            "{before:?} -> {during:?}"
        );
        assert!(during.resident >= during.allocated, "{during:?}");
        drop(block);
        // glibc's heap holds what C code allocates from it: 8 MiB, mapped of its own.
        // SAFETY: a plain malloc, freed below.
        let c_block = std::hint::black_box(unsafe { libc::malloc(8 << 20) });
        assert!(!c_block.is_null());
        let with_c = super::heap().expect("both allocators' counters");
        // SAFETY: the block malloc returned above.
        unsafe { libc::free(c_block) };
        assert!(
            with_c.c_allocated >= during.c_allocated + (8 << 20),
            "{during:?} -> {with_c:?}"
        );
        assert!(with_c.c_held >= with_c.c_allocated, "{with_c:?}");
    }
}
