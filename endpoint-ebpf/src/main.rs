//! The XDP programs the agent loads: `endpoint`, attached (see the library for the
//! packet's journey), and `expire`, which it runs.
#![no_std]
#![no_main]

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
pub fn endpoint(ctx: XdpContext) -> u32 {
    endpoint_ebpf::handle(&ctx)
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
