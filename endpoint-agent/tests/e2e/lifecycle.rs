//! The agent's life: start, stop and restore the node, generic fallback, invalid
//! configs and files, restarts that keep connections, one agent per instance, a fresh
//! node.

use crate::bed::*;

#[test]
fn the_agent_detaches_and_restores_the_node_on_sigterm_and_on_sigint() {
    if !root() {
        return;
    }
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut bed = bed_with(&example());
        let node = &bed.topology.node;
        assert!(xdp_attached(node), "the program is attached while running");
        assert!(node.ip(&["neigh", "show"]).unwrap().contains("managed"));
        let status = bed.agent.stop_with(signal).unwrap();
        assert!(
            status.success(),
            "agent exit: {status}\n{}",
            bed.agent.log()
        );
        let node = &bed.topology.node;
        assert!(
            !xdp_attached(node),
            "an XDP program is still attached after exit"
        );
        assert!(
            !node.ip(&["neigh", "show"]).unwrap().contains("managed"),
            "managed neighbours left behind"
        );
        let forwarding = node
            .exec("sysctl", &["-n", "net.ipv4.conf.prov.forwarding"])
            .unwrap();
        assert_eq!(forwarding.trim(), "0", "forwarding not restored");
        let result = ask(
            &bed.topology.consumer_a,
            at(ORDERS, 80),
            "hello",
            Duration::from_secs(1),
        );
        assert!(
            result.is_err(),
            "the endpoint still answers after the agent stopped"
        );
    }
}

#[test]
fn an_interface_without_native_xdp_falls_back_to_generic_and_the_log_says_so() {
    if !root() {
        return;
    }
    // macvlan has no native XDP support.
    let config = example().replacen(
        "  nat_ports:",
        "    - name: mv0\n      role: provider\n  nat_ports:",
        1,
    );
    let bed = bed_prepared(&config, |t| {
        t.node
            .ip(&[
                "link", "add", "name", "mv0", "link", "prov", "type", "macvlan",
            ])
            .unwrap();
        t.node.ip(&["link", "set", "mv0", "up"]).unwrap();
    });
    let log = bed.agent.log();
    assert!(log.contains("mv0: native XDP not supported"), "{log}");
    assert!(log.contains("mv0: attached in generic mode"), "{log}");
    assert!(log.contains("prov: attached in native mode"), "{log}");
    ask(&bed.topology.consumer_a, at(ORDERS, 80), "hello", WAIT).unwrap_or_else(|e| bed.fail(e));
}

fn xdp_attached(ns: &Namespace) -> bool {
    ns.ip(&["link", "show"]).unwrap().contains("xdp")
}

