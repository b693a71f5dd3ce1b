//! Operating it: `flows` lists exactly the live connections (and filters them), and
//! not once they closed and lingered.

use std::{
    collections::BTreeSet,
    net::{Shutdown, SocketAddrV4},
};

use testbed::{UdpServer, udp_socket};

use crate::bed::*;

/// The example with billing available in vpc-b and closed connections gone after 1 s.
fn config() -> String {
    let mut config = example().replace(
        "  hash_seed: 7",
        "  hash_seed: 7\n  timeouts: { closed_seconds: 1 }",
    );
    config.push_str("    state: available\n    accepted_at: \"2026-11-28T09:10:00Z\"\n");
    config
}

/// `flows --json` with `filter`: one JSON object per connection.
fn flows(bed: &Bed, filter: &[&str]) -> Vec<serde_json::Value> {
    let args: Vec<&str> = ["flows", "--json"].iter().chain(filter).copied().collect();
    bed.agent_command(&args)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

fn field<'a>(flow: &'a serde_json::Value, name: &str) -> &'a str {
    flow[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} in {flow}"))
}

#[test]
fn flows_lists_exactly_the_live_connections_and_filters_them() {
    if !root() {
        return;
    }
    let bed = bed_with(&config());
    let _echo = UdpServer::start(&bed.topology.provider, "echo", at(addresses::TARGETS[0], 7))
        .unwrap_or_else(|e| bed.fail(e));
    let t = &bed.topology;
    let mut streams: Vec<_> = (0..3)
        .map(|i| {
            let mut stream =
                connect(&t.consumer_a, at(ORDERS, 80), WAIT).unwrap_or_else(|e| bed.fail(e));
            exchange(&mut stream, &format!("hello {i}")).unwrap_or_else(|e| bed.fail(e));
            stream
        })
        .collect();
    let datagrams = udp_socket(&t.consumer_b, at(BILLING, 7), WAIT).unwrap_or_else(|e| bed.fail(e));
    datagrams.send(b"hello").unwrap();
    datagrams.recv(&mut [0; 64]).unwrap();

    let all = flows(&bed, &[]);
    let seen: BTreeSet<(String, String, String, String)> = all
        .iter()
        .map(|f| {
            (
                field(f, "network").to_string(),
                field(f, "protocol").to_string(),
                field(f, "client").to_string(),
                field(f, "state").to_string(),
            )
        })
        .collect();
    let mut expected: BTreeSet<_> = streams
        .iter()
        .map(|s| {
            let client = SocketAddrV4::new(addresses::CLIENT, s.local_addr().unwrap().port());
            (
                "vpc-a".into(),
                "tcp".into(),
                client.to_string(),
                "established".into(),
            )
        })
        .collect();
    let udp_client = SocketAddrV4::new(addresses::CLIENT, datagrams.local_addr().unwrap().port());
    expected.insert((
        "vpc-b".into(),
        "udp".into(),
        udp_client.to_string(),
        "open".into(),
    ));
    assert_eq!(seen, expected, "{all:#?}");
    for flow in &all {
        assert_eq!(field(flow, "nat").split(':').next(), Some("172.16.0.100"));
        assert!(flow["idle_seconds"].as_u64().unwrap() <= 2, "{flow}");
    }
    let udp = all.iter().find(|f| field(f, "protocol") == "udp").unwrap();
    assert_eq!(
        (
            field(udp, "endpoint"),
            field(udp, "endpoint_address"),
            field(udp, "target")
        ),
        ("vpce-b-billing", "10.0.0.101:7", "172.16.0.10:7")
    );

    // Filters.
    assert_eq!(flows(&bed, &["--endpoint", "vpce-a-orders"]).len(), 3);
    assert_eq!(flows(&bed, &["--network", "vpc-b"]).len(), 1);
    assert_eq!(flows(&bed, &["--target", "172.16.0.10:7"]).len(), 1);
    let table = bed.agent_command(&["flows"]);
    assert_eq!(table.lines().count(), 1 + 4, "{table}");
    assert!(table.lines().next().unwrap().starts_with("NETWORK"));

    // Closed: closing at once, gone once they lingered (1 s here).
    for stream in &mut streams {
        stream.shutdown(Shutdown::Both).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let closing = flows(&bed, &["--endpoint", "vpce-a-orders"]);
    assert!(
        closing.iter().all(|f| field(f, "state") == "closing"),
        "{closing:#?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    loop {
        let left = flows(&bed, &["--endpoint", "vpce-a-orders"]);
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still listed: {left:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(flows(&bed, &[]).len(), 1, "the UDP flow stays");
}
