//! What the XDP program and the agent share.
//!
//! - [`maps`]: the key and value layout of every BPF map (fixed-width fields, explicit
//!   padding, byte order in the field name, sizes asserted at compile time);
//! - [`counter`]: the per-CPU counters, one per verdict and drop reason;
//! - [`dns`]: how DNS names are hashed, alike on both sides;
//! - [`checksum`]: RFC 1624 incremental checksum arithmetic;
//! - [`hash`]: the flow hash both sides compute the same way;
//! - [`maglev`] (agent side only): the consistent-hashing table builder.
#![no_std]

#[cfg(feature = "user")]
extern crate alloc;

pub mod checksum;
pub mod counter;
pub mod dns;
pub mod hash;
#[cfg(feature = "user")]
pub mod maglev;
pub mod maps;
