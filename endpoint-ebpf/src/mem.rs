//! Zeroing without `memset`: the compiler turns a zeroed struct or array into a call
//! to `memset`, which in BPF is a byte-at-a-time loop with a call around it (a 64-byte
//! route request costs hundreds of instructions). These store directly, unrolled;
//! volatile, so that the stores are not merged back into a `memset` call.

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
