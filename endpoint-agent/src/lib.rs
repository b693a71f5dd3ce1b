//! The node agent: keeps the XDP program's maps in sync with the YAML model.
//!
//! The pipeline ([`pipeline`]), one module per stage: [`config`] (YAML → model) →
//! [`validate`] (every problem, with its line, for the node's [`facts`]) → [`ids`]
//! (stable numbers; [`keys`] and [`placement`] say what is numbered) → [`desired`] (model
//! → map contents, DNS [`names`] among them) → [`plan`] (the difference, in a safe order) → [`apply`] (into the
//! [`maps`]). Around it: [`acceptance`] (states and transitions), [`loader`] (load,
//! attach, pin), [`instance`] (what outlives the process), [`host`] (sysctls,
//! neighbours), [`announce`] (gratuitous ARP), [`netlink`] (node changes), [`delivery`] (frames lost on veths), [`health`] (target checks), [`expiry`] (what runs out), [`events`],
//! [`agent`] (the running agent's world) and [`run`] (its loop), and the commands
//! [`status`], [`connections`].

pub mod acceptance;
pub mod agent;
pub mod announce;
pub mod apply;
pub mod config;
pub mod connections;
pub mod delivery;
pub mod desired;
pub mod events;
pub mod expiry;
pub mod facts;
pub mod flow_log;
pub mod flows;
pub mod health;
pub mod host;
pub mod ids;
pub mod instance;
pub mod keys;
pub mod loader;
pub mod maps;
pub mod metrics;
pub mod names;
pub mod netlink;
pub mod pipeline;
pub mod placement;
pub mod plan;
pub mod run;
pub mod stats;
pub mod status;
pub mod store;
pub mod validate;
pub mod verification;
