//! con's integration tests, black-box: the real `con` binary on temp roots,
//! as root and as real Linux users. One test binary with a module per area,
//! so the dependencies are linked once rather than once per area.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod cli;
mod contracts;
mod corpus;
mod daemon;
mod enforce;
mod fleet;
mod full_disk;
mod healthcheck;
mod idle;
mod provision;
mod reload;
mod replay;
mod rerun;
mod runs;
mod supervisor;

/// The `con` binary under test.
const CON: &str = env!("CARGO_BIN_EXE_con");
