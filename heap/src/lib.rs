//! Giving freed memory back to the system after a burst of work, for both programs.
//!
//! glibc's allocator keeps the pages of freed memory that is not at the top of its heap, so a
//! program stays at the peak of its busiest moment for good: a speaker at the peak of its start
//! (initial lists decoded, a thousand addresses announced), the controller at the peak of
//! decoding and trimming the initial list of every Service. `malloc_trim` hands those pages
//! back. musl, which the images are built with, has no `malloc_trim`: there this does nothing.
//!
//! A crate of its own so the shared core (`lodestone-crds`) stays free of `unsafe`: no
//! maintained crate wraps these two glibc calls, and each `unsafe` block here is allowed for
//! itself with a SAFETY comment.
#![deny(unsafe_code)]

/// Keeps glibc's allocator from holding on to memory around large short-lived buffers. Call it
/// first thing in `main`, before any thread starts. Returns whether the allocator took both
/// settings (always true where there is nothing to set).
///
/// glibc raises its mmap threshold each time a large mmapped block is freed (up to 32 MiB), so
/// after the first page of an initial list every later response body and decoded page lands in
/// the heap, interleaved with the small trimmed objects the caches keep: those pin the pages and
/// `malloc_trim` cannot return them. A fixed threshold keeps large buffers in their own mappings,
/// unmapped on free. And each thread that allocates gets an arena of its own, with its own
/// fragments; two are plenty for programs whose work is one decision loop. With 10,000 Services
/// on a real kube-apiserver this took the controller from 52 to 44 MiB after a cold start
/// (docs/performance.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn limit_fragmentation() -> bool {
    /// glibc's own default, before it starts adjusting it.
    const MMAP_THRESHOLD: libc::c_int = 128 * 1024;
    const ARENAS: libc::c_int = 2;
    // SAFETY: mallopt only sets allocator parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_ARENA_MAX, ARENAS) == 1
    }
}

/// musl's allocator has neither setting: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_fragmentation() -> bool {
    true
}

/// Returns the allocator's free pages to the system (glibc), or does nothing.
#[allow(unsafe_code)]
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and shrinks the allocator's own free lists; it takes no
    // pointer and is thread-safe (it locks each arena).
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    /// Fails if glibc refuses a setting (a wrong parameter number or value is refused with 0).
    #[test]
    fn the_allocator_takes_the_settings() {
        assert!(super::limit_fragmentation());
    }
}
