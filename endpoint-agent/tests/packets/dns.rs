//! DNS: each consumer network's resolver address answers its endpoints' names in place —
//! regional names with every address (the asker's zone first), zonal names, private DNS
//! names per network; SOA and NS at a zone apex, NODATA and NXDOMAIN with the zone's SOA;
//! REFUSED, NOTIMP, FORMERR and EDNS(0); short messages and responses dropped. Expected
//! answers are built here byte by byte (the DNS message with an encoder of its own, the
//! IPv4 and UDP checksums from scratch) and compared with the whole frame.

use endpoint_common::{
    counter::{self, Count},
    dns,
    maps::{DnsSettings, Name, NameKey, dns_counter, name},
};

use crate::rig::*;

/// Each consumer network's resolver address.
const RESOLVER: [u8; 4] = [10, 0, 0, 2];
const DOMAIN: &str = "endpoints.internal";
const TTL: u32 = 30;
/// The client's port, and the IPv4 identification its queries carry (the answer keeps it).
const CLIENT_PORT: u16 = 40053;
const IDENTIFICATION: u16 = 0x5a5a;

/// The `api` endpoints' addresses in zones z1, z2, z3: `api-a` in vpc-a, `api-b` in
/// vpc-b (the networks overlap: the addresses differ only so that answers tell them
/// apart).
const API_A: [[u8; 4]; 3] = [[10, 0, 0, 110], [10, 0, 0, 111], [10, 0, 0, 112]];
const API_B: [[u8; 4]; 3] = [[10, 0, 0, 120], [10, 0, 0, 121], [10, 0, 0, 122]];
/// `billing-a` (vpc-a, private DNS) and `billing-b` (vpc-b, none).
const BILLING_A: [u8; 4] = [10, 0, 0, 113];

/// The rig's interfaces with client zones (cons-a in z2, cons-b in z3).
const CONS_A: &str = "{ name: cons-a, role: consumer, consumer_network: vpc-a }";
const CONS_A_Z2: &str = "{ name: cons-a, role: consumer, consumer_network: vpc-a, zone: z2 }";
const CONS_B: &str = "{ name: cons-b, role: consumer, consumer_network: vpc-b }";
const CONS_B_Z3: &str = "{ name: cons-b, role: consumer, consumer_network: vpc-b, zone: z3 }";

const SERVICES: &str = "
  - name: api
    acceptance_required: false
    allowed_principals: ['*']
    private_dns_name: api.corp.example
    load_balancers:
      - name: nlb
        zone: z1
        listeners: [{ port: 443, targets: [{ ip: 172.16.0.10, port: 8443 }] }]
  - name: billing
    acceptance_required: false
    allowed_principals: ['*']
    private_dns_name: billing.corp.example
    load_balancers:
      - name: nlb
        zone: z1
        listeners: [{ port: 443, targets: [{ ip: 172.16.0.11, port: 8443 }] }]";

const ENDPOINTS: &str = "
  - id: api-a
    service: api
    principal: p
    consumer_network: vpc-a
    private_dns: true
    addresses:
      - { zone: z1, ip: 10.0.0.110 }
      - { zone: z2, ip: 10.0.0.111 }
      - { zone: z3, ip: 10.0.0.112 }
  - id: api-b
    service: api
    principal: p
    consumer_network: vpc-b
    private_dns: true
    addresses:
      - { zone: z1, ip: 10.0.0.120 }
      - { zone: z2, ip: 10.0.0.121 }
      - { zone: z3, ip: 10.0.0.122 }
  - { id: billing-a, service: billing, principal: p, consumer_network: vpc-a, ip: 10.0.0.113, zone: z1, private_dns: true }
  - { id: billing-b, service: billing, principal: p, consumer_network: vpc-b, ip: 10.0.0.123, zone: z1 }
dns:
  domain: endpoints.internal
  ttl_seconds: 30
  resolvers:
    - { consumer_network: vpc-a, ip: 10.0.0.2 }
    - { consumer_network: vpc-b, ip: 10.0.0.2 }
";

/// The rig's config with client zones, the `api` and `billing` services and endpoints,
/// and the resolver address 10.0.0.2 in both networks.
fn config() -> String {
    let config = CONFIG
        .replace(CONS_A, CONS_A_Z2)
        .replace(CONS_B, CONS_B_Z3)
        .replacen("services:", &format!("services:{SERVICES}"), 1);
    assert!(config.contains(CONS_A_Z2) && config.contains(CONS_B_Z3) && config.contains("api"));
    format!("{config}{ENDPOINTS}")
}

/// `text` with `from` replaced by `to`, which must be there.
fn changed(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from:?} is not once in the config"
    );
    text.replace(from, to)
}

// --- DNS messages, encoded here -----------------------------------------------------

/// Header flags (bytes 2 and 3 as one word).
const QR: u16 = 0x8000;
const AA: u16 = 0x0400;
const RD: u16 = 0x0100;
/// Opcode 4 (NOTIFY) in the flags word.
const NOTIFY: u16 = 4 << 11;

/// Response codes.
const FORMERR: u16 = 1;
const NXDOMAIN: u16 = 3;
const NOTIMP: u16 = 4;
const REFUSED: u16 = 5;

/// Record types and classes.
const A: u16 = 1;
const NS: u16 = 2;
const SOA: u16 = 6;
const AAAA: u16 = 28;
const OPT: u16 = 41;
const IXFR: u16 = 251;
const AXFR: u16 = 252;
const IN: u16 = 1;
const CH: u16 = 3;

/// A DNS header: `id`, `flags` (rcode included), QD/AN/NS/AR counts.
fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.extend(flags.to_be_bytes());
    for count in counts {
        out.extend(count.to_be_bytes());
    }
    out
}

/// A dotted name in wire format, its case kept ("" is the root).
fn wire(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend(label.as_bytes());
    }
    out.push(0);
    out
}

/// A question's name, type and class.
fn question(name: &str, qtype: u16, qclass: u16) -> Vec<u8> {
    [
        wire(name),
        qtype.to_be_bytes().to_vec(),
        qclass.to_be_bytes().to_vec(),
    ]
    .concat()
}

/// A query with ID `id`, `flags`, and one question.
fn query(id: u16, flags: u16, question: &[u8]) -> Vec<u8> {
    [header(id, flags, [1, 0, 0, 0]), question.to_vec()].concat()
}

/// An A record owned by the question's name (a pointer to offset 12).
fn a(ip: [u8; 4]) -> Vec<u8> {
    let mut out = vec![0xc0, 0x0c, 0, 1, 0, 1];
    out.extend(TTL.to_be_bytes());
    out.extend([0, 4]);
    out.extend(ip);
    out
}

/// A record owned by the name at `owner` in the message (a compression pointer).
fn record(owner: usize, rtype: u16, data: &[u8]) -> Vec<u8> {
    let mut out = (0xc000 | owner as u16).to_be_bytes().to_vec();
    out.extend(rtype.to_be_bytes());
    out.extend(IN.to_be_bytes());
    out.extend(TTL.to_be_bytes());
    out.extend((data.len() as u16).to_be_bytes());
    out.extend(data);
    out
}

