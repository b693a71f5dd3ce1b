//! The XDP programs the agent loads: `endpoint`, attached (see the library for the
//! packet's journey); `dns`, which it hands queries to a resolver address; and
//! `expire`, which the agent runs.
#![no_std]
#![no_main]

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
pub fn endpoint(ctx: XdpContext) -> u32 {
    endpoint_ebpf::handle(&ctx)
}

/// Reached from `endpoint` by tail call, never attached: answers a DNS query.
#[xdp]
pub fn dns(ctx: XdpContext) -> u32 {
    endpoint_ebpf::dns::run(&ctx)
}

/// Run by the agent (BPF_PROG_RUN), never attached: removes what ran out.
#[xdp]
pub fn expire(ctx: XdpContext) -> u32 {
    endpoint_ebpf::expire::run(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // A panic path that survives optimisation makes the verifier reject the program.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
