//! Parse: bounds-checked views of the headers we act on.
//!
//! Policy for what we do not handle (documented in the README):
//! - not IPv4 or ARP, or IPv4 but not TCP: [`Frame::Other`] (dropped on consumer-only
//!   interfaces, passed to the kernel elsewhere);
//! - truncated or inconsistent Ethernet/IPv4/TCP headers: dropped as malformed (the kernel
//!   would drop them too);
//! - TCP with IPv4 options or fragmented: [`Frame::Unsupported`], dropped if addressed to
//!   one of our addresses (ports are unknown or the headers would move).

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use endpoint_common::counter;
use network_types::{
    arp::ArpHdr,
    eth::{EthHdr, EtherType},
    ip::{IpProto, Ipv4Hdr},
    tcp::TcpHdr,
};

use crate::outcome::Outcome;

/// A TCP/IPv4 packet with a 20-byte IPv4 header.
pub struct Packet {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
    pub tcp: *mut TcpHdr,
}

pub enum Frame {
    Arp {
        eth: *mut EthHdr,
        arp: *mut ArpHdr,
    },
    Tcp(Packet),
    /// TCP we cannot handle; dropped under `counter` if `dst` is ours.
    Unsupported {
        dst: [u8; 4],
        counter: u32,
    },
    /// Anything else: IPv6, IPv4 that is not TCP, other EtherTypes.
    Other,
}

pub const IP_OFFSET: usize = EthHdr::LEN;
pub const TCP_OFFSET: usize = EthHdr::LEN + Ipv4Hdr::LEN;
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
    if ip_ref.proto != IpProto::Tcp as u8 {
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
    let tcp: *mut TcpHdr = at(ctx, TCP_OFFSET)?;
    // SAFETY: as above.
    let tcp_len = unsafe { (*tcp).doff() } as usize * 4;
    if tcp_len < TcpHdr::LEN || Ipv4Hdr::LEN + tcp_len > total_len {
        return Err(Outcome::drop(counter::DROP_MALFORMED));
    }
    Ok(Frame::Tcp(Packet { eth, ip, tcp }))
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
    pub fn tcp(&self) -> &TcpHdr {
        // SAFETY: as in `ip`.
        unsafe { &*self.tcp }
    }

    #[inline(always)]
    pub fn eth(&self) -> &EthHdr {
        // SAFETY: as in `ip`.
        unsafe { &*self.eth }
    }

    /// The destination port, as in the packet.
    #[inline(always)]
    pub fn dst_port_be(&self) -> u16 {
        u16::from_ne_bytes(self.tcp().dest)
    }
}
