//! How a packet's journey ends: the XDP action and the counter it is counted under.

use aya_ebpf::bindings::xdp_action;
use endpoint_common::counter;

#[derive(Clone, Copy)]
pub struct Outcome {
    pub action: u32,
    pub counter: u32,
    /// Endpoint slot the packet is counted against (0: none).
    pub endpoint: u32,
}

impl Outcome {
    /// Not ours: the kernel gets it untouched.
    #[inline(always)]
    pub const fn pass() -> Self {
        Self {
            action: xdp_action::XDP_PASS,
            counter: counter::PASS,
            endpoint: 0,
        }
    }

    /// Dropped for the reason `counter`, blamed on no endpoint.
    #[inline(always)]
    pub const fn drop(counter: u32) -> Self {
        Self::drop_for(counter, 0)
    }

    /// Dropped for the reason `counter`, counted against `endpoint`.
    #[inline(always)]
    pub const fn drop_for(counter: u32, endpoint: u32) -> Self {
        Self {
            action: xdp_action::XDP_DROP,
            counter,
            endpoint,
        }
    }
}
