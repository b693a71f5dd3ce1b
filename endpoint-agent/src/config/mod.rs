//! The YAML model: what the node, its services and their endpoints look like, in the
//! product's words, and `parse`, which reads it. `validate` checks it: nothing reaches
//! the maps unless the whole file is valid.

mod lines;

use std::{fmt, net::IpAddr};

use serde::Deserialize;

pub use self::lines::Lines;

/// Listener ports one load balancer may have (sizes the `ENDPOINTS` map).
pub const MAX_LISTENERS: u32 = 16;
/// NAT addresses a node may have (the size of the `NAT` map).
pub const MAX_NAT_ADDRESSES: u32 = 64;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: Node,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// The names consumers reach endpoints by (absent: no DNS).
    pub dns: Option<Dns>,
}

/// DNS names for endpoints, answered by the node on each consumer network's resolver
/// address (see the README's "DNS" section).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// The zone endpoint names live in: `<endpoint-id>.<service>.<domain>`.
    pub domain: String,
    /// The TTL of answers (and of negative answers).
    #[serde(default = "dns_ttl")]
    pub ttl_seconds: u32,
    /// The address the node answers DNS (and ARP) on, per consumer network.
    #[serde(default)]
    pub resolvers: Vec<Resolver>,
    /// Private DNS names are served only once their owner proved the domain (a TXT
    /// record); absent: they are served unverified.
    pub verification: Option<Verification>,
}

fn dns_ttl() -> u32 {
    60
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolver {
    pub consumer_network: String,
    /// One of each family per network at most (validated).
    pub ip: IpAddr,
}

/// How private DNS names are verified: a TXT record `_endpoint-verification.<name>`
/// holding the service's token, asked of `resolver`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verification {
    pub resolver: std::net::SocketAddr,
    /// How often a name is checked again (a verified one too: it fails when the record
    /// goes).
    #[serde(default = "verification_interval")]
    pub interval_seconds: u32,
}

fn verification_interval() -> u32 {
    60
}

/// The node the agent runs on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub interfaces: Vec<Interface>,
    /// In a fleet: the zone this node is in. Of the nodes of a zone, one at a time
    /// answers ARP for each of the zone's endpoint addresses (elected in the store);
    /// the others, and nodes of other zones, carry what reaches them but stay silent.
    pub zone: Option<String>,
    /// Ports NAT addresses use towards targets.
    #[serde(default)]
    pub nat_ports: PortRange,
    /// Seed of the flow hash: the same on every node, so all pick the same target.
    /// Absent: a random one, kept by the instance (targets and NAT ports are then not
    /// predictable from outside).
    pub hash_seed: Option<u32>,
    #[serde(default)]
    pub limits: NodeLimits,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub tables: Tables,
}

/// How long connections that are not (or no longer) established stay in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// A handshake not completed after this long is dropped (its room freed).
    pub handshake_seconds: u32,
    /// A closed connection lingers this long for the last ACKs ...
    pub closed_seconds: u32,
    /// ... or this long if the target closed first: it holds the tuple in TIME_WAIT,
    /// and the NAT port must not be reused meanwhile.
    pub time_wait_seconds: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            handshake_seconds: 10,
            closed_seconds: 10,
            time_wait_seconds: 60,
        }
    }
}

/// What keeps one consumer network from using up the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeLimits {
    /// Connections in their handshake at once, per consumer network: a SYN flood from
    /// one network fills only this.
    pub half_open_per_network: u32,
    /// RSTs each CPU may send per second (for connections cut by `on_revoke: reset`).
    pub resets_per_second: u32,
    /// ICMP messages of its own (fragmentation needed, time exceeded, echo replies) each
    /// CPU may send per second; 0: none.
    pub icmp_per_second: u32,
}

impl Default for NodeLimits {
    fn default() -> Self {
        Self {
            half_open_per_network: 4096,
            resets_per_second: 1000,
            icmp_per_second: 1000,
        }
    }
}

/// What one endpoint may use (a service's are its endpoints' defaults).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Open connections at once.
    pub connections: Option<u32>,
    /// New connections per second, on average ...
    pub new_connections_per_second: Option<u32>,
    /// ... with bursts of this many at once (default: a tenth of a second's worth).
    pub burst: Option<u32>,
    /// Connections in their handshake at once.
    pub half_open: Option<u32>,
}

