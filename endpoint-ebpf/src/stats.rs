//! Every outcome is counted: per CPU, per endpoint, packets and bytes.

use aya_ebpf::programs::XdpContext;
use endpoint_common::counter;

use crate::{maps::STATS, outcome::Outcome};

/// Counts one packet under `counter` for endpoint `slot`, besides its outcome (what
/// was done to it on the way).
#[inline(always)]
pub fn note(counter: u32, slot: u32) {
    if let Some(count) = STATS.get_ptr_mut(counter::index(slot, counter)) {
        // SAFETY: as in `count`.
        unsafe { (*count).packets += 1 };
    }
}

#[inline(always)]
pub fn count(ctx: &XdpContext, outcome: &Outcome) {
    let index = counter::index(outcome.endpoint(), outcome.counter());
    if let Some(count) = STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; nothing else on this CPU runs while we hold it.
        unsafe {
            (*count).packets += 1;
            (*count).bytes += (ctx.data_end() - ctx.data()) as u64;
        }
    }
}
