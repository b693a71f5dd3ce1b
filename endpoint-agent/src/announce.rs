//! Gratuitous ARP (IPv6: an unsolicited neighbour advertisement) for addresses the node
//! starts answering for. A consumer that tried an endpoint before it was accepted has an
//! unresolved or failed neighbour entry for it (ARP for a request is not answered); the
//! announcement resolves that entry at once instead of the consumer's next connections
//! failing with "no route to host" until its kernel tries again — and in a fleet, a
//! zone's address taken over by another node moves to its MAC. Linux updates an existing
//! entry from either whatever `arp_accept` says, and creates none: nothing is claimed
//! that nobody asked for.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use endpoint_common::maps::{Address, AddressKey, Interface, address_kind, nat_scope};

use crate::{
    desired::Contents,
    plan::{Change, Op, Plan},
};

/// What `plan` makes the node answer for anew, as (ifindex, interface, address): an
/// address it starts answering for, and every address of an interface whose MAC changed
/// (neighbours still hold the old one).
pub fn newly_answered(plan: &Plan, contents: &Contents) -> Vec<(u32, Interface, IpAddr)> {
    let mut announced = Vec::new();
    for change in &plan.changes {
        match change {
            Change::Address(Op::Put { key, old, new })
                if answered(new) && !old.is_some_and(|o| answered(&o)) =>
            {
                announced.extend(
                    on(key, &contents.interfaces).map(|(ifindex, i)| (ifindex, i, ip(key))),
                );
            }
            Change::Interface(Op::Put {
                key: ifindex,
                old: Some(old),
                new,
            }) if old.mac != new.mac => {
                let here = BTreeMap::from([(*ifindex, *new)]);
                for (key, _) in contents.addresses.iter().filter(|(_, a)| answered(a)) {
                    announced.extend(on(key, &here).map(|(ifindex, i)| (ifindex, i, ip(key))));
                }
            }
            _ => {}
        }
    }
    announced
}

fn answered(address: &Address) -> bool {
    address.kind != address_kind::WAITING && address.kind != address_kind::STANDBY
}

fn ip(key: &AddressKey) -> IpAddr {
    key.addr.ip(key.family)
}

/// The interfaces where `key`'s address is answered.
fn on<'a>(
    key: &'a AddressKey,
    interfaces: &'a BTreeMap<u32, Interface>,
) -> impl Iterator<Item = (u32, Interface)> + 'a {
    interfaces.iter().filter_map(move |(&ifindex, interface)| {
        let here = if key.scope == nat_scope(ifindex) {
            interface.provider()
        } else {
            interface.consumer() && interface.network == key.scope
        };
        here.then_some((ifindex, *interface))
    })
}

/// Announces `address` out `ifindex` as the node's, from `mac`.
pub fn announce(ifindex: u32, mac: [u8; 6], address: IpAddr) -> io::Result<()> {
    match address {
        IpAddr::V4(address) => send(ifindex, &arp(mac, address)),
        IpAddr::V6(address) => send(ifindex, &advertisement(mac, address)),
    }
}

