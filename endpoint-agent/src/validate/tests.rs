//! Every validation error, with the object, field and line it must name.

use std::net::IpAddr;

use super::load;
use crate::facts::Facts;

fn parse(name: &str, text: &str) -> Result<super::Loaded, crate::config::Invalid> {
    load(name, text, &Facts::default())
}

const BASE: &str = "\
node:
  interfaces:
    - name: cons-a
      role: consumer
      consumer_network: vpc-a
    - name: prov
      role: provider
      nat_addresses: [172.16.0.100]
services:
  - name: orders
    acceptance_required: true
    allowed_principals: [team-a]
    load_balancers:
      - name: nlb-1
        zone: z1
        listeners:
          - port: 80
            targets:
              - { ip: 172.16.0.10, port: 8080 }
              - { ip: 172.16.0.11, port: 8080 }
endpoints:
  - id: vpce-1
    service: orders
    principal: team-a
    consumer_network: vpc-a
    ip: 10.0.0.100
    zone: z1
    state: available
    accepted_at: \"2026-11-28T10:00:00Z\"
";

/// Parses BASE with `from` replaced by `to` (which must occur) and returns the report.
fn error(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "BASE has no {from:?}");
    let text = BASE.replacen(from, to, 1);
    match parse("test.yaml", &text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(invalid) => invalid.report,
    }
}

/// The 1-based line of the first line of BASE containing `needle`.
fn line_of(needle: &str) -> usize {
    BASE.lines()
        .position(|l| l.contains(needle))
        .expect("needle")
        + 1
}

fn assert_names(report: &str, parts: &[&str]) {
    for part in parts {
        assert!(report.contains(part), "{part:?} missing from:\n{report}");
    }
}

