// Exists so the agent can name this crate as a build-dependency (rebuild on change).
#![no_std]
