//! Classify: whose packet is this? Decided with array reads before any hash lookup: the
//! interface's role, and on the consumer side whether some endpoint of its network
//! listens on the port; on the provider side whether the port is a NAT port. A consumer
//! interface carries endpoint traffic and nothing else; what is not ours elsewhere goes
//! to the kernel untouched.

use aya_ebpf::programs::XdpContext;
use endpoint_common::{
    counter,
    maps::{
        Addr, Address, AddressKey, EndpointKey, EndpointRef, Interface, Settings, address_kind,
        nat_scope, ports_index,
    },
};

use crate::{
    maps::{ADDRESSES, ENDPOINTS, INTERFACES, PORTS, SETTINGS},
    mem,
    outcome::Outcome,
    parse::Packet,
};

/// The attached interface the packet arrived on.
#[inline(always)]
pub fn interface(ctx: &XdpContext) -> Result<Interface, Outcome> {
    match INTERFACES.get(ctx.ingress_ifindex() as u32) {
        Some(interface) if interface.roles != 0 => Ok(*interface),
        // Attached but not (or no longer) configured: as if the program were not there.
        _ => Err(Outcome::pass()),
    }
}

/// Whether some endpoint of the interface's consumer network listens on the packet's
/// destination port.
#[inline(always)]
pub fn endpoint_port(interface: &Interface, packet: &Packet) -> bool {
    if !interface.consumer() {
        return false;
    }
    let port = u16::from_be(packet.dst_port_be()) as usize;
    match PORTS.get(ports_index(interface.network, packet.proto())) {
        Some(bitmap) => bitmap[port / 64] & (1 << (port % 64)) != 0,
        None => false,
    }
}

/// The endpoint listener a consumer-side packet is addressed to, if any.
#[inline(always)]
pub fn endpoint(network: u32, packet: &Packet) -> Option<EndpointRef> {
    let key = EndpointKey {
        network,
        addr: packet.dst(),
        port_be: packet.dst_port_be(),
        proto: packet.proto(),
        family: packet.family(),
    };
    // SAFETY: map values are replaced whole on update.
    ENDPOINTS.get_ptr(&key).map(|endpoint| unsafe { *endpoint })
}

/// What `addr` (of `family`) is to us in `scope` (a consumer network, or
/// [`nat_scope`]), if ours.
#[inline(always)]
pub fn owned(scope: u32, family: u8, addr: Addr) -> Option<Address> {
    let mut key = core::mem::MaybeUninit::<AddressKey>::uninit();
    mem::zero(key.as_mut_ptr());
    // SAFETY: zeroed just above (padding included: the key is hashed whole).
    let key = unsafe { key.assume_init_mut() };
    key.scope = scope;
    key.family = family;
    key.addr = addr;
    // SAFETY: as in `endpoint`.
    ADDRESSES.get_ptr(&*key).map(|address| unsafe { *address })
}

/// What `addr` is to us where the packet arrived: an address of the interface's
/// consumer network, or a NAT address of the interface.
#[inline(always)]
pub fn ours(ctx: &XdpContext, interface: &Interface, family: u8, addr: Addr) -> Option<Address> {
    let consumer = if interface.consumer() {
        owned(interface.network, family, addr)
    } else {
        None
    };
    consumer.or_else(|| {
        if interface.provider() {
            owned(nat_scope(ctx.ingress_ifindex() as u32), family, addr)
        } else {
            None
        }
    })
}

/// Whether `addr` is an address the node answers for where the packet arrived.
#[inline(always)]
pub fn answered(ctx: &XdpContext, interface: &Interface, family: u8, addr: Addr) -> bool {
    ours(ctx, interface, family, addr).is_some_and(|a| a.kind != address_kind::WAITING)
}

/// Whether a provider-side packet's destination port is a NAT port (a reply can only go
/// there). An empty range (a reader racing the agent's write sees at worst that) holds
/// no port.
#[inline(always)]
pub fn to_nat_port(interface: &Interface, packet: &Packet) -> bool {
    let port = u16::from_be(packet.dst_port_be());
    interface.provider() && interface.nat_port_min <= port && port <= interface.nat_port_max
}

/// Node-wide settings (absent until the agent wrote them).
#[inline(always)]
pub fn settings() -> Option<&'static Settings> {
    // SAFETY: the map replaces the value whole on update; this one stays valid while the
    // program runs.
    SETTINGS.get_ptr(0).map(|settings| unsafe { &*settings })
}

/// What is not endpoint traffic (nor a reply): dropped on a consumer-only interface —
/// the node itself is not reachable from a consumer network — the kernel's elsewhere.
#[inline(always)]
pub fn not_ours(interface: &Interface) -> Outcome {
    if interface.provider() {
        Outcome::pass()
    } else {
        Outcome::drop(counter::DROP_NOT_ENDPOINT)
    }
}

/// IP we cannot handle: dropped (and counted) when it is for us.
#[inline(always)]
pub fn unsupported(
    ctx: &XdpContext,
    interface: &Interface,
    family: u8,
    dst: Addr,
    counter: u32,
) -> Outcome {
    if answered(ctx, interface, family, dst) {
        Outcome::drop(counter)
    } else {
        not_ours(interface)
    }
}
