//! A small network of namespaces for the demo, the end-to-end tests and the benchmarks:
//! consumers (two with the same addresses) — node (the agent) — provider (real TCP and
//! UDP servers as targets). Everything it makes it removes, on drop and, for what a killed
//! run left behind, at the next start. For abuse tests: crafted segments sent from
//! inside a namespace (`flood`), and ARP and capture on a link (`link`).

mod agent;
pub mod flood;
pub mod link;
mod netns;
mod tcp;
mod topology;
mod udp;

pub use agent::Agent;
pub use netns::{Namespace, sweep, veth};
pub use tcp::{
    Answer, Knock, Server, accept_until, ask, ask_any, at, connect, connect_any, connect_from,
    connect_to, exchange, exchange_any, link_index,
};
pub use topology::{Topology, addresses};
pub use udp::{UdpServer, udp_ask, udp_ask_any, udp_socket, udp_socket_any};
