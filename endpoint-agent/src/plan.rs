//! Plan: the difference between two states of the maps, as the changes that turn one
//! into the other, in an order that is safe to apply while traffic flows:
//!
//! 1. removed endpoints stop matching;
//! 2. new targets, then ring slots that change (rings only point at targets that exist);
//! 3. NAT addresses, then node settings, then NAT addresses that go;
//! 4. new addresses and security-group prefixes, then endpoints (an endpoint only
//!    appears once everything it refers to is in place), then interfaces;
//! 5. what nothing refers to any more: interfaces, prefixes, addresses, targets, rings.

use std::{
    collections::BTreeMap,
    fmt::{self, Write as _},
};

use endpoint_common::maps::{
    self, Address, AddressKey, EndpointKey, NatAddress, SecurityGroup, SourcePrefix, Target,
};

use crate::desired::{PrefixKey, State};

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
    Endpoint(Op<EndpointKey, maps::Endpoint>),
    Target(Op<u32, Target>),
    /// Ring `ring` (of `size` slots)'s changed slots: (slot, new target index).
    Ring {
        ring: u32,
        size: u32,
        slots: Vec<(u32, u32)>,
        edit: Edit,
    },
    Nat(Op<u32, NatAddress>),
    Config {
        old: maps::Config,
        new: maps::Config,
    },
    Address(Op<AddressKey, Address>),
    SecurityGroup(Op<PrefixKey, SecurityGroup>),
    Interface(Op<u32, maps::Interface>),
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

impl Plan {
    /// The changes that turn `old` into `new`, in a safe order.
    pub fn between(old: &State, new: &State) -> Plan {
        let (endpoint_puts, endpoint_removes) = ops(&old.endpoints, &new.endpoints);
        let (target_puts, target_removes) = ops(&old.targets, &new.targets);
        let (nat_puts, nat_removes) = ops(&old.nat, &new.nat);
        let (address_puts, address_removes) = ops(&old.addresses, &new.addresses);
        let (group_puts, group_removes) = ops(&old.security_groups, &new.security_groups);
        let (interface_puts, interface_removes) = ops(&old.interfaces, &new.interfaces);

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
                let size = new.config.ring_size;
                ring_writes.push(Change::Ring {
                    ring,
                    size,
                    slots: changed,
                    edit,
                });
            }
        }
        for (&ring, slots) in &old.rings {
            if !new.rings.contains_key(&ring) {
                let size = slots.len() as u32;
                let zeroed = (0..size).map(|i| (i, 0)).collect();
                ring_removes.push(Change::Ring {
                    ring,
                    size,
                    slots: zeroed,
                    edit: Edit::Remove,
                });
            }
        }

        let mut changes = Vec::new();
        changes.extend(endpoint_removes.into_iter().map(Change::Endpoint));
        changes.extend(target_puts.into_iter().map(Change::Target));
        changes.extend(ring_writes);
        changes.extend(nat_puts.into_iter().map(Change::Nat));
        if old.config != new.config {
            changes.push(Change::Config {
                old: old.config,
                new: new.config,
            });
        }
        changes.extend(nat_removes.into_iter().map(Change::Nat));
        changes.extend(address_puts.into_iter().map(Change::Address));
        changes.extend(group_puts.into_iter().map(Change::SecurityGroup));
        changes.extend(endpoint_puts.into_iter().map(Change::Endpoint));
        changes.extend(interface_puts.into_iter().map(Change::Interface));
        changes.extend(interface_removes.into_iter().map(Change::Interface));
        changes.extend(group_removes.into_iter().map(Change::SecurityGroup));
        changes.extend(address_removes.into_iter().map(Change::Address));
        changes.extend(target_removes.into_iter().map(Change::Target));
        changes.extend(ring_removes);
        Plan { changes }
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
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

impl State {
    /// Applies one change to this in-memory picture of the maps.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Endpoint(op) => put(&mut self.endpoints, op),
            Change::Target(op) => put(&mut self.targets, op),
            Change::Nat(op) => put(&mut self.nat, op),
            Change::Address(op) => put(&mut self.addresses, op),
            Change::SecurityGroup(op) => put(&mut self.security_groups, op),
            Change::Interface(op) => put(&mut self.interfaces, op),
            Change::Config { new, .. } => self.config = *new,
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
        }
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
        }
    }

    fn of(map: &BTreeMap<u32, String>, id: u32) -> String {
        map.get(&id).cloned().unwrap_or_else(|| format!("#{id}"))
    }
}

