//! Keys: the identity of each numbered kind of object, as typed values. Names are
//! never joined into strings: service `a/b` with load balancer `c` and service `a` with
//! load balancer `b/c` are different listeners whatever characters names may hold.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};

use endpoint_common::maps::FAMILY_IPV4;

use crate::config::{Listener, LoadBalancer, Protocol, Service, Target, family_name};

/// A listener: a port and protocol of a load balancer of a service (a port may have a
/// TCP and a UDP listener).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ListenerKey {
    pub service: String,
    pub load_balancer: String,
    pub port: u16,
    /// Absent in ids kept by agents from before UDP listeners: those were all TCP.
    #[serde(default)]
    pub protocol: Protocol,
}

impl ListenerKey {
    pub fn of(service: &Service, load_balancer: &LoadBalancer, listener: &Listener) -> Self {
        Self {
            service: service.name.clone(),
            load_balancer: load_balancer.name.clone(),
            port: listener.port,
            protocol: listener.protocol,
        }
    }

    /// The target `target` of this listener.
    pub fn target(&self, target: &Target) -> TargetKey {
        TargetKey {
            listener: self.clone(),
            ip: target.ip,
            port: target.port,
        }
    }

    /// This listener's ring for endpoint addresses of `family` in `zone`.
    pub fn ring(&self, zone: &str, family: u8) -> RingKey {
        RingKey {
            listener: self.clone(),
            zone: zone.to_string(),
            family,
        }
    }
}

/// A Maglev ring: the targets of one listener that endpoint addresses of one family in
/// one zone use (an address's flows go to targets of its own family).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RingKey {
    pub listener: ListenerKey,
    pub zone: String,
    /// `FAMILY_IPV4` or `FAMILY_IPV6`; absent in ids kept by agents from before IPv6:
    /// those rings were all IPv4 (and keep their numbers).
    #[serde(default = "ipv4")]
    pub family: u8,
}

fn ipv4() -> u8 {
    FAMILY_IPV4
}

/// A target of one listener (the same address under two listeners is two targets).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TargetKey {
    pub listener: ListenerKey,
    pub ip: IpAddr,
    pub port: u16,
}

impl TargetKey {
    /// The target's address and port (`[2001:db8::1]:80` for IPv6).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

impl fmt::Display for ListenerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service {:?} load balancer {:?} port {}/{}",
            self.service, self.load_balancer, self.port, self.protocol
        )
    }
}

impl fmt::Display for RingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} zone {:?} {}",
            self.listener,
            self.zone,
            family_name(self.family)
        )
    }
}

impl fmt::Display for TargetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {}", self.addr(), self.listener)
    }
}

/// Maps with typed keys, kept in JSON as lists of `[key, value]` pairs (JSON object
/// keys can only be strings).
pub mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}
