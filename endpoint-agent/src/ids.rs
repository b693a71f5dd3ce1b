//! Ids: the numbers the maps use for consumer networks, endpoints, targets and rings.
//! They are kept stable across config changes and agent restarts (persisted in the state
//! directory): flow keys carry the network id and flow entries the endpoint's slot, so
//! renumbering would cut established connections. Each endpoint also has a uid that is
//! never given to another: a flow that outlives its endpoint is recognised as such even
//! when the slot has a new owner.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{
    config::Config,
    keys::{ListenerKey, RingKey, TargetKey, pairs},
    placement,
};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ids {
    /// Consumer network → id (≥ 1; 0 is the provider side).
    pub networks: BTreeMap<String, u32>,
    /// Endpoint → slot (≥ 1) in the per-endpoint tables and counters.
    pub endpoints: BTreeMap<String, u32>,
    /// Endpoint → uid (≥ 1), never reused.
    pub uids: BTreeMap<String, u32>,
    /// The next uid to give.
    pub next_uid: u32,
    /// Ring → index: one per listener and zone of the endpoints placed on it.
    #[serde(with = "pairs")]
    pub rings: BTreeMap<RingKey, u32>,
    /// Target → index (≥ 1: a zeroed ring slot means "never written").
    #[serde(with = "pairs")]
    pub targets: BTreeMap<TargetKey, u32>,
}

/// Every target of every listener of `config`.
pub fn targets(config: &Config) -> impl Iterator<Item = (TargetKey, &crate::config::Target)> {
    config.services.iter().flat_map(|service| {
        service.load_balancers.iter().flat_map(move |lb| {
            lb.listeners.iter().flat_map(move |listener| {
                let key = ListenerKey::of(service, lb, listener);
                listener.targets.iter().map(move |t| (key.target(t), t))
            })
        })
    })
}

impl Ids {
    /// Ids for `config`: everything that still exists keeps its id; new things get the
    /// lowest id that `self` does not use — not one freed by this very change, which the
    /// maps may still refer to until it is applied — and what is gone is forgotten. So
    /// ids stay below twice the number of objects (the maps are sized for that).
    pub fn assign(&self, config: &Config) -> Ids {
        let networks = config
            .node
            .interfaces
            .iter()
            .filter_map(|i| i.consumer_network.clone());
        let endpoints = config.endpoints.iter().map(|e| e.id.clone());
        let mut next_uid = self.next_uid.max(1);
        let uids = config
            .endpoints
            .iter()
            .map(|e| {
                let uid = self.uids.get(&e.id).copied().unwrap_or_else(|| {
                    next_uid += 1;
                    next_uid - 1
                });
                (e.id.clone(), uid)
            })
            .collect();
        Ids {
            networks: keep(&self.networks, networks, 1),
            endpoints: keep(&self.endpoints, endpoints, 1),
            uids,
            next_uid,
            rings: keep(&self.rings, placement::rings(config), 0),
            targets: keep(&self.targets, targets(config).map(|(key, _)| key), 1),
        }
    }
}

