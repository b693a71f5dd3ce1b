//! Classify: whose packet is this? Endpoint traffic (consumer side), one for a NAT
//! address (provider side), or neither — then it goes to the kernel untouched.

use aya_ebpf::programs::XdpContext;
use endpoint_common::maps::{
    Addr, Address, AddressKey, Endpoint, EndpointKey, FAMILY_IPV4, Interface, PROTO_TCP,
    address_kind, role,
};

use crate::{
    maps::{ADDRESSES, ENDPOINTS, INTERFACES},
    outcome::Outcome,
    parse::Tcp,
};

/// The attached interface the packet arrived on; anything else is not ours.
#[inline(always)]
pub fn interface(ctx: &XdpContext) -> Result<Interface, Outcome> {
    let ifindex = ctx.ingress_ifindex() as u32;
    match INTERFACES.get_ptr(ifindex) {
        // SAFETY: map values are plain data; a concurrent update can only tear fields
        // the agent is changing anyway.
        Some(interface) => Ok(unsafe { *interface }),
        None => Err(Outcome::pass()),
    }
}

/// The endpoint a consumer-side packet is addressed to, if any.
#[inline(always)]
pub fn endpoint(interface: &Interface, packet: &Tcp) -> Option<Endpoint> {
    if interface.roles & role::CONSUMER == 0 {
        return None;
    }
    // SAFETY: `parse` checked the headers lie within the frame.
    let (ip, tcp) = unsafe { (&*packet.ip, &*packet.tcp) };
    let key = EndpointKey {
        network: interface.network,
        addr: Addr::ipv4(ip.dst_addr),
        port_be: u16::from_ne_bytes(tcp.dest),
        proto: PROTO_TCP,
        family: FAMILY_IPV4,
    };
    // SAFETY: as in `interface`.
    ENDPOINTS.get_ptr(&key).map(|endpoint| unsafe { *endpoint })
}

/// Whether a provider-side packet is addressed to a NAT address and port.
#[inline(always)]
pub fn to_nat_port(ctx: &XdpContext, packet: &Tcp) -> bool {
    // SAFETY: as in `endpoint`.
    let (ip, tcp) = unsafe { (&*packet.ip, &*packet.tcp) };
    match owned(ctx, ip.dst_addr) {
        Some(address) if address.kind == address_kind::NAT => {
            let port = u16::from_be_bytes(tcp.dest);
            (address.nat_port_min..=address.nat_port_max).contains(&port)
        }
        _ => false,
    }
}

/// What `addr` is to us on the ingress interface, if it is one of our addresses.
#[inline(always)]
pub fn owned(ctx: &XdpContext, addr: [u8; 4]) -> Option<Address> {
    let key = AddressKey {
        ifindex: ctx.ingress_ifindex() as u32,
        family: FAMILY_IPV4,
        _pad: [0; 3],
        addr: Addr::ipv4(addr),
    };
    // SAFETY: as in `interface`.
    ADDRESSES.get_ptr(&key).map(|address| unsafe { *address })
}

/// TCP we cannot handle: dropped (and counted) when it is for us, else the kernel's.
#[inline(always)]
pub fn unsupported(ctx: &XdpContext, dst: [u8; 4], counter: u32) -> Result<Outcome, Outcome> {
    match owned(ctx, dst) {
        Some(_) => Err(Outcome::drop(counter)),
        None => Err(Outcome::pass()),
    }
}