impl Limits {
    /// These limits, with `defaults` where they say nothing.
    pub fn or(self, defaults: Limits) -> Limits {
        Limits {
            connections: self.connections.or(defaults.connections),
            new_connections_per_second: self
                .new_connections_per_second
                .or(defaults.new_connections_per_second),
            burst: self.burst.or(defaults.burst),
            half_open: self.half_open.or(defaults.half_open),
        }
    }
}

/// Connections in their handshake one endpoint may have when its limits say nothing.
pub const HALF_OPEN_PER_ENDPOINT: u32 = 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: String,
    pub role: Role,
    /// For `consumer` and `both`: the consumer network (VPC) behind this interface.
    pub consumer_network: Option<String>,
    /// For `provider` and `both`: addresses targets see connections come from (a
    /// target is reached from one of its own family).
    #[serde(default)]
    pub nat_addresses: Vec<IpAddr>,
    /// For `consumer` and `both`: the zone its clients are in (DNS answers list an
    /// endpoint's address in that zone first).
    pub zone: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Consumer,
    Provider,
    Both,
}

impl Role {
    pub fn consumer(self) -> bool {
        matches!(self, Role::Consumer | Role::Both)
    }

    pub fn provider(self) -> bool {
        matches!(self, Role::Provider | Role::Both)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl Default for PortRange {
    /// Clear of Linux's default ephemeral ports (32768-60999), so that a NAT address may
    /// also be the node's own.
    fn default() -> Self {
        Self {
            first: 1024,
            last: 32767,
        }
    }
}

/// BPF map sizes: fixed when the program is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tables {
    /// Connection-table entries (two per connection).
    pub flows: u32,
    /// Endpoints (each has its own counters).
    pub endpoints: u32,
    /// Targets over all services.
    pub targets: u32,
    /// Target rings: one per listener of each load balancer.
    pub rings: u32,
    /// Slots per ring: a prime, at least 100 × the targets of any listener.
    pub ring_size: u32,
    /// Consumer networks.
    pub networks: u32,
    /// Connections in their handshake at once, over all networks.
    pub handshakes: u32,
}

impl Default for Tables {
    fn default() -> Self {
        Self {
            flows: 1 << 17,
            endpoints: 4096,
            targets: 16384,
            rings: 1024,
            ring_size: 1021,
            networks: 64,
            handshakes: 1 << 15,
        }
    }
}

/// An endpoint service, published by a provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    /// Whether the provider must accept each endpoint before it carries traffic.
    #[serde(default = "yes")]
    pub acceptance_required: bool,
    /// Principals (accounts) that may create endpoints; `*` = anyone.
    #[serde(default)]
    pub allowed_principals: Vec<String>,
    pub load_balancers: Vec<LoadBalancer>,
    /// A DNS name consumers may use inside their networks (split horizon).
    pub private_dns_name: Option<String>,
    /// TCP connections idle this long are forgotten (FIN or RST shorten it) ...
    #[serde(default = "idle_timeout")]
    pub idle_timeout_seconds: u32,
    /// ... and UDP flows this long (nothing else ends them).
    #[serde(default = "udp_idle_timeout")]
    pub udp_idle_timeout_seconds: u32,
    /// The largest TCP MSS its connections may announce (absent: what the interfaces'
    /// MTUs allow).
    pub mss: Option<u16>,
    /// What happens to established connections when an endpoint stops being available.
    #[serde(default)]
    pub on_revoke: Revoke,
    /// Its endpoints' limits, where theirs say nothing.
    #[serde(default)]
    pub limits: Limits,
}

fn idle_timeout() -> u32 {
    350
}

