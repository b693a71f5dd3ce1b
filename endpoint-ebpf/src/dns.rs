//! DNS: each consumer network's resolver address answers queries for its endpoints'
//! names, here, per network — the consumer interfaces have no addresses, and networks
//! overlap, so no server in user space could tell two askers apart; the ingress
//! interface does. Authoritative, UDP over IPv4 or IPv6, every answer within 512 bytes:
//!
//! - the question is echoed byte for byte (DNS 0x20 case kept), names are matched
//!   case-insensitively by their hash ([`endpoint_common::dns`]);
//! - A and AAAA records, the client's zone first (ANY: the A records, or the AAAA
//!   records of a name with none); SOA and NS at a zone apex; NODATA and NXDOMAIN
//!   with the zone's SOA (negative caching); REFUSED for names that are not ours (or
//!   not this network's), another class or a zone transfer; NOTIMP for other opcodes;
//!   FORMERR for a malformed question (compression pointers included: a question has
//!   nothing earlier to point to); EDNS(0) answered with our payload size (BADVERS for
//!   a version above 0);
//! - a message shorter than a header, or a response, is dropped (counted).
//!
//! A program of its own (`dns`), which the attached one hands queries to by tail call:
//! the verifier checks each program within its own budget of a million instructions,
//! and the name scans take much of one.
//!
//! The query is read into the per-CPU `SEGMENT` and the answer built over it. The scans
//! keep their results in that memory, indexed by position, so that the verifier sees
//! each loop's paths converge.
//!
//! An A or AAAA answer makes no BPF-to-BPF call: a return costs ~10 ns where the kernel
//! mitigates return-stack attacks (SRSO "Safe RET" here), and inlining `answer`,
//! `scan_name` and `send` took ~25 ns off an answer (Layer A). The rarer answers
//! (`respond`, `find_apex`) stay functions of their own, which keeps the verifier's walk
//! short.

use aya_ebpf::{
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use endpoint_common::{
    checksum::{Delta, Sum, WideSum},
    counter,
    dns::{self, EDNS_PAYLOAD, MAX_APEX_LABELS, MAX_NAME, rcode, rtype},
    maps::{
        Addr, DNS_ROOM, DnsSettings, FAMILY_IPV6, Interface, MAX_NAME_ADDRESSES, NAME_WITHOUT_AAAA,
        Name, NameKey, PROTO_UDP, address_kind, dns_counter, name_flag, program,
    },
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};

use crate::{
    classify, forward, icmpv6,
    maps::{DNS, DNS_STATS, NAMES, PROGRAMS, SEGMENT},
    mem,
    outcome::Outcome,
    parse::{self, Frame, L4_OFFSET, L4_OFFSET_V6, Packet},
    stats, verify,
};

const PORT: u16 = 53;
const HEADER: usize = 12;
/// Where the DNS message begins in the frame, over IPv4 and IPv6.
const MESSAGE_OFFSET: usize = L4_OFFSET + UdpHdr::LEN;
const MESSAGE_OFFSET_V6: usize = L4_OFFSET_V6 + UdpHdr::LEN;
/// Offsets a mask lets through in the message buffer (twice the room: an answer's last
/// record may begin anywhere in the first half).
const MASK: usize = 2 * DNS_ROOM - 1;

/// Header flag bits (third and fourth bytes).
const QR: u8 = 0x80;
const OPCODE: u8 = 0x78;
const AA: u8 = 0x04;
const RD: u8 = 0x01;

/// The ECN bits of the IPv4 TOS byte and the IPv6 traffic class.
const ECN: u8 = 0x03;

/// A zone transfer (AXFR, IXFR) is not served.
const AXFR: u16 = 252;
const IXFR: u16 = 251;

/// Room in `SEGMENT` for the query, its answer and what the scans find.
#[repr(C)]
struct Work {
    /// Where the checksum check left the UDP header (the message follows it there).
    udp: [u8; UdpHdr::LEN],
    message: [u8; 2 * DNS_ROOM],
    /// Per label of the question's name: the hash of the labels before it, and where it
    /// begins.
    prefix: [u64; LABELS],
    start: [u32; LABELS],
    /// What the name scan found.
    scan: Scan,
    /// Where the answer being built ends, and the answers in it.
    at: u32,
    answers: u32,
    /// Where the segment `copy` copies is in the frame, and its length.
    copy: [u32; 2],
}

/// Labels a name may have (127 in 255 bytes), a power of two for the mask.
const LABELS: usize = 128;

#[repr(C)]
#[derive(Clone, Copy)]
struct Scan {
    /// The name's hash and label count.
    hash: u64,
    labels: u32,
    /// Where the question ends (after its type and class); 0: malformed.
    end: u32,
    /// The owner of a negative answer's SOA: the position of the zone apex in the
    /// question (0: none).
    apex: u32,
    /// While scanning: where the next label begins.
    at: u32,
}

/// `SEGMENT` as the DNS program uses it: the work, and a copy of the name's record
/// (apart: the answer is built in one from the other).
#[repr(C)]
struct Room {
    work: Work,
    name: Name,
}

const _: () = assert!(size_of::<Room>() <= size_of::<endpoint_common::maps::Segment>());

/// The longest answer (every AAAA record of a name of 255 bytes, and our OPT record) fits
/// below DNS_ROOM, where `send` masks lengths.
const _: () = assert!(HEADER + MAX_NAME + 4 + MAX_NAME_ADDRESSES * 28 + 11 < DNS_ROOM);

/// A query to the consumer network's resolver address.
#[inline(always)]
pub fn for_resolver(interface: &Interface, packet: &Packet) -> bool {
    interface.consumer()
        && packet.proto() == PROTO_UDP
        && packet.dst_port_be() == PORT.to_be()
        && if packet.is_ipv6() {
            to_resolver_v6(interface.network, packet.ipv6())
        } else {
            interface.resolver != [0; 4] && packet.ipv4().dst_addr == interface.resolver
        }
}

/// Whether an IPv6 packet is sent to its network's resolver address: a lookup (the
/// interface holds only the IPv4 one), in a BPF function of its own so that the
/// caller's frame does not grow.
#[inline(never)]
fn to_resolver_v6(network: u32, ip: &Ipv6Hdr) -> bool {
    let Some(address) = classify::owned(network, FAMILY_IPV6, Addr::ipv6(ip.dst_addr)) else {
        return false;
    };
    // Read as a volatile: otherwise the compiler reads the kind for None too, from a
    // register it never set, which the verifier refuses.
    read(&address.kind) == address_kind::RESOLVER
}

/// Hands the packet, a query to the resolver address, to the `dns` program; returns
/// only if that is not there.
#[inline(always)]
pub fn hand_over(ctx: &XdpContext) -> Outcome {
    // SAFETY: a tail call; the program in the slot is the agent's `dns`.
    unsafe { PROGRAMS.tail_call(ctx, program::DNS) };
    Outcome::drop(counter::DROP_DNS)
}

/// The `dns` program: answers the query `hand_over` passed (the frame is read again:
/// nothing else crosses a tail call), counted as the journey counts.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let outcome = query(ctx);
    stats::count(ctx, &outcome);
    outcome.action()
}

