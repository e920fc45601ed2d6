//! glibc's malloc tuned for tensors.
//!
//! By default glibc serves every allocation over 32 MiB (and, adaptively, smaller ones) with its
//! own `mmap` and returns it with `munmap` when freed, and trims the heap top above 128 KiB. A
//! training step allocates and frees the same large activations every time, so each step faults
//! the pages back in and zeroes them again: measured here, the B0 U-Net's training step at
//! 512×512 ran 1.5× faster with both limits raised (the same advice the benchmark gives PyTorch).
//! The cost is that freed memory stays with the process, up to its peak, which it reaches again
//! at the next step anyway.

/// Raises glibc's mmap and trim thresholds to 1 GiB. Call once, first thing in `main`, before
/// any thread starts. Does nothing on other C libraries.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn keep_freed_memory() {
    const LIMIT: libc::c_int = 1 << 30;
    // SAFETY: `mallopt` only sets two malloc parameters; it takes glibc's arena lock itself and
    // has no memory-safety preconditions. Its return value (0 when a value is refused) needs no
    // handling: the defaults stay, which is correct, only slower.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, LIMIT);
        libc::mallopt(libc::M_TRIM_THRESHOLD, LIMIT);
    }
}

/// Does nothing where the C library is not glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_memory() {}
