//! Provisioning: the host state a config implies, as a typed plan that is
//! applied idempotently (only the differences, in dependency order) and
//! checked for drift. This is the only crate that mutates the OS.

pub mod egress;
pub mod units;