#[inline(always)]
fn query(ctx: &XdpContext) -> Outcome {
    let interface = classify::interface(ctx)?;
    let Frame::Flow(packet) = parse::frame(ctx)? else {
        return Outcome::drop(counter::DROP_DNS);
    };
    if !for_resolver(&interface, &packet) {
        return Outcome::drop(counter::DROP_DNS);
    }
    answer(ctx, &interface, &packet)
}

/// Answers a query to the resolver address, in place, back out the interface it came in.
#[inline(always)]
fn answer(ctx: &XdpContext, interface: &Interface, packet: &Packet) -> Outcome {
    let Some(room) = SEGMENT.get_ptr_mut(0) else {
        return Outcome::drop(counter::DROP_DNS);
    };
    // SAFETY: per-CPU room, larger than `Room` (asserted above).
    let room = unsafe { &mut *room.cast::<Room>() };
    match build(ctx, interface, packet, room) {
        Ok((len, counted)) => send(
            ctx,
            interface,
            &mut room.work,
            len,
            counted,
            packet.is_ipv6(),
        ),
        Err(outcome) => outcome,
    }
}

/// How an answer is counted: the data path's counter and the network's.
const ANSWERED: [u32; 2] = [counter::DNS_ANSWER, dns_counter::ANSWER];
const NXDOMAIN: [u32; 2] = [counter::DNS_NXDOMAIN, dns_counter::NXDOMAIN];
const REFUSED: [u32; 2] = [counter::DNS_REFUSED, dns_counter::REFUSED];
const FORMERR: [u32; 2] = [counter::DNS_FORMERR, dns_counter::MALFORMED];