/// As an NLB's UDP flows.
fn udp_idle_timeout() -> u32 {
    120
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Revoke {
    /// Established connections carry on until they end; new ones are refused.
    #[default]
    Drain,
    /// Established connections are cut: the consumer gets a TCP reset.
    Reset,
}

fn yes() -> bool {
    true
}

/// A network load balancer in one zone. Each endpoint is mapped onto one of its
/// service's load balancers in the endpoint's zone (any zone if none is there),
/// round-robin across endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancer {
    pub name: String,
    pub zone: String,
    pub listeners: Vec<Listener>,
    /// Whether new flows may go to targets in other zones than the endpoint's.
    #[serde(default)]
    pub cross_zone: CrossZone,
    #[serde(default)]
    pub health_check: HealthCheck,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrossZone {
    /// Targets in the endpoint's zone; all zones only when none there is healthy.
    #[default]
    OnFailure,
    /// Targets in every zone alike (cross-zone load balancing).
    Always,
    /// Only targets in the endpoint's zone, healthy or not.
    Never,
}

/// How the agent checks a load balancer's targets.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    pub protocol: HealthProtocol,
    /// HTTP only: the path to GET and the status that means healthy.
    pub path: String,
    pub expect_status: u16,
    /// The port to check (default: each target's own). A load balancer with a UDP
    /// listener needs one: UDP targets are checked over TCP or HTTP, as by an NLB.
    pub port: Option<u16>,
    pub interval_seconds: u32,
    pub timeout_seconds: u32,
    /// Consecutive successes that make an unhealthy target healthy again.
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy target unhealthy.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            protocol: HealthProtocol::Tcp,
            path: "/".into(),
            expect_status: 200,
            port: None,
            interval_seconds: 10,
            timeout_seconds: 5,
            healthy_threshold: 3,
            unhealthy_threshold: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthProtocol {
    /// A TCP connection that opens is healthy.
    Tcp,
    /// An HTTP GET answered with `expect_status` is healthy.
    Http,
    /// No checks: every target counts as healthy.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    pub targets: Vec<Target>,
}

impl Listener {
    /// The family of the targets an endpoint address of `family` reaches here: its
    /// own when the listener has targets of it, else IPv4 ones from an IPv6 address
    /// (translated in the data path); none for an IPv4 address with IPv6 targets only.
    pub fn target_family(&self, family: u8) -> Option<u8> {
        use endpoint_common::maps::{Addr, FAMILY_IPV4, FAMILY_IPV6};
        let has = |f: u8| self.targets.iter().any(|t| Addr::family_of(t.ip) == f);
        if has(family) {
            Some(family)
        } else if family == FAMILY_IPV6 && has(FAMILY_IPV4) {
            Some(FAMILY_IPV4)
        } else {
            None
        }
    }
}

/// A listener's protocol: a port may have a TCP and a UDP listener.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Tcp,
    /// Flows open on the first datagram and end when idle.
    Udp,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];

    /// The IP protocol number the XDP program sees.
    pub fn number(self) -> u8 {
        use endpoint_common::maps::{PROTO_TCP, PROTO_UDP};
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }

    /// The listener protocol of an IP protocol number, if it is one.
    pub fn of(number: u8) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.number() == number)
    }

    /// The protocol's name, as written in the YAML.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub ip: IpAddr,
    pub port: u16,
    #[serde(default = "one")]
    pub weight: u32,
    /// The target's zone (default: its load balancer's).
    pub zone: Option<String>,
}

fn one() -> u32 {
    1
}

/// An interface endpoint: IP addresses in a consumer network, one per zone and family
/// (a dual-stack endpoint has an IPv4 and an IPv6 address in a zone), that reach a
/// service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub id: String,
    pub service: String,
    pub principal: String,
    pub consumer_network: String,
    /// One address: `ip` and `zone` (shorthand for one entry of `addresses`) ...
    pub ip: Option<IpAddr>,
    pub zone: Option<String>,
    /// ... or one per zone and family.
    #[serde(default)]
    pub addresses: Vec<EndpointAddress>,
    /// Whether the service's `private_dns_name` resolves to this endpoint in its network.
    #[serde(default)]
    pub private_dns: bool,
    /// Sources allowed to use the endpoint; absent: any source in the consumer network.
    pub security_groups: Option<Vec<SecurityGroupRule>>,
    /// Absent for a new connection request: it becomes `available` at once if the
    /// service needs no acceptance, `pendingAcceptance` if it does, and `rejected` if
    /// the principal is not allowed.
    pub state: Option<State>,
    /// When the provider accepted the endpoint (written by `endpoint-agent accept`).
    pub accepted_at: Option<String>,
    /// What the endpoint may use (its service's limits where these say nothing).
    #[serde(default)]
    pub limits: Limits,
}

