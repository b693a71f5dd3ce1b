//! Plan: the difference between two [`Contents`] of the maps, as the changes that turn
//! one into the other, in an order that is safe to apply while traffic flows:
//!
//! 1. removed endpoint listeners stop matching;
//! 2. new targets, then ring slots that change (rings only point at targets that exist);
//! 3. node settings (NAT addresses among them);
//! 4. new addresses, security-group prefixes, limits, policies and ports, then endpoint
//!    listeners (an endpoint only appears once everything it refers to is in place),
//!    then interfaces;
//! 5. what nothing refers to any more: interfaces, prefixes, addresses, ports,
//!    policies (a removed endpoint's flows then find it gone), limits, targets, rings.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::{self, Write as _},
    net::SocketAddr,
};

use endpoint_common::maps::{
    self, Address, AddressKey, DnsSettings, EndpointKey, EndpointRef, Interface, Limits, Name,
    NameKey, Policy, SecurityGroup, Settings, SourcePrefix, Target, ports_index,
};

use crate::{
    config::Protocol,
    desired::{Contents, PrefixKey},
};

/// One entry of one map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<K, V> {
    Put { key: K, old: Option<V>, new: V },
    Remove { key: K, old: V },
}

/// Whether a ring is new, changes, or goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    Add,
    Change,
    Remove,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Endpoint(Op<EndpointKey, EndpointRef>),
    /// A port of a consumer network opens (some endpoint listens on it) or closes.
    Port {
        index: u32,
        port: u16,
        open: bool,
    },
    Policy(Op<u32, u64>),
    Limits(Op<u32, Limits>),
    Target(Op<u32, Target>),
    /// Ring `ring` (of `size` slots)'s changed slots: (slot, new target index).
    Ring {
        ring: u32,
        size: u32,
        slots: Vec<(u32, u32)>,
        edit: Edit,
    },
    Settings {
        old: Box<Settings>,
        new: Box<Settings>,
    },
    Address(Op<AddressKey, Address>),
    SecurityGroup(Op<PrefixKey, SecurityGroup>),
    Interface(Op<u32, Interface>),
    /// A DNS name of a consumer network (boxed: a name's records are large).
    Name(Box<Op<NameKey, Name>>),
    /// What every zone's answers share (none: all zeros).
    Dns {
        old: Box<DnsSettings>,
        new: Box<DnsSettings>,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub changes: Vec<Change>,
}

/// Puts (new and changed entries), then removals.
type Ops<K, V> = (Vec<Op<K, V>>, Vec<Op<K, V>>);

/// Puts (new and changed entries) and removals between two tables.
fn ops<K: Ord + Copy, V: PartialEq + Copy>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> Ops<K, V> {
    let puts = new
        .iter()
        .filter(|(k, v)| old.get(k) != Some(v))
        .map(|(&key, &new)| Op::Put {
            key,
            old: old.get(&key).copied(),
            new,
        })
        .collect();
    let removes = old
        .iter()
        .filter(|(k, _)| !new.contains_key(k))
        .map(|(&key, &old)| Op::Remove { key, old })
        .collect();
    (puts, removes)
}

/// The ports that open and close between two sets.
fn ports(old: &BTreeSet<(u32, u16)>, new: &BTreeSet<(u32, u16)>, open: bool) -> Vec<Change> {
    let (from, to) = if open { (old, new) } else { (new, old) };
    to.difference(from)
        .map(|&(index, port)| Change::Port { index, port, open })
        .collect()
}