/// Builds the answer to the query in `SEGMENT`: its length, and how it is counted.
#[inline(always)]
fn build(
    ctx: &XdpContext,
    interface: &Interface,
    packet: &Packet,
    room: &mut Room,
) -> Result<(u32, [u32; 2]), Outcome> {
    verify::addressed_to(interface, packet, 0)?;
    verify::ip_checksum(packet, 0)?;
    // Not `source`: an answer goes back to the frame's sender alone, whatever address
    // it claims (and the lookup would cost every answer a hash lookup).
    if verify::martian(packet) {
        return Err(Outcome::drop(counter::DROP_MARTIAN));
    }
    let network = interface.network;
    let Room { work, name } = room;
    // A wrong checksum first, as for any segment: the message may not be what was sent.
    load(ctx, packet, work)?;
    let size = (packet.l4_len() as usize).wrapping_sub(UdpHdr::LEN);
    if !(HEADER..=u16::MAX as usize).contains(&size) {
        note(network, dns_counter::MALFORMED);
        return Err(Outcome::drop(counter::DROP_DNS));
    }
    let len = if size > DNS_ROOM { DNS_ROOM } else { size } as u32;
    let m = &mut work.message;
    if m[2] & QR != 0 {
        note(network, dns_counter::MALFORMED);
        return Err(Outcome::drop(counter::DROP_DNS));
    }
    let header_only = |m: &mut [u8; 2 * DNS_ROOM], code: u8| {
        // Header only: no question, no records.
        m[2] = (m[2] & (OPCODE | RD)) | QR;
        m[3] = code;
        m[4..12].copy_from_slice(&[0; 8]);
        HEADER as u32
    };
    if m[2] & OPCODE != 0 {
        let at = header_only(m, rcode::NOTIMP);
        return Ok((at, REFUSED));
    }
    let counts = [
        u16::from_be_bytes([m[4], m[5]]),
        u16::from_be_bytes([m[6], m[7]]),
        u16::from_be_bytes([m[8], m[9]]),
    ];
    scan_name(work, len);
    let scan = read(&work.scan);
    if counts != [1, 0, 0] || scan.end == 0 {
        let at = header_only(&mut work.message, rcode::FORMERR);
        return Ok((at, FORMERR));
    }
    let end = scan.end as usize & MASK;
    let m = &work.message;
    let qtype = u16::from_be_bytes([m[(end - 4) & MASK], m[(end - 3) & MASK]]);
    let qclass = u16::from_be_bytes([m[(end - 2) & MASK], m[(end - 1) & MASK]]);
    let edns = edns(m, end, len as usize, counts_additional(m));
    if let Some(1..) = edns {
        // An EDNS version we do not speak: BADVERS (extended code 1), nothing else.
        let m = &mut work.message;
        m[2] = (m[2] & (OPCODE | RD)) | QR;
        m[3] = rcode::NOERROR;
        m[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]);
        write(&mut work.at, end as u32);
        put_opt(work, 1);
        let len = read(&work.at);
        return Ok((len, FORMERR));
    }

    write(&mut work.at, end as u32);
    let key = NameKey {
        network,
        _pad: 0,
        hash: read(&work.scan).hash,
    };
    let aaaa = qtype == rtype::AAAA || qtype == rtype::ANY;
    let Some(found) = fetch(name, &key, aaaa) else {
        // Rewritten under every read: the client asks again.
        return Err(Outcome::drop(counter::DROP_DNS));
    };
    let question = (qtype as u32) << 16 | qclass as u32;
    // The common answer, a name's addresses, needs no other lookup and no call.
    let code = if found && addresses(work, name, interface.zone, question) {
        header(work, rcode::NOERROR, false);
        rcode::NOERROR
    } else {
        respond(work, network, found.then_some(&*name), question)
    };
    if edns.is_some() {
        work.message[11] = 1;
        put_opt(work, 0);
    }
    let len = read(&work.at);
    Ok(match code {
        rcode::NOERROR => (len, ANSWERED),
        rcode::NXDOMAIN => (len, NXDOMAIN),
        _ => (len, REFUSED),
    })
}

/// Copies the UDP segment into `work` (the message after its header), up to DNS_ROOM
/// bytes of message, and checks its checksum, if it has one: summed here as it is
/// copied, or by the kernel for a segment longer than that.
#[inline(always)]
fn load(ctx: &XdpContext, packet: &Packet, work: &mut Work) -> Result<(), Outcome> {
    const MOST: u32 = (UdpHdr::LEN + DNS_ROOM) as u32;
    let length = packet.l4_len();
    if length > MOST {
        verify::transport_checksum(ctx, packet, 0)?;
    }
    let length = if length > MOST { MOST } else { length };
    write(&mut work.copy, [packet.l4_offset() as u32, length]);
    // (Shorter than a UDP header: dropped there.)
    let Some(sum) = copy(ctx, work) else {
        return Err(Outcome::drop(counter::DROP_DNS));
    };
    if packet.l4_len() > MOST {
        return Ok(());
    }
    // IPv4 allows a datagram without a checksum (0), IPv6 does not (RFC 8200).
    if work.udp[6..8] == [0; 2] {
        return if packet.is_ipv6() {
            Err(Outcome::drop(counter::DROP_BAD_CHECKSUM))
        } else {
            Ok(())
        };
    }
    let pseudo = verify::pseudo_header(packet.src(), packet.dst(), PROTO_UDP, length);
    if sum.word(pseudo.partial() as u64).sum().finish() != 0 {
        return Err(Outcome::drop(counter::DROP_BAD_CHECKSUM));
    }
    Ok(())
}

/// Copies the segment `work.copy` describes — its length (at most UDP header +
/// DNS_ROOM) and where it is in the frame — to `work.udp` and the message, zeros after
/// it to the next word, a word at a time (cheaper here than a helper's call); returns
/// its sum, or None if it is shorter than a UDP header or not all in the frame.
///
/// The length and place are read from memory: what the verifier learns of them on
/// each way out of the loop then stays with these copies, which die here, rather than
/// keeping those paths apart to the end of the program.
#[inline(always)]
fn copy(ctx: &XdpContext, work: &mut Work) -> Option<WideSum> {
    const MOST: u32 = (UdpHdr::LEN + DNS_ROOM) as u32 / 8;
    let [offset, len] = read(&work.copy);
    let len = len & (2 * DNS_ROOM as u32 - 1);
    if len < UdpHdr::LEN as u32 {
        return None;
    }
    let to = (&raw mut work.udp).cast::<u8>();
    let (from, end) = (ctx.data() + (offset as usize & 63), ctx.data_end());
    let words = len / 8;
    let mut sum = WideSum::default();
    let mut i = 0;
    while i < words && i < MOST {
        let at = from + 8 * i as usize;
        if at + 8 > end {
            return None;
        }
        // SAFETY: 8 bytes of the frame (checked), into the room for the segment.
        let word = unsafe { mem::load_u64(at as *const u8) };
        unsafe { mem::store_u64(to.add(8 * i as usize), word) };
        sum = sum.word(word);
        i += 1;
    }
    // The bytes after the last whole word: the top ones of the 8 that end the segment.
    // (Masked: checked and loaded at the same place, not 8 bytes before it.)
    let last = from + ((len - 8) as usize & (2 * DNS_ROOM - 1));
    if last + 8 > end {
        return None;
    }
    let rest = len % 8;
    let word = if rest == 0 {
        0
    } else {
        // SAFETY: 8 bytes of the frame (checked).
        unsafe { mem::load_u64(last as *const u8) >> (8 * (8 - rest)) }
    };
    // SAFETY: the word after the last whole one, within the room.
    unsafe { mem::store_u64(to.add(8 * words as usize), word) };
    Some(sum.word(word))
}

