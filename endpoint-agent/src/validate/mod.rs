//! Validate: every check a config must pass before anything is applied, for the node it
//! is applied on ([`Facts`]). Each problem names the object, the field (as a path the
//! line index resolves, so the report gives its line) and what would be valid.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::IpAddr,
    path::Path,
};

use endpoint_common::{
    dns::MAX_APEX_LABELS,
    maps::{Addr, MAX_IFINDEX, MAX_NAME_ADDRESSES},
};

use crate::{
    config::{self, Config, HealthProtocol, Invalid, Lines, Protocol, State, family_name},
    facts::Facts,
    placement,
};

/// A valid config and the warnings it raised.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Reads and checks the file at `path` for the node `facts` describe.
pub fn load_file(path: &Path, facts: &Facts) -> Result<Loaded, Invalid> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Invalid {
        report: format!("{name}: cannot read: {e}"),
    })?;
    load(&name, &text, facts)
}

/// Parses and checks `text` (named `name` in messages) for the node `facts` describe:
/// every error at once, each with its line, or the config and its warnings.
pub fn load(name: &str, text: &str, facts: &Facts) -> Result<Loaded, Invalid> {
    let config = config::parse(name, text)?;
    let lines = Lines::index(text);
    let render = |p: &Problem| {
        let at = lines
            .find(&p.path)
            .map_or(String::new(), |at| format!("{}:", at.line));
        format!("{name}:{at} {p}")
    };
    let problems = validate(&config, facts);
    let (errors, warnings): (Vec<_>, Vec<_>) =
        problems.iter().partition(|p| p.severity == Severity::Error);
    if !errors.is_empty() {
        let mut report: Vec<String> = errors.iter().map(|p| render(p)).collect();
        report.push(format!(
            "{name}: {} error(s); nothing was applied",
            errors.len()
        ));
        return Err(Invalid {
            report: report.join("\n"),
        });
    }
    Ok(Loaded {
        config,
        warnings: warnings.iter().map(|p| render(p)).collect(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    /// The object, in the product's words: `endpoint "vpce-1"`.
    pub object: String,
    /// The field's path in the file: `endpoints[3].service`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{severity}: {} ({}): {}",
            self.object, self.path, self.message
        )
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn error(&mut self, object: &str, path: String, message: String) {
        self.push(Severity::Error, object, path, message);
    }

    fn warning(&mut self, object: &str, path: String, message: String) {
        self.push(Severity::Warning, object, path, message);
    }

    fn push(&mut self, severity: Severity, object: &str, path: String, message: String) {
        self.0.push(Problem {
            severity,
            object: object.to_string(),
            path,
            message,
        });
    }
}

/// All problems of `config` on the node `facts` describe, errors and warnings.
pub fn validate(config: &Config, facts: &Facts) -> Vec<Problem> {
    let mut problems = Problems::default();
    let networks = node(config, facts, &mut problems);
    services(config, &mut problems);
    endpoints(config, &networks, &mut problems);
    dns(config, &networks, &mut problems);
    tables(config, &mut problems);
    problems.0
}

/// Services, load balancers, endpoints, consumer networks and zones are named with
/// letters, digits and `-_.:/`, starting with a letter or digit, at most this long.
pub const NAME_LENGTH: usize = 128;

/// Why `name` is not a name, if it is not.
fn bad_name(name: &str) -> Option<String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.:/".contains(c);
    if name.is_empty() || name.len() > NAME_LENGTH {
        return Some(format!(
            "{name:?}: a name has 1 to {NAME_LENGTH} characters"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Some(format!("{name:?}: a name starts with a letter or digit"));
    }
    name.chars().find(|&c| !allowed(c)).map(|c| {
        format!("{name:?}: {c:?} is not allowed in a name (letters, digits and - _ . : /)")
    })
}

/// Principals are account names or ARNs: letters, digits and `-_.:/@+=,`, or `*`
/// (anyone) in a service's `allowed_principals`.
fn bad_principal(principal: &str) -> Option<String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.:/@+=,".contains(c);
    if principal.is_empty() || principal.len() > 256 {
        return Some(format!(
            "{principal:?}: a principal has 1 to 256 characters"
        ));
    }
    principal.chars().find(|&c| !allowed(c)).map(|c| {
        format!(
            "{principal:?}: {c:?} is not allowed in a principal (letters, digits and - _ . : / @ + = ,)"
        )
    })
}

impl Problems {
    /// Reports `name` at `path` if it is not a name.
    fn name(&mut self, object: &str, path: String, name: &str) {
        if let Some(why) = bad_name(name) {
            self.error(object, path, why);
        }
    }
}

/// Why `ip` is not a usable unicast host address, if it is not. IPv6: global or
/// unique-local only (a link-local address means nothing off its link, and an
/// IPv4-mapped one is IPv4 traffic in disguise).
fn not_unicast(ip: IpAddr) -> Option<String> {
    let usable = match ip {
        IpAddr::V4(ip) => {
            !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback())
        }
        IpAddr::V6(ip) => {
            !(ip.is_unspecified()
                || ip.is_loopback()
                || ip.is_multicast()
                || ip.is_unicast_link_local()
                || ip.to_ipv4_mapped().is_some())
        }
    };
    match (usable, ip) {
        (true, _) => None,
        (false, IpAddr::V4(_)) => Some(format!("{ip} is not a unicast host address")),
        (false, IpAddr::V6(_)) => Some(format!(
            "{ip} is not a unicast host address (IPv6: global or unique-local, not \
             link-local or IPv4-mapped)"
        )),
    }
}

/// "IPv4" or "IPv6", as messages name `ip`'s family.
fn family(ip: IpAddr) -> &'static str {
    family_name(Addr::family_of(ip))
}