impl Plan {
    /// The changes that turn `old` into `new`, in a safe order.
    pub fn between(old: &Contents, new: &Contents) -> Plan {
        let (endpoint_puts, endpoint_removes) = ops(&old.endpoints, &new.endpoints);
        let (policy_puts, policy_removes) = ops(&old.policies, &new.policies);
        let (limits_puts, limits_removes) = ops(&old.limits, &new.limits);
        let (target_puts, target_removes) = ops(&old.targets, &new.targets);
        let (address_puts, address_removes) = ops(&old.addresses, &new.addresses);
        let (group_puts, group_removes) = ops(&old.security_groups, &new.security_groups);
        let (interface_puts, interface_removes) = ops(&old.interfaces, &new.interfaces);
        let (name_puts, name_removes) = ops(&old.names, &new.names);

        let empty = Vec::new();
        let mut ring_writes = Vec::new();
        let mut ring_removes = Vec::new();
        for (&ring, slots) in &new.rings {
            let before = old.rings.get(&ring).unwrap_or(&empty);
            let changed: Vec<(u32, u32)> = slots
                .iter()
                .enumerate()
                .filter(|(i, slot)| before.get(*i) != Some(slot))
                .map(|(i, &slot)| (i as u32, slot))
                .collect();
            if !changed.is_empty() {
                let edit = if old.rings.contains_key(&ring) {
                    Edit::Change
                } else {
                    Edit::Add
                };
                ring_writes.push(Change::Ring {
                    ring,
                    size: new.settings.ring_size,
                    slots: changed,
                    edit,
                });
            }
        }
        for (&ring, slots) in &old.rings {
            if !new.rings.contains_key(&ring) {
                let size = slots.len() as u32;
                ring_removes.push(Change::Ring {
                    ring,
                    size,
                    slots: (0..size).map(|i| (i, 0)).collect(),
                    edit: Edit::Remove,
                });
            }
        }

        let mut changes = Vec::new();
        changes.extend(endpoint_removes.into_iter().map(Change::Endpoint));
        changes.extend(target_puts.into_iter().map(Change::Target));
        changes.extend(ring_writes);
        if old.settings != new.settings {
            changes.push(Change::Settings {
                old: Box::new(old.settings),
                new: Box::new(new.settings),
            });
        }
        if old.dns != new.dns {
            changes.push(Change::Dns {
                old: Box::new(old.dns),
                new: Box::new(new.dns),
            });
        }
        changes.extend(name_puts.into_iter().map(|op| Change::Name(Box::new(op))));
        changes.extend(address_puts.into_iter().map(Change::Address));
        changes.extend(group_puts.into_iter().map(Change::SecurityGroup));
        changes.extend(limits_puts.into_iter().map(Change::Limits));
        changes.extend(policy_puts.into_iter().map(Change::Policy));
        changes.extend(ports(&old.ports, &new.ports, true));
        changes.extend(endpoint_puts.into_iter().map(Change::Endpoint));
        changes.extend(interface_puts.into_iter().map(Change::Interface));
        changes.extend(interface_removes.into_iter().map(Change::Interface));
        changes.extend(group_removes.into_iter().map(Change::SecurityGroup));
        changes.extend(address_removes.into_iter().map(Change::Address));
        changes.extend(ports(&old.ports, &new.ports, false));
        changes.extend(policy_removes.into_iter().map(Change::Policy));
        changes.extend(limits_removes.into_iter().map(Change::Limits));
        changes.extend(target_removes.into_iter().map(Change::Target));
        changes.extend(ring_removes);
        changes.extend(
            name_removes
                .into_iter()
                .map(|op| Change::Name(Box::new(op))),
        );
        Plan { changes }
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// How many changes add, change and remove something.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for change in &self.changes {
            match mark(change) {
                '+' => counts.add += 1,
                '~' => counts.change += 1,
                _ => counts.remove += 1,
            }
        }
        counts
    }
}

/// What a plan does, in numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub add: usize,
    pub change: usize,
    pub remove: usize,
}

fn put<K: Ord + Copy, V: Copy>(table: &mut BTreeMap<K, V>, op: &Op<K, V>) {
    match op {
        Op::Put { key, new, .. } => {
            table.insert(*key, *new);
        }
        Op::Remove { key, .. } => {
            table.remove(key);
        }
    }
}

