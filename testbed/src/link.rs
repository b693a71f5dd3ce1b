//! The link layer seen from inside a namespace, through packet sockets: a link's MAC,
//! ARP requests and IPv6 neighbour solicitations with their answers, and TCP segments
//! captured off a link (both directions), for tests that must see what crossed the wire.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::Namespace;

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const ICMPV6: u8 = 58;
const NEIGHBOUR_SOLICITATION: u8 = 135;
const NEIGHBOUR_ADVERTISEMENT: u8 = 136;

/// The MAC address of `dev` in `ns`.
pub fn mac(ns: &Namespace, dev: &str) -> Result<[u8; 6]> {
    let out = ns.ip(&["-o", "link", "show", "dev", dev])?;
    let text = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .with_context(|| format!("{dev} in {} has no MAC: {out}", ns.name()))?;
    let mut mac = [0u8; 6];
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC {text:?}"))?;
    if bytes.len() != 6 {
        bail!("MAC {text:?}");
    }
    mac.copy_from_slice(&bytes);
    Ok(mac)
}

/// A packet socket on one link of a namespace.
struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    fn open(ns: &Namespace, dev: &str, protocol: u16) -> Result<Self> {
        let dev = std::ffi::CString::new(dev)?;
        ns.enter(|| -> std::io::Result<Self> {
            // SAFETY: plain socket calls on a descriptor we own; `dev` is a C string.
            unsafe {
                let fd = libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                    i32::from(protocol.to_be()),
                );
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let fd = OwnedFd::from_raw_fd(fd);
                let index = libc::if_nametoindex(dev.as_ptr());
                if index == 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut at: libc::sockaddr_ll = std::mem::zeroed();
                at.sll_family = libc::AF_PACKET as u16;
                at.sll_protocol = protocol.to_be();
                at.sll_ifindex = index as i32;
                if libc::bind(
                    fd.as_raw_fd(),
                    (&raw const at).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(Self { fd })
            }
        })?
        .with_context(|| format!("packet socket on {dev:?} in {}", ns.name()))
    }

    fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: a valid buffer; the socket is bound to its link.
        let sent =
            unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if sent < 0 {
            bail!("sending a frame: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The next frame, if one comes before `deadline`.
    fn receive(&self, deadline: Instant) -> Option<Vec<u8>> {
        let mut buffer = vec![0u8; 2048];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let mut poll = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let wait = left.as_millis().clamp(1, 1000) as i32;
            // SAFETY: one valid pollfd, bounded wait.
            if unsafe { libc::poll(&mut poll, 1, wait) } <= 0 {
                continue;
            }
            // SAFETY: a valid buffer of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            if n > 0 {
                buffer.truncate(n as usize);
                return Some(buffer);
            }
        }
    }
}

/// Asks on `dev` in `ns`, as `from`, who has `ip` (one ARP request, broadcast), and
/// waits up to `wait` for the answer: the MAC that answered, or none.
pub fn who_has(
    ns: &Namespace,
    dev: &str,
    from: Ipv4Addr,
    ip: Ipv4Addr,
    wait: Duration,
) -> Result<Option<[u8; 6]>> {
    let own = mac(ns, dev)?;
    let socket = PacketSocket::open(ns, dev, ETH_P_ARP)?;
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&own);
    frame.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet, IPv4, 6- and 4-byte addresses, a request.
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&own);
    frame.extend_from_slice(&from.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&ip.octets());
    socket.send(&frame)?;
    let deadline = Instant::now() + wait;
    while let Some(frame) = socket.receive(deadline) {
        // A reply from `ip`, to us (an announcement is addressed to its sender).
        if frame.len() >= 42
            && frame[12..14] == ETH_P_ARP.to_be_bytes()
            && frame[20..22] == [0, 2]
            && frame[28..32] == ip.octets()
            && frame[32..38] == own
            && frame[38..42] == from.octets()
        {
            let mut answer = [0u8; 6];
            answer.copy_from_slice(&frame[22..28]);
            return Ok(Some(answer));
        }
    }
    Ok(None)
}

