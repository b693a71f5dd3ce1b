use super::*;

fn location() -> Location {
    "etcd://127.0.0.1:2379/fleet".parse().unwrap()
}

const NODE: &str =
    "node:\n  interfaces:\n    - { name: cons-a, role: consumer, consumer_network: vpc-a }\n";

fn model(objects: &[(&str, &str)]) -> Model {
    Model {
        revision: 42,
        objects: objects
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[test]
fn locations_name_hosts_and_a_prefix() {
    let l: Location = "etcd://10.0.0.1:2379,10.0.0.2:2379/fleet/".parse().unwrap();
    assert_eq!(
        l.endpoints,
        ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
    );
    assert_eq!(l.prefix, "/fleet");
    assert_eq!(l.to_string(), "etcd://10.0.0.1:2379,10.0.0.2:2379/fleet");
    for bad in [
        "http://h:1/p",
        "etcd://h:1",
        "etcd://h:1/",
        "etcd://h/p",
        "etcd://h:port/p",
        "etcd://:1/p",
    ] {
        let e = bad.parse::<Location>().unwrap_err().to_string();
        assert!(e.contains("etcd://HOST:PORT"), "{bad}: {e}");
    }
}

#[test]
fn a_composed_config_is_the_node_file_and_every_object() {
    let m = model(&[
        ("dns", "domain: e.internal\n"),
        ("endpoints/vpce-1", "id: vpce-1\nservice: orders\n"),
        ("services/orders", "---\nname: orders\nload_balancers: []\n"),
    ]);
    let c = compose("node.yaml", NODE, &m, &location()).unwrap();
    let value: Value = serde_yaml::from_str(&c.text).unwrap();
    assert_eq!(value["dns"]["domain"], "e.internal");
    assert_eq!(value["services"][0]["name"], "orders");
    assert_eq!(value["endpoints"][0]["service"], "orders");
    assert_eq!(value["node"]["interfaces"][0]["name"], "cons-a");
    assert_eq!(c.revision, 42);
}

#[test]
fn problems_are_reported_at_the_object_and_line_they_come_from() {
    let m = model(&[
        (
            "endpoints/vpce-1",
            "id: vpce-1\nservice: orders\nip: 10.0.0.9\n",
        ),
        ("services/orders", "name: orders\n"),
    ]);
    let c = compose("node.yaml", NODE, &m, &location()).unwrap();
    let line = c
        .text
        .lines()
        .position(|l| l.contains("ip: 10.0.0.9"))
        .unwrap()
        + 1;
    let report = format!(
        "store:{line}: error: endpoint \"vpce-1\" (endpoints[0].ip): bad\nstore:2: error: x\nstore: 2 error(s)"
    );
    assert_eq!(
        c.locate("store", &report),
        "/fleet/model/endpoints/vpce-1:3: error: endpoint \"vpce-1\" (endpoints[0].ip): bad\n\
         node.yaml:2: error: x\netcd://127.0.0.1:2379/fleet at revision 42: 2 error(s)"
    );
}

#[test]
fn objects_must_be_mappings_named_as_their_keys_and_the_node_file_holds_node_only() {
    let m = model(&[
        ("endpoints/vpce-1", "id: vpce-2\n"),
        ("services/orders", "- not a mapping\n"),
        ("services/billing", "name: [unclosed\n"),
        ("other", "x: 1\n"),
    ]);
    let node = format!("{NODE}services: []\n");
    let report = compose("node.yaml", &node, &m, &location())
        .unwrap_err()
        .report;
    for expected in [
        "node.yaml: error: \"services\" belongs in the store",
        "/fleet/model/endpoints/vpce-1: error: its id is Some(\"vpce-2\"), not \"vpce-1\"",
        "/fleet/model/services/orders: error: expected a YAML mapping",
        "/fleet/model/services/billing:",
        "/fleet/model/other: error: not a model key",
        "at revision 42: 5 error(s); nothing was applied",
    ] {
        assert!(report.contains(expected), "{expected:?} in:\n{report}");
    }
}

#[test]
fn a_config_splits_into_one_object_per_key_and_composes_back() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/demo.yaml"
    ))
    .unwrap();
    let objects = split(&text).unwrap();
    assert!(objects.contains_key("dns"));
    assert!(objects.contains_key("services/orders"));
    assert!(objects.contains_key("endpoints/vpce-b-billing"));
    assert!(!objects.keys().any(|k| k.starts_with("node")));
    let original: Value = serde_yaml::from_str(&text).unwrap();
    let node = serde_yaml::to_string(&serde_yaml::Mapping::from_iter([(
        "node".into(),
        original["node"].clone(),
    )]))
    .unwrap();
    let m = Model {
        revision: 1,
        objects,
    };
    let composed: Value =
        serde_yaml::from_str(&compose("n", &node, &m, &location()).unwrap().text).unwrap();
    assert_eq!(composed["dns"], original["dns"]);
    assert_eq!(composed["node"], original["node"]);
    // Services and endpoints come back sorted by key: the same set.
    for section in ["services", "endpoints"] {
        let mut a = original[section].as_sequence().unwrap().clone();
        let mut b = composed[section].as_sequence().unwrap().clone();
        let key = |v: &Value| serde_yaml::to_string(v).unwrap();
        a.sort_by_key(key);
        b.sort_by_key(key);
        assert_eq!(a, b, "{section}");
    }
}

