//! Atomic operations on map memory shared by all CPUs (and, for mmapped arrays, the
//! agent), on 64-bit words: the BPF instructions for them need no newer CPU than the
//! one rustc builds for (32-bit ones would need `alu32`, which LLVM does not combine
//! correctly with it; and that CPU's atomic add gives no result: [`take`] goes through
//! compare-and-swap). On BPF they are the kernel's atomic instructions; the host build
//! (cargo builds this crate for the host as the agent's build dependency, never runs
//! it) gets std's equivalents.

#[cfg(target_arch = "bpf")]
mod imp {
    use core::intrinsics::{
        AtomicOrdering::SeqCst, atomic_and, atomic_cxchg, atomic_or, atomic_xadd,
    };

    /// Sets `*at` to `new` if it holds `old`; whether it did.
    #[inline(always)]
    pub unsafe fn swap_if(at: *mut u64, old: u64, new: u64) -> bool {
        unsafe { atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(at, old, new).1 }
    }

    /// Adds `n` (wrapping).
    #[inline(always)]
    pub unsafe fn add(at: *mut u64, n: u64) {
        unsafe { atomic_xadd::<u64, u64, { SeqCst }>(at, n) };
    }

    /// Clears the bits of `mask` and returns the value before.
    #[inline(always)]
    pub unsafe fn clear(at: *mut u64, mask: u64) -> u64 {
        unsafe { atomic_and::<u64, u64, { SeqCst }>(at, !mask) }
    }

    /// Sets the bits of `mask` and returns the value before.
    #[inline(always)]
    pub unsafe fn set(at: *mut u64, mask: u64) -> u64 {
        unsafe { atomic_or::<u64, u64, { SeqCst }>(at, mask) }
    }
}

#[cfg(not(target_arch = "bpf"))]
mod imp {
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

    pub unsafe fn swap_if(at: *mut u64, old: u64, new: u64) -> bool {
        unsafe { AtomicU64::from_ptr(at) }
            .compare_exchange(old, new, SeqCst, SeqCst)
            .is_ok()
    }

    pub unsafe fn add(at: *mut u64, n: u64) {
        unsafe { AtomicU64::from_ptr(at) }.fetch_add(n, SeqCst);
    }

    pub unsafe fn clear(at: *mut u64, mask: u64) -> u64 {
        unsafe { AtomicU64::from_ptr(at) }.fetch_and(!mask, SeqCst)
    }

    pub unsafe fn set(at: *mut u64, mask: u64) -> u64 {
        unsafe { AtomicU64::from_ptr(at) }.fetch_or(mask, SeqCst)
    }
}

pub use imp::*;

/// Counts one more in `*at` if it stays below `limit`; whether it did. Under heavy
/// contention (the word changed under every one of a few tries) it does not.
///
/// # Safety
/// `at` points into map memory changed only atomically.
#[inline(always)]
pub unsafe fn take(at: *mut u64, limit: u64) -> bool {
    let mut tries = 0;
    while tries < 8 {
        // SAFETY: the caller's.
        let count = unsafe { at.read_volatile() };
        if count >= limit {
            return false;
        }
        if unsafe { swap_if(at, count, count + 1) } {
            return true;
        }
        tries += 1;
    }
    false
}
