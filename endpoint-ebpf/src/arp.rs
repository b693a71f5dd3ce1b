//! ARP: the node answers for endpoint IPs on consumer interfaces and for NAT addresses on
//! provider interfaces, so consumers and targets reach them with no setup on the node
//! (and two consumer networks can use the same endpoint IP). On a consumer-only
//! interface nothing else gets through: the kernel never answers a consumer for the
//! node's own addresses.

use aya_ebpf::programs::XdpContext;
use endpoint_common::{
    counter,
    maps::{Addr, FAMILY_IPV4, Interface, Policy, address_kind},
};
use network_types::{arp::ArpHdr, eth::EthHdr};

use crate::{classify, forward, outcome::Outcome, policy};

/// ARP that is not a request for one of our addresses.
#[inline(always)]
fn not_ours(interface: &Interface) -> Outcome {
    classify::not_ours(interface)
}

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
const HTYPE_ETHERNET: u16 = 1;
const PTYPE_IPV4: u16 = 0x0800;

/// Turns an ARP request for one of our addresses into the reply, sent back out.
// Its own BPF function: its stack frame is not added to its siblings' (the
// program's whole call chain must fit in 512 bytes).
#[inline(never)]
pub fn answer(
    ctx: &XdpContext,
    interface: &Interface,
    eth: *mut EthHdr,
    arp: *mut ArpHdr,
) -> Outcome {
    // SAFETY: `parse` checked both headers lie within the frame.
    let (eth, arp) = unsafe { (&mut *eth, &mut *arp) };
    if arp.oper() != ARP_REQUEST
        || arp.htype() != HTYPE_ETHERNET
        || arp.ptype() != PTYPE_IPV4
        || arp.hlen != 6
        || arp.plen != 4
    {
        return not_ours(interface);
    }
    let wanted = arp.tpa;
    match classify::ours(ctx, interface, FAMILY_IPV4, Addr::ipv4(wanted)) {
        None => return not_ours(interface),
        // Not answered, but the endpoint request got traffic (`pending_traffic`).
        Some(address) if address.kind == address_kind::WAITING => {
            let state = Policy::of(policy::word(address.slot)).state;
            return Outcome::drop_for(counter::drop_for_state(state), address.slot);
        }
        // Another node of the zone answers for it.
        Some(address) if address.kind == address_kind::STANDBY => return not_ours(interface),
        Some(_) => {}
    }
    let mac = interface.mac;
    let (asker_mac, asker_ip) = (arp.sha, arp.spa);
    arp.set_oper(ARP_REPLY);
    arp.tha = asker_mac;
    arp.tpa = asker_ip;
    arp.sha = mac;
    arp.spa = wanted;
    eth.dst_addr = asker_mac;
    eth.src_addr = mac;
    Outcome::new(forward::bounce(ctx, interface), counter::ARP_REPLY, 0)
}
