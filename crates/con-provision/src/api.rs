//! The units and egress modules as this crate's core calls them (one place
//! to see which of their items the core depends on).

pub(crate) use crate::{egress, units};