/// Every zone's SOA: `ns.<domain>`, `hostmaster.<domain>`, `serial`, refresh 3600,
/// retry 600, expire 86400, minimum (the negative TTL) the TTL.
fn soa(owner: usize, serial: u32) -> Vec<u8> {
    let mut data = wire(&format!("ns.{DOMAIN}"));
    data.extend(wire(&format!("hostmaster.{DOMAIN}")));
    for value in [serial, 3600, 600, 86400, TTL] {
        data.extend(value.to_be_bytes());
    }
    record(owner, SOA, &data)
}

/// An OPT record for the root: UDP payload size, extended rcode, version, flags and
/// options.
fn opt(payload: u16, extended: u8, version: u8, flags: u16, options: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend(OPT.to_be_bytes());
    out.extend(payload.to_be_bytes());
    out.extend([extended, version]);
    out.extend(flags.to_be_bytes());
    out.extend((options.len() as u16).to_be_bytes());
    out.extend(options);
    out
}

/// Our OPT record: payload 1232, version 0, no flags, no options.
fn our_opt(extended: u8) -> Vec<u8> {
    opt(1232, extended, 0, 0, &[])
}

/// Where the suffix `suffix` of the dotted `name` begins in a message whose question
/// holds `name` (at offset 12).
fn offset_of(name: &str, suffix: &str) -> usize {
    let name = name.to_ascii_lowercase();
    let at = name.len() - suffix.len();
    assert!(name.ends_with(suffix) && (at == 0 || name.as_bytes()[at - 1] == b'.'));
    12 + at
}

// --- Frames ----------------------------------------------------------------------

/// The RFC 1071 checksum of `bytes`.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The client's datagram to the resolver's port 53 on `interface`.
fn to_resolver(rig: &Rig, interface: &str) -> Datagram {
    datagram_to(rig.link(interface).mac, RESOLVER, CLIENT_PORT)
}

/// `datagram`'s frame with `message`, its IPv4 identification [`IDENTIFICATION`].
fn frame(datagram: &Datagram, message: &[u8]) -> Vec<u8> {
    let mut frame = datagram.frame(message);
    frame[14 + 4..14 + 6].copy_from_slice(&IDENTIFICATION.to_be_bytes());
    with_ip_checksum(frame)
}

/// The frame that answers `query` with `message`, sent back out the interface whose MAC
/// is `mac`: from the address and port asked, TTL 64, DF, the query's identification.
fn answer_frame(query: &Datagram, mac: [u8; 6], message: &[u8]) -> Vec<u8> {
    let udp_len = (8 + message.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend((20 + udp_len).to_be_bytes());
    ip.extend(IDENTIFICATION.to_be_bytes());
    ip.extend([0x40, 0, 64, 17, 0, 0]);
    ip.extend(query.dst);
    ip.extend(query.src);
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());

    let mut udp = query.dport.to_be_bytes().to_vec();
    udp.extend(query.sport.to_be_bytes());
    udp.extend(udp_len.to_be_bytes());
    udp.extend([0, 0]);
    udp.extend(message);
    let mut pseudo = query.dst.to_vec();
    pseudo.extend(query.src);
    pseudo.extend([0, 17]);
    pseudo.extend(udp_len.to_be_bytes());
    pseudo.extend(&udp);
    // A computed 0 is sent as all ones (RFC 768).
    let sum = match checksum(&pseudo) {
        0 => 0xffff,
        sum => sum,
    };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());

    let mut frame = query.mac_src.to_vec();
    frame.extend(mac);
    frame.extend([0x08, 0x00]);
    frame.extend(ip);
    frame.extend(udp);
    frame
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Asserts that `message`, sent to the resolver on `interface`, is answered with
/// `expected` in a frame exactly as built here.
fn assert_answer(rig: &mut Rig, interface: &str, message: &[u8], expected: &[u8]) {
    let datagram = to_resolver(rig, interface);
    let out = rig.run(interface, &frame(&datagram, message));
    assert_eq!(
        out.action,
        XDP_REDIRECT,
        "{interface}: no answer to {}: {:?}",
        hex(message),
        rig.counted()
    );
    assert_eq!(
        hex(out.frame.get(42..).unwrap_or_default()),
        hex(expected),
        "{interface}: the answer to {}",
        hex(message)
    );
    let mac = rig.link(interface).mac;
    assert_eq!(
        hex(&out.frame),
        hex(&answer_frame(&datagram, mac, expected)),
        "{interface}: the answer's frame"
    );
}

/// Asserts that `message`, sent to the resolver on `interface`, is dropped.
fn assert_dropped(rig: &mut Rig, interface: &str, message: &[u8]) {
    let datagram = to_resolver(rig, interface);
    let out = rig.run(interface, &frame(&datagram, message));
    assert_eq!(out.action, XDP_DROP, "{interface}: {}", hex(message));
}

/// The serial of the zones' SOA, as the agent wrote it for the program (it changes with
/// the records; every other byte of the SOA is encoded here).
fn serial(rig: &Rig) -> u32 {
    let settings: DnsSettings = rig
        .pipeline
        .maps()
        .hash::<u32, DnsSettings>(name::DNS)
        .unwrap()
        .get(&0, 0)
        .expect("DNS settings");
    let at = 10 + wire(&format!("ns.{DOMAIN}")).len() + wire(&format!("hostmaster.{DOMAIN}")).len();
    u32::from_be_bytes(settings.soa[at..at + 4].try_into().unwrap())
}

/// The DNS counters of consumer network `network` (by name), summed over CPUs: answer,
/// nxdomain, refused, malformed.
fn dns_stats(rig: &Rig, network: &str) -> [u64; dns_counter::COUNT as usize] {
    let id = rig.pipeline.applied().ids.networks[network];
    let stats = rig
        .pipeline
        .maps()
        .per_cpu_array::<Count>(name::DNS_STATS)
        .unwrap();
    std::array::from_fn(|which| {
        stats
            .get(&(id * dns_counter::COUNT + which as u32), 0)
            .unwrap()
            .iter()
            .map(|count| count.packets)
            .sum()
    })
}

/// The program's global counters of DNS outcomes: dns_answer, dns_nxdomain,
/// dns_refused, dns_formerr, drop_dns.
fn dns_counted(rig: &Rig) -> [u64; 5] {
    let counters = rig.counters();
    [
        counter::DNS_ANSWER,
        counter::DNS_NXDOMAIN,
        counter::DNS_REFUSED,
        counter::DNS_FORMERR,
        counter::DROP_DNS,
    ]
    .map(|c| counters.packets(c))
}

// --- Tests -----------------------------------------------------------------------