#[test]
fn base_and_shipped_examples_are_valid() {
    parse("test.yaml", BASE).expect("BASE is valid");
    let example = include_str!("../../../examples/demo.yaml");
    let loaded = parse("demo.yaml", example).expect("the shipped example is valid");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let example = include_str!("../../../examples/dual-stack.yaml");
    let loaded = parse("dual-stack.yaml", example).expect("the dual-stack example is valid");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn syntax_and_type_errors_carry_their_line() {
    let report = error("      role: consumer", "      role: [consumer");
    assert!(report.starts_with("test.yaml:"), "{report}");
    let report = error("port: 8080", "port: 70000");
    assert_names(
        &report,
        &[&format!("test.yaml:{}:", line_of("port: 8080")), "70000"],
    );
}

#[test]
fn unknown_fields_and_values_say_what_is_valid() {
    let report = error("    zone: z1\n    state", "    zonne: z1\n    state");
    assert_names(&report, &["zonne", "expected one of", "zone"]);
    let report = error("state: available", "state: avialable");
    assert_names(
        &report,
        &[
            &format!("test.yaml:{}:", line_of("state: available")),
            "avialable",
            "pendingAcceptance",
        ],
    );
    let report = error("role: provider", "role: router");
    assert_names(&report, &["router", "consumer", "provider", "both"]);
}

#[test]
fn interface_errors() {
    let line = line_of("consumer_network: vpc-a");
    let report = error("      consumer_network: vpc-a\n", "");
    assert_names(
        &report,
        &[
            "interface \"cons-a\"",
            "consumer_network",
            "needs the consumer network",
            &format!(":{}:", line - 2),
        ],
    );

    let report = error(
        "      nat_addresses: [172.16.0.100]",
        "      consumer_network: vpc-b",
    );
    assert_names(
        &report,
        &[
            "interface \"prov\"",
            "only `consumer` and `both`",
            "no NAT address",
        ],
    );

    let report = error("    - name: prov", "    - name: cons-a");
    assert_names(
        &report,
        &[
            "interface \"cons-a\"",
            "listed twice",
            &format!("test.yaml:{}:", line_of("- name: prov")),
        ],
    );

    let report = error("[172.16.0.100]", "[172.16.0.100, 172.16.0.100]");
    assert_names(&report, &["NAT address 172.16.0.100 is listed twice"]);

    let report = error("[172.16.0.100]", "[224.0.0.1]");
    assert_names(&report, &["224.0.0.1 is not a unicast host address"]);

    let report = error(
        "      role: consumer\n",
        "      role: consumer\n      nat_addresses: [172.16.0.101]\n",
    );
    assert_names(
        &report,
        &["NAT addresses live on `provider` or `both` interfaces"],
    );

    let report = error(
        "services:",
        "  nat_ports: { first: 3000, last: 2000 }\nservices:",
    );
    assert_names(&report, &["node.nat_ports", "3000-2000 are not a range"]);
}

#[test]
fn service_errors() {
    let report = error(
        "  - name: orders",
        "  - name: orders\n    load_balancers: []\n  - name: orders",
    );
    assert_names(
        &report,
        &[
            "service \"orders\"",
            "defined twice",
            "at least one load balancer",
        ],
    );

    let report = error("          - port: 80", "          - port: 0");
    assert_names(
        &report,
        &[
            "port 0 is not a listener port",
            &format!(":{}:", line_of("- port: 80")),
        ],
    );

    let report = error("port: 8080 }", "port: 0 }");
    assert_names(
        &report,
        &[
            "load balancer \"nlb-1\" of service \"orders\"",
            "targets[0].port",
            "needs a port",
        ],
    );

    let report = error(
        "              - { ip: 172.16.0.10, port: 8080 }",
        "              - { ip: 172.16.0.10, port: 8080 }\n              - { ip: 172.16.0.10, port: 8080, weight: 2000000 }",
    );
    assert_names(
        &report,
        &[
            "172.16.0.10:8080 listed twice",
            "weight 2000000 is above the maximum",
        ],
    );

    let report = error(
        "endpoints:",
        "      - name: nlb-2\n        zone: z2\n        listeners:\n          - port: 81\n            targets: []\nendpoints:",
    );
    assert_names(
        &report,
        &[
            "load balancer \"nlb-2\"",
            "listens on ports [81/tcp] but the service's first load balancer on [80/tcp]",
            "all load balancers of a service serve the same ports",
        ],
    );

    let report = error(
        "        listeners:\n",
        "        listeners: []\n        x:\n",
    );
    assert_names(&report, &["unknown field `x`"]);
}

#[test]
fn health_check_errors() {
    let lb = "        zone: z1\n        listeners:";
    let bad = "        zone: z1\n        health_check: { interval_seconds: 0, timeout_seconds: 9, unhealthy_threshold: 11, protocol: http, path: health }\n        listeners:";
    let report = error(lb, bad);
    assert_names(
        &report,
        &[
            "health_check.interval_seconds): 0 s: use 1 to 300",
            "health_check.timeout_seconds): 9 s: use 1 to the interval (0 s)",
            "health_check.unhealthy_threshold): 11: use 1 to 10",
            "an HTTP check needs a path starting with '/'",
        ],
    );
    let report = error(
        lb,
        "        zone: z1\n        cross_zone: sometimes\n        listeners:",
    );
    assert_names(&report, &["sometimes", "on_failure", "always", "never"]);
}

#[test]
fn endpoint_errors() {
    let report = error("    service: orders", "    service: ordrs");
    assert_names(
        &report,
        &[
            "endpoint \"vpce-1\"",
            "endpoints[0].service",
            "no service named \"ordrs\"; services: orders",
            &format!("test.yaml:{}:", line_of("service: orders")),
        ],
    );

    let report = error(
        "    consumer_network: vpc-a\n    ip",
        "    consumer_network: vpc-z\n    ip",
    );
    assert_names(
        &report,
        &["no interface faces consumer network \"vpc-z\"; known: vpc-a"],
    );

    let report = error("    principal: team-a", "    principal: team-x");
    assert_names(
        &report,
        &["principal \"team-x\" is not allowed by service \"orders\" (allowed: team-a)"],
    );
    // Not allowed but rejected is a consistent state.
    let text = BASE
        .replace("principal: team-a", "principal: team-x")
        .replace("state: available", "state: rejected");
    parse("test.yaml", &text).expect("a rejected endpoint of a principal not allowed is valid");

    let both = BASE
        .replace(
            "    - name: prov\n      role: provider\n      nat_addresses: [172.16.0.100]\n",
            "",
        )
        .replace(
            "      role: consumer\n      consumer_network: vpc-a",
            "      role: both\n      consumer_network: vpc-a\n      nat_addresses: [10.0.0.100]",
        );
    let report = parse("test.yaml", &both).unwrap_err().report;
    assert_names(
        &report,
        &["10.0.0.100 is also a NAT address of interface \"cons-a\""],
    );

    let duplicate = "  - id: vpce-1\n    service: orders\n    principal: team-a\n    consumer_network: vpc-a\n    ip: 10.0.0.100\n    zone: z1\n    state: pendingAcceptance\n";
    let report = error("endpoints:\n", &format!("endpoints:\n{duplicate}"));
    assert_names(
        &report,
        &[
            "endpoint id used twice",
            "10.0.0.100 in consumer network \"vpc-a\" is already endpoint \"vpce-1\"",
        ],
    );
}

#[test]
fn table_errors() {
    let report = error("services:", "  tables: { endpoints: 0 }\nservices:");
    assert_names(
        &report,
        &[
            "node.tables.endpoints",
            "1 endpoints do not fit in tables.endpoints = 0",
        ],
    );
    let report = error("services:", "  tables: { ring_size: 1000 }\nservices:");
    assert_names(&report, &["ring_size 1000 must be a prime", "e.g. 211"]);
}

#[test]
fn rings_are_counted_per_listener_zone_and_family_of_the_addresses_placed_on_it() {
    // One listener, endpoints in two zones (z2 has no load balancer: placed on z1's),
    // so two rings: `rings: 1` does not fit, with the line of `tables` and the number.
    let second = "  - { id: vpce-2, service: orders, principal: team-a, consumer_network: vpc-a, ip: 10.0.0.101, zone: z2 }\n";
    let text = BASE
        .replace("services:", "  tables: { rings: 1 }\nservices:")
        .to_string()
        + second;
    let report = parse("test.yaml", &text).unwrap_err().report;
    let line = text.lines().position(|l| l.contains("tables:")).unwrap() + 1;
    assert_names(
        &report,
        &[
            &format!("test.yaml:{line}: error: node (node.tables.rings)"),
            "2 rings (one per listener of a load balancer, zone and family of the endpoint addresses placed on it) do not fit in tables.rings = 1",
        ],
    );
    let two = text.replace("rings: 1", "rings: 2");
    parse("test.yaml", &two).expect("two rings fit");
    // A dual-stack endpoint in one zone: a ring per family.
    let dual = dual_stack().replace("services:", "  tables: { rings: 1 }\nservices:");
    let report = parse("test.yaml", &dual).unwrap_err().report;
    assert_names(&report, &["2 rings (one per listener"]);
}

#[test]
fn names_have_a_character_set_and_the_report_says_which() {
    let report = error("  - name: orders", "  - name: \"or ders\"");
    assert_names(
        &report,
        &[
            &format!("test.yaml:{}:", line_of("  - name: orders")),
            "' ' is not allowed in a name (letters, digits and - _ . : /)",
        ],
    );
    let report = error(
        "zone: z1\n        listeners",
        "zone: -z1\n        listeners",
    );
    assert_names(&report, &["\"-z1\": a name starts with a letter or digit"]);
    let report = error("  - id: vpce-1", "  - id: vpce@1");
    assert_names(&report, &["'@' is not allowed in a name"]);
    let report = error(
        "consumer_network: vpc-a\n    - name",
        "consumer_network: \"vpc a\"\n    - name",
    );
    assert_names(&report, &["interface \"cons-a\"", "' ' is not allowed"]);
    let report = error("principal: team-a", "principal: \"team a\"");
    assert_names(&report, &["' ' is not allowed in a principal"]);
    // Slashes, dots and colons are fine: typed ids keep `a/b` + `c` apart from `a` + `b/c`.
    parse(
        "test.yaml",
        &BASE
            .replace("- name: orders", "- name: team-a/orders.v2")
            .replace("service: orders", "service: team-a/orders.v2")
            .replace("- name: nlb-1", "- name: eu:nlb/1"),
    )
    .expect("valid names");
}

#[test]
fn a_nat_address_of_the_node_itself_needs_ports_clear_of_the_ephemeral_range() {
    let own = Facts {
        local_addresses: ["172.16.0.100".parse::<IpAddr>().unwrap()].into(),
        ..Facts::default()
    };
    // The default range is clear of Linux's default ephemeral ports.
    assert!(!BASE.contains("nat_ports"));
    load("test.yaml", BASE, &own).expect("the default NAT ports are clear");
    let wide = BASE.replace(
        "services:",
        "  nat_ports: { first: 1024, last: 40000 }\nservices:",
    );
    load("test.yaml", &wide, &Facts::default()).expect("fine for an address not the node's");
    let report = load("test.yaml", &wide, &own).unwrap_err().report;
    assert_names(
        &report,
        &[
            &format!("test.yaml:{}:", line_of("nat_addresses: [172.16.0.100]")),
            "172.16.0.100 is an address of this node, and NAT ports 1024-40000 overlap",
            "32768-60999, net.ipv4.ip_local_port_range",
        ],
    );
    let moved = Facts {
        ephemeral_ports: (2000, 3000),
        ..own
    };
    let report = load("test.yaml", BASE, &moved).unwrap_err().report;
    assert_names(&report, &["NAT ports 1024-32767 overlap", "(2000-3000"]);
}

#[test]
fn a_public_service_is_a_warning() {
    let text = BASE
        .replace("acceptance_required: true", "acceptance_required: false")
        .replace("[team-a]", "['*']");
    let private = parse("test.yaml", BASE).expect("valid").warnings;
    let public = parse("test.yaml", &text).expect("valid").warnings;
    assert_eq!(public.len(), private.len() + 1, "{public:?}");
    assert!(
        public
            .iter()
            .any(|w| w.contains("makes the service public")),
        "{public:?}"
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let text = BASE
        .replace("service: orders", "service: nope")
        .replace("port: 8080", "port: 0");
    let report = parse("test.yaml", &text).unwrap_err().report;
    assert_names(
        &report,
        &[
            "no service named",
            "needs a port",
            "3 error(s); nothing was applied",
        ],
    );
}

/// BASE's listener on port 80 with a UDP listener on `port` added after it, and
/// `check` (a load balancer field) before the listeners.
fn with_udp(port: u16, check: &str) -> String {
    let text = BASE
        .replace(
            "        listeners:\n",
            &format!("{check}        listeners:\n"),
        )
        .replace(
            "endpoints:",
            &format!(
                "          - port: {port}\n            protocol: udp\n            targets:\n              - {{ ip: 172.16.0.10, port: 8080 }}\nendpoints:"
            ),
        );
    assert_ne!(text, BASE);
    text
}

#[test]
fn udp_listeners_are_accepted() {
    let checked = with_udp(53, "        health_check: { protocol: tcp, port: 8080 }\n");
    let loaded = parse("test.yaml", &checked).expect("a UDP listener checked on a TCP port");
    let listeners = &loaded.config.services[0].load_balancers[0].listeners;
    assert_eq!(listeners[1].protocol, crate::config::Protocol::Udp);
    let http = with_udp(
        53,
        "        health_check: { protocol: http, path: /health, port: 8080 }\n",
    );
    parse("test.yaml", &http).expect("or on an HTTP one");
    let unchecked = with_udp(53, "        health_check: { protocol: none }\n");
    parse("test.yaml", &unchecked).expect("or not checked");
}

#[test]
fn a_port_may_have_a_tcp_and_a_udp_listener_each_with_its_own_ring_and_targets() {
    use crate::{ids::Ids, placement};

    let text = with_udp(80, "        health_check: { port: 8080 }\n");
    let config = parse("test.yaml", &text)
        .expect("TCP and UDP on port 80")
        .config;
    let ids = Ids::default().assign(&config);
    let placed = placement::place(&config);
    let listeners: Vec<_> = placed[0].listeners().collect();
    assert_eq!(listeners.len(), 2);
    assert_ne!(listeners[0].key, listeners[1].key);
    assert_ne!(
        ids.rings[&listeners[0].ring], ids.rings[&listeners[1].ring],
        "two listeners, two rings"
    );
    assert_eq!(placement::rings(&config).len(), 2);
    // The same address under both listeners is two targets.
    let target = &listeners[1].listener.targets[0];
    assert_ne!(
        ids.targets[&listeners[0].key.target(target)],
        ids.targets[&listeners[1].key.target(target)],
    );
    assert_eq!(ids.targets.len(), 3);
}

#[test]
fn a_port_and_protocol_has_one_listener() {
    let twice = with_udp(80, "        health_check: { port: 8080 }\n").replace(
        "endpoints:",
        "          - { port: 80, protocol: udp, targets: [] }\nendpoints:",
    );
    let report = parse("test.yaml", &twice).unwrap_err().report;
    let line = twice
        .lines()
        .position(|l| l.contains("- { port: 80, protocol: udp"))
        .unwrap()
        + 1;
    assert_names(
        &report,
        &[
            &format!("test.yaml:{line}:"),
            "port 80/udp has two listeners",
        ],
    );
    let report = error(
        "endpoints:",
        "          - { port: 80, protocol: tcp, targets: [] }\nendpoints:",
    );
    assert_names(&report, &["port 80/tcp has two listeners"]);
}

#[test]
fn a_udp_listener_checked_over_tcp_or_http_needs_the_check_port() {
    for check in [
        "",
        "        health_check: { protocol: http, path: /health }\n",
    ] {
        let text = with_udp(53, check);
        let report = parse("test.yaml", &text).unwrap_err().report;
        let line = text
            .lines()
            .position(|l| l.contains("protocol: udp"))
            .unwrap()
            + 1;
        assert_names(
            &report,
            &[
                &format!("test.yaml:{line}: error: load balancer \"nlb-1\" of service \"orders\""),
                "listeners[1].protocol",
                "UDP listener 53 needs health_check.port",
                "1 error(s)",
            ],
        );
    }
}

#[test]
fn mss_must_be_one_a_connection_can_be_held_to() {
    for mss in [0, 535, 9001] {
        let report = error(
            "    load_balancers:",
            &format!("    mss: {mss}\n    load_balancers:"),
        );
        assert_names(
            &report,
            &[
                &format!("test.yaml:{}:", line_of("    load_balancers:")),
                "service \"orders\" (services[0].mss)",
                &format!("mss {mss} is not a TCP MSS"),
                "use 536",
                "to 9000",
            ],
        );
    }
    for mss in [536, 1400, 9000] {
        let text = BASE.replace(
            "    load_balancers:",
            &format!("    mss: {mss}\n    load_balancers:"),
        );
        let loaded = parse("test.yaml", &text).expect("an MSS in range");
        assert_eq!(loaded.config.services[0].mss, Some(mss));
    }
}

#[test]
fn udp_idle_timeout_is_checked_like_the_idle_timeout() {
    let config = parse("test.yaml", BASE).expect("valid").config;
    assert_eq!(config.services[0].udp_idle_timeout_seconds, 120);
    for seconds in [0, 9, 86_401] {
        let report = error(
            "    load_balancers:",
            &format!("    udp_idle_timeout_seconds: {seconds}\n    load_balancers:"),
        );
        assert_names(
            &report,
            &[
                &format!("test.yaml:{}:", line_of("    load_balancers:")),
                "services[0].udp_idle_timeout_seconds",
                &format!("{seconds} s is not a UDP idle timeout: use 10 to 86400"),
            ],
        );
    }
}

#[test]
fn icmp_per_second_defaults_to_1000_and_may_be_0() {
    let config = parse("test.yaml", BASE).expect("valid").config;
    assert_eq!(config.node.limits.icmp_per_second, 1000);
    let none = BASE.replace("services:", "  limits: { icmp_per_second: 0 }\nservices:");
    let config = parse("test.yaml", &none).expect("0: no ICMP").config;
    assert_eq!(config.node.limits.icmp_per_second, 0);
}

#[test]
fn a_security_group_rule_may_name_the_protocol_of_its_ports() {
    let udp_only = |rule: &str| {
        with_udp(53, "        health_check: { port: 8080 }\n").replace(
            "    accepted_at:",
            &format!("    security_groups: [{rule}]\n    accepted_at:"),
        )
    };
    parse(
        "test.yaml",
        &udp_only("{ cidr: 10.0.0.0/24, ports: [53], protocol: udp }"),
    )
    .expect("port 53 has a UDP listener");
    let text = udp_only("{ cidr: 10.0.0.0/24, ports: [53], protocol: tcp }");
    let report = parse("test.yaml", &text).unwrap_err().report;
    assert_names(
        &report,
        &[
            "security_groups[0].ports",
            "port 53 is not a tcp listener of service \"orders\" (listeners: [53/udp, 80/tcp])",
        ],
    );
}

/// BASE with a DNS section for vpc-a and `extra` appended to it.
fn with_dns(extra: &str) -> String {
    format!(
        "{BASE}dns:\n  domain: endpoints.internal\n  resolvers:\n    - {{ consumer_network: vpc-a, ip: 10.0.0.2 }}\n{extra}"
    )
}

#[test]
fn dns_and_multi_zone_endpoints_are_accepted() {
    let text = with_dns("").replace(
        "    ip: 10.0.0.100\n    zone: z1\n",
        "    addresses:\n      - { zone: z1, ip: 10.0.0.100 }\n      - { zone: z2, ip: 10.0.1.100 }\n    private_dns: true\n",
    );
    let text = text.replace(
        "    load_balancers:",
        "    private_dns_name: orders.example.com\n    load_balancers:",
    );
    parse("test.yaml", &text).expect("valid");
}

#[test]
fn dns_errors() {
    let check = |text: &str, parts: &[&str]| match parse("test.yaml", text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(invalid) => assert_names(&invalid.report, parts),
    };
    // The resolver address is already the endpoint's; a second one for the network.
    check(
        &with_dns("    - { consumer_network: vpc-a, ip: 10.0.0.100 }\n"),
        &[
            "dns.resolvers[1].ip",
            "10.0.0.100 in consumer network \"vpc-a\" is already endpoint \"vpce-1\"",
            "consumer network \"vpc-a\" has two IPv4 resolver addresses",
        ],
    );
    check(
        &with_dns("").replace("domain: endpoints.internal", "domain: bad_domain.internal"),
        &["dns.domain", "is not a DNS domain"],
    );
    check(
        &with_dns("").replace(
            "consumer_network: vpc-a, ip: 10.0.0.2",
            "consumer_network: vpc-z, ip: 10.0.0.2",
        ),
        &["no interface faces consumer network \"vpc-z\""],
    );
    // An endpoint id that is no DNS label, when names are given.
    check(
        &with_dns("").replace("id: vpce-1", "id: vpce_1"),
        &["endpoints[0].id", "DNS labels are letters, digits and '-'"],
    );
    // private_dns without a name, and without a dns section.
    check(
        &with_dns("").replace(
            "    state: available",
            "    private_dns: true\n    state: available",
        ),
        &[
            "endpoints[0].private_dns",
            "service \"orders\" has no private_dns_name",
        ],
    );
    check(
        &BASE.replace(
            "    state: available",
            "    private_dns: true\n    state: available",
        ),
        &["private_dns needs a dns section"],
    );
    // A private name inside the endpoint domain.
    check(
        &with_dns("")
            .replace(
                "    state: available",
                "    private_dns: true\n    state: available",
            )
            .replace(
                "    load_balancers:",
                "    private_dns_name: orders.endpoints.internal\n    load_balancers:",
            ),
        &["lies in the endpoint domain endpoints.internal"],
    );
    // Addresses and the shorthand at once; two addresses in one zone; neither.
    check(
        &BASE.replace(
            "    zone: z1\n    state",
            "    zone: z1\n    addresses: [{ zone: z2, ip: 10.0.1.1 }]\n    state",
        ),
        &[
            "endpoints[0].addresses",
            "either addresses or ip and zone, not both",
        ],
    );
    check(
        &BASE.replace(
            "    ip: 10.0.0.100\n    zone: z1\n",
            "    addresses:\n      - { zone: z1, ip: 10.0.0.100 }\n      - { zone: z1, ip: 10.0.0.101 }\n",
        ),
        &[
            "endpoints[0].addresses[1].zone",
            "zone \"z1\" has two IPv4 addresses: one per zone and family",
        ],
    );
    check(
        &BASE.replace("    ip: 10.0.0.100\n    zone: z1\n", ""),
        &["an endpoint needs ip and zone (one address), or addresses"],
    );
    // Two endpoints whose names collide in one network: regional "a-z1" vs zonal of "a".
    let colliding = with_dns("")
        .replace("id: vpce-1", "id: a")
        .replacen(
            "endpoints:\n",
            "endpoints:\n  - { id: a-z1, service: orders, principal: team-a, consumer_network: vpc-a, ip: 10.0.0.7, zone: z9, state: rejected }\n",
            1,
        );
    check(
        &colliding,
        &["a-z1.orders.endpoints.internal in consumer network \"vpc-a\" is already"],
    );
    // A zone on a provider interface.
    check(
        &BASE.replace(
            "      role: provider\n",
            "      role: provider\n      zone: z1\n",
        ),
        &["node.interfaces[1].zone", "this one has none"],
    );
}

/// BASE dual-stack: an IPv6 NAT address and target, and the endpoint has an IPv4 and an
/// IPv6 address in z1.
fn dual_stack() -> String {
    let text = BASE
        .replace(
            "nat_addresses: [172.16.0.100]",
            "nat_addresses: [172.16.0.100, fd00:16::100]",
        )
        .replace(
            "              - { ip: 172.16.0.11, port: 8080 }\n",
            "              - { ip: 172.16.0.11, port: 8080 }\n              - { ip: fd00:16::10, port: 8080 }\n",
        )
        .replace(
            "    ip: 10.0.0.100\n    zone: z1\n",
            "    addresses:\n      - { zone: z1, ip: 10.0.0.100 }\n      - { zone: z1, ip: fd00:a::100 }\n",
        );
    assert_eq!(text.matches("fd00").count(), 3);
    text
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_in(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect(needle) + 1
}

#[test]
fn dual_stack_endpoints_ipv6_targets_and_nat_addresses_are_accepted() {
    let text = dual_stack().replace(
        "    accepted_at:",
        "    security_groups:\n      - { cidr: 10.0.0.0/24 }\n      - { cidr: \"fd00:a::/64\", ports: [80] }\n    accepted_at:",
    );
    let loaded = parse("test.yaml", &text).expect("dual-stack");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let addresses = loaded.config.endpoints[0].addresses();
    assert_eq!(
        addresses
            .iter()
            .map(|a| (a.zone.as_str(), a.ip.to_string()))
            .collect::<Vec<_>>(),
        [("z1", "10.0.0.100".into()), ("z1", "fd00:a::100".into())]
    );
    // The shorthand takes an IPv6 address too.
    let single = text.replace(
        "    addresses:\n      - { zone: z1, ip: 10.0.0.100 }\n      - { zone: z1, ip: fd00:a::100 }\n",
        "    ip: fd00:a::100\n    zone: z1\n",
    );
    let single = single.replace("      - { cidr: 10.0.0.0/24 }\n", "");
    parse("test.yaml", &single).expect("an IPv6-only endpoint");
}

#[test]
fn an_endpoint_has_one_address_per_zone_and_family() {
    let text = dual_stack().replace(
        "      - { zone: z1, ip: fd00:a::100 }\n",
        "      - { zone: z1, ip: fd00:a::100 }\n      - { zone: z1, ip: fd00:a::101 }\n",
    );
    let report = parse("test.yaml", &text).unwrap_err().report;
    assert_names(
        &report,
        &[
            &format!("test.yaml:{}:", line_in(&text, "fd00:a::101")),
            "endpoints[0].addresses[2].zone",
            "zone \"z1\" has two IPv6 addresses: one per zone and family",
            "1 error(s)",
        ],
    );
}

#[test]
fn ipv6_addresses_are_global_or_unique_local_unicast() {
    for bad in [
        "\"::\"",
        "\"::1\"",
        "ff02::1",
        "fe80::1",
        "\"::ffff:10.0.0.1\"",
    ] {
        let shown = bad.trim_matches('"');
        let unicast = format!(
            "{shown} is not a unicast host address (IPv6: global or unique-local, not \
             link-local or IPv4-mapped)"
        );
        let text = dual_stack().replace("ip: fd00:a::100", &format!("ip: {bad}"));
        let report = parse("test.yaml", &text).unwrap_err().report;
        assert_names(&report, &["endpoints[0].addresses[1].ip", &unicast]);
        let text = dual_stack().replace("ip: fd00:16::10,", &format!("ip: {bad},"));
        let report = parse("test.yaml", &text).unwrap_err().report;
        assert_names(&report, &["targets[2].ip", &unicast]);
        let text = dual_stack().replace("fd00:16::100]", &format!("{bad}]"));
        let report = parse("test.yaml", &text).unwrap_err().report;
        assert_names(&report, &["nat_addresses[1]", &unicast]);
    }
    let global = dual_stack()
        .replace("fd00:16::", "2001:db8:16::")
        .replace("fd00:a::", "2001:db8:a::");
    parse("test.yaml", &global).expect("global addresses");
}

#[test]
fn an_endpoint_address_needs_targets_of_its_family_in_every_listener() {
    // IPv6 endpoint address, IPv4 targets only: valid, translated (6 to 4).
    let text = BASE.replace("ip: 10.0.0.100", "ip: fd00:a::100");
    parse("test.yaml", &text).expect("an IPv6 address in front of IPv4 targets");
    // IPv4 endpoint address, IPv6 targets only: no 4 to 6.
    let text = BASE
        .replace("[172.16.0.100]", "[fd00:16::100]")
        .replace("ip: 172.16.0.10,", "ip: fd00:16::10,")
        .replace("ip: 172.16.0.11,", "ip: fd00:16::11,");
    let report = parse("test.yaml", &text).unwrap_err().report;
    assert_names(
        &report,
        &[
            &format!("test.yaml:{}:", line_in(&text, "ip: 10.0.0.100")),
            "endpoint \"vpce-1\" (endpoints[0].ip)",
            "IPv4 address 10.0.0.100 of an endpoint whose service \"orders\" has no IPv4 \
             targets on listener(s) 80/tcp of \"nlb-1\" (IPv4 to IPv6 translation is not \
             supported)",
            "1 error(s)",
        ],
    );
    // Every listener counts: a UDP one with IPv6 targets only fails the IPv4 address.
    let text = dual_stack()
        .replace(
            "        listeners:\n",
            "        health_check: { port: 8080 }\n        listeners:\n",
        )
        .replace(
            "endpoints:",
            "          - { port: 53, protocol: udp, targets: [{ ip: fd00:16::10, port: 53 }] }\nendpoints:",
        );
    let report = parse("test.yaml", &text).unwrap_err().report;
    assert_names(
        &report,
        &[
            "endpoints[0].addresses[0].ip",
            "no IPv4 targets on listener(s) 53/udp of \"nlb-1\"",
            "1 error(s)",
        ],
    );
}

#[test]
fn a_target_needs_a_nat_address_of_its_family() {
    let text = dual_stack().replace(", fd00:16::100]", "]");
    let report = parse("test.yaml", &text).unwrap_err().report;
    assert_names(
        &report,
        &[
            &format!("test.yaml:{}:", line_in(&text, "fd00:16::10")),
            "load balancer \"nlb-1\" of service \"orders\" (services[0].load_balancers[0].listeners[0].targets[2].ip)",
            "IPv6 target fd00:16::10, but the node has no IPv6 NAT address to reach it from",
            "1 error(s)",
        ],
    );
}

#[test]
fn ipv6_addresses_are_told_apart_and_found_twice_like_ipv4_ones() {
    // Two spellings of one address.
    let text = dual_stack().replace("fd00:16::100]", "fd00:16::100, \"fd00:16:0::100\"]");
    let report = parse("test.yaml", &text).unwrap_err().report;
    assert_names(&report, &["NAT address fd00:16::100 is listed twice"]);
    let text = dual_stack().replace(
        "              - { ip: fd00:16::10, port: 8080 }\n",
        "              - { ip: fd00:16::10, port: 8080 }\n              - { ip: \"fd00:16:0::10\", port: 8080 }\n",
    );
    let report = parse("test.yaml", &text).unwrap_err().report;
    assert_names(&report, &["target [fd00:16::10]:8080 listed twice"]);
    // Two endpoints with one IPv6 address in a network.
    let second = "  - { id: vpce-2, service: orders, principal: team-a, consumer_network: vpc-a, ip: fd00:a::100, zone: z1 }\n";
    let text = dual_stack() + second;
    let report = parse("test.yaml", &text).unwrap_err().report;
    assert_names(
        &report,
        &["fd00:a::100 in consumer network \"vpc-a\" is already endpoint \"vpce-1\""],
    );
    // An endpoint address that is a NAT address of an interface of both roles.
    let both = dual_stack()
        .replace(
            "    - name: prov\n      role: provider\n      nat_addresses: [172.16.0.100, fd00:16::100]\n",
            "",
        )
        .replace(
            "      role: consumer\n      consumer_network: vpc-a",
            "      role: both\n      consumer_network: vpc-a\n      nat_addresses: [172.16.0.100, fd00:a::100]",
        );
    let report = parse("test.yaml", &both).unwrap_err().report;
    assert_names(
        &report,
        &["fd00:a::100 is also a NAT address of interface \"cons-a\""],
    );
    // An IPv6 NAT address of the node itself, with NAT ports over the kernel's.
    let own = Facts {
        local_addresses: ["fd00:16::100".parse::<IpAddr>().unwrap()].into(),
        ..Facts::default()
    };
    let wide = dual_stack().replace(
        "services:",
        "  nat_ports: { first: 1024, last: 40000 }\nservices:",
    );
    let report = load("test.yaml", &wide, &own).unwrap_err().report;
    assert_names(
        &report,
        &[
            "nat_addresses[1]",
            "fd00:16::100 is an address of this node",
        ],
    );
}

#[test]
fn a_security_group_cidr_needs_an_endpoint_address_of_its_family() {
    let rule = |cidr: &str| {
        BASE.replace(
            "    accepted_at:",
            &format!("    security_groups: [{{ cidr: \"{cidr}\" }}]\n    accepted_at:"),
        )
    };
    let report = parse("test.yaml", &rule("fd00:a::/64")).unwrap_err().report;
    assert_names(
        &report,
        &[
            "endpoints[0].security_groups[0].cidr",
            "fd00:a::/64 is an IPv6 CIDR, but the endpoint has no IPv6 address: the rule \
             could never match",
        ],
    );
    let text = dual_stack()
        .replace("      - { zone: z1, ip: 10.0.0.100 }\n", "")
        .replace(
            "    accepted_at:",
            "    security_groups: [{ cidr: 10.0.0.0/24 }]\n    accepted_at:",
        );
    let report = parse("test.yaml", &text).unwrap_err().report;
    assert_names(
        &report,
        &["10.0.0.0/24 is an IPv4 CIDR, but the endpoint has no IPv4 address"],
    );
    let text = dual_stack().replace(
        "    accepted_at:",
        "    security_groups: [{ cidr: \"fd00:a::1/64\" }]\n    accepted_at:",
    );
    let report = parse("test.yaml", &text).unwrap_err().report;
    assert_names(
        &report,
        &["fd00:a::1/64 has host bits set; did you mean fd00:a::/64?"],
    );
}

#[test]
fn a_network_has_a_resolver_address_of_each_family_at_most() {
    let both = with_dns("    - { consumer_network: vpc-a, ip: 'fd00:a::2' }\n");
    parse("test.yaml", &both).expect("one of each family");
    let report = parse(
        "test.yaml",
        &with_dns(
            "    - { consumer_network: vpc-a, ip: 'fd00:a::2' }\n    - { consumer_network: vpc-a, ip: 'fd00:a::3' }\n    - { consumer_network: vpc-a, ip: 'fe80::2' }\n",
        ),
    )
    .unwrap_err()
    .report;
    assert_names(
        &report,
        &[
            "dns.resolvers[2].consumer_network",
            "consumer network \"vpc-a\" has two IPv6 resolver addresses",
            "dns.resolvers[3].ip",
            "fe80::2 is not a unicast host address",
        ],
    );
}

#[test]
fn nat_ports_run_out_per_target_over_the_nat_addresses_of_its_family() {
    // 100 ports, two IPv4 targets and one IPv6 target; one IPv4 NAT address and three
    // IPv6 ones: 2 x 100 + 1 x 300 pairs.
    let text = dual_stack()
        .replace("fd00:16::100]", "fd00:16::100, fd00:16::101, fd00:16::102]")
        .replace(
            "services:",
            "  nat_ports: { first: 1024, last: 1123 }\nservices:",
        );
    let warnings = parse("test.yaml", &text).expect("valid").warnings;
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("NAT ports run out at 500 connections")),
        "{warnings:?}"
    );
}