#[test]
fn an_invalid_config_names_the_line_exits_non_zero_and_attaches_nothing() {
    if !root() {
        return;
    }
    let topology = Topology::build().unwrap();
    let config = TempFile::new(
        "config.yaml",
        &example().replacen("service: orders", "service: ordrs", 1),
    );
    let output = topology
        .node
        .command(AGENT)
        .args(["--instance", topology.node.name(), "run", "--config"])
        .arg(&config.0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    let line = example()
        .lines()
        .position(|l| l.contains("service: orders"))
        .unwrap()
        + 1;
    let expected = format!(
        ":{line}: error: endpoint \"vpce-a-orders\" (endpoints[0].service): no service named \"ordrs\""
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!xdp_attached(&topology.node));
}

#[test]
fn namespaces_are_removed_even_when_a_test_fails() {
    if !root() {
        return;
    }
    let names = std::panic::catch_unwind(|| {
        let topology = Topology::build().unwrap();
        let names: Vec<String> = [
            &topology.consumer_a,
            &topology.consumer_b,
            &topology.node,
            &topology.provider,
        ]
        .iter()
        .map(|ns| ns.name().to_string())
        .collect();
        std::panic::panic_any(names);
    })
    .unwrap_err()
    .downcast::<Vec<String>>()
    .unwrap();
    let left = testbed_namespaces();
    for name in names.iter() {
        assert!(!left.contains(name), "{name} survived a failing test");
    }

    // What a killed run left behind (its process is gone) is swept at the next start:
    // its namespace and its agent instance's state and lock.
    let stale = "epx-999999999-0-stale";
    std::process::Command::new("ip")
        .args(["netns", "add", stale])
        .status()
        .unwrap();
    let state = Path::new("/run/endpoint-agent").join(stale);
    let lock = Path::new("/run/endpoint-agent").join(format!("{stale}.lock"));
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(&lock, "999999999").unwrap();
    let _fresh = Namespace::new("fresh").unwrap();
    assert!(
        !testbed_namespaces().contains(&stale.to_string()),
        "a stale namespace was not swept"
    );
    assert!(
        !state.exists() && !lock.exists(),
        "a stale instance was not swept"
    );
}

fn testbed_namespaces() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn a_long_lived_connection_survives_100_config_changes_and_an_agent_kill_and_restart() {
    if !root() {
        return;
    }
    let mut bed = bed_with(&example());
    let mut conversation = Conversation::open(&bed);
    let base = example();
    for n in 0..100 {
        // Endpoints come and go, weights and billing's state change: none concern vpc-a.
        let mut text = if n % 2 == 0 {
            with_extra_endpoint(&base, n)
        } else {
            base.clone()
        };
        if n % 3 == 0 {
            text = text.replace(
                "port: 9090 }",
                &format!("port: 9090, weight: {} }}", 1 + n % 4),
            );
        }
        bed.reconfigure(&text);
        conversation.say(&format!("after config change {n}"), &bed.agent.log());
    }

    let Bed {
        agent,
        servers,
        topology,
        config,
    } = bed;
    agent.kill().unwrap();
    conversation.say("with the agent killed (kill -9)", "");
    let agent = start_agent(&topology, &config);
    assert!(
        agent.log().contains("adopting the data path"),
        "{}",
        agent.log()
    );
    conversation.say("after the agent restarted", &agent.log());
    drop((agent, servers, topology));
}

/// An endpoint in vpc-b that has nothing to do with vpc-a's connection.
fn with_extra_endpoint(config: &str, n: u32) -> String {
    format!(
        "{config}\n  - {{ id: extra-{n}, service: billing, principal: team-b, consumer_network: vpc-b, ip: 10.0.0.{}, zone: zone-1 }}\n",
        150 + n % 50
    )
}

#[test]
fn an_invalid_file_is_refused_and_changes_nothing() {
    if !root() {
        return;
    }
    let bed = bed_with(&example());
    let mut conversation = Conversation::open(&bed);
    let status_before = bed.agent_command(&["status"]);
    let broken = with_extra_endpoint(&example(), 1)
        .replace("service: billing, principal", "service: nothing, principal");
    std::fs::write(&bed.config.0, &broken).unwrap();
    bed.agent
        .wait_for("no service named \"nothing\"", Duration::from_secs(5))
        .unwrap();
    bed.agent
        .wait_for("keeping the running config", Duration::from_secs(1))
        .unwrap();
    conversation.say("after an invalid file", &bed.agent.log());
    let status_after = bed.agent_command(&["status"]);
    assert!(
        !status_after.contains("extra-1"),
        "the invalid file's endpoint appeared"
    );
    let endpoints = |s: &str| {
        s.lines()
            .filter(|l| l.contains("vpce-"))
            .map(|l| l.split_whitespace().take(5).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
    };
    assert_eq!(endpoints(&status_before), endpoints(&status_after));
}

#[test]
fn a_file_caught_half_written_is_never_applied() {
    if !root() {
        return;
    }
    let mut bed = bed_with(&example());
    let full = bed.config_text();
    // A writer that truncates and rewrites in place: for a moment the file holds a
    // valid config without the last endpoints.
    let cut = full
        .find("  - id: vpce-b-billing")
        .expect("the example's last endpoint");
    let generation = bed.agent.generation();
    for _ in 0..5 {
        std::fs::write(&bed.config.0, &full[..cut]).unwrap();
        std::thread::sleep(Duration::from_millis(400));
        std::fs::write(&bed.config.0, &full).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let events = bed.events();
    assert!(
        !events.contains("\"deleted\""),
        "{events}\n{}",
        bed.agent.log()
    );
    assert_eq!(
        bed.agent.generation(),
        generation,
        "a half-written file was applied:\n{}",
        bed.agent.log()
    );
    // A change that stays is applied once it has settled.
    std::fs::write(&bed.config.0, &full[..cut]).unwrap();
    bed.wait_applied(generation);
    assert!(bed.events().contains("\"deleted\""));
}

#[test]
fn a_second_agent_for_a_running_instance_is_refused() {
    if !root() {
        return;
    }
    let bed = bed_with(&example());
    let config = bed.config.0.to_str().unwrap().to_string();
    let output = bed.agent.command(&["run", "--config", &config]).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("is in use by another agent (pid"),
        "{stderr}"
    );
    let output = bed.agent.command(&["cleanup"]).unwrap();
    assert!(!output.status.success(), "cleanup under a running agent");
    // The running agent is untouched.
    ask(&bed.topology.consumer_a, at(ORDERS, 80), "hello", WAIT).unwrap_or_else(|e| bed.fail(e));
}

/// Agents starting at once on a node whose bpffs is not mounted yet (a fresh
/// machine) all come up: only one mounts it, and none loses its pins.
#[test]
fn agents_starting_at_once_on_a_fresh_node_mount_bpffs_once() {
    if !root() {
        return;
    }
    use std::{
        io::{BufRead, BufReader},
        process::{Command, Stdio},
    };
    // A mount namespace of its own without bpffs, held open by a sleeping process.
    let mut holder = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("while umount /sys/fs/bpf 2>/dev/null; do :; done; echo unmounted; exec sleep 60")
        .stdout(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux)");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "unmounted");
    let mount = format!("--mount=/proc/{}/ns/mnt", holder.id());
    let beds: Vec<(Topology, TempFile)> = (0..4)
        .map(|_| {
            (
                Topology::build().unwrap(),
                TempFile::new("config.yaml", &example()),
            )
        })
        .collect();
    let in_namespaces = |topology: &Topology, args: &[&str]| {
        let mut command = Command::new("nsenter");
        command
            .arg(&mount)
            .arg(format!("--net=/run/netns/{}", topology.node.name()))
            .arg(AGENT)
            .args(["--instance", topology.node.name()])
            .args(args);
        command
    };
    let mut agents: Vec<_> = beds
        .iter()
        .map(|(topology, config)| {
            in_namespaces(topology, &["run", "--config", config.0.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let logs: Vec<String> = agents
        .iter_mut()
        .map(|agent| {
            let mut log = String::new();
            let stderr = BufReader::new(agent.stderr.take().unwrap());
            for line in stderr.lines().map_while(Result::ok) {
                log += &line;
                log.push('\n');
                if line.contains("ready:") || line.starts_with("error") {
                    break;
                }
            }
            log
        })
        .collect();
    for agent in &mut agents {
        // SAFETY: a signal to a child this test started.
        unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
        let _ = agent.wait();
    }
    for (topology, _) in &beds {
        let _ = in_namespaces(topology, &["cleanup"]).output();
    }
    let _ = holder.kill();
    let _ = holder.wait();
    for log in &logs {
        assert!(log.contains("ready:"), "an agent did not come up:\n{log}");
    }
    let mounted = logs.iter().filter(|l| l.contains("mounting bpffs")).count();
    assert_eq!(mounted, 1, "{logs:?}");
}

/// The agent follows the node as it changes under it (netlink wakes it; its periodic
/// look is 10 s, longer than any wait here): an interface that appears is attached, one
/// re-created gets the program again, and a new MAC reaches consumers at once.
#[test]
fn the_agent_follows_interfaces_that_appear_are_recreated_or_change_mac() {
    if !root() {
        return;
    }
    use testbed::addresses::{CLIENT, CONSUMER_PREFIX};
    // cons-b is not there (yet) when the agent starts: the rest works without it.
    let bed = bed_prepared(&example(), |t| {
        t.node.ip(&["link", "set", "cons-b", "down"]).unwrap();
        t.node
            .ip(&["link", "set", "cons-b", "name", "later"])
            .unwrap();
    });
    let node = &bed.topology.node;
    let interface = |name: &str| {
        bed.status()["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(interface("cons-b")["present"], false);
    assert!(bed.agent.log().contains("cons-b: no such interface"));
    ask(&bed.topology.consumer_a, at(ORDERS, 80), "a", WAIT).unwrap_or_else(|e| bed.fail(e));
    let within = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what} not followed within 3 s:\n{}",
                bed.agent.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    node.ip(&["link", "set", "later", "name", "cons-b"])
        .unwrap();
    node.ip(&["link", "set", "cons-b", "up"]).unwrap();
    within("an interface that appeared", &|| {
        interface("cons-b")["attached"] == "native"
    });
    ask(&bed.topology.consumer_b, at(ORDERS, 80), "b", WAIT).unwrap_or_else(|e| bed.fail(e));

    // Deleted and made again: a new device, without the program until the agent acts.
    node.ip(&["link", "del", "cons-b"]).unwrap();
    testbed::veth(&bed.topology.consumer_b, "eth0", node, "cons-b").unwrap();
    let consumer_b = &bed.topology.consumer_b;
    consumer_b
        .ip(&[
            "addr",
            "add",
            &format!("{CLIENT}/{CONSUMER_PREFIX}"),
            "dev",
            "eth0",
        ])
        .unwrap();
    consumer_b
        .exec("ethtool", &["-K", "eth0", "tx", "off", "gro", "on"])
        .unwrap();
    within("a re-created interface", &|| {
        xdp_attached_to(node, "cons-b")
    });
    ask(consumer_b, at(ORDERS, 80), "b again", WAIT).unwrap_or_else(|e| bed.fail(e));

    // A new MAC: consumer-a still holds the old one for the endpoint, and frames to it
    // are not for the node any more; the announcement corrects it.
    node.ip(&["link", "set", "cons-a", "address", "02:00:00:00:aa:01"])
        .unwrap();
    within("a new MAC", &|| {
        bed.topology
            .consumer_a
            .ip(&["neigh", "show", &ORDERS.to_string()])
            .unwrap()
            .contains("02:00:00:00:aa:01")
    });
    ask(&bed.topology.consumer_a, at(ORDERS, 80), "a again", WAIT).unwrap_or_else(|e| bed.fail(e));
}

fn xdp_attached_to(ns: &Namespace, link: &str) -> bool {
    ns.ip(&["link", "show", "dev", link])
        .unwrap()
        .contains("xdp")
}

/// An agent never runs over maps of another layout: a data path pinned under another
/// layout version, or with a map of another shape, is refused with what to do, and the
/// running data path is left alone.
#[test]
fn an_agent_refuses_pinned_maps_of_another_layout() {
    if !root() {
        return;
    }
    let bed = bed_with(&example());
    let mut conversation = Conversation::open(&bed);
    let Bed {
        agent,
        servers,
        topology,
        config,
    } = bed;
    agent.kill().unwrap();
    let instance = topology.node.name().to_string();
    // The killed agent's data path is removed whatever this test finds.
    let _cleanup = Cleanup(&topology.node, &instance);
    let state = Path::new("/run/endpoint-agent").join(&instance);
    let pins = Path::new("/sys/fs/bpf/endpoint-agent").join(&instance);
    let start = || {
        topology
            .node
            .command(AGENT)
            .args(["--instance", &instance, "run", "--config"])
            .arg(&config.0)
            .output()
            .unwrap()
    };
    let refused = |output: std::process::Output, why: &str| {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
        assert!(stderr.contains("cannot adopt its data path"), "{stderr}");
    };

    let layout = std::fs::read_to_string(state.join("layout.json")).unwrap();
    std::fs::write(state.join("layout.json"), "1").unwrap();
    refused(start(), "its maps have layout 1, this agent's is");
    conversation.say("after a refused agent of another layout", "");

    std::fs::write(state.join("layout.json"), &layout).unwrap();
    // LIMITS replaced by an array of 8-byte values (the program keeps the real one).
    std::fs::remove_file(pins.join("LIMITS")).unwrap();
    pin_array(&pins.join("LIMITS"), 4, 8);
    refused(start(), "map LIMITS is (kind, key size, value size)");
    conversation.say("after a refused agent over a map of another shape", "");

    let cleanup = topology
        .node
        .command(AGENT)
        .args(["--instance", &instance, "cleanup"])
        .output()
        .unwrap();
    assert!(cleanup.status.success(), "{cleanup:?}");
    drop(servers);
}

/// Runs `cleanup` for an instance on drop (after a panic too).
struct Cleanup<'a>(&'a Namespace, &'a str);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .command(AGENT)
            .args(["--instance", self.1, "cleanup"])
            .output();
    }
}

/// Creates a BPF array map and pins it at `path`.
fn pin_array(path: &Path, key_size: u32, value_size: u32) {
    // `union bpf_attr` for BPF_MAP_CREATE (0) and BPF_OBJ_PIN (6), zero-padded.
    let mut create = [0u32; 32];
    create[..4].copy_from_slice(&[2, key_size, value_size, 1]);
    // SAFETY: the bpf system call with a zeroed attribute union of sufficient size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            create.as_ptr(),
            std::mem::size_of_val(&create),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut pin = [0u64; 16];
    pin[0] = name.as_ptr() as u64;
    pin[1] = fd as u64;
    // SAFETY: as above; `name` outlives the call.
    let pinned =
        unsafe { libc::syscall(libc::SYS_bpf, 6, pin.as_ptr(), std::mem::size_of_val(&pin)) };
    assert_eq!(
        pinned,
        0,
        "BPF_OBJ_PIN: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: our own descriptor; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}
