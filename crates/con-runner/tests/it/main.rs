//! con-runner's integration tests: sessions and draining through an
//! in-memory daemon link, and the tools as a real unprivileged user. One
//! test binary with a module per area, so the dependencies are linked once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod as_user;
mod common;
mod session;