fn list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<_> = names.into_iter().collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// Checks the node; returns its consumer networks.
fn node(config: &Config, facts: &Facts, problems: &mut Problems) -> BTreeSet<String> {
    let node = &config.node;
    let mut networks = BTreeSet::new();
    let mut names = BTreeSet::new();
    let mut nat_addresses = BTreeSet::new();
    if node.interfaces.is_empty() {
        problems.error(
            "node",
            "node.interfaces".into(),
            "no interfaces: list at least one consumer and one provider interface".into(),
        );
    }
    if let Some(zone) = &node.zone {
        problems.name("node", "node.zone".into(), zone);
    }
    for (i, interface) in node.interfaces.iter().enumerate() {
        let object = format!("interface {:?}", interface.name);
        let path = |field: &str| format!("node.interfaces[{i}].{field}");
        if interface.name.is_empty()
            || interface.name.len() > 15
            || interface
                .name
                .contains(|c: char| c == '/' || c.is_whitespace())
        {
            problems.error(
                &object,
                path("name"),
                "an interface name has 1 to 15 characters, none of them '/' or blank".into(),
            );
        }
        if !names.insert(interface.name.as_str()) {
            problems.error(&object, path("name"), "interface listed twice".into());
        }
        if let Some(link) = facts.links.get(&interface.name)
            && link.ifindex >= MAX_IFINDEX
        {
            problems.error(
                &object,
                path("name"),
                format!(
                    "its ifindex {} is above what the program's interface table holds \
                     ({MAX_IFINDEX}): re-create the interface or renumber it",
                    link.ifindex
                ),
            );
        }
        match (&interface.consumer_network, interface.role.consumer()) {
            (Some(network), true) if !network.is_empty() => {
                problems.name(&object, path("consumer_network"), network);
                networks.insert(network.clone());
            }
            (_, true) => problems.error(
                &object,
                path("consumer_network"),
                "a consumer interface needs the consumer network (VPC) behind it".into(),
            ),
            (Some(_), false) => problems.error(
                &object,
                path("consumer_network"),
                "only `consumer` and `both` interfaces face a consumer network".into(),
            ),
            (None, false) => {}
        }
        if !interface.nat_addresses.is_empty() && !interface.role.provider() {
            problems.error(
                &object,
                path("nat_addresses"),
                "NAT addresses live on `provider` or `both` interfaces".into(),
            );
        }
        for (j, &addr) in interface.nat_addresses.iter().enumerate() {
            if let Some(why) = not_unicast(addr) {
                problems.error(&object, path(&format!("nat_addresses[{j}]")), why);
            }
            if !nat_addresses.insert(addr) {
                problems.error(
                    &object,
                    path(&format!("nat_addresses[{j}]")),
                    format!("NAT address {addr} is listed twice"),
                );
            }
        }
    }
    if nat_addresses.len() > config::MAX_NAT_ADDRESSES as usize {
        problems.error(
            "node",
            "node.interfaces".into(),
            format!(
                "{} NAT addresses; a node has at most {}",
                nat_addresses.len(),
                config::MAX_NAT_ADDRESSES
            ),
        );
    }
    if !node.interfaces.is_empty() {
        if networks.is_empty() {
            problems.error(
                "node",
                "node.interfaces".into(),
                "no consumer interface: endpoints would be unreachable".into(),
            );
        }
        if nat_addresses.is_empty() {
            problems.error(
                "node",
                "node.interfaces".into(),
                "no NAT address: give a provider interface `nat_addresses`".into(),
            );
        }
    }
    let ports = node.nat_ports;
    if ports.first == 0 || ports.first > ports.last {
        problems.error(
            "node",
            "node.nat_ports".into(),
            format!(
                "NAT ports {}-{} are not a range: need 1 <= first <= last <= 65535",
                ports.first, ports.last
            ),
        );
    }
    // Replies to the node's own connections come back to its own address, to a port
    // the kernel picked: inside the NAT range they would be taken for stray replies.
    let (first, last) = facts.ephemeral_ports;
    if ports.first <= last && first <= ports.last {
        for (i, interface) in node.interfaces.iter().enumerate() {
            for (j, &addr) in interface.nat_addresses.iter().enumerate() {
                if facts.local_addresses.contains(&addr) {
                    problems.error(
                        &format!("interface {:?}", interface.name),
                        format!("node.interfaces[{i}].nat_addresses[{j}]"),
                        format!(
                            "{addr} is an address of this node, and NAT ports {}-{} overlap \
                             the ports the kernel picks for the node's own connections \
                             ({first}-{last}, net.ipv4.ip_local_port_range): replies to them \
                             (health checks included) would be dropped as stray replies; set \
                             node.nat_ports clear of that range",
                            ports.first, ports.last
                        ),
                    );
                }
            }
        }
    }
    networks
}

