//! TLS test support (being written).