/// Writes the answer to the question `work.scan` describes (type and class in
/// `question`; `name`, its record in `network`, if it has one) when it is not the
/// name's addresses, after the question, with its header but no OPT record; returns its
/// response code.
#[inline(never)]
fn respond(work: &mut Work, network: u32, name: Option<&Name>, question: u32) -> u8 {
    let (qtype, qclass) = ((question >> 16) as u16, question as u16);
    let Some(settings) = settings() else {
        return rcode::REFUSED;
    };
    let code = if qclass != rtype::CLASS_IN || qtype == AXFR || qtype == IXFR {
        rcode::REFUSED
    } else if name.is_some() {
        rcode::NOERROR
    } else {
        find_apex(work, network, 0);
        if read(&work.scan).apex != 0 {
            rcode::NXDOMAIN
        } else {
            rcode::REFUSED
        }
    };
    write(&mut work.answers, 0);
    if let Some(name) = name.filter(|_| code == rcode::NOERROR) {
        let apex = name.flags & name_flag::APEX != 0;
        if apex && qtype == rtype::SOA {
            record(work, HEADER as u32, &settings.soa, settings.soa_len);
            write(&mut work.answers, 1);
        } else if apex && qtype == rtype::NS {
            record(work, HEADER as u32, &settings.ns, settings.ns_len);
            write(&mut work.answers, 1);
        } else {
            // NODATA: the name is there, not this type.
            find_apex(work, network, name.apex_labels as u32);
        }
    }
    // Negative answers carry the zone's SOA (its minimum is the negative TTL).
    let apex = read(&work.scan).apex;
    let authority = read(&work.answers) == 0 && code != rcode::REFUSED && apex != 0;
    if authority {
        record(work, apex, &settings.soa, settings.soa_len);
    }
    header(work, code, authority);
    code
}

/// Writes the name's addresses the question asks for (A, AAAA or ANY in class IN);
/// whether there were any. The common answer: it needs no other lookup.
#[inline(always)]
fn addresses(work: &mut Work, name: &Name, zone: u8, question: u32) -> bool {
    let (qtype, qclass) = ((question >> 16) as u16, question as u16);
    if qclass != rtype::CLASS_IN {
        return false;
    }
    write(&mut work.answers, 0);
    if qtype == rtype::A || qtype == rtype::ANY {
        a_records(work, name, zone);
    }
    // ANY gets a subset (RFC 8482): the A records, or the AAAA records of a name with
    // none — both might not fit 512 bytes.
    if qtype == rtype::AAAA || (qtype == rtype::ANY && read(&work.answers) == 0) {
        aaaa_records(work, name, zone);
    }
    read(&work.answers) != 0
}

/// Makes the message the header of a response to the query with response code
/// `code`, the answers in `work.answers` and an SOA in the authority section or not;
/// authoritative unless refused.
#[inline(always)]
fn header(work: &mut Work, code: u8, authority: bool) {
    let [an_hi, an_lo] = (read(&work.answers) as u16).to_be_bytes();
    let m = &mut work.message;
    let authoritative = if code == rcode::REFUSED { 0 } else { AA };
    m[2] = (m[2] & (OPCODE | RD)) | QR | authoritative;
    m[3] = code;
    m[4..12].copy_from_slice(&[0, 1, an_hi, an_lo, 0, authority as u8, 0, 0]);
}

/// What every zone's answers share: SOA, NS and TTL.
#[inline(always)]
fn settings() -> Option<&'static DnsSettings> {
    // SAFETY: the value is replaced whole on update, never changed in place.
    unsafe { DNS.get(&0) }
}

/// The additional-record count of the query.
#[inline(always)]
fn counts_additional(m: &[u8; 2 * DNS_ROOM]) -> u16 {
    u16::from_be_bytes([m[10], m[11]])
}

/// Writes our OPT record where the message ends: the root, our payload size, extended
/// code `extended`, version 0.
#[inline(always)]
fn put_opt(work: &mut Work, extended: u8) {
    let [hi, lo] = EDNS_PAYLOAD.to_be_bytes();
    put_words(
        work,
        [u64::from_le_bytes([0, 0, 41, hi, lo, extended, 0, 0]), 0],
        11,
    );
}

/// Writes `bytes` where the message ends (`work.at`), and moves the end past them.
#[inline(always)]
fn put<const N: usize>(work: &mut Work, bytes: [u8; N]) {
    const { assert!(N <= DNS_ROOM) };
    let at = read(&work.at) as usize & (DNS_ROOM - 1);
    // SAFETY: `at` is masked below DNS_ROOM, and N bytes after it fit in twice that.
    unsafe {
        work.message
            .as_mut_ptr()
            .add(at)
            .cast::<[u8; N]>()
            .write_unaligned(bytes)
    };
    write(&mut work.at, (at + N) as u32);
}

