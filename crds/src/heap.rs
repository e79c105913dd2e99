//! Giving freed memory back to the system after a burst of work, for both programs.
//!
//! glibc's allocator keeps the pages of freed memory that is not at the top of its heap, so a
//! program stays at the peak of its busiest moment for good: a speaker at the peak of its start
//! (initial lists decoded, a thousand addresses announced), the controller at the peak of
//! decoding and trimming the initial list of every Service. `malloc_trim` hands those pages
//! back. musl, which the images are built with, has no `malloc_trim`: there this does nothing.

/// Returns the allocator's free pages to the system (glibc), or does nothing.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and shrinks the allocator's own free lists; it takes no
    // pointer and is thread-safe (it locks each arena).
    unsafe {
        libc::malloc_trim(0);
    }
}
