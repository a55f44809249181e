//! `allocator::keep_freed_memory` changes where glibc serves a large block from, and keeps it after
//! it is freed. Its own test binary (one process, one test) so that no other test moves glibc's
//! dynamic thresholds first.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn large_blocks_come_from_the_heap_and_stay_after_free() {
    const MIB: usize = 1 << 20;
    let mmapped = || unsafe { libc::mallinfo2() }.hblkhd;
    let heap = || unsafe { libc::mallinfo2() }.arena;
    let touch = |v: &mut Vec<u8>| {
        v.resize(v.capacity(), 1);
        std::hint::black_box(v.as_ptr());
    };

    // 1. glibc's defaults (a fresh process: 128 KiB threshold) map an 8 MiB block with mmap.
    assert!(
        std::env::var("CM_GLIBC_MALLOC_DEFAULTS").is_err(),
        "unset CM_GLIBC_MALLOC_DEFAULTS to run this test"
    );
    let before = mmapped();
    let mut control = Vec::<u8>::with_capacity(8 * MIB);
    touch(&mut control);
    assert!(
        mmapped() >= before + 8 * MIB,
        "control: glibc's defaults should mmap an 8 MiB block (mmapped bytes {} -> {})",
        before,
        mmapped()
    );
    drop(control);

    // 2. With the settings a 24 MiB block (above the threshold glibc adapted to, 8 MiB) comes from
    //    the heap, and the heap keeps it once it is freed.
    consistency_models::allocator::keep_freed_memory();
    let before = mmapped();
    let mut block = Vec::<u8>::with_capacity(24 * MIB);
    touch(&mut block);
    assert!(
        mmapped() < before + 24 * MIB,
        "a 24 MiB block was mmapped ({} -> {} bytes)",
        before,
        mmapped()
    );
    drop(block);
    assert!(
        heap() >= 24 * MIB,
        "the heap was trimmed after the free: {} bytes left",
        heap()
    );
}
