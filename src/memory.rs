//! Giving memory back to the operating system after a burst.
//!
//! glibc's allocator keeps freed memory in per-thread arenas for reuse, so a daemon that synced
//! 10 000 relays with four workers keeps the high-water mark of each arena long after it went
//! idle. [`return_free_heap`] asks the allocator to release what is free (`malloc_trim`); the
//! worker calls it once after each burst, never on the sync path. Elsewhere it does nothing.

/// Releases the allocator's free memory to the operating system, where the allocator can.
pub fn return_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointer
        // and is safe to call from any thread at any time.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Caps glibc's allocator at two arenas. By default every thread that allocates while another
/// holds an arena gets one of its own (up to eight per core), and each keeps its high-water
/// mark: with four workers, a writer, a dispatcher and a feed, a burst leaves several
/// half-empty arenas behind. Two keep contention low for a worker that spends its time waiting
/// on zooid. An operator's own `MALLOC_ARENA_MAX` is left to glibc. For the daemon; call it
/// before the threads start.
#[cfg(feature = "cli")]
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_ARENA_MAX: i32 = -8;
        // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX takes effect for
        // arenas created from now on.
        unsafe {
            mallopt(M_ARENA_MAX, 2);
        }
    }
}
