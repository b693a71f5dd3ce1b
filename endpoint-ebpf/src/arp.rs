//! ARP: the node answers for endpoint IPs on consumer interfaces and for NAT addresses on
//! provider interfaces, so consumers and targets reach them with no setup on the node
//! (and two consumer networks can use the same endpoint IP).

use aya_ebpf::programs::XdpContext;
use endpoint_common::{counter, maps::Interface};
use network_types::{arp::ArpHdr, eth::EthHdr};

use crate::{classify, forward, outcome::Outcome};

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
) -> Result<Outcome, Outcome> {
    // SAFETY: `parse` checked both headers lie within the frame.
    let (eth, arp) = unsafe { (&mut *eth, &mut *arp) };
    if arp.oper() != ARP_REQUEST
        || arp.htype() != HTYPE_ETHERNET
        || arp.ptype() != PTYPE_IPV4
        || arp.hlen != 6
        || arp.plen != 4
    {
        return Err(Outcome::pass());
    }
    let wanted = arp.tpa;
    if classify::owned(ctx, wanted).is_none() {
        return Err(Outcome::pass());
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
    Ok(Outcome {
        action: forward::bounce(ctx, interface),
        counter: counter::ARP_REPLY,
        endpoint: 0,
    })
}
