//! End to end: the real agent binary on a real topology of namespaces and veths, real
//! TCP servers and clients (see testbed::Topology). One file per part of the product.
//! Needs root; without it every test says it was skipped.

mod bed;

mod abuse;
mod acceptance;
mod datagrams;
mod fleet;
mod forwarding;
mod health;
mod ipv6;
mod isolation;
mod lifecycle;
mod names;
mod operating;
mod verification;
