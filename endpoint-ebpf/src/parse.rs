//! Parse: bounds-checked views of the headers we act on, once per packet, into one
//! protocol-neutral [`Packet`]: the IPv4 or IPv6 header and a transport header whose
//! first four bytes are the ports (TCP, UDP) — all that classify, conntrack, policy and
//! select look at. Only the steps that rewrite or answer (nat, tcp, reset, icmp) look
//! further.
//!
//! Policy for what we do not handle (documented in the README):
//! - not IPv4, IPv6 or ARP, or IP but not TCP, UDP or ICMP(v6): [`Frame::Other`]
//!   (dropped on consumer-only interfaces, passed to the kernel elsewhere);
//! - truncated or inconsistent Ethernet/IP/TCP/UDP/ICMP headers: dropped as malformed
//!   (the kernel would drop them too);
//! - IPv4 options or fragments, IPv6 extension headers: [`Frame::Unsupported`],
//!   dropped if addressed to one of our addresses (ports are unknown or the headers
//!   would move).
//! - ICMPv6 other than errors, echo requests and neighbour solicitations:
//!   [`Frame::Other`].

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use endpoint_common::{
    counter,
    maps::{Addr, FAMILY_IPV4, FAMILY_IPV6, PROTO_ICMP, PROTO_TCP, PROTO_UDP},
};
use network_types::{
    arp::ArpHdr,
    eth::{EthHdr, EtherType},
    icmp::Icmpv4Hdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::outcome::Outcome;

/// ICMPv6's next-header number.
pub const PROTO_ICMPV6: u8 = 58;

/// An IP packet with a 20-byte IPv4 header (or a 40-byte IPv6 header and no extension
/// header) and a transport header checked to lie within the frame: TCP (20 bytes or
/// more), UDP (8) or ICMP (8).
pub struct Packet {
    pub eth: *mut EthHdr,
    /// The IPv4 or IPv6 header (`family`).
    pub ip: *mut u8,
    pub l4: *mut u8,
    /// `family << 8 | proto` (`FAMILY_IPV4` or `FAMILY_IPV6`; `PROTO_TCP`, `PROTO_UDP`
    /// or `PROTO_ICMP`): a constant in a whole word, so that the verifier knows which
    /// headers were checked (it keeps track of a constant spilled to the stack only if it
    /// is filled back at the size it was stored, and bytes side by side may be stored
    /// merged).
    kind: u64,
}

#[inline(always)]
const fn kind(family: u8, proto: u8) -> u64 {
    (family as u64) << 8 | proto as u64
}

pub enum Frame {
    Arp {
        eth: *mut EthHdr,
        arp: *mut ArpHdr,
    },
    /// TCP or UDP: traffic of a flow.
    Flow(Packet),
    Icmp(Packet),
    /// An ICMPv6 neighbour solicitation (at least its fixed part, 24 bytes).
    Solicitation(Packet),
    /// IP we cannot handle; dropped under `counter` if `dst` is ours.
    Unsupported {
        dst: Addr,
        family: u8,
        counter: u32,
    },
    /// Anything else: other IP protocols, other EtherTypes.
    Other,
}

pub const IP_OFFSET: usize = EthHdr::LEN;
pub const L4_OFFSET: usize = EthHdr::LEN + Ipv4Hdr::LEN;
pub const L4_OFFSET_V6: usize = EthHdr::LEN + Ipv6Hdr::LEN;
/// More-fragments flag and fragment offset, in the raw big-endian `frags` field.
const FRAGMENT_MASK: u16 = 0x3fff;
/// ICMPv6 neighbour solicitation, and its length before options.
const NEIGHBOUR_SOLICITATION: u8 = 135;
const SOLICITATION_LEN: usize = 24;
/// ICMPv6 echo request.
const ECHO_REQUEST: u8 = 128;

/// A pointer to a `T` at `offset`, if the frame is long enough to hold it.
#[inline(always)]
pub fn at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Outcome> {
    let start = ctx.data() + offset;
    if start + size_of::<T>() > ctx.data_end() {
        return Err(Outcome::drop(counter::DROP_MALFORMED));
    }
    Ok(start as *mut T)
}

#[inline(always)]
pub fn frame(ctx: &XdpContext) -> Result<Frame, Outcome> {
    let eth: *mut EthHdr = at(ctx, 0)?;
    // SAFETY: `at` checked the header lies within the frame.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == EtherType::Arp as u16 {
        let arp = at(ctx, EthHdr::LEN)?;
        return Ok(Frame::Arp { eth, arp });
    }
    if ether_type == EtherType::Ipv6 as u16 {
        return ipv6(ctx, eth);
    }
    if ether_type != EtherType::Ipv4 as u16 {
        return Ok(Frame::Other);
    }
    let ip: *mut Ipv4Hdr = at(ctx, IP_OFFSET)?;
    // SAFETY: as above.
    let ip_ref = unsafe { &*ip };
    let proto = ip_ref.proto;
    if proto != PROTO_TCP && proto != PROTO_UDP && proto != PROTO_ICMP {
        return Ok(Frame::Other);
    }
    let header_len = ip_ref.ihl() as usize;
    let total_len = ip_ref.tot_len() as usize;
    if ip_ref.version() != 4
        || header_len < Ipv4Hdr::LEN
        || total_len < header_len
        || IP_OFFSET + total_len > ctx.data_end() - ctx.data()
    {
        return Err(Outcome::drop(counter::DROP_MALFORMED));
    }
    if u16::from_be_bytes(ip_ref.frags) & FRAGMENT_MASK != 0 {
        return Ok(unsupported(ip_ref, counter::DROP_FRAGMENT));
    }
    if header_len != Ipv4Hdr::LEN {
        return Ok(unsupported(ip_ref, counter::DROP_IP_OPTIONS));
    }
    let payload = total_len - Ipv4Hdr::LEN;
    let packet = Packet {
        eth,
        ip: ip.cast(),
        l4: (ctx.data() + L4_OFFSET) as *mut u8,
        kind: kind(FAMILY_IPV4, PROTO_ICMP),
    };
    if proto != PROTO_ICMP {
        return transport(ctx, packet, proto, L4_OFFSET, payload);
    }
    {
        at::<Icmpv4Hdr>(ctx, L4_OFFSET)?;
        if payload < Icmpv4Hdr::LEN {
            return Err(Outcome::drop(counter::DROP_MALFORMED));
        }
        Ok(Frame::Icmp(packet))
    }
}

