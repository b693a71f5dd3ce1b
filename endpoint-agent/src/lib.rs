//! The node agent: keeps the XDP program's maps in sync with the YAML model.
//!
//! The pipeline, one module per stage: [`config`] (YAML → model, validated with line
//! numbers) → [`desired`] (model → map contents) → [`apply`] (into the maps); around it,
//! [`loader`] (load, attach) and [`host`] (sysctls, neighbours); [`run`] strings them
//! together.

pub mod apply;
pub mod config;
pub mod desired;
pub mod host;
pub mod loader;
pub mod run;
pub mod stats;
