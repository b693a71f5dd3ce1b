//! Neighbour discovery: IPv6's ARP (RFC 4861). The node answers a neighbour
//! solicitation for an endpoint IP on its consumer interfaces, or for a NAT address on
//! its provider interfaces, with an advertisement from the interface's own MAC; what
//! is not ours is left as ARP leaves it.
//!
//! The advertisement's flags: not a router (the address is a host's, as far as its
//! neighbours can tell), solicited unless it answers duplicate address detection (a
//! solicitation from `::`, answered to all nodes), and override (the node's MAC is the
//! address's). It carries the target link-layer address option; the frame is resized to
//! exactly that and the ICMPv6 checksum computed from scratch.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_tail, programs::XdpContext};
use endpoint_common::{
    checksum::Sum,
    counter,
    maps::{Addr, FAMILY_IPV6, Interface, Policy, address_kind},
};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use crate::{
    classify, forward,
    outcome::Outcome,
    parse::{L4_OFFSET_V6, PROTO_ICMPV6, Packet},
    policy, verify,
};

const NEIGHBOUR_ADVERTISEMENT: u8 = 136;
/// Solicited and override (RFC 4861 §4.4), in the flags byte.
const SOLICITED: u8 = 0x40;
const OVERRIDE: u8 = 0x20;
/// The target link-layer address option: type 2, length 1 (8 bytes).
const TARGET_LINK_ADDRESS: [u8; 2] = [2, 1];
/// The advertisement: type, code, checksum, flags and reserved, target, option.
const ADVERT_LEN: usize = 4 + 4 + 16 + 8;
const FRAME_LEN: usize = L4_OFFSET_V6 + ADVERT_LEN;
/// All nodes (ff02::1), and its Ethernet multicast address.
const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// Turns a solicitation for one of our addresses into the advertisement, sent back
/// out.
// Its own BPF function: its stack frame is not added to its siblings'.
#[inline(never)]
pub fn advertise(ctx: &XdpContext, interface: &Interface, packet: &Packet) -> Outcome {
    let ip = packet.ipv6();
    // SAFETY: `parse` checked the solicitation's 24 bytes lie within the frame.
    let solicitation = unsafe { &*packet.l4.cast::<[u8; 24]>() };
    // Only an on-link solicitation (hop limit 255) with code 0 is valid (§7.1.1).
    if ip.hop_limit != 255 || solicitation[1] != 0 {
        return classify::not_ours(interface);
    }
    let mut target = [0u8; 16];
    target.copy_from_slice(&solicitation[8..24]);
    let wanted = Addr::ipv6(target);
    match classify::ours(ctx, interface, FAMILY_IPV6, wanted) {
        None => return classify::not_ours(interface),
        // As for ARP: not answered, but the endpoint request got traffic.
        Some(address) if address.kind == address_kind::WAITING => {
            let state = Policy::of(policy::word(address.slot)).state;
            return Outcome::drop_for(counter::drop_for_state(state), address.slot);
        }
        Some(address) if address.kind == address_kind::STANDBY => {
            return classify::not_ours(interface);
        }
        Some(_) => {}
    }
    // Duplicate address detection asks from the unspecified address: the answer goes
    // to all nodes, unsolicited.
    let detection = ip.src_addr == [0; 16];
    let (to, to_mac, flags) = if detection {
        (ALL_NODES, ALL_NODES_MAC, OVERRIDE)
    } else {
        (ip.src_addr, packet.eth().src_addr, SOLICITED | OVERRIDE)
    };
    if to_mac[0] & 1 != 0 && !detection {
        // A solicitation from a multicast MAC is bogus.
        return Outcome::drop(counter::DROP_NOT_FOR_US);
    }

    let excess = (ctx.data_end() - ctx.data()) as i32 - FRAME_LEN as i32;
    // SAFETY: resizing the frame; every pointer is derived again below.
    if excess != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -excess) } != 0 {
        return Outcome::drop(counter::DROP_MALFORMED);
    }
    let start = ctx.data();
    if start + FRAME_LEN > ctx.data_end() {
        return Outcome::drop(counter::DROP_MALFORMED);
    }
    let mac = interface.mac;
    // SAFETY: all within the FRAME_LEN bytes checked just above.
    let (eth, ip, advert) = unsafe {
        (
            &mut *(start as *mut EthHdr),
            &mut *((start + EthHdr::LEN) as *mut Ipv6Hdr),
            &mut *((start + L4_OFFSET_V6) as *mut [u8; ADVERT_LEN]),
        )
    };
    eth.dst_addr = to_mac;
    eth.src_addr = mac;
    ip.vcf = [0x60, 0, 0, 0];
    ip.payload_len = (ADVERT_LEN as u16).to_be_bytes();
    ip.next_hdr = PROTO_ICMPV6;
    ip.hop_limit = 255;
    ip.src_addr = target;
    ip.dst_addr = to;
    *advert = [0; ADVERT_LEN];
    advert[0] = NEIGHBOUR_ADVERTISEMENT;
    advert[4] = flags;
    advert[8..24].copy_from_slice(&target);
    advert[24..26].copy_from_slice(&TARGET_LINK_ADDRESS);
    advert[26..32].copy_from_slice(&mac);
    let mut sum: Sum =
        verify::pseudo_header(wanted, Addr::ipv6(to), PROTO_ICMPV6, ADVERT_LEN as u32);
    let mut i = 0;
    while i < ADVERT_LEN {
        sum = sum.word(u16::from_ne_bytes([advert[i], advert[i + 1]]));
        i += 2;
    }
    advert[2..4].copy_from_slice(&sum.finish().to_ne_bytes());
    Outcome::new(
        forward::bounce(ctx, interface),
        counter::NEIGHBOUR_ADVERT,
        0,
    )
}