fn services(config: &Config, problems: &mut Problems) {
    // A target is reached from a NAT address of its own family.
    let nat_families: BTreeSet<&str> = config
        .node
        .interfaces
        .iter()
        .flat_map(|i| &i.nat_addresses)
        .map(|&ip| family(ip))
        .collect();
    let mut names = BTreeSet::new();
    for (s, service) in config.services.iter().enumerate() {
        let object = format!("service {:?}", service.name);
        let path = |field: &str| format!("services[{s}].{field}");
        problems.name(&object, path("name"), &service.name);
        for (p, principal) in service.allowed_principals.iter().enumerate() {
            if let Some(why) = bad_principal(principal).filter(|_| principal != "*") {
                problems.error(&object, path(&format!("allowed_principals[{p}]")), why);
            }
        }
        if !names.insert(service.name.as_str()) {
            problems.error(&object, path("name"), "service defined twice".into());
        }
        if service.allowed_principals.iter().any(|p| p == "*") && !service.acceptance_required {
            problems.warning(
                &object,
                path("allowed_principals"),
                "`*` without acceptance_required makes the service public: anyone's endpoint \
                 is available at once"
                    .into(),
            );
        }
        if service.load_balancers.is_empty() {
            problems.error(
                &object,
                path("load_balancers"),
                "a service needs at least one load balancer".into(),
            );
        }
        if !(10..=86_400).contains(&service.idle_timeout_seconds) {
            problems.error(
                &object,
                path("idle_timeout_seconds"),
                format!(
                    "{} s is not an idle timeout: use 10 to 86400 (PrivateLink uses 350)",
                    service.idle_timeout_seconds
                ),
            );
        }
        if !(10..=86_400).contains(&service.udp_idle_timeout_seconds) {
            problems.error(
                &object,
                path("udp_idle_timeout_seconds"),
                format!(
                    "{} s is not a UDP idle timeout: use 10 to 86400 (an NLB uses 120)",
                    service.udp_idle_timeout_seconds
                ),
            );
        }
        if let Some(mss) = service.mss
            && !(MIN_MSS..=MAX_MSS).contains(&mss)
        {
            problems.error(
                &object,
                path("mss"),
                format!(
                    "mss {mss} is not a TCP MSS connections can be held to: use {MIN_MSS} \
                     (what every IPv4 host accepts) to {MAX_MSS} (jumbo frames), or leave it \
                     out for what the interfaces' MTUs allow"
                ),
            );
        }
        if let Some(name) = &service.private_dns_name
            && !dns_name(name)
        {
            problems.error(
                &object,
                path("private_dns_name"),
                format!(
                    "{name:?} is not a DNS name: dot-separated labels of letters, digits \
                         and '-', each 1-63 characters, 253 in all"
                ),
            );
        }
        limits(&object, &path("limits"), &service.limits, problems);
        let mut lb_names = BTreeSet::new();
        let mut first_ports: Option<BTreeSet<(u16, Protocol)>> = None;
        for (l, lb) in service.load_balancers.iter().enumerate() {
            let path = |field: &str| format!("services[{s}].load_balancers[{l}].{field}");
            let lb_object = format!("load balancer {:?} of service {:?}", lb.name, service.name);
            problems.name(&lb_object, path("name"), &lb.name);
            if !lb_names.insert(lb.name.as_str()) {
                problems.error(
                    &lb_object,
                    path("name"),
                    "load balancer listed twice".into(),
                );
            }
            problems.name(&lb_object, path("zone"), &lb.zone);
            let check = &lb.health_check;
            let field = |f: &str| path(&format!("health_check.{f}"));
            if !(1..=300).contains(&check.interval_seconds) {
                problems.error(
                    &lb_object,
                    field("interval_seconds"),
                    format!("{} s: use 1 to 300", check.interval_seconds),
                );
            }
            if check.timeout_seconds == 0 || check.timeout_seconds > check.interval_seconds {
                problems.error(
                    &lb_object,
                    field("timeout_seconds"),
                    format!(
                        "{} s: use 1 to the interval ({} s)",
                        check.timeout_seconds, check.interval_seconds
                    ),
                );
            }
            for (name, value) in [
                ("healthy_threshold", check.healthy_threshold),
                ("unhealthy_threshold", check.unhealthy_threshold),
            ] {
                if !(1..=10).contains(&value) {
                    problems.error(&lb_object, field(name), format!("{value}: use 1 to 10"));
                }
            }
            if check.protocol == HealthProtocol::Http
                && (!check.path.starts_with('/') || !(100..=599).contains(&check.expect_status))
            {
                problems.error(
                    &lb_object,
                    field("path"),
                    format!(
                        "an HTTP check needs a path starting with '/' and a status 100-599 (have \
                         {:?}, {})",
                        check.path, check.expect_status
                    ),
                );
            }
            if check.port == Some(0) {
                problems.error(&lb_object, field("port"), "port 0 cannot be checked".into());
            }
            if lb.listeners.is_empty() || lb.listeners.len() > config::MAX_LISTENERS as usize {
                problems.error(
                    &lb_object,
                    path("listeners"),
                    format!(
                        "a load balancer has 1 to {} listeners, not {}",
                        config::MAX_LISTENERS,
                        lb.listeners.len()
                    ),
                );
            }
            let mut ports = BTreeSet::new();
            for (n, listener) in lb.listeners.iter().enumerate() {
                let path = |field: &str| {
                    format!("services[{s}].load_balancers[{l}].listeners[{n}].{field}")
                };
                if listener.port == 0 {
                    problems.error(
                        &lb_object,
                        path("port"),
                        "port 0 is not a listener port".into(),
                    );
                }
                if !ports.insert((listener.port, listener.protocol)) {
                    problems.error(
                        &lb_object,
                        path("port"),
                        format!(
                            "port {}/{} has two listeners (a port may have one TCP and one \
                             UDP listener)",
                            listener.port, listener.protocol
                        ),
                    );
                }
                // UDP has no handshake to check a target with: as an NLB does, the agent
                // checks over TCP or HTTP, on a port the target serves those on.
                if listener.protocol == Protocol::Udp
                    && check.protocol != HealthProtocol::None
                    && check.port.is_none()
                {
                    problems.error(
                        &lb_object,
                        path("protocol"),
                        format!(
                            "UDP listener {} needs health_check.port: UDP targets are checked \
                             over {} on a port they serve it on, as by an NLB (or set \
                             health_check.protocol: none)",
                            listener.port,
                            if check.protocol == HealthProtocol::Http {
                                "HTTP"
                            } else {
                                "TCP"
                            }
                        ),
                    );
                }
                if listener.targets.is_empty() {
                    problems.warning(
                        &lb_object,
                        path("targets"),
                        format!(
                            "listener {} has no targets: its connections are dropped",
                            listener.port
                        ),
                    );
                }
                let mut seen = BTreeSet::new();
                for (t, target) in listener.targets.iter().enumerate() {
                    let field = |f: &str| format!("{}[{t}].{f}", path("targets"));
                    if let Some(why) = not_unicast(target.ip) {
                        problems.error(&lb_object, field("ip"), why);
                    }
                    // No NAT address at all is reported once, for the node.
                    let f = family(target.ip);
                    if !nat_families.is_empty() && !nat_families.contains(f) {
                        problems.error(
                            &lb_object,
                            field("ip"),
                            format!(
                                "{f} target {}, but the node has no {f} NAT address to reach \
                                 it from: give a provider interface one in nat_addresses",
                                target.ip
                            ),
                        );
                    }
                    if target.port == 0 {
                        problems.error(
                            &lb_object,
                            field("port"),
                            "a target needs a port (1-65535)".into(),
                        );
                    }
                    if let Some(zone) = &target.zone {
                        problems.name(&lb_object, field("zone"), zone);
                    }
                    if target.weight > 1_000_000 {
                        problems.error(
                            &lb_object,
                            field("weight"),
                            format!("weight {} is above the maximum, 1000000", target.weight),
                        );
                    }
                    if !seen.insert((target.ip, target.port)) {
                        problems.error(
                            &lb_object,
                            field("ip"),
                            format!(
                                "target {} listed twice",
                                std::net::SocketAddr::new(target.ip, target.port)
                            ),
                        );
                    }
                }
            }
            match &first_ports {
                None => first_ports = Some(ports),
                Some(first) if *first != ports => problems.error(
                    &lb_object,
                    path("listeners"),
                    format!(
                        "listens on ports {} but the service's first load balancer on {}: all \
                         load balancers of a service serve the same ports",
                        listed_ports(&ports),
                        listed_ports(first)
                    ),
                ),
                Some(_) => {}
            }
        }
    }
}

