//! Parse: bounds-checked views of the headers we act on, once per packet, into one
//! protocol-neutral [`Packet`]: the IPv4 header and a transport header whose first four
//! bytes are the ports (TCP, UDP) — all that classify, conntrack, policy and select
//! look at. Only the steps that rewrite or answer (nat, tcp, reset, icmp) look further.
//!
//! Policy for what we do not handle (documented in the README):
//! - not IPv4 or ARP, or IPv4 but not TCP, UDP or ICMP: [`Frame::Other`] (dropped on
//!   consumer-only interfaces, passed to the kernel elsewhere);
//! - truncated or inconsistent Ethernet/IPv4/TCP/UDP/ICMP headers: dropped as
//!   malformed (the kernel would drop them too);
//! - IPv4 options or fragments: [`Frame::Unsupported`], dropped if addressed to one of
//!   our addresses (ports are unknown or the headers would move).

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use endpoint_common::{
    counter,
    maps::{PROTO_ICMP, PROTO_TCP, PROTO_UDP},
};
use network_types::{
    arp::ArpHdr,
    eth::{EthHdr, EtherType},
    icmp::Icmpv4Hdr,
    ip::Ipv4Hdr,
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::outcome::Outcome;

/// An IPv4 packet with a 20-byte header and a transport header checked to lie within
/// the frame: TCP (20 bytes or more), UDP (8) or ICMP (8).
pub struct Packet {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
    pub l4: *mut u8,
    /// `PROTO_TCP`, `PROTO_UDP` or `PROTO_ICMP`.
    pub proto: u8,
}

pub enum Frame {
    Arp {
        eth: *mut EthHdr,
        arp: *mut ArpHdr,
    },
    /// TCP or UDP: traffic of a flow.
    Flow(Packet),
    Icmp(Packet),
    /// IPv4 we cannot handle; dropped under `counter` if `dst` is ours.
    Unsupported {
        dst: [u8; 4],
        counter: u32,
    },
    /// Anything else: IPv6, other IPv4 protocols, other EtherTypes.
    Other,
}

pub const IP_OFFSET: usize = EthHdr::LEN;
pub const L4_OFFSET: usize = EthHdr::LEN + Ipv4Hdr::LEN;
/// More-fragments flag and fragment offset, in the raw big-endian `frags` field.
const FRAGMENT_MASK: u16 = 0x3fff;

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
    if proto == PROTO_TCP {
        let tcp: *mut TcpHdr = at(ctx, L4_OFFSET)?;
        // SAFETY: as above.
        let tcp_len = unsafe { (*tcp).doff() } as usize * 4;
        if tcp_len < TcpHdr::LEN || tcp_len > payload {
            return Err(Outcome::drop(counter::DROP_MALFORMED));
        }
        return Ok(Frame::Flow(Packet {
            eth,
            ip,
            l4: tcp.cast(),
            proto,
        }));
    }
    if proto == PROTO_UDP {
        let udp: *mut UdpHdr = at(ctx, L4_OFFSET)?;
        // SAFETY: as above.
        // A datagram exactly fills the IPv4 payload (the checksum is over its length),
        // header included.
        if payload < UdpHdr::LEN || unsafe { (*udp).len() } as usize != payload {
            return Err(Outcome::drop(counter::DROP_MALFORMED));
        }
        return Ok(Frame::Flow(Packet {
            eth,
            ip,
            l4: udp.cast(),
            proto,
        }));
    }
    let icmp: *mut Icmpv4Hdr = at(ctx, L4_OFFSET)?;
    if payload < Icmpv4Hdr::LEN {
        return Err(Outcome::drop(counter::DROP_MALFORMED));
    }
    Ok(Frame::Icmp(Packet {
        eth,
        ip,
        l4: icmp.cast(),
        proto,
    }))
}

#[inline(always)]
fn unsupported(ip: &Ipv4Hdr, counter: u32) -> Frame {
    Frame::Unsupported {
        dst: ip.dst_addr,
        counter,
    }
}

impl Packet {
    #[inline(always)]
    pub fn ip(&self) -> &Ipv4Hdr {
        // SAFETY: `frame` checked the header lies within the frame.
        unsafe { &*self.ip }
    }

    #[inline(always)]
    pub fn eth(&self) -> &EthHdr {
        // SAFETY: as in `ip`.
        unsafe { &*self.eth }
    }

    #[inline(always)]
    pub fn is_tcp(&self) -> bool {
        self.proto == PROTO_TCP
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
