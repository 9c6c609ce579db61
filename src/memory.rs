//! The allocator's share of resident memory. A cut builds Arrow tables and runs DataFusion on
//! a pool of threads, then frees them, and while the reader trails the stream librdkafka fills
//! its queues and then frees them; what the allocator keeps of those peaks, not what the state
//! holds, is what made the live soak's RSS rise (docs/performance.md, "The allocator built
//! in", "One allocator for C as well").
//!
//! On Linux (glibc) the whole process allocates from jemalloc: Rust through [`ALLOCATOR`] (for
//! the binary, the tests and the benchmarks alike), and the C libraries linked in (librdkafka,
//! zlib) through `malloc`, which jemalloc, built unprefixed, defines in place of glibc's. After
//! every cut [`trim`] purges its arenas, so resident memory falls back to the live heap
//! (within a cut jemalloc returns freed pages after ten seconds, its default: sooner cost 11 %
//! more CPU in a replay). [`heap`] reads its counters (what is allocated, what it holds) for
//! `/metrics`. Other platforms keep their system allocator.

/// The process's allocator on Linux with glibc: jemalloc, whose freed pages [`trim`] returns
/// at once. Built unprefixed, it is also the `malloc` and `free` of the C code.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
pub static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Returns jemalloc's free pages to the system: every arena's dirty pages
/// (`arena.<all>.purge`). A failed purge is logged.
pub fn trim() {
    if let Err(code) = purge_jemalloc() {
        tracing::warn!(code, "jemalloc did not purge its arenas");
    }
}

/// jemalloc's counters: what the process's live allocations hold (Rust's and the C
/// libraries'), and the pages jemalloc keeps in memory for them (the allocator's share of
/// RSS). The rest of RSS is code and stacks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Heap {
    pub allocated: u64,
    pub resident: u64,
}

/// jemalloc's counters as of now (`stats.allocated` and `stats.resident`); `None` where
/// jemalloc is not the allocator.
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
        Some(Heap {
            allocated: read(c"stats.allocated")?,
            resident: read(c"stats.resident")?,
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

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    extern "C" {
        /// The process's `malloc`, the one C code calls (librdkafka's `rd_malloc`).
        fn malloc(size: usize) -> *mut std::ffi::c_void;
        fn free(ptr: *mut std::ffi::c_void);
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn the_heap_counters_follow_what_rust_and_c_allocate() {
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
        // C code's `malloc` is jemalloc's too: the block is counted with Rust's.
        let after = super::heap().expect("jemalloc's counters");
        // SAFETY: a plain malloc, freed below.
        let c_block = std::hint::black_box(unsafe { malloc(64 << 20) });
        assert!(!c_block.is_null());
        let with_c = super::heap().expect("jemalloc's counters");
        assert!(
            with_c.allocated >= after.allocated + (48 << 20),
            "{after:?} -> {with_c:?}"
        );
        // SAFETY: a live block of jemalloc's (the counters say so).
        let usable = unsafe { tikv_jemalloc_sys::malloc_usable_size(c_block) };
        assert!(
            usable >= 64 << 20,
            "jemalloc does not know C's block: {usable}"
        );
        // SAFETY: the block malloc returned above.
        unsafe { free(c_block) };
    }
}