/// Writes the first `len` bytes of `words` (little-endian) where the message ends, a
/// word a store, and moves the end past them (what lies past them is written over
/// next, or past the message).
#[inline(always)]
fn put_words<const W: usize>(work: &mut Work, words: [u64; W], len: u32) {
    const { assert!(8 * W <= DNS_ROOM) };
    let at = read(&work.at) as usize & (DNS_ROOM - 1);
    let to = work.message.as_mut_ptr();
    let mut i = 0;
    while i < W {
        // SAFETY: 8 * W bytes from below DNS_ROOM, within the buffer of twice that.
        unsafe { mem::store_u64(to.add(at + 8 * i), words[i]) };
        i += 1;
    }
    write(&mut work.at, at as u32 + len);
}

/// Reads `value` back from memory, so that the verifier forgets how each path got it.
#[inline(always)]
fn read<T: Copy>(value: &T) -> T {
    // SAFETY: a reference is valid for reads.
    unsafe { core::ptr::read_volatile(value) }
}

/// Writes `value` to memory, where `read` finds it.
#[inline(always)]
fn write<T: Copy>(at: &mut T, value: T) {
    // SAFETY: a reference is valid for writes.
    unsafe { core::ptr::write_volatile(at, value) }
}

/// Scans the question's name from byte 12: its hash, labels and where the question
/// ends (0 if it is malformed: truncated, longer than 255 bytes, a pointer or a reserved
/// label type). A label at a time, 8 of its bytes a step.
#[inline(always)]
fn scan_name(work: &mut Work, len: u32) {
    // Read back: the compiler, knowing the caller's bound on `len`, would drop the masks
    // the verifier needs.
    let len = read(&len);
    write(
        &mut work.scan,
        Scan {
            hash: 0,
            labels: 0,
            end: 0,
            apex: 0,
            at: HEADER as u32,
        },
    );
    // The name, its root's zero byte the last, has at most MAX_NAME bytes.
    let last = HEADER as u32 + MAX_NAME as u32 - 1;
    let message = work.message.as_ptr();
    let mut i = 0;
    // At most 127 labels, then the root.
    while i < LABELS {
        i += 1;
        // What one label leaves for the next is read back from memory: the verifier
        // sees the loop's head alike after labels of any length.
        let at = read(&work.scan.at);
        if at >= len {
            return;
        }
        let size = work.message[at as usize & MASK] as u32;
        if size == 0 {
            if at <= last && at + 5 <= len {
                // After the root: the question's type and class.
                work.scan.end = at + 5;
            }
            return;
        }
        let next = at + 1 + size;
        if size > 63 || next >= len || next > last {
            return;
        }
        let (labels, hash) = (read(&work.scan.labels), read(&work.scan.hash));
        let index = labels as usize & (LABELS - 1);
        work.prefix[index] = hash;
        work.start[index] = at;
        let mut label = dns::label_start(size as u8);
        let mut k = 0;
        while k < 8 && 8 * k < size {
            // SAFETY: 8 bytes from below DNS_ROOM, within the buffer (a label lies
            // below byte 268; the mask is for the verifier).
            let word =
                unsafe { mem::load_u64(message.add((at + 1 + 8 * k) as usize & (DNS_ROOM - 1))) };
            let left = size - 8 * k;
            // Only the label's own bytes.
            let word = if left < 8 {
                word & ((1 << (8 * left)) - 1)
            } else {
                word
            };
            label = dns::label_step(label, word);
            k += 1;
        }
        write(&mut work.scan.hash, dns::fold(hash, dns::label_end(label)));
        write(&mut work.scan.labels, labels + 1);
        write(&mut work.scan.at, next);
    }
}

/// Finds where the zone apex lies in the question's name: the suffix of `labels` labels,
/// or (0) the longest suffix of at most 15 labels that is a zone apex of the network.
/// Leaves its position (or 0) in `work.scan.apex`.
#[inline(never)]
fn find_apex(work: &mut Work, network: u32, labels: u32) {
    let scan = read(&work.scan);
    if labels != 0 {
        let known = labels <= scan.labels && labels <= MAX_APEX_LABELS as u32;
        work.scan.apex = if known {
            work.start[(scan.labels - labels) as usize & (LABELS - 1)]
        } else {
            0
        };
        return;
    }
    // From the longest suffix (not the whole name, which is no record of ours) down:
    // the first apex found is the one.
    let longest = scan.labels.saturating_sub(1).min(MAX_APEX_LABELS as u32);
    let mut power: u64 = 1;
    let mut i = 0;
    while i < longest && i < MAX_APEX_LABELS as u32 {
        power = power.wrapping_mul(dns::P);
        i += 1;
    }
    let mut apex = 0;
    let mut suffix = longest;
    while suffix >= 1 && suffix <= MAX_APEX_LABELS as u32 {
        let index = (scan.labels - suffix) as usize & (LABELS - 1);
        let key = NameKey {
            network,
            _pad: 0,
            hash: dns::suffix(scan.hash, work.prefix[index], power),
        };
        if let Some(name) = NAMES.get_ptr(&key)
            // SAFETY: a map value (see `checked`).
            && let Some(flags) = checked(name, &key, |name| unsafe { read(&(*name).flags) })
            && flags & name_flag::APEX != 0
        {
            apex = work.start[index];
            break;
        }
        power = power.wrapping_mul(dns::P_INVERSE);
        suffix -= 1;
    }
    work.scan.apex = apex;
}