#[test]
fn a_zoned_node_stands_for_its_zones_addresses_that_carry_traffic_and_leaves_the_rest() {
    let config = crate::config::parse(
        "demo",
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/demo.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    // vpce-b-billing waits for acceptance: nobody claims it. vpce-a-orders is
    // dual-stack: each of its addresses is an election of its own.
    assert_eq!(
        claims(&config, "zone-1"),
        BTreeSet::from([
            "zone-1/vpc-a/10.0.0.100".to_string(),
            "zone-1/vpc-a/fd00:a::100".to_string(),
            "zone-1/vpc-b/10.0.0.100".to_string()
        ])
    );
    assert_eq!(
        claims(&config, "zone-2"),
        BTreeSet::from(["zone-2/vpc-b/10.0.0.110".to_string()])
    );
    // This node holds vpc-a's zone-1 address, another node vpc-b's; nobody zone-2's.
    let elections = Elections {
        mine: BTreeSet::from(["zone-1/vpc-a/10.0.0.100".to_string()]),
        held: BTreeSet::from([
            "zone-1/vpc-a/10.0.0.100".to_string(),
            "zone-1/vpc-b/10.0.0.100".to_string(),
        ]),
    };
    let left = failover(&elections);
    let ip = |ip: &str| ip.parse().unwrap();
    assert!(!left.standby("vpc-a", ip("10.0.0.100")));
    assert!(left.standby("vpc-b", ip("10.0.0.100")));
    assert!(!left.unserved("vpc-b", ip("10.0.0.100")));
    // An address no election has seen yet (new since) is neither answered nor named.
    assert!(left.standby("vpc-b", ip("10.0.0.110")) && left.unserved("vpc-b", ip("10.0.0.110")));
    assert!(left.standby("vpc-c", ip("10.9.9.9")) && left.unserved("vpc-c", ip("10.9.9.9")));
}

#[test]
fn claims_keep_names_with_slashes_apart() {
    let a = claim("z/1", "team-a/vpc", "10.0.0.1".parse().unwrap());
    assert_eq!(a, "z%2F1/team-a%2Fvpc/10.0.0.1");
    assert_eq!(
        claimed(&a),
        Some(("team-a/vpc".to_string(), "10.0.0.1".parse().unwrap()))
    );
    assert_eq!(claimed("z/1/vpc/10.0.0.1"), None);
    assert_eq!(claimed("z/vpc/not-an-ip"), None);
}

#[test]
fn a_zones_ipv6_addresses_are_elected_like_its_ipv4_ones() {
    let config = crate::validate::load(
        "t",
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/dual-stack.yaml"
        ))
        .unwrap(),
        &crate::facts::Facts::default(),
    )
    .expect("valid")
    .config;
    let zone = claims(&config, "zone-1");
    let six = "zone-1/vpc-a/fd00:a::100".to_string();
    assert!(
        zone.contains(&six) && zone.contains("zone-1/vpc-a/10.0.0.100"),
        "{zone:?}"
    );
    let ip = "fd00:a::100".parse().unwrap();
    assert_eq!(claimed(&six), Some(("vpc-a".to_string(), ip)));
    let elections = Elections {
        mine: BTreeSet::new(),
        held: BTreeSet::from([six]),
    };
    let left = failover(&elections);
    assert!(left.standby("vpc-a", ip) && !left.unserved("vpc-a", ip));
}
