//! The host allocator's policy for large buffers.
//!
//! A forward pass allocates and frees tensors of tens of megabytes (the FFN's hidden
//! activations, im2col bands, attention scores) over and over. glibc serves every block above
//! 32 MiB with a fresh `mmap` and returns it with `munmap` when freed, and trims the heap's top
//! as soon as it is free: each forward then faults every page of those buffers in again. On a
//! 2-core EPYC that was a quarter of a DiT forward's time (issue 26's profile: page faults and
//! `munmap`). Keeping freed memory in the heap lets the next tensor of the same size reuse
//! pages that are already mapped. The peak resident size is unchanged in kind (what was live at
//! the peak stays the peak); memory is just not handed back between passes.

/// Makes the process's allocator keep freed large blocks for reuse instead of unmapping them.
///
/// Call it once, early in `main`, before threads start allocating. Returns whether the policy
/// was applied: `true` on Linux with glibc, `false` elsewhere (other allocators already keep
/// freed memory or have their own settings), so a caller can report it.
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // mallopt takes an int: 1 GiB and 2 GiB − 1 are the largest round values it accepts.
        // SAFETY: mallopt only changes the allocator's tunables; it is safe to call at any time.
        let mmap = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30) };
        let trim = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) };
        mmap == 1 && trim == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