/// Copies the record of the name `key` into `to` (its IPv6 addresses only if `aaaa`):
/// whether there is one, or None if it was given to other keys under each of a few
/// reads.
#[inline(always)]
fn fetch(to: &mut Name, key: &NameKey, aaaa: bool) -> Option<bool> {
    let words = if aaaa {
        size_of::<Name>()
    } else {
        NAME_WITHOUT_AAAA
    } / 8;
    let mut attempt = 0;
    while attempt < 3 {
        attempt += 1;
        let Some(name) = NAMES.get_ptr(key) else {
            return Some(false);
        };
        let copied = checked(name, key, |name| {
            let (from, to) = (name.cast::<u64>(), (&raw mut *to).cast::<u64>());
            let mut i = 0;
            while i < words && i < size_of::<Name>() / 8 {
                // SAFETY: words of the element's value and of the copy, both a `Name`.
                unsafe { to.add(i).write(from.add(i).read_volatile()) };
                i += 1;
            }
        });
        if copied.is_some() {
            return Some(true);
        }
    }
    None
}

/// Reads `what` of the element `name`, found under `key`, if the element's value was
/// `key`'s before and after: the kernel may give a replaced or deleted element to
/// another key at once, even while a program reads it. This catches that unless the
/// kernel's copy of the new value (a `memcpy`) makes its key visible after the rest, in
/// the instant of the read (x86-64 keeps these loads in order); two versions of one
/// name's own record may still mix.
#[inline(always)]
fn checked<T>(name: *const Name, key: &NameKey, what: impl FnOnce(*const Name) -> T) -> Option<T> {
    // SAFETY: a map value, valid while the program runs (its contents may change).
    let ours = || unsafe { read(&(*name).key) } == *key;
    if !ours() {
        return None;
    }
    let value = what(name);
    ours().then_some(value)
}

/// The query's EDNS version, if its one additional record is an OPT record for the root.
#[inline(always)]
fn edns(m: &[u8; 2 * DNS_ROOM], end: usize, len: usize, additional: u16) -> Option<u8> {
    if additional != 1 || end + 11 > len {
        return None;
    }
    let opt = &m[end & MASK..];
    if opt.len() < 11 || opt[0] != 0 || u16::from_be_bytes([opt[1], opt[2]]) != rtype::OPT {
        return None;
    }
    Some(opt[6])
}

/// Writes a record whose owner is the name at `owner` in the message (a compression
/// pointer) and whose rest is the first `len` bytes of `rest`.
#[inline(always)]
fn record<const N: usize>(work: &mut Work, owner: u32, rest: &[u8; N], len: u16) {
    const { assert!(N.is_multiple_of(8)) };
    put(work, (0xc000 | owner as u16).to_be_bytes());
    let at = read(&work.at) as usize & (DNS_ROOM - 1);
    // SAFETY: N bytes from `rest`, to below DNS_ROOM + N, within the buffer.
    unsafe { mem::copy_words(work.message.as_mut_ptr().add(at), rest.as_ptr(), N / 8) };
    write(&mut work.at, (at + (len as usize).min(N)) as u32);
}

/// Writes the name's A records, those in the client's `zone` first, counting them in
/// `work.answers`.
#[inline(always)]
fn a_records(work: &mut Work, name: &Name, zone: u8) {
    // Little-endian words of the record: owner (a pointer to the question's name),
    // type, class, TTL, length, address.
    let ttl = u32::from_le_bytes(name.ttl) as u64;
    let head = u64::from_le_bytes([0xc0, 0x0c, 0, 1, 0, 1, 0, 0]) | ttl << 48;
    let length = (ttl >> 16) | u64::from_le_bytes([0, 0, 0, 4, 0, 0, 0, 0]);
    in_zone_order(work, &name.zones, name.count, zone, 16, |i| {
        let address = u32::from_le_bytes(name.addrs[i]) as u64;
        [head, length | address << 32, 0, 0]
    });
}

/// Writes the name's AAAA records likewise.
#[inline(always)]
fn aaaa_records(work: &mut Work, name: &Name, zone: u8) {
    let ttl = u32::from_le_bytes(name.ttl) as u64;
    let head = u64::from_le_bytes([0xc0, 0x0c, 0, 28, 0, 1, 0, 0]) | ttl << 48;
    let length = (ttl >> 16) | u64::from_le_bytes([0, 0, 0, 16, 0, 0, 0, 0]);
    in_zone_order(work, &name.zones6, name.count6, zone, 28, |i| {
        let address = name.addrs6[i].as_ptr();
        // SAFETY: words within the 16 bytes of the address: 0..8, 4..12, 8..16.
        let [low, middle, high] = unsafe { [0, 4, 8].map(|at| mem::load_u64(address.add(at))) };
        [head, length | low << 32, middle, high >> 32]
    });
}

/// Writes the records (`len` bytes of the words `record` makes) of the first `count`
/// addresses, those whose zone (in `zones`) is the client's `zone` first, counting them
/// in `work.answers`.
#[inline(always)]
fn in_zone_order(
    work: &mut Work,
    zones: &[u8; MAX_NAME_ADDRESSES],
    count: u8,
    zone: u8,
    len: u32,
    record: impl Fn(usize) -> [u64; 4],
) {
    const { assert!(MAX_NAME_ADDRESSES == 8) };
    let all = (1u32 << (count as u32).min(8)) - 1;
    let local = dns::zone_mask(*zones, zone) as u32 & all;
    // Bit j: address j % 8 is written j-th — the local ones, then the others.
    let order = local | (all & !local) << MAX_NAME_ADDRESSES;
    let mut j = 0;
    while j < 2 * MAX_NAME_ADDRESSES && order >> j != 0 {
        if order & 1 << j != 0 {
            put_words(work, record(j % MAX_NAME_ADDRESSES), len);
            let answers = read(&work.answers);
            write(&mut work.answers, answers + 1);
        }
        j += 1;
    }
}

