//! Parse: bounds-checked views of the headers we act on.
//!
//! Policy for what we do not handle (documented in the README):
//! - not IPv4 or ARP, or IPv4 but not TCP: passed to the kernel;
//! - truncated or inconsistent Ethernet/IPv4/TCP headers: dropped as malformed (the kernel
//!   would drop them too);
//! - TCP with IPv4 options or fragmented: dropped if addressed to one of our addresses
//!   (ports are unknown or the headers would move), otherwise passed.

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
pub struct Tcp {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
    pub tcp: *mut TcpHdr,
}

pub enum Frame {
    Arp {
        eth: *mut EthHdr,
        arp: *mut ArpHdr,
    },
    Tcp(Tcp),
    /// TCP we cannot handle; dropped under `counter` if `dst` is ours, else passed.
    Unsupported {
        dst: [u8; 4],
        counter: u32,
    },
}

const IP_OFFSET: usize = EthHdr::LEN;
const TCP_OFFSET: usize = EthHdr::LEN + Ipv4Hdr::LEN;
/// More-fragments flag and fragment offset, in the raw big-endian `frags` field.
const FRAGMENT_MASK: u16 = 0x3fff;

/// A pointer to a `T` at `offset`, if the frame is long enough to hold it.
#[inline(always)]
fn at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Outcome> {
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
        return Err(Outcome::pass());
    }
    let ip: *mut Ipv4Hdr = at(ctx, IP_OFFSET)?;
    // SAFETY: as above.
    let ip_ref = unsafe { &*ip };
    if ip_ref.proto != IpProto::Tcp as u8 {
        return Err(Outcome::pass());
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
    Ok(Frame::Tcp(Tcp { eth, ip, tcp }))
}

#[inline(always)]
fn unsupported(ip: &Ipv4Hdr, counter: u32) -> Frame {
    Frame::Unsupported {
        dst: ip.dst_addr,
        counter,
    }
}