/// Asks on `dev` in `ns`, as `from`, who has `ip` (one IPv6 neighbour solicitation to
/// its solicited-node multicast address, with our MAC as source link-layer address), and
/// waits up to `wait` for the advertisement: the MAC it gives (its target link-layer
/// address option, else the frame's source), or none.
pub fn solicit(
    ns: &Namespace,
    dev: &str,
    from: Ipv6Addr,
    ip: Ipv6Addr,
    wait: Duration,
) -> Result<Option<[u8; 6]>> {
    let own = mac(ns, dev)?;
    let socket = PacketSocket::open(ns, dev, ETH_P_IPV6)?;
    let target = ip.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(target[13]),
        u16::from_be_bytes([target[14], target[15]]),
    );
    // Type, code, checksum, reserved; the target; the source link-layer address option.
    let mut message = vec![NEIGHBOUR_SOLICITATION, 0, 0, 0, 0, 0, 0, 0];
    message.extend_from_slice(&target);
    message.extend_from_slice(&[1, 1]);
    message.extend_from_slice(&own);
    let sum = icmpv6_checksum(from, group, &message);
    message[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut frame = Vec::with_capacity(14 + 40 + message.len());
    frame.extend_from_slice(&[0x33, 0x33, 0xff, target[13], target[14], target[15]]);
    frame.extend_from_slice(&own);
    frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&(message.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[ICMPV6, 255]);
    frame.extend_from_slice(&from.octets());
    frame.extend_from_slice(&group.octets());
    frame.extend_from_slice(&message);
    socket.send(&frame)?;
    let deadline = Instant::now() + wait;
    while let Some(frame) = socket.receive(deadline) {
        // An advertisement of `ip`, to us.
        if frame.len() < 14 + 40 + 24
            || frame[12..14] != ETH_P_IPV6.to_be_bytes()
            || frame[0..6] != own
            || frame[14 + 6] != ICMPV6
            || frame[54] != NEIGHBOUR_ADVERTISEMENT
            || frame[62..78] != target
        {
            continue;
        }
        let mut answer = [0u8; 6];
        let option = &frame[78..];
        if option.len() >= 8 && option[0..2] == [2, 1] {
            answer.copy_from_slice(&option[2..8]);
        } else {
            answer.copy_from_slice(&frame[6..12]);
        }
        return Ok(Some(answer));
    }
    Ok(None)
}

/// The ICMPv6 checksum of `message` (its checksum field zero) from `src` to `dst`.
fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + message.len() + 1);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(message.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, ICMPV6]);
    pseudo.extend_from_slice(message);
    if pseudo.len() % 2 == 1 {
        pseudo.push(0);
    }
    let mut sum: u32 = pseudo
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP segment seen on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub from: SocketAddrV4,
    pub to: SocketAddrV4,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// Sequence space it takes: payload bytes, plus one for a SYN or FIN.
    pub length: u32,
}

impl Seen {
    /// The sequence number its sender sends next.
    pub fn next_seq(&self) -> u32 {
        self.seq.wrapping_add(self.length)
    }
}

/// TCP segments crossing a link of a namespace, both ways, from when it was opened.
pub struct Capture {
    socket: PacketSocket,
}

impl Capture {
    pub fn open(ns: &Namespace, dev: &str) -> Result<Self> {
        Ok(Self {
            socket: PacketSocket::open(ns, dev, ETH_P_ALL)?,
        })
    }

    /// Hands each segment captured to `done` until it returns true (true), or `wait`
    /// passes (false).
    pub fn until(&self, wait: Duration, mut done: impl FnMut(&Seen) -> bool) -> bool {
        let deadline = Instant::now() + wait;
        while let Some(frame) = self.socket.receive(deadline) {
            if let Some(seen) = parse_tcp(&frame)
                && done(&seen)
            {
                return true;
            }
        }
        false
    }
}

fn parse_tcp(frame: &[u8]) -> Option<Seen> {
    if frame.len() < 14 + 20 + 20 || frame[12..14] != ETH_P_IP.to_be_bytes() {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ip[9] != 6 || ihl < 20 || ip.len() < ihl + 20 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let tcp = &ip[ihl..];
    let offset = usize::from(tcp[12] >> 4) * 4;
    let word = |at: usize| u32::from_be_bytes([tcp[at], tcp[at + 1], tcp[at + 2], tcp[at + 3]]);
    let port = |at: usize| u16::from_be_bytes([tcp[at], tcp[at + 1]]);
    let flags = tcp[13];
    let payload = total.checked_sub(ihl + offset)? as u32;
    let address = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
    Some(Seen {
        from: SocketAddrV4::new(address(12), port(0)),
        to: SocketAddrV4::new(address(16), port(2)),
        seq: word(4),
        ack: word(8),
        flags,
        length: payload + u32::from(flags & 0x03 != 0),
    })
}
