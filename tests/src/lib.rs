//! Shared support for the end-to-end tests: spawning weir, mock upstreams, raw clients.
