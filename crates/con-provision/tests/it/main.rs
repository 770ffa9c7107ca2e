//! con-provision's integration tests: plans, units and policy computed
//! without root, and bootstrap and egress applied to the real kernel with
//! real users in network namespaces of their own. One test binary with a
//! module per area, so the dependencies are linked once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod bootstrap;
mod egress;
mod plan;
mod policy;
mod units;
