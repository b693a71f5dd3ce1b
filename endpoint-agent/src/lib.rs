//! The node agent: keeps the XDP program's maps in sync with the YAML model.
//!
//! The pipeline, one module per stage: [`config`] (YAML → model, validated with line
//! numbers) → [`ids`] (stable numbers) → [`desired`] (model → map contents) → [`plan`]
//! (the difference, in a safe order) → [`apply`] (into the maps). Around it:
//! [`acceptance`] (states and transitions), [`loader`] (load, attach, pin),
//! [`instance`] (what outlives the process), [`host`] (sysctls, neighbours), [`events`],
//! [`expiry`] (idle flows), [`health`] (target checks), [`reconcile`] (one pass), [`run`] (the loop), and the
//! commands [`status`], [`connections`].

pub mod acceptance;
pub mod apply;
pub mod config;
pub mod connections;
pub mod desired;
pub mod events;
pub mod expiry;
pub mod facts;
pub mod health;
pub mod host;
pub mod ids;
pub mod instance;
pub mod keys;
pub mod loader;
pub mod placement;
pub mod plan;
pub mod reconcile;
pub mod run;
pub mod stats;
pub mod status;
pub mod validate;
