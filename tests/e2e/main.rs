//! End-to-end tests: weir as a real process between real clients and mock upstreams on
//! 127.0.0.1. One test binary, a module per area.