/// A service's `mss`: at least what every IPv4 host accepts (RFC 879), at most a jumbo
/// frame's worth.
const MIN_MSS: u16 = 536;
const MAX_MSS: u16 = 9000;

/// Listener ports as people write them: `[80/tcp, 53/udp]`.
fn listed_ports(ports: &BTreeSet<(u16, Protocol)>) -> String {
    let ports: Vec<String> = ports
        .iter()
        .map(|(p, proto)| format!("{p}/{proto}"))
        .collect();
    format!("[{}]", ports.join(", "))
}

fn endpoints(config: &Config, networks: &BTreeSet<String>, problems: &mut Problems) {
    let services: HashMap<&str, &config::Service> = config
        .services
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    let mut ids = BTreeSet::new();
    // (network, ip) → endpoint id that has it.
    let mut bound: BTreeMap<(&str, IpAddr), &str> = BTreeMap::new();
    for (e, endpoint) in config.endpoints.iter().enumerate() {
        let object = format!("endpoint {:?}", endpoint.id);
        let path = |field: &str| format!("endpoints[{e}].{field}");
        problems.name(&object, path("id"), &endpoint.id);
        let addresses = endpoint.addresses();
        match (&endpoint.ip, &endpoint.zone, endpoint.addresses.is_empty()) {
            (Some(_), Some(_), true) | (None, None, false) => {}
            (_, _, false) => problems.error(
                &object,
                path("addresses"),
                "give either addresses or ip and zone, not both".into(),
            ),
            _ => problems.error(
                &object,
                path("ip"),
                "an endpoint needs ip and zone (one address), or addresses (one per zone and \
                 family)"
                    .into(),
            ),
        }
        // A zone has one address per family (a dual-stack endpoint: an IPv4 and an IPv6
        // one), which its zonal name answers.
        let mut zoned = BTreeSet::new();
        for (n, address) in addresses.iter().enumerate() {
            problems.name(
                &object,
                path(&endpoint.address_path(n, "zone")),
                &address.zone,
            );
            let f = family(address.ip);
            if !zoned.insert((address.zone.as_str(), f)) {
                problems.error(
                    &object,
                    path(&endpoint.address_path(n, "zone")),
                    format!(
                        "zone {:?} has two {f} addresses: one per zone and family",
                        address.zone
                    ),
                );
            }
        }
        let zones: BTreeSet<&str> = zoned.iter().map(|(zone, _)| *zone).collect();
        if zones.len() > MAX_NAME_ADDRESSES {
            problems.error(
                &object,
                path("addresses"),
                format!(
                    "addresses in {} zones; an endpoint has addresses in at most \
                     {MAX_NAME_ADDRESSES} zones (one per zone and family)",
                    zones.len()
                ),
            );
        }
        if let Some(why) = bad_principal(&endpoint.principal) {
            problems.error(&object, path("principal"), why);
        }
        if !ids.insert(endpoint.id.as_str()) {
            problems.error(&object, path("id"), "endpoint id used twice".into());
        }
        if !networks.contains(&endpoint.consumer_network) {
            problems.error(
                &object,
                path("consumer_network"),
                format!(
                    "no interface faces consumer network {:?}; known: {}",
                    endpoint.consumer_network,
                    list(networks.iter().map(String::as_str))
                ),
            );
        }
        for (n, address) in addresses.iter().enumerate() {
            let ip = address.ip;
            let at = path(&endpoint.address_path(n, "ip"));
            if let Some(why) = not_unicast(ip) {
                problems.error(&object, at.clone(), why);
            }
            // On an interface of both roles one address cannot be an endpoint and a NAT
            // address: both are answered there.
            for interface in &config.node.interfaces {
                if interface.consumer_network.as_ref() == Some(&endpoint.consumer_network)
                    && interface.nat_addresses.contains(&ip)
                {
                    problems.error(
                        &object,
                        at.clone(),
                        format!(
                            "{ip} is also a NAT address of interface {:?}, which faces this \
                             consumer network: use another address",
                            interface.name
                        ),
                    );
                }
            }
            // An address belongs to one endpoint: the node answers ARP for it on its
            // behalf.
            let slot = (endpoint.consumer_network.as_str(), ip);
            if let Some(other) = bound.insert(slot, endpoint.id.as_str()) {
                problems.error(
                    &object,
                    at,
                    format!(
                        "{ip} in consumer network {:?} is already endpoint {other:?}: each \
                         endpoint has an address of its own",
                        endpoint.consumer_network
                    ),
                );
            }
        }
        let Some(service) = services.get(endpoint.service.as_str()) else {
            problems.error(
                &object,
                path("service"),
                format!(
                    "no service named {:?}; services: {}",
                    endpoint.service,
                    list(config.services.iter().map(|s| s.name.as_str()))
                ),
            );
            continue;
        };
        // An address's flows go to targets of its family, or an IPv6 address's to IPv4
        // ones (translated): every listener it may be placed on needs one (an empty
        // listener is warned about on its own).
        for (n, address) in addresses.iter().enumerate() {
            let f = family(address.ip);
            let lacking: Vec<String> = service
                .load_balancers
                .iter()
                .flat_map(|lb| {
                    lb.listeners
                        .iter()
                        .filter(|l| !l.targets.is_empty())
                        .filter(move |l| l.target_family(Addr::family_of(address.ip)).is_none())
                        .map(move |l| format!("{}/{} of {:?}", l.port, l.protocol, lb.name))
                })
                .collect();
            if lacking.is_empty() {
                continue;
            }
            problems.error(
                &object,
                path(&endpoint.address_path(n, "ip")),
                format!(
                    "{f} address {} of an endpoint whose service {:?} has no {f} targets on \
                     listener(s) {} (IPv4 to IPv6 translation is not supported)",
                    address.ip,
                    service.name,
                    lacking.join(", ")
                ),
            );
        }
        let allowed = crate::acceptance::allowed(service, &endpoint.principal);
        if !allowed && endpoint.state == Some(State::Available) {
            problems.error(
                &object,
                path("principal"),
                format!(
                    "principal {:?} is not allowed by service {:?} (allowed: {}), so the \
                     endpoint cannot be available; set state: rejected or allow the principal",
                    endpoint.principal,
                    service.name,
                    list(service.allowed_principals.iter().map(String::as_str))
                ),
            );
        }
        if endpoint.state == Some(State::Available)
            && service.acceptance_required
            && endpoint.accepted_at.is_none()
        {
            problems.error(
                &object,
                path("state"),
                format!(
                    "available, but service {:?} requires acceptance and the endpoint was \
                     never accepted (no accepted_at): run `endpoint-agent accept {}`",
                    service.name, endpoint.id
                ),
            );
        }
        if let Some(at) = &endpoint.accepted_at
            && humantime::parse_rfc3339_weak(at).is_err()
        {
            problems.error(
                &object,
                path("accepted_at"),
                format!("{at:?} is not a time like \"2026-11-28T23:00:00Z\""),
            );
        }
        let ports = service
            .load_balancers
            .first()
            .map(|lb| {
                lb.listeners
                    .iter()
                    .map(|l| (l.port, l.protocol))
                    .collect::<BTreeSet<_>>()
            })
            .unwrap_or_default();
        let rules = endpoint.security_groups.as_deref().unwrap_or_default();
        if rules.len() > MAX_SECURITY_GROUP_RULES {
            problems.error(
                &object,
                path("security_groups"),
                format!(
                    "{} rules; an endpoint has at most {MAX_SECURITY_GROUP_RULES}",
                    rules.len()
                ),
            );
        }
        let families: BTreeSet<&str> = addresses.iter().map(|a| family(a.ip)).collect();
        for (r, rule) in rules.iter().enumerate() {
            let field = |f: &str| format!("endpoints[{e}].security_groups[{r}].{f}");
            let f = family(rule.cidr.addr());
            if !families.is_empty() && !families.contains(f) {
                problems.error(
                    &object,
                    field("cidr"),
                    format!(
                        "{} is an {f} CIDR, but the endpoint has no {f} address: the rule \
                         could never match",
                        rule.cidr
                    ),
                );
            }
            if rule.cidr != rule.cidr.trunc() {
                problems.error(
                    &object,
                    field("cidr"),
                    format!(
                        "{} has host bits set; did you mean {}?",
                        rule.cidr,
                        rule.cidr.trunc()
                    ),
                );
            }
            for port in rule.ports.iter().flatten() {
                let listens = ports
                    .iter()
                    .any(|(p, proto)| p == port && rule.protocol.is_none_or(|r| r == *proto));
                if !listens {
                    let what = rule
                        .protocol
                        .map_or(String::new(), |p| format!("{} ", p.name()));
                    problems.error(
                        &object,
                        field("ports"),
                        format!(
                            "port {port} is not a {what}listener of service {:?} (listeners: {})",
                            service.name,
                            listed_ports(&ports)
                        ),
                    );
                }
            }
        }
        limits(
            &object,
            &format!("endpoints[{e}].limits"),
            &endpoint.limits,
            problems,
        );
    }
}