#[test]
fn a_regional_name_answers_every_address_the_askers_zone_first_echoing_the_question() {
    with_rig_for(&config(), |rig| {
        // DNS 0x20: the question comes back as asked, its case kept.
        let name = "aPi-A.ApI.eNdPoInTs.InTeRnAl";
        let asked = question(name, A, IN);
        // cons-a's clients are in z2: z2's address first, then the others as listed.
        let expected = [
            header(0x1234, QR | AA | RD, [1, 3, 0, 0]),
            asked.clone(),
            a(API_A[1]),
            a(API_A[0]),
            a(API_A[2]),
        ]
        .concat();
        assert_answer(rig, "cons-a", &query(0x1234, RD, &asked), &expected);
        // RD is copied: a query without it gets an answer without it.
        let expected = [
            header(0xbeef, QR | AA, [1, 3, 0, 0]),
            asked.clone(),
            a(API_A[1]),
            a(API_A[0]),
            a(API_A[2]),
        ]
        .concat();
        assert_answer(rig, "cons-a", &query(0xbeef, 0, &asked), &expected);

        // cons-b's clients are in z3: its endpoint, with addresses in the same zones,
        // answers in another order.
        let asked = question("api-b.api.endpoints.internal", A, IN);
        let expected = [
            header(7, QR | AA | RD, [1, 3, 0, 0]),
            asked.clone(),
            a(API_B[2]),
            a(API_B[0]),
            a(API_B[1]),
        ]
        .concat();
        assert_answer(rig, "cons-b", &query(7, RD, &asked), &expected);
        assert_eq!(dns_counted(rig), [3, 0, 0, 0, 0], "{:?}", rig.counted());

        // The same name asked on cons-a once its clients are in z3; then with no zone:
        // the addresses as listed.
        let asked = question(name, A, IN);
        let mut expected = vec![header(8, QR | AA | RD, [1, 3, 0, 0]), asked.clone()];
        let in_z3 = changed(&config(), CONS_A_Z2, &CONS_A_Z2.replace("z2", "z3"));
        rig.reconfigure(&in_z3);
        let z3_first = [a(API_A[2]), a(API_A[0]), a(API_A[1])].concat();
        assert_answer(
            rig,
            "cons-a",
            &query(8, RD, &asked),
            &[expected.concat(), z3_first].concat(),
        );
        rig.reconfigure(&changed(&config(), CONS_A_Z2, CONS_A));
        expected.extend(API_A.map(a));
        assert_answer(rig, "cons-a", &query(8, RD, &asked), &expected.concat());
        assert_eq!(dns_counted(rig), [5, 0, 0, 0, 0], "{:?}", rig.counted());
    });
}

#[test]
fn a_zonal_name_answers_its_zones_address_only() {
    with_rig_for(&config(), |rig| {
        // From cons-a (z2), the z3 and z1 names still give just their own zone's address.
        for (name, ip) in [
            ("Api-A-Z3.api.endpoints.internal", API_A[2]),
            ("api-a-z1.api.endpoints.internal", API_A[0]),
        ] {
            let asked = question(name, A, IN);
            let expected = [
                header(0x77, QR | AA | RD, [1, 1, 0, 0]),
                asked.clone(),
                a(ip),
            ];
            assert_answer(rig, "cons-a", &query(0x77, RD, &asked), &expected.concat());
        }
        // A single-address endpoint's zonal name too.
        let asked = question("a-z1.orders.endpoints.internal", A, IN);
        let expected = [header(1, QR | AA, [1, 1, 0, 0]), asked.clone(), a(ENDPOINT)];
        assert_answer(rig, "cons-a", &query(1, 0, &asked), &expected.concat());
        assert_eq!(dns_counted(rig), [3, 0, 0, 0, 0], "{:?}", rig.counted());
    });
}

#[test]
fn a_private_dns_name_answers_each_networks_own_endpoint_and_is_refused_where_not_enabled() {
    with_rig_for(&config(), |rig| {
        // The same name in two overlapping networks: each its own endpoint's addresses,
        // its interface's zone first.
        let asked = question("API.corp.Example", A, IN);
        let expected = [
            header(10, QR | AA | RD, [1, 3, 0, 0]),
            asked.clone(),
            a(API_A[1]),
            a(API_A[0]),
            a(API_A[2]),
        ];
        assert_answer(rig, "cons-a", &query(10, RD, &asked), &expected.concat());
        let expected = [
            header(11, QR | AA | RD, [1, 3, 0, 0]),
            asked.clone(),
            a(API_B[2]),
            a(API_B[0]),
            a(API_B[1]),
        ];
        assert_answer(rig, "cons-b", &query(11, RD, &asked), &expected.concat());

        // billing's private name: vpc-a's endpoint enables it, vpc-b's does not. There it
        // is not ours, nor anything under it: REFUSED, not authoritative.
        let asked = question("billing.corp.example", A, IN);
        let expected = [
            header(12, QR | AA | RD, [1, 1, 0, 0]),
            asked.clone(),
            a(BILLING_A),
        ];
        assert_answer(rig, "cons-a", &query(12, RD, &asked), &expected.concat());
        for name in ["billing.corp.example", "www.billing.corp.example"] {
            let asked = question(name, A, IN);
            let expected = [header(13, QR | RD | REFUSED, [1, 0, 0, 0]), asked.clone()];
            assert_answer(rig, "cons-b", &query(13, RD, &asked), &expected.concat());
        }
        assert_eq!(dns_counted(rig), [3, 0, 2, 0, 0], "{:?}", rig.counted());
    });
}

/// An AAAA record owned by the question's name.
fn aaaa(ip: &str) -> Vec<u8> {
    let ip: std::net::Ipv6Addr = ip.parse().unwrap();
    record(12, AAAA, &ip.octets())
}

