//! How a packet's journey ends: the XDP action, the counter it is counted under and the
//! endpoint it is counted for — packed in one nonzero 32-bit word, so that a step's
//! `Outcome` or `Result<(), Outcome>` is one scalar in the one return register. A
//! larger result is returned through memory, and the register then left behind may
//! hold a stack pointer, which the verifier refuses to see returned (whether it does
//! shifts with every edit). A step that ends the journey either way returns an
//! `Outcome`, and `?` on a `Result<_, Outcome>` inside it ends it early.

use core::{convert::Infallible, num::NonZeroU32, ops::FromResidual};

use aya_ebpf::bindings::xdp_action;
use endpoint_common::{counter, maps::SLOT_BITS};

const ACTION_BITS: u32 = 3;
const COUNTER_BITS: u32 = 32 - ACTION_BITS - SLOT_BITS;

const _: () = assert!(xdp_action::XDP_REDIRECT < 1 << ACTION_BITS);
const _: () = assert!(counter::COUNT <= 1 << COUNTER_BITS);

#[derive(Clone, Copy)]
pub struct Outcome(NonZeroU32);

impl Outcome {
    /// `action`, counted under `counter` against endpoint slot `endpoint` (0: none).
    #[inline(always)]
    pub const fn new(action: u32, counter: u32, endpoint: u32) -> Self {
        let bits = action | counter << ACTION_BITS | endpoint << (ACTION_BITS + COUNTER_BITS);
        // Every action the program takes is nonzero (it never aborts).
        match NonZeroU32::new(bits) {
            Some(bits) => Self(bits),
            None => Self(NonZeroU32::MIN),
        }
    }

    #[inline(always)]
    pub const fn action(self) -> u32 {
        self.0.get() & ((1 << ACTION_BITS) - 1)
    }

    #[inline(always)]
    pub const fn counter(self) -> u32 {
        (self.0.get() >> ACTION_BITS) & ((1 << COUNTER_BITS) - 1)
    }

    #[inline(always)]
    pub const fn endpoint(self) -> u32 {
        self.0.get() >> (ACTION_BITS + COUNTER_BITS)
    }

    /// Not ours: the kernel gets it untouched.
    #[inline(always)]
    pub const fn pass() -> Self {
        Self::new(xdp_action::XDP_PASS, counter::PASS, 0)
    }

    /// Dropped for the reason `counter`, blamed on no endpoint.
    #[inline(always)]
    pub const fn drop(counter: u32) -> Self {
        Self::drop_for(counter, 0)
    }

    /// Dropped for the reason `counter`, counted against `endpoint`.
    #[inline(always)]
    pub const fn drop_for(counter: u32, endpoint: u32) -> Self {
        Self::new(xdp_action::XDP_DROP, counter, endpoint)
    }
}

impl FromResidual<Result<Infallible, Outcome>> for Outcome {
    #[inline(always)]
    fn from_residual(residual: Result<Infallible, Outcome>) -> Self {
        match residual {
            Err(outcome) => outcome,
        }
    }
}