fn keep<K: Ord + Clone>(
    old: &BTreeMap<K, u32>,
    names: impl IntoIterator<Item = K>,
    first: u32,
) -> BTreeMap<K, u32> {
    let names: BTreeSet<K> = names.into_iter().collect();
    let mut ids: BTreeMap<K, u32> = old
        .iter()
        .filter(|(name, _)| names.contains(*name))
        .map(|(name, &id)| (name.clone(), id))
        .collect();
    let mut used: BTreeSet<u32> = old.values().copied().collect();
    let mut next = first;
    for name in names {
        if ids.contains_key(&name) {
            continue;
        }
        while used.contains(&next) {
            next += 1;
        }
        used.insert(next);
        ids.insert(name, next);
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn kept_names_keep_their_ids_and_new_ones_fill_gaps() {
        let first = keep(&BTreeMap::new(), names(&["b", "a", "c"]), 1);
        assert_eq!(
            first.values().copied().collect::<BTreeSet<_>>(),
            BTreeSet::from([1, 2, 3])
        );
        let second = keep(&first, names(&["c", "d", "a"]), 1);
        assert_eq!(second["a"], first["a"]);
        assert_eq!(second["c"], first["c"]);
        assert_eq!(
            second["d"], 4,
            "an id freed by this change is not reused by it"
        );
        assert!(!second.contains_key("b"));
        let third = keep(&second, names(&["c", "d", "a", "e"]), 1);
        assert_eq!(third["e"], first["b"], "but by the next one");
    }

    /// A small reproducible random source (xorshift64).
    struct Random(u64);

    impl Random {
        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            from[(self.0 % from.len() as u64) as usize]
        }
    }

    /// Random configs over names that join alike with slashes: every distinct ring and
    /// target (told apart by position in the config, not by name) gets its own id.
    #[test]
    fn no_two_distinct_objects_of_random_configs_share_an_id() {
        use std::fmt::Write as _;
        let mut r = Random(0x1d5_c0ff_ee00_0042);
        for _ in 0..300 {
            let mut y = String::from("node: { interfaces: [] }\nservices:\n");
            let services = ["a", "a/b", "b", "a/b/c"];
            let mut chosen = BTreeSet::new();
            for _ in 0..4 {
                chosen.insert(r.pick(&services));
            }
            for service in &chosen {
                let _ = writeln!(y, "  - name: {service}\n    load_balancers:");
                let mut lbs = BTreeSet::new();
                for _ in 0..3 {
                    lbs.insert(r.pick(&["c", "b/c", "c/80", "80"]));
                }
                for lb in lbs {
                    let zone = r.pick(&["z", "z/1", "1"]);
                    let port = r.pick(&["80", "8080"]);
                    let _ = writeln!(
                        y,
                        "      - {{ name: {lb}, zone: {zone}, listeners: [{{ port: {port}, targets: [{{ ip: 10.0.0.1, port: 80 }}, {{ ip: 10.0.0.{}, port: {port} }}] }}] }}",
                        r.pick(&["1", "2"]).parse::<u8>().unwrap() + 1
                    );
                }
            }
            y += "endpoints:\n";
            for e in 0..6 {
                let _ = writeln!(
                    y,
                    "  - {{ id: e{e}, service: {}, principal: p, consumer_network: n, ip: 10.1.0.{e}, zone: {} }}",
                    r.pick(&chosen.iter().copied().collect::<Vec<_>>()),
                    r.pick(&["z", "z/1", "1", "2"])
                );
            }
            let config = crate::config::parse("random", &y).unwrap();
            let ids = Ids::default().assign(&config);

            // Objects by position: (service, load balancer, listener, zone) indices.
            let mut rings = BTreeMap::new();
            for placed in placement::place(&config) {
                let s = config
                    .services
                    .iter()
                    .position(|s| std::ptr::eq(s, placed.service));
                let l = placed
                    .service
                    .load_balancers
                    .iter()
                    .position(|lb| std::ptr::eq(lb, placed.load_balancer));
                for listener in placed.listeners() {
                    let object = (s, l, listener.index, placed.endpoint.zone.clone());
                    rings.insert(object, ids.rings[&listener.ring]);
                }
            }
            let distinct: BTreeSet<u32> = rings.values().copied().collect();
            assert_eq!(distinct.len(), rings.len(), "rings share an id:\n{y}");

            let mut targets = BTreeMap::new();
            for (s, service) in config.services.iter().enumerate() {
                for (l, lb) in service.load_balancers.iter().enumerate() {
                    for (n, listener) in lb.listeners.iter().enumerate() {
                        let key = ListenerKey::of(service, lb, listener);
                        for (t, target) in listener.targets.iter().enumerate() {
                            targets.insert((s, l, n, t), ids.targets[&key.target(target)]);
                        }
                    }
                }
            }
            let distinct: BTreeSet<u32> = targets.values().copied().collect();
            assert_eq!(distinct.len(), targets.len(), "targets share an id:\n{y}");
        }
    }

    #[test]
    fn uids_are_never_given_twice() {
        let config = |ids: &[&str]| {
            let mut y = String::from("node: { interfaces: [] }\nendpoints:\n");
            for id in ids {
                y += &format!(
                    "  - {{ id: {id}, service: s, principal: p, consumer_network: n, ip: 10.0.0.1, zone: z }}\n"
                );
            }
            crate::config::parse("t", &y).unwrap()
        };
        let first = Ids::default().assign(&config(&["a", "b"]));
        let second = first.assign(&config(&["b", "c"]));
        let third = second.assign(&config(&["a", "b", "c"]));
        assert_eq!(second.uids["b"], first.uids["b"]);
        let all = [
            first.uids["a"],
            first.uids["b"],
            second.uids["c"],
            third.uids["a"],
        ];
        assert_eq!(
            all.iter().collect::<BTreeSet<_>>().len(),
            4,
            "a returning endpoint is a new one: {all:?}"
        );
        // Its slot, though, may be an old one's.
        assert_eq!(third.endpoints["a"], first.endpoints["a"]);
    }

    /// Ids an agent kept before IPv6 (rings without a family) are IPv4 rings: an
    /// upgraded agent keeps their numbers.
    #[test]
    fn ids_kept_before_ipv6_keep_their_rings_and_targets() {
        let config = crate::config::parse(
            "t",
            "node: { interfaces: [] }\nservices:\n  - { name: s, load_balancers: [{ name: lb, zone: z, listeners: [{ port: 80, targets: [{ ip: 10.0.0.1, port: 80 }] }] }] }\nendpoints:\n  - { id: e, service: s, principal: p, consumer_network: n, ip: 10.1.0.1, zone: z }\n",
        )
        .unwrap();
        let listener = r#"{"service":"s","load_balancer":"lb","port":80,"protocol":"tcp"}"#;
        let kept = format!(
            r#"{{"networks":{{"n":1}},"endpoints":{{"e":1}},"uids":{{"e":1}},"next_uid":2,
            "rings":[[{{"listener":{listener},"zone":"z"}},7]],
            "targets":[[{{"listener":{listener},"ip":"10.0.0.1","port":80}},9]]}}"#
        );
        let kept: Ids = serde_json::from_str(&kept).unwrap();
        let ids = kept.assign(&config);
        assert_eq!(ids.rings.values().collect::<Vec<_>>(), [&7]);
        assert_eq!(ids.targets.values().collect::<Vec<_>>(), [&9]);
    }

    #[test]
    fn inserting_a_network_that_sorts_first_moves_nobody() {
        let first = keep(&BTreeMap::new(), names(&["vpc-b"]), 1);
        let second = keep(&first, names(&["vpc-a", "vpc-b"]), 1);
        assert_eq!(second["vpc-b"], first["vpc-b"]);
        assert_eq!(second["vpc-a"], 2);
    }
}
