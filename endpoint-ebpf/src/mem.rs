//! Memory the compiler would handle a byte at a time. Zeroing without `memset`: the
//! compiler turns a zeroed struct or array into a call to `memset`, which in BPF is a
//! byte-at-a-time loop with a call around it (a 64-byte route request costs hundreds of
//! instructions); these store directly, unrolled, volatile so that the stores are not
//! merged back into a `memset` call. And unaligned 8-byte words, loaded and stored
//! whole (`copy_words`).

/// Zeroes the `T` at `at` in place, 4 bytes at a time where `T`'s alignment allows
/// (a zeroed value returned and moved would be copied with `memset` again).
#[inline(always)]
pub fn zero<T>(at: *mut T) {
    if align_of::<T>() >= 4 && size_of::<T>().is_multiple_of(4) {
        let words = at.cast::<u32>();
        let mut i = 0;
        while i < size_of::<T>() / 4 {
            // SAFETY: within the caller's `T`, and aligned.
            unsafe { words.add(i).write_volatile(0) };
            i += 1;
        }
    } else {
        let bytes = at.cast::<u8>();
        let mut i = 0;
        while i < size_of::<T>() {
            // SAFETY: within the caller's `T`.
            unsafe { bytes.add(i).write_volatile(0) };
            i += 1;
        }
    }
}

/// Sets the bytes of `bytes` to zero.
#[inline(always)]
pub fn clear<const N: usize>(bytes: &mut [u8; N]) {
    let at = bytes.as_mut_ptr();
    let mut i = 0;
    while i < N {
        // SAFETY: within `bytes`.
        unsafe { at.add(i).write_volatile(0) };
        i += 1;
    }
}

/// Copies `words` 8-byte words from `from` to `to`, neither of which need be aligned:
/// one load and one store a word (the compiler would move unaligned data a byte at a
/// time; the kernel allows unaligned access where the CPU does it well, as on x86-64
/// and arm64).
///
/// # Safety
/// Both ranges are valid for `8 * words` bytes and do not overlap.
#[inline(always)]
pub unsafe fn copy_words(to: *mut u8, from: *const u8, words: usize) {
    let mut i = 0;
    while i < words {
        // SAFETY: within both ranges (the caller's word).
        unsafe { store_u64(to.add(8 * i), load_u64(from.add(8 * i))) };
        i += 1;
    }
}

/// The 8 bytes at `at` as a little-endian word (see [`copy_words`]).
///
/// # Safety
/// `at` is valid for 8 bytes.
#[inline(always)]
pub unsafe fn load_u64(at: *const u8) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        let value: u64;
        // SAFETY: the caller's 8 bytes.
        unsafe {
            core::arch::asm!(
                "{value} = *(u64 *)({at} + 0)",
                at = in(reg) at,
                value = out(reg) value,
                options(nostack, readonly, preserves_flags)
            )
        };
        value
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: the caller's 8 bytes.
    unsafe {
        at.cast::<u64>().read_unaligned()
    }
}

/// Stores `value` in the 8 bytes at `at` (see [`copy_words`]).
///
/// # Safety
/// `at` is valid for 8 bytes.
#[inline(always)]
pub unsafe fn store_u64(at: *mut u8, value: u64) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: the caller's 8 bytes.
    unsafe {
        core::arch::asm!(
            "*(u64 *)({at} + 0) = {value}",
            at = in(reg) at,
            value = in(reg) value,
            options(nostack, preserves_flags)
        )
    };
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: the caller's 8 bytes.
    unsafe {
        at.cast::<u64>().write_unaligned(value)
    }
}