/// One address of an endpoint: its IP and the zone it is in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointAddress {
    pub zone: String,
    pub ip: IpAddr,
}

impl Endpoint {
    /// The endpoint's addresses with their paths in the file: `addresses`, or the
    /// `ip` and `zone` shorthand (validation makes sure it is one or the other).
    pub fn addresses(&self) -> Vec<EndpointAddress> {
        match (&self.ip, &self.zone) {
            (Some(ip), Some(zone)) if self.addresses.is_empty() => vec![EndpointAddress {
                zone: zone.clone(),
                ip: *ip,
            }],
            _ => self.addresses.clone(),
        }
    }

    /// The endpoint's IPs, comma-separated (for tables and labels).
    pub fn ips(&self) -> String {
        let ips: Vec<String> = self.addresses().iter().map(|a| a.ip.to_string()).collect();
        ips.join(",")
    }

    /// The endpoint's zones, comma-separated.
    pub fn zones(&self) -> String {
        let zones: Vec<String> = self.addresses().into_iter().map(|a| a.zone).collect();
        zones.join(",")
    }

    /// The path of address `n`'s `field` (`ip` or `zone`) in the endpoint.
    pub fn address_path(&self, n: usize, field: &str) -> String {
        if self.addresses.is_empty() {
            field.to_string()
        } else {
            format!("addresses[{n}].{field}")
        }
    }
}

/// How messages name an address family ([`endpoint_common::maps::FAMILY_IPV4`] or
/// `FAMILY_IPV6`).
pub fn family_name(family: u8) -> &'static str {
    if family == endpoint_common::maps::FAMILY_IPV6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// Sources (a CIDR) and listener ports (all if absent) allowed to use an endpoint; a
/// port allows its TCP and its UDP listener unless `protocol` names one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupRule {
    /// Of either family; it matches sources of its own.
    pub cidr: ipnet::IpNet,
    pub ports: Option<Vec<u16>>,
    pub protocol: Option<Protocol>,
}

/// An endpoint's state. Only `available` carries traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum State {
    PendingAcceptance,
    Pending,
    Available,
    Rejected,
    Failed,
    Deleting,
    Deleted,
    Expired,
}

impl State {
    /// Every state, connection requests first, then as requests move on.
    pub const ALL: [State; 8] = [
        State::PendingAcceptance,
        State::Available,
        State::Rejected,
        State::Pending,
        State::Failed,
        State::Deleting,
        State::Deleted,
        State::Expired,
    ];

    /// The code the XDP program sees.
    pub fn code(self) -> u8 {
        use endpoint_common::maps::state;
        match self {
            State::Available => state::AVAILABLE,
            State::PendingAcceptance => state::PENDING_ACCEPTANCE,
            State::Pending => state::PENDING,
            State::Rejected => state::REJECTED,
            State::Failed => state::FAILED,
            State::Deleting => state::DELETING,
            State::Deleted => state::DELETED,
            State::Expired => state::EXPIRED,
        }
    }
}

impl State {
    /// The state's name, as written in the YAML.
    pub fn name(self) -> &'static str {
        match self {
            State::PendingAcceptance => "pendingAcceptance",
            State::Pending => "pending",
            State::Available => "available",
            State::Rejected => "rejected",
            State::Failed => "failed",
            State::Deleting => "deleting",
            State::Deleted => "deleted",
            State::Expired => "expired",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A config file that failed to load: every problem, each with its line.
#[derive(Debug)]
pub struct Invalid {
    pub report: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.report)
    }
}

impl std::error::Error for Invalid {}

/// Parses `text` (YAML only: see `validate` for the checks), naming it `name` in
/// messages.
pub fn parse(name: &str, text: &str) -> Result<Config, Invalid> {
    serde_yaml::from_str(text).map_err(|e| {
        let message = e.to_string();
        Invalid {
            report: match e.location() {
                Some(at) => {
                    // The position leads the line instead of trailing it.
                    let message = message.rsplit_once(" at line ").map_or(&*message, |m| m.0);
                    format!("{name}:{}:{}: error: {message}", at.line(), at.column())
                }
                None => format!("{name}: error: {message}"),
            },
        }
    })
}
