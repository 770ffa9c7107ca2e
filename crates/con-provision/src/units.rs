//! systemd units, hardened per tier.