#[test]
fn aaaa_records_answer_an_endpoints_ipv6_addresses_the_askers_zone_first() {
    // api-a is dual-stack in z1 and z2 (its IPv6 addresses reach the IPv4 targets through
    // 6→4), not in z3; billing-a has an IPv6 address only.
    let config = changed(
        &config(),
        "      - { zone: z2, ip: 10.0.0.111 }\n",
        "      - { zone: z2, ip: 10.0.0.111 }\n      - { zone: z1, ip: 'fd00:a::110' }\n      - { zone: z2, ip: 'fd00:a::111' }\n",
    );
    let config = changed(
        &config,
        "consumer_network: vpc-a, ip: 10.0.0.113,",
        "consumer_network: vpc-a, ip: 'fd00:a::113',",
    );
    with_rig_for(&config, |rig| {
        let serial = serial(rig);
        // cons-a's clients are in z2: its IPv6 address first, in the regional and the
        // private name.
        for (id, name) in [
            (40, "Api-A.api.endpoints.internal"),
            (41, "api.corp.example"),
        ] {
            let asked = question(name, AAAA, IN);
            let expected = [
                header(id, QR | AA | RD, [1, 2, 0, 0]),
                asked.clone(),
                aaaa("fd00:a::111"),
                aaaa("fd00:a::110"),
            ];
            assert_answer(rig, "cons-a", &query(id, RD, &asked), &expected.concat());
        }
        // The A records are as they were.
        let asked = question("api-a.api.endpoints.internal", A, IN);
        let a_records = [a(API_A[1]), a(API_A[0]), a(API_A[2])].concat();
        let expected = [
            header(42, QR | AA | RD, [1, 3, 0, 0]),
            asked.clone(),
            a_records.clone(),
        ];
        assert_answer(rig, "cons-a", &query(42, RD, &asked), &expected.concat());
        // ANY: the A records only (a subset, as RFC 8482 allows).
        let asked = question("api-a.api.endpoints.internal", 255, IN);
        let expected = [header(43, QR | AA, [1, 3, 0, 0]), asked.clone(), a_records];
        assert_answer(rig, "cons-a", &query(43, 0, &asked), &expected.concat());
        // A zonal name: its zone's address of the family asked; z3 has no IPv6 address
        // (NODATA, with the SOA).
        let asked = question("api-a-z1.api.endpoints.internal", AAAA, IN);
        let expected = [
            header(44, QR | AA, [1, 1, 0, 0]),
            asked.clone(),
            aaaa("fd00:a::110"),
        ];
        assert_answer(rig, "cons-a", &query(44, 0, &asked), &expected.concat());
        let name = "api-a-z3.api.endpoints.internal";
        let asked = question(name, AAAA, IN);
        let expected = [
            header(45, QR | AA, [1, 0, 1, 0]),
            asked.clone(),
            soa(offset_of(name, DOMAIN), serial),
        ];
        assert_answer(rig, "cons-a", &query(45, 0, &asked), &expected.concat());
        // An IPv6-only endpoint: AAAA; A is NODATA; ANY gives the AAAA record.
        let name = "billing-a.billing.endpoints.internal";
        for (id, qtype) in [(46, AAAA), (47, 255)] {
            let asked = question(name, qtype, IN);
            let expected = [
                header(id, QR | AA, [1, 1, 0, 0]),
                asked.clone(),
                aaaa("fd00:a::113"),
            ];
            assert_answer(rig, "cons-a", &query(id, 0, &asked), &expected.concat());
        }
        let asked = question(name, A, IN);
        let expected = [
            header(48, QR | AA, [1, 0, 1, 0]),
            asked.clone(),
            soa(offset_of(name, DOMAIN), serial),
        ];
        assert_answer(rig, "cons-a", &query(48, 0, &asked), &expected.concat());
        // vpc-b's endpoint of api has no IPv6 address: NODATA there.
        let name = "api.corp.example";
        let asked = question(name, AAAA, IN);
        let expected = [
            header(49, QR | AA, [1, 0, 1, 0]),
            asked.clone(),
            soa(12, serial),
        ];
        assert_answer(rig, "cons-b", &query(49, 0, &asked), &expected.concat());
        assert_eq!(dns_counted(rig), [10, 0, 0, 0, 0], "{:?}", rig.counted());
    });
}

/// The kernel may give a replaced or deleted `NAMES` element to another key while the
/// program reads it. Here vpc-a's element for the name holds vpc-b's record, as it would
/// once given to vpc-b's: the program never answers from it.
#[test]
fn a_record_given_to_another_networks_name_meanwhile_is_never_answered() {
    with_rig_for(&config(), |rig| {
        let ids = &rig.pipeline.applied().ids.networks;
        let hash = dns::hash("api.corp.example").0;
        let [in_a, in_b] = [ids["vpc-a"], ids["vpc-b"]].map(|network| NameKey {
            network,
            _pad: 0,
            hash,
        });
        let ours = {
            let mut names = rig
                .pipeline
                .maps_mut()
                .hash_mut::<NameKey, Name>(name::NAMES)
                .unwrap();
            let (ours, theirs) = (names.get(&in_a, 0).unwrap(), names.get(&in_b, 0).unwrap());
            names.insert(in_a, theirs, 0).unwrap();
            ours
        };
        let asked = question("api.corp.example", A, IN);
        assert_dropped(rig, "cons-a", &query(20, RD, &asked));
        assert_eq!(dns_counted(rig), [0, 0, 0, 0, 1], "{:?}", rig.counted());

        // Its own record again: answered.
        rig.pipeline
            .maps_mut()
            .hash_mut::<NameKey, Name>(name::NAMES)
            .unwrap()
            .insert(in_a, ours, 0)
            .unwrap();
        let expected = [
            header(21, QR | AA | RD, [1, 3, 0, 0]),
            asked.clone(),
            a(API_A[1]),
            a(API_A[0]),
            a(API_A[2]),
        ];
        assert_answer(rig, "cons-a", &query(21, RD, &asked), &expected.concat());
    });
}

#[test]
fn nodata_and_nxdomain_carry_the_zones_soa_owned_by_a_pointer_to_the_apex_in_the_question() {
    with_rig_for(&config(), |rig| {
        let serial = serial(rig);
        // NODATA: the name is there, not the type (the name itself, and the service's
        // name, which has no records of its own).
        for (name, qtype) in [
            ("Api-A.api.Endpoints.Internal", AAAA),
            ("api.endpoints.internal", A),
            ("api-a-z2.api.endpoints.internal", NS),
        ] {
            let asked = question(name, qtype, IN);
            let expected = [
                header(20, QR | AA | RD, [1, 0, 1, 0]),
                asked.clone(),
                soa(offset_of(name, DOMAIN), serial),
            ];
            assert_answer(rig, "cons-a", &query(20, RD, &asked), &expected.concat());
        }
        // NXDOMAIN: under the domain, and under a private name's own zone (its apex is
        // the owner), another network's endpoint among them.
        for (interface, name, apex) in [
            ("cons-a", "nope.api.endpoints.internal", DOMAIN),
            ("cons-a", "x.y.a.orders.Endpoints.internal", DOMAIN),
            ("cons-b", "api-a.api.endpoints.internal", DOMAIN),
            ("cons-a", "www.API.Corp.example", "api.corp.example"),
        ] {
            let asked = question(name, A, IN);
            let expected = [
                header(21, QR | AA | NXDOMAIN, [1, 0, 1, 0]),
                asked.clone(),
                soa(offset_of(name, apex), serial),
            ];
            assert_answer(rig, interface, &query(21, 0, &asked), &expected.concat());
        }
        assert_eq!(dns_counted(rig), [3, 4, 0, 0, 0], "{:?}", rig.counted());
    });
}

#[test]
fn soa_and_ns_are_answered_at_a_zone_apex_and_ns_resolves_to_the_resolver() {
    with_rig_for(&config(), |rig| {
        let serial = serial(rig);
        let asked = question("Endpoints.Internal", SOA, IN);
        let expected = [
            header(30, QR | AA | RD, [1, 1, 0, 0]),
            asked.clone(),
            soa(12, serial),
        ];
        assert_answer(rig, "cons-a", &query(30, RD, &asked), &expected.concat());
        // A private name is an apex of its own.
        let asked = question("api.corp.example", SOA, IN);
        let expected = [
            header(31, QR | AA, [1, 1, 0, 0]),
            asked.clone(),
            soa(12, serial),
        ];
        assert_answer(rig, "cons-b", &query(31, 0, &asked), &expected.concat());

        let asked = question("endpoints.INTERNAL", NS, IN);
        let expected = [
            header(32, QR | AA | RD, [1, 1, 0, 0]),
            asked.clone(),
            record(12, NS, &wire(&format!("ns.{DOMAIN}"))),
        ];
        assert_answer(rig, "cons-a", &query(32, RD, &asked), &expected.concat());
        // The apex has no A record: NODATA, its SOA owned by the question's name.
        let asked = question("endpoints.internal", A, IN);
        let expected = [
            header(33, QR | AA, [1, 0, 1, 0]),
            asked.clone(),
            soa(12, serial),
        ];
        assert_answer(rig, "cons-b", &query(33, 0, &asked), &expected.concat());
        // The name server's name is the resolver's address.
        let asked = question("ns.endpoints.internal", A, IN);
        let expected = [
            header(34, QR | AA | RD, [1, 1, 0, 0]),
            asked.clone(),
            a(RESOLVER),
        ];
        assert_answer(rig, "cons-b", &query(34, RD, &asked), &expected.concat());
        assert_eq!(dns_counted(rig), [5, 0, 0, 0, 0], "{:?}", rig.counted());
    });
}