/// A plan, shown in the product's words.
pub struct Shown<'a> {
    pub plan: &'a Plan,
    pub names: &'a Names,
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.names;
        let (mut add, mut change, mut remove) = (0, 0, 0);
        for c in &self.plan.changes {
            let mut line = String::new();
            let sign = |old_present: bool, removed: bool| match (removed, old_present) {
                (true, _) => '-',
                (false, true) => '~',
                (false, false) => '+',
            };
            let mark = match c {
                Change::Endpoint(op) => {
                    let (key, value, old, removed) = parts(op);
                    let _ = write!(
                        line,
                        "endpoint {} ({} {}:{})",
                        Names::of(&n.endpoints, value.id),
                        Names::of(&n.networks, key.network),
                        ipv4(key.addr),
                        u16::from_be(key.port_be)
                    );
                    match (old, removed) {
                        (Some(old), false) => describe_endpoint_change(&mut line, old, value, n),
                        (None, false) => {
                            let _ = write!(
                                line,
                                ": state {}, ring {}",
                                state_name(value.state),
                                Names::of(&n.rings, value.ring)
                            );
                        }
                        _ => {}
                    }
                    sign(old.is_some(), removed)
                }
                Change::Target(op) => {
                    let (index, value, old, removed) = parts(op);
                    let _ = write!(
                        line,
                        "target {} ({}:{})",
                        Names::of(&n.targets, *index),
                        ipv4(value.addr),
                        u16::from_be(value.port_be)
                    );
                    sign(old.is_some(), removed)
                }
                Change::Ring {
                    ring, slots, edit, ..
                } => {
                    let _ = write!(line, "ring {}", Names::of(&n.rings, *ring));
                    match edit {
                        Edit::Add => {
                            let _ = write!(line, ": {} slots", slots.len());
                            '+'
                        }
                        Edit::Change => {
                            let _ = write!(line, ": {} slots move", slots.len());
                            '~'
                        }
                        Edit::Remove => '-',
                    }
                }
                Change::Nat(op) => {
                    let (index, value, old, removed) = parts(op);
                    let _ = write!(
                        line,
                        "NAT address {} #{index} on {}",
                        ipv4(value.addr),
                        Names::of(&n.interfaces, value.ifindex)
                    );
                    sign(old.is_some(), removed)
                }
                Change::Config { old, new } => {
                    let _ = write!(line, "node settings:");
                    if old.hash_seed != new.hash_seed {
                        let _ = write!(line, " hash_seed {} -> {}", old.hash_seed, new.hash_seed);
                    }
                    if (old.nat_port_min, old.nat_port_max) != (new.nat_port_min, new.nat_port_max)
                    {
                        let _ = write!(
                            line,
                            " nat_ports {}-{} -> {}-{}",
                            old.nat_port_min, old.nat_port_max, new.nat_port_min, new.nat_port_max
                        );
                    }
                    if old.nat_addresses != new.nat_addresses {
                        let _ = write!(
                            line,
                            " NAT addresses {} -> {}",
                            old.nat_addresses, new.nat_addresses
                        );
                    }
                    if old.ring_size != new.ring_size {
                        let _ = write!(line, " ring_size {} -> {}", old.ring_size, new.ring_size);
                    }
                    '~'
                }
                Change::Address(op) => {
                    let (key, value, old, removed) = parts(op);
                    let kind = if value.kind == maps::address_kind::NAT {
                        "NAT"
                    } else {
                        "endpoint"
                    };
                    let _ = write!(
                        line,
                        "{kind} address {} answered on {}",
                        ipv4(key.addr),
                        Names::of(&n.interfaces, key.ifindex)
                    );
                    sign(old.is_some(), removed)
                }
                Change::SecurityGroup(op) => {
                    let ((len, prefix), value, old, removed) = parts(op);
                    let mut addr = [0u8; 4];
                    addr.copy_from_slice(&prefix.addr[..4]);
                    let _ = write!(
                        line,
                        "security group of endpoint {}: {}/{} may use listener(s) {:#b}",
                        Names::of(&n.endpoints, prefix.endpoint),
                        std::net::Ipv4Addr::from(addr),
                        len - SourcePrefix::FIXED_BITS,
                        value.ports
                    );
                    sign(old.is_some(), removed)
                }
                Change::Interface(op) => {
                    let (ifindex, value, old, removed) = parts(op);
                    let _ = write!(line, "interface {}", Names::of(&n.interfaces, *ifindex));
                    if value.network != 0 {
                        let _ = write!(
                            line,
                            " (consumer network {})",
                            Names::of(&n.networks, value.network)
                        );
                    }
                    sign(old.is_some(), removed)
                }
            };
            match mark {
                '+' => add += 1,
                '~' => change += 1,
                _ => remove += 1,
            }
            writeln!(f, "{mark} {line}")?;
        }
        write!(
            f,
            "plan: {add} to add, {change} to change, {remove} to remove"
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

fn describe_endpoint_change(
    line: &mut String,
    old: &maps::Endpoint,
    new: &maps::Endpoint,
    n: &Names,
) {
    if old.state != new.state {
        let _ = write!(
            line,
            ": state {} -> {}",
            state_name(old.state),
            state_name(new.state)
        );
    }
    if old.ring != new.ring {
        let _ = write!(
            line,
            ": ring {} -> {}",
            Names::of(&n.rings, old.ring),
            Names::of(&n.rings, new.ring)
        );
    }
    if old.flags != new.flags {
        let _ = write!(line, ": flags {:#b} -> {:#b}", old.flags, new.flags);
    }
    if old.id != new.id || old.service != new.service || old.listener != new.listener {
        let _ = write!(line, ": renumbered");
    }
}

fn state_name(code: u8) -> &'static str {
    use crate::config::State;
    State::ALL
        .into_iter()
        .find(|s| s.code() == code)
        .map_or("unknown", State::name)
}

