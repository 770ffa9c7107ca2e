//! con-inbox's integration tests: tasks written by real users into real
//! inboxes, classified and recorded by the watcher. One test binary with a
//! module per area, so the dependencies are linked once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;
mod flood;
mod trust;
mod watch;
