//! glibc `malloc` settings for tensor workloads on the CPU backend.
//!
//! A forward pass frees and re-allocates buffers of the same few sizes in every layer. With glibc's
//! defaults many of them come from fresh pages every time: large blocks are `mmap`ed and `munmap`ed
//! (the threshold starts at 128 KiB and only adapts upwards after the first frees), and the top of
//! the heap is given back to the kernel as soon as 128 KiB of it is free. Each fresh page costs a
//! page fault and the kernel zeroing it: a `perf` profile of the SD1.5 UNet forward at 32 x 32
//! latents on Burn-flex spent 33% of its time in page faults (`clear_page_erms` alone 19%).
//!
//! [`keep_freed_memory`] makes glibc keep and reuse what the process freed: blocks up to 32 MiB (the
//! largest threshold glibc accepts) come from the heap, the heap is trimmed only when 1 GiB at its top
//! is free, and it grows 256 MiB at a time (address space only: pages are touched when used).
//! There is one arena per core (glibc's default allows 8 per core, each keeping its own freed
//! blocks): with two training peers in their own thread pools, `train_teacher` 40 + 40 + 40 steps
//! peaked at 761 / 774 MiB with glibc's arena count and 526 / 536 MiB with 2 arenas, at the same
//! speed (45.4 / 45.8 s against 44.4 / 48.5 s, alternated; 2026-12-03). The
//! cost is memory: freed blocks stay in the heap and fragment it. Peak RSS measured unchanged on
//! the UNet rows and the training steps, but 2.7 GiB instead of 1.1 GiB on the SD1.5 VAE decode at
//! 512 px (`docs/benchmarks.md`).
//!
//! Set `CM_GLIBC_MALLOC_DEFAULTS=1` to keep glibc's defaults (and any `MALLOC_*_` environment
//! variables you set yourself). This is process-wide, so the library crates never call it; every example binary does, first
//! thing in `main`. It is a no-op off glibc (macOS, musl, Windows). Hand-written because no
//! maintained crate sets these four glibc parameters; a replacement allocator (jemalloc, mimalloc)
//! with its default settings measured no better here (it also returns freed pages to the kernel).

/// Tunes glibc `malloc` to reuse freed memory instead of returning it to the kernel (see the
/// module docs). Call once, at the start of `main`; later calls are harmless. Does nothing when
/// the environment variable `CM_GLIBC_MALLOC_DEFAULTS` is set to `1`.
pub fn keep_freed_memory() {
    if std::env::var("CM_GLIBC_MALLOC_DEFAULTS").is_ok_and(|v| v == "1") {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        const TRIM_THRESHOLD: libc::c_int = 1 << 30;
        const TOP_PAD: libc::c_int = 256 << 20;
        // One arena per core: each arena keeps what its threads freed (the thresholds above), so
        // glibc's default of up to 8 arenas per core multiplied the kept memory once training
        // peers and their thread pools allocate from several threads.
        let arenas = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(1024) as libc::c_int;
        // SAFETY: `mallopt` only changes allocator parameters; glibc documents it as safe to call
        // at any time, from any thread. A rejected value leaves the default in place (return 0).
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            libc::mallopt(libc::M_TOP_PAD, TOP_PAD);
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}
