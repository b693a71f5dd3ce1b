//! Target health and zones: checks take targets out of new flows and back, zonal
//! affinity falls back across zones.

use crate::bed::*;

/// The example with fast health checks on the orders load balancer (every second, one
/// result flips a target), and `extra` added to the load balancer.
fn checked(extra: &str) -> String {
    let shipped = "{ protocol: tcp, interval_seconds: 5, timeout_seconds: 2, healthy_threshold: 2, unhealthy_threshold: 2 }";
    let example = example();
    assert!(
        example.contains(shipped),
        "the example's health check changed"
    );
    example.replacen(
        shipped,
        &format!(
            "{{ interval_seconds: 1, timeout_seconds: 1, healthy_threshold: 1, unhealthy_threshold: 1{extra} }}"
        ),
        1,
    )
}

/// The targets that answered `n` new connections from consumer a.
fn answered_by(bed: &Bed, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            ask(
                &bed.topology.consumer_a,
                at(ORDERS, 80),
                &format!("new {i}"),
                WAIT,
            )
            .unwrap_or_else(|e| bed.fail(e))
            .target
        })
        .collect()
}

#[test]
fn a_stopped_target_gets_no_new_flows_within_the_check_interval_and_returns_when_it_recovers() {
    if !root() {
        return;
    }
    let config = checked("");
    assert!(config.contains("interval_seconds: 1"));
    let mut bed = bed_with(&config);
    let mut conversation = Conversation::open(&bed);
    let (kept, _) = conversation.seen.clone();
    let stopped = if kept == "orders-1" {
        "orders-2"
    } else {
        "orders-1"
    };
    let index = bed.servers.iter().position(|s| s.name == stopped).unwrap();
    let addr = bed.servers[index].addr;
    bed.servers[index].stop();
    bed.agent
        .wait_for("is unhealthy", Duration::from_secs(5))
        .unwrap();

    assert!(
        answered_by(&bed, 20).iter().all(|t| *t == kept),
        "a new flow went to the stopped target"
    );
    conversation.say("after the other target went down", &bed.agent.log());

    bed.servers[index] = Server::start(&bed.topology.provider, stopped, addr).unwrap();
    bed.agent
        .wait_for("is healthy", Duration::from_secs(5))
        .unwrap();
    assert!(
        answered_by(&bed, 30).iter().any(|t| t == stopped),
        "the recovered target got no new flow"
    );
    let events = bed.events();
    assert!(
        events.contains("\"event\":\"target_unhealthy\""),
        "{events}"
    );
    assert!(events.contains("\"event\":\"target_healthy\""), "{events}");
}

#[test]
fn an_http_check_takes_a_target_out_on_a_bad_status() {
    if !root() {
        return;
    }
    let bed = bed_with(&checked(
        ", protocol: http, path: /health, expect_status: 200",
    ));
    bed.server("orders-2").set_health(503);
    bed.agent
        .wait_for("is unhealthy", Duration::from_secs(5))
        .unwrap();
    assert!(answered_by(&bed, 10).iter().all(|t| t == "orders-1"));
    bed.server("orders-2").set_health(200);
    bed.agent
        .wait_for("is healthy", Duration::from_secs(5))
        .unwrap();
    assert!(answered_by(&bed, 30).iter().any(|t| t == "orders-2"));
}

#[test]
fn new_flows_prefer_the_endpoint_zone_and_fall_back_across_zones() {
    if !root() {
        return;
    }
    // orders-2 (172.16.0.11) moves to zone-2; the endpoints are in zone-1.
    let config = checked("").replacen(
        "{ ip: 172.16.0.11, port: 8080, weight: 1 }",
        "{ ip: 172.16.0.11, port: 8080, weight: 1, zone: zone-2 }",
        1,
    );
    let mut bed = bed_with(&config);
    assert!(
        answered_by(&bed, 10).iter().all(|t| t == "orders-1"),
        "a flow left the zone"
    );
    let index = bed
        .servers
        .iter()
        .position(|s| s.name == "orders-1")
        .unwrap();
    bed.servers[index].stop();
    bed.agent
        .wait_for("is unhealthy", Duration::from_secs(5))
        .unwrap();
    assert!(
        answered_by(&bed, 10).iter().all(|t| t == "orders-2"),
        "no fallback to zone-2"
    );
}