/// A gratuitous ARP request: sender and target both `address`, broadcast.
fn arp(mac: [u8; 6], address: Ipv4Addr) -> Vec<u8> {
    let mut frame = vec![0u8; 42];
    frame[0..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&[0x08, 0x06]);
    // Ethernet, IPv4, 6- and 4-byte addresses, request.
    frame[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    frame[22..28].copy_from_slice(&mac);
    frame[28..32].copy_from_slice(&address.octets());
    frame[38..42].copy_from_slice(&address.octets());
    frame
}

/// An unsolicited neighbour advertisement (RFC 4861 §7.2.6) of `address` at `mac`, from
/// the address itself to all nodes: override set, solicited and router not, the target
/// link-layer address option, hop limit 255, the ICMPv6 checksum computed.
fn advertisement(mac: [u8; 6], address: Ipv6Addr) -> Vec<u8> {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets();
    let mut message = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
    message.extend(address.octets());
    message.extend([2, 1]);
    message.extend(mac);
    let mut pseudo = address.octets().to_vec();
    pseudo.extend(all_nodes);
    pseudo.extend((message.len() as u32).to_be_bytes());
    pseudo.extend([0, 0, 0, 58]);
    pseudo.extend(&message);
    let check = !fold(&pseudo);
    message[2..4].copy_from_slice(&check.to_be_bytes());
    let mut frame = vec![0x33, 0x33, 0, 0, 0, 1];
    frame.extend(mac);
    frame.extend([0x86, 0xdd, 0x60, 0, 0, 0]);
    frame.extend((message.len() as u16).to_be_bytes());
    frame.extend([58, 255]);
    frame.extend(address.octets());
    frame.extend(all_nodes);
    frame.extend(message);
    frame
}

/// The one's complement sum of `bytes`, folded to 16 bits.
fn fold(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Sends `frame` (Ethernet, its EtherType within) out `ifindex`.
fn send(ifindex: u32, frame: &[u8]) -> io::Result<()> {
    // SAFETY: plain socket calls on a descriptor this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut to: libc::sockaddr_ll = std::mem::zeroed();
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = u16::from_ne_bytes([frame[12], frame[13]]);
        to.sll_ifindex = ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        let sent = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const to).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        let result = if sent < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        };
        libc::close(fd);
        result
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::newly_answered;
    use crate::{
        desired,
        facts::{Facts, Link},
        ids::Ids,
        plan::Plan,
        validate,
    };

    /// An advertisement's ICMPv6 checksum sums, with its pseudo-header, to all ones.
    #[test]
    fn an_advertisement_is_unsolicited_overriding_and_summed_right() {
        let address: std::net::Ipv6Addr = "fd00:a::1".parse().unwrap();
        let mac = [2, 0, 0, 0, 0, 7];
        let frame = super::advertisement(mac, address);
        assert_eq!(frame.len(), 14 + 40 + 32);
        assert_eq!(frame[0..6], [0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!((frame[20], frame[21]), (58, 255));
        assert_eq!(frame[22..38], address.octets());
        let message = &frame[54..];
        assert_eq!((message[0], message[4]), (136, 0x20), "override only");
        assert_eq!(message[8..24], address.octets());
        assert_eq!(message[24..32], [2, 1, 2, 0, 0, 0, 0, 7]);
        let mut pseudo = frame[22..54].to_vec();
        pseudo.extend((message.len() as u32).to_be_bytes());
        pseudo.extend([0, 0, 0, 58]);
        pseudo.extend(message);
        assert_eq!(super::fold(&pseudo), 0xffff);
    }

    #[test]
    fn addresses_of_both_families_are_announced() {
        let text = "node:\n  interfaces:\n    - { name: cons-a, role: consumer, consumer_network: vpc-a }\n    - { name: prov, role: provider, nat_addresses: [172.16.0.100, fd00:16::100] }\nservices:\n  - name: s\n    acceptance_required: false\n    allowed_principals: [p]\n    load_balancers: [{ name: lb, zone: z, listeners: [{ port: 80, targets: [{ ip: 172.16.0.10, port: 80 }, { ip: fd00:16::10, port: 80 }] }] }]\nendpoints:\n  - { id: e, service: s, principal: p, consumer_network: vpc-a, addresses: [{ zone: z, ip: 10.0.0.1 }, { zone: z, ip: fd00:a::1 }] }\n";
        let config = validate::load("t", text, &Facts::default())
            .expect("valid")
            .config;
        let link = |ifindex| Link {
            ifindex,
            mac: [2, 0, 0, 0, 0, 1],
            veth: false,
            mtu: 1500,
        };
        let facts = Facts {
            links: [("cons-a".into(), link(2)), ("prov".into(), link(3))].into(),
            ..Facts::default()
        };
        let ids = Ids::default().assign(&config);
        let contents = desired::build(&config, &ids, &facts, 7, &BTreeSet::new()).contents;
        let plan = Plan::between(&Default::default(), &contents);
        let announced: BTreeSet<(u32, String)> = newly_answered(&plan, &contents)
            .into_iter()
            .map(|(ifindex, _, ip)| (ifindex, ip.to_string()))
            .collect();
        assert_eq!(
            announced,
            BTreeSet::from([
                (2, "10.0.0.1".into()),
                (2, "fd00:a::1".into()),
                (3, "172.16.0.100".into()),
                (3, "fd00:16::100".into())
            ])
        );
    }
}