/// Counts a query for `network` under `which` ([`dns_counter`]).
#[inline(always)]
fn note(network: u32, which: u32) {
    if let Some(count) = DNS_STATS.get_ptr_mut(network * dns_counter::COUNT + which) {
        // SAFETY: a per-CPU slot; nothing else on this CPU runs while we hold it.
        unsafe { (*count).packets += 1 };
    }
}

/// Writes the message's `len` bytes (HEADER..DNS_ROOM) where the frame holds it (at
/// `offset`, 42 or 62), a word at a time, the last word ending with the message
/// (overlapping the one before); their sum, the bytes after the last whole word summed
/// with the zeros after them.
#[inline(always)]
fn put_message(ctx: &XdpContext, offset: usize, message: *const u8, len: u32) -> Option<WideSum> {
    // Read once: the stores below might change them, for all the compiler knows.
    let (start, end) = (ctx.data() + offset, ctx.data_end());
    let put = |at: usize| {
        let to = start + at;
        if to + 8 > end {
            return None;
        }
        // SAFETY: 8 bytes of the message, and of the frame (checked).
        let word = unsafe { mem::load_u64(message.add(at)) };
        unsafe { mem::store_u64(to as *mut u8, word) };
        Some(word)
    };
    let words = len / 8;
    let mut sum = WideSum::default();
    let mut i = 0;
    while i < words && i < DNS_ROOM as u32 / 8 {
        sum = sum.word(put((8 * i as usize) & (DNS_ROOM - 1))?);
        i += 1;
    }
    put((len - 8) as usize & (DNS_ROOM - 1))?;
    // SAFETY: the word after the last whole one, within the buffer.
    let rest = unsafe { mem::load_u64(message.add((8 * words as usize) & (DNS_ROOM - 1))) };
    Some(sum.word(rest))
}

/// Makes the frame `grow` bytes longer at its head, its first `N` bytes (the headers)
/// moved there.
#[inline(always)]
fn grow_at_head<const N: usize>(ctx: &XdpContext, grow: i32) -> bool {
    const { assert!(N >= 8 && N <= 64) };
    // Masked after a read from memory, where the compiler cannot drop the mask the
    // verifier needs to bound the headers' new place.
    let grow = read(&(grow as u32)) as usize & (DNS_ROOM - 1);
    // SAFETY: resizing the frame; every pointer is derived again below.
    if grow == 0 || unsafe { bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) } != 0 {
        return false;
    }
    // The headers, now `grow` bytes into the frame, read whole before any is written
    // (the two places may overlap): whole words, and the last 8 bytes.
    let to = ctx.data();
    let from = to + grow;
    if to + N > ctx.data_end() || from + N > ctx.data_end() {
        return false;
    }
    let (to, from) = (to as *mut u8, from as *const u8);
    let at = |i: usize| if i < N / 8 { 8 * i } else { N - 8 };
    // SAFETY: N bytes at both places, checked to lie within the frame.
    unsafe {
        let words: [u64; 8] = core::array::from_fn(|i| {
            if i <= N / 8 {
                mem::load_u64(from.add(at(i)))
            } else {
                0
            }
        });
        for (i, word) in words.into_iter().enumerate().take(N / 8 + 1) {
            mem::store_u64(to.add(at(i)), word);
        }
    }
    true
}

/// Sends the answer built in `work` (`len` bytes, counted as `counted`) back to the
/// querier, from the resolver address: the frame resized, addresses and ports swapped,
/// lengths and checksums new. `v6`, the query's family, is known to the verifier on each
/// path, which then checks one family's headers on each.
#[inline(always)]
fn send(
    ctx: &XdpContext,
    interface: &Interface,
    work: &mut Work,
    len: u32,
    [sent, which]: [u32; 2],
    v6: bool,
) -> Outcome {
    let dropped = Outcome::drop(counter::DROP_DNS);
    let len = len & (DNS_ROOM as u32 - 1);
    if len < HEADER as u32 {
        return dropped;
    }
    let start = ctx.data();
    let offset = if v6 {
        MESSAGE_OFFSET_V6
    } else {
        MESSAGE_OFFSET
    };
    let frame = (ctx.data_end() - start) as i32;
    let grow = (offset as u32 + len) as i32 - frame;
    // Grown at the head first: every XDP frame has 256 bytes before it, while the room
    // after it depends on the driver (veth's page-pool copies end within a cache line of
    // the packet, and a failed try costs a helper call on every answer).
    let at_head = || {
        if v6 {
            grow_at_head::<MESSAGE_OFFSET_V6>(ctx, grow)
        } else {
            grow_at_head::<MESSAGE_OFFSET>(ctx, grow)
        }
    };
    // (Should the headers' move fail after the head grew, which a frame longer than them
    // rules out, the length check below drops the answer.)
    // SAFETY: resizing the frame; every pointer is derived again below.
    let resized =
        grow == 0 || (grow > 0 && at_head()) || unsafe { bpf_xdp_adjust_tail(ctx.ctx, grow) } == 0;
    let start = ctx.data();
    // The frame as long as the answer.
    if !resized || ctx.data_end() - start != offset + len as usize {
        return dropped;
    }
    let message = work.message.as_mut_ptr();
    // SAFETY: within the 1024-byte buffer (`len` < 512): the sum's padding.
    unsafe { mem::store_u64(message.add(len as usize), 0) };
    let Some(sum) = put_message(ctx, offset, message, len) else {
        return dropped;
    };
    let sum = sum.sum();
    let headers = if v6 {
        headers_v6(ctx, interface, len, sum)
    } else {
        headers_v4(ctx, interface, len, sum)
    };
    if !headers {
        return dropped;
    }
    note(interface.network, which);
    Outcome::new(forward::bounce(ctx, interface), sent, 0)
}