fn ipv4(addr: maps::Addr) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(addr.ipv4_be().to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use anyhow::{Result, bail};
    use endpoint_common::maps::NO_TARGET;

    use super::*;
    use crate::{desired, facts::Facts, ids::Ids, validate};

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
            // Port 80 always (the security groups below name it), others at random.
            let mut ports = vec![80];
            ports.extend([443, 8080].into_iter().filter(|_| r.chance(50)));
            let on_revoke = if r.chance(50) { "drain" } else { "reset" };
            let _ = writeln!(
                y,
                "  - name: {name}\n    acceptance_required: {}\n    allowed_principals: [p1, p2]\n    on_revoke: {on_revoke}\n    load_balancers:",
                r.chance(50)
            );
            for lb in 1..=1 + r.below(2) {
                let _ = writeln!(
                    y,
                    "      - name: lb{lb}\n        zone: z{lb}\n        listeners:"
                );
                for port in &ports {
                    let _ = writeln!(y, "          - port: {port}\n            targets:");
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

    fn link(name: &str) -> Result<desired::Link> {
        let ifindex = match name {
            "cons-a" => 2,
            "cons-b" => 3,
            "prov" => 4,
            _ => bail!("no interface {name}"),
        };
        Ok(desired::Link {
            ifindex,
            mac: [2, 0, 0, 0, 0, ifindex as u8],
            veth: true,
        })
    }

    /// What must hold between any two changes: every endpoint's ring exists and points
    /// only at targets that exist; the NAT addresses in use exist.
    fn assert_safe(state: &State, step: &str) {
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
        for i in 0..state.config.nat_addresses {
            assert!(
                state.nat.contains_key(&i),
                "{step}: NAT address {i} in use but missing"
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
            let state_a = desired::build(&a.config, &ids_a, &Default::default(), link).unwrap();
            let ids_b = ids_a.assign(&b.config);
            let state_b = desired::build(&b.config, &ids_b, &Default::default(), link).unwrap();

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
        let plan = Plan::between(
            &desired::build(&a, &ids_a, &Default::default(), link).unwrap(),
            &desired::build(&b, &ids_b, &Default::default(), link).unwrap(),
        );
        for change in &plan.changes {
            if let Change::Endpoint(op) = change {
                let (_, endpoint, _, _) = parts(op);
                assert_eq!(
                    endpoint.id, ids_b.endpoints["e0"],
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
}
