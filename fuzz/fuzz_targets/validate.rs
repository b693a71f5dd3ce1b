//! Parse + validate of the agent's YAML config (`validate::load`) on any text: every
//! input must come back as a config or a report naming the file, never a panic.
//! Checked for two nodes: one that knows nothing, and one with the interfaces the
//! examples name (one of them numbered past what the program's interface table holds)
//! and a NAT address of its own, so that the checks that depend on the node run too.
#![no_main]

use std::sync::LazyLock;

use endpoint_agent::{
    facts::{Facts, Link},
    validate,
};
use libfuzzer_sys::fuzz_target;

static NODE: LazyLock<Facts> = LazyLock::new(|| {
    let link = |ifindex, last| Link {
        ifindex,
        mac: [2, 0, 0, 0, 0, last],
        veth: last % 2 == 0,
        mtu: 1500,
    };
    Facts {
        links: [
            ("cons-a", link(2, 1)),
            ("cons-b", link(3, 2)),
            ("prov", link(4, 3)),
            ("prov2", link(5, 4)),
            ("huge", link(1 << 20, 5)),
        ]
        .into_iter()
        .map(|(name, link)| (name.to_string(), link))
        .collect(),
        local_addresses: ["172.16.0.1", "172.16.0.100"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect(),
        ephemeral_ports: (32768, 60999),
    }
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for facts in [&Facts::default(), &*NODE] {
        match validate::load("fuzz.yaml", text, facts) {
            Ok(_) => {}
            // Every problem is reported against the file, with its line where known.
            Err(invalid) => assert!(
                invalid.report.starts_with("fuzz.yaml:"),
                "a report that does not name the file: {:?}",
                invalid.report
            ),
        }
    }
});