/// Turns the IPv4 query's headers into the answer's: Ethernet and IP addresses and UDP
/// ports swapped, lengths and checksums new (`sum`: the message's); whether they lie
/// within the frame.
#[inline(always)]
fn headers_v4(ctx: &XdpContext, interface: &Interface, len: u32, sum: Sum) -> bool {
    let start = ctx.data();
    if start + MESSAGE_OFFSET > ctx.data_end() {
        return false;
    }
    // SAFETY: the headers lie within the MESSAGE_OFFSET bytes checked above.
    unsafe {
        let eth = &mut *(start as *mut EthHdr);
        let ip = &mut *((start + EthHdr::LEN) as *mut Ipv4Hdr);
        let udp = (start + L4_OFFSET) as *mut [u16; 4];
        eth.dst_addr = eth.src_addr;
        eth.src_addr = interface.mac;
        // The header was verified: its checksum is updated, not summed again (swapping
        // the addresses leaves the sum as it is).
        core::mem::swap(&mut ip.src_addr, &mut ip.dst_addr);
        let total = (Ipv4Hdr::LEN as u16 + UdpHdr::LEN as u16 + len as u16).to_be_bytes();
        let ttl = [64, ip.proto];
        let df = [0x40, 0];
        // The query's ECN bits are not the answer's: the node does not do ECN.
        let tos = [ip.vihl, ip.tos & !ECN];
        ip.check = Delta::default()
            .word(
                u16::from_ne_bytes([ip.vihl, ip.tos]),
                u16::from_ne_bytes(tos),
            )
            .word(u16::from_ne_bytes(ip.tot_len), u16::from_ne_bytes(total))
            .word(
                u16::from_ne_bytes([ip.ttl, ip.proto]),
                u16::from_ne_bytes(ttl),
            )
            .word(u16::from_ne_bytes(ip.frags), u16::from_ne_bytes(df))
            .apply(u16::from_ne_bytes(ip.check))
            .to_ne_bytes();
        ip.tos = tos[1];
        ip.tot_len = total;
        ip.ttl = 64;
        ip.frags = df;
        let sum = sum
            .dword(u32::from_ne_bytes(ip.src_addr))
            .dword(u32::from_ne_bytes(ip.dst_addr));
        udp_header(udp, len, sum);
    }
    true
}

/// Turns the IPv6 query's headers into the answer's likewise (no IP checksum).
#[inline(always)]
fn headers_v6(ctx: &XdpContext, interface: &Interface, len: u32, sum: Sum) -> bool {
    let start = ctx.data();
    if start + MESSAGE_OFFSET_V6 > ctx.data_end() {
        return false;
    }
    // SAFETY: the headers lie within the MESSAGE_OFFSET_V6 bytes checked above.
    unsafe {
        let eth = &mut *(start as *mut EthHdr);
        let ip = &mut *((start + EthHdr::LEN) as *mut Ipv6Hdr);
        let udp = (start + L4_OFFSET_V6) as *mut [u16; 4];
        eth.dst_addr = eth.src_addr;
        eth.src_addr = interface.mac;
        icmpv6::swap_addresses(ip);
        // Nor are its ECN bits (the traffic class's last two).
        ip.vcf[1] &= !(ECN << 4);
        ip.payload_len = ((UdpHdr::LEN as u32 + len) as u16).to_be_bytes();
        ip.hop_limit = 64;
        let (src, dst) = (
            ip.src_addr.as_ptr().cast::<[u8; 4]>(),
            ip.dst_addr.as_ptr().cast::<[u8; 4]>(),
        );
        let mut sum = sum;
        let mut i = 0;
        while i < 4 {
            sum = sum
                .dword(u32::from_ne_bytes(*src.add(i)))
                .dword(u32::from_ne_bytes(*dst.add(i)));
            i += 1;
        }
        udp_header(udp, len, sum);
    }
    true
}

/// Writes the answer's UDP header over the query's at `udp`: ports swapped, the length
/// of a `len`-byte message, the checksum of `sum` (the message's and the addresses')
/// and the rest of the pseudo-header.
///
/// # Safety
/// `udp` points to the 8-byte UDP header, within the frame.
#[inline(always)]
unsafe fn udp_header(udp: *mut [u16; 4], len: u32, sum: Sum) {
    // SAFETY: the caller's header.
    let [asker_port, resolver_port, _, _] = unsafe { *udp };
    let length = ((UdpHdr::LEN as u32 + len) as u16).to_be();
    let mut check = sum
        .word(u16::from_ne_bytes([0, PROTO_UDP]))
        .word(length)
        .word(resolver_port)
        .word(asker_port)
        .word(length)
        .finish();
    // A computed 0 is sent as all ones (0 means "no checksum").
    if check == 0 {
        check = 0xffff;
    }
    // SAFETY: as above.
    unsafe { *udp = [resolver_port, asker_port, length, check] };
}