impl Contents {
    /// Applies one change to this in-memory picture of the maps.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Endpoint(op) => put(&mut self.endpoints, op),
            Change::Policy(op) => put(&mut self.policies, op),
            Change::Limits(op) => put(&mut self.limits, op),
            Change::Target(op) => put(&mut self.targets, op),
            Change::Address(op) => put(&mut self.addresses, op),
            Change::SecurityGroup(op) => put(&mut self.security_groups, op),
            Change::Interface(op) => put(&mut self.interfaces, op),
            Change::Settings { new, .. } => self.settings = **new,
            Change::Name(op) => put(&mut self.names, op),
            Change::Dns { new, .. } => self.dns = **new,
            Change::Port { index, port, open } => {
                if *open {
                    self.ports.insert((*index, *port));
                } else {
                    self.ports.remove(&(*index, *port));
                }
            }
            Change::Ring {
                ring,
                edit: Edit::Remove,
                ..
            } => {
                self.rings.remove(ring);
            }
            Change::Ring {
                ring, size, slots, ..
            } => {
                let row = self
                    .rings
                    .entry(*ring)
                    .or_insert_with(|| vec![0; *size as usize]);
                for &(slot, target) in slots {
                    row[slot as usize] = target;
                }
            }
        }
    }
}

/// Names for what the maps hold by number, to show a plan in the product's words.
#[derive(Debug, Clone, Default)]
pub struct Names {
    pub networks: BTreeMap<u32, String>,
    pub endpoints: BTreeMap<u32, String>,
    pub rings: BTreeMap<u32, String>,
    pub targets: BTreeMap<u32, String>,
    pub interfaces: BTreeMap<u32, String>,
    /// DNS names by hash.
    pub dns: BTreeMap<u64, String>,
}

impl Names {
    pub fn new(ids: &crate::ids::Ids, interfaces: &BTreeMap<String, u32>) -> Self {
        fn flip<K: fmt::Display>(m: &BTreeMap<K, u32>) -> BTreeMap<u32, String> {
            m.iter().map(|(k, &v)| (v, k.to_string())).collect()
        }
        Self {
            networks: flip(&ids.networks),
            endpoints: flip(&ids.endpoints),
            rings: flip(&ids.rings),
            targets: flip(&ids.targets),
            interfaces: flip(interfaces),
            dns: BTreeMap::new(),
        }
    }

    /// With the texts of the DNS names `config` may give (with `ids`).
    pub fn with_dns(
        mut self,
        config: Option<&crate::config::Config>,
        ids: &crate::ids::Ids,
    ) -> Self {
        if let Some(config) = config {
            self.dns = crate::names::texts(config, ids);
        }
        self
    }

    /// Names from `new` first, then from `old` (for what is being removed).
    pub fn merge(new: Names, old: Names) -> Self {
        let join = |mut a: BTreeMap<u32, String>, b: BTreeMap<u32, String>| {
            for (k, v) in b {
                a.entry(k).or_insert(v);
            }
            a
        };
        Self {
            networks: join(new.networks, old.networks),
            endpoints: join(new.endpoints, old.endpoints),
            rings: join(new.rings, old.rings),
            targets: join(new.targets, old.targets),
            interfaces: join(new.interfaces, old.interfaces),
            dns: {
                let mut dns = new.dns;
                for (k, v) in old.dns {
                    dns.entry(k).or_insert(v);
                }
                dns
            },
        }
    }

    fn of(map: &BTreeMap<u32, String>, id: u32) -> String {
        map.get(&id).cloned().unwrap_or_else(|| format!("#{id}"))
    }

    /// The consumer network and protocol whose port bitmap is `PORTS` row `index`.
    fn port_row(&self, index: u32) -> (String, &'static str) {
        self.networks
            .iter()
            .flat_map(|(&id, name)| Protocol::ALL.map(|protocol| (id, name, protocol)))
            .find(|&(id, _, protocol)| ports_index(id, protocol.number()) == index)
            .map_or((format!("#{index}"), "?"), |(_, name, protocol)| {
                (name.clone(), protocol.name())
            })
    }
}