/// An IPv6 frame: TCP, UDP or a neighbour solicitation right after the fixed header.
#[inline(always)]
fn ipv6(ctx: &XdpContext, eth: *mut EthHdr) -> Result<Frame, Outcome> {
    let ip: *mut Ipv6Hdr = at(ctx, IP_OFFSET)?;
    // SAFETY: `at` checked the header lies within the frame.
    let ip_ref = unsafe { &*ip };
    let payload = u16::from_be_bytes(ip_ref.payload_len) as usize;
    if ip_ref.vcf[0] >> 4 != 6 || L4_OFFSET_V6 + payload > ctx.data_end() - ctx.data() {
        return Err(Outcome::drop(counter::DROP_MALFORMED));
    }
    let proto = ip_ref.next_hdr;
    let packet = Packet {
        eth,
        ip: ip.cast(),
        l4: (ctx.data() + L4_OFFSET_V6) as *mut u8,
        kind: kind(FAMILY_IPV6, PROTO_ICMPV6),
    };
    match proto {
        PROTO_TCP | PROTO_UDP => transport(ctx, packet, proto, L4_OFFSET_V6, payload),
        PROTO_ICMPV6 => {
            let message: *mut u8 = at(ctx, L4_OFFSET_V6)?;
            // SAFETY: as above.
            let message = unsafe { *message };
            if message == NEIGHBOUR_SOLICITATION {
                at::<[u8; SOLICITATION_LEN]>(ctx, L4_OFFSET_V6)?;
                if payload < SOLICITATION_LEN {
                    return Err(Outcome::drop(counter::DROP_MALFORMED));
                }
                return Ok(Frame::Solicitation(packet));
            }
            // Errors (types below 128) and echo requests; the rest of neighbour
            // discovery, and multicast listener messages, are not ours.
            if message < 128 || message == ECHO_REQUEST {
                at::<[u8; 8]>(ctx, L4_OFFSET_V6)?;
                if payload < 8 {
                    return Err(Outcome::drop(counter::DROP_MALFORMED));
                }
                return Ok(Frame::Icmp(packet));
            }
            Ok(Frame::Other)
        }
        // Extension headers (hop-by-hop, routing, fragment, destination options,
        // authentication, mobility, HIP, shim6): the transport header is further on.
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 => Ok(Frame::Unsupported {
            dst: Addr::ipv6(ip_ref.dst_addr),
            family: FAMILY_IPV6,
            counter: counter::DROP_IPV6_EXTENSION,
        }),
        _ => Ok(Frame::Other),
    }
}

/// A TCP or UDP packet whose transport header is at `offset` and whose IP payload is
/// `payload` bytes.
#[inline(always)]
fn transport(
    ctx: &XdpContext,
    packet: Packet,
    proto: u8,
    offset: usize,
    payload: usize,
) -> Result<Frame, Outcome> {
    if proto == PROTO_TCP {
        let tcp: *mut TcpHdr = at(ctx, offset)?;
        // SAFETY: `at` checked the header lies within the frame.
        let tcp_len = unsafe { (*tcp).doff() } as usize * 4;
        if tcp_len < TcpHdr::LEN || tcp_len > payload {
            return Err(Outcome::drop(counter::DROP_MALFORMED));
        }
        return Ok(Frame::Flow(Packet {
            kind: kind(packet.family(), PROTO_TCP),
            ..packet
        }));
    }
    let udp: *mut UdpHdr = at(ctx, offset)?;
    // SAFETY: as above.
    // A datagram exactly fills the IP payload (the checksum is over its length), header
    // included.
    if payload < UdpHdr::LEN || unsafe { (*udp).len() } as usize != payload {
        return Err(Outcome::drop(counter::DROP_MALFORMED));
    }
    Ok(Frame::Flow(Packet {
        kind: kind(packet.family(), PROTO_UDP),
        ..packet
    }))
}

