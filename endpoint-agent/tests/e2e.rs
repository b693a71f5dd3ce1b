//! End to end: the real agent binary on a real topology of namespaces and veths, real
//! TCP servers and clients. Needs root.

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use testbed::{Agent, Server, Topology, addresses, ask, at};

const AGENT: &str = env!("CARGO_BIN_EXE_endpoint-agent");
const ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const PENDING: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 101);
const NAT: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 100);
const WAIT: Duration = Duration::from_secs(3);

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/demo.yaml")
}

/// The standard topology with the example config's targets serving.
struct Bed {
    agent: Agent,
    servers: Vec<Server>,
    topology: Topology,
}

fn bed() -> Bed {
    let topology = Topology::build().expect("topology");
    let servers = addresses::TARGETS
        .iter()
        .enumerate()
        .map(|(i, &ip)| {
            Server::start(
                &topology.provider,
                &format!("target-{}", i + 1),
                at(ip, 8080),
            )
            .unwrap()
        })
        .collect();
    let agent = Agent::start(&topology.node, AGENT.as_ref(), &example()).expect("agent");
    Bed {
        agent,
        servers,
        topology,
    }
}

#[test]
fn consumer_reaches_a_target_through_its_endpoint_and_the_target_sees_the_nat_address() {
    let bed = bed();
    let answer = ask(&bed.topology.consumer_a, at(ENDPOINT, 80), "hello", WAIT)
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", bed.agent.log()));
    assert_eq!(answer.echo, "hello");
    assert!(answer.target.starts_with("target-"));
    assert_eq!(
        *answer.seen_from.ip(),
        NAT,
        "the target must see the NAT address"
    );
    let _ = (&bed.servers, PENDING);
}
