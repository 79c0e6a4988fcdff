//! `weir certs`: a development PKI (being written).
