//! Acceptance and policy: what states carry traffic, `accept`/`reject` on the file with
//! their events, draining and resetting revocations, security groups.

use crate::bed::*;

#[test]
fn pending_and_rejected_endpoints_get_no_connection() {
    if !root() {
        return;
    }
    for state in ["pendingAcceptance", "rejected"] {
        let config = example().replace(
            "    ip: 10.0.0.101\n    zone: zone-1",
            &format!("    ip: 10.0.0.101\n    zone: zone-1\n    state: {state}"),
        );
        assert!(config.contains(&format!("state: {state}")));
        let bed = bed_with(&config);
        let result = ask(
            &bed.topology.consumer_b,
            at(BILLING, 80),
            "hello",
            Duration::from_secs(2),
        );
        assert!(result.is_err(), "a {state} endpoint answered: {result:?}");
        assert!(
            bed.server("billing").peers().is_empty(),
            "the {state} endpoint's target saw a connection"
        );
        // The available endpoint next to it works.
        ask(&bed.topology.consumer_b, at(ORDERS, 80), "hello", WAIT)
            .unwrap_or_else(|e| bed.fail(e));
    }
}

#[test]
fn rejecting_with_drain_keeps_the_connection_and_with_reset_cuts_it() {
    if !root() {
        return;
    }
    for on_revoke in ["drain", "reset"] {
        let mut bed =
            bed_with(&example().replace("on_revoke: drain", &format!("on_revoke: {on_revoke}")));
        let mut conversation = Conversation::open(&bed);
        let before = bed.agent.generation();
        let config = bed.config.0.to_str().unwrap().to_string();
        let said = bed.agent_command(&["reject", "vpce-a-orders", "--config", &config]);
        assert!(said.contains("available -> rejected"), "{said}");
        bed.wait_applied(before);
        assert!(bed.config_text().contains("state: rejected"));

        // New connections fail either way.
        let new = ask(
            &bed.topology.consumer_a,
            at(ORDERS, 80),
            "new",
            Duration::from_secs(1),
        );
        assert!(
            new.is_err(),
            "{on_revoke}: a new connection to a rejected endpoint worked"
        );
        match on_revoke {
            "drain" => conversation.say("after a draining rejection", &bed.agent.log()),
            _ => {
                let line = "after the reset";
                let result = exchange(&mut conversation.stream, line);
                let error = result.expect_err("a reset revocation must cut the connection");
                let reset = error
                    .chain()
                    .filter_map(|c| c.downcast_ref::<std::io::Error>())
                    .any(|e| e.kind() == std::io::ErrorKind::ConnectionReset);
                assert!(reset, "cut, but not by a reset: {error:#}");
            }
        }
        let events = bed.events();
        assert!(
            events.contains("\"event\":\"rejected\",\"endpoint\":\"vpce-a-orders\""),
            "{events}"
        );
    }
}

#[test]
fn accepting_a_request_rewrites_the_file_opens_the_endpoint_and_says_so() {
    if !root() {
        return;
    }
    let mut bed = bed_with(&example());
    let config = bed.config.0.to_str().unwrap().to_string();
    let listed = bed.agent_command(&["connections", "--config", &config]);
    assert!(listed.starts_with("pendingAcceptance (1):"), "{listed}");
    assert!(listed.contains("vpce-b-billing") && listed.contains("(new request)"));
    // Traffic while pending is refused, and reported once.
    assert!(
        ask(
            &bed.topology.consumer_b,
            at(BILLING, 80),
            "knock",
            Duration::from_secs(1)
        )
        .is_err()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !bed.events().contains("pending_traffic") {
        assert!(
            std::time::Instant::now() < deadline,
            "no pending_traffic event:\n{}",
            bed.events()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let before = bed.agent.generation();
    let said = bed.agent_command(&["accept", "vpce-b-billing", "--config", &config]);
    assert!(said.contains("pendingAcceptance -> available"), "{said}");
    let text = bed.config_text();
    assert!(
        text.contains("  - id: vpce-b-billing\n    state: available\n    accepted_at: \""),
        "{text}"
    );
    // Everything else is as it was.
    for line in example().lines() {
        assert!(text.contains(line), "accept lost the line {line:?}");
    }
    bed.wait_applied(before);
    // The knock's ARP went unanswered (a request claims no address); the agent
    // announces the address once it answers for it, so the consumer's failed
    // resolution does not linger.
    let answer = ask(&bed.topology.consumer_b, at(BILLING, 80), "open", WAIT)
        .unwrap_or_else(|e| bed.fail(e));
    assert_eq!(answer.target, "billing");

    let events: Vec<serde_json::Value> = bed
        .events()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |id: &str| {
        events
            .iter()
            .filter(|e| e["endpoint"] == id)
            .map(|e| e["event"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of("vpce-b-billing"),
        ["connection_request", "pending_traffic", "accepted"]
    );
    assert_eq!(of("vpce-a-orders"), ["connection_request", "accepted"]);
    // A second accept is refused: the model has no such transition.
    let again = bed
        .agent
        .command(&["accept", "vpce-b-billing", "--config", &config])
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already available"));

    // The consumer deletes the endpoint: it is gone from the data path, and said so.
    let text = bed.config_text();
    let start = text.find("  - id: vpce-b-billing").unwrap();
    bed.reconfigure(&text[..start]);
    assert!(
        ask(
            &bed.topology.consumer_b,
            at(BILLING, 80),
            "gone?",
            Duration::from_secs(1)
        )
        .is_err()
    );
    // The deletion is told before the generation that carried it out.
    let events = bed.events();
    let last: Vec<&str> = events.lines().rev().take(2).collect();
    assert!(last[0].contains("\"event\":\"applied\""), "{events}");
    assert!(
        last[1].contains("\"event\":\"deleted\",\"endpoint\":\"vpce-b-billing\""),
        "{events}"
    );
}

#[test]
fn a_source_outside_the_security_group_gets_no_connection() {
    if !root() {
        return;
    }
    // 10.0.0.10 is outside 10.0.0.0/30.
    let mut bed = bed_with(&example().replace(
        "{ cidr: 10.0.0.0/24, ports: [80] }",
        "{ cidr: 10.0.0.0/30, ports: [80] }",
    ));
    let result = ask(
        &bed.topology.consumer_a,
        at(ORDERS, 80),
        "hello",
        Duration::from_secs(1),
    );
    assert!(
        result.is_err(),
        "a source outside the security group connected"
    );
    // vpc-b's endpoint has no security group.
    ask(&bed.topology.consumer_b, at(ORDERS, 80), "hello", WAIT).unwrap_or_else(|e| bed.fail(e));
    let status = bed.status();
    let dropped = &status["counters"]["drop_security_group"]["packets"];
    assert!(dropped.as_u64().is_some_and(|n| n >= 1), "{status:#}");
    // Widening the group lets it in, live.
    bed.reconfigure(&example());
    ask(&bed.topology.consumer_a, at(ORDERS, 80), "hello", WAIT).unwrap_or_else(|e| bed.fail(e));
}