/// Limits given are at least 1 (leave one out for none).
fn limits(object: &str, path: &str, limits: &config::Limits, problems: &mut Problems) {
    for (field, value) in [
        ("connections", limits.connections),
        (
            "new_connections_per_second",
            limits.new_connections_per_second,
        ),
        ("burst", limits.burst),
        ("half_open", limits.half_open),
    ] {
        if value == Some(0) {
            problems.error(
                object,
                format!("{path}.{field}"),
                format!("{field}: 0 would refuse every connection; leave it out for no limit"),
            );
        }
    }
    if limits.new_connections_per_second > Some(1_000_000_000) {
        problems.error(
            object,
            format!("{path}.new_connections_per_second"),
            "at most 1000000000 per second".into(),
        );
    }
}

/// Security-group rules one endpoint may have (sizes the `SECURITY_GROUPS` map).
pub const MAX_SECURITY_GROUP_RULES: usize = 16;

/// A DNS label: letters, digits and '-' inside, 1 to 63 of them.
fn dns_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// The names endpoints get, per consumer network: every name must be a DNS name, fit
/// the data path's bounds, and mean one thing in each network.
fn dns(config: &Config, networks: &BTreeSet<String>, problems: &mut Problems) {
    for (i, interface) in config.node.interfaces.iter().enumerate() {
        if let Some(zone) = &interface.zone {
            let object = format!("interface {:?}", interface.name);
            let path = format!("node.interfaces[{i}].zone");
            problems.name(&object, path.clone(), zone);
            if !interface.role.consumer() {
                problems.error(
                    &object,
                    path,
                    "a zone names where a consumer interface's clients are; this one has none"
                        .into(),
                );
            }
        }
    }
    let Some(dns) = &config.dns else {
        for (e, endpoint) in config.endpoints.iter().enumerate() {
            if endpoint.private_dns {
                problems.error(
                    &format!("endpoint {:?}", endpoint.id),
                    format!("endpoints[{e}].private_dns"),
                    "private_dns needs a dns section (the resolver addresses that answer it)"
                        .into(),
                );
            }
        }
        return;
    };
    let object = "dns";
    let domain = dns.domain.trim_end_matches('.').to_ascii_lowercase();
    let labels = domain.split('.').count();
    if !dns_name(&domain) || labels > MAX_APEX_LABELS || domain.len() + 2 > 64 {
        problems.error(
            object,
            "dns.domain".into(),
            format!(
                "{:?} is not a DNS domain for endpoint names: dot-separated labels of letters, \
                 digits and '-', at most {MAX_APEX_LABELS} labels and 62 characters",
                dns.domain
            ),
        );
    }
    if !(1..=604_800).contains(&dns.ttl_seconds) {
        problems.error(
            object,
            "dns.ttl_seconds".into(),
            format!("{}: use 1 to 604800 (a week)", dns.ttl_seconds),
        );
    }
    if let Some(verification) = &dns.verification
        && !(1..=86_400).contains(&verification.interval_seconds)
    {
        problems.error(
            object,
            "dns.verification.interval_seconds".into(),
            format!("{}: use 1 to 86400", verification.interval_seconds),
        );
    }
    // Addresses the node already answers for, per network.
    let mut taken: BTreeMap<(&str, IpAddr), String> = BTreeMap::new();
    for endpoint in &config.endpoints {
        for address in endpoint.addresses() {
            taken.insert(
                (endpoint.consumer_network.as_str(), address.ip),
                format!("endpoint {:?}", endpoint.id),
            );
        }
    }
    for interface in &config.node.interfaces {
        if let Some(network) = &interface.consumer_network {
            for ip in &interface.nat_addresses {
                taken.insert(
                    (network.as_str(), *ip),
                    format!("a NAT address of interface {:?}", interface.name),
                );
            }
        }
    }
    let mut resolved = BTreeSet::new();
    for (r, resolver) in dns.resolvers.iter().enumerate() {
        let path = |field: &str| format!("dns.resolvers[{r}].{field}");
        let network = resolver.consumer_network.as_str();
        if !networks.contains(network) {
            problems.error(
                object,
                path("consumer_network"),
                format!(
                    "no interface faces consumer network {network:?}; known: {}",
                    list(networks.iter().map(String::as_str))
                ),
            );
        }
        // One address of each family: a client asks the one its own family reaches.
        if !resolved.insert((network, resolver.ip.is_ipv6())) {
            problems.error(
                object,
                path("consumer_network"),
                format!(
                    "consumer network {network:?} has two {} resolver addresses",
                    family(resolver.ip)
                ),
            );
        }
        if let Some(why) = not_unicast(resolver.ip) {
            problems.error(object, path("ip"), why);
        }
        if let Some(other) = taken.get(&(network, resolver.ip)) {
            problems.error(
                object,
                path("ip"),
                format!(
                    "{} in consumer network {network:?} is already {other}",
                    resolver.ip
                ),
            );
        }
    }
    let services: HashMap<&str, &config::Service> = config
        .services
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    // (network, name) → what it names, to find a name meaning two things.
    let mut named: BTreeMap<(&str, String), String> = BTreeMap::new();
    for (e, endpoint) in config.endpoints.iter().enumerate() {
        let object = format!("endpoint {:?}", endpoint.id);
        let path = |field: &str| format!("endpoints[{e}].{field}");
        let Some(service) = services.get(endpoint.service.as_str()) else {
            continue;
        };
        let network = endpoint.consumer_network.as_str();
        let id = endpoint.id.to_ascii_lowercase();
        let service_name = service.name.to_ascii_lowercase();
        let mut names = vec![(
            crate::names::regional(&endpoint.id, &service.name, &domain),
            path("id"),
            "its regional name".to_string(),
        )];
        for (n, address) in endpoint.addresses().iter().enumerate() {
            names.push((
                crate::names::zonal(&endpoint.id, &address.zone, &service.name, &domain),
                path(&endpoint.address_path(n, "zone")),
                format!("its zonal name in {:?}", address.zone),
            ));
        }
        if !dns_label(&id) || !dns_label(&service_name) {
            problems.error(
                &object,
                path("id"),
                format!(
                    "endpoint {:?} of service {:?} gets the name {}, but DNS labels are letters, \
                     digits and '-' (1-63): rename the endpoint or the service",
                    endpoint.id, service.name, names[0].0
                ),
            );
            continue;
        }
        if endpoint.private_dns {
            match &service.private_dns_name {
                None => problems.error(
                    &object,
                    path("private_dns"),
                    format!("service {:?} has no private_dns_name", service.name),
                ),
                Some(private) => names.push((
                    private.trim_end_matches('.').to_ascii_lowercase(),
                    path("private_dns"),
                    format!("the private DNS name of service {:?}", service.name),
                )),
            }
        }
        for (name, at, what) in names {
            let in_domain = name == domain || name.ends_with(&format!(".{domain}"));
            if what.starts_with("the private") {
                if in_domain {
                    problems.error(
                        &object,
                        at.clone(),
                        format!("{name} lies in the endpoint domain {domain}: choose another"),
                    );
                }
                if name.split('.').count() > MAX_APEX_LABELS {
                    problems.error(
                        &object,
                        at.clone(),
                        format!("{name}: a private DNS name has at most {MAX_APEX_LABELS} labels"),
                    );
                }
            } else if !name
                .strip_suffix(&format!(".{domain}"))
                .is_some_and(|rest| rest.split('.').all(dns_label))
                || name.len() > 253
            {
                problems.error(
                    &object,
                    at.clone(),
                    format!("{name} (its {what}) is not a DNS name: labels 1-63, 253 in all"),
                );
            }
            let mine = format!("endpoint {:?}'s {what}", endpoint.id);
            if let Some(other) = named.insert((network, name.clone()), mine.clone())
                && other != mine
            {
                problems.error(
                    &object,
                    at,
                    format!("{name} in consumer network {network:?} is already {other}"),
                );
            }
        }
    }
}

