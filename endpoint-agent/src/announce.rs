//! Gratuitous ARP for addresses the node starts answering for. A consumer that tried an
//! endpoint before it was accepted has an unresolved or failed neighbour entry for it
//! (ARP for a request is not answered); the announcement resolves that entry at once
//! instead of the consumer's next connections failing with "no route to host" until its
//! kernel tries again. Linux updates an existing entry from a gratuitous ARP whatever
//! `arp_accept` says, and creates none: nothing is claimed that nobody asked for.
//! IPv6 addresses are not announced yet (that would be an unsolicited neighbour
//! advertisement).

use std::{collections::BTreeMap, io, net::Ipv4Addr};

use endpoint_common::maps::{Address, AddressKey, FAMILY_IPV4, Interface, address_kind, nat_scope};

use crate::{
    desired::Contents,
    plan::{Change, Op, Plan},
};

/// What `plan` makes the node answer for anew, as (ifindex, interface, address): an
/// address it starts answering for, and every address of an interface whose MAC changed
/// (neighbours still hold the old one).
pub fn newly_answered(plan: &Plan, contents: &Contents) -> Vec<(u32, Interface, Ipv4Addr)> {
    let mut announced = Vec::new();
    for change in &plan.changes {
        match change {
            Change::Address(Op::Put { key, old, new })
                if answered(new) && !old.is_some_and(|o| answered(&o)) =>
            {
                announced.extend(
                    on(key, &contents.interfaces).map(|(ifindex, i)| (ifindex, i, ipv4(key))),
                );
            }
            Change::Interface(Op::Put {
                key: ifindex,
                old: Some(old),
                new,
            }) if old.mac != new.mac => {
                let here = BTreeMap::from([(*ifindex, *new)]);
                for (key, _) in contents.addresses.iter().filter(|(_, a)| answered(a)) {
                    announced.extend(on(key, &here).map(|(ifindex, i)| (ifindex, i, ipv4(key))));
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

fn ipv4(key: &AddressKey) -> Ipv4Addr {
    Ipv4Addr::from(key.addr.ipv4_be().to_ne_bytes())
}

/// The interfaces where `key`'s address is answered by ARP (none for IPv6).
fn on<'a>(
    key: &'a AddressKey,
    interfaces: &'a BTreeMap<u32, Interface>,
) -> impl Iterator<Item = (u32, Interface)> + 'a {
    let arp = key.family == FAMILY_IPV4;
    interfaces
        .iter()
        .filter(move |_| arp)
        .filter_map(move |(&ifindex, interface)| {
            let here = if key.scope == nat_scope(ifindex) {
                interface.provider()
            } else {
                interface.consumer() && interface.network == key.scope
            };
            here.then_some((ifindex, *interface))
        })
}

/// Sends one gratuitous ARP request (sender and target both `address`) out `ifindex`.
pub fn announce(ifindex: u32, mac: [u8; 6], address: Ipv4Addr) -> io::Result<()> {
    const ETH_P_ARP: u16 = 0x0806;
    let mut frame = [0u8; 42];
    frame[0..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet, IPv4, 6- and 4-byte addresses, request.
    frame[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    frame[22..28].copy_from_slice(&mac);
    frame[28..32].copy_from_slice(&address.octets());
    frame[38..42].copy_from_slice(&address.octets());
    // SAFETY: plain socket calls on a descriptor this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut to: libc::sockaddr_ll = std::mem::zeroed();
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = ETH_P_ARP.to_be();
        to.sll_ifindex = ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
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

    #[test]
    fn only_ipv4_addresses_are_announced() {
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
            BTreeSet::from([(2, "10.0.0.1".into()), (3, "172.16.0.100".into())])
        );
    }
}