#[test]
fn edns_is_answered_with_our_payload_size_and_a_higher_version_with_badvers() {
    with_rig_for(&config(), |rig| {
        let serial = serial(rig);
        // The client's OPT: payload 4096, DO set, a cookie option; ours says 1232, none.
        let cookie = [0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
        let theirs = opt(4096, 0, 0, 0x8000, &cookie);
        let with_opt = |id: u16, flags: u16, asked: &[u8], opt: &[u8]| {
            [
                header(id, flags, [1, 0, 0, 1]),
                asked.to_vec(),
                opt.to_vec(),
            ]
            .concat()
        };
        let asked = question("API-a-z1.api.endpoints.internal", A, IN);
        let expected = [
            header(40, QR | AA | RD, [1, 1, 0, 1]),
            asked.clone(),
            a(API_A[0]),
            our_opt(0),
        ];
        assert_answer(
            rig,
            "cons-a",
            &with_opt(40, RD, &asked, &theirs),
            &expected.concat(),
        );
        // A negative answer: the SOA in the authority section, then the OPT.
        let name = "gone.api.endpoints.internal";
        let asked = question(name, A, IN);
        let expected = [
            header(41, QR | AA | NXDOMAIN, [1, 0, 1, 1]),
            asked.clone(),
            soa(offset_of(name, DOMAIN), serial),
            our_opt(0),
        ];
        assert_answer(
            rig,
            "cons-a",
            &with_opt(41, 0, &asked, &opt(512, 0, 0, 0, &[])),
            &expected.concat(),
        );
        // Version 1: BADVERS (16: extended code 1, header code 0), no records, not
        // authoritative.
        let asked = question("api-a.api.endpoints.internal", A, IN);
        let expected = [header(42, QR | RD, [1, 0, 0, 1]), asked.clone(), our_opt(1)];
        assert_answer(
            rig,
            "cons-a",
            &with_opt(42, RD, &asked, &opt(4096, 0, 1, 0, &[])),
            &expected.concat(),
        );
        assert_eq!(dns_counted(rig), [1, 1, 0, 1, 0], "{:?}", rig.counted());
        assert_eq!(dns_stats(rig, "vpc-a"), [1, 1, 0, 1]);
    });
}

#[test]
fn names_not_ours_other_classes_and_zone_transfers_are_refused_and_other_opcodes_not_implemented() {
    with_rig_for(&config(), |rig| {
        for (name, qtype, qclass) in [
            // Not ours: another domain, the domain's parent, the root.
            ("example.com", A, IN),
            ("internal", A, IN),
            ("", NS, IN),
            ("corp.example", SOA, IN),
            // Ours, but another class or a zone transfer.
            ("api-a.api.endpoints.internal", A, CH),
            ("endpoints.internal", AXFR, IN),
            ("endpoints.internal", IXFR, IN),
        ] {
            let asked = question(name, qtype, qclass);
            let expected = [header(50, QR | RD | REFUSED, [1, 0, 0, 0]), asked.clone()];
            assert_answer(rig, "cons-a", &query(50, RD, &asked), &expected.concat());
        }
        // NOTIFY: not implemented, the header alone with its opcode and RD.
        let asked = question("endpoints.internal", SOA, IN);
        let expected = header(51, QR | NOTIFY | RD | NOTIMP, [0, 0, 0, 0]);
        assert_answer(rig, "cons-a", &query(51, NOTIFY | RD, &asked), &expected);
        assert_eq!(dns_counted(rig), [0, 0, 8, 0, 0], "{:?}", rig.counted());
        assert_eq!(dns_stats(rig, "vpc-a"), [0, 0, 8, 0]);
    });
}

#[test]
fn malformed_questions_are_answered_formerr_with_the_header_only() {
    with_rig_for(&config(), |rig| {
        let name = wire("api-a.api.endpoints.internal");
        let type_class = [0, 1, 0, 1];
        // A name of exactly 256 bytes (one more than a name may have) and of 255.
        let label = |n: usize| [vec![n as u8], vec![b'x'; n]].concat();
        let too_long = [label(63), label(63), label(63), label(62), vec![0]].concat();
        assert_eq!(too_long.len(), 256);
        let longest = [label(63), label(63), label(63), label(61), vec![0]].concat();
        assert_eq!(longest.len(), 255);
        let malformed: Vec<(&str, Vec<u8>)> = vec![
            (
                "a compression pointer",
                [
                    header(60, RD, [1, 0, 0, 0]),
                    vec![0xc0, 0x0c],
                    type_class.to_vec(),
                ]
                .concat(),
            ),
            (
                "a pointer after a label",
                [
                    header(60, RD, [1, 0, 0, 0]),
                    b"\x03api\xc0\x0c".to_vec(),
                    type_class.to_vec(),
                ]
                .concat(),
            ),
            (
                "label type 0x40",
                [
                    header(60, RD, [1, 0, 0, 0]),
                    b"\x41abc\x00".to_vec(),
                    type_class.to_vec(),
                ]
                .concat(),
            ),
            (
                "a name longer than 255 bytes",
                [header(60, RD, [1, 0, 0, 0]), too_long, type_class.to_vec()].concat(),
            ),
            (
                "no class",
                [header(60, RD, [1, 0, 0, 0]), name.clone(), vec![0, 1]].concat(),
            ),
            (
                "a name cut short",
                [header(60, RD, [1, 0, 0, 0]), name[..10].to_vec()].concat(),
            ),
            ("no question", header(60, RD, [1, 0, 0, 0])),
            (
                "two questions",
                [
                    header(60, RD, [2, 0, 0, 0]),
                    name.clone(),
                    type_class.to_vec(),
                    name.clone(),
                    type_class.to_vec(),
                ]
                .concat(),
            ),
            (
                "QDCOUNT 0",
                [
                    header(60, RD, [0, 0, 0, 0]),
                    name.clone(),
                    type_class.to_vec(),
                ]
                .concat(),
            ),
            (
                "an answer in a query",
                [
                    header(60, RD, [1, 1, 0, 0]),
                    name.clone(),
                    type_class.to_vec(),
                    a(ENDPOINT),
                ]
                .concat(),
            ),
        ];
        let formerr = header(60, QR | RD | FORMERR, [0, 0, 0, 0]);
        for (what, message) in &malformed {
            let datagram = to_resolver(rig, "cons-a");
            let out = rig.run("cons-a", &frame(&datagram, message));
            assert_eq!(out.action, XDP_REDIRECT, "{what}: {:?}", rig.counted());
            let mac = rig.link("cons-a").mac;
            assert_eq!(
                hex(&out.frame),
                hex(&answer_frame(&datagram, mac, &formerr)),
                "{what}"
            );
        }
        let n = malformed.len() as u64;
        assert_eq!(dns_counted(rig), [0, 0, 0, n, 0], "{:?}", rig.counted());
        assert_eq!(dns_stats(rig, "vpc-a"), [0, 0, 0, n]);

        // The longest name a message may hold is read whole (here: not ours).
        let asked = [longest, type_class.to_vec()].concat();
        let expected = [header(61, QR | REFUSED, [1, 0, 0, 0]), asked.clone()];
        assert_answer(rig, "cons-a", &query(61, 0, &asked), &expected.concat());
    });
}

#[test]
fn messages_shorter_than_a_header_and_responses_are_dropped() {
    with_rig_for(&config(), |rig| {
        let asked = question("api-a.api.endpoints.internal", A, IN);
        let full = query(70, RD, &asked);
        assert_dropped(rig, "cons-a", &full[..11]);
        assert_dropped(rig, "cons-a", b"");
        // A response (QR set), to a query or not.
        let response = [
            header(70, QR | AA, [1, 1, 0, 0]),
            asked.clone(),
            a(ENDPOINT),
        ]
        .concat();
        assert_dropped(rig, "cons-a", &response);
        assert_dropped(rig, "cons-b", &query(71, QR, &asked));
        assert_eq!(dns_counted(rig), [0, 0, 0, 0, 4], "{:?}", rig.counted());
        assert_eq!(dns_stats(rig, "vpc-a"), [0, 0, 0, 3]);
        assert_eq!(dns_stats(rig, "vpc-b"), [0, 0, 0, 1]);
    });
}

#[test]
fn only_udp_port_53_to_the_resolver_address_is_dns_and_arp_for_it_is_answered() {
    with_rig_for(&config(), |rig| {
        let cons = rig.link("cons-a");
        let message = query(80, RD, &question("api-a.api.endpoints.internal", A, IN));
        // Port 53 at another address of the network: not the resolver. Some endpoint
        // listens on UDP 53, but none at 10.0.0.3: not endpoint traffic.
        let elsewhere = datagram_to(cons.mac, [10, 0, 0, 3], CLIENT_PORT);
        assert_eq!(
            rig.run("cons-a", &frame(&elsewhere, &message)).action,
            XDP_DROP
        );
        assert_eq!(rig.counters().packets(counter::DROP_NOT_ENDPOINT), 1);
        // At the dns endpoint's address it is the endpoint's traffic: forwarded to its
        // target, not answered.
        let to_endpoint = datagram_to(cons.mac, DNS, CLIENT_PORT);
        let out = rig.run("cons-a", &frame(&to_endpoint, &message));
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        let (ip, udp, payload) = parse_udp(&out.frame);
        assert_eq!(
            (ip.source, ip.destination, udp.destination_port),
            (NAT, [172, 16, 0, 11], 5353)
        );
        assert_eq!(payload, message);
        assert_eq!(rig.count("dns-a", counter::FORWARD_NEW), 1);
        // The resolver address on another port, over TCP, or on the provider side.
        let other_port = Datagram {
            dport: 5353,
            ..to_resolver(rig, "cons-a")
        };
        assert_eq!(
            rig.run("cons-a", &frame(&other_port, &message)).action,
            XDP_DROP
        );
        let syn = Segment {
            dport: 53,
            ..syn_to(cons.mac, RESOLVER, CLIENT_PORT)
        };
        assert_eq!(rig.run("cons-a", &syn.frame(b"")).action, XDP_DROP);
        assert_eq!(rig.counters().packets(counter::DROP_NOT_ENDPOINT), 3);
        let provider_side = to_resolver(rig, "prov");
        assert_eq!(
            rig.run("prov", &frame(&provider_side, &message)).action,
            XDP_PASS
        );
        assert_eq!(dns_counted(rig), [0; 5], "{:?}", rig.counted());
        assert_eq!(dns_stats(rig, "vpc-a"), [0; 4]);

        // ARP for the resolver address is answered in each network.
        for interface in ["cons-a", "cons-b"] {
            let own = rig.link(interface).mac;
            let out = rig.run(interface, &arp_request(CLIENT_MAC, CLIENT, RESOLVER));
            assert_eq!(out.action, XDP_REDIRECT, "{interface}");
            let mut reply = CLIENT_MAC.to_vec();
            reply.extend(own);
            reply.extend([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
            reply.extend(own);
            reply.extend(RESOLVER);
            reply.extend(CLIENT_MAC);
            reply.extend(CLIENT);
            assert_eq!(hex(&out.frame), hex(&reply), "{interface}");
        }
        assert_eq!(rig.counters().packets(counter::ARP_REPLY), 2);
    });
}

#[test]
fn a_query_is_checked_like_endpoint_traffic_but_answered_whatever_its_ttl() {
    with_rig_for(&config(), |rig| {
        let asked = question("ns.endpoints.internal", A, IN);
        let message = query(85, RD, &asked);
        let expected = [
            header(85, QR | AA | RD, [1, 1, 0, 0]),
            asked.clone(),
            a(RESOLVER),
        ]
        .concat();
        let mac = rig.link("cons-a").mac;
        // TTL 1: answered here, not forwarded (no time exceeded); no UDP checksum: the
        // answer has one all the same.
        let last_hop = Datagram {
            ttl: 1,
            ..to_resolver(rig, "cons-a")
        };
        let out = rig.run("cons-a", &frame(&last_hop, &message));
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        assert_eq!(
            hex(&out.frame),
            hex(&answer_frame(&last_hop, mac, &expected))
        );
        let datagram = to_resolver(rig, "cons-a");
        let mut no_checksum = frame(&datagram, &message);
        no_checksum[40..42].copy_from_slice(&[0, 0]);
        let out = rig.run("cons-a", &no_checksum);
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        assert_eq!(
            hex(&out.frame),
            hex(&answer_frame(&datagram, mac, &expected))
        );
        // An ECN-capable query (ECT(0)): the answer is not (the node does not do ECN).
        let mut ect = frame(&datagram, &message);
        ect[15] = 0x02;
        let out = rig.run("cons-a", &with_ip_checksum(ect));
        assert_eq!(
            hex(&out.frame),
            hex(&answer_frame(&datagram, mac, &expected))
        );
        assert_eq!(dns_counted(rig), [3, 0, 0, 0, 0], "{:?}", rig.counted());

        // A wrong UDP or IPv4 checksum.
        let mut bad_udp = frame(&datagram, &message);
        bad_udp[40] ^= 0x55;
        let mut bad_ip = frame(&datagram, &message);
        bad_ip[24] ^= 0x55;
        for bad in [bad_udp, bad_ip] {
            assert_eq!(rig.run("cons-a", &bad).action, XDP_DROP);
        }
        assert_eq!(rig.counters().packets(counter::DROP_BAD_CHECKSUM), 2);
        // Longer than the room the program sums in (EDNS padding, RFC 7830): summed by
        // the kernel, answered, or dropped with a wrong checksum.
        let padding = [[0, 12, 2, 0].to_vec(), vec![0; 512]].concat();
        let padded = [
            header(86, RD, [1, 0, 0, 1]),
            asked.clone(),
            opt(1232, 0, 0, 0, &padding),
        ]
        .concat();
        let expected = [
            header(86, QR | AA | RD, [1, 1, 0, 1]),
            asked.clone(),
            a(RESOLVER),
            our_opt(0),
        ]
        .concat();
        assert_answer(rig, "cons-a", &padded, &expected);
        let mut bad_padded = frame(&datagram, &padded);
        *bad_padded.last_mut().unwrap() ^= 0x55;
        assert_eq!(rig.run("cons-a", &bad_padded).action, XDP_DROP);
        assert_eq!(rig.counters().packets(counter::DROP_BAD_CHECKSUM), 3);
        // Not sent to the interface's MAC.
        let broadcast = Datagram {
            mac_dst: [0xff; 6],
            ..datagram
        };
        assert_eq!(
            rig.run("cons-a", &frame(&broadcast, &message)).action,
            XDP_DROP
        );
        assert_eq!(rig.counters().packets(counter::DROP_NOT_FOR_US), 1);
        // From the resolver address itself, or from loopback: dropped.
        for src in [RESOLVER, [127, 0, 0, 1]] {
            let spoofed = Datagram { src, ..datagram };
            assert_eq!(
                rig.run("cons-a", &frame(&spoofed, &message)).action,
                XDP_DROP
            );
        }
        assert_eq!(rig.counters().packets(counter::DROP_MARTIAN), 2);
        // From an endpoint's address: answered, to the frame's sender alone (the MAC it
        // came from), which the claimed address cannot redirect.
        let spoofed = Datagram {
            src: ENDPOINT,
            ..datagram
        };
        let out = rig.run("cons-a", &frame(&spoofed, &message));
        assert_eq!(out.action, XDP_REDIRECT);
        assert_eq!(out.frame[..6], spoofed.mac_src);
        assert_eq!(dns_counted(rig), [5, 0, 0, 0, 0], "{:?}", rig.counted());
        assert_eq!(dns_stats(rig, "vpc-a"), [5, 0, 0, 0]);
    });
}

#[test]
fn a_rejected_endpoints_names_are_nxdomain_and_an_accepted_ones_resolve_in_the_next_answer() {
    with_rig_for(&config(), |rig| {
        let regional = question("a.orders.endpoints.internal", A, IN);
        let pending = question("pending.orders.endpoints.internal", A, IN);
        let resolves = |id: u16, asked: &[u8], ip: [u8; 4]| {
            [header(id, QR | AA, [1, 1, 0, 0]), asked.to_vec(), a(ip)].concat()
        };
        let nxdomain = |id: u16, asked: &[u8], name: &str, serial: u32| {
            [
                header(id, QR | AA | NXDOMAIN, [1, 0, 1, 0]),
                asked.to_vec(),
                soa(offset_of(name, DOMAIN), serial),
            ]
            .concat()
        };
        let before = serial(rig);
        assert_answer(
            rig,
            "cons-a",
            &query(90, 0, &regional),
            &resolves(90, &regional, ENDPOINT),
        );
        assert_answer(
            rig,
            "cons-a",
            &query(91, 0, &pending),
            &nxdomain(91, &pending, "pending.orders.endpoints.internal", before),
        );

        // `a` rejected, `pending` accepted.
        let changed = changed(
            &changed(
                &config(),
                "vpc-a, ip: 10.0.0.100, zone: z1, state: available }",
                "vpc-a, ip: 10.0.0.100, zone: z1, state: rejected }",
            ),
            "state: pendingAcceptance }",
            "state: available }",
        );
        rig.reconfigure(&changed);
        let after = serial(rig);
        assert_ne!(after, before, "the SOA serial stays with other records");
        for name in [
            "a.orders.endpoints.internal",
            "a-z1.orders.endpoints.internal",
        ] {
            let asked = question(name, A, IN);
            assert_answer(
                rig,
                "cons-a",
                &query(92, 0, &asked),
                &nxdomain(92, &asked, name, after),
            );
        }
        assert_answer(
            rig,
            "cons-a",
            &query(93, 0, &pending),
            &resolves(93, &pending, PENDING),
        );
        // vpc-b's own `b` is untouched.
        let asked = question("b.orders.endpoints.internal", A, IN);
        assert_answer(
            rig,
            "cons-b",
            &query(94, 0, &asked),
            &resolves(94, &asked, ENDPOINT),
        );

        // Accepted again: the name resolves in the next answer.
        rig.reconfigure(&config());
        assert_answer(
            rig,
            "cons-a",
            &query(95, 0, &regional),
            &resolves(95, &regional, ENDPOINT),
        );
        assert_eq!(dns_counted(rig), [4, 3, 0, 0, 0], "{:?}", rig.counted());
    });
}

#[test]
fn each_network_counts_its_own_answers_nxdomains_refusals_and_malformed_queries() {
    with_rig_for(&config(), |rig| {
        let (a_id, b_id) = {
            let networks = &rig.pipeline.applied().ids.networks;
            (networks["vpc-a"], networks["vpc-b"])
        };
        assert_ne!(a_id, b_id);
        let ask = |rig: &mut Rig, interface: &str, message: &[u8]| {
            let datagram = to_resolver(rig, interface);
            rig.run(interface, &frame(&datagram, message)).action
        };
        let regional = query(1, RD, &question("api-a.api.endpoints.internal", A, IN));
        let nodata = query(2, RD, &question("api-a.api.endpoints.internal", AAAA, IN));
        let unknown = query(3, RD, &question("nope.endpoints.internal", A, IN));
        let not_ours = query(4, RD, &question("example.org", A, IN));
        let notify = query(5, NOTIFY, &question("endpoints.internal", SOA, IN));
        let pointer = [header(6, RD, [1, 0, 0, 0]), vec![0xc0, 0x0c, 0, 1, 0, 1]].concat();
        let response = query(7, QR, &question("endpoints.internal", A, IN));
        // vpc-a: 2 answers (one NODATA), 1 NXDOMAIN, 1 refused, 2 malformed (one dropped).
        for message in [&regional, &nodata, &unknown, &not_ours, &pointer] {
            assert_eq!(ask(rig, "cons-a", message), XDP_REDIRECT);
        }
        assert_eq!(ask(rig, "cons-a", &response), XDP_DROP);
        // vpc-b: another network's name is NXDOMAIN there; 3 refused (NOTIMP among them).
        for message in [&regional, &unknown, &not_ours, &not_ours, &notify] {
            assert_eq!(ask(rig, "cons-b", message), XDP_REDIRECT);
        }
        assert_eq!(dns_stats(rig, "vpc-a"), [2, 1, 1, 2], "vpc-a");
        assert_eq!(dns_stats(rig, "vpc-b"), [0, 2, 3, 0], "vpc-b");
        assert_eq!(dns_counted(rig), [2, 3, 4, 1, 1], "{:?}", rig.counted());
        // Nothing is counted for a network that asked nothing (slot 0).
        let stats = rig
            .pipeline
            .maps()
            .per_cpu_array::<Count>(name::DNS_STATS)
            .unwrap();
        for which in 0..dns_counter::COUNT {
            let total: u64 = stats
                .get(&which, 0)
                .unwrap()
                .iter()
                .map(|c| c.packets)
                .sum();
            assert_eq!(
                total,
                0,
                "network 0, {}",
                dns_counter::NAMES[which as usize]
            );
        }
    });
}

/// The resolver address answers pings from anyone in its network (an operator's first
/// check), within the ICMP budget; other ICMP to it is dropped.
#[test]
fn the_resolver_address_answers_pings() {
    with_rig_for(&config(), |rig| {
        let cons_b = rig.link("cons-b");
        let mut request = Vec::new();
        etherparse::PacketBuilder::ethernet2(CLIENT_MAC, cons_b.mac)
            .ipv4(CLIENT, RESOLVER, 64)
            .icmpv4_echo_request(9, 3)
            .write(&mut request, b"resolver?")
            .unwrap();
        let out = rig.run("cons-b", &request);
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        let mut reply = Vec::new();
        etherparse::PacketBuilder::ethernet2(cons_b.mac, CLIENT_MAC)
            .ipv4(RESOLVER, CLIENT, 64)
            .icmpv4_echo_reply(9, 3)
            .write(&mut reply, b"resolver?")
            .unwrap();
        assert_eq!(hex(&out.frame), hex(&reply));
        assert_eq!(rig.counters().packets(counter::ICMP_ECHO_REPLY), 1);

        // An echo reply sent to it is not taken.
        let mut stray = Vec::new();
        etherparse::PacketBuilder::ethernet2(CLIENT_MAC, cons_b.mac)
            .ipv4(CLIENT, RESOLVER, 64)
            .icmpv4_echo_reply(9, 4)
            .write(&mut stray, b"resolver?")
            .unwrap();
        assert_eq!(rig.run("cons-b", &stray).action, XDP_DROP);
        assert_eq!(rig.counters().packets(counter::DROP_ICMP), 1);
    });
}

/// An IPv6 resolver address: queries over IPv6 are answered likewise (A and AAAA records
/// alike, `ns.<domain>` with both addresses), a datagram without a UDP checksum is
/// dropped (IPv6 requires one), UDP to port 53 of another IPv6 address is not DNS, and the
/// address answers neighbour solicitations and pings.
#[test]
fn an_ipv6_resolver_address_answers_over_ipv6_and_is_found_by_neighbour_discovery() {
    use crate::ipv6::{icmpv6_checksum_ok, octets, solicitation};
    let config = changed(
        &config(),
        "      - { zone: z2, ip: 10.0.0.111 }\n",
        "      - { zone: z2, ip: 10.0.0.111 }\n      - { zone: z2, ip: 'fd00:a::111' }\n",
    );
    let config = changed(
        &config,
        "    - { consumer_network: vpc-a, ip: 10.0.0.2 }\n",
        "    - { consumer_network: vpc-a, ip: 10.0.0.2 }\n    - { consumer_network: vpc-a, ip: 'fd00:a::2' }\n",
    );
    let (client6, resolver6) = (octets("fd00:a::10"), octets("fd00:a::2"));
    with_rig_for(&config, |rig| {
        let cons_a = rig.link("cons-a").mac;
        let udp6 = |macs: ([u8; 6], [u8; 6]),
                    addresses: ([u8; 16], [u8; 16]),
                    ports: (u16, u16),
                    message: &[u8]| {
            let mut frame = Vec::new();
            etherparse::PacketBuilder::ethernet2(macs.0, macs.1)
                .ipv6(addresses.0, addresses.1, 64)
                .udp(ports.0, ports.1)
                .write(&mut frame, message)
                .unwrap();
            frame
        };
        let ask = |message: &[u8]| {
            udp6(
                (CLIENT_MAC, cons_a),
                (client6, resolver6),
                (CLIENT_PORT, 53),
                message,
            )
        };
        let answer = |message: &[u8]| {
            udp6(
                (cons_a, CLIENT_MAC),
                (resolver6, client6),
                (53, CLIENT_PORT),
                message,
            )
        };
        let asked_names = [
            ("api-a.api.endpoints.internal", AAAA, aaaa("fd00:a::111")),
            ("api-a-z1.api.endpoints.internal", A, a(API_A[0])),
            ("ns.endpoints.internal", AAAA, aaaa("fd00:a::2")),
            ("ns.endpoints.internal", A, a(RESOLVER)),
        ];
        for (id, (name, qtype, record)) in (60..).zip(asked_names) {
            let asked = question(name, qtype, IN);
            let message = query(id, RD, &asked);
            let expected = [header(id, QR | AA | RD, [1, 1, 0, 0]), asked, record].concat();
            let mut frame = ask(&message);
            if id == 60 {
                // ECN-capable (ECT(0) in the traffic class): the answer is not.
                frame[15] |= 0x20;
            }
            let out = rig.run("cons-a", &frame);
            assert_eq!(out.action, XDP_REDIRECT, "{name}: {:?}", rig.counted());
            assert_eq!(hex(&out.frame), hex(&answer(&expected)), "{name} {qtype}");
        }
        assert_eq!(dns_counted(rig), [4, 0, 0, 0, 0], "{:?}", rig.counted());
        assert_eq!(dns_stats(rig, "vpc-a"), [4, 0, 0, 0]);

        // No UDP checksum: dropped.
        let mut unchecked = ask(&query(70, RD, &question(DOMAIN, SOA, IN)));
        unchecked[14 + 40 + 6..14 + 40 + 8].copy_from_slice(&[0, 0]);
        assert_eq!(rig.run("cons-a", &unchecked).action, XDP_DROP);
        assert_eq!(rig.counters().packets(counter::DROP_BAD_CHECKSUM), 1);
        // Port 53 of another address of the network (an endpoint's, with no listener
        // there): not DNS.
        let elsewhere = udp6(
            (CLIENT_MAC, cons_a),
            (client6, octets("fd00:a::111")),
            (CLIENT_PORT, 53),
            &query(71, RD, &question(DOMAIN, SOA, IN)),
        );
        assert_ne!(rig.run("cons-a", &elsewhere).action, XDP_REDIRECT);
        assert_eq!(dns_counted(rig), [4, 0, 0, 0, 0], "{:?}", rig.counted());

        // Neighbour discovery and pings find it.
        let out = rig.run("cons-a", &solicitation(client6, resolver6, 255));
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        assert_eq!(out.frame[22..38], resolver6, "advertised");
        assert_eq!(out.frame[54], 136);
        assert_eq!(rig.counters().packets(counter::NEIGHBOUR_ADVERT), 1);
        let mut request = Vec::new();
        etherparse::PacketBuilder::ethernet2(CLIENT_MAC, cons_a)
            .ipv6(client6, resolver6, 64)
            .icmpv6_echo_request(9, 3)
            .write(&mut request, b"resolver?")
            .unwrap();
        let out = rig.run("cons-a", &request);
        assert_eq!(out.action, XDP_REDIRECT, "{:?}", rig.counted());
        let f = &out.frame;
        assert_eq!((&f[22..38], &f[38..54]), (&resolver6[..], &client6[..]));
        assert_eq!(f[54], 129, "echo reply");
        assert!(icmpv6_checksum_ok(&f[22..38], &f[38..54], &f[54..]));
        assert_eq!(rig.counters().packets(counter::ICMP_ECHO_REPLY), 1);
    });
}
