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