/// `+` adds, `~` changes, `-` removes.
fn mark(change: &Change) -> char {
    let sign = |old_present: bool, removed: bool| match (removed, old_present) {
        (true, _) => '-',
        (false, true) => '~',
        (false, false) => '+',
    };
    fn of<K, V>(op: &Op<K, V>) -> (bool, bool) {
        match op {
            Op::Put { old, .. } => (old.is_some(), false),
            Op::Remove { .. } => (true, true),
        }
    }
    let (present, removed) = match change {
        Change::Endpoint(op) => of(op),
        Change::Policy(op) => of(op),
        Change::Limits(op) => of(op),
        Change::Target(op) => of(op),
        Change::Address(op) => of(op),
        Change::SecurityGroup(op) => of(op),
        Change::Interface(op) => of(op),
        Change::Settings { .. } => (true, false),
        Change::Name(op) => of(op),
        Change::Dns { old, new } => (
            **old != DnsSettings::default(),
            **new == DnsSettings::default(),
        ),
        Change::Port { open, .. } => (!open, !open),
        Change::Ring { edit, .. } => match edit {
            Edit::Add => (false, false),
            Edit::Change => (true, false),
            Edit::Remove => (true, true),
        },
    };
    sign(present, removed)
}

/// A plan, shown in the product's words.
pub struct Shown<'a> {
    pub plan: &'a Plan,
    pub names: &'a Names,
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.names;
        for c in &self.plan.changes {
            let mut line = String::new();
            match c {
                Change::Endpoint(op) => {
                    let (key, value, _, _) = parts(op);
                    let _ = write!(
                        line,
                        "endpoint {} listens at {} {}/{} (ring {})",
                        Names::of(&n.endpoints, value.slot),
                        Names::of(&n.networks, key.network),
                        SocketAddr::new(key.addr.ip(key.family), u16::from_be(key.port_be)),
                        Protocol::of(key.proto).map_or("?", Protocol::name),
                        Names::of(&n.rings, value.ring)
                    );
                }
                Change::Port { index, port, open } => {
                    let (network, protocol) = n.port_row(*index);
                    let _ = write!(
                        line,
                        "port {port}/{protocol} {} in consumer network {network}",
                        if *open { "opens" } else { "closes" },
                    );
                }
                Change::Policy(op) => {
                    let (slot, value, old, _) = parts(op);
                    let policy = Policy::of(*value);
                    let _ = write!(line, "endpoint {}", Names::of(&n.endpoints, *slot));
                    match old.map(|o| Policy::of(*o)) {
                        Some(old) if old.uid == policy.uid => {
                            if old.state != policy.state {
                                let _ = write!(
                                    line,
                                    ": state {} -> {}",
                                    state_name(old.state),
                                    state_name(policy.state)
                                );
                            }
                            if old.revision != policy.revision {
                                let _ = write!(line, ": security groups change");
                            }
                            if old.flags != policy.flags {
                                let _ =
                                    write!(line, ": flags {:#b} -> {:#b}", old.flags, policy.flags);
                            }
                        }
                        _ => {
                            let _ = write!(line, ": state {}", state_name(policy.state));
                        }
                    }
                }
                Change::Limits(op) => {
                    let (slot, value, _, _) = parts(op);
                    let _ = write!(
                        line,
                        "limits of endpoint {}: idle {} s (UDP {} s), connections {}, new per \
                         second {}",
                        Names::of(&n.endpoints, *slot),
                        value.idle_timeout_s,
                        value.udp_idle_timeout_s,
                        value.connections,
                        1_000_000_000u64.checked_div(value.interval_ns).unwrap_or(0)
                    );
                    if value.mss != 0 {
                        let _ = write!(line, ", mss {}", value.mss);
                    }
                }
                Change::Target(op) => {
                    let (index, value, _, _) = parts(op);
                    let _ = write!(
                        line,
                        "target {} ({})",
                        Names::of(&n.targets, *index),
                        SocketAddr::new(value.addr.ip(value.family), u16::from_be(value.port_be))
                    );
                }
                Change::Ring {
                    ring, slots, edit, ..
                } => {
                    let _ = write!(line, "ring {}", Names::of(&n.rings, *ring));
                    match edit {
                        Edit::Add => {
                            let _ = write!(line, ": {} slots", slots.len());
                        }
                        Edit::Change => {
                            let _ = write!(line, ": {} slots move", slots.len());
                        }
                        Edit::Remove => {}
                    }
                }
                Change::Settings { old, new } => {
                    let _ = write!(line, "node settings:");
                    if old.hash_seed != new.hash_seed {
                        let _ = write!(line, " hash_seed changes");
                    }
                    if (old.nat_port_min, old.nat_port_max) != (new.nat_port_min, new.nat_port_max)
                    {
                        let _ = write!(
                            line,
                            " nat_ports {}-{} -> {}-{}",
                            old.nat_port_min, old.nat_port_max, new.nat_port_min, new.nat_port_max
                        );
                    }
                    let addresses = |s: &Settings| -> Vec<String> {
                        s.nat[..usize::from(s.nat_ipv4 + s.nat_ipv6)]
                            .iter()
                            .map(|a| {
                                format!(
                                    "{} on {}",
                                    a.addr.ip(a.family),
                                    Names::of(&n.interfaces, a.ifindex)
                                )
                            })
                            .collect()
                    };
                    if addresses(old) != addresses(new) {
                        let _ = write!(
                            line,
                            " NAT addresses [{}] -> [{}]",
                            addresses(old).join(", "),
                            addresses(new).join(", ")
                        );
                    }
                    if old.ring_size != new.ring_size {
                        let _ = write!(line, " ring_size {} -> {}", old.ring_size, new.ring_size);
                    }
                    let limits = |s: &Settings| {
                        (
                            s.half_open_per_network,
                            s.resets_per_second,
                            s.icmp_per_second,
                        )
                    };
                    if limits(old) != limits(new) {
                        let _ = write!(
                            line,
                            " limits: {} half-open per network, {} resets and {} ICMP messages \
                             per second",
                            new.half_open_per_network, new.resets_per_second, new.icmp_per_second
                        );
                    }
                }
                Change::Address(op) => {
                    let (key, value, _, _) = parts(op);
                    if value.kind == maps::address_kind::NAT {
                        let _ = write!(
                            line,
                            "NAT address {} answered on {}",
                            key.addr.ip(key.family),
                            Names::of(&n.interfaces, key.scope & !maps::nat_scope(0))
                        );
                    } else if value.kind == maps::address_kind::RESOLVER {
                        let _ = write!(
                            line,
                            "resolver address {} answered in {}",
                            key.addr.ip(key.family),
                            Names::of(&n.networks, key.scope)
                        );
                    } else {
                        let how = match value.kind {
                            maps::address_kind::STANDBY => "carried (another node answers ARP)",
                            maps::address_kind::WAITING => "waiting for acceptance",
                            _ => "answered",
                        };
                        let _ = write!(
                            line,
                            "endpoint address {} {how} in {}",
                            key.addr.ip(key.family),
                            Names::of(&n.networks, key.scope)
                        );
                    }
                }
                Change::SecurityGroup(op) => {
                    let ((len, prefix), value, _, _) = parts(op);
                    let _ = write!(
                        line,
                        "security group of endpoint {}: {}/{} may use listener(s) {:#b}",
                        Names::of(&n.endpoints, prefix.slot),
                        // The key's sixteen bytes, read as its family says.
                        maps::Addr::ipv6(prefix.addr).ip(prefix.family),
                        len - SourcePrefix::FIXED_BITS,
                        value.ports
                    );
                }
                Change::Interface(op) => {
                    let (ifindex, value, _, _) = parts(op);
                    let _ = write!(line, "interface {}", Names::of(&n.interfaces, *ifindex));
                    if value.network != 0 {
                        let _ = write!(
                            line,
                            " (consumer network {})",
                            Names::of(&n.networks, value.network)
                        );
                    }
                }
                Change::Name(op) => {
                    let (key, value, _, _) = parts(op);
                    let addresses: Vec<String> = value.addrs[..value.count as usize]
                        .iter()
                        .map(|a| std::net::Ipv4Addr::from(*a).to_string())
                        .chain(
                            value.addrs6[..value.count6 as usize]
                                .iter()
                                .map(|a| std::net::Ipv6Addr::from(*a).to_string()),
                        )
                        .collect();
                    let name = n
                        .dns
                        .get(&key.hash)
                        .cloned()
                        .unwrap_or_else(|| format!("#{:016x}", key.hash));
                    let _ = write!(
                        line,
                        "DNS name {name} in consumer network {}: [{}]{}",
                        Names::of(&n.networks, key.network),
                        addresses.join(", "),
                        if value.flags & maps::name_flag::APEX != 0 {
                            " (zone apex)"
                        } else {
                            ""
                        }
                    );
                }
                Change::Dns { new, .. } => {
                    let _ = write!(line, "DNS: TTL {} s", u32::from_be_bytes(new.ttl));
                }
            }
            writeln!(f, "{} {line}", mark(c))?;
        }
        let counts = self.plan.counts();
        write!(
            f,
            "plan: {} to add, {} to change, {} to remove",
            counts.add, counts.change, counts.remove
        )
    }
}

