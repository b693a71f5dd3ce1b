//! Packet tests: frames through the real XDP object with BPF_PROG_RUN, maps filled by
//! the agent's own pipeline (see `rig`). Each checks the verdict, the exact output bytes
//! where it matters (built independently, checksums computed from scratch) and the
//! counter the packet was counted under. One file per step of the packet's journey.
//! Needs root; without it every test says it was skipped.

mod rig;

mod classify;
mod conntrack;
mod dns;
mod expire;
mod fuzz;
mod icmp;
mod ipv6;
mod limits;
mod mss;
mod policy;
mod reset;
mod select;
mod tcp;
mod udp;
mod verify;
