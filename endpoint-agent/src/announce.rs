//! Gratuitous ARP for addresses the node starts answering for. A consumer that tried an
//! endpoint before it was accepted has an unresolved or failed neighbour entry for it
//! (ARP for a request is not answered); the announcement resolves that entry at once
//! instead of the consumer's next connections failing with "no route to host" until its
//! kernel tries again. Linux updates an existing entry from a gratuitous ARP whatever
//! `arp_accept` says, and creates none: nothing is claimed that nobody asked for.

use std::{collections::BTreeMap, io, net::Ipv4Addr};

use endpoint_common::maps::{Address, AddressKey, Interface, address_kind, nat_scope};

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