/// (key, the value shown, the old value if any, whether it is a removal).
fn parts<K, V>(op: &Op<K, V>) -> (&K, &V, Option<&V>, bool) {
    match op {
        Op::Put { key, old, new } => (key, new, old.as_ref(), false),
        Op::Remove { key, old } => (key, old, None, true),
    }
}

fn state_name(code: u8) -> &'static str {
    use crate::config::State;
    State::ALL
        .into_iter()
        .find(|s| s.code() == code)
        .map_or("unknown", State::name)
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use endpoint_common::maps::NO_TARGET;

    use super::*;
    use crate::{
        desired,
        facts::{Facts, Link},
        ids::Ids,
        validate,
    };

    /// A small reproducible random source (xorshift64).
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    /// A random valid config over a small world of names, so that two of them share
    /// much and differ in places.
    fn random_config(r: &mut Random) -> String {
        let mut y = String::from("node:\n  interfaces:\n");
        y += "    - { name: cons-a, role: consumer, consumer_network: vpc-a }\n";
        if r.chance(60) {
            y += "    - { name: cons-b, role: consumer, consumer_network: vpc-b }\n";
        }
        let nat = if r.chance(50) {
            "[172.16.0.100]"
        } else {
            "[172.16.0.100, 172.16.0.101]"
        };
        let _ = writeln!(
            y,
            "    - {{ name: prov, role: provider, nat_addresses: {nat} }}"
        );
        let _ = writeln!(y, "  hash_seed: {}", r.below(3));
        let _ = writeln!(y, "  limits: {{ icmp_per_second: {} }}", 1000 * r.below(2));
        let _ = writeln!(
            y,
            "  nat_ports: {{ first: {}, last: 65535 }}",
            1024 + r.below(2) * 1000
        );
        y += "  tables: { ring_size: 401 }\nservices:\n";
        let mut services = Vec::new();
        for s in 1..=4 {
            if !r.chance(70) {
                continue;
            }
            let name = format!("s{s}");
            // Port 80 always (the security groups below name it), others at random, and
            // UDP on 80 too at times (its targets are then checked on a TCP port).
            let mut ports = vec![(80, "tcp")];
            ports.extend(
                [(443, "tcp"), (8080, "tcp"), (80, "udp")]
                    .into_iter()
                    .filter(|_| r.chance(50)),
            );
            let check = if ports.contains(&(80, "udp")) {
                "        health_check: { port: 9000 }\n"
            } else {
                ""
            };
            let on_revoke = if r.chance(50) { "drain" } else { "reset" };
            let _ = writeln!(
                y,
                "  - name: {name}\n    acceptance_required: {}\n    allowed_principals: [p1, p2]\n    on_revoke: {on_revoke}\n    udp_idle_timeout_seconds: {}\n    load_balancers:",
                r.chance(50),
                60 + 60 * r.below(2)
            );
            for lb in 1..=1 + r.below(2) {
                let _ = writeln!(
                    y,
                    "      - name: lb{lb}\n        zone: z{lb}\n{check}        listeners:"
                );
                for (port, protocol) in &ports {
                    let _ = writeln!(
                        y,
                        "          - port: {port}\n            protocol: {protocol}\n            targets:"
                    );
                    for t in 10..14 {
                        if r.chance(50) {
                            let _ = writeln!(
                                y,
                                "              - {{ ip: 172.16.0.{t}, port: {}, weight: {} }}",
                                9000 + r.below(2),
                                r.below(4)
                            );
                        }
                    }
                }
            }
            services.push(name);
        }
        y += "endpoints:\n";
        if services.is_empty() {
            y += "  []\n";
            return y;
        }
        for e in 1..=6 {
            if !r.chance(60) {
                continue;
            }
            let service = &services[r.below(services.len() as u64) as usize];
            let network = if y.contains("vpc-b") && r.chance(50) {
                "vpc-b"
            } else {
                "vpc-a"
            };
            let state = match r.below(4) {
                0 => "\n    state: available\n    accepted_at: \"2026-01-01T00:00:00Z\"",
                1 => "\n    state: rejected",
                2 => "\n    state: pendingAcceptance",
                _ => "",
            };
            let groups = if r.chance(40) {
                "\n    security_groups: [{ cidr: 10.0.0.0/24 }, { cidr: 10.0.0.0/28, ports: [80] }]"
            } else {
                ""
            };
            let _ = writeln!(
                y,
                "  - id: e{e}\n    service: {service}\n    principal: p{}\n    consumer_network: {network}\n    ip: 10.0.0.{}\n    zone: z1{groups}{state}",
                1 + r.below(2),
                100 + e
            );
        }
        y
    }

    fn facts() -> Facts {
        let link = |ifindex: u32| Link {
            ifindex,
            mac: [2, 0, 0, 0, 0, ifindex as u8],
            veth: true,
            mtu: 1500,
        };
        Facts {
            links: [
                ("cons-a".into(), link(2)),
                ("cons-b".into(), link(3)),
                ("prov".into(), link(4)),
            ]
            .into(),
            ..Facts::default()
        }
    }

    fn build(config: &crate::config::Config, ids: &Ids) -> Contents {
        desired::build(config, ids, &facts(), 7, &Default::default()).contents
    }

    /// What must hold between any two changes: every endpoint's ring exists and points
    /// only at targets that exist; the NAT addresses in use exist.
    fn assert_safe(state: &Contents, step: &str) {
        for (key, endpoint) in &state.endpoints {
            let ring = state
                .rings
                .get(&endpoint.ring)
                .unwrap_or_else(|| panic!("{step}: endpoint {key:?} points at a missing ring"));
            for &slot in ring {
                assert!(
                    slot == NO_TARGET || state.targets.contains_key(&slot),
                    "{step}: ring {} points at missing target {slot}",
                    endpoint.ring
                );
            }
        }
        for (key, endpoint) in &state.endpoints {
            assert!(
                state.policies.contains_key(&endpoint.slot)
                    && state.limits.contains_key(&endpoint.slot),
                "{step}: endpoint {key:?} has no policy or limits"
            );
            assert!(
                state.ports.contains(&(
                    ports_index(key.network, key.proto),
                    u16::from_be(key.port_be)
                )),
                "{step}: endpoint {key:?}'s port is closed"
            );
        }
    }

    /// For random pairs of configs, applying the plan from A to B to A's maps yields
    /// exactly B's maps, and the maps are safe to use after every single change.
    #[test]
    fn applying_the_plan_from_a_to_b_yields_b_safely() {
        let mut r = Random(0x5eed_1234_abcd_0001);
        let (mut compared, mut invalid) = (0, 0);
        while compared < 300 {
            let (text_a, text_b) = (random_config(&mut r), random_config(&mut r));
            let facts = Facts::default();
            let (Ok(a), Ok(b)) = (
                validate::load("a", &text_a, &facts),
                validate::load("b", &text_b, &facts),
            ) else {
                invalid += 1;
                continue;
            };
            let ids_a = Ids::default().assign(&a.config);
            let state_a = build(&a.config, &ids_a);
            let ids_b = ids_a.assign(&b.config);
            let state_b = build(&b.config, &ids_b);

            let plan = Plan::between(&state_a, &state_b);
            let mut maps = state_a.clone();
            assert_safe(&maps, "before");
            for (i, change) in plan.changes.iter().enumerate() {
                maps.apply(change);
                assert_safe(
                    &maps,
                    &format!("after change {i} ({change:?})\nA:\n{text_a}\nB:\n{text_b}"),
                );
            }
            assert_eq!(maps, state_b, "A:\n{text_a}\nB:\n{text_b}");
            assert!(Plan::between(&state_b, &state_b).is_empty());
            compared += 1;
        }
        assert!(
            invalid < compared / 4,
            "the generator makes too many invalid configs: {invalid}"
        );
    }

    /// A config change that does not concern an endpoint leaves its entries alone (its
    /// flows keep their network, endpoint and target numbers).
    #[test]
    fn unrelated_changes_leave_endpoints_untouched() {
        let base = "node:\n  interfaces:\n    - { name: cons-a, role: consumer, consumer_network: vpc-a }\n    - { name: prov, role: provider, nat_addresses: [172.16.0.100] }\nservices:\n  - name: s1\n    acceptance_required: false\n    allowed_principals: [p]\n    load_balancers: [{ name: lb, zone: z, listeners: [{ port: 80, targets: [{ ip: 172.16.0.10, port: 9000 }] }] }]\nendpoints:\n  - { id: e1, service: s1, principal: p, consumer_network: vpc-a, ip: 10.0.0.101, zone: z }\n";
        let more = base.replace(
            "endpoints:\n",
            "  - name: s0\n    acceptance_required: false\n    allowed_principals: [p]\n    load_balancers: [{ name: lb, zone: z, listeners: [{ port: 81, targets: [{ ip: 172.16.0.11, port: 9000 }] }] }]\nendpoints:\n  - { id: e0, service: s0, principal: p, consumer_network: vpc-a, ip: 10.0.0.100, zone: z }\n",
        );
        let a = validate::load("a", base, &Facts::default()).unwrap().config;
        let b = validate::load("b", &more, &Facts::default())
            .unwrap()
            .config;
        let ids_a = Ids::default().assign(&a);
        let ids_b = ids_a.assign(&b);
        let plan = Plan::between(&build(&a, &ids_a), &build(&b, &ids_b));
        for change in &plan.changes {
            if let Change::Endpoint(op) = change {
                let (_, endpoint, _, _) = parts(op);
                assert_eq!(
                    endpoint.slot, ids_b.endpoints["e0"],
                    "only e0 changes: {change:?}"
                );
            }
        }
        assert_eq!(ids_a.endpoints["e1"], ids_b.endpoints["e1"]);
        assert_eq!(
            ids_a.targets,
            ids_b
                .targets
                .iter()
                .filter(|(k, _)| k.listener.service == "s1")
                .map(|(k, v)| (k.clone(), *v))
                .collect()
        );
    }

    #[test]
    fn ipv6_addresses_are_shown_as_ipv6() {
        let text = "node:\n  interfaces:\n    - { name: cons-a, role: consumer, consumer_network: vpc-a }\n    - { name: prov, role: provider, nat_addresses: [172.16.0.100, fd00:16::100] }\nservices:\n  - name: s1\n    acceptance_required: false\n    allowed_principals: [p]\n    load_balancers: [{ name: lb, zone: z, listeners: [{ port: 80, targets: [{ ip: fd00:16::10, port: 9000 }] }] }]\nendpoints:\n  - { id: e1, service: s1, principal: p, consumer_network: vpc-a, ip: fd00:a::1, zone: z, security_groups: [{ cidr: \"fd00:a::/64\" }] }\n";
        let config = validate::load("t", text, &Facts::default())
            .expect("valid")
            .config;
        let ids = Ids::default().assign(&config);
        let plan = Plan::between(&Contents::default(), &build(&config, &ids));
        let interfaces = [("prov".to_string(), 4)].into();
        let shown = Shown {
            plan: &plan,
            names: &Names::new(&ids, &interfaces),
        }
        .to_string();
        for line in [
            "endpoint e1 listens at vpc-a [fd00:a::1]:80/tcp",
            "target ",
            "([fd00:16::10]:9000)",
            "NAT addresses [] -> [172.16.0.100 on prov, fd00:16::100 on prov]",
            "NAT address fd00:16::100 answered on prov",
            "endpoint address fd00:a::1 answered in vpc-a",
            "security group of endpoint e1: fd00:a::/64 may use",
        ] {
            assert!(shown.contains(line), "{line:?} missing from:\n{shown}");
        }
    }
}