#[inline(always)]
fn unsupported(ip: &Ipv4Hdr, counter: u32) -> Frame {
    Frame::Unsupported {
        dst: Addr::ipv4(ip.dst_addr),
        family: FAMILY_IPV4,
        counter,
    }
}

impl Packet {
    #[inline(always)]
    pub fn is_ipv6(&self) -> bool {
        self.kind >> 8 == FAMILY_IPV6 as u64
    }

    #[inline(always)]
    pub fn family(&self) -> u8 {
        (self.kind >> 8) as u8
    }

    #[inline(always)]
    pub fn proto(&self) -> u8 {
        self.kind as u8
    }

    /// The IPv4 header: only for a packet that is not [`is_ipv6`](Self::is_ipv6).
    #[inline(always)]
    pub fn ipv4(&self) -> &Ipv4Hdr {
        // SAFETY: `frame` checked the header lies within the frame.
        unsafe { &*self.ip.cast::<Ipv4Hdr>() }
    }

    /// The IPv6 header: only for a packet that [`is_ipv6`](Self::is_ipv6).
    #[inline(always)]
    pub fn ipv6(&self) -> &Ipv6Hdr {
        // SAFETY: `frame` checked the header lies within the frame.
        unsafe { &*self.ip.cast::<Ipv6Hdr>() }
    }

    #[inline(always)]
    pub fn src(&self) -> Addr {
        if self.is_ipv6() {
            Addr::ipv6(self.ipv6().src_addr)
        } else {
            Addr::ipv4(self.ipv4().src_addr)
        }
    }

    #[inline(always)]
    pub fn dst(&self) -> Addr {
        if self.is_ipv6() {
            Addr::ipv6(self.ipv6().dst_addr)
        } else {
            Addr::ipv4(self.ipv4().dst_addr)
        }
    }

    /// The TTL, or the hop limit.
    #[inline(always)]
    pub fn hop_limit(&self) -> u8 {
        if self.is_ipv6() {
            self.ipv6().hop_limit
        } else {
            self.ipv4().ttl
        }
    }

    /// The length of the IP header.
    #[inline(always)]
    pub fn ip_header_len(&self) -> usize {
        if self.is_ipv6() {
            Ipv6Hdr::LEN
        } else {
            Ipv4Hdr::LEN
        }
    }

    /// The IP packet's length, header included (what an MTU limits).
    #[inline(always)]
    pub fn ip_len(&self) -> u32 {
        if self.is_ipv6() {
            Ipv6Hdr::LEN as u32 + u16::from_be_bytes(self.ipv6().payload_len) as u32
        } else {
            self.ipv4().tot_len() as u32
        }
    }

    /// The transport segment's length, header included.
    #[inline(always)]
    pub fn l4_len(&self) -> u32 {
        if self.is_ipv6() {
            u16::from_be_bytes(self.ipv6().payload_len) as u32
        } else {
            (self.ipv4().tot_len() as u32).wrapping_sub(Ipv4Hdr::LEN as u32)
        }
    }

    /// Where the transport header begins in the frame.
    #[inline(always)]
    pub fn l4_offset(&self) -> usize {
        EthHdr::LEN + self.ip_header_len()
    }

    #[inline(always)]
    pub fn eth(&self) -> &EthHdr {
        // SAFETY: as in `ip`.
        unsafe { &*self.eth }
    }

    #[inline(always)]
    pub fn is_tcp(&self) -> bool {
        self.kind as u8 == PROTO_TCP
    }

    /// The TCP header: only for a packet that [`is_tcp`](Self::is_tcp).
    #[inline(always)]
    pub fn tcp(&self) -> &TcpHdr {
        // SAFETY: `frame` checked a TCP packet's 20-byte header lies within the frame.
        unsafe { &*self.l4.cast::<TcpHdr>() }
    }

    /// The source and destination ports, as in the packet (TCP or UDP).
    #[inline(always)]
    pub fn ports_be(&self) -> (u16, u16) {
        // SAFETY: both headers begin with the two ports, checked to lie in the frame.
        let ports = unsafe { &*self.l4.cast::<[[u8; 2]; 2]>() };
        (u16::from_ne_bytes(ports[0]), u16::from_ne_bytes(ports[1]))
    }

    /// The destination port, as in the packet.
    #[inline(always)]
    pub fn dst_port_be(&self) -> u16 {
        self.ports_be().1
    }
}
