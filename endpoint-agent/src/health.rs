//! Health checks: the agent checks every target as its load balancer says (a TCP
//! connection, or an HTTP GET and an expected status; UDP listeners' targets too, on the
//! check's `port`) and keeps count of consecutive results. A healthy target that fails `unhealthy_threshold` times in a row leaves the
//! rings for new flows (its established flows stay); one that then passes
//! `healthy_threshold` times comes back. Targets start healthy.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::timeout,
};

use crate::{
    config::{Config, HealthCheck, HealthProtocol},
    keys::{ListenerKey, TargetKey},
};

struct Check {
    addr: SocketAddr,
    spec: HealthCheck,
    healthy: bool,
    /// Consecutive results that disagree with `healthy`.
    streak: u32,
    next: Instant,
    in_flight: bool,
}

/// A target's health changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub target: TargetKey,
    pub addr: SocketAddr,
    pub healthy: bool,
}

#[derive(Default)]
pub struct Checks {
    targets: BTreeMap<TargetKey, Check>,
}

impl Checks {
    /// Follows the config: new targets are checked (and start healthy), removed ones are
    /// forgotten, changed check settings apply from the next check.
    pub fn sync(&mut self, config: &Config) {
        let mut wanted = BTreeMap::new();
        for service in &config.services {
            for lb in &service.load_balancers {
                if lb.health_check.protocol == HealthProtocol::None {
                    continue;
                }
                for listener in &lb.listeners {
                    let key = ListenerKey::of(service, lb, listener);
                    for target in &listener.targets {
                        let port = lb.health_check.port.unwrap_or(target.port);
                        wanted.insert(
                            key.target(target),
                            (SocketAddr::new(target.ip, port), lb.health_check.clone()),
                        );
                    }
                }
            }
        }
        self.targets.retain(|name, _| wanted.contains_key(name));
        for (name, (addr, spec)) in wanted {
            match self.targets.get_mut(&name) {
                Some(check) => (check.addr, check.spec) = (addr, spec),
                None => {
                    self.targets.insert(
                        name,
                        Check {
                            addr,
                            spec,
                            healthy: true,
                            streak: 0,
                            next: Instant::now(),
                            in_flight: false,
                        },
                    );
                }
            }
        }
    }

