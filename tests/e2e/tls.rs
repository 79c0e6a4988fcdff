//! mTLS end to end (being written).
