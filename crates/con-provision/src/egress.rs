//! Per-uid nftables egress filtering.