    /// Targets that are unhealthy now, by name.
    pub fn unhealthy(&self) -> BTreeSet<TargetKey> {
        self.targets
            .iter()
            .filter(|(_, c)| !c.healthy)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Checks that are due now (each is then in flight until its result is recorded).
    pub fn due(&mut self, now: Instant) -> Vec<(TargetKey, SocketAddr, HealthCheck)> {
        let mut due = Vec::new();
        for (name, check) in &mut self.targets {
            if !check.in_flight && check.next <= now {
                check.in_flight = true;
                check.next = now + Duration::from_secs(check.spec.interval_seconds.into());
                due.push((name.clone(), check.addr, check.spec.clone()));
            }
        }
        due
    }

    /// Counts a result; returns the transition it caused, if any.
    pub fn record(&mut self, target: &TargetKey, passed: bool) -> Option<Transition> {
        let check = self.targets.get_mut(target)?;
        check.in_flight = false;
        if passed == check.healthy {
            check.streak = 0;
            return None;
        }
        check.streak += 1;
        let threshold = if check.healthy {
            check.spec.unhealthy_threshold
        } else {
            check.spec.healthy_threshold
        };
        if check.streak < threshold {
            return None;
        }
        check.healthy = passed;
        check.streak = 0;
        Some(Transition {
            target: target.clone(),
            addr: check.addr,
            healthy: passed,
        })
    }
}

/// One check of `addr` (either family), bounded by the spec's timeout.
pub async fn probe(addr: SocketAddr, spec: &HealthCheck) -> bool {
    let limit = Duration::from_secs(spec.timeout_seconds.into());
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        if spec.protocol != HealthProtocol::Http {
            return Some(true);
        }
        // An IPv6 host is written in brackets (RFC 3986).
        let host = match addr {
            SocketAddr::V4(addr) => addr.ip().to_string(),
            SocketAddr::V6(addr) => format!("[{}]", addr.ip()),
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: endpoint-agent\r\nConnection: close\r\n\r\n",
            spec.path,
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 64];
        let mut read = 0;
        while read < 12 {
            let n = stream.read(&mut head[read..]).await.ok()?;
            if n == 0 {
                break;
            }
            read += n;
        }
        // "HTTP/1.1 200 OK": the status is the second word.
        let line = String::from_utf8_lossy(&head[..read]);
        let status = line.split_whitespace().nth(1)?.parse::<u16>().ok()?;
        Some(line.starts_with("HTTP/") && status == spec.expect_status)
    };
    matches!(timeout(limit, attempt).await, Ok(Some(true)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;

    fn t() -> TargetKey {
        TargetKey {
            listener: ListenerKey {
                service: "s".into(),
                load_balancer: "lb".into(),
                port: 80,
                protocol: Protocol::Tcp,
            },
            ip: "127.0.0.1".parse().unwrap(),
            port: 1,
        }
    }

    fn checks(healthy: u32, unhealthy: u32) -> Checks {
        let mut checks = Checks::default();
        checks.targets.insert(
            t(),
            Check {
                addr: "127.0.0.1:1".parse().unwrap(),
                spec: HealthCheck {
                    healthy_threshold: healthy,
                    unhealthy_threshold: unhealthy,
                    ..HealthCheck::default()
                },
                healthy: true,
                streak: 0,
                next: Instant::now(),
                in_flight: false,
            },
        );
        checks
    }

    #[test]
    fn thresholds_count_consecutive_results() {
        let mut c = checks(2, 3);
        assert_eq!(c.record(&t(), false), None);
        assert_eq!(c.record(&t(), false), None);
        assert_eq!(
            c.record(&t(), true),
            None,
            "a pass resets the failure streak"
        );
        assert_eq!(c.record(&t(), false), None);
        assert_eq!(c.record(&t(), false), None);
        let down = c.record(&t(), false).expect("third failure in a row");
        assert!(!down.healthy);
        assert_eq!(c.unhealthy(), BTreeSet::from([t()]));
        assert_eq!(c.record(&t(), true), None);
        let up = c.record(&t(), true).expect("second pass in a row");
        assert!(up.healthy);
        assert!(c.unhealthy().is_empty());
    }

    /// A UDP listener's targets are checked over TCP on the check's port; a TCP listener
    /// on the same port and targets is checked apart.
    #[test]
    fn udp_listeners_are_checked_on_the_health_check_port() {
        let config = crate::config::parse(
            "t",
            "
node: { interfaces: [] }
services:
  - name: s
    load_balancers:
      - name: lb
        zone: z
        health_check: { protocol: tcp, port: 8080 }
        listeners:
          - { port: 53, protocol: udp, targets: [{ ip: 172.16.0.10, port: 5353 }] }
          - { port: 53, targets: [{ ip: 172.16.0.10, port: 5353 }] }
",
        )
        .unwrap();
        let mut checks = Checks::default();
        checks.sync(&config);
        let checked: Vec<(Protocol, SocketAddr)> = checks
            .targets
            .iter()
            .map(|(key, check)| (key.listener.protocol, check.addr))
            .collect();
        let addr = "172.16.0.10:8080".parse().unwrap();
        assert_eq!(
            checked,
            [(Protocol::Tcp, addr), (Protocol::Udp, addr)],
            "one check per listener, both on the check's port"
        );
    }

    #[test]
    fn a_check_is_not_due_again_while_in_flight_or_before_its_interval() {
        let mut c = checks(1, 1);
        let now = Instant::now();
        assert_eq!(c.due(now).len(), 1);
        assert!(c.due(now + Duration::from_secs(60)).is_empty(), "in flight");
        c.record(&t(), true);
        assert!(
            c.due(now + Duration::from_secs(1)).is_empty(),
            "interval not over"
        );
        assert_eq!(c.due(now + Duration::from_secs(10)).len(), 1);
    }

    #[tokio::test]
    async fn probes_tell_open_from_closed_and_check_http_status() {
        probes_on("127.0.0.1:0", "Host: 127.0.0.1\r\n").await;
        probes_on("[::1]:0", "Host: [::1]\r\n").await;
    }

    /// Checks a server on `loopback` that wants `host` in HTTP requests.
    async fn probes_on(loopback: &str, host: &'static str) {
        let listener = tokio::net::TcpListener::bind(loopback).await.unwrap();
        let open = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let status = if request.contains("/ok") && request.contains(host) {
                    "200 OK"
                } else {
                    "503 No"
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let tcp = HealthCheck {
            timeout_seconds: 1,
            ..HealthCheck::default()
        };
        assert!(probe(open, &tcp).await);
        let closed = std::net::TcpListener::bind(loopback)
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(!probe(closed, &tcp).await);
        let http = |path: &str| HealthCheck {
            protocol: HealthProtocol::Http,
            path: path.into(),
            ..tcp.clone()
        };
        assert!(probe(open, &http("/ok")).await);
        assert!(!probe(open, &http("/sick")).await);
    }
}
