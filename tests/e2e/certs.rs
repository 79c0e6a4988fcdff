//! `weir certs` end to end (being written).
