//! Crafted TCP segments sent from inside a namespace through a raw socket: what no real
//! stack would send (SYNs from spoofed sources that never finish their handshake, RSTs
//! with guessed numbers), for the tests of the data path's abuse resistance. Sending is
//! always bounded, in frames and in time, and paced.

use std::{
    net::SocketAddrV4,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::Namespace;

/// TCP flag bits.
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// One TCP segment without payload, IPv4 header included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub from: SocketAddrV4,
    pub to: SocketAddrV4,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
}

impl Segment {
    /// A SYN that opens a connection (with an MSS option, like a real one).
    pub fn syn(from: SocketAddrV4, to: SocketAddrV4, seq: u32) -> Self {
        Self {
            from,
            to,
            seq,
            ack: 0,
            flags: SYN,
            window: 64240,
        }
    }

    /// A RST at sequence number `seq`.
    pub fn rst(from: SocketAddrV4, to: SocketAddrV4, seq: u32) -> Self {
        Self {
            from,
            to,
            seq,
            ack: 0,
            flags: RST,
            window: 0,
        }
    }

    /// The whole IPv4 packet, both checksums right.
    pub fn bytes(&self) -> Vec<u8> {
        let options: &[u8] = if self.flags & SYN != 0 {
            &[2, 4, 0x05, 0xb4] // MSS 1460
        } else {
            &[]
        };
        let tcp_len = 20 + options.len();
        let total = 20 + tcp_len;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40; // don't fragment
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&self.from.ip().octets());
        p[16..20].copy_from_slice(&self.to.ip().octets());
        let sum = checksum(0, &p[..20]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&self.from.port().to_be_bytes());
        t[2..4].copy_from_slice(&self.to.port().to_be_bytes());
        t[4..8].copy_from_slice(&self.seq.to_be_bytes());
        t[8..12].copy_from_slice(&self.ack.to_be_bytes());
        t[12] = ((tcp_len / 4) as u8) << 4;
        t[13] = self.flags;
        t[14..16].copy_from_slice(&self.window.to_be_bytes());
        t[20..].copy_from_slice(options);
        // The pseudo-header: addresses, protocol, TCP length.
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&self.from.ip().octets());
        pseudo[4..8].copy_from_slice(&self.to.ip().octets());
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        let sum = checksum(sum32(0, &pseudo), t);
        t[16..18].copy_from_slice(&sum.to_be_bytes());
        p
    }
}

fn sum32(mut sum: u32, bytes: &[u8]) -> u32 {
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    sum
}

/// The Internet checksum of `bytes`, starting from a partial sum.
fn checksum(start: u32, bytes: &[u8]) -> u16 {
    let mut sum = sum32(start, bytes);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A raw IPv4 socket opened inside a namespace: what it sends leaves from there, with
/// whatever source address the segment says.
pub struct RawSocket {
    fd: OwnedFd,
}

impl RawSocket {
    pub fn open(ns: &Namespace) -> Result<Self> {
        let fd = ns
            .enter(|| {
                // SAFETY: a plain socket call; IPPROTO_RAW implies IP_HDRINCL.
                let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: a new descriptor that nothing else owns.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            })?
            .with_context(|| format!("raw socket in {}", ns.name()))?;
        Ok(Self { fd })
    }

    pub fn send(&self, segment: &Segment) -> std::io::Result<()> {
        let bytes = segment.bytes();
        // SAFETY: zeroed sockaddr_in is valid; the fields are set below.
        let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        to.sin_family = libc::AF_INET as libc::sa_family_t;
        to.sin_addr.s_addr = u32::from_ne_bytes(segment.to.ip().octets());
        // SAFETY: a valid buffer and address of the stated lengths.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// How much to send, and how fast: whichever bound comes first ends it.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Frames per second.
    pub rate: u64,
    /// At most this many frames (sent or failed).
    pub frames: u64,
    /// For at most this long.
    pub time: Duration,
}

/// What a paced run sent.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// Frames the kernel took.
    pub frames: u64,
    /// Frames it refused (a full queue).
    pub failed: u64,
    /// When the first and the last frame the kernel took were sent.
    pub first: Option<Instant>,
    pub last: Option<Instant>,
}

impl Sent {
    /// From the first frame sent to the last.
    pub fn elapsed(&self) -> Duration {
        match (self.first, self.last) {
            (Some(first), Some(last)) => last - first,
            _ => Duration::ZERO,
        }
    }
}

/// Sends `make(i)` for i = 0, 1, … at `pace.rate` per second (at most: a sender that
/// falls behind does not catch up) until a bound of `pace` is reached or `stop` is set. `i` counts every attempt, so that segments made from it
/// stay unique even when some are refused.
pub fn paced(
    socket: &RawSocket,
    pace: Pace,
    stop: &AtomicBool,
    mut make: impl FnMut(u64) -> Segment,
) -> Result<Sent> {
    if pace.rate == 0 {
        bail!("a pace of 0 frames per second");
    }
    let start = Instant::now();
    let mut sent = Sent {
        frames: 0,
        failed: 0,
        first: None,
        last: None,
    };
    let mut attempts = 0u64;
    while attempts < pace.frames && !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now - start >= pace.time {
            break;
        }
        // Frames due by now (the first at once); after a stall, no more than 10 ms
        // worth at once (a long burst could overrun the receiving veth's ring).
        let due = ((now - start).as_nanos() * u128::from(pace.rate) / 1_000_000_000) as u64 + 1;
        let due = due
            .min(attempts + (pace.rate / 100).max(1))
            .min(pace.frames);
        while attempts < due {
            match socket.send(&make(attempts)) {
                Ok(()) => {
                    let at = Instant::now();
                    sent.frames += 1;
                    sent.first.get_or_insert(at);
                    sent.last = Some(at);
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => sent.failed += 1,
                Err(e) => return Err(e).context("sending a crafted segment"),
            }
            attempts += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(sent)
}