fn dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn tables(config: &Config, problems: &mut Problems) {
    let tables = &config.node.tables;
    let listeners: Vec<_> = config
        .services
        .iter()
        .flat_map(|s| &s.load_balancers)
        .flat_map(|lb| &lb.listeners)
        .collect();
    let targets: usize = listeners.iter().map(|l| l.targets.len()).sum();
    let most = listeners.iter().map(|l| l.targets.len()).max().unwrap_or(0);
    let mut check = |field: &str, have: usize, limit: u32, what: &str| {
        if have > limit as usize {
            problems.error(
                "node",
                format!("node.tables.{field}"),
                format!("{have} {what} do not fit in tables.{field} = {limit}; raise it"),
            );
        }
    };
    check(
        "endpoints",
        config.endpoints.len(),
        tables.endpoints,
        "endpoints",
    );
    check(
        "endpoints",
        config.endpoints.iter().map(|e| e.addresses().len()).sum(),
        tables.endpoints,
        "endpoint addresses",
    );
    check("targets", targets, tables.targets, "targets");
    let networks: BTreeSet<&str> = config
        .node
        .interfaces
        .iter()
        .filter_map(|i| i.consumer_network.as_deref())
        .collect();
    check(
        "networks",
        networks.len(),
        tables.networks,
        "consumer networks",
    );
    check(
        "rings",
        placement::rings(config).len(),
        tables.rings,
        "rings (one per listener of a load balancer, zone and family of the endpoint \
         addresses placed on it)",
    );
    if tables.flows < 2 {
        problems.error(
            "node",
            "node.tables.flows".into(),
            "the flow table needs room for at least one connection (2 entries)".into(),
        );
    }
    if !is_prime(tables.ring_size) || (tables.ring_size as usize) < 100 * most.max(1) {
        problems.error(
            "node",
            "node.tables.ring_size".into(),
            format!(
                "ring_size {} must be a prime of at least 100 x the targets of the largest \
                 listener ({most}); e.g. {}",
                tables.ring_size,
                next_prime(100 * most.max(1) as u32)
            ),
        );
    }
    // Each target has the ports of every NAT address of its family to itself.
    let nat_addresses = |f: &str| {
        config
            .node
            .interfaces
            .iter()
            .flat_map(|i| &i.nat_addresses)
            .filter(|&&ip| family(ip) == f)
            .count() as u64
    };
    let ports = config.node.nat_ports;
    let width = (ports.last as u64 + 1).saturating_sub(ports.first as u64);
    let capacity: u64 = listeners
        .iter()
        .flat_map(|l| &l.targets)
        .map(|t| width * nat_addresses(family(t.ip)))
        .sum();
    if capacity > 0 && capacity < tables.flows as u64 / 2 {
        problems.warning(
            "node",
            "node.nat_ports".into(),
            format!(
                "NAT ports run out at {capacity} connections ({width} ports per NAT address \
                 and target), before the flow table's {}: widen nat_ports, add NAT addresses \
                 or shrink tables.flows",
                tables.flows / 2
            ),
        );
    }
    for (field, value, most) in [
        ("flows", tables.flows, MAX_FLOWS),
        ("endpoints", tables.endpoints, MAX_TABLE),
        ("targets", tables.targets, MAX_TABLE),
        ("rings", tables.rings, MAX_TABLE),
        ("networks", tables.networks, MAX_NETWORKS),
        ("handshakes", tables.handshakes, MAX_TABLE),
    ] {
        if value > most {
            problems.error(
                "node",
                format!("node.tables.{field}"),
                format!("tables.{field} = {value} is above the maximum, {most}"),
            );
        }
    }
    if tables.handshakes == 0 {
        problems.error(
            "node",
            "node.tables.handshakes".into(),
            "the handshake queue needs room for at least one connection".into(),
        );
    }
    let timeouts = &config.node.timeouts;
    for (field, value) in [
        ("handshake_seconds", timeouts.handshake_seconds),
        ("closed_seconds", timeouts.closed_seconds),
        ("time_wait_seconds", timeouts.time_wait_seconds),
    ] {
        if !(1..=3600).contains(&value) {
            problems.error(
                "node",
                format!("node.timeouts.{field}"),
                format!("{value} s: use 1 to 3600"),
            );
        }
    }
    if config.node.limits.half_open_per_network == 0 {
        problems.error(
            "node",
            "node.limits.half_open_per_network".into(),
            "0 would refuse every connection".into(),
        );
    }
    // The maps hold twice the rings (see `loader::map_sizes`).
    if 2 * (tables.rings as u64) * (tables.ring_size as u64) > MAX_RING_SLOTS {
        problems.error(
            "node",
            "node.tables.rings".into(),
            format!(
                "2 x rings x ring_size = {} ring slots; at most {MAX_RING_SLOTS} fit in one \
                 BPF array",
                2 * (tables.rings as u64) * (tables.ring_size as u64)
            ),
        );
    }
}

/// Upper bounds of `node.tables`, so that map sizes (twice the limits) cannot overflow.
const MAX_FLOWS: u32 = 1 << 26;
const MAX_TABLE: u32 = 1 << 20;
// Endpoint slots (up to twice the endpoints) fit the bits the data path packs them in.
const _: () = assert!(2 * MAX_TABLE + 1 < 1 << endpoint_common::maps::SLOT_BITS);
/// Each consumer network has two 8 KiB port bitmaps (TCP and UDP).
const MAX_NETWORKS: u32 = 1 << 14;
const MAX_RING_SLOTS: u64 = 1 << 28;

fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

fn next_prime(from: u32) -> u32 {
    (from..).find(|&n| is_prime(n)).unwrap_or(from)
}

#[cfg(test)]
mod tests;
